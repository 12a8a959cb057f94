//! The cap metrics (`connwatch_cap*`), registered by [`crate::metrics::Metrics::new`].

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::cap::UserKey;
use crate::metrics::UserLabels;

/// A label saying whether it was a dry run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabel {
    /// `true` or `false`.
    pub dry_run: String,
}

impl DryRunLabel {
    fn of(dry_run: bool) -> Self {
        Self {
            dry_run: dry_run.to_string(),
        }
    }
}

/// What cap enforcement counts.
#[derive(Default)]
pub struct CapMetrics {
    /// Caps enforced: bursts announced (`connection_cap_enforced`), by dry run.
    pub enforced: Family<DryRunLabel, Counter>,
    /// Connections closed by caps (dry run: that would have been), by dry run.
    pub closed: Family<DryRunLabel, Counter>,
    /// KICKs for caps that failed (tried again).
    pub failed: Counter,
    /// Closes put off by `enforce.max_kicks_per_sec`.
    pub deferred: Counter,
    /// Users over their cap that connwatch does not act on now (the view incomplete, its
    /// identity unknown, a start time unknown).
    pub held: Gauge,
    /// Per user: connections its cap closed within the last minute (churn at the cap).
    pub churn: Family<UserLabels, Gauge>,
    /// The users with a churn series.
    churn_users: Mutex<HashSet<UserKey>>,
}

impl CapMetrics {
    /// Registers them as `connwatch_cap*`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "caps_enforced",
            "Per-user caps enforced: bursts of closes announced (connection_cap_enforced), by dry_run",
            self.enforced.clone(),
        );
        r.register(
            "cap_connections_closed",
            "Connections closed by per-user caps (dry_run=true: would have been)",
            self.closed.clone(),
        );
        r.register(
            "cap_kicks_failed",
            "KICKs for per-user caps that failed (tried again)",
            self.failed.clone(),
        );
        r.register(
            "cap_kicks_deferred",
            "Closes put off by enforce.max_kicks_per_sec",
            self.deferred.clone(),
        );
        r.register(
            "cap_users_held",
            "Users over their cap not acted on now: the live view incomplete, connwatch's identity or a start time unknown",
            self.held.clone(),
        );
        r.register(
            "cap_churn",
            "Connections a user's cap closed within the last minute: clients reconnecting at the cap",
            self.churn.clone(),
        );
    }

    /// Counts a burst announced and its closes.
    pub fn burst(&self, dry_run: bool, closed: u64) {
        let l = DryRunLabel::of(dry_run);
        self.enforced.get_or_create(&l).inc();
        self.closed.get_or_create(&l).inc_by(closed);
    }

    /// Sets the churn series to `churn` (user → closes in the last minute); users no longer
    /// in it lose their series.
    pub fn set_churn<'a>(&self, churn: impl Iterator<Item = (&'a UserKey, u64)>) {
        let mut known = self.churn_users.lock().expect("churn users lock");
        let mut now = HashSet::new();
        for ((account, user), n) in churn {
            let l = UserLabels {
                account: account.clone(),
                user: user.clone(),
            };
            self.churn.get_or_create(&l).set(n as i64);
            now.insert((account.clone(), user.clone()));
        }
        for (account, user) in known.difference(&now) {
            self.churn.remove(&UserLabels {
                account: account.clone(),
                user: user.clone(),
            });
        }
        *known = now;
    }
}
