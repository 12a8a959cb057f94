//! The commands, wired from configuration to output. Errors carry their exit code.

use std::time::Duration;

use tracing::warn;

use crate::census;
use tokio_util::sync::CancellationToken;

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use chrono::Utc;

use crate::advisory::publisher::{Publisher, PublisherStats};
use crate::advisory::{self, Completeness};
use crate::cli::{Format, KickArgs, ReportArgs, TailArgs};
use crate::config::{self, Config, ConfigErrors};
use crate::config::{names_match, KickConfig, UserMatch};
use crate::kick::executor::Outcome;
use crate::kick::{self, KickInputs, Own};
use crate::nats::{self, ConnectError, RequestError, System};
use crate::report::{Filter, Report};
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::sweep::{self, SweepError, Sweeper};

/// Exit code for configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for other runtime failures.
pub const EXIT_FAILURE: i32 = 1;
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
            Self::Sweep(_) | Self::Tail(_) | Self::Refused(_) => EXIT_FAILURE,
            Self::Startup { .. } => EXIT_STARTUP,
        }
    }
}

/// Why connwatch does not know the system account: neither source answered with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the system account is unknown (USER.INFO: {user_info}; VARZ: {varz})")]
pub struct IdentityUnknown {
    /// What `$SYS.REQ.USER.INFO` gave instead.
    pub user_info: String,
    /// What `$SYS.REQ.SERVER.PING.VARZ` gave instead.
    pub varz: String,
}

/// A client connected as a system-account user, and what connwatch knows of who it is.
pub struct Session {
    /// System requests over the client.
    pub system: System,
    /// The system account (name or public key); `None` while unknown, and then nothing is
    /// kicked (see [`Session::kick_refusal`]).
    pub system_account: Option<String>,
    /// Why the system account is unknown, when it is.
    pub identity_error: Option<IdentityUnknown>,
}

impl Session {
    /// connwatch's own connection, from the server's INFO; `None` when the client has none.
    pub fn own(&self) -> Option<Own> {
        let info = self.system.client().server_info();
        (info.client_id != 0 && !info.server_id.is_empty()).then(|| Own {
            server_id: info.server_id.clone(),
            cid: info.client_id,
        })
    }

    /// Why nothing may be kicked now: connwatch does not know the system account or its own
    /// connection, so it cannot protect them (fail closed). `None` when kicking may go ahead.
    pub fn kick_refusal(&self) -> Option<String> {
        if let Some(e) = &self.identity_error {
            return Some(format!(
                "{e}: connwatch cannot protect system-account connections, so it kicks nothing"
            ));
        }
        if self.system_account.is_none() {
            return Some("the system account is unknown: connwatch kicks nothing".into());
        }
        if self.own().is_none() {
            return Some(
                "connwatch's own connection is unknown (no server INFO): connwatch kicks nothing"
                    .into(),
            );
        }
        None
    }

    /// Asks again for the system account while it is unknown (every round).
    pub async fn refresh_identity(&mut self, timeout: Duration) {
        if self.system_account.is_some() {
            return;
        }
        let (_, identity) = identity(&self.system, timeout).await;
        match identity {
            Ok(account) => {
                tracing::info!(system_account = %account, "system account now known");
                self.system_account = Some(account);
                self.identity_error = None;
            }
            Err(e) => self.identity_error = Some(e),
        }
    }
}

/// The user connwatch is (from USER.INFO, empty when unknown) and the system account: from
/// `$SYS.REQ.USER.INFO`, else from VARZ's `system_account`. VARZ is asked at the same time, so
/// a denied USER.INFO costs one timeout, and dropped as soon as USER.INFO answers.
async fn identity(system: &System, timeout: Duration) -> (String, Result<String, IdentityUnknown>) {
    let me = system.user_info(timeout);
    let varz = sweep::varz_system_account(system, timeout);
    tokio::pin!(me, varz);
    let mut varz_done = None;
    let me = loop {
        tokio::select! {
            m = &mut me => break m,
            v = &mut varz, if varz_done.is_none() => varz_done = Some(v),
        }
    };
    let (user, user_info) = match me {
        Ok(m) if !m.account.is_empty() => return (m.user, Ok(m.account)),
        Ok(m) => (m.user, "no account in the reply".to_string()),
        Err(e) => (String::new(), e.to_string()),
    };
    let varz = match varz_done {
        Some(v) => v,
        None => varz.await,
    };
    let varz = match varz {
        Ok(Some(account)) => return (user, Ok(account)),
        Ok(None) => "no server named its system_account".to_string(),
        Err(e) => e.to_string(),
    };
    let e = IdentityUnknown { user_info, varz };
    warn!(error = %e, "identity unknown: no kicks until it is known");
    (user, Err(e))
}

/// Connects and checks that the user can send system requests.
/// `reconnects`, when given, counts the client's reconnects (see [`nats::connect`]).
pub async fn open_session(
    config: &Config,
    reconnects: Option<Counter>,
) -> Result<Session, ConnectError> {
    let client = nats::connect(&config.nats, reconnects).await?;
    let system = System::new(client);
    let timeout = config.sweep.timeout.min(Duration::from_secs(5));
    let (user, identity) = identity(&system, timeout).await;
    let account = identity.as_ref().cloned().unwrap_or_default();
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
    let (system_account, identity_error) = match identity {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Session {
        system,
        system_account,
        identity_error,
    })
}

/// `connwatch report`: one sweep, printed.
pub async fn report(config: &Config, args: &ReportArgs) -> Result<String, AppError> {
    let session = open_session(config, None).await?;
    let state_file = config.state.file.as_deref();
    let mut state = State::load_or_default(state_file);
    let mut sweeper = Sweeper::new(session.system.clone(), &config.sweep, state.servers.clone());
    let snap: Snapshot = sweeper.sweep().await?;
    state.servers = sweeper.known().clone();
    state.save_to(state_file);
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

/// `connwatch tail`: advisories as they are published, until `shutdown`.
pub async fn tail(
    config: &Config,
    args: &TailArgs,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let client = nats::connect(&config.nats, None).await?;
    crate::tail::run(
        client,
        &config.advisory.subject_prefix,
        args,
        shutdown,
        std::io::stdout(),
    )
    .await
    .map_err(AppError::Tail)
}

/// `connwatch kick`: shows what would be kicked, and kicks it with `--yes`; with `--forget`,
/// clears the kick memory instead.
pub async fn kick(config: &Config, args: &KickArgs) -> Result<String, AppError> {
    if args.forget {
        return forget(config, args);
    }
    let session = open_session(config, None).await?;
    // Fail closed: without the system account and its own connection, connwatch cannot tell
    // which connections it must never kick.
    if let Some(why) = session.kick_refusal() {
        return Err(AppError::Refused(format!("refusing to kick: {why}")));
    }
    let own = session.own().expect("checked by kick_refusal");
    let system_account = session.system_account.as_deref();
    let state_file = config.state.file.as_deref();
    let mut state = State::load_or_default(state_file);
    let mut sweeper = Sweeper::new(session.system.clone(), &config.sweep, state.servers.clone());
    let snap = sweeper.sweep().await?;
    state.servers = sweeper.known().clone();
    let plans = match (&args.server_id, args.cid, &args.account, &args.user) {
        (Some(server_id), Some(cid), _, _) => {
            let timeout = config.sweep.timeout;
            let conn = sweep::connection(&session.system, server_id, cid, timeout)
                .await
                .map_err(|e| {
                    AppError::Refused(format!(
                        "cannot look up connection {cid} on server {server_id}: {e}"
                    ))
                })?
                .ok_or_else(|| {
                    AppError::Refused(format!("server {server_id} has no open connection {cid}"))
                })?;
            if let Some(why) = kick::refusal(&conn, &config.kick, system_account, Some(&own)) {
                return Err(AppError::Refused(format!(
                    "refusing to kick connection {cid}: {why}"
                )));
            }
            vec![kick::KickPlan::of(&conn, Utc::now(), 0, 0)]
        }
        (_, _, Some(account), Some(user)) => {
            if snap.partial() {
                return Err(AppError::Refused(format!(
                    "the sweep is partial (missing: {}): connwatch never kicks on partial data",
                    snap.missing.join(", ")
                )));
            }
            let census = census::build(&snap.connections, system_account, &config.detect);
            let named = UserMatch {
                account: account.clone(),
                user: Some(user.clone()),
            };
            // The whole policy, `protect` and `only` included, without the caps.
            let cfg = KickConfig {
                max_per_sweep: usize::MAX,
                max_per_user: usize::MAX,
                ..config.kick.clone()
            };
            let mut plans = kick::plan(&KickInputs {
                connections: &snap.connections,
                census: &census,
                complete: true,
                cfg: &cfg,
                system_account,
                own: Some(&own),
                kicked: &state.kicked,
                now: snap.started.unwrap_or_else(Utc::now),
            });
            plans.retain(|p| named.matches(&p.account, &p.account_name, &p.user, &p.user_name));
            if plans.is_empty() {
                let u = census.users.iter().find(|u| {
                    names_match(account, &u.account, &u.account_name)
                        && names_match(user, &u.user, &u.user_name)
                });
                let given_up = state
                    .kicked
                    .clients
                    .values()
                    .filter(|r| {
                        r.given_up(cfg.max_attempts)
                            && names_match(account, &r.client.account, &r.account_name)
                            && names_match(user, &r.client.user, &r.user_name)
                    })
                    .count();
                let why = why_nothing(u, &cfg, given_up, account, user);
                return Ok(format!("nothing to kick for {account}/{user}: {why}\n"));
            }
            plans
        }
        _ => unreachable!("clap requires --server-id with --cid, or --account with --user"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8}  {:<24} {:<16} {:>10} {:>10}",
        "SERVER", "CID", "NAME", "IP", "IDLE", "AGE"
    );
    for p in &plans {
        let secs =
            |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        let _ = writeln!(
            out,
            "{:<10} {:>8}  {:<24} {:<16} {:>10} {:>10}",
            p.server,
            p.cid,
            p.name,
            p.ip,
            secs(p.idle),
            secs(p.age)
        );
    }
    if !args.yes {
        let _ = writeln!(
            out,
            "{} connection(s) would be kicked; run again with --yes to kick them",
            plans.len()
        );
        return Ok(out);
    }
    let outcomes = kick::executor::kick_all(
        &session.system,
        &plans,
        config.kick.timeout,
        config.kick.concurrency,
    )
    .await;
    let stats = Arc::new(PublisherStats::default());
    let publisher = Publisher::spawn(session.system.client().clone(), &config.advisory, stats);
    let sweep = Completeness::of(&snap);
    let mut sent = Vec::new();
    for (p, o) in plans.iter().zip(&outcomes) {
        let error = match o {
            Outcome::Failed(e) => Some(e.as_str()),
            _ => None,
        };
        if *o == Outcome::Kicked {
            sent.push(p.clone());
        }
        let _ = writeln!(
            out,
            "{} {} on {}: {}",
            o.result(),
            p.cid,
            p.server,
            error.unwrap_or("")
        );
        publisher.enqueue(advisory::kicked(
            &config.advisory.subject_prefix,
            p,
            "manual",
            o.result(),
            error,
            &sweep,
            Utc::now(),
        ));
    }
    state.kicked.record(&sent, Utc::now());
    state.save_to(state_file);
    let left = publisher.shutdown(config.advisory.publish_timeout).await;
    if left > 0 {
        warn!(
            unpublished = left,
            "audit advisories could not be published"
        );
    }
    let _ = session.system.client().drain().await;
    Ok(out)
}

/// Why the by-hand kick of `account`/`user` found nothing to kick, in words.
fn why_nothing(
    u: Option<&census::UserCensus>,
    cfg: &KickConfig,
    given_up: usize,
    account: &str,
    user: &str,
) -> String {
    let Some(u) = u else {
        return "it has no connections".into();
    };
    if u.system {
        return "it is in the system account".into();
    }
    if let Some(why) = kick::policy_refusal(cfg, &u.account, &u.account_name, &u.user, &u.user_name)
    {
        return why.into();
    }
    if !u.over_threshold {
        return format!(
            "it is not over its threshold ({} ≤ {})",
            u.connections, u.threshold
        );
    }
    if given_up > 0 {
        return format!(
            "connwatch gave up on {given_up} of its clients (they came back after every kick); `connwatch kick --forget --account {account} --user {user}` clears that"
        );
    }
    format!(
        "none of its connections is idle ≥ {} with no messages and older than {}",
        humantime::format_duration(cfg.min_idle),
        humantime::format_duration(cfg.min_age)
    )
}

/// `connwatch kick --forget`: removes kicked clients from the kick memory in `state.file`, so
/// a client connwatch gave up on may be kicked again. `connwatch run` reads the file only at
/// start and rewrites it every round: it must be stopped first, and started after.
fn forget(config: &Config, args: &KickArgs) -> Result<String, AppError> {
    let Some(path) = config.state.file.as_deref() else {
        return Err(AppError::Refused(
            "nothing to forget: `state.file` is not set, so connwatch keeps no kick memory between runs (a running `connwatch run` keeps it in memory until it stops)"
                .into(),
        ));
    };
    // Never replace an unreadable file with an empty one: that would drop everything else.
    let mut state = State::load(path).map_err(|e| {
        AppError::Refused(format!(
            "cannot read the state file {} (`state.file`): {e}",
            path.display()
        ))
    })?;
    let (what, gone) = match (&args.account, &args.user) {
        (Some(account), Some(user)) => (
            format!("{account}/{user}"),
            state.kicked.forget(account, user),
        ),
        _ => ("any user".to_string(), state.kicked.forget_all()),
    };
    let mut out = String::new();
    if gone.is_empty() {
        let _ = writeln!(
            out,
            "no kicked client of {what} in {}: nothing to forget",
            path.display()
        );
        return Ok(out);
    }
    state.save(path).map_err(|e| {
        AppError::Refused(format!(
            "cannot write the state file {} (`state.file`): {e}",
            path.display()
        ))
    })?;
    for r in &gone {
        let _ = writeln!(
            out,
            "forgot {}/{} name \"{}\" at {}: {} kicks, {} returns{}",
            r.client.account,
            r.client.user,
            r.client.name,
            r.client.ip,
            r.kicks,
            r.returns,
            if r.given_up(config.kick.max_attempts) {
                " (was given up on)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "{} client(s) forgotten in {}; a `connwatch run` started from now on may kick them again (one running while this ran rewrites the file: stop it, forget, start it)",
        gone.len(),
        path.display()
    );
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
