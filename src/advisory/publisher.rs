//! Publishing advisories: a bounded queue that survives disconnects.
//!
//! Advisories wait in the queue until the client is connected and has sent them (a client flush,
//! which writes them to the connection but is no round trip; or the JetStream ack, which is the
//! server's confirmation). Only then do they leave the queue, so nothing is lost while
//! disconnected; a retry may deliver one twice (the `id`, and JetStream's `Nats-Msg-Id`, tell
//! duplicates apart). A full queue drops its oldest advisory and counts it.
//!
//! An advisory larger than the server's `max_payload` can never be sent: it is dropped with an
//! error (counted in `connwatch_advisories_too_large_total`) and the rest of its batch goes on,
//! rather than holding up the queue forever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::{FlushError, PublishErrorKind};
use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind as JsKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::Client;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{with_sources, Advisory};
use crate::config::AdvisoryConfig;
use crate::ha::Gate;

/// Advisories sent in one confirmed batch.
const BATCH: usize = 256;
/// Wait before retrying after a failed batch, or while disconnected.
const RETRY: Duration = Duration::from_millis(250);

/// Why a batch of advisories was not confirmed. The batch stays queued and is retried.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not sent or confirmed within `advisory.publish_timeout` (the client flush, or the
    /// JetStream acks).
    #[error("not confirmed within {0:?}")]
    Timeout(Duration),
    /// The connection went away while the batch was sent or confirmed.
    #[error("disconnected")]
    Disconnected(#[source] async_nats::Error),
    /// JetStream did not acknowledge: no stream stores the advisory subjects, or its ack never
    /// came.
    #[error("no JetStream acknowledgement")]
    NoAck(#[source] JsPublishError),
    /// An advisory is larger than the server's `max_payload`: it is dropped, not retried (see
    /// [`PublisherStats::too_large`]); its batch goes on.
    #[error("advisory larger than the server's max_payload")]
    TooLarge(#[source] async_nats::Error),
    /// The client or JetStream refused it for another reason.
    #[error("publish refused")]
    Refused(#[source] async_nats::Error),
}

impl PublishError {
    /// Every kind, as [`PublishError::kind`] names it.
    pub const KINDS: [&'static str; 5] =
        ["timeout", "disconnected", "no_ack", "too_large", "refused"];

    /// The kind, for the `kind` label of `connwatch_advisories_publish_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Disconnected(_) => "disconnected",
            Self::NoAck(_) => "no_ack",
            Self::TooLarge(_) => "too_large",
            Self::Refused(_) => "refused",
        }
    }

    fn publish(e: async_nats::PublishError) -> Self {
        match e.kind() {
            PublishErrorKind::Send => Self::Disconnected(e.into()),
            PublishErrorKind::MaxPayloadExceeded => Self::TooLarge(e.into()),
            _ => Self::Refused(e.into()),
        }
    }

    fn flush(e: FlushError) -> Self {
        Self::Disconnected(e.into())
    }

    fn jetstream(e: JsPublishError) -> Self {
        match e.kind() {
            JsKind::StreamNotFound | JsKind::TimedOut => Self::NoAck(e),
            JsKind::BrokenPipe => Self::Disconnected(e.into()),
            JsKind::MaxPayloadExceeded => Self::TooLarge(e.into()),
            _ => Self::Refused(e.into()),
        }
    }
}

/// The `kind` label of a publish failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    /// [`PublishError::kind`].
    pub kind: &'static str,
}

/// What the publisher has done, for logs and metrics.
#[derive(Debug)]
pub struct PublisherStats {
    /// Advisories confirmed by the server.
    pub published: Counter,
    /// Advisories dropped because the queue was full.
    pub dropped: Counter,
    /// Batches that failed and were retried, by [`PublishError::kind`].
    pub failures: Family<FailureLabel, Counter>,
    /// Advisories dropped because they are larger than the server's `max_payload`.
    pub too_large: Counter,
}

impl Default for PublisherStats {
    /// Every failure kind starts at zero, so each series exists before its first failure.
    fn default() -> Self {
        let failures = Family::default();
        for kind in PublishError::KINDS {
            let _ = failures.get_or_create(&FailureLabel { kind });
        }
        Self {
            published: Counter::default(),
            dropped: Counter::default(),
            failures,
            too_large: Counter::default(),
        }
    }
}

impl PublisherStats {
    /// Batches that failed with `kind`.
    pub fn failed(&self, kind: &'static str) -> u64 {
        self.failures.get_or_create(&FailureLabel { kind }).get()
    }

    /// Registers the publisher's metrics (`connwatch_advisories_*`).
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "advisories_published",
            "Advisories confirmed by the server",
            self.published.clone(),
        );
        r.register(
            "advisories_dropped",
            "Advisories dropped because the queue was full",
            self.dropped.clone(),
        );
        r.register(
            "advisories_too_large",
            "Advisories dropped because they are larger than the server's max_payload",
            self.too_large.clone(),
        );
        r.register(
            "advisories_publish_failures",
            "Advisory batches that failed and were retried",
            self.failures.clone(),
        );
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    idle: Notify,
    stats: Arc<PublisherStats>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<(u64, Advisory)>,
    next_seq: u64,
    capacity: usize,
}

/// Publishes advisories in the background.
pub struct Publisher {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing over `client`.
    pub fn spawn(client: Client, cfg: &AdvisoryConfig, stats: Arc<PublisherStats>) -> Self {
        Self::spawn_gated(client, cfg, stats, Gate::single())
    }

    /// Starts publishing over `client`, each batch only while `gate` says this replica acts
    /// (`[ha]`): otherwise the advisories wait.
    pub fn spawn_gated(
        client: Client,
        cfg: &AdvisoryConfig,
        stats: Arc<PublisherStats>,
        gate: Gate,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                capacity: cfg.queue_size.max(1),
                ..Queue::default()
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            stats,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(publish_loop(
            client,
            cfg.clone(),
            shared.clone(),
            gate,
            stop.clone(),
        ));
        Self { shared, stop, task }
    }

    /// Queues an advisory; when the queue is full the oldest one is dropped.
    pub fn enqueue(&self, advisory: Advisory) {
        let mut q = self.shared.queue.lock().expect("queue lock");
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back((seq, advisory));
        while q.items.len() > q.capacity {
            if let Some((_, dropped)) = q.items.pop_front() {
                self.shared.stats.dropped.inc();
                warn!(subject = %dropped.subject, id = %dropped.id, "advisory queue full: dropped the oldest advisory");
            }
        }
        drop(q);
        self.shared.wake.notify_one();
    }

    /// The advisories not yet confirmed, oldest first (`[ha]`: what the bucket's outbox keeps
    /// for a next leader, should this one die before publishing them).
    pub fn pending(&self) -> Vec<Advisory> {
        let q = self.shared.queue.lock().expect("queue lock");
        q.items.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Replaces the queue with `advisories` (`[ha]`: a new leader publishes its predecessor's
    /// outbox, not what it queued itself while it last led).
    pub fn replace(&self, advisories: Vec<Advisory>) {
        self.shared.queue.lock().expect("queue lock").items.clear();
        for a in advisories {
            self.enqueue(a);
        }
    }

    /// Advisories waiting to be published.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").items.len()
    }

    /// Waits until the queue is empty or `timeout` passes, then stops; returns how many
    /// advisories were left unpublished.
    pub async fn shutdown(self, timeout: Duration) -> usize {
        self.shutdown_leaving(timeout).await.len()
    }

    /// [`Publisher::shutdown`], returning the advisories left unpublished.
    pub async fn shutdown_leaving(self, timeout: Duration) -> Vec<Advisory> {
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let idle = self.shared.idle.notified();
                if self.queued() == 0 {
                    break;
                }
                self.shared.wake.notify_one();
                idle.await;
            }
        })
        .await;
        self.stop.cancel();
        let _ = self.task.await;
        let q = self.shared.queue.lock().expect("queue lock");
        q.items.iter().map(|(_, a)| a.clone()).collect()
    }
}

async fn publish_loop(
    client: Client,
    cfg: AdvisoryConfig,
    shared: Arc<Shared>,
    gate: Gate,
    stop: CancellationToken,
) {
    let js = cfg
        .jetstream
        .then(|| async_nats::jetstream::new(client.clone()));
    loop {
        let batch: Vec<(u64, Advisory)> = {
            let q = shared.queue.lock().expect("queue lock");
            q.items.iter().take(BATCH).cloned().collect()
        };
        if batch.is_empty() {
            shared.idle.notify_waiters();
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        // Fencing: a replica that may no longer hold the lease publishes nothing.
        if !gate.acting() {
            debug!(queued = batch.len(), "not the leader: advisories wait");
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => continue,
                _ = stop.cancelled() => return,
            }
        }
        if client.connection_state() != ConnectionState::Connected {
            debug!(queued = batch.len(), "not connected: advisories wait");
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => continue,
                _ = stop.cancelled() => return,
            }
        }
        let sent = tokio::select! {
            r = send(&client, js.as_ref(), &batch, cfg.publish_timeout) => r,
            _ = stop.cancelled() => return,
        };
        match sent {
            Ok(too_large) => {
                for (i, e) in &too_large {
                    let (_, a) = &batch[*i];
                    error!(subject = %a.subject, id = %a.id, error = %with_sources(e), "advisory larger than the server's max_payload: dropped");
                }
                shared.stats.too_large.inc_by(too_large.len() as u64);
                let last = batch.last().map(|(seq, _)| *seq).unwrap_or(0);
                let mut q = shared.queue.lock().expect("queue lock");
                while q.items.front().is_some_and(|(seq, _)| *seq <= last) {
                    q.items.pop_front();
                }
                shared
                    .stats
                    .published
                    .inc_by((batch.len() - too_large.len()) as u64);
            }
            Err(e) => {
                shared
                    .stats
                    .failures
                    .get_or_create(&FailureLabel { kind: e.kind() })
                    .inc();
                warn!(kind = e.kind(), error = %with_sources(&e), queued = batch.len(), "publishing advisories failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Publishes a batch and waits until the server confirmed all of it, but for the advisories
/// larger than the server's `max_payload` (the client refuses them before sending anything):
/// those are returned (their index in the batch), to be dropped.
async fn send(
    client: &Client,
    js: Option<&async_nats::jetstream::Context>,
    batch: &[(u64, Advisory)],
    timeout: Duration,
) -> Result<Vec<(usize, PublishError)>, PublishError> {
    let mut too_large = Vec::new();
    let mut skip = |i: usize, e: PublishError| match e {
        PublishError::TooLarge(_) => {
            too_large.push((i, e));
            Ok(())
        }
        e => Err(e),
    };
    let payload =
        |a: &Advisory| Bytes::from(serde_json::to_vec(&a.body).expect("advisory serializes"));
    match js {
        None => {
            for (i, (_, a)) in batch.iter().enumerate() {
                if let Err(e) = client.publish(a.subject.clone(), payload(a)).await {
                    skip(i, PublishError::publish(e))?;
                }
            }
            tokio::time::timeout(timeout, client.flush())
                .await
                .map_err(|_| PublishError::Timeout(timeout))?
                .map_err(PublishError::flush)?;
        }
        Some(js) => {
            let mut acks = Vec::with_capacity(batch.len());
            for (i, (_, a)) in batch.iter().enumerate() {
                let msg = PublishMessage::build()
                    .payload(payload(a))
                    .message_id(&a.id);
                match js.send_publish(a.subject.clone(), msg).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => skip(i, PublishError::jetstream(e))?,
                }
            }
            for ack in acks {
                tokio::time::timeout(timeout, ack)
                    .await
                    .map_err(|_| PublishError::Timeout(timeout))?
                    .map_err(PublishError::jetstream)?;
            }
        }
    }
    Ok(too_large)
}
