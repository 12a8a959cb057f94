//! Helpers shared by the integration tests (`mod support;` in each test file).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use testkit::cluster::{AccountSpec, AuthMode, Cluster, ClusterSpec, LeafSpec, TlsSpec};
pub use testkit::jwt::{AccountTemplate, OperatorSetup};
pub use testkit::load::{self, Load, LoadAuth, LoadSpec};
pub use testkit::{eventually, wait_until, wait_until_async};

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

/// A free loopback address (bound, then released for the caller to bind).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of one series (`name` or `name{labels}`, exactly) in an OpenMetrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// The sum of a family's series (`name{...}` for any labels); `None` when it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| *s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A request to a service endpoint: the JSON reply, or the service error code.
pub async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let msg = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(code) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        return Err(code.to_string());
    }
    Ok(serde_json::from_slice(&msg.payload).unwrap())
}

/// A `connwatch run` child process logging to a file, with its metrics listener (the one its
/// configuration sets, else a free port given through `CONNWATCH_METRICS__LISTEN`), so tests
/// watch what it did through the metrics an operator sees; killed on drop.
pub struct Running {
    child: std::process::Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Running {
    /// Starts `connwatch --config <config> run`, logging to `log`.
    pub fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with(&["--config", config.to_str().unwrap(), "run"], &[], log)
    }

    /// [`Running::start`], then waits until its live census is complete (a complete sweep since
    /// the start: `connwatch_live_complete` 1); panics with its log when it is not in 30 s.
    pub async fn start_live(config: &Path, log: PathBuf) -> Self {
        let running = Self::start(config, log);
        assert!(
            wait_until_async(Duration::from_secs(30), || running
                .metric("connwatch_live_complete")
                == Some(1.0))
            .await,
            "the live census never became complete: {}",
            running.log()
        );
        running
    }

    /// Everything it logged so far (for failure messages: tests assert on what users see).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The `/metrics` text now; empty while the listener does not answer (not started yet).
    pub fn metrics(&self) -> String {
        match testkit::cluster::http_get(self.metrics, "/metrics") {
            Ok((200, text)) => text,
            _ => String::new(),
        }
    }

    /// One series now (see [`metric`]); `None` while the listener does not answer.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics(), series)
    }

    /// A counter now, 0 while the listener does not answer.
    fn count(&self, series: &str) -> usize {
        self.metric(series).unwrap_or(0.0) as usize
    }

    /// Rounds finished so far (`connwatch_sweep_duration_seconds_count`: a round's sweep is
    /// observed when the round is done), and how many of them were partial
    /// (`connwatch_sweeps_partial_total`).
    pub fn rounds(&self) -> (usize, usize) {
        let text = self.metrics();
        let n = |s: &str| metric(&text, s).unwrap_or(0.0) as usize;
        (
            n("connwatch_sweep_duration_seconds_count"),
            n("connwatch_sweeps_partial_total"),
        )
    }

    /// Sweeps that failed as a whole so far (`connwatch_sweeps_failed_total`).
    pub fn failed(&self) -> usize {
        self.count("connwatch_sweeps_failed_total")
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
        round_trip(client).await;
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

/// Whether an advisory body is of type `kind` (name without the prefix) in `state`.
pub fn advisory_is(kind: &str, state: &str) -> impl Fn(&serde_json::Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &serde_json::Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
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
    /// Starts `connwatch <args...>` with extra environment variables, logging to `log`. Its
    /// metrics listen where `env` or the `--config` file says, else on a free port.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let configured = env
            .iter()
            .find(|(k, _)| k == LISTEN_ENV)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                let config = args.iter().position(|a| *a == "--config")?;
                configured_listen(Path::new(args.get(config + 1)?))
            });
        let metrics = match configured {
            Some(listen) => listen.parse().expect("metrics.listen is an address"),
            None => {
                let addr = free_addr();
                env.push((LISTEN_ENV.into(), addr.to_string()));
                addr
            }
        };
        let child = Command::new(connwatch_bin())
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn connwatch");
        Self {
            child,
            log,
            metrics,
        }
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

const LISTEN_ENV: &str = "CONNWATCH_METRICS__LISTEN";

/// `metrics.listen` as a configuration file sets it (`None` when it does not, or sets it empty).
fn configured_listen(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let listen = table.get("metrics")?.get("listen")?.as_str()?;
    (!listen.is_empty()).then(|| listen.to_string())
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

/// Every message stored in the JetStream stream `stream` (read through `js`), as JSON bodies in
/// order; empty while the stream does not exist or does not answer.
pub async fn stream_bodies(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<serde_json::Value> {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    // A stream info request can time out while a server is frozen: read nothing this time
    // (callers poll, and an empty read fails their final counts).
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let state = info.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(serde_json::from_slice(&m.payload).unwrap());
        }
    }
    out
}

/// A reader in the JetStream account of a [`ClusterSpec::jetstream`] cluster, at `url`: a core
/// subscription to every advisory (it sees every publish, retries included), the JetStream
/// context for the stream, and the client (keep it alive).
pub async fn jetstream_reader(
    url: &str,
) -> (Seen, async_nats::jetstream::Context, async_nats::Client) {
    use testkit::cluster::{JETSTREAM_PASSWORD, JETSTREAM_USER};
    let reader = async_nats::ConnectOptions::with_user_and_password(
        JETSTREAM_USER.into(),
        JETSTREAM_PASSWORD.into(),
    )
    .connect(url)
    .await
    .unwrap();
    let core = Seen::on(&reader).await;
    (core, async_nats::jetstream::new(reader.clone()), reader)
}

/// 15 connections of user `leaky` (account `APP`, password `pw`) at the cluster's first server,
/// client name `leaky-worker`: over a threshold of 10.
pub async fn leaky_worker(cluster: &Cluster) -> Load {
    load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", "pw"),
            15,
        )
        .name("leaky-worker"),
    )
    .await
    .unwrap()
}

/// A 3-node cluster with JetStream (its account and user, see [`ClusterSpec::jetstream`]) and
/// the account `APP` with the user `leaky` (password `pw`), under `dir/cluster`.
pub fn jetstream_cluster(dir: &Path) -> Cluster {
    Cluster::start(
        ClusterSpec::new(dir.join("cluster"))
            .jetstream()
            .account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap()
}

/// `cluster.connwatch_toml()` with `nats.servers` only server `i`'s URL (tests that freeze or
/// restart the other servers keep connwatch attached to one that stays).
pub fn connwatch_toml_on(cluster: &Cluster, i: usize) -> String {
    cluster
        .connwatch_toml()
        .lines()
        .map(|l| {
            if l.starts_with("servers") {
                format!("servers = [{:?}]", cluster.client_url(i))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Server `i`'s id and its open connections, from its own `/varz` and `/connz` (`auth=true`).
pub fn connz_of_server(cluster: &Cluster, i: usize) -> (String, Vec<serde_json::Value>) {
    let id = cluster.monitor_get(i, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let connz = cluster
        .monitor_get(i, "/connz?auth=true&limit=100000")
        .unwrap();
    (
        id,
        connz["connections"].as_array().cloned().unwrap_or_default(),
    )
}

/// The user `account`/`user` in a report (or census) JSON; panics, showing the report, when it
/// is not there.
pub fn report_user<'a>(
    report: &'a serde_json::Value,
    account: &str,
    user: &str,
) -> &'a serde_json::Value {
    report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["account"] == account && u["user"] == user)
        .unwrap_or_else(|| panic!("{account}/{user} not in report: {report:#}"))
}

/// The cid of the first connection named `name` on server `i`, from its own `/connz`.
pub fn cid_named(cluster: &Cluster, i: usize, name: &str) -> u64 {
    let connz = cluster
        .monitor_get(i, "/connz?auth=true&limit=1000")
        .unwrap();
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["cid"]
        .as_u64()
        .unwrap()
}

/// The clients in the kick memory of the state file at `state`, as (name, kicks, returns).
pub fn saved_kicked_clients(state: &Path) -> Vec<(String, u64, u64)> {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    saved["kicked"]["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["kicks"].as_u64().unwrap(),
                c["returns"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `connwatch kick --server-id --cid --yes` of the connection named `name` on server `i`,
/// with the configuration at `path`: it must succeed.
pub async fn kick_by_hand(cluster: &Cluster, i: usize, name: &str, path: &Path) -> RunOutput {
    let cid = cid_named(cluster, i, name).to_string();
    let server_id = cluster.monitor_get(i, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let kicked = kick_cmd(path, &["--server-id", &server_id, "--cid", &cid, "--yes"]).await;
    assert_eq!(kicked.code, Some(0), "{}", kicked.stderr);
    kicked
}

/// `connwatch --config <path> kick <args...>`, off the async runtime (killed after 40 s).
pub async fn kick_cmd(path: &Path, args: &[&str]) -> RunOutput {
    let mut a = vec![
        "--config".to_string(),
        path.display().to_string(),
        "kick".into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || run_connwatch(&a, Duration::from_secs(40)))
        .await
        .unwrap()
}

/// Returns once the server has processed everything `client` sent before (its subscriptions
/// included): a request nobody answers, whose "no responders" status comes back from the server
/// after it. A flush only writes to the socket, so a publish on another connection right after
/// it can still reach the server before the subscription does.
pub async fn round_trip(client: &async_nats::Client) {
    let answer = client
        .request("connwatch.test.round_trip", bytes::Bytes::new())
        .await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "the server answers a request nobody serves with no responders: {answer:?}"
    );
}

/// The payload of a reply connwatch's sweep asked for, decompressed when the server sent it
/// snappy-compressed (`sweep.compression`, `Content-Encoding: snappy`).
pub fn plain_payload(m: &async_nats::Message) -> Vec<u8> {
    use std::io::Read;
    let snappy = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Encoding"))
        .is_some_and(|v| v.as_str() == "snappy");
    if !snappy {
        return m.payload.to_vec();
    }
    let mut out = Vec::new();
    snap::read::FrameDecoder::new(&m.payload[..])
        .read_to_end(&mut out)
        .expect("a snappy reply decompresses");
    out
}
