//! The running application, built from validated [`Settings`] in one
//! place: the TLS files of both addresses, the `auth` section, the audit
//! log, the store with its rules (sealed when `encryption` is set), the
//! dashboard, the notifications' outbox and sending loops, and the [`App`]
//! the server answers from. `serve` builds it,
//! `check` runs the same checks ([`Serving::load`]), tests and benchmarks
//! build it around a store of their own ([`Application::assemble`]), and a
//! SIGHUP reloads what can change while serving ([`Application::reload`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::auth::Auth;
use crate::config::{AuthSetting, Settings};
use crate::notify::{self, Notifier, Secret, deliver::Delivery};
use crate::protocol::{App, Surface, origin};
use crate::server;
use crate::settings::{ConfigError, TlsFiles};
use crate::state::seal::{Keyring, SealedStore};
use crate::state::{Policy, States};
use crate::stores::{self, OpenError, ProbeReport, Store};
use crate::tls::Tls;

/// Why the application could not be built; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("setting `audit_log`: cannot open {path}: {source}")]
    AuditLog {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only `serve` creates a store: see [`Create`].
    #[error(
        "no {storage_type} store here: {what}; only `stategate serve` creates a store (relative \
         paths in a configuration file start at the file's directory)"
    )]
    NoStore {
        storage_type: &'static str,
        what: String,
    },
    #[error("making a CSRF key for the dashboard: {0}")]
    Random(#[from] getrandom::Error),
    #[error("setting up the notifications' HTTP client: {0}")]
    NotifyClient(#[from] reqwest::Error),
}

/// Whether opening a store may create it. Only `serve`, and a migration
/// into its target, do: a wrong path must not leave an empty store behind
/// and answer as if it held nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

/// What serving loads before it opens the store, checked the same way by
/// `check`: the TLS files of both addresses, the `auth` section, the
/// audit log, the notifications' signing secrets.
pub struct Serving {
    pub tls: Option<Arc<Tls>>,
    pub admin_tls: Option<Arc<Tls>>,
    /// `None` when requests need no credentials.
    pub auth: Option<Auth>,
    pub audit: Audit,
    /// The signing secret of each notification destination that has one.
    pub notify_secrets: HashMap<String, Secret>,
}

impl Serving {
    /// Loads and checks them; a file that cannot be used names its setting.
    pub fn load(settings: &Settings) -> Result<Serving, BuildError> {
        let load = |files: &Option<TlsFiles>| -> Result<Option<Arc<Tls>>, ConfigError> {
            files
                .clone()
                .map(|f| Tls::load(f).map(Arc::new))
                .transpose()
        };
        let audit =
            Audit::open(settings.audit_log.as_deref()).map_err(|source| BuildError::AuditLog {
                path: settings
                    .audit_log
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("-")),
                source,
            })?;
        Ok(Serving {
            tls: load(&settings.tls)?,
            admin_tls: load(&settings.admin_tls)?,
            auth: auth(settings)?,
            audit,
            notify_secrets: notify_secrets(settings, &|var| std::env::var(var).ok())?,
        })
    }
}

/// The signing secrets of the notification destinations, read from their
/// `secret_env`; one that is unset stops start-up, naming the setting.
pub fn notify_secrets(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Secret>, ConfigError> {
    let mut secrets = HashMap::new();
    for (i, destination) in settings.notifications.destinations.iter().enumerate() {
        if let Some(secret) = destination.secret(i, env)? {
            secrets.insert(destination.name.clone(), secret);
        }
    }
    Ok(secrets)
}

/// The `auth` section, checked; `None` when requests need no credentials.
pub fn auth(settings: &Settings) -> Result<Option<Auth>, ConfigError> {
    match &settings.auth {
        AuthSetting::Enabled(section) => {
            let auth = Auth::new(section)?;
            if auth.uses_certificates()
                && settings.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
            {
                return Err(ConfigError::invalid(
                    "auth.certificates",
                    "needs tls.client_ca: without it no client certificate is asked for or verified",
                ));
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

/// The rules' tuning, from the settings.
pub fn policy(settings: &Settings) -> Policy {
    Policy {
        workspace_key_prefix: settings.workspace_key_prefix.clone(),
        history_keep: settings.history_keep,
        protect_lineage: settings.protect_lineage,
    }
}

/// The keys of `encryption`, read now (a missing one stops start-up).
pub fn keyring(settings: &Settings) -> Result<Option<Arc<Keyring>>, ConfigError> {
    settings
        .encryption
        .as_ref()
        .map(|section| Keyring::load(section, &|var| std::env::var(var).ok()).map(Arc::new))
        .transpose()
}

/// Opens and probes the store, applying the rules to it: state bodies are
/// sealed when `encryption` is set. With [`Create::No`] a store that does
/// not exist yet is refused, saying what is missing.
pub async fn open_states(
    settings: &Settings,
    create: Create,
) -> Result<(States, ProbeReport), BuildError> {
    if create == Create::No
        && let Some(what) = stores::missing(settings.backend, &settings.store).await?
    {
        return Err(BuildError::NoStore {
            storage_type: settings.backend.name,
            what,
        });
    }
    let opened = stores::open(settings.backend, settings.store.clone(), settings.read_only).await?;
    let store = match keyring(settings)? {
        Some(keys) => Arc::new(SealedStore::new(opened.store, keys)) as Arc<dyn Store>,
        None => opened.store,
    };
    Ok((
        States::new(store, opened.capabilities, policy(settings)),
        opened.report,
    ))
}

/// Opens the store for reading only ([`stores::open_for_reading`]): no
/// probe and nothing created; sealed bodies are opened with the keys.
pub async fn open_states_for_reading(settings: &Settings) -> Result<States, BuildError> {
    let store = stores::open_for_reading(settings.backend, settings.store.clone()).await?;
    let capabilities = store.capabilities();
    let store = match keyring(settings)? {
        Some(keys) => Arc::new(SealedStore::new(store, keys)) as Arc<dyn Store>,
        None => store,
    };
    Ok(States::new(store, capabilities, policy(settings)))
}

/// The application, ready to serve.
pub struct Application {
    app: Arc<App>,
    /// The index the dashboard's searches read, built and kept current
    /// while serving.
    explorer: crate::explore::Explorer,
    tls: Option<Arc<Tls>>,
    admin_tls: Option<Arc<Tls>>,
    /// The loops that run beside the server, taken when it starts serving.
    background: std::sync::Mutex<Option<Background>>,
}

/// The notifications' loops, started with the server and stopped with it.
struct Background {
    delivery: Arc<Delivery>,
    /// The lock-age check: the notifier, the states and the threshold.
    held: Option<(Arc<Notifier>, States, Duration)>,
    replica: String,
}

impl Application {
    /// Loads what serving needs and opens (creating it if need be) and
    /// probes the configured store.
    pub async fn build(settings: &Settings) -> Result<Application, BuildError> {
        let serving = Serving::load(settings)?;
        let (states, _) = open_states(settings, Create::Yes).await?;
        Self::with(settings, serving, states)
    }

    /// The application around `states` opened by the caller (a store of
    /// its own, wrapped or counted), with everything else from `settings`.
    pub fn assemble(settings: &Settings, states: States) -> Result<Application, BuildError> {
        Self::with(settings, Serving::load(settings)?, states)
    }

    fn with(
        settings: &Settings,
        serving: Serving,
        states: States,
    ) -> Result<Application, BuildError> {
        let notifier = Notifier::new(&settings.notifications, Arc::clone(states.store()));
        // The lock-age check reads the locks through states of its own.
        let check_states = States::new(
            Arc::clone(states.store()),
            states.capabilities(),
            policy(settings),
        );
        let mut app = App::new(
            states,
            settings.limits.clone(),
            settings.backend.name,
            serving.audit,
        );
        let background = match &notifier {
            // A read-only server changes nothing, claims included.
            Some(notifier) if !settings.read_only => {
                let replica = notify::replica_name();
                let delivery = Delivery::new(
                    Arc::clone(notifier),
                    &settings.notifications,
                    serving.notify_secrets,
                    app.metrics.notifications.clone(),
                    replica.clone(),
                )?;
                let held = settings
                    .notifications
                    .lock_held_too_long
                    .map(|threshold| (Arc::clone(notifier), check_states, threshold));
                Some(Background {
                    delivery,
                    held,
                    replica,
                })
            }
            _ => None,
        };
        app.notifier = notifier;
        app.base_path = settings.base_path.clone();
        app.trusted_proxies = settings.trusted_proxies.clone();
        app.client_ip_header = settings.client_ip_header;
        app.auth = std::sync::RwLock::new(serving.auth.map(Arc::new));
        app.origins = origin::Origins {
            names: settings.ui.hosts.clone(),
            rebinding_check: settings.listen.ip().is_loopback(),
        };
        if settings.ui.csrf_key.is_none() {
            tracing::info!(
                "ui.csrf_key is not set: the dashboard's forms are signed with a key made for this \
                 process; replicas serving one name need a shared ui.csrf_key"
            );
        }
        // Made before the first request, so that it follows every change.
        let explorer = crate::explore::Explorer::new(app.states.clone(), &settings.explore);
        app.pages = Some(Arc::new(crate::ui::Dashboard::new(
            &settings.ui,
            explorer.clone(),
        )?));
        Ok(Application {
            explorer,
            app: Arc::new(app),
            tls: serving.tls,
            admin_tls: serving.admin_tls,
            background: std::sync::Mutex::new(background),
        })
    }

    /// The store being served, for the start-up line.
    pub fn describe_store(&self) -> String {
        self.app.states.store().describe()
    }

    /// Whether the main address speaks HTTPS.
    pub fn https(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the admin address speaks HTTPS.
    pub fn admin_https(&self) -> bool {
        self.admin_tls.is_some()
    }

    /// Reads the certificate files again, and puts the `auth` section of
    /// `settings` (the configuration read again) in force. Other settings
    /// need a restart. A section that does not load is logged and the one
    /// in force stays; a reload never turns authentication off.
    pub fn reload(&self, settings: Result<&Settings, String>) {
        for tls in self.tls.iter().chain(&self.admin_tls) {
            let _ = tls.reload();
        }
        let reloaded = settings.and_then(|s| auth(s).map_err(|e| e.to_string()));
        match reloaded {
            Ok(Some(auth)) => {
                *self.app.auth.write().expect("auth lock") = Some(Arc::new(auth));
                tracing::info!("auth section reloaded");
            }
            Ok(None) => {
                if self.app.auth.read().expect("auth lock").is_some() {
                    tracing::warn!(
                        "the reloaded configuration has no auth section; keeping the one in force"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "auth reload failed; keeping the section in force")
            }
        }
    }

    /// Serves on `main` (and on `admin`, the operational URLs, when given)
    /// until `stop` completes; the notifications are sent meanwhile.
    pub async fn serve(
        &self,
        main: TcpListener,
        admin: Option<TcpListener>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (stop_tx, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stop_tx.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let background = self.background.lock().expect("background lock").take();
        if let Some(background) = background {
            tokio::spawn(background.delivery.run(stopped.clone()));
            if let Some((notifier, states, threshold)) = background.held {
                tokio::spawn(notify::held::watch(
                    notifier,
                    states,
                    threshold,
                    background.replica,
                    stopped.clone(),
                ));
            }
        }
        self.explorer.start(stopped.clone());
        let app = Arc::clone(&self.app);
        match admin {
            None => {
                server::run(
                    main,
                    app,
                    Surface::All,
                    self.tls.clone(),
                    until_stopped(stopped),
                )
                .await
            }
            Some(admin) => {
                tokio::join!(
                    server::run(
                        main,
                        Arc::clone(&app),
                        Surface::Public,
                        self.tls.clone(),
                        until_stopped(stopped.clone())
                    ),
                    server::run(
                        admin,
                        app,
                        Surface::Admin,
                        self.admin_tls.clone(),
                        until_stopped(stopped)
                    ),
                );
            }
        }
    }
}
