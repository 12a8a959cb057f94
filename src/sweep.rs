//! One sweep: ask every server for its connections, page the large ones, note who was silent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
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

/// Placeholder in `missing` for an expected server whose name connwatch never learned.
pub const UNKNOWN_SERVER: &str = "<unknown>";

/// Page overlap: each directed page starts this many connections before where the last ended,
/// so a connection closing between two pages cannot make the next page skip one.
const OVERLAP: usize = 16;
/// How long a sweep that knows the cluster's size only from STATSZ waits for late replies.
const DISCOVERY_LINGER: Duration = Duration::from_millis(100);
/// How often in a row one server's paging may step back after seeing a gap; past it the server's
/// connections are reported as incomplete (the sweep is partial), never silently short.
const MAX_REWINDS: u32 = 8;
/// How often in all one server's paging may step back, so constant churn cannot keep it paging.
const MAX_TOTAL_REWINDS: u32 = 32;
/// Servers paged at the same time: each page holds one reply in memory and costs its server a
/// sort of all its connections, so a super-cluster is paged a few servers at a time.
const PAGE_CONCURRENCY: usize = 8;

/// Connections an account must hold, cluster-wide, for its users to be swept in detail in
/// [`SweepMode::HotAccounts`]: called with the account (name or key) and its human name.
pub type AccountFloor = Arc<dyn Fn(&str, Option<&str>) -> u64 + Send + Sync>;

/// What one sweep asks the servers for.
#[derive(Clone, Default)]
pub enum SweepMode {
    /// Every connection of every server (CONNZ to all, then directed pages).
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

    /// Runs one sweep over the cluster.
    pub async fn sweep(&mut self) -> Result<Snapshot, SweepError> {
        // Asking while disconnected would only wait out the timeout for no answer.
        if self.system.client().connection_state() != async_nats::connection::State::Connected {
            return Err(SweepError::NotConnected);
        }
        let t0 = Instant::now();
        let started = Utc::now();
        let mut snap = Snapshot {
            started: Some(started),
            connections: Vec::with_capacity(self.last_connections + self.last_connections / 32),
            ..Snapshot::default()
        };
        self.known
            .forget_old(started, self.cfg.forget_servers_after);

        // CONNZ (or account STATZ) to every server, and (unless configured) STATSZ in the same
        // breath to learn how many servers there are: both are gathered until the expected
        // servers answered. Replies are parsed as they arrive and dropped: one held at a time.
        let configured = self.cfg.expected_servers;
        let known = self.known.servers.len();
        let hot = matches!(self.mode, SweepMode::HotAccounts(_));
        let mut requests = vec![if hot {
            (PING_ACCOUNT_STATZ, account_statz_body())
        } else {
            (PING_CONNZ, connz_body(self.cfg.page_size, 0, None))
        }];
        if configured == 0 {
            requests.push((PING_STATSZ, Bytes::new()));
        }
        snap.requests += requests.len();
        let mut discovery = Discovery::new(&self.known, started);
        let mut first_replies = 0;
        let mut finished = false;
        let mut firsts = FirstPages::new(self.cfg.page_size, None);
        let mut accounts = AccountCounts::default();
        // A count from STATSZ alone can be low while a cluster forms: linger briefly then.
        let linger = if configured == 0 && known == 0 {
            DISCOVERY_LINGER
        } else {
            Duration::ZERO
        };
        self.system
            .scatter_each(&requests, self.cfg.timeout, linger, |i, msg| {
                snap.bytes += msg.payload.len();
                if i == 0 {
                    first_replies += 1;
                    if hot {
                        accounts.add(&msg.payload, &mut snap);
                    } else {
                        firsts.add(&msg.payload, &mut snap);
                    }
                } else if !finished {
                    discovery.add(&msg.payload);
                }
                if !finished {
                    finished = discovery.settled(configured)
                        && expected_count(configured, discovery.count(), known)
                            .is_some_and(|e| first_replies >= e);
                    return finished;
                }
                false
            })
            .await
            .map_err(sweep_error)?;
        snap.servers_expected = expected_count(configured, discovery.count(), known).unwrap_or(0);

        let paged = if let SweepMode::HotAccounts(floor) = &self.mode {
            let hot_accounts = accounts.hot(floor.as_ref());
            let firsts = self
                .hot_first_pages(&hot_accounts, &accounts.servers, &mut snap)
                .await?;
            let mut paged = self.page_all(firsts, &mut snap.connections).await;
            // Servers that answered STATZ but hold none of the hot accounts' connections.
            for (id, server) in accounts.servers {
                if !paged.iter().any(|p| p.server.id == id) {
                    paged.push(Paged::new(server, 0, None));
                }
            }
            merge_by_server(paged)
        } else {
            self.page_all(firsts.pages, &mut snap.connections).await
        };
        for p in paged {
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

        let answered: Vec<&str> = snap
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain(snap.errors.iter().map(|e| e.server.as_str()))
            .collect();
        snap.missing = missing_servers(snap.servers_expected, &answered, self.known.names());
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

    /// Pages every server on from its first page, a few servers at a time.
    async fn page_all(&self, firsts: Vec<Paged>, conns: &mut Vec<Connection>) -> Vec<Paged> {
        // The pages of several servers are polled in turn by this one task; the lock is never
        // held across an await.
        let sink = Mutex::new(std::mem::take(conns));
        let paged = futures::stream::iter(firsts)
            .map(|first| {
                page_server(
                    &self.system,
                    first,
                    self.cfg.page_size,
                    self.cfg.timeout,
                    &sink,
                )
            })
            .buffered(PAGE_CONCURRENCY)
            .collect()
            .await;
        *conns = sink.into_inner().unwrap_or_else(|e| e.into_inner());
        paged
    }

    /// CONNZ filtered by account, for each hot account, to every server: the first pages.
    async fn hot_first_pages(
        &self,
        hot: &[String],
        servers: &[(String, ServerInfo)],
        snap: &mut Snapshot,
    ) -> Result<Vec<Paged>, SweepError> {
        // The servers that counted the accounts are the ones that must list their connections.
        let expected = servers.len();
        if hot.is_empty() {
            return Ok(Vec::new());
        }
        let subjects: Vec<(&str, Bytes)> = hot
            .iter()
            .map(|acc| (PING_CONNZ, connz_body(self.cfg.page_size, 0, Some(acc))))
            .collect();
        snap.requests += subjects.len();
        let mut per_account: Vec<FirstPages> = hot
            .iter()
            .map(|acc| FirstPages::new(self.cfg.page_size, Some(acc.clone())))
            .collect();
        let mut answered = vec![0usize; hot.len()];
        let mut complete = 0;
        self.system
            .scatter_each(&subjects, self.cfg.timeout, Duration::ZERO, |i, msg| {
                snap.bytes += msg.payload.len();
                let Some(pages) = per_account.get_mut(i) else {
                    return false;
                };
                pages.add(&msg.payload, snap);
                answered[i] += 1;
                if answered[i] == expected.max(1) {
                    complete += 1;
                }
                complete == hot.len()
            })
            .await
            .map_err(sweep_error)?;
        for pages in &per_account {
            for (id, server) in servers {
                let errored = snap.errors.iter().any(|e| e.server == display_name(server));
                if !pages.ids.contains(id) && !errored {
                    snap.errors.push(ServerError {
                        server: display_name(server),
                        error: format!(
                            "no connz reply for account {}",
                            pages.acc.as_deref().unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(per_account.into_iter().flat_map(|p| p.pages).collect())
    }
}

/// What STATSZ replies say about the cluster's size.
///
/// A server that restarted comes back with a new id, while the others keep counting its old id
/// in `active_servers` until they notice it is gone (minutes). A known name answering with a
/// new id is such a restart: its ghost is not waited for.
#[derive(Debug)]
struct Discovery<'a> {
    known: &'a KnownServers,
    now: DateTime<Utc>,
    replies: usize,
    most_active: usize,
    restarted: HashSet<String>,
}

impl<'a> Discovery<'a> {
    fn new(known: &'a KnownServers, now: DateTime<Utc>) -> Self {
        Self {
            known,
            now,
            replies: 0,
            most_active: 0,
            restarted: HashSet::new(),
        }
    }

    fn add(&mut self, payload: &[u8]) {
        self.replies += 1;
        if let Ok(r) = parse::<StatszReply>(payload) {
            self.most_active = self
                .most_active
                .max(r.statsz.map(|s| s.active_servers).unwrap_or(0));
            if self
                .known
                .recently_restarted(&r.server.name, &r.server.id, self.now)
            {
                self.restarted.insert(r.server.name);
            }
        }
    }

    /// Whether every server the cluster counts has answered STATSZ (or the size is configured),
    /// so that a server the responders do not count yet cannot be missed.
    fn settled(&self, configured: usize) -> bool {
        configured > 0
            || (self.replies > 0
                && self.replies >= self.most_active.saturating_sub(self.restarted.len()))
    }

    /// The cluster's size as far as the replies so far tell; `None` before any reply.
    fn count(&self) -> Option<usize> {
        let active = self.most_active.saturating_sub(self.restarted.len());
        Some(active.max(self.replies)).filter(|n| *n > 0)
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

/// First CONNZ pages (of one request) as they arrive, parsed on arrival.
struct FirstPages {
    page_size: usize,
    acc: Option<String>,
    ids: HashSet<String>,
    pages: Vec<Paged>,
}

impl FirstPages {
    fn new(page_size: usize, acc: Option<String>) -> Self {
        Self {
            page_size,
            acc,
            ids: HashSet::new(),
            pages: Vec::new(),
        }
    }

    /// Parses one first page; its connections go to `snap.connections`.
    fn add(&mut self, payload: &[u8], snap: &mut Snapshot) {
        let mut pager = Pager::new(self.page_size);
        let start = snap.connections.len();
        match parse_page(payload, 0, &mut pager, &mut snap.connections, true) {
            Err(e) => {
                snap.bad_replies += 1;
                warn!(error = %e, bytes = payload.len(), "unparseable connz reply");
            }
            Ok(head) if !self.ids.insert(head.server.id.clone()) => {
                snap.connections.truncate(start);
                warn!(server = %head.server.name, "duplicate connz reply ignored");
            }
            Ok(PageHead {
                server,
                error: Some(err),
                ..
            }) => {
                snap.connections.truncate(start);
                warn!(server = %server.name, code = err.code, error = %err.description, "server answered connz with an error");
                snap.errors.push(ServerError {
                    server: display_name(&server),
                    error: err.description,
                });
            }
            Ok(PageHead {
                server,
                total: None,
                ..
            }) => {
                snap.bad_replies += 1;
                warn!(server = %server.name, "connz reply without data");
                snap.errors.push(ServerError {
                    server: display_name(&server),
                    error: "reply without data".into(),
                });
            }
            Ok(PageHead {
                server,
                total: Some(total),
                ..
            }) => {
                let mut paged = Paged::new(server, self.page_size, self.acc.clone());
                paged.pager = pager;
                paged.total = total;
                paged.pages = 1;
                self.pages.push(paged);
            }
        }
    }
}

/// Per-account connection counts from account STATZ replies, summed over the servers.
#[derive(Default)]
struct AccountCounts {
    /// Account → (human name, connections cluster-wide).
    totals: BTreeMap<String, (Option<String>, u64)>,
    /// The servers that answered, by id.
    servers: Vec<(String, ServerInfo)>,
}

impl AccountCounts {
    fn add(&mut self, payload: &[u8], snap: &mut Snapshot) {
        let reply = match parse::<Reply<AccountStatzData>>(payload) {
            Ok(r) => r,
            Err(e) => {
                snap.bad_replies += 1;
                warn!(error = %e, "unparseable account statz reply");
                return;
            }
        };
        if self.servers.iter().any(|(id, _)| *id == reply.server.id) {
            return;
        }
        if let Some(err) = reply.error {
            snap.errors.push(ServerError {
                server: display_name(&reply.server),
                error: err.description,
            });
            return;
        }
        for a in reply
            .data
            .and_then(|d| d.account_statz)
            .into_iter()
            .flatten()
        {
            let entry = self.totals.entry(a.acc).or_default();
            entry.1 += a.conns + a.leafnodes;
            if entry.0.is_none() {
                entry.0 = a.name.filter(|n| !n.is_empty());
            }
        }
        self.servers.push((reply.server.id.clone(), reply.server));
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

/// One server's results over several accounts' pages, as one.
fn merge_by_server(paged: Vec<Paged>) -> Vec<Paged> {
    let mut out: Vec<Paged> = Vec::new();
    for p in paged {
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

/// The expected servers that did not answer: remembered names first, then placeholders for
/// servers the cluster counts but connwatch never saw.
pub fn missing_servers<'a>(
    expected: usize,
    answered: &[&str],
    known: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut missing: Vec<String> = known
        .filter(|k| !answered.contains(k))
        .map(str::to_string)
        .collect();
    let unaccounted = expected.saturating_sub(answered.len() + missing.len());
    missing.extend(std::iter::repeat_n(UNKNOWN_SERVER.to_string(), unaccounted));
    missing
}

/// One server's connections, gathered over its pages.
struct Paged {
    server: ServerInfo,
    /// The account filter of the pages (hot-account sweeps).
    acc: Option<String>,
    pager: Pager,
    total: u64,
    pages: usize,
    requests: usize,
    bytes: usize,
    bad_replies: usize,
    error: Option<String>,
}

impl Paged {
    fn new(server: ServerInfo, page_size: usize, acc: Option<String>) -> Self {
        Self {
            server,
            acc,
            pager: Pager::new(page_size),
            total: 0,
            pages: 0,
            requests: 0,
            bytes: 0,
            bad_replies: 0,
            error: None,
        }
    }
}

/// Pages through one server with directed requests until its `total` is covered.
async fn page_server(
    system: &System,
    mut out: Paged,
    page_size: usize,
    timeout: Duration,
    sink: &Mutex<Vec<Connection>>,
) -> Paged {
    let subject = server_subject(&out.server.id, "CONNZ");
    while let Some(offset) = out.pager.next_offset() {
        out.requests += 1;
        let reply = match system
            .request(
                subject.clone(),
                connz_body(page_size, offset, out.acc.as_deref()),
                timeout,
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(server = %out.server.name, offset, error = %e, "connz page failed");
                out.error = Some(format!("connz page at offset {offset} failed: {e}"));
                break;
            }
        };
        out.bytes += reply.payload.len();
        let parsed = {
            let mut conns = sink.lock().unwrap_or_else(|e| e.into_inner());
            parse_page(&reply.payload, offset, &mut out.pager, &mut conns, false)
        };
        match parsed {
            Ok(PageHead {
                total: Some(total), ..
            }) => {
                out.pages += 1;
                out.total = total;
            }
            Ok(PageHead { error, .. }) => {
                let why = error
                    .map(|e| e.description)
                    .unwrap_or_else(|| "no data".into());
                out.error = Some(format!("connz page at offset {offset}: {why}"));
                break;
            }
            Err(e) => {
                out.bad_replies += 1;
                out.error = Some(format!("unparseable connz page at offset {offset}: {e}"));
                break;
            }
        }
    }
    if out.error.is_none() && out.pager.incomplete() {
        warn!(server = %out.server.name, "connections closed faster than pages could follow");
        out.error = Some(
            "connections closed between pages faster than paging could follow: some may be missing"
                .into(),
        );
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
    parse_page(&msg.payload, 0, &mut Pager::new(1), &mut conns, false)
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

/// Decides the pages of one server: sorted by cid, each page overlapping the last, every cid
/// kept once, and a step back when a page starts past the highest cid seen (connections closed
/// below the offset shifted the list).
#[derive(Debug)]
pub struct Pager {
    page_size: usize,
    seen: HashSet<u64>,
    max_cid: Option<u64>,
    offset: usize,
    total: usize,
    done: bool,
    rewinds: u32,
    total_rewinds: u32,
    first_total: Option<usize>,
    pages: usize,
    unresolved_gap: bool,
    checking_end: bool,
}

impl Pager {
    /// A pager for pages of `page_size`.
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size: page_size.max(1),
            seen: HashSet::new(),
            max_cid: None,
            offset: 0,
            total: 0,
            done: false,
            rewinds: 0,
            total_rewinds: 0,
            first_total: None,
            pages: 0,
            unresolved_gap: false,
            checking_end: false,
        }
    }

    /// Takes the page asked for at `offset`; returns the indices of connections not seen before.
    pub fn accept(&mut self, offset: usize, cids: &[u64], total: usize) -> Vec<usize> {
        let before = self.max_cid;
        let fresh: Vec<usize> = (0..cids.len())
            .filter(|&i| self.seen.insert(cids[i]))
            .collect();
        let stats = PageStats {
            first: cids.first().copied(),
            max: cids.iter().copied().max(),
            count: cids.len(),
            ..PageStats::default()
        };
        self.finish(offset, &stats, before, total);
        fresh
    }

    /// Whether a connection of the page being read was not seen before (and is now).
    fn fresh(&mut self, cid: u64) -> bool {
        self.seen.insert(cid)
    }

    /// Ends the page asked for at `offset`, whose connections went through [`Pager::fresh`];
    /// `before` is the highest cid seen before it.
    fn finish(&mut self, offset: usize, page: &PageStats, before: Option<u64>, total: usize) {
        self.total = total;
        let Some(first) = page.first else {
            // Nothing at this offset. If connections closed below it, the rest moved under it:
            // read the last ones once more before concluding.
            if offset > 0 && total > 0 && !self.checking_end {
                self.checking_end = true;
                self.offset = total.min(offset - 1);
            } else {
                self.done = true;
            }
            return;
        };
        let gap = offset > 0 && before.is_some_and(|m| first > m);
        if gap && self.rewinds < MAX_REWINDS && self.total_rewinds < MAX_TOTAL_REWINDS {
            // The highest cid read contiguously stays where it was until the hole is filled.
            self.rewinds += 1;
            self.total_rewinds += 1;
            self.offset = offset.saturating_sub(self.page_size);
        } else {
            self.unresolved_gap |= gap;
            self.rewinds = 0;
            self.offset = offset + page.count;
            self.max_cid = page.max.max(before);
        }
        // Done on a short page, or after the end was checked. Once stepping back is used up, a
        // gap no longer holds paging open (it is reported).
        let chasing = gap && self.total_rewinds < MAX_TOTAL_REWINDS;
        if (page.count < self.page_size || self.checking_end) && !chasing {
            self.done = true;
        }
        // A server whose connections come and go faster than its pages can be read: stop after
        // twice the pages its first total needed, and say the count may be short.
        self.pages += 1;
        let first_total = *self.first_total.get_or_insert(total);
        let step = (self.page_size - OVERLAP.min(self.page_size / 2)).max(1);
        if !self.done && self.pages > 2 * (first_total / step) + MAX_TOTAL_REWINDS as usize + 4 {
            self.done = true;
            self.unresolved_gap = true;
        }
        self.checking_end = false;
    }

    /// Whether connections may have been skipped: connections closed between pages faster than
    /// stepping back could follow.
    pub fn incomplete(&self) -> bool {
        self.unresolved_gap
    }

    /// The offset of the next page to ask for, if any.
    pub fn next_offset(&self) -> Option<usize> {
        // Only a short page ends a server: `total` may have shrunk under the offset.
        if self.done {
            return None;
        }
        // Less overlap than a page, or small pages would never move forward.
        Some(self.offset.saturating_sub(OVERLAP.min(self.page_size / 2)))
    }
}

/// What a CONNZ reply said besides its connections (which went to the snapshot already).
#[derive(Debug, Default)]
struct PageHead {
    server: ServerInfo,
    error: Option<ApiError>,
    /// `data.total`; `None` when the reply has no `data`.
    total: Option<u64>,
}

/// What the connections of one page looked like, for the pager.
#[derive(Debug, Default)]
struct PageStats {
    first: Option<u64>,
    max: Option<u64>,
    count: usize,
    /// Reserve room for the server's `total` before the first connection (first pages).
    reserve: bool,
    /// `data` came before `server` (nats-server writes `server` first).
    server_late: bool,
}

/// Parses one CONNZ reply straight into `out`: each connection the pager has not seen yet is
/// converted from the reply's borrowed strings as it is read, so neither the page's
/// connections nor their strings are ever held twice. On error `out` is left as it was.
fn parse_page(
    payload: &[u8],
    offset: usize,
    pager: &mut Pager,
    out: &mut Vec<Connection>,
    reserve: bool,
) -> Result<PageHead, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let start = out.len();
    let before = pager.max_cid;
    let mut stats = PageStats {
        reserve,
        ..PageStats::default()
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed = EnvelopeSeed {
        pager: &mut *pager,
        out: &mut *out,
        stats: &mut stats,
    }
    .deserialize(&mut de)
    .and_then(|head| de.end().map(|()| head));
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
    if let Some(total) = head.total {
        pager.finish(offset, &stats, before, total as usize);
    }
    Ok(head)
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
    Connections,
    #[serde(other)]
    Other,
}

struct EnvelopeSeed<'s> {
    pager: &'s mut Pager,
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
        let EnvelopeSeed { pager, out, stats } = self;
        let mut head = PageHead::default();
        let mut server_seen = false;
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Server => {
                    head.server = map.next_value()?;
                    server_seen = true;
                }
                EnvelopeKey::Error => head.error = map.next_value()?,
                EnvelopeKey::Data => {
                    head.total = map.next_value_seed(ConnzSeed {
                        pager: &mut *pager,
                        out: &mut *out,
                        stats: &mut *stats,
                        server: server_seen.then_some(&head.server),
                    })?;
                    stats.server_late |= !server_seen;
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
    pager: &'s mut Pager,
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
        let mut now = None;
        let mut total = 0;
        while let Some(key) = map.next_key::<ConnzKey>()? {
            match key {
                ConnzKey::Now => now = map.next_value::<Option<Rfc3339>>()?,
                ConnzKey::Total => total = map.next_value()?,
                ConnzKey::Connections => {
                    if self.stats.reserve {
                        let spare = self.out.capacity() - self.out.len();
                        self.out
                            .reserve_exact((total as usize).saturating_sub(spare));
                    }
                    map.next_value_seed(ConnsSeed {
                        pager: &mut *self.pager,
                        out: &mut *self.out,
                        stats: &mut *self.stats,
                        server: self.server,
                        // nats-server writes `now` before the connections.
                        now: now.map_or_else(Utc::now, |t| t.0.with_timezone(&Utc)),
                    })?;
                }
                ConnzKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some(total))
    }
}

/// The `connections` array (or `null`), each fresh one converted as it is read.
struct ConnsSeed<'s> {
    pager: &'s mut Pager,
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
        let unknown = ServerInfo::default();
        let server = self.server.unwrap_or(&unknown);
        while let Some(c) = seq.next_element::<SweepConn<'de>>()? {
            let stats = &mut *self.stats;
            stats.count += 1;
            stats.first.get_or_insert(c.cid);
            stats.max = stats.max.max(Some(c.cid));
            if self.pager.fresh(c.cid) {
                self.out.push(to_connection_borrowed(server, self.now, c));
            }
        }
        Ok(())
    }
}

/// Turns a borrowed wire connection into census input (one copy per string), with idle time
/// by the server's clock.
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
        serde_json::to_vec(&serde_json::json!({
            "server": {"name": name, "id": id},
            "statsz": {"active_servers": active}
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
        assert_eq!(d.count(), Some(3));
        assert!(!d.settled(0));
    }

    #[test]
    fn missing_names_known_servers_then_placeholders() {
        let known = ["n1", "n2", "n3"];
        assert_eq!(
            missing_servers(3, &["n1", "n2"], known.into_iter()),
            vec!["n3"]
        );
        assert_eq!(
            missing_servers(3, &["n1"], ["n1"].into_iter()),
            vec![UNKNOWN_SERVER, UNKNOWN_SERVER]
        );
        assert!(missing_servers(2, &["n1", "n2"], known[..2].iter().copied()).is_empty());
    }

    /// Simulates a server's cid-sorted connection list and pages through it.
    fn page_all(list: &mut Vec<u64>, page: usize, close_after_first: &[u64]) -> Vec<u64> {
        let mut p = Pager::new(page);
        let mut got = Vec::new();
        let mut offset = 0;
        let mut first = true;
        loop {
            let slice: Vec<u64> = list.iter().skip(offset).take(page).copied().collect();
            for i in p.accept(offset, &slice, list.len()) {
                got.push(slice[i]);
            }
            if first {
                list.retain(|c| !close_after_first.contains(c));
                first = false;
            }
            match p.next_offset() {
                Some(o) => offset = o,
                None => break,
            }
        }
        got
    }

    #[test]
    fn pages_cover_every_connection_once() {
        let mut list: Vec<u64> = (1..=2500).collect();
        let got = page_all(&mut list, 1000, &[]);
        assert_eq!(got.len(), 2500);
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 2500);
    }

    #[test]
    fn closing_connections_between_pages_skips_none_of_the_rest() {
        let mut list: Vec<u64> = (1..=3000).collect();
        // 100 connections from the first page close before the second page is read.
        let closed: Vec<u64> = (1..=100).collect();
        let got: HashSet<u64> = page_all(&mut list, 1000, &closed).into_iter().collect();
        for cid in 101..=3000 {
            assert!(got.contains(&cid), "cid {cid} skipped");
        }
    }

    #[test]
    fn pages_parse_straight_into_connections_whatever_the_key_order() {
        let page = br#"{"data":{"now":"2026-01-02T03:04:10Z","total":3,"connections":[
            {"cid":1,"ip":"10.0.0.1","account":"APP","authorized_user":"u","name":"w",
             "last_activity":"2026-01-02T03:04:05Z","start":"2026-01-02T03:00:00Z"},
            {"cid":2,"ip":"10.0.0.2","authorized_user":"v","tags":["t"]}]},
            "server":{"name":"n1","id":"NID"}}"#;
        let mut pager = Pager::new(100);
        let mut out = Vec::new();
        let head = parse_page(page, 0, &mut pager, &mut out, true).unwrap();
        assert_eq!(head.total, Some(3));
        assert_eq!(out.len(), 2);
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
        assert_eq!(pager.next_offset(), None, "a short page ends the server");

        // The second page repeats cid 2: only cid 3 is new.
        let page2 = br#"{"server":{"name":"n1","id":"NID"},"data":{"total":3,"connections":[
            {"cid":2},{"cid":3}]}}"#;
        parse_page(page2, 0, &mut pager, &mut out, false).unwrap();
        assert_eq!(out.iter().map(|c| c.cid).collect::<Vec<_>>(), vec![1, 2, 3]);

        // A broken reply leaves the connections as they were.
        assert!(parse_page(
            br#"{"server":{},"data":{"connections":[{"cid":9},"#,
            0,
            &mut Pager::new(5),
            &mut out,
            false
        )
        .is_err());
        assert_eq!(out.len(), 3);
        let err = parse_page(
            br#"{"server":{"name":"n2"},"error":{"code":500,"description":"boom"}}"#,
            0,
            &mut Pager::new(5),
            &mut out,
            false,
        )
        .unwrap();
        assert_eq!(
            (err.total, err.error.unwrap().description.as_str()),
            (None, "boom")
        );
        let empty = parse_page(
            br#"{"server":{"name":"n2"},"data":{"total":0,"connections":null}}"#,
            0,
            &mut Pager::new(5),
            &mut out,
            false,
        )
        .unwrap();
        assert_eq!(empty.total, Some(0));
    }

    #[test]
    fn pages_smaller_than_the_overlap_still_move_forward() {
        for page in [1, 2, 3, 16, 17] {
            let mut list: Vec<u64> = (1..=40).collect();
            assert_eq!(page_all(&mut list, page, &[]).len(), 40, "page size {page}");
        }
    }

    #[test]
    fn a_short_page_ends_the_server() {
        let mut p = Pager::new(10);
        assert_eq!(p.accept(0, &[1, 2, 3], 3).len(), 3);
        assert_eq!(p.next_offset(), None);
    }
}
