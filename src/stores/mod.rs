//! Where bytes live. A store knows nothing of HTTP, Terraform or locks: it
//! offers a handful of primitives on opaque keys (get, put under a
//! condition, delete under a condition, list) and says what it can do.
//! Locking, the write rules and history are written once on top of these
//! primitives in [`crate::state`], so every store gets them and one
//! conformance suite proves them.
//!
//! Keys handed to a store are already validated: `/`-separated segments of
//! ASCII letters, digits, `.`, `_` and `-`, never empty, `.` or `..`. Each
//! store maps them to its own names (a path under a root, a bucket key under
//! a prefix, a row) and must never reach outside that space.

//!
//! The trait and its argument types are in [`store`], the errors in
//! [`error`], the storage types and how one is opened in [`registry`], the
//! start-up probe in [`probe`], whether the store takes writes now in
//! [`guard`].

#[cfg(any(feature = "s3", feature = "oss"))]
pub mod bucket;
#[cfg(feature = "db")]
pub mod db;
pub mod error;
pub mod guard;
pub mod keylock;
pub mod local;
pub mod net;
#[cfg(feature = "oss")]
pub mod oss;
pub mod payload;
pub mod probe;
pub mod read_only;
pub mod registry;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sqlite;
pub mod store;

pub use error::{OpenError, StoreError};
pub use net::network_cause;
pub use payload::{Payload, Spooler};
pub use probe::{PROBE_PREFIX, ProbeReport, probe};
pub use registry::{
    Backend, BoxFuture, COMMON_SETTINGS, OpenResult, Opened, backend, backends, check_creatable,
    check_settings, missing, open, open_for_reading, open_with, path_setting, store_path,
};
pub use store::{
    Capabilities, Change, Condition, DEFAULT_OPERATION_TIMEOUT, Entry, Object, OpDelete, OpList,
    OpRead, OpSnapshot, OpWrite, Space, Stopped, Store, StoreExt, ThenChange, Version, Writes,
};

/// Where stategate keeps its own objects (history, leases, probes), apart
/// from every state: no state key starts with it.
pub const INTERNAL_PREFIX: &str = ".stategate/";

/// Whether a process with this pid exists on this machine (EPERM: it
/// does, owned by another user).
pub fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Refuses to write into a store on this machine's disk (`place`, owned by
/// the user `owner`) as another user. What the local and SQLite stores
/// make is their user's alone (states hold secrets), so an operator
/// command run as root over a server's store left states, locks and
/// directories its server could not read: every request on them was a 503
/// from then on.
pub(crate) fn check_owner(owner: u32, place: &std::path::Path) -> std::io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if owner == me {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{} belongs to user {owner}, and this runs as user {me}: what it would write could be \
         read by user {me} only, not by a server running as the owner; run it as user {owner}",
        place.display()
    )))
}

/// The key ranges of a listing of `prefix` that lie outside
/// [`INTERNAL_PREFIX`]: `(from, before)` pairs, `before` `None` for no end.
/// Keys are ASCII, and `0` follows `/`, so the internal area is exactly
/// the range from `.stategate/` up to `.stategate0`.
pub fn ranges_outside_internal(prefix: &str) -> Vec<(String, Option<String>)> {
    const PAST_INTERNAL: &str = ".stategate0";
    if prefix.starts_with(INTERNAL_PREFIX) {
        return Vec::new();
    }
    if !INTERNAL_PREFIX.starts_with(prefix) {
        return vec![(prefix.to_string(), None)];
    }
    vec![
        (prefix.to_string(), Some(INTERNAL_PREFIX.to_string())),
        (PAST_INTERNAL.to_string(), None),
    ]
}

/// The longest body the local and SQLite stores read on the calling
/// thread rather than on a blocking one: lock objects, history records and
/// pointers are well under it, states mostly over. Handing a read of a few
/// microseconds to a blocking thread and back costs two wake-ups and two
/// switches of thread, more than the read.
pub(crate) const QUICK_BYTES: u64 = 16 * 1024;

/// Runs blocking file or database work on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::unavailable(format!("worker failed: {e}")))?
}
