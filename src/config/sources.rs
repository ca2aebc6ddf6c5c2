//! The one precedence rule: a flag beats its environment variable, which
//! beats the configuration file, which beats the table's default. Every
//! server setting is read through [`Sources`], by its entry in
//! [`super::table`]; store settings follow the same order in
//! [`crate::settings::merge_store_settings`].
//!
//! A relative file name is taken from where it was written: the
//! configuration file's directory for a value in the file, the working
//! directory for a flag or an environment variable. So a command gives the
//! same answer wherever it is run from with `-c dir/stategate.yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::table::{self, Kind, SERVER_SETTINGS, ServerSetting};
use crate::settings::{ConfigError, parse_bool, parse_duration, parse_u64, yaml_scalar};

/// The configuration file, split into the single values the table names
/// and the sections read by their own parsers.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// Single values (or lists) by the path of their table entry.
    values: BTreeMap<&'static str, Value>,
    /// `auth:`, as written.
    pub auth: Option<Value>,
    /// `encryption:`, as written.
    pub encryption: Option<Value>,
    /// `notifications:`, as written.
    pub notifications: Option<Value>,
    /// `backend.config`, the store's settings.
    pub backend_config: BTreeMap<String, Value>,
    /// `workspace_key_prefix` at the top of the file.
    pub workspace_key_prefix: Option<Value>,
    /// Where relative file names in the file start.
    pub dir: PathBuf,
    /// Where the relative names of values taken from a defaults file
    /// start (that file's directory), by setting path.
    default_dirs: BTreeMap<&'static str, PathBuf>,
    /// Where the relative names of `backend.config` start: [`Self::dir`],
    /// or the defaults file's directory when the store came from there.
    pub backend_dir: PathBuf,
}

impl FileConfig {
    /// Reads and parses a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let dir = crate::settings::directory_of(path).to_path_buf();
        Self::parse(&text, dir).map_err(|e| match e {
            ConfigError::File { reason, .. } => file_error(reason),
            other => other,
        })
    }

    /// Parses the text of a configuration file whose relative names start
    /// at `dir`.
    pub fn parse(text: &str, dir: PathBuf) -> Result<Self, ConfigError> {
        let mut file = FileConfig {
            backend_dir: dir.clone(),
            dir,
            ..FileConfig::default()
        };
        if text.trim().is_empty() {
            return Ok(file);
        }
        let root: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::File {
            path: String::new(),
            reason: e.to_string(),
        })?;
        let top = match root {
            Value::Mapping(m) => m,
            Value::Null => return Ok(file),
            _ => {
                return Err(ConfigError::File {
                    path: String::new(),
                    reason: "is not a mapping of settings".into(),
                });
            }
        };
        for (key, value) in top {
            let key = key_text(&key, "")?;
            match key.as_str() {
                "auth" => file.auth = Some(value),
                "encryption" => file.encryption = Some(value),
                "notifications" => file.notifications = Some(value),
                "workspace_key_prefix" => file.workspace_key_prefix = Some(value),
                "backend" => file.backend(value)?,
                _ => match (table::by_path(&key), value) {
                    (Some(setting), value) => file.set(setting, &key, value)?,
                    (None, Value::Mapping(children)) if is_section(&key) => {
                        for (child, value) in children {
                            let path = format!("{key}.{}", key_text(&child, &key)?);
                            let setting = table::by_path(&path).ok_or_else(|| unknown(&path))?;
                            file.set(setting, &path, value)?;
                        }
                    }
                    (None, _) => return Err(unknown(&key)),
                },
            }
        }
        Ok(file)
    }

    /// Fills what this file leaves unset from a defaults file (a container
    /// image's, say): each single value the file does not set, and the
    /// whole `backend` section when the file names no store at all, so a
    /// file choosing another storage type never meets the defaults'
    /// store settings. `auth`, `encryption` and `notifications` are never defaulted.
    pub fn over(mut self, defaults: FileConfig) -> Result<Self, ConfigError> {
        for (section, set) in [
            ("auth", defaults.auth.is_some()),
            ("encryption", defaults.encryption.is_some()),
            ("notifications", defaults.notifications.is_some()),
            (
                "workspace_key_prefix",
                defaults.workspace_key_prefix.is_some(),
            ),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    section,
                    "is not taken from a defaults file (STATEGATE_DEFAULTS): write it in the configuration file",
                ));
            }
        }
        let names_store =
            self.values.contains_key(table::STORAGE_TYPE.path) || !self.backend_config.is_empty();
        if !names_store {
            self.backend_config = defaults.backend_config;
            self.backend_dir = defaults.dir.clone();
        }
        for (path, value) in defaults.values {
            if path == table::STORAGE_TYPE.path && names_store {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = self.values.entry(path) {
                slot.insert(value);
                self.default_dirs.insert(path, defaults.dir.clone());
            }
        }
        Ok(self)
    }

    fn backend(&mut self, value: Value) -> Result<(), ConfigError> {
        let Value::Mapping(entries) = value else {
            return Err(ConfigError::invalid(
                "backend",
                "must be a mapping with storageType and config",
            ));
        };
        for (key, value) in entries {
            let path = format!("backend.{}", key_text(&key, "backend")?);
            if path == "backend.config" {
                match value {
                    Value::Mapping(config) => {
                        for (k, v) in config {
                            self.backend_config.insert(key_text(&k, &path)?, v);
                        }
                    }
                    Value::Null => {}
                    _ => return Err(ConfigError::invalid(&path, "must be a mapping")),
                }
                continue;
            }
            let setting = table::by_path(&path).ok_or_else(|| unknown(&path))?;
            self.set(setting, &path, value)?;
        }
        Ok(())
    }

    fn set(
        &mut self,
        setting: &'static ServerSetting,
        written: &str,
        value: Value,
    ) -> Result<(), ConfigError> {
        let shape_ok = match &value {
            Value::Sequence(items) => {
                setting.kind == Kind::List && items.iter().all(|i| !i.is_mapping())
            }
            Value::Mapping(_) | Value::Tagged(_) => false,
            _ => true,
        };
        if !shape_ok {
            return Err(ConfigError::invalid(
                setting.path,
                match setting.kind {
                    Kind::List => "must be a list of values",
                    _ => "must be a single value, not a list or map",
                },
            ));
        }
        if self.values.insert(setting.path, value).is_some() {
            return Err(ConfigError::invalid(
                setting.path,
                format!("set twice in the file (the second time as `{written}`)"),
            ));
        }
        Ok(())
    }
}

fn key_text(key: &Value, within: &str) -> Result<String, ConfigError> {
    match key {
        Value::String(s) => Ok(s.clone()),
        other => Err(ConfigError::invalid(
            if within.is_empty() { "config" } else { within },
            format!("the key {other:?} is not a name"),
        )),
    }
}

/// Whether `name` is a section of single values (`tls`, `ui`).
fn is_section(name: &str) -> bool {
    SERVER_SETTINGS.iter().any(|s| {
        s.path
            .strip_prefix(name)
            .is_some_and(|r| r.starts_with('.'))
    })
}

fn unknown(path: &str) -> ConfigError {
    let known: Vec<&str> = SERVER_SETTINGS
        .iter()
        .map(|s| s.path)
        .filter(|p| !p.is_empty())
        .chain(["encryption", "backend.config", "workspace_key_prefix"])
        .collect();
    ConfigError::Unknown {
        setting: crate::settings::shown_name(path),
        context: format!("in the configuration file (known: {})", known.join(", ")),
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// A setting's value before it is parsed.
#[derive(Debug, Clone)]
pub struct Raw {
    pub text: String,
    /// The items of a list written as a YAML list.
    pub items: Option<Vec<String>>,
    pub source: Source,
}

/// The flags given, the environment and the file, read by table entry.
pub struct Sources<'a> {
    /// Flags given on the command line, by flag name.
    pub flags: &'a BTreeMap<&'static str, String>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub file: &'a FileConfig,
}

impl Sources<'_> {
    /// The value in force, by the precedence rule; an empty value is unset.
    pub fn raw(&self, s: &ServerSetting) -> Result<Option<Raw>, ConfigError> {
        let plain = |text: String, source| Raw {
            text,
            items: None,
            source,
        };
        let raw = if let Some(v) = self.flags.get(s.flag) {
            Some(plain(v.clone(), Source::Flag))
        } else if let Some(v) = (self.env)(s.env) {
            Some(plain(v, Source::Env))
        } else if let Some(v) = self.file.values.get(s.path) {
            Some(match v {
                Value::Sequence(items) => {
                    let items = items
                        .iter()
                        .map(|i| yaml_scalar(s.path, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    Raw {
                        text: items.join(","),
                        items: Some(items),
                        source: Source::File,
                    }
                }
                v => plain(yaml_scalar(s.path, v)?, Source::File),
            })
        } else {
            s.default.map(|d| plain(d.to_string(), Source::Default))
        };
        Ok(raw.filter(|r| !r.text.trim().is_empty()))
    }

    pub fn text(&self, s: &ServerSetting) -> Result<Option<String>, ConfigError> {
        Ok(self.raw(s)?.map(|r| r.text.trim().to_string()))
    }

    /// A file name, relative ones taken from where they were written.
    pub fn path(&self, s: &ServerSetting) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.raw(s)?.map(|r| match r.source {
            Source::File => self
                .file
                .default_dirs
                .get(s.path)
                .unwrap_or(&self.file.dir)
                .join(r.text.trim()),
            _ => PathBuf::from(r.text.trim()),
        }))
    }

    pub fn number(&self, s: &ServerSetting) -> Result<Option<u64>, ConfigError> {
        self.text(s)?.map(|t| parse_u64(s.path, &t)).transpose()
    }

    pub fn duration(&self, s: &ServerSetting) -> Result<Option<Duration>, ConfigError> {
        self.text(s)?
            .map(|t| parse_duration(s.path, &t))
            .transpose()
    }

    pub fn bool(&self, s: &ServerSetting) -> Result<Option<bool>, ConfigError> {
        self.text(s)?
            .map(|t| {
                parse_bool(&t).ok_or_else(|| {
                    ConfigError::invalid(s.path, format!("`{t}` is not true or false"))
                })
            })
            .transpose()
    }

    /// A list: the file's YAML list, or comma-separated text.
    pub fn list(&self, s: &ServerSetting) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = self.raw(s)? else {
            return Ok(Vec::new());
        };
        let items = raw
            .items
            .unwrap_or_else(|| raw.text.split(',').map(str::to_string).collect());
        Ok(items
            .into_iter()
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty())
            .collect())
    }
}
