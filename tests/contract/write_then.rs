//! The promise of `Store::write_then_change`, which history keeps a
//! just-written state with: the write first, then the changes built from
//! its version, the changes' outcome beside the version.

use std::sync::Arc;

use bytes::Bytes;
use stategate::stores::{Change, Condition, OpWrite, Payload, StoreError, ThenChange, Version};

use crate::fixture::*;

/// A copy of `from` at the version written, as `to`, then a create of
/// each of `creates`.
fn copy_then_create(from: &str, to: &str, body: Bytes, creates: &[&str]) -> ThenChange {
    let (from, to) = (from.to_string(), to.to_string());
    let creates: Vec<String> = creates.iter().map(|k| k.to_string()).collect();
    Arc::new(move |version: &Version| {
        let copy = Change::Snapshot {
            from: from.clone(),
            from_version: version.clone(),
            to: to.clone(),
            body: Payload::Memory(body.clone()),
        };
        let creates = creates.iter().map(|key| Change::Write {
            key: key.clone(),
            body: Bytes::from(format!("made after {key}")),
            args: OpWrite::new(Condition::IfAbsent),
            same_as: None,
        });
        std::iter::once(copy).chain(creates).collect()
    })
}

/// The write is made, then the changes for the version it returns; a
/// change refused stops them, the write standing; a refused write makes
/// no change at all.
pub async fn write_then_change_makes_the_write_then_its_changes(fx: Fixture) {
    let store = &*fx.store;
    let body = |b: &'static [u8]| Payload::Memory(Bytes::from_static(b));
    let then = copy_then_create("wt/s", "wt/s.1", Bytes::from_static(b"one"), &["wt/record"]);
    let (first, changed) = store
        .write_then_change(
            "wt/s",
            body(b"one"),
            OpWrite::new(Condition::IfAbsent),
            then,
        )
        .await
        .unwrap();
    assert!(changed.is_ok(), "{changed:?}");
    assert_eq!(version_of(store, "wt/s").await, first);
    assert_eq!(body_of(store, "wt/s.1").await.as_deref(), Some(&b"one"[..]));
    assert!(body_of(store, "wt/record").await.is_some());

    // The record exists: its create is refused, the one after it not made.
    let then = copy_then_create(
        "wt/s",
        "wt/s.2",
        Bytes::from_static(b"two"),
        &["wt/record", "wt/after"],
    );
    let (second, changed) = store
        .write_then_change(
            "wt/s",
            body(b"two"),
            OpWrite::new(Condition::IfMatch(first.clone())),
            then,
        )
        .await
        .unwrap();
    let stopped = changed.unwrap_err();
    assert_eq!((stopped.at, stopped.error), (1, StoreError::AlreadyExists));
    assert_eq!(body_of(store, "wt/s").await.as_deref(), Some(&b"two"[..]));
    assert_eq!(version_of(store, "wt/s").await, second);
    assert_eq!(body_of(store, "wt/s.2").await.as_deref(), Some(&b"two"[..]));
    assert_eq!(body_of(store, "wt/after").await, None);

    // A write refused on its condition makes none of its changes.
    let then = copy_then_create(
        "wt/s",
        "wt/s.3",
        Bytes::from_static(b"three"),
        &["wt/never"],
    );
    let refused = store
        .write_then_change(
            "wt/s",
            body(b"three"),
            OpWrite::new(Condition::IfMatch(first)),
            then,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::PreconditionFailed),
        "{refused:?}"
    );
    assert_eq!(body_of(store, "wt/s").await.as_deref(), Some(&b"two"[..]));
    assert_eq!(body_of(store, "wt/s.3").await, None);
    assert_eq!(body_of(store, "wt/never").await, None);
}

/// Writes with changes and lone writes, from several tasks at once: every
/// object holds its own bytes, and (where versions are unique) no two
/// objects written were given the same version. The database store draws
/// a write's generations and its changes' in one statement, a lone write
/// one: the blocks of numbers drawn at once must never overlap.
pub async fn writes_with_changes_at_once_keep_every_object_apart(fx: Fixture) {
    let unique = checked_capabilities(&fx).unique_versions;
    let tasks = (0..6).map(|t| {
        let store = Arc::clone(&fx.store);
        tokio::spawn(async move {
            let mut made = Vec::new();
            for round in 0..4 {
                let key = format!("apart/{t}-{round}");
                let records: Vec<String> = (0..1 + (t + round) % 5)
                    .map(|n| format!("{key}.r{n}"))
                    .collect();
                let refs: Vec<&str> = records.iter().map(String::as_str).collect();
                let body = Bytes::from(key.clone());
                let then = copy_then_create(&key, &format!("{key}.copy"), body.clone(), &refs);
                let (version, changed) = store
                    .write_then_change(
                        &key,
                        Payload::Memory(body.clone()),
                        OpWrite::new(Condition::IfAbsent),
                        then,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writing {key}: {e}"));
                assert!(changed.is_ok(), "{key}: {changed:?}");
                let lone = format!("{key}.lone");
                made.push((format!("{key}.copy"), body.clone(), None));
                made.push((key, body, Some(version)));
                for record in records {
                    let bytes = Bytes::from(format!("made after {record}"));
                    made.push((record, bytes, None));
                }
                let version = put(&*store, &lone, lone.as_bytes()).await;
                made.push((lone.clone(), Bytes::from(lone), Some(version)));
            }
            made
        })
    });
    let mut versions = std::collections::HashMap::new();
    for task in tasks.collect::<Vec<_>>() {
        for (key, bytes, version) in task.await.unwrap() {
            assert_eq!(body_of(&*fx.store, &key).await, Some(bytes), "{key}");
            // A copy may be the very object it copies (a link to the same
            // file); the rest are objects of their own.
            if key.ends_with(".copy") {
                continue;
            }
            let now = version_of(&*fx.store, &key).await;
            if let Some(written) = version {
                assert_eq!(now, written, "{key} was written once");
            }
            if unique && let Some(other) = versions.insert(now.0.clone(), key.clone()) {
                panic!("{key} and {other} were both given version {now:?}");
            }
        }
    }
}
