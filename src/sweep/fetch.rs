//! The per-server reader: a server whose PING reply did not hold all its connections is read
//! again with directed requests, each for its whole list, until one reply holds it all.

use std::sync::Mutex;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::warn;

use super::collect::Collect;
use super::inflight::Span;
use super::replies::error_reply;
use super::{bounded_unordered, locked, Sweeper};
use crate::nats::page::{connz_body, PageHead};
use crate::nats::snappy::Payload;
use crate::nats::wire::ServerInfo;
use crate::nats::{server_subject, RequestError, System};
use crate::snapshot::ServerFailure;

/// Servers read at once after a PING when `sweep.max_in_flight` is 0 (no bound on the PING).
const UNBOUNDED_FETCHES: usize = 8;
/// Directed requests one server may take after its PING reply: one sized from its `total`, and
/// one more if its connections grew past the headroom in between.
pub const MAX_DIRECTED: u32 = 2;

/// What a sweep does next with one server, from its last reply: `total` connections, of which
/// the reply held `returned`, after `directed` directed requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextFetch {
    /// The last reply held every connection: it is the server's list, one snapshot.
    Done,
    /// Ask the server once more, from offset 0, for up to `limit` connections.
    Fetch {
        /// The `limit` of the request.
        limit: u64,
    },
    /// The server's list cannot be read whole: it is an error and the sweep partial.
    GiveUp(ServerFailure),
}

/// Room a directed request leaves over the `total` a server reported: 12.5%, at least 256, so
/// connections opened in between still fit in the one reply.
pub fn headroom(total: u64) -> u64 {
    (total / 8).max(256)
}

/// The `limit` of a sweep's PING CONNZ (pure): `page_size`, or, once a sweep read a server with
/// more connections than that (`largest_last`, the most one server held in the last sweep, 0
/// when none), that count plus [`headroom`], so each server's list fits its answer to the PING
/// and its connections are read once (not a first page thrown away, then the whole list);
/// capped at `max_per_server`, never below `page_size`.
pub fn ping_limit(page_size: usize, largest_last: u64, max_per_server: u64) -> usize {
    if largest_last == 0 {
        return page_size;
    }
    let sized = largest_last
        .saturating_add(headroom(largest_last))
        .min(max_per_server);
    page_size.max(usize::try_from(sized).unwrap_or(usize::MAX))
}

/// The first request to a server that was not in a PING (a bounded sweep): its whole list, from
/// the client connections its STATSZ reply counted plus [`headroom`] (pure); never one for more
/// than `max_per_server` connections.
pub fn first_fetch(statsz_connections: u64, max_per_server: u64) -> NextFetch {
    if statsz_connections > max_per_server {
        return NextFetch::GiveUp(ServerFailure::TooLarge {
            total: statsz_connections,
            max: max_per_server,
        });
    }
    NextFetch::Fetch {
        limit: statsz_connections
            .saturating_add(headroom(statsz_connections))
            .min(max_per_server),
    }
}

/// Decides what to do with one server after a reply (pure): done when the reply held its whole
/// list; else one directed request for `total` plus [`headroom`], at most [`MAX_DIRECTED`]
/// of them; never one for more than `max_per_server` connections.
pub fn next_fetch(total: u64, returned: u64, directed: u32, max_per_server: u64) -> NextFetch {
    if returned >= total {
        return NextFetch::Done;
    }
    if total > max_per_server {
        return NextFetch::GiveUp(ServerFailure::TooLarge {
            total,
            max: max_per_server,
        });
    }
    if directed >= MAX_DIRECTED {
        return NextFetch::GiveUp(ServerFailure::KeptGrowing {
            requests: directed,
            total,
        });
    }
    NextFetch::Fetch {
        limit: total.saturating_add(headroom(total)).min(max_per_server),
    }
}

/// A server to read with directed requests: one whose PING reply did not hold all its
/// connections (`pinged`), or one a bounded sweep asks directly (`total` from its STATSZ).
pub(super) struct Fetch {
    pub(super) server: ServerInfo,
    pub(super) total: u64,
    pub(super) returned: u64,
    pub(super) pinged: bool,
}

/// One server's connections, read whole or not at all.
pub(super) struct Fetched {
    pub(super) server: ServerInfo,
    pub(super) total: u64,
    pub(super) pages: usize,
    pub(super) requests: usize,
    pub(super) bytes: usize,
    pub(super) bad_replies: usize,
    pub(super) error: Option<ServerFailure>,
    /// Its directed replies, for the bytes in flight.
    pub(super) spans: Vec<Span>,
}

impl Fetched {
    pub(super) fn new(server: ServerInfo) -> Self {
        Self {
            server,
            total: 0,
            pages: 0,
            requests: 0,
            bytes: 0,
            bad_replies: 0,
            error: None,
            spans: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
struct FetchLimits {
    timeout: Duration,
    deadline: Instant,
    max_per_server: u64,
}

/// Reads one server's whole list with directed requests ([`next_fetch`]); its connections go to
/// `sink` only when one reply held them all.
async fn fetch_server(
    system: &System,
    f: Fetch,
    limits: FetchLimits,
    sink: &Mutex<Collect>,
) -> Fetched {
    let subject = server_subject(&f.server.id, "CONNZ");
    let mut out = Fetched::new(f.server);
    let (mut total, mut returned, mut directed) = (f.total, f.returned, 0);
    // The PING reply was a page too.
    out.pages = usize::from(f.pinged);
    loop {
        let next = if directed == 0 && !f.pinged {
            first_fetch(total, limits.max_per_server)
        } else {
            next_fetch(total, returned, directed, limits.max_per_server)
        };
        let limit = match next {
            NextFetch::Done => {
                out.total = total;
                break;
            }
            NextFetch::GiveUp(why) => {
                warn!(server = %out.server.name, total, kind = why.kind(), "connz: {why}");
                out.error = Some(why);
                break;
            }
            NextFetch::Fetch { limit } => limit as usize,
        };
        let now = Instant::now();
        if now >= limits.deadline {
            out.error = Some(ServerFailure::Deadline { in_flight: false });
            break;
        }
        directed += 1;
        out.requests += 1;
        let wait = limits.timeout.min(limits.deadline - now);
        let sent = Instant::now();
        let reply = match system
            .request_raw(subject.clone(), connz_body(limit, 0), wait)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(server = %out.server.name, error = %e, "connz page failed");
                out.error = Some(if Instant::now() >= limits.deadline {
                    ServerFailure::Deadline { in_flight: true }
                } else {
                    request_failure(e)
                });
                break;
            }
        };
        out.bytes += reply.length;
        let parsed = {
            let mut conns = locked(sink);
            conns.parse(Payload::of(&reply), limit).map(|(h, part)| {
                let whole = h.server.id == out.server.id
                    && h.error.is_none()
                    && h.total.is_some_and(|t| h.count as u64 >= t);
                if whole {
                    conns.keep(&h.server, part);
                } else {
                    conns.drop_last(part);
                }
                h
            })
        };
        out.spans.push(Span {
            sent,
            parsed: Instant::now(),
            bytes: reply.length,
        });
        drop(reply);
        match parsed {
            Err(e) => {
                out.bad_replies += 1;
                out.error = Some(ServerFailure::BadReply(e.to_string()));
                break;
            }
            Ok(h) if h.server.id != out.server.id => {
                out.bad_replies += 1;
                out.error = Some(ServerFailure::WrongServer(h.server.id));
                break;
            }
            Ok(PageHead {
                error: Some(err), ..
            }) => {
                out.error = Some(error_reply(err, true));
                break;
            }
            Ok(PageHead { total: None, .. }) => {
                out.bad_replies += 1;
                out.error = Some(ServerFailure::NoData);
                break;
            }
            Ok(h) => {
                out.pages += 1;
                total = h.total.unwrap_or_default();
                returned = h.count as u64;
            }
        }
    }
    out
}

impl Sweeper {
    /// Reads every server of `fetches` (as they come: a bounded sweep hands them over as STATSZ
    /// replies arrive), at most `sweep.max_in_flight` at a time and each on its own (a slow
    /// server holds up only itself), until `deadline`.
    pub(super) async fn fetch_all(
        &self,
        fetches: impl Stream<Item = Fetch>,
        deadline: Instant,
        sink: &Mutex<Collect>,
    ) -> Vec<Fetched> {
        // The replies of several servers are parsed in turn by this one task; the lock is never
        // held across an await.
        let limits = FetchLimits {
            timeout: self.cfg.timeout,
            deadline,
            max_per_server: self.cfg.max_connections_per_server,
        };
        let at_once = match self.cfg.max_in_flight {
            0 => UNBOUNDED_FETCHES,
            n => n,
        };
        bounded_unordered(fetches, at_once, |f| {
            fetch_server(&self.system, f, limits, sink)
        })
        .collect()
        .await
    }
}

/// A failed directed request as the server's failure.
fn request_failure(e: RequestError) -> ServerFailure {
    match e {
        RequestError::TimedOut(d) => ServerFailure::TimedOut(d),
        RequestError::NoResponders => ServerFailure::NoResponders,
        e => ServerFailure::RequestFailed(e.to_string()),
    }
}
