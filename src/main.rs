use std::io::IsTerminal;
use std::process::ExitCode;

use std::sync::Arc;

use clap::Parser;
use connwatch::app::{self, AppError};
use connwatch::cli::{Cli, Command, LogFormat};
use connwatch::{config, service};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=off"));
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
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let env: Vec<(String, String)> = std::env::vars().collect();
    for var in config::stray_env_vars(&env) {
        tracing::warn!(var = %var, "ignoring environment variable: use CONNWATCH_<SECTION>__<KEY>");
    }
    let loaded = match config::load(cli.config.as_deref(), &env, cli.overrides.to_flags()) {
        Ok(l) => l,
        Err(e) => return fail(&AppError::Config(e)),
    };
    let result = match &cli.command {
        Command::CheckConfig => Ok(app::check_config(&loaded)),
        Command::Report(args) => app::report(&loaded.config, args).await,
        Command::Run => {
            let stats = Arc::new(service::Stats::default());
            service::run(loaded.config.clone(), shutdown_on_signal(), stats)
                .await
                .map(|()| String::new())
        }
        Command::Kick(args) => app::kick(&loaded.config, args).await,
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
