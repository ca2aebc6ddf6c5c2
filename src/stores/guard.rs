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
    Stopped, Store, StoreError, Version,
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
    /// `min_free_bytes`; `None` for the default.
    pub min_free: Option<u64>,
}

impl Reserve {
    /// The room on the device now; `None` when it cannot be asked.
    fn space(&self) -> Option<Space> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        let unit = stat.f_frsize.max(1);
        let size = stat.f_blocks.saturating_mul(unit);
        let reserve = self
            .min_free
            .unwrap_or_else(|| DEFAULT_RESERVE.min(size / 100));
        Some(Space {
            free: stat.f_bavail.saturating_mul(unit),
            reserve,
            place: self.dir.display().to_string(),
        })
    }
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
        guarded.degrade(reason);
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
    fn degrade(&self, reason: StoreError) {
        let reason = self.explained(reason);
        let mut degraded = self.degraded.lock().expect("guard state");
        let reopen = degraded.as_ref().is_some_and(|d| d.reopen) || self.reopen.is_some();
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

    /// Passes a change's failure on, degrading first when it says the
    /// store takes no writes.
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(e) if e.refuses_writes() => {
                self.degrade(e);
                Err(self.refusal().expect("degraded"))
            }
            other => other,
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
        self.observe(store.write(key, body, args).await)
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let store = self.admit().await?;
        self.observe(store.delete(key, args).await)
    }

    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        self.inner().list(prefix, args).await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        self.inner().stat(key).await
    }

    async fn native_lease(&self, key: &str, wait: Duration) -> Result<KeyLock, StoreError> {
        let store = self.admit().await?;
        store.native_lease(key, wait).await
    }

    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let store = self
            .admit()
            .await
            .map_err(|error| Stopped { at: 0, error })?;
        match store.change_all(changes).await {
            Err(Stopped { at, error }) => self
                .observe(Err(error))
                .map_err(|error| Stopped { at, error }),
            done => done,
        }
    }

    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        body: &Payload,
    ) -> Result<(), StoreError> {
        let store = self.admit().await?;
        self.observe(store.snapshot(from, from_version, to, body).await)
    }
}
