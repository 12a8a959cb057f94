//! Helpers shared by the integration tests (`mod support;` in each test file).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use testkit::cluster::{AccountSpec, AuthMode, Cluster, ClusterSpec, TlsSpec};
pub use testkit::jwt::{AccountTemplate, OperatorSetup};
pub use testkit::load::{self, Load, LoadAuth, LoadSpec};
pub use testkit::{wait_until, wait_until_async};

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
    run_connwatch_with(args, &[], timeout)
}

/// Runs `connwatch <args>` with extra environment variables, killing it after `timeout`.
pub fn run_connwatch_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    run_connwatch_with(args, env, timeout)
}

fn run_connwatch_with<I, S>(args: I, env: &[(&str, &str)], timeout: Duration) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(connwatch_bin())
        .args(args)
        .envs(env.iter().copied())
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

/// A `connwatch run` child process logging to a file; killed on drop.
pub struct Running {
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    /// Starts `connwatch --config <config> run`, logging to `log`.
    pub fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with(&["--config", config.to_str().unwrap(), "run"], &[], log)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rounds finished so far, and how many of them were partial.
    pub fn rounds(&self) -> (usize, usize) {
        let log = self.log();
        let rounds: Vec<&str> = log.lines().filter(|l| l.contains("round done")).collect();
        (
            rounds.len(),
            rounds.iter().filter(|l| l.contains("partial=true")).count(),
        )
    }

    /// Sends SIGTERM and returns the exit code; panics if it does not exit within 30 s.
    pub fn terminate(mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let mut code = None;
        let exited = wait_until(Duration::from_secs(30), || {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    code = status.code();
                    true
                }
                None => false,
            }
        });
        assert!(exited, "connwatch did not exit on SIGTERM: {}", self.log());
        code
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every advisory published under `connwatch.advisory.>`, as (subject, body), in order.
#[derive(Clone, Default)]
pub struct Seen(pub std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>);

impl Seen {
    /// Subscribes as the cluster's system user (client name `test-subscriber`) at `url`.
    pub async fn subscribe(url: &str) -> (Self, async_nats::Client) {
        Self::subscribe_as(url, "sys", "sys-dev-password").await
    }

    /// Like [`Seen::subscribe`], as another user of the system account.
    pub async fn subscribe_as(url: &str, user: &str, password: &str) -> (Self, async_nats::Client) {
        let options =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
        Self::subscribe_with(url, options).await
    }

    /// Like [`Seen::subscribe`], with any connect options (e.g. a `.creds` file).
    pub async fn subscribe_with(
        url: &str,
        options: async_nats::ConnectOptions,
    ) -> (Self, async_nats::Client) {
        use futures::StreamExt;
        let client = options
            .name("test-subscriber")
            .connect(url)
            .await
            .expect("subscriber connects");
        let seen = Seen::on(&client).await;
        (seen, client)
    }

    /// Subscribes to `connwatch.advisory.>` on an existing client (flushed before returning).
    pub async fn on(client: &async_nats::Client) -> Self {
        use futures::StreamExt;
        let mut sub = client.subscribe("connwatch.advisory.>").await.unwrap();
        client.flush().await.unwrap();
        let seen = Seen::default();
        let out = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let body = serde_json::from_slice(&m.payload).expect("advisory is JSON");
                out.0.lock().unwrap().push((m.subject.to_string(), body));
            }
        });
        seen
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<(String, serde_json::Value)> {
        self.0.lock().unwrap().clone()
    }

    /// The bodies of one advisory type (name without the prefix).
    pub fn of(&self, name: &str) -> Vec<serde_json::Value> {
        let t = format!("io.connwatch.advisory.v1.{name}");
        self.all()
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| b["type"] == t.as_str())
            .collect()
    }

    /// Waits (30 s at most) for the first advisory after index `from` matching `pred`.
    pub async fn wait_for(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (usize, String, serde_json::Value) {
        let mut found = None;
        let ok = wait_until_async(Duration::from_secs(30), || {
            found = self
                .all()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, b))| pred(b));
            found.is_some()
        })
        .await;
        assert!(ok, "no {what} advisory; seen: {:#?}", self.all());
        let (i, (s, b)) = found.unwrap();
        (i, s, b)
    }
}

/// Asserts that an advisory matches its schema in `schemas/`.
pub fn assert_valid(body: &serde_json::Value) {
    let name = body["type"]
        .as_str()
        .expect("advisory type")
        .rsplit('.')
        .next()
        .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} advisory does not match its schema: {errors:?}\n{body:#}"
    );
}

impl Running {
    /// Starts `connwatch <args...>` with extra environment variables, logging to `log`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let child = Command::new(connwatch_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn connwatch");
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Runs `connwatch --config <config> report --format json --top 0` off the async runtime,
/// asserts it succeeded, and returns the parsed report.
pub async fn report_json_async(config: &Path) -> serde_json::Value {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        run_connwatch(
            [
                "--config",
                config.to_str().unwrap(),
                "report",
                "--format",
                "json",
                "--top",
                "0",
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("report task");
    assert_eq!(out.code, Some(0), "report failed: {}", out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("bad report JSON ({e}): {}", out.stdout))
}

/// A public-key lookalike: 56 uppercase characters starting with `prefix`.
pub fn key(prefix: char, seed: &str) -> String {
    let mut k = String::from(prefix);
    k.extend(
        seed.chars()
            .cycle()
            .take(55)
            .map(|c| c.to_ascii_uppercase()),
    );
    k
}

/// The `diagnosis.causes[].cause` names of a user finding advisory.
pub fn causes(body: &serde_json::Value) -> Vec<String> {
    body["diagnosis"]["causes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["cause"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
