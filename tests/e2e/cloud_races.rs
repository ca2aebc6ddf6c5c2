//! Three stategate replicas on one bucket, racing. On the cloud
//! stores without compare-and-swap (OSS, and S3-compatible servers that
//! ignore `If-Match`) every read-check-change runs under a write lease;
//! these tests show the races it closes, round after round: each runs a
//! least number of rounds however slow the machine (so no verdict depends
//! on timing), then more while a time budget lasts:
//!
//! - **unlock during lock**: UNLOCK(A) and its retry on another replica
//!   overlap LOCK(B) and LOCK(C) on the other replicas. At most one of B
//!   and C may get the lock, and the winner's lock must still be there.
//! - **unlocked writers**: three writers of one lineage with different
//!   serials, one per replica, at once. The stored state must be the
//!   highest serial that got 200, and history must hold exactly one record
//!   per accepted write, in serial order, within `history_keep`.
//! - **lock holders and a force-unlock** (S3, where a lock holder's write
//!   takes no lease): two writers presenting the lock's ID, and a third
//!   replica force-unlocking and writing without a lock, at once; the
//!   same checks as for unlocked writers.
//!
//! The unlocked writers race on a SQLite file shared by three processes
//! too, where a version history keeps and its state share one body.
//!
//! Each test prints its rates. The same tests measure another build with
//! `STATEGATE_TEST_BIN=path/to/stategate cargo test --test e2e races_`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::oss::{OssPeer, OssServer};
use crate::s3::{Moto, S3Peer};
use crate::support::stores::SqlitePeer;
use crate::support::*;

/// How long each race test goes on past its least rounds.
const BUDGET: Duration = Duration::from_secs(30);
/// Most rounds per test.
const MAX_ROUNDS: usize = 400;
/// Rounds every unlock race runs, however slow the machine: what the
/// rates are judged on is then never a matter of timing.
const UNLOCK_ROUNDS_MIN: usize = 50;
/// Rounds every writers' race runs, however slow the machine.
const WRITER_ROUNDS_MIN: usize = 15;
/// `history_keep` of the racing replicas: small, so every round also
/// checks that retention is exact.
const HISTORY_KEEP: usize = 3;

fn replicas(peer: &dyn Peer) -> Vec<Server> {
    let keep = HISTORY_KEEP.to_string();
    (0..3)
        .map(|_| {
            Server::try_start(peer, &[], &[("STATEGATE_HISTORY_KEEP", &keep)])
                .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"))
        })
        .collect()
}

/// The `ID` of a LockInfo body, or `""`.
fn lock_id(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// LOCKs as Terraform with `-lock-timeout` does while A holds the lock:
/// again while the holder is A; returns the final status.
fn lock_until_free(url: &str, id: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http("LOCK", url, &lock_info(id, "racer@host"));
        if status != 423 || lock_id(&body) != "A" || Instant::now() > deadline {
            return status;
        }
    }
}

/// Runs unlock-during-lock rounds; returns (rounds, anomalies).
fn unlock_during_lock(peer: &dyn Peer, what: &str) -> (usize, usize) {
    let servers = replicas(peer);
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let started = Instant::now();
    let (mut rounds, mut anomalies) = (0, 0);
    while another_round(rounds, UNLOCK_ROUNDS_MIN, MAX_ROUNDS, started, BUDGET) {
        let key = format!("races/unlock-{rounds}");
        let url = |i: usize| format!("{}/states/{key}", urls[i]);
        let (status, body) = http("LOCK", &url(0), &lock_info("A", "a@host"));
        assert_eq!(status, 200, "{what}: round {rounds}: {}", text(&body));
        let barrier = Arc::new(Barrier::new(4));
        let jobs: Vec<(usize, &str, &str)> = vec![
            (0, "UNLOCK", "A"),
            (1, "UNLOCK", "A"),
            (1, "LOCK", "B"),
            (2, "LOCK", "C"),
        ];
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(replica, method, id)| {
                let barrier = Arc::clone(&barrier);
                let url = url(replica);
                std::thread::spawn(move || {
                    barrier.wait();
                    match method {
                        "UNLOCK" => http("UNLOCK", &url, &lock_info(id, "a@host")).0,
                        _ => lock_until_free(&url, id),
                    }
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let (b, c) = (statuses[2], statuses[3]);
        let (status, holder) = http("GET", &format!("{}/locks/{key}", urls[0]), b"");
        let holder = if status == 200 {
            lock_id(&holder)
        } else {
            String::new()
        };
        let fine = match (b, c) {
            (200, 200) => false,
            (200, _) => holder == "B",
            (_, 200) => holder == "C",
            // Neither got it: only fine while A still holds it (both
            // unlocks refused), which cannot happen here, or nobody does.
            _ => holder.is_empty() || holder == "A",
        };
        if !fine {
            anomalies += 1;
            eprintln!(
                "{what}: round {rounds}: unlocks {:?}, LOCK B {b}, LOCK C {c}, holder {holder:?}",
                &statuses[..2]
            );
        }
        rounds += 1;
    }
    eprintln!(
        "{what}: unlock during lock: {anomalies} anomalies in {rounds} rounds ({:.1}%) in {:.0?}",
        100.0 * anomalies as f64 / rounds.max(1) as f64,
        started.elapsed()
    );
    (rounds, anomalies)
}

/// What the unlocked-writers rounds found.
#[derive(Debug, Default)]
struct WriterRates {
    rounds: usize,
    /// The stored serial is lower than one that got 200.
    stale: usize,
    /// History is not exactly the accepted writes, in order, within
    /// `history_keep`.
    history: usize,
}

fn serial_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("serial")?
        .as_u64()
}

/// Who races in a round of [`writers`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Racers {
    /// Three writers without a lock.
    Unlocked,
    /// Two writers presenting the ID of the lock that holds the state,
    /// which a lock holder's write skips the write lease for, while the
    /// third replica force-unlocks the state and writes without a lock.
    HoldersAndForceUnlock,
}

/// Runs rounds of three racing writers.
fn writers(peer: &dyn Peer, what: &str, racers: Racers) -> WriterRates {
    let servers = replicas(peer);
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let started = Instant::now();
    let mut rates = WriterRates::default();
    while another_round(rates.rounds, WRITER_ROUNDS_MIN, MAX_ROUNDS, started, BUDGET) {
        let key = format!("races/write-{}", rates.rounds);
        let url = |i: usize| format!("{}/states/{key}", urls[i]);
        let (status, body) = http("POST", &url(0), &state_doc("race", 1, "seed"));
        assert_eq!(status, 200, "{what}: seed: {}", text(&body));
        if racers == Racers::HoldersAndForceUnlock {
            let (status, body) = http("LOCK", &url(0), &lock_info("H", "holder@host"));
            assert_eq!(status, 200, "{what}: lock: {}", text(&body));
        }
        let barrier = Arc::new(Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let url = url(i);
                std::thread::spawn(move || {
                    let serial = 2 + i as u64;
                    let body = state_doc("race", serial, &format!("writer {i}"));
                    barrier.wait();
                    match racers {
                        Racers::HoldersAndForceUnlock if i < 2 => {
                            (serial, http("POST", &format!("{url}?ID=H"), &body).0)
                        }
                        Racers::HoldersAndForceUnlock => {
                            let (status, _) = http("UNLOCK", &url, b"");
                            assert_eq!(status, 200, "force-unlock");
                            (serial, http("POST", &url, &body).0)
                        }
                        Racers::Unlocked => (serial, http("POST", &url, &body).0),
                    }
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
        let (status, stored) = http("GET", &url(0), b"");
        assert_eq!(status, 200, "{what}: read back");
        let stored = serial_of(&stored);
        if accepted.last().is_some_and(|&top| stored < Some(top)) {
            rates.stale += 1;
            eprintln!(
                "{what}: round {}: writes {results:?}, stored serial {stored:?}",
                rates.rounds
            );
        }

        let (status, body) = http("GET", &format!("{}?history", url(0)), b"");
        assert_eq!(status, 200, "{what}: history: {}", text(&body));
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("history JSON");
        let recorded: Vec<(Option<u64>, String)> = doc["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| {
                (
                    v["serial"].as_u64(),
                    v["operation"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut expected: Vec<(Option<u64>, String)> = std::iter::once(1)
            .chain(accepted.iter().copied())
            .map(|s| (Some(s), "write".to_string()))
            .collect();
        let excess = expected.len().saturating_sub(HISTORY_KEEP);
        expected.drain(..excess);
        if recorded != expected {
            rates.history += 1;
            eprintln!(
                "{what}: round {}: writes {results:?}, history {recorded:?}, expected {expected:?}",
                rates.rounds
            );
        }
        rates.rounds += 1;
    }
    eprintln!(
        "{what}: unlocked writers: stale overwrites in {} of {} rounds ({:.1}%), history wrong in {} ({:.1}%), in {:.0?}",
        rates.stale,
        rates.rounds,
        100.0 * rates.stale as f64 / rates.rounds.max(1) as f64,
        rates.history,
        100.0 * rates.history as f64 / rates.rounds.max(1) as f64,
        started.elapsed()
    );
    rates
}

fn assert_no_unlock_anomalies(peer: &dyn Peer, what: &str) {
    let (rounds, anomalies) = unlock_during_lock(peer, what);
    assert_eq!(
        anomalies, 0,
        "{what}: {anomalies} of {rounds} rounds lost a lock"
    );
}

fn assert_writers_exact(peer: &dyn Peer, what: &str) {
    assert_racers_exact(peer, what, Racers::Unlocked);
}

fn assert_racers_exact(peer: &dyn Peer, what: &str, racers: Racers) {
    let rates = writers(peer, what, racers);
    assert_eq!(
        (rates.stale, rates.history),
        (0, 0),
        "{what}: stale overwrites and wrong histories in {} rounds",
        rates.rounds
    );
}

#[test]
fn races_oss_unlock_during_lock() {
    assert_no_unlock_anomalies(&OssPeer::new(), "oss");
}

#[test]
fn races_oss_unlocked_writers_and_history() {
    assert_writers_exact(&OssPeer::new(), "oss");
}

#[test]
fn races_s3_without_if_match_unlock_during_lock() {
    assert_no_unlock_anomalies(
        &S3Peer::on(Moto::shared_ignoring_if_match()),
        "s3 ignoring If-Match",
    );
}

#[test]
fn races_s3_without_if_match_unlocked_writers_and_history() {
    assert_writers_exact(
        &S3Peer::on(Moto::shared_ignoring_if_match()),
        "s3 ignoring If-Match",
    );
}

#[test]
fn races_s3_unlocked_writers_and_history() {
    assert_writers_exact(&S3Peer::on(Moto::shared()), "s3");
}

/// Three processes on one SQLite file: history stays exact while
/// retention prunes versions whose bodies their states share, and
/// afterwards every object's body is there and every body is an object's.
#[test]
fn races_sqlite_processes_unlocked_writers_history_and_shared_bodies() {
    let peer = SqlitePeer::new();
    assert_writers_exact(&peer, "sqlite");
    let conn = rusqlite::Connection::open(peer.db()).expect("open the database");
    let (missing, orphans, objects): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM objects WHERE body_id NOT IN (SELECT id FROM bodies)),
                    (SELECT count(*) FROM bodies WHERE id NOT IN (SELECT body_id FROM objects)),
                    (SELECT count(*) FROM objects)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("count the rows");
    assert!(objects > 0, "the races wrote nothing");
    assert_eq!(
        (missing, orphans),
        (0, 0),
        "objects without their body, and bodies no object names, of {objects} objects"
    );
}

/// Lock holders write without the write lease on S3; racing each other,
/// a force-unlock and an unlocked writer after it, history stays exact.
#[test]
fn races_s3_lock_holders_force_unlock_and_history() {
    assert_racers_exact(
        &S3Peer::on(Moto::shared()),
        "s3 lock holders",
        Racers::HoldersAndForceUnlock,
    );
}

/// The lease objects are gone after the races: each holder deleted its own.
#[test]
fn races_leave_no_lease_behind() {
    let peer = OssPeer::on(OssServer::shared());
    let servers = replicas(&peer);
    let handles: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let url = s.state_url("races/lease-cleanup");
            std::thread::spawn(move || {
                for n in 0..10u64 {
                    let _ = http("POST", &url, &state_doc("lease", 1 + n * 3 + i as u64, "x"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let leases: Vec<String> = peer
        .object_keys()
        .into_iter()
        .filter(|k| k.starts_with(".stategate/lease/"))
        .collect();
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
}

/// A replica that dies holding a lease blocks that state only until the
/// lease expires: the next writer waits, then takes over and removes it.
/// A writer never waits longer than a lease can live. With `timeout: 1` a
/// lease lives 12 s and counts as expired 5 s (clock skew) after that.
#[test]
fn races_lease_of_a_crashed_replica_expires_and_waits_are_bounded() {
    let peer = OssPeer::new().set("timeout", "1");
    let server = Server::start(&peer);
    let lease = ".stategate/lease/crashed/terraform.tfstate/crashed-replica";
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = |expires_ms: u64| {
        format!(r#"{{"owner":"crashed-replica","expires_ms":{expires_ms}}}"#).into_bytes()
    };

    // Long expired: removed on the spot.
    peer.put_object(lease, &body(now_ms - 60_000));
    let url = server.state_url("crashed/terraform.tfstate");
    let started = Instant::now();
    assert_eq!(http("POST", &url, &state_doc("c", 1, "a")).0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!peer.object_keys().iter().any(|k| k == lease));

    // Still valid for 2 s: the writer waits until it has expired (plus the
    // allowed clock skew), then writes.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    peer.put_object(lease, &body(now_ms + 2_000));
    let started = Instant::now();
    let (status, reason) = http("POST", &url, &state_doc("c", 2, "b"));
    let waited = started.elapsed();
    assert_eq!(status, 200, "{}", text(&reason));
    assert!(
        waited >= Duration::from_secs(6) && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
    assert!(!peer.object_keys().iter().any(|k| k == lease));
    assert!(
        server.logs("removing an expired write lease"),
        "{}",
        server.log()
    );

    // One that will not expire in time: the wait is bounded (12 s to live,
    // 5 s of skew, 5 s more) and ends in a 503 with the reason.
    peer.put_object(lease, &body(now_ms + 3_600_000));
    let started = Instant::now();
    let (status, reason) = http("POST", &url, &state_doc("c", 3, "c"));
    let waited = started.elapsed();
    let reason = text(&reason);
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.contains("kept crashed/terraform.tfstate busy"),
        "{reason}"
    );
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(40),
        "waited {waited:?}"
    );
}
