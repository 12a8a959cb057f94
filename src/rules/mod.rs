//! Rules: plain functions from a census (and a short history) to findings.
//!
//! - `excessive_user_connections`: a user above its threshold, with its leak suspects, a
//!   diagnosis and its growth;
//! - `user_connection_growth`: a user below its threshold that will cross it, or exhaust its
//!   account's limit, within `detect.growth_horizon`, on evidence ([`growth::sustained`]): a
//!   minimum span and increase, and a rise that holds over the whole window;
//! - `account_connection_pressure`: an account at `detect.account_pressure` of its limit;
//! - `server_connection_pressure`: a server at `detect.server_pressure` of `max_connections`;
//! - `connections_refused`: connections an account or a server refused ([`refused`], from the
//!   live census's events).
//! - [`balance`]: `server_connection_hotspot` and `account_connection_imbalance`.

pub mod balance;
pub mod diagnosis;
pub mod growth;
pub mod refused;

use std::collections::{BTreeMap, HashMap, HashSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::{Census, UserCensus};
use crate::config::{DetectConfig, UserMatch};
use diagnosis::{diagnose, Churn, Diagnosis};
use growth::{growth, sustained, Evidence, Growth, History};
pub use refused::RefusedFinding;

/// The kinds of finding; each is an advisory type `io.connwatch.advisory.v1.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A user above its threshold.
    ExcessiveUserConnections,
    /// A user growing toward its threshold or its account's limit.
    UserConnectionGrowth,
    /// An account near its connection limit.
    AccountConnectionPressure,
    /// A server near its `max_connections`.
    ServerConnectionPressure,
    /// Connections refused by an account's or a server's limit, or failing to authenticate.
    ConnectionsRefused,
    /// A server far above its cluster's average connections.
    ServerConnectionHotspot,
    /// Most of an account's connections on one server.
    AccountConnectionImbalance,
}

impl Kind {
    /// The advisory name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExcessiveUserConnections => "excessive_user_connections",
            Self::UserConnectionGrowth => "user_connection_growth",
            Self::AccountConnectionPressure => "account_connection_pressure",
            Self::ServerConnectionPressure => "server_connection_pressure",
            Self::ConnectionsRefused => "connections_refused",
            Self::ServerConnectionHotspot => "server_connection_hotspot",
            Self::AccountConnectionImbalance => "account_connection_imbalance",
        }
    }

    /// Every kind, for schemas and documentation.
    pub const ALL: [Kind; 7] = [
        Self::ExcessiveUserConnections,
        Self::UserConnectionGrowth,
        Self::AccountConnectionPressure,
        Self::ServerConnectionPressure,
        Self::ConnectionsRefused,
        Self::ServerConnectionHotspot,
        Self::AccountConnectionImbalance,
    ];
}

/// A finding about a user: its census, why, and where it is heading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = bounded_maps)]
pub struct UserFinding {
    /// The user's connections: counts by server, name and IP, and the leak suspects
    /// (the connections an operator would kick).
    #[serde(flatten)]
    pub census: UserCensus,
    /// Why, in words with the numbers.
    pub diagnosis: Diagnosis,
    /// The trend, when there are enough sweeps to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
}

/// A finding about an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountFinding {
    /// Account (name, or public key in operator mode).
    pub account: String,
    /// The account's human name; present only when the server gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// Open connections of the account, cluster-wide.
    pub connections: u64,
    /// The account's connection limit (account JWT, else `detect.account_limits`).
    #[schemars(range(min = 1))]
    pub limit: u64,
    /// `connections / limit`, rounded to 3 decimals.
    #[schemars(range(min = 0))]
    pub ratio: f64,
}

/// A finding about a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerFinding {
    /// Server name.
    pub server: String,
    /// Server id.
    pub server_id: String,
    /// Open connections of the server.
    pub connections: u64,
    /// The server's `max_connections`.
    #[schemars(range(min = 1))]
    pub max_connections: u64,
    /// `connections / max_connections`, rounded to 3 decimals.
    #[schemars(range(min = 0))]
    pub ratio: f64,
}

/// One finding of one sweep: which rule found it, and what about.
///
/// Serialized as `{"kind": ..., "body": ...}`, the shape the state file has always kept.
/// A new rule is a new variant here and in [`Kind`], and one line in the advisory list
/// (`advisory::types`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Finding {
    /// A user above its threshold.
    ExcessiveUserConnections(Box<UserFinding>),
    /// A user growing toward its threshold or its account's limit.
    UserConnectionGrowth(Box<UserFinding>),
    /// An account near its connection limit.
    AccountConnectionPressure(AccountFinding),
    /// A server near its `max_connections`.
    ServerConnectionPressure(ServerFinding),
    /// Connections refused by an account or a server.
    ConnectionsRefused(RefusedFinding),
    /// A server far above its cluster's average.
    ServerConnectionHotspot(balance::HotspotFinding),
    /// Most of an account's connections on one server.
    AccountConnectionImbalance(balance::ImbalanceFinding),
}

impl Finding {
    /// Which rule found it.
    pub fn kind(&self) -> Kind {
        match self {
            Self::ExcessiveUserConnections(_) => Kind::ExcessiveUserConnections,
            Self::UserConnectionGrowth(_) => Kind::UserConnectionGrowth,
            Self::AccountConnectionPressure(_) => Kind::AccountConnectionPressure,
            Self::ServerConnectionPressure(_) => Kind::ServerConnectionPressure,
            Self::ConnectionsRefused(_) => Kind::ConnectionsRefused,
            Self::ServerConnectionHotspot(_) => Kind::ServerConnectionHotspot,
            Self::AccountConnectionImbalance(_) => Kind::AccountConnectionImbalance,
        }
    }

    /// The names that identify it: account and user, account, or server.
    pub fn tokens(&self) -> Vec<String> {
        match self {
            Self::ExcessiveUserConnections(u) | Self::UserConnectionGrowth(u) => {
                vec![u.census.account.clone(), u.census.user.clone()]
            }
            Self::AccountConnectionPressure(a) => vec![a.account.clone()],
            Self::ServerConnectionPressure(s) => vec![s.server.clone()],
            Self::ConnectionsRefused(r) => vec![r.name.clone()],
            Self::ServerConnectionHotspot(s) => vec![s.server.clone()],
            Self::AccountConnectionImbalance(a) => vec![a.account.clone()],
        }
    }

    /// A key that stays the same while the finding lasts.
    pub fn key(&self) -> String {
        key_of(self.kind(), &self.tokens())
    }
}

/// The key of a finding of `kind` about `tokens` (see [`Finding::key`]).
pub fn key_of(kind: Kind, tokens: &[String]) -> String {
    let mut parts = vec![kind.name().to_string()];
    parts.extend(tokens.iter().cloned());
    serde_json::to_string(&parts).expect("strings serialize")
}

/// The keys of the findings whose limit is unknown this round (its lookup failed): they may
/// be neither found nor ruled out, so the lifecycle must hold them as they are. An account
/// with an unknown limit holds its pressure finding and its users' growth findings (growth
/// may project onto the account's limit); a server with an unknown `max_connections` holds its
/// pressure finding.
pub fn held_keys(
    census: &Census,
    unknown_accounts: &HashSet<String>,
    unknown_servers: &HashSet<String>,
) -> HashSet<String> {
    let mut held = HashSet::new();
    for account in unknown_accounts {
        held.insert(key_of(
            Kind::AccountConnectionPressure,
            std::slice::from_ref(account),
        ));
    }
    for u in census
        .users
        .iter()
        .filter(|u| unknown_accounts.contains(&u.account))
    {
        held.insert(key_of(
            Kind::UserConnectionGrowth,
            &[u.account.clone(), u.user.clone()],
        ));
    }
    for server in unknown_servers {
        held.insert(key_of(
            Kind::ServerConnectionPressure,
            std::slice::from_ref(server),
        ));
    }
    held
}

/// A server's connections and limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLoad {
    /// Server name.
    pub name: String,
    /// Server id.
    pub id: String,
    /// Open connections.
    pub connections: u64,
    /// `max_connections`, when known.
    pub max_connections: Option<u64>,
}

/// Everything the rules look at besides the census.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// Connection counts of earlier complete sweeps.
    pub history: Option<&'a History>,
    /// Closed connections per `(account, user)` since the previous sweep.
    pub churn: HashMap<(String, String), Churn>,
    /// Account connection limits known from the servers (operator mode JWTs).
    pub account_limits: HashMap<String, u64>,
    /// The servers that answered, with their limits.
    pub servers: Vec<ServerLoad>,
}

fn ignored(ignore: &[UserMatch], u: &UserCensus) -> bool {
    ignore
        .iter()
        .any(|m| m.matches(&u.account, &u.account_name, &u.user, &u.user_name))
}

/// The connection limit of an account: from the servers, else from `detect.account_limits`.
fn account_limit(
    detect: &DetectConfig,
    ctx: &Context,
    account: &str,
    name: &Option<String>,
) -> Option<u64> {
    ctx.account_limits.get(account).copied().or_else(|| {
        detect
            .account_limits
            .get(account)
            .or_else(|| name.as_ref().and_then(|n| detect.account_limits.get(n)))
            .copied()
    })
}

/// Applies every rule to a census.
pub fn evaluate(census: &Census, detect: &DetectConfig, ctx: &Context) -> Vec<Finding> {
    let mut per_account: BTreeMap<&str, (u64, &Option<String>)> = BTreeMap::new();
    for u in &census.users {
        let e = per_account
            .entry(u.account.as_str())
            .or_insert((0, &u.account_name));
        e.0 += u.connections;
    }
    let evidence = Evidence {
        min_span: detect.growth_min_span,
        min_increase: detect.growth_min_increase,
        min_per_hour: detect.growth_min_per_hour,
    };
    let mut findings = Vec::new();
    for u in census.users.iter().filter(|u| !ignored(&detect.ignore, u)) {
        let (account_connections, _) = per_account[u.account.as_str()];
        let limit = account_limit(detect, ctx, &u.account, &u.account_name);
        let samples = ctx
            .history
            .map(|h| h.samples(&u.account, &u.user))
            .unwrap_or_default();
        let trend = growth(
            &samples,
            u.connections,
            u.threshold,
            account_connections,
            limit,
        );
        let horizon = detect.growth_horizon.as_secs();
        let growing = trend.as_ref().is_some_and(|g| {
            sustained(&samples, &evidence)
                && [g.threshold_in_secs, g.account_limit_in_secs]
                    .iter()
                    .flatten()
                    .any(|s| *s <= horizon)
        });
        if !u.over_threshold && !growing {
            continue;
        }
        let churn = ctx.churn.get(&(u.account.clone(), u.user.clone()));
        let finding = Box::new(UserFinding {
            census: u.with_maps_cut(MAX_MAP_ENTRIES),
            diagnosis: diagnose(u, churn),
            growth: trend,
        });
        findings.push(if u.over_threshold {
            Finding::ExcessiveUserConnections(finding)
        } else {
            Finding::UserConnectionGrowth(finding)
        });
    }
    for (account, (connections, name)) in per_account {
        let Some(limit) = account_limit(detect, ctx, account, name).filter(|l| *l > 0) else {
            continue;
        };
        let ratio = connections as f64 / limit as f64;
        if ratio >= detect.account_pressure {
            findings.push(Finding::AccountConnectionPressure(AccountFinding {
                account: account.to_string(),
                account_name: name.clone(),
                connections,
                limit,
                ratio: round3(ratio),
            }));
        }
    }
    for s in &ctx.servers {
        let Some(max) = s.max_connections.filter(|m| *m > 0) else {
            continue;
        };
        let ratio = s.connections as f64 / max as f64;
        if ratio >= detect.server_pressure {
            findings.push(Finding::ServerConnectionPressure(ServerFinding {
                server: s.name.clone(),
                server_id: s.id.clone(),
                connections: s.connections,
                max_connections: max,
                ratio: round3(ratio),
            }));
        }
    }
    findings
}

/// Entries kept in an advisory's `by_name` and `by_ip` (the largest); `spread` has the totals.
pub const MAX_MAP_ENTRIES: usize = 50;

/// The schema of a [`UserFinding`] says how far `by_name` and `by_ip` are bounded.
fn bounded_maps(schema: &mut schemars::Schema) {
    for map in ["by_name", "by_ip"] {
        if let Some(p) = schema
            .get_mut("properties")
            .and_then(|p| p.get_mut(map))
            .and_then(|p| p.as_object_mut())
        {
            p.insert("maxProperties".into(), MAX_MAP_ENTRIES.into());
            p.insert(
                "description".into(),
                format!(
                    "{} An advisory lists the {MAX_MAP_ENTRIES} largest entries; `spread` has the totals.",
                    p.get("description")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default()
                )
                .into(),
            );
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::build;
    use crate::snapshot::Connection;
    use chrono::{DateTime, Utc};
    use std::time::Duration;

    fn conns(account: &str, user: &str, n: u64, server: &str) -> Vec<Connection> {
        (0..n)
            .map(|cid| Connection {
                server: server.into(),
                server_id: format!("ID{server}").into(),
                cid,
                kind: "Client".into(),
                ip: "10.1.1.1".into(),
                start: None,
                idle: Duration::from_secs(600),
                in_msgs: 0,
                out_msgs: 0,
                name: "worker".into(),
                account: account.into(),
                account_name: None,
                user: user.into(),
                user_name: None,
                tags: vec![],
                ..Connection::default()
            })
            .collect()
    }

    fn kinds(f: &[Finding]) -> Vec<(Kind, Vec<String>)> {
        f.iter().map(|f| (f.kind(), f.tokens())).collect()
    }

    fn user(f: &Finding) -> &UserFinding {
        match f {
            Finding::ExcessiveUserConnections(u) | Finding::UserConnectionGrowth(u) => u,
            other => panic!("not a user finding: {other:?}"),
        }
    }

    #[test]
    fn excessive_users_are_found_with_suspects_and_diagnosis() {
        let mut c = conns("APP", "leaky", 150, "n1");
        c.extend(conns("APP", "fine", 5, "n2"));
        let census = build(&c, None, &DetectConfig::default());
        let f = evaluate(&census, &DetectConfig::default(), &Context::default());
        assert_eq!(
            kinds(&f),
            vec![(
                Kind::ExcessiveUserConnections,
                vec!["APP".into(), "leaky".into()]
            )]
        );
        let u = user(&f[0]);
        assert_eq!(u.census.connections, 150);
        assert_eq!(u.census.suspects.len(), 20);
        assert_eq!(
            u.diagnosis.causes[0].cause,
            diagnosis::CauseKind::OneProcessLeak
        );
    }

    #[test]
    fn advisory_maps_are_bounded_to_the_largest_entries() {
        let mut c = Vec::new();
        for i in 0..200u64 {
            let mut conn = conns("APP", "shared", 1 + (i == 7) as u64, "n1");
            for x in conn.iter_mut() {
                x.ip = format!("10.0.{}.{}", i / 250, i % 250).into();
                x.cid += i * 10;
            }
            c.extend(conn);
        }
        let census = build(&c, None, &DetectConfig::default());
        let f = evaluate(&census, &DetectConfig::default(), &Context::default());
        let u = user(&f[0]);
        assert_eq!(u.census.by_ip.len(), MAX_MAP_ENTRIES);
        assert_eq!(u.census.by_ip["10.0.0.7"], 2, "the largest entry is kept");
        assert_eq!(u.census.spread.ips, 200, "the total stays known");
        assert_eq!(u.census.connections, 201);
    }

    #[test]
    fn ignored_users_are_not_reported() {
        let census = build(
            &conns("APP", "leaky", 150, "n1"),
            None,
            &DetectConfig::default(),
        );
        let detect = DetectConfig {
            ignore: vec![UserMatch {
                account: "APP".into(),
                user: Some("leaky".into()),
            }],
            ..DetectConfig::default()
        };
        assert!(evaluate(&census, &detect, &Context::default()).is_empty());
    }

    #[test]
    fn account_and_server_pressure() {
        let census = build(&conns("APP", "a", 95, "n1"), None, &DetectConfig::default());
        let detect = DetectConfig {
            account_limits: BTreeMap::from([("APP".into(), 100)]),
            ..DetectConfig::default()
        };
        let ctx = Context {
            servers: vec![
                ServerLoad {
                    name: "n1".into(),
                    id: "I1".into(),
                    connections: 85,
                    max_connections: Some(100),
                },
                ServerLoad {
                    name: "n2".into(),
                    id: "I2".into(),
                    connections: 79,
                    max_connections: Some(100),
                },
            ],
            ..Context::default()
        };
        let f = evaluate(&census, &detect, &ctx);
        assert_eq!(
            kinds(&f),
            vec![
                (Kind::AccountConnectionPressure, vec!["APP".into()]),
                (Kind::ServerConnectionPressure, vec!["n1".into()]),
            ]
        );
        // A limit known from the servers wins over the configured one.
        let ctx = Context {
            account_limits: HashMap::from([("APP".into(), 1000)]),
            ..Context::default()
        };
        assert!(evaluate(&census, &detect, &ctx).is_empty());
    }

    #[test]
    fn a_growing_user_is_found_before_it_crosses_its_threshold() {
        let t = |m: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + m * 60, 0).unwrap();
        let mut history = History::default();
        for i in 0..5u64 {
            let census = build(
                &conns("APP", "slow", 10 * i + 10, "n1"),
                None,
                &DetectConfig::default(),
            );
            history.record(&census, t(i as i64 * 10), Duration::from_secs(3600));
        }
        let census = build(
            &conns("APP", "slow", 50, "n1"),
            None,
            &DetectConfig::default(),
        );
        let ctx = Context {
            history: Some(&history),
            ..Context::default()
        };
        let f = evaluate(&census, &DetectConfig::default(), &ctx);
        assert_eq!(
            kinds(&f),
            vec![(
                Kind::UserConnectionGrowth,
                vec!["APP".into(), "slow".into()]
            )]
        );
        let u = user(&f[0]);
        let g = u.growth.as_ref().unwrap();
        assert!((g.per_hour - 60.0).abs() < 0.01, "{g:?}");
        // 51 more at 60/h: 51 minutes.
        assert!(
            (3059..=3061).contains(&g.threshold_in_secs.unwrap()),
            "{g:?}"
        );
        // A horizon shorter than that keeps it quiet.
        let detect = DetectConfig {
            growth_horizon: Duration::from_secs(600),
            ..DetectConfig::default()
        };
        assert!(evaluate(&census, &detect, &ctx).is_empty());
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let census = build(
            &conns("A.B", "u*", 150, "n1"),
            None,
            &DetectConfig::default(),
        );
        let f = evaluate(&census, &DetectConfig::default(), &Context::default());
        assert_eq!(f[0].key(), r#"["excessive_user_connections","A.B","u*"]"#);
    }

    #[test]
    fn unknown_limits_hold_the_findings_that_depend_on_them() {
        let census = build(&conns("APP", "u", 5, "n1"), None, &DetectConfig::default());
        let held = held_keys(
            &census,
            &HashSet::from(["APP".to_string()]),
            &HashSet::from(["n2".to_string()]),
        );
        assert_eq!(
            held,
            HashSet::from([
                key_of(Kind::AccountConnectionPressure, &["APP".into()]),
                key_of(Kind::UserConnectionGrowth, &["APP".into(), "u".into()]),
                key_of(Kind::ServerConnectionPressure, &["n2".into()]),
            ])
        );
        // The key a finding would have: a held key matches the firing finding it protects.
        let ctx = Context {
            account_limits: HashMap::from([("APP".into(), 5)]),
            ..Context::default()
        };
        let f = evaluate(&census, &DetectConfig::default(), &ctx);
        assert!(f
            .iter()
            .any(|f| f.kind() == Kind::AccountConnectionPressure && held.contains(&f.key())));
        assert!(held_keys(&census, &HashSet::new(), &HashSet::new()).is_empty());
    }
}
