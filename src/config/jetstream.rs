//! `[jetstream]`: the second connection, to an ordinary JetStream-enabled account (JetStream
//! cannot be enabled in the system account); `[ha]`: the replicas' leadership over it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{de_opt_stringish, de_url_list, NatsConfig, Secret, TlsConfig};

/// `[jetstream]`: a connection to a JetStream-enabled account, for the advisory stream
/// (`advisory.jetstream`) and the HA bucket (`[ha]`). Absent: no such connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Server URLs; empty: `nats.servers`.
    #[serde(deserialize_with = "de_url_list")]
    pub servers: Vec<String>,
    /// A `.creds` file of a user in the JetStream account.
    pub creds: Option<PathBuf>,
    /// User name of a user in the JetStream account (with `password`).
    #[serde(deserialize_with = "de_opt_stringish")]
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret>,
    /// A token of a user in the JetStream account.
    pub token: Option<Secret>,
    /// A file holding the nkey seed (`SU...`) of a user in the JetStream account.
    pub nkey: Option<PathBuf>,
    /// TLS settings; TLS is required when any of them is set.
    pub tls: TlsConfig,
    /// Replicas of the advisory stream and the HA bucket when connwatch creates them (at most
    /// the number of JetStream servers).
    pub replicas: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            tls: TlsConfig::default(),
            replicas: 3,
        }
    }
}

impl JetStreamConfig {
    /// The connection settings, in the shape `[nats]` has, so the same connect code serves
    /// both: servers default to `nats.servers`; the client name is `<nats.name>-jetstream`.
    pub fn connection(&self, nats: &NatsConfig) -> NatsConfig {
        NatsConfig {
            servers: if self.servers.is_empty() {
                nats.servers.clone()
            } else {
                self.servers.clone()
            },
            creds: self.creds.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey: self.nkey.clone(),
            tls: self.tls.clone(),
            name: format!("{}-jetstream", nats.name),
            connect_timeout: nats.connect_timeout,
        }
    }
}

/// `[ha]`: several replicas, one acting (publishing advisories, kicking) under a lease in a
/// JetStream key-value bucket. Needs `[jetstream]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Run as one of several replicas: only the holder of the lease acts.
    pub enabled: bool,
    /// How long a lease lasts without renewal (whole seconds, at least 2s); the leader renews
    /// it every third of it and stops acting a fifth of it before it could expire.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The key-value bucket (in the `[jetstream]` account) holding the lease key `leader`.
    pub bucket: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease: Duration::from_secs(10),
            bucket: "connwatch".into(),
        }
    }
}
