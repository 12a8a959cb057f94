//! `live-latency`: from the connection that takes a user over its threshold to the `firing`
//! advisory, live census against sweeps alone.
use super::measure::{percentile, splitmix};
use super::*;

/// `live-latency`: detection latency, live census against sweeps alone.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Trials with the live census on.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Trials of the baseline (live off, sweeps every `--sweep-interval`; each takes up to two
    /// intervals).
    #[arg(long, default_value_t = 3)]
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
