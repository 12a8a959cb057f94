//! Kicking leaked connections against a real 3-node cluster: only what the policy allows.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(40);

fn kick_config(cluster: &Cluster, extra: &str) -> String {
    format!(
        "{}[sweep]\ninterval = \"700ms\"\ntimeout = \"2s\"\n[detect]\nidle_threshold = \"1s\"\n\
         [kick]\nenabled = true\nmin_idle = \"1s\"\nmin_age = \"1s\"\n{extra}",
        cluster.connwatch_toml()
    )
}

fn leaky() -> LoadAuth {
    LoadAuth::user_password("leaky", "pw")
}

fn cluster(dir: &Path) -> Cluster {
    Cluster::start(
        ClusterSpec::new(dir.join("cluster")).account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_leaked_connections_are_kicked_within_caps_and_never_on_a_partial_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path());
    let (seen, sys_client) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(
        dir.path(),
        &kick_config(
            &cluster,
            "dry_run = false\nmax_per_sweep = 40\nmax_per_user = 30\n",
        ),
    );
    let running = Running::start(&path, dir.path().join("run.log"));
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= 1).await,
        "no round"
    );

    // A silent server: every sweep is partial, so nothing may be kicked, leak or not.
    cluster.kill(2).unwrap();
    let leaked = load::open(LoadSpec::new(cluster.client_url(0), leaky(), 150).name("worker"))
        .await
        .unwrap();
    let active = load::open(
        LoadSpec::new(cluster.client_url(1), leaky(), 20)
            .name("worker")
            .publish_every(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let partial = running.rounds().1;
    assert!(
        wait_until_async(WAIT, || running.rounds().1 >= partial + 4).await,
        "no partial rounds"
    );
    assert!(
        seen.of("connection_kicked").is_empty(),
        "kicked during a partial sweep"
    );
    assert_eq!(leaked.alive(), 150);

    // The server is back: complete sweeps kick, 30 a sweep, until the user is under threshold.
    cluster.restart(2).unwrap();
    assert!(
        wait_until_async(WAIT, || leaked.alive() <= 90).await,
        "leaked connections not kicked: {} alive",
        leaked.alive()
    );
    let before = running.rounds().0;
    assert!(wait_until_async(WAIT, || running.rounds().0 >= before + 3).await);
    let kicks = seen.of("connection_kicked");
    for k in &kicks {
        assert_valid(k);
        assert_eq!(k["result"], "kicked", "{k:#}");
        assert_eq!(k["dry_run"], false);
        assert_eq!(k["server"], "n1", "an active connection was kicked: {k:#}");
        assert_eq!(k["user"], "leaky");
        assert_eq!(k["rule"], "excessive_user_connections");
    }
    let mut per_sweep: BTreeMap<String, usize> = BTreeMap::new();
    for k in &kicks {
        *per_sweep
            .entry(k["sweep"]["started"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(k["sweep"]["partial"], false);
    }
    assert!(
        per_sweep.values().all(|n| *n <= 30),
        "more than max_per_user in a sweep: {per_sweep:?}"
    );
    // Kicks stop once the user is back under its threshold (170 - 2 × 30 = 110, then 80).
    assert_eq!(kicks.len(), 90, "{per_sweep:?}");
    assert_eq!(leaked.alive(), 60);
    assert_eq!(active.alive(), 20, "an active connection was kicked");
    assert_eq!(
        sys_client.connection_state(),
        async_nats::connection::State::Connected
    );
    assert_eq!(running.terminate(), Some(0), "connwatch did not survive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_by_hand_kick_nothing_until_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let leaked = load::open(LoadSpec::new(cluster.client_url(0), leaky(), 130).name("worker"))
        .await
        .unwrap();
    let (seen, _c) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(dir.path(), &kick_config(&cluster, "max_per_user = 25\n"));

    let running = Running::start(&path, dir.path().join("run.log"));
    assert!(wait_until_async(WAIT, || seen.of("connection_kicked").len() >= 50).await);
    assert_eq!(running.terminate(), Some(0));
    for k in seen.of("connection_kicked") {
        assert_valid(&k);
        assert_eq!(
            (k["dry_run"].clone(), k["result"].clone()),
            (Value::Bool(true), Value::from("would_kick"))
        );
    }
    assert_eq!(leaked.alive(), 130, "dry run kicked");

    // By hand: a preview first, then --yes kicks every eligible connection (no caps).
    let args = [
        "--config",
        path.to_str().unwrap(),
        "kick",
        "--account",
        "APP",
        "--user",
        "leaky",
    ];
    let preview = tokio::task::spawn_blocking({
        let a = args.map(String::from);
        move || run_connwatch(&a, WAIT)
    })
    .await
    .unwrap();
    assert_eq!(preview.code, Some(0), "{}", preview.stderr);
    assert!(
        preview.stdout.contains("130 connection(s) would be kicked"),
        "{}",
        preview.stdout
    );
    assert_eq!(leaked.alive(), 130, "the preview kicked");
    let done = tokio::task::spawn_blocking({
        let mut a: Vec<String> = args.map(String::from).to_vec();
        a.push("--yes".into());
        move || run_connwatch(&a, WAIT)
    })
    .await
    .unwrap();
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        wait_until_async(WAIT, || leaked.alive() == 0).await,
        "{} left",
        leaked.alive()
    );
    assert!(
        wait_until_async(WAIT, || seen
            .of("connection_kicked")
            .iter()
            .filter(|k| k["rule"] == "manual")
            .count()
            == 130)
        .await
    );

    // The system account is never kicked, not even by hand.
    let report = report_json_async(&path).await;
    let sys = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["system"] == true)
        .unwrap();
    let server = report["sweep"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "n2")
        .unwrap();
    let sys_conns = cluster
        .monitor_get(1, "/connz?auth=true&limit=1000")
        .unwrap();
    let cid = sys_conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "test-subscriber")
        .unwrap()["cid"]
        .as_u64()
        .unwrap();
    assert!(sys["connections"].as_u64().unwrap() >= 1);
    let refused = tokio::task::spawn_blocking({
        let (p, id) = (path.clone(), server["id"].as_str().unwrap().to_string());
        move || {
            let cid = cid.to_string();
            run_connwatch(
                [
                    "--config",
                    p.to_str().unwrap(),
                    "kick",
                    "--server-id",
                    &id,
                    "--cid",
                    &cid,
                    "--yes",
                ],
                WAIT,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("system account"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_is_reported_ineffective_and_then_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let comeback = load::open(
        LoadSpec::new(cluster.client_url(0), leaky(), 130)
            .name("worker")
            .reconnect(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let (seen, _c) = Seen::subscribe(&cluster.client_url(1)).await;
    let path = write_config(
        dir.path(),
        &kick_config(
            &cluster,
            "dry_run = false\nmax_per_user = 20\nmax_attempts = 2\nreturn_window = \"1m\"\n",
        ),
    );
    let running = Running::start(&path, dir.path().join("run.log"));

    let given_up = |s: &Seen| {
        s.of("kick_ineffective")
            .iter()
            .any(|a| a["given_up"] == true)
    };
    assert!(
        wait_until_async(WAIT, || given_up(&seen)).await,
        "never gave up: {:?}",
        seen.of("kick_ineffective")
    );
    let reports = seen.of("kick_ineffective");
    for r in &reports {
        assert_valid(r);
        assert_eq!(
            (r["user"].as_str(), r["name"].as_str(), r["ip"].as_str()),
            (Some("leaky"), Some("worker"), Some("127.0.0.1"))
        );
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("revoke the credential"),
            "{r:#}"
        );
    }
    assert_eq!(reports.last().unwrap()["returns"], 2);
    assert!(comeback.reconnects() >= 20, "the client never came back");

    // Left alone: no kick for several more sweeps.
    let kicks = seen.of("connection_kicked").len();
    let rounds = running.rounds().0;
    assert!(wait_until_async(WAIT, || running.rounds().0 >= rounds + 4).await);
    assert_eq!(
        seen.of("connection_kicked").len(),
        kicks,
        "kicked a client it gave up on"
    );
    assert_eq!(running.terminate(), Some(0));
}
