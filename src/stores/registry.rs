//! The storage types compiled into this binary, and how a configured one
//! is opened: for serving (probed first, see [`super::probe`]), for
//! reading only, or only asked whether it exists yet.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

#[cfg(feature = "db")]
use super::db;
#[cfg(feature = "oss")]
use super::oss;
use super::probe::{ProbeReport, probe};
#[cfg(feature = "s3")]
use super::s3;
use super::{Capabilities, OpenError, Store, StoreError, local, read_only, sqlite};
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
    pub store: Arc<dyn Store>,
    /// What the start-up probe measured; the state layer goes by this.
    pub capabilities: Capabilities,
    /// The probe's steps, for `stategate check`.
    pub report: ProbeReport,
}

/// Opens the configured store and probes it: it must be reachable, its
/// conditional create must really be atomic unless `allow_unsafe_locks` is
/// set, and a stale conditional write must be refused.
pub async fn open(backend: &'static Backend, settings: StoreSettings) -> Result<Opened, OpenError> {
    let allow_unsafe = settings.bool("allow_unsafe_locks")?;
    let store = (backend.open)(settings).await?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let report = probe(store.as_ref(), &tag)
        .await
        .map_err(|reason| OpenError::store(store.describe(), reason))?;
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
        store,
        report,
    })
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
    let inner = match backend.name {
        "local" => {
            let config = local::LocalConfig::from_settings(&settings)?;
            local::LocalStore::open_read_only(&config.root)
                .map_err(|e| {
                    OpenError::store(
                        "local store",
                        StoreError::ConfigInvalid {
                            setting: "path",
                            reason: format!("{}: {e}", config.root.display()),
                        },
                    )
                })?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        "sqlite" => {
            let config = sqlite::SqliteConfig::from_settings(&settings)?;
            // Opening creates the file and its tables; one that does not
            // exist (or is empty) has no states to read.
            match sqlite_file_exists(&config.path) {
                true => Some((backend.open)(settings).await?),
                false => None,
            }
        }
        // Opening for serving creates the tables; a dry run only looks.
        #[cfg(feature = "db")]
        "db" => {
            let config = db::DbConfig::from_settings(&settings)?;
            db::DbStore::open_read_only(config)
                .await?
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
        // The bucket stores only check the bucket when they connect; their
        // writes are the probe's, which is skipped here.
        _ => Some((backend.open)(settings).await?),
    };
    Ok(Arc::new(read_only::ReadOnly::new(inner, backend.name)))
}
