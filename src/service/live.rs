//! The service's side of the live census: sweeps reconcile it, and live rounds evaluate it
//! between sweeps (the events alone), reading a user's details before its finding fires.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::info;

use super::{Gathered, Service};
use crate::live::{churn, read, Live, SyncId};
use crate::rules::diagnosis::Churn;
use crate::rules::{key_of, Finding, Kind};
use crate::snapshot::Snapshot;
use crate::topology;

/// Users read in detail (CONNZ by `acc` and `user`) in one live round, at most.
const MAX_READS_PER_ROUND: usize = 16;

impl Service {
    /// The time from a sweep's start to the next: `live.reconcile_interval` while the live
    /// view is complete; `sweep.interval` without the live census, or while its view is not
    /// complete (the pace of the retries), or while kicks are on and a user has too many
    /// connections (kicks are decided after a sweep: they follow a leak as soon as without the
    /// live census).
    pub(super) fn sweep_every(&self) -> Duration {
        let complete = self.live.as_ref().is_some_and(|l| {
            l.view
                .lock()
                .expect("live view lock")
                .incomplete()
                .is_none()
        });
        let kicks_wait = self.config.kick.enabled
            && self
                .state
                .findings
                .active
                .values()
                .any(|a| a.kind() == Kind::ExcessiveUserConnections);
        if complete && !kicks_wait {
            self.config.live.reconcile_interval
        } else {
            self.config.sweep.interval
        }
    }

    /// When the next sweep is due: `every` after the last one started (`None`: none yet, now).
    pub(super) fn next_sweep(&self) -> Instant {
        let now = Instant::now();
        self.last_started
            .as_ref()
            .map_or(now, |(t, _)| next_start(*t, self.sweep_every(), now))
    }

    /// Reconciles the live view with a sweep begun at `sync`; returns the view as the round's
    /// snapshot (the sweep's servers, missing and errors; the live connections).
    pub(super) fn reconcile(&mut self, live: Live, sync: SyncId, mut snap: Snapshot) -> Snapshot {
        live.heard(snap.servers.iter().map(|s| s.id.as_str()));
        let mut view = live.view.lock().expect("live view lock");
        if view.paused() {
            // Not following the events: the round works as without the live census, from the
            // sweep alone (a complete sweep resolves and may kick, as sweeps do), its
            // connections built from the compact list.
            let appeared = view.reconcile(sync, &mut snap);
            view.sweep_alone(&mut snap);
            drop(view);
            live.appeared(&self.metrics, &appeared);
            let connections = std::mem::take(&mut snap.connections);
            self.last_sweep_meta = snap.clone();
            snap.connections = connections;
            return snap;
        }
        // The view takes the sweep's connections over, then the sweep lets them go.
        let appeared = view.reconcile(sync, &mut snap);
        snap.connections = Vec::new();
        snap.compact = Default::default();
        let now = snap.started.unwrap_or_else(Utc::now);
        let mut out = if self.needs_connections() {
            view.snapshot(&snap, now)
        } else {
            view.counted(&snap, now, self.rules())
        };
        drop(view);
        live.appeared(&self.metrics, &appeared);
        out.duration = snap.duration;
        out.requests = snap.requests;
        out.pages = snap.pages;
        out.bytes = snap.bytes;
        out.bad_replies = snap.bad_replies;
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
        // A live round never kicks: its census is counted from the view, nothing copied.
        let rules = self.rules();
        let build = |live: &Live, meta: &Snapshot| {
            let snap =
                live.view
                    .lock()
                    .expect("live view lock")
                    .counted(meta, Utc::now(), rules.fork());
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
        let l = &self.last_lookups;
        Some(Gathered {
            snap,
            census,
            churn: self.merged_churn(),
            unknown_accounts: l.unknown_accounts.clone(),
            unknown_servers: l.unknown_servers.clone(),
            generation: self.health.generation(),
            swept: false,
        })
    }

    /// Asks every server for STATSZ now, within the sweep timeout and the heartbeat margin
    /// ([`Live::confirm_servers`]): whether each answered under the id the view holds.
    pub(super) async fn servers_confirmed(&self, live: &Live) -> bool {
        let timeout = self
            .config
            .sweep
            .timeout
            .min(self.config.live.heartbeat_margin);
        live.confirm_servers(&self.session.system, &self.metrics, timeout)
            .await
    }

    /// Whether a live round's view, `complete` so far, may resolve `active` findings absent from
    /// `findings`: when one would resolve, every server must still answer STATSZ first (a
    /// server frozen since its last heartbeat could hold connections the events do not show);
    /// a server that does not is a gap, and nothing resolves. While nothing would resolve (the
    /// findings that fire still fire), no request is sent.
    pub(super) async fn confirm_resolves(
        &self,
        complete: bool,
        findings: &[Finding],
        held: &HashSet<String>,
    ) -> bool {
        let Some(live) = self.live.as_ref().filter(|_| complete) else {
            return complete;
        };
        if !resolve_pending(self.state.findings.active.keys(), findings, held) {
            return true;
        }
        self.servers_confirmed(live).await
    }

    /// The churn for a live round: the events' of the last minute, and for the accounts whose
    /// events are not followed ([`churn::followed`]) what the last sweep read.
    fn merged_churn(&self) -> HashMap<(String, String), Churn> {
        let mut out: HashMap<(String, String), Churn> = self
            .last_lookups
            .churn
            .iter()
            .filter(|((account, _), _)| !churn::followed(account))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(self.live_churn().unwrap_or_default());
        out
    }

    /// The `connections_refused` findings of the live census's last window (none without it).
    pub(super) fn refused_findings(&self) -> Vec<Finding> {
        let Some(live) = &self.live else {
            return Vec::new();
        };
        let refused = live.refused.lock().expect("refusals lock");
        refused
            .findings(Utc::now())
            .into_iter()
            .map(Finding::ConnectionsRefused)
            .collect()
    }

    /// Every user's churn of the last minute from the live census's events; `None` without
    /// the live census (then closed connections are read after each sweep).
    pub(super) fn live_churn(&self) -> Option<HashMap<(String, String), Churn>> {
        let live = self.live.as_ref()?;
        let churn = live.churn.lock().expect("churn lock");
        Some(churn.all(Utc::now()))
    }
}

/// Whether one of the `active` findings' keys is neither among `findings` nor `held`: it would
/// resolve in a complete round.
pub(super) fn resolve_pending<'a>(
    mut active: impl Iterator<Item = &'a String>,
    findings: &[Finding],
    held: &HashSet<String>,
) -> bool {
    let firing: HashSet<String> = findings.iter().map(Finding::key).collect();
    active.any(|k| !firing.contains(k) && !held.contains(k))
}

/// The next start of a schedule every `every` from `started`: `started + every`, or when a
/// sweep ran past it, the next start after `now` (the missed ones are skipped, not bunched).
pub(super) fn next_start(started: Instant, every: Duration, now: Instant) -> Instant {
    let every = every.max(Duration::from_millis(1));
    let due = started + every;
    if due > now {
        return due;
    }
    let missed = (now - started).as_nanos() / every.as_nanos();
    started + every * (missed as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolve_is_pending_only_for_a_firing_key_neither_found_again_nor_held() {
        use crate::rules::ServerFinding;
        let f = |server: &str| {
            Finding::ServerConnectionPressure(ServerFinding {
                server: server.into(),
                server_id: format!("id-{server}"),
                connections: 95,
                max_connections: 100,
                ratio: 0.95,
            })
        };
        let (a, b) = (f("n1"), f("n2"));
        let active = [a.key(), b.key()];
        let none = HashSet::new();
        assert!(!resolve_pending(
            active.iter(),
            &[a.clone(), b.clone()],
            &none
        ));
        assert!(resolve_pending(
            active.iter(),
            std::slice::from_ref(&a),
            &none
        ));
        let held = HashSet::from([b.key()]);
        assert!(!resolve_pending(active.iter(), &[a], &held));
        assert!(!resolve_pending([].iter(), &[], &none));
    }

    #[test]
    fn the_next_sweep_is_every_after_the_last_start_and_skips_what_an_overrun_missed() {
        let t = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_start(t, s(30), t + s(1)), t + s(30));
        // Ran 40 s of a 30 s schedule: the start at 30 s is skipped, the next is at 60 s.
        assert_eq!(next_start(t, s(30), t + s(40)), t + s(60));
        assert_eq!(next_start(t, s(30), t + s(60)), t + s(90));
    }
}
