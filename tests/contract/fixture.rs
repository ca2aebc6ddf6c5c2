//! The stores under contract and how each is opened: a fresh store of one
//! kind per test ([`Fixture`]), and the small helpers the promises share.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use stategate::settings::StoreSettings;
use stategate::stores::{self, Capabilities, Condition, Entry, OpList, Store, StoreExt, Version};
use tempfile::TempDir;

use crate::support::moto::Moto;
use crate::support::oss_server::{ENDPOINT, OssServer, REGION, STS_AK, STS_SECRET, STS_TOKEN};
use crate::support::*;

/// The stores under contract, as configured for these tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Local,
    /// The local store writing through named temporary files, as it does
    /// where the file system cannot make unnamed ones.
    LocalNamedTemporaries,
    Sqlite,
    /// S3 on a moto server that honours `If-None-Match` and `If-Match`.
    S3,
    /// S3 on a moto server that ignores `If-Match`: S3-compatible servers
    /// without compare-and-swap, as `cloud_races` runs them.
    S3WithoutIfMatch,
    Oss,
    /// The db store on the private PostgreSQL.
    #[cfg(feature = "db")]
    Postgres,
    /// The db store on the private MariaDB.
    #[cfg(feature = "db")]
    Mariadb,
}

impl Kind {
    /// What each store documents it can do.
    pub fn documented_capabilities(self) -> Capabilities {
        let compare_and_swap = match self {
            // The S3 store detects the ignored header and says so; OSS has no
            // conditional PutObject or DeleteObject at all.
            Kind::S3WithoutIfMatch | Kind::Oss => false,
            _ => true,
        };
        Capabilities {
            conditional_create: true,
            compare_and_swap,
            // Bucket versions are ETags, MD5s of the bytes; the others are
            // generations never given twice.
            unique_versions: !matches!(self, Kind::S3 | Kind::S3WithoutIfMatch | Kind::Oss),
            // A lock on a file of this machine, shared by every process
            // using the store.
            native_lease: matches!(
                self,
                Kind::Local | Kind::LocalNamedTemporaries | Kind::Sqlite
            ),
        }
    }

    /// Whether the store overrides `snapshot` with an in-place copy that
    /// checks the source's version (a hard link, a copied row); the others
    /// use the trait's default, which writes the body the caller has.
    pub fn snapshots_in_place(self) -> bool {
        !matches!(self, Kind::S3 | Kind::S3WithoutIfMatch | Kind::Oss)
    }
}

/// Where a fixture's store keeps its objects.
pub enum Place {
    /// A temporary directory: the local store's root is `data` in it, the
    /// SQLite store's file `states.db`.
    Dir(TempDir),
    /// A bucket on the shared moto or OSS server.
    Bucket(String),
    /// A database of its own on the engine's shared private server.
    #[cfg(feature = "db")]
    Database(crate::support::db::DbPeer),
}

/// A fresh, empty store of one kind.
pub struct Fixture {
    /// Which store, for what it documents.
    pub kind: Kind,
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// Its objects, kept for as long as the fixture lives.
    pub place: Place,
}

/// Prefix of every bucket store's keys, so listings also prove the store
/// strips it.
const S3_PREFIX: &str = "team/";
const OSS_PREFIX: &str = "team/states";

impl Fixture {
    /// Opens a store of `kind` on a place of its own.
    pub async fn open(kind: Kind) -> Fixture {
        let place = match kind {
            Kind::Local | Kind::LocalNamedTemporaries | Kind::Sqlite => {
                Place::Dir(TempDir::new().expect("temp dir"))
            }
            Kind::S3 | Kind::S3WithoutIfMatch => Place::Bucket(new_s3_bucket(moto(kind))),
            Kind::Oss => Place::Bucket(OssServer::shared().new_bucket("")),
            #[cfg(feature = "db")]
            Kind::Postgres => Place::Database(crate::support::db::DbPeer::new(
                crate::support::db::Engine::Postgres,
            )),
            #[cfg(feature = "db")]
            Kind::Mariadb => Place::Database(crate::support::db::DbPeer::new(
                crate::support::db::Engine::Mariadb,
            )),
        };
        let store = match (&place, kind) {
            #[cfg(feature = "db")]
            (Place::Database(peer), _) => open_db(peer).await,
            (Place::Dir(dir), Kind::Local) => open_local(&dir.path().join("data")).await,
            (Place::Dir(dir), Kind::LocalNamedTemporaries) => Arc::new(
                stores::local::LocalStore::open_dir_with_named_temporaries(
                    &dir.path().join("data"),
                )
                .expect("local store"),
            ),
            (Place::Dir(dir), _) => open_sqlite(&dir.path().join("states.db")).await,
            (Place::Bucket(bucket), Kind::Oss) => open_oss(bucket, OSS_PREFIX).await,
            (Place::Bucket(bucket), _) => open_s3(moto(kind), bucket, S3_PREFIX).await,
        };
        Fixture { kind, store, place }
    }

    /// Another store of the same kind, on a place of its own.
    pub async fn sibling(&self) -> Fixture {
        Fixture::open(self.kind).await
    }

    /// For bucket stores: a store on the same bucket under another prefix.
    pub async fn neighbour(&self) -> Option<Arc<dyn Store>> {
        match (&self.place, self.kind) {
            (Place::Bucket(bucket), Kind::Oss) => Some(open_oss(bucket, "team/other").await),
            (Place::Bucket(bucket), _) => {
                Some(open_s3(moto(self.kind), bucket, "team-other/").await)
            }
            (Place::Dir(_), _) => None,
            #[cfg(feature = "db")]
            (Place::Database(_), _) => None,
        }
    }

    /// Takes the backend away behind the store's back, where the store
    /// promises to notice: the SQLite file removed (checked before and
    /// after every operation), the bucket deleted. Returns false for the
    /// local store, which promises nothing about a removed root (it keeps
    /// working in the directory it holds open).
    pub fn remove_backend(&self) -> bool {
        match (&self.place, self.kind) {
            (Place::Dir(_), Kind::Local | Kind::LocalNamedTemporaries) => false,
            // A database that goes away is the db tests' outage case.
            #[cfg(feature = "db")]
            (Place::Database(_), _) => false,
            (Place::Dir(dir), _) => {
                for name in ["states.db", "states.db-wal", "states.db-shm"] {
                    let _ = std::fs::remove_file(dir.path().join(name));
                }
                true
            }
            (Place::Bucket(bucket), Kind::Oss) => {
                OssServer::shared().delete_bucket(bucket);
                true
            }
            (Place::Bucket(bucket), _) => {
                moto(self.kind).inspect(&["delete-bucket", bucket], b"");
                true
            }
        }
    }
}

// Store construction: one small function per store, so a change in how
// stores are configured or opened is made here and nowhere else.

async fn open_local(root: &Path) -> Arc<dyn Store> {
    open_backend("local", &[("path", &root.display().to_string())]).await
}

async fn open_sqlite(file: &Path) -> Arc<dyn Store> {
    open_backend("sqlite", &[("path", &file.display().to_string())]).await
}

async fn open_s3(moto: &Moto, bucket: &str, prefix: &str) -> Arc<dyn Store> {
    open_backend(
        "s3",
        &[
            ("endpoint", &moto.endpoint),
            ("bucket", bucket),
            ("prefix", prefix),
            ("region", "us-east-1"),
            ("accessKeyID", &moto.access_key),
            ("accessKeySecret", &moto.secret_key),
            ("timeout", "20"),
        ],
    )
    .await
}

async fn open_oss(bucket: &str, prefix: &str) -> Arc<dyn Store> {
    route_oss_through(OssServer::shared());
    open_backend(
        "oss",
        &[
            ("bucket", bucket),
            ("prefix", prefix),
            ("endpoint", &format!("http://{ENDPOINT}")),
            ("region", REGION),
            ("access_key", STS_AK),
            ("secret_key", STS_SECRET),
            ("security_token", STS_TOKEN),
            ("timeout", "20"),
        ],
    )
    .await
}

#[cfg(feature = "db")]
async fn open_db(peer: &crate::support::db::DbPeer) -> Arc<dyn Store> {
    let mut pairs = peer.connection_settings();
    pairs.push(("dbPassword".into(), crate::support::db::PASSWORD.into()));
    pairs.push(("dbTablePrefix".into(), crate::support::db::PREFIX.into()));
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let backend = stores::backend("db").expect("the db backend");
    let settings = StoreSettings::from_table("db", backend.settings, &pairs)
        .unwrap_or_else(|e| panic!("db settings: {e}"));
    (backend.open)(settings)
        .await
        .unwrap_or_else(|e| panic!("opening the db store: {e}"))
}

/// Opens a registered backend from canonical setting names.
async fn open_backend(name: &'static str, pairs: &[(&'static str, &str)]) -> Arc<dyn Store> {
    let backend = stores::backend(name).unwrap_or_else(|| panic!("no `{name}` backend"));
    (backend.open)(StoreSettings::from_pairs(name, pairs))
        .await
        .unwrap_or_else(|e| panic!("opening the {name} store: {e}"))
}

fn moto(kind: Kind) -> &'static Moto {
    match kind {
        Kind::S3WithoutIfMatch => Moto::shared_ignoring_if_match(),
        _ => Moto::shared(),
    }
}

/// A new bucket on `moto`, made with one unsigned request (the shared
/// servers do not check signatures) rather than a boto3 process per test.
fn new_s3_bucket(moto: &Moto) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "contract-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let (status, body) = http("PUT", &format!("{}/{name}", moto.endpoint), b"");
    assert_eq!(status, 200, "create bucket {name}: {}", text(&body));
    name
}

/// The OSS store reaches the test server as real OSS clients reach it
/// through a proxy: its endpoint `oss-test.invalid` never resolves. Its
/// HTTP client takes the proxy from the environment when it is built, and
/// there is no other way in, so this process gets `HTTP_PROXY` once, with
/// loopback exempt so that nothing this binary talks to on 127.0.0.1 (or
/// starts later, inheriting the environment) is routed through it.
fn route_oss_through(server: &OssServer) {
    static ROUTED: OnceLock<()> = OnceLock::new();
    ROUTED.get_or_init(|| {
        let proxy = format!("http://{}", server.addr);
        let direct = "127.0.0.1,localhost,::1";
        // SAFETY: set once, before the first OSS client is built. Other test
        // threads may be running; std serialises its own environment reads
        // (including around getaddrinfo) with these writes.
        unsafe {
            std::env::set_var("HTTP_PROXY", &proxy);
            std::env::set_var("http_proxy", &proxy);
            std::env::set_var("NO_PROXY", direct);
            std::env::set_var("no_proxy", direct);
        }
    });
}

/// Runs one contract test on a fresh store of `kind`, on a runtime of its own.
pub fn run<F>(kind: Kind, test: fn(Fixture) -> F)
where
    F: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move { test(Fixture::open(kind).await).await });
}

// Helpers.

/// The object's body, or `None`; panics on a store error.
pub async fn body_of(store: &dyn Store, key: &str) -> Option<Bytes> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .map(|o| o.body)
}

/// The object's current version, read with `get`.
pub async fn version_of(store: &dyn Store, key: &str) -> Version {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .unwrap_or_else(|| panic!("{key} is missing"))
        .version
}

pub async fn put(store: &dyn Store, key: &str, body: &[u8]) -> Version {
    store
        .put(key, Bytes::copy_from_slice(body), Condition::Always)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

pub async fn list(store: &dyn Store, prefix: &str) -> Vec<Entry> {
    store
        .list(prefix, OpList::default())
        .await
        .unwrap_or_else(|e| panic!("list `{prefix}`: {e}"))
}

pub fn keys_and_sizes(entries: &[Entry]) -> Vec<(String, u64)> {
    entries.iter().map(|e| (e.key.clone(), e.size)).collect()
}

/// Compares large bodies without printing them.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: {} bytes read back, {} written; first difference at byte {first}",
        got.len(),
        want.len()
    );
}

/// `len` bytes of a fixed pseudo-random pattern (every byte value, no
/// repeating period a store could compress or dedupe away).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The store's capabilities, asserted to be what it documents: a test
/// gated on one can never skip quietly.
pub fn checked_capabilities(fx: &Fixture) -> Capabilities {
    let caps = fx.store.capabilities();
    let documented = fx.kind.documented_capabilities();
    assert_eq!(
        caps,
        documented,
        "{:?} ({}) reports {caps:?}, documents {documented:?}",
        fx.kind,
        fx.store.describe()
    );
    caps
}
