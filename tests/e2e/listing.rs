//! Listing states: it never reads the history kept for them, and on local
//! disk it holds a few descriptors however many states there are, so a
//! listing neither grows with history nor makes other requests fail.

use std::os::unix::process::CommandExt;

use crate::support::stores::{LocalPeer, SqlitePeer};
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

/// Every way states are listed, each asserted to succeed and to show
/// `states` states: the dashboard's list and locks view, `/metrics`,
/// `stategate state list` and `stategate lock list`.
fn every_listing(server: &Server, peer: &dyn Peer, states: usize) {
    assert_eq!(listed(server), states);
    let (status, body) = http("GET", &format!("{}/api/v1/locks", server.url), b"");
    assert_eq!(status, 200, "locks view: {}", text(&body));
    let (_, metrics) = http("GET", &format!("{}/metrics", server.url), b"");
    assert!(
        text(&metrics).contains(&format!("stategate_states {states}")),
        "{}",
        text(&metrics)
    );
    let out = stategate(peer, &["state", "list"], &[]);
    assert!(out.status.success(), "state list: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).matches("fleet/s").count(),
        states,
        "{}",
        text(&out.stdout)
    );
    let out = stategate(peer, &["lock", "list"], &[]);
    assert!(out.status.success(), "lock list: {}", text(&out.stderr));
}

/// Writes `states` states of a few versions each through `server`.
fn fleet(server: &Server, states: usize, versions: u64) {
    for i in 0..states {
        for serial in 1..=versions {
            let doc = state_doc("a5000000-0000-4000-8000-000000000003", serial, "v");
            let url = server.state_url(&format!("fleet/s{i}"));
            assert_eq!(http("POST", &url, &doc).0, 200, "state {i} serial {serial}");
        }
    }
}

/// A history folder nested deeper than a path may be long (`PATH_MAX`):
/// any listing that walked into `.stategate/history/` would fail on it.
fn history_too_deep_to_walk(root: &std::path::Path) {
    use rustix::fs::{Mode, OFlags};
    let base = root.join(".stategate/history/deep");
    std::fs::create_dir_all(&base).unwrap();
    let mut dir = rustix::fs::open(&base, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
        .expect("open the history folder");
    let name = "d".repeat(250);
    for _ in 0..20 {
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
    }
}

#[test]
fn listing_local_states_never_walks_the_history() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    fleet(&server, 3, 3);
    history_too_deep_to_walk(&peer.root());
    every_listing(&server, &peer, 3);
}

#[test]
fn listing_sqlite_states_never_reads_a_history_row() {
    let peer = SqlitePeer::new();
    let server = Server::start(&peer);
    fleet(&server, 3, 3);
    // A history row no listing can read: its time is not a number.
    let conn = rusqlite::Connection::open(peer.db()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute(
        "INSERT INTO objects (key, generation, modified_ns, size, body_id)
         VALUES ('.stategate/history/poison/0000000001.json', 0, 'never', 2, 0)",
        [],
    )
    .unwrap();
    every_listing(&server, &peer, 3);
}

/// On S3 the LIST requests of a listing of states are the same in number
/// whether the states have one version each or a thousand: history is
/// never asked for.
#[cfg(feature = "s3")]
#[test]
fn listing_s3_states_asks_as_many_listings_whatever_their_history() {
    use crate::s3::{Moto, S3Peer};
    let moto = Moto::shared();
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let states = 3;
    fleet(&server, states, 1);
    let lists = || {
        moto.requests_for(&peer.bucket)
            .iter()
            .filter(|r| r.starts_with("GET  "))
            .count()
    };
    // The dashboard's list alone: the operator commands open the store
    // in processes of their own, whose start-up probe lists as well.
    let counted = |what: &str| {
        let before = lists();
        assert_eq!(listed(&server), states);
        let n = lists() - before;
        eprintln!("{what}: {n} LIST requests");
        n
    };
    let without = counted("one version each");
    // A thousand kept versions' worth of history objects per state: three
    // listing pages' worth in all.
    let prefix = peer.prefix.clone();
    let bodies: String = (0..states)
        .flat_map(|i| {
            let prefix = prefix.clone();
            (0..1000).map(move |n| format!("{prefix}.stategate/history/fleet/s{i}/{n:010}.json\n"))
        })
        .collect();
    moto.inspect(&["put-many", &peer.bucket], bodies.as_bytes());
    let with = counted("a thousand history objects each");
    every_listing(&server, &peer, states);
    assert_eq!(
        with, without,
        "listing {states} states asked for {with} listing pages with history, {without} without"
    );
}

/// On OSS too, as many LIST requests whatever the history kept.
#[cfg(feature = "oss")]
#[test]
fn listing_oss_states_asks_as_many_listings_whatever_their_history() {
    use crate::oss::OssPeer;
    let peer = OssPeer::new();
    let server = Server::start(&peer);
    let states = 3;
    fleet(&server, states, 1);
    // Listings only: a HEAD that finds no object checks the bucket first
    // when it was not seen for a few seconds (GetBucketVersioning, a GET of
    // the bucket too), as it is here after the history objects are put.
    let lists = || -> Vec<String> {
        peer.server
            .requests(&peer.bucket)
            .into_iter()
            .filter(|r| r.starts_with("GET  [") && r.contains("list-type"))
            .collect()
    };
    // The dashboard's list alone: the operator commands open the store
    // in processes of their own, whose start-up probe lists as well.
    let counted = |what: &str| {
        let before = lists().len();
        assert_eq!(listed(&server), states);
        let made = lists()[before..].to_vec();
        eprintln!("{what}: {} LIST requests: {made:#?}", made.len());
        made.len()
    };
    let without = counted("one version each");
    for i in 0..states {
        for n in 0..700 {
            peer.put_object(
                &format!(".stategate/history/fleet/s{i}/{n:010}.json"),
                b"{}",
            );
        }
    }
    let with = counted("seven hundred history objects each");
    every_listing(&server, &peer, states);
    assert_eq!(
        with, without,
        "listing {states} states asked for {with} listing pages with history, {without} without"
    );
}
