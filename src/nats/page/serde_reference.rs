//! The serde parse of a CONNZ reply that [`scan`](crate::nats::scan) replaced, kept as the
//! reference its differential tests hold it to (`scan/tests.rs`): the same results and the
//! same refusals, through the same checks of [`parse`](super::parse).

use chrono::Utc;

use super::{conn_ref, parse, PageHead, PageStats, Sink, Texts};
use crate::nats::snappy::{inflate, Payload};
use crate::nats::wire::{Rfc3339, ServerInfo, SweepConn};
use crate::snapshot::Connection;
use crate::stamp::Stamp;

/// [`super::parse_page`] through serde.
pub(crate) fn parse_page(
    payload: &[u8],
    out: &mut Vec<Connection>,
    limit: usize,
    reserve: bool,
) -> Result<PageHead, serde_json::Error> {
    parse(
        Payload::Plain(payload),
        Sink::List(out),
        limit,
        reserve,
        false,
        read,
    )
}

/// [`super::parse_server_list`] through serde.
pub(crate) fn parse_server_list(
    payload: Payload<'_>,
    out: &mut Vec<Connection>,
    limit: usize,
) -> Result<PageHead, serde_json::Error> {
    parse(payload, Sink::List(out), limit, true, true, read)
}

fn read(
    payload: Payload,
    sink: &mut Sink,
    stats: &mut PageStats,
) -> Result<PageHead, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let whole;
    let payload = match payload {
        Payload::Plain(b) => b,
        Payload::Snappy(f) => {
            whole = inflate(f).map_err(super::invalid)?;
            &whole[..]
        }
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    EnvelopeSeed { out: sink, stats }
        .deserialize(&mut de)
        .and_then(|head| de.end().map(|()| head))
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EnvelopeKey {
    Server,
    Data,
    Error,
    #[serde(other)]
    Other,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ConnzKey {
    Now,
    Total,
    Offset,
    ServerId,
    Connections,
    #[serde(other)]
    Other,
}

struct EnvelopeSeed<'s, 'o> {
    out: &'s mut Sink<'o>,
    stats: &'s mut PageStats,
}

impl<'de> serde::de::DeserializeSeed<'de> for EnvelopeSeed<'_, '_> {
    type Value = PageHead;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<PageHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EnvelopeSeed<'_, '_> {
    type Value = PageHead;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a CONNZ reply")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PageHead, A::Error> {
        use serde::de::Error;
        let EnvelopeSeed { out, stats } = self;
        let mut head = PageHead::default();
        let (mut server_seen, mut data_seen, mut error_seen) = (false, false, false);
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Server if !server_seen => {
                    head.server = map.next_value()?;
                    server_seen = true;
                }
                EnvelopeKey::Error if !error_seen => {
                    head.error = map.next_value()?;
                    error_seen = true;
                }
                EnvelopeKey::Data if !data_seen => {
                    head.total = map.next_value_seed(ConnzSeed {
                        out: &mut *out,
                        stats: &mut *stats,
                        server: server_seen.then_some(&head.server),
                    })?;
                    stats.server_late |= !server_seen;
                    data_seen = true;
                }
                // A key given twice would let one reply speak for two.
                EnvelopeKey::Server | EnvelopeKey::Error | EnvelopeKey::Data => {
                    return Err(A::Error::custom("duplicate key in connz reply"));
                }
                EnvelopeKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// `data` of a CONNZ reply (or `null`): returns its `total`.
struct ConnzSeed<'s, 'o> {
    out: &'s mut Sink<'o>,
    stats: &'s mut PageStats,
    server: Option<&'s ServerInfo>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ConnzSeed<'_, '_> {
    type Value = Option<u64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ConnzSeed<'_, '_> {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("CONNZ data")
    }
    fn visit_none<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        use serde::de::Error;
        let mut now = None;
        let mut total: u64 = 0;
        let mut connections_seen = false;
        while let Some(key) = map.next_key::<ConnzKey>()? {
            match key {
                ConnzKey::Now => now = map.next_value::<Option<Rfc3339>>()?,
                ConnzKey::Total => total = map.next_value()?,
                ConnzKey::Offset => {
                    // Every request of a sweep asks from offset 0.
                    let offset: i64 = map.next_value()?;
                    if offset != 0 {
                        return Err(A::Error::custom(format!(
                            "connz reply at offset {offset}, asked 0"
                        )));
                    }
                }
                ConnzKey::ServerId => {
                    let id: Option<std::borrow::Cow<'de, str>> = map.next_value()?;
                    self.stats.data_server_id = id.map(|s| s.into_owned());
                }
                ConnzKey::Connections if !connections_seen => {
                    connections_seen = true;
                    // More than the reply may hold (nats-server writes `total` first): not the
                    // whole list, which is all a sweep keeps ([`parse_server_list`]).
                    let partial = self.stats.whole_only && total > self.stats.limit as u64;
                    if let (Sink::List(out), true, false) =
                        (&mut *self.out, self.stats.reserve, partial)
                    {
                        // Never more than was asked for, whatever `total` claims.
                        let want = (total.min(self.stats.limit as u64)) as usize;
                        let spare = out.capacity() - out.len();
                        out.reserve_exact(want.saturating_sub(spare));
                    }
                    map.next_value_seed(ConnsSeed {
                        out: (!partial).then_some(&mut *self.out),
                        stats: &mut *self.stats,
                        server: self.server,
                        // nats-server writes `now` before the connections.
                        now: now.map_or_else(|| Stamp::of(Utc::now()), |t| t.0),
                    })?;
                }
                ConnzKey::Connections => {
                    return Err(A::Error::custom("duplicate connections in connz reply"));
                }
                ConnzKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some(total))
    }
}

/// The `connections` array (or `null`), each one converted as it is read into `out`; with no
/// `out`, only counted and checked.
struct ConnsSeed<'s, 'o> {
    out: Option<&'s mut Sink<'o>>,
    stats: &'s mut PageStats,
    server: Option<&'s ServerInfo>,
    now: Stamp,
}

impl<'de> serde::de::DeserializeSeed<'de> for ConnsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ConnsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of connections")
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let unknown = ServerInfo::default();
        let server = self.server.unwrap_or(&unknown);
        let Some(out) = self.out else {
            while let Some(c) = seq.next_element::<CidOnly>()? {
                self.stats.check(c.cid).map_err(A::Error::custom)?;
            }
            return Ok(());
        };
        let mut texts = Texts::default();
        let late = self.server.is_none();
        while let Some(c) = seq.next_element::<SweepConn<'de>>()? {
            self.stats.check(c.cid).map_err(A::Error::custom)?;
            let user_name = c.jwt.as_deref().and_then(|jwt| texts.jwt_name(jwt));
            let c = conn_ref(server, self.now, &c, user_name.as_deref());
            match out {
                Sink::List(out) => out.push(c.to_connection(&mut texts.strs)),
                Sink::Compact(out) => out.push(&c),
                Sink::Census(_) if late => self.stats.late.push(c.to_connection(&mut texts.strs)),
                Sink::Census(census) => census.add(&c),
            }
        }
        Ok(())
    }
}

/// A connection of a reply that is not kept: only its cid is read.
#[derive(serde::Deserialize)]
struct CidOnly {
    #[serde(default)]
    cid: u64,
}
