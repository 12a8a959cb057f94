//! Kicking leaked connections: the policy (pure, here), the memory of what was kicked
//! (`memory`) and the executor that sends kicks and audits them ([`executor`]).
//!
//! A kick closes one connection. A client whose library reconnects comes straight back, so a
//! kick only helps when the leaking object is really abandoned. connwatch remembers whom it
//! kicked, notices a client (user, client name, IP) coming back within `kick.return_window`,
//! reports it (`kick_ineffective`: fix the code or revoke the credential) and, after
//! `kick.max_attempts` such returns, leaves that client alone: until the operator runs
//! `connwatch kick --forget`, or for `kick.give_up_for` when that is set.

pub mod executor;
mod memory;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::{classify, Census, LeakPattern, Signature};
use crate::config::{KickConfig, UserMatch};
use crate::snapshot::Connection;

use crate::stamp::Stamp;
use memory::client_key;
pub use memory::{manual_kick, Client, Kicked, KickedClient, Returned};

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
    /// The leak pattern it matched; absent for a kick by connection id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<LeakPattern>,
}

impl KickPlan {
    /// The key of its client in [`Kicked::clients`].
    pub fn client_key(&self) -> String {
        client_key(&self.account, &self.user, &self.name, &self.ip)
    }

    /// A plan for one connection of a user with `user_connections` and `threshold`.
    pub fn of(c: &Connection, now: DateTime<Utc>, user_connections: u64, threshold: u64) -> Self {
        Self {
            server: c.server.to_string(),
            server_id: c.server_id.to_string(),
            cid: c.cid,
            account: c.account.to_string(),
            account_name: c.account_name.as_ref().map(String::from),
            user: c.user.to_string(),
            user_name: c.user_name.as_ref().map(String::from),
            name: c.name.to_string(),
            ip: c.ip.to_string(),
            idle: c.idle,
            age: c
                .start
                .and_then(|s| (Stamp::of(now) - s).to_std().ok())
                .unwrap_or_default(),
            user_connections,
            threshold,
            pattern: None,
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
    account_name: &Option<impl AsRef<str>>,
    user: &str,
    user_name: &Option<impl AsRef<str>>,
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
    account_name: &Option<impl AsRef<str>>,
    user: &str,
    user_name: &Option<impl AsRef<str>>,
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
    /// `detect.used_once_within`: the census's leak signature, applied with `kick.min_idle`.
    pub used_once_within: Duration,
}

/// The connections to kick after a sweep: none unless the sweep is complete; else the leak
/// suspects ([`classify`]: `zero_msgs` or `used_once`) idle at least `kick.min_idle` and older
/// than `kick.min_age`, of users over their threshold, longest idle first, within the caps;
/// never one a KICK was already planned for ([`Kicked::intents`]).
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
        used_once_within,
    } = *inputs;
    let sig = Signature {
        min_idle: cfg.min_idle,
        used_once_within,
    };
    if !complete {
        return Vec::new();
    }
    // Only the connections of users over their threshold are looked at (often none).
    let mut by_user: HashMap<(&str, &str), Vec<&Connection>> = census
        .users
        .iter()
        .filter(|u| u.over_threshold && !u.system)
        .map(|u| ((u.account.as_str(), u.user.as_str()), Vec::new()))
        .collect();
    if by_user.is_empty() {
        return Vec::new();
    }
    for c in connections {
        if let Some(mine) = by_user.get_mut(&(c.account.as_str(), c.user.as_str())) {
            mine.push(c);
        }
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
        let mine = by_user
            .get(&(u.account.as_str(), u.user.as_str()))
            .into_iter()
            .flatten()
            .copied();
        let mut candidates: Vec<(&Connection, LeakPattern)> = classify(mine, &sig)
            .into_iter()
            .filter(|(c, _)| refusal(c, cfg, system_account, own).is_none())
            .filter(|(c, _)| !kicked.intended(&c.server_id, c.cid))
            .filter(|(c, _)| {
                !kicked.given_up(
                    &client_key(&c.account, &c.user, &c.name, &c.ip),
                    cfg.max_attempts,
                )
            })
            .filter(|(c, _)| {
                c.start
                    .and_then(|s| (Stamp::of(now) - s).to_std().ok())
                    .is_some_and(|age| age >= cfg.min_age)
            })
            .collect();
        candidates.sort_by(|a, b| b.0.idle.cmp(&a.0.idle).then(a.0.cid.cmp(&b.0.cid)));
        let room = cfg.max_per_sweep - out.len();
        for (c, pattern) in candidates.into_iter().take(cfg.max_per_user.min(room)) {
            out.push(KickPlan {
                pattern: Some(pattern),
                ..KickPlan::of(c, now, u.connections, u.threshold)
            });
        }
    }
    out
}
