//! Enforcement over time, pure: which closes a round decides (with the rate bound and the
//! closes still in flight), and the bursts they make (one advisory per user per burst), with
//! the churn at the cap. Times are passed in, so every rule is unit tested.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::cap::{beyond_cap, cap_for, Cap, Guard, UserKey, Users, Verdict};
use crate::config::EnforceConfig;
use crate::snapshot::{Connection, Str};

/// A burst ends when no close was added to it for this long.
pub const BURST_QUIET: Duration = Duration::from_secs(1);
/// A burst ends at the latest this long after it began (a client reconnecting straight after
/// each close would otherwise keep one burst open forever).
pub const BURST_MAX: Duration = Duration::from_secs(5);
/// Churn at the cap is counted over this window.
pub const CHURN_WINDOW: Duration = Duration::from_secs(60);
/// A close sent whose connection is still in the view this long after is tried again.
const IN_FLIGHT: Duration = Duration::from_secs(5);

/// A connection's key: (server id, cid).
type ConnKey = (Str, u64);

/// The rate bound: a token bucket of `rate` tokens, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new() -> Self {
        Self {
            tokens: f64::MAX,
            at: None,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate.max(1));
        let gained = self.at.map_or(rate, |t| {
            now.saturating_duration_since(t).as_secs_f64() * rate
        });
        self.tokens = (self.tokens.min(rate) + gained).min(rate);
        self.at = Some(now);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub fn next_token(&self, rate: u32) -> Option<Instant> {
        let missing = (1.0 - self.tokens).max(0.0);
        Some(self.at? + Duration::from_secs_f64(missing / f64::from(rate.max(1))))
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

/// One close decided in a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    /// The connection.
    pub conn: Connection,
    /// The user's cap.
    pub cap: Cap,
}

/// What a round decided.
#[derive(Debug, Default)]
pub struct Decided {
    /// Connections to close now (dry run: to announce).
    pub closes: Vec<Close>,
    /// Connections beyond a cap left for a later round by `enforce.max_kicks_per_sec`.
    pub deferred: usize,
    /// Users over their cap that are not acted on, and why.
    pub held: Vec<(UserKey, String)>,
}

/// What became of a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Closed (or already gone), or, in dry run, announced.
    Closed,
    /// The KICK failed: tried again in a later round.
    Failed,
}

/// A user's burst of closes, until it is announced.
#[derive(Debug, Clone)]
struct Burst {
    first: Instant,
    last: Instant,
    started: DateTime<Utc>,
    cap: Cap,
    account_name: Option<String>,
    user_name: Option<String>,
    closed: Vec<Connection>,
    failed: u64,
}

/// A burst over: what its advisory says.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Account.
    pub account: String,
    /// Its human name, when known.
    pub account_name: Option<String>,
    /// User.
    pub user: String,
    /// Its human name, when known.
    pub user_name: Option<String>,
    /// The cap applied.
    pub cap: Cap,
    /// When the burst began.
    pub started: DateTime<Utc>,
    /// The user's connections now (dry run: as if the closes had been made).
    pub after: u64,
    /// The connections closed (dry run: that would have been), oldest first.
    pub closed: Vec<Connection>,
    /// Closes that failed (and were tried again).
    pub failed: u64,
    /// Connections the cap closed for this user within the last minute, this burst included.
    pub closed_last_minute: u64,
    /// Bursts for this user within the last minute, this one included.
    pub bursts_last_minute: u64,
}

/// The state of enforcement between rounds.
#[derive(Debug, Default)]
pub struct Enforcer {
    bucket: Bucket,
    /// Closes decided and not yet seen to go: never decided twice. In dry run they stay while
    /// the connection does (announced once).
    in_flight: HashMap<ConnKey, (UserKey, Instant)>,
    bursts: BTreeMap<UserKey, Burst>,
    /// Per user: when each close was made (within [`CHURN_WINDOW`]).
    closes: HashMap<UserKey, VecDeque<Instant>>,
    /// Per user: when each burst ended (within [`CHURN_WINDOW`]).
    ended: HashMap<UserKey, VecDeque<Instant>>,
    /// Whether the last round deferred closes (it wants another round soon).
    deferring: bool,
}

impl Enforcer {
    /// A fresh state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides a round's closes over a COMPLETE view, grouped by user ([`super::by_user`]):
    /// for each user over its cap, its connections beyond it not already in flight, within
    /// the rate bound. The caller must not call this on an incomplete view.
    pub fn decide(
        &mut self,
        users: &Users,
        cfg: &EnforceConfig,
        guard: &Guard,
        now: Instant,
    ) -> Decided {
        // Closes in flight stay while their connection is listed (dry run: for good; else
        // for IN_FLIGHT, then they are tried again).
        let flying: HashSet<&UserKey> = self.in_flight.values().map(|(u, _)| u).collect();
        let present: HashSet<(&str, u64)> = flying
            .iter()
            .filter_map(|u| users.get(&(u.0.as_str(), u.1.as_str())))
            .flatten()
            .map(|c| (c.server_id.as_str(), c.cid))
            .collect();
        self.in_flight.retain(|(sid, cid), (_, at)| {
            present.contains(&(sid.as_str(), *cid))
                && (cfg.dry_run || now.saturating_duration_since(*at) < IN_FLIGHT)
        });
        let mut out = Decided::default();
        let mut keys: Vec<&(&str, &str)> = users.keys().collect();
        keys.sort();
        for key in keys {
            let all = &users[key];
            let Some(first) = all.first() else { continue };
            let Some(cap) = cap_for(
                cfg,
                &first.account,
                &first.account_name,
                &first.user,
                &first.user_name,
            ) else {
                continue;
            };
            // Cheap first: closes in flight only lower the count.
            if all.len() as u64 <= cap.max {
                continue;
            }
            let conns: Vec<&Connection> = all
                .iter()
                .copied()
                .filter(|c| !self.in_flight.contains_key(&(c.server_id.clone(), c.cid)))
                .collect();
            let key: UserKey = (key.0.to_string(), key.1.to_string());
            match beyond_cap(&conns, cap.max, guard) {
                Verdict::Within | Verdict::Exempt(_) => {}
                Verdict::Held(why) => out.held.push((key.clone(), why)),
                Verdict::Close(beyond) => {
                    for c in beyond {
                        if !self.bucket.take(cfg.max_kicks_per_sec, now) {
                            out.deferred += 1;
                            continue;
                        }
                        self.in_flight
                            .insert((c.server_id.clone(), c.cid), (key.clone(), now));
                        out.closes.push(Close {
                            conn: c.clone(),
                            cap,
                        });
                    }
                }
            }
        }
        self.deferring = out.deferred > 0;
        out
    }

    /// Records what became of a round's closes: each closed one joins its user's burst; a
    /// failed one leaves the closes in flight, to be decided again.
    pub fn record(&mut self, done: Vec<(Close, Done)>, now: Instant, wall: DateTime<Utc>) {
        for (close, result) in done {
            let c = close.conn;
            let key = (c.account.to_string(), c.user.to_string());
            let burst = self.bursts.entry(key.clone()).or_insert_with(|| Burst {
                first: now,
                last: now,
                started: wall,
                cap: close.cap,
                account_name: c.account_name.as_ref().map(String::from),
                user_name: c.user_name.as_ref().map(String::from),
                closed: Vec::new(),
                failed: 0,
            });
            burst.last = now;
            burst.cap = close.cap;
            match result {
                Done::Failed => {
                    burst.failed += 1;
                    self.in_flight.remove(&(c.server_id.clone(), c.cid));
                }
                Done::Closed => {
                    self.closes.entry(key).or_default().push_back(now);
                    burst.closed.push(c);
                }
            }
        }
    }

    /// The bursts that are over ([`BURST_QUIET`] without a close, or [`BURST_MAX`] long), with
    /// the churn of their users; `users` are the view's connections now ([`super::by_user`]).
    pub fn finish(&mut self, users: &Users, now: Instant) -> Vec<Finished> {
        for q in self.closes.values_mut().chain(self.ended.values_mut()) {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= CHURN_WINDOW)
            {
                q.pop_front();
            }
        }
        self.closes.retain(|_, q| !q.is_empty());
        self.ended.retain(|_, q| !q.is_empty());
        let over: Vec<UserKey> = self
            .bursts
            .iter()
            .filter(|(_, b)| {
                now.saturating_duration_since(b.last) >= BURST_QUIET
                    || now.saturating_duration_since(b.first) >= BURST_MAX
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in over {
            let mut b = self.bursts.remove(&key).expect("listed above");
            if b.closed.is_empty() {
                continue;
            }
            let ended = self.ended.entry(key.clone()).or_default();
            ended.push_back(now);
            let bursts_last_minute = ended.len() as u64;
            // Those still in flight (dry run: all of them) count as closed.
            let after = users.get(&(key.0.as_str(), key.1.as_str())).map_or(0, |v| {
                v.iter()
                    .filter(|c| !self.in_flight.contains_key(&(c.server_id.clone(), c.cid)))
                    .count() as u64
            });
            b.closed.sort_by(|x, y| {
                (x.start, &x.server_id, x.cid).cmp(&(y.start, &y.server_id, y.cid))
            });
            out.push(Finished {
                after,
                closed_last_minute: self.closes.get(&key).map_or(0, |q| q.len() as u64),
                bursts_last_minute,
                account: key.0,
                account_name: b.account_name,
                user: key.1,
                user_name: b.user_name,
                cap: b.cap,
                started: b.started,
                closed: b.closed,
                failed: b.failed,
            });
        }
        out
    }

    /// Takes back closes decided but not sent (the servers could not be confirmed just before
    /// the KICKs: the view may hold a dead server's connections). They are no longer in
    /// flight, so a later round over a complete view decides afresh; the rate tokens they took
    /// stay spent (the bound stays a bound).
    pub fn withdraw(&mut self, closes: &[Close]) {
        for c in closes {
            self.in_flight
                .remove(&(c.conn.server_id.clone(), c.conn.cid));
        }
    }

    /// Drops the closes in flight that are only announced (dry run turned off, or a gap: the
    /// view may have changed under them).
    pub fn forget_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// When the next round is wanted without an event: a burst to announce, or closes
    /// deferred by the rate bound.
    pub fn next_wake(&self, cfg: &EnforceConfig) -> Option<Instant> {
        let bursts = self
            .bursts
            .values()
            .map(|b| (b.last + BURST_QUIET).min(b.first + BURST_MAX))
            .min();
        let tokens = self
            .deferring
            .then(|| self.bucket.next_token(cfg.max_kicks_per_sec))
            .flatten();
        bursts.into_iter().chain(tokens).min()
    }

    /// Per user: connections the cap closed within the last minute (the churn at the cap).
    pub fn churn(&self) -> impl Iterator<Item = (&UserKey, u64)> {
        self.closes.iter().map(|(k, q)| (k, q.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CapRule;
    use crate::enforce::cap::tests::conn;

    fn cfg(cap: u64, rate: u32, dry_run: bool) -> EnforceConfig {
        EnforceConfig {
            enabled: true,
            dry_run,
            max_kicks_per_sec: rate,
            caps: vec![CapRule {
                account: "APP".into(),
                user: Some("u".into()),
                max_connections: cap,
            }],
            ..EnforceConfig::default()
        }
    }

    /// A guard with the default kick policy and no system account or own connection.
    fn guard() -> Guard<'static> {
        Guard {
            system_account: None,
            own: None,
            kick: Box::leak(Box::default()),
        }
    }

    fn users(conns: &[Connection]) -> Users<'_> {
        super::super::cap::by_user(conns.iter())
    }

    fn closed_all(d: &Decided) -> Vec<(Close, Done)> {
        d.closes.iter().map(|c| (c.clone(), Done::Closed)).collect()
    }

    #[test]
    fn the_bucket_bounds_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new();
        let taken = (0..20).filter(|_| b.take(5, t0)).count();
        assert_eq!(taken, 5, "a full bucket holds one second's worth");
        assert!(!b.take(5, t0 + Duration::from_millis(100)));
        assert!(b.take(5, t0 + Duration::from_millis(210)));
        let next = b.next_token(5).unwrap() - t0;
        assert!(next > Duration::from_millis(390) && next < Duration::from_millis(410));
        // Over 10 seconds, at most 5 a second plus the first second's bucket.
        let mut b = Bucket::new();
        let n = (0..1000)
            .filter(|i| b.take(5, t0 + Duration::from_millis(i * 10)))
            .count();
        assert!((50..=55).contains(&n), "{n}");
    }

    #[test]
    fn withdrawn_closes_are_decided_again_and_make_no_burst() {
        let t0 = Instant::now();
        let cfg = cfg(2, 100, false);
        let guard = guard();
        let mut e = Enforcer::new();
        let conns: Vec<Connection> = (1..=4).map(|i| conn("n1", i, i as i64)).collect();
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        assert_eq!(d.closes.len(), 2);
        e.withdraw(&d.closes);
        let later = t0 + Duration::from_secs(2);
        assert!(e.finish(&users(&conns), later).is_empty(), "nothing closed");
        let again = e.decide(&users(&conns), &cfg, &guard, later);
        assert_eq!(again.closes, d.closes);
    }

    #[test]
    fn a_round_closes_the_excess_once_and_a_burst_becomes_one_report() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let cfg = cfg(2, 100, false);
        let guard = guard();
        let mut e = Enforcer::new();
        let conns: Vec<Connection> = (1..=4).map(|i| conn("n1", i, i as i64)).collect();
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        assert_eq!(d.closes.len(), 2);
        e.record(closed_all(&d), t0, wall);
        // The KICKs are in flight and the connections still listed: not decided again.
        let again = e.decide(&users(&conns), &cfg, &guard, t0 + Duration::from_millis(50));
        assert!(again.closes.is_empty());
        // More arrive in the same burst (one older than those kept).
        let mut now_conns = conns[..2].to_vec();
        now_conns.push(conn("n2", 7, 0));
        now_conns.push(conn("n2", 8, 9));
        let t1 = t0 + Duration::from_millis(300);
        let d = e.decide(&users(&now_conns), &cfg, &guard, t1);
        let closed: Vec<u64> = d.closes.iter().map(|c| c.conn.cid).collect();
        assert_eq!(closed, vec![2, 8], "the newest beyond the cap");
        e.record(closed_all(&d), t1, wall);
        assert!(e.finish(&users(&now_conns[..2]), t1).is_empty());
        assert_eq!(e.next_wake(&cfg), Some(t1 + BURST_QUIET));
        let left = vec![conn("n1", 1, 1), conn("n2", 7, 0)];
        let done = e.finish(&users(&left), t1 + BURST_QUIET);
        assert_eq!(done.len(), 1);
        let f = &done[0];
        assert_eq!(f.after, 2);
        let cids: Vec<u64> = f.closed.iter().map(|c| c.cid).collect();
        assert_eq!(cids, vec![2, 3, 4, 8], "oldest first");
        assert_eq!((f.closed_last_minute, f.bursts_last_minute), (4, 1));
        assert_eq!(e.next_wake(&cfg), None);
    }

    #[test]
    fn dry_run_announces_each_connection_once_and_counts_after_as_if_closed() {
        let t0 = Instant::now();
        let cfg = cfg(2, 100, true);
        let guard = guard();
        let mut e = Enforcer::new();
        let conns: Vec<Connection> = (1..=5).map(|i| conn("n1", i, i as i64)).collect();
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        assert_eq!(d.closes.len(), 3);
        e.record(closed_all(&d), t0, Utc::now());
        // Long after, nothing closed them (dry run): never announced again.
        let later = t0 + Duration::from_secs(30);
        assert!(e
            .decide(&users(&conns), &cfg, &guard, later)
            .closes
            .is_empty());
        let done = e.finish(&users(&conns), later);
        assert_eq!(done[0].after, 2);
        assert_eq!(done[0].closed.len(), 3);
    }

    #[test]
    fn the_rate_bound_defers_and_wakes_when_a_token_is_back() {
        let t0 = Instant::now();
        let cfg = cfg(1, 2, false);
        let guard = guard();
        let mut e = Enforcer::new();
        let conns: Vec<Connection> = (1..=6).map(|i| conn("n1", i, i as i64)).collect();
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        assert_eq!((d.closes.len(), d.deferred), (2, 3));
        let wake = e.next_wake(&cfg).unwrap();
        assert!(wake <= t0 + Duration::from_millis(500), "{:?}", wake - t0);
    }

    #[test]
    fn a_failed_close_is_decided_again_and_counted() {
        let t0 = Instant::now();
        let cfg = cfg(1, 100, false);
        let guard = guard();
        let mut e = Enforcer::new();
        let conns: Vec<Connection> = (1..=2).map(|i| conn("n1", i, i as i64)).collect();
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        e.record(vec![(d.closes[0].clone(), Done::Failed)], t0, Utc::now());
        let d = e.decide(&users(&conns), &cfg, &guard, t0);
        assert_eq!(d.closes.len(), 1);
        e.record(closed_all(&d), t0, Utc::now());
        let f = e.finish(&users(&conns[..1]), t0 + BURST_QUIET);
        assert_eq!((f[0].failed, f[0].closed.len()), (1, 1));
    }

    #[test]
    fn a_client_coming_back_after_each_close_is_churn_at_the_cap() {
        let t0 = Instant::now();
        let cfg = cfg(1, 100, false);
        let guard = guard();
        let mut e = Enforcer::new();
        let mut reports = Vec::new();
        // A second connection comes back every 500 ms for 12 s: one burst at most every
        // BURST_MAX, each reporting the churn so far.
        for i in 0..24u64 {
            let now = t0 + Duration::from_millis(500 * i);
            let conns = vec![conn("n1", 1, 0), conn("n1", 100 + i, 1 + i as i64)];
            let d = e.decide(&users(&conns), &cfg, &guard, now);
            assert_eq!(d.closes.len(), 1);
            e.record(closed_all(&d), now, Utc::now());
            reports.extend(e.finish(&users(&conns[..1]), now));
        }
        assert_eq!(reports.len(), 2, "{reports:#?}");
        let last = reports.last().unwrap();
        assert_eq!(last.bursts_last_minute, 2);
        assert!(last.closed_last_minute >= 20, "{last:?}");
        assert_eq!(e.churn().next().map(|(_, n)| n), Some(24));
    }
}
