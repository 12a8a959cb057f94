//! Bad input never panics: property tests over server replies, the pager, subject tokens, and
//! hostile names carried from the census through the rules into advisories and report JSON.

use connwatch::stamp::Stamp;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use connwatch::advisory::{self, escape_token, Completeness};
use connwatch::census;
use connwatch::config::DetectConfig;
use connwatch::lifecycle::Lifecycle;
use connwatch::nats::page::parse_reply;
use connwatch::nats::parse;
use connwatch::nats::wire::{jwt_name, Accountz, Connz, Reply, StatszReply, UserInfo, Varz};
use connwatch::report::{Filter, Report};
use connwatch::rules::{self, Context};
use connwatch::snapshot::{Connection, ServerSeen, Snapshot};
use connwatch::sweep::{headroom, next_fetch, NextFetch, MAX_DIRECTED};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Parses `bytes` as every reply type connwatch reads, with the sweep's own streaming page
/// parser first. Errors are fine; panics, and replies that break the parser's promises, are not.
fn parse_all(bytes: &[u8]) {
    for limit in [1, 3, 1024] {
        if let Ok(page) = parse_reply(bytes, limit) {
            let cids: Vec<u64> = page.connections.iter().map(|c| c.cid).collect();
            assert!(cids.len() <= limit, "more connections than asked: {cids:?}");
            assert!(
                cids.windows(2).all(|w| w[0] < w[1]),
                "cids not rising: {cids:?}"
            );
            if let Some(total) = page.total {
                assert!(cids.len() as u64 <= total, "more than total {total}");
                assert!(!page.server.id.is_empty(), "data without a server id");
            } else {
                assert!(cids.is_empty(), "connections without data");
            }
        }
    }
    if let Ok(r) = parse::<Reply<Connz>>(bytes) {
        // What the sweep reads from a parsed reply must not panic either.
        if let Some(d) = r.data {
            for c in d.connections.unwrap_or_default() {
                if let Some(jwt) = c.jwt.as_deref() {
                    let _ = jwt_name(jwt);
                }
                let _ = (c.start, c.last_activity, c.name, c.tags);
            }
        }
    }
    let _ = parse::<StatszReply>(bytes);
    if let Ok(r) = parse::<Reply<Accountz>>(bytes) {
        if let Some(detail) = r.data.and_then(|d| d.account_detail) {
            let _ = detail.connection_limit();
        }
    }
    let _ = parse::<Reply<Varz>>(bytes);
    let _ = parse::<Reply<UserInfo>>(bytes);
}

/// A realistic CONNZ reply, as nats-server 2.15 sends it.
fn real_connz() -> Value {
    json!({
        "server": {"name": "n1", "host": "0.0.0.0", "id": "NAD2XYZ", "cluster": "c", "ver": "2.15.1",
                   "seq": 12, "jetstream": false, "time": "2026-01-02T03:04:05.1Z"},
        "data": {
            "server_id": "NAD2XYZ", "now": "2026-01-02T03:04:05.123456789+01:00",
            "num_connections": 2, "total": 2, "offset": 0, "limit": 1024,
            "connections": [
                {"cid": 5, "kind": "Client", "type": "nats", "ip": "127.0.0.1", "port": 51234,
                 "start": "2026-01-02T03:00:00.5Z", "last_activity": "2026-01-02T03:01:00Z",
                 "rtt": "1ms", "uptime": "4m", "idle": "3m", "pending_bytes": 0,
                 "in_msgs": 0, "out_msgs": 0, "in_bytes": 0, "out_bytes": 0, "subscriptions": 1,
                 "name": "worker", "lang": "rust", "version": "0.51.0",
                 "authorized_user": "leaky", "account": "APP", "name_tag": "APP",
                 "tags": ["a", "b"], "jwt": "eyJ0eXAiOiJKV1QifQ.eyJuYW1lIjoiYWxpY2UifQ.sig"},
                {"cid": 6, "ip": "::1", "port": 1, "in_msgs": 3, "out_msgs": 4}
            ]
        }
    })
}

/// Any JSON value: nulls, huge and negative numbers, long and absurd strings, nesting.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e308)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("x".repeat(10_000))),
        Just(Value::from("2026-13-45T99:99:99Z")),
        Just(Value::from("\u{0}\u{1b}[31m\u{202e}")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("server".to_string()),
                    Just("data".to_string()),
                    Just("error".to_string()),
                    Just("connections".to_string()),
                    Just("statsz".to_string()),
                    Just("cid".to_string()),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every object key path in `v`, so a property can replace one field with anything.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            prefix.push(k.clone());
            out.push(prefix.clone());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
    if let Value::Array(a) = v {
        for (i, child) in a.iter().enumerate() {
            prefix.push(i.to_string());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn set_path(v: &mut Value, path: &[String], new: Value) {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let next = match cur {
            Value::Object(m) => m.get_mut(key.as_str()),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|n| a.get_mut(n)),
            _ => None,
        };
        match next {
            Some(slot) if last => {
                *slot = new;
                return;
            }
            Some(slot) => cur = slot,
            None => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_all(&bytes);
    }

    #[test]
    fn gzip_looking_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
        bytes.extend(tail);
        parse_all(&bytes);
        prop_assert!(parse::<Reply<Connz>>(&bytes).is_err());
    }

    #[test]
    fn any_json_shape_never_panics(v in any_json()) {
        parse_all(v.to_string().as_bytes());
        // The same value under each envelope key.
        for key in ["data", "statsz", "server", "error"] {
            parse_all(json!({ key: v.clone() }).to_string().as_bytes());
        }
        parse_all(json!({"data": {"connections": [v.clone()]}}).to_string().as_bytes());
        parse_all(json!({"data": {"account_detail": {"decoded_jwt": v}}}).to_string().as_bytes());
    }

    #[test]
    fn one_field_of_a_real_reply_replaced_by_anything_never_panics(
        pick in any::<prop::sample::Index>(),
        new in any_json(),
    ) {
        let mut reply = real_connz();
        let mut all = Vec::new();
        paths(&reply, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        set_path(&mut reply, &path, new);
        parse_all(reply.to_string().as_bytes());
    }

    #[test]
    fn truncated_replies_never_panic(cut in any::<prop::sample::Index>()) {
        let text = real_connz().to_string();
        let n = cut.index(text.len());
        parse_all(&text.as_bytes()[..n]);
        prop_assert!(parse::<Reply<Connz>>(&text.as_bytes()[..n]).is_err(), "a truncated reply parsed");
    }

    #[test]
    fn escaped_tokens_are_valid_and_distinct(
        names in prop::collection::vec(
            prop_oneof![
                ".*",
                "[\\x00-\\x1f.*> %~]{0,20}",
                "\\PC{0,30}",
                (0usize..12_000).prop_map(|n| "x".repeat(n)),
                (60usize..80, ".{0,3}").prop_map(|(n, s)| format!("{}{s}", "a".repeat(n))),
            ],
            1..24,
        )
    ) {
        let distinct: BTreeSet<&String> = names.iter().collect();
        let mut tokens = HashSet::new();
        for n in &distinct {
            let t = escape_token(n);
            prop_assert!(valid_token(&t), "{n:?} -> {t:?}");
            prop_assert!(tokens.insert(t.clone()), "{n:?} collides as {t:?}");
            prop_assert_eq!(escape_token(n), t, "not deterministic");
        }
    }

    /// Any churn between one server's requests (more closes than a page holds, bursts of
    /// opens past the headroom): the list a sweep takes for a server is one whole reply, so
    /// every connection open throughout is in it exactly once; or the server is given up on
    /// (an error, the sweep partial), and only when it grew past the headroom every time.
    /// A server never takes more than the PING and [`MAX_DIRECTED`] directed requests.
    #[test]
    fn pager_keeps_every_surviving_cid_once(
        initial in 0usize..3000,
        page_size in 1usize..600,
        closes in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..400), 1..4),
        opens in prop::collection::vec(prop_oneof![0usize..50, 0usize..2000], 1..4),
    ) {
        snapshot_run(initial, page_size, &closes, &opens)?;
    }

    /// The real page parser over the shapes a hostile responder sends: any JSON in place of
    /// the connections, totals and offsets (huge, negative), never a panic or a broken promise.
    #[test]
    fn page_parser_survives_hostile_data(
        total in prop_oneof![any::<u64>().prop_map(Value::from), any::<i64>().prop_map(Value::from), any_json()],
        offset in prop_oneof![Just(json!(0)), any::<i64>().prop_map(Value::from), Just(json!(u64::MAX))],
        cids in prop::collection::vec(any::<u64>(), 0..12),
        extra in any_json(),
    ) {
        let conns: Vec<Value> = cids.iter().map(|c| json!({"cid": c, "ip": "1.2.3.4"})).collect();
        for data in [
            json!({"server_id": "N1", "total": total, "offset": offset, "connections": conns}),
            json!({"total": total, "connections": [extra.clone()]}),
            json!({"total": total, "connections": extra.clone()}),
        ] {
            parse_all(json!({"server": {"name": "n1", "id": "N1"}, "data": data}).to_string().as_bytes());
        }
    }
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
}

/// One server under churn, read the way a sweep reads it: a reply is the server's cid-sorted
/// list cut at the request's limit, with its `total`; [`next_fetch`] decides the next request.
fn snapshot_run(
    initial: usize,
    page_size: usize,
    closes: &[Vec<prop::sample::Index>],
    opens: &[usize],
) -> Result<(), TestCaseError> {
    let mut open: Vec<u64> = (1..=initial as u64).collect();
    let mut next_cid = initial as u64 + 1;
    let mut closed = HashSet::new();
    let reply = |open: &[u64], limit: usize| -> (u64, Vec<u64>) {
        (
            open.len() as u64,
            open.iter().copied().take(limit).collect(),
        )
    };
    let (mut total, mut got) = reply(&open, page_size);
    let mut directed = 0;
    let mut grew_past_headroom = 0;
    let kept = loop {
        match next_fetch(total, got.len() as u64, directed, 1_000_000) {
            NextFetch::Done => break Some(got),
            NextFetch::GiveUp(_) => break None,
            NextFetch::Fetch { limit } => {
                // Between two requests: some connections close, some open (new cids are higher).
                let step = directed as usize;
                for pick in &closes[step % closes.len()] {
                    if !open.is_empty() {
                        closed.insert(open.remove(pick.index(open.len())));
                    }
                }
                let opened = opens[step % opens.len()];
                for _ in 0..opened {
                    open.push(next_cid);
                    next_cid += 1;
                }
                directed += 1;
                prop_assert!(
                    directed <= MAX_DIRECTED,
                    "more directed requests than allowed"
                );
                let before = total;
                (total, got) = reply(&open, limit as usize);
                if total > before + headroom(before) {
                    grew_past_headroom += 1;
                }
            }
        }
    };
    let Some(kept) = kept else {
        prop_assert_eq!(
            grew_past_headroom,
            MAX_DIRECTED,
            "given up without outgrowing the headroom"
        );
        return Ok(());
    };
    prop_assert_eq!(&kept, &open, "the list kept is not one whole snapshot");
    let unique: HashSet<u64> = kept.iter().copied().collect();
    prop_assert_eq!(unique.len(), kept.len(), "a cid was kept twice");
    for cid in (1..=initial as u64).filter(|c| !closed.contains(c)) {
        prop_assert!(
            unique.contains(&cid),
            "cid {} open throughout was skipped",
            cid
        );
    }
    Ok(())
}

/// Names no NATS subject token may hold, and some that are merely long or foreign.
fn hostile_names() -> Vec<String> {
    vec![
        "team.a b".into(),
        "a.b.c".into(),
        "*".into(),
        ">".into(),
        "a.>".into(),
        "svc *1>".into(),
        " ".into(),
        "".into(),
        "%".into(),
        "%2E".into(),
        "tab\tnl\ncr\r".into(),
        "\u{0}\u{1}\u{7f}".into(),
        "\u{1b}[31mred".into(),
        "ünïcødé".into(),
        "日本語のユーザー".into(),
        "emoji 🚀".into(),
        "\u{202e}rtl".into(),
        "\"quoted\" \\ back".into(),
        "x".repeat(10_000),
        format!("{}y", "x".repeat(9_999)),
    ]
}

fn conn(server: usize, cid: u64, account: &str, user: &str, name: &str) -> Connection {
    Connection {
        server: format!("n{server}").into(),
        server_id: format!("NSERVER{server}").into(),
        cid,
        kind: "Client".into(),
        ip: "127.0.0.1".into(),
        start: Some(Stamp::of(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        )),
        idle: Duration::from_secs(3600),
        in_msgs: 0,
        out_msgs: 0,
        name: name.into(),
        account: account.into(),
        account_name: Some(account.into()),
        user: user.into(),
        user_name: Some(user.into()),
        tags: vec![name.into()],
        ..Connection::default()
    }
}

#[test]
fn hostile_names_flow_through_census_rules_advisories_and_report_json() {
    let names = hostile_names();
    let mut connections = Vec::new();
    let mut cid = 0;
    // Each name as an account, a user and a client name, over the threshold so findings fire.
    for (i, n) in names.iter().enumerate() {
        for _ in 0..4 {
            cid += 1;
            connections.push(conn(1 + i % 3, cid, n, n, n));
            cid += 1;
            connections.push(conn(
                1 + i % 3,
                cid,
                "APP",
                n,
                &names[(i + 1) % names.len()],
            ));
        }
    }
    let detect = DetectConfig {
        max_connections_per_user: 2,
        idle_threshold: Duration::from_secs(1),
        ..DetectConfig::default()
    };
    let census = census::build(&connections, Some("SYS"), &detect);
    assert_eq!(census.connections, connections.len() as u64);
    let findings = rules::evaluate(&census, &detect, &Context::default());
    assert!(
        findings.len() >= names.len(),
        "only {} findings for {} hostile users",
        findings.len(),
        names.len()
    );
    let now = Utc::now();
    let events = Lifecycle::default().step(&findings, true, now, Duration::from_secs(60));
    assert_eq!(events.len(), findings.len());

    let snap = Snapshot {
        started: Some(now),
        servers_expected: 3,
        servers: (1..=3)
            .map(|i| ServerSeen {
                name: format!("n{i}"),
                id: format!("NSERVER{i}"),
                connections: 1,
                pages: 1,
            })
            .collect(),
        connections: connections.clone(),
        ..Snapshot::default()
    };
    let sweep = Completeness::of(&snap);
    let mut subjects = HashSet::new();
    for e in &events {
        let a = advisory::from_event("connwatch.advisory", e, &sweep, now);
        let tokens: Vec<&str> = a.subject.split('.').collect();
        assert_eq!(
            tokens.len(),
            3 + e.finding.tokens.len(),
            "a name spilled into extra tokens: {}",
            a.subject
        );
        for t in &tokens {
            assert!(valid_token(t), "invalid token {t:?} in {}", a.subject);
        }
        assert!(
            subjects.insert(a.subject.clone()),
            "two findings share {}",
            a.subject
        );
        // The body is valid JSON that round-trips, with the raw names kept.
        let text = serde_json::to_string(&a.body).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a.body);
        if let Some(user) = back.get("user").and_then(Value::as_str) {
            assert!(
                names.iter().any(|n| n == user),
                "user name mangled: {user:?}"
            );
        }
    }

    // The report, as JSON and as a table.
    let report = Report::new(
        &snap,
        &census,
        &Filter {
            account: None,
            user: None,
            top: 0,
        },
    );
    let parsed: Value = serde_json::from_str(&report.to_json()).expect("report JSON is valid");
    assert_eq!(
        parsed["users"].as_array().unwrap().len(),
        census.users.len()
    );
    let _ = report.to_table();

    // Kick plans for these users build valid advisories too.
    for u in census.users.iter().take(5) {
        let _ = serde_json::to_string(u).unwrap();
    }
}
