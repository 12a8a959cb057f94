//! `[enforce]`: per-user connection caps, enforced from the live census.

use serde::{Deserialize, Serialize};

use super::{de_opt_stringish, de_stringish};

/// `[enforce]`: a cap on each user's connections, cluster-wide. A user over its cap in a
/// complete live view has its newest connections beyond the cap closed (`KICK`), within a
/// second of the connection that crossed it. Never the system account, connwatch's own
/// connection, leafnodes, or users kept from kicks by `kick.protect` (or left out of
/// `kick.only`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// Enforce caps at all. Off by default; needs the live census (`live.enabled`).
    pub enabled: bool,
    /// Decide and announce each enforcement (`connection_cap_enforced`), but close nothing.
    /// On by default: set it to false to act.
    pub dry_run: bool,
    /// The cap of a user without a `[[enforce.caps]]` entry; 0: no cap.
    pub max_connections_per_user: u64,
    /// Connections closed by caps per second, at most, over all users (a token bucket holding
    /// one second's worth): a reconnect storm cannot turn connwatch into one.
    pub max_kicks_per_sec: u32,
    /// Caps for particular accounts or users; a user entry beats an account entry.
    pub caps: Vec<CapRule>,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: true,
            max_connections_per_user: 0,
            max_kicks_per_sec: 100,
            caps: Vec::new(),
        }
    }
}

/// `[[enforce.caps]]`: a cap for one account's users, or one user of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapRule {
    /// Account name or public key (`A...`).
    #[serde(deserialize_with = "de_stringish")]
    pub account: String,
    /// User name or public key (`U...`); absent means every user of the account.
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub user: Option<String>,
    /// The most connections each matching user may hold, cluster-wide (at least 1).
    pub max_connections: u64,
}

/// The checks of `[enforce]` beyond its types: `(key, message)` for each problem.
pub(super) fn problems(c: &super::Config) -> Vec<(String, String)> {
    let e = &c.enforce;
    let mut out = Vec::new();
    if e.max_kicks_per_sec == 0 {
        out.push((
            "enforce.max_kicks_per_sec".into(),
            "must be at least 1".into(),
        ));
    }
    for (i, cap) in e.caps.iter().enumerate() {
        if cap.account.is_empty() {
            out.push((
                format!("enforce.caps.{i}.account"),
                "must not be empty".into(),
            ));
        }
        if cap.max_connections == 0 {
            out.push((
                format!("enforce.caps.{i}.max_connections"),
                "must be at least 1 (to keep a user out altogether, revoke its credentials)".into(),
            ));
        }
    }
    if e.enabled && !c.live.enabled {
        out.push((
            "enforce.enabled".into(),
            "caps are enforced from the live census: set `live.enabled = true`".into(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_need_the_live_census_and_a_cap_of_at_least_one() {
        let mut c = super::super::Config::default();
        assert!(problems(&c).is_empty());
        c.enforce.enabled = true;
        c.live.enabled = false;
        c.enforce.max_kicks_per_sec = 0;
        c.enforce.caps.push(CapRule {
            account: "APP".into(),
            user: None,
            max_connections: 0,
        });
        let keys: Vec<String> = problems(&c).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                "enforce.max_kicks_per_sec",
                "enforce.caps.0.max_connections",
                "enforce.enabled"
            ]
        );
    }
}
