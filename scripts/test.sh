#!/usr/bin/env bash
# Runs connwatch's whole test suite: formatting, lints, unit tests and the integration tests,
# which start real 3-node nats-server clusters on loopback ports, for the service and testkit/,
# some of them driving real client libraries (nats-py, installed here from PyPI, pinned).
# Installs what the tests need when it is missing: the pinned nats-server, nats-py, tmux, pgrep.
# Arguments go to cargo test (e.g. `scripts/test.sh --test kick`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
# Real client libraries for tests/real_clients.rs (nats-py), pinned.
python3 -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
# tests/top.rs runs `connwatch top` in a detached tmux session, reads its screen and finds its
# pid with pgrep (procps).
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
if ((${#missing[@]} > 0)); then
    echo "installing with apt-get: ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Doc comments whose links or HTML are broken, private items included.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --document-private-items -q
cargo test --locked --workspace "$@"
