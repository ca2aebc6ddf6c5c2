//! The conformance suite on the two stores that need no server, plus what
//! only they can show: nothing is written outside the local root, and the
//! files they leave are what the README says.

use crate::support::stores::{LocalPeer, SqlitePeer, files_below};
use crate::support::*;

conformance_suite!(local_suite, Box::new(LocalPeer::new()));
conformance_suite!(sqlite_suite, Box::new(SqlitePeer::new()));

#[test]
fn local_writes_stay_under_the_root() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let parent = peer.root().parent().unwrap().to_path_buf();
    for path in [
        "/states/..%2fescape",
        "/states/%2e%2e/escape",
        "/states/%2Fescape",
        "/locks/..%2f..%2fescape",
    ] {
        for method in ["POST", "LOCK"] {
            let body = if method == "LOCK" {
                lock_info("x", "x")
            } else {
                state_doc("x", 1, "x")
            };
            assert_eq!(
                raw_request(&server.url, method, path, &body).0,
                400,
                "{method} {path}"
            );
        }
    }
    let (status, _) = http(
        "POST",
        &server.state_url("inside/terraform.tfstate"),
        &state_doc("x", 1, "x"),
    );
    assert_eq!(status, 200);
    let outside: Vec<_> = files_below(&parent)
        .into_iter()
        .filter(|f| !f.starts_with("data/"))
        .collect();
    assert!(outside.is_empty(), "files outside the root: {outside:?}");
    assert!(peer.root().join("inside/terraform.tfstate").is_file());
}

#[test]
fn local_key_clashing_with_a_directory_is_a_conflict_not_an_error() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    assert_eq!(
        http("POST", &server.state_url("a/b"), &state_doc("x", 1, "x")).0,
        200
    );
    let (status, reason) = http("POST", &server.state_url("a"), &state_doc("y", 1, "y"));
    assert_eq!(status, 409, "{}", text(&reason));
    let (status, reason) = http("POST", &server.state_url("a/b/c"), &state_doc("z", 1, "z"));
    assert_eq!(status, 409, "{}", text(&reason));
}

#[test]
fn sqlite_file_is_shared_by_two_processes() {
    let peer = SqlitePeer::new();
    let a = Server::start(&peer);
    let b = Server::start(&peer);
    let body = state_doc("shared", 1, "from a");
    assert_eq!(http("POST", &a.state_url("shared"), &body).0, 200);
    assert_eq!(http("GET", &b.state_url("shared"), b""), (200, body));
    assert_eq!(
        http("LOCK", &b.state_url("shared"), &lock_info("b", "b@host")).0,
        200
    );
    assert_eq!(
        http("LOCK", &a.state_url("shared"), &lock_info("a", "a@host")),
        (423, lock_info("b", "b@host"))
    );
}
