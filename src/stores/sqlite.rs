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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{Backend, Capabilities, Condition, Entry, Object, Store, StoreError, Version};
use crate::config::{ConfigError, Setting, StoreSettings};

/// Registration of the SQLite store.
pub static BACKEND: Backend = Backend {
    name: "sqlite",
    summary: "one SQLite database file on this machine",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move { Ok(Arc::new(SqliteStore::open(&settings)?) as Arc<dyn Store>) })
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
    idle: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by `path`.
    pub fn open(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let path = settings.path("path").ok_or_else(|| ConfigError::Missing {
            setting: "path".into(),
            help: "the database file".into(),
        })?;
        Self::open_file(&path)
            .map_err(|e| ConfigError::invalid("path", format!("{}: {e}", path.display())))
    }

    /// Opens a database file directly.
    pub fn open_file(path: &Path) -> Result<Self, rusqlite::Error> {
        let pool = Pool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        let conn = pool.connect()?;
        conn.execute_batch(SCHEMA)?;
        pool.idle.lock().expect("pool lock").push(conn);
        Ok(SqliteStore(Arc::new(pool)))
    }

    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut conn = match pool.idle.lock().expect("pool lock").pop() {
                Some(c) => c,
                None => pool
                    .connect()
                    .map_err(|e| StoreError::unavailable(format!("{what}: {e}")))?,
            };
            let result = f(&mut conn);
            // A connection that failed may be in a bad state; drop it.
            if !matches!(result, Err(StoreError::Unavailable(_))) {
                pool.idle.lock().expect("pool lock").push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::unavailable(format!("worker failed: {e}")))?
    }
}

impl Pool {
    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
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
        self.run(format!("writing {key}"), move |conn| {
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
        self.run(format!("deleting {key}"), move |conn| {
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
        self.run(format!("copying {from}"), move |conn| {
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
