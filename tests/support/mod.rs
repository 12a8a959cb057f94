//! Helpers shared by the integration tests (`mod support;` in each test file).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use connwatch::dev::cluster::{AccountSpec, AuthMode, Cluster, ClusterSpec};
pub use connwatch::dev::jwt::{AccountTemplate, OperatorSetup};
pub use connwatch::dev::load::{self, Load, LoadAuth, LoadSpec};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The connwatch binary built for this test run.
pub fn connwatch_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_connwatch"))
}

/// What a finished (or timed-out) connwatch run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code; `None` if killed by a signal or by the timeout.
    pub code: Option<i32>,
    /// True if the run was killed because it outlived its timeout.
    pub timed_out: bool,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Writes `contents` to `dir/connwatch.toml` and returns the path.
pub fn write_config(dir: &Path, contents: &str) -> PathBuf {
    let path = dir.join("connwatch.toml");
    std::fs::write(&path, contents).expect("write connwatch config");
    path
}

/// Runs `connwatch <args>`, killing it after `timeout`.
pub fn run_connwatch<I, S>(args: I, timeout: Duration) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(connwatch_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn connwatch");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for connwatch") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("reap connwatch");
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    RunOutput {
        code: status.code(),
        timed_out,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Polls `condition` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Like [`wait_until`], without blocking the tokio runtime between polls.
pub async fn wait_until_async(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
