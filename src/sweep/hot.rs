//! The account-filtered sweep ([`SweepMode::HotAccounts`]): per-account counts first (account
//! STATZ), then CONNZ only for the accounts that could hold an excessive user. Not used by
//! `connwatch run` yet (a later issue decides); the bench measures it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::discovery::{Discovery, Vouch};
use super::fetch::{Fetch, Fetched};
use super::replies::{error_reply, FirstReplies};
use super::{display_name, sweep_error, SweepError, Sweeper};
use crate::config::DetectConfig;
use crate::nats::page::connz_body;
use crate::nats::wire::{AccountStatzData, ApiError, Reply, ServerInfo};
use crate::nats::{parse, PING_ACCOUNT_STATZ, PING_CONNZ};
use crate::snapshot::{ServerError, ServerFailure, Snapshot};

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

/// The first request of a hot-account sweep: account STATZ for every account, even unused
/// ones, so that every server answers and the gather can stop as soon as the expected servers
/// did (a server without active accounts would stay silent).
pub(super) fn first_request() -> (&'static str, Bytes) {
    (
        PING_ACCOUNT_STATZ,
        Bytes::from_static(br#"{"accounts":[],"include_unused":true}"#),
    )
}

/// Per-account connection counts from account STATZ replies, summed over the servers.
#[derive(Default)]
pub(super) struct AccountCounts {
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
    pub(super) fn add(&mut self, payload: &[u8], bad: &mut usize) {
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

    pub(super) fn answered(&self, discovery: &Discovery) -> usize {
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
                    error: ServerFailure::Impostors {
                        replies: replies.len(),
                        id,
                    },
                });
                continue;
            }
            let Some((server, reply)) = replies.pop() else {
                continue;
            };
            match reply {
                AccountReply::Error(err) => snap.errors.push(ServerError {
                    server: display_name(&server),
                    error: error_reply(err, false),
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
impl Sweeper {
    /// The rest of a hot-account sweep once the account counts are in: CONNZ for the hot
    /// accounts, then the directed reads, one result per server that counted its accounts.
    pub(super) async fn read_hot(
        &self,
        mut accounts: AccountCounts,
        floor: &(dyn Fn(&str, Option<&str>) -> u64 + Send + Sync),
        discovery: &Discovery<'_>,
        deadline: Instant,
        snap: &mut Snapshot,
        gather: Duration,
    ) -> Result<Vec<Fetched>, SweepError> {
        let servers = accounts.resolve(discovery, snap);
        if servers.is_empty() && snap.errors.is_empty() {
            return Err(SweepError::NoAnswer(gather));
        }
        let hot_accounts = accounts.hot(floor);
        let (done, fetches) = self
            .hot_first_replies(&hot_accounts, &servers, discovery, deadline, snap)
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
        Ok(merge_by_server(fetched))
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
                        error: ServerFailure::NoAccountReply {
                            account: acc.clone(),
                        },
                    });
                }
            }
            whole.extend(done);
            fetches.extend(more);
        }
        Ok((whole, fetches))
    }
}
