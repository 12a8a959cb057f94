//! One sweep: ask every server for its connections, page the large ones, note who was silent.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::SweepConfig;
use crate::nats::wire::{
    jwt_name, Accountz, ConnInfo, Connz, ConnzRequest, Reply, ServerInfo, StatszReply, Varz,
};
use crate::nats::{
    parse, server_subject, RequestError, System, PING_CONNZ, PING_STATSZ, PING_VARZ,
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
/// How often one server's paging may step back after seeing a gap.
const MAX_REWINDS: u32 = 3;

/// A sweep that could not run at all (as opposed to a partial one).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
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
}

impl Sweeper {
    /// A sweeper over a connected client, expecting the servers seen before.
    pub fn new(system: System, config: &SweepConfig, known: KnownServers) -> Self {
        Self {
            system,
            cfg: config.clone(),
            known,
        }
    }

    /// The servers seen so far (for the state file).
    pub fn known(&self) -> &KnownServers {
        &self.known
    }

    /// Runs one sweep over the cluster.
    pub async fn sweep(&mut self) -> Result<Snapshot, SweepError> {
        let t0 = Instant::now();
        let started = Utc::now();
        let mut snap = Snapshot {
            started: Some(started),
            ..Snapshot::default()
        };
        self.known
            .forget_old(started, self.cfg.forget_servers_after);

        // CONNZ to every server, and (unless configured) STATSZ in the same breath to learn how
        // many servers there are: both are gathered until the expected servers answered.
        let configured = self.cfg.expected_servers;
        let known = self.known.servers.len();
        let mut requests = vec![(PING_CONNZ, connz_body(self.cfg.page_size, 0))];
        if configured == 0 {
            requests.push((PING_STATSZ, Bytes::new()));
        }
        snap.requests += requests.len();
        let mut discovery = Discovery::new(&self.known, started);
        let mut connz_replies = 0;
        // A count from STATSZ alone can be low while a cluster forms: linger briefly then.
        let linger = if configured == 0 && known == 0 {
            DISCOVERY_LINGER
        } else {
            Duration::ZERO
        };
        let replies = self
            .system
            .scatter_many(&requests, self.cfg.timeout, linger, |i, msg| {
                if i == 0 {
                    connz_replies += 1;
                } else {
                    discovery.add(&msg.payload);
                }
                discovery.settled(configured)
                    && expected_count(configured, discovery.count(), known)
                        .is_some_and(|e| connz_replies >= e)
            })
            .await
            .map_err(sweep_error)?;
        snap.servers_expected = expected_count(configured, discovery.count(), known).unwrap_or(0);
        let replies: Vec<_> = replies
            .into_iter()
            .filter_map(|(i, m)| {
                snap.bytes += m.payload.len();
                (i == 0).then_some(m)
            })
            .collect();

        let mut first_pages = Vec::new();
        let mut ids = HashSet::new();
        for msg in replies {
            match parse::<Reply<Connz>>(&msg.payload) {
                Err(e) => {
                    snap.bad_replies += 1;
                    warn!(error = %e, bytes = msg.payload.len(), "unparseable connz reply");
                }
                Ok(reply) if !ids.insert(reply.server.id.clone()) => {
                    warn!(server = %reply.server.name, "duplicate connz reply ignored");
                }
                Ok(Reply {
                    server,
                    error: Some(err),
                    ..
                }) => {
                    warn!(server = %server.name, code = err.code, error = %err.description, "server answered connz with an error");
                    snap.errors.push(ServerError {
                        server: display_name(&server),
                        error: err.description,
                    });
                }
                Ok(Reply {
                    server, data: None, ..
                }) => {
                    snap.bad_replies += 1;
                    warn!(server = %server.name, "connz reply without data");
                    snap.errors.push(ServerError {
                        server: display_name(&server),
                        error: "reply without data".into(),
                    });
                }
                Ok(Reply {
                    server,
                    data: Some(connz),
                    ..
                }) => first_pages.push((server, connz)),
            }
        }

        let paged = join_all(first_pages.into_iter().map(|(server, first)| {
            page_server(
                &self.system,
                server,
                first,
                self.cfg.page_size,
                self.cfg.timeout,
            )
        }))
        .await;
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
            snap.connections.extend(p.connections);
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
        snap.duration = t0.elapsed();
        info!(
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

fn connz_body(limit: usize, offset: usize) -> Bytes {
    let req = ConnzRequest {
        auth: true,
        limit,
        offset,
        sort: "cid",
        ..ConnzRequest::default()
    };
    Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"))
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
    connections: Vec<Connection>,
    total: u64,
    pages: usize,
    requests: usize,
    bytes: usize,
    bad_replies: usize,
    error: Option<String>,
}

/// Pages through one server with directed requests until its `total` is covered.
async fn page_server(
    system: &System,
    server: ServerInfo,
    first: Connz,
    page_size: usize,
    timeout: Duration,
) -> Paged {
    let mut pager = Pager::new(page_size);
    let mut out = Paged {
        server,
        connections: Vec::new(),
        total: first.total,
        pages: 1,
        requests: 0,
        bytes: 0,
        bad_replies: 0,
        error: None,
    };
    let subject = server_subject(&out.server.id, "CONNZ");
    let mut page = first;
    let mut offset = 0;
    loop {
        let conns = page.connections.take().unwrap_or_default();
        let cids: Vec<u64> = conns.iter().map(|c| c.cid).collect();
        let keep = pager.accept(offset, &cids, page.total as usize);
        out.total = page.total;
        let now = page
            .now
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        let keep: HashSet<usize> = keep.into_iter().collect();
        for (i, c) in conns.into_iter().enumerate() {
            if keep.contains(&i) {
                out.connections.push(to_connection(&out.server, now, c));
            }
        }
        let Some(next) = pager.next_offset() else {
            break;
        };
        offset = next;
        out.requests += 1;
        let reply = match system
            .request(subject.clone(), connz_body(page_size, offset), timeout)
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
        match parse::<Reply<Connz>>(&reply.payload) {
            Ok(Reply {
                data: Some(connz), ..
            }) => {
                out.pages += 1;
                page = connz;
            }
            Ok(Reply { error, .. }) => {
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
    let reply = parse::<Reply<Connz>>(&msg.payload).map_err(|e| RequestError::Nats(Box::new(e)))?;
    let Some(mut connz) = reply.data else {
        return Ok(None);
    };
    let now = connz
        .now
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let conns = connz.connections.take().unwrap_or_default();
    Ok(conns
        .into_iter()
        .find(|c| c.cid == cid)
        .map(|c| to_connection(&reply.server, now, c)))
}

/// An account's connection limit from its JWT, asked of one server; `None` when unlimited or
/// not known to the server (config mode).
pub async fn account_limit(
    system: &System,
    server_id: &str,
    account: &str,
    timeout: Duration,
) -> Option<u64> {
    let body = Bytes::from(serde_json::json!({ "account": account }).to_string());
    let msg = system
        .request(server_subject(server_id, "ACCOUNTZ"), body, timeout)
        .await
        .ok()?;
    parse::<Reply<Accountz>>(&msg.payload)
        .ok()?
        .data?
        .account_detail?
        .connection_limit()
}

/// Every server's `max_connections`, by server name.
pub async fn server_limits(
    system: &System,
    expected: usize,
    timeout: Duration,
) -> HashMap<String, u64> {
    let mut n = 0;
    let replies = system
        .scatter(PING_VARZ, Bytes::new(), timeout, |_| {
            n += 1;
            n >= expected
        })
        .await
        .unwrap_or_default();
    replies
        .iter()
        .filter_map(|m| {
            let r = parse::<Reply<Varz>>(&m.payload).ok()?;
            Some((r.server.name, r.data?.max_connections))
        })
        .collect()
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
        }
    }

    /// Takes the page asked for at `offset`; returns the indices of connections not seen before.
    pub fn accept(&mut self, offset: usize, cids: &[u64], total: usize) -> Vec<usize> {
        self.total = total;
        if cids.is_empty() {
            self.done = true;
            return Vec::new();
        }
        let gap = offset > 0 && self.max_cid.is_some_and(|m| cids[0] > m);
        if gap && self.rewinds < MAX_REWINDS {
            self.rewinds += 1;
            self.offset = offset.saturating_sub(self.page_size);
        } else {
            self.offset = offset + cids.len();
        }
        if cids.len() < self.page_size && !gap {
            self.done = true;
        }
        let fresh: Vec<usize> = (0..cids.len())
            .filter(|&i| self.seen.insert(cids[i]))
            .collect();
        self.max_cid = cids.iter().copied().max().max(self.max_cid);
        fresh
    }

    /// The offset of the next page to ask for, if any.
    pub fn next_offset(&self) -> Option<usize> {
        if self.done || self.offset >= self.total {
            return None;
        }
        Some(self.offset.saturating_sub(OVERLAP))
    }
}

/// Turns a wire connection into census input, with idle time by the server's clock.
fn to_connection(server: &ServerInfo, now: DateTime<Utc>, c: ConnInfo) -> Connection {
    let last = c.last_activity.map(|t| t.with_timezone(&Utc));
    let idle = last
        .and_then(|l| now.signed_duration_since(l).to_std().ok())
        .unwrap_or_default();
    let user_name = c.jwt.as_deref().and_then(jwt_name);
    Connection {
        server: server.name.clone(),
        server_id: server.id.clone(),
        cid: c.cid,
        kind: c.kind.unwrap_or_else(|| "Client".into()),
        ip: c.ip,
        start: c.start.map(|t| t.with_timezone(&Utc)),
        idle,
        in_msgs: c.in_msgs,
        out_msgs: c.out_msgs,
        name: c.name.unwrap_or_default(),
        account: c.account.unwrap_or_else(|| "$G".into()),
        account_name: c.name_tag.filter(|n| !n.is_empty()),
        user: c.authorized_user.unwrap_or_default(),
        user_name,
        tags: c.tags.unwrap_or_default(),
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
    fn a_short_page_ends_the_server() {
        let mut p = Pager::new(10);
        assert_eq!(p.accept(0, &[1, 2, 3], 3).len(), 3);
        assert_eq!(p.next_offset(), None);
    }
}
