//! Large states flow between the socket and the store a piece at a time:
//! memory does not grow with their size, a body that fails a check on the
//! way is never visible (not even partly), an upload cut off leaves
//! nothing behind, and a reader gets one whole version while the state is
//! replaced. Run on the local and SQLite stores, which stream both ways,
//! on the db store, and on a sealed store, which seals and opens large
//! bodies a segment at a time; the memory bound on S3 and OSS too, which
//! send an upload from its spool file and spool a download.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use md5::{Digest, Md5};
use tempfile::TempDir;

use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

const MIB: usize = 1024 * 1024;

/// A server whose spooled bodies go to a directory of the test's own.
struct Spooling {
    server: Server,
    spool: TempDir,
}

impl Spooling {
    fn start(peer: &dyn Peer, extra: &[&str]) -> Spooling {
        let spool = TempDir::new().unwrap();
        let tmpdir = spool.path().to_str().unwrap().to_string();
        let server = Server::try_start(peer, extra, &[("TMPDIR", &tmpdir)])
            .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"));
        Spooling { server, spool }
    }

    /// Spool files are unnamed: none is ever seen in the directory.
    fn assert_spool_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.spool.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "files left in the spool directory: {left:?}"
        );
    }
}

/// The peak resident memory of a process, from `/proc`.
fn peak_rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM") / 1024
}

fn stores() -> Vec<Box<dyn Peer>> {
    vec![Box::new(LocalPeer::new()), Box::new(SqlitePeer::new())]
}

/// The stores above, and the db store on the private PostgreSQL and
/// MariaDB, which write and read chunk rows one at a time.
fn stores_and_databases() -> Vec<Box<dyn Peer>> {
    #[allow(unused_mut)]
    let mut all = stores();
    #[cfg(feature = "db")]
    {
        use crate::support::db::{DbPeer, Engine};
        all.push(Box::new(DbPeer::new(Engine::Postgres)));
        all.push(Box::new(DbPeer::new(Engine::Mariadb)));
    }
    all
}

/// Four clients each write and read back a 64 MiB state at once. Held
/// whole, that is at least 256 MiB of bodies in the server; streamed, the
/// server's peak stays a small multiple of its idle size.
#[test]
fn large_states_stream_without_growing_memory() {
    const CLIENTS: usize = 4;
    let sealing = Sealing::new(&["k1"]);
    let sealed = sealing.args();
    let mut runs: Vec<(Box<dyn Peer>, Vec<&str>)> = stores_and_databases()
        .into_iter()
        .map(|peer| (peer, Vec::new()))
        .collect();
    runs.push((
        Box::new(LocalPeer::new()),
        sealed.iter().map(String::as_str).collect(),
    ));
    // S3 and OSS send an upload from its spool file and spool a download.
    #[cfg(feature = "s3")]
    runs.push((
        Box::new(crate::s3::S3Peer::on(crate::s3::Moto::shared())),
        Vec::new(),
    ));
    #[cfg(feature = "oss")]
    runs.push((Box::new(crate::oss::OssPeer::new()), Vec::new()));
    for (peer, args) in runs {
        let store = match args.is_empty() {
            true => peer.storage_type().to_string(),
            false => format!("{} (sealed)", peer.storage_type()),
        };
        let s = Spooling::start(peer.as_ref(), &args);
        let threads: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let url = s.server.state_url(&format!("big/c{i}"));
                std::thread::spawn(move || {
                    let body = sized_state(&format!("L{i}"), 1, 64 * MIB);
                    let (status, reply) = http("POST", &url, &body);
                    assert_eq!(status, 200, "{}", text(&reply));
                    let (status, headers, got) = http_full("GET", &url, &[], &[]);
                    assert_eq!(status, 200);
                    assert!(got == body, "client {i} read back other bytes");
                    let etag = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
                        .map(|(_, v)| v.clone());
                    assert_eq!(etag, Some(format!("\"{}\"", md5_hex(&body))));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let peak = peak_rss_mib(s.server.pid());
        eprintln!("{store}: peak RSS {peak} MiB for {CLIENTS} x 64 MiB");
        // The db store moves 4 MiB chunk rows, each held by the driver and
        // its wire buffer while in flight: more per client than a file
        // piece, but not growing with the body (held whole: over 512 MiB).
        let bound = if peer.storage_type() == "db" { 192 } else { 96 };
        assert!(
            peak < bound,
            "{store}: the server's peak RSS was {peak} MiB for {CLIENTS} x 64 MiB bodies"
        );
        s.assert_spool_empty();
    }
}

/// `terraform_remote_state` fan-out: 500 clients GET one 5 MiB state at
/// once, every request sent before any answer is read. Each gets the whole
/// state with its length and ETag, and the server's peak memory grows by
/// at most 128 MiB: a copy (or a few pieces read ahead) per reader would
/// be hundreds of megabytes.
#[test]
fn many_readers_of_one_state_share_its_memory() {
    const READERS: usize = 500;
    const BOUND_MIB: u64 = 128;
    for peer in stores() {
        let store = peer.storage_type();
        let s = Spooling::start(peer.as_ref(), &["--max-connections", "1024"]);
        let body = std::sync::Arc::new(sized_state("fan-out", 1, 5 * MIB));
        let etag = format!("\"{}\"", md5_hex(&body));
        let (status, reply) = http("POST", &s.server.state_url("shared/app"), &body);
        assert_eq!(status, 200, "{}", text(&reply));
        let before = peak_rss_mib(s.server.pid());

        let addr = s.server.url.trim_start_matches("http://").to_string();
        let sent = std::sync::Arc::new(std::sync::Barrier::new(READERS));
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (addr, body, sent, etag) =
                    (addr.clone(), body.clone(), sent.clone(), etag.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    let mut stream = std::net::TcpStream::connect(&addr);
                    let request = format!(
                        "GET /states/shared/app HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                    );
                    if let Ok(s) = &mut stream {
                        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        s.write_all(request.as_bytes()).unwrap();
                    }
                    // Every thread reaches the barrier, so none is left
                    // waiting for one that failed to connect.
                    sent.wait();
                    let stream = stream.map_err(|e| format!("reader {i}: connect: {e}"))?;
                    read_answer(stream, &body)
                        .map_err(|e| format!("reader {i}: {e}"))
                        .and_then(|got| match got == etag {
                            true => Ok(()),
                            false => Err(format!("reader {i}: ETag {got}, not {etag}")),
                        })
                })
            })
            .collect();
        let failed: Vec<String> = readers
            .into_iter()
            .filter_map(|r| r.join().unwrap().err())
            .collect();
        assert!(
            failed.is_empty(),
            "{store}: {} of {READERS} readers failed, first: {}",
            failed.len(),
            failed[0]
        );
        let after = peak_rss_mib(s.server.pid());
        eprintln!("{store}: peak RSS {before} MiB before, {after} MiB after {READERS} readers");
        assert!(
            after - before <= BOUND_MIB,
            "{store}: the server's peak RSS grew by {} MiB for {READERS} readers of 5 MiB",
            after - before
        );
        s.assert_spool_empty();
    }
}

/// Reads one HTTP answer to the end, checking its status, that its
/// `Content-Length` is that of `expected` and its body is `expected` byte
/// for byte (compared as it arrives, so no reader holds a copy); returns
/// its `ETag`.
fn read_answer(stream: std::net::TcpStream, expected: &[u8]) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = reader
            .read_until(b'\n', &mut head)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed in the answer's head".into());
        }
        if &head[start..] == b"\r\n" {
            break;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("answered {}", head.lines().next().unwrap_or("")));
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length = header("content-length");
    if length != Some(expected.len().to_string()) {
        return Err(format!("Content-Length {length:?}"));
    }
    let mut at = 0;
    let mut buf = vec![0; 64 * 1024];
    while at < expected.len() {
        let want = buf.len().min(expected.len() - at);
        let n = reader
            .read(&mut buf[..want])
            .map_err(|e| format!("after {at} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("the body ended after {at} bytes"));
        }
        if buf[..n] != expected[at..at + n] {
            return Err(format!("other bytes than the state's at {at}"));
        }
        at += n;
    }
    header("etag").ok_or_else(|| "no ETag".to_string())
}

/// Each of these 3 MiB bodies fails a check only after the first
/// megabyte, once it is spooled. Each is refused with a 4xx naming why;
/// the stored state, its history and the spool are as before.
#[test]
fn a_large_body_failing_a_check_is_never_visible() {
    for peer in stores() {
        let s = Spooling::start(peer.as_ref(), &[]);
        let url = s.server.state_url("checked");
        let stored = sized_state("L", 5, 64 * 1024);
        assert_eq!(http("POST", &url, &stored).0, 200);

        let good = sized_state("L", 7, 3 * MIB);
        let mut bad_utf8 = good.clone();
        bad_utf8[2 * MIB] = 0xff;
        let truncated = good[..good.len() - 3].to_vec();
        let mut array = b"[".to_vec();
        array.extend_from_slice(&good);
        array.push(b']');
        let stale = sized_state("L", 4, 3 * MIB);
        let other_lineage = {
            let mut resources = sized_state("L", 6, 64 * 1024);
            // Give the stored state a resource, so another lineage may not replace it.
            resources = String::from_utf8(resources)
                .unwrap()
                .replacen("\"resources\":[]", "\"resources\":[{\"type\":\"x\"}]", 1)
                .into_bytes();
            assert_eq!(http("POST", &url, &resources).0, 200);
            sized_state("M", 99, 3 * MIB)
        };
        let stored = http("GET", &url, &[]).1;
        let versions_before = history_len(&s.server, "checked");

        for (what, body, want) in [
            ("invalid UTF-8", &bad_utf8, 400),
            ("truncated JSON", &truncated, 400),
            ("an array", &array, 400),
            ("an older serial", &stale, 409),
            ("another lineage", &other_lineage, 409),
        ] {
            let (status, reply) = http("POST", &url, body);
            assert_eq!(status, want, "{what}: {}", text(&reply));
            assert!(!text(&reply).trim().is_empty(), "{what}: no reason given");
            assert!(http("GET", &url, &[]).1 == stored, "{what}: state changed");
        }
        // A Content-MD5 that does not match the body.
        let wrong_md5 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"other"))
        };
        let (status, reply) = http_with("POST", &url, &[("Content-MD5", &wrong_md5)], &good);
        assert_eq!(status, 400, "{}", text(&reply));
        assert!(text(&reply).contains("Content-MD5"), "{}", text(&reply));
        assert!(http("GET", &url, &[]).1 == stored, "state changed");

        assert_eq!(history_len(&s.server, "checked"), versions_before);
        s.assert_spool_empty();
        // The good body is still accepted afterwards.
        assert_eq!(http("POST", &url, &good).0, 200);
        assert!(http("GET", &url, &[]).1 == good);
    }
}

fn history_len(server: &Server, key: &str) -> usize {
    let (status, body) = http("GET", &format!("{}?history", server.state_url(key)), &[]);
    assert_eq!(status, 200, "{}", text(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    doc["versions"].as_array().expect("versions").len()
}

/// A client that sends half of an 8 MiB body and hangs up: nothing is
/// written and nothing is left in the spool.
#[test]
fn an_upload_cut_off_midway_leaves_nothing() {
    for peer in stores() {
        let s = Spooling::start(peer.as_ref(), &[]);
        let url = s.server.state_url("cut");
        let stored = sized_state("L", 1, 10_000);
        assert_eq!(http("POST", &url, &stored).0, 200);

        let body = sized_state("L", 2, 8 * MIB);
        let addr = s.server.url.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /states/cut HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..4 * MIB]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(stream);
        std::thread::sleep(Duration::from_millis(300));

        assert!(http("GET", &url, &[]).1 == stored);
        assert_eq!(history_len(&s.server, "cut"), 1);
        s.assert_spool_empty();
    }
}

/// Readers of a 6 MiB state get one whole version, with its own ETag and
/// length, while a writer replaces it again and again; HEAD gives the
/// length and no body.
#[test]
fn readers_get_whole_versions_while_the_state_is_replaced() {
    for peer in stores() {
        let s = Spooling::start(peer.as_ref(), &[]);
        let url = s.server.state_url("busy");
        let versions: Vec<Vec<u8>> = (1..=6).map(|n| sized_state("L", n, 6 * MIB)).collect();
        let known: HashSet<String> = versions.iter().map(|v| md5_hex(v)).collect();
        assert_eq!(http("POST", &url, &versions[0]).0, 200);

        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (url, known) = (url.clone(), known.clone());
                std::thread::spawn(move || {
                    for _ in 0..8 {
                        let (status, headers, body) = http_full("GET", &url, &[], &[]);
                        assert_eq!(status, 200);
                        let md5 = md5_hex(&body);
                        assert!(known.contains(&md5), "a read gave bytes of no version");
                        let header = |name: &str| {
                            headers
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.clone())
                        };
                        assert_eq!(header("etag"), Some(format!("\"{md5}\"")));
                        assert_eq!(header("content-length"), Some(body.len().to_string()));
                    }
                })
            })
            .collect();
        for v in &versions[1..] {
            let (status, reply) = http("POST", &url, v);
            assert_eq!(status, 200, "{}", text(&reply));
        }
        for r in readers {
            r.join().unwrap();
        }
        let (status, headers, body) = http_full("HEAD", &url, &[], &[]);
        assert_eq!(status, 200);
        assert!(body.is_empty());
        assert!(
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-length")
                    && *v == (6 * MIB).to_string()),
            "{headers:?}"
        );
        s.assert_spool_empty();
    }
}

/// When a large body cannot be spooled (the spool directory is gone), the
/// upload is answered 503, which Terraform retries, and small bodies,
/// which stay in memory, still work.
#[test]
fn a_body_that_cannot_be_spooled_is_503() {
    let peer = LocalPeer::new();
    let s = Spooling::start(&peer, &[]);
    let spool = s.spool.path().to_path_buf();
    std::fs::remove_dir(&spool).unwrap();
    let url = s.server.state_url("nospool");
    let (status, reply) = http("POST", &url, &sized_state("L", 1, 2 * MIB));
    assert_eq!(status, 503, "{}", text(&reply));
    assert!(text(&reply).contains("spooling"), "{}", text(&reply));
    assert_eq!(http("GET", &url, &[]).0, 404);
    let small = sized_state("L", 1, 10_000);
    assert_eq!(http("POST", &url, &small).0, 200);
    assert!(http("GET", &url, &[]).1 == small);
}

/// A client sending a body that cannot be spooled a piece at a time is
/// read to its end before the 503: every piece is taken and the answer
/// names the reason, where an answer sent at the failure would leave the
/// client writing into a closed connection (a broken pipe, no reason).
#[test]
fn a_body_that_cannot_be_spooled_is_read_before_the_503() {
    let peer = LocalPeer::new();
    let s = Spooling::start(&peer, &[]);
    std::fs::remove_dir(s.spool.path()).unwrap();
    let body = sized_state("L", 1, 4 * MIB);
    let addr = s.server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /states/nospool HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    for (i, piece) in body.chunks(256 * 1024).enumerate() {
        stream
            .write_all(piece)
            .unwrap_or_else(|e| panic!("piece {i} of 16: {e} (the server stopped reading)"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("spooling"), "{answer}");
    assert_eq!(http("GET", &s.server.state_url("nospool"), &[]).0, 404);
}

/// On a sealed store a large state round-trips, is sealed at rest, and
/// its history keeps it.
#[test]
fn large_states_round_trip_on_a_sealed_store() {
    let peer = LocalPeer::new();
    let sealing = Sealing::new(&["k1"]);
    let args = sealing.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Spooling::start(&peer, &args);
    let url = s.server.state_url("sealed");
    let first = sized_state("L", 1, 5 * MIB);
    let second = sized_state("L", 2, 5 * MIB);
    for body in [&first, &second] {
        let (status, reply) = http("POST", &url, body);
        assert_eq!(status, 200, "{}", text(&reply));
        assert!(http("GET", &url, &[]).1 == *body);
    }
    let at_rest = peer.object_bytes("sealed");
    assert!(
        at_rest.starts_with(b"SGSL\x02"),
        "the state is not sealed at rest, in segments"
    );
    let inside = &second[3 * MIB..3 * MIB + 64];
    assert!(
        !at_rest.windows(inside.len()).any(|w| w == inside),
        "plaintext at rest"
    );
    let (status, v1) = http("GET", &format!("{url}?version=1"), &[]);
    assert_eq!(status, 200);
    assert!(v1 == first, "version 1 is not the first state");
    s.assert_spool_empty();
}
