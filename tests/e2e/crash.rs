//! Crash safety: a server killed with SIGKILL at a random moment of a lock,
//! a 32 MiB write or an unlock leaves the previous state or the new one,
//! never a torn or empty one, and never a lock no command can release.
//! Round after round on the local and SQLite stores. On SQLite, where a
//! state and its history record are one transaction, a server killed
//! under a load of new states leaves no state without its record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

const ROUNDS: u64 = 50;
const SIZE: usize = 32 * 1024 * 1024;
const KEY: &str = "crash/terraform.tfstate";

/// A 32 MiB state whose every byte depends on its serial.
fn big_state(serial: u64) -> Vec<u8> {
    sized_state("crash", serial, SIZE)
}

/// Lock, write and unlock as Terraform does, ignoring failures (the server
/// may die at any point).
fn apply_like(url: &str, lock_id: &str, body: &[u8]) {
    let info = lock_info(lock_id, "crash@test");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    if agent.request("LOCK", url).send_bytes(&info).is_err() {
        return;
    }
    if agent
        .request("POST", &format!("{url}?ID={lock_id}"))
        .send_bytes(body)
        .is_err()
    {
        return;
    }
    let _ = agent.request("UNLOCK", url).send_bytes(&info);
}

pub(crate) fn crash_rounds(peer: &dyn Peer) {
    let mut rng = Rng::new("crash schedule");
    let mut server = Server::start(peer);
    let url = server.state_url(KEY);
    let started = Instant::now();
    apply_like(&url, "first", &big_state(1));
    let full = started.elapsed();
    assert_eq!(
        http("GET", &url, b"").1,
        big_state(1),
        "the first write went through"
    );
    let mut current = 1;
    let mut kept_new = 0;

    for round in 0..ROUNDS {
        let next = current + 1;
        let body = big_state(next);
        let url = server.state_url(KEY);
        let lock_id = format!("round-{round}");
        let writer = {
            let (url, lock_id, body) = (url.clone(), lock_id.clone(), body.clone());
            std::thread::spawn(move || apply_like(&url, &lock_id, &body))
        };
        // Anywhere from before the lock to after the unlock.
        let window = full.as_millis() as u64 * 3 / 2 + 20;
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        server.kill();
        writer.join().unwrap();

        server = Server::start(peer);
        let url = server.state_url(KEY);
        let (status, stored) = http("GET", &url, b"");
        assert_eq!(status, 200, "round {round}: the state is readable");
        let serial = serde_json::from_slice::<serde_json::Value>(&stored)
            .unwrap_or_else(|e| panic!("round {round}: torn state ({} bytes): {e}", stored.len()))
            ["serial"]
            .as_u64()
            .unwrap();
        if serial == next {
            assert!(stored == body, "round {round}: new serial with other bytes");
            kept_new += 1;
        } else {
            assert_eq!(
                serial, current,
                "round {round}: neither the old state nor the new one"
            );
            assert!(
                stored == big_state(current),
                "round {round}: old serial with other bytes"
            );
        }
        current = serial;

        let (status, holder) = http("GET", &format!("{}/locks/{KEY}", server.url), b"");
        if status == 200 {
            assert_eq!(
                holder,
                lock_info(&lock_id, "crash@test"),
                "round {round}: a lock left behind is whole"
            );
            let out = stategate(peer, &["lock", "release", KEY], &[]);
            assert!(
                out.status.success(),
                "round {round}: the lock can be released: {}",
                text(&out.stderr)
            );
        } else {
            assert_eq!(status, 404);
        }
        assert_eq!(
            http("LOCK", &url, &lock_info("probe", "p@p")).0,
            200,
            "round {round}: the state can be locked"
        );
        assert_eq!(http("UNLOCK", &url, &lock_info("probe", "p@p")).0, 200);
    }

    let versions = {
        let (status, body) = http("GET", &format!("{}?history", server.state_url(KEY)), b"");
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["versions"]
            .as_array()
            .unwrap()
            .clone()
    };
    for v in versions.iter().rev().take(5) {
        let (status, body) = http(
            "GET",
            &format!("{}?version={}", server.state_url(KEY), v["version"]),
            b"",
        );
        assert_eq!(status, 200);
        let serial = serde_json::from_slice::<serde_json::Value>(&body)
            .expect("a kept version parses")["serial"]
            .as_u64()
            .unwrap();
        assert!(
            body == big_state(serial),
            "kept version {} has the bytes of its serial",
            v["version"]
        );
    }
    eprintln!(
        "crash rounds: {ROUNDS}, new state kept in {kept_new}, old state kept in {}",
        ROUNDS - kept_new
    );
}

#[test]
fn local_survives_sigkill_during_writes() {
    crash_rounds(&LocalPeer::new());
}

#[test]
fn sqlite_survives_sigkill_during_writes() {
    crash_rounds(&SqlitePeer::new());
}

/// Clients writing new states (`load/c<i>-<n>`) until `stop`, ignoring
/// failures; each gives back the keys it sent.
fn new_states_until(
    url: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|i| {
            let (url, stop) = (url.to_string(), Arc::clone(stop));
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/c{i}-{}", sent.len());
                    let body = sized_state(&key, 1, 4096);
                    sent.push(key.clone());
                    if agent
                        .post(&format!("{url}/states/{key}"))
                        .send_bytes(&body)
                        .is_err()
                    {
                        break;
                    }
                }
                sent
            })
        })
        .collect()
}

/// SQLite writes a state and its history record in one transaction: a
/// server killed while 16 clients create states leaves every state that
/// exists with its version in history (written apart, a state committed
/// just before the kill had none).
#[test]
fn sqlite_killed_under_load_leaves_no_state_without_its_record() {
    killed_under_load_rounds(&SqlitePeer::new(), 16);
}

/// Four rounds of: 16 clients create states, the server is killed
/// 300 to 600 ms in and started again; every state that exists then has
/// exactly one version in history, written by `write`, with its bytes.
/// Each round must have made more than `made` states.
pub(crate) fn killed_under_load_rounds(peer: &dyn Peer, made: usize) {
    let mut rng = Rng::new("killed under load");
    for round in 0..4 {
        let server = Server::start(peer);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = new_states_until(&server.url, 16, &stop);
        std::thread::sleep(Duration::from_millis(300 + rng.below(300)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let sent: Vec<String> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();

        let server = Server::start(peer);
        let mut found = 0;
        for key in &sent {
            let url = server.state_url(key);
            let (status, body) = http("GET", &url, b"");
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "round {round}: {key}");
            found += 1;
            let (status, history) = http("GET", &format!("{url}?history"), b"");
            assert_eq!(status, 200, "round {round}: {key}");
            let doc: serde_json::Value = serde_json::from_slice(&history).unwrap();
            let versions = doc["versions"].as_array().unwrap();
            assert_eq!(
                versions.len(),
                1,
                "round {round}: {key} was written once and must be in history: {doc}"
            );
            assert_eq!(versions[0]["operation"], "write", "round {round}: {key}");
            let (_, kept) = http("GET", &format!("{url}?version=1"), b"");
            assert!(kept == body, "round {round}: {key}: version 1 is the state");
        }
        assert!(found > made, "round {round}: only {found} states were made");
        server.kill();
    }
}
