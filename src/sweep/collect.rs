//! Where a sweep puts what it reads: every connection in one list, or, when only the census is
//! wanted, one census per server built while its reply is parsed (no connection is held). Either
//! way a server's connections are kept whole or dropped whole.

use std::ops::Range;

use crate::census::Aggregate;
use crate::nats::page::{parse_server_census, parse_server_list, PageHead};
use crate::snapshot::Connection;

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
    pub(super) list: Vec<Connection>,
    /// The rules of the census (counting), `None` when listing.
    census: Option<Aggregate>,
    /// Each kept server's census (counting): server id, census.
    counted: Vec<(String, Aggregate)>,
}

impl Collect {
    /// Lists connections into `room` (empty, with capacity), or, with `census` (an empty one
    /// with its rules), counts them instead.
    pub(super) fn new(room: Vec<Connection>, census: Option<Aggregate>) -> Self {
        Self {
            list: room,
            census,
            counted: Vec::new(),
        }
    }

    /// Parses one reply of up to `limit` connections, kept only when it holds the server's whole
    /// list; on an error nothing of it is kept.
    pub(super) fn parse(
        &mut self,
        payload: &[u8],
        limit: usize,
    ) -> Result<(PageHead, Part), serde_json::Error> {
        match &self.census {
            None => {
                let start = self.list.len();
                let head = parse_server_list(payload, &mut self.list, limit)?;
                Ok((head, Part::Listed(start..self.list.len())))
            }
            Some(rules) => {
                let mut census = rules.fork();
                let head = parse_server_census(payload, &mut census, limit)?;
                Ok((head, Part::Counted(Box::new(census))))
            }
        }
    }

    /// Keeps `part` as the list of server `id`.
    pub(super) fn keep(&mut self, id: &str, part: Part) {
        if let Part::Counted(census) = part {
            self.counted.push((id.to_string(), *census));
        }
    }

    /// Drops `part`, the last one parsed.
    pub(super) fn drop_last(&mut self, part: Part) {
        if let Part::Listed(range) = part {
            self.list.truncate(range.start);
        }
    }

    /// Drops every connection of server `id`.
    pub(super) fn drop_server(&mut self, id: &str) {
        self.list.retain(|c| c.server_id != id);
        self.counted.retain(|(server, _)| server != id);
    }

    /// Whether connections are counted, not listed.
    pub(super) fn counting(&self) -> bool {
        self.census.is_some()
    }

    /// The list, and the census of the kept servers when counting.
    pub(super) fn finish(self) -> (Vec<Connection>, Option<Aggregate>) {
        let census = self.census.map(|rules| {
            let mut all = rules.fork();
            for (_, part) in self.counted {
                all.absorb(part);
            }
            all
        });
        (self.list, census)
    }
}
