//! connwatch on a real super-cluster: 3 clusters × 2 servers joined by gateways (config mode,
//! the system account spans them) and one leaf server that shares the system account, attached
//! to `c1-n1` by a leafnode remote. ONE super-cluster for the whole file (the machine is small):
//! the test walks through the complete census, then a whole cluster going silent.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::report_user as user;
use support::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn report_table(config: &Path) -> String {
    let out = run_connwatch(
        ["--config", config.to_str().unwrap(), "report", "--top", "0"],
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(0), "report failed: {}", out.stderr);
    out.stdout
}

/// Per (account, user): connections, as connwatch reported them (the system account left out:
/// connwatch's own connection is in it while it sweeps).
fn reported(report: &Value) -> BTreeMap<(String, String), u64> {
    report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["account"] != "SYS")
        .map(|u| {
            let key = (
                u["account"].as_str().unwrap().to_string(),
                u["user"].as_str().unwrap().to_string(),
            );
            (key, u["connections"].as_u64().unwrap())
        })
        .collect()
}

/// Per (server, account, user): connections, as connwatch's `by_server` reported them (the
/// system account left out).
fn reported_by_server(report: &Value) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for u in report["users"].as_array().unwrap() {
        if u["account"] == "SYS" {
            continue;
        }
        for (server, n) in u["by_server"].as_object().unwrap() {
            let key = (
                server.clone(),
                u["account"].as_str().unwrap().to_string(),
                u["user"].as_str().unwrap().to_string(),
            );
            out.insert(key, n.as_u64().unwrap());
        }
    }
    out
}

/// Per (server, account, user): each server's own HTTP `/connz` (the system account left out).
fn connz_by_server(
    cluster: &Cluster,
    servers: &[usize],
) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for &i in servers {
        for ((account, user), n) in cluster.connz_counts(i).unwrap() {
            if account != "SYS" {
                out.insert((cluster.server_name(i).to_string(), account, user), n);
            }
        }
    }
    out
}

/// The same configuration with `sweep.max_in_flight` set: 2 reads the 7 servers with directed
/// requests, 2 at a time; 100 asks them all with one PING.
fn with_max_in_flight(config_text: &str, dir: &Path, n: usize) -> std::path::PathBuf {
    let text = config_text.replace("[sweep]\n", &format!("[sweep]\nmax_in_flight = {n}\n"));
    let path = dir.join(format!("in-flight-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Per (account, user): the sum over `servers` of each server's own HTTP `/connz`.
fn connz_sum(cluster: &Cluster, servers: &[usize]) -> BTreeMap<(String, String), u64> {
    let mut sum = BTreeMap::new();
    for &i in servers {
        for (key, n) in cluster.connz_counts(i).unwrap() {
            if key.0 != "SYS" {
                *sum.entry(key).or_default() += n;
            }
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_cluster_counts_every_server_once_and_a_silent_cluster_stops_resolves_and_kicks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .super_cluster(3, 2)
            .account(
                AccountSpec::new("APP")
                    .user("app", "app-pw")
                    .user("leafuser", "leaf-pw"),
            )
            .leaf(LeafSpec {
                account: "APP".into(),
                user: "leafuser".into(),
                shares_system: true,
            }),
    )
    .unwrap();
    assert_eq!(cluster.len(), 7);
    let leaf = cluster.leaf_index().unwrap();
    let app = || LoadAuth::user_password("app", "app-pw");
    // 40 idle connections on c1-n1, 10 on c2-n1, 5 on c3-n2, 6 on the leaf.
    let mut loads = Vec::new();
    for (server, n) in [(0, 40), (2, 10), (5, 5), (leaf, 6)] {
        let spec = LoadSpec::new(cluster.client_url(server), app(), n).name("worker");
        loads.push(load::open(spec).await.unwrap());
    }

    let state = dir.path().join("state.json");
    let config_text = format!(
        "{}[sweep]\ntimeout = \"2s\"\ninterval = \"700ms\"\n[live]\nreconcile_interval = \"1ms\"\n\
         [detect]\nmax_connections_per_user = 50\nidle_threshold = \"1s\"\n\
         hotspot_ratio = 1.5\nhotspot_min = 30\nimbalance_share = 0.5\nimbalance_min = 10\n\
         [kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
         [state]\nfile = {:?}\n",
        cluster.connwatch_toml(),
        state
    );
    let config = write_config(dir.path(), &config_text);
    let bounded = with_max_in_flight(&config_text, dir.path(), 2);
    let ping_all = with_max_in_flight(&config_text, dir.path(), 100);

    // 1. Complete: every server answers, the leaf's clients count once, under their own user.
    let full = report_json_async(&config).await;
    assert_eq!(full["sweep"]["partial"], false, "{full:#}");
    assert_eq!(full["sweep"]["servers_responded"], 7, "{full:#}");
    let all: Vec<usize> = (0..cluster.len()).collect();
    assert_eq!(reported(&full), connz_sum(&cluster, &all), "{full:#}");
    let a = user(&full, "APP", "app");
    assert_eq!(a["connections"], 61);
    assert_eq!(a["by_server"]["leaf"], 6);
    assert_eq!(a["by_cluster"]["c1"], 40, "{a:#}");
    assert_eq!(a["by_cluster"]["c2"], 10);
    assert_eq!(a["by_cluster"]["c3"], 5);
    for i in 0..leaf {
        let name = cluster.server_name(i);
        assert_eq!(
            full["sweep"]["topology"][name]["cluster"],
            cluster.cluster_of(i),
            "{full:#}"
        );
    }
    // The leaf's clients reach the hub as ONE Leafnode connection of the remote's user.
    assert_eq!(user(&full, "APP", "leafuser")["by_server"]["c1-n1"], 1);
    assert_eq!(user(&full, "APP", "leafuser")["connections"], 1);
    assert_eq!(full["sweep"]["silent_clusters"], serde_json::json!([]));

    // 1b. The bounded sweep (2 servers at a time, directed requests) sees exactly what each
    // server's own /connz shows, in one directed request per server after one STATSZ; and it
    // holds fewer reply bytes in flight than the PING to all seven.
    let b = report_json_async(&bounded).await;
    let p = report_json_async(&ping_all).await;
    assert_eq!(b["sweep"]["partial"], false, "{b:#}");
    assert_eq!(b["sweep"]["servers_responded"], 7, "{b:#}");
    assert_eq!(b["sweep"]["requests"], 1 + 7, "{b:#}");
    assert_eq!(p["sweep"]["requests"], 2, "{p:#}");
    assert_eq!(
        reported_by_server(&b),
        connz_by_server(&cluster, &all),
        "{b:#}"
    );
    assert_eq!(
        reported_by_server(&p),
        connz_by_server(&cluster, &all),
        "{p:#}"
    );
    assert_eq!(b["sweep"]["topology"], full["sweep"]["topology"]);
    let peak = |r: &Value| r["sweep"]["peak_bytes_in_flight"].as_u64().unwrap();
    assert!(peak(&b) > 0, "{b:#}");
    assert!(
        peak(&b) < peak(&p),
        "bounded {} vs PING {}",
        peak(&b),
        peak(&p)
    );

    // 2. Cluster c3 stops as a whole: named, with its cluster, and said to be silent.
    for i in cluster.servers_of("c3") {
        cluster.terminate(i).unwrap();
    }
    let partial = report_json_async(&config).await;
    let sweep = &partial["sweep"];
    assert_eq!(sweep["partial"], true, "{partial:#}");
    let missing: Vec<&str> = sweep["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        missing.contains(&"c3-n1") && missing.contains(&"c3-n2"),
        "{partial:#}"
    );
    assert_eq!(sweep["topology"]["c3-n1"]["cluster"], "c3", "{partial:#}");
    assert_eq!(sweep["silent_clusters"][0]["cluster"], "c3", "{partial:#}");
    assert_eq!(
        sweep["silent_clusters"][0]["says"],
        "cluster c3 silent (gateway down?)"
    );
    let c = config.clone();
    let table = tokio::task::spawn_blocking(move || report_table(&c))
        .await
        .unwrap();
    assert!(
        table.contains("cluster c3 silent (gateway down?): c3-n1, c3-n2 missing"),
        "{table}"
    );
    assert!(table.contains("cluster c1: c1-n1:"), "{table}");
    // The bounded sweep too: the silent servers are named with their cluster, and the sweep is
    // partial; the servers that answered are counted exactly.
    let b = report_json_async(&bounded).await;
    let sweep = &b["sweep"];
    assert_eq!(sweep["partial"], true, "{b:#}");
    assert!(
        ["c3-n1", "c3-n2"]
            .iter()
            .all(|n| sweep["missing"].as_array().unwrap().contains(&(*n).into())),
        "{b:#}"
    );
    assert_eq!(sweep["topology"]["c3-n2"]["cluster"], "c3", "{b:#}");
    assert_eq!(sweep["silent_clusters"][0]["cluster"], "c3", "{b:#}");
    let answering: Vec<usize> = (0..cluster.len())
        .filter(|&i| cluster.cluster_of(i) != "c3")
        .collect();
    assert_eq!(
        reported_by_server(&b),
        connz_by_server(&cluster, &answering),
        "{b:#}"
    );

    // 3. `run` while c3 is silent: app is over its threshold (56 of 50) with idle suspects that
    // a complete view would kick; it fires, says which cluster is silent, kicks nothing, and
    // does not resolve when app drops below the threshold.
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(0)).await;
    let running = Running::start(&config, dir.path().join("run.log"));
    let (_, _, firing) = seen
        .wait_for(0, "excessive firing", |b| {
            b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
                && b["state"] == "firing"
        })
        .await;
    assert_eq!(firing["sweep"]["partial"], true);
    assert_eq!(
        firing["sweep"]["silent_clusters"],
        serde_json::json!(["c3"])
    );
    assert_eq!(firing["by_cluster"]["c1"], 40, "{firing:#}");
    assert_valid(&firing);
    // c1 answered whole: c1-n1 (40 app connections and more) against an idle c1-n2 is a
    // hotspot of its cluster, even while c3 is silent.
    let (_, _, hot) = seen
        .wait_for(0, "hotspot firing", |b| {
            b["type"] == "io.connwatch.advisory.v1.server_connection_hotspot"
                && b["state"] == "firing"
        })
        .await;
    assert_eq!(hot["server"], "c1-n1", "{hot:#}");
    assert_eq!(hot["cluster"], "c1");
    assert_valid(&hot);
    assert_eq!(
        running.metric("connwatch_cluster_silent{cluster=\"c3\"}"),
        Some(1.0),
        "{}",
        running.metrics()
    );
    let first = loads.remove(0);
    first.close().await;
    let (rounds, _) = running.rounds();
    let more = wait_until_async(Duration::from_secs(40), || running.rounds().0 >= rounds + 4).await;
    assert!(more, "no further rounds: {}", running.log());
    assert_eq!(
        running
            .metric("connwatch_kicks_total{result=\"sent\"}")
            .unwrap_or(0.0),
        0.0
    );
    assert!(
        seen.of("connection_kicked").is_empty(),
        "{:#?}",
        seen.of("connection_kicked")
    );
    assert!(
        seen.of("excessive_user_connections")
            .iter()
            .all(|b| b["state"] == "firing"),
        "resolved on a partial view: {:#?}",
        seen.of("excessive_user_connections")
    );
    assert_eq!(running.metric("connwatch_live_complete"), Some(0.0));
    // APP has most of its connections on c1-n1 (over imbalance_share 0.5), but shares are
    // unknown on a partial view: no imbalance; and nothing at all resolved.
    assert!(seen.of("account_connection_imbalance").is_empty());
    assert!(
        seen.all().iter().all(|(_, b)| b["state"] != "resolved"),
        "{:#?}",
        seen.all()
    );
    running.terminate();

    // 4. The same with bounded sweeps (2 servers at a time, the same state: c3's servers are
    // remembered). The sweep is partial, so the live view is not complete: app (back at 56 of
    // 50) stays firing, nothing is kicked, and it does not resolve when it drops below again.
    // c3's STATSZ replies never come, but once the others' went quiet who is who is settled
    // for the lists: each answering server's list goes to the view then, not held until the
    // timeout (so the sweep's memory does not grow with the servers while a cluster is down).
    let again = load::open(LoadSpec::new(cluster.client_url(0), app(), 40).name("worker"))
        .await
        .unwrap();
    let from = seen.all().len();
    let running = Running::start(&bounded, dir.path().join("run-bounded.log"));
    let firing = "connwatch_findings_firing{type=\"excessive_user_connections\"}";
    let swept = wait_until_async(Duration::from_secs(40), || {
        running.rounds().1 >= 2 && running.metric(firing) == Some(1.0)
    })
    .await;
    assert!(swept, "{}\n{}", running.metrics(), running.log());
    again.close().await;
    let (rounds, _) = running.rounds();
    let more = wait_until_async(Duration::from_secs(40), || running.rounds().0 >= rounds + 4).await;
    assert!(more, "no further rounds: {}", running.log());
    assert_eq!(running.metric(firing), Some(1.0), "{}", running.metrics());
    assert_eq!(running.metric("connwatch_live_complete"), Some(0.0));
    assert!(
        running
            .metric("connwatch_live_lists_taken_total")
            .unwrap_or(0.0)
            >= 4.0,
        "{}",
        running.metrics()
    );
    assert_eq!(
        running
            .metric("connwatch_kicks_total{result=\"sent\"}")
            .unwrap_or(0.0),
        0.0
    );
    let after: Vec<Value> = seen.all().into_iter().skip(from).map(|(_, b)| b).collect();
    assert!(
        after.iter().all(|b| b["state"] != "resolved"
            && b["type"] != "io.connwatch.advisory.v1.connection_kicked"),
        "{after:#?}"
    );
    running.terminate();
}
