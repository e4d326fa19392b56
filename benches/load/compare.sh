#!/usr/bin/env bash
# stickyd beside HAProxy and nginx on the same origins, with the shared harness
# (../shared/bench/compare.sh: wrk, one proxy thread each, proxy CPU per request), in each
# stickyd sticky mode and both load modes (a known session on every request; a new session on
# every request), RUNS times over, then one table of medians with the ratios to HAProxy.
#
#   benches/load/compare.sh                          # 4 modes x 3 runs, about 20 minutes
#   RUNS=1 MODES_STICKYD="insert" benches/load/compare.sh
#   benches/load/summarize.sh /tmp/stickyd-bench/RUN/*.tsv   # reprint a run's table
#
# The harness is not in this repository: it is the team's shared sticky-session load harness
# (compare.sh, its HAProxy and nginx configs and a wrk Lua script), which CI and every
# developer machine have checked out beside the repository as ../shared/bench, the same
# directory CI gets with ../shared. Point HARNESS=DIR at another copy of it.
#
# Needs haproxy, nginx and wrk (apt-get install haproxy nginx wrk). Everything runs on
# 127.0.0.1 and stops by itself. Each call writes its rows and table to a directory of its own
# under $RESULTS_DIR (default /tmp/stickyd-bench).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${HARNESS:-$repo/../shared/bench}
[[ -x $harness/compare.sh ]] || { echo "no load harness at $harness: check out ../shared beside the repository, or set HARNESS=DIR" >&2; exit 2; }
out=${RESULTS_DIR:-/tmp/stickyd-bench}/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
(cd "$repo" && cargo build --release --locked -q)
export STICKYD_BIN=$repo/target/release/stickyd
for run in $(seq "${RUNS:-3}"); do
  for mode in ${MODES_STICKYD:-insert prefix stick-table hash}; do
    case $mode in
      insert) cookie=serverid; builtin=hap-insert ;;
      prefix) cookie=prefix; builtin=hap-prefix ;;
      stick-table) cookie=plain; builtin=hap-stick ;;
      hash) cookie=plain; builtin="hap-stick nginx-hash" ;;
    esac
    echo "== run $run: stickyd $mode beside $builtin"
    (cd "$harness" && RESULTS_DIR=$out STICKYD_MODE=$mode EXTRA_CMD="$here/stickyd-extra.sh" \
      EXTRA_NAME="stickyd-$mode" EXTRA_COOKIE=$cookie CONFIGS="$builtin" \
      THREADS_LIST=${THREADS_LIST:-1} ./compare.sh >/dev/null)
  done
done
{
  head -4 "$(ls "$out"/*.tsv | head -1)" | grep '^#'
  echo "# $(ls "$out"/*.tsv | wc -l) harness calls, stickyd $(git -C "$repo" describe --always --dirty)"
  "$here/summarize.sh" "$out"/*.tsv
} | tee "$out/summary.txt"
echo "rows: $out/*.tsv   table: $out/summary.txt"
