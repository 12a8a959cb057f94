//! The memory of what was kicked: per client (user, client name, IP), its kicks, its returns
//! and whether connwatch gave up on it. Kept in the state file.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::KickPlan;
use crate::advisory::types::Message;
use crate::advisory::{KickResult, KickRule};
use crate::config::{names_match, KickConfig};
use crate::snapshot::Connection;
use crate::stamp::Stamp;

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

pub(super) fn client_key(account: &str, user: &str, name: &str, ip: &str) -> String {
    serde_json::to_string(&[account, user, name, ip]).expect("strings serialize")
}

/// What connwatch kicked, per client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kicked {
    /// Client key → record.
    pub clients: BTreeMap<String, KickedClient>,
    /// Kicks about to be sent, as (server id, cid): recorded (and, with `[ha]`, saved in the
    /// bucket) before a batch is sent, so no replica ever sends a second KICK for one of them;
    /// dropped once the connection is gone from a complete sweep.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub intents: BTreeSet<(String, u64)>,
    /// The plans of the `intents` whose outcome is not recorded yet: a leader that dies
    /// between recording a batch and recording its outcomes leaves them here for the next one
    /// to audit ([`Kicked::recover`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfinished: Vec<KickPlan>,
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

/// A by-hand kick (`connwatch kick`, `connwatch top`) as its audit advisory tells it: the
/// plan and when it was made, when `payload` is a `connection_kicked` advisory with `rule:
/// manual` whose connection the server closed (`result: kicked`, not a dry run). Anything
/// else (another type, another rule, `already_gone`, `failed`, unparseable) is `None`: only a
/// kick that closed a connection can be followed by that client's return.
pub fn manual_kick(payload: &[u8]) -> Option<(KickPlan, DateTime<Utc>)> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let Ok(Message::ConnectionKicked(e)) = Message::decode(value) else {
        return None;
    };
    let k = e.body;
    (k.rule == KickRule::Manual && k.result == KickResult::Kicked && !k.dry_run)
        .then_some((k.plan, e.timestamp))
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

    /// Records kicks about to be sent (see [`Kicked::intents`]).
    pub fn intend(&mut self, kicks: &[KickPlan]) {
        self.intents
            .extend(kicks.iter().map(|k| (k.server_id.clone(), k.cid)));
        self.unfinished.extend(kicks.iter().cloned());
    }

    /// The outcomes of these kicks are recorded (audited): they are no longer unfinished.
    pub fn finished(&mut self, kicks: &[KickPlan]) {
        let done: HashSet<(&str, u64)> = kicks
            .iter()
            .map(|k| (k.server_id.as_str(), k.cid))
            .collect();
        self.unfinished
            .retain(|k| !done.contains(&(k.server_id.as_str(), k.cid)));
    }

    /// Audits the unfinished kicks against `connections`, those of a complete sweep, once: the
    /// plans whose connection is gone are returned (the KICK most likely went out); those still
    /// open stay in `intents`, so they are never kicked again, and are left to the operator.
    /// Either way they are unfinished no longer.
    pub fn recover(&mut self, connections: &[Connection]) -> Vec<KickPlan> {
        let live: HashSet<(&str, u64)> = connections
            .iter()
            .map(|c| (c.server_id.as_str(), c.cid))
            .collect();
        std::mem::take(&mut self.unfinished)
            .into_iter()
            .filter(|k| !live.contains(&(k.server_id.as_str(), k.cid)))
            .collect()
    }

    /// Whether a KICK for this connection was already planned to be sent.
    pub fn intended(&self, server_id: &str, cid: u64) -> bool {
        self.intents.contains(&(server_id.to_string(), cid))
    }

    /// Drops intents of a kick never sent.
    pub fn unintend(&mut self, kicks: &[KickPlan]) {
        for k in kicks {
            self.intents.remove(&(k.server_id.clone(), k.cid));
        }
        self.finished(kicks);
    }

    /// Drops the intents whose connection is not in `connections`, the connections of a
    /// complete sweep: gone for good (a server never reuses a cid; a restarted one has a new
    /// id).
    pub fn settle_intents(&mut self, connections: &[Connection]) {
        if self.intents.is_empty() {
            return;
        }
        let live: HashSet<(&str, u64)> = connections
            .iter()
            .map(|c| (c.server_id.as_str(), c.cid))
            .collect();
        self.intents
            .retain(|(server_id, cid)| live.contains(&(server_id.as_str(), *cid)));
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
        if self.clients.is_empty() {
            // Nothing kicked to watch for: no key built per connection.
            return Vec::new();
        }
        let window =
            chrono::Duration::from_std(cfg.return_window).unwrap_or(chrono::Duration::MAX / 2);
        let mut new: HashMap<String, u64> = HashMap::new();
        for c in connections {
            let key = client_key(&c.account, &c.user, &c.name, &c.ip);
            if let (Some(r), Some(start)) = (self.clients.get(&key), c.start) {
                let last_kick = Stamp::of(r.last_kick);
                if !r.return_seen && start > last_kick && start - last_kick <= window {
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
