//! History stays cheap however long it grows. A write's store calls do not
//! grow with the number of versions kept (counted on a server run in this
//! process over a store wrapped to count its calls); pages of
//! `?history&limit=N&before=V` and of `stategate state history --limit
//! --before` walk down across pruned and missing numbers; and
//! `newest.json`, the pointer to the newest version, is recovered when it
//! is lost, corrupted, left behind by a crash, or was never written
//! (history kept before it existed). Concurrent writers still give one
//! record per accepted write, in order.
//!
//! `history_suite!(name, peer)` runs every test on one store, as
//! `history_<store>::<test>`; local and SQLite are the stores whose
//! objects a test can also remove behind stategate's back.

use stategate::stores::OpSnapshot;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stategate::app::{self, Application};
use stategate::config::{self, CommandLine, FileConfig};
use stategate::settings::StoreSettings;
use stategate::state::States;
use stategate::stores::{
    self, Capabilities, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Store, StoreError,
    Version,
};

use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

/// Generates one `#[test]` per suite function for a store.
macro_rules! history_suite {
    ($name:ident, $peer:expr) => {
        mod $name {
            fn peer() -> impl crate::history_paging::Removing {
                $peer
            }
            history_suite!(@tests
                pages_walk_down_across_pruned_and_missing_numbers, bad_windows_are_refused_with_a_reason,
                a_lost_or_corrupt_pointer_is_rebuilt, a_crash_before_the_pointer_moved_loses_no_version,
                history_from_before_the_pointer_keeps_working, state_history_pages_like_the_url,
                concurrent_writers_get_one_record_each_in_order
            );
        }
    };
    (@tests $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                crate::history_paging::$test(&peer());
            }
        )*
    };
}

history_suite!(history_local, crate::support::stores::LocalPeer::new());
history_suite!(history_sqlite, crate::support::stores::SqlitePeer::new());

/// A store whose objects a test can remove behind stategate's back.
pub trait Removing: Peer {
    fn remove_object(&self, key: &str);
}

impl Removing for LocalPeer {
    fn remove_object(&self, key: &str) {
        std::fs::remove_file(self.object_path(key)).expect("remove the object's file");
    }
}

impl Removing for SqlitePeer {
    fn remove_object(&self, key: &str) {
        let conn = rusqlite::Connection::open(self.db()).expect("open database");
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let removed = conn
            .execute("DELETE FROM objects WHERE key = ?1", [key])
            .expect("delete the object's row");
        assert_eq!(removed, 1, "{key} was not stored");
    }
}

const KEY: &str = "paging/terraform.tfstate";
const DIR: &str = ".stategate/history/paging/terraform.tfstate/";
const POINTER: &str = ".stategate/history/paging/terraform.tfstate/newest.json";

fn body_key(n: u64) -> String {
    format!("{DIR}{n:010}.tfstate")
}

fn meta_key(n: u64) -> String {
    format!("{DIR}{n:010}.json")
}

/// The state written with `serial`: every serial has its own bytes.
fn doc(serial: u64) -> Vec<u8> {
    state_doc("paging", serial, &format!("s{serial}"))
}

fn post(url: &str, serial: u64) {
    let (status, reason) = http("POST", url, &doc(serial));
    assert_eq!(status, 200, "serial {serial}: {}", text(&reason));
}

fn history_doc(url: &str, query: &str) -> serde_json::Value {
    let (status, body) = http("GET", &format!("{url}?history{query}"), b"");
    assert_eq!(status, 200, "?history{query}: {}", text(&body));
    serde_json::from_slice(&body).expect("history is JSON")
}

/// `(version, serial, operation)` of every record in a history answer.
fn records(doc: &serde_json::Value) -> Vec<(u64, u64, String)> {
    doc["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["serial"].as_u64().unwrap(),
                v["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The whole history, oldest first, as `(version, serial, operation)`.
fn whole(url: &str) -> Vec<(u64, u64, String)> {
    let doc = history_doc(url, "");
    assert!(
        doc.get("next_before").is_none() && doc.get("order").is_none(),
        "the unpaged answer is as it was: {doc}"
    );
    records(&doc)
}

/// One page (`query` starts with `&`): its version numbers and `next_before`.
fn page(url: &str, query: &str) -> (Vec<u64>, Option<u64>) {
    let doc = history_doc(url, query);
    assert_eq!(doc["order"], "newest_first", "{doc}");
    let numbers = records(&doc).into_iter().map(|(n, ..)| n).collect();
    (numbers, doc["next_before"].as_u64())
}

/// Records `first..=last`, each written with the serial of its number.
fn written(first: u64, last: u64) -> Vec<(u64, u64, String)> {
    (first..=last)
        .map(|n| (n, n, "write".to_string()))
        .collect()
}

pub fn pages_walk_down_across_pruned_and_missing_numbers(peer: &dyn Removing) {
    let server = Server::try_start(peer, &[], &[("STATEGATE_HISTORY_KEEP", "5")]).expect("start");
    let url = server.state_url(KEY);
    for serial in 1..=12 {
        post(&url, serial);
    }
    assert_eq!(whole(&url), written(8, 12), "oldest first, as before");

    // Newest first, each page naming the next; the last page says so.
    assert_eq!(page(&url, "&limit=2"), (vec![12, 11], Some(11)));
    assert_eq!(page(&url, "&limit=2&before=11"), (vec![10, 9], Some(9)));
    assert_eq!(page(&url, "&limit=2&before=9"), (vec![8], None));
    assert_eq!(page(&url, "&limit=1000"), (vec![12, 11, 10, 9, 8], None));
    assert_eq!(
        page(&url, "&before=10"),
        (vec![9, 8], None),
        "default limit"
    );
    assert_eq!(
        page(&url, "&before=99999&limit=3"),
        (vec![12, 11, 10], Some(10))
    );
    assert_eq!(page(&url, "&before=8"), (vec![], None), "all pruned");
    let one = history_doc(&url, "&limit=1&before=10");
    assert_eq!(records(&one), [(9, 9, "write".to_string())]);

    // A version removed by hand is a gap the pages step over, and
    // retention still deletes the next number due.
    peer.remove_object(&meta_key(10));
    peer.remove_object(&body_key(10));
    assert_eq!(page(&url, "&limit=3"), (vec![12, 11, 9], Some(9)));
    post(&url, 13);
    assert_eq!(page(&url, "&limit=10"), (vec![13, 12, 11, 9], None));
    assert_eq!(http("GET", &format!("{url}?version=8"), b"").0, 404);
    assert_eq!(http("GET", &format!("{url}?version=9"), b"").1, doc(9));

    // Workspaces page their own history.
    let dev = format!("{url}?workspace=dev");
    for serial in 1..=3 {
        post(&dev, serial);
    }
    assert_eq!(page(&url, "&workspace=dev&limit=2"), (vec![3, 2], Some(2)));
    assert_eq!(page(&url, "&workspace=dev&before=2"), (vec![1], None));
}

pub fn bad_windows_are_refused_with_a_reason(peer: &dyn Removing) {
    let server = Server::start(peer);
    let url = server.state_url(KEY);
    post(&url, 1);
    for (query, reason) in [
        ("&limit=0", "limit must be from 1 to 1000, not 0"),
        ("&limit=1001", "limit must be from 1 to 1000, not 1001"),
        (
            "&limit=18446744073709551615",
            "limit must be from 1 to 1000",
        ),
        ("&limit=many", "limit \"many\" is not a number"),
        ("&limit=", "limit \"\" is not a number"),
        ("&limit=-2", "limit \"-2\" is not a number"),
        ("&limit=2.5", "limit \"2.5\" is not a number"),
        ("&before=0", "before must be 1 or more"),
        ("&before=x&limit=3", "before \"x\" is not a number"),
        (
            "&before=184467440737095516160",
            "before \"184467440737095516160\" is not a number",
        ),
    ] {
        let (status, body) = http("GET", &format!("{url}?history{query}"), b"");
        let body = text(&body);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(reason), "{query}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{query}: {body}");
    }
    // A state with no history has an empty last page.
    let nothing = server.state_url("never/written.tfstate");
    assert_eq!(page(&nothing, "&limit=5"), (vec![], None));
}

pub fn a_lost_or_corrupt_pointer_is_rebuilt(peer: &dyn Removing) {
    let server = Server::start(peer);
    let url = server.state_url(KEY);
    for serial in 1..=3 {
        post(&url, serial);
    }
    let sound: serde_json::Value = serde_json::from_slice(&peer.object_bytes(POINTER)).unwrap();
    assert_eq!(
        (&sound["oldest"], &sound["version"]),
        (&serde_json::json!(1), &serde_json::json!(3)),
        "{sound}"
    );

    peer.remove_object(POINTER);
    post(&url, 4);
    peer.put_object(POINTER, b"{\"oldest\": 1, \"newest\": ");
    post(&url, 5);
    // Well-formed, but numbers stategate never writes.
    let mut nonsense = sound.clone();
    nonsense["oldest"] = serde_json::json!(99);
    peer.put_object(POINTER, nonsense.to_string().as_bytes());
    post(&url, 6);
    peer.put_object(POINTER, b"");
    assert_eq!(page(&url, "&limit=2"), (vec![6, 5], Some(5)));

    assert_eq!(whole(&url), written(1, 6), "no number reused, none skipped");
    let now: serde_json::Value = serde_json::from_slice(&peer.object_bytes(POINTER)).unwrap();
    assert_eq!(now["version"], 6, "rebuilt: {now}");
    assert!(
        server.logs("history pointer rebuilt from a listing"),
        "{}",
        server.log()
    );
}

/// What a write that died between creating version `n` and moving the
/// pointer leaves: the state, the version's body, and with `record` its
/// record too (a crash after it).
fn crashed_write(peer: &dyn Removing, serial: u64, record: bool) {
    peer.put_object(KEY, &doc(serial));
    peer.put_object(&body_key(serial), &doc(serial));
    if record {
        let body = doc(serial);
        let meta = serde_json::json!({
            "version": serial, "serial": serial, "lineage": "paging", "resources": 1,
            "size": body.len(), "md5": md5_hex(&body), "created": "2026-01-01T00:00:00Z",
            "who": null, "lock_id": null, "operation": "write",
            "object_version": "as written before the crash",
        });
        peer.put_object(&meta_key(serial), meta.to_string().as_bytes());
    }
}

pub fn a_crash_before_the_pointer_moved_loses_no_version(peer: &dyn Removing) {
    let server = Server::start(peer);
    let url = server.state_url(KEY);
    for serial in 1..=3 {
        post(&url, serial);
    }
    crashed_write(peer, 4, false);
    post(&url, 5);
    crashed_write(peer, 6, true);
    post(&url, 7);

    let mut want = written(1, 7);
    // Its record was lost with the process: rebuilt from the body.
    want[3].2 = "found".into();
    assert_eq!(whole(&url), want);
    for n in 1..=7 {
        let (status, body) = http("GET", &format!("{url}?version={n}"), b"");
        assert_eq!((status, body), (200, doc(n)), "version {n}");
    }
    assert_eq!(page(&url, "&limit=3"), (vec![7, 6, 5], Some(5)));
}

pub fn history_from_before_the_pointer_keeps_working(peer: &dyn Removing) {
    // Started first, so the store exists (a SQLite file gets its tables).
    let server = Server::start(peer);
    let url = server.state_url(KEY);
    // The folder as stategate wrote it before pointers: versions and
    // their records, the summary, no `newest.json`.
    for serial in 1..=3 {
        let body = doc(serial);
        peer.put_object(&body_key(serial), &body);
        let meta = serde_json::json!({
            "version": serial, "serial": serial, "lineage": "paging", "resources": 1,
            "size": body.len(), "md5": md5_hex(&body), "created": "2026-01-01T00:00:00Z",
            "who": "ann@host", "lock_id": "old-lock", "operation": "write",
            "object_version": format!("store version {serial}"),
        });
        peer.put_object(&meta_key(serial), meta.to_string().as_bytes());
    }
    let summary = serde_json::json!({
        "version": 3, "serial": 3, "lineage": "paging", "resources": 1,
        "size": doc(3).len(), "updated": "2026-01-01T00:00:00Z", "who": "ann@host",
        "operation": "write",
    });
    peer.put_object(
        &format!("{DIR}summary.json"),
        summary.to_string().as_bytes(),
    );
    peer.put_object(KEY, &doc(3));

    post(&url, 4);
    assert_eq!(
        whole(&url),
        written(1, 4),
        "numbering goes on, nothing found twice"
    );
    assert!(peer.object_keys().iter().any(|k| k == POINTER));
    assert_eq!(page(&url, "&limit=3"), (vec![4, 3, 2], Some(2)));
    assert_eq!(page(&url, "&before=2"), (vec![1], None));
    post(&url, 5);
    assert_eq!(page(&url, "&limit=2"), (vec![5, 4], Some(4)));
}

pub fn state_history_pages_like_the_url(peer: &dyn Removing) {
    let server = Server::start(peer);
    let url = server.state_url(KEY);
    for serial in 1..=5 {
        post(&url, serial);
    }
    let versions = |stdout: &str| -> Vec<u64> {
        stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    let all = stategate_ok(peer, &["state", "history", KEY]);
    assert_eq!(versions(&all), [1, 2, 3, 4, 5], "{all}");

    let first = stategate(peer, &["state", "history", KEY, "--limit", "2"], &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(versions(&text(&first.stdout)), [5, 4]);
    assert!(
        text(&first.stderr).contains("older versions: --before 4"),
        "{}",
        text(&first.stderr)
    );
    let last = stategate(peer, &["state", "history", KEY, "--before", "3"], &[]);
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(versions(&text(&last.stdout)), [2, 1]);
    assert!(!text(&last.stderr).contains("older versions"));

    for (args, reason) in [
        (&["--limit", "0"][..], "limit must be from 1 to 1000, not 0"),
        (
            &["--limit", "5000"][..],
            "limit must be from 1 to 1000, not 5000",
        ),
        (&["--before", "0"][..], "before must be 1 or more"),
    ] {
        let refused = stategate(peer, &[&["state", "history", KEY][..], args].concat(), &[]);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            text(&refused.stderr).contains(reason),
            "{args:?}: {}",
            text(&refused.stderr)
        );
    }
}

/// How long the racing writers go on past their least rounds (which run
/// however slow the machine), and their `history_keep`.
const RACE_BUDGET: Duration = Duration::from_secs(20);
const RACE_ROUNDS_MIN: usize = 5;
const RACE_KEEP: usize = 3;

pub fn concurrent_writers_get_one_record_each_in_order(peer: &dyn Removing) {
    let keep = RACE_KEEP.to_string();
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::try_start(peer, &[], &[("STATEGATE_HISTORY_KEEP", &keep)]).expect("start"))
        .collect();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(rounds, RACE_ROUNDS_MIN, 40, started, RACE_BUDGET) {
        let key = format!("race/{rounds}.tfstate");
        let urls: Vec<String> = servers.iter().map(|s| s.state_url(&key)).collect();
        post(&urls[0], 1);
        let barrier = Arc::new(Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (barrier, url) = (Arc::clone(&barrier), urls[i].clone());
                std::thread::spawn(move || {
                    let serial = 2 + i as u64;
                    barrier.wait();
                    (serial, http("POST", &url, &doc(serial)).0)
                })
            })
            .collect();
        let results: Vec<(u64, u16)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut accepted: Vec<u64> = results
            .iter()
            .filter(|(_, status)| *status == 200)
            .map(|(serial, _)| *serial)
            .collect();
        accepted.sort_unstable();
        let mut expected: Vec<u64> = std::iter::once(1).chain(accepted).collect();
        let excess = expected.len().saturating_sub(RACE_KEEP);
        expected.drain(..excess);

        let recorded = whole(&urls[1]);
        let serials: Vec<u64> = recorded.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(serials, expected, "round {rounds}: writes {results:?}");
        assert!(
            recorded.iter().all(|(_, _, op)| op == "write"),
            "round {rounds}: {recorded:?}"
        );
        let numbers: Vec<u64> = recorded.iter().map(|(n, ..)| *n).collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "round {rounds}: consecutive numbers {numbers:?}"
        );
        let (newest_first, _) = page(&urls[2], &format!("&limit={RACE_KEEP}"));
        assert_eq!(
            newest_first,
            numbers.iter().rev().copied().collect::<Vec<_>>(),
            "round {rounds}"
        );
        rounds += 1;
    }
}

// A write's cost, counted on a server in this process.

/// Calls made on a store: `(operation, key)`, in order.
#[derive(Default)]
struct Calls(Mutex<Vec<(&'static str, String)>>);

impl Calls {
    fn note(&self, op: &'static str, key: &str) {
        self.0.lock().unwrap().push((op, key.to_string()));
    }

    /// The calls made since the last take.
    fn take(&self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A store that notes every call and passes it on, wrapping a real store
/// as stategate's own sealed store does.
struct Counting {
    inner: Arc<dyn Store>,
    calls: Arc<Calls>,
}

#[async_trait]
impl Store for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    /// Without the inner store's own lease: its write leases are objects,
    /// whose calls are noted too.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_lease: false,
            ..self.inner.capabilities()
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.inner.operation_timeout()
    }

    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        self.calls.note("get", key);
        self.inner.read(key, args).await
    }

    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        self.calls.note("put", key);
        self.inner.write(key, body, args).await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        self.calls.note("delete", key);
        self.inner.delete(key, args).await
    }

    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        self.calls.note("list", prefix);
        self.inner.list(prefix, args).await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        self.calls.note("stat", key);
        self.inner.stat(key).await
    }

    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        self.calls.note("snapshot", copy.to);
        self.inner.snapshot(copy).await
    }
}

/// stategate's server on a counting store, in this process.
struct InProcess {
    /// `http://127.0.0.1:PORT`
    url: String,
    /// What the server asked of its store.
    calls: Arc<Calls>,
    /// Ends the server's accept loop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Runs the server for as long as this lives.
    _runtime: tokio::runtime::Runtime,
}

impl InProcess {
    /// Serves the `storage_type` store with `settings`, keeping every version.
    fn start(storage_type: &'static str, settings: &[(&'static str, &str)]) -> InProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let calls = Arc::new(Calls::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let url = runtime.block_on(async {
            let backend = stores::backend(storage_type).expect("backend");
            let inner = (backend.open)(StoreSettings::from_pairs(storage_type, settings))
                .await
                .unwrap_or_else(|e| panic!("opening the {storage_type} store: {e}"));
            let store = Counting {
                inner,
                calls: Arc::clone(&calls),
            };
            let capabilities = store.capabilities();
            // Built as `serve` builds it, around the counting store.
            let line = CommandLine {
                flags: [("storage-type", storage_type), ("history-keep", "0")]
                    .into_iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
                store: settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let resolved = config::resolve(&FileConfig::default(), &|_| None, &line).unwrap();
            let states = States::new(Arc::new(store), capabilities, app::policy(&resolved));
            let application = Application::assemble(&resolved, states).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                application
                    .serve(listener, None, async {
                        let _ = stopped.await;
                    })
                    .await
            });
            url
        });
        InProcess {
            url,
            calls,
            stop: Some(stop),
            _runtime: runtime,
        }
    }
}

impl Drop for InProcess {
    /// Stops the server; dropping the runtime then ends its tasks.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How many calls of each operation, and how many of them on history.
fn tally(calls: &[(&'static str, String)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (op, key) in calls {
        *out.entry(op.to_string()).or_default() += 1;
        if key.starts_with(".stategate/history/") {
            *out.entry(format!("{op} history")).or_default() += 1;
        }
    }
    out
}

/// Writes `versions` versions of one state and checks that the last write
/// made exactly the calls of the tenth, none of them a listing of history,
/// and that a page of ten reads ten records and lists nothing.
fn writes_cost_the_same_at_any_length(server: &InProcess, versions: u64) {
    let url = format!("{}/states/{KEY}", server.url);
    let mut tenth = BTreeMap::new();
    for serial in 1..=versions {
        post(&url, serial);
        let calls = tally(&server.calls.take());
        if serial > 1 {
            assert_eq!(calls.get("list history"), None, "write {serial}: {calls:?}");
        }
        if serial == 10 {
            tenth = calls;
        } else if serial == versions {
            assert_eq!(calls, tenth, "write {serial} against write 10");
        }
    }

    assert_eq!(
        page(&url, "&limit=10&before=200"),
        ((190..200).rev().collect(), Some(190))
    );
    let calls = tally(&server.calls.take());
    assert_eq!(calls.get("list"), None, "{calls:?}");
    // The pointer, and the ten records returned.
    assert_eq!(calls.get("get history"), Some(&11), "{calls:?}");
}

#[test]
fn history_writes_cost_the_same_at_any_length_local() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().join("data").display().to_string();
    let server = InProcess::start("local", &[("path", &root)]);
    writes_cost_the_same_at_any_length(&server, 400);
}

#[test]
fn history_writes_cost_the_same_at_any_length_sqlite() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("states.db").display().to_string();
    let server = InProcess::start("sqlite", &[("path", &file)]);
    writes_cost_the_same_at_any_length(&server, 400);
}
