//! Sending kicks: directed `$SYS.REQ.SERVER.<id>.KICK`, each server in parallel and a bounded
//! number in flight per server, one slow server holding up only its own kicks; and the one
//! place where kicks are executed and audited ([`execute`]), for `connwatch run` and
//! `connwatch kick` alike.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use futures::{stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{KickPlan, Kicked};
use crate::advisory::{self, Advisory, Completeness, KickResult, KickRule};
use crate::nats::wire::Reply;
use crate::nats::{parse, server_subject, RequestError, System};

/// What became of one kick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server closed the connection.
    Kicked,
    /// The connection was already gone ("no such client"): fine.
    Gone,
    /// The server refused or did not answer.
    Failed(KickError),
}

impl Outcome {
    /// The `result` of the audit advisory.
    pub fn result(&self) -> KickResult {
        match self {
            Self::Kicked => KickResult::Kicked,
            Self::Gone => KickResult::AlreadyGone,
            Self::Failed(_) => KickResult::Failed,
        }
    }

    /// Why the kick failed, if it did.
    pub fn error(&self) -> Option<&KickError> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a kick failed. Display is the text of the audit advisory's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KickError {
    /// The server did not answer within `kick.timeout`.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Nobody answers for that server id (it restarted or left).
    #[error("no responders")]
    NoResponders,
    /// The request failed in the client (the text is the client's).
    #[error("{0}")]
    Request(String),
    /// The server answered with an error other than "no such client".
    #[error("{description}")]
    Refused {
        /// The error envelope's code.
        code: i64,
        /// Its description.
        description: String,
    },
    /// The reply could not be parsed.
    #[error("unparseable reply: {0}")]
    BadReply(String),
}

impl KickError {
    /// A stable name for logs and programs: `timeout`, `no_responders`, `request_failed`,
    /// `refused`, `bad_reply`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TimedOut(_) => "timeout",
            Self::NoResponders => "no_responders",
            Self::Request(_) => "request_failed",
            Self::Refused { .. } => "refused",
            Self::BadReply(_) => "bad_reply",
        }
    }
}

impl From<RequestError> for KickError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TimedOut(d) => Self::TimedOut(d),
            RequestError::NoResponders => Self::NoResponders,
            e => Self::Request(e.to_string()),
        }
    }
}

/// Whether a KICK error reply means the connection was already gone. nats-server gives no
/// code for it (a plain error description), so its text is all there is to match.
fn already_gone(description: &str) -> bool {
    description.contains("no such client")
}

/// How one caller executes and audits its kicks.
pub struct Batch<'a> {
    /// Where the KICKs go.
    pub system: &'a System,
    /// How long to wait for each server's answer (`kick.timeout`).
    pub timeout: Duration,
    /// KICKs in flight per server, at most (`kick.concurrency`).
    pub concurrency: usize,
    /// Decide and audit, but send nothing.
    pub dry_run: bool,
    /// The audit's `rule`: the rule behind the kicks, or `manual`.
    pub rule: KickRule,
    /// `advisory.subject_prefix`.
    pub prefix: &'a str,
    /// The sweep the kicks were planned on.
    pub sweep: &'a Completeness,
    /// Once cancelled, no further kick starts.
    pub stop: &'a CancellationToken,
}

/// What [`execute`] did.
pub struct Executed {
    /// Each plan decided (dry run: no outcome) or sent (its outcome), in plan order.
    pub done: Vec<(KickPlan, Option<Outcome>)>,
    /// One audit advisory for each of `done`, to publish.
    pub audits: Vec<Advisory>,
    /// Planned kicks never sent because `stop` came first: nothing to audit.
    pub not_sent: usize,
}

/// Sends (or, in a dry run, only decides) the planned kicks, builds an audit advisory for
/// every kick decided or sent, and records the kicked ones in `kicked` as made at `at` (when
/// `None`, the moment they finished). Every KICK that went out is audited and remembered, even
/// when `stop` is cancelled midway; the intents of those never sent are dropped.
pub async fn execute(
    batch: &Batch<'_>,
    plans: Vec<KickPlan>,
    kicked: &mut Kicked,
    at: Option<DateTime<Utc>>,
) -> Executed {
    let outcomes: Vec<Option<Option<Outcome>>> = if batch.dry_run {
        plans.iter().map(|_| Some(None)).collect()
    } else {
        kick_until(
            batch.system,
            &plans,
            batch.timeout,
            batch.concurrency,
            batch.stop,
        )
        .await
        .into_iter()
        .map(|o| o.map(Some))
        .collect()
    };
    let mut out = Executed {
        done: Vec::new(),
        audits: Vec::new(),
        not_sent: 0,
    };
    let mut sent = Vec::new();
    let mut not_sent = Vec::new();
    for (plan, outcome) in plans.into_iter().zip(outcomes) {
        let Some(outcome) = outcome else {
            out.not_sent += 1;
            not_sent.push(plan);
            continue;
        };
        let result = outcome
            .as_ref()
            .map_or(KickResult::WouldKick, Outcome::result);
        let error = outcome.as_ref().and_then(Outcome::error);
        info!(server = %plan.server, cid = plan.cid, account = %plan.account, user = %plan.user, %result, error_kind = error.map(KickError::kind), "kick");
        let error = error.map(ToString::to_string);
        out.audits.push(advisory::kicked(
            batch.prefix,
            &plan,
            batch.rule,
            result,
            error.as_deref(),
            batch.sweep,
            Utc::now(),
        ));
        if outcome == Some(Outcome::Kicked) {
            sent.push(plan.clone());
        }
        out.done.push((plan, outcome));
    }
    if out.not_sent > 0 {
        warn!(
            not_sent = out.not_sent,
            "shutdown: planned kicks not sent (nothing to audit)"
        );
    }
    kicked.record(&sent, at.unwrap_or_else(Utc::now));
    kicked.unintend(&not_sent);
    let audited: Vec<KickPlan> = out.done.iter().map(|(p, _)| p.clone()).collect();
    kicked.finished(&audited);
    out
}

/// Sends every kick: servers in parallel, at most `concurrency` KICK requests in flight to one
/// server (so a slow server delays only its own kicks, and by `timeout` per `concurrency`
/// kicks, not per kick). The outcomes are in the order of `plans`, one for each. Once `stop` is
/// cancelled no further kick is started: the ones in
/// flight (at most `concurrency` per server) finish within `timeout`. `None` marks a kick that
/// was never sent. Cancel-safe for the caller's bookkeeping: every KICK that went out has its
/// outcome in the result.
pub async fn kick_until(
    system: &System,
    plans: &[KickPlan],
    timeout: Duration,
    concurrency: usize,
    stop: &CancellationToken,
) -> Vec<Option<Outcome>> {
    let mut by_server: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in plans.iter().enumerate() {
        by_server.entry(p.server_id.as_str()).or_default().push(i);
    }
    let per_server = join_all(by_server.into_iter().map(|(server_id, idx)| {
        stream::iter(idx)
            // Checked as each kick is about to start, not when the stream is built.
            .take_while(move |_| std::future::ready(!stop.is_cancelled()))
            .map(move |i| async move { (i, kick(system, server_id, plans[i].cid, timeout).await) })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
    }))
    .await;
    let mut outcomes = vec![None; plans.len()];
    for (i, o) in per_server.into_iter().flatten() {
        outcomes[i] = Some(o);
    }
    outcomes
}

/// Kicks one connection.
pub async fn kick(system: &System, server_id: &str, cid: u64, timeout: Duration) -> Outcome {
    let body = Bytes::from(serde_json::json!({ "cid": cid }).to_string());
    let msg = match system
        .request(server_subject(server_id, "KICK"), body, timeout)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            let e = KickError::from(e);
            warn!(server_id, cid, kind = e.kind(), error = %e, "kick failed");
            return Outcome::Failed(e);
        }
    };
    match parse::<Reply<serde_json::Value>>(&msg.payload) {
        Ok(Reply { error: None, .. }) => Outcome::Kicked,
        Ok(Reply { error: Some(e), .. }) if already_gone(&e.description) => Outcome::Gone,
        Ok(Reply { error: Some(e), .. }) => {
            warn!(server_id, cid, code = e.code, error = %e.description, "server refused the kick");
            Outcome::Failed(KickError::Refused {
                code: e.code,
                description: e.description,
            })
        }
        Err(e) => {
            warn!(server_id, cid, error = %e, "unparseable kick reply");
            Outcome::Failed(KickError::BadReply(e.to_string()))
        }
    }
}
