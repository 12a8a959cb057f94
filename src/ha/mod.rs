//! High availability: several replicas, one acting. The lease is a key in a JetStream
//! key-value bucket of the `[jetstream]` account, taken with a create (expected last revision
//! 0) and renewed with an update on its revision every third of `ha.lease`, each write with a
//! per-message TTL of `ha.lease`: a holder that dies stops renewing and the key expires.
//! Whoever holds it acts (publishes advisories, kicks); the others keep their census warm and
//! answer reads. The decisions are in [`lease`] (pure); this file is the I/O.

pub mod lease;
pub mod outbox;

use std::sync::{Arc, Mutex};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use lease::{Lease, Role};

use crate::advisory::Advisory;
use crate::config::{Config, HaConfig};
use crate::error::AppError;
use crate::metrics::{Health, Metrics};
use crate::state::State;

/// The lease key in the bucket.
pub const LEASE_KEY: &str = "leader";

/// Whether this replica may act, asked by the service loop before each kick batch and by the
/// publisher before each publish batch. A single instance (no `[ha]`) always acts.
#[derive(Clone, Default)]
pub struct Gate(Option<Arc<Replica>>);

/// One replica's lease, its bucket, and the revision of the state it saved last.
struct Replica {
    lease: Arc<Mutex<Lease>>,
    kv: Store,
    saved: Mutex<Option<u64>>,
}

impl Gate {
    /// A single instance: always acting.
    pub fn single() -> Self {
        Self(None)
    }

    /// Whether this is one of several replicas (`[ha]`).
    pub fn replicated(&self) -> bool {
        self.0.is_some()
    }

    /// Whether this replica may act now.
    pub fn acting(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|r| r.lease.lock().expect("lease lock").acting(Instant::now()))
    }

    /// The role now and since when; `None` for a single instance.
    pub fn role(&self) -> Option<(Role, DateTime<Utc>)> {
        let l = self.0.as_ref()?.lease.lock().expect("lease lock");
        Some((l.role(Instant::now()), l.since()))
    }

    /// The state the last leader saved in the bucket, and the advisories it had not published
    /// yet (its outbox): `None` when none was saved yet, or for a single instance. Its revision
    /// is where this replica's next save must follow. An error when the bucket cannot be read,
    /// so a new leader that cannot learn what its predecessor announced and kicked does not act.
    pub async fn load_state(&self) -> Result<Option<(State, Vec<Advisory>)>, async_nats::Error> {
        let Some(r) = &self.0 else {
            return Ok(None);
        };
        let entry = r.kv.entry(STATE_KEY).await?;
        *r.saved.lock().expect("saved lock") = Some(entry.as_ref().map_or(0, |e| e.revision));
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let saved: outbox::Saved = serde_json::from_slice(&e.value)?;
                let outbox = saved.outbox.into_iter().map(Advisory::from).collect();
                Ok(Some((saved.state, outbox)))
            }
            _ => Ok(None),
        }
    }

    /// Saves the state of a round this replica acted in, with `outbox` (what it decided to
    /// announce and has not published yet), as an update on the revision it loaded or saved
    /// last: when another replica saved since (it leads now), nothing is written and false is
    /// returned, so this one loads the bucket's state again before it next acts. A state too
    /// large for one message is saved without its growth history, then without the oldest
    /// outbox entries.
    pub async fn save_state(&self, state: &State, outbox: &[Advisory]) -> bool {
        let Some(r) = &self.0 else {
            return true;
        };
        let (bytes, trimmed) = outbox::encode(state, outbox, MAX_STATE_BYTES);
        if trimmed.history || trimmed.outbox > 0 {
            warn!(
                bytes = bytes.len(),
                history = trimmed.history,
                outbox_dropped = trimmed.outbox,
                "HA: state too large for the bucket; saved without the growth history (and the oldest unpublished advisories)"
            );
        }
        let last = r.saved.lock().expect("saved lock").unwrap_or(0);
        match r.kv.update(STATE_KEY, bytes.into(), last).await {
            Ok(revision) => {
                *r.saved.lock().expect("saved lock") = Some(revision);
                true
            }
            Err(e) => {
                warn!(error = %crate::advisory::with_sources(&e), "HA: state not saved in the bucket; reloading it before acting again");
                false
            }
        }
    }
}

/// The key holding the leader's state (firing findings, kick memory, servers, history).
pub const STATE_KEY: &str = "state";
/// A state larger than this is saved without its history (a NATS message is at most 1 MiB by
/// default).
const MAX_STATE_BYTES: usize = 900 * 1024;

/// Why the lease key could not be written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Another replica holds the key, or it moved past this replica's revision.
    #[error("the lease is held by another replica")]
    Taken,
    /// JetStream did not confirm the write.
    #[error("the lease write was not confirmed")]
    Unconfirmed(#[source] async_nats::Error),
}

/// The stream behind the bucket: a key-value bucket (one value per key) whose messages may
/// carry a TTL.
pub fn bucket_stream(bucket: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        allow_message_ttl: true,
        description: Some("connwatch: the replicas' lease".into()),
        ..StreamConfig::default()
    }
}

/// Starts the lease task with `[ha]` enabled: its own `[jetstream]` connection, the bucket
/// (created when absent; an existing one must allow message TTLs). Without `[ha]`, a gate
/// that always acts.
pub async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> Result<(Gate, Option<JoinHandle<()>>), AppError> {
    let (true, Some(js_cfg)) = (config.ha.enabled, &config.jetstream) else {
        return Ok((Gate::single(), None));
    };
    let client = crate::jetstream::connect(config, js_cfg, None).await?;
    let js = async_nats::jetstream::new(client);
    let bucket_error = |source: Box<dyn std::error::Error + Send + Sync>| AppError::Startup {
        setting: "ha.bucket",
        value: format!("{:?}", config.ha.bucket),
        what: "the HA bucket",
        source,
    };
    let stream = crate::jetstream::get_or_create_stream(
        &js,
        bucket_stream(&config.ha.bucket, js_cfg.replicas),
    )
    .await
    .map_err(bucket_error)?;
    if !stream.cached_info().config.allow_message_ttl {
        return Err(bucket_error(
            "the bucket exists without per-message TTLs (allow_msg_ttl): delete it, or name another in `ha.bucket`".into(),
        ));
    }
    let kv = js
        .get_key_value(&config.ha.bucket)
        .await
        .map_err(|e| bucket_error(Box::new(e)))?;
    let lease = Arc::new(Mutex::new(Lease::new(config.ha.lease, Utc::now())));
    let me = format!("{}-{}", hostname(), nuid::next());
    info!(replica = %me, bucket = %config.ha.bucket, lease = %humantime::format_duration(config.ha.lease), "HA: competing for the lease");
    let task = tokio::spawn(lease_loop(
        js,
        config.ha.clone(),
        me,
        lease.clone(),
        metrics,
        health,
        stop,
    ));
    let replica = Replica {
        lease,
        kv,
        saved: Mutex::new(None),
    };
    Ok((Gate(Some(Arc::new(replica))), Some(task)))
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid{}", std::process::id()))
}

/// Takes or renews the lease every third of it until `stop`; then gives it up (deletes the
/// key at its revision) so another replica takes over at once.
async fn lease_loop(
    js: Context,
    cfg: HaConfig,
    me: String,
    lease: Arc<Mutex<Lease>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let subject = format!("$KV.{}.{LEASE_KEY}", cfg.bucket);
    let every = lease.lock().expect("lease lock").renew_every();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_role = None;
    loop {
        // The role is noted at every attempt, and the moment the acting deadline passes.
        let until = lease
            .lock()
            .expect("lease lock")
            .acting_until()
            .filter(|u| *u > Instant::now());
        let deadline = async {
            match until {
                Some(u) => tokio::time::sleep_until(u).await,
                None => std::future::pending().await,
            }
        };
        let attempt = tokio::select! {
            _ = tick.tick() => true,
            _ = deadline => false,
            _ = stop.cancelled() => break,
        };
        if attempt {
            let revision = lease.lock().expect("lease lock").revision();
            let sent = Instant::now();
            let write = write(&js, &cfg, &subject, revision, Bytes::from(me.clone()));
            // An attempt outlasting the deadline is abandoned: the role is noted at once.
            let limit = until.map_or(sent + every, |u| u.min(sent + every));
            let written = tokio::time::timeout_at(limit, write).await;
            let mut l = lease.lock().expect("lease lock");
            match written {
                Ok(Ok(rev)) => l.written(rev, sent, Utc::now()),
                Ok(Err(WriteError::Taken)) => l.lost(Utc::now()),
                Ok(Err(e)) => {
                    warn!(error = %crate::advisory::with_sources(&e), "HA: lease not renewed")
                }
                Err(_) => warn!("HA: lease write not confirmed in time"),
            }
        }
        let role = {
            let l = lease.lock().expect("lease lock");
            (l.role(Instant::now()), l.since())
        };
        if last_role != Some(role.0) {
            info!(role = role.0.name(), "HA: role");
            last_role = Some(role.0);
        }
        metrics.leader(role.0 == Role::Leader, role.1);
        health.set_role(Some(role.0.name()));
    }
    let revision = lease.lock().expect("lease lock").revision();
    lease.lock().expect("lease lock").lost(Utc::now());
    if let (Some(rev), Ok(kv)) = (revision, js.get_key_value(&cfg.bucket).await) {
        if kv
            .delete_expect_revision(LEASE_KEY, Some(rev))
            .await
            .is_ok()
        {
            info!("HA: lease given up");
        }
    }
}

/// Creates the key (no revision) or updates it at `revision`, with a TTL of the lease.
async fn write(
    js: &Context,
    cfg: &HaConfig,
    subject: &str,
    revision: Option<u64>,
    value: Bytes,
) -> Result<u64, WriteError> {
    let expected = match revision {
        Some(r) => r,
        // Taking it: over nothing, or over a key given up (a delete marker).
        None => match js
            .get_key_value(&cfg.bucket)
            .await
            .map_err(|e| WriteError::Unconfirmed(e.into()))?
            .entry(LEASE_KEY)
            .await
            .map_err(|e| WriteError::Unconfirmed(e.into()))?
        {
            None => 0,
            Some(e) if matches!(e.operation, Operation::Delete | Operation::Purge) => e.revision,
            Some(_) => return Err(WriteError::Taken),
        },
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers.insert(
        async_nats::header::NATS_MESSAGE_TTL,
        format!("{}s", cfg.lease.as_secs()).as_str(),
    );
    let ack = js
        .publish_with_headers(subject.to_string(), headers, value)
        .await
        .map_err(|e| WriteError::Unconfirmed(e.into()))?
        .await;
    match ack {
        Ok(a) => Ok(a.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(WriteError::Taken),
        Err(e) => Err(WriteError::Unconfirmed(e.into())),
    }
}
