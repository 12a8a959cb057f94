//! Growth findings need evidence an operator would accept, on a real 3-node cluster with
//! `connwatch run`: a deployment's one step (1 → 31 at once, then flat) and an operator's
//! extra system connection (async-nats, like `connwatch tail` or `nats sub`) never fire
//! `user_connection_growth`; a real slow leak (one connection at a time, for longer than
//! `detect.growth_min_span`) fires it, below its threshold, with a projection. The test uses
//! seconds where the defaults are minutes.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_sustained_leak_is_growth_not_a_deploy_step_nor_an_extra_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("deploy", "pw")
                .user("leaky", "pw"),
        ),
    )
    .unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\ntimeout = \"2s\"\n\
             [detect]\ngrowth_window = \"20s\"\ngrowth_min_span = \"4s\"\ngrowth_min_increase = 5\n",
            cluster.connwatch_toml()
        ),
    );
    // The running version of the deployment: one connection.
    let _old_pod = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("deploy", "pw"),
            1,
        )
        .name("orders"),
    )
    .await
    .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("run.log"));
    let rounds = || running.rounds().0;
    assert!(
        wait_until_async(WAIT, || rounds() >= 5).await,
        "{}",
        running.log()
    );

    // A deployment rolls out: 30 connections at once, then flat.
    let _new_pods = load::open(
        LoadSpec::new(
            cluster.client_url(1),
            LoadAuth::user_password("deploy", "pw"),
            30,
        )
        .name("orders"),
    )
    .await
    .unwrap();
    // An operator opens one more connection as the system user (what `nats sub` does).
    let operator =
        async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
            .name("operator")
            .connect(cluster.client_url(2))
            .await
            .unwrap();
    let deployed_at = rounds();

    // A slow leak: one connection at a time, until connwatch reports its growth.
    let leaky = LoadAuth::user_password("leaky", "pw");
    let mut leak = Vec::new();
    let growth_of = |user: &str| -> Vec<serde_json::Value> {
        seen.of("user_connection_growth")
            .into_iter()
            .filter(|b| b["user"] == user && b["state"] == "firing")
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while growth_of("leaky").is_empty() {
        assert!(
            std::time::Instant::now() < deadline && leak.len() < 90,
            "no growth for the leak at {} connections: {}",
            leak.len(),
            running.log()
        );
        leak.push(
            load::open(
                LoadSpec::new(cluster.client_url(0), leaky.clone(), 1).name("invoice-worker"),
            )
            .await
            .unwrap(),
        );
        let now = rounds();
        assert!(wait_until_async(WAIT, || rounds() > now).await);
    }
    let fired = &growth_of("leaky")[0];
    assert_valid(fired);
    let connections = fired["connections"].as_u64().unwrap();
    assert!(
        connections < 100,
        "growth comes before the threshold: {fired:#}"
    );
    assert!(
        fired["growth"]["increase"].as_u64().unwrap() >= 5,
        "{fired:#}"
    );
    assert!(
        fired["growth"]["window_secs"].as_u64().unwrap() >= 4,
        "{fired:#}"
    );
    assert!(
        fired["growth"]["threshold_in_secs"].as_u64().is_some(),
        "{fired:#}"
    );

    // The deployment and the operator had as long as the leak, and a whole window more.
    assert!(
        wait_until_async(WAIT, || rounds() >= deployed_at + 80).await,
        "{}",
        running.log()
    );
    assert!(growth_of("deploy").is_empty(), "{:#?}", growth_of("deploy"));
    assert!(growth_of("sys").is_empty(), "{:#?}", growth_of("sys"));
    // Both were seen by the sweeps: 31 deploy connections, 3 of the system user.
    let report = report_json_async(&path).await;
    let count = |user: &str| {
        report["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user"] == user)
            .map(|u| u["connections"].as_u64().unwrap())
    };
    assert_eq!(count("deploy"), Some(31));
    assert!(count("sys").unwrap() >= 3, "{report:#}");
    drop(operator);
}
