//! The storage types compiled into this binary, and how a configured one
//! is opened: for serving (probed first, see [`super::probe`]), for
//! reading only, or only asked whether it exists yet.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

#[cfg(feature = "db")]
use super::db;
use super::guard::{Guarded, Reopen, Reserve};
#[cfg(feature = "oss")]
use super::oss;
use super::probe::{ProbeReport, probe};
#[cfg(feature = "s3")]
use super::s3;
use super::{Capabilities, OpenError, PROBE_PREFIX, Store, StoreError, local, read_only, sqlite};
use crate::settings::{ConfigError, Setting, StoreSettings};

/// A storage type a user can name in `backend.storageType`.
pub struct Backend {
    /// The `storageType` value.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub summary: &'static str,
    /// The settings `backend.config` accepts, beyond [`COMMON_SETTINGS`].
    pub settings: &'static [Setting],
    /// Opens the store from merged settings: parses them into the store's
    /// typed config, connects, and checks what it can there.
    pub open: fn(StoreSettings) -> BoxFuture<OpenResult>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What opening a store gives.
pub type OpenResult = Result<Arc<dyn Store>, OpenError>;

/// Every [`Backend::open`]: `parse` reads the merged settings into the
/// store's typed config, `open` opens the store with it, and the store is
/// handed out shared.
pub fn open_with<C, S, F>(
    settings: StoreSettings,
    parse: fn(&StoreSettings) -> Result<C, ConfigError>,
    open: fn(C) -> F,
) -> BoxFuture<OpenResult>
where
    C: Send + 'static,
    S: Store + 'static,
    F: std::future::Future<Output = Result<S, OpenError>> + Send + 'static,
{
    Box::pin(async move {
        let config = parse(&settings)?;
        Ok(Arc::new(open(config).await?) as Arc<dyn Store>)
    })
}

/// The one setting of a store kept at a path on this machine (a local
/// directory, a SQLite file): `path`, with a default.
pub const fn path_setting(
    env: &'static [&'static str],
    default: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        name: "path",
        aliases: &[],
        env,
        secret: false,
        default: Some(default),
        help,
    }
}

/// The value of [`path_setting`]: relative paths resolved, and never
/// unset, since it has a default (only an empty value leaves it so).
pub fn store_path(settings: &StoreSettings) -> Result<PathBuf, ConfigError> {
    settings
        .path("path")
        .ok_or_else(|| ConfigError::invalid("path", "must not be empty"))
}

/// A boxed future, so `Backend::open` can be a plain function pointer.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Settings every storage type accepts, whatever it is.
pub const COMMON_SETTINGS: &[Setting] = &[Setting {
    name: "allow_unsafe_locks",
    aliases: &["allowUnsafeLocks"],
    env: &["STATEGATE_ALLOW_UNSAFE_LOCKS"],
    secret: false,
    default: Some("false"),
    help: "start even when the store cannot create objects atomically (two clients could both get a lock)",
}];

/// Every storage type compiled into this binary.
pub fn backends() -> Vec<&'static Backend> {
    #[allow(unused_mut)]
    let mut all: Vec<&'static Backend> = vec![&local::BACKEND, &sqlite::BACKEND];
    #[cfg(feature = "s3")]
    all.push(&s3::BACKEND);
    #[cfg(feature = "oss")]
    all.push(&oss::BACKEND);
    #[cfg(feature = "db")]
    all.push(&db::BACKEND);
    all
}

/// Finds a storage type by its `storageType` name.
pub fn backend(name: &str) -> Option<&'static Backend> {
    backends().into_iter().find(|b| b.name == name)
}

/// A store ready for use, with what it was seen to guarantee.
pub struct Opened {
    /// The store inside its guard ([`Guarded`]), which decides whether
    /// changes go through.
    pub store: Arc<dyn Store>,
    /// What the start-up probe measured; the state layer goes by this.
    pub capabilities: Capabilities,
    /// The probe's steps, for `stategate check`.
    pub report: ProbeReport,
}

/// Opens the configured store for serving and probes it: it must be
/// reachable, its conditional create must really be atomic unless
/// `allow_unsafe_locks` is set, and a stale conditional write must be
/// refused. A store that can be read but not written (a full disk, a
/// read-only file system or database, credentials that only read) is
/// served degraded: reads work, changes are refused with the cause until
/// writes work again ([`super::guard`]). With `read_only` nothing is
/// written at all, not even the probe.
pub async fn open(
    backend: &'static Backend,
    settings: StoreSettings,
    read_only: bool,
) -> Result<Opened, OpenError> {
    let allow_unsafe = settings.bool("allow_unsafe_locks")?;
    let reserve = reserve(backend, &settings)?;
    if read_only {
        let store = readable(backend, settings, Locks::Never)
            .await?
            .ok_or_else(|| {
                OpenError::store(
                    backend.name,
                    StoreError::ConfigInvalid {
                        setting: "read_only",
                        reason:
                            "the store does not exist yet, and a read-only server cannot create it"
                                .into(),
                    },
                )
            })?;
        let capabilities = store.capabilities();
        return Ok(Opened {
            report: ProbeReport {
                steps: vec!["read_only is set: nothing is written, not even a probe".into()],
                capabilities,
                stale_write_refused: true,
            },
            capabilities,
            store: Guarded::read_only(store),
        });
    }
    let mut attempt = open_and_probe(backend, &settings).await;
    // On a full device, the spare file kept for this makes the room that
    // opening and the probe need.
    if attempt.is_err() && reserve.as_ref().is_some_and(Reserve::release_spare) {
        attempt = open_and_probe(backend, &settings).await;
    }
    let (store, report) = match attempt {
        Ok(opened) => opened,
        Err(Failed::Probe(store, reason)) if can_read(store.as_ref()).await => {
            // Opened again before writing, so that what opening measures
            // (a bucket's conditional requests) is measured with writes.
            let reopen = reopen_for_writing(backend, settings);
            return Ok(degraded(store, reserve, reason, Some(reopen), allow_unsafe));
        }
        Err(Failed::Probe(store, reason)) => {
            return Err(OpenError::store(store.describe(), reason));
        }
        Err(Failed::Open(failed)) => {
            // Opening for serving writes (a log, a table, a marker); a
            // store that is there and can be read is served degraded.
            let Ok(Some(store)) = readable(backend, settings.clone(), Locks::Later).await else {
                return Err(failed);
            };
            if !can_read(store.as_ref()).await {
                return Err(failed);
            }
            let reopen = reopen_for_writing(backend, settings);
            let reason =
                StoreError::NotWritable(format!("opening it for writing failed: {failed}"));
            return Ok(degraded(store, reserve, reason, Some(reopen), allow_unsafe));
        }
    };
    if !report.stale_write_refused {
        return Err(OpenError::UnsafeWrites {
            store: store.describe(),
        });
    }
    if !report.capabilities.conditional_create {
        if !allow_unsafe {
            return Err(OpenError::UnsafeLocks {
                store: store.describe(),
            });
        }
        tracing::warn!(store = %store.describe(), "allow_unsafe_locks is set: locks are not safe on this store");
    }
    Ok(Opened {
        capabilities: report.capabilities,
        store: Guarded::serving(store, reserve),
        report,
    })
}

/// Opens the store for writing again, for a recovery probe.
fn reopen_for_writing(backend: &'static Backend, settings: StoreSettings) -> Reopen {
    Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move { (backend.open)(settings).await })
    })
}

/// Why opening for serving failed.
enum Failed {
    /// The store could not be opened.
    Open(OpenError),
    /// It opened, and the probe's writes failed.
    Probe(Arc<dyn Store>, StoreError),
}

/// Opens the store for serving and probes it.
async fn open_and_probe(
    backend: &'static Backend,
    settings: &StoreSettings,
) -> Result<(Arc<dyn Store>, ProbeReport), Failed> {
    let store = (backend.open)(settings.clone())
        .await
        .map_err(Failed::Open)?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    match probe(store.as_ref(), &tag).await {
        Ok(report) => Ok((store, report)),
        Err(reason) => Err(Failed::Probe(store, reason)),
    }
}

/// A store served degraded for `reason`: what its own settings claim
/// stands in for the probe's findings until a probe can write.
fn degraded(
    store: Arc<dyn Store>,
    reserve: Option<Reserve>,
    reason: StoreError,
    reopen: Option<Reopen>,
    allow_unsafe: bool,
) -> Opened {
    let capabilities = store.capabilities();
    let report = ProbeReport {
        steps: vec![format!(
            "{reason}; serving reads only until writes work again"
        )],
        capabilities,
        stale_write_refused: true,
    };
    Opened {
        store: Guarded::degraded(store, reserve, reason, reopen, allow_unsafe),
        capabilities,
        report,
    }
}

/// Whether a read of the store works.
async fn can_read(store: &dyn Store) -> bool {
    store.stat(&format!("{PROBE_PREFIX}ready")).await.is_ok()
}

/// The free-space reserve of the stores on this machine's disk.
fn reserve(backend: &Backend, settings: &StoreSettings) -> Result<Option<Reserve>, OpenError> {
    let (dir, spare) = match backend.name {
        "local" => {
            let root = local::LocalConfig::from_settings(settings)?.root;
            (root, std::path::PathBuf::from(".stategate/local/spare"))
        }
        "sqlite" => {
            let path = sqlite::SqliteConfig::from_settings(settings)?.path;
            let dir = crate::settings::directory_of(&path).to_path_buf();
            let mut spare = path.file_name().unwrap_or_default().to_os_string();
            spare.push(".spare");
            (dir, spare.into())
        }
        _ => return Ok(None),
    };
    Ok(Some(Reserve {
        dir,
        spare,
        min_free: settings.u64("min_free_bytes")?,
    }))
}

/// Checks the settings [`open`] reads before it opens anything, without
/// opening: `stategate check` of a store not created yet refuses what
/// `serve` would.
pub fn check_settings(backend: &Backend, settings: &StoreSettings) -> Result<(), OpenError> {
    settings.bool("allow_unsafe_locks")?;
    reserve(backend, settings)?;
    Ok(())
}

/// What is missing when the configured store does not exist yet: a local
/// directory, a SQLite file, or a database without stategate's tables.
/// Only `serve` (and a migration into it) creates a store, so the other
/// commands ask this first instead of making an empty one where a wrong
/// path points. Buckets are checked when the store is opened.
pub async fn missing(
    backend: &'static Backend,
    settings: &StoreSettings,
) -> Result<Option<String>, OpenError> {
    Ok(match backend.name {
        "local" => {
            let root = local::LocalConfig::from_settings(settings)?.root;
            (!root.is_dir()).then(|| format!("the directory {} does not exist", root.display()))
        }
        "sqlite" => {
            let path = sqlite::SqliteConfig::from_settings(settings)?.path;
            (!sqlite_file_exists(&path))
                .then(|| format!("the SQLite file {} does not exist", path.display()))
        }
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(settings)?;
            let prefix = config.table_prefix.clone();
            db::DbStore::open_read_only(config)
                .await?
                .is_none()
                .then(|| format!("the database has no stategate tables ({prefix}*)"))
        }
        _ => None,
    })
}

/// For `stategate check` on a store that [`missing`] reports: whether
/// `serve` could create it, without creating it: for a database, the
/// user's right to create stategate's tables. Nothing is checked for the
/// other stores.
pub async fn check_creatable(
    backend: &'static Backend,
    settings: &StoreSettings,
) -> Result<(), OpenError> {
    match backend.name {
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(settings)?;
            Ok(db::DbStore::check_creatable(config).await?)
        }
        _ => {
            let _ = settings;
            Ok(())
        }
    }
}

/// Whether a SQLite store's file exists with something in it: an empty
/// file is what opening would turn into a new store.
fn sqlite_file_exists(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

/// Opens the configured store for reading only (a dry run): no probe, and
/// nothing created or changed, so read-only credentials will do. A local
/// directory or SQLite file that does not exist yet, or an empty SQLite
/// file, reads as an empty store instead of being created. Every write
/// through the store returned is refused ([`read_only::ReadOnly`]).
pub async fn open_for_reading(
    backend: &'static Backend,
    settings: StoreSettings,
) -> Result<Arc<dyn Store>, OpenError> {
    let inner = readable(backend, settings, Locks::Never).await?;
    Ok(Arc::new(read_only::ReadOnly::new(inner, backend.name)))
}

/// Whether a store opened for reading will be locked on later.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Locks {
    /// Never: a read-only server, a dry run.
    Never,
    /// Once writes work again: a store served degraded.
    Later,
}

/// Opens the configured store without creating or changing anything;
/// `None` when it does not exist yet. Only to be read; with
/// [`Locks::Later`], it is refused where locks would be unsafe as for
/// serving.
async fn readable(
    backend: &'static Backend,
    settings: StoreSettings,
    locks: Locks,
) -> Result<Option<Arc<dyn Store>>, OpenError> {
    let failed = |setting: &'static str, reason: String| {
        OpenError::store(
            format!("{} store", backend.name),
            StoreError::ConfigInvalid { setting, reason },
        )
    };
    Ok(match backend.name {
        "local" => {
            let config = local::LocalConfig::from_settings(&settings)?;
            local::LocalStore::open_read_only(&config.root)
                .map_err(|e| failed("path", format!("{}: {e}", config.root.display())))?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        "sqlite" => {
            let config = sqlite::SqliteConfig::from_settings(&settings)?;
            sqlite::SqliteStore::open_read_only(&config.path)
                .map_err(|e| failed("path", format!("{}: {e}", config.path.display())))?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        // Opening for serving creates the tables; this only looks.
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(&settings)?;
            db::DbStore::open_read_only(config)
                .await?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        // Versioning only makes locks unsafe, and nothing is locked here.
        #[cfg(feature = "oss")]
        "oss" if locks == Locks::Never => {
            let config = oss::OssConfig::from_settings(&settings)?;
            let store = oss::OssStore::connect_for_reading(config)
                .await
                .map_err(|reason| OpenError::store("oss store", reason))?;
            Some(Arc::new(store) as Arc<dyn Store>)
        }
        // The bucket stores only check the bucket when they connect; their
        // writes are the probe's, which is skipped here.
        _ => Some((backend.open)(settings).await?),
    })
}
