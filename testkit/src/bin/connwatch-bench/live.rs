//! The live census's measurements (issue 13), one command each:
//!
//! - `live-latency`: from the connection that takes a user over its threshold to the `firing`
//!   advisory a subscriber receives, live census on (long reconcile interval) against sweeps
//!   alone every 30 s (the baseline);
//! - `live-churn`: random opens and closes on all servers, then the time until the census
//!   endpoint equals every server's own HTTP `/connz`;
//! - `live-cost`: the servers' CPU and bytes that connwatch adds, live + reconciliation against
//!   30-second sweeps, at a large connection count and several churn rates;
//! - `live-flood`: a connect flood (and the disconnect flood after it): slow consumers,
//!   connwatch's peak RSS and the time until the census is exact again.
//!
//! Each starts its own 3-node cluster and `connwatch run` (the binary next to this one) as a
//! child process configured through a file, and reads connwatch only as a user would: its
//! advisories, `/metrics` and the `connwatch.census` endpoint. See BENCHMARKS.md.

mod churn;
mod cost;
mod flood;
mod latency;
mod measure;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use testkit::cluster::{http_get, AccountSpec, Cluster};
use testkit::load::{self, LoadAuth, LoadSpec};

pub use churn::{churn, ChurnArgs};
pub use cost::{cost, CostArgs};
pub use flood::{flood, FloodArgs};
pub use latency::{latency, LatencyArgs};

use super::{
    bench_dir, distribution, grow_load, servers_cpu_ms, spawn_worker, start_cluster, PlanEntry,
    Worker, LOAD_PASSWORD,
};

// ---------------------------------------------------------------------------------------------
// connwatch run as a child process.

/// `connwatch --config <file> run`, its metrics listener, killed on drop.
pub(crate) struct Connwatch {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl Connwatch {
    /// Starts connwatch on `cluster` with the metrics listener on, the `sweep` endpoint
    /// unthrottled, and `extra` TOML sections (not `[metrics]` or `[service]`).
    fn start(cluster: &Cluster, dir: &Path, tag: &str, extra: &str) -> anyhow::Result<Self> {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = format!(
            "{}[metrics]\nlisten = \"{listen}\"\nuser_floor = 1\n\
             [service]\nsweep_min_interval = \"0s\"\n{extra}",
            cluster.connwatch_toml()
        );
        let path = dir.join(format!("connwatch-{tag}.toml"));
        std::fs::write(&path, config)?;
        let log = dir.join(format!("connwatch-{tag}.log"));
        let out = File::create(&log)?;
        let bin = std::env::current_exe()?.with_file_name("connwatch");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, listen, log })
    }

    fn metrics(&self) -> String {
        match http_get(self.listen, "/metrics") {
            Ok((200, text)) => text,
            _ => String::new(),
        }
    }

    /// One series now (`name` or `name{labels}` exactly as exposed); `None` while unanswered.
    fn metric(&self, series: &str) -> Option<f64> {
        measure::metric(&self.metrics(), series)
    }

    /// Every series of a metric name, summed (0 when none).
    fn metric_sum(&self, name: &str) -> f64 {
        measure::metric_sum(&self.metrics(), name)
    }

    /// Waits (polling every 50 ms) until `cond` holds; the error names `what` and the log tail.
    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "connwatch: {what} not within {timeout:?}; log tail (newest first):\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits for the live census to be complete (its first sweep reconciled it).
    async fn wait_complete(&self) -> anyhow::Result<()> {
        self.wait("live census complete", Duration::from_secs(180), |c| {
            c.metric("connwatch_live_complete") == Some(1.0)
        })
        .await
    }

    fn sweeps(&self) -> f64 {
        self.metric("connwatch_sweeps_total").unwrap_or(0.0)
    }

    /// `VmHWM` (peak RSS) and `VmRSS` of the connwatch process, in KiB.
    fn memory_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM, then waits for it to exit (killed after 30 s).
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Connwatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the census and the oracle.

/// A client of the system account (advisories and the service endpoints live there).
pub(crate) async fn system_client(
    cluster: &Cluster,
    server: usize,
) -> anyhow::Result<async_nats::Client> {
    let sys = cluster.system_user();
    Ok(
        async_nats::ConnectOptions::with_user_and_password(sys.name.clone(), sys.password.clone())
            .name("connwatch-bench")
            .connect(cluster.client_url(server))
            .await?,
    )
}

/// The `connwatch.census` endpoint's answer to `body`.
pub(crate) async fn census(client: &async_nats::Client, body: &str) -> anyhow::Result<Value> {
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("connwatch.census", body.to_string().into()),
    )
    .await
    .context("census request timed out")??;
    if msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .is_some()
    {
        bail!("census error: {:?}", msg.headers);
    }
    Ok(serde_json::from_slice(&msg.payload)?)
}

/// Connections per (account, user, server name) of `account` as the census counts them.
pub(crate) async fn census_counts(
    client: &async_nats::Client,
    account: &str,
) -> anyhow::Result<BTreeMap<(String, String, String), u64>> {
    let body = json!({ "account": account }).to_string();
    Ok(measure::census_by_server(&census(client, &body).await?))
}

/// The same from every server's own HTTP `/connz` (the oracle).
pub(crate) fn connz_counts(
    cluster: &Cluster,
    account: &str,
) -> anyhow::Result<BTreeMap<(String, String, String), u64>> {
    let mut out = BTreeMap::new();
    for i in 0..cluster.len() {
        for ((acc, user), n) in cluster.connz_counts(i)? {
            if acc == account {
                out.insert((acc, user, cluster.server_name(i).to_string()), n);
            }
        }
    }
    Ok(out)
}

/// How long after `since` the census of `account` first equals the servers' `/connz`
/// (polled every 50 ms); `None` when not within `timeout`, with the last difference.
pub(crate) async fn time_to_equal(
    cluster: &Cluster,
    client: &async_nats::Client,
    account: &str,
    since: Instant,
    timeout: Duration,
) -> (Option<Duration>, String) {
    let mut last = String::new();
    while since.elapsed() < timeout {
        let live = census_counts(client, account).await;
        let oracle = connz_counts(cluster, account);
        match (live, oracle) {
            (Ok(live), Ok(oracle)) if live == oracle => return (Some(since.elapsed()), last),
            (Ok(live), Ok(oracle)) => last = measure::difference(&live, &oracle),
            (l, o) => last = format!("census {:?} / connz {:?}", l.err(), o.err()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (None, last)
}

/// Removes the run's directory (configurations, connwatch's logs), unless
/// `CONNWATCH_BENCH_KEEP` is set (to read connwatch's logs after a run).
pub(crate) fn cleanup(dir: &Path) {
    if std::env::var_os("CONNWATCH_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub(crate) fn load_auth(user: &str) -> LoadAuth {
    LoadAuth::user_password(user, LOAD_PASSWORD)
}

pub(crate) fn write_json(out: &Path, v: &Value) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(v)?)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A JSON number as a whole number.
pub(crate) fn num(v: &Value) -> String {
    format!("{:.0}", v.as_f64().unwrap_or(0.0))
}
