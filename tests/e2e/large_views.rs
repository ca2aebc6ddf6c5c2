//! What stategate shows of a large state's contents it reads a piece at a
//! time: the dashboard's diff and state page, the state listing's summary
//! of a state written by another tool, and the `outputs` view; and so it
//! reads old versions, a state another tool wrote that a write keeps in
//! history, and what the command line prints and restores. Each test
//! writes states of about 64 MiB with tens of thousands of resource
//! instances, starts a fresh server (so its peak memory is the views'
//! alone), asks for the views, several at once, and reads the server's
//! `VmHWM` and `VmRSS`: the peak stays within 64 MiB plus half the larger
//! body, and memory returns to near its idle level once the answers are
//! sent. Held whole and parsed into a tree, one such view takes several
//! hundred megabytes.

use std::fmt::Write;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

const MIB: u64 = 1024 * 1024;

/// Resource blocks of ten instances each: about 64 MiB of state.
const BLOCKS: usize = 7_000;

/// Whether instance `i` is left out of version 2.
fn dropped(i: usize) -> bool {
    i % 997 == 5
}

/// Whether instance `i` changes in version 2.
fn changed(i: usize) -> bool {
    i.is_multiple_of(100) && !dropped(i)
}

/// A state of [`BLOCKS`] blocks of ten `aws_instance`s, about a kilobyte
/// each. Version 2 changes every hundredth instance's `id`, leaves out
/// every 997th instance, adds a block `extra` of ten, and changes the
/// output `count`.
fn fleet(serial: u64) -> Vec<u8> {
    let mut out = String::with_capacity(BLOCKS * 10 * 1100);
    write!(
        out,
        r#"{{"version":4,"terraform_version":"1.9.0","serial":{serial},"lineage":"fleet","outputs":{{"count":{{"value":{serial},"type":"number"}},"region":{{"value":"eu-west-1","type":"string"}}}},"resources":["#
    )
    .unwrap();
    let names: Vec<String> = (0..BLOCKS)
        .map(|b| format!("node{b}"))
        .chain((serial == 2).then(|| "extra".to_string()))
        .collect();
    for (b, name) in names.iter().enumerate() {
        if b > 0 {
            out.push(',');
        }
        write!(
            out,
            r#"{{"mode":"managed","type":"aws_instance","name":"{name}","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":["#
        )
        .unwrap();
        let mut first = true;
        for k in 0..10 {
            let i = b * 10 + k;
            if serial == 2 && dropped(i) {
                continue;
            }
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            let id = match serial == 2 && changed(i) {
                true => format!("i-{i:08}-replaced"),
                false => format!("i-{i:08}"),
            };
            write!(
                out,
                r#"{{"index_key":{k},"schema_version":1,"attributes":{{"id":"{id}","arn":"arn:aws:ec2:eu-west-1:123456789012:instance/i-{i:08}","ami":"ami-0123456789abcdef0","instance_type":"t3.micro","private_ip":"10.{}.{}.{}","tags":{{"Name":"{name}-{k}","team":"platform","env":"prod"}},"root_block_device":[{{"volume_size":20,"volume_type":"gp3","encrypted":true}}],"user_data":"{}"}},"sensitive_attributes":[],"dependencies":["aws_vpc.main","aws_subnet.private"]}}"#,
                i / 65536 % 256,
                i / 256 % 256,
                i % 256,
                "x".repeat(500 + i % 100)
            )
            .unwrap();
        }
        out.push_str("]}");
    }
    out.push_str("]}\n");
    out.into_bytes()
}

fn status_mib(server: &Server, field: &str) -> u64 {
    proc_status_kib(server.pid(), field) / 1024
}

/// The resident memory of a server with nothing to do.
fn idle_mib(server: &Server) -> u64 {
    assert_eq!(http("GET", &format!("{}/healthz", server.url), b"").0, 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    status_mib(server, "VmRSS")
}

/// Asserts the peak and the memory left once the views are answered.
fn assert_bounded(server: &Server, idle: u64, largest: u64, what: &str) {
    let peak = status_mib(server, "VmHWM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = status_mib(server, "VmRSS");
    let bound = 64 + largest / MIB / 2;
    eprintln!("{what}: idle {idle} MiB, peak {peak} MiB (bound {bound}), after {after} MiB");
    assert!(
        peak <= bound,
        "{what}: the server's peak RSS was {peak} MiB, over {bound} MiB for bodies of {} MiB",
        largest / MIB
    );
    assert!(
        after <= idle + 16,
        "{what}: {after} MiB resident once answered, from {idle} MiB idle"
    );
}

fn get_json(url: &str, headers: &[(&str, &str)]) -> Value {
    let (status, body) = http_with("GET", url, headers, b"");
    assert_eq!(status, 200, "{url}: {}", text(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e})"))
}

/// Diff, state page and summary of two 64 MiB versions and of a 64 MiB
/// state another tool wrote, one at a time and six at once.
#[test]
fn large_views_diff_and_state_page_stay_within_bounded_memory() {
    let peer = LocalPeer::new();
    // The setting's default may refuse bodies this large; the bound is
    // what is tested here, not the limit.
    let env = [("STATEGATE_UI_MAX_VIEW_BYTES", "1073741824")];
    let start = || {
        Server::try_start(&peer, &[], &env)
            .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"))
    };
    let (v1, v2) = (fleet(1), fleet(2));
    let largest = v1.len().max(v2.len()) as u64;
    assert!(largest > 60 * MIB, "{largest}");
    let writer = start();
    for body in [&v1, &v2] {
        let (status, reply) = http("POST", &writer.state_url("fleet/prod.tfstate"), body);
        assert_eq!(status, 200, "{}", text(&reply));
    }
    assert!(writer.terminate());
    // A state another tool wrote: its summary is read from its body.
    peer.put_object("found/prod.tfstate", &v1);
    drop((v1, v2));

    let server = start();
    let idle = idle_mib(&server);
    let url = |path: &str| format!("{}{path}", server.url);

    let diff = get_json(&url("/api/v1/diff/fleet/prod.tfstate"), &[]);
    let instances = BLOCKS * 10;
    let address = |i: usize| format!("aws_instance.node{}[{}]", i / 10, i % 10);
    let removed: Vec<String> = (0..instances)
        .filter(|&i| dropped(i))
        .map(address)
        .collect();
    let mut changed_at: Vec<String> = (0..instances)
        .filter(|&i| changed(i))
        .map(address)
        .collect();
    changed_at.sort();
    let added: Vec<String> = (0..10)
        .map(|k| format!("aws_instance.extra[{k}]"))
        .collect();
    assert_eq!(diff["added"], serde_json::json!(added));
    let mut shown_removed: Vec<String> = serde_json::from_value(diff["removed"].clone()).unwrap();
    shown_removed.sort();
    let mut expected_removed = removed.clone();
    expected_removed.sort();
    assert_eq!(shown_removed, expected_removed);
    let changed_shown: Vec<&str> = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["attributes"], serde_json::json!(["id"]), "{c}");
            c["address"].as_str().unwrap()
        })
        .collect();
    assert_eq!(changed_shown, changed_at);
    assert_eq!(diff["outputs_changed"], serde_json::json!(["count"]));

    let (status, page) = http("GET", &url("/ui/states/fleet/prod.tfstate"), b"");
    let page = text(&page);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&changed_at[0]), "the page shows the diff");
    assert!(
        page.contains("aws_instance.extra[9]"),
        "the page shows the diff"
    );
    let detail = get_json(&url("/api/v1/states/fleet/prod.tfstate"), &[]);
    let expected_instances = instances + 10 - removed.len();
    assert_eq!(
        detail["overview"]["instances"], expected_instances,
        "{}",
        detail["overview"]
    );
    assert_eq!(detail["overview"]["resources"], BLOCKS + 1);
    assert_eq!(
        detail["overview"]["outputs"],
        serde_json::json!(["count", "region"])
    );

    let listing = get_json(&url("/api/v1/states?prefix=found/"), &[]);
    assert_eq!(listing["states"][0]["resources"], BLOCKS, "{listing}");
    let found = get_json(&url("/api/v1/states/found/prod.tfstate"), &[]);
    assert_eq!(found["overview"]["instances"], instances);
    assert_bounded(&server, idle, largest, "one view at a time");

    // Six at once: three state pages and three diffs of the same pair.
    let views: Vec<_> = (0..6)
        .map(|i| {
            let u = match i % 2 {
                0 => url("/api/v1/diff/fleet/prod.tfstate"),
                _ => url("/ui/states/fleet/prod.tfstate"),
            };
            std::thread::spawn(move || http("GET", &u, b""))
        })
        .collect();
    for view in views {
        let (status, body) = view.join().unwrap();
        assert_eq!(status, 200, "{}", text(&body));
    }
    assert_bounded(&server, idle, largest, "six views at once");
}

/// An identity allowed only outputs reads a 64 MiB state: the view is
/// built without reading the resources into memory.
#[test]
fn large_views_outputs_of_a_large_state_stay_within_bounded_memory() {
    let dir = TempDir::new().unwrap();
    let pw = "olga-pass-3k9d";
    let config = dir.path().join("stategate.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  users:\n    - name: olga\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: outputs}}]\n",
            hash_password(pw)
        ),
    )
    .unwrap();
    let peer = LocalPeer::new();
    let state = fleet(1);
    let size = state.len() as u64;
    peer.put_object("fleet/prod.tfstate", &state);
    peer.put_object("small/prod.tfstate", &state_doc("small", 1, "v"));
    drop(state);
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    let olga = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("olga:{pw}"))
    );
    // Checking a password takes memory of its own (argon2id); once checked
    // it is cached, and the idle level is taken after that.
    get_json(
        &server.state_url("small/prod.tfstate"),
        &[("Authorization", &olga)],
    );
    let idle = idle_mib(&server);
    let reads: Vec<_> = (0..3)
        .map(|_| {
            let (url, auth) = (server.state_url("fleet/prod.tfstate"), olga.clone());
            std::thread::spawn(move || get_json(&url, &[("Authorization", &auth)]))
        })
        .collect();
    for read in reads {
        let view = read.join().unwrap();
        assert_eq!(view["resources"], serde_json::json!([]));
        assert_eq!(view["outputs"]["region"]["value"], "eu-west-1");
        assert_eq!(view["serial"], 1);
    }
    assert_bounded(&server, idle, size, "three outputs views at once");
}

/// The size of the state another tool wrote, in the test below.
const FOUND_BYTES: usize = 128 * MIB as usize;

/// Runs a `stategate` command on the peer's store under GNU time: its
/// output, and its peak resident memory in MiB.
fn stategate_peak(peer: &dyn Peer, args: &[&str]) -> (Output, u64) {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time is missing: install Debian's `time` package"
    );
    let out = Command::new(time)
        .args(["-f", "peak %M"])
        .arg(bin())
        .args(args)
        .args(["--storage-type", peer.storage_type()])
        .args(settings_args(peer))
        .envs(peer.env())
        .stdin(Stdio::null())
        .output()
        .expect("run stategate under /usr/bin/time");
    let said = text(&out.stderr);
    let kib: u64 = said
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak from /usr/bin/time: {said}"));
    (out, kib / 1024)
}

/// Three readers of version 1 at once: each gets its bytes and ETag, and
/// the server's peak stays within 48 MiB of `idle`.
fn read_version_one(server: &Server, idle: u64, etag: &str, what: &str) {
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}?version=1", server.state_url("found/prod.tfstate"));
            std::thread::spawn(move || {
                let (status, headers, body) = http_full("GET", &url, &[], &[]);
                assert_eq!(status, 200, "{}", text(&body[..body.len().min(300)]));
                let tag = headers
                    .into_iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
                    .map(|(_, v)| v);
                (body.len(), md5_hex(&body), tag)
            })
        })
        .collect();
    for reader in readers {
        let (len, md5, tag) = reader.join().unwrap();
        assert_eq!(len, FOUND_BYTES, "{what}");
        assert_eq!(format!("\"{md5}\""), etag, "{what}: other bytes");
        assert_eq!(tag.as_deref(), Some(etag), "{what}");
    }
    let peak = status_mib(server, "VmHWM");
    eprintln!("{what}: idle {idle} MiB, peak {peak} MiB");
    assert!(
        peak <= idle + 48,
        "{what}: the server's peak RSS was {peak} MiB from {idle} MiB idle, for a {} MiB version",
        FOUND_BYTES / MIB as usize
    );
}

/// A 128 MiB state another tool wrote is kept as version 1 by the next
/// write, three readers fetch that version at once, and again once its
/// record is unreadable (rebuilt from the body): the server's peak stays
/// within 48 MiB of its idle level. On local disk the command line then
/// prints the version, restores it and pushes a newer 128 MiB state from a
/// file, each run peaking under 64 MiB. Held whole, every one of these
/// takes the body's 128 MiB at least.
#[test]
fn large_versions_and_found_states_are_read_a_piece_at_a_time() {
    let found = sized_state("found", 1, FOUND_BYTES);
    let etag = format!("\"{}\"", md5_hex(&found));
    let peers: [Box<dyn Peer>; 2] = [Box::new(LocalPeer::new()), Box::new(SqlitePeer::new())];
    for peer in &peers {
        let store = peer.storage_type();
        let server = Server::start(peer.as_ref());
        let idle = idle_mib(&server);
        // Put there by another tool (the store's file or row is made first).
        peer.put_object("found/prod.tfstate", &found);
        let url = server.state_url("found/prod.tfstate");
        let (status, reply) = http("POST", &url, &state_doc("found", 2, "small"));
        assert_eq!(status, 200, "{store}: {}", text(&reply));
        let history = get_json(&format!("{url}?history"), &[]);
        // Oldest first: the found state, then the write.
        let kept = &history["versions"][0];
        assert_eq!(kept["version"], 1, "{store}: {history}");
        assert_eq!(kept["operation"], "found", "{store}: {history}");
        assert_eq!(kept["size"], FOUND_BYTES, "{store}: {history}");
        let peak = status_mib(&server, "VmHWM");
        eprintln!("{store}: a write keeping a found state: idle {idle} MiB, peak {peak} MiB");
        assert!(
            peak <= idle + 48,
            "{store}: keeping a 128 MiB found state took the server from {idle} to {peak} MiB"
        );
        read_version_one(&server, idle, &etag, &format!("{store}: version 1"));
        peer.put_object(
            ".stategate/history/found/prod.tfstate/0000000001.json",
            b"not a record",
        );
        read_version_one(
            &server,
            idle,
            &etag,
            &format!("{store}: version 1 without its record"),
        );
        if store != "local" {
            continue;
        }
        let get = ["state", "get", "found/prod.tfstate", "--version", "1"];
        let (out, peak) = stategate_peak(peer.as_ref(), &get);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            out.stdout == found,
            "state get --version 1 printed other bytes"
        );
        eprintln!("state get --version 1: peak {peak} MiB");
        assert!(peak < 64, "state get --version 1 peaked at {peak} MiB");
        let restore = ["state", "restore", "found/prod.tfstate", "--version", "1"];
        let (out, peak) = stategate_peak(peer.as_ref(), &restore);
        assert!(out.status.success(), "{}", text(&out.stderr));
        eprintln!("state restore --version 1: peak {peak} MiB");
        assert!(peak < 64, "state restore --version 1 peaked at {peak} MiB");
        assert_eq!(current_etag(&url), etag, "restored");
        // A push from a file: spooled, not read whole.
        let dir = TempDir::new().unwrap();
        let newer = sized_state("found", 5, FOUND_BYTES);
        let file = dir.path().join("newer.tfstate");
        std::fs::write(&file, &newer).unwrap();
        let push = [
            "state",
            "push",
            "found/prod.tfstate",
            file.to_str().unwrap(),
        ];
        let (out, peak) = stategate_peak(peer.as_ref(), &push);
        assert!(out.status.success(), "{}", text(&out.stderr));
        eprintln!("state push of a 128 MiB file: peak {peak} MiB");
        assert!(peak < 64, "state push peaked at {peak} MiB");
        assert_eq!(current_etag(&url), format!("\"{}\"", md5_hex(&newer)));
    }
}

/// The ETag of the state at `url`.
fn current_etag(url: &str) -> String {
    let (status, headers, _) = http_full("GET", url, &[], &[]);
    assert_eq!(status, 200);
    let tag = headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"));
    tag.map(|(_, v)| v).unwrap_or_default()
}
