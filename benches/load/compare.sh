#!/usr/bin/env bash
# stickyd beside HAProxy and nginx on the same origins, in one run per stickyd mode, with the
# shared harness (../shared/bench/compare.sh: wrk, one proxy thread, CPU per request).
#
#   benches/load/compare.sh                # all modes, 1 thread, about 4 minutes per mode
#   MODES_STICKYD="insert" benches/load/compare.sh
#
# Needs haproxy, nginx and wrk (apt-get install haproxy nginx wrk). Everything runs on
# 127.0.0.1 and stops by itself. Results go to $RESULTS_DIR (default /tmp/stickyd-bench).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${HARNESS:-$repo/../shared/bench}
export RESULTS_DIR=${RESULTS_DIR:-/tmp/stickyd-bench}
mkdir -p "$RESULTS_DIR"
(cd "$repo" && cargo build --release --locked -q)
export STICKYD_BIN=$repo/target/release/stickyd
for mode in ${MODES_STICKYD:-insert prefix stick-table hash}; do
  case $mode in
    insert) cookie=serverid; builtin=hap-insert ;;
    prefix) cookie=prefix; builtin=hap-prefix ;;
    stick-table) cookie=plain; builtin=hap-stick ;;
    hash) cookie=plain; builtin="hap-stick nginx-hash" ;;
  esac
  echo "== stickyd $mode beside $builtin"
  (cd "$harness" && STICKYD_MODE=$mode EXTRA_CMD="$here/stickyd-extra.sh" EXTRA_NAME="stickyd-$mode" \
    EXTRA_COOKIE=$cookie CONFIGS="$builtin" THREADS_LIST=${THREADS_LIST:-1} ./compare.sh)
done
