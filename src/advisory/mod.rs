//! Advisories: findings and kicks as JSON events shaped like NATS's own (`type`, `id`,
//! `timestamp`), typed ([`types`]), with generated schemas ([`schema`]), published on subjects
//! built from escaped names.

pub mod publisher;
pub mod schema;
pub mod types;

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kick::{KickPlan, Returned};
use crate::lifecycle::Event;
use crate::rules::Finding;
use crate::snapshot::Snapshot;
pub use types::{
    CapChurn, CappedConnection, ConnectionCapEnforced, ConnectionKicked, Envelope, FindingEvent,
    KickIneffective, KickResult, KickRule, Message, NAMES,
};

/// Prefix of every advisory type.
pub const TYPE_PREFIX: &str = "io.connwatch.advisory.v1.";

/// Escaped tokens longer than this are cut and suffixed with a hash of the raw name.
const MAX_TOKEN: usize = 64;

/// How complete the sweep behind an advisory was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Completeness {
    /// When the sweep started; null when unknown.
    pub started: Option<DateTime<Utc>>,
    /// Servers expected to answer.
    pub servers_expected: usize,
    /// Servers whose connections are all counted.
    pub servers_responded: usize,
    /// True when some connections may be missing: counts may be too low.
    pub partial: bool,
    /// Expected servers that did not answer, by name where known (else `<unknown>`).
    pub missing: Vec<String>,
    /// Clusters none of whose servers answered (a gateway down?); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub silent_clusters: Vec<String>,
}

impl Completeness {
    /// Of a snapshot.
    pub fn of(s: &Snapshot) -> Self {
        Self {
            started: s.started,
            servers_expected: s.servers_expected,
            servers_responded: s.servers.len(),
            partial: s.partial(),
            missing: s.missing.clone(),
            silent_clusters: s.silent_clusters().into_iter().map(|c| c.cluster).collect(),
        }
    }
}

/// One advisory, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Advisory {
    /// Where to publish it.
    pub subject: String,
    /// Its unique id (also the JetStream `Nats-Msg-Id`).
    pub id: String,
    /// The JSON body ([`Message::to_value`] of a typed advisory).
    pub body: serde_json::Value,
}

impl Advisory {
    /// A typed advisory about `tokens` (account and user, account, or server), on
    /// `<prefix>.<name>.<tokens>`.
    pub fn new(prefix: &str, message: &Message, tokens: &[String]) -> Self {
        let body = message.to_value();
        Self {
            subject: subject(prefix, message.name(), tokens),
            id: body["id"]
                .as_str()
                .expect("advisories have an id")
                .to_string(),
            body,
        }
    }
}

/// Builds the advisory for a lifecycle event.
pub fn from_event(
    prefix: &str,
    event: &Event,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let a = &event.finding;
    let message = match &a.finding {
        Finding::ExcessiveUserConnections(u) => {
            Message::ExcessiveUserConnections(finding_event(event, (**u).clone(), sweep, now))
        }
        Finding::UserConnectionGrowth(u) => {
            Message::UserConnectionGrowth(finding_event(event, (**u).clone(), sweep, now))
        }
        Finding::AccountConnectionPressure(f) => {
            Message::AccountConnectionPressure(finding_event(event, f.clone(), sweep, now))
        }
        Finding::ServerConnectionPressure(f) => {
            Message::ServerConnectionPressure(finding_event(event, f.clone(), sweep, now))
        }
        Finding::ConnectionsRefused(f) => {
            Message::ConnectionsRefused(finding_event(event, f.clone(), sweep, now))
        }
        Finding::ServerConnectionHotspot(f) => {
            Message::ServerConnectionHotspot(finding_event(event, f.clone(), sweep, now))
        }
        Finding::AccountConnectionImbalance(f) => {
            Message::AccountConnectionImbalance(finding_event(event, f.clone(), sweep, now))
        }
    };
    Advisory::new(prefix, &message, &a.tokens)
}

fn finding_event<F>(
    event: &Event,
    finding: F,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Envelope<FindingEvent<F>> {
    let body = FindingEvent {
        state: event.state,
        renotify: event.renotify,
        since: event.finding.since,
        finding,
    };
    Envelope::with_id(event_id(event), body, sweep, now)
}

/// The id of a finding advisory: the same for the same (finding, since, state, renotify count),
/// whoever computes it and however often, so JetStream's `Nats-Msg-Id` de-duplication and
/// subscribers can drop repeats; different for every other announcement. 22 letters and
/// digits (the shape of a NUID), from a SHA-256 of those four.
pub fn event_id(event: &Event) -> String {
    let a = &event.finding;
    hashed_id(&serde_json::json!([
        a.finding.key(),
        a.since.timestamp_millis(),
        event.state.name(),
        a.renotified,
    ]))
}

/// A NUID-shaped id (22 letters and digits) from a SHA-256 of `seed`.
fn hashed_id(seed: &serde_json::Value) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let hash = Sha256::digest(seed.to_string().as_bytes());
    // 22 base-62 digits of the first 16 bytes: 128 bits, the leading digit never above 2.
    let mut n = u128::from_be_bytes(hash[..16].try_into().expect("16 bytes"));
    let mut id = [b'0'; 22];
    for c in id.iter_mut().rev() {
        *c = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(id.to_vec()).expect("ascii")
}

/// `connection_kicked`: the audit record of one kick, or of a would-be kick in dry run;
/// `error` says why a `failed` kick failed.
pub fn kicked(
    prefix: &str,
    plan: &KickPlan,
    rule: KickRule,
    result: KickResult,
    error: Option<&str>,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let body = ConnectionKicked {
        rule,
        dry_run: result == KickResult::WouldKick,
        result,
        error: error.map(str::to_string),
        recovered: false,
        plan: plan.clone(),
    };
    Advisory::new(
        prefix,
        &Message::ConnectionKicked(Envelope::new(body, sweep, now)),
        &[plan.account.clone(), plan.user.clone()],
    )
}

/// `connection_kicked` for a kick recorded by a leader that died before recording its outcome,
/// its connection gone (`recovered`). The id is derived from (server id, cid), so a repeat by
/// another leader is dropped as one.
pub fn kicked_recovered(
    prefix: &str,
    plan: &KickPlan,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let body = ConnectionKicked {
        rule: KickRule::ExcessiveUserConnections,
        dry_run: false,
        result: KickResult::Kicked,
        error: None,
        recovered: true,
        plan: plan.clone(),
    };
    let id = hashed_id(&serde_json::json!([
        "connection_kicked",
        "recovered",
        plan.server_id,
        plan.cid
    ]));
    Advisory::new(
        prefix,
        &Message::ConnectionKicked(Envelope::with_id(id, body, sweep, now)),
        &[plan.account.clone(), plan.user.clone()],
    )
}

/// `kick_ineffective`: a kicked client came back.
pub fn kick_ineffective(
    prefix: &str,
    r: &Returned,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let body = KickIneffective {
        returned: r.clone(),
    };
    Advisory::new(
        prefix,
        &Message::KickIneffective(Envelope::new(body, sweep, now)),
        &[r.client.account.clone(), r.client.user.clone()],
    )
}

/// An error and its sources, `a: b: c`, for one log field.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// `<prefix>.<name>.<token>...` with every token escaped.
pub fn subject(prefix: &str, name: &str, tokens: &[String]) -> String {
    let mut s = format!("{prefix}.{name}");
    for t in tokens {
        s.push('.');
        s.push_str(&escape_token(t));
    }
    s
}

/// Escapes any string into one valid subject token: ASCII letters, digits, `-` and `_` stay;
/// every other byte becomes `%XX`; the empty string becomes `%`; a long result is cut and
/// suffixed with `~` and a hash of the raw string, so distinct names stay distinct.
pub fn escape_token(raw: &str) -> String {
    if raw.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() > MAX_TOKEN {
        let hash = Sha256::digest(raw.as_bytes());
        let mut cut = out[..MAX_TOKEN - 17].to_string();
        cut.push('~');
        for b in &hash[..8] {
            let _ = write!(cut, "{b:02x}");
        }
        out = cut;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_token(t: &str) -> bool {
        !t.is_empty()
            && t.len() <= MAX_TOKEN
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
    }

    fn event(state: crate::lifecycle::State, since: i64, renotified: u32) -> Event {
        let t = |s| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let finding = finding_on("n1");
        Event {
            state,
            renotify: renotified > 0,
            finding: crate::lifecycle::Active {
                tokens: finding.tokens(),
                finding,
                since: t(since),
                last_notified: t(since + 60),
                renotified,
            },
        }
    }

    #[test]
    fn finding_ids_are_deterministic_and_distinct_per_announcement() {
        use crate::lifecycle::State::{Firing, Resolved};
        let first = event_id(&event(Firing, 0, 0));
        assert_eq!(first.len(), 22);
        assert!(first.bytes().all(|b| b.is_ascii_alphanumeric()), "{first}");
        // The same announcement, computed again (a retry, a restart, another replica).
        let mut again = event(Firing, 0, 0);
        again.finding.last_notified = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(event_id(&again), first);
        // Every other announcement differs: state, renotify count, since, finding.
        let mut other_finding = event(Firing, 0, 0);
        other_finding.finding.finding = finding_on("n2");
        let ids = [
            first.clone(),
            event_id(&event(Resolved, 0, 0)),
            event_id(&event(Firing, 0, 1)),
            event_id(&event(Firing, 0, 2)),
            event_id(&event(Firing, 1, 0)),
            event_id(&other_finding),
        ];
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        // The advisory carries it in its body and as its Nats-Msg-Id.
        let sweep = Completeness {
            started: None,
            servers_expected: 1,
            servers_responded: 1,
            partial: false,
            missing: vec![],
            silent_clusters: vec![],
        };
        let a = from_event("p", &event(Firing, 0, 0), &sweep, Utc::now());
        assert_eq!(a.id, first);
        assert_eq!(a.body["id"], first.as_str());
    }

    fn finding_on(server: &str) -> Finding {
        Finding::ServerConnectionPressure(crate::rules::ServerFinding {
            server: server.into(),
            server_id: "ID".into(),
            connections: 90,
            max_connections: 100,
            ratio: 0.9,
        })
    }

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(escape_token("orders-svc_1"), "orders-svc_1");
        assert_eq!(escape_token("APP"), "APP");
    }

    #[test]
    fn hostile_names_become_valid_distinct_tokens() {
        let names = [
            "",
            "a.b",
            "a b",
            "*",
            ">",
            "a.>",
            "%",
            "%25",
            "$G",
            "ünïcødé",
            "日本",
            "tab\there",
            "nl\n",
            "\u{0}",
            &"x".repeat(10_000),
            &"x".repeat(9_999),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let t = escape_token(n);
            assert!(valid_token(&t), "{n:?} -> {t:?}");
            assert!(seen.insert(t.clone()), "{n:?} collides as {t:?}");
        }
    }

    #[test]
    fn subjects_have_one_token_per_name() {
        let s = subject(
            "connwatch.advisory",
            "excessive_user_connections",
            &["A.B".into(), "u *>".into()],
        );
        assert_eq!(
            s,
            "connwatch.advisory.excessive_user_connections.A%2EB.u%20%2A%3E"
        );
        assert_eq!(s.split('.').count(), 5);
    }
}
