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
//! blocking threads with a small pool of connections; a read of a few rows
//! that can be made at once is made where it is asked ([`quick`]).
//!
//! Writers of this process queue for the database in arrival order (a fair
//! async mutex) before they open a write transaction, so a long write (a
//! 256 MiB state) makes the others wait their turn rather than run out
//! SQLite's busy timeout; bodies have wholly arrived (in memory, or spooled
//! to a file) before they queue, so a slow upload never holds the queue.
//! The busy timeout is left for writers in other processes sharing the
//! file.
//!
//! Bodies are rows of a table of their own, which a history copy shares
//! with its state rather than copying ([`schema::SCHEMA`]). Large bodies
//! never sit whole in memory: they are written into their row and read out
//! of it a piece at a time through SQLite's blob handles.
//!
//! A file made by an older stategate is brought to the current shape when
//! a store opens it for writing ([`schema::upgrade_table`]); a store opened
//! for reading only reads it as it is. An older stategate can no longer
//! write to a file so upgraded: its objects have no `body` column.
//!
//! A state's write lease ([`Store::native_lease`]) is a key lock
//! ([`super::keylock`]) on a file beside the database, `<file>.leases`:
//! taking and releasing it costs no transaction, and it dies with the
//! process that held it.
//!
//! The database file is identified (device and inode) when it is opened and
//! checked before every operation, and after every one that may write: if
//! it is removed or replaced under the running server, connections already
//! open would go on writing to a file nobody will read again, and a new
//! process on the path would start a fresh database with no locks in it.
//! Every operation then fails with 503 instead of answering 200.

use crate::stores::OpSnapshot;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use time::OffsetDateTime;

use super::keylock::{KeyLock, KeyLocks};
use super::payload::{BodyCache, SPOOL_THRESHOLD};
use super::{
    Backend, Capabilities, Change, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Stopped,
    Store, StoreError, ThenChange, Version, open_with, path_setting, store_path,
};
use crate::settings::{ConfigError, StoreSettings};

/// Registration of the SQLite store.
pub static BACKEND: Backend = Backend {
    name: "sqlite",
    summary: "one SQLite database file on this machine",
    settings: &[
        path_setting(
            &["STATEGATE_SQLITE_PATH"],
            "./stategate.db",
            "the database file (created if missing)",
        ),
        super::guard::MIN_FREE_BYTES,
    ],
    open: |settings| {
        open_with(settings, SqliteConfig::from_settings, |config| async move {
            Ok(SqliteStore::open(&config)?)
        })
    },
};

/// The validated settings of the SQLite store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file (relative paths resolved).
    pub path: PathBuf,
}

impl SqliteConfig {
    /// Reads the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        Ok(SqliteConfig {
            path: store_path(settings)?,
        })
    }
}

/// One SQLite database file; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore(Arc<Handle>);

/// What the clones of one store share: the pool, and the sending side of
/// the writer thread's queue, which only the store holds.
struct Handle {
    pool: Arc<Pool>,
    /// Writes of this process, in arrival order, to the writer thread.
    writes: Option<std::sync::mpsc::Sender<Box<dyn WriteJob>>>,
    /// The writer thread (none for a read-only store).
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Handle {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

/// Dropping the last clone of the store closes the writer's queue and
/// waits for the thread to end: it finishes the writes queued, puts its
/// connection back and lets go of the pool. The pool's connections then
/// close on a thread the process waits for, never on the writer thread
/// while the process ends, which can cut a close short after SQLite
/// removed the log's index but not the log: a read-only file system could
/// then not open the file at all.
impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Connections to the database file: idle ones for reads, and the one the
/// writer thread uses.
struct Pool {
    path: PathBuf,
    /// Device and inode of the file when it was opened.
    identity: (u64, u64),
    idle: Mutex<Vec<Connection>>,
    /// The writer thread's connection between batches. SQLite keeps a
    /// connection's page cache while no other connection writes, so the
    /// writer finds the pages it wrote last (the indexes and table pages
    /// the next writes change) still in memory; held here, it is closed
    /// with the pool (see `Handle`'s `Drop`).
    writer: Mutex<Option<Connection>>,
    /// Transactions the writer thread has committed (one per batch).
    commits: std::sync::atomic::AtomicU64,
    /// The write leases of states, on the file beside the database.
    leases: KeyLocks,
    /// Opened for reading only ([`SqliteStore::open_read_only`]): its
    /// connections are read-only and it has no writer.
    read_only: bool,
    /// Bodies last read or being sent, by key and generation.
    bodies: BodyCache,
    /// Reads running at once, each on a connection and a blocking thread
    /// of its own: a burst of readers (hundreds of clients fetching one
    /// state) waits its turn here rather than opening a connection, with
    /// its page cache, for each; the pool keeps at most this many.
    readers: Arc<tokio::sync::Semaphore>,
}

/// The page size of a new file. States are bodies of tens of kilobytes to
/// hundreds of megabytes: SQLite writes a page per system call (twice, to
/// the log and then to the file), so 16 KiB pages write a body in a
/// quarter of the calls 4 KiB ones take (new states of 100 KiB up to 1.4x
/// faster, see bench/README), for a few more bytes per small change. A
/// file keeps the size it was made with.
pub(super) const PAGE_SIZE: i64 = 16 * 1024;

/// How long the log grows before SQLite copies it into the file: its
/// default of 1,000 pages, at 4 KiB pages.
const WAL_BYTES: i64 = 4000 * 1024;

/// Reads of one process on the database at once.
const READERS: usize = 16;

/// How long a writer waits for another process holding the database.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(300);

impl SqliteStore {
    /// Opens (creating if needed) the configured database file.
    pub fn open(config: &SqliteConfig) -> Result<Self, ConfigError> {
        Self::open_file(&config.path)
            .map_err(|e| ConfigError::invalid("path", format!("{}: {e}", config.path.display())))
    }

    /// Opens a database file directly.
    pub fn open_file(path: &Path) -> Result<Self, rusqlite::Error> {
        // A new file is the store's user's alone, whatever the umask:
        // SQLite would make it readable by all, and its log and index
        // take its mode. Any failure here, Connection::open meets too.
        let _ = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(path);
        if let Ok(meta) = std::fs::metadata(path) {
            crate::stores::check_owner(std::os::unix::fs::MetadataExt::uid(&meta), path)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        let conn = Connection::open(path)?;
        // Every statement from here waits for another process's lock (one
        // upgrading the file, or turning it to WAL) rather than failing.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before anything is changed in it, or made beside it (the leases).
        check_made_by_stategate(&conn)?;
        let meta = std::fs::metadata(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let (writes, jobs) = std::sync::mpsc::channel();
        let leases =
            lease_file(path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let pool = Arc::new(Pool::new(path, &meta, leases, false));
        // Only a new file takes this (before its first table, and before it
        // turns to WAL): pages freed by deletes can then go back to the
        // device (see the writer's `give_back`).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        Pool::configure(&conn)?;
        upgrade_table(&conn)?;
        conn.execute_batch(SCHEMA)?;
        // The pages an upgrade leaves free (the older table's) go back to
        // the device now rather than at the first write.
        give_back(&conn);
        pool.idle.lock().expect("pool lock").push(conn);
        // The thread ends when the store (the sending side of its queue)
        // is dropped.
        let writer = Arc::clone(&pool);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_batches(&writer, &jobs))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(SqliteStore(Arc::new(Handle {
            pool,
            writes: Some(writes),
            writer: Some(writer),
        })))
    }

    /// Opens an existing database file for reading only: nothing is
    /// created or changed, so a full or read-only file system will do.
    /// `Ok(None)` when there is no file (or an empty one). The store must
    /// only be read: it has no writer, and its changes fail.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, rusqlite::Error> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) if meta.len() > 0 => meta,
            _ => return Ok(None),
        };
        let dir = rustix::fs::open(
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::from(e))))?;
        let leases = KeyLocks::unopened(dir, "unused");
        let pool = Pool::new(path, &meta, leases, true);
        // Proves the file can be read, and is a store; kept by no one (see
        // `run_inner`).
        drop(pool.connect()?);
        // Writes are refused before they reach this store: it has no
        // writer.
        Ok(Some(SqliteStore(Arc::new(Handle {
            pool: Arc::new(pool),
            writes: None,
            writer: None,
        }))))
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
    /// and one sync of the log, for all of them. A write that fails
    /// changes nothing and the others still commit: `undo` says how (see
    /// [`Undo`]; `f` is told how it runs, and may run again). The result
    /// is given only once the commit is done.
    async fn run_write<T: Send + 'static>(
        &self,
        what: String,
        bytes: u64,
        undo: Undo,
        f: impl Fn(&Connection, Undo) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job = Box::new(Job {
            what: what.clone(),
            bytes,
            undo,
            apply: f,
            result: None,
            reply,
        });
        let stopped = || StoreError::unavailable(format!("{what}: the SQLite writer stopped"));
        self.0
            .writes
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Transactions committed by this store's writer so far.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.0.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run_inner<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // Held by the read itself, which goes on if its caller goes away.
        let turn = Arc::clone(&self.0.readers)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::unavailable(format!("{what}: the store is closed")))?;
        let pool = Arc::clone(&self.0.pool);
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
            // A connection that failed may be in a bad state; drop it. A
            // read-only store keeps none: SQLite shares one view of the
            // file's shared memory among a process's connections, and a
            // read-only one left open would make the store opened for
            // writing once the file system takes writes again read-only.
            if !pool.read_only && !matches!(&result, Err(e) if e.is_unavailable()) {
                pool.idle.lock().expect("pool lock").push(conn);
            }
            result
        })
        .await
    }
}

impl Pool {
    /// The pool of the file at `path` (whose metadata is `meta`).
    fn new(path: &Path, meta: &std::fs::Metadata, leases: KeyLocks, read_only: bool) -> Pool {
        Pool {
            leases,
            read_only,
            bodies: BodyCache::default(),
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            idle: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            commits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        if self.read_only {
            return read_only_connection(&self.path);
        }
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
        // Turning a file to WAL takes it whole for a moment, and SQLite
        // answers a second connection doing the same at that moment with
        // BUSY without waiting (two processes opening a new or older file at
        // once): it is tried again until the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                done => break done?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // SQLite counts the log's length in pages: whatever the file's page
        // size, the log is copied into the file once it holds 4 MiB, so a
        // full device keeps no more room in the log than with 4 KiB pages.
        let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BYTES / page.max(512))?;
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

impl SqliteStore {
    /// An object's body whole, from its row.
    async fn read_whole(&self, key: &str) -> Result<Option<(Payload, Version)>, StoreError> {
        if let Some(done) = self.read_quick(key) {
            return done;
        }
        let key = key.to_string();
        let read_only = self.0.read_only;
        self.run(format!("reading {key}"), move |conn| {
            with_shape(conn, read_only, "reading", |conn, shape| {
                let row = conn
                    .prepare_cached(shape.whole_query())
                    .and_then(|mut s| {
                        s.query_row([&key], |r| {
                            Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, i64>(1)?))
                        })
                    })
                    .optional()
                    .map_err(db_err("reading"))?;
                match row {
                    None => Ok(None),
                    Some((None, _)) => Err(body_missing(&key)),
                    Some((Some(body), generation)) => Ok(Some((
                        Payload::Memory(Bytes::from(body)),
                        Version(generation.to_string()),
                    ))),
                }
            })
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
        let read_only = self.0.read_only;
        self.run("listing".to_string(), move |conn| {
            with_shape(conn, read_only, "listing", |conn, shape| {
                list_in(conn, shape, &ranges, &prefix, &upper)
            })
        })
        .await
    }
}

/// Runs `f` with the shape of the file: [`Shape::Shared`] for a store
/// opened for writing, which rebuilt its file; for a read-only store, the
/// shape asked and `f` run in one read transaction, since another process
/// may rebuild the file in between.
fn with_shape<T>(
    conn: &mut Connection,
    read_only: bool,
    what: &str,
    f: impl FnOnce(&Connection, Shape) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if !read_only {
        return f(conn, Shape::Shared);
    }
    let tx = conn.transaction().map_err(db_err(what))?;
    let shape = Shape::of(&tx).map_err(db_err(what))?;
    f(&tx, shape)
}

/// The objects of `ranges` with `prefix` (see [`SqliteStore::list_ranges`]),
/// `upper` the end of the prefix.
fn list_in(
    conn: &Connection,
    shape: Shape,
    ranges: &[(String, Option<String>)],
    prefix: &str,
    upper: &str,
) -> Result<Vec<Entry>, StoreError> {
    let err = db_err("listing");
    let mut stmt = conn.prepare_cached(shape.listing_query()).map_err(&err)?;
    let mut out = Vec::new();
    for (from, before) in ranges {
        let before = match before {
            Some(b) if b.as_str() < upper => b.as_str(),
            _ => upper,
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
        let (bytes, undo) = (body.len(), Undo::of_body(&body));
        self.run_write(format!("writing {key}"), bytes, undo, move |tx, _| {
            put_row(tx, &key, &body, &args.condition)
        })
        .await
    }

    /// A read that is not streamed takes the body whole from its row. A
    /// streamed body over [`SPOOL_THRESHOLD`] is shared with the readers
    /// sending it now ([`BodyCache::shared`]: one copy in memory for them
    /// all) or, when too large to share, copied a piece at a time into an
    /// unnamed temporary file; either inside one read transaction, so the
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
        let pool = Arc::clone(&self.0.pool);
        self.run(format!("reading {key}"), move |conn| {
            let err = db_err("reading");
            let tx = conn.transaction().map_err(&err)?;
            let shape = Shape::read_by(&tx, pool.read_only).map_err(&err)?;
            let row = tx
                .prepare_cached(shape.locate_query())
                .and_then(|mut s| {
                    s.query_row([&key], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                })
                .optional()
                .map_err(&err)?;
            let Some((rowid, len, generation)) = row else {
                return Ok(None);
            };
            let len = len.ok_or_else(|| body_missing(&key))?;
            let version = Version(generation.to_string());
            let len = len.max(0) as u64;
            if len <= SPOOL_THRESHOLD as u64 {
                if let Some(body) = pool.bodies.get(&key, &version) {
                    return Ok(Some((Payload::Memory(body), version)));
                }
                let blob = tx
                    .blob_open(MAIN_DB, shape.body_table(), c"body", rowid, true)
                    .map_err(&err)?;
                let mut body = Vec::with_capacity(len as usize);
                std::io::Read::read_to_end(&mut { blob }, &mut body)
                    .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))?;
                let body = Bytes::from(body);
                pool.bodies.put(&key, &version, &body);
                return Ok(Some((Payload::Memory(body), version)));
            }
            // The row cannot change while this transaction reads it, so
            // the shared bytes are the version's.
            let shared = match args.shared {
                false => None,
                true => pool.bodies.shared(&key, &version, len, |buf| {
                    let blob = tx
                        .blob_open(MAIN_DB, shape.body_table(), c"body", rowid, true)
                        .map_err(&err)?;
                    std::io::Read::read_to_end(&mut { blob }, buf)
                        .map(drop)
                        .map_err(|e| StoreError::unavailable(format!("reading {key}: {e}")))
                })?,
            };
            if let Some(body) = shared {
                return Ok(Some((Payload::Memory(body), version)));
            }
            let body = blob_to_file(&tx, shape, rowid, len, &format!("reading {key}"))?;
            Ok(Some((body, version)))
        })
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_write(format!("deleting {key}"), 0, Undo::Checked, move |tx, _| {
            delete_row(tx, &key, &args.condition)
        })
        .await
    }

    /// All in one write of the writer thread, so in one transaction and
    /// one commit; the first change that fails is undone alone, ending the
    /// run (see [`change_rows`]).
    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let bytes = changes
            .iter()
            .map(|c| match c {
                Change::Write { body, .. } => body.len() as u64,
                _ => 0,
            })
            .sum();
        let made = self
            .run_write(
                "changing history".into(),
                bytes,
                Undo::Checked,
                move |tx, undo| change_rows(tx, &changes, undo == Undo::Savepoint),
            )
            .await;
        match made {
            Ok(None) => Ok(()),
            Ok(Some(stopped)) => Err(stopped),
            // The transaction failed: none of them was made.
            Err(error) => Err(Stopped { at: 0, error }),
        }
    }

    /// The write and its changes in one write of the writer thread: one
    /// transaction, so a crash keeps both or neither. A change that fails
    /// is undone alone (as [`Store::change_all`] here undoes it) and the
    /// write stands.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let key = key.to_string();
        let (bytes, undo) = (body.len(), Undo::of_body(&body));
        self.run_write(format!("writing {key}"), bytes, undo, move |tx, undo| {
            let version = put_row(tx, &key, &body, &args.condition)?;
            let changes = then(&version);
            let stopped = change_rows(tx, &changes, undo == Undo::Savepoint)?;
            Ok((version, stopped.map_or(Ok(()), Err)))
        })
        .await
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
        if let Some(done) = self.stat_quick(key) {
            return done;
        }
        let key = key.to_string();
        self.run(format!("reading {key}"), move |conn| {
            let tx = conn.transaction().map_err(db_err("reading"))?;
            current_version(&tx, &key).map_err(db_err("reading"))
        })
        .await
    }

    /// Copies the row inside the database, without the bytes leaving it.
    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        let (from, expected, to) = (
            copy.from.to_string(),
            copy.from_version.clone(),
            copy.to.to_string(),
        );
        self.run_write(format!("copying {from}"), 0, Undo::Checked, move |tx, _| {
            snapshot_row(tx, &from, expected.clone(), &to)
        })
        .await
    }
}

mod open;
mod quick;
mod rows;
mod schema;
mod writer;

use open::{lease_file, read_only_connection};
use rows::{
    blob_to_file, body_missing, change_rows, current_version, db_err, delete_row,
    prefix_upper_bound, put_row, snapshot_row,
};
use schema::{SCHEMA, Shape, check_made_by_stategate, upgrade_table};
use writer::{Job, Undo, WriteJob, give_back, write_batches};
