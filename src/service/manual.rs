//! By-hand kicks made while `connwatch run` runs (`connwatch kick`, `connwatch top`'s `k`):
//! their process cannot save them in `state.file` (this one holds its lock), so `run` follows
//! their `connection_kicked` audits (`rule: manual`) and records them in its kick memory, which
//! its next round saves: the client's return is then noticed (`kick_ineffective`) as for its
//! own kicks.
//!
//! How it follows them depends on where advisories go ([`follow`]): a core subscription to the
//! advisory subject on the system connection, or, with `advisory.jetstream`, an ordered
//! consumer on the advisory stream (delivered on an `_INBOX` subject, which the least-privilege
//! JetStream user may subscribe to, unlike the advisory subjects). Either is confirmed at
//! start: the server must list the subscription on connwatch's connection.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::Client;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::{info, warn};

use super::Service;
use crate::config::Config;
use crate::error::AppError;
use crate::kick;
use crate::nats::lookup::held_by;
use crate::nats::System;

/// The subject of every `connection_kicked` advisory under `prefix`.
pub(super) fn subject(prefix: &str) -> String {
    format!("{prefix}.connection_kicked.>")
}

/// The payloads of by-hand kicks' audits (every `connection_kicked`, filtered by
/// [`Service::heard_kick`]).
pub(super) type Audits = BoxStream<'static, Bytes>;

/// Starts following the kick audits on `advisories`, the connection advisories go through:
/// the system connection (a core subscription), or with `advisory.jetstream` the
/// `[jetstream]` one (an ordered consumer on `advisory.stream`, from new messages on). Fails
/// the start (exit 6, naming the setting) when it cannot confirm the server holds the
/// subscription: without it by-hand kicks would silently be missing from the kick memory.
pub(super) async fn follow(
    config: &Config,
    system: &System,
    advisories: &Client,
) -> Result<Audits, AppError> {
    let subject = subject(&config.advisory.subject_prefix);
    let timeout = config.sweep.timeout;
    if !config.advisory.jetstream {
        let fail = |why: String| AppError::Startup {
            setting: "advisory.subject_prefix",
            value: format!("{:?}", config.advisory.subject_prefix),
            what: "the subscription to by-hand kicks' audits",
            source: why.into(),
        };
        let sub = advisories
            .subscribe(subject.clone())
            .await
            .map_err(|e| fail(e.to_string()))?;
        confirm(system, advisories, timeout, |held| held.contains(&subject))
            .await
            .map_err(|why| {
                fail(format!(
                    "{why} (connwatch's user may not subscribe to `{subject}`: allow it)"
                ))
            })?;
        return Ok(sub.map(|m| m.payload).boxed());
    }
    let fail = |why: String| AppError::Startup {
        setting: "advisory.stream",
        value: format!("{:?}", config.advisory.stream),
        what: "the consumer of by-hand kicks' audits on the advisory stream",
        source: why.into(),
    };
    let before = held_by(system, advisories, timeout).await.map_err(fail)?;
    let js = async_nats::jetstream::new(advisories.clone());
    let stream = js
        .get_stream(&config.advisory.stream)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::New,
            description: Some("connwatch run: by-hand kicks' audits".into()),
            ..pull::OrderedConfig::default()
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
    let messages = consumer.messages().await.map_err(|e| fail(e.to_string()))?;
    // Its delivery subject is the one subscription it added to the connection.
    confirm(system, advisories, timeout, |held| {
        held.iter().any(|s| !before.contains(s))
    })
    .await
    .map_err(|why| {
        fail(format!(
            "{why} (the [jetstream] user may not subscribe to its delivery subject: allow `_INBOX.>`)"
        ))
    })?;
    info!(stream = %config.advisory.stream, filter = %subject, "following by-hand kicks' audits on the advisory stream");
    Ok(messages
        .filter_map(|m| async move {
            match m {
                Ok(m) => Some(m.payload.clone()),
                Err(e) => {
                    warn!(error = %e, "the consumer of by-hand kicks' audits failed: an audit may be missed");
                    None
                }
            }
        })
        .boxed())
}

/// Waits (up to `timeout`) until `ok` says the subjects `client` holds include the follow's.
async fn confirm(
    system: &System,
    client: &Client,
    timeout: Duration,
    ok: impl Fn(&[String]) -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ok(&held_by(system, client, timeout).await?) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("the server refused the subscription".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connections whose by-hand kick was recorded, as (server id, cid): a repeat of its audit (a
/// publisher's retry) is recorded once. Bounded: cleared when it grows large (a repeat comes
/// within seconds, and a server never reuses a cid).
#[derive(Default)]
pub(super) struct Heard(HashSet<(String, u64)>);

const HEARD_MAX: usize = 10_000;

impl Service {
    /// Records the by-hand kick `payload` announces, if it is one that closed a connection. Under
    /// `[ha]` only the leader records it (its state is the one saved); a follower ignores it.
    pub(super) fn heard_kick(&mut self, payload: &[u8]) {
        let Some((plan, at)) = kick::manual_kick(payload) else {
            return;
        };
        if !(self.led && self.gate.acting()) {
            return;
        }
        if self.heard.0.len() >= HEARD_MAX {
            self.heard.0.clear();
        }
        if !self.heard.0.insert((plan.server_id.clone(), plan.cid)) {
            return;
        }
        info!(server = %plan.server, cid = plan.cid, account = %plan.account, user = %plan.user, name = %plan.name, ip = %plan.ip, "by-hand kick recorded in the kick memory");
        self.state.kicked.record(&[plan], at);
    }
}
