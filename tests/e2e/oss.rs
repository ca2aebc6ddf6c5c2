//! The conformance suite on `storageType: oss` against the OSS protocol
//! test server (`tests/peers/oss_server.py`, checked against Alibaba's own
//! SDKs by `tests/peers/test_oss_server.py`), plus what only OSS can show:
//! `encrypt` and `acl` recorded on every object, STS tokens, clear start-up
//! errors, versioned buckets refused, and many processes racing for one
//! lock through `x-oss-forbid-overwrite`.
//!
//! stategate reaches the test server as real OSS clients do: virtual-hosted
//! (`http://<bucket>.oss-test.invalid/<key>`), V4-signed, with the test
//! server as its `HTTP_PROXY`, so no DNS change is needed. Every peer gets a
//! fresh bucket. The bucket is inspected through the server's own test
//! endpoint, independently of stategate.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::oss_server::{AK, SECRET};
pub use crate::support::oss_server::{ENDPOINT, OssServer, REGION, STS_AK, STS_SECRET, STS_TOKEN};
use crate::support::*;

conformance_suite!(oss_suite, crate::oss::peer());

/// A bucket on a test server (the shared one unless said), under a key
/// prefix.
pub struct OssPeer {
    pub server: &'static OssServer,
    pub bucket: String,
    pub prefix: String,
    /// Settings added to (or replacing) the defaults.
    pub overrides: Vec<(String, String)>,
}

impl OssPeer {
    /// A fresh unversioned bucket, STS credentials, `encrypt` and `acl` on.
    pub fn new() -> OssPeer {
        Self::with_bucket(OssServer::shared().new_bucket(""))
    }

    pub fn with_bucket(bucket: String) -> OssPeer {
        OssPeer {
            server: OssServer::shared(),
            bucket,
            prefix: "team/states".to_string(),
            overrides: Vec::new(),
        }
    }

    /// Replaces (or adds) one setting; an empty value removes it.
    pub fn set(mut self, key: &str, value: &str) -> OssPeer {
        self.overrides.push((key.to_string(), value.to_string()));
        self
    }

    /// A fresh unversioned bucket on `server`.
    pub fn on(server: &'static OssServer) -> OssPeer {
        OssPeer {
            server,
            ..Self::with_bucket(server.new_bucket(""))
        }
    }

    /// Every object in the bucket, prefix included.
    pub fn all_objects(&self) -> Vec<serde_json::Value> {
        self.server.objects(&self.bucket)
    }
}

impl Peer for OssPeer {
    fn storage_type(&self) -> &str {
        "oss"
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = [
            ("bucket", self.bucket.as_str()),
            ("prefix", self.prefix.as_str()),
            ("endpoint", &format!("http://{ENDPOINT}")),
            ("region", REGION),
            // Kusion's spellings for the key pair, Terraform's for the rest.
            ("accessKeyID", STS_AK),
            ("accessKeySecret", STS_SECRET),
            ("security_token", STS_TOKEN),
            ("encrypt", "true"),
            ("acl", "private"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (key, value) in &self.overrides {
            settings.retain(|(k, _)| k != key);
            if !value.is_empty() {
                settings.push((key.clone(), value.clone()));
            }
        }
        settings
    }

    fn env(&self) -> Vec<(String, String)> {
        let proxy = format!("http://{}", self.server.addr);
        vec![
            ("HTTP_PROXY".to_string(), proxy.clone()),
            ("http_proxy".to_string(), proxy),
            ("NO_PROXY".to_string(), String::new()),
            ("no_proxy".to_string(), String::new()),
        ]
    }

    fn put_object(&self, key: &str, body: &[u8]) {
        self.server
            .put(&self.bucket, &format!("{}/{key}", self.prefix), body);
    }

    fn object_bytes(&self, key: &str) -> Vec<u8> {
        self.server
            .get(&self.bucket, &format!("{}/{key}", self.prefix))
    }

    fn object_keys(&self) -> Vec<String> {
        let prefix = format!("{}/", self.prefix);
        self.all_objects()
            .iter()
            .filter_map(|o| o["key"].as_str()?.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

/// The peer the conformance suite runs on.
pub fn peer() -> Box<dyn Peer> {
    Box::new(OssPeer::new())
}

/// Starts stategate on `peer` expecting it to refuse; returns its log.
fn refused(peer: &OssPeer, extra: &[&str]) -> String {
    let started = Instant::now();
    match Server::try_start(peer, extra, &[]) {
        Ok(server) => panic!("stategate started:\n{}", server.log()),
        Err(log) => {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "refusing took {:?}",
                started.elapsed()
            );
            for secret in [STS_SECRET, STS_TOKEN, SECRET] {
                assert!(!log.contains(secret), "a secret in the log:\n{log}");
            }
            log
        }
    }
}

#[test]
fn oss_every_object_has_sse_and_acl() {
    let peer = OssPeer::new().set("acl", "public-read");
    let server = Server::start(&peer);
    let tf = Terraform::example("oss", &server.url);
    tf.init_apply(&[]);
    tf.apply(&["greeting=second"]);
    // A held lock and a history entry exist as objects too.
    let url = server.state_url("oss-example/terraform.tfstate");
    assert_eq!(http("LOCK", &url, &lock_info("held", "a@host")).0, 200);

    let objects = peer.all_objects();
    let keys: BTreeSet<&str> = objects.iter().filter_map(|o| o["key"].as_str()).collect();
    assert!(
        keys.contains("team/states/oss-example/terraform.tfstate")
            && keys.contains("team/states/oss-example/terraform.tfstate.tflock"),
        "{keys:?}"
    );
    assert!(objects.len() > 2, "history objects too: {keys:?}");
    for o in &objects {
        let key = o["key"].as_str().unwrap();
        assert!(key.starts_with("team/states/"), "outside the prefix: {key}");
        assert_eq!(o["sse"], "AES256", "{key}: {o}");
        assert_eq!(o["acl"], "public-read", "{key}: {o}");
        assert_eq!(o["content_type"], "application/json", "{key}: {o}");
    }
}

#[test]
fn oss_without_encrypt_and_acl_sends_neither() {
    let peer = OssPeer::new().set("encrypt", "").set("acl", "");
    let server = Server::start(&peer);
    let url = server.state_url("plain/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
    let objects = peer.all_objects();
    assert!(!objects.is_empty());
    for o in &objects {
        assert!(o["sse"].is_null(), "{o}");
        // OSS records `default` (inherit the bucket's ACL) when none is sent.
        assert_eq!(o["acl"], "default", "{o}");
    }
}

#[test]
fn oss_long_term_credentials_work_without_a_token() {
    let peer = OssPeer::new()
        .set("accessKeyID", "")
        .set("accessKeySecret", "")
        .set("security_token", "")
        .set("access_key", AK)
        .set("secret_key", SECRET);
    let server = Server::start(&peer);
    let url = server.state_url("long-term");
    assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
    assert_eq!(http("GET", &url, b""), (200, state_doc("l", 1, "v")));
}

#[test]
fn oss_wrong_secret_is_a_clear_startup_error() {
    let log = refused(
        &OssPeer::new().set("accessKeySecret", "not-the-secret"),
        &[],
    );
    assert!(
        log.contains("setting `secret_key`") && log.contains("SignatureDoesNotMatch"),
        "{log}"
    );
    assert!(!log.contains("not-the-secret"), "{log}");
}

#[test]
fn oss_sts_token_is_checked_at_startup() {
    let log = refused(&OssPeer::new().set("security_token", ""), &[]);
    assert!(
        log.contains("InvalidAccessKeyId") && log.contains("security_token"),
        "{log}"
    );
    let log = refused(&OssPeer::new().set("security_token", "stale-token"), &[]);
    assert!(
        log.contains("setting `security_token`") && log.contains("InvalidSecurityToken"),
        "{log}"
    );
    assert!(!log.contains("stale-token"), "{log}");
    // Pasted as a YAML block scalar, or read from a file: the line end
    // made every request fail, blamed on `endpoint`.
    let pasted = OssPeer::new().set("security_token", &format!("{STS_TOKEN}\n"));
    let server = Server::start(&pasted);
    let url = server.state_url("pasted");
    assert_eq!(http("POST", &url, &state_doc("p", 1, "v")).0, 200);
    let log = refused(&OssPeer::new().set("security_token", "two words"), &[]);
    assert!(
        log.contains("setting `security_token`") && !log.contains("two words"),
        "{log}"
    );
}

#[test]
fn oss_missing_bucket_is_a_clear_startup_error() {
    let log = refused(&OssPeer::with_bucket("no-such-bucket".into()), &[]);
    assert!(
        log.contains("setting `bucket`")
            && log.contains("`no-such-bucket` does not exist")
            && log.contains("NoSuchBucket"),
        "{log}"
    );
}

#[test]
fn oss_unreachable_endpoint_fails_fast_with_the_cause() {
    // A proxy port nobody listens on: connection refused, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = format!("http://127.0.0.1:{port}");
    let peer = OssPeer::new();
    let started = Instant::now();
    let log = match Server::try_start(
        &peer,
        &[],
        &[("HTTP_PROXY", &proxy), ("http_proxy", &proxy)],
    ) {
        Ok(server) => panic!("stategate started:\n{}", server.log()),
        Err(log) => log,
    };
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        log.contains("setting `endpoint`")
            && log.contains("cannot connect to http://oss-test.invalid"),
        "{log}"
    );
}

#[test]
fn oss_bad_acl_is_refused_at_startup() {
    let log = refused(&OssPeer::new().set("acl", "authenticated-read"), &[]);
    assert!(log.contains("setting `acl`"), "{log}");
}

#[test]
fn oss_versioned_bucket_is_refused_unless_allow_unsafe_locks() {
    for versioning in ["Enabled", "Suspended"] {
        let peer = OssPeer::with_bucket(OssServer::shared().new_bucket(versioning));
        let log = refused(&peer, &[]);
        assert!(
            log.contains(&format!("versioning is {versioning}"))
                && log.contains("locks would be unsafe")
                && log.contains("allow_unsafe_locks: true"),
            "{log}"
        );
        assert!(
            peer.all_objects().is_empty(),
            "nothing written before refusing"
        );

        let peer = peer.set("allow_unsafe_locks", "true");
        let server = Server::start(&peer);
        assert!(
            server.log().contains("locks are not safe"),
            "{}",
            server.log()
        );
        let url = server.state_url("versioned");
        assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
        assert_eq!(http("GET", &url, b""), (200, state_doc("l", 1, "v")));
        drop(server);

        // A read-only server takes no locks, so versioning does not stop it.
        let peer = peer.set("allow_unsafe_locks", "");
        let server = Server::start_with(&peer, &["--read-only", "true"]);
        let url = server.state_url("versioned");
        assert_eq!(http("GET", &url, b""), (200, state_doc("l", 1, "v")));
        assert_eq!(http("LOCK", &url, &lock_info("r", "w")).0, 503);
    }
}

/// Versioning turned on while stategate serves the bucket (it can be, at
/// any time, and never turned off): OSS then ignores
/// `x-oss-forbid-overwrite`, and every one of concurrent LOCKs got 200.
/// Creates are refused from the next versioning check on.
#[test]
fn oss_versioning_turned_on_while_serving_refuses_locks() {
    let peer = OssPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("turned/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("t", 1, "v")).0, 200);
    peer.server.set_versioning(&peer.bucket, "Enabled");
    // Past the few seconds a bucket check is trusted.
    std::thread::sleep(Duration::from_secs(6));
    let answers: Vec<(u16, Vec<u8>)> = std::thread::scope(|scope| {
        let locks: Vec<_> = (0..10)
            .map(|i| {
                let url = &url;
                scope.spawn(move || http("LOCK", url, &lock_info(&format!("id-{i}"), "w")))
            })
            .collect();
        locks.into_iter().map(|l| l.join().unwrap()).collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{}", text(body));
        assert!(
            text(body).contains("versioning is Enabled")
                && text(body).contains("allow_unsafe_locks"),
            "{}",
            text(body)
        );
    }
    assert!(
        server.log().contains("versioning was turned on"),
        "{}",
        server.log()
    );
    // Reads go on.
    assert_eq!(http("GET", &url, b""), (200, state_doc("t", 1, "v")));
}

/// A redirect (a bucket's redirect or back-to-origin rules answer 3xx) is
/// not followed: following it sent the body and the security token to
/// another host and took that host's 200 for OSS's.
#[test]
fn oss_redirects_are_not_followed() {
    let peer = OssPeer::new();
    // Another bucket on the same server, whose requests the server logs.
    let elsewhere = peer.server.new_bucket("");
    let to = format!("http://{elsewhere}.{ENDPOINT}/taken");
    let server = Server::start(&peer);
    let url = server.state_url("moved/terraform.tfstate");
    let object = format!("{}/moved/terraform.tfstate", peer.prefix);
    for (method, body) in [
        ("POST", state_doc("m", 1, "v")),
        ("LOCK", lock_info("a", "w")),
    ] {
        let key = match method {
            "LOCK" => format!("{object}.tflock"),
            _ => object.clone(),
        };
        peer.server.redirect_next(&peer.bucket, &key, &to);
        let (status, answer) = http(method, &url, &body);
        assert_eq!(status, 503, "{method}: {}", text(&answer));
    }
    let followed = peer.server.requests(&elsewhere);
    assert!(
        followed.is_empty(),
        "requests reached the host redirected to: {followed:?}"
    );
    // Nothing was taken for written.
    assert_eq!(http("GET", &url, b"").0, 404);
    assert_eq!(http("LOCK", &url, &lock_info("b", "w")).0, 200);
}

/// A write lease whose create was made but answered nothing (a lost
/// answer) is removed before the 503: it stayed, and the state's writes
/// and UNLOCK waited for it to expire (over two minutes by default).
#[test]
fn oss_a_lease_whose_answer_was_lost_is_removed() {
    let peer = OssPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("lost/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("held", "w")).0, 200);
    let leases = format!("{}/.stategate/lease/", peer.prefix);
    peer.server.lose_next_answer(&peer.bucket, &leases);
    let (status, body) = http("POST", &format!("{url}?ID=held"), &state_doc("l", 2, "v"));
    assert_eq!(status, 503, "{}", text(&body));
    // Removed in the background, right after the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = peer
            .all_objects()
            .iter()
            .filter_map(|o| o["key"].as_str().map(str::to_string))
            .filter(|k| k.starts_with(&leases))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "a lease was left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        http("POST", &format!("{url}?ID=held"), &state_doc("l", 2, "v")).0,
        200
    );
    assert_eq!(http("UNLOCK", &url, &lock_info("held", "w")).0, 200);
}

#[test]
fn oss_check_reports_the_store_and_never_a_secret() {
    let peer = OssPeer::new();
    // Trace level, where the SDK would log request headers if its `log`
    // records ever reached our subscriber, also asked of its targets and
    // the HTTP stack's by name.
    for rust_log in ["trace", "ali_oss_rs=trace,reqwest=trace,hyper_util=trace"] {
        let out = stategate(&peer, &["check"], &[("RUST_LOG", rust_log)]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("refused (locks are safe)")
                && stdout.contains("compare-and-swap writes: no")
                && stdout.contains(&format!("bucket `{}`", peer.bucket)),
            "{stdout}"
        );
        for secret in [STS_AK, STS_SECRET, STS_TOKEN] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "RUST_LOG={rust_log}: {secret} shown:\n{stdout}\n{stderr}"
            );
        }
    }
}

/// A bucket deleted while stategate runs is a store failure on
/// every URL (HEAD answers a bodiless 404 for a missing object and a
/// missing bucket alike, so the bucket is checked), never "no state".
#[test]
fn oss_missing_bucket_answers_503_everywhere() {
    let peer = OssPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("gone/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("g", 1, "v")).0, 200);
    peer.server.delete_bucket(&peer.bucket);
    // Past the few seconds a successful bucket check is trusted.
    std::thread::sleep(Duration::from_secs(6));
    every_verb_answers_503_for_a_missing_bucket(&server, "gone/terraform.tfstate", &peer.bucket);
}

/// `timeout` bounds a whole operation. A server that accepts
/// connections and never answers (paused with SIGSTOP) gets a 503 within
/// `timeout`.
#[test]
fn oss_stopped_server_answers_503_within_timeout() {
    let oss: &'static OssServer = Box::leak(Box::new(OssServer::start()));
    let peer = OssPeer::on(oss).set("timeout", "3");
    let server = Server::start(&peer);
    let url = server.state_url("paused/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("p", 1, "v")).0, 200);
    let timings = paused_store_answers_503_within(oss.pid(), &url, 3);
    eprintln!("oss paused, timeout 3s: time to 503 {timings:?}");
}

/// A prefix with `..` is refused naming `prefix`, as on S3.
#[test]
fn oss_prefix_with_dot_dot_is_refused_naming_prefix() {
    let log = refused(&OssPeer::new().set("prefix", "team-a/.."), &[]);
    assert!(log.contains("setting `prefix`"), "{log}");
}

/// A connection closed before the answer is one plain
/// sentence.
#[test]
fn oss_connection_closed_is_one_plain_sentence() {
    let peer = OssPeer::new();
    let proxy = format!("http://{}", closing_server());
    let out = stategate(
        &peer,
        &["check"],
        &[("HTTP_PROXY", &proxy), ("http_proxy", &proxy)],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the connection to http://oss-test.invalid failed: connection closed before the answer was complete"),
        "{said}"
    );
    for debug in ["error sending request", "SendRequest", "client error"] {
        assert!(!said.contains(debug), "not a plain sentence: {said}");
    }
}

/// What one changing `terraform apply` costs in OSS requests, counted from
/// the test server's request log. OSS refuses conditional PutObject and
/// DeleteObject (400 NotImplemented), so the write and the UNLOCK each
/// keep their write lease (`src/state/lease.rs`: create, then list; and
/// a delete) and each "only if unchanged" step is a HEAD before the
/// change: 23 requests (LOCK 1, GET 2, POST 13, UNLOCK 7), where S3, with
/// compare-and-swap, needs 10. A request added to the path fails this.
#[test]
fn oss_changing_apply_costs_a_bounded_number_of_requests() {
    let peer = OssPeer::new();
    let server = Server::start(&peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&["greeting=one"]);
    tf.apply(&["greeting=two"]);
    let before = peer.server.requests(&peer.bucket).len();
    tf.apply(&["greeting=three"]);
    let ours = peer.server.requests(&peer.bucket)[before..].to_vec();
    let key = "team/states/quickstart/terraform.tfstate";
    assert!(
        ours.iter().any(|r| r.starts_with(&format!("PUT {key} "))),
        "the apply wrote no state: {ours:#?}"
    );
    let leases = ours
        .iter()
        .filter(|r| r.starts_with("PUT team/states/.stategate/lease/"))
        .count();
    assert_eq!(
        leases, 2,
        "one lease for the write, one for the UNLOCK: {ours:#?}"
    );
    assert!(
        ours.len() <= 23,
        "a changing apply made {} OSS requests (at most 23): {ours:#?}",
        ours.len()
    );
}

/// A change the store makes but answers too late (here an UNLOCK's
/// DELETE, held 5 s while the request times out after 2) may still land
/// after its 503: the state's write lease is left to expire, so no other
/// change to the state is made before it could. When the lease was
/// released at once, Terraform's retried UNLOCK went on, a second client
/// locked, the late DELETE removed the second client's lock, and a third
/// client's LOCK succeeded while the second still held the lock.
#[test]
fn oss_a_change_that_may_still_land_keeps_the_lease() {
    let peer = OssPeer::new().set("timeout", "2s");
    let server = Server::start(&peer);
    let url = server.state_url("late/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("a", "first")).0, 200);
    let lock_object = format!("{}/late/terraform.tfstate.tflock", peer.prefix);
    peer.server
        .delay_next(&peer.bucket, &lock_object, "DELETE", 5);
    let started = Instant::now();
    let (status, body) = http("UNLOCK", &url, &lock_info("a", "first"));
    assert_eq!(status, 503, "{}", text(&body));
    // Terraform retries the UNLOCK; meanwhile another client locks.
    let retry = {
        let url = url.clone();
        std::thread::spawn(move || http("UNLOCK", &url, &lock_info("a", "first")).0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http("LOCK", &url, &lock_info("b", "second")).0 != 200 {
        assert!(Instant::now() < deadline, "the second client never locked");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once the late DELETE has landed.
    if let Some(left) = Duration::from_secs(7).checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let (status, body) = http("LOCK", &url, &lock_info("c", "third"));
    assert_eq!(
        status,
        423,
        "a third client locked while the second held the lock: {}",
        text(&body)
    );
    let _ = retry.join();
    assert_eq!(http("UNLOCK", &url, &lock_info("b", "second")).0, 200);
}
