#!/usr/bin/env bash
# Runs connwatch's whole test suite: formatting, lints, unit tests and the integration tests,
# which start real 3-node nats-server clusters on loopback ports, for the service and testkit/.
# Installs what the tests need when it is missing: the pinned nats-server, tmux.
# Arguments go to cargo test (e.g. `scripts/test.sh --test kick`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
# tests/top.rs runs `connwatch top` in a detached tmux session and reads its screen.
if ! command -v tmux >/dev/null 2>&1; then
    echo "tmux is missing: installing it with apt-get" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tmux >/dev/null
fi
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace "$@"
