#!/usr/bin/env bash
# Resident memory of stickyd and HAProxy (cookie insert, one thread each) holding idle client
# connections, each after one answered exchange, on the same origin. One case at a time, each
# with a fresh HAProxy and a fresh stickyd (so memory one case freed does not serve the next):
#
#   keepalive  N (10 000) idle keep-alive HTTP/1.1 connections, each after one request.
#   ws         WS_N (4 000) idle WebSocket tunnels, each after the handshake (101 with the
#              right Sec-WebSocket-Accept) and one masked text frame echoed back. The figure
#              per tunnel covers both of the proxy's sockets, the client's and the backend's.
#   h2tls      H2_N (4 000) idle HTTP/2 connections over TLS (ALPN h2, a self-signed P-256
#              certificate made with openssl), each after one GET on stream 1.
#
#   benches/load/idle_memory.sh                        # every case, about a minute
#   N=20000 CASES=keepalive benches/load/idle_memory.sh
#   CASES="ws h2tls" WS_N=8000 benches/load/idle_memory.sh
#
# Each proxy's VmRSS (/proc/PID/status) is read before the clients connect and SETTLE (1)
# seconds after the last one is set up; the connections are held HOLD (SETTLE + 2) seconds
# after that, every proxy timeout (keep-alive, client, tunnel) is set to minutes, and `closed`
# counts the ones the proxy closed anyway. stickyd closes an idle pooled backend connection
# after 4 s, so with the default SETTLE its reading still includes the backend connections
# opened while the clients were set up (see the fds line); SETTLE=5 leaves them out.
# stickyd/haproxy is stickyd's KiB per connection over HAProxy's in the same case.
# The open fds of each proxy while held are printed below the table.
#
# Python helpers (python3, standard library only):
#   idle_clients.py PORT N HOLD MODE   the clients: opens N connections, sets each up (MODE
#                                      http1, ws or h2tls), prints `ready N`, holds them,
#                                      prints `closed K`.
#   ws_origin.py PORT                  the WebSocket echo origin (nginx serves the other cases).
#
# Needs haproxy, nginx, openssl and python3, and an open-file limit (ulimit -Hn) above N and
# above 2 x WS_N (a tunnel holds two fds in the proxy). Binds 127.0.0.1 only: :18081 (nginx
# origin), :18082 (WebSocket origin), HAProxy on :18091 / :18092 / :18093 and stickyd on
# :18095 / :18096 / :18097 (keepalive / ws / h2tls), and stops everything it started on exit.
# STICKYD_BIN uses a prebuilt binary instead of `cargo build --release`; KEEP=1 keeps the
# temporary directory (configs and logs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cases=${CASES:-keepalive ws h2tls}
settle=${SETTLE:-1}
hold=${HOLD:-$((settle + 2))}
dir=$(mktemp -d /tmp/stickyd-idle.XXXXXX)
ulimit -n "$(ulimit -Hn)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$dir"' EXIT
for case in $cases; do
  case $case in
    keepalive | ws | h2tls) ;;
    *) echo "unknown case $case: the cases are keepalive, ws and h2tls" >&2; exit 2 ;;
  esac
done
binary=${STICKYD_BIN:-}
if [[ -z $binary ]]; then
  (cd "$repo" && cargo build --release --locked -q)
  binary=$repo/target/release/stickyd
fi

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
needs() { [[ " $cases " == *" $1 "* ]]; }

# Origins, shared by the cases: nginx for HTTP (keepalive, h2tls), python for WebSocket.
if needs keepalive || needs h2tls; then
  cat >"$dir/origin.conf" <<CONF
worker_processes 1;
pid $dir/origin.pid;
error_log $dir/origin.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:18081; location / { return 200 "hello from b1"; } }
}
CONF
  nginx -c "$dir/origin.conf" -g 'daemon off;' & pids+=($!)
  wait_port 18081
fi
if needs ws; then
  python3 "$here/ws_origin.py" 18082 2>"$dir/ws_origin.log" & pids+=($!)
  wait_port 18082
fi
if needs h2tls; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=bench \
    -addext subjectAltName=DNS:bench -days 1 -keyout "$dir/bench.key" -out "$dir/bench.crt" 2>/dev/null
  cat "$dir/bench.crt" "$dir/bench.key" >"$dir/bench.pem" # HAProxy's crt: chain and key in one file
fi
origin_pids=("${pids[@]}")

# Writes haproxy-CASE.cfg and stickyd-CASE.toml for case $1 holding $2 connections.
configure() {
  local case=$1 count=$2 haproxy_bind stickyd_listen backend tunnel='' tls=''
  case $case in
    keepalive) haproxy_bind='127.0.0.1:18091'; stickyd_listen='127.0.0.1:18095'; backend='127.0.0.1:18081' ;;
    ws)
      haproxy_bind='127.0.0.1:18092'; stickyd_listen='127.0.0.1:18096'; backend='127.0.0.1:18082'
      tunnel='tunnel_timeout = "300s"' ;;
    h2tls)
      haproxy_bind="127.0.0.1:18093 ssl crt $dir/bench.pem alpn h2,http/1.1"
      stickyd_listen='127.0.0.1:18097'; backend='127.0.0.1:18081'
      tls=$(printf '[[service.tls]]\ncert = "%s"\nkey = "%s"' "$dir/bench.crt" "$dir/bench.key") ;;
  esac
  cat >"$dir/haproxy-$case.cfg" <<CONF
global
    nbthread 1
    maxconn $((count + 100))
    # HAProxy asks for 2 x maxconn fds, more than the hard limit may allow for keepalive's
    # 10 000 (where only client sockets are open, one fd each); no strict-limits makes its
    # failed setrlimit a warning.
    no strict-limits
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 300s
    timeout tunnel 300s
frontend fe
    bind $haproxy_bind
    default_backend be
backend be
    cookie SERVERID insert indirect nocache
    server b1 $backend cookie b1
CONF
  cat >"$dir/stickyd-$case.toml" <<CONF
log_level = "warn"
threads = 1
[[service]]
name = "bench"
listen = ["$stickyd_listen"]
$tls
[service.limits]
handshake_timeout = "60s"
head_timeout = "300s"
keepalive_timeout = "300s"
$tunnel
max_connections = $((count + 100))
[service.affinity]
strategy = "insert"
[[service.backend]]
name = "b1"
address = "$backend"
CONF
}

fds=()
printf '%-9s %-8s %8s %12s %12s %14s %7s %s\n' case proxy conns rss_idle_MiB rss_held_MiB KiB_per_conn closed stickyd/haproxy
for case in $cases; do
  case $case in
    keepalive) count=${N:-10000}; mode=http1; ports=(18091 18095) ;;
    ws) count=${WS_N:-4000}; mode=ws; ports=(18092 18096) ;;
    h2tls) count=${H2_N:-4000}; mode=h2tls; ports=(18093 18097) ;;
  esac
  configure "$case" "$count"
  haproxy -db -f "$dir/haproxy-$case.cfg" >"$dir/haproxy-$case.log" 2>&1 & haproxy_pid=$!
  "$binary" --config "$dir/stickyd-$case.toml" >"$dir/stickyd-$case.log" 2>&1 & stickyd_pid=$!
  pids=("${origin_pids[@]}" "$haproxy_pid" "$stickyd_pid")
  wait_port "${ports[0]}"; wait_port "${ports[1]}"
  sleep 0.5 # let both finish starting before the idle reading
  haproxy_kib=''
  for proxy in haproxy:${ports[0]}:$haproxy_pid stickyd:${ports[1]}:$stickyd_pid; do
    IFS=: read -r name port pid <<<"$proxy"
    before=$(rss_kib "$pid")
    coproc clients { python3 "$here/idle_clients.py" "$port" "$count" "$hold" "$mode"; }
    read -r _ ready <&"${clients[0]}"
    sleep "$settle" # let the proxy settle after the last answer; the connections stay open for $hold s
    held=$(rss_kib "$pid")
    fds+=("$case/$name $(find "/proc/$pid/fd" -mindepth 1 | wc -l)")
    read -r _ closed <&"${clients[0]}"
    wait "$clients_PID"
    kib=$(awk -v n="$ready" -v b="$before" -v h="$held" 'BEGIN { printf "%.2f", (n > 0 ? (h - b) / n : 0) }')
    ratio=-
    if [[ $name == haproxy ]]; then
      haproxy_kib=$kib
    else
      ratio=$(awk -v s="$kib" -v h="$haproxy_kib" 'BEGIN { if (h > 0) printf "%.1fx", s / h; else print "-" }')
    fi
    awk -v case="$case" -v name="$name" -v n="$ready" -v b="$before" -v h="$held" -v k="$kib" -v c="$closed" -v r="$ratio" \
      'BEGIN { printf "%-9s %-8s %8d %12.1f %12.1f %14.2f %7s %s\n", case, name, n, b / 1024, h / 1024, k, c, r }'
  done
  kill "$haproxy_pid" "$stickyd_pid" 2>/dev/null || true
  wait "$haproxy_pid" "$stickyd_pid" 2>/dev/null || true
  pids=("${origin_pids[@]}")
done
echo "(open fds while held: $(IFS=,; echo "${fds[*]}" | sed 's/,/, /g'))"
echo "($(haproxy -v | head -1 | cut -d' ' -f1-3); stickyd $(git -C "$repo" describe --always --dirty))"
