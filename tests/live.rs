//! The live census on a real 3-node cluster: findings from connect and disconnect events alone,
//! gaps (a silent server, connwatch's own reconnect, a restarted server) that hold resolves and
//! resync with a sweep, and counts that stay exact under churn with sweeps in between.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::*;
use testkit::cluster::http_get;

const WAIT: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn metric(listen: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, text) = http_get(listen, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn call(client: &async_nats::Client, subject: &str, body: &str) -> Value {
    let msg = client
        .request(subject.to_string(), Bytes::from(body.to_string()))
        .await
        .unwrap();
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|_| serde_json::json!({ "error": format!("{:?}", msg.headers) }))
}

fn is(kind: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
}

/// A cluster with `APP/leaky` and `APP/app`, connwatch running with sweeps an hour apart (only
/// the first one, and those a gap starts, run), metrics on; ready after its first round.
struct Live {
    cluster: Cluster,
    running: Running,
    listen: SocketAddr,
    seen: Seen,
    client: async_nats::Client,
}

async fn start(dir: &std::path::Path, extra: &str) -> Live {
    start_reconciling(dir, "1h", extra).await
}

impl Live {
    /// 150 connections of `APP/leaky` on n1; returns them and the position of the
    /// `excessive_user_connections` firing they caused.
    async fn leak_fires(&mut self) -> (load::Load, usize) {
        let leak =
            load::open(LoadSpec::new(self.cluster.client_url(0), auth("leaky"), 150).name("w"))
                .await
                .unwrap();
        let (i, _, _) = self
            .seen
            .wait_for(0, "excessive", is("excessive_user_connections", "firing"))
            .await;
        (leak, i)
    }

    /// With n3 frozen: nothing resolved yet; then n3 resumes and the finding fired at `i`
    /// resolves.
    async fn resolves_only_after_resume(&mut self, i: usize) {
        assert!(
            !self
                .seen
                .all()
                .iter()
                .any(|(_, b)| is("excessive_user_connections", "resolved")(b)),
            "resolved while the view was incomplete"
        );
        self.cluster.resume(2).unwrap();
        self.resolved_after(i).await;
    }

    /// Waits for the `excessive_user_connections` resolve after the firing at `i`.
    async fn resolved_after(&self, i: usize) {
        self.seen
            .wait_for(
                i + 1,
                "resolved",
                is("excessive_user_connections", "resolved"),
            )
            .await;
    }
}

/// [`start`] with full sweeps every `reconcile` while the view is complete.
async fn start_reconciling(dir: &std::path::Path, reconcile: &str, extra: &str) -> Live {
    start_probing(dir, reconcile, "1s", extra).await
}

/// [`start_reconciling`] with `live.heartbeat_margin = margin`: a server is asked directly
/// once quiet for its heartbeat period (10 s) plus `margin`.
async fn start_probing(dir: &std::path::Path, reconcile: &str, margin: &str, extra: &str) -> Live {
    start_on(dir, 0, reconcile, margin, extra).await
}

/// [`start_probing`] with connwatch attached to server `on` only.
async fn start_on(
    dir: &std::path::Path,
    on: usize,
    reconcile: &str,
    margin: &str,
    extra: &str,
) -> Live {
    start_with(dir, on, "", reconcile, margin, extra).await
}

/// [`start_on`] with `sweep` more lines in `[sweep]`.
async fn start_with(
    dir: &std::path::Path,
    on: usize,
    sweep: &str,
    reconcile: &str,
    margin: &str,
    extra: &str,
) -> Live {
    let cluster = Cluster::start(
        ClusterSpec::new(dir.join("cluster")).account(
            AccountSpec::new("APP")
                .user("leaky", "pw")
                .user("app", "pw"),
        ),
    )
    .unwrap();
    let listen = free_addr();
    // Attached to one server (n1 unless a test restarts connwatch's own): the faults below
    // freeze and restart the other servers. Following the events at any rate
    // (`max_event_rate = 0`): the flood below is over the default limit's minute when it runs
    // fast; the limit has its own test (`tests/live_events.rs`).
    let toml = connwatch_toml_on(&cluster, on);
    let path = write_config(
        dir,
        &format!(
            "{}[sweep]\ninterval = \"1h\"\ntimeout = \"1s\"\n{sweep}[live]\nreconcile_interval = \"{reconcile}\"\nheartbeat_margin = \"{margin}\"\nmax_event_rate = 0\n\
             [detect]\nidle_threshold = \"10ms\"\n[metrics]\nlisten = \"{listen}\"\nuser_floor = 1\n\
             [service]\nsweep_min_interval = \"0s\"\n{extra}",
            toml
        ),
    );
    let running = Running::start_live(&path, dir.join("run.log")).await;
    let (seen, client) = Seen::subscribe(&cluster.client_url(1)).await;
    Live {
        cluster,
        running,
        listen,
        seen,
        client,
    }
}

fn auth(user: &str) -> LoadAuth {
    LoadAuth::user_password(user, "pw")
}

/// The live census's per-server counts of one user (`connwatch.census`).
async fn live_by_server(client: &async_nats::Client, user: &str) -> BTreeMap<String, u64> {
    let census = call(
        client,
        "connwatch.census",
        &format!(r#"{{"account":"APP","user":"{user}"}}"#),
    )
    .await;
    census["users"]
        .get(0)
        .and_then(|u| serde_json::from_value(u["by_server"].clone()).ok())
        .unwrap_or_default()
}

type ByUser = BTreeMap<(String, String), BTreeMap<String, u64>>;

/// The live census's per-server counts of every user (`connwatch.census`).
async fn all_live_by_server(client: &async_nats::Client) -> ByUser {
    let census = call(client, "connwatch.census", r#"{"top":0}"#).await;
    let mut out = ByUser::new();
    for u in census["users"].as_array().into_iter().flatten() {
        let key = (
            u["account"].as_str().unwrap_or_default().to_string(),
            u["user"].as_str().unwrap_or_default().to_string(),
        );
        out.insert(
            key,
            serde_json::from_value(u["by_server"].clone()).unwrap_or_default(),
        );
    }
    out
}

/// Each server's own `/connz` counts of every user, by server name.
fn all_connz_by_server(cluster: &Cluster) -> ByUser {
    let mut out = ByUser::new();
    for i in 0..cluster.len() {
        for (key, n) in cluster.connz_counts(i).unwrap_or_default() {
            out.entry(key)
                .or_default()
                .insert(cluster.server_name(i).to_string(), n);
        }
    }
    out
}

/// Each server's own `/connz` counts of one user, by server name.
fn connz_by_server(cluster: &Cluster, user: &str) -> BTreeMap<String, u64> {
    (0..cluster.len())
        .filter_map(|i| {
            let n = *cluster
                .connz_counts(i)
                .ok()?
                .get(&("APP".to_string(), user.to_string()))?;
            Some((cluster.server_name(i).to_string(), n))
        })
        .collect()
}

/// A leak crossing its threshold fires from the events, with no sweep in between, and still
/// carries its suspects and diagnosis (from the user's own CONNZ read); closing it resolves
/// from the events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_fires_and_resolves_from_events_alone_with_its_details() {
    let dir = tempfile::tempdir().unwrap();
    let live = start(dir.path(), "").await;
    // Another user of the same account on the same server: a user's CONNZ read must not take
    // the account's count on a server (CONNZ's `total` when filtered by user) for the user's.
    let _neighbour =
        load::open(LoadSpec::new(live.cluster.client_url(2), auth("app"), 20).name("app"))
            .await
            .unwrap();
    let sweeps = metric(live.listen, "connwatch_sweeps_total").unwrap();
    let leak = load::open(
        LoadSpec::new(live.cluster.client_url(2), auth("leaky"), 120).name("leaky-worker"),
    )
    .await
    .unwrap();
    let (i, _, fired) = live
        .seen
        .wait_for(0, "excessive", is("excessive_user_connections", "firing"))
        .await;
    assert_valid(&fired);
    assert_eq!(fired["user"], "leaky");
    assert!(fired["connections"].as_u64().unwrap() > 100, "{fired:#}");
    assert_eq!(fired["sweep"]["partial"], false);
    assert!(
        !fired["suspects"].as_array().unwrap().is_empty(),
        "no suspects: the user's connections were not read in detail: {fired:#}"
    );
    assert!(
        fired["diagnosis"]["summary"]
            .as_str()
            .unwrap()
            .contains("come from one process"),
        "{fired:#}"
    );
    assert_eq!(
        metric(live.listen, "connwatch_sweeps_total"),
        Some(sweeps),
        "a sweep ran: the finding did not come from the events"
    );
    // The census endpoint serves the live view: all 120, on n3.
    assert!(
        eventually(WAIT, || async {
            live_by_server(&live.client, "leaky").await == BTreeMap::from([("n3".into(), 120)])
        })
        .await
    );
    assert_eq!(
        metric(
            live.listen,
            "connwatch_user_connections{account=\"APP\",user=\"leaky\"}"
        ),
        Some(120.0)
    );
    leak.close().await;
    live.resolved_after(i).await;
    assert_eq!(metric(live.listen, "connwatch_sweeps_total"), Some(sweeps));
    assert_eq!(live.running.terminate(), Some(0));
}

/// With the view complete, full sweeps run every `live.reconcile_interval`, whatever
/// `sweep.interval` is (here an hour), and the view stays complete through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_view_is_reconciled_every_reconcile_interval() {
    let dir = tempfile::tempdir().unwrap();
    let live = start_reconciling(dir.path(), "300ms", "").await;
    let sweeps = metric(live.listen, "connwatch_sweeps_total").unwrap();
    assert!(
        wait_until_async(WAIT, || metric(live.listen, "connwatch_sweeps_total")
            .unwrap_or(0.0)
            >= sweeps + 3.0)
        .await,
        "no reconciling sweeps every live.reconcile_interval: {}",
        live.running.log()
    );
    assert_eq!(metric(live.listen, "connwatch_live_complete"), Some(1.0));
    assert_eq!(
        metric(live.listen, "connwatch_sweeps_partial_total"),
        Some(0.0)
    );
}

/// A server that stops answering is a gap: the live view is not complete, so a user that drops
/// back under its threshold is NOT resolved, until the server answers again and a complete
/// sweep reconciles the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_holds_resolves_until_a_complete_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = start(dir.path(), "").await;
    let (leak, i) = live.leak_fires().await;
    let gaps = || {
        metric(
            live.listen,
            "connwatch_live_gaps_total{reason=\"server_silent\"}",
        )
    };
    live.cluster.pause(2).unwrap();
    assert!(
        wait_until_async(WAIT, || metric(live.listen, "connwatch_live_complete")
            == Some(0.0))
        .await,
        "a silent server did not make the view incomplete: {}",
        live.running.log()
    );
    assert!(gaps().unwrap_or(0.0) >= 1.0);
    // Noticed by listening: no heartbeat, then no answer to the one direct request (nothing
    // could resolve yet, so no round asked every server).
    assert!(
        metric(
            live.listen,
            "connwatch_live_statsz_requests_total{reason=\"quiet\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        live.running.log()
    );
    assert_eq!(
        metric(
            live.listen,
            "connwatch_live_statsz_requests_total{reason=\"resolve\""
        ),
        None
    );
    // The leak closes: the live census sees it go, but must not resolve.
    leak.close().await;
    assert!(
        eventually(WAIT, || async {
            live_by_server(&live.client, "leaky").await.is_empty()
        })
        .await
    );
    let census = call(&live.client, "connwatch.census", "").await;
    assert_eq!(census["sweep"]["partial"], true, "{census:#}");
    // (The leak, all on n1, also makes APP imbalanced: only the excessive finding counts here.)
    let findings = call(
        &live.client,
        "connwatch.findings",
        r#"{"type": "excessive_user_connections"}"#,
    )
    .await;
    assert_eq!(
        findings["findings"].as_array().unwrap().len(),
        1,
        "{findings:#}"
    );
    // The server answers again: a sweep, complete, and then the resolve.
    live.resolves_only_after_resume(i).await;
    assert_eq!(metric(live.listen, "connwatch_live_complete"), Some(1.0));
}

/// With no direct request to a quiet server for an hour (`live.heartbeat_margin`), a server
/// that froze still holds the resolve: the live round that would resolve asks every server for
/// STATSZ first, the frozen one does not answer, and that is a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_asks_every_server_first_whatever_the_heartbeat_margin() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = start_probing(dir.path(), "1h", "1h", "").await;
    let (leak, i) = live.leak_fires().await;
    live.cluster.pause(2).unwrap();
    leak.close().await;
    assert!(
        wait_until_async(WAIT, || metric(live.listen, "connwatch_live_complete")
            == Some(0.0))
        .await,
        "the frozen server was not noticed before the resolve: {}",
        live.running.log()
    );
    assert!(
        metric(
            live.listen,
            "connwatch_live_gaps_total{reason=\"server_silent\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    live.resolves_only_after_resume(i).await;
}

/// While a finding fires, live rounds (here from another user's churn) ask the servers nothing:
/// only the round that would resolve it asks every server for STATSZ, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_finding_asks_the_servers_nothing_until_it_would_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = start(dir.path(), "").await;
    let listen = live.listen;
    let asked = |reason: &str| {
        metric(
            listen,
            &format!("connwatch_live_statsz_requests_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (leak, i) = live.leak_fires().await;
    let events = metric(live.listen, "connwatch_live_events_total").unwrap();
    // Twenty rounds of churn by `app`, each applied by the live census (a live round each).
    for round in 0..20 {
        let server = live.cluster.client_url(round % 3);
        let l = load::open(LoadSpec::new(server, auth("app"), 3).name("churn"))
            .await
            .unwrap();
        l.close().await;
    }
    assert!(
        wait_until_async(WAIT, || metric(live.listen, "connwatch_live_events_total")
            .unwrap_or(0.0)
            >= events + 120.0)
        .await,
        "the churn's events were not applied: {}",
        live.running.log()
    );
    assert_eq!(
        asked("resolve"),
        0.0,
        "a live round asked every server while nothing resolved"
    );
    leak.close().await;
    live.resolved_after(i).await;
    assert!(
        asked("resolve") >= 1.0,
        "resolved without asking every server first"
    );
}

/// connwatch's own connection is closed (kicked by the server): a `reconnect` gap, a sweep after
/// the reconnect, and the view complete again with what changed while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_reconnect_resyncs_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let live = start(dir.path(), "").await;
    let sweeps = metric(live.listen, "connwatch_sweeps_total").unwrap();
    // Find connwatch's connection by its client name on each server and kick it.
    let mut kicked = false;
    for i in 0..live.cluster.len() {
        let connz = live.cluster.monitor_get(i, "/connz?limit=10000").unwrap();
        let id = live.cluster.monitor_get(i, "/varz").unwrap()["server_id"]
            .as_str()
            .unwrap()
            .to_string();
        for c in connz["connections"].as_array().unwrap() {
            if c["name"] == "connwatch" {
                let body = format!(r#"{{"cid":{}}}"#, c["cid"]);
                live.client
                    .request(format!("$SYS.REQ.SERVER.{id}.KICK"), Bytes::from(body))
                    .await
                    .unwrap();
                kicked = true;
            }
        }
    }
    assert!(kicked, "connwatch's connection not found");
    assert!(
        wait_until_async(WAIT, || {
            metric(
                live.listen,
                "connwatch_live_gaps_total{reason=\"reconnect\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
                && metric(live.listen, "connwatch_sweeps_total").unwrap_or(0.0) > sweeps
                && metric(live.listen, "connwatch_live_complete") == Some(1.0)
        })
        .await,
        "no resync after the reconnect: {}",
        live.running.log()
    );
}

/// A restarted server (new id; its clients dropped) is a gap, and the sweep after it makes the
/// view equal its own `/connz` again. By construction: the restarted server sends its STATSZ
/// heartbeat 250 ms after it starts, under an id the view does not hold, a `server_new` gap at
/// once. (It was ignored as an open bug while the gap depended on a probe every few seconds:
/// in about one run in five no gap followed; 20 runs in a row green since.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_a_gap_and_the_view_resyncs() {
    restart_is_a_gap_and_the_view_resyncs(0).await;
}

/// The same when the server restarted is connwatch's own: its `reconnect` gap's sweep may be
/// the first to hear the new id (the bug that made the test above fail about one run in five
/// when connwatch's connection had moved to n2: no `server_new` gap was counted, the restart
/// was only a reconnect). A new id is a `server_new` gap whoever hears it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connwatchs_own_server_restarted_is_a_gap_and_the_view_resyncs() {
    restart_is_a_gap_and_the_view_resyncs(1).await;
}

/// Connections on n2, then n2 restarts, with connwatch attached to server `on`: a
/// `server_new` or `server_silent` gap, and a sweep after it drops the old id's connections.
async fn restart_is_a_gap_and_the_view_resyncs(on: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut live = start_on(dir.path(), on, "1h", "1s", "").await;
    // Connections on n2, then n2 restarts: they are gone (no disconnect events from a killed
    // server), and the view must drop them.
    let on_n2 = load::open(LoadSpec::new(live.cluster.client_url(1), auth("app"), 40).name("a"))
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || async {
            live_by_server(&live.client, "app").await == BTreeMap::from([("n2".into(), 40)])
        })
        .await
    );
    // The old id goes silent and/or the new one appears first (to the probe or to a sweep):
    // either is a gap, and a sweep after it drops the old id's connections.
    let gaps = || {
        ["server_new", "server_silent"]
            .iter()
            .map(|r| {
                metric(
                    live.listen,
                    &format!("connwatch_live_gaps_total{{reason=\"{r}\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let before = gaps();
    let sweeps = metric(live.listen, "connwatch_sweeps_total").unwrap();
    live.cluster.restart(1).unwrap();
    assert!(
        wait_until_async(WAIT, || gaps() > before).await,
        "no gap for the restart: {}",
        live.running.log()
    );
    assert!(
        eventually(WAIT, || async {
            metric(live.listen, "connwatch_sweeps_total").unwrap_or(0.0) > sweeps
                && metric(live.listen, "connwatch_live_complete") == Some(1.0)
                && live_by_server(&live.client, "app").await
                    == connz_by_server(&live.cluster, "app")
        })
        .await,
        "the view kept a restarted server's connections: {:?} vs {:?}\n{}",
        live_by_server(&live.client, "app").await,
        connz_by_server(&live.cluster, "app"),
        live.running.log()
    );
    drop(on_n2);
}

/// Connections opened and closed on all three servers while sweeps run (requested through the
/// `sweep` endpoint during the churn): afterwards the live census equals every server's own
/// `/connz`, user by user and server by server (the one-second figure is measured by the bench, not here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_under_churn_with_sweeps_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let live = start(dir.path(), "").await;
    // The first sweep, of a cluster whose size nobody knew yet, was bounded: its lists went
    // over as they came. Those counted from here on are the PING sweeps'.
    let taken = || metric(live.listen, "connwatch_live_lists_taken_total").unwrap_or(0.0);
    let before = taken();
    let summaries = churn_with_sweeps_stays_exact(&live).await;
    // One PING (and its STATSZ) per sweep: no list is taken before the sweep ends, but a server
    // read again (its list grew past the PING's headroom) after who is who was settled.
    let rereads: u64 = summaries
        .iter()
        .map(|s| s["requests"].as_u64().unwrap() - 2)
        .sum();
    assert_eq!(taken() - before, rereads as f64, "{summaries:#?}");
}

/// The same with bounded sweeps (`sweep.max_in_flight = 1`: one STATSZ, then a directed read
/// of each server in turn): the view takes each server's list as it comes, while the events
/// keep coming and the other servers are still read, and the counts are as exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_under_churn_when_the_view_takes_each_list_as_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let live = start_with(dir.path(), 0, "max_in_flight = 1\n", "1h", "1s", "").await;
    let summaries = churn_with_sweeps_stays_exact(&live).await;
    // One STATSZ, then a directed read of each server (and another if its list grew past
    // the headroom).
    assert!(
        summaries.iter().all(|s| s["requests"].as_u64() >= Some(4)),
        "{summaries:#?}"
    );
    // Three sweeps under churn (and the first): at least one list a sweep taken as it came.
    let taken = metric(live.listen, "connwatch_live_lists_taken_total").unwrap_or(0.0);
    assert!(taken >= 4.0, "lists taken as they came: {taken}");
}

/// Churn on every server while three sweeps run (requested through the `sweep` endpoint):
/// afterwards the live census equals every server's own `/connz`. Returns the sweeps'
/// summaries.
async fn churn_with_sweeps_stays_exact(live: &Live) -> Vec<Value> {
    // A system-account connection to every server, so each announces its system account too
    // (servers announce an account's count on a change, else every 30 s).
    let mut sys = Vec::new();
    for i in 0..live.cluster.len() {
        sys.push(
            async_nats::ConnectOptions::with_user_and_password(
                "sys".into(),
                "sys-dev-password".into(),
            )
            .connect(live.cluster.client_url(i))
            .await
            .unwrap(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut churners = Vec::new();
    for (i, user) in [(0, "leaky"), (1, "app"), (2, "leaky"), (2, "app")] {
        let (url, stop) = (live.cluster.client_url(i), stop.clone());
        churners.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(c) =
                    async_nats::ConnectOptions::with_user_and_password(user.into(), "pw".into())
                        .connect(&url)
                        .await
                else {
                    continue;
                };
                held.push(c);
                n += 1;
                // Keep some, close others: a third of the opens stay.
                if n % 3 != 0 {
                    let c = held.swap_remove((n as usize * 7) % held.len());
                    drop(c);
                }
            }
            held
        }));
    }
    let mut summaries = Vec::new();
    for _ in 0..3 {
        // Each sweep with events arriving before, during and after it.
        let events = metric(live.listen, "connwatch_live_events_total").unwrap_or(0.0);
        assert!(
            wait_until_async(WAIT, || {
                metric(live.listen, "connwatch_live_events_total").unwrap_or(0.0) >= events + 100.0
            })
            .await
        );
        let summary = call(&live.client, "connwatch.sweep", "").await;
        assert!(
            summary["servers_expected"].as_u64().is_some(),
            "{summary:#}"
        );
        summaries.push(summary);
    }
    stop.store(true, Ordering::Relaxed);
    let mut held = Vec::new();
    for c in churners {
        held.extend(c.await.unwrap());
    }
    assert!(held.len() > 10, "too little churn");
    // Every user, not only the churning ones: a connection counted under the wrong user (or a
    // phantom one) shows here.
    assert!(
        eventually(WAIT, || async {
            let oracle = all_connz_by_server(&live.cluster);
            oracle.contains_key(&("APP".into(), "leaky".into()))
                && all_live_by_server(&live.client).await == oracle
        })
        .await,
        "live {:#?}\nvs connz {:#?}\n{}",
        all_live_by_server(&live.client).await,
        all_connz_by_server(&live.cluster),
        live.running
            .log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(metric(live.listen, "connwatch_live_complete"), Some(1.0));
    // The servers' own counts (`$SYS.ACCOUNT.*.SERVER.CONNS`) are taken in: what each server
    // announced last, over its accounts, is its `/connz` outside `$G` (which is never
    // announced); and they never disagreed with the view for long.
    assert!(
        eventually(WAIT, || async {
            (0..live.cluster.len()).all(|i| {
                let name = live.cluster.server_name(i);
                let oracle: u64 = live
                    .cluster
                    .connz_counts(i)
                    .unwrap_or_default()
                    .iter()
                    .filter(|((acc, _), _)| acc != "$G")
                    .map(|(_, n)| n)
                    .sum();
                metric(
                    live.listen,
                    &format!("connwatch_live_announced_connections{{server=\"{name}\"}}"),
                ) == Some(oracle as f64)
            })
        })
        .await,
        "announced counts never matched /connz:\n{}",
        http_get(live.listen, "/metrics").unwrap().1
    );
    assert_eq!(
        metric(live.listen, "connwatch_live_mismatches_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            live.listen,
            "connwatch_live_gaps_total{reason=\"count_mismatch\"}"
        ),
        None
    );
    drop(held);
    drop(sys);
    summaries
}

/// An event flood: ~4,200 connections opened and closed as fast as the load generator can, on
/// all three servers at once (about 8,400 connect and disconnect events, plus the servers'
/// account counts). connwatch keeps up: no slow consumer (the subscription's buffer holds
/// 65,536 messages; the event task parses each event once), no gap, and afterwards the census
/// equals every server's own `/connz`, every user server by server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_is_followed_without_a_slow_consumer_and_counts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let live = start(dir.path(), "").await;
    let events = metric(live.listen, "connwatch_live_events_total").unwrap_or(0.0);
    let t0 = std::time::Instant::now();
    let mut floods = Vec::new();
    for i in 0..live.cluster.len() {
        let url = live.cluster.client_url(i);
        floods.push(tokio::spawn(async move {
            for _ in 0..2 {
                let load = load::open(LoadSpec::new(url.clone(), auth("app"), 700).name("flood"))
                    .await
                    .unwrap();
                load.close().await;
            }
        }));
    }
    for f in floods {
        f.await.unwrap();
    }
    let churn = t0.elapsed();
    assert!(
        wait_until_async(WAIT, || metric(live.listen, "connwatch_live_events_total")
            .unwrap_or(0.0)
            >= events + 2.0 * 4200.0)
        .await,
        "not every event arrived: {:?} of {}\n{}",
        metric(live.listen, "connwatch_live_events_total"),
        events + 8400.0,
        live.running.log()
    );
    eprintln!(
        "flood: 4,200 connects and 4,200 disconnects in {churn:?} ({:.0} events/s)",
        8400.0 / churn.as_secs_f64()
    );
    assert!(
        eventually(WAIT, || async {
            all_live_by_server(&live.client).await == all_connz_by_server(&live.cluster)
        })
        .await,
        "live {:#?}\nvs connz {:#?}",
        all_live_by_server(&live.client).await,
        all_connz_by_server(&live.cluster)
    );
    assert_eq!(
        metric(live.listen, "connwatch_nats_slow_consumers_total"),
        Some(0.0),
        "connwatch became a slow consumer"
    );
    for reason in ["slow_consumer", "count_mismatch", "reconnect"] {
        assert_eq!(
            metric(
                live.listen,
                &format!("connwatch_live_gaps_total{{reason=\"{reason}\"}}")
            ),
            None,
            "a {reason} gap during the flood: {}",
            live.running.log()
        );
    }
    assert_eq!(metric(live.listen, "connwatch_live_complete"), Some(1.0));
}
