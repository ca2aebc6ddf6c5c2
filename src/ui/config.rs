//! The `ui:` section of the configuration: the dashboard's CSRF key, when
//! a lock counts as stale, and the host names the server is reached by.

use serde::Deserialize;

use crate::settings::{ConfigError, parse_u64};

/// The `ui:` section, exactly as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUi {
    /// Shared by every replica behind one name, so a form served by one is
    /// accepted by another; generated at start when absent.
    pub csrf_key: Option<String>,
    /// Locks older than this many hours are shown as stale.
    pub stale_lock_hours: Option<u64>,
    /// Host names (without port) the server is reached by, beyond IP
    /// addresses and `localhost`.
    pub hosts: Option<Vec<String>>,
}

impl std::fmt::Debug for FileUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUi")
            .field("csrf_key", &self.csrf_key.as_ref().map(|_| "<hidden>"))
            .field("stale_lock_hours", &self.stale_lock_hours)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// The dashboard's validated settings.
#[derive(Clone, Default)]
pub struct UiSettings {
    /// The key CSRF tokens are HMACs under; `None` makes one at start.
    pub csrf_key: Option<Vec<u8>>,
    pub stale_lock_hours: u64,
    /// Lower-case host names, no port.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for UiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiSettings")
            .field("csrf_key", &self.csrf_key.as_ref().map(|_| "<hidden>"))
            .field("stale_lock_hours", &self.stale_lock_hours)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Default hours after which a lock is shown as stale.
pub const DEFAULT_STALE_LOCK_HOURS: u64 = 4;
/// The shortest `ui.csrf_key` accepted, in bytes.
const MIN_KEY_BYTES: usize = 32;

impl UiSettings {
    /// Validates the section; `STATEGATE_UI_CSRF_KEY` and
    /// `STATEGATE_UI_STALE_LOCK_HOURS` override the file.
    pub fn resolve(
        file: Option<FileUi>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        let csrf_key = env("STATEGATE_UI_CSRF_KEY")
            .or(file.csrf_key)
            .filter(|k| !k.is_empty());
        if let Some(key) = &csrf_key
            && key.len() < MIN_KEY_BYTES
        {
            return Err(ConfigError::invalid(
                "ui.csrf_key",
                format!(
                    "must be at least {MIN_KEY_BYTES} characters (a long random string shared by every replica)"
                ),
            ));
        }
        let stale_lock_hours = match env("STATEGATE_UI_STALE_LOCK_HOURS") {
            Some(v) => parse_u64("ui.stale_lock_hours", &v)?,
            None => file.stale_lock_hours.unwrap_or(DEFAULT_STALE_LOCK_HOURS),
        };
        if stale_lock_hours == 0 {
            return Err(ConfigError::invalid(
                "ui.stale_lock_hours",
                "must be at least 1",
            ));
        }
        let mut hosts = Vec::new();
        for host in file.hosts.unwrap_or_default() {
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(ConfigError::invalid(
                    "ui.hosts",
                    format!("`{host}` is not a host name (write names without scheme or port)"),
                ));
            }
            hosts.push(host);
        }
        Ok(UiSettings {
            csrf_key: csrf_key.map(String::into_bytes),
            stale_lock_hours,
            hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_and_checks() {
        let s = UiSettings::resolve(None, &no_env).unwrap();
        assert_eq!(s.stale_lock_hours, DEFAULT_STALE_LOCK_HOURS);
        assert!(s.csrf_key.is_none());
        let short = FileUi {
            csrf_key: Some("short".into()),
            ..Default::default()
        };
        assert!(UiSettings::resolve(Some(short), &no_env).is_err());
        let hosts = FileUi {
            hosts: Some(vec!["TF.example.com".into()]),
            ..Default::default()
        };
        assert_eq!(
            UiSettings::resolve(Some(hosts), &no_env).unwrap().hosts,
            ["tf.example.com"]
        );
        let bad = FileUi {
            hosts: Some(vec!["https://tf.example.com".into()]),
            ..Default::default()
        };
        assert!(UiSettings::resolve(Some(bad), &no_env).is_err());
        let debug = format!(
            "{:?}",
            UiSettings::resolve(
                Some(FileUi {
                    csrf_key: Some("k".repeat(40)),
                    ..Default::default()
                }),
                &no_env
            )
            .unwrap()
        );
        assert!(!debug.contains("kkkk"), "{debug}");
    }
}
