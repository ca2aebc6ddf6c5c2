//! `storageType: local`: objects as files under a root directory, the tree
//! read like a bucket: the file holding an object is its key with `+`
//! appended (`prod/app/terraform.tfstate+`), and directories are named as
//! the keys below them begin. Keys never contain `+`, so no file is ever
//! where a directory must be: `a`, `a/b` and `a/b/c` are all states at
//! once, as in every other store, and so are their locks and history.
//! [`layout`] says why in full, and upgrades in place, at the first open
//! for serving, a root written when the key itself was the path.
//!
//! Writes are atomic and durable: the body goes to an unnamed file
//! (`O_TMPFILE`) in the target's own directory, is fsynced, is linked under
//! a temporary name there (`~<pid>-<n>`, which no key can take) and renamed
//! over the target; then the directory is fsynced. A reader sees the old
//! file or the new one, never a torn one, even if the process is killed
//! mid-write, and a killed write leaves nothing behind but, in the instant
//! between link and rename, a temporary name that listings skip and remove.
//! Working in the target's directory keeps new inodes near their directory
//! and renames within one directory, which the kernel does without its
//! file-system-wide rename lock. Where the file system cannot make unnamed
//! files, the body goes through a named file in `.stategate/local/tmp`.
//!
//! Conditions are checked and applied under an exclusive lock on the key
//! ([`super::keylock`]), so several stategate processes sharing the
//! directory agree: exactly one conditional create wins. Only the check and
//! the rename run under it; writing and syncing the body happen before. A
//! shared `flock` on the guard directory is held with it, so that an
//! upgrade of the layout, which takes it exclusively, never runs beside a
//! change.
//!
//! The store's own write lease ([`Store::native_lease`]) is a key lock on
//! another file, so a write with its history costs no lease objects, and a
//! lease dies with the process that held it.
//!
//! Every path is opened relative to the root's directory handle with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and every change is
//! made relative to a handle of the directory it happens in, so no request
//! can reach outside the root, and a symbolic link anywhere below it (put
//! there by someone with access to the disk) is refused as a conflict
//! rather than followed, for reads, writes, locks, history and listings.
//!
//! A version is the file's identity (inode, modification time, size): files
//! are never changed in place, so every write makes a new identity. That
//! also makes a hard link a snapshot, which is how history keeps a copy of
//! a state without writing it twice; files are created read-only (0444) so
//! that nobody edits one in place by accident.

use crate::stores::OpSnapshot;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::QUICK_BYTES;
use super::keylock::KeyLock;
use super::{
    Backend, Capabilities, Change, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Stopped,
    Store, StoreError, ThenChange, Version, open_with, path_setting, store_path,
};
use crate::settings::{ConfigError, StoreSettings};
use tree::{Tree, read_whole};

mod files;
mod layout;
#[cfg(test)]
mod tests;
mod tree;

/// Registration of the local store.
pub static BACKEND: Backend = Backend {
    name: "local",
    summary: "files under a directory on this machine (the default)",
    settings: &[
        path_setting(
            &["STATEGATE_LOCAL_PATH"],
            "./stategate-data",
            "directory that holds the states",
        ),
        super::guard::MIN_FREE_BYTES,
    ],
    open: |settings| {
        open_with(settings, LocalConfig::from_settings, |config| async move {
            Ok(LocalStore::open(&config)?)
        })
    },
};

/// The validated settings of the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The directory holding the states (relative paths resolved).
    pub root: PathBuf,
}

impl LocalConfig {
    /// Reads the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        Ok(LocalConfig {
            root: store_path(settings)?,
        })
    }
}

/// Where the store keeps its own files, inside the root and out of reach of
/// any state key (the state layer reserves `.stategate/`).
const INTERNAL_DIR: &str = ".stategate/local";
const TMP_DIR: &str = ".stategate/local/tmp";
/// Temporary names in a state's directory start with this; keys cannot.
const TMP_MARK: &str = "~";

/// Files under a root directory; cheap to clone.
#[derive(Clone)]
pub struct LocalStore(Arc<Tree>);

impl LocalStore {
    /// Opens (creating if needed) the configured root directory, first
    /// upgrading it in place if it is in an older layout ([`layout`]).
    pub fn open(config: &LocalConfig) -> Result<Self, ConfigError> {
        Self::open_dir(&config.root)
            .map_err(|e| ConfigError::invalid("path", format!("{}: {e}", config.root.display())))
    }

    /// Opens a root directory directly, as [`LocalStore::open`] does.
    pub fn open_dir(root: &Path) -> io::Result<Self> {
        Tree::open(root).map(|t| LocalStore(Arc::new(t)))
    }

    /// Opens an existing root directory for reading only: nothing is
    /// created, changed or removed (no temporaries swept, no lock files
    /// made), so a read-only directory will do. `Ok(None)` when the root
    /// does not exist. A root in an older layout is refused, since reading
    /// it would take the upgrade only an open for serving makes; an empty
    /// one reads as empty. The store returned must only be read: callers
    /// refuse writes before they reach it ([`super::open_for_reading`]).
    pub fn open_read_only(root: &Path) -> io::Result<Option<Self>> {
        Ok(Tree::open_read_only(root)?.map(|t| LocalStore(Arc::new(t))))
    }

    /// Opens a root directory that writes through named temporary files,
    /// as on file systems without unnamed ones, so the contract suite
    /// covers that path too.
    #[doc(hidden)]
    pub fn open_dir_with_named_temporaries(root: &Path) -> io::Result<Self> {
        Tree::open(root).map(|t| {
            LocalStore(Arc::new(Tree {
                unnamed: false,
                ..t
            }))
        })
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    f: impl FnOnce(&Tree) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let tree = Arc::clone(&store.0);
    super::blocking(move || f(&tree)).await
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local store at {}", self.0.root.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: true,
            compare_and_swap: true,
            unique_versions: true,
            native_lease: true,
        }
    }

    /// A streamed body over [`SPOOL_THRESHOLD`](super::payload::SPOOL_THRESHOLD)
    /// is handed out as the open file itself. A whole (not streamed) body
    /// is opened here, on the calling thread: a lookup of names the kernel
    /// holds; when it is at most [`QUICK_BYTES`] (a lock, a history record
    /// or pointer), it is read here too, and a longer one is read on a
    /// blocking thread.
    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        if !args.streamed {
            let Some((file, size, version)) = self.0.open_file(key)? else {
                return Ok(None);
            };
            let body = match size <= QUICK_BYTES {
                true => read_whole(key, file, size)?,
                false => {
                    let key = key.to_string();
                    blocking(self, move |_| read_whole(&key, file, size)).await?
                }
            };
            return Ok(Some((Payload::Memory(body), version)));
        }
        let key = key.to_string();
        let shared = args.shared;
        blocking(self, move |s| s.read_blocking(&key, shared)).await
    }

    /// A transient write (a lease dies with its holder) skips the fsync of
    /// the file and its directory: other processes on this machine see it
    /// at once all the same.
    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let key = key.to_string();
        blocking(self, move |s| {
            s.put_blocking(&key, &body, &args.condition, !args.transient)
        })
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let key = key.to_string();
        blocking(self, move |s| {
            s.delete_blocking(&key, &args.condition, !args.transient)
        })
        .await
    }

    /// A key lock on the store's lease file: it dies with this process.
    async fn native_lease(
        &self,
        key: &str,
        wait: std::time::Duration,
    ) -> Result<KeyLock, StoreError> {
        self.0.leases.lease(key, wait).await
    }

    /// The directory the listing starts at is opened here, on the calling
    /// thread (a new state's history has none, and costs no hand-over);
    /// the walk below it runs on a blocking thread.
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let Some(start) = self.0.listing_start(prefix)? else {
            return Ok(Vec::new());
        };
        let prefix = prefix.to_string();
        blocking(self, move |s| {
            s.list_blocking(&prefix, start, args.outside_internal)
        })
        .await
    }

    /// Made here, on the calling thread: two lookups of names the kernel
    /// holds, cheaper than handing them to a blocking thread and back.
    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        self.0.stat_file(key)
    }

    /// All on one blocking thread, in order: a history record (its copy,
    /// record, pruning and pointer) costs one hand-over to the blocking
    /// pool instead of one per change.
    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let tree = Arc::clone(&self.0);
        let made = super::blocking(move || Ok(tree.change_all_blocking(changes))).await;
        match made {
            Ok(result) => result,
            Err(error) => Err(Stopped { at: 0, error }),
        }
    }

    /// The write and its changes on one blocking thread, in order, as
    /// [`Store::change_all`] here makes its changes.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let key = key.to_string();
        blocking(self, move |s| {
            let version = s.put_blocking(&key, &body, &args.condition, !args.transient)?;
            let changed = s.change_all_blocking(then(&version));
            Ok((version, changed))
        })
        .await
    }

    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        let (from, from_version, to) = (
            copy.from.to_string(),
            copy.from_version.clone(),
            copy.to.to_string(),
        );
        blocking(self, move |s| {
            s.snapshot_blocking(&from, &from_version, &to)
        })
        .await
    }
}
