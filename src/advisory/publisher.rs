//! Publishing advisories: a bounded queue that survives disconnects.
//!
//! Advisories wait in the queue until the client is connected and the server has confirmed them
//! (a flush round trip, or the JetStream ack). Only then do they leave the queue, so nothing is
//! lost over a disconnect; a retry may deliver one twice (the `id`, and JetStream's
//! `Nats-Msg-Id`, tell duplicates apart). A full queue drops its oldest advisory and counts it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::message::PublishMessage;
use async_nats::Client;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Advisory;
use crate::config::AdvisoryConfig;

/// Advisories sent in one confirmed batch.
const BATCH: usize = 256;
/// Wait before retrying after a failed batch, or while disconnected.
const RETRY: Duration = Duration::from_millis(250);

/// What the publisher has done, for logs and metrics.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Advisories confirmed by the server.
    pub published: Counter,
    /// Advisories dropped because the queue was full.
    pub dropped: Counter,
    /// Batches that failed and were retried.
    pub failures: Counter,
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

    /// Advisories waiting to be published.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").items.len()
    }

    /// Waits until the queue is empty or `timeout` passes, then stops; returns how many
    /// advisories were left unpublished.
    pub async fn shutdown(self, timeout: Duration) -> usize {
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
        let left = self.queued();
        let _ = self.task.await;
        left
    }
}

async fn publish_loop(
    client: Client,
    cfg: AdvisoryConfig,
    shared: Arc<Shared>,
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
            Ok(()) => {
                let last = batch.last().map(|(seq, _)| *seq).unwrap_or(0);
                let mut q = shared.queue.lock().expect("queue lock");
                while q.items.front().is_some_and(|(seq, _)| *seq <= last) {
                    q.items.pop_front();
                }
                shared.stats.published.inc_by(batch.len() as u64);
            }
            Err(e) => {
                shared.stats.failures.inc();
                warn!(error = %e, queued = batch.len(), "publishing advisories failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Publishes a batch and waits until the server confirmed all of it.
async fn send(
    client: &Client,
    js: Option<&async_nats::jetstream::Context>,
    batch: &[(u64, Advisory)],
    timeout: Duration,
) -> Result<(), String> {
    let payload =
        |a: &Advisory| Bytes::from(serde_json::to_vec(&a.body).expect("advisory serializes"));
    match js {
        None => {
            for (_, a) in batch {
                client
                    .publish(a.subject.clone(), payload(a))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tokio::time::timeout(timeout, client.flush())
                .await
                .map_err(|_| format!("flush not confirmed within {timeout:?}"))?
                .map_err(|e| e.to_string())
        }
        Some(js) => {
            let mut acks = Vec::with_capacity(batch.len());
            for (_, a) in batch {
                let msg = PublishMessage::build()
                    .payload(payload(a))
                    .message_id(&a.id);
                acks.push(
                    js.send_publish(a.subject.clone(), msg)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            for ack in acks {
                tokio::time::timeout(timeout, ack)
                    .await
                    .map_err(|_| format!("JetStream ack not received within {timeout:?}"))?
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}
