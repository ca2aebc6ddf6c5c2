//! Configuration, in two stages as the seed Kusion document describes it:
//! raw values close to the user's words (a YAML file with `listen:` and
//! `backend: {storageType, config}`, environment variables, `-C key=value`
//! and flags), merged per key in one function ([`resolve`]) where the command
//! line beats the environment and the environment beats the file; then
//! validated, typed [`Settings`]. Every mistake is a [`ConfigError`] naming
//! the setting, so start-up stops with one clear line before anything
//! listens.
//!
//! Store settings are declared by each store as a table of [`Setting`]s
//! (name, spellings from both seed documents, environment variables,
//! secrecy, default) in the leaf module [`crate::settings`]. Unknown keys
//! are errors, never silently ignored.
//!
//! Each section of the file that a lower layer reads becomes a typed
//! struct of [`crate::settings`] ([`Limits`], [`TlsFiles`]) or of its own
//! module (`auth`), so a new section lands as one more field here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::auth::file::{
    FileAuth, FileCertificate, FileClaimRule, FileIssuer, FileProtected, FileRule, FileToken,
    FileUser, FileWriters,
};
pub use crate::settings::{
    ConfigError, DEFAULT_MAX_BODY_BYTES, EncryptionSettings, KeySetting, KeySource, Limits,
    TlsFiles,
};
use crate::settings::{
    Setting, StoreSettings, merge_store_settings, parse_bool, parse_duration, parse_u64,
    yaml_scalar,
};
use crate::state::key::check_workspace_key_prefix;
use crate::stores::{self, Backend, COMMON_SETTINGS};

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

/// The configuration file, exactly as the user wrote it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub base_path: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
    pub tls: Option<FileTls>,
    /// `none`, or the section [`FileAuth`] describes.
    pub auth: Option<serde_yaml_ng::Value>,
    pub audit_log: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_lock_bytes: Option<serde_yaml_ng::Value>,
    pub max_header_bytes: Option<serde_yaml_ng::Value>,
    pub header_timeout: Option<serde_yaml_ng::Value>,
    pub body_min_rate: Option<serde_yaml_ng::Value>,
    pub idle_timeout: Option<serde_yaml_ng::Value>,
    pub max_connections: Option<serde_yaml_ng::Value>,
    pub shutdown_grace: Option<serde_yaml_ng::Value>,
    pub log_format: Option<String>,
    pub history_keep: Option<u64>,
    pub workspace_key_prefix: Option<String>,
    pub protect_lineage: Option<bool>,
    pub encryption: Option<FileEncryption>,
    pub backend: Option<FileBackend>,
    /// The dashboard's section.
    pub ui: Option<crate::ui::FileUi>,
}

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

/// The `tls:` block of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
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

/// The `backend:` block of the file, as in the seed Kusion document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    #[serde(rename = "storageType", alias = "storage_type")]
    pub storage_type: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml_ng::Value>,
}

impl FileConfig {
    /// Reads and parses a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(&text).map_err(|e| file_error(e.to_string()))
    }
}

/// What the command line says; `None` means not given.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub base_path: Option<String>,
    /// Comma-separated CIDR ranges.
    pub trusted_proxies: Option<String>,
    /// `x-forwarded-for` or `forwarded`.
    pub client_ip_header: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
    /// `--auth none`.
    pub auth: Option<String>,
    pub audit_log: Option<String>,
    pub storage_type: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub log_format: Option<String>,
    /// Connection limits given as flags, by setting name (`header_timeout`).
    pub limits: Vec<(&'static str, String)>,
    /// `-C key=value`, in order.
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
    /// Where `/metrics` and `/readyz` are served instead, when set.
    pub admin_listen: Option<SocketAddr>,
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
    /// The chosen storage type.
    pub backend: &'static Backend,
    /// Its settings, merged and checked against its table.
    pub store: StoreSettings,
    /// The dashboard's settings.
    pub ui: crate::ui::UiSettings,
}

/// Default listen address: loopback only, so a laptop run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default number of versions kept per state.
pub const DEFAULT_HISTORY_KEEP: u64 = 100;

/// Merges the file, the environment and the command line into validated
/// settings. `env` looks up an environment variable (injected for tests).
/// `base_dir` is where relative store paths start.
pub fn resolve(
    mut file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    cli: &CliOverrides,
    base_dir: &Path,
) -> Result<Settings, ConfigError> {
    let file_backend = file.backend.take().unwrap_or_default();

    let listen_text = cli
        .listen
        .clone()
        .or_else(|| env("STATEGATE_LISTEN"))
        .or(file.listen.take())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen = parse_listen("listen", &listen_text)?;
    let admin_listen = cli
        .admin_listen
        .clone()
        .or_else(|| env("STATEGATE_ADMIN_LISTEN"))
        .or(file.admin_listen.take())
        .filter(|a| !a.trim().is_empty())
        .map(|a| parse_listen("admin_listen", &a))
        .transpose()?;
    let base_path = cli
        .base_path
        .clone()
        .or_else(|| env("STATEGATE_BASE_PATH"))
        .or(file.base_path.take())
        .map(|p| parse_base_path(&p))
        .transpose()?
        .unwrap_or_default();
    let proxies: Vec<String> = match cli
        .trusted_proxies
        .clone()
        .or_else(|| env("STATEGATE_TRUSTED_PROXIES"))
    {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => file.trusted_proxies.take().unwrap_or_default(),
    };
    let file_tls = file.tls.take().unwrap_or_default();
    let pick = |flag: &Option<String>, var: &str, from_file: Option<String>| {
        flag.clone()
            .or_else(|| env(var))
            .or(from_file)
            .filter(|v| !v.trim().is_empty())
            .map(|v| base_dir.join(v))
    };
    let tls_cert = pick(&cli.tls_cert, "STATEGATE_TLS_CERT", file_tls.cert);
    let tls_key = pick(&cli.tls_key, "STATEGATE_TLS_KEY", file_tls.key);
    let client_ca = pick(
        &cli.tls_client_ca,
        "STATEGATE_TLS_CLIENT_CA",
        file_tls.client_ca,
    );
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) if client_ca.is_none() => None,
        (None, None) => {
            return Err(ConfigError::invalid(
                "tls.client_ca",
                "needs tls.cert and tls.key: client certificates are only asked for over TLS",
            ));
        }
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                setting: "tls.key".into(),
                help: "the private key of tls.cert".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                setting: "tls.cert".into(),
                help: "the certificate of tls.key".into(),
            });
        }
    };
    let auth_word = cli.auth.clone().or_else(|| env("STATEGATE_AUTH"));
    let auth = match (auth_word, file.auth.take()) {
        (Some(word), _) if word.trim() == "none" => AuthSetting::Disabled,
        (Some(word), _) => {
            return Err(ConfigError::invalid(
                "auth",
                format!(
                    "`{word}`: only `none` can be given here; put users and tokens in the config file"
                ),
            ));
        }
        (None, None) => AuthSetting::Unset,
        (None, Some(serde_yaml_ng::Value::String(word))) if word.trim() == "none" => {
            AuthSetting::Disabled
        }
        (None, Some(value)) => AuthSetting::Enabled(
            serde_yaml_ng::from_value(value).map_err(|e| ConfigError::invalid("auth", e))?,
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
    let audit_log = cli
        .audit_log
        .clone()
        .or_else(|| env("STATEGATE_AUDIT_LOG"))
        .or(file.audit_log.take())
        .filter(|p| !p.trim().is_empty())
        .map(|p| base_dir.join(p));
    let trusted_proxies = proxies
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(parse_cidr)
        .collect::<Result<Vec<_>, _>>()?;

    let client_ip_header = match cli
        .client_ip_header
        .clone()
        .or_else(|| env("STATEGATE_CLIENT_IP_HEADER"))
        .or(file.client_ip_header.take())
    {
        None => crate::protocol::ClientIpHeader::default(),
        Some(name) => crate::protocol::ClientIpHeader::parse(&name).ok_or_else(|| {
            ConfigError::invalid(
                "client_ip_header",
                format!("`{name}` is not x-forwarded-for or forwarded"),
            )
        })?,
    };

    let max_body_bytes = match cli.max_body_bytes {
        Some(v) => v,
        None => match env("STATEGATE_MAX_BODY_BYTES") {
            Some(v) => parse_u64("max_body_bytes", &v)?,
            None => file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        },
    };
    if max_body_bytes == 0 {
        return Err(ConfigError::invalid(
            "max_body_bytes",
            "must be greater than 0",
        ));
    }
    let limits = resolve_limits(&file, env, cli, max_body_bytes)?;

    let log_text = cli
        .log_format
        .clone()
        .or_else(|| env("STATEGATE_LOG_FORMAT"))
        .or(file.log_format.take())
        .unwrap_or_else(|| "text".to_string());
    let log_format = match log_text.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                "log_format",
                format!("`{other}` is not text or json"),
            ));
        }
    };

    let history_keep = match env("STATEGATE_HISTORY_KEEP") {
        Some(v) => parse_u64("history_keep", &v)?,
        None => file.history_keep.unwrap_or(DEFAULT_HISTORY_KEEP),
    };
    let protect_lineage = match env("STATEGATE_PROTECT_LINEAGE") {
        Some(v) => parse_bool(&v).ok_or_else(|| {
            ConfigError::invalid("protect_lineage", format!("`{v}` is not true or false"))
        })?,
        None => file.protect_lineage.unwrap_or(true),
    };

    let encryption = file
        .encryption
        .take()
        .map(|e| resolve_encryption(e, base_dir))
        .transpose()?;
    let ui = crate::ui::UiSettings::resolve(file.ui.take(), env)?;

    let type_name = cli
        .storage_type
        .clone()
        .or_else(|| env("STATEGATE_STORAGE_TYPE"))
        .or(file_backend.storage_type)
        .unwrap_or_else(|| "local".to_string());
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
    let mut file_store = file_backend.config;
    if let Some(top) = file.workspace_key_prefix.take() {
        if let Some(key) = file_store.keys().find(|k| PREFIX.answers_to(k)) {
            return Err(ConfigError::invalid(
                PREFIX.name,
                format!("set twice in the file (at the top and as backend.config.{key})"),
            ));
        }
        file_store.insert(PREFIX.name.to_string(), serde_yaml_ng::Value::String(top));
    }
    let mut store =
        merge_store_settings(backend.name, &table, &file_store, env, &cli.store, base_dir)?;
    let workspace_key_prefix = store.take(PREFIX.name).unwrap_or_default();
    check_workspace_key_prefix(&workspace_key_prefix)
        .map_err(|e| ConfigError::invalid(PREFIX.name, e))?;
    Ok(Settings {
        listen,
        admin_listen,
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
        backend,
        store,
        ui,
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

/// Picks one limit's text: flag, then environment, then file.
fn limit_text(
    name: &'static str,
    file: &Option<serde_yaml_ng::Value>,
    env: &dyn Fn(&str) -> Option<String>,
    cli: &CliOverrides,
) -> Result<Option<String>, ConfigError> {
    if let Some((_, v)) = cli.limits.iter().rev().find(|(n, _)| *n == name) {
        return Ok(Some(v.clone()));
    }
    if let Some(v) = env(&format!("STATEGATE_{}", name.to_ascii_uppercase())) {
        return Ok(Some(v));
    }
    file.as_ref().map(|v| yaml_scalar(name, v)).transpose()
}

fn resolve_limits(
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    cli: &CliOverrides,
    max_body_bytes: u64,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let count = |name, file: &Option<serde_yaml_ng::Value>, default: u64, min: u64| {
        let v = match limit_text(name, file, env, cli)? {
            Some(t) => parse_u64(name, &t)?,
            None => default,
        };
        if v < min {
            return Err(ConfigError::invalid(
                name,
                format!("must be at least {min}"),
            ));
        }
        Ok(v)
    };
    let duration = |name, file: &Option<serde_yaml_ng::Value>, default: Duration| {
        let v = match limit_text(name, file, env, cli)? {
            Some(t) => parse_duration(name, &t)?,
            None => default,
        };
        if v.is_zero() {
            return Err(ConfigError::invalid(name, "must be longer than 0"));
        }
        Ok(v)
    };
    Ok(Limits {
        max_body_bytes,
        max_lock_bytes: count(
            "max_lock_bytes",
            &file.max_lock_bytes,
            d.max_lock_bytes,
            256,
        )?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: count(
            "max_header_bytes",
            &file.max_header_bytes,
            d.max_header_bytes as u64,
            8192,
        )? as usize,
        header_timeout: duration("header_timeout", &file.header_timeout, d.header_timeout)?,
        body_min_rate: count("body_min_rate", &file.body_min_rate, d.body_min_rate, 0)?,
        idle_timeout: duration("idle_timeout", &file.idle_timeout, d.idle_timeout)?,
        max_connections: count(
            "max_connections",
            &file.max_connections,
            d.max_connections as u64,
            1,
        )? as usize,
        shutdown_grace: duration("shutdown_grace", &file.shutdown_grace, d.shutdown_grace)?,
    })
}

/// Splits a `-C key=value` argument.
pub fn parse_override(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{arg}` is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn file(yaml: &str) -> FileConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// Why a configuration file alone is refused.
    fn refusal(yaml: &str) -> String {
        resolve(
            file(yaml),
            &no_env,
            &CliOverrides::default(),
            Path::new("."),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn defaults_are_local_on_loopback() {
        let s = resolve(
            FileConfig::default(),
            &no_env,
            &CliOverrides::default(),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.backend.name, "local");
        assert_eq!(s.store.get("path"), Some("./stategate-data"));
        assert_eq!(s.workspace_key_prefix, "workspaces");
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.limits.max_body_bytes, 512 * 1024 * 1024);
        assert_eq!(s.limits.header_timeout, Duration::from_secs(15));
        assert_eq!(s.history_keep, 100);
        assert!(s.protect_lineage);
    }

    #[test]
    fn proxy_settings_are_parsed_and_checked() {
        let f = file(
            "base_path: /tfstate/\ntrusted_proxies: [10.0.0.0/8, 127.0.0.1]\nadmin_listen: 127.0.0.1:9090\n",
        );
        let s = resolve(f, &no_env, &CliOverrides::default(), Path::new(".")).unwrap();
        assert_eq!(s.base_path, "/tfstate");
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(s.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(s.admin_listen.unwrap().port(), 9090);
        let env =
            |k: &str| (k == "STATEGATE_TRUSTED_PROXIES").then(|| "192.168.0.0/16, ::1".to_string());
        let s = resolve(
            FileConfig::default(),
            &env,
            &CliOverrides::default(),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.base_path, "");
        for (yaml, setting) in [
            ("base_path: tfstate\n", "base_path"),
            ("base_path: /a/../b\n", "base_path"),
            ("base_path: /a b\n", "base_path"),
            ("trusted_proxies: [10.0.0.0/99]\n", "trusted_proxies"),
            ("admin_listen: nowhere\n", "admin_listen"),
        ] {
            let e = refusal(yaml);
            assert!(e.contains(setting), "{yaml}: {e}");
        }
    }

    #[test]
    fn limits_merge_and_are_checked() {
        let f =
            file("header_timeout: 20\nidle_timeout: 2m\nmax_connections: 7\nbody_min_rate: 0\n");
        let env = |k: &str| match k {
            "STATEGATE_HEADER_TIMEOUT" => Some("500ms".to_string()),
            "STATEGATE_MAX_LOCK_BYTES" => Some("1000".to_string()),
            _ => None,
        };
        let cli = CliOverrides {
            limits: vec![("max_connections", "9".into())],
            ..Default::default()
        };
        let s = resolve(f, &env, &cli, Path::new(".")).unwrap();
        assert_eq!(s.limits.header_timeout, Duration::from_millis(500));
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.limits.max_connections, 9);
        assert_eq!(s.limits.max_lock_bytes, 1000);
        assert_eq!(s.limits.body_min_rate, 0);
        assert_eq!(s.limits.shutdown_grace, Duration::from_secs(30));
        for (yaml, setting) in [
            ("header_timeout: 0\n", "header_timeout"),
            ("idle_timeout: soon\n", "idle_timeout"),
            ("max_connections: 0\n", "max_connections"),
            ("max_header_bytes: 100\n", "max_header_bytes"),
            ("shutdown_grace: 5x\n", "shutdown_grace"),
        ] {
            let e = refusal(yaml);
            assert!(e.contains(setting), "{yaml}: {e}");
        }
    }

    #[test]
    fn command_line_beats_environment_beats_file() {
        let f = file(
            "listen: 127.0.0.1:1\nbackend:\n  storageType: sqlite\n  config:\n    path: from-file.db\n    workspace_key_prefix: filews\n",
        );
        let env = |k: &str| match k {
            "STATEGATE_LISTEN" => Some("127.0.0.1:2".to_string()),
            "STATEGATE_SQLITE_PATH" => Some("from-env.db".to_string()),
            "STATEGATE_WORKSPACE_KEY_PREFIX" => Some("envws".to_string()),
            _ => None,
        };
        let cli = CliOverrides {
            listen: Some("127.0.0.1:3".into()),
            store: vec![("path".into(), "from-cli.db".into())],
            ..Default::default()
        };
        let s = resolve(f, &env, &cli, Path::new("/base")).unwrap();
        assert_eq!(s.listen.port(), 3);
        assert_eq!(s.backend.name, "sqlite");
        assert_eq!(s.store.get("path"), Some("from-cli.db"));
        assert_eq!(
            s.store.path("path"),
            Some(PathBuf::from("/base/from-cli.db"))
        );
        assert_eq!(s.workspace_key_prefix, "envws");
    }

    #[test]
    fn environment_beats_file_when_no_flag() {
        let f = file("listen: 127.0.0.1:1\n");
        let env = |k: &str| (k == "STATEGATE_LISTEN").then(|| "127.0.0.1:2".to_string());
        let s = resolve(f, &env, &CliOverrides::default(), Path::new(".")).unwrap();
        assert_eq!(s.listen.port(), 2);
    }

    #[test]
    fn unknown_store_key_is_named() {
        let cli = CliOverrides {
            store: vec![("bucket".into(), "x".into())],
            ..Default::default()
        };
        let err = resolve(FileConfig::default(), &no_env, &cli, Path::new(".")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unknown { setting, .. } if setting == "bucket"),
            "{err}"
        );
        assert!(err.to_string().contains("storageType local"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let err = serde_yaml_ng::from_str::<FileConfig>("listne: x\n").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn unknown_storage_type_is_named() {
        let cli = CliOverrides {
            storage_type: Some("floppy".into()),
            ..Default::default()
        };
        let err = resolve(FileConfig::default(), &no_env, &cli, Path::new(".")).unwrap_err();
        assert!(
            err.to_string().contains("storageType") && err.to_string().contains("floppy"),
            "{err}"
        );
    }

    #[test]
    fn bad_listen_is_named() {
        let cli = CliOverrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        let err = resolve(FileConfig::default(), &no_env, &cli, Path::new(".")).unwrap_err();
        assert!(err.to_string().starts_with("setting `listen`"), "{err}");
    }

    #[test]
    fn both_spellings_in_one_file_are_refused() {
        let f =
            file("backend:\n  config:\n    workspace_key_prefix: a\n    workspaceKeyPrefix: b\n");
        let err = resolve(f, &no_env, &CliOverrides::default(), Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("set twice"), "{err}");
    }

    #[test]
    fn yaml_numbers_and_bools_become_values() {
        let f = file("backend:\n  config:\n    allow_unsafe_locks: true\n");
        let s = resolve(f, &no_env, &CliOverrides::default(), Path::new(".")).unwrap();
        assert_eq!(s.store.bool("allow_unsafe_locks"), Ok(true));
    }

    #[test]
    fn workspace_key_prefix_is_a_top_level_setting_checked_once() {
        let s = resolve(
            file("workspace_key_prefix: \"env:\"\n"),
            &no_env,
            &CliOverrides::default(),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.workspace_key_prefix, "env:");
        assert_eq!(s.store.get("workspace_key_prefix"), None);
        let twice =
            refusal("workspace_key_prefix: a\nbackend:\n  config:\n    workspaceKeyPrefix: b\n");
        assert!(
            twice.starts_with("setting `workspace_key_prefix`"),
            "{twice}"
        );
        let reserved = refusal("workspace_key_prefix: .stategate/x\n");
        assert!(
            reserved.starts_with("setting `workspace_key_prefix`"),
            "{reserved}"
        );
    }

    #[test]
    fn override_needs_key_and_equals() {
        assert_eq!(parse_override("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_override("novalue").is_err());
        assert!(parse_override("=x").is_err());
    }
}
