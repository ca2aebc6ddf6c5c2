//! The shape of the database file: the tables a new file gets, the shapes
//! older stategates left, how each is read, and the upgrade that brings an
//! older file to the current shape.

use std::ffi::CStr;

use rusqlite::Connection;

/// `objects` names each object's body by its row in `bodies`, where a
/// history copy names the same row as the state it was copied from: a
/// version kept costs no second copy of its bytes, and a new state is
/// written once (then once more when the log is copied into the file),
/// not twice. The last object to let go of a body deletes it, in the same
/// transaction, finding no other by the index `objects_body`. No count of
/// references is kept beside the body: SQLite rewrites a whole row to
/// change one of its columns, body and all.
///
/// `bodies.body` comes last: SQLite keeps an empty blob of a given size
/// (`zeroblob`) without allocating it only in a row's last column, and
/// large bodies are written into such a blob a piece at a time.
///
/// `size` is the body's length, kept by every write.
///
/// `objects` has no row ids: its rows lie in key order, in the table
/// itself, so a listing reads the rows of the keys it lists and nothing
/// else (the rows of states lie apart from their history's), and a write
/// changes two trees (the table and `objects_body`), not the four a table
/// with row ids, its key's index and a listing index beside it took.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_body ON objects (body_id);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO generation (id, last) VALUES (1, 0);
";

/// The tables a file of any shape holds ([`SCHEMA`]; the oldest shapes
/// have fewer).
const TABLES: [&str; 3] = ["objects", "bodies", "generation"];

/// Refuses a database that stategate did not make: one holding a table
/// or view of another name (SQLite's own aside). Opening it would turn it
/// to WAL and add stategate's tables to another program's file, or take
/// a table of its own called `objects` for an older shape to upgrade.
pub(super) fn check_made_by_stategate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let foreign: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')
             AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name",
        )?
        .query_map([], |r| r.get::<_, String>(0))?
        .filter(|name| !matches!(name, Ok(name) if TABLES.contains(&name.as_str())))
        .collect::<Result<_, _>>()?;
    match foreign.first() {
        None => Ok(()),
        Some(first) => Err(rusqlite::Error::ToSqlConversionFailure(
            format!(
                "the database holds {} tables that stategate did not make (such as `{first}`), \
                 so it is no store; give `path` a new file, or one that a stategate store has used",
                foreign.len()
            )
            .into(),
        )),
    }
}

/// The columns of `objects` in the order [`SCHEMA`] gives them.
const COLUMNS: [&str; 5] = ["key", "generation", "modified_ns", "size", "body_id"];

/// An object's body, its length and the object's generation, in a file of
/// the shape every store opened for writing reads ([`Shape::Shared`]);
/// the body only when it is at most `?2` bytes (null otherwise, and not
/// read: the length comes from the row's header, as in
/// [`Shape::locate_query`]), and the length null when the body's row is
/// missing, as in [`Shape::whole_query`].
pub(super) const SHORT_QUERY: &str =
    "SELECT CASE WHEN length(b.body) <= ?2 THEN b.body END, length(b.body), o.generation
     FROM objects o LEFT JOIN bodies b ON b.id = o.body_id WHERE o.key = ?1";

/// Where a file keeps its objects' bodies, which decides how they are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// In `bodies`, shared (see [`SCHEMA`]): the shape of a new file, and
    /// of every file a store has opened for writing.
    Shared,
    /// In each object's own row, with a `size` column or, older still,
    /// without: a file made by an older stategate, opened for reading only
    /// and so left as it is.
    Inline { with_size: bool },
}

impl Shape {
    /// The shape of the file `conn` reads now.
    pub(super) fn of(conn: &Connection) -> Result<Shape, rusqlite::Error> {
        let columns = columns(conn)?;
        let has = |name: &str| columns.iter().any(|c| c == name);
        Ok(match has("body_id") {
            true => Shape::Shared,
            false => Shape::Inline {
                with_size: has("size"),
            },
        })
    }

    /// The shape a store reads on `conn`: always [`Shape::Shared`] for a
    /// store opened for writing, which upgraded its file; a read-only one
    /// asks each time, since a store opened for writing may upgrade the
    /// file meanwhile.
    pub(super) fn read_by(conn: &Connection, read_only: bool) -> Result<Shape, rusqlite::Error> {
        match read_only {
            false => Ok(Shape::Shared),
            true => Shape::of(conn),
        }
    }

    /// The table whose `body` column holds the bodies, for blob handles.
    pub(super) fn body_table(self) -> &'static CStr {
        match self {
            Shape::Shared => c"bodies",
            Shape::Inline { .. } => c"objects",
        }
    }

    /// An object's body and generation. The body is null when its row is
    /// missing (a file damaged by hand): the object is there, and must not
    /// read as absent.
    pub(super) fn whole_query(self) -> &'static str {
        match self {
            Shape::Shared => {
                "SELECT b.body, o.generation FROM objects o LEFT JOIN bodies b ON b.id = o.body_id
                 WHERE o.key = ?1"
            }
            Shape::Inline { .. } => "SELECT body, generation FROM objects WHERE key = ?1",
        }
    }

    /// Where an object's body is (its row in [`Shape::body_table`]), its
    /// length and the object's generation. The length is `length(body)`,
    /// which SQLite takes from the row's header without reading the body,
    /// since a file of the oldest shape has no `size`; null when the body's
    /// row is missing, as in [`Shape::whole_query`].
    pub(super) fn locate_query(self) -> &'static str {
        match self {
            Shape::Shared => {
                "SELECT o.body_id, length(b.body), o.generation
                 FROM objects o LEFT JOIN bodies b ON b.id = o.body_id WHERE o.key = ?1"
            }
            Shape::Inline { .. } => {
                "SELECT rowid, length(body), generation FROM objects WHERE key = ?1"
            }
        }
    }

    /// The listing of one range of keys with a prefix, sorted: with `size`,
    /// answered from the rows of those keys alone (see [`SCHEMA`]; in a
    /// file of an older shape, from its listing index); without, on a file
    /// made before that column, from the table.
    pub(super) fn listing_query(self) -> &'static str {
        match self {
            Shape::Shared | Shape::Inline { with_size: true } => {
                "SELECT key, size, modified_ns FROM objects
                 WHERE key >= ?1 AND key < ?2 AND substr(key, 1, length(?3)) = ?3
                 ORDER BY key"
            }
            Shape::Inline { with_size: false } => {
                "SELECT key, length(body), modified_ns FROM objects
                 WHERE key >= ?1 AND key < ?2 AND substr(key, 1, length(?3)) = ?3
                 ORDER BY key"
            }
        }
    }
}

/// The columns of the table `objects`, in order; none when there is no
/// such table yet.
fn columns(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    conn.prepare("SELECT name FROM pragma_table_info('objects') ORDER BY cid")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Whether `objects` is a table without row ids (see [`SCHEMA`]).
fn without_rowid(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_list WHERE schema = 'main' AND name = 'objects' AND wr",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n == 1)
}

/// Brings a file of an older shape to the shape of [`SCHEMA`]. In the
/// oldest shapes the bodies are in the objects' own rows (`body` second;
/// last with no `size`; last with `size`): every body moves to `bodies`,
/// named by one object each, and every object keeps its generation and
/// time and gets its size from its body. In the shape before this one the
/// bodies are apart already, and `objects` has row ids and a listing index:
/// its rows are copied into the table without, bodies untouched (and the
/// listing index an older release makes again on a file of this shape is
/// dropped). The generation counter is untouched. All in one transaction, checked again
/// once it holds the file: another process opening the file at the same
/// time waits, then finds it done. Does nothing on a new file.
pub(super) fn upgrade_table(conn: &Connection) -> Result<(), rusqlite::Error> {
    let needed = |conn: &Connection| {
        let columns = columns(conn)?;
        Ok::<_, rusqlite::Error>(match columns.is_empty() {
            true => None,
            false if columns != COLUMNS => Some(Older::Inline),
            false if !without_rowid(conn)? => Some(Older::RowIds),
            false if has_listing_index(conn)? => Some(Older::ListingIndex),
            false => None,
        })
    };
    if needed(conn)?.is_none() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = (|| {
        let Some(older) = needed(conn)? else {
            return Ok(());
        };
        // In key order, the table and the body index grow at their end.
        let copy = match older {
            Older::ListingIndex => return conn.execute_batch("DROP INDEX objects_listing"),
            Older::Inline => {
                "INSERT INTO bodies (id, body) SELECT rowid, body FROM objects_older;
                 INSERT INTO objects (key, generation, modified_ns, size, body_id)
                     SELECT key, generation, modified_ns, length(body), rowid FROM objects_older
                     ORDER BY key;
                 DROP TABLE objects_older;"
            }
            Older::RowIds => {
                "INSERT INTO objects (key, generation, modified_ns, size, body_id)
                     SELECT key, generation, modified_ns, size, body_id FROM objects_older
                     ORDER BY key;
                 DROP TABLE objects_older;"
            }
        };
        // The older table's indexes would keep their names, and the new
        // table's would not be made with the rest.
        conn.execute_batch(
            "DROP INDEX IF EXISTS objects_listing;
             DROP INDEX IF EXISTS objects_body;
             ALTER TABLE objects RENAME TO objects_older;",
        )?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(copy)
    })();
    match upgraded {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The shape a file is upgraded from.
#[derive(Clone, Copy)]
enum Older {
    /// Bodies in the objects' own rows.
    Inline,
    /// Bodies apart, objects in a table with row ids.
    RowIds,
    /// The shape of [`SCHEMA`] with the listing index the shape before
    /// had, which an older release opening the file makes again: only
    /// the index goes.
    ListingIndex,
}

/// Whether the file has the listing index of the shape before.
fn has_listing_index(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = 'objects_listing'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rusqlite::params;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::stores::payload::SPOOL_THRESHOLD;
    use crate::stores::sqlite::SqliteStore;
    use crate::stores::{Condition, OpList, OpRead, Store, StoreExt};

    /// `objects` as a file made when `body` was the second column has it.
    const BODY_SECOND: &str =
        "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, body BLOB NOT NULL,
             generation INTEGER NOT NULL, modified_ns INTEGER NOT NULL)";

    /// `objects` as a file made before the `size` column has it.
    const BODY_LAST_WITHOUT_SIZE: &str =
        "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, generation INTEGER NOT NULL,
             modified_ns INTEGER NOT NULL, body BLOB NOT NULL)";

    /// `objects` as a file made before bodies were shared has it, with its
    /// listing index.
    const BODY_IN_ITS_ROW: &str =
        "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, generation INTEGER NOT NULL,
             modified_ns INTEGER NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE INDEX objects_listing ON objects (key, modified_ns, size);";

    /// Every older shape with bodies in the objects' rows.
    const OLDER: [&str; 3] = [BODY_SECOND, BODY_LAST_WITHOUT_SIZE, BODY_IN_ITS_ROW];

    /// The shape before this one: bodies apart, `objects` with row ids and
    /// a listing index, holding what [`older_file`] holds.
    fn file_with_row_ids(dir: &Path) -> PathBuf {
        let path = dir.join("rowids.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, generation INTEGER NOT NULL,
                     modified_ns INTEGER NOT NULL, size INTEGER NOT NULL, body_id INTEGER NOT NULL);
                 CREATE INDEX objects_listing ON objects (key, modified_ns, size);
                 CREATE INDEX objects_body ON objects (body_id);
                 CREATE TABLE bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
                 CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
                 INSERT INTO generation VALUES (1, 7);
                 INSERT INTO bodies VALUES (1, x'7b7d0a'), (2, x'7b7d');
                 INSERT INTO objects VALUES
                     ('.stategate/history/a/state/0000000001.tfstate', 6, 900, 3, 1),
                     ('a/state', 7, 1000, 2, 2);",
            )
            .unwrap();
        path
    }

    /// A database file in `dir` with `objects` made by `table`, holding the
    /// state `a/state` (`{}`, generation 7), a history row of it (three
    /// bytes, generation 6), and the counter at 7.
    fn older_file(dir: &Path, table: &str) -> PathBuf {
        let path = dir.join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(table).unwrap();
        let (size, sizes) = match table.contains("size") {
            true => (", size", [", 3", ", 2"]),
            false => ("", [""; 2]),
        };
        conn.execute_batch(&format!(
            "CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
             INSERT INTO generation VALUES (1, 7);
             INSERT INTO objects (key, body, generation, modified_ns{size})
                 VALUES ('.stategate/history/a/state/0000000001.tfstate', x'7b7d0a', 6, 900{});
             INSERT INTO objects (key, body, generation, modified_ns{size})
                 VALUES ('a/state', x'7b7d', 7, 1000{});",
            sizes[0], sizes[1]
        ))
        .unwrap();
        path
    }

    /// States hold secrets: a new file, its log and its index are the
    /// store's user's alone (SQLite would make them readable by all).
    #[tokio::test]
    async fn a_new_file_is_its_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("states.db");
        let store = SqliteStore::open_file(&path).unwrap();
        store
            .put("app", Bytes::from_static(b"{}"), Condition::IfAbsent)
            .await
            .unwrap();
        for file in ["states.db", "states.db-wal", "states.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file}: {mode:o}");
        }
    }

    #[test]
    fn a_database_stategate_did_not_make_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        // Another program's file, with a table called `objects` too.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE objects (key TEXT, body BLOB, generation INTEGER, modified_ns INTEGER);
             INSERT INTO users VALUES (1, 'ada');",
        )
        .unwrap();
        let before = schema_objects(&conn);
        drop(conn);
        for e in [
            SqliteStore::open_file(&path)
                .err()
                .expect("opened for serving"),
            SqliteStore::open_read_only(&path)
                .err()
                .expect("opened to read"),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("1 tables that stategate did not make (such as `users`)"),
                "{e}"
            );
            assert!(e.contains("give `path` a new file"), "{e}");
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_objects(&conn), before);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "the file was turned to WAL");
        let beside = names_in(dir.path());
        assert_eq!(beside, ["app.db"], "something was made beside it");
    }

    /// The names of the files in `dir`.
    fn names_in(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A file that is no database at all is refused, and nothing is made
    /// beside it.
    #[test]
    fn a_file_that_is_no_database_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        let text = "a file of someone's, not a database\n".repeat(200);
        std::fs::write(&path, &text).unwrap();
        assert!(SqliteStore::open_file(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let beside = names_in(dir.path());
        assert_eq!(beside, ["notes.txt"], "something was made beside it");
    }

    /// The `type name` of every table and index of the file's schema.
    fn schema_objects(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT type || ' ' || name FROM sqlite_schema ORDER BY type, name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Opens the older file at `path` for writing and checks that it now
    /// has the current tables and index, every row with its generation,
    /// time, size and a body of its own, and the counter.
    async fn upgraded_with_its_rows(path: &Path) {
        let store = SqliteStore::open_file(path).unwrap();
        let conn = Connection::open(path).unwrap();
        assert_eq!(columns(&conn).unwrap(), COLUMNS);
        assert!(without_rowid(&conn).unwrap(), "objects has no row ids");
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = fresh_dir.path().join("new.db");
        drop(SqliteStore::open_file(&fresh).unwrap());
        assert_eq!(
            schema_objects(&conn),
            schema_objects(&Connection::open(&fresh).unwrap()),
            "the same tables and indexes as a new file, and nothing left over"
        );
        let rows: Vec<(String, i64, i64, i64)> = conn
            .prepare("SELECT key, generation, modified_ns, size FROM objects ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let history = ".stategate/history/a/state/0000000001.tfstate".to_string();
        assert_eq!(
            rows,
            [(history, 6, 900, 3), ("a/state".to_string(), 7, 1000, 2)]
        );
        let bodies: Vec<(i64, Vec<u8>)> = conn
            .prepare(
                "SELECT (SELECT count(*) FROM objects n WHERE n.body_id = b.id), body
                 FROM bodies b JOIN objects o ON o.body_id = b.id ORDER BY key",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(bodies, [(1, b"{}\n".to_vec()), (1, b"{}".to_vec())]);
        let listed = store.list("a/", OpList::default()).await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|e| (e.key.as_str(), e.size))
                .collect::<Vec<_>>(),
            [("a/state", 2)]
        );
        let obj = store.get("a/state").await.unwrap().unwrap();
        assert_eq!((&obj.body[..], obj.version.0.as_str()), (&b"{}"[..], "7"));
        let next = store
            .put(
                "a/state",
                Bytes::from_static(b"[1]"),
                Condition::IfMatch(obj.version),
            )
            .await
            .unwrap();
        assert_eq!(next.0, "8", "the generation counter is kept");
        let size: i64 = conn
            .query_row("SELECT size FROM objects WHERE key = 'a/state'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(size, 3, "a write keeps the size");
        let count: i64 = conn
            .query_row("SELECT count(*) FROM bodies", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2, "the body replaced is gone");
        // Opening it again finds nothing to do.
        drop(SqliteStore::open_file(path).unwrap());
        assert_eq!(store.get("a/state").await.unwrap().unwrap().version, next);
    }

    /// A file of every older shape (`body` second; last without `size`;
    /// in each object's row with its size and listing index) is rebuilt
    /// with its bodies in their own table, keeping every row, generation
    /// and the counter.
    #[tokio::test]
    async fn every_older_shape_is_rebuilt_keeping_its_rows() {
        for table in OLDER {
            let dir = tempfile::tempdir().unwrap();
            upgraded_with_its_rows(&older_file(dir.path(), table)).await;
        }
    }

    /// A file of the shape before this one (`objects` with row ids and a
    /// listing index) is rebuilt without them, keeping every row, its
    /// body, and the counter.
    #[tokio::test]
    async fn the_shape_with_row_ids_is_rebuilt_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        upgraded_with_its_rows(&file_with_row_ids(dir.path())).await;
    }

    /// An older release opening a file of this shape makes its listing
    /// index again (its schema says `CREATE INDEX IF NOT EXISTS`), and
    /// writes the file as it is; the next start of this release drops
    /// the index, and the rows stay.
    #[tokio::test]
    async fn the_listing_index_an_older_release_adds_goes_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_row_ids(dir.path());
        drop(SqliteStore::open_file(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE INDEX IF NOT EXISTS objects_listing ON objects (key, modified_ns, size)",
            )
            .unwrap();
        upgraded_with_its_rows(&path).await;
    }

    /// The pages of the older table, free once it is copied, go back to
    /// the device when the file is opened, not at its first write.
    #[tokio::test]
    async fn an_upgrade_gives_the_older_tables_pages_back() {
        // Every body is copied once, into its own table; what the older
        // table held is then free.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let pages = |conn: &Connection, pragma: &str| {
            conn.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let before = {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .unwrap();
            conn.execute_batch(BODY_LAST_WITHOUT_SIZE).unwrap();
            conn.execute_batch(
                "CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
                 INSERT INTO generation VALUES (1, 1000);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
                 INSERT INTO objects (key, generation, modified_ns, body)
                     SELECT printf('s/%04d', i), i, 0, zeroblob(4000) FROM n;",
            )
            .unwrap();
            pages(&conn, "page_count")
        };
        drop(SqliteStore::open_file(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let (free, total) = (pages(&conn, "freelist_count"), pages(&conn, "page_count"));
        assert!(
            free <= 256 && total < before * 3 / 2,
            "{free} of {total} pages free after the upgrade (the older table had {before})"
        );
    }

    /// Two stores opening an older file at once (as two processes would,
    /// each on a connection of its own): one upgrades it, the other waits
    /// and finds it done, and neither fails. Ten rounds, since the two
    /// meet at a different step each time (turning the file to WAL, where
    /// SQLite does not wait on its own, among them).
    #[tokio::test]
    async fn two_stores_opening_an_older_file_at_once_upgrade_it_once() {
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = older_file(dir.path(), BODY_IN_ITS_ROW);
            let start = Arc::new(std::sync::Barrier::new(2));
            let opening: Vec<_> = (0..2)
                .map(|_| {
                    let (path, start) = (path.clone(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        SqliteStore::open_file(&path)
                    })
                })
                .collect();
            for open in opening {
                if let Err(e) = open.join().unwrap() {
                    panic!("round {round}: opening while another upgrades: {e}");
                }
            }
            upgraded_with_its_rows(&path).await;
        }
    }

    /// A listing of states reads the rows of the keys it lists, in key
    /// order, and no others.
    #[test]
    fn a_listing_reads_the_rows_of_its_keys_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        drop(SqliteStore::open_file(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                Shape::Shared.listing_query()
            ))
            .unwrap()
            .query_map(params!["a", "b", "a"], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(plan, ["SEARCH objects USING PRIMARY KEY (key>? AND key<?)"]);
    }

    /// A store opened for reading only (a full or read-only device) cannot
    /// upgrade an older file, and lists and reads it as it is, sizes and
    /// large bodies all.
    #[tokio::test]
    async fn a_read_only_store_lists_and_reads_an_older_file() {
        for table in OLDER {
            let dir = tempfile::tempdir().unwrap();
            let path = older_file(dir.path(), table);
            let large = vec![b'7'; SPOOL_THRESHOLD + 10];
            Connection::open(&path)
                .unwrap()
                .execute(
                    &format!(
                        "INSERT INTO objects (key, body, generation, modified_ns{})
                         VALUES ('.stategate/large', ?1, 5, 0{})",
                        if table.contains("size") { ", size" } else { "" },
                        if table.contains("size") {
                            ", length(?1)"
                        } else {
                            ""
                        },
                    ),
                    [&large],
                )
                .unwrap();
            let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
            let listed = store.list("", OpList::outside_internal()).await.unwrap();
            let listed: Vec<_> = listed
                .iter()
                .map(|e| {
                    (
                        e.key.as_str(),
                        e.size,
                        e.modified.map(|t| t.unix_timestamp_nanos()),
                    )
                })
                .collect();
            assert_eq!(listed, [("a/state", 2, Some(1000))], "{table}");
            let everything = store.list("", OpList::default()).await.unwrap();
            assert_eq!(everything.len(), 3, "{table}");
            assert_eq!(store.get("a/state").await.unwrap().unwrap().body, "{}");
            let (body, version) = store
                .read(".stategate/large", OpRead::streamed())
                .await
                .unwrap()
                .unwrap();
            assert!(body.as_memory().is_none(), "a large body comes as a file");
            assert_eq!(body.to_bytes().await.unwrap(), large, "{table}");
            assert_eq!(version.0, "5");
            let conn = Connection::open(&path).unwrap();
            assert!(
                matches!(Shape::of(&conn).unwrap(), Shape::Inline { .. }),
                "the file is left as it was"
            );
        }
    }
}
