//! Growth: a user's connections per hour over recent complete sweeps, and when it will cross its
//! threshold and its account's connection limit. A slow leak is found before it hurts.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::Census;

/// At most this many samples are kept per user.
const MAX_SAMPLES: usize = 720;
/// Fewer samples than this say nothing about a trend.
const MIN_SAMPLES: usize = 3;

/// Connection counts of every user over recent complete sweeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// `account/user` → (time, connections), oldest first.
    pub users: BTreeMap<String, VecDeque<(DateTime<Utc>, u64)>>,
}

/// The history key of a user.
pub fn user_key(account: &str, user: &str) -> String {
    format!("{account}/{user}")
}

impl History {
    /// Records a complete sweep's census at `at`, forgetting samples older than `window`.
    /// Users absent from the census get a zero sample, so a leak that closed shows as such.
    pub fn record(&mut self, census: &Census, at: DateTime<Utc>, window: Duration) {
        let horizon = at - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX / 2);
        let mut seen = std::collections::HashSet::new();
        for u in &census.users {
            let key = user_key(&u.account, &u.user);
            self.users
                .entry(key.clone())
                .or_default()
                .push_back((at, u.connections));
            seen.insert(key);
        }
        for (key, samples) in self.users.iter_mut() {
            if !seen.contains(key) {
                samples.push_back((at, 0));
            }
            while samples.front().is_some_and(|(t, _)| *t < horizon) || samples.len() > MAX_SAMPLES
            {
                samples.pop_front();
            }
        }
        self.users.retain(|_, s| s.iter().any(|(_, n)| *n > 0));
    }

    /// The samples of one user, oldest first.
    pub fn samples(&self, account: &str, user: &str) -> Vec<(DateTime<Utc>, u64)> {
        self.users
            .get(&user_key(account, user))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The user's trend over recent complete sweeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Growth {
    /// Connections gained per hour (least-squares slope; negative when shrinking).
    pub per_hour: f64,
    /// Sweeps the slope rests on.
    #[schemars(range(min = 3))]
    pub samples: usize,
    /// Seconds the samples span.
    pub window_secs: u64,
    /// Seconds until the user crosses its threshold at this rate; absent when not growing or
    /// already over it.
    pub threshold_in_secs: Option<u64>,
    /// The account's connection limit, when known.
    pub account_limit: Option<u64>,
    /// Seconds until the account reaches its limit at this user's rate; absent when not growing
    /// or the limit is unknown.
    pub account_limit_in_secs: Option<u64>,
}

/// Computes a user's growth from its samples, projecting from its `current` connections;
/// `None` with too few samples or no time span.
pub fn growth(
    samples: &[(DateTime<Utc>, u64)],
    current: u64,
    threshold: u64,
    account_connections: u64,
    account_limit: Option<u64>,
) -> Option<Growth> {
    if samples.len() < MIN_SAMPLES {
        return None;
    }
    let t0 = samples[0].0;
    let xs: Vec<f64> = samples
        .iter()
        .map(|(t, _)| (*t - t0).num_milliseconds() as f64 / 3_600_000.0)
        .collect();
    let ys: Vec<f64> = samples.iter().map(|(_, n)| *n as f64).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let per_hour = sxy / sxx;
    let now = current;
    let eta = |headroom: u64| -> Option<u64> {
        (per_hour > 0.0).then(|| (headroom as f64 / per_hour * 3600.0).ceil() as u64)
    };
    Some(Growth {
        per_hour: (per_hour * 100.0).round() / 100.0,
        samples: samples.len(),
        window_secs: (samples[samples.len() - 1].0 - t0).num_seconds().max(0) as u64,
        threshold_in_secs: if now > threshold {
            None
        } else {
            eta(threshold + 1 - now)
        },
        account_limit,
        account_limit_in_secs: account_limit
            .and_then(|l| eta(l.saturating_sub(account_connections))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::UserCensus;

    fn t(mins: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + mins * 60, 0).unwrap()
    }

    #[test]
    fn a_steady_leak_projects_when_it_crosses_the_threshold() {
        // 10 connections every 6 minutes: 100 an hour, at 40 now.
        let samples: Vec<_> = (0..5).map(|i| (t(i * 6), (i as u64) * 10)).collect();
        let g = growth(&samples, 40, 100, 500, Some(1000)).unwrap();
        assert!(
            growth(&samples, 150, 100, 500, None)
                .unwrap()
                .threshold_in_secs
                .is_none(),
            "already over"
        );
        assert!((g.per_hour - 100.0).abs() < 0.01, "{}", g.per_hour);
        // 61 more to cross 100 at 100/h: 36.6 minutes.
        assert_eq!(g.threshold_in_secs, Some(2196));
        // 500 of 1000 left in the account: 5 hours.
        assert_eq!(g.account_limit_in_secs, Some(18_000));
        assert_eq!(g.window_secs, 24 * 60);
    }

    #[test]
    fn flat_or_shrinking_users_have_no_eta() {
        let flat: Vec<_> = (0..5).map(|i| (t(i), 50)).collect();
        let g = growth(&flat, 50, 100, 50, Some(1000)).unwrap();
        assert_eq!(g.per_hour, 0.0);
        assert_eq!(g.threshold_in_secs, None);
        let shrinking: Vec<_> = (0..5).map(|i| (t(i), 50 - i as u64)).collect();
        assert!(growth(&shrinking, 46, 100, 50, None).unwrap().per_hour < 0.0);
    }

    #[test]
    fn too_few_samples_say_nothing() {
        assert!(growth(&[(t(0), 1), (t(1), 2)], 2, 100, 0, None).is_none());
        assert!(growth(&[(t(0), 1), (t(0), 2), (t(0), 3)], 3, 100, 0, None).is_none());
    }

    #[test]
    fn history_keeps_a_window_and_zeroes_users_that_left() {
        let census = |n| Census {
            connections: n,
            users: vec![UserCensus {
                account: "A".into(),
                user: "u".into(),
                connections: n,
                ..UserCensus::default()
            }],
        };
        let mut h = History::default();
        for i in 0..10 {
            h.record(&census(i), t(i as i64), Duration::from_secs(5 * 60));
        }
        let s = h.samples("A", "u");
        assert_eq!(s.first().unwrap().0, t(4));
        assert_eq!(s.len(), 6);
        h.record(&Census::default(), t(10), Duration::from_secs(5 * 60));
        assert_eq!(h.samples("A", "u").last().unwrap().1, 0);
        // Once every sample in the window is zero, the user is forgotten.
        for i in 11..20 {
            h.record(&Census::default(), t(i), Duration::from_secs(5 * 60));
        }
        assert!(h.samples("A", "u").is_empty());
    }
}
