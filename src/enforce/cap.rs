//! Which cap applies to a user, and which of its connections are beyond it. Pure.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{names_match, EnforceConfig, KickConfig};
use crate::kick::{policy_refusal, Own};
use crate::snapshot::Connection;
use crate::stamp::Stamp;

/// A user's key: (account, user).
pub type UserKey = (String, String);

/// Connections by user, borrowed from a view: (account, user) → its connections.
pub type Users<'a> = HashMap<(&'a str, &'a str), Vec<&'a Connection>>;

/// Where a user's cap comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CapSource {
    /// An `[[enforce.caps]]` entry naming the user.
    User,
    /// An `[[enforce.caps]]` entry for the whole account.
    Account,
    /// `enforce.max_connections_per_user`.
    Default,
}

impl CapSource {
    /// Its name in the advisory and the report: `user`, `account` or `default`.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Account => "account",
            Self::Default => "default",
        }
    }
}

/// The cap that applies to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The most connections the user may hold, cluster-wide.
    pub max: u64,
    /// Where it comes from.
    pub source: CapSource,
}

/// The cap of a user: a user entry, else an account entry, else the default; `None` when no
/// cap applies (no entry, and `max_connections_per_user` is 0). Accounts and users match by
/// key or human name, as `detect.overrides` do.
pub fn cap_for(
    cfg: &EnforceConfig,
    account: &str,
    account_name: &Option<impl AsRef<str>>,
    user: &str,
    user_name: &Option<impl AsRef<str>>,
) -> Option<Cap> {
    let for_account = || {
        cfg.caps
            .iter()
            .filter(|c| names_match(&c.account, account, account_name))
    };
    let user_entry = for_account().find(|c| {
        c.user
            .as_deref()
            .is_some_and(|want| names_match(want, user, user_name))
    });
    if let Some(c) = user_entry {
        return Some(Cap {
            max: c.max_connections,
            source: CapSource::User,
        });
    }
    if let Some(c) = for_account().find(|c| c.user.is_none()) {
        return Some(Cap {
            max: c.max_connections,
            source: CapSource::Account,
        });
    }
    (cfg.max_connections_per_user > 0).then_some(Cap {
        max: cfg.max_connections_per_user,
        source: CapSource::Default,
    })
}

/// What must never be closed, whatever the cap.
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    /// The system account: never capped.
    pub system_account: Option<&'a str>,
    /// connwatch's own connection: never closed.
    pub own: Option<&'a Own>,
    /// `kick.protect` and `kick.only` apply to caps too.
    pub kick: &'a KickConfig,
}

/// What a cap means for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No cap applies, or the user is at or under it.
    Within,
    /// The user is never capped (system account, `kick.protect`, `kick.only`): why.
    Exempt(&'static str),
    /// Over the cap, but connwatch cannot tell which connections are the newest: why.
    Held(String),
    /// Over the cap: these connections, newest last, are beyond it.
    Close(Vec<&'a Connection>),
}

/// The order of "newest": start time, then server id, then cid, so two views of the same
/// connections always agree on which are beyond the cap.
fn order_key(c: &Connection) -> (Stamp, &str, u64) {
    (c.start.unwrap_or_default(), c.server_id.as_str(), c.cid)
}

/// The connections of one user to close under `cap`: those beyond the `cap` oldest, ordered
/// by (start, server id, cid). `conns` are the user's client connections (leafnodes are
/// neither counted nor closed: NATS limits them apart, with `leaf`). connwatch's own
/// connection is never closed and not counted.
pub fn beyond_cap<'a>(conns: &[&'a Connection], cap: u64, guard: &Guard) -> Verdict<'a> {
    let Some(first) = conns.first() else {
        return Verdict::Within;
    };
    if guard.system_account == Some(first.account.as_str()) {
        return Verdict::Exempt("the system account is never capped");
    }
    if let Some(why) = policy_refusal(
        guard.kick,
        &first.account,
        &first.account_name,
        &first.user,
        &first.user_name,
    ) {
        return Verdict::Exempt(why);
    }
    let mut mine: Vec<&Connection> = conns
        .iter()
        .copied()
        .filter(|c| c.kind != "Leafnode")
        .filter(|c| {
            !guard
                .own
                .is_some_and(|o| o.server_id == c.server_id && o.cid == c.cid)
        })
        .collect();
    if mine.len() as u64 <= cap {
        return Verdict::Within;
    }
    if let Some(c) = mine.iter().find(|c| c.start.is_none()) {
        return Verdict::Held(format!(
            "the start time of connection {} on {} is unknown, so the newest cannot be told",
            c.cid, c.server
        ));
    }
    mine.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    Verdict::Close(mine.split_off(cap as usize))
}

/// The connections grouped by user, leafnodes left out (see [`beyond_cap`]).
pub fn by_user<'a>(conns: impl IntoIterator<Item = &'a Connection>) -> Users<'a> {
    let mut out: Users = HashMap::new();
    for c in conns {
        if c.kind == "Leafnode" {
            continue;
        }
        out.entry((c.account.as_str(), c.user.as_str()))
            .or_default()
            .push(c);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{CapRule, UserMatch};
    use chrono::{TimeZone, Utc};

    /// A client connection of `APP/u` on `server`, started `start_ms` after the epoch.
    pub(crate) fn conn(server: &str, cid: u64, start_ms: i64) -> Connection {
        Connection {
            server: server.into(),
            server_id: format!("ID-{server}").into(),
            cid,
            kind: "Client".into(),
            start: Some(Stamp::of(Utc.timestamp_millis_opt(start_ms).unwrap())),
            account: "APP".into(),
            user: "u".into(),
            ..Connection::default()
        }
    }

    fn guard(kick: &KickConfig) -> Guard<'_> {
        Guard {
            system_account: Some("SYS"),
            own: None,
            kick,
        }
    }

    fn cids(v: Verdict) -> Vec<(String, u64)> {
        match v {
            Verdict::Close(c) => c.iter().map(|c| (c.server.to_string(), c.cid)).collect(),
            other => panic!("not a close: {other:?}"),
        }
    }

    #[test]
    fn a_user_entry_beats_an_account_entry_which_beats_the_default() {
        let rule = |user: Option<&str>, max| CapRule {
            account: "APP".into(),
            user: user.map(str::to_string),
            max_connections: max,
        };
        let mut cfg = EnforceConfig {
            caps: vec![rule(None, 20), rule(Some("alice"), 5)],
            ..EnforceConfig::default()
        };
        let none = &None::<String>;
        let cap = |cfg: &EnforceConfig, acc, user| cap_for(cfg, acc, none, user, none);
        assert_eq!(
            cap(&cfg, "APP", "alice"),
            Some(Cap {
                max: 5,
                source: CapSource::User
            })
        );
        assert_eq!(cap(&cfg, "APP", "bob").unwrap().source, CapSource::Account);
        assert_eq!(cap(&cfg, "OTHER", "bob"), None, "default 0: no cap");
        cfg.max_connections_per_user = 100;
        assert_eq!(
            cap(&cfg, "OTHER", "bob"),
            Some(Cap {
                max: 100,
                source: CapSource::Default
            })
        );
        // Human names match as well as keys.
        let (acc_name, user_name) = (Some("APP".to_string()), Some("alice".to_string()));
        assert_eq!(
            cap_for(&cfg, "AKEY", &acc_name, "UKEY", &user_name).map(|c| c.max),
            Some(5)
        );
    }

    #[test]
    fn the_newest_beyond_the_cap_are_closed_ordered_by_start_then_server_id_then_cid() {
        let kick = KickConfig::default();
        // Two connections at the same instant on different servers: server id decides; on the
        // same server, cid.
        let conns = [
            conn("n3", 1, 1_000),
            conn("n1", 9, 3_000),
            conn("n2", 4, 3_000),
            conn("n1", 2, 2_000),
            conn("n1", 10, 3_000),
        ];
        let refs: Vec<&Connection> = conns.iter().collect();
        assert_eq!(
            cids(beyond_cap(&refs, 2, &guard(&kick))),
            vec![("n1".into(), 9), ("n1".into(), 10), ("n2".into(), 4)]
        );
        // Any input order gives the same answer.
        let mut rev = refs.clone();
        rev.reverse();
        assert_eq!(
            cids(beyond_cap(&rev, 2, &guard(&kick))),
            cids(beyond_cap(&refs, 2, &guard(&kick)))
        );
        assert_eq!(beyond_cap(&refs, 5, &guard(&kick)), Verdict::Within);
    }

    #[test]
    fn leafnodes_and_connwatchs_own_connection_are_neither_counted_nor_closed() {
        let kick = KickConfig::default();
        let mut leaf = conn("n1", 3, 5_000);
        leaf.kind = "Leafnode".into();
        let conns = [conn("n1", 1, 1_000), conn("n1", 2, 2_000), leaf];
        let refs: Vec<&Connection> = conns.iter().collect();
        assert_eq!(beyond_cap(&refs, 2, &guard(&kick)), Verdict::Within);
        let own = Own {
            server_id: "ID-n1".into(),
            cid: 2,
        };
        let g = Guard {
            own: Some(&own),
            ..guard(&kick)
        };
        assert_eq!(beyond_cap(&refs, 1, &g), Verdict::Within);
        assert_eq!(
            cids(beyond_cap(&refs, 1, &guard(&kick))),
            vec![("n1".into(), 2)]
        );
        // by_user leaves leafnodes out too.
        assert_eq!(by_user(conns.iter())[&("APP", "u")].len(), 2);
    }

    #[test]
    fn the_system_account_and_protected_users_are_exempt() {
        let mut kick = KickConfig::default();
        let mut sys = conn("n1", 1, 1_000);
        sys.account = "SYS".into();
        let sys2 = Connection {
            cid: 2,
            ..sys.clone()
        };
        assert!(matches!(
            beyond_cap(&[&sys, &sys2], 1, &guard(&kick)),
            Verdict::Exempt(_)
        ));
        let conns = [conn("n1", 1, 1_000), conn("n1", 2, 2_000)];
        let refs: Vec<&Connection> = conns.iter().collect();
        kick.protect = vec![UserMatch {
            account: "APP".into(),
            user: None,
        }];
        assert_eq!(
            beyond_cap(&refs, 1, &guard(&kick)),
            Verdict::Exempt("it is protected by kick.protect")
        );
        kick.protect.clear();
        kick.only = vec![UserMatch {
            account: "OTHER".into(),
            user: None,
        }];
        assert!(matches!(
            beyond_cap(&refs, 1, &guard(&kick)),
            Verdict::Exempt(_)
        ));
    }

    #[test]
    fn an_unknown_start_holds_the_user() {
        let kick = KickConfig::default();
        let mut unknown = conn("n1", 2, 0);
        unknown.start = None;
        let conns = [conn("n1", 1, 1_000), unknown];
        let refs: Vec<&Connection> = conns.iter().collect();
        assert!(matches!(
            beyond_cap(&refs, 1, &guard(&kick)),
            Verdict::Held(_)
        ));
        // Under the cap, an unknown start does not matter.
        assert_eq!(beyond_cap(&refs, 2, &guard(&kick)), Verdict::Within);
    }
}
