//! The rows themselves: conditional writes, deletes and copies inside an
//! open transaction, bodies moved between rows and files a piece at a
//! time, and the upgrade of an older table.

use std::sync::Arc;

use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use time::OffsetDateTime;

use super::SCHEMA;
use crate::stores::payload::{FileBody, SPOOL_THRESHOLD};
use crate::stores::{Condition, Payload, StoreError, Version};

/// Writes `key` under `condition` inside the open transaction; a body in
/// a file goes in as an empty blob of its size, then is written into it a
/// piece at a time.
pub(super) fn put_row(
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
            "UPDATE objects SET generation = ?2, size = ?5, body = {placeholder}, modified_ns = ?4
             WHERE key = ?1"
        )
    } else {
        format!(
            "INSERT INTO objects (key, generation, modified_ns, size, body)
             VALUES (?1, ?2, ?4, ?5, {placeholder})"
        )
    };
    tx.execute(&sql, params![key, generation, value, now, size])
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
pub(super) fn delete_row(
    tx: &Connection,
    key: &str,
    condition: &Condition,
) -> Result<(), StoreError> {
    let err = db_err("deleting");
    let current = current_version(tx, key).map_err(&err)?;
    condition.check(current.as_ref(), false)?;
    tx.execute("DELETE FROM objects WHERE key = ?1", [key])
        .map_err(&err)?;
    Ok(())
}

/// Copies `from`, if it still has version `expected`, to the new key `to`
/// inside the open transaction.
pub(super) fn snapshot_row(
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
            "SELECT rowid, size FROM objects WHERE key = ?1",
            [from],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&err)?;
    if size <= SPOOL_THRESHOLD as i64 {
        tx.execute(
            "INSERT INTO objects (key, generation, modified_ns, size, body)
             SELECT ?1, ?2, ?3, size, body FROM objects WHERE key = ?4",
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
            "INSERT INTO objects (key, generation, modified_ns, size, body)
             VALUES (?1, ?2, ?3, ?4, zeroblob(?4))",
            params![to, generation, now, size],
        )
        .map_err(&err)?;
        file_to_blob(tx, tx.last_insert_rowid(), &staged, &what)?;
    }
    Ok(())
}

/// The columns of `objects` in the order [`SCHEMA`] gives them.
const COLUMNS: [&str; 5] = ["key", "generation", "modified_ns", "size", "body"];

/// The columns of the table `objects`, in order; none when there is no
/// such table yet.
fn columns(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    conn.prepare("SELECT name FROM pragma_table_info('objects') ORDER BY cid")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Whether `objects` has its `size` column: a file made before it has
/// none until a store opened for writing upgrades it.
pub(super) fn has_size(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'size'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

/// Brings a table of an older shape (`body` second, or last with no
/// `size`) to the shape of [`SCHEMA`]: the table is rebuilt with every
/// row, its generation and time kept and its size taken from its body;
/// the generation counter is untouched. All in one transaction, checked
/// again once it holds the file: another process opening the file at the
/// same time waits, then finds it done. Does nothing on a new file.
pub(super) fn upgrade_table(conn: &Connection) -> Result<(), rusqlite::Error> {
    let needed = |conn: &Connection| {
        let columns = columns(conn)?;
        Ok::<_, rusqlite::Error>(!columns.is_empty() && columns != COLUMNS)
    };
    if !needed(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = (|| {
        if !needed(conn)? {
            return Ok(());
        }
        conn.execute_batch("ALTER TABLE objects RENAME TO objects_older")?;
        conn.execute_batch(SCHEMA)?;
        // In key order, both indexes grow at their end, and the rows of
        // states lie together apart from their history's.
        conn.execute_batch(
            "INSERT INTO objects (key, generation, modified_ns, size, body)
                 SELECT key, generation, modified_ns, length(body), body FROM objects_older
                 ORDER BY key;
             DROP TABLE objects_older;",
        )
    })();
    match upgraded {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

pub(super) fn db_err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| failure(context, e)
}

/// Translates a SQLite error met while `context`: a full device or a
/// read-only file are the store refusing writes, anything else a failure.
pub(super) fn failure(context: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::no_space(),
        Some(rusqlite::ErrorCode::ReadOnly) => {
            StoreError::NotWritable("the database file is read-only".into())
        }
        _ => StoreError::unavailable(format!("{context}: {e}")),
    }
}

/// The version of `key` now, inside the transaction.
pub(super) fn current_version(
    tx: &Connection,
    key: &str,
) -> Result<Option<Version>, rusqlite::Error> {
    tx.query_row(
        "SELECT generation FROM objects WHERE key = ?1",
        [key],
        |r| Ok(Version(r.get::<_, i64>(0)?.to_string())),
    )
    .optional()
}

/// The body of row `rowid`, copied a piece at a time into an unnamed
/// temporary file.
pub(super) fn blob_to_file(
    conn: &Connection,
    rowid: i64,
    len: u64,
    what: &str,
) -> Result<Payload, StoreError> {
    let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
    let blob = conn
        .blob_open(MAIN_DB, c"objects", c"body", rowid, true)
        .map_err(db_err(what))?;
    let mut file = tempfile::tempfile_in(crate::stores::payload::spool_dir()).map_err(io_err)?;
    std::io::copy(
        &mut std::io::BufReader::with_capacity(crate::stores::payload::CHUNK_BYTES, blob),
        &mut file,
    )
    .map_err(io_err)?;
    Ok(Payload::File(Arc::new(FileBody::new(file, len))))
}

/// Writes `body` a piece at a time into row `rowid`, whose body is an
/// empty blob of its size.
pub(super) fn file_to_blob(
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
pub(super) fn prefix_upper_bound(prefix: &str) -> String {
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
pub(super) fn next_generation(tx: &Connection) -> Result<i64, rusqlite::Error> {
    tx.query_row(
        "UPDATE generation SET last = last + 1 WHERE id = 1 RETURNING last",
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::{Path, PathBuf};

    use crate::stores::{OpList, Store};

    use crate::stores::StoreExt;
    use crate::stores::sqlite::SqliteStore;

    #[test]
    fn prefix_bounds_cover_exactly_the_prefix() {
        assert_eq!(prefix_upper_bound(""), "\u{10ffff}");
        assert_eq!(prefix_upper_bound("a/b/"), "a/b0");
        assert_eq!(prefix_upper_bound("a\u{7f}"), "b");
        assert_eq!(prefix_upper_bound("\u{7f}"), "\u{10ffff}");
        // Non-ASCII bytes are never raised into invalid UTF-8.
        assert_eq!(prefix_upper_bound("aé"), "b");
    }

    /// `objects` as a file made when `body` was the second column has it.
    const BODY_SECOND: &str =
        "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, body BLOB NOT NULL,
             generation INTEGER NOT NULL, modified_ns INTEGER NOT NULL)";

    /// `objects` as a file made before the `size` column has it.
    const BODY_LAST_WITHOUT_SIZE: &str =
        "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, generation INTEGER NOT NULL,
             modified_ns INTEGER NOT NULL, body BLOB NOT NULL)";

    /// A database file in `dir` with `objects` made by `table`, holding the
    /// state `a/state` (`{}`, generation 7), a history row of it (three
    /// bytes, generation 6), and the counter at 7.
    fn older_file(dir: &Path, table: &str) -> PathBuf {
        let path = dir.join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(table).unwrap();
        conn.execute_batch(
            "CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
             INSERT INTO generation VALUES (1, 7);
             INSERT INTO objects (key, body, generation, modified_ns)
                 VALUES ('.stategate/history/a/state/0000000001.tfstate', x'7b7d0a', 6, 900);
             INSERT INTO objects (key, body, generation, modified_ns)
                 VALUES ('a/state', x'7b7d', 7, 1000);",
        )
        .unwrap();
        path
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
    /// has the current table and index, every row with its generation,
    /// time and size, and the counter.
    async fn upgraded_with_its_rows(path: &Path) {
        let store = SqliteStore::open_file(path).unwrap();
        let conn = Connection::open(path).unwrap();
        assert_eq!(columns(&conn).unwrap(), COLUMNS);
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
        // Opening it again finds nothing to do.
        drop(SqliteStore::open_file(path).unwrap());
        assert_eq!(store.get("a/state").await.unwrap().unwrap().version, next);
    }

    /// A file made when `body` was the second column is rebuilt with it
    /// last and a size for every row, keeping every row, generation and
    /// the counter.
    #[tokio::test]
    async fn an_older_table_gets_body_last_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        upgraded_with_its_rows(&older_file(dir.path(), BODY_SECOND)).await;
    }

    /// A file made with `body` last but before the `size` column is
    /// rebuilt the same way.
    #[tokio::test]
    async fn a_table_without_sizes_gets_them_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        upgraded_with_its_rows(&older_file(dir.path(), BODY_LAST_WITHOUT_SIZE)).await;
    }

    /// The pages of the older table, free once it is copied, go back to
    /// the device when the file is opened, not at its first write.
    #[tokio::test]
    async fn an_upgrade_gives_the_older_tables_pages_back() {
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
    /// and finds it done, and neither fails.
    #[tokio::test]
    async fn two_stores_opening_an_older_file_at_once_upgrade_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = older_file(dir.path(), BODY_SECOND);
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
            open.join()
                .unwrap()
                .expect("opening while another upgrades");
        }
        upgraded_with_its_rows(&path).await;
    }

    /// A listing of states reads the covering index alone, never the
    /// table, where their rows lie among their history's.
    #[test]
    fn a_listing_reads_the_covering_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        drop(SqliteStore::open_file(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                super::super::listing_query(true)
            ))
            .unwrap()
            .query_map(params!["a", "b", "a"], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            plan,
            ["SEARCH objects USING COVERING INDEX objects_listing (key>? AND key<?)"]
        );
    }

    /// A store opened for reading only (a full or read-only device) cannot
    /// upgrade an older file, and lists it as it is, sizes and all.
    #[tokio::test]
    async fn a_read_only_store_lists_an_older_file() {
        for table in [BODY_SECOND, BODY_LAST_WITHOUT_SIZE] {
            let dir = tempfile::tempdir().unwrap();
            let path = older_file(dir.path(), table);
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
            assert_eq!(everything.len(), 2, "{table}");
            assert_eq!(store.get("a/state").await.unwrap().unwrap().body, "{}");
            let conn = Connection::open(&path).unwrap();
            assert!(!has_size(&conn).unwrap(), "the file is left as it was");
        }
    }
}
