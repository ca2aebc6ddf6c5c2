//! The writer thread's group commit, seen from the store: writes queued
//! together share a commit, each gets its own answer, and a failure
//! undoes only what it must.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use super::*;
use crate::stores::StoreExt;
use bytes::Bytes;

use crate::stores::sqlite::SqliteStore;
use crate::stores::{Change, Condition, OpWrite, Payload, Store, Version};

/// A write sent to the writer, still to be awaited.
type Queued<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

type Put = Queued<Version>;

/// Holds the writer thread in a write of its own until the returned
/// sender is used; returns once the writer is inside it.
async fn hold_writer(
    store: &SqliteStore,
) -> (
    tokio::task::JoinHandle<Result<(), StoreError>>,
    std::sync::mpsc::Sender<()>,
) {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_write("holding".into(), 0, Undo::Savepoint, move |_, _| {
                    started_tx.send(()).unwrap();
                    gate.recv().unwrap();
                    Ok(())
                })
                .await
        })
    };
    tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    (holder, gate_tx)
}

/// Sends `write` to the held writer (one poll queues it) and gives it
/// back, to be awaited.
async fn sent<T>(mut write: Queued<T>) -> Queued<T> {
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    write
}

/// Queues a put behind the held writer.
async fn queue(store: &SqliteStore, key: String, body: Bytes) -> Put {
    let store = store.clone();
    sent(Box::pin(async move {
        store.put(&key, body, Condition::IfAbsent).await
    }))
    .await
}

/// Queues the write `f`, to run bare, behind the held writer.
async fn queue_bare<T: Send + 'static>(
    store: &SqliteStore,
    f: impl Fn(&Connection, Undo) -> Result<T, StoreError> + Send + 'static,
) -> Queued<T> {
    let store = store.clone();
    sent(Box::pin(async move {
        store.run_write("queued".into(), 0, Undo::Checked, f).await
    }))
    .await
}

/// A store in a new file; the directory goes when it is dropped.
fn new_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_file(&dir.path().join("g.db")).unwrap();
    (dir, store)
}

/// Queues creates of `(key, body)` while the writer is held in a write
/// of its own, then lets it go. Gives the creates, still to be
/// awaited, and the count of commits from before the held write's.
async fn queued_behind_a_write(
    store: &SqliteStore,
    creates: impl IntoIterator<Item = (String, Bytes)>,
) -> (Vec<Put>, u64) {
    let (holder, gate) = hold_writer(store).await;
    let before = store.commits();
    let mut puts = Vec::new();
    for (key, body) in creates {
        puts.push(queue(store, key, body).await);
    }
    gate.send(()).unwrap();
    holder.await.unwrap().unwrap();
    (puts, before)
}

/// Writes queued while the writer is busy go into one transaction
/// together, and each still gets its own answer: of 64 creates of 16
/// keys, exactly one per key wins and its bytes are stored.
#[tokio::test]
async fn writes_queued_together_share_one_commit() {
    let (_dir, store) = new_store();
    let creates = (0..64).map(|i| (format!("k{}", i % 16), Bytes::from(format!("writer {i}"))));
    let (puts, before) = queued_behind_a_write(&store, creates).await;
    let mut winners = BTreeMap::new();
    for (i, put) in puts.into_iter().enumerate() {
        match put.await {
            Ok(_) => assert!(
                winners.insert(i % 16, i).is_none(),
                "two winners for k{}",
                i % 16
            ),
            Err(StoreError::AlreadyExists) => {}
            Err(e) => panic!("writer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 16);
    for (key, writer) in winners {
        let obj = store.get(&format!("k{key}")).await.unwrap().unwrap();
        assert_eq!(obj.body, format!("writer {writer}"));
    }
    assert_eq!(
        store.commits() - before,
        2,
        "the held write's commit, then one for all 64 queued behind it"
    );
}

/// A write running bare (no savepoint) that fails after changing a
/// row is undone with the whole transaction: it is answered with its
/// own error, run once, and the writes queued beside it commit, run
/// again each in a savepoint.
#[tokio::test]
async fn a_bare_write_that_fails_is_undone_and_the_others_commit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_dir, store) = new_store();
    let (holder, gate) = hold_writer(&store).await;
    let before = store.commits();
    let first = queue(&store, "first".into(), Bytes::from_static(b"1")).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let failing = queue_bare(&store, move |tx, undo| {
        counted.fetch_add(1, Ordering::SeqCst);
        assert_eq!(undo, Undo::Checked, "run again after failing");
        let body = Payload::Memory(Bytes::from_static(b"half"));
        super::super::rows::put_row(tx, "half-made", &body, &Condition::Always)?;
        Err::<(), _>(StoreError::unavailable("failed after a change"))
    })
    .await;
    let last = queue(&store, "last".into(), Bytes::from_static(b"2")).await;
    gate.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let failed = failing.await.unwrap_err();
    assert!(
        failed.to_string().contains("failed after a change"),
        "{failed}"
    );
    first.await.unwrap();
    last.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(store.get("half-made").await.unwrap().is_none());
    assert_eq!(store.get("first").await.unwrap().unwrap().body, "1");
    assert_eq!(store.get("last").await.unwrap().unwrap().body, "2");
    assert_eq!(
        store.commits() - before,
        2,
        "the held write's commit, then the others' without the failed one"
    );
}

/// A transaction SQLite gave up (here, ended under the writer's
/// feet) fails every write in the batch with that failure, those
/// queued behind the one it broke in included.
#[tokio::test]
async fn a_transaction_given_up_answers_every_write_of_its_batch() {
    let (_dir, store) = new_store();
    let (holder, gate) = hold_writer(&store).await;
    let breaking = queue_bare(&store, |tx, _| {
        tx.execute_batch("ROLLBACK")
            .map_err(|e| StoreError::unavailable(e.to_string()))
    })
    .await;
    let behind = queue(&store, "behind".into(), Bytes::from_static(b"{}")).await;
    gate.send(()).unwrap();
    holder.await.unwrap().unwrap();
    for answer in [breaking.await.map(drop), behind.await.map(drop)] {
        let failure = answer.unwrap_err().to_string();
        assert!(failure.contains("transaction was rolled back"), "{failure}");
    }
    assert!(store.get("behind").await.unwrap().is_none());
}

/// A refused bare write changes nothing and needs no undo: the writes
/// beside it commit in the same transaction, run once.
#[tokio::test]
async fn a_refused_bare_write_leaves_the_transaction_to_the_others() {
    let (_dir, store) = new_store();
    store
        .put("taken", Bytes::from_static(b"old"), Condition::Always)
        .await
        .unwrap();
    let creates = [("taken", "new"), ("free", "mine")]
        .map(|(k, b)| (k.to_string(), Bytes::from_static(b.as_bytes())));
    let (puts, before) = queued_behind_a_write(&store, creates).await;
    let mut answers = Vec::new();
    for put in puts {
        answers.push(put.await.map(drop).map_err(|e| e.to_string()));
    }
    assert_eq!(answers[0], Err(StoreError::AlreadyExists.to_string()));
    assert!(answers[1].is_ok());
    assert_eq!(store.get("taken").await.unwrap().unwrap().body, "old");
    assert_eq!(store.commits() - before, 2);
}

/// The changes of one `change_all` (a history record, its pruning and
/// pointer) commit together, once.
#[tokio::test]
async fn changes_made_together_commit_once() {
    let (_dir, store) = new_store();
    let v = store
        .put("s", Bytes::from_static(b"state"), Condition::Always)
        .await
        .unwrap();
    let before = store.commits();
    let put = |key: &str| Change::Write {
        key: key.into(),
        body: Bytes::from_static(b"{}"),
        args: OpWrite::new(Condition::Always),
        same_as: None,
    };
    let changes = vec![
        Change::Snapshot {
            from: "s".into(),
            from_version: v,
            to: "h/1".into(),
            body: Payload::Memory(Bytes::new()),
        },
        put("h/1.json"),
        put("h/newest.json"),
    ];
    store.change_all(changes).await.unwrap();
    assert_eq!(store.commits() - before, 1);
    assert_eq!(store.get("h/1").await.unwrap().unwrap().body, "state");
}

/// A write and the changes built from its version (a history copy of
/// it, its record, the pointer) commit once, together; a change refused
/// after the write is undone alone, the write and the changes before it
/// standing.
#[tokio::test]
async fn a_write_and_its_changes_commit_once() {
    let (_dir, store) = new_store();
    store
        .put("h/2.json", Bytes::from_static(b"taken"), Condition::Always)
        .await
        .unwrap();
    for (n, refused_at) in [(1, None), (2, Some(1))] {
        let before = store.commits();
        let then: crate::stores::ThenChange = Arc::new(move |version: &Version| {
            vec![
                Change::Snapshot {
                    from: "s".into(),
                    from_version: version.clone(),
                    to: format!("h/{n}"),
                    body: Payload::Memory(Bytes::new()),
                },
                Change::Write {
                    key: format!("h/{n}.json"),
                    body: Bytes::from(format!("record {n}")),
                    args: OpWrite::new(Condition::IfAbsent),
                    same_as: None,
                },
            ]
        });
        let body = Payload::Memory(Bytes::from(format!("state {n}")));
        let (version, changed) = store
            .write_then_change("s", body, OpWrite::new(Condition::Always), then)
            .await
            .unwrap();
        assert_eq!(store.commits() - before, 1, "write {n}");
        assert_eq!(
            changed.err().map(|s| (s.at, s.error)),
            refused_at.map(|at| (at, StoreError::AlreadyExists))
        );
        assert_eq!(store.stat("s").await.unwrap(), Some(version));
        assert_eq!(
            store.get(&format!("h/{n}")).await.unwrap().unwrap().body,
            format!("state {n}")
        );
    }
    assert_eq!(
        store.get("h/1.json").await.unwrap().unwrap().body,
        "record 1"
    );
    assert_eq!(store.get("h/2.json").await.unwrap().unwrap().body, "taken");
}

/// Large bodies do not share a transaction: three 5 MiB writes queued
/// together commit one by one.
#[tokio::test]
async fn large_writes_commit_on_their_own() {
    let (_dir, store) = new_store();
    let creates = (0..3).map(|i| (format!("big{i}"), Bytes::from(vec![b'a' + i; 5 << 20])));
    let (puts, before) = queued_behind_a_write(&store, creates).await;
    for put in puts {
        put.await.unwrap();
    }
    assert_eq!(store.commits() - before, 4);
}

/// The writer works on one connection of its own, batch after batch,
/// with the larger page cache: a temporary table (which only the
/// connection that made it sees) made in one batch is there in the
/// next, after reads have used the pool's other connections.
#[tokio::test]
async fn the_writer_keeps_its_connection_and_cache_between_batches() {
    let (_dir, store) = new_store();
    let cache = store
        .run_write("marking".into(), 0, Undo::Savepoint, |conn, _| {
            conn.execute_batch("CREATE TEMP TABLE writer_mark (x)")
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            conn.pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
                .map_err(|e| StoreError::unavailable(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(cache, WRITER_CACHE_KIB);
    store
        .put("a", Bytes::from_static(b"{}"), Condition::Always)
        .await
        .unwrap();
    let reads = (0..4).map(|_| store.get("a"));
    for read in futures_util::future::join_all(reads).await {
        assert!(read.unwrap().is_some());
    }
    let marked = store
        .run_write("looking".into(), 0, Undo::Savepoint, |conn, _| {
            conn.query_row(
                "SELECT count(*) FROM temp.sqlite_master WHERE name = 'writer_mark'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| StoreError::unavailable(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(
        marked, 1,
        "the writer's next batch ran on another connection"
    );
}

/// Dropping the store while the writer is inside a batch waits for
/// the batch and closes every connection before the drop returns, so
/// SQLite has removed its log: a process that ends right after leaves
/// a whole file behind (`sqlite_closes_its_file_before_exiting`
/// end to end). The last handle used to go with the writer thread,
/// which closed the connections after the drop had returned.
#[tokio::test]
async fn dropping_the_store_waits_for_the_writer_and_closes_the_file() {
    let (dir, store) = new_store();
    store
        .put("a", Bytes::from_static(b"{}"), Condition::Always)
        .await
        .unwrap();
    let log = dir.path().join("g.db-wal");
    assert!(log.exists(), "an open store keeps its log");
    let (started_tx, started) = std::sync::mpsc::channel();
    let held = {
        let store = store.clone();
        async move {
            store
                .run_write("holding".into(), 0, Undo::Savepoint, move |_, _| {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    Ok(())
                })
                .await
        }
    };
    // One poll queues the write; dropping the future then drops the
    // clone it held, while the writer runs the write.
    let mut held = Box::pin(held);
    let first = std::future::poll_fn(|cx| Poll::Ready(held.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    drop(held);
    started.recv().unwrap();
    drop(store);
    assert!(!log.exists(), "the log is left after the store was dropped");
    assert!(!dir.path().join("g.db-shm").exists());
}

/// A write lets go of what it held before its caller hears back: a write
/// holding the store itself (as history's changes could) leaves the
/// caller's reference the last one, so dropping it closes the file, and
/// the last reference never goes on the writer's own thread (which could
/// not wait for itself: the log stayed behind).
#[tokio::test]
async fn a_write_lets_go_of_what_it_held_before_answering() {
    /// A clone of the store whose drop takes a while.
    struct SlowToDrop(#[allow(dead_code)] SqliteStore);
    impl Drop for SlowToDrop {
        fn drop(&mut self) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let (dir, store) = new_store();
    let held = SlowToDrop(store.clone());
    store
        .run_write(
            "holding the store".into(),
            0,
            Undo::Savepoint,
            move |tx, _| {
                let _ = &held;
                let body = Payload::Memory(Bytes::from_static(b"{}"));
                crate::stores::sqlite::rows::put_row(tx, "a", &body, &Condition::Always)
            },
        )
        .await
        .unwrap();
    drop(store);
    assert!(
        !dir.path().join("g.db-wal").exists(),
        "the log is left after the store was dropped"
    );
}

/// A new file is made with [`PAGE_SIZE`] pages.
#[tokio::test]
async fn a_new_file_has_large_pages() {
    let (dir, store) = new_store();
    store
        .put("a", Bytes::from_static(b"{}"), Condition::Always)
        .await
        .unwrap();
    let conn = Connection::open(dir.path().join("g.db")).unwrap();
    let size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(size, crate::stores::sqlite::PAGE_SIZE);
}

/// Deleting many states gives their pages back to the device at the
/// next write, not only to later writes inside the file.
#[tokio::test]
async fn deleting_states_gives_their_pages_back() {
    let (dir, store) = new_store();
    for i in 0..200 {
        let body = Bytes::from(vec![b'x'; 16 * 1024]);
        store
            .put(&format!("s{i}"), body, Condition::Always)
            .await
            .unwrap();
    }
    for i in 0..200 {
        store
            .delete(&format!("s{i}"), Condition::Always.into())
            .await
            .unwrap();
    }
    store
        .put("after", Bytes::from_static(b"{}"), Condition::Always)
        .await
        .unwrap();
    let conn = Connection::open(dir.path().join("g.db")).unwrap();
    let pages = |pragma: &str| {
        conn.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let free = pages("freelist_count") * pages("page_size");
    assert!(free <= FREE_BYTES_KEPT, "{free} bytes left free");
}
