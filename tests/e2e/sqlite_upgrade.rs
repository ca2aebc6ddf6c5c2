//! A SQLite file made by the release before bodies were shared, meeting
//! this one: on upgrade day the device may not hold the rebuilt file.

use crate::degraded::{OnDevice, eventually, readyz};
use crate::support::*;

/// Turns the file stategate wrote into the shape the release before left:
/// each object with its body in its own row (a history copy with a copy of
/// its state's bytes), `size` beside it, and the listing index.
fn as_the_release_before(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).expect("open the database");
    conn.execute_batch(
        "CREATE TABLE objects_before (key TEXT PRIMARY KEY NOT NULL,
             generation INTEGER NOT NULL, modified_ns INTEGER NOT NULL,
             size INTEGER NOT NULL, body BLOB NOT NULL);
         INSERT INTO objects_before
             SELECT o.key, o.generation, o.modified_ns, o.size, b.body
             FROM objects o JOIN bodies b ON b.id = o.body_id;
         DROP TABLE objects;
         DROP TABLE bodies;
         ALTER TABLE objects_before RENAME TO objects;
         CREATE INDEX objects_listing ON objects (key, modified_ns, size);
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .expect("rewrite the file in the shape before");
}

/// Whether the file keeps its bodies apart (the shape of this release).
fn shares_bodies(path: &std::path::Path) -> bool {
    let conn = rusqlite::Connection::open(path).expect("open the database");
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'bodies'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .expect("read the schema")
        == 1
}

/// The file of the release before on a device with no room to rebuild it:
/// stategate starts and serves the state, its history and its kept
/// versions from the file as it is, refuses changes, and once room is
/// freed rebuilds it and takes writes, every version still there.
#[test]
fn an_older_file_on_a_full_device_serves_reads_then_upgrades_once_room_is_freed() {
    let peer = OnDevice::new("sqlite", 16, &[("min_free_bytes", "0")]);
    let versions: Vec<Vec<u8>> = (1..=2)
        .map(|serial| sized_state("before", serial, 1024 * 1024))
        .collect();
    let server = Server::start(&peer);
    let url = server.state_url("old/a");
    for body in &versions {
        let (status, answer) = http("POST", &url, body);
        assert_eq!(status, 200, "{}", text(&answer));
    }
    assert!(server.terminate(), "stategate stops on SIGTERM");
    as_the_release_before(&peer.store_path());
    let filler = peer.device.fill();

    let server = Server::start(&peer);
    assert!(
        server.log().contains("serving reads only"),
        "no room to rebuild the file: reads only\n{}",
        server.log()
    );
    let url = server.state_url("old/a");
    let (status, got) = http("GET", &url, b"");
    assert_eq!((status, got == versions[1]), (200, true), "GET the state");
    let (status, history) = http("GET", &format!("{url}?history"), b"");
    assert_eq!(status, 200, "{}", text(&history));
    for (n, body) in versions.iter().enumerate() {
        let (status, got) = http("GET", &format!("{url}?version={}", n + 1), b"");
        assert_eq!((status, &got == body), (200, true), "version {}", n + 1);
    }
    let (status, listed) = http("GET", &format!("{}/api/v1/states", server.url), b"");
    assert_eq!(status, 200, "{}", text(&listed));
    assert!(text(&listed).contains("old/a"), "{}", text(&listed));
    let (status, answer) = http("POST", &url, &sized_state("before", 3, 1024));
    assert_eq!(status, 503, "a write without room: {}", text(&answer));
    assert!(
        !shares_bodies(&peer.store_path()),
        "the file is left as it was"
    );

    std::fs::remove_file(filler).unwrap();
    eventually("writes resuming", || readyz(&server).0 == 200);
    let third = sized_state("before", 3, 1024);
    let (status, answer) = http("POST", &url, &third);
    assert_eq!(status, 200, "a write once room is freed: {}", text(&answer));
    assert!(shares_bodies(&peer.store_path()), "the file is rebuilt");
    for (n, body) in versions.iter().chain([&third]).enumerate() {
        let (status, got) = http("GET", &format!("{url}?version={}", n + 1), b"");
        assert_eq!((status, &got == body), (200, true), "version {}", n + 1);
    }
}
