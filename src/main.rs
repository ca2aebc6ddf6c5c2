//! The `stategate` binary: parse the command line, load the settings, set
//! up logging, then serve (open and probe the store, bind, run until
//! SIGTERM or Ctrl-C) or run an operator command.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use stategate::config::{LogFormat, Settings};
use stategate::protocol::App;
use stategate::server;

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
    let settings = cli::load_settings(&args.config)?;
    init_logging(&settings, matches!(args.command, Command::Serve));
    match args.command {
        Command::Serve => serve(settings).await,
        Command::Check => cli::check(&settings).await,
        Command::State(cmd) => cli::state(&settings, cmd).await,
        Command::Lock(cmd) => cli::lock(&settings, cmd).await,
    }
}

async fn serve(settings: Settings) -> Result<()> {
    raise_open_file_limit();
    let (states, _) = cli::open_states(&settings).await?;
    let listener = cli::bind(&settings).await?;
    tracing::info!(
        "stategate {} listening on http://{} with the {}",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr()?,
        states.store().describe()
    );
    let app = Arc::new(App {
        states,
        limits: settings.limits.clone(),
    });
    server::run(listener, app, server::shutdown_signal()).await;
    Ok(())
}

/// Every connection costs a file descriptor, and a soft limit of 1024 is
/// common: raise it to the hard limit, as servers do.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open file limit");
        }
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
