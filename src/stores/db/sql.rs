//! The SQL of both engines, with the table prefix filled in, and the
//! schema: the DDL of each version and the migration that brings a
//! database up to this binary's.

use sqlx::{AssertSqlSafe, Connection as _, Row};

use super::config::Engine;
use super::failure::unavailable;
use super::store::{DbStore, Pool, SCHEMA_VERSION};
use crate::settings::ConfigError;

/// The statements of one engine, with the table prefix filled in.
pub(super) struct Sql {
    pub(super) get: String,
    pub(super) stat: String,
    pub(super) stat_for_update: String,
    pub(super) stat_for_share: String,
    pub(super) list: String,
    /// `list` within `[from, before)`.
    pub(super) list_range: String,
    pub(super) insert_object: String,
    pub(super) update_object: String,
    pub(super) delete_object: String,
    pub(super) insert_chunk: String,
    pub(super) delete_chunks: String,
    pub(super) copy_chunks: String,
    pub(super) next_generation: String,
}

impl Sql {
    pub(super) fn new(engine: Engine, p: &str) -> Sql {
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
    pub(super) fn numbered(self) -> Sql {
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
pub(super) const MAX_KEY_BYTES: usize = 2048;

/// The DDL of each schema version, per engine. Every statement is
/// idempotent, so a migration cut short by a crash can simply run again.
pub(super) fn migrations(engine: Engine, p: &str) -> Vec<Vec<String>> {
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

impl DbStore {
    pub(super) async fn migrate(&self) -> Result<(), ConfigError> {
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
}
