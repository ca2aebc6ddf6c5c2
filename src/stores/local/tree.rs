//! The directory tree behind a [`LocalStore`](super::LocalStore) and its
//! blocking operations: where a key's file lives, the check and change of
//! one key under its lock, reads, snapshots and listings. The async
//! [`Store`](crate::stores::Store) methods run these on blocking threads.

use std::ffi::CStr;
use std::fs;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use time::OffsetDateTime;

use super::files::{
    DIR_MODE, FILE_MODE, create_new, file_version, fill, open_beneath, open_dir_beneath,
    remove_stale_temporaries, temporary_name, translate, unnamed_files_work, version_of,
    writer_pid,
};
use super::layout;
use super::{INTERNAL_DIR, TMP_DIR, TMP_MARK};
use crate::stores::keylock::{KeyLock, KeyLocks};
use crate::stores::payload::{BodyCache, FileBody, SPOOL_THRESHOLD};
use crate::stores::{
    Change, Condition, Entry, INTERNAL_PREFIX, Payload, Stopped, StoreError, Version, process_alive,
};

/// The longest body [`Tree::link_same`] compares before linking: history
/// pointers and records are a few hundred bytes.
const LINK_BYTES_MAX: usize = 64 * 1024;

/// Key locks for check-and-change, and for write leases ([`KeyLocks`]).
const KEY_LOCKS: &str = "keys";
const LEASE_LOCKS: &str = "leases";

/// The directory tree behind a [`LocalStore`](super::LocalStore), used
/// from blocking threads.
pub(super) struct Tree {
    /// The root as configured, for messages to the operator only.
    pub(super) root: PathBuf,
    /// The root directory; every path is resolved beneath it.
    pub(super) root_fd: OwnedFd,
    /// The store's own directory (`.stategate/local`), which holds the
    /// guard ([`layout::GUARD`]).
    pub(super) internal: OwnedFd,
    /// Temporary files, on the same file system as the root so rename is
    /// atomic; used where unnamed files are not available.
    pub(super) tmp_fd: OwnedFd,
    /// Whether bodies go to unnamed files in the target's directory.
    pub(super) unnamed: bool,
    /// Held around each check and change of one key.
    pub(super) keys: KeyLocks,
    /// The write leases of states.
    pub(super) leases: KeyLocks,
    /// Small bodies last read, by key and version.
    pub(super) bodies: BodyCache,
}

impl Tree {
    /// Opens (creating if needed) a root directory for serving, upgrading
    /// its layout first ([`layout::bring_up_to_date`]); a directory that
    /// holds files but is no store is refused untouched
    /// ([`layout::check_made_by_stategate`]), and so is a root inside
    /// another store's ([`layout::check_not_inside_a_store`]).
    pub(super) fn open(root: &Path) -> io::Result<Self> {
        layout::check_not_inside_a_store(root)?;
        // A root made here is closed to others; one that exists keeps the
        // modes its operator gave it.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), DIR_MODE)
            .create(root)?;
        let root_fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        crate::stores::check_owner(rustix::fs::fstat(&root_fd)?.st_uid, root)?;
        layout::check_made_by_stategate(&root_fd)?;
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
            leases: KeyLocks::open(rustix::io::dup(&internal)?, LEASE_LOCKS)?,
            internal,
            root_fd,
            tmp_fd,
            unnamed,
            bodies: BodyCache::default(),
        })
    }

    /// Opens an existing root directory for reading only, changing
    /// nothing ([`LocalStore::open_read_only`](super::LocalStore::open_read_only));
    /// `Ok(None)` when it does not exist.
    pub(super) fn open_read_only(root: &Path) -> io::Result<Option<Self>> {
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
        Ok(Some(Tree {
            root: root.canonicalize()?,
            internal: unused()?,
            tmp_fd: unused()?,
            unnamed: false,
            keys: KeyLocks::unopened(unused()?, KEY_LOCKS),
            leases: KeyLocks::unopened(unused()?, LEASE_LOCKS),
            root_fd,
            bodies: BodyCache::default(),
        }))
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

    /// Locks `key` for a check and a change (see the notes of [`super`]).
    fn lock_guard(&self, key: &str) -> Result<(File, KeyLock), StoreError> {
        let fd = open_beneath(&self.internal, layout::GUARD, OFlags::RDONLY)
            .map_err(|e| StoreError::of_io("opening the guard", &io::Error::from(e)))?;
        let guard = File::from(fd);
        let locking = |e: io::Error| StoreError::of_io(&format!("locking {key}"), &e);
        guard.lock_shared().map_err(locking)?;
        let lock = self.keys.lock(key).map_err(locking)?;
        Ok((guard, lock))
    }

    /// Writes `key`; with `durable`, the file and the directory entry are
    /// on disk before this returns.
    pub(super) fn put_blocking(
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
            Mode::from_raw_mode(FILE_MODE),
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

    /// Gives `key` the file of `from` as a second name, put in place as
    /// [`Tree::put_blocking`] puts a new file, when that file holds exactly
    /// `body` (compared here, so a caller's mistake costs a write, never
    /// wrong bytes); `Ok(false)` with nothing changed when it does not, or
    /// cannot be linked, and the caller writes `body` instead. Files are
    /// never changed in place (every write renames a new file over the
    /// name), so the two names keep these bytes whatever later writes
    /// give either. `known` is the version of `from` when this thread
    /// wrote it with `body` just before (a record, then its pointer): the
    /// file linked must still be that version, and its bytes are not read
    /// again.
    fn link_same(
        &self,
        from: &str,
        key: &str,
        body: &Bytes,
        condition: &Condition,
        durable: bool,
        known: Option<&Version>,
    ) -> Result<bool, StoreError> {
        if body.len() > LINK_BYTES_MAX {
            return Ok(false);
        }
        let (src_dir, src_name) = self.locate(from)?;
        let (dir, name) = self.locate(key)?;
        let Some(src) = self.parent(from, src_dir, false)? else {
            return Ok(false);
        };
        let expected = match known {
            Some(version) => version.clone(),
            None => match same_bytes(&src, &src_name, body) {
                Some(version) => version,
                None => return Ok(false),
            },
        };
        // A pointer and its record share a folder, already open.
        let other_folder;
        let parent = match dir == src_dir {
            true => &src,
            false => {
                other_folder = self.parent(key, dir, true)?.expect("created");
                &other_folder
            }
        };
        let tmp = temporary_name(TMP_MARK);
        if rustix::fs::linkat(
            &src,
            src_name.as_str(),
            parent,
            tmp.as_str(),
            AtFlags::empty(),
        )
        .is_err()
        {
            return Ok(false);
        }
        // The name may have been given another file since it was read.
        let same_file = rustix::fs::statat(parent, tmp.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|linked| version_of(&linked) == expected);
        let placed = match same_file {
            false => Ok(false),
            true => self
                .place(key, parent, &name, condition, durable, || {
                    rustix::fs::renameat(parent, tmp.as_str(), parent, name.as_str())
                        .map_err(|e| translate(key, "writing", e))
                })
                .map(|()| true),
        };
        if !matches!(placed, Ok(true)) {
            let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
        }
        placed
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

    pub(super) fn delete_blocking(
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

    /// [`Store::change_all`](crate::stores::Store::change_all) on this
    /// thread: each change as its own method makes it, stopping at the
    /// first that fails.
    pub(super) fn change_all_blocking(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        // The files this call wrote: key, bytes and version.
        let mut written: Vec<(String, Bytes, Version)> = Vec::new();
        for (at, change) in changes.into_iter().enumerate() {
            let made = match change {
                Change::Write {
                    key,
                    body,
                    args,
                    same_as,
                } => {
                    let durable = !args.transient;
                    let linked = match same_as {
                        Some(from) => {
                            let known = written
                                .iter()
                                .find(|(k, bytes, _)| *k == from && *bytes == body)
                                .map(|(_, _, version)| version);
                            self.link_same(&from, &key, &body, &args.condition, durable, known)
                        }
                        None => Ok(false),
                    };
                    match linked {
                        Ok(false) => self
                            .put_blocking(
                                &key,
                                &Payload::Memory(body.clone()),
                                &args.condition,
                                durable,
                            )
                            .map(|version| written.push((key, body, version))),
                        other => other.map(|_| ()),
                    }
                }
                Change::Delete { key, args } => {
                    self.delete_blocking(&key, &args.condition, !args.transient)
                }
                Change::Snapshot {
                    from,
                    from_version,
                    to,
                    ..
                } => self.snapshot_blocking(&from, &from_version, &to),
            };
            made.map_err(|error| Stopped { at, error })?;
        }
        Ok(())
    }

    /// Hard-links `from` at `to`: files are never changed in place (every
    /// write renames a new file over the name), so the link is a snapshot.
    /// Its directory is not synced here: the caller's next durable write in
    /// that directory syncs it, link included
    /// ([`Store::snapshot`](crate::stores::Store::snapshot)).
    pub(super) fn snapshot_blocking(
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

    /// Opens `key` for a streamed read; a body over [`SPOOL_THRESHOLD`]
    /// bytes is handed out as the open file itself (files are never
    /// changed in place, so it stays the version read however long the
    /// reader takes), or, with `shared`, shared with the readers sending it
    /// now ([`BodyCache::shared`]). A smaller body is taken from, or kept
    /// in, the body cache.
    pub(super) fn read_blocking(
        &self,
        key: &str,
        shared: bool,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let Some((file, size, version)) = self.open_file(key)? else {
            return Ok(None);
        };
        if size > SPOOL_THRESHOLD as u64 {
            if shared
                && let Some(body) = self.bodies.shared(key, &version, size, |buf| {
                    (&file)
                        .read_to_end(buf)
                        .map(drop)
                        .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))
                })?
            {
                return Ok(Some((Payload::Memory(body), version)));
            }
            let body = FileBody::new(file, size);
            return Ok(Some((Payload::File(Arc::new(body)), version)));
        }
        if let Some(body) = self.bodies.get(key, &version) {
            return Ok(Some((Payload::Memory(body), version)));
        }
        let body = read_whole(key, file, size)?;
        self.bodies.put(key, &version, &body);
        Ok(Some((Payload::Memory(body), version)))
    }

    /// Opens the file holding `key`, with its length and version; `None`
    /// when there is none. The version comes from the open file, so it
    /// agrees with the bytes read from it even if the name is replaced
    /// meanwhile.
    pub(super) fn open_file(&self, key: &str) -> Result<Option<(File, u64, Version)>, StoreError> {
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
        let stat = rustix::fs::fstat(&fd).map_err(|e| translate(key, "reading", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some((
            File::from(fd),
            stat.st_size.max(0) as u64,
            version_of(&stat),
        )))
    }

    /// Walks the tree below `prefix`. Directories are opened one at a time,
    /// each by its path below the starting directory, and closed before
    /// the next: a listing holds two descriptors however many states and
    /// history directories there are, so it never makes another request
    /// run out of them. With `skip_internal`, `.stategate/` is not entered.
    /// `start` is where the walk begins, as [`Tree::listing_start`] opened
    /// it.
    pub(super) fn list_blocking(
        &self,
        prefix: &str,
        start: OwnedFd,
        skip_internal: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let start_rel = listing_dir(prefix);
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

    /// The directory a listing of `prefix` starts at ([`listing_dir`]);
    /// `None` when there is none (nothing to list).
    pub(super) fn listing_start(&self, prefix: &str) -> Result<Option<OwnedFd>, StoreError> {
        let start_rel = listing_dir(prefix);
        if !start_rel.is_empty() {
            self.locate(start_rel)?;
        }
        self.parent(prefix, start_rel, false)
    }

    pub(super) fn stat_file(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let (dir, name) = self.locate(key)?;
        match self.parent(key, dir, false)? {
            Some(parent) => file_version(key, &parent, &name),
            None => Ok(None),
        }
    }
}

/// The deepest directory `prefix` names whole (relative to the root, `""`
/// for the root itself): where a listing of it starts.
fn listing_dir(prefix: &str) -> &str {
    prefix.rfind('/').map_or("", |i| &prefix[..i])
}

/// The `size` bytes of `file`, opened for `key`.
pub(super) fn read_whole(key: &str, mut file: File, size: u64) -> Result<Bytes, StoreError> {
    let mut body = Vec::with_capacity(size as usize);
    file.read_to_end(&mut body)
        .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))?;
    Ok(Bytes::from(body))
}

/// The version of the file `name` in `dir` when it holds exactly `body`.
fn same_bytes(dir: &OwnedFd, name: &str, body: &Bytes) -> Option<Version> {
    let mut file = File::from(open_beneath(dir, name, OFlags::RDONLY).ok()?);
    let mut held = Vec::with_capacity(body.len() + 1);
    (&mut file)
        .take(body.len() as u64 + 1)
        .read_to_end(&mut held)
        .ok()?;
    let stat = rustix::fs::fstat(&file).ok()?;
    (held == body[..]).then(|| version_of(&stat))
}
