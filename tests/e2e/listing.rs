//! Listing states: it never reads the history kept for them, and on local
//! disk it holds a few descriptors however many states there are, so a
//! listing neither grows with history nor makes other requests fail.

use std::os::unix::process::CommandExt;

use crate::support::stores::LocalPeer;
use crate::support::*;

/// The states `/api/v1/states` lists, all pages.
fn listed(server: &Server) -> usize {
    let (status, body) = http("GET", &format!("{}/api/v1/states", server.url), b"");
    assert_eq!(status, 200, "{}", text(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    page["total"].as_u64().expect("total") as usize
}

#[test]
fn listing_local_states_holds_few_descriptors() {
    let peer = LocalPeer::new();
    // Every state has a history directory of its own: more of them than
    // the process may hold descriptors.
    let server = Server::try_start_cmd(&peer, &[], &[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(128),
                    maximum: Some(128),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
    })
    .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"));
    let states = 200;
    for i in 0..states {
        let doc = state_doc("a5000000-0000-4000-8000-000000000001", 1, &format!("v{i}"));
        let (status, body) = http("POST", &server.state_url(&format!("many/s{i}")), &doc);
        assert_eq!(status, 200, "state {i}: {}", text(&body));
    }
    assert_eq!(listed(&server), states);
    let (_, metrics) = http("GET", &format!("{}/metrics", server.url), b"");
    assert!(
        text(&metrics).contains(&format!("stategate_states {states}")),
        "{}",
        text(&metrics)
    );
    // Requests beside a listing still find descriptors.
    let (status, _) = http("GET", &server.state_url("many/s7"), b"");
    assert_eq!(status, 200);
    assert!(
        !server.log().contains("Too many open files"),
        "{}",
        server.log()
    );
}

#[cfg(feature = "s3")]
#[test]
fn listing_s3_states_never_asks_for_the_history() {
    use crate::s3::{Moto, S3Peer};
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    for i in 0..3 {
        let doc = state_doc("a5000000-0000-4000-8000-000000000002", 1, "v");
        assert_eq!(
            http("POST", &server.state_url(&format!("app/s{i}")), &doc).0,
            200
        );
    }
    // Three thousand kept versions' worth of history objects, three
    // listing pages' worth.
    let bodies: String = (0..3000)
        .map(|n| format!("{}.stategate/history/app/s0/{n}.json\n", peer.prefix))
        .collect();
    moto.inspect(&["put-many", &peer.bucket], bodies.as_bytes());
    assert_eq!(listed(&server), 3);
    let before = moto.lists();
    assert_eq!(listed(&server), 3);
    let asked = moto.lists() - before;
    assert!(
        asked <= 2,
        "one listing of 3 states asked for {asked} listing pages: it walked the history"
    );
}
