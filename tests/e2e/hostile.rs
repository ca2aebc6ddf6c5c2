//! What a hostile or careless client, or an unlucky operator, does to the
//! server: idle and slow sockets, lengths declared but never sent, huge
//! heads, a database file removed under the server, symbolic links in the
//! data directory, writes killed half-way, large writes all at once, a
//! lineage of a MiB quoted in refusals.
//! Probes that concern every store (keys, bodies, LockInfo sizes, HEAD,
//! purge) are in the conformance suite.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::support::stores::{LocalPeer, SqlitePeer, files_below};
use crate::support::*;

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.url.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection or `within` passes;
/// returns what arrived and whether it was closed.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, false);
            }
            // A reset is a close too.
            Err(_) => return (got, true),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line = String::from_utf8_lossy(response);
    line.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

/// One request on its own connection, with a deadline for the answer.
fn quick_get(server: &Server, path: &str, within: Duration) -> Option<(u16, String)> {
    let mut s = connect(server);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let (got, _) = read_until_closed(&mut s, within);
    status_of(&got).map(|st| (st, String::from_utf8_lossy(&got).into_owned()))
}

#[test]
fn hostile_idle_sockets_cannot_starve_the_server() {
    // 1,100 bare connections made /healthz time out.
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &["--header-timeout", "1s", "--max-connections", "10"],
    );
    let mut bare: Vec<TcpStream> = (0..30).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, response) = quick_get(&server, "/healthz", Duration::from_secs(3))
        .expect("a connection beyond max_connections still gets an answer");
    assert_eq!(status, 503, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    // The server closes connections that never send a request head.
    for (i, s) in bare.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(5));
        assert!(
            closed,
            "bare connection {i} was not closed after header_timeout"
        );
    }
    let (status, _) = quick_get(&server, "/healthz", Duration::from_secs(3)).expect("answer");
    assert_eq!(status, 200);
}

#[test]
fn hostile_running_out_of_file_descriptors_recovers() {
    // With the descriptor limit reached the accept loop spun on
    // EMFILE and no request was served again while the sockets stayed.
    let peer = LocalPeer::new();
    let server = Server::try_start_cmd(&peer, &["--header-timeout", "1s"], &[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(64),
                    maximum: Some(64),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
    })
    .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"));
    let _bare: Vec<TcpStream> = (0..120).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let answered = quick_get(&server, "/healthz", Duration::from_secs(20));
    assert_eq!(
        answered.map(|a| a.0),
        Some(200),
        "the server did not recover from running out of descriptors:\n{}",
        server.log()
    );
    assert!(server.logs("accept failed"), "{}", server.log());
}

#[test]
fn hostile_slow_heads_idle_keepalives_and_huge_heads_are_cut_off() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--header-timeout", "1s", "--idle-timeout", "3s"]);
    // A head that never completes is closed after header_timeout.
    let mut partial = connect(&server);
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut partial, Duration::from_secs(5));
    assert!(closed, "a stalled request head was not cut off");

    // A kept-alive connection outlives header_timeout, then idle_timeout closes it.
    let mut keep = connect(&server);
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    keep.write_all(get).unwrap();
    let mut buf = [0u8; 1024];
    let n = keep.read(&mut buf).unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    std::thread::sleep(Duration::from_millis(1800));
    keep.write_all(get).unwrap();
    let n = keep.read(&mut buf).unwrap();
    assert_eq!(
        status_of(&buf[..n]),
        Some(200),
        "an idle kept-alive connection is not held to header_timeout"
    );
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut keep, Duration::from_secs(8));
    assert!(closed, "an idle kept-alive connection was never closed");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before idle_timeout"
    );

    // A head over max_header_bytes gets 431, with a request id like every
    // other answer.
    let mut big = connect(&server);
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(70 * 1024)
    );
    let _ = big.write_all(head.as_bytes());
    let (got, _) = read_until_closed(&mut big, Duration::from_secs(5));
    assert_eq!(
        status_of(&got),
        Some(431),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let answer = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("431 without X-Request-Id: {answer}"));
    assert!(
        server.logs(id.trim()),
        "the 431's id is logged: {}",
        server.log()
    );
}

#[test]
fn hostile_bodies_that_begin_a_piece_with_a_refused_head_go_out_as_they_are() {
    // hyper's own 431 is given a request id on its way out. A state sent
    // in pieces, each beginning with that status line, must reach the
    // reader byte for byte, and the next answer on the connection must
    // begin where the body ends.
    const PIECE: usize = 256 * 1024;
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let mut doc = String::from(
        r#"{"version":4,"serial":1,"lineage":"c0000000-0000-4000-8000-0000000000bb","outputs":{},"resources":[]"#,
    );
    let mut i = 0;
    while doc.len() < 20 << 20 {
        i += 1;
        doc.push_str(&format!(",\"m{i:04}\":\""));
        doc.push_str(&"x".repeat((i * PIECE).saturating_sub(doc.len())));
        doc.push_str("HTTP/1.1 431 x\"\r\n");
    }
    doc.push_str("}\n");
    let (status, said) = http(
        "POST",
        &format!("{}/states/evil", server.url),
        doc.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&said));

    let mut s = connect(&server);
    s.write_all(
        b"GET /states/evil HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(30));
    assert!(closed, "the second answer never ended");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert_eq!(status_of(&got), Some(200), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no length: {head}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(length, doc.len());
    let body = &got[head_end..(head_end + length).min(got.len())];
    let changed = body.iter().zip(doc.as_bytes()).position(|(a, b)| a != b);
    assert!(
        changed.is_none() && body.len() == doc.len(),
        "the body changed on its way out at byte {changed:?}: {:?}",
        changed
            .map(|at| String::from_utf8_lossy(&body[at..(at + 60).min(body.len())]).into_owned())
    );
    let next = &got[head_end + length..];
    assert_eq!(
        status_of(next),
        Some(200),
        "the next answer: {:?}",
        String::from_utf8_lossy(&next[..next.len().min(200)])
    );
    assert!(
        !server.logs("request head over max_header_bytes refused"),
        "a 431 was logged though none was sent: {}",
        server.log()
    );
}

#[test]
fn hostile_slow_uploads_are_cut_off() {
    // Body_min_rate, averaged over 10 s.
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--body-min-rate", "2048"]);
    let mut s = connect(&server);
    s.write_all(
        b"POST /states/slow HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    )
    .unwrap();
    s.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        // 500 bytes a second: a quarter of the rate.
        if s.write_all(&[b' '; 50]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if status_of(&got).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        http("GET", &server.state_url("slow"), b"").0,
        404,
        "nothing was stored"
    );
}

#[test]
fn hostile_shutdown_does_not_wait_for_stalled_clients() {
    // Three connections holding partial heads delayed shutdown by 60 s.
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let mut stalled: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    for s in &mut stalled {
        s.write_all(b"POST /states/x HTTP/1.1\r\nHost: localhost\r\n")
            .unwrap();
    }
    let mut keep = connect(&server);
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(keep.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert!(server.terminate(), "stategate did not exit 0 after SIGTERM");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

/// Virtual memory of a process, in bytes.
fn vm_size(pid: u32) -> u64 {
    proc_status_kib(pid, "VmSize") * 1024
}

#[test]
fn hostile_declared_lengths_reserve_no_memory() {
    // 40 connections declaring 512 MiB and sending 1 byte pushed
    // virtual memory to 21.7 GB.
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let before = vm_size(server.pid());
    let held: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut s = connect(&server);
            let head = format!(
                "POST /states/mem{i} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 536870912\r\n\r\n{{"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let during = vm_size(server.pid());
    let grown = during.saturating_sub(before);
    assert!(
        grown < 1 << 30,
        "virtual memory grew by {} MiB for 40 bodies of 1 byte",
        grown >> 20
    );
    drop(held);
    assert_eq!(http("GET", &format!("{}/healthz", server.url), b"").0, 200);
}

#[test]
fn hostile_sqlite_file_removed_under_the_server() {
    // Writes kept answering 200 into a deleted file, and a second
    // server on the path granted a lock the first still held.
    let peer = SqlitePeer::new();
    let first = Server::start(&peer);
    let url = first.state_url("gone/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("gone", 1, "x")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("A", "a")).0, 200);
    let db = peer.db();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let dir = db.parent().unwrap().display().to_string();
    for (method, body) in [
        ("POST", state_doc("gone", 2, "y")),
        ("GET", Vec::new()),
        ("LOCK", lock_info("B", "b")),
        ("UNLOCK", lock_info("A", "a")),
    ] {
        let (status, reason) = http(method, &url, &body);
        assert_eq!(status, 503, "{method}: {}", text(&reason));
        assert!(
            text(&reason).contains("removed or replaced"),
            "{}",
            text(&reason)
        );
        assert!(
            !text(&reason).contains(&dir),
            "a 503 names a server path: {}",
            text(&reason)
        );
    }
    assert!(
        first.logs("removed or replaced"),
        "the reason of a 503 is logged:\n{}",
        first.log()
    );
    let second = Server::start(&peer);
    assert_eq!(
        http(
            "LOCK",
            &second.state_url("gone/terraform.tfstate"),
            &lock_info("C", "c")
        )
        .0,
        200
    );
    assert_eq!(http("LOCK", &url, &lock_info("D", "d")).0, 503);
}

#[test]
fn hostile_symlinks_in_the_data_directory_are_never_followed() {
    // A link inside the root let requests read and write outside it.
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let outside = tempfile::TempDir::new().unwrap();
    let secret = state_doc("outside", 1, "TOP-SECRET");
    std::fs::write(outside.path().join("secret.json"), &secret).unwrap();
    std::fs::write(
        outside.path().join("passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
    )
    .unwrap();
    let root = peer.root();
    std::os::unix::fs::symlink(outside.path(), root.join("evil")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.json"),
        root.join("link.tfstate+"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join(".stategate/history")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join(".stategate/history/hist")).unwrap();
    let before = files_below(outside.path());

    for key in ["evil/secret.json", "evil/passwd", "link.tfstate"] {
        let (status, body) = http("GET", &server.state_url(key), b"");
        assert_eq!(status, 409, "GET {key}: {}", text(&body));
        assert!(!text(&body).contains("TOP-SECRET") && !text(&body).contains("root:x"));
    }
    let (status, _) = http(
        "POST",
        &server.state_url("evil/new"),
        &state_doc("n", 1, "n"),
    );
    assert_eq!(status, 409);
    let (status, _) = http(
        "POST",
        &server.state_url("link.tfstate"),
        &state_doc("n", 2, "n"),
    );
    assert_eq!(status, 409);
    assert_eq!(
        http("LOCK", &server.state_url("evil/x"), &lock_info("L", "l")).0,
        409
    );
    assert_eq!(
        http("DELETE", &server.state_url("evil/secret.json"), b"").0,
        409
    );
    // A history directory that is a link: the write lands, its history does not go outside.
    assert_eq!(
        http("POST", &server.state_url("hist"), &state_doc("h", 1, "h")).0,
        200
    );
    let (status, _) = http(
        "GET",
        &format!("{}?version=1", server.state_url("hist")),
        b"",
    );
    assert!(
        status == 404 || status == 409,
        "history behind a link was read: {status}"
    );

    assert_eq!(
        files_below(outside.path()),
        before,
        "something was written outside the root"
    );
    assert_eq!(
        std::fs::read(outside.path().join("secret.json")).unwrap(),
        secret
    );
    let listed = stategate_ok(&peer, &["state", "list"]);
    assert!(
        !listed.contains("secret.json") && !listed.contains("link.tfstate"),
        "{listed}"
    );
    assert!(listed.contains("hist"), "{listed}");
}

/// One request with `body` on its own connection; its status, or `None`
/// when no answer came `within`.
fn answer_within(
    server: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    within: Duration,
) -> Option<u16> {
    let mut s = connect(server);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    status_of(&read_until_closed(&mut s, within).0)
}

#[test]
fn hostile_pipes_in_the_data_directory_hold_no_thread() {
    // A named pipe where a state or a lock goes: opening it waited for a
    // writer, so each request on it held a thread for good, and the server
    // stopped answering anything, /healthz included, once they were all held.
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let pipe = |key: &str| {
        let path = peer.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid, NUL-terminated path.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
            0,
            "mkfifo {key}"
        );
    };
    for key in ["app/a", "app/b", "app/c", "app/d"] {
        let url = server.state_url(key);
        assert_eq!(http("POST", &url, &state_doc(key, 1, "x")).0, 200);
        pipe(&format!("{key}.tflock"));
    }
    pipe("app/fifo");
    let within = Duration::from_secs(10);
    let lock = lock_info("L", "l");
    for round in 0..8 {
        for key in ["app/a", "app/b", "app/c", "app/d"] {
            let path = format!("/states/{key}");
            let next = state_doc(key, 2, "y");
            for (method, body) in [
                ("POST", next.as_slice()),
                ("LOCK", lock.as_slice()),
                ("GET", b""),
            ] {
                let status = answer_within(&server, method, &path, body, within);
                assert!(
                    matches!(status, Some(200 | 409)),
                    "round {round}: {method} {key} beside a pipe for its lock: {status:?}"
                );
            }
        }
        assert_eq!(
            answer_within(&server, "GET", "/states/app/fifo", b"", within),
            Some(409),
            "round {round}: a pipe where a state goes"
        );
    }
    assert_eq!(
        answer_within(&server, "GET", "/healthz", b"", within),
        Some(200)
    );
    let (status, reason) = http("GET", &server.state_url("app/fifo"), b"");
    assert_eq!(status, 409);
    assert!(
        text(&reason).contains("is a pipe, socket or device"),
        "{}",
        text(&reason)
    );
}

#[test]
fn hostile_clients_that_leave_mid_change_leave_no_unrecorded_change() {
    // A LOCK or a write waiting on the store when its client gave up was
    // still made, but its audit line (and notification) never was: a lock
    // nobody knew they held, a write missing from the audit trail.
    let peer = SqlitePeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let audit = dir.path().join("audit.log");
    let server = Server::start_with(&peer, &["--audit-log", audit.to_str().unwrap()]);
    assert_eq!(
        http(
            "POST",
            &server.state_url("team/db"),
            &state_doc("d", 1, "x")
        )
        .0,
        200
    );
    // Another process holds SQLite's write lock: changes wait for it.
    let holder = rusqlite::Connection::open(peer.db()).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let send = |method: &str, path: &str, body: &[u8]| {
        let mut s = connect(&server);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s
    };
    let lock = send(
        "LOCK",
        "/states/team/net",
        &lock_info("ORPHAN-LOCK", "gone@host"),
    );
    let write = send("POST", "/states/team/db", &state_doc("d", 2, "y"));
    std::thread::sleep(Duration::from_millis(1500));
    // Both clients give up while the store waits.
    for s in [lock, write] {
        s.shutdown(std::net::Shutdown::Both).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = |what: &str| {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(what))
    };
    while !(recorded("ORPHAN-LOCK") && recorded("\"serial\":2")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    // The changes ran to their end, and are recorded.
    let (status, holder) = http("GET", &format!("{}/locks/team/net", server.url), b"");
    assert_eq!(status, 200, "the LOCK was not made");
    assert!(text(&holder).contains("ORPHAN-LOCK"), "{}", text(&holder));
    assert!(
        recorded("ORPHAN-LOCK"),
        "the lock is held but was never audited:\n{log}"
    );
    let current: serde_json::Value =
        serde_json::from_slice(&http("GET", &server.state_url("team/db"), b"").1).unwrap();
    assert_eq!(current["serial"], 2, "the write was not made");
    assert!(
        recorded("\"serial\":2"),
        "the write is stored but was never audited:\n{log}"
    );
}

#[test]
fn hostile_killed_writes_leave_no_temporaries() {
    // Temporary files of killed writes survived restarts.
    let peer = LocalPeer::new();
    drop(Server::start(&peer));
    let tmp = peer.root().join(".stategate/local/tmp");
    // pid_max is at most 4194304, so no process has this pid.
    let dead = tmp.join("999999999-0-0");
    let live = tmp.join(format!("{}-0-0", std::process::id()));
    std::fs::write(&dead, b"half a state").unwrap();
    std::fs::write(&live, b"a write in progress").unwrap();
    let _server = Server::start(&peer);
    assert!(
        !dead.exists(),
        "a dead writer's temporary file survived the restart"
    );
    assert!(live.exists(), "a live writer's temporary file was removed");
}

#[test]
fn hostile_concurrent_large_writes_queue_on_sqlite() {
    // Concurrent large writes ran out SQLite's busy timeout.
    let peer = SqlitePeer::new();
    let server = Server::start(&peer);
    let big = |i: usize| state_doc(&format!("big{i}"), 1, &"v".repeat(24 << 20));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = server.state_url(&format!("big/{i}"));
            let body = big(i);
            std::thread::spawn(move || http("POST", &url, &body).0)
        })
        .collect();
    let lock_url = server.state_url("small/while-writing");
    assert_eq!(http("LOCK", &lock_url, &lock_info("S", "s")).0, 200);
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        server.log()
    );
    for i in 0..8 {
        let (status, body) = http("GET", &server.state_url(&format!("big/{i}")), b"");
        assert_eq!(status, 200);
        assert!(body == big(i), "state {i} differs");
    }
}

#[test]
fn hostile_long_lineages_are_not_quoted_whole() {
    // A state stored with a lineage of a MiB made every cheap refused
    // write answer, log and notify that MiB.
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("long/lineage");
    let long = "L".repeat(1 << 20);
    let stored = format!(
        r#"{{"version":4,"serial":5,"lineage":"{long}","resources":[{{"mode":"managed","type":"t","name":"a","instances":[]}}]}}"#
    );
    assert_eq!(http("POST", &url, stored.as_bytes()).0, 200);
    let older = stored.replace(r#""serial":5"#, r#""serial":4"#);
    for (refused, what) in [
        (state_doc("another", 9, "x"), "another lineage"),
        (older.into_bytes(), "an older serial"),
    ] {
        let (status, body) = http("POST", &url, &refused);
        assert_eq!(status, 409, "{what}: {}", text(&body));
        assert!(
            body.len() < 1024 && text(&body).contains("(1048576 bytes)"),
            "{what}: a {} byte answer: {}",
            body.len(),
            text(&body[..body.len().min(300)])
        );
    }
    assert!(
        server.log().len() < 64 * 1024,
        "the log holds {} bytes",
        server.log().len()
    );
}
