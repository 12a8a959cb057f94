//! Connecting with any of the credential kinds NATS offers, with errors an operator can act on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info, warn};

use crate::config::NatsConfig;

/// Why connwatch could not connect, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No server answered.
    #[error("cannot reach any NATS server of {servers}: check `nats.servers` and that the servers are up")]
    Unreachable {
        /// The configured URLs.
        servers: String,
        /// What the client saw.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A server answered but refused the credentials.
    #[error("the server rejected connwatch's credentials (`nats.{kind}`): check they belong to a user of the system account")]
    Rejected {
        /// Which credential setting was used.
        kind: &'static str,
        /// What the client saw.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials file could not be read or used.
    #[error(
        "cannot use the credentials in {path}: check the file is a valid .creds or nkey seed file"
    )]
    BadCredentials {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS handshake failed.
    #[error("TLS with the server failed: check `nats.tls.ca` (the CA that signed the server certificate) and the client certificate")]
    Tls {
        /// What the client saw.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Connected, but the user is not in the system account: system requests get no answer.
    #[error("connected as user `{user}` of account `{account}`, but this is not a system-account user: the servers do not answer its system requests; use credentials of a user in the account named by the servers' `system_account`")]
    NotSystemAccount {
        /// The user connwatch authenticated as.
        user: String,
        /// Its account.
        account: String,
    },
}

impl ConnectError {
    /// The process exit code for this error (see README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable { .. } | Self::Tls { .. } => 3,
            Self::Rejected { .. } | Self::BadCredentials { .. } => 4,
            Self::NotSystemAccount { .. } => 5,
        }
    }
}

/// Which credential setting is in use, for messages.
fn credential_kind(cfg: &NatsConfig) -> &'static str {
    if cfg.creds.is_some() {
        "creds"
    } else if cfg.user.is_some() {
        "user"
    } else if cfg.token.is_some() {
        "token"
    } else if cfg.nkey.is_some() {
        "nkey"
    } else {
        "(none)"
    }
}

/// Whether an error (or one of its sources) is a TLS handshake or certificate failure.
/// Matching the text is the only way: async-nats reports rustls failures during the handshake
/// as plain IO errors (not `ConnectErrorKind::Tls`), and connwatch does not depend on rustls to
/// downcast its error type.
fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string().to_ascii_lowercase();
        if ["certificate", "handshake", "unknownissuer", "tls"]
            .iter()
            .any(|w| text.contains(w))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Counters the client's connection events increment the moment the client reports them, so
/// the metrics never wait for the next sweep.
#[derive(Clone, Debug, Default)]
pub struct ConnectionEvents {
    /// Every reconnect (not the first connection).
    pub reconnects: Counter,
    /// Every loss of the connection.
    pub disconnects: Counter,
    /// Every message the client dropped because a subscription's channel was full.
    pub slow_consumers: Counter,
}

/// Connects to the cluster. Reconnects are automatic and unlimited after the first connection;
/// `events`, when given, counts the reconnects, disconnects and slow-consumer drops (see [`ConnectionEvents`]).
pub async fn connect(
    cfg: &NatsConfig,
    events: Option<ConnectionEvents>,
) -> Result<Client, ConnectError> {
    let connects = Arc::new(AtomicU64::new(0));
    let mut opts = ConnectOptions::new()
        .name(&cfg.name)
        .connection_timeout(cfg.connect_timeout)
        .max_reconnects(None)
        .event_callback(move |event| {
            let (connects, events) = (connects.clone(), events.clone());
            async move {
                match event {
                    Event::Connected => {
                        // The first `Connected` is the initial connection, every later one a reconnect.
                        if connects.fetch_add(1, Ordering::Relaxed) > 0 {
                            if let Some(e) = &events {
                                e.reconnects.inc();
                            }
                        }
                        info!("nats connected")
                    }
                    Event::Disconnected => {
                        if let Some(e) = &events {
                            e.disconnects.inc();
                        }
                        warn!("nats disconnected")
                    }
                    Event::ClientError(e) => warn!(error = %e, "nats client error"),
                    Event::ServerError(e) => warn!(error = %e, "nats server error"),
                    Event::SlowConsumer(sid) => {
                        if let Some(e) = &events {
                            e.slow_consumers.inc();
                        }
                        warn!(sid, "nats slow consumer: messages dropped")
                    }
                    other => debug!(event = %other, "nats event"),
                }
            }
        });
    if let Some(path) = &cfg.creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| ConnectError::BadCredentials {
                path: path.display().to_string(),
                source: Box::new(e),
            })?;
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.expose().to_string());
    }
    if let Some(path) = &cfg.nkey {
        let seed = std::fs::read_to_string(path).map_err(|e| ConnectError::BadCredentials {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if cfg.tls.enabled() {
        opts = opts.require_tls(true);
        if let Some(ca) = &cfg.tls.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let servers = cfg.servers.join(",");
    opts.connect(cfg.servers.as_slice())
        .await
        .map_err(|source| match source.kind() {
            ConnectErrorKind::AuthorizationViolation => ConnectError::Rejected {
                kind: credential_kind(cfg),
                source,
            },
            ConnectErrorKind::Authentication => ConnectError::BadCredentials {
                path: cfg
                    .creds
                    .as_ref()
                    .or(cfg.nkey.as_ref())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source: Box::new(source),
            },
            ConnectErrorKind::Tls => ConnectError::Tls { source },
            _ if is_tls_failure(&source) => ConnectError::Tls { source },
            _ => ConnectError::Unreachable { servers, source },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn certificate_errors_below_an_io_error_are_tls_failures() {
        let e = Chain(
            "IO error",
            Some(Box::new(Chain(
                "invalid peer certificate: UnknownIssuer",
                None,
            ))),
        );
        assert!(is_tls_failure(&e));
        assert!(!is_tls_failure(&Chain(
            "IO error",
            Some(Box::new(Chain("Connection refused (os error 111)", None)))
        )));
    }
}
