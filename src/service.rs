//! `connwatch run`: sweep on a schedule, turn each census into findings, announce them.
//!
//! One loop, one sweep at a time: a sweep still running when the next is due delays it (the
//! missed ticks are skipped and counted), never doubles it. A failed sweep is logged and
//! counted; NATS reconnects on its own. On shutdown the in-flight sweep is cancelled, queued
//! advisories are flushed and the client drained.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::advisory::publisher::{Publisher, PublisherStats};
use crate::advisory::{self, Completeness};
use crate::app::{open_session, AppError, Session};
use crate::census::{self, Census};
use crate::config::Config;
use crate::kick::executor::Outcome;
use crate::kick::{self, KickInputs, Own};
use crate::lifecycle::State as FindingState;
use crate::rules::diagnosis::churn;
use crate::rules::{self, Context, ServerLoad};
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::sweep::{self, Sweeper};

/// At most this many excessive users get their closed connections read per sweep.
const MAX_CHURN_LOOKUPS: usize = 10;
/// Account and server limits are read again after this long.
const LIMITS_REFRESH: Duration = Duration::from_secs(300);
/// How long shutdown waits for queued advisories.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// Counters of the service, for logs and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sweeps run.
    pub sweeps: AtomicU64,
    /// Sweeps that failed as a whole.
    pub sweeps_failed: AtomicU64,
    /// Sweeps that were partial.
    pub sweeps_partial: AtomicU64,
    /// Sweeps skipped because the previous one ran past their start.
    pub sweeps_skipped: AtomicU64,
    /// Advisory publishing counters.
    pub advisories: Arc<PublisherStats>,
    /// Kicks sent and confirmed.
    pub kicks_sent: AtomicU64,
    /// Would-be kicks announced in dry run.
    pub kicks_dry_run: AtomicU64,
    /// Kicks that failed.
    pub kicks_failed: AtomicU64,
    /// Kicked clients seen coming back.
    pub kicks_ineffective: AtomicU64,
}

/// Limits read from the cluster, refreshed now and then.
#[derive(Default)]
struct Limits {
    accounts: HashMap<String, Option<u64>>,
    servers: HashMap<String, u64>,
    read_at: Option<Instant>,
}

/// The service's state between sweeps.
struct Service {
    config: Config,
    session: Session,
    sweeper: Sweeper,
    state: State,
    publisher: Publisher,
    stats: Arc<Stats>,
    limits: Limits,
    last_sweep: Option<DateTime<Utc>>,
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<(), AppError> {
    if config.state.file.is_none() {
        warn!("state.file is not set: firing findings are announced again after a restart");
    }
    let session = open_session(&config).await?;
    let state = State::load_or_default(config.state.file.as_deref());
    let sweeper = Sweeper::new(session.system.clone(), &config.sweep, state.servers.clone());
    let publisher = Publisher::spawn(
        session.system.client().clone(),
        &config.advisory,
        stats.advisories.clone(),
    );
    info!(
        interval = %humantime::format_duration(config.sweep.interval),
        firing = state.findings.active.len(),
        subject_prefix = %config.advisory.subject_prefix,
        "connwatch running"
    );
    let mut svc = Service {
        config,
        session,
        sweeper,
        state,
        publisher,
        stats,
        limits: Limits::default(),
        last_sweep: None,
    };
    let interval = svc.config.sweep.interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        tokio::select! {
            _ = svc.round() => {}
            _ = shutdown.cancelled() => {
                info!("shutdown: in-flight sweep cancelled");
                break;
            }
        }
        let overran = (started.elapsed().as_nanos() / interval.as_nanos().max(1)) as u64;
        if overran > 0 {
            svc.stats
                .sweeps_skipped
                .fetch_add(overran, Ordering::Relaxed);
            warn!(
                skipped = overran,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sweep ran past the next start: skipped"
            );
        }
    }
    svc.stop().await;
    Ok(())
}

impl Service {
    /// One sweep and everything that follows from it.
    async fn round(&mut self) {
        self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        let snap = match self.sweeper.sweep().await {
            Ok(s) => s,
            Err(e) => {
                self.stats.sweeps_failed.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "sweep failed");
                return;
            }
        };
        let now = snap.started.unwrap_or_else(Utc::now);
        let complete = !snap.partial();
        if !complete {
            self.stats.sweeps_partial.fetch_add(1, Ordering::Relaxed);
        }
        let census = census::build(
            &snap.connections,
            self.session.system_account.as_deref(),
            &self.config.detect,
        );
        if complete {
            // Partial sweeps undercount: only complete ones make the trend.
            self.state
                .history
                .record(&census, now, self.config.detect.growth_window);
        }
        self.refresh_limits(&snap, &census).await;
        let churn = self.churn(&snap, &census, now).await;
        let ctx = Context {
            history: Some(&self.state.history),
            churn,
            account_limits: self
                .limits
                .accounts
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), (*v)?)))
                .collect(),
            servers: snap
                .servers
                .iter()
                .map(|s| ServerLoad {
                    name: s.name.clone(),
                    id: s.id.clone(),
                    connections: s.connections,
                    max_connections: self.limits.servers.get(&s.name).copied(),
                })
                .collect(),
        };
        let findings = rules::evaluate(&census, &self.config.detect, &ctx);
        let events =
            self.state
                .findings
                .step(&findings, complete, now, self.config.advisory.renotify);
        let sweep = Completeness::of(&snap);
        if self.config.kick.enabled {
            self.kicks(&snap, &census, complete, now, &sweep).await;
        }
        for e in &events {
            let a =
                advisory::from_event(&self.config.advisory.subject_prefix, e, &sweep, Utc::now());
            let verb = match (e.state, e.renotify) {
                (FindingState::Resolved, _) => "resolved",
                (_, true) => "still firing",
                _ => "firing",
            };
            info!(kind = e.finding.kind.name(), subject = %a.subject, id = %a.id, "finding {verb}");
            self.publisher.enqueue(a);
        }
        self.state.servers = self.sweeper.known().clone();
        self.state.save_to(self.config.state.file.as_deref());
        self.last_sweep = Some(now);
        info!(
            findings = findings.len(),
            firing = self.state.findings.active.len(),
            events = events.len(),
            queued = self.publisher.queued(),
            published = self.stats.advisories.published.load(Ordering::Relaxed),
            dropped = self.stats.advisories.dropped.load(Ordering::Relaxed),
            partial = !complete,
            "round done"
        );
    }

    /// Reports kicked clients that came back, then kicks (or, in dry run, announces) the
    /// connections the policy allows.
    async fn kicks(
        &mut self,
        snap: &Snapshot,
        census: &Census,
        complete: bool,
        now: DateTime<Utc>,
        sweep: &Completeness,
    ) {
        let cfg = &self.config.kick;
        let prefix = &self.config.advisory.subject_prefix;
        for r in self.state.kicked.observe(&snap.connections, now, cfg) {
            self.stats.kicks_ineffective.fetch_add(1, Ordering::Relaxed);
            warn!(account = %r.account, user = %r.user, name = %r.name, ip = %r.ip, returns = r.returns, given_up = r.given_up, "kicked client came back");
            self.publisher
                .enqueue(advisory::kick_ineffective(prefix, &r, sweep, Utc::now()));
        }
        let client = self.session.system.client();
        let info = client.server_info();
        let own = Own {
            server_id: info.server_id.clone(),
            cid: info.client_id,
        };
        let plans = kick::plan(&KickInputs {
            connections: &snap.connections,
            census,
            complete,
            cfg,
            system_account: self.session.system_account.as_deref(),
            own: Some(&own),
            kicked: &self.state.kicked,
            now,
        });
        if plans.is_empty() {
            return;
        }
        let outcomes = if cfg.dry_run {
            vec![None; plans.len()]
        } else {
            kick::executor::kick_all(&self.session.system, &plans, cfg.timeout)
                .await
                .into_iter()
                .map(Some)
                .collect()
        };
        let mut sent = Vec::new();
        for (plan, outcome) in plans.iter().zip(&outcomes) {
            let (result, error) = match outcome {
                None => ("would_kick", None),
                Some(o @ Outcome::Failed(e)) => (o.result(), Some(e.as_str())),
                Some(o) => (o.result(), None),
            };
            let counter = match outcome {
                None => &self.stats.kicks_dry_run,
                Some(Outcome::Failed(_)) => &self.stats.kicks_failed,
                Some(_) => &self.stats.kicks_sent,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if matches!(outcome, Some(Outcome::Kicked)) {
                sent.push(plan.clone());
            }
            info!(server = %plan.server, cid = plan.cid, account = %plan.account, user = %plan.user, result, "kick");
            let a = advisory::kicked(
                prefix,
                plan,
                "excessive_user_connections",
                result,
                error,
                sweep,
                Utc::now(),
            );
            self.publisher.enqueue(a);
        }
        self.state.kicked.record(&sent, now);
    }

    /// Closed connections since the last sweep, for the users over their threshold.
    async fn churn(
        &self,
        snap: &Snapshot,
        census: &Census,
        now: DateTime<Utc>,
    ) -> HashMap<(String, String), rules::diagnosis::Churn> {
        let Some(since) = self.last_sweep else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for u in census
            .users
            .iter()
            .filter(|u| u.over_threshold)
            .take(MAX_CHURN_LOOKUPS)
        {
            let closed = sweep::closed_connections(
                &self.session.system,
                &u.account,
                &u.user,
                snap.servers.len().max(1),
                self.config.sweep.timeout,
            )
            .await;
            out.insert(
                (u.account.clone(), u.user.clone()),
                churn(&closed, since, now),
            );
        }
        out
    }

    /// Reads account limits (operator mode JWTs) and servers' `max_connections` when stale.
    async fn refresh_limits(&mut self, snap: &Snapshot, census: &Census) {
        let stale = self
            .limits
            .read_at
            .is_none_or(|t| t.elapsed() >= LIMITS_REFRESH);
        let Some(server) = snap.servers.first() else {
            return;
        };
        let timeout = self.config.sweep.timeout;
        if stale {
            self.limits.servers =
                sweep::server_limits(&self.session.system, snap.servers.len(), timeout).await;
            self.limits.accounts.clear();
            self.limits.read_at = Some(Instant::now());
        }
        let mut accounts: Vec<&str> = census.users.iter().map(|u| u.account.as_str()).collect();
        accounts.sort_unstable();
        accounts.dedup();
        for account in accounts {
            if !self.limits.accounts.contains_key(account) {
                let limit =
                    sweep::account_limit(&self.session.system, &server.id, account, timeout).await;
                self.limits.accounts.insert(account.to_string(), limit);
            }
        }
    }

    /// Flushes advisories, saves state and drains the client.
    async fn stop(self) {
        let left = self.publisher.shutdown(SHUTDOWN_FLUSH).await;
        if left > 0 {
            warn!(
                unpublished = left,
                "shutdown: advisories could not be published in time"
            );
        }
        self.state.save_to(self.config.state.file.as_deref());
        if let Err(e) = self.session.system.client().drain().await {
            warn!(error = %e, "drain failed");
        }
        info!("connwatch stopped");
    }
}
