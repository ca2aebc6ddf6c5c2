//! The rows themselves: conditional writes, deletes and copies inside an
//! open transaction, and bodies moved between rows and files a piece at a
//! time.

use std::sync::Arc;

use rusqlite::{Connection, MAIN_DB, OptionalExtension, params};
use time::OffsetDateTime;

use super::schema::Shape;
use crate::stores::payload::FileBody;
use crate::stores::{Change, Condition, Payload, Stopped, StoreError, Version};

/// Writes `key` under `condition` inside the open transaction, in a body
/// row of its own; the body the object named before is let go.
pub(super) fn put_row(
    tx: &Connection,
    key: &str,
    body: &Payload,
    condition: &Condition,
) -> Result<Version, StoreError> {
    let err = db_err("writing");
    let current = current_row(tx, key).map_err(&err)?;
    condition.check(current.as_ref().map(|c| &c.version), true)?;
    let generation = next_generation(tx).map_err(&err)?;
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let body_id = insert_body(tx, body, key)?;
    let size = body.len() as i64;
    match current {
        Some(old) => {
            tx.prepare_cached(
                "UPDATE objects SET generation = ?2, modified_ns = ?3, size = ?4, body_id = ?5
                 WHERE key = ?1",
            )
            .and_then(|mut s| s.execute(params![key, generation, now, size, body_id]))
            .map_err(&err)?;
            let_go(tx, old.body_id).map_err(&err)?;
        }
        None => insert_object(tx, key, generation, now, size, body_id).map_err(&err)?,
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
    let current = current_row(tx, key).map_err(&err)?;
    condition.check(current.as_ref().map(|c| &c.version), false)?;
    if let Some(row) = current {
        tx.prepare_cached("DELETE FROM objects WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(&err)?;
        let_go(tx, row.body_id).map_err(&err)?;
    }
    Ok(())
}

/// Copies `from`, if it still has version `expected`, to the new key `to`
/// inside the open transaction: the copy names the same body, so no byte
/// of it is written again.
pub(super) fn snapshot_row(
    tx: &Connection,
    from: &str,
    expected: Version,
    to: &str,
) -> Result<(), StoreError> {
    let err = db_err("copying");
    let source = current_row(tx, from).map_err(&err)?;
    Condition::IfMatch(expected).check(source.as_ref().map(|s| &s.version), true)?;
    let source = source.expect("a version matched, so the row exists");
    let target = current_version(tx, to).map_err(&err)?;
    Condition::IfAbsent.check(target.as_ref(), true)?;
    let generation = next_generation(tx).map_err(&err)?;
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    insert_object(tx, to, generation, now, source.size, source.body_id).map_err(&err)?;
    Ok(())
}

/// Makes `changes` in order inside the open transaction, until one fails:
/// that one is undone and named, the ones before it stay made. `Err` when
/// the transaction itself failed.
///
/// Each change reads its condition before it changes a row, so a refused
/// one changed nothing. When `isolated`, each change runs in a savepoint of
/// its own, and any failure is undone alone; otherwise only a refusal
/// ends the run, and any other failure is given as `Err` for the writer,
/// which undoes the whole transaction (see `Undo::Checked`).
pub(super) fn change_rows(
    tx: &Connection,
    changes: &[Change],
    isolated: bool,
) -> Result<Option<Stopped>, StoreError> {
    let err = db_err("changing history");
    for (at, change) in changes.iter().enumerate() {
        if isolated {
            tx.execute_batch("SAVEPOINT change").map_err(&err)?;
        }
        let made = match change {
            Change::Write {
                key, body, args, ..
            } => put_row(tx, key, &Payload::Memory(body.clone()), &args.condition).map(drop),
            Change::Delete { key, args } => delete_row(tx, key, &args.condition),
            Change::Snapshot {
                from,
                from_version,
                to,
                ..
            } => snapshot_row(tx, from, from_version.clone(), to),
        };
        match made {
            Ok(()) if isolated => tx.execute_batch("RELEASE change").map_err(&err)?,
            Ok(()) => {}
            Err(error) if isolated => {
                tx.execute_batch("ROLLBACK TO change; RELEASE change")
                    .map_err(&err)?;
                return Ok(Some(Stopped { at, error }));
            }
            Err(error) if error.is_refusal() => return Ok(Some(Stopped { at, error })),
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// An object's row as the writes need it.
struct Row {
    version: Version,
    size: i64,
    body_id: i64,
}

/// The row of `key` now, inside the transaction.
fn current_row(tx: &Connection, key: &str) -> Result<Option<Row>, rusqlite::Error> {
    tx.prepare_cached("SELECT generation, size, body_id FROM objects WHERE key = ?1")?
        .query_row([key], |r| {
            Ok(Row {
                version: Version(r.get::<_, i64>(0)?.to_string()),
                size: r.get(1)?,
                body_id: r.get(2)?,
            })
        })
        .optional()
}

fn insert_object(
    tx: &Connection,
    key: &str,
    generation: i64,
    now: i64,
    size: i64,
    body_id: i64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO objects (key, generation, modified_ns, size, body_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![key, generation, now, size, body_id])
    .map(drop)
}

/// Stores `body` in a new row of `bodies` and gives its id. A body in a file goes in as an empty blob of its size, then is
/// written into it a piece at a time.
fn insert_body(tx: &Connection, body: &Payload, key: &str) -> Result<i64, StoreError> {
    let err = db_err("writing");
    match body.as_memory() {
        Some(bytes) => {
            tx.prepare_cached("INSERT INTO bodies (body) VALUES (?1)")
                .and_then(|mut s| s.execute([&bytes[..]]))
                .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        }
        None => {
            tx.prepare_cached("INSERT INTO bodies (body) VALUES (zeroblob(?1))")
                .and_then(|mut s| s.execute([body.len() as i64]))
                .map_err(&err)?;
            let id = tx.last_insert_rowid();
            file_to_blob(tx, id, body, &format!("writing {key}"))?;
            Ok(id)
        }
    }
}

/// One object fewer names body `id` (its row changed or is gone): the
/// body goes when no other does.
fn let_go(tx: &Connection, id: i64) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "DELETE FROM bodies WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM objects WHERE body_id = ?1)",
    )?
    .execute([id])
    .map(drop)
}

/// An object whose body's row is gone: the file was damaged (by hand; no
/// write of stategate deletes a body an object names). Unavailable, not
/// absent: a state answered as absent is one Terraform would create again.
pub(super) fn body_missing(key: &str) -> StoreError {
    StoreError::unavailable(format!(
        "reading {key}: its body is missing from the database file"
    ))
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
    tx.prepare_cached("SELECT generation FROM objects WHERE key = ?1")?
        .query_row([key], |r| Ok(Version(r.get::<_, i64>(0)?.to_string())))
        .optional()
}

/// The body of row `rowid` of the file's body table, copied a piece at a time into an unnamed
/// temporary file.
pub(super) fn blob_to_file(
    conn: &Connection,
    shape: Shape,
    rowid: i64,
    len: u64,
    what: &str,
) -> Result<Payload, StoreError> {
    let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
    let blob = conn
        .blob_open(MAIN_DB, shape.body_table(), c"body", rowid, true)
        .map_err(db_err(what))?;
    let mut file = tempfile::tempfile_in(crate::stores::payload::spool_dir()).map_err(io_err)?;
    std::io::copy(
        &mut std::io::BufReader::with_capacity(crate::stores::payload::CHUNK_BYTES, blob),
        &mut file,
    )
    .map_err(io_err)?;
    Ok(Payload::File(Arc::new(FileBody::new(file, len))))
}

/// Writes `body` a piece at a time into row `rowid` of `bodies`, an empty
/// blob of its size.
fn file_to_blob(
    conn: &Connection,
    rowid: i64,
    body: &Payload,
    what: &str,
) -> Result<(), StoreError> {
    let io_err = |e: std::io::Error| StoreError::unavailable(format!("{what}: {e}"));
    let mut blob = conn
        .blob_open(MAIN_DB, c"bodies", c"body", rowid, false)
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
    tx.prepare_cached("UPDATE generation SET last = last + 1 WHERE id = 1 RETURNING last")?
        .query_row([], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::sqlite::SqliteStore;
    use crate::stores::{OpDelete, OpRead, OpSnapshot, OpWrite, Store};

    #[test]
    fn prefix_bounds_cover_exactly_the_prefix() {
        assert_eq!(prefix_upper_bound(""), "\u{10ffff}");
        assert_eq!(prefix_upper_bound("a/b/"), "a/b0");
        assert_eq!(prefix_upper_bound("a\u{7f}"), "b");
        assert_eq!(prefix_upper_bound("\u{7f}"), "\u{10ffff}");
        // Non-ASCII bytes are never raised into invalid UTF-8.
        assert_eq!(prefix_upper_bound("aé"), "b");
    }

    /// `len` bytes no two calls repeat, which no page compresses.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `bytes` as the store is given them: in memory, or (over the spool
    /// threshold) in a file, as a large upload is.
    fn payload(bytes: &[u8]) -> Payload {
        if bytes.len() <= crate::stores::payload::SPOOL_THRESHOLD {
            return Payload::Memory(bytes::Bytes::copy_from_slice(bytes));
        }
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        Payload::File(Arc::new(FileBody::new(file, bytes.len() as u64)))
    }

    /// Every body in the file: its id and how many objects name it.
    fn bodies(path: &std::path::Path) -> Vec<(i64, i64)> {
        Connection::open(path)
            .unwrap()
            .prepare(
                "SELECT id, (SELECT count(*) FROM objects WHERE body_id = id)
                 FROM bodies ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Creates the state `s` with `body`, then its history copy `h/1`;
    /// gives the state's version.
    async fn state_and_copy(store: &SqliteStore, body: &[u8]) -> Version {
        let written = store
            .write("s", payload(body), OpWrite::new(Condition::IfAbsent))
            .await
            .unwrap();
        copy(store, &written, body).await;
        written
    }

    /// Copies the state `s`, at version `written`, to `h/1`.
    async fn copy(store: &SqliteStore, written: &Version, body: &[u8]) {
        store
            .snapshot(OpSnapshot {
                from: "s",
                from_version: written,
                to: "h/1",
                body: &payload(body),
            })
            .await
            .unwrap();
    }

    async fn read(store: &SqliteStore, key: &str) -> Vec<u8> {
        let (body, _) = store.read(key, OpRead::streamed()).await.unwrap().unwrap();
        body.to_bytes().await.unwrap().to_vec()
    }

    /// A history copy names its state's body; replacing the state keeps
    /// the copy's bytes, and the body goes when the last object naming it
    /// does: for bodies in memory and in files alike.
    #[tokio::test]
    async fn a_copy_shares_its_states_body_until_the_last_one_goes() {
        for len in [3_000, crate::stores::payload::SPOOL_THRESHOLD + 5_000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("shared.db");
            let store = SqliteStore::open_file(&path).unwrap();
            let (first, second) = (noise(len, 1), noise(len, 2));
            let written = state_and_copy(&store, &first).await;
            let shared = bodies(&path);
            assert_eq!(
                shared.len(),
                1,
                "{len}: one body for the state and its copy"
            );
            assert_eq!(shared[0].1, 2, "{len}: named twice");
            store
                .write(
                    "s",
                    payload(&second),
                    OpWrite::new(Condition::IfMatch(written)),
                )
                .await
                .unwrap();
            assert_eq!(read(&store, "h/1").await, first, "{len}: the copy kept");
            assert_eq!(read(&store, "s").await, second, "{len}: the state replaced");
            assert_eq!(
                bodies(&path).iter().map(|b| b.1).collect::<Vec<_>>(),
                [1, 1]
            );
            store
                .delete("h/1", OpDelete::new(Condition::Always))
                .await
                .unwrap();
            assert_eq!(
                bodies(&path).len(),
                1,
                "{len}: the copy's body went with it"
            );
            assert_eq!(read(&store, "s").await, second);
            store
                .delete("s", OpDelete::new(Condition::Always))
                .await
                .unwrap();
            assert!(bodies(&path).is_empty(), "{len}: nothing left");
        }
    }

    /// An object whose body's row was deleted by hand reads as unavailable,
    /// whole or streamed, never as absent; writing it again mends it.
    #[tokio::test]
    async fn an_object_whose_body_is_gone_is_unavailable_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.db");
        let store = SqliteStore::open_file(&path).unwrap();
        let written = state_and_copy(&store, b"{}").await;
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM bodies", [])
            .unwrap();
        for streamed in [false, true] {
            let args = OpRead {
                streamed,
                ..OpRead::default()
            };
            let read = store.read("s", args).await;
            assert!(
                matches!(&read, Err(e) if e.is_unavailable()),
                "streamed {streamed}: {:?}",
                read.map(|r| r.map(|(_, v)| v))
            );
        }
        store
            .write(
                "s",
                payload(b"[]"),
                OpWrite::new(Condition::IfMatch(written)),
            )
            .await
            .unwrap();
        assert_eq!(read(&store, "s").await, b"[]");
    }

    /// What sharing is for: a state and the copy history keeps of it take
    /// the room of one body in the file, not two, and making the copy
    /// writes no page of the body again.
    #[tokio::test]
    async fn a_version_kept_in_history_costs_no_second_copy_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("room.db");
        let store = SqliteStore::open_file(&path).unwrap();
        let len = 4 << 20;
        let body = noise(len, 3);
        let written = store
            .write("s", payload(&body), OpWrite::new(Condition::IfAbsent))
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        copy(&store, &written, &body).await;
        let log = std::fs::metadata(dir.path().join("room.db-wal"))
            .unwrap()
            .len();
        assert!(log < 256 << 10, "the copy wrote {log} bytes to the log");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let used: i64 = conn
            .query_row(
                "SELECT (page_count - freelist_count) * page_size
                 FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            used < len as i64 * 5 / 4,
            "{used} bytes in use for a body of {len} kept twice"
        );
        assert_eq!(read(&store, "h/1").await, body);
    }
}
