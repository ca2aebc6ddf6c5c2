//! The [`Store`] trait: the primitives every backend implements, each
//! taking an arguments struct in the way of opendal's accessor (one read,
//! one write, one delete; the condition, durability and body handling are
//! arguments, not twin methods). What a store can do is its
//! [`Capabilities`], which callers check instead of guessing from the
//! store's name. [`StoreExt`] holds the shorthands callers use most,
//! written once over the primitives.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use super::keylock::KeyLock;
use super::{INTERNAL_PREFIX, Payload, StoreError};

/// An opaque token naming one stored version of an object: an ETag, a row
/// generation, a file identity. Two reads return the same token only when
/// the object did not change in between, or (where
/// [`Capabilities::unique_versions`] is false) was written again with the
/// same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// An object read whole into memory ([`StoreExt::get`]).
#[derive(Clone, Debug)]
pub struct Object {
    /// The exact bytes that were written.
    pub body: Bytes,
    /// The token to pass to [`Condition::IfMatch`] to change this version only.
    pub version: Version,
}

/// When a write or delete may happen. Stores must apply the condition and
/// the change as one atomic step, also against other processes sharing the
/// store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditionally.
    Always,
    /// Only when no object has the key (writes only); otherwise
    /// [`StoreError::AlreadyExists`].
    IfAbsent,
    /// Only when the object exists and still has this version; otherwise
    /// [`StoreError::PreconditionFailed`].
    IfMatch(Version),
}

impl Condition {
    /// Checks the condition against the object's current version (`None`
    /// when it is absent), for stores that test it themselves before acting.
    /// `IfAbsent` only constrains writes.
    pub fn check(&self, current: Option<&Version>, is_write: bool) -> Result<(), StoreError> {
        match (self, current) {
            (Condition::Always, _) | (Condition::IfAbsent, None) => Ok(()),
            (Condition::IfAbsent, Some(_)) if is_write => Err(StoreError::AlreadyExists),
            (Condition::IfAbsent, Some(_)) => Ok(()),
            (Condition::IfMatch(expected), Some(v)) if v == expected => Ok(()),
            (Condition::IfMatch(_), _) => Err(StoreError::PreconditionFailed),
        }
    }
}

/// How [`Store::read`] hands a body back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpRead {
    /// The caller reads the body a piece at a time, so a large one may come
    /// back as a file (the local store's own file, opened, or a spool file)
    /// instead of whole in memory. Without it the body is in memory.
    pub streamed: bool,
    /// Many readers may ask for this version at once (state downloads): a
    /// body of a few MiB is read into memory once and shared by them
    /// ([`super::payload::BodyCache::shared`]) instead of each streaming
    /// its own. Views that may refuse a body by its size do not ask this.
    pub shared: bool,
    /// The caller wants the bytes only, never the version (a hint such as
    /// a history pointer): a store that learns the version with a request
    /// of its own (OSS) may skip it, and then gives as the version the
    /// body's MD5, which no condition may be made on.
    pub bytes_only: bool,
}

impl OpRead {
    /// A read whose large body may come back as a file.
    pub fn streamed() -> Self {
        OpRead {
            streamed: true,
            ..OpRead::default()
        }
    }

    /// A streamed read whose medium body may be shared with other readers.
    pub fn shared() -> Self {
        OpRead {
            shared: true,
            ..OpRead::streamed()
        }
    }
}

/// How [`Store::write`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpWrite {
    /// When the write may happen.
    pub condition: Condition,
    /// The object need not outlive a crash of the machine (a write lease,
    /// whose holder dies with it; a summary or pointer rebuilt from history
    /// when lost), so the store may skip making it durable.
    pub transient: bool,
}

impl OpWrite {
    /// A durable write under `condition`.
    pub fn new(condition: Condition) -> Self {
        OpWrite {
            condition,
            transient: false,
        }
    }

    /// A write under `condition` that need not outlive a crash.
    pub fn transient(condition: Condition) -> Self {
        OpWrite {
            condition,
            transient: true,
        }
    }
}

impl From<Condition> for OpWrite {
    fn from(condition: Condition) -> Self {
        OpWrite::new(condition)
    }
}

/// How [`Store::delete`] deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpDelete {
    /// When the delete may happen. With `Always` deleting an absent object
    /// succeeds; `IfAbsent` is not meaningful here and is treated like
    /// `Always`.
    pub condition: Condition,
    /// The removal need not outlive a crash of the machine (a transient
    /// object, a pruned history version that may as well come back, a
    /// released lock, which coming back only keeps its state locked until
    /// unlocked again).
    pub transient: bool,
}

impl OpDelete {
    /// A durable delete under `condition`.
    pub fn new(condition: Condition) -> Self {
        OpDelete {
            condition,
            transient: false,
        }
    }

    /// A delete under `condition` that need not outlive a crash.
    pub fn transient(condition: Condition) -> Self {
        OpDelete {
            condition,
            transient: true,
        }
    }
}

impl From<Condition> for OpDelete {
    fn from(condition: Condition) -> Self {
        OpDelete::new(condition)
    }
}

/// Which objects [`Store::list`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpList {
    /// Leave out the objects under [`INTERNAL_PREFIX`] (history, leases,
    /// probes). A listing of states must not cost more with every version
    /// kept, so stores skip that area without walking it (the local store
    /// does not enter its directory, the databases read around its range,
    /// S3 lists past it).
    pub outside_internal: bool,
}

impl OpList {
    /// Every object under the prefix but those under [`INTERNAL_PREFIX`].
    pub fn outside_internal() -> Self {
        OpList {
            outside_internal: true,
        }
    }

    /// Drops the internal objects from a whole listing, for stores that
    /// cannot skip that area more cheaply.
    pub fn filter(self, mut entries: Vec<Entry>) -> Vec<Entry> {
        if self.outside_internal {
            entries.retain(|e| !e.key.starts_with(INTERNAL_PREFIX));
        }
        entries
    }
}

/// One change of [`Store::change_all`], made as the method it names.
#[derive(Clone, Debug)]
pub enum Change {
    /// [`Store::write`].
    Write {
        key: String,
        body: Bytes,
        args: OpWrite,
        /// An earlier write of the same call that stored these very bytes
        /// (history's newest record, which is also its pointer): a store
        /// that can give one object a second name (a hard link on local
        /// disk) may do that instead of writing the bytes again. The other
        /// stores write them.
        same_as: Option<String>,
    },
    /// [`Store::delete`].
    Delete { key: String, args: OpDelete },
    /// [`Store::snapshot`].
    Snapshot {
        from: String,
        from_version: Version,
        to: String,
        body: Payload,
    },
}

impl Change {
    /// The key the change makes or removes.
    pub fn key(&self) -> &str {
        match self {
            Change::Write { key, .. } | Change::Delete { key, .. } => key,
            Change::Snapshot { to, .. } => to,
        }
    }
}

/// Where [`Store::change_all`] stopped: the failed change's place in the
/// list, and why.
#[derive(Debug)]
pub struct Stopped {
    pub at: usize,
    pub error: StoreError,
}

/// One object in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The store key, as given to `write`.
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
    /// The store has an exclusive lease of its own that dies with its
    /// holder ([`Store::native_lease`]); without it the state layer uses
    /// lease objects ([`crate::state::Lease`]).
    pub native_lease: bool,
}

/// What [`Store::snapshot`] copies: `from` at `from_version`, whose bytes
/// the caller also holds as `body`, to `to`.
#[derive(Clone, Copy)]
pub struct OpSnapshot<'a> {
    pub from: &'a str,
    pub from_version: &'a Version,
    pub to: &'a str,
    pub body: &'a Payload,
}

/// Whether a store takes writes now ([`Store::writes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Why no write is taken now; `None` when writes are taken.
    pub refused: Option<StoreError>,
    /// The room on the device holding the store, for stores on this
    /// machine's disk.
    pub space: Option<Space>,
}

/// The room on the device holding a store on this machine's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// The device's size in bytes.
    pub size: u64,
    /// Bytes free for stategate's use.
    pub free: u64,
    /// Below this many free bytes, new state versions are refused while
    /// locks, unlocks, deletes and purges still work (`min_free_bytes`).
    pub reserve: u64,
    /// The directory whose device this is.
    pub place: String,
    /// Files that can still be made on the device, and how many of them
    /// are kept for locks (each a file on local disk) the way `reserve`
    /// keeps bytes; `None` where the file system sets no such limit.
    pub inodes: Option<(u64, u64)>,
}

impl Space {
    /// Why a new state version of `size` bytes is refused now: when it
    /// would leave less than the reserve free, of bytes or of files.
    /// `None` while there is room, and always with no reserve
    /// (`min_free_bytes: 0`).
    pub fn refusal(&self, size: u64) -> Option<StoreError> {
        if self.reserve == 0 {
            return None;
        }
        if self.free < self.reserve.saturating_add(size) {
            return Some(StoreError::NotWritable(format!(
                "{} bytes free on the device holding {}, and a new version of {size} bytes would \
                 leave less than the reserve of {} bytes (min_free_bytes): new state versions are \
                 refused until space is freed; locks, unlocks, deletes and purges still work",
                self.free, self.place, self.reserve
            )));
        }
        let (free, kept) = self.inodes?;
        (free < kept.saturating_add(FILES_PER_VERSION)).then(|| {
            StoreError::NotWritable(format!(
                "{free} files can still be made on the device holding {}, and {kept} are kept \
                 for locks: new state versions are refused until files are removed; locks, \
                 unlocks, deletes and purges still work",
                self.place
            ))
        })
    }
}

/// The most files a new state version makes on local disk: the state,
/// its history folder and its record.
const FILES_PER_VERSION: u64 = 3;

/// The changes [`Store::write_then_change`] makes after its write, built
/// from the version written. It may be called more than once (a store
/// that runs a transaction again builds them again).
pub type ThenChange = std::sync::Arc<dyn Fn(&Version) -> Vec<Change> + Send + Sync>;

/// [`Store::operation_timeout`] of stores without a `timeout` setting.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

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

    /// Whether the store takes writes now, and how much room it has where
    /// it can tell. Stores take writes; the guard a server opens every
    /// store in ([`super::guard::Guarded`]) knows better.
    fn writes(&self) -> Writes {
        Writes::default()
    }

    /// Reads an object and its version; `Ok(None)` when it does not exist.
    /// The body is in memory unless `args` allow a file.
    async fn read(&self, key: &str, args: OpRead)
    -> Result<Option<(Payload, Version)>, StoreError>;

    /// Writes an object under `args`, returning its new version. Stores
    /// that can stream copy a file body from its file; the others read it
    /// whole, once.
    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError>;

    /// Deletes an object under `args`.
    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix` (a plain string prefix,
    /// not only whole segments), sorted by key, as `args` select.
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError>;

    /// The current version of an object without its body; `Ok(None)` when
    /// it does not exist. Stores with a cheap metadata read override this.
    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        Ok(self.read(key, OpRead::default()).await?.map(|(_, v)| v))
    }

    /// Takes this store's own exclusive lease on `key`, waiting at most
    /// `wait`; dropping it releases it. Only for stores whose
    /// [`Capabilities::native_lease`] is set; the others refuse.
    async fn native_lease(&self, key: &str, wait: Duration) -> Result<KeyLock, StoreError> {
        let _ = wait;
        Err(StoreError::unavailable(format!(
            "{} has no lease of its own for {key}",
            self.describe()
        )))
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
                Change::Write {
                    key, body, args, ..
                } => self.write(&key, body.into(), args).await.map(|_| ()),
                Change::Delete { key, args } => self.delete(&key, args).await,
                Change::Snapshot {
                    from,
                    from_version,
                    to,
                    body,
                } => {
                    let copy = OpSnapshot {
                        from: &from,
                        from_version: &from_version,
                        to: &to,
                        body: &body,
                    };
                    self.snapshot(copy).await
                }
            };
            made.map_err(|error| Stopped { at, error })?;
        }
        Ok(())
    }

    /// Writes `key` as [`Store::write`] does, then makes the changes
    /// `then` names for the version written, as [`Store::change_all`]
    /// does (history keeps a just-written state this way: its copy names
    /// the version). The changes' outcome comes back beside the version:
    /// once the write is made, a failed change does not undo it. A store
    /// may make both in one transaction, so a crash keeps the write with
    /// its changes or neither, and the caller waits for one commit; the
    /// default makes them one after the other.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let version = self.write(key, body, args).await?;
        let changed = self.change_all(then(&version)).await;
        Ok((version, changed))
    }

    /// Creates `copy.to` (only if absent, like `Condition::IfAbsent`)
    /// holding the bytes of `copy.from` at version `copy.from_version`,
    /// which the caller also has in hand as `copy.body`. Stores that can
    /// copy in place (a hard link, a server-side copy) do so without moving
    /// the bytes, and answer [`StoreError::PreconditionFailed`] when `from`
    /// no longer has that version; the default writes `body`.
    ///
    /// The copy is durable once the caller's next durable write of a key
    /// beside it (same folder) returns, and may be before: history writes
    /// the version's record there right after, so the local store, where
    /// one directory sync covers both names, syncs once for the two.
    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        self.write(
            copy.to,
            copy.body.clone(),
            OpWrite::new(Condition::IfAbsent),
        )
        .await
        .map(|_| ())
    }
}

/// The shorthands callers use most, written once over [`Store`]'s
/// primitives for every store (no store implements them).
#[async_trait]
pub trait StoreExt: Store {
    /// Reads an object's bytes whole into memory, without its version
    /// ([`OpRead::bytes_only`]); `Ok(None)` when it does not exist.
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let read = OpRead {
            bytes_only: true,
            ..OpRead::default()
        };
        match self.read(key, read).await? {
            Some((body, _)) => Ok(Some(body.to_bytes().await?)),
            None => Ok(None),
        }
    }

    /// Reads an object whole into memory; `Ok(None)` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self.read(key, OpRead::default()).await? {
            Some((body, version)) => Ok(Some(Object {
                body: body.to_bytes().await?,
                version,
            })),
            None => Ok(None),
        }
    }

    /// Writes `body` durably under `condition`, returning its new version.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        self.write(key, body.into(), OpWrite::new(condition)).await
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
