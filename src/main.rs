//! The `stategate` binary: parse the command line, load the settings, set
//! up logging, then serve (open and probe the store, bind, run until
//! SIGTERM or Ctrl-C) or run an operator command.

use std::process::ExitCode;

use anyhow::Result;
use stategate::config::{CommandLine, LogFormat, Settings};

mod cli;

use cli::Command;

fn main() -> ExitCode {
    let (args, line) = cli::args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args.command, line)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stategate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, line: CommandLine) -> Result<()> {
    // Making credentials needs no configuration (it may not be written yet).
    match command {
        Command::HashPassword => return cli::keys::hash_password(),
        Command::Token(cmd) => return cli::keys::token(cmd),
        Command::GenKey { file } => return cli::keys::gen_key(file.as_deref()),
        Command::Loadtest(args) => {
            init_plain_logging();
            return cli::loadtest::loadtest(args).await;
        }
        Command::Migrate(args) => {
            init_plain_logging();
            return cli::migrate::migrate(args).await;
        }
        _ => {}
    }
    let settings = cli::load_settings(&line)?;
    init_logging(&settings, matches!(command, Command::Serve));
    match command {
        Command::Serve => cli::serve::serve(settings, line).await,
        Command::Check => cli::serve::check(&settings).await,
        Command::State(cmd) => cli::state::state(&settings, cmd).await,
        Command::Lock(cmd) => cli::state::lock(&settings, cmd).await,
        Command::Rekey => cli::keys::rekey(&settings).await,
        #[cfg(feature = "db")]
        Command::MigrateFromTerraformPg(args) => {
            cli::migrate::migrate_from_terraform_pg(&settings, args).await
        }
        Command::HashPassword
        | Command::Token(_)
        | Command::GenKey { .. }
        | Command::Migrate(_)
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
        .log_internal_errors(false)
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
    // A log that cannot be written (stderr closed: a log collector that
    // went away) is dropped; reporting it would write to stderr again,
    // and Rust's report panics, so every request failed.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
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
