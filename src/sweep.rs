//! One sweep: ask every server for its connections, read each server's list as one snapshot,
//! note who was silent.
//!
//! Each server's connections come from ONE reply: its answer to the PING when that held them
//! all, else one directed request sized from the `total` it reported plus headroom (retried
//! once if it grew past the headroom). A server whose list cannot be read whole is an error
//! (the sweep is partial) and none of its connections are counted: counts are never silently
//! short, whatever the churn.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{DetectConfig, SweepConfig};
use crate::nats::wire::{
    jwt_name, AccountStatzData, Accountz, ApiError, Connz, ConnzRequest, Reply, Rfc3339,
    ServerInfo, StatszReply, SweepConn, Varz,
};
use crate::nats::{
    parse, server_subject, RequestError, System, PING_ACCOUNT_STATZ, PING_CONNZ, PING_STATSZ,
    PING_VARZ,
};
use crate::snapshot::{Connection, ServerError, ServerSeen, Snapshot};
use crate::state::KnownServers;

/// Placeholder in `missing` for an expected server whose name nobody could tell.
pub const UNKNOWN_SERVER: &str = "<unknown>";

/// How long a sweep that knows the cluster's size only from STATSZ waits for late replies.
const DISCOVERY_LINGER: Duration = Duration::from_millis(100);
/// Servers read at the same time: each directed reply is held in memory while it is parsed and
/// costs its server a sort of all its connections, so a super-cluster is read a few at a time.
const FETCH_CONCURRENCY: usize = 8;
/// Directed requests one server may take after its PING reply: one sized from its `total`, and
/// one more if its connections grew past the headroom in between.
pub const MAX_DIRECTED: u32 = 2;
/// Bytes a reply may hold per connection asked for (plus [`REPLY_SLACK`]): a real connection
/// with a JWT and tags takes a few KiB; a bigger reply is refused unparsed.
const MAX_BYTES_PER_CONNECTION: usize = 16 * 1024;
/// Room in a reply for its envelope.
const REPLY_SLACK: usize = 64 * 1024;

/// Connections an account must hold, cluster-wide, for its users to be swept in detail in
/// [`SweepMode::HotAccounts`]: called with the account (name or key) and its human name.
pub type AccountFloor = Arc<dyn Fn(&str, Option<&str>) -> u64 + Send + Sync>;

/// What one sweep asks the servers for.
#[derive(Clone, Default)]
pub enum SweepMode {
    /// Every connection of every server (CONNZ to all, then directed requests).
    #[default]
    Full,
    /// Ask first what is cheap: per-account connection counts (`$SYS.REQ.ACCOUNT.PING.STATZ`,
    /// a few hundred bytes per account and server), then CONNZ, filtered by the server with
    /// `acc`, only for the accounts holding more connections than their floor: an account with
    /// fewer connections than the lowest threshold of its users cannot hold an excessive user.
    ///
    /// The snapshot then holds only the connections of those accounts (users of the others
    /// are not counted, so neither is their growth): alternate with full sweeps.
    HotAccounts(AccountFloor),
}

impl SweepMode {
    /// [`SweepMode::HotAccounts`] with the floors of [`crate::census::account_floor`].
    pub fn hot_accounts(detect: &DetectConfig) -> Self {
        let detect = detect.clone();
        SweepMode::HotAccounts(Arc::new(move |account, name| {
            crate::census::account_floor(&detect, account, name)
        }))
    }
}

impl std::fmt::Debug for SweepMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepMode::Full => f.write_str("Full"),
            SweepMode::HotAccounts(_) => f.write_str("HotAccounts"),
        }
    }
}

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

/// Sweeps a cluster, remembering which servers it has seen.
pub struct Sweeper {
    system: System,
    cfg: SweepConfig,
    known: KnownServers,
    mode: SweepMode,
    /// Connections of the last sweep: the next one allocates room for them once, up front,
    /// instead of growing (and copying) its largest allocation while replies are in flight.
    last_connections: usize,
}

impl Sweeper {
    /// A sweeper over a connected client, expecting the servers seen before.
    pub fn new(system: System, config: &SweepConfig, known: KnownServers) -> Self {
        Self {
            system,
            cfg: config.clone(),
            known,
            mode: SweepMode::Full,
            last_connections: 0,
        }
    }

    /// Sets what the following sweeps ask for (default [`SweepMode::Full`]).
    pub fn with_mode(mut self, mode: SweepMode) -> Self {
        self.mode = mode;
        self
    }

    /// Changes what the following sweeps ask for (e.g. a full sweep every Nth round).
    pub fn set_mode(&mut self, mode: SweepMode) {
        self.mode = mode;
    }

    /// What the sweeps ask for.
    pub fn mode(&self) -> &SweepMode {
        &self.mode
    }

    /// Takes new settings (a reload); the servers seen are kept.
    pub fn set_config(&mut self, config: &SweepConfig) {
        self.cfg = config.clone();
    }

    /// The servers seen so far (for the state file).
    pub fn known(&self) -> &KnownServers {
        &self.known
    }

    /// Runs one sweep over the cluster, within `sweep.deadline`.
    pub async fn sweep(&mut self) -> Result<Snapshot, SweepError> {
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
        self.known
            .forget_old(started, self.cfg.forget_servers_after);

        // CONNZ (or account STATZ) to every server, and STATSZ in the same breath: it says how
        // many servers there are, which id goes with which name (a reply claiming a server's
        // id under another name is not that server) and the route peers of each (names for
        // silent servers). Replies are parsed as they arrive and gathered until the expected
        // servers gave valid answers.
        let configured = self.cfg.expected_servers;
        let known = self.known.servers.len();
        let hot = matches!(self.mode, SweepMode::HotAccounts(_));
        let requests = vec![
            if hot {
                (PING_ACCOUNT_STATZ, account_statz_body())
            } else {
                (PING_CONNZ, connz_body(self.cfg.page_size, 0, None))
            },
            (PING_STATSZ, Bytes::new()),
        ];
        snap.requests += requests.len();
        let mut discovery = Discovery::new(&self.known, started);
        let mut finished = false;
        let mut firsts = FirstReplies::new(self.cfg.page_size, None);
        let mut accounts = AccountCounts::default();
        // A count from STATSZ alone can be low while a cluster forms: linger briefly then.
        let linger = if configured == 0 && known == 0 {
            DISCOVERY_LINGER
        } else {
            Duration::ZERO
        };
        let gather = self.cfg.timeout.min(self.cfg.deadline());
        self.system
            .scatter_each(&requests, gather, linger, |i, msg| {
                snap.bytes += msg.payload.len();
                if i == 0 {
                    if hot {
                        accounts.add(&msg.payload, &mut snap.bad_replies);
                    } else {
                        firsts.add(&msg.payload, &mut snap.bad_replies);
                    }
                } else {
                    discovery.add(&msg.payload);
                }
                if !finished {
                    let answered = if hot {
                        accounts.answered(&discovery)
                    } else {
                        firsts.answered(&discovery)
                    };
                    finished = discovery.settled(configured)
                        && expected_count(configured, discovery.count(), known)
                            .is_some_and(|e| answered >= e);
                    return finished;
                }
                false
            })
            .await
            .map_err(sweep_error)?;
        snap.servers_expected = expected_count(configured, discovery.count(), known).unwrap_or(0);

        let fetched = if let SweepMode::HotAccounts(floor) = &self.mode {
            let servers = accounts.resolve(&discovery, &mut snap);
            if servers.is_empty() && snap.errors.is_empty() {
                return Err(SweepError::NoAnswer(gather));
            }
            let hot_accounts = accounts.hot(floor.as_ref());
            let (done, fetches) = self
                .hot_first_replies(&hot_accounts, &servers, &discovery, deadline, &mut snap)
                .await?;
            let mut fetched = self
                .fetch_all(fetches, deadline, &mut snap.connections)
                .await;
            fetched.extend(done);
            // Servers that answered STATZ but hold none of the hot accounts' connections.
            for (id, server) in servers {
                if !fetched.iter().any(|p| p.server.id == id) {
                    fetched.push(Fetched::new(server));
                }
            }
            merge_by_server(fetched)
        } else {
            let (done, fetches) = firsts.resolve(&discovery, &mut snap);
            if done.is_empty() && fetches.is_empty() && snap.errors.is_empty() {
                return Err(SweepError::NoAnswer(gather));
            }
            let mut fetched = self
                .fetch_all(fetches, deadline, &mut snap.connections)
                .await;
            fetched.extend(done);
            fetched
        };
        for p in fetched {
            snap.requests += p.requests;
            snap.pages += p.pages;
            snap.bytes += p.bytes;
            snap.bad_replies += p.bad_replies;
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

        let answered: Vec<&str> = snap
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain(snap.errors.iter().map(|e| e.server.as_str()))
            .collect();
        let peers = discovery.peers(&answered);
        snap.missing =
            missing_servers(snap.servers_expected, &answered, self.known.names(), &peers);
        self.known.saw(
            started,
            snap.servers
                .iter()
                .map(|s| (s.name.as_str(), s.id.as_str())),
        );
        self.last_connections = snap.connections.len();
        snap.duration = t0.elapsed();
        info!(
            mode = ?self.mode,
            servers_expected = snap.servers_expected,
            servers_responded = snap.servers.len(),
            partial = snap.partial(),
            missing = ?snap.missing,
            errors = snap.errors.len(),
            bad_replies = snap.bad_replies,
            connections = snap.connections.len(),
            requests = snap.requests,
            pages = snap.pages,
            bytes = snap.bytes,
            duration_ms = snap.duration.as_millis() as u64,
            "sweep done"
        );
        Ok(snap)
    }

    /// Reads every server that did not fit its first reply, a few at a time and each on its
    /// own (a slow server holds up only itself), until `deadline`.
    async fn fetch_all(
        &self,
        fetches: Vec<Fetch>,
        deadline: Instant,
        conns: &mut Vec<Connection>,
    ) -> Vec<Fetched> {
        // The replies of several servers are parsed in turn by this one task; the lock is never
        // held across an await.
        let sink = Mutex::new(std::mem::take(conns));
        let limits = FetchLimits {
            timeout: self.cfg.timeout,
            deadline,
            max_per_server: self.cfg.max_connections_per_server,
        };
        let fetched = bounded_unordered(fetches, FETCH_CONCURRENCY, |f| {
            fetch_server(&self.system, f, limits, &sink)
        })
        .collect()
        .await;
        *conns = sink.into_inner().unwrap_or_else(|e| e.into_inner());
        fetched
    }

    /// CONNZ filtered by account, for each hot account, to every server: what each server
    /// holds of each account, read whole (directly, or by the returned fetches).
    async fn hot_first_replies(
        &self,
        hot: &[String],
        servers: &[(String, ServerInfo)],
        discovery: &Discovery<'_>,
        deadline: Instant,
        snap: &mut Snapshot,
    ) -> Result<(Vec<Fetched>, Vec<Fetch>), SweepError> {
        // The servers that counted the accounts are the ones that must list their connections.
        let expected = servers.len();
        if hot.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let subjects: Vec<(&str, Bytes)> = hot
            .iter()
            .map(|acc| (PING_CONNZ, connz_body(self.cfg.page_size, 0, Some(acc))))
            .collect();
        snap.requests += subjects.len();
        let mut per_account: Vec<FirstReplies> = hot
            .iter()
            .map(|acc| FirstReplies::new(self.cfg.page_size, Some(acc.clone())))
            .collect();
        let wait = self
            .cfg
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let mut bad = 0;
        let mut bytes = 0;
        self.system
            .scatter_each(&subjects, wait, Duration::ZERO, |i, msg| {
                bytes += msg.payload.len();
                let Some(pages) = per_account.get_mut(i) else {
                    return false;
                };
                pages.add(&msg.payload, &mut bad);
                per_account
                    .iter()
                    .all(|p| p.answered(discovery) >= expected.max(1))
            })
            .await
            .map_err(sweep_error)?;
        snap.bytes += bytes;
        snap.bad_replies += bad;
        let mut fetches = Vec::new();
        let mut whole = Vec::new();
        for pages in per_account {
            let acc = pages.acc.clone().unwrap_or_default();
            let (done, more) = pages.resolve(discovery, snap);
            for (id, server) in servers {
                let answered = done.iter().any(|d| d.server.id == *id)
                    || more.iter().any(|f| f.server.id == *id);
                let errored = snap.errors.iter().any(|e| e.server == display_name(server));
                if !answered && !errored {
                    snap.errors.push(ServerError {
                        server: display_name(server),
                        error: format!("no connz reply for account {acc}"),
                    });
                }
            }
            whole.extend(done);
            fetches.extend(more);
        }
        Ok((whole, fetches))
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

/// What STATSZ replies say about the cluster: its size, which name each server id goes with,
/// and the route peers and gateway clusters the servers see.
///
/// A server that restarted comes back with a new id, while the others keep counting its old id
/// in `active_servers` until they notice it is gone (minutes). A known name answering with a
/// new id is such a restart: its ghost is not waited for.
#[derive(Debug)]
struct Discovery<'a> {
    known: &'a KnownServers,
    now: DateTime<Utc>,
    /// Server id → name, from this sweep's STATSZ replies.
    names: HashMap<String, String>,
    most_active: usize,
    restarted: HashSet<String>,
    /// Route peers by name, as the servers that answered STATSZ list them.
    routes: BTreeSet<String>,
    /// Gateway clusters the servers list.
    gateways: BTreeSet<String>,
    /// Clusters of the servers that answered STATSZ.
    clusters: BTreeSet<String>,
}

/// Whether a reply's (server id, name) is the one the cluster says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vouch {
    /// A STATSZ reply of this sweep (or a server seen before) pairs this id with this name.
    Matches,
    /// The id goes with another name: not that server.
    Contradicts,
    /// Nobody pairs this id with any name.
    Unknown,
}

impl<'a> Discovery<'a> {
    fn new(known: &'a KnownServers, now: DateTime<Utc>) -> Self {
        Self {
            known,
            now,
            names: HashMap::new(),
            most_active: 0,
            restarted: HashSet::new(),
            routes: BTreeSet::new(),
            gateways: BTreeSet::new(),
            clusters: BTreeSet::new(),
        }
    }

    fn add(&mut self, payload: &[u8]) {
        let Ok(r) = parse::<StatszReply>(payload) else {
            return;
        };
        if r.server.id.is_empty() || self.names.contains_key(&r.server.id) {
            return;
        }
        let statsz = r.statsz.unwrap_or_default();
        self.most_active = self.most_active.max(statsz.active_servers);
        self.routes.extend(
            statsz
                .routes
                .into_iter()
                .flatten()
                .map(|p| p.name)
                .filter(|n| !n.is_empty()),
        );
        self.gateways.extend(
            statsz
                .gateways
                .into_iter()
                .flatten()
                .map(|p| p.name)
                .filter(|n| !n.is_empty()),
        );
        if let Some(c) = r.server.cluster.clone().filter(|c| !c.is_empty()) {
            self.clusters.insert(c);
        }
        if self
            .known
            .recently_restarted(&r.server.name, &r.server.id, self.now)
        {
            self.restarted.insert(r.server.name.clone());
        }
        self.names.insert(r.server.id, r.server.name);
    }

    fn replies(&self) -> usize {
        self.names.len()
    }

    /// Whether every server the cluster counts has answered STATSZ (or the size is configured),
    /// so that a server the responders do not count yet cannot be missed.
    fn settled(&self, configured: usize) -> bool {
        configured > 0
            || (self.replies() > 0
                && self.replies() >= self.most_active.saturating_sub(self.restarted.len()))
    }

    /// The cluster's size as far as the replies so far tell; `None` before any reply.
    fn count(&self) -> Option<usize> {
        let active = self.most_active.saturating_sub(self.restarted.len());
        Some(active.max(self.replies())).filter(|n| *n > 0)
    }

    /// Whether `server` is who it says it is, as far as the cluster tells.
    fn vouch(&self, server: &ServerInfo) -> Vouch {
        let name = self.names.get(&server.id).or_else(|| {
            self.known
                .servers
                .iter()
                .find(|(_, k)| k.id == server.id)
                .map(|(n, _)| n)
        });
        match name {
            Some(n) if *n == server.name => Vouch::Matches,
            Some(_) => Vouch::Contradicts,
            None => Vouch::Unknown,
        }
    }

    /// Whether a reply from `server` can be taken as a real server's: vouched for, or nobody
    /// could be asked (no STATSZ reply at all) and nothing contradicts it.
    fn accepts(&self, server: &ServerInfo) -> bool {
        match self.vouch(server) {
            Vouch::Matches => true,
            Vouch::Contradicts => false,
            Vouch::Unknown => self.names.is_empty(),
        }
    }

    /// Names for servers that did not answer: route peers the live servers list, and
    /// `<unknown> (cluster C)` for gateway clusters none of whose servers answered.
    fn peers(&self, answered: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = self
            .routes
            .iter()
            .filter(|r| !answered.contains(&r.as_str()))
            .cloned()
            .collect();
        out.extend(
            self.gateways
                .iter()
                .filter(|g| !self.clusters.contains(*g))
                .map(|g| format!("{UNKNOWN_SERVER} (cluster {g})")),
        );
        out
    }
}

fn sweep_error(e: RequestError) -> SweepError {
    match e {
        RequestError::NoResponders => SweepError::NoResponders,
        e => SweepError::Request(e),
    }
}

fn connz_body(limit: usize, offset: usize, acc: Option<&str>) -> Bytes {
    let req = ConnzRequest {
        auth: true,
        limit,
        offset,
        sort: "cid",
        acc: acc.map(str::to_string),
        ..ConnzRequest::default()
    };
    Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"))
}

/// Every account, even unused ones, so that every server answers and the gather can stop as
/// soon as the expected servers did (a server without active accounts would stay silent).
fn account_statz_body() -> Bytes {
    Bytes::from_static(br#"{"accounts":[],"include_unused":true}"#)
}

/// One server's answer to a PING CONNZ.
struct Candidate {
    server: ServerInfo,
    reply: FirstReply,
}

enum FirstReply {
    /// The server answered with an error envelope.
    Error(ApiError),
    /// Its connections; `conns` is empty unless the reply held all `total` of them.
    Page {
        total: u64,
        returned: u64,
        conns: Vec<Connection>,
    },
}

/// The answers to one PING CONNZ as they arrive, parsed on arrival; who is who is decided at the
/// end ([`FirstReplies::resolve`]), when every STATSZ reply is in.
struct FirstReplies {
    page_size: usize,
    acc: Option<String>,
    candidates: Vec<Candidate>,
}

impl FirstReplies {
    fn new(page_size: usize, acc: Option<String>) -> Self {
        Self {
            page_size,
            acc,
            candidates: Vec::new(),
        }
    }

    /// Parses one reply; a reply that is not a valid answer of some server is counted in `bad`.
    fn add(&mut self, payload: &[u8], bad: &mut usize) {
        let mut conns = Vec::new();
        let head = match parse_page(payload, &mut conns, self.page_size, true) {
            Ok(head) => head,
            Err(e) => {
                *bad += 1;
                warn!(error = %e, bytes = payload.len(), "bad connz reply ignored");
                return;
            }
        };
        let reply = match (head.error, head.total) {
            (Some(err), _) => FirstReply::Error(err),
            (None, None) => {
                *bad += 1;
                warn!(server = %head.server.name, "connz reply without data ignored");
                return;
            }
            (None, Some(total)) => {
                let returned = head.count as u64;
                if returned < total {
                    // Not the whole list: it is read again in one directed request.
                    conns = Vec::new();
                }
                FirstReply::Page {
                    total,
                    returned,
                    conns,
                }
            }
        };
        self.candidates.push(Candidate {
            server: head.server,
            reply,
        });
    }

    /// Distinct servers that answered and are vouched for: only these end the gather early.
    fn answered(&self, discovery: &Discovery) -> usize {
        self.candidates
            .iter()
            .filter(|c| discovery.vouch(&c.server) == Vouch::Matches)
            .map(|c| c.server.id.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Decides who answered: replies claiming an id under another name (or an id nobody knows,
    /// when STATSZ answered) are bad; two acceptable replies for one id make that server an
    /// error (something else answers as it: neither is believed). Whole lists go to the
    /// snapshot and come back as done; the rest come back as directed fetches to make.
    fn resolve(self, discovery: &Discovery, snap: &mut Snapshot) -> (Vec<Fetched>, Vec<Fetch>) {
        let mut by_id: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        for c in self.candidates {
            if discovery.accepts(&c.server) {
                by_id.entry(c.server.id.clone()).or_default().push(c);
            } else {
                snap.bad_replies += 1;
                warn!(server = %c.server.name, id = %c.server.id, "connz reply from a server the cluster does not know by that id and name ignored");
            }
        }
        let mut done = Vec::new();
        let mut fetches = Vec::new();
        for (id, mut cands) in by_id {
            if cands.len() > 1 {
                snap.bad_replies += cands.len() - 1;
                warn!(server = %cands[0].server.name, id = %id, replies = cands.len(), "conflicting connz replies for one server id");
                snap.errors.push(ServerError {
                    server: display_name(&cands[0].server),
                    error: format!(
                        "{} different replies claim its server id {id}: something else in the system account answers as this server, so none is believed",
                        cands.len()
                    ),
                });
                continue;
            }
            let Some(c) = cands.pop() else { continue };
            match c.reply {
                FirstReply::Error(err) => {
                    warn!(server = %c.server.name, code = err.code, error = %err.description, "server answered connz with an error");
                    snap.errors.push(ServerError {
                        server: display_name(&c.server),
                        error: err.description,
                    });
                }
                FirstReply::Page {
                    total,
                    returned,
                    mut conns,
                } => {
                    if returned >= total {
                        snap.connections.append(&mut conns);
                        let mut f = Fetched::new(c.server);
                        f.total = total;
                        f.pages = 1;
                        done.push(f);
                    } else {
                        fetches.push(Fetch {
                            server: c.server,
                            acc: self.acc.clone(),
                            total,
                            returned,
                        });
                    }
                }
            }
        }
        (done, fetches)
    }
}

/// Per-account connection counts from account STATZ replies, summed over the servers.
#[derive(Default)]
struct AccountCounts {
    /// Each valid reply: the server, and its accounts as (account, human name, connections).
    replies: Vec<(ServerInfo, AccountReply)>,
    /// Account → (human name, connections cluster-wide), of the servers accepted.
    totals: BTreeMap<String, (Option<String>, u64)>,
}

enum AccountReply {
    Error(ApiError),
    Counts(Vec<(String, Option<String>, u64)>),
}

impl AccountCounts {
    fn add(&mut self, payload: &[u8], bad: &mut usize) {
        let reply = match parse::<Reply<AccountStatzData>>(payload) {
            Ok(r) if !r.server.id.is_empty() => r,
            Ok(_) | Err(_) => {
                *bad += 1;
                warn!("bad account statz reply ignored");
                return;
            }
        };
        let counts = if let Some(err) = reply.error {
            AccountReply::Error(err)
        } else {
            AccountReply::Counts(
                reply
                    .data
                    .and_then(|d| d.account_statz)
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        (
                            a.acc,
                            a.name.filter(|n| !n.is_empty()),
                            a.conns.saturating_add(a.leafnodes),
                        )
                    })
                    .collect(),
            )
        };
        self.replies.push((reply.server, counts));
    }

    fn answered(&self, discovery: &Discovery) -> usize {
        self.replies
            .iter()
            .filter(|(s, _)| discovery.vouch(s) == Vouch::Matches)
            .map(|(s, _)| s.id.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// The servers whose counts are taken (by id), as [`FirstReplies::resolve`] decides.
    fn resolve(&mut self, discovery: &Discovery, snap: &mut Snapshot) -> Vec<(String, ServerInfo)> {
        let mut by_id: BTreeMap<String, Vec<(ServerInfo, AccountReply)>> = BTreeMap::new();
        for (server, reply) in std::mem::take(&mut self.replies) {
            if discovery.accepts(&server) {
                by_id
                    .entry(server.id.clone())
                    .or_default()
                    .push((server, reply));
            } else {
                snap.bad_replies += 1;
            }
        }
        let mut servers = Vec::new();
        for (id, mut replies) in by_id {
            if replies.len() > 1 {
                snap.bad_replies += replies.len() - 1;
                snap.errors.push(ServerError {
                    server: display_name(&replies[0].0),
                    error: format!(
                        "{} different replies claim its server id {id}: something else in the system account answers as this server, so none is believed",
                        replies.len()
                    ),
                });
                continue;
            }
            let Some((server, reply)) = replies.pop() else {
                continue;
            };
            match reply {
                AccountReply::Error(err) => snap.errors.push(ServerError {
                    server: display_name(&server),
                    error: err.description,
                }),
                AccountReply::Counts(counts) => {
                    for (acc, name, conns) in counts {
                        let entry = self.totals.entry(acc).or_default();
                        entry.1 = entry.1.saturating_add(conns);
                        if entry.0.is_none() {
                            entry.0 = name;
                        }
                    }
                    servers.push((id, server));
                }
            }
        }
        servers
    }

    /// The accounts holding more connections than their floor.
    fn hot(&self, floor: &(dyn Fn(&str, Option<&str>) -> u64 + Send + Sync)) -> Vec<String> {
        self.totals
            .iter()
            .filter(|(acc, (name, conns))| *conns > floor(acc, name.as_deref()))
            .map(|(acc, _)| acc.clone())
            .collect()
    }
}

/// One server's results over several accounts' lists, as one.
fn merge_by_server(fetched: Vec<Fetched>) -> Vec<Fetched> {
    let mut out: Vec<Fetched> = Vec::new();
    for p in fetched {
        match out.iter_mut().find(|o| o.server.id == p.server.id) {
            Some(o) => {
                o.total += p.total;
                o.pages += p.pages;
                o.requests += p.requests;
                o.bytes += p.bytes;
                o.bad_replies += p.bad_replies;
                o.error = o.error.take().or(p.error);
            }
            None => out.push(p),
        }
    }
    out
}

fn display_name(s: &ServerInfo) -> String {
    if s.name.is_empty() {
        s.id.clone()
    } else {
        s.name.clone()
    }
}

/// How many servers must answer: the configured number, else the most of what the cluster says
/// and what earlier sweeps saw; `None` when nothing is known.
pub fn expected_count(configured: usize, discovered: Option<usize>, known: usize) -> Option<usize> {
    if configured > 0 {
        return Some(configured);
    }
    Some(discovered.unwrap_or(0).max(known)).filter(|n| *n > 0)
}

/// The expected servers that did not answer: remembered names first, then `peers` (names the
/// live servers give for their silent route peers), then placeholders for servers the cluster
/// counts but nobody could name.
pub fn missing_servers<'a>(
    expected: usize,
    answered: &[&str],
    known: impl Iterator<Item = &'a str>,
    peers: &[String],
) -> Vec<String> {
    let mut missing: Vec<String> = known
        .filter(|k| !answered.contains(k))
        .map(str::to_string)
        .collect();
    let mut placeholders = Vec::new();
    for p in peers {
        if p.starts_with(UNKNOWN_SERVER) {
            placeholders.push(p.clone());
        } else if !answered.contains(&p.as_str()) && !missing.contains(p) {
            missing.push(p.clone());
        }
    }
    let unaccounted = expected.saturating_sub(answered.len() + missing.len());
    let named = placeholders.len().min(unaccounted);
    missing.extend(placeholders.into_iter().take(named));
    missing.extend(std::iter::repeat_n(
        UNKNOWN_SERVER.to_string(),
        unaccounted - named,
    ));
    missing
}

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
    GiveUp(String),
}

/// Room a directed request leaves over the `total` a server reported: 12.5%, at least 256, so
/// connections opened in between still fit in the one reply.
pub fn headroom(total: u64) -> u64 {
    (total / 8).max(256)
}

/// Decides what to do with one server after a reply (pure): done when the reply held its whole
/// list; else one directed request for `total` plus [`headroom`], at most [`MAX_DIRECTED`]
/// of them; never one for more than `max_per_server` connections.
pub fn next_fetch(total: u64, returned: u64, directed: u32, max_per_server: u64) -> NextFetch {
    if returned >= total {
        return NextFetch::Done;
    }
    if total > max_per_server {
        return NextFetch::GiveUp(format!(
            "it reports {total} connections, more than sweep.max_connections_per_server ({max_per_server}): not read"
        ));
    }
    if directed >= MAX_DIRECTED {
        return NextFetch::GiveUp(format!(
            "its connections grew past the headroom of {directed} directed requests (last total {total}): no whole list could be read, none counted"
        ));
    }
    NextFetch::Fetch {
        limit: total.saturating_add(headroom(total)).min(max_per_server),
    }
}

/// A server whose PING reply did not hold all its connections.
struct Fetch {
    server: ServerInfo,
    /// The account filter (hot-account sweeps).
    acc: Option<String>,
    total: u64,
    returned: u64,
}

/// One server's connections, read whole or not at all.
struct Fetched {
    server: ServerInfo,
    total: u64,
    pages: usize,
    requests: usize,
    bytes: usize,
    bad_replies: usize,
    error: Option<String>,
}

impl Fetched {
    fn new(server: ServerInfo) -> Self {
        Self {
            server,
            total: 0,
            pages: 0,
            requests: 0,
            bytes: 0,
            bad_replies: 0,
            error: None,
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
    sink: &Mutex<Vec<Connection>>,
) -> Fetched {
    let subject = server_subject(&f.server.id, "CONNZ");
    let mut out = Fetched::new(f.server);
    let (mut total, mut returned, mut directed) = (f.total, f.returned, 0);
    // The PING reply was a page too.
    out.pages = 1;
    loop {
        let limit = match next_fetch(total, returned, directed, limits.max_per_server) {
            NextFetch::Done => {
                out.total = total;
                break;
            }
            NextFetch::GiveUp(why) => {
                warn!(server = %out.server.name, total, "connz: {why}");
                out.error = Some(why);
                break;
            }
            NextFetch::Fetch { limit } => limit as usize,
        };
        let now = Instant::now();
        if now >= limits.deadline {
            out.error =
                Some("sweep.deadline passed before its connections were read: none counted".into());
            break;
        }
        directed += 1;
        out.requests += 1;
        let wait = limits.timeout.min(limits.deadline - now);
        let reply = match system
            .request(
                subject.clone(),
                connz_body(limit, 0, f.acc.as_deref()),
                wait,
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(server = %out.server.name, error = %e, "connz page failed");
                out.error = Some(if Instant::now() >= limits.deadline {
                    "sweep.deadline passed while its connections were read: none counted".into()
                } else {
                    format!("directed connz request failed: {e}: none of its connections counted")
                });
                break;
            }
        };
        out.bytes += reply.payload.len();
        let parsed = {
            let mut conns = sink.lock().unwrap_or_else(|e| e.into_inner());
            let start = conns.len();
            let parsed = parse_page(&reply.payload, &mut conns, limit, true);
            let whole = parsed.as_ref().is_ok_and(|h| {
                h.server.id == out.server.id
                    && h.error.is_none()
                    && h.total.is_some_and(|t| h.count as u64 >= t)
            });
            if !whole {
                conns.truncate(start);
            }
            parsed
        };
        match parsed {
            Err(e) => {
                out.bad_replies += 1;
                out.error = Some(format!("bad directed connz reply: {e}: none counted"));
                break;
            }
            Ok(h) if h.server.id != out.server.id => {
                out.bad_replies += 1;
                out.error = Some(format!(
                    "directed connz reply came from server id {:?}: none counted",
                    h.server.id
                ));
                break;
            }
            Ok(PageHead {
                error: Some(err), ..
            }) => {
                out.error = Some(format!("directed connz request: {}", err.description));
                break;
            }
            Ok(PageHead { total: None, .. }) => {
                out.bad_replies += 1;
                out.error = Some("directed connz reply without data: none counted".into());
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

/// Connections of one user closed recently, cluster-wide, as (stop time, reason): the servers
/// keep their last 10,000 closed connections each.
pub async fn closed_connections(
    system: &System,
    account: &str,
    user: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<(DateTime<Utc>, String)> {
    let req = ConnzRequest {
        auth: true,
        limit: 10_000,
        sort: "cid",
        // `$G` is how connwatch names the global account: the server has no filter for it.
        acc: Some(account.to_string()).filter(|a| a != "$G"),
        user: Some(user.to_string()),
        state: Some(1),
        ..ConnzRequest::default()
    };
    let body = Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"));
    let mut n = 0;
    let replies = match system
        .scatter(PING_CONNZ, body, timeout, |_| {
            n += 1;
            n >= expected
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            warn!(account, user, error = %e, "closed connections request failed");
            return Vec::new();
        }
    };
    replies
        .iter()
        .filter_map(|m| parse::<Reply<Connz>>(&m.payload).ok()?.data?.connections)
        .flatten()
        .filter_map(|c| Some((c.stop?.with_timezone(&Utc), c.reason.unwrap_or_default())))
        .collect()
}

/// One connection of one server by cid (`None` when the server has no such open connection).
pub async fn connection(
    system: &System,
    server_id: &str,
    cid: u64,
    timeout: Duration,
) -> Result<Option<Connection>, RequestError> {
    let body = Bytes::from(serde_json::json!({ "cid": cid, "auth": true }).to_string());
    let msg = system
        .request(server_subject(server_id, "CONNZ"), body, timeout)
        .await?;
    // The same streaming parse as a sweep's pages.
    let mut conns = Vec::new();
    parse_page(&msg.payload, &mut conns, 1024, false)
        .map_err(|e| RequestError::Nats(Box::new(e)))?;
    Ok(conns.into_iter().find(|c| c.cid == cid))
}

/// An account's connection limit from its JWT, asked of one server: `Ok(None)` when
/// unlimited or not known to the server (config mode); an error when the lookup failed (no
/// answer, an error reply, or an unparseable one), which means unknown, not unlimited.
pub async fn account_limit(
    system: &System,
    server_id: &str,
    account: &str,
    timeout: Duration,
) -> Result<Option<u64>, RequestError> {
    let body = Bytes::from(serde_json::json!({ "account": account }).to_string());
    let msg = system
        .request(server_subject(server_id, "ACCOUNTZ"), body, timeout)
        .await?;
    let reply = parse::<Reply<Accountz>>(&msg.payload).map_err(|e| RequestError::Nats(e.into()))?;
    if let Some(e) = reply.error {
        return Err(RequestError::Nats(e.description.into()));
    }
    Ok(reply
        .data
        .and_then(|d| d.account_detail)
        .and_then(|d| d.connection_limit()))
}

/// Every server's `max_connections`, by server name: only servers that answered are in the
/// map (a server missing from it has an unknown limit); an error when the request failed.
pub async fn server_limits(
    system: &System,
    expected: usize,
    timeout: Duration,
) -> Result<HashMap<String, u64>, RequestError> {
    let mut n = 0;
    let replies = system
        .scatter(PING_VARZ, Bytes::new(), timeout, |_| {
            n += 1;
            n >= expected
        })
        .await?;
    Ok(replies
        .iter()
        .filter_map(|m| {
            let r = parse::<Reply<Varz>>(&m.payload).ok()?;
            Some((r.server.name, r.data?.max_connections))
        })
        .collect())
}

/// The system account as the servers name it (VARZ `system_account`): the first server that
/// names one; `Ok(None)` when none did in time.
pub async fn varz_system_account(
    system: &System,
    timeout: Duration,
) -> Result<Option<String>, RequestError> {
    #[derive(serde::Deserialize)]
    struct VarzSystem {
        #[serde(default)]
        system_account: String,
    }
    let mut found = None;
    system
        .scatter(PING_VARZ, Bytes::new(), timeout, |m| {
            found = parse::<Reply<VarzSystem>>(&m.payload)
                .ok()
                .and_then(|r| r.data)
                .map(|d| d.system_account)
                .filter(|a| !a.is_empty());
            found.is_some()
        })
        .await?;
    Ok(found)
}

/// What a CONNZ reply said besides its connections (which went to the snapshot already).
#[derive(Debug, Default)]
struct PageHead {
    server: ServerInfo,
    error: Option<ApiError>,
    /// `data.total`; `None` when the reply has no `data`.
    total: Option<u64>,
    /// Connections in the reply.
    count: usize,
}

/// What the parser learns while it reads, for the checks a reply must pass.
#[derive(Debug, Default)]
struct PageStats {
    /// Connections read.
    count: usize,
    /// The highest cid read: cids must rise strictly (`sort: cid`), so none is counted twice.
    last_cid: Option<u64>,
    /// Most connections the reply may hold: the `limit` asked for.
    limit: usize,
    /// Reserve room for the reply's connections before the first one.
    reserve: bool,
    /// `data` came before `server` (nats-server writes `server` first).
    server_late: bool,
    /// `data.server_id`, when given.
    data_server_id: Option<String>,
}

fn invalid(msg: impl std::fmt::Display) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(msg)
}

/// Parses one CONNZ reply straight into `out`: each connection is converted from the reply's
/// borrowed strings as it is read, so neither the page's connections nor their strings are
/// ever held twice. `limit` is what was asked for: a reply is refused (an error, `out` left as
/// it was) when it is bigger than that many connections can be, holds more connections than
/// that or than its own `total`, lists cids out of order or twice, says an offset other than
/// 0, or names two different server ids.
fn parse_page(
    payload: &[u8],
    out: &mut Vec<Connection>,
    limit: usize,
    reserve: bool,
) -> Result<PageHead, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let max_bytes = limit
        .saturating_mul(MAX_BYTES_PER_CONNECTION)
        .saturating_add(REPLY_SLACK);
    if payload.len() > max_bytes {
        return Err(invalid(format!(
            "reply of {} bytes is too big for {limit} connections",
            payload.len()
        )));
    }
    let start = out.len();
    let mut stats = PageStats {
        limit,
        reserve,
        ..PageStats::default()
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed = EnvelopeSeed {
        out: &mut *out,
        stats: &mut stats,
    }
    .deserialize(&mut de)
    .and_then(|head| de.end().map(|()| head))
    .and_then(|mut head| {
        head.count = stats.count;
        check_page(&head, &stats).map(|()| head)
    });
    let head = match parsed {
        Ok(head) => head,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    if stats.server_late {
        for c in &mut out[start..] {
            c.server.clone_from(&head.server.name);
            c.server_id.clone_from(&head.server.id);
        }
    }
    Ok(head)
}

/// One CONNZ reply as the sweep reads it ([`parse_reply`]).
#[derive(Debug)]
pub struct ParsedReply {
    /// Who answered.
    pub server: ServerInfo,
    /// The error envelope, if any.
    pub error: Option<ApiError>,
    /// `data.total`; `None` when the reply has no `data`.
    pub total: Option<u64>,
    /// The connections, in the order (rising cid) of the reply.
    pub connections: Vec<Connection>,
}

/// Parses a CONNZ reply to a request for at most `limit` connections with the sweep's own
/// streaming parser and checks (for tests and fuzzing; the sweep parses into its list).
pub fn parse_reply(payload: &[u8], limit: usize) -> Result<ParsedReply, serde_json::Error> {
    let mut connections = Vec::new();
    let head = parse_page(payload, &mut connections, limit, true)?;
    Ok(ParsedReply {
        server: head.server,
        error: head.error,
        total: head.total,
        connections,
    })
}

/// The checks a parsed reply must pass beyond its shape.
fn check_page(head: &PageHead, stats: &PageStats) -> Result<(), serde_json::Error> {
    let Some(total) = head.total else {
        return Ok(());
    };
    if head.server.id.is_empty() {
        return Err(invalid("connz data without a server id"));
    }
    if stats
        .data_server_id
        .as_deref()
        .is_some_and(|id| !id.is_empty() && id != head.server.id)
    {
        return Err(invalid("connz reply names two server ids"));
    }
    if stats.count as u64 > total {
        return Err(invalid(format!(
            "{} connections but a total of {total}",
            stats.count
        )));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EnvelopeKey {
    Server,
    Data,
    Error,
    #[serde(other)]
    Other,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ConnzKey {
    Now,
    Total,
    Offset,
    ServerId,
    Connections,
    #[serde(other)]
    Other,
}

struct EnvelopeSeed<'s> {
    out: &'s mut Vec<Connection>,
    stats: &'s mut PageStats,
}

impl<'de> serde::de::DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = PageHead;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<PageHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EnvelopeSeed<'_> {
    type Value = PageHead;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a CONNZ reply")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PageHead, A::Error> {
        use serde::de::Error;
        let EnvelopeSeed { out, stats } = self;
        let mut head = PageHead::default();
        let (mut server_seen, mut data_seen, mut error_seen) = (false, false, false);
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Server if !server_seen => {
                    head.server = map.next_value()?;
                    server_seen = true;
                }
                EnvelopeKey::Error if !error_seen => {
                    head.error = map.next_value()?;
                    error_seen = true;
                }
                EnvelopeKey::Data if !data_seen => {
                    head.total = map.next_value_seed(ConnzSeed {
                        out: &mut *out,
                        stats: &mut *stats,
                        server: server_seen.then_some(&head.server),
                    })?;
                    stats.server_late |= !server_seen;
                    data_seen = true;
                }
                // A key given twice would let one reply speak for two.
                EnvelopeKey::Server | EnvelopeKey::Error | EnvelopeKey::Data => {
                    return Err(A::Error::custom("duplicate key in connz reply"));
                }
                EnvelopeKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// `data` of a CONNZ reply (or `null`): returns its `total`.
struct ConnzSeed<'s> {
    out: &'s mut Vec<Connection>,
    stats: &'s mut PageStats,
    server: Option<&'s ServerInfo>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ConnzSeed<'_> {
    type Value = Option<u64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ConnzSeed<'_> {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("CONNZ data")
    }
    fn visit_none<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        use serde::de::Error;
        let mut now = None;
        let mut total: u64 = 0;
        let mut connections_seen = false;
        while let Some(key) = map.next_key::<ConnzKey>()? {
            match key {
                ConnzKey::Now => now = map.next_value::<Option<Rfc3339>>()?,
                ConnzKey::Total => total = map.next_value()?,
                ConnzKey::Offset => {
                    // Every request of a sweep asks from offset 0.
                    let offset: i64 = map.next_value()?;
                    if offset != 0 {
                        return Err(A::Error::custom(format!(
                            "connz reply at offset {offset}, asked 0"
                        )));
                    }
                }
                ConnzKey::ServerId => {
                    let id: Option<std::borrow::Cow<'de, str>> = map.next_value()?;
                    self.stats.data_server_id = id.map(|s| s.into_owned());
                }
                ConnzKey::Connections if !connections_seen => {
                    connections_seen = true;
                    if self.stats.reserve {
                        // Never more than was asked for, whatever `total` claims.
                        let want = (total.min(self.stats.limit as u64)) as usize;
                        let spare = self.out.capacity() - self.out.len();
                        self.out.reserve_exact(want.saturating_sub(spare));
                    }
                    map.next_value_seed(ConnsSeed {
                        out: &mut *self.out,
                        stats: &mut *self.stats,
                        server: self.server,
                        // nats-server writes `now` before the connections.
                        now: now.map_or_else(Utc::now, |t| t.0.with_timezone(&Utc)),
                    })?;
                }
                ConnzKey::Connections => {
                    return Err(A::Error::custom("duplicate connections in connz reply"));
                }
                ConnzKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some(total))
    }
}

/// The `connections` array (or `null`), each one converted as it is read.
struct ConnsSeed<'s> {
    out: &'s mut Vec<Connection>,
    stats: &'s mut PageStats,
    server: Option<&'s ServerInfo>,
    now: DateTime<Utc>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ConnsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ConnsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of connections")
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let unknown = ServerInfo::default();
        let server = self.server.unwrap_or(&unknown);
        while let Some(c) = seq.next_element::<SweepConn<'de>>()? {
            let stats = &mut *self.stats;
            stats.count += 1;
            if stats.count > stats.limit {
                return Err(A::Error::custom(format!(
                    "more connections than the {} asked for",
                    stats.limit
                )));
            }
            if stats.last_cid.is_some_and(|last| c.cid <= last) {
                return Err(A::Error::custom(format!(
                    "cid {} out of order or repeated",
                    c.cid
                )));
            }
            stats.last_cid = Some(c.cid);
            self.out.push(to_connection_borrowed(server, self.now, c));
        }
        Ok(())
    }
}

fn to_connection_borrowed(server: &ServerInfo, now: DateTime<Utc>, c: SweepConn) -> Connection {
    let last = c.last_activity.map(|t| t.0.with_timezone(&Utc));
    let idle = last
        .and_then(|l| now.signed_duration_since(l).to_std().ok())
        .unwrap_or_default();
    let user_name = c.jwt.as_deref().and_then(jwt_name);
    Connection {
        server: server.name.clone(),
        server_id: server.id.clone(),
        cid: c.cid,
        kind: c.kind.map_or_else(|| "Client".into(), String::from),
        ip: c.ip.into_owned(),
        start: c.start.map(|t| t.0.with_timezone(&Utc)),
        idle,
        in_msgs: c.in_msgs,
        out_msgs: c.out_msgs,
        name: c.name.map(String::from).unwrap_or_default(),
        account: c.account.map_or_else(|| "$G".into(), String::from),
        account_name: c.name_tag.filter(|n| !n.is_empty()).map(String::from),
        user: c.authorized_user.map(String::from).unwrap_or_default(),
        user_name,
        tags: c
            .tags
            .map(|t| t.into_iter().map(String::from).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_count_wins() {
        assert_eq!(expected_count(3, Some(5), 7), Some(3));
        assert_eq!(expected_count(0, Some(2), 3), Some(3));
        assert_eq!(expected_count(0, None, 0), None);
    }

    fn statsz(name: &str, id: &str, active: usize) -> Vec<u8> {
        statsz_with(name, id, active, &[])
    }

    fn statsz_with(name: &str, id: &str, active: usize, routes: &[&str]) -> Vec<u8> {
        let routes: Vec<_> = routes
            .iter()
            .map(|r| serde_json::json!({"rid": 1, "name": r}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "server": {"name": name, "id": id, "cluster": "c1"},
            "statsz": {"active_servers": active, "routes": routes}
        }))
        .unwrap()
    }

    #[test]
    fn a_restarted_server_is_not_counted_twice() {
        let mut known = KnownServers::default();
        known.saw(Utc::now(), [("n1", "A"), ("n2", "B"), ("n3", "OLD")]);
        let mut d = Discovery::new(&known, Utc::now());
        // The survivors still count n3's old id beside its new one.
        d.add(&statsz("n1", "A", 4));
        d.add(&statsz("n2", "B", 4));
        assert!(!d.settled(0));
        d.add(&statsz("n3", "NEW", 3));
        assert!(d.settled(0));
        assert_eq!(d.count(), Some(3));
    }

    #[test]
    fn an_unknown_extra_server_is_still_expected() {
        let known = KnownServers::default();
        let mut d = Discovery::new(&known, Utc::now());
        d.add(&statsz("n1", "A", 3));
        d.add(&statsz("n2", "B", 3));
        // The same server twice is one reply.
        d.add(&statsz("n2", "B", 3));
        assert_eq!(d.count(), Some(3));
        assert!(!d.settled(0));
    }

    #[test]
    fn missing_names_known_servers_then_peers_then_placeholders() {
        let known = ["n1", "n2", "n3"];
        assert_eq!(
            missing_servers(3, &["n1", "n2"], known.into_iter(), &[]),
            vec!["n3"]
        );
        assert_eq!(
            missing_servers(3, &["n1"], ["n1"].into_iter(), &[]),
            vec![UNKNOWN_SERVER, UNKNOWN_SERVER]
        );
        assert!(missing_servers(2, &["n1", "n2"], known[..2].iter().copied(), &[]).is_empty());
        // No state: the live servers' route peers name the silent one.
        assert_eq!(
            missing_servers(3, &["n1", "n2"], std::iter::empty(), &["n3".into()]),
            vec!["n3"]
        );
        // A silent gateway cluster names the cluster; the rest stay unknown.
        assert_eq!(
            missing_servers(
                4,
                &["n1", "n2"],
                std::iter::empty(),
                &["<unknown> (cluster east)".into()]
            ),
            vec!["<unknown> (cluster east)", UNKNOWN_SERVER]
        );
    }

    #[test]
    fn route_peers_that_did_not_answer_are_named() {
        let known = KnownServers::default();
        let mut d = Discovery::new(&known, Utc::now());
        d.add(&statsz_with("n1", "A", 3, &["n2", "n3", "n3"]));
        d.add(&statsz_with("n2", "B", 3, &["n1", "n3"]));
        assert_eq!(d.peers(&["n1", "n2"]), vec!["n3"]);
    }

    #[test]
    fn one_reply_is_one_servers_whole_list_or_nothing() {
        assert_eq!(next_fetch(10, 10, 0, 1_000_000), NextFetch::Done);
        assert_eq!(next_fetch(0, 0, 0, 1_000_000), NextFetch::Done);
        assert_eq!(
            next_fetch(20_000, 10_000, 0, 1_000_000),
            NextFetch::Fetch { limit: 22_500 }
        );
        assert_eq!(
            next_fetch(100, 50, 1, 1_000_000),
            NextFetch::Fetch { limit: 356 }
        );
        assert!(matches!(
            next_fetch(100, 50, MAX_DIRECTED, 1_000_000),
            NextFetch::GiveUp(_)
        ));
        // A huge (or hostile) total is never asked for, let alone allocated.
        for total in [1_000_001, u64::MAX] {
            let NextFetch::GiveUp(why) = next_fetch(total, 0, 0, 1_000_000) else {
                panic!("{total} fetched");
            };
            assert!(why.contains("sweep.max_connections_per_server"), "{why}");
        }
        // Near the ceiling the headroom is cut, never the ceiling passed.
        assert_eq!(
            next_fetch(999_990, 0, 0, 1_000_000),
            NextFetch::Fetch { limit: 1_000_000 }
        );
    }

    #[test]
    fn pages_parse_straight_into_connections_whatever_the_key_order() {
        let page = br#"{"data":{"now":"2026-01-02T03:04:10Z","total":3,"connections":[
            {"cid":1,"ip":"10.0.0.1","account":"APP","authorized_user":"u","name":"w",
             "last_activity":"2026-01-02T03:04:05Z","start":"2026-01-02T03:00:00Z"},
            {"cid":2,"ip":"10.0.0.2","authorized_user":"v","tags":["t"]}]},
            "server":{"name":"n1","id":"NID"}}"#;
        let mut out = Vec::new();
        let head = parse_page(page, &mut out, 100, true).unwrap();
        assert_eq!((head.total, head.count), (Some(3), 2));
        assert_eq!(
            (out[0].server.as_str(), out[0].server_id.as_str()),
            ("n1", "NID")
        );
        assert_eq!(out[0].idle, Duration::from_secs(5));
        assert_eq!(
            (out[0].account.as_str(), out[1].account.as_str()),
            ("APP", "$G")
        );
        assert_eq!(out[1].kind, "Client");
        assert_eq!(out[1].tags, vec!["t"]);

        let err = parse_page(
            br#"{"server":{"name":"n2"},"error":{"code":500,"description":"boom"}}"#,
            &mut out,
            5,
            false,
        )
        .unwrap();
        assert_eq!(
            (err.total, err.error.unwrap().description.as_str()),
            (None, "boom")
        );
        let empty = parse_page(
            br#"{"server":{"name":"n2","id":"N2"},"data":{"total":0,"connections":null}}"#,
            &mut out,
            5,
            false,
        )
        .unwrap();
        assert_eq!(empty.total, Some(0));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn broken_or_hostile_replies_are_refused_and_leave_the_list_as_it_was() {
        let conns = |cids: &[u64]| {
            cids.iter()
                .map(|c| format!(r#"{{"cid":{c}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        let reply = |data: &str| format!(r#"{{"server":{{"name":"n1","id":"N1"}},"data":{data}}}"#);
        let mut deep = "[".repeat(10_000);
        deep.push_str(&"]".repeat(10_000));
        let cases: Vec<(&str, String)> = vec![
            (
                "truncated",
                r#"{"server":{},"data":{"connections":[{"cid":9},"#.into(),
            ),
            ("not json", "\u{1f}\u{8b}garbage".into()),
            (
                "deep nesting",
                reply(&format!(r#"{{"total":1,"connections":{deep}}}"#)),
            ),
            (
                "repeated cid",
                reply(&format!(
                    r#"{{"total":3,"connections":[{}]}}"#,
                    conns(&[1, 2, 2])
                )),
            ),
            (
                "unsorted",
                reply(&format!(
                    r#"{{"total":3,"connections":[{}]}}"#,
                    conns(&[3, 1])
                )),
            ),
            (
                "more than asked",
                reply(&format!(
                    r#"{{"total":9,"connections":[{}]}}"#,
                    conns(&[1, 2, 3, 4, 5, 6])
                )),
            ),
            (
                "more than its total",
                reply(&format!(
                    r#"{{"total":1,"connections":[{}]}}"#,
                    conns(&[1, 2])
                )),
            ),
            ("negative total", reply(r#"{"total":-1,"connections":[]}"#)),
            (
                "negative offset",
                reply(r#"{"total":1,"offset":-5,"connections":[]}"#),
            ),
            (
                "absurd offset",
                reply(r#"{"total":1,"offset":18446744073709551615,"connections":[]}"#),
            ),
            (
                "another offset",
                reply(r#"{"total":1,"offset":7,"connections":[]}"#),
            ),
            (
                "two server ids",
                reply(r#"{"server_id":"N2","total":0,"connections":[]}"#),
            ),
            (
                "no server id",
                r#"{"server":{"name":"n1"},"data":{"total":0}}"#.into(),
            ),
            (
                "duplicate data",
                format!(
                    r#"{{"server":{{"name":"n1","id":"N1"}},"data":{{"total":1,"connections":[{}]}},"data":{{"total":0}}}}"#,
                    conns(&[1])
                ),
            ),
            (
                "too big",
                reply(&format!(
                    r#"{{"total":1,"pad":"{}","connections":[]}}"#,
                    "x".repeat(200_000)
                )),
            ),
        ];
        let mut out = vec![];
        parse_page(
            reply(&format!(
                r#"{{"total":2,"connections":[{}]}}"#,
                conns(&[1, 2])
            ))
            .as_bytes(),
            &mut out,
            5,
            false,
        )
        .unwrap();
        for (what, payload) in cases {
            assert!(
                parse_page(payload.as_bytes(), &mut out, 5, true).is_err(),
                "{what} accepted"
            );
            assert_eq!(out.len(), 2, "{what} left connections behind");
        }
        // A total near u64::MAX parses (it is a number) but reserves no more than was asked.
        let mut fresh = Vec::new();
        let head = parse_page(
            reply(r#"{"total":18446744073709551615,"connections":[{"cid":1}]}"#).as_bytes(),
            &mut fresh,
            5,
            true,
        )
        .unwrap();
        assert_eq!(head.total, Some(u64::MAX));
        assert!(fresh.capacity() <= 5, "reserved {}", fresh.capacity());
    }

    fn connz(name: &str, id: &str, total: u64, cids: &[u64]) -> Vec<u8> {
        let conns: Vec<_> = cids.iter().map(|c| serde_json::json!({"cid": c})).collect();
        serde_json::to_vec(&serde_json::json!({
            "server": {"name": name, "id": id},
            "data": {"server_id": id, "total": total, "offset": 0, "connections": conns}
        }))
        .unwrap()
    }

    #[test]
    fn only_vouched_distinct_servers_count_and_impostors_never_replace_them() {
        let known = KnownServers::default();
        let mut d = Discovery::new(&known, Utc::now());
        let mut firsts = FirstReplies::new(100, None);
        let mut bad = 0;
        // Garbage and impostors arrive first.
        firsts.add(b"{not json", &mut bad);
        firsts.add(&connz("fake", "NFAKE", 1, &[1]), &mut bad);
        firsts.add(&connz("evil", "N1", 1, &[7]), &mut bad);
        firsts.add(&connz("n2", "N2", 1, &[9]), &mut bad);
        firsts.add(&connz("n2", "N2", 1, &[3]), &mut bad);
        assert_eq!(bad, 1);
        d.add(&statsz("n1", "N1", 3));
        d.add(&statsz("n2", "N2", 3));
        d.add(&statsz("n3", "N3", 3));
        // Nothing vouched but n2's id so far (twice: still one server).
        assert_eq!(firsts.answered(&d), 1);
        firsts.add(&connz("n1", "N1", 2, &[1, 2]), &mut bad);
        firsts.add(&connz("n3", "N3", 3, &[1]), &mut bad);
        assert_eq!(firsts.answered(&d), 3);

        let mut snap = Snapshot {
            bad_replies: bad,
            ..Snapshot::default()
        };
        let (done, fetches) = firsts.resolve(&d, &mut snap);
        // "fake" (unknown id) and "evil" (n1's id under another name) are bad; n2 answered
        // twice with different lists: an error, counted nowhere.
        assert_eq!(snap.bad_replies, 1 + 2 + 1);
        assert_eq!(
            done.iter()
                .map(|f| f.server.name.as_str())
                .collect::<Vec<_>>(),
            vec!["n1"]
        );
        assert_eq!(
            snap.connections.iter().map(|c| c.cid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(fetches.len(), 1, "n3 is read again in one request");
        assert_eq!((fetches[0].total, fetches[0].returned), (3, 1));
        assert_eq!(snap.errors.len(), 1);
        assert_eq!(snap.errors[0].server, "n2");
    }

    #[tokio::test]
    async fn a_slow_item_holds_up_only_itself() {
        let (release, slow) = tokio::sync::oneshot::channel::<()>();
        let mut slow = Some(slow);
        let items: Vec<usize> = (0..10).collect();
        let results = bounded_unordered(items, 3, |i| {
            let wait = if i == 0 { slow.take() } else { None };
            async move {
                if let Some(w) = wait {
                    let _ = w.await;
                }
                i
            }
        });
        futures::pin_mut!(results);
        // Every other item finishes while the first is still waiting.
        let mut first_nine = Vec::new();
        for _ in 0..9 {
            let next = tokio::time::timeout(Duration::from_secs(10), results.next())
                .await
                .expect("a slow item held up the others");
            first_nine.push(next.unwrap());
        }
        first_nine.sort();
        assert_eq!(first_nine, (1..10).collect::<Vec<_>>());
        release.send(()).unwrap();
        assert_eq!(results.next().await, Some(0));
    }
}
