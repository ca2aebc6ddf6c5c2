//! Write leases: short, expiring mutual exclusion between stategate
//! processes, built only on creating, listing and deleting objects with
//! unique names, so it also serves stores that cannot compare-and-swap
//! (OSS; S3-compatible servers that ignore `If-Match`). It does not even
//! rely on the create being exclusive (the names never collide); it relies
//! on a listing seeing every object created before it began, which S3 and
//! OSS guarantee.
//!
//! On such a store every "only if unchanged" step is a read followed by the
//! change, and another process can slip in between: an unlocked writer can
//! overwrite a newer state, a retried UNLOCK can delete a lock taken after
//! its read, and two history appends can interleave. The state
//! layer therefore runs each of those read-check-change sequences while
//! holding the state's lease: a state's write or delete with the history
//! records it makes, on every store (compare-and-swap keeps the state
//! right, but a history append reads where history ends, then creates the
//! next number, and only serialised appends give one record per accepted
//! write, in order), and the release of its lock where the store has no
//! atomic conditional delete. The holder of a state's lock writing on a
//! store with compare-and-swap takes no lease unless its append finds its
//! number taken: its compare-and-swap and the create-if-absent of its
//! history copy order it against every other writer (see
//! `States::write_as_holder`), so the four requests of a lease are saved
//! on the write Terraform makes on every apply.
//!
//! A lease is an object `.stategate/lease/<object key>/<token>` whose body
//! names its owner and its expiry (wall-clock milliseconds). The token is
//! unique per attempt, so an object is only ever created once (`IfAbsent`),
//! never changed, and deleted by its owner or, once expired, by anyone:
//! nothing is ever deleted on the strength of a stale read, because an
//! expired lease stays expired. Taking the lease is "create, then look":
//! the creator lists the directory after its create and keeps the lease
//! only when no other unexpired lease is there; otherwise it deletes its
//! own and tries again after a random pause. Of two overlapping takers the
//! later lister always sees the earlier creator (listings are strongly
//! consistent on S3 and OSS), so at most one proceeds; both may back off,
//! which the random pause resolves. Unlike numbered epochs, this stays safe
//! when a paused process resumes with an old listing.
//!
//! Stores on this machine's files (local, SQLite) have a lease of their
//! own ([`Store::native_lease`]): a lock on a byte of a lock file, which
//! costs no object, cannot expire while its holder lives, and is released
//! by the kernel when the holder dies, so a crashed writer blocks nobody.
//! Everything below is about lease objects, used by every other store.
//!
//! The lease never touches `<key>.tflock`, which Terraform's native
//! backends share; LOCK itself stays a plain create-if-absent of that
//! object.
//!
//! Timing: the time to live is twice the store's operation timeout plus 10
//! seconds, and the holder checks before its final change that at least one
//! operation timeout remains ([`Lease::check`]), so the change lands before
//! anyone may take the lease over. What remains is a process paused (or a
//! clock off by more than [`CLOCK_SKEW`]) between that check and the
//! change. A crashed holder blocks the state for at most the time to live;
//! a waiter gives up with a 503 after [`Lease::acquire`]'s bounded wait.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StateError;
use crate::stores::keylock::KeyLock;
use crate::stores::{Condition, OpDelete, OpList, OpWrite, Payload, Store, StoreError, StoreExt};

/// Where leases live; inside the reserved prefix no state key can reach.
pub const LEASE_PREFIX: &str = ".stategate/lease/";

/// How far apart the clocks of processes sharing a store may be before an
/// unexpired lease could be taken for expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The body of a lease object.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    /// The unique token of the attempt that created it.
    owner: String,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    expires_ms: i128,
}

/// A held lease. Released with [`Lease::release`]; if the request is
/// dropped before that (the client went away), it is released in the
/// background.
pub struct Lease(Held);

enum Held {
    /// A lease object, on stores without a lease of their own.
    Object(ObjectLease),
    /// The store's own lease ([`Store::native_lease`]): it cannot expire
    /// while held and is released when dropped, or when its holder dies.
    Native(#[allow(dead_code)] KeyLock),
}

/// A lease held as an object in the store.
struct ObjectLease {
    store: Arc<dyn Store>,
    /// The lease object's key.
    key: String,
    /// Taken just before the create was sent: the lease is ours from then
    /// until `ttl` later, as others see it.
    taken: Instant,
    ttl: Duration,
    /// The store's operation timeout: the longest the final change can take.
    op_timeout: Duration,
    released: bool,
    /// Whether the final change was sent ([`ObjectLease::check`] passed).
    change_sent: std::sync::atomic::AtomicBool,
}

fn now_ms() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

/// The longest lease token, in bytes: a process id (10 digits), the
/// counter (20), the time in nanoseconds (20 until the year 5138) and 16
/// hex digits, joined by three `-`. Bounds the names a state key derives
/// ([`super::key::DERIVED_NAME_OVERHEAD`]).
pub const MAX_TOKEN_BYTES: usize = 10 + 20 + 20 + 16 + 3;

/// A token no other attempt, in this process or another, will use: the
/// process id, a per-process counter, the time, and the random seed std
/// gives every hasher.
fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    token(
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        OffsetDateTime::now_utc().unix_timestamp_nanos(),
        random,
    )
}

fn token(pid: u32, counter: u64, nanos: i128, random: u64) -> String {
    format!("{pid}-{counter}-{nanos}-{random:016x}")
}

/// A pause of about `base`, randomised so contenders drift apart.
fn jitter(base: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let ms = base.as_millis().max(2) as u64;
    Duration::from_millis(ms / 2 + random % ms)
}

impl Lease {
    /// Time to live of a lease on a store whose operations take at most
    /// `op_timeout`.
    pub fn ttl(op_timeout: Duration) -> Duration {
        op_timeout * 2 + Duration::from_secs(10)
    }

    /// Takes the lease of `object_key`, waiting while another process holds
    /// it: at most long enough for a crashed holder's lease to expire, then
    /// a 503 with the reason.
    pub async fn acquire(store: &Arc<dyn Store>, object_key: &str) -> Result<Lease, StateError> {
        let op_timeout = store.operation_timeout();
        let ttl = Self::ttl(op_timeout);
        let wait = ttl + CLOCK_SKEW + Duration::from_secs(5);
        if store.capabilities().native_lease {
            let lock = store.native_lease(object_key, wait).await?;
            return Ok(Lease(Held::Native(lock)));
        }
        ObjectLease::acquire(store, object_key, ttl, wait)
            .await
            .map(|lease| Lease(Held::Object(lease)))
    }

    /// Fails with a 503 unless the final change can still land while the
    /// lease is ours: at least one store operation's time must remain. A
    /// store's own lease cannot run out.
    pub fn check(&self) -> Result<(), StateError> {
        match &self.0 {
            Held::Object(lease) => lease.check(),
            Held::Native(_) => Ok(()),
        }
    }

    /// Releases the lease. A lease object that cannot be deleted is logged:
    /// it expires by itself.
    pub async fn release(self) {
        match self.0 {
            Held::Object(lease) => lease.release().await,
            Held::Native(lock) => drop(lock),
        }
    }

    /// Ends the lease after its holder's work failed with an unknown
    /// outcome (the store did not answer, or answered a failure that may
    /// follow a change): where the final change was sent as a plain
    /// request after a check ([`Lease::check`]), on a store without
    /// compare-and-swap, that request may still land, so the lease object
    /// is left to expire and nobody else changes the state before the
    /// change could. Released otherwise, in the background.
    pub fn end_after_failure(self, state: &str) {
        match self.0 {
            Held::Object(mut lease) if lease.change_sent.load(Ordering::Relaxed) => {
                lease.released = true;
                tracing::warn!(
                    state,
                    lease = %lease.key,
                    expires_in_s = lease.ttl.saturating_sub(lease.taken.elapsed()).as_secs(),
                    "a change failed and may still land; the state's write lease is left to expire, \
                     holding off its other changes until then"
                );
            }
            held => Lease(held).release_in_background(),
        }
    }

    /// Releases the lease without waiting for the store: after a failure,
    /// so that a store that did not answer is not waited for again.
    pub fn release_in_background(self) {
        match self.0 {
            Held::Object(mut lease) => {
                lease.released = true;
                delete_in_background(Arc::clone(&lease.store), std::mem::take(&mut lease.key));
            }
            Held::Native(lock) => drop(lock),
        }
    }
}

impl ObjectLease {
    async fn acquire(
        store: &Arc<dyn Store>,
        object_key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<ObjectLease, StateError> {
        let op_timeout = store.operation_timeout();
        let dir = format!("{LEASE_PREFIX}{object_key}/");
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        // The first attempt creates at once: a lease is nearly always free,
        // and looking first would cost every write a listing. Once the
        // lease was found busy, each attempt looks first, so a busy lease
        // is waited for without creating objects that would make its
        // holder's successor back off.
        let mut look_first = false;
        loop {
            if !look_first || !others_hold(store.as_ref(), &dir, None).await? {
                let key = format!("{dir}{}", new_token());
                let taken = Instant::now();
                let body = LeaseBody {
                    owner: key[dir.len()..].to_string(),
                    expires_ms: now_ms() + ttl.as_millis() as i128,
                };
                let body = Bytes::from(serde_json::to_vec(&body).expect("lease body serialises"));
                match store
                    .write(
                        &key,
                        Payload::from(body),
                        OpWrite::transient(Condition::IfAbsent),
                    )
                    .await
                {
                    Ok(_) => {}
                    // The token is unique; an object there is not ours.
                    Err(StoreError::AlreadyExists) => continue,
                    Err(e) => {
                        // The create may have been made and only its
                        // answer lost; the name is this attempt's alone,
                        // so removing it frees the state now instead of
                        // when the lease would expire. In the background:
                        // a store that did not answer is not waited for
                        // twice.
                        delete_in_background(Arc::clone(store), key);
                        return Err(e.into());
                    }
                }
                let lease = ObjectLease {
                    store: Arc::clone(store),
                    key,
                    taken,
                    ttl,
                    op_timeout,
                    released: false,
                    change_sent: false.into(),
                };
                match others_hold(store.as_ref(), &dir, Some(&lease.key)).await {
                    Ok(false) => return Ok(lease),
                    Ok(true) => lease.release().await,
                    Err(e) => {
                        lease.release().await;
                        return Err(e);
                    }
                }
            }
            look_first = true;
            if started.elapsed() >= wait {
                return Err(StateError::Store(StoreError::unavailable(format!(
                    "another stategate process kept {object_key} busy for {}s; try again",
                    wait.as_secs()
                ))));
            }
            tokio::time::sleep(jitter(pause)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn check(&self) -> Result<(), StateError> {
        if self.taken.elapsed() + self.op_timeout <= self.ttl {
            self.change_sent.store(true, Ordering::Relaxed);
            return Ok(());
        }
        Err(StateError::Store(StoreError::unavailable(format!(
            "the store was too slow: the change could not finish within its {}s write lease; try again",
            self.ttl.as_secs()
        ))))
    }

    /// Deletes the lease object. A failure is logged: the lease expires
    /// by itself.
    async fn release(mut self) {
        self.released = true;
        if let Err(e) = self
            .store
            .delete(&self.key, OpDelete::transient(Condition::Always))
            .await
        {
            tracing::warn!(lease = %self.key, error = %e, "could not release a write lease; it expires by itself");
        }
    }
}

impl Drop for ObjectLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // The request was dropped mid-way. Once its final change was sent,
        // that change may still land, and the lease is left to expire;
        // until then, the state is freed now rather than when the lease
        // would expire.
        if self.change_sent.load(Ordering::Relaxed) {
            return;
        }
        delete_in_background(Arc::clone(&self.store), std::mem::take(&mut self.key));
    }
}

/// Deletes a lease object on the runtime, not waiting for it; a failure
/// leaves it to expire.
fn delete_in_background(store: Arc<dyn Store>, key: String) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = store
                .delete(&key, OpDelete::transient(Condition::Always))
                .await;
        });
    }
}

/// Whether a lease other than `mine` is held in `dir`. Expired leases are
/// deleted on the way: their bodies never change, so an expired one read
/// now is expired for good.
async fn others_hold(store: &dyn Store, dir: &str, mine: Option<&str>) -> Result<bool, StateError> {
    let mut held = false;
    for entry in store.list(dir, OpList::default()).await? {
        // Leases of states below this one (`a/b` under `a`) are not ours.
        if entry.key[dir.len()..].contains('/') || Some(entry.key.as_str()) == mine {
            continue;
        }
        let Some(obj) = store.get(&entry.key).await? else {
            continue;
        };
        let expired = match serde_json::from_slice::<LeaseBody>(&obj.body) {
            Ok(body) => body.expires_ms + (CLOCK_SKEW.as_millis() as i128) < now_ms(),
            // Not written by stategate: nothing anyone waits on.
            Err(_) => true,
        };
        if expired {
            tracing::warn!(lease = %entry.key, "removing an expired write lease (its holder stopped)");
            store
                .delete(&entry.key, OpDelete::transient(Condition::Always))
                .await?;
        } else {
            held = true;
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_have_no_slash() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(!a.contains('/'));
    }

    #[test]
    fn tokens_stay_within_their_bound() {
        assert!(new_token().len() <= MAX_TOKEN_BYTES);
        let longest = token(u32::MAX, u64::MAX, 99_999_999_999_999_999_999, u64::MAX);
        assert_eq!(longest.len(), MAX_TOKEN_BYTES);
    }

    #[test]
    fn ttl_leaves_room_for_one_operation_after_the_work() {
        let op = Duration::from_secs(60);
        assert!(Lease::ttl(op) >= op * 2);
    }

    #[test]
    fn jitter_stays_near_its_base() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }
}
