//! The live census: the servers' connect and disconnect events keep a view of every open
//! connection current between sweeps; sweeps reconcile it; gaps are noticed and say the view
//! is not complete.
//!
//! - [`view`]: the view itself, events → deltas, reconciliation, completeness (pure).
//! - [`read`]: one user's connections from every server, before a finding fires (I/O).
//! - this file: the task that follows the events and watches for gaps (I/O).
//!
//! Gaps, each counted in `connwatch_live_gaps_total{reason}` and followed by a sweep at once:
//! - `reconnect`: connwatch's own connection dropped or came back (events were not delivered);
//! - `slow_consumer`: connwatch's client dropped messages;
//! - `server_silent`: a server the view holds stopped answering the STATSZ probe;
//! - `server_new`: a server id the view does not hold answered (a new server, or a restart).

pub mod churn;
pub mod read;
pub mod refused;
pub mod view;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::nats::events::ClientEvent;
use crate::nats::wire::StatszReply;
use crate::nats::{parse, System, PING_STATSZ};
use crate::rules::refused::Refusals;
use churn::ChurnTracker;
pub use view::{Delta, LiveView, Scope, SyncId, UserKey};

/// Both event subjects in ONE subscription (`$SYS.ACCOUNT.<acc>.CONNECT|DISCONNECT`), so a
/// connection's connect and disconnect are handled in the order its server sent them.
const EVENTS: &str = "$SYS.ACCOUNT.*.*";
/// How long a probe waits for servers beyond the known ones (a new server).
const PROBE_LINGER: Duration = Duration::from_millis(50);
/// How often the task looks at connwatch's own connection (reconnects, slow consumers).
const CLIENT_CHECK: Duration = Duration::from_millis(100);

/// What the service shares with the live task.
#[derive(Clone)]
pub struct Live {
    /// The view.
    pub view: Arc<Mutex<LiveView>>,
    /// Woken when an event changed a user's count.
    pub changed: Arc<Notify>,
    /// Woken on a gap: a sweep should start at once.
    pub resync: Arc<Notify>,
    /// Servers of the view that did not answer the last probe.
    silent: Arc<Mutex<HashSet<String>>>,
    /// Refused connections in the last `live.refused_window` ([`refused`]).
    pub refused: Arc<Mutex<Refusals>>,
    /// Connects and disconnects per user in the last minute ([`churn`]).
    pub churn: Arc<Mutex<ChurnTracker>>,
}

impl Live {
    /// Asks every server for STATSZ now and notes the gaps it shows (a server silent, new or
    /// restarted, or answering again). Returns whether every server of the view answered.
    pub async fn confirm_servers(
        &self,
        system: &System,
        metrics: &Metrics,
        timeout: Duration,
    ) -> bool {
        let known = self.view.lock().expect("live view lock").servers().len();
        let answered = probe_servers(system, known, timeout).await;
        self.note_probe(metrics, &answered)
    }

    /// Compares a probe's answers with the view's servers; gaps for every difference that is
    /// new. Returns whether every server of the view answered and none is new.
    fn note_probe(&self, metrics: &Metrics, answered: &[(String, String)]) -> bool {
        let known = self.view.lock().expect("live view lock").servers().clone();
        let mut whole = true;
        for (id, name) in answered {
            if !known.contains_key(id) {
                whole = false;
                self.gap(
                    metrics,
                    "server_new",
                    format!("server {name} ({id}) is new or restarted"),
                );
            }
        }
        let heard: HashSet<&str> = answered.iter().map(|(id, _)| id.as_str()).collect();
        let mut silent = self.silent.lock().expect("silent lock");
        for (id, name) in &known {
            if !heard.contains(id.as_str()) {
                whole = false;
                if silent.insert(id.clone()) {
                    self.gap(
                        metrics,
                        "server_silent",
                        format!("server {name} did not answer"),
                    );
                }
            } else if silent.remove(id) {
                self.gap(
                    metrics,
                    "server_silent",
                    format!("server {name} answers again"),
                );
            }
        }
        silent.retain(|id| known.contains_key(id));
        whole
    }

    /// Notes a gap: the view is not complete, a sweep is wanted now.
    fn gap(&self, metrics: &Metrics, reason: &str, detail: String) {
        warn!(reason, detail = %detail, "live census gap: a sweep follows");
        metrics.live_gap(reason);
        self.view.lock().expect("live view lock").gap(detail);
        self.resync.notify_one();
    }
}

/// Subscribes to the events (flushed, so none is missed after this returns) and starts the
/// task that applies them and probes the servers, until `stop`.
pub async fn start(
    system: System,
    cfg: LiveConfig,
    probe_timeout: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(Live, JoinHandle<()>), async_nats::Error> {
    let client = system.client().clone();
    let mut events = client.subscribe(EVENTS).await?;
    let mut auth_errors = client.subscribe(refused::AUTH_ERRORS).await?;
    client.flush().await?;
    let live = Live {
        view: Arc::new(Mutex::new(LiveView::new())),
        changed: Arc::new(Notify::new()),
        resync: Arc::new(Notify::new()),
        silent: Arc::default(),
        refused: Arc::new(Mutex::new(Refusals::new(cfg.refused_window))),
        churn: Arc::default(),
    };
    info!(
        subject = EVENTS,
        "live census following connect and disconnect events"
    );
    let l = live.clone();
    let task = tokio::spawn(async move {
        let mut check = tokio::time::interval(CLIENT_CHECK);
        let mut probe = tokio::time::interval(cfg.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = metrics.reconnects.get();
        let mut slow = metrics.slow_consumers.get();
        let mut connected = true;
        let mut probing = None::<JoinHandle<Vec<(String, String)>>>;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(msg) = events.next() => {
                    let Some((event, delta)) = delta_of(&msg.subject, &msg.payload) else { continue };
                    let now = chrono::Utc::now();
                    l.churned(&event, &delta, now);
                    if let Some(r) = refused::refusal_of(&event, false, now) {
                        l.refused(&metrics, &r);
                    }
                    metrics.live_events.inc();
                    if l.view.lock().expect("live view lock").apply(delta).is_some() {
                        l.changed.notify_one();
                    }
                }
                Some(msg) = auth_errors.next() => {
                    if let Some(r) = parse(&msg.payload).ok().and_then(|e| refused::refusal_of(&e, true, chrono::Utc::now())) {
                        l.refused(&metrics, &r);
                    }
                }
                _ = check.tick() => {
                    l.expire_refusals();
                    let now_connected = client.connection_state() == async_nats::connection::State::Connected;
                    let r = metrics.reconnects.get();
                    if r != reconnects || (connected && !now_connected) {
                        l.gap(&metrics, "reconnect", "connwatch's connection to NATS dropped: events may be lost".into());
                    }
                    reconnects = r;
                    connected = now_connected;
                    let s = metrics.slow_consumers.get();
                    if s != slow {
                        l.gap(&metrics, "slow_consumer", format!("connwatch's client dropped {} messages (slow consumer)", s - slow));
                    }
                    slow = s;
                }
                _ = probe.tick(), if probing.is_none() => {
                    let (system, known) = (system.clone(), l.view.lock().expect("live view lock").servers().len());
                    if known > 0 && connected {
                        probing = Some(tokio::spawn(async move { probe_servers(&system, known, probe_timeout).await }));
                    }
                }
                done = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                    probing = None;
                    let Ok(answered) = done else { continue };
                    l.note_probe(&metrics, &answered);
                }
            }
        }
        let _ = events.unsubscribe().await;
        let _ = auth_errors.unsubscribe().await;
    });
    Ok((live, task))
}

/// An event message and the delta it makes; `None` for other subjects and unreadable events.
pub fn delta_of(subject: &str, payload: &[u8]) -> Option<(ClientEvent, Delta)> {
    let last = subject.rsplit('.').next()?;
    if last != "CONNECT" && last != "DISCONNECT" {
        return None;
    }
    let e: ClientEvent = match parse(payload) {
        Ok(e) => e,
        Err(err) => {
            warn!(subject, error = %err, "unreadable connection event ignored");
            return None;
        }
    };
    let c = e.connection()?;
    let delta = if last == "DISCONNECT" {
        Delta::Close {
            server_id: c.server_id,
            cid: c.cid,
        }
    } else {
        Delta::Open(c)
    };
    Some((e, delta))
}

/// Asks every server for STATSZ; returns (id, name) of those that answered within `timeout`
/// (the gather ends as soon as `known` answered).
async fn probe_servers(system: &System, known: usize, timeout: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let _ = system
        .scatter_each(
            &[(PING_STATSZ, Bytes::new())],
            timeout,
            PROBE_LINGER,
            |_, msg| {
                if let Ok(r) = parse::<StatszReply>(&msg.payload) {
                    if !r.server.id.is_empty() && !out.iter().any(|(id, _)| id == &r.server.id) {
                        out.push((r.server.id, r.server.name));
                    }
                }
                out.len() >= known
            },
        )
        .await;
    out
}
