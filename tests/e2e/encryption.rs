//! Encryption at rest beyond what every store proves in the conformance
//! suite: key rotation with `stategate rekey` (interrupted and resumed),
//! adopting a store written in clear, `require_sealed`, start-up refusals
//! and `gen-key`. On the local store, whose files the tests read directly,
//! but for a lock holder's write, which takes a path of its own on S3.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::stores::{LocalPeer, files_below};
use crate::support::*;

const STATES: u64 = 40;

fn key_of(i: u64) -> String {
    format!("fleet/s{i:03}/terraform.tfstate")
}

/// The value state `i` holds at `serial`: 256 KiB, so re-sealing the fleet
/// takes long enough to be interrupted.
fn value_of(i: u64, serial: u64) -> String {
    format!("secret-{i}-{serial}-{}", "x".repeat(256 * 1024))
}

/// Writes `STATES` states, two versions each, through a server.
fn write_fleet(peer: &LocalPeer, sealing: Option<&Sealing>) {
    let args = sealing.map(|s| s.args());
    let extra: Vec<&str> = args.iter().flatten().map(String::as_str).collect();
    let server = Server::start_with(peer, &extra);
    for i in 0..STATES {
        let url = server.state_url(&key_of(i));
        for serial in 1..=2 {
            let doc = state_doc(&format!("fleet-{i}"), serial, &value_of(i, serial));
            assert_eq!(http("POST", &url, &doc).0, 200);
        }
    }
}

/// Every state body and kept version, as stored, with whether it is sealed
/// under `id`.
fn sealed_under(peer: &LocalPeer, id: &str) -> (usize, usize) {
    let header = format!("SGSL\x01{}{id}", id.len() as u8 as char);
    let mut bodies = 0;
    let mut under = 0;
    for key in peer.object_keys() {
        let body = key.ends_with(".tfstate")
            && (!key.starts_with(".stategate/") || key.starts_with(".stategate/history/"));
        if body {
            bodies += 1;
            if peer.object_bytes(&key).starts_with(header.as_bytes()) {
                under += 1;
            }
        }
    }
    (bodies, under)
}

fn rekey(peer: &LocalPeer, sealing: &Sealing) -> std::process::Output {
    let args = sealing.args();
    stategate(peer, &["rekey", &args[0], &args[1]], &[])
}

/// Every state reads back as written through a server with `sealing`.
fn assert_fleet_reads(peer: &LocalPeer, sealing: &Sealing) {
    let args = sealing.args();
    let server = Server::start_with(peer, &[&args[0], &args[1]]);
    for i in 0..STATES {
        let url = server.state_url(&key_of(i));
        let (status, body) = http("GET", &url, b"");
        assert_eq!(status, 200, "{}: {}", key_of(i), text(&body));
        assert!(
            body == state_doc(&format!("fleet-{i}"), 2, &value_of(i, 2)),
            "{} reads back different bytes",
            key_of(i)
        );
        let (status, body) = http("GET", &format!("{url}?version=1"), b"");
        assert_eq!(status, 200, "{} version 1: {}", key_of(i), text(&body));
    }
}

#[test]
fn encryption_keys_rotate_and_an_interrupted_rekey_resumes() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["old"]);
    write_fleet(&peer, Some(&sealing));
    let (bodies, under_old) = sealed_under(&peer, "old");
    // Each state and its two kept versions.
    assert_eq!((bodies, under_old), (3 * STATES as usize, bodies));

    // The new key seals; the old one still opens what it sealed.
    sealing.write_config(&["new", "old"], false);
    assert_fleet_reads(&peer, &sealing);

    // Interrupted: killed as soon as it has re-sealed something.
    let args = sealing.args();
    let mut child = Command::new(bin())
        .args(["rekey", &args[0], &args[1], "--storage-type", "local"])
        .args(["-C", &format!("path={}", peer.root().display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rekey");
    let started = Instant::now();
    while sealed_under(&peer, "new").1 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rekey sealed nothing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let (_, done_before) = sealed_under(&peer, "new");
    assert!(
        done_before > 0 && done_before < bodies,
        "not interrupted mid-way: {done_before} of {bodies} done"
    );

    // Resumed: everything under the new key, nothing done twice.
    let out = rekey(&peer, &sealing);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains(&format!("{done_before} already current")),
        "{summary}"
    );
    assert_eq!(sealed_under(&peer, "new"), (bodies, bodies));

    // The old key can go: every state and version opens without it.
    sealing.write_config(&["new"], false);
    assert_fleet_reads(&peer, &sealing);
    let again = rekey(&peer, &sealing);
    assert!(
        text(&again.stdout).contains(&format!(
            "0 re-sealed, 0 sealed for the first time, {bodies} already current"
        )),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn encryption_rekey_stops_on_an_unknown_key_and_resumes_once_it_is_given() {
    let peer = LocalPeer::new();
    let first = Sealing::new(&["k0"]);
    write_fleet(&peer, Some(&first));
    // A configuration that forgot k0: rekey names it and seals nothing.
    let second = Sealing::new(&["k1"]);
    let out = rekey(&peer, &second);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sealed with key `k0`, which encryption.keys does not list"),
        "{}",
        text(&out.stderr)
    );
    // Given k0 (as the second key), it completes.
    let both = Sealing::new(&["k1"]);
    std::fs::copy(first.key_file("k0"), both.key_file_path("k0")).unwrap();
    both.write_config(&["k1", "k0"], false);
    let out = rekey(&peer, &both);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (bodies, under) = sealed_under(&peer, "k1");
    assert_eq!(under, bodies);
}

#[test]
fn encryption_adopts_a_clear_store_and_require_sealed_refuses_it_until_rekeyed() {
    let peer = LocalPeer::new();
    write_fleet(&peer, None);
    let sealing = Sealing::new(&["k"]);
    // Served as it is, with a warning.
    let args = sealing.args();
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    let url = server.state_url(&key_of(0));
    assert_eq!(http("GET", &url, b"").0, 200);
    assert!(server.logs("unsealed state body"), "{}", server.log());
    drop(server);

    sealing.write_config(&["k"], true);
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    let (status, reason) = http("GET", &server.state_url(&key_of(0)), b"");
    assert_eq!(status, 503, "{}", text(&reason));
    assert!(text(&reason).contains("is not sealed"), "{}", text(&reason));
    drop(server);

    let out = rekey(&peer, &sealing);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("{} sealed for the first time", 3 * STATES)),
        "{}",
        text(&out.stdout)
    );
    assert_fleet_reads(&peer, &sealing);
}

#[test]
fn encryption_mistakes_stop_start_up_naming_the_setting() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let cases = [
        ("encryption:\n  keys: []\n", "setting `encryption.keys`"),
        (
            "encryption:\n  keys:\n    - id: k\n      key: c2VjcmV0\n",
            "setting `encryption.keys[0].key`",
        ),
        (
            "encryption:\n  keys:\n    - id: k\n      file: /nonexistent/k.key\n",
            "setting `encryption.keys[0].file`",
        ),
        (
            "encryption:\n  keys:\n    - id: k\n      env: STATEGATE_TEST_NO_SUCH_KEY\n",
            "setting `encryption.keys[0].env`",
        ),
        (
            "encryption:\n  keys:\n    - id: 'a b'\n      env: X\n",
            "setting `encryption.keys[0].id`",
        ),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let log = match Server::try_start(&peer, &["--config", path.to_str().unwrap()], &[]) {
            Ok(server) => panic!("started with {yaml}:\n{}", server.log()),
            Err(log) => log,
        };
        assert!(log.contains(expected), "{yaml}: {log}");
        assert!(
            !log.contains("c2VjcmV0"),
            "the inline key was echoed: {log}"
        );
    }
    // A key of the wrong length, from the environment.
    let path = dir.path().join("short.yaml");
    std::fs::write(
        &path,
        "encryption:\n  keys:\n    - id: k\n      env: STATEGATE_TEST_KEY\n",
    )
    .unwrap();
    let log = Server::try_start(
        &peer,
        &["--config", path.to_str().unwrap()],
        &[("STATEGATE_TEST_KEY", "AAAA")],
    )
    .err()
    .expect("started with a 3-byte key");
    assert!(
        log.contains("setting `encryption.keys[0].env`") && log.contains("holds 3 bytes, not 32"),
        "{log}"
    );
}

#[test]
fn gen_key_writes_a_private_file_and_never_overwrites_one() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("k.key");
    let run = |args: &[&str]| Command::new(bin()).args(args).output().unwrap();
    let out = run(&["gen-key", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    let again = run(&["gen-key", path.to_str().unwrap()]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key, "overwritten");
    let printed = run(&["gen-key"]);
    assert!(printed.status.success());
    assert_ne!(text(&printed.stdout).trim(), key.trim());
    assert_eq!(text(&printed.stdout).trim().len(), 44, "base64 of 32 bytes");

    // A run that cannot write its key (no room, killed) leaves no file under
    // the key's name, which would refuse the next run.
    let cut = dir.path().join("cut.key");
    let limited = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -f 0; exec "$0" gen-key "$1""#)
        .arg(bin())
        .arg(&cut)
        .output()
        .unwrap();
    assert!(!limited.status.success(), "wrote a key with no room");
    assert!(!cut.exists(), "an empty key file was left");
    let out = run(&["gen-key", cut.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&cut).unwrap().trim().len(), 44);
}

/// Every object of the store except the short-lived write leases, with its
/// bytes: what a refused change must leave as it was.
fn store_contents(peer: &LocalPeer) -> Vec<(String, Vec<u8>)> {
    peer.object_keys()
        .into_iter()
        .filter(|k| !k.starts_with(".stategate/lease/"))
        .map(|k| {
            let bytes = peer.object_bytes(&k);
            (k, bytes)
        })
        .collect()
}

/// POST, DELETE and `state push --force` through a server (or the CLI)
/// whose keys cannot open the stored states are all 503 naming `key_id`,
/// and leave the store as it was; GET is 503 too.
fn assert_changes_refused(peer: &LocalPeer, sealing: &Sealing, key_id: &str) {
    let before = store_contents(peer);
    let args = sealing.args();
    let server = Server::start_with(peer, &[&args[0], &args[1]]);
    let named = format!("`{key_id}`");
    for (key, next) in [
        ("small/terraform.tfstate", state_doc("small", 2, "replaced")),
        (
            "large/terraform.tfstate",
            sized_state("large", 2, 3 * 1024 * 1024),
        ),
    ] {
        let url = server.state_url(key);
        let (status, reason) = http("GET", &url, b"");
        assert_eq!(status, 503, "GET {key}: {}", text(&reason));
        let (status, reason) = http("POST", &url, &next);
        assert_eq!(status, 503, "POST {key}: {}", text(&reason));
        assert!(
            text(&reason).contains(&named),
            "POST {key}: {}",
            text(&reason)
        );
        let (status, reason) = http("DELETE", &url, b"");
        assert_eq!(status, 503, "DELETE {key}: {}", text(&reason));
        assert!(
            text(&reason).contains(&named),
            "DELETE {key}: {}",
            text(&reason)
        );
    }
    drop(server);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), state_doc("small", 9, "forced")).unwrap();
    let out = stategate(
        peer,
        &[
            "state",
            "push",
            "small/terraform.tfstate",
            file.path().to_str().unwrap(),
            "--force",
            &args[0],
            &args[1],
        ],
        &[],
    );
    assert!(!out.status.success(), "a forced push replaced the state");
    assert!(text(&out.stderr).contains(&named), "{}", text(&out.stderr));
    assert!(
        store_contents(peer) == before,
        "a refused change wrote to the store"
    );
}

/// Writes one small and one large (segmented) state under `sealing`.
fn write_small_and_large(peer: &LocalPeer, sealing: &Sealing) -> (Vec<u8>, Vec<u8>) {
    let args = sealing.args();
    let server = Server::start_with(peer, &[&args[0], &args[1]]);
    let small = state_doc("small", 1, "kept");
    let large = sized_state("large", 1, 3 * 1024 * 1024);
    for (key, body) in [
        ("small/terraform.tfstate", &small),
        ("large/terraform.tfstate", &large),
    ] {
        assert_eq!(http("POST", &server.state_url(key), body).0, 200);
    }
    (small, large)
}

/// Both states, and their first kept version, read back as written.
fn assert_small_and_large_read(peer: &LocalPeer, sealing: &Sealing, small: &[u8], large: &[u8]) {
    let args = sealing.args();
    let server = Server::start_with(peer, &[&args[0], &args[1]]);
    for (key, body) in [
        ("small/terraform.tfstate", small),
        ("large/terraform.tfstate", large),
    ] {
        let url = server.state_url(key);
        let (status, got) = http("GET", &url, b"");
        assert_eq!(status, 200, "{key}: {}", text(&got[..got.len().min(300)]));
        assert!(got == body, "{key} reads back other bytes");
        let (status, got) = http("GET", &format!("{url}?version=1"), b"");
        assert_eq!(status, 200, "{key} version 1");
        assert!(got == body, "{key} version 1 reads back other bytes");
    }
}

/// Rewrites the history records of `key` (one version, `body`) with its
/// MD5 in clear, as releases before records were sealed wrote them: what
/// refuses a change is then the stored body itself, not its record.
fn records_in_clear(peer: &LocalPeer, key: &str, body: &[u8]) {
    let dir = format!(".stategate/history/{key}/");
    for name in ["0000000001.json", "newest.json"] {
        let record = format!("{dir}{name}");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&peer.object_bytes(&record)).unwrap();
        doc["md5"] = md5_hex(body).into();
        peer.put_object(&record, &serde_json::to_vec(&doc).unwrap());
    }
}

#[test]
fn encryption_other_material_under_the_same_key_id_refuses_writes_and_deletes() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let (small, large) = write_small_and_large(&peer, &sealing);
    records_in_clear(&peer, "small/terraform.tfstate", &small);
    records_in_clear(&peer, "large/terraform.tfstate", &large);

    // The same id, other bytes: what a mistyped secret or a key file
    // restored from the wrong backup gives.
    let right = std::fs::read(sealing.key_file("k1")).unwrap();
    std::fs::remove_file(sealing.key_file_path("k1")).unwrap();
    sealing.write_config(&["k1"], false);
    assert_ne!(std::fs::read(sealing.key_file("k1")).unwrap(), right);
    assert_changes_refused(&peer, &sealing, "k1");

    std::fs::write(sealing.key_file_path("k1"), &right).unwrap();
    assert_small_and_large_read(&peer, &sealing, &small, &large);
}

#[test]
fn encryption_a_key_missing_from_the_configuration_refuses_writes_and_deletes() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let (small, large) = write_small_and_large(&peer, &sealing);

    // Only a new key: it would seal, but it cannot open what k1 sealed.
    sealing.write_config(&["k2"], false);
    assert_changes_refused(&peer, &sealing, "k1");

    sealing.write_config(&["k1"], false);
    assert_small_and_large_read(&peer, &sealing, &small, &large);
}

/// A sealed store served without the `encryption` section: its states
/// answer 503 naming the cause, never the sealed bytes as a state; a
/// write never puts a clear state over a sealed one, nor does a delete
/// remove one.
#[test]
fn encryption_a_sealed_store_served_without_keys_is_neither_read_written_nor_deleted() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let (small, large) = write_small_and_large(&peer, &sealing);
    let before = store_contents(&peer);
    let server = Server::start(&peer);
    for (key, next) in [
        ("small/terraform.tfstate", state_doc("small", 2, "in-clear")),
        (
            "large/terraform.tfstate",
            sized_state("large", 2, 3 * 1024 * 1024),
        ),
    ] {
        let url = server.state_url(key);
        for method in ["GET", "HEAD"] {
            let (status, reason) = http(method, &url, b"");
            assert_eq!(status, 503, "{method} {key}: {}", text(&reason));
        }
        let (_, reason) = http("GET", &url, b"");
        assert!(
            text(&reason).contains("no encryption keys"),
            "GET {key}: {}",
            text(&reason)
        );
        let (status, reason) = http("POST", &url, &next);
        assert_eq!(status, 503, "POST {key}: {}", text(&reason));
        let (status, reason) = http("DELETE", &url, b"");
        assert_eq!(status, 503, "DELETE {key}: {}", text(&reason));
    }
    drop(server);
    assert!(
        store_contents(&peer) == before,
        "a write or delete without keys changed the sealed store"
    );
    assert_small_and_large_read(&peer, &sealing, &small, &large);
}

#[test]
fn encryption_a_key_file_others_can_read_is_warned_about_or_refused() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let path = sealing.key_file("k1");
    let shown = path.display().to_string();
    let args = sealing.args();

    // As gen-key writes it: no warning.
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    assert_eq!(http("GET", &format!("{}/healthz", server.url), b"").0, 200);
    assert!(!server.log().contains(&shown), "{}", server.log());
    drop(server);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    assert!(
        server.logs(&shown) && server.logs("readable by group or others"),
        "{}",
        server.log()
    );
    drop(server);

    sealing.write_config(&["k1"], true);
    let log = match Server::try_start(&peer, &[&args[0], &args[1]], &[]) {
        Ok(server) => panic!("started with a 0644 key file:\n{}", server.log()),
        Err(log) => log,
    };
    assert!(
        log.contains("setting `encryption.keys[0].file`") && log.contains(&shown),
        "{log}"
    );
    assert!(
        !log.contains(std::fs::read_to_string(&path).unwrap().trim()),
        "{log}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    assert!(!server.log().contains(&shown), "{}", server.log());
}

/// The files below the store's root that hold `needle`, in any case.
fn files_holding(peer: &LocalPeer, needle: &str) -> Vec<String> {
    let lower = needle.to_ascii_lowercase();
    let upper = needle.to_ascii_uppercase();
    files_below(&peer.root())
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(peer.root().join(f)).unwrap_or_default();
            [&lower, &upper]
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
        })
        .collect()
}

/// History through every reader with sealing on: the listing and the
/// dashboard give the plaintext's MD5, and each version reads back with
/// it as its ETag.
fn assert_history_verifies(server: &Server, key: &str, docs: &[Vec<u8>]) {
    let url = server.state_url(key);
    let (status, listing) = http("GET", &format!("{url}?history"), b"");
    assert_eq!(status, 200, "{}", text(&listing));
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    let md5s: Vec<&str> = listing["versions"]
        .as_array()
        .expect("a list of versions")
        .iter()
        .map(|v| v["md5"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = docs.iter().map(|d| md5_hex(d)).collect();
    assert_eq!(md5s, expected);
    for (n, doc) in docs.iter().enumerate() {
        let (status, headers, body) =
            http_full("GET", &format!("{url}?version={}", n + 1), &[], b"");
        assert_eq!(status, 200, "version {}: {}", n + 1, text(&body));
        assert!(&body == doc, "version {} reads back other bytes", n + 1);
        let etag = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.clone());
        assert_eq!(etag, Some(format!("\"{}\"", md5_hex(doc))));
    }
    let (status, page) = http("GET", &format!("{}/api/v1/states/{key}", server.url), b"");
    assert_eq!(status, 200, "{}", text(&page));
    assert!(text(&page).contains(&md5_hex(&docs[0])), "{}", text(&page));
}

#[test]
fn encryption_keeps_no_plaintext_digest_in_the_store() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let args = sealing.args();
    let key = "digests/terraform.tfstate";
    let docs: Vec<Vec<u8>> = (1..=3)
        .map(|serial| state_doc("digests", serial, &format!("guessable-{serial}")))
        .collect();
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    let url = server.state_url(key);
    for doc in &docs {
        assert_eq!(http("POST", &url, doc).0, 200);
    }
    // A retried write is still recognised as one.
    assert_eq!(http("POST", &url, &docs[2]).0, 200);
    for doc in &docs {
        let holding = files_holding(&peer, &md5_hex(doc));
        assert!(holding.is_empty(), "the plaintext's MD5 is in {holding:?}");
    }
    assert_history_verifies(&server, key, &docs);
    // Its digest sealed once, the newest record is also the pointer: one
    // file with two names, as without encryption.
    let inode = |name: &str| {
        let path = peer.object_path(&format!(".stategate/history/{key}/{name}"));
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    };
    assert_eq!(inode("newest.json"), inode("0000000003.json"));
    // A version whose record was changed is still refused.
    let record = format!(".stategate/history/{key}/0000000001.json");
    let sealed_record = peer.object_bytes(&record);
    let mut meta: serde_json::Value = serde_json::from_slice(&sealed_record).unwrap();
    meta["md5"] = md5_hex(b"another state").into();
    peer.put_object(&record, &serde_json::to_vec(&meta).unwrap());
    assert_eq!(http("GET", &format!("{url}?version=1"), b"").0, 503);
    // A record written in the clear form (by an earlier release) reads.
    meta["md5"] = md5_hex(&docs[0]).into();
    peer.put_object(&record, &serde_json::to_vec(&meta).unwrap());
    assert_history_verifies(&server, key, &docs);
    drop(server);

    // Rekey seals the clear record too, and after rotation every record
    // opens without the old key.
    sealing.write_config(&["k2", "k1"], false);
    let out = rekey(&peer, &sealing);
    assert!(out.status.success(), "{}", text(&out.stderr));
    sealing.write_config(&["k2"], false);
    for doc in &docs {
        let holding = files_holding(&peer, &md5_hex(doc));
        assert!(holding.is_empty(), "the plaintext's MD5 is in {holding:?}");
    }
    let server = Server::start_with(&peer, &[&args[0], &args[1]]);
    assert_history_verifies(&server, key, &docs);
    let next = state_doc("digests", 4, "after rotation");
    assert_eq!(http("POST", &server.state_url(key), &next).0, 200);
}

/// On a store with compare-and-swap (S3), a lock holder's write (LOCK,
/// then `POST ?ID=`, as every Terraform run with a lock makes it) takes
/// a path of its own, without the write lease; served without keys, it
/// too must never put a clear state over a sealed one (it wrote it, in
/// clear, as the state and as a version).
#[test]
fn encryption_a_lock_holders_write_never_goes_in_clear_over_a_sealed_state() {
    let peer = crate::s3::S3Peer::on(crate::s3::Moto::shared());
    let sealing = Sealing::new(&["k1"]);
    let key = "app/terraform.tfstate";
    let args = sealing.args();
    let sealed = Server::start_with(&peer, &[&args[0], &args[1]]);
    let (status, body) = http("POST", &sealed.state_url(key), &state_doc("app", 1, "v1"));
    assert_eq!(status, 200, "{}", text(&body));
    drop(sealed);

    let server = Server::start(&peer);
    let url = server.state_url(key);
    assert_eq!(http("LOCK", &url, &lock_info("holder", "me@host")).0, 200);
    let (status, reason) = http(
        "POST",
        &format!("{url}?ID=holder"),
        &state_doc("app", 2, "in-clear"),
    );
    assert_eq!(status, 503, "{}", text(&reason));
    assert!(
        text(&reason).contains("no encryption keys"),
        "{}",
        text(&reason)
    );
    let clear: Vec<String> = peer
        .object_keys()
        .into_iter()
        .filter(|k| {
            let bytes = peer.object_bytes(k);
            bytes.windows(8).any(|w| w == b"in-clear")
        })
        .collect();
    assert!(clear.is_empty(), "written in clear: {clear:?}");
}
