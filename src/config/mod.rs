//! Configuration, in two stages as the seed Kusion document describes it:
//! raw values close to the user's words (a YAML file with `listen:` and
//! `backend: {storageType, config}`, environment variables, `-C key=value`
//! and flags), then validated, typed [`Settings`]. Every mistake is a
//! [`ConfigError`] naming the setting, so start-up stops with one clear
//! line before anything listens.
//!
//! Every server setting is one entry of [`table`]; [`sources`] reads any
//! of them by the one precedence rule (flag, environment, file, default);
//! [`resolve`] turns the values into typed settings. Store settings are
//! declared by each store as a table of [`Setting`]s in the leaf module
//! [`crate::settings`]. Unknown keys are errors, never silently ignored.
//! [`reference`] writes the configuration reference from the tables.

pub mod reference;
pub mod sources;
pub mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::auth::file::{
    FileAuth, FileCertificate, FileClaimRule, FileIssuer, FileProtected, FileRule, FileToken,
    FileUser, FileWriters,
};
use crate::notify::NotifySettings;
pub use crate::settings::{
    ConfigError, DEFAULT_MAX_BODY_BYTES, EncryptionSettings, KeySetting, KeySource, Limits,
    TlsFiles,
};
use crate::settings::{Setting, StoreSettings, merge_store_settings};
use crate::state::key::check_workspace_key_prefix;
use crate::stores::{self, Backend, COMMON_SETTINGS};
pub use sources::{FileConfig, Sources};
use table as t;

/// `workspace_key_prefix`: where non-default workspaces live. Accepted at
/// the top of the file and, as in Terraform's own backends, in
/// `backend.config`; it is the state layer's setting, not the store's.
pub const WORKSPACE_KEY_PREFIX: Setting = Setting {
    name: "workspace_key_prefix",
    aliases: &["workspaceKeyPrefix"],
    env: &["STATEGATE_WORKSPACE_KEY_PREFIX"],
    secret: false,
    default: Some("workspaces"),
    help: "prefix of the object keys of non-default workspaces: <prefix>/<workspace>/<key>",
};

/// Whether requests must authenticate.
#[derive(Debug, Clone)]
pub enum AuthSetting {
    /// No `auth` section: allowed only on loopback addresses.
    Unset,
    /// `auth: none`: anyone who reaches the port may do anything.
    Disabled,
    /// The section, to be checked and built by [`crate::auth::Auth::new`].
    Enabled(FileAuth),
}

/// The `encryption:` block of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEncryption {
    #[serde(default)]
    pub keys: Vec<FileKey>,
    #[serde(default)]
    pub require_sealed: bool,
}

/// One key of `encryption.keys`: an id and where the key is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    pub id: String,
    pub file: Option<String>,
    pub env: Option<String>,
    /// Never accepted; present so that an inline key is named and refused.
    pub key: Option<serde_yaml_ng::Value>,
}

/// What the command line says: the flags given, by flag name, and the
/// store settings of `-C key=value`, in order.
#[derive(Debug, Default, Clone)]
pub struct CommandLine {
    pub flags: BTreeMap<&'static str, String>,
    pub store: Vec<(String, String)>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings, ready to use.
#[derive(Debug)]
pub struct Settings {
    /// Where `serve` listens.
    pub listen: SocketAddr,
    /// Where `/metrics` and `/readyz` are served instead, when set, at the
    /// root of the address whatever `base_path` is.
    pub admin_listen: Option<SocketAddr>,
    /// Serve the admin address over HTTPS with these files, when set. The
    /// main address's `tls` does not apply there: probes and scrapers
    /// need no client certificate.
    pub admin_tls: Option<TlsFiles>,
    /// Every URL is served below this path (`/tfstate`), or at the root
    /// when empty; never ends in `/`.
    pub base_path: String,
    /// Peers whose `client_ip_header` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one header that names the client behind a trusted proxy.
    pub client_ip_header: crate::protocol::ClientIpHeader,
    /// Serve HTTPS with these files, when set.
    pub tls: Option<TlsFiles>,
    /// Who may do what.
    pub auth: AuthSetting,
    /// Where audit events go (JSON lines); stderr when unset.
    pub audit_log: Option<PathBuf>,
    /// Body, header, time and connection limits of the server.
    pub limits: Limits,
    pub log_format: LogFormat,
    /// Versions kept per state; 0 keeps all.
    pub history_keep: u64,
    /// Object keys of non-default workspaces start with this (validated).
    pub workspace_key_prefix: String,
    /// Seal state bodies and history with these keys, when set.
    pub encryption: Option<EncryptionSettings>,
    /// Refuse writes whose lineage or serial would overwrite newer state.
    pub protect_lineage: bool,
    /// Serve the store read-only: every change refused, nothing written.
    pub read_only: bool,
    /// The chosen storage type.
    pub backend: &'static Backend,
    /// Its settings, merged and checked against its table.
    pub store: StoreSettings,
    /// The dashboard's settings.
    pub ui: crate::ui::UiSettings,
    /// Where events are sent, and the lock-age threshold; the signing
    /// secrets are read when serving starts ([`crate::app::Serving`]).
    pub notifications: NotifySettings,
    /// The fleet explorer's settings.
    pub explore: crate::explore::ExploreSettings,
}

/// Default listen address: loopback only, so a laptop run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Merges the file, the environment and the command line into validated
/// settings. `env` looks up an environment variable (injected for tests).
pub fn resolve(
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    cli: &CommandLine,
) -> Result<Settings, ConfigError> {
    let src = Sources {
        flags: &cli.flags,
        env,
        file,
    };
    let listen = parse_listen(t::LISTEN.path, &required_text(&src, &t::LISTEN)?)?;
    let admin_listen = src
        .text(&t::ADMIN_LISTEN)?
        .map(|a| parse_listen(t::ADMIN_LISTEN.path, &a))
        .transpose()?;
    let base_path = src
        .text(&t::BASE_PATH)?
        .map(|p| parse_base_path(&p))
        .transpose()?
        .unwrap_or_default();
    let tls = tls_files(&src, &t::TLS_CERT, &t::TLS_KEY, Some(&t::TLS_CLIENT_CA))?;
    let admin_tls = tls_files(&src, &t::ADMIN_TLS_CERT, &t::ADMIN_TLS_KEY, None)?;
    if admin_tls.is_some() && admin_listen.is_none() {
        return Err(ConfigError::invalid(
            t::ADMIN_TLS_CERT.path,
            "needs admin_listen: it is the admin address's certificate",
        ));
    }
    let auth = resolve_auth(&src, listen)?;
    let audit_log = src.path(&t::AUDIT_LOG)?;
    let trusted_proxies = src
        .list(&t::TRUSTED_PROXIES)?
        .iter()
        .map(|p| parse_cidr(p))
        .collect::<Result<Vec<_>, _>>()?;
    let header = required_text(&src, &t::CLIENT_IP_HEADER)?;
    let client_ip_header = crate::protocol::ClientIpHeader::parse(&header).ok_or_else(|| {
        ConfigError::invalid(
            t::CLIENT_IP_HEADER.path,
            format!("`{header}` is not x-forwarded-for or forwarded"),
        )
    })?;
    let limits = resolve_limits(&src)?;
    let log_format = match required_text(&src, &t::LOG_FORMAT)?.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                t::LOG_FORMAT.path,
                format!("`{other}` is not text or json"),
            ));
        }
    };
    let history_keep = required(&src, &t::HISTORY_KEEP, Sources::number)?;
    let protect_lineage = required(&src, &t::PROTECT_LINEAGE, Sources::bool)?;
    let read_only = required(&src, &t::READ_ONLY, Sources::bool)?;
    let encryption = file
        .encryption
        .clone()
        .map(|value| {
            let section: FileEncryption = serde_yaml_ng::from_value(value)
                .map_err(|e| ConfigError::misshapen("encryption", e))?;
            resolve_encryption(section, &file.dir)
        })
        .transpose()?;
    let ui = resolve_ui(&src)?;
    let notifications = resolve_notifications(&src, &ui)?;
    let explore = resolve_explore(&src)?;

    let type_name = required_text(&src, &t::STORAGE_TYPE)?;
    let backend = stores::backend(&type_name).ok_or_else(|| {
        let known: Vec<_> = stores::backends().iter().map(|b| b.name).collect();
        ConfigError::invalid(
            "storageType",
            format!(
                "unknown storage type `{type_name}` (known: {})",
                known.join(", ")
            ),
        )
    })?;

    static PREFIX: Setting = WORKSPACE_KEY_PREFIX;
    let table: Vec<&'static Setting> = backend
        .settings
        .iter()
        .chain(COMMON_SETTINGS)
        .chain(std::iter::once(&PREFIX))
        .collect();
    let mut file_store = file.backend_config.clone();
    if let Some(top) = file.workspace_key_prefix.clone() {
        if let Some(key) = file_store.keys().find(|k| PREFIX.answers_to(k)) {
            return Err(ConfigError::invalid(
                PREFIX.name,
                format!("set twice in the file (at the top and as backend.config.{key})"),
            ));
        }
        file_store.insert(PREFIX.name.to_string(), top);
    }
    let mut store = merge_store_settings(
        backend.name,
        &table,
        &file_store,
        env,
        &cli.store,
        &file.backend_dir,
    )?;
    let workspace_key_prefix = store.take(PREFIX.name).unwrap_or_default();
    check_workspace_key_prefix(&workspace_key_prefix)
        .map_err(|e| ConfigError::invalid(PREFIX.name, e))?;
    Ok(Settings {
        listen,
        admin_listen,
        admin_tls,
        base_path,
        trusted_proxies,
        client_ip_header,
        tls,
        auth,
        audit_log,
        limits,
        log_format,
        history_keep,
        workspace_key_prefix,
        encryption,
        protect_lineage,
        read_only,
        backend,
        store,
        ui,
        notifications,
        explore,
    })
}

/// The `notifications:` section and the settings beside it. The CloudEvents
/// source names the server as clients reach it: its first `ui.hosts` name,
/// else the machine's.
fn resolve_notifications(
    src: &Sources,
    ui: &crate::ui::UiSettings,
) -> Result<NotifySettings, ConfigError> {
    let destinations = src
        .file
        .notifications
        .clone()
        .map(crate::notify::parse_section)
        .transpose()?
        .unwrap_or_default();
    let held = required(src, &t::LOCK_HELD_TOO_LONG, Sources::duration)?;
    let attempts = required(src, &t::NOTIFICATION_MAX_ATTEMPTS, Sources::number)?;
    let max_attempts = match u32::try_from(attempts) {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(ConfigError::invalid(
                t::NOTIFICATION_MAX_ATTEMPTS.path,
                "must be between 1 and 4294967295",
            ));
        }
    };
    let host = ui
        .hosts
        .first()
        .cloned()
        .or_else(crate::notify::hostname)
        .unwrap_or_else(|| "localhost".into());
    Ok(NotifySettings {
        destinations,
        lock_held_too_long: (!held.is_zero()).then_some(held),
        max_attempts,
        source: format!("stategate://{host}"),
    })
}

/// A setting that has a default, so is always set.
fn required<'a, T>(
    src: &Sources<'a>,
    s: &t::ServerSetting,
    read: impl Fn(&Sources<'a>, &t::ServerSetting) -> Result<Option<T>, ConfigError>,
) -> Result<T, ConfigError> {
    read(src, s)?.ok_or_else(|| ConfigError::Missing {
        setting: s.path.to_string(),
        help: s.help.to_string(),
    })
}

fn required_text(src: &Sources, s: &t::ServerSetting) -> Result<String, ConfigError> {
    required(src, s, Sources::text)
}

/// A certificate and its key, both or neither; `client_ca` needs them.
fn tls_files(
    src: &Sources,
    cert: &t::ServerSetting,
    key: &t::ServerSetting,
    client_ca: Option<&t::ServerSetting>,
) -> Result<Option<TlsFiles>, ConfigError> {
    let client_ca_path = client_ca.map(|s| src.path(s)).transpose()?.flatten();
    match (src.path(cert)?, src.path(key)?) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
            section: cert
                .path
                .split_once('.')
                .map_or(cert.path, |(section, _)| section),
            cert: cert_file,
            key: key_file,
            client_ca: client_ca_path,
        })),
        (None, None) => match client_ca {
            Some(ca) if client_ca_path.is_some() => Err(ConfigError::invalid(
                ca.path,
                format!(
                    "needs {} and {}: client certificates are only asked for over TLS",
                    cert.path, key.path
                ),
            )),
            _ => Ok(None),
        },
        (Some(_), None) => Err(ConfigError::Missing {
            setting: key.path.into(),
            help: format!("the private key of {}", cert.path),
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            setting: cert.path.into(),
            help: format!("the certificate of {}", key.path),
        }),
    }
}

/// `auth`: `none` from a flag, the environment or the file, or the
/// file's section; no section is allowed only on loopback.
fn resolve_auth(src: &Sources, listen: SocketAddr) -> Result<AuthSetting, ConfigError> {
    let word = src
        .flags
        .get(t::AUTH.flag)
        .cloned()
        .or_else(|| (src.env)(t::AUTH.env));
    let auth = match (word, src.file.auth.clone()) {
        (Some(word), _) if word.trim() == "none" => AuthSetting::Disabled,
        (Some(word), _) => {
            return Err(ConfigError::invalid(
                "auth",
                format!(
                    "`{word}`: only `none` can be given here; put users and tokens in the config file"
                ),
            ));
        }
        (None, None | Some(serde_yaml_ng::Value::Null)) => AuthSetting::Unset,
        (None, Some(serde_yaml_ng::Value::String(word))) if word.trim() == "none" => {
            AuthSetting::Disabled
        }
        (None, Some(value)) => AuthSetting::Enabled(
            serde_yaml_ng::from_value(value).map_err(|e| ConfigError::misshapen("auth", e))?,
        ),
    };
    if matches!(auth, AuthSetting::Unset) && !listen.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "auth",
            format!(
                "stategate would listen on {listen}, beyond this machine, with no auth section: anyone \
                 reaching the port could read every state; add users or tokens, or set `auth: none` \
                 (--auth none) to allow it"
            ),
        ));
    }
    Ok(auth)
}

/// The `explore:` settings, checked.
fn resolve_explore(src: &Sources) -> Result<crate::explore::ExploreSettings, ConfigError> {
    let refresh = required(src, &t::EXPLORE_REFRESH, Sources::duration)?;
    if !refresh.is_zero() && refresh < std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            t::EXPLORE_REFRESH.path,
            "must be 0 (off) or at least 1s: each refresh lists the whole store",
        ));
    }
    Ok(crate::explore::ExploreSettings {
        refresh: (!refresh.is_zero()).then_some(refresh),
    })
}

/// The `ui:` settings, checked.
fn resolve_ui(src: &Sources) -> Result<crate::ui::UiSettings, ConfigError> {
    const MIN_KEY_BYTES: usize = 32;
    let csrf_key = src.text(&t::UI_CSRF_KEY)?;
    if let Some(key) = &csrf_key
        && key.len() < MIN_KEY_BYTES
    {
        return Err(ConfigError::invalid(
            t::UI_CSRF_KEY.path,
            format!(
                "must be at least {MIN_KEY_BYTES} characters (a long random string shared by every replica)"
            ),
        ));
    }
    let at_least_one = |s: &t::ServerSetting| {
        let v = required(src, s, Sources::number)?;
        match v {
            0 => Err(ConfigError::invalid(s.path, "must be at least 1")),
            v => Ok(v),
        }
    };
    let mut hosts = Vec::new();
    for host in src.list(&t::UI_HOSTS)? {
        let host = host.to_ascii_lowercase();
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(ConfigError::invalid(
                t::UI_HOSTS.path,
                format!("`{host}` is not a host name (write names without scheme or port)"),
            ));
        }
        hosts.push(host);
    }
    Ok(crate::ui::UiSettings {
        csrf_key: csrf_key.map(String::into_bytes),
        stale_lock_hours: at_least_one(&t::UI_STALE_LOCK_HOURS)?,
        hosts,
        max_view_bytes: at_least_one(&t::UI_MAX_VIEW_BYTES)?,
    })
}

/// Checks the `encryption:` section's shape; the keys themselves are read
/// when the store is opened.
fn resolve_encryption(
    file: FileEncryption,
    base_dir: &Path,
) -> Result<EncryptionSettings, ConfigError> {
    if file.keys.is_empty() {
        return Err(ConfigError::invalid(
            "encryption.keys",
            "lists no key; generate one with `stategate gen-key FILE`",
        ));
    }
    let mut keys: Vec<KeySetting> = Vec::new();
    for (i, key) in file.keys.into_iter().enumerate() {
        let at = format!("encryption.keys[{i}]");
        let id = key.id.trim().to_string();
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(ConfigError::invalid(
                &format!("{at}.id"),
                format!("`{id}` must be 1 to 64 letters, digits, `.`, `_` or `-`"),
            ));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(ConfigError::invalid(
                &format!("{at}.id"),
                format!("`{id}` is listed twice"),
            ));
        }
        if key.key.is_some() {
            return Err(ConfigError::invalid(
                &format!("{at}.key"),
                "keys are never written into the configuration: put it in a file (`file:`) or an environment variable (`env:`)",
            ));
        }
        let source = match (key.file, key.env) {
            (Some(f), None) if !f.trim().is_empty() => KeySource::File(base_dir.join(f)),
            (None, Some(v)) if !v.trim().is_empty() => KeySource::Env(v),
            _ => {
                return Err(ConfigError::invalid(
                    &at,
                    format!("key `{id}` needs exactly one of `file` or `env`"),
                ));
            }
        };
        keys.push(KeySetting { id, source });
    }
    Ok(EncryptionSettings {
        keys,
        require_sealed: file.require_sealed,
    })
}

fn parse_listen(setting: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        ConfigError::invalid(
            setting,
            format!("`{text}` is not an address like 127.0.0.1:8080"),
        )
    })
}

/// A base path: `/` and segments of letters, digits, `.`, `_` and `-`
/// (no `.` or `..`); a trailing `/` is dropped, and `/` alone means none.
pub fn parse_base_path(text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("base_path", format!("`{text}` {why}"));
    let trimmed = text.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Err(bad("must start with `/`, like /tfstate"));
    };
    for seg in rest.split('/') {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(bad(
                "may hold only `/`-separated segments of letters, digits, `.`, `_` and `-`",
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// A CIDR range (`10.0.0.0/8`) or a single address.
fn parse_cidr(text: &str) -> Result<ipnet::IpNet, ConfigError> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            ConfigError::invalid(
                "trusted_proxies",
                format!("`{text}` is not an address or a CIDR range like 10.0.0.0/8"),
            )
        })
}

/// The connection limits, each checked against its floor.
fn resolve_limits(src: &Sources) -> Result<Limits, ConfigError> {
    let count = |s: &t::ServerSetting, min: u64| {
        let v = required(src, s, Sources::number)?;
        if v < min {
            return Err(ConfigError::invalid(
                s.path,
                format!("must be at least {min}"),
            ));
        }
        Ok(v)
    };
    let duration = |s: &t::ServerSetting| {
        let v = required(src, s, Sources::duration)?;
        if v.is_zero() {
            return Err(ConfigError::invalid(s.path, "must be longer than 0"));
        }
        Ok(v)
    };
    Ok(Limits {
        max_body_bytes: count(&t::MAX_BODY_BYTES, 1)?,
        max_lock_bytes: count(&t::MAX_LOCK_BYTES, 256)?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: count(&t::MAX_HEADER_BYTES, 8192)? as usize,
        header_timeout: duration(&t::HEADER_TIMEOUT)?,
        body_min_rate: count(&t::BODY_MIN_RATE, 0)?,
        idle_timeout: duration(&t::IDLE_TIMEOUT)?,
        max_connections: count(&t::MAX_CONNECTIONS, 1)? as usize,
        shutdown_grace: duration(&t::SHUTDOWN_GRACE)?,
    })
}

/// Splits a `-C key=value` argument. The refusal does not repeat the
/// argument: one mistyped (`secret_key:…`) holds a secret.
pub fn parse_override(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(
            "-C takes key=value, and an argument given to it has no `=`, or no key \
                  before it (not shown here: it may hold a secret)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests;
