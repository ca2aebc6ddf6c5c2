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

use crate::stores::OpSnapshot;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Connection as _, Database, Decode, Encode, Executor, IntoArguments,
    Row, Type,
};
use time::OffsetDateTime;

use super::config::{DbConfig, Engine};
use super::connect::{Pool, chunk_bytes, connect, connection_setting, why_no_connection};
use super::failure::{Failed, POOL_TIMED_OUT, failed, generation_of, like_prefix, unavailable};
use super::sql::{MAX_KEY_BYTES, SCHEMA_VERSION, Sql, migrations};
use crate::settings::ConfigError;
use crate::stores::payload::SPOOL_THRESHOLD;
use crate::stores::{
    Capabilities, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Stopped, Store, StoreError,
    ThenChange, Version,
};

/// How often a write that lost a race it could not foresee (a deadlock, a
/// concurrent first create under `Condition::Always`) is tried again.
const ATTEMPTS: usize = 5;

/// A store in a database; cheap to share.
pub struct DbStore {
    pub(super) config: DbConfig,
    pub(super) pool: Pool,
    pub(super) sql: Sql,
    /// The largest chunk row ([`chunk_bytes`]).
    pub(super) chunk_bytes: usize,
}

impl DbStore {
    /// Connects, then brings the schema up to [`SCHEMA_VERSION`]. Fails
    /// naming the setting to look at when the server cannot be reached, the
    /// login is refused or the schema is newer than this binary.
    pub async fn open(config: DbConfig) -> Result<DbStore, ConfigError> {
        let store = Self::connected(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects, and reads what the server allows; nothing is changed.
    async fn connected(config: DbConfig) -> Result<DbStore, ConfigError> {
        let pool = connect(&config).await?;
        let sql = Sql::new(config.engine, &config.table_prefix);
        let chunk_bytes = chunk_bytes(&config, &pool).await?;
        Ok(DbStore {
            config,
            pool,
            sql,
            chunk_bytes,
        })
    }

    /// Connects for reading only, as a dry run does: no table is created
    /// or changed. `None` when the tables do not exist yet (a database
    /// stategate never used holds no states); an error naming the setting
    /// when their schema is not the one this binary reads, since bringing
    /// it up to date would be a change.
    pub async fn open_read_only(config: DbConfig) -> Result<Option<DbStore>, ConfigError> {
        let store = Self::connected(config).await?;
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

    /// Whether the configured user may create stategate's tables, for
    /// `stategate check` on a database that has none yet: what `open`
    /// would do first, without changing anything. PostgreSQL creates the
    /// first table in a transaction and rolls it back. MySQL commits a
    /// `CREATE TABLE` at once, so it is asked to copy a table that does not
    /// exist: it checks the right to create before it looks for the
    /// original, so a user with the right hears "no such table" and
    /// nothing is made.
    pub async fn check_creatable(config: DbConfig) -> Result<(), ConfigError> {
        let store = Self::connected(config).await?;
        let p = &store.config.table_prefix;
        let tried: Result<(), sqlx::Error> = match &store.pool {
            Pool::Postgres(pool) => match pool.begin().await {
                Ok(mut tx) => {
                    let made = sqlx::query(AssertSqlSafe(format!(
                        "CREATE TABLE {p}schema_version (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL)"
                    )))
                    .execute(&mut *tx)
                    .await
                    .map(drop);
                    let _ = tx.rollback().await;
                    made
                }
                Err(e) => Err(e),
            },
            Pool::Mysql(pool) => {
                let copied = sqlx::query(AssertSqlSafe(format!(
                    "CREATE TABLE {p}schema_version LIKE {p}schema_version_none"
                )))
                .execute(pool)
                .await;
                match copied {
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => Ok(()),
                    Ok(_) => Err(sqlx::Error::Protocol(
                        "a table was copied from one that should not exist".into(),
                    )),
                    Err(e) => Err(e),
                }
            }
        };
        tried.map_err(|e| store.schema_error("creating the tables", e))
    }

    /// The setting a connection failure points at.
    pub(super) fn connection_setting(&self, e: &sqlx::Error) -> &'static str {
        connection_setting(&self.config, e)
    }

    /// Bounds one operation by the `timeout` setting.
    pub(super) async fn bounded<T>(
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
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        attempt: F,
    ) -> Result<T, StoreError>
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
    pub(super) async fn next_generation(&self, what: &str) -> Result<i64, Failed> {
        let drawn = self.next_generations(what, 1).await?;
        Ok(drawn[0])
    }

    /// `n` (at least one) generations no object has had, drawn in one
    /// statement: on MySQL the counter's row is updated once for them all
    /// (one commit, and one wait for its lock, rather than one per
    /// generation), on PostgreSQL the sequence answers them in one round
    /// trip.
    pub(super) async fn next_generations(&self, what: &str, n: usize) -> Result<Vec<i64>, Failed> {
        let sql = AssertSqlSafe(self.sql.next_generation.as_str());
        let n = n.max(1) as i64;
        let drawn = match &self.pool {
            Pool::Mysql(p) => sqlx::query(sql).bind(n).execute(p).await.map(|r| {
                let last = r.last_insert_id() as i64;
                (last - n + 1..=last).collect()
            }),
            Pool::Postgres(p) => sqlx::query(sql)
                .bind(n)
                .fetch_all(p)
                .await
                .and_then(|rows| rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()),
        };
        let drawn: Vec<i64> = drawn.map_err(failed(what))?;
        if drawn.len() != n as usize {
            return Err(Failed::Store(StoreError::unavailable(format!(
                "{what}: the database drew {} generations, not {n}",
                drawn.len()
            ))));
        }
        Ok(drawn)
    }
}

impl DbStore {
    /// Brings the schema up to [`SCHEMA_VERSION`]. Replicas starting
    /// together take turns. PostgreSQL runs DDL in a transaction, under a
    /// transaction-scoped advisory lock; MySQL commits each DDL statement,
    /// so a named lock is held on one connection for the migration only,
    /// and that connection is closed afterwards (which releases it even if
    /// the migration failed).
    pub(super) async fn migrate(&self) -> Result<(), ConfigError> {
        let lock_name = format!("stategate-schema-{}", self.config.table_prefix);
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(|e| self.schema_error("starting the schema migration", e))?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(&lock_name)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.schema_error("waiting for the schema lock", e))?;
                self.migrate_locked(&mut *tx).await?;
                tx.commit()
                    .await
                    .map_err(|e| self.schema_error("committing the schema migration", e))?;
            }
            Pool::Mysql(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| self.schema_error("connecting", e))?
                    .detach();
                let result = async {
                    let got: Option<i64> = sqlx::query("SELECT GET_LOCK(?, 60)")
                        .bind(&lock_name)
                        .fetch_one(&mut conn)
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(|e| self.schema_error("waiting for the schema lock", e))?;
                    if got != Some(1) {
                        return Err(ConfigError::invalid(
                            "dbTablePrefix",
                            "another stategate held the schema lock for over 60 s",
                        ));
                    }
                    self.migrate_locked(&mut conn).await
                }
                .await;
                let _ = conn.close().await;
                result?;
            }
        }
        Ok(())
    }

    /// The migration proper, on a connection that holds the schema lock:
    /// creates the version table if needed, refuses a schema newer than
    /// this binary, and runs each step after the recorded version,
    /// recording it.
    async fn migrate_locked<C: sqlx::Connection>(&self, conn: &mut C) -> Result<(), ConfigError>
    where
        for<'c> &'c mut C: Executor<'c, Database = C::Database>,
        <C::Database as Database>::Arguments: IntoArguments<C::Database>,
        for<'t> i64: Encode<'t, C::Database> + Decode<'t, C::Database> + Type<C::Database>,
        usize: ColumnIndex<<C::Database as Database>::Row>,
    {
        let p = &self.config.table_prefix;
        let (create_version, seed_version, set_version) = match self.config.engine {
            Engine::Mysql => (
                format!(
                    "CREATE TABLE IF NOT EXISTS {p}schema_version (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL) ENGINE=InnoDB"
                ),
                format!("INSERT IGNORE INTO {p}schema_version (id, version) VALUES (1, 0)"),
                format!("UPDATE {p}schema_version SET version = ? WHERE id = 1"),
            ),
            Engine::Postgres => (
                format!(
                    "CREATE TABLE IF NOT EXISTS {p}schema_version (id INT NOT NULL PRIMARY KEY, version BIGINT NOT NULL)"
                ),
                format!(
                    "INSERT INTO {p}schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
                ),
                format!("UPDATE {p}schema_version SET version = $1 WHERE id = 1"),
            ),
        };
        let read_version = format!("SELECT version FROM {p}schema_version WHERE id = 1");
        for statement in [create_version, seed_version] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.schema_error("creating the schema_version table", e))?;
        }
        let found: i64 = sqlx::query(AssertSqlSafe(read_version))
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.schema_error("reading the schema version", e))?;
        if found > SCHEMA_VERSION {
            return Err(ConfigError::invalid(
                "dbTablePrefix",
                format!(
                    "the database schema of tables {p}* is version {found}, newer than version {SCHEMA_VERSION} \
                     that this stategate knows; upgrade stategate (or use another dbTablePrefix)"
                ),
            ));
        }
        let steps = migrations(self.config.engine, p);
        for (done, step) in steps.iter().enumerate().skip(found as usize) {
            for statement in step {
                sqlx::query(AssertSqlSafe(statement.as_str()))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.schema_error("creating the tables", e))?;
            }
            sqlx::query(AssertSqlSafe(set_version.as_str()))
                .bind(done as i64 + 1)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.schema_error("recording the schema version", e))?;
        }
        Ok(())
    }

    /// A failure of the migration step `what`, pointing at the setting to
    /// check.
    fn schema_error(&self, what: &str, e: sqlx::Error) -> ConfigError {
        ConfigError::invalid(
            self.connection_setting(&e),
            unavailable(what, &e).to_string(),
        )
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

    /// The write and its changes are one transaction (see
    /// `write_then_change_once`): a server killed between them leaves
    /// neither. Both fit in one `timeout`, the copy history keeps being
    /// made inside the database.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let what = format!("writing {key}");
        let condition = &args.condition;
        self.bounded(
            &what,
            self.with_retries(&what, || {
                self.write_then_change_once(key, &body, condition, &then, &what)
            }),
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
    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        let OpSnapshot { from, to, .. } = copy;
        let Some(from_generation) = generation_of(copy.from_version) else {
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
