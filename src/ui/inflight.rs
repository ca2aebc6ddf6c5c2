//! One computation per key, however many ask for it at once: a view of a
//! large state (a diff, an overview) takes seconds and memory, and several
//! people opening the same page should cost one.
//!
//! Only computations in flight are shared, never kept: the entry is
//! removed when the result is in, so a later request computes again and
//! sees the store as it is then. A failure is not shared either: each
//! waiter then tries for itself, one at a time, so a waiter is never
//! handed an error another request's circumstances caused (a wait that
//! ran out, a client that went away).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// The computations running, by key.
pub struct InFlight<K, V> {
    running: Mutex<HashMap<K, Arc<OnceCell<Arc<V>>>>>,
}

impl<K, V> Default for InFlight<K, V> {
    fn default() -> Self {
        InFlight {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V> InFlight<K, V> {
    /// The result of `compute` for `key`, or of the computation for `key`
    /// already running, which this then waits for.
    pub async fn get_or_compute<E, F>(&self, key: K, compute: F) -> Result<Arc<V>, E>
    where
        F: AsyncFnOnce() -> Result<V, E>,
    {
        let cell = Arc::clone(
            self.running
                .lock()
                .expect("in-flight views")
                .entry(key.clone())
                .or_default(),
        );
        let _leaving = Leaving {
            running: &self.running,
            key,
            cell: &cell,
        };
        cell.get_or_try_init(async || compute().await.map(Arc::new))
            .await
            .cloned()
    }

    /// How many keys have an entry (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

/// Removes a key's entry as its waiters leave: once the result is in, or
/// when the last waiter gives up before it is.
struct Leaving<'a, K: Eq + Hash, V> {
    running: &'a Mutex<HashMap<K, Arc<OnceCell<Arc<V>>>>>,
    key: K,
    cell: &'a Arc<OnceCell<Arc<V>>>,
}

impl<K: Eq + Hash, V> Drop for Leaving<'_, K, V> {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("in-flight views");
        let Some(entry) = running.get(&self.key) else {
            return;
        };
        // Waiters take their handle under this lock, so the count is
        // exact here: the map's and this waiter's alone means no other.
        let last = Arc::strong_count(entry) <= 2;
        if Arc::ptr_eq(entry, self.cell) && (self.cell.initialized() || last) {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_at_once_share_one_computation_and_nothing_is_kept() {
        let views: InFlight<&str, usize> = InFlight::default();
        let runs = AtomicUsize::new(0);
        let compute = async || {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(7)
        };
        let (a, b, c) = tokio::join!(
            views.get_or_compute("k", compute),
            views.get_or_compute("k", compute),
            views.get_or_compute("k", compute),
        );
        assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (7, 7, 7));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(views.len(), 0, "the entry goes with its result");
        views.get_or_compute("k", compute).await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a later request computes again"
        );
    }

    #[tokio::test]
    async fn a_failure_is_not_shared_and_a_waiter_that_leaves_leaves_nothing() {
        let views: InFlight<&str, usize> = InFlight::default();
        let runs = AtomicUsize::new(0);
        let failing = async || {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if n == 0 { Err("first") } else { Ok(n) }
        };
        let (a, b) = tokio::join!(
            views.get_or_compute("k", failing),
            views.get_or_compute("k", failing)
        );
        assert_eq!(a.unwrap_err(), "first");
        assert_eq!(*b.unwrap(), 1, "the second waiter computed for itself");
        assert_eq!(views.len(), 0);

        let slow = async || {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, ()>(0)
        };
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), views.get_or_compute("k", slow)).await;
        assert!(gave_up.is_err());
        assert_eq!(views.len(), 0, "no waiter is left for the entry");
    }
}
