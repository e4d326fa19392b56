#!/usr/bin/env python3
"""Scaling out under live sticky traffic, measured on real processes (issue 15, items 6 and 7).

    benches/load/scale_out.py
    STICKYD_BIN=/path/to/stickyd benches/load/scale_out.py

The out-of-process twin of tests/scale_out.rs, with HAProxy beside stickyd, and the Redis
operations a shared stick table costs at steady state. Four origins (b1..b4, threaded
http.server in this process) each answer `hello from bN` with an `X-Backend: bN` header and, on
a request without a JSESSIONID cookie, set their own session cookie (`Set-Cookie:
JSESSIONID=<random>; Path=/`), as the shared harness's nginx origins do
(../shared/bench/conf/backend-server.nginx.snippet). Then, for each proxy in turn, on the same
origins, a fresh proxy in front of b1..b3:

  stickyd least-sessions  balance = "least-sessions", [service.affinity] insert, cookie SERVERID
  stickyd round-robin     balance = "round-robin", the same otherwise
  HAProxy roundrobin      balance roundrobin, cookie SERVERID insert indirect nocache (the
                          shared harness's haproxy-insert.cfg), b4 in the config but `disabled`
  stickyd least-sessions, balance = "least-sessions", [service.affinity] strategy =
  stick table in Redis    "stick-table" on the origins' JSESSIONID, store = "redis" on a
                          redis-server of the script's own (127.0.0.1, a free port, nothing
                          saved), ttl = the first of STEADY_TTLS

and the scenario:

  1. 300 sessions, each a client with its own cookie jar and keep-alive connection: one
     request each, whose Set-Cookie fields (JSESSIONID and SERVERID) the jar stores: bound.
  2. b4 is added: stickyd `POST /services/web/backends/b4` {"address": ...} on its admin
     listener; HAProxy `set server be/b4 state ready` on its runtime API (stats socket).
  3. 300 new sessions, one first request each, and after each one request from an old
     session, round the old ones, so every old session keeps sending while the new arrive.

Per proxy it reports the live sessions moved (an old session served after the scale-out by
another backend than its first: must be 0), the share of new sessions placed on b4, the
sessions per backend at the end (old and new, by the backend of each session's first request)
and the spread (most over fewest), in one Markdown table. With a stick table there is no
SERVERID cookie: a session is bound when its jar holds JSESSIONID and Redis holds
`<key_prefix>web:<JSESSIONID>` naming the backend of its first request (checked for each).

Steady state (issue 15 item 6, "Refresh cost"; the Redis variant only): after the scenario all
600 sessions keep sending, round-robin over their keep-alive connections, from one client as
fast as it goes: a warm-up (WARMUP_SECONDS, and at least one round, so every session had its
first local hit, hence its first TTL refresh), then a window of STEADY_SECONDS. Redis's `INFO
commandstats` before and after the window (through a tiny RESP client in this script, no
redis-cli) give the Redis operations per second by command (GET, SET, PEXPIRE, PTTL, others),
stickyd's /metrics its requests answered and its Redis errors. That runs once per ttl of
STEADY_TTLS, each on a fresh stickyd (and scenario) with a key prefix of its own: 30m, the
default, refreshes a hot session's key once per 225 s (none falls due in a 10 s window), and
16s once per 2 s, so the proportionality to ttl / 8 shows (PEXPIRE/s about sessions / (ttl / 8)
when each session sends at least once per ttl / 8). A second table gives, per ttl, requests/s,
Redis ops/s and ops per request, and per-command rates; a sentence per ttl sets PEXPIRE/s
beside the rule's bound (sessions / refresh_interval(ttl)) and the old rule's (a refresh every
min(10 s, ttl / 2) per hot session: sessions / 10 s for a long ttl).

It prints the tables and the command line, and exits 1 when a stickyd least-sessions variant
moved a session or its spread is above 1.15 (the issue's target), when a session moved in the
steady state or stickyd counted other requests than the client sent, or when any request
failed or a session was not bound.

Build stickyd first (the script does not build it):

    cargo build --release --locked                 # -> target/release/stickyd, the default
    CARGO_TARGET_DIR=/tmp/t cargo build --release --locked && STICKYD_BIN=/tmp/t/release/stickyd ...

Needs python3 (standard library only), haproxy (apt-get install -y haproxy) and redis-server
7.0 or newer (apt-get install -y redis-server); without one it fails with that line, unless
PROXIES leaves its variant out.
Knobs (environment): STICKYD_BIN (default target/release/stickyd), OLD_SESSIONS (300),
NEW_SESSIONS (300), PROXIES ("least-sessions round-robin haproxy least-sessions-redis": any
subset, in that vocabulary), STEADY_SECONDS (10: the measured window), WARMUP_SECONDS (2),
STEADY_TTLS ("30m 16s": the stick table's ttl, one steady-state measurement each; the first
one's scale-out is the table's row), DEADLINE (seconds the whole run may take, else it stops
with an error; default 60, plus STEADY_SECONDS + WARMUP_SECONDS + 10 per ttl with the Redis
variant: 104), KEEP=1 (keep the temporary directory with the configs and the processes' logs).

Everything binds 127.0.0.1 on free ports. Each proxy, and redis-server, runs in its own process
group and is stopped (SIGTERM, SIGKILL after 3 s) at the end of its turn, and also on an error,
Ctrl-C, SIGTERM or the deadline. A run takes about 30 s (2-core VM): 3 s for the first three
proxies, about 13 s per ttl for the Redis variant, most of it the steady-state window.
"""
import http.client
import http.server
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STICKYD_BIN = os.environ.get("STICKYD_BIN") or os.path.join(REPO, "target", "release", "stickyd")
OLD_SESSIONS = int(os.environ.get("OLD_SESSIONS", "300"))
NEW_SESSIONS = int(os.environ.get("NEW_SESSIONS", "300"))
PROXIES = os.environ.get(
    "PROXIES", "least-sessions round-robin haproxy least-sessions-redis").split()
STEADY_SECONDS = float(os.environ.get("STEADY_SECONDS", "10"))
WARMUP_SECONDS = float(os.environ.get("WARMUP_SECONDS", "2"))
STEADY_TTLS = os.environ.get("STEADY_TTLS", "30m 16s").split()
DEADLINE = int(os.environ.get(
    "DEADLINE",
    str(60 + (len(STEADY_TTLS) * int(STEADY_SECONDS + WARMUP_SECONDS + 10)
              if "least-sessions-redis" in PROXIES else 0))))
SPREAD_TARGET = 1.15
BACKENDS = ["b1", "b2", "b3", "b4"]
ADDED = "b4"
LABELS = {
    "least-sessions": "stickyd least-sessions",
    "round-robin": "stickyd round-robin",
    "haproxy": "HAProxy roundrobin",
    "least-sessions-redis": "stickyd least-sessions, stick table in Redis",
}
# The refresh rules of src/store/shared.rs, to set the measurement beside: now at most once per
# `refresh_interval(ttl)` (ttl / 8, at least 1 s, at most ttl / 2) per hot session; before
# (REFRESH_EVERY) at most once per min(10 s, ttl / 2).
REFRESH_FRACTION = 8
MIN_REFRESH_INTERVAL = 1.0
OLD_REFRESH_EVERY = 10.0
REQUEST_TIMEOUT = 5.0


class Failed(Exception):
    """The run cannot go on; the message says why and, where it can, what to do."""


# --- origins ---------------------------------------------------------------------------------


class Origin(http.server.BaseHTTPRequestHandler):
    """One origin: names itself, and sets its own session cookie on a request without one."""

    protocol_version = "HTTP/1.1"  # keep-alive towards the proxy
    # The head and the body go out in two writes: without TCP_NODELAY the body waits for the
    # proxy's delayed ACK (milliseconds per request on loopback).
    disable_nagle_algorithm = True

    def do_GET(self):
        name = self.server.name
        body = f"hello from {name}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", name)
        if "JSESSIONID=" not in (self.headers.get("Cookie") or ""):
            self.send_header("Set-Cookie", f"JSESSIONID={secrets.token_hex(16)}; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A proxy stopped at the end of its turn resets its idle connections to the origins.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start_origins():
    origins = []
    for name in BACKENDS:
        server = OriginServer(("127.0.0.1", 0), Origin)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        origins.append(server)
    return origins


# --- clients ---------------------------------------------------------------------------------


class Session:
    """A browser: its own keep-alive connection and cookie jar (name -> value, path / only)."""

    def __init__(self, port):
        self.port = port
        self.jar = {}
        self.connection = None
        self.first = None  # the backend of its first request

    def get(self):
        """One `GET /`; stores the response's cookies and returns the backend that answered."""
        headers = {"Host": "scale-out.test"}
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
                )
            try:
                self.connection.request("GET", "/", headers=headers)
                response = self.connection.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The proxy closed an idle keep-alive connection: a GET may be sent again.
                self.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise Failed(f"GET / on :{self.port} answered {response.status}: {body[:200]!r}")
        for value in response.headers.get_all("Set-Cookie") or []:
            pair = value.split(";", 1)[0]
            name, sep, cookie = pair.partition("=")
            if sep:
                self.jar[name.strip()] = cookie.strip()
        backend = response.headers.get("X-Backend")
        if backend not in BACKENDS:
            raise Failed(f"a response on :{self.port} named no backend: {body[:200]!r}")
        if self.first is None:
            self.first = backend
        return backend

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def scenario(port, add_backend, cookies=("SERVERID", "JSESSIONID"), after=None):
    """Runs the scenario through the proxy on `port`; `add_backend()` adds b4. A session is
    bound when its jar holds every cookie of `cookies`. `after(old, new)`, when given, runs on
    the sessions before their connections close, and its dict joins the result."""
    old = [Session(port) for _ in range(OLD_SESSIONS)]
    new = [Session(port) for _ in range(NEW_SESSIONS)]
    try:
        for session in old:
            session.get()
        add_backend()
        moved = set()
        for n, session in enumerate(new):
            session.get()
            # Every old session keeps sending while the new ones arrive.
            previous = old[n % OLD_SESSIONS]
            if previous.get() != previous.first:
                moved.add(n % OLD_SESSIONS)
        unbound = sum(1 for s in old + new if any(c not in s.jar for c in cookies))
        if unbound:
            raise Failed(f"{unbound} sessions hold no {' or '.join(cookies)} cookie: not bound")
        per_backend = {name: 0 for name in BACKENDS}
        for session in old + new:
            per_backend[session.first] += 1
        counts = list(per_backend.values())
        result = {
            "moved": len(moved),
            "on_added": sum(1 for s in new if s.first == ADDED),
            "per_backend": per_backend,
            "spread": max(counts) / max(min(counts), 1),
        }
        if after is not None:
            result.update(after(old, new))
        return result
    finally:
        for session in old + new:
            session.close()


# --- Redis -----------------------------------------------------------------------------------


class Resp:
    """A minimal Redis client (RESP2 over one TCP connection): commands in, replies out."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        self.file = self.sock.makefile("rb")

    def pipeline(self, commands):
        """Sends every command at once and returns their replies in order (an error reply is
        raised as Failed)."""
        out = bytearray()
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for arg in args:
                arg = arg if isinstance(arg, bytes) else str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(arg), arg)
        self.sock.sendall(out)
        return [self.reply() for _ in commands]

    def command(self, *args):
        return self.pipeline([args])[0]

    def reply(self):
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise Failed("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise Failed(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self.file.read(size + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        raise Failed(f"redis: unexpected reply {line[:80]!r}")

    def info(self, section):
        """`INFO section` as {field: value}."""
        fields = {}
        for line in self.command("INFO", section).splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[name] = value
        return fields

    def commandstats(self):
        """Calls so far per command (`INFO commandstats`), e.g. {"GET": 12, "CLIENT|SETINFO": 1}."""
        calls = {}
        for name, value in self.info("commandstats").items():
            if name.startswith("cmdstat_"):
                stats = dict(kv.split("=", 1) for kv in value.split(","))
                calls[name[len("cmdstat_"):].upper()] = int(stats["calls"])
        return calls

    def close(self):
        self.file.close()
        self.sock.close()


def start_redis(tmp, running):
    """A redis-server of its own on a free loopback port, nothing saved; (process, port)."""
    server = shutil.which("redis-server")
    if server is None:
        raise Failed("redis-server is not installed: apt-get install -y redis-server "
                     "(or leave least-sessions-redis out of PROXIES)")
    port = free_port()
    directory = os.path.join(tmp, "redis")
    os.mkdir(directory)
    process = Proxy([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", directory, "--daemonize", "no"],
                    os.path.join(tmp, "redis.log"), running)
    try:
        process.wait_listening([port])
        client = Resp(port)
        try:
            version = client.info("server").get("redis_version", "0")
        finally:
            client.close()
    except BaseException:
        process.stop()
        running.remove(process)
        raise
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 0):
        process.stop()
        running.remove(process)
        raise Failed(f"redis-server {version}: the shared stick table needs Redis 7.0 or newer")
    process.version = version
    return process, port


def seconds(duration):
    """A stickyd duration ("500ms", "16s", "30m", "1h") in seconds."""
    for unit, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if duration.endswith(unit) and duration[:-len(unit)].replace(".", "", 1).isdigit():
            return float(duration[:-len(unit)]) * factor
    raise Failed(f"STEADY_TTLS: {duration!r} is no duration (500ms, 16s, 30m, 1h)")


def refresh_interval(ttl):
    """src/store/shared.rs refresh_interval: ttl / 8, at least 1 s, at most ttl / 2."""
    return max(ttl / REFRESH_FRACTION, min(MIN_REFRESH_INTERVAL, ttl / 2))


def admin_metrics(admin_port):
    """stickyd's requests answered (all backends) and Redis errors, from GET /metrics."""
    admin = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=REQUEST_TIMEOUT)
    admin.request("GET", "/metrics")
    response = admin.getresponse()
    text = response.read().decode(errors="replace")
    admin.close()
    if response.status != 200:
        raise Failed(f"stickyd admin GET /metrics: {response.status}")
    totals = {"requests": 0.0, "redis_errors": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key in totals:
            if name == f"stickyd_{key}_total":
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def steady_state(sessions, redis_port, admin_port):
    """Every session keeps sending, round-robin: a warm-up (one round at least, so every
    session has had its first local hit and its first TTL refresh), then a window of
    STEADY_SECONDS in which Redis's command counts and stickyd's requests are measured."""
    warmup_end = time.monotonic() + WARMUP_SECONDS
    rounds = 0
    while rounds < 1 or time.monotonic() < warmup_end:
        for session in sessions:
            session.get()
        rounds += 1
    redis = Resp(redis_port)
    try:
        metrics_before = admin_metrics(admin_port)
        before = redis.commandstats()
        started = time.monotonic()
        end = started + STEADY_SECONDS
        requests, moved, n = 0, set(), 0
        while time.monotonic() < end:
            session = sessions[n % len(sessions)]
            if session.get() != session.first:
                moved.add(n % len(sessions))
            n += 1
            requests += 1
        window = time.monotonic() - started
        time.sleep(0.05)  # the last background PEXPIREs (no request waits for them)
        after = redis.commandstats()
        metrics_after = admin_metrics(admin_port)
    finally:
        redis.close()
    calls = {name: after[name] - before.get(name, 0) for name in after}
    calls["INFO"] = calls.get("INFO", 0) - 1  # the `INFO commandstats` that took `before`
    calls = {name: n for name, n in calls.items() if n > 0}
    served = metrics_after["requests"] - metrics_before["requests"]
    return {
        "window": window,
        "requests": requests,
        "served": served,
        "round_seconds": window * len(sessions) / max(requests, 1),
        "calls": calls,
        "moved": len(moved),
        "redis_errors": metrics_after["redis_errors"],
    }


# --- processes -------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A proxy process in its own process group, stopped with its group."""

    def __init__(self, argv, log_path, running):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        running.append(self)

    def wait_listening(self, ports):
        argv = self.argv
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                if self.process.poll() is not None:
                    raise Failed(f"{argv[0]} exited ({self.process.returncode}):\n{self.tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise Failed(f"nothing listens on :{port} after 10 s:\n{self.tail()}")
                    time.sleep(0.05)

    def tail(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def stop(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)  # its own group: start_new_session
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        self.log.close()


INSERT_AFFINITY = ['strategy = "insert"', 'cookie = "SERVERID"']


def run_stickyd(balance, origins, tmp, running, affinity=INSERT_AFFINITY, name=None,
                cookies=("SERVERID", "JSESSIONID"), after=None):
    """One stickyd in front of b1..b3 ([service.affinity] `affinity`), through the scenario.
    `after(old, new, admin_port)`, when given, runs on the sessions at the end of it."""
    if not os.access(STICKYD_BIN, os.X_OK):
        raise Failed(
            f"no stickyd at {STICKYD_BIN}: build it with `cargo build --release --locked` "
            "or set STICKYD_BIN"
        )
    port, admin_port = free_port(), free_port()
    lines = [
        'log_level = "warn"',
        'shutdown_grace = "1s"',
        "[admin]",
        f'bind = "127.0.0.1:{admin_port}"',
        "[[service]]",
        'name = "web"',
        f'listen = ["127.0.0.1:{port}"]',
        f'balance = "{balance}"',
        "[service.affinity]",
        *affinity,
    ]
    for origin in origins[:3]:
        lines += ["[[service.backend]]", f'name = "{origin.name}"',
                  f'address = "127.0.0.1:{origin.server_address[1]}"']
    config = os.path.join(tmp, f"stickyd-{name or balance}.toml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    proxy = Proxy([STICKYD_BIN, "--config", config], config[:-4] + "log", running)
    added = origins[3]

    def add_backend():
        admin = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=REQUEST_TIMEOUT)
        body = json.dumps({"address": f"127.0.0.1:{added.server_address[1]}"})
        admin.request("POST", f"/services/web/backends/{added.name}", body=body,
                      headers={"Content-Type": "application/json"})
        response = admin.getresponse()
        answer = response.read()
        admin.close()
        if not 200 <= response.status < 300:
            raise Failed(f"stickyd admin POST backends/{added.name}: {response.status} {answer!r}")

    try:
        proxy.wait_listening([port, admin_port])
        hook = None if after is None else (lambda old, new: after(old, new, admin_port))
        return scenario(port, add_backend, cookies, hook)
    finally:
        proxy.stop()
        running.remove(proxy)


def run_stickyd_redis(origins, tmp, running):
    """stickyd least-sessions with its stick table (the origins' JSESSIONID) in a Redis of its
    own: the scenario, each session's key checked in Redis, then the steady state, once per
    ttl of STEADY_TTLS, each on a fresh stickyd and its own key prefix. Returns the scale-out
    result of the first ttl, with the steady-state measurements under "steady"."""
    redis, redis_port = start_redis(tmp, running)
    try:
        results = []
        for ttl in STEADY_TTLS:
            prefix = f"scale-out-{ttl}:"

            def after(old, new, admin_port, ttl=ttl, prefix=prefix):
                check_keys(old + new, redis_port, prefix)
                t0 = time.monotonic()
                steady = steady_state(old + new, redis_port, admin_port)
                steady.update(ttl=ttl, sessions=len(old + new))
                print(f"  steady state, ttl {ttl}: {steady} ({time.monotonic() - t0:.1f} s)",
                      file=sys.stderr)
                return {"steady": steady}

            affinity = [
                'strategy = "stick-table"',
                'cookie = "JSESSIONID"',
                f'ttl = "{ttl}"',
                'store = "redis"',
                f'redis_url = "redis://127.0.0.1:{redis_port}/0"',
                f'key_prefix = "{prefix}"',
            ]
            results.append(run_stickyd("least-sessions", origins, tmp, running, affinity,
                                       name=f"least-sessions-redis-{ttl}",
                                       cookies=("JSESSIONID",), after=after))
        first = dict(results[0])
        first["steady"] = [r["steady"] for r in results]
        first["redis"] = redis.version
        return first
    finally:
        redis.stop()
        running.remove(redis)


def check_keys(sessions, redis_port, prefix):
    """Every session is bound in Redis: its JSESSIONID's key names its first backend (a
    backend's id is its name here), and no session holds stickyd's SERVERID cookie."""
    redis = Resp(redis_port)
    try:
        values = redis.pipeline([("GET", f"{prefix}web:{s.jar['JSESSIONID']}")
                                 for s in sessions])
    finally:
        redis.close()
    wrong = [(s.first, v) for s, v in zip(sessions, values) if v != s.first]
    if wrong:
        raise Failed(f"{len(wrong)} of {len(sessions)} sessions not bound in Redis as served "
                     f"(first backend, Redis value), e.g. {wrong[:5]}")
    with_cookie = sum(1 for s in sessions if "SERVERID" in s.jar)
    if with_cookie:
        raise Failed(f"{with_cookie} sessions got a SERVERID cookie from a stick-table service")


def haproxy_command(sock, line):
    """One command on HAProxy's runtime API (the stats socket); returns its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(REQUEST_TIMEOUT)
        s.connect(sock)
        s.sendall(line.encode() + b"\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode(errors="replace").strip()


def run_haproxy(origins, tmp, running):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise Failed("haproxy is not installed: apt-get install -y haproxy "
                     "(or PROXIES=\"least-sessions round-robin\")")
    port = free_port()
    sock = os.path.join(tmp, "haproxy.sock")
    servers = []
    for origin in origins:
        # b4 is in the config but starts in maintenance (`disabled`); enabling it through the
        # runtime API below is HAProxy's standard way to add capacity at run time (servers
        # provisioned ahead, or `server-template`, then `set server ... state ready`).
        disabled = " disabled" if origin.name == ADDED else ""
        servers.append(f"    server {origin.name} 127.0.0.1:{origin.server_address[1]}"
                       f" cookie {origin.name}{disabled}")
    # The shared harness's haproxy-common.cfg + haproxy-insert.cfg, one thread, with the
    # runtime API on a UNIX socket in the temporary directory.
    config = os.path.join(tmp, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(f"""global
    nbthread 1
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    timeout http-keep-alive 60s
    balance roundrobin

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    cookie SERVERID insert indirect nocache
""" + "\n".join(servers) + "\n")
    check = subprocess.run([haproxy, "-c", "-q", "-f", config], capture_output=True, text=True)
    if check.returncode != 0:
        raise Failed(f"haproxy refused {config}:\n{check.stdout}{check.stderr}")
    proxy = Proxy([haproxy, "-db", "-f", config], os.path.join(tmp, "haproxy.log"), running)

    def add_backend():
        answer = haproxy_command(sock, f"set server be/{ADDED} state ready")
        if answer:
            raise Failed(f"haproxy: set server be/{ADDED} state ready: {answer}")
        state = haproxy_command(sock, "show servers state be")
        row = next((l.split() for l in state.splitlines() if f" {ADDED} " in l), None)
        # Column 6 is srv_op_state (2: running), column 7 srv_admin_state: flags, where 0x04
        # (CMAINT, "disabled in the configuration") stays set and is no maintenance; 0x23 are
        # the maintenance flags and 0x18 the drain flags (HAProxy's include/haproxy/server-t.h).
        if row is None or row[5] != "2" or int(row[6]) & 0x3B:
            raise Failed(f"haproxy: {ADDED} not ready after `set server ... state ready`:\n{state}")

    try:
        proxy.wait_listening([port])
        return scenario(port, add_backend)
    finally:
        proxy.stop()
        running.remove(proxy)


# --- report ----------------------------------------------------------------------------------


def table(results):
    rows = [
        "| proxy | live sessions moved | new sessions on b4 | sessions b1/b2/b3/b4 | spread max/min |",
        "|---|---:|---:|---|---:|",
    ]
    for key, r in results:
        share = 100.0 * r["on_added"] / NEW_SESSIONS
        counts = "/".join(str(r["per_backend"][name]) for name in BACKENDS)
        rows.append(f"| {LABELS[key]} | {r['moved']} | {r['on_added']} ({share:.0f}%) "
                    f"| {counts} | {r['spread']:.2f} |")
    return "\n".join(rows)


STEADY_COMMANDS = ("GET", "SET", "PEXPIRE", "PTTL")


def steady_table(measurements):
    rows = [
        "| ttl (refresh interval) | sessions | requests/s | Redis ops/s | Redis ops/request "
        "| GET/s | SET/s | PEXPIRE/s | PTTL/s | other commands/s | stickyd Redis errors (its whole run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for m in measurements:
        window = m["window"]
        total = sum(m["calls"].values())
        per_s = {name: n / window for name, n in m["calls"].items()}
        other = ", ".join(f"{name} {rate:.1f}" for name, rate in sorted(per_s.items())
                          if name not in STEADY_COMMANDS) or "-"
        interval = refresh_interval(seconds(m["ttl"]))
        rows.append(
            f"| {m['ttl']} ({interval:g} s) | {m['sessions']} | {m['requests'] / window:.0f} "
            f"| {total / window:.1f} | {total / max(m['requests'], 1):.4f} | "
            + " | ".join(f"{per_s.get(name, 0.0):.1f}" for name in STEADY_COMMANDS)
            + f" | {other} | {m['redis_errors']:.0f} |")
    return "\n".join(rows)


def steady_sentences(measurements):
    lines = []
    for m in measurements:
        ttl, n, window = seconds(m["ttl"]), m["sessions"], m["window"]
        interval = refresh_interval(ttl)
        old_every = min(OLD_REFRESH_EVERY, ttl / 2)
        pexpire = m["calls"].get("PEXPIRE", 0) / window
        # A session sends once per round; its refresh falls due at its first request at least
        # `interval` after the last one.
        due = math.ceil(interval / m["round_seconds"] - 1e-9) * m["round_seconds"]
        if WARMUP_SECONDS + window < interval:
            seen = (f"the window is shorter than that, so every session had its refresh in the "
                    f"warm-up and none fell due in the window")
        else:
            seen = (f"with each session sending every {m['round_seconds']:.2f} s a refresh "
                    f"falls due every {due:.2f} s: about {n / due:.0f}/s expected")
        lines.append(
            f"ttl {m['ttl']}: {pexpire:.1f} PEXPIRE/s for {n} hot sessions; the rule allows one "
            f"per session per {interval:g} s ({n} / {interval:g} s = {n / interval:.1f}/s at "
            f"most on average) and {seen}; the old rule (a refresh every min(10 s, ttl/2) = {old_every:g} s "
            f"per hot session) would send up to {n} / {old_every:g} s = {n / old_every:.1f}/s.")
    return "\n".join(lines)


def command_line():
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in
           ("STICKYD_BIN", "OLD_SESSIONS", "NEW_SESSIONS", "PROXIES", "STEADY_SECONDS",
            "WARMUP_SECONDS", "STEADY_TTLS", "DEADLINE")
           if k in os.environ]
    return " ".join(env + [shlex.quote(a) for a in sys.argv])


def describe():
    parts = []
    try:
        version = subprocess.run([STICKYD_BIN, "--version"], capture_output=True, text=True)
        parts.append(version.stdout.strip() or "stickyd")
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
        if rev:
            parts.append(f"tree {rev}")
    except OSError:
        pass
    if shutil.which("haproxy") and "haproxy" in PROXIES:
        line = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
        parts.append(" ".join(line.split()[:3]))
    if shutil.which("redis-server") and "least-sessions-redis" in PROXIES:
        line = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        parts.append(" ".join(line.stdout.split()[:3]))
    return "; ".join(parts)


def on_signal(signum, _frame):
    raise Failed(f"stopped by signal {signum}" if signum != signal.SIGALRM
                 else f"the run took longer than DEADLINE={DEADLINE} s")


def main():
    unknown = [p for p in PROXIES if p not in LABELS]
    if unknown:
        print(f"unknown PROXIES entries {unknown}: use {' '.join(LABELS)}", file=sys.stderr)
        return 2
    if "haproxy" in PROXIES and shutil.which("haproxy") is None:
        print("scale_out: haproxy is not installed: apt-get install -y haproxy "
              "(or PROXIES=\"least-sessions round-robin\")", file=sys.stderr)
        return 2
    if "least-sessions-redis" in PROXIES:
        if shutil.which("redis-server") is None:
            print("scale_out: redis-server is not installed: apt-get install -y redis-server "
                  "(or leave least-sessions-redis out of PROXIES)", file=sys.stderr)
            return 2
        try:
            if not STEADY_TTLS:
                raise Failed("STEADY_TTLS is empty: give at least one ttl (30m)")
            for ttl in STEADY_TTLS:
                seconds(ttl)
        except Failed as error:
            print(f"scale_out: {error}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(DEADLINE)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="stickyd-scale-out.")
    running, origins, results = [], [], []
    try:
        origins = start_origins()
        for key in PROXIES:
            t0 = time.monotonic()
            if key == "haproxy":
                result = run_haproxy(origins, tmp, running)
            elif key == "least-sessions-redis":
                result = run_stickyd_redis(origins, tmp, running)
            else:
                result = run_stickyd(key, origins, tmp, running)
            results.append((key, result))
            print(f"{LABELS[key]}: {result} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    except (Failed, OSError, http.client.HTTPException, KeyboardInterrupt) as error:
        print(f"scale_out: {type(error).__name__}: {error}", file=sys.stderr)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    finally:
        signal.alarm(0)
        for proxy in running:
            proxy.stop()
        for origin in origins:
            origin.shutdown()
            origin.server_close()
        if os.environ.get("KEEP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(table(results))
    print()
    print(f"{OLD_SESSIONS} live sessions on b1..b3, b4 added, {NEW_SESSIONS} new sessions with "
          f"the old ones sending in between; {describe()}; {time.monotonic() - started:.1f} s")
    steady = [m for _, r in results for m in r.get("steady", [])]
    if steady:
        print()
        print(steady_table(steady))
        print()
        print(f"stickyd least-sessions, stick table in Redis: after the scale-out all "
              f"{OLD_SESSIONS + NEW_SESSIONS} sessions keep sending, round-robin, one client; "
              f"{WARMUP_SECONDS:g} s warm-up, then Redis `INFO commandstats` deltas over "
              f"{STEADY_SECONDS:g} s, per second of the window (the script's own INFO left out); "
              f"requests/s as the client counted them; one fresh stickyd per ttl.")
        print(steady_sentences(steady))
    print(f"command: {command_line()}")
    status = 0
    for key, r in results:
        if key.startswith("least-sessions") and (r["moved"] or r["spread"] > SPREAD_TARGET):
            print(f"FAIL: {LABELS[key]} moved {r['moved']} live sessions, spread "
                  f"{r['spread']:.2f} (target: 0 moved, spread <= {SPREAD_TARGET})",
                  file=sys.stderr)
            status = 1
    for m in steady:
        if m["moved"] or m["served"] != m["requests"]:
            print(f"FAIL: steady state, ttl {m['ttl']}: {m['moved']} sessions moved, stickyd "
                  f"counted {m['served']:.0f} requests for the client's {m['requests']}",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
