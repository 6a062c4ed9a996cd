#!/usr/bin/env bash
# dfedit --threads on this machine: one emoji sample (34 steps, end to end: start, load, sample,
# write), alternating thread counts so both see the same background load; prints one line per run
# with the 1-minute load average. usage: bash benchmarks/threads.sh [REPEATS] [THREADS...]
# (default: 3 repeats of 1 and 2 threads). Results: docs/benchmarks.md#cpu-threads.
set -euo pipefail
REPS=${1:-3}; shift || true
if [ $# -gt 0 ]; then COUNTS=("$@"); else COUNTS=(1 2); fi
TMP=$(mktemp -d)
for rep in $(seq "$REPS"); do
  for n in "${COUNTS[@]}"; do
    s=$(date +%s.%N)
    dfedit sample "grinning face" --model emoji --threads "$n" --quiet --no-display -o "$TMP/t$n-$rep.png"
    e=$(date +%s.%N)
    printf 'threads=%s rep=%s wall=%.1fs load1=%s\n' "$n" "$rep" "$(echo "$e - $s" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
rm -rf "$TMP"
