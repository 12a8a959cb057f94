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

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::snapshot::{Connection, ServerSeen, Snapshot};

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

impl Delta {
    fn server_id(&self) -> &str {
        match self {
            Delta::Open(c) => &c.server_id,
            Delta::Close { server_id, .. } => server_id,
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
    fn holds(&self, c: &Connection) -> bool {
        match self {
            Scope::All => true,
            Scope::User { account, user } => &c.account == account && &c.user == user,
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

/// The live view (see the module docs).
#[derive(Debug, Default)]
pub struct LiveView {
    conns: HashMap<(String, u64), Connection>,
    /// Open connections per user.
    users: HashMap<UserKey, u64>,
    /// Server id → name, of the servers reconciled by a sweep or heard from.
    servers: BTreeMap<String, String>,
    /// The last [`RECENT`] deltas, and all since the oldest sync under way began, with their
    /// position.
    journal: Vec<(u64, Delta)>,
    /// Position of the next delta.
    next: u64,
    /// Syncs under way (their start positions).
    open_syncs: Vec<u64>,
    /// Position of the last gap; `None`: none yet.
    last_gap: Option<u64>,
    /// Why the view is not complete; `None` when it is.
    incomplete: Option<String>,
    /// Deltas applied, ever.
    applied: u64,
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
        self.journal.push((self.next, d.clone()));
        self.next += 1;
        if self.open_syncs.is_empty() && self.journal.len() as u64 > 2 * RECENT {
            self.trim();
        }
        self.apply_only(d)
    }

    fn apply_only(&mut self, d: Delta) -> Option<UserKey> {
        match d {
            Delta::Open(c) => {
                let key = (c.server_id.clone(), c.cid);
                if self.conns.contains_key(&key) {
                    // Known already (from a reply): its details are the better ones.
                    return None;
                }
                let user = (c.account.clone(), c.user.clone());
                *self.users.entry(user.clone()).or_default() += 1;
                self.conns.insert(key, c);
                Some(user)
            }
            Delta::Close { server_id, cid } => {
                let c = self.conns.remove(&(server_id, cid))?;
                Some(self.uncount(&c))
            }
        }
    }

    fn uncount(&mut self, c: &Connection) -> UserKey {
        let user = (c.account.clone(), c.user.clone());
        if let Some(n) = self.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&user);
            }
        }
        user
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
    pub fn finish_sync(
        &mut self,
        id: SyncId,
        scope: &Scope,
        servers: &[(String, String)],
        replies: Vec<Connection>,
    ) {
        let answered: std::collections::HashSet<&str> =
            servers.iter().map(|(id, _)| id.as_str()).collect();
        let stale: Vec<(String, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| answered.contains(c.server_id.as_str()) && scope.holds(c))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(c) = self.conns.remove(&k) {
                self.uncount(&c);
            }
        }
        for c in replies {
            if answered.contains(c.server_id.as_str()) && scope.holds(&c) {
                self.apply_only(Delta::Open(c));
            }
        }
        let replay: Vec<Delta> = self
            .journal
            .iter()
            .filter(|(pos, d)| {
                *pos >= id.start
                    && answered.contains(d.server_id())
                    && match d {
                        Delta::Open(c) => scope.holds(c),
                        // A close is applied whatever its user: it only removes that key.
                        Delta::Close { .. } => true,
                    }
            })
            .map(|(_, d)| d.clone())
            .collect();
        for d in replay {
            self.apply_only(d);
        }
        for (sid, name) in servers {
            self.servers.insert(sid.clone(), name.clone());
        }
        if let Some(i) = self.open_syncs.iter().position(|s| *s == id.start) {
            self.open_syncs.remove(i);
        }
        self.trim();
    }

    /// Ends a sync that read nothing (its sweep failed): only its journal is let go.
    pub fn abandon(&mut self, id: SyncId) {
        self.finish_sync(id, &Scope::All, &[], Vec::new());
    }

    /// Finishes a full sweep's sync with its snapshot. A complete sweep that began after the
    /// last gap makes the view complete, and drops the servers it did not hear from (gone, or
    /// restarted under a new id); a partial one leaves their connections as they were.
    pub fn reconcile(&mut self, id: SyncId, snap: &Snapshot) {
        let servers: Vec<(String, String)> = snap
            .servers
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        self.finish_sync(id, &Scope::All, &servers, snap.connections.clone());
        if snap.partial() {
            if self.incomplete.is_none() {
                self.incomplete = Some("the last sweep was partial".into());
            }
            return;
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
            self.incomplete = None;
        }
    }

    fn forget_server(&mut self, server_id: &str) {
        self.servers.remove(server_id);
        let keys: Vec<(String, u64)> = self
            .conns
            .keys()
            .filter(|(sid, _)| sid == server_id)
            .cloned()
            .collect();
        for k in keys {
            if let Some(c) = self.conns.remove(&k) {
                self.uncount(&c);
            }
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
        self.users
            .get(&(account.to_string(), user.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Open connections in all.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
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
        let mut per_server: BTreeMap<&str, u64> = BTreeMap::new();
        for c in self.conns.values() {
            *per_server.entry(c.server_id.as_str()).or_default() += 1;
        }
        let mut servers: Vec<ServerSeen> = self
            .servers
            .iter()
            .filter(|(id, _)| sweep.servers.iter().any(|s| &s.id == *id))
            .map(|(id, name)| ServerSeen {
                name: name.clone(),
                id: id.clone(),
                connections: per_server.get(id.as_str()).copied().unwrap_or(0),
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
            connections: self.conns.values().cloned().collect(),
            gap: self.incomplete.clone(),
            topology: sweep.topology.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(server: &str, cid: u64, user: &str) -> Connection {
        Connection {
            server: server.into(),
            server_id: format!("ID-{server}"),
            cid,
            kind: "Client".into(),
            ip: "10.0.0.1".into(),
            start: None,
            idle: std::time::Duration::ZERO,
            in_msgs: 0,
            out_msgs: 0,
            last_activity: None,
            subscriptions: 0,
            name: "w".into(),
            account: "APP".into(),
            account_name: None,
            user: user.into(),
            user_name: None,
            tags: vec![],
        }
    }

    fn close(server: &str, cid: u64) -> Delta {
        Delta::Close {
            server_id: format!("ID-{server}"),
            cid,
        }
    }

    fn snap(servers: &[&str], conns: Vec<Connection>) -> Snapshot {
        Snapshot {
            servers_expected: servers.len(),
            servers: servers
                .iter()
                .map(|s| ServerSeen {
                    name: s.to_string(),
                    id: format!("ID-{s}"),
                    connections: 0,
                    pages: 1,
                })
                .collect(),
            connections: conns,
            ..Snapshot::default()
        }
    }

    #[test]
    fn events_are_keyed_by_server_and_cid_and_idempotent() {
        let mut v = LiveView::new();
        assert_eq!(
            v.apply(Delta::Open(conn("n1", 1, "u"))),
            Some(("APP".into(), "u".into()))
        );
        assert_eq!(v.apply(Delta::Open(conn("n1", 1, "u"))), None);
        v.apply(Delta::Open(conn("n2", 1, "u")));
        assert_eq!(v.count("APP", "u"), 2);
        v.apply(close("n1", 1));
        assert_eq!(v.apply(close("n1", 1)), None);
        assert_eq!(v.count("APP", "u"), 1);
    }

    #[test]
    fn events_during_a_sweep_are_neither_lost_nor_counted_twice() {
        let mut v = LiveView::new();
        v.apply(Delta::Open(conn("n1", 1, "u")));
        v.apply(Delta::Open(conn("n1", 2, "u")));
        let s = v.begin_sync();
        // Before the server's snapshot: cid 3 opens (the reply has it), cid 1 closes (it has not).
        v.apply(Delta::Open(conn("n1", 3, "u")));
        v.apply(close("n1", 1));
        // After the snapshot: cid 4 opens, cid 2 closes (the reply still has 2, not 4).
        v.apply(Delta::Open(conn("n1", 4, "u")));
        v.apply(close("n1", 2));
        let reply = vec![conn("n1", 2, "u"), conn("n1", 3, "u")];
        v.reconcile(s, &snap(&["n1"], reply));
        let mut cids: Vec<u64> = v.conns.keys().map(|(_, c)| *c).collect();
        cids.sort_unstable();
        assert_eq!(cids, vec![3, 4]);
        assert_eq!(v.count("APP", "u"), 2);
        assert!(v.incomplete().is_none());
        assert_eq!(
            v.journalled(),
            6,
            "the recent deltas are kept for the next sync"
        );
    }

    #[test]
    fn an_event_sent_just_before_its_server_lists_the_connection_is_not_lost() {
        let mut v = LiveView::new();
        // The connect event arrives and is applied before the sweep begins, but the server's
        // list, taken a moment later, does not show the connection yet.
        v.apply(Delta::Open(conn("n1", 1, "u")));
        let s = v.begin_sync();
        v.reconcile(s, &snap(&["n1"], vec![]));
        assert_eq!(v.count("APP", "u"), 1);
        // Likewise a disconnect sent before the list stops showing the connection.
        v.apply(close("n1", 1));
        let s = v.begin_sync();
        v.reconcile(s, &snap(&["n1"], vec![conn("n1", 1, "u")]));
        assert_eq!(v.count("APP", "u"), 0);
    }

    #[test]
    fn the_journal_is_bounded_without_syncs() {
        let mut v = LiveView::new();
        for cid in 1..=(3 * RECENT) {
            v.apply(Delta::Open(conn("n1", cid, "u")));
        }
        assert!(v.journalled() as u64 <= 2 * RECENT);
    }

    #[test]
    fn a_reply_replaces_what_events_got_wrong() {
        let mut v = LiveView::new();
        // A connection whose disconnect event was lost (a gap follows the loss).
        v.apply(Delta::Open(conn("n1", 9, "ghost")));
        v.gap("slow consumer");
        let s = v.begin_sync();
        v.reconcile(s, &snap(&["n1"], vec![conn("n1", 1, "u")]));
        assert_eq!(v.count("APP", "ghost"), 0);
        assert_eq!(v.count("APP", "u"), 1);
    }

    #[test]
    fn a_gap_during_a_sweep_keeps_the_view_incomplete() {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        v.gap("reconnected");
        v.reconcile(s, &snap(&["n1"], vec![]));
        assert_eq!(v.incomplete(), Some("reconnected"));
        let s = v.begin_sync();
        v.reconcile(s, &snap(&["n1"], vec![]));
        assert!(v.incomplete().is_none());
    }

    #[test]
    fn a_partial_sweep_keeps_the_silent_servers_connections_and_is_incomplete() {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        v.reconcile(
            s,
            &snap(&["n1", "n2"], vec![conn("n1", 1, "u"), conn("n2", 1, "u")]),
        );
        assert!(v.incomplete().is_none());
        let s = v.begin_sync();
        let mut partial = snap(&["n1"], vec![conn("n1", 1, "u")]);
        partial.servers_expected = 2;
        partial.missing = vec!["n2".into()];
        v.reconcile(s, &partial);
        assert_eq!(v.count("APP", "u"), 2);
        assert!(v.incomplete().is_some());
    }

    #[test]
    fn a_complete_sweep_drops_a_restarted_servers_old_id() {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        v.reconcile(
            s,
            &snap(&["n1", "n2"], vec![conn("n1", 1, "u"), conn("n2", 1, "u")]),
        );
        v.gap("n2 restarted");
        let s = v.begin_sync();
        v.reconcile(s, &snap(&["n1"], vec![conn("n1", 1, "u")]));
        assert_eq!(v.count("APP", "u"), 1);
        assert!(!v.servers().contains_key("ID-n2"));
    }

    #[test]
    fn a_user_read_replaces_only_that_users_connections() {
        let mut v = LiveView::new();
        v.apply(Delta::Open(conn("n1", 1, "u")));
        v.apply(Delta::Open(conn("n1", 2, "other")));
        let s = v.begin_sync();
        v.apply(Delta::Open(conn("n1", 5, "u")));
        let mut detailed = conn("n1", 1, "u");
        detailed.idle = std::time::Duration::from_secs(600);
        let scope = Scope::User {
            account: "APP".into(),
            user: "u".into(),
        };
        v.finish_sync(
            s,
            &scope,
            &[("ID-n1".into(), "n1".into())],
            vec![detailed.clone()],
        );
        assert_eq!(v.count("APP", "u"), 2);
        assert_eq!(v.count("APP", "other"), 1);
        assert_eq!(v.conns[&("ID-n1".into(), 1)].idle, detailed.idle);
    }

    #[test]
    fn the_view_as_a_snapshot_counts_per_server_and_says_when_incomplete() {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        let sweep = snap(&["n1", "n2"], vec![conn("n1", 1, "u")]);
        v.reconcile(s, &sweep);
        v.apply(Delta::Open(conn("n2", 7, "u")));
        let now = Utc::now();
        let live = v.snapshot(&sweep, now);
        assert_eq!(live.connections.len(), 2);
        assert_eq!(
            live.servers
                .iter()
                .map(|s| s.connections)
                .collect::<Vec<_>>(),
            vec![1, 1]
        );
        assert!(!live.partial());
        v.gap("slow consumer");
        assert!(v.snapshot(&sweep, now).partial());
    }
}
