//! Findings over time: `firing` when one starts, again every `advisory.renotify` while it lasts,
//! `resolved` once a complete sweep no longer finds it. A partial sweep never resolves: a silent
//! server's connections are unknown, not gone.
//!
//! The active findings are kept in the state file, so a restart does not fire them all again.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::{Finding, Kind};

/// `firing` while the finding holds, `resolved` once a complete sweep no longer finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The finding holds.
    Firing,
    /// It no longer holds (seen by a complete sweep).
    Resolved,
}

impl State {
    /// `firing` or `resolved`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// A finding that is firing.
///
/// Kept in the state file as `kind`, `tokens`, `since`, `last_notified` and `body`: the shape
/// earlier versions wrote, so their state files still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// The finding as last seen (`kind` and `body`).
    #[serde(flatten)]
    pub finding: Finding,
    /// Account and user, account, or server.
    pub tokens: Vec<String>,
    /// When it first fired.
    pub since: DateTime<Utc>,
    /// When it was last announced.
    pub last_notified: DateTime<Utc>,
    /// How often it was announced again while firing (part of its advisories' ids); 0 in
    /// state files written before it was kept.
    #[serde(default)]
    pub renotified: u32,
}

impl Active {
    /// Which rule.
    pub fn kind(&self) -> Kind {
        self.finding.kind()
    }
}

/// Something to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Firing or resolved.
    pub state: State,
    /// True when a firing finding is announced again.
    pub renotify: bool,
    /// The finding.
    pub finding: Active,
}

/// The findings that are firing, by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Finding key → its state.
    pub active: BTreeMap<String, Active>,
}

impl Lifecycle {
    /// Takes one sweep's findings; returns what to announce.
    pub fn step(
        &mut self,
        findings: &[Finding],
        complete: bool,
        now: DateTime<Utc>,
        renotify: Duration,
    ) -> Vec<Event> {
        self.step_holding(findings, complete, now, renotify, &HashSet::new())
    }

    /// Like [`Lifecycle::step`], but the findings keyed in `held` are not resolved even by a
    /// complete sweep: what they depend on is unknown this round (a failed limit lookup), so
    /// their absence proves nothing. They stay firing as they are.
    pub fn step_holding(
        &mut self,
        findings: &[Finding],
        complete: bool,
        now: DateTime<Utc>,
        renotify: Duration,
        held: &HashSet<String>,
    ) -> Vec<Event> {
        let renotify = chrono::Duration::from_std(renotify).unwrap_or(chrono::Duration::MAX / 2);
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for f in findings {
            let key = f.key();
            seen.insert(key.clone());
            match self.active.get_mut(&key) {
                None => {
                    let a = Active {
                        finding: f.clone(),
                        tokens: f.tokens(),
                        since: now,
                        last_notified: now,
                        renotified: 0,
                    };
                    events.push(Event {
                        state: State::Firing,
                        renotify: false,
                        finding: a.clone(),
                    });
                    self.active.insert(key, a);
                }
                Some(a) => {
                    a.finding = f.clone();
                    if now - a.last_notified >= renotify {
                        a.last_notified = now;
                        a.renotified += 1;
                        events.push(Event {
                            state: State::Firing,
                            renotify: true,
                            finding: a.clone(),
                        });
                    }
                }
            }
        }
        if complete {
            let gone: Vec<String> = self
                .active
                .keys()
                .filter(|k| !seen.contains(*k) && !held.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(a) = self.active.remove(&key) {
                    events.push(Event {
                        state: State::Resolved,
                        renotify: false,
                        finding: a,
                    });
                }
            }
        }
        events
    }

    /// How many findings of each kind are firing.
    pub fn firing_by_kind(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for a in self.active.values() {
            *m.entry(a.kind()).or_default() += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ServerFinding;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn finding(server: &str, connections: u64) -> Finding {
        Finding::ServerConnectionPressure(ServerFinding {
            server: server.into(),
            server_id: "ID".into(),
            connections,
            max_connections: 100,
            ratio: connections as f64 / 100.0,
        })
    }

    fn states(e: &[Event]) -> Vec<(State, bool, String)> {
        e.iter()
            .map(|e| (e.state, e.renotify, e.finding.tokens[0].clone()))
            .collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn fires_once_then_renotifies_then_resolves() {
        let mut l = Lifecycle::default();
        assert_eq!(
            states(&l.step(&[finding("n1", 85)], true, t(0), HOUR)),
            vec![(State::Firing, false, "n1".into())]
        );
        assert!(l.step(&[finding("n1", 86)], true, t(60), HOUR).is_empty());
        let e = l.step(&[finding("n1", 87)], true, t(3600), HOUR);
        assert_eq!(states(&e), vec![(State::Firing, true, "n1".into())]);
        assert_eq!(e[0].finding.finding, finding("n1", 87));
        assert_eq!(e[0].finding.since, t(0));
        assert_eq!(
            e[0].finding.renotified, 1,
            "the renotify count is part of the id"
        );
        let e = l.step(&[finding("n1", 88)], true, t(7200), HOUR);
        assert_eq!(e[0].finding.renotified, 2);
        let e = l.step(&[], true, t(7260), HOUR);
        assert_eq!(states(&e), vec![(State::Resolved, false, "n1".into())]);
        assert!(l.active.is_empty());
    }

    #[test]
    fn a_partial_sweep_never_resolves() {
        let mut l = Lifecycle::default();
        l.step(&[finding("n1", 85)], true, t(0), HOUR);
        assert!(l.step(&[], false, t(30), HOUR).is_empty());
        assert_eq!(l.active.len(), 1);
        assert_eq!(
            states(&l.step(&[], true, t(60), HOUR)),
            vec![(State::Resolved, false, "n1".into())]
        );
    }

    #[test]
    fn a_held_finding_is_not_resolved_by_a_complete_sweep() {
        let mut l = Lifecycle::default();
        l.step(&[finding("n1", 85)], true, t(0), HOUR);
        let held = HashSet::from([finding("n1", 0).key()]);
        // n1's limit is unknown: its finding is missing from the sweep, yet stays firing.
        assert!(l.step_holding(&[], true, t(30), HOUR, &held).is_empty());
        assert_eq!(l.active.len(), 1);
        // Known again and below: resolved once.
        assert_eq!(
            states(&l.step_holding(&[], true, t(60), HOUR, &HashSet::new())),
            vec![(State::Resolved, false, "n1".into())]
        );
    }

    #[test]
    fn a_partial_sweep_may_fire_what_it_sees() {
        let mut l = Lifecycle::default();
        assert_eq!(l.step(&[finding("n2", 90)], false, t(0), HOUR).len(), 1);
    }

    #[test]
    fn survives_a_restart_without_firing_again() {
        let mut l = Lifecycle::default();
        l.step(&[finding("n1", 85)], true, t(0), HOUR);
        let saved = serde_json::to_string(&l).unwrap();
        let mut restored: Lifecycle = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored, l);
        assert!(restored
            .step(&[finding("n1", 85)], true, t(120), HOUR)
            .is_empty());
        assert_eq!(
            restored.firing_by_kind()[&Kind::ServerConnectionPressure],
            1
        );
    }
}
