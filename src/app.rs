//! The commands, wired from configuration to output. Errors carry their exit code
//! ([`crate::error`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::advisory::publisher::{Publisher, PublisherStats};
use crate::advisory::{Completeness, KickResult, KickRule};
use crate::census;
use crate::cli::{Format, KickArgs, ReportArgs, TailArgs};
use crate::config::{self, Config};
use crate::config::{names_match, KickConfig, UserMatch};
use crate::error::AppError;
use crate::kick::executor::{self, Batch};
use crate::kick::{self, KickInputs};
use crate::nats::{self, lookup};
use crate::report::{Filter, Report};
use crate::session::{self, Session};
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::sweep::Sweeper;

/// `connwatch report`: one sweep, printed.
pub async fn report(config: &Config, args: &ReportArgs) -> Result<String, AppError> {
    let session = session::open(config, None).await?;
    let state_file = config.state.file.as_deref();
    let mut state = State::load_or_default(state_file);
    let mut sweeper = Sweeper::new(session.system.clone(), &config.sweep);
    sweeper.collect(crate::sweep::Collecting::Census(
        crate::census::Aggregate::new(session.system_account.as_deref(), &config.detect),
    ));
    let snap: Snapshot = sweeper.sweep(&mut state.servers).await?;
    state.save_to(state_file);
    let census =
        crate::topology::census_of(&snap, session.system_account.as_deref(), &config.detect);
    let filter = Filter {
        account: args.account.clone(),
        user: args.user.clone(),
        top: args.top,
    };
    let report = Report::new(&snap, &census, &filter).with_caps(&config.enforce);
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
    let session = session::open(config, None).await?;
    let state_file = config.state.file.as_deref();
    let mut state = State::load_or_default(state_file);
    let (plans, snap) = match (&args.server_id, args.cid, &args.account, &args.user) {
        (Some(server_id), Some(cid), _, _) => {
            // Fail closed: without the system account and its own connection, connwatch
            // cannot tell which connections it must never kick.
            let own = own_identity(&session)?;
            let mut sweeper = Sweeper::new(session.system.clone(), &config.sweep);
            let snap = sweeper.sweep(&mut state.servers).await?;
            let timeout = config.sweep.timeout;
            let conn = lookup::connection(&session.system, server_id, cid, timeout)
                .await
                .map_err(|e| {
                    AppError::Refused(format!(
                        "cannot look up connection {cid} on server {server_id}: {e}"
                    ))
                })?
                .ok_or_else(|| {
                    AppError::Refused(format!("server {server_id} has no open connection {cid}"))
                })?;
            let system_account = session.system_account.as_deref();
            if let Some(why) = kick::refusal(&conn, &config.kick, system_account, Some(&own)) {
                return Err(AppError::Refused(format!(
                    "refusing to kick connection {cid}: {why}"
                )));
            }
            (vec![kick::KickPlan::of(&conn, Utc::now(), 0, 0)], snap)
        }
        (_, _, Some(account), Some(user)) => {
            match plan_user_kick(&session, config, &mut state, account, user).await? {
                UserKick::Eligible { plans, snap } => (plans, *snap),
                UserKick::Nothing(why) => {
                    return Ok(format!("nothing to kick for {account}/{user}: {why}\n"));
                }
            }
        }
        _ => unreachable!("clap requires --server-id with --cid, or --account with --user"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8}  {:<24} {:<16} {:>10} {:>10}  PATTERN",
        "SERVER", "CID", "NAME", "IP", "IDLE", "AGE"
    );
    for p in &plans {
        let secs =
            |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        let _ = writeln!(
            out,
            "{:<10} {:>8}  {:<24} {:<16} {:>10} {:>10}  {}",
            p.server,
            p.cid,
            p.name,
            p.ip,
            secs(p.idle),
            secs(p.age),
            p.pattern.map_or("by cid", |p| p.name())
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
    for done in send_kicks(&session, config, &mut state, &snap, plans).await? {
        let _ = writeln!(
            out,
            "{} {} on {}: {}",
            done.result,
            done.plan.cid,
            done.plan.server,
            done.error.unwrap_or_default()
        );
    }
    let _ = session.system.client().drain().await;
    Ok(out)
}

/// connwatch's own connection, or why it may not kick at all: without the system account and
/// its own connection it cannot tell which connections it must never kick (fail closed).
fn own_identity(session: &Session) -> Result<kick::Own, AppError> {
    if let Some(why) = session.kick_refusal() {
        return Err(AppError::Refused(format!("refusing to kick: {why}")));
    }
    Ok(session.own().expect("checked by kick_refusal"))
}

/// What a by-hand kick of one user would do.
#[derive(Debug)]
pub enum UserKick {
    /// The user's eligible connections, longest idle first, and the sweep they come from.
    Eligible {
        /// One plan per connection.
        plans: Vec<kick::KickPlan>,
        /// The complete sweep that found them (boxed: a snapshot is large).
        snap: Box<Snapshot>,
    },
    /// Nothing is eligible, and why, in words.
    Nothing(String),
}

/// The eligible connections of `account`/`user` for a by-hand kick (`connwatch kick --account
/// --user`, and `connwatch top`'s `k`): one complete sweep, then the whole `[kick]` policy
/// (`protect` and `only` included) without its caps. Refuses while connwatch does not know
/// its identity, and on a partial sweep (fail closed). Sends nothing.
pub async fn plan_user_kick(
    session: &Session,
    config: &Config,
    state: &mut State,
    account: &str,
    user: &str,
) -> Result<UserKick, AppError> {
    let own = own_identity(session)?;
    let system_account = session.system_account.as_deref();
    let mut sweeper = Sweeper::new(session.system.clone(), &config.sweep);
    let snap = sweeper.sweep(&mut state.servers).await?;
    if snap.partial() {
        return Err(AppError::Refused(format!(
            "the sweep is partial (missing: {}): connwatch never kicks on partial data",
            snap.missing.join(", ")
        )));
    }
    let census = crate::topology::census_of(&snap, system_account, &config.detect);
    let named = UserMatch {
        account: account.to_string(),
        user: Some(user.to_string()),
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
        used_once_within: config.detect.used_once_within,
    });
    plans.retain(|p| named.matches(&p.account, &p.account_name, &p.user, &p.user_name));
    if !plans.is_empty() {
        return Ok(UserKick::Eligible {
            plans,
            snap: Box::new(snap),
        });
    }
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
    Ok(UserKick::Nothing(why_nothing(
        u, &cfg, given_up, account, user,
    )))
}

/// One kick sent by hand, and what became of it.
#[derive(Debug, Clone)]
pub struct KickDone {
    /// The connection.
    pub plan: kick::KickPlan,
    /// `kicked`, `already_gone` or `failed`.
    pub result: KickResult,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Kicks `plans` by hand (`rule: manual`): each is audited with `connection_kicked`,
/// remembered in the kick memory, and the state saved. With `advisory.jetstream`, nothing is
/// kicked unless the `[jetstream]` connection and the advisory stream are there for the audits.
pub async fn send_kicks(
    session: &Session,
    config: &Config,
    state: &mut State,
    snap: &Snapshot,
    plans: Vec<kick::KickPlan>,
) -> Result<Vec<KickDone>, AppError> {
    let stats = Arc::new(PublisherStats::default());
    let audits = crate::jetstream::advisory_client(config, None).await?;
    let audits = audits.unwrap_or_else(|| session.system.client().clone());
    let publisher = Publisher::spawn(audits, &config.advisory, stats);
    let batch = Batch {
        system: &session.system,
        timeout: config.kick.timeout,
        concurrency: config.kick.concurrency,
        dry_run: false,
        rule: KickRule::Manual,
        prefix: &config.advisory.subject_prefix,
        sweep: &Completeness::of(snap),
        stop: &CancellationToken::new(),
    };
    let executed = executor::execute(&batch, plans, &mut state.kicked, None).await;
    let done = executed
        .done
        .into_iter()
        .map(|(plan, o)| KickDone {
            plan,
            result: o.as_ref().map_or(KickResult::WouldKick, |o| o.result()),
            error: o.as_ref().and_then(|o| o.error()).map(ToString::to_string),
        })
        .collect();
    for a in executed.audits {
        publisher.enqueue(a);
    }
    state.save_to(config.state.file.as_deref());
    let left = publisher.shutdown(config.advisory.publish_timeout).await;
    if left > 0 {
        warn!(
            unpublished = left,
            "audit advisories could not be published"
        );
    }
    Ok(done)
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
        "none of its connections is a leak suspect (no messages ever, or used once right after connecting) idle ≥ {} and older than {}",
        humantime::format_duration(cfg.min_idle),
        humantime::format_duration(cfg.min_age)
    )
}

/// `connwatch kick --forget`: removes kicked clients from the kick memory in `state.file`, so
/// a client connwatch gave up on may be kicked again. `connwatch run` reads the file only at
/// start and rewrites it every round: it must be stopped first, and started after (refused
/// while it holds the file's lock).
fn forget(config: &Config, args: &KickArgs) -> Result<String, AppError> {
    let Some(path) = config.state.file.as_deref() else {
        return Err(AppError::Refused(
            "nothing to forget: `state.file` is not set, so connwatch keeps no kick memory between runs (a running `connwatch run` keeps it in memory until it stops)"
                .into(),
        ));
    };
    // Read, change and write under the file's lock: refused while `connwatch run` holds it (it
    // would overwrite the change with what it holds in memory).
    let _lock = crate::state::StateLock::acquire(path, "connwatch kick --forget").map_err(|e| {
        AppError::Refused(format!(
            "cannot change the state file (`state.file`): {e}: stop `connwatch run` first (it rewrites the file every round), forget, then start it again"
        ))
    })?;
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
