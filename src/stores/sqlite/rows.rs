//! The rows themselves: conditional writes, deletes and copies inside an
//! open transaction, bodies moved between rows and files a piece at a
//! time, and the upgrade of an older table.

use std::sync::Arc;

use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use time::OffsetDateTime;

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
            "UPDATE objects SET generation = ?2, body = {placeholder}, modified_ns = ?4 WHERE key = ?1"
        )
    } else {
        format!(
            "INSERT INTO objects (key, generation, body, modified_ns) VALUES (?1, ?2, {placeholder}, ?4)"
        )
    };
    tx.execute(&sql, params![key, generation, value, now])
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
            "SELECT rowid, length(body) FROM objects WHERE key = ?1",
            [from],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&err)?;
    if size <= SPOOL_THRESHOLD as i64 {
        tx.execute(
            "INSERT INTO objects (key, generation, modified_ns, body)
             SELECT ?1, ?2, ?3, body FROM objects WHERE key = ?4",
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
            "INSERT INTO objects (key, generation, modified_ns, body)
             VALUES (?1, ?2, ?3, zeroblob(?4))",
            params![to, generation, now, size],
        )
        .map_err(&err)?;
        file_to_blob(tx, tx.last_insert_rowid(), &staged, &what)?;
    }
    Ok(())
}

/// Rebuilds a table made before `body` came last (see [`SCHEMA`]), once,
/// in one transaction; another process opening the file at the same time
/// waits and then finds it done.
pub(super) fn move_body_last(conn: &Connection) -> Result<(), rusqlite::Error> {
    let last_column = |conn: &Connection| {
        conn.query_row(
            "SELECT name FROM pragma_table_info('objects') ORDER BY cid DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
    };
    if last_column(conn)? == "body" {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| {
        if last_column(conn)? == "body" {
            return Ok(());
        }
        conn.execute_batch(
            "CREATE TABLE objects_body_last (
                 key TEXT PRIMARY KEY NOT NULL,
                 generation INTEGER NOT NULL,
                 modified_ns INTEGER NOT NULL,
                 body BLOB NOT NULL
             );
             INSERT INTO objects_body_last (key, generation, modified_ns, body)
                 SELECT key, generation, modified_ns, body FROM objects;
             DROP TABLE objects;
             ALTER TABLE objects_body_last RENAME TO objects;",
        )
    })();
    match moved {
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

    /// A file made when `body` was the second column is rebuilt with it
    /// last, keeping every row, generation and the counter.
    #[tokio::test]
    async fn an_older_table_gets_body_last_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE objects (key TEXT PRIMARY KEY NOT NULL, body BLOB NOT NULL,
                     generation INTEGER NOT NULL, modified_ns INTEGER NOT NULL);
                 CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
                 INSERT INTO generation VALUES (1, 7);
                 INSERT INTO objects VALUES ('a/state', x'7b7d', 7, 1000);",
            )
            .unwrap();
        }
        let store = SqliteStore::open_file(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('objects') ORDER BY cid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(columns, ["key", "generation", "modified_ns", "body"]);
        let obj = store.get("a/state").await.unwrap().unwrap();
        assert_eq!((&obj.body[..], obj.version.0.as_str()), (&b"{}"[..], "7"));
        let next = store
            .put(
                "a/state",
                Bytes::from_static(b"[]"),
                Condition::IfMatch(obj.version),
            )
            .await
            .unwrap();
        assert_eq!(next.0, "8", "the generation counter is kept");
        // Opening it again finds nothing to do.
        drop(SqliteStore::open_file(&path).unwrap());
        assert_eq!(store.get("a/state").await.unwrap().unwrap().version, next);
    }
}
