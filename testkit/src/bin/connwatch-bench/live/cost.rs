//! `live-cost`: the servers' CPU and bytes connwatch adds, live + reconciliation against full
//! sweeps, measured so that a shared 2-core machine's noise does not swamp it: short windows,
//! each paired with a baseline taken right next to it (in alternating order), many of them,
//! and medians with their quartiles.
//!
//! 1. **Per connect+close pair** (what following the events costs): batches of `--pairs`
//!    connect+close pairs at `--pair-rate`, each batch measured once with a subscriber to
//!    exactly connwatch's subjects (`$SYS.ACCOUNT.>`, `$SYS.SERVER.*.STATSZ`,
//!    `$SYS.SERVER.*.CLIENT.AUTH.ERR`, on server 0, as connwatch) and once without, in ABBA
//!    order, `--repeats` times. The servers cannot tell that subscriber from connwatch's: the
//!    paired difference is the delivery cost per pair. Idle windows with and without the
//!    subscriber give its fixed cost (heartbeats, account-count announcements).
//! 2. **Per full sweep**: connwatch with the live census off, sweeping on request
//!    (`connwatch.sweep`) `--sweeps` times, each sweep's window paired with an idle window
//!    just before it (the servers' CPU rate then, times the sweep window's length, is
//!    subtracted).
//! 3. **connwatch itself, live**, at each rate of `--rates` for `--live-window`: what it asked
//!    the servers (STATSZ requests, sweeps) besides following the events, to show the model
//!    of 1 + 2 leaves nothing out.
//!
//! Per hour: sweeps every `--compare-interval` = (3600 / it) × sweep; live = (3600 /
//! `--reconcile-interval`) × sweep + fixed + rate × 3600 × pair.
use super::measure::{CostModel, Spread};
use super::*;

/// `live-cost`: what connwatch adds to the servers, live + reconciliation vs 30-s sweeps.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Connections held (spread like `run`'s load: 50 accounts × 10 users, 10% hot).
    #[arg(long, default_value_t = 45_000)]
    size: usize,
    /// Connect+close pairs in one measured batch.
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Pairs a second while a batch runs.
    #[arg(long, default_value_t = 200.0)]
    pair_rate: f64,
    /// Batches with and without the subscriber (each an ABBA half); idle windows as many.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Length of each idle window (the subscriber's fixed cost).
    #[arg(long, default_value = "5s")]
    idle_window: humantime::Duration,
    /// Full sweeps measured, each after an idle window of its own.
    #[arg(long, default_value_t = 8)]
    sweeps: usize,
    /// Churn rates (connects, and as many disconnects, a second) of the per-hour table and of
    /// connwatch's own live windows.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,100")]
    rates: Vec<f64>,
    /// Window of connwatch live at each rate (what it asks besides the events).
    #[arg(long, default_value = "15s")]
    live_window: humantime::Duration,
    /// The sweep interval the live census is compared with: sweeps an hour = 1h / this.
    #[arg(long, default_value = "30s")]
    compare_interval: humantime::Duration,
    /// `live.reconcile_interval` (reconciling sweeps an hour = 1h / this).
    #[arg(long, default_value = "15m")]
    reconcile_interval: humantime::Duration,
    /// The subscriber shapes compared per pair (each against no subscriber, in the same
    /// repeats); the first is connwatch's and goes into the per-hour table.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "events-old,all"
    )]
    shapes: Vec<Shape>,
    /// Which parts run: `pairs` (1), `sweeps` (2), `live` (3); the per-hour table needs all.
    #[arg(long, value_delimiter = ',', default_value = "pairs,sweeps,live")]
    parts: Vec<String>,
    /// Where the results go (JSON).
    #[arg(long, default_value = "target/bench/live-cost.json")]
    out: PathBuf,
}

/// Servers' CPU (ms, from `/proc/<pid>/stat` of the three nats-server processes) and VARZ
/// `out_bytes` at one instant.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    cpu_ms: f64,
    out_bytes: f64,
}

impl Counters {
    fn now(cluster: &Cluster, pids: &[u32]) -> Counters {
        let out_bytes = (0..cluster.len())
            .filter_map(|i| cluster.monitor_get(i, "/varz").ok())
            .map(|v| v["out_bytes"].as_f64().unwrap_or(0.0))
            .sum();
        Counters {
            at: Instant::now(),
            cpu_ms: servers_cpu_ms(pids),
            out_bytes,
        }
    }

    /// (seconds, CPU ms, out bytes) from `self` to `later`.
    fn to(self, later: Counters) -> (f64, f64, f64) {
        (
            later.at.duration_since(self.at).as_secs_f64(),
            later.cpu_ms - self.cpu_ms,
            later.out_bytes - self.out_bytes,
        )
    }
}

/// The shape of the subscriber of the per-pair part: which subjects, and on which servers.
/// Each also subscribes to the servers' heartbeats and authentication errors on server 0, as
/// connwatch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// `$SYS.ACCOUNT.>` on server 0 (connwatch before branch live-cheap): the events and every
    /// account's count on the new subject `$SYS.ACCOUNT.<acc>.SERVER.CONNS`.
    All,
    /// `$SYS.ACCOUNT.*.*` on server 0: only the connect and disconnect events (of accounts
    /// without dots in their names).
    Events,
    /// [`Shape::Events`] + `$SYS.SERVER.ACCOUNT.>`, the old subject of the counts that the
    /// servers already route to each other (connwatch since branch live-cheap).
    EventsOld,
    /// [`Shape::Events`] as queue subscriptions (one queue name), one connection per server.
    Queue,
}

impl Shape {
    /// (server index, subject, queue group) of each subscription.
    fn subscriptions(self, servers: usize) -> Vec<(usize, &'static str, Option<&'static str>)> {
        let mut subs = vec![(0, HEARTBEATS, None), (0, AUTH_ERRORS, None)];
        match self {
            Shape::All => subs.push((0, "$SYS.ACCOUNT.>", None)),
            Shape::Events => subs.push((0, EVENTS, None)),
            Shape::EventsOld => {
                subs.push((0, EVENTS, None));
                subs.push((0, "$SYS.SERVER.ACCOUNT.>", None));
            }
            Shape::Queue => {
                subs.extend((0..servers).map(|i| (i, EVENTS, Some("connwatch-bench"))));
            }
        }
        subs
    }
}

/// connwatch's subjects besides the events (`src/live/mod.rs`, `src/live/refused.rs`).
const HEARTBEATS: &str = "$SYS.SERVER.*.STATSZ";
const AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";
/// The connect and disconnect events of accounts without dots (`src/live/mod.rs`).
const EVENTS: &str = "$SYS.ACCOUNT.*.*";

/// A subscriber of one [`Shape`], draining what it gets.
struct Listener {
    subs: Vec<async_nats::Subscriber>,
    clients: Vec<async_nats::Client>,
    got: Arc<AtomicU64>,
}

impl Listener {
    /// `clients`: one system-account client per server.
    async fn start(
        clients: &[async_nats::Client],
        shape: Shape,
        got: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let mut subs = Vec::new();
        for (i, subject, queue) in shape.subscriptions(clients.len()) {
            let c = &clients[i];
            subs.push(match queue {
                Some(q) => c.queue_subscribe(subject, q.to_string()).await?,
                None => c.subscribe(subject).await?,
            });
        }
        for c in clients {
            c.flush().await?;
        }
        Ok(Self {
            subs,
            clients: clients.to_vec(),
            got,
        })
    }

    /// Drains until stopped; then unsubscribes (flushed).
    async fn run_until(mut self, stop: Arc<tokio::sync::Notify>) -> anyhow::Result<()> {
        let mut all = futures::stream::select_all(self.subs.iter_mut());
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                Some(_) = all.next() => { self.got.fetch_add(1, Ordering::Relaxed); }
            }
        }
        drop(all);
        for s in &mut self.subs {
            s.unsubscribe().await?;
        }
        for c in &self.clients {
            c.flush().await?;
        }
        Ok(())
    }
}

/// `n` connect+close pairs at `rate` a second, over the servers and the four users of
/// account `CHURN`; returns when every close is done.
async fn pairs(urls: &[String], n: usize, rate: f64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        tick.tick().await;
        let url = urls[k % urls.len()].clone();
        let user = format!("c{}", k % 4);
        tasks.push(tokio::spawn(async move {
            if let Ok(l) = load::open(LoadSpec::new(url, load_auth(&user), 1)).await {
                l.close().await;
            }
        }));
    }
    futures::future::join_all(tasks).await;
}

/// Waits for delivery to finish after a measured stretch.
const SETTLE: Duration = Duration::from_millis(300);

/// One measured stretch: `work` with a subscriber of `shape` or without (`None`); returns
/// (seconds, CPU ms, out bytes, messages the subscriber got).
async fn measured(
    cluster: &Cluster,
    pids: &[u32],
    clients: &[async_nats::Client],
    shape: Option<Shape>,
    work: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let got = Arc::new(AtomicU64::new(0));
    let drain = match shape {
        Some(shape) => {
            let l = Listener::start(clients, shape, got.clone()).await?;
            Some(tokio::spawn(l.run_until(stop.clone())))
        }
        None => None,
    };
    let a = Counters::now(cluster, pids);
    work.await;
    tokio::time::sleep(SETTLE).await;
    let (s, cpu, out) = a.to(Counters::now(cluster, pids));
    if let Some(d) = drain {
        stop.notify_one();
        d.await??;
    }
    Ok((s, cpu, out, got.load(Ordering::Relaxed)))
}

/// Per pair, for one shape: servers' CPU (ms) and output (bytes) it added, and messages it got.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct PerPair {
    cpu_ms: Vec<f64>,
    bytes: Vec<f64>,
    msgs: Vec<f64>,
}

/// What part 1 measured: per pair for each shape (in `--shapes` order), the pair alone, and the
/// first shape's fixed cost.
struct EventsPart {
    shapes: Vec<(Shape, PerPair)>,
    base_pair_cpu: Spread,
    idle_cpu: Spread,
    idle_bytes: Spread,
}

/// Part 1: per pair, without a subscriber and with one of each shape, in an order reversed
/// every other repeat (ABBA: `none, s1, s2 | s2, s1, none | …`); idle windows without and with
/// the first shape.
async fn events_part(
    args: &CostArgs,
    cluster: &Cluster,
    pids: &[u32],
) -> anyhow::Result<EventsPart> {
    let mut clients = Vec::new();
    for i in 0..cluster.len() {
        clients.push(system_client(cluster, i).await?);
    }
    let urls = cluster.client_urls();
    let mut per: Vec<(Shape, PerPair)> = args
        .shapes
        .iter()
        .map(|&s| (s, PerPair::default()))
        .collect();
    let (mut base_pair_cpu, mut idle_cpu, mut idle_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let n = args.pairs as f64;
    for r in 0..args.repeats {
        let mut order: Vec<Option<Shape>> = std::iter::once(None)
            .chain(args.shapes.iter().copied().map(Some))
            .collect();
        if r % 2 == 1 {
            order.reverse();
        }
        let mut batch = BTreeMap::new();
        let mut idle = BTreeMap::new();
        for shape in order {
            let key = shape.map(|s| s as usize + 1).unwrap_or(0);
            let m = |work| measured(cluster, pids, &clients, shape, work);
            let pairs = pairs(&urls, args.pairs, args.pair_rate);
            batch.insert(key, m(Box::pin(pairs)).await?);
            if shape.is_none() || shape == args.shapes.first().copied() {
                let sleep = tokio::time::sleep(*args.idle_window);
                idle.insert(key, m(Box::pin(sleep)).await?);
            }
        }
        let none = batch[&0];
        base_pair_cpu.push(none.1 / n);
        let mut line = format!("  repeat {r}: pair alone {:.3} ms;", none.1 / n);
        for (shape, p) in &mut per {
            let b = batch[&(*shape as usize + 1)];
            // The difference of the two batches (their lengths differ by milliseconds).
            p.cpu_ms.push((b.1 - none.1) / n);
            p.bytes.push((b.2 - none.2) / n);
            p.msgs.push(b.3 as f64 / n);
            line += &format!(
                " {shape:?} +{:.3} ms +{:.0} B {:.2} msgs;",
                (b.1 - none.1) / n,
                (b.2 - none.2) / n,
                b.3 as f64 / n
            );
        }
        if let (Some(i0), Some(first)) = (idle.get(&0), args.shapes.first()) {
            let i1 = idle[&(*first as usize + 1)];
            idle_cpu.push(i1.1 / i1.0 - i0.1 / i0.0);
            idle_bytes.push(i1.2 / i1.0 - i0.2 / i0.0);
        }
        eprintln!("{line} load {}", loadavg());
    }
    Ok(EventsPart {
        shapes: per,
        base_pair_cpu: Spread::of(&base_pair_cpu),
        idle_cpu: Spread::of(&idle_cpu),
        idle_bytes: Spread::of(&idle_bytes),
    })
}

/// The shapes side by side (markdown): per pair, servers' CPU and output, and messages got.
fn shapes_table(part: &EventsPart) -> String {
    let sp = |v: &[f64], d: usize| {
        let s = Spread::of(v);
        format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.q1, s.q3)
    };
    let mut out = format!(
        "\nper connect+close pair, median [quartiles] of {} paired batches; no subscriber: {} ms CPU a pair\n\n\
         | subscriber | servers' CPU added (ms/pair) | servers' output added (bytes/pair) | messages got a pair |\n\
         | --- | ---: | ---: | ---: |\n",
        part.base_pair_cpu.n,
        sp(&[part.base_pair_cpu.q1, part.base_pair_cpu.median, part.base_pair_cpu.q3], 3)
    );
    for (shape, p) in &part.shapes {
        out += &format!(
            "| {shape:?} | {} | {} | {} |\n",
            sp(&p.cpu_ms, 3),
            sp(&p.bytes, 0),
            sp(&p.msgs, 2)
        );
    }
    out
}

/// Part 2: full sweeps requested from connwatch (live off), each after an idle window.
async fn sweeps_part(
    args: &CostArgs,
    cluster: &Cluster,
    pids: &[u32],
    dir: &Path,
) -> anyhow::Result<(Spread, Spread)> {
    let cfg = "[sweep]\ninterval = \"1h\"\ntimeout = \"10s\"\n[live]\nenabled = false\n";
    let cw = Connwatch::start(cluster, dir, "cost-sweeps", cfg)?;
    cw.wait("first sweep", Duration::from_secs(180), |c| {
        c.sweeps() >= 1.0
    })
    .await?;
    let client = system_client(cluster, 1).await?;
    let (mut cpu, mut bytes) = (Vec::new(), Vec::new());
    for k in 0..args.sweeps {
        let a = Counters::now(cluster, pids);
        tokio::time::sleep(*args.idle_window).await;
        let b = Counters::now(cluster, pids);
        let (idle_s, idle_cpu, idle_bytes) = a.to(b);
        // A sweep of 45k connections on a busy machine can take longer than a request's
        // default 10 s.
        let req = async_nats::Request::new().timeout(Some(Duration::from_secs(120)));
        client
            .send_request("connwatch.sweep", req)
            .await
            .context("sweep request")?;
        tokio::time::sleep(SETTLE).await;
        let (s, c, o) = b.to(Counters::now(cluster, pids));
        cpu.push(c - idle_cpu / idle_s * s);
        bytes.push(o - idle_bytes / idle_s * s);
        eprintln!(
            "  sweep {k}: {:.0} ms CPU, {:.1} MB out over {s:.2} s; load {}",
            cpu[k],
            bytes[k] / 1e6,
            loadavg()
        );
    }
    cw.stop();
    Ok((Spread::of(&cpu), Spread::of(&bytes)))
}

/// A churn generator: connects and disconnects at `rate` a second each, over the servers and
/// four users of account `CHURN`, from a pool of open connections (the oldest closes).
struct Churn {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Churn {
    async fn start(cluster: &Cluster, rate: f64) -> anyhow::Result<Churn> {
        let stop = Arc::new(AtomicBool::new(false));
        if rate <= 0.0 {
            return Ok(Churn {
                stop,
                task: tokio::spawn(async { 0 }),
            });
        }
        let urls = cluster.client_urls();
        let pool: Arc<Mutex<VecDeque<load::Load>>> = Arc::default();
        for k in 0..((rate * 2.0) as usize).max(12) {
            let spec = LoadSpec::new(
                urls[k % urls.len()].clone(),
                load_auth(&format!("c{}", k % 4)),
                1,
            );
            let l = load::open(spec).await?;
            pool.lock().expect("pool").push_back(l);
        }
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

/// Part 3: connwatch live at each rate: what it asks the servers besides the events.
async fn live_part(args: &CostArgs, cluster: &Cluster, dir: &Path) -> anyhow::Result<Vec<Value>> {
    let cfg = format!(
        "[live]\nenabled = true\nreconcile_interval = \"{}\"\nmax_event_rate = 0\n",
        args.reconcile_interval
    );
    let cw = Connwatch::start(cluster, dir, "cost-live", &cfg)?;
    cw.wait_complete().await?;
    let mut out = Vec::new();
    for &rate in &args.rates {
        let churn = Churn::start(cluster, rate).await?;
        let read = |cw: &Connwatch| {
            let m = cw.metrics();
            [
                measure::metric(&m, "connwatch_live_events_total").unwrap_or(0.0),
                measure::metric_sum(&m, "connwatch_live_statsz_requests_total"),
                measure::metric(&m, "connwatch_sweeps_total").unwrap_or(0.0),
                measure::metric_sum(&m, "connwatch_live_gaps_total"),
                measure::metric_sum(&m, "connwatch_findings_firing"),
            ]
        };
        let a = read(&cw);
        tokio::time::sleep(*args.live_window).await;
        let b = read(&cw);
        let ticks = churn.stop().await;
        let d = |i: usize| b[i] - a[i];
        eprintln!(
            "  live at {rate}/s: {} events, {} STATSZ requests, {} sweeps, {} gaps in {}; {} findings firing",
            d(0),
            d(1),
            d(2),
            d(3),
            args.live_window,
            b[4]
        );
        out.push(
            json!({"rate": rate, "ticks": ticks, "events": d(0), "statsz_requests": d(1),
            "sweeps": d(2), "gaps": d(3), "firing": b[4],
            "seconds": args.live_window.as_secs_f64()}),
        );
    }
    cw.stop();
    Ok(out)
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
        let workers = grow_load(&cluster, &dir, (0, false), &BTreeMap::new(), &want, args.size)?;
        eprintln!("{} connections open; settling", args.size);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let load_before = loadavg();
        eprintln!("load average before: {load_before}");
        let part = |name: &str| args.parts.iter().any(|p| p == name);
        let mut results = json!({"size": args.size, "pairs": args.pairs, "pair_rate": args.pair_rate,
            "repeats": args.repeats, "sweeps": args.sweeps, "shapes": args.shapes,
            "compare_interval": args.compare_interval.to_string(),
            "reconcile_interval": args.reconcile_interval.to_string(),
            "loadavg_before": load_before});
        let events = if part("pairs") {
            eprintln!(
                "per pair: {} repeats of batches of {} pairs at {}/s, without a subscriber and with each of {:?}",
                args.repeats, args.pairs, args.pair_rate, args.shapes
            );
            let e = events_part(&args, &cluster, &pids).await?;
            print!("{}", shapes_table(&e));
            results["per_pair"] = json!(e.shapes.iter().map(|(s, p)| json!({"shape": s, "samples": p,
                "cpu_ms": Spread::of(&p.cpu_ms), "bytes": Spread::of(&p.bytes), "msgs": Spread::of(&p.msgs)})).collect::<Vec<_>>());
            results["pair_alone_cpu_ms"] = json!(e.base_pair_cpu);
            Some(e)
        } else {
            None
        };
        let sweeps = if part("sweeps") {
            eprintln!("full sweeps: {}", args.sweeps);
            Some(sweeps_part(&args, &cluster, &pids, &dir).await?)
        } else {
            None
        };
        if part("live") {
            eprintln!("connwatch live at each rate");
            results["live"] = json!(live_part(&args, &cluster, &dir).await?);
        }
        let load_after = loadavg();
        eprintln!("load average after: {load_after}");
        results["loadavg_after"] = json!(load_after);
        if let (Some(e), Some((sweep_cpu, sweep_bytes))) = (&events, sweeps) {
            let first = &e.shapes[0].1;
            let model = CostModel {
                pair_cpu_ms: Spread::of(&first.cpu_ms),
                pair_bytes: Spread::of(&first.bytes),
                idle_cpu_ms_per_s: e.idle_cpu,
                idle_bytes_per_s: e.idle_bytes,
                sweep_cpu_ms: sweep_cpu,
                sweep_bytes,
                reconciles_per_hour: 3600.0 / args.reconcile_interval.as_secs_f64(),
                sweeps_per_hour: 3600.0 / args.compare_interval.as_secs_f64(),
            };
            print!("{}", model.table(args.size, &args.rates, e.base_pair_cpu));
            let rows: Vec<Value> = args
                .rates
                .iter()
                .map(|&r| serde_json::to_value(model.per_hour(r)).unwrap_or_default())
                .collect();
            results["model"] = json!(model);
            results["per_hour"] = json!(rows);
        }
        write_json(&args.out, &results)?;
        drop(workers);
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}
