//! A sweep's connections held compactly while its replies are parsed: each text a `u32` index
//! into one table of shared [`Str`]s (one entry per distinct value for the whole sweep), an
//! IPv4 address packed instead ([`crate::ipv4`]: a fleet has as many IPs as connections), times
//! as whole seconds and nanoseconds, so a connection takes about 100 bytes instead of a
//! [`Connection`]'s 168. The live view reads them in place ([`ConnList::iter`]), its table's
//! texts first taken from the view's own ([`ConnList::share_texts`]); what needs
//! [`Connection`]s builds each one by cloning the table's [`Str`]s ([`ConnList::into_iter`]:
//! reference counts, no text copied).

use hashbrown::HashMap;
use std::time::Duration;

use crate::stamp::Stamp;

use crate::intern::{same_text, FxBuild, Interner, Str, Text};
use crate::snapshot::{ConnRef, Connection, IpText, Tags};

/// No text (`None`), in a text index.
const NONE: u32 = u32::MAX;
/// No time (`None`), in a time's nanoseconds (never above 1,999,999,999, leap seconds included).
const NO_TIME: u32 = u32::MAX;
/// Set in a row's `idle_nanos` (never above 999,999,999) when its `ip` is an IPv4 address
/// packed, not a text index.
const IP_PACKED: u32 = 1 << 31;

/// One connection, its texts as indexes into the list's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    cid: u64,
    in_msgs: u64,
    out_msgs: u64,
    start_secs: i64,
    last_secs: i64,
    idle_secs: u64,
    start_nanos: u32,
    last_nanos: u32,
    /// The idle time's nanoseconds, and [`IP_PACKED`].
    idle_nanos: u32,
    subscriptions: u32,
    server: u32,
    server_id: u32,
    kind: u32,
    /// A text index, or the address itself (see `idle_nanos`).
    ip: u32,
    name: u32,
    account: u32,
    account_name: u32,
    user: u32,
    user_name: u32,
    /// Index into the list's tag lists (0: no tags).
    tags: u32,
}

/// A sweep's connections, compact (see the module). Its order is the order they were pushed.
#[derive(Debug, Clone)]
pub struct ConnList {
    rows: Vec<Row>,
    texts: Vec<Str>,
    index: HashMap<Str, u32, FxBuild>,
    /// Distinct tag lists; the first is the empty one.
    tag_lists: Vec<Vec<Str>>,
    tag_index: HashMap<Vec<Str>, u32, FxBuild>,
    /// Texts and tag lists taken from an [`Interner`] already ([`ConnList::share_texts`]).
    shared: (usize, usize),
    /// The last IPv4 address packed, and its text: connections one after another often come
    /// from one host.
    last_v4: Option<(u32, IpBytes)>,
}

/// An IPv4 address's text: up to 15 bytes, zero-padded, and its length.
type IpBytes = ([u8; 15], usize);

impl Default for ConnList {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            texts: Vec::new(),
            index: HashMap::default(),
            tag_lists: vec![Vec::new()],
            tag_index: HashMap::default(),
            shared: (0, 0),
            last_v4: None,
        }
    }
}

fn split_time(t: Option<Stamp>) -> (i64, u32) {
    t.map_or((0, NO_TIME), |t| (t.secs(), t.nanos()))
}

fn join_time(secs: i64, nanos: u32) -> Option<Stamp> {
    (nanos != NO_TIME).then(|| Stamp::new(secs, nanos))
}

impl ConnList {
    /// Connections held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Makes room for `more` connections.
    pub fn reserve_exact(&mut self, more: usize) {
        self.rows.reserve_exact(more);
    }

    /// Room for connections without growing.
    pub fn spare(&self) -> usize {
        self.rows.capacity() - self.rows.len()
    }

    /// Distinct texts held (each once, however many connections hold it).
    pub fn distinct_texts(&self) -> usize {
        self.texts.len()
    }

    fn text(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(&Text(s)) {
            return i;
        }
        let i = u32::try_from(self.texts.len()).expect("fewer than 2^32 - 1 distinct texts");
        assert!(i != NONE, "fewer than 2^32 - 1 distinct texts");
        let s = Str::from(s);
        self.texts.push(s.clone());
        self.index.insert(s, i);
        i
    }

    /// [`ConnList::text`], first compared with the text at `before` (the row before's: a
    /// reply's connections share their server and mostly their kind, and connections opened
    /// one after another often come from one process).
    fn text_as_before(&mut self, s: &str, before: Option<u32>) -> u32 {
        match before {
            Some(i) if i != NONE && same_text(&self.texts[i as usize], s) => i,
            _ => self.text(s),
        }
    }

    /// `text` packed when it is a canonical IPv4 address ([`crate::ipv4::parse`]), the last
    /// one's first compared.
    fn ipv4(&mut self, text: &str) -> Option<u32> {
        let bytes = text.as_bytes();
        let mut padded: IpBytes = ([0; 15], bytes.len());
        padded.0.get_mut(..bytes.len())?.copy_from_slice(bytes);
        match self.last_v4 {
            Some((v, last)) if last == padded => Some(v),
            _ => {
                let v = crate::ipv4::parse(text)?;
                self.last_v4 = Some((v, padded));
                Some(v)
            }
        }
    }

    fn tag_list(&mut self, tags: Tags<'_>) -> u32 {
        let list: Vec<Str> = tags
            .iter()
            .map(|t| {
                let i = self.text(t);
                self.texts[i as usize].clone()
            })
            .collect();
        if list.is_empty() {
            return 0;
        }
        if let Some(&i) = self.tag_index.get(&list) {
            return i;
        }
        let i = u32::try_from(self.tag_lists.len()).expect("fewer than 2^32 tag lists");
        self.tag_lists.push(list.clone());
        self.tag_index.insert(list, i);
        i
    }

    /// Adds `c` at the end, its texts looked up in (or added to) the table.
    pub fn push(&mut self, c: &ConnRef<'_>) {
        let (start_secs, start_nanos) = split_time(c.start);
        let (last_secs, last_nanos) = split_time(c.last_activity);
        let last = self.rows.last().copied();
        let (ip, packed) = match c.ip {
            IpText::V4(v) => (v, IP_PACKED),
            IpText::Text(t) => match self.ipv4(t) {
                Some(v) => (v, IP_PACKED),
                None => {
                    let before = last.filter(|r| r.idle_nanos & IP_PACKED == 0);
                    (self.text_as_before(t, before.map(|r| r.ip)), 0)
                }
            },
        };
        let row = Row {
            cid: c.cid,
            in_msgs: c.in_msgs,
            out_msgs: c.out_msgs,
            start_secs,
            last_secs,
            idle_secs: c.idle.as_secs(),
            start_nanos,
            last_nanos,
            idle_nanos: c.idle.subsec_nanos() | packed,
            subscriptions: c.subscriptions,
            server: self.text_as_before(c.server, last.map(|r| r.server)),
            server_id: self.text_as_before(c.server_id, last.map(|r| r.server_id)),
            kind: self.text_as_before(c.kind, last.map(|r| r.kind)),
            ip,
            name: self.text_as_before(c.name, last.map(|r| r.name)),
            account: self.text_as_before(c.account, last.map(|r| r.account)),
            account_name: c.account_name.map_or(NONE, |n| {
                self.text_as_before(n, last.map(|r| r.account_name))
            }),
            user: self.text_as_before(c.user, last.map(|r| r.user)),
            user_name: c
                .user_name
                .map_or(NONE, |n| self.text_as_before(n, last.map(|r| r.user_name))),
            tags: self.tag_list(c.tags),
        };
        self.rows.push(row);
    }

    /// Takes each text from `texts` instead (the same text, shared with what else holds it):
    /// one look-up per distinct text, however many connections hold it.
    /// Only the texts added since the last call are looked up (a live sweep shares them server
    /// by server as it hands each list over).
    pub fn share_texts(&mut self, texts: &mut Interner) {
        let (from_text, from_list) = self.shared;
        for t in &mut self.texts[from_text..] {
            *t = texts.get(t);
        }
        for list in &mut self.tag_lists[from_list..] {
            for t in list {
                *t = texts.get(t);
            }
        }
        self.shared = (self.texts.len(), self.tag_lists.len());
    }

    /// Keeps the first `len` connections.
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
    }

    /// Sets the server (name and id) of the connections from `from` on (a reply that named its
    /// server after its connections).
    pub fn set_server(&mut self, from: usize, name: &str, id: &str) {
        let (name, id) = (self.text(name), self.text(id));
        for r in &mut self.rows[from..] {
            r.server = name;
            r.server_id = id;
        }
    }

    /// Takes out those listed before they authenticated ([`ConnRef::pending`]); returns how
    /// many ([`crate::snapshot::drop_pending`]).
    pub fn drop_pending(&mut self, auth_required: bool) -> u64 {
        self.drop_pending_from(0, auth_required)
    }

    /// [`ConnList::drop_pending`] of the connections from `from` on only.
    pub fn drop_pending_from(&mut self, from: usize, auth_required: bool) -> u64 {
        if !auth_required {
            return 0;
        }
        let Self {
            rows,
            texts,
            tag_lists,
            ..
        } = self;
        // Those before `from` are not looked at; the others kept are moved down in place.
        let before = rows.len();
        let start = from.min(before);
        let mut kept = start;
        for i in start..before {
            if !view(texts, tag_lists, &rows[i]).pending(true) {
                rows[kept] = rows[i];
                kept += 1;
            }
        }
        rows.truncate(kept);
        (before - kept) as u64
    }

    /// Keeps only the connections for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(ConnRef<'_>) -> bool) {
        let Self {
            rows,
            texts,
            tag_lists,
            ..
        } = self;
        rows.retain(|r| keep(view(texts, tag_lists, r)));
    }

    /// The connection at `i`, its texts borrowed from the table.
    pub fn get(&self, i: usize) -> Option<ConnRef<'_>> {
        self.rows
            .get(i)
            .map(|r| view(&self.texts, &self.tag_lists, r))
    }

    /// Every connection, in order, as the census reads them.
    pub fn iter(&self) -> impl Iterator<Item = ConnRef<'_>> {
        self.iter_from(0)
    }

    /// The connections from `from` on, in order.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = ConnRef<'_>> {
        self.rows[from.min(self.rows.len())..]
            .iter()
            .map(|r| view(&self.texts, &self.tag_lists, r))
    }

    /// Builds every connection into a list (for what needs a `Vec<Connection>`).
    pub fn to_vec(&self) -> Vec<Connection> {
        let mut ips = Interner::default();
        self.rows
            .iter()
            .map(|r| self.connection(r, &mut ips))
            .collect()
    }

    /// The connection of row `r`; a packed IP's text from `ips` (one per distinct address).
    fn connection(&self, r: &Row, ips: &mut Interner) -> Connection {
        let t = |i: u32| self.texts[i as usize].clone();
        let opt = |i: u32| (i != NONE).then(|| t(i));
        Connection {
            server: t(r.server),
            server_id: t(r.server_id),
            cid: r.cid,
            kind: t(r.kind),
            ip: if r.idle_nanos & IP_PACKED == 0 {
                t(r.ip)
            } else {
                ips.get(crate::ipv4::write(r.ip, &mut [0; 15]))
            },
            start: join_time(r.start_secs, r.start_nanos),
            idle: Duration::new(r.idle_secs, r.idle_nanos & !IP_PACKED),
            last_activity: join_time(r.last_secs, r.last_nanos),
            subscriptions: r.subscriptions,
            in_msgs: r.in_msgs,
            out_msgs: r.out_msgs,
            name: t(r.name),
            account: t(r.account),
            account_name: opt(r.account_name),
            user: t(r.user),
            user_name: opt(r.user_name),
            tags: self.tag_lists[r.tags as usize].clone(),
        }
    }
}

fn view<'a>(texts: &'a [Str], tag_lists: &'a [Vec<Str>], r: &Row) -> ConnRef<'a> {
    let t = |i: u32| texts[i as usize].as_str();
    let opt = |i: u32| (i != NONE).then(|| t(i));
    ConnRef {
        server: t(r.server),
        server_id: t(r.server_id),
        cid: r.cid,
        kind: t(r.kind),
        ip: if r.idle_nanos & IP_PACKED == 0 {
            IpText::Text(t(r.ip))
        } else {
            IpText::V4(r.ip)
        },
        start: join_time(r.start_secs, r.start_nanos),
        idle: Duration::new(r.idle_secs, r.idle_nanos & !IP_PACKED),
        last_activity: join_time(r.last_secs, r.last_nanos),
        subscriptions: r.subscriptions,
        in_msgs: r.in_msgs,
        out_msgs: r.out_msgs,
        name: t(r.name),
        account: t(r.account),
        account_name: opt(r.account_name),
        user: t(r.user),
        user_name: opt(r.user_name),
        tags: Tags::Shared(&tag_lists[r.tags as usize]),
    }
}

/// The connections one at a time, in order ([`ConnList::into_iter`]).
pub struct IntoIter {
    list: ConnList,
    next: usize,
    /// The packed IPs' texts, one per distinct address.
    ips: Interner,
}

impl Iterator for IntoIter {
    type Item = Connection;

    fn next(&mut self) -> Option<Connection> {
        let r = *self.list.rows.get(self.next)?;
        self.next += 1;
        Some(self.list.connection(&r, &mut self.ips))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.list.rows.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for IntoIter {}

impl IntoIterator for ConnList {
    type Item = Connection;
    type IntoIter = IntoIter;

    /// The connections one at a time: each built as it is taken (its texts shared with the
    /// table), so they are never all held as [`Connection`]s at once.
    fn into_iter(self) -> IntoIter {
        IntoIter {
            list: self,
            next: 0,
            ips: Interner::default(),
        }
    }
}

#[cfg(test)]
mod tests;
