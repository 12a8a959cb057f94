//! Configuration: defaults → TOML file → `CONNWATCH_<SECTION>__<KEY>` environment → flags.
//!
//! Every error names the key and where its value came from, so an operator can fix it in one go.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the environment variables that configure connwatch.
pub const ENV_PREFIX: &str = "CONNWATCH_";
/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/connwatch.toml";

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach the cluster and authenticate as a system-account user.
    pub nats: NatsConfig,
    /// How a sweep asks the servers for their connections.
    pub sweep: SweepConfig,
    /// What counts as excessive or leaked.
    pub detect: DetectConfig,
    /// Where and how findings are published.
    pub advisory: AdvisoryConfig,
    /// Closing leaked connections: off unless enabled.
    pub kick: KickConfig,
    /// Prometheus metrics and health over HTTP.
    pub metrics: MetricsConfig,
    /// The NATS micro service (`$SRV.PING`, census, findings, sweep now).
    pub service: ServiceConfig,
    /// Logging.
    pub log: LogConfig,
    /// What connwatch remembers between runs.
    pub state: StateConfig,
}

/// `[nats]`: the connection to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs; a list, or one string of comma-separated URLs.
    #[serde(deserialize_with = "de_url_list")]
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT + nkey seed) of a system-account user: operator (JWT) mode.
    pub creds: Option<PathBuf>,
    /// User name of a system-account user (with `password`).
    #[serde(deserialize_with = "de_opt_stringish")]
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret>,
    /// A token that authenticates a system-account user.
    pub token: Option<Secret>,
    /// A file holding the nkey seed (`SU...`) of a system-account user.
    pub nkey: Option<PathBuf>,
    /// TLS settings; TLS is required when any of them is set.
    pub tls: TlsConfig,
    /// The client name connwatch shows in the servers' connection lists.
    pub name: String,
    /// How long to wait for the first connection to a server.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            tls: TlsConfig::default(),
            name: "connwatch".into(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `[nats.tls]`: custom CA and client certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the servers' certificates.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether any TLS setting is present.
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// `[sweep]`: one round of CONNZ requests over the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Time between the starts of two sweeps (`connwatch run`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long to wait for the servers' replies to one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How many servers must answer for a complete sweep; 0 discovers it from the cluster.
    pub expected_servers: usize,
    /// Connections in each server's first CONNZ reply (the PING). Each request costs the server
    /// a sort of all its connections; a server with more is read again in one directed request
    /// for its whole list (its `total` plus headroom), so its connections are one snapshot.
    pub page_size: usize,
    /// A server not seen for this long is no longer expected (it left the cluster).
    #[serde(with = "humantime_serde")]
    pub forget_servers_after: Duration,
    /// Time limit of a whole sweep; unset: 4 × `timeout`. Servers not read by then are errors
    /// (the sweep is partial); the others are kept.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// A server reporting more connections than this is an error and its list is not asked
    /// for: a bound on what one reply can make connwatch allocate.
    pub max_connections_per_server: u64,
}

impl SweepConfig {
    /// `deadline`, or 4 × `timeout` when unset.
    pub fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(self.timeout.saturating_mul(4))
    }
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            expected_servers: 0,
            page_size: 10_000,
            forget_servers_after: Duration::from_secs(3600),
            deadline: None,
            max_connections_per_server: 1_000_000,
        }
    }
}

/// `[detect]`: thresholds for findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// A user holding more connections than this, cluster-wide, is excessive.
    pub max_connections_per_user: u64,
    /// A connection with no activity for this long and no messages in or out looks leaked.
    #[serde(with = "humantime_serde")]
    pub idle_threshold: Duration,
    /// How many leak suspects to list per user (the oldest idle first).
    pub max_suspects_per_user: usize,
    /// Thresholds for particular accounts or users; the most specific one wins.
    pub overrides: Vec<ThresholdOverride>,
    /// Users (or whole accounts) never reported.
    pub ignore: Vec<UserMatch>,
    /// Connection limits of accounts by name or key, for servers that do not expose them
    /// (config mode); in operator mode the account JWT's limit is read from the servers.
    pub account_limits: BTreeMap<String, u64>,
    /// An account at this share of its connection limit is under pressure.
    pub account_pressure: f64,
    /// A server at this share of its `max_connections` is under pressure.
    pub server_pressure: f64,
    /// How far back growth looks (complete sweeps only).
    #[serde(with = "humantime_serde")]
    pub growth_window: Duration,
    /// A user projected to cross its threshold or its account's limit within this is reported.
    #[serde(with = "humantime_serde")]
    pub growth_horizon: Duration,
    /// Slower growth than this many connections per hour is not reported.
    pub growth_min_per_hour: f64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: 100,
            idle_threshold: Duration::from_secs(300),
            max_suspects_per_user: 20,
            overrides: Vec::new(),
            ignore: Vec::new(),
            account_limits: BTreeMap::new(),
            account_pressure: 0.9,
            server_pressure: 0.8,
            growth_window: Duration::from_secs(3600),
            growth_horizon: Duration::from_secs(24 * 3600),
            growth_min_per_hour: 10.0,
        }
    }
}

/// `[[detect.ignore]]`: an account, or one user of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserMatch {
    /// Account name or public key (`A...`).
    #[serde(deserialize_with = "de_stringish")]
    pub account: String,
    /// User name or public key (`U...`); absent means every user of the account.
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub user: Option<String>,
}

impl UserMatch {
    /// Whether the rule covers this user; accounts and users match by key or human name.
    pub fn matches(
        &self,
        account: &str,
        account_name: &Option<String>,
        user: &str,
        user_name: &Option<String>,
    ) -> bool {
        names_match(&self.account, account, account_name)
            && self
                .user
                .as_deref()
                .is_none_or(|u| names_match(u, user, user_name))
    }
}

/// `want` names the thing with key `key` or human name `name`.
pub fn names_match(want: &str, key: &str, name: &Option<String>) -> bool {
    want == key || name.as_deref() == Some(want)
}

/// `[advisory]`: publishing findings on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvisoryConfig {
    /// Subjects are `<subject_prefix>.<type name>.<account>.<user>` (escaped tokens).
    pub subject_prefix: String,
    /// A firing finding is announced again this often while it lasts.
    #[serde(with = "humantime_serde")]
    pub renotify: Duration,
    /// Advisories waiting for a connection, at most; beyond it the oldest are dropped (counted).
    pub queue_size: usize,
    /// Publish to JetStream with acknowledgement and `Nats-Msg-Id` (a stream must capture the subjects).
    pub jetstream: bool,
    /// How long to wait for a publish to be confirmed (flush or JetStream ack).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for AdvisoryConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "connwatch.advisory".into(),
            renotify: Duration::from_secs(3600),
            queue_size: 10_000,
            jetstream: false,
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// `[[detect.overrides]]`: a threshold for one account, or one user of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    /// Account name or public key (`A...`).
    #[serde(deserialize_with = "de_stringish")]
    pub account: String,
    /// User name or public key (`U...`); absent means every user of the account.
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub user: Option<String>,
    /// The threshold for the matching users.
    pub max_connections: u64,
}

/// `[kick]`: closing leaked connections (`$SYS.REQ.SERVER.<id>.KICK`), under a strict policy.
///
/// A connection is kicked only when its user is over its threshold in a complete sweep, it is
/// idle at least `min_idle` with no message in or out, older than `min_age`, its user is not in
/// `protect` (and is in `only` when that is set), and it is neither the system account's,
/// connwatch's own, nor a leafnode (unless `leafnodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KickConfig {
    /// Kick at all. Off by default.
    pub enabled: bool,
    /// Decide and announce every kick, but never send one. On by default: set it to false to act.
    pub dry_run: bool,
    /// A connection must have been idle this long, with no message ever, to be kicked.
    #[serde(with = "humantime_serde")]
    pub min_idle: Duration,
    /// A connection must be at least this old to be kicked.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Users (or whole accounts) never kicked.
    pub protect: Vec<UserMatch>,
    /// When not empty, only these users (or accounts) may ever be kicked.
    pub only: Vec<UserMatch>,
    /// Kick leafnode connections too.
    pub leafnodes: bool,
    /// Kicks per sweep, at most, over all users.
    pub max_per_sweep: usize,
    /// Kicks per user per sweep, at most.
    pub max_per_user: usize,
    /// A client (user, client name, IP) that connects again within this of a kick came back:
    /// the kick was ineffective.
    #[serde(with = "humantime_serde")]
    pub return_window: Duration,
    /// After this many ineffective kicks a client is left alone (and reported).
    pub max_attempts: u32,
    /// How long a client connwatch gave up on stays given up on; unset: until the operator runs
    /// `connwatch kick --forget`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub give_up_for: Option<Duration>,
    /// How long to wait for a server's answer to a KICK.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// KICK requests in flight to one server at a time, at most; servers are kicked in parallel.
    pub concurrency: usize,
}

impl Default for KickConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: true,
            min_idle: Duration::from_secs(3600),
            min_age: Duration::from_secs(3600),
            protect: Vec::new(),
            only: Vec::new(),
            leafnodes: false,
            max_per_sweep: 100,
            max_per_user: 20,
            return_window: Duration::from_secs(600),
            max_attempts: 3,
            give_up_for: None,
            timeout: Duration::from_secs(5),
            concurrency: 8,
        }
    }
}

/// `[metrics]`: Prometheus exposition, `/healthz` and `/readyz` over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `127.0.0.1:9464`; empty turns the listener off.
    pub listen: String,
    /// Users with fewer connections than this get no per-user series.
    pub user_floor: u64,
    /// At most this many users (the largest) get per-user series.
    pub max_users: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            user_floor: 10,
            max_users: 100,
        }
    }
}

/// `[service]`: connwatch as a NATS micro service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Answer `$SRV.PING`/`INFO`/`STATS` and the endpoints.
    pub enabled: bool,
    /// Endpoint subjects are `<prefix>.census`, `<prefix>.findings` and `<prefix>.sweep`.
    pub prefix: String,
    /// `<prefix>.sweep` starts a new sweep only when the last one started at least this long
    /// ago; sooner, it answers with the last sweep. Requests during a sweep share it.
    #[serde(with = "humantime_serde")]
    pub sweep_min_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "connwatch".into(),
            sweep_min_interval: Duration::from_secs(10),
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter (`info`, `debug`, `connwatch=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[state]`: what survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// JSON file where connwatch keeps the servers it has seen; empty keeps them in memory only.
    pub file: Option<PathBuf>,
}

/// A secret string: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for handing to the NATS client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_stringish(d).map(Secret)
    }
}

/// Accepts a string, or a number or boolean (as the environment may give), as a string.
fn de_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Stringish::deserialize(d).map(String::from)
}

fn de_opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Stringish>::deserialize(d)?.map(String::from))
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string")]
enum Stringish {
    S(String),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl From<Stringish> for String {
    fn from(v: Stringish) -> String {
        match v {
            Stringish::S(s) => s,
            Stringish::U(n) => n.to_string(),
            Stringish::I(n) => n.to_string(),
            Stringish::F(n) => n.to_string(),
            Stringish::B(b) => b.to_string(),
        }
    }
}

fn de_url_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let urls = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|u| u.trim().to_string()).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(urls.into_iter().filter(|u| !u.is_empty()).collect())
}

/// Settings given as command-line flags: the last and strongest layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flags {
    /// `--server`: replaces `nats.servers`.
    pub servers: Vec<String>,
    /// `--creds`: replaces `nats.creds`.
    pub creds: Option<PathBuf>,
    /// `--expected-servers`.
    pub expected_servers: Option<usize>,
    /// `--timeout`: replaces `sweep.timeout`.
    pub timeout: Option<Duration>,
}

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut nats = serde_json::Map::new();
        let mut sweep = serde_json::Map::new();
        if !self.servers.is_empty() {
            nats.insert("servers".into(), self.servers.clone().into());
        }
        if let Some(creds) = &self.creds {
            nats.insert("creds".into(), creds.display().to_string().into());
        }
        if let Some(n) = self.expected_servers {
            sweep.insert("expected_servers".into(), n.into());
        }
        if let Some(t) = self.timeout {
            sweep.insert(
                "timeout".into(),
                humantime::format_duration(t).to_string().into(),
            );
        }
        let mut root = serde_json::Map::new();
        for (section, map) in [("nats", nats), ("sweep", sweep)] {
            if !map.is_empty() {
                root.insert(section.into(), map.into());
            }
        }
        Serialized::defaults(serde_json::Value::Object(root)).data()
    }
}

/// A configuration mistake: what is wrong, with which key, and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, e.g. `sweep.timeout`; empty when the error is about a whole file.
    pub key: String,
    /// Where the value came from: a file path, an environment variable, flags, or defaults.
    pub source: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.source.is_empty()) {
            (true, _) => write!(f, "{} ({})", self.message, self.source),
            (false, true) => write!(f, "`{}`: {}", self.key, self.message),
            (false, false) => write!(f, "`{}` (from {}): {}", self.key, self.source, self.message),
        }
    }
}

/// All the mistakes found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid configuration ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(key: &str, source: String, message: String) -> Self {
        Self(vec![ConfigError {
            key: key.into(),
            source,
            message,
        }])
    }
}

/// A loaded, validated configuration and the figment it came from (for provenance).
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    figment: Figment,
}

impl Loaded {
    /// Where the value of `key` came from, for a person.
    pub fn source_of(&self, key: &str) -> String {
        source_of(&self.figment, key)
    }
}

/// Loads and validates the configuration.
///
/// `path` is `--config`; without it [`DEFAULT_CONFIG_PATH`] is read when it exists.
/// `env` is the process environment (passed in so tests need not touch the real one).
pub fn load(
    path: Option<&Path>,
    env: &[(String, String)],
    flags: Flags,
) -> Result<Loaded, ConfigErrors> {
    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = &file {
        // Read it first: figment would take an unreadable file for an empty one.
        std::fs::read(file).map_err(|e| {
            ConfigErrors::one(
                "",
                format!("config file {}", file.display()),
                format!("cannot read the config file: {e}"),
            )
        })?;
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(env_provider(env)).merge(flags);
    let config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
    validate(&config, &figment)?;
    Ok(Loaded {
        config,
        file,
        figment,
    })
}

/// Environment variables with our prefix that do not name a section key (`CONNWATCH_X__Y`).
pub fn stray_env_vars(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(ENV_PREFIX) && !k[ENV_PREFIX.len()..].contains("__"))
        .filter(|k| !matches!(k.as_str(), "CONNWATCH_CONFIG" | "CONNWATCH_LOG"))
        .cloned()
        .collect()
}

/// The environment layer. figment's `Env` reads the real process environment; this reads a
/// given list the same way, so tests can pass their own.
struct EnvLayer(serde_json::Value);

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.0).data()
    }
}

fn env_provider(env: &[(String, String)]) -> EnvLayer {
    let mut root = serde_json::Map::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        insert_path(&mut root, &path, env_value(v));
    }
    EnvLayer(serde_json::Value::Object(root))
}

/// Parses an environment value like figment's `Env` does: TOML-ish scalars and arrays.
fn env_value(v: &str) -> serde_json::Value {
    let value: figment::value::Value = v.parse().unwrap_or_else(|_| v.into());
    serde_json::to_value(value).unwrap_or_else(|_| v.into())
}

fn insert_path(
    map: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    v: serde_json::Value,
) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), v);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = serde_json::Value::Object(Default::default());
            }
            if let serde_json::Value::Object(m) = entry {
                insert_path(m, rest, v);
            }
        }
    }
}

fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

fn describe(md: &Metadata, key: &str) -> String {
    if md.name == ENV_METADATA {
        format!("environment variable {}", env_var_name(key))
    } else if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        format!("config file {}", path.display())
    } else if md.name == "command-line flags" {
        md.name.to_string()
    } else {
        "defaults".to_string()
    }
}

const ENV_METADATA: &str = "environment";

fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|md| describe(md, key))
        .unwrap_or_else(|| "defaults".into())
}

/// Turns figment's errors into ours, naming the key and its source.
fn from_figment(figment: &Figment, err: figment::Error) -> ConfigErrors {
    let mut out = Vec::new();
    for e in err {
        let mut path = e.path.clone();
        let message = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                match renamed(&path.join(".")) {
                    Some(message) => message.to_string(),
                    None => format!("unknown key; expected one of: {}", expected.join(", ")),
                }
            }
            kind => kind.to_string(),
        };
        let key = path.join(".");
        let source = match &e.metadata {
            Some(md) => describe(md, &key),
            None => source_of(figment, &key),
        };
        out.push(ConfigError {
            key,
            source,
            message,
        });
    }
    ConfigErrors(out)
}

/// Keys that were renamed because their old names read as the opposite of what they did.
const RENAMED: [(&str, &str); 2] = [
    (
        "kick.allow",
        "renamed to `kick.protect` (the users never kicked); `kick.allow` is no longer read",
    ),
    (
        "kick.deny",
        "renamed to `kick.only` (when set, only these users may be kicked); `kick.deny` is no longer read",
    ),
];

fn renamed(key: &str) -> Option<&'static str> {
    RENAMED.iter().find(|(old, _)| *old == key).map(|(_, m)| *m)
}

fn validate(c: &Config, figment: &Figment) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let mut bad = |key: &str, message: String| {
        errs.push(ConfigError {
            key: key.into(),
            source: source_of(figment, key),
            message,
        });
    };
    let n = &c.nats;
    if n.servers.is_empty() {
        bad("nats.servers", "no server URL given".into());
    }
    for url in &n.servers {
        if url.contains(char::is_whitespace) {
            bad("nats.servers", format!("`{url}` is not a server URL"));
        }
    }
    let kinds: Vec<&str> = [
        (n.creds.is_some(), "nats.creds"),
        (n.user.is_some() || n.password.is_some(), "nats.user"),
        (n.token.is_some(), "nats.token"),
        (n.nkey.is_some(), "nats.nkey"),
    ]
    .into_iter()
    .filter_map(|(set, key)| set.then_some(key))
    .collect();
    if kinds.len() > 1 {
        let from: Vec<String> = kinds
            .iter()
            .map(|k| format!("`{k}` from {}", source_of(figment, k)))
            .collect();
        bad(
            kinds[1],
            format!(
                "more than one kind of credentials given ({}); keep exactly one",
                from.join(", ")
            ),
        );
    }
    if n.user.is_some() != n.password.is_some() {
        let key = if n.user.is_some() {
            "nats.password"
        } else {
            "nats.user"
        };
        bad(key, "`nats.user` and `nats.password` go together".into());
    }
    if let Some(path) = &n.creds {
        if let Err(m) = check_creds_file(path) {
            bad("nats.creds", m);
        }
    }
    if let Some(path) = &n.nkey {
        if let Err(m) = check_seed_file(path) {
            bad("nats.nkey", m);
        }
    }
    for (key, path) in [
        ("nats.tls.ca", &n.tls.ca),
        ("nats.tls.cert", &n.tls.cert),
        ("nats.tls.key", &n.tls.key),
    ] {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                bad(key, format!("cannot read {}: {e}", p.display()));
            }
        }
    }
    if n.tls.cert.is_some() != n.tls.key.is_some() {
        let key = if n.tls.cert.is_some() {
            "nats.tls.key"
        } else {
            "nats.tls.cert"
        };
        bad(key, "`nats.tls.cert` and `nats.tls.key` go together".into());
    }
    if n.name.is_empty() {
        bad("nats.name", "must not be empty".into());
    }
    for (key, d) in [
        ("nats.connect_timeout", n.connect_timeout),
        ("sweep.interval", c.sweep.interval),
        ("sweep.timeout", c.sweep.timeout),
        ("detect.idle_threshold", c.detect.idle_threshold),
    ] {
        if d.is_zero() {
            bad(key, "must be longer than zero".into());
        }
    }
    if c.sweep.page_size == 0 {
        bad("sweep.page_size", "must be at least 1".into());
    }
    if c.sweep.max_connections_per_server == 0 {
        bad(
            "sweep.max_connections_per_server",
            "must be at least 1".into(),
        );
    }
    if let Some(d) = c.sweep.deadline.filter(|d| *d < c.sweep.timeout) {
        bad(
            "sweep.deadline",
            format!(
                "must be at least `sweep.timeout` ({}), got {}",
                humantime::format_duration(c.sweep.timeout),
                humantime::format_duration(d)
            ),
        );
    }
    for (key, share) in [
        ("detect.account_pressure", c.detect.account_pressure),
        ("detect.server_pressure", c.detect.server_pressure),
    ] {
        if !(share > 0.0 && share <= 1.0) {
            bad(
                key,
                format!("must be a share between 0 and 1, e.g. 0.9 (got {share})"),
            );
        }
    }
    if c.detect.growth_min_per_hour < 0.0 {
        bad("detect.growth_min_per_hour", "must not be negative".into());
    }
    for (key, d) in [
        ("detect.growth_window", c.detect.growth_window),
        ("detect.growth_horizon", c.detect.growth_horizon),
        ("advisory.renotify", c.advisory.renotify),
        ("kick.return_window", c.kick.return_window),
        ("kick.timeout", c.kick.timeout),
        ("advisory.publish_timeout", c.advisory.publish_timeout),
    ] {
        if d.is_zero() {
            bad(key, "must be longer than zero".into());
        }
    }
    let prefix = &c.advisory.subject_prefix;
    if prefix.is_empty()
        || prefix
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
    {
        bad(
            "advisory.subject_prefix",
            format!("`{prefix}` is not a literal subject (no wildcards, spaces or empty tokens)"),
        );
    }
    if !c.metrics.listen.is_empty() && c.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
        bad(
            "metrics.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:9464",
                c.metrics.listen
            ),
        );
    }
    if c.service.prefix.is_empty() || c.service.prefix.contains(['*', '>', ' ']) {
        bad(
            "service.prefix",
            format!("`{}` is not a literal subject", c.service.prefix),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        bad("log.level", format!("not a log level or filter: {e}"));
    }
    if c.advisory.queue_size == 0 {
        bad("advisory.queue_size", "must be at least 1".into());
    }
    if c.kick.max_attempts == 0 {
        bad("kick.max_attempts", "must be at least 1".into());
    }
    if c.kick.concurrency == 0 {
        bad("kick.concurrency", "must be at least 1".into());
    }
    if c.kick.give_up_for.is_some_and(|d| d.is_zero()) {
        bad(
            "kick.give_up_for",
            "must be longer than zero; leave it unset to keep giving up until `connwatch kick --forget`"
                .into(),
        );
    }
    for (list, matches) in [
        ("detect.ignore", &c.detect.ignore),
        ("kick.protect", &c.kick.protect),
        ("kick.only", &c.kick.only),
    ] {
        for (i, m) in matches.iter().enumerate() {
            if m.account.is_empty() {
                bad(&format!("{list}.{i}.account"), "must not be empty".into());
            }
        }
    }
    for (i, o) in c.detect.overrides.iter().enumerate() {
        if o.account.is_empty() {
            bad(
                &format!("detect.overrides.{i}.account"),
                "must not be empty".into(),
            );
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// Checks that a `.creds` file is readable and holds a user JWT and an nkey seed.
pub fn check_creds_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let has_jwt = text.contains("BEGIN NATS USER JWT");
    let has_seed = text.contains("BEGIN USER NKEY SEED");
    if !has_jwt || !has_seed {
        return Err(format!(
            "{} is not a NATS .creds file (it needs a `BEGIN NATS USER JWT` and a `BEGIN USER NKEY SEED` block)",
            path.display()
        ));
    }
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .ok_or_else(|| {
            format!(
                "{} holds no user nkey seed (a line starting with SU)",
                path.display()
            )
        })?;
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| format!("{}: invalid nkey seed: {e}", path.display()))?;
    Ok(())
}

/// Checks that a seed file is readable and holds a user nkey seed.
pub fn check_seed_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(format!(
            "{} does not hold a user nkey seed (SU...)",
            path.display()
        ));
    }
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| format!("{}: invalid nkey seed: {e}", path.display()))?;
    Ok(())
}

/// The credential files (`nats.creds`, `nats.nkey`) that users other than the owner can read.
pub fn loose_credential_files(c: &Config) -> Vec<(&'static str, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    [("nats.creds", &c.nats.creds), ("nats.nkey", &c.nats.nkey)]
        .into_iter()
        .filter_map(|(key, path)| {
            let path = path.as_ref()?;
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            (mode & 0o044 != 0).then(|| (key, path.clone()))
        })
        .collect()
}

/// The effective configuration as TOML, secrets redacted.
pub fn render_toml(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.sweep.interval, Duration::from_secs(30));
        assert_eq!(c.sweep.timeout, Duration::from_secs(5));
        assert_eq!(c.detect.max_connections_per_user, 100);
        assert_eq!(c.detect.idle_threshold, Duration::from_secs(300));
        assert_eq!(c.nats.name, "connwatch");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.toml",
            "[sweep]\ntimeout = \"2s\"\ninterval = \"10s\"\npage_size = 7\n",
        );
        let e = env(&[
            ("CONNWATCH_SWEEP__INTERVAL", "20s"),
            ("CONNWATCH_SWEEP__PAGE_SIZE", "9"),
        ]);
        let flags = Flags {
            timeout: Some(Duration::from_secs(3)),
            ..Flags::default()
        };
        let l = load(Some(&f), &e, flags).unwrap();
        assert_eq!(l.config.sweep.timeout, Duration::from_secs(3));
        assert_eq!(l.config.sweep.interval, Duration::from_secs(20));
        assert_eq!(l.config.sweep.page_size, 9);
        assert_eq!(l.source_of("sweep.timeout"), "command-line flags");
        assert_eq!(
            l.source_of("sweep.interval"),
            "environment variable CONNWATCH_SWEEP__INTERVAL"
        );
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "c.toml", "[sweep]\npage_size = \"many\"\n");
        let err = load(Some(&f), &[], Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sweep.page_size`"), "{text}");
        assert!(text.contains("c.toml"), "{text}");
    }

    #[test]
    fn wrong_type_from_env_names_the_variable() {
        let e = env(&[("CONNWATCH_SWEEP__TIMEOUT", "soon")]);
        let err = load(Some(Path::new("/dev/null")), &e, Flags::default()).unwrap_err();
        assert_eq!(err.0[0].key, "sweep.timeout");
        assert_eq!(
            err.0[0].source,
            "environment variable CONNWATCH_SWEEP__TIMEOUT"
        );
    }

    #[test]
    fn sweep_deadline_defaults_to_four_timeouts_and_is_never_shorter_than_one() {
        assert_eq!(SweepConfig::default().deadline(), Duration::from_secs(20));
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.toml",
            "[sweep]\ntimeout = \"5s\"\ndeadline = \"2s\"\nmax_connections_per_server = 0\n",
        );
        let err = load(Some(&f), &[], Flags::default()).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"sweep.deadline"), "{keys:?}");
        assert!(
            keys.contains(&"sweep.max_connections_per_server"),
            "{keys:?}"
        );
        let ok = write(dir.path(), "d.toml", "[sweep]\ndeadline = \"1m\"\n");
        let l = load(Some(&ok), &[], Flags::default()).unwrap();
        assert_eq!(l.config.sweep.deadline(), Duration::from_secs(60));
    }

    #[test]
    fn unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "c.toml", "[detect]\nmax_conns = 5\n");
        let err = load(Some(&f), &[], Flags::default()).unwrap_err();
        assert_eq!(err.0[0].key, "detect.max_conns");
        assert!(err.0[0].message.contains("unknown key"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(
            Some(Path::new("/nonexistent/c.toml")),
            &[],
            Flags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.toml"));
    }

    #[test]
    fn two_credential_kinds_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "c.toml", "[nats]\ntoken = \"t\"\n");
        let e = env(&[
            ("CONNWATCH_NATS__USER", "sys"),
            ("CONNWATCH_NATS__PASSWORD", "123"),
        ]);
        let err = load(Some(&f), &e, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.user"), "{err}");
        assert!(err.contains("nats.token"), "{err}");
        assert!(err.contains("CONNWATCH_NATS__USER"), "{err}");
    }

    #[test]
    fn missing_creds_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.toml",
            "[nats]\ncreds = \"/nope/sys.creds\"\n",
        );
        let err = load(Some(&f), &[], Flags::default()).unwrap_err();
        assert_eq!(err.0[0].key, "nats.creds");
        assert!(err.0[0].message.contains("/nope/sys.creds"));
    }

    #[test]
    fn malformed_creds_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let creds = write(dir.path(), "x.creds", "not a creds file");
        let f = write(
            dir.path(),
            "c.toml",
            &format!("[nats]\ncreds = {:?}\n", creds),
        );
        let err = load(Some(&f), &[], Flags::default()).unwrap_err();
        assert!(err.0[0].message.contains("not a NATS .creds file"));
    }

    #[test]
    fn secrets_are_redacted_when_rendered() {
        let mut c = Config::default();
        c.nats.user = Some("sys".into());
        c.nats.password = Some(Secret::new("hunter2"));
        let text = render_toml(&c);
        assert!(!text.contains("hunter2"));
        assert!(text.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn servers_accept_a_comma_separated_string() {
        let e = env(&[("CONNWATCH_NATS__SERVERS", "nats://a:4222, nats://b:4222")]);
        let l = load(Some(Path::new("/dev/null")), &e, Flags::default()).unwrap();
        assert_eq!(
            l.config.nats.servers,
            vec!["nats://a:4222", "nats://b:4222"]
        );
    }

    #[test]
    fn overrides_parse() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.toml",
            "[[detect.overrides]]\naccount = \"APP\"\nuser = \"svc\"\nmax_connections = 300\n",
        );
        let l = load(Some(&f), &[], Flags::default()).unwrap();
        assert_eq!(l.config.detect.overrides[0].max_connections, 300);
    }

    #[test]
    fn stray_env_vars_are_found() {
        let e = env(&[
            ("CONNWATCH_TIMEOUT", "1s"),
            ("CONNWATCH_SWEEP__TIMEOUT", "1s"),
        ]);
        assert_eq!(stray_env_vars(&e), vec!["CONNWATCH_TIMEOUT".to_string()]);
    }
}

#[cfg(test)]
mod shipped_file {
    use super::*;

    /// The shipped config file documents the defaults: loading it changes nothing.
    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let loaded = load(Some(&path), &[], Flags::default()).unwrap();
        let as_json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&loaded.config), as_json(&Config::default()));
    }

    /// Every key the configuration has appears in the shipped file and in README's reference.
    #[test]
    fn every_key_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::read_to_string(root.join(DEFAULT_CONFIG_PATH)).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let mut c = Config::default();
        c.nats.creds = Some("x".into());
        c.nats.user = Some("x".into());
        c.nats.password = Some(Secret::new("x"));
        c.nats.token = Some(Secret::new("x"));
        c.nats.nkey = Some("x".into());
        c.nats.tls = TlsConfig {
            ca: Some("x".into()),
            cert: Some("x".into()),
            key: Some("x".into()),
        };
        c.state.file = Some("x".into());
        c.metrics.listen = "127.0.0.1:9464".into();
        let value = serde_json::to_value(&c).unwrap();
        for (section, keys) in value.as_object().unwrap() {
            for (key, v) in keys.as_object().unwrap() {
                let mut names = vec![format!("{section}.{key}")];
                if let Some(inner) = v.as_object() {
                    names = inner
                        .keys()
                        .map(|k| format!("{section}.{key}.{k}"))
                        .collect();
                }
                for name in names {
                    let leaf = name.rsplit('.').next().unwrap();
                    assert!(
                        file.contains(&format!("{leaf} =")),
                        "{name} missing from {DEFAULT_CONFIG_PATH}"
                    );
                    assert!(
                        readme.contains(&format!("`{name}`")),
                        "{name} missing from README.md"
                    );
                }
            }
        }
    }
}
