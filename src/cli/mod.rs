//! The command line: `serve` (bind, then run every listener until a
//! signal), `check`, and the operator commands `state …` and `lock …` that
//! work directly on the configured store (no server needed), with the
//! same rules the server applies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use stategate::audit::Audit;
use stategate::auth::{self as authn, Auth};
use stategate::config::AuthSetting;
use stategate::config::{self, CliOverrides, FileConfig, Settings};
use stategate::migrate;
use stategate::protocol::{App, Surface};
use stategate::server;
use stategate::state::history::HistoryWindow;
use stategate::state::seal::{self, Keyring, SealedStore};
use stategate::state::{Policy, StateRef, States, WriteOptions, WriteOutcome};
use stategate::stores::{self, Store};
use stategate::tls::Tls;

/// A remote state server for Terraform and OpenTofu's `backend "http"`.
#[derive(Debug, Parser)]
#[command(name = "stategate", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where settings come from; accepted by every subcommand.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// YAML configuration file (`listen:`, `backend: {storageType, config}`).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "STATEGATE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve /metrics and /readyz on this address instead of the main one.
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Serve every URL below this path, e.g. /tfstate (behind a proxy).
    #[arg(long, global = true, value_name = "PATH")]
    pub base_path: Option<String>,
    /// Proxies whose client_ip_header is believed: CIDR ranges, comma-separated.
    #[arg(long, global = true, value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// The header trusted proxies name the client in: x-forwarded-for or forwarded [default: x-forwarded-for].
    #[arg(long, global = true, value_name = "HEADER")]
    pub client_ip_header: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Require client certificates signed by these CAs (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_client_ca: Option<String>,
    /// `none` serves without authentication, even beyond loopback.
    #[arg(long, global = true, value_name = "none")]
    pub auth: Option<String>,
    /// Write audit events (JSON lines) to this file instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    pub audit_log: Option<String>,
    /// local, sqlite, s3, oss or db [default: local].
    #[arg(long, global = true, value_name = "TYPE")]
    pub storage_type: Option<String>,
    /// A store setting, e.g. `-C path=/var/lib/stategate`; repeatable.
    #[arg(short = 'C', global = true, value_name = "KEY=VALUE", value_parser = config::parse_override)]
    pub set: Vec<(String, String)>,
    /// Largest request body accepted [default: 536870912].
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Log line format: text or json [default: text].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Largest LOCK/UNLOCK body accepted [default: 65536].
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_lock_bytes: Option<String>,
    /// Largest request head; larger gets 431 [default: 65536].
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_header_bytes: Option<String>,
    /// Time a request's headers may take to arrive [default: 15s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Slowest upload accepted, bytes/s averaged over 10 s; 0 is off [default: 1024].
    #[arg(long, global = true, value_name = "BYTES")]
    pub body_min_rate: Option<String>,
    /// Idle keep-alive connections close after this [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Connections served at once; more get 503 [default: 512].
    #[arg(long, global = true, value_name = "N")]
    pub max_connections: Option<String>,
    /// Time requests in flight get to finish after SIGTERM [default: 30s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

impl ConfigArgs {
    /// The connection limits given as flags, by setting name.
    fn limits(&self) -> Vec<(&'static str, String)> {
        [
            ("max_lock_bytes", &self.max_lock_bytes),
            ("max_header_bytes", &self.max_header_bytes),
            ("header_timeout", &self.header_timeout),
            ("body_min_rate", &self.body_min_rate),
            ("idle_timeout", &self.idle_timeout),
            ("max_connections", &self.max_connections),
            ("shutdown_grace", &self.shutdown_grace),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.clone().map(|v| (name, v)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve states over HTTP.
    Serve,
    /// Validate the configuration and probe the store.
    Check,
    /// Inspect, restore and push states directly in the store.
    #[command(subcommand)]
    State(StateCommand),
    /// Inspect and release locks directly in the store.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Read a password from standard input (no echo on a terminal) and
    /// print its argon2id hash for `auth.users[].password_hash`.
    HashPassword,
    /// Make tokens for `auth.tokens`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make a random encryption key (base64 of 32 bytes) for
    /// `encryption.keys`: written to FILE (created with mode 0600, never
    /// overwritten), or printed.
    GenKey { file: Option<PathBuf> },
    /// Copy every state (and with --with-history its kept versions) from
    /// one configured store to another. Reruns skip what is already
    /// there; each source state is locked while it is copied.
    Migrate {
        /// Configuration file of the store to copy from.
        #[arg(long)]
        from: PathBuf,
        /// Configuration file of the store to copy to.
        #[arg(long)]
        to: PathBuf,
        /// Only states whose key starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Copy each state's kept versions too, oldest first.
        #[arg(long)]
        with_history: bool,
        /// Show what would be copied; change nothing. Opens both stores
        /// for reading only (no start-up probe; a target that does not
        /// exist yet is taken as empty, not created).
        #[arg(long)]
        dry_run: bool,
        /// Replace a target state that has the source's lineage and serial
        /// but other content (a "conflict"); without it such a state is
        /// left alone and the run fails.
        #[arg(long)]
        overwrite: bool,
    },
    /// Drive a deployment with Terraform's cycle (LOCK, GET, POST, UNLOCK)
    /// from many clients and print cycles/s and latency per verb.
    Loadtest(LoadtestArgs),
    /// Seal every state body and kept version under the first key of
    /// `encryption.keys` (after adding a key, or to seal a store being
    /// adopted). Safe to run while serving; rerun after an interruption.
    Rekey,
    /// Copy every workspace of Terraform's own `pg` backend into the
    /// configured store (safe to run again).
    #[cfg(feature = "db")]
    MigrateFromTerraformPg(MigratePgArgs),
}

/// The arguments of `stategate loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// A state URL, e.g. https://stategate.example/states/loadtest;
    /// client i works on <URL>/c<i>.
    pub url: String,
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Bytes of every state written.
    #[arg(long, default_value_t = 100 * 1024)]
    pub state_bytes: usize,
    /// How long to run: `30s`, `30`, `2m`.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// All clients on <URL> itself, contending for its lock (423s are
    /// expected and counted).
    #[arg(long)]
    pub shared_key: bool,
    #[arg(long)]
    pub user: Option<String>,
    /// Also read from TF_HTTP_PASSWORD, as Terraform does.
    #[arg(long, env = "TF_HTTP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// `stategate migrate-from-terraform-pg`.
#[cfg(feature = "db")]
#[derive(Debug, clap::Args)]
pub struct MigratePgArgs {
    /// The pg backend's `conn_str`, a postgres:// URL (never printed).
    #[arg(
        long,
        value_name = "URL",
        env = "STATEGATE_MIGRATE_PG_CONN_STR",
        hide_env_values = true
    )]
    pub conn_str: String,
    /// The state key in stategate: the `default` workspace lands here,
    /// every other workspace at this key in that workspace.
    #[arg(long)]
    pub key: String,
    /// The pg backend's `schema_name`.
    #[arg(long, default_value = stategate::migrate_pg::DEFAULT_SCHEMA)]
    pub schema: String,
    /// Seconds to wait for a workspace a running terraform has locked.
    #[arg(long, default_value_t = 60)]
    pub lock_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token (once: it is not stored) and its hash.
    New { name: String },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List states: key, workspace, serial, size, last write, lock holder.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// List the kept versions of a state: all of them oldest first, or with
    /// --limit or --before one page, newest first.
    History {
        key: String,
        #[arg(long, short)]
        workspace: Option<String>,
        /// Show at most this many versions, newest first (1 to 1000; 100
        /// when only --before is given).
        #[arg(long)]
        limit: Option<u64>,
        /// Show only versions numbered below this, newest first (the next
        /// page is named after the listing).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Print a state (or one of its versions) to stdout.
    Get {
        key: String,
        #[arg(long, short)]
        workspace: Option<String>,
        /// A version number from `state history`.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Make an earlier version the current state (itself kept as a new version).
    Restore {
        key: String,
        #[arg(long)]
        version: u64,
        #[arg(long, short)]
        workspace: Option<String>,
        /// Restore even while the state is locked.
        #[arg(long)]
        force: bool,
    },
    /// Remove every kept version of a deleted state (logged as a warning).
    Purge {
        key: String,
        #[arg(long, short)]
        workspace: Option<String>,
    },
    /// Store a state from a file (`-` for stdin).
    Push {
        key: String,
        file: PathBuf,
        #[arg(long, short)]
        workspace: Option<String>,
        /// Skip the shape, lineage and serial checks: store any JSON, or
        /// replace newer state on purpose.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// List held locks.
    List,
    /// Force-release a state's lock, whoever holds it (logged as a warning).
    Release {
        key: String,
        #[arg(long, short)]
        workspace: Option<String>,
    },
}

/// `stategate hash-password`.
pub fn hash_password() -> Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        eprint!("password: ");
        rpassword::read_password().context("reading the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    println!(
        "{}",
        authn::hash_secret(&password).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// `stategate token …`.
pub fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::New { name } => {
            let token = authn::new_token(&name).map_err(anyhow::Error::msg)?;
            let hash = authn::hash_secret(&token).map_err(anyhow::Error::msg)?;
            println!("token (shown once; give it to the client):\n  {token}");
            println!(
                "for the configuration file, under auth.tokens (adjust its rules: with none it may do nothing):\n\
                 auth:\n  tokens:\n    - name: {name}\n      token_hash: \"{hash}\"\n      rules:\n\
                 \x20       # the states it reaches (globs), and outputs, read, write or admin\n\
                 \x20       - {{keys: \"{name}/**\", access: write}}"
            );
        }
    }
    Ok(())
}

/// Loads, merges and validates the settings.
pub fn load_settings(args: &ConfigArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = CliOverrides {
        listen: args.listen.clone(),
        admin_listen: args.admin_listen.clone(),
        base_path: args.base_path.clone(),
        trusted_proxies: args.trusted_proxies.clone(),
        client_ip_header: args.client_ip_header.clone(),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: args.tls_client_ca.clone(),
        auth: args.auth.clone(),
        audit_log: args.audit_log.clone(),
        storage_type: args.storage_type.clone(),
        max_body_bytes: args.max_body_bytes,
        log_format: args.log_format.clone(),
        limits: args.limits(),
        store: args.set.clone(),
    };
    Ok(config::resolve(
        file,
        &|k| std::env::var(k).ok(),
        &overrides,
        Path::new("."),
    )?)
}

/// The rules' tuning, from the settings.
pub fn policy(settings: &Settings) -> Policy {
    Policy {
        workspace_key_prefix: settings.workspace_key_prefix.clone(),
        history_keep: settings.history_keep,
        protect_lineage: settings.protect_lineage,
    }
}

/// What `serve` loads before it opens the store, checked the same way by
/// `check`: the TLS files, the auth section, the audit log.
fn serving_parts(settings: &Settings) -> Result<(Option<Arc<Tls>>, Option<Auth>, Audit)> {
    let tls = match settings.tls.clone() {
        Some(files) => Some(Arc::new(Tls::load(files)?)),
        None => None,
    };
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
    Ok((tls, auth, audit))
}

/// `stategate serve`: open and probe the store, bind, serve until SIGTERM
/// or Ctrl-C.
pub async fn serve(settings: Settings, args: ConfigArgs) -> Result<()> {
    raise_open_file_limit();
    let (tls, auth, audit) = serving_parts(&settings)?;
    let (states, _) = open_states(&settings).await?;
    let listener = bind(&settings).await?;
    // Bound (and announced) before the main address, which tools wait for.
    let admin = match settings.admin_listen {
        Some(addr) => {
            let admin = bind_addr(addr, "admin_listen").await?;
            tracing::info!(
                "serving /metrics and /readyz on http://{}",
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
    reload_on_hangup(tls.clone(), Arc::clone(&app), args);
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
                server::run(admin, app, Surface::Admin, tls, until_stopped(stopped)),
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

/// Reloads the TLS certificates on every SIGHUP.
fn reload_on_hangup(tls: Option<Arc<Tls>>, app: Arc<App>, args: ConfigArgs) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if let Some(tls) = &tls {
                        let _ = tls.reload();
                    }
                    reload_auth(&app, &args);
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
fn reload_auth(app: &App, args: &ConfigArgs) {
    let reloaded = load_settings(args).and_then(|settings| auth(&settings));
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

/// Opens and probes the store, applying the rules to it: state bodies
/// are sealed when `encryption` is set.
pub async fn open_states(settings: &Settings) -> Result<(States, stores::ProbeReport)> {
    let opened = stores::open(settings.backend, settings.store.clone()).await?;
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
async fn open_states_for_reading(settings: &Settings) -> Result<States> {
    let store = stores::open_for_reading(settings.backend, settings.store.clone()).await?;
    let capabilities = store.capabilities();
    let store = match keyring(settings)? {
        Some(keys) => Arc::new(SealedStore::new(store, keys)) as Arc<dyn Store>,
        None => store,
    };
    Ok(States::new(store, capabilities, policy(settings)))
}

/// The keys of `encryption`, read now (a missing one stops start-up).
fn keyring(settings: &Settings) -> Result<Option<Arc<Keyring>>> {
    Ok(match &settings.encryption {
        Some(section) => Some(Arc::new(Keyring::load(section, &|var| {
            std::env::var(var).ok()
        })?)),
        None => None,
    })
}

/// `stategate gen-key [FILE]`.
pub fn gen_key(file: Option<&Path>) -> Result<()> {
    let key = seal::generate_key().map_err(anyhow::Error::msg)?;
    let Some(path) = file else {
        println!("{key}");
        return Ok(());
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    writeln!(out, "{key}")?;
    out.sync_all()?;
    eprintln!("wrote a new key to {}", path.display());
    Ok(())
}

/// Settings from one whole configuration file (`migrate --from/--to`):
/// the environment is not read, so one variable cannot apply to both
/// stores; relative paths start at the file's directory.
fn settings_of_file(path: &Path) -> Result<Settings> {
    let file = FileConfig::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    config::resolve(file, &|_| None, &CliOverrides::default(), dir)
        .with_context(|| format!("{}", path.display()))
}

/// `stategate migrate`.
pub async fn migrate(
    from: &Path,
    to: &Path,
    prefix: &str,
    with_history: bool,
    dry_run: bool,
    overwrite: bool,
) -> Result<()> {
    // A dry run only reads: no probe, nothing created, read-only
    // credentials suffice.
    let open = |path: &Path| {
        let settings = settings_of_file(path);
        async move {
            let settings = settings?;
            match dry_run {
                true => open_states_for_reading(&settings).await,
                false => open_states(&settings).await.map(|(states, _)| states),
            }
        }
    };
    let source = open(from)
        .await
        .with_context(|| format!("--from {}", from.display()))?;
    let target = open(to)
        .await
        .with_context(|| format!("--to {}", to.display()))?;
    let states = source.list(prefix).await?;
    let bar = indicatif::ProgressBar::new(states.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} states {msg}")
            .expect("progress template"),
    );
    let lock = serde_json::json!({
        "ID": "stategate-migrate",
        "Operation": "migrate",
        "Info": format!("stategate migrate to {}", to.display()),
        "Who": format!("stategate-migrate@{}", hostname()),
        "Version": env!("CARGO_PKG_VERSION"),
        "Created": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "Path": "",
    })
    .to_string();
    let mut rows = Vec::new();
    let mut total_bytes = 0u64;
    for summary in states {
        let state = summary.state;
        let copied = migrate::migrate_state(
            &source,
            &target,
            &state,
            with_history,
            dry_run,
            overwrite,
            lock.as_bytes(),
        )
        .await
        .with_context(|| format!("{state}"))?;
        if let migrate::Copied::Written { bytes, .. } | migrate::Copied::WouldWrite { bytes, .. } =
            copied
        {
            total_bytes += bytes;
        }
        bar.inc(1);
        bar.set_message(format!("{total_bytes} bytes"));
        rows.push((state, copied));
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:<12} {:<13} {:>8} {:>12}  NOTE",
        "KEY", "WORKSPACE", "OUTCOME", "VERSIONS", "BYTES"
    )?;
    let mut problems = 0;
    for (state, copied) in &rows {
        let (versions, bytes, note) = match copied {
            migrate::Copied::Written { versions, bytes }
            | migrate::Copied::WouldWrite { versions, bytes } => {
                (versions.to_string(), bytes.to_string(), String::new())
            }
            migrate::Copied::TargetNewer(why)
            | migrate::Copied::Conflict(why)
            | migrate::Copied::SourceLocked(why) => ("-".into(), "-".into(), why.clone()),
            migrate::Copied::Identical => ("0".into(), "0".into(), String::new()),
        };
        problems += usize::from(copied.is_problem());
        writeln!(
            out,
            "{:<40} {:<12} {:<13} {:>8} {:>12}  {}",
            state.key(),
            state.workspace(),
            copied.outcome(),
            versions,
            bytes,
            note
        )?;
    }
    let count = |word: &str| rows.iter().filter(|(_, c)| c.outcome() == word).count();
    writeln!(
        out,
        "{} states: {} copied, {} identical, {} would copy, {} left alone; {total_bytes} bytes{}",
        rows.len(),
        count("copied"),
        count("identical"),
        count("would copy"),
        problems,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    )?;
    if problems > 0 {
        bail!("{problems} states were not copied (see NOTE); rerun once they are resolved");
    }
    Ok(())
}

/// This machine's name, for the migration's LockInfo.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `stategate loadtest`.
pub async fn loadtest(args: LoadtestArgs) -> Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let plan = stategate::loadtest::Plan {
        duration: stategate::settings::parse_duration("--duration", &args.duration)?,
        url: args.url,
        clients: args.clients,
        state_bytes: args.state_bytes,
        shared_key: args.shared_key,
        user: args.user,
        password: args.password,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    let total = plan.duration;
    let report = stategate::loadtest::run(plan, |cycles, elapsed| {
        bar.set_message(format!(
            "{cycles} cycles, {:.0} cycles/s, {:.0}s of {:.0}s",
            cycles as f64 / elapsed.as_secs_f64().max(0.001),
            elapsed.as_secs_f64(),
            total.as_secs_f64()
        ));
        bar.tick();
    })
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    print!("{}", report.render());
    if !report.clean() {
        bail!("unexpected answers (above)");
    }
    Ok(())
}

/// `stategate rekey`.
pub async fn rekey(settings: &Settings) -> Result<()> {
    let Some(keys) = keyring(settings)? else {
        anyhow::bail!(
            "setting `encryption`: no keys are configured, so there is nothing to seal with"
        );
    };
    let opened = stores::open(settings.backend, settings.store.clone()).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {elapsed} {msg}")
            .expect("progress template"),
    );
    bar.set_message(format!("sealing under key `{}`", keys.sealing_id()));
    let report = seal::rekey(opened.store.as_ref(), &keys, &|bytes, total| {
        bar.set_length(total);
        bar.inc(bytes);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish_and_clear();
    println!(
        "rekey under `{}`: {} re-sealed, {} sealed for the first time, {} already current, \
         {} changed meanwhile (written under the current key), {} history records re-sealed, \
         {} bytes read",
        keys.sealing_id(),
        report.resealed,
        report.sealed,
        report.current,
        report.raced,
        report.records,
        report.bytes
    );
    Ok(())
}

/// `stategate check`.
pub async fn check(settings: &Settings) -> Result<()> {
    let (tls, auth, _audit) = serving_parts(settings)?;
    println!("configuration: ok");
    if tls.is_some() {
        println!("  tls: certificate and key load");
    }
    println!("  listen: {}", settings.listen);
    println!("  storageType: {}", settings.backend.name);
    println!("  store settings: {:?}", settings.store);
    println!(
        "  history_keep: {}, protect_lineage: {}",
        settings.history_keep, settings.protect_lineage
    );
    println!(
        "  auth: {}",
        match (&settings.auth, &auth) {
            (AuthSetting::Disabled, _) => "none (anyone who reaches the port)",
            (_, Some(_)) => "the auth section (users, tokens, CI issuers, certificates)",
            _ => "none (loopback only)",
        }
    );
    let (states, report) = open_states(settings).await?;
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

/// The state an operator named, under its one name ([`States::canonical`]).
fn state_ref(states: &States, key: &str, workspace: Option<&str>) -> Result<StateRef> {
    let state =
        StateRef::parse(key, workspace).with_context(|| format!("invalid state key {key:?}"))?;
    states
        .canonical(&state)
        .with_context(|| format!("invalid state key {key:?}"))
}

/// `stategate state …`.
pub async fn state(settings: &Settings, cmd: StateCommand) -> Result<()> {
    let (states, _) = open_states(settings).await?;
    let audit = operator_audit(settings)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        StateCommand::List { prefix } => {
            writeln!(
                out,
                "{:<40} {:<12} {:>8} {:>12}  {:<25} LOCKED BY",
                "KEY", "WORKSPACE", "SERIAL", "SIZE", "LAST WRITE"
            )?;
            for s in states.list(&prefix).await? {
                let serial = s.serial.map_or("-".to_string(), |n| n.to_string());
                let lock = s
                    .lock
                    .map_or("-".to_string(), |l| format!("{} ({})", l.who, l.id));
                let modified = s.modified.unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<40} {:<12} {:>8} {:>12}  {:<25} {}",
                    s.state.key(),
                    s.state.workspace(),
                    serial,
                    s.size,
                    modified,
                    lock
                )?;
            }
        }
        StateCommand::History {
            key,
            workspace,
            limit,
            before,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let (versions, next_before) = if limit.is_none() && before.is_none() {
                (states.history(&state).await?, None)
            } else {
                let page = states
                    .history_page(&state, HistoryWindow::new(limit, before)?)
                    .await?;
                (page.versions, page.next_before)
            };
            writeln!(
                out,
                "{:>7} {:>8} {:>12}  {:<32} {:<25} {:<8} WHO",
                "VERSION", "SERIAL", "SIZE", "MD5", "RECORDED", "OP"
            )?;
            for v in versions {
                let serial = v.serial.map_or("-".to_string(), |n| n.to_string());
                let who = v.who.unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:>7} {:>8} {:>12}  {:<32} {:<25} {:<8} {}",
                    v.version, serial, v.size, v.md5, v.created, v.operation, who
                )?;
            }
            // On stderr, so stdout stays one table for scripts.
            if let Some(n) = next_before {
                eprintln!("older versions: --before {n}");
            }
        }
        StateCommand::Get {
            key,
            workspace,
            version,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let body = match version {
                Some(n) => states.version(&state, n).await?,
                None => states
                    .get(&state)
                    .await?
                    .with_context(|| format!("no state stored for {state}"))?,
            };
            out.write_all(&body)?;
        }
        StateCommand::Restore {
            key,
            version,
            workspace,
            force,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let body = states.version(&state, version).await?;
            let opts = WriteOptions {
                skip_lineage_check: true,
                ignore_lock: force,
                operation: "restore",
                ..Default::default()
            };
            let outcome = states.write(&state, body, opts).await?;
            audit.event(
                "restore",
                &operator_fields(&state, &[("restored_version", version.into())]),
            );
            report_write(
                &mut out,
                &state,
                outcome,
                &format!("restored version {version} of"),
            )?;
        }
        StateCommand::Purge { key, workspace } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let n = states.purge(&state).await?;
            audit.event("purge", &operator_fields(&state, &[("versions", n.into())]));
            writeln!(out, "purged {n} versions of {state}")?;
        }
        StateCommand::Push {
            key,
            file,
            workspace,
            force,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let body = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let opts = WriteOptions {
                skip_lineage_check: force,
                operation: "push",
                ..Default::default()
            };
            let outcome = states.write(&state, Bytes::from(body), opts).await?;
            audit.event("push", &operator_fields(&state, &[("force", force.into())]));
            report_write(&mut out, &state, outcome, "pushed")?;
        }
    }
    Ok(())
}

/// The audit log for operator commands: the same file as the server's.
fn operator_audit(settings: &Settings) -> Result<Audit> {
    Audit::open(settings.audit_log.as_deref())
        .with_context(|| "setting `audit_log`: cannot open the audit log")
}

/// The name of the local user running this process, from the password
/// database (a shell under `sudo`, cron or a container may set no `USER`).
fn local_user_name() -> Option<String> {
    let uid = rustix::process::getuid().as_raw();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of that plain C struct.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the size given, and
    // getpwuid_r writes only within them.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str()
        .ok()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// An operator command's audit fields: the state and the local user who
/// ran it (operator commands work on the store directly, not through auth).
fn operator_fields(
    state: &StateRef,
    extra: &[(&'static str, serde_json::Value)],
) -> Vec<(&'static str, serde_json::Value)> {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(local_user_name)
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    let mut fields = vec![
        ("state", serde_json::json!(state.key())),
        ("workspace", serde_json::json!(state.workspace())),
        ("identity", serde_json::json!(format!("operator:{user}"))),
    ];
    fields.extend(extra.iter().cloned());
    fields
}

fn report_write(
    out: &mut impl Write,
    state: &StateRef,
    outcome: WriteOutcome,
    what: &str,
) -> Result<()> {
    match outcome {
        WriteOutcome::Written {
            version: Some(v), ..
        } => writeln!(out, "{what} {state} (now version {v})")?,
        WriteOutcome::Written { version: None, .. } => writeln!(out, "{what} {state}")?,
        WriteOutcome::Unchanged => writeln!(
            out,
            "{state} already had exactly this content; nothing written"
        )?,
    }
    Ok(())
}

/// `stategate migrate-from-terraform-pg`: one line per workspace, then a
/// summary; fails when any workspace was refused or failed.
#[cfg(feature = "db")]
pub async fn migrate_from_terraform_pg(settings: &Settings, args: MigratePgArgs) -> Result<()> {
    use stategate::migrate_pg::{self, Outcome, Source};
    let (states, _) = open_states(settings).await?;
    let audit = operator_audit(settings)?;
    let source = Source {
        conn_str: args.conn_str,
        schema: args.schema,
        lock_wait: std::time::Duration::from_secs(args.lock_timeout),
    };
    let report = migrate_pg::migrate(&states, &source, &args.key).await?;
    let mut out = std::io::stdout().lock();
    let (mut copied, mut skipped, mut problems) = (0, 0, 0);
    for m in &report {
        let target = m
            .target
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.to_string());
        let what = match &m.outcome {
            Outcome::Copied { serial } => {
                copied += 1;
                if let Some(state) = &m.target {
                    audit.event(
                        "migrate",
                        &operator_fields(
                            state,
                            &[("source_workspace", m.workspace.clone().into())],
                        ),
                    );
                }
                match serial {
                    Some(s) => format!("copied (serial {s})"),
                    None => "copied".to_string(),
                }
            }
            Outcome::Identical => {
                skipped += 1;
                "skipped: already identical".to_string()
            }
            Outcome::Empty => {
                skipped += 1;
                "skipped: no state in this workspace".to_string()
            }
            Outcome::Refused(why) => {
                problems += 1;
                format!("REFUSED: {why}")
            }
            Outcome::Failed(why) => {
                problems += 1;
                format!("FAILED: {why}")
            }
        };
        writeln!(out, "{:<20} -> {:<50} {what}", m.workspace, target)?;
    }
    writeln!(
        out,
        "{} workspaces: {copied} copied, {skipped} skipped, {problems} refused or failed",
        report.len()
    )?;
    if problems > 0 {
        bail!("{problems} workspaces were not copied; see above");
    }
    Ok(())
}

/// `stategate lock …`.
pub async fn lock(settings: &Settings, cmd: LockCommand) -> Result<()> {
    let (states, _) = open_states(settings).await?;
    let audit = operator_audit(settings)?;
    match cmd {
        LockCommand::List => {
            println!(
                "{:<40} {:<12} {:<38} {:<24} {:<22} CREATED",
                "KEY", "WORKSPACE", "ID", "WHO", "OPERATION"
            );
            for (state, info) in states.locks().await? {
                println!(
                    "{:<40} {:<12} {:<38} {:<24} {:<22} {}",
                    state.key(),
                    state.workspace(),
                    info.id,
                    info.who,
                    info.operation,
                    info.created
                );
            }
        }
        LockCommand::Release { key, workspace } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            match states.lock_holder(&state).await? {
                None => println!("{state} is not locked"),
                Some(held) => {
                    states.release(&state, None).await?;
                    audit.event(
                        "force_unlock",
                        &operator_fields(
                            &state,
                            &[
                                ("lock_id", held.info.id.clone().into()),
                                ("previous_holder", held.info.who.clone().into()),
                            ],
                        ),
                    );
                    println!(
                        "released the lock on {state} held by {} (ID {})",
                        held.info.who, held.info.id
                    );
                }
            }
        }
    }
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
