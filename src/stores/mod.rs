//! Where bytes live. A store knows nothing of HTTP, Terraform or locks: it
//! offers a handful of primitives on opaque keys (get, put under a
//! condition, delete under a condition, list) and says what it can do.
//! Locking, the write rules and history are written once on top of these
//! primitives in [`crate::state`], so every store gets them and one
//! conformance suite proves them.
//!
//! Keys handed to a store are already validated: `/`-separated segments of
//! ASCII letters, digits, `.`, `_` and `-`, never empty, `.` or `..`. Each
//! store maps them to its own names (a path under a root, a bucket key under
//! a prefix, a row) and must never reach outside that space.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::config::{ConfigError, Setting, StoreSettings};

#[cfg(feature = "db")]
pub mod db;
pub mod local;
#[cfg(feature = "oss")]
pub mod oss;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sqlite;

/// An opaque token naming one stored version of an object: an ETag, a row
/// generation, a file identity. Two reads return the same token only when
/// the object did not change in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// An object as read from a store.
#[derive(Clone, Debug)]
pub struct Object {
    /// The exact bytes that were put.
    pub body: Bytes,
    /// The token to pass to [`Condition::IfMatch`] to change this version only.
    pub version: Version,
}

/// When a put or delete may happen. Stores must apply the condition and the
/// change as one atomic step, also against other processes sharing the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditionally.
    Always,
    /// Only when no object has the key (put only); otherwise
    /// [`StoreError::AlreadyExists`].
    IfAbsent,
    /// Only when the object exists and still has this version; otherwise
    /// [`StoreError::PreconditionFailed`].
    IfMatch(Version),
}

impl Condition {
    /// Checks the condition against the object's current version (`None`
    /// when it is absent), for stores that test it themselves before acting.
    /// `IfAbsent` only constrains puts.
    pub fn check(&self, current: Option<&Version>, is_put: bool) -> Result<(), StoreError> {
        match (self, current) {
            (Condition::Always, _) | (Condition::IfAbsent, None) => Ok(()),
            (Condition::IfAbsent, Some(_)) if is_put => Err(StoreError::AlreadyExists),
            (Condition::IfAbsent, Some(_)) => Ok(()),
            (Condition::IfMatch(expected), Some(v)) if v == expected => Ok(()),
            (Condition::IfMatch(_), _) => Err(StoreError::PreconditionFailed),
        }
    }
}

/// One object in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The store key, as given to `put`.
    pub key: String,
    /// Size of the body in bytes.
    pub size: u64,
    /// Last modification time, where the store keeps one.
    pub modified: Option<OffsetDateTime>,
}

/// What a store can guarantee. Callers and tests check these instead of
/// guessing from the store's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `Condition::IfAbsent` is atomic, so exactly one of many concurrent
    /// creators wins. Locks are only safe with this.
    pub conditional_create: bool,
    /// `Condition::IfMatch` is atomic (compare-and-swap), so a checked write
    /// cannot overwrite a change made after the check.
    pub compare_and_swap: bool,
}

/// The small set of failures every store translates its native errors into,
/// right next to the call that produced them.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A put with `Condition::IfAbsent` found an object already there.
    #[error("object already exists")]
    AlreadyExists,
    /// A put or delete with `Condition::IfMatch` found the object changed or gone.
    #[error("object changed since it was read")]
    PreconditionFailed,
    /// The key cannot be stored because it clashes with another key in a way
    /// this store cannot represent (on disk, `a` as a file and `a/b`). The
    /// client's mistake, not the store's.
    #[error("{0}")]
    KeyConflict(String),
    /// The store could not be reached or refused the operation (auth,
    /// missing bucket, disk full, network). The message names the cause and
    /// never carries a secret.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Shorthand for an [`StoreError::Unavailable`] with context.
    pub fn unavailable(context: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(context.to_string())
    }
}

/// The storage primitives. Every method is atomic as seen by readers: an
/// object is either wholly there in one version or not there.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One line for logs and `stategate check`, e.g. `local store at ./data`.
    /// Never contains a secret.
    fn describe(&self) -> String;

    /// What this store guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The longest one call on this store may take, retries included (the
    /// store's `timeout` setting). The state layer sizes its write leases
    /// from it.
    fn operation_timeout(&self) -> Duration {
        DEFAULT_OPERATION_TIMEOUT
    }

    /// Reads an object; `Ok(None)` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;

    /// Writes an object under `condition`, returning its new version.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError>;

    /// Deletes an object under `condition`. With `Condition::Always` deleting
    /// an absent object succeeds. `Condition::IfAbsent` is not meaningful
    /// here and is treated like `Always`.
    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix` (a plain string prefix,
    /// not only whole segments), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// The current version of an object without its body; `Ok(None)` when
    /// it does not exist. Stores with a cheap metadata read override this.
    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        Ok(self.get(key).await?.map(|o| o.version))
    }

    /// Creates `to` (only if absent, like `Condition::IfAbsent`) holding the
    /// bytes of `from` at version `from_version`, which the caller also has
    /// in hand as `body`. Stores that can copy in place (a hard link, a
    /// server-side copy) do so without moving the bytes, and answer
    /// [`StoreError::PreconditionFailed`] when `from` no longer has that
    /// version; the default writes `body`.
    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        body: &Bytes,
    ) -> Result<(), StoreError> {
        let _ = (from, from_version);
        self.put(to, body.clone(), Condition::IfAbsent)
            .await
            .map(|_| ())
    }
}

/// [`Store::operation_timeout`] of stores without a `timeout` setting.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Validates a bucket store's `prefix` setting, the same way for every
/// store: one or more `/`-separated segments without empty, `.` or `..`
/// parts (which servers or HTTP clients would resolve, reaching outside the
/// prefix or breaking the request signature). Returns it with one trailing
/// `/`; an empty or all-`/` value is no prefix at all.
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
    });
    if bad {
        return Err(ConfigError::invalid(
            "prefix",
            format!("`{raw}` must be `/`-separated names without empty, `.` or `..` parts"),
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// How long a successful bucket check is trusted. Short, so a bucket
/// deleted while stategate runs is noticed within seconds.
const BUCKET_SEEN_FOR: Duration = Duration::from_secs(5);

/// Remembers when a bucket store last saw its bucket exist. A 404 without
/// an error code (every HEAD error has no body) cannot tell a missing object
/// from a missing bucket; bucket stores ask [`BucketSeen::recently`] and,
/// when it says no, check the bucket before answering "no such object".
#[derive(Debug, Default)]
pub struct BucketSeen(Mutex<Option<Instant>>);

impl BucketSeen {
    /// Whether the bucket was seen within the last few seconds.
    pub fn recently(&self) -> bool {
        self.0
            .lock()
            .expect("bucket check mutex")
            .is_some_and(|at| at.elapsed() < BUCKET_SEEN_FOR)
    }

    /// Records that the bucket was just seen.
    pub fn seen(&self) {
        *self.0.lock().expect("bucket check mutex") = Some(Instant::now());
    }
}

/// One plain sentence for a network failure of a store's HTTP client:
/// the innermost cause of an error chain, by kind where it is an I/O error
/// (the SDKs' own `Display` nests every layer and its `Debug`).
pub fn network_cause(err: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut inner = err;
    let mut io_kind = None;
    loop {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        match inner.source() {
            Some(source) => inner = source,
            None => break,
        }
    }
    let text = inner.to_string();
    let lower = text.to_ascii_lowercase();
    match io_kind {
        Some(ErrorKind::ConnectionRefused) => "connection refused".into(),
        Some(ErrorKind::ConnectionReset) => "connection reset".into(),
        Some(ErrorKind::ConnectionAborted) => "connection aborted".into(),
        Some(ErrorKind::BrokenPipe) => "connection closed while sending".into(),
        Some(ErrorKind::UnexpectedEof) => "connection closed before the answer was complete".into(),
        Some(ErrorKind::TimedOut) => "timed out".into(),
        Some(ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable) => {
            "host unreachable".into()
        }
        _ if lower.contains("dns")
            || lower.contains("failed to lookup")
            || lower.contains("name or service not known") =>
        {
            format!("the host name could not be resolved ({text})")
        }
        _ if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake") =>
        {
            format!("TLS failed ({text})")
        }
        _ if lower.contains("connection closed before message completed") => {
            "connection closed before the answer was complete".into()
        }
        _ => {
            // One line, without the SDKs' struct dumps.
            let first = text.lines().next().unwrap_or_default();
            first.split(" (").next().unwrap_or(first).trim().to_string()
        }
    }
}

/// A storage type a user can name in `backend.storageType`.
pub struct Backend {
    /// The `storageType` value.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub summary: &'static str,
    /// The settings `backend.config` accepts, beyond [`COMMON_SETTINGS`].
    pub settings: &'static [Setting],
    /// Opens the store from validated settings.
    pub open: fn(StoreSettings) -> BoxFuture<OpenResult>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What opening a store gives.
pub type OpenResult = Result<Arc<dyn Store>, ConfigError>;

/// A boxed future, so `Backend::open` can be a plain function pointer.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Settings every storage type accepts, whatever it is.
pub const COMMON_SETTINGS: &[Setting] = &[
    Setting {
        name: "workspace_key_prefix",
        aliases: &["workspaceKeyPrefix"],
        env: &["STATEGATE_WORKSPACE_KEY_PREFIX"],
        secret: false,
        default: Some("workspaces"),
        help: "prefix of the object keys of non-default workspaces: <prefix>/<workspace>/<key>",
    },
    Setting {
        name: "allow_unsafe_locks",
        aliases: &["allowUnsafeLocks"],
        env: &["STATEGATE_ALLOW_UNSAFE_LOCKS"],
        secret: false,
        default: Some("false"),
        help: "start even when the store cannot create objects atomically (two clients could both get a lock)",
    },
];

/// Every storage type compiled into this binary.
pub fn backends() -> Vec<&'static Backend> {
    #[allow(unused_mut)]
    let mut all: Vec<&'static Backend> = vec![&local::BACKEND, &sqlite::BACKEND];
    #[cfg(feature = "s3")]
    all.push(&s3::BACKEND);
    #[cfg(feature = "oss")]
    all.push(&oss::BACKEND);
    #[cfg(feature = "db")]
    all.push(&db::BACKEND);
    all
}

/// Finds a storage type by its `storageType` name.
pub fn backend(name: &str) -> Option<&'static Backend> {
    backends().into_iter().find(|b| b.name == name)
}

/// The key of the probe object `stategate check` and start-up write.
pub const PROBE_PREFIX: &str = ".stategate/probe/";

/// What a probe of a store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// One line per step, for `stategate check`.
    pub steps: Vec<String>,
    /// Whether a second create of the same key was refused, i.e. locks are safe.
    pub atomic_create: bool,
}

/// Exercises a store with a probe object: create, second create (must be
/// refused), read back, compare-and-swap, delete. Fails on the first store
/// error; reports whether conditional create really is atomic.
pub async fn probe(store: &dyn Store, tag: &str) -> Result<ProbeReport, StoreError> {
    let key = format!("{PROBE_PREFIX}{tag}");
    let mut steps = Vec::new();
    let body = Bytes::from(format!("stategate probe {tag}\n"));
    // A probe left behind by a killed process must not fail this one.
    store.delete(&key, Condition::Always).await?;
    let version = store.put(&key, body.clone(), Condition::IfAbsent).await?;
    steps.push(format!("write {key}: ok"));
    let atomic_create = match store
        .put(&key, Bytes::from_static(b"x"), Condition::IfAbsent)
        .await
    {
        Err(StoreError::AlreadyExists) => {
            steps.push("conditional create of an existing object: refused (locks are safe)".into());
            true
        }
        Ok(_) => {
            steps.push(
                "conditional create of an existing object: NOT refused (locks would be unsafe)"
                    .into(),
            );
            false
        }
        Err(e) => return Err(e),
    };
    match store.get(&key).await? {
        Some(obj) if atomic_create && obj.body != body => {
            return Err(StoreError::unavailable("probe read back different bytes"));
        }
        Some(_) => steps.push("read back: ok".into()),
        None => return Err(StoreError::unavailable("probe object vanished after write")),
    }
    let current = store.get(&key).await?.map(|o| o.version).unwrap_or(version);
    store.delete(&key, Condition::IfMatch(current)).await?;
    steps.push("conditional delete: ok".into());
    Ok(ProbeReport {
        steps,
        atomic_create,
    })
}

/// Why a store could not be put to use at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store was opened but the probe failed.
    #[error("cannot use the {store}: {reason}")]
    Unreachable { store: String, reason: StoreError },
    /// The store accepts a second conditional create of the same object.
    #[error(
        "the {store} does not refuse a second conditional create of the same object, so two clients could \
         both get a lock; refusing to start (set allow_unsafe_locks: true to start anyway)"
    )]
    UnsafeLocks { store: String },
}

/// Opens the configured store and probes it: it must be reachable, and its
/// conditional create must really be atomic unless `allow_unsafe_locks` is
/// set. Returns the store and what the probe found.
pub async fn open(settings: &StoreSettings) -> Result<(Arc<dyn Store>, ProbeReport), OpenError> {
    let backend = backend(settings.backend()).ok_or_else(|| {
        ConfigError::invalid(
            "storageType",
            format!("unknown storage type `{}`", settings.backend()),
        )
    })?;
    let allow_unsafe = settings.bool("allow_unsafe_locks")?;
    let store = (backend.open)(settings.clone()).await?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let report = probe(store.as_ref(), &tag)
        .await
        .map_err(|reason| OpenError::Unreachable {
            store: store.describe(),
            reason,
        })?;
    if !report.atomic_create {
        if !allow_unsafe {
            return Err(OpenError::UnsafeLocks {
                store: store.describe(),
            });
        }
        tracing::warn!(store = %store.describe(), "allow_unsafe_locks is set: locks are not safe on this store");
    }
    Ok((store, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated_alike_for_every_store() {
        assert_eq!(normalise_prefix("/team/a/").unwrap(), "team/a/");
        assert_eq!(normalise_prefix("").unwrap(), "");
        for bad in ["team-a/..", "a//b", "./x", "a/\\b"] {
            let err = normalise_prefix(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("setting `prefix`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn network_causes_are_one_plain_sentence() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(network_cause(&refused), "connection refused");
        let closed = std::io::Error::other("connection closed before message completed");
        assert_eq!(
            network_cause(&closed),
            "connection closed before the answer was complete"
        );
    }
}
