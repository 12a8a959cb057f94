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

use measure::{percentile, splitmix};

use super::{
    bench_dir, distribution, grow_load, servers_cpu_ms, spawn_worker, start_cluster, PlanEntry,
    Worker, LOAD_PASSWORD,
};

// ---------------------------------------------------------------------------------------------
// connwatch run as a child process.

/// `connwatch --config <file> run`, its metrics listener, killed on drop.
struct Connwatch {
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
async fn system_client(cluster: &Cluster, server: usize) -> anyhow::Result<async_nats::Client> {
    let sys = cluster.system_user();
    Ok(
        async_nats::ConnectOptions::with_user_and_password(sys.name.clone(), sys.password.clone())
            .name("connwatch-bench")
            .connect(cluster.client_url(server))
            .await?,
    )
}

/// The `connwatch.census` endpoint's answer to `body`.
async fn census(client: &async_nats::Client, body: &str) -> anyhow::Result<Value> {
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
async fn census_counts(
    client: &async_nats::Client,
    account: &str,
) -> anyhow::Result<BTreeMap<(String, String, String), u64>> {
    let body = json!({ "account": account }).to_string();
    Ok(measure::census_by_server(&census(client, &body).await?))
}

/// The same from every server's own HTTP `/connz` (the oracle).
fn connz_counts(
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
async fn time_to_equal(
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
fn cleanup(dir: &Path) {
    if std::env::var_os("CONNWATCH_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn load_auth(user: &str) -> LoadAuth {
    LoadAuth::user_password(user, LOAD_PASSWORD)
}

fn write_json(out: &Path, v: &Value) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(v)?)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// live-latency

/// `live-latency`: detection latency, live census against sweeps alone.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Trials with the live census on.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Trials of the baseline (live off, sweeps every `--sweep-interval`; each takes up to two
    /// intervals).
    #[arg(long, default_value_t = 4)]
    baseline_trials: usize,
    /// `detect.max_connections_per_user`: each trial opens this many, then one more.
    #[arg(long, default_value_t = 100)]
    threshold: u64,
    /// `sweep.interval` of the baseline.
    #[arg(long, default_value = "30s")]
    sweep_interval: humantime::Duration,
    /// `live.reconcile_interval` of the live runs.
    #[arg(long, default_value = "5m")]
    reconcile_interval: humantime::Duration,
    /// Connections of other users of the same account held throughout, spread over the
    /// servers and 10 users (keep it under 10 × the threshold: no other finding fires).
    #[arg(long, default_value_t = 600)]
    background: usize,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/live-latency.json")]
    out: PathBuf,
}

/// Users `app0`… of account `APP` holding the latency bench's background connections.
const BACKGROUND_USERS: usize = 10;

/// One trial: crossing → firing, and closing → resolved.
#[derive(Debug, Clone, Copy)]
struct Trial {
    fire: Duration,
    resolve: Duration,
}

pub fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let dir = bench_dir()?;
        let mut app = AccountSpec::new("APP").user("leaky", LOAD_PASSWORD);
        for u in 0..BACKGROUND_USERS {
            app = app.user(format!("app{u}"), LOAD_PASSWORD);
        }
        let (cluster, _pids) = start_cluster(&dir, 0, 0, vec![app])?;
        let mut background = Vec::new();
        let per = args.background / (cluster.len() * BACKGROUND_USERS);
        for s in 0..cluster.len() {
            for u in 0..BACKGROUND_USERS {
                let spec = LoadSpec::new(cluster.client_url(s), load_auth(&format!("app{u}")), per)
                    .name("app-svc");
                background.push(load::open(spec).await?);
            }
        }
        eprintln!("load average before: {}", loadavg());
        let interval = *args.sweep_interval;
        let live_cfg = format!(
            "[sweep]\ninterval = \"{}\"\n[live]\nenabled = true\nreconcile_interval = \"{}\"\n\
             [detect]\nmax_connections_per_user = {}\n",
            args.sweep_interval, args.reconcile_interval, args.threshold
        );
        let sweep_cfg = format!(
            "[sweep]\ninterval = \"{}\"\n[live]\nenabled = false\n\
             [detect]\nmax_connections_per_user = {}\n",
            args.sweep_interval, args.threshold
        );
        let mut rows = Vec::new();
        for (mode, cfg, trials) in [
            ("live", live_cfg, args.trials),
            ("sweeps", sweep_cfg, args.baseline_trials),
        ] {
            if trials == 0 {
                continue;
            }
            let cw = Connwatch::start(&cluster, &dir, &format!("latency-{mode}"), &cfg)?;
            if mode == "live" {
                cw.wait_complete().await?;
            } else {
                cw.wait("first sweep", Duration::from_secs(60), |c| {
                    c.sweeps() >= 1.0
                })
                .await?;
            }
            let client = system_client(&cluster, 1).await?;
            let mut advisories = advisory_feed(&client).await?;
            let mut done = Vec::new();
            for t in 0..trials {
                let jitter = (mode == "sweeps").then(|| interval.mul_f64(splitmix(t as u64 + 1)));
                let trial = one_trial(
                    &cluster,
                    &client,
                    &mut advisories,
                    args.threshold,
                    t,
                    jitter,
                    interval * 2 + Duration::from_secs(30),
                )
                .await
                .with_context(|| format!("{mode} trial {t}"))?;
                eprintln!(
                    "  {mode} trial {t}: firing after {:.0} ms, resolved after {:.0} ms",
                    ms(trial.fire),
                    ms(trial.resolve)
                );
                done.push(trial);
            }
            let slow = cw.metric_sum("connwatch_nats_slow_consumers_total");
            cw.stop();
            rows.push((mode, done, slow));
        }
        eprintln!("load average after: {}", loadavg());
        print_latency(&args, &rows);
        let json_rows: Vec<Value> = rows
            .iter()
            .map(|(mode, trials, slow)| {
                json!({"mode": mode,
                    "fire_ms": trials.iter().map(|t| ms(t.fire)).collect::<Vec<_>>(),
                    "resolve_ms": trials.iter().map(|t| ms(t.resolve)).collect::<Vec<_>>(),
                    "slow_consumers": slow})
            })
            .collect();
        write_json(
            &args.out,
            &json!({"threshold": args.threshold, "sweep_interval": args.sweep_interval.to_string(),
                "reconcile_interval": args.reconcile_interval.to_string(), "rows": json_rows,
                "loadavg_end": loadavg()}),
        )?;
        drop(background);
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}

/// Every advisory received, with the instant it arrived.
async fn advisory_feed(
    client: &async_nats::Client,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>> {
    let mut sub = client.subscribe("connwatch.advisory.>").await?;
    client.flush().await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) {
                if tx.send((at, v)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Waits for an `excessive_user_connections` advisory of `APP/leaky` in `state`.
async fn wait_advisory(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (at, v) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("no {state} advisory within {timeout:?}"))?
            .context("advisory feed closed")?;
        if v["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
            && v["state"] == state
            && v["user"] == "leaky"
        {
            return Ok(at);
        }
    }
}

/// Opens `threshold` connections of `APP/leaky` over the servers, waits until the census holds
/// them (then, for the baseline, a random part of the interval), opens one more and times the
/// `firing`; closes them all and times the `resolved`.
async fn one_trial(
    cluster: &Cluster,
    client: &async_nats::Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    threshold: u64,
    t: usize,
    jitter: Option<Duration>,
    timeout: Duration,
) -> anyhow::Result<Trial> {
    let n = cluster.len();
    let mut held = Vec::new();
    for s in 0..n {
        let count = threshold as usize / n + usize::from(s < threshold as usize % n);
        let spec =
            LoadSpec::new(cluster.client_url(s), load_auth("leaky"), count).name("leaky-worker");
        held.push(load::open(spec).await?);
    }
    let leaky = json!({"account": "APP", "user": "leaky"}).to_string();
    let count = |v: &Value| v["users"][0]["connections"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + timeout;
    while census(client, &leaky).await.map(|v| count(&v)).unwrap_or(0) != threshold {
        if Instant::now() > deadline {
            bail!("the census never showed the {threshold} connections");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(j) = jitter {
        tokio::time::sleep(j).await;
    }
    while rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let spec = LoadSpec::new(cluster.client_url(t % n), load_auth("leaky"), 1).name("leaky-worker");
    held.push(load::open(spec).await?);
    let fired = wait_advisory(rx, "firing", timeout).await?;
    let t1 = Instant::now();
    for l in held {
        l.close().await;
    }
    let resolved = wait_advisory(rx, "resolved", timeout).await?;
    // The next trial starts from an empty census.
    while census(client, &leaky).await.map(|v| count(&v)).unwrap_or(1) != 0 {
        if Instant::now() > deadline + timeout {
            bail!("the census kept the closed connections");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Trial {
        fire: fired.saturating_duration_since(t0),
        resolve: resolved.saturating_duration_since(t1),
    })
}

fn print_latency(args: &LatencyArgs, rows: &[(&str, Vec<Trial>, f64)]) {
    println!(
        "\n### Detection latency (threshold {}, 3 servers)\n",
        args.threshold
    );
    println!("| mode | trials | firing p50 | firing p99 | firing max | resolved p50 | resolved p99 | resolved max | slow consumers |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (mode, trials, slow) in rows {
        let mut fire: Vec<f64> = trials.iter().map(|t| ms(t.fire)).collect();
        let mut resolve: Vec<f64> = trials.iter().map(|t| ms(t.resolve)).collect();
        fire.sort_by(f64::total_cmp);
        resolve.sort_by(f64::total_cmp);
        let name = match *mode {
            "live" => format!("live census (reconcile every {})", args.reconcile_interval),
            _ => format!("sweeps alone every {} (baseline)", args.sweep_interval),
        };
        println!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {slow} |",
            trials.len(),
            percentile(&fire, 0.5),
            percentile(&fire, 0.99),
            fire.last().copied().unwrap_or(0.0),
            percentile(&resolve, 0.5),
            percentile(&resolve, 0.99),
            resolve.last().copied().unwrap_or(0.0),
        );
    }
    let i = ms(*args.sweep_interval);
    println!(
        "| sweeps every {} (expected: crossing uniform in the interval) | - | {:.0} ms | {:.0} ms | {:.0} ms | | | | |",
        args.sweep_interval,
        i * 0.5,
        i * 0.99,
        i
    );
}

// ---------------------------------------------------------------------------------------------
// live-churn

/// `live-churn`: exactness of the live census after random opens and closes.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// Trials (churn, stop, compare).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Churn per trial.
    #[arg(long, default_value = "20s")]
    duration: humantime::Duration,
    /// Users of account `CHURN` (each churns on every server).
    #[arg(long, default_value_t = 4)]
    users: usize,
    /// Sweeps requested (`connwatch.sweep`) during each trial's churn, evenly spaced: events
    /// arrive before, during and after each.
    #[arg(long, default_value_t = 1)]
    sweeps_during: usize,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/live-churn.json")]
    out: PathBuf,
}

/// A churner's connections (one `Load` of one connection each).
type Held = Vec<load::Load>;

pub fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let dir = bench_dir()?;
        let users: Vec<String> = (0..args.users).map(|u| format!("c{u}")).collect();
        let mut acc = AccountSpec::new("CHURN");
        for u in &users {
            acc = acc.user(u.clone(), LOAD_PASSWORD);
        }
        let (cluster, _pids) = start_cluster(&dir, 0, 0, vec![acc])?;
        let cw = Connwatch::start(
            &cluster,
            &dir,
            "churn",
            "[live]\nenabled = true\nreconcile_interval = \"5m\"\n",
        )?;
        cw.wait_complete().await?;
        let client = system_client(&cluster, 0).await?;
        eprintln!("load average before: {}", loadavg());
        let mut held: Vec<Held> = (0..cluster.len() * users.len()).map(|_| Vec::new()).collect();
        let mut rows = Vec::new();
        for t in 0..args.trials {
            let stop = Arc::new(AtomicBool::new(false));
            let ops = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for (k, mine) in held.drain(..).enumerate() {
                let url = cluster.client_url(k % cluster.len());
                let user = users[k / cluster.len()].clone();
                let (stop, ops) = (stop.clone(), ops.clone());
                let seed = (t * 1000 + k) as u64;
                tasks.push(tokio::spawn(churner(url, user, mine, seed, stop, ops)));
            }
            let start = Instant::now();
            let every = args.duration.div_f64(args.sweeps_during as f64 + 1.0);
            let mut sweeps_ok = 0;
            for _ in 0..args.sweeps_during {
                tokio::time::sleep(every).await;
                let reply = tokio::time::timeout(
                    Duration::from_secs(30),
                    client.request("connwatch.sweep", "".into()),
                )
                .await;
                if matches!(reply, Ok(Ok(_))) {
                    sweeps_ok += 1;
                }
            }
            tokio::time::sleep(args.duration.saturating_sub(start.elapsed())).await;
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                held.push(task.await?);
            }
            let stopped = Instant::now();
            let churn_s = stopped.duration_since(start).as_secs_f64();
            let n_ops = ops.load(Ordering::Relaxed);
            let (took, diff) =
                time_to_equal(&cluster, &client, "CHURN", stopped, Duration::from_secs(30)).await;
            let open: usize = held.iter().map(Vec::len).sum();
            eprintln!(
                "  trial {t}: {n_ops} opens+closes in {churn_s:.1} s, {open} open after; equal after {}",
                took.map(|d| format!("{:.0} ms", ms(d))).unwrap_or_else(|| format!("NEVER (30 s): {diff}"))
            );
            rows.push(json!({"trial": t, "ops": n_ops, "seconds": churn_s, "open_after": open,
                "sweeps_during": sweeps_ok, "equal_after_ms": took.map(ms), "last_difference": diff}));
        }
        let gaps = cw.metric_sum("connwatch_live_gaps_total");
        let slow = cw.metric_sum("connwatch_nats_slow_consumers_total");
        cw.stop();
        eprintln!("load average after: {}", loadavg());
        print_churn(&rows, gaps, slow);
        write_json(&args.out, &json!({"trials": rows, "gaps": gaps, "slow_consumers": slow,
            "users": args.users, "duration": args.duration.to_string(), "loadavg_end": loadavg()}))?;
        drop(held);
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}

/// Opens and closes connections of `user` on `url` at random until `stop`, keeping between
/// 10 and 40 open; returns those still open.
async fn churner(
    url: String,
    user: String,
    mut held: Held,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> Held {
    let mut i = seed.wrapping_mul(7919);
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let r = splitmix(i);
        let open = held.len() < 10 || (held.len() < 40 && r < 0.5);
        if open {
            let spec =
                LoadSpec::new(url.clone(), load_auth(&user), 1).name(format!("{user}-churn"));
            if let Ok(l) = load::open(spec).await {
                held.push(l);
            }
        } else {
            let k = (splitmix(i ^ 0x5eed) * held.len() as f64) as usize % held.len();
            held.swap_remove(k).close().await;
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    held
}

fn print_churn(rows: &[Value], gaps: f64, slow: f64) {
    println!("\n### Exactness after churn (census vs every server's /connz)\n");
    println!("| trial | opens+closes | churn (s) | open after | sweeps during | equal after |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut worst: Option<f64> = Some(0.0);
    for r in rows {
        let took = r["equal_after_ms"].as_f64();
        worst = match (worst, took) {
            (Some(w), Some(t)) => Some(w.max(t)),
            _ => None,
        };
        println!(
            "| {} | {} | {:.1} | {} | {} | {} |",
            r["trial"],
            r["ops"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["open_after"],
            r["sweeps_during"],
            took.map(|t| format!("{t:.0} ms"))
                .unwrap_or_else(|| "not within 30 s".into())
        );
    }
    match worst {
        Some(w) => println!(
            "\nmax {w:.0} ms; every trial within 1 s: {}; gaps {gaps}, slow consumers {slow}",
            if w <= 1000.0 { "yes" } else { "NO" }
        ),
        None => println!("\nsome trial did NOT converge; gaps {gaps}, slow consumers {slow}"),
    }
}

// ---------------------------------------------------------------------------------------------
// live-cost

/// `live-cost`: what connwatch adds to the servers, live + reconciliation vs 30-s sweeps.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Connections held (spread like `run`'s load: 50 accounts × 10 users, 10% hot).
    #[arg(long, default_value_t = 45_000)]
    size: usize,
    /// Churn rates: connects (and as many disconnects) a second.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    rates: Vec<f64>,
    /// Measuring window of the no-connwatch and live phases.
    #[arg(long, default_value = "45s")]
    window: humantime::Duration,
    /// `sweep.interval` of the sweeps phase (its window is two whole intervals).
    #[arg(long, default_value = "30s")]
    sweep_interval: humantime::Duration,
    /// `live.reconcile_interval` of the live phase (its sweeps are charged per hour from the
    /// sweeps phase's measured cost per sweep).
    #[arg(long, default_value = "5m")]
    reconcile_interval: humantime::Duration,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/live-cost.json")]
    out: PathBuf,
}

/// Servers' CPU (ms) and VARZ bytes at one instant.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    cpu_ms: f64,
    out_bytes: f64,
    in_bytes: f64,
}

fn counters(cluster: &Cluster, pids: &[u32]) -> Counters {
    let (mut out_bytes, mut in_bytes) = (0.0, 0.0);
    for i in 0..cluster.len() {
        if let Ok(v) = cluster.monitor_get(i, "/varz") {
            out_bytes += v["out_bytes"].as_f64().unwrap_or(0.0);
            in_bytes += v["in_bytes"].as_f64().unwrap_or(0.0);
        }
    }
    Counters {
        at: Instant::now(),
        cpu_ms: servers_cpu_ms(pids),
        out_bytes,
        in_bytes,
    }
}

/// Rates over a window: servers' CPU ms/s, out and in bytes/s.
fn rates(a: Counters, b: Counters) -> measure::Rates {
    let s = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    measure::Rates {
        seconds: s,
        cpu_ms_per_s: (b.cpu_ms - a.cpu_ms) / s,
        out_bytes_per_s: (b.out_bytes - a.out_bytes) / s,
        in_bytes_per_s: (b.in_bytes - a.in_bytes) / s,
    }
}

/// Connects and disconnects at `rate` a second each, spread over the servers and four users
/// of account `CHURN`, from a pool of open connections (the oldest closes).
struct Churn {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Churn {
    async fn start(cluster: &Cluster, rate: f64) -> anyhow::Result<Churn> {
        let urls = cluster.client_urls();
        let pool: Arc<Mutex<VecDeque<load::Load>>> = Arc::default();
        let size = ((rate * 2.0) as usize).max(12);
        for k in 0..size {
            let spec = LoadSpec::new(
                urls[k % urls.len()].clone(),
                load_auth(&format!("c{}", k % 4)),
                1,
            );
            pool.lock()
                .expect("pool")
                .push_back(load::open(spec).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut k = 0u64;
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                k += 1;
                let (pool, url) = (pool.clone(), urls[k as usize % urls.len()].clone());
                let user = format!("c{}", k % 4);
                tokio::spawn(async move {
                    if let Ok(l) = load::open(LoadSpec::new(url, load_auth(&user), 1)).await {
                        let old = {
                            let mut p = pool.lock().expect("pool");
                            p.push_back(l);
                            p.pop_front()
                        };
                        if let Some(old) = old {
                            old.close().await;
                        }
                    }
                });
            }
            k
        });
        Ok(Churn { stop, task })
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

pub fn cost(args: CostArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let dir = bench_dir()?;
        let mut churn_acc = AccountSpec::new("CHURN");
        for u in 0..4 {
            churn_acc = churn_acc.user(format!("c{u}"), LOAD_PASSWORD);
        }
        let (cluster, pids) = start_cluster(&dir, 50, 10, vec![churn_acc])?;
        let want = distribution(args.size, 50, 10, 0.1, cluster.len());
        let workers = grow_load(&cluster, &dir, 0, &BTreeMap::new(), &want, args.size)?;
        eprintln!("{} connections open; settling", args.size);
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!("load average before: {}", loadavg());
        let window = *args.window;
        let live_cfg = format!(
            "[sweep]\ninterval = \"{}\"\n[live]\nenabled = true\nreconcile_interval = \"{}\"\n",
            args.sweep_interval, args.reconcile_interval
        );
        let sweep_cfg = format!(
            "[sweep]\ninterval = \"{}\"\n[live]\nenabled = false\n",
            args.sweep_interval
        );
        let mut points = Vec::new();
        for &rate in &args.rates {
            eprintln!("churn {rate}/s");
            let churn = Churn::start(&cluster, rate).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            // No connwatch.
            let a = counters(&cluster, &pids);
            tokio::time::sleep(window).await;
            let none = rates(a, counters(&cluster, &pids));
            // Live census, between reconciling sweeps.
            let cw = Connwatch::start(&cluster, &dir, &format!("cost-live-{rate}"), &live_cfg)?;
            cw.wait_complete().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (e0, s0) = (cw.metric("connwatch_live_events_total").unwrap_or(0.0), cw.sweeps());
            let a = counters(&cluster, &pids);
            tokio::time::sleep(window).await;
            let live = rates(a, counters(&cluster, &pids));
            let events = cw.metric("connwatch_live_events_total").unwrap_or(0.0) - e0;
            let live_sweeps = cw.sweeps() - s0;
            let live_slow = cw.metric_sum("connwatch_nats_slow_consumers_total");
            let live_rss = cw.memory_kb().0;
            cw.stop();
            // Sweeps alone: a window of exactly two sweeps (from one sweep's end to the end of
            // the second after it).
            let cw = Connwatch::start(&cluster, &dir, &format!("cost-sweeps-{rate}"), &sweep_cfg)?;
            let deadline = Duration::from_secs(180);
            cw.wait("first sweep", deadline, |c| c.sweeps() >= 1.0).await?;
            let k = cw.sweeps();
            cw.wait("second sweep", deadline, |c| c.sweeps() > k).await?;
            let a = counters(&cluster, &pids);
            cw.wait("fourth sweep", deadline, |c| c.sweeps() >= k + 3.0).await?;
            let sweeps = rates(a, counters(&cluster, &pids));
            let sweep_rss = cw.memory_kb().0;
            cw.stop();
            let done = churn.stop().await;
            let p = measure::CostPoint {
                rate,
                none,
                live,
                sweeps,
                sweeps_in_window: 2.0,
                live_sweeps,
                events,
                reconciles_per_hour: 3600.0 / args.reconcile_interval.as_secs_f64(),
            };
            eprintln!(
                "  {done} churn ticks; live: {events} events, {live_sweeps} sweeps in the window, slow consumers {live_slow}; peak RSS live {live_rss} KiB, sweeps {sweep_rss} KiB"
            );
            points.push(p);
        }
        eprintln!("load average after: {}", loadavg());
        let summary = measure::cost_summary(&points);
        print!("{}", measure::cost_table(args.size, &points, &summary));
        write_json(
            &args.out,
            &json!({"size": args.size, "window": args.window.to_string(),
                "sweep_interval": args.sweep_interval.to_string(),
                "reconcile_interval": args.reconcile_interval.to_string(),
                "points": points, "summary": summary, "loadavg_end": loadavg()}),
        )?;
        drop(workers);
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// live-flood

/// `live-flood`: a connect flood and the disconnect flood after it.
#[derive(Debug, Args)]
pub struct FloodArgs {
    /// Connects a second, over the three servers.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// How long the flood lasts.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Users of account `FLOOD` the connections belong to.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/live-flood.json")]
    out: PathBuf,
}

pub fn flood(args: FloodArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let dir = bench_dir()?;
        let mut acc = AccountSpec::new("FLOOD");
        for u in 0..args.users {
            acc = acc.user(format!("f{u}"), LOAD_PASSWORD);
        }
        let (cluster, _pids) = start_cluster(&dir, 0, 0, vec![acc])?;
        let cw = Connwatch::start(&cluster, &dir, "flood", "[live]\nenabled = true\n")?;
        cw.wait_complete().await?;
        let client = system_client(&cluster, 0).await?;
        eprintln!("load average before: {}", loadavg());
        let total = (args.rate * args.duration.as_secs_f64()) as usize;
        let n = cluster.len();
        let per = total / (n * args.users);
        let rate = args.rate / (n * args.users) as f64;
        let before = flood_state(&cw);
        // One worker process per server, all started at once.
        let t0 = Instant::now();
        let spawned: Vec<std::thread::JoinHandle<anyhow::Result<Worker>>> = (0..n)
            .map(|s| {
                let plan: Vec<PlanEntry> = (0..args.users)
                    .map(|u| PlanEntry {
                        server: cluster.client_url(s),
                        user: format!("f{u}"),
                        name: format!("flood-{u}"),
                        count: per,
                        rate: Some(rate),
                    })
                    .collect();
                let path = dir.join(format!("flood-{s}.json"));
                std::thread::spawn(move || spawn_worker(&path, &plan))
            })
            .collect();
        let mut workers = Vec::new();
        for h in spawned {
            workers.push(h.join().map_err(|_| anyhow::anyhow!("worker thread panicked"))??);
        }
        let opened = t0.elapsed();
        let stopped = Instant::now();
        let (connect_equal, connect_diff) =
            time_to_equal(&cluster, &client, "FLOOD", stopped, Duration::from_secs(60)).await;
        let after_connects = flood_state(&cw);
        // The disconnect flood: every worker closes its connections at once.
        let t1 = Instant::now();
        let closers: Vec<_> = workers
            .into_iter()
            .map(|w| std::thread::spawn(move || drop(w)))
            .collect();
        for c in closers {
            let _ = c.join();
        }
        let closed = t1.elapsed();
        let stopped = Instant::now();
        let (close_equal, close_diff) =
            time_to_equal(&cluster, &client, "FLOOD", stopped, Duration::from_secs(60)).await;
        let after_closes = flood_state(&cw);
        cw.stop();
        eprintln!("load average after: {}", loadavg());
        let opened_per_s = (per * n * args.users) as f64 / opened.as_secs_f64();
        let closed_per_s = (per * n * args.users) as f64 / closed.as_secs_f64().max(1e-3);
        let rows = json!([
            {"phase": "before", "state": before},
            {"phase": "connects", "connections": per * n * args.users, "seconds": opened.as_secs_f64(),
             "per_second": opened_per_s, "equal_after_ms": connect_equal.map(ms),
             "last_difference": connect_diff, "state": after_connects},
            {"phase": "disconnects", "seconds": closed.as_secs_f64(), "per_second": closed_per_s,
             "equal_after_ms": close_equal.map(ms), "last_difference": close_diff,
             "state": after_closes},
        ]);
        print_flood(&rows);
        write_json(&args.out, &json!({"rate": args.rate, "duration": args.duration.to_string(),
            "users": args.users, "phases": rows, "loadavg_end": loadavg()}))?;
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}

/// What the flood is judged by: connwatch's slow consumers, gaps, events and memory.
fn flood_state(cw: &Connwatch) -> Value {
    let (hwm, rss) = cw.memory_kb();
    json!({
        "slow_consumers": cw.metric_sum("connwatch_nats_slow_consumers_total"),
        "gaps": cw.metric_sum("connwatch_live_gaps_total"),
        "events": cw.metric("connwatch_live_events_total").unwrap_or(0.0),
        "sweeps": cw.sweeps(),
        "complete": cw.metric("connwatch_live_complete").unwrap_or(0.0),
        "peak_rss_kib": hwm,
        "rss_kib": rss,
    })
}

/// A JSON number as a whole number.
fn num(v: &Value) -> String {
    format!("{:.0}", v.as_f64().unwrap_or(0.0))
}

fn print_flood(rows: &Value) {
    println!("\n### Event flood\n");
    println!("| phase | connections/s reached | census = /connz after | slow consumers (total) | gaps (total) | events applied (total) | sweeps (total) | connwatch RSS / peak |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows.as_array().into_iter().flatten() {
        let s = &r["state"];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} MiB |",
            r["phase"].as_str().unwrap_or(""),
            r["per_second"]
                .as_f64()
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
            match (r.get("equal_after_ms"), r["equal_after_ms"].as_f64()) {
                (None, _) => "-".into(),
                (_, Some(t)) => format!("{t:.0} ms"),
                _ => "NOT within 60 s".into(),
            },
            num(&s["slow_consumers"]),
            num(&s["gaps"]),
            num(&s["events"]),
            num(&s["sweeps"]),
            s["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            s["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        );
    }
}
