#!/usr/bin/env bash
# What a flood of session ids that no backend issued leaves in stickyd's stick table: its
# resident memory, its entries, and, in Redis mode, the keys it leaves in Redis and their TTLs.
#
#   benches/load/session_flood.sh                         # every scenario below, about 2 minutes
#   SCENARIOS="memory:256:1500:61440" benches/load/session_flood.sh
#
# A scenario is STORE:MAX_KEY_BYTES:N:SIZE: a fresh stickyd (release build, one thread,
# stick table on cookie `sid`, default ttl and reservation_ttl) in front of a trivial origin
# that never sets a cookie, and N requests over 8 keep-alive connections, each with a unique
# session id of SIZE bytes. The defaults:
#   memory:256:1500:61440      60 KiB ids at the default max_key_bytes (256): nothing stored
#   memory:1048576:1500:61440  the same with max_key_bytes at 1 MiB: what was stored before
#   redis:256:1500:61440       the same in Redis mode: no key
#   redis:1048576:1500:61440   ... and with max_key_bytes at 1 MiB: 1 500 short-lived keys
#   redis:256:2000:32          2 000 short made-up ids: keys live reservation_ttl (10 s), then none
# For each it prints stickyd's VmRSS before and after (/proc/PID/status), the stick-table
# entries and stickyd_oversized_keys_total (admin /metrics); in Redis mode the keys under
# `stickyd:` (redis-cli --scan), their smallest and largest PTTL and Redis's used_memory; then,
# once reservation_ttl has passed, the entries (and keys) left.
#
# Needs python3, curl, and redis-server / redis-cli (7.0+) for the Redis scenarios. Every port
# is a free one; everything the script starts is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
scenarios=${SCENARIOS:-memory:256:1500:61440 memory:1048576:1500:61440 redis:256:1500:61440 redis:1048576:1500:61440 redis:256:2000:32}
reservation_s=10
dir=$(mktemp -d /tmp/stickyd-flood.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$dir"
}
trap cleanup EXIT
binary=${STICKYD_BIN:-}
if [[ -z $binary ]]; then
  (cd "$repo" && cargo build --release --locked -q)
  binary=$repo/target/release/stickyd
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# The value of the first series of metric $2 on admin port $1 (awk reads to the end: an early
# exit would fail curl with SIGPIPE, and the script with it).
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v name="$2" '!found && $1 ~ "^"name"[{]" {print $2; found = 1}'; }

origin_port=$(free_port)
python3 "$here/session_flood.py" backend "$origin_port" & pids+=($!)
wait_port "$origin_port"

redis_port=
redis() { redis-cli -p "$redis_port" "$@"; }
if [[ $scenarios == *redis:* ]]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$dir/redis.log" 2>&1 & pids+=($!)
  wait_port "$redis_port"
fi
redis_used() { redis INFO memory | awk -F: '/^used_memory:/ {printf "%.1f", $2 / 1048576}'; }
# Smallest and largest PTTL of stickyd's keys in ms (-1: a key without TTL), and their count.
key_ttls() {
  redis --scan --pattern 'stickyd:*' | sed 's/^/PTTL /' | redis-cli -p "$redis_port" |
    sort -n | awk 'NR == 1 {min = $1} {max = $1} END {printf "%d %s %s", NR, NR ? min : "-", NR ? max : "-"}'
}

printf '%-7s %8s %5s %6s %8s %9s %9s %7s %6s %6s %11s %13s %6s %6s\n' \
  store max_key n id_B rss_MiB rss_after added_MiB entries oversz keys pttl_ms redis_MiB e_left k_left
for scenario in $scenarios; do
  IFS=: read -r store max_key n size <<<"$scenario"
  port=$(free_port); admin_port=$(free_port)
  store_lines="store = \"memory\""
  if [[ $store == redis ]]; then
    redis FLUSHALL >/dev/null
    store_lines="store = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port/0\""
  fi
  cat >"$dir/stickyd.toml" <<CONF
log_level = "warn"
threads = 1
[admin]
bind = "127.0.0.1:$admin_port"
[[service]]
name = "flood"
listen = ["127.0.0.1:$port"]
[service.limits]
max_key_bytes = $max_key
[service.affinity]
strategy = "stick-table"
cookie = "sid"
reservation_ttl = "${reservation_s}s"
$store_lines
[[service.backend]]
name = "b1"
address = "127.0.0.1:$origin_port"
CONF
  "$binary" --config "$dir/stickyd.toml" >"$dir/stickyd.log" 2>&1 &
  stickyd_pid=$!; pids+=($stickyd_pid)
  wait_port "$port"; wait_port "$admin_port"
  [[ $store == redis ]] && used_before=$(redis_used)
  before=$(rss_kib "$stickyd_pid")
  sent=$(python3 "$here/session_flood.py" flood "$port" "$n" "$size")
  sleep 1 # let stickyd settle after the last answer
  after=$(rss_kib "$stickyd_pid")
  entries=$(metric "$admin_port" stickyd_stick_table_entries)
  oversized=$(metric "$admin_port" stickyd_oversized_keys_total)
  keys=- ttls=- used=- left=-
  if [[ $store == redis ]]; then
    read -r keys min max <<<"$(key_ttls)"
    ttls="$min..$max"
    used="$used_before->$(redis_used)"
  fi
  sleep $((reservation_s + 1)) # reservation_ttl passes: what is left is kept for longer
  entries_left=$(metric "$admin_port" stickyd_stick_table_entries)
  [[ $store == redis ]] && left=$(redis --scan --pattern 'stickyd:*' | wc -l)
  kill "$stickyd_pid"; wait "$stickyd_pid" 2>/dev/null || true
  awk -v s="$store" -v k="$max_key" -v n="$n" -v z="$size" -v b="$before" -v a="$after" \
    -v e="$entries" -v o="$oversized" -v rk="$keys" -v t="$ttls" -v u="$used" \
    -v el="$entries_left" -v l="$left" \
    'BEGIN { printf "%-7s %8s %5d %6d %8.1f %9.1f %9.1f %7s %6s %6s %11s %13s %6s %6s\n", s, k, n, z, b / 1024, a / 1024, (a - b) / 1024, e, o, rk, t, u, el, l }'
  grep -q "sent $n 200:$n\$" <<<"$sent" || echo "  (client: $sent)"
done
echo "(stickyd $(git -C "$repo" describe --always --dirty); reservation_ttl ${reservation_s}s; $(redis-server --version 2>/dev/null | cut -d' ' -f1-3))"
