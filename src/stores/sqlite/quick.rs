//! Short reads made on the calling thread.
//!
//! Most reads of a write are of a few rows: whether the state is locked
//! (its lock object), its version, where its history ends (the pointer).
//! Each takes SQLite a few microseconds on pages it has in memory; handing
//! it to a blocking thread and its answer back takes more than that (two
//! wake-ups and two switches of thread), and a new state's write makes
//! three of them. So such a read runs where it is asked, on a connection
//! idle in the pool, and is handed to a thread only when it cannot be
//! made at once: no connection is idle (others are reading), SQLite
//! answers busy (another process rebuilding the log's index after a crash:
//! the read must wait for it, and waits on a thread, where the busy
//! timeout applies), or the body is longer than [`QUICK_BYTES`] (a state,
//! which is read on a thread, a piece at a time when large).

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{body_missing, current_version, db_err};
use super::schema::SHORT_QUERY;
use super::{BUSY_TIMEOUT, SqliteStore};
use crate::stores::{Payload, QUICK_BYTES, StoreError, Version};

impl SqliteStore {
    /// The version of `key`, read here when it can be (`None`: hand it to
    /// a thread).
    pub(super) fn stat_quick(&self, key: &str) -> Option<Result<Option<Version>, StoreError>> {
        self.run_quick(|conn| {
            current_version(conn, key)
                .map(Some)
                .map_err(db_err("reading"))
        })
    }

    /// The body of `key` whole with its version, read here when it can be
    /// (`None`: hand it to a thread).
    pub(super) fn read_quick(
        &self,
        key: &str,
    ) -> Option<Result<Option<(Payload, Version)>, StoreError>> {
        self.run_quick(|conn| {
            // One statement, so one look at the file as it is; a body too
            // long to read here is not read. Only a store opened for
            // writing reads here, and it rebuilt its file to the shared
            // shape.
            let row = conn
                .prepare_cached(SHORT_QUERY)
                .and_then(|mut s| {
                    s.query_row(params![key, QUICK_BYTES as i64], |r| {
                        Ok((
                            r.get::<_, Option<Vec<u8>>>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                })
                .optional()
                .map_err(db_err("reading"))?;
            match row {
                None => Ok(Some(None)),
                Some((_, None, _)) => Err(body_missing(key)),
                Some((None, Some(_), _)) => Ok(None),
                Some((Some(body), Some(_), generation)) => Ok(Some(Some((
                    Payload::Memory(Bytes::from(body)),
                    Version(generation.to_string()),
                )))),
            }
        })
    }

    /// Runs `f` here on an idle connection, which may not wait for the
    /// file. `None` when it was not made, or `f` found more than a short
    /// read (`Ok(None)`): the caller hands it to a thread. A store opened
    /// read-only reads every time in a transaction of its own (another
    /// process may rebuild its file), on a thread.
    fn run_quick<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<Option<T>, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let pool = &self.0.pool;
        if pool.read_only {
            return None;
        }
        let conn = pool.idle.lock().expect("pool lock").pop()?;
        // Checked before the read only: the check after an operation tells
        // a write that it landed in a file removed meanwhile, and a read
        // changes nothing.
        if let Err(e) = pool.check_identity() {
            return Some(Err(e));
        }
        conn.busy_timeout(std::time::Duration::ZERO).ok()?;
        let result = f(&conn);
        // A connection whose read failed (busy, or worse) is not kept, as
        // on a thread.
        let failed = matches!(&result, Err(e) if e.is_unavailable());
        if conn.busy_timeout(BUSY_TIMEOUT).is_ok() && !failed {
            pool.idle.lock().expect("pool lock").push(conn);
        }
        match result {
            Ok(found) => found.map(Ok),
            // Made again on a thread, where it may wait: a busy file is
            // answered at once here.
            Err(_) if failed => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::{Condition, OpRead, OpWrite, Store};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_file(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    async fn put(store: &SqliteStore, key: &str, body: Vec<u8>) -> Version {
        store
            .write(
                key,
                Payload::Memory(body.into()),
                OpWrite::new(Condition::Always),
            )
            .await
            .unwrap()
    }

    async fn whole(store: &SqliteStore, key: &str) -> Option<(Vec<u8>, Version)> {
        let (body, version) = store.read(key, OpRead::default()).await.unwrap()?;
        Some((body.to_bytes().await.unwrap().to_vec(), version))
    }

    #[tokio::test]
    async fn short_reads_are_made_here_and_long_bodies_on_a_thread() {
        let (_dir, store) = store();
        let short = vec![b'a'; QUICK_BYTES as usize];
        let long = vec![b'b'; QUICK_BYTES as usize + 1];
        let v_short = put(&store, "short", short.clone()).await;
        let v_long = put(&store, "long", long.clone()).await;
        assert_eq!(whole(&store, "short").await, Some((short, v_short.clone())));
        assert_eq!(whole(&store, "long").await, Some((long, v_long.clone())));
        assert_eq!(whole(&store, "none").await, None);
        // The long body is not read here: it is left to the thread.
        assert!(store.read_quick("long").is_none());
        assert!(matches!(store.read_quick("short"), Some(Ok(Some(_)))));
        assert!(matches!(store.read_quick("none"), Some(Ok(None))));
        assert_eq!(store.stat_quick("short").unwrap().unwrap(), Some(v_short));
        assert_eq!(store.stat("long").await.unwrap(), Some(v_long));
        assert_eq!(store.stat("none").await.unwrap(), None);
    }
}
