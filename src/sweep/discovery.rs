//! Who is in the cluster: how many servers must answer, which id goes with which name (STATSZ),
//! and names for the servers that were silent.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::nats::parse;
use crate::nats::wire::{ServerInfo, StatszReply};
use crate::state::KnownServers;

/// Placeholder in `missing` for an expected server whose name nobody could tell.
pub const UNKNOWN_SERVER: &str = "<unknown>";
/// What STATSZ replies say about the cluster: its size, which name each server id goes with,
/// and the route peers and gateway clusters the servers see.
///
/// A server that restarted comes back with a new id, while the others keep counting its old id
/// in `active_servers` until they notice it is gone (minutes). A known name answering with a
/// new id is such a restart: its ghost is not waited for.
#[derive(Debug)]
pub(super) struct Discovery<'a> {
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

/// What one STATSZ reply was.
#[derive(Debug)]
pub(super) enum Added {
    /// The first reply of this server id: who it is, and its client connections.
    New(ServerInfo, u64),
    /// Another reply for an id that already answered: something else answers as it.
    Again(String),
    /// Not a STATSZ reply of any server.
    Bad,
}

/// Whether a reply's (server id, name) is the one the cluster says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vouch {
    /// A STATSZ reply of this sweep (or a server seen before) pairs this id with this name.
    Matches,
    /// The id goes with another name: not that server.
    Contradicts,
    /// Nobody pairs this id with any name.
    Unknown,
}

impl<'a> Discovery<'a> {
    pub(super) fn new(known: &'a KnownServers, now: DateTime<Utc>) -> Self {
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

    /// Takes one STATSZ reply; says what it was ([`Added`]).
    pub(super) fn add(&mut self, payload: &[u8]) -> Added {
        let Ok(r) = parse::<StatszReply>(payload) else {
            return Added::Bad;
        };
        if r.server.id.is_empty() {
            return Added::Bad;
        }
        if self.names.contains_key(&r.server.id) {
            return Added::Again(r.server.id);
        }
        let statsz = r.statsz.unwrap_or_default();
        let connections = statsz.connections;
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
        self.names
            .insert(r.server.id.clone(), r.server.name.clone());
        Added::New(r.server, connections)
    }

    /// Distinct servers that answered STATSZ.
    pub(super) fn replies(&self) -> usize {
        self.names.len()
    }

    /// Whether every server the cluster counts has answered STATSZ (or the size is configured),
    /// so that a server the responders do not count yet cannot be missed.
    pub(super) fn settled(&self, configured: usize) -> bool {
        configured > 0
            || (self.replies() > 0
                && self.replies() >= self.most_active.saturating_sub(self.restarted.len()))
    }

    /// The cluster's size as far as the replies so far tell; `None` before any reply.
    pub(super) fn count(&self) -> Option<usize> {
        let active = self.most_active.saturating_sub(self.restarted.len());
        Some(active.max(self.replies())).filter(|n| *n > 0)
    }

    /// Whether `server` is who it says it is, as far as the cluster tells.
    pub(super) fn vouch(&self, server: &ServerInfo) -> Vouch {
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
    pub(super) fn accepts(&self, server: &ServerInfo) -> bool {
        match self.vouch(server) {
            Vouch::Matches => true,
            Vouch::Contradicts => false,
            Vouch::Unknown => self.names.is_empty(),
        }
    }

    /// Names for servers that did not answer: route peers the live servers list, and
    /// `<unknown> (cluster C)` for gateway clusters none of whose servers answered.
    pub(super) fn peers(&self, answered: &[&str]) -> Vec<String> {
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
