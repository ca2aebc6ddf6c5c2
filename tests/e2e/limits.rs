//! Limits that keep stategate inside what its peers can hold: state keys
//! bounded so every object derived from them fits the store's names, table
//! prefixes the database cannot fold together, a full database named as
//! such, and `stategate loadtest` reading bounded bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::support::stores::LocalPeer;
use crate::support::*;

/// A valid state key of `len` bytes, in segments of at most 100.
fn key_of(len: usize) -> String {
    (0..len)
        .map(|i| {
            if i % 100 == 50 && i + 1 < len {
                '/'
            } else {
                'k'
            }
        })
        .collect()
}

/// `url` in `workspace`, with `more` query parameters.
fn in_workspace(url: &str, workspace: Option<&str>, more: &str) -> String {
    let mut query: Vec<String> = workspace
        .map(|ws| format!("workspace={ws}"))
        .into_iter()
        .collect();
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
    assert_eq!(
        status,
        200,
        "LOCK of a {}-byte key: {}",
        key.len(),
        text(&body)
    );
    let (status, body) = http("POST", &at("ID=limits-lock-1"), &doc);
    assert_eq!(
        status,
        200,
        "POST of a {}-byte key: {}",
        key.len(),
        text(&body)
    );
    let (status, body) = http("GET", &at(""), b"");
    assert_eq!(
        (status, body),
        (200, doc),
        "GET of a {}-byte key",
        key.len()
    );
    let (status, body) = http("GET", &at("history"), b"");
    assert_eq!(
        status,
        200,
        "history of a {}-byte key: {}",
        key.len(),
        text(&body)
    );
    let history: serde_json::Value = serde_json::from_slice(&body).expect("history is JSON");
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(1));
    let (status, body) = http("UNLOCK", &at(""), &info);
    assert_eq!(
        status,
        200,
        "UNLOCK of a {}-byte key: {}",
        key.len(),
        text(&body)
    );
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
        assert_eq!(
            status,
            400,
            "{method} of a {}-byte key: {answer}",
            key.len()
        );
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

#[cfg(feature = "db")]
mod db {
    use std::process::{Child, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::support::db::{DbPeer, DbServer, Engine, PASSWORD, USER};

    /// PostgreSQL folds unquoted table names to lower case, so `Team_`
    /// would share the tables of `team_` under another schema lock: upper
    /// case stops start-up, naming the setting, though the database is up.
    #[test]
    fn db_table_prefix_with_upper_case_stops_start_up() {
        let peer = DbPeer::new(Engine::Postgres);
        let log = Server::try_start(&peer, &["-C", "dbTablePrefix=Team_"], &[])
            .err()
            .expect("start-up refused");
        assert!(log.contains("setting `dbTablePrefix`"), "{log}");
        assert!(log.contains("use `team_`"), "{log}");
    }

    /// A `psql` of the stategate login holding its connection, idle, until
    /// its input closes; `Err` with its message when the server refused
    /// it. It prints `1` once connected, so no other connection is needed
    /// to see it in.
    fn hold_connection(server: &DbServer, database: &str) -> Result<Child, String> {
        let mut child = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
            ])
            .args(["-U", USER, "-d", database])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let _ = child.stdin.as_mut().unwrap().write_all(b"SELECT 1;\n");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        if first.trim() == "1" {
            return Ok(child);
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        Err(text(&out.stderr))
    }

    /// A PostgreSQL server with no connection left for stategate answers
    /// 503 saying so, not that it is down; and serves again once
    /// connections are free.
    #[test]
    fn db_full_postgres_is_named_in_the_503() {
        // Three connections, none kept for superusers.
        let server = Arc::new(DbServer::start_with(
            Engine::Postgres,
            &[
                "-c".into(),
                "max_connections=3".into(),
                "-c".into(),
                "superuser_reserved_connections=0".into(),
            ],
        ));
        let peer = DbPeer::on(Arc::clone(&server));
        let stategate = Server::start_with(
            &peer,
            &["-C", "dbMaxConnections=1", "-C", "dbConnectTimeout=2s"],
        );
        let url = stategate.state_url("full/app.tfstate");
        let doc = state_doc("full-lineage", 1, "v");
        assert_eq!(http("POST", &url, &doc).0, 200);

        // Its one pooled connection goes, and psql takes every slot.
        server
            .sql(
                None,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{USER}'"
                ),
            )
            .unwrap();
        // A connection on its way out may hold its slot a moment longer.
        let mut holders = Vec::new();
        let mut refused = 0;
        while holders.len() < 3 {
            match hold_connection(&server, &peer.database) {
                Ok(child) => holders.push(child),
                Err(why) => {
                    refused += 1;
                    assert!(refused < 100, "slots stayed taken: {why}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let refusal =
            hold_connection(&server, &peer.database).expect_err("a fourth connection is refused");
        assert!(refusal.contains("too many clients"), "{refusal}");

        let (status, body) = http("GET", &url, b"");
        let body = text(&body);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("too many connections"), "{body}");
        assert!(!body.contains("unreachable"), "{body}");

        // The pool retries a full server until dbConnectTimeout, so the
        // slots these free in the meantime serve the next request.
        for mut holder in holders {
            drop(holder.stdin.take());
            holder.wait().unwrap();
        }
        let (status, body) = http("GET", &url, b"");
        assert_eq!(
            (status, body),
            (200, doc),
            "serves again once slots are free"
        );
    }
}

/// Answers one connection of an HTTP/1.1 client: 200 with no body to
/// every verb but GET, which gets a chunked body that never ends. Counts
/// the body bytes it managed to send.
fn answer_endlessly(stream: TcpStream, sent: &AtomicU64) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !request_line.starts_with("GET ") {
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            if out.write_all(ok).is_err() {
                return;
            }
            continue;
        }
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if out.write_all(head).is_err() {
            return;
        }
        while out.write_all(chunk.as_bytes()).is_ok() {
            sent.fetch_add(0x10000, Ordering::Relaxed);
        }
        return;
    }
}

/// A server that streams a GET body without end: `stategate loadtest`
/// stops reading past the state size plus 1 MiB and fails saying so,
/// instead of reading for as long as the run lasts.
#[test]
fn loadtest_stops_reading_an_endless_get_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || answer_endlessly(stream, &counter));
        }
    });
    let out = Command::new(bin())
        .args(["loadtest", &format!("http://127.0.0.1:{port}/states/lt")])
        .args([
            "--clients",
            "2",
            "--state-bytes",
            "1000",
            "--duration",
            "60s",
        ])
        .env_remove("TF_HTTP_PASSWORD")
        .output()
        .expect("run stategate loadtest");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("GET answered a body of more than 1049576 bytes"),
        "{said}"
    );
    assert!(said.contains("the run stopped"), "{said}");
    // What it read, and what the sockets' buffers held besides.
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 64 * 1024 * 1024, "{sent} bytes were sent to it");
}
