//! Clients that stop reading an answer: the connection is cut once the
//! client takes no byte for `idle_timeout` (or less than `body_min_rate`),
//! so a handful of them cannot lock everyone else out, and a store that
//! reads from the network (S3, OSS) does not hold the state in memory for
//! as long as such a client waits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::stores::LocalPeer;
use crate::support::*;

const MIB: usize = 1024 * 1024;

/// Sends a GET of `path` and reads nothing of the answer.
fn stalled_get(url: &str, path: &str) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// A counter's value in `/metrics`.
fn metric(url: &str, name: &str) -> f64 {
    let (_, body) = http("GET", &format!("{url}/metrics"), b"");
    text(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn downloads_a_client_stops_taking_are_cut_off() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--idle-timeout", "2s", "--max-connections", "3"]);
    let body = sized_state("a4000000-0000-4000-8000-000000000001", 1, 48 * MIB);
    assert_eq!(http("POST", &server.state_url("big/app"), &body).0, 200);

    // The POST's connection must be gone before the slots are counted.
    std::thread::sleep(Duration::from_secs(1));
    // As many clients as the server takes connections, none reading.
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| stalled_get(&server.url, "/states/big/app"))
        .collect();
    let answered = || {
        server
            .log()
            .matches("method=GET path=/states/big/app")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered() < 3 {
        assert!(
            Instant::now() < deadline,
            "the stalled GETs were not answered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // They hold every connection: anyone else is turned away for now.
    assert_eq!(http("GET", &server.state_url("big/app"), b"").0, 503);
    // Everyone else gets in again once they are cut off: a GET of the whole
    // state succeeds within a bounded wait, not 503 for as long as the
    // stalled clients stay.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, got) = http("GET", &server.state_url("big/app"), b"");
        if status == 200 {
            assert_eq!(got.len(), body.len());
            break;
        }
        assert_eq!(status, 503, "{}", text(&got));
        assert!(
            Instant::now() < deadline,
            "clients that read nothing kept every connection"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The first one cut off lets that GET in; the others follow within a
    // tick or two of the watchdog.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cut = metric(&server.url, "stategate_downloads_cut_total");
        if cut >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{cut} cut off\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.logs("answer cut off"));
    // Each stalled client finds its connection closed before the whole
    // answer: reading ends (EOF or reset) short of the body.
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        assert!(
            got.len() < body.len(),
            "a cut-off client got the whole state"
        );
    }
}

#[test]
fn downloads_a_trickle_below_body_min_rate_is_cut_off() {
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &["--idle-timeout", "60s", "--body-min-rate", "4194304"],
    );
    let body = sized_state("a4000000-0000-4000-8000-000000000002", 1, 64 * MIB);
    assert_eq!(http("POST", &server.state_url("slow/app"), &body).0, 200);
    let mut stream = stalled_get(&server.url, "/states/slow/app");
    // A kilobyte every 100 ms: never idle for idle_timeout, far below the
    // minimum rate. (What the kernel buffered before the cut still reads
    // after it, so the server's word says when it cut.)
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while !server.log().contains("slower than body_min_rate") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a client far below body_min_rate was served for 60 s"
        );
        if matches!(stream.read(&mut buf), Ok(0) | Err(_)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.logs("slower than body_min_rate"), "{}", server.log());
    assert!(metric(&server.url, "stategate_downloads_cut_total") >= 1.0);
}

#[cfg(all(feature = "s3", feature = "oss"))]
#[test]
fn downloads_from_s3_and_oss_do_not_hold_the_state_in_memory() {
    use crate::oss::OssPeer;
    use crate::s3::{Moto, S3Peer};
    let peers: Vec<Box<dyn Peer>> = vec![
        Box::new(S3Peer::on(Moto::shared())),
        Box::new(OssPeer::new()),
    ];
    for peer in peers {
        let spool = tempfile::TempDir::new().unwrap();
        let server = Server::try_start(
            peer.as_ref(),
            &["--idle-timeout", "120s"],
            &[("TMPDIR", spool.path().to_str().unwrap())],
        )
        .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"));
        let size = 48 * MIB;
        let body = sized_state("a4000000-0000-4000-8000-000000000003", 1, size);
        let (status, answer) = http("POST", &server.state_url("mem/app"), &body);
        assert_eq!(status, 200, "{}", text(&answer));
        std::thread::sleep(Duration::from_millis(500));
        let before = proc_status_kib(server.pid(), "VmRSS");
        let stalled: Vec<TcpStream> = (0..4)
            .map(|_| stalled_get(&server.url, "/states/mem/app"))
            .collect();
        // Time for the store to be read for all four.
        std::thread::sleep(Duration::from_secs(5));
        let during = proc_status_kib(server.pid(), "VmRSS");
        let grown_mib = during.saturating_sub(before) / 1024;
        assert!(
            grown_mib < (size / MIB) as u64,
            "{}: four clients that read nothing of a {} MiB state took {grown_mib} MiB",
            peer.storage_type(),
            size / MIB
        );
        // The answers are whole for a client that reads.
        let (status, got) = http("GET", &server.state_url("mem/app"), b"");
        assert_eq!(status, 200);
        assert_eq!(got, body, "{}", peer.storage_type());
        drop(stalled);
    }
}

#[cfg(feature = "s3")]
#[test]
fn downloads_head_on_s3_reads_no_body() {
    use crate::s3::{Moto, S3Peer};
    let moto: &'static Moto = Box::leak(Box::new(Moto::start(false)));
    let peer = S3Peer::on(moto);
    let server = Server::start(&peer);
    let body = sized_state("a4000000-0000-4000-8000-000000000004", 1, 3 * MIB);
    assert_eq!(http("POST", &server.state_url("head/app"), &body).0, 200);
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let before = moto.object_gets("/head/app");
    let (status, head_headers, head_body) =
        http_full("HEAD", &server.state_url("head/app"), &[], b"");
    assert_eq!(status, 200);
    assert!(head_body.is_empty());
    assert_eq!(
        moto.object_gets("/head/app"),
        before,
        "HEAD downloaded the state"
    );
    let (status, get_headers, got) = http_full("GET", &server.state_url("head/app"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(got, body);
    assert_eq!(header(&head_headers, "etag"), header(&get_headers, "etag"));
    assert_eq!(
        header(&head_headers, "content-length"),
        Some(body.len().to_string())
    );
    assert_eq!(http("HEAD", &server.state_url("head/missing"), b"").0, 404);
}

#[test]
fn downloads_the_too_many_connections_answer_carries_a_request_id() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--max-connections", "1"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    // One connection holds the only slot.
    let _held = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, head, _) = raw_exchange(
        &server.url,
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 503, "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no X-Request-Id: {head}"));
    assert_eq!(id.len(), 16, "{head}");
}
