//! `storageType: db` on a private PostgreSQL and a private MariaDB. The
//! conformance suite on both engines, then what only a shared database
//! server shows, each behaviour written once and run on both engines
//! (`on_both_engines!`): replicas racing for one lock, the database going
//! away and coming back, a replica killed under load, SIGKILL crash rounds,
//! the schema guard, large states under MariaDB's default packet limit and
//! under a 4 MiB one, users without the rights stategate needs, and
//! a password full of URL-special characters that never reaches a log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::support::db::{DbPeer, DbServer, Engine, PASSWORD, PREFIX};
use crate::support::*;

conformance_suite!(db_postgres, Box::new(DbPeer::new(Engine::Postgres)));
conformance_suite!(db_mariadb, Box::new(DbPeer::new(Engine::Mariadb)));

/// Instantiates a behaviour for both engines: `name => function` becomes
/// the tests `name::postgres` and `name::mariadb`, each calling
/// `function(engine)`, so the two engines are held to the same assertions.
macro_rules! on_both_engines {
    ($($name:ident => $behaviour:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::support::db::Engine;

                #[test]
                fn postgres() {
                    super::$behaviour(Engine::Postgres);
                }

                #[test]
                fn mariadb() {
                    super::$behaviour(Engine::Mariadb);
                }
            }
        )*
    };
}

on_both_engines! {
    db_replicas_one_lock_winner => one_winner_per_round,
    db_outage_503_then_recovers => outage,
    db_replica_killed_under_load => replica_killed_under_load,
    db_killed_under_load_leaves_no_state_without_its_record => killed_under_load,
    db_survives_sigkill_during_writes => survives_sigkill_during_writes,
    db_password_with_url_characters => password_handling,
    db_newer_schema_is_refused => newer_schema_refused,
    db_tls_required_but_not_offered => tls_required_but_not_offered,
    db_missing_rights_name_the_setting => missing_rights,
    db_lock_holders_killed_under_load_leave_no_state_without_its_record => holders_killed_under_load,
}

/// A `dbURL` whose server does not answer is blamed on the URL's host and
/// port, not on `dbHost` and `dbPort`, which were not given.
#[test]
fn db_url_without_a_server_names_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://stategate@127.0.0.1:{port}/states");
        let out = std::process::Command::new(bin())
            .args(["check", "--storage-type", "db"])
            .args(["-C", &format!("dbURL={url}"), "-C", "dbConnectTimeout=1s"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run stategate check");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{scheme}: check passed");
        assert!(
            stderr.contains("setting `dbURL`") && stderr.contains("the host and port in dbURL"),
            "{scheme}: {stderr}"
        );
        assert!(!stderr.contains("dbHost"), "{scheme}: {stderr}");
    }
}

fn replicas(peer: &dyn Peer, n: usize) -> Vec<Server> {
    (0..n).map(|_| Server::start(peer)).collect()
}

/// Three replicas on one database; each round 30 LOCKs with different IDs
/// arrive at once, spread over the replicas: exactly one wins.
fn one_winner_per_round(engine: Engine) {
    let peer = DbPeer::new(engine);
    let servers = replicas(&peer, 3);
    let key = "race/terraform.tfstate";
    const ROUNDS: usize = 20;
    const CONTENDERS: usize = 30;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(CONTENDERS));
        let threads: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let url = servers[i % servers.len()].state_url(key);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let id = format!("r{round}-c{i}");
                    barrier.wait();
                    let (status, _) = http("LOCK", &url, &lock_info(&id, "racer@host"));
                    (id, url, status)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, _, s)| *s == 200).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} winners: {:?}",
            winners.len(),
            results.iter().map(|r| r.2).collect::<Vec<_>>()
        );
        for (_, _, status) in &results {
            assert!(
                matches!(status, 200 | 409 | 423),
                "round {round}: a loser got {status}"
            );
        }
        let (id, url, _) = winners[0];
        assert_eq!(http("UNLOCK", url, &lock_info(id, "racer@host")).0, 200);
    }
    eprintln!(
        "{engine:?}: {ROUNDS} rounds of {CONTENDERS} LOCKs over 3 replicas, one winner each, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn serial_of(body: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .unwrap_or_else(|e| panic!("torn state ({} bytes): {e}", body.len()))["serial"]
        .as_u64()
        .unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The database server stops in the middle of writes: requests get 503
/// with `Retry-After` and a reason, `/readyz` says not ready, nothing is
/// half-written, and everything works again once the server is back,
/// without restarting stategate.
fn outage(engine: Engine) {
    let server_db = Arc::new(DbServer::start(engine));
    let peer = DbPeer::on(Arc::clone(&server_db));
    let server = Server::start_with(&peer, &["-C", "dbConnectTimeout=2s", "-C", "timeout=5s"]);
    let url = server.state_url("outage/terraform.tfstate");
    const SIZE: usize = 8 * 1024 * 1024;
    assert_eq!(http("POST", &url, &sized_state("db", 1, SIZE)).0, 200);

    // A writer keeps writing bigger serials while the server goes away.
    let accepted = Arc::new(Mutex::new(vec![1u64]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, accepted, stop) = (url.clone(), Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut serial = 2;
            let mut refused = 0;
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = http("POST", &url, &sized_state("db", serial, SIZE));
                if status == 200 {
                    accepted.lock().unwrap().push(serial);
                } else {
                    assert_eq!(status, 503, "a write during the outage");
                    refused += 1;
                }
                serial += 1;
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    server_db.stop();
    let down_at = Instant::now();

    let (status, headers, body) = http_full("GET", &url, &[], b"");
    assert_eq!(
        status,
        503,
        "GET while the database is down: {}",
        text(&body)
    );
    assert!(
        header(&headers, "Retry-After").is_some(),
        "503 carries Retry-After"
    );
    assert!(
        text(&body).contains("database"),
        "the reason names the database: {}",
        text(&body)
    );
    let answered_in = down_at.elapsed();
    assert_eq!(
        http("LOCK", &url, &lock_info("outage", "o@o")).0,
        503,
        "LOCK while the database is down"
    );
    let (status, _) = http("GET", &format!("{}/readyz", server.url), b"");
    assert_eq!(status, 503, "/readyz follows the database");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let refused = writer.join().unwrap();

    server_db.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let back_at = Instant::now();
    while http("GET", &format!("{}/readyz", server.url), b"").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "stategate did not recover:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered_in = back_at.elapsed();
    let (status, stored) = http("GET", &url, b"");
    assert_eq!(status, 200);
    let serial = serial_of(&stored);
    assert!(
        stored == sized_state("db", serial, SIZE),
        "the stored state is whole (serial {serial})"
    );
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.contains(&serial) || accepted.last() < Some(&serial),
        "serial {serial} was stored; accepted {accepted:?}"
    );
    assert!(
        serial >= *accepted.last().unwrap(),
        "an accepted write was lost: stored {serial}, accepted {accepted:?}"
    );
    assert_eq!(http("LOCK", &url, &lock_info("after", "a@a")).0, 200);
    // A write cut by the outage could not release its write lease; the
    // state's next write waits for it to expire (twice `timeout` plus 10 s),
    // answering 503 until then.
    let lease_wait = Instant::now();
    loop {
        let (status, body) = http(
            "POST",
            &format!("{url}?ID=after"),
            &sized_state("db", serial + 100, SIZE),
        );
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{}", text(&body));
        assert!(
            lease_wait.elapsed() < Duration::from_secs(60),
            "writes did not resume"
        );
    }
    let lease_wait = lease_wait.elapsed();
    assert_eq!(http("UNLOCK", &url, &lock_info("after", "a@a")).0, 200);
    assert!(
        !server.log().contains(PASSWORD),
        "the password appeared in the log"
    );
    eprintln!(
        "{engine:?} outage: 503 in {:.1} s, {refused} writes refused, {} accepted, ready again {:.1} s after restart, writes again after {:.1} s",
        answered_in.as_secs_f64(),
        accepted.len(),
        recovered_in.as_secs_f64(),
        lease_wait.as_secs_f64()
    );
}

/// Lock, write, unlock as Terraform would, moving to the next replica when
/// one stops answering; a lock whose answer was lost is taken again with
/// the same ID (which succeeds). Returns how many cycles completed.
fn load_worker(
    urls: Arc<Vec<String>>,
    worker: usize,
    holders: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (usize, Duration) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut replica = worker;
    let mut done = 0;
    // The status, and whether the request was sent again to another
    // replica after one failed (which may have done it before dying).
    let mut send = |method: &str, suffix: &str, body: &[u8]| -> (u16, bool) {
        for attempt in 0..20 {
            let url = format!("{}{suffix}", urls[replica % urls.len()]);
            match agent.request(method, &url).send_bytes(body) {
                Ok(r) => return (r.status(), attempt > 0),
                Err(ureq::Error::Status(s, _)) if s != 502 && s != 503 => return (s, attempt > 0),
                Err(_) => {
                    replica += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!("worker {worker}: no replica answered {method}");
    };
    let mut cycle = 0;
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        cycle += 1;
        let began = Instant::now();
        let id = format!("w{worker}-{cycle}");
        let info = lock_info(&id, "load@host");
        match send("LOCK", "", &info).0 {
            200 => {}
            409 | 423 => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            other => panic!("LOCK answered {other}"),
        }
        let inside = holders.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(inside, 1, "two workers held the lock at once");
        let serial = (worker as u64) * 1_000_000 + cycle;
        let (status, _) = send(
            "POST",
            &format!("?ID={id}"),
            &state_doc("load", serial, &id),
        );
        // A replica may die after the write landed: the retry of the same
        // bytes on another replica is accepted or refused as stale.
        assert!(
            matches!(status, 200 | 409),
            "write under lock answered {status}"
        );
        holders.fetch_sub(1, Ordering::SeqCst);
        // A replica that released the lock and died before answering: the
        // UNLOCK sent again finds the lock gone, or taken by another worker.
        match send("UNLOCK", "", &info) {
            (200, _) | (409 | 423, true) => {}
            (status, retried) => panic!("UNLOCK of {id} answered {status} (sent again: {retried})"),
        }
        done += 1;
        slowest = slowest.max(began.elapsed());
    }
    (done, slowest)
}

/// One of three replicas is killed during a load run: the others keep
/// serving, no lock is held twice, none is left behind.
fn replica_killed_under_load(engine: Engine) {
    let peer = DbPeer::new(engine);
    // A replica killed mid-write leaves its write lease behind until it
    // expires (twice `timeout` plus 10 s): a short timeout keeps that wait short.
    let mut servers: Vec<Server> = (0..3)
        .map(|_| Server::start_with(&peer, &["-C", "timeout=5s"]))
        .collect();
    let key = "load/terraform.tfstate";
    let urls = Arc::new(servers.iter().map(|s| s.state_url(key)).collect::<Vec<_>>());
    let holders = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (urls, holders, stop) =
                (Arc::clone(&urls), Arc::clone(&holders), Arc::clone(&stop));
            std::thread::spawn(move || load_worker(urls, w, holders, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    servers.remove(0).kill();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<(usize, Duration)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let cycles: usize = results.iter().map(|r| r.0).sum();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    assert!(cycles > 20, "only {cycles} lock cycles completed");
    let survivor = &servers[0];
    let (status, body) = http("GET", &format!("{}/locks/{key}", survivor.url), b"");
    assert_eq!(status, 404, "a lock was left behind: {}", text(&body));
    assert_eq!(
        http("LOCK", &survivor.state_url(key), &lock_info("end", "e@e")).0,
        200
    );
    eprintln!(
        "{engine:?}: {cycles} lock/write/unlock cycles over 3 replicas, one killed midway; slowest cycle {:.1} s",
        slowest.as_secs_f64()
    );
}

/// SIGKILL at random moments during writes, as every store survives it.
fn survives_sigkill_during_writes(engine: Engine) {
    crate::crash::crash_rounds(&DbPeer::new(engine));
}

/// A state and its history record are one transaction: a server killed
/// while clients create states leaves none without its record.
fn killed_under_load(engine: Engine) {
    crate::crash::killed_under_load_rounds(&DbPeer::new(engine), 4);
}

/// A lock holder's write (`POST ?ID=`, made without the write lease) and
/// its history record are one transaction too: three rounds of 8 clients
/// each holding its state's lock and writing it again and again, the
/// server killed 300 to 600 ms in; after a restart every state's newest
/// version in history is the state, written under its lock. (Written
/// apart, a state committed just before the kill was recorded later as
/// `found`, without its writer.)
fn holders_killed_under_load(engine: Engine) {
    let peer = DbPeer::new(engine);
    let mut rng = Rng::new("lock holders killed under load");
    for round in 0..3 {
        let server = Server::start(&peer);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let (url, stop) = (
                    server.state_url(&format!("held/r{round}-c{i}")),
                    Arc::clone(&stop),
                );
                std::thread::spawn(move || {
                    let id = format!("holder-{round}-{i}");
                    assert_eq!(http("LOCK", &url, &lock_info(&id, "h@host")).0, 200);
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    let mut acked = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let body = state_doc("held", acked + 1, &id);
                        match agent.post(&format!("{url}?ID={id}")).send_bytes(&body) {
                            Ok(_) => acked += 1,
                            Err(_) => break,
                        }
                    }
                    (url, id, acked)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + rng.below(300)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let written: Vec<(String, String, u64)> =
            clients.into_iter().map(|c| c.join().unwrap()).collect();
        let server = Server::start(&peer);
        for (url, id, acked) in &written {
            assert!(*acked >= 2, "round {round}: {id} wrote {acked} times");
            let url = url.replace(&url[..url.find("/states/").unwrap()], &server.url);
            let (status, body) = http("GET", &url, b"");
            assert_eq!(status, 200, "round {round}: {id}");
            let serial = serial_of(&body);
            assert!(
                serial >= *acked,
                "round {round}: {id}: serial {serial} of {acked} acknowledged"
            );
            let (_, history) = http("GET", &format!("{url}?history"), b"");
            let doc: serde_json::Value = serde_json::from_slice(&history).unwrap();
            let newest = doc["versions"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(
                (
                    newest["serial"].as_u64(),
                    newest["operation"].as_str(),
                    newest["lock_id"].as_str()
                ),
                (Some(serial), Some("write"), Some(id.as_str())),
                "round {round}: the state is serial {serial}, the newest version in history is {newest}"
            );
        }
        server.kill();
    }
}

/// MariaDB keeps its default 16 MiB packet limit; a 40 MiB state still
/// round-trips, stored in chunk rows of at most 4 MiB.
#[test]
fn db_mariadb_default_packet_limit_and_40_mib_state() {
    let peer = DbPeer::new(Engine::Mariadb);
    let packet = peer.sql("SELECT @@max_allowed_packet").unwrap();
    assert_eq!(
        packet.trim(),
        "16777216",
        "the test server must keep the default"
    );
    let server = Server::start(&peer);
    let url = server.state_url("big/terraform.tfstate");
    let body = sized_state("db", 7, 40 * 1024 * 1024);
    assert_eq!(http("POST", &url, &body).0, 200);
    let (status, got) = http("GET", &url, b"");
    assert_eq!(status, 200);
    assert!(got == body, "40 MiB state came back different");
    let largest = peer
        .sql(&format!(
            "SELECT MAX(LENGTH(data)), COUNT(*) FROM {PREFIX}chunks"
        ))
        .unwrap();
    let mut parts = largest.split_whitespace();
    let max: usize = parts.next().unwrap().parse().unwrap();
    assert!(max <= 4 * 1024 * 1024, "a chunk of {max} bytes");
}

/// MySQL 5.7's default `max_allowed_packet` of 4 MiB: a chunk of 4 MiB
/// and its statement exceeded it, and every state over 4 MiB failed as if
/// the database could not be reached.
#[test]
fn db_mariadb_small_packet_limit_takes_large_states() {
    let server_db = Arc::new(DbServer::start_with(
        Engine::Mariadb,
        &["--max-allowed-packet=4194304".into()],
    ));
    let peer = DbPeer::on(Arc::clone(&server_db));
    let packet = peer.sql("SELECT @@max_allowed_packet").unwrap();
    assert_eq!(packet.trim(), "4194304");
    let server = Server::start(&peer);
    let url = server.state_url("big/terraform.tfstate");
    let body = sized_state("db", 7, 10 * 1024 * 1024);
    let (status, answer) = http("POST", &url, &body);
    assert_eq!(status, 200, "{}", text(&answer));
    let (status, got) = http("GET", &url, b"");
    assert_eq!(status, 200);
    assert!(got == body, "10 MiB state came back different");
    let largest = peer
        .sql(&format!("SELECT MAX(LENGTH(data)) FROM {PREFIX}chunks"))
        .unwrap();
    let max: usize = largest.trim().parse().unwrap();
    assert!(max <= 2 * 1024 * 1024, "a chunk of {max} bytes");
}

/// The password (full of URL-special characters) works through `-C` and
/// through a percent-encoded `dbURL`, and never appears in the log, even
/// when a login fails.
fn password_handling(engine: Engine) {
    let peer = DbPeer::new(engine);
    let mut args: Vec<String> = Vec::new();
    args.extend(["-C".into(), format!("dbPassword={PASSWORD}")]);
    let server = Server::try_start_cmd(&peer, &[], &[], |cmd| {
        cmd.env_remove("STATEGATE_DB_PASSWORD").args(&args);
    })
    .unwrap_or_else(|log| panic!("password through -C:\n{log}"));
    let url = server.state_url("pw/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("pw", 1, "x")).0, 200);
    assert!(!server.log().contains(PASSWORD));
    drop(server);

    let url = match engine {
        Engine::Postgres => db_url(&peer, engine, "?sslmode=disable"),
        Engine::Mariadb => db_url(&peer, engine, "?ssl-mode=disabled"),
    };
    let out = stategate(
        &UrlPeer(&url),
        &["state", "get", "pw/terraform.tfstate"],
        &[],
    );
    assert!(out.status.success(), "dbURL: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"lineage\": \"pw\"") || text(&out.stdout).contains("\"pw\"")
    );
    assert!(!text(&out.stderr).contains(PASSWORD));

    // A wrong password stops start-up naming the setting, not the secret.
    let wrong = format!("{PASSWORD}x");
    start_refused(&peer, &["-C", &format!("dbPassword={wrong}")], "dbPassword");
}

/// A user who may not create stategate's tables, or reach the database,
/// stops start-up naming `dbUser` or `dbName` (every such refusal named
/// `dbHost`), and `stategate check` fails the same way (it said "ok").
fn missing_rights(engine: Engine) {
    let peer = DbPeer::new(engine);
    let user = format!("{}_reader", peer.database);
    let created = match engine {
        Engine::Postgres => peer.server.sql(
            None,
            &format!("CREATE ROLE {user} LOGIN PASSWORD 'reader-pw'"),
        ),
        Engine::Mariadb => peer.server.sql(
            None,
            &format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY 'reader-pw'; \
                 GRANT SELECT ON {}.* TO '{user}'@'%'",
                peer.database
            ),
        ),
    };
    created.unwrap();
    if engine == Engine::Postgres {
        peer.sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            .unwrap();
    }
    let as_reader = [
        "-C",
        &format!("dbUser={user}"),
        "-C",
        "dbPassword=reader-pw",
    ];
    start_refused(&peer, &as_reader, "dbUser");
    // `check` on the database without tables says the same, and, for a
    // user with the right, that `serve` will create them, creating none.
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["check", "--storage-type", peer.storage_type()])
            .args(settings_args(&peer))
            .args(extra)
            .envs(peer.env())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run stategate check");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (passed, _, stderr) = check(&as_reader);
    assert!(
        !passed,
        "check passed for a user who may not create the tables"
    );
    assert!(
        stderr.contains("setting `dbUser`"),
        "names dbUser:\n{stderr}"
    );
    let (passed, stdout, stderr) = check(&[]);
    assert!(passed, "check refused the owner:\n{stderr}");
    assert!(stdout.contains("not created yet"), "{stdout}");
    // This database's alone: MariaDB lists every database's tables.
    let schema = match engine {
        Engine::Postgres => "current_schema()",
        Engine::Mariadb => "DATABASE()",
    };
    let tables = peer
        .sql(&format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = {schema} AND table_name LIKE '{PREFIX}%'"
        ))
        .unwrap();
    assert_eq!(tables.trim(), "0", "check created tables");
    if engine == Engine::Mariadb {
        let elsewhere = [&as_reader[..], &["-C", "dbName=sg_not_granted"]].concat();
        start_refused(&peer, &elsewhere, "dbName");
    }
}

/// The URL of `peer`'s database, with the password percent-encoded and
/// `query` after it.
fn db_url(peer: &DbPeer, engine: Engine, query: &str) -> String {
    let scheme = match engine {
        Engine::Postgres => "postgres",
        Engine::Mariadb => "mariadb",
    };
    format!(
        "{scheme}://stategate:{}@127.0.0.1:{}/{}{query}",
        percent_encode(PASSWORD),
        peer.server.port,
        peer.database
    )
}

/// Starting on `peer` with `args` must stop, naming `setting` and never
/// the password.
fn start_refused(peer: &dyn Peer, args: &[&str], setting: &str) {
    let log = Server::try_start(peer, args, &[])
        .err()
        .unwrap_or_else(|| panic!("{args:?} must stop start-up"));
    assert!(
        log.contains(&format!("setting `{setting}`")),
        "names {setting}:\n{log}"
    );
    assert!(!log.contains(PASSWORD), "the password appeared:\n{log}");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The store reached through one `dbURL`.
struct UrlPeer<'a>(&'a str);

impl Peer for UrlPeer<'_> {
    fn storage_type(&self) -> &str {
        "db"
    }
    fn settings(&self) -> Vec<(String, String)> {
        vec![("dbURL".into(), self.0.into())]
    }
    fn object_keys(&self) -> Vec<String> {
        unreachable!()
    }
    fn put_object(&self, _: &str, _: &[u8]) {
        unreachable!()
    }
    fn object_bytes(&self, _: &str) -> Vec<u8> {
        unreachable!()
    }
}

/// A schema newer than the binary stops start-up, naming both versions.
fn newer_schema_refused(engine: Engine) {
    let peer = DbPeer::new(engine);
    drop(Server::start(&peer));
    peer.sql(&format!("UPDATE {PREFIX}schema_version SET version = 99"))
        .unwrap();
    let log = Server::try_start(&peer, &[], &[])
        .err()
        .expect("a newer schema must stop start-up");
    assert!(
        log.contains("version 99") && log.contains("version 1 "),
        "names both versions:\n{log}"
    );
}

const PG_BACKEND_HCL: &str = r#"
terraform {
  backend "pg" {}
}

variable "greeting" {
  type = string
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
"#;

/// States written by real `terraform` with `backend "pg"` (two
/// workspaces) are copied into stategate, found there by the http backend
/// with no changes to plan, skipped on a rerun, left alone while Terraform
/// holds a workspace's lock, and never overwritten when stategate has a
/// newer serial.
#[test]
fn db_migrate_from_terraform_pg() {
    let source = DbPeer::new(Engine::Postgres);
    let conn_str = format!(
        "postgres://stategate:{}@127.0.0.1:{}/{}?sslmode=disable",
        percent_encode(PASSWORD),
        source.server.port,
        source.database
    );
    let native = Terraform::new(PG_BACKEND_HCL);
    native.ok(&[
        "init",
        "-no-color",
        &format!("-backend-config=conn_str={conn_str}"),
    ]);
    native.apply(&["greeting=from default"]);
    native.ok(&["workspace", "new", "-no-color", "dev"]);
    native.apply(&["greeting=from dev"]);
    native.apply(&["greeting=from dev, again"]);

    // Into the other engine: nothing here depends on the target's kind.
    let target = DbPeer::new(Engine::Mariadb);
    let key = "app/terraform.tfstate";
    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "migrate-from-terraform-pg",
            "--conn-str",
            &conn_str,
            "--key",
            key,
        ];
        args.extend_from_slice(extra);
        let out = stategate(&target, &args, &[]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(PASSWORD), "the password was printed:\n{all}");
        (out.status.success(), all)
    };
    let (ok, out) = migrate(&[]);
    assert!(ok, "first migration:\n{out}");
    assert!(out.contains("2 workspaces: 2 copied, 0 skipped"), "{out}");

    let server = Server::start(&target);
    let http_tf = Terraform::new(&PG_BACKEND_HCL.replace("\"pg\"", "\"http\""));
    for (workspace, greeting) in [(None, "from default"), (Some("dev"), "from dev, again")] {
        let address = match workspace {
            None => server.state_url(key),
            Some(w) => format!("{}?workspace={w}", server.state_url(key)),
        };
        http_tf.ok(&[
            "init",
            "-reconfigure",
            "-no-color",
            &format!("-backend-config=address={address}"),
            &format!("-backend-config=lock_address={address}"),
            &format!("-backend-config=unlock_address={address}"),
        ]);
        let plan = http_tf.run(&[
            "plan",
            "-detailed-exitcode",
            "-no-color",
            "-var",
            &format!("greeting={greeting}"),
        ]);
        assert_eq!(
            plan.status.code(),
            Some(0),
            "{workspace:?}: the migrated state plans no changes:\n{}{}",
            text(&plan.stdout),
            text(&plan.stderr)
        );
    }
    let history = http(
        "GET",
        &format!("{}?workspace=dev&history", server.state_url(key)),
        b"",
    );
    assert_eq!(history.0, 200);
    assert!(
        text(&history.1).contains("migrate"),
        "history records the migration"
    );

    let (ok, out) = migrate(&[]);
    assert!(ok, "rerun:\n{out}");
    assert!(out.contains("2 workspaces: 0 copied, 2 skipped"), "{out}");

    // While Terraform holds dev's lock, dev is not copied.
    let dev_id = source
        .sql("SELECT id FROM terraform_remote_state.states WHERE name = 'dev'")
        .unwrap()
        .trim()
        .to_string();
    let holder = {
        let server = Arc::clone(&source.server);
        let db = source.database.clone();
        std::thread::spawn(move || {
            server
                .sql(
                    Some(&db),
                    &format!("SELECT pg_advisory_lock({dev_id}); SELECT pg_sleep(4);"),
                )
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = migrate(&["--lock-timeout", "1"]);
    assert!(!ok, "a locked workspace makes the run fail:\n{out}");
    assert!(out.contains("locked by a running terraform"), "{out}");
    holder.join().unwrap();

    // stategate moves ahead; the older pg state must not replace it.
    http_tf.apply(&["greeting=changed in stategate"]);
    let (_, before) = http(
        "GET",
        &format!("{}?workspace=dev", server.state_url(key)),
        b"",
    );
    let (ok, out) = migrate(&[]);
    assert!(!ok, "a newer serial in stategate is refused:\n{out}");
    assert!(out.contains("REFUSED"), "{out}");
    let (_, after) = http(
        "GET",
        &format!("{}?workspace=dev", server.state_url(key)),
        b"",
    );
    assert!(
        before == after,
        "the newer state in stategate was overwritten"
    );
}

/// `terraform-examples/db`: its stategate.yaml starts stategate on the
/// database (with the test server's address and database put in place)
/// and its main.tf applies through it.
#[test]
fn db_example_configuration_works() {
    let peer = DbPeer::new(Engine::Mariadb);
    let config = repo().join("terraform-examples/db/stategate.yaml");
    let config = config.display().to_string();
    let port = peer.server.port.to_string();
    let overrides = [
        ("dbPort", port.as_str()),
        ("dbName", peer.database.as_str()),
        ("dbSSLMode", "disable"),
    ];
    let mut args = vec!["--config".to_string(), config];
    for (k, v) in overrides {
        args.extend(["-C".to_string(), format!("{k}={v}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::try_start_cmd(&ExamplePeer, &args, &[], |cmd| {
        cmd.env("STATEGATE_DB_PASSWORD", PASSWORD);
    })
    .unwrap_or_else(|log| panic!("the example configuration did not start:\n{log}"));
    let tf = Terraform::example("db", &server.url);
    tf.init_apply(&[]);
    assert_eq!(
        tf.ok(&["output", "-raw", "greeting"]),
        "hello from a database"
    );
    assert!(
        peer.object_keys()
            .contains(&"db-example/terraform.tfstate".to_string()),
        "{:?}",
        peer.object_keys()
    );
}

/// Everything comes from the example's file; only the storage type is
/// named on the command line.
struct ExamplePeer;

impl Peer for ExamplePeer {
    fn storage_type(&self) -> &str {
        "db"
    }
    fn settings(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn object_keys(&self) -> Vec<String> {
        unreachable!()
    }
    fn put_object(&self, _: &str, _: &[u8]) {
        unreachable!()
    }
    fn object_bytes(&self, _: &str) -> Vec<u8> {
        unreachable!()
    }
}

/// `dbSSLMode=require` against a server that offers no TLS (the test
/// servers have none) stops start-up naming `dbSSLMode`, never falling back
/// to plain text.
fn tls_required_but_not_offered(engine: Engine) {
    let peer = DbPeer::new(engine);
    start_refused(&peer, &["-C", "dbSSLMode=require"], "dbSSLMode");
    // The same through a dbURL that names no sslmode of its own: the
    // setting holds for it too, never the driver's `prefer`.
    let url = db_url(&peer, engine, "");
    start_refused(&UrlPeer(&url), &["-C", "dbSSLMode=require"], "dbSSLMode");
}

/// `dbSSLMode=verify-full` with `dbSSLRootCert` against a PostgreSQL that
/// serves TLS: the connection is encrypted (the server says so), and a
/// root certificate that did not sign the server's stops start-up naming
/// `dbSSLRootCert`.
#[test]
fn db_tls_verify_full_postgres() {
    use crate::support::db::{is_root, postgres_ids};
    let pki = crate::tls::Pki::new();
    // The server reads its key as the postgres user, which wants it private.
    let files = tempfile::TempDir::new().unwrap();
    for name in ["server.pem", "server.key"] {
        std::fs::copy(pki.path(name), files.path().join(name)).unwrap();
    }
    let key = files.path().join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if is_root() {
        let (uid, gid) = postgres_ids();
        for p in [
            files.path().to_path_buf(),
            files.path().join("server.pem"),
            key.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
    let server_db = Arc::new(DbServer::start_with(
        Engine::Postgres,
        &[
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!(
                "ssl_cert_file={}",
                files.path().join("server.pem").display()
            ),
            "-c".into(),
            format!("ssl_key_file={}", key.display()),
        ],
    ));
    let peer = DbPeer::on(Arc::clone(&server_db));
    let verify = [
        "-C".to_string(),
        "dbSSLMode=verify-full".to_string(),
        "-C".to_string(),
        format!("dbSSLRootCert={}", pki.path("ca.pem")),
    ];
    let verify: Vec<&str> = verify.iter().map(String::as_str).collect();
    let server = Server::start_with(&peer, &verify);
    let url = server.state_url("tls/terraform.tfstate");
    assert_eq!(http("POST", &url, &state_doc("tls", 1, "x")).0, 200);
    let encrypted = server_db
        .sql(
            None,
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'stategate'",
        )
        .unwrap();
    assert_eq!(encrypted.trim(), "t", "every stategate connection uses TLS");
    drop(server);

    let other = crate::tls::Pki::new();
    let wrong = format!("dbSSLRootCert={}", other.path("ca.pem"));
    let log = Server::try_start(&peer, &["-C", "dbSSLMode=verify-full", "-C", &wrong], &[])
        .err()
        .expect("a server certificate from another CA must stop start-up");
    assert!(
        log.contains("setting `dbSSLRootCert`") && log.contains("certificate"),
        "names dbSSLRootCert and the certificate:\n{log}"
    );
    eprintln!("{}", log.lines().last().unwrap_or_default());
}
