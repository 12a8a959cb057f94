//! `advisory.jetstream = true` on a real 3-node JetStream cluster: advisories go through the
//! `[jetstream]` connection (an ordinary JetStream account) into the advisory stream, which
//! connwatch creates, and each is stored exactly once: across acknowledgement timeouts and
//! retries, and across a reconnect of that connection.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const STREAM: &str = "CONNWATCH_ADVISORIES";
const TIMEOUTS: &str = "connwatch_advisories_publish_failures_total{kind=\"timeout\"}";
const PUBLISHED: &str = "connwatch_advisories_published_total";

/// Every advisory stored in the stream.
async fn stored(js: &async_nats::jetstream::Context) -> Vec<Value> {
    stream_bodies(js, STREAM).await
}

/// How often each advisory id occurs.
fn by_id(bodies: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

/// The leak's finding (user `leaky`: see tests/ha.rs on a census race under load).
fn excessive(state: &str, renotify: bool) -> impl Fn(&Value) -> bool + '_ {
    move |b: &Value| {
        b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
            && b["state"] == state
            && b["renotify"] == renotify
            && b["user"] == "leaky"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_advisory_is_stored_once_across_ack_timeouts_retries_and_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = jetstream_cluster(dir.path());
    // System connection on n1; the [jetstream] connection on n3, the server paused and killed.
    let config = format!(
        "[nats]\nservers = [{:?}]\nuser = \"sys\"\npassword = \"sys-dev-password\"\n\
         [sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\
         [detect]\nmax_connections_per_user = 10\n\
         [advisory]\njetstream = true\npublish_timeout = \"500ms\"\nrenotify = \"2s\"\n\
         {}servers = [{:?}]\n",
        cluster.client_url(0),
        cluster.jetstream_toml(),
        cluster.client_url(2),
    );
    let path = write_config(dir.path(), &config);
    // A reader in the JetStream account: the stream, and a core subscription that sees every
    // publish, retries included (the stream de-duplicates; core delivery does not).
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("connwatch.log"));
    assert!(
        eventually(WAIT, || async { js.get_stream(STREAM).await.is_ok() }).await,
        "connwatch did not create the stream: {}",
        running.log()
    );
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.subjects, vec!["connwatch.advisory.>".to_string()]);
    assert!(info.duplicate_window >= Duration::from_secs(120));
    assert_eq!(info.num_replicas, 3);

    // Running: its start-up (the stream, through n3) is over once a round is done.
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= 1).await,
        "{}",
        running.log()
    );

    // 1. The server of the [jetstream] connection freezes: the firing advisory is written to
    //    its socket, its ack never comes, it is sent again (and again).
    cluster.pause(2).unwrap();
    let leak = leaky_worker(&cluster).await;
    assert!(
        wait_until_async(WAIT, || running.metric(TIMEOUTS).unwrap_or(0.0) >= 2.0).await,
        "no ack timeouts: {}",
        running.log()
    );
    cluster.resume(2).unwrap();
    // Every copy reaches subscribers; the stream keeps one.
    let (_, _, firing) = core.wait_for(0, "firing", excessive("firing", false)).await;
    let id = firing["id"].as_str().unwrap().to_string();
    assert!(
        wait_until_async(WAIT, || core
            .all()
            .iter()
            .filter(|(_, b)| b["id"] == id.as_str())
            .count()
            >= 2)
        .await,
        "the retry never reached a subscriber: {:#?}",
        core.all()
    );
    assert!(
        wait_until_async(WAIT, || running.metric(PUBLISHED).unwrap_or(0.0) >= 1.0).await,
        "{}",
        running.log()
    );
    let once = stored(&js).await;
    assert_eq!(by_id(&once).get(&id), Some(&1), "stored: {once:#?}");

    // 2. That server dies (kill -9) while renotifies are retried into its frozen socket: the
    //    connection reconnects to another server and the retries are stored there, once.
    let before = running.metric(TIMEOUTS).unwrap_or(0.0);
    cluster.pause(2).unwrap();
    assert!(
        wait_until_async(WAIT, || running.metric(TIMEOUTS).unwrap_or(0.0)
            >= before + 2.0)
        .await,
        "no ack timeouts while paused again: {}",
        running.log()
    );
    cluster.kill(2).unwrap();
    let published = running.metric(PUBLISHED).unwrap_or(0.0);
    assert!(
        wait_until_async(WAIT, || running.metric(PUBLISHED).unwrap_or(0.0)
            > published)
        .await,
        "nothing published after the reconnect: {}",
        running.log()
    );
    cluster.restart(2).unwrap();

    // 3. The leak closes: resolved, once.
    leak.close().await;
    core.wait_for(0, "resolved", excessive("resolved", false))
        .await;
    assert!(
        eventually(WAIT, || async {
            stored(&js).await.iter().any(excessive("resolved", false))
        })
        .await,
        "resolved never stored: {}",
        running.log()
    );
    assert_eq!(running.terminate(), Some(0));
    let all = stored(&js).await;
    let counts = by_id(&all);
    assert!(
        counts.values().all(|n| *n == 1),
        "an advisory stored twice: {counts:?}"
    );
    assert_eq!(
        all.iter().filter(|b| excessive("firing", false)(b)).count(),
        1
    );
    assert_eq!(
        all.iter()
            .filter(|b| excessive("resolved", false)(b))
            .count(),
        1
    );
    let renotifies = all.iter().filter(|b| excessive("firing", true)(b)).count();
    assert!(renotifies >= 1, "no renotify stored: {all:#?}");
    // Subscribers saw more publishes than the stream stores: the retries were real.
    assert!(
        core.all().len() > all.len(),
        "core {} stream {}",
        core.all().len(),
        all.len()
    );
    for b in &all {
        assert_valid(b);
    }
}

/// The permissions of the least-privilege `[jetstream]` user of `creds/connwatch.creds`
/// (testkit's `connwatch_jetstream_permissions`): publish on the JetStream API, the HA bucket
/// and the advisory subjects, subscribe only on `_INBOX.>`.
const LEAST_PRIVILEGE: &str = r#"{publish: ["$JS.API.>", "$KV.connwatch.>", "connwatch.advisory.>"], subscribe: ["_INBOX.>"]}"#;

/// A by-hand kick while `run` publishes into the stream as the least-privilege user, who may
/// not subscribe to the advisory subjects: `run` follows the kick's audit from the stream (an
/// ordered consumer delivered on `_INBOX`), so the client's return is a `kick_ineffective` in
/// the stream and the state file keeps the kick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_by_hand_kick_is_followed_from_the_stream_by_the_least_privilege_user() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .jetstream()
            .jetstream_permissions(LEAST_PRIVILEGE)
            .account(AccountSpec::new("APP").user("leaky", "pw")),
    )
    .unwrap();
    // One connection (the policy kicks nothing itself), back 300 ms after a kick.
    let worker = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", "pw"),
            1,
        )
        .name("worker")
        .reconnect(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let state = dir.path().join("state.json");
    let path = write_config(
        dir.path(),
        &format!(
            "{}[live]\nreconcile_interval = \"700ms\"\n[sweep]\ninterval = \"700ms\"\ntimeout = \"2s\"\n[detect]\nidle_threshold = \"1s\"\n\
             [kick]\nenabled = true\nmin_idle = \"1s\"\nmin_age = \"1s\"\nreturn_window = \"1m\"\n\
             [state]\nfile = {:?}\n[advisory]\njetstream = true\n{}",
            cluster.connwatch_toml(),
            state.display().to_string(),
            cluster.jetstream_toml()
        ),
    );
    let running = Running::start(&path, dir.path().join("run.log"));
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= 1).await,
        "{}",
        running.log()
    );
    // The stream read as that same user: the JetStream API and `_INBOX` replies only.
    let (_reader, js) = {
        use testkit::cluster::{JETSTREAM_PASSWORD, JETSTREAM_USER};
        let c = async_nats::ConnectOptions::with_user_and_password(
            JETSTREAM_USER.into(),
            JETSTREAM_PASSWORD.into(),
        )
        .connect(cluster.client_url(1))
        .await
        .unwrap();
        (c.clone(), async_nats::jetstream::new(c))
    };

    kick_by_hand(&cluster, 0, "worker", &path).await;

    // The client is back: `run` reports it into the stream, though it never kicked it itself.
    let ineffective = |b: &Value| {
        b["type"] == "io.connwatch.advisory.v1.kick_ineffective" && b["name"] == "worker"
    };
    assert!(
        eventually(WAIT, || async { stored(&js).await.iter().any(ineffective) }).await,
        "no kick_ineffective in the stream: {}",
        running.log()
    );
    assert!(worker.reconnects() >= 1);
    let bodies = stored(&js).await;
    let found = bodies.iter().find(|b| ineffective(b)).unwrap();
    assert_eq!(
        (found["kicks"].clone(), found["returns"].clone()),
        (1.into(), 1.into())
    );
    let kicks: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "io.connwatch.advisory.v1.connection_kicked")
        .collect();
    assert!(
        kicks.len() == 1 && kicks[0]["rule"] == "manual",
        "{kicks:#?}"
    );
    assert_eq!(running.terminate(), Some(0));
    assert_eq!(
        saved_kicked_clients(&state),
        vec![("worker".to_string(), 1, 1)]
    );
}
