//! Edges of the census on real 3-node clusters: account names with dots in the live census, and
//! connections a server lists before they authenticate.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// `connwatch run` on `cluster` with sweeps an hour apart (only the first one, and those a gap
/// starts, run), the live census on and metrics; ready once the view is complete.
async fn run_live(cluster: &Cluster, dir: &std::path::Path) -> Running {
    let path = write_config(
        dir,
        &format!(
            "{}[sweep]\ninterval = \"1h\"\n[live]\nreconcile_interval = \"1h\"\nmax_event_rate = 0\n\
             [detect]\nidle_threshold = \"10ms\"\n[metrics]\nlisten = \"{}\"\nuser_floor = 1\n\
             [service]\nsweep_min_interval = \"0s\"\n",
            connwatch_toml_on(cluster, 0),
            free_addr()
        ),
    );
    Running::start_live(&path, dir.join("run.log")).await
}

/// An account whose name holds a dot (`team.a`, allowed in config mode) publishes its events on
/// `$SYS.ACCOUNT.team.a.CONNECT`, five tokens: the live census follows them by the payload's
/// account, so its leak fires and resolves from the events alone, with no sweep (before, its
/// events were skipped by their token count and the leak waited for the next sweep, here an
/// hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_name_with_dots_is_followed_live() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("team.a").user("leaky", "pw")),
    )
    .unwrap();
    let running = run_live(&cluster, dir.path()).await;
    let (seen, client) = Seen::subscribe(&cluster.client_url(1)).await;
    let sweeps = running.metric("connwatch_sweeps_total").unwrap();

    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(2),
            LoadAuth::user_password("leaky", "pw"),
            120,
        )
        .name("leaky-worker"),
    )
    .await
    .unwrap();
    let (i, _, fired) = seen
        .wait_for(
            0,
            "excessive",
            advisory_is("excessive_user_connections", "firing"),
        )
        .await;
    assert_valid(&fired);
    assert_eq!(
        (fired["account"].as_str(), fired["user"].as_str()),
        (Some("team.a"), Some("leaky"))
    );
    assert!(fired["connections"].as_u64().unwrap() > 100, "{fired:#}");
    assert_eq!(
        running.metric("connwatch_sweeps_total"),
        Some(sweeps),
        "a sweep ran: the finding did not come from the events"
    );
    // The census endpoint serves the live count: all 120, on n3.
    assert!(
        eventually(WAIT, || async {
            let census = call(
                &client,
                "connwatch.census",
                r#"{"account":"team.a","user":"leaky"}"#,
            )
            .await
            .unwrap_or_default();
            census["users"][0]["by_server"] == serde_json::json!({ "n3": 120 })
        })
        .await
    );
    leak.close().await;
    seen.wait_for(
        i + 1,
        "resolved",
        advisory_is("excessive_user_connections", "resolved"),
    )
    .await;
    assert_eq!(running.metric("connwatch_sweeps_total"), Some(sweeps));
    assert_eq!(running.terminate(), Some(0));
}

/// Keeps `n` raw TCP connections to `addr` that never send CONNECT, opening `n` fresh ones every
/// 300 ms (well within the servers' 2 s `auth_timeout`): a burst of connects that are always
/// accepted but not yet authenticated, until the returned flag is set.
fn unauthenticated_burst(addr: std::net::SocketAddr, n: usize) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            let held: Vec<_> = (0..n)
                .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        }
    });
    stop
}

/// In operator (JWT) mode, a server lists a connection from the moment it accepts it, in `$G`
/// with no user, until its CONNECT is authorized. Under a burst of such connections (40 on n2,
/// renewed every 300 ms) they are nobody's: no user `$G`/"" in the census, so no
/// `excessive_user_connections` for it (its threshold here is 20), while the real user is
/// counted exactly; `report` says how many were pending (`sweep.pending_connections`) and
/// `run` shows it in `connwatch_pending_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_yet_authenticated_are_nobodys() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .mode(AuthMode::Operator)
            .account(AccountSpec::new("APP").user("app", "")),
    )
    .unwrap();
    let app = LoadAuth::from_creds_file(cluster.creds_path("APP", "app").unwrap()).unwrap();
    let _app = load::open(LoadSpec::new(cluster.client_url(0), app, 10).name("app"))
        .await
        .unwrap();
    let stop = unauthenticated_burst(cluster.client_addr(1), 40);
    // Each sweep sees the burst (CONNZ lists them); before, every round's census held a user
    // `$G`/"" with ~40 connections.
    let assert_nobodys = |users: &Value| {
        let users = users.as_array().unwrap();
        assert!(
            !users
                .iter()
                .any(|u| u["user"] == "" || u["account"] == "$G"),
            "a pending connection counted as a user's: {users:#?}"
        );
        let app = users.iter().find(|u| u["user_name"] == "app").unwrap();
        assert_eq!(app["connections"], 10, "{app:#}");
    };
    let path = write_config(
        dir.path(),
        &format!(
            "{}[sweep]\ninterval = \"300ms\"\n[live]\nreconcile_interval = \"300ms\"\nmax_event_rate = 0\n\
             [detect]\nmax_connections_per_user = 20\n[metrics]\nlisten = \"{}\"\nuser_floor = 1\n\
             [service]\nsweep_min_interval = \"0s\"\n",
            cluster.connwatch_toml(),
            free_addr()
        ),
    );
    let deadline = std::time::Instant::now() + WAIT;
    let report = loop {
        let report = report_json_async(&path).await;
        if report["sweep"]["pending_connections"].as_u64() > Some(0) {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sweep saw the burst: {report:#}"
        );
    };
    assert_eq!(report["sweep"]["partial"], false);
    assert_nobodys(&report["users"]);

    let running = Running::start_live(&path, dir.path().join("run.log")).await;
    let sweeps = running.metric("connwatch_sweeps_total").unwrap();
    assert!(
        wait_until_async(WAIT, || running
            .metric("connwatch_sweeps_total")
            .unwrap_or(0.0)
            >= sweeps + 5.0)
        .await,
        "no five sweeps: {}",
        running.log()
    );
    let metrics = running.metrics();
    assert_eq!(
        metric(
            &metrics,
            "connwatch_findings_firing{type=\"excessive_user_connections\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("connwatch_user_connections{account=\"$G\""),
        "{metrics}"
    );
    assert!(
        wait_until_async(WAIT, || running
            .metric("connwatch_pending_connections")
            .unwrap_or(0.0)
            > 0.0)
        .await,
        "no sweep counted the burst as pending"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(running.terminate(), Some(0));
}
