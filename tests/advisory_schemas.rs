//! The advisory JSON Schemas in `schemas/` against advisories built by the real code path:
//! synthetic connections → census → rules → lifecycle → `advisory::from_event`.
//!
//! `schemas/` is generated from the advisory types: after changing a type, rewrite it with
//! `CONNWATCH_BLESS=1 cargo test --test advisory_schemas` and review the diff.

mod support;

use connwatch::stamp::Stamp;
use support::key;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use connwatch::advisory::{self, Advisory, Completeness, TYPE_PREFIX};
use connwatch::census;
use connwatch::config::DetectConfig;
use connwatch::lifecycle::{Event, Lifecycle};
use connwatch::rules::growth::History;
use connwatch::rules::{self, Context, Kind, ServerLoad, MAX_MAP_ENTRIES};
use connwatch::snapshot::{Connection, ServerSeen, Snapshot};

const PREFIX: &str = "connwatch.advisory";
const HOUR: Duration = Duration::from_secs(3600);

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load_schema(name: &str) -> Value {
    let path = schema_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The validators of every advisory type, by name, with `format` (date-time) checked.
fn validators() -> BTreeMap<&'static str, jsonschema::Validator> {
    advisory::NAMES
        .iter()
        .map(|&name| {
            let schema = load_schema(name);
            let v = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"));
            (name, v)
        })
        .collect()
}

/// The advisory name in a body's `type`.
fn name_of(body: &Value) -> &str {
    body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(TYPE_PREFIX))
        .unwrap_or_else(|| panic!("no advisory type in {body}"))
}

/// Asserts that `body` is valid against the schema of its own type, listing every error.
fn assert_valid(validators: &BTreeMap<&str, jsonschema::Validator>, body: &Value) {
    let name = name_of(body);
    let v = validators
        .get(name)
        .unwrap_or_else(|| panic!("no schema for {name}"));
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} advisory does not match its schema:\n  {}\nbody: {body:#}",
        errors.join("\n  ")
    );
}

fn t(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minutes * 60, 123_456_789).unwrap()
}

/// Builds connections like a sweep would report them.
struct Conns {
    account: String,
    account_name: Option<String>,
    user: String,
    user_name: Option<String>,
    tags: Vec<String>,
    servers: Vec<&'static str>,
    name: String,
    ips: usize,
    idle: Duration,
    msgs: u64,
    with_start: bool,
    /// Two of every three connections made one publish a second after connecting and left
    /// (`used_once`); the others carry `msgs`.
    used_once: bool,
}

impl Conns {
    fn new(account: &str, user: &str) -> Self {
        Self {
            account: account.into(),
            account_name: None,
            user: user.into(),
            user_name: None,
            tags: vec![],
            servers: vec!["n1"],
            name: "worker".into(),
            ips: 1,
            idle: Duration::from_secs(600),
            msgs: 0,
            with_start: true,
            used_once: false,
        }
    }

    fn make(&self, n: u64, first_cid: u64) -> Vec<Connection> {
        (0..n)
            .map(|i| {
                let server = self.servers[i as usize % self.servers.len()];
                let start = self.with_start.then(|| {
                    Stamp::of(
                        DateTime::from_timestamp(1_799_990_000 + i as i64, 5_000_000).unwrap(),
                    )
                });
                let once = self.used_once && i % 3 != 0;
                Connection {
                    server: server.into(),
                    server_id: key('N', server).into(),
                    cid: first_cid + i,
                    kind: "Client".into(),
                    ip: format!("10.0.0.{}", i as usize % self.ips + 1).into(),
                    start,
                    idle: self.idle + Duration::from_millis(i * 1_001),
                    last_activity: start
                        .filter(|_| once)
                        .map(|s| s + chrono::Duration::seconds(1)),
                    subscriptions: once as u32,
                    in_msgs: if once { 1 } else { self.msgs },
                    out_msgs: 0,
                    name: self.name.as_str().into(),
                    account: self.account.as_str().into(),
                    account_name: self.account_name.as_deref().map(Into::into),
                    user: self.user.as_str().into(),
                    user_name: self.user_name.as_deref().map(Into::into),
                    tags: self.tags.iter().map(Into::into).collect(),
                }
            })
            .collect()
    }
}

/// A cluster in which every rule fires:
/// - `APP/leaky`: 150 connections from one process, growing → excessive, with growth;
/// - `OPS (A…)/alice (U…)`: 120 unnamed connections over 12 IPs, no start times, tags →
///   excessive, with human names, tags and null times;
/// - `APP/slow`: 50, growing 60/h → user_connection_growth;
/// - `APP` at 200 of its configured limit 220, `OPS` at 120 of a server-known 125 →
///   account_connection_pressure, with and without `account_name`;
/// - `SHARED/replica`: 200 connections from 200 IPs → excessive, with bounded `by_ip`;
/// - `n1` at 170 of 200 → server_connection_pressure.
struct World {
    detect: DetectConfig,
    history: History,
    ops_key: String,
}

impl World {
    fn new() -> Self {
        let detect = DetectConfig {
            account_limits: BTreeMap::from([("APP".into(), 220)]),
            ..DetectConfig::default()
        };
        let mut history = History::default();
        // Complete sweeps every 10 minutes, the last one being the current sweep.
        for i in 0..5u64 {
            let census = census::build(&Self::app(110 + 10 * i, 10 + 10 * i), None, &detect);
            history.record(&census, t(-40 + 10 * i as i64), HOUR);
        }
        Self {
            detect,
            history,
            ops_key: key('A', "ops"),
        }
    }

    /// `APP/leaky` and `APP/slow` with these many connections.
    fn app(leaky: u64, slow: u64) -> Vec<Connection> {
        let mut leaky_conns = Conns::new("APP", "leaky");
        leaky_conns.name = "leaky-worker".into();
        let mut c = leaky_conns.make(leaky, 1);
        let mut slow_conns = Conns::new("APP", "slow");
        slow_conns.servers = vec!["n1", "n2", "n3"];
        slow_conns.ips = 5;
        slow_conns.msgs = 7;
        c.extend(slow_conns.make(slow, 10_000));
        c
    }

    fn connections(&self) -> Vec<Connection> {
        let mut c = Self::app(150, 50);
        let mut alice = Conns::new(&self.ops_key, &key('U', "alice"));
        alice.account_name = Some("OPS".into());
        alice.user_name = Some("alice".into());
        alice.tags = vec!["team:ops".into(), "env:prod".into()];
        alice.servers = vec!["n2", "n3"];
        alice.name = String::new();
        alice.ips = 12;
        alice.with_start = false;
        c.extend(alice.make(120, 20_000));
        // One credential shared by 200 replicas: more IPs than an advisory lists.
        let mut shared = Conns::new("SHARED", "replica");
        shared.ips = 200;
        shared.msgs = 1;
        c.extend(shared.make(200, 30_000));
        c
    }

    fn findings(&self) -> Vec<rules::Finding> {
        let census = census::build(&self.connections(), Some("SYS"), &self.detect);
        // Churn as the live census counts it, too little for a reconnect loop: the diagnosis
        // carries it, its causes stay those of before.
        let churn = rules::diagnosis::Churn {
            closed: 3,
            window_secs: 60,
            top_reason: Some(rules::diagnosis::TopReason {
                reason: "Client Closed".into(),
                count: 3,
            }),
            connects: Some(5),
            short_lived: Some(2),
        };
        let ctx = Context {
            history: Some(&self.history),
            churn: HashMap::from([(("APP".to_string(), "leaky".to_string()), churn)]),
            account_limits: HashMap::from([(self.ops_key.clone(), 125)]),
            servers: vec![
                ServerLoad {
                    name: "n1".into(),
                    id: key('N', "n1"),
                    connections: 170,
                    max_connections: Some(200),
                },
                ServerLoad {
                    name: "n2".into(),
                    id: key('N', "n2"),
                    connections: 10,
                    max_connections: Some(200),
                },
            ],
        };
        let mut findings = rules::evaluate(&census, &self.detect, &ctx);
        findings.extend(refused_findings());
        // The balance checks over the same census: n1 holds most of cluster c1 (a hotspot) and
        // most of APP's and SHARED's connections (imbalances).
        let snap = Snapshot {
            servers_expected: 3,
            servers: [("n1", 170), ("n2", 10), ("n3", 10)]
                .iter()
                .map(|(n, c)| ServerSeen {
                    name: n.to_string(),
                    id: key('N', n),
                    connections: *c,
                    pages: 1,
                })
                .collect(),
            topology: ["n1", "n2", "n3"]
                .iter()
                .map(|n| (n.to_string(), connwatch::topology::Place::in_cluster("c1")))
                .collect(),
            ..Snapshot::default()
        };
        findings.extend(rules::balance::evaluate(&snap, &census, &self.detect));
        findings
    }
}

/// `connections_refused` of both scopes, as the live census's refusals make them: an account
/// over its limit, and authentication failures no account was known for.
fn refused_findings() -> Vec<rules::Finding> {
    use connwatch::rules::refused::{Refusal, Refusals, RefusedReason, AUTH_FLOOD_MIN};
    let mut r = Refusals::new(Duration::from_secs(60));
    let refusal = |reason, account: Option<&str>, user: &str, i: u64| Refusal {
        reason,
        account: account.map(str::to_string),
        account_name: account.map(|_| "APP".to_string()),
        server: "n1".into(),
        user: user.into(),
        ip: format!("10.0.0.{i}"),
        at: t(0),
    };
    for i in 0..3 {
        r.record(&refusal(
            RefusedReason::AccountLimit,
            Some(&key('A', "app")),
            "leaky",
            i,
        ));
    }
    for i in 0..AUTH_FLOOD_MIN {
        r.record(&refusal(RefusedReason::Auth, None, "", i));
    }
    r.findings(t(0))
        .into_iter()
        .map(rules::Finding::ConnectionsRefused)
        .collect()
}

/// The advisory types added after the previous version's fixtures were recorded.
const NEWER_KINDS: [&str; 3] = [
    "connections_refused",
    "server_connection_hotspot",
    "account_connection_imbalance",
];

/// The completeness of a sweep, as `Completeness::of` computes it from a snapshot.
fn sweep(started: Option<DateTime<Utc>>, responded: &[&str], missing: &[&str]) -> Completeness {
    let snapshot = Snapshot {
        started,
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
    };
    Completeness::of(&snapshot)
}

fn complete() -> Completeness {
    sweep(Some(t(0)), &["n1", "n2", "n3"], &[])
}

/// A partial sweep whose start is unknown.
fn partial() -> Completeness {
    sweep(None, &["n1", "n2"], &["n3"])
}

fn advisories(events: &[Event], sweep: &Completeness, now: DateTime<Utc>) -> Vec<Advisory> {
    events
        .iter()
        .map(|e| advisory::from_event(PREFIX, e, sweep, now))
        .collect()
}

/// Firing advisories of a complete sweep, renotified ones of a partial sweep an hour later,
/// resolved ones of a complete sweep that finds nothing.
fn lifecycle_advisories() -> Vec<Advisory> {
    let world = World::new();
    let findings = world.findings();
    let mut l = Lifecycle::default();
    let mut out = advisories(&l.step(&findings, true, t(0), HOUR), &complete(), t(0));
    out.extend(advisories(
        &l.step(&findings, false, t(61), HOUR),
        &partial(),
        t(61),
    ));
    // A partial sweep that sees nothing resolves nothing.
    assert!(l.step(&[], false, t(62), HOUR).is_empty());
    out.extend(advisories(
        &l.step(&[], true, t(63), HOUR),
        &complete(),
        t(63),
    ));
    out
}

fn occurrences(advisories: &[Advisory]) -> BTreeSet<(String, String, bool, bool)> {
    advisories
        .iter()
        .map(|a| {
            (
                name_of(&a.body).to_string(),
                a.body["state"].as_str().unwrap().to_string(),
                a.body["renotify"].as_bool().unwrap(),
                a.body["sweep"]["partial"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_kind_has_a_schema_and_every_schema_is_a_kind() {
    let kinds: BTreeSet<String> = advisory::NAMES.iter().map(|n| n.to_string()).collect();
    for kind in Kind::ALL {
        assert!(kinds.contains(kind.name()), "{kind:?} is no advisory type");
    }
    let files: BTreeSet<String> = std::fs::read_dir(schema_dir())
        .expect("schemas/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_suffix(".json")
                .unwrap_or_else(|| panic!("schemas/{f} is not a .json file"))
                .to_string()
        })
        .collect();
    assert_eq!(names, kinds, "schemas/ and advisory::NAMES disagree");
}

#[test]
fn schemas_are_valid_draft_2020_12_and_describe_their_type() {
    for kind in Kind::ALL {
        let name = kind.name();
        let schema = load_schema(name);
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("{name}.json is not a valid JSON Schema: {e}");
        }
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            schema["$id"],
            format!("https://connwatch.io/schemas/advisory/v1/{name}.json")
        );
        assert!(schema["title"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(schema["description"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(
            schema["properties"]["type"]["const"],
            format!("{TYPE_PREFIX}{name}")
        );
        assert_eq!(schema["additionalProperties"], false, "{name}");
        // Every declared property of the top level is either required or one that serde skips
        // when empty; nothing is silently optional.
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let optional: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|p| !required.contains(p))
            .collect();
        let allowed: BTreeSet<&str> = ["account_name", "user_name", "tags", "growth"].into();
        assert!(
            optional.is_subset(&allowed),
            "{name}: optional {optional:?}"
        );
        // The bounded maps say how far they are bounded.
        if schema["properties"].get("user").is_some() {
            for map in ["by_name", "by_ip"] {
                assert_eq!(
                    schema["properties"][map]["maxProperties"], MAX_MAP_ENTRIES,
                    "{name}.{map}"
                );
            }
        }
    }
}

#[test]
fn real_advisories_of_every_kind_and_state_match_their_schemas() {
    let validators = validators();
    let advisories = lifecycle_advisories();
    for a in &advisories {
        assert_valid(&validators, &a.body);
        assert_eq!(a.body["id"], a.id.as_str());
        let name = name_of(&a.body);
        assert!(
            a.subject.starts_with(&format!("{PREFIX}.{name}.")),
            "{}",
            a.subject
        );
    }
    // Every kind fired, was renotified by a partial sweep and resolved.
    let seen = occurrences(&advisories);
    for kind in Kind::ALL {
        let name = kind.name().to_string();
        for occurrence in [
            (name.clone(), "firing".to_string(), false, false),
            (name.clone(), "firing".to_string(), true, true),
            (name.clone(), "resolved".to_string(), false, false),
        ] {
            assert!(
                seen.contains(&occurrence),
                "missing {occurrence:?} in {seen:?}"
            );
        }
    }
    // The optional and nullable shapes were all exercised.
    let bodies: Vec<&Value> = advisories.iter().map(|a| &a.body).collect();
    let any = |f: &dyn Fn(&Value) -> bool| bodies.iter().any(|b| f(b));
    assert!(any(&|b| b["user_name"] == "alice" && b["tags"].is_array()));
    assert!(any(&|b| b["diagnosis"]["churn"]["short_lived"] == 2));
    assert!(any(
        &|b| b.get("diagnosis").is_some() && b["diagnosis"].get("churn").is_none()
    ));
    assert!(any(
        &|b| b.get("user").is_some() && b.get("user_name").is_none()
    ));
    assert!(any(
        &|b| b["oldest_start"].is_null() && b["suspects"][0]["start"].is_null()
    ));
    assert!(any(
        &|b| b["oldest_start"].is_string() && b["suspects"][0]["start"].is_string()
    ));
    assert!(any(&|b| b["spread"]["top_process"].is_object()));
    assert!(any(&|b| name_of(b) == "excessive_user_connections"
        && b["growth"]["threshold_in_secs"].is_null()));
    assert!(any(&|b| name_of(b) == "user_connection_growth"
        && b["growth"]["threshold_in_secs"].is_u64()
        && b["growth"]["account_limit_in_secs"].is_u64()));
    assert!(any(
        &|b| name_of(b) == "account_connection_pressure" && b["account_name"] == "OPS"
    ));
    assert!(any(
        &|b| name_of(b) == "account_connection_pressure" && b.get("account_name").is_none()
    ));
    assert!(any(&|b| b["diagnosis"]["causes"].as_array().is_some_and(
        |c| c.iter().any(|c| c["cause"] == "unnamed_connections")
    )));
    assert!(any(&|b| b["sweep"]["missing"] == json!(["n3"])
        && b["sweep"]["partial"] == true
        && b["sweep"]["servers_responded"] == 2
        && b["sweep"]["started"].is_null()));
    assert!(any(&|b| b["sweep"]["started"].is_string()));
    assert!(any(&|b| b["by_ip"].as_object().map(|m| m.len())
        == Some(MAX_MAP_ENTRIES)
        && b["spread"]["ips"] == 200
        && b["diagnosis"]["causes"][0]["cause"] == "shared_credential"));
}

/// Ways to break a valid body, each of which its schema must reject.
fn mutations(body: &Value) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let mut m = |what: &'static str, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut b = body.clone();
        f(b.as_object_mut().unwrap());
        out.push((what, b));
    };
    m("missing type", &|b| {
        b.remove("type");
    });
    m("missing sweep", &|b| {
        b.remove("sweep");
    });
    m("wrong state", &|b| {
        b.insert("state".into(), json!("open"));
    });
    m("extra top-level field", &|b| {
        b.insert("extra".into(), json!(1));
    });
    m("extra sweep field", &|b| {
        b["sweep"]
            .as_object_mut()
            .unwrap()
            .insert("extra".into(), json!(true));
    });
    m("type of another version", &|b| {
        let t = b["type"].as_str().unwrap().replace(".v1.", ".v2.");
        b.insert("type".into(), json!(t));
    });
    m("timestamp without milliseconds", &|b| {
        b.insert("timestamp".into(), json!("2026-11-25T20:31:09Z"));
    });
    m("timestamp that is no date", &|b| {
        b.insert("timestamp".into(), json!("2026-13-45T20:31:09.123Z"));
    });
    m("renotified resolution", &|b| {
        b.insert("state".into(), json!("resolved"));
        b.insert("renotify".into(), json!(true));
    });
    m("negative connections", &|b| {
        b.insert("connections".into(), json!(-1));
    });
    if body.get("account").is_some() {
        m("null account_name", &|b| {
            b.insert("account_name".into(), Value::Null);
        });
    }
    if body.get("user").is_some() {
        m("string count in by_server", &|b| {
            b["by_server"]
                .as_object_mut()
                .unwrap()
                .insert("n9".into(), json!("3"));
        });
        m("more IPs than an advisory lists", &|b| {
            let ips: serde_json::Map<String, Value> = (0..=MAX_MAP_ENTRIES)
                .map(|i| (format!("10.9.0.{i}"), json!(1)))
                .collect();
            b.insert("by_ip".into(), Value::Object(ips));
        });
        m("missing oldest_start (null must be explicit)", &|b| {
            b.remove("oldest_start");
        });
        m("empty tags (serde skips them)", &|b| {
            b.insert("tags".into(), json!([]));
        });
        m("unknown diagnosis cause", &|b| {
            b["diagnosis"]["causes"] = json!([{"cause": "gremlins", "message": "?"}]);
        });
        m("extra field in diagnosis", &|b| {
            b["diagnosis"]
                .as_object_mut()
                .unwrap()
                .insert("extra".into(), json!(1));
        });
        m("idle in seconds instead of humantime", &|b| {
            b.insert(
                "suspects".into(),
                json!([{"server": "n1", "server_id": "N", "cid": 1, "name": "",
                "ip": "10.0.0.1", "start": null, "idle": 600}]),
            );
        });
        m("suspect start that is not a time", &|b| {
            b.insert(
                "suspects".into(),
                json!([{"server": "n1", "server_id": "N", "cid": 1, "name": "",
                "ip": "10.0.0.1", "start": "yesterday", "idle": "10m"}]),
            );
        });
        m("growth with a missing field", &|b| {
            b.insert(
                "growth".into(),
                json!({"per_hour": 60.0, "samples": 5, "window_secs": 2400,
                "threshold_in_secs": 3060, "account_limit": null}),
            );
        });
    }
    out
}

#[test]
fn broken_bodies_fail_validation() {
    let validators = validators();
    let advisories = lifecycle_advisories();
    let mut checked = BTreeSet::new();
    for a in advisories
        .iter()
        .filter(|a| a.body["state"] == "firing" && a.body["renotify"] == false)
    {
        let name = name_of(&a.body).to_string();
        let v = &validators[name.as_str()];
        assert!(v.is_valid(&a.body));
        for (what, broken) in mutations(&a.body) {
            assert!(
                !v.is_valid(&broken),
                "{name}: a body with {what} passes its schema: {broken:#}"
            );
        }
        // No body passes another kind's schema.
        for (other, ov) in &validators {
            if *other != name {
                assert!(!ov.is_valid(&a.body), "{name} passes {other}'s schema");
            }
        }
        checked.insert(name);
    }
    assert_eq!(checked.len(), Kind::ALL.len());
}

#[test]
fn a_growing_user_without_a_projection_is_rejected() {
    let validators = validators();
    let body = lifecycle_advisories()
        .into_iter()
        .map(|a| a.body)
        .find(|b| name_of(b) == "user_connection_growth")
        .unwrap();
    let mut b = body.clone();
    b["growth"]["threshold_in_secs"] = Value::Null;
    b["growth"]["account_limit_in_secs"] = Value::Null;
    assert!(!validators["user_connection_growth"].is_valid(&b));
    let mut b = body;
    b.as_object_mut().unwrap().remove("growth");
    assert!(!validators["user_connection_growth"].is_valid(&b));
}

/// A valid subject token: non-empty, printable ASCII, no whitespace, no `.`, `*` or `>`.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
}

#[test]
fn hostile_names_give_valid_subjects_and_stay_raw_in_the_body() {
    let validators = validators();
    let long = "x".repeat(10 * 1024);
    let names: Vec<&str> = vec!["a.b", "*", ">", "ü", "a b", "a.>", "", long.as_str()];
    let mut conns = Vec::new();
    let mut cid = 0;
    let mut detect = DetectConfig::default();
    let mut servers = Vec::new();
    for (i, n) in names.iter().enumerate() {
        // The name as account and as user, and as a user of a plain account.
        for (account, user) in [
            (n.to_string(), n.to_string()),
            ("APP".into(), n.to_string()),
        ] {
            let mut c = Conns::new(&account, &user);
            c.name = n.to_string();
            conns.extend(c.make(101, cid));
            cid += 1000;
        }
        detect.account_limits.insert(n.to_string(), 110);
        servers.push(ServerLoad {
            name: n.to_string(),
            id: key('N', &i.to_string()),
            connections: 99,
            max_connections: Some(100),
        });
    }
    let census = census::build(&conns, None, &detect);
    let ctx = Context {
        servers,
        ..Context::default()
    };
    let findings = rules::evaluate(&census, &detect, &ctx);
    let events = Lifecycle::default().step(&findings, true, t(0), HOUR);
    // Per name: excessive as account/user and as APP/user, account pressure, server pressure.
    assert_eq!(events.len(), names.len() * 4);
    let mut subjects = BTreeSet::new();
    for e in &events {
        let a = advisory::from_event(PREFIX, e, &complete(), t(0));
        assert_valid(&validators, &a.body);
        let tokens: Vec<&str> = a.subject.split('.').collect();
        let name = name_of(&a.body);
        assert_eq!(
            &tokens[..3],
            &["connwatch", "advisory", name],
            "{}",
            a.subject
        );
        assert_eq!(tokens.len(), 3 + e.finding.tokens.len(), "{}", a.subject);
        for tok in &tokens {
            assert!(valid_token(tok), "bad token {tok:?} in {:?}", a.subject);
            assert!(
                tok.len() <= 64,
                "token of {} bytes in {}",
                tok.len(),
                a.subject
            );
        }
        assert!(subjects.insert(a.subject.clone()), "{} twice", a.subject);
        // The raw names, unescaped and whole, in the body.
        match e.finding.kind() {
            Kind::ExcessiveUserConnections => {
                assert_eq!(a.body["account"], e.finding.tokens[0].as_str());
                assert_eq!(a.body["user"], e.finding.tokens[1].as_str());
                assert!(names.contains(&a.body["user"].as_str().unwrap()));
                assert_eq!(
                    a.body["by_name"][a.body["user"].as_str().unwrap()],
                    101,
                    "client names stay raw too"
                );
            }
            Kind::AccountConnectionPressure => {
                assert!(names.contains(&a.body["account"].as_str().unwrap()));
            }
            Kind::ServerConnectionPressure => {
                assert!(names.contains(&a.body["server"].as_str().unwrap()));
                assert!(a.body["by_server"].is_null());
            }
            Kind::UserConnectionGrowth => panic!("no growth without history"),
            Kind::ConnectionsRefused => panic!("no refusals from a census"),
            Kind::ServerConnectionHotspot | Kind::AccountConnectionImbalance => {
                panic!("the balance checks are not in rules::evaluate")
            }
        }
    }
    let long_user = events
        .iter()
        .find(|e| e.finding.tokens == ["APP".to_string(), long.clone()])
        .expect("the 10 KB user fired");
    let a = advisory::from_event(PREFIX, long_user, &complete(), t(0));
    assert_eq!(a.body["user"].as_str().unwrap().len(), 10 * 1024);
    assert!(a.subject.len() < 200, "{}", a.subject);
}

/// A `connection_kicked` of each result and a `kick_ineffective`, as the kick code builds them.
fn kick_advisories() -> Vec<Advisory> {
    let world = World::new();
    let conns = world.connections();
    let alice = conns
        .iter()
        .find(|c| c.user_name.is_some())
        .expect("alice has connections");
    let mut out = Vec::new();
    use advisory::{KickResult, KickRule};
    for (c, rule, result, error) in [
        (
            &conns[0],
            KickRule::ExcessiveUserConnections,
            KickResult::WouldKick,
            None,
        ),
        (
            alice,
            KickRule::ExcessiveUserConnections,
            KickResult::Kicked,
            None,
        ),
        (&conns[1], KickRule::Manual, KickResult::AlreadyGone, None),
        (
            &conns[2],
            KickRule::Manual,
            KickResult::Failed,
            Some("timed out after 5s"),
        ),
    ] {
        let plan = connwatch::kick::KickPlan::of(c, t(0), 150, 100);
        out.push(advisory::kicked(
            PREFIX,
            &plan,
            rule,
            result,
            error,
            &complete(),
            t(0),
        ));
    }
    let returned = connwatch::kick::Returned {
        client: connwatch::kick::Client {
            account: "APP".into(),
            user: "leaky".into(),
            name: "leaky-worker".into(),
            ip: "10.0.0.1".into(),
        },
        kicks: 20,
        returns: 3,
        new_connections: 18,
        given_up: true,
        message: "came back".into(),
    };
    out.push(advisory::kick_ineffective(
        PREFIX,
        &returned,
        &partial(),
        t(1),
    ));
    out
}

#[test]
fn committed_schemas_are_the_generated_ones() {
    let bless = std::env::var_os("CONNWATCH_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, schema) in advisory::types::schemas() {
        let path = schema_dir().join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if bless {
            // Whole files only: the other tests of this run read them.
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "these schemas differ from the advisory types: {stale:?}\n\
         regenerate them with `CONNWATCH_BLESS=1 cargo test --test advisory_schemas` and review the diff"
    );
}

#[test]
fn kick_advisories_match_their_schemas_and_decode() {
    let validators = validators();
    let advisories = kick_advisories();
    let mut results = BTreeSet::new();
    for a in &advisories {
        assert_valid(&validators, &a.body);
        let message = advisory::Message::decode(a.body.clone()).expect("decodes");
        assert_eq!(message.to_value(), a.body, "decoding keeps every field");
        if let Some(r) = a.body.get("result") {
            results.insert(r.as_str().unwrap().to_string());
        }
    }
    assert_eq!(results.len(), 4, "{results:?}");
    // A failure carries its error; the others have none.
    for a in advisories.iter().filter(|a| a.body.get("result").is_some()) {
        assert_eq!(a.body["result"] == "failed", a.body.get("error").is_some());
        assert_eq!(a.body["result"] == "would_kick", a.body["dry_run"] == true);
    }
}

#[test]
fn every_finding_advisory_decodes_to_what_was_sent() {
    for a in lifecycle_advisories() {
        let message = advisory::Message::decode(a.body.clone()).expect("decodes");
        assert_eq!(message.to_value(), a.body);
        assert_eq!(message.name(), name_of(&a.body));
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every field of `old` is in `new` with the same value (`id` aside: it is unique); `new` may
/// have more.
fn has_every_field_of(new: &Value, old: &Value, at: &str, missing: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in o {
                let here = format!("{at}.{k}");
                match n.get(k) {
                    None => missing.push(format!("{here} is gone")),
                    Some(_) if k == "id" && at.is_empty() => {}
                    Some(nv) => has_every_field_of(nv, v, &here, missing),
                }
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (ov, nv)) in o.iter().zip(n).enumerate() {
                has_every_field_of(nv, ov, &format!("{at}[{i}]"), missing);
            }
        }
        _ if old == new => {}
        _ => missing.push(format!("{at} was {old}, is {new}")),
    }
}

/// Subscribers see what they saw before the advisories were typed: the same inputs give the
/// same subjects and every field with its value.
#[test]
fn advisories_keep_every_field_of_the_previous_version() {
    let text = std::fs::read_to_string(fixture("advisories-before-typed-advisories.json")).unwrap();
    let old: Vec<Value> = serde_json::from_str(&text).unwrap();
    // The types added since are left out.
    let mut new = lifecycle_advisories();
    new.retain(|a| !NEWER_KINDS.contains(&name_of(&a.body)));
    new.extend(kick_advisories());
    assert_eq!(old.len(), new.len());
    let mut missing = Vec::new();
    for (o, n) in old.iter().zip(&new) {
        assert_eq!(o["subject"], n.subject.as_str());
        has_every_field_of(&n.body, &o["body"], "", &mut missing);
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// A state file written before the advisories were typed loads, and its firing findings stay
/// firing without being announced again.
#[test]
fn a_state_file_of_the_previous_version_loads() {
    let state = connwatch::state::State::load(&fixture("state-before-typed-advisories.json"))
        .expect("the old state file loads");
    let kinds: BTreeSet<Kind> = state.findings.active.values().map(|a| a.kind()).collect();
    assert_eq!(
        kinds.len(),
        Kind::ALL.len() - NEWER_KINDS.len(),
        "{kinds:?}"
    );
    assert_eq!(state.servers.servers.len(), 3);
    assert_eq!(state.kicked.clients.len(), 1);
    assert!(!state.history.users.is_empty());
    // Saved again, it reads back the same, in the shape it was read from.
    let saved = serde_json::to_value(&state).unwrap();
    let text = std::fs::read_to_string(fixture("state-before-typed-advisories.json")).unwrap();
    let old: Value = serde_json::from_str(&text).unwrap();
    let mut missing = Vec::new();
    has_every_field_of(&saved, &old, "", &mut missing);
    assert!(missing.is_empty(), "{missing:#?}");
    let mut findings = state.findings.clone();
    let again: Vec<_> = findings
        .active
        .values()
        .map(|a| a.finding.clone())
        .collect();
    assert!(
        findings.step(&again, true, t(1), HOUR).is_empty(),
        "a restart announced its firing findings again"
    );
}

/// A user whose connections were used once (connection per request), its finding and the
/// kick of one of them carry the leak pattern, the new counts and the new cause, valid against
/// the schemas and decoded by `tail` as sent.
#[test]
fn used_once_leaks_are_advised_and_kicked_with_their_pattern() {
    let validators = validators();
    let mut once = Conns::new("APP", "per-request");
    once.name = "api".into();
    once.used_once = true;
    let conns = once.make(150, 40_000);
    let detect = DetectConfig::default();
    let census = census::build(&conns, Some("SYS"), &detect);
    let u = &census.users[0];
    assert_eq!(
        (u.idle_used_once, u.idle_zero_msgs, u.leak_suspects),
        (100, 50, 150)
    );
    let findings = rules::evaluate(&census, &detect, &Context::default());
    let events = Lifecycle::default().step(&findings, true, t(0), HOUR);
    let body = &advisories(&events, &complete(), t(0))[0].body;
    assert_valid(&validators, body);
    assert_eq!(body["idle_used_once"], 100);
    let suspects = body["suspects"].as_array().unwrap();
    assert!(suspects.iter().any(|s| s["pattern"] == "zero_msgs"));
    assert!(suspects
        .iter()
        .any(|s| s["pattern"] == "used_once" && s["in_msgs"] == 1 && s["subscriptions"] == 1));
    let causes = support::causes(body);
    assert!(
        causes.contains(&"connection_per_request".into()),
        "{causes:?}"
    );
    let message = advisory::Message::decode(body.clone()).expect("decodes");
    assert_eq!(&message.to_value(), body);

    let plans = connwatch::kick::plan(&connwatch::kick::KickInputs {
        connections: &conns,
        census: &census,
        complete: true,
        cfg: &connwatch::config::KickConfig {
            min_idle: Duration::from_secs(60),
            min_age: Duration::ZERO,
            ..Default::default()
        },
        system_account: Some("SYS"),
        own: None,
        kicked: &Default::default(),
        now: t(0),
        used_once_within: detect.used_once_within,
    });
    let plan = plans
        .iter()
        .find(|p| p.pattern.is_some_and(|p| p.name() == "used_once"))
        .expect("a used-once connection is kicked");
    let kicked = advisory::kicked(
        PREFIX,
        plan,
        advisory::KickRule::ExcessiveUserConnections,
        advisory::KickResult::WouldKick,
        None,
        &complete(),
        t(0),
    );
    assert_valid(&validators, &kicked.body);
    assert_eq!(kicked.body["pattern"], "used_once");
}
