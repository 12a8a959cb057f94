#!/usr/bin/env bash
# Issue 16 point 3: this tree's sweep, census and live view against the main branch's, side by
# side in one run on one local 3-node cluster (BENCHMARKS.md, "Aggregate while parsing").
# Builds main (or BASELINE_REF) from `git archive` with this tree's bench program, then runs
# `connwatch-bench run` with both: `connwatch` / `connwatch-live` are this tree, `main:…` main.
#
#   scripts/bench-aggregate.sh                       # 45,000 connections, 7 sweeps per method
#   scripts/bench-aggregate.sh --sizes 10000 --runs 5
#   ORDER=tree-first scripts/bench-aggregate.sh      # this tree's methods before main's
#   PIN=1 scripts/bench-aggregate.sh --sizes 45000 --runs 60 --blocks 10
#                                   # servers and load on core 0, each method on core 1
set -euo pipefail
cd "$(dirname "$0")/.."

ref="${BASELINE_REF:-main}"
root="$PWD"
src="$root/target/bench/baseline-src"
rm -rf "$src"
mkdir -p "$src"
git archive "$ref" | tar -x -C "$src"
# Both builds share one fingerprint per package (cargo hashes a path package by its place in
# its workspace): files with the commit's old mtimes would pass for fresh and link this tree's
# library into main's bench. Newer mtimes on both sides make each build compile its own.
find "$src" -type f -exec touch {} +
# The same bench program, so both builds are measured the same way. When this tree's program uses what the baseline
# does not have (a changed API), the baseline's own program measures it (same measurements,
# its own way of calling connwatch).
own="$root/target/bench/baseline-own-bench"
rm -rf "$own"
cp -r "$src/testkit/src/bin/connwatch-bench" "$own"
cp -r testkit/src/bin/connwatch-bench/. "$src/testkit/src/bin/connwatch-bench/"
# A baseline without connwatch::alloc (before it existed) sets no malloc threshold.
no_tune() {
    [ -f "$src/src/alloc.rs" ] || sed -i -e '/^    connwatch::alloc::tune();$/d' \
        "$src/testkit/src/bin/connwatch-bench/main.rs"
}
no_tune
# One target directory: main's build reuses the compiled dependencies, then its bench is kept
# aside and this tree's binaries are linked again over the ones main's build left.
build_baseline() {
    (cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build --release --locked -p testkit --bin connwatch-bench)
}
if ! build_baseline 2>/dev/null; then
    echo "- this tree's bench program does not build against $ref: the baseline runs its own"
    rm -rf "$src/testkit/src/bin/connwatch-bench"
    mv "$own" "$src/testkit/src/bin/connwatch-bench"
    no_tune
    find "$src" -type f -exec touch {} +
    build_baseline
fi
rm -rf "$own"
cp target/release/connwatch-bench target/bench/main-connwatch-bench
rm -rf "$src"
git ls-files -z src testkit/src | xargs -0 touch

# shellcheck source=scripts/bench-prelude.sh
. scripts/bench-prelude.sh
echo "- baseline: $ref at $(git rev-parse --short "$ref"); this tree: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + changes')"
echo "- load before: $(uptime)"
# Arguments replace the default size and runs (clap appends repeated list options).
args=("$@")
[ $# -gt 0 ] || args=(--sizes 45000 --runs 7)
# ORDER=tree-first runs this tree's methods before main's (the default: main's first).
methods=floor,main:connwatch,connwatch,main:connwatch-live,connwatch-live
[ "${ORDER:-}" != tree-first ] || methods=floor,connwatch,main:connwatch,connwatch-live,main:connwatch-live
echo "- methods in this order: $methods"
# PIN=1: the servers and their load on core 0, the method measured on core 1 (as when the
# servers run on hosts of their own: the client's CPU is not taken from them).
pin=()
[ "${PIN:-}" != 1 ] || pin=(taskset -c 0)
[ "${PIN:-}" != 1 ] || args+=(--wrap "taskset -c 1")
"${pin[@]}" target/release/connwatch-bench run --soak-sweeps 0 \
    --methods "$methods" \
    --baseline-bench target/bench/main-connwatch-bench --out target/bench/aggregate.json "${args[@]}"
echo "- load after: $(uptime)"
