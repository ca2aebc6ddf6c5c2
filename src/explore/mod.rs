//! The fleet explorer: which states hold what. An in-memory index of every
//! state's resources (address, type, mode, provider source, module path,
//! instance count), `terraform_version`, serial, last writer and time, and
//! lock holder, searched by [`Search`]; never an attribute or output value.
//!
//! Where its data comes from, cheaply: a write takes down the body's
//! [`crate::state::catalog::Catalog`] in the pass that checks it, and keeps
//! it in the history pointer a listing's summaries already read; a state
//! another tool wrote has it beside its kept summary. So building the
//! index reads one small object per state, a few at a time, and no body
//! but those of states never summarised with a catalog.
//!
//! How it stays current:
//!
//! - this server's own changes (write, push, restore, delete, lock,
//!   unlock) arrive at once through [`States::follow`];
//! - other replicas' changes are found by a listing every
//!   `explore.refresh`, which re-reads only the states whose listed size
//!   or time changed, and the lock holders of the states the listing
//!   shows locked. A refresh leaves alone a state this server changed
//!   after the refresh began: what it read may be older. With
//!   `explore.refresh: 0` (a server alone on its store) there is none
//!   after the first.
//!
//! - [`index`]: the compact index.
//! - [`query`]: a search's filters, checked, and how they are run.
//! - [`version`]: the `terraform_version` ranges a search takes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, broadcast, watch};

use crate::state::summary::Listed;
use crate::state::{StateChange, StateError, StateRef, States};

mod index;
pub mod query;
pub mod version;

pub use query::{Found, FoundResource, FoundState, Search, SearchError};

/// Summaries (or bodies) read at once while the index is built or
/// refreshed: enough to hide a cloud store's round trips, few enough not
/// to crowd out Terraform's requests.
pub const READS_AT_ONCE: usize = 16;

/// The explorer's settings (`explore:` in the configuration).
#[derive(Debug, Clone)]
pub struct ExploreSettings {
    /// How often the store is listed for changes other replicas made;
    /// `None` lists it only at start (and when a change of this server's
    /// own could not be applied as told).
    pub refresh: Option<Duration>,
}

impl Default for ExploreSettings {
    fn default() -> Self {
        ExploreSettings {
            refresh: Some(Duration::from_secs(30)),
        }
    }
}

/// The index of a store's states, kept current. Cheap to share.
#[derive(Clone)]
pub struct Explorer {
    shared: Arc<Shared>,
}

struct Shared {
    states: States,
    refresh: Option<Duration>,
    index: RwLock<index::Index>,
    /// Counts the changes told by [`States::follow`].
    told: AtomicU64,
    /// The number of the last change told of each state since the last
    /// refresh began: a refresh that began before it leaves the state be.
    recent: Mutex<HashMap<StateRef, u64>>,
    /// Whether one refresh has gone through the whole store.
    complete: AtomicBool,
    /// The changes this server makes, taken by [`Explorer::start`].
    changes: Mutex<Option<broadcast::Receiver<StateChange>>>,
    /// Asks for a refresh now: a change could not be applied as told.
    wake: Notify,
    /// Turns to search ([`SEARCHES_AT_ONCE`]).
    searching: Arc<Semaphore>,
}

/// Searches made at once; more wait for a turn. A search goes through the
/// whole index and holds all it found (every matching resource of a page
/// of states) until it is answered: few at a time bound the memory that
/// takes however many ask, and the time they hold the index.
const SEARCHES_AT_ONCE: usize = 2;

impl Explorer {
    /// An empty index of `states`, following their changes from now on
    /// (kept until [`Explorer::start`] applies them).
    pub fn new(states: States, settings: &ExploreSettings) -> Self {
        let changes = states.follow();
        Explorer {
            shared: Arc::new(Shared {
                states,
                refresh: settings.refresh,
                index: RwLock::new(index::Index::default()),
                told: AtomicU64::new(0),
                recent: Mutex::new(HashMap::new()),
                complete: AtomicBool::new(false),
                changes: Mutex::new(Some(changes)),
                wake: Notify::new(),
                searching: Arc::new(Semaphore::new(SEARCHES_AT_ONCE)),
            }),
        }
    }

    /// Builds the index in the background, then applies this server's
    /// changes as they come and refreshes from the store every
    /// `explore.refresh`, until `stop` turns true.
    pub fn start(&self, stop: watch::Receiver<bool>) {
        let Some(mut changes) = self.shared.changes.lock().expect("explorer").take() else {
            return;
        };
        let following = self.clone();
        let mut stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                match change {
                    Ok(change) => {
                        following
                            .on_index(move |explorer| explorer.apply(change))
                            .await
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::info!(
                            missed,
                            "the explorer fell behind the changes; listing the store again"
                        );
                        following.shared.wake.notify_one();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let refreshing = self.clone();
        let mut stopped = stop;
        tokio::spawn(async move {
            loop {
                if let Err(e) = refreshing.refresh().await {
                    tracing::warn!(error = %e, "refreshing the explorer's index failed");
                }
                let every = refreshing.shared.refresh;
                tokio::select! {
                    _ = tokio::time::sleep(every.unwrap_or_default()), if every.is_some() => {}
                    _ = refreshing.shared.wake.notified() => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    }

    /// Runs `f` on a blocking thread, where it may wait for the index: a
    /// search holds the index as long as it runs, and a lock waited for on
    /// the async threads (two, on two cores) stalled every request the
    /// server had, Terraform's too, until the search ended.
    async fn on_index<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Explorer) -> R + Send + 'static,
    ) -> R {
        let explorer = self.clone();
        tokio::task::spawn_blocking(move || f(&explorer))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Whether the index has been through the whole store once.
    pub fn complete(&self) -> bool {
        self.shared.complete.load(Ordering::Acquire)
    }

    /// Runs `search` over the states `may_see` allows.
    pub fn search(&self, search: &Search, may_see: &dyn Fn(&StateRef) -> bool) -> Found {
        let index = self.shared.index.read().expect("explorer index");
        query::run(
            &index,
            search,
            may_see,
            OffsetDateTime::now_utc(),
            self.complete(),
        )
    }

    /// [`Explorer::search`] for a request: in its turn
    /// ([`SEARCHES_AT_ONCE`]), on a blocking thread (it reads the whole
    /// index, which would hold an async thread that long), the turn held
    /// until the search ends, whether or not its client still waits.
    /// `None` when no turn came within `wait`: the request is answered
    /// then, as the dashboard's other views are, rather than left waiting
    /// behind every search before it.
    pub async fn search_in_turn(
        &self,
        search: Search,
        may_see: impl Fn(&StateRef) -> bool + Send + 'static,
        wait: Duration,
    ) -> Option<Found> {
        let turn = tokio::time::timeout(wait, Arc::clone(&self.shared.searching).acquire_owned())
            .await
            .ok()?
            .expect("the turns are never closed");
        let explorer = self.clone();
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            explorer.search(&search, &may_see)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Some(found)
    }

    /// Roughly how many bytes the index holds.
    pub fn held_bytes(&self) -> usize {
        self.shared
            .index
            .read()
            .expect("explorer index")
            .held_bytes()
    }

    /// Applies a change this server made.
    fn apply(&self, change: StateChange) {
        let shared = &self.shared;
        let n = shared.told.fetch_add(1, Ordering::AcqRel) + 1;
        let state = match change {
            StateChange::Written {
                state,
                current: Some((summary, Some(catalog))),
            } => {
                let mut index = shared.index.write().expect("explorer index");
                index.put(&state, &summary, &catalog, None);
                state
            }
            // Not known without reading the state: the listing shows it
            // changed, and the refresh reads it.
            StateChange::Written { .. } => {
                shared.wake.notify_one();
                return;
            }
            StateChange::Deleted { state } => {
                shared.index.write().expect("explorer index").remove(&state);
                state
            }
            StateChange::Lock { state, holder } => {
                let mut index = shared.index.write().expect("explorer index");
                index.set_lock(&state, holder.as_ref());
                state
            }
        };
        shared.recent.lock().expect("explorer").insert(state, n);
    }

    /// Whether a refresh that began after change number `began` may put
    /// what it read of `state`.
    fn may_put(&self, state: &StateRef, began: u64) -> bool {
        let recent = self.shared.recent.lock().expect("explorer");
        recent.get(state).is_none_or(|&n| n <= began)
    }

    /// Lists the store and brings the index up to it: reads the states
    /// that are new or whose listed size or time changed, drops the ones
    /// gone, and reads the lock holders of the locked ones.
    pub async fn refresh(&self) -> Result<(), StateError> {
        let shared = &self.shared;
        let began = shared.told.load(Ordering::Acquire);
        let listing = shared.states.listing().await?;
        let (listing, changed) = self
            .on_index(move |explorer| {
                let index = explorer.shared.index.read().expect("explorer index");
                let changed: Vec<Listed> = listing
                    .iter()
                    .filter(|l| {
                        index
                            .states
                            .get(&index::place(&l.state))
                            .is_none_or(|e| e.listed != Some((l.size, l.modified)))
                    })
                    .cloned()
                    .collect();
                drop(index);
                (listing, changed)
            })
            .await;
        let states = &shared.states;
        let mut reads = stream::iter(changed)
            .map(|l| async move {
                let read = states.catalogued(&l.state, &l).await;
                (l, read)
            })
            .buffer_unordered(READS_AT_ONCE);
        let mut unreadable = HashSet::new();
        while let Some((l, read)) = reads.next().await {
            if !self.may_put(&l.state, began) {
                continue;
            }
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(state = %l.state, error = %e, "the explorer could not read a state");
                    unreadable.insert(index::place(&l.state));
                    continue;
                }
            };
            self.on_index(move |explorer| {
                let mut index = explorer.shared.index.write().expect("explorer index");
                match read {
                    Some((summary, catalog)) => {
                        index.put(&l.state, &summary, &catalog, Some((l.size, l.modified)))
                    }
                    None => index.remove(&l.state),
                }
            })
            .await;
        }
        let locked: Vec<(StateRef, _)> = listing
            .iter()
            .filter(|l| l.locked)
            .map(|l| (l.state.clone(), l.lock_taken))
            .collect();
        let holders: Vec<_> = stream::iter(locked)
            .map(|(state, taken)| async move {
                let held = states.lock_holder(&state).await;
                (state, held.map(|h| h.map(|h| (h, taken))))
            })
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        let holders: HashMap<_, _> = holders
            .into_iter()
            .filter_map(|(state, held)| match held {
                Ok(held) => Some((index::place(&state), held.map(|(h, taken)| (h.info, taken)))),
                Err(e) => {
                    tracing::warn!(state = %state, error = %e, "the explorer could not read a lock");
                    None
                }
            })
            .collect();
        let listed: HashSet<_> = listing.iter().map(|l| index::place(&l.state)).collect();
        self.on_index(move |explorer| {
            let shared = &explorer.shared;
            let mut recent = shared.recent.lock().expect("explorer");
            let mut index = shared.index.write().expect("explorer index");
            let stale = |state: &StateRef| recent.get(state).is_some_and(|&n| n > began);
            let gone: Vec<StateRef> = index
                .states
                .iter()
                .filter(|(place, e)| !listed.contains(*place) && !stale(&e.state))
                .map(|(_, e)| e.state.clone())
                .collect();
            for state in gone {
                index.remove(&state);
            }
            for (place, e) in index.states.iter_mut() {
                if stale(&e.state) || unreadable.contains(place) {
                    continue;
                }
                match holders.get(place) {
                    Some(holder) => {
                        e.lock = holder
                            .as_ref()
                            .map(|(info, taken)| index::HeldLock::of(info, *taken))
                    }
                    None if !listing_locked(&listing, place) => e.lock = None,
                    // Locked, but its holder could not be read: kept.
                    None => {}
                }
            }
            recent.retain(|_, n| *n > began);
        })
        .await;
        shared.complete.store(true, Ordering::Release);
        Ok(())
    }
}

fn listing_locked(listing: &[Listed], place: &(String, String)) -> bool {
    listing
        .iter()
        .any(|l| l.locked && index::place(&l.state) == *place)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WriteOptions;

    fn doc(serial: u64, version: &str, types: &[&str]) -> bytes::Bytes {
        let resources: Vec<_> = types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::json!({
                    "mode": "managed", "type": t, "name": format!("r{i}"),
                    "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
                    "instances": [{"attributes": {"secret": "s3cr3t"}}],
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "version": 4, "terraform_version": version, "serial": serial,
            "lineage": "L", "resources": resources,
        }))
        .unwrap()
        .into()
    }

    fn keys(found: &Found) -> Vec<String> {
        found.states.iter().map(|s| s.key.clone()).collect()
    }

    /// However many ask at once, [`SEARCHES_AT_ONCE`] searches run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn searches_take_turns() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::TempDir::new().unwrap();
        let states = crate::state::local_states_for_tests(dir.path(), 0);
        let a = StateRef::parse("a.tfstate", None).unwrap();
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        states
            .write(&a, doc(1, "1.4.0", &["aws_db_instance"]), opts)
            .await
            .unwrap();
        let explorer = Explorer::new(states, &ExploreSettings::default());
        explorer.refresh().await.unwrap();
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let searches: Vec<_> = (0..8)
            .map(|_| {
                let (explorer, inside, most) = (explorer.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let search =
                        Search::parse([("type", "aws_*")], OffsetDateTime::now_utc()).unwrap();
                    let may_see = move |_: &StateRef| {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        true
                    };
                    explorer
                        .search_in_turn(search, may_see, Duration::from_secs(60))
                        .await
                })
            })
            .collect();
        for search in searches {
            assert_eq!(keys(&search.await.unwrap().unwrap()), ["a.tfstate"]);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= SEARCHES_AT_ONCE, "{most} searches ran at once");
        // Every turn taken: a search waits as long as it was told, no more.
        let held: Vec<_> = (0..SEARCHES_AT_ONCE)
            .map(|_| {
                explorer
                    .shared
                    .searching
                    .clone()
                    .try_acquire_owned()
                    .unwrap()
            })
            .collect();
        let search = Search::parse([("type", "aws_*")], OffsetDateTime::now_utc()).unwrap();
        let waited = explorer.search_in_turn(search, |_| true, Duration::from_millis(100));
        assert!(waited.await.is_none(), "a search ran with every turn taken");
        drop(held);
    }

    #[test]
    fn the_index_follows_writes_and_finds_other_writers_on_refresh() {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let states = crate::state::local_states_for_tests(dir.path(), 0);
        let opts = || WriteOptions {
            operation: "write",
            ..Default::default()
        };
        let a = StateRef::parse("a.tfstate", None).unwrap();
        let b = StateRef::parse("b.tfstate", None).unwrap();
        rt.block_on(states.write(&a, doc(1, "1.4.0", &["aws_db_instance"]), opts()))
            .unwrap();
        // Written by another tool: only its body says what it holds.
        std::fs::write(
            dir.path().join("b.tfstate+"),
            doc(1, "1.6.0", &["aws_s3_bucket"]),
        )
        .unwrap();

        let explorer = Explorer::new(states.clone(), &ExploreSettings::default());
        rt.block_on(explorer.refresh()).unwrap();
        let find = |pairs: &[(&str, &str)]| {
            let search = Search::parse(pairs.iter().copied(), OffsetDateTime::now_utc()).unwrap();
            explorer.search(&search, &|_| true)
        };
        assert!(find(&[]).complete);
        assert_eq!(keys(&find(&[("type", "aws_db_instance")])), ["a.tfstate"]);
        assert_eq!(
            keys(&find(&[("terraform_version", ">=1.5")])),
            ["b.tfstate"]
        );
        assert_eq!(keys(&find(&[("provider", "hashicorp/aws")])).len(), 2);

        // This server's own change arrives without a refresh.
        let (stop_tx, stop) = watch::channel(false);
        explorer.start(stop);
        rt.block_on(states.write(&a, doc(2, "1.4.0", &["aws_instance"]), opts()))
            .unwrap();
        rt.block_on(async {
            for _ in 0..100 {
                if keys(&find(&[("type", "aws_instance")])) == ["a.tfstate"] {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the write did not reach the index");
        });
        rt.block_on(states.delete(&b, None)).unwrap();
        rt.block_on(async {
            for _ in 0..100 {
                if find(&[]).total_states == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the delete did not reach the index");
        });
        let _ = stop_tx.send(true);
        let json = serde_json::to_string(&find(&[])).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
    }
}
