#!/usr/bin/env bash
# Soak test: runs `connwatch run` (kicks on, for real) against a local 3-node cluster with
# connections churning (open/close loops) and a leak that is kicked and comes back, and samples
# connwatch's RSS and open file descriptors (from /proc) and its sweeps, sweep times, partial rounds
# and kicks (from its own /metrics) into a CSV. At the end it compares the last quarter of the
# samples with the first and says whether each is flat.
#
#   scripts/soak.sh [--duration 10m|600] [--every 5] [--out soak.csv] [--dir DIR]
#                   [--rss-bound 0.25] [--fd-slack 16] [--check-sweep-time]
#
# Exit 0 when RSS and fd count are flat (and sweep time, with --check-sweep-time) and connwatch
# exited 0 on SIGTERM; 1 when something grew; 2 on a usage or setup error.
# Binaries: $CONNWATCH_BIN and $CONNWATCH_DEV_BIN (from testkit/), else target/debug/{connwatch,
# connwatch-dev}, built with cargo when missing. Everything listens on 127.0.0.1 only.
set -euo pipefail

duration=600
every=5
out=""
dir=""
rss_bound=0.25   # last-quarter mean RSS may exceed the first-quarter mean by this share
fd_slack=16      # ... and the fd count by this many descriptors
time_bound=1.0   # ... and the sweep time by this share (only with --check-sweep-time)
check_time=0

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --every) every="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --rss-bound) rss_bound="$2"; shift 2 ;;
        --fd-slack) fd_slack="$2"; shift 2 ;;
        --time-bound) time_bound="$2"; shift 2 ;;
        --check-sweep-time) check_time=1; shift ;;
        -h|--help) usage ;;
        *) echo "soak: unknown argument $1" >&2; usage ;;
    esac
done
case "$duration" in
    *m) duration=$(( ${duration%m} * 60 )) ;;
    *s) duration=${duration%s} ;;
esac
[[ "$duration" =~ ^[0-9]+$ && "$every" =~ ^[0-9]+$ && "$every" -ge 1 ]] || usage

root="$(cd "$(dirname "$0")/.." && pwd)"
cw="${CONNWATCH_BIN:-$root/target/debug/connwatch}"
dev="${CONNWATCH_DEV_BIN:-$root/target/debug/connwatch-dev}"
if [[ ! -x "$cw" || ! -x "$dev" ]]; then
    (cd "$root" && cargo build --quiet -p connwatch -p testkit --bin connwatch --bin connwatch-dev)
fi
command -v nats-server >/dev/null || [[ -n "${NATS_SERVER_BIN:-}" ]] || {
    echo "soak: nats-server not found: run scripts/install-nats-server.sh" >&2; exit 2; }

if [[ -z "$dir" ]]; then dir="$(mktemp -d -t connwatch-soak.XXXXXX)"; fi
mkdir -p "$dir"
out="${out:-$dir/soak.csv}"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# The cluster: connwatch-dev writes connwatch.toml and cluster.json once it is up.
"$dev" cluster --dir "$dir/cluster" --servers 3 >"$dir/cluster.out" 2>&1 &
cluster_pid=$!
pids+=("$cluster_pid")
for _ in $(seq 1 600); do
    [[ -s "$dir/cluster/cluster.json" ]] && break
    kill -0 "$cluster_pid" 2>/dev/null || { cat "$dir/cluster.out" >&2; exit 2; }
    sleep 0.1
done
[[ -s "$dir/cluster/cluster.json" ]] || { echo "soak: cluster did not start" >&2; exit 2; }
mapfile -t urls < <(python3 -c 'import json,sys; [print(s["client_url"]) for s in json.load(open(sys.argv[1]))["servers"]]' "$dir/cluster/cluster.json")

config="$dir/connwatch.toml"
cat "$dir/cluster/connwatch.toml" - >"$config" <<EOF
[sweep]
interval = "1s"
timeout = "2s"
page_size = 200
[live]
# The live census runs too; full sweeps (and so kicks) still every second.
reconcile_interval = "1s"
[detect]
idle_threshold = "2s"
max_connections_per_user = 100
[kick]
enabled = true
dry_run = false
min_idle = "2s"
min_age = "2s"
max_per_user = 20
return_window = "10s"
max_attempts = 1000000
[state]
file = "$dir/state.json"
EOF

log="$dir/connwatch.log"
listen="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
CONNWATCH_METRICS__LISTEN="$listen" "$cw" --config "$config" run 2>"$log" &
cw_pid=$!

# One sample of connwatch's metrics: sweeps done, their summed duration (s), partial rounds,
# kicks sent (0s while the listener is not up yet).
metrics() {
    python3 - "$listen" <<'PY'
import sys, urllib.request
want = {"connwatch_sweep_duration_seconds_count": 0.0, "connwatch_sweep_duration_seconds_sum": 0.0,
        "connwatch_sweeps_partial_total": 0.0, 'connwatch_kicks_total{result="sent"}': 0.0}
try:
    text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
except OSError:
    text = ""
for line in text.splitlines():
    name, _, value = line.rpartition(" ")
    if name in want:
        want[name] = float(value)
print(" ".join(str(v) for v in want.values()))
PY
}

# A leak (150 idle connections that reconnect after a kick) and two churn loops.
"$dev" load --server "${urls[0]}" --user leaky --password leaky-dev-password --count 150 \
    --name leak-worker --reconnect 2s >"$dir/leak.out" 2>&1 &
pids+=("$!")
churn() {
    local url="$1" name="$2"
    while true; do
        "$dev" load --server "$url" --user app --password app-dev-password --count 20 \
            --name "$name" --hold 1s >/dev/null 2>&1 || sleep 0.5
    done
}
churn "${urls[1]}" churn-a &
pids+=("$!")
churn "${urls[2]}" churn-b &
pids+=("$!")

echo "t_s,rss_kb,fds,sweeps,sweep_ms,partial_rounds,kicks" >"$out"
prev_count=0
prev_sum=0
start=$(date +%s)
echo "soak: ${duration}s, sampling every ${every}s into $out (work dir $dir)"
while :; do
    now=$(date +%s)
    t=$(( now - start ))
    (( t >= duration )) && break
    if ! kill -0 "$cw_pid" 2>/dev/null; then
        echo "soak: connwatch died" >&2; tail -20 "$log" >&2; exit 1
    fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$cw_pid/status" 2>/dev/null || echo 0)
    fds=$(ls "/proc/$cw_pid/fd" 2>/dev/null | wc -l)
    read -r count sum partial kicks < <(metrics)
    # The mean duration of the sweeps since the last sample.
    sweep_ms=$(python3 -c 'import sys; c, s, pc, ps = map(float, sys.argv[1:]); print(round((s - ps) / (c - pc) * 1000) if c > pc else 0)' \
        "$count" "$sum" "$prev_count" "$prev_sum")
    prev_count=$count
    prev_sum=$sum
    echo "$t,${rss:-0},$fds,${count%.*},$sweep_ms,${partial%.*},${kicks%.*}" >>"$out"
    sleep "$every"
done

kill -TERM "$cw_pid"
cw_code=0
wait "$cw_pid" || cw_code=$?
echo "soak: connwatch exited $cw_code on SIGTERM"

python3 - "$out" "$rss_bound" "$fd_slack" "$time_bound" "$check_time" "$cw_code" <<'EOF'
import csv, sys
path, rss_bound, fd_slack, time_bound, check_time, cw_code = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
if len(rows) < 4:
    print(f"soak: only {len(rows)} samples: run longer")
    sys.exit(1)
q = max(1, len(rows) // 4)
def mean(col, part):
    vals = [float(r[col]) for r in part if float(r[col]) > 0] or [0.0]
    return sum(vals) / len(vals)
first, last = rows[:q], rows[-q:]
ok = True
def verdict(name, a, b, limit):
    global ok
    flat = b <= limit
    print(f"soak: {name}: first quarter {a:.0f}, last quarter {b:.0f}, limit {limit:.0f}: "
          + ("flat" if flat else "GROWING"))
    return flat
ok &= verdict("rss_kb", mean("rss_kb", first), mean("rss_kb", last),
              mean("rss_kb", first) * (1 + float(rss_bound)))
ok &= verdict("fds", mean("fds", first), mean("fds", last), mean("fds", first) + float(fd_slack))
t_flat = verdict("sweep_ms", mean("sweep_ms", first), mean("sweep_ms", last),
                 max(mean("sweep_ms", first) * (1 + float(time_bound)), 50))
if check_time == "1":
    ok &= t_flat
sweeps = int(rows[-1]["sweeps"])
print(f"soak: {sweeps} sweeps, {rows[-1]['partial_rounds']} partial rounds, "
      f"{rows[-1]['kicks']} kicks, {len(rows)} samples")
if sweeps == 0:
    ok = False
if cw_code != "0":
    print(f"soak: connwatch exited {cw_code}, not 0")
    ok = False
print("soak: FLAT" if ok else "soak: NOT FLAT")
sys.exit(0 if ok else 1)
EOF
