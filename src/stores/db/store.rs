//! The [`Store`] on a MySQL/MariaDB or PostgreSQL connection pool.
//!
//! Every conditional change is one transaction: the object row is claimed
//! first (an `INSERT` the primary key refuses to repeat for `IfAbsent`, an
//! `UPDATE ... WHERE generation = ?` for `IfMatch`), then the old chunk
//! rows go and the new ones are written, then it commits. A reader's single
//! `SELECT ... JOIN` sees one committed generation with all its chunks, so a
//! state is never seen half-written, and a crash before `COMMIT` leaves the
//! previous one. The generation (the [`Version`]) is drawn before the
//! transaction, from a counter that never goes back, so a deleted and
//! recreated object never matches an old version, and writers of different
//! keys do not queue on the counter.
//!
//! Queries are built at run time (no compile-time checked macros): the SQL
//! of both engines differs only in its DDL, placeholders and a few
//! clauses, all in [`Sql`]. Each sqlx error is translated into a
//! [`StoreError`] right where it happens; the messages name the operation
//! and the cause, never a password or a URL.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, Row};
use time::OffsetDateTime;

use super::config::{Connection, DbConfig, Engine, SslMode};
use crate::settings::ConfigError;
use crate::stores::payload::{FileBody, SPOOL_THRESHOLD, spool_dir};
use crate::stores::{
    Capabilities, Condition, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Store, StoreError,
    Version, network_cause,
};

/// The schema this binary creates and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// Largest chunk row: well under MariaDB's default 16 MiB packet.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A body's chunk rows, in order: slices of a body in memory, or pieces of
/// a file read on a blocking thread. At least one, empty for an empty body.
struct Chunks {
    body: Payload,
    at: u64,
    started: bool,
}

impl Chunks {
    fn new(body: &Payload) -> Self {
        Chunks {
            body: body.clone(),
            at: 0,
            started: false,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        let len = self.body.len();
        if self.started && self.at >= len {
            return Ok(None);
        }
        self.started = true;
        let size = (len - self.at).min(CHUNK_BYTES as u64) as usize;
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

/// How often a write that lost a race it could not foresee (a deadlock, a
/// concurrent first create under `Condition::Always`) is tried again.
const ATTEMPTS: usize = 5;

/// A store in a database; cheap to share.
pub struct DbStore {
    config: DbConfig,
    pool: Pool,
    sql: Sql,
}

enum Pool {
    Mysql(MySqlPool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool the store has; the two arms differ
/// only in the types sqlx infers.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Mysql($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Listing rows (`object_key, size, modified_ns`) as entries, for either
/// engine's row type.
macro_rules! entries {
    ($rows:expr) => {
        $rows
            .into_iter()
            .map(|r| {
                let ns: i64 = r.try_get(2)?;
                Ok(Entry {
                    key: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    modified: OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    };
}

/// The statements of one engine, with the table prefix filled in.
struct Sql {
    get: String,
    stat: String,
    stat_for_update: String,
    stat_for_share: String,
    list: String,
    /// `list` within `[from, before)`.
    list_range: String,
    insert_object: String,
    update_object: String,
    delete_object: String,
    insert_chunk: String,
    delete_chunks: String,
    copy_chunks: String,
    next_generation: String,
}

impl Sql {
    fn new(engine: Engine, p: &str) -> Sql {
        let share = match engine {
            Engine::Mysql => "LOCK IN SHARE MODE",
            Engine::Postgres => "FOR SHARE",
        };
        let next_generation = match engine {
            Engine::Mysql => {
                format!("UPDATE {p}generation SET last = LAST_INSERT_ID(last + 1) WHERE id = 1")
            }
            Engine::Postgres => format!("SELECT nextval('{p}generation')"),
        };
        let sql = Sql {
            get: format!(
                "SELECT o.generation, o.size, c.data FROM {p}objects o \
                 JOIN {p}chunks c ON c.generation = o.generation \
                 WHERE o.object_key = ? ORDER BY c.seq"
            ),
            stat: format!("SELECT generation FROM {p}objects WHERE object_key = ?"),
            stat_for_update: format!(
                "SELECT generation FROM {p}objects WHERE object_key = ? FOR UPDATE"
            ),
            stat_for_share: format!(
                "SELECT size FROM {p}objects WHERE object_key = ? AND generation = ? {share}"
            ),
            list: format!(
                "SELECT object_key, size, modified_ns FROM {p}objects \
                 WHERE object_key LIKE ? ESCAPE '!' ORDER BY object_key"
            ),
            list_range: format!(
                "SELECT object_key, size, modified_ns FROM {p}objects \
                 WHERE object_key LIKE ? ESCAPE '!' AND object_key >= ? AND object_key < ? \
                 ORDER BY object_key"
            ),
            insert_object: format!(
                "INSERT INTO {p}objects (object_key, generation, size, modified_ns) VALUES (?, ?, ?, ?)"
            ),
            update_object: format!(
                "UPDATE {p}objects SET generation = ?, size = ?, modified_ns = ? \
                 WHERE object_key = ? AND generation = ?"
            ),
            delete_object: format!(
                "DELETE FROM {p}objects WHERE object_key = ? AND generation = ?"
            ),
            insert_chunk: format!("INSERT INTO {p}chunks (generation, seq, data) VALUES (?, ?, ?)"),
            delete_chunks: format!("DELETE FROM {p}chunks WHERE generation = ?"),
            copy_chunks: format!(
                "INSERT INTO {p}chunks (generation, seq, data) \
                 SELECT ?, seq, data FROM {p}chunks WHERE generation = ?"
            ),
            next_generation,
        };
        match engine {
            Engine::Mysql => sql,
            Engine::Postgres => sql.numbered(),
        }
    }

    /// PostgreSQL numbers its placeholders: `?` becomes `$1`, `$2`, ...
    fn numbered(self) -> Sql {
        fn number(sql: String) -> String {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push(c);
                }
            }
            out
        }
        Sql {
            get: number(self.get),
            stat: number(self.stat),
            stat_for_update: number(self.stat_for_update),
            stat_for_share: number(self.stat_for_share),
            list: number(self.list),
            list_range: number(self.list_range),
            insert_object: number(self.insert_object),
            update_object: number(self.update_object),
            delete_object: number(self.delete_object),
            insert_chunk: number(self.insert_chunk),
            delete_chunks: number(self.delete_chunks),
            copy_chunks: number(self.copy_chunks),
            next_generation: number(self.next_generation),
        }
    }
}

/// The longest key a row holds, in bytes: MySQL's `VARCHAR(2048)` column,
/// and on PostgreSQL well within the roughly 2,700 bytes a B-tree index
/// entry may take.
const MAX_KEY_BYTES: usize = 2048;

/// The DDL of each schema version, per engine. Every statement is
/// idempotent, so a migration cut short by a crash can simply run again.
fn migrations(engine: Engine, p: &str) -> Vec<Vec<String>> {
    match engine {
        Engine::Mysql => vec![vec![
            // ascii_bin: keys are ASCII (validated upstream), compared and
            // sorted bytewise; 2048 bytes fit InnoDB's 3072-byte key limit.
            format!(
                "CREATE TABLE IF NOT EXISTS {p}objects (\
                 object_key VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY, \
                 generation BIGINT NOT NULL, size BIGINT NOT NULL, modified_ns BIGINT NOT NULL\
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}chunks (\
                 generation BIGINT NOT NULL, seq INT NOT NULL, data LONGBLOB NOT NULL, \
                 PRIMARY KEY (generation, seq)) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}generation (\
                 id INT NOT NULL PRIMARY KEY, last BIGINT NOT NULL) ENGINE=InnoDB"
            ),
            format!("INSERT IGNORE INTO {p}generation (id, last) VALUES (1, 0)"),
        ]],
        Engine::Postgres => vec![vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {p}objects (\
                 object_key TEXT COLLATE \"C\" NOT NULL PRIMARY KEY, \
                 generation BIGINT NOT NULL, size BIGINT NOT NULL, modified_ns BIGINT NOT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p}chunks (\
                 generation BIGINT NOT NULL, seq INT NOT NULL, data BYTEA NOT NULL, \
                 PRIMARY KEY (generation, seq))"
            ),
            format!("CREATE SEQUENCE IF NOT EXISTS {p}generation"),
        ]],
    }
}

/// How one attempt at a write ended, when not with success.
enum Failed {
    /// For good: this is the answer.
    Store(StoreError),
    /// Lost a race the database resolved by rolling back (deadlock,
    /// serialization failure, a concurrent first create): try again.
    Retry(String),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

/// Translates a database error: `what` names the operation ("writing
/// x.tfstate"). The text comes from the driver and the server, which
/// never repeat a password.
fn unavailable(what: &str, e: &sqlx::Error) -> StoreError {
    StoreError::unavailable(format!("{what}: {}", cause(e)))
}

/// What [`cause`] says of a pool that handed out no connection in time.
/// [`DbStore::bounded`] recognises it and finds out why.
const POOL_TIMED_OUT: &str = "no database connection could be made in time";

/// Why a database call failed, in words for the 503.
fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("the database cannot be reached: {}", network_cause(io)),
        sqlx::Error::PoolTimedOut => POOL_TIMED_OUT.into(),
        sqlx::Error::PoolClosed => "the connection pool is closed (shutting down)".into(),
        sqlx::Error::Tls(t) => format!("TLS to the database failed: {t}"),
        sqlx::Error::Database(d) => {
            let number = d
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|m| m.number());
            refusal(d.code().as_deref(), number, d.message())
        }
        other => other.to_string(),
    }
}

/// The words for a refusal by the database server, from its SQLSTATE
/// `code`, MySQL's error `number` and its message.
fn refusal(code: Option<&str>, number: Option<u16>, message: &str) -> String {
    // PostgreSQL's too_many_connections also covers the last slots kept
    // for superusers; MySQL and MariaDB send error 1040 (SQLSTATE 08004,
    // which other rejections share).
    if code == Some("53300") || number == Some(1040) {
        return format!(
            "too many connections: the database server is full and refuses new ones ({message}); \
             raise its connection limit or lower dbMaxConnections on the servers sharing it"
        );
    }
    match code {
        Some(code) => format!("the database refused it: {message} ({code})"),
        None => format!("the database refused it: {message}"),
    }
}

/// A deadlock or serialization failure: the transaction was rolled back
/// whole and may be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| matches!(c.as_ref(), "40001" | "40P01"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Maps an error inside a write attempt.
fn failed(what: &str) -> impl Fn(sqlx::Error) -> Failed + '_ {
    move |e| {
        if is_retryable(&e) {
            Failed::Retry(unavailable(what, &e).to_string())
        } else {
            Failed::Store(unavailable(what, &e))
        }
    }
}

fn generation_of(version: &Version) -> Option<i64> {
    version.0.parse().ok()
}

fn now_ns() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// A `LIKE` pattern matching exactly the keys that start with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl DbStore {
    /// Connects, then brings the schema up to [`SCHEMA_VERSION`]. Fails
    /// naming the setting to look at when the server cannot be reached, the
    /// login is refused or the schema is newer than this binary.
    pub async fn open(config: DbConfig) -> Result<DbStore, ConfigError> {
        let pool = connect(&config).await?;
        let sql = Sql::new(config.engine, &config.table_prefix);
        let store = DbStore { config, pool, sql };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects for reading only, as a dry run does: no table is created
    /// or changed. `None` when the tables do not exist yet (a database
    /// stategate never used holds no states); an error naming the setting
    /// when their schema is not the one this binary reads, since bringing
    /// it up to date would be a change.
    pub async fn open_read_only(config: DbConfig) -> Result<Option<DbStore>, ConfigError> {
        let pool = connect(&config).await?;
        let sql = Sql::new(config.engine, &config.table_prefix);
        let store = DbStore { config, pool, sql };
        let p = &store.config.table_prefix;
        let read_version = AssertSqlSafe(format!(
            "SELECT version FROM {p}schema_version WHERE id = 1"
        ));
        let found: Result<Option<i64>, sqlx::Error> = on_pool!(&store.pool, pool => {
            sqlx::query_scalar(read_version).fetch_optional(pool).await
        });
        match found {
            Ok(Some(SCHEMA_VERSION)) => Ok(Some(store)),
            Ok(Some(other)) => Err(ConfigError::invalid(
                "dbTablePrefix",
                format!(
                    "the database schema of tables {p}* is version {other}, not version {SCHEMA_VERSION} \
                     that this stategate reads; a dry run changes nothing, so run once without --dry-run \
                     (or start the server) to bring it up to date"
                ),
            )),
            Ok(None) => Ok(None),
            // No such table: a database stategate has not used.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01" | "42S02")) =>
            {
                Ok(None)
            }
            Err(e) => Err(ConfigError::invalid(
                store.connection_setting(&e),
                unavailable("reading the schema version", &e).to_string(),
            )),
        }
    }

    /// The setting a connection failure points at.
    fn connection_setting(&self, e: &sqlx::Error) -> &'static str {
        connection_setting(&self.config, e)
    }

    async fn migrate(&self) -> Result<(), ConfigError> {
        let p = &self.config.table_prefix;
        let steps = migrations(self.config.engine, p);
        let lock_name = format!("stategate-schema-{p}");
        let fail = |what: &str, e: sqlx::Error| {
            ConfigError::invalid(
                self.connection_setting(&e),
                unavailable(what, &e).to_string(),
            )
        };
        let create_version = match self.config.engine {
            Engine::Mysql => format!(
                "CREATE TABLE IF NOT EXISTS {p}schema_version (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL) ENGINE=InnoDB"
            ),
            Engine::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {p}schema_version (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL)"
            ),
        };
        let seed_version = match self.config.engine {
            Engine::Mysql => {
                format!("INSERT IGNORE INTO {p}schema_version (id, version) VALUES (1, 0)")
            }
            Engine::Postgres => format!(
                "INSERT INTO {p}schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
            ),
        };
        let read_version = format!("SELECT version FROM {p}schema_version WHERE id = 1");
        let set_version = match self.config.engine {
            Engine::Mysql => format!("UPDATE {p}schema_version SET version = ? WHERE id = 1"),
            Engine::Postgres => format!("UPDATE {p}schema_version SET version = $1 WHERE id = 1"),
        };
        // Replicas starting together take turns. PostgreSQL runs DDL in a
        // transaction, under a transaction-scoped advisory lock; MySQL
        // commits each DDL statement, so a named lock is held on one
        // connection for the migration only, and that connection is closed
        // afterwards (which releases it even if the migration failed).
        let check = |found: i64| -> Result<(), ConfigError> {
            if found > SCHEMA_VERSION {
                return Err(ConfigError::invalid(
                    "dbTablePrefix",
                    format!(
                        "the database schema of tables {p}* is version {found}, newer than version {SCHEMA_VERSION} \
                         that this stategate knows; upgrade stategate (or use another dbTablePrefix)"
                    ),
                ));
            }
            Ok(())
        };
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(|e| fail("starting the schema migration", e))?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(&lock_name)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| fail("waiting for the schema lock", e))?;
                for statement in [&create_version, &seed_version] {
                    sqlx::query(AssertSqlSafe(statement.as_str()))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| fail("creating the schema_version table", e))?;
                }
                let found: i64 = sqlx::query(AssertSqlSafe(read_version.as_str()))
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| fail("reading the schema version", e))?;
                check(found)?;
                for (done, step) in steps.iter().enumerate().skip(found as usize) {
                    for statement in step {
                        sqlx::query(AssertSqlSafe(statement.as_str()))
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| fail("creating the tables", e))?;
                    }
                    sqlx::query(AssertSqlSafe(set_version.as_str()))
                        .bind(done as i64 + 1)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| fail("recording the schema version", e))?;
                }
                tx.commit()
                    .await
                    .map_err(|e| fail("committing the schema migration", e))?;
            }
            Pool::Mysql(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| fail("connecting", e))?
                    .detach();
                let result = async {
                    let got: Option<i64> = sqlx::query("SELECT GET_LOCK(?, 60)")
                        .bind(&lock_name)
                        .fetch_one(&mut conn)
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(|e| fail("waiting for the schema lock", e))?;
                    if got != Some(1) {
                        return Err(ConfigError::invalid(
                            "dbTablePrefix",
                            "another stategate held the schema lock for over 60 s",
                        ));
                    }
                    for statement in [&create_version, &seed_version] {
                        sqlx::query(AssertSqlSafe(statement.as_str()))
                            .execute(&mut conn)
                            .await
                            .map_err(|e| fail("creating the schema_version table", e))?;
                    }
                    let found: i64 = sqlx::query(AssertSqlSafe(read_version.as_str()))
                        .fetch_one(&mut conn)
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(|e| fail("reading the schema version", e))?;
                    check(found)?;
                    for (done, step) in steps.iter().enumerate().skip(found as usize) {
                        for statement in step {
                            sqlx::query(AssertSqlSafe(statement.as_str()))
                                .execute(&mut conn)
                                .await
                                .map_err(|e| fail("creating the tables", e))?;
                        }
                        sqlx::query(AssertSqlSafe(set_version.as_str()))
                            .bind(done as i64 + 1)
                            .execute(&mut conn)
                            .await
                            .map_err(|e| fail("recording the schema version", e))?;
                    }
                    Ok(())
                }
                .await;
                let _ = conn.close().await;
                result?;
            }
        }
        Ok(())
    }

    /// Bounds one operation by the `timeout` setting.
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.timeout, op).await {
            Ok(Err(StoreError::Unavailable(reason))) if reason.ends_with(POOL_TIMED_OUT) => {
                Err(StoreError::unavailable(format!(
                    "{what}: {}",
                    why_no_connection(&self.pool, &self.config).await
                )))
            }
            Ok(result) => result,
            Err(_) => Err(StoreError::unavailable(format!(
                "{what}: the database did not answer within {} s (setting `timeout`)",
                self.config.timeout.as_secs()
            ))),
        }
    }

    /// Runs a write attempt again while it loses races the database
    /// resolved by rolling it back.
    async fn with_retries<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failed>>,
    {
        let mut last = String::new();
        for n in 0..ATTEMPTS {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failed::Store(e)) => return Err(e),
                Err(Failed::Retry(why)) => {
                    last = why;
                    tokio::time::sleep(Duration::from_millis(5 << n)).await;
                }
            }
        }
        Err(StoreError::unavailable(format!(
            "{what}: gave up after {ATTEMPTS} attempts ({last})"
        )))
    }

    /// A generation no object has had, drawn outside any transaction so
    /// that writers of other keys never wait on the counter.
    async fn next_generation(&self, what: &str) -> Result<i64, Failed> {
        let sql = AssertSqlSafe(self.sql.next_generation.as_str());
        let drawn = match &self.pool {
            Pool::Mysql(p) => sqlx::query(sql)
                .execute(p)
                .await
                .map(|r| r.last_insert_id() as i64),
            Pool::Postgres(p) => sqlx::query(sql)
                .fetch_one(p)
                .await
                .and_then(|r| r.try_get::<i64, _>(0)),
        };
        drawn.map_err(failed(what))
    }

    /// Reads an object from the one statement that returns its chunk rows
    /// (one snapshot: a generation with all its chunks): in memory up to
    /// `in_memory` bytes, beyond that into an unnamed temporary file as the
    /// rows arrive. A body missing some of its bytes is refused.
    async fn read_within(
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

    async fn put_once(
        &self,
        key: &str,
        body: &Payload,
        condition: &Condition,
        what: &str,
    ) -> Result<Version, Failed> {
        let generation = self.next_generation(what).await?;
        let size = body.len() as i64;
        let now = now_ns();
        let sql = &self.sql;
        let err = failed(what);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            // Claim the row first, so a losing writer fails before it sends
            // the body.
            let old = match condition {
                Condition::IfAbsent => {
                    let inserted = sqlx::query(AssertSqlSafe(sql.insert_object.as_str()))
                        .bind(key)
                        .bind(generation)
                        .bind(size)
                        .bind(now)
                        .execute(&mut *tx)
                        .await;
                    match inserted {
                        Ok(_) => None,
                        Err(e) if is_unique_violation(&e) => {
                            return Err(StoreError::AlreadyExists.into())
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
                Condition::IfMatch(version) => {
                    let Some(old) = generation_of(version) else {
                        return Err(StoreError::PreconditionFailed.into());
                    };
                    let updated = sqlx::query(AssertSqlSafe(sql.update_object.as_str()))
                        .bind(generation)
                        .bind(size)
                        .bind(now)
                        .bind(key)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err(&err)?;
                    if updated.rows_affected() == 0 {
                        return Err(StoreError::PreconditionFailed.into());
                    }
                    Some(old)
                }
                Condition::Always => {
                    let current: Option<i64> = sqlx::query(AssertSqlSafe(sql.stat_for_update.as_str()))
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await
                        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                        .map_err(&err)?;
                    match current {
                        Some(old) => {
                            sqlx::query(AssertSqlSafe(sql.update_object.as_str()))
                                .bind(generation)
                                .bind(size)
                                .bind(now)
                                .bind(key)
                                .bind(old)
                                .execute(&mut *tx)
                                .await
                                .map_err(&err)?;
                            Some(old)
                        }
                        None => {
                            let inserted = sqlx::query(AssertSqlSafe(sql.insert_object.as_str()))
                                .bind(key)
                                .bind(generation)
                                .bind(size)
                                .bind(now)
                                .execute(&mut *tx)
                                .await;
                            match inserted {
                                Ok(_) => None,
                                // Another writer created it meanwhile.
                                Err(e) if is_unique_violation(&e) => {
                                    return Err(Failed::Retry(format!("{what}: created concurrently")))
                                }
                                Err(e) => return Err(err(e)),
                            }
                        }
                    }
                }
            };
            if let Some(old) = old {
                sqlx::query(AssertSqlSafe(sql.delete_chunks.as_str()))
                    .bind(old)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
            // An empty body still gets one chunk row, so the reader's join
            // finds the object. A body in a file is read one chunk at a time.
            let mut chunks = Chunks::new(body);
            let mut seq = 0i32;
            while let Some(chunk) = chunks.next().await.map_err(|e| Failed::from(e.context(what)))? {
                sqlx::query(AssertSqlSafe(sql.insert_chunk.as_str()))
                    .bind(generation)
                    .bind(seq)
                    .bind(&chunk[..])
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                seq += 1;
            }
            tx.commit().await.map_err(&err)?;
        });
        Ok(Version(generation.to_string()))
    }

    async fn delete_once(
        &self,
        key: &str,
        condition: &Condition,
        what: &str,
    ) -> Result<(), Failed> {
        let sql = &self.sql;
        let err = failed(what);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await.map_err(&err)?;
            let generation = match condition {
                Condition::IfMatch(version) => {
                    let Some(old) = generation_of(version) else {
                        return Err(StoreError::PreconditionFailed.into());
                    };
                    old
                }
                Condition::Always | Condition::IfAbsent => {
                    let current: Option<i64> = sqlx::query(AssertSqlSafe(sql.stat_for_update.as_str()))
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await
                        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                        .map_err(&err)?;
                    match current {
                        Some(g) => g,
                        None => return Ok(()),
                    }
                }
            };
            let deleted = sqlx::query(AssertSqlSafe(sql.delete_object.as_str()))
                .bind(key)
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            if deleted.rows_affected() == 0 {
                return Err(StoreError::PreconditionFailed.into());
            }
            sqlx::query(AssertSqlSafe(sql.delete_chunks.as_str()))
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            tx.commit().await.map_err(&err)?;
        });
        Ok(())
    }

    async fn snapshot_once(
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
            // A shared lock on the source row keeps its chunks in place
            // until the copy commits.
            let size: Option<i64> = sqlx::query(AssertSqlSafe(sql.stat_for_share.as_str()))
                .bind(from)
                .bind(from_generation)
                .fetch_optional(&mut *tx)
                .await
                .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                .map_err(&err)?;
            let Some(size) = size else {
                return Err(StoreError::PreconditionFailed.into());
            };
            let inserted = sqlx::query(AssertSqlSafe(sql.insert_object.as_str()))
                .bind(to)
                .bind(generation)
                .bind(size)
                .bind(now)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(StoreError::AlreadyExists.into()),
                Err(e) => return Err(err(e)),
            }
            sqlx::query(AssertSqlSafe(sql.copy_chunks.as_str()))
                .bind(generation)
                .bind(from_generation)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            tx.commit().await.map_err(&err)?;
        });
        Ok(())
    }
}

/// Which setting a failure to connect points at.
fn connection_setting(config: &DbConfig, e: &sqlx::Error) -> &'static str {
    if matches!(config.connection, Connection::Url(_)) {
        return "dbURL";
    }
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default();
    let message = e
        .as_database_error()
        .map(|d| d.message().to_ascii_lowercase())
        .unwrap_or_default();
    match code.as_str() {
        // Login refused (PostgreSQL 28P01/28000, MySQL 1045 = 28000).
        "28P01" | "28000" => "dbPassword",
        // Unknown database (PostgreSQL 3D000, MySQL 1049 = 42000).
        "3D000" => "dbName",
        _ if message.contains("unknown database") => "dbName",
        _ if is_tls_failure(e) => match &config.connection {
            Connection::Parts {
                ssl_root_cert: Some(_),
                ..
            } => "dbSSLRootCert",
            _ => "dbSSLMode",
        },
        _ => "dbHost",
    }
}

/// A failed TLS handshake or certificate check (the driver reports some as
/// I/O errors).
fn is_tls_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => network_cause(io).starts_with("TLS failed"),
        _ => false,
    }
}

/// Opens the pool and checks one connection, so a wrong host, password or
/// database name stops start-up with the setting to fix.
async fn connect(config: &DbConfig) -> Result<Pool, ConfigError> {
    let url_error = |_| {
        // The parser's message may quote the URL, password included.
        ConfigError::invalid("dbURL", "cannot be parsed as a database URL")
    };
    let pool = match config.engine {
        Engine::Mysql => {
            let options = match &config.connection {
                Connection::Url(url) => MySqlConnectOptions::from_str(url).map_err(url_error)?,
                Connection::Parts {
                    host,
                    port,
                    database,
                    user,
                    password,
                    ssl_root_cert,
                } => {
                    let mut o = MySqlConnectOptions::new()
                        .host(host)
                        .port(*port)
                        .database(database)
                        .username(user)
                        .ssl_mode(match config.ssl_mode {
                            SslMode::Disable => MySqlSslMode::Disabled,
                            SslMode::Prefer => MySqlSslMode::Preferred,
                            SslMode::Require => MySqlSslMode::Required,
                            SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                            SslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
                        });
                    if let Some(password) = password {
                        o = o.password(password);
                    }
                    if let Some(ca) = ssl_root_cert {
                        o = o.ssl_ca(ca);
                    }
                    o
                }
            };
            Pool::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
        }
        Engine::Postgres => {
            let options = match &config.connection {
                Connection::Url(url) => PgConnectOptions::from_str(url).map_err(url_error)?,
                Connection::Parts {
                    host,
                    port,
                    database,
                    user,
                    password,
                    ssl_root_cert,
                } => {
                    let mut o = PgConnectOptions::new_without_pgpass()
                        .host(host)
                        .port(*port)
                        .database(database)
                        .username(user)
                        .ssl_mode(match config.ssl_mode {
                            SslMode::Disable => PgSslMode::Disable,
                            SslMode::Prefer => PgSslMode::Prefer,
                            SslMode::Require => PgSslMode::Require,
                            SslMode::VerifyCa => PgSslMode::VerifyCa,
                            SslMode::VerifyFull => PgSslMode::VerifyFull,
                        })
                        .application_name("stategate");
                    if let Some(password) = password {
                        o = o.password(password);
                    }
                    if let Some(ca) = ssl_root_cert {
                        o = o.ssl_root_cert(ca);
                    }
                    o
                }
            };
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
        }
    };
    // One real connection now: a refused login is a configuration error
    // the operator must see at start-up, not a 503 later.
    let checked = on_pool!(&pool, p => p.acquire().await.map(drop));
    if let Err(e) = checked {
        let setting = connection_setting(config, &e);
        let cause = match &e {
            // The pool retries a refused connection until its deadline and
            // then reports only the time-out.
            sqlx::Error::PoolTimedOut => match why_no_connection(&pool, config).await {
                full if full.starts_with("too many connections") => format!("connecting: {full}"),
                _ => format!(
                    "no connection to the {} server within {} s (is it running, and are dbHost and dbPort right?)",
                    config.engine.name(),
                    config.connect_timeout.as_secs()
                ),
            },
            other => unavailable("connecting", other).to_string(),
        };
        return Err(ConfigError::invalid(setting, cause));
    }
    Ok(pool)
}

/// Why `pool` handed out no connection in time. The pool retries a
/// refused connection until its deadline and then reports only the
/// time-out, so one connection made here, outside it, tells a server that
/// is full (its refusal says so), one that is down, and a pool whose own
/// connections all stayed busy apart.
async fn why_no_connection(pool: &Pool, config: &DbConfig) -> String {
    let limit = config.connect_timeout;
    let tried = on_pool!(pool, p => {
        let options = p.connect_options();
        tokio::time::timeout(limit, async {
            let connection = options.connect().await?;
            connection.close().await
        })
        .await
    });
    match tried {
        Ok(Ok(())) => format!(
            "all {} connections of the pool stayed busy for {} s (setting `dbMaxConnections`)",
            config.max_connections,
            limit.as_secs()
        ),
        Ok(Err(e)) => cause(&e),
        Err(_) => format!(
            "{POOL_TIMED_OUT}: the {} server did not answer within {} s; it is down or unreachable",
            config.engine.name(),
            limit.as_secs()
        ),
    }
}

#[async_trait]
impl Store for DbStore {
    fn describe(&self) -> String {
        self.config.describe()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: true,
            compare_and_swap: true,
            // A generation drawn from a counter or sequence, never reused.
            unique_versions: true,
            native_lease: false,
        }
    }

    fn max_key_bytes(&self) -> Option<usize> {
        Some(MAX_KEY_BYTES)
    }

    fn operation_timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A streamed body over [`SPOOL_THRESHOLD`] is written to an unnamed
    /// temporary file as its chunk rows arrive, so it is never whole in
    /// memory.
    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let within = if args.streamed {
            SPOOL_THRESHOLD as u64
        } else {
            u64::MAX
        };
        self.read_within(key, within).await
    }

    /// A body in a file goes into its chunk rows one chunk at a time.
    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let what = format!("writing {key}");
        let condition = &args.condition;
        self.bounded(
            &what,
            self.with_retries(&what, || self.put_once(key, &body, condition, &what)),
        )
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let what = format!("deleting {key}");
        let condition = &args.condition;
        self.bounded(
            &what,
            self.with_retries(&what, || self.delete_once(key, condition, &what)),
        )
        .await
    }

    /// Outside the internal area: two ranges of the key index, around it,
    /// so history rows are never read.
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let what = format!("listing {prefix}*");
        let pattern = like_prefix(prefix);
        if !args.outside_internal {
            let sql = AssertSqlSafe(self.sql.list.as_str());
            return self
                .bounded(&what, async {
                    on_pool!(&self.pool, p => {
                        sqlx::query(sql).bind(&pattern).fetch_all(p).await.and_then(|rows| entries!(rows))
                    })
                    .map_err(|e| unavailable(&what, &e))
                })
                .await;
        }
        self.bounded(&what, async {
            let sql = AssertSqlSafe(self.sql.list_range.as_str());
            let mut out = Vec::new();
            for (from, before) in crate::stores::ranges_outside_internal(prefix) {
                // Keys are ASCII below DEL.
                let before = before.unwrap_or_else(|| "\u{7f}".to_string());
                let found = on_pool!(&self.pool, p => {
                    sqlx::query(AssertSqlSafe(sql.0))
                        .bind(&pattern)
                        .bind(&from)
                        .bind(&before)
                        .fetch_all(p)
                        .await
                        .and_then(|rows| entries!(rows))
                })
                .map_err(|e| unavailable(&what, &e))?;
                out.extend(found);
            }
            Ok(out)
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let what = format!("reading {key}");
        self.bounded(&what, async {
            let sql = AssertSqlSafe(self.sql.stat.as_str());
            on_pool!(&self.pool, p => {
                sqlx::query(sql)
                    .bind(key)
                    .fetch_optional(p)
                    .await
                    .and_then(|r| r.map(|r| r.try_get::<i64, _>(0)).transpose())
            })
            .map(|g| g.map(|g| Version(g.to_string())))
            .map_err(|e| unavailable(&what, &e))
        })
        .await
    }

    /// Copies the rows inside the database, without the bytes leaving it.
    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        _body: &Payload,
    ) -> Result<(), StoreError> {
        let Some(from_generation) = generation_of(from_version) else {
            return Err(StoreError::PreconditionFailed);
        };
        let what = format!("copying {from} to {to}");
        self.bounded(
            &what,
            self.with_retries(&what, || {
                self.snapshot_once(from, from_generation, to, &what)
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_server_is_named_as_such() {
        let pg = refusal(Some("53300"), None, "sorry, too many clients already");
        let mysql = refusal(Some("08004"), Some(1040), "Too many connections");
        for said in [&pg, &mysql] {
            assert!(said.starts_with("too many connections: "), "{said}");
            assert!(said.contains("dbMaxConnections"), "{said}");
        }
        assert!(pg.contains("sorry, too many clients already"));
        let other = refusal(Some("08004"), Some(1130), "Host is not allowed");
        assert_eq!(
            other,
            "the database refused it: Host is not allowed (08004)"
        );
        assert!(!cause(&sqlx::Error::PoolTimedOut).contains("unreachable"));
    }

    #[test]
    fn like_patterns_match_plain_prefixes_only() {
        assert_eq!(like_prefix("a_b%c!d/"), "a!_b!%c!!d/%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        let sql = Sql::new(Engine::Postgres, "sg_");
        assert_eq!(
            sql.update_object,
            "UPDATE sg_objects SET generation = $1, size = $2, modified_ns = $3 \
             WHERE object_key = $4 AND generation = $5"
        );
        assert!(
            Sql::new(Engine::Mysql, "sg_")
                .update_object
                .contains("generation = ?")
        );
    }
}
