//! `connwatch run` against a real 3-node cluster: findings become advisories on NATS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn is(kind: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_fires_renotifies_survives_a_partial_sweep_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    // Names that are not subject tokens: the subject escapes them, the body keeps them raw.
    let (account, user) = ("team.a b", "svc *1>");
    let mut cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new(account).user(user, "pw")),
    )
    .unwrap();
    let config = format!(
        "[nats]\nservers = [{:?}]\nuser = \"sys\"\npassword = \"sys-dev-password\"\n\
         [live]\nreconcile_interval = \"500ms\"\n[sweep]\ninterval = \"500ms\"\ntimeout = \"2s\"\n\
         [detect]\nidle_threshold = \"1s\"\ngrowth_min_per_hour = 1.0\n\
         growth_min_span = \"2s\"\ngrowth_min_increase = 5\n\
         [advisory]\nrenotify = \"4s\"\n[state]\nfile = {:?}\n",
        cluster.client_url(0),
        dir.path().join("state.json")
    );
    let path = write_config(dir.path(), &config);
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("connwatch.log"));
    let auth = LoadAuth::user_password(user, "pw");

    // Growing below the threshold: a growth advisory with a projection, before it hurts.
    let mut loads = vec![load::open(
        LoadSpec::new(cluster.client_url(0), auth.clone(), 20).name("invoice-worker"),
    )
    .await
    .unwrap()];
    let grow = |r: &Running| r.rounds().0;
    let before = grow(&running);
    assert!(
        wait_until_async(WAIT, || grow(&running) >= before + 3).await,
        "{}",
        running.log()
    );
    // A leak: 5 more connections every other sweep (one step would not be growth).
    for _ in 0..6 {
        loads.push(
            load::open(
                LoadSpec::new(cluster.client_url(0), auth.clone(), 5).name("invoice-worker"),
            )
            .await
            .unwrap(),
        );
        let now = grow(&running);
        assert!(
            wait_until_async(WAIT, || grow(&running) >= now + 2).await,
            "{}",
            running.log()
        );
    }
    let (_, _, growth) = seen
        .wait_for(0, "growth", is("user_connection_growth", "firing"))
        .await;
    assert_valid(&growth);
    assert!(growth["connections"].as_u64().unwrap() <= 100);
    assert!(
        growth["growth"]["per_hour"].as_f64().unwrap() > 0.0,
        "{growth:#}"
    );
    assert!(
        growth["growth"]["threshold_in_secs"].as_u64().is_some(),
        "{growth:#}"
    );

    // Past the threshold: the excessive advisory, on the escaped subject, with the numbers.
    loads.push(
        load::open(LoadSpec::new(cluster.client_url(1), auth.clone(), 80).name("invoice-worker"))
            .await
            .unwrap(),
    );
    let (i, subject, fired) = seen
        .wait_for(0, "excessive", is("excessive_user_connections", "firing"))
        .await;
    assert_valid(&fired);
    assert_eq!(
        subject,
        "connwatch.advisory.excessive_user_connections.team%2Ea%20b.svc%20%2A1%3E"
    );
    assert_eq!(fired["account"], account);
    assert_eq!(fired["user"], user);
    // A sweep may catch n2 while the 80 are still connecting (the account's name cannot be
    // followed by events, so sweeps count it): past the threshold, at most 130, all exact.
    let n = fired["connections"].as_u64().unwrap();
    assert!((101..=130).contains(&n), "{fired:#}");
    assert_eq!(fired["threshold"], 100);
    assert_eq!(fired["renotify"], false);
    assert_eq!(
        fired["by_server"],
        serde_json::json!({"n1": 50, "n2": n - 50})
    );
    assert_eq!(fired["by_name"], serde_json::json!({"invoice-worker": n}));
    assert_eq!(fired["by_ip"], serde_json::json!({"127.0.0.1": n}));
    assert_eq!(fired["sweep"]["partial"], false);
    let causes = causes(&fired);
    assert!(causes.contains(&"one_process_leak".into()), "{causes:?}");
    assert!(fired["diagnosis"]["summary"]
        .as_str()
        .unwrap()
        .contains(&format!("{n} of {n} connections come from one process")));
    assert!(
        fired["growth"]["per_hour"].as_f64().unwrap() > 0.0,
        "{fired:#}"
    );

    // A reconnect loop on top (connections opened and closed over and over), until the
    // finding is announced again after `advisory.renotify`, same start, with the loop diagnosed.
    let stop_churn = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let (url, auth, stop) = (cluster.client_url(2), auth.clone(), stop_churn.clone());
        async move {
            for _ in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let l =
                    load::open(LoadSpec::new(url.clone(), auth.clone(), 20).name("invoice-worker"))
                        .await
                        .unwrap();
                l.close().await;
            }
        }
    });
    let (_, _, again) = seen
        .wait_for(i + 1, "renotify", |b| {
            is("excessive_user_connections", "firing")(b) && b["renotify"] == true
        })
        .await;
    stop_churn.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.await.unwrap();
    assert_valid(&again);
    assert_eq!(again["since"], fired["since"]);
    assert_ne!(again["id"], fired["id"]);
    let loop_cause = again["diagnosis"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == "reconnect_loop");
    let message = loop_cause.unwrap_or_else(|| panic!("no reconnect loop diagnosed: {again:#}"))
        ["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("Client Closed"), "{message}");

    // A server goes silent and the leak closes: partial sweeps never resolve it.
    cluster.kill(2).unwrap();
    let partial_before = running.rounds().1;
    for l in loads.drain(..) {
        l.close().await;
    }
    assert!(
        wait_until_async(WAIT, || running.rounds().1 >= partial_before + 4).await,
        "{}",
        running.log()
    );
    assert!(
        !seen
            .all()
            .iter()
            .any(|(_, b)| is("excessive_user_connections", "resolved")(b)),
        "resolved on a partial sweep: {:#?}",
        seen.all()
    );

    // The server is back: a complete sweep resolves it.
    cluster.restart(2).unwrap();
    let (_, _, resolved) = seen
        .wait_for(0, "resolved", is("excessive_user_connections", "resolved"))
        .await;
    assert_valid(&resolved);
    assert_eq!(resolved["sweep"]["partial"], false);
    assert_eq!(resolved["since"], fired["since"]);

    assert_eq!(running.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_fire_again_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap();
    let state = dir.path().join("state.json");
    let config = format!(
        "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\n[advisory]\nrenotify = \"1h\"\n[state]\nfile = {:?}\n",
        cluster.connwatch_toml(),
        state
    );
    let path = write_config(dir.path(), &config);
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(0)).await;
    let leak = load::open(LoadSpec::new(
        cluster.client_url(2),
        LoadAuth::user_password("leaky", "pw"),
        120,
    ))
    .await
    .unwrap();

    let first = Running::start(&path, dir.path().join("first.log"));
    seen.wait_for(0, "excessive", is("excessive_user_connections", "firing"))
        .await;
    assert_eq!(first.terminate(), Some(0));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    // The leak, all on n3, also makes APP imbalanced: the excessive finding is the one here.
    let excessive = saved["findings"]["active"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("[\"excessive_user_connections\""))
        .count();
    assert_eq!(excessive, 1, "{saved:#}");

    let second = Running::start(&path, dir.path().join("second.log"));
    assert!(
        wait_until_async(WAIT, || second.rounds().0 >= 5).await,
        "{}",
        second.log()
    );
    let firings = seen
        .all()
        .iter()
        .filter(|(_, b)| is("excessive_user_connections", "firing")(b))
        .count();
    assert_eq!(firings, 1, "fired again after a restart: {:#?}", seen.all());
    assert_eq!(second.terminate(), Some(0));
    leak.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisories_queued_while_disconnected_arrive_after_reconnect() {
    use connwatch::advisory::publisher::{Publisher, PublisherStats};
    use connwatch::advisory::Advisory;
    use connwatch::config::AdvisoryConfig;

    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::start(ClusterSpec::new(dir.path().join("cluster")).servers(1)).unwrap();
    let url = cluster.client_url(0);
    let connect = || {
        async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
            .max_reconnects(None)
            .connect(url.clone())
    };
    let client = connect().await.unwrap();
    let stats = Arc::new(PublisherStats::default());
    let cfg = AdvisoryConfig {
        queue_size: 8,
        ..AdvisoryConfig::default()
    };
    let publisher = Publisher::spawn(client.clone(), &cfg, stats.clone());
    let advisory = |n: u32| Advisory {
        subject: format!("connwatch.advisory.test.{n}"),
        id: format!("id-{n}"),
        body: serde_json::json!({ "n": n }),
    };

    // Subscribed on the same client: after the reconnect it subscribes again before it publishes.
    let seen = Seen::on(&client).await;

    cluster.kill(0).unwrap();
    assert!(
        wait_until_async(WAIT, || client.connection_state()
            != async_nats::connection::State::Connected)
        .await,
        "client did not notice the server going away"
    );
    // Ten advisories into a queue of eight while the server is down: the two oldest drop.
    for n in 0..10 {
        publisher.enqueue(advisory(n));
    }
    assert_eq!(publisher.queued(), 8);
    assert_eq!(stats.dropped.get(), 2);

    cluster.restart(0).unwrap();
    // Shutdown waits until the queue is empty: everything was confirmed by the server.
    let left = publisher.shutdown(WAIT).await;
    assert_eq!(left, 0, "advisories left after reconnect");
    assert_eq!(stats.published.get(), 8);
    let got: Vec<u64> = {
        wait_until_async(Duration::from_secs(5), || seen.all().len() >= 8).await;
        seen.all()
            .iter()
            .map(|(_, b)| b["n"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        got,
        (2..10).collect::<Vec<u64>>(),
        "delivered out of order or lost"
    );
}

/// A `metrics.listen` address already in use stops `connwatch run` at start with exit 6 and a
/// message naming the setting, instead of running on without metrics and health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_in_use_stops_run_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterSpec::new(dir.path().join("cluster")).servers(1)).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "{}[live]\nreconcile_interval = \"500ms\"\n[sweep]\ninterval = \"500ms\"\n[metrics]\nlisten = \"{listen}\"\n",
            cluster.connwatch_toml()
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_connwatch(
            ["--config", path.to_str().unwrap(), "run"],
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    assert!(
        !out.timed_out,
        "still running without its metrics: {}",
        out.stderr
    );
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("`metrics.listen`"), "{}", out.stderr);
    assert!(out.stderr.contains(&listen.to_string()), "{}", out.stderr);
    drop(taken);
}

/// A server's `max_connections` that cannot be looked up (VARZ denied) is unknown, not "no
/// limit": its firing pressure finding is held, not resolved, and the failed lookups counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_limit_holds_its_pressure_finding() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = |cluster: &Cluster| {
        format!(
            "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\ntimeout = \"1s\"\n[metrics]\nlisten = \"{listen}\"\n\
             [state]\nfile = {state:?}\n",
            cluster.connwatch_toml()
        )
    };
    let is_pressure = |state: &'static str| {
        move |b: &Value| {
            b["type"] == "io.connwatch.advisory.v1.server_connection_pressure"
                && b["state"] == state
        }
    };
    let spec = |name: &str| {
        let mut spec = ClusterSpec::new(dir.path().join(name))
            .account(AccountSpec::new("APP").user("app", "pw"));
        spec.max_connections = Some(100);
        spec
    };

    // First run: VARZ answers, n1 at 90 of 100 connections fires.
    let cluster = Cluster::start(spec("a")).unwrap();
    let app = LoadAuth::user_password("app", "pw");
    let load = load::open(LoadSpec::new(cluster.client_url(0), app.clone(), 90))
        .await
        .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(dir.path(), &config(&cluster));
    let running = Running::start(&path, dir.path().join("first.log"));
    seen.wait_for(0, "pressure firing", is_pressure("firing"))
        .await;
    assert_eq!(running.terminate(), Some(0));
    load.close().await;
    drop(cluster);

    // Second run, same servers' names and load, but connwatch may not ask VARZ.
    let cluster = Cluster::start(
        spec("b").system_permissions("{publish: {deny: [\"$SYS.REQ.SERVER.PING.VARZ\"]}}"),
    )
    .unwrap();
    let _load = load::open(LoadSpec::new(cluster.client_url(0), app, 90))
        .await
        .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(dir.path(), &config(&cluster));
    let running = Running::start(&path, dir.path().join("second.log"));
    let complete = || {
        let (rounds, partial) = running.rounds();
        rounds - partial
    };
    assert!(
        wait_until_async(WAIT, || complete() >= 5).await,
        "{}",
        running.log()
    );
    assert!(
        seen.all().iter().all(|(_, b)| !is_pressure("resolved")(b)),
        "resolved on an unknown limit: {:#?}",
        seen.all()
    );
    let (_, text) = testkit::cluster::http_get(listen, "/metrics").unwrap();
    let metric = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing:\n{text}"))
    };
    assert_eq!(
        metric("connwatch_findings_firing{type=\"server_connection_pressure\"}"),
        1.0
    );
    // Asked again every round, not cached.
    let failed = || {
        running
            .metric("connwatch_limit_lookups_failed_total{lookup=\"varz\"}")
            .unwrap_or(0.0)
    };
    assert!(
        wait_until_async(WAIT, || failed() >= 5.0).await,
        "{}",
        running.log()
    );
    assert_eq!(running.terminate(), Some(0));
}

/// `run` without the live census counts each sweep while parsing when nothing needs the
/// connections one by one, and lists them when `[kick]` is on (dry run here): either way every
/// user's `connwatch_user_connections` is what the servers' own `/connz` say, and the kick
/// policy still sees the leaked connections (the dry run announces them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_alone_count_while_parsing_or_list_for_kicks_with_the_same_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("app", "pw")
                .user("leaky", "pw"),
        ),
    )
    .unwrap();
    let mut loads = Vec::new();
    for (i, user, n) in [(0, "app", 7), (1, "leaky", 40), (2, "leaky", 25)] {
        let spec = LoadSpec::new(
            cluster.client_url(i),
            LoadAuth::user_password(user, "pw"),
            n,
        );
        loads.push(load::open(spec).await.unwrap());
    }
    let truth = |user: &str| -> f64 {
        (0..3)
            .filter_map(|i| {
                let counts = cluster.connz_counts(i).unwrap();
                counts.get(&("APP".to_string(), user.to_string())).copied()
            })
            .sum::<u64>() as f64
    };
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    for (name, extra) in [
        ("counted", ""),
        (
            "listed",
            "[detect]\nidle_threshold = \"1s\"\nmax_connections_per_user = 50\n\
             [kick]\nenabled = true\ndry_run = true\nmin_idle = \"1s\"\nmin_age = \"1s\"\n",
        ),
    ] {
        let listen = free_addr();
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        let path = write_config(
            &dir.path().join(name),
            &format!(
                "{}[live]\nenabled = false\n[sweep]\ninterval = \"300ms\"\n\
                 [metrics]\nlisten = \"{listen}\"\nuser_floor = 1\n{extra}",
                cluster.connwatch_toml()
            ),
        );
        let running = Running::start(&path, dir.path().join(format!("{name}.log")));
        for user in ["app", "leaky"] {
            let series = format!("connwatch_user_connections{{account=\"APP\",user=\"{user}\"}}");
            let want = truth(user);
            assert!(
                wait_until_async(WAIT, || running.metric(&series) == Some(want)).await,
                "{name}: {series} is {:?}, the servers say {want}: {}",
                running.metric(&series),
                running.log()
            );
        }
        if name == "listed" {
            // The listing run's dry-run kicks name leaky's connections.
            seen.wait_for(0, "a dry-run kick of leaky", |b: &Value| {
                b["type"] == "io.connwatch.advisory.v1.connection_kicked"
                    && b["user"] == "leaky"
                    && b["dry_run"] == true
            })
            .await;
        }
        assert_eq!(running.terminate(), Some(0), "{name}");
    }
    drop(loads);
}
