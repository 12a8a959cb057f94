//! Loading: the figment layers (defaults, file, environment, flags), where each key's value
//! came from, and errors that name both.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;

use super::validate::validate;
use super::{Config, DEFAULT_CONFIG_PATH, ENV_PREFIX};

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
    pub(super) fn one(key: &str, source: String, message: String) -> Self {
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
    for var in env_vars(env) {
        figment = figment.merge(var);
    }
    figment = figment.merge(flags);
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

/// One `CONNWATCH_<SECTION>__<KEY>` variable as a layer of its own, named after the variable,
/// so that an error about its key names it exactly.
///
/// Not figment's own `Env::prefixed(ENV_PREFIX).split("__")`: its errors could name the
/// variable (its metadata and the key rebuild it), but it reads only the process environment,
/// while [`load`] takes the environment as a value: the unit tests pass their own in parallel,
/// a reload reads it afresh, and tests/deploy_files.rs checks the compose file's environment
/// without setting it in the test process. figment's `Jail` would stand in for that only by
/// changing the whole process's environment and working directory.
struct EnvVar {
    name: String,
    /// The dotted key, e.g. `sweep.timeout`.
    key: String,
    value: String,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{ENV_SOURCE} {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Parsed as figment's `Env` parses values: TOML-like scalars and arrays, else a string.
        let value: Value = self.value.parse().expect("infallible");
        Serialized::defaults(figment::util::nest(&self.key, value)).data()
    }
}

/// The variables that set a key (`CONNWATCH_X__Y`), in the order given.
fn env_vars(env: &[(String, String)]) -> impl Iterator<Item = EnvVar> + '_ {
    env.iter().filter_map(|(name, value)| {
        let rest = name.strip_prefix(ENV_PREFIX)?;
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        (parts.len() > 1 && parts.iter().all(|p| !p.is_empty())).then(|| EnvVar {
            name: name.clone(),
            key: parts.join("."),
            value: value.clone(),
        })
    })
}

/// How a variable's layer is named: `environment variable CONNWATCH_…`.
const ENV_SOURCE: &str = "environment variable";

fn describe(md: &Metadata) -> String {
    if md.name.starts_with(ENV_SOURCE) {
        md.name.to_string()
    } else if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        format!("config file {}", path.display())
    } else if md.name == "command-line flags" {
        md.name.to_string()
    } else {
        "defaults".to_string()
    }
}

/// Where the value of `key` came from, for a person.
pub(super) fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(describe)
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
            Some(md) => describe(md),
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

/// Keys that were renamed: their old names read as the opposite of what they did, or their
/// meaning changed.
const RENAMED: [(&str, &str); 3] = [
    (
        "kick.allow",
        "renamed to `kick.protect` (the users never kicked); `kick.allow` is no longer read",
    ),
    (
        "kick.deny",
        "renamed to `kick.only` (when set, only these users may be kicked); `kick.deny` is no longer read",
    ),
    (
        "live.probe_interval",
        "renamed to `live.heartbeat_margin`: connwatch no longer asks every server for STATSZ this often, it \
         listens to their heartbeats and asks a server only when it has been quiet for its heartbeat period \
         (10 s) plus the margin; `live.probe_interval` is no longer read",
    ),
];

fn renamed(key: &str) -> Option<&'static str> {
    RENAMED.iter().find(|(old, _)| *old == key).map(|(_, m)| *m)
}
