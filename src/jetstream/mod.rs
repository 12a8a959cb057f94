//! The `[jetstream]` side: a second connection, to an ordinary JetStream-enabled account (the
//! system account cannot have streams), and the advisory stream there.
//!
//! The connection is made by the same code as the system one ([`crate::nats::connect`]) from
//! [`JetStreamConfig::connection`]. Whether a stream captures the advisory subjects is a pure
//! function ([`covers`]); asking for the stream and creating it is I/O at the edge.

use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context;
use async_nats::Client;
use tracing::{info, warn};

use crate::config::{Config, JetStreamConfig};
use crate::error::AppError;
use crate::nats::{self, ConnectionEvents};

/// How long a stream connwatch creates keeps an advisory.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The de-duplication window of a stream connwatch creates: a retry or a repeat within it
/// (same `Nats-Msg-Id`) is not stored again.
pub const STREAM_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the advisory stream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// JetStream did not answer, or refused to look the stream up or create it.
    #[error("cannot look up or create the stream")]
    Api(#[source] async_nats::Error),
    /// The stream exists but stores other subjects.
    #[error("stream `{stream}` stores {subjects:?}, which do not capture `{wanted}`: add `{wanted}` to its subjects or set `advisory.stream` to another stream")]
    NotCapturing {
        /// The stream.
        stream: String,
        /// Its subjects.
        subjects: Vec<String>,
        /// The advisory subjects.
        wanted: String,
    },
}

/// Connects the `[jetstream]` connection of `config`. Failures are start-up failures
/// (exit 6) naming `[jetstream]`: the connect error's own advice is about the system account.
pub async fn connect(
    config: &Config,
    js: &JetStreamConfig,
    events: Option<ConnectionEvents>,
) -> Result<Client, AppError> {
    let conn = js.connection(&config.nats);
    nats::connect(&conn, events).await.map_err(|e| {
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        AppError::Startup {
            setting: "jetstream",
            value: format!("servers {:?}", conn.servers),
            what: "the connection to the JetStream account",
            source: why.into(),
        }
    })
}

/// The advisory subjects: `<prefix>.>`.
pub fn advisory_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Whether the subject filter `filter` matches every subject `wanted` matches (`wanted` is
/// literal tokens, optionally ending in `>`).
pub fn covers(filter: &str, wanted: &str) -> bool {
    let w: Vec<&str> = wanted.split('.').collect();
    for (i, f) in filter.split('.').enumerate() {
        if f == ">" {
            return i < w.len();
        }
        match w.get(i) {
            None | Some(&">") => return false,
            Some(t) if f != "*" && f != *t => return false,
            _ => {}
        }
    }
    filter.split('.').count() == w.len()
}

/// The stream connwatch creates for its advisories when it is absent.
pub fn stream_config(name: &str, prefix: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: name.to_string(),
        subjects: vec![advisory_subjects(prefix)],
        storage: StorageType::File,
        max_age: STREAM_MAX_AGE,
        duplicate_window: STREAM_DUPLICATE_WINDOW,
        num_replicas: replicas,
        description: Some("connwatch advisories".into()),
        ..StreamConfig::default()
    }
}

/// Attempts at looking a stream up or creating it at start: replicas starting together race
/// to create it, and a cluster just started may still elect its JetStream leader.
const STREAM_ATTEMPTS: u32 = 5;

/// Finds the stream `config.name`, or creates it, retrying (0.5 s, 1 s, 2 s, 4 s apart) while
/// JetStream does not answer or refuses.
pub async fn get_or_create_stream(
    js: &Context,
    config: StreamConfig,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::Error> {
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if attempt < STREAM_ATTEMPTS => {
                warn!(stream = %config.name, error = %e, attempt, "stream not ready; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Finds the advisory stream, or creates it; an existing stream must capture the advisory
/// subjects.
pub async fn ensure_stream(
    js: &Context,
    name: &str,
    prefix: &str,
    replicas: usize,
) -> Result<(), StreamError> {
    let stream = get_or_create_stream(js, stream_config(name, prefix, replicas))
        .await
        .map_err(StreamError::Api)?;
    let cfg = &stream.cached_info().config;
    let wanted = advisory_subjects(prefix);
    if !cfg.subjects.iter().any(|f| covers(f, &wanted)) {
        return Err(StreamError::NotCapturing {
            stream: name.to_string(),
            subjects: cfg.subjects.clone(),
            wanted,
        });
    }
    info!(stream = name, subjects = ?cfg.subjects, replicas = cfg.num_replicas, duplicate_window = %humantime::format_duration(cfg.duplicate_window), "advisory stream ready");
    Ok(())
}

/// The client advisories are published with when `advisory.jetstream` is on: the
/// `[jetstream]` connection, once its stream is ready. `None` when it is off.
pub async fn advisory_client(
    config: &Config,
    events: Option<ConnectionEvents>,
) -> Result<Option<Client>, AppError> {
    let (true, Some(js_cfg)) = (config.advisory.jetstream, &config.jetstream) else {
        return Ok(None);
    };
    let client = connect(config, js_cfg, events).await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_stream(
        &js,
        &config.advisory.stream,
        &config.advisory.subject_prefix,
        js_cfg.replicas,
    )
    .await
    .map_err(|e| AppError::Startup {
        setting: "advisory.stream",
        value: format!("{:?}", config.advisory.stream),
        what: "the advisory stream",
        source: Box::new(e),
    })?;
    Ok(Some(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_covers_the_advisory_subjects_only_when_it_matches_all_of_them() {
        let wanted = "connwatch.advisory.>";
        for f in [
            "connwatch.advisory.>",
            "connwatch.>",
            ">",
            "*.advisory.>",
            "connwatch.*.>",
        ] {
            assert!(covers(f, wanted), "{f}");
        }
        for f in [
            "connwatch.advisory.*",
            "connwatch.advisory",
            "connwatch.advisory.excessive_user_connections.>",
            "other.>",
            "connwatch.advisory.*.>",
            "*",
        ] {
            assert!(!covers(f, wanted), "{f}");
        }
        assert!(covers("a.*.c", "a.b.c"));
        assert!(!covers("a.*", "a.b.c"));
    }

    #[test]
    fn the_created_stream_captures_its_subjects_and_deduplicates_for_two_minutes() {
        let c = stream_config("CONNWATCH_ADVISORIES", "connwatch.advisory", 3);
        assert!(c.subjects.iter().any(|f| covers(f, "connwatch.advisory.>")));
        assert_eq!(c.storage, StorageType::File);
        assert!(c.duplicate_window >= Duration::from_secs(120));
        assert!(c.max_age >= c.duplicate_window);
        assert_eq!(c.num_replicas, 3);
    }
}
