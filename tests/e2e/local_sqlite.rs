//! The conformance suite on the two stores that need no server, plus what
//! only they can show: nothing is written outside the local root, and the
//! files they leave are what the README says.

use crate::support::stores::{LocalPeer, SqlitePeer, files_below};
use crate::support::*;

conformance_suite!(local_suite, Box::new(LocalPeer::new()));
conformance_suite!(sqlite_suite, Box::new(SqlitePeer::new()));

#[test]
fn local_writes_stay_under_the_root() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let parent = peer.root().parent().unwrap().to_path_buf();
    for path in [
        "/states/..%2fescape",
        "/states/%2e%2e/escape",
        "/states/%2Fescape",
        "/locks/..%2f..%2fescape",
    ] {
        for method in ["POST", "LOCK"] {
            let body = if method == "LOCK" {
                lock_info("x", "x")
            } else {
                state_doc("x", 1, "x")
            };
            assert_eq!(
                raw_request(&server.url, method, path, &body).0,
                400,
                "{method} {path}"
            );
        }
    }
    let (status, _) = http(
        "POST",
        &server.state_url("inside/terraform.tfstate"),
        &state_doc("x", 1, "x"),
    );
    assert_eq!(status, 200);
    let outside: Vec<_> = files_below(&parent)
        .into_iter()
        .filter(|f| !f.starts_with("data/"))
        .collect();
    assert!(outside.is_empty(), "files outside the root: {outside:?}");
    assert!(peer.object_path("inside/terraform.tfstate").is_file());
}

/// The layout keeps every file stategate writes off the names of
/// directories; a file put there by hand where a key needs a directory
/// makes that key a conflict (409), and nothing else.
#[test]
fn local_file_put_by_hand_where_a_directory_must_be_is_a_conflict() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    std::fs::write(peer.root().join("a"), b"put here by hand").unwrap();
    let (status, reason) = http("POST", &server.state_url("a/b"), &state_doc("x", 1, "x"));
    assert_eq!(status, 409, "{}", text(&reason));
    assert!(text(&reason).contains("`a/b`"), "{}", text(&reason));
    let (status, reason) = http("POST", &server.state_url("a"), &state_doc("y", 1, "y"));
    assert_eq!(status, 200, "{}", text(&reason));
}

/// The states of the old-layout tests: a state with a lock, the same key
/// in a workspace, and a one-segment key; three versions each.
const OLD_STATES: [(&str, &str); 3] = [
    ("team/app.tfstate", "default"),
    ("team/app.tfstate", "dev"),
    ("solo", "default"),
];

fn old_state_url(server: &Server, key: &str, workspace: &str) -> String {
    match workspace {
        "default" => server.state_url(key),
        ws => format!("{}?workspace={ws}", server.state_url(key)),
    }
}

fn old_state_doc(key: &str, workspace: &str, serial: u64) -> Vec<u8> {
    state_doc(
        &format!("{workspace}-{}", key.replace('/', "-")),
        serial,
        key,
    )
}

/// Every file of a root in the local store's first layout, as that layout
/// named them: each object's file at its key (`<key>` for a state,
/// `<key>.tflock` for its lock, history under
/// `.stategate/history/<object key>/`), besides the store's own
/// `.stategate/local/` (a `tmp/` directory and the files `guard`, `keys`
/// and `leases`).
const LAYOUT_1_FILES: [&str; 28] = [
    ".stategate/history/solo/0000000001.json",
    ".stategate/history/solo/0000000001.tfstate",
    ".stategate/history/solo/0000000002.json",
    ".stategate/history/solo/0000000002.tfstate",
    ".stategate/history/solo/0000000003.json",
    ".stategate/history/solo/0000000003.tfstate",
    ".stategate/history/solo/newest.json",
    ".stategate/history/team/app.tfstate/0000000001.json",
    ".stategate/history/team/app.tfstate/0000000001.tfstate",
    ".stategate/history/team/app.tfstate/0000000002.json",
    ".stategate/history/team/app.tfstate/0000000002.tfstate",
    ".stategate/history/team/app.tfstate/0000000003.json",
    ".stategate/history/team/app.tfstate/0000000003.tfstate",
    ".stategate/history/team/app.tfstate/newest.json",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000001.json",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000001.tfstate",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000002.json",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000002.tfstate",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000003.json",
    ".stategate/history/workspaces/dev/team/app.tfstate/0000000003.tfstate",
    ".stategate/history/workspaces/dev/team/app.tfstate/newest.json",
    ".stategate/local/guard",
    ".stategate/local/keys",
    ".stategate/local/leases",
    "solo",
    "team/app.tfstate",
    "team/app.tfstate.tflock",
    "workspaces/dev/team/app.tfstate",
];

/// The lock held on `team/app.tfstate` across the upgrade.
fn old_lock() -> Vec<u8> {
    lock_info("held-through-the-upgrade", "ops@host")
}

/// Writes [`OLD_STATES`] and the lock through a server, then lays the
/// root out as the first layout did. The first layout is this one with
/// each object file's trailing `+` dropped, the guard a file and no
/// layout marker, so renaming the files by hand gives what a server of
/// that layout would have left, with real history records; the list of
/// files is then checked against [`LAYOUT_1_FILES`].
fn root_in_layout_1() -> LocalPeer {
    let peer = LocalPeer::new();
    {
        let server = Server::start(&peer);
        for (key, ws) in OLD_STATES {
            for serial in 1..=3 {
                let doc = old_state_doc(key, ws, serial);
                assert_eq!(http("POST", &old_state_url(&server, key, ws), &doc).0, 200);
            }
        }
        let url = server.state_url("team/app.tfstate");
        assert_eq!(http("LOCK", &url, &old_lock()).0, 200);
    }
    let root = peer.root();
    for file in files_below(&root) {
        if !file.starts_with(".stategate/local/") {
            let old = file
                .strip_suffix('+')
                .expect("each object's file ends in +");
            std::fs::rename(root.join(&file), root.join(old)).unwrap();
        }
    }
    let own = root.join(".stategate/local");
    std::fs::remove_file(own.join("layout")).unwrap();
    // The spare file for a full device came after that layout.
    std::fs::remove_file(own.join("spare")).unwrap();
    std::fs::remove_dir(own.join("guard")).unwrap();
    std::fs::write(own.join("guard"), b"").unwrap();
    assert_eq!(files_below(&root), LAYOUT_1_FILES);
    peer
}

/// What an upgrade must keep: every state and each of its versions (read
/// back against the MD5 in its record), the lock and its holder, the hard
/// link between a state and its newest version; and what it must give:
/// `a` and `a/b` side by side, the guard a directory, the marker. The
/// lock is released here, so a later check passes `lock_held: false`.
fn assert_upgraded(peer: &LocalPeer, server: &Server, lock_held: bool) {
    for (key, ws) in OLD_STATES {
        let url = old_state_url(server, key, ws);
        assert_eq!(
            http("GET", &url, b""),
            (200, old_state_doc(key, ws, 3)),
            "{key} in {ws}"
        );
        let join = if url.contains('?') { '&' } else { '?' };
        let (status, body) = http("GET", &format!("{url}{join}history"), b"");
        assert_eq!(status, 200, "{}", text(&body));
        let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let versions: Vec<u64> = history["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions.len(), 3, "{key} in {ws}: {history}");
        for (n, serial) in versions.iter().zip(1..) {
            assert_eq!(
                http("GET", &format!("{url}{join}version={n}"), b""),
                (200, old_state_doc(key, ws, serial)),
                "{key} in {ws}, version {n}"
            );
        }
    }
    let url = server.state_url("team/app.tfstate");
    if lock_held {
        assert_eq!(
            http("LOCK", &url, &lock_info("other", "other@host")),
            (423, old_lock()),
            "the lock survives"
        );
    }
    let state = peer.object_path("team/app.tfstate");
    let newest = peer.object_path(".stategate/history/team/app.tfstate/0000000003.tfstate");
    {
        use std::os::unix::fs::MetadataExt;
        let (state, newest) = (
            std::fs::metadata(state).unwrap(),
            std::fs::metadata(newest).unwrap(),
        );
        assert_eq!((state.dev(), state.ino()), (newest.dev(), newest.ino()));
    }
    if lock_held {
        assert_eq!(http("UNLOCK", &url, &old_lock()).0, 200);
    }
    let below = server.state_url("team/app.tfstate/below");
    assert_eq!(http("POST", &below, &state_doc("below", 1, "b")).0, 200);
    assert_eq!(
        http("GET", &url, b""),
        (200, old_state_doc("team/app.tfstate", "default", 3))
    );
    let own = peer.root().join(".stategate/local");
    assert!(own.join("guard").is_dir());
    assert_eq!(std::fs::read_to_string(own.join("layout")).unwrap(), "2\n");
    let unmarked: Vec<String> = files_below(&peer.root())
        .into_iter()
        .filter(|f| !f.starts_with(".stategate/local/") && !f.ends_with('+'))
        .collect();
    assert!(unmarked.is_empty(), "{unmarked:?}");
}

#[test]
fn local_root_in_the_old_layout_is_upgraded_at_start() {
    let peer = root_in_layout_1();
    // A dry run only reads, and refuses the old layout, saying what upgrades it.
    let dir = tempfile::TempDir::new().unwrap();
    let config = |name: &str, root: &std::path::Path| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "backend:\n  storageType: local\n  config:\n    path: \"{}\"\n",
                root.display()
            ),
        )
        .unwrap();
        path
    };
    let (from, to) = (
        config("from.yaml", &peer.root()),
        config("to.yaml", &dir.path().join("to")),
    );
    let out = std::process::Command::new(bin())
        .args(["migrate", "--dry-run", "--from"])
        .arg(&from)
        .arg("--to")
        .arg(&to)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("`stategate serve` upgrades it in place"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(files_below(&peer.root()), LAYOUT_1_FILES);

    let server = Server::start(&peer);
    assert!(server.logs("upgraded to layout 2"), "{}", server.log());
    assert_upgraded(&peer, &server, true);
    drop(server);
    let again = Server::start(&peer);
    assert!(!again.log().contains("upgraded"), "{}", again.log());
    assert_upgraded(&peer, &again, false);
}

/// Trees an upgrade killed midway leaves (each step is one rename or one
/// directory made or removed): the next start finishes the job.
#[test]
fn local_upgrade_cut_short_is_finished_by_the_next_start() {
    fn mark(root: &std::path::Path, file: &str) {
        std::fs::rename(root.join(file), root.join(format!("{file}+"))).unwrap();
    }
    type Cut = fn(&std::path::Path);
    let cuts: [(&str, Cut); 2] = [
        ("while renaming", |root| {
            for file in &LAYOUT_1_FILES[..9] {
                mark(root, file);
            }
            mark(root, "team/app.tfstate");
        }),
        (
            "between removing the old guard and placing the new",
            |root| {
                for file in LAYOUT_1_FILES {
                    if !file.starts_with(".stategate/local/") {
                        mark(root, file);
                    }
                }
                let own = root.join(".stategate/local");
                std::fs::create_dir(own.join("guard.next")).unwrap();
                std::fs::remove_file(own.join("guard")).unwrap();
            },
        ),
    ];
    for (when, cut) in cuts {
        let peer = root_in_layout_1();
        cut(&peer.root());
        let server = Server::start(&peer);
        eprintln!("cut short {when}");
        assert_upgraded(&peer, &server, true);
        assert!(!peer.root().join(".stategate/local/guard.next").exists());
    }
}

#[test]
fn sqlite_file_is_shared_by_two_processes() {
    let peer = SqlitePeer::new();
    let a = Server::start(&peer);
    let b = Server::start(&peer);
    let body = state_doc("shared", 1, "from a");
    assert_eq!(http("POST", &a.state_url("shared"), &body).0, 200);
    assert_eq!(http("GET", &b.state_url("shared"), b""), (200, body));
    assert_eq!(
        http("LOCK", &b.state_url("shared"), &lock_info("b", "b@host")).0,
        200
    );
    assert_eq!(
        http("LOCK", &a.state_url("shared"), &lock_info("a", "a@host")),
        (423, lock_info("b", "b@host"))
    );
}

/// A server stopped with SIGTERM closes the database before it exits:
/// SQLite folds its log into the file and removes the log and its index.
/// A close cut short by the process ending can remove the index and leave
/// the log, and a read-only file system then cannot open the file at all
/// (so a server restarted there could not even serve reads).
#[test]
fn sqlite_closes_its_file_before_exiting() {
    let peer = SqlitePeer::new();
    let pad = "x".repeat(300_000);
    for round in 0..3 {
        let server = Server::start(&peer);
        // Enough for a log of a few MiB, which takes a while to fold in.
        for i in 0..12 {
            let body = state_doc(&format!("close-{round}-{i}"), 1, &pad);
            let url = server.state_url(&format!("close/{round}/s{i}"));
            assert_eq!(http("POST", &url, &body).0, 200);
        }
        assert!(server.terminate(), "stategate exited with an error");
        for suffix in ["-wal", "-shm"] {
            let mut left = peer.db().into_os_string();
            left.push(suffix);
            assert!(
                !std::path::Path::new(&left).exists(),
                "round {round}: {} is left after stategate stopped",
                std::path::Path::new(&left).display()
            );
        }
    }
}
