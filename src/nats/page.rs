//! The streaming CONNZ page parser: a reply goes straight into a list of connections, checked as
//! it is read (size, count, cid order, offset, one server id), so nothing is held twice and a
//! bad reply leaves the list as it was.

use bytes::Bytes;
use chrono::Utc;

use super::scan;
use super::snappy::Payload;
use super::wire::{jwt_name, ApiError, ConnzRequest, ServerInfo, SweepConn};
use crate::census::Aggregate;
use crate::connlist::ConnList;
use crate::intern::{FxBuild, Interner, Str};
use crate::snapshot::{ConnRef, Connection, IpText, Tags};
use crate::stamp::Stamp;

/// Bytes a reply may hold per connection asked for (plus [`REPLY_SLACK`]): a real connection
/// with a JWT and tags takes a few KiB; a bigger reply is refused unparsed.
const MAX_BYTES_PER_CONNECTION: usize = 16 * 1024;
/// Room in a reply for its envelope.
const REPLY_SLACK: usize = 64 * 1024;
/// The body of a CONNZ request for one user's connections (up to `limit`), filtered by the
/// server with `acc` and `user`: a reply of a few connections instead of the server's list.
pub fn connz_user_body(limit: usize, acc: &str, user: &str) -> Bytes {
    let req = ConnzRequest {
        auth: true,
        limit,
        sort: "cid",
        acc: Some(acc.to_string()),
        user: Some(user.to_string()),
        ..ConnzRequest::default()
    };
    Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"))
}

/// The body of a CONNZ request from `offset` for up to `limit` connections, sorted by cid, with
/// their users (`auth`).
pub fn connz_body(limit: usize, offset: usize) -> Bytes {
    let req = ConnzRequest {
        auth: true,
        limit,
        offset,
        sort: "cid",
        ..ConnzRequest::default()
    };
    Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"))
}
/// What a CONNZ reply said besides its connections (which went to the snapshot already).
#[derive(Debug, Default)]
pub(crate) struct PageHead {
    /// Who answered.
    pub server: ServerInfo,
    /// The error envelope, if any.
    pub error: Option<ApiError>,
    /// `data.total`; `None` when the reply has no `data`.
    pub total: Option<u64>,
    /// Connections in the reply.
    pub count: usize,
}

/// What the parser learns while it reads, for the checks a reply must pass.
#[derive(Debug, Default)]
struct PageStats {
    /// Connections read.
    count: usize,
    /// The highest cid read: cids must rise strictly (`sort: cid`), so none is counted twice.
    last_cid: Option<u64>,
    /// Most connections the reply may hold: the `limit` asked for.
    limit: usize,
    /// Reserve room for the reply's connections before the first one.
    reserve: bool,
    /// Only a whole list is wanted: a reply whose `total` (read before its connections) is
    /// above `limit` has its connections counted and checked, not converted.
    whole_only: bool,
    /// `data` came before `server` (nats-server writes `server` first).
    server_late: bool,
    /// `data.server_id`, when given.
    data_server_id: Option<String>,
    /// For a census, the connections read before `server` (converted, to be counted once the
    /// server is known).
    late: Vec<Connection>,
}

fn invalid(msg: impl std::fmt::Display) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(msg)
}

/// Parses one CONNZ reply straight into `out`: each connection is converted from the reply's
/// borrowed strings as it is read, so neither the page's connections nor their strings are
/// ever held twice. `limit` is what was asked for: a reply is refused (an error, `out` left as
/// it was) when it is bigger than that many connections can be, holds more connections than
/// that or than its own `total`, lists cids out of order or twice, says an offset other than
/// 0, or names two different server ids.
pub(crate) fn parse_page(
    payload: &[u8],
    out: &mut Vec<Connection>,
    limit: usize,
    reserve: bool,
) -> Result<PageHead, serde_json::Error> {
    let payload = Payload::Plain(payload);
    parse(payload, Sink::List(out), limit, reserve, false, scan_read)
}

/// [`parse_page`] for a sweep, which keeps a server's connections only when one reply holds
/// them all (its `total` is the server's count): a reply whose `total` is above `limit` cannot,
/// so its connections are counted and checked but not converted (`out` is left as it was).
/// Room for the reply's connections is reserved up front.
pub(crate) fn parse_server_list(
    payload: Payload<'_>,
    out: &mut Vec<Connection>,
    limit: usize,
) -> Result<PageHead, serde_json::Error> {
    parse(payload, Sink::List(out), limit, true, true, scan_read)
}

/// [`parse_server_list`] into a census instead of a list: no connection is built. On an error
/// `census` holds part of the reply: the caller throws it away (one census per reply).
pub(crate) fn parse_server_census(
    payload: Payload<'_>,
    census: &mut Aggregate,
    limit: usize,
) -> Result<PageHead, serde_json::Error> {
    parse(payload, Sink::Census(census), limit, false, true, scan_read)
}

/// [`parse_server_list`] into a compact list ([`ConnList`]): each connection goes in as it is
/// read, its texts looked up in the list's table, so no [`Connection`] is built.
pub(crate) fn parse_server_compact(
    payload: Payload<'_>,
    out: &mut ConnList,
    limit: usize,
) -> Result<PageHead, serde_json::Error> {
    parse(payload, Sink::Compact(out), limit, true, true, scan_read)
}

/// Where a reply's connections go.
enum Sink<'s> {
    /// Converted into connections, their texts shared within the reply.
    List(&'s mut Vec<Connection>),
    /// Into a compact list, its texts shared within the list.
    Compact(&'s mut ConnList),
    /// Counted into a census, read from the reply's own texts.
    Census(&'s mut Aggregate),
}

impl Sink<'_> {
    fn len(&self) -> usize {
        match self {
            Self::List(out) => out.len(),
            Self::Compact(out) => out.len(),
            Self::Census(_) => 0,
        }
    }
}

fn parse(
    payload: Payload<'_>,
    mut sink: Sink,
    limit: usize,
    reserve: bool,
    whole_only: bool,
    read: impl FnOnce(Payload, &mut Sink, &mut PageStats) -> Result<PageHead, serde_json::Error>,
) -> Result<PageHead, serde_json::Error> {
    let max_bytes = limit
        .saturating_mul(MAX_BYTES_PER_CONNECTION)
        .saturating_add(REPLY_SLACK);
    let len = payload
        .len()
        .ok_or_else(|| invalid("a snappy reply that is not a framed stream"))?;
    if len > max_bytes {
        return Err(invalid(format!(
            "reply of {len} bytes is too big for {limit} connections"
        )));
    }
    let start = sink.len();
    let mut stats = PageStats {
        limit,
        reserve,
        whole_only,
        ..PageStats::default()
    };
    let parsed = read(payload, &mut sink, &mut stats).and_then(|mut head| {
        head.count = stats.count;
        check_page(&head, &stats).map(|()| head)
    });
    let head = match (parsed, &mut sink) {
        (Ok(head), _) => head,
        (Err(e), Sink::List(out)) => {
            out.truncate(start);
            return Err(e);
        }
        (Err(e), Sink::Compact(out)) => {
            out.truncate(start);
            return Err(e);
        }
        (Err(e), Sink::Census(_)) => return Err(e),
    };
    if stats.server_late {
        if let Sink::Compact(out) = &mut sink {
            out.set_server(start, &head.server.name, &head.server.id);
            return Ok(head);
        }
        let (name, id) = (Str::from(&head.server.name), Str::from(&head.server.id));
        let late = match &mut sink {
            Sink::List(out) => &mut out[start..],
            Sink::Compact(_) | Sink::Census(_) => &mut stats.late[..],
        };
        for c in late.iter_mut() {
            c.server.clone_from(&name);
            c.server_id.clone_from(&id);
        }
        if let Sink::Census(census) = sink {
            for c in &stats.late {
                census.add(&c.view());
            }
        }
    }
    Ok(head)
}

/// One CONNZ reply as a sweep reads it ([`parse_reply`]).
#[derive(Debug)]
pub struct ParsedReply {
    /// Who answered.
    pub server: ServerInfo,
    /// The error envelope, if any.
    pub error: Option<ApiError>,
    /// `data.total`; `None` when the reply has no `data`.
    pub total: Option<u64>,
    /// The connections, in the order (rising cid) of the reply.
    pub connections: Vec<Connection>,
}

/// Parses a CONNZ reply to a request for at most `limit` connections with the sweep's own
/// streaming parser and checks (for tests and fuzzing; the sweep parses into its list).
pub fn parse_reply(payload: &[u8], limit: usize) -> Result<ParsedReply, serde_json::Error> {
    let mut connections = Vec::new();
    let head = parse_page(payload, &mut connections, limit, true)?;
    Ok(ParsedReply {
        server: head.server,
        error: head.error,
        total: head.total,
        connections,
    })
}

/// The checks a parsed reply must pass beyond its shape.
fn check_page(head: &PageHead, stats: &PageStats) -> Result<(), serde_json::Error> {
    let Some(total) = head.total else {
        return Ok(());
    };
    if head.server.id.is_empty() {
        return Err(invalid("connz data without a server id"));
    }
    if stats
        .data_server_id
        .as_deref()
        .is_some_and(|id| !id.is_empty() && id != head.server.id)
    {
        return Err(invalid("connz reply names two server ids"));
    }
    if stats.count as u64 > total {
        return Err(invalid(format!(
            "{} connections but a total of {total}",
            stats.count
        )));
    }
    Ok(())
}

/// Reads a reply with the scanner into `sink`, counting and checking its connections in
/// `stats`; the checks of the whole reply are [`parse`]'s.
fn scan_read(
    payload: Payload,
    sink: &mut Sink,
    stats: &mut PageStats,
) -> Result<PageHead, serde_json::Error> {
    let mut fill = Fill {
        sink,
        stats,
        texts: Texts::default(),
        server: ServerInfo::default(),
        late: false,
        now: Stamp::default(),
    };
    let head = scan::reply(payload, &mut fill).map_err(invalid)?;
    stats.server_late = head.server_late;
    stats.data_server_id = head.data_server_id;
    Ok(PageHead {
        server: head.server,
        error: head.error,
        total: head.total,
        count: 0,
    })
}

/// Where the scanner hands a reply's connections ([`scan::reply`]): converted or counted into
/// the sink as they are read, checked (count, cid order) on the way.
struct Fill<'s, 'o> {
    sink: &'s mut Sink<'o>,
    stats: &'s mut PageStats,
    texts: Texts,
    /// Whose connections they are: the reply's `server` when it came before them.
    server: ServerInfo,
    /// `server` came after the connections (nats-server writes it first).
    late: bool,
    /// The server's clock (`data.now`, written before the connections), for idle times.
    now: Stamp,
}

impl scan::Visit for Fill<'_, '_> {
    fn list(&mut self, start: &scan::ListStart) -> bool {
        // More than the reply may hold (nats-server writes `total` first): not the whole
        // list, which is all a sweep keeps ([`parse_server_list`]).
        let partial = self.stats.whole_only && start.total > self.stats.limit as u64;
        if self.stats.reserve && !partial {
            // Never more than was asked for, whatever `total` claims.
            let want = (start.total.min(self.stats.limit as u64)) as usize;
            match &mut *self.sink {
                Sink::List(out) => {
                    let spare = out.capacity() - out.len();
                    out.reserve_exact(want.saturating_sub(spare));
                }
                Sink::Compact(out) => {
                    let spare = out.spare();
                    out.reserve_exact(want.saturating_sub(spare));
                }
                Sink::Census(_) => {}
            }
        }
        self.server = start.server.cloned().unwrap_or_default();
        self.late = start.server.is_none();
        self.now = start.now.map_or_else(|| Stamp::of(Utc::now()), |t| t.0);
        !partial
    }

    fn conn(&mut self, c: &SweepConn<'_>) -> Result<(), String> {
        self.stats.check(c.cid)?;
        let user_name = c.jwt.as_deref().and_then(|jwt| self.texts.jwt_name(jwt));
        let c = conn_ref(&self.server, self.now, c, user_name.as_deref());
        match &mut *self.sink {
            Sink::List(out) => out.push(c.to_connection(&mut self.texts.strs)),
            Sink::Compact(out) => out.push(&c),
            Sink::Census(_) if self.late => {
                self.stats.late.push(c.to_connection(&mut self.texts.strs));
            }
            Sink::Census(census) => census.add(&c),
        }
        Ok(())
    }

    fn cid(&mut self, cid: u64) -> Result<(), String> {
        self.stats.check(cid)
    }
}

impl PageStats {
    /// Counts one more connection with `cid`: an error when there are more than the limit, or
    /// its cid does not rise.
    fn check(&mut self, cid: u64) -> Result<(), String> {
        self.count += 1;
        if self.count > self.limit {
            return Err(format!(
                "more connections than the {} asked for",
                self.limit
            ));
        }
        if self.last_cid.is_some_and(|last| cid <= last) {
            return Err(format!("cid {cid} out of order or repeated"));
        }
        self.last_cid = Some(cid);
        Ok(())
    }
}

/// One connection of a reply as the census reads it, its texts borrowed from the reply.
fn conn_ref<'a>(
    server: &'a ServerInfo,
    now: Stamp,
    c: &'a SweepConn,
    user_name: Option<&'a str>,
) -> ConnRef<'a> {
    let last = c.last_activity.map(|t| t.0);
    let idle = last.map(|l| now.since(l)).unwrap_or_default();
    ConnRef {
        server: &server.name,
        server_id: &server.id,
        cid: c.cid,
        kind: c.kind.as_deref().unwrap_or("Client"),
        ip: IpText::Text(&c.ip),
        start: c.start.map(|t| t.0),
        idle,
        last_activity: last,
        subscriptions: c.subscriptions,
        in_msgs: c.in_msgs,
        out_msgs: c.out_msgs,
        name: c.name.as_deref().unwrap_or_default(),
        account: c.account.as_deref().unwrap_or("$G"),
        account_name: c.name_tag.as_deref().filter(|n| !n.is_empty()),
        user: c.authorized_user.as_deref().unwrap_or_default(),
        user_name,
        tags: c.tags.as_deref().map_or(Tags::default(), Tags::Read),
    }
}

/// The texts of one reply: each distinct one allocated once, and each user JWT's `name` decoded
/// once.
#[derive(Default)]
struct Texts {
    strs: Interner,
    /// Decoded JWT → its `name` claim.
    jwt_names: std::collections::HashMap<Str, Option<Str>, FxBuild>,
}

impl Texts {
    fn jwt_name(&mut self, jwt: &str) -> Option<Str> {
        if let Some(n) = self.jwt_names.get(jwt) {
            return n.clone();
        }
        let name = jwt_name(jwt).map(|n| self.strs.get(&n));
        self.jwt_names.insert(Str::from(jwt), name.clone());
        name
    }
}

#[cfg(test)]
pub(crate) mod serde_reference;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pages_parse_straight_into_connections_whatever_the_key_order() {
        let page = br#"{"data":{"now":"2026-01-02T03:04:10Z","total":3,"connections":[
            {"cid":1,"ip":"10.0.0.1","account":"APP","authorized_user":"u","name":"w",
             "last_activity":"2026-01-02T03:04:05Z","start":"2026-01-02T03:00:00Z","subscriptions":2},
            {"cid":2,"ip":"10.0.0.2","authorized_user":"v","tags":["t"]}]},
            "server":{"name":"n1","id":"NID"}}"#;
        let mut out = Vec::new();
        let head = parse_page(page, &mut out, 100, true).unwrap();
        assert_eq!((head.total, head.count), (Some(3), 2));
        assert_eq!(
            (out[0].server.as_str(), out[0].server_id.as_str()),
            ("n1", "NID")
        );
        assert_eq!(out[0].idle, Duration::from_secs(5));
        assert_eq!(
            (out[0].last_activity, out[0].subscriptions),
            (Some(crate::stamp::Stamp::new(1_767_323_045, 0)), 2)
        );
        assert_eq!(
            (out[0].account.as_str(), out[1].account.as_str()),
            ("APP", "$G")
        );
        assert_eq!(out[1].kind, "Client");
        assert_eq!(out[1].tags, vec!["t"]);

        let err = parse_page(
            br#"{"server":{"name":"n2"},"error":{"code":500,"description":"boom"}}"#,
            &mut out,
            5,
            false,
        )
        .unwrap();
        assert_eq!(
            (err.total, err.error.unwrap().description.as_str()),
            (None, "boom")
        );
        let empty = parse_page(
            br#"{"server":{"name":"n2","id":"N2"},"data":{"total":0,"connections":null}}"#,
            &mut out,
            5,
            false,
        )
        .unwrap();
        assert_eq!(empty.total, Some(0));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn broken_or_hostile_replies_are_refused_and_leave_the_list_as_it_was() {
        let conns = |cids: &[u64]| {
            cids.iter()
                .map(|c| format!(r#"{{"cid":{c}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        let reply = |data: &str| format!(r#"{{"server":{{"name":"n1","id":"N1"}},"data":{data}}}"#);
        let mut deep = "[".repeat(10_000);
        deep.push_str(&"]".repeat(10_000));
        let cases: Vec<(&str, String)> = vec![
            (
                "truncated",
                r#"{"server":{},"data":{"connections":[{"cid":9},"#.into(),
            ),
            ("not json", "\u{1f}\u{8b}garbage".into()),
            (
                "deep nesting",
                reply(&format!(r#"{{"total":1,"connections":{deep}}}"#)),
            ),
            (
                "repeated cid",
                reply(&format!(
                    r#"{{"total":3,"connections":[{}]}}"#,
                    conns(&[1, 2, 2])
                )),
            ),
            (
                "unsorted",
                reply(&format!(
                    r#"{{"total":3,"connections":[{}]}}"#,
                    conns(&[3, 1])
                )),
            ),
            (
                "more than asked",
                reply(&format!(
                    r#"{{"total":9,"connections":[{}]}}"#,
                    conns(&[1, 2, 3, 4, 5, 6])
                )),
            ),
            (
                "more than its total",
                reply(&format!(
                    r#"{{"total":1,"connections":[{}]}}"#,
                    conns(&[1, 2])
                )),
            ),
            ("negative total", reply(r#"{"total":-1,"connections":[]}"#)),
            (
                "negative offset",
                reply(r#"{"total":1,"offset":-5,"connections":[]}"#),
            ),
            (
                "absurd offset",
                reply(r#"{"total":1,"offset":18446744073709551615,"connections":[]}"#),
            ),
            (
                "another offset",
                reply(r#"{"total":1,"offset":7,"connections":[]}"#),
            ),
            (
                "two server ids",
                reply(r#"{"server_id":"N2","total":0,"connections":[]}"#),
            ),
            (
                "no server id",
                r#"{"server":{"name":"n1"},"data":{"total":0}}"#.into(),
            ),
            (
                "duplicate data",
                format!(
                    r#"{{"server":{{"name":"n1","id":"N1"}},"data":{{"total":1,"connections":[{}]}},"data":{{"total":0}}}}"#,
                    conns(&[1])
                ),
            ),
            (
                "too big",
                reply(&format!(
                    r#"{{"total":1,"pad":"{}","connections":[]}}"#,
                    "x".repeat(200_000)
                )),
            ),
        ];
        let mut out = vec![];
        parse_page(
            reply(&format!(
                r#"{{"total":2,"connections":[{}]}}"#,
                conns(&[1, 2])
            ))
            .as_bytes(),
            &mut out,
            5,
            false,
        )
        .unwrap();
        for (what, payload) in cases {
            assert!(
                parse_page(payload.as_bytes(), &mut out, 5, true).is_err(),
                "{what} accepted"
            );
            assert_eq!(out.len(), 2, "{what} left connections behind");
        }
        // A total near u64::MAX parses (it is a number) but reserves no more than was asked.
        let mut fresh = Vec::new();
        let head = parse_page(
            reply(r#"{"total":18446744073709551615,"connections":[{"cid":1}]}"#).as_bytes(),
            &mut fresh,
            5,
            true,
        )
        .unwrap();
        assert_eq!(head.total, Some(u64::MAX));
        assert!(fresh.capacity() <= 5, "reserved {}", fresh.capacity());
    }

    #[test]
    fn a_sweep_converts_no_connection_of_a_reply_that_cannot_be_whole() {
        let page = |cids: &str| {
            format!(
                r#"{{"server":{{"name":"n1","id":"NID"}},"data":{{"total":9,"connections":[{cids}]}}}}"#
            )
        };
        let mut out = vec![Connection::default()];
        let h = parse_server_list(
            Payload::Plain(page(r#"{"cid":1,"ip":"x"},{"cid":2}"#).as_bytes()),
            &mut out,
            2,
        )
        .unwrap();
        assert_eq!((h.total, h.count, out.len()), (Some(9), 2, 1));
        // Still checked: cids must rise, no more than asked for.
        for bad in [r#"{"cid":2},{"cid":1}"#, r#"{"cid":1},{"cid":2},{"cid":3}"#] {
            assert!(parse_server_list(Payload::Plain(page(bad).as_bytes()), &mut out, 2).is_err());
        }
        // A filtered reply's `total` is not its list's: parse_page converts whatever it holds.
        parse_page(page(r#"{"cid":1}"#).as_bytes(), &mut out, 2, true).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_snappy_reply_is_read_as_the_plain_one_and_a_broken_one_keeps_nothing() {
        let conns: Vec<String> = (1..=3000)
            .map(|cid| {
                format!(
                    r#"{{"cid":{cid},"ip":"10.0.0.{}","authorized_user":"u{}"}}"#,
                    cid % 200,
                    cid % 7
                )
            })
            .collect();
        let text = format!(
            r#"{{"server":{{"name":"n1","id":"NID"}},"data":{{"total":3000,"connections":[{}]}}}}"#,
            conns.join(",")
        );
        let mut framed = crate::nats::snappy::framed(text.as_bytes());
        assert!(
            text.len() > 2 * crate::nats::snappy::MAX_BLOCK,
            "several blocks"
        );
        let (mut plain, mut snappy) = (Vec::new(), vec![Connection::default()]);
        parse_server_list(Payload::Plain(text.as_bytes()), &mut plain, 5000).unwrap();
        let head = parse_server_list(Payload::Snappy(&framed), &mut snappy, 5000).unwrap();
        assert_eq!((head.total, head.count), (Some(3000), 3000));
        assert_eq!(&snappy[1..], &plain[..]);
        // A byte of the last block changed: its checksum fails after the first blocks' connections
        // were read, and none of them is kept.
        let last = framed.len() - 10;
        framed[last] ^= 0x55;
        let mut out = vec![Connection::default()];
        let err = parse_server_list(Payload::Snappy(&framed), &mut out, 5000).unwrap_err();
        assert!(err.to_string().contains("snappy"), "{err}");
        assert_eq!(out.len(), 1);
        let mut census = Aggregate::new(None, &crate::config::DetectConfig::default());
        assert!(parse_server_census(Payload::Snappy(&framed), &mut census, 5000).is_err());
        // Not a snappy stream at all: refused before any parse.
        let err = parse_server_list(Payload::Snappy(b"{}"), &mut out, 5).unwrap_err();
        assert!(err.to_string().contains("not a framed stream"), "{err}");
    }

    #[test]
    fn a_compact_list_reads_a_reply_as_the_list_does() {
        let server_last = br#"{"data":{"now":"2026-01-02T03:04:10.5Z","total":2,"connections":[
            {"cid":1,"ip":"10.0.0.1","account":"APP","authorized_user":"u","name":"w",
             "name_tag":"App","last_activity":"2026-01-02T03:04:05.25Z","start":"0001-01-01T00:00:00Z"},
            {"cid":2,"ip":"10.0.0.2","authorized_user":"v","tags":["t","s"],"kind":"Leafnode"}]},
            "server":{"name":"n1","id":"NID"}}"#;
        let (mut list, mut compact) = (Vec::new(), ConnList::default());
        let a = parse_server_list(Payload::Plain(server_last), &mut list, 5).unwrap();
        let b = parse_server_compact(Payload::Plain(server_last), &mut compact, 5).unwrap();
        assert_eq!((a.total, a.count), (b.total, b.count));
        assert_eq!(compact.get(0).unwrap().server_id, "NID");
        assert_eq!(compact.to_vec(), list);
        // A refused reply leaves it as it was.
        let bad = br#"{"server":{"name":"n2","id":"N2"},"data":{"total":2,"connections":[
            {"cid":2},{"cid":1}]}}"#;
        assert!(parse_server_compact(Payload::Plain(bad), &mut compact, 5).is_err());
        assert_eq!(compact.to_vec(), list);
    }
}
