//! `serve` and `check`: what serving loads (TLS files, the auth section,
//! the audit log), checked the same way by both; binding; reloading on
//! SIGHUP.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use stategate::audit::Audit;
use stategate::auth::Auth;
use stategate::config::{self, AuthSetting, CommandLine, Settings};
use stategate::protocol::{App, Surface};
use stategate::server;
use stategate::tls::Tls;

use stategate::stores;

use super::{Create, load_settings, open_states};

/// What `serve` loads before it opens the store, checked the same way by
/// `check`: the TLS files of both addresses, the auth section, the audit
/// log.
struct Serving {
    tls: Option<Arc<Tls>>,
    admin_tls: Option<Arc<Tls>>,
    auth: Option<Auth>,
    audit: Audit,
}

fn serving_parts(settings: &Settings) -> Result<Serving> {
    let load = |files: &Option<config::TlsFiles>| -> Result<Option<Arc<Tls>>> {
        Ok(match files.clone() {
            Some(files) => Some(Arc::new(Tls::load(files)?)),
            None => None,
        })
    };
    let tls = load(&settings.tls)?;
    let admin_tls = load(&settings.admin_tls)?;
    let auth = auth(settings)?;
    let audit = Audit::open(settings.audit_log.as_deref()).with_context(|| {
        format!(
            "setting `audit_log`: cannot open {}",
            settings
                .audit_log
                .as_deref()
                .unwrap_or(Path::new("-"))
                .display()
        )
    })?;
    Ok(Serving {
        tls,
        admin_tls,
        auth,
        audit,
    })
}

/// `stategate serve`: open and probe the store, bind, serve until SIGTERM
/// or Ctrl-C.
pub async fn serve(settings: Settings, line: CommandLine) -> Result<()> {
    raise_open_file_limit();
    let Serving {
        tls,
        admin_tls,
        auth,
        audit,
    } = serving_parts(&settings)?;
    let (states, _) = open_states(&settings, Create::Yes).await?;
    let listener = bind(&settings).await?;
    // Bound (and announced) before the main address, which tools wait for.
    let admin = match settings.admin_listen {
        Some(addr) => {
            let admin = bind_addr(addr, "admin_listen").await?;
            tracing::info!(
                "serving /metrics and /readyz on {}://{}",
                if admin_tls.is_some() { "https" } else { "http" },
                admin.local_addr()?
            );
            Some(admin)
        }
        None => None,
    };
    tracing::info!(
        "stategate {} listening on {}://{} with the {}",
        env!("CARGO_PKG_VERSION"),
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        states.store().describe()
    );
    let mut app = App::new(states, settings.limits.clone(), settings.backend.name);
    app.base_path = settings.base_path.clone();
    app.trusted_proxies = settings.trusted_proxies.clone();
    app.client_ip_header = settings.client_ip_header;
    app.auth = std::sync::RwLock::new(auth.map(Arc::new));
    app.audit = audit;
    app.origins = stategate::protocol::origin::Origins {
        names: settings.ui.hosts.clone(),
        rebinding_check: settings.listen.ip().is_loopback(),
    };
    let dashboard = stategate::ui::Dashboard::new(&settings.ui)
        .context("making a CSRF key for the dashboard")?;
    if settings.ui.csrf_key.is_none() {
        tracing::info!(
            "ui.csrf_key is not set: the dashboard's forms are signed with a key made for this \
             process; replicas serving one name need a shared ui.csrf_key"
        );
    }
    app.pages = Some(Arc::new(dashboard));
    let app = Arc::new(app);
    // One signal stops every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let certificates: Vec<Arc<Tls>> = tls.iter().chain(&admin_tls).cloned().collect();
    reload_on_hangup(certificates, Arc::clone(&app), line);
    match admin {
        None => server::run(listener, app, Surface::All, tls, until_stopped(stopped)).await,
        Some(admin) => {
            tokio::join!(
                server::run(
                    listener,
                    Arc::clone(&app),
                    Surface::Public,
                    tls.clone(),
                    until_stopped(stopped.clone())
                ),
                server::run(
                    admin,
                    app,
                    Surface::Admin,
                    admin_tls,
                    until_stopped(stopped)
                ),
            );
        }
    }
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

/// The `auth` section, checked; `None` when requests need no credentials.
fn auth(settings: &Settings) -> Result<Option<Auth>> {
    match &settings.auth {
        AuthSetting::Enabled(section) => {
            let auth = Auth::new(section)?;
            if auth.uses_certificates()
                && settings.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
            {
                return Err(config::ConfigError::invalid(
                    "auth.certificates",
                    "needs tls.client_ca: without it no client certificate is asked for or verified",
                )
                .into());
            }
            Ok(Some(auth))
        }
        AuthSetting::Disabled => {
            if !settings.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %settings.listen,
                    "auth: none: anyone who reaches this port can read, write and unlock every state"
                );
            }
            Ok(None)
        }
        AuthSetting::Unset => Ok(None),
    }
}

/// Reloads the TLS certificates and the auth section on every SIGHUP.
fn reload_on_hangup(certificates: Vec<Arc<Tls>>, app: Arc<App>, line: CommandLine) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    for tls in &certificates {
                        let _ = tls.reload();
                    }
                    reload_auth(&app, &line);
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates and auth will not reload")
        }
    }
}

/// Reads the configuration again and puts its `auth` section in force.
/// Other settings need a restart. A section that does not load is logged
/// and the one in force stays; a reload never turns authentication off.
fn reload_auth(app: &App, line: &CommandLine) {
    let reloaded = load_settings(line).and_then(|settings| auth(&settings));
    match reloaded {
        Ok(Some(auth)) => {
            *app.auth.write().expect("auth lock") = Some(Arc::new(auth));
            tracing::info!("auth section reloaded");
        }
        Ok(None) => {
            if app.auth.read().expect("auth lock").is_some() {
                tracing::warn!(
                    "the reloaded configuration has no auth section; keeping the one in force"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "auth reload failed; keeping the section in force")
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
    } = serving_parts(settings)?;
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
        "  history_keep: {}, protect_lineage: {}",
        settings.history_keep, settings.protect_lineage
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
