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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::settings::{ConfigError, Setting, StoreSettings};

#[cfg(any(feature = "s3", feature = "oss"))]
pub mod bucket;
#[cfg(feature = "db")]
pub mod db;
pub mod keylock;
pub mod local;
pub mod net;
pub mod payload;
pub mod read_only;

pub use net::network_cause;
pub use payload::{Payload, Spooler};
#[cfg(feature = "oss")]
pub mod oss;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sqlite;

/// An opaque token naming one stored version of an object: an ETag, a row
/// generation, a file identity. Two reads return the same token only when
/// the object did not change in between, or (where
/// [`Capabilities::unique_versions`] is false) was written again with the
/// same bytes.
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

/// One change of [`Store::change_all`], made as the method it names.
#[derive(Clone, Debug)]
pub enum Change {
    /// [`Store::put`], or with `transient` [`Store::put_transient`].
    Put {
        key: String,
        body: Bytes,
        condition: Condition,
        transient: bool,
    },
    /// [`Store::delete`], or with `transient` [`Store::delete_transient`].
    Delete {
        key: String,
        condition: Condition,
        transient: bool,
    },
    /// [`Store::snapshot`].
    Snapshot {
        from: String,
        from_version: Version,
        to: String,
        body: Payload,
    },
}

/// Where [`Store::change_all`] stopped: the failed change's place in the
/// list, and why.
#[derive(Debug)]
pub struct Stopped {
    pub at: usize,
    pub error: StoreError,
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
    /// A version token is never given twice: an object deleted and written
    /// again with the same bytes gets a new one. False where the token is a
    /// hash of the bytes (S3 and OSS ETags); the state layer does not need
    /// it, since the same bytes are the same state or the same lock.
    pub unique_versions: bool,
}

/// The small set of failures every store translates its native errors into,
/// right next to the call that produced them (as opendal's error kinds).
/// The first three are answers about one object; the others mean the store
/// cannot serve, and name the setting to check where one is at fault, so
/// start-up reports every store's failures the same way.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A put with `Condition::IfAbsent` found an object already there.
    #[error("object already exists")]
    AlreadyExists,
    /// A put or delete with `Condition::IfMatch` found the object changed or gone.
    #[error("object changed since it was read")]
    PreconditionFailed,
    /// The key cannot be stored because its path crosses something the
    /// store did not make (on disk, a symbolic link, or a file put by hand
    /// where a directory must be). A conflict with that one key, not a
    /// failure of the store.
    #[error("{0}")]
    KeyConflict(String),
    /// A setting names something that cannot work (a root that is a file,
    /// an endpoint that is not a server of this kind).
    #[error("store unavailable: {reason}")]
    ConfigInvalid {
        setting: &'static str,
        reason: String,
    },
    /// The credentials were refused or do not grant access.
    #[error("store unavailable: {reason}")]
    PermissionDenied {
        setting: &'static str,
        reason: String,
    },
    /// The bucket, directory or database the settings name does not exist.
    #[error("store unavailable: {reason}")]
    NotFound {
        setting: &'static str,
        reason: String,
    },
    /// The store could not be reached or failed (network, timeout, disk
    /// full, a server error). The message names the cause and never
    /// carries a secret.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Shorthand for an [`StoreError::Unavailable`] with context.
    pub fn unavailable(context: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(context.to_string())
    }

    /// The setting to check, for the kinds that have one.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            StoreError::ConfigInvalid { setting, .. }
            | StoreError::PermissionDenied { setting, .. }
            | StoreError::NotFound { setting, .. } => Some(setting),
            _ => None,
        }
    }

    /// Whether the store, not the request, is at fault: the request may
    /// succeed later (503).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            StoreError::AlreadyExists | StoreError::PreconditionFailed | StoreError::KeyConflict(_)
        )
    }

    /// At start-up, where a store that cannot be reached most likely has a
    /// wrong `setting` (a bucket store's endpoint): the same failure as
    /// [`StoreError::ConfigInvalid`] naming it. Kinds that already name a
    /// setting keep theirs.
    pub fn at_setting(self, setting: &'static str) -> Self {
        match self {
            StoreError::Unavailable(reason) => StoreError::ConfigInvalid { setting, reason },
            other => other,
        }
    }

    /// The same failure with `context` (what was being done) in front.
    pub fn context(self, context: &str) -> Self {
        let with = |reason: String| format!("{context}: {reason}");
        match self {
            StoreError::ConfigInvalid { setting, reason } => StoreError::ConfigInvalid {
                setting,
                reason: with(reason),
            },
            StoreError::PermissionDenied { setting, reason } => StoreError::PermissionDenied {
                setting,
                reason: with(reason),
            },
            StoreError::NotFound { setting, reason } => StoreError::NotFound {
                setting,
                reason: with(reason),
            },
            StoreError::Unavailable(reason) => StoreError::Unavailable(with(reason)),
            other => other,
        }
    }
}

/// Runs blocking file or database work on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::unavailable(format!("worker failed: {e}")))?
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

    /// The longest key this store can hold, in bytes, below its own
    /// prefix (an S3 object name stops at 1,024 bytes, the prefix
    /// included); `None` where only each segment is bounded. The state
    /// layer refuses state keys whose derived names would not fit.
    fn max_key_bytes(&self) -> Option<usize> {
        None
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

    /// Like [`Store::put`], for a body that may be in a file. Stores that
    /// can stream override it; the default reads the body whole, once.
    async fn put_payload(
        &self,
        key: &str,
        body: &Payload,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        self.put(key, body.to_bytes().await?, condition).await
    }

    /// Like [`Store::get`], for a body that may be large: stores that can
    /// hand out a file (the local store's own file, opened) or stream into
    /// one override it; the default is a whole read.
    async fn read(&self, key: &str) -> Result<Option<(Payload, Version)>, StoreError> {
        Ok(self
            .get(key)
            .await?
            .map(|o| (Payload::Memory(o.body), o.version)))
    }

    /// Deletes an object under `condition`. With `Condition::Always` deleting
    /// an absent object succeeds. `Condition::IfAbsent` is not meaningful
    /// here and is treated like `Always`.
    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError>;

    /// Like [`Store::put`], for an object that need not outlive a crash of
    /// the machine (a write lease, whose holder dies with it; a summary or
    /// pointer rebuilt from history when lost). A store may skip making it
    /// durable; the default is a plain put.
    async fn put_transient(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        self.put(key, body, condition).await
    }

    /// Like [`Store::delete`], for a removal that need not outlive a crash
    /// of the machine (an object written by [`Store::put_transient`], a
    /// pruned history version that may as well come back, a released lock,
    /// which coming back only keeps its state locked until unlocked again).
    async fn delete_transient(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        self.delete(key, condition).await
    }

    /// Takes this store's own exclusive lease on `key`, where it has one
    /// that dies with its holder (a lock on a file of this machine, shared
    /// by every process using the store), waiting at most `wait`; dropping
    /// it releases it. `Ok(None)`: the store has none, and the state layer
    /// uses lease objects instead ([`crate::state::Lease`]).
    async fn native_lease(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<keylock::KeyLock>, StoreError> {
        let _ = (key, wait);
        Ok(None)
    }

    /// Makes `changes` in order, each as the method it names would, and
    /// stops at the first that fails: the changes before it are made, it
    /// and those after it are not. A store may make them in one
    /// transaction, so the caller waits for one commit instead of one per
    /// change (history records a version, prunes and moves its pointer
    /// this way); the default makes them one by one.
    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        for (at, change) in changes.into_iter().enumerate() {
            let made = match change {
                Change::Put {
                    key,
                    body,
                    condition,
                    transient: false,
                } => self.put(&key, body, condition).await.map(|_| ()),
                Change::Put {
                    key,
                    body,
                    condition,
                    transient: true,
                } => self.put_transient(&key, body, condition).await.map(|_| ()),
                Change::Delete {
                    key,
                    condition,
                    transient: false,
                } => self.delete(&key, condition).await,
                Change::Delete {
                    key,
                    condition,
                    transient: true,
                } => self.delete_transient(&key, condition).await,
                Change::Snapshot {
                    from,
                    from_version,
                    to,
                    body,
                } => self.snapshot(&from, &from_version, &to, &body).await,
            };
            made.map_err(|error| Stopped { at, error })?;
        }
        Ok(())
    }

    /// Every object whose key starts with `prefix` (a plain string prefix,
    /// not only whole segments), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// Like [`Store::list`], without the objects under [`INTERNAL_PREFIX`]
    /// (history, leases, probes). A listing of states must not cost more
    /// with every version kept, so stores skip that area without walking
    /// it (the local store does not enter its directory, the databases
    /// read around its range, S3 lists past it); the default filters a
    /// whole listing.
    async fn list_outside_internal(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.list(prefix).await?;
        entries.retain(|e| !e.key.starts_with(INTERNAL_PREFIX));
        Ok(entries)
    }

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
    ///
    /// The copy is durable once the caller's next durable write of a key
    /// beside it (same folder) returns, and may be before: history writes
    /// the version's record there right after, so the local store, where
    /// one directory sync covers both names, syncs once for the two.
    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        body: &Payload,
    ) -> Result<(), StoreError> {
        let _ = (from, from_version);
        self.put_payload(to, body, Condition::IfAbsent)
            .await
            .map(|_| ())
    }
}

/// [`Store::operation_timeout`] of stores without a `timeout` setting.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// A storage type a user can name in `backend.storageType`.
pub struct Backend {
    /// The `storageType` value.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub summary: &'static str,
    /// The settings `backend.config` accepts, beyond [`COMMON_SETTINGS`].
    pub settings: &'static [Setting],
    /// Opens the store from merged settings: parses them into the store's
    /// typed config, connects, and checks what it can there.
    pub open: fn(StoreSettings) -> BoxFuture<OpenResult>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What opening a store gives.
pub type OpenResult = Result<Arc<dyn Store>, OpenError>;

/// A boxed future, so `Backend::open` can be a plain function pointer.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Settings every storage type accepts, whatever it is.
pub const COMMON_SETTINGS: &[Setting] = &[Setting {
    name: "allow_unsafe_locks",
    aliases: &["allowUnsafeLocks"],
    env: &["STATEGATE_ALLOW_UNSAFE_LOCKS"],
    secret: false,
    default: Some("false"),
    help: "start even when the store cannot create objects atomically (two clients could both get a lock)",
}];

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

/// Where stategate keeps its own objects (history, leases, probes), apart
/// from every state: no state key starts with it.
pub const INTERNAL_PREFIX: &str = ".stategate/";

/// The key ranges of a listing of `prefix` that lie outside
/// [`INTERNAL_PREFIX`]: `(from, before)` pairs, `before` `None` for no end.
/// Keys are ASCII, and `0` follows `/`, so the internal area is exactly
/// the range from `.stategate/` up to `.stategate0`.
pub fn ranges_outside_internal(prefix: &str) -> Vec<(String, Option<String>)> {
    const PAST_INTERNAL: &str = ".stategate0";
    if prefix.starts_with(INTERNAL_PREFIX) {
        return Vec::new();
    }
    if !INTERNAL_PREFIX.starts_with(prefix) {
        return vec![(prefix.to_string(), None)];
    }
    vec![
        (prefix.to_string(), Some(INTERNAL_PREFIX.to_string())),
        (PAST_INTERNAL.to_string(), None),
    ]
}

/// The key of the probe object `stategate check` and start-up write.
pub const PROBE_PREFIX: &str = ".stategate/probe/";

/// What a probe of a store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// One line per step, for `stategate check`.
    pub steps: Vec<String>,
    /// What the store was seen to guarantee: its own findings at open
    /// (which conditional requests its server honours) confirmed by the
    /// probe's writes.
    pub capabilities: Capabilities,
    /// Whether a write against a stale version was refused.
    pub stale_write_refused: bool,
}

/// Exercises a store with a probe object: create, second create (must be
/// refused), read back, a compare-and-swap against a stale version (must
/// be refused) and one against the current version, delete. Fails on the
/// first store error; reports what the store was seen to guarantee.
pub async fn probe(store: &dyn Store, tag: &str) -> Result<ProbeReport, StoreError> {
    let key = format!("{PROBE_PREFIX}{tag}");
    let mut steps = Vec::new();
    let body = Bytes::from(format!("stategate probe {tag}\n"));
    // A probe left behind by a killed process must not fail this one.
    store.delete(&key, Condition::Always).await?;
    let first = store.put(&key, body.clone(), Condition::IfAbsent).await?;
    steps.push(format!("write {key}: ok"));
    let conditional_create = match store
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
    let current = match store.get(&key).await? {
        Some(obj) if conditional_create && obj.body != body => {
            return Err(StoreError::unavailable("probe read back different bytes"));
        }
        Some(obj) => {
            steps.push("read back: ok".into());
            obj.version
        }
        None => return Err(StoreError::unavailable("probe object vanished after write")),
    };
    let changed = store
        .put(&key, body.clone(), Condition::IfMatch(current.clone()))
        .await?;
    let stale_refused = if changed == first {
        // The store cannot tell the two versions apart (same bytes, same
        // ETag): a stale check cannot be shown with this object.
        true
    } else {
        match store
            .put(&key, Bytes::from_static(b"x"), Condition::IfMatch(first))
            .await
        {
            Err(StoreError::PreconditionFailed) => true,
            Ok(_) => false,
            Err(e) => return Err(e),
        }
    };
    let compare_and_swap = stale_refused && store.capabilities().compare_and_swap;
    steps.push(format!(
        "write against a stale version: {}",
        match (stale_refused, compare_and_swap) {
            (false, _) => "NOT refused",
            (true, true) => "refused (compare-and-swap)",
            (true, false) => "refused, by comparing first (not atomic: writes take a lease)",
        }
    ));
    let last = store.stat(&key).await?.unwrap_or(changed.clone());
    store.delete(&key, Condition::IfMatch(last)).await?;
    steps.push("conditional delete: ok".into());
    // Written again with the same bytes: a new version, or the same one
    // where versions are hashes of the bytes.
    let again = store.put(&key, body, Condition::IfAbsent).await?;
    let unique_versions = again != changed && store.capabilities().unique_versions;
    store.delete(&key, Condition::Always).await?;
    steps.push(format!(
        "the same bytes written again: {}",
        if unique_versions {
            "a new version"
        } else {
            "the same version (versions are hashes of the bytes)"
        }
    ));
    Ok(ProbeReport {
        steps,
        capabilities: Capabilities {
            conditional_create: conditional_create && store.capabilities().conditional_create,
            compare_and_swap,
            unique_versions,
        },
        stale_write_refused: stale_refused,
    })
}

/// Why a store could not be put to use at start-up. Every store's failures
/// read the same way: the setting to check first, then the store and why.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting is wrong on its face.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store was tried and failed.
    #[error("{}cannot use the {store}: {reason}", reason.setting().map(|s| format!("setting `{s}`: ")).unwrap_or_default())]
    Unreachable { store: String, reason: StoreError },
    /// The store accepts a second conditional create of the same object.
    #[error(
        "the {store} does not refuse a second conditional create of the same object, so two clients could \
         both get a lock; refusing to start (set allow_unsafe_locks: true to start anyway)"
    )]
    UnsafeLocks { store: String },
    /// The store accepts a write against a stale version.
    #[error(
        "the {store} accepted a write against a version that was no longer current, so a stale write \
         could overwrite a newer state; refusing to start"
    )]
    UnsafeWrites { store: String },
}

impl OpenError {
    /// A store failure while opening the store `store` (its type or description).
    pub fn store(store: impl std::fmt::Display, reason: StoreError) -> Self {
        OpenError::Unreachable {
            store: store.to_string(),
            reason,
        }
    }
}

/// A store ready for use, with what it was seen to guarantee.
pub struct Opened {
    pub store: Arc<dyn Store>,
    /// What the start-up probe measured; the state layer goes by this.
    pub capabilities: Capabilities,
    /// The probe's steps, for `stategate check`.
    pub report: ProbeReport,
}

/// Opens the configured store and probes it: it must be reachable, its
/// conditional create must really be atomic unless `allow_unsafe_locks` is
/// set, and a stale conditional write must be refused.
pub async fn open(backend: &'static Backend, settings: StoreSettings) -> Result<Opened, OpenError> {
    let allow_unsafe = settings.bool("allow_unsafe_locks")?;
    let store = (backend.open)(settings).await?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let report = probe(store.as_ref(), &tag)
        .await
        .map_err(|reason| OpenError::store(store.describe(), reason))?;
    if !report.stale_write_refused {
        return Err(OpenError::UnsafeWrites {
            store: store.describe(),
        });
    }
    if !report.capabilities.conditional_create {
        if !allow_unsafe {
            return Err(OpenError::UnsafeLocks {
                store: store.describe(),
            });
        }
        tracing::warn!(store = %store.describe(), "allow_unsafe_locks is set: locks are not safe on this store");
    }
    Ok(Opened {
        capabilities: report.capabilities,
        store,
        report,
    })
}

/// What is missing when the configured store does not exist yet: a local
/// directory, a SQLite file, or a database without stategate's tables.
/// Only `serve` (and a migration into it) creates a store, so the other
/// commands ask this first instead of making an empty one where a wrong
/// path points. Buckets are checked when the store is opened.
pub async fn missing(
    backend: &'static Backend,
    settings: &StoreSettings,
) -> Result<Option<String>, OpenError> {
    Ok(match backend.name {
        "local" => {
            let root = local::LocalConfig::from_settings(settings)?.root;
            (!root.is_dir()).then(|| format!("the directory {} does not exist", root.display()))
        }
        "sqlite" => {
            let path = sqlite::SqliteConfig::from_settings(settings)?.path;
            let exists = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
            (!exists).then(|| format!("the SQLite file {} does not exist", path.display()))
        }
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(settings)?;
            let prefix = config.table_prefix.clone();
            db::DbStore::open_read_only(config)
                .await?
                .is_none()
                .then(|| format!("the database has no stategate tables ({prefix}*)"))
        }
        _ => None,
    })
}

/// Opens the configured store for reading only (a dry run): no probe, and
/// nothing created or changed, so read-only credentials will do. A local
/// directory or SQLite file that does not exist yet, or an empty SQLite
/// file, reads as an empty store instead of being created. Every write
/// through the store returned is refused ([`read_only::ReadOnly`]).
pub async fn open_for_reading(
    backend: &'static Backend,
    settings: StoreSettings,
) -> Result<Arc<dyn Store>, OpenError> {
    let inner = match backend.name {
        "local" => {
            let config = local::LocalConfig::from_settings(&settings)?;
            local::LocalStore::open_read_only(&config.root)
                .map_err(|e| {
                    OpenError::store(
                        "local store",
                        StoreError::ConfigInvalid {
                            setting: "path",
                            reason: format!("{}: {e}", config.root.display()),
                        },
                    )
                })?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        "sqlite" => {
            let config = sqlite::SqliteConfig::from_settings(&settings)?;
            // Opening creates the file and its tables; one that does not
            // exist (or is empty) has no states to read.
            match std::fs::metadata(&config.path) {
                Ok(meta) if meta.len() > 0 => Some((backend.open)(settings).await?),
                _ => None,
            }
        }
        // Opening for serving creates the tables; a dry run only looks.
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(&settings)?;
            db::DbStore::open_read_only(config)
                .await?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        // The bucket stores only check the bucket when they connect; their
        // writes are the probe's, which is skipped here.
        _ => Some((backend.open)(settings).await?),
    };
    Ok(Arc::new(read_only::ReadOnly::new(inner, backend.name)))
}
