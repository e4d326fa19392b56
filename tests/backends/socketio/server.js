'use strict';
// Real socket.io v4 server for stickyd's end-to-end tests (tests/socketio.rs).
//
// Env: INSTANCE (name reported in every answer, e.g. "io-1"),
//      PORT (port on 127.0.0.1; 0 lets the OS pick one).
// Once listening it prints exactly one line, "listening <port>", to stdout.
//
// Each instance keeps its engine.io sessions in memory, so a long-polling request that reaches
// another instance than the one that did the handshake is answered
// 400 {"code":1,"message":"Session ID unknown"}: the reason socket.io needs sticky sessions.
//
// Events on a connected socket:
//   "ping" (n, ack)  -> ack({ instance, n })
//   "start"          -> emits "tick" { instance, n } for n = 1..20 to that socket

const http = require('node:http');
const { Server } = require('socket.io');

const TICKS = 20;

const instance = process.env.INSTANCE || 'io';
const port = Number.parseInt(process.env.PORT || '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid PORT: ${process.env.PORT}`);
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, { transports: ['polling', 'websocket'] });

io.on('connection', (socket) => {
  socket.on('ping', (n, ack) => {
    if (typeof ack === 'function') {
      ack({ instance, n });
    }
  });
  socket.on('start', () => {
    for (let n = 1; n <= TICKS; n++) {
      socket.emit('tick', { instance, n });
    }
  });
});

httpServer.on('error', (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});
httpServer.listen(port, '127.0.0.1', () => {
  // stdout to a pipe is synchronous on POSIX, so the line is out once write returns.
  process.stdout.write(`listening ${httpServer.address().port}\n`);
});
