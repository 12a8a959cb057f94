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
//!
//! A snappy reply is read a chunk at a time into a small window ([`Reader`]), never held
//! decompressed whole: the parse goes a unit at a time (a connection, a key, a value and what
//! follows it), and a unit that runs out of bytes before the stream has ended is read again
//! from its start with more in hand. A unit that succeeds read only bytes it had, ending on a
//! delimiter, so it reads as it would from the whole reply.

use std::borrow::Cow;

use super::snappy::{Payload, Unframer, MAX_BLOCK};
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
pub(crate) trait Visit {
    /// Asked once, when the reply's `connections` key is reached (even when it is `null`):
    /// `true`, each connection is read whole and handed to [`Visit::conn`], in the reply's
    /// order; `false`, only its `cid` is read and handed to [`Visit::cid`] (the rest checked for
    /// syntax only, as serde's `IgnoredAny` does).
    fn list(&mut self, start: &ListStart) -> bool;
    /// One connection kept, its texts borrowed from the bytes in hand; an error stops the
    /// parse and is returned by [`reply`].
    fn conn(&mut self, conn: &SweepConn<'_>) -> Result<(), String>;
    /// The cid of one connection not kept; an error stops the parse and is returned.
    fn cid(&mut self, cid: u64) -> Result<(), String>;
}

/// Parses one CONNZ reply `payload`, handing its connections to `visit` as they are read.
/// Checks of the reply's content (cid order, counts, server ids) are the caller's; this
/// refuses what is not a well-formed CONNZ reply, as serde does.
pub(crate) fn reply(payload: Payload<'_>, visit: &mut impl Visit) -> Result<Head, String> {
    read(payload, visit, AHEAD)
}

/// [`reply`], with at least `ahead` bytes kept in hand ahead of the parse of a snappy reply.
fn read(payload: Payload<'_>, visit: &mut impl Visit, ahead: usize) -> Result<Head, String> {
    let mut r = Reader {
        w: Window::new(payload, ahead),
        ahead,
        i: 0,
        st: State {
            why: String::new(),
            base: 0,
            guesses: [Guess::default(); GUESSES],
        },
    };
    let head = r.envelope(visit).and_then(|head| r.end().map(|()| head));
    head.map_err(|Stop| r.st.why)
}

/// What `data` said.
#[derive(Default)]
struct Data {
    total: u64,
    now: Option<Rfc3339>,
    server_id: Option<String>,
    count: usize,
}

/// A position in the bytes of a reply in hand, for one unit of the parse ([`Reader::unit`]).
struct Cursor<'a, 's> {
    b: &'a [u8],
    i: usize,
    st: &'s mut State,
}

/// What the parse of a reply keeps from unit to unit.
struct State {
    /// Why the parse stopped, once it has.
    why: String,
    /// Where the bytes in hand start in the reply.
    base: usize,
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

/// A refusal: what and where are in [`State::why`] (a result this small costs the hot path
/// less than one that carries its message).
#[derive(Debug)]
struct Stop;

type Res<T> = Result<T, Stop>;

impl<'a> Cursor<'a, '_> {
    #[cold]
    #[inline(never)]
    fn err(&mut self, what: &str) -> Stop {
        self.st.why = format!(
            "{what} at byte {} of the connz reply",
            self.st.base + self.i
        );
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
        if let (Some(&g), Some(w)) = (self.st.guesses.get(place), next) {
            if w & g.mask == g.word && g.mask != 0 {
                self.i += g.len;
                self.colon()?;
                return Ok(g.field);
            }
        }
        let (field, short) = self.key_field()?;
        if let Some(g) = self.st.guesses.get_mut(place) {
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

    /// A small value read with serde from its raw bytes (`server`, `error`: once a reply).
    /// Refused when written as an array, which serde would take field by field.
    fn serde<T: serde::de::DeserializeOwned>(&mut self) -> Res<T> {
        if self.peek()? == b'[' {
            return Err(self.err("expected an object"));
        }
        let raw = self.raw_value()?;
        serde_json::from_slice(raw).map_err(|e| self.err(&e.to_string()))
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

/// Bytes kept in hand ahead of the parse, at least, while a snappy reply is read: a unit
/// longer than this (a connection with a long JWT) is read again with more. Moving what is
/// left to the front before each chunk costs a copy of at most this much per 64 KiB.
const AHEAD: usize = 8 * 1024;

/// The bytes of a reply in hand: all of a plain one; a window on a snappy one, read a chunk
/// at a time.
struct Window<'f> {
    plain: &'f [u8],
    framed: Option<Unframer<'f>>,
    buf: Vec<u8>,
    /// Bytes of `buf` in hand.
    end: usize,
    /// Whether the reply's last byte is in hand.
    done: bool,
}

impl<'f> Window<'f> {
    fn new(payload: Payload<'f>, ahead: usize) -> Self {
        match payload {
            Payload::Plain(b) => Self {
                plain: b,
                framed: None,
                buf: Vec::new(),
                end: b.len(),
                done: true,
            },
            Payload::Snappy(f) => Self {
                plain: &[],
                framed: Some(Unframer::new(f)),
                buf: vec![0; ahead + MAX_BLOCK],
                end: 0,
                done: false,
            },
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self.framed {
            None => self.plain,
            Some(_) => &self.buf[..self.end],
        }
    }

    /// Lets the bytes before `from` go, then reads chunks until `want` bytes from there are in
    /// hand or the reply has ended. Returns how many bytes were let go (none of a plain reply,
    /// which is all in hand).
    fn fill(&mut self, from: usize, want: usize) -> Result<usize, String> {
        let Some(u) = &mut self.framed else {
            return Ok(0);
        };
        self.buf.copy_within(from..self.end, 0);
        self.end -= from;
        while self.end < want && !self.done {
            match u.next_into(&mut self.buf, self.end)? {
                0 => self.done = true,
                n => self.end += n,
            }
        }
        Ok(from)
    }
}

/// The parse of one reply, a unit at a time ([`Reader::unit`]): the envelope, `data` and the
/// connections.
struct Reader<'f> {
    w: Window<'f>,
    /// Bytes kept in hand ahead of each unit, at least ([`AHEAD`]).
    ahead: usize,
    /// The place in the bytes in hand.
    i: usize,
    st: State,
}

/// The envelope's keys.
enum EnvKey {
    Server,
    Data,
    Error,
    Other,
}

/// The keys of `data` that are read.
enum DataKey {
    Now,
    Total,
    Offset,
    ServerId,
    Connections,
    Other,
}

impl EnvKey {
    fn of(key: &[u8]) -> Self {
        match key {
            b"server" => Self::Server,
            b"data" => Self::Data,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }
}

impl DataKey {
    fn of(key: &[u8]) -> Self {
        match key {
            b"now" => Self::Now,
            b"total" => Self::Total,
            b"offset" => Self::Offset,
            b"server_id" => Self::ServerId,
            b"connections" => Self::Connections,
            _ => Self::Other,
        }
    }
}

impl Reader<'_> {
    /// Runs `parse` from the reader's place and moves past what it read. When it stops while
    /// the reply is not all in hand, it is run again from the same place with more: what it
    /// reads must end on a delimiter, and it must do nothing it cannot do twice until it has
    /// read all it needs.
    #[inline]
    fn unit<T>(&mut self, mut parse: impl FnMut(&mut Cursor) -> Res<T>) -> Res<T> {
        if !self.w.done && self.w.end - self.i < self.ahead {
            self.more(self.ahead)?;
        }
        loop {
            let mut c = Cursor {
                b: self.w.bytes(),
                i: self.i,
                st: &mut self.st,
            };
            match parse(&mut c) {
                Ok(t) => {
                    self.i = c.i;
                    return Ok(t);
                }
                Err(Stop) if !self.w.done => {
                    let ahead = self.w.end - self.i;
                    self.more(2 * ahead.max(self.ahead))?;
                }
                Err(Stop) => return Err(Stop),
            }
        }
    }

    /// Lets the bytes before the reader's place go and reads until `want` bytes are in hand.
    fn more(&mut self, want: usize) -> Res<()> {
        match self.w.fill(self.i, want) {
            Ok(gone) => {
                self.st.base += gone;
                self.i -= gone;
                Ok(())
            }
            Err(e) => {
                self.st.why = format!("{e} in the snappy connz reply");
                Err(Stop)
            }
        }
    }

    #[cold]
    fn err(&mut self, what: &str) -> Stop {
        let mut c = Cursor {
            b: &[],
            i: self.i,
            st: &mut self.st,
        };
        c.err(what)
    }

    /// After the envelope: whitespace to the end of the reply.
    fn end(&mut self) -> Res<()> {
        loop {
            let at_end = self.unit(|c| {
                c.ws();
                Ok(c.i == c.b.len())
            })?;
            if !at_end {
                return Err(self.err("trailing characters"));
            }
            if self.w.done {
                return Ok(());
            }
            self.more(self.ahead)?;
        }
    }

    /// An object member's key and its colon, as `of` names it.
    fn key<K>(&mut self, of: impl Fn(&[u8]) -> K) -> Res<K> {
        self.unit(|c| Ok(of(&c.key()?)))
    }

    /// An object member's value into `into`, and what follows it: whether another member
    /// does.
    fn member<T>(&mut self, into: &mut T, value: impl Fn(&mut Cursor) -> Res<T>) -> Res<bool> {
        let (v, more) = self.unit(|c| Ok((value(c)?, c.more(b'}')?)))?;
        *into = v;
        Ok(more)
    }

    /// An object's opening brace: whether it is empty (its closing one read too).
    fn open(&mut self) -> Res<bool> {
        self.unit(|c| {
            c.eat(b'{')?;
            c.empty(b'}')
        })
    }

    /// The envelope: `{"server":…,"data":…,"error":…}` in any order, each at most once.
    fn envelope(&mut self, visit: &mut impl Visit) -> Res<Head> {
        let mut head = Head::default();
        let (mut server_seen, mut data_seen, mut error_seen) = (false, false, false);
        if self.open()? {
            return Ok(head);
        }
        loop {
            let key = self.key(EnvKey::of)?;
            let seen = match key {
                EnvKey::Server => &mut server_seen,
                EnvKey::Data => &mut data_seen,
                EnvKey::Error => &mut error_seen,
                EnvKey::Other => &mut false,
            };
            // A key given twice would let one reply speak for two.
            if std::mem::replace(seen, true) {
                return Err(self.err("duplicate key in connz reply"));
            }
            let more = match key {
                EnvKey::Server => self.member(&mut head.server, |c| c.serde())?,
                EnvKey::Error => self.member(&mut head.error, |c| c.serde())?,
                EnvKey::Other => self.member(&mut (), |c| c.skip())?,
                EnvKey::Data => {
                    head.server_late = !server_seen;
                    let server = server_seen.then_some(&head.server);
                    if let Some(data) = self.data(server, visit)? {
                        head.total = Some(data.total);
                        head.now = data.now;
                        head.data_server_id = data.server_id;
                        head.count = data.count;
                    }
                    self.unit(|c| c.more(b'}'))?
                }
            };
            if !more {
                return Ok(head);
            }
        }
    }

    /// `data`: `null` or the CONNZ object, its connections handed to `visit` as they are read.
    fn data(&mut self, server: Option<&ServerInfo>, visit: &mut impl Visit) -> Res<Option<Data>> {
        if self.unit(|c| c.null())? {
            return Ok(None);
        }
        let mut d = Data::default();
        let mut connections_seen = false;
        if self.open()? {
            return Ok(Some(d));
        }
        loop {
            let key = self.key(DataKey::of)?;
            let more = match key {
                DataKey::Now => self.member(&mut d.now, |c| c.opt_time())?,
                DataKey::Total => self.member(&mut d.total, |c| c.u64())?,
                // Every request of a sweep asks from offset 0 (serde reads an i64: any other
                // integer, or a number that is not one, is refused as well).
                DataKey::Offset => self.unit(|c| match c.u64()? {
                    0 => c.more(b'}'),
                    _ => Err(c.err("connz reply at an offset, asked 0")),
                })?,
                DataKey::ServerId => self.member(&mut d.server_id, |c| {
                    c.opt_string().map(|s| s.map(Cow::into_owned))
                })?,
                DataKey::Connections => {
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
                    self.unit(|c| c.more(b'}'))?
                }
                DataKey::Other => self.member(&mut (), |c| c.skip())?,
            };
            if !more {
                return Ok(Some(d));
            }
        }
    }

    /// `connections`: `null` or an array of connection objects. Returns how many there were.
    /// Each is handed to `visit` once read with what follows it, so it is never read twice.
    fn connections(&mut self, keep: bool, visit: &mut impl Visit) -> Res<usize> {
        if self.unit(|c| c.null())? {
            return Ok(0);
        }
        let empty = self.unit(|c| {
            c.eat(b'[')?;
            c.empty(b']')
        })?;
        if empty {
            return Ok(0);
        }
        let mut count = 0;
        loop {
            count += 1;
            let (seen, more) = if keep {
                self.unit(|c| {
                    let conn = c.conn()?;
                    let more = c.more(b']')?;
                    Ok((visit.conn(&conn), more))
                })?
            } else {
                self.unit(|c| {
                    let cid = c.cid_only()?;
                    let more = c.more(b']')?;
                    Ok((visit.cid(cid), more))
                })?
            };
            seen.map_err(|e| self.err(&e))?;
            if !more {
                return Ok(count);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;
