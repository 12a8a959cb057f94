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
    /// Connections gained from the first sample to the last (0 when fewer).
    #[serde(default)]
    pub increase: u64,
    /// Seconds until the user crosses its threshold at this rate; absent when not growing or
    /// already over it.
    pub threshold_in_secs: Option<u64>,
    /// The account's connection limit, when known.
    pub account_limit: Option<u64>,
    /// Seconds until the account reaches its limit at this user's rate; absent when not growing
    /// or the limit is unknown.
    pub account_limit_in_secs: Option<u64>,
}

/// The least-squares slope of samples, in connections per hour; `None` without a time span.
fn slope_per_hour(samples: &[(DateTime<Utc>, u64)]) -> Option<f64> {
    let t0 = samples.first()?.0;
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
    Some(sxy / sxx)
}

/// What a trend must show before it is reported as growth: evidence an operator would accept,
/// not a slope drawn through one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// The samples span at least this long (`detect.growth_min_span`).
    pub min_span: Duration,
    /// The user gained at least this many connections over them (`detect.growth_min_increase`).
    pub min_increase: u64,
    /// The whole span, and each of its halves, grew at least this fast
    /// (`detect.growth_min_per_hour`).
    pub min_per_hour: f64,
}

/// Whether the samples are evidence of sustained growth: they span `min_span`, the user gained
/// `min_increase` over them, and the rise holds over the window: the least-squares slope of
/// the whole span and of each half (by time) is at least `min_per_hour`. One step (a
/// deployment going from 0 to 30 at once, an operator opening a second connection) rises in one
/// half only and is not growth; a leak rises in both.
pub fn sustained(samples: &[(DateTime<Utc>, u64)], ev: &Evidence) -> bool {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return false;
    };
    let span = (last.0 - first.0).to_std().unwrap_or_default();
    if samples.len() < MIN_SAMPLES
        || span < ev.min_span
        || last.1.saturating_sub(first.1) < ev.min_increase.max(1)
    {
        return false;
    }
    let mid = first.0 + (last.0 - first.0) / 2;
    let early: Vec<_> = samples.iter().copied().filter(|(t, _)| *t <= mid).collect();
    let late: Vec<_> = samples.iter().copied().filter(|(t, _)| *t >= mid).collect();
    [samples, &early, &late]
        .iter()
        .all(|s| slope_per_hour(s).is_some_and(|p| p > 0.0 && p >= ev.min_per_hour))
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
    let per_hour = slope_per_hour(samples)?;
    let now = current;
    let increase = samples[samples.len() - 1].1.saturating_sub(samples[0].1);
    let eta = |headroom: u64| -> Option<u64> {
        (per_hour > 0.0).then(|| (headroom as f64 / per_hour * 3600.0).ceil() as u64)
    };
    Some(Growth {
        per_hour: (per_hour * 100.0).round() / 100.0,
        samples: samples.len(),
        window_secs: (samples[samples.len() - 1].0 - t0).num_seconds().max(0) as u64,
        increase,
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

    fn secs(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    const EVIDENCE: Evidence = Evidence {
        min_span: Duration::from_secs(600),
        min_increase: 10,
        min_per_hour: 10.0,
    };

    #[test]
    fn a_slow_leak_is_sustained_growth() {
        // One connection every 20 s, swept every 30 s, for 15 minutes.
        let samples: Vec<_> = (0..30)
            .map(|i| (secs(i * 30), 5 + (i * 3 / 2) as u64))
            .collect();
        assert!(sustained(&samples, &EVIDENCE));
        // The same over less than growth_min_span says nothing yet.
        assert!(!sustained(&samples[..15], &EVIDENCE));
    }

    #[test]
    fn one_step_is_not_growth() {
        // A deployment: 0 → 30 at once, then flat, over 20 minutes of 30 s sweeps; wherever
        // the step falls, one half of the window is flat.
        for step in [1, 10, 20, 30, 39] {
            let samples: Vec<_> = (0..40)
                .map(|i| (secs(i * 30), if i >= step { 30 } else { 0 }))
                .collect();
            assert!(!sustained(&samples, &EVIDENCE), "step at sample {step}");
        }
        // An operator's extra connection: 1 → 2 (its slope is 720/h over a few sweeps).
        let samples: Vec<_> = (0..40)
            .map(|i| (secs(i * 30), if i >= 38 { 2 } else { 1 }))
            .collect();
        assert!(!sustained(&samples, &EVIDENCE));
        let g = growth(&samples[36..], 2, 100, 2, None).unwrap();
        assert!(
            g.per_hour > EVIDENCE.min_per_hour && g.threshold_in_secs.is_some(),
            "the bare slope alone would fire: {g:?}"
        );
    }

    #[test]
    fn growth_needs_its_minimum_increase() {
        // 9 connections in 20 minutes: slow, steady, but under growth_min_increase.
        let samples: Vec<_> = (0..41)
            .map(|i| (secs(i * 30), (i / 5) as u64 + 1))
            .collect();
        assert_eq!(samples.last().unwrap().1 - samples[0].1, 8);
        assert!(!sustained(&samples, &EVIDENCE));
        assert!(sustained(
            &samples,
            &Evidence {
                min_increase: 8,
                ..EVIDENCE
            }
        ));
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
