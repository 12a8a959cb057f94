use super::*;
use crate::intern::Interner;
use crate::stamp::Stamp;
use chrono::DateTime;

fn full(cid: u64) -> Connection {
    Connection {
        server: "n1".into(),
        server_id: "NID1".into(),
        cid,
        kind: "Client".into(),
        ip: "10.0.0.1".into(),
        start: DateTime::from_timestamp(1_767_323_045, 123_456_789).map(Stamp::of),
        idle: Duration::new(5, 7),
        last_activity: DateTime::from_timestamp(1_767_323_050, 999_999_999).map(Stamp::of),
        subscriptions: 3,
        in_msgs: u64::MAX,
        out_msgs: 9,
        name: "worker".into(),
        account: "APP".into(),
        account_name: Some("App".into()),
        user: "UABC".into(),
        user_name: Some("alice".into()),
        tags: vec!["a".into(), "b".into()],
    }
}

fn bare(cid: u64) -> Connection {
    Connection {
        server: "n2".into(),
        server_id: "NID2".into(),
        cid,
        kind: "Leafnode".into(),
        ip: String::new().into(),
        start: None,
        idle: Duration::ZERO,
        last_activity: None,
        subscriptions: 0,
        in_msgs: 0,
        out_msgs: 0,
        name: String::new().into(),
        account: "$G".into(),
        account_name: None,
        user: String::new().into(),
        user_name: None,
        tags: Vec::new(),
    }
}

fn list_of(conns: &[Connection]) -> ConnList {
    let mut list = ConnList::default();
    for c in conns {
        list.push(&c.view());
    }
    list
}

#[test]
fn every_field_comes_back_equal_nones_and_tags_included() {
    let mut odd = full(3);
    // Times far from now (Go's zero time, a leap second) and an idle time beyond u64 nanos.
    odd.start = DateTime::from_timestamp(-62_135_596_800, 0).map(Stamp::of);
    odd.last_activity = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).map(Stamp::of);
    odd.idle = Duration::new(u64::MAX / 2, 999_999_999);
    odd.tags = vec!["b".into(), "a".into()];
    let conns = vec![full(1), bare(2), odd, full(4)];
    let list = list_of(&conns);
    assert_eq!(list.len(), 4);
    assert_eq!(list.to_vec(), conns);
    let back: Vec<Connection> = list.clone().into_iter().collect();
    assert_eq!(back, conns);
    let viewed: Vec<Connection> = list
        .iter()
        .map(|c| c.to_connection(&mut Interner::default()))
        .collect();
    assert_eq!(viewed, conns);
}

#[test]
fn texts_are_held_once_and_shared_by_the_connections_built() {
    let conns: Vec<Connection> = (1..=100).map(full).collect();
    let list = list_of(&conns);
    // n1, NID1, Client, worker, APP, App, UABC, alice, a, b; the IP is held packed.
    assert_eq!(list.distinct_texts(), 10);
    assert_eq!(list.to_vec(), conns);
    let back: Vec<Connection> = list.into_iter().collect();
    assert_eq!(back.len(), 100);
    assert!(std::ptr::eq(back[0].user.as_str(), back[99].user.as_str()));
    assert!(
        std::ptr::eq(back[0].ip.as_str(), back[99].ip.as_str()),
        "a packed IP's text is made once for the connections built"
    );
    assert!(std::ptr::eq(
        back[0].tags[1].as_str(),
        back[99].tags[1].as_str()
    ));
}

#[test]
fn truncate_retain_and_set_server_work_on_rows() {
    let conns = vec![full(1), bare(2), full(3), bare(4)];
    let mut list = list_of(&conns);
    list.retain(|c| c.server_id != "NID2");
    assert_eq!(list.to_vec(), vec![full(1), full(3)]);
    list.truncate(1);
    assert_eq!(list.to_vec(), vec![full(1)]);
    list.push(&bare(5).view());
    list.set_server(1, "n9", "NID9");
    let got = list.get(1).unwrap();
    assert_eq!((got.server, got.server_id, got.cid), ("n9", "NID9", 5));
    assert_eq!(list.get(0).unwrap().server, "n1");
    assert!(list.get(2).is_none());
}

#[test]
fn pending_ones_are_dropped_from_a_place_on_only_the_rest_kept_in_order() {
    // Listed before it authenticated: a client in `$G` with no user yet.
    let pending = |cid: u64| Connection {
        kind: "Client".into(),
        ..bare(cid)
    };
    let conns = vec![
        pending(1),
        full(2),
        pending(3),
        full(4),
        pending(5),
        full(6),
    ];
    let mut list = list_of(&conns);
    assert_eq!(
        list.drop_pending_from(2, false),
        0,
        "no auth: nobody pending"
    );
    assert_eq!(list.len(), 6);
    assert_eq!(list.drop_pending_from(2, true), 2);
    let cids: Vec<u64> = list.iter().map(|c| c.cid).collect();
    assert_eq!(cids, [1, 2, 4, 6], "the one before the place stays");
    assert_eq!(list.to_vec()[3], full(6));
    assert_eq!(list.drop_pending(true), 1);
    assert_eq!(list.drop_pending_from(9, true), 0, "a place past the end");
    assert_eq!(list.len(), 3);
}

#[test]
fn a_canonical_ipv4_is_held_packed_and_any_other_ip_as_its_text() {
    let ips = [
        "10.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "010.0.0.1",
        "10.0.0.01",
        "::1",
        "2001:db8::7",
        "",
        "not an ip",
        "10.0.0.1 ",
    ];
    let conns: Vec<Connection> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Connection {
            ip: (*ip).into(),
            ..full(i as u64)
        })
        .collect();
    let list = list_of(&conns);
    // Every text but the three canonical IPv4 addresses, and the other texts of `full`.
    assert_eq!(list.distinct_texts(), ips.len() - 3 + 10);
    for (i, ip) in ips.iter().enumerate() {
        let c = list.get(i).unwrap();
        assert_eq!(c.ip.to_string(), *ip);
        assert_eq!(matches!(c.ip, IpText::V4(_)), i < 3, "{ip:?}");
        assert_eq!(
            c.idle,
            full(0).idle,
            "the flag leaves the idle time as it was"
        );
    }
    assert_eq!(list.to_vec(), conns);
    let back: Vec<Connection> = list.clone().into_iter().collect();
    assert_eq!(back, conns);
    // A reply's IP after a packed one's, and a packed one after a text: each read as itself.
    let mut list = list_of(&conns[3..6]);
    list.push(&conns[0].view());
    list.push(&conns[5].view());
    // The last address packed is compared first: a text it is a prefix of is not it.
    for ip in ["10.0.0.1", "10.0.0.1\0", "10.0.0.1", "10.0.0.10"] {
        list.push(
            &Connection {
                ip: ip.into(),
                ..full(9)
            }
            .view(),
        );
    }
    let got: Vec<String> = list.iter().map(|c| c.ip.to_string()).collect();
    assert_eq!(
        got,
        [
            "010.0.0.1",
            "10.0.0.01",
            "::1",
            "10.0.0.1",
            "::1",
            "10.0.0.1",
            "10.0.0.1\0",
            "10.0.0.1",
            "10.0.0.10"
        ]
    );
}
