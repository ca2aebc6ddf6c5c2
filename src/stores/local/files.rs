//! The file operations the local store is built from, each relative to a
//! directory handle and never through a link: opening beneath a directory,
//! creating and filling new read-only files, a file's version, the mapping
//! of `errno` to [`StoreError`], and the temporary names a write uses on
//! its way into place, with the sweep that removes those a killed writer
//! left behind. None of them knows the tree's layout or locks.
//!
//! What they make is the store's user's alone, whatever the umask: states
//! hold secrets. Files are read-only for it ([`FILE_MODE`]), directories
//! closed to others ([`DIR_MODE`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use time::OffsetDateTime;

use crate::stores::{Payload, StoreError, Version, process_alive};

/// A state, a lock or a record: read-only (never changed in place, see
/// [`super`]), and for the store's user only.
pub(super) const FILE_MODE: u32 = 0o400;
/// The store's own files that it changes in place (key locks, the spare).
const OWN_FILE_MODE: u32 = 0o600;
/// Every directory the store makes.
pub(super) const DIR_MODE: u32 = 0o700;

/// Resolution that stays below the directory handle and follows no link.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Gives temporary files unique names within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file name no other write uses: `prefix`, then this process's
/// id (which tells whether its writer is alive), a counter and the time.
pub(super) fn temporary_name(prefix: &str) -> String {
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
pub(super) fn unnamed_files_work(tmp_dir: &OwnedFd) -> bool {
    let Ok(fd) = rustix::fs::openat(
        tmp_dir,
        ".",
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(FILE_MODE),
    ) else {
        return false;
    };
    let probe = temporary_name("");
    let linked = rustix::fs::linkat(&fd, "", tmp_dir, probe.as_str(), AtFlags::EMPTY_PATH);
    let _ = rustix::fs::unlinkat(tmp_dir, probe.as_str(), AtFlags::empty());
    linked.is_ok()
}

/// Opens `rel` below `dir`, never through a link, and only a regular file
/// or a directory: anything else found there ([`NOT_A_FILE`]) was put
/// there by someone else. The open itself never waits: opening a named
/// pipe waits for a writer, and one planted where a state or lock goes
/// held a thread of the server for good.
pub(super) fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    // openat2 refuses a mode unless it creates.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(OWN_FILE_MODE)
    } else {
        Mode::empty()
    };
    // Reads and writes of regular files and directories ignore NONBLOCK.
    let fd = rustix::fs::openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        mode,
        BENEATH,
    )?;
    if !flags.contains(OFlags::DIRECTORY) {
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Err(NOT_A_FILE);
        }
    }
    Ok(fd)
}

/// What [`open_beneath`] answers for a pipe, socket or device.
const NOT_A_FILE: Errno = Errno::NXIO;

/// Opens the directory `rel` below `dir`, creating missing directories one
/// at a time (each created and then opened without following links),
/// from the deepest one that exists: a new state's folder costs one
/// `mkdirat`, not one per level of its path.
pub(super) fn open_dir_beneath(dir: &OwnedFd, rel: &str, create: bool) -> Result<OwnedFd, Errno> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY;
    if rel.is_empty() {
        return open_beneath(dir, ".", flags);
    }
    match open_beneath(dir, rel, flags) {
        Err(Errno::NOENT) if create => {}
        other => return other,
    }
    let (parent, last) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = open_dir_beneath(dir, parent, true)?;
    match rustix::fs::mkdirat(&parent, last, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    open_beneath(&parent, last, flags)
}

/// Writes `body` into the new file `file`, synced when `durable`, and
/// gives its version.
pub(super) fn fill(
    key: &str,
    file: &mut File,
    body: &Payload,
    durable: bool,
) -> Result<Version, StoreError> {
    let io_err = |e: io::Error| match e.raw_os_error() {
        Some(code) => translate(key, "writing", Errno::from_raw_os_error(code)),
        None => StoreError::unavailable(format!("writing {key}: {e}")),
    };
    body.copy_to(file).map_err(io_err)?;
    if durable {
        file.sync_all().map_err(io_err)?;
    }
    Ok(version_of(
        &rustix::fs::fstat(&*file).map_err(|e| io_err(e.into()))?,
    ))
}

/// The names in `dir` but `.` and `..` (names that are not UTF-8, which
/// stategate never makes, left out).
pub(super) fn entry_names(dir: impl AsFd) -> io::Result<Vec<String>> {
    Ok(Dir::read_from(dir)?
        .filter_map(|entry| entry.ok()?.file_name().to_str().ok().map(str::to_string))
        .filter(|name| name != "." && name != "..")
        .collect())
}

/// Creates a new read-only file in `dir`.
pub(super) fn create_new(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(FILE_MODE),
    )?;
    Ok(File::from(fd))
}

/// The version of the file `name` in `dir`, `None` when there is none (or
/// it is a directory); a link there is refused.
pub(super) fn file_version(
    key: &str,
    dir: &OwnedFd,
    name: &str,
) -> Result<Option<Version>, StoreError> {
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
pub(super) fn translate(key: &str, doing: &str, e: Errno) -> StoreError {
    match e {
        Errno::NOTDIR | Errno::ISDIR | Errno::EXIST => StoreError::KeyConflict(format!(
            "`{key}` clashes with a file or directory in the store's directory that stategate did not make"
        )),
        Errno::LOOP | Errno::XDEV => StoreError::KeyConflict(format!(
            "`{key}` crosses a symbolic link in the store's directory; stategate never follows links"
        )),
        NOT_A_FILE => StoreError::KeyConflict(format!(
            "`{key}` is a pipe, socket or device in the store's directory, which stategate did not make and never opens"
        )),
        // A full device or a read-only file system refuses writes.
        other => StoreError::of_io(&format!("{doing} {key}"), &io::Error::from(other)),
    }
}

pub(super) fn version_of(stat: &Stat) -> Version {
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
pub(super) fn remove_stale_temporaries(tmp_dir: &OwnedFd) {
    let Ok(names) = entry_names(tmp_dir) else {
        return;
    };
    let own = std::process::id();
    // A temporary named with this process's id is a dead process's (one
    // that had the id before) only if it is older than this process's
    // first open: another store opened in this process may be writing it.
    // File times are coarser than the clock, hence the second's margin.
    static FIRST_OPEN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let first_open = *FIRST_OPEN.get_or_init(|| OffsetDateTime::now_utc().unix_timestamp() - 1);
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
pub(super) fn writer_pid(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}
