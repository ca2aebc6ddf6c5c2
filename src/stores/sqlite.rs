//! `storageType: sqlite`: every object is a row in one database file.
//!
//! The file runs in WAL mode with `synchronous=FULL` and a busy timeout, so
//! several stategate processes can share it. Each conditional put or delete
//! is one `BEGIN IMMEDIATE` transaction (check, then change), which makes
//! conditional create and compare-and-swap atomic across processes.
//!
//! A version is a generation number drawn from a counter in the same
//! transaction, never reused, so a deleted and recreated object never
//! matches an old version. SQLite calls block, so they run on tokio's
//! blocking threads with a small pool of connections.
//!
//! Writers of this process queue for the database in arrival order (a fair
//! async mutex) before they open a write transaction, so a long write (a
//! 256 MiB state) makes the others wait their turn rather than run out
//! SQLite's busy timeout; bodies are whole in memory before they queue, so
//! a slow upload never holds the queue. The busy timeout is left for
//! writers in other processes sharing the file.
//!
//! The database file is identified (device and inode) when it is opened and
//! checked before and after every operation: if it is removed or replaced
//! under the running server, connections already open would go on writing
//! to a file nobody will read again, and a new process on the path would
//! start a fresh database with no locks in it. Every operation then fails
//! with 503 instead of answering 200.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{Backend, Capabilities, Condition, Entry, Object, Store, StoreError, Version};
use crate::settings::{ConfigError, Setting, StoreSettings};

/// Registration of the SQLite store.
pub static BACKEND: Backend = Backend {
    name: "sqlite",
    summary: "one SQLite database file on this machine",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move {
            let config = SqliteConfig::from_settings(&settings)?;
            Ok(Arc::new(SqliteStore::open(&config)?) as Arc<dyn Store>)
        })
    },
};

const SETTINGS: &[Setting] = &[Setting {
    name: "path",
    aliases: &[],
    env: &["STATEGATE_SQLITE_PATH"],
    secret: false,
    default: Some("./stategate.db"),
    help: "the database file (created if missing)",
}];

/// The validated settings of the SQLite store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file (relative paths resolved).
    pub path: PathBuf,
}

impl SqliteConfig {
    /// Reads the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let path = settings
            .path("path")
            .ok_or_else(|| ConfigError::invalid("path", "must not be empty"))?;
        Ok(SqliteConfig { path })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY NOT NULL,
    body BLOB NOT NULL,
    generation INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO generation (id, last) VALUES (1, 0);
";

/// One SQLite database file; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore(Arc<Pool>);

/// Idle connections to the database file.
struct Pool {
    path: PathBuf,
    /// Device and inode of the file when it was opened.
    identity: (u64, u64),
    idle: Mutex<Vec<Connection>>,
    /// Writers of this process take turns here, in arrival order.
    writers: Arc<tokio::sync::Mutex<()>>,
}

/// How long a writer waits for another process holding the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(300);

impl SqliteStore {
    /// Opens (creating if needed) the configured database file.
    pub fn open(config: &SqliteConfig) -> Result<Self, ConfigError> {
        Self::open_file(&config.path)
            .map_err(|e| ConfigError::invalid("path", format!("{}: {e}", config.path.display())))
    }

    /// Opens a database file directly.
    pub fn open_file(path: &Path) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open(path)?;
        let meta = std::fs::metadata(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let pool = Pool {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            idle: Mutex::new(Vec::new()),
            writers: Arc::new(tokio::sync::Mutex::new(())),
        };
        Pool::configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        pool.idle.lock().expect("pool lock").push(conn);
        Ok(SqliteStore(Arc::new(pool)))
    }

    /// Runs a read on a pooled connection.
    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_inner(what, None, f).await
    }

    /// Runs a write once this process's earlier writers are done.
    async fn run_write<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let turn = Arc::clone(&self.0.writers).lock_owned().await;
        self.run_inner(what, Some(turn), f).await
    }

    async fn run_inner<T: Send + 'static>(
        &self,
        what: String,
        turn: Option<tokio::sync::OwnedMutexGuard<()>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.0);
        super::blocking(move || {
            let _turn = turn;
            pool.check_identity()?;
            let mut conn = match pool.idle.lock().expect("pool lock").pop() {
                Some(c) => c,
                None => pool
                    .connect()
                    .map_err(|e| StoreError::unavailable(format!("{what}: {e}")))?,
            };
            let result = f(&mut conn);
            // A write that landed in a file removed meanwhile is lost: say so.
            pool.check_identity()?;
            // A connection that failed may be in a bad state; drop it.
            if !matches!(&result, Err(e) if e.is_unavailable()) {
                pool.idle.lock().expect("pool lock").push(conn);
            }
            result
        })
        .await
    }
}

impl Pool {
    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        // Never create a new file here: a missing one was removed under us.
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )?;
        Self::configure(&conn)?;
        Ok(conn)
    }

    fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    /// Fails when the database file is no longer the one opened at start-up.
    fn check_identity(&self) -> Result<(), StoreError> {
        let same = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if same {
            return Ok(());
        }
        Err(StoreError::unavailable(
            "the SQLite database file was removed or replaced while stategate was running; \
             restore it, or restart stategate to use the new file",
        ))
    }
}

fn db_err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::unavailable(format!("{context}: {e}"))
}

/// The version of `key` now, inside the transaction.
fn current_version(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
) -> Result<Option<Version>, rusqlite::Error> {
    tx.query_row(
        "SELECT generation FROM objects WHERE key = ?1",
        [key],
        |r| Ok(Version(r.get::<_, i64>(0)?.to_string())),
    )
    .optional()
}

/// Draws a generation number no object has had, inside the transaction.
fn next_generation(tx: &rusqlite::Transaction<'_>) -> Result<i64, rusqlite::Error> {
    tx.query_row(
        "UPDATE generation SET last = last + 1 WHERE id = 1 RETURNING last",
        [],
        |r| r.get(0),
    )
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite store at {}", self.0.path.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: true,
            compare_and_swap: true,
            unique_versions: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let key = key.to_string();
        self.run(format!("reading {key}"), move |conn| {
            conn.query_row(
                "SELECT body, generation FROM objects WHERE key = ?1",
                [&key],
                |r| {
                    Ok(Object {
                        body: Bytes::from(r.get::<_, Vec<u8>>(0)?),
                        version: Version(r.get::<_, i64>(1)?.to_string()),
                    })
                },
            )
            .optional()
            .map_err(db_err("reading"))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let key = key.to_string();
        self.run_write(format!("writing {key}"), move |conn| {
            let err = db_err("writing");
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
            let current = current_version(&tx, &key).map_err(&err)?;
            condition.check(current.as_ref(), true)?;
            let generation = next_generation(&tx).map_err(&err)?;
            let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
            tx.execute(
                "INSERT INTO objects (key, body, generation, modified_ns) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET body = excluded.body, generation = excluded.generation,
                 modified_ns = excluded.modified_ns",
                params![key, &body[..], generation, now],
            )
            .map_err(&err)?;
            tx.commit().map_err(&err)?;
            Ok(Version(generation.to_string()))
        })
        .await
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_write(format!("deleting {key}"), move |conn| {
            let err = db_err("deleting");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&err)?;
            let current = current_version(&tx, &key).map_err(&err)?;
            condition.check(current.as_ref(), false)?;
            tx.execute("DELETE FROM objects WHERE key = ?1", [&key])
                .map_err(&err)?;
            tx.commit().map_err(&err)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        self.run("listing".to_string(), move |conn| {
            let err = db_err("listing");
            let mut stmt = conn
                .prepare(
                    "SELECT key, length(body), modified_ns FROM objects
                     WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map([&prefix], |r| {
                    let ns: i64 = r.get(2)?;
                    Ok(Entry {
                        key: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        modified: OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok(),
                    })
                })
                .map_err(&err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&err)
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let key = key.to_string();
        self.run(format!("reading {key}"), move |conn| {
            let tx = conn.transaction().map_err(db_err("reading"))?;
            current_version(&tx, &key).map_err(db_err("reading"))
        })
        .await
    }

    /// Copies the row inside the database, without the bytes leaving it.
    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        _body: &Bytes,
    ) -> Result<(), StoreError> {
        let (from, expected, to) = (from.to_string(), from_version.clone(), to.to_string());
        self.run_write(format!("copying {from}"), move |conn| {
            let err = db_err("copying");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&err)?;
            let source = current_version(&tx, &from).map_err(&err)?;
            Condition::IfMatch(expected).check(source.as_ref(), true)?;
            let target = current_version(&tx, &to).map_err(&err)?;
            Condition::IfAbsent.check(target.as_ref(), true)?;
            let generation = next_generation(&tx).map_err(&err)?;
            let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
            tx.execute(
                "INSERT INTO objects (key, body, generation, modified_ns)
                 SELECT ?1, body, ?2, ?3 FROM objects WHERE key = ?4",
                params![to, generation, now, from],
            )
            .map_err(&err)?;
            tx.commit().map_err(&err)
        })
        .await
    }
}
