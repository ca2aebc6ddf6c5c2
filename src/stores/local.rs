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

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use time::OffsetDateTime;

use super::keylock::{KeyLock, KeyLocks};
use super::payload::{BodyCache, FileBody, SPOOL_THRESHOLD};
use super::{
    Backend, Capabilities, Condition, Entry, INTERNAL_PREFIX, OpDelete, OpList, OpRead, OpWrite,
    Payload, Store, StoreError, Version,
};
use crate::settings::{ConfigError, Setting, StoreSettings};

mod layout;

/// Registration of the local store.
pub static BACKEND: Backend = Backend {
    name: "local",
    summary: "files under a directory on this machine (the default)",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move {
            let config = LocalConfig::from_settings(&settings)?;
            Ok(Arc::new(LocalStore::open(&config)?) as Arc<dyn Store>)
        })
    },
};

const SETTINGS: &[Setting] = &[
    Setting {
        name: "path",
        aliases: &[],
        env: &["STATEGATE_LOCAL_PATH"],
        secret: false,
        default: Some("./stategate-data"),
        help: "directory that holds the states",
    },
    Setting {
        name: "min_free_bytes",
        aliases: &["minFreeBytes"],
        env: &["STATEGATE_MIN_FREE_BYTES"],
        secret: false,
        default: None,
        help: "below this many free bytes on the device, new state versions are refused while locks, unlocks, deletes and purges still work (default: 64 MiB, or 1% of the device if less; 0 turns it off)",
    },
];

/// The validated settings of the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The directory holding the states (relative paths resolved).
    pub root: PathBuf,
}

impl LocalConfig {
    /// Reads the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let root = settings
            .path("path")
            .ok_or_else(|| ConfigError::invalid("path", "must not be empty"))?;
        Ok(LocalConfig { root })
    }
}

/// Where the store keeps its own files, inside the root and out of reach of
/// any state key (the state layer reserves `.stategate/`).
const INTERNAL_DIR: &str = ".stategate/local";
const TMP_DIR: &str = ".stategate/local/tmp";
/// Key locks for check-and-change, and for write leases ([`KeyLocks`]).
const KEY_LOCKS: &str = "keys";
const LEASE_LOCKS: &str = "leases";
/// Temporary names in a state's directory start with this; keys cannot.
const TMP_MARK: &str = "~";

/// Resolution that stays below the directory handle and follows no link.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Files under a root directory; cheap to clone.
#[derive(Clone)]
pub struct LocalStore(Arc<Tree>);

/// The directory tree behind a [`LocalStore`], used from blocking threads.
struct Tree {
    /// The root as configured, for messages to the operator only.
    root: PathBuf,
    /// The root directory; every path is resolved beneath it.
    root_fd: OwnedFd,
    /// The store's own directory (`.stategate/local`), which holds the
    /// guard ([`layout::GUARD`]).
    internal: OwnedFd,
    /// Temporary files, on the same file system as the root so rename is
    /// atomic; used where unnamed files are not available.
    tmp_fd: OwnedFd,
    /// Whether bodies go to unnamed files in the target's directory.
    unnamed: bool,
    /// Held around each check and change of one key.
    keys: KeyLocks,
    /// The write leases of states.
    leases: Arc<KeyLocks>,
    /// Small bodies last read, by key and version.
    bodies: BodyCache,
}

/// Gives temporary files unique names within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file name no other write uses: `prefix`, then this process's
/// id (which tells whether its writer is alive), a counter and the time.
fn temporary_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    )
}

/// Whether this file system makes unnamed files (`O_TMPFILE`) that this
/// process may link into a directory (`AT_EMPTY_PATH`, allowed without
/// privileges since Linux 6.10): tried once, in the temporary directory.
fn unnamed_files_work(tmp_dir: &OwnedFd) -> bool {
    let Ok(fd) = rustix::fs::openat(
        tmp_dir,
        ".",
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o444),
    ) else {
        return false;
    };
    let probe = temporary_name("");
    let linked = rustix::fs::linkat(&fd, "", tmp_dir, probe.as_str(), AtFlags::EMPTY_PATH);
    let _ = rustix::fs::unlinkat(tmp_dir, probe.as_str(), AtFlags::empty());
    linked.is_ok()
}

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
        let root_fd = match rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Err(Errno::NOENT) => return Ok(None),
            opened => opened?,
        };
        layout::check_readable(&root_fd)?;
        // Reads use only the root; these are never reached.
        let unused = || rustix::io::dup(&root_fd);
        Ok(Some(LocalStore(Arc::new(Tree {
            root: root.canonicalize()?,
            internal: unused()?,
            tmp_fd: unused()?,
            unnamed: false,
            keys: KeyLocks::unopened(unused()?, KEY_LOCKS),
            leases: Arc::new(KeyLocks::unopened(unused()?, LEASE_LOCKS)),
            root_fd,
            bodies: BodyCache::default(),
        }))))
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

/// Opens `rel` below `dir`, never through a link.
fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    // openat2 refuses a mode unless it creates.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o644)
    } else {
        Mode::empty()
    };
    rustix::fs::openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        mode,
        BENEATH,
    )
}

/// Opens the directory `rel` below `dir`, creating missing directories one
/// at a time (each created and then opened without following links).
fn open_dir_beneath(dir: &OwnedFd, rel: &str, create: bool) -> Result<OwnedFd, Errno> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY;
    if rel.is_empty() {
        return open_beneath(dir, ".", flags);
    }
    match open_beneath(dir, rel, flags) {
        Err(Errno::NOENT) if create => {}
        other => return other,
    }
    let mut current = open_beneath(dir, ".", flags)?;
    for part in rel.split('/') {
        match rustix::fs::mkdirat(&current, part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        current = open_beneath(&current, part, flags)?;
    }
    Ok(current)
}

impl Tree {
    fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let root_fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let tmp_fd = open_dir_beneath(&root_fd, TMP_DIR, true)?;
        // Prove the directory is writable now rather than at the first apply.
        // Named as temporaries are, so two opens in one process never meet.
        let probe = temporary_name("open-");
        drop(create_new(&tmp_fd, &probe)?);
        rustix::fs::unlinkat(&tmp_fd, probe.as_str(), AtFlags::empty())?;
        remove_stale_temporaries(&tmp_fd);
        let internal = open_dir_beneath(&root_fd, INTERNAL_DIR, false)?;
        let renamed = layout::bring_up_to_date(&root_fd, &internal, &tmp_fd)?;
        if renamed > 0 {
            tracing::info!(
                root = %root.display(),
                files = renamed,
                "local store upgraded to layout {}: each object's file now ends in `{}`",
                layout::LAYOUT,
                layout::FILE_MARK
            );
        }
        let unnamed = unnamed_files_work(&tmp_fd);
        Ok(Tree {
            root: root.canonicalize()?,
            keys: KeyLocks::open(rustix::io::dup(&internal)?, KEY_LOCKS)?,
            leases: Arc::new(KeyLocks::open(rustix::io::dup(&internal)?, LEASE_LOCKS)?),
            internal,
            root_fd,
            tmp_fd,
            unnamed,
            bodies: BodyCache::default(),
        })
    }

    /// Splits a store key into the directory that holds its file (relative
    /// to the root, `""` for the root itself) and the file's name there
    /// ([`layout::file_name`]), refusing anything that could leave the root
    /// or land on a name the layout keeps apart from objects (the state
    /// layer validates keys too; this and `openat2` are the last lines of
    /// defence).
    fn locate<'k>(&self, key: &'k str) -> Result<(&'k str, String), StoreError> {
        let clean = !key.is_empty()
            && !key.contains('\0')
            && !key.contains('\\')
            && !key.contains(layout::FILE_MARK)
            && Path::new(key)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        let temporary = key.split('/').any(|seg| seg.starts_with(TMP_MARK));
        if !clean || temporary || key.starts_with(INTERNAL_DIR) {
            return Err(StoreError::unavailable(format!(
                "refusing key outside the store: {key:?}"
            )));
        }
        let (dir, last) = key.rsplit_once('/').unwrap_or(("", key));
        Ok((dir, layout::file_name(last)))
    }

    /// The directory holding `key`; `None` when it does not exist.
    fn parent(&self, key: &str, dir: &str, create: bool) -> Result<Option<OwnedFd>, StoreError> {
        match open_dir_beneath(&self.root_fd, dir, create) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT | Errno::NOTDIR) if !create => Ok(None),
            Err(e) => Err(translate(key, "opening the directory of", e)),
        }
    }

    /// Locks `key` for a check and a change (see the module's notes).
    fn lock_guard(&self, key: &str) -> Result<(File, KeyLock), StoreError> {
        let fd = open_beneath(&self.internal, layout::GUARD, OFlags::RDONLY).map_err(|e| {
            StoreError::unavailable(format!("opening the guard: {}", io::Error::from(e)))
        })?;
        let guard = File::from(fd);
        let locking = |e: io::Error| StoreError::unavailable(format!("locking {key}: {e}"));
        guard.lock_shared().map_err(locking)?;
        let lock = self.keys.lock(key).map_err(locking)?;
        Ok((guard, lock))
    }

    /// Writes `key`; with `durable`, the file and the directory entry are
    /// on disk before this returns.
    fn put_blocking(
        &self,
        key: &str,
        body: &Payload,
        condition: &Condition,
        durable: bool,
    ) -> Result<Version, StoreError> {
        let (dir, name) = self.locate(key)?;
        let name = name.as_str();
        let parent = self.parent(key, dir, true)?.expect("created");
        if !self.unnamed {
            return self.put_named(key, &parent, name, body, condition, durable);
        }
        // Read-only once in place: history hard-links these files, so an
        // edit in place would change a kept version too.
        let fd = rustix::fs::openat(
            &parent,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o444),
        )
        .map_err(|e| translate(key, "writing", e))?;
        let mut file = File::from(fd);
        let version = fill(key, &mut file, body, durable)?;
        self.place(key, &parent, name, condition, durable, || {
            if matches!(condition, Condition::IfAbsent) {
                // Nothing to replace: the link is the create, and fails if a
                // file (or a directory) got there some other way.
                return rustix::fs::linkat(&file, "", &parent, name, AtFlags::EMPTY_PATH)
                    .map_err(|e| translate(key, "writing", e));
            }
            let tmp = temporary_name(TMP_MARK);
            rustix::fs::linkat(&file, "", &parent, tmp.as_str(), AtFlags::EMPTY_PATH)
                .map_err(|e| translate(key, "writing", e))?;
            rustix::fs::renameat(&parent, tmp.as_str(), &parent, name).map_err(|e| {
                let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                translate(key, "writing", e)
            })
        })?;
        Ok(version)
    }

    /// [`Tree::put_blocking`] through a named file in the store's temporary
    /// directory, where unnamed files cannot be made.
    fn put_named(
        &self,
        key: &str,
        parent: &OwnedFd,
        name: &str,
        body: &Payload,
        condition: &Condition,
        durable: bool,
    ) -> Result<Version, StoreError> {
        let tmp = temporary_name("");
        let tmp = tmp.as_str();
        let result = (|| {
            let mut file = create_new(&self.tmp_fd, tmp)
                .map_err(|e| StoreError::unavailable(format!("writing {key}: {e}")))?;
            let version = fill(key, &mut file, body, durable)?;
            drop(file);
            self.place(key, parent, name, condition, durable, || {
                rustix::fs::renameat(&self.tmp_fd, tmp, parent, name)
                    .map_err(|e| translate(key, "writing", e))
            })?;
            Ok(version)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.tmp_fd, tmp, AtFlags::empty());
        }
        result
    }

    /// Checks `condition` on `name` in `parent` and, if it holds, puts the
    /// written file in place with `put_in_place`, both under `key`'s lock;
    /// then, when `durable`, syncs the directory.
    fn place(
        &self,
        key: &str,
        parent: &OwnedFd,
        name: &str,
        condition: &Condition,
        durable: bool,
        put_in_place: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let guard = self.lock_guard(key)?;
        condition.check(file_version(key, parent, name)?.as_ref(), true)?;
        put_in_place()?;
        drop(guard);
        if durable {
            rustix::fs::fsync(parent).map_err(|e| translate(key, "syncing", e))?;
        }
        Ok(())
    }

    fn delete_blocking(
        &self,
        key: &str,
        condition: &Condition,
        durable: bool,
    ) -> Result<(), StoreError> {
        let (dir, name) = self.locate(key)?;
        let guard = self.lock_guard(key)?;
        let Some(parent) = self.parent(key, dir, false)? else {
            return condition.check(None, false);
        };
        condition.check(file_version(key, &parent, &name)?.as_ref(), false)?;
        match rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(translate(key, "deleting", e)),
        }
        drop(guard);
        if durable {
            rustix::fs::fsync(&parent).map_err(|e| translate(key, "syncing", e))?;
        }
        Ok(())
    }

    /// Hard-links `from` at `to`: files are never changed in place (every
    /// write renames a new file over the name), so the link is a snapshot.
    /// Its directory is not synced here: the caller's next durable write in
    /// that directory syncs it, link included ([`Store::snapshot`]).
    fn snapshot_blocking(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
    ) -> Result<(), StoreError> {
        let (src_dir, src_name) = self.locate(from)?;
        let (dst_dir, dst_name) = self.locate(to)?;
        let dst = self.parent(to, dst_dir, true)?.expect("created");
        let guard = self.lock_guard(from)?;
        let Some(src) = self.parent(from, src_dir, false)? else {
            return Err(StoreError::PreconditionFailed);
        };
        Condition::IfMatch(from_version.clone())
            .check(file_version(from, &src, &src_name)?.as_ref(), true)?;
        match rustix::fs::linkat(
            &src,
            src_name.as_str(),
            &dst,
            dst_name.as_str(),
            AtFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(StoreError::AlreadyExists),
            Err(e) => return Err(translate(to, "copying to", e)),
        }
        drop(guard);
        Ok(())
    }

    /// Opens `key`; a body over `in_memory` bytes is handed out as the open
    /// file itself (files are never changed in place, so it stays the
    /// version read however long the reader takes). With `cached`, a small
    /// body is taken from, or kept in, the body cache.
    fn read_blocking(
        &self,
        key: &str,
        in_memory: usize,
        cached: bool,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let (dir, name) = self.locate(key)?;
        let path = match dir {
            "" => name,
            dir => format!("{dir}/{name}"),
        };
        let fd = match open_beneath(&self.root_fd, &path, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(translate(key, "reading", e)),
        };
        // The version comes from the same open file as the bytes, so they agree
        // even if the name is replaced while we read.
        let stat = rustix::fs::fstat(&fd).map_err(|e| translate(key, "reading", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let size = stat.st_size.max(0) as u64;
        let version = version_of(&stat);
        if size > in_memory as u64 {
            let body = FileBody::new(File::from(fd), size);
            return Ok(Some((Payload::File(Arc::new(body)), version)));
        }
        if cached && let Some(body) = self.bodies.get(key, &version) {
            return Ok(Some((Payload::Memory(body), version)));
        }
        let mut body = Vec::with_capacity(size as usize);
        File::from(fd)
            .read_to_end(&mut body)
            .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))?;
        let body = Bytes::from(body);
        if cached {
            self.bodies.put(key, &version, &body);
        }
        Ok(Some((Payload::Memory(body), version)))
    }

    /// Walks the tree below `prefix`. Directories are opened one at a time,
    /// each by its path below the starting directory, and closed before
    /// the next: a listing holds two descriptors however many states and
    /// history directories there are, so it never makes another request
    /// run out of them. With `skip_internal`, `.stategate/` is not entered.
    fn list_blocking(&self, prefix: &str, skip_internal: bool) -> Result<Vec<Entry>, StoreError> {
        // Start at the deepest directory the prefix names whole.
        let start_rel = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        if !start_rel.is_empty() {
            self.locate(start_rel)?;
        }
        let Some(start) = self.parent(prefix, start_rel, false)? else {
            return Ok(Vec::new());
        };
        let base = if start_rel.is_empty() {
            String::new()
        } else {
            format!("{start_rel}/")
        };
        let mut out = Vec::new();
        // Directories still to read, by their path below `start` ("" is
        // `start` itself).
        let mut pending = vec![String::new()];
        while let Some(below) = pending.pop() {
            let dir_base = format!("{base}{below}");
            let listing_err = |e: Errno| translate(&dir_base, "listing", e);
            let opened;
            let dir = if below.is_empty() {
                &start
            } else {
                match open_dir_beneath(&start, below.trim_end_matches('/'), false) {
                    Ok(fd) => {
                        opened = fd;
                        &opened
                    }
                    // Removed since it was seen.
                    Err(Errno::NOENT | Errno::NOTDIR) => continue,
                    Err(e) => return Err(listing_err(e)),
                }
            };
            let names: Vec<String> = Dir::read_from(dir)
                .map_err(listing_err)?
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let name: &CStr = entry.file_name();
                    let name = name.to_str().ok()?;
                    (name != "." && name != "..").then(|| name.to_string())
                })
                .collect();
            for name in names {
                if let Some(rest) = name.strip_prefix(TMP_MARK) {
                    // A write killed between its link and its rename.
                    if writer_pid(rest)
                        .is_some_and(|pid| pid != std::process::id() && !process_alive(pid))
                    {
                        let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                    }
                    continue;
                }
                let Ok(stat) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                else {
                    continue;
                };
                // A directory is named as the keys below it begin; a file
                // holds an object only under a name the layout gives one
                // (anything else there was put by hand). Links are neither
                // followed nor listed.
                let file_type = FileType::from_raw_mode(stat.st_mode);
                let key = match file_type {
                    FileType::Directory => format!("{dir_base}{name}"),
                    FileType::RegularFile => match layout::segment_of(&name) {
                        Some(segment) => format!("{dir_base}{segment}"),
                        None => continue,
                    },
                    _ => continue,
                };
                if key.starts_with(INTERNAL_DIR)
                    || (skip_internal && format!("{key}/").starts_with(INTERNAL_PREFIX))
                {
                    continue;
                }
                match file_type {
                    FileType::Directory if prefix.starts_with(&key) || key.starts_with(prefix) => {
                        pending.push(format!("{below}{name}/"));
                    }
                    FileType::RegularFile if key.starts_with(prefix) => out.push(Entry {
                        key,
                        size: stat.st_size.max(0) as u64,
                        modified: OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(stat.st_mtime) * 1_000_000_000
                                + i128::from(stat.st_mtime_nsec),
                        )
                        .ok(),
                    }),
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn stat_blocking(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let (dir, name) = self.locate(key)?;
        match self.parent(key, dir, false)? {
            Some(parent) => file_version(key, &parent, &name),
            None => Ok(None),
        }
    }
}

/// Writes `body` into the new file `file`, synced when `durable`, and
/// gives its version.
fn fill(key: &str, file: &mut File, body: &Payload, durable: bool) -> Result<Version, StoreError> {
    let io_err = |e: io::Error| StoreError::unavailable(format!("writing {key}: {e}"));
    body.copy_to(file).map_err(io_err)?;
    if durable {
        file.sync_all().map_err(io_err)?;
    }
    Ok(version_of(
        &rustix::fs::fstat(&*file).map_err(|e| io_err(e.into()))?,
    ))
}

/// Creates a new read-only file in `dir`.
fn create_new(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o444),
    )?;
    Ok(File::from(fd))
}

/// The version of the file `name` in `dir`, `None` when there is none (or
/// it is a directory); a link there is refused.
fn file_version(key: &str, dir: &OwnedFd, name: &str) -> Result<Option<Version>, StoreError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Ok(Some(version_of(&stat))),
            FileType::Symlink => Err(translate(key, "checking", Errno::LOOP)),
            _ => Ok(None),
        },
        Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(translate(key, "checking", e)),
    }
}

/// Turns a file system error on `key` into a store error. The layout
/// keeps every file stategate writes off the names of directories, so a
/// key whose path crosses a file where a directory must be (or the other
/// way round) meets something put there by hand; that, like a symbolic
/// link, is a conflict with that one key, not a failure of the store.
/// Messages name the key, never the root's absolute path.
fn translate(key: &str, doing: &str, e: Errno) -> StoreError {
    match e {
        Errno::NOTDIR | Errno::ISDIR | Errno::EXIST => StoreError::KeyConflict(format!(
            "`{key}` clashes with a file or directory in the store's directory that stategate did not make"
        )),
        Errno::LOOP | Errno::XDEV => StoreError::KeyConflict(format!(
            "`{key}` crosses a symbolic link in the store's directory; stategate never follows links"
        )),
        other => StoreError::unavailable(format!("{doing} {key}: {}", io::Error::from(other))),
    }
}

fn version_of(stat: &Stat) -> Version {
    Version(format!(
        "{:x}-{:x}.{:x}-{:x}",
        stat.st_ino, stat.st_mtime, stat.st_mtime_nsec, stat.st_size
    ))
}

/// Removes temporary files that no live process is writing: those of a
/// process that has exited (the name starts with its pid; our own pid
/// cannot have written any yet) and any older than an hour, whatever made
/// them. A killed write leaves its temporary file behind; without this,
/// they would pile up across restarts.
fn remove_stale_temporaries(tmp_dir: &OwnedFd) {
    let Ok(dir) = Dir::read_from(tmp_dir) else {
        return;
    };
    let own = std::process::id();
    // A temporary named with this process's id is a dead process's (one
    // that had the id before) only if it is older than this process's
    // first open: another store opened in this process may be writing it.
    // File times are coarser than the clock, hence the second's margin.
    static FIRST_OPEN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let first_open = *FIRST_OPEN.get_or_init(|| OffsetDateTime::now_utc().unix_timestamp() - 1);
    let names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().to_str().ok().map(str::to_string))
        .filter(|n| n != "." && n != "..")
        .collect();
    for name in names {
        let Ok(stat) = rustix::fs::statat(tmp_dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let writer_gone = writer_pid(&name).is_some_and(|pid| match pid == own {
            true => stat.st_mtime < first_open,
            false => !process_alive(pid),
        });
        let old = OffsetDateTime::now_utc().unix_timestamp() - stat.st_mtime > 3600;
        if writer_gone || old {
            let _ = rustix::fs::unlinkat(tmp_dir, name.as_str(), AtFlags::empty());
        }
    }
}

/// The process that made a temporary file, from its name.
fn writer_pid(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}

/// Whether a process with this pid exists (EPERM: it does, owned by another user).
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
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

    /// A streamed body over [`SPOOL_THRESHOLD`] is handed out as the open
    /// file itself.
    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let key = key.to_string();
        if !args.streamed {
            return blocking(self, move |s| s.read_blocking(&key, usize::MAX, false)).await;
        }
        blocking(self, move |s| s.read_blocking(&key, SPOOL_THRESHOLD, true)).await
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

    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        blocking(self, move |s| {
            s.list_blocking(&prefix, args.outside_internal)
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let key = key.to_string();
        blocking(self, move |s| s.stat_blocking(&key)).await
    }

    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        _body: &Payload,
    ) -> Result<(), StoreError> {
        let (from, from_version, to) = (from.to_string(), from_version.clone(), to.to_string());
        blocking(self, move |s| {
            s.snapshot_blocking(&from, &from_version, &to)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::{OpDelete, OpList, StoreExt};

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_leave_no_temporary_behind_on_either_path() {
        for named in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = if named {
                LocalStore::open_dir_with_named_temporaries(dir.path()).unwrap()
            } else {
                LocalStore::open_dir(dir.path()).unwrap()
            };
            assert_eq!(store.0.unnamed, !named, "unnamed files work here");
            let v1 = store
                .put("team/a", Bytes::from_static(b"one"), Condition::IfAbsent)
                .await
                .unwrap();
            store
                .put("team/a", Bytes::from_static(b"two"), Condition::IfMatch(v1))
                .await
                .unwrap();
            let refused = store
                .put("team/a", Bytes::from_static(b"x"), Condition::IfAbsent)
                .await;
            assert!(
                matches!(refused, Err(StoreError::AlreadyExists)),
                "{refused:?}"
            );
            assert_eq!(store.get("team/a").await.unwrap().unwrap().body, "two");
            assert_eq!(names(&dir.path().join("team")), ["a+"], "named: {named}");
            assert!(
                names(&dir.path().join(TMP_DIR)).is_empty(),
                "named: {named}"
            );
        }
    }

    #[tokio::test]
    async fn a_key_and_the_keys_below_it_are_all_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_dir(dir.path()).unwrap();
        // In both orders, with each one's lock, and history beside a state
        // named like a history file.
        let keys = [
            "a/b",
            "a",
            "a/b/c",
            "a.tflock",
            "a/b.tflock",
            "x/y",
            "x",
            ".stategate/history/a/newest.json/0000000001.json",
            ".stategate/history/a/newest.json",
        ];
        for key in keys {
            store
                .put(key, Bytes::from(key), Condition::IfAbsent)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        for key in keys {
            assert_eq!(store.get(key).await.unwrap().unwrap().body, key);
        }
        let listed = |prefix: &'static str| {
            let store = store.clone();
            async move {
                let entries = store.list(prefix, OpList::default()).await.unwrap();
                entries.into_iter().map(|e| e.key).collect::<Vec<_>>()
            }
        };
        let mut all = keys.to_vec();
        all.sort();
        assert_eq!(listed("").await, all);
        assert_eq!(
            listed("a").await,
            ["a", "a.tflock", "a/b", "a/b.tflock", "a/b/c"]
        );
        assert_eq!(listed("a/b").await, ["a/b", "a/b.tflock", "a/b/c"]);
        assert_eq!(
            store
                .list("", OpList::outside_internal())
                .await
                .unwrap()
                .len(),
            keys.len() - 2
        );
        store
            .delete("a", OpDelete::new(Condition::Always))
            .await
            .unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        assert_eq!(store.get("a/b/c").await.unwrap().unwrap().body, "a/b/c");
        // No key reaches a name the layout gives a file.
        let refused = store.get("a+").await.unwrap_err();
        assert!(refused.to_string().contains("refusing key"), "{refused}");
    }

    #[tokio::test]
    async fn a_killed_writers_temporary_is_skipped_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_dir(dir.path()).unwrap();
        store
            .put("team/a", Bytes::from_static(b"{}"), Condition::Always)
            .await
            .unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let dead_name = format!("{TMP_MARK}{dead}-1-2");
        let live_name = format!("{TMP_MARK}{}-1-2", std::process::id());
        for name in [&dead_name, &live_name] {
            fs::write(dir.path().join("team").join(name), b"partial").unwrap();
        }
        let listed: Vec<String> = store
            .list("", OpList::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(listed, ["team/a"]);
        assert_eq!(
            names(&dir.path().join("team")),
            ["a+".to_string(), live_name.clone()]
        );
        // No key can name a temporary.
        for key in [live_name.clone(), format!("team/{live_name}")] {
            let e = store.get(&key).await.unwrap_err();
            assert!(e.to_string().contains("refusing key"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_lease_excludes_another_store_on_the_root_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Two opens of one root, as two processes would have.
        let a = LocalStore::open_dir(dir.path()).unwrap();
        let b = LocalStore::open_dir(dir.path()).unwrap();
        let wait = std::time::Duration::from_millis(100);
        let held = a.native_lease("team/a", wait).await.unwrap();
        let busy = b.native_lease("team/a", wait).await.unwrap_err();
        assert!(busy.is_unavailable(), "{busy}");
        b.native_lease("team/b", wait).await.unwrap();
        drop(held);
        b.native_lease("team/a", wait).await.unwrap();
    }
}
