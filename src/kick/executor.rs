//! Sending kicks: directed `$SYS.REQ.SERVER.<id>.KICK`, each server in parallel and a bounded
//! number in flight per server, one slow server holding up only its own kicks.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::{stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::KickPlan;
use crate::nats::wire::Reply;
use crate::nats::{parse, server_subject, System};

/// What became of one kick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server closed the connection.
    Kicked,
    /// The connection was already gone ("no such client"): fine.
    Gone,
    /// The server refused or did not answer.
    Failed(String),
}

impl Outcome {
    /// The `result` field of the audit advisory.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Kicked => "kicked",
            Self::Gone => "already_gone",
            Self::Failed(_) => "failed",
        }
    }
}

/// Sends every kick: servers in parallel, at most `concurrency` KICK requests in flight to one
/// server (so a slow server delays only its own kicks, and by `timeout` per `concurrency`
/// kicks, not per kick). The outcomes are in the order of `plans`, one for each.
pub async fn kick_all(
    system: &System,
    plans: &[KickPlan],
    timeout: Duration,
    concurrency: usize,
) -> Vec<Outcome> {
    kick_until(
        system,
        plans,
        timeout,
        concurrency,
        &CancellationToken::new(),
    )
    .await
    .into_iter()
    .map(|o| o.expect("never stopped: every kick is sent"))
    .collect()
}

/// [`kick_all`], except that once `stop` is cancelled no further kick is started: the ones in
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
            warn!(server_id, cid, error = %e, "kick failed");
            return Outcome::Failed(e.to_string());
        }
    };
    match parse::<Reply<serde_json::Value>>(&msg.payload) {
        Ok(Reply { error: None, .. }) => Outcome::Kicked,
        Ok(Reply { error: Some(e), .. }) if e.description.contains("no such client") => {
            Outcome::Gone
        }
        Ok(Reply { error: Some(e), .. }) => {
            warn!(server_id, cid, code = e.code, error = %e.description, "server refused the kick");
            Outcome::Failed(e.description)
        }
        Err(e) => {
            warn!(server_id, cid, error = %e, "unparseable kick reply");
            Outcome::Failed(format!("unparseable reply: {e}"))
        }
    }
}
