//! connwatch-bench: what a sweep costs, side by side with the physical floor and the usual
//! recipes, on a local 3-node cluster holding tens of thousands of connections.
//!
//! `connwatch-bench run` starts the cluster, opens the load in separate processes (so no
//! measured process holds the load's sockets), and runs every method as its own child process
//! so that CPU time and peak RSS are the method's alone. See BENCHMARKS.md and scripts/bench.sh.

mod live;
mod topology;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use connwatch::config::{Compression, DetectConfig, NatsConfig, Secret, SweepConfig};
use connwatch::live::{Delta, LiveView, SyncId, TakeLists};
use connwatch::snapshot::Snapshot;
use connwatch::state::KnownServers;
use connwatch::sweep::{Collecting, Sweeper};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use testkit::cluster::{AccountSpec, Cluster, ClusterSpec};
use testkit::load::{self, LoadAuth, LoadSpec};

/// Password of every load user (development only).
const LOAD_PASSWORD: &str = "bench-pw";
/// The hot user (in account A00).
const HOT_USER: &str = "leaky";

#[derive(Debug, Parser)]
#[command(name = "connwatch-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a cluster, grow the load through the sizes and measure every method at each.
    Run(RunArgs),
    /// Live census: detection latency, live against sweeps alone (BENCHMARKS.md).
    LiveLatency(live::LatencyArgs),
    /// Live census: time until the census equals every server's /connz after churn.
    LiveChurn(live::ChurnArgs),
    /// Live census: servers' CPU and bytes it adds against 30-s sweeps, by churn rate.
    LiveCost(live::CostArgs),
    /// Live census: a connect and disconnect flood (slow consumers, memory, exactness).
    LiveFlood(live::FloodArgs),
    /// (internal) Hold the connections of a plan file until stdin closes.
    #[command(hide = true)]
    LoadWorker {
        #[arg(long)]
        plan: PathBuf,
    },
    /// (internal) Run one method several times and print its measurements as JSON.
    #[command(hide = true)]
    Method(MethodArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Total connections at each step (ascending), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000,45000")]
    sizes: Vec<usize>,
    /// A smoke run: sizes 600,1500, 3 runs, 50 soak sweeps, threshold 50.
    #[arg(long)]
    quick: bool,
    /// Timed sweeps per method and size (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Split each method's sweeps into this many blocks, the methods taking turns block by
    /// block (each block a process of its own, with its own warm-up sweep), so a burst of load
    /// on the machine falls on several methods' sweeps instead of one method's.
    #[arg(long, default_value_t = 1)]
    blocks: usize,
    /// Application accounts (A00 is the hot one).
    #[arg(long, default_value_t = 50)]
    accounts: usize,
    /// Users per account.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Share of all connections held by the hot user A00/leaky.
    #[arg(long, default_value_t = 0.1)]
    hot_share: f64,
    /// `detect.max_connections_per_user` of the census after each sweep.
    #[arg(long, default_value_t = 1000)]
    threshold: u64,
    /// Sweeps of the memory soak (on the first size); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    soak_sweeps: usize,
    /// CONNZ page size of connwatch and the floor.
    #[arg(long, default_value_t = 10_000)]
    page_size: usize,
    /// Methods to run (default: all).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Run the in-process methods (and `main:` ones) under this command: `perf record -g -o
    /// perf.data --` (profiling; the numbers then include the wrapper), or `taskset -c 1` (the
    /// method on a core of its own, the bench and its servers started under `taskset -c 0`).
    #[arg(long)]
    wrap: Option<String>,
    /// The connwatch binary for the end-to-end `report` method [default: next to this one].
    #[arg(long)]
    connwatch_bin: Option<PathBuf>,
    /// Clusters joined by gateways (a super-cluster when more than 1).
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Servers in each cluster.
    #[arg(long, default_value_t = 3)]
    servers_per_cluster: usize,
    /// `sweep.max_in_flight` of the `connwatch` method and of `floor-bounded`.
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Servers the `connwatch` methods expect beyond those started (`sweep.expected_servers`),
    /// never answering, as when a server is down: each sweep waits for them until its timeout
    /// and is partial
    #[arg(long, default_value_t = 0)]
    silent_servers: usize,
    /// Every client of the 500 users connects from a loopback address of its own (127.1.x.y),
    /// as a fleet of hosts or pods: a user has as many IPs and processes as connections. The
    /// hot user's connections stay on 127.0.0.1 (one leaking process).
    #[arg(long)]
    ip_per_client: bool,
    /// Another build of this bench (e.g. of the main branch, built by
    /// `scripts/bench-aggregate.sh`): methods named `main:<kind>` run in its children, side by
    /// side with this build's in the same run.
    #[arg(long)]
    baseline_bench: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
struct MethodArgs {
    /// connwatch | connwatch-live (`-plain`: `sweep.compression = "none"`) | floor | floor-gzip |
    /// floor-snappy | floor-overlap16 | paged1024
    #[arg(long)]
    kind: String,
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// nats-server pids, for their CPU time.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 10_000)]
    page_size: usize,
    #[arg(long, default_value_t = 1000)]
    threshold: u64,
    /// `sweep.max_in_flight` (`connwatch`, `soak`) and the servers read at once (`floor-bounded`).
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Servers expected that never answer (`connwatch`).
    #[arg(long, default_value_t = 0)]
    silent_servers: usize,
}

/// What one method child measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Measured {
    kind: String,
    /// Wall time of each timed sweep.
    wall_ms: Vec<f64>,
    /// CPU time (user + system) of the collecting process per sweep.
    cpu_ms: f64,
    /// Peak RSS of the collecting process (VmHWM, or the child's ru_maxrss).
    peak_rss_kb: u64,
    /// Peak RSS over the timed sweeps only, after the warm-up (the first sweep of a process
    /// knows no server's size yet): connwatch methods.
    #[serde(default)]
    later_peak_rss_kb: u64,
    /// RSS after the 10th sweep and after the last (soak).
    rss_after_10_kb: u64,
    rss_end_kb: u64,
    /// (sweeps done, RSS in KiB) after 10 sweeps and every 100th.
    #[serde(default)]
    rss_samples_kb: Vec<(usize, u64)>,
    /// Reply bytes received per sweep.
    bytes: f64,
    /// Requests sent per sweep.
    requests: f64,
    /// Connections collected per sweep (connwatch methods).
    connections: f64,
    /// Servers' CPU time per sweep, before subtracting their idle rate.
    server_cpu_ms_raw: f64,
    /// Length of the timed window (for subtracting the servers' idle rate).
    window_ms: f64,
    /// Census build time per sweep (connwatch methods).
    census_ms: f64,
    /// Servers' CPU time per sweep, idle rate subtracted (filled in by `run`).
    #[serde(default)]
    server_cpu_ms: f64,
    /// The most reply bytes in flight in one sweep (asked for, not yet parsed), the highest
    /// over the timed sweeps (connwatch methods, `report`).
    #[serde(default)]
    peak_in_flight: f64,
    /// A live round's census after one connection opened (`connwatch-live`, after the timed
    /// sweeps), median.
    #[serde(default)]
    round_ms: f64,
    /// The same census counting every connection of the view, as each round did before the
    /// rounds counted only the users that changed, median.
    #[serde(default)]
    round_all_ms: f64,
    /// The first of those rounds, right after the last timed sweep's census.
    #[serde(default)]
    first_round_ms: f64,
}

impl Measured {
    /// Adds another block's measurements of the same method: the sweeps of both, per-sweep
    /// figures weighted by their sweeps, peaks the higher.
    fn join(&mut self, o: Measured) {
        let (a, b) = (self.wall_ms.len() as f64, o.wall_ms.len() as f64);
        let mean = |x: f64, y: f64| {
            if a + b > 0.0 {
                (x * a + y * b) / (a + b)
            } else {
                x
            }
        };
        self.cpu_ms = mean(self.cpu_ms, o.cpu_ms);
        self.bytes = mean(self.bytes, o.bytes);
        self.requests = mean(self.requests, o.requests);
        self.connections = mean(self.connections, o.connections);
        self.server_cpu_ms_raw = mean(self.server_cpu_ms_raw, o.server_cpu_ms_raw);
        self.census_ms = mean(self.census_ms, o.census_ms);
        self.window_ms += o.window_ms;
        self.peak_rss_kb = self.peak_rss_kb.max(o.peak_rss_kb);
        self.later_peak_rss_kb = self.later_peak_rss_kb.max(o.later_peak_rss_kb);
        self.rss_after_10_kb = self.rss_after_10_kb.max(o.rss_after_10_kb);
        self.rss_end_kb = o.rss_end_kb;
        self.peak_in_flight = self.peak_in_flight.max(o.peak_in_flight);
        self.round_ms = mean(self.round_ms, o.round_ms);
        self.round_all_ms = mean(self.round_all_ms, o.round_all_ms);
        self.first_round_ms = mean(self.first_round_ms, o.first_round_ms);
        self.wall_ms.extend(o.wall_ms);
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(args),
        Cmd::LiveLatency(args) => live::latency(args),
        Cmd::LiveChurn(args) => live::churn(args),
        Cmd::LiveCost(args) => live::cost(args),
        Cmd::LiveFlood(args) => live::flood(args),
        Cmd::LoadWorker { plan } => load_worker(&plan),
        Cmd::Method(args) => {
            let m = match args.kind.as_str() {
                "connwatch"
                | "connwatch-live"
                | "soak"
                | "connwatch-ping"
                | "connwatch-plain"
                | "connwatch-live-plain" => sweeper_method(&args)?,
                "floor-bounded" => topology::floor_bounded(&args)?,
                "floor" => floor_method(&args, args.page_size, Plan::Snapshot, None)?,
                "floor-gzip" => floor_method(&args, args.page_size, Plan::Snapshot, Some("gzip"))?,
                "floor-snappy" => {
                    floor_method(&args, args.page_size, Plan::Snapshot, Some("snappy"))?
                }
                "floor-overlap16" => floor_method(&args, args.page_size, Plan::Overlap(16), None)?,
                "paged1024" => floor_method(&args, 1024, Plan::Overlap(0), None)?,
                other => bail!("unknown method {other}"),
            };
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring helpers (Linux).

fn self_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// `VmHWM` / `VmRSS` of this process, in KiB.
fn self_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process from `/proc/<pid>/stat`, in ms.
fn proc_cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

fn servers_cpu_ms(pids: &[u32]) -> f64 {
    pids.iter().map(|p| proc_cpu_ms(*p)).sum()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

// ---------------------------------------------------------------------------------------------
// Methods run in a child process.

/// connwatch's real code path: `Sweeper::sweep`, then the census. `connwatch` is a sweep of
/// `connwatch run` without the live view and kicks: the census is built while the replies are
/// parsed. `connwatch-live` is a live round of `connwatch run` (the default mode): each sweep
/// reconciles a live view, which holds every open connection between sweeps, and the census is
/// counted from the view.
fn sweeper_method(a: &MethodArgs) -> anyhow::Result<Measured> {
    // As `connwatch` does first thing (scripts/bench-aggregate.sh drops this line for main).
    connwatch::alloc::tune();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let nats = NatsConfig {
            servers: a.servers.clone(),
            user: Some(a.user.clone()),
            password: Some(Secret::new(a.password.clone())),
            name: "connwatch-bench".into(),
            ..NatsConfig::default()
        };
        let client = connwatch::nats::connect(&nats, None).await?;
        let system = connwatch::nats::System::new(client);
        let cfg = SweepConfig {
            expected_servers: a.servers.len() + a.silent_servers,
            page_size: a.page_size,
            // connwatch-ping: no bound, one PING to all servers whatever their number.
            max_in_flight: if a.kind == "connwatch-ping" {
                0
            } else {
                a.max_in_flight
            },
            // `-plain`: the replies uncompressed (`sweep.compression = "none"`).
            compression: if a.kind.ends_with("-plain") {
                Compression::None
            } else {
                SweepConfig::default().compression
            },
            ..SweepConfig::default()
        };
        let detect = DetectConfig {
            max_connections_per_user: a.threshold,
            ..DetectConfig::default()
        };
        let mut sweeper = Sweeper::new(system, &cfg);
        let rules = connwatch::census::Aggregate::new(Some("SYS"), &detect);
        let view = a
            .kind
            .starts_with("connwatch-live")
            .then(|| Arc::new(Mutex::new(LiveView::new())));
        // As `connwatch run` without kicks: sweeps alone count while they parse; with the live
        // view they list compactly (the view takes each server's list as it comes, or at the
        // end), and the census is counted from it.
        let begin = |sweeper: &mut Sweeper| {
            let view = view.as_ref()?;
            let sync = view.lock().expect("view").begin_sweep();
            let to = TakeLists::new(Arc::clone(view), sync);
            sweeper.collect(Collecting::Live(Arc::new(to)));
            Some(sync)
        };
        if view.is_none() {
            sweeper.collect(Collecting::Census(rules.clone()));
        }
        let mut known = KnownServers::default();
        let sync = begin(&mut sweeper);
        let warm = sweeper.sweep(&mut known).await?;
        if let (Some(view), Some(sync)) = (view.as_ref(), sync) {
            reconcile(&mut view.lock().expect("view"), sync, warm);
        }
        let first_peak_kb = self_status_kb("VmHWM:");
        // Restarts VmHWM from the current RSS (Linux: "5" to clear_refs).
        let restarted = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let mut m = Measured {
            kind: a.kind.clone(),
            ..Measured::default()
        };
        let (cpu0, srv0, t0) = (self_cpu(), servers_cpu_ms(&a.pids), Instant::now());
        let mut census_ms = Vec::new();
        for i in 0..a.runs {
            let sync = begin(&mut sweeper);
            let t = Instant::now();
            let snap = sweeper.sweep(&mut known).await?;
            m.wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            // Partial as expected: only the silent servers missing.
            let as_expected = snap.errors.is_empty() && snap.missing.len() == a.silent_servers;
            if snap.partial() && !as_expected {
                bail!("partial sweep: {:?} {:?}", snap.missing, snap.errors);
            }
            m.bytes += snap.bytes as f64;
            m.requests += snap.requests as f64;
            m.connections += snap.connection_count() as f64;
            m.peak_in_flight = m.peak_in_flight.max(snap.peak_bytes_in_flight as f64);
            let t = Instant::now();
            let snap = match (view.as_ref(), sync) {
                (Some(view), Some(sync)) => {
                    let now = chrono::Utc::now();
                    let mut view = view.lock().expect("view");
                    let meta = reconcile(&mut view, sync, snap);
                    view.counted(&meta, now, rules.fork())
                }
                _ => snap,
            };
            let census = connwatch::topology::census_of(&snap, Some("SYS"), &detect);
            census_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            drop((census, snap));
            if i + 1 == 10 {
                m.rss_after_10_kb = self_status_kb("VmRSS:");
            }
            if i + 1 == 10 || (i + 1) % 100 == 0 {
                m.rss_samples_kb.push((i + 1, self_status_kb("VmRSS:")));
            }
        }
        per_run(a, &mut m, (cpu0, srv0, t0));
        if let Some(view) = &view {
            (m.first_round_ms, m.round_ms, m.round_all_ms) =
                live_rounds(&mut view.lock().expect("view"), &detect);
        }
        if restarted {
            m.later_peak_rss_kb = m.peak_rss_kb;
            m.peak_rss_kb = m.peak_rss_kb.max(first_peak_kb);
        }
        m.connections /= a.runs.max(1) as f64;
        m.census_ms = median(&census_ms);
        Ok(m)
    })
}

/// Live rounds between sweeps (outside the timed sweeps): one connection opens, the round's
/// census is counted, it closes again, 21 times. Returns the first round's census (right
/// after the last sweep's), and the medians of the round's census and of one counting every
/// connection of the view, as each round did before it counted only the users that changed
/// (forced by other rules: one more suspect a user).
fn live_rounds(view: &mut LiveView, detect: &DetectConfig) -> (f64, f64, f64) {
    let meta = Snapshot::default();
    let rules = connwatch::census::Aggregate::new(Some("SYS"), detect);
    let other = connwatch::census::Aggregate::new(
        Some("SYS"),
        &DetectConfig {
            max_suspects_per_user: detect.max_suspects_per_user + 1,
            ..detect.clone()
        },
    );
    let Some(mut c) = view.connections().next().cloned() else {
        return (0.0, 0.0, 0.0);
    };
    let census = |view: &mut LiveView, rules: &connwatch::census::Aggregate| {
        let t = Instant::now();
        let snap = view.counted(&meta, chrono::Utc::now(), rules.fork());
        drop(snap.census.map(|c| c.finish()));
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut round, mut all) = (Vec::new(), Vec::new());
    for i in 0..21u64 {
        c.cid = u64::MAX - i;
        view.apply(Delta::Open(c.clone()));
        round.push(census(view, &rules));
        all.push(census(view, &other));
        census(view, &rules);
        view.apply(Delta::Close {
            server_id: c.server_id.to_string(),
            cid: c.cid,
        });
    }
    (round[0], median(&round), median(&all))
}

/// What `connwatch run` does with a sweep in a live round: the view takes its connections.
/// Returns the sweep without them (its servers, missing, errors).
fn reconcile(view: &mut LiveView, sync: SyncId, mut snap: Snapshot) -> Snapshot {
    view.reconcile(sync, &mut snap);
    snap.connections = Vec::new();
    snap.compact = Default::default();
    snap
}

/// A bare NATS client on a blocking socket that counts reply bytes and throws them away.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
}

/// One reply: the last token of its subject and its payload size.
struct RawMsg {
    tag: String,
    len: usize,
}

impl Raw {
    fn connect(url: &str, user: &str, password: &str) -> anyhow::Result<Raw> {
        let addr = url.trim_start_matches("nats://");
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let mut raw = Raw {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: stream,
            buf: Vec::new(),
        };
        let info = raw.line()?;
        if !info.starts_with("INFO ") {
            bail!("no INFO: {info}");
        }
        let connect = json!({"verbose": false, "pedantic": false, "protocol": 1, "headers": true,
            "no_responders": true, "name": "bench-floor", "user": user, "pass": password});
        write!(
            raw.writer,
            "CONNECT {connect}\r\nSUB _FLOOR.> 1\r\nPING\r\n"
        )?;
        loop {
            let l = raw.line()?;
            if l == "PONG" {
                return Ok(raw);
            }
            if l.starts_with("-ERR") {
                bail!("{l}");
            }
        }
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            bail!("connection closed");
        }
        Ok(l.trim_end().to_string())
    }

    fn publish(
        &mut self,
        subject: &str,
        reply: &str,
        body: &[u8],
        accept: Option<&str>,
    ) -> anyhow::Result<()> {
        match accept {
            None => write!(self.writer, "PUB {subject} {reply} {}\r\n", body.len())?,
            Some(enc) => {
                let hdr = format!("NATS/1.0\r\nAccept-Encoding: {enc}\r\n\r\n");
                write!(
                    self.writer,
                    "HPUB {subject} {reply} {} {}\r\n{hdr}",
                    hdr.len(),
                    hdr.len() + body.len()
                )?;
            }
        }
        self.writer.write_all(body)?;
        self.writer.write_all(b"\r\n")?;
        Ok(())
    }

    /// The next reply; its payload is read into a reused buffer (`self.buf`).
    fn next(&mut self) -> anyhow::Result<RawMsg> {
        loop {
            let l = self.line()?;
            if l == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
                continue;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            let len: usize = match f.first().copied() {
                Some("MSG") | Some("HMSG") => f.last().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => continue,
            };
            let tag = f[1].rsplit('.').next().unwrap_or("").to_string();
            self.buf.resize(len + 2, 0);
            self.reader.read_exact(&mut self.buf)?;
            return Ok(RawMsg { tag, len });
        }
    }
}

/// Untimed probe of the floors: the servers' (id, total) (the floors parse nothing while timed).
fn floor_probe(raw: &mut Raw, n: usize) -> anyhow::Result<Vec<(String, usize)>> {
    raw.publish(
        "$SYS.REQ.SERVER.PING.CONNZ",
        "_FLOOR.probe",
        &connz_req(1, 0),
        None,
    )?;
    let mut servers: Vec<(String, usize)> = Vec::new();
    while servers.len() < n {
        raw.next()?;
        let v: Value = serde_json::from_slice(&raw.buf)?;
        servers.push((
            v["server"]["id"].as_str().unwrap_or("").to_string(),
            v["data"]["total"].as_u64().unwrap_or(0) as usize,
        ));
    }
    Ok(servers)
}

fn connz_req(limit: usize, offset: usize) -> Vec<u8> {
    format!(r#"{{"auth":true,"limit":{limit},"offset":{offset},"sort":"cid"}}"#).into_bytes()
}

/// How the floor reads a server with more connections than its first reply holds.
#[derive(Clone, Copy)]
enum Plan {
    /// connwatch's requests: one directed request from offset 0 for `total` + headroom.
    Snapshot,
    /// Pages of the same size, each starting this many connections before the last ended
    /// (connwatch's former pager with 16; `nats server report connections` with 0).
    Overlap(usize),
}

/// The floor: the same CONNZ requests as connwatch (a PING to all, sized as a long-lived
/// sweeper sizes it from its last sweep, then directed requests for the servers it did not
/// hold whole, all servers at once), every reply byte received and thrown away.
/// With `accept`, the replies are compressed by the servers (and not decompressed here).
fn floor_method(
    a: &MethodArgs,
    page: usize,
    plan: Plan,
    accept: Option<&str>,
) -> anyhow::Result<Measured> {
    let mut raw = Raw::connect(&a.servers[0], &a.user, &a.password)?;
    let servers = floor_probe(&mut raw, a.servers.len())?;
    // (limit, offset) of each request to one server.
    // connwatch's PING after its first sweep: the largest server's count + headroom, if more
    // than a page (`sweep::ping_limit`, written out so main's build of this bench compiles).
    let page = match plan {
        Plan::Snapshot => {
            let largest = servers.iter().map(|(_, t)| *t).max().unwrap_or(0);
            let sized = largest + connwatch::sweep::headroom(largest as u64) as usize;
            if largest == 0 {
                page
            } else {
                page.max(sized)
            }
        }
        Plan::Overlap(_) => page,
    };
    let pages_of = |total: usize| -> Vec<(usize, usize)> {
        let mut reqs = vec![(page, 0)];
        match plan {
            Plan::Snapshot if total > page => {
                let limit = connwatch::sweep::headroom(total as u64) as usize + total;
                reqs.push((limit, 0));
            }
            Plan::Snapshot => {}
            Plan::Overlap(overlap) => {
                let mut next = page;
                while next < total {
                    reqs.push((page, next - overlap));
                    next = next - overlap + page;
                }
            }
        }
        reqs
    };
    let m = Measured {
        kind: a.kind.clone(),
        ..Measured::default()
    };
    let sweep = |raw: &mut Raw, m: &mut Measured| -> anyhow::Result<()> {
        raw.publish(
            "$SYS.REQ.SERVER.PING.CONNZ",
            "_FLOOR.first",
            &connz_req(page, 0),
            accept,
        )?;
        let mut requests = 1;
        let mut bytes = 0;
        // Per server: the next page index to ask for, once its previous page came.
        let plans: Vec<Vec<(usize, usize)>> = servers.iter().map(|(_, t)| pages_of(*t)).collect();
        let mut firsts = 0;
        let mut outstanding = 0;
        while firsts < servers.len() {
            let msg = raw.next()?;
            bytes += msg.len;
            firsts += 1;
        }
        for (s, plan) in plans.iter().enumerate() {
            if plan.len() > 1 {
                let subject = format!("$SYS.REQ.SERVER.{}.CONNZ", servers[s].0);
                raw.publish(
                    &subject,
                    &format!("_FLOOR.{s}-1"),
                    &connz_req(plan[1].0, plan[1].1),
                    accept,
                )?;
                requests += 1;
                outstanding += 1;
            }
        }
        while outstanding > 0 {
            let msg = raw.next()?;
            bytes += msg.len;
            outstanding -= 1;
            let (s, k) = msg.tag.split_once('-').ok_or_else(|| anyhow!("bad tag"))?;
            let (s, k): (usize, usize) = (s.parse()?, k.parse()?);
            if let Some((limit, off)) = plans[s].get(k + 1) {
                let subject = format!("$SYS.REQ.SERVER.{}.CONNZ", servers[s].0);
                raw.publish(
                    &subject,
                    &format!("_FLOOR.{s}-{}", k + 1),
                    &connz_req(*limit, *off),
                    accept,
                )?;
                requests += 1;
                outstanding += 1;
            }
        }
        m.bytes += bytes as f64;
        m.requests += requests as f64;
        Ok(())
    };
    time_floor(a, &mut raw, m, sweep)
}

/// Runs a floor's `sweep` once to warm up, then `--runs` times timed, and fills in `m` with the
/// wall times, its own CPU, the servers' CPU, the bytes and requests per sweep and its RSS.
fn time_floor(
    a: &MethodArgs,
    raw: &mut Raw,
    mut m: Measured,
    mut sweep: impl FnMut(&mut Raw, &mut Measured) -> anyhow::Result<()>,
) -> anyhow::Result<Measured> {
    sweep(raw, &mut m)?; // warm-up
    m.bytes = 0.0;
    m.requests = 0.0;
    let (cpu0, srv0, t0) = (self_cpu(), servers_cpu_ms(&a.pids), Instant::now());
    for _ in 0..a.runs {
        let t = Instant::now();
        sweep(raw, &mut m)?;
        m.wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    per_run(a, &mut m, (cpu0, srv0, t0));
    Ok(m)
}

/// After `--runs` timed sweeps that began at `start` (own CPU, servers' CPU, instant): the
/// window, the CPU, bytes and requests per sweep, and the RSS.
fn per_run(a: &MethodArgs, m: &mut Measured, start: (Duration, f64, Instant)) {
    let (cpu0, srv0, t0) = start;
    let n = a.runs.max(1) as f64;
    m.window_ms = t0.elapsed().as_secs_f64() * 1000.0;
    m.server_cpu_ms_raw = (servers_cpu_ms(&a.pids) - srv0) / n;
    m.cpu_ms = (self_cpu() - cpu0).as_secs_f64() * 1000.0 / n;
    m.bytes /= n;
    m.requests /= n;
    m.peak_rss_kb = self_status_kb("VmHWM:");
    m.rss_end_kb = self_status_kb("VmRSS:");
}

// ---------------------------------------------------------------------------------------------
// Load workers.

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanEntry {
    server: String,
    user: String,
    name: String,
    count: usize,
    /// Open at this many connections a second (in tenths of a second) instead of at once.
    #[serde(default)]
    rate: Option<f64>,
    /// Connection `i` connects from this loopback address plus `i` (an IP per client).
    #[serde(default)]
    own_ips_from: Option<std::net::Ipv4Addr>,
}

fn load_worker(plan: &Path) -> anyhow::Result<()> {
    let plan: Vec<PlanEntry> = serde_json::from_slice(&std::fs::read(plan)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Entries with a rate all open side by side (a flood); the others 8 at a time.
        let concurrency = if plan.iter().any(|e| e.rate.is_some()) {
            plan.len().max(1)
        } else {
            8
        };
        let loads: Vec<anyhow::Result<Vec<load::Load>>> = futures::stream::iter(plan)
            .map(open_entry)
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let loads: Vec<load::Load> = loads
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let n: usize = loads.iter().map(|l| l.len()).sum();
        println!("ready {n}");
        std::io::stdout().flush()?;
        // Hold until the parent closes our stdin (or dies).
        let mut sink = Vec::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_to_end(&mut sink)).await;
        for l in loads {
            l.close().await;
        }
        Ok(())
    })
}

/// Opens one plan entry's connections: at once, or in chunks every 100 ms at its rate.
async fn open_entry(e: PlanEntry) -> anyhow::Result<Vec<load::Load>> {
    // `count` connections, the first of them the entry's `opened`-th.
    let spec = |count: usize, opened: usize| {
        let spec = LoadSpec::new(
            e.server.clone(),
            LoadAuth::user_password(e.user.clone(), LOAD_PASSWORD),
            count,
        )
        .name(e.name.clone());
        match e.own_ips_from {
            Some(first) => spec.own_ips_from((u32::from(first) + opened as u32).into()),
            None => spec,
        }
    };
    let Some(rate) = e.rate else {
        return Ok(vec![load::open(spec(e.count, 0)).await?]);
    };
    let chunk = ((rate / 10.0).ceil() as usize).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut loads = Vec::new();
    let mut opened = 0;
    while opened < e.count {
        tick.tick().await;
        let n = chunk.min(e.count - opened);
        loads.push(load::open(spec(n, opened)).await?);
        opened += n;
    }
    Ok(loads)
}

/// Connections per (server index, account, user) for `n` connections in all.
fn distribution(
    n: usize,
    accounts: usize,
    users: usize,
    hot_share: f64,
    servers: usize,
) -> BTreeMap<(usize, String, String), usize> {
    let mut out = BTreeMap::new();
    let hot = (n as f64 * hot_share) as usize;
    for i in 0..hot {
        *out.entry((i % servers, "A00".to_string(), HOT_USER.to_string()))
            .or_default() += 1;
    }
    for j in 0..n - hot {
        let a = j % accounts;
        let key = (
            j % servers,
            format!("A{a:02}"),
            format!("a{a:02}u{}", (j / accounts) % users),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The orchestrator.

/// A child's resources as wait4 reports them (its own plus its waited-for descendants').
struct ChildUsage {
    wall: Duration,
    cpu: Duration,
    maxrss_kb: u64,
    stdout: String,
}

fn run_measured(cmd: &mut Command) -> anyhow::Result<ChildUsage> {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4 failed");
    }
    let wall = t.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("child failed ({status}): {cmd:?}");
    }
    // The child is reaped: keep std from trying again.
    std::mem::forget(child);
    Ok(ChildUsage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kb: ru.ru_maxrss as u64,
        stdout,
    })
}

fn run(mut args: RunArgs) -> anyhow::Result<()> {
    if args.quick {
        args.sizes = vec![600, 1500];
        args.runs = args.runs.min(3);
        args.soak_sweeps = args.soak_sweeps.min(50);
        args.threshold = args.threshold.min(50);
    }
    let exe = std::env::current_exe()?;
    let connwatch_bin = args
        .connwatch_bin
        .clone()
        .unwrap_or_else(|| exe.with_file_name("connwatch"));
    let all = [
        "connwatch",
        "floor",
        "floor-gzip",
        "floor-snappy",
        "floor-overlap16",
        "paged1024",
        "report",
        "curl+jq",
    ];
    let methods: Vec<String> = args
        .methods
        .clone()
        .unwrap_or_else(|| all.iter().map(|s| s.to_string()).collect());
    let dir = bench_dir()?;
    let (cluster, pids) = start_spec(
        &dir,
        (args.clusters, args.servers_per_cluster),
        args.accounts,
        args.users,
        Vec::new(),
    )?;
    let n_servers = cluster.len();
    let urls = cluster.client_urls();
    let sys = cluster.system_user().clone();
    let config_path = dir.join("connwatch.toml");
    std::fs::write(&config_path, cluster.connwatch_toml())?;

    let mut workers: Vec<Worker> = Vec::new();
    let mut have: BTreeMap<(usize, String, String), usize> = BTreeMap::new();
    let mut results: Vec<Value> = Vec::new();
    let mut soak: Option<Measured> = None;

    for (step, &size) in args.sizes.iter().enumerate() {
        let want = distribution(size, args.accounts, args.users, args.hot_share, n_servers);
        workers.extend(grow_load(
            &cluster,
            &dir,
            (step, args.ip_per_client),
            &have,
            &want,
            size,
        )?);
        have = want;
        eprintln!("{size} connections open; measuring");

        // The servers' idle CPU rate (PINGs to 45k clients cost something), to subtract.
        // New connections make the servers publish connect events for a while: let that settle.
        std::thread::sleep(Duration::from_secs(5));
        let (c0, t0) = (servers_cpu_ms(&pids), Instant::now());
        std::thread::sleep(Duration::from_secs(3));
        let idle_rate = (servers_cpu_ms(&pids) - c0) / (t0.elapsed().as_secs_f64() * 1000.0);

        let method_args = |kind: &str, runs: usize| -> Vec<String> {
            let mut a: Vec<String> = vec![
                "method".into(),
                "--kind".into(),
                kind.into(),
                "--servers".into(),
                urls.join(","),
                "--user".into(),
                sys.name.clone(),
                "--password".into(),
                sys.password.clone(),
                "--pids".into(),
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                "--runs".into(),
                runs.to_string(),
                "--page-size".into(),
                args.page_size.to_string(),
                "--threshold".into(),
                args.threshold.to_string(),
                "--max-in-flight".into(),
                args.max_in_flight.to_string(),
            ];
            // Only when asked: a baseline's bench may not know it.
            if args.silent_servers > 0 {
                a.extend(["--silent-servers".into(), args.silent_servers.to_string()]);
            }
            a
        };

        if step == 0 && args.soak_sweeps > 0 {
            eprintln!("  soak: {} sweeps", args.soak_sweeps);
            let u = run_measured(Command::new(&exe).args(method_args("soak", args.soak_sweeps)))?;
            soak = Some(serde_json::from_str(u.stdout.trim())?);
        }

        // A method's process, under `--wrap` when given.
        let wrapped = |program: &Path| match &args.wrap {
            Some(w) => {
                let mut w = w.split_whitespace();
                let mut c = Command::new(w.next().unwrap_or("env"));
                c.args(w).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut rows: Vec<Measured> = Vec::new();
        let blocks = args.blocks.clamp(1, args.runs.max(1));
        for (block, method) in (0..blocks).flat_map(|b| methods.iter().map(move |m| (b, m))) {
            // This block's share of the sweeps (the first blocks take the odd ones).
            let runs = args.runs / blocks + usize::from(block < args.runs % blocks);
            if blocks > 1 {
                eprintln!(
                    "  {method} (block {} of {blocks}, {runs} sweeps)",
                    block + 1
                );
            } else {
                eprintln!("  {method}");
            }
            let m = match method.as_str() {
                "report" => external(
                    method,
                    runs,
                    &pids,
                    || {
                        let mut c = Command::new(&connwatch_bin);
                        c.arg("--config")
                            .arg(&config_path)
                            .args(["report", "--format", "json", "--top", "0"])
                            .env(
                                "CONNWATCH_SWEEP__MAX_IN_FLIGHT",
                                args.max_in_flight.to_string(),
                            )
                            .env("RUST_LOG", "warn");
                        c
                    },
                    None,
                )?,
                "curl+jq" => {
                    let script = curl_jq_script(&cluster);
                    let bytes = curl_bytes(&cluster)?;
                    external(
                        method,
                        runs,
                        &pids,
                        || {
                            let mut c = Command::new("sh");
                            c.args(["-c", &script]);
                            c
                        },
                        Some((bytes, n_servers as f64)),
                    )?
                }
                kind if kind.starts_with("main:") => {
                    let bench = args
                        .baseline_bench
                        .as_ref()
                        .context("main:<method> needs --baseline-bench")?;
                    let base = &kind["main:".len()..];
                    let u = run_measured(wrapped(bench).args(method_args(base, runs)))?;
                    let mut m: Measured = serde_json::from_str(u.stdout.trim())
                        .with_context(|| format!("method {kind}: {}", u.stdout))?;
                    m.kind = kind.to_string();
                    m
                }
                kind => {
                    let u = run_measured(wrapped(&exe).args(method_args(kind, runs)))?;
                    serde_json::from_str(u.stdout.trim())
                        .with_context(|| format!("method {kind}: {}", u.stdout))?
                }
            };
            match rows.iter_mut().find(|r| r.kind == m.kind) {
                Some(r) => r.join(m),
                None => rows.push(m),
            }
        }
        for m in &mut rows {
            m.server_cpu_ms = (m.server_cpu_ms_raw
                - idle_rate * m.window_ms / m.wall_ms.len().max(1) as f64)
                .max(0.0);
        }
        print_table(size, &rows);
        results.push(
            json!({"size": size, "server_idle_cpu_ms_per_s": idle_rate * 1000.0, "methods": rows}),
        );
    }

    if let Some(s) = &soak {
        println!(
            "\nmemory soak at {} connections: {} sweeps; RSS after 10 sweeps {:.1} MiB, after {} sweeps {:.1} MiB, peak {:.1} MiB",
            args.sizes[0],
            s.wall_ms.len(),
            s.rss_after_10_kb as f64 / 1024.0,
            s.wall_ms.len(),
            s.rss_end_kb as f64 / 1024.0,
            s.peak_rss_kb as f64 / 1024.0
        );
        let samples: Vec<String> = s
            .rss_samples_kb
            .iter()
            .map(|(n, kb)| format!("{n}: {:.1}", *kb as f64 / 1024.0))
            .collect();
        println!("RSS (MiB) by sweeps done: {}", samples.join(", "));
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let out = json!({"sizes": results, "soak": soak, "accounts": args.accounts, "users": args.users,
        "hot_share": args.hot_share, "threshold": args.threshold, "page_size": args.page_size, "runs": args.runs});
    std::fs::write(&args.out, serde_json::to_vec_pretty(&out)?)?;
    eprintln!("results written to {}", args.out.display());
    drop(workers);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh scratch directory for one bench run.
fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("connwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts the bench's 3-node cluster: `accounts` accounts `A00`… of `users` users each (plus the
/// hot user `A00/leaky`) and any `extra` accounts, every user with [`LOAD_PASSWORD`]. Returns it
/// with the servers' pids, checked to be nats-server itself (not a shim).
fn start_cluster(
    dir: &Path,
    accounts: usize,
    users: usize,
    extra: Vec<AccountSpec>,
) -> anyhow::Result<(Cluster, Vec<u32>)> {
    start_spec(dir, (1, 3), accounts, users, extra)
}

/// Like [`start_cluster`], for `clusters` × `servers` servers (a super-cluster over gateways
/// when `clusters` > 1).
fn start_spec(
    dir: &Path,
    (clusters, servers): (usize, usize),
    accounts: usize,
    users: usize,
    extra: Vec<AccountSpec>,
) -> anyhow::Result<(Cluster, Vec<u32>)> {
    let mut spec = ClusterSpec::new(dir).super_cluster(clusters, servers);
    spec.start_timeout = Duration::from_secs(60);
    for a in 0..accounts {
        let mut acc = AccountSpec::new(format!("A{a:02}"));
        for u in 0..users {
            // User names are unique across accounts in config mode.
            acc = acc.user(format!("a{a:02}u{u}"), LOAD_PASSWORD);
        }
        if a == 0 {
            acc = acc.user(HOT_USER, LOAD_PASSWORD);
        }
        spec = spec.account(acc);
    }
    for acc in extra {
        spec = spec.account(acc);
    }
    eprintln!(
        "starting {clusters} cluster(s) × {servers} servers in {}",
        dir.display()
    );
    let cluster = Cluster::start(spec)?;
    let pids: Vec<u32> = (0..cluster.len())
        .map(|i| {
            cluster
                .pid(i)
                .ok_or_else(|| anyhow!("server {i} not running"))
        })
        .collect::<anyhow::Result<_>>()?;
    // nats-server on PATH may be a pyenv shim (a shell script that execs the binary): the
    // child's pid must be the server itself by now.
    for pid in &pids {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        eprintln!("server pid {pid}: {} ({})", exe.display(), comm.trim());
        if comm.trim() != "nats-server" {
            bail!("pid {pid} is {comm:?}, not nats-server");
        }
    }
    Ok((cluster, pids))
}

/// Grows the load from `have` to `want` connections per (server, account, user): one worker
/// process per server holding the new ones, then waits until the servers count `size` in all.
/// With `ip_per_client`, every new connection but the hot user's has a loopback address of
/// its own (127.1.0.0 plus the connections opened before it).
fn grow_load(
    cluster: &Cluster,
    dir: &Path,
    (step, ip_per_client): (usize, bool),
    have: &BTreeMap<(usize, String, String), usize>,
    want: &BTreeMap<(usize, String, String), usize>,
    size: usize,
) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    let mut next_ip =
        u32::from(std::net::Ipv4Addr::new(127, 1, 0, 0)) + have.values().sum::<usize>() as u32;
    for (s, url) in cluster.client_urls().iter().enumerate() {
        let plan: Vec<PlanEntry> = want
            .iter()
            .filter(|((srv, _, _), _)| *srv == s)
            .filter_map(|(k, n)| {
                let delta = n - have.get(k).copied().unwrap_or(0);
                (delta > 0).then(|| PlanEntry {
                    server: url.clone(),
                    user: k.2.clone(),
                    name: format!(
                        "{}-{}",
                        k.1,
                        if k.2 == HOT_USER {
                            "leaky-worker"
                        } else {
                            "svc"
                        }
                    ),
                    count: delta,
                    rate: None,
                    own_ips_from: (ip_per_client && k.2 != HOT_USER).then(|| {
                        next_ip += delta as u32;
                        std::net::Ipv4Addr::from(next_ip - delta as u32)
                    }),
                })
            })
            .collect();
        if plan.is_empty() {
            continue;
        }
        workers.push(spawn_worker(
            &dir.join(format!("plan-{step}-{s}.json")),
            &plan,
        )?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let total = total_connections(cluster);
        if total as usize >= size {
            return Ok(workers);
        }
        if Instant::now() > deadline {
            bail!("only {total} of {size} connections open");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Client connections the servers hold (VARZ `connections`, summed).
fn total_connections(cluster: &Cluster) -> u64 {
    (0..cluster.len())
        .map(|i| {
            cluster
                .monitor_get(i, "/varz")
                .map(|v| v["connections"].as_u64().unwrap_or(0))
                .unwrap_or(0)
        })
        .sum()
}

/// Starts a load worker process on `plan` (written to `path`) and waits until it holds them.
fn spawn_worker(path: &Path, plan: &[PlanEntry]) -> anyhow::Result<Worker> {
    std::fs::write(path, serde_json::to_vec(plan)?)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["load-worker", "--plan"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut worker = Worker { child, stdin };
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = worker.child.kill();
        bail!("load worker failed: {line:?}");
    }
    Ok(worker)
}

/// An external program run `runs` times (after one warm-up): wall, CPU and peak RSS from wait4,
/// the servers' CPU from /proc around all runs.
fn external(
    kind: &str,
    runs: usize,
    pids: &[u32],
    mut cmd: impl FnMut() -> Command,
    bytes_requests: Option<(f64, f64)>,
) -> anyhow::Result<Measured> {
    let warm = run_measured(&mut cmd())?;
    let mut m = Measured {
        kind: kind.into(),
        ..Measured::default()
    };
    if let Ok(v) = serde_json::from_str::<Value>(warm.stdout.trim()) {
        // `connwatch report --format json` says what it fetched.
        m.bytes = v["sweep"]["bytes"].as_f64().unwrap_or(0.0);
        m.requests = v["sweep"]["requests"].as_f64().unwrap_or(0.0);
        m.connections = v["sweep"]["connections"].as_f64().unwrap_or(0.0);
        m.peak_in_flight = v["sweep"]["peak_bytes_in_flight"].as_f64().unwrap_or(0.0);
    }
    if let Some((b, r)) = bytes_requests {
        m.bytes = b;
        m.requests = r;
    }
    let (srv0, t0) = (servers_cpu_ms(pids), Instant::now());
    let mut cpu = Duration::ZERO;
    for _ in 0..runs {
        let u = run_measured(&mut cmd())?;
        m.wall_ms.push(u.wall.as_secs_f64() * 1000.0);
        cpu += u.cpu;
        m.peak_rss_kb = m.peak_rss_kb.max(u.maxrss_kb);
    }
    let n = runs.max(1) as f64;
    m.window_ms = t0.elapsed().as_secs_f64() * 1000.0;
    m.server_cpu_ms_raw = (servers_cpu_ms(pids) - srv0) / n;
    m.cpu_ms = cpu.as_secs_f64() * 1000.0 / n;
    Ok(m)
}

/// The common HTTP recipe: every server's /connz in one big page, grouped by user with jq.
fn curl_jq_script(cluster: &Cluster) -> String {
    let urls: Vec<String> = (0..cluster.len())
        .map(|i| format!("'{}/connz?auth=true&limit=1000000'", cluster.monitor_url(i)))
        .collect();
    format!(
        "for u in {}; do curl -sf \"$u\" || exit 1; done | jq -s '[.[].connections[]] | \
         group_by([.account, .authorized_user]) | map({{account: .[0].account, user: \
         .[0].authorized_user, conns: length}}) | sort_by(-.conns)' > /dev/null",
        urls.join(" ")
    )
}

/// Bytes the curl recipe downloads (measured once, untimed).
fn curl_bytes(cluster: &Cluster) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for i in 0..cluster.len() {
        let out = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-w", "%{size_download}"])
            .arg(format!(
                "{}/connz?auth=true&limit=1000000",
                cluster.monitor_url(i)
            ))
            .output()?;
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0);
    }
    Ok(total)
}

fn print_table(size: usize, rows: &[Measured]) {
    let floor = rows.iter().find(|m| m.kind == "floor");
    let fw = floor.map(|f| median(&f.wall_ms)).unwrap_or(0.0);
    let fs = floor.map(|f| f.server_cpu_ms).unwrap_or(0.0);
    let ratio = |x: f64, base: f64| {
        if base > 0.0 {
            format!("{:.2}×", x / base)
        } else {
            "-".into()
        }
    };
    println!("\n### {size} connections\n");
    println!("| method | sweep wall (median) | × floor | client CPU/sweep | µs/conn | peak RSS | of sweeps 2+ | bytes/sweep | peak in flight | requests | server CPU/sweep (raw) | × floor |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for m in rows {
        let w = median(&m.wall_ms);
        let per_conn = if m.connections > 0.0 {
            format!("{:.2}", m.cpu_ms * 1000.0 / m.connections)
        } else {
            "-".into()
        };
        println!(
            "| {} | {:.1} ms | {} | {:.1} ms | {} | {:.1} MiB | {} | {:.2} MB | {} | {:.0} | {:.1} ms ({:.0}) | {} |",
            m.kind,
            w,
            ratio(w, fw),
            m.cpu_ms,
            per_conn,
            m.peak_rss_kb as f64 / 1024.0,
            if m.later_peak_rss_kb > 0 {
                format!("{:.1} MiB", m.later_peak_rss_kb as f64 / 1024.0)
            } else {
                "-".into()
            },
            m.bytes / 1e6,
            if m.peak_in_flight > 0.0 {
                format!("{:.2} MB", m.peak_in_flight / 1e6)
            } else {
                "-".into()
            },
            m.requests,
            m.server_cpu_ms,
            m.server_cpu_ms_raw,
            ratio(m.server_cpu_ms, fs)
        );
    }
    for m in rows.iter().filter(|m| m.round_ms > 0.0) {
        println!(
            "\n{}: a live round's census, one connection opened: {:.2} ms (the first after a sweep: {:.2} ms); counting every connection: {:.2} ms",
            m.kind, m.round_ms, m.first_round_ms, m.round_all_ms
        );
    }
    let _ = std::io::stdout().flush();
}
