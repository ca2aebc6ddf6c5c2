//! `serve` and `check`: what serving loads (TLS files, the auth section,
//! the audit log), checked the same way by both; binding; reloading on
//! SIGHUP.

use std::sync::Arc;

use anyhow::{Result, bail};

use stategate::app::{Application, Serving};
use stategate::config::{AuthSetting, CommandLine, Settings};
use stategate::server;

use stategate::stores;

use stategate::app::{Create, open_states};

use super::load_settings;

/// `stategate serve`: open and probe the store, bind, serve until SIGTERM
/// or Ctrl-C.
pub async fn serve(settings: Settings, line: CommandLine) -> Result<()> {
    raise_open_file_limit();
    let application = Arc::new(Application::build(&settings).await?);
    let listener = bind(&settings).await?;
    // Bound (and announced) before the main address, which tools wait for.
    let admin = match settings.admin_listen {
        Some(addr) => {
            let admin = bind_addr(addr, "admin_listen").await?;
            tracing::info!(
                "serving /metrics and /readyz on {}://{}",
                if application.admin_https() {
                    "https"
                } else {
                    "http"
                },
                admin.local_addr()?
            );
            Some(admin)
        }
        None => None,
    };
    tracing::info!(
        "stategate {} listening on {}://{} with the {}",
        env!("CARGO_PKG_VERSION"),
        if application.https() { "https" } else { "http" },
        listener.local_addr()?,
        application.describe_store()
    );
    reload_on_hangup(Arc::clone(&application), line);
    application
        .serve(listener, admin, server::shutdown_signal())
        .await;
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

/// Reloads the certificates and the auth section on every SIGHUP, reading
/// the configuration again as it was given.
fn reload_on_hangup(application: Arc<Application>, line: CommandLine) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let settings = load_settings(&line).map_err(|e| format!("{e:#}"));
                    application.reload(settings.as_ref().map_err(Clone::clone));
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates and auth will not reload")
        }
    }
}

/// `stategate check`.
pub async fn check(settings: &Settings) -> Result<()> {
    let Serving {
        tls,
        admin_tls,
        auth,
        ..
    } = Serving::load(settings)?;
    println!("configuration: ok");
    if tls.is_some() {
        println!("  tls: certificate and key load");
    }
    if let Some(admin) = settings.admin_listen {
        println!(
            "  admin_listen: {admin} ({})",
            if admin_tls.is_some() { "https" } else { "http" }
        );
    }
    println!("  listen: {}", settings.listen);
    println!("  storageType: {}", settings.backend.name);
    println!("  store settings: {:?}", settings.store);
    println!(
        "  history_keep: {}, protect_lineage: {}, read_only: {}",
        settings.history_keep, settings.protect_lineage, settings.read_only
    );
    let auth_line = match (&settings.auth, &auth) {
        (AuthSetting::Disabled, _) => "none (anyone who reaches the port)".to_string(),
        (AuthSetting::Enabled(section), Some(_)) => {
            let counted = [
                (section.users.len(), "user", "users"),
                (section.tokens.len(), "token", "tokens"),
                (section.oidc.len(), "CI issuer", "CI issuers"),
                (
                    section.certificates.len(),
                    "client certificate",
                    "client certificates",
                ),
            ];
            let parts: Vec<String> = counted
                .iter()
                .filter(|(n, ..)| *n > 0)
                .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
                .collect();
            match parts.is_empty() {
                true => "the auth section, which admits nobody".to_string(),
                false => parts.join(", "),
            }
        }
        _ => "none (loopback only)".to_string(),
    };
    println!("  auth: {auth_line}");
    if let Some(what) = stores::missing(settings.backend, &settings.store).await? {
        // What opening the store (below, for one that exists) would check.
        stategate::app::keyring(settings)?;
        stores::check_settings(settings.backend, &settings.store)?;
        stores::check_creatable(settings.backend, &settings.store).await?;
        println!(
            "store: {} store not created yet ({what}); `stategate serve` creates it",
            settings.backend.name
        );
        println!("ok");
        return Ok(());
    }
    let (states, report) = open_states(settings, Create::Yes).await?;
    println!("store: {}", states.store().describe());
    for step in &report.steps {
        println!("  {step}");
    }
    let caps = states.capabilities();
    println!(
        "  compare-and-swap writes: {}",
        if caps.compare_and_swap { "yes" } else { "no" }
    );
    println!("ok");
    Ok(())
}

/// Refuses to run `serve` with a listen address that is already taken,
/// naming the setting.
pub async fn bind(settings: &Settings) -> Result<tokio::net::TcpListener> {
    bind_addr(settings.listen, "listen").await
}

/// Binds `addr`, naming `setting` when it cannot.
pub async fn bind_addr(
    addr: std::net::SocketAddr,
    setting: &str,
) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) => bail!("setting `{setting}`: cannot listen on {addr}: {e}"),
    }
}
