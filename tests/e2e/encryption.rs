//! Encryption at rest beyond what every store proves in the conformance
//! suite: key rotation with `stategate rekey` (interrupted and resumed),
//! adopting a store written in clear, `require_sealed`, start-up refusals
//! and `gen-key`. On the local store, whose files the tests read directly.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::stores::LocalPeer;
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
}
