//! Operating connwatch: the NATS micro service, Prometheus metrics, health, reload, shutdown.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::cluster::http_get;

const WAIT: Duration = Duration::from_secs(30);

fn sighup(pid: u32) {
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
}

/// A cluster with `APP/leaky` holding 150 connections and `connwatch run` sweeping it every
/// 500 ms with metrics on, threshold 200 (nothing fires), ready.
struct Ops {
    cluster: Cluster,
    _leak: Load,
    listen: SocketAddr,
    base: String,
    path: std::path::PathBuf,
    seen: Seen,
    client: async_nats::Client,
    running: Running,
}

async fn start_ops(dir: &std::path::Path) -> Ops {
    let cluster = Cluster::start(
        ClusterSpec::new(dir.join("cluster")).account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap();
    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", "pw"),
            150,
        )
        .name("w"),
    )
    .await
    .unwrap();
    let listen = free_addr();
    let base = format!(
        "{}[live]\nreconcile_interval = \"500ms\"\n[sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n[metrics]\nlisten = \"{listen}\"\nuser_floor = 1\n",
        cluster.connwatch_toml()
    );
    let path = write_config(dir, &with_threshold(&base, 200));
    let (seen, client) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.join("run.log"));
    assert!(
        wait_until_async(WAIT, || ready(listen) == 200).await,
        "never ready: {}",
        running.log()
    );
    assert_eq!(http_get(listen, "/healthz").unwrap().0, 200);
    Ops {
        cluster,
        _leak: leak,
        listen,
        base,
        path,
        seen,
        client,
        running,
    }
}

fn with_threshold(base: &str, n: u64) -> String {
    format!("{base}[detect]\nmax_connections_per_user = {n}\n")
}

fn ready(listen: SocketAddr) -> u16 {
    http_get(listen, "/readyz")
        .map(|(code, _)| code)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_micro_service_answers_its_endpoints_and_counts_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Ops {
        cluster: _cluster,
        _leak,
        listen: _listen,
        base: _base,
        path: _path,
        seen: _seen,
        client,
        running,
    } = start_ops(dir.path()).await;
    // Discoverable as a NATS micro service, with its endpoints.
    let ping = call(&client, "$SRV.PING.connwatch", "").await.unwrap();
    assert_eq!(ping["name"], "connwatch");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    let info = call(&client, "$SRV.INFO.connwatch", "").await.unwrap();
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for s in ["connwatch.census", "connwatch.findings", "connwatch.sweep"] {
        assert!(subjects.contains(&s), "{s} not in {subjects:?}");
    }
    let census = call(
        &client,
        "connwatch.census",
        r#"{"account": "APP", "user": "leaky"}"#,
    )
    .await
    .unwrap();
    assert_eq!(census["users"].as_array().unwrap().len(), 1);
    assert_eq!(census["users"][0]["connections"], 150);
    assert_eq!(census["sweep"]["partial"], false);
    let findings = call(
        &client,
        "connwatch.findings",
        r#"{"type": "excessive_user_connections"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        findings["findings"],
        serde_json::json!([]),
        "nothing fires at threshold 200"
    );
    let swept = call(&client, "connwatch.sweep", "").await.unwrap();
    assert_eq!(swept["servers_responded"], 3);
    assert_eq!(
        call(&client, "connwatch.census", "{not json")
            .await
            .unwrap_err(),
        "400"
    );
    assert_eq!(
        call(&client, "connwatch.findings", r#"{"tipe": 1}"#)
            .await
            .unwrap_err(),
        "400"
    );
    let stats = call(&client, "$SRV.STATS.connwatch", "").await.unwrap();
    let errors: u64 = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["num_errors"].as_u64().unwrap())
        .sum();
    assert_eq!(errors, 2, "{stats:#}");

    assert_eq!(running.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_agrees_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let ops = start_ops(dir.path()).await;
    let (listen, path) = (ops.listen, &ops.path);
    // Prometheus: the per-user gauge and the sweep figures agree with the report.
    let (code, text) = http_get(listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &text,
            "connwatch_user_connections{account=\"APP\",user=\"leaky\"}"
        ),
        Some(150.0),
        "{text}"
    );
    assert_eq!(metric(&text, "connwatch_servers_expected"), Some(3.0));
    assert_eq!(metric(&text, "connwatch_servers_responded"), Some(3.0));
    let report = report_json_async(path).await;
    let (_, text) = http_get(listen, "/metrics").unwrap();
    for u in report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["account"] == "APP")
    {
        let series = format!(
            "connwatch_user_connections{{account=\"APP\",user=\"{}\"}}",
            u["user"].as_str().unwrap()
        );
        assert_eq!(
            metric(&text, &series),
            u["connections"].as_f64(),
            "{series}"
        );
    }
    // `connwatch.sweep` answered with the latest sweep (service.sweep_min_interval): wait for
    // the scheduled second one.
    assert!(
        wait_until_async(WAIT, || {
            metric_now(listen, "connwatch_sweep_duration_seconds_count").unwrap_or(0.0) >= 2.0
        })
        .await
    );
    assert!(metric_now(listen, "connwatch_sweeps_total").unwrap() >= 2.0);
    // A healthy cluster answers every limit lookup and names connwatch's identity.
    let (_, text) = http_get(listen, "/metrics").unwrap();
    assert_eq!(
        metric_sum(&text, "connwatch_limit_lookups_failed_total"),
        None,
        "{text}"
    );
    assert_eq!(metric(&text, "connwatch_identity_known"), Some(1.0));
    assert_eq!(ops.running.terminate(), Some(0));
}

/// SIGHUP: a broken configuration is refused (and counted) while the old one keeps sweeping; a
/// valid one is applied (and counted) at the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_broken_config_and_applies_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let ops = start_ops(dir.path()).await;
    let (listen, base, path, seen, running) =
        (ops.listen, &ops.base, &ops.path, &ops.seen, &ops.running);
    let with_threshold = |n: u64| with_threshold(base, n);
    let reloads = |result: &str| {
        metric_now(
            listen,
            &format!("connwatch_config_reloads_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };

    // SIGHUP with a broken config is refused; the old one keeps running.
    std::fs::write(
        path,
        format!("{base}[detect]\nmax_connections_per_user = \"lots\"\n"),
    )
    .unwrap();
    sighup(running.pid());
    assert!(
        wait_until_async(WAIT, || reloads("refused") == 1.0).await,
        "reload not refused: {}",
        running.metrics()
    );
    assert_eq!(reloads("applied"), 0.0);
    let rounds = running.rounds().0;
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= rounds + 2).await,
        "stopped sweeping"
    );
    assert!(seen.of("excessive_user_connections").is_empty());

    // SIGHUP with a lower threshold: the next sweep fires on it.
    std::fs::write(path, with_threshold(100)).unwrap();
    sighup(running.pid());
    let (_, _, fired) = seen
        .wait_for(0, "excessive", |b| {
            b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
        })
        .await;
    assert_eq!(fired["threshold"], 100);
    assert_eq!((reloads("applied"), reloads("refused")), (1.0, 1.0));
    let findings = call(
        &ops.client,
        "connwatch.findings",
        r#"{"type": "excessive_user_connections"}"#,
    )
    .await
    .unwrap();
    assert_eq!(findings["findings"].as_array().unwrap().len(), 1);
    let (_, text) = http_get(listen, "/metrics").unwrap();
    assert_eq!(
        metric(
            &text,
            "connwatch_findings_firing{type=\"excessive_user_connections\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, "connwatch_advisories_published_total").unwrap() >= 1.0);
    assert_eq!(ops.running.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_cluster_down_and_back_and_sigterm_stops_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let Ops {
        mut cluster,
        _leak,
        listen,
        base: _base,
        path: _path,
        seen: _seen,
        client: _client,
        running,
    } = start_ops(dir.path()).await;
    let ready = || ready(listen);
    // The whole cluster unreachable: not ready; back: ready again.
    for i in 0..3 {
        cluster.kill(i).unwrap();
    }
    let (partial, failed) = (running.rounds().1, running.failed());
    assert!(
        wait_until_async(WAIT, || ready() == 503).await,
        "still ready with the cluster down"
    );
    assert_eq!(
        http_get(listen, "/healthz").unwrap().0,
        200,
        "alive while the cluster is down"
    );
    let failed_or_partial = || running.failed() > failed || running.rounds().1 > partial;
    assert!(
        wait_until_async(WAIT, failed_or_partial).await,
        "no sweep during the outage: {}",
        running.log()
    );
    for i in 0..3 {
        cluster.restart(i).unwrap();
    }
    assert!(
        wait_until_async(WAIT, || ready() == 200).await,
        "not ready again: {}",
        running.log()
    );
    // Ready again needs a complete sweep after the reconnect; the counter moved before that.
    assert!(
        wait_until_async(WAIT, || {
            metric_now(listen, "connwatch_nats_reconnects_total").unwrap_or(0.0) >= 1.0
        })
        .await,
        "reconnect not counted: {}",
        running.log()
    );
    let (_, text) = http_get(listen, "/metrics").unwrap();
    assert!(
        metric(&text, "connwatch_sweeps_failed_total").unwrap()
            + metric(&text, "connwatch_sweeps_partial_total").unwrap()
            >= 1.0
    );

    assert_eq!(running.terminate(), Some(0));
    assert!(
        http_get(listen, "/healthz").is_err(),
        "listener still up after exit"
    );
}

fn metric_now(listen: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, text) = http_get(listen, "/metrics").ok()?;
    metric(&text, prefix)
}

/// A cluster with one leaky user and connwatch running on it with metrics at `listen`; the
/// scheduled sweeps an hour apart, so only the first sweep and the `sweep` endpoint sweep
/// (sweeps alone: the live census would sweep after a gap, see tests/live.rs).
async fn hourly(
    dir: &std::path::Path,
    extra: &str,
) -> (Cluster, Running, SocketAddr, async_nats::Client) {
    let cluster = Cluster::start(
        ClusterSpec::new(dir.join("cluster")).account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap();
    let listen = free_addr();
    let path = write_config(
        dir,
        &format!(
            "{}[live]\nenabled = false\n[sweep]\ninterval = \"1h\"\ntimeout = \"1s\"\n[metrics]\nlisten = \"{listen}\"\n{extra}",
            cluster.connwatch_toml()
        ),
    );
    let running = Running::start(&path, dir.join("run.log"));
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= 1).await,
        "no first round: {}",
        running.log()
    );
    let (_, client) = Seen::subscribe(&cluster.client_url(0)).await;
    (cluster, running, listen, client)
}

/// The reconnect counter moves when the reconnect happens, not at the next round, and
/// `/readyz` stays unready until a complete sweep after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_are_counted_when_they_happen_and_readiness_waits_for_a_fresh_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, running, listen, client) =
        hourly(dir.path(), "[service]\nsweep_min_interval = \"0s\"\n").await;
    drop(client);
    let ready = || http_get(listen, "/readyz").map(|r| r.0).unwrap_or(0);
    assert!(
        wait_until_async(WAIT, || ready() == 200).await,
        "never ready"
    );
    assert_eq!(
        metric_now(listen, "connwatch_nats_reconnects_total"),
        Some(0.0)
    );
    for i in 0..3 {
        cluster.kill(i).unwrap();
    }
    for i in 0..3 {
        cluster.restart(i).unwrap();
    }
    // No round runs for an hour: only the event itself can move the counter.
    assert!(
        wait_until_async(WAIT, || {
            metric_now(listen, "connwatch_nats_reconnects_total").unwrap_or(0.0) >= 1.0
        })
        .await,
        "reconnect not counted: {}",
        running.log()
    );
    let (code, body) = http_get(listen, "/readyz").unwrap();
    assert_eq!(code, 503, "ready on data from before the outage: {body}");
    assert!(body.contains("since reconnecting"), "{body}");
    // A sweep after the reconnect makes it ready again.
    let (_, client) = Seen::subscribe(&cluster.client_url(1)).await;
    let swept = call(&client, "connwatch.sweep", "").await.unwrap();
    assert_eq!(swept["partial"], false, "{swept}");
    assert!(
        wait_until_async(WAIT, || ready() == 200).await,
        "not ready after a fresh sweep"
    );
    assert_eq!(running.terminate(), Some(0));
}

/// Concurrent `connwatch.sweep` requests share one sweep, and requests within
/// `service.sweep_min_interval` of it get that sweep rather than a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweep_requests_share_one_sweep_and_respect_the_minimum_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, running, listen, client) =
        hourly(dir.path(), "[service]\nsweep_min_interval = \"3s\"\n").await;
    // Past the minimum gap after the first sweep (its start is the last complete timestamp).
    let first = metric_now(listen, "connwatch_last_complete_sweep_timestamp_seconds").unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    assert!(
        wait_until_async(WAIT, || now() > first + 3.5).await,
        "clock"
    );
    let sweeps = || metric_now(listen, "connwatch_sweeps_total").unwrap();
    let before = sweeps();
    let burst = || futures::future::join_all((0..8).map(|_| call(&client, "connwatch.sweep", "")));
    let replies = burst().await;
    for r in &replies {
        let r = r.as_ref().expect("every request answered");
        assert_eq!(r["servers_responded"], 3, "{r}");
    }
    assert_eq!(
        sweeps() - before,
        1.0,
        "8 concurrent requests made the servers sweep more than once"
    );
    let started: Vec<&Value> = replies
        .iter()
        .map(|r| &r.as_ref().unwrap()["started"])
        .collect();
    assert!(started.windows(2).all(|w| w[0] == w[1]), "{started:?}");
    // Right after it: the same sweep again, no new one.
    let again = burst().await;
    assert_eq!(sweeps() - before, 1.0, "a sweep within the minimum gap");
    assert_eq!(&again[0].as_ref().unwrap()["started"], started[0]);
    let (_, text) = http_get(listen, "/metrics").unwrap();
    assert!(
        metric(&text, "connwatch_sweep_requests_shared_total").unwrap() >= 15.0,
        "{text}"
    );
    assert_eq!(running.terminate(), Some(0));
}
