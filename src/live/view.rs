//! The live view: every open connection of the cluster, keyed by (server id, cid), kept
//! current by connect and disconnect events and reconciled with sweeps. Plain data, no I/O.
//!
//! **Reconciliation without losing or double-counting events.** A sweep (or a targeted read
//! of one user) is a *sync*: [`LiveView::begin_sync`] before its requests go out, then
//! [`LiveView::finish_sync`] with what each server answered. Events keep being applied while it
//! runs, and are also journalled. At the end, each answering server's connections (in the
//! sync's scope) are replaced by its reply, and the journalled events of that server and scope
//! are applied again, in order. A server's events and its replies leave it in order, and a
//! (server id, cid) is never reused, so applying an event twice changes nothing: an event the
//! reply already reflects is a no-op, one after the reply is kept.
//!
//! A server may send a connection's event a moment before or after its list shows it (its
//! connect event before the connection is listed, its disconnect before it is unlisted), so a
//! sync replays not only the events since it began but the last [`RECENT`] before too: any
//! suffix of a server's events can be applied again safely (a connection's disconnect always
//! follows its connect in the suffix).
//!
//! **Completeness.** The view is complete only when a complete sweep that started after the
//! last gap ([`LiveView::gap`]: connwatch's reconnect, a slow consumer, a server silent,
//! restarted or new) has reconciled it. While it is not, nothing resolves and nothing is kicked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::census::Aggregate;
use crate::connlist::ConnList;
use crate::intern::{same_text, FxBuild, Interner, Str};
use crate::snapshot::{ConnRef, Connection, ServerSeen, Snapshot};

/// Deltas before a sync's start that it replays too (see the module docs): at 2,000 events a
/// second, the last 5 seconds; a few MiB at most.
pub const RECENT: u64 = 10_000;

/// A change to the live view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one delta at a time; boxing would only add an allocation
pub enum Delta {
    /// A connection opened.
    Open(Connection),
    /// A connection closed.
    Close {
        /// Server id.
        server_id: String,
        /// Connection id.
        cid: u64,
    },
}

/// A delta as the view keeps it: an opened connection is allocated once and shared by the
/// map and the journal (no copy per event).
#[derive(Debug, Clone)]
enum Change {
    Open(Arc<Connection>),
    Close { server_id: String, cid: u64 },
}

impl Change {
    fn server_id(&self) -> &str {
        match self {
            Change::Open(c) => &c.server_id,
            Change::Close { server_id, .. } => server_id,
        }
    }
}

/// What a sync reads: everything, or one user's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every connection (a full sweep).
    All,
    /// One user's connections (CONNZ filtered by `acc` and `user`).
    User {
        /// Account.
        account: String,
        /// User.
        user: String,
    },
}

impl Scope {
    /// Whether a connection of `conn_account` and `conn_user` is in the scope.
    fn holds(&self, conn_account: &str, conn_user: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::User { account, user } => conn_account == account && conn_user == user,
        }
    }
}

/// A sync under way (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncId {
    /// The first journal position it replays.
    start: u64,
    /// The journal position when it began.
    begun: u64,
}

/// A user's key: (account, user).
pub type UserKey = (String, String);

/// One server's open connections, by cid.
type ServerConns = HashMap<u64, Arc<Connection>, FxBuild>;

/// Open connections counted per user and per (server, account).
#[derive(Debug, Default)]
struct Counts {
    /// Open connections per user (account, user).
    users: HashMap<(Str, Str), u64, FxBuild>,
    /// Open client connections (not leafnodes) per (server id, account): what each server
    /// announces (see [`super::crosscheck`]).
    clients: HashMap<(Str, Str), u64, FxBuild>,
    /// Users whose connections changed since the last census, account → users (see
    /// [`LiveView::counted`]); `all`: every user (a sweep listed them all).
    changed: HashMap<Str, HashSet<Str, FxBuild>, FxBuild>,
    all: bool,
}

/// The live view (see the module docs).
#[derive(Debug, Default)]
pub struct LiveView {
    /// Every open connection, by server id and cid; its texts are shared through `texts`, so
    /// an entry owns no text of its own and the view's memory beyond the entries grows with
    /// distinct values.
    conns: HashMap<Str, ServerConns, FxBuild>,
    /// The texts of the connections held (pruned of the ones no longer used at each sync).
    texts: Interner,
    /// Open connections per user and per (server, account).
    counts: Counts,
    /// Server id → name, of the servers reconciled by a sweep or heard from.
    servers: BTreeMap<String, String>,
    /// The last [`RECENT`] deltas, and all since the oldest sync under way began, with their
    /// position.
    journal: Vec<(u64, Change)>,
    /// Position of the next delta.
    next: u64,
    /// Syncs under way (their start positions).
    open_syncs: Vec<u64>,
    /// Position of the last gap; `None`: none yet.
    last_gap: Option<u64>,
    /// Why the view is not complete; `None` when it is.
    incomplete: Option<String>,
    /// Why the events are not followed ([`LiveView::pause`]); no sweep makes the view complete
    /// until [`LiveView::resume`].
    paused: Option<String>,
    /// Deltas applied, ever.
    applied: u64,
    /// Servers whose CONNZ does not list leafnode connections (older than 2.12): their
    /// `Leafnode` connections come from events only, and no reply replaces them.
    leafnodes_unlisted: HashSet<String>,
    /// The last census ([`LiveView::counted`]), for the next one's unchanged users: shared
    /// with the round's snapshot, taken back whole once the round let it go.
    last_census: Option<Arc<Aggregate>>,
}

/// Asks the processor to load `c` into its cache (a hint; nothing where there is none).
fn prefetch(c: &Connection) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (c as *const Connection).cast::<i8>();
        let size = std::mem::size_of::<Connection>();
        // Every cache line it touches: one per 64 bytes, and the one of its last byte.
        for at in (0..size).step_by(64).chain([size - 1]) {
            // SAFETY: a prefetch reads nothing and faults on nothing; `p + at` is inside `c`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

/// Calls `f` on each of `conns`, asking the processor for the ones a few ahead meanwhile:
/// each connection is an allocation of its own, met in no order.
fn each_prefetched<'a>(
    conns: impl Iterator<Item = &'a Connection>,
    mut f: impl FnMut(&'a Connection),
) {
    const AHEAD: usize = 8;
    let mut conns = conns;
    let mut next: std::collections::VecDeque<&Connection> = conns.by_ref().take(AHEAD).collect();
    next.iter().for_each(|c| prefetch(c));
    while let Some(c) = next.pop_front() {
        if let Some(n) = conns.next() {
            prefetch(n);
            next.push_back(n);
        }
        f(c);
    }
}

/// The connections held for server `id`, an empty map (keyed by `key()`) made when there is
/// none.
fn server_conns<'m>(
    conns: &'m mut HashMap<Str, ServerConns, FxBuild>,
    id: &str,
    key: impl FnOnce() -> Str,
) -> &'m mut ServerConns {
    if !conns.contains_key(id) {
        conns.insert(key(), ServerConns::default());
    }
    conns.get_mut(id).expect("just made")
}

/// Whether two texts are equal; the same text (shared from one table) is told at once.
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || same_text(a, b)
}

/// Holds `c` (listed by its server) in `server` in place of what was held. The same
/// connection is updated where it is: only what changed is written, each text from `texts`.
fn list(server: &mut ServerConns, counts: &mut Counts, texts: &mut Interner, c: &ConnRef<'_>) {
    let held = match server.get_mut(&c.cid) {
        Some(held)
            if same(&held.account, c.account)
                && same(&held.user, c.user)
                && same(&held.kind, c.kind) =>
        {
            held
        }
        Some(held) => {
            counts.remove(held);
            let new = c.to_connection(texts);
            counts.add(&new);
            *held = Arc::new(new);
            return;
        }
        None => {
            let new = c.to_connection(texts);
            counts.add(&new);
            server.insert(c.cid, Arc::new(new));
            return;
        }
    };
    // Updated where it is (copied first only while the journal shares it).
    let h = Arc::make_mut(held);
    let text = |held: &mut Str, now: &str, texts: &mut Interner| {
        if !same(held, now) {
            *held = texts.get(now);
        }
    };
    let opt_text = |held: &mut Option<Str>, now: Option<&str>, texts: &mut Interner| {
        if held.as_deref() != now {
            *held = now.map(|n| texts.get(n));
        }
    };
    text(&mut h.server, c.server, texts);
    text(&mut h.ip, c.ip.text(&mut [0; 15]), texts);
    text(&mut h.name, c.name, texts);
    opt_text(&mut h.account_name, c.account_name, texts);
    opt_text(&mut h.user_name, c.user_name, texts);
    if !h.tags.iter().map(|t| t.as_str()).eq(c.tags.iter()) {
        h.tags = c.tags.iter().map(|t| texts.get(t)).collect();
    }
    h.start = c.start;
    h.idle = c.idle;
    h.last_activity = c.last_activity;
    h.subscriptions = c.subscriptions;
    h.in_msgs = c.in_msgs;
    h.out_msgs = c.out_msgs;
}

impl Counts {
    /// Notes that a user's connections changed (for the next census).
    fn mark(&mut self, account: &Str, user: &Str) {
        if self.all {
            return;
        }
        match self.changed.get_mut(&**account) {
            Some(users) if users.contains(&**user) => {}
            Some(users) => {
                users.insert(user.clone());
            }
            None => {
                let users = HashSet::from_iter([user.clone()]);
                self.changed.insert(account.clone(), users);
            }
        }
    }

    /// Counts `c` in; returns its user.
    fn add(&mut self, c: &Connection) -> (Str, Str) {
        self.mark(&c.account, &c.user);
        if c.kind == "Client" {
            *self
                .clients
                .entry((c.server_id.clone(), c.account.clone()))
                .or_default() += 1;
        }
        let user = (c.account.clone(), c.user.clone());
        *self.users.entry(user.clone()).or_default() += 1;
        user
    }

    /// Counts `c` out; returns its user.
    fn remove(&mut self, c: &Connection) -> (Str, Str) {
        self.mark(&c.account, &c.user);
        if c.kind == "Client" {
            let key = (c.server_id.clone(), c.account.clone());
            if let Some(n) = self.clients.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.clients.remove(&key);
                }
            }
        }
        let user = (c.account.clone(), c.user.clone());
        if let Some(n) = self.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&user);
            }
        }
        user
    }
}

/// `held` (listed by a server before it authenticated) with the identity of `event` (its
/// connect event, sent once authorized); the counters stay those of the listing.
fn adopt_identity(held: Connection, event: Connection) -> Connection {
    Connection {
        account: event.account,
        account_name: event.account_name.or(held.account_name),
        user: event.user,
        user_name: event.user_name.or(held.user_name),
        name: event.name,
        tags: event.tags,
        kind: event.kind,
        ..held
    }
}

impl LiveView {
    /// An empty view, not complete until a complete sweep reconciles it.
    pub fn new() -> Self {
        Self {
            incomplete: Some("no complete sweep yet".into()),
            ..Self::default()
        }
    }

    /// Applies one event; returns the user it changed, if it changed anything.
    pub fn apply(&mut self, d: Delta) -> Option<UserKey> {
        self.applied += 1;
        let change = match d {
            Delta::Open(c) => Change::Open(Arc::new(self.shared(c))),
            Delta::Close { server_id, cid } => Change::Close { server_id, cid },
        };
        self.journal.push((self.next, change.clone()));
        self.next += 1;
        if self.open_syncs.is_empty() && self.journal.len() as u64 > 2 * RECENT {
            self.trim();
        }
        self.apply_only(change)
            .map(|(account, user)| (account.into(), user.into()))
    }

    /// `c` with its texts replaced by the view's shared ones.
    fn shared(&mut self, c: Connection) -> Connection {
        let t = &mut self.texts;
        Connection {
            server: t.get(&c.server),
            server_id: t.get(&c.server_id),
            kind: t.get(&c.kind),
            ip: t.get(&c.ip),
            name: t.get(&c.name),
            account: t.get(&c.account),
            account_name: c.account_name.as_deref().map(|n| t.get(n)),
            user: t.get(&c.user),
            user_name: c.user_name.as_deref().map(|n| t.get(n)),
            tags: c.tags.iter().map(|tag| t.get(tag)).collect(),
            ..c
        }
    }

    fn apply_only(&mut self, d: Change) -> Option<(Str, Str)> {
        match d {
            Change::Open(c) => {
                let server = server_conns(&mut self.conns, &c.server_id, || c.server_id.clone());
                if let Some(held) = server.get_mut(&c.cid) {
                    // Known already (from a reply): its counters and idle time are the better
                    // ones. But a server lists a connection from the moment it is accepted,
                    // before its CONNECT authenticates it (in `$G`, no user, no name), while its
                    // connect event is sent once it is authorized: the event's identity wins.
                    if held.account == c.account && held.user == c.user {
                        if held.name.is_empty() && !c.name.is_empty() {
                            Arc::make_mut(held).name = c.name.clone();
                            self.counts.mark(&c.account, &c.user);
                        }
                        return None;
                    }
                    self.counts.remove(held);
                    let c = adopt_identity(Connection::clone(held), Connection::clone(&c));
                    let user = self.counts.add(&c);
                    *held = Arc::new(c);
                    return Some(user);
                }
                let user = self.counts.add(&c);
                server.insert(c.cid, c);
                Some(user)
            }
            Change::Close { server_id, cid } => {
                let server = self.conns.get_mut(server_id.as_str())?;
                let held = server.remove(&cid)?;
                if server.is_empty() {
                    self.conns.remove(server_id.as_str());
                }
                Some(self.counts.remove(&held))
            }
        }
    }

    /// Starts a sync: events from now on are journalled until it finishes.
    pub fn begin_sync(&mut self) -> SyncId {
        // Never from before the last gap: events around it may be missing, so what came
        // before it is no suffix of a server's events.
        let start = self
            .next
            .saturating_sub(RECENT)
            .max(self.last_gap.map_or(0, |g| g + 1));
        self.open_syncs.push(start);
        SyncId {
            start,
            begun: self.next,
        }
    }

    /// [`LiveView::begin_sync`] for a full sweep: the last round's census is let go at once
    /// (the sweep lists every connection again, so none of it would be used), so it is not
    /// held while the sweep reads.
    pub fn begin_sweep(&mut self) -> SyncId {
        self.last_census = None;
        self.begin_sync()
    }

    /// Keeps the last [`RECENT`] deltas and those the syncs under way need.
    fn trim(&mut self) {
        let keep_from = self
            .open_syncs
            .iter()
            .copied()
            .min()
            .unwrap_or(u64::MAX)
            .min(self.next.saturating_sub(RECENT));
        self.journal.retain(|(pos, _)| *pos >= keep_from);
    }

    /// Finishes a sync: for each server in `servers` (id, name), its connections in `scope`
    /// become those of `replies` (the connections those servers listed), then the events
    /// journalled since the sync began for that server and scope are applied again.
    /// Connections of other servers are left as they are.
    pub fn finish_sync<'a>(
        &mut self,
        id: SyncId,
        scope: &Scope,
        servers: &[(String, String)],
        replies: impl IntoIterator<Item = ConnRef<'a>>,
    ) {
        let ids: Vec<&str> = servers.iter().map(|(id, _)| id.as_str()).collect();
        self.sync_servers(id, scope, &ids, replies);
        self.end_sync(id, servers);
    }

    /// Takes one server's whole list while the sweep begun at `id` still runs (a bounded sweep
    /// hands each server's over as it comes: [`crate::sweep::Handover`]), so the sweep never
    /// holds every server's list at once. As at [`LiveView::reconcile`]: its connections
    /// become those listed (`list` from `from` on), then its journalled events are applied
    /// again. The reconcile at the sweep's end leaves it alone (`Snapshot::handed`).
    pub fn take_server(
        &mut self,
        id: SyncId,
        server_id: &str,
        leafnodes_listed: bool,
        list: &mut ConnList,
        from: usize,
    ) {
        self.note_leafnodes(server_id, leafnodes_listed);
        list.share_texts(&mut self.texts);
        self.sync_servers(id, &Scope::All, &[server_id], list.iter_from(from));
    }

    /// Whether server `id`'s CONNZ lists its leafnode connections (else its `Leafnode`
    /// connections come from events only, and no reply replaces them).
    fn note_leafnodes(&mut self, id: &str, listed: bool) {
        if listed {
            self.leafnodes_unlisted.remove(id);
        } else {
            self.leafnodes_unlisted.insert(id.to_string());
        }
    }

    /// For each server of `answered`: its connections in `scope` become those of `replies`,
    /// then its journalled events since the sync began are applied again.
    fn sync_servers<'a>(
        &mut self,
        id: SyncId,
        scope: &Scope,
        answered: &[&str],
        replies: impl IntoIterator<Item = ConnRef<'a>>,
    ) {
        let answered: HashSet<&str, FxBuild> = answered.iter().copied().collect();
        // What a list changes in place (counters, times, texts) is its scope's to count again.
        match scope {
            _ if answered.is_empty() => {}
            Scope::All => self.counts.all = true,
            Scope::User { account, user } => self
                .counts
                .mark(&account.as_str().into(), &user.as_str().into()),
        }
        // Each listed connection is held in place of what was (counts move only when its user
        // or kind changed); then the ones held but not listed go. A reply's connections come
        // together: its server is looked up once for them.
        let mut listed: HashMap<&str, HashSet<u64, FxBuild>, FxBuild> = HashMap::default();
        let Self {
            conns,
            texts,
            counts,
            ..
        } = self;
        let mut replies = replies.into_iter().peekable();
        while let Some(first) = replies.next() {
            let server_id = first.server_id;
            let mut server = answered.get(server_id).map(|sid| {
                let server = server_conns(conns, server_id, || texts.get(server_id));
                (server, listed.entry(*sid).or_default())
            });
            let mut next = Some(first);
            while let Some(c) = next {
                if let Some((server, listed)) = server.as_mut() {
                    if scope.holds(c.account, c.user) {
                        listed.insert(c.cid);
                        list(server, counts, texts, &c);
                    }
                }
                next = replies.next_if(|c| same(c.server_id, server_id));
            }
        }
        for sid in &answered {
            let Some(server) = self.conns.get_mut(*sid) else {
                continue;
            };
            let leafnodes_kept = self.leafnodes_unlisted.contains(*sid);
            let listed = listed.get(sid);
            let counts = &mut self.counts;
            server.retain(|cid, c| {
                let stale = !listed.is_some_and(|l| l.contains(cid))
                    && scope.holds(&c.account, &c.user)
                    && !(leafnodes_kept && c.kind == "Leafnode");
                if stale {
                    counts.remove(c);
                }
                !stale
            });
            if server.is_empty() {
                self.conns.remove(*sid);
            }
        }
        let replay: Vec<Change> = self
            .journal
            .iter()
            .filter(|(pos, d)| {
                *pos >= id.start
                    && answered.contains(d.server_id())
                    && match d {
                        Change::Open(c) => scope.holds(&c.account, &c.user),
                        // A close is applied whatever its user: it only removes that key.
                        Change::Close { .. } => true,
                    }
            })
            .map(|(_, d)| d.clone())
            .collect();
        for d in replay {
            self.apply_only(d);
        }
    }

    /// Ends the sync `id` that read `servers` (id, name): they are known by name, and what was
    /// journalled for it only is let go.
    fn end_sync(&mut self, id: SyncId, servers: &[(String, String)]) {
        for (sid, name) in servers {
            self.servers.insert(sid.clone(), name.clone());
        }
        if let Some(i) = self.open_syncs.iter().position(|s| *s == id.start) {
            self.open_syncs.remove(i);
        }
        self.trim();
        self.texts.forget_unused();
    }

    /// Ends a sync that read nothing (its sweep failed): only its journal is let go.
    pub fn abandon(&mut self, id: SyncId) {
        self.finish_sync(id, &Scope::All, &[], std::iter::empty());
    }

    /// Finishes a full sweep's sync with its snapshot (its connections, and its compact list,
    /// whose texts become the view's). A complete sweep that began after the last gap makes
    /// the view complete, and drops the servers it did not hear from (gone, or restarted under
    /// a new id); a partial one leaves their connections as they were.
    ///
    /// A server id the view did not hold (a server restarted or added), heard by this sweep
    /// before any probe saw it, is a gap like the probe's `server_new` (fail closed): the view
    /// is not complete until a sweep that begins after it. Returns those servers (id, name);
    /// none on the first sweep, when the view held no server yet.
    pub fn reconcile(&mut self, id: SyncId, snap: &mut Snapshot) -> Vec<(String, String)> {
        let servers: Vec<(String, String)> = snap
            .servers
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        for (sid, _) in &servers {
            self.note_leafnodes(sid, !snap.leafnodes_unlisted.contains(sid));
        }
        let appeared: Vec<(String, String)> = servers
            .iter()
            .filter(|(sid, _)| !self.servers.is_empty() && !self.servers.contains_key(sid))
            .cloned()
            .collect();
        snap.compact.share_texts(&mut self.texts);
        let connections = snap.connections.iter().map(Connection::view);
        // The servers whose lists the view took during the sweep are reconciled already.
        let rest: Vec<&str> = servers
            .iter()
            .map(|(sid, _)| sid.as_str())
            .filter(|sid| !snap.handed.iter().any(|h| h == sid))
            .collect();
        self.sync_servers(
            id,
            &Scope::All,
            &rest,
            connections.chain(snap.compact.iter()),
        );
        self.end_sync(id, &servers);
        if let Some((sid, name)) = appeared.first() {
            self.gap(format!("server {name} ({sid}) is new or restarted"));
        }
        if snap.partial() {
            if self.incomplete.is_none() {
                self.incomplete = Some("the last sweep was partial".into());
            }
            return appeared;
        }
        let gone: Vec<String> = self
            .servers
            .keys()
            .filter(|sid| !servers.iter().any(|(s, _)| s == *sid))
            .cloned()
            .collect();
        for sid in gone {
            self.forget_server(&sid);
        }
        if self.last_gap.is_none_or(|g| g < id.begun) {
            self.incomplete = self.paused.clone();
        }
        appeared
    }

    fn forget_server(&mut self, server_id: &str) {
        self.servers.remove(server_id);
        self.leafnodes_unlisted.remove(server_id);
        for held in self
            .conns
            .remove(server_id)
            .into_iter()
            .flat_map(|s| s.into_values())
        {
            self.counts.remove(&held);
        }
    }

    /// A gap: events may have been lost, so the view is not complete until a complete sweep
    /// that begins after now.
    pub fn gap(&mut self, why: impl Into<String>) {
        self.last_gap = Some(self.next);
        self.next += 1;
        self.journal.clear();
        self.incomplete = Some(why.into());
    }

    /// The events are no longer followed (`why`): a gap, and the view stays not complete
    /// whatever sweeps reconcile it, until [`LiveView::resume`].
    pub fn pause(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.paused = Some(why.clone());
        self.gap(why);
    }

    /// The events are followed again (subscribed before this call): a gap, which the next
    /// complete sweep closes.
    pub fn resume(&mut self, why: impl Into<String>) {
        self.paused = None;
        self.gap(why);
    }

    /// Whether the events are not followed ([`LiveView::pause`]): sweeps alone then say what
    /// is open.
    pub fn paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Why the view is not complete; `None` when it is.
    pub fn incomplete(&self) -> Option<&str> {
        self.incomplete.as_deref()
    }

    /// The servers reconciled (id → name).
    pub fn servers(&self) -> &BTreeMap<String, String> {
        &self.servers
    }

    /// A user's open connections.
    pub fn count(&self, account: &str, user: &str) -> u64 {
        self.counts
            .users
            .get(&(Str::from(account), Str::from(user)))
            .copied()
            .unwrap_or(0)
    }

    /// Every open connection of the view.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values().flat_map(|s| s.values()).map(|c| &**c)
    }

    /// Makes `snap` (a sweep this view reconciled) hold all its connections, for a round that
    /// works from the sweep alone (a paused view): those of its compact list, and those of
    /// the lists the view took from it as they came, copied back.
    pub fn sweep_alone(&self, snap: &mut Snapshot) {
        let compact = std::mem::take(&mut snap.compact);
        snap.connections.extend(compact);
        snap.connections
            .extend(self.connections_of(&snap.handed).cloned());
        snap.handed.clear();
        snap.handed_connections = 0;
    }

    /// The open connections of the servers `ids`.
    fn connections_of<'a>(&'a self, ids: &'a [String]) -> impl Iterator<Item = &'a Connection> {
        ids.iter()
            .filter_map(|id| self.conns.get(id.as_str()))
            .flat_map(|s| s.values())
            .map(|c| &**c)
    }

    /// A server's open client connections (not leafnodes) in an account.
    pub fn clients_of(&self, server_id: &str, account: &str) -> u64 {
        self.counts
            .clients
            .get(&(Str::from(server_id), Str::from(account)))
            .copied()
            .unwrap_or(0)
    }

    /// Open connections in all.
    pub fn len(&self) -> usize {
        self.conns.values().map(HashMap::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deltas applied since the view was made.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Deltas journalled for the syncs under way (memory held for them).
    pub fn journalled(&self) -> usize {
        self.journal.len()
    }

    /// The view as a snapshot, for the census and the rules: the connections now, counted
    /// per server; `sweep` (the last sweep) gives who was expected, missing and in error.
    /// Partial when the view is not complete.
    pub fn snapshot(&self, sweep: &Snapshot, now: DateTime<Utc>) -> Snapshot {
        Snapshot {
            connections: self.connections().cloned().collect(),
            ..self.without_connections(sweep, now)
        }
    }

    /// [`LiveView::snapshot`] with the census instead of the connections: each one counted into
    /// `census` (empty, with its rules), none copied.
    ///
    /// Between sweeps only the users whose connections changed since the last census are
    /// counted again (events change a few users at a time; the others are the last census's).
    /// Everything is counted when a sweep listed the connections (it moved every counter),
    /// when the rules are not the last census's, or when most users changed.
    pub fn counted(&mut self, sweep: &Snapshot, now: DateTime<Utc>, census: Aggregate) -> Snapshot {
        let census = self.recount(census);
        Snapshot {
            census: Some(census),
            ..self.without_connections(sweep, now)
        }
    }

    fn recount(&mut self, rules: Aggregate) -> Arc<Aggregate> {
        let changed = std::mem::take(&mut self.counts.changed);
        let all = std::mem::take(&mut self.counts.all);
        let pairs: Vec<(&str, &str)> = changed
            .iter()
            .flat_map(|(a, us)| us.iter().map(move |u| (&**a, &**u)))
            .collect();
        let last = self.last_census.take();
        let census = match last {
            Some(last) if !all && last.same_rules(&rules) && pairs.len() * 2 <= last.users() => {
                // A copy only while the last round's snapshot still holds it.
                let mut last = Arc::unwrap_or_clone(last);
                for (account, user) in &pairs {
                    last.forget_user(account, user);
                }
                last.forget_unused_texts();
                let of_changed = |c: &Connection| {
                    if pairs.len() <= 8 {
                        pairs
                            .iter()
                            .any(|(a, u)| same(a, &c.account) && same(u, &c.user))
                    } else {
                        changed
                            .get(&*c.account)
                            .is_some_and(|us| us.contains(&*c.user))
                    }
                };
                if !pairs.is_empty() {
                    each_prefetched(self.connections(), |c| {
                        if of_changed(c) {
                            last.add(&c.view());
                        }
                    });
                }
                last
            }
            stale => {
                // Let go before counting anew: never two whole censuses at once.
                drop(stale);
                let mut census = rules;
                each_prefetched(self.connections(), |c| census.add(&c.view()));
                census
            }
        };
        // Kept for the next round, after a sweep's census too (a sweep lets it go as it
        // begins: its peak memory holds no second census).
        let census = Arc::new(census);
        self.last_census = Some(Arc::clone(&census));
        census
    }

    fn without_connections(&self, sweep: &Snapshot, now: DateTime<Utc>) -> Snapshot {
        let mut servers: Vec<ServerSeen> = self
            .servers
            .iter()
            .filter(|(id, _)| sweep.servers.iter().any(|s| &s.id == *id))
            .map(|(id, name)| ServerSeen {
                name: name.clone(),
                id: id.clone(),
                connections: self.conns.get(id.as_str()).map_or(0, |s| s.len() as u64),
                pages: 0,
            })
            .collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            started: Some(now),
            duration: std::time::Duration::ZERO,
            servers_expected: sweep.servers_expected,
            servers,
            missing: sweep.missing.clone(),
            errors: sweep.errors.clone(),
            bad_replies: 0,
            requests: 0,
            pages: 0,
            bytes: 0,
            peak_bytes_in_flight: 0,
            connections: Vec::new(),
            compact: Default::default(),
            census: None,
            gap: self.incomplete.clone(),
            topology: sweep.topology.clone(),
            pending: sweep.pending,
            leafnodes_unlisted: sweep.leafnodes_unlisted.clone(),
            handed: Vec::new(),
            handed_connections: 0,
        }
    }
}

#[cfg(test)]
mod tests;
