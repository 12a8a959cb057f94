//! Kicking leaked connections: the policy (pure) and the memory of what was kicked.
//!
//! A kick closes one connection. A client whose library reconnects comes straight back, so a
//! kick only helps when the leaking object is really abandoned. connwatch remembers whom it
//! kicked, notices a client (user, client name, IP) coming back within `kick.return_window`,
//! reports it (`kick_ineffective`: fix the code or revoke the credential) and, after
//! `kick.max_attempts` such returns, leaves that client alone: until the operator runs
//! `connwatch kick --forget`, or for `kick.give_up_for` when that is set.

pub mod executor;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::Census;
use crate::config::{names_match, KickConfig, UserMatch};
use crate::snapshot::Connection;

/// A connection chosen for a kick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KickPlan {
    /// Server name.
    pub server: String,
    /// Server id: where the KICK goes.
    pub server_id: String,
    /// Connection id.
    pub cid: u64,
    /// Account.
    pub account: String,
    /// The account's human name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// User.
    pub user: String,
    /// The user's human name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Client name.
    pub name: String,
    /// Remote IP.
    pub ip: String,
    /// How long it has been idle.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::advisory::schema::humantime")]
    pub idle: Duration,
    /// How old it is.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "crate::advisory::schema::humantime")]
    pub age: Duration,
    /// The user's connections in the sweep.
    pub user_connections: u64,
    /// The user's threshold.
    pub threshold: u64,
}

impl KickPlan {
    /// The key of its client in [`Kicked::clients`].
    pub fn client_key(&self) -> String {
        client_key(&self.account, &self.user, &self.name, &self.ip)
    }

    /// A plan for one connection of a user with `user_connections` and `threshold`.
    pub fn of(c: &Connection, now: DateTime<Utc>, user_connections: u64, threshold: u64) -> Self {
        Self {
            server: c.server.clone(),
            server_id: c.server_id.clone(),
            cid: c.cid,
            account: c.account.clone(),
            account_name: c.account_name.clone(),
            user: c.user.clone(),
            user_name: c.user_name.clone(),
            name: c.name.clone(),
            ip: c.ip.clone(),
            idle: c.idle,
            age: c
                .start
                .and_then(|s| (now - s).to_std().ok())
                .unwrap_or_default(),
            user_connections,
            threshold,
        }
    }
}

/// connwatch's own connection, never kicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// The server it is connected to.
    pub server_id: String,
    /// Its connection id there.
    pub cid: u64,
}

/// Why a connection may not be kicked, when asked by hand (`connwatch kick`).
pub fn refusal(
    c: &Connection,
    cfg: &KickConfig,
    system_account: Option<&str>,
    own: Option<&Own>,
) -> Option<String> {
    if system_account == Some(c.account.as_str()) {
        return Some("it belongs to the system account".into());
    }
    if own.is_some_and(|o| o.server_id == c.server_id && o.cid == c.cid) {
        return Some("it is connwatch's own connection".into());
    }
    if c.kind == "Leafnode" && !cfg.leafnodes {
        return Some("it is a leafnode connection (kick.leafnodes is false)".into());
    }
    None
}

/// Why `kick.protect` or `kick.only` keep a user from being kicked, if they do.
pub fn policy_refusal(
    cfg: &KickConfig,
    account: &str,
    account_name: &Option<String>,
    user: &str,
    user_name: &Option<String>,
) -> Option<&'static str> {
    if listed(&cfg.protect, account, account_name, user, user_name) {
        return Some("it is protected by kick.protect");
    }
    if !cfg.only.is_empty() && !listed(&cfg.only, account, account_name, user, user_name) {
        return Some("it is not in kick.only");
    }
    None
}

fn listed(
    list: &[UserMatch],
    account: &str,
    account_name: &Option<String>,
    user: &str,
    user_name: &Option<String>,
) -> bool {
    list.iter()
        .any(|m| m.matches(account, account_name, user, user_name))
}

/// What the kick policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct KickInputs<'a> {
    /// Every connection of the sweep.
    pub connections: &'a [Connection],
    /// Its census.
    pub census: &'a Census,
    /// Whether every server answered.
    pub complete: bool,
    /// The policy.
    pub cfg: &'a KickConfig,
    /// The system account, never kicked.
    pub system_account: Option<&'a str>,
    /// connwatch's own connection, never kicked.
    pub own: Option<&'a Own>,
    /// Clients kicked before.
    pub kicked: &'a Kicked,
    /// The sweep's time.
    pub now: DateTime<Utc>,
}

/// The connections to kick after a sweep: none unless the sweep is complete; else the idle,
/// message-less, old-enough connections of users over their threshold, longest idle first,
/// within the caps.
pub fn plan(inputs: &KickInputs) -> Vec<KickPlan> {
    let KickInputs {
        connections,
        census,
        complete,
        cfg,
        system_account,
        own,
        kicked,
        now,
    } = *inputs;
    if !complete {
        return Vec::new();
    }
    let mut by_user: HashMap<(&str, &str), Vec<&Connection>> = HashMap::new();
    for c in connections {
        by_user
            .entry((c.account.as_str(), c.user.as_str()))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for u in &census.users {
        if out.len() >= cfg.max_per_sweep {
            break;
        }
        if !u.over_threshold
            || u.system
            || policy_refusal(cfg, &u.account, &u.account_name, &u.user, &u.user_name).is_some()
        {
            continue;
        }
        let mut candidates: Vec<(&Connection, Duration)> = by_user
            .get(&(u.account.as_str(), u.user.as_str()))
            .into_iter()
            .flatten()
            .filter(|c| refusal(c, cfg, system_account, own).is_none())
            .filter(|c| c.in_msgs == 0 && c.out_msgs == 0 && c.idle >= cfg.min_idle)
            .filter(|c| {
                !kicked.given_up(
                    &client_key(&c.account, &c.user, &c.name, &c.ip),
                    cfg.max_attempts,
                )
            })
            .filter_map(|c| {
                let age = (now - c.start?).to_std().ok()?;
                (age >= cfg.min_age).then_some((*c, age))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.idle.cmp(&a.0.idle).then(a.0.cid.cmp(&b.0.cid)));
        let room = cfg.max_per_sweep - out.len();
        for (c, _) in candidates.into_iter().take(cfg.max_per_user.min(room)) {
            out.push(KickPlan::of(c, now, u.connections, u.threshold));
        }
    }
    out
}

/// The identity of a client across its connections: user, client name and IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Client {
    /// Account.
    pub account: String,
    /// User.
    pub user: String,
    /// Client name.
    pub name: String,
    /// Remote IP.
    pub ip: String,
}

impl Client {
    /// Its key in [`Kicked::clients`].
    pub fn key(&self) -> String {
        client_key(&self.account, &self.user, &self.name, &self.ip)
    }
}

fn client_key(account: &str, user: &str, name: &str, ip: &str) -> String {
    serde_json::to_string(&[account, user, name, ip]).expect("strings serialize")
}

/// What connwatch kicked, per client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kicked {
    /// Client key → record.
    pub clients: BTreeMap<String, KickedClient>,
}

/// One client's kicks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KickedClient {
    /// Who.
    #[serde(flatten)]
    pub client: Client,
    /// Connections kicked, in all.
    pub kicks: u64,
    /// Times it came back after a kick.
    pub returns: u32,
    /// The last kick.
    pub last_kick: DateTime<Utc>,
    /// Whether its return after the last kick was already seen.
    pub return_seen: bool,
    /// When connwatch gave up on it (its returns reached `kick.max_attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_up_at: Option<DateTime<Utc>>,
    /// The account's human name, when known (so `--forget` can name it either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// The user's human name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

impl KickedClient {
    /// Whether connwatch has given up on it under `max_attempts`.
    pub fn given_up(&self, max_attempts: u32) -> bool {
        self.returns >= max_attempts
    }
}

/// A kicked client that came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Returned {
    /// Who.
    #[serde(flatten)]
    pub client: Client,
    /// Connections kicked, in all.
    pub kicks: u64,
    /// Times it came back after a kick, this one included.
    pub returns: u32,
    /// New connections it opened since the last kick.
    pub new_connections: u64,
    /// Whether connwatch now leaves it alone.
    pub given_up: bool,
    /// What it means, in words.
    pub message: String,
}

/// Kick records older than this are forgotten, unless connwatch gave up on the client.
const FORGET_AFTER: chrono::Duration = chrono::Duration::hours(24);

impl Kicked {
    /// Records kicks that were sent.
    pub fn record(&mut self, kicks: &[KickPlan], now: DateTime<Utc>) {
        for k in kicks {
            let r = self
                .clients
                .entry(client_key(&k.account, &k.user, &k.name, &k.ip))
                .or_insert_with(|| KickedClient {
                    client: Client {
                        account: k.account.clone(),
                        user: k.user.clone(),
                        name: k.name.clone(),
                        ip: k.ip.clone(),
                    },
                    kicks: 0,
                    returns: 0,
                    last_kick: now,
                    return_seen: false,
                    given_up_at: None,
                    account_name: None,
                    user_name: None,
                });
            r.account_name.clone_from(&k.account_name);
            r.user_name.clone_from(&k.user_name);
            r.kicks += 1;
            r.last_kick = now;
            r.return_seen = false;
            // Kicked again (e.g. after `kick.max_attempts` was raised): not given up on now.
            r.given_up_at = None;
        }
    }

    /// Whether connwatch has given up on this client: it came back `max_attempts` times.
    pub fn given_up(&self, key: &str, max_attempts: u32) -> bool {
        self.clients
            .get(key)
            .is_some_and(|r| r.given_up(max_attempts))
    }

    /// Drops what is no longer needed at `now`: records of ordinary kicks after 24 h; a client
    /// given up on only after `kick.give_up_for`, when set (else it stays until forgotten).
    pub fn expire(&mut self, now: DateTime<Utc>, cfg: &KickConfig) {
        let give_up_for = cfg
            .give_up_for
            .map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
        self.clients.retain(|_, r| {
            if r.given_up(cfg.max_attempts) {
                let since = r.given_up_at.unwrap_or(r.last_kick);
                give_up_for.is_none_or(|d| now - since <= d)
            } else {
                now - r.last_kick <= FORGET_AFTER
            }
        });
    }

    /// Forgets every client of one user (`account` and `user` by key or human name); returns
    /// what was forgotten.
    pub fn forget(&mut self, account: &str, user: &str) -> Vec<KickedClient> {
        let (gone, kept) = std::mem::take(&mut self.clients)
            .into_iter()
            .partition(|(_, r)| {
                names_match(account, &r.client.account, &r.account_name)
                    && names_match(user, &r.client.user, &r.user_name)
            });
        self.clients = kept;
        gone.into_values().collect()
    }

    /// Forgets every client; returns what was forgotten.
    pub fn forget_all(&mut self) -> Vec<KickedClient> {
        std::mem::take(&mut self.clients).into_values().collect()
    }

    /// Finds kicked clients that connected again within `window` of their last kick.
    pub fn observe(
        &mut self,
        connections: &[Connection],
        now: DateTime<Utc>,
        cfg: &KickConfig,
    ) -> Vec<Returned> {
        self.expire(now, cfg);
        let window =
            chrono::Duration::from_std(cfg.return_window).unwrap_or(chrono::Duration::MAX / 2);
        let mut new: HashMap<String, u64> = HashMap::new();
        for c in connections {
            let key = client_key(&c.account, &c.user, &c.name, &c.ip);
            if let (Some(r), Some(start)) = (self.clients.get(&key), c.start) {
                if !r.return_seen && start > r.last_kick && start - r.last_kick <= window {
                    *new.entry(key).or_default() += 1;
                }
            }
        }
        let mut out = Vec::new();
        for (key, n) in new {
            let r = self.clients.get_mut(&key).expect("counted above");
            r.return_seen = true;
            r.returns += 1;
            let given_up = r.given_up(cfg.max_attempts);
            if given_up && r.given_up_at.is_none() {
                r.given_up_at = Some(now);
            }
            let what_next = if given_up {
                let how_long = match cfg.give_up_for {
                    Some(d) => format!(
                        "for {} (or until `connwatch kick --forget`)",
                        humantime::format_duration(d)
                    ),
                    None => "until `connwatch kick --forget`".to_string(),
                };
                format!(
                    "connwatch stops kicking this client after {} ineffective kicks, {how_long}",
                    r.returns
                )
            } else {
                format!(
                    "connwatch leaves it alone after {} ineffective kicks ({} so far)",
                    cfg.max_attempts, r.returns
                )
            };
            out.push(Returned {
                client: r.client.clone(),
                kicks: r.kicks,
                returns: r.returns,
                new_connections: n,
                given_up,
                message: format!(
                    "{n} new connections from this client (name \"{}\" at {}) within {} of a kick: kicking treats the symptom; the process keeps the leaking object alive and its library reconnects. Fix the code, or revoke the credential; {what_next}",
                    r.client.name,
                    r.client.ip,
                    humantime::format_duration(cfg.return_window)
                ),
            });
        }
        out.sort_by(|a, b| a.client.cmp(&b.client));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::build;
    use crate::config::DetectConfig;

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
            start: Some(t(0)),
            idle: Duration::from_secs(idle_secs),
            in_msgs: msgs,
            out_msgs: 0,
            name: "worker".into(),
            account: "APP".into(),
            account_name: None,
            user: user.into(),
            user_name: None,
            tags: vec![],
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
            c.start = Some(t(3590));
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
            c.start = Some(t(3601));
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
            c.start = Some(t(3701));
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
        late[0].start = Some(t(3600 + 601));
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
                c.start = Some(t(3601 + 100 * i));
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
}
