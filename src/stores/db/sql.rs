//! The SQL of both engines, with the table prefix filled in, and the
//! schema: the DDL of each version, which [`super::DbStore`]'s migration
//! runs up to [`SCHEMA_VERSION`].

use super::config::Engine;

/// The schema this binary creates and understands.
pub const SCHEMA_VERSION: i64 = 1;

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
                format!("UPDATE {p}generation SET last = LAST_INSERT_ID(last + ?) WHERE id = 1")
            }
            Engine::Postgres => {
                format!("SELECT nextval('{p}generation') FROM generate_series(1, ?::bigint)")
            }
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
