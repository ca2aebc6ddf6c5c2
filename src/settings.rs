//! The leaf of the configuration: what every layer may read and nothing
//! of the crate is imported here. Stores declare their settings as tables
//! of [`Setting`]s and read the merged values from [`StoreSettings`]; the
//! server's typed sections ([`Limits`], [`TlsFiles`]) live here so the
//! layers that use them need not know the file format; every mistake is a
//! [`ConfigError`] naming the setting. [`crate::config`] reads the file,
//! the environment and the command line and builds these.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One setting a store accepts.
#[derive(Debug)]
pub struct Setting {
    /// The canonical name, as documented and as stores look it up.
    pub name: &'static str,
    /// Other accepted spellings (Kusion's and Terraform's documents differ: `accessKeyID`
    /// in Kusion, `access_key` in Terraform).
    pub aliases: &'static [&'static str],
    /// Environment variables that set it, first one found wins.
    pub env: &'static [&'static str],
    /// Never shown in logs, errors or `Debug` output.
    pub secret: bool,
    /// Value used when no source sets it.
    pub default: Option<&'static str>,
    /// One line for the README and error messages.
    pub help: &'static str,
}

impl Setting {
    /// Whether `key` is this setting's name or one of its aliases.
    pub fn answers_to(&self, key: &str) -> bool {
        self.name == key || self.aliases.contains(&key)
    }
}

/// A configuration mistake. The message always names the setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting has a value that cannot be used.
    #[error("setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
    /// A required setting is set nowhere.
    #[error("setting `{setting}` is required ({help})")]
    Missing { setting: String, help: String },
    /// A key no store or server setting answers to.
    #[error("unknown setting `{setting}` {context}")]
    Unknown { setting: String, context: String },
    /// The configuration file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ConfigError {
    /// Builds [`ConfigError::Invalid`].
    pub fn invalid(setting: &str, reason: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            setting: setting.to_string(),
            reason: reason.to_string(),
        }
    }

    /// [`ConfigError::invalid`] for a section that did not take the shape
    /// expected, without the values serde's message quotes
    /// ([`without_quoted_text`]): a secret written in the wrong place.
    pub fn misshapen(setting: &str, e: impl fmt::Display) -> Self {
        Self::invalid(setting, without_quoted_text(&e.to_string()))
    }
}

/// A message of serde's without the text it quotes: serde quotes a string
/// of the wrong type whole (`invalid type: string "…", expected a
/// sequence`), which may be a secret (a key or token written where a
/// section was expected, a state's value). Such messages are logged and
/// sent on, so each double-quoted text goes, with the space before it.
pub fn without_quoted_text(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(rest[..open].strip_suffix(' ').unwrap_or(&rest[..open]));
        let mut escaped = false;
        let close = rest[open + 1..].char_indices().find_map(|(i, c)| {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return Some(open + 1 + i + 1),
                _ => {}
            }
            None
        });
        rest = close.map_or("", |close| &rest[close..]);
    }
    out.push_str(rest);
    without_quoted_values(&out)
}

/// A message without the other values serde quotes, in backticks after
/// their kind (`invalid type: integer `123456`, expected a string`): a
/// number may be a secret as well. Backticks elsewhere name things.
fn without_quoted_values(message: &str) -> String {
    const KINDS: [&str; 4] = ["integer `", "floating point `", "boolean `", "character `"];
    let mut out = String::new();
    let mut rest = message;
    while let Some((at, kind)) = KINDS
        .iter()
        .filter_map(|k| rest.find(k).map(|at| (at, k)))
        .min_by_key(|(at, _)| *at)
    {
        let value = at + kind.len();
        out.push_str(&rest[..value - 2]);
        rest = rest[value..]
            .find('`')
            .map_or("", |close| &rest[value + close + 1..]);
    }
    out.push_str(rest);
    out
}

/// A URL without the user and password it may carry (`https://u:p@host`
/// as `https://<redacted>@host`); any other text as it is.
pub fn without_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = text.find("://") else {
        return text.into();
    };
    let authority_start = scheme_end + 3;
    let authority_end = text[authority_start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| authority_start + i);
    match text[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}<redacted>{}",
            &text[..authority_start],
            &text[authority_start + at..]
        )
        .into(),
        None => text.into(),
    }
}

/// `name` as a message may show it: a setting's or an environment
/// variable's name is letters, digits, `_`, `.`, `-` and `[]`. Anything
/// else may be a secret typed where its name belongs (`-C secret:…`, a
/// key given where the name of its variable goes), and is not shown.
pub fn shown_name(name: &str) -> String {
    let named = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-[]".contains(c));
    match named {
        true => name.to_string(),
        false => "(not shown: not shaped as a name, it may hold a secret)".to_string(),
    }
}

/// The certificate files of HTTPS. They are read at start-up (a wrong one
/// stops it, naming the setting) and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The section they were set in (`tls`, `admin_tls`), which errors
    /// name.
    pub section: &'static str,
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// CA certificates, PEM; when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// How the server protects itself from slow, idle and greedy clients. The
/// defaults protect a server nobody has tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest state body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Largest LOCK or UNLOCK body accepted; larger ones get 413. A lock is
    /// sent back with every 409 and 423, so it must stay small.
    pub max_lock_bytes: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// A request's head must arrive within this, or the connection closes.
    pub header_timeout: Duration,
    /// Bytes per second an upload must average over each 10-second window,
    /// or it is cut off with 408; 0 turns the check off.
    pub body_min_rate: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it new connections get 503 and
    /// are closed, so the accept loop never starves.
    pub max_connections: usize,
    /// How long requests in flight may run after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_lock_bytes: 64 * 1024,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(15),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Default request body limit: 512 MiB (states of 250 MB exist in the wild).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 512 * 1024 * 1024;

/// Where an encryption key comes from: never the configuration itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the key, base64.
    File(PathBuf),
    /// An environment variable holding the key, base64.
    Env(String),
}

/// One key of `encryption.keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetting {
    /// Names the key in every sealed object's header.
    pub id: String,
    pub source: KeySource,
}

/// The `encryption:` section: the keys state bodies are sealed with (the
/// first seals, every one opens) and whether unsealed bodies are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSettings {
    pub keys: Vec<KeySetting>,
    pub require_sealed: bool,
}

/// The merged settings of one store. Secrets are hidden from `Debug`.
#[derive(Clone)]
pub struct StoreSettings {
    storage_type: &'static str,
    values: BTreeMap<&'static str, String>,
    secrets: Vec<&'static str>,
    /// The configuration file's directory, where relative paths written in
    /// the file start; other relative paths start at the working directory.
    file_dir: PathBuf,
    /// The settings whose value came from the file.
    from_file: Vec<&'static str>,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.values {
            if self.secrets.contains(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, &without_userinfo(v));
            }
        }
        map.finish()
    }
}

impl StoreSettings {
    /// Settings from a store's table and `pairs` given as on the command
    /// line, with the table's defaults (tests, tools).
    pub fn from_table(
        storage_type: &'static str,
        table: &[Setting],
        pairs: &[(&str, &str)],
    ) -> Result<Self, ConfigError> {
        let table: Vec<&Setting> = table.iter().collect();
        let cli: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        merge_store_settings(
            storage_type,
            &table,
            &BTreeMap::new(),
            &|_| None,
            &cli,
            Path::new("."),
        )
    }

    /// Builds settings directly from canonical names, without defaults.
    pub fn from_pairs(storage_type: &'static str, pairs: &[(&'static str, &str)]) -> Self {
        StoreSettings {
            storage_type,
            values: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            secrets: Vec::new(),
            file_dir: PathBuf::from("."),
            from_file: Vec::new(),
        }
    }

    /// The storage type these settings belong to.
    pub fn storage_type(&self) -> &'static str {
        self.storage_type
    }

    /// A setting's value, if set anywhere or defaulted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A setting that must be present.
    pub fn require(&self, name: &str) -> Result<&str, ConfigError> {
        self.get(name).ok_or_else(|| self.missing(name))
    }

    /// That a setting this store needs is not given.
    fn missing(&self, name: &str) -> ConfigError {
        ConfigError::Missing {
            setting: name.to_string(),
            help: format!("storageType {}", self.storage_type),
        }
    }

    /// A credential (a key id, a secret, a session token): spaces and line
    /// ends around it are dropped (a YAML block scalar or a file read into
    /// a variable ends in one), and anything else that an HTTP header
    /// cannot carry is refused naming the setting, never showing the value;
    /// the request would otherwise fail as if the endpoint were wrong.
    pub fn credential(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.get(name).map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                name,
                "holds a space, a control character or a non-ASCII character, which no \
                 credential has; give the value alone",
            ));
        }
        Ok(Some(value.to_string()))
    }

    /// A [`StoreSettings::credential`] that must be present.
    pub fn require_credential(&self, name: &str) -> Result<String, ConfigError> {
        self.credential(name)?.ok_or_else(|| self.missing(name))
    }

    /// A boolean setting (`true`/`false`, `1`/`0`, `yes`/`no`); absent is false.
    pub fn bool(&self, name: &str) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(v)
                .ok_or_else(|| ConfigError::invalid(name, format!("`{v}` is not true or false"))),
        }
    }

    /// A path setting: a relative one is taken from the configuration
    /// file's directory when the file set it, from the working directory
    /// when the environment or the command line did.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let value = self.get(name)?;
        Some(match self.from_file.contains(&name) {
            true => self.file_dir.join(value),
            false => PathBuf::from(value),
        })
    }

    /// Removes a setting, for one that another layer reads.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.values.remove(name).filter(|v| !v.is_empty())
    }

    /// A whole number setting; `None` when unset.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        self.get(name).map(|v| parse_u64(name, v)).transpose()
    }

    /// A time limit longer than 0, as every duration setting takes it
    /// (`60`, `60s`, `500ms`, `2m`); its default comes from the store's
    /// table.
    pub fn duration(&self, name: &str) -> Result<Duration, ConfigError> {
        let d = parse_duration(name, self.require(name)?)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(name, "must be longer than 0"));
        }
        Ok(d)
    }
}

/// The longest bucket store `prefix` accepted, in bytes: it leaves at
/// least 767 bytes of every object name (S3's stop at 1,024, OSS's at
/// 1,023) to the state key and the names derived from it.
pub const MAX_BUCKET_PREFIX_BYTES: usize = 256;

/// A bucket store's `prefix`: [`normalise_prefix`], and no longer than
/// [`MAX_BUCKET_PREFIX_BYTES`] (`service` and `max_object_name` say why in
/// the refusal).
pub fn bucket_prefix(
    raw: &str,
    service: &str,
    max_object_name: usize,
) -> Result<String, ConfigError> {
    let prefix = normalise_prefix(raw)?;
    if prefix.len() > MAX_BUCKET_PREFIX_BYTES {
        return Err(ConfigError::invalid(
            "prefix",
            format!(
                "is {} bytes; at most {MAX_BUCKET_PREFIX_BYTES} are accepted, as {service} object names stop at \
                 {max_object_name} bytes and the state keys need the rest",
                prefix.len()
            ),
        ));
    }
    Ok(prefix)
}

/// The directory holding `path`: its parent, or `.` for a bare file name.
pub fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path` made absolute, symbolic links resolved as far as it exists (a
/// store's path may not exist yet): the one name two spellings of a path
/// share, to tell whether one store's path lies inside another's.
pub fn resolved_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Validates a bucket store's `prefix` setting, the same way for every
/// store: one or more `/`-separated segments without empty, `.` or `..`
/// parts (which servers or HTTP clients would resolve, reaching outside the
/// prefix or breaking the request signature), nor spaces at either end of
/// one (the OSS SDK trims the keys of a listing, so no listed key began
/// with such a prefix: history and leases were never found). Returns it
/// with one trailing `/`; an empty or all-`/` value is no prefix at all.
pub fn normalise_prefix(raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let bad = trimmed.split('/').any(|seg| {
        seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.chars().any(|c| c.is_control() || c == '\\')
            || seg.trim() != seg
    });
    if bad {
        return Err(ConfigError::invalid(
            "prefix",
            format!(
                "`{raw}` must be `/`-separated names without empty, `.` or `..` parts, \
                 or spaces at either end of one"
            ),
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// A bucket server's address, from an `endpoint` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host` or `host:port`.
    pub host: String,
}

impl Endpoint {
    /// Accepts `host[:port]` (HTTPS assumed) or an `http(s)://host[:port]`
    /// URL with at most a trailing `/`, the same way for every bucket
    /// store. A path, query, user name or other scheme is refused: the
    /// store would sign requests for one address and send them to another.
    pub fn parse(raw: &str) -> Result<Endpoint, ConfigError> {
        let raw = raw.trim();
        // Repeated without the user and password a URL may carry.
        let shown = without_userinfo(raw);
        let bad = |why: &str| {
            ConfigError::invalid(
                "endpoint",
                format!(
                    "`{shown}` {why}: give a host like s3.example.com or a URL like http://127.0.0.1:9000"
                ),
            )
        };
        let (scheme, rest) = match raw.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some((other, _)) => {
                return Err(bad(&format!("has the scheme `{other}`, not http or https")));
            }
            None => ("https", raw),
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() || host.contains(['/', '?', '#', ' ', '@', '\\']) {
            return Err(bad("is not a host name with an optional port"));
        }
        Ok(Endpoint {
            scheme: scheme.to_string(),
            host: host.to_string(),
        })
    }

    /// `scheme://host[:port]`, without a trailing `/`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn yaml_scalar(setting: &str, value: &serde_yaml_ng::Value) -> Result<String, ConfigError> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        // YAML reads `1.10` as the number 1.1: the text written is lost,
        // and no setting takes a fraction.
        Value::Number(n) if n.is_f64() => Err(ConfigError::invalid(
            setting,
            "is written as a decimal number, which YAML reads as a number (`1.10` as 1.1); \
             write the value in quotes",
        )),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(ConfigError::invalid(
            setting,
            "must be a single value, not a list or map",
        )),
    }
}

/// A duration: a whole number with an optional unit, `ms`, `s` (the
/// default), `m` or `h`: `15`, `15s`, `500ms`, `2m`.
pub fn parse_duration(setting: &str, v: &str) -> Result<Duration, ConfigError> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        ConfigError::invalid(
            setting,
            format!("`{v}` is not a duration like 15s, 500ms or 2m"),
        )
    })?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(|| {
        ConfigError::invalid(
            setting,
            format!("`{v}` is not a duration like 15s, 500ms or 2m"),
        )
    })
}

pub fn parse_u64(setting: &str, v: &str) -> Result<u64, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::invalid(setting, format!("`{v}` is not a whole number")))
}

/// Merges one store's settings: defaults, then the file's `backend.config`,
/// then environment variables, then `-C key=value`; later sources win per
/// key. Keys are matched against `table` in any of their spellings;
/// anything else is an error. `file_dir` is the configuration file's
/// directory.
pub fn merge_store_settings(
    storage_type: &'static str,
    table: &[&Setting],
    file: &BTreeMap<String, serde_yaml_ng::Value>,
    env: &dyn Fn(&str) -> Option<String>,
    cli: &[(String, String)],
    file_dir: &Path,
) -> Result<StoreSettings, ConfigError> {
    let find = |key: &str| -> Result<&Setting, ConfigError> {
        table
            .iter()
            .copied()
            .find(|s| s.answers_to(key))
            .ok_or_else(|| {
                let known: Vec<_> = table.iter().map(|s| s.name).collect();
                ConfigError::Unknown {
                    setting: shown_name(key),
                    context: format!(
                        "for storageType {storage_type} (known: {})",
                        known.join(", ")
                    ),
                }
            })
    };

    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    for s in table {
        if let Some(d) = s.default {
            values.insert(s.name, d.to_string());
        }
    }

    // Within one source a setting may appear once, in whichever spelling.
    let mut seen = BTreeMap::new();
    for (key, value) in file {
        let setting = find(key)?;
        if let Some(other) = seen.insert(setting.name, key.clone()) {
            return Err(ConfigError::invalid(
                setting.name,
                format!("set twice in the file (`{other}` and `{key}`)"),
            ));
        }
        values.insert(setting.name, yaml_scalar(key, value)?);
    }
    let mut from_file: Vec<&'static str> = seen.into_keys().collect();
    for s in table {
        if let Some(v) = s.env.iter().find_map(|name| env(name)) {
            values.insert(s.name, v);
            from_file.retain(|n| *n != s.name);
        }
    }
    for (key, value) in cli {
        let name = find(key)?.name;
        values.insert(name, value.clone());
        from_file.retain(|n| *n != name);
    }

    let secrets = table.iter().filter(|s| s.secret).map(|s| s.name).collect();
    Ok(StoreSettings {
        storage_type,
        values,
        secrets,
        file_dir: file_dir.to_path_buf(),
        from_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated_alike_for_every_store() {
        assert_eq!(normalise_prefix("/team/a/").unwrap(), "team/a/");
        assert_eq!(normalise_prefix("").unwrap(), "");
        for bad in [
            "team-a/..",
            "a//b",
            "./x",
            "a/\\b",
            " team",
            "team/a ",
            "team/\u{2003}a",
        ] {
            let err = normalise_prefix(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("setting `prefix`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn credentials_are_trimmed_and_never_shown() {
        let credential = |value: &str| {
            StoreSettings::from_pairs("oss", &[("secret_key", value)]).credential("secret_key")
        };
        assert_eq!(credential("abc+/=\n").unwrap().as_deref(), Some("abc+/="));
        assert_eq!(credential("  \n").unwrap(), None);
        for bad in ["ab c", "ab\u{0}c", "abç"] {
            let err = credential(bad).unwrap_err().to_string();
            assert!(err.starts_with("setting `secret_key`"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
    }

    #[test]
    fn secrets_are_hidden_from_debug() {
        static SECRET: Setting = Setting {
            name: "password",
            aliases: &[],
            env: &[],
            secret: true,
            default: None,
            help: "",
        };
        let mut s = StoreSettings::from_pairs("test", &[("password", "hunter2"), ("user", "bob")]);
        s.secrets.push(SECRET.name);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("bob"),
            "{shown}"
        );
    }

    #[test]
    fn endpoints_are_read_alike_for_every_store() {
        let e = Endpoint::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:9000");
        assert_eq!(
            Endpoint::parse("oss-cn-hangzhou.aliyuncs.com")
                .unwrap()
                .url(),
            "https://oss-cn-hangzhou.aliyuncs.com"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://a/b",
            "a b",
            "http://u@h",
            "h?x=1",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("setting `endpoint`"),
                "{bad}: {err}"
            );
        }
        // A password in the URL is not repeated, in an error or `check`.
        let with_password = "https://ann:hunter2@s3.example.com";
        let err = Endpoint::parse(with_password).unwrap_err().to_string();
        assert!(
            !err.contains("hunter2") && err.contains("<redacted>@s3.example.com"),
            "{err}"
        );
        let s = StoreSettings::from_pairs("t", &[("endpoint", with_password)]);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("s3.example.com"),
            "{shown}"
        );
        assert_eq!(without_userinfo("http://h:9000/p@q"), "http://h:9000/p@q");
    }

    #[test]
    fn timeouts_are_positive_durations() {
        let s = StoreSettings::from_pairs(
            "t",
            &[
                ("timeout", "0"),
                ("other", "15"),
                ("unit", "2m"),
                ("bad", "5x"),
            ],
        );
        assert!(s.duration("timeout").is_err());
        assert!(s.duration("bad").is_err());
        assert_eq!(s.duration("other").unwrap(), Duration::from_secs(15));
        assert_eq!(s.duration("unit").unwrap(), Duration::from_secs(120));
        assert!(matches!(
            s.duration("unset"),
            Err(ConfigError::Missing { .. })
        ));
    }
}
