//! The kick policy and memory, on plain data.

use super::*;
use crate::census::build;
use crate::config::DetectConfig;
use crate::stamp::Stamp;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
}

fn conn(cid: u64, user: &str, idle_secs: u64, msgs: u64) -> Connection {
    Connection {
        server: "n1".into(),
        server_id: "S1".into(),
        cid,
        kind: "Client".into(),
        ip: "10.0.0.1".into(),
        start: Some(Stamp::of(t(0))),
        idle: Duration::from_secs(idle_secs),
        in_msgs: msgs,
        out_msgs: 0,
        name: "worker".into(),
        account: "APP".into(),
        account_name: None,
        user: user.into(),
        user_name: None,
        tags: vec![],
        ..Connection::default()
    }
}

fn cfg() -> KickConfig {
    KickConfig {
        enabled: true,
        dry_run: false,
        min_idle: Duration::from_secs(60),
        min_age: Duration::from_secs(60),
        max_per_sweep: 100,
        max_per_user: 50,
        ..KickConfig::default()
    }
}

/// 120 idle connections (cids 0..120, longer idle for lower cids), 10 active ones.
fn leak(user: &str) -> Vec<Connection> {
    let mut c: Vec<_> = (0..120).map(|i| conn(i, user, 1000 - i, 0)).collect();
    c.extend((200..210).map(|i| conn(i, user, 5000, 3)));
    c
}

fn inputs<'a>(
    connections: &'a [Connection],
    census: &'a Census,
    cfg: &'a KickConfig,
    own: Option<&'a Own>,
    kicked: &'a Kicked,
    now: DateTime<Utc>,
) -> KickInputs<'a> {
    KickInputs {
        connections,
        census,
        complete: true,
        cfg,
        system_account: None,
        own,
        kicked,
        now,
        used_once_within: Duration::from_secs(30),
    }
}

fn plan_for(conns: &[Connection], cfg: &KickConfig, complete: bool) -> Vec<KickPlan> {
    let census = build(conns, Some("SYS"), &DetectConfig::default());
    plan(&KickInputs {
        connections: conns,
        census: &census,
        complete,
        cfg,
        system_account: Some("SYS"),
        own: None,
        kicked: &Kicked::default(),
        now: t(3600),
        used_once_within: Duration::from_secs(30),
    })
}

#[test]
fn only_idle_message_less_connections_go_longest_idle_first_within_caps() {
    let p = plan_for(&leak("leaky"), &cfg(), true);
    assert_eq!(p.len(), 50);
    assert_eq!(p[0].cid, 0, "longest idle first");
    assert!(
        p.iter().all(|k| k.cid < 200),
        "an active connection was chosen"
    );
    let two = [leak("a"), leak("b"), leak("c")].concat();
    let p = plan_for(
        &two,
        &KickConfig {
            max_per_sweep: 70,
            ..cfg()
        },
        true,
    );
    assert_eq!(p.len(), 70);
}

#[test]
fn used_once_connections_are_kicked_quiet_live_ones_are_not() {
    // 110 connections of one process, each used for one publish right after connecting and
    // idle since; a live subscriber whose last delivery came a day after it connected; a
    // connection that publishes every minute.
    let once = |i: u64| Connection {
        last_activity: Some(Stamp::of(t(1))),
        in_msgs: 1,
        ..conn(i, "leaky", 2000 - i, 0)
    };
    let mut conns: Vec<_> = (0..110).map(once).collect();
    conns.push(Connection {
        last_activity: Some(Stamp::of(t(86_400))),
        out_msgs: 5000,
        name: "subscriber".into(),
        ..conn(500, "leaky", 5000, 0)
    });
    conns.push(Connection {
        last_activity: Some(Stamp::of(t(3590))),
        name: "ticker".into(),
        ..conn(501, "leaky", 10, 60)
    });
    let p = plan_for(&conns, &cfg(), true);
    assert_eq!(p.len(), 50);
    assert!(
        p.iter().all(|k| k.cid < 110),
        "a live connection was chosen"
    );
    assert!(p.iter().all(|k| k.pattern == Some(LeakPattern::UsedOnce)));
    // kick.min_idle still applies: none is idle a day.
    let day = KickConfig {
        min_idle: Duration::from_secs(86_400),
        ..cfg()
    };
    assert!(plan_for(&conns, &day, true).is_empty());
}

#[test]
fn nothing_on_a_partial_sweep() {
    assert!(plan_for(&leak("leaky"), &cfg(), false).is_empty());
}

#[test]
fn users_under_threshold_system_and_protected_users_are_spared() {
    let few: Vec<_> = (0..50).map(|i| conn(i, "few", 1000, 0)).collect();
    assert!(plan_for(&few, &cfg(), true).is_empty());
    let mut sys = leak("sys");
    for c in &mut sys {
        c.account = "SYS".into();
    }
    assert!(plan_for(&sys, &cfg(), true).is_empty());
    let protect = KickConfig {
        protect: vec![UserMatch {
            account: "APP".into(),
            user: Some("leaky".into()),
        }],
        ..cfg()
    };
    assert!(plan_for(&leak("leaky"), &protect, true).is_empty());
    let only_other = KickConfig {
        only: vec![UserMatch {
            account: "APP".into(),
            user: Some("other".into()),
        }],
        ..cfg()
    };
    assert!(plan_for(&leak("leaky"), &only_other, true).is_empty());
    let only_app = KickConfig {
        only: vec![UserMatch {
            account: "APP".into(),
            user: None,
        }],
        ..cfg()
    };
    assert_eq!(plan_for(&leak("leaky"), &only_app, true).len(), 50);
    // Protection wins over `only`.
    let both = KickConfig {
        protect: protect.protect.clone(),
        ..only_app
    };
    assert!(plan_for(&leak("leaky"), &both, true).is_empty());
}

#[test]
fn young_leafnode_and_own_connections_are_spared() {
    let mut conns = leak("leaky");
    for c in conns.iter_mut().take(100) {
        c.start = Some(Stamp::of(t(3590)));
    }
    conns[100].kind = "Leafnode".into();
    let census = build(&conns, None, &DetectConfig::default());
    let own = Own {
        server_id: "S1".into(),
        cid: 101,
    };
    let p = plan(&inputs(
        &conns,
        &census,
        &cfg(),
        Some(&own),
        &Kicked::default(),
        t(3600),
    ));
    assert_eq!(
        p.iter().map(|k| k.cid).collect::<Vec<_>>(),
        (102..120).collect::<Vec<_>>()
    );
}

#[test]
fn a_client_coming_back_is_reported_and_then_left_alone() {
    let cfg = KickConfig {
        max_attempts: 2,
        ..cfg()
    };
    let mut kicked = Kicked::default();
    let conns = leak("leaky");
    let census = build(&conns, None, &DetectConfig::default());
    let first = plan(&inputs(&conns, &census, &cfg, None, &kicked, t(3600)));
    kicked.record(&first, t(3600));
    // The library reconnects: new connections of the same client right after the kick.
    let mut back = conns.clone();
    for (i, c) in back.iter_mut().take(50).enumerate() {
        c.cid = 1000 + i as u64;
        c.start = Some(Stamp::of(t(3601)));
    }
    let r = kicked.observe(&back, t(3630), &cfg);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].returns, r[0].new_connections, r[0].given_up),
        (1, 50, false)
    );
    assert!(r[0].message.contains("revoke the credential"));
    assert!(
        kicked.observe(&back, t(3660), &cfg).is_empty(),
        "one report per kick"
    );
    kicked.record(&first, t(3700));
    for c in back.iter_mut().take(50) {
        c.start = Some(Stamp::of(t(3701)));
    }
    let r = kicked.observe(&back, t(3730), &cfg);
    assert!(r[0].given_up);
    let again = plan(&inputs(&back, &census, &cfg, None, &kicked, t(7200)));
    assert!(again.is_empty(), "kicked a client connwatch gave up on");
}

#[test]
fn a_return_after_the_window_is_not_the_kicked_client() {
    let mut kicked = Kicked::default();
    let conns = leak("leaky");
    let census = build(&conns, None, &DetectConfig::default());
    let first = plan(&inputs(&conns, &census, &cfg(), None, &kicked, t(3600)));
    kicked.record(&first, t(3600));
    let mut late = conns.clone();
    late[0].start = Some(Stamp::of(t(3600 + 601)));
    assert!(kicked.observe(&late, t(4300), &cfg()).is_empty());
}

/// A client that came back `max_attempts` times after kicks, given up on at about t(3730).
fn given_up_on(cfg: &KickConfig) -> (Kicked, Vec<Connection>, Census) {
    let mut kicked = Kicked::default();
    let conns = leak("leaky");
    let census = build(&conns, None, &DetectConfig::default());
    let first = plan(&inputs(&conns, &census, cfg, None, &kicked, t(3600)));
    let mut back = conns.clone();
    for i in 0..cfg.max_attempts as i64 {
        kicked.record(&first, t(3600 + 100 * i));
        for c in back.iter_mut().take(50) {
            c.start = Some(Stamp::of(t(3601 + 100 * i)));
        }
        kicked.observe(&back, t(3630 + 100 * i), cfg);
    }
    assert!(kicked.given_up(&first[0].client_key(), cfg.max_attempts));
    (kicked, back, census)
}

#[test]
fn a_client_given_up_on_stays_given_up_on_after_a_day() {
    let cfg = KickConfig {
        max_attempts: 2,
        ..cfg()
    };
    let (mut kicked, back, census) = given_up_on(&cfg);
    let day = 24 * 3600;
    // Sweeps go on; a day and an hour later the decision holds.
    for later in [day / 2, day, day + 3600, 30 * day] {
        assert!(kicked.observe(&back, t(3730 + later), &cfg).is_empty());
        let again = plan(&inputs(
            &back,
            &census,
            &cfg,
            None,
            &kicked,
            t(3730 + later),
        ));
        assert!(again.is_empty(), "kicked again {later} s after giving up");
    }
}

#[test]
fn give_up_for_ends_the_decision_and_ordinary_memory_expires_after_a_day() {
    let cfg = KickConfig {
        max_attempts: 2,
        give_up_for: Some(Duration::from_secs(7 * 24 * 3600)),
        ..cfg()
    };
    let (mut kicked, back, census) = given_up_on(&cfg);
    kicked.observe(&back, t(3730 + 6 * 24 * 3600), &cfg);
    assert!(plan(&inputs(
        &back,
        &census,
        &cfg,
        None,
        &kicked,
        t(3730 + 6 * 24 * 3600)
    ))
    .is_empty());
    kicked.observe(&back, t(3730 + 8 * 24 * 3600), &cfg);
    assert!(kicked.clients.is_empty());
    assert_eq!(
        plan(&inputs(
            &back,
            &census,
            &cfg,
            None,
            &kicked,
            t(3730 + 8 * 24 * 3600)
        ))
        .len(),
        50
    );

    // A client kicked once (not given up on) is forgotten after 24 h, as before.
    let mut once = Kicked::default();
    let p = plan(&inputs(&back, &census, &cfg, None, &once, t(3600)));
    once.record(&p, t(3600));
    once.observe(&[], t(3600 + 23 * 3600), &cfg);
    assert_eq!(once.clients.len(), 1);
    once.observe(&[], t(3600 + 25 * 3600), &cfg);
    assert!(once.clients.is_empty());
}

#[test]
fn forget_drops_one_user_by_key_or_name_or_everyone() {
    let cfg = KickConfig {
        max_attempts: 1,
        ..cfg()
    };
    let (mut kicked, _, _) = given_up_on(&cfg);
    let other: Vec<_> = leak("other")
        .into_iter()
        .map(|mut c| {
            c.user_name = Some("Other Person".into());
            c
        })
        .collect();
    let census = build(&other, None, &DetectConfig::default());
    kicked.record(
        &plan(&inputs(&other, &census, &cfg, None, &kicked, t(3600))),
        t(3600),
    );
    assert_eq!(kicked.clients.len(), 2);
    assert!(kicked.forget("APP", "nobody").is_empty());
    let gone = kicked.forget("APP", "leaky");
    assert_eq!(gone.len(), 1);
    assert!(gone[0].given_up(1));
    assert_eq!(kicked.forget("APP", "Other Person").len(), 1);
    assert!(kicked.clients.is_empty());
    let (mut kicked, _, _) = given_up_on(&cfg);
    assert_eq!(kicked.forget_all().len(), 1);
    assert!(kicked.clients.is_empty());
}

#[test]
fn a_connection_a_kick_was_planned_for_is_never_planned_again_until_it_is_gone() {
    let conns = leak("leaky");
    let census = build(&conns, Some("SYS"), &DetectConfig::default());
    let cfg = cfg();
    let now = t(10_000);
    let mut kicked = Kicked::default();
    let first = plan(&inputs(&conns, &census, &cfg, None, &kicked, now));
    assert_eq!(first.len(), 50);
    // A leader records its batch, then dies before a kick lands: the next plans skip all 50.
    kicked.intend(&first);
    let state = serde_json::to_string(&kicked).unwrap();
    let kicked: Kicked = serde_json::from_str(&state).unwrap();
    let second = plan(&inputs(&conns, &census, &cfg, None, &kicked, now));
    assert_eq!(second.len(), 50);
    assert!(second.iter().all(|p| !first
        .iter()
        .any(|f| (&f.server_id, f.cid) == (&p.server_id, p.cid))));
    // Intents of connections still open stay; those of connections gone are dropped.
    let mut kicked = kicked;
    kicked.settle_intents(&conns);
    assert_eq!(kicked.intents.len(), 50);
    let rest: Vec<_> = conns.iter().filter(|c| c.cid >= 25).cloned().collect();
    kicked.settle_intents(&rest);
    assert_eq!(kicked.intents.len(), 25);
    kicked.unintend(&first);
    assert!(kicked.intents.is_empty());
    // An empty record keeps the state as it was before intents existed.
    assert_eq!(serde_json::to_string(&kicked).unwrap(), r#"{"clients":{}}"#);
}

#[test]
fn unfinished_kicks_are_audited_once_the_gone_returned_the_open_left_and_never_planned_again() {
    let conns = leak("leaky");
    let census = build(&conns, Some("SYS"), &DetectConfig::default());
    let cfg = cfg();
    let now = t(10_000);
    let mut kicked = Kicked::default();
    let batch = plan(&inputs(&conns, &census, &cfg, None, &kicked, now));
    kicked.intend(&batch);
    assert_eq!(kicked.unfinished.len(), batch.len());
    // The sender recorded the outcomes of the first 10, then died; through the bucket.
    kicked.finished(&batch[..10]);
    let state = serde_json::to_string(&kicked).unwrap();
    let mut kicked: Kicked = serde_json::from_str(&state).unwrap();
    assert_eq!(kicked.unfinished.len(), batch.len() - 10);
    // Of the unfinished, 15 connections are gone (its KICKs landed), the rest still open.
    let gone: std::collections::BTreeSet<u64> = batch[10..25].iter().map(|p| p.cid).collect();
    let after: Vec<Connection> = conns
        .iter()
        .filter(|c| !gone.contains(&c.cid))
        .cloned()
        .collect();
    let recovered: std::collections::BTreeSet<u64> =
        kicked.recover(&after).iter().map(|p| p.cid).collect();
    assert_eq!(recovered, gone);
    assert!(kicked.unfinished.is_empty());
    assert!(kicked.recover(&after).is_empty(), "audited once");
    // The open ones are never planned again.
    let census = build(&after, Some("SYS"), &DetectConfig::default());
    let next = plan(&inputs(&after, &census, &cfg, None, &kicked, now));
    let open: Vec<u64> = batch[25..].iter().map(|p| p.cid).collect();
    assert!(next.iter().all(|p| !open.contains(&p.cid)), "{next:?}");
}

#[test]
fn a_by_hand_kick_is_followed_from_its_audit_and_its_return_noticed() {
    use crate::advisory::{self, Completeness, KickResult, KickRule};
    let sweep = Completeness::of(&crate::snapshot::Snapshot::default());
    let conns = vec![conn(7, "leaky", 0, 0)];
    let p = KickPlan::of(&conns[0], t(3600), 0, 0);
    let audit = |rule, result| {
        let a = advisory::kicked("connwatch", &p, rule, result, None, &sweep, t(3600));
        serde_json::to_vec(&a.body).unwrap()
    };
    // Only a by-hand kick that closed the connection: not the policy's, a dry run, or a miss.
    for (rule, result) in [
        (KickRule::ExcessiveUserConnections, KickResult::Kicked),
        (KickRule::Manual, KickResult::WouldKick),
        (KickRule::Manual, KickResult::AlreadyGone),
        (KickRule::Manual, KickResult::Failed),
    ] {
        assert_eq!(
            manual_kick(&audit(rule, result)),
            None,
            "{rule:?} {result:?}"
        );
    }
    assert_eq!(manual_kick(b"not json"), None);
    let (heard, at) = manual_kick(&audit(KickRule::Manual, KickResult::Kicked)).unwrap();
    assert_eq!((&heard, at), (&p, t(3600)));

    // Recorded, the client's return within the window is noticed like any kick's.
    let mut kicked = Kicked::default();
    kicked.record(&[heard], at);
    let mut back = conns.clone();
    back[0].cid = 8;
    back[0].start = Some(Stamp::of(t(3601)));
    let r = kicked.observe(&back, t(3630), &cfg());
    assert_eq!((r.len(), r[0].returns, r[0].kicks), (1, 1, 1));
}
