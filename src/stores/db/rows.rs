//! The objects' rows: a body as chunk rows, read in one snapshot, and the
//! conditional write, delete and copy, each one transaction, or a write
//! and the changes it carries (its history) in one.

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Row, Type};

use super::failure::{Failed, failed, generation_of, is_unique_violation, now_ns, unavailable};
use super::sql::Sql;
use super::store::DbStore;
use crate::stores::payload::{FileBody, spool_dir};
use crate::stores::{Change, Condition, Payload, Stopped, StoreError, ThenChange, Version};

/// In the transaction `$tx`, runs `$change`, a statement on the object
/// row that holds generation `$old` (its update or its delete), then drops
/// that generation's chunk rows. Refused when the row no longer holds
/// `$old`: another writer changed it first. A macro, as `on_pool!` is,
/// since each engine has its own result type.
macro_rules! retire {
    ($tx:ident, $sql:expr, $change:expr, $old:expr, $err:expr) => {
        async {
            let changed = $change.execute(&mut *$tx).await.map_err($err)?;
            if changed.rows_affected() == 0 {
                return Err(Failed::from(StoreError::PreconditionFailed));
            }
            sqlx::query(AssertSqlSafe($sql.delete_chunks.as_str()))
                .bind($old)
                .execute(&mut *$tx)
                .await
                .map_err($err)?;
            Ok::<(), Failed>(())
        }
        .await
    };
}

/// In the transaction `$tx`, makes `$key` the object of generation
/// `$generation` holding `$body`, as `$condition` allows: its row first,
/// so a losing writer fails before it sends the body, then the body's
/// chunk rows.
macro_rules! put_rows {
    ($tx:ident, $sql:expr, $key:expr, $body:expr, $condition:expr, $generation:expr, $now:expr, $what:expr, $most:expr) => {
        async {
            let (sql, key, generation, what) = ($sql, $key, $generation, $what);
            let condition: &Condition = $condition;
            let body: &Payload = $body;
            let err = failed(what);
            // The generation it has now (`None`: it must not exist), then
            // the row changed from that generation.
            let old = match condition {
                Condition::IfAbsent => None,
                Condition::IfMatch(version) => match generation_of(version) {
                    Some(old) => Some(old),
                    None => return Err(StoreError::PreconditionFailed.into()),
                },
                Condition::Always => locked_generation(sql, key)
                    .fetch_optional(&mut *$tx)
                    .await
                    .and_then(first_column)
                    .map_err(&err)?,
            };
            let size = body.len() as i64;
            match old {
                None => match insert_object(sql, key, generation, size, $now)
                    .execute(&mut *$tx)
                    .await
                {
                    Ok(_) => {}
                    // Under `Always`, another writer created it meanwhile.
                    Err(e) if is_unique_violation(&e) => {
                        return Err(match condition {
                            Condition::Always => {
                                Failed::Retry(format!("{what}: created concurrently"))
                            }
                            _ => StoreError::AlreadyExists.into(),
                        });
                    }
                    Err(e) => return Err(err(e)),
                },
                Some(old) => {
                    // Under `Always` the row is locked since it was read, so
                    // only a version that no longer matches misses it.
                    let update = sqlx::query(AssertSqlSafe(sql.update_object.as_str()))
                        .bind(generation)
                        .bind(size)
                        .bind($now)
                        .bind(key)
                        .bind(old);
                    retire!($tx, sql, update, old, &err)?;
                }
            }
            // An empty body still gets one chunk row, so the reader's join
            // finds the object. A body in a file is read one chunk at a time.
            let mut chunks = Chunks::new(body, $most);
            let mut seq = 0i32;
            while let Some(chunk) = chunks
                .next()
                .await
                .map_err(|e| Failed::from(e.context(what)))?
            {
                sqlx::query(AssertSqlSafe(sql.insert_chunk.as_str()))
                    .bind(generation)
                    .bind(seq)
                    .bind(&chunk[..])
                    .execute(&mut *$tx)
                    .await
                    .map_err(&err)?;
                seq += 1;
            }
            Ok::<(), Failed>(())
        }
        .await
    };
}

/// In the transaction `$tx`, removes `$key` as `$condition` allows (under
/// `Always` or `IfAbsent`, whatever generation it has; a missing object
/// is removed already).
macro_rules! delete_rows {
    ($tx:ident, $sql:expr, $key:expr, $condition:expr, $what:expr) => {
        async {
            let (sql, key) = ($sql, $key);
            let err = failed($what);
            let generation = match $condition {
                Condition::IfMatch(version) => {
                    let Some(old) = generation_of(version) else {
                        return Err(StoreError::PreconditionFailed.into());
                    };
                    old
                }
                Condition::Always | Condition::IfAbsent => {
                    let current = locked_generation(sql, key)
                        .fetch_optional(&mut *$tx)
                        .await
                        .and_then(first_column)
                        .map_err(&err)?;
                    match current {
                        Some(g) => g,
                        None => return Ok(()),
                    }
                }
            };
            let delete = sqlx::query(AssertSqlSafe(sql.delete_object.as_str()))
                .bind(key)
                .bind(generation);
            retire!($tx, sql, delete, generation, &err)
        }
        .await
    };
}

/// In the transaction `$tx`, creates `$to` (only if absent) as a copy of
/// `$from` at `$from_generation`, with generation `$generation`: the chunk
/// rows are copied inside the database.
macro_rules! snapshot_rows {
    ($tx:ident, $sql:expr, $from:expr, $from_generation:expr, $to:expr, $generation:expr, $now:expr, $what:expr) => {
        async {
            let (sql, generation, from_generation) = ($sql, $generation, $from_generation);
            let err = failed($what);
            // A shared lock on the source row keeps its chunks in place
            // until the copy commits.
            let size: Option<i64> = sqlx::query(AssertSqlSafe(sql.stat_for_share.as_str()))
                .bind($from)
                .bind(from_generation)
                .fetch_optional(&mut *$tx)
                .await
                .and_then(first_column)
                .map_err(&err)?;
            let Some(size) = size else {
                return Err(StoreError::PreconditionFailed.into());
            };
            match insert_object(sql, $to, generation, size, $now)
                .execute(&mut *$tx)
                .await
            {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(StoreError::AlreadyExists.into()),
                Err(e) => return Err(err(e)),
            }
            sqlx::query(AssertSqlSafe(sql.copy_chunks.as_str()))
                .bind(generation)
                .bind(from_generation)
                .execute(&mut *$tx)
                .await
                .map_err(&err)?;
            Ok::<(), Failed>(())
        }
        .await
    };
}

/// A body's chunk rows, in order: slices of a body in memory, or pieces of
/// a file read on a blocking thread. At least one, empty for an empty body.
pub(super) struct Chunks {
    pub(super) body: Payload,
    pub(super) at: u64,
    pub(super) started: bool,
    /// The largest chunk ([`super::connect::chunk_bytes`]).
    pub(super) most: usize,
}

impl Chunks {
    pub(super) fn new(body: &Payload, most: usize) -> Self {
        Chunks {
            body: body.clone(),
            at: 0,
            started: false,
            most,
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        let len = self.body.len();
        if self.started && self.at >= len {
            return Ok(None);
        }
        self.started = true;
        let size = (len - self.at).min(self.most as u64) as usize;
        let start = self.at;
        self.at += size as u64;
        match &self.body {
            Payload::Memory(bytes) => Ok(Some(bytes.slice(start as usize..start as usize + size))),
            Payload::File(_) => {
                let body = self.body.clone();
                crate::stores::blocking(move || {
                    let mut piece = vec![0; size];
                    let reader = body.reader();
                    std::io::Read::read_exact(&mut reader.skip_to(start), &mut piece).map_err(
                        |e| StoreError::unavailable(format!("reading a spooled body: {e}")),
                    )?;
                    Ok(Some(Bytes::from(piece)))
                })
                .await
            }
        }
    }
}

impl DbStore {
    /// Reads an object from the one statement that returns its chunk rows
    /// (one snapshot: a generation with all its chunks): in memory up to
    /// `in_memory` bytes, beyond that into an unnamed temporary file as the
    /// rows arrive. A body missing some of its bytes is refused.
    pub(super) async fn read_within(
        &self,
        key: &str,
        in_memory: u64,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let what = format!("reading {key}");
        self.bounded(&what, async {
            let sql = AssertSqlSafe(self.sql.get.as_str());
            let mut found: Option<(i64, u64)> = None;
            let mut memory = BytesMut::new();
            let mut file: Option<std::fs::File> = None;
            let mut received: u64 = 0;
            let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
            on_pool!(&self.pool, p => {
                let mut rows = sqlx::query(sql).bind(key).fetch(p);
                while let Some(row) = rows.try_next().await.map_err(|e| unavailable(&what, &e))? {
                    let (generation, size, chunk) = (|| {
                        Ok::<_, sqlx::Error>((
                            row.try_get::<i64, _>(0)?,
                            row.try_get::<i64, _>(1)?,
                            row.try_get::<Vec<u8>, _>(2)?,
                        ))
                    })()
                    .map_err(|e| unavailable(&what, &e))?;
                    let size = size.max(0) as u64;
                    found.get_or_insert((generation, size));
                    received += chunk.len() as u64;
                    if size <= in_memory {
                        memory.reserve((size as usize).saturating_sub(memory.len()));
                        memory.extend_from_slice(&chunk);
                        continue;
                    }
                    let mut out = match file.take() {
                        Some(f) => f,
                        None => tempfile::tempfile_in(spool_dir()).map_err(io_err)?,
                    };
                    out = crate::stores::blocking(move || {
                        std::io::Write::write_all(&mut out, &chunk)
                            .map(|()| out)
                            .map_err(|e| StoreError::unavailable(format!("spooling: {e}")))
                    })
                    .await
                    .map_err(|e| e.context(&what))?;
                    file = Some(out);
                }
            });
            let Some((generation, size)) = found else {
                return Ok(None);
            };
            if received != size {
                return Err(StoreError::unavailable(format!(
                    "{what}: the stored body has {received} of its {size} bytes; refusing to serve a truncated state"
                )));
            }
            let body = match file {
                Some(file) => Payload::File(std::sync::Arc::new(FileBody::new(file, size))),
                None => Payload::Memory(memory.freeze()),
            };
            Ok(Some((body, Version(generation.to_string()))))
        })
        .await
    }

    pub(super) async fn put_once(
        &self,
        key: &str,
        body: &Payload,
        condition: &Condition,
        what: &str,
    ) -> Result<Version, Failed> {
        let generation = self.next_generation(what).await?;
        let now = now_ns();
        let sql = &self.sql;
        let err = failed(what);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            put_rows!(tx, sql, key, body, condition, generation, now, what, self.chunk_bytes)?;
            tx.commit().await.map_err(&err)?;
        });
        Ok(Version(generation.to_string()))
    }

    pub(super) async fn delete_once(
        &self,
        key: &str,
        condition: &Condition,
        what: &str,
    ) -> Result<(), Failed> {
        let sql = &self.sql;
        let err = failed(what);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            delete_rows!(tx, sql, key, condition, what)?;
            tx.commit().await.map_err(&err)?;
        });
        Ok(())
    }

    pub(super) async fn snapshot_once(
        &self,
        from: &str,
        from_generation: i64,
        to: &str,
        what: &str,
    ) -> Result<(), Failed> {
        let generation = self.next_generation(what).await?;
        let now = now_ns();
        let sql = &self.sql;
        let err = failed(what);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            snapshot_rows!(tx, sql, from, from_generation, to, generation, now, what)?;
            tx.commit().await.map_err(&err)?;
        });
        Ok(())
    }

    /// Writes `key` and makes the changes `then` names for the version
    /// written, in one transaction: each change in a savepoint of its own,
    /// so a refused one is undone alone and stops the rest, the write and
    /// the changes before it standing. The generations are drawn first,
    /// outside the transaction, as a lone write's is.
    pub(super) async fn write_then_change_once(
        &self,
        key: &str,
        body: &Payload,
        condition: &Condition,
        then: &ThenChange,
        what: &str,
    ) -> Result<(Version, Result<(), Stopped>), Failed> {
        // The write's generation and those its changes are likely to take,
        // in one draw; more are drawn when they take more (unused ones are
        // never used: numbers need not follow one another).
        let mut drawn = self.next_generations(what, DRAWN_WITH_A_WRITE).await?;
        let generation = drawn.remove(0);
        let version = Version(generation.to_string());
        let changes = then(&version);
        // A generation for every change that makes a row (a delete makes
        // none).
        let makes = |c: &Change| !matches!(c, Change::Delete { .. });
        let wanted = changes.iter().filter(|c| makes(c)).count();
        if wanted > drawn.len() {
            let more = self.next_generations(what, wanted - drawn.len()).await?;
            drawn.extend(more);
        }
        let mut drawn = drawn.into_iter();
        let generations: Vec<Option<i64>> = changes
            .iter()
            .map(|c| if makes(c) { drawn.next() } else { None })
            .collect();
        let now = now_ns();
        let sql = &self.sql;
        let err = failed(what);
        let changed = on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            put_rows!(tx, sql, key, body, condition, generation, now, what, self.chunk_bytes)?;
            let mut changed = Ok(());
            for (at, (change, made_as)) in changes.into_iter().zip(generations).enumerate() {
                let what = format!("{}: {}", what, change.key());
                let mut one = sqlx::Acquire::begin(&mut tx).await.map_err(&err)?;
                let made = match (change, made_as) {
                    (Change::Write { key, body, args, .. }, Some(g)) => {
                        let body = Payload::from(body);
                        put_rows!(one, sql, &key, &body, &args.condition, g, now, &what, self.chunk_bytes)
                    }
                    (Change::Delete { key, args }, _) => {
                        delete_rows!(one, sql, &key, &args.condition, &what)
                    }
                    (Change::Snapshot { from, from_version, to, .. }, Some(g)) => {
                        match generation_of(&from_version) {
                            Some(from_generation) => {
                                snapshot_rows!(one, sql, &from, from_generation, &to, g, now, &what)
                            }
                            None => Err(StoreError::PreconditionFailed.into()),
                        }
                    }
                    (_, None) => unreachable!("a write or copy has its generation"),
                };
                match made {
                    Ok(()) => one.commit().await.map_err(&err)?,
                    Err(Failed::Store(error)) => {
                        one.rollback().await.map_err(&err)?;
                        changed = Err(Stopped { at, error });
                        break;
                    }
                    // A lost race (a deadlock, a row created meanwhile):
                    // the transaction, dropped, rolls back whole, and the
                    // write and its changes run again.
                    Err(retry) => return Err(retry),
                }
            }
            tx.commit().await.map_err(&err)?;
            changed
        });
        Ok((version, changed))
    }
}

/// Generations drawn at once for a write and its changes: a state's write
/// with its history record takes four (the state, the history copy, the
/// record and the pointer).
const DRAWN_WITH_A_WRITE: usize = 4;

/// The statement that claims a new object's row, bound in the order of its
/// placeholders; a key that has a row already is a unique violation.
fn insert_object<DB: Database>(
    sql: &Sql,
    key: &str,
    generation: i64,
    size: i64,
    now: i64,
) -> Query<'static, DB, DB::Arguments>
where
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(AssertSqlSafe(sql.insert_object.as_str()))
        .bind(key)
        .bind(generation)
        .bind(size)
        .bind(now)
}

/// The statement that reads the generation `key` has now and locks its
/// row until the transaction ends; [`first_column`] makes the answer.
fn locked_generation<DB: Database>(sql: &Sql, key: &str) -> Query<'static, DB, DB::Arguments>
where
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(AssertSqlSafe(sql.stat_for_update.as_str())).bind(key)
}

/// The first column of the row a statement found, if it found one.
fn first_column<R: Row>(row: Option<R>) -> Result<Option<i64>, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    row.map(|r| r.try_get(0)).transpose()
}
