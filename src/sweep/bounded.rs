//! A bounded sweep: for a cluster bigger than `sweep.max_in_flight` servers (or of unknown size),
//! a STATSZ ping says who the servers are, and each is read with directed
//! `$SYS.REQ.SERVER.<id>.CONNZ` requests, at most `max_in_flight` servers at a time, starting as
//! soon as its STATSZ reply arrives. Only a few whole-server replies are in flight at once, whatever
//! the number of servers; each server's list is still ONE reply (sized from the connections its
//! STATSZ counted, plus headroom).

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::collect::Collect;
use super::discovery::{Added, Discovery};
use super::fetch::{Fetch, Fetched};
use super::inflight::Span;
use super::{display_name, sweep_error, Gather, SweepError, Sweeper};
use crate::nats::PING_STATSZ;
use crate::snapshot::{ServerFailure, Snapshot};

impl Sweeper {
    /// Pings STATSZ and reads each server that answers with directed requests, a few at a time,
    /// while the other STATSZ replies still arrive. An id that answered STATSZ twice is an error
    /// (something else answers as it: neither is believed, none of its connections counted).
    pub(super) async fn gather_bounded(
        &self,
        g: &Gather,
        discovery: &mut Discovery<'_>,
        snap: &mut Snapshot,
        spans: &mut Vec<Span>,
        conns: Collect,
    ) -> Result<(Vec<Fetched>, Collect), SweepError> {
        let requests = [(PING_STATSZ, Bytes::new())];
        snap.requests += requests.len();
        let (tx, rx) = futures::channel::mpsc::unbounded::<Fetch>();
        // Replies per id that answered more than once.
        let mut again: BTreeMap<String, usize> = BTreeMap::new();
        let (mut bytes, mut bad, mut finished) = (0, 0, false);
        let sent = Instant::now();
        let statsz = async {
            let tx = tx;
            let r = self
                .system
                .scatter_each(&requests, g.timeout, g.linger, |_, msg| {
                    bytes += msg.length;
                    match discovery.add(&msg.payload) {
                        Added::New(server, connections) => {
                            // The receiver lives until this gather ends.
                            let _ = tx.unbounded_send(Fetch {
                                server,
                                total: connections,
                                returned: 0,
                                pinged: false,
                            });
                        }
                        Added::Again(id) => *again.entry(id).or_insert(1) += 1,
                        Added::Bad => bad += 1,
                    }
                    spans.push(Span {
                        sent,
                        parsed: Instant::now(),
                        bytes: msg.length,
                    });
                    if !finished {
                        finished = g.settled(discovery, discovery.replies());
                        return finished;
                    }
                    false
                })
                .await;
            // No more servers: the reads end when the last one is done.
            drop(tx);
            r
        };
        let reads = self.fetch_all(rx, g.deadline, conns);
        let (asked, (mut fetched, mut conns)) = tokio::join!(statsz, reads);
        snap.bytes += bytes;
        snap.bad_replies += bad;
        asked.map_err(sweep_error)?;
        if discovery.replies() == 0 {
            return Err(SweepError::NoAnswer(g.timeout));
        }
        for f in &mut fetched {
            let Some(&replies) = again.get(&f.server.id) else {
                continue;
            };
            warn!(server = %display_name(&f.server), id = %f.server.id, replies, "conflicting statsz replies for one server id");
            snap.bad_replies += replies - 1;
            if f.error.is_none() {
                conns.drop_server(&f.server.id);
            }
            f.total = 0;
            f.error = Some(ServerFailure::Impostors {
                replies,
                id: f.server.id.clone(),
            });
        }
        Ok((fetched, conns))
    }
}
