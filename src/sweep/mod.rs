//! One sweep: ask every server for its connections, read each server's list as one snapshot,
//! note who was silent.
//!
//! Each server's connections come from ONE reply: its answer to the PING when that held them
//! all, else one directed request sized from the `total` it reported plus headroom (retried
//! once if it grew past the headroom). A server whose list cannot be read whole is an error
//! (the sweep is partial) and none of its connections are counted: counts are never silently
//! short, whatever the churn.
//!
//! - [`discovery`]: how many servers there are and who is who (STATSZ), and who was silent.
//! - [`replies`]: the answers to the PING, sorted out by server id.
//! - [`fetch`]: the per-server reader: directed requests for the lists the PING did not hold.

mod discovery;
mod fetch;
mod replies;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::info;

use crate::config::SweepConfig;
use crate::nats::page::connz_body;
use crate::nats::wire::ServerInfo;
use crate::nats::{RequestError, System, PING_CONNZ, PING_STATSZ};
use crate::snapshot::{ServerError, ServerSeen, Snapshot};
use crate::state::KnownServers;
use crate::topology::Place;

pub use discovery::{expected_count, missing_servers, UNKNOWN_SERVER};
pub use fetch::{headroom, next_fetch, NextFetch, MAX_DIRECTED};

use discovery::Discovery;
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
}

/// Sweeps a cluster. The servers seen before are not its own: each sweep borrows them
/// ([`Sweeper::sweep`]) from whoever keeps them (the state), so they have one owner.
pub struct Sweeper {
    system: System,
    cfg: SweepConfig,
    /// Connections of the last sweep: the next one allocates room for them once, up front,
    /// instead of growing (and copying) its largest allocation while replies are in flight.
    last_connections: usize,
}

impl Sweeper {
    /// A sweeper over a connected client.
    pub fn new(system: System, config: &SweepConfig) -> Self {
        Self {
            system,
            cfg: config.clone(),
            last_connections: 0,
        }
    }

    /// Takes new settings (a reload).
    pub fn set_config(&mut self, config: &SweepConfig) {
        self.cfg = config.clone();
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
            connections: Vec::with_capacity(self.last_connections + self.last_connections / 32),
            ..Snapshot::default()
        };
        let mut seen = known.clone();
        seen.forget_old(started, self.cfg.forget_servers_after);

        // CONNZ to every server, and STATSZ in the same breath: it says how
        // many servers there are, which id goes with which name (a reply claiming a server's
        // id under another name is not that server) and the route peers of each (names for
        // silent servers). Replies are parsed as they arrive and gathered until the expected
        // servers gave valid answers.
        let configured = self.cfg.expected_servers;
        let known_count = seen.servers.len();
        let requests = vec![
            (PING_CONNZ, connz_body(self.cfg.page_size, 0)),
            (PING_STATSZ, Bytes::new()),
        ];
        snap.requests += requests.len();
        let mut discovery = Discovery::new(&seen, started);
        let mut finished = false;
        let mut firsts = FirstReplies::new(self.cfg.page_size);
        // A count from STATSZ alone can be low while a cluster forms: linger briefly then.
        let linger = if configured == 0 && known_count == 0 {
            DISCOVERY_LINGER
        } else {
            Duration::ZERO
        };
        let gather = self.cfg.timeout.min(self.cfg.deadline());
        self.system
            .scatter_each(&requests, gather, linger, |i, msg| {
                snap.bytes += msg.payload.len();
                if i == 0 {
                    firsts.add(&msg.payload, &mut snap.bad_replies);
                } else {
                    discovery.add(&msg.payload);
                }
                if !finished {
                    let answered = firsts.answered(&discovery);
                    finished = discovery.settled(configured)
                        && expected_count(configured, discovery.count(), known_count)
                            .is_some_and(|e| answered >= e);
                    return finished;
                }
                false
            })
            .await
            .map_err(sweep_error)?;
        snap.servers_expected =
            expected_count(configured, discovery.count(), known_count).unwrap_or(0);

        let (done, fetches) = firsts.resolve(&discovery, &mut snap);
        if done.is_empty() && fetches.is_empty() && snap.errors.is_empty() {
            return Err(SweepError::NoAnswer(gather));
        }
        let mut fetched = self
            .fetch_all(fetches, deadline, &mut snap.connections)
            .await;
        fetched.extend(done);
        for p in fetched {
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
        let auth = self.system.client().server_info().auth_required;
        snap.pending = crate::snapshot::drop_pending(&mut snap.connections, auth);

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
        self.last_connections = snap.connections.len();
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
            connections = snap.connections.len(),
            pending = snap.pending,
            requests = snap.requests,
            pages = snap.pages,
            bytes = snap.bytes,
            duration_ms = snap.duration.as_millis() as u64,
            "sweep done"
        );
        Ok(snap)
    }
}

/// Runs `f` over `items`, at most `concurrency` at a time, yielding results as they finish:
/// one slow item never keeps the others from starting or finishing.
pub fn bounded_unordered<T, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> impl Stream<Item = Fut::Output>
where
    F: FnMut(T) -> Fut,
    Fut: Future,
{
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(concurrency.max(1))
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
