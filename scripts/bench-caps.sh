#!/usr/bin/env bash
# Per-user caps: time from a connection over its user's cap to its close, side by side with the
# floor (its CONNECT event reaching a subscriber), on a local 3-node cluster. See BENCHMARKS.md.
#
#   scripts/bench-caps.sh                 # 100 trials, cap 5
#   scripts/bench-caps.sh --trials 200 --cap 50
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
cargo build --release --locked -p connwatch -p testkit --bin connwatch --bin cap-bench

echo "- $(nproc) cores; $(nats-server --version); load before: $(uptime)"
target/release/cap-bench --connwatch target/release/connwatch --trials 100 "$@"
echo "- load after: $(uptime)"
