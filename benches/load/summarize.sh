#!/usr/bin/env bash
# Medians over several runs of the shared harness, with stickyd's ratios to HAProxy.
#
#   benches/load/summarize.sh RESULTS/*.tsv
#
# Reads the harness's .tsv rows (one file per harness call; any number of runs), groups them by
# (config, threads, mode), and prints per group the number of runs and the median of req/s,
# p50, p99 and proxy CPU µs/req. Each stickyd-MODE row is then set against the HAProxy config of
# the same sticky mode (hash against HAProxy's stick table, the nearest HAProxy has, and against
# nginx's consistent hash): ratio stickyd / HAProxy of µs/req and p99 (below 1 is better) and of
# req/s (above 1 is better). Rows with errors, a failed stickiness check, another process's
# CPU above 5% or hypervisor steal above 5% in any run are marked. MAX_STEAL=N leaves out the
# runs during which the hypervisor stole more than N% of the CPU (a busy host slows one row
# and not the others).
#
#   MAX_STEAL=2 benches/load/summarize.sh RESULTS/*.tsv
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 RESULTS.tsv..." >&2; exit 2; }
awk -F'\t' '
  function median(list,    values, n, i, j, swap) {
    n = split(list, values, " ")
    for (i = 2; i <= n; i++)
      for (j = i; j > 1 && values[j - 1] + 0 > values[j] + 0; j--) {
        swap = values[j]; values[j] = values[j - 1]; values[j - 1] = swap
      }
    return n % 2 ? values[(n + 1) / 2] : (values[n / 2] + values[n / 2 + 1]) / 2
  }
  $1 ~ /^#/ || $2 == "config" || NF < 14 { next }
  {
    key = $2 SUBSEP $3 SUBSEP $4
    if (!(key in seen)) { seen[key] = 1; order[++groups] = key }
  }
  max_steal != "" && $14 + 0 > max_steal + 0 { next }
  {
    runs[key]++
    rps[key] = rps[key] " " $5; p50[key] = p50[key] " " $6; p99[key] = p99[key] " " $7
    usreq[key] = usreq[key] " " $12
    if ($9 > 0 || $10 == "FAIL" || $13 > 5 || $14 > 5) flag[key] = "!"
  }
  END {
    for (g = 1; g <= groups; g++) {
      key = order[g]
      if (!runs[key]) continue
      m_rps[key] = median(rps[key]); m_p50[key] = median(p50[key])
      m_p99[key] = median(p99[key]); m_us[key] = median(usreq[key])
    }
    printf "%-20s %3s %-9s %4s %9s %7s %7s %7s   %-11s %7s %6s %6s\n", "config", "thr", "mode", "runs",
      "req/s", "p50_ms", "p99_ms", "us/req", "vs", "us/req", "p99", "req/s"
    for (g = 1; g <= groups; g++) {
      key = order[g]; split(key, part, SUBSEP)
      if (!runs[key]) continue
      line = sprintf("%-20s %3s %-9s %4d %9.0f %7.3f %7.3f %7.2f", part[1] flag[key], part[2], part[3],
        runs[key], m_rps[key], m_p50[key], m_p99[key], m_us[key])
      references = ""
      if (part[1] == "stickyd-insert") references = "hap-insert"
      else if (part[1] == "stickyd-prefix") references = "hap-prefix"
      else if (part[1] == "stickyd-stick-table") references = "hap-stick"
      else if (part[1] == "stickyd-hash") references = "hap-stick nginx-hash"
      n = split(references, reference, " ")
      if (n == 0) { print line; continue }
      for (r = 1; r <= n; r++) {
        other = reference[r] SUBSEP part[2] SUBSEP part[3]
        if (!(other in runs) || m_us[other] == 0 || m_p99[other] == 0 || m_rps[other] == 0) continue
        printf "%s   %-11s %6.2fx %5.2fx %5.2fx\n", line, reference[r], m_us[key] / m_us[other],
          m_p99[key] / m_p99[other], m_rps[key] / m_rps[other]
        line = sprintf("%-62s", "")
      }
    }
    print "(medians over the runs; vs = stickyd / the other proxy: us/req and p99 below 1.00x and"
    print " req/s above 1.00x are better for stickyd; ! = errors, a failed stickiness check,"
    print " other CPU or hypervisor steal above 5% in some run" (max_steal != "" ? \
      "; runs with steal above " max_steal "% left out)" : ")")
  }' max_steal="${MAX_STEAL:-}" "$@"
