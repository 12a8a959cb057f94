//! Per-user connection caps (`[enforce]`) on a real 3-node cluster: a burst over the cap is cut
//! back to the cap, the newest closed, cluster-wide, in one advisory; dry run closes nothing;
//! clients that reconnect after each close keep hitting the cap, within the rate bound, and
//! the churn is reported; nothing is closed while the live view has a gap.

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn auth(user: &str) -> LoadAuth {
    LoadAuth::user_password(user, "pw")
}

/// A cluster with `APP/leaky` and `APP/app`, connwatch attached to n1 only (the gap test
/// freezes n3) with `[enforce]` on (`enforce` adds to it), metrics on; ready once its live
/// view is complete.
struct Capped {
    cluster: Cluster,
    running: Running,
    seen: Seen,
    client: async_nats::Client,
}

impl Capped {
    /// Asks for a sweep (the `sweep` endpoint) and waits for its round, cap round included.
    async fn sweep(&self) -> Value {
        let msg = self
            .client
            .request("connwatch.sweep", bytes::Bytes::new())
            .await
            .unwrap();
        serde_json::from_slice(&msg.payload).unwrap()
    }
}

async fn start(dir: &std::path::Path, enforce: &str) -> Capped {
    start_with(spec(dir), dir, "1s", enforce).await
}

/// The cluster of these tests: `APP/leaky` and `APP/app`.
fn spec(dir: &std::path::Path) -> ClusterSpec {
    ClusterSpec::new(dir.join("cluster")).account(
        AccountSpec::new("APP")
            .user("leaky", "pw")
            .user("app", "pw"),
    )
}

/// [`start`] on a cluster of `spec`, with `live.heartbeat_margin = probe`. The `sweep` endpoint
/// always sweeps (a test's barrier: it answers once the round, its cap round included, is done).
async fn start_with(
    spec: ClusterSpec,
    dir: &std::path::Path,
    probe: &str,
    enforce: &str,
) -> Capped {
    let cluster = Cluster::start(spec).unwrap();
    let listen = free_addr();
    // Attached to n1 only: the gap test freezes n3.
    let toml = connwatch_toml_on(&cluster, 0);
    let path = write_config(
        dir,
        &format!(
            "{toml}[sweep]\ninterval = \"1s\"\ntimeout = \"1s\"\n[live]\nreconcile_interval = \"1h\"\nheartbeat_margin = \"{probe}\"\n\
             [metrics]\nlisten = \"{listen}\"\nuser_floor = 1\n[service]\nsweep_min_interval = \"0s\"\n\
             [enforce]\nenabled = true\n{enforce}"
        ),
    );
    let running = Running::start_live(&path, dir.join("run.log")).await;
    let (seen, client) = Seen::subscribe(&cluster.client_url(1)).await;
    Capped {
        cluster,
        running,
        seen,
        client,
    }
}

/// The caps of these tests: `leaky` 50 (a user entry beats its account's 100), and the system
/// account a cap of 1 it is exempt from.
const CAPS: &str = "[[enforce.caps]]\naccount = \"APP\"\nmax_connections = 100\n\
    [[enforce.caps]]\naccount = \"APP\"\nuser = \"leaky\"\nmax_connections = 50\n\
    [[enforce.caps]]\naccount = \"SYS\"\nmax_connections = 1\n";

/// One connection in a server's own `/connz`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    start: DateTime<Utc>,
    server_id: String,
    cid: u64,
}

/// A user's connections in every server's own `/connz` (the servers given), with their start.
fn connz_of(cluster: &Cluster, servers: &[usize], account: &str, user: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    for &i in servers {
        let (id, connections) = connz_of_server(cluster, i);
        for c in &connections {
            if c["account"] == account && c["authorized_user"] == user {
                out.push(Listed {
                    start: parse_time(&c["start"]),
                    server_id: id.clone(),
                    cid: c["cid"].as_u64().unwrap(),
                });
            }
        }
    }
    out.sort();
    out
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

const ALL: &[usize] = &[0, 1, 2];

/// 80 connections of `leaky` at once, spread over the three servers.
async fn burst(cluster: &Cluster) -> (Load, Load, Load) {
    let open = |i: usize, n: usize| {
        load::open(LoadSpec::new(cluster.client_url(i), auth("leaky"), n).name("leaky-worker"))
    };
    let (a, b, c) = tokio::join!(open(0, 27), open(1, 27), open(2, 26));
    (a.unwrap(), b.unwrap(), c.unwrap())
}

fn cap_advisories(seen: &Seen, user: &str) -> Vec<Value> {
    seen.of("connection_cap_enforced")
        .into_iter()
        .filter(|b| b["user"] == user)
        .collect()
}

/// Cap 50, 80 connections in a burst across the three servers: the servers' own `/connz`
/// soon shows exactly 50, the 50 oldest; `APP/app` and the system account are untouched; one
/// advisory lists the 30. Then n3 freezes (a gap): 20 more are NOT closed while the view is
/// incomplete, and are once n3 answers again and a complete sweep reconciles the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_cap_is_cut_back_to_the_oldest_and_a_gap_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = start(dir.path(), &format!("dry_run = false\n{CAPS}")).await;
    let app = load::open(LoadSpec::new(t.cluster.client_url(1), auth("app"), 20))
        .await
        .unwrap();
    let sys_before = connz_of(&t.cluster, ALL, "SYS", "sys").len();
    assert!(sys_before >= 2, "connwatch and the subscriber");
    let loads = burst(&t.cluster).await;
    assert!(
        wait_until_async(WAIT, || connz_of(&t.cluster, ALL, "APP", "leaky").len()
            == 50)
        .await,
        "leaky never came back to its cap: {} left\n{}",
        connz_of(&t.cluster, ALL, "APP", "leaky").len(),
        t.running.log()
    );
    let kept = connz_of(&t.cluster, ALL, "APP", "leaky");
    let (_, _, adv) = t
        .seen
        .wait_for(0, "connection_cap_enforced", |b| b["user"] == "leaky")
        .await;
    assert_valid(&adv);
    assert_eq!(adv["cap"], 50, "{adv:#}");
    assert_eq!(adv["cap_source"], "user");
    assert_eq!(adv["dry_run"], false);
    assert_eq!(
        (adv["before"].as_u64(), adv["after"].as_u64()),
        (Some(80), Some(50)),
        "{adv:#}"
    );
    let closed: Vec<Listed> = adv["closed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Listed {
            start: parse_time(&c["start"]),
            server_id: c["server_id"].as_str().unwrap().to_string(),
            cid: c["cid"].as_u64().unwrap(),
        })
        .collect();
    assert_eq!(closed.len(), 30, "{adv:#}");
    assert_eq!(adv["closed_more"], 0, "all 30 listed: {adv:#}");
    // The 50 kept are the oldest: each older, by (start, server id, cid), than every one closed.
    assert!(
        kept.last().unwrap() < closed.iter().min().unwrap(),
        "a newer connection was kept: {:?} vs {:?}",
        kept.last(),
        closed.iter().min()
    );
    assert!(closed.iter().all(|c| !kept.contains(c)));
    for c in adv["closed"].as_array().unwrap() {
        assert_eq!(c["name"], "leaky-worker");
        assert_eq!(c["ip"], "127.0.0.1");
        assert!(c["server"].as_str().unwrap().starts_with('n'));
    }
    // Others untouched: the account's other user (under its account cap of 100) and the
    // system account (exempt from its cap of 1).
    assert_eq!(connz_of(&t.cluster, ALL, "APP", "app").len(), 20);
    assert_eq!(app.alive(), 20);
    assert_eq!(connz_of(&t.cluster, ALL, "SYS", "sys").len(), sys_before);
    assert_eq!(
        t.running
            .metric("connwatch_cap_connections_closed_total{dry_run=\"false\"}"),
        Some(30.0)
    );
    assert_eq!(
        t.running
            .metric("connwatch_caps_enforced_total{dry_run=\"false\"}"),
        Some(1.0)
    );
    assert_eq!(
        cap_advisories(&t.seen, "leaky").len(),
        1,
        "one advisory per burst"
    );

    // A gap: n3 freezes; 20 more on n1 are held, not closed.
    t.cluster.pause(2).unwrap();
    assert!(
        wait_until_async(WAIT, || t.running.metric("connwatch_live_complete")
            == Some(0.0))
        .await,
        "a frozen server did not make the view incomplete"
    );
    let on_n1_before = connz_of(&t.cluster, &[0, 1], "APP", "leaky").len();
    let more = load::open(LoadSpec::new(t.cluster.client_url(0), auth("leaky"), 20))
        .await
        .unwrap();
    assert!(
        wait_until_async(WAIT, || t.running.metric("connwatch_cap_users_held")
            == Some(1.0))
        .await,
        "connwatch did not see leaky over its cap during the gap: {}",
        t.running.log()
    );
    assert_eq!(
        connz_of(&t.cluster, &[0, 1], "APP", "leaky").len(),
        on_n1_before + 20,
        "connections were closed during a gap"
    );
    assert_eq!(more.alive(), 20);
    assert_eq!(cap_advisories(&t.seen, "leaky").len(), 1);
    // n3 answers again: a complete sweep, and the 20 newest go.
    t.cluster.resume(2).unwrap();
    assert!(
        wait_until_async(WAIT, || connz_of(&t.cluster, ALL, "APP", "leaky").len()
            == 50)
        .await,
        "not enforced once the view was complete again: {}",
        t.running.log()
    );
    assert!(
        wait_until_async(WAIT, || more.alive() == 0).await,
        "the newest (opened during the gap) were not the ones closed"
    );
    drop(loads);
    assert_eq!(t.running.terminate(), Some(0));
}

/// The same burst in dry run: nothing is closed, the advisory says `dry_run: true` and lists the
/// 30 that would have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_closes_nothing_and_says_what_it_would_close() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), CAPS).await;
    let loads = burst(&t.cluster).await;
    let (_, subject, adv) = t
        .seen
        .wait_for(0, "connection_cap_enforced", |b| b["user"] == "leaky")
        .await;
    assert_valid(&adv);
    assert_eq!(
        subject,
        "connwatch.advisory.connection_cap_enforced.APP.leaky"
    );
    assert_eq!(adv["dry_run"], true);
    assert_eq!(adv["closed"].as_array().unwrap().len(), 30, "{adv:#}");
    assert_eq!(
        (adv["before"].as_u64(), adv["after"].as_u64()),
        (Some(80), Some(50))
    );
    assert!(adv["message"]
        .as_str()
        .unwrap()
        .contains("nothing was closed"));
    // The advisory comes a second after the last decision: anything closed would be gone.
    assert_eq!(connz_of(&t.cluster, ALL, "APP", "leaky").len(), 80);
    assert_eq!(loads.0.alive() + loads.1.alive() + loads.2.alive(), 80);
    assert_eq!(
        t.running
            .metric("connwatch_cap_connections_closed_total{dry_run=\"true\"}"),
        Some(30.0)
    );
    assert_eq!(
        t.running
            .metric("connwatch_cap_connections_closed_total{dry_run=\"false\"}"),
        None
    );
    // `connwatch report` shows the cap beside the threshold.
    let config = dir.path().join("connwatch.toml");
    let config = config.to_str().unwrap();
    let out = run_connwatch(["--config", config, "report", "--format", "json"], WAIT);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let users = report["users"].as_array().unwrap();
    let leaky = users.iter().find(|u| u["user"] == "leaky").unwrap();
    assert_eq!(
        leaky["cap"],
        serde_json::json!({"max_connections": 50, "source": "user", "mode": "dry_run", "over": true})
    );
    let sys = users.iter().find(|u| u["user"] == "sys").unwrap();
    assert!(
        sys.get("cap").is_none(),
        "the system account is never capped: {sys:#}"
    );
    let out = run_connwatch(["--config", config, "report"], WAIT);
    let line = out.stdout.lines().find(|l| l.contains("leaky")).unwrap();
    assert!(line.contains("50 dry-run OVER"), "{}", out.stdout);
}

/// Clients of a real client library (async-nats, reconnecting 100 ms after each close) beyond
/// the cap: the count stays at the cap plus the clients in flight, the closes stay within
/// `enforce.max_kicks_per_sec`, and the churn is reported in the advisory and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_reconnect_keep_hitting_the_cap_within_the_rate_bound() {
    const RATE: f64 = 4.0;
    const CLIENTS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let t = start(
        dir.path(),
        &format!("dry_run = false\nmax_kicks_per_sec = {RATE}\n{CAPS}"),
    )
    .await;
    // The 50 the cap allows, first (the oldest, never closed).
    let steady = load::open(LoadSpec::new(t.cluster.client_url(0), auth("leaky"), 50))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let c = async_nats::ConnectOptions::with_user_and_password("leaky".into(), "pw".into())
            .name(format!("reconnecting-{i}"))
            .retry_on_initial_connect()
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(t.cluster.client_url(i))
            .await
            .unwrap();
        clients.push(c);
    }
    let closed = || {
        t.running
            .metric("connwatch_cap_connections_closed_total{dry_run=\"false\"}")
            .unwrap_or(0.0)
    };
    assert!(
        wait_until_async(WAIT, || closed() >= 1.0).await,
        "no close: {}",
        t.running.log()
    );
    let (c0, t0) = (closed(), Instant::now());
    let mut most = 0;
    // Sample the servers' own counts for a few seconds of churn.
    while t0.elapsed() < Duration::from_secs(6) {
        let n = connz_of(&t.cluster, ALL, "APP", "leaky").len();
        most = most.max(n);
        assert!(
            n <= 50 + CLIENTS,
            "{n} connections: more than the cap plus the clients in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c1, secs) = (closed(), t0.elapsed().as_secs_f64());
    assert!(
        c1 - c0 >= 2.0,
        "the clients stopped reconnecting: {c0} -> {c1}"
    );
    assert!(
        c1 - c0 <= RATE * secs + RATE,
        "{} closes in {secs:.1}s: over the bound of {RATE}/s",
        c1 - c0
    );
    assert!(most >= 50, "the steady 50 were touched");
    assert_eq!(steady.alive(), 50, "the oldest were closed");
    // The churn: an advisory saying the clients keep reconnecting, and the metric.
    let (_, _, adv) = t
        .seen
        .wait_for(0, "reconnecting churn", |b| {
            b["user"] == "leaky" && b["churn"]["reconnecting"] == true
        })
        .await;
    assert_valid(&adv);
    assert!(
        adv["churn"]["closed_last_minute"].as_u64().unwrap() >= 2,
        "{adv:#}"
    );
    assert!(adv["message"]
        .as_str()
        .unwrap()
        .contains("keep reconnecting"));
    assert!(
        t.running
            .metric("connwatch_cap_churn{account=\"APP\",user=\"leaky\"}")
            .unwrap_or(0.0)
            >= 2.0
    );
    // Some closes were put off by the bound (three clients reconnecting every 100 ms want more).
    assert!(
        t.running
            .metric("connwatch_cap_kicks_deferred_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    drop(clients);
}

/// connwatch does not know the system account (its user may ask neither `$SYS.REQ.USER.INFO`
/// nor VARZ): `leaky` over its cap in a complete live view is not closed, round after round,
/// and connwatch says why: `connwatch_cap_users_held` 1, `connwatch_identity_known` 0, and
/// `/readyz` 503 naming the reason; no `connection_cap_enforced` advisory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_system_account_unknown_nothing_over_a_cap_is_closed_and_it_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path()).system_permissions(
        "{publish: {deny: [\"$SYS.REQ.USER.INFO\", \"$SYS.REQ.SERVER.PING.VARZ\"]}}",
    );
    let t = start_with(spec, dir.path(), "1s", &format!("dry_run = false\n{CAPS}")).await;
    let loads = burst(&t.cluster).await;
    assert!(
        wait_until_async(WAIT, || t.running.metric("connwatch_cap_users_held")
            == Some(1.0))
        .await,
        "connwatch did not see leaky over its cap: {}",
        t.running.log()
    );
    // Two more rounds, each with its cap round, over a complete view: still nothing closed.
    for _ in 0..2 {
        let summary = t.sweep().await;
        assert_eq!(summary["partial"], false, "{summary:#}");
    }
    assert_eq!(t.running.metric("connwatch_live_complete"), Some(1.0));
    assert_eq!(connz_of(&t.cluster, ALL, "APP", "leaky").len(), 80);
    assert_eq!(loads.0.alive() + loads.1.alive() + loads.2.alive(), 80);
    assert_eq!(t.running.metric("connwatch_cap_users_held"), Some(1.0));
    assert_eq!(t.running.metric("connwatch_identity_known"), Some(0.0));
    let (code, body) = testkit::cluster::http_get(t.running.metrics_addr(), "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("caps are enforced") && body.contains("system account is unknown"),
        "{body}"
    );
    assert!(cap_advisories(&t.seen, "leaky").is_empty());
    assert_eq!(
        t.running
            .metric("connwatch_cap_connections_closed_total{dry_run=\"false\"}"),
        None
    );
}

/// n3 restarts while `leaky` holds its cap of 50, 30 of them on n3 (the oldest), and 30 more
/// open on n1 at once. n3's 30 died with it (no disconnect events), so leaky really holds 50:
/// a view that still counted them would close 30 live connections. Whoever notices the
/// restart first (n3's first heartbeat under its new id, or the servers asked just before the
/// closes, with `live.heartbeat_margin` an hour so no quiet server is asked), it is a gap, and
/// nothing is closed before the view is complete again; then nothing needs to be: leaky's 50
/// stay open, no advisory. Then 10 more: exactly those are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_servers_dead_connections_close_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_with(
        spec(dir.path()),
        dir.path(),
        "1h",
        &format!("dry_run = false\n{CAPS}"),
    )
    .await;
    let urls: Vec<String> = (0..3).map(|i| t.cluster.client_url(i)).collect();
    let open = |i: usize, n: usize| {
        load::open(LoadSpec::new(urls[i].clone(), auth("leaky"), n).name("leaky-worker"))
    };
    let on_n3 = open(2, 30).await.unwrap();
    let older = open(0, 20).await.unwrap();
    assert!(
        wait_until_async(WAIT, || t
            .running
            .metric("connwatch_user_connections{account=\"APP\",user=\"leaky\"}")
            == Some(50.0))
        .await,
        "{}",
        t.running.log()
    );
    t.cluster.restart(2).unwrap();
    let burst = open(0, 30).await.unwrap();
    assert!(
        wait_until_async(WAIT, || on_n3.alive() == 0).await,
        "n3's connections outlived its restart"
    );
    // The round after a complete sweep that began after the restart.
    assert!(
        eventually(WAIT, || async {
            t.sweep().await["partial"] == false
                && t.running.metric("connwatch_live_complete") == Some(1.0)
        })
        .await,
        "{}",
        t.running.log()
    );
    t.sweep().await;
    assert_eq!(
        t.running
            .metric("connwatch_user_connections{account=\"APP\",user=\"leaky\"}"),
        Some(50.0),
        "the view still counts the restarted server's dead connections"
    );
    assert_eq!(connz_of(&t.cluster, ALL, "APP", "leaky").len(), 50);
    assert_eq!(
        (older.alive(), burst.alive()),
        (20, 30),
        "live connections closed"
    );
    assert!(cap_advisories(&t.seen, "leaky").is_empty());
    // Over the cap for real now: the 10 newest go, and only they.
    let newest = open(1, 10).await.unwrap();
    assert!(
        wait_until_async(WAIT, || newest.alive() == 0).await,
        "not enforced on the complete view: {}",
        t.running.log()
    );
    let (_, _, adv) = t
        .seen
        .wait_for(0, "connection_cap_enforced", |b| b["user"] == "leaky")
        .await;
    assert_eq!(
        (adv["before"].as_u64(), adv["after"].as_u64()),
        (Some(60), Some(50)),
        "{adv:#}"
    );
    assert_eq!((older.alive(), burst.alive()), (20, 30));
    assert_eq!(connz_of(&t.cluster, ALL, "APP", "leaky").len(), 50);
}
