//! What the bucket stores (S3, OSS) share: telling a missing object from a
//! missing bucket, a time limit
//! on a whole operation, the compare-first stand-in for servers without
//! conditional writes, and retries of conditional writes that raced.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use super::net::network_cause;
use super::{Condition, StoreError, Version};

/// How long a successful bucket check is trusted. Short, so a bucket
/// deleted while stategate runs is noticed within seconds.
const BUCKET_SEEN_FOR: Duration = Duration::from_secs(5);

/// Remembers when a bucket store last saw its bucket exist. A 404 without
/// an error code (every HEAD error has no body) cannot tell a missing object
/// from a missing bucket; bucket stores ask [`BucketSeen::recently`] and,
/// when it says no, check the bucket before answering "no such object".
#[derive(Debug, Default)]
pub struct BucketSeen(Mutex<Option<Instant>>);

impl BucketSeen {
    /// Whether the bucket was seen within the last few seconds.
    pub fn recently(&self) -> bool {
        self.0
            .lock()
            .expect("bucket check mutex")
            .is_some_and(|at| at.elapsed() < BUCKET_SEEN_FOR)
    }

    /// Records that the bucket was just seen.
    pub fn seen(&self) {
        *self.0.lock().expect("bucket check mutex") = Some(Instant::now());
    }
}

/// Runs one store operation (several requests, their retries and the
/// transfer) within `limit`, answering [`StoreError::Unavailable`] naming
/// `server` when it takes longer: a server that accepts the connection and
/// never answers must still give a prompt 503.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    server: &str,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result,
        Err(_) => {
            let reason = format!(
                "{what}: {server} did not answer within {}s",
                limit.as_secs()
            );
            tracing::warn!("{reason}");
            Err(StoreError::Unavailable(reason))
        }
    }
}

/// The stand-in for a conditional write on a server without one: reads the
/// object's current version (`current`, a HEAD) and refuses unless it is
/// `expected`. Not atomic: a write landing between the check and the
/// change is lost, which is why such stores report no compare-and-swap and
/// the state layer takes its write lease around these steps.
pub async fn compare_first(
    current: impl std::future::Future<Output = Result<Option<Version>, StoreError>>,
    expected: &Version,
) -> Result<(), StoreError> {
    Condition::IfMatch(expected.clone()).check(current.await?.as_ref(), true)
}

/// How often a conditional write that lost a race with another conditional
/// write (S3's 409 `ConditionalRequestConflict`) is tried again.
pub const CONFLICT_RETRIES: u32 = 5;

/// The pause before retry `attempt` (0-based) of a conditional write that
/// raced: 50 ms, doubling.
pub fn conflict_backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 << attempt.min(6))
}
