//! The commands, wired from configuration to output. Errors carry their exit code.

use std::time::Duration;

use tracing::warn;

use crate::census;
use crate::cli::{Format, ReportArgs};
use crate::config::{self, Config, ConfigErrors};
use crate::nats::{self, ConnectError, RequestError, System};
use crate::report::{Filter, Report};
use crate::snapshot::Snapshot;
use crate::sweep::{SweepError, Sweeper};

/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for other runtime failures.
pub const EXIT_FAILURE: i32 = 1;

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
}

impl AppError {
    /// The process exit code (see README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Connect(e) => e.exit_code(),
            Self::Sweep(_) => EXIT_FAILURE,
        }
    }
}

/// A client connected as a system-account user, and that account's name.
pub struct Session {
    /// System requests over the client.
    pub system: System,
    /// The system account (name or public key).
    pub system_account: Option<String>,
}

/// Connects and checks that the user can send system requests.
pub async fn open_session(config: &Config) -> Result<Session, ConnectError> {
    let client = nats::connect(&config.nats).await?;
    let system = System::new(client);
    let timeout = config.sweep.timeout.min(Duration::from_secs(5));
    let me = system.user_info(timeout).await.map_err(|e| {
        warn!(error = %e, "user info request failed");
        e
    });
    let (user, account) = me.map(|m| (m.user, m.account)).unwrap_or_default();
    // A user outside the system account gets "no responders" here.
    match system
        .scatter(nats::PING_STATSZ, Default::default(), timeout, |_| true)
        .await
    {
        Err(RequestError::NoResponders) => {
            return Err(ConnectError::NotSystemAccount { user, account });
        }
        Ok(replies) if replies.is_empty() => {
            return Err(ConnectError::NotSystemAccount { user, account });
        }
        _ => {}
    }
    let system_account = Some(account).filter(|a| !a.is_empty());
    Ok(Session {
        system,
        system_account,
    })
}

/// `connwatch report`: one sweep, printed.
pub async fn report(config: &Config, args: &ReportArgs) -> Result<String, AppError> {
    let session = open_session(config).await?;
    let mut sweeper = Sweeper::new(session.system.clone(), config);
    let snap: Snapshot = sweeper.sweep().await?;
    let census = census::build(
        &snap.connections,
        session.system_account.as_deref(),
        &config.detect,
    );
    let filter = Filter {
        account: args.account.clone(),
        user: args.user.clone(),
        top: args.top,
    };
    let report = Report::new(&snap, &census, &filter);
    let out = match args.format {
        Format::Json => report.to_json() + "\n",
        Format::Table => report.to_table(),
    };
    let _ = session.system.client().drain().await;
    Ok(out)
}

/// `connwatch check-config`: the effective configuration, secrets redacted.
pub fn check_config(loaded: &config::Loaded) -> String {
    let source = match &loaded.file {
        Some(f) => format!("# config file: {}\n", f.display()),
        None => "# no config file: defaults, environment and flags\n".into(),
    };
    source + &config::render_toml(&loaded.config)
}
