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
//! A message that is not an advisory (not JSON, or no `io.connwatch.advisory.v1.*` type) is
//! logged as a warning and skipped.

use std::fmt::Write as _;
use std::io::{ErrorKind, Write};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::advisory::TYPE_PREFIX;
use crate::cli::{TailArgs, TailFormat};
use crate::rules::Kind;

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
        let name = t.strip_prefix(TYPE_PREFIX).unwrap_or(t);
        if !Kind::ALL.iter().any(|k| k.name() == name) {
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
    let body = match parse(payload) {
        Ok(body) => body,
        Err(why) => {
            tracing::warn!(
                subject,
                bytes = payload.len(),
                %why,
                "skipping a message that is not an advisory"
            );
            return None;
        }
    };
    if !matches(&body, args) {
        return None;
    }
    Some(match args.format {
        TailFormat::Text => render_text(&body),
        TailFormat::Json => body.to_string(),
    })
}

/// Parses an advisory: a JSON object whose `type` starts with `io.connwatch.advisory.v1.`.
pub fn parse(payload: &[u8]) -> Result<Value, String> {
    let body: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    match body.get("type").and_then(Value::as_str) {
        Some(t) if t.starts_with(TYPE_PREFIX) => Ok(body),
        Some(t) => Err(format!("type {t:?} is not a connwatch advisory type")),
        None if body.is_object() => Err("no \"type\" string".into()),
        None => Err("not a JSON object".into()),
    }
}

/// The advisory name (`excessive_user_connections`): the `type` without its prefix.
fn name(body: &Value) -> &str {
    let t = str_field(body, "type").unwrap_or("-");
    t.strip_prefix(TYPE_PREFIX).unwrap_or(t)
}

/// Whether an advisory passes the `tail` filters: `--type` (any of them) equals its name, with
/// or without the `io.connwatch.advisory.v1.` prefix; `--account` equals its `account` or
/// `account_name`; `--user` equals its `user` or `user_name`. An advisory without the field
/// (a server advisory has no account) does not pass a filter on it.
pub fn matches(body: &Value, args: &TailArgs) -> bool {
    let name = name(body);
    let type_ok = args.types.is_empty()
        || args
            .types
            .iter()
            .any(|t| t.strip_prefix(TYPE_PREFIX).unwrap_or(t) == name);
    let named = |want: &Option<String>, key: &str, human: &str| {
        want.as_deref()
            .is_none_or(|w| str_field(body, key) == Some(w) || str_field(body, human) == Some(w))
    };
    type_ok
        && named(&args.account, "account", "account_name")
        && named(&args.user, "user", "user_name")
}

/// One readable line for an advisory:
///
/// `<timestamp> <FIRING|RESOLVED> <name> <who> <numbers> [markers] — <diagnosis summary>`
///
/// - who: `account/user`, `account` or `server`; a human name that differs from the key shows
///   as `alice (UABCDEFG…)`;
/// - numbers: users `2500 conns (threshold 100) n1:2500 n2:3`, then the growth when known
///   (`+60/h, over threshold in 51m, account limit 220 in 20m`); accounts
///   `200/220 conns (90.9%)`; servers `170/200 conns (85.0%)`;
/// - markers: `[renotify, firing since <since>]` on a renotification,
///   `[partial sweep: missing n3]` when the sweep was partial (counts may be too low);
/// - a resolved advisory carries the numbers last seen while firing: they show as
///   `last seen <numbers>, firing since <since>`, without the diagnosis.
///
/// Other advisory types render from the fields they share with these: `result` stands in
/// for a missing `state`, `message` for a missing diagnosis. Missing fields are left out (or
/// shown as `-`); this never fails. Control characters in names are escaped, so every
/// advisory stays on one line.
pub fn render_text(body: &Value) -> String {
    let resolved = str_field(body, "state") == Some("resolved");
    let mut line = format!(
        "{} {} {}",
        str_field(body, "timestamp").unwrap_or("-"),
        str_field(body, "state")
            .or_else(|| str_field(body, "result"))
            .map_or("-".into(), str::to_uppercase),
        name(body),
    );
    if let Some(who) = who(body) {
        let _ = write!(line, " {who}");
    }
    let numbers = numbers(body);
    let since = str_field(body, "since").unwrap_or("-");
    if resolved {
        if !numbers.is_empty() {
            let _ = write!(line, " last seen {numbers},");
        }
        let _ = write!(line, " firing since {since}");
    } else if !numbers.is_empty() {
        let _ = write!(line, " {numbers}");
    }
    if body["renotify"] == true {
        let _ = write!(line, " [renotify, firing since {since}]");
    }
    if body["sweep"]["partial"] == true {
        let missing: Vec<&str> = body["sweep"]["missing"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if missing.is_empty() {
            line.push_str(" [partial sweep]");
        } else {
            let _ = write!(line, " [partial sweep: missing {}]", missing.join(", "));
        }
    }
    let summary = body["diagnosis"]["summary"]
        .as_str()
        .or_else(|| str_field(body, "message"));
    if let Some(summary) = summary.filter(|_| !resolved) {
        let _ = write!(line, " — {summary}");
    }
    escape_controls(&line)
}

/// `account/user`, `account` or `server`, with human names.
fn who(body: &Value) -> Option<String> {
    let account = label(body, "account", "account_name");
    let user = label(body, "user", "user_name");
    match (account, user) {
        (Some(a), Some(u)) => Some(format!("{a}/{u}")),
        (None, Some(u)) => Some(u),
        (Some(a), None) => Some(a),
        (None, None) => str_field(body, "server").map(str::to_string),
    }
}

/// `name (KEY…)` when the human name differs from the key, else the key.
fn label(body: &Value, key: &str, human: &str) -> Option<String> {
    let k = str_field(body, key)?;
    Some(match str_field(body, human) {
        Some(n) if n != k => format!("{n} ({})", short_key(k)),
        _ => k.to_string(),
    })
}

/// Shortens a public nkey (56 characters) for display; other strings stay whole.
fn short_key(key: &str) -> String {
    if key.len() == 56 && key.chars().all(|c| c.is_ascii_alphanumeric()) {
        format!("{}…", &key[..8])
    } else {
        key.to_string()
    }
}

/// The counts that make the finding, by its shape.
fn numbers(body: &Value) -> String {
    let mut out = String::new();
    let connections = body["connections"].as_u64();
    let limit = body["limit"]
        .as_u64()
        .or_else(|| body["max_connections"].as_u64());
    if let (Some(n), Some(limit)) = (connections, limit) {
        let _ = write!(out, "{n}/{limit} conns");
        if let Some(r) = body["ratio"].as_f64() {
            let _ = write!(out, " ({:.1}%)", r * 100.0);
        }
        return out;
    }
    if let Some(n) = connections {
        let _ = write!(out, "{n} conns");
        if let Some(t) = body["threshold"].as_u64() {
            let _ = write!(out, " (threshold {t})");
        }
    }
    if let Some(by_server) = body["by_server"].as_object() {
        for (server, n) in by_server {
            let _ = write!(out, " {server}:{}", n.as_u64().unwrap_or(0));
        }
    }
    if let Some(g) = body["growth"].as_object() {
        let mut parts = Vec::new();
        if let Some(rate) = g.get("per_hour").and_then(Value::as_f64) {
            parts.push(format!("{rate:+}/h"));
        }
        if let Some(secs) = g.get("threshold_in_secs").and_then(Value::as_u64) {
            parts.push(format!("over threshold in {}", eta(secs)));
        }
        if let (Some(limit), Some(secs)) = (
            g.get("account_limit").and_then(Value::as_u64),
            g.get("account_limit_in_secs").and_then(Value::as_u64),
        ) {
            parts.push(format!("account limit {limit} in {}", eta(secs)));
        }
        if !parts.is_empty() {
            let _ = write!(out, " {}", parts.join(", "));
        }
    }
    out.trim_start().to_string()
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

fn str_field<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
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
mod tests {
    use super::*;
    use serde_json::json;

    fn args(types: &[&str], account: Option<&str>, user: Option<&str>) -> TailArgs {
        TailArgs {
            format: TailFormat::Text,
            types: types.iter().map(|t| t.to_string()).collect(),
            account: account.map(str::to_string),
            user: user.map(str::to_string),
        }
    }

    fn sweep(partial: bool, missing: &[&str]) -> Value {
        json!({"servers_expected": 3, "servers_responded": 3 - missing.len(),
               "partial": partial, "missing": missing})
    }

    fn excessive() -> Value {
        json!({
            "type": "io.connwatch.advisory.v1.excessive_user_connections",
            "id": "ABCDEFGHIJKLMNOPQRSTUV",
            "timestamp": "2026-11-25T20:31:09.123Z",
            "state": "firing",
            "renotify": false,
            "since": "2026-11-25T20:31:09.123Z",
            "account": "APP",
            "user": "leaky",
            "system": false,
            "connections": 2500,
            "threshold": 100,
            "over_threshold": true,
            "by_server": {"n1": 2400, "n2": 100},
            "diagnosis": {"summary": "2500 of 2500 connections come from one process", "causes": []},
            "sweep": sweep(false, &[]),
        })
    }

    fn key(prefix: char) -> String {
        let mut k = String::from(prefix);
        k.push_str(&"BCDEFGH".repeat(8)[..55]);
        k
    }

    #[test]
    fn renders_an_excessive_user() {
        assert_eq!(
            render_text(&excessive()),
            "2026-11-25T20:31:09.123Z FIRING excessive_user_connections APP/leaky 2500 conns \
             (threshold 100) n1:2400 n2:100 — 2500 of 2500 connections come from one process"
        );
    }

    #[test]
    fn renders_human_names_beside_keys() {
        let mut b = excessive();
        b["account"] = json!(key('A'));
        b["account_name"] = json!("OPS");
        b["user"] = json!(key('U'));
        b["user_name"] = json!("alice");
        let line = render_text(&b);
        assert!(
            line.contains(
                " excessive_user_connections OPS (ABCDEFGH…)/alice (UBCDEFGH…) 2500 conns"
            ),
            "{line}"
        );
        // The same name as the key shows once.
        b["user_name"] = b["user"].clone();
        assert!(render_text(&b).contains(&format!("/{} 2500", key('U'))));
    }

    #[test]
    fn marks_renotifications_and_partial_sweeps() {
        let mut b = excessive();
        b["renotify"] = json!(true);
        b["since"] = json!("2026-11-25T19:00:00.000Z");
        b["sweep"] = sweep(true, &["n3", "n4"]);
        let line = render_text(&b);
        assert!(
            line.contains(
                "n2:100 [renotify, firing since 2026-11-25T19:00:00.000Z] \
                 [partial sweep: missing n3, n4] — 2500 of 2500"
            ),
            "{line}"
        );
        b["sweep"] = sweep(true, &[]);
        assert!(render_text(&b).contains("] [partial sweep] — "));
    }

    #[test]
    fn renders_growth() {
        let mut b = excessive();
        b["type"] = json!("io.connwatch.advisory.v1.user_connection_growth");
        b["connections"] = json!(50);
        b["by_server"] = json!({"n1": 50});
        b["growth"] = json!({"per_hour": 60.0, "samples": 5, "window_secs": 2400,
            "threshold_in_secs": 3060, "account_limit": 220, "account_limit_in_secs": 12_000});
        assert!(
            render_text(&b).contains(
                "user_connection_growth APP/leaky 50 conns (threshold 100) n1:50 +60/h, \
                 over threshold in 51m, account limit 220 in 3h 20m — "
            ),
            "{}",
            render_text(&b)
        );
        b["growth"]["threshold_in_secs"] = Value::Null;
        b["growth"]["account_limit_in_secs"] = Value::Null;
        b["growth"]["per_hour"] = json!(-2.5);
        assert!(render_text(&b).contains(" n1:50 -2.5/h — "));
    }

    #[test]
    fn renders_account_and_server_pressure() {
        let account = json!({
            "type": "io.connwatch.advisory.v1.account_connection_pressure",
            "timestamp": "2026-11-25T20:31:09.123Z", "state": "firing", "renotify": false,
            "since": "2026-11-25T20:31:09.123Z",
            "account": key('A'), "account_name": "OPS", "connections": 200, "limit": 220,
            "ratio": 0.909, "sweep": sweep(false, &[]),
        });
        assert_eq!(
            render_text(&account),
            "2026-11-25T20:31:09.123Z FIRING account_connection_pressure OPS (ABCDEFGH…) 200/220 conns (90.9%)"
        );
        let server = json!({
            "type": "io.connwatch.advisory.v1.server_connection_pressure",
            "timestamp": "2026-11-25T20:31:09.123Z", "state": "resolved", "renotify": false,
            "since": "2026-11-25T18:00:00.000Z",
            "server": "n1", "server_id": key('N'), "connections": 170, "max_connections": 200,
            "ratio": 0.85, "sweep": sweep(false, &[]),
        });
        assert_eq!(
            render_text(&server),
            "2026-11-25T20:31:09.123Z RESOLVED server_connection_pressure n1 last seen 170/200 conns (85.0%), \
             firing since 2026-11-25T18:00:00.000Z"
        );
    }

    #[test]
    fn a_resolution_shows_the_last_numbers_without_the_diagnosis() {
        let mut b = excessive();
        b["state"] = json!("resolved");
        assert_eq!(
            render_text(&b),
            "2026-11-25T20:31:09.123Z RESOLVED excessive_user_connections APP/leaky last seen 2500 conns \
             (threshold 100) n1:2400 n2:100, firing since 2026-11-25T20:31:09.123Z"
        );
    }

    #[test]
    fn hostile_names_stay_on_one_line() {
        let mut b = excessive();
        b["user"] = json!("evil\nFIRING fake\u{1b}[31m");
        b["diagnosis"]["summary"] = json!("a\r\nb");
        let line = render_text(&b);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains(r"APP/evil\nFIRING fake\u{1b}[31m 2500"),
            "{line}"
        );
        assert!(line.ends_with(r"— a\r\nb"), "{line}");
    }

    #[test]
    fn unknown_shapes_render_what_they_have() {
        let b = json!({"type": "io.connwatch.advisory.v1.connection_kicked", "account": "APP",
                       "user": "leaky", "server": "n1"});
        assert_eq!(render_text(&b), "- - connection_kicked APP/leaky");
        assert_eq!(render_text(&json!({})), "- - -");
        let b = json!({"type": "io.connwatch.advisory.v1.some_event", "timestamp": "T",
                       "result": "would_kick", "server": "n1", "message": "why"});
        assert_eq!(render_text(&b), "T WOULD_KICK some_event n1 — why");
    }

    #[test]
    fn filters_by_type_with_or_without_prefix() {
        let b = excessive();
        assert!(matches(&b, &args(&[], None, None)));
        assert!(matches(
            &b,
            &args(&["excessive_user_connections"], None, None)
        ));
        assert!(matches(
            &b,
            &args(
                &["io.connwatch.advisory.v1.excessive_user_connections"],
                None,
                None
            )
        ));
        assert!(matches(
            &b,
            &args(
                &["server_connection_pressure", "excessive_user_connections"],
                None,
                None
            )
        ));
        assert!(!matches(
            &b,
            &args(&["server_connection_pressure"], None, None)
        ));
        assert!(!matches(&b, &args(&["excessive"], None, None)));
        assert!(!matches(
            &b,
            &args(&["io.connwatch.advisory.v1."], None, None)
        ));
    }

    #[test]
    fn filters_by_account_and_user_keys_or_names() {
        let mut b = excessive();
        b["account"] = json!("AKEY");
        b["account_name"] = json!("OPS");
        b["user"] = json!("UKEY");
        b["user_name"] = json!("alice");
        for (account, user, want) in [
            (Some("AKEY"), None, true),
            (Some("OPS"), None, true),
            (Some("APP"), None, false),
            (None, Some("UKEY"), true),
            (None, Some("alice"), true),
            (None, Some("bob"), false),
            (Some("OPS"), Some("alice"), true),
            (Some("OPS"), Some("bob"), false),
            (Some("APP"), Some("alice"), false),
        ] {
            assert_eq!(
                matches(&b, &args(&[], account, user)),
                want,
                "{account:?} {user:?}"
            );
        }
        // A server advisory has no account or user.
        let server = json!({"type": "io.connwatch.advisory.v1.server_connection_pressure",
                            "server": "n1"});
        assert!(matches(&server, &args(&[], None, None)));
        assert!(!matches(&server, &args(&[], Some("n1"), None)));
        assert!(!matches(&server, &args(&[], None, Some("n1"))));
    }

    #[test]
    fn only_advisories_parse() {
        assert!(parse(excessive().to_string().as_bytes()).is_ok());
        for bad in [
            &b"garbage"[..],
            b"",
            b"[1, 2]",
            b"{\"type\": 3}",
            b"{\"type\": \"io.nats.server.advisory.v1.client_connect\"}",
            b"{\"state\": \"firing\"}",
            b"\xff\xfe",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lines_are_filtered_and_formatted() {
        let payload = excessive().to_string();
        let mut a = args(&[], None, None);
        a.format = TailFormat::Json;
        let line = line_for("s", payload.as_bytes(), &a).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), excessive());
        a.user = Some("someone-else".into());
        assert_eq!(line_for("s", payload.as_bytes(), &a), None);
        assert_eq!(line_for("s", b"not json", &args(&[], None, None)), None);
    }

    #[test]
    fn etas_use_two_units() {
        assert_eq!(eta(45), "45s");
        assert_eq!(eta(3060), "51m");
        assert_eq!(eta(7200), "2h");
        assert_eq!(eta(12_000), "3h 20m");
        assert_eq!(eta(86_400 * 2 + 3600 * 4 + 59), "2d 4h");
        assert_eq!(eta(86_400), "1d");
    }
}
