//! Wire types of the NATS system API replies, as the server sends them.
//!
//! Every field is optional or defaulted: a server of another version, or a broken reply, must not
//! stop a sweep. What is missing shows up as empty values, never as a panic.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::stamp::Stamp;

/// The envelope of every `$SYS.REQ.SERVER.*` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Reply<T> {
    /// The server that answered.
    #[serde(default)]
    pub server: ServerInfo,
    /// The answer; absent when `error` is set.
    pub data: Option<T>,
    /// Set when the server could not answer.
    pub error: Option<ApiError>,
}

/// Who answered a system request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ServerInfo {
    /// Server name (`server_name`), unique in a well-run cluster.
    #[serde(default)]
    pub name: String,
    /// Server id (a public nkey); changes when the server restarts.
    #[serde(default)]
    pub id: String,
    /// Cluster name.
    #[serde(default)]
    pub cluster: Option<String>,
    /// JetStream domain, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Server version.
    #[serde(default)]
    pub ver: String,
}

/// The error part of a system reply.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ApiError {
    /// HTTP-like status code.
    #[serde(default)]
    pub code: i64,
    /// What went wrong, as the server says it.
    #[serde(default)]
    pub description: String,
}

/// The `data` of a CONNZ reply.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connz {
    /// The server's id.
    #[serde(default)]
    pub server_id: String,
    /// The server's clock when it built the reply.
    #[serde(default)]
    pub now: Option<DateTime<FixedOffset>>,
    /// Connections in this page.
    #[serde(default)]
    pub num_connections: u64,
    /// Connections matching the request on this server, over all pages.
    #[serde(default)]
    pub total: u64,
    /// Offset of this page.
    #[serde(default)]
    pub offset: u64,
    /// Limit of this page.
    #[serde(default)]
    pub limit: u64,
    /// The connections; `null` when there are none.
    #[serde(default)]
    pub connections: Option<Vec<ConnInfo>>,
}

/// One connection in a CONNZ reply.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnInfo {
    /// Connection id, unique per server run.
    #[serde(default)]
    pub cid: u64,
    /// `Client` or `Leafnode`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Remote IP.
    #[serde(default)]
    pub ip: String,
    /// Remote port.
    #[serde(default)]
    pub port: u16,
    /// When the connection was made.
    #[serde(default)]
    pub start: Option<DateTime<FixedOffset>>,
    /// Last time the server saw traffic from or to it.
    #[serde(default)]
    pub last_activity: Option<DateTime<FixedOffset>>,
    /// When it was closed (closed connections only).
    #[serde(default)]
    pub stop: Option<DateTime<FixedOffset>>,
    /// Why it was closed (closed connections only).
    #[serde(default)]
    pub reason: Option<String>,
    /// Messages received from the client.
    #[serde(default)]
    pub in_msgs: u64,
    /// Messages sent to the client.
    #[serde(default)]
    pub out_msgs: u64,
    /// Subscriptions the client holds.
    #[serde(default)]
    pub subscriptions: u64,
    /// Client name (`name` option of the client library).
    #[serde(default)]
    pub name: Option<String>,
    /// Client library language.
    #[serde(default)]
    pub lang: Option<String>,
    /// Client library version.
    #[serde(default)]
    pub version: Option<String>,
    /// The authenticated user (user name or user nkey).
    #[serde(default)]
    pub authorized_user: Option<String>,
    /// The account (name, or public key in operator mode); absent for `$G`.
    #[serde(default)]
    pub account: Option<String>,
    /// A human name the server knows (in operator mode, the account's name).
    #[serde(default)]
    pub name_tag: Option<String>,
    /// Tags from the user JWT.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The user JWT (operator mode).
    #[serde(default)]
    pub jwt: Option<String>,
}

/// One connection of a CONNZ page, as a sweep reads it (see [`ConnInfo`] for the meanings):
/// only the fields the census uses, strings borrowed from the reply wherever they need no
/// unescaping (most of them), so a page costs one copy per string (into the snapshot), and
/// fields nobody reads are skipped instead of allocated.
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct SweepConn<'a> {
    #[serde(default)]
    pub cid: u64,
    #[serde(borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub ip: Cow<'a, str>,
    #[serde(default)]
    pub start: Option<Rfc3339>,
    #[serde(default)]
    pub last_activity: Option<Rfc3339>,
    #[serde(default)]
    pub in_msgs: u64,
    #[serde(default)]
    pub out_msgs: u64,
    #[serde(default)]
    pub subscriptions: u32,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub authorized_user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub account: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name_tag: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tags: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub jwt: Option<Cow<'a, str>>,
}

/// A server timestamp (RFC 3339 with nanoseconds), as the instant it names, parsed by a fast
/// path for the exact shape nats-server writes and by chrono otherwise: CONNZ has two per
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub Stamp);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        parse_rfc3339(&s)
            .map(Rfc3339)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; anything else goes to chrono.
pub fn parse_rfc3339(s: &str) -> Option<Stamp> {
    fast_rfc3339(s.as_bytes())
        .or_else(|| Some(Stamp::of(DateTime::parse_from_rfc3339(s).ok()?.to_utc())))
}

/// The fast path of [`parse_rfc3339`], on the bytes: `None` for any other shape (chrono's to
/// read, then).
pub(crate) fn fast_rfc3339(b: &[u8]) -> Option<Stamp> {
    let digit = |i: usize| {
        let d = b.get(i)?.wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (i64::from(two(0)? * 100 + two(2)?), two(5)?, two(8)?);
    let (hour, min, sec) = (two(11)?, two(14)?, two(17)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => 28 + u32::from(leap),
        _ => return None,
    };
    // A leap second (60) is chrono's to read.
    if day == 0 || day > month_days || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = (start..i).try_fold(0, |n, at| Some(n * 10 + digit(at)?))?;
        nanos *= 10u32.pow(9 - digits as u32);
    }
    let offset = match b.get(i..)? {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let secs = (two(i + 1)? * 3600 + two(i + 4)? * 60) as i32;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the (proleptic Gregorian) date, by eras of 400 years from a
    // year that starts in March (H. Hinnant's `days_from_civil`): no calendar lookups.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((i64::from(month) + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let local = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec);
    Some(Stamp::new(local - i64::from(offset), nanos))
}

/// The `data` of a `$SYS.REQ.ACCOUNT.PING.STATZ` reply.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccountStatzData {
    /// One entry per account the server knows (active ones, or all with `include_unused`).
    #[serde(default)]
    pub account_statz: Option<Vec<AccountStatz>>,
}

/// One account's counts on one server.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccountStatz {
    /// The account (name, or public key in operator mode).
    #[serde(default)]
    pub acc: String,
    /// Its human name, when the server knows one.
    #[serde(default)]
    pub name: Option<String>,
    /// Client connections on this server.
    #[serde(default)]
    pub conns: u64,
    /// Leafnode connections on this server.
    #[serde(default)]
    pub leafnodes: u64,
}

/// A STATSZ reply (no `data` envelope).
#[derive(Debug, Clone, Deserialize)]
pub struct StatszReply {
    /// The server that answered.
    #[serde(default)]
    pub server: ServerInfo,
    /// Its statistics.
    #[serde(default)]
    pub statsz: Option<Statsz>,
}

/// The part of STATSZ connwatch uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Statsz {
    /// Servers this server knows to be in the cluster (itself included).
    #[serde(default)]
    pub active_servers: usize,
    /// Open client connections.
    #[serde(default)]
    pub connections: u64,
    /// Route connections, by peer server name (a silent peer is still listed while its
    /// route is up, e.g. when it is frozen).
    #[serde(default)]
    pub routes: Option<Vec<Peer>>,
    /// Gateway connections, by remote cluster name.
    #[serde(default)]
    pub gateways: Option<Vec<Peer>>,
}

/// A route or gateway peer in STATSZ.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Peer {
    /// The peer server's name (routes) or the remote cluster's name (gateways).
    #[serde(default)]
    pub name: String,
}

/// The `data` of a `$SYS.REQ.USER.INFO` reply.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    /// The user connwatch is connected as.
    #[serde(default)]
    pub user: String,
    /// Its account.
    #[serde(default)]
    pub account: String,
}

/// The body of a CONNZ request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnzRequest {
    /// Include `authorized_user`, `account` and JWT details.
    pub auth: bool,
    /// Page size.
    pub limit: usize,
    /// Page offset.
    pub offset: usize,
    /// Sort order; `cid` keeps pages stable.
    pub sort: &'static str,
    /// Only connections of this account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<String>,
    /// Only connections of this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// 0 open, 1 closed, 2 all (an integer: a string is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<u8>,
}

/// The `data` of an ACCOUNTZ reply, as far as connwatch reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Accountz {
    /// The account asked about.
    #[serde(default)]
    pub account_detail: Option<AccountDetail>,
    /// The accounts the server knows (when no account was asked about).
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// One account's details.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccountDetail {
    /// The decoded account JWT (operator mode only).
    #[serde(default)]
    pub decoded_jwt: Option<serde_json::Value>,
}

impl AccountDetail {
    /// The account's connection limit from its JWT; `None` when unlimited or unknown.
    pub fn connection_limit(&self) -> Option<u64> {
        let conn = self
            .decoded_jwt
            .as_ref()?
            .pointer("/nats/limits/conn")?
            .as_i64()?;
        u64::try_from(conn).ok()
    }
}

/// The `data` of a VARZ reply, as far as connwatch reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Varz {
    /// The server's `max_connections`.
    #[serde(default)]
    pub max_connections: u64,
}

/// The user name claim of a user JWT, if it has one (`jwt` field of a connection).
pub fn jwt_name(jwt: &str) -> Option<String> {
    use base64::Engine;
    let claims = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct Claims {
        name: Option<String>,
    }
    serde_json::from_slice::<Claims>(&bytes)
        .ok()?
        .name
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connz_reply_with_null_connections_parses() {
        let r: Reply<Connz> = serde_json::from_str(
            r#"{"server":{"name":"n1","id":"NABC"},"data":{"server_id":"NABC","now":"2026-01-02T03:04:05.123456789+01:00","num_connections":0,"total":0,"offset":0,"limit":1024,"connections":null}}"#,
        )
        .unwrap();
        assert_eq!(r.server.name, "n1");
        assert!(r.data.unwrap().connections.is_none());
    }

    #[test]
    fn error_envelope_parses() {
        let r: Reply<Connz> = serde_json::from_str(
            r#"{"server":{"name":"n1","id":"N"},"error":{"code":500,"description":"boom"}}"#,
        )
        .unwrap();
        assert!(r.data.is_none());
        assert_eq!(r.error.unwrap().description, "boom");
    }

    #[test]
    fn sweep_conn_borrows_plain_strings_and_unescapes_others() {
        let conns: Vec<SweepConn> = serde_json::from_slice(
            br#"[{"cid":1,"ip":"127.0.0.1","name":"a\"b","lang":"go","authorized_user":"u","subscriptions_list":["x"]},
                {"cid":2,"ip":"::1","tags":["t"],"start":"2026-01-02T03:04:05.5Z"}]"#,
        )
        .unwrap();
        assert!(matches!(conns[0].ip, Cow::Borrowed("127.0.0.1")));
        assert_eq!(conns[0].name.as_deref(), Some("a\"b"));
        assert_eq!(conns[1].tags.as_ref().unwrap()[0], "t");
        assert!(conns[1].start.is_some());
    }

    #[test]
    fn fast_timestamps_agree_with_chrono() {
        for s in [
            "2026-01-02T03:04:05.123456789+01:00",
            "2026-11-25T20:30:01.1Z",
            "2026-11-25T20:30:01Z",
            "2026-11-25T20:30:01.000000001-05:30",
            "1999-12-31T23:59:59.999999999+00:00",
        ] {
            assert_eq!(
                fast_rfc3339(s.as_bytes()),
                DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| Stamp::of(t.to_utc())),
                "{s}"
            );
        }
        // Every day of four years around a century (leap and not), days that do not exist,
        // times at the edges, offsets: the same instant and offset as chrono, or both refuse.
        for year in [1969, 1970, 1999, 2000, 2024, 2100, 2400, 9999, 0] {
            for month in 0..=13 {
                for day in 0..=32 {
                    for (time, zone) in [
                        ("00:00:00", "Z"),
                        ("23:59:59.999999999", "+14:00"),
                        ("12:30:01.5", "-05:30"),
                        ("23:59:60", "Z"),
                        ("24:00:00", "Z"),
                    ] {
                        let s = format!("{year:04}-{month:02}-{day:02}T{time}{zone}");
                        let chrono = DateTime::parse_from_rfc3339(&s)
                            .ok()
                            .map(|t| Stamp::of(t.to_utc()));
                        let fast = fast_rfc3339(s.as_bytes());
                        // A leap second is left to chrono: `parse_rfc3339` falls back.
                        if fast.is_some() || !time.starts_with("23:59:60") {
                            assert_eq!(fast, chrono, "{s}");
                        }
                        assert_eq!(parse_rfc3339(&s), chrono, "{s}");
                    }
                }
            }
        }
        assert_eq!(fast_rfc3339(b"2026-13-02T03:04:05Z"), None);
        assert_eq!(fast_rfc3339(b"2026-01-02T03:04:05.Z"), None);
        assert!(parse_rfc3339("2026-01-02t03:04:05z").is_some());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn jwt_name_reads_the_claim() {
        use base64::Engine;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", enc("{}"), enc(r#"{"name":"alice","sub":"U"}"#));
        assert_eq!(jwt_name(&jwt).as_deref(), Some("alice"));
        assert_eq!(jwt_name("garbage"), None);
        assert_eq!(jwt_name("a.!!!.c"), None);
    }
}
