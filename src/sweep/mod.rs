//! One sweep: ask every server for its connections, read each server's list as one snapshot,
//! note who was silent.
//!
//! Each server's connections come from ONE reply: its answer to the PING when that held them
//! all, else one directed request sized from the `total` it reported plus headroom (retried
//! once if it grew past the headroom). A server whose list cannot be read whole is an error
//! (the sweep is partial) and none of its connections are counted: counts are never silently
//! short, whatever the churn.
//!
//! A cluster known to have at most `sweep.max_in_flight` servers is asked with one PING (all
//! answer at once); a bigger one, or one of unknown size, is bounded: STATSZ, then directed
//! requests, a few servers at a time ([`pings_all`] decides).
//!
//! - `discovery`: how many servers there are and who is who (STATSZ), and who was silent.
//! - `replies`: the answers to the PING, sorted out by server id.
//! - `fetch`: the per-server reader: directed requests for the lists the PING did not hold,
//!   and for every server of a bounded sweep.
//! - `bounded`: the bounded sweep (STATSZ, then directed reads as its replies arrive).
//! - `inflight`: the reply bytes in flight at the peak (pure).

mod bounded;
mod collect;
mod discovery;
mod fetch;
mod inflight;
mod replies;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::info;

use crate::census::Aggregate;
use crate::config::SweepConfig;
use crate::connlist::ConnList;
use crate::nats::decoded;
use crate::nats::page::connz_body;
use crate::nats::snappy::Payload;
use crate::nats::wire::ServerInfo;
use crate::nats::{RequestError, System, PING_CONNZ, PING_STATSZ};
use crate::snapshot::{ServerError, ServerSeen, Snapshot};
use crate::state::KnownServers;
use crate::topology::Place;

pub use discovery::{expected_count, missing_servers, UNKNOWN_SERVER};
pub use fetch::{first_fetch, headroom, next_fetch, ping_limit, NextFetch, MAX_DIRECTED};
pub use inflight::{peak, Span};

use collect::{Collect, List};
use discovery::Discovery;
use fetch::Fetched;
use replies::FirstReplies;

/// How long a sweep that knows the cluster's size only from STATSZ waits for late replies.
const DISCOVERY_LINGER: Duration = Duration::from_millis(100);

/// A sweep that could not run at all (as opposed to a partial one).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The client is not connected (it is reconnecting): nothing was asked.
    #[error("not connected to NATS (reconnecting)")]
    NotConnected,
    /// Nobody answers system requests.
    #[error("the servers do not answer system requests (no responders): connwatch's user is not in the system account, or no server is reachable")]
    NoResponders,
    /// No server gave a valid answer in time: there is nothing to count, and an empty sweep
    /// must never pass for a complete one.
    #[error("no server answered the sweep within {0:?}")]
    NoAnswer(Duration),
    /// The request itself failed.
    #[error("sweep request failed")]
    Request(#[source] RequestError),
    /// Servers found answering twice (something else answers as them) after their census was
    /// counted (a bounded sweep settles who is who before its timeout while a server is
    /// silent): the counts hold what one of them said, so none of the sweep's is used.
    #[error("servers {0:?} answered STATSZ twice after their connections were counted: this sweep's counts are not used")]
    CountedImpostors(Vec<String>),
}

/// Sweeps a cluster. The servers seen before are not its own: each sweep borrows them
/// ([`Sweeper::sweep`]) from whoever keeps them (the state), so they have one owner.
pub struct Sweeper {
    system: System,
    cfg: SweepConfig,
    /// Connections of the last sweep: the next one allocates room for them once, up front,
    /// instead of growing (and copying) its largest allocation while replies are in flight.
    last_connections: usize,
    /// The most connections one server held in the last sweep: the next PING asks for that
    /// many plus headroom ([`ping_limit`]), so no server's first reply is thrown away.
    last_largest_server: u64,
    /// What the sweeps make of the connections ([`Sweeper::collect`]).
    collecting: Collecting,
}

/// What a sweep makes of the connections it reads ([`Sweeper::collect`]).
#[derive(Debug, Clone, Default)]
pub enum Collecting {
    /// Every connection, into [`Snapshot::connections`] (for what needs them one by one:
    /// kicks, the audit of a dead leader's kicks).
    #[default]
    List,
    /// Only the census, built while the replies are parsed into [`Snapshot::census`], with the
    /// rules of this one (empty); no connection is held.
    Census(Aggregate),
    /// For the live view: each server's whole list read once who is who is settled (a bounded
    /// sweep's directed reads, or a re-read after the PING; those read before, at the
    /// settling) goes to the [`Handover`] at once, and is let go, so the sweep never holds
    /// every server's list ([`Snapshot::handed`] names those servers). The others (the
    /// PING's, or those it did not take) go compactly into [`Snapshot::compact`] (about 100
    /// bytes a connection instead of 168; the view reads them in place).
    Live(Arc<dyn Handover>),
}

/// Where a live sweep hands each whole list as it comes (the live view).
pub trait Handover: Send + Sync + std::fmt::Debug {
    /// Takes `server`'s whole list: the connections of `list` from `from` on (who `server` is
    /// is settled; those listed before they authenticated are left out already). Returns
    /// whether it took them; if not, they stay in the sweep's list.
    fn take(&self, server: &ServerInfo, list: &mut ConnList, from: usize) -> bool;
}

impl Sweeper {
    /// A sweeper over a connected client.
    pub fn new(system: System, config: &SweepConfig) -> Self {
        Self {
            system: system.compressed(config.compression),
            cfg: config.clone(),
            last_connections: 0,
            last_largest_server: 0,
            collecting: Collecting::List,
        }
    }

    /// What the next sweeps make of the connections they read.
    pub fn collect(&mut self, collecting: Collecting) {
        self.collecting = collecting;
    }

    /// Takes new settings (a reload).
    pub fn set_config(&mut self, config: &SweepConfig) {
        self.cfg = config.clone();
        self.system = self.system.clone().compressed(config.compression);
    }

    /// Runs one sweep over the cluster, within `sweep.deadline`, expecting the servers in
    /// `known` (those not seen within `sweep.forget_servers_after` are forgotten). `known` is
    /// updated with the servers that answered only when the sweep ends: a failed or cancelled
    /// sweep leaves it as it was.
    pub async fn sweep(&mut self, known: &mut KnownServers) -> Result<Snapshot, SweepError> {
        // Asking while disconnected would only wait out the timeout for no answer.
        if self.system.client().connection_state() != async_nats::connection::State::Connected {
            return Err(SweepError::NotConnected);
        }
        let t0 = Instant::now();
        let deadline = t0 + self.cfg.deadline();
        let started = Utc::now();
        let mut snap = Snapshot {
            started: Some(started),
            ..Snapshot::default()
        };
        let auth = self.system.client().server_info().auth_required;
        let room = self.last_connections + self.last_connections / 32;
        let conns = match &self.collecting {
            Collecting::List => Collect::new(List::Full(Vec::with_capacity(room)), None),
            Collecting::Live(to) => {
                let mut list = ConnList::default();
                list.reserve_exact(room);
                let mut conns = Collect::new(List::Compact(list), None);
                conns.hand_to(Arc::clone(to), auth);
                conns
            }
            Collecting::Census(rules) => Collect::new(
                List::Full(Vec::new()),
                Some(rules.fork().skipping_pending(auth)),
            ),
        };
        let mut seen = known.clone();
        seen.forget_old(started, self.cfg.forget_servers_after);

        let configured = self.cfg.expected_servers;
        let known_count = seen.servers.len();
        let mut discovery = Discovery::new(&seen, started);
        let mut spans = Vec::new();
        // A count from STATSZ alone can be low while a cluster forms: linger briefly then.
        let linger = if configured == 0 && known_count == 0 {
            DISCOVERY_LINGER
        } else {
            Duration::ZERO
        };
        let gather = Gather {
            configured,
            known_count,
            linger,
            timeout: self.cfg.timeout.min(self.cfg.deadline()),
            deadline,
        };
        let ping = pings_all(self.cfg.max_in_flight, configured, known_count);
        let (fetched, conns) = if ping {
            self.gather_ping(&gather, &mut discovery, &mut snap, &mut spans, conns)
                .await?
        } else {
            self.gather_bounded(&gather, &mut discovery, &mut snap, &mut spans, conns)
                .await?
        };
        let (list, census, handed) = conns.finish();
        snap.census = census.map(Arc::new);
        snap.handed = handed.servers;
        snap.handed_connections = handed.connections;
        match list {
            List::Full(list) => snap.connections = list,
            List::Compact(list) => snap.compact = list,
        }
        snap.servers_expected =
            expected_count(configured, discovery.count(), known_count).unwrap_or(0);
        for mut p in fetched {
            spans.append(&mut p.spans);
            snap.requests += p.requests;
            snap.pages += p.pages;
            snap.bytes += p.bytes;
            snap.bad_replies += p.bad_replies;
            snap.topology
                .insert(display_name(&p.server), place_of(&p.server));
            if !crate::snapshot::lists_leafnodes(&p.server.ver) {
                snap.leafnodes_unlisted.push(p.server.id.clone());
            }
            if let Some(error) = p.error {
                snap.errors.push(ServerError {
                    server: display_name(&p.server),
                    error,
                });
            } else {
                snap.servers.push(ServerSeen {
                    name: p.server.name.clone(),
                    id: p.server.id.clone(),
                    connections: p.total,
                    pages: p.pages,
                });
            }
        }
        snap.servers.sort_by(|a, b| a.name.cmp(&b.name));
        snap.errors.sort_by(|a, b| a.server.cmp(&b.server));
        snap.pending = match &snap.census {
            Some(census) => census.pending(),
            None => {
                crate::snapshot::drop_pending(&mut snap.connections, auth)
                    + snap.compact.drop_pending(auth)
                    + handed.pending
            }
        };

        let answered: Vec<&str> = snap
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain(snap.errors.iter().map(|e| e.server.as_str()))
            .collect();
        let peers = discovery.peers(&answered);
        snap.missing = missing_servers(snap.servers_expected, &answered, seen.names(), &peers);
        for m in &snap.missing {
            if let Some(cluster) = seen.servers.get(m).and_then(|k| k.cluster.as_deref()) {
                let place = Place::in_cluster(cluster);
                snap.topology.entry(m.clone()).or_insert(place);
            }
        }
        seen.saw(
            started,
            snap.servers
                .iter()
                .map(|s| (s.name.as_str(), s.id.as_str())),
        );
        seen.placed(
            snap.topology
                .iter()
                .filter_map(|(name, place)| Some((name.as_str(), place.cluster.as_deref()?))),
        );
        *known = seen;
        self.last_connections = snap.connections.len() + snap.compact.len();
        let counted = snap.connection_count();
        self.last_largest_server = snap
            .servers
            .iter()
            .map(|s| s.connections)
            .max()
            .unwrap_or(0);
        snap.peak_bytes_in_flight = inflight::peak(&spans);
        snap.duration = t0.elapsed();
        info!(
            servers_expected = snap.servers_expected,
            servers_responded = snap.servers.len(),
            partial = snap.partial(),
            missing = ?snap.missing,
            silent = ?snap.silent_clusters().iter().map(|c| &c.says).collect::<Vec<_>>(),
            errors = snap.errors.len(),
            error_kinds = ?snap.errors.iter().map(|e| e.error.kind()).collect::<Vec<_>>(),
            bad_replies = snap.bad_replies,
            connections = counted,
            pending = snap.pending,
            requests = snap.requests,
            pages = snap.pages,
            bytes = snap.bytes,
            peak_bytes_in_flight = snap.peak_bytes_in_flight,
            ping,
            duration_ms = snap.duration.as_millis() as u64,
            "sweep done"
        );
        Ok(snap)
    }

    /// Asks every server at once (PING CONNZ, with STATSZ in the same breath: it says how many
    /// servers there are, which id goes with which name, and the route peers of each), parses
    /// the replies as they arrive until the expected servers gave valid answers, then reads
    /// again the servers whose reply did not hold all their connections.
    async fn gather_ping(
        &self,
        g: &Gather,
        discovery: &mut Discovery<'_>,
        snap: &mut Snapshot,
        spans: &mut Vec<Span>,
        conns: Collect,
    ) -> Result<(Vec<Fetched>, Collect), SweepError> {
        let limit = ping_limit(
            self.cfg.page_size,
            self.last_largest_server,
            self.cfg.max_connections_per_server,
        );
        let requests = vec![
            (PING_CONNZ, connz_body(limit, 0)),
            (PING_STATSZ, Bytes::new()),
        ];
        snap.requests += requests.len();
        let mut finished = false;
        let mut firsts = FirstReplies::new(limit, conns);
        let sent = Instant::now();
        self.system
            .scatter_raw(&requests, g.timeout, g.linger, |i, msg| {
                let length = msg.length;
                snap.bytes += length;
                if i == 0 {
                    firsts.add(Payload::of(&msg), &mut snap.bad_replies);
                } else {
                    discovery.add(&decoded(msg).payload);
                }
                spans.push(Span {
                    sent,
                    parsed: Instant::now(),
                    bytes: length,
                });
                if !finished {
                    let answered = firsts.answered(discovery);
                    finished = g.settled(discovery, answered);
                    return finished;
                }
                false
            })
            .await
            .map_err(sweep_error)?;
        let (done, fetches, mut conns) = firsts.resolve(discovery, snap);
        if done.is_empty() && fetches.is_empty() && snap.errors.is_empty() {
            return Err(SweepError::NoAnswer(g.timeout));
        }
        // Every STATSZ reply is in: the servers read again are who they say.
        let _ = conns.settle(&[]);
        let sink = std::sync::Mutex::new(conns);
        let mut fetched = self
            .fetch_all(futures::stream::iter(fetches), g.deadline, &sink)
            .await;
        fetched.extend(done);
        Ok((
            fetched,
            sink.into_inner().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// What a gather waits for, and how long.
struct Gather {
    configured: usize,
    known_count: usize,
    linger: Duration,
    timeout: Duration,
    deadline: Instant,
}

impl Gather {
    /// Whether the gather can end: every server the cluster counts answered STATSZ (or the size
    /// is configured) and `answered` servers gave valid answers, as many as are expected.
    fn settled(&self, discovery: &Discovery, answered: usize) -> bool {
        discovery.settled(self.configured)
            && expected_count(self.configured, discovery.count(), self.known_count)
                .is_some_and(|e| answered >= e)
    }
}

/// Whether a sweep asks every server at once with one PING (pure): when `max_in_flight` is 0
/// (no bound), or the cluster is known (`expected_servers`, else the servers seen before) to
/// have at most `max_in_flight` servers. Else (more, or a size not known yet) it is bounded.
pub fn pings_all(max_in_flight: usize, configured: usize, known: usize) -> bool {
    max_in_flight == 0
        || expected_count(configured, None, known).is_some_and(|n| n <= max_in_flight)
}

/// Runs `f` over `items` (as they come), at most `concurrency` at a time, yielding results as
/// they finish: one slow item never keeps the others from starting or finishing.
pub fn bounded_unordered<T, F, Fut>(
    items: impl Stream<Item = T>,
    concurrency: usize,
    f: F,
) -> impl Stream<Item = Fut::Output>
where
    F: FnMut(T) -> Fut,
    Fut: Future,
{
    items.map(f).buffer_unordered(concurrency.max(1))
}

/// What `m` holds, also after a panic elsewhere held it (the gather's locks are never held
/// across an await).
fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sweep_error(e: RequestError) -> SweepError {
    match e {
        RequestError::NoResponders => SweepError::NoResponders,
        e => SweepError::Request(e),
    }
}

/// Where a server says it sits.
fn place_of(s: &ServerInfo) -> Place {
    let named = |v: &Option<String>| v.clone().filter(|c| !c.is_empty());
    Place {
        cluster: named(&s.cluster),
        domain: named(&s.domain),
    }
}

/// A server's name for reports, or its id when it gave no name.
fn display_name(s: &ServerInfo) -> String {
    if s.name.is_empty() {
        s.id.clone()
    } else {
        s.name.clone()
    }
}
