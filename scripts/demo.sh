#!/usr/bin/env bash
# The demo: brings up a local 3-node nats-server cluster, starts clients that leak connections
# next to well-behaved ones, and shows connwatch at work: a one-shot `report`, then `run`
# publishing advisories (watched with `tail`) as a leak grows, fires with its diagnosis, and
# resolves when the leaking process goes away. connwatch runs as two `[ha]` replicas sharing a
# lease in a JetStream key-value bucket of an ordinary account (the system account cannot have
# JetStream): one leads and announces, the other follows. Everything runs on loopback and stops
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-nats-server.sh
echo "== building connwatch and the demo tools (connwatch-dev, from testkit/);" \
    "the first build takes a few minutes"
cargo build --locked -p connwatch -p testkit --bin connwatch --bin connwatch-dev
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

echo "== starting a 3-node cluster (config mode, JetStream in account JS) in $DIR"
"$BIN/connwatch-dev" cluster --jetstream --dir "$DIR" >"$DIR/cluster.out" 2>&1 &
pids+=($!)
wait_for "$DIR/cluster.out" 30 "running"
mapfile -t URLS < <(python3 -c 'import json,sys; [print(s["client_url"]) for s in json.load(open(sys.argv[1]))["servers"]]' "$DIR/cluster.json")

# Starts `connwatch-dev load NAME ARGS...` in the background, waits until its connections are
# open, and leaves its pid in $LOAD_PID.
load() {
    local out="$DIR/load-$1.out"
    shift
    "$BIN/connwatch-dev" load "$@" >"$out" 2>&1 &
    LOAD_PID=$!
    pids+=("$LOAD_PID")
    wait_for "$out" 30 "connections open"
}

# Demo timings: sweep every second, idle after 2s, growth on 4s of evidence (minutes by
# default), announce again after 20s.
cat >>"$DIR/connwatch.toml" <<TOML
[sweep]
interval = "1s"
[detect]
idle_threshold = "2s"
growth_min_per_hour = 1.0
growth_min_span = "4s"
growth_min_increase = 10
[advisory]
renotify = "20s"
[ha]
enabled = true
lease = "3s"
TOML
# connwatch-dev wrote [nats] (the system account) and [jetstream] (user connwatch-js of account
# JS) above: the replicas' lease and state live in its bucket "connwatch".

echo "== healthy services: 2 publishing connections per server, named"
for i in 0 1 2; do
    load "orders$i" --server "${URLS[$i]}" --user app --password app-dev-password --count 2 --name orders --publish-every 1s
done

echo "== two connwatch run replicas in the background ([ha]); connwatch tail shows their advisories below"
"$BIN/connwatch" --config "$DIR/connwatch.toml" run 2>"$DIR/run.log" &
pids+=($!)
wait_for "$DIR/run.log" 30 'HA: role role="leader"'
"$BIN/connwatch" --config "$DIR/connwatch.toml" run 2>"$DIR/run-b.log" &
pids+=($!)
wait_for "$DIR/run-b.log" 30 'HA: role role="follower"'
"$BIN/connwatch" --config "$DIR/connwatch.toml" tail 2>/dev/null &
pids+=($!)
wait_for "$DIR/run.log" 30 "round done"

echo "== a leak grows in one process: 10 more idle connections every second, to 160"
leak_pids=()
for i in $(seq 1 16); do
    load "leak-$i" --server "${URLS[0]}" --user leaky --password leaky-dev-password --count 10 --name invoice-worker
    leak_pids+=("$LOAD_PID")
    sleep 1
done
# Growth is reported only below the threshold: before the leak hurts.
wait_for "$DIR/run.log" 30 "finding firing kind=\"user_connection_growth\""
wait_for "$DIR/run.log" 30 "finding firing kind=\"excessive_user_connections\""
sleep 2

echo
echo "== connwatch report while the leak is on"
"$BIN/connwatch" --config "$DIR/connwatch.toml" report 2>/dev/null

echo
echo "== the leaking process exits: its connections close"
kill "${leak_pids[@]}"
wait_for "$DIR/run.log" 30 "finding resolved kind=\"excessive_user_connections\""
sleep 2
echo "== one replica led and announced, the other followed:"
grep -h 'HA: role' "$DIR/run.log" "$DIR/run-b.log" || true
echo "== done (the replicas' own logs: $DIR/run.log, $DIR/run-b.log)"
