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

impl Undo {
    /// How a write of `body` is undone: copying a body from its file (a
    /// large upload) may fail after its row is made.
    pub(super) fn of_body(body: &crate::stores::Payload) -> Undo {
        match body.as_memory() {
            Some(_) => Undo::Checked,
            None => Undo::Savepoint,
        }
    }
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
        let Job {
            what,
            apply,
            result,
            reply,
            ..
        } = *self;
        // What the write held goes before its caller hears back, so it
        // never outlives the caller here (the last reference to the store
        // dropped on this thread could not wait for it).
        drop(apply);
        let result = match (result, committed) {
            (Some(Err(refused)), _) => Err(refused),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(e.context(&what)),
            (None, Ok(())) => Err(StoreError::unavailable(format!("{what}: not run"))),
        };
        // The caller may have gone (its request was cut off): nothing to do.
        let _ = reply.send(result);
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
                    // The writes not yet run are answered too, with the
                    // failure rather than a writer gone.
                    applied.push(job);
                    applied.extend(jobs);
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
mod group_commit;
