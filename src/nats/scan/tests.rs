//! The scanner against the serde path of `page`: the same connections, heads and refusals over
//! page's own cases, generated replies, their truncations and single-byte corruptions.

use crate::stamp::Stamp;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::nats::page::serde_reference::{parse_page, parse_server_list};
use crate::nats::wire::jwt_name;
use crate::snapshot::Connection;

/// A connection as a user of the parse sees it, whichever parser made it.
#[derive(Debug, PartialEq)]
struct View {
    server: String,
    server_id: String,
    cid: u64,
    kind: String,
    ip: String,
    start: Option<DateTime<Utc>>,
    last_activity: Option<DateTime<Utc>>,
    /// Only when the reply gave `now` before its connections (else it is the parse's clock).
    idle: Option<Duration>,
    subscriptions: u32,
    in_msgs: u64,
    out_msgs: u64,
    name: String,
    account: String,
    account_name: Option<String>,
    user: String,
    user_name: Option<String>,
    tags: Vec<String>,
}

/// Everything a parse of a reply tells, or its refusal.
type Outcome = Result<(Option<u64>, usize, String, Option<String>, Vec<View>), ()>;

fn serde_view(c: &Connection, with_idle: bool) -> View {
    View {
        server: c.server.to_string(),
        server_id: c.server_id.to_string(),
        cid: c.cid,
        kind: c.kind.to_string(),
        ip: c.ip.to_string(),
        start: c.start.and_then(Stamp::time),
        last_activity: c.last_activity.and_then(Stamp::time),
        idle: with_idle.then_some(c.idle),
        subscriptions: c.subscriptions,
        in_msgs: c.in_msgs,
        out_msgs: c.out_msgs,
        name: c.name.to_string(),
        account: c.account.to_string(),
        account_name: c.account_name.as_ref().map(|s| s.to_string()),
        user: c.user.to_string(),
        user_name: c.user_name.as_ref().map(|s| s.to_string()),
        tags: c.tags.iter().map(|s| s.to_string()).collect(),
    }
}

fn scan_view(head: &Head, now: Option<Rfc3339>, c: &SweepConn) -> View {
    let utc = |t: Option<Rfc3339>| t.and_then(|t| t.0.time());
    let last = utc(c.last_activity);
    let own = |s: &Option<Cow<str>>, or: &str| s.as_deref().unwrap_or(or).to_string();
    View {
        server: head.server.name.clone(),
        server_id: head.server.id.clone(),
        cid: c.cid,
        kind: own(&c.kind, "Client"),
        ip: c.ip.to_string(),
        start: utc(c.start),
        last_activity: last,
        idle: now.map(|n| {
            last.and_then(|l| utc(Some(n))?.signed_duration_since(l).to_std().ok())
                .unwrap_or_default()
        }),
        subscriptions: c.subscriptions,
        in_msgs: c.in_msgs,
        out_msgs: c.out_msgs,
        name: own(&c.name, ""),
        account: own(&c.account, "$G"),
        account_name: c
            .name_tag
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(Into::into),
        user: own(&c.authorized_user, ""),
        user_name: c.jwt.as_deref().and_then(jwt_name),
        tags: c.tags.iter().flatten().map(|t| t.to_string()).collect(),
    }
}

/// What a test hands the scanner: collects what it is given, with the checks `page` makes
/// per connection (count within the limit, cids rising).
#[derive(Default)]
struct Collect {
    limit: usize,
    /// Keep only a whole list (`total` within `limit`), as a sweep.
    whole_only: bool,
    /// Keep nothing.
    skip_all: bool,
    now: Option<Rfc3339>,
    starts: Vec<(u64, bool, Option<String>)>,
    conns: Vec<SweepConn<'static>>,
    skipped: Vec<u64>,
    last_cid: Option<u64>,
    count: usize,
    /// Refuse the connection with this cid.
    refuse: Option<u64>,
}

impl Collect {
    fn check(&mut self, cid: u64) -> Result<(), String> {
        self.count += 1;
        if self.count > self.limit || self.last_cid.is_some_and(|l| cid <= l) {
            return Err("more than asked, or cids out of order".into());
        }
        if self.refuse == Some(cid) {
            return Err(format!("refused {cid}"));
        }
        self.last_cid = Some(cid);
        Ok(())
    }
}

impl Visit for Collect {
    fn list(&mut self, s: &ListStart) -> bool {
        self.now = s.now;
        let id = s.server.map(|s| s.id.clone());
        self.starts.push((s.total, s.now.is_some(), id));
        let partial = self.whole_only && s.total > self.limit as u64;
        !(self.skip_all || partial)
    }
    fn conn(&mut self, c: &SweepConn<'_>) -> Result<(), String> {
        self.check(c.cid)?;
        self.conns.push(owned(c));
        Ok(())
    }
    fn cid(&mut self, cid: u64) -> Result<(), String> {
        self.check(cid)?;
        self.skipped.push(cid);
        Ok(())
    }
}

/// `c` with texts of its own.
fn owned(c: &SweepConn) -> SweepConn<'static> {
    let own = |s: &Cow<str>| Cow::Owned(s.to_string());
    SweepConn {
        kind: c.kind.as_ref().map(own),
        ip: own(&c.ip),
        name: c.name.as_ref().map(own),
        authorized_user: c.authorized_user.as_ref().map(own),
        account: c.account.as_ref().map(own),
        name_tag: c.name_tag.as_ref().map(own),
        tags: c.tags.as_ref().map(|t| t.iter().map(own).collect()),
        jwt: c.jwt.as_ref().map(own),
        ..*c
    }
}

/// Ways to frame a reply as a snappy stream (chunk size) and read it (bytes kept in hand).
const FRAMINGS: [(usize, usize); 5] = [(1, 1), (7, 16), (64, 1), (1000, 100), (65_536, AHEAD)];

/// Parses `payload` with a [`Collect`] of `limit`, as it is and (every short payload, a third
/// of the long ones) framed as a snappy stream, one of [`FRAMINGS`] picked by the payload's
/// length and the limit so that many payloads meet them all: both reading the same.
fn collect(payload: &[u8], limit: usize, whole_only: bool) -> (Result<Head, String>, Collect) {
    let run = |payload: Payload, ahead: usize| {
        let mut c = Collect {
            limit,
            whole_only,
            ..Collect::default()
        };
        (read(payload, &mut c, ahead), c)
    };
    let plain = run(Payload::Plain(payload), AHEAD);
    let pick = payload.len() + limit + usize::from(whole_only);
    // The truncation test reads ~360,000 payloads: a third of the longer ones are framed too.
    if payload.len() > 512 && pick % 3 != 0 {
        return plain;
    }
    let (size, ahead) = FRAMINGS[pick / 3 % FRAMINGS.len()];
    {
        let framed = crate::nats::snappy::framed_in_chunks(payload, size);
        let (head, c) = run(Payload::Snappy(&framed), ahead);
        let what = format!("chunks of {size}, {ahead} ahead");
        assert_eq!(head.is_ok(), plain.0.is_ok(), "{what}: {head:?}");
        if let (Ok(a), Ok(b)) = (&head, &plain.0) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}");
        }
        assert_eq!(c.conns.len(), plain.1.conns.len(), "{what}");
        for (a, b) in c.conns.iter().zip(&plain.1.conns) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}");
        }
        assert_eq!(
            (&c.skipped, &c.starts, c.count),
            (&plain.1.skipped, &plain.1.starts, plain.1.count),
            "{what}"
        );
    }
    plain
}

/// The scanner with the checks `page` makes around its parse (size, count, cid order, one
/// server id, count within `total`), as `page::parse` will make them around this one.
fn scan(payload: &[u8], limit: usize, whole_only: bool) -> (Outcome, Option<Rfc3339>) {
    if payload.len() > limit * 16 * 1024 + 64 * 1024 {
        return (Err(()), None);
    }
    let (head, c) = collect(payload, limit, whole_only);
    let Ok(head) = head else {
        return (Err(()), c.now);
    };
    if let Some(total) = head.total {
        let other_id = head.data_server_id.as_deref();
        if head.server.id.is_empty()
            || other_id.is_some_and(|id| !id.is_empty() && id != head.server.id)
            || head.count as u64 > total
        {
            return (Err(()), c.now);
        }
    }
    let views = c.conns.iter().map(|x| scan_view(&head, c.now, x)).collect();
    let error = head.error.map(|e| format!("{} {}", e.code, e.description));
    let out = (head.total, head.count, head.server.name, error, views);
    (Ok(out), c.now)
}

/// `page`'s serde parse of the same reply.
fn serde(payload: &[u8], limit: usize, whole_only: bool, with_idle: bool) -> Outcome {
    let mut out = Vec::new();
    let head = if whole_only {
        parse_server_list(Payload::Plain(payload), &mut out, limit)
    } else {
        parse_page(payload, &mut out, limit, true)
    }
    .map_err(|_| ())?;
    let views = out.iter().map(|c| serde_view(c, with_idle)).collect();
    let error = head.error.map(|e| format!("{} {}", e.code, e.description));
    Ok((head.total, head.count, head.server.name, error, views))
}

/// Both parsers over `payload`; `None` when they agree, else what each said.
fn disagreement(payload: &[u8], limit: usize, whole_only: bool) -> Option<String> {
    let (mine, now) = scan(payload, limit, whole_only);
    let theirs = serde(payload, limit, whole_only, now.is_some());
    (mine != theirs).then(|| format!("scan: {mine:?}\nserde: {theirs:?}"))
}

fn agree(payload: &[u8], what: &str) {
    for (limit, whole_only) in [(1000, false), (1000, true), (2, false), (2, true)] {
        if let Some(d) = disagreement(payload, limit, whole_only) {
            panic!(
                "{what} (limit {limit}, whole_only {whole_only}): {}\n{d}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}

/// A tiny deterministic generator (xorshift64*).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True `pct` times in a hundred.
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.below(from.len())]
    }

    /// A JSON string (quoted) of plain text, raw UTF-8 and every kind of escape.
    fn text(&mut self) -> String {
        let parts = [
            "a",
            "worker-17",
            "é",
            "µs",
            r#"\""#,
            r"\\",
            r"\/",
            r"\n",
            r"\u00e9",
            r"\u0041",
            r"\ud83d\ude00",
            "日本",
            " ",
            "10.0.0.1",
        ];
        let mut s = String::from("\"");
        for _ in 0..self.below(4) {
            s.push_str(self.pick(&parts));
        }
        if self.chance(1) {
            s.push_str(self.pick(&[r"\ud800", r"\udc00x", r"\ud800\u0041", r"\q"]));
        }
        s.push('"');
        s
    }

    /// A value nobody reads: scalars, and arrays and objects nested a few deep.
    fn junk(&mut self, depth: usize) -> String {
        let scalars = [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "1.5",
            "-0.25e-3",
            "1E9",
            "12345678901234567890123",
            "0.0",
        ];
        match self.below(if depth > 3 { 3 } else { 6 }) {
            0 => self.pick(&scalars).to_string(),
            1 | 2 => self.text(),
            3 => {
                let items: Vec<String> = (0..self.below(4)).map(|_| self.junk(depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let items: Vec<String> = (0..self.below(4))
                    .map(|_| format!("{}:{}", self.text(), self.junk(depth + 1)))
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        }
    }

    fn time(&mut self) -> String {
        self.pick(&[
            r#""2026-11-26T11:39:30.92443371Z""#,
            r#""2026-11-26T11:39:31.426977993Z""#,
            r#""2026-11-26T11:39:30Z""#,
            r#""2026-11-26T12:39:30.5+01:00""#,
            r#""2026-11-26T11:39:30.000000001-05:30""#,
            r#""2026-11-26t11:39:30z""#,
            "null",
        ])
        .to_string()
    }

    fn number(&mut self) -> String {
        if self.chance(3) {
            return self
                .pick(&[
                    "18446744073709551615",
                    "18446744073709551616",
                    "-1",
                    "1.0",
                    "-0",
                    "01",
                    "\"1\"",
                    "null",
                    "4294967296",
                ])
                .to_string();
        }
        self.pick(&["0", "1", "42", "4294967295", "100000"])
            .to_string()
    }

    /// Fields as `(key, value)`, shuffled, some given twice.
    fn object(&mut self, mut fields: Vec<(String, String)>) -> String {
        for _ in 0..self.below(3) {
            fields.push((self.text(), self.junk(0)));
        }
        for i in (1..fields.len()).rev() {
            fields.swap(i, self.below(i + 1));
        }
        if self.chance(2) && !fields.is_empty() {
            let again = fields[self.below(fields.len())].clone();
            fields.push(again);
        }
        let ws = self.pick(&["", "", "", " ", "\n  "]);
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{ws}{k}{ws}:{ws}{v}"))
            .collect();
        format!("{{{}{ws}}}", body.join(","))
    }

    /// A key of a field that is there `pct` times in a hundred.
    fn maybe(&mut self, pct: usize, key: &str, value: String, out: &mut Vec<(String, String)>) {
        if self.chance(pct) {
            out.push((format!("\"{key}\""), value));
        }
    }

    fn conn(&mut self, cid: u64) -> String {
        let mut f = vec![("\"cid\"".to_string(), cid.to_string())];
        let k = self
            .pick(&[r#""Client""#, r#""Leafnode""#, "null"])
            .to_string();
        self.maybe(90, "kind", k, &mut f);
        self.maybe(50, "type", r#""nats""#.into(), &mut f);
        let ip = self.text();
        self.maybe(90, "ip", ip, &mut f);
        self.maybe(50, "port", "41244".into(), &mut f);
        for key in ["start", "last_activity"] {
            let t = self.time();
            self.maybe(90, key, t, &mut f);
        }
        self.maybe(50, "rtt", r#""675µs""#.into(), &mut f);
        for key in ["in_msgs", "out_msgs", "subscriptions", "pending_bytes"] {
            let n = self.number();
            self.maybe(80, key, n, &mut f);
        }
        for key in ["name", "authorized_user", "account", "name_tag", "lang"] {
            let t = if self.chance(10) {
                "null".into()
            } else {
                self.text()
            };
            self.maybe(80, key, t, &mut f);
        }
        let tags = match self.below(4) {
            0 => "null".to_string(),
            1 => "[]".into(),
            _ => format!("[{},{}]", self.text(), self.text()),
        };
        self.maybe(40, "tags", tags, &mut f);
        let jwt = self
            .pick(&[JWT_ALICE, r#""not.a.jwt""#, "null"])
            .to_string();
        self.maybe(20, "jwt", jwt, &mut f);
        self.maybe(10, "subscriptions_list", r#"["a.b","c.>"]"#.into(), &mut f);
        self.object(f)
    }

    fn reply(&mut self) -> String {
        let mut cid = self.below(3) as u64;
        let n = self.below(5);
        let conns: Vec<String> = (0..n)
            .map(|_| {
                cid += if self.chance(3) {
                    0
                } else {
                    1 + self.below(3) as u64
                };
                self.conn(cid)
            })
            .collect();
        let mut data = vec![];
        let sid = self
            .pick(&[r#""NID""#, r#""OTHER""#, r#""""#, "null"])
            .to_string();
        self.maybe(60, "server_id", sid, &mut data);
        let now = self.time();
        self.maybe(80, "now", now, &mut data);
        self.maybe(50, "num_connections", n.to_string(), &mut data);
        let total = if self.chance(5) {
            self.number()
        } else {
            (n + self.below(3)).to_string()
        };
        self.maybe(90, "total", total, &mut data);
        let offset = self
            .pick(&["0", "0", "0", "7", "-0", "0.0", "null"])
            .to_string();
        self.maybe(50, "offset", offset, &mut data);
        let list = match self.below(10) {
            0 => "null".to_string(),
            _ => format!("[{}]", conns.join(",")),
        };
        self.maybe(95, "connections", list, &mut data);
        let mut server = vec![];
        let name = self.text();
        self.maybe(95, "name", name, &mut server);
        let id = self.pick(&[r#""NID""#, r#""NID""#, r#""""#]).to_string();
        self.maybe(90, "id", id, &mut server);
        self.maybe(50, "cluster", r#""c1""#.into(), &mut server);
        let mut env = vec![];
        let server = self.object(server);
        self.maybe(95, "server", server, &mut env);
        let data = if self.chance(5) {
            "null".into()
        } else {
            self.object(data)
        };
        self.maybe(90, "data", data, &mut env);
        let error = self
            .pick(&["null", r#"{"code":500,"description":"boom \u00e9"}"#])
            .to_string();
        self.maybe(10, "error", error, &mut env);
        self.object(env)
    }
}

/// A user JWT whose claims name "alice" (`{"name":"alice"}`, base64url).
const JWT_ALICE: &str = r#""eyJ0eXAiOiJKV1QifQ.eyJuYW1lIjoiYWxpY2UifQ.sig""#;

#[test]
fn page_cases_agree() {
    let conns = |cids: &[u64]| {
        let c: Vec<String> = cids.iter().map(|c| format!(r#"{{"cid":{c}}}"#)).collect();
        c.join(",")
    };
    let reply = |data: &str| format!(r#"{{"server":{{"name":"n1","id":"N1"}},"data":{data}}}"#);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = [
        r#"{"data":{"now":"2026-01-02T03:04:10Z","total":3,"connections":[
            {"cid":1,"ip":"10.0.0.1","account":"APP","authorized_user":"u","name":"w",
             "last_activity":"2026-01-02T03:04:05Z","start":"2026-01-02T03:00:00Z","subscriptions":2},
            {"cid":2,"ip":"10.0.0.2","authorized_user":"v","tags":["t"]}]},
            "server":{"name":"n1","id":"NID"}}"#
            .to_string(),
        r#"{"server":{"name":"n2"},"error":{"code":500,"description":"boom"}}"#.into(),
        r#"{"server":{"name":"n2","id":"N2"},"data":{"total":0,"connections":null}}"#.into(),
        r#"{"server":{},"data":{"connections":[{"cid":9},"#.into(),
        "\u{1f}\u{8b}garbage".into(),
        reply(&format!(r#"{{"total":1,"connections":{deep}}}"#)),
        reply(&format!(r#"{{"total":3,"connections":[{}]}}"#, conns(&[1, 2, 2]))),
        reply(&format!(r#"{{"total":3,"connections":[{}]}}"#, conns(&[3, 1]))),
        reply(&format!(r#"{{"total":9,"connections":[{}]}}"#, conns(&[1, 2, 3, 4, 5, 6]))),
        reply(&format!(r#"{{"total":1,"connections":[{}]}}"#, conns(&[1, 2]))),
        reply(r#"{"total":-1,"connections":[]}"#),
        reply(r#"{"total":1,"offset":-5,"connections":[]}"#),
        reply(r#"{"total":1,"offset":18446744073709551615,"connections":[]}"#),
        reply(r#"{"total":1,"offset":7,"connections":[]}"#),
        reply(r#"{"server_id":"N2","total":0,"connections":[]}"#),
        r#"{"server":{"name":"n1"},"data":{"total":0}}"#.into(),
        format!(
            r#"{{"server":{{"name":"n1","id":"N1"}},"data":{{"total":1,"connections":[{}]}},"data":{{"total":0}}}}"#,
            conns(&[1])
        ),
        reply(&format!(r#"{{"total":1,"pad":"{}","connections":[]}}"#, "x".repeat(200_000))),
        reply(r#"{"total":18446744073709551615,"connections":[{"cid":1}]}"#),
        reply(r#"{"total":9,"connections":[{"cid":1,"ip":"x"},{"cid":2}]}"#),
        // Escapes in every kind of read text, and in keys.
        reply(
            r#"{"total":1,"connections":[{"c\u0069d":1,"ip":"a\"b\\c","name":"\u00e9\ud83d\ude00",
            "tags":["\/t\n"],"account":"é","name_tag":""}]}"#,
        ),
        // Lone surrogates: refused in a text that is read, skipped where it is not.
        reply(r#"{"total":1,"connections":[{"cid":1,"name":"\ud800"}]}"#),
        reply(r#"{"total":1,"connections":[{"cid":1,"lang":"\ud800"}]}"#),
        reply(r#"{"total":1,"connections":[{"cid":1,"name":"\udc00"}]}"#),
        reply(r#"{"total":1,"connections":[{"cid":1,"name":"\ud800\u0041"}]}"#),
        // Invalid JSON inside skipped values.
        reply(r#"{"total":1,"x":[1,],"connections":[]}"#),
        reply(r#"{"total":1,"x":{"a":1,},"connections":[]}"#),
        reply(r#"{"total":1,"x":tru,"connections":[]}"#),
        reply(r#"{"total":1,"x":"a
b","connections":[]}"#),
        reply(r#"{"total":1,"x":01,"connections":[]}"#),
        reply(r#"{"total":1,"x":1.,"connections":[]}"#),
        reply(r#"{"total":1,"x":-,"connections":[]}"#),
        reply(r#"{"total":1,"x":1e,"connections":[]}"#),
        reply(r#"{"total":1,"x":"\x","connections":[]}"#),
        reply(r#"{"total":1,"x":"\u12G4","connections":[]}"#),
        reply(r#"{"total":1,"x":{1:2},"connections":[]}"#),
        reply(r#"{"total":1,"connections":[]} x"#),
        reply(r#"{"total":1,"connections":[]}}"#),
        // Numbers at the edges of their types.
        reply(r#"{"total":2,"connections":[{"cid":1,"subscriptions":4294967295}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"subscriptions":4294967296}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":18446744073709551616}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"in_msgs":1.0}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"in_msgs":-0}]}"#),
        reply(r#"{"total":1,"offset":0,"connections":[]}"#),
        reply(r#"{"total":1,"offset":-0,"connections":[]}"#),
        // Nulls, missing and duplicate fields.
        reply("null"),
        reply("{}"),
        r#"{"data":{"total":0},"server":{"name":"n","id":"N"}}"#.into(),
        r#"{"server":null,"data":null}"#.into(),
        r#"{"server":{"name":"n","id":"N"},"error":null,"error":null}"#.into(),
        reply(r#"{"total":2,"connections":[{"cid":1,"ip":null}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"name":"a","name":"b"}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"lang":"a","lang":"b"}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"start":"yesterday"}]}"#),
        reply(r#"{"total":2,"connections":[null]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1,"tags":[null]}]}"#),
        reply(r#"{"total":2,"now":null,"now":"2026-01-02T03:04:10Z","connections":[{"cid":1}]}"#),
        reply(r#"{"total":2,"connections":[{"cid":1}],"connections":[]}"#),
        "{}".into(),
        "".into(),
        " {} ".into(),
        "[]".into(),
    ];
    for (i, case) in cases.iter().enumerate() {
        agree(case.as_bytes(), &format!("case {i}"));
    }
    // Invalid UTF-8: refused in read texts and keys, not checked in skipped strings (as serde).
    for (bytes, ok) in [
        (&b"\"name\":\"\xff\""[..], false),
        (&b"\"lang\":\"\xff\""[..], true),
        (&b"\"\xff\":1"[..], false),
        (&b"\"x\":{\"\xff\":1}"[..], true),
    ] {
        let mut payload =
            br#"{"server":{"name":"n1","id":"N1"},"data":{"total":1,"connections":[{"cid":1,"#
                .to_vec();
        payload.extend_from_slice(bytes);
        payload.extend_from_slice(b"}]}}");
        agree(&payload, "invalid UTF-8");
        assert_eq!(
            scan(&payload, 5, false).0.is_ok(),
            ok,
            "{}",
            String::from_utf8_lossy(&payload)
        );
    }
}

#[test]
fn generated_replies_agree() {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut conns) = (0, 0);
    for i in 0..20_000 {
        let r = g.reply();
        agree(r.as_bytes(), &format!("reply {i}"));
        if let (Ok(out), _) = scan(r.as_bytes(), 1000, false) {
            accepted += 1;
            conns += out.4.len();
        }
    }
    // The generator must make both kinds, and connections to compare.
    assert!(accepted > 2_000 && accepted < 19_000, "{accepted} accepted");
    assert!(conns > 2_000, "{conns} connections");
}

#[test]
fn truncated_and_corrupted_replies_never_panic_and_agree() {
    let mut g = Gen(7);
    let mut valid = Vec::new();
    while valid.len() < 60 {
        let r = g.reply();
        if scan(r.as_bytes(), 1000, false)
            .0
            .is_ok_and(|o| !o.4.is_empty())
        {
            valid.push(r.into_bytes());
        }
    }
    let bytes = [
        b'"', b'\\', b',', b':', b'{', b'}', b'[', b']', b' ', b'0', b'9', b'-', b'.', b'e', b'n',
        b'u', b'x', 0x01, 0x7f, 0xc3, 0xff,
    ];
    for r in &valid {
        for len in 0..r.len() {
            agree(&r[..len], "truncation");
        }
        for _ in 0..400 {
            let mut bad = r.clone();
            let at = g.below(bad.len());
            bad[at] = bytes[g.below(bytes.len())];
            agree(&bad, "corruption");
        }
    }
}

#[test]
fn hostile_nesting_is_refused_at_a_bounded_depth_without_recursion() {
    let nested = |open: &str, close: &str, n: usize| {
        format!(
            r#"{{"server":{{"name":"n1","id":"N1"}},"data":{{"total":0,"x":{}1{},"connections":[]}}}}"#,
            open.repeat(n),
            close.repeat(n)
        )
    };
    let ok = |s: String| collect(s.as_bytes(), 1, false).0.is_ok();
    assert!(ok(nested("[", "]", 0)));
    assert!(ok(nested("[", "]", MAX_DEPTH)));
    assert!(ok(nested(r#"{"a":"#, "}", MAX_DEPTH)));
    assert!(!ok(nested("[", "]", MAX_DEPTH + 1)));
    assert!(!ok(nested(r#"{"a":"#, "}", MAX_DEPTH + 1)));
    // Far deeper than any stack would hold if it recursed: refused, not a crash. (serde
    // skips any depth: this is the one nesting the scanner refuses and serde does not.)
    assert!(!ok(nested("[", "]", 1_000_000)));
    assert!(serde(nested("[", "]", MAX_DEPTH + 1).as_bytes(), 1, false, false).is_ok());
    // A connection, `server` or `error` written as an array: serde would read it field by
    // field; no server writes it, so the scanner refuses it.
    for bad in [
        r#"{"server":["n1","N1"]}"#,
        r#"{"server":{"name":"n1","id":"N1"},"error":[500,"boom"]}"#,
        r#"{"server":{"name":"n1","id":"N1"},"data":{"total":1,"connections":[[1]]}}"#,
    ] {
        assert!(collect(bad.as_bytes(), 5, false).0.is_err(), "{bad}");
    }
}

#[test]
fn the_visitor_sees_the_list_start_and_can_stop_the_parse() {
    let payload = br#"{"server":{"name":"n1","id":"N1"},"data":{"now":"2026-01-02T03:04:10Z",
        "total":5,"connections":[{"cid":1},{"cid":2,"name":"w"}]}}"#;
    let (head, c) = collect(payload, 5, false);
    let head = head.unwrap();
    assert_eq!(c.starts, vec![(5, true, Some("N1".into()))]);
    let seen: Vec<_> = c.conns.iter().map(|c| (c.cid, c.name.as_deref())).collect();
    assert_eq!(seen, vec![(1, None), (2, Some("w"))]);
    assert_eq!(
        (head.count, head.total, head.server_late),
        (2, Some(5), false)
    );
    assert!(head.now.is_some());
    // Not kept: only the cids, counted all the same.
    let mut skip = Collect {
        limit: 5,
        skip_all: true,
        ..Collect::default()
    };
    let head = reply(Payload::Plain(payload), &mut skip).unwrap();
    assert_eq!(
        (skip.skipped, skip.conns.len(), head.count),
        (vec![1, 2], 0, 2)
    );
    // `data` before `server`: the list starts with no server, and the head says so.
    let late =
        br#"{"data":{"total":1,"connections":[{"cid":1}]},"server":{"name":"n1","id":"N1"}}"#;
    let (head, c) = collect(late, 5, false);
    assert_eq!(c.starts, vec![(1, false, None)]);
    assert!(head.unwrap().server_late);
    // A refusal of the visitor stops the parse, and is what the parse says.
    let mut stop = Collect {
        limit: 5,
        refuse: Some(2),
        ..Collect::default()
    };
    let err = reply(Payload::Plain(payload), &mut stop).unwrap_err();
    assert!(err.contains("refused 2"), "{err}");
    assert_eq!(stop.conns.len(), 1);
}

#[test]
fn keys_out_of_the_last_connections_order_are_read_as_they_are() {
    // Each connection after the first breaks the guess from the one before at some place: keys
    // swapped, a key sharing a prefix with the guessed one, the guessed key escaped or given
    // with spaces, a key too long to guess, a missing key, an unknown one.
    let conns = [
        r#"{"cid":1,"name":"a","name_tag":"T","ip":"10.0.0.1","account":"A","authorized_user":"u"}"#,
        r#"{"cid":2,"name_tag":"T","name":"b","ip":"10.0.0.2","account":"A","authorized_user":"u"}"#,
        r#"{"cid":3,"name":"c","name_tagx":"T","ip":"10.0.0.3","account":"A","authorized_user":"u"}"#,
        r#"{"c\u0069d":4,"name":"d","name_tag":"T","ip":"10.0.0.4","account":"B","authorized_user":"v"}"#,
        r#"{ "cid" :5,"name":"e","name_tag":"T","ip" : "10.0.0.5","account":"B","authorized_user":"v"}"#,
        r#"{"cid":6,"name":"f","ip":"10.0.0.6","account":"B","authorized_user":"v","name_tag":"T"}"#,
        r#"{"cid":7,"nam":"g","name":"g","ip":"10.0.0.7","account":"B"}"#,
        r#"{"cid":8,"name":"h","name_tag":"T","ip":"10.0.0.8","account":"A","authorized_user":"u"}"#,
    ];
    let payload = format!(
        r#"{{"server":{{"name":"n1","id":"NID"}},"data":{{"server_id":"NID","now":"2026-01-02T03:04:10Z","total":{},"connections":[{}]}}}}"#,
        conns.len(),
        conns.join(",")
    );
    agree(payload.as_bytes(), "keys out of order");
    let (head, c) = collect(payload.as_bytes(), 100, true);
    assert_eq!(head.unwrap().count, conns.len());
    let got: Vec<(u64, &str, Option<&str>, &str)> = c
        .conns
        .iter()
        .map(|c| {
            let name = c.name.as_deref().unwrap_or_default();
            (
                c.cid,
                name,
                c.name_tag.as_deref(),
                c.account.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "a", Some("T"), "A"),
            (2, "b", Some("T"), "A"),
            (3, "c", None, "A"),
            (4, "d", Some("T"), "B"),
            (5, "e", Some("T"), "B"),
            (6, "f", Some("T"), "B"),
            (7, "g", None, "B"),
            (8, "h", Some("T"), "A"),
        ]
    );
    // The same key twice is refused even when the second is read by a guess.
    let twice = payload.replace(r#""cid":8,"name":"h""#, r#""cid":8,"cid":9"#);
    assert!(collect(twice.as_bytes(), 100, true).0.is_err());
    agree(twice.as_bytes(), "a key given twice");
}
