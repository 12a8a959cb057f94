//! Which servers have been quiet for too long (pure): every server publishes its STATSZ on
//! `$SYS.SERVER.<id>.STATSZ` as a heartbeat, on its own, every [`PERIOD`] (nats-server's
//! `statsHBInterval`; a server that just started sends them after 250 ms, then 0.5, 1, 2, 4,
//! 8 s, then every 10 s). The live census listens instead of asking: a server is only asked
//! directly (`$SYS.REQ.SERVER.<id>.STATSZ`) once it has been quiet for longer than its
//! heartbeat period plus `live.heartbeat_margin`, and only a server that does not answer that
//! either is silent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// nats-server's STATSZ heartbeat period (`statsHBInterval` in server/events.go: 10 s in 2.15,
/// not configurable). A server's own period is the longer of this and the last interval seen
/// between two of its heartbeats (so a slower server is not asked at every turn).
pub const PERIOD: Duration = Duration::from_secs(10);

/// When each server was last heard, and its heartbeat period.
#[derive(Debug, Default)]
pub struct Heartbeats {
    servers: HashMap<String, Beat>,
}

#[derive(Debug, Clone, Copy)]
struct Beat {
    /// Last heard: a heartbeat, an answer to a request, or a sweep's reply.
    heard: Instant,
    /// Last heartbeat, to measure the period.
    beat: Option<Instant>,
    /// The longer of [`PERIOD`] and the last interval between two heartbeats.
    period: Duration,
}

impl Heartbeats {
    /// `id` published its heartbeat at `now`.
    pub fn beat(&mut self, id: &str, now: Instant) {
        let b = self.entry(id, now);
        if let Some(prev) = b.beat {
            b.period = PERIOD.max(now.saturating_duration_since(prev));
        }
        b.beat = Some(now);
        b.heard = b.heard.max(now);
    }

    /// `id` answered (a direct request, a probe of every server, a sweep) at `now`.
    pub fn heard(&mut self, id: &str, now: Instant) {
        let b = self.entry(id, now);
        b.heard = b.heard.max(now);
    }

    fn entry(&mut self, id: &str, now: Instant) -> &mut Beat {
        self.servers.entry(id.to_string()).or_insert(Beat {
            heard: now,
            beat: None,
            period: PERIOD,
        })
    }

    /// The servers of `known` that have been quiet for longer than their period plus `margin`
    /// at `now`, with how long. A server of `known` never heard starts its clock now (it
    /// entered the view with the sweep that heard it).
    pub fn quiet<'a>(
        &mut self,
        known: impl IntoIterator<Item = &'a str>,
        now: Instant,
        margin: Duration,
    ) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        for id in known {
            let b = *self.entry(id, now);
            let quiet = now.saturating_duration_since(b.heard);
            if quiet > b.period + margin {
                out.push((id.to_string(), quiet));
            }
        }
        out.sort();
        out
    }

    /// Forgets the servers `keep` says no longer matter (they left the view).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.servers.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARGIN: Duration = Duration::from_secs(5);

    #[test]
    fn a_server_is_quiet_only_past_its_period_and_the_margin() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeats::default();
        // Known from a sweep at t: its clock starts then.
        assert!(h.quiet(["A"], t, MARGIN).is_empty());
        assert!(h.quiet(["A"], t + s(15), MARGIN).is_empty());
        assert_eq!(
            h.quiet(["A"], t + s(16), MARGIN),
            vec![("A".to_string(), s(16))]
        );
        // A heartbeat restarts the clock; an answer to a request too.
        h.beat("A", t + s(16));
        assert!(h.quiet(["A"], t + s(30), MARGIN).is_empty());
        h.heard("A", t + s(30));
        assert!(h.quiet(["A"], t + s(45), MARGIN).is_empty());
        assert_eq!(h.quiet(["A"], t + s(46), MARGIN).len(), 1);
    }

    #[test]
    fn the_period_is_the_last_interval_between_heartbeats_and_at_least_ten_seconds() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeats::default();
        // A starting server beats fast (250 ms, 0.5 s, ...): the period stays 10 s.
        h.beat("A", t);
        h.beat("A", t + Duration::from_millis(250));
        let last = t + Duration::from_millis(250);
        assert!(h.quiet(["A"], last + s(15), MARGIN).is_empty());
        assert_eq!(h.quiet(["A"], last + s(16), MARGIN).len(), 1);
        // A server that beats every 30 s is given 30 s.
        h.beat("B", t);
        h.beat("B", t + s(30));
        assert!(h.quiet(["B"], t + s(64), MARGIN).is_empty());
        assert_eq!(h.quiet(["B"], t + s(66), MARGIN).len(), 1);
    }

    #[test]
    fn servers_that_left_are_forgotten() {
        let t = Instant::now();
        let mut h = Heartbeats::default();
        h.beat("A", t);
        h.beat("B", t);
        h.retain(|id| id == "A");
        // B, known again later, starts a new clock.
        let later = t + Duration::from_secs(100);
        assert_eq!(h.quiet(["A", "B"], later, MARGIN).len(), 1);
        assert_eq!(h.quiet(["B"], later, MARGIN), vec![]);
    }
}
