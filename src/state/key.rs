//! State keys and workspaces, and the object keys they map to.
//!
//! A key is one or more `/`-separated segments of ASCII letters, digits,
//! `.`, `_` and `-`: no empty, `.` or `..` segment, no segment longer than
//! 200 bytes or ending in `.tflock` (that is a lock's name, and a state
//! `a.tflock/b` would sit where the lock of `a` must go), at most 1024 bytes
//! in all, no segment starting with `.stategate` (reserved for history,
//! leases and probes: not only at the top, where this store keeps them,
//! but anywhere, so that no key reaches the objects of another store whose
//! root or prefix lies below this one's). A workspace name is one such
//! segment. The 200-byte bound keeps
//! every name a store derives (the local store's `<segment>.tflock+`, on a
//! file system whose names stop at 255 bytes) within what every store can
//! hold, so a key the server accepts never fails in the store. A store whose names are
//! bounded as a whole (an S3 object name stops at 1,024 bytes) bounds the
//! key further: every name derived from it, the longest being a write
//! lease, `.stategate/lease/<object key>/<token>`, must fit with the
//! store's prefix, so the longest key accepted depends on the store, its
//! prefix, `workspace_key_prefix` and the workspace
//! ([`StateRef::check_fits`]). The object key follows
//! Terraform's own s3 and oss backends: `<key>` for the default workspace,
//! `<workspace_key_prefix>/<workspace>/<key>` otherwise, and the lock sits
//! at `<object key>.tflock`, so a bucket can be shared with them.

use std::fmt;

use super::lease::{LEASE_PREFIX, MAX_TOKEN_BYTES};

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest `workspace_key_prefix` accepted, in bytes.
pub const MAX_WORKSPACE_KEY_PREFIX_BYTES: usize = 256;
/// How many bytes the longest name stategate derives from an object key
/// adds to it: a write lease, `.stategate/lease/<object key>/<token>`.
/// The others add less: the lock `<object key>.tflock`, and history's
/// `.stategate/history/<object key>/` followed by `newest.json`,
/// `summary.json` or a ten-digit version number with `.json` or
/// `.tfstate` (ten digits hold ten billion versions).
pub const DERIVED_NAME_OVERHEAD: usize = LEASE_PREFIX.len() + 1 + MAX_TOKEN_BYTES;
/// The longest key segment or workspace name accepted, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 200;
/// Suffix of lock objects, as Terraform's s3 backend writes them.
pub const LOCK_SUFFIX: &str = ".tflock";
/// First segment reserved for stategate's own objects.
pub const RESERVED_PREFIX: &str = ".stategate";
/// The workspace that maps to the bare key.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Why a key or workspace was refused; shown to the client as a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A state named by the client: a key and a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateRef {
    key: String,
    /// `None` is the default workspace.
    workspace: Option<String>,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_segment(what: &str, seg: &str) -> Result<(), KeyError> {
    if seg.is_empty() {
        return Err(KeyError(format!("{what} has an empty segment")));
    }
    if seg == "." || seg == ".." {
        return Err(KeyError(format!("{what} has a `{seg}` segment")));
    }
    if let Some(c) = seg.chars().find(|c| !allowed(*c)) {
        return Err(KeyError(format!(
            "{what} has the character {c:?}; only letters, digits, `.`, `_`, `-` and `/` are allowed"
        )));
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(KeyError(format!(
            "{what} has a segment longer than {MAX_SEGMENT_BYTES} bytes"
        )));
    }
    if seg.starts_with(RESERVED_PREFIX) {
        return Err(KeyError(format!(
            "{what} has a segment starting with `{RESERVED_PREFIX}`, which is reserved for stategate's own objects"
        )));
    }
    if seg.ends_with(LOCK_SUFFIX) {
        return Err(KeyError(format!(
            "{what} has a segment ending in `{LOCK_SUFFIX}`, which is reserved for locks"
        )));
    }
    Ok(())
}

impl StateRef {
    /// Validates a key and an optional workspace (absent or `default` means
    /// the default workspace).
    pub fn parse(key: &str, workspace: Option<&str>) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError("the state key is empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError(format!(
                "the state key is longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        for seg in key.split('/') {
            check_segment("the state key", seg)?;
        }
        let workspace = match workspace {
            None | Some(DEFAULT_WORKSPACE) => None,
            Some(ws) => {
                if ws.contains('/') {
                    return Err(KeyError("a workspace name cannot contain `/`".into()));
                }
                check_segment("the workspace name", ws)?;
                Some(ws.to_string())
            }
        };
        Ok(StateRef {
            key: key.to_string(),
            workspace,
        })
    }

    /// Checks that every name derived from this state's object key (its
    /// lock, history and write leases) fits in a store that holds keys of
    /// at most `max_store_key` bytes. The error names the longest key
    /// accepted in this workspace.
    pub fn check_fits(
        &self,
        workspace_key_prefix: &str,
        max_store_key: usize,
    ) -> Result<(), KeyError> {
        let around = self.object_key(workspace_key_prefix).len() - self.key.len();
        let longest = max_store_key
            .saturating_sub(around + DERIVED_NAME_OVERHEAD)
            .min(MAX_KEY_BYTES);
        if self.key.len() <= longest {
            return Ok(());
        }
        let place = match &self.workspace {
            None => String::new(),
            Some(ws) => format!(" in workspace `{ws}`"),
        };
        Err(KeyError(format!(
            "the state key is {} bytes; the longest key this server accepts{place} is {longest} bytes \
             (its store holds names of at most {max_store_key} bytes, and locks, history and write \
             leases add up to {DERIVED_NAME_OVERHEAD} bytes to a key)",
            self.key.len()
        )))
    }

    /// The key as the client gave it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The workspace name (`default` for the default one).
    pub fn workspace(&self) -> &str {
        self.workspace.as_deref().unwrap_or(DEFAULT_WORKSPACE)
    }

    /// Where the state is stored.
    pub fn object_key(&self, workspace_key_prefix: &str) -> String {
        match &self.workspace {
            None => self.key.clone(),
            Some(ws) => format!("{workspace_key_prefix}/{ws}/{}", self.key),
        }
    }

    /// Where the state's lock is stored.
    pub fn lock_key(&self, workspace_key_prefix: &str) -> String {
        format!("{}{LOCK_SUFFIX}", self.object_key(workspace_key_prefix))
    }

    /// The one name of the state this names. A default-workspace key that
    /// starts with `<workspace_key_prefix>/<workspace>/` names the same
    /// object as the rest of it in that workspace; both spellings become
    /// the workspace form, the one a listing shows, so rules, protection,
    /// locks, the audit log and metrics see a state under one name only.
    pub fn canonical(&self, workspace_key_prefix: &str) -> StateRef {
        StateRef::from_object_key(&self.object_key(workspace_key_prefix), workspace_key_prefix)
            .unwrap_or_else(|| self.clone())
    }

    /// Recovers key and workspace from an object key found in a listing;
    /// `None` for objects that are not states (locks, stategate's own).
    pub fn from_object_key(object_key: &str, workspace_key_prefix: &str) -> Option<Self> {
        if object_key.starts_with(RESERVED_PREFIX) || object_key.ends_with(LOCK_SUFFIX) {
            return None;
        }
        if let Some(rest) = object_key
            .strip_prefix(workspace_key_prefix)
            .and_then(|r| r.strip_prefix('/'))
            && let Some((ws, key)) = rest.split_once('/')
            // The default workspace never lives below the prefix: an object
            // at `<prefix>/default/<key>` is the default-workspace state of
            // that whole name, not a second name of `<key>`.
            && ws != DEFAULT_WORKSPACE
            && let Ok(r) = StateRef::parse(key, Some(ws))
        {
            return Some(r);
        }
        StateRef::parse(object_key, None).ok()
    }
}

impl fmt::Display for StateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.workspace {
            None => write!(f, "{}", self.key),
            Some(ws) => write!(f, "{} (workspace {ws})", self.key),
        }
    }
}

/// Checks a `workspace_key_prefix` setting: one or more key segments, and
/// not inside the reserved area. `:` is allowed here as well, because
/// Terraform's s3 backend defaults to `env:` and a shared bucket must match.
pub fn check_workspace_key_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.len() > MAX_WORKSPACE_KEY_PREFIX_BYTES {
        return Err(KeyError(format!(
            "workspace_key_prefix is {} bytes; at most {MAX_WORKSPACE_KEY_PREFIX_BYTES} are accepted",
            prefix.len()
        )));
    }
    for seg in prefix.split('/') {
        check_segment("workspace_key_prefix", &seg.replace(':', "_"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::history::{HISTORY_PREFIX, POINTER_NAME};
    use super::super::summary::SUMMARY_NAME;
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for k in [
            "a",
            "prod/network/terraform.tfstate",
            "A-b_c.d/e",
            "x/.hidden",
        ] {
            assert!(StateRef::parse(k, None).is_ok(), "{k}");
        }
    }

    #[test]
    fn refuses_traversal_and_odd_characters() {
        for k in [
            "",
            "/abs",
            "a//b",
            "a/",
            "..",
            "../etc/passwd",
            "a/../b",
            "./a",
            "a/./b",
            "a\0b",
            "a b",
            "a%2e",
            "a\\b",
            "é",
            "x.tflock",
            ".stategate/history/x",
            ".stategate",
            ".stategatex/y",
            // Where another store's own objects sit, when its root or
            // prefix lies below this one's.
            "inner/.stategate/history/app/newest.json",
            "inner/.stategate/local/layout",
        ] {
            assert!(StateRef::parse(k, None).is_err(), "{k:?} should be refused");
        }
        // Ten 100-byte segments and one of 14: 1024 bytes with the slashes.
        let mut key = vec!["a".repeat(100); 10].join("/");
        key.push_str(&format!("/{}", "b".repeat(14)));
        assert_eq!(key.len(), 1024);
        assert!(StateRef::parse(&key, None).is_ok());
        key.push('c');
        assert!(StateRef::parse(&key, None).is_err());
        assert!(StateRef::parse("app", Some(".stategate")).is_err());
        // Only a segment's start is reserved.
        assert!(StateRef::parse("app/x.stategate/y", None).is_ok());
    }

    #[test]
    fn workspaces_map_to_prefixed_object_keys() {
        let d = StateRef::parse("app/terraform.tfstate", Some("default")).unwrap();
        assert_eq!(d.object_key("workspaces"), "app/terraform.tfstate");
        assert_eq!(d.lock_key("workspaces"), "app/terraform.tfstate.tflock");
        let dev = StateRef::parse("app/terraform.tfstate", Some("dev")).unwrap();
        assert_eq!(dev.object_key("env:"), "env:/dev/app/terraform.tfstate");
        assert_eq!(
            dev.lock_key("workspaces"),
            "workspaces/dev/app/terraform.tfstate.tflock"
        );
        for ws in ["a/b", "..", "", "a b"] {
            assert!(StateRef::parse("k", Some(ws)).is_err(), "{ws:?}");
        }
    }

    #[test]
    fn object_keys_map_back() {
        let dev = StateRef::parse("app/s", Some("dev")).unwrap();
        assert_eq!(
            StateRef::from_object_key(&dev.object_key("workspaces"), "workspaces"),
            Some(dev)
        );
        let plain = StateRef::parse("app/s", None).unwrap();
        assert_eq!(
            StateRef::from_object_key("app/s", "workspaces"),
            Some(plain)
        );
        assert_eq!(
            StateRef::from_object_key("app/s.tflock", "workspaces"),
            None
        );
        assert_eq!(
            StateRef::from_object_key(".stategate/history/app/s/v1", "workspaces"),
            None
        );
        // The objects of another store whose prefix is `team-a/` inside
        // this one's are no states of this one.
        for other in [
            "team-a/.stategate/history/app/s/newest.json",
            "workspaces/dev/.stategate/lease/x/y",
        ] {
            assert_eq!(StateRef::from_object_key(other, "workspaces"), None);
        }
    }

    #[test]
    fn a_state_has_one_name() {
        let ws = StateRef::parse("prod/app", Some("staging")).unwrap();
        let alias = StateRef::parse("workspaces/staging/prod/app", None).unwrap();
        assert_eq!(alias.canonical("workspaces"), ws);
        assert_eq!(ws.canonical("workspaces"), ws);
        // Under another prefix the same key is an ordinary default-workspace key.
        assert_eq!(alias.canonical("env:"), alias);
        let nested = StateRef::parse("a/b", Some("dev")).unwrap();
        assert_eq!(
            StateRef::parse("team/ws/dev/a/b", None)
                .unwrap()
                .canonical("team/ws"),
            nested
        );
        // `<prefix>/default/<key>` is not where the default workspace lives.
        let odd = StateRef::parse("workspaces/default/app", None).unwrap();
        assert_eq!(odd.canonical("workspaces"), odd);
        assert_eq!(
            StateRef::from_object_key("workspaces/default/app", "workspaces"),
            Some(odd)
        );
        // Too short to hold a workspace and a key.
        let short = StateRef::parse("workspaces/staging", None).unwrap();
        assert_eq!(short.canonical("workspaces"), short);
    }

    #[test]
    fn lock_names_and_long_segments_are_refused_everywhere() {
        // `victim.tflock/x` would sit where the lock of
        // `victim` goes, and a workspace `x.tflock` where the lock of
        // `workspaces/x` goes.
        for k in ["victim.tflock/x", "a/b.tflock/c", "a/b.tflock"] {
            assert!(StateRef::parse(k, None).is_err(), "{k:?}");
        }
        assert!(StateRef::parse("k", Some("x.tflock")).is_err());
        assert!(StateRef::parse("a/tflock/b.tflockx", None).is_ok());
        // Segments up to the limit fit every store, the local one (file
        // names of 255 bytes, with room for its suffixes) included.
        let long = "s".repeat(MAX_SEGMENT_BYTES);
        assert!(StateRef::parse(&format!("a/{long}"), None).is_ok());
        assert!(StateRef::parse(&format!("a/{long}s"), None).is_err());
        assert!(StateRef::parse("k", Some(&long)).is_ok());
        assert!(StateRef::parse("k", Some(&format!("{long}s"))).is_err());
    }

    #[test]
    fn workspace_key_prefix_is_checked() {
        assert!(check_workspace_key_prefix("workspaces").is_ok());
        assert!(check_workspace_key_prefix("env:").is_ok());
        assert!(check_workspace_key_prefix("a b").is_err());
        assert!(check_workspace_key_prefix(".stategate").is_err());
        assert!(check_workspace_key_prefix("a/../b").is_err());
        let longest = format!("{}/{}", "p".repeat(127), "p".repeat(128));
        assert_eq!(longest.len(), MAX_WORKSPACE_KEY_PREFIX_BYTES);
        assert!(check_workspace_key_prefix(&longest).is_ok());
        assert!(check_workspace_key_prefix(&format!("{longest}p")).is_err());
    }

    #[test]
    fn every_derived_name_fits_the_overhead() {
        let object_key = "team/app.tfstate";
        let lease = format!("{LEASE_PREFIX}{object_key}/{}", "9".repeat(MAX_TOKEN_BYTES));
        let dir = format!("{HISTORY_PREFIX}{object_key}/");
        let derived = [
            format!("{object_key}{LOCK_SUFFIX}"),
            format!("{dir}{:010}.tfstate", 9_999_999_999u64),
            format!("{dir}{:010}.json", 9_999_999_999u64),
            format!("{dir}{POINTER_NAME}"),
            format!("{dir}{SUMMARY_NAME}"),
        ];
        assert_eq!(lease.len(), object_key.len() + DERIVED_NAME_OVERHEAD);
        for name in derived {
            assert!(name.len() < lease.len(), "{name}");
        }
    }

    /// A valid key of `len` bytes, in segments of at most 100.
    fn key_of(len: usize) -> String {
        (0..len)
            .map(|i| {
                if i % 100 == 50 && i + 1 < len {
                    '/'
                } else {
                    'k'
                }
            })
            .collect()
    }

    #[test]
    fn keys_are_bounded_by_the_store() {
        // S3 under `team/`: 1,019 bytes per name below the prefix.
        let max = 1024 - "team/".len();
        let longest = max - DERIVED_NAME_OVERHEAD;
        let fits = StateRef::parse(&key_of(longest), None).unwrap();
        assert!(fits.check_fits("workspaces", max).is_ok());
        let over = StateRef::parse(&key_of(longest + 1), None).unwrap();
        let err = over.check_fits("workspaces", max).unwrap_err();
        assert!(
            err.0.contains(&format!(
                "the longest key this server accepts is {longest} bytes"
            )),
            "{err}"
        );
        // In a workspace, `workspaces/dev/` takes 15 bytes more.
        let in_dev = StateRef::parse(&key_of(longest - 14), Some("dev")).unwrap();
        let err = in_dev.check_fits("workspaces", max).unwrap_err();
        assert!(
            err.0
                .contains(&format!("in workspace `dev` is {} bytes", longest - 15)),
            "{err}"
        );
        // A store that holds longer names still stops at MAX_KEY_BYTES.
        let full = StateRef::parse(&vec!["a".repeat(100); 10].join("/"), None).unwrap();
        assert!(full.check_fits("workspaces", 2048).is_ok());
    }
}
