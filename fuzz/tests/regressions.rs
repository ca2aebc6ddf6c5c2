//! Replays every input saved in `testdata/fuzz/` through the check of the
//! target named by its file name (`<target>-<what it found>`), and the
//! fixture bodies in `testdata/` through the body parsers. Runs on stable:
//!
//! ```sh
//! cargo test --manifest-path fuzz/Cargo.toml
//! ```

use std::fs;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn saved_fuzz_inputs_pass_their_target() {
    for path in files(&testdata().join("fuzz")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        let check: fn(&[u8]) = match name.split_once('-').map(|(t, _)| t) {
            Some("route") => stategate_fuzz::route,
            Some("lock_info") => stategate_fuzz::lock_info,
            Some("state_head") => stategate_fuzz::state_head,
            Some("config") => stategate_fuzz::config,
            _ => panic!(
                "{name}: name it <target>-<what>, target one of route, lock_info, state_head, config"
            ),
        };
        eprintln!("replaying {name}");
        check(&data);
    }
}

#[test]
fn fixtures_pass_the_body_checks() {
    for path in files(&testdata()) {
        let data = fs::read(&path).unwrap();
        stategate_fuzz::lock_info(&data);
        stategate_fuzz::state_head(&data);
    }
}

#[test]
fn ordinary_urls_route() {
    // Method index 0 is GET, 3 is PUT, 5 is LOCK.
    for input in [
        &b"\x00/states/app/terraform.tfstate"[..],
        b"\x03/states/app/terraform.tfstate?ID=1f2e&workspace=dev",
        b"\x05/locks/a%2Fb?workspace=prod",
        b"\x00/healthz",
    ] {
        stategate_fuzz::route(input);
    }
    assert!(stategate_fuzz::split_route_input(b"").is_none());
}
