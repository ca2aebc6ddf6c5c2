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
//! SQLite's busy timeout; bodies have wholly arrived (in memory, or spooled
//! to a file) before they queue, so a slow upload never holds the queue.
//! The busy timeout is left for writers in other processes sharing the
//! file.
//!
//! Large bodies never sit whole in memory: they are written into their row
//! and read out of it a piece at a time through SQLite's blob handles, and
//! a history copy of one is made the same way.
//!
//! A state's write lease ([`Store::native_lease`]) is a key lock
//! ([`super::keylock`]) on a file beside the database, `<file>.leases`:
//! taking and releasing it costs no transaction, and it dies with the
//! process that held it.
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
use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use time::OffsetDateTime;

use super::keylock::{KeyLock, KeyLocks};
use super::payload::{BodyCache, FileBody, SPOOL_THRESHOLD};
use super::{
    Backend, Capabilities, Change, Condition, Entry, OpDelete, OpList, OpRead, OpWrite, Payload,
    Stopped, Store, StoreError, Version,
};
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

/// `body` comes last: SQLite keeps an empty blob of a given size
/// (`zeroblob`) without allocating it only in a row's last column, and
/// reading the other columns then never walks the body's pages.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO generation (id, last) VALUES (1, 0);
";

/// The key locks on `<file>.leases` beside the database `path`.
fn lease_file(path: &Path) -> std::io::Result<KeyLocks> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = rustix::fs::open(
        dir,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    KeyLocks::open(dir, format!("{}.leases", name.to_string_lossy()))
}

/// One SQLite database file; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore(Arc<Pool>);

/// Connections to the database file: idle ones for reads, and the queue of
/// the one thread that writes.
struct Pool {
    path: PathBuf,
    /// Device and inode of the file when it was opened.
    identity: (u64, u64),
    idle: Mutex<Vec<Connection>>,
    /// Writes of this process, in arrival order, to the writer thread.
    writes: Mutex<std::sync::mpsc::Sender<Box<dyn WriteJob>>>,
    /// Transactions the writer thread has committed (one per batch).
    commits: std::sync::atomic::AtomicU64,
    /// The write leases of states, on the file beside the database.
    leases: Arc<KeyLocks>,
    /// Small bodies last read, by key and generation.
    bodies: BodyCache,
}

/// The most writes one transaction takes.
const MAX_BATCH: usize = 128;

/// The most body bytes one transaction takes beyond its first write: a
/// transaction's pages stay in the write-ahead log until it commits, and
/// looking pages up there slows down as it grows, so large bodies commit
/// on their own.
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

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
        let (writes, jobs) = std::sync::mpsc::channel();
        let leases =
            lease_file(path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let pool = Arc::new(Pool {
            leases: Arc::new(leases),
            bodies: BodyCache::default(),
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            idle: Mutex::new(Vec::new()),
            writes: Mutex::new(writes),
            commits: std::sync::atomic::AtomicU64::new(0),
        });
        Pool::configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        move_body_last(&conn)?;
        pool.idle.lock().expect("pool lock").push(conn);
        // The thread ends when the last handle to the pool (and so the
        // sending side of its queue) is dropped.
        let writer = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_batches(&writer, &jobs))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(SqliteStore(pool))
    }

    /// Runs a read on a pooled connection.
    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_inner(what, f).await
    }

    /// Runs a write inside the writer thread's next transaction, which it
    /// shares with the writes queued beside it (group commit): one commit,
    /// and one sync of the log, for all of them. Each write runs in a
    /// savepoint of its own, so one that fails (a condition not met)
    /// changes nothing and the others still commit. The result is given
    /// only once the commit is done.
    async fn run_write<T: Send + 'static>(
        &self,
        what: String,
        bytes: u64,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job = Box::new(Job {
            what: what.clone(),
            bytes,
            apply: Some(f),
            result: None,
            reply,
        });
        let stopped = || StoreError::unavailable(format!("{what}: the SQLite writer stopped"));
        self.0
            .writes
            .lock()
            .expect("write queue")
            .send(job)
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Transactions committed by this store's writer so far.
    #[cfg(test)]
    fn commits(&self) -> u64 {
        self.0.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run_inner<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.0);
        super::blocking(move || {
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

/// One write waiting for the writer thread.
trait WriteJob: Send {
    /// The body bytes it writes.
    fn bytes(&self) -> u64;
    /// Makes the change inside the open transaction; whether it did.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Hands the result over once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Job<T, F> {
    what: String,
    bytes: u64,
    apply: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn apply(&mut self, conn: &Connection) -> bool {
        let apply = self.apply.take().expect("applied once");
        let result = apply(conn);
        let applied = result.is_ok();
        self.result = Some(result);
        applied
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let result = match (self.result, committed) {
            (Some(Err(refused)), _) => Err(refused),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(e.context(&self.what)),
            (None, Ok(())) => Err(StoreError::unavailable(format!("{}: not run", self.what))),
        };
        // The caller may have gone (its request was cut off): nothing to do.
        let _ = self.reply.send(result);
    }
}

/// The writer thread: takes every write queued, up to [`MAX_BATCH`] writes
/// and [`MAX_BATCH_BYTES`], runs them in one transaction, and starts over,
/// until the store is dropped.
fn write_batches(
    pool: &std::sync::Weak<Pool>,
    jobs: &std::sync::mpsc::Receiver<Box<dyn WriteJob>>,
) {
    let mut conn: Option<Connection> = None;
    let mut next: Option<Box<dyn WriteJob>> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes <= MAX_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) if bytes + job.bytes() > MAX_BATCH_BYTES => {
                    next = Some(job);
                    break;
                }
                Ok(job) => {
                    bytes += job.bytes();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match pool.write_batch(&mut conn, batch) {
            Ok(()) => {}
            // The connection may be in a bad state: the next batch opens another.
            Err(()) => conn = None,
        }
    }
}

impl Pool {
    /// Runs one batch of writes in one transaction and hands every result
    /// over; `Err` when the connection failed.
    fn write_batch(
        &self,
        conn: &mut Option<Connection>,
        batch: Vec<Box<dyn WriteJob>>,
    ) -> Result<(), ()> {
        let fail_all = |batch: Vec<Box<dyn WriteJob>>, e: StoreError| {
            for job in batch {
                job.finish(Err(e.clone()));
            }
        };
        if let Err(e) = self.check_identity() {
            fail_all(batch, e);
            return Ok(());
        }
        if conn.is_none() {
            match self.connect() {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    fail_all(
                        batch,
                        StoreError::unavailable(format!("opening the database: {e}")),
                    );
                    return Err(());
                }
            }
        }
        let db = conn.as_ref().expect("connected");
        let failed = |e: rusqlite::Error| StoreError::unavailable(format!("writing: {e}"));
        if let Err(e) = db.execute_batch("BEGIN IMMEDIATE") {
            fail_all(batch, failed(e));
            return Err(());
        }
        let mut applied = Vec::with_capacity(batch.len());
        for mut job in batch {
            let step = db
                .execute_batch("SAVEPOINT write")
                .map_err(failed)
                .and_then(|()| {
                    let done = job.apply(db);
                    if db.is_autocommit() {
                        // SQLite gave up the whole transaction (an I/O error).
                        return Err(StoreError::unavailable(
                            "writing: the transaction was rolled back",
                        ));
                    }
                    let end = if done {
                        "RELEASE write"
                    } else {
                        "ROLLBACK TO write; RELEASE write"
                    };
                    db.execute_batch(end).map_err(failed)
                });
            applied.push(job);
            if let Err(e) = step {
                let _ = db.execute_batch("ROLLBACK");
                fail_all(applied, e);
                return Err(());
            }
        }
        let committed = db
            .execute_batch("COMMIT")
            .map_err(failed)
            // A write that landed in a file removed meanwhile is lost: say so.
            .and_then(|()| self.check_identity());
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let broken = committed.is_err();
        if broken && !db.is_autocommit() {
            let _ = db.execute_batch("ROLLBACK");
        }
        for job in applied {
            job.finish(committed.clone());
        }
        if broken { Err(()) } else { Ok(()) }
    }
}

/// Writes `key` under `condition` inside the open transaction; a body in
/// a file goes in as an empty blob of its size, then is written into it a
/// piece at a time.
fn put_row(
    tx: &Connection,
    key: &str,
    body: &Payload,
    condition: &Condition,
) -> Result<Version, StoreError> {
    let err = db_err("writing");
    let current = current_version(tx, key).map_err(&err)?;
    condition.check(current.as_ref(), true)?;
    let generation = next_generation(tx).map_err(&err)?;
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    // A body in a file goes in as an empty blob of its size, then
    // is written into it a piece at a time.
    let size = body.len() as i64;
    let memory: &[u8] = body.as_memory().map_or(&[], |b| b);
    let (value, placeholder): (&dyn rusqlite::ToSql, _) = match body.as_memory() {
        Some(_) => (&memory, "?3"),
        None => (&size, "zeroblob(?3)"),
    };
    let sql = if current.is_some() {
        format!(
            "UPDATE objects SET generation = ?2, body = {placeholder}, modified_ns = ?4 WHERE key = ?1"
        )
    } else {
        format!(
            "INSERT INTO objects (key, generation, body, modified_ns) VALUES (?1, ?2, {placeholder}, ?4)"
        )
    };
    tx.execute(&sql, params![key, generation, value, now])
        .map_err(&err)?;
    if body.as_memory().is_none() {
        let rowid: i64 = tx
            .query_row("SELECT rowid FROM objects WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        file_to_blob(tx, rowid, body, &format!("writing {key}"))?;
    }
    Ok(Version(generation.to_string()))
}

/// Deletes `key` under `condition` inside the open transaction.
fn delete_row(tx: &Connection, key: &str, condition: &Condition) -> Result<(), StoreError> {
    let err = db_err("deleting");
    let current = current_version(tx, key).map_err(&err)?;
    condition.check(current.as_ref(), false)?;
    tx.execute("DELETE FROM objects WHERE key = ?1", [key])
        .map_err(&err)?;
    Ok(())
}

/// Copies `from`, if it still has version `expected`, to the new key `to`
/// inside the open transaction.
fn snapshot_row(
    tx: &Connection,
    from: &str,
    expected: Version,
    to: &str,
) -> Result<(), StoreError> {
    let err = db_err("copying");
    let source = current_version(tx, from).map_err(&err)?;
    Condition::IfMatch(expected).check(source.as_ref(), true)?;
    let target = current_version(tx, to).map_err(&err)?;
    Condition::IfAbsent.check(target.as_ref(), true)?;
    let generation = next_generation(tx).map_err(&err)?;
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let (source, size): (i64, i64) = tx
        .query_row(
            "SELECT rowid, length(body) FROM objects WHERE key = ?1",
            [from],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&err)?;
    if size <= SPOOL_THRESHOLD as i64 {
        tx.execute(
            "INSERT INTO objects (key, generation, modified_ns, body)
             SELECT ?1, ?2, ?3, body FROM objects WHERE key = ?4",
            params![to, generation, now, from],
        )
        .map_err(&err)?;
    } else {
        // A copy in SQL would hold the whole body in memory, twice.
        // Through a file: a write to one blob handle makes SQLite
        // forget where the other one's pages are, so reading and
        // writing in turn would walk the page chain from the start
        // every time.
        let what = format!("copying {from}");
        let staged = blob_to_file(tx, source, size as u64, &what)?;
        tx.execute(
            "INSERT INTO objects (key, generation, modified_ns, body)
             VALUES (?1, ?2, ?3, zeroblob(?4))",
            params![to, generation, now, size],
        )
        .map_err(&err)?;
        file_to_blob(tx, tx.last_insert_rowid(), &staged, &what)?;
    }
    Ok(())
}

/// Rebuilds a table made before `body` came last (see [`SCHEMA`]), once,
/// in one transaction; another process opening the file at the same time
/// waits and then finds it done.
fn move_body_last(conn: &Connection) -> Result<(), rusqlite::Error> {
    let last_column = |conn: &Connection| {
        conn.query_row(
            "SELECT name FROM pragma_table_info('objects') ORDER BY cid DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
    };
    if last_column(conn)? == "body" {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| {
        if last_column(conn)? == "body" {
            return Ok(());
        }
        conn.execute_batch(
            "CREATE TABLE objects_body_last (
                 key TEXT PRIMARY KEY NOT NULL,
                 generation INTEGER NOT NULL,
                 modified_ns INTEGER NOT NULL,
                 body BLOB NOT NULL
             );
             INSERT INTO objects_body_last (key, generation, modified_ns, body)
                 SELECT key, generation, modified_ns, body FROM objects;
             DROP TABLE objects;
             ALTER TABLE objects_body_last RENAME TO objects;",
        )
    })();
    match moved {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn db_err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::unavailable(format!("{context}: {e}"))
}

/// The version of `key` now, inside the transaction.
fn current_version(tx: &Connection, key: &str) -> Result<Option<Version>, rusqlite::Error> {
    tx.query_row(
        "SELECT generation FROM objects WHERE key = ?1",
        [key],
        |r| Ok(Version(r.get::<_, i64>(0)?.to_string())),
    )
    .optional()
}

/// The body of row `rowid`, copied a piece at a time into an unnamed
/// temporary file.
fn blob_to_file(
    conn: &Connection,
    rowid: i64,
    len: u64,
    what: &str,
) -> Result<Payload, StoreError> {
    let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
    let blob = conn
        .blob_open(MAIN_DB, c"objects", c"body", rowid, true)
        .map_err(db_err(what))?;
    let mut file = tempfile::tempfile_in(super::payload::spool_dir()).map_err(io_err)?;
    std::io::copy(
        &mut std::io::BufReader::with_capacity(super::payload::CHUNK_BYTES, blob),
        &mut file,
    )
    .map_err(io_err)?;
    Ok(Payload::File(Arc::new(FileBody::new(file, len))))
}

/// Writes `body` a piece at a time into row `rowid`, whose body is an
/// empty blob of its size.
fn file_to_blob(
    conn: &Connection,
    rowid: i64,
    body: &Payload,
    what: &str,
) -> Result<(), StoreError> {
    let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
    let mut blob = conn
        .blob_open(MAIN_DB, c"objects", c"body", rowid, false)
        .map_err(db_err(what))?;
    let mut reader = body.reader();
    while let Some(piece) = reader.next_chunk().map_err(io_err)? {
        std::io::Write::write_all(&mut blob, &piece).map_err(io_err)?;
    }
    blob.close().map_err(db_err(what))
}

/// A string above every string starting with `prefix` and below every
/// other string after it: its last character that can be raised, raised
/// (store keys are ASCII); where none can, the highest character, above
/// every key.
fn prefix_upper_bound(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).expect("ASCII raised within ASCII");
        }
    }
    char::MAX.to_string()
}

/// Draws a generation number no object has had, inside the transaction.
fn next_generation(tx: &Connection) -> Result<i64, rusqlite::Error> {
    tx.query_row(
        "UPDATE generation SET last = last + 1 WHERE id = 1 RETURNING last",
        [],
        |r| r.get(0),
    )
}

impl SqliteStore {
    /// An object's body whole, from its row.
    async fn read_whole(&self, key: &str) -> Result<Option<(Payload, Version)>, StoreError> {
        let key = key.to_string();
        self.run(format!("reading {key}"), move |conn| {
            conn.query_row(
                "SELECT body, generation FROM objects WHERE key = ?1",
                [&key],
                |r| {
                    Ok((
                        Payload::Memory(Bytes::from(r.get::<_, Vec<u8>>(0)?)),
                        Version(r.get::<_, i64>(1)?.to_string()),
                    ))
                },
            )
            .optional()
            .map_err(db_err("reading"))
        })
        .await
    }

    /// The objects whose keys start with `prefix` and lie in one of
    /// `ranges` (`(from, before)`, `before` `None` for no end), sorted: a
    /// range of the key index each (keys compare as bytes), so a listing
    /// reads only the rows it returns.
    async fn list_ranges(
        &self,
        ranges: Vec<(String, Option<String>)>,
        prefix: &str,
    ) -> Result<Vec<Entry>, StoreError> {
        let upper = prefix_upper_bound(prefix);
        let prefix = prefix.to_string();
        self.run("listing".to_string(), move |conn| {
            let err = db_err("listing");
            let mut stmt = conn
                .prepare(
                    "SELECT key, length(body), modified_ns FROM objects
                     WHERE key >= ?1 AND key < ?2 AND substr(key, 1, length(?3)) = ?3
                     ORDER BY key",
                )
                .map_err(&err)?;
            let mut out = Vec::new();
            for (from, before) in ranges {
                let before = match before {
                    Some(b) if b < upper => b,
                    _ => upper.clone(),
                };
                let rows = stmt
                    .query_map(params![from, before, prefix], |r| {
                        let ns: i64 = r.get(2)?;
                        Ok(Entry {
                            key: r.get(0)?,
                            size: r.get::<_, i64>(1)? as u64,
                            modified: OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok(),
                        })
                    })
                    .map_err(&err)?;
                for row in rows {
                    out.push(row.map_err(&err)?);
                }
            }
            Ok(out)
        })
        .await
    }
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
            native_lease: true,
        }
    }

    /// A body in a file goes into the row a piece at a time (an empty blob
    /// of the right size, then written through SQLite's blob handle), in
    /// the same transaction as the check. Every write is durable: the
    /// database commits with `synchronous=FULL` either way.
    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let key = key.to_string();
        let bytes = body.len();
        self.run_write(format!("writing {key}"), bytes, move |tx| {
            put_row(tx, &key, &body, &args.condition)
        })
        .await
    }

    /// A read that is not streamed takes the body whole from its row. A
    /// streamed body over [`SPOOL_THRESHOLD`] is copied a piece at a time
    /// into an unnamed temporary file inside one read transaction, so the
    /// connection is not held while a slow client reads it.
    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        if !args.streamed {
            return self.read_whole(key).await;
        }
        let key = key.to_string();
        let pool = Arc::clone(&self.0);
        self.run(format!("reading {key}"), move |conn| {
            let err = db_err("reading");
            let tx = conn.transaction().map_err(&err)?;
            let row = tx
                .query_row(
                    "SELECT rowid, length(body), generation FROM objects WHERE key = ?1",
                    [&key],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(&err)?;
            let Some((rowid, len, generation)) = row else {
                return Ok(None);
            };
            let version = Version(generation.to_string());
            let len = len.max(0) as u64;
            if len <= SPOOL_THRESHOLD as u64 {
                if let Some(body) = pool.bodies.get(&key, &version) {
                    return Ok(Some((Payload::Memory(body), version)));
                }
                let blob = tx
                    .blob_open(MAIN_DB, c"objects", c"body", rowid, true)
                    .map_err(&err)?;
                let mut body = Vec::with_capacity(len as usize);
                std::io::Read::read_to_end(&mut { blob }, &mut body)
                    .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))?;
                let body = Bytes::from(body);
                pool.bodies.put(&key, &version, &body);
                return Ok(Some((Payload::Memory(body), version)));
            }
            let body = blob_to_file(&tx, rowid, len, &format!("reading {key}"))?;
            Ok(Some((body, version)))
        })
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_write(format!("deleting {key}"), 0, move |tx| {
            delete_row(tx, &key, &args.condition)
        })
        .await
    }

    /// All in one write of the writer thread, so in one transaction and
    /// one commit: each change in a savepoint of its own, and the first
    /// that fails undone alone, ending the run.
    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let bytes = changes
            .iter()
            .map(|c| match c {
                Change::Write { body, .. } => body.len() as u64,
                _ => 0,
            })
            .sum();
        let made = self
            .run_write("changing history".into(), bytes, move |tx| {
                let err = db_err("changing history");
                for (at, change) in changes.into_iter().enumerate() {
                    tx.execute_batch("SAVEPOINT change").map_err(&err)?;
                    let made = match change {
                        Change::Write { key, body, args } => {
                            put_row(tx, &key, &Payload::Memory(body), &args.condition).map(|_| ())
                        }
                        Change::Delete { key, args } => delete_row(tx, &key, &args.condition),
                        Change::Snapshot {
                            from,
                            from_version,
                            to,
                            ..
                        } => snapshot_row(tx, &from, from_version, &to),
                    };
                    if let Err(error) = made {
                        tx.execute_batch("ROLLBACK TO change; RELEASE change")
                            .map_err(&err)?;
                        return Ok(Some(Stopped { at, error }));
                    }
                    tx.execute_batch("RELEASE change").map_err(&err)?;
                }
                Ok(None)
            })
            .await;
        match made {
            Ok(None) => Ok(()),
            Ok(Some(stopped)) => Err(stopped),
            // The transaction failed: none of them was made.
            Err(error) => Err(Stopped { at: 0, error }),
        }
    }

    /// A key lock on the file beside the database: no transaction, and it
    /// dies with this process.
    async fn native_lease(&self, key: &str, wait: Duration) -> Result<KeyLock, StoreError> {
        self.0.leases.lease(key, wait).await
    }

    /// Outside the internal area: two ranges of the key index, around it,
    /// so history rows are never read.
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let ranges = if args.outside_internal {
            crate::stores::ranges_outside_internal(prefix)
        } else {
            vec![(prefix.to_string(), None)]
        };
        self.list_ranges(ranges, prefix).await
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
        _body: &Payload,
    ) -> Result<(), StoreError> {
        let (from, expected, to) = (from.to_string(), from_version.clone(), to.to_string());
        self.run_write(format!("copying {from}"), 0, move |tx| {
            snapshot_row(tx, &from, expected, &to)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::StoreExt;

    #[test]
    fn prefix_bounds_cover_exactly_the_prefix() {
        assert_eq!(prefix_upper_bound(""), "\u{10ffff}");
        assert_eq!(prefix_upper_bound("a/b/"), "a/b0");
        assert_eq!(prefix_upper_bound("a\u{7f}"), "b");
        assert_eq!(prefix_upper_bound("\u{7f}"), "\u{10ffff}");
        // Non-ASCII bytes are never raised into invalid UTF-8.
        assert_eq!(prefix_upper_bound("aé"), "b");
    }

    /// A file made when `body` was the second column is rebuilt with it
    /// last, keeping every row, generation and the counter.
    #[tokio::test]
    async fn an_older_table_gets_body_last_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, body BLOB NOT NULL,
                     generation INTEGER NOT NULL, modified_ns INTEGER NOT NULL);
                 CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
                 INSERT INTO generation VALUES (1, 7);
                 INSERT INTO objects VALUES ('a/state', x'7b7d', 7, 1000);",
            )
            .unwrap();
        }
        let store = SqliteStore::open_file(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('objects') ORDER BY cid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(columns, ["key", "generation", "modified_ns", "body"]);
        let obj = store.get("a/state").await.unwrap().unwrap();
        assert_eq!((&obj.body[..], obj.version.0.as_str()), (&b"{}"[..], "7"));
        let next = store
            .put(
                "a/state",
                Bytes::from_static(b"[]"),
                Condition::IfMatch(obj.version),
            )
            .await
            .unwrap();
        assert_eq!(next.0, "8", "the generation counter is kept");
        // Opening it again finds nothing to do.
        drop(SqliteStore::open_file(&path).unwrap());
        assert_eq!(store.get("a/state").await.unwrap().unwrap().version, next);
    }
}

#[cfg(test)]
mod group_commit {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;
    use crate::stores::StoreExt;

    type Put = Pin<Box<dyn Future<Output = Result<Version, StoreError>> + Send>>;

    /// Holds the writer thread in a write of its own until the returned
    /// sender is used; returns once the writer is inside it.
    async fn hold_writer(
        store: &SqliteStore,
    ) -> (
        tokio::task::JoinHandle<Result<(), StoreError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
        let holder = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .run_write("holding".into(), 0, move |_| {
                        started_tx.send(()).unwrap();
                        gate.recv().unwrap();
                        Ok(())
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        (holder, gate_tx)
    }

    /// Queues a put behind the held writer (one poll sends it).
    async fn queue(store: &SqliteStore, key: String, body: Bytes) -> Put {
        let store = store.clone();
        let mut put: Put =
            Box::pin(async move { store.put(&key, body, Condition::IfAbsent).await });
        let first = std::future::poll_fn(|cx| Poll::Ready(put.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        put
    }

    /// Writes queued while the writer is busy go into one transaction
    /// together, and each still gets its own answer: of 64 creates of 16
    /// keys, exactly one per key wins and its bytes are stored.
    #[tokio::test]
    async fn writes_queued_together_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_file(&dir.path().join("g.db")).unwrap();
        let (holder, gate) = hold_writer(&store).await;
        let before = store.commits();
        let mut puts = Vec::new();
        for i in 0..64 {
            let body = Bytes::from(format!("writer {i}"));
            puts.push(queue(&store, format!("k{}", i % 16), body).await);
        }
        gate.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let mut winners = BTreeMap::new();
        for (i, put) in puts.into_iter().enumerate() {
            match put.await {
                Ok(_) => assert!(
                    winners.insert(i % 16, i).is_none(),
                    "two winners for k{}",
                    i % 16
                ),
                Err(StoreError::AlreadyExists) => {}
                Err(e) => panic!("writer {i}: {e}"),
            }
        }
        assert_eq!(winners.len(), 16);
        for (key, writer) in winners {
            let obj = store.get(&format!("k{key}")).await.unwrap().unwrap();
            assert_eq!(obj.body, format!("writer {writer}"));
        }
        assert_eq!(
            store.commits() - before,
            2,
            "the held write's commit, then one for all 64 queued behind it"
        );
    }

    /// The changes of one `change_all` (a history record, its pruning and
    /// pointer) commit together, once.
    #[tokio::test]
    async fn changes_made_together_commit_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_file(&dir.path().join("g.db")).unwrap();
        let v = store
            .put("s", Bytes::from_static(b"state"), Condition::Always)
            .await
            .unwrap();
        let before = store.commits();
        let put = |key: &str| Change::Write {
            key: key.into(),
            body: Bytes::from_static(b"{}"),
            args: OpWrite::new(Condition::Always),
        };
        let changes = vec![
            Change::Snapshot {
                from: "s".into(),
                from_version: v,
                to: "h/1".into(),
                body: Payload::Memory(Bytes::new()),
            },
            put("h/1.json"),
            put("h/newest.json"),
        ];
        store.change_all(changes).await.unwrap();
        assert_eq!(store.commits() - before, 1);
        assert_eq!(store.get("h/1").await.unwrap().unwrap().body, "state");
    }

    /// Large bodies do not share a transaction: three 5 MiB writes queued
    /// together commit one by one.
    #[tokio::test]
    async fn large_writes_commit_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_file(&dir.path().join("g.db")).unwrap();
        let (holder, gate) = hold_writer(&store).await;
        let before = store.commits();
        let mut puts = Vec::new();
        for i in 0..3 {
            let body = Bytes::from(vec![b'a' + i; 5 << 20]);
            puts.push(queue(&store, format!("big{i}"), body).await);
        }
        gate.send(()).unwrap();
        holder.await.unwrap().unwrap();
        for put in puts {
            put.await.unwrap();
        }
        assert_eq!(store.commits() - before, 4);
    }
}
