//! The suite every store passes. Each test takes a fresh [`Peer`], starts
//! the real server on it, drives it with the real `terraform` CLI or raw
//! HTTP, and checks what crosses the wire and what lands in the store.
//! `conformance_suite!(name, peer_expr)` instantiates every test for one
//! store.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use base64::Engine;
use md5::{Digest, Md5};

use crate::support::*;

/// Generates one `#[test]` per suite function for a store.
macro_rules! conformance_suite {
    ($name:ident, $peer:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn peer() -> Box<dyn crate::support::Peer> {
                $peer
            }
            conformance_suite!(@tests
                terraform_lifecycle, held_lock_blocks_apply_until_force_unlock, remote_state_reads_outputs,
                workspaces_stay_apart, gateway_lock_urls, concurrent_locks_have_one_winner,
                large_state_round_trips, traversal_is_refused, bad_input_gets_its_status,
                lock_rules, stale_push_is_refused, history_and_restore, encrypted_state_round_trips,
                history_retention_prunes_oldest, lineage_mismatch_refused_unless_forced,
                delete_keeps_history, operator_commands, external_writes_are_checked_and_kept,
                hostile_keys_are_refused_and_long_ones_fit, non_state_bodies_never_replace_a_state,
                oversized_lock_infos_are_refused, head_and_etag_describe_the_state,
                deleted_state_history_can_be_purged, sealed_states_leave_no_plaintext,
                a_key_and_the_keys_below_it_are_all_states
            );
        }
    };
    (@tests $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                crate::conformance::$test(&*peer());
            }
        )*
    };
}

const QUICKSTART_KEY: &str = "quickstart/terraform.tfstate";

fn keys(peer: &dyn Peer) -> BTreeSet<String> {
    peer.object_keys().into_iter().collect()
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// A write as Terraform sends it: JSON content type and Content-MD5.
fn post_state(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let md5 = content_md5(body);
    http_with(
        "POST",
        url,
        &[("Content-Type", "application/json"), ("Content-MD5", &md5)],
        body,
    )
}

fn history_versions(url: &str) -> Vec<serde_json::Value> {
    let (status, body) = http("GET", &format!("{url}?history"), b"");
    assert_eq!(status, 200, "{}", text(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("history is JSON");
    doc["versions"].as_array().expect("versions array").clone()
}

pub fn terraform_lifecycle(peer: &dyn Peer) {
    let server = Server::start(peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&[]);
    assert_eq!(
        tf.ok(&["output", "-raw", "greeting"]),
        "hello from stategate"
    );
    let plan = tf.run(&["plan", "-detailed-exitcode", "-no-color"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "plan after apply must show no changes:\n{}",
        text(&plan.stdout)
    );

    assert!(
        keys(peer).contains(QUICKSTART_KEY),
        "state not at its key: {:?}",
        keys(peer)
    );
    let (status, body) = http("GET", &server.state_url(QUICKSTART_KEY), b"");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(state["resources"][0]["type"], "terraform_data");

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    let (_, body) = http("GET", &server.state_url(QUICKSTART_KEY), b"");
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        state["resources"].as_array().map(Vec::len),
        Some(0),
        "destroy leaves no resources"
    );
    assert!(
        !keys(peer).iter().any(|k| k.ends_with(".tflock")),
        "a lock was left behind: {:?}",
        keys(peer)
    );
}

pub fn held_lock_blocks_apply_until_force_unlock(peer: &dyn Peer) {
    let server = Server::start(peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&[]);
    let url = server.state_url(QUICKSTART_KEY);
    let (status, _) = http(
        "LOCK",
        &url,
        &lock_info("held-by-test-1234", "alice@ci-runner"),
    );
    assert_eq!(status, 200);
    assert!(
        keys(peer).contains(&format!("{QUICKSTART_KEY}.tflock")),
        "lock object at <key>.tflock"
    );

    let out = tf.run(&[
        "apply",
        "-auto-approve",
        "-lock-timeout=0",
        "-no-color",
        "-var",
        "greeting=blocked",
    ]);
    assert!(
        !out.status.success(),
        "apply must fail while another client holds the lock"
    );
    let stderr = text(&out.stderr);
    // Terraform names the holder's ID from the 423 body (it prints its own
    // LockInfo beside it).
    assert!(
        stderr.contains("already locked: ID=held-by-test-1234"),
        "holder not named:\n{stderr}"
    );

    tf.ok(&["force-unlock", "-force", "held-by-test-1234"]);
    assert!(!keys(peer).iter().any(|k| k.ends_with(".tflock")));
    assert!(
        server.logs("force-unlocked"),
        "a force unlock is logged at warn"
    );
    tf.apply(&["greeting=after unlock"]);
    assert_eq!(tf.ok(&["output", "-raw", "greeting"]), "after unlock");
}

pub fn remote_state_reads_outputs(peer: &dyn Peer) {
    let server = Server::start(peer);
    Terraform::example("quickstart", &server.url)
        .init_apply(&["greeting=shared through remote state"]);
    let reader = Terraform::example("remote-state", &server.url);
    reader.init_apply(&[]);
    assert_eq!(
        reader.ok(&["output", "-raw", "upstream_greeting"]),
        "shared through remote state"
    );
}

pub fn workspaces_stay_apart(peer: &dyn Peer) {
    let server = Server::start(peer);
    let base = example_text("workspaces").replace("http://127.0.0.1:8080", &server.url);
    let cases = [
        ("dev", base.clone(), "workspaces/dev/app/terraform.tfstate"),
        (
            "prod",
            base.replace("?workspace=dev", "?workspace=prod"),
            "workspaces/prod/app/terraform.tfstate",
        ),
        (
            "default",
            base.replace("?workspace=dev", ""),
            "app/terraform.tfstate",
        ),
    ];
    let dirs: Vec<_> = cases
        .iter()
        .map(|(ws, hcl, _)| {
            let tf = Terraform::new(hcl);
            tf.init_apply(&[&format!("greeting=value of {ws}")]);
            tf
        })
        .collect();
    let found = keys(peer);
    for ((ws, _, object_key), tf) in cases.iter().zip(&dirs) {
        assert!(
            found.contains(*object_key),
            "{ws} not at {object_key}: {found:?}"
        );
        assert_eq!(
            tf.ok(&["output", "-raw", "greeting"]),
            format!("value of {ws}")
        );
        let (_, body) = http(
            "GET",
            &format!(
                "{}?workspace={ws}",
                server.state_url("app/terraform.tfstate")
            ),
            b"",
        );
        let body = text(&body);
        assert!(
            body.contains(&format!("value of {ws}")),
            "{ws} reads another workspace's state"
        );
        for other in ["dev", "prod", "default"].iter().filter(|o| *o != ws) {
            assert!(
                !body.contains(&format!("value of {other}")),
                "{ws} holds {other}'s value"
            );
        }
    }
}

pub fn gateway_lock_urls(peer: &dyn Peer) {
    let server = Server::start(peer);
    let tf = Terraform::example("gateway-locks", &server.url);
    tf.init_apply(&[]);
    // The unlock is Terraform's last request: its log line may reach the
    // log after Terraform exits.
    for (how, line) in [
        (
            "lock by POST",
            "method=POST path=/locks/gateway/terraform.tfstate status=200",
        ),
        (
            "unlock by DELETE",
            "method=DELETE path=/locks/gateway/terraform.tfstate status=200",
        ),
    ] {
        assert!(server.logs(line), "{how}:\n{}", server.log());
    }

    let lock_url = format!("{}/locks/gateway/terraform.tfstate", server.url);
    let info = lock_info("gateway-holder-1", "bob@gateway");
    assert_eq!(http("POST", &lock_url, &info).0, 200);
    assert_eq!(http("GET", &lock_url, b""), (200, info.clone()));
    let out = tf.run(&["apply", "-auto-approve", "-lock-timeout=0", "-no-color"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ID=gateway-holder-1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(http("DELETE", &lock_url, &info).0, 200);
    assert_eq!(http("GET", &lock_url, b"").0, 404);
    tf.apply(&["greeting=through the gateway again"]);
}

pub fn concurrent_locks_have_one_winner(peer: &dyn Peer) {
    // Three server processes on one store: the store, not process memory,
    // decides. 30 lockers race in each of 20 rounds, spread over the three.
    const ROUNDS: usize = 20;
    const LOCKERS: usize = 30;
    let servers = [
        Server::start(peer),
        Server::start(peer),
        Server::start(peer),
    ];
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        let key = format!("contended/round-{}", round % 3);
        let urls: Vec<String> = servers.iter().map(|s| s.state_url(&key)).collect();
        let barrier = Arc::new(Barrier::new(LOCKERS));
        let handles: Vec<_> = (0..LOCKERS)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let info = lock_info(&format!("r{round}-locker-{i}"), &format!("c{i}@host"));
                    barrier.wait();
                    let (status, body) = http("LOCK", &url, &info);
                    (info, status, body)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|r| r.1 == 200).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one LOCK wins: {:?}",
            results.iter().map(|r| r.1).collect::<Vec<_>>()
        );
        let winner = &winners[0].0;
        for (_, status, body) in &results {
            if *status != 200 {
                assert_eq!(*status, 423, "round {round}: {}", text(body));
                assert_eq!(
                    body, winner,
                    "round {round}: a 423 carries the winner's LockInfo"
                );
            }
        }
        // Another process releases it for the holder.
        assert_eq!(
            http("UNLOCK", &urls[(round + 1) % urls.len()], winner).0,
            200,
            "round {round}"
        );
    }
    eprintln!(
        "{ROUNDS} rounds of {LOCKERS} concurrent LOCKs over 3 processes on {}: {:?}",
        peer.storage_type(),
        started.elapsed()
    );
    let left: Vec<String> = keys(peer)
        .into_iter()
        .filter(|k| k.ends_with(".tflock"))
        .collect();
    assert!(left.is_empty(), "locks left: {left:?}");
}

pub fn large_state_round_trips(peer: &dyn Peer) {
    let server = Server::start(peer);
    const SIZE: usize = 64 * 1024 * 1024;
    let head = b"{\"version\":4,\"serial\":1,\"lineage\":\"large\",\"resources\":[],\"outputs\":{\"blob\":{\"type\":\"string\",\"value\":\"";
    let tail = b"\"}}}\n";
    let mut body = Vec::with_capacity(SIZE);
    body.extend_from_slice(head);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    let mut x: u32 = 12345;
    while body.len() < SIZE - tail.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        body.push(alphabet[(x >> 16) as usize % alphabet.len()]);
    }
    body.extend_from_slice(tail);
    assert_eq!(body.len(), SIZE);
    let url = server.state_url("large/terraform.tfstate");
    let (status, reason) = post_state(&url, &body);
    assert_eq!(status, 200, "{}", text(&reason));
    let (status, got) = http("GET", &url, b"");
    assert_eq!(status, 200);
    assert!(
        got == body,
        "64 MiB state came back different ({} bytes)",
        got.len()
    );
}

pub fn traversal_is_refused(peer: &dyn Peer) {
    let server = Server::start(peer);
    let state = state_doc("trav", 1, "x");
    let before = keys(peer);
    let paths = [
        "/states/..%2f..%2fescape",
        "/states/%2e%2e/%2e%2e/escape",
        "/states/a/%2E%2E/%2E%2E/escape",
        "/states/../../escape",
        "/states//tmp/escape",
        "/states/%2Ftmp%2Fescape",
        "/states/a%00b",
        "/states/a/./b",
        "/states/..",
        "/states/.stategate/history/x",
        "/states/a%5c..%5cb",
        "/locks/..%2fescape",
    ];
    for path in paths {
        for method in ["GET", "POST", "LOCK", "UNLOCK", "DELETE"] {
            let body = if method == "LOCK" {
                lock_info("t", "t")
            } else {
                state.clone()
            };
            let (status, reason) = raw_request(&server.url, method, path, &body);
            assert_eq!(status, 400, "{method} {path} -> {status} {}", text(&reason));
        }
    }
    assert_eq!(keys(peer), before, "a refused request changed the store");
}

pub fn bad_input_gets_its_status(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("bad/terraform.tfstate");
    let state = state_doc("bad", 1, "x");

    let (status, reason) = http_with(
        "POST",
        &url,
        &[("Content-MD5", "AAAAAAAAAAAAAAAAAAAAAA==")],
        &state,
    );
    assert_eq!(status, 400, "{}", text(&reason));
    assert!(text(&reason).contains("Content-MD5"));
    assert_eq!(
        http_with("POST", &url, &[("Content-MD5", "not base64!")], &state).0,
        400
    );
    let (status, reason) = post_state(&url, b"this is not json");
    assert_eq!(status, 400);
    assert!(text(&reason).contains("JSON"), "{}", text(&reason));
    assert_eq!(
        http("GET", &url, b"").0,
        404,
        "refused writes store nothing"
    );

    let (status, headers, _) = http_full("PATCH", &url, &[], &state);
    assert_eq!(status, 405);
    let allow = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("allow"))
        .map(|(_, v)| v.clone());
    assert_eq!(
        allow.as_deref(),
        Some("GET, HEAD, POST, PUT, DELETE, LOCK, UNLOCK")
    );
    assert_eq!(
        http(
            "PUT",
            &format!("{}/locks/bad/terraform.tfstate", server.url),
            b"{}"
        )
        .0,
        405
    );

    assert_eq!(http("LOCK", &url, b"not json").0, 400);
    assert_eq!(http("LOCK", &url, br#"{"ID":"","Who":"x"}"#).0, 400);
    assert_eq!(http("UNLOCK", &url, b"{broken").0, 400);
    assert_eq!(http("GET", &format!("{}/healthz", server.url), b"").0, 200);
    assert_eq!(http("GET", &format!("{}/nowhere", server.url), b"").0, 404);
    assert_eq!(http("GET", &format!("{url}?version=99"), b"").0, 404);

    let small = Server::start_with(peer, &["--max-body-bytes", "4096"]);
    let big = state_doc("bad", 2, &"y".repeat(5000));
    let (status, reason) = post_state(&small.state_url("bad/terraform.tfstate"), &big);
    assert_eq!(status, 413, "{}", text(&reason));
    assert_eq!(
        post_state(&small.state_url("bad/terraform.tfstate"), &state).0,
        200
    );
}

pub fn lock_rules(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("rules/terraform.tfstate");
    let a = lock_info("lock-a", "a@host");
    assert_eq!(
        http("UNLOCK", &url, &a).0,
        200,
        "unlocking a free state succeeds"
    );
    assert_eq!(http("LOCK", &url, &a).0, 200);
    assert_eq!(
        http("LOCK", &url, &a).0,
        200,
        "a retried LOCK with the holder's ID succeeds"
    );
    assert_eq!(
        http("LOCK", &url, &lock_info("lock-b", "b@host")),
        (423, a.clone())
    );

    assert_eq!(
        post_state(&url, &state_doc("r", 1, "x")),
        (409, a.clone()),
        "write without the ID"
    );
    assert_eq!(
        post_state(&format!("{url}?ID=lock-b"), &state_doc("r", 1, "x")),
        (409, a.clone())
    );
    assert_eq!(
        post_state(&format!("{url}?ID=lock-a"), &state_doc("r", 1, "x")).0,
        200
    );
    assert_eq!(
        http("DELETE", &url, b""),
        (409, a.clone()),
        "delete by a non-holder"
    );
    assert_eq!(
        http("UNLOCK", &url, &lock_info("lock-b", "b@host")),
        (409, a.clone())
    );
    assert_eq!(http("UNLOCK", &url, &a).0, 200);
    assert_eq!(http("UNLOCK", &url, &a).0, 200);
    // Terraform keeps sending its old lock ID after unlocking.
    assert_eq!(
        post_state(&format!("{url}?ID=lock-a"), &state_doc("r", 2, "x")).0,
        200
    );

    // Force unlock: Terraform sends an empty body, OpenTofu an empty-ID LockInfo.
    for force_body in [&b""[..], br#"{"ID":"","Operation":"","Info":"","Who":"","Version":"","Created":"0001-01-01T00:00:00Z","Path":""}"#] {
        assert_eq!(http("LOCK", &url, &lock_info("lock-c", "c@host")).0, 200);
        assert_eq!(http("UNLOCK", &url, force_body).0, 200);
        assert_eq!(http("LOCK", &url, &lock_info("lock-d", "d@host")).0, 200, "force unlock freed the lock");
        assert_eq!(http("UNLOCK", &url, &lock_info("lock-d", "d@host")).0, 200);
    }
    // Terraform 1.11's LOCK body, then OpenTofu >= 1.10's force-unlock, which names the holder's ID.
    assert_eq!(
        http("LOCK", &url, &testdata("lockinfo-terraform.json")).0,
        200
    );
    assert_eq!(
        http("UNLOCK", &url, &testdata("force-unlock-opentofu.json")).0,
        200
    );
    assert!(!keys(peer).iter().any(|k| k.ends_with(".tflock")));
}

pub fn stale_push_is_refused(peer: &dyn Peer) {
    let server = Server::start(peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&["greeting=first"]);
    let old = tf.ok(&["state", "pull"]);
    tf.apply(&["greeting=second"]);
    let url = server.state_url(QUICKSTART_KEY);
    let (_, current) = http("GET", &url, b"");
    tf.write("old.tfstate", old.as_bytes());
    let out = tf.run(&["state", "push", "-force", "old.tfstate"]);
    assert!(
        !out.status.success(),
        "the server must refuse an older serial even with -force"
    );
    assert_eq!(
        http("GET", &url, b"").1,
        current,
        "the stored state is unchanged"
    );
    assert!(server.logs("refused write"), "{}", server.log());
}

pub fn history_and_restore(peer: &dyn Peer) {
    let server = Server::start(peer);
    let tf = Terraform::example("quickstart", &server.url);
    tf.init_apply(&["greeting=v1"]);
    tf.apply(&["greeting=v2"]);
    tf.apply(&["greeting=v3"]);
    let url = server.state_url(QUICKSTART_KEY);

    let listing = stategate_ok(peer, &["state", "history", QUICKSTART_KEY]);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert!(
        rows.len() >= 3,
        "three applies give at least three versions:\n{listing}"
    );
    let versions = history_versions(&url);
    let serials: Vec<u64> = versions
        .iter()
        .filter_map(|v| v["serial"].as_u64())
        .collect();
    assert!(
        serials.windows(2).all(|w| w[0] < w[1]),
        "serials rise: {serials:?}"
    );

    let v1 = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .find(|n| {
            let (_, body) = http("GET", &format!("{url}?version={n}"), b"");
            text(&body).contains("\"v1\"")
        })
        .expect("a version holds the first apply");
    let out = stategate_ok(
        peer,
        &[
            "state",
            "restore",
            QUICKSTART_KEY,
            "--version",
            &v1.to_string(),
        ],
    );
    assert!(out.contains("restored"), "{out}");
    assert_eq!(tf.ok(&["output", "-raw", "greeting"]), "v1");
    let plan = tf.run(&[
        "plan",
        "-detailed-exitcode",
        "-no-color",
        "-var",
        "greeting=v1",
    ]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "plan sees the restored state:\n{}",
        text(&plan.stdout)
    );
    let after = history_versions(&url);
    assert_eq!(after.last().unwrap()["operation"], "restore");
}

pub fn encrypted_state_round_trips(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("encrypted/terraform.tfstate");
    let first = testdata("opentofu-encrypted.tfstate");
    assert_eq!(post_state(&url, &first).0, 200);
    assert_eq!(http("GET", &url, b"").1, first);
    let second = testdata("opentofu-encrypted-2.tfstate");
    assert_eq!(
        post_state(&url, &second).0,
        200,
        "encrypted bodies are stored unchecked"
    );
    assert_eq!(http("GET", &url, b"").1, second);
}

pub fn history_retention_prunes_oldest(peer: &dyn Peer) {
    let server = Server::try_start(peer, &[], &[("STATEGATE_HISTORY_KEEP", "3")]).expect("start");
    let url = server.state_url("retained/terraform.tfstate");
    for serial in 1..=6 {
        assert_eq!(
            post_state(&url, &state_doc("keep", serial, &format!("s{serial}"))).0,
            200
        );
    }
    let versions = history_versions(&url);
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    let serials: Vec<u64> = versions
        .iter()
        .map(|v| v["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [4, 5, 6]);
    assert_eq!(serials, [4, 5, 6]);
    // The summary cache (`summary.json`) is written beside them by a task
    // of its own, at a time of its choosing: it is not a version.
    let stored: Vec<String> = keys(peer)
        .into_iter()
        .filter(|k| k.starts_with(".stategate/history/retained/"))
        .filter(|k| !k.ends_with("/summary.json"))
        .collect();
    assert_eq!(
        stored.len(),
        7,
        "three versions of two objects each and the pointer: {stored:?}"
    );
    assert!(
        stored.iter().any(|k| k.ends_with("/newest.json")),
        "{stored:?}"
    );
    assert_eq!(http("GET", &format!("{url}?version=3"), b"").0, 404);
}

pub fn lineage_mismatch_refused_unless_forced(peer: &dyn Peer) {
    let server = Server::start(peer);
    let key = "lineage/terraform.tfstate";
    let url = server.state_url(key);
    assert_eq!(post_state(&url, &state_doc("lineage-aaaa", 5, "a")).0, 200);
    let other = state_doc("lineage-bbbb", 9, "b");
    let (status, reason) = post_state(&url, &other);
    assert_eq!(status, 409);
    let reason = text(&reason);
    assert!(
        reason.contains("lineage-aaaa") && reason.contains("lineage-bbbb"),
        "{reason}"
    );
    let (status, reason) = post_state(&url, &state_doc("lineage-aaaa", 5, "changed"));
    assert_eq!(status, 409, "same serial, other bytes");
    assert!(text(&reason).contains("serial 5"));
    assert_eq!(
        post_state(&url, &state_doc("lineage-aaaa", 5, "a")).0,
        200,
        "a byte-identical retry is fine"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &other).unwrap();
    let path = file.path().to_str().unwrap();
    let refused = stategate(peer, &["state", "push", key, path], &[]);
    assert!(
        !refused.status.success(),
        "push without --force keeps the rules"
    );
    stategate_ok(peer, &["state", "push", key, path, "--force"]);
    assert_eq!(http("GET", &url, b"").1, other);
}

pub fn delete_keeps_history(peer: &dyn Peer) {
    let server = Server::start(peer);
    let key = "deleted/terraform.tfstate";
    let url = server.state_url(key);
    let body = state_doc("del", 3, "kept");
    assert_eq!(post_state(&url, &body).0, 200);
    assert_eq!(http("DELETE", &url, b"").0, 200);
    assert_eq!(http("GET", &url, b"").0, 404);
    assert!(!keys(peer).contains(key));
    let versions = history_versions(&url);
    let last = versions.last().expect("the deleted state is kept").clone();
    let (_, kept) = http("GET", &format!("{url}?version={}", last["version"]), b"");
    assert_eq!(kept, body);
    let version = last["version"].to_string();
    let restore = ["state", "restore", key, "--version", version.as_str()];

    // A held lock stops a restore unless it is forced.
    let holder = lock_info("restore-blocker", "dave@host");
    assert_eq!(http("LOCK", &url, &holder).0, 200);
    let refused = stategate(peer, &restore, &[]);
    assert!(!refused.status.success(), "restore while locked");
    assert!(
        text(&refused.stderr).contains("locked"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(
        http("GET", &url, b"").0,
        404,
        "a refused restore writes nothing"
    );
    stategate_ok(peer, &[&restore[..], &["--force"]].concat());
    assert_eq!(http("GET", &url, b"").1, body);
    assert_eq!(http("UNLOCK", &url, &holder).0, 200);
    assert_eq!(http("DELETE", &url, b"").0, 200);
    assert_eq!(
        http("DELETE", &url, b"").0,
        200,
        "deleting an absent state succeeds"
    );
}

pub fn operator_commands(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("ops/app.tfstate");
    assert_eq!(post_state(&url, &state_doc("ops", 7, "x")).0, 200);
    assert_eq!(
        post_state(
            &format!("{url}?workspace=staging"),
            &state_doc("ops2", 2, "y")
        )
        .0,
        200
    );
    assert_eq!(
        http("LOCK", &url, &lock_info("ops-lock", "carol@laptop")).0,
        200
    );

    let list = stategate_ok(peer, &["state", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("ops/app.tfstate") && l.contains(" default "))
        .expect(&list);
    assert!(row.contains(" 7 ") && row.contains("carol@laptop"), "{row}");
    let staging = list.lines().find(|l| l.contains(" staging ")).expect(&list);
    assert!(
        staging.starts_with("ops/app.tfstate") && staging.contains(" 2 "),
        "{staging}"
    );
    assert!(
        !list.contains(".stategate") && !list.contains(".tflock"),
        "{list}"
    );

    let locks = stategate_ok(peer, &["lock", "list"]);
    assert!(
        locks.contains("ops-lock") && locks.contains("carol@laptop"),
        "{locks}"
    );
    let got = stategate(
        peer,
        &["state", "get", "ops/app.tfstate", "--workspace", "staging"],
        &[],
    );
    assert_eq!(got.stdout, state_doc("ops2", 2, "y"));

    // With the ID of a lock no longer held (one taken since stays).
    let other = stategate(
        peer,
        &["lock", "release", "ops/app.tfstate", "--id", "gone-lock"],
        &[],
    );
    assert!(!other.status.success(), "{}", text(&other.stdout));
    assert!(
        text(&other.stderr).contains("carol@laptop"),
        "the holder is named: {}",
        text(&other.stderr)
    );
    assert!(keys(peer).iter().any(|k| k.ends_with(".tflock")));
    let released = stategate(
        peer,
        &["lock", "release", "ops/app.tfstate", "--id", "ops-lock"],
        &[],
    );
    assert!(released.status.success(), "{}", text(&released.stderr));
    assert!(text(&released.stdout).contains("carol@laptop"));
    assert!(!keys(peer).iter().any(|k| k.ends_with(".tflock")));

    // Without an ID, whoever holds it.
    assert_eq!(
        http("LOCK", &url, &lock_info("ops-lock-2", "carol@laptop")).0,
        200
    );
    let released = stategate(peer, &["lock", "release", "ops/app.tfstate"], &[]);
    assert!(released.status.success());
    assert!(text(&released.stdout).contains("carol@laptop"));
    assert!(
        text(&released.stderr).contains("force-unlocked"),
        "the release is logged: {}",
        text(&released.stderr)
    );
    assert!(!keys(peer).iter().any(|k| k.ends_with(".tflock")));
    assert!(
        stategate_ok(peer, &["lock", "list"]).lines().count() == 1,
        "only the header remains"
    );
}

pub fn external_writes_are_checked_and_kept(peer: &dyn Peer) {
    let server = Server::start(peer);
    let key = "external/terraform.tfstate";
    let url = server.state_url(key);
    assert_eq!(post_state(&url, &state_doc("ext", 5, "ours")).0, 200);
    // Another tool (Terraform's native backend, an operator) replaces it.
    let external = state_doc("ext", 9, "theirs");
    peer.put_object(key, &external);
    assert_eq!(http("GET", &url, b"").1, external);

    let (status, reason) = post_state(&url, &state_doc("ext", 6, "stale"));
    assert_eq!(
        status, 409,
        "checked against what is stored, not what stategate wrote last"
    );
    assert!(
        text(&reason).contains("stored serial 9"),
        "{}",
        text(&reason)
    );
    assert_eq!(post_state(&url, &state_doc("ext", 10, "newer")).0, 200);

    let versions = history_versions(&url);
    let found = versions
        .iter()
        .find(|v| v["operation"] == "found")
        .expect("the external state is kept");
    assert_eq!(found["serial"], 9);
    assert_eq!(
        http("GET", &format!("{url}?version={}", found["version"]), b"").1,
        external
    );
    let serials: Vec<u64> = versions
        .iter()
        .filter_map(|v| v["serial"].as_u64())
        .collect();
    assert_eq!(serials, [5, 9, 10]);
}

/// Key segments and workspace names are bounded (so every
/// store holds every key the server accepts: a 249-byte segment answered
/// 503 on local disk), no segment may end in `.tflock` (a state
/// `victim.tflock/x` made `victim` unlockable), and none may start with
/// `.stategate` (`inner/.stategate/history/...` reached the history of a
/// store kept below this one's root or prefix).
pub fn hostile_keys_are_refused_and_long_ones_fit(peer: &dyn Peer) {
    let server = Server::start(peer);
    let longest = "s".repeat(200);
    for (key, workspace) in [
        (format!("long/{longest}"), None),
        (format!("long/{longest}/x"), Some(longest.as_str())),
    ] {
        let query = workspace.map_or(String::new(), |w| format!("?workspace={w}"));
        let url = format!("{}{query}", server.state_url(&key));
        let (status, reason) = post_state(&url, &state_doc("long", 1, "x"));
        assert_eq!(status, 200, "{key}: {}", text(&reason));
        assert_eq!(http("LOCK", &url, &lock_info("L", "l")).0, 200);
        assert_eq!(http("GET", &url, b"").0, 200);
        assert_eq!(http("UNLOCK", &url, &lock_info("L", "l")).0, 200);
        assert_eq!(
            http(
                "GET",
                &format!("{url}{}history", if query.is_empty() { "?" } else { "&" }),
                b""
            )
            .0,
            200
        );
    }
    let before = keys(peer);
    let too_long = format!("{longest}s");
    for (path, why) in [
        (format!("/states/a/{too_long}"), "segment over 200 bytes"),
        (
            format!("/states/a?workspace={too_long}"),
            "workspace over 200 bytes",
        ),
        (
            "/states/victim.tflock/x".to_string(),
            "segment ending in .tflock",
        ),
        ("/states/a/b.tflock".to_string(), "key ending in .tflock"),
        (
            "/states/x/state?workspace=w.tflock".to_string(),
            "workspace ending in .tflock",
        ),
        (
            "/locks/victim.tflock/x".to_string(),
            "lock URL with a .tflock segment",
        ),
        // Where the own objects of a store whose root or prefix is
        // `<this one's>/inner` sit.
        (
            "/states/inner/.stategate/history/app/newest.json".to_string(),
            "a .stategate segment below the top",
        ),
        (
            "/states/app?workspace=.stategate".to_string(),
            "workspace .stategate",
        ),
    ] {
        for method in ["GET", "POST", "LOCK", "DELETE"] {
            let body = if method == "LOCK" {
                lock_info("h", "h")
            } else {
                state_doc("h", 1, "h")
            };
            let (status, reason) = raw_request(&server.url, method, &path, &body);
            assert_eq!(status, 400, "{method} {path} ({why}): {}", text(&reason));
            assert!(!text(&reason).is_empty(), "a 400 says why");
        }
    }
    assert_eq!(keys(peer), before, "a refused request changed the store");
    let victim = server.state_url("victim");
    assert_eq!(http("LOCK", &victim, &lock_info("V", "v")).0, 200);
    assert_eq!(http("UNLOCK", &victim, &lock_info("V", "v")).0, 200);
}

/// Over a state with resources, bodies that are not states were
/// accepted and replaced it; Terraform then failed to read it.
pub fn non_state_bodies_never_replace_a_state(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("shape/terraform.tfstate");
    let good = state_doc("shape", 3, "kept");
    assert_eq!(post_state(&url, &good).0, 200);
    for bad in [
        &b"{}"[..],
        b"[]",
        b"null",
        b"42",
        br#"{"serial":"4","lineage":"shape"}"#,
        br#"{"serial":-1,"lineage":"shape"}"#,
        br#"{"serial":4}"#,
        br#"{"lineage":"shape","serial":4.5}"#,
    ] {
        let (status, reason) = post_state(&url, bad);
        assert_eq!(status, 400, "{}: {}", text(bad), text(&reason));
        assert!(
            text(&reason).contains("not a Terraform state") || text(&reason).contains("not JSON"),
            "{}",
            text(&reason)
        );
    }
    assert_eq!(http("GET", &url, b""), (200, good.clone()));
    assert_eq!(
        history_versions(&url).len(),
        1,
        "refused bodies leave no history"
    );
    // OpenTofu's encrypted envelope is a state, with or without serial and lineage.
    let enc = server.state_url("shape/encrypted.tfstate");
    assert_eq!(
        post_state(&enc, &testdata("opentofu-encrypted.tfstate")).0,
        200
    );
    let with_head = br#"{"serial":2,"lineage":"tofu","meta":{},"encrypted_data":"AAAA","encryption_version":"v0"}"#;
    let enc2 = server.state_url("shape/encrypted-with-head.tfstate");
    assert_eq!(post_state(&enc2, with_head).0, 200);
    let older = br#"{"serial":1,"lineage":"tofu","meta":{},"encrypted_data":"BBBB","encryption_version":"v0"}"#;
    assert_eq!(
        post_state(&enc2, older).0,
        409,
        "an envelope's serial is checked"
    );
    // The operator can still store any JSON.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"{}").unwrap();
    stategate_ok(
        peer,
        &[
            "state",
            "push",
            "shape/terraform.tfstate",
            file.path().to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(http("GET", &url, b""), (200, b"{}".to_vec()));
}

/// A LockInfo was bounded only by the state body limit, and came
/// back whole with every 409 and 423.
pub fn oversized_lock_infos_are_refused(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("bigl/terraform.tfstate");
    let huge = format!(
        r#"{{"ID":"h","Who":"x","Info":"{}"}}"#,
        "i".repeat(200 * 1024)
    );
    assert_eq!(http("LOCK", &url, huge.as_bytes()).0, 413);
    assert_eq!(
        http(
            "POST",
            &format!("{}/locks/bigl/terraform.tfstate", server.url),
            huge.as_bytes()
        )
        .0,
        413
    );
    let field = format!(r#"{{"ID":"h","Who":"{}"}}"#, "w".repeat(5000));
    let (status, reason) = http("LOCK", &url, field.as_bytes());
    assert_eq!(status, 400, "{}", text(&reason));
    assert!(text(&reason).contains("Who"), "{}", text(&reason));
    assert_eq!(
        http(
            "GET",
            &format!("{}/locks/bigl/terraform.tfstate", server.url),
            b""
        )
        .0,
        404,
        "nothing was locked"
    );
    let small = Server::start_with(peer, &["--max-lock-bytes", "300"]);
    let url = small.state_url("bigl/terraform.tfstate");
    let padded = format!(r#"{{"ID":"p","Info":"{}"}}"#, "p".repeat(400));
    assert_eq!(http("LOCK", &url, padded.as_bytes()).0, 413);
    assert_eq!(http("LOCK", &url, &lock_info("ok", "ok")).0, 200);
    assert_eq!(http("UNLOCK", &url, &lock_info("ok", "ok")).0, 200);
}

/// HEAD answered 405; GET and HEAD carry the length and an ETag.
pub fn head_and_etag_describe_the_state(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("head/terraform.tfstate");
    let (status, headers, _) = http_full("HEAD", &url, &[], b"");
    assert_eq!(status, 404);
    let _ = headers;
    let body = state_doc("head", 1, "x");
    assert_eq!(post_state(&url, &body).0, 200);
    let etag = format!("\"{}\"", hex(&Md5::digest(&body)));
    for method in ["GET", "HEAD"] {
        let (status, headers, got) = http_full(method, &url, &[], b"");
        assert_eq!(status, 200, "{method}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("etag").as_deref(), Some(etag.as_str()), "{method}");
        assert_eq!(
            header("content-length"),
            Some(body.len().to_string()),
            "{method}"
        );
        if method == "GET" {
            assert_eq!(got, body);
        } else {
            assert!(got.is_empty(), "HEAD sends no body");
        }
    }
    // A state replaced behind stategate's back gets its own ETag: the
    // cached one belongs to the version stategate wrote.
    let other = state_doc("head", 2, "changed elsewhere");
    peer.put_object("head/terraform.tfstate", &other);
    let (_, headers, got) = http_full("GET", &url, &[], b"");
    assert_eq!(got, other);
    let etag = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    assert_eq!(etag, Some(format!("\"{}\"", hex(&Md5::digest(&other)))));
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A deleted state stayed readable through `?version=N` with no
/// way to remove it. Purging it leaves the history of a state below it
/// (`a/b` below `a`), which lies in a folder below its own.
pub fn deleted_state_history_can_be_purged(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = server.state_url("purge/terraform.tfstate");
    let below = server.state_url("purge/terraform.tfstate/below");
    assert_eq!(post_state(&url, &state_doc("purge", 1, "secret")).0, 200);
    assert_eq!(post_state(&url, &state_doc("purge", 2, "secret")).0, 200);
    assert_eq!(post_state(&below, &state_doc("below", 1, "kept")).0, 200);
    let refused = stategate(peer, &["state", "purge", "purge/terraform.tfstate"], &[]);
    assert!(
        !refused.status.success(),
        "purge of a live state is refused"
    );
    assert!(
        text(&refused.stderr).contains("delete it"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(http("DELETE", &url, b"").0, 200);
    assert_eq!(
        http("GET", &format!("{url}?version=2"), b"").0,
        200,
        "deleted states keep history"
    );
    let out = stategate_ok(peer, &["state", "purge", "purge/terraform.tfstate"]);
    assert!(out.contains("purged 2 versions"), "{out}");
    assert_eq!(http("GET", &format!("{url}?version=2"), b"").0, 404);
    assert!(history_versions(&url).is_empty());
    assert!(
        !keys(peer)
            .iter()
            .any(|k| k.contains("purge/") && !k.contains("purge/terraform.tfstate/below")),
        "purge leaves nothing: {:?}",
        keys(peer)
    );
    assert_eq!(
        history_versions(&below).len(),
        1,
        "the history of the state below was purged too"
    );
    assert_eq!(http("GET", &format!("{below}?version=1"), b"").0, 200);
}

/// Seals what a store holds: GET gives the state back, every kept version
/// opens, and no object of the store holds a byte of plaintext state.
pub fn sealed_states_leave_no_plaintext(peer: &dyn Peer) {
    let sealing = Sealing::new(&["k2026"]);
    let args = sealing.args();
    let server = Server::start_with(peer, &[&args[0], &args[1]]);
    let url = server.state_url("sealed/terraform.tfstate");
    let marker = "plaintext-marker-6b1f0e";
    let first = state_doc("sealed", 1, &format!("{marker}-one"));
    let second = state_doc("sealed", 2, &format!("{marker}-two"));
    let lock = lock_info("sealed-lock", "ci@runner");
    assert_eq!(http("LOCK", &url, &lock).0, 200);
    assert_eq!(post_state(&format!("{url}?ID=sealed-lock"), &first).0, 200);
    assert_eq!(post_state(&format!("{url}?ID=sealed-lock"), &second).0, 200);
    assert_eq!(http("GET", &url, b"").1, second);
    let (status, headers, body) = http_full("GET", &format!("{url}?version=1"), &[], b"");
    assert_eq!((status, &body), (200, &first));
    let etag = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    // The MD5 of what Terraform sent, as recorded: not of the sealed bytes.
    assert_eq!(etag, Some(format!("\"{}\"", hex(&Md5::digest(&first)))));

    let keys = keys(peer);
    let state_key = "sealed/terraform.tfstate";
    assert!(keys.contains(state_key), "{keys:?}");
    for key in &keys {
        let stored = peer.object_bytes(key);
        assert!(
            !stored.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{key} holds plaintext"
        );
        let is_body = key == state_key
            || (key.starts_with(".stategate/history/") && key.ends_with(".tfstate"));
        if is_body {
            assert!(
                stored.starts_with(b"SGSL\x01\x05k2026"),
                "{key} is not sealed"
            );
        }
    }
    // Locks stay clear, so Terraform's native backends still read them.
    let lock_stored = peer.object_bytes(&format!("{state_key}.tflock"));
    assert!(
        text(&lock_stored).contains("sealed-lock"),
        "{}",
        text(&lock_stored)
    );
    assert_eq!(
        http("UNLOCK", &url, &lock_info("sealed-lock", "ci@runner")).0,
        200
    );

    // One flipped byte: a clear 503 naming the key, and nothing overwritten.
    let mut tampered = peer.object_bytes(state_key);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x20;
    peer.put_object(state_key, &tampered);
    let (status, reason) = http("GET", &url, b"");
    assert_eq!(status, 503, "{}", text(&reason));
    assert!(
        text(&reason).contains("does not open with key `k2026`"),
        "{}",
        text(&reason)
    );
    let third = state_doc("sealed", 3, "after tampering");
    assert_eq!(post_state(&url, &third).0, 503);
    assert_eq!(peer.object_bytes(state_key), tampered, "overwritten");
}

/// `a`, `a/b` and `a/b/c` are three states, written in either order, in
/// the default workspace and another: each reads back, is locked and
/// unlocked on its own, is listed, and keeps its own history. Every store
/// holds the whole key space, the local store too, where keys are paths
/// and the file of `a` must not stand where `a/b` needs a directory.
pub fn a_key_and_the_keys_below_it_are_all_states(peer: &dyn Peer) {
    let server = Server::start(peer);
    let url = |key: &str, workspace: &str| match workspace {
        "default" => format!("{}?", server.state_url(key)),
        ws => format!("{}?workspace={ws}&", server.state_url(key)),
    };
    let lineage = |key: &str, workspace: &str| format!("{workspace}-{}", key.replace('/', "-"));
    let trees = [
        ["up/a", "up/a/b", "up/a/b/c"],
        ["down/a/b/c", "down/a/b", "down/a"],
    ];
    let mut states = Vec::new();
    for workspace in ["default", "dev"] {
        for key in trees.iter().flatten() {
            for serial in 1..=2 {
                let doc = state_doc(&lineage(key, workspace), serial, key);
                let (status, body) = post_state(&url(key, workspace), &doc);
                assert_eq!(status, 200, "{key} in {workspace}: {}", text(&body));
            }
            states.push((*key, workspace));
        }
    }

    for &(key, ws) in &states {
        let doc = |serial| state_doc(&lineage(key, ws), serial, key);
        assert_eq!(
            http("GET", &url(key, ws), b""),
            (200, doc(2)),
            "{key} in {ws}"
        );
        let (status, body) = http("GET", &format!("{}history", url(key, ws)), b"");
        assert_eq!(status, 200, "history of {key} in {ws}: {}", text(&body));
        let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut serials: Vec<u64> = history["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|v| v["serial"].as_u64())
            .collect();
        serials.sort();
        assert_eq!(serials, [1, 2], "{key} in {ws} keeps its own history");
        assert_eq!(
            http("GET", &format!("{}version=1", url(key, ws)), b""),
            (200, doc(1)),
            "{key} in {ws}, version 1"
        );
    }

    // Every one locked at once, each by its own holder.
    let lock = |i: usize| lock_info(&format!("nest-{i}"), &format!("holder-{i}@host"));
    for (i, &(key, ws)) in states.iter().enumerate() {
        let (status, body) = http("LOCK", &url(key, ws), &lock(i));
        assert_eq!(status, 200, "LOCK {key} in {ws}: {}", text(&body));
    }
    let found = keys(peer);
    for object_key in [
        "up/a.tflock",
        "up/a/b.tflock",
        "workspaces/dev/down/a/b/c.tflock",
    ] {
        assert!(found.contains(object_key), "{object_key}: {found:?}");
    }
    for (i, &(key, ws)) in states.iter().enumerate() {
        assert_eq!(
            http("LOCK", &url(key, ws), &lock(99)),
            (423, lock(i)),
            "{key} in {ws} is held by its own lock"
        );
    }
    for prefix in ["up/", "down/"] {
        let (status, body) = http(
            "GET",
            &format!("{}/api/v1/states?prefix={prefix}", server.url),
            b"",
        );
        assert_eq!(status, 200, "{}", text(&body));
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut rows: Vec<(String, String, u64, String)> = list["states"]
            .as_array()
            .expect("states")
            .iter()
            .map(|row| {
                (
                    row["key"].as_str().unwrap().to_string(),
                    row["workspace"].as_str().unwrap().to_string(),
                    row["serial"].as_u64().unwrap(),
                    row["lock"]["ID"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        rows.sort();
        let mut expected: Vec<_> = states
            .iter()
            .enumerate()
            .filter(|(_, (key, _))| key.starts_with(prefix))
            .map(|(i, (key, ws))| (key.to_string(), ws.to_string(), 2, format!("nest-{i}")))
            .collect();
        expected.sort();
        assert_eq!(rows, expected, "listing of {prefix}");
    }
    for (i, &(key, ws)) in states.iter().enumerate() {
        let (status, body) = http("UNLOCK", &url(key, ws), &lock(i));
        assert_eq!(status, 200, "UNLOCK {key} in {ws}: {}", text(&body));
    }
    assert!(!keys(peer).iter().any(|k| k.ends_with(".tflock")));
    // Each changes on its own once free.
    let (key, ws) = states[1];
    let third = state_doc(&lineage(key, ws), 3, "third");
    assert_eq!(post_state(&url(key, ws), &third).0, 200);
    for &(other, other_ws) in &states {
        let expected = match (other, other_ws) == (key, ws) {
            true => third.clone(),
            false => state_doc(&lineage(other, other_ws), 2, other),
        };
        assert_eq!(
            http("GET", &url(other, other_ws), b""),
            (200, expected),
            "{other} in {other_ws}"
        );
    }
}
