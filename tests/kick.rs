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
        "{}[live]\nreconcile_interval = \"700ms\"\n[sweep]\ninterval = \"700ms\"\ntimeout = \"2s\"\n[detect]\nidle_threshold = \"1s\"\n\
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
    // Sent `kick.concurrency` at a time: still one audit per connection, each with its own result.
    let manual: Vec<Value> = seen
        .of("connection_kicked")
        .into_iter()
        .filter(|k| k["rule"] == "manual")
        .collect();
    let cids: std::collections::BTreeSet<u64> =
        manual.iter().map(|k| k["cid"].as_u64().unwrap()).collect();
    assert_eq!(cids.len(), 130, "an audit repeated or lost a connection");
    assert!(
        manual.iter().all(|k| k["result"] == "kicked"),
        "{manual:#?}"
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
    let cid = cid_named(&cluster, 1, "test-subscriber");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_users_are_never_kicked_and_only_listed_users_may_be() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("guarded", "pw")
                .user("target", "pw")
                .user("bystander", "pw"),
        ),
    )
    .unwrap();
    let open = |user: &'static str| {
        load::open(
            LoadSpec::new(
                cluster.client_url(0),
                LoadAuth::user_password(user, "pw"),
                130,
            )
            .name("worker"),
        )
    };
    let (guarded, target, bystander) = (
        open("guarded").await.unwrap(),
        open("target").await.unwrap(),
        open("bystander").await.unwrap(),
    );
    let (seen, _c) = Seen::subscribe(&cluster.client_url(1)).await;
    // `guarded` is in both lists: protection wins. `bystander` is in neither.
    let path = write_config(
        dir.path(),
        &kick_config(
            &cluster,
            "dry_run = false\nmax_per_user = 30\n\
             [[kick.protect]]\naccount = \"APP\"\nuser = \"guarded\"\n\
             [[kick.only]]\naccount = \"APP\"\nuser = \"guarded\"\n\
             [[kick.only]]\naccount = \"APP\"\nuser = \"target\"\n",
        ),
    );
    let running = Running::start(&path, dir.path().join("run.log"));
    // 130 - 30 = 100: `target` is kicked once, down to its threshold.
    assert!(
        wait_until_async(WAIT, || target.alive() == 100).await,
        "target not kicked: {} alive",
        target.alive()
    );
    let rounds = running.rounds().0;
    assert!(wait_until_async(WAIT, || running.rounds().0 >= rounds + 4).await);
    assert_eq!(running.terminate(), Some(0));
    let kicks = seen.of("connection_kicked");
    assert_eq!(kicks.len(), 30, "{kicks:#?}");
    for k in &kicks {
        assert_valid(k);
        assert_eq!(
            (k["user"].as_str(), k["result"].as_str()),
            (Some("target"), Some("kicked"))
        );
    }
    assert_eq!(guarded.alive(), 130, "a protected user was kicked");
    assert_eq!(
        bystander.alive(),
        130,
        "a user outside kick.only was kicked"
    );
    assert_eq!(target.alive(), 100);

    // By hand the lists hold too, and the preview says why.
    for (user, why) in [
        ("guarded", "protected by kick.protect"),
        ("bystander", "not in kick.only"),
    ] {
        let out = tokio::task::spawn_blocking({
            let p = path.clone();
            move || {
                run_connwatch(
                    [
                        "--config",
                        p.to_str().unwrap(),
                        "kick",
                        "--account",
                        "APP",
                        "--user",
                        user,
                        "--yes",
                    ],
                    WAIT,
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains("nothing to kick"), "{}", out.stdout);
        assert!(out.stdout.contains(why), "{}", out.stdout);
    }
    assert_eq!((guarded.alive(), bystander.alive()), (130, 130));
}

/// The open connections of `user` on server `i`, as kick plans, from the server's own /connz.
fn plans_on(cluster: &Cluster, i: usize, user: &str) -> Vec<connwatch::kick::KickPlan> {
    let (id, connections) = connz_of_server(cluster, i);
    connections
        .iter()
        .filter(|c| c["authorized_user"] == user)
        .map(|c| {
            plan(
                cluster.server_name(i),
                &id,
                c["cid"].as_u64().unwrap(),
                user,
            )
        })
        .collect()
}

fn plan(server: &str, server_id: &str, cid: u64, user: &str) -> connwatch::kick::KickPlan {
    connwatch::kick::KickPlan {
        server: server.into(),
        server_id: server_id.into(),
        cid,
        account: "APP".into(),
        account_name: None,
        user: user.into(),
        user_name: None,
        name: "worker".into(),
        ip: "127.0.0.1".into(),
        idle: Duration::ZERO,
        age: Duration::ZERO,
        user_connections: 0,
        threshold: 0,
        pattern: None,
    }
}

async fn system(cluster: &Cluster, i: usize) -> connwatch::nats::System {
    let client =
        async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
            .connect(cluster.client_url(i))
            .await
            .unwrap();
    connwatch::nats::System::new(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_to_one_server_go_concurrently_but_never_more_than_kick_concurrency() {
    use futures::StreamExt;
    use std::sync::{Arc, Mutex};
    const CONCURRENCY: usize = 8;
    const KICKS: u64 = 20;
    const GRACE: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    // A system-account responder standing in for one server's KICK endpoint: it answers only
    // once it holds CONCURRENCY requests (or all that are left), so kicks sent one at a time
    // would all time out; it records the most requests it ever held at once (waiting a moment
    // for more before answering, which catches a sender with no bound).
    let responder = system(&cluster, 0).await;
    let client = responder.client().clone();
    let mut sub = client
        .subscribe("$SYS.REQ.SERVER.NSTANDIN.KICK")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let most = Arc::new(Mutex::new(0usize));
    let answered_cids = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let (most, answered_cids) = (most.clone(), answered_cids.clone());
        async move {
            let mut held = Vec::new();
            let mut answered = 0;
            while let Some(m) = sub.next().await {
                held.push(m);
                {
                    let mut most = most.lock().unwrap();
                    *most = (*most).max(held.len());
                }
                if held.len() < CONCURRENCY && held.len() as u64 != KICKS - answered {
                    continue;
                }
                // More than CONCURRENCY in flight would show up here: a bounded sender sends no
                // more until answered, so this grace only ever ends by timing out.
                while let Ok(Some(m)) = tokio::time::timeout(GRACE, sub.next()).await {
                    held.push(m);
                }
                {
                    let mut most = most.lock().unwrap();
                    *most = (*most).max(held.len());
                }
                for m in held.drain(..) {
                    let body: Value = serde_json::from_slice(&m.payload).unwrap();
                    let cid = body["cid"].as_u64().unwrap();
                    answered_cids.lock().unwrap().push(cid);
                    answered += 1;
                    // Odd cids are gone already, so each outcome must match its own plan.
                    let reply = if cid % 2 == 1 {
                        r#"{"error":{"code":404,"description":"no such client"}}"#
                    } else {
                        r#"{"data":{}}"#
                    };
                    client
                        .publish(m.reply.unwrap(), reply.into())
                        .await
                        .unwrap();
                }
                client.flush().await.unwrap();
            }
        }
    });

    let kicker = system(&cluster, 1).await;
    let plans: Vec<_> = (0..KICKS)
        .map(|cid| plan("standin", "NSTANDIN", cid, "leaky"))
        .collect();
    let outcomes = send_all(&kicker, &plans, Duration::from_secs(10), CONCURRENCY).await;
    assert_eq!(outcomes.len(), plans.len());
    for (p, o) in plans.iter().zip(&outcomes) {
        let want = if p.cid % 2 == 1 {
            connwatch::kick::executor::Outcome::Gone
        } else {
            connwatch::kick::executor::Outcome::Kicked
        };
        assert_eq!(*o, want, "cid {}", p.cid);
    }
    assert_eq!(
        *most.lock().unwrap(),
        CONCURRENCY,
        "kicks in flight at once"
    );
    let mut cids = answered_cids.lock().unwrap().clone();
    cids.sort_unstable();
    assert_eq!(cids, (0..KICKS).collect::<Vec<_>>(), "each kick sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_only_its_own_kicks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path());
    let mut loads = Vec::new();
    for i in 0..3 {
        loads.push(
            load::open(LoadSpec::new(cluster.client_url(i), leaky(), 40).name("worker"))
                .await
                .unwrap(),
        );
    }
    // Plans for every server, interleaved, so outcomes must be put back in plan order.
    let per_server: Vec<_> = (0..3).map(|i| plans_on(&cluster, i, "leaky")).collect();
    assert!(per_server.iter().all(|p| p.len() == 40));
    let mut plans = Vec::new();
    for k in 0..40 {
        for p in &per_server {
            plans.push(p[k].clone());
        }
    }
    let kicker = system(&cluster, 0).await;
    cluster.pause(2).unwrap();
    let outcomes = send_all(&kicker, &plans, Duration::from_secs(2), 8).await;
    let frozen = cluster.server_name(2).to_string();
    for (p, o) in plans.iter().zip(&outcomes) {
        if p.server == frozen {
            assert!(
                matches!(
                    o,
                    connwatch::kick::executor::Outcome::Failed(
                        connwatch::kick::executor::KickError::TimedOut(_)
                    )
                ),
                "{} cid {}: {o:?}",
                p.server,
                p.cid
            );
        } else {
            assert_eq!(
                *o,
                connwatch::kick::executor::Outcome::Kicked,
                "{} cid {}",
                p.server,
                p.cid
            );
        }
    }
    // The servers' own /connz agree: the other two lost every kicked connection.
    for i in 0..2 {
        assert!(plans_on(&cluster, i, "leaky").is_empty(), "server {i}");
    }
    // A KICK that timed out may still be carried out once the server runs again: "failed"
    // means unconfirmed, not undone.
    cluster.resume(2).unwrap();
}

/// A cluster, `n` connections of client `worker` (APP/leaky) that connect again `delay` after
/// a kick, an advisory subscriber, and connwatch's configuration: kicks on with `kick_extra`,
/// `kick.return_window` 1 m, and a `state.file`.
struct Comeback {
    cluster: Cluster,
    comeback: Load,
    seen: Seen,
    _c: async_nats::Client,
    state: std::path::PathBuf,
    path: std::path::PathBuf,
}

async fn comeback(dir: &Path, n: usize, delay: Duration, kick_extra: &str) -> Comeback {
    let cluster = cluster(dir);
    let comeback = load::open(
        LoadSpec::new(cluster.client_url(0), leaky(), n)
            .name("worker")
            .reconnect(delay),
    )
    .await
    .unwrap();
    let (seen, _c) = Seen::subscribe(&cluster.client_url(1)).await;
    let state = dir.join("state.json");
    let path = write_config(
        dir,
        &format!(
            "{}return_window = \"1m\"\n[state]\nfile = {:?}\n",
            kick_config(&cluster, kick_extra),
            state.display().to_string()
        ),
    );
    Comeback {
        cluster,
        comeback,
        seen,
        _c,
        state,
        path,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_up_on_stays_so_across_restarts_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let Comeback {
        cluster: _cluster,
        comeback,
        seen,
        _c,
        state,
        path,
    } = comeback(
        dir.path(),
        130,
        Duration::from_millis(100),
        "max_per_user = 20\nmax_attempts = 1\ndry_run = false\n",
    )
    .await;
    let log = |n: &str| dir.path().join(format!("{n}.log"));

    // Kicked once, back at once: given up on.
    let running = Running::start(&path, log("first"));
    let given_up = seen
        .wait_for(0, "kick_ineffective", |a| a["given_up"] == true)
        .await
        .2;
    assert!(
        given_up["message"]
            .as_str()
            .unwrap()
            .contains("until `connwatch kick --forget`"),
        "{given_up:#}"
    );
    assert_eq!(running.terminate(), Some(0));
    let kicks = seen.of("connection_kicked").len();
    assert!(kicks >= 20, "{kicks}");

    // A restart keeps the decision: several complete rounds, no kick; by hand neither.
    let running = Running::start(&path, log("second"));
    assert!(wait_until_async(WAIT, || running.rounds().0 >= 4).await);
    assert_eq!(running.terminate(), Some(0));
    assert_eq!(
        seen.of("connection_kicked").len(),
        kicks,
        "kicked a client it gave up on"
    );
    let preview = kick_cmd(&path, &["--account", "APP", "--user", "leaky"]).await;
    assert_eq!(preview.code, Some(0), "{}", preview.stderr);
    assert!(
        preview.stdout.contains("gave up on 1 of its clients")
            && preview
                .stdout
                .contains("--forget --account APP --user leaky"),
        "{}",
        preview.stdout
    );

    // The operator forgets it (with the service stopped); the next run kicks it again.
    let forgot = kick_cmd(&path, &["--forget", "--account", "APP", "--user", "leaky"]).await;
    assert_eq!(forgot.code, Some(0), "{}", forgot.stderr);
    assert!(
        forgot
            .stdout
            .contains("forgot APP/leaky name \"worker\" at 127.0.0.1")
            && forgot.stdout.contains("(was given up on)")
            && forgot.stdout.contains("1 client(s) forgotten"),
        "{}",
        forgot.stdout
    );
    let again = kick_cmd(&path, &["--forget", "--account", "APP", "--user", "leaky"]).await;
    assert!(
        again.stdout.contains("nothing to forget"),
        "{}",
        again.stdout
    );
    let running = Running::start(&path, log("third"));
    assert!(
        wait_until_async(WAIT, || seen.of("connection_kicked").len() >= kicks + 20).await,
        "not kicked after --forget: {}",
        running.log()
    );
    assert_eq!(running.terminate(), Some(0));
    for k in &seen.of("connection_kicked")[kicks..] {
        assert_eq!(
            (k["user"].as_str(), k["result"].as_str()),
            (Some("leaky"), Some("kicked"))
        );
    }

    // --all forgets everyone.
    let all = kick_cmd(&path, &["--forget", "--all"]).await;
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    assert!(
        all.stdout.contains("1 client(s) forgotten"),
        "{}",
        all.stdout
    );
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["kicked"]["clients"], serde_json::json!({}));
    drop(comeback);
}

/// A by-hand kick while `connwatch run` holds `state.file`: its process cannot save it, so
/// `run` follows its `connection_kicked` audit (`rule: manual`) into its kick memory: the
/// client's return is reported (`kick_ineffective`) and the state file keeps the kick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_by_hand_kick_while_the_service_runs_is_in_its_kick_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Kicks on (one connection is far under the threshold: the policy kicks nothing itself).
    let Comeback {
        cluster,
        comeback,
        seen,
        _c,
        state,
        path,
    } = comeback(dir.path(), 1, Duration::from_millis(300), "").await;
    let running = Running::start(&path, dir.path().join("run.log"));
    assert!(wait_until_async(WAIT, || running.rounds().0 >= 1).await);

    let kicked = kick_by_hand(&cluster, 0, "worker", &path).await;
    assert!(kicked.stdout.contains("kicked"), "{}", kicked.stdout);

    // Back 300 ms later: `run` reports it, though it never kicked it itself.
    let back = seen
        .wait_for(0, "kick_ineffective", |a| {
            a["type"] == "io.connwatch.advisory.v1.kick_ineffective" && a["name"] == "worker"
        })
        .await
        .2;
    assert_valid(&back);
    assert_eq!(
        (back["kicks"].clone(), back["returns"].clone()),
        (1.into(), 1.into())
    );
    assert!(comeback.reconnects() >= 1);
    let own = seen
        .of("connection_kicked")
        .into_iter()
        .filter(|k| k["rule"] != "manual")
        .count();
    assert_eq!(own, 0, "the service kicked on its own");
    assert_eq!(running.terminate(), Some(0));

    // Saved with the service's state.
    assert_eq!(
        saved_kicked_clients(&state),
        vec![("worker".to_string(), 1, 1)]
    );
}

/// Every plan's outcome, never stopped: each kick must have been sent.
async fn send_all(
    system: &connwatch::nats::System,
    plans: &[connwatch::kick::KickPlan],
    timeout: Duration,
    concurrency: usize,
) -> Vec<connwatch::kick::executor::Outcome> {
    let never = tokio_util::sync::CancellationToken::new();
    connwatch::kick::executor::kick_until(system, plans, timeout, concurrency, &never)
        .await
        .into_iter()
        .map(|o| o.expect("not stopped: every kick is sent"))
        .collect()
}
