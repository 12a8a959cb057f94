//! Proves the development harness (cluster, load generator, minted credentials) against real
//! nats-server processes, so tests built on it can trust what it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use testkit::cluster::{AccountSpec, AuthMode, Cluster, ClusterSpec};
use testkit::load::{self, LoadAuth, LoadSpec};
use testkit::wait_until_async;

const WAIT: Duration = Duration::from_secs(10);

fn counts(entries: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    entries
        .iter()
        .map(|(a, u, n)| ((a.to_string(), u.to_string()), *n))
        .collect()
}

async fn start(spec: ClusterSpec) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(spec))
        .await
        .expect("start task")
        .expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mode_connz_counts_match_opened_load() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::new(dir.path())
        .account(AccountSpec::new("APP").user("app", "app-pw"))
        .account(
            AccountSpec::new("TIGHT")
                .user("tight", "tight-pw")
                .max_connections(3),
        );
    let mut cluster = start(spec).await;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.server_name(2), "n3");

    let app = LoadAuth::user_password("app", "app-pw");
    let urls = cluster.client_urls();
    let (l1, l2, l3) = tokio::try_join!(
        load::open(LoadSpec::new(&urls[0], app.clone(), 20).name("harness")),
        load::open(LoadSpec::new(&urls[1], app.clone(), 20)),
        load::open(
            LoadSpec::new(&urls[2], app.clone(), 10).publish_every(Duration::from_millis(100))
        ),
    )
    .expect("load opens");
    assert_eq!((l1.len(), l2.len(), l3.len()), (20, 20, 10));
    for (i, expected) in [20, 20, 10].into_iter().enumerate() {
        assert_eq!(
            cluster.connz_counts(i).unwrap(),
            counts(&[("APP", "app", expected)]),
            "server {}",
            cluster.server_name(i)
        );
    }
    let connz = cluster.monitor_get(0, "/connz?auth=true&limit=1").unwrap();
    assert_eq!(connz["connections"][0]["name"], "harness");
    assert_eq!(connz["connections"][0]["lang"], "connwatch-load");
    assert!(
        wait_until_async(WAIT, || {
            let connz = cluster.monitor_get(2, "/connz?limit=1").unwrap();
            connz["connections"][0]["in_msgs"].as_u64() >= Some(2)
        })
        .await,
        "publishing load connections publish"
    );

    // The server's -ERR reaches the caller.
    let bad = load::open(LoadSpec::new(
        &urls[0],
        LoadAuth::user_password("app", "wrong"),
        1,
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{bad:#}").contains("Authorization Violation"),
        "{bad:#}"
    );
    let tight = LoadAuth::user_password("tight", "tight-pw");
    let within = load::open(LoadSpec::new(&urls[0], tight.clone(), 3))
        .await
        .unwrap();
    let over = load::open(LoadSpec::new(&urls[0], tight, 1))
        .await
        .unwrap_err();
    assert!(
        format!("{over:#}").contains("maximum account active connections exceeded"),
        "{over:#}"
    );
    assert_eq!(
        cluster.connz_counts(0).unwrap(),
        counts(&[("APP", "app", 20), ("TIGHT", "tight", 3)])
    );
    within.close().await;

    // Stopping a server drops its clients; the raw load does not reconnect.
    cluster.terminate(2).unwrap();
    assert!(wait_until_async(WAIT, || l3.alive() == 0).await);
    assert_eq!(l1.alive(), 20);
    cluster.restart(2).unwrap();
    assert_eq!(cluster.connz_counts(2).unwrap(), BTreeMap::new());
    let statsz = cluster
        .system_request(2, "$SYS.REQ.SERVER.PING.STATSZ", b"", 3, WAIT)
        .unwrap();
    assert_eq!(statsz.len(), 3);
    for reply in &statsz {
        assert_eq!(reply["statsz"]["active_servers"], 3, "{reply}");
    }

    // Closing load is seen by the server.
    l1.close().await;
    assert!(
        wait_until_async(WAIT, || cluster.connz_counts(0).unwrap().is_empty()).await,
        "closed load connections leave connz"
    );
    assert_eq!(
        cluster.connz_counts(1).unwrap(),
        counts(&[("APP", "app", 20)])
    );
    drop(l2);
    assert!(wait_until_async(WAIT, || cluster.connz_counts(1).unwrap().is_empty()).await);

    let toml = cluster.connwatch_toml();
    assert!(toml.contains("user = \"sys\""), "{toml}");
    assert!(toml.contains(&urls[2]), "{toml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_minted_creds_connect_and_reach_system_account() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::new(dir.path())
        .mode(AuthMode::Operator)
        .account(AccountSpec::new("APP").user("app", "").user("leaky", ""));
    let cluster = start(spec).await;
    let setup = cluster.operator().expect("operator mode has a setup");
    let app_account = setup.account("APP").unwrap().public_key();
    let app_user = setup.user("APP", "app").unwrap().public_key();

    let app_creds = cluster.creds_path("APP", "app").expect("app creds written");
    let auth = LoadAuth::from_creds_file(app_creds).unwrap();
    let load = load::open(LoadSpec::new(cluster.client_url(1), auth, 1))
        .await
        .expect("minted user connects");

    let counts = cluster.connz_counts(1).unwrap();
    assert_eq!(
        counts.get(&(app_account.clone(), app_user.clone())),
        Some(&1),
        "{counts:?}"
    );
    // authorized_user is the nkey, and the human name travels in the user JWT's name claim.
    let connz = cluster
        .monitor_get(1, &format!("/connz?auth=true&user={app_user}"))
        .unwrap();
    let conn = &connz["connections"][0];
    assert_eq!(conn["name_tag"], "APP");
    let jwt = conn["jwt"].as_str().expect("connz shows the user JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["name"], "app");

    // The system user's creds file works with async-nats, and every server answers $SYS pings.
    let sys_creds = cluster.system_creds_path().expect("sys creds written");
    let client = async_nats::ConnectOptions::with_credentials_file(sys_creds)
        .await
        .unwrap()
        .connect(cluster.client_url(0))
        .await
        .expect("sys user connects");
    let reply = client
        .request("$SYS.REQ.SERVER.PING.STATSZ", "".into())
        .await
        .expect("a server answers STATSZ");
    let statsz: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(statsz["statsz"]["connections"].is_u64(), "{statsz}");

    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SYS.REQ.SERVER.PING.STATSZ", inbox, "".into())
        .await
        .unwrap();
    let mut names = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while names.len() < 3 {
        let msg = tokio::time::timeout_at(deadline, replies.next())
            .await
            .expect("all servers answer in time")
            .unwrap();
        let statsz: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        // Once the harness reports the routes formed, every server already counts the others.
        assert_eq!(statsz["statsz"]["active_servers"], 3, "{statsz}");
        names.insert(statsz["server"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        names,
        BTreeSet::from(["n1".into(), "n2".into(), "n3".into()])
    );

    load.close().await;
    client.drain().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_holds_thousands_of_connections() {
    const COUNT: usize = 3_200;
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::new(dir.path())
        .servers(1)
        .account(AccountSpec::new("APP").user("app", "app-pw"));
    let cluster = start(spec).await;
    let auth = LoadAuth::user_password("app", "app-pw");
    let load = load::open(LoadSpec::new(cluster.client_url(0), auth, COUNT))
        .await
        .expect("thousands of connections open");
    assert_eq!(load.alive(), COUNT);
    assert_eq!(
        cluster.connz_counts(0).unwrap(),
        counts(&[("APP", "app", COUNT as u64)])
    );
    load.close().await;
    assert!(wait_until_async(WAIT, || cluster.connz_counts(0).unwrap().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_kill_control_the_server_processes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::new(dir.path())
        .servers(2)
        .account(AccountSpec::new("APP").user("app", "app-pw"));
    let mut cluster = start(spec).await;
    let auth = LoadAuth::user_password("app", "app-pw");

    cluster.pause(1).unwrap();
    let frozen = load::open(LoadSpec::new(cluster.client_url(1), auth.clone(), 1));
    let mut frozen = Box::pin(frozen);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut frozen)
            .await
            .is_err(),
        "a paused server does not complete the handshake"
    );
    cluster.resume(1).unwrap();
    let load = tokio::time::timeout(WAIT, frozen)
        .await
        .expect("a resumed server answers")
        .unwrap();
    assert_eq!(load.alive(), 1);

    let pid = cluster.pid(1).unwrap();
    cluster.kill(1).unwrap();
    assert_eq!(cluster.pid(1), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
    assert!(cluster.connz_counts(1).is_err());
    assert!(wait_until_async(WAIT, || load.alive() == 0).await);
    cluster.restart(1).unwrap();
    assert!(cluster.connz_counts(1).unwrap().is_empty());
}

#[test]
fn missing_binary_error_says_how_to_install() {
    let err = std::process::Command::new(env!("CARGO_BIN_EXE_connwatch-dev"))
        .args(["cluster", "--dir"])
        .arg(std::env::temp_dir().join("connwatch-missing-binary"))
        .env_remove("NATS_SERVER_BIN")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("scripts/install-nats-server.sh"),
        "{stderr}"
    );
}
