//! The scanner's byte work on strings: where a plain run of string bytes ends (eight bytes at
//! a time), unescaping a string as serde does, and a connection's keys as numbers.

/// Bytes with their lowest bit set in every lane of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every lane.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first byte of the word `w` (little endian) that ends a run of plain string bytes (`"`,
/// `\` or a control character), if any: the classic "has zero byte" trick per class, whose
/// lowest flagged lane is always exact.
#[inline]
pub(super) fn first_special(w: u64) -> Option<usize> {
    let q = w ^ (ONES * u64::from(b'"'));
    let s = w ^ (ONES * u64::from(b'\\'));
    let hit = ((q.wrapping_sub(ONES) & !q)
        | (s.wrapping_sub(ONES) & !s)
        | (w.wrapping_sub(ONES * 0x20) & !w))
        & HIGH;
    (hit != 0).then(|| (hit.trailing_zeros() / 8) as usize)
}

/// What [`field_of`] says of a key that names no field of [`SweepConn`](crate::nats::wire::SweepConn).
pub(super) const OTHER: u32 = 16;

/// A key of at most 15 bytes as a number: its bytes, and its length in the top byte.
const fn pack(key: &[u8]) -> u128 {
    let mut n = (key.len() as u128) << 120;
    let mut i = 0;
    while i < key.len() && i < 15 {
        n |= (key[i] as u128) << (8 * i);
        i += 1;
    }
    n
}

/// The index of the field of [`SweepConn`](crate::nats::wire::SweepConn) a connection's key names, in its order, or
/// [`OTHER`]. Keys are compared as numbers ([`pack`]), not byte by byte: a connection has
/// some twenty keys.
pub(super) fn field_of(key: &[u8]) -> u32 {
    if key.len() > 15 {
        return OTHER;
    }
    field_of_packed(pack(key))
}

/// [`field_of`] a [`pack`]ed key.
#[inline]
pub(super) fn field_of_packed(key: u128) -> u32 {
    const CID: u128 = pack(b"cid");
    const KIND: u128 = pack(b"kind");
    const IP: u128 = pack(b"ip");
    const START: u128 = pack(b"start");
    const LAST_ACTIVITY: u128 = pack(b"last_activity");
    const IN_MSGS: u128 = pack(b"in_msgs");
    const OUT_MSGS: u128 = pack(b"out_msgs");
    const SUBSCRIPTIONS: u128 = pack(b"subscriptions");
    const NAME: u128 = pack(b"name");
    const AUTHORIZED_USER: u128 = pack(b"authorized_user");
    const ACCOUNT: u128 = pack(b"account");
    const NAME_TAG: u128 = pack(b"name_tag");
    const TAGS: u128 = pack(b"tags");
    const JWT: u128 = pack(b"jwt");
    match key {
        CID => 0,
        KIND => 1,
        IP => 2,
        START => 3,
        LAST_ACTIVITY => 4,
        IN_MSGS => 5,
        OUT_MSGS => 6,
        SUBSCRIPTIONS => 7,
        NAME => 8,
        AUTHORIZED_USER => 9,
        ACCOUNT => 10,
        NAME_TAG => 11,
        TAGS => 12,
        JWT => 13,
        _ => OTHER,
    }
}

/// The text of a string's raw bytes (between its quotes, escapes already checked for syntax),
/// unescaped as serde does for a `str`: a surrogate must be half of a pair, and the result
/// must be UTF-8. `None` when it is not.
#[cold]
pub(super) fn unescape(raw: &[u8]) -> Option<String> {
    let hex = |at: usize| -> Option<u32> {
        let h = std::str::from_utf8(raw.get(at..at + 4)?).ok()?;
        u32::from_str_radix(h, 16).ok()
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = match raw[i + 1] {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0c',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                let n = hex(i + 2)?;
                i += 4;
                match n {
                    0xD800..=0xDBFF => {
                        // A leading surrogate: its trailing half must follow at once.
                        if raw.get(i + 2..i + 4) != Some(b"\\u") {
                            return None;
                        }
                        let n2 = hex(i + 4)?;
                        if !(0xDC00..=0xDFFF).contains(&n2) {
                            return None;
                        }
                        i += 6;
                        char::from_u32(0x1_0000 + ((n - 0xD800) << 10) + (n2 - 0xDC00))?
                    }
                    _ => char::from_u32(n)?,
                }
            }
        };
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i += 2;
    }
    String::from_utf8(out).ok()
}
