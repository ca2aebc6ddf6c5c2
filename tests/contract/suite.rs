//! The promises of the `Store` contract, one async function each, run on
//! every store by `contract_suite!` in `main.rs`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use stategate::stores::{
    Change, Condition, Entry, OpDelete, OpList, OpRead, OpSnapshot, OpWrite, Payload, Spooler,
    StoreError, StoreExt, Version,
};

use crate::fixture::*;
pub use crate::write_then::{
    write_then_change_makes_the_write_then_its_changes,
    writes_with_changes_at_once_keep_every_object_apart,
};

/// The copy [`Store::snapshot`] makes.
fn copy<'a>(
    from: &'a str,
    from_version: &'a Version,
    to: &'a str,
    body: &'a Payload,
) -> OpSnapshot<'a> {
    OpSnapshot {
        from,
        from_version,
        to,
        body,
    }
}

pub async fn capabilities_are_as_documented(fx: Fixture) {
    // Locks need an atomic create: the state layer refuses to start on a
    // store without one unless told to, and none of these lacks it.
    assert!(checked_capabilities(&fx).conditional_create);
    // What the start-up probe measures, which the state layer goes by,
    // agrees with what the store says and documents.
    let measured = stategate::stores::probe(&*fx.store, "contract")
        .await
        .expect("probe")
        .capabilities;
    assert_eq!(
        measured,
        fx.kind.documented_capabilities(),
        "{:?}: the probe measured {measured:?}",
        fx.kind
    );
}

pub async fn get_put_stat_round_trip(fx: Fixture) {
    let store = &*fx.store;
    let key = "rt/app/terraform.tfstate";
    assert!(
        store.get(key).await.unwrap().is_none(),
        "get of a missing key"
    );
    assert_eq!(
        store.stat(key).await.unwrap(),
        None,
        "stat of a missing key"
    );

    let body = b"{\"serial\": 1}\n\x00\xff binary too";
    let put_version = put(store, key, body).await;
    let object = store.get(key).await.unwrap().expect("just written");
    assert_eq!(&object.body[..], &body[..]);
    assert_eq!(
        object.version, put_version,
        "get's version is the one put returned"
    );
    assert_eq!(store.stat(key).await.unwrap(), Some(object.version.clone()));

    let other = b"{\"serial\": 2}\n";
    let second = put(store, key, other).await;
    assert_ne!(second, put_version, "a new write has a new version");
    assert_eq!(&body_of(store, key).await.unwrap()[..], &other[..]);
    assert_eq!(store.stat(key).await.unwrap(), Some(second));
}

/// Reads never serve an older version: each of a run of same-sized
/// bodies, written one after another (deleted and written again halfway),
/// is what `read` and `get` give right after its write, as stores that keep
/// recently read bodies in memory must see to.
pub async fn reads_follow_every_new_version(fx: Fixture) {
    let store = &*fx.store;
    let key = "reread/terraform.tfstate";
    for round in 0..24u32 {
        if round == 12 {
            store.delete(key, Condition::Always.into()).await.unwrap();
            assert!(
                store.read(key, OpRead::streamed()).await.unwrap().is_none(),
                "read after delete"
            );
        }
        let body = format!("{{\"serial\": {round:04}}}").into_bytes();
        let version = put(store, key, &body).await;
        for _ in 0..2 {
            let (payload, read_version) = store
                .read(key, OpRead::streamed())
                .await
                .unwrap()
                .expect("just written");
            assert_eq!(read_version, version, "round {round}");
            assert_eq!(
                &payload.to_bytes().await.unwrap()[..],
                &body[..],
                "round {round}"
            );
        }
        assert_eq!(
            &body_of(store, key).await.unwrap()[..],
            &body[..],
            "round {round}"
        );
    }
}

/// `change_all` makes its changes in order, each as its own method would,
/// and stops at the first that fails: those before it are made, it and
/// those after it are not.
pub async fn change_all_stops_at_the_first_failure(fx: Fixture) {
    let store = &*fx.store;
    let change =
        |key: &str, body: &'static [u8], condition: Condition, transient: bool| Change::Write {
            key: key.into(),
            body: Bytes::from_static(body),
            args: OpWrite {
                condition,
                transient,
            },
            same_as: None,
        };
    let first = put(store, "batch/a", b"a0").await;
    put(store, "batch/gone", b"x").await;
    let changes = vec![
        change("batch/a", b"a1", Condition::IfMatch(first.clone()), false),
        Change::Delete {
            key: "batch/gone".into(),
            args: OpDelete::transient(Condition::Always),
        },
        change("batch/c", b"c", Condition::IfAbsent, true),
        // Refused: `a` is no longer at its first version.
        change("batch/a", b"a2", Condition::IfMatch(first), false),
        change("batch/d", b"d", Condition::Always, false),
    ];
    let stopped = store.change_all(changes).await.unwrap_err();
    assert_eq!(stopped.at, 3);
    assert!(
        matches!(stopped.error, StoreError::PreconditionFailed),
        "{:?}",
        stopped.error
    );
    assert_eq!(body_of(store, "batch/a").await.as_deref(), Some(&b"a1"[..]));
    assert_eq!(body_of(store, "batch/gone").await, None);
    assert_eq!(body_of(store, "batch/c").await.as_deref(), Some(&b"c"[..]));
    assert_eq!(body_of(store, "batch/d").await, None, "after the failure");

    // A snapshot among them, and a run that goes through.
    let a = store.stat("batch/a").await.unwrap().unwrap();
    let changes = vec![
        Change::Snapshot {
            from: "batch/a".into(),
            from_version: a,
            to: "batch/a-copy".into(),
            body: Bytes::from_static(b"a1").into(),
        },
        change("batch/d", b"d", Condition::IfAbsent, false),
    ];
    store.change_all(changes).await.unwrap();
    assert_eq!(
        body_of(store, "batch/a-copy").await.as_deref(),
        Some(&b"a1"[..])
    );
    assert_eq!(body_of(store, "batch/d").await.as_deref(), Some(&b"d"[..]));
}

/// A write named the same as an earlier write of the same `change_all`
/// (history's pointer, the same bytes as its newest record) holds its own
/// bytes whatever the hint says, and keeps them when the other key is
/// written again: a store that links the two (local disk) checks the
/// bytes first, and a link never follows a later write.
pub async fn a_write_the_same_as_another_holds_its_own_bytes(fx: Fixture) {
    let store = &*fx.store;
    let write =
        |key: &str, body: &'static [u8], transient: bool, same_as: Option<&str>| Change::Write {
            key: key.into(),
            body: Bytes::from_static(body),
            args: OpWrite {
                condition: Condition::Always,
                transient,
            },
            same_as: same_as.map(str::to_string),
        };
    let changes = vec![
        write("same/1.json", b"{\"n\":1}", false, None),
        write("same/newest.json", b"{\"n\":1}", true, Some("same/1.json")),
    ];
    store.change_all(changes).await.unwrap();
    let of = async |key| {
        body_of(store, key)
            .await
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    };
    assert_eq!(of("same/newest.json").await.as_deref(), Some("{\"n\":1}"));
    assert_eq!(of("same/1.json").await.as_deref(), Some("{\"n\":1}"));

    // The record written again: the pointer keeps what it was given.
    put(store, "same/1.json", b"{\"n\":9}").await;
    assert_eq!(of("same/newest.json").await.as_deref(), Some("{\"n\":1}"));

    // A hint naming other bytes, or a key not written, is not believed.
    let changes = vec![
        write("same/2.json", b"{\"n\":2}", false, None),
        write("same/newest.json", b"{\"n\":3}", true, Some("same/2.json")),
    ];
    store.change_all(changes).await.unwrap();
    assert_eq!(of("same/newest.json").await.as_deref(), Some("{\"n\":3}"));
    assert_eq!(of("same/2.json").await.as_deref(), Some("{\"n\":2}"));
    let changes = vec![write(
        "same/newest.json",
        b"{\"n\":4}",
        true,
        Some("same/none.json"),
    )];
    store.change_all(changes).await.unwrap();
    assert_eq!(of("same/newest.json").await.as_deref(), Some("{\"n\":4}"));
    assert_eq!(of("same/none.json").await, None);
}

pub async fn if_absent_refuses_an_existing_key(fx: Fixture) {
    assert!(checked_capabilities(&fx).conditional_create);
    let store = &*fx.store;
    let key = "create/lock.tflock";
    let first = store
        .put(key, Bytes::from_static(b"first"), Condition::IfAbsent)
        .await
        .expect("create on a free key");
    let second = store
        .put(key, Bytes::from_static(b"second"), Condition::IfAbsent)
        .await;
    assert_eq!(second, Err(StoreError::AlreadyExists));
    let object = store.get(key).await.unwrap().expect("still there");
    assert_eq!(
        &object.body[..],
        b"first",
        "the refused create changed the body"
    );
    assert_eq!(object.version, first);
}

pub async fn if_match_is_compare_and_swap(fx: Fixture) {
    let store = &*fx.store;
    let key = "cas/state";
    let old = put(store, key, b"version one").await;
    let current = put(store, key, b"version two").await;
    assert_ne!(old, current);

    let stale = store
        .put(
            key,
            Bytes::from_static(b"lost update"),
            Condition::IfMatch(old),
        )
        .await;
    assert_eq!(stale, Err(StoreError::PreconditionFailed));
    assert_eq!(&body_of(store, key).await.unwrap()[..], b"version two");

    let next = store
        .put(
            key,
            Bytes::from_static(b"version three"),
            Condition::IfMatch(current.clone()),
        )
        .await
        .expect("IfMatch(current) succeeds");
    assert_ne!(next, current, "a swap yields a new version");
    assert_eq!(version_of(store, key).await, next);
    assert_eq!(&body_of(store, key).await.unwrap()[..], b"version three");

    let missing = store
        .put(
            "cas/missing",
            Bytes::from_static(b"x"),
            Condition::IfMatch(next),
        )
        .await;
    assert_eq!(missing, Err(StoreError::PreconditionFailed));
    assert!(store.get("cas/missing").await.unwrap().is_none());
}

/// The trait's promise: two reads return the same version only when the
/// object did not change in between. A delete and a re-create with the
/// same bytes is a change (a lock released and taken again).
pub async fn recreated_object_never_matches_its_old_version(fx: Fixture) {
    let store = &*fx.store;
    let key = "aba/lock.tflock";
    let old = b"{\"ID\":\"same\"}";
    put(store, key, old).await;
    let v1 = version_of(store, key).await;
    store.delete(key, Condition::Always.into()).await.unwrap();
    // Where versions are hashes of the bytes, the same bytes written again
    // have the same version by design; other bytes never do.
    let body: &[u8] = if checked_capabilities(&fx).unique_versions {
        old
    } else {
        b"{\"ID\":\"other\"}"
    };
    put(store, key, body).await;
    let v2 = version_of(store, key).await;

    let swap = store
        .put(
            key,
            Bytes::from_static(b"{\"ID\":\"stale\"}"),
            Condition::IfMatch(v1.clone()),
        )
        .await;
    assert_eq!(
        swap,
        Err(StoreError::PreconditionFailed),
        "IfMatch with the version of the deleted object ({v1:?}) matched the new one ({v2:?})"
    );
    assert_eq!(&body_of(store, key).await.unwrap()[..], body);
    let delete = store
        .delete(key, Condition::IfMatch(v1.clone()).into())
        .await;
    assert_eq!(
        delete,
        Err(StoreError::PreconditionFailed),
        "a conditional delete with the old version ({v1:?}) removed the new object"
    );
    assert!(store.get(key).await.unwrap().is_some());
}

pub async fn delete_honours_its_condition(fx: Fixture) {
    let store = &*fx.store;
    let key = "del/state";
    store
        .delete("del/never-written", Condition::Always.into())
        .await
        .expect("deleting a missing key is not an error");

    let stale = put(store, key, b"one").await;
    put(store, key, b"two").await;
    assert_eq!(
        store.delete(key, Condition::IfMatch(stale).into()).await,
        Err(StoreError::PreconditionFailed)
    );
    assert_eq!(
        &body_of(store, key).await.unwrap()[..],
        b"two",
        "the object stays"
    );

    let current = version_of(store, key).await;
    assert_eq!(
        store
            .delete(
                "del/never-written",
                Condition::IfMatch(current.clone()).into()
            )
            .await,
        Err(StoreError::PreconditionFailed),
        "IfMatch on a missing key"
    );
    store
        .delete(key, Condition::IfMatch(current).into())
        .await
        .expect("IfMatch(current) deletes");
    assert!(store.get(key).await.unwrap().is_none());
    assert_eq!(store.stat(key).await.unwrap(), None);
    assert!(list(store, "del/").await.is_empty());

    put(store, key, b"three").await;
    store.delete(key, Condition::Always.into()).await.unwrap();
    assert!(store.get(key).await.unwrap().is_none());

    // IfAbsent constrains puts only; a delete treats it like Always.
    put(store, key, b"four").await;
    store
        .delete(key, Condition::IfAbsent.into())
        .await
        .expect("delete with IfAbsent");
    assert!(store.get(key).await.unwrap().is_none());
}

/// Tasks racing in each race test.
const RACERS: usize = 16;

pub async fn concurrent_creates_have_one_winner(fx: Fixture) {
    assert!(checked_capabilities(&fx).conditional_create);
    for round in 0..3 {
        let key = format!("race/create-{round}.tflock");
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, key, barrier) =
                    (Arc::clone(&fx.store), key.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let body = Bytes::from(format!("racer {i}"));
                    (i, store.put(&key, body, Condition::IfAbsent).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(version)) => winners.push((i, version)),
                (_, Err(StoreError::AlreadyExists)) => {}
                (i, Err(e)) => panic!("round {round}: racer {i}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (i, version) = &winners[0];
        let object = fx.store.get(&key).await.unwrap().expect("created");
        assert_eq!(
            object.body,
            Bytes::from(format!("racer {i}")),
            "round {round}"
        );
        assert_eq!(&object.version, version, "round {round}");
    }
}

pub async fn concurrent_swaps_have_one_winner(fx: Fixture) {
    if !checked_capabilities(&fx).compare_and_swap {
        return;
    }
    for round in 0..3 {
        let key = format!("race/swap-{round}");
        let base = put(&*fx.store, &key, b"base").await;
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, key, barrier) =
                    (Arc::clone(&fx.store), key.clone(), Arc::clone(&barrier));
                let base = base.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let body = Bytes::from(format!("swapped by {i}"));
                    (i, store.put(&key, body, Condition::IfMatch(base)).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(version)) => winners.push((i, version)),
                (_, Err(StoreError::PreconditionFailed)) => {}
                (i, Err(e)) => panic!("round {round}: racer {i}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (i, version) = &winners[0];
        let object = fx.store.get(&key).await.unwrap().expect("still there");
        assert_eq!(
            object.body,
            Bytes::from(format!("swapped by {i}")),
            "round {round}"
        );
        assert_eq!(&object.version, version, "round {round}");
    }
}

/// Tasks and increments each in the read-modify-write test.
const WRITERS: usize = 8;
const INCREMENTS: usize = 8;

pub async fn read_modify_write_loses_no_update(fx: Fixture) {
    if !checked_capabilities(&fx).compare_and_swap {
        return;
    }
    let key = "race/counter";
    put(&*fx.store, key, b"0").await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = Arc::clone(&fx.store);
            tokio::spawn(async move {
                let (mut versions, mut retries) = (Vec::new(), 0);
                while versions.len() < INCREMENTS {
                    let object = store.get(key).await.unwrap().expect("counter");
                    let n: usize = std::str::from_utf8(&object.body).unwrap().parse().unwrap();
                    let next = Bytes::from((n + 1).to_string());
                    match store
                        .put(key, next, Condition::IfMatch(object.version))
                        .await
                    {
                        Ok(version) => versions.push(version),
                        Err(StoreError::PreconditionFailed) => retries += 1,
                        Err(e) => panic!("increment: {e}"),
                    }
                }
                (versions, retries)
            })
        })
        .collect();
    let (mut versions, mut retries) = (Vec::new(), 0);
    for task in tasks {
        let (v, r) = task.await.unwrap();
        versions.extend(v);
        retries += r;
    }
    let value = body_of(&*fx.store, key).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&value).unwrap(),
        (WRITERS * INCREMENTS).to_string(),
        "{WRITERS} writers x {INCREMENTS} increments ({retries} retries)"
    );
    let distinct: BTreeSet<_> = versions.iter().map(|v| v.0.clone()).collect();
    assert_eq!(
        distinct.len(),
        versions.len(),
        "every increment has its own version"
    );
    eprintln!(
        "{:?}: {} increments, {retries} retries in {:?}",
        fx.kind,
        WRITERS * INCREMENTS,
        started.elapsed()
    );
}

/// Keys for the listing test: every allowed character, neighbours of
/// `l/a/b` on both sides in byte order, deep nesting, and `l/a/b`, which
/// the local store holds beside the directory of `l/a/b/c`.
const LISTED: &[&str] = &[
    "l/a/b",
    "l/a/b-x",
    "l/a/b.x",
    "l/a/b/c",
    "l/a/b/c2/d/e/f/g/h/i/j/k/l/m/n/o/p/deep",
    "l/a/b0",
    "l/a/bA",
    "l/a/b_x",
    "l/a/bc",
    "l/a/c",
    "l/ABCDEFGHIJKLMNOPQRSTUVWXYZ/abcdefghijklmnopqrstuvwxyz/0123456789/._-",
    "l/.hidden/-dash/_under/.../x.y_z-0",
    "l/Z",
    "m",
];

pub async fn listing_is_a_sorted_string_prefix(fx: Fixture) {
    let store = &*fx.store;
    let mut expected: Vec<(String, u64)> = Vec::new();
    // Written out of order, each with its own size.
    for (i, key) in LISTED.iter().enumerate().rev() {
        let body = vec![b'a' + i as u8; 3 * i + 1];
        put(store, key, &body).await;
        expected.push((key.to_string(), body.len() as u64));
    }
    expected.sort();
    for (key, size) in &expected {
        let object = store
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(object.body.len() as u64, *size, "{key}");
    }

    let under = |prefix: &str| -> Vec<(String, u64)> {
        expected
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .cloned()
            .collect()
    };
    for prefix in [
        "",
        "l/",
        "l/a/b",
        "l/a/b/",
        "l/a/b/c",
        "l/a/b/c/",
        "l/a/c",
        "l/a/",
        "l/A",
        "l/.",
        "l/.hidden/-dash/_under/.../",
        "l/nothing",
        "m",
        "mm",
        "l/a/b/c2/d/e/f/g/h/i/j/k/l/m/n/o/p/",
    ] {
        let listed = keys_and_sizes(&list(store, prefix).await);
        assert_eq!(listed, under(prefix), "list(`{prefix}`)");
    }
    // Plain string prefixes, spelled out for the case the brief names.
    let ab: Vec<String> = list(store, "l/a/b")
        .await
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert!(ab.contains(&"l/a/bc".to_string()) && ab.contains(&"l/a/b/c".to_string()));
    assert!(!ab.contains(&"l/a/c".to_string()));
    // Byte order: '-' < '.' < '/' < digits < upper case < '_' < lower case.
    assert_eq!(
        ab[..5],
        [
            "l/a/b",
            "l/a/b-x",
            "l/a/b.x",
            "l/a/b/c",
            "l/a/b/c2/d/e/f/g/h/i/j/k/l/m/n/o/p/deep"
        ]
    );
    assert_eq!(ab[5..], ["l/a/b0", "l/a/bA", "l/a/b_x", "l/a/bc"]);
}

pub async fn listing_outside_internal_leaves_out_exactly_the_internal_area(fx: Fixture) {
    let store = &*fx.store;
    let keys = [
        "-dash",
        ".a",
        ".stategat",
        ".stategate-x",
        ".stategate/history/a/1.json",
        ".stategate/history/a/newest.json",
        ".stategate/lease/a/x",
        ".stategate0",
        ".stategatez",
        "a",
        "b/c",
        "workspaces/dev/a",
        "z",
    ];
    for key in keys {
        put(store, key, b"x").await;
    }
    for prefix in [
        "",
        ".",
        ".stategate",
        ".stategate/",
        ".stategate/history/",
        "b",
        "-",
        "workspaces/",
    ] {
        let listed: Vec<String> = store
            .list(prefix, OpList::outside_internal())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        let expected: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| k.starts_with(prefix) && !k.starts_with(".stategate/"))
            .collect();
        assert_eq!(listed, expected, "list(`{prefix}`, outside internal)");
    }
}

pub async fn listing_shows_no_other_store(fx: Fixture) {
    let other = fx.sibling().await;
    put(&*fx.store, "iso/mine", b"mine").await;
    put(&*other.store, "iso/theirs", b"theirs!").await;
    let keys =
        |entries: Vec<Entry>| -> Vec<String> { entries.into_iter().map(|e| e.key).collect() };
    assert_eq!(keys(list(&*fx.store, "").await), ["iso/mine"]);
    assert_eq!(keys(list(&*other.store, "").await), ["iso/theirs"]);
    assert!(fx.store.get("iso/theirs").await.unwrap().is_none());
    assert!(other.store.get("iso/mine").await.unwrap().is_none());

    // A store on the same bucket under another prefix sees nothing of this one.
    if let Some(neighbour) = fx.neighbour().await {
        put(&*neighbour, "iso/next-door", b"next").await;
        assert_eq!(keys(list(&*neighbour, "").await), ["iso/next-door"]);
        assert_eq!(keys(list(&*fx.store, "").await), ["iso/mine"]);
        assert!(neighbour.get("iso/mine").await.unwrap().is_none());
    }
}

/// `snapshot` creates `to` only if absent, from `from` at `from_version`.
/// In-place stores check that version and copy without the caller's bytes;
/// the default writes the bytes the caller has.
pub async fn snapshot_copies_once_from_the_version_given(fx: Fixture) {
    let store = &*fx.store;
    let (src, body1, body2) = (
        "snap/state",
        Bytes::from_static(b"first state"),
        Bytes::from_static(b"second state, longer"),
    );
    put(store, src, &body1).await;
    let v1 = version_of(store, src).await;

    store
        .snapshot(copy(src, &v1, "snap/history/1", &body1.clone().into()))
        .await
        .expect("snapshot to a new key");
    assert_eq!(body_of(store, "snap/history/1").await, Some(body1.clone()));

    let again = store
        .snapshot(copy(src, &v1, "snap/history/1", &body1.clone().into()))
        .await;
    assert_eq!(again, Err(StoreError::AlreadyExists), "the target exists");
    assert_eq!(body_of(store, "snap/history/1").await, Some(body1.clone()));

    // The source changes; the copy does not (a hard link must not share
    // later writes).
    put(store, src, &body2).await;
    let v2 = version_of(store, src).await;
    assert_eq!(body_of(store, "snap/history/1").await, Some(body1.clone()));

    let stale = store
        .snapshot(copy(src, &v1, "snap/history/stale", &body1.clone().into()))
        .await;
    if fx.kind.snapshots_in_place() {
        assert_eq!(stale, Err(StoreError::PreconditionFailed), "source changed");
        assert_eq!(body_of(store, "snap/history/stale").await, None);
        let gone = store
            .snapshot(copy(
                "snap/missing",
                &v1,
                "snap/history/none",
                &body1.clone().into(),
            ))
            .await;
        assert_eq!(gone, Err(StoreError::PreconditionFailed), "source missing");
        assert_eq!(body_of(store, "snap/history/none").await, None);
    } else {
        stale.expect("the default snapshot writes the caller's body");
        assert_eq!(
            body_of(store, "snap/history/stale").await,
            Some(body1.clone())
        );
    }

    store
        .snapshot(copy(src, &v2, "snap/history/2", &body2.clone().into()))
        .await
        .expect("snapshot of the current version");
    assert_eq!(body_of(store, "snap/history/2").await, Some(body2.clone()));
    store
        .delete("snap/history/2", Condition::Always.into())
        .await
        .unwrap();
    assert_eq!(
        body_of(store, src).await,
        Some(body2),
        "deleting a copy keeps the source"
    );
    assert_eq!(version_of(store, src).await, v2);
}

pub async fn large_body_round_trips(fx: Fixture) {
    const SIZE: usize = 64 << 20;
    let store = &*fx.store;
    let body = Bytes::from(pattern(SIZE));
    let started = Instant::now();
    let version = store
        .put("big/state", body.clone(), Condition::IfAbsent)
        .await
        .expect("64 MiB put");
    let object = store.get("big/state").await.unwrap().expect("64 MiB get");
    assert_same_bytes(&object.body, &body, "64 MiB body");
    assert_eq!(object.version, version);
    assert_eq!(
        keys_and_sizes(&list(store, "big/").await),
        [("big/state".to_string(), SIZE as u64)]
    );
    eprintln!(
        "{:?}: 64 MiB put and get in {:?}",
        fx.kind,
        started.elapsed()
    );
    // The servers this binary shares keep objects in memory.
    store
        .delete("big/state", Condition::IfMatch(version).into())
        .await
        .expect("delete the 64 MiB object");
    assert!(list(store, "big/").await.is_empty());
}

/// A body spooled to a file (as a large upload is) goes in through
/// `write` of a spooled body under its condition, as often as it is needed (a retried
/// write, a history copy), and comes out through `read` whole, with the
/// version `stat` gives, however the store hands it out.
pub async fn spooled_bodies_stream_in_and_out(fx: Fixture) {
    const SIZE: usize = 5 << 20;
    let store = &*fx.store;
    let bytes = pattern(SIZE);
    let dir = tempfile::tempdir().unwrap();
    let mut spooler = Spooler::new(dir.path());
    for piece in bytes.chunks(100_003) {
        spooler.push(piece).await.unwrap();
    }
    let payload = spooler.finish().await.unwrap();
    assert!(payload.as_memory().is_none(), "5 MiB is spooled to a file");

    let first = store
        .write(
            "spool/state",
            payload.clone(),
            OpWrite::new(Condition::IfAbsent),
        )
        .await
        .expect("put of a spooled body");
    assert_eq!(
        store
            .write(
                "spool/state",
                payload.clone(),
                OpWrite::new(Condition::IfAbsent)
            )
            .await,
        Err(StoreError::AlreadyExists)
    );
    let (read, version) = store
        .read("spool/state", OpRead::streamed())
        .await
        .unwrap()
        .expect("read");
    assert_eq!(version, first);
    assert_eq!(read.len(), SIZE as u64);
    assert_same_bytes(&read.to_bytes().await.unwrap(), &bytes, "spooled body");

    // Changed by another writer: the stale swap is refused and the newer
    // bytes stay.
    let newer = Bytes::from(pattern(SIZE / 2));
    put(store, "spool/state", &newer).await;
    if fx.kind.documented_capabilities().compare_and_swap {
        assert_eq!(
            store
                .write(
                    "spool/state",
                    payload.clone(),
                    OpWrite::new(Condition::IfMatch(first))
                )
                .await,
            Err(StoreError::PreconditionFailed)
        );
        assert_eq!(body_of(store, "spool/state").await, Some(newer.clone()));
    }
    let current = version_of(store, "spool/state").await;
    let swapped = store
        .write(
            "spool/state",
            payload.clone(),
            OpWrite::new(Condition::IfMatch(current.clone())),
        )
        .await
        .expect("swap in a spooled body");
    store
        .snapshot(copy("spool/state", &swapped, "spool/history/1", &payload))
        .await
        .expect("snapshot of a spooled body");
    for key in ["spool/state", "spool/history/1"] {
        let (read, _) = store
            .read(key, OpRead::streamed())
            .await
            .unwrap()
            .expect("read");
        assert_same_bytes(&read.to_bytes().await.unwrap(), &bytes, key);
    }
    assert_eq!(
        keys_and_sizes(&list(store, "spool/").await),
        [
            ("spool/history/1".to_string(), SIZE as u64),
            ("spool/state".to_string(), SIZE as u64)
        ]
    );
    assert!(
        store
            .read("spool/missing", OpRead::streamed())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn empty_body_round_trips(fx: Fixture) {
    let store = &*fx.store;
    let version = store
        .put("empty/state", Bytes::new(), Condition::IfAbsent)
        .await
        .expect("empty put");
    let object = store
        .get("empty/state")
        .await
        .unwrap()
        .expect("an empty object exists");
    assert!(object.body.is_empty());
    assert_eq!(object.version, version);
    assert_eq!(
        store.stat("empty/state").await.unwrap(),
        Some(version.clone())
    );
    assert_eq!(
        keys_and_sizes(&list(store, "empty/").await),
        [("empty/state".to_string(), 0)]
    );
    let next = store
        .put(
            "empty/state",
            Bytes::from_static(b"x"),
            Condition::IfMatch(version),
        )
        .await
        .expect("swap an empty object");
    store
        .put("empty/state", Bytes::new(), Condition::IfMatch(next))
        .await
        .expect("swap back to empty");
    assert_eq!(body_of(store, "empty/state").await, Some(Bytes::new()));
}

/// A key of `len` bytes: `/`-separated segments of 49 letters and digits.
fn long_key(len: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut key = String::from("long");
    while key.len() < len {
        key.push('/');
        let segment_len = 49.min(len - key.len());
        for i in 0..segment_len {
            key.push(alphabet[(key.len() * 7 + i) % alphabet.len()] as char);
        }
    }
    key
}

pub async fn long_keys_round_trip(fx: Fixture) {
    let store = &*fx.store;
    // 1,000 bytes in segments (within S3's and OSS's 1,024 with the store
    // prefix), and one segment of 250 (within a file name's 255).
    let deep = long_key(1000);
    assert_eq!(deep.len(), 1000);
    let wide = format!("wide/{}", "w".repeat(250));
    let mut expected = Vec::new();
    for key in [&deep, &wide] {
        let body = format!("{} bytes of key", key.len());
        let version = put(store, key, body.as_bytes()).await;
        let object = store
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} missing", key.len()));
        assert_eq!(object.body, Bytes::from(body.clone()));
        assert_eq!(object.version, version);
        assert_eq!(store.stat(key).await.unwrap(), Some(version));
        expected.push((key.to_string(), body.len() as u64));
    }
    expected.sort();
    assert_eq!(keys_and_sizes(&list(store, "").await), expected);
    assert_eq!(
        keys_and_sizes(&list(store, &deep[..900]).await),
        expected[..1]
    );
    let version = version_of(store, &deep).await;
    store
        .delete(&deep, Condition::IfMatch(version).into())
        .await
        .unwrap();
    assert!(store.get(&deep).await.unwrap().is_none());
}

/// `a` and `a/b` are both valid keys. A store that cannot hold both (the
/// local store: a file cannot also be a directory) refuses the second with
/// `KeyConflict`, the client's mistake, and keeps the first; every other
/// store holds both.
pub async fn a_key_and_the_keys_below_it_are_all_stored(fx: Fixture) {
    let store = &*fx.store;
    put(store, "nest/a", b"file").await;
    put(store, "nest/a/b", b"below").await;
    put(store, "nest/c/d", b"below").await;
    store
        .put("nest/c", Bytes::from_static(b"file"), Condition::IfAbsent)
        .await
        .expect("a key above another key");
    let listed: Vec<String> = list(store, "nest/")
        .await
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(listed, ["nest/a", "nest/a/b", "nest/c", "nest/c/d"]);
    for (key, body) in [
        ("nest/a", &b"file"[..]),
        ("nest/a/b", b"below"),
        ("nest/c", b"file"),
        ("nest/c/d", b"below"),
    ] {
        assert_eq!(body_of(store, key).await.as_deref(), Some(body), "{key}");
    }
}

/// A store whose backend is gone answers a failure of the store (one of
/// the kinds [`StoreError::is_unavailable`] names, a 503) on every
/// operation, never "no such object", where the store promises
/// to notice.
pub async fn missing_backend_is_unavailable(fx: Fixture) {
    let store = &*fx.store;
    let version = put(store, "gone/state", b"before").await;
    if !fx.remove_backend() {
        return;
    }
    if matches!(fx.place, Place::Bucket(_)) {
        // Bucket stores trust a successful bucket check for a few seconds
        // (`stores::BucketSeen`), as documented; past that, every answer
        // must name the failure.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    }
    let results: Vec<(&str, Result<(), StoreError>)> = vec![
        (
            "get of a written key",
            store.get("gone/state").await.map(drop),
        ),
        (
            "get of a missing key",
            store.get("gone/never").await.map(drop),
        ),
        ("stat", store.stat("gone/state").await.map(drop)),
        (
            "put",
            store
                .put(
                    "gone/state",
                    Bytes::from_static(b"after"),
                    Condition::Always,
                )
                .await
                .map(drop),
        ),
        (
            "put IfAbsent",
            store
                .put("gone/new", Bytes::from_static(b"new"), Condition::IfAbsent)
                .await
                .map(drop),
        ),
        (
            "put IfMatch",
            store
                .put(
                    "gone/state",
                    Bytes::from_static(b"after"),
                    Condition::IfMatch(version.clone()),
                )
                .await
                .map(drop),
        ),
        (
            "delete",
            store.delete("gone/state", Condition::Always.into()).await,
        ),
        (
            "delete IfMatch",
            store
                .delete("gone/state", Condition::IfMatch(version).into())
                .await,
        ),
        ("list", store.list("", OpList::default()).await.map(drop)),
    ];
    let wrong: Vec<String> = results
        .into_iter()
        .filter(|(_, r)| !r.as_ref().is_err_and(StoreError::is_unavailable))
        .map(|(what, r)| format!("{what}: {r:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{:?}: not a store failure with the backend gone:\n{}",
        fx.kind,
        wrong.join("\n")
    );
}
