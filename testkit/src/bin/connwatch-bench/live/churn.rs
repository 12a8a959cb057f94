//! `live-churn`: random opens and closes, then the time until the census equals every
//! server's `/connz`.
use super::measure::splitmix;
use super::*;

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
            "[live]\nenabled = true\nreconcile_interval = \"5m\"\nmax_event_rate = 0\n",
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
