//! `live-flood`: a connect flood and the disconnect flood after it.
use super::*;

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
        let cw = Connwatch::start(&cluster, &dir, "flood", "[live]\nenabled = true\nmax_event_rate = 0\n")?;
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
                        own_ips_from: None,
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
        "gaps_by_reason": measure::series(&cw.metrics(), "connwatch_live_gaps_total"),
        "events": cw.metric("connwatch_live_events_total").unwrap_or(0.0),
        "sweeps": cw.sweeps(),
        "complete": cw.metric("connwatch_live_complete").unwrap_or(0.0),
        "peak_rss_kib": hwm,
        "rss_kib": rss,
    })
}

fn print_flood(rows: &Value) {
    println!("\n### Event flood\n");
    println!("| phase | connections/s reached | census = /connz after | slow consumers (total) | gaps (total, by reason) | events applied (total) | sweeps (total) | connwatch RSS / peak |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows.as_array().into_iter().flatten() {
        let s = &r["state"];
        println!(
            "| {} | {} | {} | {} | {} {} | {} | {} | {:.1} / {:.1} MiB |",
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
            s["gaps_by_reason"],
            num(&s["events"]),
            num(&s["sweeps"]),
            s["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            s["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        );
    }
}
