//! The census built one connection at a time: per user, counts by server, client name and IP,
//! processes, oldest and newest start, and the longest-idle leak suspects. Nothing here holds a
//! connection: memory grows with users, their distinct servers, names, IPs and processes, and
//! at most `detect.max_suspects_per_user` suspects per user and process, not with connections.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use hashbrown::hash_map::RawEntryMut;
use hashbrown::{Equivalent, HashMap};
use std::hash::Hash;
use std::time::Duration;

use super::ip::{Ip, IpRef, ProcessRef};
use super::{
    pattern_alone, threshold_for, Census, LeakPattern, ProcessCount, Signature, Spread, Suspect,
    UserCensus, USED_ONCE_MIN_PER_PROCESS,
};
use crate::config::DetectConfig;
use crate::intern::{same_text, FxBuild, Interner, Pair, Str, Text};
use crate::snapshot::{ConnRef, Connection};
use crate::stamp::Stamp;

/// Builds the census from a sweep's connections: [`Aggregate::add`] of each, then
/// [`Aggregate::finish`].
pub fn build(
    connections: &[Connection],
    system_account: Option<&str>,
    detect: &DetectConfig,
) -> Census {
    let mut agg = Aggregate::new(system_account, detect);
    for c in connections {
        agg.add(&c.view());
    }
    agg.finish()
}

/// A census under construction: feed it every connection of a sweep once ([`Aggregate::add`]),
/// in any order, then [`Aggregate::finish`]. The result is the same as [`build`] over the
/// same connections. Censuses of parts of a sweep (one per server reply) are joined with
/// [`Aggregate::absorb`].
#[derive(Debug, Clone)]
pub struct Aggregate {
    detect: Arc<DetectConfig>,
    sig: Signature,
    system_account: Option<Arc<str>>,
    /// Connections listed before they authenticated are counted in `pending`, not added.
    skip_pending: bool,
    connections: u64,
    pending: u64,
    /// (Account, user) → counts, looked up by a connection's borrowed texts ([`Pair`]), without
    /// a key built per connection.
    users: HashMap<(Str, Str), UserAgg, FxBuild>,
    /// The texts of the keys (account, user, IP, name) and of the suspects, each held once.
    texts: Interner,
    /// The server of the first connection added. Its connections are counted per user apart
    /// from `by_server` (one comparison instead of a lookup: a reply's are all one server's).
    first_server: Option<Str>,
}

/// Entries of a user's `by_ip` and `by_name` from which its finished census is kept for the
/// next `finish` (a fleet whose clients each have an IP of their own): building those maps is
/// what a user costs; a short one is built again, and a copy kept would cost memory for
/// nothing.
const LONG_MAPS: usize = 64;

/// One user's counts while the census is built.
#[derive(Debug, Default, Clone)]
struct UserAgg {
    /// Identity, totals and suspect counts; its maps and starts stay empty until `finish`.
    census: UserCensus,
    oldest_start: Option<Stamp>,
    newest_start: Option<Stamp>,
    by_server: HashMap<Str, u64, FxBuild>,
    /// Connections at the census's `first_server`, not in `by_server` until joined or finished.
    at_first_server: u64,
    /// (IP, client name) → counts (by name and by IP are summed from it at `finish`).
    processes: HashMap<(Ip, Str), Process, FxBuild>,
    /// `zero_msgs` suspects.
    zero_msgs: Kept,
    /// Its census once finished, kept when its maps are long ([`LONG_MAPS`]), until a
    /// connection is added or joined: a live round then finishes again only the users that
    /// changed, and the others' copies share their long maps. Boxed: a user's map entry stays
    /// small (a census while parsing has one map per reply).
    finished: OnceLock<Box<UserCensus>>,
}

/// One (IP, client name) of a user.
#[derive(Debug, Default, Clone)]
struct Process {
    connections: u64,
    /// Connections idle long enough whose every message came soon after connecting: suspects
    /// of the `used_once` pattern once the process holds at least
    /// [`USED_ONCE_MIN_PER_PROCESS`] of them.
    used_once: u64,
    /// The longest idle of them (made at the first: most processes have none).
    candidates: Option<Box<Kept>>,
}

/// What a suspect shows of its connection.
#[derive(Debug, Clone)]
struct Candidate {
    /// Its place among the connections added: the final tie-break, as the input order was.
    seq: u64,
    server: Str,
    server_id: Str,
    cid: u64,
    name: Str,
    ip: Str,
    start: Option<Stamp>,
    idle: Duration,
    in_msgs: u64,
    out_msgs: u64,
    subscriptions: u32,
    pattern: LeakPattern,
}

impl Candidate {
    fn of(seq: u64, c: &ConnRef, texts: &mut Interner, pattern: LeakPattern) -> Self {
        Self {
            seq,
            server: texts.get(c.server),
            server_id: texts.get(c.server_id),
            cid: c.cid,
            name: texts.get(c.name),
            ip: texts.get(c.ip.text(&mut [0; 15])),
            start: c.start,
            idle: c.idle,
            in_msgs: c.in_msgs,
            out_msgs: c.out_msgs,
            subscriptions: c.subscriptions,
            pattern,
        }
    }

    fn to_suspect(&self) -> Suspect {
        Suspect {
            server: self.server.to_string(),
            server_id: self.server_id.to_string(),
            cid: self.cid,
            name: self.name.to_string(),
            ip: self.ip.to_string(),
            start: self.start.and_then(Stamp::time),
            idle: self.idle,
            pattern: Some(self.pattern),
            in_msgs: self.in_msgs,
            out_msgs: self.out_msgs,
            subscriptions: self.subscriptions,
        }
    }
}

/// Where a suspect sorts: longest idle first, then lowest cid, then the order they came in
/// (its place among the connections added). A total order, so trimming as connections arrive
/// keeps the same ones as sorting all of them at the end.
type Place = (std::cmp::Reverse<Duration>, u64, u64);

fn place(idle: Duration, cid: u64, seq: u64) -> Place {
    (std::cmp::Reverse(idle), cid, seq)
}

impl Candidate {
    fn place(&self) -> Place {
        place(self.idle, self.cid, self.seq)
    }
}

/// The order of suspects: by [`Place`].
fn suspect_order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.place().cmp(&b.place())
}

/// The suspects of a user or process kept while the census is built: the `max` first in
/// [`suspect_order`] of those offered, sorted and cut back to `max` whenever `2 × max` are
/// held, so each costs amortized O(log max).
#[derive(Debug, Default, Clone)]
struct Kept {
    list: Vec<Candidate>,
    /// Whether the list was cut: its `max` first are then sorted, and one that sorts after
    /// the last of them can never be kept (at least `max` come before it).
    cut: bool,
}

impl Kept {
    /// Offers connection `c`, the `seq`-th added: its [`Candidate`] (its texts taken from
    /// `texts`) is made only when it can still be among the `max` kept. A leaking user's
    /// thousands of idle connections then cost a comparison each, not four text look-ups.
    fn offer(
        &mut self,
        seq: u64,
        c: &ConnRef,
        texts: &mut Interner,
        pattern: LeakPattern,
        max: usize,
    ) {
        if max == 0 {
            return;
        }
        if !self.cut || place(c.idle, c.cid, seq) < self.list[max - 1].place() {
            self.push(Candidate::of(seq, c, texts, pattern), max);
        }
    }

    /// Adds `c`, then cuts the list back to its `max` first once it holds `2 × max`.
    fn push(&mut self, c: Candidate, max: usize) {
        self.list.push(c);
        if self.list.len() >= max.saturating_mul(2).max(1) {
            self.list.sort_unstable_by(suspect_order);
            self.list.truncate(max);
            self.cut = true;
        }
    }

    /// Joins `more` (of a later part of the sweep: its places come after `base`).
    fn join(&mut self, more: Kept, base: u64, max: usize) {
        for mut c in more.list {
            c.seq += base;
            self.push(c, max);
        }
    }
}

fn add_counts(into: &mut HashMap<Str, u64, FxBuild>, from: HashMap<Str, u64, FxBuild>) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

/// The value of `key` (a connection's borrowed texts), made by `new` when there is none: one
/// look-up, the owned key made by `own` only then, its texts taken from the census's interner
/// (an account's text is held once for all its users, a server's once for all the users on
/// it, an IP's once for all its processes).
fn slot<'m, K, Q, V>(
    map: &'m mut HashMap<K, V, FxBuild>,
    key: &Q,
    own: impl FnOnce() -> K,
    new: impl FnOnce() -> V,
) -> &'m mut V
where
    K: Hash + Eq,
    Q: Hash + Equivalent<K>,
{
    match map.raw_entry_mut().from_key(key) {
        RawEntryMut::Occupied(o) => o.into_mut(),
        RawEntryMut::Vacant(v) => v.insert(own(), new()).1,
    }
}

impl Aggregate {
    /// An empty census with the thresholds and suspect signature of `detect`.
    pub fn new(system_account: Option<&str>, detect: &DetectConfig) -> Self {
        Self {
            detect: Arc::new(detect.clone()),
            sig: Signature::of(detect),
            system_account: system_account.map(Arc::from),
            skip_pending: false,
            connections: 0,
            pending: 0,
            users: HashMap::default(),
            texts: Interner::default(),
            first_server: None,
        }
    }

    /// Counts connections listed before they authenticated ([`ConnRef::pending`]) apart, when
    /// the servers require auth: nobody's yet.
    pub fn skipping_pending(mut self, auth_required: bool) -> Self {
        self.skip_pending = auth_required;
        self
    }

    /// An empty census with the same rules (for one part of a sweep, joined later with
    /// [`Aggregate::absorb`]).
    pub fn fork(&self) -> Self {
        Self {
            detect: Arc::clone(&self.detect),
            sig: self.sig,
            system_account: self.system_account.clone(),
            skip_pending: self.skip_pending,
            connections: 0,
            pending: 0,
            users: HashMap::default(),
            texts: Interner::default(),
            first_server: None,
        }
    }

    /// Whether `other` counts by the same rules (thresholds, system account, pending).
    pub fn same_rules(&self, other: &Aggregate) -> bool {
        (Arc::ptr_eq(&self.detect, &other.detect) || self.detect == other.detect)
            && self.system_account == other.system_account
            && self.skip_pending == other.skip_pending
    }

    /// Takes a user's connections out, as if none had been added (to count them again).
    pub fn forget_user(&mut self, account: &str, user: &str) {
        if let Some(u) = self.users.remove(&Pair(account, user)) {
            self.connections -= u.census.connections;
        }
    }

    /// Lets go of the suspects' texts no user holds any more.
    pub fn forget_unused_texts(&mut self) {
        self.texts.forget_unused();
    }

    /// Users counted.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Connections counted.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Connections left out as not yet authenticated ([`Aggregate::skipping_pending`]).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Counts one connection (each connection of the sweep exactly once).
    pub fn add(&mut self, c: &ConnRef) {
        if self.skip_pending && c.pending(true) {
            self.pending += 1;
            return;
        }
        self.connections += 1;
        let texts = &mut self.texts;
        let system = self
            .system_account
            .as_deref()
            .is_some_and(|s| same_text(s, c.account));
        let user = || (texts.get(c.account), texts.get(c.user));
        let u = slot(&mut self.users, &Pair(c.account, c.user), user, || {
            UserAgg {
                census: UserCensus {
                    account: c.account.to_string(),
                    account_name: c.account_name.map(String::from),
                    user: c.user.to_string(),
                    user_name: c.user_name.map(String::from),
                    tags: c.tags.iter().map(String::from).collect(),
                    system,
                    ..UserCensus::default()
                },
                ..UserAgg::default()
            }
        });
        u.finished.take();
        let uc = &mut u.census;
        uc.connections += 1;
        if uc.user_name.is_none() {
            uc.user_name = c.user_name.map(String::from);
        }
        if let Some(start) = c.start {
            u.oldest_start = Some(u.oldest_start.map_or(start, |o| o.min(start)));
            u.newest_start = Some(u.newest_start.map_or(start, |n| n.max(start)));
        }
        let first = self.first_server.get_or_insert_with(|| texts.get(c.server));
        if same_text(first, c.server) {
            u.at_first_server += 1;
        } else {
            let server = || texts.get(c.server);
            *slot(&mut u.by_server, &Text(c.server), server, u64::default) += 1;
        }
        let ip = IpRef::of_ip(c.ip);
        let process = slot(
            &mut u.processes,
            &ProcessRef(ip, c.name),
            || (ip.owned(texts), texts.get(c.name)),
            Process::default,
        );
        process.connections += 1;
        let max = self.detect.max_suspects_per_user;
        match pattern_alone(c, &self.sig) {
            Some(LeakPattern::ZeroMsgs) => {
                uc.idle_zero_msgs += 1;
                let seq = self.connections;
                u.zero_msgs.offer(seq, c, texts, LeakPattern::ZeroMsgs, max);
            }
            Some(LeakPattern::UsedOnce) => {
                process.used_once += 1;
                let seq = self.connections;
                process.candidates.get_or_insert_default().offer(
                    seq,
                    c,
                    texts,
                    LeakPattern::UsedOnce,
                    max,
                );
            }
            None => {}
        }
    }

    /// Joins the census of another part of the sweep (made by [`Aggregate::fork`]): the same as
    /// if its connections had been added here after these.
    pub fn absorb(&mut self, other: Aggregate) {
        let base = self.connections;
        let max = self.detect.max_suspects_per_user;
        self.connections += other.connections;
        self.pending += other.pending;
        let theirs_first = other.first_server;
        for (key, mut theirs) in other.users {
            theirs.count_first_server(theirs_first.as_ref());
            match self.users.get_mut(&key) {
                Some(u) => u.absorb(theirs, base, max),
                None => {
                    theirs.rebase(base);
                    self.users.insert(key, theirs);
                }
            }
        }
    }

    /// The census: thresholds applied, suspects chosen, users most connections first.
    pub fn finish(&self) -> Census {
        let detect = &*self.detect;
        let first = self.first_server.as_ref();
        let mut out: Vec<UserCensus> = self
            .users
            .values()
            .map(|u| {
                if let Some(kept) = u.finished.get() {
                    return UserCensus::clone(kept);
                }
                let census = finish_user(u, first, detect);
                if census.by_ip.len() + census.by_name.len() >= LONG_MAPS {
                    let _ = u.finished.set(Box::new(census.clone()));
                }
                census
            })
            .collect();
        out.sort_by(|a, b| {
            b.connections
                .cmp(&a.connections)
                .then_with(|| a.account.cmp(&b.account))
                .then_with(|| a.user.cmp(&b.user))
        });
        Census {
            connections: self.connections,
            users: out,
        }
    }
}

impl UserAgg {
    /// Moves the count at the census's first server into `by_server`.
    fn count_first_server(&mut self, first: Option<&Str>) {
        self.finished.take();
        if let Some((server, n)) = self.at_first(first) {
            *self.by_server.entry(server.clone()).or_default() += n;
        }
        self.at_first_server = 0;
    }

    /// The census's first server and this user's connections there, when it has any.
    fn at_first<'f>(&self, first: Option<&'f Str>) -> Option<(&'f Str, u64)> {
        first.zip(Some(self.at_first_server).filter(|n| *n > 0))
    }

    /// Joins the same user's counts from a later part of the sweep.
    fn absorb(&mut self, other: UserAgg, base: u64, max: usize) {
        self.finished.take();
        let (mine, theirs) = (&mut self.census, other.census);
        mine.connections += theirs.connections;
        mine.idle_zero_msgs += theirs.idle_zero_msgs;
        if mine.user_name.is_none() {
            mine.user_name = theirs.user_name;
        }
        self.oldest_start = min_some(self.oldest_start, other.oldest_start);
        self.newest_start = self.newest_start.max(other.newest_start);
        add_counts(&mut self.by_server, other.by_server);
        self.zero_msgs.join(other.zero_msgs, base, max);
        // A fleet's processes are mostly new to this part: room for them at once.
        self.processes.reserve(other.processes.len());
        for (key, p) in other.processes {
            let mine = self.processes.entry(key).or_default();
            mine.connections += p.connections;
            mine.used_once += p.used_once;
            if let Some(theirs) = p.candidates {
                let kept = mine.candidates.get_or_insert_default();
                kept.join(*theirs, base, max);
            }
        }
    }

    /// Moves its suspects' places after `base` (a later part of the sweep).
    fn rebase(&mut self, base: u64) {
        self.finished.take();
        let candidates = self
            .processes
            .values_mut()
            .filter_map(|p| p.candidates.as_mut())
            .flat_map(|k| k.list.iter_mut());
        for c in self.zero_msgs.list.iter_mut().chain(candidates) {
            c.seq += base;
        }
    }
}

fn min_some<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A user's census: `u` finished, its connections at `first` (the census's first server)
/// counted in `by_server`. Nothing of `u` is taken (a live view keeps its census).
fn finish_user(u: &UserAgg, first: Option<&Str>, detect: &DetectConfig) -> UserCensus {
    let mut uc = u.census.clone();
    let max = detect.max_suspects_per_user;
    let mut by_name = BTreeMap::new();
    let mut suspects: Vec<&Candidate> = u.zero_msgs.list.iter().collect();
    // The processes in the order of their IPs' texts, then names: `by_ip` is built from runs
    // of one IP, and the first process with the most connections is the top one. Most
    // processes of a user may have an IP of their own (a fleet of hosts or pods): a sort by
    // packed texts costs them less than a search of `by_ip` each.
    let mut processes: Vec<_> = u
        .processes
        .iter()
        .map(|((ip, name), p)| (ip.text_order(), name, ip, p))
        .collect();
    processes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut ips: Vec<(String, u64)> = Vec::new();
    let mut top: Option<(&Ip, &Str, u64, u64)> = None;
    let mut last_ip = None;
    for (order, name, ip, p) in processes {
        // Used once, but too few such connections in the process: a live client's start-up
        // work, not the connection-per-request pattern; not suspects, not counted.
        let used_once = if p.used_once < USED_ONCE_MIN_PER_PROCESS as u64 {
            0
        } else {
            p.used_once
        };
        uc.idle_used_once += used_once;
        if let Some(kept) = p.candidates.as_ref().filter(|_| used_once > 0) {
            suspects.extend(&kept.list);
        }
        match ips.last_mut() {
            Some((_, n)) if last_ip == Some(order) => *n += p.connections,
            _ => ips.push((order.text(), p.connections)),
        }
        last_ip = Some(order);
        count_in(&mut by_name, name, p.connections);
        if top.is_none_or(|(_, _, n, _)| p.connections > n) {
            top = Some((ip, name, p.connections, used_once));
        }
    }
    uc.oldest_start = u.oldest_start.and_then(Stamp::time);
    uc.newest_start = u.newest_start.and_then(Stamp::time);
    uc.leak_suspects = uc.idle_zero_msgs + uc.idle_used_once;
    suspects.sort_unstable_by(|a, b| suspect_order(a, b));
    suspects.truncate(max);
    uc.suspects = suspects.into_iter().map(Candidate::to_suspect).collect();
    let mut by_server: BTreeMap<String, u64> = u
        .by_server
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    if let Some((server, n)) = u.at_first(first) {
        *by_server.entry(server.to_string()).or_default() += n;
    }
    uc.by_server = by_server;
    uc.by_name = Arc::new(by_name);
    // In text order already: built in one pass, without a search per IP.
    uc.by_ip = Arc::new(BTreeMap::from_iter(ips));
    uc.threshold = threshold_for(detect, &uc);
    uc.over_threshold = uc.connections > uc.threshold;
    let top_process = top.map(|(ip, name, connections, used_once)| ProcessCount {
        ip: ip.to_string(),
        name: name.to_string(),
        connections,
        used_once,
    });
    uc.spread = spread(&uc, u.processes.len() as u64, top_process);
    uc
}

/// Counts `n` more for `key` (its text copied only when it is new).
fn count_in(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(count) => *count += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

/// Summarises how a user's connections spread over its `processes` (IP, client name), the
/// largest of them `top_process`, and its IPs.
fn spread(u: &UserCensus, processes: u64, top_process: Option<ProcessCount>) -> Spread {
    let mut per_ip: Vec<u64> = u.by_ip.values().copied().collect();
    per_ip.sort_unstable();
    Spread {
        processes,
        top_process,
        ips: per_ip.len() as u64,
        max_per_ip: per_ip.last().copied().unwrap_or(0),
        median_per_ip: per_ip.get(per_ip.len() / 2).copied().unwrap_or(0),
        unnamed: u.by_name.get("").copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_user_finished_is_kept_until_it_changes() {
        let conn = |server: &str, cid: u64, user: &str, ip: String| Connection {
            server: server.into(),
            cid,
            account: "APP".into(),
            user: user.into(),
            ip: ip.into(),
            name: "pod".into(),
            ..Connection::default()
        };
        // `fleet`: 70 clients, each on its own IP (long maps); `one`: one IP.
        let mut conns: Vec<Connection> = (0..70)
            .map(|i| conn("n1", i, "fleet", format!("10.0.0.{i}")))
            .collect();
        conns.push(conn("n1", 100, "one", "10.9.9.9".into()));
        let detect = DetectConfig::default();
        let mut agg = Aggregate::new(None, &detect);
        for c in &conns {
            agg.add(&c.view());
        }
        let of = |c: &Census, user: &str| c.users.iter().find(|u| u.user == user).cloned().unwrap();
        let first = agg.finish();
        // Finished again unchanged: the same census; the fleet's kept (its long maps shared,
        // not built again), the short one built again.
        let again = agg.finish();
        assert_eq!(again.users, first.users);
        assert!(Arc::ptr_eq(
            &of(&again, "fleet").by_ip,
            &of(&first, "fleet").by_ip
        ));
        assert!(!Arc::ptr_eq(
            &of(&again, "one").by_ip,
            &of(&first, "one").by_ip
        ));
        // A connection added to the fleet: counted anew.
        let more = conn("n2", 200, "fleet", "10.0.1.1".into());
        agg.add(&more.view());
        conns.push(more);
        let added = agg.finish();
        assert_eq!(of(&added, "fleet").connections, 71);
        assert_eq!(of(&added, "fleet").by_ip.len(), 71);
        assert_eq!(of(&added, "fleet").by_server.len(), 2);
        // A part joined (a later reply's census): counted anew too.
        let mut part = agg.fork();
        let late = conn("n3", 300, "fleet", "10.0.2.1".into());
        part.add(&late.view());
        conns.push(late);
        agg.absorb(part);
        let joined = agg.finish();
        assert_eq!(of(&joined, "fleet").connections, 72);
        assert_eq!(of(&joined, "fleet").by_server.get("n3"), Some(&1));
        assert_eq!(joined.users, build(&conns, None, &detect).users);
    }

    #[test]
    fn keys_share_their_texts_across_users_and_processes() {
        let conn = |server: &str, user: &str, name: &str| Connection {
            server: server.into(),
            account: "A".repeat(56).into(),
            user: user.into(),
            ip: "2001:db8::7".into(),
            name: name.into(),
            ..Connection::default()
        };
        let mut agg = Aggregate::new(None, &DetectConfig::default());
        // The census's first server is n1; n2 is counted in each user's `by_server`.
        for c in [
            conn("n1", "u1", "a"),
            conn("n2", "u1", "a"),
            conn("n2", "u2", "a"),
            conn("n2", "u2", "b"),
        ] {
            agg.add(&c.view());
        }
        let keys: Vec<&(Str, Str)> = agg.users.keys().collect();
        assert_eq!(keys.len(), 2);
        assert!(std::ptr::eq(keys[0].0.as_str(), keys[1].0.as_str()));
        let ips: Vec<&str> = agg
            .users
            .values()
            .flat_map(|u| u.processes.keys())
            .map(|(ip, _)| match ip {
                Ip::Text(t) => t.as_str(),
                Ip::V4(_) => panic!("an IPv6 address is held as its text"),
            })
            .collect();
        assert_eq!(ips.len(), 3, "(u1, a), (u2, a), (u2, b)");
        assert!(ips.iter().all(|ip| std::ptr::eq(*ip, ips[0])));
        let servers: Vec<&str> = agg
            .users
            .values()
            .flat_map(|u| u.by_server.keys().map(Str::as_str))
            .collect();
        assert_eq!(servers, ["n2", "n2"]);
        assert!(std::ptr::eq(servers[0], servers[1]));
        assert_eq!(agg.finish().connections, 4);

        // An IPv4 address holds no text: it is packed.
        let v4 = Connection {
            ip: "10.1.2.3".into(),
            ..conn("n1", "u3", "a")
        };
        agg.add(&v4.view());
        let u3 = &agg.users[&Pair(&"A".repeat(56), "u3")];
        let keys: Vec<&Ip> = u3.processes.keys().map(|(ip, _)| ip).collect();
        assert_eq!(keys, [&Ip::V4(0x0a01_0203)]);
        let finished = agg.finish();
        let u3 = finished.users.iter().find(|u| u.user == "u3").unwrap();
        assert_eq!(u3.by_ip["10.1.2.3"], 1);
        assert_eq!(u3.spread.top_process.as_ref().unwrap().ip, "10.1.2.3");
    }
}
