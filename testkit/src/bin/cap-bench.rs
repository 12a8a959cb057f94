//! cap-bench: how long a connection over its user's cap lives, side by side with the floor.
//!
//! Starts a local 3-node cluster and `connwatch run` with `[enforce]` on (cap `--cap` on user
//! `APP/capped`, `dry_run = false`), holds the cap's worth of steady connections, then, trial by
//! trial, opens one more connection (on n1, n2, n3 in turn) and measures from the start of its
//! connect:
//! - `connected`: the handshake done (the client got its PONG);
//! - `event seen`: its CONNECT event reached a system-account subscriber: the floor of any
//!   enforcer that acts on events;
//! - `closed`: the client saw the server close it (connwatch's KICK).
//!
//! `scripts/bench-caps.sh` builds connwatch in release and runs it; see BENCHMARKS.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use testkit::cluster::{http_get, AccountSpec, Cluster, ClusterSpec};
use testkit::load::{self, LoadAuth, LoadSpec};

#[derive(Debug, Parser)]
#[command(name = "cap-bench")]
struct Cli {
    /// Trials (connections over the cap), at least 50 for a p99.
    #[arg(long, default_value_t = 60)]
    trials: usize,
    /// The cap, and the steady connections held at it.
    #[arg(long, default_value_t = 5)]
    cap: u64,
    /// The connwatch binary.
    #[arg(long, default_value = "target/release/connwatch")]
    connwatch: PathBuf,
    /// Pause between trials.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    gap: Duration,
}

fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn metric(listen: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (_, text) = http_get(listen, "/metrics").ok()?;
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// (p50, p99, max) in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99), at(1.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.connwatch.exists() {
        bail!(
            "{} not found: build it (scripts/bench-caps.sh does)",
            cli.connwatch.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("cap-bench-{}", std::process::id()));
    let spec =
        ClusterSpec::new(dir.join("cluster")).account(AccountSpec::new("APP").user("capped", "pw"));
    let sys = spec.system_user.clone();
    let cluster = Cluster::start(spec)?;
    let listen = free_port()?;
    let config = dir.join("connwatch.toml");
    std::fs::write(
        &config,
        format!(
            "{}[metrics]\nlisten = \"{listen}\"\n[enforce]\nenabled = true\ndry_run = false\n\
             [[enforce.caps]]\naccount = \"APP\"\nuser = \"capped\"\nmax_connections = {}\n",
            cluster.connwatch_toml(),
            cli.cap
        ),
    )?;
    let mut connwatch = Command::new(&cli.connwatch)
        .args(["--config", config.to_str().unwrap(), "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("connwatch.log"))?)
        .spawn()
        .context("start connwatch")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(listen, "connwatch_live_complete") != Some(1.0) {
        if Instant::now() > deadline {
            bail!("connwatch's live census never became complete");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = || LoadAuth::user_password("capped", "pw");
    let _steady = load::open(LoadSpec::new(
        cluster.client_url(0),
        auth(),
        cli.cap as usize,
    ))
    .await?;
    // The floor: when each connection's CONNECT event reaches a system-account subscriber.
    let events = async_nats::ConnectOptions::with_user_and_password(sys.name, sys.password)
        .connect(cluster.client_url(0))
        .await?;
    let mut sub = events.subscribe("$SYS.ACCOUNT.*.CONNECT").await?;
    events.flush().await?;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                if let Some(name) = v["client"]["name"].as_str() {
                    s.lock().unwrap().insert(name.to_string(), at);
                }
            }
        }
    });
    let (mut connected, mut event, mut closed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cli.trials {
        let name = format!("trial-{i}");
        let t0 = Instant::now();
        let one =
            load::open(LoadSpec::new(cluster.client_url(i % cluster.len()), auth(), 1).name(&name))
                .await?;
        connected.push(t0.elapsed());
        let limit = Instant::now() + Duration::from_secs(10);
        while one.alive() > 0 {
            if Instant::now() > limit {
                bail!("trial {i}: not closed within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        closed.push(t0.elapsed());
        if let Some(at) = seen.lock().unwrap().get(&name) {
            event.push(at.saturating_duration_since(t0));
        }
        tokio::time::sleep(cli.gap).await;
    }
    let _ = connwatch.kill();
    let _ = connwatch.wait();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "cap {} on APP/capped, {} trials, one connection over the cap at a time, servers in turn\n",
        cli.cap, cli.trials
    );
    println!("| from the start of the connect to | p50 ms | p99 ms | max ms | n |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, v) in [
        ("connected (handshake done)", connected),
        ("its CONNECT event seen by a subscriber (the floor)", event),
        ("closed by connwatch (the client sees the close)", closed),
    ] {
        let n = v.len();
        let (p50, p99, max) = percentiles(v);
        println!("| {what} | {p50:.1} | {p99:.1} | {max:.1} | {n} |");
    }
    Ok(())
}
