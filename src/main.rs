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
        Command::GenKey { file } => return cli::gen_key(file.as_deref()),
        Command::Loadtest(args) => {
            init_plain_logging();
            return cli::loadtest(args).await;
        }
        Command::Migrate {
            from,
            to,
            prefix,
            with_history,
            dry_run,
            overwrite,
        } => {
            init_plain_logging();
            return cli::migrate(&from, &to, &prefix, with_history, dry_run, overwrite).await;
        }
        _ => {}
    }
    let settings = cli::load_settings(&args.config)?;
    init_logging(&settings, matches!(args.command, Command::Serve));
    match args.command {
        Command::Serve => cli::serve(settings, args.config).await,
        Command::Check => cli::check(&settings).await,
        Command::State(cmd) => cli::state(&settings, cmd).await,
        Command::Lock(cmd) => cli::lock(&settings, cmd).await,
        Command::Rekey => cli::rekey(&settings).await,
        #[cfg(feature = "db")]
        Command::MigrateFromTerraformPg(args) => {
            cli::migrate_from_terraform_pg(&settings, args).await
        }
        Command::HashPassword
        | Command::Token(_)
        | Command::GenKey { .. }
        | Command::Migrate { .. }
        | Command::Loadtest(_) => {
            unreachable!("handled above")
        }
    }
}

/// Warnings to stderr as text, for commands that read no settings of
/// their own (`migrate` reads two).
fn init_plain_logging() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .fmt_fields(stategate::logging::text_fields())
        .finish()
        .with(no_sdk_traces())
        .init();
}

/// Logs go to stderr. `serve` logs requests at info; the operator commands
/// only warnings, so their stdout stays clean for pipes.
fn init_logging(settings: &Settings, serving: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().finish().with(no_sdk_traces()).init(),
        LogFormat::Text => builder
            .with_ansi(false)
            .fmt_fields(stategate::logging::text_fields())
            .finish()
            .with(no_sdk_traces())
            .init(),
    }
}

/// Crates whose trace events print whole requests: the S3 SDK's signer
/// logs the canonical request (with `x-amz-security-token`) and its
/// orchestrator every request's headers. Their trace events are dropped
/// whatever `RUST_LOG` says, since no directive, however specific, may
/// put a secret in the log. (The OSS SDK logs through the `log` crate,
/// which has no bridge into these logs.)
const SDK_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "aws_sdk_s3",
    "aws_config",
    "aws_runtime",
    "aws_credential_types",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "ali_oss_rs",
];

fn no_sdk_traces() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !SDK_TARGETS.iter().any(|sdk| {
                meta.target()
                    .strip_prefix(sdk)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
    })
}
