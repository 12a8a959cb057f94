//! Refused connections, as the servers' events report them: a client closed because its
//! account is at its connection limit (`Maximum Account Connections Exceeded`), because its
//! server is at `max_connections` (`Maximum Connections Exceeded`), or because it failed to
//! authenticate (`$SYS.SERVER.<id>.CLIENT.AUTH.ERR`). Plain data: the live task records each
//! refusal; every round asks for the findings of the last window.
//!
//! A scope (an account, or a server) fires with its first limit refusal, or once
//! [`AUTH_FLOOD_MIN`] authentication failures fall in one window (a mistyped password is no
//! outage); it keeps firing while refusals continue, and resolves once a whole window passed
//! without one ([`Refusals::expire`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The close reason of a client over its account's connection limit.
pub const ACCOUNT_LIMIT: &str = "Maximum Account Connections Exceeded";
/// The close reason of a client over its server's `max_connections`.
pub const SERVER_LIMIT: &str = "Maximum Connections Exceeded";
/// Authentication failures in one window before they make a finding.
pub const AUTH_FLOOD_MIN: u64 = 10;
/// Entries kept in a finding's `users` and `ips` (the first seen); `users_more` and
/// `ips_more` count the refusals of the others.
pub const MAX_LISTED: usize = 20;

/// Why a connection was refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RefusedReason {
    /// The account is at its connection limit.
    AccountLimit,
    /// The server is at its `max_connections`.
    ServerLimit,
    /// The client failed to authenticate.
    Auth,
}

impl RefusedReason {
    /// Its name in metrics and advisories.
    pub fn name(self) -> &'static str {
        match self {
            Self::AccountLimit => "account_limit",
            Self::ServerLimit => "server_limit",
            Self::Auth => "auth",
        }
    }

    /// The limit reason of a disconnect event's close reason; `None` for any other.
    pub fn of_disconnect(reason: &str) -> Option<Self> {
        match reason {
            ACCOUNT_LIMIT => Some(Self::AccountLimit),
            SERVER_LIMIT => Some(Self::ServerLimit),
            _ => None,
        }
    }
}

/// What a refused connection's finding is about.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RefusedScope {
    /// An account: its connection limit, or authentication failures of its users.
    Account,
    /// A server: its `max_connections`, or authentication failures with no account known.
    Server,
}

/// One refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusedReason,
    /// The account, when the server knew it (never for `server_limit`).
    pub account: Option<String>,
    /// The account's human name (operator mode).
    pub account_name: Option<String>,
    /// The server that refused it (name).
    pub server: String,
    /// The user it tried to connect as (may be empty).
    pub user: String,
    /// Its IP.
    pub ip: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Refusal {
    /// The finding it counts toward: its account for an account limit, or an authentication
    /// failure whose account is known; its server otherwise.
    fn scope(&self) -> (RefusedScope, String) {
        match (&self.reason, &self.account) {
            (RefusedReason::ServerLimit, _) | (_, None) => {
                (RefusedScope::Server, self.server.clone())
            }
            (_, Some(a)) => (RefusedScope::Account, a.clone()),
        }
    }
}

/// `connections_refused`: connections an account or a server refused in the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RefusedFinding {
    /// `account` or `server`.
    pub scope: RefusedScope,
    /// The account or server name (the subject token).
    pub name: String,
    /// The account's human name; present only when the server gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// Connections refused in the last `window_secs`.
    pub refused: u64,
    /// The window (`live.refused_window`), in seconds.
    pub window_secs: u64,
    /// Connections refused since the refusals began (the finding fired), by reason.
    pub by_reason: BTreeMap<RefusedReason, u64>,
    /// Refusals since they began, by the user the clients tried (an empty user is `""`); the
    /// first [`MAX_LISTED`] users seen.
    pub users: BTreeMap<String, u64>,
    /// Refusals of users beyond the listed ones.
    pub users_more: u64,
    /// Refusals since they began, by client IP; the first [`MAX_LISTED`] IPs seen.
    pub ips: BTreeMap<String, u64>,
    /// Refusals from IPs beyond the listed ones.
    pub ips_more: u64,
    /// Servers that refused, with how many.
    pub servers: BTreeMap<String, u64>,
    /// The first refusal (UTC).
    pub first: DateTime<Utc>,
    /// The last refusal (UTC).
    pub last: DateTime<Utc>,
}

/// A bounded count by name: the first [`MAX_LISTED`] names, and how many went to others.
fn count_bounded(map: &mut BTreeMap<String, u64>, more: &mut u64, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < MAX_LISTED {
        map.insert(key.to_string(), 1);
    } else {
        *more += 1;
    }
}

/// One scope's refusals: per-second counts in the window (bounded by its length in seconds),
/// and the totals since they began.
#[derive(Debug, Clone)]
struct Episode {
    /// (unix second, refusals, of which authentication failures).
    seconds: VecDeque<(i64, u64, u64)>,
    finding: RefusedFinding,
}

impl Episode {
    /// Refusals, and authentication failures among them, in the window ending at `now`, at
    /// one-second resolution (the second the window begins in counts whole).
    fn in_window(&self, now: DateTime<Utc>, window: Duration) -> (u64, u64) {
        let from = now.timestamp() - window.as_secs() as i64;
        self.seconds
            .iter()
            .filter(|(s, _, _)| *s >= from)
            .fold((0, 0), |(n, a), (_, k, x)| (n + k, a + x))
    }

    /// Whether the last refusal is less than a window old (to the nanosecond).
    fn recent(&self, now: DateTime<Utc>, window: Duration) -> bool {
        (now - self.finding.last)
            .to_std()
            .map_or(true, |age| age < window)
    }
}

/// Refusals by scope (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    episodes: HashMap<(RefusedScope, String), Episode>,
    window: Duration,
}

impl Refusals {
    /// Refusals counted over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            episodes: HashMap::new(),
            window: window.max(Duration::from_secs(1)),
        }
    }

    /// Records one refusal.
    pub fn record(&mut self, r: &Refusal) {
        let (scope, name) = r.scope();
        let window = self.window;
        let e = self
            .episodes
            .entry((scope.clone(), name.clone()))
            .or_insert_with(|| Episode {
                seconds: VecDeque::new(),
                finding: RefusedFinding {
                    scope,
                    name,
                    account_name: None,
                    refused: 0,
                    window_secs: window.as_secs(),
                    by_reason: BTreeMap::new(),
                    users: BTreeMap::new(),
                    users_more: 0,
                    ips: BTreeMap::new(),
                    ips_more: 0,
                    servers: BTreeMap::new(),
                    first: r.at,
                    last: r.at,
                },
            });
        let sec = r.at.timestamp();
        let auth = u64::from(r.reason == RefusedReason::Auth);
        match e.seconds.back_mut() {
            Some((s, n, a)) if *s == sec => {
                *n += 1;
                *a += auth;
            }
            _ => e.seconds.push_back((sec, 1, auth)),
        }
        while e
            .seconds
            .front()
            .is_some_and(|(s, _, _)| *s < sec - window.as_secs() as i64)
        {
            e.seconds.pop_front();
        }
        let f = &mut e.finding;
        if f.account_name.is_none() {
            f.account_name = r.account_name.clone().filter(|n| !n.is_empty());
        }
        *f.by_reason.entry(r.reason).or_default() += 1;
        count_bounded(&mut f.users, &mut f.users_more, &r.user);
        count_bounded(&mut f.ips, &mut f.ips_more, &r.ip);
        *f.servers.entry(r.server.clone()).or_default() += 1;
        f.first = f.first.min(r.at);
        f.last = f.last.max(r.at);
    }

    /// Forgets the scopes with no refusal in the last window (their findings resolve);
    /// returns whether any was forgotten.
    pub fn expire(&mut self, now: DateTime<Utc>) -> bool {
        let before = self.episodes.len();
        let window = self.window;
        self.episodes.retain(|_, e| e.recent(now, window));
        self.episodes.len() != before
    }

    /// The findings at `now`: every scope with a limit refusal in the window, or at least
    /// [`AUTH_FLOOD_MIN`] authentication failures in it; sorted by scope and name.
    pub fn findings(&self, now: DateTime<Utc>) -> Vec<RefusedFinding> {
        let mut out: Vec<RefusedFinding> = self
            .episodes
            .values()
            .filter(|e| e.recent(now, self.window))
            .filter_map(|e| {
                let (n, auth) = e.in_window(now, self.window);
                (n > auth || auth >= AUTH_FLOOD_MIN).then(|| RefusedFinding {
                    refused: n,
                    ..e.finding.clone()
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.scope, &a.name).cmp(&(&b.scope, &b.name)));
        out
    }

    /// Scopes followed now (memory held).
    pub fn len(&self) -> usize {
        self.episodes.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn refusal(reason: RefusedReason, account: Option<&str>, user: &str, s: i64) -> Refusal {
        Refusal {
            reason,
            account: account.map(str::to_string),
            account_name: None,
            server: "n1".into(),
            user: user.into(),
            ip: "10.0.0.1".into(),
            at: t(s),
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn an_account_limit_refusal_fires_at_once_and_counts_the_window() {
        let mut r = Refusals::new(MINUTE);
        r.record(&refusal(RefusedReason::AccountLimit, Some("APP"), "a", 0));
        r.record(&refusal(RefusedReason::AccountLimit, Some("APP"), "b", 30));
        r.record(&refusal(RefusedReason::AccountLimit, Some("APP"), "a", 59));
        let f = r.findings(t(59));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].scope.clone(), f[0].name.as_str()),
            (RefusedScope::Account, "APP")
        );
        assert_eq!(f[0].refused, 3);
        assert_eq!(
            f[0].users,
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
        );
        assert_eq!(f[0].ips["10.0.0.1"], 3);
        assert_eq!(f[0].by_reason[&RefusedReason::AccountLimit], 3);
        assert_eq!((f[0].first, f[0].last), (t(0), t(59)));
        // The first refusal left the window: the count is of the window, the totals are not.
        let f = r.findings(t(62));
        assert_eq!(f[0].refused, 2);
        assert_eq!(f[0].by_reason[&RefusedReason::AccountLimit], 3);
    }

    #[test]
    fn a_quiet_window_expires_the_scope() {
        let mut r = Refusals::new(MINUTE);
        r.record(&refusal(RefusedReason::AccountLimit, Some("APP"), "a", 0));
        assert!(!r.expire(t(59)));
        assert_eq!(r.findings(t(59)).len(), 1);
        assert!(r.expire(t(60)));
        assert!(r.findings(t(60)).is_empty());
        assert!(r.is_empty());
        // Refusals again: a new episode, counted from scratch.
        r.record(&refusal(RefusedReason::AccountLimit, Some("APP"), "c", 100));
        let f = r.findings(t(100));
        assert_eq!((f[0].refused, f[0].first), (1, t(100)));
        assert_eq!(f[0].users.len(), 1);
    }

    #[test]
    fn server_limits_and_auth_failures_without_an_account_are_per_server() {
        let mut r = Refusals::new(MINUTE);
        r.record(&refusal(RefusedReason::ServerLimit, Some("APP"), "a", 0));
        for i in 0..3 {
            r.record(&refusal(RefusedReason::Auth, None, "x", i));
        }
        let f = r.findings(t(3));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].scope.clone(), f[0].name.as_str()),
            (RefusedScope::Server, "n1")
        );
        assert_eq!(f[0].refused, 4);
        assert_eq!(f[0].by_reason[&RefusedReason::Auth], 3);
    }

    #[test]
    fn a_few_auth_failures_are_no_finding_a_flood_is() {
        let mut r = Refusals::new(MINUTE);
        for i in 0..AUTH_FLOOD_MIN - 1 {
            r.record(&refusal(RefusedReason::Auth, Some("APP"), "typo", i as i64));
        }
        assert!(r.findings(t(10)).is_empty());
        r.record(&refusal(RefusedReason::Auth, Some("APP"), "typo", 10));
        let f = r.findings(t(10));
        assert_eq!(
            (f[0].scope.clone(), f[0].refused),
            (RefusedScope::Account, AUTH_FLOOD_MIN)
        );
    }

    #[test]
    fn the_lists_and_the_window_are_bounded() {
        let mut r = Refusals::new(Duration::from_secs(5));
        for i in 0..1000 {
            let mut x = refusal(
                RefusedReason::AccountLimit,
                Some("APP"),
                &format!("u{i}"),
                i,
            );
            x.ip = format!("10.0.{}.{}", i / 250, i % 250);
            r.record(&x);
        }
        let e = r.episodes.values().next().unwrap();
        assert!(e.seconds.len() <= 6);
        let f = r.findings(t(999));
        assert_eq!(
            f[0].refused, 6,
            "five seconds, and the one the window begins in"
        );
        assert_eq!(
            (f[0].users.len(), f[0].users_more),
            (MAX_LISTED, 1000 - MAX_LISTED as u64)
        );
        assert_eq!(
            (f[0].ips.len(), f[0].ips_more),
            (MAX_LISTED, 1000 - MAX_LISTED as u64)
        );
    }
}
