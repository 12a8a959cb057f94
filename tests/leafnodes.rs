//! A leaf server in an ordinary account only (no system-account remote): the hub's system
//! account does not reach it, so its clients are behind ONE `Leafnode` connection on the hub,
//! counted under the remote's user, and that connection is never kicked unless
//! `kick.leafnodes`. (The leaf that shares the system account: `tests/super_cluster.rs`.)

mod support;

use std::time::Duration;

use support::report_user as user;
use support::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One hub server with users `app` and `leafuser` in APP, and a leaf server attached to it in
/// APP as `leafuser` (no system-account remote).
fn hub_with_an_ordinary_leaf(dir: &std::path::Path) -> Cluster {
    Cluster::start(
        ClusterSpec::new(dir.join("cluster"))
            .servers(1)
            .account(
                AccountSpec::new("APP")
                    .user("app", "app-pw")
                    .user("leafuser", "leaf-pw"),
            )
            .leaf(LeafSpec {
                account: "APP".into(),
                user: "leafuser".into(),
                shares_system: false,
            }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_account_leaf_is_one_leafnode_connection_that_is_not_kicked() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = hub_with_an_ordinary_leaf(dir.path());
    let leaf = cluster.leaf_index().unwrap();
    let app = || LoadAuth::user_password("app", "app-pw");
    let behind = load::open(LoadSpec::new(cluster.client_url(leaf), app(), 5))
        .await
        .unwrap();
    let _hub = load::open(LoadSpec::new(cluster.client_url(0), app(), 3))
        .await
        .unwrap();

    // connwatch talks to the hub only: the leaf is another system.
    let toml = cluster
        .connwatch_toml()
        .replace(&format!(", \"{}\"", cluster.client_url(leaf)), "");
    let config = write_config(dir.path(), &toml);
    let report = report_json_async(&config).await;
    assert_eq!(report["sweep"]["partial"], false, "{report:#}");
    assert_eq!(report["sweep"]["servers_expected"], 1, "{report:#}");
    // The 5 clients behind the leaf are one connection of the remote's user on the hub.
    let remote = user(&report, "APP", "leafuser");
    assert_eq!(remote["connections"], 1, "{report:#}");
    assert_eq!(remote["by_server"]["n1"], 1);
    assert_eq!(user(&report, "APP", "app")["connections"], 3);
    let hub = cluster.connz_counts(0).unwrap();
    assert_eq!(hub[&("APP".to_string(), "leafuser".to_string())], 1);
    assert_eq!(hub[&("APP".to_string(), "app".to_string())], 3);

    // Kicking that Leafnode connection by hand is refused: kick.leafnodes is false.
    let connz = cluster.monitor_get(0, "/connz?auth=true").unwrap();
    let conn = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["authorized_user"] == "leafuser")
        .unwrap_or_else(|| panic!("no leafnode connection in {connz:#}"))
        .clone();
    assert_eq!(conn["kind"], "Leafnode", "{conn:#}");
    let server_id = cluster.monitor_get(0, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cid = conn["cid"].as_u64().unwrap().to_string();
    let c = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_connwatch(
            [
                "--config",
                c.to_str().unwrap(),
                "kick",
                "--server-id",
                &server_id,
                "--cid",
                &cid,
                "--yes",
            ],
            RUN_TIMEOUT,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("leafnode"), "{}", out.stderr);
    assert_eq!(cluster.monitor_get(0, "/leafz").unwrap()["leafnodes"], 1);
    assert_eq!(behind.alive(), 5);
}

/// What CONNZ lists for leafnode connections (checked on 2.15.1: the hub's `/connz` and its
/// CONNZ replies list the leaf's `Leafnode` connection; nats-server lists them since 2.12.0,
/// nats-io/nats-server#6930): reconciling sweeps keep exactly what the hub has. A leaf attached
/// before connwatch started (its connect event never seen, older than any journal) stays
/// through reconciles, once; the leaf gone, its connection goes (the disconnect event); back,
/// it is counted once again, through more reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_keep_exactly_the_leafnode_connections_the_hub_has() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = hub_with_an_ordinary_leaf(dir.path());
    let leaf = cluster.leaf_index().unwrap();
    let toml = cluster
        .connwatch_toml()
        .replace(&format!(", \"{}\"", cluster.client_url(leaf)), "");
    let config = write_config(
        dir.path(),
        &format!(
            "{toml}[sweep]\ninterval = \"1h\"\n[live]\nreconcile_interval = \"300ms\"\nmax_event_rate = 0\n\
             [metrics]\nlisten = \"{}\"\nuser_floor = 1\n[service]\nsweep_min_interval = \"0s\"\n",
            free_addr()
        ),
    );
    let running = Running::start_live(&config, dir.path().join("run.log")).await;
    let (_, client) = Seen::subscribe(&cluster.client_url(0)).await;
    let hub = |cluster: &Cluster| {
        cluster
            .connz_counts(0)
            .unwrap()
            .get(&("APP".to_string(), "leafuser".to_string()))
            .copied()
            .unwrap_or(0)
    };
    let live = || async {
        let census = call(
            &client,
            "connwatch.census",
            r#"{"account":"APP","user":"leafuser"}"#,
        )
        .await
        .unwrap_or_default();
        census["users"][0]["by_server"]["n1"].as_u64().unwrap_or(0)
    };
    let running = &running;
    let reconciles = |n: f64| {
        let from = running.metric("connwatch_sweeps_total").unwrap();
        wait_until_async(Duration::from_secs(30), move || {
            running.metric("connwatch_sweeps_total").unwrap_or(0.0) >= from + n
        })
    };

    assert_eq!(
        hub(&cluster),
        1,
        "the hub's /connz lists the leaf connection"
    );
    assert!(reconciles(3.0).await, "{}", running.log());
    assert_eq!(
        live().await,
        1,
        "a reconcile dropped the leafnode connection"
    );
    assert_eq!(running.metric("connwatch_live_complete"), Some(1.0));

    cluster.kill(leaf).unwrap();
    assert!(eventually(Duration::from_secs(30), || async { live().await == 0 }).await);
    assert_eq!(hub(&cluster), 0);

    cluster.restart(leaf).unwrap();
    assert!(eventually(Duration::from_secs(30), || async { live().await == 1 }).await);
    assert!(reconciles(3.0).await, "{}", running.log());
    assert_eq!(live().await, 1, "counted once through reconciles");
    assert_eq!(hub(&cluster), 1);
}
