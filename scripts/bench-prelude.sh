# Sourced by scripts/bench.sh and scripts/bench-live.sh (from the repository's root): installs
# nats-server, raises the fd limit, builds the release binaries and prints the machine.

scripts/install-nats-server.sh
# Each server holds up to ~15k client sockets at 45k connections; load processes up to ~7.5k.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --locked -p connwatch -p testkit --bin connwatch --bin connwatch-bench

echo "## machine"
echo "- nproc: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r); fd limit $(ulimit -n)"
echo "- $(nats-server --version); $(rustc --version)"
