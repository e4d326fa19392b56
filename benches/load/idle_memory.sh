#!/usr/bin/env bash
# Resident memory of stickyd and HAProxy (cookie insert, one thread each) holding N idle
# keep-alive client connections, each after one answered request, on the same origin.
#
#   benches/load/idle_memory.sh            # N=10000
#   N=20000 benches/load/idle_memory.sh
#
# Needs haproxy, nginx and python3, and an open-file limit (ulimit -Hn) above N. Binds 127.0.0.1:18081
# (origin), :18091 (HAProxy) and :18095 (stickyd) and stops everything it started on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
n=${N:-10000}
dir=$(mktemp -d /tmp/stickyd-idle.XXXXXX)
ulimit -n "$(ulimit -Hn)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$dir"' EXIT
binary=${STICKYD_BIN:-}
if [[ -z $binary ]]; then
  (cd "$repo" && cargo build --release --locked -q)
  binary=$repo/target/release/stickyd
fi

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
cat >"$dir/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn $((n + 100))
    # Only client sockets are open, one fd each: the hard limit is enough though HAProxy
    # asks for 2 x maxconn; no strict-limits makes its failed setrlimit a warning.
    no strict-limits
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 120s
    timeout server 60s
    timeout http-keep-alive 120s
frontend fe
    bind 127.0.0.1:18091
    default_backend be
backend be
    cookie SERVERID insert indirect nocache
    server b1 127.0.0.1:18081 cookie b1
CONF
cat >"$dir/stickyd.toml" <<CONF
log_level = "warn"
threads = 1
[[service]]
name = "bench"
listen = ["127.0.0.1:18095"]
[service.limits]
head_timeout = "120s"
max_connections = $((n + 100))
[service.affinity]
strategy = "insert"
[[service.backend]]
name = "b1"
address = "127.0.0.1:18081"
CONF

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

nginx -c "$dir/origin.conf" -g 'daemon off;' & pids+=($!)
wait_port 18081
haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 & pids+=($!); haproxy_pid=$!
"$binary" --config "$dir/stickyd.toml" >"$dir/stickyd.log" 2>&1 & pids+=($!); stickyd_pid=$!
wait_port 18091; wait_port 18095

printf '%-8s %8s %12s %12s %14s %s\n' proxy conns rss_idle_MiB rss_held_MiB KiB_per_conn closed
for proxy in haproxy:18091:$haproxy_pid stickyd:18095:$stickyd_pid; do
  IFS=: read -r name port pid <<<"$proxy"
  before=$(rss_kib "$pid")
  coproc clients { python3 "$here/idle_clients.py" "$port" "$n" 3; }
  read -r _ ready <&"${clients[0]}"
  sleep 1 # let the proxy settle after the last answer; the connections stay open for 3 s
  held=$(rss_kib "$pid")
  read -r _ closed <&"${clients[0]}"
  wait "$clients_PID"
  awk -v name="$name" -v n="$ready" -v b="$before" -v h="$held" -v c="$closed" \
    'BEGIN { printf "%-8s %8d %12.1f %12.1f %14.2f %s\n", name, n, b / 1024, h / 1024, (h - b) / n, c }'
done
echo "($(haproxy -v | head -1 | cut -d' ' -f1-3); stickyd $(git -C "$repo" describe --always --dirty))"
