use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use connwatch::app;
use connwatch::cli::{Cli, Command, LogFormat};
use connwatch::config::{self, Loaded};
use connwatch::error::AppError;
use connwatch::metrics::Metrics;
use connwatch::service::{self, Reload};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Logs to stderr: `RUST_LOG` when set, else `log.level`; colour only on a terminal. With
/// `screen` (a full-screen command) nothing is logged while stderr is that terminal: log lines
/// would tear the view; redirect stderr (`2>top.log`) to keep them.
fn init_tracing(format: LogFormat, level: &str, screen: bool) {
    if screen && std::io::stderr().is_terminal() {
        return;
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},async_nats=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Prints an error with its sources, one per line.
fn fail(err: &AppError) -> ExitCode {
    let mut text = format!("error: {err}");
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(s) = source {
        let line = s.to_string();
        // Libraries often repeat their source in their own message: print each text once.
        if !last.contains(&line) {
            text.push_str(&format!("\n  caused by: {line}"));
        }
        last = line;
        source = s.source();
    }
    eprintln!("{text}");
    ExitCode::from(err.exit_code() as u8)
}

/// A token cancelled by the first SIGTERM or SIGINT.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Reloads on SIGHUP: the same file, the environment as it is then, the same flags.
fn reload_on_sighup(cli: &Cli) -> Reload {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        while hup.recv().await.is_some() {
            info!("SIGHUP: reload requested");
            let _ = tx.try_send(());
        }
    });
    let (path, flags) = (cli.config.clone(), cli.overrides.to_flags());
    Reload {
        requests: rx,
        load: Box::new(move || {
            let env: Vec<(String, String)> = std::env::vars().collect();
            config::load(path.as_deref(), &env, flags.clone()).map(|l| l.config)
        }),
    }
}

/// Warnings about the environment and the credential files, once logging is up.
fn warn_about(loaded: &Loaded, env: &[(String, String)]) {
    for var in config::stray_env_vars(env) {
        warn!(var = %var, "ignoring environment variable: use CONNWATCH_<SECTION>__<KEY>");
    }
    for (key, path) in config::loose_credential_files(&loaded.config) {
        warn!(key, file = %path.display(), "credentials file is readable by others: chmod 600 it");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    connwatch::alloc::tune();
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match config::load(cli.config.as_deref(), &env, cli.overrides.to_flags()) {
        Ok(l) => l,
        Err(e) => return fail(&AppError::Config(e)),
    };
    let screen = matches!(cli.command, Command::Top(_));
    init_tracing(cli.log_format, &loaded.config.log.level, screen);
    warn_about(&loaded, &env);
    let result = match &cli.command {
        Command::CheckConfig => Ok(app::check_config(&loaded)),
        Command::Report(args) => app::report(&loaded.config, args).await,
        Command::Run => {
            let metrics = Arc::new(Metrics::new());
            let reload = Some(reload_on_sighup(&cli));
            service::run(loaded.config.clone(), shutdown_on_signal(), reload, metrics)
                .await
                .map(|()| String::new())
        }
        Command::Kick(args) => app::kick(&loaded.config, args).await,
        Command::Top(args) => connwatch::top::run(&loaded.config, args, shutdown_on_signal())
            .await
            .map(|()| String::new()),
        Command::Tail(args) => app::tail(&loaded.config, args, shutdown_on_signal())
            .await
            .map(|()| String::new()),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
