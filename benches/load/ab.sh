#!/usr/bin/env bash
# Before/after on a noisy host: two stickyd builds, A and B, alternating (A, B, A, B, ...) for
# ROUNDS rounds, each call of the shared harness beside HAProxy in the same sticky mode, then
# one table of medians. Compare the per-call ratios stickyd/HAProxy, not absolute µs/req.
#
#   A=/tmp/stickyd-before B=target/release/stickyd benches/load/ab.sh
#   ROUNDS=5 MODE=prefix A=... B=... benches/load/ab.sh
#
# An environment variable for one side only: A_ENV="NAME=value" or B_ENV. Needs haproxy, nginx
# and wrk; 127.0.0.1 only. Rows go to $RESULTS_DIR (default /tmp/stickyd-bench)/ab-TIME/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${HARNESS:-$repo/../shared/bench}
: "${A:?set A to the first stickyd binary}" "${B:?set B to the second stickyd binary}"
mode=${MODE:-insert}
case $mode in
  insert) cookie=serverid; builtin=hap-insert ;;
  prefix) cookie=prefix; builtin=hap-prefix ;;
  stick-table | hash) cookie=plain; builtin=hap-stick ;;
  *) echo "unknown MODE $mode" >&2; exit 2 ;;
esac
out=${RESULTS_DIR:-/tmp/stickyd-bench}/ab-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
for round in $(seq "${ROUNDS:-3}"); do
  for side in A B; do
    binary=${!side}; env_name=${side}_ENV; extra_env=${!env_name:-}
    echo "== round $round: $side ($binary) beside $builtin"
    (cd "$harness" && env $extra_env RESULTS_DIR=$out STICKYD_BIN=$(realpath "$binary") \
      STICKYD_MODE=$mode EXTRA_CMD="$here/stickyd-extra.sh" EXTRA_NAME="stickyd-$side" \
      EXTRA_COOKIE=$cookie CONFIGS=$builtin THREADS_LIST=1 ./compare.sh >/dev/null)
  done
done
"$here/summarize.sh" "$out"/*.tsv | tee "$out/summary.txt"
echo "rows: $out/*.tsv   table: $out/summary.txt"
