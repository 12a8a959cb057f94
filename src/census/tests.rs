use super::*;
use crate::config::ThresholdOverride;
use crate::stamp::Stamp;

fn conn(server: &str, cid: u64, account: &str, user: &str, name: &str, ip: &str) -> Connection {
    Connection {
        server: server.into(),
        server_id: format!("ID-{server}").into(),
        cid,
        kind: "Client".into(),
        ip: ip.into(),
        start: DateTime::from_timestamp(1_700_000_000 + cid as i64, 0).map(Stamp::of),
        idle: Duration::from_secs(1),
        in_msgs: 1,
        out_msgs: 0,
        name: name.into(),
        account: account.into(),
        account_name: None,
        user: user.into(),
        user_name: None,
        tags: vec![],
        ..Connection::default()
    }
}

fn idle(mut c: Connection, secs: u64) -> Connection {
    c.idle = Duration::from_secs(secs);
    c.in_msgs = 0;
    c.out_msgs = 0;
    c
}

#[test]
fn counts_per_user_across_servers() {
    let mut conns = Vec::new();
    for i in 0..150 {
        conns.push(conn(
            ["n1", "n2", "n3"][i % 3],
            i as u64,
            "APP",
            "leaky",
            "worker",
            "10.0.0.1",
        ));
    }
    conns.push(conn("n1", 999, "APP", "ok", "svc", "10.0.0.2"));
    conns.push(conn("n2", 999, "SYS", "sys", "connwatch", "127.0.0.1"));
    let c = build(&conns, Some("SYS"), &DetectConfig::default());
    assert_eq!(c.connections, 152);
    let top = &c.users[0];
    assert_eq!(
        (top.account.as_str(), top.user.as_str(), top.connections),
        ("APP", "leaky", 150)
    );
    assert_eq!(top.by_server.values().sum::<u64>(), 150);
    assert_eq!(top.by_server["n2"], 50);
    assert_eq!(top.by_name["worker"], 150);
    assert!(top.over_threshold);
    assert_eq!(top.oldest_start, DateTime::from_timestamp(1_700_000_000, 0));
    assert_eq!(top.newest_start, DateTime::from_timestamp(1_700_000_149, 0));
    assert_eq!(top.spread.processes, 1);
    assert_eq!(top.spread.top_process.as_ref().unwrap().connections, 150);
    assert_eq!(
        (top.spread.ips, top.spread.max_per_ip, top.spread.unnamed),
        (1, 150, 0)
    );
    let sys = c.users.iter().find(|u| u.user == "sys").unwrap();
    assert!(sys.system);
    assert!(!c.users.iter().find(|u| u.user == "ok").unwrap().system);
}

#[test]
fn the_same_user_name_in_two_accounts_is_two_users() {
    let conns = vec![
        conn("n1", 1, "A", "u", "", "ip"),
        conn("n1", 2, "B", "u", "", "ip"),
    ];
    let c = build(&conns, None, &DetectConfig::default());
    assert_eq!(c.users.len(), 2);
}

#[test]
fn suspects_are_idle_without_messages_longest_first_and_bounded() {
    let detect = DetectConfig {
        idle_threshold: Duration::from_secs(60),
        max_suspects_per_user: 2,
        ..DetectConfig::default()
    };
    let mut busy = idle(conn("n1", 1, "A", "u", "", "ip"), 600);
    busy.out_msgs = 3;
    let conns = vec![
        busy,
        idle(conn("n1", 2, "A", "u", "", "ip"), 61),
        idle(conn("n2", 3, "A", "u", "", "ip"), 500),
        idle(conn("n3", 4, "A", "u", "", "ip"), 300),
        idle(conn("n3", 5, "A", "u", "", "ip"), 59),
    ];
    let c = build(&conns, None, &detect);
    let u = &c.users[0];
    assert_eq!(u.idle_zero_msgs, 3);
    assert_eq!(
        u.suspects.iter().map(|s| s.cid).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(u.suspects[0].server_id, "ID-n2");
}

/// A connection of `user` from process `name` at 10.0.0.1, started at t=0 (1.7e9 s),
/// whose last message came `active` seconds after its start, idle `idle_secs`, with
/// `msgs` messages in.
fn used(cid: u64, name: &str, active: i64, idle_secs: u64, msgs: u64) -> Connection {
    let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    Connection {
        start: Some(Stamp::of(start)),
        last_activity: Some(Stamp::of(start + chrono::Duration::seconds(active))),
        idle: Duration::from_secs(idle_secs),
        in_msgs: msgs,
        ..conn("n1", cid, "A", "u", name, "10.0.0.1")
    }
}

fn patterns(conns: &[Connection], sig: &Signature) -> Vec<(u64, LeakPattern)> {
    classify(conns, sig)
        .into_iter()
        .map(|(c, p)| (c.cid, p))
        .collect()
}

#[test]
fn used_once_and_zero_are_suspects_quiet_live_clients_are_not() {
    let sig = Signature {
        min_idle: Duration::from_secs(300),
        used_once_within: Duration::from_secs(30),
    };
    let mut conns = vec![
        // Connection per request: one publish right after connecting, three of them.
        used(1, "leaky", 0, 3600, 1),
        used(2, "leaky", 1, 3600, 1),
        used(3, "leaky", 2, 3600, 1),
        // Never a message: zero_msgs, whatever its process.
        used(4, "quiet", 0, 3600, 0),
        // A subscriber that received messages for days, quiet for an hour: live.
        used(5, "subscriber", 3 * 86_400, 3600, 0),
        // A publisher every few minutes: never idle long enough.
        used(6, "ticker", 86_400, 120, 500),
        // Used once, but only one (or two) such connections in its process: a client that
        // did its start-up work (a config request, a watcher's initial values) and went quiet.
        used(7, "config-watcher", 1, 3600, 3),
        used(8, "two", 1, 3600, 1),
        used(9, "two", 1, 3600, 1),
        // Used once but not idle long enough yet.
        used(10, "fresh", 0, 60, 1),
        used(11, "fresh", 0, 60, 1),
        used(12, "fresh", 0, 60, 1),
    ];
    conns[4].out_msgs = 10_000;
    assert_eq!(
        patterns(&conns, &sig),
        vec![
            (1, LeakPattern::UsedOnce),
            (2, LeakPattern::UsedOnce),
            (3, LeakPattern::UsedOnce),
            (4, LeakPattern::ZeroMsgs),
        ]
    );
    // Activity later than `used_once_within` after connecting is use, not a single use.
    conns[2].last_activity = conns[2].start.map(|s| s + chrono::Duration::seconds(31));
    assert_eq!(
        patterns(&conns, &sig),
        vec![(4, LeakPattern::ZeroMsgs)],
        "two used-once connections left in the process are not enough"
    );
    // Without last_activity connwatch cannot tell: not a suspect.
    let mut unknown: Vec<_> = (1..=3).map(|i| used(i, "x", 0, 3600, 1)).collect();
    for c in &mut unknown {
        c.last_activity = None;
    }
    assert!(patterns(&unknown, &sig).is_empty());
}

#[test]
fn the_census_counts_suspects_by_pattern_and_per_process() {
    let detect = DetectConfig {
        idle_threshold: Duration::from_secs(300),
        ..DetectConfig::default()
    };
    let mut conns: Vec<_> = (0..12).map(|i| used(i, "leaky", 0, 3600 + i, 1)).collect();
    conns.push(used(100, "leaky", 0, 7200, 0));
    conns.push(used(101, "leaky", 86_400, 10, 9));
    let c = build(&conns, None, &detect);
    let u = &c.users[0];
    assert_eq!(
        (u.idle_zero_msgs, u.idle_used_once, u.leak_suspects),
        (1, 12, 13)
    );
    assert_eq!(u.suspects[0].cid, 100, "the longest idle first");
    assert_eq!(u.suspects[0].pattern, Some(LeakPattern::ZeroMsgs));
    assert_eq!(u.suspects[1].pattern, Some(LeakPattern::UsedOnce));
    assert_eq!(u.suspects[1].in_msgs, 1);
    let top = u.spread.top_process.as_ref().unwrap();
    assert_eq!((top.connections, top.used_once), (14, 12));
}

#[test]
fn overrides_pick_the_most_specific() {
    let detect = DetectConfig {
        overrides: vec![
            ThresholdOverride {
                account: "APP".into(),
                user: None,
                max_connections: 500,
            },
            ThresholdOverride {
                account: "APP".into(),
                user: Some("alice".into()),
                max_connections: 5,
            },
        ],
        ..DetectConfig::default()
    };
    let mut u = UserCensus {
        account: "AKEY".into(),
        account_name: Some("APP".into()),
        ..UserCensus::default()
    };
    u.user = "UKEY".into();
    u.user_name = Some("alice".into());
    assert_eq!(threshold_for(&detect, &u), 5);
    u.user_name = Some("bob".into());
    assert_eq!(threshold_for(&detect, &u), 500);
    u.account_name = Some("OTHER".into());
    assert_eq!(threshold_for(&detect, &u), 100);
}

#[test]
fn threshold_is_exceeded_only_above_it() {
    let conns: Vec<_> = (0..100)
        .map(|i| conn("n1", i, "A", "u", "", "ip"))
        .collect();
    let c = build(&conns, None, &DetectConfig::default());
    assert!(!c.users[0].over_threshold);
}

#[test]
fn labels_show_human_names_beside_keys() {
    let key = "UDHF".to_string() + &"A".repeat(52);
    let u = UserCensus {
        user: key.clone(),
        user_name: Some("alice".into()),
        ..UserCensus::default()
    };
    assert_eq!(u.label(), "alice (UDHFAAAA…)");
    let plain = UserCensus {
        user: "bob".into(),
        ..UserCensus::default()
    };
    assert_eq!(plain.label(), "bob");
}

/// Connections of three users over three servers, idle times with many ties, both patterns and
/// busy ones: what the streaming aggregate must count as a whole census would.
fn mixed(n: u64) -> Vec<Connection> {
    (0..n)
        .map(|i| {
            let user = ["u1", "u2", "u3"][(i % 3) as usize];
            let mut c = used(
                i / 3,
                ["p1", "p2", "p3", "p4"][(i % 4) as usize],
                (i % 5) as i64 * 20,
                3600 + (i % 7) * 60,
                (i / 3) % 3,
            );
            c.user = user.into();
            c.server = ["n1", "n2", "n3"][(i % 3) as usize].into();
            c.server_id = format!("ID-{}", c.server).into();
            c.ip = format!("10.0.0.{}", i % 6).into();
            c
        })
        .collect()
}

#[test]
fn suspects_trimmed_while_counting_are_the_first_of_all_suspects() {
    let conns = mixed(900);
    let all = DetectConfig {
        idle_threshold: Duration::from_secs(300),
        max_suspects_per_user: 100_000,
        ..DetectConfig::default()
    };
    let few = DetectConfig {
        max_suspects_per_user: 7,
        ..all.clone()
    };
    let (a, f) = (build(&conns, None, &all), build(&conns, None, &few));
    assert_eq!(a.users.len(), 3);
    for (ua, uf) in a.users.iter().zip(&f.users) {
        assert!(ua.leak_suspects > 7 && ua.idle_used_once > 0 && ua.idle_zero_msgs > 0);
        assert_eq!(ua.suspects.len() as u64, ua.leak_suspects);
        assert_eq!(uf.suspects[..], ua.suspects[..7]);
        let counts = |u: &UserCensus| (u.leak_suspects, u.idle_used_once, u.spread.clone());
        assert_eq!(counts(ua), counts(uf));
        // Longest idle first, then lowest cid.
        assert!(ua
            .suspects
            .windows(2)
            .all(|w| (std::cmp::Reverse(w[0].idle), w[0].cid)
                <= (std::cmp::Reverse(w[1].idle), w[1].cid)));
    }
}

#[test]
fn the_aggregate_counts_the_same_whatever_the_order_connections_come_in() {
    let detect = DetectConfig {
        idle_threshold: Duration::from_secs(300),
        ..DetectConfig::default()
    };
    let conns = mixed(600);
    let forward = build(&conns, Some("A"), &detect);
    let mut agg = Aggregate::new(Some("A"), &detect);
    for c in conns.iter().rev() {
        agg.add(&c.view());
    }
    let backward = agg.finish();
    assert_eq!(forward.connections, 600);
    assert_eq!(backward.connections, 600);
    let strip = |c: &Census| -> Vec<UserCensus> {
        c.users
            .iter()
            .map(|u| UserCensus {
                suspects: Vec::new(),
                ..u.clone()
            })
            .collect()
    };
    assert_eq!(strip(&forward), strip(&backward));
    let u = &forward.users[0];
    assert!(u.system);
    assert_eq!(u.by_server.values().sum::<u64>(), 200);
    assert_eq!(u.by_ip.len(), 2, "user i % 3 meets ip i % 6 in two ways");
    assert_eq!(
        u.spread.processes, 4,
        "(ip, name) follows i % 12: 4 values per user"
    );
}

#[test]
fn used_once_needs_three_in_its_process_wherever_they_are_in_the_sweep() {
    let detect = DetectConfig {
        idle_threshold: Duration::from_secs(300),
        ..DetectConfig::default()
    };
    // Two used-once connections of process "w", then many others, then the third.
    let mut conns = vec![used(1, "w", 0, 3600, 1), used(2, "w", 0, 3600, 1)];
    conns.extend((10..50).map(|i| used(i, "busy", 86_400, 10, 9)));
    let two = build(&conns, None, &detect);
    assert_eq!(
        (two.users[0].idle_used_once, two.users[0].leak_suspects),
        (0, 0)
    );
    assert!(two.users[0].suspects.is_empty());
    conns.push(used(99, "w", 0, 3600, 1));
    let three = build(&conns, None, &detect);
    let u = &three.users[0];
    assert_eq!((u.idle_used_once, u.leak_suspects), (3, 3));
    assert_eq!(
        u.suspects.iter().map(|s| s.cid).collect::<Vec<_>>(),
        vec![1, 2, 99]
    );
    let w = u.spread.top_process.as_ref().unwrap();
    assert_eq!(
        (w.name.as_str(), w.connections, w.used_once),
        ("busy", 40, 0)
    );
}

#[test]
fn censuses_of_parts_joined_equal_the_census_of_the_whole() {
    let detect = DetectConfig {
        idle_threshold: Duration::from_secs(300),
        max_suspects_per_user: 3,
        ..DetectConfig::default()
    };
    let mut conns = mixed(600);
    // Used-once connections of one process spread over the parts: suspects only together.
    conns.insert(10, used(9001, "w", 0, 3600, 1));
    conns.insert(300, used(9002, "w", 0, 3600, 1));
    conns.push(used(9003, "w", 0, 3600, 1));
    let whole = build(&conns, Some("A"), &detect);
    let all = Aggregate::new(Some("A"), &detect);
    let mut joined = all.fork();
    for part in conns.chunks(170) {
        let mut agg = all.fork();
        for c in part {
            agg.add(&c.view());
        }
        joined.absorb(agg);
    }
    assert_eq!(joined.connections(), conns.len() as u64);
    let joined = joined.finish();
    assert_eq!(joined.users, whole.users);
    assert!(whole.users.iter().any(|u| u.idle_used_once == 3));
    assert!(whole.users.iter().all(|u| u.suspects.len() <= 3));
}

#[test]
fn an_aggregate_skipping_pending_counts_them_apart() {
    let detect = DetectConfig::default();
    let pending = Connection {
        kind: "Client".into(),
        account: "$G".into(),
        ..Connection::default()
    };
    let alice = Connection {
        user: "alice".into(),
        ..pending.clone()
    };
    for (auth, counted, apart) in [(true, 1, 1), (false, 2, 0)] {
        let mut agg = Aggregate::new(None, &detect).skipping_pending(auth);
        agg.add(&pending.view());
        agg.add(&alice.view());
        assert_eq!((agg.connections(), agg.pending()), (counted, apart));
    }
}

#[test]
fn counts_by_server_name_and_ip_are_each_users_connections_counted_directly() {
    let mut conns = Vec::new();
    for i in 0..997u64 {
        let user = ["a", "b", "c", "d"][(i % 4) as usize];
        conns.push(conn(
            ["n1", "n2", "n3"][(i * 7 % 3) as usize],
            i,
            "APP",
            user,
            ["", "web", "worker", "cron", "web"][(i * 11 % 5) as usize],
            &format!("10.0.0.{}", i * 13 % 7),
        ));
    }
    let census = build(&conns, None, &DetectConfig::default());
    for u in &census.users {
        let mine = || conns.iter().filter(|c| *c.user == u.user);
        let count = |key: fn(&Connection) -> &str| {
            let mut m = BTreeMap::new();
            for c in mine() {
                *m.entry(key(c).to_string()).or_default() += 1u64;
            }
            m
        };
        assert_eq!(u.connections, mine().count() as u64);
        assert_eq!(u.by_server, count(|c| &c.server));
        assert_eq!(*u.by_name, count(|c| &c.name));
        assert_eq!(*u.by_ip, count(|c| &c.ip));
    }
    assert_eq!(census.users.len(), 4);
}

#[test]
fn a_fleet_with_an_ip_per_client_counts_every_ip_and_the_top_process_is_first_by_text() {
    // Each client its own host, IPv4 and IPv6, the same IP under two names once; the IPs
    // sort differently as numbers and as texts ("10.0.0.10" before "10.0.0.9").
    let ips = [
        "10.0.0.9",
        "10.0.0.10",
        "9.1.1.1",
        "2001:db8::a",
        "::1",
        "10.0.0.9",
    ];
    let names = ["pod", "pod", "pod", "pod", "pod", "sidecar"];
    let conns: Vec<Connection> = ips
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (ip, name))| conn("n1", i as u64, "APP", "fleet", name, ip))
        .collect();
    let census = build(&conns, None, &DetectConfig::default());
    let u = &census.users[0];
    let expect: BTreeMap<String, u64> = [
        ("10.0.0.10", 1),
        ("10.0.0.9", 2),
        ("2001:db8::a", 1),
        ("9.1.1.1", 1),
        ("::1", 1),
    ]
    .into_iter()
    .map(|(ip, n)| (ip.to_string(), n))
    .collect();
    assert_eq!(*u.by_ip, expect);
    assert_eq!((u.spread.processes, u.spread.ips), (6, 5));
    assert_eq!((u.spread.max_per_ip, u.spread.median_per_ip), (2, 1));
    // Every process holds one connection: the top one is the first by IP text, then name.
    let top = u.spread.top_process.as_ref().unwrap();
    assert_eq!((top.ip.as_str(), top.name.as_str()), ("10.0.0.10", "pod"));
    // With a process of two, that one.
    let mut more = conns.clone();
    more.push(conn("n2", 99, "APP", "fleet", "pod", "::1"));
    let census = build(&more, None, &DetectConfig::default());
    let top = census.users[0].spread.top_process.clone().unwrap();
    assert_eq!((top.ip.as_str(), top.connections), ("::1", 2));
}
