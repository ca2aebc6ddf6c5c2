//! The conformance suite on `storageType: s3` against a real S3 server (the
//! `moto` server, SigV4 checking on), plus what only S3 can show: objects at
//! the documented keys and nothing outside the prefix, `encrypt` and `acl`
//! really stored, many replicas on one bucket, interop with Terraform's own
//! s3 backend, clear start-up errors, and an outage answered with 503.
//!
//! Every peer gets a fresh bucket, so tests never see each other's objects.
//! The bucket is inspected with boto3 (`tests/peers/s3_inspect.py`), an
//! S3 client independent of stategate.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::support::moto::Moto;
use crate::support::*;

conformance_suite!(s3_suite, crate::s3::peer());

/// `storageType: s3` on a fresh bucket of a moto server, under a prefix.
pub struct S3Peer {
    pub moto: &'static Moto,
    pub bucket: String,
    /// The `prefix` setting, with its trailing `/`.
    pub prefix: String,
    /// More `-C` settings.
    pub extra: Vec<(String, String)>,
}

impl S3Peer {
    /// A fresh bucket on `moto`, states under `team/`.
    pub fn on(moto: &'static Moto) -> S3Peer {
        S3Peer {
            moto,
            bucket: moto.new_bucket(),
            prefix: "team/".into(),
            extra: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> S3Peer {
        self.extra.push((key.into(), value.into()));
        self
    }
}

impl Peer for S3Peer {
    fn storage_type(&self) -> &str {
        "s3"
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut s = vec![
            ("endpoint".to_string(), self.moto.endpoint.clone()),
            ("bucket".to_string(), self.bucket.clone()),
            ("prefix".to_string(), self.prefix.clone()),
        ];
        s.extend(self.extra.iter().cloned());
        s
    }

    /// Credentials through the environment, as the AWS credential chain reads them.
    fn env(&self) -> Vec<(String, String)> {
        self.moto.aws_env()
    }

    fn put_object(&self, key: &str, body: &[u8]) {
        let key = format!("{}{key}", self.prefix);
        self.moto.inspect(&["put", &self.bucket, &key], body);
    }

    fn object_bytes(&self, key: &str) -> Vec<u8> {
        let key = format!("{}{key}", self.prefix);
        self.moto.inspect(&["get", &self.bucket, &key], b"")
    }

    fn object_keys(&self) -> Vec<String> {
        self.moto
            .all_keys(&self.bucket)
            .into_iter()
            .map(|k| {
                k.strip_prefix(&self.prefix)
                    .unwrap_or_else(|| panic!("{k} is outside the prefix {}", self.prefix))
                    .to_string()
            })
            .collect()
    }
}

/// The conformance suite's peer.
pub fn peer() -> Box<dyn Peer> {
    Box::new(S3Peer::on(Moto::shared()))
}

fn keys(peer: &dyn Peer) -> BTreeSet<String> {
    peer.object_keys().into_iter().collect()
}

#[test]
fn s3_objects_land_at_documented_keys_and_never_outside_the_prefix() {
    let peer = S3Peer::on(Moto::shared());
    let moto = peer.moto;
    moto.inspect(
        &["put", &peer.bucket, "outside/terraform.tfstate"],
        b"not ours",
    );
    let server = Server::start(&peer);
    let url = server.state_url("app/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("l1", 1, "a")).0, 200);
    assert_eq!(
        http(
            "POST",
            &format!("{url}?workspace=dev"),
            &state_doc("l2", 1, "b")
        )
        .0,
        200
    );
    assert_eq!(http("LOCK", &url, &lock_info("held", "me@host")).0, 200);

    let all = moto.all_keys(&peer.bucket);
    for expected in [
        "team/app/terraform.tfstate",
        "team/app/terraform.tfstate.tflock",
        "team/workspaces/dev/app/terraform.tfstate",
    ] {
        assert!(
            all.iter().any(|k| k == expected),
            "{expected} missing: {all:?}"
        );
    }
    for key in &all {
        assert!(
            key.starts_with("team/") || key == "outside/terraform.tfstate",
            "written outside the prefix: {key}"
        );
    }
    assert_eq!(
        moto.inspect(
            &["get", &peer.bucket, "team/app/terraform.tfstate.tflock"],
            b""
        ),
        lock_info("held", "me@host"),
        "the lock object holds the LockInfo as sent"
    );
    assert_eq!(
        moto.inspect(&["get", &peer.bucket, "outside/terraform.tfstate"], b""),
        b"not ours"
    );
    let listed = stategate_ok(&peer, &["state", "list"]);
    assert!(
        !listed.contains("outside"),
        "listed a state outside the prefix:\n{listed}"
    );
    assert!(listed.contains("app/terraform.tfstate"), "{listed}");
}

#[test]
fn s3_encrypt_and_acl_are_stored_on_every_write() {
    let peer = S3Peer::on(Moto::shared())
        .with("encrypt", "true")
        .with("acl", "public-read");
    let moto = peer.moto;
    let server = Server::start(&peer);
    let url = server.state_url("secure/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("s", 1, "a")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("enc", "me@host")).0, 200);
    for key in [
        "team/secure/terraform.tfstate",
        "team/secure/terraform.tfstate.tflock",
    ] {
        let head = moto.head(&peer.bucket, key);
        assert_eq!(head["ServerSideEncryption"], "AES256", "{key}: {head}");
        let grants = moto.acl(&peer.bucket, key);
        let public_read = grants.as_array().unwrap().iter().any(|g| {
            g["Permission"] == "READ"
                && g["Grantee"]["URI"] == "http://acs.amazonaws.com/groups/global/AllUsers"
        });
        assert!(public_read, "{key}: no public-read grant in {grants}");
    }
}

#[test]
fn s3_invalid_acl_is_refused_at_start_up() {
    let peer = S3Peer::on(Moto::shared()).with("acl", "everyone-welcome");
    let log = Server::try_start(&peer, &[], &[])
        .err()
        .expect("must not start");
    assert!(log.contains("setting `acl`"), "{log}");
}

/// A configuration with Terraform's native s3 backend on `peer`'s bucket.
fn native(peer: &S3Peer, key: &str) -> (Terraform, Vec<(String, String)>) {
    let tf = Terraform::new(&example_text("s3-native-interop"));
    let mut env = peer.moto.aws_env();
    env.push(("AWS_ENDPOINT_URL_S3".into(), peer.moto.endpoint.clone()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bucket = format!("bucket={}", peer.bucket);
    let key = format!("key={}{key}", peer.prefix);
    let out = tf.run_env(
        &[
            "init",
            "-no-color",
            "-backend-config",
            &bucket,
            "-backend-config",
            &key,
        ],
        &env_ref,
    );
    assert!(
        out.status.success(),
        "native init failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (tf, env)
}

fn run_native(tf: &Terraform, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tf.run_env(args, &env_ref)
}

#[test]
fn s3_native_terraform_reads_stategate_state_and_locks_exclude_each_other() {
    let peer = S3Peer::on(Moto::shared());
    let server = Server::start(&peer);
    let key = "quickstart/terraform.tfstate";
    let via_stategate = Terraform::example("quickstart", &server.url);
    via_stategate.init_apply(&["greeting=written through stategate"]);

    // The native backend reads what stategate wrote and sees no changes.
    let (tf, env) = native(&peer, key);
    let out = run_native(&tf, &env, &["output", "-raw", "greeting"]);
    assert_eq!(
        text(&out.stdout),
        "written through stategate",
        "{}",
        text(&out.stderr)
    );
    let out = run_native(
        &tf,
        &env,
        &[
            "plan",
            "-no-color",
            "-detailed-exitcode",
            "-var",
            "greeting=written through stategate",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A stategate lock blocks the native backend.
    let state_url = server.state_url(key);
    assert_eq!(
        http(
            "LOCK",
            &state_url,
            &lock_info("stategate-holder", "ops@host")
        )
        .0,
        200
    );
    let out = run_native(&tf, &env, &["plan", "-no-color", "-lock-timeout=0s"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "native plan ran under a stategate lock:\n{said}"
    );
    assert!(
        said.contains("stategate-holder"),
        "the native error names our lock:\n{said}"
    );
    assert_eq!(
        http(
            "UNLOCK",
            &state_url,
            &lock_info("stategate-holder", "ops@host")
        )
        .0,
        200
    );

    // A native lock blocks stategate: `apply` holds it while it waits for
    // approval on stdin.
    let mut apply = Command::new(terraform_bin())
        .args(["apply", "-no-color", "-var", "greeting=native"])
        .current_dir(tf.dir.path())
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", tf.dir.path().join(".terraformrc"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run terraform apply");
    let lock_key = format!("{key}.tflock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !keys(&peer).contains(&lock_key) {
        assert!(Instant::now() < deadline, "terraform never took its lock");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http("LOCK", &state_url, &lock_info("stategate-late", "ops@host"));
    assert_eq!(status, 423, "{}", text(&body));
    let holder: serde_json::Value = serde_json::from_slice(&body).expect("holder LockInfo");
    assert!(
        !holder["ID"].as_str().unwrap_or("").is_empty() && holder["ID"] != "stategate-late",
        "423 carries Terraform's own LockInfo: {holder}"
    );
    assert_eq!(holder["Operation"], "OperationTypeApply", "{holder}");
    apply.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        !keys(&peer).contains(&lock_key),
        "terraform kept its lock:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        http("LOCK", &state_url, &lock_info("stategate-late", "ops@host")).0,
        200
    );
}

#[test]
fn s3_requests_are_signed_and_wrong_credentials_are_clear_start_up_errors() {
    let moto = Moto::shared_with_auth();
    let mut peer = S3Peer::on(moto);
    // Right credentials: the server verified every signature of the probe.
    let said = stategate_ok(&peer, &["check"]);
    assert!(said.contains("refused (locks are safe)"), "{said}");

    let wrong_secret = "not-the-secret-0123456789";
    let bad_env = [
        ("AWS_ACCESS_KEY_ID", moto.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", wrong_secret),
    ];
    let log = Server::try_start(&peer, &[], &bad_env)
        .err()
        .expect("must not start");
    assert!(
        log.contains("setting `accessKeyID`") && log.contains("refused the credentials"),
        "{log}"
    );
    assert!(!log.contains(wrong_secret), "the secret leaked:\n{log}");

    // The same through settings, and through `stategate check`.
    peer.extra = vec![
        ("accessKeyID".into(), "AKIAUNKNOWNKEY000000".into()),
        ("accessKeySecret".into(), wrong_secret.into()),
    ];
    let out = stategate(&peer, &["check"], &[]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused the credentials"), "{said}");
    assert!(!said.contains(wrong_secret), "the secret leaked:\n{said}");

    peer.extra.clear();
    peer.bucket = "no-such-bucket-here".into();
    let log = Server::try_start(&peer, &[], &[])
        .err()
        .expect("must not start");
    assert!(
        log.contains("setting `bucket`") && log.contains("`no-such-bucket-here` does not exist"),
        "{log}"
    );
}

#[test]
fn s3_server_outage_gives_503_then_recovers() {
    // A server of its own: stopping the shared one would fail other tests.
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let url = server.state_url("outage/terraform.tfstate");
    let state = state_doc("o", 1, "before");
    assert_eq!(http("POST", &url, &state).0, 200);

    moto.stop();
    for (method, body) in [("GET", Vec::new()), ("LOCK", lock_info("o", "me@host"))] {
        let started = Instant::now();
        let (status, reason) = http(method, &url, &body);
        assert_eq!(status, 503, "{method}: {}", text(&reason));
        assert!(
            text(&reason).contains("cannot reach the S3 server"),
            "{method}: {}",
            text(&reason)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{method} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        server.logs("cannot reach the S3 server"),
        "{}",
        server.log()
    );

    moto.resume();
    let (status, body) = http("GET", &url, b"");
    assert_eq!((status, body), (200, state));
    assert_eq!(http("LOCK", &url, &lock_info("o", "me@host")).0, 200);
}

/// A conditional probe answered 503 SlowDown (S3 under load) is a server
/// failing for a while, not one without conditional requests: it turned
/// compare-and-swap off for the life of the process, or refused the start
/// as if locks were unsafe.
#[test]
fn s3_throttled_probes_are_no_missing_conditions() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    for header in ["if-none-match", "if-match"] {
        moto.fault(50, header, 503, "SlowDown");
        let out = stategate(&peer, &["check"], &[]);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        moto.fault(0, header, 503, "SlowDown");
        assert!(
            !out.status.success(),
            "{header}: a throttled probe passed: {said}"
        );
        assert!(said.contains("HTTP 503 (SlowDown"), "{header}: {said}");
        assert!(said.contains("setting `endpoint`"), "{header}: {said}");
        assert!(
            !said.contains("locks would be unsafe")
                && !said.contains("compare-and-swap writes: no"),
            "{header}: taken for a missing condition: {said}"
        );
    }
    let said = stategate_ok(&peer, &["check"]);
    assert!(said.contains("compare-and-swap writes: yes"), "{said}");

    // A bucket that takes no ACLs refuses writes carrying one: the `acl`
    // setting is what to change, not `endpoint`.
    let peer = peer.with("acl", "private");
    moto.fault(50, "x-amz-acl", 400, "AccessControlListNotSupported");
    let out = stategate(&peer, &["check"], &[]);
    let said = text(&out.stderr);
    moto.fault(0, "x-amz-acl", 400, "AccessControlListNotSupported");
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("setting `acl`") && said.contains("AccessControlListNotSupported"),
        "{said}"
    );
}

#[test]
fn s3_server_ignoring_conditions_is_refused_unless_unsafe_locks_are_allowed() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start_with(&["--ignore-conditions"])));
    let peer = S3Peer::on(moto);
    let log = Server::try_start(&peer, &[], &[])
        .err()
        .expect("must not start on a server that ignores If-None-Match");
    assert!(
        log.contains("locks would be unsafe") || log.contains("allow_unsafe_locks"),
        "{log}"
    );

    // Allowed explicitly: it starts, and says truthfully what it cannot do.
    let peer = peer.with("allow_unsafe_locks", "true");
    let said = stategate_ok(&peer, &["check"]);
    assert!(said.contains("NOT refused"), "{said}");
    assert!(said.contains("compare-and-swap writes: no"), "{said}");
    assert!(said.contains("no conditional delete"), "{said}");
    let server = Server::start(&peer);
    assert!(
        server.log().contains("ignores If-Match"),
        "{}",
        server.log()
    );

    // The compare-first fallbacks still keep another holder's lock.
    let url = server.state_url("unsafe/terraform.tfstate");
    assert_eq!(http("LOCK", &url, &lock_info("first", "a@host")).0, 200);
    let (status, body) = http("LOCK", &url, &lock_info("second", "b@host"));
    // Without If-None-Match the second create overwrites: exactly what the
    // start-up refusal warns about.
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!(http("UNLOCK", &url, &lock_info("first", "a@host")).0, 409);
    assert_eq!(http("UNLOCK", &url, &lock_info("second", "b@host")).0, 200);
    assert!(!keys(&peer).contains("unsafe/terraform.tfstate.tflock"));
}

/// A bucket deleted while stategate runs is a store failure on
/// every URL, never "no state" or "no lock".
#[test]
fn s3_missing_bucket_answers_503_everywhere() {
    let peer = S3Peer::on(Moto::shared());
    let server = Server::start(&peer);
    let url = server.state_url("gone/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("g", 1, "v")).0, 200);
    peer.moto.inspect(&["delete-bucket", &peer.bucket], b"");
    // Past the few seconds a successful bucket check is trusted.
    std::thread::sleep(Duration::from_secs(6));
    every_verb_answers_503_for_a_missing_bucket(&server, "gone/terraform.tfstate", &peer.bucket);
}

/// `timeout` bounds a whole operation, retries included. A
/// server that accepts connections and never answers (paused with
/// SIGSTOP) gets a 503 within `timeout`, not after three attempts of it.
#[test]
fn s3_stopped_server_answers_503_within_timeout() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto).with("timeout", "3");
    let server = Server::start(&peer);
    let url = server.state_url("paused/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("p", 1, "v")).0, 200);
    let timings = paused_store_answers_503_within(moto.pid(), &url, 3);
    eprintln!("s3 paused, timeout 3s: time to 503 {timings:?}");
}

/// No secret in the log at any level, whatever RUST_LOG
/// asks of the SDK's own targets (its signer logs the canonical request,
/// session token header included, at trace).
#[test]
fn s3_trace_logs_never_show_a_secret() {
    let peer = S3Peer::on(Moto::shared())
        .with("accessKeyID", "AKIATRACETEST0000000")
        .with("accessKeySecret", "trace-secret-value-0123")
        .with("session_token", "trace-session-token-4567");
    for rust_log in [
        "trace",
        "aws_sigv4=trace",
        "warn,aws_sigv4::http_request::sign=trace,aws_smithy_runtime=trace",
    ] {
        let out = stategate(&peer, &["check"], &[("RUST_LOG", rust_log)]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{rust_log}: {stdout}\n{stderr}");
        for secret in ["trace-secret-value-0123", "trace-session-token-4567"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "RUST_LOG={rust_log} shows {secret}:\n{stderr}"
            );
        }
    }
    // The test can fail: the SDK does log at these levels.
    let out = stategate(&peer, &["check"], &[("RUST_LOG", "trace")]);
    assert!(
        text(&out.stderr).contains("S3.PutObject"),
        "no SDK log at all"
    );
}

/// The system's root certificates are read at the first HTTPS request, not
/// at start-up: never for a server reached over plain HTTP. Roots that
/// cannot be read say so in a warning, which shows when they were read.
#[test]
fn s3_over_plain_http_never_reads_the_tls_roots() {
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("no-such-bundle.pem").display().to_string();
    let empty = dir.path().display().to_string();
    let roots = [
        ("SSL_CERT_FILE", missing.as_str()),
        ("SSL_CERT_DIR", empty.as_str()),
    ];
    let read_roots = |stderr: &str| stderr.contains("root CA certificate");
    let plain = S3Peer::on(Moto::shared());
    let out = stategate(&plain, &["check"], &roots);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}{stderr}", text(&out.stdout));
    assert!(
        !read_roots(&stderr),
        "read the roots over plain HTTP:\n{stderr}"
    );

    // The same check against an HTTPS endpoint reads them (and fails to
    // connect: nothing listens there).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let https = S3Peer::on(Moto::shared()).with("endpoint", &format!("https://127.0.0.1:{port}"));
    let out = stategate(&https, &["check"], &roots);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        read_roots(&stderr),
        "no sign the roots were read:\n{stderr}"
    );
}

/// What opening the store and the start-up probe cost: the conditions the
/// server honours are measured once (five requests), and the probe does
/// not write its object again to compare versions the store says are
/// hashes of the bytes (five). Nothing outside the probe's prefix is
/// touched.
#[test]
fn s3_start_up_costs_ten_requests_on_probe_objects() {
    let moto = Moto::shared();
    let peer = S3Peer::on(moto);
    let said = stategate_ok(&peer, &["check"]);
    assert!(
        said.contains("the same bytes written again: the same version"),
        "{said}"
    );
    let mut requests = moto.requests_for(&peer.bucket);
    // The test's own: the bucket made.
    requests.retain(|r| r.trim() != "PUT");
    assert!(
        requests
            .iter()
            .all(|r| r.contains(" team/.stategate/probe/")),
        "{requests:#?}"
    );
    assert_eq!(requests.len(), 10, "{requests:#?}");
}

/// A connection closed before the answer is one plain
/// sentence, not the SDK's nested Debug output.
/// A client told of a store failure hears the S3 error code, not S3's
/// message, which can name the account and role the server runs as; the
/// server's log keeps the message.
#[test]
fn s3_messages_stay_in_the_servers_log() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let url = server.state_url("app");
    assert_eq!(http("POST", &url, &state_doc("m", 1, "x")).0, 200);
    // Every request the SDK sends carries its invocation id.
    moto.fault(50, "amz-sdk-invocation-id", 403, "AccessDenied");
    let (status, reason) = http("GET", &url, b"");
    moto.fault(0, "amz-sdk-invocation-id", 403, "AccessDenied");
    let reason = text(&reason);
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("AccessDenied"), "{reason}");
    assert!(!reason.contains("Injected by the test"), "{reason}");
    assert!(server.logs("Injected by the test"), "{}", server.log());
}

#[test]
fn s3_connection_closed_is_one_plain_sentence() {
    let mut peer = S3Peer::on(Moto::shared()).with("timeout", "5");
    peer.extra
        .push(("endpoint".into(), format!("http://{}", closing_server())));
    let out = stategate(&peer, &["check"], &[]);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("cannot reach the S3 server at http://127.0.0.1:")
            && said.contains("connection closed before the answer was complete"),
        "{said}"
    );
    for debug in ["DispatchFailure", "ConnectorError", "{", "SendRequest"] {
        assert!(!said.contains(debug), "not a plain sentence: {said}");
    }
}

/// The S3 requests one changing `terraform apply` makes through stategate
/// and through Terraform's native s3 backend with `use_lockfile`, side by
/// side on the same server, counted from the server's request log: the
/// apply through stategate costs at most three requests more, the copy of
/// the written state into history, its record and the history pointer.
#[test]
fn s3_changing_apply_costs_at_most_native_plus_three_requests() {
    let moto = Moto::shared();
    let native_peer = S3Peer::on(moto);
    let (native_tf, env) = native(&native_peer, "native/terraform.tfstate");
    let apply = |tf: &Terraform, env: &[(String, String)], greeting: &str| {
        let var = format!("greeting={greeting}");
        let out = run_native(
            tf,
            env,
            &["apply", "-auto-approve", "-no-color", "-var", &var],
        );
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    };
    apply(&native_tf, &env, "one");
    let before = moto.requests_for(&native_peer.bucket).len();
    apply(&native_tf, &env, "two");
    let native_requests = moto.requests_for(&native_peer.bucket)[before..].to_vec();

    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&["greeting=one"]);
    tf.apply(&["greeting=two"]);
    let before = moto.requests_for(&peer.bucket).len();
    tf.apply(&["greeting=three"]);
    let ours = moto.requests_for(&peer.bucket)[before..].to_vec();

    let key = "team/quickstart/terraform.tfstate";
    assert!(
        ours.iter().any(|r| r.starts_with(&format!("PUT {key} "))),
        "the apply wrote no state: {ours:#?}"
    );
    assert!(
        ours.len() <= native_requests.len() + 3,
        "a changing apply made {} S3 requests through stategate, {} natively (at most 3 more allowed):\n\
         stategate: {ours:#?}\nnative: {native_requests:#?}",
        ours.len(),
        native_requests.len()
    );
    // Nothing a lock holder's write needs goes to the write lease.
    assert!(
        !ours.iter().any(|r| r.contains(".stategate/lease/")),
        "{ours:#?}"
    );
    let history = http(
        "GET",
        &format!(
            "{}?history",
            server.state_url("quickstart/terraform.tfstate")
        ),
        b"",
    );
    let doc: serde_json::Value = serde_json::from_slice(&history.1).unwrap();
    let ops: Vec<&str> = doc["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["write", "write", "write"], "one record per apply");
}

/// A store that stops answering mid-write (here at the state's
/// conditional PUT) gets its 503 after `timeout`, not after two of them:
/// the write lease of the failed write is released in the background, not
/// waited for on the silent server.
#[test]
fn s3_a_store_silent_mid_write_answers_503_after_one_timeout() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto).with("timeout", "3s");
    let server = Server::start(&peer);
    let url = server.state_url("silent/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("s", 1, "v")).0, 200);
    moto.hold(1, "if-match", 12);
    let started = std::time::Instant::now();
    let (status, body) = http("POST", &url, &state_doc("s", 2, "v"));
    let took = started.elapsed();
    assert_eq!(status, 503, "{}", text(&body));
    assert!(
        took < std::time::Duration::from_secs(5),
        "answered after {took:?} with a 3 s timeout"
    );
}

/// A lock holder's write whose answer is lost after S3 made it (the SDK
/// sends it again and gets 412, the state being its own now) is recorded
/// as this holder's write and audited as one; it was recorded as a state
/// `found`, with no writer or lock ID, and answered as unchanged, so no
/// audit line or notification told of it.
#[test]
fn s3_a_write_whose_answer_was_lost_is_recorded_as_its_writers() {
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let url = server.state_url("lost/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("l", 1, "v")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("holder", "me@host")).0, 200);
    moto.lose(1, "if-match");
    let (status, body) = http("POST", &format!("{url}?ID=holder"), &state_doc("l", 2, "v"));
    assert_eq!(status, 200, "{}", text(&body));
    let (_, history) = http("GET", &format!("{url}?history"), b"");
    let history: serde_json::Value = serde_json::from_slice(&history).unwrap();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "one version per write: {history}");
    let newest = &versions[1];
    assert_eq!(newest["serial"], 2, "{history}");
    assert_eq!(newest["lock_id"], "holder", "{history}");
    assert_eq!(newest["operation"], "write", "{history}");
    let audited = server
        .log()
        .lines()
        .filter(|l| l.contains("\"audit\":\"write\"") && l.contains("\"serial\":2"))
        .count();
    assert_eq!(audited, 1, "{}", server.log());
}
