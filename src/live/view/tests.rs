//! The live view's tests, as plain data.
use super::*;
use crate::stamp::Stamp;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn conn(server: &str, cid: u64, user: &str) -> Connection {
    Connection {
        server: server.into(),
        server_id: format!("ID-{server}").into(),
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

/// The connection held for (server id, cid).
fn held<'a>(v: &'a LiveView, server_id: &str, cid: u64) -> &'a Connection {
    &v.conns[server_id][&cid]
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

/// [`snap`] with its connections in the compact list, as a live sweep gives them.
fn compact_snap(servers: &[&str], conns: Vec<Connection>) -> Snapshot {
    let mut list = crate::connlist::ConnList::default();
    for c in &conns {
        list.push(&c.view());
    }
    Snapshot {
        compact: list,
        ..snap(servers, vec![])
    }
}

#[test]
fn a_list_taken_while_the_sweep_runs_is_the_views_and_a_paused_round_still_has_it() {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    // n1's list is taken while the sweep still reads n2; n1's cid 2 closes meanwhile.
    let mut list = crate::connlist::ConnList::default();
    list.push(&conn("n2", 9, "u").view()); // an earlier server's, not taken: left alone
    for cid in [1, 2] {
        list.push(&conn("n1", cid, "u").view());
    }
    v.take_server(s, "ID-n1", true, &mut list, 1);
    v.apply(close("n1", 2));
    let taken: Vec<u64> = v
        .connections_of(&["ID-n1".to_string()])
        .map(|c| c.cid)
        .collect();
    assert_eq!(taken, [1]);
    assert_eq!(v.connections_of(&["ID-n2".to_string()]).count(), 0);
    // The sweep ends with n2's list only: n1 is not replaced by nothing.
    let mut sweep = snap(&["n1", "n2"], vec![conn("n2", 9, "u")]);
    sweep.handed = vec!["ID-n1".into()];
    v.reconcile(s, &mut sweep);
    let mut all: Vec<(String, u64)> = v
        .connections()
        .map(|c| (c.server.to_string(), c.cid))
        .collect();
    all.sort();
    assert_eq!(all, [("n1".to_string(), 1), ("n2".to_string(), 9)]);
    assert_eq!(v.count("APP", "u"), 2);
    assert!(v.incomplete().is_none());

    // Paused over the event rate after n1's list was taken: the round from the sweep alone
    // holds every server's connections, n1's copied back from the view.
    let s = v.begin_sync();
    let mut list = crate::connlist::ConnList::default();
    list.push(&conn("n1", 1, "u").view());
    v.take_server(s, "ID-n1", true, &mut list, 0);
    v.pause("over the event rate");
    let mut sweep = compact_snap(&["n1", "n2"], vec![conn("n2", 9, "u"), conn("n2", 10, "u")]);
    sweep.handed = vec!["ID-n1".into()];
    sweep.handed_connections = 1;
    v.reconcile(s, &mut sweep);
    v.sweep_alone(&mut sweep);
    let mut alone: Vec<(String, u64)> = sweep
        .connections
        .iter()
        .map(|c| (c.server.to_string(), c.cid))
        .collect();
    alone.sort();
    assert_eq!(
        alone,
        [("n1".into(), 1), ("n2".into(), 9), ("n2".into(), 10)]
    );
    assert_eq!(sweep.connection_count(), 3);
}

#[test]
fn a_listed_connection_is_held_as_its_server_lists_it_now() {
    for make in [snap, compact_snap] {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        let before = (1..=4).map(|cid| conn("n1", cid, "u")).collect();
        v.reconcile(s, &mut make(&["n1"], before));
        // Listed again: every field of 1 changed but its identity (updated in place), 2 now
        // another user's in another account, 4 another user's in the same account (counts
        // move), 3 the same.
        let now = Connection {
            server: "n1-renamed".into(),
            ip: "10.0.0.9".into(),
            start: Some(Stamp::new(1_767_323_045, 5)),
            idle: std::time::Duration::from_millis(9_500),
            last_activity: Some(Stamp::new(1_767_323_050, 7)),
            subscriptions: 3,
            in_msgs: 4,
            out_msgs: 5,
            name: "renamed".into(),
            account_name: Some("App".into()),
            user_name: Some("U".into()),
            tags: vec!["t1".into(), "t2".into()],
            ..conn("n1", 1, "u")
        };
        let moved = Connection {
            account: "OTHER".into(),
            ..conn("n1", 2, "x")
        };
        let s = v.begin_sync();
        v.reconcile(
            s,
            &mut make(
                &["n1"],
                vec![
                    now.clone(),
                    moved.clone(),
                    conn("n1", 3, "u"),
                    conn("n1", 4, "y"),
                ],
            ),
        );
        assert_eq!(held(&v, "ID-n1", 1), &now);
        assert_eq!(held(&v, "ID-n1", 2), &moved);
        assert_eq!(held(&v, "ID-n1", 3), &conn("n1", 3, "u"));
        assert_eq!(held(&v, "ID-n1", 4), &conn("n1", 4, "y"));
        let counts = ["u", "y"].map(|u| v.count("APP", u));
        assert_eq!((counts, v.count("OTHER", "x")), ([2, 1], 1));
        assert_eq!(
            (v.clients_of("ID-n1", "APP"), v.clients_of("ID-n1", "OTHER")),
            (3, 1)
        );
        // And back: texts that went are taken again, tags and names cleared.
        let s = v.begin_sync();
        v.reconcile(s, &mut make(&["n1"], vec![conn("n1", 1, "u")]));
        assert_eq!(held(&v, "ID-n1", 1), &conn("n1", 1, "u"));
        assert_eq!(
            (v.len(), v.count("OTHER", "x"), v.count("APP", "y")),
            (1, 0, 0)
        );
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
    let mut leaf = conn("n2", 2, "u");
    leaf.kind = "Leafnode".into();
    v.apply(Delta::Open(leaf));
    assert_eq!(v.count("APP", "u"), 3);
    // Per server and account, client connections only (what servers announce).
    assert_eq!(v.clients_of("ID-n2", "APP"), 1);
    v.apply(close("n2", 2));
    v.apply(close("n1", 1));
    assert_eq!(v.apply(close("n1", 1)), None);
    assert_eq!(v.count("APP", "u"), 1);
    assert_eq!(v.clients_of("ID-n1", "APP"), 0);
    assert_eq!(v.clients_of("ID-n2", "APP"), 1);
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
    v.reconcile(s, &mut snap(&["n1"], reply));
    let mut cids: Vec<u64> = v.connections().map(|c| c.cid).collect();
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
    v.reconcile(s, &mut snap(&["n1"], vec![]));
    assert_eq!(v.count("APP", "u"), 1);
    // Likewise a disconnect sent before the list stops showing the connection.
    v.apply(close("n1", 1));
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![conn("n1", 1, "u")]));
    assert_eq!(v.count("APP", "u"), 0);
}

/// The open bug of the churn test: a server lists a connection the moment it accepts it,
/// before its CONNECT is processed (in `$G`, no user, no name); the connect event, sent
/// once it is authorized, must move it to its user, whether it arrives during the sweep
/// (journalled and replayed) or after it.
#[test]
fn a_connection_listed_before_it_authenticated_takes_its_connect_events_identity() {
    let unauthenticated = |cid| Connection {
        account: "$G".into(),
        user: "".into(),
        name: "".into(),
        idle: std::time::Duration::from_secs(3),
        ..conn("n1", cid, "")
    };
    for event_during_the_sweep in [true, false] {
        let mut v = LiveView::new();
        let s = v.begin_sync();
        if event_during_the_sweep {
            v.apply(Delta::Open(conn("n1", 5, "app")));
        }
        v.reconcile(s, &mut snap(&["n1"], vec![unauthenticated(5)]));
        if !event_during_the_sweep {
            assert_eq!(v.count("$G", ""), 1);
            assert_eq!(
                v.apply(Delta::Open(conn("n1", 5, "app"))),
                Some(("APP".into(), "app".into()))
            );
        }
        assert_eq!(v.count("APP", "app"), 1, "during: {event_during_the_sweep}");
        assert_eq!(v.count("$G", ""), 0, "during: {event_during_the_sweep}");
        let held = held(&v, "ID-n1", 5);
        assert_eq!((held.name.as_str(), held.idle.as_secs()), ("w", 3));
        assert_eq!(v.counts.users.len(), 1);
        assert_eq!(v.clients_of("ID-n1", "APP"), 1);
        assert_eq!(v.clients_of("ID-n1", "$G"), 0);
    }
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
    v.reconcile(s, &mut snap(&["n1"], vec![conn("n1", 1, "u")]));
    assert_eq!(v.count("APP", "ghost"), 0);
    assert_eq!(v.count("APP", "u"), 1);
}

#[test]
fn a_gap_during_a_sweep_keeps_the_view_incomplete() {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    v.gap("reconnected");
    v.reconcile(s, &mut snap(&["n1"], vec![]));
    assert_eq!(v.incomplete(), Some("reconnected"));
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![]));
    assert!(v.incomplete().is_none());
}

#[test]
fn while_paused_sweeps_keep_the_view_current_but_never_complete() {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![]));
    assert!(v.incomplete().is_none());
    v.pause("over the rate");
    // Sweeps alone keep the counts (what every sweep reads), not the completeness.
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![conn("n1", 1, "u")]));
    assert_eq!(v.count("APP", "u"), 1);
    assert_eq!(v.incomplete(), Some("over the rate"));
    // Following again: complete after the next complete sweep, not before.
    v.resume("following again");
    assert_eq!(v.incomplete(), Some("following again"));
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![]));
    assert!(v.incomplete().is_none());
    assert_eq!(v.count("APP", "u"), 0);
}

/// A view reconciled by a complete sweep of n1 and n2, one connection of `u` on each.
fn two_servers_reconciled() -> LiveView {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    v.reconcile(
        s,
        &mut snap(&["n1", "n2"], vec![conn("n1", 1, "u"), conn("n2", 1, "u")]),
    );
    v
}

#[test]
fn a_partial_sweep_keeps_the_silent_servers_connections_and_is_incomplete() {
    let mut v = two_servers_reconciled();
    assert!(v.incomplete().is_none());
    let s = v.begin_sync();
    let mut partial = snap(&["n1"], vec![conn("n1", 1, "u")]);
    partial.servers_expected = 2;
    partial.missing = vec!["n2".into()];
    v.reconcile(s, &mut partial);
    assert_eq!(v.count("APP", "u"), 2);
    assert!(v.incomplete().is_some());
}

#[test]
fn a_complete_sweep_drops_a_restarted_servers_old_id() {
    let mut v = two_servers_reconciled();
    v.gap("n2 restarted");
    let s = v.begin_sync();
    v.reconcile(s, &mut snap(&["n1"], vec![conn("n1", 1, "u")]));
    assert_eq!(v.count("APP", "u"), 1);
    assert!(!v.servers().contains_key("ID-n2"));
}

/// The restart bug: connwatch's own server restarted, its reconnect gap's sweep was the first
/// to hear n2's new id, and the view came out complete with no gap for the new server. A new
/// id is a gap whoever hears it first (fail closed): the sweep after it completes the view.
#[test]
fn a_sweep_that_hears_a_new_server_id_first_is_a_gap() {
    let mut v = two_servers_reconciled();
    v.gap("connwatch reconnected");
    let s = v.begin_sync();
    let mut restarted = conn("n2", 1, "u");
    restarted.server_id = "ID-n2-restarted".into();
    let mut sweep = snap(&["n1", "n2"], vec![conn("n1", 1, "u"), restarted]);
    sweep.servers[1].id = "ID-n2-restarted".into();
    assert_eq!(
        v.reconcile(s, &mut sweep),
        vec![("ID-n2-restarted".to_string(), "n2".to_string())]
    );
    assert!(v.incomplete().unwrap().contains("new or restarted"));
    // The old id's connections are gone, the new one's are in.
    assert!(!v.servers().contains_key("ID-n2"));
    assert_eq!(v.count("APP", "u"), 2);
    // The next complete sweep holds the new id already: complete, nothing new.
    let s = v.begin_sync();
    assert!(v.reconcile(s, &mut sweep).is_empty());
    assert!(v.incomplete().is_none());
}

#[test]
fn the_first_sweep_hears_no_new_server() {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    assert!(v.reconcile(s, &mut snap(&["n1", "n2"], vec![])).is_empty());
    assert!(v.incomplete().is_none());
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
        [detailed.view()],
    );
    assert_eq!(v.count("APP", "u"), 2);
    assert_eq!(v.count("APP", "other"), 1);
    assert_eq!(held(&v, "ID-n1", 1).idle, detailed.idle);
}

#[test]
fn the_view_as_a_snapshot_counts_per_server_and_says_when_incomplete() {
    let mut v = LiveView::new();
    let s = v.begin_sync();
    let mut sweep = snap(&["n1", "n2"], vec![conn("n1", 1, "u")]);
    v.reconcile(s, &mut sweep);
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

#[test]
fn leafnode_connections_of_servers_whose_connz_omits_them_survive_reconciles() {
    let leaf = |server: &str, cid: u64| Connection {
        kind: "Leafnode".into(),
        ..conn(server, cid, "leafuser")
    };
    let mut v = LiveView::new();
    v.apply(Delta::Open(leaf("n1", 7)));
    v.apply(Delta::Open(leaf("n2", 8)));
    for _ in 0..(3 * RECENT) {
        v.apply(Delta::Open(conn("n1", 1, "u")));
    }
    // n1 is older than 2.12: its reply cannot list the leaf; n2's reply is the truth (the
    // leaf is gone from it).
    let mut sweep = snap(&["n1", "n2"], vec![conn("n1", 1, "u")]);
    sweep.leafnodes_unlisted = vec!["ID-n1".into()];
    let sync = v.begin_sync();
    v.reconcile(sync, &mut sweep);
    assert_eq!(v.count("APP", "leafuser"), 1);
    assert!(v.connections().any(|c| c.cid == 7 && c.server == "n1"));
    // Its disconnect event still closes it.
    v.apply(close("n1", 7));
    assert_eq!(v.count("APP", "leafuser"), 0);
    // Upgraded (its reply lists leafnodes now): the reply decides again, once the leaf's
    // event is older than the journal.
    v.apply(Delta::Open(leaf("n1", 9)));
    for _ in 0..(3 * RECENT) {
        v.apply(Delta::Open(conn("n1", 1, "u")));
    }
    let sync = v.begin_sync();
    v.reconcile(sync, &mut snap(&["n1", "n2"], vec![conn("n1", 1, "u")]));
    assert_eq!(v.count("APP", "leafuser"), 0);
}

#[test]
fn entries_share_their_texts_and_unused_ones_are_let_go() {
    let mut v = LiveView::new();
    // A reply's connections, each with its own copies of the texts, take the view's: server,
    // server id, kind, ip, name ("w"), account, users u and v, one copy each.
    let conns: Vec<Connection> = (0..500)
        .map(|i| conn("n1", i, ["u", "v"][i as usize % 2]))
        .collect();
    let s = v.begin_sync();
    let n1 = [("ID-n1".into(), "n1".into())];
    v.finish_sync(s, &Scope::All, &n1, conns.iter().map(Connection::view));
    assert_eq!((v.len(), v.texts.len()), (500, 8));
    let account = held(&v, "ID-n1", 0).account.clone();
    assert!(v
        .connections()
        .all(|c| std::ptr::eq(c.account.as_str(), account.as_str())));
    // User v gone (a sweep that no longer lists it): its text goes with it. The connections
    // listed again keep the view's texts.
    let s = v.begin_sync();
    let left: Vec<Connection> = (0..500).step_by(2).map(|i| conn("n1", i, "u")).collect();
    v.finish_sync(s, &Scope::All, &n1, left.iter().map(Connection::view));
    assert_eq!((v.len(), v.count("APP", "v"), v.texts.len()), (250, 0, 7));
    assert!(v
        .connections()
        .all(|c| std::ptr::eq(c.account.as_str(), account.as_str())));
    // Connect events share the view's texts too: only n2 and its id are new.
    for cid in [900, 901] {
        v.apply(Delta::Open(conn("n2", cid, "w")));
    }
    assert_eq!(v.texts.len(), 9);
    let w: Vec<&Connection> = v.connections().filter(|c| c.user == "w").collect();
    assert!(std::ptr::eq(w[0].user.as_str(), w[1].user.as_str()));
    // Once the events are out of the journal and their connections closed, their texts go.
    for cid in [900, 901] {
        v.apply(close("n2", cid));
    }
    v.journal.clear();
    v.texts.forget_unused();
    assert_eq!(v.texts.len(), 7);
}

/// What happens on the servers in [`the_view_equals_the_servers_after_every_complete_sweep`]:
/// a connection opens (server, user), one closes (an index into those open), or one's
/// counters move (no event: only a listing shows it).
#[derive(Debug, Clone)]
enum Happening {
    Open(usize, usize),
    Close(usize),
    Bump(usize),
}

fn happening() -> impl Strategy<Value = Happening> {
    prop_oneof![
        (0..3usize, 0..3usize).prop_map(|(s, u)| Happening::Open(s, u)),
        any::<usize>().prop_map(Happening::Close),
        any::<usize>().prop_map(Happening::Bump),
    ]
}

/// A step: something happens (its event applied at once), or happens with its event lost (a
/// gap, as connwatch's slow-consumer drop or reconnect is), or a sweep: things happen after it
/// begins, then the servers list (but `missing`), then more happens, then it is reconciled
/// (through the compact list or not).
#[derive(Debug, Clone)]
enum Step {
    Happen(Happening),
    Lost(Happening),
    Sweep {
        before: Vec<Happening>,
        after: Vec<Happening>,
        missing: Option<usize>,
        compact: bool,
        /// Servers (bits) whose lists the view takes while the sweep runs, after `at` of the
        /// events that follow the listing.
        hand: u8,
        at: usize,
    },
}

/// The servers' own connections: (server, cid) → connection.
#[derive(Default)]
struct Servers {
    open: BTreeMap<(usize, u64), Connection>,
    next_cid: u64,
}

impl Servers {
    /// Makes `h` happen; returns its event, if it has one.
    fn happen(&mut self, h: &Happening) -> Option<Delta> {
        let pick = |i: usize, open: &BTreeMap<(usize, u64), Connection>| {
            (!open.is_empty()).then(|| *open.keys().nth(i % open.len()).expect("in range"))
        };
        match *h {
            Happening::Open(s, u) => {
                self.next_cid += 1;
                let c = conn(&format!("n{s}"), self.next_cid, ["u0", "u1", "u2"][u]);
                self.open.insert((s, self.next_cid), c.clone());
                Some(Delta::Open(c))
            }
            Happening::Close(i) => {
                let key = pick(i, &self.open)?;
                let c = self.open.remove(&key).expect("picked");
                Some(Delta::Close {
                    server_id: c.server_id.to_string(),
                    cid: c.cid,
                })
            }
            Happening::Bump(i) => {
                let key = pick(i, &self.open)?;
                let c = self.open.get_mut(&key).expect("picked");
                c.in_msgs += 1;
                c.idle += std::time::Duration::from_secs(1);
                None
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever happens between and during sweeps, after each sweep every answering server's
    /// connections in the view are the server's own (users, counts per user and per server and
    /// account, and the counters its listing showed), and a complete sweep leaves the view
    /// complete.
    #[test]
    fn the_view_equals_the_servers_after_every_complete_sweep(
        steps in proptest::collection::vec(
            prop_oneof![
                3 => happening().prop_map(Step::Happen),
                1 => happening().prop_map(Step::Lost),
                1 => (
                    proptest::collection::vec(happening(), 0..6),
                    proptest::collection::vec(happening(), 0..6),
                    proptest::option::weighted(0.2, 0..3usize),
                    proptest::bool::ANY,
                    0u8..8,
                    0usize..6,
                ).prop_map(|(before, after, missing, compact, hand, at)| {
                    Step::Sweep { before, after, missing, compact, hand, at }
                }),
            ],
            1..40,
        )
    ) {
        let mut v = LiveView::new();
        let mut servers = Servers::default();
        // Servers some sweep heard: one heard first by a later sweep is a gap (new, or
        // restarted), which the next complete sweep closes.
        let mut heard = std::collections::BTreeSet::new();
        for step in steps {
            let (before, after, missing, compact, hand, at) = match step {
                Step::Happen(h) => {
                    if let Some(d) = servers.happen(&h) {
                        v.apply(d);
                    }
                    continue;
                }
                Step::Lost(h) => {
                    servers.happen(&h);
                    v.gap("events lost");
                    continue;
                }
                Step::Sweep { before, after, missing, compact, hand, at } => {
                    (before, after, missing, compact, hand, at)
                }
            };
            let s = v.begin_sync();
            for h in &before {
                if let Some(d) = servers.happen(h) {
                    v.apply(d);
                }
            }
            let answering: Vec<usize> = (0..3).filter(|s| Some(*s) != missing).collect();
            let listed: Vec<Connection> = servers
                .open
                .iter()
                .filter(|((s, _), _)| answering.contains(s))
                .map(|(_, c)| c.clone())
                .collect();
            // The lists handed over while the sweep runs, as a live sweep does: in the middle
            // of the events that follow them.
            let handed: Vec<usize> =
                answering.iter().copied().filter(|s| hand & (1 << s) != 0).collect();
            let of = |c: &Connection, s: usize| *c.server == *format!("n{s}");
            let take = |v: &mut LiveView| {
                let mut list = crate::connlist::ConnList::default();
                for &server in &handed {
                    let from = list.len();
                    for c in listed.iter().filter(|c| of(c, server)) {
                        list.push(&c.view());
                    }
                    v.take_server(s, &format!("ID-n{server}"), true, &mut list, from);
                    list.truncate(from);
                }
            };
            let split = at.min(after.len());
            for (i, h) in after.iter().enumerate() {
                if i == split {
                    take(&mut v);
                }
                if let Some(d) = servers.happen(h) {
                    v.apply(d);
                }
            }
            if split == after.len() {
                take(&mut v);
            }
            let names: Vec<String> = answering.iter().map(|s| format!("n{s}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let rest: Vec<Connection> = listed
                .iter()
                .filter(|c| !handed.iter().any(|&h| of(c, h)))
                .cloned()
                .collect();
            let mut sweep = if compact {
                compact_snap(&names, rest)
            } else {
                snap(&names, rest)
            };
            sweep.handed = handed.iter().map(|h| format!("ID-n{h}")).collect();
            sweep.servers_expected = 3;
            v.reconcile(s, &mut sweep);
            // Each answering server's connections are its own: keys and users.
            for server in &answering {
                let sid = format!("ID-n{server}");
                let mut held: Vec<(u64, String)> = v
                    .connections()
                    .filter(|c| c.server_id == sid)
                    .map(|c| (c.cid, c.user.to_string()))
                    .collect();
                held.sort();
                let own: Vec<(u64, String)> = servers
                    .open
                    .iter()
                    .filter(|((s, _), _)| s == server)
                    .map(|((_, cid), c)| (*cid, c.user.to_string()))
                    .collect();
                prop_assert_eq!(held, own, "server n{}", server);
                let clients = servers.open.keys().filter(|(s, _)| s == server).count() as u64;
                prop_assert_eq!(v.clients_of(&sid, "APP"), clients);
            }
            // No server is held without connections.
            prop_assert!(v.conns.values().all(|s| !s.is_empty()));
            // Counts per user agree with the connections held.
            for user in ["u0", "u1", "u2"] {
                let held = v.connections().filter(|c| c.user == user).count() as u64;
                prop_assert_eq!(v.count("APP", user), held, "user {}", user);
            }
            // A connection listed and still open holds the counters its listing showed.
            for c in &listed {
                if servers.open.contains_key(&(c.server.as_str()[1..].parse().unwrap(), c.cid)) {
                    prop_assert_eq!(held(&v, &c.server_id, c.cid), c);
                }
            }
            let new_server = !heard.is_empty() && answering.iter().any(|s| !heard.contains(s));
            heard.extend(answering.iter().copied());
            if missing.is_none() {
                prop_assert_eq!(v.len(), servers.open.len());
                prop_assert_eq!(v.incomplete().is_none(), !new_server);
            } else {
                prop_assert!(v.incomplete().is_some());
            }
        }
    }


    /// A live round counts again only the users whose connections changed since the last one
    /// (opened, closed, renamed, read again; all after new rules or a sweep, whole, partial or
    /// failed, with connections changing while it ran), and its census is the census of every
    /// connection counted anew.
    #[test]
    fn a_round_counts_again_only_the_users_that_changed(
        steps in proptest::collection::vec(
            prop_oneof![
                4 => (0..3usize, 0..4usize, proptest::bool::ANY)
                    .prop_map(|(s, u, m)| Round::Open(s, u, m)),
                2 => (0..64usize).prop_map(Round::Close),
                1 => (0..64usize).prop_map(Round::Named),
                1 => (0..4usize).prop_map(Round::Read),
                2 => (
                    proptest::collection::vec((0..3usize, 0..4usize, 0..64usize, proptest::bool::ANY), 0..4),
                    0u8..8,
                    proptest::option::weighted(0.2, 0..3usize),
                    proptest::bool::weighted(0.1),
                ).prop_map(|(during, hand, missing, fails)| {
                    Round::Sweep { during, hand, missing, fails }
                }),
                3 => Just(Round::Count),
                1 => Just(Round::Rules),
            ],
            1..60,
        )
    ) {
        let strict = crate::config::DetectConfig::default();
        let loose = crate::config::DetectConfig {
            max_connections_per_user: 3,
            max_suspects_per_user: 2,
            ..strict.clone()
        };
        let mut detect = strict.clone();
        let mut v = LiveView::new();
        let servers = ["n0", "n1", "n2"];
        let all = || snap(&servers, vec![]);
        let mut next = 0u64;
        let nth = |v: &LiveView, i: usize| {
            let mut keys: Vec<(String, u64)> =
                v.connections().map(|c| (c.server.to_string(), c.cid)).collect();
            keys.sort();
            (!keys.is_empty()).then(|| keys[i % keys.len()].clone())
        };
        let open = |v: &mut LiveView, next: &mut u64, s: usize, u: usize, msg: bool| {
            *next += 1;
            let mut c = conn(servers[s], *next, ROUND_USERS[u]);
            // Idle long enough to be a suspect, and never tied with another.
            c.idle = std::time::Duration::from_secs(300 + 7 * *next);
            c.in_msgs = u64::from(msg);
            c.name = if *next % 3 == 0 { "".into() } else { format!("w{s}").into() };
            c.ip = format!("10.0.0.{}", *next % 2).into();
            if *next % 5 == 0 {
                c.kind = "Leafnode".into();
            }
            v.apply(Delta::Open(c));
        };
        let close_nth = |v: &mut LiveView, i: usize| {
            if let Some((server, cid)) = nth(v, i) {
                v.apply(close(&server, cid));
            }
        };
        for step in steps {
            match step {
                Round::Open(s, u, msg) => open(&mut v, &mut next, s, u, msg),
                Round::Close(i) => close_nth(&mut v, i),
                Round::Named(i) => {
                    if let Some((server, cid)) = nth(&v, i) {
                        let held = held(&v, &format!("ID-{server}"), cid).clone();
                        v.apply(Delta::Open(Connection { name: "late".into(), ..held }));
                    }
                }
                Round::Read(u) => {
                    let s = v.begin_sync();
                    let scope = Scope::User { account: "APP".into(), user: ROUND_USERS[u].into() };
                    let read = relisted(&v, Some(ROUND_USERS[u]));
                    let answered: Vec<(String, String)> = servers
                        .iter()
                        .map(|n| (format!("ID-{n}"), n.to_string()))
                        .collect();
                    v.finish_sync(s, &scope, &answered, read.iter().map(Connection::view));
                }
                Round::Sweep { during, hand, missing, fails } => {
                    let s = v.begin_sweep();
                    // What the servers list (n2's CONNZ omits its leafnodes) ...
                    let answering: Vec<&str> = (0..3)
                        .filter(|i| Some(*i) != missing)
                        .map(|i| servers[i])
                        .collect();
                    let listed: Vec<Connection> = relisted(&v, None)
                        .into_iter()
                        .filter(|c| answering.contains(&&*c.server))
                        .filter(|c| !(c.server == "n2" && c.kind == "Leafnode"))
                        .collect();
                    // ... then what happens before the view takes it.
                    for (server, user, i, opens) in during {
                        if opens {
                            open(&mut v, &mut next, server, user, false);
                        } else {
                            close_nth(&mut v, i);
                        }
                    }
                    let handed: Vec<&str> = answering
                        .iter()
                        .copied()
                        .filter(|n| hand & (1 << (n.as_bytes()[1] - b'0')) != 0)
                        .collect();
                    for name in &handed {
                        let mut list = crate::connlist::ConnList::default();
                        for c in listed.iter().filter(|c| c.server == *name) {
                            list.push(&c.view());
                        }
                        v.take_server(s, &format!("ID-{name}"), *name != "n2", &mut list, 0);
                    }
                    if fails {
                        v.abandon(s);
                        continue;
                    }
                    let rest = listed
                        .iter()
                        .filter(|c| !handed.contains(&&*c.server))
                        .cloned()
                        .collect();
                    let mut sweep = compact_snap(&answering, rest);
                    sweep.servers_expected = 3;
                    sweep.handed = handed.iter().map(|n| format!("ID-{n}")).collect();
                    sweep.leafnodes_unlisted = vec!["ID-n2".into()];
                    v.reconcile(s, &mut sweep);
                }
                Round::Rules => {
                    detect = if detect == strict { loose.clone() } else { strict.clone() };
                }
                Round::Count => {
                    let rules = Aggregate::new(Some("SYS"), &detect);
                    let got = v.counted(&all(), Utc::now(), rules.fork()).census.unwrap();
                    let mut anew = rules;
                    for c in v.connections() {
                        anew.add(&c.view());
                    }
                    let (got, anew) = (got.finish(), anew.finish());
                    prop_assert_eq!(
                        serde_json::to_value(&got).unwrap(),
                        serde_json::to_value(&anew).unwrap()
                    );
                }
            }
        }
    }
}

/// A step of [`a_round_counts_again_only_the_users_that_changed`].
#[derive(Debug, Clone)]
enum Round {
    /// A connection of user `.1` opens on server `.0`; `.2`: it sent a message.
    Open(usize, usize, bool),
    /// The `.0`-th open connection closes.
    Close(usize),
    /// The `.0`-th open connection's connect event comes again with a name, when it had none.
    Named(usize),
    /// One user's connections read again (counters moved).
    Read(usize),
    /// A sweep lists every connection again (counters moved; n2 lists no leafnodes), but of
    /// server `missing`; `during`: connections open (server, user) or close (the `.2`-th)
    /// after it listed, before the view takes the lists; `hand`: servers (bits) whose lists
    /// the view takes as they come; `fails`: abandoned.
    Sweep {
        during: Vec<(usize, usize, usize, bool)>,
        hand: u8,
        missing: Option<usize>,
        fails: bool,
    },
    /// A live round's census.
    Count,
    /// The thresholds change (a reload).
    Rules,
}

const ROUND_USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];

/// The view's connections of `user` (all when `None`), their idle times one second longer.
fn relisted(v: &LiveView, user: Option<&str>) -> Vec<Connection> {
    v.connections()
        .filter(|c| user.is_none_or(|u| c.user == u))
        .map(|c| Connection {
            idle: c.idle + std::time::Duration::from_secs(1),
            ..c.clone()
        })
        .collect()
}

#[test]
fn a_round_with_many_users_changed_counts_them_again_and_only_them() {
    let detect = crate::config::DetectConfig::default();
    let rules = Aggregate::new(None, &detect);
    let mut v = LiveView::new();
    let open = |v: &mut LiveView, cid: u64, user: &str| {
        let mut c = conn("n1", cid, user);
        c.idle = std::time::Duration::from_secs(300 + cid);
        v.apply(Delta::Open(c));
    };
    for u in 0..30 {
        open(&mut v, u, &format!("u{u}"));
    }
    let count = |v: &mut LiveView| {
        let census = v.counted(&snap(&["n1"], vec![]), Utc::now(), rules.fork());
        serde_json::to_value(census.census.unwrap().finish()).unwrap()
    };
    count(&mut v);
    // Ten users changed (one more connection each; one of them closed one too): more than a
    // short list is compared with, fewer than half of all.
    for u in 0..10 {
        open(&mut v, 100 + u, &format!("u{u}"));
    }
    v.apply(close("n1", 3));
    let got = count(&mut v);
    let mut anew = rules.fork();
    for c in v.connections() {
        anew.add(&c.view());
    }
    assert_eq!(got, serde_json::to_value(anew.finish()).unwrap());
    assert_eq!(got["connections"], 39);
}
