#!/usr/bin/env bash
# Measures the live census (issue 13) on a local 3-node nats-server cluster (loopback only),
# each mode side by side with its baseline in the same run. See BENCHMARKS.md, "Live census".
#
#   scripts/bench-live.sh latency     # 50 trials live vs sweeps alone every 30 s
#   scripts/bench-live.sh churn       # 5 trials: random churn, then census vs every /connz
#   scripts/bench-live.sh cost        # 45k connections: server CPU/bytes per event pair and per sweep,
#                                     # paired windows, medians + quartiles; per hour at 0,1,10,100/s
#   scripts/bench-live.sh flood       # 2,000 connects/s for 10 s, then the disconnect flood
#   scripts/bench-live.sh all         # the four, one after the other
#
# Further arguments go to the mode, e.g. `scripts/bench-live.sh cost --size 30000 --window 60s`
# (`target/release/connwatch-bench live-<mode> --help` lists them). Results: tables on stdout,
# JSON in target/bench/live-<mode>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:?usage: scripts/bench-live.sh latency|churn|cost|flood|all [args]}"
shift

# shellcheck source=scripts/bench-prelude.sh
. scripts/bench-prelude.sh
case "$mode" in
    all) modes=(latency churn cost flood) ;;
    latency | churn | cost | flood) modes=("$mode") ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
for m in "${modes[@]}"; do
    echo "- $(date -u '+%F %T UTC'), load before $m: $(cut -d' ' -f1-3 /proc/loadavg)"
    target/release/connwatch-bench "live-$m" "$@"
    echo "- load after $m: $(cut -d' ' -f1-3 /proc/loadavg)"
done
