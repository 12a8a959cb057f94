//! Advisories: findings as JSON events shaped like NATS's own (`type`, `id`, `timestamp`),
//! published on subjects built from escaped names.

pub mod publisher;

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::kick::{KickPlan, Returned};
use crate::lifecycle::Event;
use crate::snapshot::Snapshot;

/// Prefix of every advisory type.
pub const TYPE_PREFIX: &str = "io.connwatch.advisory.v1.";

/// Advisory types that are events of their own, not findings (see `rules::Kind` for those).
pub const EVENT_TYPES: [&str; 2] = ["connection_kicked", "kick_ineffective"];

/// Escaped tokens longer than this are cut and suffixed with a hash of the raw name.
const MAX_TOKEN: usize = 64;

/// How complete the sweep behind an advisory was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completeness {
    /// When the sweep started.
    pub started: Option<DateTime<Utc>>,
    /// Servers expected to answer.
    pub servers_expected: usize,
    /// Servers whose connections are all counted.
    pub servers_responded: usize,
    /// Whether some connections may be missing.
    pub partial: bool,
    /// Servers that did not answer.
    pub missing: Vec<String>,
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
    /// The JSON body.
    pub body: serde_json::Value,
}

/// Builds an advisory: the NATS event head (`type`, `id`, `timestamp`), then `head`'s fields,
/// the object `fields`, and `sweep`.
pub fn build(
    prefix: &str,
    name: &str,
    tokens: &[String],
    head: serde_json::Value,
    fields: &serde_json::Value,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let id = nuid::next().to_string();
    let mut body = serde_json::Map::new();
    body.insert("type".into(), format!("{TYPE_PREFIX}{name}").into());
    body.insert("id".into(), id.clone().into());
    body.insert("timestamp".into(), timestamp(now).into());
    for part in [&head, fields] {
        for (k, v) in part.as_object().into_iter().flatten() {
            // The envelope and earlier parts win: a field can never replace `type` or `id`.
            body.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    body.insert(
        "sweep".into(),
        serde_json::to_value(sweep).expect("serializes"),
    );
    Advisory {
        subject: subject(prefix, name, tokens),
        id,
        body: body.into(),
    }
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Builds the advisory for a lifecycle event.
pub fn from_event(
    prefix: &str,
    event: &Event,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let f = &event.finding;
    let head = serde_json::json!({
        "state": event.state,
        "renotify": event.renotify,
        "since": timestamp(f.since),
    });
    build(prefix, f.kind.name(), &f.tokens, head, &f.body, sweep, now)
}

/// `connection_kicked`: the audit record of one kick, or of a would-be kick in dry run.
/// `result` is `would_kick` (dry run), `kicked`, `already_gone` or `failed`.
pub fn kicked(
    prefix: &str,
    plan: &KickPlan,
    rule: &str,
    result: &str,
    error: Option<&str>,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let mut head = serde_json::json!({
        "rule": rule,
        "dry_run": result == "would_kick",
        "result": result,
    });
    if let Some(e) = error {
        head["error"] = e.into();
    }
    let fields = serde_json::to_value(plan).expect("serializes");
    build(
        prefix,
        EVENT_TYPES[0],
        &[plan.account.clone(), plan.user.clone()],
        head,
        &fields,
        sweep,
        now,
    )
}

/// `kick_ineffective`: a kicked client came back.
pub fn kick_ineffective(
    prefix: &str,
    r: &Returned,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    let fields = serde_json::to_value(r).expect("serializes");
    build(
        prefix,
        EVENT_TYPES[1],
        &[r.client.account.clone(), r.client.user.clone()],
        serde_json::json!({}),
        &fields,
        sweep,
        now,
    )
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
