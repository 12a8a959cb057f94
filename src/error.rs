//! A command's failure and its process exit code (README: exit codes), shared by the daemon
//! (`connwatch run`) and the other commands.

use crate::config::ConfigErrors;
use crate::nats::ConnectError;
use crate::sweep::SweepError;

/// Exit code for other runtime failures.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a part of `connwatch run` that could not start (metrics listener, service).
pub const EXIT_STARTUP: i32 = 6;

/// A command's failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// Could not connect, or not as a system user.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The sweep failed as a whole.
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// Tailing advisories failed.
    #[error("tail failed")]
    Tail(#[source] anyhow::Error),
    /// `connwatch top` could not use the terminal.
    #[error("the terminal failed")]
    Terminal(#[source] std::io::Error),
    /// A kick asked by hand is not allowed, or its target is unknown.
    #[error("{0}")]
    Refused(String),
    /// A part of `connwatch run` could not start; `setting` is the configuration key behind it.
    #[error("cannot start {what} (`{setting}` = {value})")]
    Startup {
        /// The configuration key.
        setting: &'static str,
        /// Its value.
        value: String,
        /// What could not start.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AppError {
    /// The process exit code (see README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Connect(e) => e.exit_code(),
            Self::Sweep(_) | Self::Tail(_) | Self::Terminal(_) | Self::Refused(_) => EXIT_FAILURE,
            Self::Startup { .. } => EXIT_STARTUP,
        }
    }
}
