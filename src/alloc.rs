//! The process's malloc settings (glibc's, the allocator of a Linux build).
//!
//! A sweep's replies are several megabytes each (~410 bytes a connection) and live for
//! milliseconds. glibc serves a block that large with its own mapping, but raises its threshold
//! for that to the size of each such block freed (up to 32 MiB): from the second sweep on the
//! replies then came from the heap, where freed memory stays in the process and fragments, and
//! a long-lived `run` sat at twice the memory it needed (BENCHMARKS.md, "Issue 16 point 3").
//! A fixed threshold keeps every large block a mapping of its own, returned when freed.

/// Blocks of at least this many bytes are their own mapping, unmapped when freed.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (call it first thing in a process).
/// Returns whether the setting took (false where the allocator is not glibc's).
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets one of malloc's parameters; any value is safe to pass.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(super::tune());
    }
}
