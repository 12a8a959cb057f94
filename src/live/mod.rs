//! The live census: the servers' connect and disconnect events keep a view of every open
//! connection current between sweeps; sweeps reconcile it; gaps are noticed and say the view
//! is not complete.
//!
//! - [`view`]: the view itself, events → deltas, reconciliation, completeness (pure).
//! - [`read`]: one user's connections from every server, before a finding fires (I/O).
//! - [`follow`]: what it subscribes to, and why (the servers' cost), and the events' subjects.
//! - this file: the task that follows the events and watches for gaps (I/O).
//!
//! Gaps, each counted in `connwatch_live_gaps_total{reason}` and followed by a sweep at once:
//! - `reconnect`: connwatch's own connection dropped or came back (events were not delivered);
//! - `slow_consumer`: connwatch's client dropped messages;
//! - `server_silent`: a server the view holds sent no STATSZ heartbeat for longer than its
//!   period plus `live.heartbeat_margin` and did not answer a direct STATSZ request either
//!   ([`heartbeat`]), or did not answer the STATSZ request a resolve sends every server first;
//! - `server_new`: a server id the view does not hold sent its heartbeat or answered (a new
//!   server, or a restart: a restarted server has a new id and heartbeats 250 ms after start);
//! - `account_new`: an account whose name holds dots was heard for the first time (its count),
//!   so its events, which need a subscription of their own ([`follow`]), may have been missed;
//! - `count_mismatch`: a server's announced count of an account's connections disagreed with
//!   the view for [`crosscheck::HOLD`] (also counted in `connwatch_live_mismatches_total`);
//! - `over_rate`: the events came faster than `live.max_event_rate` ([`rate`]) and are no
//!   longer followed: following them would cost the servers more than sweeping. The view stays
//!   not complete (sweeps every `sweep.interval`, nothing resolves or is kicked from the
//!   events, `connwatch_live_over_rate` 1) until, `live.reconcile_interval` later, the task
//!   subscribes again (a `resumed` gap) and the next complete sweep completes the view.

pub mod churn;
pub mod crosscheck;
pub mod follow;
pub mod heartbeat;
pub mod rate;
pub mod read;
pub mod refused;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::LiveConfig;
use crate::connlist::ConnList;
use crate::metrics::{Metrics, ServerLabel};
use crate::nats::wire::{ServerInfo, StatszReply};
use crate::nats::{parse, server_subject, System, PING_STATSZ};
use crate::rules::refused::Refusals;
use crate::sweep::Handover;
use churn::ChurnTracker;
use crosscheck::CrossCheck;
use follow::{conns_of, is_account_conns, Following};
pub use follow::{delta, event_of};
use heartbeat::Heartbeats;
pub use view::{Delta, LiveView, Scope, SyncId, UserKey};

/// Every server's STATSZ heartbeat (`$SYS.SERVER.<id>.STATSZ`, see [`heartbeat`]).
const HEARTBEATS: &str = "$SYS.SERVER.*.STATSZ";
/// How long a probe waits for servers beyond the known ones (a new server).
const PROBE_LINGER: Duration = Duration::from_millis(50);
/// How often the task looks at connwatch's own connection (reconnects, slow consumers).
const CLIENT_CHECK: Duration = Duration::from_millis(100);

/// Hands a live sweep's whole lists to the view as they come ([`crate::sweep::Handover`]),
/// for the sync the sweep began. A paused view takes none: its round works from the sweep
/// alone, which then holds them all.
#[derive(Debug)]
pub struct TakeLists {
    view: Arc<Mutex<LiveView>>,
    sync: SyncId,
}

impl TakeLists {
    /// Hands lists to `view`, for the sync `sync`.
    pub fn new(view: Arc<Mutex<LiveView>>, sync: SyncId) -> Self {
        Self { view, sync }
    }
}

impl Handover for TakeLists {
    fn take(&self, server: &ServerInfo, list: &mut ConnList, from: usize) -> bool {
        let mut view = self.view.lock().expect("live view lock");
        if view.paused() {
            return false;
        }
        let leafnodes_listed = crate::snapshot::lists_leafnodes(&server.ver);
        view.take_server(self.sync, &server.id, leafnodes_listed, list, from);
        true
    }
}

/// What the service shares with the live task.
#[derive(Clone)]
pub struct Live {
    /// The view.
    pub view: Arc<Mutex<LiveView>>,
    /// Woken when an event changed a user's count.
    pub changed: Arc<Notify>,
    /// Woken on a gap: a sweep should start at once.
    pub resync: Arc<Notify>,
    /// Servers of the view that are silent (no heartbeat, no answer), until heard again.
    silent: Arc<Mutex<HashSet<String>>>,
    /// Server ids heard that the view does not hold, each a gap once until the next sweep.
    new_noted: Arc<Mutex<HashSet<String>>>,
    /// When each server was last heard ([`heartbeat`]).
    beats: Arc<Mutex<Heartbeats>>,
    /// Refused connections in the last `live.refused_window` ([`refused`]).
    pub refused: Arc<Mutex<Refusals>>,
    /// Connects and disconnects per user in the last minute ([`churn`]).
    pub churn: Arc<Mutex<ChurnTracker>>,
}

impl Live {
    /// Asks every server for STATSZ now and notes the gaps it shows (a server silent, new or
    /// restarted, or answering again). Returns whether every server of the view answered.
    /// Only a live round that would resolve a finding asks (see `gather_live`).
    pub async fn confirm_servers(
        &self,
        system: &System,
        metrics: &Metrics,
        timeout: Duration,
    ) -> bool {
        let known = self.view.lock().expect("live view lock").servers().len();
        metrics.live_statsz_request("resolve");
        let answered = probe_servers(system, known, timeout).await;
        self.note_probe(metrics, &answered)
    }

    /// Servers a sweep heard answer are not silent any more: the sweep that reconciled them
    /// closed their gap, so their next silence is a new gap, whether or not a probe ran between.
    /// A server id still not in the view after it is a gap again at its next heartbeat.
    pub fn heard<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut silent = self.silent.lock().expect("silent lock");
        let mut beats = self.beats.lock().expect("heartbeats lock");
        for id in ids {
            silent.remove(id);
            beats.heard(id, now);
        }
        self.new_noted.lock().expect("new servers lock").clear();
    }

    /// A heartbeat (or a direct answer, `beat` false) from server `id`: a gap if the view does
    /// not hold it (new or restarted) or held it as silent (it answers again). Nothing before
    /// the first sweep (the view holds no server yet).
    fn heartbeat(&self, metrics: &Metrics, id: &str, name: &str, beat: bool) {
        let now = Instant::now();
        {
            let mut beats = self.beats.lock().expect("heartbeats lock");
            if beat {
                beats.beat(id, now);
            } else {
                beats.heard(id, now);
            }
        }
        let known = {
            let view = self.view.lock().expect("live view lock");
            let servers = view.servers();
            if servers.is_empty() {
                return;
            }
            servers.contains_key(id)
        };
        if !known {
            if self
                .new_noted
                .lock()
                .expect("new servers lock")
                .insert(id.to_string())
            {
                self.server_new(metrics, id, name, "its heartbeat");
            }
        } else if self.silent.lock().expect("silent lock").remove(id) {
            self.gap(
                metrics,
                "server_silent",
                format!("server {name} answers again"),
            );
        }
    }

    /// The servers of the view, not silent yet, that have been quiet for longer than their
    /// heartbeat period plus `margin`: to be asked directly.
    fn quiet_servers(&self, margin: Duration) -> Vec<(String, String, Duration)> {
        let known = self.view.lock().expect("live view lock").servers().clone();
        let silent = self.silent.lock().expect("silent lock").clone();
        let mut beats = self.beats.lock().expect("heartbeats lock");
        beats.retain(|id| known.contains_key(id));
        beats
            .quiet(
                known
                    .keys()
                    .map(String::as_str)
                    .filter(|id| !silent.contains(*id)),
                Instant::now(),
                margin,
            )
            .into_iter()
            .map(|(id, quiet)| {
                let name = known.get(&id).cloned().unwrap_or_default();
                (id, name, quiet)
            })
            .collect()
    }

    /// A quiet server that did not answer its direct request either: silent, a gap (once, until
    /// it is heard again).
    fn silent_now(&self, metrics: &Metrics, id: &str, name: &str, quiet: Duration) {
        let known = self
            .view
            .lock()
            .expect("live view lock")
            .servers()
            .contains_key(id);
        if known
            && self
                .silent
                .lock()
                .expect("silent lock")
                .insert(id.to_string())
        {
            self.gap(
                metrics,
                "server_silent",
                format!(
                    "server {name} sent no STATSZ heartbeat for {} and did not answer a direct STATSZ request",
                    humantime::format_duration(Duration::from_secs(quiet.as_secs()))
                ),
            );
        }
    }

    /// Servers a sweep heard that the view did not hold ([`LiveView::reconcile`]: a restart or
    /// a new server, before any probe saw it): each a `server_new` gap, counted and followed
    /// by a sweep, as when the probe sees it first.
    pub fn appeared(&self, metrics: &Metrics, servers: &[(String, String)]) {
        for (id, name) in servers {
            self.server_new(metrics, id, name, "a sweep");
        }
    }

    /// A server id the view does not hold, heard by `by`: a `server_new` gap.
    fn server_new(&self, metrics: &Metrics, id: &str, name: &str, by: &str) {
        self.gap(
            metrics,
            "server_new",
            format!("server {name} ({id}) is new or restarted: heard by {by}"),
        );
    }

    /// Compares a probe's answers with the view's servers; gaps for every difference that is
    /// new. Returns whether every server of the view answered and none is new.
    fn note_probe(&self, metrics: &Metrics, answered: &[(String, String)]) -> bool {
        let known = self.view.lock().expect("live view lock").servers().clone();
        let mut whole = true;
        for (id, name) in answered {
            if !known.contains_key(id) {
                whole = false;
                self.server_new(metrics, id, name, "a STATSZ request");
            }
        }
        let heard: HashSet<&str> = answered.iter().map(|(id, _)| id.as_str()).collect();
        {
            let now = Instant::now();
            let mut beats = self.beats.lock().expect("heartbeats lock");
            for id in &heard {
                beats.heard(id, now);
            }
        }
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

    /// Compares the servers' announced counts with the view (see [`crosscheck`]): a lasting
    /// disagreement is a `count_mismatch` gap. Publishes the announced counts per server
    /// (`shown`: the servers with a series, whose series go with them).
    fn cross_check(&self, metrics: &Metrics, cross: &mut CrossCheck, shown: &mut BTreeSet<String>) {
        let (mismatches, names) = {
            let view = self.view.lock().expect("live view lock");
            let servers = view.servers();
            cross.retain_servers(|id| servers.contains_key(id));
            let m = cross.check(
                Instant::now(),
                view.incomplete().is_none(),
                |id| servers.contains_key(id),
                |id, acc| view.clients_of(id, acc),
            );
            (m, servers.clone())
        };
        let announced: BTreeMap<String, u64> = cross
            .announced_by_server()
            .into_iter()
            .filter_map(|(id, n)| Some((names.get(&id)?.clone(), n)))
            .collect();
        shown.retain(|server| {
            announced.contains_key(server)
                || !metrics.live_announced.remove(&ServerLabel {
                    server: server.clone(),
                })
        });
        for (server, n) in announced {
            let label = ServerLabel { server };
            metrics.live_announced.get_or_create(&label).set(n as i64);
            shown.insert(label.server);
        }
        if let Some(first) = mismatches.first() {
            for _ in &mismatches {
                metrics.live_mismatches.inc();
            }
            let name = names.get(&first.server_id).map_or("?", String::as_str);
            let more = match mismatches.len() - 1 {
                0 => String::new(),
                n => format!(" ({n} more accounts or servers disagree)"),
            };
            self.gap(
                metrics,
                "count_mismatch",
                format!(
                    "server {name} counts {} client connections in account {}, the live view {}{more}",
                    first.announced, first.account, first.viewed
                ),
            );
        }
    }

    /// The events are no longer followed (`paused`) or followed again: a gap either way.
    fn follow(&self, metrics: &Metrics, following: bool, detail: String) {
        let reason = if following { "resumed" } else { "over_rate" };
        warn!(reason, detail = %detail, "live census: a sweep follows");
        metrics.live_gap(reason);
        metrics.live_over_rate.set(i64::from(!following));
        let mut view = self.view.lock().expect("live view lock");
        if following {
            view.resume(detail);
        } else {
            view.pause(detail);
        }
        self.resync.notify_one();
    }

    /// Notes a gap: the view is not complete, a sweep is wanted now.
    fn gap(&self, metrics: &Metrics, reason: &str, detail: String) {
        warn!(reason, detail = %detail, "live census gap: a sweep follows");
        metrics.live_gap(reason);
        self.view.lock().expect("live view lock").gap(detail);
        self.resync.notify_one();
    }
}

/// Subscribes to the events and the servers' heartbeats (flushed, so none is missed after this
/// returns) and starts the task that applies them and asks quiet servers directly, until `stop`.
/// `ask_timeout`: how long a direct STATSZ request waits.
pub async fn start(
    system: System,
    cfg: LiveConfig,
    ask_timeout: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(Live, JoinHandle<()>), async_nats::Error> {
    let client = system.client().clone();
    let dotted = follow::dotted_accounts(&system, ask_timeout, PROBE_LINGER).await;
    let events = Following::start(&client, &dotted).await?;
    let mut auth_errors = client.subscribe(refused::AUTH_ERRORS).await?;
    let mut heartbeats = client.subscribe(HEARTBEATS).await?;
    client.flush().await?;
    let live = Live {
        view: Arc::new(Mutex::new(LiveView::new())),
        changed: Arc::new(Notify::new()),
        resync: Arc::new(Notify::new()),
        silent: Arc::default(),
        new_noted: Arc::default(),
        beats: Arc::default(),
        refused: Arc::new(Mutex::new(Refusals::new(cfg.refused_window))),
        churn: Arc::default(),
    };
    info!(
        events = follow::EVENTS,
        counts = follow::COUNTS,
        dotted = ?dotted,
        "live census following connect and disconnect events"
    );
    let l = live.clone();
    let task = tokio::spawn(async move {
        let mut check = tokio::time::interval(CLIENT_CHECK);
        let mut reconnects = metrics.reconnects.get();
        let mut slow = metrics.slow_consumers.get();
        let mut connected = true;
        // Direct STATSZ requests to quiet servers, under way: (id, name, quiet, answered).
        let mut asking = None::<JoinHandle<Vec<(String, String, Duration, bool)>>>;
        let mut cross = CrossCheck::default();
        let mut shown = BTreeSet::new();
        // `None` while the events come too fast to follow, until `paused_until`.
        let mut events = Some(events);
        // The dotted accounts followed before a pause, followed again on resuming.
        let mut dotted = dotted;
        let mut rate = rate::EventRate::default();
        let mut paused_until = None::<Instant>;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(msg) = async { events.as_mut().expect("guarded").next().await }, if events.is_some() => {
                    if is_account_conns(&msg.subject) {
                        if let Some(a) = conns_of(&msg.subject, &msg.payload) {
                            cross.announce(&a.server.id, &a.acc, a.conns);
                            let following = events.as_mut().expect("guarded");
                            match following.account(&client, &a.acc).await {
                                Ok(false) => {}
                                Ok(true) => l.gap(&metrics, "account_new", format!(
                                    "account {} (a name with dots) was heard for the first time: its events are followed from now on", a.acc)),
                                Err(e) => l.gap(&metrics, "account_new", format!(
                                    "account {} (a name with dots) was heard, its events cannot be subscribed to: {e}", a.acc)),
                            }
                        }
                        continue;
                    }
                    let Some((event, closed)) = event_of(&msg.subject, &msg.payload) else { continue };
                    let now = chrono::Utc::now();
                    l.churned(&event, closed, now);
                    if let Some(r) = refused::refusal_of(&event, false, now) {
                        l.refused(&metrics, &r);
                    }
                    let Some(delta) = delta(event, closed) else { continue };
                    metrics.live_events.inc();
                    rate.note(Instant::now());
                    if l.view.lock().expect("live view lock").apply(delta).is_some() {
                        l.changed.notify_one();
                    }
                }
                Some(msg) = heartbeats.next() => {
                    if events.is_some() {
                        if let Ok(r) = parse::<StatszReply>(&msg.payload) {
                            if !r.server.id.is_empty() {
                                l.heartbeat(&metrics, &r.server.id, &r.server.name, true);
                            }
                        }
                    }
                }
                Some(msg) = auth_errors.next() => {
                    if let Some(r) = parse(&msg.payload).ok().and_then(|e| refused::refusal_of(&e, true, chrono::Utc::now())) {
                        l.refused(&metrics, &r);
                    }
                }
                _ = check.tick() => {
                    l.cross_check(&metrics, &mut cross, &mut shown);
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
                    let now = Instant::now();
                    match paused_until {
                        None if rate.over(now, cfg.max_event_rate) => {
                            if let Some(following) = events.take() {
                                dotted = following.dotted().clone();
                                following.stop().await;
                            }
                            cross = CrossCheck::default();
                            paused_until = Some(now + cfg.reconcile_interval);
                            l.follow(&metrics, false, format!(
                                "over {} connect and disconnect events a second for a minute (live.max_event_rate): \
                                 not following them, sweeping every sweep.interval, trying again in {}",
                                cfg.max_event_rate, humantime::format_duration(cfg.reconcile_interval)));
                        }
                        Some(until) if now >= until => {
                            if let Ok(following) = Following::start(&client, &dotted).await {
                                events = Some(following);
                                rate.clear();
                                paused_until = None;
                                l.follow(&metrics, true, "following the connect and disconnect events again".into());
                            }
                        }
                        _ => {}
                    }
                    if asking.is_none() && connected && events.is_some() {
                        let quiet = l.quiet_servers(cfg.heartbeat_margin);
                        if !quiet.is_empty() {
                            for _ in &quiet {
                                metrics.live_statsz_request("quiet");
                            }
                            asking = Some(tokio::spawn(ask_servers(system.clone(), quiet, ask_timeout)));
                        }
                    }
                }
                done = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                    asking = None;
                    let Ok(asked) = done else { continue };
                    for (id, name, quiet, answered) in asked {
                        if answered {
                            l.heartbeat(&metrics, &id, &name, false);
                        } else {
                            l.silent_now(&metrics, &id, &name, quiet);
                        }
                    }
                }
            }
        }
        if let Some(following) = events {
            following.stop().await;
        }
        let _ = auth_errors.unsubscribe().await;
        let _ = heartbeats.unsubscribe().await;
    });
    Ok((live, task))
}

/// Asks each quiet server directly (`$SYS.REQ.SERVER.<id>.STATSZ`, all at once); returns each
/// with whether it answered (as itself) within `timeout`.
async fn ask_servers(
    system: System,
    quiet: Vec<(String, String, Duration)>,
    timeout: Duration,
) -> Vec<(String, String, Duration, bool)> {
    let asks = quiet.into_iter().map(|(id, name, q)| {
        let system = system.clone();
        async move {
            let reply = system
                .request(server_subject(&id, "STATSZ"), Bytes::new(), timeout)
                .await;
            let answered = reply
                .is_ok_and(|m| parse::<StatszReply>(&m.payload).is_ok_and(|r| r.server.id == id));
            (id, name, q, answered)
        }
    });
    futures::future::join_all(asks).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Connection;

    fn listed(cids: &[u64]) -> ConnList {
        let mut list = ConnList::default();
        for &cid in cids {
            let c = Connection {
                server: "n1".into(),
                server_id: "ID-n1".into(),
                cid,
                kind: "Client".into(),
                account: "APP".into(),
                user: "u".into(),
                ..Connection::default()
            };
            list.push(&c.view());
        }
        list
    }

    #[test]
    fn a_paused_view_takes_no_list_and_a_following_one_takes_it_whole() {
        let server = ServerInfo {
            name: "n1".into(),
            id: "ID-n1".into(),
            ver: "2.12.0".into(),
            ..ServerInfo::default()
        };
        let view = Arc::new(Mutex::new(LiveView::new()));
        let sync = view.lock().unwrap().begin_sweep();
        let take = TakeLists::new(Arc::clone(&view), sync);
        view.lock().unwrap().pause("over the event rate");
        let mut list = listed(&[1, 2]);
        assert!(!take.take(&server, &mut list, 0));
        assert_eq!((list.len(), view.lock().unwrap().len()), (2, 0));
        view.lock().unwrap().resume("under the rate again");
        assert!(take.take(&server, &mut list, 0));
        assert_eq!(view.lock().unwrap().count("APP", "u"), 2);
    }
}
