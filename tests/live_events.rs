//! What the live census reads from the servers' events besides the counts, on a real 3-node
//! cluster with real clients (async-nats): refused connections (`connections_refused`), churn
//! per user (the `reconnect_loop` diagnosis), and reads that are live (the `census` endpoint,
//! the per-user metrics) with no sweep in between.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A 3-node cluster with one application account.
fn cluster(dir: &std::path::Path, account: AccountSpec) -> Cluster {
    Cluster::start(ClusterSpec::new(dir.join("cluster")).account(account)).unwrap()
}

/// connwatch running against `cluster` (attached to n1) with sweeps an hour apart, so what
/// it reports after its first round comes from the events; ready once the live census is
/// complete. `extra` is appended to the configuration, in `[live]`.
async fn run(cluster: &Cluster, dir: &std::path::Path, extra: &str) -> Running {
    run_sweeping(cluster, dir, "1h", extra).await
}

/// [`run`] with sweeps every `sweep` while the live view is not complete.
async fn run_sweeping(
    cluster: &Cluster,
    dir: &std::path::Path,
    sweep: &str,
    extra: &str,
) -> Running {
    let listen = free_addr();
    let path = write_config(
        dir,
        &format!(
            "{}[sweep]\ninterval = \"{sweep}\"\ntimeout = \"1s\"\n[metrics]\nlisten = \"{listen}\"\n\
             user_floor = 1\n[live]\nreconcile_interval = \"1h\"\n{extra}",
            cluster.connwatch_toml()
        ),
    );
    let running = Running::start_live(&path, dir.join("run.log")).await;
    running
}

fn firing(kind: &str) -> impl Fn(&Value) -> bool {
    is(kind, "firing")
}

fn is(kind: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
}

async fn connect(url: &str, user: &str, password: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .name("refused-test")
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// An account at its connection limit refuses the clients past it, and a wrong password is
/// refused too: `connections_refused` fires per account (with the count, the user and the IP)
/// and per server (authentication failures with no account known), then resolves once a
/// whole `live.refused_window` passes without a refusal. On the wire (nats-server 2.15.1): a
/// client over the account's limit gets a DISCONNECT with `Maximum Account Connections
/// Exceeded` and no CONNECT before it; a failed authentication an AUTH.ERR event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_fire_per_account_and_server_then_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(
        dir.path(),
        AccountSpec::new("APP")
            .user("leaky", "pw")
            .user("app", "pw")
            .max_connections(5),
    );
    let running = run(&cluster, dir.path(), "refused_window = \"3s\"\n").await;
    let (seen, _advisories) = Seen::subscribe(&cluster.client_url(1)).await;
    // What the servers send about APP's clients, to check the facts the code relies on: read
    // on n1, where the clients connect, so that the subscription is in place (flushed) before
    // the first event (one on n2 could miss the first while its interest crosses the route).
    let (_, sys) = Seen::subscribe(&cluster.client_url(0)).await;
    let mut events = sys.subscribe("$SYS.ACCOUNT.APP.*").await.unwrap();
    sys.flush().await.unwrap();
    let url = cluster.client_url(0);
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match connect(&url, "leaky", "pw").await {
            Ok(c) => open.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (open.len(), refused),
        (5, 3),
        "the account limit of 5 holds"
    );
    let mut bad = 0;
    for _ in 0..12 {
        if connect(&cluster.client_url(1), "mallory", "wrong")
            .await
            .is_err()
        {
            bad += 1;
        }
    }
    assert_eq!(bad, 12);

    // Fired with the first refusals (the rounds run as they come): the numbers so far.
    let (_, subject, account) = seen
        .wait_for(0, "connections_refused (account)", |b| {
            firing("connections_refused")(b) && b["scope"] == "account"
        })
        .await;
    assert_valid(&account);
    assert_eq!(subject, "connwatch.advisory.connections_refused.APP");
    assert_eq!(account["name"], "APP");
    assert!(
        (1..=3).contains(&account["refused"].as_u64().unwrap()),
        "{account:#}"
    );
    assert!(account["by_reason"]["account_limit"].as_u64().unwrap() >= 1);
    assert!(account["users"]["leaky"].as_u64().unwrap() >= 1);
    assert!(account["ips"]["127.0.0.1"].as_u64().unwrap() >= 1);
    assert_eq!(account["window_secs"], 3);
    let (_, subject, server) = seen
        .wait_for(0, "connections_refused (server)", |b| {
            firing("connections_refused")(b) && b["scope"] == "server"
        })
        .await;
    assert_valid(&server);
    assert_eq!(subject, "connwatch.advisory.connections_refused.n2");
    assert!(
        server["by_reason"]["auth"].as_u64().unwrap() >= 10,
        "a flood: {server:#}"
    );
    assert!(server["users"]["mallory"].as_u64().unwrap() >= 10);
    for (reason, n) in [("account_limit", 3.0), ("auth", 12.0)] {
        let series = format!("connwatch_connections_refused_total{{reason=\"{reason}\"}}");
        assert!(
            wait_until_async(WAIT, || running.metric(&series) == Some(n)).await,
            "{series}: {}",
            running.metrics()
        );
    }

    // The refused clients' events: a DISCONNECT each with the limit's reason, no CONNECT (the
    // 5 CONNECTs are the admitted clients'). Read until both counts are in (or WAIT), then
    // everything already delivered: no more than those. A refused client's CONNECT, if the
    // server sent one, would come before its DISCONNECT (one server, in order): it is in.
    let (mut connects, mut limit_disconnects) = (0, 0);
    let mut tally = |m: async_nats::Message| {
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.ends_with(".CONNECT") && e["client"]["user"] == "leaky" {
            connects += 1;
        }
        if e["reason"] == "Maximum Account Connections Exceeded" {
            limit_disconnects += 1;
        }
        (connects, limit_disconnects)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut counted = (0, 0);
    while counted.0 < 5 || counted.1 < 3 {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(m)) => counted = tally(m),
            _ => break,
        }
    }
    sys.flush().await.unwrap();
    while let Some(Some(m)) = events.next().now_or_never() {
        counted = tally(m);
    }
    assert_eq!(counted, (5, 3));

    // No refusal for a whole window: both resolve, with every refusal of the episode.
    let mut totals = Vec::new();
    for scope in ["account", "server"] {
        let (_, _, resolved) = seen
            .wait_for(0, "connections_refused resolved", |b| {
                is("connections_refused", "resolved")(b) && b["scope"] == scope
            })
            .await;
        assert_valid(&resolved);
        let at =
            |f: &str| chrono::DateTime::parse_from_rfc3339(resolved[f].as_str().unwrap()).unwrap();
        assert!(
            at("timestamp") - at("last") >= chrono::Duration::seconds(3),
            "resolved before a quiet window: {resolved:#}"
        );
        totals.push((
            resolved["users"].clone(),
            resolved["ips"]["127.0.0.1"].clone(),
        ));
    }
    assert_eq!(
        totals,
        vec![
            (serde_json::json!({"leaky": 3}), serde_json::json!(3)),
            (serde_json::json!({"mallory": 12}), serde_json::json!(12)),
        ]
    );
    drop(open);
}

/// A server at its `max_connections` refuses new clients: on nats-server 2.15.1 each is a
/// DISCONNECT in the global account (`$SYS.ACCOUNT.$G.DISCONNECT`, no user yet, reason
/// `Maximum Connections Exceeded`), so `connections_refused` fires for that server, with the
/// IP, and resolves after a quiet window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_max_connections_fires_connections_refused_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(dir.path().join("cluster"))
        .account(AccountSpec::new("APP").user("app", "pw"));
    spec.max_connections = Some(6);
    let cluster = Cluster::start(spec).unwrap();
    let running = run(&cluster, dir.path(), "refused_window = \"3s\"\n").await;
    let (seen, _sys) = Seen::subscribe(&cluster.client_url(0)).await;
    let held = cluster.monitor_get(2, "/varz").unwrap()["connections"]
        .as_u64()
        .unwrap() as usize;
    let url = cluster.client_url(2);
    let (mut open, mut refused) = (Vec::new(), 0);
    for _ in 0..(6 - held + 2) {
        match connect(&url, "app", "pw").await {
            Ok(c) => open.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, 2, "n3 holds {held} and accepts 6");
    let (_, subject, fired) = seen
        .wait_for(0, "connections_refused (n3)", firing("connections_refused"))
        .await;
    assert_valid(&fired);
    assert_eq!(subject, "connwatch.advisory.connections_refused.n3");
    assert_eq!(
        (&fired["scope"], &fired["name"]),
        (&"server".into(), &"n3".into())
    );
    assert!(
        fired["by_reason"]["server_limit"].as_u64().unwrap() >= 1,
        "{fired:#}"
    );
    let (_, _, resolved) = seen
        .wait_for(
            0,
            "connections_refused resolved",
            is("connections_refused", "resolved"),
        )
        .await;
    assert_eq!(
        resolved["by_reason"],
        serde_json::json!({"server_limit": 2})
    );
    assert_eq!(resolved["ips"], serde_json::json!({"127.0.0.1": 2}));
    assert_eq!(resolved["servers"], serde_json::json!({"n3": 2}));
    assert_eq!(
        running.metric("connwatch_connections_refused_total{reason=\"server_limit\"}"),
        Some(2.0)
    );
    drop(open);
}

/// A client that reconnects in a loop (connect, close, connect ... with one user) while the
/// user holds more connections than its threshold is diagnosed `reconnect_loop` by a live
/// `run`: from the connect and disconnect events, with the churn in the advisory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_loop_is_diagnosed_from_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), AccountSpec::new("APP").user("loopy", "pw"));
    let running = run(
        &cluster,
        dir.path(),
        "[detect]\nmax_connections_per_user = 5\n",
    )
    .await;
    let (seen, _sys) = Seen::subscribe(&cluster.client_url(1)).await;
    // The leftovers of the loop: connections it opened and never closed.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            connect(&cluster.client_url(2), "loopy", "pw")
                .await
                .unwrap(),
        );
    }
    // The loop: connect, a request's worth of work, close, again.
    for i in 0..30 {
        let c = connect(&cluster.client_url(i % 3), "loopy", "pw")
            .await
            .unwrap();
        c.publish("work", Bytes::from_static(b"x")).await.unwrap();
        c.flush().await.unwrap();
        drop(c);
        if i == 20 {
            // Two more left behind: over the threshold of 5.
            for _ in 0..2 {
                held.push(
                    connect(&cluster.client_url(0), "loopy", "pw")
                        .await
                        .unwrap(),
                );
            }
        }
    }
    let (_, _, fired) = seen
        .wait_for(0, "excessive with reconnect_loop", |b| {
            firing("excessive_user_connections")(b)
                && causes(b).contains(&"reconnect_loop".to_string())
        })
        .await;
    assert_valid(&fired);
    assert_eq!(fired["user"], "loopy");
    let churn = &fired["diagnosis"]["churn"];
    // It fires once the two left behind at i == 20 are in: by then at least the 4 held, 21 of
    // the loop and those 2 had connected (the rest of the loop may come after).
    assert!(churn["connects"].as_u64().unwrap() >= 20, "{fired:#}");
    assert!(churn["closed"].as_u64().unwrap() >= 10, "{fired:#}");
    assert!(churn["short_lived"].as_u64().unwrap() >= 10, "{fired:#}");
    let summary = fired["diagnosis"]["summary"].as_str().unwrap();
    assert!(summary.contains("reconnect loop"), "{summary}");
    assert_eq!(
        running.metric("connwatch_sweeps_total"),
        Some(1.0),
        "a sweep ran: the diagnosis did not come from the events"
    );
    drop(held);
}

/// `APP/app`'s connections in the `connwatch.census` endpoint.
async fn app_census(sys: &async_nats::Client) -> u64 {
    let msg = sys
        .request(
            "connwatch.census",
            Bytes::from_static(br#"{"account":"APP","user":"app"}"#),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&msg.payload).unwrap();
    v["users"][0]["connections"].as_u64().unwrap_or(0)
}

/// `connwatch tail` in the background: its stdout lines, as they come.
struct Tail {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Tail {
    /// Starts `connwatch --config <config> tail`; returns once it is subscribed.
    async fn start(config: &std::path::Path, log: std::path::PathBuf) -> Tail {
        use std::io::BufRead;
        let mut child = std::process::Command::new(connwatch_bin())
            .args(["--config", config.to_str().unwrap(), "tail"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let subscribed = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("waiting for advisories")
        };
        assert!(
            wait_until_async(WAIT, subscribed).await,
            "tail did not start"
        );
        Tail { child, lines }
    }

    /// The first line containing `what`, waiting for it.
    async fn wait_for(&self, what: &str) -> String {
        let mut found = None;
        let ok = wait_until_async(WAIT, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(what))
                .cloned();
            found.is_some()
        })
        .await;
        assert!(
            ok,
            "tail printed no {what:?}: {:?}",
            self.lines.lock().unwrap()
        );
        found.unwrap()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `run`'s reads are live: N connections opened for a user show in the `census` endpoint, the
/// per-user metric and (over the threshold of 8) `connwatch tail`, with no sweep after the
/// first (sweeps and `live.reconcile_interval` an hour apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_endpoint_and_metrics_are_live() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), AccountSpec::new("APP").user("app", "pw"));
    let running = run(
        &cluster,
        dir.path(),
        "[detect]\nmax_connections_per_user = 8\nidle_threshold = \"10ms\"\n",
    )
    .await;
    let tail = Tail::start(
        &dir.path().join("connwatch.toml"),
        dir.path().join("tail.log"),
    )
    .await;
    let (_, sys) = Seen::subscribe(&cluster.client_url(0)).await;
    let mut clients = Vec::new();
    for n in [7usize, 3] {
        for i in 0..n {
            clients.push(
                connect(&cluster.client_url(i % 3), "app", "pw")
                    .await
                    .unwrap(),
            );
        }
        let want = clients.len() as u64;
        assert!(
            eventually(Duration::from_secs(5), || async {
                app_census(&sys).await == want
            })
            .await,
            "census shows {}, not {want}",
            app_census(&sys).await
        );
        assert!(
            wait_until_async(Duration::from_secs(5), || running
                .metric("connwatch_user_connections{account=\"APP\",user=\"app\"}")
                == Some(want as f64))
            .await,
            "{}",
            running.metrics()
        );
    }
    // Over the threshold: the finding fired from the events, with the live count.
    let fired = tail
        .wait_for("FIRING excessive_user_connections APP/app ")
        .await;
    let n: u64 = fired
        .split("APP/app ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {fired:?}"));
    assert!((9..=10).contains(&n), "{fired}");
    clients.truncate(4);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app_census(&sys).await == 4
        })
        .await
    );
    tail.wait_for("RESOLVED excessive_user_connections APP/app ")
        .await;
    assert_eq!(
        running.metric("connwatch_sweeps_total"),
        Some(1.0),
        "a sweep ran: the counts did not come from the events"
    );
}

/// Above `live.max_event_rate` connwatch stops following the events (they would cost the
/// servers more than sweeping): `connwatch_live_over_rate` flips to 1, the view says it is not
/// complete, no more events are applied, and sweeps every `sweep.interval` keep the counts
/// exact (the census endpoint against every server's own `/connz`). connwatch then works as
/// without the live census: a finding fires and resolves on complete sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_event_rate_the_events_give_way_to_sweeps_and_counts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), AccountSpec::new("APP").user("app", "pw"));
    // A limit of 1 a second: more than 60 events in a minute are over it.
    let running = run_sweeping(
        &cluster,
        dir.path(),
        "1s",
        "max_event_rate = 1\n[detect]\nmax_connections_per_user = 50\n",
    )
    .await;
    assert_eq!(running.metric("connwatch_live_over_rate"), Some(0.0));
    let (seen, sys) = Seen::subscribe(&cluster.client_url(0)).await;
    // 70 connects within seconds: over 60 a minute.
    let mut clients = Vec::new();
    for i in 0..70 {
        clients.push(
            connect(&cluster.client_url(i % 3), "app", "pw")
                .await
                .unwrap(),
        );
    }
    assert!(
        wait_until_async(WAIT, || running.metric("connwatch_live_over_rate")
            == Some(1.0))
        .await,
        "never over the rate: {}",
        running.metrics()
    );
    assert!(
        running
            .metric("connwatch_live_gaps_total{reason=\"over_rate\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    // The sweep the gap starts says so (it cannot make the view complete).
    assert!(
        wait_until_async(WAIT, || running.metric("connwatch_live_complete")
            == Some(0.0))
        .await,
        "the view said complete while not following the events"
    );
    let applied = running.metric("connwatch_live_events_total").unwrap();
    let sweeps = running.metric("connwatch_sweeps_total").unwrap();
    clients.truncate(40);
    let connz = || -> u64 {
        (0..3)
            .map(|i| {
                cluster.connz_counts(i).unwrap_or_default()[&("APP".to_string(), "app".to_string())]
            })
            .sum()
    };
    assert!(
        eventually(WAIT, || async {
            app_census(&sys).await == 40 && connz() == 40
        })
        .await,
        "census {} vs /connz {}",
        app_census(&sys).await,
        connz()
    );
    assert_eq!(
        running.metric("connwatch_live_events_total"),
        Some(applied),
        "events were still applied after the limit"
    );
    assert!(running.metric("connwatch_sweeps_total").unwrap() > sweeps);
    assert_eq!(running.metric("connwatch_live_over_rate"), Some(1.0));
    assert_eq!(running.metric("connwatch_live_complete"), Some(0.0));
    // 70 was over the threshold of 50, 40 is not: complete sweeps resolve it.
    let (i, _, _) = seen
        .wait_for(0, "firing", is("excessive_user_connections", "firing"))
        .await;
    seen.wait_for(
        i + 1,
        "resolved",
        is("excessive_user_connections", "resolved"),
    )
    .await;
}

/// A fleet whose every client has its own IP makes each user's `by_ip` as long as its
/// connections: the `census` endpoint's reply, over the servers' `max_payload` (16 KiB here),
/// still comes back (it would otherwise never be sent, and the asker time out), each user's
/// maps cut to their 50 largest and said to be, the totals whole; one user asked alone comes
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_census_over_max_payload_comes_back_with_its_maps_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(dir.path().join("cluster")).account(
        AccountSpec::new("APP")
            .user("app", "pw")
            .user("fleet", "fleet-pw"),
    );
    spec.max_payload = Some(16 * 1024);
    let cluster = Cluster::start(spec).unwrap();
    let _running = run(&cluster, dir.path(), "").await;
    let mut loads = Vec::new();
    for i in 0..3u32 {
        let first = u32::from(std::net::Ipv4Addr::new(127, 2, 0, 1)) + 500 * i;
        let spec = LoadSpec::new(
            cluster.client_url(i as usize),
            LoadAuth::user_password("fleet", "fleet-pw"),
            500,
        )
        .name("pod")
        .own_ips_from(first.into());
        loads.push(load::open(spec).await.unwrap());
    }
    let app = connect(&cluster.client_url(0), "app", "pw").await.unwrap();
    let (_, sys) = Seen::subscribe(&cluster.client_url(0)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let census = loop {
        let reply = call(&sys, "connwatch.census", "").await;
        if let Ok(v) = &reply {
            let fleet = v["users"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["user"] == "fleet");
            if fleet.is_some_and(|f| f["connections"] == 1_500) {
                break v.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no census with the fleet's 1,500: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(census["maps_cut_to"], 50, "{census}");
    let fleet = report_user(&census, "APP", "fleet");
    assert_eq!(fleet["by_ip"].as_object().unwrap().len(), 50);
    assert_eq!(fleet["spread"]["ips"], 1_500);
    assert_eq!(fleet["spread"]["processes"], 1_500);
    assert_eq!(fleet["by_name"]["pod"], 1_500);
    assert_eq!(report_user(&census, "APP", "app")["connections"], 1);
    // The servers' own count of the fleet's IPs agrees.
    let ips: usize = (0..3)
        .map(|i| {
            let connz = cluster
                .monitor_get(i, "/connz?auth=true&limit=5000")
                .unwrap();
            connz["connections"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["authorized_user"] == "fleet")
                .map(|c| c["ip"].as_str().unwrap().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum();
    assert_eq!(ips, 1_500);
    let alone = call(&sys, "connwatch.census", r#"{"user": "app"}"#)
        .await
        .unwrap();
    assert!(alone.get("maps_cut_to").is_none(), "{alone}");
    assert_eq!(alone["users"][0]["by_ip"]["127.0.0.1"], 1);
    drop(app);
    for l in loads {
        l.close().await;
    }
}
