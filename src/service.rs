//! `connwatch run`: sweep on a schedule, turn each census into findings, announce them.
//!
//! One loop, one sweep at a time: a sweep still running when the next is due delays it (the
//! missed ticks are skipped and counted), never doubles it. A failed sweep is logged and
//! counted; NATS reconnects on its own.
//!
//! A round has two phases, and shutdown treats them differently:
//! 1. `Service::gather` (the sweep, the limit and churn lookups, the identity retry) only
//!    reads: it may be cancelled anywhere, nothing is decided yet (a sweep that ends records
//!    the servers that answered in the state; a cancelled one changes nothing).
//! 2. `Service::act` takes the decisions (lifecycle, kicks) and does their bookkeeping; it is
//!    never cancelled. Its only waits are the kick requests, each within `kick.timeout`; once
//!    shutdown is requested no new kick starts, so shutdown waits for at most
//!    `kick.concurrency` kicks per server ([`crate::kick::executor::execute`]). Every event, and every kick
//!    sent with its outcome, is enqueued and remembered, and the state saved, before shutdown
//!    proceeds.
//!
//! On shutdown the queued advisories are then flushed, the state saved and the client drained.

mod enforce;
mod ha;
mod kicks;
mod live;
mod lookups;
mod manual;
mod reload;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::advisory::publisher::Publisher;
use crate::advisory::{self, Completeness};
use crate::api;
use crate::census::Census;
use crate::config::Config;
use crate::config::ConfigErrors;
use crate::error::AppError;
use crate::lifecycle::State as FindingState;
use crate::live::TakeLists;
use crate::metrics;
use crate::metrics::{Health, Metrics};
use crate::report::SweepSummary;
use crate::rules::{self, Context, ServerLoad};
use crate::session::{self, Session};
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::sweep::{Collecting, Sweeper};
use crate::topology;

/// How long shutdown waits for queued advisories.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);
/// How long shutdown waits for the client to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a reload comes from: a signal (SIGHUP) and how to load the configuration again.
pub struct Reload {
    /// One message per reload request.
    pub requests: mpsc::Receiver<()>,
    /// Loads and validates the configuration as at start (same file, environment, flags).
    pub load: Box<dyn Fn() -> Result<Config, ConfigErrors> + Send>,
}

/// What a round gathered, before anything is decided.
struct Gathered {
    snap: Snapshot,
    census: Census,
    churn: HashMap<(String, String), rules::diagnosis::Churn>,
    /// Accounts and servers whose limit lookup failed this round.
    unknown_accounts: HashSet<String>,
    unknown_servers: HashSet<String>,
    /// The reconnect count when the sweep started (see [`Health::complete_sweep`]).
    generation: u64,
    /// Whether a sweep ran (else a live round: the live census alone).
    swept: bool,
}

/// The service's state between sweeps.
struct Service {
    config: Config,
    session: Session,
    sweeper: Sweeper,
    state: State,
    publisher: Publisher,
    /// Whether this replica acts (`[ha]`); always without it.
    gate: crate::ha::Gate,
    /// Whether it acted last round (a new leader takes the bucket's state first).
    led: bool,
    /// What this round decided to announce (`[ha]`): saved in the bucket's outbox, then published.
    outbox: Vec<advisory::Advisory>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    latest: api::Shared,
    limits: lookups::Limits,
    last_sweep: Option<DateTime<Utc>>,
    /// When the last sweep started, and its summary (`None`: it failed).
    last_started: Option<(Instant, Option<SweepSummary>)>,
    /// Shutdown: no new kicks are started once it is cancelled.
    stop: CancellationToken,
    /// The live census, with `live.enabled`.
    live: Option<crate::live::Live>,
    /// What the last sweep said about the servers (its connections are in the live view).
    last_sweep_meta: Snapshot,
    /// What the last sweep's lookups found, reused by live rounds.
    last_lookups: LookupResults,
    /// When the growth history last took a sample.
    last_history: Option<DateTime<Utc>>,
    /// Per-user caps between rounds.
    caps: enforce::Caps,
    /// By-hand kicks already recorded from their audits.
    heard: manual::Heard,
}

/// The churn and unknown limits a sweep round looked up, kept for the live rounds after it.
#[derive(Default, Clone)]
struct LookupResults {
    churn: HashMap<(String, String), rules::diagnosis::Churn>,
    unknown_accounts: HashSet<String>,
    unknown_servers: HashSet<String>,
}

/// Runs until `shutdown` is cancelled; reloads on `reload` requests.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reload: Option<Reload>,
    metrics: Arc<Metrics>,
) -> Result<(), AppError> {
    if config.state.file.is_none() {
        warn!("state.file is not set: firing findings are announced again after a restart");
    }
    // The state file's one writer while this runs (a second `run` on it does not start).
    let _state_lock = match config.state.file.as_deref() {
        Some(path) => Some(
            crate::state::StateLock::acquire(path, "connwatch run").map_err(|e| {
                AppError::Startup {
                    setting: "state.file",
                    value: format!("{:?}", path.display().to_string()),
                    what: "the state file",
                    source: Box::new(e),
                }
            })?,
        ),
        None => None,
    };
    // Bound before connecting: a port in use is a start-up failure, not a silent gap.
    let listener = match config.metrics.listen.as_str() {
        "" => None,
        listen => {
            let addr = listen
                .parse()
                .map_err(|e| metrics_startup_error("metrics.listen", listen, e))?;
            Some(
                metrics::bind(addr)
                    .await
                    .map_err(|e| metrics_startup_error("metrics.listen", listen, e))?,
            )
        }
    };
    let session = session::open(&config, Some(metrics.connection_events())).await?;
    let client = session.system.client().clone();
    let state = State::load_or_default(config.state.file.as_deref());
    let sweeper = Sweeper::new(session.system.clone(), &config.sweep);
    let health = Arc::new(Health::new(
        client.clone(),
        config.sweep_cadence(),
        metrics.reconnects.clone(),
    ));
    // With `[ha]`, only the lease holder acts; stopped after the last advisories are flushed.
    let ha_stop = CancellationToken::new();
    let (gate, ha_task) =
        crate::ha::start(&config, metrics.clone(), health.clone(), ha_stop.clone()).await?;
    if ha_task.is_none() {
        metrics.leader(true, Utc::now());
    }
    // With `advisory.jetstream`, advisories go through the `[jetstream]` connection.
    let advisories = crate::jetstream::advisory_client(&config, None).await?;
    let advisories = advisories.unwrap_or_else(|| client.clone());
    // By-hand kicks' audits, for the kick memory: on the connection the advisories go through.
    let mut by_hand = manual::follow(&config, &session.system, &advisories).await?;
    let publisher = Publisher::spawn_gated(
        advisories,
        &config.advisory,
        metrics.advisories.clone(),
        gate.clone(),
    );
    let latest = api::Shared::default();
    let (commands_tx, mut commands) = mpsc::channel(64);
    let helpers = CancellationToken::new();
    let mut tasks = Vec::new();
    if config.service.enabled {
        let endpoints = api::start(
            &session.system,
            &config.service,
            &gate,
            config.sweep.timeout,
        )
        .await
        .map_err(|e| AppError::Startup {
            setting: "service.enabled",
            value: format!("true, service.prefix = {:?}", config.service.prefix),
            what: "the NATS micro service endpoints",
            source: e,
        })?;
        let (l, stop) = (latest.clone(), helpers.clone());
        let timeout = config.sweep.timeout;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = endpoints.serve(l, commands_tx, timeout, stop).await {
                error!(error = %e, "service endpoints failed");
            }
        }));
    }
    if let Some(listener) = listener {
        let (m, h, stop) = (metrics.clone(), health.clone(), helpers.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, m, h, stop).await {
                error!(error = %e, "metrics listener failed");
            }
        }));
    }
    note_identity(&session, &config, &metrics, &health);
    let live = if config.live.enabled {
        let (live, task) = crate::live::start(
            session.system.clone(),
            config.live.clone(),
            config.sweep.timeout.min(config.live.heartbeat_margin),
            metrics.clone(),
            helpers.clone(),
        )
        .await
        .map_err(|e| AppError::Startup {
            setting: "live.enabled",
            value: "true".into(),
            what: "the subscription to connect and disconnect events",
            source: e,
        })?;
        tasks.push(task);
        Some(live)
    } else {
        None
    };
    info!(
        interval = %humantime::format_duration(config.sweep.interval),
        firing = state.findings.active.len(),
        subject_prefix = %config.advisory.subject_prefix,
        kick = if !config.kick.enabled { "off" } else if config.kick.dry_run { "dry run" } else { "on" },
        "connwatch running"
    );
    let mut svc = Service {
        config,
        session,
        sweeper,
        state,
        publisher,
        led: !gate.replicated(),
        gate,
        outbox: Vec::new(),
        metrics,
        health,
        latest,
        limits: lookups::Limits::default(),
        last_sweep: None,
        last_started: None,
        stop: shutdown.clone(),
        live,
        last_sweep_meta: Snapshot::default(),
        last_lookups: LookupResults::default(),
        last_history: None,
        caps: enforce::Caps::default(),
        heard: manual::Heard::default(),
    };
    let (changed, resync) = match &svc.live {
        Some(l) => (l.changed.clone(), l.resync.clone()),
        None => Default::default(),
    };
    let mut last_live = Instant::now();
    let mut due = svc.next_sweep();
    let (mut reloads, loader) = match reload {
        Some(r) => (Some(r.requests), Some(r.load)),
        None => (None, None),
    };
    let shared = svc.metrics.sweep_requests_shared.clone();
    loop {
        // Requests to the `sweep` endpoint waiting for this round's sweep.
        let mut waiting = Vec::new();
        tokio::select! {
            // In this order: under churn the live rounds (last) must never starve a sweep.
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
            _ = resync.notified(), if svc.live.is_some() => {
                info!("live census gap: sweeping now");
            }
            Some(api::Command::SweepNow(tx)) = commands.recv() => {
                if let Some(last) = svc.too_recent() {
                    shared.inc();
                    let _ = tx.send(last);
                    continue;
                }
                waiting.push(tx);
            }
            Some(()) = async { reloads.as_mut()?.recv().await } => {
                if let Some(load) = &loader {
                    info!("reloading the configuration");
                    svc.reload(load());
                    due = svc.next_sweep();
                }
                continue;
            }
            Some(m) = by_hand.next() => { svc.heard_kick(&m); continue; }
            _ = enforce::wake(svc.caps.next_wake(&svc.config.enforce)) => { svc.enforce_caps().await; continue; }
            _ = changed.notified(), if svc.live.is_some() => {
                // Rounds from the events, at most every `live.evaluate_every`.
                tokio::time::sleep_until(last_live + svc.config.live.evaluate_every).await;
                last_live = Instant::now();
                svc.enforce_caps().await; // first: the reads below may take a while
                if let Some(g) = svc.gather_live().await {
                    svc.act(g).await;
                    due = svc.next_sweep(); // a finding that fired may want kicks sooner
                }
                continue;
            }
        }
        let started = Instant::now();
        let gathered = {
            let gather = svc.gather();
            tokio::pin!(gather);
            loop {
                tokio::select! {
                    g = &mut gather => break Some(g),
                    _ = shutdown.cancelled() => break None,
                    // Requests during the sweep share it.
                    Some(api::Command::SweepNow(tx)) = commands.recv() => {
                        shared.inc();
                        waiting.push(tx);
                    }
                }
            }
        };
        let Some(gathered) = gathered else {
            info!("shutdown: in-flight sweep cancelled");
            break;
        };
        // Decisions from here on: not cancelled, so every kick sent and every event is recorded.
        let summary = match gathered {
            Some(g) => Some(svc.act(g).await),
            None => None,
        };
        svc.last_started = Some((started, summary.clone()));
        svc.enforce_caps().await;
        for tx in waiting {
            let _ = tx.send(
                summary
                    .clone()
                    .ok_or_else(|| api::SweepRefused::Failed("sweep failed".into())),
            );
        }
        let interval = svc.sweep_every();
        due = svc.next_sweep();
        let overran = (started.elapsed().as_nanos() / interval.as_nanos().max(1)) as u64;
        if overran > 0 {
            svc.metrics.sweeps_skipped.inc_by(overran);
            warn!(
                skipped = overran,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sweep ran past the next start: skipped"
            );
        }
    }
    helpers.cancel();
    svc.stop().await;
    ha_stop.cancel();
    for t in tasks.into_iter().chain(ha_task) {
        let _ = t.await;
    }
    Ok(())
}

/// A start-up failure of the metrics listener (`setting` with its value).
fn metrics_startup_error(
    setting: &'static str,
    value: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> AppError {
    AppError::Startup {
        setting,
        value: format!("{value:?}"),
        what: "the metrics listener",
        source: Box::new(e),
    }
}

/// Publishes what connwatch knows of its identity: the metric, the log, and readiness (unready
/// while kicks are on, or caps are enforced, and it cannot tell which connections it must
/// never kick).
fn note_identity(session: &Session, config: &Config, metrics: &Metrics, health: &Health) {
    let refusal = session.kick_refusal();
    metrics.identity_known.set(i64::from(refusal.is_none()));
    let caps = config.enforce.enabled && !config.enforce.dry_run;
    health.set_not_ready(match &refusal {
        Some(why) if config.kick.enabled => Some(format!("kicks are on, but {why}")),
        Some(why) if caps => Some(format!("caps are enforced, but {why}")),
        _ => None,
    });
}

impl Service {
    /// Whether the round needs every connection one by one, not only the census: to kick, or
    /// to audit the kicks a dead leader left without an outcome.
    fn needs_connections(&self) -> bool {
        self.config.kick.enabled || !self.state.kicked.unfinished.is_empty()
    }

    /// An empty census with this round's rules (system account, `[detect]`).
    fn rules(&self) -> crate::census::Aggregate {
        crate::census::Aggregate::new(self.session.system_account.as_deref(), &self.config.detect)
    }

    /// The answer to a `sweep` request when the last sweep started less than
    /// `service.sweep_min_interval` ago: its summary, or when the next sweep is allowed.
    fn too_recent(&self) -> Option<Result<SweepSummary, api::SweepRefused>> {
        let (started, summary) = self.last_started.as_ref()?;
        let gap = self.config.service.sweep_min_interval;
        let since = started.elapsed();
        (since < gap).then(|| {
            summary.clone().ok_or(api::SweepRefused::TooSoon {
                retry_in: gap - since,
            })
        })
    }

    /// The first phase of a round: the identity retry, the sweep, the census, the limit and
    /// churn lookups; `None` when the sweep failed. Cancel-safe: it reads, caches lookups and
    /// hands servers' lists to the live view (each taken whole, its events since the sweep
    /// began applied again: a state the view may be in), so cancelling it anywhere (shutdown)
    /// loses nothing but the round.
    async fn gather(&mut self) -> Option<Gathered> {
        self.metrics.sweeps.inc();
        let generation = self.health.generation();
        self.session
            .refresh_identity(self.config.sweep.timeout.min(Duration::from_secs(5)))
            .await;
        note_identity(&self.session, &self.config, &self.metrics, &self.health);
        let sync = self
            .live
            .as_ref()
            .map(|l| l.view.lock().expect("live view lock").begin_sweep());
        // With the live view, a sweep lists compactly: the view takes the connections over one
        // at a time. Without it, it lists every connection only for what needs them one by one
        // (kicks, and the audit of a dead leader's kicks); otherwise it counts them.
        let collecting = if let (Some(l), Some(sync)) = (&self.live, sync) {
            Collecting::Live(Arc::new(TakeLists::new(l.view.clone(), sync)))
        } else if self.needs_connections() {
            Collecting::List
        } else {
            Collecting::Census(self.rules())
        };
        self.sweeper.collect(collecting);
        let snap = match self.sweeper.sweep(&mut self.state.servers).await {
            Ok(s) => s,
            Err(e) => {
                if let (Some(l), Some(sync)) = (&self.live, sync) {
                    l.view.lock().expect("live view lock").abandon(sync);
                }
                self.metrics.sweeps_failed.inc();
                warn!(error = %e, "sweep failed");
                return None;
            }
        };
        self.metrics.observe_sweep(&snap);
        let snap = match (&self.live, sync) {
            (Some(l), Some(sync)) => self.reconcile(l.clone(), sync, snap),
            _ => snap,
        };
        let census = topology::census_of(
            &snap,
            self.session.system_account.as_deref(),
            &self.config.detect,
        );
        let (unknown_accounts, unknown_servers) = self.refresh_limits(&snap, &census).await;
        let now = snap.started.unwrap_or_else(Utc::now);
        let churn = self.churn(&snap, &census, now).await;
        self.last_lookups = LookupResults {
            churn: churn.clone(),
            unknown_accounts: unknown_accounts.clone(),
            unknown_servers: unknown_servers.clone(),
        };
        Some(Gathered {
            snap,
            census,
            churn,
            unknown_accounts,
            unknown_servers,
            generation,
            swept: true,
        })
    }

    /// The second phase: the rules, the lifecycle, the kicks, the advisories, the state, the
    /// metrics; returns the sweep's summary. Not cancel-safe by design, so it is never
    /// cancelled: every event the lifecycle produces is enqueued, and every kick sent has its
    /// audit advisory enqueued and its memory recorded, before the state is saved. Its only
    /// waits are the kicks (each within `kick.timeout`; after shutdown, at most `kick.concurrency`
    /// per server).
    async fn act(&mut self, g: Gathered) -> SweepSummary {
        let Gathered {
            snap,
            census,
            churn,
            unknown_accounts,
            unknown_servers,
            generation,
            swept,
        } = g;
        let now = snap.started.unwrap_or_else(Utc::now);
        let complete = !snap.partial();
        if complete && swept {
            self.health.complete_sweep(generation);
        }
        // `[ha]`: a new leader first takes its predecessor's state, or does not act.
        let acting = self.gate.acting() && (self.led || self.take_over().await);
        self.led = acting;
        // Partial views undercount: only complete ones make the trend, one sample per
        // `sweep.interval` at most (live rounds come far more often).
        let sample_due = self
            .last_history
            .is_none_or(|t| (now - t).to_std().unwrap_or_default() >= self.config.sweep.interval);
        if complete && (swept || sample_due) {
            self.last_history = Some(now);
            self.state
                .history
                .record(&census, now, self.config.detect.growth_window);
        }
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
        let mut findings = rules::evaluate(&census, &self.config.detect, &ctx);
        findings.extend(self.refused_findings());
        findings.extend(rules::balance::evaluate(
            &snap,
            &census,
            &self.config.detect,
        ));
        let held = rules::held_keys(&census, &unknown_accounts, &unknown_servers);
        // A live round that would resolve asks every server first (none asked otherwise).
        let complete = if swept {
            complete
        } else {
            self.confirm_resolves(complete, &findings, &held).await
        };
        let events = self.state.findings.step_holding(
            &findings,
            complete,
            now,
            self.config.advisory.renotify,
            &held,
        );
        let sweep = Completeness::of(&snap);
        // The lifecycle has marked these notified: enqueue them before anything else can wait.
        // A follower (`[ha]`) only keeps its lifecycle warm: the leader announces.
        for e in events.iter().filter(|_| acting) {
            let a =
                advisory::from_event(&self.config.advisory.subject_prefix, e, &sweep, Utc::now());
            let verb = match (e.state, e.renotify) {
                (FindingState::Resolved, _) => "resolved",
                (_, true) => "still firing",
                _ => "firing",
            };
            info!(kind = e.finding.kind().name(), subject = %a.subject, id = %a.id, "finding {verb}");
            self.announce(a);
        }
        // Kicks a dead predecessor recorded without an outcome: audited once, on a complete sweep.
        if acting && swept && complete && snap.census.is_none() {
            self.recover_kicks(&snap.connections, now, &sweep);
        }
        // Kicks only after a sweep: their idle times and message counts come from it.
        if self.config.kick.enabled
            && swept
            && acting
            && self.gate.acting()
            && snap.census.is_none()
        {
            self.kicks(&snap, &census, complete, now, &sweep).await;
        }
        if swept || !events.is_empty() {
            self.state.save_to(self.config.state.file.as_deref());
            if acting && !self.save_and_release().await {
                self.led = false;
            }
        }
        if swept {
            self.last_sweep = Some(now);
        }
        self.metrics
            .observe(&snap, &census, &self.state.findings, &self.config.metrics);
        self.metrics
            .live_complete
            .set(i64::from(self.live.as_ref().is_some_and(|l| {
                l.view
                    .lock()
                    .expect("live view lock")
                    .incomplete()
                    .is_none()
            })));
        self.metrics
            .advisories_queued
            .set(self.publisher.queued() as i64);
        let summary = SweepSummary::of(&snap);
        *self.latest.write().expect("latest lock") = api::Latest {
            sweep: Some(summary.clone()),
            census,
            findings: self.state.findings.active.values().cloned().collect(),
        };
        if swept {
            info!(
                findings = findings.len(),
                firing = self.state.findings.active.len(),
                events = events.len(),
                queued = self.publisher.queued(),
                published = self.metrics.advisories.published.get(),
                dropped = self.metrics.advisories.dropped.get(),
                partial = !complete,
                "round done"
            );
        } else if !events.is_empty() {
            info!(
                events = events.len(),
                firing = self.state.findings.active.len(),
                connections = snap.connection_count(),
                partial = !complete,
                "live census: findings changed"
            );
        }
        summary
    }

    /// Flushes advisories, saves state and drains the client.
    async fn stop(self) {
        let left = self.publisher.shutdown_leaving(SHUTDOWN_FLUSH).await;
        if !left.is_empty() {
            warn!(
                unpublished = left.len(),
                "shutdown: advisories could not be published in time"
            );
        }
        // `[ha]`: saved in the bucket's outbox while this replica leads, for the next leader.
        if self.gate.replicated() && self.led && self.gate.acting() {
            self.gate.save_state(&self.state, &left).await;
        }
        self.state.save_to(self.config.state.file.as_deref());
        match tokio::time::timeout(DRAIN_TIMEOUT, self.session.system.client().drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "drain failed"),
            Err(_) => warn!("drain did not finish in time"),
        }
        info!("connwatch stopped");
    }
}
