//! What each fuzz target checks, one function per target. The targets in
//! `fuzz_targets/` only call these; `tests/regressions.rs` calls them too,
//! on every input saved in `testdata/fuzz/`, so a fixed crash stays fixed
//! without a nightly toolchain.
//!
//! Every function takes raw bytes, never panics on stategate's behalf
//! unless stategate breaks one of the invariants asserted here.

use std::collections::BTreeMap;
use std::path::Path;

use hyper::Method;
use serde::de::IgnoredAny;
use stategate::protocol::{self, Endpoint};
use stategate::state::key::{LOCK_SUFFIX, MAX_KEY_BYTES, MAX_SEGMENT_BYTES, RESERVED_PREFIX};
use stategate::state::lock::MAX_LOCK_FIELD_BYTES;
use stategate::state::head::StateHead;
use stategate::state::{LockInfo, StateRef};

/// The methods the first byte of a `route` input picks from: the ones
/// stategate serves and one it does not. Bytes 248 and up pick `get`, a
/// lowercase spelling, which HTTP treats as another method.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "LOCK", "UNLOCK", "PATCH",
];

/// Splits a `route` input into method, path and query: the first byte picks
/// the method, the rest (lossily decoded) is split at the first `?`.
pub fn split_route_input(data: &[u8]) -> Option<(Method, String, Option<String>)> {
    let (&pick, rest) = data.split_first()?;
    let name = match pick as usize {
        i if i < 248 => METHODS[i % METHODS.len()],
        _ => "get",
    };
    let method = Method::from_bytes(name.as_bytes()).expect("a valid method name");
    let text = String::from_utf8_lossy(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (text.into_owned(), None),
    };
    Some((method, path, query))
}

/// Checks what any accepted state name must satisfy (see `src/state/key.rs`).
pub fn check_state_ref(state: &StateRef) {
    let key = state.key();
    let ws = state.workspace();
    let again = StateRef::parse(key, Some(ws))
        .unwrap_or_else(|e| panic!("accepted key {key:?} (workspace {ws:?}) refused again: {e}"));
    assert_eq!(&again, state, "key {key:?} parses to something else");
    assert!(key.len() <= MAX_KEY_BYTES, "key of {} bytes", key.len());
    assert!(
        !key.starts_with(RESERVED_PREFIX),
        "reserved key {key:?} accepted"
    );
    for (what, name) in [("key", key), ("workspace", ws)] {
        for seg in name.split('/') {
            assert!(!seg.is_empty(), "{what} {name:?} has an empty segment");
            assert!(
                seg != ".." && seg != ".",
                "{what} {name:?} has a {seg:?} segment"
            );
            assert!(
                !seg.ends_with(LOCK_SUFFIX),
                "{what} {name:?} has a segment ending in {LOCK_SUFFIX}"
            );
            assert!(
                seg.len() <= MAX_SEGMENT_BYTES,
                "{what} {name:?} has a segment of {} bytes",
                seg.len()
            );
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
                "{what} {name:?} has a character outside [A-Za-z0-9._-]"
            );
        }
    }
    assert!(!ws.contains('/'), "workspace {ws:?} contains `/`");
    let object_key = state.object_key("workspaces");
    assert!(
        !object_key.starts_with('/'),
        "object key {object_key:?} is absolute"
    );
    assert!(
        !object_key.starts_with(RESERVED_PREFIX),
        "object key {object_key:?} is in the reserved area"
    );
    assert_eq!(
        state.lock_key("workspaces"),
        format!("{object_key}{LOCK_SUFFIX}"),
        "the lock does not sit next to the state"
    );
}

/// `route`: any method, path and query either routes or is refused, and
/// whatever state a route names is a valid one.
pub fn route(data: &[u8]) {
    let Some((method, path, query)) = split_route_input(data) else {
        return;
    };
    let Ok(endpoint) = protocol::route(&method, &path, query.as_deref()) else {
        return;
    };
    let state = match &endpoint {
        Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => {
            assert!(
                method == Method::GET || method == Method::HEAD,
                "{method} {path} routed to {endpoint:?}"
            );
            return;
        }
        Endpoint::GetState(s)
        | Endpoint::History(s, _)
        | Endpoint::GetVersion(s, _)
        | Endpoint::WriteState { state: s, .. }
        | Endpoint::DeleteState { state: s, .. }
        | Endpoint::Lock(s)
        | Endpoint::Unlock(s)
        | Endpoint::GetLock(s) => s,
    };
    assert!(
        path.starts_with("/states/") || path.starts_with("/locks/"),
        "{path:?} routed to a state"
    );
    check_state_ref(state);
}

/// `lock_info`: parsing never panics, and an accepted LockInfo has no
/// field over the limit.
pub fn lock_info(data: &[u8]) {
    if let Ok(info) = LockInfo::parse(data) {
        for (name, value) in [
            ("ID", &info.id),
            ("Who", &info.who),
            ("Operation", &info.operation),
            ("Created", &info.created),
        ] {
            assert!(
                value.len() <= MAX_LOCK_FIELD_BYTES,
                "accepted a LockInfo whose {name} has {} bytes",
                value.len()
            );
        }
    }
    // Reading a holder's lock object never fails, whatever it holds.
    let _ = LockInfo::of_holder(data);
}

/// Whether a body is OpenTofu's encrypted envelope, as the write rules
/// define it: an object with non-null `encryption_version`,
/// `encrypted_data` and `meta`. Read the way the write rules read it: the
/// values are skipped, not decoded, so a value holding bytes that are not
/// UTF-8 does not make it something else (found by this target:
/// `testdata/fuzz/state_head-envelope-invalid-utf8`).
pub fn is_encrypted_envelope(data: &[u8]) -> bool {
    type Top = BTreeMap<String, Option<IgnoredAny>>;
    serde_json::from_slice::<Top>(data).is_ok_and(|top| {
        ["encryption_version", "encrypted_data", "meta"]
            .iter()
            .all(|k| matches!(top.get(*k), Some(Some(_))))
    })
}

/// `state_head`: neither parser panics; a body the write rules accept is
/// JSON to the lenient parser too, with the same lineage and serial.
pub fn state_head(data: &[u8]) {
    let lenient = StateHead::parse(data);
    let Ok(incoming) = StateHead::parse_incoming(data) else {
        return;
    };
    let head = match lenient {
        Ok(h) => h,
        Err(e) => panic!("parse_incoming accepted {incoming:?} but parse refused: {e}"),
    };
    if is_encrypted_envelope(data) {
        // Serial and lineage are optional here; those present must agree.
        if incoming.serial.is_some() {
            assert_eq!(head.serial, incoming.serial, "serials differ");
        }
        if incoming.lineage.is_some() {
            assert_eq!(head.lineage, incoming.lineage, "lineages differ");
        }
        return;
    }
    assert!(
        incoming.serial.is_some() && incoming.lineage.is_some(),
        "accepted a plain state without serial or lineage: {incoming:?}"
    );
    assert_eq!(head.serial, incoming.serial, "serials differ");
    assert_eq!(head.lineage, incoming.lineage, "lineages differ");
    assert_eq!(head.resources, incoming.resources, "resource counts differ");
}

/// `config`: any YAML either parses into a file configuration or is
/// refused, and resolving a parsed one (no environment, no flags) either
/// gives settings that keep the documented bounds or names a mistake.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = serde_yaml_ng::from_str::<stategate::config::FileConfig>(text) else {
        return;
    };
    let Ok(settings) =
        stategate::config::resolve(file, &|_| None, &Default::default(), Path::new("."))
    else {
        return;
    };
    let base = &settings.base_path;
    assert!(
        base.is_empty() || (base.starts_with('/') && !base.ends_with('/')),
        "base_path {base:?}"
    );
    let l = &settings.limits;
    assert!(l.max_body_bytes > 0, "max_body_bytes 0 accepted");
    assert!(
        l.max_lock_bytes >= 256,
        "max_lock_bytes {}",
        l.max_lock_bytes
    );
    assert!(
        l.max_header_bytes >= 8192,
        "max_header_bytes {}",
        l.max_header_bytes
    );
    assert!(l.max_connections >= 1, "max_connections 0 accepted");
    for (name, d) in [
        ("header_timeout", l.header_timeout),
        ("idle_timeout", l.idle_timeout),
        ("shutdown_grace", l.shutdown_grace),
    ] {
        assert!(!d.is_zero(), "{name} of 0 accepted");
    }
}
