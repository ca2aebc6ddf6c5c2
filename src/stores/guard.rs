//! Whether the store takes writes now. A server opens every store inside a
//! [`Guarded`], which serves reads whatever happens and decides about
//! changes:
//!
//! - **Read-only on purpose** (`read_only: true`): every change is refused
//!   ([`StoreError::ReadOnlyMode`]), nothing is ever written, not even the
//!   start-up probe.
//! - **Degraded**: the store can be read but not written (its disk is full,
//!   its file system or database is read-only, its credentials may read
//!   only). Found at start-up by the probe, or later by a write refused for
//!   such a reason. Changes are refused with the cause
//!   ([`StoreError::NotWritable`]) while a probe tries writing again, in the
//!   background every few seconds and on the next change asked for; once
//!   it succeeds, writes resume without a restart.
//! - **Below the reserve** (local and SQLite, `min_free_bytes`): the device
//!   holding the store is nearly full. New state versions are refused (the
//!   state layer asks [`Store::writes`] before writing one) while locks,
//!   unlocks, deletes and purges still work, so a team can finish or abort
//!   an apply and an operator can free space.

use crate::stores::OpSnapshot;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::keylock::KeyLock;
use super::probe::probe;
use super::store::{Space, Writes};
use super::{
    BoxFuture, Capabilities, Change, Entry, OpDelete, OpList, OpRead, OpWrite, OpenError, Payload,
    Stopped, Store, StoreError, ThenChange, Version,
};
use crate::settings::Setting;

/// How often a degraded store is probed in the background.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest time between two probes of a degraded store asked for by
/// changes: a burst of refused requests makes one probe, not one each.
const RECHECK: Duration = Duration::from_secs(2);

/// Below this many bytes free the local and SQLite stores refuse new state
/// versions, unless `min_free_bytes` says otherwise: 64 MiB, or 1% of the
/// device where that is less (a small test device).
const DEFAULT_RESERVE: u64 = 64 * 1024 * 1024;

/// Files kept free for locks where the file system has a fixed number of
/// them: a hundredth of them, within these bounds. New state versions are
/// refused below it, as below the reserve of bytes.
const INODES_KEPT_MIN: u64 = 16;
const INODES_KEPT_MAX: u64 = 1000;

/// The reserve setting of the stores on this machine's disk.
pub const MIN_FREE_BYTES: Setting = Setting {
    name: "min_free_bytes",
    aliases: &["minFreeBytes"],
    env: &["STATEGATE_MIN_FREE_BYTES"],
    secret: false,
    default: None,
    help: "below this many free bytes on the device, new state versions are refused while locks, \
           unlocks, deletes and purges still work (default: 64 MiB, or 1% of the device if less; \
           0 turns it off)",
};

/// Opens the store again for writing, after it was opened for reading only.
pub type Reopen = Box<dyn Fn() -> BoxFuture<Result<Arc<dyn Store>, OpenError>> + Send + Sync>;

/// Where a store on this machine's disk keeps its files, for the reserve.
#[derive(Debug, Clone)]
pub struct Reserve {
    /// A directory on the device holding the store.
    pub dir: PathBuf,
    /// The spare file kept on that device ([`SPARE_BYTES`]), given up when
    /// the device is full so that locks, unlocks, deletes and purges (and
    /// opening the store) still find room. Relative to `dir`, and reached
    /// from it through no symbolic link.
    pub spare: PathBuf,
    /// `min_free_bytes`; `None` for the default.
    pub min_free: Option<u64>,
}

/// The size of the spare file: 4 MiB, or 1/32 of a small device. A lock
/// cycle or deleting a state writes a few small objects; SQLite's log
/// needs a few pages for each.
const SPARE_BYTES: u64 = 4 * 1024 * 1024;

impl Reserve {
    /// Gives up the spare file when the device is full (less room than the
    /// spare holds); whether there was one to give up. Only a file that
    /// can be the spare is removed: a regular file of at most
    /// [`SPARE_BYTES`] zeros, reached from [`Reserve::dir`] through no
    /// link. A failure that is not a full device leaves it, and so does a
    /// file of the operator's that happens to have its name.
    pub fn release_spare(&self) -> bool {
        if self.space().is_none_or(|space| space.free >= SPARE_BYTES) {
            return false;
        }
        let Some((parent, name)) = self.spare_place() else {
            return false;
        };
        let Some(size) = spare_size(&parent, &name) else {
            return false;
        };
        if rustix::fs::unlinkat(&parent, name.as_str(), rustix::fs::AtFlags::empty()).is_err() {
            return false;
        }
        tracing::warn!(
            spare = %self.dir.join(&self.spare).display(),
            bytes = size,
            "the device is full: gave up the spare file so that locks, deletes and purges still \
             work; it is made again once space is freed"
        );
        true
    }

    /// The directory holding the spare file, opened from [`Reserve::dir`]
    /// through no link, and the file's name in it.
    fn spare_place(&self) -> Option<(std::os::fd::OwnedFd, String)> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let name = self.spare.file_name()?.to_str()?.to_string();
        let parent = crate::settings::directory_of(&self.spare);
        let dir = rustix::fs::open(
            &self.dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let parent = rustix::fs::openat2(
            &dir,
            parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        Some((parent, name))
    }

    /// Makes the spare file when it is missing and the device has room for
    /// it beyond the reserve.
    fn keep_spare(&self) {
        use rustix::fs::{AtFlags, Mode, OFlags};
        use std::io::Write;
        let Some(space) = self.space() else {
            return;
        };
        let size = SPARE_BYTES.min(space.size / 32);
        if size == 0 || space.free < space.reserve.saturating_add(size.saturating_mul(2)) {
            return;
        }
        let Some((parent, name)) = self.spare_place() else {
            return;
        };
        // Made only where nothing is: an existing file is kept as it is.
        let Ok(fd) = rustix::fs::openat(
            &parent,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) else {
            return;
        };
        let mut file = std::fs::File::from(fd);
        let zeros = vec![0u8; 64 * 1024];
        let mut left = size;
        let made = (|| {
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        if let Err(e) = made {
            let _ = rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty());
            tracing::debug!(spare = %self.dir.join(&self.spare).display(), error = %e, "making the spare file failed");
        }
    }

    /// The room on the device now; `None` when it cannot be asked.
    fn space(&self) -> Option<Space> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        let unit = stat.f_frsize.max(1);
        let size = stat.f_blocks.saturating_mul(unit);
        let reserve = self
            .min_free
            .unwrap_or_else(|| DEFAULT_RESERVE.min(size / 100));
        // File systems without a fixed number of files (btrfs) say 0.
        let inodes = (stat.f_files > 0).then(|| {
            let kept = (stat.f_files / 100).clamp(INODES_KEPT_MIN, INODES_KEPT_MAX);
            (stat.f_favail, kept)
        });
        Some(Space {
            size,
            free: stat.f_bavail.saturating_mul(unit),
            reserve,
            place: self.dir.display().to_string(),
            inodes,
        })
    }
}

/// The size of `name` in `parent` when it can be the spare file: a
/// regular file, not a link, of at most [`SPARE_BYTES`] bytes, all zero.
fn spare_size(parent: &std::os::fd::OwnedFd, name: &str) -> Option<u64> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    let size = u64::try_from(stat.st_size).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || size > SPARE_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(SPARE_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    bytes.iter().all(|b| *b == 0).then_some(size)
}

/// Why writes are refused now, and what recovering takes.
struct Degraded {
    /// The cause, as the refusals say it.
    reason: StoreError,
    /// When a probe last tried writing.
    checked: Instant,
    /// Whether the store must be opened again (it was opened for reading
    /// only) before a probe can write.
    reopen: bool,
}

/// A store with the server's decision about changes in front of it.
pub struct Guarded {
    /// This guard, for the background probe it starts.
    me: Weak<Guarded>,
    inner: RwLock<Arc<dyn Store>>,
    read_only: bool,
    degraded: Mutex<Option<Degraded>>,
    reserve: Option<Reserve>,
    reopen: Option<Reopen>,
    allow_unsafe_locks: bool,
    /// One recovery probe at a time.
    probing: tokio::sync::Mutex<()>,
}

impl Guarded {
    fn new(me: &Weak<Guarded>, inner: Arc<dyn Store>, reserve: Option<Reserve>) -> Self {
        Guarded {
            me: me.clone(),
            inner: RwLock::new(inner),
            read_only: false,
            degraded: Mutex::new(None),
            reserve,
            reopen: None,
            allow_unsafe_locks: false,
            probing: tokio::sync::Mutex::new(()),
        }
    }

    /// A store that takes writes.
    pub fn serving(inner: Arc<dyn Store>, reserve: Option<Reserve>) -> Arc<Self> {
        if let Some(reserve) = &reserve {
            reserve.keep_spare();
        }
        Arc::new_cyclic(|me| Self::new(me, inner, reserve))
    }

    /// A store served read-only on purpose.
    pub fn read_only(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new_cyclic(|me| Guarded {
            read_only: true,
            ..Self::new(me, inner, None)
        })
    }

    /// A store that can be read but not written, for `reason`. `reopen`
    /// opens it for writing when `inner` was opened for reading only.
    /// Probes run in the background until writes work again.
    pub fn degraded(
        inner: Arc<dyn Store>,
        reserve: Option<Reserve>,
        reason: StoreError,
        reopen: Option<Reopen>,
        allow_unsafe_locks: bool,
    ) -> Arc<Self> {
        let guarded = Arc::new_cyclic(|me| Guarded {
            reopen,
            allow_unsafe_locks,
            ..Self::new(me, inner, reserve)
        });
        guarded.degrade(reason, guarded.reopen.is_some());
        guarded
    }

    fn inner(&self) -> Arc<dyn Store> {
        self.inner.read().expect("guarded store").clone()
    }

    fn refusal(&self) -> Option<StoreError> {
        let degraded = self.degraded.lock().expect("guard state");
        degraded.as_ref().map(|d| d.reason.clone())
    }

    /// Starts refusing changes for `reason` (a failure for which
    /// [`StoreError::refuses_writes`] holds), and probing in the
    /// background until writes work again.
    /// `reopen` says the store was opened for reading only; one that
    /// stopped taking writes while serving is probed as it is.
    fn degrade(&self, reason: StoreError, reopen: bool) {
        let reason = self.explained(reason);
        let mut degraded = self.degraded.lock().expect("guard state");
        let reopen = reopen || degraded.as_ref().is_some_and(|d| d.reopen);
        let first = degraded.is_none();
        *degraded = Some(Degraded {
            reason: reason.clone(),
            checked: Instant::now(),
            reopen,
        });
        drop(degraded);
        if !first {
            return;
        }
        tracing::warn!(
            store = %self.describe(),
            %reason,
            "serving reads only; writes are tried again every {}s and on the next change",
            RECOVERY_INTERVAL.as_secs()
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(recover_in_background(self.me.clone()));
        }
    }

    /// A failure that refuses writes, as refusals say it: the cause, and
    /// which store (a device's path is what an operator needs).
    fn explained(&self, e: StoreError) -> StoreError {
        let cause = match e {
            StoreError::NotWritable(cause) => cause,
            StoreError::PermissionDenied { reason, .. } => reason,
            other => other.to_string(),
        };
        // A full device is the cause, whatever the store made of it (SQLite
        // says "disk I/O error" when it cannot make its shared memory).
        let space = self.reserve.as_ref().and_then(Reserve::space);
        let cause = match space {
            Some(space) if space.free == 0 => {
                format!("no space left on the device holding {}", space.place)
            }
            _ => cause,
        };
        let store = self.describe();
        match cause.contains(&store) {
            true => StoreError::NotWritable(cause),
            false => StoreError::NotWritable(format!("{cause} ({store})")),
        }
    }

    /// Probes a degraded store if the last probe is older than `due`;
    /// whether it takes writes afterwards.
    async fn recover(&self, due: Duration) -> bool {
        let _one = self.probing.lock().await;
        let reopen = {
            let degraded = self.degraded.lock().expect("guard state");
            match &*degraded {
                None => return true,
                Some(d) if d.checked.elapsed() < due => return false,
                Some(d) => d.reopen,
            }
        };
        let store = match reopen {
            true => match self.reopen.as_ref().map(|open| open()) {
                Some(opening) => opening
                    .await
                    .map_err(|e| StoreError::NotWritable(e.to_string())),
                None => Ok(self.inner()),
            },
            false => Ok(self.inner()),
        };
        let outcome = match store {
            Ok(store) => self.try_writing(&store).await.map(|()| store),
            Err(e) => Err(e),
        };
        let mut degraded = self.degraded.lock().expect("guard state");
        match outcome {
            Ok(store) => {
                *self.inner.write().expect("guarded store") = store;
                *degraded = None;
                drop(degraded);
                if let Some(reserve) = &self.reserve {
                    reserve.keep_spare();
                }
                tracing::info!(store = %self.describe(), "the store takes writes again");
                true
            }
            Err(reason) => {
                if let Some(d) = degraded.as_mut() {
                    d.checked = Instant::now();
                    d.reason = self.explained(reason);
                }
                false
            }
        }
    }

    /// The start-up probe's writes, with its safety checks.
    async fn try_writing(&self, store: &Arc<dyn Store>) -> Result<(), StoreError> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let report = probe(store.as_ref(), &tag).await?;
        let locks_safe = report.capabilities.conditional_create || self.allow_unsafe_locks;
        match report.stale_write_refused && locks_safe {
            true => Ok(()),
            false => Err(StoreError::NotWritable(
                "the store no longer refuses stale writes or second conditional creates".into(),
            )),
        }
    }

    /// Whether a change may go to the store now: refused when read-only,
    /// and when degraded unless a probe (if one is due) finds writes work.
    async fn admit(&self) -> Result<Arc<dyn Store>, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnlyMode);
        }
        if let Some(reason) = self.refusal()
            && !self.recover(RECHECK).await
        {
            return Err(self.refusal().unwrap_or(reason));
        }
        Ok(self.inner())
    }

    /// Gives up the spare file after `result`, a change that found the
    /// device full; whether the change is worth making again.
    fn room_made<T>(&self, result: &Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::NotWritable(_)))
            && self.reserve.as_ref().is_some_and(Reserve::release_spare)
    }

    /// Passes a change's failure on, degrading first when it says the
    /// store takes no writes.
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(e) if e.refuses_writes() => {
                self.degrade(e, false);
                Err(self.refusal().expect("degraded"))
            }
            other => other,
        }
    }

    /// Judges `result`, the outcome of making `changes` on `store`: when
    /// one failed for room and room was made, the changes from it on are
    /// tried once more (those before it are made); a failure that says the
    /// store takes no writes degrades it, as [`Guarded::observe`] does.
    async fn changes_made(
        &self,
        store: &Arc<dyn Store>,
        mut changes: Vec<Change>,
        mut result: Result<(), Stopped>,
    ) -> Result<(), Stopped> {
        if let Err(Stopped { at, error }) = &result
            && self.room_made(&Err::<(), _>(error.clone()))
        {
            let done = *at;
            changes.drain(..done);
            result = store
                .change_all(changes)
                .await
                .map_err(|Stopped { at, error }| Stopped {
                    at: at + done,
                    error,
                });
        }
        match result {
            Err(Stopped { at, error }) => self
                .observe(Err(error))
                .map_err(|error| Stopped { at, error }),
            done => done,
        }
    }
}

/// Probes a degraded store every [`RECOVERY_INTERVAL`] until it takes
/// writes (or the server lets go of it).
async fn recover_in_background(guarded: Weak<Guarded>) {
    loop {
        tokio::time::sleep(RECOVERY_INTERVAL).await;
        let Some(guarded) = guarded.upgrade() else {
            return;
        };
        if guarded.recover(RECOVERY_INTERVAL / 2).await {
            return;
        }
    }
}

#[async_trait]
impl Store for Guarded {
    fn describe(&self) -> String {
        self.inner().describe()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }

    fn operation_timeout(&self) -> Duration {
        self.inner().operation_timeout()
    }

    fn max_key_bytes(&self) -> Option<usize> {
        self.inner().max_key_bytes()
    }

    fn writes(&self) -> Writes {
        let refused = match self.read_only {
            true => Some(StoreError::ReadOnlyMode),
            false => self.refusal(),
        };
        Writes {
            refused,
            space: self.reserve.as_ref().and_then(Reserve::space),
        }
    }

    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        self.inner().read(key, args).await
    }

    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let store = self.admit().await?;
        let mut result = store.write(key, body.clone(), args.clone()).await;
        if self.room_made(&result) {
            result = store.write(key, body, args).await;
        }
        self.observe(result)
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let store = self.admit().await?;
        let mut result = store.delete(key, args.clone()).await;
        if self.room_made(&result) {
            result = store.delete(key, args).await;
        }
        self.observe(result)
    }

    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        self.inner().list(prefix, args).await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        self.inner().stat(key).await
    }

    async fn native_lease(&self, key: &str, wait: Duration) -> Result<KeyLock, StoreError> {
        let store = self.admit().await?;
        self.observe(store.native_lease(key, wait).await)
    }

    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let store = self
            .admit()
            .await
            .map_err(|error| Stopped { at: 0, error })?;
        let result = store.change_all(changes.clone()).await;
        self.changes_made(&store, changes, result).await
    }

    /// A write that failed for room is tried again, as [`Store::write`]
    /// here does, and its changes as [`Store::change_all`] here does.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let store = self.admit().await?;
        let attempt = || store.write_then_change(key, body.clone(), args.clone(), then.clone());
        let mut result = attempt().await;
        if self.room_made(&result) {
            result = attempt().await;
        }
        let (version, changed) = self.observe(result)?;
        let changed = match changed {
            Ok(()) => Ok(()),
            failed => self.changes_made(&store, then(&version), failed).await,
        };
        Ok((version, changed))
    }

    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        let store = self.admit().await?;
        let mut result = store.snapshot(copy).await;
        if self.room_made(&result) {
            result = store.snapshot(copy).await;
        }
        self.observe(result)
    }
}
