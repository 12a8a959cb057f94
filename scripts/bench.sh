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

scripts/install-nats-server.sh
if ! command -v curl >/dev/null || ! command -v jq >/dev/null; then
    apt-get install -y curl jq
fi

# Each server holds up to ~15k client sockets at 45k connections; load processes up to ~7.5k.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --locked -p connwatch -p testkit --bin connwatch --bin connwatch-bench

echo "## machine"
echo "- nproc: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r); fd limit $(ulimit -n)"
echo "- $(nats-server --version); $(rustc --version); $(curl --version | head -1 | cut -d' ' -f1-2); $(jq --version)"
echo "- load before: $(uptime)"
target/release/connwatch-bench run "$@"
echo "- load after: $(uptime)"
