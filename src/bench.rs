//! What the in-crate benchmarks share (`cargo test --release --lib <module>::bench --
//! --ignored --nocapture`).

/// This thread's CPU time in ns: on a shared machine, time spent waiting for a core is not
/// the code's.
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "thread CPU clock");
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// The ns of thread CPU per connection of `runs` runs of `f` (which returns the connections
/// it handled), lowest first.
pub(crate) fn sorted_ns_per_conn(runs: usize, mut f: impl FnMut() -> usize) -> Vec<f64> {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = thread_cpu_ns();
            let n = f();
            (thread_cpu_ns() - t) / n as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}
