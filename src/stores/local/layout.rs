//! Where the local store puts an object's file, and the in-place upgrade
//! of a root written in the layout before this one.
//!
//! **Layout 2** (this one): the file holding an object is its key with
//! [`FILE_MARK`] (`+`) appended, so the state `prod/app/terraform.tfstate`
//! is the file `prod/app/terraform.tfstate+` and its lock is
//! `prod/app/terraform.tfstate.tflock+`. Directories are named exactly as
//! the keys below them begin. No key can contain `+` (a key segment holds
//! letters, digits, `.`, `_` and `-`; a `workspace_key_prefix` adds `:`;
//! stategate's own objects under `.stategate/` use the same characters),
//! so a file name always ends in `+` and a directory name never does: the
//! file of `a` (`a+`) and the directory that holds `a/b` and `a/b/c`
//! (`a/`) can never be one name, nor can any file stategate writes: locks
//! (`a.tflock+`), history (`.stategate/history/a/newest.json+` beside the
//! directory `.stategate/history/a/newest.json/` of the state
//! `a/newest.json`), temporaries (`~<pid>-…`, which no segment can start
//! with), or the store's own files in `.stategate/local/`, which no key may
//! enter. Appending one character keeps the mapping total and injective
//! and the tree readable like a bucket: a key is its path minus the `+`.
//!
//! **Layout 1** (before): the file of an object was the key itself, so
//! `a` and `a/b` could not both exist. Its roots have no marker file.
//!
//! The layout a root is in is recorded in `.stategate/local/layout` (the
//! number, then a newline), and the guard `.stategate/local/guard` is a
//! directory in layout 2 where it was a file in layout 1: a release that
//! only knows layout 1 fails to open it, so it cannot start on an upgraded
//! root, where it would see no states and write new ones under names this
//! release does not read.
//!
//! **The upgrade** runs when a store is opened for serving and the root is
//! not yet in layout 2 (a root of either layout has the store's own
//! directory; one that holds other files without it is no store, and is
//! refused before anything in it is touched; and files are renamed only
//! where layout 1's guard, a file, shows the root was written in it), holding the guard exclusively (every change takes
//! it shared, and a second process opening the root waits, then finds the
//! work done). It renames every regular file of the tree that lacks the
//! mark to the same name with the mark, with `RENAME_NOREPLACE`, in its own
//! directory, and syncs each directory; then it replaces the guard file by
//! a directory and last writes the marker. A rename keeps the inode, its
//! modification time and size, so every version token (and with it every
//! held lock and pending write), and every hard link between a state and
//! its history, survives. Each step is atomic and the walk skips what is
//! already renamed, so a process killed anywhere leaves a tree the next
//! start finishes: files with and without the mark, perhaps no guard, and
//! no marker until everything before it is on disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::files::{
    DIR_MODE, create_new, entry_names, open_beneath, open_dir_beneath, temporary_name,
};
use super::{INTERNAL_DIR, TMP_MARK};

/// The layout this release reads and writes.
pub(super) const LAYOUT: u32 = 2;
/// Appended to the last segment of a key to name the file holding it.
pub(super) const FILE_MARK: char = '+';
/// The guard (in the store's own directory): a directory, locked shared
/// around every change and exclusively by an upgrade.
pub(super) const GUARD: &str = "guard";
/// The marker recording the layout (in the store's own directory).
const MARKER: &str = "layout";
/// Where the new guard is made before it takes the old one's name.
const NEXT_GUARD: &str = "guard.next";

/// The name of the file holding an object whose key ends in `segment`.
pub(super) fn file_name(segment: &str) -> String {
    format!("{segment}{FILE_MARK}")
}

/// The last key segment of the object held by the file `name`; `None` for
/// a name that holds no object (a temporary, or a file of layout 1).
pub(super) fn segment_of(name: &str) -> Option<&str> {
    name.strip_suffix(FILE_MARK)
        .filter(|s| !s.is_empty() && !s.starts_with(TMP_MARK))
}

/// Brings the root up to [`LAYOUT`], upgrading it in place when it is in
/// layout 1 or an upgrade was cut short (see the module's notes). `root`
/// is the root's directory, `internal` the store's own (`.stategate/local`)
/// and `tmp` its temporary directory. Returns how many files were renamed.
pub(super) fn bring_up_to_date(
    root: &OwnedFd,
    internal: &OwnedFd,
    tmp: &OwnedFd,
) -> io::Result<u64> {
    loop {
        if is_current(internal)? {
            return Ok(0);
        }
        let guard = match open_beneath(internal, GUARD, OFlags::RDONLY) {
            Ok(fd) => fd,
            // A new root, or an upgrade stopped between removing the old
            // guard and putting the new one in its place.
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(internal, GUARD, Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        rustix::fs::flock(&guard, FlockOperation::LockExclusive)?;
        // Another process may have replaced the guard while this one
        // waited for the old one; its lock then excludes nobody.
        let held = rustix::fs::fstat(&guard)?;
        match rustix::fs::statat(internal, GUARD, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {}
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
        if is_current(internal)? {
            return Ok(0);
        }
        let guard_kind = FileType::from_raw_mode(held.st_mode);
        let renamed = match written_by_layout_1(internal, guard_kind)? {
            true => mark_files(root)?,
            false => 0,
        };
        // Held until the marker is written, so a process that finds the
        // new guard waits for the upgrade to end.
        let _new_guard = match guard_kind {
            FileType::Directory => None,
            _ => Some(replace_guard(internal)?),
        };
        write_marker(internal, tmp)?;
        let _ = rustix::fs::unlinkat(internal, NEXT_GUARD, AtFlags::REMOVEDIR);
        return Ok(renamed);
    }
}

/// What a file system mounted on a directory may keep in it.
const LOST_AND_FOUND: &str = "lost+found";

/// Refuses a root that stategate did not make: one without the store's
/// own directory that holds, beside directories, anything but objects'
/// files (named with [`FILE_MARK`], as a tool seeding a new root writes
/// them) and `lost+found` (kept by a file system mounted there). A `path`
/// pointed by mistake at a home or data directory stops the start; and
/// however a root without the store's directory looks, the upgrade never
/// renames a file in it ([`written_by_layout_1`]).
pub(super) fn check_made_by_stategate(root: &OwnedFd) -> io::Result<()> {
    match rustix::fs::statat(root, INTERNAL_DIR, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => return Ok(()),
        Ok(_) | Err(Errno::NOENT | Errno::NOTDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let mut foreign = Vec::new();
    for name in entry_names(root)?
        .into_iter()
        .filter(|name| name != LOST_AND_FOUND)
    {
        let kind = match rustix::fs::statat(root, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => FileType::from_raw_mode(stat.st_mode),
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let object = kind == FileType::RegularFile && segment_of(&name).is_some();
        if kind != FileType::Directory && !object {
            foreign.push(name);
        }
    }
    foreign.sort();
    match foreign.first() {
        None => Ok(()),
        Some(first) => Err(io::Error::other(format!(
            "the directory holds {} files that stategate did not make (such as `{first}`) and \
             no {INTERNAL_DIR} directory, so it is no store; give `path` a new or empty directory, \
             or one that a stategate store has used",
            foreign.len()
        ))),
    }
}

/// Refuses a root that lies inside another local store's root. The outer
/// store would take the inner one's files for its own states: list them,
/// serve them, overwrite and delete them, with neither store's locks or
/// history knowing. The root (which may not exist yet) is resolved through
/// symbolic links as far as it exists, and each directory above it is
/// looked at for a store's own directory.
pub(super) fn check_not_inside_a_store(root: &Path) -> io::Result<()> {
    // The root's own store directory is no other store's; the directories
    // of it not made yet hold none.
    let resolved = crate::settings::resolved_path(root);
    for dir in resolved.ancestors().skip(1) {
        let own = dir.join(INTERNAL_DIR);
        if std::fs::symlink_metadata(&own).is_ok_and(|m| m.is_dir()) {
            return Err(io::Error::other(format!(
                "it lies inside the local store at {}, which would serve this store's files as its \
                 own states; give `path` a directory outside that store",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether the root was written in layout 1, or its upgrade was cut short
/// before the new guard took the old one's place: only then are files
/// renamed. Layout 1 left its guard as a file, and the upgrade replaces it
/// by a directory only once every file is renamed; a root made by this
/// release has a directory from the start, so a tree that merely lacks the
/// mark (a directory that was not a store) is never renamed.
fn written_by_layout_1(internal: &OwnedFd, guard: FileType) -> io::Result<bool> {
    if guard != FileType::Directory {
        return Ok(true);
    }
    match rustix::fs::statat(internal, NEXT_GUARD, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Checks, without writing, that a root opened for reading only can be
/// read: it is in [`LAYOUT`], or it holds nothing yet. A root in layout 1
/// (or half upgraded) is refused: `stategate serve` upgrades it.
pub(super) fn check_readable(root: &OwnedFd) -> io::Result<()> {
    check_made_by_stategate(root)?;
    let marker = match open_dir_beneath(root, INTERNAL_DIR, false) {
        Ok(internal) => read_marker(&internal)?,
        Err(Errno::NOENT) => None,
        Err(e) => return Err(e.into()),
    };
    match marker {
        Some(LAYOUT) => Ok(()),
        _ if holds_nothing(root)? => Ok(()),
        _ => Err(io::Error::other(
            "the directory is in the layout of an older stategate, or its upgrade was cut short; \
             `stategate serve` upgrades it in place when it starts",
        )),
    }
}

/// Whether the root is in this layout; an error for a layout newer than
/// this release knows.
fn is_current(internal: &OwnedFd) -> io::Result<bool> {
    if read_marker(internal)? != Some(LAYOUT) {
        return Ok(false);
    }
    match rustix::fs::statat(internal, GUARD, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The layout the marker records; `None` without a marker (layout 1, a
/// new root, or an upgrade not finished).
fn read_marker(internal: &OwnedFd) -> io::Result<Option<u32>> {
    let fd = match open_beneath(internal, MARKER, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    File::from(fd).read_to_string(&mut text)?;
    let layout: u32 = text.trim().parse().map_err(|_| {
        io::Error::other(format!(
            "{INTERNAL_DIR}/{MARKER} should hold a layout number, not {text:?}"
        ))
    })?;
    if layout > LAYOUT {
        return Err(io::Error::other(format!(
            "the directory is in layout {layout} of the local store, written by a newer \
             stategate; this one knows layout {LAYOUT} and older"
        )));
    }
    Ok(Some(layout))
}

/// Writes the marker atomically and durably: a new file, synced, renamed
/// into place, and the directory synced.
fn write_marker(internal: &OwnedFd, tmp: &OwnedFd) -> io::Result<()> {
    // Named as every temporary, so a start after a kill removes it.
    let name = temporary_name("");
    let result = (|| {
        let mut file = create_new(tmp, &name)?;
        file.write_all(format!("{LAYOUT}\n").as_bytes())?;
        file.sync_all()?;
        rustix::fs::renameat(tmp, name.as_str(), internal, MARKER)?;
        rustix::fs::fsync(internal)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(tmp, name.as_str(), AtFlags::empty());
    }
    result
}

/// Puts a directory in the place of the guard file of layout 1, and
/// returns it locked exclusively. The caller holds the old guard, so no
/// other process is here.
fn replace_guard(internal: &OwnedFd) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(internal, NEXT_GUARD, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let next = open_beneath(internal, NEXT_GUARD, OFlags::DIRECTORY | OFlags::RDONLY)?;
    rustix::fs::flock(&next, FlockOperation::LockExclusive)?;
    rustix::fs::unlinkat(internal, GUARD, AtFlags::empty())?;
    rustix::fs::renameat(internal, NEXT_GUARD, internal, GUARD)?;
    rustix::fs::fsync(internal)?;
    Ok(next)
}

/// Renames every regular file of the tree whose name lacks the mark to the
/// same name with it, and syncs every directory, so that once this returns
/// the renames are on disk. Skips the store's own directory, temporaries
/// and links (never followed). Returns how many files it renamed.
fn mark_files(root: &OwnedFd) -> io::Result<u64> {
    let mut renamed = 0;
    // Directories still to visit, by their path below the root ("" is the
    // root); each is opened only while it is visited.
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = match open_dir_beneath(root, &rel, false) {
            Ok(fd) => fd,
            Err(e) => {
                return Err(io::Error::other(format!(
                    "upgrading the layout: opening {rel:?}: {}",
                    io::Error::from(e)
                )));
            }
        };
        for name in entry_names(&dir)? {
            let path = match rel.as_str() {
                "" => name.clone(),
                rel => format!("{rel}/{name}"),
            };
            if name.starts_with(TMP_MARK) || path == INTERNAL_DIR {
                continue;
            }
            let stat = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => pending.push(path),
                FileType::RegularFile if !name.ends_with(FILE_MARK) => {
                    let marked = file_name(&name);
                    match rustix::fs::renameat_with(
                        &dir,
                        name.as_str(),
                        &dir,
                        marked.as_str(),
                        RenameFlags::NOREPLACE,
                    ) {
                        Ok(()) => renamed += 1,
                        Err(Errno::EXIST) => {
                            return Err(io::Error::other(format!(
                                "upgrading the layout: both `{path}` and `{path}{FILE_MARK}` \
                                 are there, and only one can hold the object `{path}`; keep \
                                 the right one as `{path}{FILE_MARK}`, remove the other and \
                                 start again"
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => {}
            }
        }
        // Every directory, not only those renamed in now: a run killed
        // after its renames but before their sync leaves them undone on
        // disk though this run sees them done.
        rustix::fs::fsync(&dir)?;
    }
    Ok(renamed)
}

/// Whether a root without a marker holds nothing the store wrote but its
/// own directory (and `lost+found`), so that either layout reads it as
/// empty.
fn holds_nothing(root: &OwnedFd) -> io::Result<bool> {
    let only = |rel: &str, allowed: &[&str]| -> io::Result<bool> {
        let dir = match open_dir_beneath(root, rel, false) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        Ok(entry_names(&dir)?
            .iter()
            .all(|name| allowed.contains(&name.as_str())))
    };
    let (top, below) = INTERNAL_DIR.split_once('/').expect("two segments");
    Ok(only("", &[top, LOST_AND_FOUND])? && only(top, &[below])?)
}

#[cfg(test)]
mod tests {
    use crate::stores::{OpList, StoreExt};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::super::LocalStore;
    use super::super::files::version_of;
    use super::super::tests::listed;
    use crate::stores::{Condition, Store, Version};

    /// Lays out a root as layout 1 did: each object's file at its key (a
    /// state, its lock, and history holding a hard link to the state), the
    /// store's own directory with its guard as a file.
    fn layout_1(root: &Path) {
        let write = |rel: &str, body: &str| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        };
        write("team/a", "state a");
        write("team/a.tflock", "lock of a");
        write("b", "state b");
        write(".stategate/history/team/a/newest.json", "pointer");
        fs::hard_link(
            root.join("team/a"),
            root.join(".stategate/history/team/a/0000000001.tfstate"),
        )
        .unwrap();
        fs::create_dir_all(root.join(".stategate/local/tmp")).unwrap();
        for own in ["guard", "keys", "leases"] {
            write(&format!(".stategate/local/{own}"), "");
        }
    }

    /// The files below `root` outside the store's own directory.
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                if rel == super::INTERNAL_DIR {
                    continue;
                }
                match path.is_dir() {
                    true => pending.push(path),
                    false => out.push(rel),
                }
            }
        }
        out.sort();
        out
    }

    fn version(path: &Path) -> Version {
        version_of(&rustix::fs::stat(path).unwrap())
    }

    const UPGRADED: [&str; 5] = [
        ".stategate/history/team/a/0000000001.tfstate+",
        ".stategate/history/team/a/newest.json+",
        "b+",
        "team/a+",
        "team/a.tflock+",
    ];

    /// What every finished upgrade leaves: each file marked, the guard a
    /// directory that a release knowing only layout 1 cannot open as its
    /// guard file, and the marker.
    fn assert_upgraded(root: &Path) {
        assert_eq!(files(root), UPGRADED);
        let own = root.join(super::INTERNAL_DIR);
        assert!(own.join("guard").is_dir());
        assert!(!own.join("guard.next").exists());
        assert_eq!(fs::read_to_string(own.join("layout")).unwrap(), "2\n");
        let as_layout_1_opened_it = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(own.join("guard"));
        assert!(as_layout_1_opened_it.is_err());
        assert_eq!(
            fs::metadata(root.join("team/a+")).unwrap().ino(),
            fs::metadata(root.join(".stategate/history/team/a/0000000001.tfstate+"))
                .unwrap()
                .ino(),
            "history still shares the state's file"
        );
    }

    #[tokio::test]
    async fn a_layout_1_root_is_upgraded_keeping_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        layout_1(root);
        let before = [
            ("team/a", version(&root.join("team/a"))),
            ("team/a.tflock", version(&root.join("team/a.tflock"))),
        ];
        let store = LocalStore::open_dir(root).unwrap();
        assert_upgraded(root);
        for (key, version) in before {
            // A lock or a write that names the version read before the
            // upgrade still matches.
            assert_eq!(store.stat(key).await.unwrap(), Some(version), "{key}");
        }
        assert_eq!(store.get("team/a").await.unwrap().unwrap().body, "state a");
        assert_eq!(
            listed(&store, "").await,
            [
                ".stategate/history/team/a/0000000001.tfstate",
                ".stategate/history/team/a/newest.json",
                "b",
                "team/a",
                "team/a.tflock"
            ]
        );
        // Opening again finds nothing to do.
        drop(LocalStore::open_dir(root).unwrap());
        assert_upgraded(root);
    }

    /// Renames every file of [`layout_1`]'s tree as the upgrade does.
    fn rename_all(root: &Path) {
        for file in [
            "b",
            "team/a",
            "team/a.tflock",
            ".stategate/history/team/a/newest.json",
        ] {
            fs::rename(root.join(file), root.join(format!("{file}+"))).unwrap();
        }
        let link = root.join(".stategate/history/team/a/0000000001.tfstate");
        fs::rename(&link, link.with_extension("tfstate+")).unwrap();
    }

    #[test]
    fn an_upgrade_cut_short_anywhere_is_finished_by_the_next_open() {
        let own = |root: &Path, name: &str| root.join(super::INTERNAL_DIR).join(name);
        // Each leaves the tree as an upgrade killed at one step would.
        type Cut = fn(&Path);
        let cuts: [(&str, Cut); 5] = [
            ("while renaming", |root| {
                fs::rename(root.join("team/a"), root.join("team/a+")).unwrap();
            }),
            ("after renaming", rename_all),
            ("after making the new guard", |root| {
                fs::rename(root.join("b"), root.join("b+")).unwrap();
                fs::create_dir(root.join(".stategate/local/guard.next")).unwrap();
            }),
            ("after removing the old guard", |root| {
                fs::create_dir(root.join(".stategate/local/guard.next")).unwrap();
                fs::remove_file(root.join(".stategate/local/guard")).unwrap();
            }),
            // Every file was renamed, and synced, before the guard changed.
            ("before the marker", |root| {
                rename_all(root);
                fs::remove_file(root.join(".stategate/local/guard")).unwrap();
                fs::create_dir(root.join(".stategate/local/guard")).unwrap();
            }),
        ];
        for (when, cut) in cuts {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            layout_1(root);
            cut(root);
            assert!(!own(root, "layout").exists(), "{when}");
            let refused = LocalStore::open_read_only(root).err();
            assert!(
                refused.is_some_and(|e| e.to_string().contains("`stategate serve` upgrades it")),
                "{when}"
            );
            LocalStore::open_dir(root).unwrap_or_else(|e| panic!("{when}: {e}"));
            assert_upgraded(root);
        }
    }

    #[test]
    fn processes_opening_one_layout_1_root_at_once_upgrade_it_once() {
        let dir = tempfile::tempdir().unwrap();
        layout_1(dir.path());
        let root = dir.path().to_path_buf();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || LocalStore::open_dir(&root).map(drop))
            })
            .collect();
        for open in opens {
            open.join().unwrap().unwrap();
        }
        assert_upgraded(&root);
    }

    #[tokio::test]
    async fn reading_only_takes_this_layout_or_nothing_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Empty: read as an empty store, in either layout.
        let store = LocalStore::open_read_only(root).unwrap().unwrap();
        assert!(store.list("", OpList::default()).await.unwrap().is_empty());
        layout_1(root);
        let e = LocalStore::open_read_only(root).err().unwrap().to_string();
        assert!(e.contains("`stategate serve` upgrades it in place"), "{e}");
        assert!(!root.join("team/a+").exists() && root.join("team/a").is_file());
        drop(LocalStore::open_dir(root).unwrap());
        let store = LocalStore::open_read_only(root).unwrap().unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap().body, "state b");
    }

    #[test]
    fn a_directory_stategate_did_not_make_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A home directory, say, named as `path` by mistake.
        fs::write(root.join(".bashrc"), "alias x=y").unwrap();
        fs::create_dir_all(root.join(".config/app")).unwrap();
        fs::write(root.join(".config/app/settings"), "k=v").unwrap();
        fs::write(root.join("notes.txt"), "notes").unwrap();
        let before = files(root);
        for e in [
            LocalStore::open_dir(root)
                .err()
                .expect("opened for serving"),
            LocalStore::open_read_only(root)
                .err()
                .expect("opened to read"),
        ] {
            let e = e.to_string();
            assert!(e.contains("2 files that stategate did not make"), "{e}");
            assert!(e.contains("such as `.bashrc`"), "{e}");
            assert!(e.contains("give `path` a new or empty directory"), "{e}");
        }
        assert_eq!(files(root), before, "a file was renamed");
        assert_eq!(
            fs::read_to_string(root.join(".bashrc")).unwrap(),
            "alias x=y"
        );
        assert!(
            !root.join(".stategate").exists(),
            "the store's directory was made"
        );
    }

    /// A root seeded with objects' files, beside directories that hold
    /// anything: taken as a new root, and no file in it renamed.
    #[tokio::test]
    async fn a_root_without_the_stores_directory_has_nothing_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("seeded+"), "state").unwrap();
        fs::create_dir_all(root.join("data/deep")).unwrap();
        fs::write(root.join("data/deep/file.bin"), "bytes").unwrap();
        fs::write(root.join("data/team+"), "state").unwrap();
        let before = files(root);
        let store = LocalStore::open_dir(root).unwrap();
        assert_eq!(files(root), before, "a file was renamed");
        assert_eq!(listed(&store, "").await, ["data/team", "seeded"]);
        assert_eq!(store.get("seeded").await.unwrap().unwrap().body, "state");
    }

    #[tokio::test]
    async fn a_new_file_system_holding_only_lost_and_found_is_a_new_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("lost+found")).unwrap();
        let store = LocalStore::open_read_only(root).unwrap().unwrap();
        assert!(store.list("", OpList::default()).await.unwrap().is_empty());
        let store = LocalStore::open_dir(root).unwrap();
        store
            .put(
                "a",
                bytes::Bytes::from_static(b"state a"),
                Condition::IfAbsent,
            )
            .await
            .unwrap();
        assert_eq!(listed(&store, "").await, ["a"]);
        // Once used, it opens again whatever else is put beside it.
        fs::write(root.join("README"), "states").unwrap();
        drop(LocalStore::open_dir(root).unwrap());
        assert!(root.join("README").is_file());
    }

    #[test]
    fn a_root_in_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        drop(LocalStore::open_dir(root).unwrap());
        fs::write(root.join(".stategate/local/layout"), "3\n").unwrap();
        for e in [
            LocalStore::open_dir(root).err().unwrap(),
            LocalStore::open_read_only(root).err().unwrap(),
        ] {
            assert!(e.to_string().contains("layout 3"), "{e}");
        }
    }
}
