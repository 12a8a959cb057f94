//! The cross-check of the live view against the servers' own counts: every server announces
//! its client connections per account (`$SYS.SERVER.ACCOUNT.<acc>.CONNS`, on every change and
//! every 30 s while not zero). A view that disagrees with an announcement for longer than
//! [`HOLD`] has lost an event: a mismatch, treated as a gap. Plain data, no I/O.
//!
//! A server sends its count a moment *before* the connect or disconnect event that changed it
//! (seen on nats-server 2.15.1), and the counts come on a subscription of their own (the old
//! subject, see [`super::follow`]), so either may be handled first: a disagreement is only a
//! mismatch once it has lasted; the event that goes with it ends it within milliseconds.
//!
//! After a mismatch the announcement is no longer compared until the server announces that
//! account again (on its next change, or within 30 s): a count that stays different after the
//! sweep it started cannot make connwatch sweep in a loop.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long the view may disagree with a server's announced count before it is a mismatch.
pub const HOLD: Duration = Duration::from_secs(3);

/// The announced counts and how long the view has disagreed with each (see the module docs).
#[derive(Debug, Default)]
pub struct CrossCheck {
    /// (server id, account) → its announcement.
    announced: HashMap<(String, String), Announced>,
}

#[derive(Debug)]
struct Announced {
    /// The server's client connections in the account.
    clients: u64,
    /// Since when the view disagrees; `None` while it agrees.
    since: Option<Instant>,
    /// Compared with the view (false after a mismatch, until the next announcement).
    armed: bool,
}

/// A server's count the view disagreed with for [`HOLD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Server id.
    pub server_id: String,
    /// Account.
    pub account: String,
    /// What the server announced.
    pub announced: u64,
    /// What the view holds.
    pub viewed: u64,
}

impl CrossCheck {
    /// Takes in a server's announced client connections for one account.
    pub fn announce(&mut self, server_id: &str, account: &str, clients: u64) {
        match self
            .announced
            .get_mut(&(server_id.to_string(), account.to_string()))
        {
            Some(a) => {
                a.clients = clients;
                a.armed = true;
            }
            None => {
                self.announced.insert(
                    (server_id.to_string(), account.to_string()),
                    Announced {
                        clients,
                        since: None,
                        armed: true,
                    },
                );
            }
        }
    }

    /// Compares every announcement with the view (`viewed(server id, account)`, only for the
    /// servers it `holds`) at `now`; returns the disagreements that have lasted [`HOLD`]. While
    /// the view is not `complete` nothing is compared (a sweep is on its way anyway).
    pub fn check(
        &mut self,
        now: Instant,
        complete: bool,
        holds: impl Fn(&str) -> bool,
        viewed: impl Fn(&str, &str) -> u64,
    ) -> Vec<Mismatch> {
        let mut out = Vec::new();
        for ((server_id, account), a) in &mut self.announced {
            if !complete || !a.armed || !holds(server_id) {
                a.since = None;
                continue;
            }
            let v = viewed(server_id, account);
            if v == a.clients {
                a.since = None;
                continue;
            }
            let since = *a.since.get_or_insert(now);
            if now.duration_since(since) >= HOLD {
                a.since = None;
                a.armed = false;
                out.push(Mismatch {
                    server_id: server_id.clone(),
                    account: account.clone(),
                    announced: a.clients,
                    viewed: v,
                });
            }
        }
        out.sort_by(|a, b| (&a.server_id, &a.account).cmp(&(&b.server_id, &b.account)));
        out
    }

    /// Forgets the announcements of servers no longer `known` (gone, or restarted: a new id).
    pub fn retain_servers(&mut self, known: impl Fn(&str) -> bool) {
        self.announced.retain(|(server_id, _), _| known(server_id));
    }

    /// The client connections each server announced, summed over its accounts.
    pub fn announced_by_server(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((server_id, _), a) in &self.announced {
            *out.entry(server_id.clone()).or_default() += a.clients;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_disagreement_is_a_mismatch_only_once_it_lasted() {
        let t = Instant::now();
        let mut x = CrossCheck::default();
        x.announce("S1", "APP", 5);
        let view = |n: u64| move |_: &str, _: &str| n;
        // The count arrives before the event that changed it: a moment off, then equal.
        assert!(x.check(at(t, 0), true, |_| true, view(4)).is_empty());
        assert!(x.check(at(t, 100), true, |_| true, view(5)).is_empty());
        // Off again, for less than HOLD, then equal: nothing.
        assert!(x.check(at(t, 200), true, |_| true, view(4)).is_empty());
        assert!(x.check(at(t, 3100), true, |_| true, view(5)).is_empty());
        // Off for HOLD: one mismatch, with both numbers.
        assert!(x.check(at(t, 4000), true, |_| true, view(6)).is_empty());
        assert!(x.check(at(t, 6999), true, |_| true, view(6)).is_empty());
        assert_eq!(
            x.check(at(t, 7000), true, |_| true, view(6)),
            vec![Mismatch {
                server_id: "S1".into(),
                account: "APP".into(),
                announced: 5,
                viewed: 6,
            }]
        );
        // Not again until the server announces the account again.
        assert!(x.check(at(t, 20_000), true, |_| true, view(6)).is_empty());
        x.announce("S1", "APP", 5);
        assert!(x.check(at(t, 20_100), true, |_| true, view(6)).is_empty());
        assert_eq!(x.check(at(t, 23_100), true, |_| true, view(6)).len(), 1);
    }

    #[test]
    fn nothing_is_compared_while_the_view_is_incomplete_or_for_a_server_it_does_not_hold() {
        let t = Instant::now();
        let mut x = CrossCheck::default();
        x.announce("S1", "APP", 5);
        x.announce("S2", "APP", 1);
        let zero = |_: &str, _: &str| 0;
        assert!(x.check(at(t, 0), false, |_| true, zero).is_empty());
        assert!(x.check(at(t, 5000), false, |_| true, zero).is_empty());
        // Complete again: the clock starts now, not at the first look.
        assert!(x.check(at(t, 5100), true, |s| s == "S1", zero).is_empty());
        let m = x.check(at(t, 8100), true, |s| s == "S1", zero);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].server_id, "S1");
    }

    #[test]
    fn announcements_sum_per_server_and_go_with_their_server() {
        let mut x = CrossCheck::default();
        x.announce("S1", "APP", 5);
        x.announce("S1", "SYS", 2);
        x.announce("S1", "APP", 4);
        x.announce("S2", "APP", 1);
        assert_eq!(
            x.announced_by_server(),
            BTreeMap::from([("S1".into(), 6), ("S2".into(), 1)])
        );
        x.retain_servers(|s| s == "S2");
        assert_eq!(x.announced_by_server(), BTreeMap::from([("S2".into(), 1)]));
    }
}
