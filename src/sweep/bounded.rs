//! A bounded sweep: for a cluster bigger than `sweep.max_in_flight` servers (or of unknown size),
//! a STATSZ ping says who the servers are, and each is read with directed
//! `$SYS.REQ.SERVER.<id>.CONNZ` requests, at most `max_in_flight` servers at a time, starting as
//! soon as its STATSZ reply arrives. Only a few whole-server replies are in flight at once, whatever
//! the number of servers; each server's list is still ONE reply (sized from the connections its
//! STATSZ counted, plus headroom).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use super::collect::Collect;
use super::discovery::{Added, Discovery};
use super::fetch::{Fetch, Fetched};
use super::inflight::Span;
use super::{display_name, locked, sweep_error, Gather, SweepError, Sweeper};
use crate::nats::PING_STATSZ;
use crate::snapshot::{ServerFailure, Snapshot};

/// How long a bounded sweep's STATSZ replies are quiet before who is who is settled while a
/// server is still silent ([`super::collect::Collect::settle`]).
const SETTLE_QUIET: Duration = Duration::from_millis(250);

/// `f`, at once, or when `wait`, once who is who is settled.
async fn when_settled(f: Fetch, wait: bool, mut settled: watch::Receiver<bool>) -> Fetch {
    if wait {
        // An error: the gather is over, nothing to wait for.
        let _ = settled.wait_for(|s| *s).await;
    }
    f
}

impl Sweeper {
    /// Pings STATSZ and reads each server that answers with directed requests, a few at a time,
    /// while the other STATSZ replies still arrive. An id that answered STATSZ twice is an error
    /// (something else answers as it: neither is believed, none of its connections counted);
    /// found only after its connections were counted (while a server was silent), the whole
    /// counting sweep is ([`SweepError::CountedImpostors`]).
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
        let again: Mutex<BTreeMap<String, usize>> = Mutex::default();
        let twice = || locked(&again).keys().cloned().collect::<Vec<String>>();
        let (mut bytes, mut bad, mut finished) = (0, 0, false);
        let sent = Instant::now();
        // When the last STATSZ reply came.
        let last = Mutex::new(sent);
        let sink = Mutex::new(conns);
        // Whether who is who is settled (the reads may wait for it, below).
        let (settled_tx, settled) = watch::channel(false);
        let statsz = async {
            let tx = tx;
            let r = {
                let ask = self
                    .system
                    .scatter_each(&requests, g.timeout, g.linger, |_, msg| {
                        *locked(&last) = Instant::now();
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
                            Added::Again(id) => *locked(&again).entry(id).or_insert(1) += 1,
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
                    });
                tokio::pin!(ask);
                // A silent server keeps the gather waiting until the timeout. Once the replies
                // went quiet, who is who is settled: each list is handed over (a live sweep), or
                // each census joined, instead of being held until then. A later reply for an id
                // that answered already still makes it an error at the end.
                loop {
                    let quiet = tokio::time::sleep_until(*locked(&last) + SETTLE_QUIET);
                    tokio::select! {
                        r = &mut ask => break r,
                        () = quiet, if !locked(&sink).settled() => {
                            if locked(&last).elapsed() >= SETTLE_QUIET {
                                let _ = locked(&sink).settle(&twice());
                                let _ = settled_tx.send(true);
                            }
                        }
                    }
                }
            };
            // No more servers: the reads end when the last one is done.
            drop(tx);
            // No more STATSZ replies either: who answered twice is known for good. The
            // others' censuses are joined from now on as they come.
            let late = locked(&sink).settle(&twice());
            let _ = settled_tx.send(true);
            (r, late)
        };
        // What is read before the settling (lists for the live view, censuses) is held until
        // it: no more servers are read once as many as `sweep.max_in_flight` wait, so what is
        // held stays a few servers' whatever their number (while one is silent, until the
        // replies go quiet).
        let room = self.cfg.max_in_flight.max(1);
        let fetches = rx.then(|f| {
            let full = locked(&sink).waiting() >= room;
            when_settled(f, full, settled.clone())
        });
        let reads = self.fetch_all(fetches, g.deadline, &sink);
        let ((asked, late), mut fetched) = tokio::join!(statsz, reads);
        let again = again.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut conns = sink.into_inner().unwrap_or_else(|e| e.into_inner());
        snap.bytes += bytes;
        snap.bad_replies += bad;
        asked.map_err(sweep_error)?;
        if discovery.replies() == 0 {
            return Err(SweepError::NoAnswer(g.timeout));
        }
        // Counted before they were found answering twice: the census holds what one of them
        // said, and cannot be had without it. (A live view's list is the view's already: the
        // sweep is partial below, so the view is not complete.)
        if conns.counting() && !late.is_empty() {
            return Err(SweepError::CountedImpostors(late));
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
