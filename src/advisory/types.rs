//! The advisory types: what subscribers receive, as Rust types that connwatch builds, `tail`
//! decodes and `schemas/` is generated from.
//!
//! Every advisory is an [`Envelope`] (`type`, `id`, `timestamp`, like NATS's own events) around
//! its body, with the completeness of the sweep behind it. A new advisory type is its body
//! type plus one line in `advisory_types!`'s list at the end of this file.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{self, millis};
use super::{Completeness, TYPE_PREFIX};
use crate::enforce::CapSource;
use crate::kick::{KickPlan, Returned};
use crate::lifecycle::State;
use crate::rules::balance::{HotspotFinding, ImbalanceFinding};
use crate::rules::{AccountFinding, RefusedFinding, ServerFinding, UserFinding};

/// One advisory of body `B`. Its `type` is written by [`Message`], which knows the type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<B> {
    /// Id of this advisory, 22 letters and digits; also the JetStream `Nats-Msg-Id`. A finding
    /// advisory's id follows from (finding, `since`, `state`, renotify count), so whoever
    /// announces it (a retry, a restart, another replica) gives it the same id; a kick's is a
    /// NUID.
    #[schemars(schema_with = "schema::nuid")]
    pub id: String,
    /// When the advisory was made (UTC, milliseconds).
    #[serde(with = "millis")]
    #[schemars(schema_with = "schema::instant_millis")]
    pub timestamp: DateTime<Utc>,
    /// What it says.
    #[serde(flatten)]
    pub body: B,
    /// How complete the sweep behind this advisory was.
    pub sweep: Completeness,
}

impl<B> Envelope<B> {
    /// A new advisory with a fresh id, made at `now`.
    pub fn new(body: B, sweep: &Completeness, now: DateTime<Utc>) -> Self {
        Self::with_id(nuid::next().to_string(), body, sweep, now)
    }

    /// A new advisory with the id `id`, made at `now`.
    pub fn with_id(id: String, body: B, sweep: &Completeness, now: DateTime<Utc>) -> Self {
        Self {
            id,
            timestamp: now,
            body,
            sweep: sweep.clone(),
        }
    }
}

/// A finding advisory: where it is in its lifecycle, then the finding as last seen (a resolved
/// advisory carries the numbers last seen while firing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FindingEvent<F> {
    /// `firing` while the finding holds, `resolved` once a complete sweep no longer finds it.
    pub state: State,
    /// True when a firing finding is announced again (every `advisory.renotify`); always
    /// false when resolved.
    pub renotify: bool,
    /// When the finding first fired (UTC, milliseconds).
    #[serde(with = "millis")]
    #[schemars(schema_with = "schema::instant_millis")]
    pub since: DateTime<Utc>,
    /// The finding.
    #[serde(flatten)]
    pub finding: F,
}

/// Why a connection was kicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KickRule {
    /// The kick policy, after a sweep found the user excessive.
    ExcessiveUserConnections,
    /// `connwatch kick`, by hand.
    Manual,
}

/// What came of a kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KickResult {
    /// Dry run: nothing was sent.
    WouldKick,
    /// The server closed the connection.
    Kicked,
    /// The server no longer had the connection.
    AlreadyGone,
    /// The KICK failed or was not confirmed (`error` says why).
    Failed,
}

impl KickResult {
    /// Its name in the advisory: `would_kick`, `kicked`, `already_gone` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::WouldKick => "would_kick",
            Self::Kicked => "kicked",
            Self::AlreadyGone => "already_gone",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for KickResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `connection_kicked`: the audit record of one kick, or of a would-be kick in dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionKicked {
    /// Why: the policy after a sweep, or `connwatch kick` by hand.
    pub rule: KickRule,
    /// True when nothing was sent (`kick.dry_run`).
    pub dry_run: bool,
    /// `would_kick` in dry run; `already_gone` when the server no longer had the connection.
    pub result: KickResult,
    /// What the server or the request said, when `result` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the leader that recorded this kick (`[ha]`, or connwatch before a restart)
    /// died before recording its outcome, and the next found the connection gone at its first
    /// complete sweep: `result` is `kicked`, though it may have closed on its own. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// The connection.
    #[serde(flatten)]
    pub plan: KickPlan,
}

/// `kick_ineffective`: a kicked client came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KickIneffective {
    /// The client and what connwatch does about it.
    #[serde(flatten)]
    pub returned: Returned,
}

/// `connection_cap_enforced`: a user over its cap had its newest connections closed (or, in
/// dry run, would have): one advisory per user per burst of closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionCapEnforced {
    /// Account.
    pub account: String,
    /// The account's human name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// User.
    pub user: String,
    /// The user's human name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The cap: the most connections the user may hold, cluster-wide.
    pub cap: u64,
    /// Where the cap comes from: an `[[enforce.caps]]` entry for the `user` or the whole
    /// `account`, or `enforce.max_connections_per_user` (`default`).
    pub cap_source: CapSource,
    /// True when nothing was closed (`enforce.dry_run`): `closed` lists what would have been.
    pub dry_run: bool,
    /// The user's connections had none been closed: `after` plus the connections closed.
    pub before: u64,
    /// The user's connections once the burst was over (in dry run, as if closed).
    pub after: u64,
    /// The connections closed, oldest first: the newest beyond the cap, by (start, server id,
    /// cid). At most the first 100 are listed (`closed_more` counts the others), so the
    /// advisory stays well within `max_payload` however fast closes go.
    pub closed: Vec<CappedConnection>,
    /// Connections closed beyond those listed in `closed` (0 when all are listed).
    #[serde(default)]
    pub closed_more: u64,
    /// KICKs that failed in this burst (each tried again while the user stays over its cap).
    pub failed: u64,
    /// When the burst began (UTC, milliseconds).
    #[serde(with = "millis")]
    #[schemars(schema_with = "schema::instant_millis")]
    pub since: DateTime<Utc>,
    /// Churn at the cap: clients that reconnect after each close keep hitting it.
    pub churn: CapChurn,
    /// What happened, in words.
    pub message: String,
}

/// A connection closed by a cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CappedConnection {
    /// Server name.
    pub server: String,
    /// Server id.
    pub server_id: String,
    /// Connection id on that server.
    pub cid: u64,
    /// Client name; empty when the client gave none.
    pub name: String,
    /// Remote IP.
    pub ip: String,
    /// When it connected (as its server reported, full precision).
    pub start: DateTime<Utc>,
}

/// Churn at a user's cap, over the last minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CapChurn {
    /// Connections the cap closed for this user within the last minute, this burst included.
    pub closed_last_minute: u64,
    /// Bursts of closes for this user within the last minute, this one included.
    pub bursts_last_minute: u64,
    /// True when the user hit its cap again within a minute of a previous burst: its clients
    /// reconnect after each close (fix the client, raise the cap, or revoke the credential).
    pub reconnecting: bool,
}

/// Why a message is not an advisory this version can read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but without a `type` string.
    #[error("no \"type\" string")]
    NoType,
    /// Another publisher's event.
    #[error("type {0:?} is not a connwatch advisory type")]
    Foreign(String),
    /// A connwatch advisory type this version does not know (a newer connwatch).
    #[error("unknown advisory type {0:?}")]
    Unknown(String),
    /// A known type whose fields do not fit.
    #[error("not a valid {name} advisory")]
    Invalid {
        /// The advisory type.
        name: &'static str,
        /// What did not fit.
        #[source]
        source: serde_json::Error,
    },
}

/// Builds [`Message`] (one variant per advisory type, holding its [`Envelope`]), [`NAMES`] and
/// [`schemas`] from one list of `Variant(Body) = "name": "description";`.
macro_rules! advisory_types {
    ($($variant:ident($body:ty) = $name:literal: $description:literal;)*) => {
        /// Any advisory, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant(Envelope<$body>),
            )*
        }

        /// The names of every advisory type (`io.connwatch.advisory.v1.<name>`).
        pub const NAMES: &[&str] = &[$($name),*];

        impl Message {
            /// Its name, the `type` without `io.connwatch.advisory.v1.`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }

            /// The advisory in a JSON value, by its `type`.
            pub fn decode(value: Value) -> Result<Self, DecodeError> {
                let name = match value.get("type").and_then(Value::as_str) {
                    None => return Err(DecodeError::NoType),
                    Some(t) => match t.strip_prefix(TYPE_PREFIX) {
                        Some(name) => name.to_string(),
                        None => return Err(DecodeError::Foreign(t.to_string())),
                    },
                };
                match name.as_str() {
                    $($name => serde_json::from_value(value)
                        .map(Self::$variant)
                        .map_err(|source| DecodeError::Invalid { name: $name, source }),)*
                    _ => Err(DecodeError::Unknown(name)),
                }
            }

            /// Its JSON body: `type` first, then the envelope and the body's fields.
            pub fn to_value(&self) -> Value {
                match self {
                    $(Self::$variant(e) => typed($name, e),)*
                }
            }
        }

        /// The schema document of every advisory type, by name.
        pub fn schemas() -> Vec<(&'static str, Value)> {
            vec![$(($name, schema::document::<Envelope<$body>>($name, $description)),)*]
        }
    };
}

/// `{"type": ..., <envelope>}`.
fn typed<B: Serialize>(name: &str, envelope: &Envelope<B>) -> Value {
    #[derive(Serialize)]
    struct Typed<'a, B> {
        #[serde(rename = "type")]
        type_name: String,
        #[serde(flatten)]
        envelope: &'a Envelope<B>,
    }
    serde_json::to_value(Typed {
        type_name: format!("{TYPE_PREFIX}{name}"),
        envelope,
    })
    .expect("advisories serialize")
}

advisory_types! {
    ExcessiveUserConnections(FindingEvent<UserFinding>) = "excessive_user_connections":
        "A user holds more connections, cluster-wide, than its threshold. Carries the user's census (counts by server, client name and IP), its leak suspects, a diagnosis and, with enough history, its growth. Published on `<prefix>.excessive_user_connections.<account>.<user>` (escaped tokens). A resolved advisory carries the numbers last seen while firing.";
    UserConnectionGrowth(FindingEvent<UserFinding>) = "user_connection_growth":
        "A user below its threshold whose connections grow fast enough (`detect.growth_min_per_hour`) to cross its threshold, or exhaust its account's limit, within `detect.growth_horizon`. Published on `<prefix>.user_connection_growth.<account>.<user>` (escaped tokens). A resolved advisory carries the numbers last seen while firing.";
    AccountConnectionPressure(FindingEvent<AccountFinding>) = "account_connection_pressure":
        "An account holds at least `detect.account_pressure` of its connection limit, cluster-wide. Published on `<prefix>.account_connection_pressure.<account>` (escaped token). A resolved advisory carries the numbers last seen while firing.";
    ServerConnectionPressure(FindingEvent<ServerFinding>) = "server_connection_pressure":
        "A server holds at least `detect.server_pressure` of its `max_connections`. Published on `<prefix>.server_connection_pressure.<server>` (escaped token). A resolved advisory carries the numbers last seen while firing.";
    ConnectionsRefused(FindingEvent<RefusedFinding>) = "connections_refused":
        "Connections refused, as the servers' disconnect events report them: over an account's connection limit (`Maximum Account Connections Exceeded`, scope `account`), over a server's `max_connections` (`Maximum Connections Exceeded`, scope `server`), or failing to authenticate (`$SYS.SERVER.<id>.CLIENT.AUTH.ERR`, once 10 fall in one window; scope `account` when the server knew the account, else `server`). Fires with the refusals, while they continue within `live.refused_window`, and resolves once a whole window passed without one. `refused` counts the window; `by_reason`, `users`, `ips` and `servers` count since the refusals began. Needs `live.enabled`. Published on `<prefix>.connections_refused.<account or server>` (escaped token). A resolved advisory carries the numbers last seen while firing.";
    ServerConnectionHotspot(FindingEvent<HotspotFinding>) = "server_connection_hotspot":
        "A server holds more than `detect.hotspot_ratio` times its cluster's average connections (at least `detect.hotspot_min`), in a cluster of at least two servers that all answered. Published on `<prefix>.server_connection_hotspot.<server>` (escaped token). A resolved advisory carries the numbers last seen while firing.";
    AccountConnectionImbalance(FindingEvent<ImbalanceFinding>) = "account_connection_imbalance":
        "More than `detect.imbalance_share` of an account's connections (at least `detect.imbalance_min`) are on one server. Never found on a partial view. Published on `<prefix>.account_connection_imbalance.<account>` (escaped token). A resolved advisory carries the numbers last seen while firing.";
    ConnectionKicked(ConnectionKicked) = "connection_kicked":
        "The audit record of one kick (`$SYS.REQ.SERVER.<id>.KICK`), or of a would-be kick in dry run. Published on `<prefix>.connection_kicked.<account>.<user>` (escaped tokens).";
    KickIneffective(KickIneffective) = "kick_ineffective":
        "A client (user, client name, IP) that connwatch kicked connected again within `kick.return_window`: kicking treats the symptom; fix the code or revoke the credential. After `kick.max_attempts` returns connwatch leaves it alone (`given_up`). Published on `<prefix>.kick_ineffective.<account>.<user>` (escaped tokens).";
    ConnectionCapEnforced(ConnectionCapEnforced) = "connection_cap_enforced":
        "A user over its cap (`[enforce]`) in a complete live view had its newest connections beyond the cap closed (`KICK`), or in dry run would have: one advisory per user per burst, with the cap and its source, the connections before and after, those closed, and the churn at the cap. Published on `<prefix>.connection_cap_enforced.<account>.<user>` (escaped tokens).";
}
