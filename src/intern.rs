//! Shared strings: the account, user, name and IP of many connections are the same few values,
//! so a [`Connection`](crate::snapshot::Connection) holds them as [`Str`]s (a reference count,
//! not an allocation of its own) and a reply's parser hands out one [`Str`] per distinct value
//! through an [`Interner`]. Memory then grows with distinct values (users, processes, IPs), not
//! with connections, and cloning a connection (the live view, a snapshot of it) copies no text.

use arcstr::ArcStr;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::Deref;

/// An immutable string whose clones share one allocation. Compares, hashes, orders, prints and
/// serializes as the `str` it holds. One pointer wide (the text's length sits with the text,
/// not in every holder): a connection holds nine of them, 45,000 connections 3 MiB less than
/// with `Arc<str>`'s two words. The count, the length and the bytes are one allocation
/// (`ArcStr`): a fleet whose every client has its own IP holds one text per connection.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Str(ArcStr);

impl Str {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn new(s: &str) -> Self {
        Self(ArcStr::from(s))
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Self::new(&s)
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Self {
        Self::new(s)
    }
}

impl From<Str> for String {
    fn from(s: Str) -> Self {
        s.0.to_string()
    }
}

impl From<&Str> for String {
    fn from(s: &Str) -> Self {
        s.0.to_string()
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Str> for String {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl serde::Serialize for Str {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Str {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <std::borrow::Cow<'de, str>>::deserialize(d).map(|s| Str::from(&*s))
    }
}

/// FxHash (rustc's hasher): a multiply and a rotate per word. Much cheaper than SipHash on the
/// short keys of a sweep, and the keys are the servers' own data about the cluster's clients,
/// read once per reply, not input an attacker can aim at a long-lived table.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
        // The zero padding of the last word must not make "a" and "a\0" the same.
        self.add(bytes.len() as u64);
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap`/`HashSet` hasher builder for [`FxHasher`].
pub type FxBuild = BuildHasherDefault<FxHasher>;

/// Whether two texts are equal. Texts of up to 16 bytes (servers, IPs, names) are compared a
/// word or two at a time, inline, not through a call to `memcmp` per look-up (BENCHMARKS.md,
/// "Fewer and cheaper text look-ups").
#[inline]
pub fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        // Two words that overlap cover every byte.
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        9..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// A borrowed text looked up among [`Str`] keys (`hashbrown`'s `get`, raw entries): hashed
/// as the `str`, compared with [`same_text`].
#[derive(Clone, Copy)]
pub struct Text<'a>(pub &'a str);

impl Hash for Text<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

impl hashbrown::Equivalent<Str> for Text<'_> {
    fn equivalent(&self, key: &Str) -> bool {
        same_text(self.0, key)
    }
}

/// Two borrowed texts looked up among `(Str, Str)` keys, as [`Text`] is among [`Str`]s: one
/// look-up for a pair (an account and user, an IP and client name) instead of two nested.
#[derive(Clone, Copy)]
pub struct Pair<'a>(pub &'a str, pub &'a str);

impl Hash for Pair<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `(Str, Str)` hashes.
        (self.0, self.1).hash(h);
    }
}

impl hashbrown::Equivalent<(Str, Str)> for Pair<'_> {
    fn equivalent(&self, (a, b): &(Str, Str)) -> bool {
        same_text(self.0, a) && same_text(self.1, b)
    }
}

/// Hands out one [`Str`] per distinct text: equal texts share one allocation. One interner per
/// reply (or per batch of work): it holds a reference to every text it handed out until it is
/// dropped, so it is not kept across sweeps.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    texts: hashbrown::HashSet<Str, FxBuild>,
}

impl Interner {
    /// The shared [`Str`] for `s`, allocated on first sight.
    pub fn get(&mut self, s: &str) -> Str {
        if let Some(t) = self.texts.get(&Text(s)) {
            return t.clone();
        }
        let t = Str::from(s);
        self.texts.insert(t.clone());
        t
    }

    /// Lets go of the texts nobody else holds any more (a long-lived interner calls it now and
    /// then, so it does not keep every text it ever saw).
    pub fn forget_unused(&mut self) {
        self.texts
            .retain(|t| ArcStr::strong_count(&t.0).is_none_or(|n| n > 1));
    }

    /// Distinct texts held.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether nothing was handed out yet.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn texts_compare_as_str_does_at_every_length_and_place() {
        for n in 0..=40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_text(&a, &a.clone()), "{a:?}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'Z';
                let b = String::from_utf8(b).expect("ascii");
                assert!(!same_text(&a, &b), "{a:?} {b:?}");
            }
            let longer = format!("{a}x");
            assert!(!same_text(&a, &longer) && !same_text(&longer, &a));
        }
        let mut i = Interner::default();
        let a = i.get("10.0.0.1");
        assert!(ArcStr::ptr_eq(&a.0, &i.get(&String::from("10.0.0.1")).0));
        assert!(!ArcStr::ptr_eq(&a.0, &i.get("10.0.0.2").0));
    }

    #[test]
    fn a_pair_finds_its_own_key_and_no_other_split() {
        let mut map: hashbrown::HashMap<(Str, Str), u32, FxBuild> = Default::default();
        map.insert(("ab".into(), "c".into()), 1);
        map.insert(("a".into(), "bc".into()), 2);
        map.insert(("".into(), "abc".into()), 3);
        assert_eq!(map.get(&Pair("ab", "c")), Some(&1));
        assert_eq!(map.get(&Pair("a", "bc")), Some(&2));
        assert_eq!(map.get(&Pair("", "abc")), Some(&3));
        assert_eq!(map.get(&Pair("abc", "")), None);
        assert_eq!(map.get(&Pair("a", "b")), None);
    }

    #[test]
    fn equal_texts_share_one_allocation() {
        let mut i = Interner::default();
        let a = i.get("A00");
        let b = i.get(&String::from("A00"));
        let c = i.get("A01");
        assert!(ArcStr::ptr_eq(&a.0, &b.0));
        assert!(!ArcStr::ptr_eq(&a.0, &c.0));
        assert_eq!(i.len(), 2);
        assert_eq!(a, "A00");
        assert_eq!("A00", a);
        assert_eq!(a.as_str(), "A00");
        drop((b, c));
        i.forget_unused();
        assert_eq!(i.len(), 1, "A01 is no longer used, A00 is");
        drop(a);
        i.forget_unused();
        assert!(i.is_empty());
    }

    #[test]
    fn a_str_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Str>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Option<Str>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn str_behaves_as_its_text() {
        let s = Str::from("x\"y");
        assert_eq!(format!("{s} {s:?}"), "x\"y \"x\\\"y\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"x\\\"y\"");
        let back: Str = serde_json::from_str("\"x\\\"y\"").unwrap();
        assert_eq!(back, s);
        let mut m: HashMap<Str, u32, FxBuild> = HashMap::default();
        m.insert("k".into(), 1);
        assert_eq!(m.get("k"), Some(&1));
        let (a, b) = (Str::from("a"), Str::from("b"));
        assert!(a < b);
        assert_eq!(String::from(s.clone()), "x\"y");
    }

    #[test]
    fn fx_hashes_differ_by_text_and_length() {
        use std::hash::BuildHasher;
        let h = |s: &str| FxBuild::default().hash_one(s);
        assert_ne!(h("a"), h("b"));
        assert_ne!(h("a"), h("a\0"));
        assert_eq!(h("same"), h("same"));
    }
}
