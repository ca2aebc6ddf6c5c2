//! The `notifications:` section: where events go, which ones, and how
//! they are written. Read in two stages like every setting: the YAML as
//! written ([`FileDestination`]), then a checked [`Destination`] whose
//! mistakes stop start-up naming the entry and the field.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::record::{Kind, Record};
use crate::auth::Glob;
use crate::settings::ConfigError;

/// One entry of `notifications:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDestination {
    pub name: String,
    pub url: String,
    /// Event names; absent or empty means every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Key patterns, one or a list; absent means every key.
    #[serde(default)]
    pub keys: Option<OneOrMany>,
    /// Workspace patterns; absent means every workspace.
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// The environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `cloudevents` (the default) or `slack`.
    #[serde(default)]
    pub format: Option<String>,
}

/// A pattern, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// How a notification's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents 1.0, structured JSON mode.
    CloudEvents,
    /// `{"text": "..."}` for a Slack-compatible incoming webhook.
    Slack,
}

/// A checked destination.
#[derive(Clone)]
pub struct Destination {
    /// Names it in the outbox's keys, the metrics and the dashboard:
    /// letters, digits, `_` and `-`.
    pub name: String,
    /// Never logged or shown: a Slack webhook's URL is its credential.
    pub url: reqwest::Url,
    /// The kinds sent; empty sends every kind.
    pub events: Vec<Kind>,
    /// Only states whose key matches one of these; empty matches all.
    pub keys: Vec<Glob>,
    /// Only states whose workspace matches one of these; empty matches all.
    pub workspaces: Vec<Glob>,
    /// The environment variable holding the signing secret.
    pub secret_env: Option<String>,
    pub format: Format,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("url", &"<hidden>")
            .field("events", &self.events)
            .field("keys", &self.keys)
            .field("workspaces", &self.workspaces)
            .field("secret_env", &self.secret_env)
            .field("format", &self.format)
            .finish()
    }
}

impl Destination {
    /// Whether this destination wants `record`.
    pub fn wants(&self, record: &Record) -> bool {
        (self.events.is_empty() || self.events.contains(&record.kind))
            && (self.keys.is_empty() || self.keys.iter().any(|g| g.matches(&record.state.key)))
            && (self.workspaces.is_empty()
                || self
                    .workspaces
                    .iter()
                    .any(|g| g.matches(&record.state.workspace)))
    }

    /// The signing secret, read from `secret_env` through `env`; a
    /// variable that is unset or empty stops start-up. The value never
    /// appears in an error.
    pub fn secret(
        &self,
        index: usize,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let Some(var) = &self.secret_env else {
            return Ok(None);
        };
        match env(var) {
            Some(value) if !value.is_empty() => Ok(Some(Secret(value.into_bytes()))),
            _ => Err(ConfigError::invalid(
                &format!("notifications[{index}].secret_env"),
                format!(
                    "the environment variable {} is not set: it holds the secret that \
                     signs the notifications of `{}`",
                    crate::settings::shown_name(var),
                    self.name
                ),
            )),
        }
    }
}

/// A signing secret; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret(pub(super) Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Checks the `notifications:` section, each mistake named by its place
/// (`notifications[1].url`).
pub fn parse_section(value: serde_yaml_ng::Value) -> Result<Vec<Destination>, ConfigError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let entries: Vec<FileDestination> =
        serde_yaml_ng::from_value(value).map_err(|e| ConfigError::misshapen("notifications", e))?;
    let mut out: Vec<Destination> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let destination = check(i, entry)?;
        if out.iter().any(|d| d.name == destination.name) {
            return Err(ConfigError::invalid(
                &format!("notifications[{i}].name"),
                format!("`{}` is used twice", destination.name),
            ));
        }
        out.push(destination);
    }
    Ok(out)
}

fn check(i: usize, entry: FileDestination) -> Result<Destination, ConfigError> {
    let at = |field: &str| format!("notifications[{i}].{field}");
    let name = entry.name.trim().to_string();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ConfigError::invalid(
            &at("name"),
            format!("`{name}` must be 1 to 64 letters, digits, `_` or `-`"),
        ));
    }
    let url = check_url(&entry.url).map_err(|why| ConfigError::invalid(&at("url"), why))?;
    let mut events = Vec::new();
    for event in &entry.events {
        let kind = Kind::parse(event.trim()).ok_or_else(|| {
            let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
            ConfigError::invalid(
                &at("events"),
                format!("unknown event `{event}` (known: {})", known.join(", ")),
            )
        })?;
        events.push(kind);
    }
    let keys = match entry.keys {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    };
    let globs = |field: &str, patterns: &[String]| {
        patterns
            .iter()
            .map(|p| Glob::parse(field, p.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| ConfigError::invalid(&at(field), why))
    };
    let keys = globs("keys", &keys)?;
    let workspaces = globs("workspaces", &entry.workspaces)?;
    let format = match entry.format.as_deref().map(str::trim) {
        None | Some("cloudevents") => Format::CloudEvents,
        Some("slack") => Format::Slack,
        Some(other) => {
            return Err(ConfigError::invalid(
                &at("format"),
                format!("`{other}` is not cloudevents or slack"),
            ));
        }
    };
    let secret_env = entry
        .secret_env
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if secret_env.is_none() && format == Format::CloudEvents {
        return Err(ConfigError::invalid(
            &at("secret_env"),
            "is required for the cloudevents format: receivers verify each notification's \
             signature with that secret (only a slack webhook, whose URL is its secret, goes unsigned)",
        ));
    }
    Ok(Destination {
        name,
        url,
        events,
        keys,
        workspaces,
        secret_env,
        format,
    })
}

/// An `https://` URL, or `http://` to this machine only (127.0.0.0/8,
/// `::1`, `localhost`): a notification names states and people, and its
/// signature proves who sent it but hides nothing.
fn check_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password; sign with secret_env instead".into());
    }
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" if !host.is_empty() => Ok(url),
        "http" if is_loopback(host) => Ok(url),
        "http" => Err(format!(
            "http:// is allowed only to this machine (127.0.0.0/8, ::1, localhost), not to \
             {host}: use https://"
        )),
        other => Err(format!("the scheme `{other}` is not https")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::record::{ActorId, StateId};

    fn parse(yaml: &str) -> Result<Vec<Destination>, ConfigError> {
        parse_section(serde_yaml_ng::from_str(yaml).unwrap())
    }

    fn setting(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_destination_is_read_with_its_filters() {
        let d = parse(
            "- name: prod\n  url: https://hooks.example.com/x\n  events: [state.written, lock.force_released]\n  \
             keys: prod/**\n  workspaces: [default]\n  secret_env: HOOK_SECRET\n",
        )
        .unwrap();
        assert_eq!(d[0].events, [Kind::Written, Kind::LockForceReleased]);
        assert_eq!(d[0].format, Format::CloudEvents);
        let record = |key: &str, ws: &str, kind| {
            Record::new(
                kind,
                StateId {
                    key: key.into(),
                    workspace: ws.into(),
                },
                ActorId {
                    identity: None,
                    client: "127.0.0.1".into(),
                    via: "http".into(),
                },
            )
        };
        assert!(d[0].wants(&record("prod/net", "default", Kind::Written)));
        assert!(!d[0].wants(&record("staging/net", "default", Kind::Written)));
        assert!(!d[0].wants(&record("prod/net", "blue", Kind::Written)));
        assert!(!d[0].wants(&record("prod/net", "default", Kind::LockTaken)));
        assert!(!format!("{:?}", d[0]).contains("hooks.example.com"));
    }

    #[test]
    fn mistakes_name_the_entry_and_field() {
        let cases = [
            (
                "- name: a\n  url: http://hooks.example.com/\n  secret_env: S\n",
                "notifications[0].url",
            ),
            (
                "- name: a\n  url: ftp://127.0.0.1/\n  secret_env: S\n",
                "notifications[0].url",
            ),
            (
                "- name: a\n  url: not a url\n  secret_env: S\n",
                "notifications[0].url",
            ),
            (
                "- name: a\n  url: https://x.example/\n  events: [state.exploded]\n  secret_env: S\n",
                "notifications[0].events",
            ),
            (
                "- name: a\n  url: https://x.example/\n",
                "notifications[0].secret_env",
            ),
            (
                "- name: a b\n  url: https://x.example/\n  secret_env: S\n",
                "notifications[0].name",
            ),
            (
                "- {name: a, url: 'https://x.example/', secret_env: S}\n- {name: a, url: 'https://y.example/', format: slack}\n",
                "notifications[1].name",
            ),
            (
                "- {name: a, url: 'https://x.example/', format: teams, secret_env: S}\n",
                "notifications[0].format",
            ),
            (
                "- {name: a, url: 'https://x.example/', keys: 'a//b', secret_env: S}\n",
                "notifications[0].keys",
            ),
            (
                "- {name: a, url: 'https://x.example/', colour: red}\n",
                "notifications",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(setting(parse(yaml).unwrap_err()), want, "{yaml}");
        }
    }

    #[test]
    fn plain_http_is_for_this_machine_only() {
        for ok in [
            "http://127.0.0.1:9000/h",
            "http://127.1.2.3/",
            "http://[::1]:80/",
            "http://localhost:1/",
            "https://hooks.slack.com/services/T/B/X",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://localhost.example.com/",
            "https://user:pw@example.com/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_secret_variable_is_named_without_any_value() {
        let d = parse("- {name: a, url: 'https://x.example/', secret_env: HOOK_SECRET}\n").unwrap();
        let err = d[0].secret(0, &|_| None).unwrap_err().to_string();
        assert!(err.contains("notifications[0].secret_env") && err.contains("HOOK_SECRET"));
        let secret = d[0]
            .secret(0, &|v| (v == "HOOK_SECRET").then(|| "s3cret".into()))
            .unwrap()
            .unwrap();
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
