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
//! `cargo run --release --no-default-features --example bench [-- ROUNDS]`

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};
use stategate::config::Limits;
use stategate::protocol::{App, Surface};
use stategate::state::{Policy, States};
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

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::TempDir::new().unwrap();
    let baseline_dir = dir.path().join("baseline");
    std::fs::create_dir_all(&baseline_dir).unwrap();
    let store = LocalStore::open_dir(&dir.path().join("data")).unwrap();
    let policy = Policy {
        workspace_key_prefix: "workspaces".into(),
        history_keep: 100,
        protect_lineage: true,
    };
    let limits = Limits {
        max_body_bytes: 1 << 30,
        ..Limits::default()
    };
    let app = Arc::new(App::new(
        States::new(Arc::new(store), policy),
        limits,
        "local",
    ));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(stategate::server::run(
        listener,
        app,
        Surface::All,
        None,
        std::future::pending(),
    ));
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
}
