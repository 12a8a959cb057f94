//! The lease as plain data: who holds it, at which revision, and until when the holder may act.
//!
//! The lease key expires `lease` after the server stored the last renewal, which is after the
//! renewal was sent: so counting from the send, a holder that stops acting at
//! `lease - margin` stops before any other replica can take the key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Whether this replica leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It holds the lease and may act.
    Leader,
    /// Another replica holds it, or nobody could be confirmed.
    Follower,
}

impl Role {
    /// `leader` or `follower`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
        }
    }
}

/// The lease as this replica knows it.
#[derive(Debug, Clone)]
pub struct Lease {
    lease: Duration,
    held: Option<Held>,
    /// When the role last changed (wall clock, for metrics and `/readyz`).
    since: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// The key's revision this replica wrote last.
    revision: u64,
    /// When that write was sent.
    sent: Instant,
}

impl Lease {
    /// A follower, with a lease lasting `lease`.
    pub fn new(lease: Duration, now: DateTime<Utc>) -> Self {
        Self {
            lease,
            held: None,
            since: now,
        }
    }

    /// Time between two renewals (or attempts to take the lease).
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How long before the lease could expire the holder stops acting.
    pub fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// The revision to renew, while this replica holds the lease.
    pub fn revision(&self) -> Option<u64> {
        self.held.map(|h| h.revision)
    }

    /// This replica wrote the lease key at `revision` with a request sent at `sent` (taking it,
    /// or renewing it).
    pub fn written(&mut self, revision: u64, sent: Instant, now: DateTime<Utc>) {
        if self.held.is_none() {
            self.since = now;
        }
        self.held = Some(Held { revision, sent });
    }

    /// Another replica holds the key, or this one's revision is no longer the key's.
    pub fn lost(&mut self, now: DateTime<Utc>) {
        if self.held.take().is_some() {
            self.since = now;
        }
    }

    /// Until when the holder may act: `lease - margin` after its last write was sent.
    pub fn acting_until(&self) -> Option<Instant> {
        self.held
            .map(|h| h.sent + self.lease.saturating_sub(self.margin()))
    }

    /// Whether this replica may act at `now`: it holds the lease and its last renewal is
    /// recent enough that the key cannot have expired for the others.
    pub fn acting(&self, now: Instant) -> bool {
        self.acting_until().is_some_and(|until| now < until)
    }

    /// The role at `now`: leader only while acting.
    pub fn role(&self, now: Instant) -> Role {
        if self.acting(now) {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    /// When the role last changed.
    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn a_holder_acts_until_lease_minus_margin_after_its_last_renewal_was_sent() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut l = Lease::new(LEASE, wall);
        assert!(!l.acting(t0));
        assert_eq!(l.renew_every(), LEASE / 3);
        l.written(1, t0, wall);
        assert_eq!(l.role(t0), Role::Leader);
        // Renewals keep it acting.
        l.written(2, t0 + l.renew_every(), wall);
        assert_eq!(l.revision(), Some(2));
        let until = t0 + l.renew_every() + Duration::from_secs(8);
        assert_eq!(l.acting_until(), Some(until));
        assert!(l.acting(until - Duration::from_millis(1)));
        // Renewals failing: it stops 2s (a fifth) before the key could expire for others.
        assert!(!l.acting(until));
        assert_eq!(l.role(until), Role::Follower);
        // The key expires no earlier than 10s after the last renewal was sent.
        assert!(until + l.margin() <= t0 + l.renew_every() + LEASE);
    }

    #[test]
    fn losing_the_key_stops_acting_at_once_and_notes_when() {
        let t0 = Instant::now();
        let wall = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut l = Lease::new(LEASE, wall);
        let took = wall + chrono::Duration::seconds(5);
        l.written(7, t0, took);
        assert_eq!(l.since(), took);
        l.written(8, t0, took + chrono::Duration::seconds(3));
        assert_eq!(l.since(), took, "a renewal is no new leadership");
        let lost = took + chrono::Duration::seconds(9);
        l.lost(lost);
        assert!(!l.acting(t0));
        assert_eq!(l.revision(), None);
        assert_eq!(l.since(), lost);
    }
}
