#!/usr/bin/env bash
# The demo: brings up a local 3-node nats-server cluster, starts clients that leak connections
# next to well-behaved ones, and runs `connwatch report` against it. Everything runs on
# loopback and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
cargo build --quiet --locked --bins
BIN=target/debug
DIR=.dev/demo
rm -rf "$DIR"
mkdir -p "$DIR"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits up to $2 seconds for file $1 to contain $3.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -q "$3" "$1" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "demo: timed out waiting for '$3' in $1" >&2
            cat "$1" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

echo "== starting a 3-node cluster (config mode) in $DIR"
"$BIN/connwatch-dev" cluster --dir "$DIR" >"$DIR/cluster.out" 2>&1 &
pids+=($!)
wait_for "$DIR/cluster.out" 30 "running"
mapfile -t URLS < <(python3 -c 'import json,sys; [print(s["client_url"]) for s in json.load(open(sys.argv[1]))["servers"]]' "$DIR/cluster.json")

# Starts `connwatch-dev load` in the background and waits until its connections are open.
load() {
    local out="$DIR/load-$1.out"
    shift
    "$BIN/connwatch-dev" load "$@" >"$out" 2>&1 &
    pids+=($!)
    wait_for "$out" 30 "connections open"
}

echo "== clients: a leak in one process, a credential shared by replicas, healthy services"
load leak --server "${URLS[0]}" --user leaky --password leaky-dev-password --count 300 --name invoice-worker
for i in 0 1 2; do
    load "app$i" --server "${URLS[$i]}" --user app --password app-dev-password --count 2 --name orders --publish-every 1s
done
load unnamed --server "${URLS[1]}" --user leaky --password leaky-dev-password --count 40

# A leak shows as connections idle with zero messages; let the demo's ones idle past 2s.
export CONNWATCH_DETECT__IDLE_THRESHOLD=2s
sleep 3
echo "== connwatch report (idle threshold 2s for the demo)"
"$BIN/connwatch" --config "$DIR/connwatch.toml" report
echo
echo "== the leaking user as JSON (connwatch report --format json --user leaky), first lines"
"$BIN/connwatch" --config "$DIR/connwatch.toml" report --format json --user leaky 2>/dev/null | head -40
