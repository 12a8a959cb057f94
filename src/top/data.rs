//! What `connwatch top` shows, as plain data: the census and the firing findings as the
//! service API serves them, and each user's recent counts (for the rate and the sparkline).
//!
//! Pure: no NATS, no clock (every function takes `now`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::census::UserCensus;
use crate::lifecycle::Active;
use crate::rules::Finding;

/// The sweep behind a census, as `connwatch.census` serves it (`sweep` of the report JSON).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SweepView {
    /// When the sweep started.
    pub started: Option<DateTime<Utc>>,
    /// Servers expected to answer.
    pub servers_expected: usize,
    /// Servers whose connections are all counted.
    pub servers_responded: usize,
    /// Whether some connections may be missing.
    pub partial: bool,
    /// Expected servers that did not answer.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Servers that answered but whose connections are not counted.
    #[serde(default)]
    pub errors: Vec<ServerErrorView>,
    /// Connections counted.
    pub connections: usize,
}

/// A server whose connections are not counted (`sweep.errors[]`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerErrorView {
    /// Server name.
    pub server: String,
    /// What went wrong, for a person.
    pub error: String,
}

/// The census endpoint's reply: the report JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CensusView {
    /// The sweep's completeness.
    pub sweep: SweepView,
    /// Every user, most connections first.
    pub users: Vec<UserCensus>,
}

/// The findings endpoint's reply.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FindingsView {
    /// The findings firing.
    pub findings: Vec<Active>,
}

/// One refresh: the census and the findings firing, from the service or a standalone sweep.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The census.
    pub census: CensusView,
    /// The findings firing.
    pub findings: Vec<Active>,
    /// When top received it.
    pub received: DateTime<Utc>,
}

impl Data {
    /// Firing findings per advisory type, by name.
    pub fn firing_by_type(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.findings {
            *m.entry(a.kind().name()).or_default() += 1;
        }
        m
    }

    /// The user findings firing for `account`/`user` (excessive, growth).
    pub fn findings_of<'a>(&'a self, account: &str, user: &str) -> Vec<&'a Active> {
        self.findings
            .iter()
            .filter(|a| match &a.finding {
                Finding::ExcessiveUserConnections(u) | Finding::UserConnectionGrowth(u) => {
                    u.census.account == account && u.census.user == user
                }
                _ => false,
            })
            .collect()
    }

    /// The user with this key.
    pub fn user(&self, key: &UserKey) -> Option<&UserCensus> {
        self.census
            .users
            .iter()
            .find(|u| u.account == key.0 && u.user == key.1)
    }
}

/// A user's identity: (account, user), keys as the census has them.
pub type UserKey = (String, String);

/// The key of a user.
pub fn key_of(u: &UserCensus) -> UserKey {
    (u.account.clone(), u.user.clone())
}

/// How far back the trends look: the sparkline's span.
pub const TREND_SPAN_SECS: i64 = 300;
/// A rate needs samples at least this far apart.
const MIN_RATE_SPAN_SECS: i64 = 2;

/// Each user's counts over the last [`TREND_SPAN_SECS`], as top saw them.
#[derive(Debug, Clone, Default)]
pub struct Trends {
    samples: HashMap<UserKey, VecDeque<(DateTime<Utc>, u64)>>,
}

impl Trends {
    /// Records the counts of a census seen at `now`; users absent from it count 0 from now on
    /// and are forgotten once their samples are all older than the span.
    pub fn record(&mut self, users: &[UserCensus], now: DateTime<Utc>) {
        let mut present = std::collections::HashSet::new();
        for u in users {
            let key = key_of(u);
            push(
                self.samples.entry(key.clone()).or_default(),
                now,
                u.connections,
            );
            present.insert(key);
        }
        for (k, s) in self.samples.iter_mut() {
            if !present.contains(k) {
                push(s, now, 0);
            }
        }
        let horizon = now - chrono::Duration::seconds(TREND_SPAN_SECS);
        self.samples.retain(|_, s| {
            // Keep one sample at or before the horizon: the value the span starts from.
            while s.len() > 1 && s[1].0 <= horizon {
                s.pop_front();
            }
            s.iter().any(|(_, n)| *n > 0)
        });
    }

    /// Connections gained (positive) or lost per minute over the last minute (or the time
    /// seen, when shorter); `None` until samples span `MIN_RATE_SPAN_SECS`.
    pub fn per_minute(&self, key: &UserKey, now: DateTime<Utc>) -> Option<f64> {
        let s = self.samples.get(key)?;
        let (t_last, last) = *s.back()?;
        let from = now - chrono::Duration::seconds(60);
        // The count a minute ago (the counts are a step function), else the first one seen.
        let (t0, n0) = match s.iter().rev().find(|(t, _)| *t <= from) {
            Some((_, n)) => (from, *n),
            None => *s.front()?,
        };
        let span = (t_last - t0).num_milliseconds() as f64 / 1000.0;
        if span < MIN_RATE_SPAN_SECS as f64 {
            return None;
        }
        Some((last as f64 - n0 as f64) * 60.0 / span)
    }

    /// The counts of the last [`TREND_SPAN_SECS`] in `width` columns, as block characters
    /// scaled from 0 to the highest; blanks before the first sample.
    pub fn sparkline(&self, key: &UserKey, now: DateTime<Utc>, width: usize) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let Some(s) = self.samples.get(key) else {
            return " ".repeat(width);
        };
        let step = TREND_SPAN_SECS as f64 / width.max(1) as f64;
        let cols: Vec<Option<u64>> = (0..width)
            .map(|i| {
                let end = now
                    - chrono::Duration::milliseconds(
                        ((width - 1 - i) as f64 * step * 1000.0) as i64,
                    );
                s.iter().rev().find(|(t, _)| *t <= end).map(|(_, n)| *n)
            })
            .collect();
        let max = cols.iter().flatten().copied().max().unwrap_or(0);
        cols.into_iter()
            .map(|c| match c {
                None => ' ',
                Some(_) if max == 0 => BARS[0],
                Some(n) => BARS[((n * 7 + max / 2) / max) as usize],
            })
            .collect()
    }
}

/// Adds a sample; a run of equal counts keeps only its first and last sample (the counts are a
/// step function, so nothing is lost).
fn push(s: &mut VecDeque<(DateTime<Utc>, u64)>, now: DateTime<Utc>, n: u64) {
    let len = s.len();
    if s.back().is_some_and(|(t, _)| *t >= now) {
        return;
    }
    if len >= 2 && s[len - 1].1 == n && s[len - 2].1 == n {
        s[len - 1].0 = now;
    } else {
        s.push_back((now, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn u(user: &str, n: u64) -> UserCensus {
        UserCensus {
            account: "APP".into(),
            user: user.into(),
            connections: n,
            ..UserCensus::default()
        }
    }

    fn key(user: &str) -> UserKey {
        ("APP".into(), user.into())
    }

    #[test]
    fn rate_is_the_change_over_the_last_minute() {
        let mut tr = Trends::default();
        for i in 0..=120 {
            tr.record(&[u("leaky", 10 * i as u64), u("flat", 7)], t(i));
        }
        let r = tr.per_minute(&key("leaky"), t(120)).unwrap();
        assert!((r - 600.0).abs() < 1e-6, "{r}");
        assert_eq!(tr.per_minute(&key("flat"), t(120)), Some(0.0));
    }

    #[test]
    fn rate_needs_two_samples_apart_and_counts_a_user_gone_as_falling() {
        let mut tr = Trends::default();
        tr.record(&[u("a", 50)], t(0));
        assert_eq!(tr.per_minute(&key("a"), t(0)), None);
        tr.record(&[], t(30));
        let r = tr.per_minute(&key("a"), t(30)).unwrap();
        assert!((r + 100.0).abs() < 1e-6, "{r}");
    }

    #[test]
    fn sparkline_rises_with_a_leak_and_is_blank_before_the_first_sample() {
        let mut tr = Trends::default();
        for i in 0..=10 {
            tr.record(&[u("leaky", 100 * (i as u64 + 1))], t(150 + 15 * i));
        }
        let s = tr.sparkline(&key("leaky"), t(300), 10);
        assert_eq!(s.chars().count(), 10);
        assert!(s.starts_with("    ") && !s.starts_with("     "), "{s:?}");
        assert_eq!(s.chars().filter(|c| *c == ' ').count(), 4, "{s:?}");
        assert!(s.ends_with('█'), "{s:?}");
        let bars: Vec<char> = s.trim().chars().collect();
        assert!(bars.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
        assert_eq!(tr.sparkline(&key("nobody"), t(300), 4), "    ");
    }

    #[test]
    fn old_samples_are_dropped_and_vanished_users_forgotten() {
        let mut tr = Trends::default();
        tr.record(&[u("gone", 5)], t(0));
        tr.record(&[], t(10));
        tr.record(&[], t(TREND_SPAN_SECS + 20));
        assert!(!tr.samples.contains_key(&key("gone")));
    }
}
