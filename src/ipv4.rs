//! An IPv4 address in the canonical dotted form nats-server writes, packed into 4 bytes: a
//! fleet whose every client is a host (or pod) of its own has as many IPs as connections, so
//! what holds many of them (the census, a sweep's compact list) holds them packed, with no
//! text each. Only the canonical form is packed, so the text prints back unchanged; any other
//! (IPv6, a leading zero) stays a text. Tested in `census::ip`.

/// An IPv4 address in canonical dotted form (four decimal parts of 0 to 255, no leading zero),
/// packed; `None` for any other text, which then prints back unchanged.
pub fn parse(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let (mut out, mut i) = (0u32, 0);
    for part in 0..4 {
        if part > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v = 0u32;
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            v = v * 10 + u32::from(d - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        let len = i - start;
        if len == 0 || v > 255 || (len > 1 && b[start] == b'0') {
            return None;
        }
        out = out << 8 | v;
    }
    (i == b.len()).then_some(out)
}

/// `v`'s dotted text, written into `buf`.
pub fn write(v: u32, buf: &mut [u8; 15]) -> &str {
    let mut at = 0;
    for (k, octet) in v.to_be_bytes().into_iter().enumerate() {
        if k > 0 {
            buf[at] = b'.';
            at += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = match octet {
            100.. => 0,
            10.. => 1,
            _ => 2,
        };
        for d in &digits[skip..] {
            buf[at] = b'0' + d;
            at += 1;
        }
    }
    std::str::from_utf8(&buf[..at]).expect("ASCII digits and dots")
}
