//! The answers to a sweep's PING, parsed as they arrive and sorted out by server id once every
//! STATSZ reply is in: whole lists go to the snapshot, the rest are read again ([`super::fetch`]).

use super::collect::{Collect, Part};
use std::collections::{BTreeMap, HashSet};

use tracing::warn;

use super::discovery::{Discovery, Vouch};
use super::display_name;
use super::fetch::{Fetch, Fetched};
use crate::nats::snappy::Payload;
use crate::nats::wire::{ApiError, ServerInfo};
use crate::snapshot::{ServerError, ServerFailure, Snapshot};

/// One server's answer to a PING CONNZ.
struct Candidate {
    server: ServerInfo,
    reply: FirstReply,
}

enum FirstReply {
    /// The server answered with an error envelope.
    Error(ApiError),
    /// Its connections (in the replies' one list, or counted); none unless the reply held all
    /// `total` of them.
    Page {
        total: u64,
        returned: u64,
        conns: Part,
    },
}

/// The answers to one PING CONNZ as they arrive, parsed on arrival; who is who is decided at the
/// end ([`FirstReplies::resolve`]), when every STATSZ reply is in.
pub(super) struct FirstReplies {
    page_size: usize,
    candidates: Vec<Candidate>,
    /// Every whole list, parsed straight into one vector (the sweep's, with its room), or
    /// counted: kept in place for the servers that are vouched for, cut out for the rest at
    /// the end, so a server's connections are never held twice.
    conns: Collect,
}

impl FirstReplies {
    /// Replies of up to `page_size` connections, parsed into `conns`.
    pub(super) fn new(page_size: usize, conns: Collect) -> Self {
        Self {
            page_size,
            candidates: Vec::new(),
            conns,
        }
    }

    /// Parses one reply; a reply that is not a valid answer of some server is counted in `bad`.
    pub(super) fn add(&mut self, payload: Payload, bad: &mut usize) {
        let (head, part) = match self.conns.parse(payload, self.page_size) {
            Ok(parsed) => parsed,
            Err(e) => {
                *bad += 1;
                warn!(error = %e, bytes = ?payload.len(), "bad connz reply ignored");
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
                // Not the whole list (`returned < total`): nothing was converted, it is read
                // again in one directed request.
                FirstReply::Page {
                    total,
                    returned: head.count as u64,
                    conns: part,
                }
            }
        };
        self.candidates.push(Candidate {
            server: head.server,
            reply,
        });
    }

    /// Distinct servers that answered and are vouched for: only these end the gather early.
    pub(super) fn answered(&self, discovery: &Discovery) -> usize {
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
    /// snapshot and come back as done (with what was collected); the rest come back as
    /// directed fetches to make.
    pub(super) fn resolve(
        self,
        discovery: &Discovery,
        snap: &mut Snapshot,
    ) -> (Vec<Fetched>, Vec<Fetch>, Collect) {
        let mut conns = self.conns;
        let mut kept = Vec::new();
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
                    error: ServerFailure::Impostors {
                        replies: cands.len(),
                        id,
                    },
                });
                continue;
            }
            let Some(c) = cands.pop() else { continue };
            match c.reply {
                FirstReply::Error(err) => {
                    warn!(server = %c.server.name, code = err.code, error = %err.description, "server answered connz with an error");
                    snap.errors.push(ServerError {
                        server: display_name(&c.server),
                        error: error_reply(err, false),
                    });
                }
                FirstReply::Page {
                    total,
                    returned,
                    conns: part,
                } => {
                    if returned >= total {
                        match part {
                            Part::Listed(range) => kept.push(range),
                            counted => conns.keep(&c.server, counted),
                        }
                        let mut f = Fetched::new(c.server);
                        f.total = total;
                        f.pages = 1;
                        done.push(f);
                    } else {
                        fetches.push(Fetch {
                            server: c.server,
                            total,
                            returned,
                            pinged: true,
                        });
                    }
                }
            }
        }
        if !conns.counting() {
            conns.keep_only(&mut kept);
        }
        (done, fetches, conns)
    }
}

/// A server's error envelope as a failure.
pub(super) fn error_reply(err: ApiError, directed: bool) -> ServerFailure {
    ServerFailure::ErrorReply {
        code: err.code,
        description: err.description,
        directed,
    }
}
