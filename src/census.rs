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
    /// Cluster name → connections (`by_server` summed by each server's cluster); empty when
    /// no server has a cluster.
    #[serde(default)]
    pub by_cluster: BTreeMap<String, u64>,
    /// Client name → connections (`""` for connections without a name).
    pub by_name: BTreeMap<String, u64>,
    /// Remote IP → connections.
    pub by_ip: BTreeMap<String, u64>,
    /// Leak suspects of the `zero_msgs` pattern: idle at least `detect.idle_threshold` with no
    /// message in or out ever.
    pub idle_zero_msgs: u64,
    /// Leak suspects of the `used_once` pattern: idle at least `detect.idle_threshold`, every
    /// message within `detect.used_once_within` of connecting, from a process holding at least
    /// three such connections of this user.
    #[serde(default)]
    pub idle_used_once: u64,
    /// Leak suspects of every pattern (`idle_zero_msgs` + `idle_used_once`).
    #[serde(default)]
    pub leak_suspects: u64,
    /// Start of the oldest connection.
    pub oldest_start: Option<DateTime<Utc>>,
    /// Start of the newest connection.
    pub newest_start: Option<DateTime<Utc>>,
    /// The leak suspects (every pattern), longest idle first, at most
    /// `detect.max_suspects_per_user`.
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
    /// Of them, leak suspects of the `used_once` pattern.
    #[serde(default)]
    pub used_once: u64,
}

/// A connection that looks leaked (see [`classify`]), and which pattern it matched.
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
    /// The pattern it matched; absent in advisories from before patterns (all `zero_msgs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<LeakPattern>,
    /// Messages from the client.
    #[serde(default)]
    pub in_msgs: u64,
    /// Messages to the client.
    #[serde(default)]
    pub out_msgs: u64,
    /// Subscriptions it holds (a connection per subscribe keeps them).
    #[serde(default)]
    pub subscriptions: u32,
}

/// How a leak suspect looks abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeakPattern {
    /// Idle, and never carried a message in or out: connected and forgotten.
    ZeroMsgs,
    /// Idle, every message within `detect.used_once_within` of connecting, and its process
    /// (IP + client name) holds at least three such connections of the user: a connection
    /// made for one publish, request or subscription, then left open.
    UsedOnce,
}

impl LeakPattern {
    /// The name in JSON, reports and advisories.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroMsgs => "zero_msgs",
            Self::UsedOnce => "used_once",
        }
    }
}

/// A process (IP + client name) must hold at least this many used-once connections of a user
/// before they are suspects: one connection that did its start-up work (a config request, a
/// watcher's initial values) and went quiet is a live client; several from one process are
/// the connection-per-request pattern.
pub const USED_ONCE_MIN_PER_PROCESS: usize = 3;

/// What makes a connection a leak suspect: how long idle, and how soon after connecting all
/// its messages must have happened for `used_once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// Idle at least this long (`detect.idle_threshold`, or `kick.min_idle` for kicks).
    pub min_idle: Duration,
    /// Every message within this of connecting (`detect.used_once_within`).
    pub used_once_within: Duration,
}

impl Signature {
    /// The census's signature: `detect.idle_threshold` and `detect.used_once_within`.
    pub fn of(detect: &DetectConfig) -> Self {
        Self {
            min_idle: detect.idle_threshold,
            used_once_within: detect.used_once_within,
        }
    }
}

/// The pattern one connection matches by itself; `used_once` still needs its process's
/// siblings ([`classify`]).
fn pattern_alone(c: &Connection, sig: &Signature) -> Option<LeakPattern> {
    if c.idle < sig.min_idle {
        return None;
    }
    if c.in_msgs == 0 && c.out_msgs == 0 {
        return Some(LeakPattern::ZeroMsgs);
    }
    let active_for = c.start.zip(c.last_activity).map(|(s, l)| l - s)?;
    let within = chrono::Duration::from_std(sig.used_once_within).ok()?;
    (active_for <= within).then_some(LeakPattern::UsedOnce)
}

/// The leak suspects among `connections` (any users), each with its pattern, in input order:
/// - `zero_msgs`: idle at least `min_idle` and no message in or out, ever;
/// - `used_once`: idle at least `min_idle`, its last message within `used_once_within` of its
///   start, and at least [`USED_ONCE_MIN_PER_PROCESS`] such connections of the same user from
///   the same process (IP + client name).
///
/// A connection with traffic after its first moments (a subscriber that received messages for
/// days, a publisher every few minutes) is never a suspect, however long it is quiet now.
pub fn classify<'a>(
    connections: impl IntoIterator<Item = &'a Connection>,
    sig: &Signature,
) -> Vec<(&'a Connection, LeakPattern)> {
    let alone: Vec<(&Connection, LeakPattern)> = connections
        .into_iter()
        .filter_map(|c| pattern_alone(c, sig).map(|p| (c, p)))
        .collect();
    let process = |c: &'a Connection| (&c.account, &c.user, &c.ip, &c.name);
    let mut used_once: HashMap<_, usize> = HashMap::new();
    for (c, _) in alone.iter().filter(|(_, p)| *p == LeakPattern::UsedOnce) {
        *used_once.entry(process(c)).or_default() += 1;
    }
    alone
        .into_iter()
        .filter(|(c, p)| {
            *p == LeakPattern::ZeroMsgs || used_once[&process(c)] >= USED_ONCE_MIN_PER_PROCESS
        })
        .collect()
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

/// Builds the census from a sweep's connections.
pub fn build(
    connections: &[Connection],
    system_account: Option<&str>,
    detect: &DetectConfig,
) -> Census {
    let mut users: HashMap<(&str, &str), UserCensus> = HashMap::new();
    let mut suspects: HashMap<(&str, &str), Vec<(&Connection, LeakPattern)>> = HashMap::new();
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
        processes
            .entry(key)
            .or_default()
            .entry((c.ip.as_str(), c.name.as_str()))
            .or_default()
            .0 += 1;
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
    }
    for (c, pattern) in classify(connections, &Signature::of(detect)) {
        let key = (c.account.as_str(), c.user.as_str());
        let u = users.get_mut(&key).expect("every connection has its user");
        u.leak_suspects += 1;
        match pattern {
            LeakPattern::ZeroMsgs => u.idle_zero_msgs += 1,
            LeakPattern::UsedOnce => {
                u.idle_used_once += 1;
                if let Some(p) = processes
                    .get_mut(&key)
                    .and_then(|p| p.get_mut(&(c.ip.as_str(), c.name.as_str())))
                {
                    p.1 += 1;
                }
            }
        }
        suspects.entry(key).or_default().push((c, pattern));
    }
    let mut out: Vec<UserCensus> = users
        .into_iter()
        .map(|(key, mut u)| {
            u.threshold = threshold_for(detect, &u);
            u.over_threshold = u.connections > u.threshold;
            u.spread = spread(&u, processes.remove(&key).unwrap_or_default());
            if let Some(mut list) = suspects.remove(&key) {
                list.sort_by(|(a, _), (b, _)| b.idle.cmp(&a.idle).then(a.cid.cmp(&b.cid)));
                u.suspects = list
                    .into_iter()
                    .take(detect.max_suspects_per_user)
                    .map(|(c, pattern)| Suspect {
                        server: c.server.clone(),
                        server_id: c.server_id.clone(),
                        cid: c.cid,
                        name: c.name.clone(),
                        ip: c.ip.clone(),
                        start: c.start,
                        idle: c.idle,
                        pattern: Some(pattern),
                        in_msgs: c.in_msgs,
                        out_msgs: c.out_msgs,
                        subscriptions: c.subscriptions,
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

/// Connections, and `used_once` suspects among them, per (IP, client name) of one user.
type ProcessCounts<'a> = HashMap<(&'a str, &'a str), (u64, u64)>;

/// Summarises how a user's connections spread over processes and IPs.
fn spread(u: &UserCensus, processes: ProcessCounts) -> Spread {
    let top_process = processes
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
        .map(|((ip, name), (n, used_once))| ProcessCount {
            ip: ip.to_string(),
            name: name.to_string(),
            connections: *n,
            used_once: *used_once,
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
            ..Connection::default()
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

    /// A connection of `user` from process `name` at 10.0.0.1, started at t=0 (1.7e9 s),
    /// whose last message came `active` seconds after its start, idle `idle_secs`, with
    /// `msgs` messages in.
    fn used(cid: u64, name: &str, active: i64, idle_secs: u64, msgs: u64) -> Connection {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Connection {
            start: Some(start),
            last_activity: Some(start + chrono::Duration::seconds(active)),
            idle: Duration::from_secs(idle_secs),
            in_msgs: msgs,
            ..conn("n1", cid, "A", "u", name, "10.0.0.1")
        }
    }

    fn patterns(conns: &[Connection], sig: &Signature) -> Vec<(u64, LeakPattern)> {
        classify(conns, sig)
            .into_iter()
            .map(|(c, p)| (c.cid, p))
            .collect()
    }

    #[test]
    fn used_once_and_zero_are_suspects_quiet_live_clients_are_not() {
        let sig = Signature {
            min_idle: Duration::from_secs(300),
            used_once_within: Duration::from_secs(30),
        };
        let mut conns = vec![
            // Connection per request: one publish right after connecting, three of them.
            used(1, "leaky", 0, 3600, 1),
            used(2, "leaky", 1, 3600, 1),
            used(3, "leaky", 2, 3600, 1),
            // Never a message: zero_msgs, whatever its process.
            used(4, "quiet", 0, 3600, 0),
            // A subscriber that received messages for days, quiet for an hour: live.
            used(5, "subscriber", 3 * 86_400, 3600, 0),
            // A publisher every few minutes: never idle long enough.
            used(6, "ticker", 86_400, 120, 500),
            // Used once, but only one (or two) such connections in its process: a client that
            // did its start-up work (a config request, a watcher's initial values) and went quiet.
            used(7, "config-watcher", 1, 3600, 3),
            used(8, "two", 1, 3600, 1),
            used(9, "two", 1, 3600, 1),
            // Used once but not idle long enough yet.
            used(10, "fresh", 0, 60, 1),
            used(11, "fresh", 0, 60, 1),
            used(12, "fresh", 0, 60, 1),
        ];
        conns[4].out_msgs = 10_000;
        assert_eq!(
            patterns(&conns, &sig),
            vec![
                (1, LeakPattern::UsedOnce),
                (2, LeakPattern::UsedOnce),
                (3, LeakPattern::UsedOnce),
                (4, LeakPattern::ZeroMsgs),
            ]
        );
        // Activity later than `used_once_within` after connecting is use, not a single use.
        conns[2].last_activity = conns[2].start.map(|s| s + chrono::Duration::seconds(31));
        assert_eq!(
            patterns(&conns, &sig),
            vec![(4, LeakPattern::ZeroMsgs)],
            "two used-once connections left in the process are not enough"
        );
        // Without last_activity connwatch cannot tell: not a suspect.
        let mut unknown: Vec<_> = (1..=3).map(|i| used(i, "x", 0, 3600, 1)).collect();
        for c in &mut unknown {
            c.last_activity = None;
        }
        assert!(patterns(&unknown, &sig).is_empty());
    }

    #[test]
    fn the_census_counts_suspects_by_pattern_and_per_process() {
        let detect = DetectConfig {
            idle_threshold: Duration::from_secs(300),
            ..DetectConfig::default()
        };
        let mut conns: Vec<_> = (0..12).map(|i| used(i, "leaky", 0, 3600 + i, 1)).collect();
        conns.push(used(100, "leaky", 0, 7200, 0));
        conns.push(used(101, "leaky", 86_400, 10, 9));
        let c = build(&conns, None, &detect);
        let u = &c.users[0];
        assert_eq!(
            (u.idle_zero_msgs, u.idle_used_once, u.leak_suspects),
            (1, 12, 13)
        );
        assert_eq!(u.suspects[0].cid, 100, "the longest idle first");
        assert_eq!(u.suspects[0].pattern, Some(LeakPattern::ZeroMsgs));
        assert_eq!(u.suspects[1].pattern, Some(LeakPattern::UsedOnce));
        assert_eq!(u.suspects[1].in_msgs, 1);
        let top = u.spread.top_process.as_ref().unwrap();
        assert_eq!((top.connections, top.used_once), (14, 12));
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
