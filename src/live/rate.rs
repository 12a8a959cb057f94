//! The event rate over the last minute, and whether it is over `live.max_event_rate` (pure).
//!
//! Above that rate, following the events costs the servers more than sweeping them every
//! `sweep.interval` (BENCHMARKS.md, "Live census (issue 13)": each connect + disconnect
//! pair costs ~8 KB of server output and ~0.2–0.4 ms of servers' CPU delivered as events; a
//! full sweep at 45k connections ~52 MB and 0.35–1 s; the crossover by bytes is ~195/s).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the rate is averaged over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Events noted within this long of a bucket's start share the bucket.
const BUCKET: Duration = Duration::from_secs(1);

/// Events counted in one-second buckets over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct EventRate {
    /// (start of the bucket, events in it), oldest first.
    buckets: VecDeque<(Instant, u64)>,
    /// Events in `buckets`.
    total: u64,
}

impl EventRate {
    /// Counts one event at `now`.
    pub fn note(&mut self, now: Instant) {
        self.total += 1;
        match self.buckets.back_mut() {
            Some((start, n)) if now.saturating_duration_since(*start) < BUCKET => *n += 1,
            _ => self.buckets.push_back((now, 1)),
        }
    }

    /// Events in the window that ends at `now` (older buckets are let go).
    pub fn in_window(&mut self, now: Instant) -> u64 {
        while let Some(&(start, n)) = self.buckets.front() {
            if now.saturating_duration_since(start) < WINDOW {
                break;
            }
            self.buckets.pop_front();
            self.total -= n;
        }
        self.total
    }

    /// Whether the events of the last minute average more than `max_per_second` a second
    /// (`0`: never). A window not yet a minute old counts as a whole minute: a burst alone
    /// does not make the rate, only as many events as a minute at that rate would bring.
    pub fn over(&mut self, now: Instant, max_per_second: u64) -> bool {
        max_per_second > 0 && self.in_window(now) > max_per_second * WINDOW.as_secs()
    }

    /// Forgets every event (the events were not followed for a while).
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_rate(rate: &mut EventRate, t0: Instant, per_second: u64, seconds: u64) {
        for s in 0..seconds {
            for i in 0..per_second {
                rate.note(
                    t0 + Duration::from_secs(s) + Duration::from_millis(i * 1000 / per_second),
                );
            }
        }
    }

    #[test]
    fn the_rate_is_over_only_once_a_minute_at_it_holds_more_than_the_limit() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = EventRate::default();
        // 150 a second for 59 s: 8,850 events, not more than a minute at 150 (9,000).
        at_rate(&mut r, t0, 150, 59);
        assert!(!r.over(t0 + s(59), 150));
        // Faster: 300 a second crosses 9,000 within the first minute.
        let mut fast = EventRate::default();
        at_rate(&mut fast, t0, 300, 31);
        assert!(fast.over(t0 + s(31), 150));
        assert!(!fast.over(t0 + s(31), 0), "0 is no limit");
        assert_eq!(fast.in_window(t0 + s(31)), 9_300);
    }

    #[test]
    fn events_older_than_the_window_leave_it_and_clear_forgets_all() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = EventRate::default();
        at_rate(&mut r, t0, 200, 60);
        assert!(r.over(t0 + s(60), 150));
        // A quiet minute later, nothing is left of them.
        assert!(!r.over(t0 + s(120), 150));
        assert_eq!(r.in_window(t0 + s(120)), 0);
        // Half a minute at 400 after 30 s quiet: 12,000 in the window, over 150 (9,000).
        at_rate(&mut r, t0 + s(150), 400, 30);
        assert!(r.over(t0 + s(180), 150));
        assert!(
            !r.over(t0 + s(180), 200),
            "12,000 is not more than a minute at 200"
        );
        r.clear();
        assert_eq!(r.in_window(t0 + s(180)), 0);
    }
}
