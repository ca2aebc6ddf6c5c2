//! The `stategate` binary: parse the command line, load the settings, set
//! up logging, then serve (open and probe the store, bind, run until
//! SIGTERM or Ctrl-C) or run an operator command.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use stategate::config::{LogFormat, Settings};

mod cli;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stategate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Cli) -> Result<()> {
    // Making credentials needs no configuration (it may not be written yet).
    match args.command {
        Command::HashPassword => return cli::hash_password(),
        Command::Token(cmd) => return cli::token(cmd),
        _ => {}
    }
    let settings = cli::load_settings(&args.config)?;
    init_logging(&settings, matches!(args.command, Command::Serve));
    match args.command {
        Command::Serve => cli::serve(settings).await,
        Command::Check => cli::check(&settings).await,
        Command::State(cmd) => cli::state(&settings, cmd).await,
        Command::Lock(cmd) => cli::lock(&settings, cmd).await,
        Command::HashPassword | Command::Token(_) => unreachable!("handled above"),
    }
}

/// Logs go to stderr. `serve` logs requests at info; the operator commands
/// only warnings, so their stdout stays clean for pipes.
fn init_logging(settings: &Settings, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
