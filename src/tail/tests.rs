//! Unit tests of `tail`'s decoding and rendering.
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

/// Decodes a test body.
fn msg(body: &Value) -> Message {
    Message::decode(body.clone()).unwrap_or_else(|e| panic!("{e}: {e:?}"))
}

fn render(body: &Value) -> String {
    render_text(&msg(body))
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
        "by_name": {"": 2500},
        "by_ip": {"10.0.0.1": 2500},
        "idle_zero_msgs": 2500,
        "oldest_start": null,
        "newest_start": null,
        "suspects": [],
        "spread": {"processes": 1, "top_process": null, "ips": 1, "max_per_ip": 2500,
                   "median_per_ip": 2500, "unnamed": 2500},
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
        render(&excessive()),
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
    let line = render(&b);
    assert!(
        line.contains(" excessive_user_connections OPS (ABCDEFGH…)/alice (UBCDEFGH…) 2500 conns"),
        "{line}"
    );
    // The same name as the key shows once.
    b["user_name"] = b["user"].clone();
    assert!(render(&b).contains(&format!("/{} 2500", key('U'))));
}

#[test]
fn marks_renotifications_and_partial_sweeps() {
    let mut b = excessive();
    b["renotify"] = json!(true);
    b["since"] = json!("2026-11-25T19:00:00.000Z");
    b["sweep"] = sweep(true, &["n3", "n4"]);
    let line = render(&b);
    assert!(
        line.contains(
            "n2:100 [renotify, firing since 2026-11-25T19:00:00.000Z] \
             [partial sweep: missing n3, n4] — 2500 of 2500"
        ),
        "{line}"
    );
    b["sweep"] = sweep(true, &[]);
    assert!(render(&b).contains("] [partial sweep] — "));
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
        render(&b).contains(
            "user_connection_growth APP/leaky 50 conns (threshold 100) n1:50 +60/h, \
             over threshold in 51m, account limit 220 in 3h 20m — "
        ),
        "{}",
        render(&b)
    );
    b["growth"]["threshold_in_secs"] = Value::Null;
    b["growth"]["account_limit_in_secs"] = Value::Null;
    b["growth"]["per_hour"] = json!(-2.5);
    assert!(render(&b).contains(" n1:50 -2.5/h — "));
}

#[test]
fn renders_account_and_server_pressure() {
    let account = json!({
        "type": "io.connwatch.advisory.v1.account_connection_pressure",
        "id": "ABCDEFGHIJKLMNOPQRSTUV",
        "timestamp": "2026-11-25T20:31:09.123Z", "state": "firing", "renotify": false,
        "since": "2026-11-25T20:31:09.123Z",
        "account": key('A'), "account_name": "OPS", "connections": 200, "limit": 220,
        "ratio": 0.909, "sweep": sweep(false, &[]),
    });
    assert_eq!(
        render(&account),
        "2026-11-25T20:31:09.123Z FIRING account_connection_pressure OPS (ABCDEFGH…) 200/220 conns (90.9%)"
    );
    let server = json!({
        "type": "io.connwatch.advisory.v1.server_connection_pressure",
        "id": "ABCDEFGHIJKLMNOPQRSTUV",
        "timestamp": "2026-11-25T20:31:09.123Z", "state": "resolved", "renotify": false,
        "since": "2026-11-25T18:00:00.000Z",
        "server": "n1", "server_id": key('N'), "connections": 170, "max_connections": 200,
        "ratio": 0.85, "sweep": sweep(false, &[]),
    });
    assert_eq!(
        render(&server),
        "2026-11-25T20:31:09.123Z RESOLVED server_connection_pressure n1 last seen 170/200 conns (85.0%), \
         firing since 2026-11-25T18:00:00.000Z"
    );
}

#[test]
fn a_resolution_shows_the_last_numbers_without_the_diagnosis() {
    let mut b = excessive();
    b["state"] = json!("resolved");
    assert_eq!(
        render(&b),
        "2026-11-25T20:31:09.123Z RESOLVED excessive_user_connections APP/leaky last seen 2500 conns \
         (threshold 100) n1:2400 n2:100, firing since 2026-11-25T20:31:09.123Z"
    );
}

#[test]
fn hostile_names_stay_on_one_line() {
    let mut b = excessive();
    b["user"] = json!("evil\nFIRING fake\u{1b}[31m");
    b["diagnosis"]["summary"] = json!("a\r\nb");
    let line = render(&b);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(
        line.contains(r"APP/evil\nFIRING fake\u{1b}[31m 2500"),
        "{line}"
    );
    assert!(line.ends_with(r"— a\r\nb"), "{line}");
}

#[test]
fn kicks_render_their_result_and_who() {
    let kicked = json!({
        "type": "io.connwatch.advisory.v1.connection_kicked",
        "id": "ABCDEFGHIJKLMNOPQRSTUV", "timestamp": "2026-11-25T20:31:09.123Z",
        "rule": "excessive_user_connections", "dry_run": true, "result": "would_kick",
        "server": "n1", "server_id": key('N'), "cid": 7, "account": "APP", "user": "leaky",
        "name": "w", "ip": "10.0.0.1", "idle": "2h", "age": "3h", "user_connections": 150,
        "threshold": 100, "sweep": sweep(false, &[]),
    });
    assert_eq!(
        render(&kicked),
        "2026-11-25T20:31:09.123Z WOULD_KICK connection_kicked APP/leaky"
    );
    let mut recovered = kicked.clone();
    recovered["dry_run"] = json!(false);
    recovered["result"] = json!("kicked");
    recovered["recovered"] = json!(true);
    assert_eq!(
        render(&recovered),
        "2026-11-25T20:31:09.123Z KICKED connection_kicked APP/leaky recovered: recorded by a leader that died, connection gone"
    );
    let back = json!({
        "type": "io.connwatch.advisory.v1.kick_ineffective",
        "id": "ABCDEFGHIJKLMNOPQRSTUV", "timestamp": "2026-11-25T20:31:09.123Z",
        "account": "APP", "user": "leaky", "name": "w", "ip": "10.0.0.1", "kicks": 3,
        "returns": 1, "new_connections": 2, "given_up": false, "message": "it came back",
        "sweep": sweep(true, &["n3"]),
    });
    assert_eq!(
        render(&back),
        "2026-11-25T20:31:09.123Z - kick_ineffective APP/leaky [partial sweep: missing n3] — it came back"
    );
}

#[test]
fn cap_enforcements_render_before_after_and_the_cap() {
    let capped = json!({
        "type": "io.connwatch.advisory.v1.connection_cap_enforced",
        "id": "ABCDEFGHIJKLMNOPQRSTUV", "timestamp": "2026-11-25T20:31:09.123Z",
        "account": "APP", "user": "leaky", "cap": 50, "cap_source": "user", "dry_run": false,
        "before": 80, "after": 50, "failed": 0, "since": "2026-11-25T20:31:08.000Z",
        "closed": [{"server": "n1", "server_id": key('N'), "cid": 7, "name": "w",
            "ip": "10.0.0.1", "start": "2026-11-25T20:31:07.123456789Z"}],
        "churn": {"closed_last_minute": 30, "bursts_last_minute": 1, "reconnecting": false},
        "message": "closed 30 of 80 connections beyond the cap of 50",
        "sweep": sweep(false, &[]),
    });
    assert_eq!(
        render(&capped),
        "2026-11-25T20:31:09.123Z CLOSED connection_cap_enforced APP/leaky 80 -> 50 conns (cap 50, user), 1 closed — closed 30 of 80 connections beyond the cap of 50"
    );
    assert!(matches(
        &msg(&capped),
        &args(&["connection_cap_enforced"], Some("APP"), Some("leaky"))
    ));
    // A large burst lists the oldest it closed and counts the others.
    let mut large = capped.clone();
    large["closed_more"] = json!(29);
    assert!(
        render(&large).contains("80 -> 50 conns (cap 50, user), 30 closed"),
        "{}",
        render(&large)
    );
}

#[test]
fn filters_by_type_with_or_without_prefix() {
    let b = excessive();
    assert!(matches(&msg(&b), &args(&[], None, None)));
    assert!(matches(
        &msg(&b),
        &args(&["excessive_user_connections"], None, None)
    ));
    assert!(matches(
        &msg(&b),
        &args(
            &["io.connwatch.advisory.v1.excessive_user_connections"],
            None,
            None
        )
    ));
    assert!(matches(
        &msg(&b),
        &args(
            &["server_connection_pressure", "excessive_user_connections"],
            None,
            None
        )
    ));
    assert!(!matches(
        &msg(&b),
        &args(&["server_connection_pressure"], None, None)
    ));
    assert!(!matches(&msg(&b), &args(&["excessive"], None, None)));
    assert!(!matches(
        &msg(&b),
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
            matches(&msg(&b), &args(&[], account, user)),
            want,
            "{account:?} {user:?}"
        );
    }
    // A server advisory has no account or user.
    let server = json!({"type": "io.connwatch.advisory.v1.server_connection_pressure",
        "id": "ABCDEFGHIJKLMNOPQRSTUV", "timestamp": "2026-11-25T20:31:09.123Z",
        "state": "firing", "renotify": false, "since": "2026-11-25T20:31:09.123Z",
        "server": "n1", "server_id": "N", "connections": 170, "max_connections": 200,
        "ratio": 0.85, "sweep": sweep(false, &[])});
    assert!(matches(&msg(&server), &args(&[], None, None)));
    assert!(!matches(&msg(&server), &args(&[], Some("n1"), None)));
    assert!(!matches(&msg(&server), &args(&[], None, Some("n1"))));
}

#[test]
fn only_advisories_parse() {
    assert!(decode(excessive().to_string().as_bytes()).is_ok());
    for bad in [
        &b"garbage"[..],
        b"",
        b"[1, 2]",
        b"{\"type\": 3}",
        b"{\"type\": \"io.nats.server.advisory.v1.client_connect\"}",
        b"{\"state\": \"firing\"}",
        b"\xff\xfe",
        // A type this version does not know, and a known type without its fields.
        b"{\"type\": \"io.connwatch.advisory.v1.some_event\"}",
        b"{\"type\": \"io.connwatch.advisory.v1.excessive_user_connections\"}",
    ] {
        assert!(
            decode(bad).is_err(),
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

#[test]
fn renders_refused_connections_per_account_and_server() {
    let account = json!({
        "type": "io.connwatch.advisory.v1.connections_refused",
        "id": "ABCDEFGHIJKLMNOPQRSTUV",
        "timestamp": "2026-11-25T20:31:09.123Z", "state": "firing", "renotify": false,
        "since": "2026-11-25T20:31:09.123Z",
        "scope": "account", "name": "APP", "refused": 12, "window_secs": 60,
        "by_reason": {"account_limit": 12}, "users": {"a": 10, "b": 2}, "users_more": 0,
        "ips": {"10.0.0.7": 12}, "ips_more": 0, "servers": {"n1": 12},
        "first": "2026-11-25T20:31:08Z", "last": "2026-11-25T20:31:09Z",
        "sweep": sweep(false, &[]),
    });
    assert_eq!(
        render(&account),
        "2026-11-25T20:31:09.123Z FIRING connections_refused APP 12 refused in 60s (account_limit 12) \
         users a:10 b:2 ips 10.0.0.7:12"
    );
    assert!(matches(&msg(&account), &args(&[], Some("APP"), None)));
    let mut server = account.clone();
    server["scope"] = json!("server");
    server["name"] = json!("n2");
    server["by_reason"] = json!({"auth": 12});
    assert!(render(&server).contains("connections_refused n2 12 refused in 60s (auth 12)"));
    assert!(!matches(&msg(&server), &args(&[], Some("APP"), None)));
}
