//! Churn per user from the connect and disconnect events: connections opened and closed in
//! the last minute, and how many of those closed lived less than [`SHORT_LIVED`]. It feeds the
//! `reconnect_loop` diagnosis instead of reading each user's closed connections from every
//! server. Plain data, bounded: per user at most [`BUCKETS`] time buckets of a few counters,
//! and at most [`MAX_USERS`] users (those quiet the longest are let go first).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Live;
use crate::nats::events::ClientEvent;
use crate::rules::diagnosis::{Churn, TopReason};

/// The window churn is counted over: connects per minute.
pub const WINDOW: Duration = Duration::from_secs(60);
/// A connection closed younger than this is short-lived (a reconnect loop's, typically).
pub const SHORT_LIVED: Duration = Duration::from_secs(5);
/// Buckets per window (5 s each).
pub const BUCKETS: i64 = 12;
/// Users followed at most.
pub const MAX_USERS: usize = 10_000;
/// Close reasons kept per bucket; the rest are counted under none.
const MAX_REASONS: usize = 4;

const BUCKET_SECS: i64 = WINDOW.as_secs() as i64 / BUCKETS;

/// Whether the events of `account` reach the live census. A name with dots (`team.a`, allowed
/// in config mode) is followed: its events are told apart by their payload
/// ([`super::event_of`]). A name with whitespace or wildcards makes no valid subject (its
/// event's protocol line splits at the space: on 2.15.1 a subscriber to `$SYS.ACCOUNT.>` was
/// seen to lose its connection when such a user connects; `$SYS.ACCOUNT.*.*` and the counts'
/// `$SYS.SERVER.ACCOUNT.>`, which connwatch subscribes to now, match such subjects too): its
/// churn is read from the servers' closed connections instead.
pub fn followed(account: &str) -> bool {
    !account.is_empty()
        && !account
            .bytes()
            .any(|b| b == b'*' || b == b'>' || b.is_ascii_whitespace())
}

/// (account, user), as the census keys users.
pub type UserKey = (String, String);

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Unix second / [`BUCKET_SECS`].
    slot: i64,
    connects: u64,
    closed: u64,
    short_lived: u64,
    reasons: Vec<(String, u64)>,
}

/// Churn per user (see the module docs).
#[derive(Debug, Default)]
pub struct ChurnTracker {
    users: HashMap<UserKey, VecDeque<Bucket>>,
}

impl ChurnTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn bucket(&mut self, user: UserKey, at: DateTime<Utc>) -> &mut Bucket {
        let slot = at.timestamp().div_euclid(BUCKET_SECS);
        if !self.users.contains_key(&user) && self.users.len() >= MAX_USERS {
            self.make_room(slot);
        }
        let buckets = self.users.entry(user).or_default();
        while buckets.front().is_some_and(|b| b.slot <= slot - BUCKETS) {
            buckets.pop_front();
        }
        if buckets.back().is_none_or(|b| b.slot < slot) {
            buckets.push_back(Bucket {
                slot,
                ..Bucket::default()
            });
        }
        // Events arrive in order per server; a late one from another server counts in the
        // newest bucket.
        buckets.back_mut().expect("just pushed")
    }

    /// Lets go of users with nothing in the window, then of the one quiet the longest.
    fn make_room(&mut self, slot: i64) {
        self.users
            .retain(|_, b| b.back().is_some_and(|b| b.slot > slot - BUCKETS));
        if self.users.len() >= MAX_USERS {
            if let Some(oldest) = self
                .users
                .iter()
                .min_by_key(|(_, b)| b.back().map_or(i64::MIN, |b| b.slot))
                .map(|(k, _)| k.clone())
            {
                self.users.remove(&oldest);
            }
        }
    }

    /// A connection of `user` opened at `at`.
    pub fn connect(&mut self, user: UserKey, at: DateTime<Utc>) {
        self.bucket(user, at).connects += 1;
    }

    /// A connection of `user` closed at `at` after `lived` (when known), for `reason`.
    pub fn disconnect(
        &mut self,
        user: UserKey,
        at: DateTime<Utc>,
        lived: Option<Duration>,
        reason: &str,
    ) {
        let b = self.bucket(user, at);
        b.closed += 1;
        if lived.is_some_and(|l| l < SHORT_LIVED) {
            b.short_lived += 1;
        }
        if let Some(r) = b.reasons.iter_mut().find(|(r, _)| r == reason) {
            r.1 += 1;
        } else if b.reasons.len() < MAX_REASONS {
            b.reasons.push((reason.to_string(), 1));
        }
    }

    /// The churn of every user with something in the window ending at `now`.
    pub fn all(&self, now: DateTime<Utc>) -> HashMap<UserKey, Churn> {
        self.users
            .iter()
            .filter_map(|(k, b)| Some((k.clone(), churn_of(b, now)?)))
            .collect()
    }

    /// Users followed (memory held).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Live {
    /// Counts a connect or disconnect event in its user's churn, at `now` (when it arrived).
    pub(super) fn churned(&self, event: &ClientEvent, closed: bool, now: DateTime<Utc>) {
        let mut churn = self.churn.lock().expect("churn lock");
        if closed {
            churn.disconnect(
                event.user_key(),
                now,
                event.lived(),
                event.reason.as_deref().unwrap_or_default(),
            );
        } else {
            churn.connect(event.user_key(), now);
        }
    }
}

fn churn_of(buckets: &VecDeque<Bucket>, now: DateTime<Utc>) -> Option<Churn> {
    let slot = now.timestamp().div_euclid(BUCKET_SECS);
    let mut c = Churn {
        window_secs: WINDOW.as_secs(),
        connects: Some(0),
        short_lived: Some(0),
        ..Churn::default()
    };
    let mut reasons: Vec<(&str, u64)> = Vec::new();
    let mut any = false;
    for b in buckets.iter().filter(|b| b.slot > slot - BUCKETS) {
        any = true;
        c.closed += b.closed;
        *c.connects.as_mut().expect("set") += b.connects;
        *c.short_lived.as_mut().expect("set") += b.short_lived;
        for (r, n) in &b.reasons {
            match reasons.iter_mut().find(|(x, _)| x == r) {
                Some(x) => x.1 += n,
                None => reasons.push((r, *n)),
            }
        }
    }
    c.top_reason = reasons
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(reason, count)| TopReason {
            reason: reason.to_string(),
            count,
        });
    any.then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn u(name: &str) -> UserKey {
        ("APP".into(), name.into())
    }

    #[test]
    fn a_reconnect_loop_shows_connects_closes_and_short_lived_ones() {
        let mut c = ChurnTracker::new();
        for i in 0..30 {
            c.connect(u("loopy"), t(i));
            c.disconnect(
                u("loopy"),
                t(i),
                Some(Duration::from_millis(300)),
                "Client Closed",
            );
        }
        c.disconnect(
            u("loopy"),
            t(30),
            Some(Duration::from_secs(600)),
            "Stale Connection",
        );
        let all = c.all(t(30));
        let churn = &all[&u("loopy")];
        assert_eq!(churn.connects, Some(30));
        assert_eq!(churn.closed, 31);
        assert_eq!(churn.short_lived, Some(30));
        assert_eq!(churn.window_secs, 60);
        assert_eq!(
            churn.top_reason,
            Some(TopReason {
                reason: "Client Closed".into(),
                count: 30
            })
        );
    }

    #[test]
    fn only_the_last_minute_counts() {
        let mut c = ChurnTracker::new();
        c.connect(u("a"), t(0));
        c.connect(u("a"), t(50));
        assert_eq!(c.all(t(55))[&u("a")].connects, Some(2));
        assert_eq!(c.all(t(65))[&u("a")].connects, Some(1));
        assert!(c.all(t(200)).is_empty());
        // Unknown lifetimes are not short-lived.
        c.disconnect(u("a"), t(200), None, "Client Closed");
        assert_eq!(c.all(t(200))[&u("a")].short_lived, Some(0));
    }

    #[test]
    fn accounts_that_make_valid_subjects_are_followed() {
        assert!(followed("APP"));
        assert!(followed("ACWXYZ"));
        assert!(followed("team.a"));
        assert!(!followed("team.*"));
        assert!(!followed("team.a b"));
        assert!(!followed("a b"));
        assert!(!followed(""));
    }

    #[test]
    fn memory_is_bounded() {
        let mut c = ChurnTracker::new();
        for i in 0..(MAX_USERS as i64 + 500) {
            c.connect(u(&format!("u{i}")), t(i / 100));
        }
        assert!(c.len() <= MAX_USERS);
        // The newest users are kept.
        assert!(c
            .all(t(110))
            .contains_key(&u(&format!("u{}", MAX_USERS + 499))));
        for i in 0..10_000 {
            c.connect(u("busy"), t(i));
            c.disconnect(u("busy"), t(i), None, &format!("reason {i}"));
        }
        assert!(c.users[&u("busy")].len() <= BUCKETS as usize);
        assert!(c.users[&u("busy")]
            .iter()
            .all(|b| b.reasons.len() <= MAX_REASONS));
    }
}
