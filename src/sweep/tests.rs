//! The sweep's pure parts: discovery, the PING replies, the per-server reader's decisions.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use super::collect::List;
use super::discovery::Discovery;
use super::replies::FirstReplies;
use super::*;
use crate::connlist::ConnList;
use crate::snapshot::{Connection, ServerFailure};

#[test]
fn configured_count_wins() {
    assert_eq!(expected_count(3, Some(5), 7), Some(3));
    assert_eq!(expected_count(0, Some(2), 3), Some(3));
    assert_eq!(expected_count(0, None, 0), None);
}

fn statsz(name: &str, id: &str, active: usize) -> Vec<u8> {
    statsz_with(name, id, active, &[])
}

fn statsz_with(name: &str, id: &str, active: usize, routes: &[&str]) -> Vec<u8> {
    let routes: Vec<_> = routes
        .iter()
        .map(|r| serde_json::json!({"rid": 1, "name": r}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "server": {"name": name, "id": id, "cluster": "c1"},
        "statsz": {"active_servers": active, "routes": routes}
    }))
    .unwrap()
}

#[test]
fn a_restarted_server_is_not_counted_twice() {
    let mut known = KnownServers::default();
    known.saw(Utc::now(), [("n1", "A"), ("n2", "B"), ("n3", "OLD")]);
    let mut d = Discovery::new(&known, Utc::now());
    // The survivors still count n3's old id beside its new one.
    d.add(&statsz("n1", "A", 4));
    d.add(&statsz("n2", "B", 4));
    assert!(!d.settled(0));
    d.add(&statsz("n3", "NEW", 3));
    assert!(d.settled(0));
    assert_eq!(d.count(), Some(3));
}

#[test]
fn an_unknown_extra_server_is_still_expected() {
    let known = KnownServers::default();
    let mut d = Discovery::new(&known, Utc::now());
    d.add(&statsz("n1", "A", 3));
    d.add(&statsz("n2", "B", 3));
    // The same server twice is one reply.
    d.add(&statsz("n2", "B", 3));
    assert_eq!(d.count(), Some(3));
    assert!(!d.settled(0));
}

#[test]
fn missing_names_known_servers_then_peers_then_placeholders() {
    let known = ["n1", "n2", "n3"];
    assert_eq!(
        missing_servers(3, &["n1", "n2"], known.into_iter(), &[]),
        vec!["n3"]
    );
    assert_eq!(
        missing_servers(3, &["n1"], ["n1"].into_iter(), &[]),
        vec![UNKNOWN_SERVER, UNKNOWN_SERVER]
    );
    assert!(missing_servers(2, &["n1", "n2"], known[..2].iter().copied(), &[]).is_empty());
    // No state: the live servers' route peers name the silent one.
    assert_eq!(
        missing_servers(3, &["n1", "n2"], std::iter::empty(), &["n3".into()]),
        vec!["n3"]
    );
    // A silent gateway cluster names the cluster; the rest stay unknown.
    assert_eq!(
        missing_servers(
            4,
            &["n1", "n2"],
            std::iter::empty(),
            &["<unknown> (cluster east)".into()]
        ),
        vec!["<unknown> (cluster east)", UNKNOWN_SERVER]
    );
}

#[test]
fn route_peers_that_did_not_answer_are_named() {
    let known = KnownServers::default();
    let mut d = Discovery::new(&known, Utc::now());
    d.add(&statsz_with("n1", "A", 3, &["n2", "n3", "n3"]));
    d.add(&statsz_with("n2", "B", 3, &["n1", "n3"]));
    assert_eq!(d.peers(&["n1", "n2"]), vec!["n3"]);
}

#[test]
fn one_reply_is_one_servers_whole_list_or_nothing() {
    assert_eq!(next_fetch(10, 10, 0, 1_000_000), NextFetch::Done);
    assert_eq!(next_fetch(0, 0, 0, 1_000_000), NextFetch::Done);
    assert_eq!(
        next_fetch(20_000, 10_000, 0, 1_000_000),
        NextFetch::Fetch { limit: 22_500 }
    );
    assert_eq!(
        next_fetch(100, 50, 1, 1_000_000),
        NextFetch::Fetch { limit: 356 }
    );
    assert!(matches!(
        next_fetch(100, 50, MAX_DIRECTED, 1_000_000),
        NextFetch::GiveUp(_)
    ));
    // A huge (or hostile) total is never asked for, let alone allocated.
    for total in [1_000_001, u64::MAX] {
        let NextFetch::GiveUp(why) = next_fetch(total, 0, 0, 1_000_000) else {
            panic!("{total} fetched");
        };
        assert!(
            matches!(why, ServerFailure::TooLarge { max: 1_000_000, .. }),
            "{why:?}"
        );
        assert!(
            why.to_string().contains("sweep.max_connections_per_server"),
            "{why}"
        );
    }
    // Near the ceiling the headroom is cut, never the ceiling passed.
    assert_eq!(
        next_fetch(999_990, 0, 0, 1_000_000),
        NextFetch::Fetch { limit: 1_000_000 }
    );
}

#[test]
fn the_ping_asks_for_the_largest_server_of_the_last_sweep() {
    // Nothing known (first sweep), or every server fitting a page: the configured page.
    assert_eq!(ping_limit(10_000, 0, 1_000_000), 10_000);
    assert_eq!(ping_limit(20, 0, 1_000_000), 20);
    assert_eq!(ping_limit(10_000, 8_000, 1_000_000), 10_000);
    // A server of 15,000 last time: the next PING holds it whole, with the directed headroom.
    assert_eq!(ping_limit(10_000, 15_000, 1_000_000), 15_000 + 1_875);
    assert_eq!(ping_limit(10, 100, 1_000_000), 356);
    // Never more than the ceiling per server (a server over it is an error, not read).
    assert_eq!(ping_limit(10_000, 999_990, 1_000_000), 1_000_000);
    assert_eq!(ping_limit(10_000, u64::MAX, 1_000_000), 1_000_000);
}

fn connz(name: &str, id: &str, total: u64, cids: &[u64]) -> Vec<u8> {
    let conns: Vec<_> = cids.iter().map(|c| serde_json::json!({"cid": c})).collect();
    serde_json::to_vec(&serde_json::json!({
        "server": {"name": name, "id": id},
        "data": {"server_id": id, "total": total, "offset": 0, "connections": conns}
    }))
    .unwrap()
}

#[test]
fn only_vouched_distinct_servers_count_and_impostors_never_replace_them() {
    let listed = vouched_and_impostors(Collect::new(List::Full(Vec::new()), None));
    let full = connections(listed.0);
    assert_eq!(full.iter().map(|c| c.cid).collect::<Vec<_>>(), vec![1, 2]);
    assert!(listed.1.is_none());
    // Listed compactly: the same connections, every field equal.
    let compact = vouched_and_impostors(Collect::new(List::Compact(ConnList::default()), None));
    assert!(matches!(compact.0, List::Compact(_)));
    assert_eq!(connections(compact.0), full);
    assert!(compact.1.is_none());
    // Counted while parsing: the same servers kept, the others' counts dropped whole.
    let rules = crate::census::Aggregate::new(None, &crate::config::DetectConfig::default());
    let (list, counted) = vouched_and_impostors(Collect::new(List::Full(Vec::new()), Some(rules)));
    assert!(connections(list).is_empty());
    let census = counted.unwrap().finish();
    assert_eq!(census.connections, 2);
    assert_eq!(census.users[0].by_server, [("n1".to_string(), 2)].into());
}

/// The connections of a sweep's list.
fn connections(list: List) -> Vec<Connection> {
    match list {
        List::Full(list) => list,
        List::Compact(list) => list.into_iter().collect(),
    }
}

#[test]
fn a_compact_list_keeps_or_drops_each_servers_connections_whole() {
    for room in [List::Full(Vec::new()), List::Compact(ConnList::default())] {
        let mut conns = Collect::new(room, None);
        read_whole(&mut conns, "n1", "N1", &[1, 2]);
        read_whole(&mut conns, "n2", "N2", &[1, 2, 3]);
        read_whole(&mut conns, "n3", "N3", &[4]);
        // A bad reply (cids out of order) leaves the list as it was.
        assert!(conns
            .parse(Payload::Plain(&connz("n4", "N4", 2, &[5, 5])), 100)
            .is_err());
        // A reply that is not the whole list is read but not kept.
        let (_, part) = conns
            .parse(Payload::Plain(&connz("n5", "N5", 300, &[1])), 100)
            .unwrap();
        conns.drop_last(part);
        // A server found out (impostors, or too slow) is dropped whole, now and later.
        conns.drop_server("N2");
        conns.settle(&["N3".to_string()]);
        read_whole(&mut conns, "n3", "N3", &[9]);
        let got: Vec<(String, u64)> = connections(conns.finish().0)
            .into_iter()
            .map(|c| (c.server.to_string(), c.cid))
            .collect();
        assert_eq!(got, [("n1".to_string(), 1), ("n1".to_string(), 2)]);
    }
}

/// The PING replies of the test above sorted out into `conns`: what was kept.
fn vouched_and_impostors(conns: Collect) -> (List, Option<crate::census::Aggregate>) {
    let known = KnownServers::default();
    let mut d = Discovery::new(&known, Utc::now());
    let mut firsts = FirstReplies::new(100, conns);
    let mut bad = 0;
    // Garbage and impostors arrive first.
    firsts.add(Payload::Plain(b"{not json"), &mut bad);
    firsts.add(Payload::Plain(&connz("fake", "NFAKE", 1, &[1])), &mut bad);
    firsts.add(Payload::Plain(&connz("evil", "N1", 1, &[7])), &mut bad);
    firsts.add(Payload::Plain(&connz("n2", "N2", 1, &[9])), &mut bad);
    firsts.add(Payload::Plain(&connz("n2", "N2", 1, &[3])), &mut bad);
    assert_eq!(bad, 1);
    d.add(&statsz("n1", "N1", 3));
    d.add(&statsz("n2", "N2", 3));
    d.add(&statsz("n3", "N3", 3));
    // Nothing vouched but n2's id so far (twice: still one server).
    assert_eq!(firsts.answered(&d), 1);
    firsts.add(Payload::Plain(&connz("n1", "N1", 2, &[1, 2])), &mut bad);
    firsts.add(Payload::Plain(&connz("n3", "N3", 3, &[1])), &mut bad);
    assert_eq!(firsts.answered(&d), 3);

    let mut snap = Snapshot {
        bad_replies: bad,
        ..Snapshot::default()
    };
    let (done, fetches, conns) = firsts.resolve(&d, &mut snap);
    // "fake" (unknown id) and "evil" (n1's id under another name) are bad; n2 answered
    // twice with different lists: an error, counted nowhere.
    assert_eq!(snap.bad_replies, 1 + 2 + 1);
    assert_eq!(
        done.iter()
            .map(|f| f.server.name.as_str())
            .collect::<Vec<_>>(),
        vec!["n1"]
    );
    assert_eq!(fetches.len(), 1, "n3 is read again in one request");
    assert_eq!((fetches[0].total, fetches[0].returned), (3, 1));
    assert_eq!(snap.errors.len(), 1);
    assert_eq!(snap.errors[0].server, "n2");
    assert_eq!(
        snap.errors[0].error,
        ServerFailure::Impostors {
            replies: 2,
            id: "N2".into()
        }
    );
    let (list, census, _) = conns.finish();
    (list, census)
}

#[tokio::test]
async fn a_slow_item_holds_up_only_itself() {
    let (release, slow) = tokio::sync::oneshot::channel::<()>();
    let mut slow = Some(slow);
    let items: Vec<usize> = (0..10).collect();
    let results = bounded_unordered(futures::stream::iter(items), 3, |i| {
        let wait = if i == 0 { slow.take() } else { None };
        async move {
            if let Some(w) = wait {
                let _ = w.await;
            }
            i
        }
    });
    futures::pin_mut!(results);
    // Every other item finishes while the first is still waiting.
    let mut first_nine = Vec::new();
    for _ in 0..9 {
        let next = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a slow item held up the others");
        first_nine.push(next.unwrap());
    }
    first_nine.sort();
    assert_eq!(first_nine, (1..10).collect::<Vec<_>>());
    release.send(()).unwrap();
    assert_eq!(results.next().await, Some(0));
}

#[test]
fn a_bounded_sweeps_first_request_is_sized_from_statsz() {
    // The whole list in one reply: the STATSZ count plus headroom, even for an empty server.
    assert_eq!(first_fetch(0, 1_000_000), NextFetch::Fetch { limit: 256 });
    assert_eq!(
        first_fetch(8_000, 1_000_000),
        NextFetch::Fetch { limit: 9_000 }
    );
    assert_eq!(first_fetch(990, 1_000), NextFetch::Fetch { limit: 1_000 });
    // Over the cap: never asked.
    assert_eq!(
        first_fetch(2_000, 1_000),
        NextFetch::GiveUp(ServerFailure::TooLarge {
            total: 2_000,
            max: 1_000
        })
    );
    // Then as any directed read: grown past the headroom once is asked again, twice gives up.
    assert_eq!(
        next_fetch(9_500, 9_000, 1, 1_000_000),
        NextFetch::Fetch { limit: 10_687 }
    );
    assert!(matches!(
        next_fetch(12_000, 10_687, 2, 1_000_000),
        NextFetch::GiveUp(ServerFailure::KeptGrowing { .. })
    ));
}

#[test]
fn a_second_statsz_reply_for_an_id_is_told_apart() {
    let known = KnownServers::default();
    let mut d = Discovery::new(&known, Utc::now());
    assert!(matches!(d.add(&statsz("n1", "A", 2)), discovery::Added::New(s, 0) if s.name == "n1"));
    assert!(matches!(d.add(&statsz("x", "A", 2)), discovery::Added::Again(id) if id == "A"));
    assert!(matches!(d.add(b"nope"), discovery::Added::Bad));
    assert_eq!(d.replies(), 1);
}

#[test]
fn only_a_cluster_known_to_be_small_is_pinged_all_at_once() {
    // 3 servers seen before, or configured: one PING, as always.
    assert!(pings_all(8, 0, 3));
    assert!(pings_all(8, 3, 0));
    assert!(pings_all(8, 0, 8));
    // 24 servers, or a size nobody knows yet: a few at a time.
    assert!(!pings_all(8, 0, 24));
    assert!(!pings_all(8, 24, 3));
    assert!(!pings_all(8, 0, 0));
    // 0: no bound.
    assert!(pings_all(0, 0, 0));
    assert!(pings_all(0, 100, 0));
}

/// Records what a live sweep hands over; refuses the servers of `refuse`.
#[derive(Debug, Default)]
struct Taker {
    refuse: Vec<String>,
    taken: std::sync::Mutex<Vec<(String, Vec<u64>)>>,
}

impl super::Handover for Taker {
    fn take(&self, server: &ServerInfo, list: &mut ConnList, from: usize) -> bool {
        if self.refuse.contains(&server.id) {
            return false;
        }
        let cids = list.iter_from(from).map(|c| c.cid).collect();
        self.taken.lock().unwrap().push((server.id.clone(), cids));
        true
    }
}

/// Parses `reply` into `conns` and keeps it (a whole list, as a sweep does).
fn read(conns: &mut Collect, reply: &[u8]) {
    let (head, part) = conns.parse(Payload::Plain(reply), 100).unwrap();
    conns.keep(&head.server, part);
}

/// [`read`] of server `name` (`id`) listing `cids`, all of its connections.
fn read_whole(conns: &mut Collect, name: &str, id: &str, cids: &[u64]) {
    read(conns, &connz(name, id, cids.len() as u64, cids));
}

/// A live sweep's lists, handed to a [`Taker`] that refuses server `refuse`.
fn handing(refuse: &str, auth_required: bool) -> (Arc<Taker>, Collect) {
    let to = Arc::new(Taker {
        refuse: vec![refuse.into()],
        ..Taker::default()
    });
    let mut conns = Collect::new(List::Compact(ConnList::default()), None);
    conns.hand_to(to.clone(), auth_required);
    (to, conns)
}

#[test]
fn a_live_sweep_hands_each_whole_list_over_once_who_is_who_is_settled() {
    let (to, mut conns) = handing("N5", true);
    // One listed before it authenticated (nobody's yet), one of a user.
    let authed = |name: &str, id: &str, cids: [u64; 2]| {
        serde_json::to_vec(&serde_json::json!({
            "server": {"name": name, "id": id},
            "data": {"server_id": id, "total": 2, "offset": 0, "connections": [
                {"cid": cids[0], "kind": "Client", "account": "$G"},
                {"cid": cids[1], "kind": "Client", "account": "A", "user": "u"},
            ]}
        }))
        .unwrap()
    };
    // Before who is who is settled: held (n1 may yet turn out to be two servers); at the
    // settling, handed over.
    read(&mut conns, &authed("n1", "N1", [1, 2]));
    assert!(to.taken.lock().unwrap().is_empty());
    conns.settle(&["N3".to_string()]);
    assert_eq!(*to.taken.lock().unwrap(), [("N1".to_string(), vec![2])]);
    // After: each whole list goes at once, without the unauthenticated one; an impostor's
    // never; one the view does not take stays in the list.
    read(&mut conns, &authed("n2", "N2", [3, 4]));
    read_whole(&mut conns, "n3", "N3", &[5]);
    read(&mut conns, &authed("n4", "N4", [6, 7]));
    read(&mut conns, &authed("n5", "N5", [8, 9]));
    assert_eq!(
        *to.taken.lock().unwrap(),
        [
            ("N1".to_string(), vec![2]),
            ("N2".to_string(), vec![4]),
            ("N4".to_string(), vec![7])
        ]
    );
    let (list, _, handed) = conns.finish();
    assert_eq!(handed.servers, ["N1", "N2", "N4"]);
    assert_eq!((handed.connections, handed.pending), (3, 4));
    let List::Compact(mut list) = list else {
        panic!("compact")
    };
    // n5's remains (its pending one already left out and counted).
    assert_eq!(list.drop_pending(true), 0);
    let left: Vec<u64> = list.iter().map(|c| c.cid).collect();
    assert_eq!(left, [9]);
}

#[test]
fn lists_read_before_the_settling_go_over_at_it_and_a_later_one_says_what_it_cannot_take_back() {
    // A bounded sweep with a server silent: its STATSZ replies went quiet, so who is who is
    // settled before the timeout settles it for good.
    let (to, mut conns) = handing("N1", false);
    read_whole(&mut conns, "n1", "N1", &[1, 2]);
    read_whole(&mut conns, "n2", "N2", &[3]);
    read_whole(&mut conns, "n3", "N3", &[4, 5]);
    assert!(to.taken.lock().unwrap().is_empty());
    assert_eq!((conns.settled(), conns.waiting()), (false, 3));
    // N2 answered twice: dropped. The others go from the last back; the view refusing n1's
    // (paused) leaves it, and what is before it, in the list.
    assert!(conns.settle(&["N2".to_string()]).is_empty());
    assert_eq!((conns.settled(), conns.waiting()), (true, 0));
    assert_eq!(*to.taken.lock().unwrap(), [("N3".to_string(), vec![4, 5])]);
    // Later lists go as they come; N2's, when it comes again, never. At the timeout N4 and N1
    // turn out to answer twice too: N4's list is the view's already, N1's is dropped.
    read_whole(&mut conns, "n4", "N4", &[6]);
    read_whole(&mut conns, "n2", "N2", &[7]);
    let late = ["N2", "N4", "N1"].map(String::from);
    assert_eq!(conns.settle(&late), ["N4"]);
    let (list, _, handed) = conns.finish();
    assert_eq!(handed.servers, ["N3", "N4"]);
    let List::Compact(list) = list else {
        panic!("compact")
    };
    assert_eq!(list.len(), 0);

    // Counting: the censuses held apart are joined at the first settling, and one joined
    // before its server is found answering twice is said.
    let rules = crate::census::Aggregate::new(None, &crate::config::DetectConfig::default());
    let mut conns = Collect::new(List::Full(Vec::new()), Some(rules));
    read_whole(&mut conns, "n1", "N1", &[1, 2]);
    assert_eq!((conns.held(), conns.waiting()), (1, 1));
    assert!(conns.settle(&[]).is_empty());
    assert_eq!(conns.held(), 0);
    read_whole(&mut conns, "n2", "N2", &[3]);
    read_whole(&mut conns, "n3", "N3", &[4]);
    assert_eq!(conns.settle(&["N3".to_string(), "N9".to_string()]), ["N3"]);
}

#[test]
fn a_counting_sweep_holds_each_servers_census_only_until_who_is_who_is_settled() {
    let rules = crate::census::Aggregate::new(None, &crate::config::DetectConfig::default());
    let mut conns = Collect::new(List::Full(Vec::new()), Some(rules));
    read_whole(&mut conns, "n1", "N1", &[1, 2]);
    read_whole(&mut conns, "n2", "N2", &[1, 2, 3]);
    assert_eq!(conns.held(), 2, "before: one census per server");
    // N2 turned out to answer as two servers: dropped, now and when it comes again.
    conns.settle(&["N2".to_string()]);
    assert_eq!(conns.held(), 0, "after: joined into one");
    read_whole(&mut conns, "n3", "N3", &[5]);
    read_whole(&mut conns, "n2", "N2", &[7, 8]);
    assert_eq!(conns.held(), 0);
    let census = conns.finish().1.unwrap().finish();
    assert_eq!(census.connections, 3);
    assert_eq!(
        census.users[0].by_server,
        [("n1".to_string(), 2), ("n3".to_string(), 1)].into()
    );
}
