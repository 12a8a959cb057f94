//! The service's side of the live census: sweeps reconcile it, and live rounds evaluate it
//! between sweeps (the events alone), reading a user's details before its finding fires.

use chrono::Utc;
use tracing::info;

use super::{Gathered, Service};
use crate::live::{read, Live, SyncId};
use crate::rules::{key_of, Kind};
use crate::snapshot::Snapshot;
use crate::topology;

/// Users read in detail (CONNZ by `acc` and `user`) in one live round, at most.
const MAX_READS_PER_ROUND: usize = 16;

impl Service {
    /// Whether a tick of `sweep.interval` may be skipped: the live census is complete and the
    /// last sweep started less than `live.reconcile_interval` ago.
    pub(super) fn reconcile_not_due(&self) -> bool {
        let Some(live) = &self.live else {
            return false;
        };
        if live
            .view
            .lock()
            .expect("live view lock")
            .incomplete()
            .is_some()
        {
            return false;
        }
        self.last_started
            .as_ref()
            .is_some_and(|(t, _)| t.elapsed() < self.config.live.reconcile_interval)
    }

    /// Reconciles the live view with a sweep begun at `sync`; returns the view as the round's
    /// snapshot (the sweep's servers, missing and errors; the live connections).
    pub(super) fn reconcile(&mut self, live: Live, sync: SyncId, mut snap: Snapshot) -> Snapshot {
        let mut view = live.view.lock().expect("live view lock");
        view.reconcile(sync, &snap);
        let now = snap.started.unwrap_or_else(Utc::now);
        let mut out = view.snapshot(&snap, now);
        out.duration = snap.duration;
        out.requests = snap.requests;
        out.pages = snap.pages;
        out.bytes = snap.bytes;
        out.bad_replies = snap.bad_replies;
        snap.connections = Vec::new();
        self.last_sweep_meta = snap;
        out
    }

    /// A live round: the census of the live view, after reading in detail every user the events
    /// took over its threshold that is not firing yet (so the advisory has its suspects and
    /// diagnosis). `None` before the first sweep.
    pub(super) async fn gather_live(&mut self) -> Option<Gathered> {
        let live = self.live.clone()?;
        self.last_started.as_ref()?;
        let system_account = self.session.system_account.clone();
        let build = |live: &Live, meta: &Snapshot| {
            let snap = live
                .view
                .lock()
                .expect("live view lock")
                .snapshot(meta, Utc::now());
            let census = topology::census_of(&snap, system_account.as_deref(), &self.config.detect);
            (snap, census)
        };
        let (mut snap, mut census) = build(&live, &self.last_sweep_meta);
        let crossing: Vec<(String, String, u64)> = census
            .users
            .iter()
            .filter(|u| u.over_threshold)
            .filter(|u| {
                let key = key_of(
                    Kind::ExcessiveUserConnections,
                    &[u.account.clone(), u.user.clone()],
                );
                !self.state.findings.active.contains_key(&key)
            })
            .take(MAX_READS_PER_ROUND)
            .map(|u| (u.account.clone(), u.user.clone(), u.connections))
            .collect();
        if !crossing.is_empty() {
            let timeout = self
                .config
                .sweep
                .timeout
                .min(std::time::Duration::from_secs(1));
            let reads = crossing.iter().map(|(account, user, n)| {
                read::read_user(&self.session.system, &live.view, account, user, *n, timeout)
            });
            let answered = futures::future::join_all(reads).await;
            info!(users = crossing.len(), servers = ?answered, "live census: users over their threshold read in detail");
            (snap, census) = build(&live, &self.last_sweep_meta);
        }
        // Before anything may resolve from the events, every server must still answer: a server
        // frozen since the last probe could hold connections the events do not show.
        if !self.state.findings.active.is_empty() && snap.gap.is_none() {
            let timeout = self
                .config
                .sweep
                .timeout
                .min(self.config.live.probe_interval);
            if !live
                .confirm_servers(&self.session.system, &self.metrics, timeout)
                .await
            {
                (snap, census) = build(&live, &self.last_sweep_meta);
            }
        }
        let l = &self.last_lookups;
        Some(Gathered {
            snap,
            census,
            churn: l.churn.clone(),
            unknown_accounts: l.unknown_accounts.clone(),
            unknown_servers: l.unknown_servers.clone(),
            generation: self.health.generation(),
            swept: false,
        })
    }
}
