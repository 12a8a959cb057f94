//! A hand-written parser of one CONNZ reply: the same results and the same refusals as the
//! serde path of [`page`](super::page), several times faster.
//!
//! A reply is ~410 bytes of JSON per connection, most of which connwatch never reads (`rtt`,
//! `lang`, `port`, byte counts, …). Going through serde, every key is decoded and UTF-8 checked
//! and matched through a derived visitor, every skipped value through `IgnoredAny`; here one
//! cursor walks the bytes, keys are matched as bytes, the strings of a reply are found eight
//! bytes at a time, and skipped values are checked for syntax only, with no recursion.
//!
//! What it reads and refuses is serde_json's (`page`'s tests, and the differential test in
//! `scan/tests.rs` holds both to it), with two deliberate differences, both refusals of
//! what no nats-server writes: a connection, `server` or `error` written as a JSON array
//! (serde accepts an array for a struct, field by field), and a skipped value nested deeper
//! than [`MAX_DEPTH`] (serde skips any depth).

use std::borrow::Cow;

use super::wire::{fast_rfc3339, parse_rfc3339, ApiError, Rfc3339, ServerInfo, SweepConn};
use text::{field_of, field_of_packed, first_special, unescape, OTHER};

mod skip;
mod text;

/// Deepest nesting of a skipped value (an unknown key's array or object): deeper is refused,
/// so a hostile reply costs no more than its length.
pub(crate) const MAX_DEPTH: usize = 128;

/// The high bit of each byte of a 16-byte word: none set is ASCII.
const HIGH_BITS: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;

/// What a reply says besides its connections.
#[derive(Debug, Default)]
pub(crate) struct Head {
    /// Who answered (default when the reply has no `server`).
    pub server: ServerInfo,
    /// The error envelope, if any.
    pub error: Option<ApiError>,
    /// `data.total` (0 when `data` has none); `None` when the reply has no `data` or it is null.
    pub total: Option<u64>,
    /// `data.now`, the server's clock when it wrote the reply.
    pub now: Option<Rfc3339>,
    /// `data.server_id`, when given.
    pub data_server_id: Option<String>,
    /// Connections in the reply, kept or not.
    pub count: usize,
    /// `data` came before `server` (nats-server writes `server` first): the connections were
    /// read before the reply said whose they are ([`ListStart::server`] was `None`).
    pub server_late: bool,
}

/// What the reply has said when its `connections` key is reached, before the first one.
#[derive(Debug)]
pub(crate) struct ListStart<'h> {
    /// `data.total` so far (nats-server writes it before the connections; 0 when not yet).
    pub total: u64,
    /// `data.now` so far (nats-server writes it before the connections).
    pub now: Option<Rfc3339>,
    /// Who answered, when `server` came before `data`.
    pub server: Option<&'h ServerInfo>,
}

/// What is done with the connections of a reply as [`reply`] reads them.
pub(crate) trait Visit<'a> {
    /// Asked once, when the reply's `connections` key is reached (even when it is `null`):
    /// `true`, each connection is read whole and handed to [`Visit::conn`], in the reply's
    /// order; `false`, only its `cid` is read and handed to [`Visit::cid`] (the rest checked for
    /// syntax only, as serde's `IgnoredAny` does).
    fn list(&mut self, start: &ListStart) -> bool;
    /// One connection kept; an error stops the parse and is returned by [`reply`].
    fn conn(&mut self, conn: &SweepConn<'a>) -> Result<(), String>;
    /// The cid of one connection not kept; an error stops the parse and is returned.
    fn cid(&mut self, cid: u64) -> Result<(), String>;
}

/// Parses one CONNZ reply `payload`, handing its connections to `visit` as they are read.
/// Checks of the reply's content (cid order, counts, server ids) are the caller's; this
/// refuses what is not a well-formed CONNZ reply, as serde does.
pub(crate) fn reply<'a>(payload: &'a [u8], visit: &mut impl Visit<'a>) -> Result<Head, String> {
    let mut p = Cursor {
        b: payload,
        i: 0,
        why: String::new(),
        guesses: [Guess::default(); GUESSES],
    };
    let head = p.envelope(visit).and_then(|head| {
        p.ws();
        match p.i == p.b.len() {
            true => Ok(head),
            false => Err(p.err("trailing characters")),
        }
    });
    head.map_err(|Stop| p.why)
}

/// What `data` said.
#[derive(Default)]
struct Data {
    total: u64,
    now: Option<Rfc3339>,
    server_id: Option<String>,
    count: usize,
}

/// A position in a reply.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    /// Why the parse stopped, once it has.
    why: String,
    /// The keys of the last connection read, by place ([`Cursor::conn_key`]).
    guesses: [Guess; GUESSES],
}

/// Places of a connection's keys that are guessed ([`Cursor::conn_key`]).
const GUESSES: usize = 32;

/// The key at one place of the last connection: its bytes with their quotes, as the 16 bytes
/// at a key are compared to them (`mask` keeps those bytes; zero when there is no guess).
#[derive(Clone, Copy, Default)]
struct Guess {
    word: u128,
    mask: u128,
    field: u32,
    /// The key's length with its quotes.
    len: usize,
}

/// A refusal: what and where are in [`Cursor::why`] (a result this small costs the hot path
/// less than one that carries its message).
#[derive(Debug)]
struct Stop;

type Res<T> = Result<T, Stop>;

impl<'a> Cursor<'a> {
    #[cold]
    #[inline(never)]
    fn err(&mut self, what: &str) -> Stop {
        self.why = format!("{what} at byte {} of the connz reply", self.i);
        Stop
    }

    /// Skips JSON whitespace.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace (not consumed); an error at the end of the reply.
    #[inline]
    fn peek(&mut self) -> Res<u8> {
        self.ws();
        match self.b.get(self.i) {
            Some(&c) => Ok(c),
            None => Err(self.err("unexpected end")),
        }
    }

    /// The colon after a key: at once when it follows the key, else after whitespace.
    #[inline]
    fn colon(&mut self) -> Res<()> {
        match self.b.get(self.i) {
            Some(b':') => {
                self.i += 1;
                Ok(())
            }
            _ => self.eat(b':'),
        }
    }

    /// Consumes `c` after whitespace.
    #[inline]
    fn eat(&mut self, c: u8) -> Res<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(match c {
                b'{' => "expected an object",
                b'[' => "expected an array",
                b':' => "expected ':'",
                _ => "expected a string",
            }))
        }
    }

    /// After an opening bracket: whether the container is empty (its `close` consumed).
    #[inline]
    fn empty(&mut self, close: u8) -> Res<bool> {
        let c = self.peek()?;
        if c == close {
            self.i += 1;
        }
        Ok(c == close)
    }

    /// After an element of a container: `true` at a comma (another element follows), `false`
    /// at its `close` (consumed).
    #[inline]
    fn more(&mut self, close: u8) -> Res<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Ok(true)
            }
            c if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(self.err("expected ',' or the end of the container")),
        }
    }

    /// Consumes `null` if it is next.
    #[inline]
    fn null(&mut self) -> Res<bool> {
        if self.peek()? != b'n' {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &[u8]) -> Res<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// From just after an opening quote to just after the closing one: the end of the string's
    /// raw bytes and whether they hold escapes. Escapes and control characters are checked;
    /// UTF-8 is not (the caller checks what it keeps).
    #[inline]
    fn string_end(&mut self) -> Res<(usize, bool)> {
        let b = self.b;
        let mut escaped = false;
        loop {
            while let Some(chunk) = b.get(self.i..self.i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                match first_special(w) {
                    Some(at) => {
                        self.i += at;
                        break;
                    }
                    None => self.i += 8,
                }
            }
            while let Some(&c) = b.get(self.i) {
                if matches!(c, b'"' | b'\\' | 0..=0x1f) {
                    break;
                }
                self.i += 1;
            }
            match b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok((self.i - 1, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unclosed string")),
            }
        }
    }

    /// Checks the escape at a backslash and steps over it.
    fn escape(&mut self) -> Res<()> {
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
            Some(b'u') => {
                let hex = self.b.get(self.i + 2..self.i + 6);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    self.i += 2;
                    return Err(self.err("invalid \\u escape"));
                }
                self.i += 6;
            }
            _ => return Err(self.err("invalid escape")),
        }
        Ok(())
    }

    /// A string value, borrowed when it has no escapes; must be UTF-8.
    #[inline]
    fn string(&mut self) -> Res<Cow<'a, str>> {
        self.ws();
        if let Some((word, len)) = self.short_string() {
            let start = self.i + 1;
            self.i = start + len + 1;
            let raw = &self.b[start..start + len];
            if word & ((1 << (8 * len)) - 1) & HIGH_BITS == 0 {
                // SAFETY: no byte has its high bit set: ASCII, which is UTF-8.
                return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) }));
            }
            return match std::str::from_utf8(raw) {
                Ok(s) => Ok(Cow::Borrowed(s)),
                Err(_) => Err(self.err("invalid UTF-8 in a string")),
            };
        }
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = self.string_end()?;
        let raw = &self.b[start..end];
        if escaped {
            return unescape(raw)
                .map(Cow::Owned)
                .ok_or_else(|| self.err("invalid string"));
        }
        std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| self.err("invalid UTF-8 in a string"))
    }

    /// An object key and its colon: the key's bytes (UTF-8, as serde checks a key it matches).
    #[inline]
    fn key(&mut self) -> Res<Cow<'a, [u8]>> {
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = self.string_end()?;
        let raw = &self.b[start..end];
        let key = if escaped {
            let s = unescape(raw).ok_or_else(|| self.err("invalid key"))?;
            Cow::Owned(s.into_bytes())
        } else if raw.is_ascii() || std::str::from_utf8(raw).is_ok() {
            Cow::Borrowed(raw)
        } else {
            return Err(self.err("invalid UTF-8 in a key"));
        };
        self.eat(b':')?;
        Ok(key)
    }

    /// The key at `place` in a connection and its colon: the index of the [`SweepConn`] field
    /// it names ([`field_of`]). nats-server writes every connection's keys in one order, so
    /// the key is first compared with the one at the same place in the last connection: one
    /// masked compare of 16 bytes. Otherwise the common case (no escapes, at least 16 bytes
    /// left) packs the key with one load, and it becomes the guess for its place.
    #[inline]
    fn conn_key(&mut self, place: usize) -> Res<u32> {
        self.ws();
        let next = self.b.get(self.i..self.i + 16);
        let next = next.map(|w| u128::from_le_bytes(w.try_into().expect("16 bytes")));
        if let (Some(&g), Some(w)) = (self.guesses.get(place), next) {
            if w & g.mask == g.word && g.mask != 0 {
                self.i += g.len;
                self.colon()?;
                return Ok(g.field);
            }
        }
        let (field, short) = self.key_field()?;
        if let Some(g) = self.guesses.get_mut(place) {
            // The key and its quotes when they fit the 16 bytes (a key of at most 14 bytes, no
            // escape); no guess otherwise.
            *g = match (next, short) {
                (Some(w), Some(len)) if len <= 14 => {
                    let mask = u128::MAX >> (8 * (14 - len));
                    Guess {
                        word: w & mask,
                        mask,
                        field,
                        len: len + 2,
                    }
                }
                _ => Guess::default(),
            };
        }
        Ok(field)
    }

    /// [`Cursor::conn_key`] without a guess: the field, and the key's length when it was read
    /// by the common case.
    #[inline]
    fn key_field(&mut self) -> Res<(u32, Option<usize>)> {
        let Some((word, len)) = self.short_string() else {
            // Escaped, long, or near the end of the reply: the general path.
            return Ok((field_of(&self.key()?), None));
        };
        let start = self.i + 1;
        self.i = start + len + 1;
        let field = field_of_packed(word & ((1 << (8 * len)) - 1) | (len as u128) << 120);
        // A known key is ASCII; another must be UTF-8, as serde reads every key it is given.
        let raw = &self.b[start..start + len];
        if field == OTHER && !raw.is_ascii() && std::str::from_utf8(raw).is_err() {
            return Err(self.err("invalid UTF-8 in a key"));
        }
        self.colon()?;
        Ok((field, Some(len)))
    }

    /// At an opening quote: the next 16 bytes and the length of the string, when it closes
    /// among them with no escape or control character (most keys and values of a reply).
    #[inline]
    fn short_string(&self) -> Option<(u128, usize)> {
        let start = self.i + 1;
        let w = self
            .b
            .get(start..start + 16)
            .filter(|_| self.b[self.i] == b'"')?;
        let (lo, hi) = w.split_at(8);
        let lo = first_special(u64::from_le_bytes(lo.try_into().expect("8 bytes")));
        let at = lo.or_else(|| {
            first_special(u64::from_le_bytes(hi.try_into().expect("8 bytes"))).map(|a| a + 8)
        })?;
        (w[at] == b'"').then(|| (u128::from_le_bytes(w.try_into().expect("16 bytes")), at))
    }

    /// An unsigned integer, as serde reads a `u64`: no sign, fraction or exponent, no leading
    /// zero, no overflow.
    #[inline]
    fn u64(&mut self) -> Res<u64> {
        let first = self.peek()?;
        if !first.is_ascii_digit() {
            return Err(self.err("expected an unsigned integer"));
        }
        self.i += 1;
        let mut n = u64::from(first - b'0');
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            if first == b'0' {
                return Err(self.err("leading zero"));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| self.err("integer out of range"))?;
            self.i += 1;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return Err(self.err("expected an integer"));
        }
        Ok(n)
    }

    /// `null` or a string.
    #[inline]
    fn opt_string(&mut self) -> Res<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        self.string().map(Some)
    }

    /// `null` or a timestamp.
    #[inline]
    fn opt_time(&mut self) -> Res<Option<Rfc3339>> {
        // The shape nats-server writes, read from the bytes: no UTF-8 check, no copy.
        if self.peek()? == b'"' {
            let at = self.i;
            self.i += 1;
            if let (end, false) = self.string_end()? {
                if let Some(t) = fast_rfc3339(&self.b[at + 1..end]) {
                    return Ok(Some(Rfc3339(t)));
                }
            }
            self.i = at;
        }
        match self.opt_string()? {
            None => Ok(None),
            Some(s) => match parse_rfc3339(&s) {
                Some(t) => Ok(Some(Rfc3339(t))),
                None => Err(self.err("invalid timestamp")),
            },
        }
    }

    /// `null` or an array of strings.
    fn opt_strings(&mut self) -> Res<Option<Vec<Cow<'a, str>>>> {
        if self.null()? {
            return Ok(None);
        }
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.empty(b']')? {
            return Ok(Some(out));
        }
        loop {
            out.push(self.string()?);
            if !self.more(b']')? {
                return Ok(Some(out));
            }
        }
    }

    /// The envelope: `{"server":…,"data":…,"error":…}` in any order, each at most once.
    fn envelope(&mut self, visit: &mut impl Visit<'a>) -> Res<Head> {
        let mut head = Head::default();
        let (mut server_seen, mut data_seen, mut error_seen) = (false, false, false);
        self.eat(b'{')?;
        if self.empty(b'}')? {
            return Ok(head);
        }
        loop {
            let key = self.key()?;
            let seen = match &*key {
                b"server" => &mut server_seen,
                b"data" => &mut data_seen,
                b"error" => &mut error_seen,
                _ => {
                    self.skip()?;
                    if self.more(b'}')? {
                        continue;
                    }
                    return Ok(head);
                }
            };
            // A key given twice would let one reply speak for two.
            if std::mem::replace(seen, true) {
                return Err(self.err("duplicate key in connz reply"));
            }
            match &*key {
                b"server" => head.server = self.serde()?,
                b"error" => head.error = self.serde()?,
                _ => {
                    head.server_late = !server_seen;
                    let server = server_seen.then_some(&head.server);
                    if let Some(data) = self.data(server, visit)? {
                        head.total = Some(data.total);
                        head.now = data.now;
                        head.data_server_id = data.server_id;
                        head.count = data.count;
                    }
                }
            }
            if !self.more(b'}')? {
                return Ok(head);
            }
        }
    }

    /// A small value read with serde from its raw bytes (`server`, `error`: once a reply).
    /// Refused when written as an array, which serde would take field by field.
    fn serde<T: serde::de::DeserializeOwned>(&mut self) -> Res<T> {
        if self.peek()? == b'[' {
            return Err(self.err("expected an object"));
        }
        let raw = self.raw_value()?;
        serde_json::from_slice(raw).map_err(|e| self.err(&e.to_string()))
    }

    /// `data`: `null` or the CONNZ object, its connections handed to `visit` as they are read.
    fn data(
        &mut self,
        server: Option<&ServerInfo>,
        visit: &mut impl Visit<'a>,
    ) -> Res<Option<Data>> {
        if self.null()? {
            return Ok(None);
        }
        let mut d = Data::default();
        let mut connections_seen = false;
        self.eat(b'{')?;
        if self.empty(b'}')? {
            return Ok(Some(d));
        }
        loop {
            let key = self.key()?;
            match &*key {
                b"now" => d.now = self.opt_time()?,
                b"total" => d.total = self.u64()?,
                b"offset" => {
                    // Every request of a sweep asks from offset 0 (serde reads an i64: any
                    // other integer, or a number that is not one, is refused as well).
                    if self.u64()? != 0 {
                        return Err(self.err("connz reply at an offset, asked 0"));
                    }
                }
                b"server_id" => d.server_id = self.opt_string()?.map(Cow::into_owned),
                b"connections" => {
                    if std::mem::replace(&mut connections_seen, true) {
                        return Err(self.err("duplicate connections in connz reply"));
                    }
                    let start = ListStart {
                        total: d.total,
                        now: d.now,
                        server,
                    };
                    let keep = visit.list(&start);
                    d.count = self.connections(keep, visit)?;
                }
                _ => self.skip()?,
            }
            if !self.more(b'}')? {
                return Ok(Some(d));
            }
        }
    }

    /// `connections`: `null` or an array of connection objects. Returns how many there were.
    fn connections(&mut self, keep: bool, visit: &mut impl Visit<'a>) -> Res<usize> {
        if self.null()? {
            return Ok(0);
        }
        self.eat(b'[')?;
        if self.empty(b']')? {
            return Ok(0);
        }
        let mut count = 0;
        loop {
            count += 1;
            if keep {
                let c = self.conn()?;
                visit.conn(&c).map_err(|e| self.err(&e))?;
            } else {
                let cid = self.cid_only()?;
                visit.cid(cid).map_err(|e| self.err(&e))?;
            }
            if !self.more(b']')? {
                return Ok(count);
            }
        }
    }

    /// One connection, the fields of [`SweepConn`] read, the others skipped.
    fn conn(&mut self) -> Res<SweepConn<'a>> {
        let mut c = SweepConn {
            cid: 0,
            kind: None,
            ip: Cow::Borrowed(""),
            start: None,
            last_activity: None,
            in_msgs: 0,
            out_msgs: 0,
            subscriptions: 0,
            name: None,
            authorized_user: None,
            account: None,
            name_tag: None,
            tags: None,
            jwt: None,
        };
        self.eat(b'{')?;
        if self.empty(b'}')? {
            return Ok(c);
        }
        // The fields read so far, one bit each (serde refuses a field given twice).
        let mut seen = 0u16;
        let mut place = 0;
        loop {
            let field = self.conn_key(place)?;
            place += 1;
            if field < OTHER {
                if seen & (1 << field) != 0 {
                    return Err(self.err("duplicate field in a connection"));
                }
                seen |= 1 << field;
            }
            match field {
                0 => c.cid = self.u64()?,
                1 => c.kind = self.opt_string()?,
                2 => c.ip = self.string()?,
                3 => c.start = self.opt_time()?,
                4 => c.last_activity = self.opt_time()?,
                5 => c.in_msgs = self.u64()?,
                6 => c.out_msgs = self.u64()?,
                7 => {
                    c.subscriptions = u32::try_from(self.u64()?)
                        .map_err(|_| self.err("subscriptions out of range"))?;
                }
                8 => c.name = self.opt_string()?,
                9 => c.authorized_user = self.opt_string()?,
                10 => c.account = self.opt_string()?,
                11 => c.name_tag = self.opt_string()?,
                12 => c.tags = self.opt_strings()?,
                13 => c.jwt = self.opt_string()?,
                _ => self.skip()?,
            }
            if !self.more(b'}')? {
                return Ok(c);
            }
        }
    }

    /// One connection that is not kept: its `cid` read (given at most once), the rest skipped.
    fn cid_only(&mut self) -> Res<u64> {
        self.eat(b'{')?;
        let mut cid = None;
        if self.empty(b'}')? {
            return Ok(0);
        }
        let mut place = 0;
        loop {
            let field = self.conn_key(place)?;
            place += 1;
            if field == 0 {
                if cid.is_some() {
                    return Err(self.err("duplicate field in a connection"));
                }
                cid = Some(self.u64()?);
            } else {
                self.skip()?;
            }
            if !self.more(b'}')? {
                return Ok(cid.unwrap_or_default());
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;
