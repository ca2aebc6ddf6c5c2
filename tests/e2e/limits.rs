//! Limits that keep the server inside what its peers can hold: state keys
//! bounded so every object derived from them fits the store's names.

use crate::support::stores::LocalPeer;
use crate::support::*;

/// A valid state key of `len` bytes, in segments of at most 100.
fn key_of(len: usize) -> String {
    (0..len)
        .map(|i| if i % 100 == 50 && i + 1 < len { '/' } else { 'k' })
        .collect()
}

/// `url` in `workspace`, with `more` query parameters.
fn in_workspace(url: &str, workspace: Option<&str>, more: &str) -> String {
    let mut query: Vec<String> = workspace.map(|ws| format!("workspace={ws}")).into_iter().collect();
    if !more.is_empty() {
        query.push(more.to_string());
    }
    if query.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", query.join("&"))
    }
}

/// LOCK, write, read, read history and UNLOCK `key`, each answered 200.
fn round_trip(server: &Server, key: &str, workspace: Option<&str>) {
    let url = server.state_url(key);
    let at = |more: &str| in_workspace(&url, workspace, more);
    let info = lock_info("limits-lock-1", "limits@test");
    let doc = state_doc("limits-lineage", 1, "v");
    let (status, body) = http("LOCK", &at(""), &info);
    assert_eq!(status, 200, "LOCK of a {}-byte key: {}", key.len(), text(&body));
    let (status, body) = http("POST", &at("ID=limits-lock-1"), &doc);
    assert_eq!(status, 200, "POST of a {}-byte key: {}", key.len(), text(&body));
    let (status, body) = http("GET", &at(""), b"");
    assert_eq!((status, body), (200, doc), "GET of a {}-byte key", key.len());
    let (status, body) = http("GET", &at("history"), b"");
    assert_eq!(status, 200, "history of a {}-byte key: {}", key.len(), text(&body));
    let history: serde_json::Value = serde_json::from_slice(&body).expect("history is JSON");
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(1));
    let (status, body) = http("UNLOCK", &at(""), &info);
    assert_eq!(status, 200, "UNLOCK of a {}-byte key: {}", key.len(), text(&body));
}

/// Every verb on `key` is refused with a 400 whose reason contains `reason`.
fn refused(server: &Server, key: &str, workspace: Option<&str>, reason: &str) {
    let url = in_workspace(&server.state_url(key), workspace, "");
    let info = lock_info("limits-lock-2", "limits@test");
    let doc = state_doc("limits-lineage", 1, "v");
    for (method, body) in [
        ("LOCK", &info[..]),
        ("POST", &doc[..]),
        ("GET", &b""[..]),
        ("UNLOCK", &info[..]),
    ] {
        let (status, answer) = http(method, &url, body);
        let answer = text(&answer);
        assert_eq!(status, 400, "{method} of a {}-byte key: {answer}", key.len());
        assert!(answer.contains(reason), "{method}: {answer}");
    }
}

#[cfg(feature = "s3")]
mod s3 {
    use super::*;
    use crate::s3::{Moto, S3Peer};

    /// S3 object names stop at 1,024 bytes, prefix included (moto does not
    /// enforce it, so the bound is checked here). Under `team/`, a write
    /// lease `.stategate/lease/<object key>/<token>` adds 87 bytes, so the
    /// longest default-workspace key is 1024 - 5 - 87 = 932 bytes, and in
    /// workspace `dev` (`workspaces/dev/`, 15 bytes) 917.
    #[test]
    fn s3_keys_stop_where_derived_names_would_pass_1024_bytes() {
        let peer = S3Peer::on(Moto::shared());
        let server = Server::start(&peer);
        round_trip(&server, &key_of(932), None);
        round_trip(&server, &key_of(917), Some("dev"));
        let stored = peer.moto.all_keys(&peer.bucket);
        // The longest kept: `team/.stategate/history/<932 bytes>/0000000001.tfstate`.
        let longest = stored.iter().map(String::len).max();
        assert_eq!(longest, Some(5 + 19 + 932 + 1 + 18), "{stored:?}");

        refused(
            &server,
            &key_of(933),
            None,
            "the longest key this server accepts is 932 bytes",
        );
        refused(
            &server,
            &key_of(918),
            Some("dev"),
            "the longest key this server accepts in workspace `dev` is 917 bytes",
        );
        assert_eq!(peer.moto.all_keys(&peer.bucket), stored, "nothing stored");
    }

    /// A prefix that would leave the keys too little room stops start-up.
    #[test]
    fn s3_prefix_longer_than_256_bytes_stops_start_up() {
        let mut peer = S3Peer::on(Moto::shared());
        peer.prefix = format!("{}/", "p".repeat(200)) + &"q".repeat(60) + "/";
        let log = Server::try_start(&peer, &[], &[])
            .err()
            .expect("start-up refused");
        assert!(log.contains("setting `prefix`"), "{log}");
        assert!(log.contains("at most 256"), "{log}");
    }
}

/// The local store bounds only segments: keys up to the 1,024 bytes every
/// store takes work in any workspace, and one more byte is refused.
#[test]
fn local_keys_up_to_1024_bytes_round_trip() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    round_trip(&server, &key_of(1024), None);
    round_trip(&server, &key_of(1024), Some("dev"));
    refused(
        &server,
        &key_of(1025),
        None,
        "the state key is longer than 1024 bytes",
    );
}
