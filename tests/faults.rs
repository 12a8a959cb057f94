//! Faults on a real 3-node cluster, driving the real `connwatch run`: a server killed mid-sweep,
//! paused past `sweep.timeout`, restarted with a new id; connwatch's own server killed; the whole
//! cluster down. In every case: no crash, the sweep is marked partial or failed, nothing resolves
//! and nothing is kicked on partial data, and every advisory is delivered after recovery.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(40);

fn is(kind: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
}

fn pw(user: &str) -> LoadAuth {
    LoadAuth::user_password(user, "pw")
}

/// APP users: `held` (a leak that fires and is never kicked: `kick.protect`), `leaky` (kickable),
/// `big` (many connections, under its own high threshold), `active` (publishing: never kicked).
fn start_cluster(dir: &Path) -> Cluster {
    Cluster::start(
        ClusterSpec::new(dir.join("cluster")).account(
            AccountSpec::new("APP")
                .user("held", "pw")
                .user("leaky", "pw")
                .user("big", "pw")
                .user("active", "pw"),
        ),
    )
    .unwrap()
}

/// Sweep pacing and kick caps of one test.
#[derive(Clone, Copy)]
struct Tuning {
    interval: &'static str,
    page_size: usize,
    max_per_user: usize,
}

const DEFAULT: Tuning = Tuning {
    interval: "400ms",
    page_size: 100,
    max_per_user: 1000,
};

/// Kicks on for real (`dry_run = false`), small pages, short sweeps: the live census on, full
/// sweeps every `sweep.interval` whether its view is complete (`live.reconcile_interval`) or not,
/// so the faults meet both.
fn config(servers: &[String], dir: &Path, t: Tuning) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[nats]\nservers = [{}]\nuser = \"sys\"\npassword = \"sys-dev-password\"\n\
         [sweep]\ninterval = {:?}\ntimeout = \"1s\"\npage_size = {}\n\
         [live]\nreconcile_interval = {:?}\n\
         [detect]\nidle_threshold = \"1s\"\nmax_connections_per_user = 100\n\
         [[detect.overrides]]\naccount = \"APP\"\nuser = \"big\"\nmax_connections = 1000000\n\
         [advisory]\nrenotify = \"1h\"\n\
         [kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
         max_per_sweep = 1000\nmax_per_user = {}\n\
         [[kick.protect]]\naccount = \"APP\"\nuser = \"held\"\n\
         [state]\nfile = {:?}\n",
        servers.join(", "),
        t.interval,
        t.page_size,
        t.interval,
        t.max_per_user,
        dir.join("state.json")
    )
}

/// Rounds finished, partial rounds, failed sweeps (connwatch's metrics).
fn counts(r: &Running) -> (usize, usize, usize) {
    let (rounds, partial) = r.rounds();
    (rounds, partial, r.failed())
}

/// Waits until `n` more rounds were partial or sweeps failed (both count as "not complete").
async fn wait_incomplete(r: &Running, n: usize) {
    let (_, p0, f0) = counts(r);
    assert!(
        wait_until_async(WAIT, || {
            let (_, p, f) = counts(r);
            p + f >= p0 + f0 + n
        })
        .await,
        "no partial or failed sweeps: {}",
        r.log()
    );
}

/// Waits for `n` more complete rounds.
async fn wait_complete(r: &Running, n: usize) {
    let complete = |r: &Running| {
        let (rounds, partial) = r.rounds();
        rounds - partial
    };
    let c0 = complete(r);
    assert!(
        wait_until_async(WAIT, || complete(r) >= c0 + n).await,
        "no complete rounds: {}",
        r.log()
    );
}

/// Nothing connwatch announced was lost (its metrics against what the subscriber got): a round
/// ended with no advisory queued, none was dropped, every advisory the server confirmed
/// (`connwatch_advisories_published_total`) arrived, and every kick counted
/// (`connwatch_kicks_total`) has its `connection_kicked`.
async fn assert_nothing_lost(r: &Running, seen: &Seen) {
    assert!(
        wait_until_async(WAIT, || r.metric("connwatch_advisories_queued")
            == Some(0.0))
        .await,
        "advisories left queued: {}",
        r.metrics()
    );
    let text = r.metrics();
    assert_eq!(
        metric(&text, "connwatch_advisories_dropped_total"),
        Some(0.0),
        "{text}"
    );
    let published = metric(&text, "connwatch_advisories_published_total").unwrap() as usize;
    assert!(published > 0, "no advisory published: {text}");
    let delivered = || {
        let ids: std::collections::HashSet<String> = seen
            .all()
            .iter()
            .filter_map(|(_, b)| b["id"].as_str().map(str::to_string))
            .collect();
        ids.len()
    };
    assert!(
        wait_until_async(WAIT, || delivered() >= published).await,
        "{published} advisories published, {} arrived: {:#?}",
        delivered(),
        seen.all()
    );
    let kicks = metric_sum(&text, "connwatch_kicks_total").unwrap_or(0.0) as usize;
    assert!(
        wait_until_async(WAIT, || seen.of("connection_kicked").len() >= kicks).await,
        "{kicks} kicks counted, {} kick advisories",
        seen.of("connection_kicked").len()
    );
}

/// Waits until the latest round (the service's `connwatch.census`) is partial and names
/// `server` among the servers whose connections are not counted (`missing` or `errors`).
async fn wait_named_missing(client: &async_nats::Client, server: &str) {
    let names = |sweep: &Value| {
        let missing = sweep["missing"].as_array().cloned().unwrap_or_default();
        let errors = sweep["errors"].as_array().cloned().unwrap_or_default();
        sweep["partial"] == true
            && (missing.iter().any(|m| m == server) || errors.iter().any(|e| e["server"] == server))
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let census = call(client, "connwatch.census", "").await;
        if census.as_ref().is_ok_and(|c| names(&c["sweep"])) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{server} never named missing: {census:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No kick happened during the fault, no `held` resolution, and the leak is intact.
fn assert_nothing_acted_on(seen: &Seen, kicks_before: usize, leaky: &Load, n: usize) {
    assert_eq!(
        seen.of("connection_kicked").len(),
        kicks_before,
        "kicked on partial data: {:#?}",
        seen.of("connection_kicked")
    );
    assert!(
        !seen
            .all()
            .iter()
            .any(|(_, b)| is("excessive_user_connections", "resolved")(b)),
        "resolved on partial data: {:#?}",
        seen.all()
    );
    assert_eq!(leaky.alive(), n, "a connection was closed during the fault");
}

/// After recovery: the held finding resolves on a complete sweep, the leak is kicked on complete
/// sweeps only (kicks were enabled all along), nothing is lost, SIGTERM exits 0.
async fn assert_recovers(running: Running, seen: &Seen, leaky: &Load) {
    let (_, _, resolved) = seen
        .wait_for(0, "resolved", |b| {
            is("excessive_user_connections", "resolved")(b) && b["user"] == "held"
        })
        .await;
    assert_eq!(resolved["sweep"]["partial"], false, "{resolved:#}");
    assert_valid(&resolved);
    assert!(
        wait_until_async(WAIT, || leaky.alive() <= 100).await,
        "the leak was not kicked after recovery: {} alive\n{}",
        leaky.alive(),
        running.log()
    );
    for k in seen.of("connection_kicked") {
        assert_valid(&k);
        assert_eq!(
            k["sweep"]["partial"], false,
            "kick on a partial sweep: {k:#}"
        );
        assert_eq!(k["user"], "leaky", "{k:#}");
        assert_eq!(k["dry_run"], false);
    }
    assert_nothing_lost(&running, seen).await;
    assert_eq!(
        running.terminate(),
        Some(0),
        "connwatch did not exit cleanly"
    );
}

/// Index of the server connwatch's own connection (client name `connwatch`) is attached to.
fn attached_to(cluster: &Cluster) -> Option<usize> {
    (0..cluster.len()).find(|&i| {
        cluster.pid(i).is_some()
            && cluster
                .monitor_get(i, "/connz?limit=1000")
                .ok()
                .and_then(|c| c["connections"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|c| c["name"] == "connwatch")
    })
}

/// Common start: `held` (110 on n1) fires on a complete sweep.
async fn start(
    dir: &Path,
    cluster: &Cluster,
    servers: &[String],
    tuning: Tuning,
) -> (Running, Seen, async_nats::Client, Load) {
    let held = load::open(LoadSpec::new(cluster.client_url(0), pw("held"), 110).name("held"))
        .await
        .unwrap();
    let (seen, sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(dir, &config(servers, dir, tuning));
    let running = Running::start(&path, dir.join("run.log"));
    let (_, _, fired) = seen
        .wait_for(0, "firing", |b| {
            is("excessive_user_connections", "firing")(b) && b["user"] == "held"
        })
        .await;
    assert_eq!(fired["sweep"]["partial"], false);
    (running, seen, sub, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_sweep_makes_the_sweep_partial_and_nothing_is_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    // A big server (n3): 1,500 connections, first replies of 20, so each sweep reads it again
    // in one directed request; sweeps run back to back (interval shorter than a sweep).
    let big = load::open(LoadSpec::new(cluster.client_url(2), pw("big"), 1500).name("big"))
        .await
        .unwrap();
    let tuning = Tuning {
        interval: "100ms",
        page_size: 20,
        ..DEFAULT
    };
    let (running, seen, sub, held) =
        start(dir.path(), &cluster, &[cluster.client_url(0)], tuning).await;
    // Killed while sweeps run back to back: before its PING reply it is missing, after it its
    // directed request fails (`connz page failed`); either way none of its connections count.
    // (That a server's connections are counted whole or not at all is shown for any timing by
    // tests/fuzz_replies.rs::pager_keeps_every_surviving_cid_once: the window between the two
    // replies is a few milliseconds and cannot be hit on purpose.)
    let rounds = running.rounds().0;
    assert!(wait_until_async(WAIT, || running.rounds().0 > rounds).await);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.kill(2).unwrap();
    wait_incomplete(&running, 2).await;
    drop(big);
    wait_named_missing(&sub, "n3").await;

    // During the fault: the held leak closes (must not resolve), a new leak opens (must not be
    // kicked), for several partial rounds past min_idle and min_age.
    let kicks_before = seen.of("connection_kicked").len();
    held.close().await;
    let leaky = load::open(LoadSpec::new(cluster.client_url(1), pw("leaky"), 120).name("leaky"))
        .await
        .unwrap();
    wait_incomplete(&running, 5).await;
    assert!(wait_until_async(WAIT, || counts(&running).1 >= 8).await);
    assert_nothing_acted_on(&seen, kicks_before, &leaky, 120);

    cluster.restart(2).unwrap();
    assert_recovers(running, &seen, &leaky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_paused_past_the_timeout_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    let (running, seen, sub, held) =
        start(dir.path(), &cluster, &[cluster.client_url(0)], DEFAULT).await;

    cluster.pause(2).unwrap();
    let kicks_before = seen.of("connection_kicked").len();
    held.close().await;
    let leaky = load::open(LoadSpec::new(cluster.client_url(0), pw("leaky"), 120).name("leaky"))
        .await
        .unwrap();
    // Each round waits sweep.timeout (1 s) for the frozen server: well past min_idle/min_age.
    wait_incomplete(&running, 3).await;
    wait_named_missing(&sub, "n3").await;
    assert_nothing_acted_on(&seen, kicks_before, &leaky, 120);

    cluster.resume(2).unwrap();
    assert_recovers(running, &seen, &leaky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_not_counted_twice_and_gets_no_stale_kicks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    // A leak on n3 kicked slowly (5 a sweep), so kicks are in progress when n3 restarts.
    let leaky = load::open(LoadSpec::new(cluster.client_url(2), pw("leaky"), 200).name("leaky"))
        .await
        .unwrap();
    let tuning = Tuning {
        max_per_user: 5,
        ..DEFAULT
    };
    let (running, seen, _sub, held) =
        start(dir.path(), &cluster, &[cluster.client_url(0)], tuning).await;
    let server_id = |c: &Cluster| {
        c.monitor_get(2, "/varz").unwrap()["server_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let old_id = server_id(&cluster);
    assert!(
        wait_until_async(WAIT, || !seen.of("connection_kicked").is_empty()).await,
        "no kicks before the restart"
    );
    cluster.restart(2).unwrap();
    let restart_at = seen.all().len();
    assert_ne!(old_id, server_id(&cluster), "restart kept the server id");
    drop(leaky); // its connections died with the old n3

    // New connections on the new n3 take low cids again: an active (publishing) client and an
    // idle one under its threshold. A stale plan for the old id must not touch them.
    let active = load::open(
        LoadSpec::new(cluster.client_url(2), pw("active"), 30)
            .name("active")
            .publish_every(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let quiet = load::open(LoadSpec::new(cluster.client_url(2), pw("big"), 40).name("quiet"))
        .await
        .unwrap();
    wait_complete(&running, 4).await;
    for (_, k) in &seen.all()[restart_at..] {
        if k["type"] != "io.connwatch.advisory.v1.connection_kicked" {
            continue;
        }
        assert_ne!(
            k["server_id"],
            old_id.as_str(),
            "stale kick at the old id: {k:#}"
        );
        assert_ne!(k["result"], "failed", "{k:#}");
        assert_eq!(k["user"], "leaky", "{k:#}");
    }
    assert_eq!(active.alive(), 30, "an active connection was kicked");
    assert_eq!(
        quiet.alive(),
        40,
        "a connection under its threshold was kicked"
    );

    // No double counting: the report equals the servers' own connz, one entry per server name.
    let config = dir.path().join("connwatch.toml");
    let report = report_json_async(&config).await;
    assert_eq!(report["sweep"]["partial"], false, "{:#}", report["sweep"]);
    assert_eq!(
        report["sweep"]["servers_expected"], 3,
        "{:#}",
        report["sweep"]
    );
    let mut names: Vec<&str> = report["sweep"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..3 {
        for ((account, user), n) in cluster.connz_counts(i).unwrap() {
            if account == "APP" {
                *truth.entry(user).or_default() += n;
            }
        }
    }
    for u in report["users"].as_array().unwrap() {
        if u["account"] == "APP" {
            let user = u["user"].as_str().unwrap();
            assert_eq!(
                u["connections"].as_u64(),
                truth.get(user).copied(),
                "{user} counted wrong after a restart: {u:#}"
            );
        }
    }
    held.close().await;
    let (_, _, resolved) = seen
        .wait_for(0, "resolved", |b| {
            is("excessive_user_connections", "resolved")(b) && b["user"] == "held"
        })
        .await;
    assert_eq!(resolved["sweep"]["partial"], false);
    assert_nothing_lost(&running, &seen).await;
    assert_eq!(running.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connwatch_reconnects_through_another_url_when_its_server_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    // All three URLs: the client picks one at random. Find it, then keep the loads and the
    // subscriber away from that server.
    let path = write_config(
        dir.path(),
        &config(&cluster.client_urls(), dir.path(), DEFAULT),
    );
    let running = Running::start(&path, dir.path().join("run.log"));
    let mut own = None;
    assert!(
        wait_until_async(WAIT, || {
            own = attached_to(&cluster);
            own.is_some()
        })
        .await,
        "connwatch's connection not found: {}",
        running.log()
    );
    let own = own.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != own).collect();
    let held =
        load::open(LoadSpec::new(cluster.client_url(others[0]), pw("held"), 110).name("held"))
            .await
            .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(others[1])).await;
    let (_, _, fired) = seen
        .wait_for(0, "firing", is("excessive_user_connections", "firing"))
        .await;
    assert_eq!(fired["sweep"]["partial"], false);

    cluster.kill(own).unwrap();
    let kicks_before = seen.of("connection_kicked").len();
    held.close().await;
    let leaky =
        load::open(LoadSpec::new(cluster.client_url(others[1]), pw("leaky"), 120).name("leaky"))
            .await
            .unwrap();
    // It reconnects to a surviving server; sweeps are partial while the dead one is expected.
    assert!(
        wait_until_async(WAIT, || attached_to(&cluster).is_some()).await,
        "connwatch did not reconnect: {}",
        running.log()
    );
    wait_incomplete(&running, 4).await;
    let text = running.metrics();
    for counter in [
        "connwatch_nats_disconnects_total",
        "connwatch_nats_reconnects_total",
    ] {
        assert!(metric(&text, counter).unwrap() >= 1.0, "{counter}: {text}");
    }
    assert_nothing_acted_on(&seen, kicks_before, &leaky, 120);

    cluster.restart(own).unwrap();
    assert_recovers(running, &seen, &leaky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_down_then_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    let (running, seen, sub, held) =
        start(dir.path(), &cluster, &cluster.client_urls(), DEFAULT).await;
    let kicks_before = seen.of("connection_kicked").len();
    let failed_before = running.failed();
    for i in 0..3 {
        cluster.kill(i).unwrap();
    }
    drop(held); // its connections died with the servers

    // Sweeps fail, or are partial with no server answering; connwatch keeps running.
    wait_incomplete(&running, 3).await;
    let text = running.metrics();
    assert!(
        running.failed() > failed_before
            || metric(&text, "connwatch_servers_responded") == Some(0.0),
        "sweeps with the cluster down neither failed nor had no server answering: {text}"
    );

    // Two of three back: partial sweeps, so the held finding stays and a new leak is not kicked.
    cluster.restart(0).unwrap();
    cluster.restart(1).unwrap();
    assert!(
        wait_until_async(WAIT, || sub.connection_state()
            == async_nats::connection::State::Connected)
        .await,
        "the test subscriber did not reconnect"
    );
    let leaky = load::open(LoadSpec::new(cluster.client_url(0), pw("leaky"), 120).name("leaky"))
        .await
        .unwrap();
    // connwatch reconnects with its client's backoff: wait for partial rounds, not just failed ones.
    let partial_before = running.rounds().1;
    assert!(
        wait_until_async(WAIT, || running.rounds().1 >= partial_before + 2).await,
        "no partial rounds with two of three servers back: {}",
        running.log()
    );
    assert_nothing_acted_on(&seen, kicks_before, &leaky, 120);

    // All back: the held finding resolves, the leak is kicked, nothing was lost.
    cluster.restart(2).unwrap();
    assert_recovers(running, &seen, &leaky).await;
}

/// Issue 10 item 4: every server frozen past `sweep.forget_servers_after`, so connwatch no
/// longer expects any: a sweep nobody answers is a failed sweep, never an empty complete one
/// that resolves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_no_server_answers_fails_and_resolves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    let held = load::open(LoadSpec::new(cluster.client_url(0), pw("held"), 110).name("held"))
        .await
        .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let cfg = config(&cluster.client_urls(), dir.path(), DEFAULT)
        .replace("[sweep]\n", "[sweep]\nforget_servers_after = \"1s\"\n");
    let path = write_config(dir.path(), &cfg);
    let running = Running::start(&path, dir.path().join("run.log"));
    seen.wait_for(0, "firing", |b| {
        is("excessive_user_connections", "firing")(b) && b["user"] == "held"
    })
    .await;

    // Frozen, the servers keep their TCP connections: connwatch's client stays connected and
    // its sweeps go out, but nobody answers.
    for i in 0..3 {
        cluster.pause(i).unwrap();
    }
    let ended = |r: &Running| {
        let (rounds, _, failed) = counts(r);
        rounds + failed
    };
    let before = ended(&running);
    // Four sweeps of `sweep.timeout` (1 s) each: the servers are forgotten after the first.
    assert!(
        wait_until_async(WAIT, || ended(&running) >= before + 4).await,
        "sweeps stopped while the cluster was frozen: {}",
        running.log()
    );
    for i in 0..3 {
        cluster.resume(i).unwrap();
    }
    // Whatever was decided while frozen is delivered once the servers run again.
    wait_complete(&running, 3).await;
    let resolved: Vec<Value> = seen
        .all()
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| is("excessive_user_connections", "resolved")(b))
        .collect();
    assert!(
        resolved.is_empty(),
        "resolved while no server answered: {resolved:#?}"
    );
    assert_eq!(held.alive(), 110);
    assert_eq!(running.terminate(), Some(0));
}

/// SIGTERM while kicks are in flight (one server frozen, so its kicks wait for `kick.timeout`):
/// the round finishes its bookkeeping before shutdown. Every connection the servers closed as
/// "Kicked" has its `connection_kicked` advisory, the state file remembers the kicks, and after
/// SIGTERM no new kick starts (the frozen server got at most `kick.concurrency` = 4, not all 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_kicks_loses_no_audit_and_no_kick_memory() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    // n3 (frozen later) holds a few leaked connections, n2 many (paged 20 at a time, which
    // leaves time to freeze n3 after its one-page answer and before the kicks).
    let few = load::open(LoadSpec::new(cluster.client_url(2), pw("leaky"), 10).name("leaky"))
        .await
        .unwrap();
    let many = load::open(LoadSpec::new(cluster.client_url(1), pw("leaky"), 400).name("leaky"))
        .await
        .unwrap();
    let opened = std::time::Instant::now();
    let frozen_id = cluster.monitor_get(2, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let frozen_name = cluster.server_name(2).to_string();
    let (seen, client) = Seen::subscribe(&cluster.client_url(0)).await;
    let mut replies = client.subscribe("_INBOX.>").await.unwrap();
    let mut kicks = client
        .subscribe(format!("$SYS.REQ.SERVER.{frozen_id}.KICK"))
        .await
        .unwrap();
    let n2_id = cluster.monitor_get(1, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut kicks_n2 = client
        .subscribe(format!("$SYS.REQ.SERVER.{n2_id}.KICK"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let state = dir.path().join("state.json");
    let path = write_config(
        dir.path(),
        &format!(
            "[nats]\nservers = [{:?}]\nuser = \"sys\"\npassword = \"sys-dev-password\"\n\
             [sweep]\ninterval = \"1h\"\ntimeout = \"1s\"\npage_size = 20\n\
             [detect]\nidle_threshold = \"1s\"\n\
             [kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
             max_per_sweep = 1000\nmax_per_user = 1000\ntimeout = \"2s\"\nconcurrency = 4\n\
             [state]\nfile = {state:?}\n",
            cluster.client_url(0)
        ),
    );
    // Old and idle enough to be kicked by the first sweep.
    assert!(wait_until_async(WAIT, || opened.elapsed() > Duration::from_millis(1500)).await);
    let running = Running::start(&path, dir.path().join("run.log"));
    // n3's CONNZ and STATSZ answers went by (STATSZ vouches for its CONNZ reply): freeze it,
    // so its kicks hang.
    let answered = tokio::time::timeout(WAIT, async {
        let (mut connz, mut statsz) = (false, false);
        while let Some(m) = replies.next().await {
            let Ok(v) = serde_json::from_slice::<Value>(&plain_payload(&m)) else {
                continue;
            };
            if v["server"]["name"] != frozen_name.as_str() {
                continue;
            }
            connz |= v["data"]["num_connections"].is_u64();
            statsz |= v["statsz"].is_object();
            if connz && statsz {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        answered,
        Ok(true),
        "no CONNZ answer from n3: {}",
        running.log()
    );
    cluster.pause(2).unwrap();
    let kick = tokio::time::timeout(WAIT, kicks.next()).await;
    assert!(
        matches!(kick, Ok(Some(_))),
        "no kick sent to n3: {}",
        running.log()
    );
    // Servers are kicked in parallel: n2's first KICKs leave with n3's. Wait for one on the
    // wire (not for a time) before SIGTERM, so the shutdown finds kicks to both in flight.
    let kick = tokio::time::timeout(WAIT, kicks_n2.next()).await;
    assert!(
        matches!(kick, Ok(Some(_))),
        "no kick sent to n2: {}",
        running.log()
    );
    // Kicks are in flight (n3's wait for kick.timeout): shut down now.
    let log = running.log();
    assert_eq!(running.terminate(), Some(0), "{log}");
    cluster.resume(2).unwrap();

    let audited = || -> std::collections::HashSet<(String, u64)> {
        seen.of("connection_kicked")
            .iter()
            .map(|b| {
                (
                    b["server_id"].as_str().unwrap().to_string(),
                    b["cid"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let closed_as_kicked = |cluster: &Cluster| -> std::collections::HashSet<(String, u64)> {
        (0..3)
            .flat_map(|i| {
                let connz = cluster
                    .monitor_get(i, "/connz?state=closed&limit=10000")
                    .unwrap();
                let id = connz["server_id"].as_str().unwrap().to_string();
                connz["connections"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c["reason"] == "Kicked")
                    .map(move |c| (id.clone(), c["cid"].as_u64().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut missing = Vec::new();
    let all_audited = wait_until_async(WAIT, || {
        let kicked = closed_as_kicked(&cluster);
        let audited = audited();
        missing = kicked.difference(&audited).cloned().collect();
        !kicked.is_empty() && missing.is_empty()
    })
    .await;
    assert!(
        all_audited,
        "{} kicked connections without a connection_kicked advisory: {missing:?}\n{log}",
        missing.len()
    );
    // The load notices its kicked connections close on its own time.
    assert!(
        wait_until_async(WAIT, || many.alive() < 400).await,
        "nothing kicked on n2: {log}"
    );
    let on_frozen = closed_as_kicked(&cluster)
        .iter()
        .filter(|(id, _)| *id == frozen_id)
        .count();
    assert!(
        (1..=4).contains(&on_frozen),
        "{on_frozen} of n3's 10 kicked: kicks went on after SIGTERM\n{log}"
    );
    // The finding the lifecycle marked notified in that round was announced too.
    assert!(
        seen.of("excessive_user_connections")
            .iter()
            .any(|b| b["user"] == "leaky" && b["state"] == "firing"),
        "the round's firing advisory was lost: {log}"
    );
    // The kick memory was saved: one client (leaky, same name and IP) with every kick counted.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let clients = saved["kicked"]["clients"].as_object().unwrap();
    let sent = seen
        .of("connection_kicked")
        .iter()
        .filter(|b| b["result"] == "kicked")
        .count() as u64;
    let remembered: u64 = clients
        .values()
        .filter(|c| c["user"] == "leaky")
        .map(|c| c["kicks"].as_u64().unwrap())
        .sum();
    assert!(sent > 0);
    assert_eq!(remembered, sent, "kick memory: {clients:#?}");
    drop(few);
}
