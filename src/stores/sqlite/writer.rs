//! The writer thread: this process's writes, queued in arrival order, run
//! together in one transaction and one commit (group commit). A write
//! that may change rows before it fails runs in a savepoint of its own;
//! one that checks before it changes anything needs none (see [`Undo`]).

use rusqlite::Connection;

use super::Pool;
use crate::stores::StoreError;

/// The most writes one transaction takes.
pub(super) const MAX_BATCH: usize = 128;

/// The most body bytes one transaction takes beyond its first write: a
/// transaction's pages stay in the write-ahead log until it commits, and
/// looking pages up there slows down as it grows, so large bodies commit
/// on their own.
pub(super) const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// The writer's page cache, in KiB (SQLite takes a negative size as KiB):
/// room for the pages a few batches change, so a write finds the indexes
/// and table pages the writes before it touched in memory rather than in
/// the log. (It was sized when a history copy read its state's body back;
/// copies share the body now.)
const WRITER_CACHE_KIB: i64 = -16 * 1024;

/// How what a write changed is undone when it fails inside the shared
/// transaction.
///
/// A savepoint is not free: SQLite copies every page of the file a write
/// changes for the first time inside it (16 KiB each) to the savepoint's
/// journal, so that it can put them back: for a new state and its history,
/// a sixth of all the bytes the writer wrote. Most writes need none: a
/// write of one object (or of a few, one after another) reads its
/// conditions before it changes a row, so a refusal changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Undo {
    /// The write runs in a savepoint of its own, which a failure rolls
    /// back alone: for writes that may change rows before they fail (a
    /// body copied from a file, which may fail to read), and for every
    /// write of a batch run again after a failure.
    Savepoint,
    /// The write runs bare: it changes nothing before its conditions hold,
    /// and a refusal (`AlreadyExists`, `PreconditionFailed`) says so. Any
    /// other failure rolls the whole transaction back; that write fails,
    /// and the rest of the batch runs again, each in a savepoint.
    Checked,
}

/// What a write did inside the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// It made its change (or reported, inside its result, the part of it
    /// it made).
    Made,
    /// It changed nothing: refused, or failed and undone.
    Nothing,
    /// It failed after it may have changed rows, outside a savepoint: only
    /// rolling back the transaction undoes it.
    Tainted,
}

/// One write waiting for the writer thread.
pub(super) trait WriteJob: Send {
    /// The body bytes it writes.
    fn bytes(&self) -> u64;
    /// How it is undone when it fails, when the batch runs it first.
    fn undo(&self) -> Undo;
    /// Makes the change inside the open transaction, run as `undo` says
    /// (in the savepoint the caller opened, or bare); what it did. A write
    /// may run again, in a new transaction, after another failed.
    fn apply(&mut self, conn: &Connection, undo: Undo) -> Applied;
    /// Hands the result over once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

pub(super) struct Job<T, F> {
    pub(super) what: String,
    pub(super) bytes: u64,
    pub(super) undo: Undo,
    pub(super) apply: F,
    pub(super) result: Option<Result<T, StoreError>>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: Fn(&Connection, Undo) -> Result<T, StoreError> + Send,
{
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn undo(&self) -> Undo {
        self.undo
    }

    fn apply(&mut self, conn: &Connection, undo: Undo) -> Applied {
        let result = (self.apply)(conn, undo);
        let applied = match (&result, undo) {
            (Ok(_), _) => Applied::Made,
            (Err(_), Undo::Savepoint) => Applied::Nothing,
            (Err(e), Undo::Checked) if e.is_refusal() => Applied::Nothing,
            (Err(_), Undo::Checked) => Applied::Tainted,
        };
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
/// until the store is dropped (its queue closed).
pub(super) fn write_batches(pool: &Pool, jobs: &std::sync::mpsc::Receiver<Box<dyn WriteJob>>) {
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
        let mut conn = pool.writer.lock().expect("pool lock").take();
        // Back to the pool, which closes its connections when the store is
        // dropped (see `Handle`'s `Drop`). A connection that failed may be
        // in a bad state and is dropped: the next batch opens another.
        if pool.write_batch(&mut conn, batch).is_ok() {
            *pool.writer.lock().expect("pool lock") = conn;
        }
    }
}

impl Pool {
    /// Runs one batch of writes in one transaction and hands every result
    /// over; `Err` when the connection failed.
    pub(super) fn write_batch(
        &self,
        conn: &mut Option<Connection>,
        batch: Vec<Box<dyn WriteJob>>,
    ) -> Result<(), ()> {
        if let Err(e) = self.check_identity() {
            fail_all(batch, e);
            return Ok(());
        }
        if conn.is_none() {
            match self.connect().and_then(|c| {
                c.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
                Ok(c)
            }) {
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
        let mut batch = batch;
        let mut isolated = false;
        loop {
            match self.transaction(db, batch, isolated) {
                Ran::Committed => break,
                Ran::Again(rest) => (batch, isolated) = (rest, true),
                Ran::Broken => return Err(()),
            }
        }
        give_back(db);
        Ok(())
    }

    /// Runs `batch` in one transaction: each write as it asks, or every
    /// one in a savepoint when `isolated`.
    fn transaction(&self, db: &Connection, batch: Vec<Box<dyn WriteJob>>, isolated: bool) -> Ran {
        let failed = |e: rusqlite::Error| super::rows::failure("writing", e);
        if let Err(e) = db.execute_batch("BEGIN IMMEDIATE") {
            fail_all(batch, failed(e));
            return Ran::Broken;
        }
        let mut applied = Vec::with_capacity(batch.len());
        let mut jobs = batch.into_iter();
        while let Some(mut job) = jobs.next() {
            let undo = match isolated {
                true => Undo::Savepoint,
                false => job.undo(),
            };
            match run_one(db, &mut *job, undo) {
                Ok(Applied::Tainted) => {
                    let _ = db.execute_batch("ROLLBACK");
                    // It failed: it is answered with its own error. The
                    // others run again without it.
                    job.finish(Ok(()));
                    applied.extend(jobs);
                    return Ran::Again(applied);
                }
                Ok(Applied::Made | Applied::Nothing) => applied.push(job),
                Err(e) => {
                    applied.push(job);
                    let _ = db.execute_batch("ROLLBACK");
                    fail_all(applied, e);
                    return Ran::Broken;
                }
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
        match broken {
            true => Ran::Broken,
            false => Ran::Committed,
        }
    }
}

/// How one transaction of a batch ended.
enum Ran {
    /// Committed, and every write answered.
    Committed,
    /// Rolled back after a bare write failed (answered); these writes are
    /// still to run.
    Again(Vec<Box<dyn WriteJob>>),
    /// Every write answered with the failure; the connection is not to be
    /// used again.
    Broken,
}

/// Answers every write of `batch` with `e`.
fn fail_all(batch: Vec<Box<dyn WriteJob>>, e: StoreError) {
    for job in batch {
        job.finish(Err(e.clone()));
    }
}

/// Runs one write inside the open transaction, in a savepoint when `undo`
/// says so; `Err` when the transaction itself failed.
fn run_one(db: &Connection, job: &mut dyn WriteJob, undo: Undo) -> Result<Applied, StoreError> {
    let failed = |e: rusqlite::Error| super::rows::failure("writing", e);
    if undo == Undo::Savepoint {
        db.execute_batch("SAVEPOINT write").map_err(failed)?;
    }
    let applied = job.apply(db, undo);
    if db.is_autocommit() {
        // SQLite gave up the whole transaction (an I/O error).
        return Err(StoreError::unavailable(
            "writing: the transaction was rolled back",
        ));
    }
    if undo == Undo::Savepoint {
        let end = match applied {
            Applied::Made => "RELEASE write",
            Applied::Nothing | Applied::Tainted => "ROLLBACK TO write; RELEASE write",
        };
        db.execute_batch(end).map_err(failed)?;
    }
    Ok(applied)
}

/// Free space (of a file made with incremental vacuum) beyond which it
/// goes back to the device: an eighth of the file, and at least 1 MiB, so
/// pruning a version now and then moves nothing while deleting or purging
/// states frees the disk.
const FREE_BYTES_KEPT: i64 = 1024 * 1024;

/// Gives pages freed by deletes back to the device when many are free, and
/// shortens the log to match, so purging states frees disk space. Does
/// nothing on a file made without incremental vacuum; a failure (the
/// device is full) leaves the pages for later writes to reuse.
pub(super) fn give_back(db: &Connection) {
    let pages = |pragma: &str| db.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0));
    let (Ok(free), Ok(total), Ok(mode), Ok(page)) = (
        pages("freelist_count"),
        pages("page_count"),
        pages("auto_vacuum"),
        pages("page_size"),
    ) else {
        return;
    };
    // 2 is incremental.
    if mode != 2 || free <= (FREE_BYTES_KEPT / page.max(1)).max(total / 8) {
        return;
    }
    // The pragma frees one page a step, answering each with a row: it is
    // run to its end, not stepped once.
    let given = db
        .pragma_query(None, "incremental_vacuum", |_| Ok(()))
        .and_then(|()| db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"));
    if let Err(e) = given {
        tracing::debug!(error = %e, "giving free pages back to the device failed");
    }
}

#[cfg(test)]
mod group_commit {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::Poll;

    use super::*;
    use crate::stores::StoreExt;
    use bytes::Bytes;

    use crate::stores::sqlite::SqliteStore;
    use crate::stores::{Change, Condition, OpWrite, Payload, Store, Version};

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
                    .run_write("holding".into(), 0, Undo::Savepoint, move |_, _| {
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

    /// A store in a new file; the directory goes when it is dropped.
    fn new_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_file(&dir.path().join("g.db")).unwrap();
        (dir, store)
    }

    /// Queues creates of `(key, body)` while the writer is held in a write
    /// of its own, then lets it go. Gives the creates, still to be
    /// awaited, and the count of commits from before the held write's.
    async fn queued_behind_a_write(
        store: &SqliteStore,
        creates: impl IntoIterator<Item = (String, Bytes)>,
    ) -> (Vec<Put>, u64) {
        let (holder, gate) = hold_writer(store).await;
        let before = store.commits();
        let mut puts = Vec::new();
        for (key, body) in creates {
            puts.push(queue(store, key, body).await);
        }
        gate.send(()).unwrap();
        holder.await.unwrap().unwrap();
        (puts, before)
    }

    /// Writes queued while the writer is busy go into one transaction
    /// together, and each still gets its own answer: of 64 creates of 16
    /// keys, exactly one per key wins and its bytes are stored.
    #[tokio::test]
    async fn writes_queued_together_share_one_commit() {
        let (_dir, store) = new_store();
        let creates = (0..64).map(|i| (format!("k{}", i % 16), Bytes::from(format!("writer {i}"))));
        let (puts, before) = queued_behind_a_write(&store, creates).await;
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

    /// A write running bare (no savepoint) that fails after changing a
    /// row is undone with the whole transaction: it is answered with its
    /// own error, run once, and the writes queued beside it commit, run
    /// again each in a savepoint.
    #[tokio::test]
    async fn a_bare_write_that_fails_is_undone_and_the_others_commit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, store) = new_store();
        let (holder, gate) = hold_writer(&store).await;
        let before = store.commits();
        let first = queue(&store, "first".into(), Bytes::from_static(b"1")).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let mut failing = {
            let (store, runs) = (store.clone(), Arc::clone(&runs));
            Box::pin(async move {
                store
                    .run_write("failing".into(), 0, Undo::Checked, move |tx, undo| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(undo, Undo::Checked, "run again after failing");
                        let body = Payload::Memory(Bytes::from_static(b"half"));
                        super::super::rows::put_row(tx, "half-made", &body, &Condition::Always)?;
                        Err::<(), _>(StoreError::unavailable("failed after a change"))
                    })
                    .await
            })
        };
        let queued = std::future::poll_fn(|cx| Poll::Ready(failing.as_mut().poll(cx))).await;
        assert!(queued.is_pending());
        let last = queue(&store, "last".into(), Bytes::from_static(b"2")).await;
        gate.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let failed = failing.await.unwrap_err();
        assert!(
            failed.to_string().contains("failed after a change"),
            "{failed}"
        );
        first.await.unwrap();
        last.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(store.get("half-made").await.unwrap().is_none());
        assert_eq!(store.get("first").await.unwrap().unwrap().body, "1");
        assert_eq!(store.get("last").await.unwrap().unwrap().body, "2");
        assert_eq!(
            store.commits() - before,
            2,
            "the held write's commit, then the others' without the failed one"
        );
    }

    /// A refused bare write changes nothing and needs no undo: the writes
    /// beside it commit in the same transaction, run once.
    #[tokio::test]
    async fn a_refused_bare_write_leaves_the_transaction_to_the_others() {
        let (_dir, store) = new_store();
        store
            .put("taken", Bytes::from_static(b"old"), Condition::Always)
            .await
            .unwrap();
        let creates = [("taken", "new"), ("free", "mine")]
            .map(|(k, b)| (k.to_string(), Bytes::from_static(b.as_bytes())));
        let (puts, before) = queued_behind_a_write(&store, creates).await;
        let mut answers = Vec::new();
        for put in puts {
            answers.push(put.await.map(drop).map_err(|e| e.to_string()));
        }
        assert_eq!(answers[0], Err(StoreError::AlreadyExists.to_string()));
        assert!(answers[1].is_ok());
        assert_eq!(store.get("taken").await.unwrap().unwrap().body, "old");
        assert_eq!(store.commits() - before, 2);
    }

    /// The changes of one `change_all` (a history record, its pruning and
    /// pointer) commit together, once.
    #[tokio::test]
    async fn changes_made_together_commit_once() {
        let (_dir, store) = new_store();
        let v = store
            .put("s", Bytes::from_static(b"state"), Condition::Always)
            .await
            .unwrap();
        let before = store.commits();
        let put = |key: &str| Change::Write {
            key: key.into(),
            body: Bytes::from_static(b"{}"),
            args: OpWrite::new(Condition::Always),
            same_as: None,
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
        let (_dir, store) = new_store();
        let creates = (0..3).map(|i| (format!("big{i}"), Bytes::from(vec![b'a' + i; 5 << 20])));
        let (puts, before) = queued_behind_a_write(&store, creates).await;
        for put in puts {
            put.await.unwrap();
        }
        assert_eq!(store.commits() - before, 4);
    }

    /// The writer works on one connection of its own, batch after batch,
    /// with the larger page cache: a temporary table (which only the
    /// connection that made it sees) made in one batch is there in the
    /// next, after reads have used the pool's other connections.
    #[tokio::test]
    async fn the_writer_keeps_its_connection_and_cache_between_batches() {
        let (_dir, store) = new_store();
        let cache = store
            .run_write("marking".into(), 0, Undo::Savepoint, |conn, _| {
                conn.execute_batch("CREATE TEMP TABLE writer_mark (x)")
                    .map_err(|e| StoreError::unavailable(e.to_string()))?;
                conn.pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
                    .map_err(|e| StoreError::unavailable(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(cache, WRITER_CACHE_KIB);
        store
            .put("a", Bytes::from_static(b"{}"), Condition::Always)
            .await
            .unwrap();
        let reads = (0..4).map(|_| store.get("a"));
        for read in futures_util::future::join_all(reads).await {
            assert!(read.unwrap().is_some());
        }
        let marked = store
            .run_write("looking".into(), 0, Undo::Savepoint, |conn, _| {
                conn.query_row(
                    "SELECT count(*) FROM temp.sqlite_master WHERE name = 'writer_mark'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| StoreError::unavailable(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(
            marked, 1,
            "the writer's next batch ran on another connection"
        );
    }

    /// Dropping the store while the writer is inside a batch waits for
    /// the batch and closes every connection before the drop returns, so
    /// SQLite has removed its log: a process that ends right after leaves
    /// a whole file behind (`sqlite_closes_its_file_before_exiting`
    /// end to end). The last handle used to go with the writer thread,
    /// which closed the connections after the drop had returned.
    #[tokio::test]
    async fn dropping_the_store_waits_for_the_writer_and_closes_the_file() {
        let (dir, store) = new_store();
        store
            .put("a", Bytes::from_static(b"{}"), Condition::Always)
            .await
            .unwrap();
        let log = dir.path().join("g.db-wal");
        assert!(log.exists(), "an open store keeps its log");
        let (started_tx, started) = std::sync::mpsc::channel();
        let held = {
            let store = store.clone();
            async move {
                store
                    .run_write("holding".into(), 0, Undo::Savepoint, move |_, _| {
                        started_tx.send(()).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        Ok(())
                    })
                    .await
            }
        };
        // One poll queues the write; dropping the future then drops the
        // clone it held, while the writer runs the write.
        let mut held = Box::pin(held);
        let first = std::future::poll_fn(|cx| Poll::Ready(held.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        drop(held);
        started.recv().unwrap();
        drop(store);
        assert!(!log.exists(), "the log is left after the store was dropped");
        assert!(!dir.path().join("g.db-shm").exists());
    }

    /// A new file is made with [`PAGE_SIZE`] pages.
    #[tokio::test]
    async fn a_new_file_has_large_pages() {
        let (dir, store) = new_store();
        store
            .put("a", Bytes::from_static(b"{}"), Condition::Always)
            .await
            .unwrap();
        let conn = Connection::open(dir.path().join("g.db")).unwrap();
        let size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        assert_eq!(size, crate::stores::sqlite::PAGE_SIZE);
    }

    /// Deleting many states gives their pages back to the device at the
    /// next write, not only to later writes inside the file.
    #[tokio::test]
    async fn deleting_states_gives_their_pages_back() {
        let (dir, store) = new_store();
        for i in 0..200 {
            let body = Bytes::from(vec![b'x'; 16 * 1024]);
            store
                .put(&format!("s{i}"), body, Condition::Always)
                .await
                .unwrap();
        }
        for i in 0..200 {
            store
                .delete(&format!("s{i}"), Condition::Always.into())
                .await
                .unwrap();
        }
        store
            .put("after", Bytes::from_static(b"{}"), Condition::Always)
            .await
            .unwrap();
        let conn = Connection::open(dir.path().join("g.db")).unwrap();
        let pages = |pragma: &str| {
            conn.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let free = pages("freelist_count") * pages("page_size");
        assert!(free <= FREE_BYTES_KEPT, "{free} bytes left free");
    }
}
