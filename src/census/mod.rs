//! The census: every user's connections across the cluster, and which of them look leaked.
//!
//! Plain functions over plain data: no NATS, no clock (idle times come from the servers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
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

/// Connections by a text (client name, IP), shared between copies: a fleet whose clients each
/// have their own IP (or name) makes these as long as its connections, and a live round hands
/// on the census of every user that did not change without copying them.
pub type SharedCounts = Arc<BTreeMap<String, u64>>;

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
    pub by_name: SharedCounts,
    /// Remote IP → connections.
    pub by_ip: SharedCounts,
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
fn pattern_alone(c: &crate::snapshot::ConnRef, sig: &Signature) -> Option<LeakPattern> {
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
        .filter_map(|c| pattern_alone(&c.view(), sig).map(|p| (c, p)))
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
    /// This census with `by_name` and `by_ip` cut to their `max` largest entries (ties by key),
    /// so that what carries it stays small whatever the user does; `spread` keeps the totals.
    pub fn with_maps_cut(&self, max: usize) -> UserCensus {
        let top = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            let mut v: Vec<(&String, &u64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.into_iter()
                .take(max)
                .map(|(k, n)| (k.clone(), *n))
                .collect()
        };
        UserCensus {
            by_name: Arc::new(top(&self.by_name)),
            by_ip: Arc::new(top(&self.by_ip)),
            ..self.clone()
        }
    }

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

mod aggregate;
mod ip;
pub use aggregate::{build, Aggregate};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;
