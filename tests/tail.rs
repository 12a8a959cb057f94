//! `connwatch tail` (`connwatch::tail::run`, in-process) against a real 3-node cluster:
//! advisories built by the real code path are published on one server and printed by tails
//! subscribed on every server, filtered and formatted.

mod support;

use connwatch::stamp::Stamp;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use connwatch::advisory::{self, Advisory, Completeness, Message};
use connwatch::census;
use connwatch::cli::{TailArgs, TailFormat};
use connwatch::config::DetectConfig;
use connwatch::lifecycle::Lifecycle;
use connwatch::rules::growth::History;
use connwatch::rules::{self, Context, ServerLoad};
use connwatch::snapshot::{Connection, ServerSeen, Snapshot};
use connwatch::tail;
use support::*;

const PREFIX: &str = "connwatch.advisory";
const HOUR: Duration = Duration::from_secs(3600);
const DEADLINE: Duration = Duration::from_secs(20);
/// Server names in the marker advisories: no real advisory contains them.
const READY: &str = "ready-probe";
const END: &str = "end-probe";

/// An output shared between a tail and the test.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("output is UTF-8")
    }
}

fn t(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minutes * 60, 250_000_000).unwrap()
}

fn ops_key() -> String {
    key('A', "ops")
}

fn alice_key() -> String {
    key('U', "alice")
}

/// `n` connections of a user on `servers`, idle and message-less.
fn conns(account: &str, user: &str, n: u64, servers: &[&str], name: &str) -> Vec<Connection> {
    (0..n)
        .map(|i| {
            let server = servers[i as usize % servers.len()];
            let alice = user == alice_key();
            Connection {
                server: server.into(),
                server_id: key('N', server).into(),
                cid: i + 1,
                kind: "Client".into(),
                ip: "127.0.0.1".into(),
                start: DateTime::from_timestamp(1_799_990_000 + i as i64, 0).map(Stamp::of),
                idle: Duration::from_secs(600),
                in_msgs: 0,
                out_msgs: 0,
                name: name.into(),
                account: account.into(),
                account_name: alice.then(|| "OPS".into()),
                user: user.into(),
                user_name: alice.then(|| "alice".into()),
                tags: vec![],
                ..Connection::default()
            }
        })
        .collect()
}

/// The APP account: `leaky` (excessive) and `slow` (growing).
fn app(leaky: u64, slow: u64) -> Vec<Connection> {
    let mut c = conns("APP", "leaky", leaky, &["n1"], "leaky-worker");
    c.extend(conns("APP", "slow", slow, &["n1", "n2"], "slow-worker"));
    c
}

/// The advisories of three sweeps in which every rule fires: firing (complete sweep), renotified
/// (partial sweep, n3 missing), resolved (complete sweep that finds nothing).
fn scenario() -> Vec<Advisory> {
    let detect = DetectConfig {
        account_limits: BTreeMap::from([("APP".into(), 220)]),
        ..DetectConfig::default()
    };
    let mut history = History::default();
    for i in 0..5u64 {
        let census = census::build(&app(110 + 10 * i, 10 + 10 * i), None, &detect);
        history.record(&census, t(-40 + 10 * i as i64), HOUR);
    }
    let mut connections = app(150, 50);
    connections.extend(conns(&ops_key(), &alice_key(), 120, &["n2", "n3"], ""));
    let census = census::build(&connections, Some("SYS"), &detect);
    let ctx = Context {
        history: Some(&history),
        account_limits: HashMap::from([(ops_key(), 125)]),
        servers: vec![ServerLoad {
            name: "n1".into(),
            id: key('N', "n1"),
            connections: 170,
            max_connections: Some(200),
        }],
        ..Context::default()
    };
    let findings = rules::evaluate(&census, &detect, &ctx);
    assert_eq!(findings.len(), 6, "{findings:#?}");
    let complete = sweep(&["n1", "n2", "n3"], &[]);
    let partial = sweep(&["n1", "n2"], &["n3"]);
    let mut l = Lifecycle::default();
    let mut out = Vec::new();
    for (findings, sweep, now) in [
        (&findings[..], &complete, t(0)),
        (&findings[..], &partial, t(61)),
        (&[][..], &complete, t(62)),
    ] {
        for e in l.step(findings, !sweep.partial, now, HOUR) {
            out.push(advisory::from_event(PREFIX, &e, sweep, now));
        }
    }
    assert_eq!(out.len(), 18);
    out
}

/// The completeness of a sweep, as `Completeness::of` computes it from a snapshot.
fn sweep(responded: &[&str], missing: &[&str]) -> Completeness {
    Completeness::of(&Snapshot {
        started: Some(t(0)),
        servers_expected: responded.len() + missing.len(),
        servers: responded
            .iter()
            .map(|n| ServerSeen {
                name: n.to_string(),
                id: key('N', n),
                connections: 0,
                pages: 1,
            })
            .collect(),
        missing: missing.iter().map(|n| n.to_string()).collect(),
        ..Snapshot::default()
    })
}

/// An excessive-user advisory of OPS/alice (it passes every filter of this test) whose only
/// server is `marker`.
fn marker(marker: &str) -> Advisory {
    let connections = conns(&ops_key(), &alice_key(), 101, &[marker], "");
    let census = census::build(&connections, None, &DetectConfig::default());
    let findings = rules::evaluate(&census, &DetectConfig::default(), &Context::default());
    let events = Lifecycle::default().step(&findings, true, t(0), HOUR);
    assert_eq!(events.len(), 1);
    let sweep = sweep(&[marker], &[]);
    advisory::from_event(PREFIX, &events[0], &sweep, t(0))
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn publish(client: &async_nats::Client, subject: &str, payload: Vec<u8>) {
    client
        .publish(subject.to_string(), payload.into())
        .await
        .expect("publish");
}

/// A `tail::run` in the background.
struct Tail {
    label: &'static str,
    args: TailArgs,
    out: SharedBuf,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Tail {
    async fn start(label: &'static str, url: &str, args: TailArgs) -> Tail {
        let client = connect(url).await;
        let out = SharedBuf::default();
        let shutdown = CancellationToken::new();
        let task = {
            let (out, shutdown) = (out.clone(), shutdown.clone());
            let args = TailArgs {
                format: args.format,
                types: args.types.clone(),
                account: args.account.clone(),
                user: args.user.clone(),
            };
            tokio::spawn(async move { tail::run(client, PREFIX, &args, shutdown, out).await })
        };
        Tail {
            label,
            args,
            out,
            shutdown,
            task,
        }
    }

    /// The printed lines, without the marker advisories.
    fn lines(&self) -> Vec<String> {
        self.out
            .text()
            .lines()
            .filter(|l| !l.contains(READY) && !l.contains(END))
            .map(str::to_string)
            .collect()
    }

    fn saw(&self, marker: &str) -> bool {
        self.out.text().contains(marker)
    }
}

fn args(format: TailFormat, types: &[&str], account: Option<&str>, user: Option<&str>) -> TailArgs {
    TailArgs {
        format,
        types: types.iter().map(|s| s.to_string()).collect(),
        account: account.map(str::to_string),
        user: user.map(str::to_string),
    }
}

/// What a tail should print of `bodies`, by a filter written out here rather than with
/// `tail::matches`.
fn expected(bodies: &[Value], keep: impl Fn(&Value) -> bool, format: TailFormat) -> Vec<String> {
    bodies
        .iter()
        .filter(|b| keep(b))
        .map(|b| match format {
            TailFormat::Text => tail::render_text(&Message::decode(b.clone()).expect("decodes")),
            TailFormat::Json => b.to_string(),
        })
        .collect()
}

fn kind(b: &Value) -> &str {
    b["type"]
        .as_str()
        .unwrap()
        .strip_prefix("io.connwatch.advisory.v1.")
        .unwrap()
}

/// Captures the log lines written while the returned guard lives (this thread only: the
/// test runs on a current-thread runtime, so the tails log here too).
fn capture_logs() -> (SharedBuf, tracing::subscriber::DefaultGuard) {
    let logs = SharedBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn tail_prints_filters_and_formats_advisories_from_the_cluster() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterSpec::new(dir.path())).expect("cluster starts");
    let urls = cluster.client_urls();
    assert_eq!(urls.len(), 3);

    use TailFormat::{Json, Text};
    let specs = [
        ("all text", args(Text, &[], None, None)),
        ("all json", args(Json, &[], None, None)),
        (
            "by type",
            args(
                Text,
                &[
                    "excessive_user_connections",
                    "io.connwatch.advisory.v1.server_connection_pressure",
                ],
                None,
                None,
            ),
        ),
        ("by account name", args(Text, &[], Some("OPS"), None)),
        ("by user name", args(Json, &[], None, Some("alice"))),
        (
            "by account and user keys",
            args(Text, &[], Some(&ops_key()), Some(&alice_key())),
        ),
    ];
    let mut tails = Vec::new();
    for (i, (label, args)) in specs.into_iter().enumerate() {
        // Tails on every server; the advisories are published on the last one.
        tails.push(Tail::start(label, &urls[i % urls.len()], args).await);
    }
    let publisher = connect(&urls[2]).await;

    // The tails have no way to say they are subscribed (and the interest must still reach the
    // publisher's server): publish a marker advisory until every tail printed it.
    let ready = marker(READY);
    let ready_payload = serde_json::to_vec(&ready.body).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut all_ready = false;
    while !all_ready && Instant::now() < deadline {
        publish(&publisher, &ready.subject, ready_payload.clone()).await;
        publisher.flush().await.unwrap();
        all_ready = wait_until_async(Duration::from_millis(250), || {
            tails.iter().all(|t| t.saw(READY))
        })
        .await;
    }
    assert!(
        all_ready,
        "not every tail printed the marker: {}",
        logs.text()
    );

    // The advisories, with messages that are not advisories between them.
    let advisories = scenario();
    let garbage: [(&str, &[u8]); 4] = [
        ("connwatch.advisory.garbage", b"not json at all"),
        ("connwatch.advisory.x", b"[1, 2, 3]"),
        (
            "connwatch.advisory.excessive_user_connections.APP.leaky",
            br#"{"type": "io.nats.server.advisory.v1.client_connect"}"#,
        ),
        ("connwatch.advisory.y", b"\xff\xfe{"),
    ];
    for (i, a) in advisories.iter().enumerate() {
        publish(&publisher, &a.subject, serde_json::to_vec(&a.body).unwrap()).await;
        if i % 5 == 0 {
            let (subject, payload) = garbage[i / 5];
            publish(&publisher, subject, payload.to_vec()).await;
        }
    }
    let end = marker(END);
    publish(
        &publisher,
        &end.subject,
        serde_json::to_vec(&end.body).unwrap(),
    )
    .await;
    publisher.flush().await.unwrap();
    let all_done = wait_until_async(DEADLINE, || tails.iter().all(|t| t.saw(END))).await;
    assert!(all_done, "not every tail printed the end marker");

    let bodies: Vec<Value> = advisories.iter().map(|a| a.body.clone()).collect();
    let is_alice = |b: &Value| b["user"] == alice_key().as_str();
    let wanted: Vec<(&str, Vec<String>)> = vec![
        ("all text", expected(&bodies, |_| true, Text)),
        ("all json", expected(&bodies, |_| true, Json)),
        (
            "by type",
            expected(
                &bodies,
                |b| ["excessive_user_connections", "server_connection_pressure"].contains(&kind(b)),
                Text,
            ),
        ),
        (
            "by account name",
            expected(&bodies, |b| b["account"] == ops_key().as_str(), Text),
        ),
        ("by user name", expected(&bodies, is_alice, Json)),
        (
            "by account and user keys",
            expected(&bodies, is_alice, Text),
        ),
    ];
    for (tail, (label, want)) in tails.iter().zip(&wanted) {
        assert_eq!(tail.label, *label);
        assert_eq!(
            tail.lines(),
            *want,
            "{label} ({:?}) printed:\n{}",
            tail.args,
            tail.out.text()
        );
    }
    // The filters kept some and dropped some: 3 states of excessive ×2 and server pressure;
    // alice's excessive and OPS's account pressure; alice's excessive.
    let counts: Vec<usize> = wanted.iter().map(|(_, w)| w.len()).collect();
    assert_eq!(counts, vec![18, 18, 9, 6, 3, 3]);

    // The JSON format is the advisory body, one compact line each.
    let json_lines = tails[1].lines();
    for (line, body) in json_lines.iter().zip(&bodies) {
        assert_eq!(&serde_json::from_str::<Value>(line).unwrap(), body);
    }

    // The text format, spelled out for a few lines.
    let text = tails[0].lines();
    let leaky_firing = &text[0];
    assert!(
        leaky_firing.starts_with(
            "2027-01-15T08:00:00.250Z FIRING excessive_user_connections APP/leaky 150 conns \
             (threshold 100) n1:150 +60/h, account limit 220 in 20m — 150 of 150 connections come from one process \
             (client name \"leaky-worker\" at 127.0.0.1)"
        ),
        "{leaky_firing}"
    );
    let line_of = |state: &str, kind: &str, who: &str| -> &String {
        let head = format!(" {state} {kind} {who} ");
        text.iter()
            .find(|l| l.contains(&head))
            .unwrap_or_else(|| panic!("no line with {head:?} in {text:#?}"))
    };
    let alice = line_of(
        "FIRING",
        "excessive_user_connections",
        "OPS (AOPSOPSO…)/alice (UALICEAL…)",
    );
    assert!(
        alice.contains(" 120 conns (threshold 100) n2:60 n3:60 — "),
        "{alice}"
    );
    assert!(
        alice.contains("120 of 120 connections have no client name"),
        "{alice}"
    );
    let growth = line_of("FIRING", "user_connection_growth", "APP/slow");
    assert!(
        growth.contains(
            " 50 conns (threshold 100) n1:25 n2:25 +60/h, over threshold in 51m, \
             account limit 220 in 20m — "
        ),
        "{growth}"
    );
    assert_eq!(
        line_of("FIRING", "account_connection_pressure", "APP"),
        "2027-01-15T08:00:00.250Z FIRING account_connection_pressure APP 200/220 conns (90.9%)"
    );
    assert_eq!(
        line_of("FIRING", "account_connection_pressure", "OPS (AOPSOPSO…)"),
        "2027-01-15T08:00:00.250Z FIRING account_connection_pressure OPS (AOPSOPSO…) 120/125 conns (96.0%)"
    );
    let renotified: Vec<&String> = text.iter().filter(|l| l.contains("[renotify")).collect();
    assert_eq!(renotified.len(), 6);
    for l in renotified {
        assert!(l.starts_with("2027-01-15T09:01:00.250Z FIRING "), "{l}");
        assert!(
            l.contains(
                " [renotify, firing since 2027-01-15T08:00:00.250Z] [partial sweep: missing n3]"
            ),
            "{l}"
        );
    }
    assert_eq!(
        line_of("RESOLVED", "server_connection_pressure", "n1"),
        "2027-01-15T09:02:00.250Z RESOLVED server_connection_pressure n1 last seen 170/200 conns (85.0%), \
         firing since 2027-01-15T08:00:00.250Z"
    );
    assert_eq!(text.iter().filter(|l| l.contains(" RESOLVED ")).count(), 6);

    // The messages that are no advisories were logged and skipped, by every tail.
    let log = logs.text();
    let skipped = log
        .matches("skipping a message that is not an advisory")
        .count();
    assert_eq!(skipped, garbage.len() * tails.len(), "{log}");
    assert!(log.contains("connwatch.advisory.garbage"), "{log}");

    // Every tail is still running, and stops when asked.
    for tail in &tails {
        assert!(!tail.task.is_finished(), "{} ended early", tail.label);
        tail.shutdown.cancel();
    }
    for tail in tails {
        let result = tokio::time::timeout(DEADLINE, tail.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", tail.label))
            .expect("tail task panicked");
        assert!(result.is_ok(), "{}: {result:?}", tail.label);
    }
    drop(cluster);
}

/// An output whose reader went away, like `connwatch tail | head` once `head` exits.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

#[tokio::test]
async fn tail_ends_quietly_when_its_output_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterSpec::new(dir.path()).servers(1)).expect("cluster starts");
    let url = cluster.client_url(0);
    let client = connect(&url).await;
    let task = tokio::spawn(async move {
        let args = args(TailFormat::Text, &[], None, None);
        tail::run(client, PREFIX, &args, CancellationToken::new(), ClosedPipe).await
    });
    // Publish until the tail has something to print: it must then end, without an error.
    let publisher = connect(&url).await;
    let advisory = marker(READY);
    let payload = serde_json::to_vec(&advisory.body).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !task.is_finished() && Instant::now() < deadline {
        publish(&publisher, &advisory.subject, payload.clone()).await;
        publisher.flush().await.unwrap();
        wait_until_async(Duration::from_millis(250), || task.is_finished()).await;
    }
    assert!(
        task.is_finished(),
        "the tail kept running with a closed output"
    );
    let result = task.await.expect("tail task panicked");
    assert!(result.is_ok(), "{result:?}");
}
