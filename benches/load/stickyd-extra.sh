#!/usr/bin/env bash
# EXTRA_CMD for ../shared/bench/compare.sh: stickyd in the mode STICKYD_MODE
# (insert | prefix | stick-table | hash), configured from the harness's BENCH_* variables,
# access log off (log_level = "warn") like the other proxies, in the foreground.
set -euo pipefail
mode=${STICKYD_MODE:?set STICKYD_MODE to insert, prefix, stick-table or hash}
binary=${STICKYD_BIN:?set STICKYD_BIN to the release binary}
config=$BENCH_RUN_DIR/stickyd-$mode.toml
case $mode in
  insert) affinity='strategy = "insert"' ;;
  prefix) affinity=$'strategy = "prefix"\ncookie = "JSESSIONID"' ;;
  stick-table) affinity=$'strategy = "stick-table"\ncookie = "JSESSIONID"' ;;
  hash) affinity=$'strategy = "hash"\nkey = "cookie:JSESSIONID"\nfallback = "balance"' ;;
  *) echo "unknown STICKYD_MODE $mode" >&2; exit 2 ;;
esac
{
  printf 'log_level = "warn"\nthreads = %s\n\n[[service]]\nname = "bench"\nlisten = ["127.0.0.1:%s"]\n' "$BENCH_THREADS" "$BENCH_PORT"
  printf '[service.affinity]\n%s\n' "$affinity"
  i=0
  for backend in ${BENCH_BACKENDS//,/ }; do
    i=$((i + 1))
    printf '[[service.backend]]\nname = "b%s"\naddress = "%s"\n' "$i" "$backend"
  done
} >"$config"
exec "$binary" --config "$config"
