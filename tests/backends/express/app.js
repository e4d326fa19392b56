'use strict';
// Real Express backend for stickyd's end-to-end tests (tests/real_backends.rs).
//
// Env: INSTANCE (name reported in every answer, e.g. "express-1"),
//      PORT (port on 127.0.0.1; 0 lets the OS pick one).
// Once listening it prints exactly one line, "listening <port>", to stdout.
// GET / counts views in an express-session session (cookie "connect.sid",
// default MemoryStore) and answers {"instance", "views", "session"}.

const express = require('express');
const session = require('express-session');

const instance = process.env.INSTANCE || 'express';
const port = Number.parseInt(process.env.PORT || '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid PORT: ${process.env.PORT}`);
  process.exit(2);
}

const app = express();
app.use(
  session({
    name: 'connect.sid',
    secret: 'stickyd-test-secret',
    resave: false,
    saveUninitialized: true,
  }),
);

app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  res.json({ instance, views: req.session.views, session: req.sessionID });
});

const server = app.listen(port, '127.0.0.1', (err) => {
  if (err) {
    console.error(`listen failed: ${err.message}`);
    process.exit(1);
  }
  // stdout to a pipe is synchronous on POSIX, so the line is out once write returns.
  process.stdout.write(`listening ${server.address().port}\n`);
});
server.on('error', (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});
