//! How close to the disk a state write and read through stategate come.
//!
//! Runs the real server in-process on the local store in a temporary
//! directory, and times, for several state sizes, a POST (with Terraform's
//! Content-MD5) and a GET over loopback against a baseline measured in the
//! same run on the same disk: writing the same bytes the way the local
//! store must at the least (temporary file, fsync, rename, directory fsync)
//! and reading them back. Prints medians and their ratio; the machine is
//! shared and noisy, so only ratios from one run mean anything.
//!
//! Then times Terraform's lock cycle (LOCK, GET, POST with `?ID=`, UNLOCK
//! on a small state) against a server with an `auth` section and Basic
//! credentials, and against one without, in the same run: what
//! authentication costs once a credential's verification is cached.
//!
//! `cargo run --release --no-default-features --example bench [-- ROUNDS]`

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};
use stategate::app::{self, Application};
use stategate::state::States;
use stategate::stores::local::LocalStore;

fn state(serial: u64, size: usize) -> Vec<u8> {
    let mut body = format!(
        "{{\"version\":4,\"serial\":{serial},\"lineage\":\"bench\",\"resources\":[],\"outputs\":{{\"blob\":{{\"type\":\"string\",\"value\":\""
    )
    .into_bytes();
    let tail = b"\"}}}\n";
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while body.len() < size - tail.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push(b'a' + (x % 26) as u8);
    }
    body.extend_from_slice(tail);
    body
}

fn baseline_write(dir: &Path, body: &[u8]) {
    let tmp = dir.join("baseline.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(body).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, dir.join("baseline")).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Starts stategate in-process on a fresh local store, built as `serve`
/// builds it; returns its address.
fn start(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    auth: Option<stategate::config::FileAuth>,
) -> std::net::SocketAddr {
    let mut settings = stategate::config::resolve(
        &stategate::config::FileConfig::default(),
        &|_| None,
        &stategate::config::CommandLine::default(),
    )
    .unwrap();
    settings.limits.max_body_bytes = 1 << 30;
    // Audit events go to a file beside the store, not into the table.
    settings.audit_log = Some(root.with_extension("audit"));
    if let Some(section) = auth {
        settings.auth = stategate::config::AuthSetting::Enabled(section);
    }
    let store = LocalStore::open_dir(root).unwrap();
    let capabilities = runtime
        .block_on(stategate::stores::probe(&store, "bench"))
        .unwrap()
        .capabilities;
    let states = States::new(Arc::new(store), capabilities, app::policy(&settings));
    let application = Application::assemble(&settings, states).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        application
            .serve(listener, None, std::future::pending())
            .await
    });
    addr
}

/// Median time of one lock cycle, `cycles` times on one keep-alive client.
fn lock_cycles(
    addr: std::net::SocketAddr,
    authorization: Option<&str>,
    serials: std::ops::Range<u64>,
) -> Duration {
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("http://{addr}/states/bench/lock-cycle");
    let with_auth = |r: ureq::Request| match authorization {
        Some(a) => r.set("Authorization", a),
        None => r,
    };
    let mut times = Vec::new();
    for serial in serials {
        let id = format!("cycle-{serial}");
        let info = format!(r#"{{"ID":"{id}","Operation":"OperationTypeApply","Who":"bench"}}"#);
        let body = state(serial, 4096);
        let t = Instant::now();
        assert_eq!(
            with_auth(agent.request("LOCK", &url))
                .send_string(&info)
                .unwrap()
                .status(),
            200
        );
        let _ = with_auth(agent.get(&url)).call();
        let posted = with_auth(agent.post(&format!("{url}?ID={id}"))).send_bytes(&body);
        assert_eq!(posted.unwrap().status(), 200);
        assert_eq!(
            with_auth(agent.request("UNLOCK", &url))
                .send_string(&info)
                .unwrap()
                .status(),
            200
        );
        times.push(t.elapsed());
    }
    median(times)
}

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::TempDir::new().unwrap();
    let baseline_dir = dir.path().join("baseline");
    std::fs::create_dir_all(&baseline_dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = start(&runtime, &dir.path().join("data"), None);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();

    println!(
        "{:>9}  {:>12} {:>12} {:>6}   {:>12} {:>12} {:>6}",
        "size", "write", "disk", "ratio", "read", "disk", "ratio"
    );
    for size in [64 * 1024, 1 << 20, 16 << 20, 64 << 20] {
        let url = format!("http://{addr}/states/bench/{size}");
        let (mut w, mut wb, mut r, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for serial in 1..=rounds {
            let body = state(serial, size);
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));

            let t = Instant::now();
            baseline_write(&baseline_dir, &body);
            wb.push(t.elapsed());

            let t = Instant::now();
            let resp = agent
                .post(&url)
                .set("Content-MD5", &md5)
                .send_bytes(&body)
                .expect("write");
            assert_eq!(resp.status(), 200);
            w.push(t.elapsed());

            let t = Instant::now();
            let read_back = std::fs::read(baseline_dir.join("baseline")).unwrap();
            rb.push(t.elapsed());
            assert_eq!(read_back.len(), body.len());

            let t = Instant::now();
            let mut got = Vec::with_capacity(size);
            std::io::Read::read_to_end(
                &mut agent.get(&url).call().expect("read").into_reader(),
                &mut got,
            )
            .unwrap();
            r.push(t.elapsed());
            assert!(got == body, "read back what was written");
        }
        let (w, wb, r, rb) = (median(w), median(wb), median(r), median(rb));
        println!(
            "{:>6} KiB  {:>12.2?} {:>12.2?} {:>5.1}x   {:>12.2?} {:>12.2?} {:>5.1}x",
            size / 1024,
            w,
            wb,
            w.as_secs_f64() / wb.as_secs_f64(),
            r,
            rb,
            r.as_secs_f64() / rb.as_secs_f64()
        );
    }

    // The lock cycle with and without authentication.
    let password = "bench-password";
    let section = stategate::config::FileAuth {
        users: vec![stategate::config::FileUser {
            name: "bench".into(),
            password_hash: Some(stategate::auth::hash_secret(password).unwrap()),
            password: None,
            rules: vec![stategate::config::FileRule {
                keys: "**".into(),
                access: "write".into(),
                workspaces: Vec::new(),
            }],
        }],
        ..Default::default()
    };
    let open = start(&runtime, &dir.path().join("open"), None);
    let guarded = start(&runtime, &dir.path().join("guarded"), Some(section));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{password}"))
    );
    let cycles = rounds * 30;
    // Alternate, so drift on a shared machine hits both alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let serials = round * cycles + 1..(round + 1) * cycles + 1;
        without.push(lock_cycles(open, None, serials.clone()));
        with.push(lock_cycles(guarded, Some(&basic), serials));
    }
    let (without, with) = (median(without), median(with));
    println!(
        "\nlock cycle (LOCK, GET, POST, UNLOCK; {cycles} cycles x 3): no auth {without:.2?}, \
         auth {with:.2?}, ratio {:.2}x",
        with.as_secs_f64() / without.as_secs_f64()
    );
}
