//! Where a sweep puts what it reads: every connection in one list (of [`Connection`]s, or
//! compact: [`ConnList`]), or, when only the census is wanted, one census per server built
//! while its reply is parsed (no connection is held). Either way a server's connections are
//! kept whole or dropped whole.

use std::ops::Range;
use std::sync::Arc;

use crate::census::Aggregate;
use crate::connlist::ConnList;
use crate::nats::page::{parse_server_census, parse_server_compact, parse_server_list, PageHead};
use crate::nats::snappy::Payload;
use crate::nats::wire::ServerInfo;
use crate::snapshot::Connection;

use super::Handover;

/// Where a listing sweep lists its connections.
pub(super) enum List {
    /// As [`Connection`]s.
    Full(Vec<Connection>),
    /// Compact (about 100 bytes a connection instead of 168).
    Compact(ConnList),
}

impl List {
    fn len(&self) -> usize {
        match self {
            Self::Full(l) => l.len(),
            Self::Compact(l) => l.len(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Self::Full(l) => l.truncate(len),
            Self::Compact(l) => l.truncate(len),
        }
    }

    /// Keeps the connections for which `keep` (given each one's server id, in order) is true.
    fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        match self {
            Self::Full(l) => l.retain(|c| keep(&c.server_id)),
            Self::Compact(l) => l.retain(|c| keep(c.server_id)),
        }
    }
}

/// What one reply added: its connections in the list, or its census.
pub(super) enum Part {
    /// At this place in the list.
    Listed(Range<usize>),
    /// Counted here.
    Counted(Box<Aggregate>),
}

/// A sweep's connections as they are read.
pub(super) struct Collect {
    /// Every kept connection (listing).
    list: List,
    /// The census of the servers kept so far (counting), `None` when listing.
    census: Option<Aggregate>,
    /// Each kept server's census (counting) while who is who may still change: server id,
    /// census. Once it cannot ([`Collect::settle`]) they are joined into `census` as they
    /// come, so what is held grows with the users, not with the servers.
    counted: Vec<(String, Aggregate)>,
    /// Whether who is who is settled.
    settled: bool,
    /// The lists kept before that, to hand over then (server, where its list starts), in the
    /// order they were read.
    waiting: Vec<(ServerInfo, usize)>,
    /// Servers whose census was joined into `census` (counting).
    joined: Vec<String>,
    /// Servers whose connections are not counted, whenever they come (impostors).
    refused: Vec<String>,
    /// Where each whole list goes once who is who is settled (a live sweep), instead of
    /// staying in the list.
    handing: Option<Handing>,
}

/// A live sweep's lists handed over as they come ([`Handover`]).
struct Handing {
    to: Arc<dyn Handover>,
    /// Whether the servers require auth (connections listed before it are nobody's yet).
    auth_required: bool,
    /// What went: server ids, their connections, and those left out as not authenticated.
    handed: Handed,
}

/// What a sweep handed over ([`Collect::finish`]).
#[derive(Debug, Default)]
pub(super) struct Handed {
    /// Ids of the servers whose lists were taken.
    pub servers: Vec<String>,
    /// The connections those lists held.
    pub connections: u64,
    /// Connections left out of the lists handed over (or offered) as not authenticated.
    pub pending: u64,
}

impl Collect {
    /// Lists connections into `room` (empty, with capacity), or, with `census` (an empty one
    /// with its rules), counts them instead.
    pub(super) fn new(room: List, census: Option<Aggregate>) -> Self {
        Self {
            list: room,
            census,
            counted: Vec::new(),
            settled: false,
            waiting: Vec::new(),
            joined: Vec::new(),
            refused: Vec::new(),
            handing: None,
        }
    }

    /// Hands each whole list kept once who is who is settled to `to` (a live sweep's lists,
    /// compact), leaving out the connections listed before they authenticated.
    pub(super) fn hand_to(&mut self, to: Arc<dyn Handover>, auth_required: bool) {
        self.handing = Some(Handing {
            to,
            auth_required,
            handed: Handed::default(),
        });
    }

    /// Who is who is settled: the servers of `refused` are dropped (now and whenever their
    /// connections come), the others' censuses joined and lists handed over, now and as they
    /// come. Settled again later (a bounded sweep settles once its STATSZ replies went quiet
    /// while a server stays silent, and for good at the timeout), it returns the servers of
    /// `refused` whose connections were counted or handed over already: what was taken of
    /// them cannot be taken back.
    pub(super) fn settle(&mut self, refused: &[String]) -> Vec<String> {
        let handed = self.handing.as_ref().map(|h| &h.handed.servers);
        let taken: Vec<String> = refused
            .iter()
            .filter(|id| self.joined.contains(id) || handed.is_some_and(|h| h.contains(id)))
            .cloned()
            .collect();
        // From the last list kept back: each is then the list's end, where a list is taken.
        while let Some((server, from)) = self.waiting.pop() {
            if refused.contains(&server.id) {
                self.list.truncate(from);
            } else if !self.hand_over(&server, from) {
                break;
            }
        }
        self.waiting.clear();
        for id in refused {
            self.drop_server(id);
        }
        self.refused.extend(refused.iter().cloned());
        self.settled = true;
        if let Some(all) = &mut self.census {
            for (id, part) in self.counted.drain(..) {
                all.absorb(part);
                self.joined.push(id);
            }
        }
        taken
    }

    /// Servers whose list or census is held until who is who is settled (to be handed over
    /// or joined then).
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len() + self.counted.len()
    }

    /// Whether who is who is settled ([`Collect::settle`]).
    pub(super) fn settled(&self) -> bool {
        self.settled
    }

    /// Parses one reply of up to `limit` connections, kept only when it holds the server's whole
    /// list; on an error nothing of it is kept.
    pub(super) fn parse(
        &mut self,
        payload: Payload,
        limit: usize,
    ) -> Result<(PageHead, Part), serde_json::Error> {
        match &self.census {
            None => {
                let start = self.list.len();
                let head = match &mut self.list {
                    List::Full(list) => parse_server_list(payload, list, limit)?,
                    List::Compact(list) => parse_server_compact(payload, list, limit)?,
                };
                Ok((head, Part::Listed(start..self.list.len())))
            }
            Some(all) => {
                let mut census = all.fork();
                let head = parse_server_census(payload, &mut census, limit)?;
                Ok((head, Part::Counted(Box::new(census))))
            }
        }
    }

    /// Keeps `part` as the list of `server`.
    pub(super) fn keep(&mut self, server: &ServerInfo, part: Part) {
        let id = server.id.as_str();
        if self.refused.iter().any(|r| r == id) {
            return self.drop_last(part);
        }
        match (part, &mut self.census) {
            (Part::Counted(part), Some(all)) if self.settled => {
                all.absorb(*part);
                self.joined.push(id.to_string());
            }
            (Part::Counted(part), _) => self.counted.push((id.to_string(), *part)),
            (Part::Listed(range), _) if self.settled => {
                self.hand_over(server, range.start);
            }
            (Part::Listed(range), _) if self.handing.is_some() => {
                self.waiting.push((server.clone(), range.start));
            }
            (Part::Listed(_), _) => {}
        }
    }

    /// Hands `server`'s list, the last one in the list (from `from` on), over, when handing.
    /// Returns whether it was taken.
    fn hand_over(&mut self, server: &ServerInfo, from: usize) -> bool {
        let (Some(h), List::Compact(list)) = (&mut self.handing, &mut self.list) else {
            return false;
        };
        // Its unauthenticated ones are left out (and counted) now, whether taken or not.
        h.handed.pending += list.drop_pending_from(from, h.auth_required);
        let listed = (list.len() - from) as u64;
        let taken = h.to.take(server, list, from);
        if taken {
            list.truncate(from);
            h.handed.servers.push(server.id.clone());
            h.handed.connections += listed;
        }
        taken
    }

    /// Drops `part`, the last one parsed.
    pub(super) fn drop_last(&mut self, part: Part) {
        if let Part::Listed(range) = part {
            self.list.truncate(range.start);
        }
    }

    /// Drops every connection of server `id`.
    pub(super) fn drop_server(&mut self, id: &str) {
        self.list.retain(|server| server != id);
        self.counted.retain(|(server, _)| server != id);
    }

    /// Servers' censuses held apart (not joined yet).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.counted.len()
    }

    /// Whether connections are counted, not listed.
    pub(super) fn counting(&self) -> bool {
        self.census.is_some()
    }

    /// Keeps only the connections at `ranges` (disjoint) of the list, in order: no work when
    /// they are all of it (every reply vouched for, the usual case).
    pub(super) fn keep_only(&mut self, ranges: &mut [Range<usize>]) {
        let kept: usize = ranges.iter().map(ExactSizeIterator::len).sum();
        if kept == self.list.len() {
            return;
        }
        ranges.sort_by_key(|r| r.start);
        let mut i = 0;
        self.list.retain(|_| {
            let keep = ranges
                .binary_search_by(|r| {
                    if r.end <= i {
                        std::cmp::Ordering::Less
                    } else if r.start > i {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok();
            i += 1;
            keep
        });
    }

    /// The list, the census of the kept servers when counting, and what was handed over.
    pub(super) fn finish(mut self) -> (List, Option<Aggregate>, Handed) {
        let _ = self.settle(&[]);
        let handed = self.handing.map(|h| h.handed).unwrap_or_default();
        (self.list, self.census, handed)
    }
}
