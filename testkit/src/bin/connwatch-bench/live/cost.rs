//! `live-cost`: the servers' CPU and bytes connwatch adds, live + reconciliation against
//! full sweeps, by churn rate.
use super::*;

/// `live-cost`: what connwatch adds to the servers, live + reconciliation vs 30-s sweeps.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Connections held (spread like `run`'s load: 50 accounts × 10 users, 10% hot).
    #[arg(long, default_value_t = 45_000)]
    size: usize,
    /// Churn rates: connects (and as many disconnects) a second; 0 is no churn.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,100")]
    rates: Vec<f64>,
    /// Measuring window of the no-connwatch and live phases (each repeated `--repeats` times,
    /// interleaved, so a drift of the machine's load hits both alike).
    #[arg(long, default_value = "20s")]
    window: humantime::Duration,
    /// Interleaved no-connwatch / live windows per rate.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// `sweep.interval` of the sweeps phase (its window is two whole intervals); the cost of
    /// one sweep does not depend on it.
    #[arg(long, default_value = "15s")]
    sweep_interval: humantime::Duration,
    /// The sweep interval the live census is compared with: sweeps an hour = 1h / this.
    #[arg(long, default_value = "30s")]
    compare_interval: humantime::Duration,
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
        let stop = Arc::new(AtomicBool::new(false));
        if rate <= 0.0 {
            return Ok(Churn {
                stop,
                task: tokio::spawn(async { 0 }),
            });
        }
        let urls = cluster.client_urls();
        let pool: Arc<Mutex<VecDeque<load::Load>>> = Arc::default();
        let size = ((rate * 2.0) as usize).max(12);
        for k in 0..size {
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
            "[sweep]\ninterval = \"{}\"\n[live]\nenabled = true\nreconcile_interval = \"{}\"\nmax_event_rate = 0\n",
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
            let (mut none, mut live) = (measure::Rates::default(), measure::Rates::default());
            let (mut events, mut live_sweeps, mut live_slow, mut live_rss) = (0.0, 0.0, 0.0, 0);
            for r in 0..args.repeats.max(1) {
                // No connwatch.
                let a = counters(&cluster, &pids);
                tokio::time::sleep(window).await;
                none = none.merge(rates(a, counters(&cluster, &pids)));
                // Live census, between reconciling sweeps (its first sweep is not measured).
                let tag = format!("cost-live-{rate}-{r}");
                let cw = Connwatch::start(&cluster, &dir, &tag, &live_cfg)?;
                cw.wait_complete().await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (e0, s0) = (cw.metric("connwatch_live_events_total").unwrap_or(0.0), cw.sweeps());
                let a = counters(&cluster, &pids);
                tokio::time::sleep(window).await;
                live = live.merge(rates(a, counters(&cluster, &pids)));
                events += cw.metric("connwatch_live_events_total").unwrap_or(0.0) - e0;
                live_sweeps += cw.sweeps() - s0;
                live_slow += cw.metric_sum("connwatch_nats_slow_consumers_total");
                live_rss = live_rss.max(cw.memory_kb().0);
                cw.stop();
            }
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
                sweeps_per_hour: 3600.0 / args.compare_interval.as_secs_f64(),
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
                "sweep_interval": args.sweep_interval.to_string(), "repeats": args.repeats,
                "compare_interval": args.compare_interval.to_string(),
                "reconcile_interval": args.reconcile_interval.to_string(),
                "points": points, "summary": summary, "loadavg_end": loadavg()}),
        )?;
        drop(workers);
        drop(cluster);
        cleanup(&dir);
        Ok(())
    })
}
