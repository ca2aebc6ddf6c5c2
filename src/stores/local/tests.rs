//! Unit tests of the local store on a temporary directory: temporaries on
//! both write paths, keys below keys, a killed writer's leftovers, leases
//! across two opens of one root.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use super::{LocalStore, TMP_DIR, TMP_MARK};
use crate::stores::{Condition, OpDelete, OpList, Store, StoreError, StoreExt};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The keys a listing of `prefix` finds, in order.
pub(super) async fn listed(store: &LocalStore, prefix: &str) -> Vec<String> {
    let entries = store.list(prefix, OpList::default()).await.unwrap();
    entries.into_iter().map(|e| e.key).collect()
}

/// A store on a new directory, writing through named temporaries or
/// unnamed files.
fn fresh(named: bool) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = match named {
        true => LocalStore::open_dir_with_named_temporaries(dir.path()).unwrap(),
        false => LocalStore::open_dir(dir.path()).unwrap(),
    };
    (dir, store)
}

#[tokio::test]
async fn writes_leave_no_temporary_behind_on_either_path() {
    for named in [false, true] {
        let (dir, store) = fresh(named);
        assert_eq!(store.0.unnamed, !named, "unnamed files work here");
        let v1 = store
            .put("team/a", Bytes::from_static(b"one"), Condition::IfAbsent)
            .await
            .unwrap();
        store
            .put("team/a", Bytes::from_static(b"two"), Condition::IfMatch(v1))
            .await
            .unwrap();
        let refused = store
            .put("team/a", Bytes::from_static(b"x"), Condition::IfAbsent)
            .await;
        assert!(
            matches!(refused, Err(StoreError::AlreadyExists)),
            "{refused:?}"
        );
        assert_eq!(store.get("team/a").await.unwrap().unwrap().body, "two");
        assert_eq!(names(&dir.path().join("team")), ["a+"], "named: {named}");
        assert!(
            names(&dir.path().join(TMP_DIR)).is_empty(),
            "named: {named}"
        );
    }
}

#[tokio::test]
async fn a_key_and_the_keys_below_it_are_all_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open_dir(dir.path()).unwrap();
    // In both orders, with each one's lock, and history beside a state
    // named like a history file.
    let keys = [
        "a/b",
        "a",
        "a/b/c",
        "a.tflock",
        "a/b.tflock",
        "x/y",
        "x",
        ".stategate/history/a/newest.json/0000000001.json",
        ".stategate/history/a/newest.json",
    ];
    for key in keys {
        store
            .put(key, Bytes::from(key), Condition::IfAbsent)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    for key in keys {
        assert_eq!(store.get(key).await.unwrap().unwrap().body, key);
    }
    let mut all = keys.to_vec();
    all.sort();
    assert_eq!(listed(&store, "").await, all);
    assert_eq!(
        listed(&store, "a").await,
        ["a", "a.tflock", "a/b", "a/b.tflock", "a/b/c"]
    );
    assert_eq!(listed(&store, "a/b").await, ["a/b", "a/b.tflock", "a/b/c"]);
    assert_eq!(
        store
            .list("", OpList::outside_internal())
            .await
            .unwrap()
            .len(),
        keys.len() - 2
    );
    store
        .delete("a", OpDelete::new(Condition::Always))
        .await
        .unwrap();
    assert!(store.get("a").await.unwrap().is_none());
    assert_eq!(store.get("a/b/c").await.unwrap().unwrap().body, "a/b/c");
    // No key reaches a name the layout gives a file.
    let refused = store.get("a+").await.unwrap_err();
    assert!(refused.to_string().contains("refusing key"), "{refused}");
}

#[tokio::test]
async fn a_killed_writers_temporary_is_skipped_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open_dir(dir.path()).unwrap();
    store
        .put("team/a", Bytes::from_static(b"{}"), Condition::Always)
        .await
        .unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let dead_name = format!("{TMP_MARK}{dead}-1-2");
    let live_name = format!("{TMP_MARK}{}-1-2", std::process::id());
    for name in [&dead_name, &live_name] {
        fs::write(dir.path().join("team").join(name), b"partial").unwrap();
    }
    assert_eq!(listed(&store, "").await, ["team/a"]);
    assert_eq!(
        names(&dir.path().join("team")),
        ["a+".to_string(), live_name.clone()]
    );
    // No key can name a temporary.
    for key in [live_name.clone(), format!("team/{live_name}")] {
        let e = store.get(&key).await.unwrap_err();
        assert!(e.to_string().contains("refusing key"), "{e}");
    }
}

#[tokio::test]
async fn a_lease_excludes_another_store_on_the_root_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Two opens of one root, as two processes would have.
    let a = LocalStore::open_dir(dir.path()).unwrap();
    let b = LocalStore::open_dir(dir.path()).unwrap();
    let wait = std::time::Duration::from_millis(100);
    let held = a.native_lease("team/a", wait).await.unwrap();
    let busy = b.native_lease("team/a", wait).await.unwrap_err();
    assert!(busy.is_unavailable(), "{busy}");
    b.native_lease("team/b", wait).await.unwrap();
    drop(held);
    b.native_lease("team/a", wait).await.unwrap();
}

/// A write the same as an earlier one of its `change_all` (history's
/// pointer and its newest record) is a second name of that file, on both
/// write paths: one new file, not two. With other bytes it is a file of
/// its own, and no temporary name is left either way.
#[tokio::test]
async fn a_write_the_same_as_another_is_a_second_name_of_its_file() {
    use crate::stores::{Change, OpWrite};
    use std::os::unix::fs::MetadataExt;
    for named in [false, true] {
        let (dir, store) = fresh(named);
        let write = |key: &str, body: &'static [u8], same_as: Option<&str>| Change::Write {
            key: key.into(),
            body: Bytes::from_static(body),
            args: OpWrite::new(Condition::Always),
            same_as: same_as.map(str::to_string),
        };
        let inode = |name: &str| fs::metadata(dir.path().join("h").join(name)).unwrap();
        let changes = vec![
            write("h/1.json", b"one", None),
            write("h/newest.json", b"one", Some("h/1.json")),
        ];
        store.change_all(changes).await.unwrap();
        let (record, pointer) = (inode("1.json+"), inode("newest.json+"));
        assert_eq!(record.ino(), pointer.ino(), "named: {named}");
        assert_eq!(record.nlink(), 2, "named: {named}");

        let changes = vec![
            write("h/2.json", b"two", None),
            write("h/newest.json", b"other", Some("h/2.json")),
        ];
        store.change_all(changes).await.unwrap();
        assert_ne!(inode("2.json+").ino(), inode("newest.json+").ino());
        assert_eq!(
            inode("1.json+").nlink(),
            1,
            "the first record keeps its name"
        );
        assert_eq!(
            names(&dir.path().join("h")),
            ["1.json+", "2.json+", "newest.json+"]
        );
    }
}

/// A stat, a lease, a listing of nothing and the read of a short body are
/// made on the calling thread: they answer while the only blocking thread
/// is taken. A longer body waits for that thread.
#[test]
fn short_reads_stats_leases_and_empty_listings_take_no_blocking_thread() {
    use crate::stores::{OpRead, Payload, QUICK_BYTES};
    use std::time::Duration;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_dir, store) = fresh(false);
        let short = Bytes::from(vec![b's'; QUICK_BYTES as usize]);
        let long = Bytes::from(vec![b'l'; QUICK_BYTES as usize + 1]);
        let v_short = store
            .put("a/short", short.clone(), Condition::Always)
            .await
            .unwrap();
        store
            .put("a/long", long.clone(), Condition::Always)
            .await
            .unwrap();
        let whole = |key: &'static str| {
            let store = store.clone();
            async move {
                let (body, version) = store.read(key, OpRead::default()).await.unwrap()?;
                Some((body.to_bytes().await.unwrap(), version))
            }
        };

        let (release, held) = std::sync::mpsc::channel::<()>();
        let taken = tokio::task::spawn_blocking(move || held.recv());
        let soon = Duration::from_secs(10);
        let read = tokio::time::timeout(soon, whole("a/short")).await;
        assert_eq!(
            read.expect("a short body is read here"),
            Some((short, v_short.clone()))
        );
        let missing = tokio::time::timeout(soon, whole("a/none")).await;
        assert_eq!(missing.expect("a missing key is answered here"), None);
        let stat = tokio::time::timeout(soon, store.stat("a/short")).await;
        assert_eq!(stat.expect("a stat is made here").unwrap(), Some(v_short));
        let lease = tokio::time::timeout(soon, store.native_lease("a/short", soon)).await;
        drop(lease.expect("a lease is taken here").unwrap());
        let listed = tokio::time::timeout(soon, store.list("b/", OpList::default())).await;
        assert!(
            listed
                .expect("nothing to list is answered here")
                .unwrap()
                .is_empty()
        );

        let reading = tokio::spawn(whole("a/long"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !reading.is_finished(),
            "a long body is read on a blocking thread"
        );
        release.send(()).unwrap();
        taken.await.unwrap().unwrap();
        let read = tokio::time::timeout(soon, reading)
            .await
            .expect("read once the thread is free");
        assert_eq!(read.unwrap().map(|(body, _)| body), Some(long));
        assert!(matches!(
            store.read("a/long", OpRead::default()).await.unwrap(),
            Some((Payload::Memory(_), _))
        ));
    });
}

/// States hold secrets: what the store makes is closed to other users
/// whatever the umask (the usual 022 would leave files readable by all).
#[tokio::test]
async fn what_the_store_makes_is_its_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("states");
    let store = LocalStore::open_dir(&root).unwrap();
    store
        .put("team/app", Bytes::from_static(b"{}"), Condition::IfAbsent)
        .await
        .unwrap();
    let mode = |rel: &str| {
        fs::symlink_metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for made in [
        "",
        "team",
        ".stategate",
        ".stategate/local",
        ".stategate/local/tmp",
    ] {
        assert_eq!(mode(made), 0o700, "{made:?}");
    }
    assert_eq!(mode("team/app+"), 0o400);
    assert_eq!(mode(".stategate/local/keys") & 0o077, 0);
}
