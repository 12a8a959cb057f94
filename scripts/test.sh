#!/usr/bin/env bash
# Runs connwatch's whole test suite: formatting, lints, unit tests and the integration tests,
# which start real 3-node nats-server clusters on loopback ports, for the service and testkit/,
# some of them driving real client libraries (nats-py, installed here from PyPI, pinned).
# Arguments go to cargo test (e.g. `scripts/test.sh --test kick`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
# Real client libraries for tests/real_clients.rs (nats-py), pinned.
python3 -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace "$@"
