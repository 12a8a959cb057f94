//! `connwatch report` against real 3-node nats-server clusters.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::report_user as user;
use support::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `connwatch report --format json --top 0` with a config, returns the parsed report.
fn report_json(dir: &std::path::Path, config: &str) -> Value {
    let path = write_config(dir, config);
    let out = run_connwatch(
        [
            "--config",
            path.to_str().unwrap(),
            "report",
            "--format",
            "json",
            "--top",
            "0",
        ],
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(0), "report failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", out.stdout))
}

/// Per (account, user): server name → connections, as the servers' own HTTP /connz say.
fn ground_truth(
    cluster: &Cluster,
    servers: &[usize],
) -> BTreeMap<(String, String), BTreeMap<String, u64>> {
    let mut truth: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for &i in servers {
        for (key, n) in cluster.connz_counts(i).unwrap() {
            truth
                .entry(key)
                .or_default()
                .insert(cluster.server_name(i).to_string(), n);
        }
    }
    truth
}

/// Per (account, user): server name → connections, as connwatch reported them.
fn reported(report: &Value) -> BTreeMap<(String, String), BTreeMap<String, u64>> {
    report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let key = (
                u["account"].as_str().unwrap().to_string(),
                u["user"].as_str().unwrap().to_string(),
            );
            let by_server = u["by_server"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            (key, by_server)
        })
        .collect()
}

/// `user`'s connections by remote IP over every server, as the servers' own `/connz` say.
fn ips_of(cluster: &Cluster, user: &str) -> BTreeMap<String, u64> {
    let mut ips = BTreeMap::new();
    for i in 0..cluster.len() {
        let connz = cluster
            .monitor_get(i, "/connz?auth=true&limit=100000")
            .unwrap();
        for c in connz["connections"].as_array().unwrap() {
            if c["authorized_user"] == user {
                *ips.entry(c["ip"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    ips
}

/// connwatch's own connection is in the ground truth read after it exits: drop the system
/// account from both sides, the app accounts are what must match exactly.
fn without_system(
    mut m: BTreeMap<(String, String), BTreeMap<String, u64>>,
) -> BTreeMap<(String, String), BTreeMap<String, u64>> {
    m.retain(|(account, _), _| account != "SYS");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_is_exact_across_servers_and_pages_and_a_stopped_server_makes_it_partial() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(
                AccountSpec::new("APP")
                    .user("leaky", "leaky-pw")
                    .user("app", "app-pw"),
            )
            .account(
                AccountSpec::new("OTHER")
                    .user("batch", "batch-pw")
                    .user("fleet", "fleet-pw"),
            ),
    )
    .unwrap();

    // 2,500 leaked (idle, named) connections of one user on one server, a healthy publishing
    // user spread over all three, an unnamed batch user on the second, and a fleet whose every
    // client is a host of its own (its own loopback address), 20 on each server.
    let leaky = LoadAuth::user_password("leaky", "leaky-pw");
    let app = LoadAuth::user_password("app", "app-pw");
    let mut loads = vec![
        load::open(LoadSpec::new(cluster.client_url(0), leaky, 2500).name("leaky-worker"))
            .await
            .unwrap(),
        load::open(LoadSpec::new(
            cluster.client_url(1),
            LoadAuth::user_password("batch", "batch-pw"),
            42,
        ))
        .await
        .unwrap(),
    ];
    for i in 0..3 {
        let spec = LoadSpec::new(cluster.client_url(i), app.clone(), 30)
            .name("orders")
            .publish_every(Duration::from_millis(200));
        loads.push(load::open(spec).await.unwrap());
        let fleet = LoadSpec::new(
            cluster.client_url(i),
            LoadAuth::user_password("fleet", "fleet-pw"),
            20,
        )
        .name("pod")
        .own_ips_from(std::net::Ipv4Addr::new(127, 1, 0, 1 + 20 * i as u8));
        loads.push(load::open(fleet).await.unwrap());
    }

    let state = dir.path().join("state.json");
    let base = format!(
        "{}\n[sweep]\ntimeout = \"3s\"\n[detect]\nidle_threshold = \"1s\"\n[state]\nfile = {:?}\n",
        cluster.connwatch_toml(),
        state
    );

    // One page per server (default page size), then forced paging with small pages.
    for (label, extra) in [("one page", ""), ("paged by 500", "page_size = 500\n")] {
        let config = base.replace("[sweep]\n", &format!("[sweep]\n{extra}"));
        let dirc = dir.path().to_path_buf();
        let report = tokio::task::spawn_blocking(move || report_json(&dirc, &config))
            .await
            .unwrap();
        let truth = without_system(ground_truth(&cluster, &[0, 1, 2]));
        assert_eq!(
            without_system(reported(&report)),
            truth,
            "{label}: per-user counts differ from the servers'"
        );
        assert_eq!(
            truth[&("APP".into(), "leaky".into())]["n1"],
            2500,
            "{label}: load not as planned"
        );
        let sweep = &report["sweep"];
        assert_eq!(sweep["partial"], false, "{label}");
        assert_eq!(sweep["servers_expected"], 3, "{label}");
        assert_eq!(sweep["servers_responded"], 3, "{label}");
        let leaky = user(&report, "APP", "leaky");
        assert_eq!(leaky["connections"], 2500);
        assert_eq!(leaky["over_threshold"], true);
        assert_eq!(leaky["by_name"]["leaky-worker"], 2500);
        assert_eq!(leaky["by_ip"]["127.0.0.1"], 2500);
        let app = user(&report, "APP", "app");
        assert_eq!(app["connections"], 90);
        assert_eq!(app["over_threshold"], false);
        assert_eq!(user(&report, "OTHER", "batch")["by_name"][""], 42);
        let fleet = user(&report, "OTHER", "fleet");
        let ips = ips_of(&cluster, "fleet");
        assert_eq!(ips.len(), 60, "{label}: load not as planned: {ips:?}");
        assert_eq!(fleet["by_ip"], serde_json::json!(ips), "{label}");
        let spread = &fleet["spread"];
        assert_eq!(
            (&spread["processes"], &spread["ips"], &spread["max_per_ip"]),
            (&60.into(), &60.into(), &1.into()),
            "{label}: {spread}"
        );
        assert_eq!(leaky["spread"]["processes"], 1, "{label}");
        let sys = report["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["account"] == "SYS")
            .unwrap();
        assert_eq!(sys["system"], true);
        if label == "paged by 500" {
            // n1 holds 2,500+ connections: its PING reply, then ONE directed request for all
            // of them (one snapshot), not a page per 500.
            let n1 = sweep["servers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "n1")
                .unwrap();
            assert_eq!(n1["pages"], 2, "{n1}");
        }
    }

    // Leak suspects: once the leaked connections are idle past 1s, all of them count, and none
    // of the publishing ones.
    let dirc = dir.path().to_path_buf();
    let config = base.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut last = Value::Null;
        let ok = wait_until(Duration::from_secs(15), || {
            last = report_json(&dirc, &config);
            user(&last, "APP", "leaky")["idle_zero_msgs"] == 2500
        });
        assert!(
            ok,
            "leaked connections never counted idle: {}",
            user(&last, "APP", "leaky")
        );
        last
    })
    .await
    .unwrap();
    assert_eq!(user(&report, "APP", "app")["idle_zero_msgs"], 0);
    assert_eq!(
        user(&report, "APP", "leaky")["suspects"]
            .as_array()
            .unwrap()
            .len(),
        20
    );

    // A stopped server: the sweep is partial, names it, and ends within the timeout.
    cluster.kill(2).unwrap();
    let dirc = dir.path().to_path_buf();
    let config = base.clone();
    let report = tokio::task::spawn_blocking(move || report_json(&dirc, &config))
        .await
        .unwrap();
    let sweep = &report["sweep"];
    assert_eq!(sweep["partial"], true, "{sweep}");
    assert_eq!(sweep["missing"], serde_json::json!(["n3"]), "{sweep}");
    assert_eq!(sweep["servers_responded"], 2);
    assert!(
        sweep["duration_ms"].as_u64().unwrap() < 6_000,
        "sweep outlived twice its timeout: {sweep}"
    );
    assert_eq!(
        without_system(reported(&report)),
        without_system(ground_truth(&cluster, &[0, 1]))
    );

    // Without remembered servers the cluster still counts the killed one: partial, unnamed.
    let config = base.replace(&format!("file = {:?}\n", state), "");
    let dirc = dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || report_json(&dirc, &config))
        .await
        .unwrap();
    assert_eq!(report["sweep"]["partial"], true, "{}", report["sweep"]);
    assert_eq!(report["sweep"]["missing"], serde_json::json!(["<unknown>"]));

    for l in loads {
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_creds_work_and_users_show_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .mode(AuthMode::Operator)
            .account(AccountSpec::new("APP").user("alice", "").user("bob", "")),
    )
    .unwrap();
    let alice = LoadAuth::from_creds_file(cluster.creds_path("APP", "alice").unwrap()).unwrap();
    let bob = LoadAuth::from_creds_file(cluster.creds_path("APP", "bob").unwrap()).unwrap();
    let l1 = load::open(LoadSpec::new(cluster.client_url(1), alice, 120).name("alice-svc"))
        .await
        .unwrap();
    let l2 = load::open(LoadSpec::new(cluster.client_url(2), bob, 3))
        .await
        .unwrap();

    let config = cluster.connwatch_toml();
    assert!(
        config.contains("creds = "),
        "operator mode uses a .creds file: {config}"
    );
    let dirc = dir.path().to_path_buf();
    let cfg = config.clone();
    let report = tokio::task::spawn_blocking(move || report_json(&dirc, &cfg))
        .await
        .unwrap();
    assert_eq!(report["sweep"]["partial"], false);
    let alice = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_name"] == "alice")
        .unwrap();
    assert!(
        alice["user"].as_str().unwrap().starts_with('U'),
        "user is the nkey: {alice}"
    );
    assert!(
        alice["account"].as_str().unwrap().starts_with('A'),
        "account is the key: {alice}"
    );
    assert_eq!(alice["account_name"], "APP");
    assert_eq!(alice["connections"], 120);
    assert_eq!(alice["by_server"]["n2"], 120);
    assert_eq!(alice["over_threshold"], true);
    let sys = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["system"] == true)
        .unwrap();
    assert_eq!(sys["by_name"]["connwatch"], 1);

    // The table shows the human name beside the key, and an account override by name applies.
    let path = write_config(
        dir.path(),
        &format!("{config}\n[[detect.overrides]]\naccount = \"APP\"\nuser = \"alice\"\nmax_connections = 500\n"),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_connwatch(["--config", path.to_str().unwrap(), "report"], RUN_TIMEOUT)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("alice (U"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.contains(" 500 ") && !line.contains("OVER"),
        "override not applied: {line}"
    );
    assert!(line.starts_with("APP (A"), "{line}");
    l1.close().await;
    l2.close().await;
}

#[test]
fn connection_problems_have_distinct_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    let urls = format!("servers = {:?}\n", cluster.client_urls());
    let run = |body: &str| {
        let path = write_config(
            dir.path(),
            &format!("[nats]\n{urls}{body}[sweep]\ntimeout = \"2s\"\n"),
        );
        run_connwatch(["--config", path.to_str().unwrap(), "report"], RUN_TIMEOUT)
    };

    let out = run("user = \"app\"\npassword = \"app-pw\"\n");
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(
        out.stderr.contains("not a system-account user"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("`APP`"), "{}", out.stderr);

    let out = run("user = \"sys\"\npassword = \"wrong\"\n");
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("rejected"), "{}", out.stderr);

    let unreachable = write_config(
        dir.path(),
        "[nats]\nservers = [\"nats://127.0.0.1:1\"]\nuser = \"sys\"\npassword = \"x\"\nconnect_timeout = \"1s\"\n",
    );
    let out = run_connwatch(
        ["--config", unreachable.to_str().unwrap(), "report"],
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach any NATS server"),
        "{}",
        out.stderr
    );

    let creds = dir.path().join("broken.creds");
    std::fs::write(
        &creds,
        "-----BEGIN NATS USER JWT-----\nnot a jwt\n------END NATS USER JWT------\n",
    )
    .unwrap();
    let out = run(&format!("creds = {:?}\n", creds));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("`nats.creds`"), "{}", out.stderr);
}

/// A second system-account client answering each request on `subject` with the payloads
/// `replies` holds at that moment (after `delay`), as anything in the system account can.
async fn responder(
    url: &str,
    subject: &str,
    replies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    delay: Duration,
) -> async_nats::Client {
    use futures::StreamExt;
    let client =
        async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
            .name("hostile-responder")
            .connect(url)
            .await
            .expect("responder connects");
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let payloads = replies.lock().unwrap().clone();
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for p in payloads {
                    let _ = c.publish(reply.clone(), p.into()).await;
                }
                let _ = c.flush().await;
            });
        }
    });
    client
}

fn server_id(cluster: &Cluster, i: usize) -> String {
    cluster.monitor_get(i, "/varz").unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Issue 10 item 6: something else in the system account answers the sweep's PING CONNZ with
/// garbage, hostile numbers, or a real server's id under another name. Each is a bad reply:
/// no crash, every real server counted exactly (the servers' own /connz), the sweep complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connz_replies_are_bad_replies_and_real_servers_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    let mut loads = Vec::new();
    for (i, n) in [(0, 300), (1, 120), (2, 80)] {
        let spec = LoadSpec::new(
            cluster.client_url(i),
            LoadAuth::user_password("app", "app-pw"),
            n,
        );
        loads.push(load::open(spec).await.unwrap());
    }
    let ids: Vec<String> = (0..3).map(|i| server_id(&cluster, i)).collect();
    let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let _hostile = responder(
        &cluster.client_url(1),
        "$SYS.REQ.SERVER.PING.CONNZ",
        replies.clone(),
        Duration::ZERO,
    )
    .await;
    let reply = |name: &str, id: &str, data: Value| {
        serde_json::to_vec(&serde_json::json!({"server": {"name": name, "id": id}, "data": data}))
            .unwrap()
    };
    let ghosts: Vec<Value> = (1..=5)
        .map(|cid| serde_json::json!({"cid": cid, "account": "APP", "authorized_user": "ghost"}))
        .collect();
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{\"server\": nope".to_vec()),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
        (
            "big body",
            reply(
                "big",
                "NBIG",
                serde_json::json!({"total": 1, "pad": "x".repeat(900_000), "connections": []}),
            ),
        ),
        (
            "total near u64::MAX",
            reply(
                "huge",
                "NHUGE",
                serde_json::json!({"server_id": "NHUGE", "total": u64::MAX, "connections": []}),
            ),
        ),
        (
            "negative offset",
            reply(
                "n1",
                &ids[0],
                serde_json::json!({"total": 0, "offset": -1, "connections": []}),
            ),
        ),
        (
            "absurd offset",
            reply(
                "n2",
                &ids[1],
                serde_json::json!({"total": 0, "offset": u64::MAX, "connections": []}),
            ),
        ),
        (
            "a real server's id under another name",
            reply(
                "n3-impostor",
                &ids[2],
                serde_json::json!({"server_id": ids[2], "total": 5, "connections": ghosts}),
            ),
        ),
    ];
    // No state file: the sweep lingers briefly after the last real server, so the hostile
    // replies (sent at once) are seen and counted.
    // `max_in_flight = 0`: the PING to all, whose replies these are, even without a state file.
    let config = format!(
        "{}\n[sweep]\ntimeout = \"3s\"\nmax_in_flight = 0\n",
        cluster.connwatch_toml()
    );
    for (label, payload) in kinds {
        *replies.lock().unwrap() = vec![payload];
        let dirc = dir.path().to_path_buf();
        let cfg = config.clone();
        let report = tokio::task::spawn_blocking(move || report_json(&dirc, &cfg))
            .await
            .unwrap();
        let sweep = &report["sweep"];
        assert_eq!(sweep["partial"], false, "{label}: {sweep:#}");
        assert_eq!(sweep["servers_responded"], 3, "{label}: {sweep:#}");
        assert!(
            sweep["bad_replies"].as_u64().unwrap() >= 1,
            "{label}: not counted as a bad reply: {sweep:#}"
        );
        assert_eq!(
            without_system(reported(&report)),
            without_system(ground_truth(&cluster, &[0, 1, 2])),
            "{label}: per-user counts differ from the servers'"
        );
        assert_eq!(user(&report, "APP", "app")["connections"], 500, "{label}");
    }

    // The bounded sweep (`max_in_flight = 1`: STATSZ, then one directed request at a time)
    // takes its server ids from STATSZ: garbage there is a bad reply and the sweep stays exact;
    // a second STATSZ reply for a real server's id makes that server an error (neither is
    // believed), the sweep partial, and the other servers are still counted exactly.
    let _hostile_statsz = responder(
        &cluster.client_url(1),
        "$SYS.REQ.SERVER.PING.STATSZ",
        replies.clone(),
        Duration::ZERO,
    )
    .await;
    *replies.lock().unwrap() = Vec::new();
    let bounded = format!(
        "{}\n[sweep]\ntimeout = \"3s\"\nmax_in_flight = 1\n",
        cluster.connwatch_toml()
    );
    let statsz = |name: &str, id: &str| {
        serde_json::to_vec(&serde_json::json!({
            "server": {"name": name, "id": id}, "statsz": {"active_servers": 3}
        }))
        .unwrap()
    };
    for (label, payload, exact) in [
        ("invalid JSON", b"{\"server\": nope".to_vec(), true),
        (
            "a real server's id again",
            statsz("n3-impostor", &ids[2]),
            false,
        ),
    ] {
        *replies.lock().unwrap() = vec![payload];
        let dirc = dir.path().to_path_buf();
        let cfg = bounded.clone();
        let report = tokio::task::spawn_blocking(move || report_json(&dirc, &cfg))
            .await
            .unwrap();
        let sweep = &report["sweep"];
        assert!(
            sweep["bad_replies"].as_u64().unwrap() >= 1,
            "{label}: not counted as a bad reply: {sweep:#}"
        );
        // STATSZ, then one directed request per server.
        assert_eq!(sweep["requests"], 4, "{label}: {sweep:#}");
        let truth = ground_truth(&cluster, &[0, 1, 2]);
        if exact {
            assert_eq!(sweep["partial"], false, "{label}: {sweep:#}");
            assert_eq!(
                without_system(reported(&report)),
                without_system(truth),
                "{label}"
            );
        } else {
            assert_eq!(sweep["partial"], true, "{label}: {sweep:#}");
            assert_eq!(
                sweep["errors"][0]["kind"], "impostors",
                "{label}: {sweep:#}"
            );
            assert_eq!(sweep["servers_responded"], 2, "{label}: {sweep:#}");
            // n3's 80 are not counted: n1's 300 and n2's 120 are.
            assert_eq!(user(&report, "APP", "app")["connections"], 420, "{label}");
        }
    }
    for l in loads {
        l.close().await;
    }
}

/// Issue 10 item 10: a frozen server, no state file: the live servers still list it as a
/// route peer in STATSZ, so `missing` names it instead of `<unknown>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_named_missing_without_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    cluster.pause(2).unwrap();
    // Attached to n1 only: a frozen server accepts TCP but never greets.
    let config = cluster
        .connwatch_toml()
        .replacen(
            &format!("{:?}", cluster.client_url(1)),
            &format!("{:?}", cluster.client_url(0)),
            1,
        )
        .replacen(&format!(", {:?}", cluster.client_url(2)), "", 1);
    let config = format!("{config}\n[sweep]\ntimeout = \"1s\"\n");
    let dirc = dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || report_json(&dirc, &config))
        .await
        .unwrap();
    let sweep = &report["sweep"];
    assert_eq!(sweep["partial"], true, "{sweep:#}");
    assert_eq!(sweep["servers_expected"], 3, "{sweep:#}");
    assert_eq!(sweep["missing"], serde_json::json!(["n3"]), "{sweep:#}");
    cluster.resume(2).unwrap();
}

/// Issue 10 item 7: a server that answers the PING but is slow to give its whole list holds
/// up only itself: at `sweep.deadline` it is an error (the sweep partial) and every other
/// server, read meanwhile, is counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_cut_at_the_deadline_and_the_others_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    // n1 needs a directed request too (pages of 50): it is read while "slow" is waited for.
    let load = load::open(LoadSpec::new(
        cluster.client_url(0),
        LoadAuth::user_password("app", "app-pw"),
        300,
    ))
    .await
    .unwrap();
    let url = cluster.client_url(1);
    let slow = |data: Value| {
        std::sync::Arc::new(std::sync::Mutex::new(vec![serde_json::to_vec(
            &serde_json::json!({"server": {"name": "slow", "id": "NSLOW"}, "data": data,
                                "statsz": {"active_servers": 0}}),
        )
        .unwrap()]))
    };
    // A "server" the cluster vouches for (it answers STATSZ as itself), holding 5,000
    // connections, whose directed replies take 1.5 s and always show it grown.
    let _statsz = responder(
        &url,
        "$SYS.REQ.SERVER.PING.STATSZ",
        slow(Value::Null),
        Duration::ZERO,
    )
    .await;
    let _ping = responder(
        &url,
        "$SYS.REQ.SERVER.PING.CONNZ",
        slow(serde_json::json!({"server_id": "NSLOW", "total": 5000, "connections": []})),
        Duration::ZERO,
    )
    .await;
    let _directed = responder(
        &url,
        "$SYS.REQ.SERVER.NSLOW.CONNZ",
        slow(serde_json::json!({"server_id": "NSLOW", "total": 100000, "connections": []})),
        Duration::from_millis(1500),
    )
    .await;
    // `max_in_flight = 0`: the PING to all (its first pages of 50 make n1 a directed read).
    let config = format!(
        "{}\n[sweep]\ntimeout = \"2s\"\ndeadline = \"3s\"\npage_size = 50\nmax_in_flight = 0\n",
        cluster.connwatch_toml()
    );
    let dirc = dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || report_json(&dirc, &config))
        .await
        .unwrap();
    let sweep = &report["sweep"];
    assert_eq!(sweep["partial"], true, "{sweep:#}");
    assert_eq!(sweep["servers_responded"], 3, "{sweep:#}");
    let errors = sweep["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{sweep:#}");
    assert_eq!(errors[0]["server"], "slow", "{sweep:#}");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("sweep.deadline"),
        "{sweep:#}"
    );
    assert_eq!(
        without_system(reported(&report)),
        without_system(ground_truth(&cluster, &[0, 1, 2])),
    );
    assert_eq!(user(&report, "APP", "app")["connections"], 300);
    load.close().await;
}

/// A long-lived sweeper (`run`, `top --standalone`) asks its PING for as many connections as the
/// largest server held in its last sweep (+ headroom): from the second sweep on, every server's
/// list comes whole in its answer to the PING, each connection read once, no directed request.
#[tokio::test]
async fn a_long_lived_sweeper_reads_each_servers_list_once_from_its_second_sweep() {
    use connwatch::config::SweepConfig;
    use connwatch::state::KnownServers;

    let dir = tempfile::tempdir().unwrap();
    let cfg = SweepConfig {
        expected_servers: 3,
        page_size: 20,
        ..SweepConfig::default()
    };
    let (_cluster, loads, mut sweeper) = app_sweeper(dir.path(), [60, 25, 5], &cfg).await;
    let mut known = KnownServers::default();
    let app_conns = |s: &connwatch::snapshot::Snapshot| {
        s.connections
            .iter()
            .filter(|c| &*c.account == "APP")
            .count()
    };

    // First sweep: pages of 20, so the servers of 60 and 25 are read again whole.
    let first = sweeper.sweep(&mut known).await.unwrap();
    assert!(!first.partial(), "{:?}", first.errors);
    assert_eq!(app_conns(&first), 90);
    assert_eq!(
        first.requests,
        2 + 2,
        "PING + STATSZ + two directed: {:?}",
        first.servers
    );

    // Then the PING asks for 60 + headroom: every list whole in its first reply.
    for _ in 0..2 {
        let next = sweeper.sweep(&mut known).await.unwrap();
        assert!(!next.partial(), "{:?}", next.errors);
        assert_eq!(app_conns(&next), 90);
        assert_eq!(next.requests, 2, "PING + STATSZ only");
        assert_eq!(next.pages, 3, "one reply per server");
        assert!(
            next.bytes < first.bytes,
            "{} bytes, {} the first time",
            next.bytes,
            first.bytes
        );
    }
    drop(loads);
}

/// The four ways a sweep can read the same cluster give one census, equal to the servers' own
/// `/connz`: connections listed or counted while parsing (`Collecting::Census`, as `report`
/// and `run` without kicks do), replies plain or snappy-compressed (`sweep.compression`), the
/// compressed ones several times fewer bytes. Pages of 20 make the bigger servers' lists come
/// from directed requests, so both the PING and the directed path decompress and count; the
/// first server's list is several snappy blocks (64 KiB each), which the parser reads a block
/// at a time.
#[tokio::test]
async fn listed_or_counted_plain_or_compressed_a_sweep_counts_the_same() {
    use connwatch::census::Aggregate;
    use connwatch::config::{Compression, DetectConfig, SweepConfig};
    use connwatch::state::KnownServers;
    use connwatch::sweep::Sweeper;

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw"))
            .account(AccountSpec::new("OPS").user("ops", "ops-pw")),
    )
    .unwrap();
    let mut loads = Vec::new();
    for (i, user, n) in [
        (0, "app", 400),
        (1, "app", 25),
        (2, "ops", 30),
        (1, "ops", 4),
    ] {
        let auth = LoadAuth::user_password(user, format!("{user}-pw"));
        let spec = LoadSpec::new(cluster.client_url(i), auth, n).name(user);
        loads.push(load::open(spec).await.unwrap());
    }
    let client = system_client(&cluster).await;
    let detect = DetectConfig::default();
    let truth = without_system(ground_truth(&cluster, &[0, 1, 2]));
    let mut bytes = BTreeMap::new();
    for compression in [Compression::None, Compression::Snappy] {
        for counting in [false, true] {
            let cfg = SweepConfig {
                expected_servers: 3,
                page_size: 20,
                compression,
                ..SweepConfig::default()
            };
            let system = connwatch::nats::System::new(client.clone());
            let mut sweeper = Sweeper::new(system, &cfg);
            if counting {
                sweeper.collect(connwatch::sweep::Collecting::Census(Aggregate::new(
                    Some("SYS"),
                    &detect,
                )));
            }
            let snap = sweeper.sweep(&mut KnownServers::default()).await.unwrap();
            let how = format!("{compression:?}, counting {counting}");
            assert!(!snap.partial(), "{how}: {:?}", snap.errors);
            assert_eq!(snap.connections.is_empty(), counting, "{how}");
            assert_eq!(snap.census.is_some(), counting, "{how}");
            assert!(snap.requests > 2, "{how}: the directed path was not taken");
            let census = connwatch::topology::census_of(&snap, Some("SYS"), &detect);
            let report = serde_json::to_value(&census).unwrap();
            assert_eq!(without_system(reported(&report)), truth, "{how}");
            bytes.insert((compression == Compression::Snappy, counting), snap.bytes);
        }
    }
    for counting in [false, true] {
        let (plain, snappy) = (bytes[&(false, counting)], bytes[&(true, counting)]);
        assert!(snappy * 3 < plain, "snappy {snappy} bytes, plain {plain}");
        // The first server's 400 connections alone are more than two blocks.
        assert!(plain > 3 * 65_536, "plain {plain} bytes");
    }
    drop(loads);
}

/// A cluster with APP's user `app` holding `per_server[i]` connections on server `i`, and a
/// sweeper of `cfg` on a client of its system user.
async fn app_sweeper(
    dir: &std::path::Path,
    per_server: [usize; 3],
    cfg: &connwatch::config::SweepConfig,
) -> (Cluster, Vec<load::Load>, connwatch::sweep::Sweeper) {
    let cluster = Cluster::start(
        ClusterSpec::new(dir.join("cluster"))
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    let app = LoadAuth::user_password("app", "app-pw");
    let mut loads = Vec::new();
    for (i, n) in per_server.into_iter().enumerate() {
        let spec = LoadSpec::new(cluster.client_url(i), app.clone(), n);
        loads.push(load::open(spec).await.unwrap());
    }
    let system = connwatch::nats::System::new(system_client(&cluster).await);
    let sweeper = connwatch::sweep::Sweeper::new(system, cfg);
    (cluster, loads, sweeper)
}

/// A client of the cluster's system user, as connwatch connects; always to n1, so a spy sees
/// what a sweeper on it sends and receives with no wait for its interest to cross the routes
/// (a spy on another server missed every STATSZ reply once).
async fn system_client(cluster: &Cluster) -> async_nats::Client {
    use connwatch::config::{NatsConfig, Secret};
    let sys = cluster.system_user();
    let nats = NatsConfig {
        servers: vec![cluster.client_url(0)],
        user: Some(sys.name.clone()),
        password: Some(Secret::new(sys.password.clone())),
        ..NatsConfig::default()
    };
    connwatch::nats::connect(&nats, None).await.unwrap()
}

/// Records when each list was handed over, and how many connections of other lists the sweep
/// held then (before it in the sweep's list).
#[derive(Debug, Default)]
struct TakenAt(std::sync::Mutex<Vec<(String, std::time::Instant, usize)>>);

impl connwatch::sweep::Handover for TakenAt {
    fn take(
        &self,
        server: &connwatch::nats::wire::ServerInfo,
        list: &mut connwatch::connlist::ConnList,
        from: usize,
    ) -> bool {
        assert!(list.len() > from, "a whole list, not empty here");
        let at = std::time::Instant::now();
        self.0.lock().unwrap().push((server.id.clone(), at, from));
        true
    }
}

/// A bounded sweep (more servers than `sweep.max_in_flight`) waits for a silent server's STATSZ
/// reply until its timeout; once the other servers' replies went quiet, who is who is settled
/// for the lists, so each answering server's list goes to the live view long before the
/// timeout instead of every list being held until then; and no more servers are read while
/// `max_in_flight` lists wait for that, so the lists held stay that few.
#[tokio::test]
async fn a_bounded_sweep_with_a_server_silent_hands_each_list_over_long_before_its_timeout() {
    use connwatch::config::SweepConfig;
    use connwatch::state::KnownServers;
    use connwatch::sweep::Collecting;

    let dir = tempfile::tempdir().unwrap();
    // A fourth server is expected and never answers: the sweep waits for it until the timeout.
    let timeout = Duration::from_secs(4);
    let cfg = SweepConfig {
        expected_servers: 4,
        max_in_flight: 1,
        timeout,
        ..SweepConfig::default()
    };
    let (_cluster, loads, mut sweeper) = app_sweeper(dir.path(), [10, 10, 10], &cfg).await;
    let taken = std::sync::Arc::new(TakenAt::default());
    sweeper.collect(Collecting::Live(taken.clone()));
    let begun = std::time::Instant::now();
    let snap = sweeper.sweep(&mut KnownServers::default()).await.unwrap();
    let ended = begun.elapsed();
    assert!(snap.partial(), "one server silent");
    assert!(ended >= timeout, "waited for the silent server: {ended:?}");
    let taken = taken.0.lock().unwrap().clone();
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(snap.handed.len(), 3);
    assert_eq!(
        snap.handed_connections,
        3 * 10 + 1,
        "the loads and connwatch's own"
    );
    for (server, at, others) in &taken {
        assert!(
            at.duration_since(begun) < timeout / 2,
            "{server}'s list taken {:?} into a sweep of {ended:?}",
            at.duration_since(begun)
        );
        // max_in_flight = 1: no other server's list (10 or 11 connections) held beside it.
        assert!(
            *others < 10,
            "{server}'s list taken beside {others} others: {taken:?}"
        );
    }
    for l in loads {
        l.close().await;
    }
}

/// A counting sweeper, `max_in_flight` 1, over 3 servers holding 10, 20 and 30 connections of
/// `app`, that expects a fourth server, which never answers (its STATSZ awaited until
/// `timeout`).
async fn counting_with_a_silent_server(
    dir: &std::path::Path,
    timeout: Duration,
) -> (Cluster, Vec<load::Load>, connwatch::sweep::Sweeper) {
    use connwatch::census::Aggregate;
    use connwatch::config::{DetectConfig, SweepConfig};
    let cfg = SweepConfig {
        expected_servers: 4,
        max_in_flight: 1,
        timeout,
        ..SweepConfig::default()
    };
    let (cluster, loads, mut sweeper) = app_sweeper(dir, [10, 20, 30], &cfg).await;
    let rules = Aggregate::new(Some("SYS"), &DetectConfig::default());
    sweeper.collect(connwatch::sweep::Collecting::Census(rules));
    (cluster, loads, sweeper)
}

/// A sweep of [`counting_with_a_silent_server`]: partial, each answering server counted.
fn assert_counted_without_the_silent_server(snap: &connwatch::snapshot::Snapshot) {
    assert!(snap.partial(), "a fourth server expected");
    let census = snap.census.as_ref().unwrap().finish();
    let app = census.users.iter().find(|u| u.user == "app").unwrap();
    assert_eq!(app.connections, 60);
}

/// A bounded counting sweep (`report`, `run` without the live census) with a server silent
/// reads no more servers while `max_in_flight` censuses wait for who is who to be settled (the
/// STATSZ replies quiet for 250 ms): with `max_in_flight` 1, one server is read before that,
/// the two others after it, so what the sweep holds stays one server's census; each answering
/// server is counted exactly. Seen as the servers see it: a system-account client that
/// listens to the directed CONNZ requests and to the STATSZ replies.
#[tokio::test]
async fn a_bounded_counting_sweep_with_a_server_silent_reads_no_more_while_censuses_wait() {
    use connwatch::state::KnownServers;
    use futures::StreamExt;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let (cluster, loads, mut sweeper) =
        counting_with_a_silent_server(dir.path(), Duration::from_secs(3)).await;
    let spy = system_client(&cluster).await;
    let asks = spy.subscribe("$SYS.REQ.SERVER.*.CONNZ").await.unwrap();
    let replies = spy.subscribe("_INBOX.>").await.unwrap();
    spy.flush().await.unwrap();
    // (when, a CONNZ request: true; a STATSZ reply: false)
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |sub: async_nats::Subscriber, ask: bool| {
        let seen = seen.clone();
        tokio::spawn(sub.for_each(move |m| {
            let statsz = m.payload.windows(8).any(|w| w == b"\"statsz\"");
            if ask || statsz {
                seen.lock().unwrap().push((Instant::now(), ask));
            }
            futures::future::ready(())
        }))
    };
    let tasks = [record(asks, true), record(replies, false)];
    let snap = sweeper.sweep(&mut KnownServers::default()).await.unwrap();
    // What the spy received by now is read before its tasks stop.
    spy.flush().await.unwrap();
    let heard = |ask: bool| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| *a == ask)
            .count()
    };
    wait_until_async(Duration::from_secs(5), || {
        heard(true) >= 3 && heard(false) >= 3
    })
    .await;
    for t in tasks {
        t.abort();
    }
    assert_counted_without_the_silent_server(&snap);
    let seen = seen.lock().unwrap().clone();
    let asked: Vec<Instant> = seen.iter().filter(|(_, a)| *a).map(|(t, _)| *t).collect();
    let last_statsz = seen.iter().filter(|(_, a)| !a).map(|(t, _)| *t).max();
    let last_statsz = last_statsz.expect("STATSZ replies seen");
    assert_eq!(asked.len(), 3, "one directed CONNZ per answering server");
    // Read before the settling: at most one (100 ms of the 250 left for the listener's lag).
    let settled = last_statsz + Duration::from_millis(100);
    let before: Vec<Duration> = asked
        .iter()
        .filter(|t| **t < settled)
        .map(|t| settled - *t)
        .collect();
    assert!(
        before.len() <= 1,
        "{} servers read before the STATSZ replies went quiet: {before:?}",
        before.len()
    );
    for l in loads {
        l.close().await;
    }
}

/// A bounded counting sweep (`report`, `run` without the live census) with a server silent
/// settles who is who once its STATSZ replies went quiet, and counts each census as it comes.
/// A server found answering twice after that (its census counted already) makes the sweep an
/// error: its counts would hold what one of the two said, so none is used. Without the late
/// reply the same sweep is partial and counts every answering server exactly.
#[tokio::test]
async fn a_server_found_answering_twice_after_its_census_was_counted_fails_the_sweep() {
    use connwatch::state::KnownServers;
    use connwatch::sweep::SweepError;

    let dir = tempfile::tempdir().unwrap();
    let (cluster, loads, mut sweeper) =
        counting_with_a_silent_server(dir.path(), Duration::from_secs(4)).await;
    let mut known = KnownServers::default();
    let snap = sweeper.sweep(&mut known).await.unwrap();
    assert_counted_without_the_silent_server(&snap);

    // Something else answers STATSZ as the server of 30, 2 s after the others: long after
    // they went quiet (250 ms), before the 4 s timeout.
    let third = snap.servers.iter().find(|s| s.connections >= 30).unwrap();
    let statsz = serde_json::json!({
        "server": {"name": "impostor", "id": third.id}, "statsz": {"active_servers": 3}
    });
    let replies = std::sync::Arc::new(std::sync::Mutex::new(vec![
        serde_json::to_vec(&statsz).unwrap()
    ]));
    let subject = "$SYS.REQ.SERVER.PING.STATSZ";
    let late = Duration::from_secs(2);
    let _impostor = responder(&cluster.client_url(1), subject, replies, late).await;
    // Its subscription reaches every server before the sweep asks.
    let asker = system_client(&cluster).await;
    let answers = |client: async_nats::Client| async move {
        use futures::StreamExt;
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply(subject, inbox, "".into())
            .await
            .unwrap();
        let mut names = Vec::new();
        let until = tokio::time::Instant::now() + late * 2;
        while let Ok(Some(m)) = tokio::time::timeout_at(until, sub.next()).await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            names.push(v["server"]["name"].as_str().unwrap_or_default().to_string());
        }
        names
    };
    let heard = eventually(Duration::from_secs(20), || {
        let asker = asker.clone();
        async move { answers(asker).await.iter().any(|n| n == "impostor") }
    })
    .await;
    assert!(heard, "the impostor never answered");
    let err = sweeper.sweep(&mut known).await.unwrap_err();
    assert!(
        matches!(&err, SweepError::CountedImpostors(ids) if *ids == [third.id.clone()]),
        "{err}"
    );
    for l in loads {
        l.close().await;
    }
}
