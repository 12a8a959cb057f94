//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Flags;

/// Finds leaked and excessive NATS connections per user across a cluster.
#[derive(Debug, Parser)]
#[command(name = "connwatch", version, about)]
pub struct Cli {
    /// Config file [default: config/connwatch.toml when it exists]
    #[arg(long, global = true, env = "CONNWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Settings that override the config file and environment.
    #[command(flatten)]
    pub overrides: Overrides,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that override configuration keys.
#[derive(Debug, Args)]
pub struct Overrides {
    /// NATS server URL; repeat for several (overrides `nats.servers`)
    #[arg(short = 's', long = "server", global = true)]
    pub servers: Vec<String>,
    /// System-account .creds file (overrides `nats.creds`)
    #[arg(long, global = true)]
    pub creds: Option<PathBuf>,
    /// Servers that must answer for a complete sweep (overrides `sweep.expected_servers`)
    #[arg(long, global = true)]
    pub expected_servers: Option<usize>,
    /// How long to wait for replies, e.g. 5s (overrides `sweep.timeout`)
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

impl Overrides {
    /// The flags as a configuration layer.
    pub fn to_flags(&self) -> Flags {
        Flags {
            servers: self.servers.clone(),
            creds: self.creds.clone(),
            expected_servers: self.expected_servers,
            timeout: self.timeout,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sweep the cluster once and print every user's connections
    Report(ReportArgs),
    /// Sweep on a schedule, publish findings as advisories, until SIGTERM or SIGINT
    Run,
    /// Print advisories as they are published
    Tail(TailArgs),
    /// Kick leaked connections by hand: a preview unless --yes
    Kick(KickArgs),
    /// A live full-screen view of who holds the cluster's connections (keys: ? in the view)
    Top(TopArgs),
    /// Validate the configuration and print it, secrets redacted
    CheckConfig,
}

/// `connwatch kick` options: one connection by server id and cid, or every eligible
/// connection of one user (the `[kick]` policy without its caps); or, with `--forget`, clear
/// connwatch's memory of the clients it kicked (and gave up on) in `state.file`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["cid", "user", "all"])))]
pub struct KickArgs {
    /// Server id of the connection (from `report --format json` suspects, or /connz)
    #[arg(long, requires = "cid")]
    pub server_id: Option<String>,
    /// Connection id on that server
    #[arg(long, requires = "server_id", conflicts_with_all = ["account", "user"])]
    pub cid: Option<u64>,
    /// Account of the user whose eligible connections to kick (name or public key)
    #[arg(long, requires = "user")]
    pub account: Option<String>,
    /// The user whose eligible connections to kick (name or public nkey)
    #[arg(long, requires = "account")]
    pub user: Option<String>,
    /// Really kick; without it nothing is sent
    #[arg(long, conflicts_with = "forget")]
    pub yes: bool,
    /// Forget the kicked clients of --account/--user (or --all), so a client connwatch gave up
    /// on may be kicked again; edits `state.file` (stop `connwatch run` first: it rewrites the
    /// file every round)
    #[arg(long, conflicts_with_all = ["server_id", "cid"])]
    pub forget: bool,
    /// With --forget: forget every kicked client
    #[arg(long, requires = "forget", conflicts_with_all = ["account", "user"])]
    pub all: bool,
}

/// `connwatch top` options. It reads the census of a running `connwatch run` through its
/// service endpoints (`<service.prefix>.census` and `.findings`); with `--standalone` it runs
/// its own sweeps instead (a stop-gap until the service's census is live).
#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often to ask the service for its census, e.g. 1s
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// Sweep the cluster itself instead of reading a running `connwatch run` (one full sweep
    /// every --sweep-interval: mind the servers' load on a large cluster)
    #[arg(long)]
    pub standalone: bool,
    /// With --standalone: time between the starts of two sweeps
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "standalone")]
    pub sweep_interval: Duration,
}

/// `connwatch tail` options.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Output format: a readable line per advisory, or the JSON bodies one per line
    #[arg(long, value_enum, default_value_t = TailFormat::Text)]
    pub format: TailFormat,
    /// Only advisories of this type (e.g. excessive_user_connections); repeat for several
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only this account (name or public key)
    #[arg(long)]
    pub account: Option<String>,
    /// Only this user (name or public nkey)
    #[arg(long)]
    pub user: Option<String>,
}

/// `connwatch tail` output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TailFormat {
    /// One readable line per advisory.
    Text,
    /// The advisory JSON, one per line.
    Json,
}

/// `connwatch report` options.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show at most this many users, most connections first; 0 shows all
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only this account (name or public key)
    #[arg(long)]
    pub account: Option<String>,
    /// Only this user (name or public nkey)
    #[arg(long)]
    pub user: Option<String>,
}

/// Report output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for a person.
    Table,
    /// JSON for a program.
    Json,
}
