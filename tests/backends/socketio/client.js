'use strict';
// Real socket.io v4 client for stickyd's end-to-end tests (tests/socketio.rs).
//
// Usage: node client.js URL
//
// Connects to URL with HTTP long polling first, waits until engine.io has upgraded the session
// to WebSocket, then sends 20 "ping" events with acks and asks for 20 "tick" events (see
// server.js). Every ack and every tick must come from one and the same server instance.
//
// Prints exactly one JSON line to stdout and exits:
//   0: {"ok":true,"instance":"io-2","transport":"websocket","acks":20,"ticks":20,
//       "cookies":{"SERVERID":"io2"}}
//   1: {"ok":false,"error":"..."}   (connect_error, a disconnect before the end, an instance
//                                    change, a failed upgrade, or no result within 15 s)
// "cookies" is what the client's cookie jar held at the end (name -> value).
//
// Cookies: with `withCredentials: true`, engine.io-client >= 6.5 keeps a cookie jar in Node.js
// (build/cjs/globals.node.js `CookieJar`, created in socket.js when `opts.withCredentials`):
// the polling transport (polling-xhr.node.js) stores every response's Set-Cookie and sends the
// jar on each later request, and the WebSocket transport (websocket.node.js) sends it on the
// upgrade request. So stickyd's insert cookie (SERVERID) set on the handshake reaches every
// later polling request and the WebSocket upgrade. The client checks the jar exists and fails
// loudly if an older engine.io-client without it is installed.

const { io } = require('socket.io-client');

const PINGS = 20;
const TICKS = 20;
const DEADLINE_MS = 15000;
const ACK_TIMEOUT_MS = 5000;

const url = process.argv[2];
if (!url || process.argv.length > 3) {
  process.stderr.write('usage: node client.js URL\n');
  process.exit(2);
}

let stage = 'connecting';
let finished = false;
let socket;

/** Prints the one result line and exits: 0 when ok, else 1. */
function finish(result) {
  if (finished) {
    return;
  }
  finished = true;
  clearTimeout(deadline);
  // stdout to a pipe is synchronous on POSIX, so the line is out once write returns.
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (socket) {
    socket.disconnect();
  }
  process.exit(result.ok ? 0 : 1);
}

function fail(error) {
  finish({ ok: false, error: `${stage}: ${error}` });
}

/**
 * An engine.io / socket.io error as text: the message, the transport's detail (an HTTP status,
 * or the underlying error), and for a failed polling request the body the server answered,
 * such as {"code":1,"message":"Session ID unknown"}.
 */
function describe(err) {
  if (err === undefined || err === null) {
    return 'unknown error';
  }
  let text = err.message || String(err);
  const detail = err.description;
  if (typeof detail === 'number') {
    text += ` (HTTP ${detail})`;
  } else if (detail && typeof detail === 'object' && detail.message) {
    text += ` (${detail.message})`;
  } else if (detail !== undefined && detail !== null && detail !== '') {
    text += ` (${String(detail)})`;
  }
  const body = err.context && err.context.responseText;
  if (typeof body === 'string' && body.length > 0) {
    text += `: ${body.slice(0, 200)}`;
  }
  return text;
}

const deadline = setTimeout(() => fail(`no result within ${DEADLINE_MS} ms`), DEADLINE_MS);

socket = io(url, {
  transports: ['polling', 'websocket'],
  upgrade: true,
  withCredentials: true,
  reconnection: false,
  timeout: 5000,
});

// The Manager opens the engine.io session synchronously in its constructor (autoConnect).
const engine = socket.io.engine;
if (!engine || !engine.transport) {
  fail('socket.io-client did not open an engine.io session');
}
if (!engine._cookieJar) {
  fail('this engine.io-client keeps no cookies with withCredentials (needs >= 6.5)');
}
if (engine.transport.name !== 'polling') {
  fail(`the session started on ${engine.transport.name}, not on HTTP long polling`);
}

// Listeners go on before the event loop runs, so no event can be missed.
const upgraded = new Promise((resolve) => {
  engine.once('upgrade', (transport) => resolve(transport.name));
});
// engine.io probes WebSocket once and never again, so a failed probe means no upgrade. Before
// `connect` the connection's own outcome is awaited: when polling fails too (for instance 400
// "Session ID unknown"), connect_error says why, with the response body, which the probe error
// does not carry.
let upgradeError;
engine.on('upgradeError', (err) => {
  upgradeError = `WebSocket upgrade failed: ${describe(err)}`;
  if (socket.connected) {
    fail(upgradeError);
  }
});
const connected = new Promise((resolve) => socket.once('connect', resolve));
socket.on('connect_error', (err) => {
  fail(`connect_error: ${describe(err)}${upgradeError ? ` (earlier: ${upgradeError})` : ''}`);
});
socket.on('disconnect', (reason, details) => {
  fail(`disconnected before the end (${reason}${details ? `: ${describe(details)}` : ''})`);
});

const ticks = [];
let ticksDone;
const allTicks = new Promise((resolve) => {
  ticksDone = resolve;
});
socket.on('tick', (tick) => {
  ticks.push(tick);
  if (ticks.length === TICKS) {
    ticksDone();
  }
});

function sameInstance(instance, what, from) {
  if (from.instance !== instance) {
    fail(`${what} came from instance ${JSON.stringify(from.instance)}, not ${instance}`);
    return false;
  }
  return true;
}

async function main() {
  await connected;
  stage = 'upgrading';
  if (upgradeError !== undefined) {
    fail(upgradeError);
    return;
  }
  if (engine.transport.name !== 'websocket') {
    const name = await upgraded;
    if (name !== 'websocket') {
      fail(`upgraded to ${name}, not websocket`);
      return;
    }
  }

  let instance;
  for (let n = 1; n <= PINGS; n++) {
    stage = `ping ${n}`;
    const reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck('ping', n);
    if (!reply || reply.n !== n) {
      fail(`ack ${JSON.stringify(reply)} does not answer ping ${n}`);
      return;
    }
    if (instance === undefined) {
      instance = reply.instance;
    } else if (!sameInstance(instance, `ack ${n}`, reply)) {
      return;
    }
  }

  stage = 'ticks';
  socket.emit('start');
  await allTicks;
  for (let i = 0; i < TICKS; i++) {
    const tick = ticks[i];
    if (!tick || tick.n !== i + 1) {
      fail(`tick ${i + 1} was ${JSON.stringify(tick)}`);
      return;
    }
    if (!sameInstance(instance, `tick ${i + 1}`, tick)) {
      return;
    }
  }

  stage = 'done';
  if (engine.transport.name !== 'websocket') {
    fail(`the session fell back to ${engine.transport.name}`);
    return;
  }
  const cookies = {};
  for (const [name, cookie] of engine._cookieJar.cookies) {
    cookies[name] = cookie.value;
  }
  finish({
    ok: true,
    instance,
    transport: engine.transport.name,
    acks: PINGS,
    ticks: ticks.length,
    cookies,
  });
}

main().catch((err) => fail(describe(err)));
