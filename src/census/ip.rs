//! A client's IP as a census key. A fleet whose every client is a host (or pod) of its own has
//! as many IPs as connections, so an IP must cost the census little: an IPv4 address in the
//! dotted form nats-server writes is packed into 4 bytes, with no text held for it; any other
//! (IPv6) is kept as its text.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use crate::intern::{same_text, Interner, Str};
use crate::ipv4::{parse as ipv4, write as v4_text};
use crate::snapshot::IpText;

/// An IP held by the census.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ip {
    /// An IPv4 address whose text is the canonical dotted form (it prints back the same).
    V4(u32),
    /// Any other text.
    Text(Str),
}

/// An IP as a connection gives it, looked up among [`Ip`]s without making one. Unlike a
/// connection's [`IpText`], whose text may be any, its `Text` is never a canonical IPv4
/// address: every IP has one key, so the two forms of one address cannot be two processes.
#[derive(Debug, Clone, Copy)]
pub(super) enum IpRef<'a> {
    V4(u32),
    Text(&'a str),
}

impl<'a> IpRef<'a> {
    /// `text` as a key: packed when it is an IPv4 address in canonical form.
    pub fn of(text: &'a str) -> Self {
        match ipv4(text) {
            Some(v) => Self::V4(v),
            None => Self::Text(text),
        }
    }

    /// A connection's IP as a key: packed already, or its text looked at.
    pub fn of_ip(ip: IpText<'a>) -> Self {
        match ip {
            IpText::V4(v) => Self::V4(v),
            IpText::Text(t) => Self::of(t),
        }
    }

    /// The key held, its text (if any) taken from `texts`.
    pub fn owned(self, texts: &mut Interner) -> Ip {
        match self {
            Self::V4(v) => Ip::V4(v),
            Self::Text(t) => Ip::Text(texts.get(t)),
        }
    }
}

impl Ip {
    /// Calls `f` with the IP's text (an IPv4 address formatted on the stack).
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Self::V4(v) => f(v4_text(*v, &mut [0; 15])),
            Self::Text(t) => f(t),
        }
    }

    /// Where the IP sorts among texts, cheap to compare.
    pub fn text_order(&self) -> TextOrder<'_> {
        let packed = |t: &[u8]| {
            let mut word = [0; 16];
            word[..t.len()].copy_from_slice(t);
            TextOrder::Short(u128::from_be_bytes(word))
        };
        match self {
            Self::V4(v) => packed(v4_text(*v, &mut [0; 15]).as_bytes()),
            Self::Text(t) if t.len() <= 16 && !t.as_bytes().contains(&0) => packed(t.as_bytes()),
            Self::Text(t) => TextOrder::Long(t),
        }
    }
}

/// An IP's text for ordering: packed big-endian into 16 bytes when it fits (no NUL byte, so
/// the zero padding sorts a prefix first, as `str` does), else the text. Orders exactly as the
/// texts do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextOrder<'a> {
    Short(u128),
    Long(&'a str),
}

impl TextOrder<'_> {
    /// The text (not formatted again).
    pub fn text(&self) -> String {
        self.with_bytes(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Self::Short(w) => {
                let bytes = w.to_be_bytes();
                let len = bytes.iter().position(|b| *b == 0).unwrap_or(16);
                f(&bytes[..len])
            }
            Self::Long(t) => f(t.as_bytes()),
        }
    }
}

impl Ord for TextOrder<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Short(a), Self::Short(b)) => a.cmp(b),
            _ => self.with_bytes(|a| other.with_bytes(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for TextOrder<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Ip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_text(|t| f.write_str(t))
    }
}

// `Ip` and `IpRef` hash alike, so either finds the other's entry.
impl Hash for Ip {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Self::V4(v) => IpRef::V4(*v).hash(h),
            Self::Text(t) => IpRef::Text(t).hash(h),
        }
    }
}

impl Hash for IpRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Self::V4(v) => h.write_u64(u64::from(*v)),
            Self::Text(t) => {
                h.write_u8(1);
                t.hash(h);
            }
        }
    }
}

impl IpRef<'_> {
    /// Whether `held` is this IP.
    pub fn is(&self, held: &Ip) -> bool {
        match (self, held) {
            (Self::V4(a), Ip::V4(b)) => a == b,
            (Self::Text(a), Ip::Text(b)) => same_text(a, b),
            _ => false,
        }
    }
}

/// A process (IP, client name) looked up among `(Ip, Str)` keys by a connection's texts.
pub(super) struct ProcessRef<'a>(pub IpRef<'a>, pub &'a str);

impl Hash for ProcessRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `(Ip, Str)` hashes.
        self.0.hash(h);
        self.1.hash(h);
    }
}

impl hashbrown::Equivalent<(Ip, Str)> for ProcessRef<'_> {
    fn equivalent(&self, (ip, name): &(Ip, Str)) -> bool {
        self.0.is(ip) && same_text(self.1, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intern::FxHasher;

    /// `v` as the standard library writes it.
    fn std_text(v: u32) -> String {
        std::net::Ipv4Addr::from(v).to_string()
    }

    fn hash(k: impl Hash) -> u64 {
        let mut h = FxHasher::default();
        k.hash(&mut h);
        h.finish()
    }

    #[test]
    fn canonical_ipv4_texts_are_packed_and_print_back_the_same() {
        for v in [
            0u32,
            1,
            0x7f00_0001,
            0x0a00_0a64,
            0xffff_ffff,
            0xc0a8_0001,
            0x0102_0304,
        ] {
            let text = std_text(v);
            assert_eq!(ipv4(&text), Some(v), "{text}");
            assert_eq!(Ip::V4(v).to_string(), text);
        }
        for octet in 0..=255u32 {
            let v = octet << 24 | octet << 16 | octet << 8 | octet;
            assert_eq!(Ip::V4(v).to_string(), std_text(v));
        }
    }

    #[test]
    fn other_texts_stay_texts() {
        for text in [
            "",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "00.0.0.0",
            "256.1.1.1",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1..3.4",
            "1.2.3.",
            "1.2.3.4a",
            "1000.1.1.1",
            "a.b.c.d",
            "1.2.3.-4",
        ] {
            assert_eq!(ipv4(text), None, "{text:?}");
            let mut texts = Interner::default();
            let ip = IpRef::of(text).owned(&mut texts);
            assert_eq!(ip.to_string(), text);
        }
    }

    #[test]
    fn a_held_ip_is_found_by_its_text_and_no_other() {
        let mut texts = Interner::default();
        for text in ["10.1.2.3", "::1"] {
            let held = IpRef::of(text).owned(&mut texts);
            assert!(IpRef::of(text).is(&held));
            assert_eq!(hash(&held), hash(IpRef::of(text)));
            for other in ["10.1.2.4", "::2", "0.0.0.1"] {
                assert!(!IpRef::of(other).is(&held), "{other} is not {text}");
            }
        }
        // A packed address and a text never meet, whatever their bytes.
        assert!(!IpRef::V4(1).is(&Ip::Text(texts.get("\u{1}"))));
        let key = (IpRef::of("10.1.2.3").owned(&mut texts), texts.get("pod"));
        assert_eq!(hash(&key), hash(ProcessRef(IpRef::of("10.1.2.3"), "pod")));
    }

    #[test]
    fn ips_order_as_their_texts() {
        let ips = [
            "10.0.0.10",
            "10.0.0.9",
            "10.0.0.1",
            "1.0.0.0",
            "9.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "2001:db8::1",
            "2001:db8:85a3::8a2e:370:7334",
            "10.0.0.1x",
            "2001:db8:85a3:0:0:8a2e:370:7334",
        ];
        let mut texts = Interner::default();
        for a in ips {
            for b in ips {
                let (x, y) = (
                    IpRef::of(a).owned(&mut texts),
                    IpRef::of(b).owned(&mut texts),
                );
                let order = x.text_order().cmp(&y.text_order());
                assert_eq!(order, a.cmp(b), "{a} against {b}");
                assert_eq!(x.text_order().text(), a);
            }
        }
    }
}
