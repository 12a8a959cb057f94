#!/usr/bin/env bash
# Runs connwatch's whole test suite: formatting, lints, unit tests and the integration tests,
# which start real 3-node nats-server clusters on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
