//! `storageType: local`: objects as files under a root directory, the store
//! key as the relative path, so the tree reads like a bucket.
//!
//! Writes are atomic and durable: the body goes to a temporary file inside
//! the root (same file system), is fsynced, and is renamed over the target;
//! then the directory is fsynced. A reader sees the old file or the new one,
//! never a torn one, even if the process is killed mid-write.
//!
//! Conditions are checked and applied under an exclusive `flock` on one
//! guard file, so several stategate processes sharing the directory agree:
//! exactly one conditional create wins. Only the check and the rename run
//! under the guard; writing and syncing the body happen before it.
//!
//! A version is the file's identity (inode, modification time, size): files
//! are never changed in place, so every write makes a new identity. That
//! also makes a hard link a snapshot, which is how history keeps a copy of
//! a state without writing it twice; files are created read-only (0444) so
//! that nobody edits one in place by accident.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use super::{Backend, Capabilities, Condition, Entry, Object, Store, StoreError, Version};
use crate::config::{ConfigError, Setting, StoreSettings};

/// Registration of the local store.
pub static BACKEND: Backend = Backend {
    name: "local",
    summary: "files under a directory on this machine (the default)",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move { Ok(Arc::new(LocalStore::open(&settings)?) as Arc<dyn Store>) })
    },
};

const SETTINGS: &[Setting] = &[Setting {
    name: "path",
    aliases: &[],
    env: &["STATEGATE_LOCAL_PATH"],
    secret: false,
    default: Some("./stategate-data"),
    help: "directory that holds the states",
}];

/// Where the store keeps its own files, inside the root and out of reach of
/// any state key (the state layer reserves `.stategate/`).
const INTERNAL_DIR: &str = ".stategate/local";

/// Files under a root directory; cheap to clone.
#[derive(Clone)]
pub struct LocalStore(Arc<Tree>);

/// The directory tree behind a [`LocalStore`], used from blocking threads.
struct Tree {
    /// Every object lives below this directory; nothing outside is touched.
    root: PathBuf,
    /// Temporary files, on the same file system as the root so rename is atomic.
    tmp_dir: PathBuf,
    /// The file whose `flock` makes check-and-rename atomic across processes.
    guard_path: PathBuf,
}

/// Gives temporary files unique names within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// Opens (creating if needed) the root directory named by `path`.
    pub fn open(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let root = settings.path("path").ok_or_else(|| ConfigError::Missing {
            setting: "path".into(),
            help: "directory that holds the states".into(),
        })?;
        Self::open_dir(&root)
            .map_err(|e| ConfigError::invalid("path", format!("{}: {e}", root.display())))
    }

    /// Opens a root directory directly.
    pub fn open_dir(root: &Path) -> io::Result<Self> {
        Tree::open(root).map(|t| LocalStore(Arc::new(t)))
    }
}

impl Tree {
    fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let internal = root.join(INTERNAL_DIR);
        let tmp_dir = internal.join("tmp");
        fs::create_dir_all(&tmp_dir)?;
        let guard_path = internal.join("guard");
        File::options()
            .create(true)
            .append(true)
            .open(&guard_path)?;
        // Prove the directory is writable now rather than at the first apply.
        let probe = tmp_dir.join(format!("open-{}", std::process::id()));
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)?;
        remove_stale_temporaries(&tmp_dir);
        Ok(Tree {
            root,
            tmp_dir,
            guard_path,
        })
    }

    /// Maps a store key to a path below the root, refusing anything that
    /// could leave it (the state layer validates keys too; this is the last
    /// line of defence).
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let clean = !key.is_empty()
            && !key.contains('\0')
            && !key.contains('\\')
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !clean || key.starts_with(INTERNAL_DIR) {
            return Err(StoreError::unavailable(format!(
                "refusing key outside the store: {key:?}"
            )));
        }
        Ok(self.root.join(relative))
    }

    fn lock_guard(&self) -> io::Result<File> {
        let guard = File::options().append(true).open(&self.guard_path)?;
        guard.lock()?;
        Ok(guard)
    }

    fn put_blocking(
        &self,
        key: &str,
        body: &[u8],
        condition: &Condition,
    ) -> Result<Version, StoreError> {
        let path = self.path_of(key)?;
        let parent = path
            .parent()
            .expect("a key path has a parent")
            .to_path_buf();
        let io_err = |e: io::Error| StoreError::unavailable(format!("writing {key}: {e}"));
        fs::create_dir_all(&parent).map_err(|e| conflict_or(key, e, io_err))?;

        let tmp = self.tmp_dir.join(format!(
            "{}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let result = (|| {
            // Read-only once in place: history hard-links these files, so an
            // edit in place would change a kept version too.
            let mut file = File::options()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)
                .map_err(io_err)?;
            file.write_all(body).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            let version = version_of(&file.metadata().map_err(io_err)?);
            drop(file);

            let guard = self.lock_guard().map_err(io_err)?;
            check_condition(&path, condition, true)?;
            fs::rename(&tmp, &path).map_err(|e| conflict_or(key, e, io_err))?;
            drop(guard);
            sync_dir(&parent).map_err(io_err)?;
            Ok(version)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn delete_blocking(&self, key: &str, condition: &Condition) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let io_err = |e: io::Error| StoreError::unavailable(format!("deleting {key}: {e}"));
        let guard = self.lock_guard().map_err(io_err)?;
        check_condition(&path, condition, false)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(e)),
        }
        drop(guard);
        sync_dir(path.parent().expect("a key path has a parent")).map_err(io_err)
    }

    /// Hard-links `from` at `to`: files are never changed in place (every
    /// write renames a new file over the name), so the link is a snapshot.
    fn snapshot_blocking(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
    ) -> Result<(), StoreError> {
        let src = self.path_of(from)?;
        let dst = self.path_of(to)?;
        let parent = dst.parent().expect("a key path has a parent").to_path_buf();
        let io_err = |e: io::Error| StoreError::unavailable(format!("copying {from} to {to}: {e}"));
        fs::create_dir_all(&parent).map_err(|e| conflict_or(to, e, io_err))?;
        let guard = self.lock_guard().map_err(io_err)?;
        Condition::IfMatch(from_version.clone()).check(file_version(&src)?.as_ref(), true)?;
        match fs::hard_link(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists);
            }
            Err(e) => return Err(conflict_or(to, e, io_err)),
        }
        drop(guard);
        sync_dir(&parent).map_err(io_err)
    }

    fn get_blocking(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path_of(key)?;
        let io_err = |e: io::Error| StoreError::unavailable(format!("reading {key}: {e}"));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(io_err(e)),
        };
        // The version comes from the same open file as the bytes, so they agree
        // even if the name is replaced while we read.
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Ok(None);
        }
        let mut body = Vec::with_capacity(meta.len() as usize);
        io::Read::read_to_end(&mut file, &mut body).map_err(io_err)?;
        Ok(Some(Object {
            body: Bytes::from(body),
            version: version_of(&meta),
        }))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        // Start at the deepest directory the prefix names whole.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if start_rel.is_empty() {
            self.root.clone()
        } else {
            self.path_of(start_rel)?
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(StoreError::unavailable(format!(
                        "listing {}: {e}",
                        dir.display()
                    )));
                }
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::unavailable(format!("listing: {e}")))?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(key) = rel.to_str() else { continue };
                if key.starts_with(INTERNAL_DIR) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    if prefix.starts_with(key) || key.starts_with(prefix) {
                        stack.push(path);
                    }
                } else if meta.is_file() && key.starts_with(prefix) {
                    let modified = meta.modified().ok().map(OffsetDateTime::from);
                    out.push(Entry {
                        key: key.to_string(),
                        size: meta.len(),
                        modified,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The version of the file at `path`, `None` when there is none.
fn file_version(path: &Path) -> Result<Option<Version>, StoreError> {
    let current = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Some(version_of(&m)),
        Ok(_) => None,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            None
        }
        Err(e) => {
            return Err(StoreError::unavailable(format!(
                "checking {}: {e}",
                path.display()
            )));
        }
    };
    Ok(current)
}

/// Checks a condition against what is at `path` now; call under the guard.
fn check_condition(path: &Path, condition: &Condition, is_put: bool) -> Result<(), StoreError> {
    condition.check(file_version(path)?.as_ref(), is_put)
}

/// A key whose path crosses an existing file (`a` is a state, so `a/b`
/// cannot be a directory) is the client's conflict, not a store failure.
fn conflict_or(key: &str, e: io::Error, other: impl Fn(io::Error) -> StoreError) -> StoreError {
    match e.kind() {
        io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::AlreadyExists => {
            StoreError::KeyConflict(format!("`{key}` clashes with another state's path on disk"))
        }
        _ => other(e),
    }
}

fn version_of(meta: &fs::Metadata) -> Version {
    Version(format!(
        "{:x}-{:x}.{:x}-{:x}",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    ))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Temporary files older than an hour were left by a killed process; younger
/// ones may belong to a writer in another process sharing the directory.
fn remove_stale_temporaries(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    f: impl FnOnce(&Tree) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(&store.0);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StoreError::unavailable(format!("worker failed: {e}")))?
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
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let key = key.to_string();
        blocking(self, move |s| s.get_blocking(&key)).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let key = key.to_string();
        blocking(self, move |s| s.put_blocking(&key, &body, &condition)).await
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let key = key.to_string();
        blocking(self, move |s| s.delete_blocking(&key, &condition)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        blocking(self, move |s| s.list_blocking(&prefix)).await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let key = key.to_string();
        blocking(self, move |s| file_version(&s.path_of(&key)?)).await
    }

    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        _body: &Bytes,
    ) -> Result<(), StoreError> {
        let (from, from_version, to) = (from.to_string(), from_version.clone(), to.to_string());
        blocking(self, move |s| {
            s.snapshot_blocking(&from, &from_version, &to)
        })
        .await
    }
}
