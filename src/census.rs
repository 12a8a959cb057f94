//! The census: every user's connections across the cluster, and which of them look leaked.
//!
//! Plain functions over plain data: no NATS, no clock (idle times come from the servers).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{names_match, DetectConfig};
use crate::snapshot::Connection;

/// Every user's connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    /// Connections counted.
    pub connections: u64,
    /// Users, most connections first.
    pub users: Vec<UserCensus>,
}

/// One user's connections across the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserCensus {
    /// Account (name, or public key in operator mode).
    pub account: String,
    /// The account's human name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// User (name, or public nkey in operator mode).
    pub user: String,
    /// The user's human name (JWT `name`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Tags of the user; absent when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub tags: Vec<String>,
    /// Whether this user belongs to the system account.
    pub system: bool,
    /// Open connections, cluster-wide.
    pub connections: u64,
    /// The threshold that applies to this user.
    pub threshold: u64,
    /// Whether `connections` is above `threshold`.
    pub over_threshold: bool,
    /// Server name → connections.
    pub by_server: BTreeMap<String, u64>,
    /// Client name → connections (`""` for connections without a name).
    pub by_name: BTreeMap<String, u64>,
    /// Remote IP → connections.
    pub by_ip: BTreeMap<String, u64>,
    /// Connections idle at least `detect.idle_threshold` with no message in or out.
    pub idle_zero_msgs: u64,
    /// Start of the oldest connection.
    pub oldest_start: Option<DateTime<Utc>>,
    /// Start of the newest connection.
    pub newest_start: Option<DateTime<Utc>>,
    /// The idle, message-less connections, longest idle first, at most `detect.max_suspects_per_user`.
    pub suspects: Vec<Suspect>,
    /// How the connections spread over client processes (IP + client name).
    pub spread: Spread,
}

/// How a user's connections spread over processes, for the diagnosis.
/// A process is approximated by remote IP and client name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Spread {
    /// Distinct (IP, client name) pairs.
    pub processes: u64,
    /// The pair holding the most connections.
    pub top_process: Option<ProcessCount>,
    /// Distinct remote IPs.
    pub ips: u64,
    /// Most connections from one IP.
    pub max_per_ip: u64,
    /// Median connections per IP.
    pub median_per_ip: u64,
    /// Connections without a client name.
    pub unnamed: u64,
}

/// Connections from one (IP, client name) pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessCount {
    /// Remote IP.
    pub ip: String,
    /// Client name (`""` when none).
    pub name: String,
    /// Connections.
    pub connections: u64,
}

/// A connection that looks leaked: idle at least `detect.idle_threshold` with no message in or out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Suspect {
    /// Server name.
    pub server: String,
    /// Server id (for a directed KICK).
    pub server_id: String,
    /// Connection id.
    pub cid: u64,
    /// Client name.
    pub name: String,
    /// Remote IP.
    pub ip: String,
    /// When it was made.
    pub start: Option<DateTime<Utc>>,
    /// How long it has been idle.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::advisory::schema::humantime")]
    pub idle: Duration,
}

impl UserCensus {
    /// A short label: `name (key)` when there is a human name, else the key.
    pub fn label(&self) -> String {
        match &self.user_name {
            Some(n) if n != &self.user => format!("{n} ({})", short_key(&self.user)),
            _ => self.user.clone(),
        }
    }

    /// The account's label, like [`UserCensus::label`].
    pub fn account_label(&self) -> String {
        match &self.account_name {
            Some(n) if n != &self.account => format!("{n} ({})", short_key(&self.account)),
            _ => self.account.clone(),
        }
    }
}

/// Shortens a public nkey (56 characters) for display; other strings stay whole.
fn short_key(key: &str) -> String {
    if key.len() == 56 && key.chars().all(|c| c.is_ascii_alphanumeric()) {
        format!("{}…", &key[..8])
    } else {
        key.to_string()
    }
}

/// The threshold for a user: a user override, else an account override, else the default.
/// Accounts and users match by key or by human name.
pub fn threshold_for(detect: &DetectConfig, u: &UserCensus) -> u64 {
    let for_account = || {
        detect
            .overrides
            .iter()
            .filter(|o| names_match(&o.account, &u.account, &u.account_name))
    };
    let user_rule = for_account().find(|o| {
        o.user
            .as_deref()
            .is_some_and(|want| names_match(want, &u.user, &u.user_name))
    });
    let account_rule = for_account().find(|o| o.user.is_none());
    user_rule
        .or(account_rule)
        .map(|o| o.max_connections)
        .unwrap_or(detect.max_connections_per_user)
}

/// The fewest connections an account must hold, cluster-wide, before one of its users can be
/// over its threshold: the lowest threshold any of its users can have (a user rule of the
/// account, else the account rule or the default). For hot-account sweeps
/// ([`crate::sweep::SweepMode::HotAccounts`]): an account at or below it needs no detail.
pub fn account_floor(detect: &DetectConfig, account: &str, account_name: Option<&str>) -> u64 {
    let name = account_name.map(str::to_string);
    let rules: Vec<_> = detect
        .overrides
        .iter()
        .filter(|o| names_match(&o.account, account, &name))
        .collect();
    let others = rules
        .iter()
        .find(|o| o.user.is_none())
        .map_or(detect.max_connections_per_user, |o| o.max_connections);
    rules
        .iter()
        .filter(|o| o.user.is_some())
        .map(|o| o.max_connections)
        .fold(others, u64::min)
}

/// Whether a connection looks leaked: idle long enough and never carried a message.
pub fn is_suspect(c: &Connection, idle_threshold: Duration) -> bool {
    c.idle >= idle_threshold && c.in_msgs == 0 && c.out_msgs == 0
}

/// Builds the census from a sweep's connections.
pub fn build(
    connections: &[Connection],
    system_account: Option<&str>,
    detect: &DetectConfig,
) -> Census {
    let mut users: HashMap<(&str, &str), UserCensus> = HashMap::new();
    let mut suspects: HashMap<(&str, &str), Vec<&Connection>> = HashMap::new();
    let mut processes: HashMap<(&str, &str), ProcessCounts> = HashMap::new();
    for c in connections {
        let key = (c.account.as_str(), c.user.as_str());
        let u = users.entry(key).or_insert_with(|| UserCensus {
            account: c.account.clone(),
            account_name: c.account_name.clone(),
            user: c.user.clone(),
            user_name: c.user_name.clone(),
            tags: c.tags.clone(),
            system: system_account == Some(c.account.as_str()),
            ..UserCensus::default()
        });
        u.connections += 1;
        *processes
            .entry(key)
            .or_default()
            .entry((c.ip.as_str(), c.name.as_str()))
            .or_default() += 1;
        *u.by_server.entry(c.server.clone()).or_default() += 1;
        *u.by_name.entry(c.name.clone()).or_default() += 1;
        *u.by_ip.entry(c.ip.clone()).or_default() += 1;
        if u.user_name.is_none() {
            u.user_name = c.user_name.clone();
        }
        if let Some(start) = c.start {
            u.oldest_start = Some(u.oldest_start.map_or(start, |o| o.min(start)));
            u.newest_start = Some(u.newest_start.map_or(start, |n| n.max(start)));
        }
        if is_suspect(c, detect.idle_threshold) {
            u.idle_zero_msgs += 1;
            suspects.entry(key).or_default().push(c);
        }
    }
    let mut out: Vec<UserCensus> = users
        .into_iter()
        .map(|(key, mut u)| {
            u.threshold = threshold_for(detect, &u);
            u.over_threshold = u.connections > u.threshold;
            u.spread = spread(&u, processes.remove(&key).unwrap_or_default());
            if let Some(mut list) = suspects.remove(&key) {
                list.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.cid.cmp(&b.cid)));
                u.suspects = list
                    .into_iter()
                    .take(detect.max_suspects_per_user)
                    .map(|c| Suspect {
                        server: c.server.clone(),
                        server_id: c.server_id.clone(),
                        cid: c.cid,
                        name: c.name.clone(),
                        ip: c.ip.clone(),
                        start: c.start,
                        idle: c.idle,
                    })
                    .collect();
            }
            u
        })
        .collect();
    out.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then_with(|| a.account.cmp(&b.account))
            .then_with(|| a.user.cmp(&b.user))
    });
    Census {
        connections: connections.len() as u64,
        users: out,
    }
}

/// Connections per (IP, client name) of one user.
type ProcessCounts<'a> = HashMap<(&'a str, &'a str), u64>;

/// Summarises how a user's connections spread over processes and IPs.
fn spread(u: &UserCensus, processes: ProcessCounts) -> Spread {
    let top_process = processes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|((ip, name), n)| ProcessCount {
            ip: ip.to_string(),
            name: name.to_string(),
            connections: *n,
        });
    let mut per_ip: Vec<u64> = u.by_ip.values().copied().collect();
    per_ip.sort_unstable();
    Spread {
        processes: processes.len() as u64,
        top_process,
        ips: per_ip.len() as u64,
        max_per_ip: per_ip.last().copied().unwrap_or(0),
        median_per_ip: per_ip.get(per_ip.len() / 2).copied().unwrap_or(0),
        unnamed: u.by_name.get("").copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ThresholdOverride;

    fn conn(server: &str, cid: u64, account: &str, user: &str, name: &str, ip: &str) -> Connection {
        Connection {
            server: server.into(),
            server_id: format!("ID-{server}"),
            cid,
            kind: "Client".into(),
            ip: ip.into(),
            start: DateTime::from_timestamp(1_700_000_000 + cid as i64, 0),
            idle: Duration::from_secs(1),
            in_msgs: 1,
            out_msgs: 0,
            name: name.into(),
            account: account.into(),
            account_name: None,
            user: user.into(),
            user_name: None,
            tags: vec![],
        }
    }

    fn idle(mut c: Connection, secs: u64) -> Connection {
        c.idle = Duration::from_secs(secs);
        c.in_msgs = 0;
        c.out_msgs = 0;
        c
    }

    #[test]
    fn counts_per_user_across_servers() {
        let mut conns = Vec::new();
        for i in 0..150 {
            conns.push(conn(
                ["n1", "n2", "n3"][i % 3],
                i as u64,
                "APP",
                "leaky",
                "worker",
                "10.0.0.1",
            ));
        }
        conns.push(conn("n1", 999, "APP", "ok", "svc", "10.0.0.2"));
        conns.push(conn("n2", 999, "SYS", "sys", "connwatch", "127.0.0.1"));
        let c = build(&conns, Some("SYS"), &DetectConfig::default());
        assert_eq!(c.connections, 152);
        let top = &c.users[0];
        assert_eq!(
            (top.account.as_str(), top.user.as_str(), top.connections),
            ("APP", "leaky", 150)
        );
        assert_eq!(top.by_server.values().sum::<u64>(), 150);
        assert_eq!(top.by_server["n2"], 50);
        assert_eq!(top.by_name["worker"], 150);
        assert!(top.over_threshold);
        assert_eq!(top.oldest_start, DateTime::from_timestamp(1_700_000_000, 0));
        assert_eq!(top.newest_start, DateTime::from_timestamp(1_700_000_149, 0));
        assert_eq!(top.spread.processes, 1);
        assert_eq!(top.spread.top_process.as_ref().unwrap().connections, 150);
        assert_eq!(
            (top.spread.ips, top.spread.max_per_ip, top.spread.unnamed),
            (1, 150, 0)
        );
        let sys = c.users.iter().find(|u| u.user == "sys").unwrap();
        assert!(sys.system);
        assert!(!c.users.iter().find(|u| u.user == "ok").unwrap().system);
    }

    #[test]
    fn the_same_user_name_in_two_accounts_is_two_users() {
        let conns = vec![
            conn("n1", 1, "A", "u", "", "ip"),
            conn("n1", 2, "B", "u", "", "ip"),
        ];
        let c = build(&conns, None, &DetectConfig::default());
        assert_eq!(c.users.len(), 2);
    }

    #[test]
    fn suspects_are_idle_without_messages_longest_first_and_bounded() {
        let detect = DetectConfig {
            idle_threshold: Duration::from_secs(60),
            max_suspects_per_user: 2,
            ..DetectConfig::default()
        };
        let mut busy = idle(conn("n1", 1, "A", "u", "", "ip"), 600);
        busy.out_msgs = 3;
        let conns = vec![
            busy,
            idle(conn("n1", 2, "A", "u", "", "ip"), 61),
            idle(conn("n2", 3, "A", "u", "", "ip"), 500),
            idle(conn("n3", 4, "A", "u", "", "ip"), 300),
            idle(conn("n3", 5, "A", "u", "", "ip"), 59),
        ];
        let c = build(&conns, None, &detect);
        let u = &c.users[0];
        assert_eq!(u.idle_zero_msgs, 3);
        assert_eq!(
            u.suspects.iter().map(|s| s.cid).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(u.suspects[0].server_id, "ID-n2");
    }

    #[test]
    fn overrides_pick_the_most_specific() {
        let detect = DetectConfig {
            overrides: vec![
                ThresholdOverride {
                    account: "APP".into(),
                    user: None,
                    max_connections: 500,
                },
                ThresholdOverride {
                    account: "APP".into(),
                    user: Some("alice".into()),
                    max_connections: 5,
                },
            ],
            ..DetectConfig::default()
        };
        let mut u = UserCensus {
            account: "AKEY".into(),
            account_name: Some("APP".into()),
            ..UserCensus::default()
        };
        u.user = "UKEY".into();
        u.user_name = Some("alice".into());
        assert_eq!(threshold_for(&detect, &u), 5);
        u.user_name = Some("bob".into());
        assert_eq!(threshold_for(&detect, &u), 500);
        u.account_name = Some("OTHER".into());
        assert_eq!(threshold_for(&detect, &u), 100);
    }

    #[test]
    fn account_floor_is_the_lowest_threshold_of_its_users() {
        let rule = |account: &str, user: Option<&str>, max| ThresholdOverride {
            account: account.into(),
            user: user.map(Into::into),
            max_connections: max,
        };
        let detect = DetectConfig {
            overrides: vec![rule("APP", None, 500), rule("APP", Some("alice"), 700)],
            ..DetectConfig::default()
        };
        assert_eq!(account_floor(&detect, "AKEY", Some("APP")), 500);
        assert_eq!(account_floor(&detect, "OTHER", None), 100);
        let detect = DetectConfig {
            overrides: vec![rule("APP", None, 500), rule("APP", Some("bob"), 5)],
            ..DetectConfig::default()
        };
        assert_eq!(account_floor(&detect, "APP", None), 5);
    }

    #[test]
    fn threshold_is_exceeded_only_above_it() {
        let conns: Vec<_> = (0..100)
            .map(|i| conn("n1", i, "A", "u", "", "ip"))
            .collect();
        let c = build(&conns, None, &DetectConfig::default());
        assert!(!c.users[0].over_threshold);
    }

    #[test]
    fn labels_show_human_names_beside_keys() {
        let key = "UDHF".to_string() + &"A".repeat(52);
        let u = UserCensus {
            user: key.clone(),
            user_name: Some("alice".into()),
            ..UserCensus::default()
        };
        assert_eq!(u.label(), "alice (UDHFAAAA…)");
        let plain = UserCensus {
            user: "bob".into(),
            ..UserCensus::default()
        };
        assert_eq!(plain.label(), "bob");
    }
}
