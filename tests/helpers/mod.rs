//! Test support: real processes on 127.0.0.1. [`Server`] runs the built
//! `stategate` binary against a [`Peer`] (a store and whatever real server
//! it needs), [`Terraform`] runs the real `terraform` CLI in its own
//! directory, [`http`] is a small blocking client that can send LOCK and
//! UNLOCK. [`moto`] and [`oss_server`] run the shared S3 and OSS test
//! servers (the Python peers in `tests/peers/`), [`db`] private PostgreSQL
//! and MariaDB servers, [`receiver`] a webhook receiver that verifies
//! notification signatures. Nothing here reimplements stategate; tests see only
//! what crosses the wire and what lands in the store. The `e2e` and
//! `contract` test targets both include this module as `support`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

#[cfg(feature = "db")]
pub mod db;
pub mod moto;
pub mod oss_server;
pub mod receiver;
pub mod stores;

/// A store as the tests see it: how to point stategate at it, and how to
/// look inside it without going through stategate.
pub trait Peer: Send + Sync {
    /// The `--storage-type` value.
    fn storage_type(&self) -> &str;
    /// Store settings, passed as `-C key=value`.
    fn settings(&self) -> Vec<(String, String)>;
    /// Extra environment for the stategate process.
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Every key in the store, read by an independent client, relative to
    /// any stategate prefix.
    fn object_keys(&self) -> Vec<String>;
    /// Writes an object the way another tool would, behind stategate's
    /// back (`key` relative to any stategate prefix).
    fn put_object(&self, key: &str, body: &[u8]);
    /// The stored bytes of an object, read by an independent client
    /// (`key` relative to any stategate prefix).
    fn object_bytes(&self, key: &str) -> Vec<u8>;
}

/// The stategate binary cargo built for these tests, or the one named by
/// `STATEGATE_TEST_BIN` (to measure another build with the same tests, e.g.
/// the race rates before a fix).
pub fn bin() -> PathBuf {
    match std::env::var_os("STATEGATE_TEST_BIN") {
        Some(other) => PathBuf::from(other),
        None => PathBuf::from(env!("CARGO_BIN_EXE_stategate")),
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the test virtualenv, which has the test peers (moto, the
/// OSS SDKs). Fails naming the install step when it is missing.
pub fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (or `python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt`)",
        p.display()
    );
    p
}

/// A field of `/proc/<pid>/status` given in kB (`VmSize`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A file from `testdata/`.
pub fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("testdata").join(name))
        .unwrap_or_else(|e| panic!("testdata/{name}: {e}"))
}

/// A running `stategate serve`. Killed when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT` (`https://` when serving TLS)
    pub url: String,
    child: Child,
    log: Arc<Mutex<String>>,
    /// The working directory of the process.
    _dir: TempDir,
}

impl Server {
    /// Starts stategate on `peer` with an OS-assigned port; panics with the
    /// server's log if it does not come up.
    pub fn start(peer: &dyn Peer) -> Server {
        Self::start_with(peer, &[])
    }

    /// Like [`Server::start`], with extra command-line arguments.
    pub fn start_with(peer: &dyn Peer, extra: &[&str]) -> Server {
        Self::try_start(peer, extra, &[])
            .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"))
    }

    /// Starts stategate; `Err` carries its output when it exits instead of
    /// listening (start-up refusals are tested this way).
    pub fn try_start(
        peer: &dyn Peer,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        Self::try_start_cmd(peer, extra, env, |_| {})
    }

    /// Like [`Server::try_start`], with a last say on the command (resource
    /// limits, for instance).
    pub fn try_start_cmd(
        peer: &dyn Peer,
        extra: &[&str],
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> Result<Server, String> {
        let dir = TempDir::new().expect("temp dir");
        let mut cmd = Command::new(bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage-type",
            peer.storage_type(),
        ])
        .args(settings_args(peer))
        .args(extra)
        .envs(peer.env())
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn stategate");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before announced, so a test that reads the log after
                // start sees the start-up line.
                {
                    let mut l = sink.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Server {
                url: addr,
                child,
                log,
                _dir: dir,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(log.lock().unwrap().clone())
            }
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server logs `needle` within a few seconds. A line is
    /// written before the answer it belongs to, but the thread that
    /// collects the log may read it only after the client has the answer.
    pub fn logs(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.log().contains(needle) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        signal(self.child.id(), "TERM");
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Waits for the process to exit by itself; returns whether it exited 0.
    pub fn wait(mut self) -> bool {
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `URL/states/<key>`.
    pub fn state_url(&self, key: &str) -> String {
        format!("{}/states/{key}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's settings as `-C key=value` arguments.
pub fn settings_args(peer: &dyn Peer) -> Vec<String> {
    peer.settings()
        .into_iter()
        .flat_map(|(k, v)| ["-C".to_string(), format!("{k}={v}")])
        .collect()
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Runs a `stategate` operator command (`state …`, `lock …`, `check`) on
/// the peer's store.
pub fn stategate(peer: &dyn Peer, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--storage-type", peer.storage_type()])
        .args(settings_args(peer))
        .envs(peer.env())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run stategate")
}

/// A stategate command that must succeed; returns its stdout.
pub fn stategate_ok(peer: &dyn Peer, args: &[&str]) -> String {
    let out = stategate(peer, args, &[]);
    assert!(
        out.status.success(),
        "stategate {args:?} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `stategate token new NAME`: what it printed, and the token in it.
pub fn token_new(name: &str) -> (String, String) {
    let out = Command::new(bin())
        .args(["token", "new", name])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let token = shown
        .split_whitespace()
        .find(|w| w.starts_with("sgt_"))
        .unwrap_or_else(|| panic!("no token in {shown}"))
        .to_string();
    (shown, token)
}

/// Lossy UTF-8 of process output.
/// Whether a race test plays another round: always up to `least` rounds,
/// however slow the machine (so no verdict depends on timing), then while
/// `budget` since `started` lasts, up to `most`.
pub fn another_round(
    rounds: usize,
    least: usize,
    most: usize,
    started: std::time::Instant,
    budget: Duration,
) -> bool {
    rounds < least || (rounds < most && started.elapsed() < budget)
}

/// The hex MD5 of a body, as stategate's ETags give it.
pub fn md5_hex(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP exchange: method, URL, body; returns status and body. Any
/// status is returned, not raised.
pub fn http(method: &str, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_with(method, url, &[], body)
}

/// [`http`] with extra request headers.
pub fn http_with(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = http_full(method, url, headers, body);
    (status, body)
}

/// [`http`] returning the response headers too.
pub fn http_full(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = if body.is_empty() && matches!(method, "GET" | "HEAD") {
        req.call()
    } else {
        req.send_bytes(body)
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|n| response.header(&n).map(|v| (n.clone(), v.to_string())))
        .collect();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut out).expect("read response");
    (status, headers, out)
}

/// A LockInfo body as Terraform sends it.
pub fn lock_info(id: &str, who: &str) -> Vec<u8> {
    format!(
        r#"{{"ID":"{id}","Operation":"OperationTypeApply","Info":"","Who":"{who}","Version":"1.11.4","Created":"2026-11-23T22:19:50.653862037Z","Path":""}}"#
    )
    .into_bytes()
}

/// A Terraform state document with one resource whose input is `value`.
pub fn state_doc(lineage: &str, serial: u64, value: &str) -> Vec<u8> {
    format!(
        r#"{{
  "version": 4,
  "terraform_version": "1.11.4",
  "serial": {serial},
  "lineage": "{lineage}",
  "outputs": {{"value": {{"value": "{value}", "type": "string"}}}},
  "resources": [{{"mode": "managed", "type": "terraform_data", "name": "x", "provider": "provider[\"terraform.io/builtin/terraform\"]", "instances": [{{"schema_version": 0, "attributes": {{"id": "1", "input": {{"value": "{value}", "type": "string"}}}}}}]}}],
  "check_results": null
}}
"#
    )
    .into_bytes()
}

/// A state of `size` bytes whose every byte depends on its lineage's
/// serial, so a torn or mixed body never passes for a whole one.
pub fn sized_state(lineage: &str, serial: u64, size: usize) -> Vec<u8> {
    let mut body = format!(
        "{{\"version\":4,\"serial\":{serial},\"lineage\":\"{lineage}\",\"resources\":[],\"outputs\":{{\"blob\":{{\"type\":\"string\",\"value\":\""
    )
    .into_bytes();
    let tail = b"\"}}}\n";
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while body.len() < size - tail.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push(b'a' + (x % 26) as u8);
    }
    body.extend_from_slice(tail);
    body
}

/// The `terraform` CLI, run in a directory of its own.
pub struct Terraform {
    pub dir: TempDir,
}

/// The terraform binary; fails naming what to install.
pub fn terraform_bin() -> PathBuf {
    for candidate in ["/usr/local/bin/terraform", "/usr/bin/terraform"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("terraform"))
            .find(|p| p.exists())
    });
    on_path.expect(
        "the terraform CLI is required for the end-to-end tests: install Terraform >= 1.4 on PATH",
    )
}

impl Terraform {
    /// A configuration directory with `main.tf` = `hcl`.
    pub fn new(hcl: &str) -> Terraform {
        let dir = TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("main.tf"), hcl).expect("write main.tf");
        std::fs::write(dir.path().join(".terraformrc"), "").expect("write terraformrc");
        Terraform { dir }
    }

    /// A configuration from `terraform-examples/<name>/main.tf`, exactly as
    /// users copy it, with the server address put in place of the
    /// documented default `http://127.0.0.1:8080`.
    pub fn example(name: &str, server_url: &str) -> Terraform {
        Self::new(&example_text(name).replace("http://127.0.0.1:8080", server_url))
    }

    /// Runs terraform with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Runs terraform with `args` and extra environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(terraform_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join(".terraformrc"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run terraform")
    }

    /// Runs terraform and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "terraform {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `terraform init` then `terraform apply -auto-approve` with variables.
    pub fn init_apply(&self, vars: &[&str]) -> String {
        self.ok(&["init", "-no-color"]);
        self.apply(vars)
    }

    /// `terraform apply -auto-approve` with `-var` arguments.
    pub fn apply(&self, vars: &[&str]) -> String {
        let mut args = vec!["apply", "-auto-approve", "-no-color"];
        for v in vars {
            args.push("-var");
            args.push(v);
        }
        self.ok(&args)
    }

    /// Writes a file into the configuration directory.
    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }
}

/// The text of `terraform-examples/<name>/main.tf`.
pub fn example_text(name: &str) -> String {
    let p = repo().join("terraform-examples").join(name).join("main.tf");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A small deterministic generator, seeded per test and printed, so a
/// failing random schedule can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `STATEGATE_TEST_SEED` or the clock, and prints the seed.
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("STATEGATE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} (set STATEGATE_TEST_SEED to replay)");
        Rng(seed | 1)
    }

    /// Next value, uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Sends one request with the path exactly as given (no client-side
/// normalisation of `..` or percent escapes, which URL libraries do) and
/// returns status and body.
pub fn raw_request(base_url: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let addr = base_url.trim_start_matches("http://");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let (status, _, body) = raw_exchange(base_url, &request);
    (status, body)
}

/// Writes `request` (head and body, exactly as given) on a new connection
/// and reads until the server closes it; returns the status, the response
/// head and the body.
pub fn raw_exchange(base_url: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::Read;
    let addr = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", text(&response)));
    let head = text(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, response[split + 4..].to_vec())
}

/// A TCP server on 127.0.0.1 that reads each request and closes the
/// connection without answering, like a proxy that loses replies. Returns
/// its address; it runs until the test process ends.
pub fn closing_server() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
            });
        }
    });
    addr
}

/// With the store's bucket gone, every verb on a state answers
/// 503 naming the bucket, never "no state" (`server` on a store whose
/// bucket `bucket` was deleted; `key` was written before).
pub fn every_verb_answers_503_for_a_missing_bucket(server: &Server, key: &str, bucket: &str) {
    let url = server.state_url(key);
    let locks = format!("{}/locks/{key}", server.url);
    for (method, url, body) in [
        ("GET", &url, Vec::new()),
        ("GET", &locks, Vec::new()),
        ("UNLOCK", &url, Vec::new()),
        ("DELETE", &url, Vec::new()),
        ("POST", &url, state_doc("g", 2, "w")),
        ("LOCK", &url, lock_info("g", "me@host")),
    ] {
        let (status, reason) = http(method, url, &body);
        let reason = text(&reason);
        assert_eq!(status, 503, "{method} {url}: {reason}");
        assert!(
            reason.contains(&format!("bucket `{bucket}` does not exist")),
            "{method} {url}: {reason}"
        );
    }
}

/// With the store's server process `pid` paused (SIGSTOP), GET,
/// LOCK and POST on `url` (a state holding `state_doc("p", 1, "v")`) answer
/// a plain 503 within the store's `timeout` of `secs` seconds; then the
/// server is resumed and the state reads back. Returns the times to 503.
pub fn paused_store_answers_503_within(
    pid: u32,
    url: &str,
    secs: u64,
) -> Vec<(&'static str, Duration)> {
    signal(pid, "STOP");
    let mut timings = Vec::new();
    for (method, body) in [
        ("GET", Vec::new()),
        ("LOCK", lock_info("p", "me@host")),
        ("POST", state_doc("p", 2, "w")),
    ] {
        let started = std::time::Instant::now();
        let (status, reason) = http(method, url, &body);
        let took = started.elapsed();
        timings.push((method, took));
        let reason = text(&reason);
        assert_eq!(status, 503, "{method}: {reason}");
        assert!(
            reason.contains(&format!("did not answer within {secs}s")),
            "{method}: {reason}"
        );
        assert!(
            !reason.contains('{') && !reason.contains("Failure"),
            "{method}: not a plain sentence: {reason}"
        );
        assert!(
            took < Duration::from_secs(secs + 2),
            "{method} took {took:?}"
        );
    }
    signal(pid, "CONT");
    assert_eq!(http("GET", url, b""), (200, state_doc("p", 1, "v")));
    timings
}

/// An `encryption:` configuration in a directory of its own: each key a
/// fresh random one in a file of the directory, the first one sealing.
pub struct Sealing {
    dir: TempDir,
}

impl Sealing {
    /// Keys with these ids, in this order.
    pub fn new(ids: &[&str]) -> Sealing {
        let sealing = Sealing {
            dir: TempDir::new().expect("temp dir"),
        };
        sealing.write_config(ids, false);
        sealing
    }

    /// Where the key file of `id` is (or will be).
    pub fn key_file_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.key"))
    }

    /// The key file of `id`, made by `stategate gen-key` on first use.
    pub fn key_file(&self, id: &str) -> PathBuf {
        let path = self.key_file_path(id);
        if !path.exists() {
            let out = Command::new(bin())
                .args(["gen-key", path.to_str().unwrap()])
                .output()
                .expect("run stategate gen-key");
            assert!(out.status.success(), "gen-key: {}", text(&out.stderr));
        }
        path
    }

    /// Rewrites the configuration with these key ids (the first seals).
    pub fn write_config(&self, ids: &[&str], require_sealed: bool) {
        let mut yaml = String::from("encryption:\n  keys:\n");
        for id in ids {
            yaml.push_str(&format!(
                "    - id: {id}\n      file: {}\n",
                self.key_file(id).display()
            ));
        }
        yaml.push_str(&format!("  require_sealed: {require_sealed}\n"));
        std::fs::write(self.config(), yaml).expect("write the config");
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("stategate.yaml")
    }

    /// `--config <file>`, for [`Server::start_with`] and [`stategate`].
    pub fn args(&self) -> [String; 2] {
        ["--config".into(), self.config().display().to_string()]
    }
}

/// `stategate hash-password`, fed on standard input: an argon2id hash
/// that does not contain the secret.
pub fn hash_password(secret: &str) -> String {
    let mut child = std::process::Command::new(bin())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(secret));
    hash
}
