#!/usr/bin/env bash
# Measures what a connwatch sweep costs next to the physical floor and the usual recipes, on a
# local 3-node nats-server cluster (loopback only). Results: a table on stdout, JSON in
# target/bench/results.json. See BENCHMARKS.md.
#
#   scripts/bench.sh                       # sizes 10000,30000,45000, 5 runs each, 1000-sweep soak
#   scripts/bench.sh --quick               # a smoke run with small sizes
#   scripts/bench.sh --sizes 20000 --runs 9 --methods connwatch,floor
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null || ! command -v jq >/dev/null; then
    apt-get install -y curl jq
fi
# shellcheck source=scripts/bench-prelude.sh
. scripts/bench-prelude.sh
echo "- $(curl --version | head -1 | cut -d' ' -f1-2); $(jq --version)"
echo "- load before: $(uptime)"
target/release/connwatch-bench run "$@"
echo "- load after: $(uptime)"
