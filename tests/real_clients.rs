//! Real client libraries in the leak patterns people actually have, beside healthy quiet
//! clients, on a real 3-node cluster: nats-py (`tests/clients/leaks.py`; scripts/test.sh
//! installs the pinned version from `tests/clients/requirements.txt`) makes a connection per
//! publish, per request and per subscribe from one process and never closes them. Each is
//! classified as it should be (report, advisories), and kicks, by policy and by hand, close
//! only the abandoned ones (the servers' own /connz).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
/// Connections per leak pattern.
const PER_PATTERN: u64 = 40;
const LEAKS: [&str; 3] = ["per-publish", "per-request", "per-subscribe"];
const HEALTHY: [&str; 3] = ["quiet-subscriber", "ticker", "starter"];

/// The Python interpreter with nats-py: `CONNWATCH_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("CONNWATCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A client script under `tests/clients/`, killed on drop.
struct PyClients(Child);

impl PyClients {
    /// Starts `tests/clients/<script>` with `args` and waits until it prints its ready line.
    fn start(script: &str, args: &[String]) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script);
        let mut child = Command::new(python())
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", python(), path.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        assert!(
            line.contains("\"ready\": true"),
            "{script} did not get ready (is nats-py installed? `python3 -m pip install -r tests/clients/requirements.txt`, as scripts/test.sh does): {line:?}"
        );
        Self(child)
    }
}

impl Drop for PyClients {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every open connection of the cluster, from the servers' own /connz, as
/// (server index, cid) → the connection, with `idle_secs` added (the server's `now` minus
/// its `last_activity`).
fn connz(cluster: &Cluster) -> BTreeMap<(usize, u64), Value> {
    let mut out = BTreeMap::new();
    for i in 0..cluster.len() {
        let page = cluster
            .monitor_get(i, "/connz?auth=true&subs=1&limit=100000")
            .unwrap();
        let now = chrono::DateTime::parse_from_rfc3339(page["now"].as_str().unwrap()).unwrap();
        for mut c in page["connections"].as_array().cloned().unwrap_or_default() {
            let last =
                chrono::DateTime::parse_from_rfc3339(c["last_activity"].as_str().unwrap()).unwrap();
            c["idle_secs"] = ((now - last).num_milliseconds() as f64 / 1000.0).into();
            out.insert((i, c["cid"].as_u64().unwrap()), c);
        }
    }
    out
}

/// The (server index, cid) of `alice`'s connections named one of `names`.
fn cids_named(conns: &BTreeMap<(usize, u64), Value>, names: &[&str]) -> BTreeSet<(usize, u64)> {
    conns
        .iter()
        .filter(|(_, c)| c["authorized_user"] == "alice")
        .filter(|(_, c)| names.contains(&c["name"].as_str().unwrap_or("")))
        .map(|(k, _)| *k)
        .collect()
}

fn user<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["users"]
        .as_array()?
        .iter()
        .find(|u| u["user"] == name)
}

fn config(cluster: &Cluster, dir: &Path, kick: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "{}[sweep]\ninterval = \"500ms\"\ntimeout = \"2s\"\n\
             [detect]\nidle_threshold = \"3s\"\nused_once_within = \"1s\"\nmax_suspects_per_user = 1000\n\
             [kick]\nmin_idle = \"3s\"\nmin_age = \"3s\"\nmax_per_user = 1000\nmax_per_sweep = 1000\n{kick}",
            cluster.connwatch_toml()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_leaks_are_told_from_quiet_live_clients_and_only_they_are_kicked() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("alice", "pw")
                .user("svc", "pw"),
        ),
    )
    .unwrap();
    let clients = PyClients::start(
        "leaks.py",
        &[
            cluster.client_url(0),
            "alice".into(),
            "pw".into(),
            "svc".into(),
            "pw".into(),
            PER_PATTERN.to_string(),
        ],
    );
    let first = connz(&cluster);
    let leaked = cids_named(&first, &LEAKS);
    let healthy = cids_named(&first, &HEALTHY);
    assert_eq!(leaked.len() as u64, 3 * PER_PATTERN);
    assert_eq!(healthy.len(), 5);

    // Until the quiet subscribers and the starter are as idle as the leaks (past
    // idle_threshold): from then on only how they were used tells them apart.
    let quiet = cids_named(&first, &["quiet-subscriber", "starter"]);
    let mut before = BTreeMap::new();
    assert!(
        wait_until_async(WAIT, || {
            before = connz(&cluster);
            quiet
                .iter()
                .chain(&leaked)
                .all(|k| before[k]["idle_secs"].as_f64().unwrap() > 3.5)
        })
        .await,
        "the clients did not go quiet"
    );
    // What CONNZ shows: every leak carried a message, so the seed's "zero messages" filter
    // misses every one of them; the quiet subscribers were in use for seconds.
    for k in &leaked {
        let c = &before[k];
        assert!(
            c["in_msgs"].as_u64().unwrap() + c["out_msgs"].as_u64().unwrap() > 0,
            "{k:?} {c}"
        );
    }

    let path = config(&cluster, dir.path(), "enabled = true\ndry_run = true\n");
    let report = report_json_async(&path).await;
    let alice = user(&report, "alice").expect("alice in the report");
    assert_eq!(alice["connections"], 3 * PER_PATTERN + 5);
    assert_eq!(alice["idle_used_once"], 3 * PER_PATTERN, "{alice:#}");
    assert_eq!(alice["idle_zero_msgs"], 0, "{alice:#}");
    assert_eq!(alice["leak_suspects"], 3 * PER_PATTERN);
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for s in alice["suspects"].as_array().unwrap() {
        assert_eq!(s["pattern"], "used_once", "{s}");
        *by_name
            .entry(s["name"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(
        by_name,
        LEAKS.iter().map(|n| (n.to_string(), PER_PATTERN)).collect(),
        "suspects by client name"
    );
    // The per-subscribe leaks still hold their subscription; the per-request ones their
    // reply inbox.
    assert!(alice["suspects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "per-subscribe" || s["name"] == "per-request")
        .all(|s| s["subscriptions"] == 1));

    // The policy (dry run): the excessive finding names the cause, and every would-be kick is
    // a leak, by pattern.
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("run.log"));
    let (_, _, fired) = seen
        .wait_for(0, "excessive", |b| {
            b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
                && b["user"] == "alice"
        })
        .await;
    assert_valid(&fired);
    assert!(
        causes(&fired).contains(&"connection_per_request".into()),
        "{fired:#}"
    );
    assert!(
        fired["diagnosis"]["summary"]
            .as_str()
            .unwrap()
            .contains("reuse it"),
        "{fired:#}"
    );
    let server_index = |name: &str| (0..cluster.len()).find(|i| cluster.server_name(*i) == name);
    let would_kick = || -> BTreeSet<(usize, u64)> {
        seen.of("connection_kicked")
            .iter()
            .filter(|b| b["user"] == "alice")
            .map(|b| {
                assert_eq!(b["pattern"], "used_once", "{b}");
                (
                    server_index(b["server"].as_str().unwrap()).unwrap(),
                    b["cid"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert!(
        wait_until_async(WAIT, || would_kick().len() as u64 >= 3 * PER_PATTERN).await,
        "{}",
        running.log()
    );
    assert_eq!(
        would_kick(),
        leaked,
        "the policy would kick exactly the leaks"
    );
    drop(running);

    // By hand: `connwatch kick --account APP --user alice --yes` kicks the leaks and nothing else.
    let out = tokio::task::spawn_blocking(move || {
        run_connwatch(
            [
                "--config",
                path.to_str().unwrap(),
                "kick",
                "--account",
                "APP",
                "--user",
                "alice",
                "--yes",
            ],
            WAIT,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.matches("used_once").count() as u64,
        3 * PER_PATTERN,
        "{}",
        out.stdout
    );
    let after = connz(&cluster);
    assert!(
        healthy.iter().all(|k| after.contains_key(k)),
        "a healthy client was kicked"
    );
    assert!(
        leaked.iter().all(|k| !after.contains_key(k)),
        "a leak was not kicked"
    );
    drop(clients);
}
