//! What can go wrong in a store: [`StoreError`], the few kinds every store
//! translates its native errors into right next to the call, and
//! [`OpenError`], why a store could not be put to use at start-up. Kept
//! apart from the trait so the stores' own error modules need only this.

use crate::settings::ConfigError;

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
    /// The bucket, directory or database the settings name does not exist
    /// (not an object: an absent object is `Ok(None)`).
    #[error("store unavailable: {reason}")]
    BucketMissing {
        setting: &'static str,
        reason: String,
    },
    /// The store could not be reached or failed (network, timeout, disk
    /// full, a server error). The message names the cause and never
    /// carries a secret.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store can be read but refuses writes: its device is full, its
    /// file system or database is read-only, its credentials may read but
    /// not write. Carries the cause; the server serves reads meanwhile and
    /// tries writing again by itself (see [`super::guard`]).
    #[error("the store cannot take writes: {0}")]
    NotWritable(String),
    /// The server was told to serve this store read-only (`read_only`).
    #[error(
        "this stategate is read-only (read_only: true): it serves reads and refuses every change"
    )]
    ReadOnlyMode,
}

impl StoreError {
    /// Shorthand for an [`StoreError::Unavailable`] with context.
    pub fn unavailable(context: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(context.to_string())
    }

    /// A write refused for want of space on the device holding the store.
    pub fn no_space() -> Self {
        StoreError::NotWritable("no space left on the device".into())
    }

    /// A write refused because the file system holding the store is
    /// mounted read-only.
    pub fn read_only_file_system() -> Self {
        StoreError::NotWritable("the file system is read-only".into())
    }

    /// A failure of the store's own files while `doing`: a full device or
    /// a read-only file system is the store refusing writes, anything
    /// else a failure.
    pub fn of_io(doing: &str, e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Self::no_space(),
            Some(libc::EROFS) => Self::read_only_file_system(),
            _ => Self::unavailable(format!("{doing}: {e}")),
        }
    }

    /// Whether this failure means the store as a whole takes no writes now
    /// (rather than one write failing): what puts a server into serving
    /// reads only until writes work again.
    pub fn refuses_writes(&self) -> bool {
        matches!(
            self,
            StoreError::NotWritable(_) | StoreError::PermissionDenied { .. }
        )
    }

    /// The setting to check, for the kinds that have one.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            StoreError::ConfigInvalid { setting, .. }
            | StoreError::PermissionDenied { setting, .. }
            | StoreError::BucketMissing { setting, .. } => Some(setting),
            _ => None,
        }
    }

    /// Whether the store, not the request, is at fault: the request may
    /// succeed later (503).
    pub fn is_unavailable(&self) -> bool {
        !self.is_refusal() && !matches!(self, StoreError::KeyConflict(_))
    }

    /// Whether a condition of the request was not met (the object exists,
    /// or changed): the store checked and changed nothing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists | StoreError::PreconditionFailed
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
            StoreError::BucketMissing { setting, reason } => StoreError::BucketMissing {
                setting,
                reason: with(reason),
            },
            StoreError::Unavailable(reason) => StoreError::Unavailable(with(reason)),
            other => other,
        }
    }
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
