//! `connwatch tail`: print advisories as they are published.
//!
//! Subscribes to `<advisory.subject_prefix>.>` and prints every advisory that passes the
//! filters, one line each, flushed at once:
//!
//! - `--format json`: the advisory body as one compact JSON line;
//! - `--format text` (see [`render_text`]):
//!
//! ```text
//! 2026-11-25T20:31:09.123Z FIRING excessive_user_connections APP/leaky 2500 conns (threshold 100) n1:2500 — 2500 of 2500 connections come from one process (…)
//! 2026-11-25T21:31:09.123Z FIRING user_connection_growth APP/slow 50 conns (threshold 100) n1:50 +60/h, over threshold in 51m [renotify, firing since 2026-11-25T20:31:09.123Z] [partial sweep: missing n3] — …
//! 2026-11-25T20:31:09.123Z FIRING account_connection_pressure APP 200/220 conns (90.9%)
//! 2026-11-25T20:31:09.123Z FIRING server_connection_pressure n1 170/200 conns (85.0%)
//! 2026-11-25T22:31:09.123Z RESOLVED excessive_user_connections OPS (AOPSOPSO…)/alice (UALICEAL…) last seen 120 conns (threshold 100) n2:60 n3:60, firing since 2026-11-25T20:31:09.123Z
//! ```
//!
//! Messages are decoded with the advisory types ([`Message`]). One that is not an advisory of
//! this version (not JSON, another publisher's type, a type or shape this version does not
//! know) is logged as a warning and skipped. `--format json` prints the body as received, so
//! fields a newer connwatch added are kept.

use std::fmt::Write as _;
use std::io::{ErrorKind, Write};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::advisory::types::DecodeError;
use crate::advisory::with_sources;
use crate::advisory::{Completeness, Envelope, FindingEvent, Message, NAMES, TYPE_PREFIX};
use crate::cli::{TailArgs, TailFormat};
use crate::rules::refused::RefusedScope;
use crate::rules::{RefusedFinding, UserFinding};

/// Prints the advisories published under `prefix` to `out` until `shutdown` is cancelled.
///
/// Each line is flushed as soon as it is written. A closed output (broken pipe, as with
/// `connwatch tail | head`) ends the command normally; the connection to NATS closing for good
/// is an error.
pub async fn run(
    client: async_nats::Client,
    prefix: &str,
    args: &TailArgs,
    shutdown: CancellationToken,
    out: impl Write,
) -> anyhow::Result<()> {
    let subscriber = subscribe(&client, prefix).await?;
    follow(subscriber, args, shutdown, out).await
}

/// Subscribes to every advisory under `prefix` (`<prefix>.>`) and flushes, so the server
/// that `client` is connected to holds the subscription when this returns.
async fn subscribe(
    client: &async_nats::Client,
    prefix: &str,
) -> anyhow::Result<async_nats::Subscriber> {
    let subject = format!("{prefix}.>");
    let subscriber = client
        .subscribe(subject.clone())
        .await
        .with_context(|| format!("cannot subscribe to {subject}"))?;
    client
        .flush()
        .await
        .with_context(|| format!("cannot subscribe to {subject}"))?;
    tracing::info!(subject, "waiting for advisories");
    Ok(subscriber)
}

/// Prints the advisories of a subscription to `out` until `shutdown` is cancelled; see [`run`].
async fn follow(
    mut subscriber: async_nats::Subscriber,
    args: &TailArgs,
    shutdown: CancellationToken,
    mut out: impl Write,
) -> anyhow::Result<()> {
    for t in &args.types {
        if !NAMES.contains(&type_name(t)) {
            tracing::warn!(
                advisory_type = %t,
                "--type names no advisory type this version publishes"
            );
        }
    }
    loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            m = subscriber.next() => m,
        };
        let Some(message) = message else {
            bail!("the subscription to advisories ended: the connection to NATS closed");
        };
        let Some(line) = line_for(&message.subject, &message.payload, args) else {
            continue;
        };
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).context("cannot write advisories to the output"),
        }
    }
    // The connection may be gone already; nothing is left to clean up then.
    let _ = subscriber.unsubscribe().await;
    Ok(())
}

/// The line to print for one message: `None` when it is no advisory (logged as a warning) or
/// does not pass the filters.
fn line_for(subject: &str, payload: &[u8], args: &TailArgs) -> Option<String> {
    let (body, message) = match decode(payload) {
        Ok(decoded) => decoded,
        Err(why) => {
            tracing::warn!(
                subject,
                bytes = payload.len(),
                why = %with_sources(&why),
                "skipping a message that is not an advisory"
            );
            return None;
        }
    };
    if !matches(&message, args) {
        return None;
    }
    Some(match args.format {
        TailFormat::Text => render_text(&message),
        TailFormat::Json => body.to_string(),
    })
}

/// Decodes an advisory: its JSON body as received, and its typed form.
pub fn decode(payload: &[u8]) -> Result<(Value, Message), DecodeError> {
    let body: Value = serde_json::from_slice(payload).map_err(DecodeError::NotJson)?;
    let message = Message::decode(body.clone())?;
    Ok((body, message))
}

/// A `--type` value without the `io.connwatch.advisory.v1.` prefix.
fn type_name(t: &str) -> &str {
    t.strip_prefix(TYPE_PREFIX).unwrap_or(t)
}

/// Who an advisory is about: account and user (key and human name), or a server.
#[derive(Default)]
struct Who<'a> {
    account: Option<(&'a str, Option<&'a str>)>,
    user: Option<(&'a str, Option<&'a str>)>,
    server: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn user(u: &'a UserFinding) -> Self {
        let c = &u.census;
        Self {
            account: Some((&c.account, c.account_name.as_deref())),
            user: Some((&c.user, c.user_name.as_deref())),
            server: None,
        }
    }

    fn of(message: &'a Message) -> Self {
        match message {
            Message::ExcessiveUserConnections(e) | Message::UserConnectionGrowth(e) => {
                Self::user(&e.body.finding)
            }
            Message::AccountConnectionPressure(e) => {
                let a = &e.body.finding;
                Self {
                    account: Some((&a.account, a.account_name.as_deref())),
                    ..Self::default()
                }
            }
            Message::ServerConnectionPressure(e) => Self {
                server: Some(&e.body.finding.server),
                ..Self::default()
            },
            Message::ConnectionsRefused(e) => {
                let r = &e.body.finding;
                match r.scope {
                    RefusedScope::Account => Self {
                        account: Some((&r.name, r.account_name.as_deref())),
                        ..Self::default()
                    },
                    RefusedScope::Server => Self {
                        server: Some(&r.name),
                        ..Self::default()
                    },
                }
            }
            Message::ServerConnectionHotspot(e) => Self {
                server: Some(&e.body.finding.server),
                ..Self::default()
            },
            Message::AccountConnectionImbalance(e) => {
                let a = &e.body.finding;
                Self {
                    account: Some((&a.account, a.account_name.as_deref())),
                    ..Self::default()
                }
            }
            Message::ConnectionKicked(e) => {
                let p = &e.body.plan;
                Self {
                    account: Some((&p.account, p.account_name.as_deref())),
                    user: Some((&p.user, p.user_name.as_deref())),
                    server: Some(&p.server),
                }
            }
            Message::KickIneffective(e) => {
                let c = &e.body.returned.client;
                Self {
                    account: Some((&c.account, None)),
                    user: Some((&c.user, None)),
                    server: None,
                }
            }
            Message::ConnectionCapEnforced(e) => {
                let b = &e.body;
                Self {
                    account: Some((&b.account, b.account_name.as_deref())),
                    user: Some((&b.user, b.user_name.as_deref())),
                    server: None,
                }
            }
        }
    }

    /// `account/user`, `account` or `server`, with human names.
    fn label(&self) -> Option<String> {
        match (self.account.map(label), self.user.map(label)) {
            (Some(a), Some(u)) => Some(format!("{a}/{u}")),
            (None, Some(u)) => Some(u),
            (Some(a), None) => Some(a),
            (None, None) => self.server.map(str::to_string),
        }
    }
}

/// Whether an advisory passes the `tail` filters: `--type` (any of them) equals its name, with
/// or without the `io.connwatch.advisory.v1.` prefix; `--account` equals its `account` or
/// `account_name`; `--user` equals its `user` or `user_name`. An advisory without the field
/// (a server advisory has no account) does not pass a filter on it.
pub fn matches(message: &Message, args: &TailArgs) -> bool {
    let type_ok =
        args.types.is_empty() || args.types.iter().any(|t| type_name(t) == message.name());
    let who = Who::of(message);
    let named = |want: &Option<String>, have: Option<(&str, Option<&str>)>| {
        want.as_deref()
            .is_none_or(|w| have.is_some_and(|(key, human)| key == w || human == Some(w)))
    };
    type_ok && named(&args.account, who.account) && named(&args.user, who.user)
}

/// What a line shows of an advisory, whatever its type.
struct Parts<'a> {
    timestamp: DateTime<Utc>,
    /// `firing` / `resolved`, or a kick's result.
    state: Option<&'static str>,
    resolved: bool,
    renotify: bool,
    since: Option<DateTime<Utc>>,
    numbers: String,
    summary: Option<&'a str>,
    sweep: &'a Completeness,
}

impl<'a> Parts<'a> {
    fn envelope<B>(e: &'a Envelope<B>, state: Option<&'static str>, numbers: String) -> Self {
        Self {
            timestamp: e.timestamp,
            state,
            resolved: false,
            renotify: false,
            since: None,
            numbers,
            summary: None,
            sweep: &e.sweep,
        }
    }

    fn finding<F>(e: &'a Envelope<FindingEvent<F>>, numbers: String) -> Self {
        let state = Some(e.body.state.name());
        Self {
            resolved: e.body.state == crate::lifecycle::State::Resolved,
            renotify: e.body.renotify,
            since: Some(e.body.since),
            ..Self::envelope(e, state, numbers)
        }
    }

    fn of(message: &'a Message) -> Self {
        match message {
            Message::ExcessiveUserConnections(e) | Message::UserConnectionGrowth(e) => Self {
                summary: Some(&e.body.finding.diagnosis.summary),
                ..Self::finding(e, user_numbers(&e.body.finding))
            },
            Message::AccountConnectionPressure(e) => {
                let a = &e.body.finding;
                Self::finding(e, ratio(a.connections, a.limit, a.ratio))
            }
            Message::ServerConnectionPressure(e) => {
                let s = &e.body.finding;
                Self::finding(e, ratio(s.connections, s.max_connections, s.ratio))
            }
            Message::ConnectionsRefused(e) => Self::finding(e, refused_numbers(&e.body.finding)),
            Message::ServerConnectionHotspot(e) => {
                let s = &e.body.finding;
                let numbers = format!(
                    "{} conns, {:.2}x the average {:.0} of cluster {}",
                    s.connections, s.ratio, s.cluster_average, s.cluster
                );
                Self::finding(e, numbers)
            }
            Message::AccountConnectionImbalance(e) => {
                let a = &e.body.finding;
                let on = a.by_server.get(&a.server).copied().unwrap_or_default();
                let numbers = format!(
                    "{on}/{} conns ({:.1}%) on {}",
                    a.connections,
                    a.share * 100.0,
                    a.server
                );
                Self::finding(e, numbers)
            }
            Message::ConnectionKicked(e) => {
                let recovered = if e.body.recovered {
                    "recovered: recorded by a leader that died, connection gone".to_string()
                } else {
                    String::new()
                };
                Self::envelope(e, Some(e.body.result.name()), recovered)
            }
            Message::KickIneffective(e) => Self {
                summary: Some(&e.body.returned.message),
                ..Self::envelope(e, None, String::new())
            },
            Message::ConnectionCapEnforced(e) => {
                let b = &e.body;
                let numbers = format!(
                    "{} -> {} conns (cap {}, {}), {} closed",
                    b.before,
                    b.after,
                    b.cap,
                    b.cap_source.name(),
                    b.closed.len() as u64 + b.closed_more
                );
                let state = if b.dry_run { "would_close" } else { "closed" };
                Self {
                    summary: Some(&b.message),
                    ..Self::envelope(e, Some(state), numbers)
                }
            }
        }
    }
}

/// One readable line for an advisory:
///
/// `<timestamp> <FIRING|RESOLVED> <name> <who> <numbers> [markers] — <diagnosis summary>`
///
/// - who: `account/user`, `account` or `server`; a human name that differs from the key shows
///   as `alice (UABCDEFG…)`;
/// - numbers: users `2500 conns (threshold 100) n1:2500 n2:3`, then the growth when known
///   (`+60/h, over threshold in 51m, account limit 220 in 20m`); accounts
///   `200/220 conns (90.9%)`; servers `170/200 conns (85.0%)`; refused connections
///   `12 refused in 60s (account_limit 12) users a:10 b:2 ips 10.0.0.7:12`; hotspots
///   `170 conns, 2.68x the average 63 of cluster c1`; imbalances `167/200 conns (83.5%) on n1`;
/// - markers: `[renotify, firing since <since>]` on a renotification,
///   `[partial sweep: missing n3]` when the sweep was partial (counts may be too low);
/// - a resolved advisory carries the numbers last seen while firing: they show as
///   `last seen <numbers>, firing since <since>`, without the diagnosis.
///
/// A kick shows its result in place of the state (`WOULD_KICK`, `KICKED`, ...); a kicked
/// client that came back shows its message in place of a diagnosis. Control characters in
/// names are escaped, so every advisory stays on one line.
pub fn render_text(message: &Message) -> String {
    let p = Parts::of(message);
    let mut line = format!(
        "{} {} {}",
        millis(p.timestamp),
        p.state.map_or("-".into(), str::to_uppercase),
        message.name(),
    );
    if let Some(who) = Who::of(message).label() {
        let _ = write!(line, " {who}");
    }
    let since = p.since.map_or("-".into(), millis);
    if p.resolved {
        if !p.numbers.is_empty() {
            let _ = write!(line, " last seen {},", p.numbers);
        }
        let _ = write!(line, " firing since {since}");
    } else if !p.numbers.is_empty() {
        let _ = write!(line, " {}", p.numbers);
    }
    if p.renotify {
        let _ = write!(line, " [renotify, firing since {since}]");
    }
    if p.sweep.partial {
        if p.sweep.missing.is_empty() {
            line.push_str(" [partial sweep]");
        } else {
            let _ = write!(
                line,
                " [partial sweep: missing {}]",
                p.sweep.missing.join(", ")
            );
        }
    }
    if let Some(summary) = p.summary.filter(|_| !p.resolved) {
        let _ = write!(line, " — {summary}");
    }
    escape_controls(&line)
}

/// `12 refused in 60s (account_limit 12) users a:10 b:2 ips 10.0.0.7:12` (the largest five
/// users and IPs).
fn refused_numbers(r: &RefusedFinding) -> String {
    let top = |m: &std::collections::BTreeMap<String, u64>| {
        let mut v: Vec<(&String, &u64)> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .take(5)
            .map(|(k, n)| format!("{}:{n}", if k.is_empty() { "-" } else { k }))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let reasons = r
        .by_reason
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} refused in {}s ({reasons}) users {} ips {}",
        r.refused,
        r.window_secs,
        top(&r.users),
        top(&r.ips)
    )
}

fn millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `name (KEY…)` when the human name differs from the key, else the key.
fn label((key, human): (&str, Option<&str>)) -> String {
    match human {
        Some(n) if n != key => format!("{n} ({})", short_key(key)),
        _ => key.to_string(),
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

/// `200/220 conns (90.9%)`.
fn ratio(connections: u64, limit: u64, ratio: f64) -> String {
    format!("{connections}/{limit} conns ({:.1}%)", ratio * 100.0)
}

/// `2500 conns (threshold 100) n1:2500 n2:3 +60/h, over threshold in 51m`.
fn user_numbers(u: &UserFinding) -> String {
    let c = &u.census;
    let mut out = format!("{} conns (threshold {})", c.connections, c.threshold);
    for (server, n) in &c.by_server {
        let _ = write!(out, " {server}:{n}");
    }
    if let Some(g) = &u.growth {
        let mut parts = vec![format!("{}/h", crate::human::signed_rate(g.per_hour))];
        if let Some(secs) = g.threshold_in_secs {
            parts.push(format!("over threshold in {}", eta(secs)));
        }
        if let (Some(limit), Some(secs)) = (g.account_limit, g.account_limit_in_secs) {
            parts.push(format!("account limit {limit} in {}", eta(secs)));
        }
        let _ = write!(out, " {}", parts.join(", "));
    }
    out
}

/// A duration in its two largest units: `45s`, `51m`, `3h 20m`, `2d 4h`.
fn eta(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Escapes control characters (newlines, terminal escapes) that names might carry.
fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
