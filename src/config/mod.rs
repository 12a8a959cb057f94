//! Configuration: defaults → TOML file → `CONNWATCH_<SECTION>__<KEY>` environment → flags.
//!
//! Every error names the key and where its value came from, so an operator can fix it in one go.
//!
//! - this file: the settings, section by section, with their defaults;
//! - `load`: the layers (figment), the provenance of each key, the errors;
//! - `validate`: the checks beyond types;
//! - `secrets`: the redacted secret type and the credential-file checks.

mod enforce;
mod jetstream;
mod load;
mod secrets;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub use enforce::{CapRule, EnforceConfig};
pub use jetstream::{HaConfig, JetStreamConfig};
pub use load::{load, stray_env_vars, ConfigError, ConfigErrors, Flags, Loaded};
pub use secrets::{check_creds_file, check_seed_file, loose_credential_files, Secret};

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
    /// The live census: connect and disconnect events between sweeps.
    pub live: LiveConfig,
    /// A second connection, to a JetStream-enabled account; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
    /// Several replicas, one acting under a lease (needs `[jetstream]`).
    pub ha: HaConfig,
    /// Per-user connection caps, enforced from the live census: off unless enabled.
    pub enforce: EnforceConfig,
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
    /// Time between the starts of two sweeps (`connwatch run`) without the live census; with
    /// it, the pace of the sweeps while its view is not complete (else
    /// `live.reconcile_interval`), and of the growth samples.
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
    /// A long-lived sweeper asks the PING for more once a sweep saw a server with more (the
    /// most one server held, plus headroom), so each list is read once.
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
    /// The most servers asked for their connections at once. A cluster known to have at most
    /// this many servers is asked with one PING (every server answers at once: the fastest);
    /// a bigger one, or one whose size is not known yet, is asked with directed requests, this
    /// many servers at a time (ids from a STATSZ ping), so the reply bytes in flight do not
    /// grow with the number of servers. 0: no bound, every sweep is one PING to all servers
    /// (then 8 at a time for the servers whose first reply did not hold their whole list).
    pub max_in_flight: usize,
    /// How the servers send their connection lists: `snappy` (compressed, about 8× fewer bytes
    /// in flight and held while they arrive; connwatch parses each as it decompresses it, a
    /// block at a time) or `none`.
    pub compression: Compression,
}

/// `sweep.compression`: the `Accept-Encoding` of a sweep's CONNZ requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain JSON.
    None,
    /// Snappy (framed), decompressed by connwatch.
    Snappy,
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
            max_in_flight: 8,
            compression: Compression::Snappy,
        }
    }
}

/// `[detect]`: thresholds for findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// A user holding more connections than this, cluster-wide, is excessive.
    pub max_connections_per_user: u64,
    /// A leak suspect is idle at least this long, and either never carried a message
    /// (`zero_msgs`) or did all its traffic right after connecting (`used_once`).
    #[serde(with = "humantime_serde")]
    pub idle_threshold: Duration,
    /// A connection idle at least `idle_threshold` whose messages all came within this of its
    /// start was used once and left (`used_once`), when its process holds three or more such
    /// connections of its user.
    #[serde(with = "humantime_serde")]
    pub used_once_within: Duration,
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
    /// A server holding more than this many times its cluster's average connections is a
    /// hotspot (clusters of at least 2 servers).
    pub hotspot_ratio: f64,
    /// Connections a server must hold to be a hotspot, so an idle cluster does not fire.
    pub hotspot_min: u64,
    /// An account with more than this share of its connections on one server is imbalanced.
    pub imbalance_share: f64,
    /// Connections an account must hold, cluster-wide, to be checked for imbalance.
    pub imbalance_min: u64,
    /// How far back growth looks (complete sweeps only).
    #[serde(with = "humantime_serde")]
    pub growth_window: Duration,
    /// A user projected to cross its threshold or its account's limit within this is reported.
    #[serde(with = "humantime_serde")]
    pub growth_horizon: Duration,
    /// Slower growth than this many connections per hour is not reported.
    pub growth_min_per_hour: f64,
    /// Growth is reported only from complete sweeps spanning at least this long.
    #[serde(with = "humantime_serde")]
    pub growth_min_span: Duration,
    /// Growth is reported only when the user gained at least this many connections over the
    /// sweeps it rests on.
    pub growth_min_increase: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: 100,
            idle_threshold: Duration::from_secs(300),
            used_once_within: Duration::from_secs(30),
            max_suspects_per_user: 20,
            overrides: Vec::new(),
            ignore: Vec::new(),
            account_limits: BTreeMap::new(),
            account_pressure: 0.9,
            server_pressure: 0.8,
            hotspot_ratio: 2.0,
            hotspot_min: 100,
            imbalance_share: 0.7,
            imbalance_min: 100,
            growth_window: Duration::from_secs(3600),
            growth_horizon: Duration::from_secs(24 * 3600),
            growth_min_per_hour: 10.0,
            growth_min_span: Duration::from_secs(600),
            growth_min_increase: 10,
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
        account_name: &Option<impl AsRef<str>>,
        user: &str,
        user_name: &Option<impl AsRef<str>>,
    ) -> bool {
        names_match(&self.account, account, account_name)
            && self
                .user
                .as_deref()
                .is_none_or(|u| names_match(u, user, user_name))
    }
}

/// `want` names the thing with key `key` or human name `name`.
pub fn names_match(want: &str, key: &str, name: &Option<impl AsRef<str>>) -> bool {
    want == key || name.as_ref().map(AsRef::as_ref) == Some(want)
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
    /// Publish into the stream `stream` through the `[jetstream]` connection, each advisory
    /// acknowledged and de-duplicated by `Nats-Msg-Id` (its `id`). Needs `[jetstream]`.
    pub jetstream: bool,
    /// The stream that stores the advisories (`advisory.jetstream`): created when absent
    /// (subjects `<subject_prefix>.>`), else checked to capture them.
    pub stream: String,
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
            stream: "CONNWATCH_ADVISORIES".into(),
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
/// a leak suspect (`zero_msgs` or `used_once`, see `census::classify`) idle at least
/// `min_idle`, older than `min_age`, its user is not in
/// `protect` (and is in `only` when that is set), and it is neither the system account's,
/// connwatch's own, nor a leafnode (unless `leafnodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KickConfig {
    /// Kick at all. Off by default.
    pub enabled: bool,
    /// Decide and announce every kick, but never send one. On by default: set it to false to act.
    pub dry_run: bool,
    /// A connection must be a leak suspect idle this long to be kicked.
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

/// `[live]`: the live census, kept current from the servers' connect and disconnect events;
/// full sweeps only reconcile it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Follow `$SYS.ACCOUNT.*.CONNECT` / `DISCONNECT` and keep the census current between
    /// sweeps; `false`: sweeps alone, every `sweep.interval`.
    pub enabled: bool,
    /// With the live view complete, time between the starts of two full (reconciling) sweeps.
    /// While it is not (a gap: a server silent, restarted or new, connwatch's own reconnect,
    /// a slow consumer, a count mismatch), a sweep starts at once and then every
    /// `sweep.interval` until one completes.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Least time between two evaluations of the live census (rules, lifecycle, metrics,
    /// the `census` endpoint): under churn the census is rebuilt at most this often.
    #[serde(with = "humantime_serde")]
    pub evaluate_every: Duration,
    /// Every server publishes its STATSZ as a heartbeat every 10 s; connwatch listens. A server
    /// quiet for longer than its heartbeat period plus this margin is asked directly
    /// (`$SYS.REQ.SERVER.<id>.STATSZ`, waiting at most this long or `sweep.timeout`), and only
    /// if it does not answer is it silent (a gap). A heartbeat from a server id the view does
    /// not hold (a new or restarted server) is a gap at once. The margin delays only the notice
    /// of a silent server: a live round that would resolve a finding asks every server first.
    /// (It replaced `probe_interval`, which is refused.)
    #[serde(with = "humantime_serde")]
    pub heartbeat_margin: Duration,
    /// Connect + disconnect events a second, averaged over a minute, above which following
    /// the events would cost the servers more than sweeping: connwatch stops following them
    /// (sweeps every `sweep.interval`, each round from its sweep alone; no cap acts) and tries
    /// again every `live.reconcile_interval`. 0: no limit.
    pub max_event_rate: u64,
    /// `connections_refused`: refusals are counted over this window; the finding fires with
    /// the first (or the tenth authentication failure in one window), and resolves once a
    /// whole window passed without one.
    #[serde(with = "humantime_serde")]
    pub refused_window: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reconcile_interval: Duration::from_secs(900),
            evaluate_every: Duration::from_millis(200),
            heartbeat_margin: Duration::from_secs(5),
            max_event_rate: 200,
            refused_window: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// The time between two full sweeps while nothing is amiss: `live.reconcile_interval` with
    /// the live census on, else `sweep.interval` (what `/readyz` allows 3 of).
    pub fn sweep_cadence(&self) -> Duration {
        if self.live.enabled {
            self.live.reconcile_interval
        } else {
            self.sweep.interval
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

/// The effective configuration as TOML, secrets redacted.
pub fn render_toml(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
