//! `[ha]`: three `connwatch run` replicas on a real 3-node JetStream cluster, one lease in a
//! key-value bucket. Exactly one replica acts; when it is killed another takes over within
//! 2 × `ha.lease` and announces nothing again; the leak's end is announced once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use testkit::cluster::http_get;

const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(3);
const STREAM: &str = "CONNWATCH_ADVISORIES";

/// The leak's finding in `state`. Only user `leaky`: a connection caught while it connects
/// can be counted once under account `$G` with no user (a census race seen under load, not
/// this feature's), which is a finding of its own.
fn excessive(state: &'static str) -> impl Fn(&Value) -> bool {
    move |b: &Value| {
        b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
            && b["state"] == state
            && b["user"] == "leaky"
    }
}

/// Every advisory stored in the stream.
async fn stored(js: &async_nats::jetstream::Context) -> Vec<Value> {
    stream_bodies(js, STREAM).await
}

/// Waits until an `excessive_user_connections` advisory in `state` is stored; `logs` for the
/// failure message.
async fn wait_stored(
    js: &async_nats::jetstream::Context,
    state: &'static str,
    logs: impl Fn() -> String,
) {
    assert!(
        eventually(WAIT, || async {
            stored(js).await.iter().any(excessive(state))
        })
        .await,
        "no {state} stored: {}",
        logs()
    );
}

/// `connwatch_leader` of each running replica (`None`: not answering yet, or killed).
fn leaders(replicas: &[Option<Running>]) -> Vec<Option<f64>> {
    replicas
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.metric("connwatch_leader")))
        .collect()
}

/// The index of the only replica leading while every other running one follows.
fn sole_leader(replicas: &[Option<Running>]) -> Option<usize> {
    let l = leaders(replicas);
    let running: Vec<(usize, Option<f64>)> = l
        .into_iter()
        .enumerate()
        .filter(|(i, _)| replicas[*i].is_some())
        .collect();
    if running.iter().any(|(_, v)| v.is_none()) {
        return None;
    }
    let leading: Vec<usize> = running
        .iter()
        .filter(|(_, v)| *v == Some(1.0))
        .map(|(i, _)| *i)
        .collect();
    (leading.len() == 1).then(|| leading[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_acts_another_takes_over_within_two_leases_nothing_announced_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = jetstream_cluster(dir.path());
    let path = write_config(dir.path(), &replicas_config(&cluster));
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let start = |i: usize| Some(Running::start(&path, dir.path().join(format!("r{i}.log"))));
    let logs = |r: &[Option<Running>]| {
        r.iter()
            .flatten()
            .map(Running::log)
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    let readyz = |r: &Running| http_get(r.metrics_addr(), "/readyz").unwrap_or((0, String::new()));

    // The first replica leads alone and announces the leak once.
    let mut replicas: Vec<Option<Running>> = vec![start(0)];
    assert!(
        wait_until_async(WAIT, || sole_leader(&replicas) == Some(0)).await,
        "the first replica does not lead: {}",
        logs(&replicas)
    );
    let leak = leaky_worker(&cluster).await;
    wait_stored(&js, "firing", || logs(&replicas)).await;
    let firing = stored(&js)
        .await
        .into_iter()
        .find(excessive("firing"))
        .unwrap();

    // Two more replicas join while the leak lasts: they follow (ready, serving reads) and
    // announce nothing, though their own lifecycles see the finding start now.
    replicas.push(start(1));
    replicas.push(start(2));
    let leader = 0;
    for (i, r) in replicas.iter().flatten().enumerate() {
        let want = if i == leader {
            "ready: leader\n"
        } else {
            "ready: follower\n"
        };
        assert!(
            wait_until_async(WAIT, || readyz(r) == (200, want.to_string())).await,
            "replica {i}: {:?}",
            readyz(r)
        );
    }
    assert_eq!(sole_leader(&replicas), Some(leader));

    // kill -9 the leader: another leads within 2 × lease.
    let killed = Instant::now();
    drop(replicas[leader].take());
    assert!(
        wait_until_async(2 * LEASE, || sole_leader(&replicas).is_some()).await,
        "no new leader within 2 × lease: {:?}\n{}",
        leaders(&replicas),
        logs(&replicas)
    );
    let took = killed.elapsed();
    let next = sole_leader(&replicas).unwrap();
    assert_ne!(next, leader);
    eprintln!("failover: a new leader {took:?} after kill -9 (lease {LEASE:?})");
    // It runs rounds as leader, and announces nothing again.
    let new_leader = replicas[next].as_ref().unwrap();
    let rounds = new_leader.rounds().0;
    assert!(
        wait_until_async(WAIT, || new_leader.rounds().0 >= rounds + 4).await,
        "{}",
        new_leader.log()
    );

    // The leak closes: exactly one resolved.
    leak.close().await;
    wait_stored(&js, "resolved", || logs(&replicas)).await;
    let rounds = new_leader.rounds().0;
    assert!(wait_until_async(WAIT, || new_leader.rounds().0 >= rounds + 4).await);
    let all = stored(&js).await;
    let count = |state| all.iter().filter(|b| excessive(state)(b)).count();
    assert_eq!(count("firing"), 1, "stream: {all:#?}");
    assert_eq!(count("resolved"), 1, "stream: {all:#?}");
    // The new leader took the finding from the bucket: the end of the same finding, with the
    // first leader's `since` (its own lifecycle saw the leak start later).
    let resolved = all.iter().find(|b| excessive("resolved")(b)).unwrap();
    assert_eq!(resolved["since"], firing["since"]);
    // Core subscribers too: nobody announced it twice (one id each; a new leader may publish
    // again, under the same id, what its predecessor published but had not trimmed from the
    // outbox: the stream drops it, a core subscriber drops it by its id).
    assert_eq!(
        (core_ids(&core, "firing"), core_ids(&core, "resolved")),
        (ids_of(&all, "firing"), ids_of(&all, "resolved"))
    );
}

/// The distinct ids of the leak's advisories in `state` that core subscribers received.
fn core_ids(core: &Seen, state: &'static str) -> BTreeSet<String> {
    core.all()
        .iter()
        .filter(|(_, b)| excessive(state)(b))
        .map(|(_, b)| b["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The distinct ids of the leak's advisories in `state` among `stored` (one, when stored once).
fn ids_of(stored: &[Value], state: &'static str) -> BTreeSet<String> {
    let ids: BTreeSet<String> = stored
        .iter()
        .filter(|b| excessive(state)(b))
        .map(|b| b["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{state}: {stored:#?}");
    ids
}

/// `connwatch_leader` of one replica, sampled; `None` while it does not answer.
fn gauge(r: &Running) -> Option<f64> {
    r.metric("connwatch_leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_jetstream_stops_acting_before_another_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = jetstream_cluster(dir.path());
    // Replica A reaches JetStream through n3 only (frozen below), replica B through n1.
    let config = |js_server: usize| {
        format!(
            "[nats]\nservers = [{:?}]\nuser = \"sys\"\npassword = \"sys-dev-password\"\n\
             [sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n[live]\nreconcile_interval = \"1ms\"\n\
             [detect]\nmax_connections_per_user = 10\n\
             [advisory]\njetstream = true\n{}servers = [{:?}]\n\
             [ha]\nenabled = true\nlease = \"{}s\"\n",
            cluster.client_url(0),
            cluster.jetstream_toml(),
            cluster.client_url(js_server),
            LEASE.as_secs()
        )
    };
    let (path_a, path_b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&path_a, config(2)).unwrap();
    std::fs::write(&path_b, config(0)).unwrap();
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let a = Running::start(&path_a, dir.path().join("a.log"));
    assert!(
        wait_until_async(WAIT, || gauge(&a) == Some(1.0)).await,
        "A does not lead: {}",
        a.log()
    );
    let b = Running::start(&path_b, dir.path().join("b.log"));
    assert!(
        wait_until_async(WAIT, || http_get(b.metrics_addr(), "/readyz")
            .is_ok_and(|r| r == (200, "ready: follower\n".to_string())))
        .await,
        "B not a ready follower: {}",
        b.log()
    );
    let leak = leaky_worker(&cluster).await;
    wait_stored(&js, "firing", || a.log()).await;

    // Freeze A's JetStream server: A cannot renew. Sample both gauges until B leads.
    cluster.pause(2).unwrap();
    let frozen = Instant::now();
    let mut samples = Vec::new();
    let took_over = wait_until_async(WAIT, || {
        let s = (frozen.elapsed(), gauge(&a), gauge(&b));
        samples.push(s);
        s.2 == Some(1.0)
    })
    .await;
    assert!(took_over, "B never led: {}", b.log());
    let overlap: Vec<_> = samples
        .iter()
        .filter(|(_, ga, gb)| *ga == Some(1.0) && *gb == Some(1.0))
        .collect();
    assert!(overlap.is_empty(), "both led at once: {overlap:?}");
    let a_stopped = samples
        .iter()
        .find(|(_, ga, _)| *ga == Some(0.0))
        .map(|s| s.0);
    let b_led = samples.last().unwrap().0;
    assert!(
        a_stopped.is_some_and(|t| t < b_led),
        "A stopped at {a_stopped:?}, B led at {b_led:?}"
    );
    eprintln!("partition: A stopped acting {a_stopped:?} after the freeze, B led {b_led:?} after");

    // A's server comes back: A follows (its revision is gone), B keeps leading.
    cluster.resume(2).unwrap();
    let rounds = b.rounds().0;
    assert!(wait_until_async(WAIT, || b.rounds().0 >= rounds + 4).await);
    assert_eq!((gauge(&a), gauge(&b)), (Some(0.0), Some(1.0)));
    leak.close().await;
    wait_stored(&js, "resolved", || b.log()).await;
    let rounds = b.rounds().0;
    assert!(wait_until_async(WAIT, || b.rounds().0 >= rounds + 4).await);
    let all = stored(&js).await;
    let count = |state| all.iter().filter(|b| excessive(state)(b)).count();
    assert_eq!(
        (count("firing"), count("resolved")),
        (1, 1),
        "stream: {all:#?}"
    );
    assert_eq!(
        (core_ids(&core, "firing"), core_ids(&core, "resolved")),
        (ids_of(&all, "firing"), ids_of(&all, "resolved"))
    );
}

/// The state the leader saved in the bucket, as JSON, whenever it changes, until `done` holds
/// for one (`None`: not within `WAIT`).
async fn wait_saved_state(
    js: &async_nats::jetstream::Context,
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    use futures::StreamExt;
    let kv = js.get_key_value("connwatch").await.unwrap();
    let mut watch = kv.watch_with_history("state").await.unwrap();
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(entry)) = watch.next().await {
            if let Ok(state) = serde_json::from_slice::<Value>(&entry.value) {
                if done(&state) {
                    return Some(state);
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The replicas' configuration: kicks on, more `[kick]` keys in `kick`.
fn kick_replicas_config(cluster: &Cluster, kick: &str) -> String {
    format!(
        "{}[sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n[live]\nreconcile_interval = \"500ms\"\n\
         [detect]\nmax_connections_per_user = 10\nidle_threshold = \"1s\"\n\
         [kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n{kick}\
         [advisory]\njetstream = true\n{}\
         [ha]\nenabled = true\nlease = \"{}s\"\n",
        cluster.connwatch_toml(),
        cluster.jetstream_toml(),
        LEASE.as_secs()
    )
}

/// A JetStream cluster, and two replicas with kicks on (`kick`: more `[kick]` keys): replica 0
/// leads, replica 1 follows.
async fn kick_replicas(kick: &str) -> (tempfile::TempDir, Cluster, Vec<Option<Running>>) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = jetstream_cluster(dir.path());
    let path = write_config(dir.path(), &kick_replicas_config(&cluster, kick));
    let replicas = leader_and_follower(&path, dir.path()).await;
    (dir, cluster, replicas)
}

/// `n` idle connections of user `leaky` named `worker` on server 0.
fn leaky_spec(cluster: &Cluster, n: usize) -> LoadSpec {
    LoadSpec::new(
        cluster.client_url(0),
        LoadAuth::user_password("leaky", "pw"),
        n,
    )
    .name("worker")
}

/// Starts replica 0, waits until it leads, then replica 1 until it is a ready follower.
async fn leader_and_follower(
    path: &std::path::Path,
    dir: &std::path::Path,
) -> Vec<Option<Running>> {
    let mut replicas = vec![Some(Running::start(path, dir.join("r0.log")))];
    assert!(
        wait_until_async(WAIT, || sole_leader(&replicas) == Some(0)).await,
        "replica 0 does not lead: {}",
        replicas[0].as_ref().unwrap().log()
    );
    replicas.push(Some(Running::start(path, dir.join("r1.log"))));
    let follower = replicas[1].as_ref().unwrap();
    assert!(
        wait_until_async(WAIT, || http_get(follower.metrics_addr(), "/readyz")
            .is_ok_and(|r| r == (200, "ready: follower\n".to_string())))
        .await,
        "replica 1 not a ready follower: {}",
        follower.log()
    );
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_says_its_role_and_since_when_in_srv_stats() {
    let (_dir, cluster, mut replicas) = kick_replicas("").await;
    let roles = service_roles(&cluster, 2).await;
    let names: Vec<&str> = roles.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["follower", "leader"], "{roles:?}");
    let led_since = roles[1].1.clone();
    fail_over(&mut replicas).await;
    let roles = service_roles(&cluster, 1).await;
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].0, "leader");
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert!(
        at(&roles[0].1) > at(&led_since),
        "{roles:?} after {led_since}"
    );
}

/// The role in each replica's `$SRV.STATS` answer (the `data` of its endpoints, which all say
/// the same), waiting until `want` replicas answered (5 s at most), sorted.
async fn service_roles(cluster: &Cluster, want: usize) -> Vec<(String, String)> {
    use futures::StreamExt;
    let sys =
        async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
            .connect(cluster.client_url(1))
            .await
            .unwrap();
    let inbox = sys.new_inbox();
    let mut replies = sys.subscribe(inbox.clone()).await.unwrap();
    sys.publish_with_reply("$SRV.STATS.connwatch", inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = replies.next().await {
            let stats: Value = serde_json::from_slice(&m.payload).unwrap();
            let data = &stats["endpoints"][0]["data"];
            let since = data["since"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(since).is_ok(),
                "{stats:#}"
            );
            out.push((
                data["role"].as_str().unwrap_or_default().to_string(),
                since.to_string(),
            ));
            if out.len() == want {
                break;
            }
        }
    })
    .await;
    out.sort();
    out
}

/// kill -9 of the leader, then replica 1 leads and runs four rounds.
async fn fail_over(replicas: &mut [Option<Running>]) {
    drop(replicas[0].take());
    assert!(
        wait_until_async(2 * LEASE, || sole_leader(replicas) == Some(1)).await,
        "replica 1 does not lead: {}",
        replicas[1].as_ref().unwrap().log()
    );
    let next = replicas[1].as_ref().unwrap();
    let rounds = next.rounds().0;
    assert!(
        wait_until_async(WAIT, || next.rounds().0 >= rounds + 4).await,
        "{}",
        next.log()
    );
}

/// (server id, cid) of each `connection_kicked` in `bodies`, with how many audits (distinct
/// ids) it has: a repeat of one audit (same `id`, e.g. published again from a dead leader's
/// outbox) is one audit, as subscribers dropping repeats by `id` see it.
fn kicked_counts<'a>(bodies: impl Iterator<Item = &'a Value>) -> BTreeMap<(String, u64), usize> {
    let mut ids: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for b in bodies.filter(|b| b["type"] == "io.connwatch.advisory.v1.connection_kicked") {
        let key = (
            b["server_id"].as_str().unwrap().to_string(),
            b["cid"].as_u64().unwrap(),
        );
        ids.entry(key)
            .or_default()
            .insert(b["id"].as_str().unwrap().to_string());
    }
    ids.into_iter().map(|(k, i)| (k, i.len())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_kick_round_leaves_no_connection_kicked_twice() {
    // One kick at a time to one server: the batch takes a while.
    let (_dir, cluster, mut replicas) =
        kick_replicas("max_per_sweep = 600\nmax_per_user = 600\nconcurrency = 1\n").await;
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let leak = load::open(leaky_spec(&cluster, 600)).await.unwrap();

    // The leader records its batch in the bucket before it sends any of it (its plans
    // unfinished until their outcomes are saved); kill -9 it once the first KICKs of a large
    // batch landed, while most of it is still to go.
    let state = wait_saved_state(&js, |s| {
        s["kicked"]["unfinished"]
            .as_array()
            .is_some_and(|u| u.len() >= 50)
    })
    .await
    .unwrap_or_else(|| panic!("no batch recorded: {}", replicas[0].as_ref().unwrap().log()));
    let planned: BTreeSet<(String, u64)> = state["kicked"]["unfinished"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let id = p["server_id"].as_str().unwrap().to_string();
            (id, p["cid"].as_u64().unwrap())
        })
        .collect();
    let open_planned = || {
        let open = open_cids(&cluster);
        planned.iter().filter(|(_, c)| open.contains(c)).count()
    };
    assert!(
        wait_until(WAIT, || open_planned() < planned.len()),
        "no kick landed: {}",
        replicas[0].as_ref().unwrap().log()
    );
    drop(replicas[0].take());
    // A KICK already on the wire when the leader died still lands: read until two reads agree.
    let mut open_then = open_cids(&cluster);
    loop {
        let again = open_cids(&cluster);
        if again == open_then {
            break;
        }
        open_then = again;
    }
    let (server_id, _) = connz_of_server(&cluster, 0);
    let planned_open: BTreeSet<u64> = planned
        .iter()
        .filter(|(s, cid)| *s == server_id && open_then.contains(cid))
        .map(|(_, cid)| *cid)
        .collect();
    eprintln!(
        "killed with {} of {} planned kicks not yet carried out",
        planned_open.len(),
        planned.len()
    );
    fail_over(&mut replicas).await;

    // The new leader sent no KICK for a connection its predecessor had planned to kick.
    let open_now = open_cids(&cluster);
    assert!(
        planned_open.is_subset(&open_now),
        "kicked again: {:?}",
        planned_open.difference(&open_now).collect::<Vec<_>>()
    );
    // No (server id, cid) audited twice, in the stream or at core subscribers.
    let all = stored(&js).await;
    for (where_, counts) in [
        ("stream", kicked_counts(all.iter())),
        ("core", kicked_counts(core.all().iter().map(|(_, b)| b))),
    ] {
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{where_}: kicked twice: {twice:?}");
        assert!(
            counts
                .keys()
                .all(|k| !planned_open.contains(&k.1) || k.0 != server_id),
            "{where_}: a planned kick not carried out was audited"
        );
    }

    // Every planned connection gone (the dead leader's KICKs that landed) is audited exactly
    // once: by the new leader, as recovered, unless the dead one had saved its own audit.
    let gone: BTreeSet<(String, u64)> = planned
        .iter()
        .filter(|(s, cid)| *s != server_id || !open_now.contains(cid))
        .cloned()
        .collect();
    assert!(!gone.is_empty(), "the leader died before any kick landed");
    let audited = |bodies: &[Value]| {
        let counts = kicked_counts(bodies.iter());
        gone.iter()
            .map(|k| counts.get(k).copied().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(WAIT, || async {
            audited(&stored(&js).await).iter().all(|n| *n == 1)
        })
        .await,
        "not every gone connection audited once: {:?}\n{}",
        audited(&stored(&js).await),
        replicas[1].as_ref().unwrap().log()
    );
    let core_bodies: Vec<Value> = core.all().into_iter().map(|(_, b)| b).collect();
    assert!(audited(&core_bodies).iter().all(|n| *n == 1));
    let recovered = stored(&js)
        .await
        .into_iter()
        .filter(|b| b["recovered"] == true)
        .count();
    eprintln!(
        "{} kicks landed before the kill; {recovered} audited by the new leader as recovered",
        gone.len()
    );
    assert!(recovered >= 1);
    // The unfinished record is cleared from the bucket.
    let kv = js.get_key_value("connwatch").await.unwrap();
    assert!(
        eventually(WAIT, || async {
            let Ok(Some(e)) = kv.entry("state").await else {
                return false;
            };
            let state: Value = serde_json::from_slice(&e.value).unwrap();
            state["kicked"]["unfinished"].is_null()
        })
        .await
    );
    leak.close().await;
}

/// The cids of user `leaky` open on server 0, from its own /connz.
fn open_cids(cluster: &Cluster) -> BTreeSet<u64> {
    connz_of_server(cluster, 0)
        .1
        .iter()
        .filter(|c| c["authorized_user"] == "leaky")
        .map(|c| c["cid"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_up_on_stays_given_up_on_under_the_next_leader() {
    let (_dir, cluster, mut replicas) =
        kick_replicas("max_per_user = 20\nmax_attempts = 2\nreturn_window = \"1m\"\n").await;
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let comeback = load::open(leaky_spec(&cluster, 30).reconnect(Duration::from_millis(100)))
        .await
        .unwrap();

    // The leader gives up on the client and saves that in the bucket.
    let given_up = |s: &Value| {
        s["kicked"]["clients"]
            .as_object()
            .is_some_and(|c| c.values().any(|r| r["given_up_at"].is_string()))
    };
    assert!(
        wait_saved_state(&js, given_up).await.is_some(),
        "never gave up: {}",
        replicas[0].as_ref().unwrap().log()
    );
    assert!(
        eventually(WAIT, || async {
            core.of("kick_ineffective")
                .iter()
                .any(|a| a["given_up"] == true)
        })
        .await
    );
    assert!(!core.of("connection_kicked").is_empty());
    let killed = chrono::Utc::now();
    fail_over(&mut replicas).await;

    // The client keeps coming back, and the new leader leaves it alone: no kick audited after
    // the kill (the killed leader audits nothing after it), at core subscribers or in the stream.
    assert!(comeback.alive() > 10, "the client is not there");
    let after_kill = |b: &Value| {
        b["type"] == "io.connwatch.advisory.v1.connection_kicked"
            && b["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= killed)
    };
    let core_after: Vec<_> = core
        .all()
        .into_iter()
        .filter(|(_, b)| after_kill(b))
        .collect();
    assert!(
        core_after.is_empty(),
        "the new leader kicked a client given up on: {core_after:#?}"
    );
    let stored_after: Vec<_> = stored(&js).await.into_iter().filter(after_kill).collect();
    assert!(stored_after.is_empty(), "{stored_after:#?}");
    comeback.close().await;
}

/// The replicas' configuration without kicks.
fn replicas_config(cluster: &Cluster) -> String {
    format!(
        "{}[sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n[live]\nreconcile_interval = \"1ms\"\n\
         [detect]\nmax_connections_per_user = 10\n\
         [advisory]\njetstream = true\n{}\
         [ha]\nenabled = true\nlease = \"{}s\"\n",
        cluster.connwatch_toml(),
        cluster.jetstream_toml(),
        LEASE.as_secs()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_leader_decided_but_did_not_publish_the_next_leader_publishes_once() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    let dir = tempfile::tempdir().unwrap();
    let cluster = jetstream_cluster(dir.path());
    let (_core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    // The advisory stream, full: it refuses every advisory until its limit is raised, so the
    // leader decides and saves, but cannot publish.
    let full = Config {
        name: STREAM.into(),
        subjects: vec!["connwatch.advisory.>".into()],
        max_messages: 1,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 3,
        ..Config::default()
    };
    js.create_stream(full.clone()).await.unwrap();
    js.publish("connwatch.advisory.placeholder", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let path = write_config(dir.path(), &replicas_config(&cluster));
    let mut replicas = leader_and_follower(&path, dir.path()).await;
    let leak = leaky_worker(&cluster).await;

    // The leader saved the firing advisory in the bucket's outbox, and the stream refused it.
    let kv = js.get_key_value("connwatch").await.unwrap();
    let outboxed = || async {
        let entry = kv.entry("state").await.ok()??;
        let state: Value = serde_json::from_slice(&entry.value).ok()?;
        state["outbox"]
            .as_array()?
            .iter()
            .find(|a| excessive("firing")(&a["body"]))
            .map(|a| a["body"].clone())
    };
    assert!(
        eventually(WAIT, || async { outboxed().await.is_some() }).await,
        "nothing in the outbox: {}",
        replicas[0].as_ref().unwrap().log()
    );
    let decided = outboxed().await.unwrap();
    let leader = replicas[0].as_ref().unwrap();
    let refused = "connwatch_advisories_publish_failures_total{kind=\"refused\"}";
    assert!(
        wait_until_async(WAIT, || leader.metric(refused).unwrap_or(0.0) >= 1.0).await,
        "{}",
        leader.log()
    );
    assert!(!stored(&js).await.iter().any(excessive("firing")));

    // kill -9 the leader, then the stream takes advisories again.
    drop(replicas[0].take());
    js.update_stream(Config {
        max_messages: -1,
        ..full
    })
    .await
    .unwrap();
    assert!(
        wait_until_async(2 * LEASE, || sole_leader(&replicas) == Some(1)).await,
        "replica 1 does not lead: {}",
        replicas[1].as_ref().unwrap().log()
    );
    // The new leader publishes its predecessor's decision: the same advisory, once.
    wait_stored(&js, "firing", || replicas[1].as_ref().unwrap().log()).await;
    let next = replicas[1].as_ref().unwrap();
    let rounds = next.rounds().0;
    assert!(wait_until_async(WAIT, || next.rounds().0 >= rounds + 4).await);
    let all = stored(&js).await;
    let firing: Vec<&Value> = all.iter().filter(|b| excessive("firing")(b)).collect();
    assert_eq!(firing.len(), 1, "stream: {all:#?}");
    assert_eq!(firing[0]["id"], decided["id"]);
    assert_eq!(firing[0]["since"], decided["since"]);
    leak.close().await;
}

/// `leaky`'s open connections in every server's own `/connz`.
fn leaky_open(cluster: &Cluster) -> usize {
    (0..cluster.len())
        .map(|i| {
            connz_of_server(cluster, i)
                .1
                .iter()
                .filter(|c| c["authorized_user"] == "leaky")
                .count()
        })
        .sum()
}

/// `[enforce]` with replicas: only the leader closes and announces. 20 connections of a user
/// capped at 8: the servers' own `/connz` shows 8, one `connection_cap_enforced` reaches core
/// subscribers and the stream, and the follower, whose live census saw the same crossing,
/// closed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_enforces_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = jetstream_cluster(dir.path());
    let config = format!(
        "{}[sweep]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\
         [enforce]\nenabled = true\ndry_run = false\n\
         [[enforce.caps]]\naccount = \"APP\"\nuser = \"leaky\"\nmax_connections = 8\n\
         [advisory]\njetstream = true\n{}[ha]\nenabled = true\nlease = \"{}s\"\n",
        cluster.connwatch_toml(),
        cluster.jetstream_toml(),
        LEASE.as_secs()
    );
    let path = write_config(dir.path(), &config);
    let replicas = leader_and_follower(&path, dir.path()).await;
    let (leader, follower) = (replicas[0].as_ref().unwrap(), replicas[1].as_ref().unwrap());
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let events = |r: &Running| r.metric("connwatch_live_events_total").unwrap_or(0.0);
    let follower_events = events(follower);
    let leak = load::open(leaky_spec(&cluster, 20)).await.unwrap();

    assert!(
        wait_until_async(WAIT, || leaky_open(&cluster) == 8).await,
        "not cut to the cap: {} open\n{}",
        leaky_open(&cluster),
        leader.log()
    );
    let is_cap = |b: &Value| b["type"] == "io.connwatch.advisory.v1.connection_cap_enforced";
    assert!(
        eventually(WAIT, || async { stored(&js).await.iter().any(is_cap) }).await,
        "no connection_cap_enforced in the stream: {}",
        leader.log()
    );
    // The follower followed the whole burst and its closes (20 connects, 12 disconnects), and
    // runs a cap round after each: by then it would have closed and announced, had it acted.
    assert!(
        wait_until_async(WAIT, || events(follower) >= follower_events + 32.0).await,
        "the follower did not see the burst: {}",
        follower.log()
    );
    let closed = |r: &Running| {
        r.metric("connwatch_cap_connections_closed_total{dry_run=\"false\"}")
            .unwrap_or(0.0)
    };
    assert_eq!(closed(leader), 12.0, "{}", leader.log());
    assert_eq!(closed(follower), 0.0, "{}", follower.log());
    let enforced: Vec<_> = stored(&js).await.into_iter().filter(is_cap).collect();
    assert_eq!(enforced.len(), 1, "{enforced:#?}");
    assert_eq!(enforced[0]["closed"].as_array().map(Vec::len), Some(12));
    assert!(
        eventually(WAIT, || async {
            !core.of("connection_cap_enforced").is_empty()
        })
        .await
    );
    assert_eq!(core.of("connection_cap_enforced").len(), 1);
    assert_eq!(leaky_open(&cluster), 8);
    drop(leak);
}

/// A by-hand kick under `[ha]`: the leader follows its audit into its kick memory and saves it
/// in the bucket with its state; after a kill -9 the next leader still knows it and reports the
/// client's return once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_by_hand_kick_is_in_the_bucket_and_its_return_noticed_by_the_next_leader() {
    // One connection, far under the threshold: the policy kicks nothing itself.
    let (dir, cluster, mut replicas) = kick_replicas("return_window = \"1m\"\n").await;
    let (core, js, _reader) = jetstream_reader(&cluster.client_url(1)).await;
    let worker = load::open(leaky_spec(&cluster, 1)).await.unwrap();
    let path = dir.path().join("connwatch.toml");
    kick_by_hand(&cluster, 0, "worker", &path).await;
    assert!(wait_until_async(WAIT, || worker.alive() == 0).await);
    let remembered = |s: &Value| {
        s["kicked"]["clients"]
            .as_object()
            .is_some_and(|c| c.values().any(|r| r["name"] == "worker" && r["kicks"] == 1))
    };
    assert!(
        wait_saved_state(&js, remembered).await.is_some(),
        "the by-hand kick is not in the bucket: {}",
        replicas[0].as_ref().unwrap().log()
    );
    fail_over(&mut replicas).await;

    // The client comes back (same user, name and IP): the new leader reports it, once.
    let _back = load::open(leaky_spec(&cluster, 1)).await.unwrap();
    let ineffective = |b: &Value| {
        b["type"] == "io.connwatch.advisory.v1.kick_ineffective" && b["name"] == "worker"
    };
    let found = core.wait_for(0, "kick_ineffective", ineffective).await.2;
    assert_eq!(
        (found["kicks"].clone(), found["returns"].clone()),
        (1.into(), 1.into())
    );
    let next = replicas[1].as_ref().unwrap();
    let rounds = next.rounds().0;
    assert!(wait_until_async(WAIT, || next.rounds().0 >= rounds + 3).await);
    let ids: BTreeSet<String> = core
        .all()
        .into_iter()
        .filter(|(_, b)| ineffective(b))
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}
