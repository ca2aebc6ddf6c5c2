//! The `ui:` section of the configuration: the dashboard's CSRF key, when
//! a lock counts as stale, the host names the server is reached by, and
//! the largest state body a view parses.

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
    /// The largest state body, in bytes, that a page or API answer parses
    /// to show what it holds or what changed.
    pub max_view_bytes: Option<u64>,
}

impl std::fmt::Debug for FileUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUi")
            .field("csrf_key", &self.csrf_key.as_ref().map(|_| "<hidden>"))
            .field("stale_lock_hours", &self.stale_lock_hours)
            .field("hosts", &self.hosts)
            .field("max_view_bytes", &self.max_view_bytes)
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
    /// State bodies larger than this are not parsed by any view: each
    /// parse costs memory in proportion to the body.
    pub max_view_bytes: u64,
}

impl std::fmt::Debug for UiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiSettings")
            .field("csrf_key", &self.csrf_key.as_ref().map(|_| "<hidden>"))
            .field("stale_lock_hours", &self.stale_lock_hours)
            .field("hosts", &self.hosts)
            .field("max_view_bytes", &self.max_view_bytes)
            .finish()
    }
}

/// Default hours after which a lock is shown as stale.
pub const DEFAULT_STALE_LOCK_HOURS: u64 = 4;
/// Default `ui.max_view_bytes`: 16 MiB, a state of tens of thousands of
/// resources.
pub const DEFAULT_MAX_VIEW_BYTES: u64 = 16 * 1024 * 1024;
/// The shortest `ui.csrf_key` accepted, in bytes.
const MIN_KEY_BYTES: usize = 32;

impl UiSettings {
    /// Validates the section; `STATEGATE_UI_CSRF_KEY`,
    /// `STATEGATE_UI_STALE_LOCK_HOURS` and `STATEGATE_UI_MAX_VIEW_BYTES`
    /// override the file.
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
        let max_view_bytes = match env("STATEGATE_UI_MAX_VIEW_BYTES") {
            Some(v) => parse_u64("ui.max_view_bytes", &v)?,
            None => file.max_view_bytes.unwrap_or(DEFAULT_MAX_VIEW_BYTES),
        };
        if max_view_bytes == 0 {
            return Err(ConfigError::invalid(
                "ui.max_view_bytes",
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
            max_view_bytes,
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
        assert_eq!(s.max_view_bytes, DEFAULT_MAX_VIEW_BYTES);
        assert!(s.csrf_key.is_none());
        let env = |k: &str| (k == "STATEGATE_UI_MAX_VIEW_BYTES").then(|| "1024".to_string());
        assert_eq!(
            UiSettings::resolve(None, &env).unwrap().max_view_bytes,
            1024
        );
        let zero = FileUi {
            max_view_bytes: Some(0),
            ..Default::default()
        };
        let e = UiSettings::resolve(Some(zero), &no_env).unwrap_err();
        assert!(e.to_string().contains("ui.max_view_bytes"), "{e}");
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
