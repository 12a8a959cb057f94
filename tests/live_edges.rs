//! Edges of the census on real 3-node clusters: account names with dots in the live census, and
//! connections a server lists before they authenticate.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn is(kind: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (kind, state) = (
        format!("io.connwatch.advisory.v1.{kind}"),
        state.to_string(),
    );
    move |b: &Value| b["type"] == kind.as_str() && b["state"] == state.as_str()
}

/// `connwatch run` on `cluster` with sweeps an hour apart (only the first one, and those a gap
/// starts, run), the live census on and metrics; ready once the view is complete.
async fn run_live(cluster: &Cluster, dir: &std::path::Path) -> Running {
    let path = write_config(
        dir,
        &format!(
            "{}[sweep]\ninterval = \"1h\"\n[live]\nreconcile_interval = \"1h\"\nmax_event_rate = 0\n\
             [detect]\nidle_threshold = \"10ms\"\n[metrics]\nlisten = \"{}\"\nuser_floor = 1\n\
             [service]\nsweep_min_interval = \"0s\"\n",
            connwatch_toml_on(cluster, 0),
            free_addr()
        ),
    );
    Running::start_live(&path, dir.join("run.log")).await
}

/// An account whose name holds a dot (`team.a`, allowed in config mode) publishes its events on
/// `$SYS.ACCOUNT.team.a.CONNECT`, five tokens: the live census follows them by the payload's
/// account, so its leak fires and resolves from the events alone, with no sweep (before, its
/// events were skipped by their token count and the leak waited for the next sweep, here an
/// hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_name_with_dots_is_followed_live() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("team.a").user("leaky", "pw")),
    )
    .unwrap();
    let running = run_live(&cluster, dir.path()).await;
    let (seen, client) = Seen::subscribe(&cluster.client_url(1)).await;
    let sweeps = running.metric("connwatch_sweeps_total").unwrap();

    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(2),
            LoadAuth::user_password("leaky", "pw"),
            120,
        )
        .name("leaky-worker"),
    )
    .await
    .unwrap();
    let (i, _, fired) = seen
        .wait_for(0, "excessive", is("excessive_user_connections", "firing"))
        .await;
    assert_valid(&fired);
    assert_eq!(
        (fired["account"].as_str(), fired["user"].as_str()),
        (Some("team.a"), Some("leaky"))
    );
    assert!(fired["connections"].as_u64().unwrap() > 100, "{fired:#}");
    assert_eq!(
        running.metric("connwatch_sweeps_total"),
        Some(sweeps),
        "a sweep ran: the finding did not come from the events"
    );
    // The census endpoint serves the live count: all 120, on n3.
    assert!(
        eventually(WAIT, || async {
            let census = call(
                &client,
                "connwatch.census",
                r#"{"account":"team.a","user":"leaky"}"#,
            )
            .await
            .unwrap_or_default();
            census["users"][0]["by_server"] == serde_json::json!({ "n3": 120 })
        })
        .await
    );
    leak.close().await;
    seen.wait_for(
        i + 1,
        "resolved",
        is("excessive_user_connections", "resolved"),
    )
    .await;
    assert_eq!(running.metric("connwatch_sweeps_total"), Some(sweeps));
    assert_eq!(running.terminate(), Some(0));
}
