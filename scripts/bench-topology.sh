#!/usr/bin/env bash
# A sweep of a super-cluster on this machine (loopback only): 6 clusters × 8 servers joined by
# gateways, tens of thousands of connections held by load workers, connwatch's bounded sweep
# (`sweep.max_in_flight` 8: STATSZ, then directed requests 8 servers at a time) side by side
# with the PING to all 48, with live mode's (each list to the view as it comes) and with each
# one's floor. Results: a table on stdout, JSON in
# target/bench/topology.json. See BENCHMARKS.md ("A super-cluster of 48 servers").
#
#   scripts/bench-topology.sh            # 6 × 8 servers, 24,000 and 48,000 connections, 5 runs
#   scripts/bench-topology.sh ARGS...    # any `connwatch-bench run` arguments instead, e.g.
#       --clusters 1 --servers-per-cluster 3 --sizes 45000 --max-in-flight 2 \
#       --methods connwatch,connwatch-ping,floor,floor-bounded --soak-sweeps 0
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
    set -- --clusters 6 --servers-per-cluster 8 --sizes 24000,48000 --runs 5 --soak-sweeps 0 \
        --out target/bench/topology.json \
        --methods connwatch,connwatch-ping,connwatch-live,floor,floor-bounded,report
fi
# shellcheck source=scripts/bench-prelude.sh
. scripts/bench-prelude.sh
echo "- load before: $(uptime)"
target/release/connwatch-bench run "$@"
echo "- load after: $(uptime)"
