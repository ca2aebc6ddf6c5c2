use std::io::{Read, Write};
use std::sync::Arc;

use aes_gcm::Nonce;
use aes_gcm::aead::AeadInOut;

use super::format::*;
use super::keyring::*;
use crate::stores::payload::{FileBody, SPOOL_THRESHOLD};
use crate::stores::{Payload, StoreError};

const K1: [u8; KEY_LEN] = [1; KEY_LEN];
const K2: [u8; KEY_LEN] = [2; KEY_LEN];
const STATE: &[u8] =
    br#"{"version":4,"serial":3,"lineage":"l","outputs":{"pw":{"value":"hunter2"}}}"#;

#[test]
fn sealed_bodies_round_trip_and_hide_the_plaintext() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let sealed = ring.seal("a/terraform.tfstate", STATE).unwrap();
    assert!(sealed.starts_with(b"SGSL\x01\x02k1"));
    assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
    let again = ring.seal("a/terraform.tfstate", STATE).unwrap();
    assert_ne!(sealed, again, "every seal has a fresh nonce");
    match ring.open("a/terraform.tfstate", "a/terraform.tfstate", &sealed) {
        Ok(Opened::Sealed { plain, current_key }) => {
            assert_eq!(plain, STATE);
            assert!(current_key);
        }
        _ => panic!("did not open"),
    }
}

#[test]
fn one_flipped_byte_anywhere_is_refused() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let sealed = ring.seal("s", STATE).unwrap();
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        let err = match ring.open("s", "s", &bad) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("byte {i} flipped and it still opened"),
        };
        assert!(
            err.contains("does not open") || err.contains("does not list"),
            "byte {i}: {err}"
        );
    }
    for cut in [0, 3, 10, sealed.len() - 1] {
        assert!(ring.open("s", "s", &sealed[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn a_body_moved_to_another_state_does_not_open() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let sealed = ring.seal("prod/terraform.tfstate", STATE).unwrap();
    let err = ring
        .open("dev/terraform.tfstate", "dev/terraform.tfstate", &sealed)
        .err()
        .expect("opened under another state");
    assert!(
        err.to_string().contains("sealed for another state"),
        "{err}"
    );
}

#[test]
fn rotation_opens_old_keys_and_seals_with_the_first() {
    let old = Keyring::from_keys(&[("k1", K1)], false);
    let sealed = old.seal("s", STATE).unwrap();
    let rotated = Keyring::from_keys(&[("k2", K2), ("k1", K1)], false);
    match rotated.open("s", "s", &sealed) {
        Ok(Opened::Sealed { plain, current_key }) => {
            assert_eq!(plain, STATE);
            assert!(!current_key);
        }
        _ => panic!("the old key no longer opens"),
    }
    assert!(
        rotated
            .seal("s", STATE)
            .unwrap()
            .starts_with(b"SGSL\x01\x02k2")
    );
    let without_old = Keyring::from_keys(&[("k2", K2)], false);
    let err = without_old.open("s", "s", &sealed).err().unwrap();
    assert!(err.to_string().contains("key `k1`"), "{err}");
    assert_eq!(err.setting(), Some("encryption.keys"));
}

#[test]
fn unsealed_bodies_pass_unless_sealing_is_required() {
    let lax = Keyring::from_keys(&[("k1", K1)], false);
    assert!(matches!(lax.open("s", "s", STATE), Ok(Opened::Clear)));
    let strict = Keyring::from_keys(&[("k1", K1)], true);
    let err = strict.open("s", "s", STATE).err().unwrap();
    assert!(err.to_string().contains("not sealed"), "{err}");
}

#[test]
fn the_overhead_is_what_sealing_adds() {
    let ring = Keyring::from_keys(&[("k2026", K1)], false);
    let sealed = ring.seal("s", STATE).unwrap();
    assert_eq!(sealed.len() as u64, STATE.len() as u64 + ring.overhead());
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

fn file_payload(bytes: &[u8]) -> Payload {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    Payload::File(Arc::new(FileBody::new(file, bytes.len() as u64)))
}

fn read_all(payload: &Payload) -> Vec<u8> {
    let mut out = Vec::new();
    payload.reader().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn large_bodies_are_sealed_in_segments_from_memory_or_file() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    for (len, format) in [
        (SPOOL_THRESHOLD, FORMAT_WHOLE),
        (SPOOL_THRESHOLD + 1, FORMAT_SEGMENTED),
        (SEGMENT * 20, FORMAT_SEGMENTED),
        (3 * SPOOL_THRESHOLD + 17, FORMAT_SEGMENTED),
    ] {
        let plain = big(len);
        let sealed = ring.seal("s", &plain).unwrap();
        assert_eq!(sealed[4], format, "{len}");
        assert_eq!(ring.plain_size(sealed.len() as u64), len as u64, "{len}");
        match ring.open("s", "s", &sealed) {
            Ok(Opened::Sealed { plain: opened, .. }) => assert!(opened == plain, "{len}"),
            _ => panic!("{len}: did not open"),
        }
        // Through files, a segment at a time, both ways.
        let sealed_file = ring.seal_payload("s", &file_payload(&plain)).unwrap();
        assert!(sealed_file.as_memory().is_none());
        assert_eq!(sealed_file.len(), sealed.len() as u64);
        let opened = ring.open_payload("s", "s", &sealed_file).unwrap();
        assert!(read_all(&opened) == plain, "{len}");
        let opened = ring.open_payload("s", "s", &file_payload(&sealed)).unwrap();
        assert!(read_all(&opened) == plain, "{len}");
    }
    // Bodies sealed whole before segments existed still open from a file.
    let plain = big(2 * SPOOL_THRESHOLD);
    let mut whole = Vec::new();
    let key = &ring.keys[0];
    let nonce = [9u8; NONCE_LEN];
    whole.extend_from_slice(MAGIC);
    whole.extend_from_slice(&[FORMAT_WHOLE, 2]);
    whole.extend_from_slice(b"k1");
    whole.extend_from_slice(&nonce);
    let aad = associated_data(&whole, "s");
    let mut body = plain.clone();
    key.cipher
        .encrypt_in_place(&Nonce::from(nonce), &aad, &mut body)
        .unwrap();
    whole.extend_from_slice(&body);
    let opened = ring.open_payload("s", "s", &file_payload(&whole)).unwrap();
    assert!(read_all(&opened) == plain);
}

#[test]
fn segments_cannot_be_changed_dropped_moved_or_cut() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let plain = big(SPOOL_THRESHOLD + 2 * SEGMENT + 5);
    let sealed = ring.seal("s", &plain).unwrap();
    let header = header_len(2, PREFIX_LEN);
    let per = SEGMENT + TAG_LEN;
    let segments: Vec<&[u8]> = sealed[header..].chunks(per).collect();
    let n = segments.len();
    assert_eq!(n, SPOOL_THRESHOLD / SEGMENT + 3);
    let joined = |parts: &[&[u8]]| [&sealed[..header], &parts.concat()].concat();
    let mut flipped = sealed.clone();
    flipped[header + per * 5 + 100] ^= 1;
    let mut swapped = segments.clone();
    swapped.swap(3, 4);
    let mut repeated = segments.clone();
    repeated.push(segments[n - 1]);
    let mut other_format = sealed.clone();
    other_format[4] = FORMAT_WHOLE;
    for (what, bad) in [
        ("a flipped byte", flipped),
        ("two segments swapped", joined(&swapped)),
        ("the last segment dropped", joined(&segments[..n - 1])),
        ("cut inside a segment", sealed[..sealed.len() - 7].to_vec()),
        ("the last segment repeated", joined(&repeated)),
        ("the format byte changed", other_format),
    ] {
        let refused = |r: Result<Opened, StoreError>| match r {
            Err(e) => assert!(e.to_string().contains("does not open"), "{what}: {e}"),
            Ok(_) => panic!("{what}: it still opened"),
        };
        refused(ring.open("s", "s", &bad));
        match ring.open_payload("s", "s", &file_payload(&bad)) {
            Err(e) => assert!(e.to_string().contains("does not open"), "{what}: {e}"),
            Ok(_) => panic!("{what}: it still opened from a file"),
        }
    }
}

#[test]
fn only_state_bodies_are_sealed() {
    assert_eq!(logical_key("a/b.tfstate"), Some("a/b.tfstate"));
    assert_eq!(
        logical_key(".stategate/history/ws/x/a.tfstate/0000000003.tfstate"),
        Some("ws/x/a.tfstate")
    );
    assert_eq!(logical_key(".stategate/history/a/0000000003.json"), None);
    assert_eq!(logical_key("a/b.tfstate.tflock"), None);
    assert_eq!(logical_key(".stategate/lease/a"), None);
    assert_eq!(logical_key(".stategate/probe/x"), None);
}

#[test]
fn a_change_proves_the_keys_open_what_it_replaces() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let small = ring.seal("s", STATE).unwrap();
    let large = ring.seal("s", &big(SPOOL_THRESHOLD + 3 * SEGMENT)).unwrap();
    for sealed in [&small, &large] {
        ring.prove_opens("s", &Payload::from(sealed.clone()))
            .unwrap();
        ring.prove_opens("s", &file_payload(sealed)).unwrap();
    }
    // An unsealed state is replaced by a sealed one: nothing is lost.
    ring.prove_opens("s", &Payload::from(STATE.to_vec()))
        .unwrap();

    let other_material = Keyring::from_keys(&[("k1", K2)], false);
    let missing = Keyring::from_keys(&[("k2", K2)], false);
    for sealed in [&small, &large] {
        for payload in [Payload::from(sealed.clone()), file_payload(sealed)] {
            let err = other_material.prove_opens("s", &payload).unwrap_err();
            assert!(
                err.to_string().contains("does not open with key `k1`"),
                "{err}"
            );
            let err = missing.prove_opens("s", &payload).unwrap_err();
            assert!(err.to_string().contains("sealed with key `k1`"), "{err}");
        }
    }
    let mut flipped = large.clone();
    flipped[header_len(2, PREFIX_LEN) + 10] ^= 1;
    assert!(ring.prove_opens("s", &file_payload(&flipped)).is_err());
    assert!(
        ring.prove_opens("s", &Payload::from(b"junk".to_vec()))
            .is_err()
    );
}

const RECORD: &str =
    r#"{"version":3,"serial":3,"md5":"0123456789abcdef0123456789abcdef","size":9}"#;

#[test]
fn history_records_keep_their_md5_sealed() {
    let ring = Keyring::from_keys(&[("k1", K1)], false);
    let sealed = ring.seal_record("a/s", RECORD.as_bytes()).unwrap().unwrap();
    assert!(
        !text(&sealed).contains("0123456789abcdef"),
        "{}",
        text(&sealed)
    );
    let meta: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    assert_eq!(meta["serial"], 3, "the rest stays clear");
    assert!(
        ring.seal_record("a/s", &sealed).unwrap().is_none(),
        "sealed twice"
    );
    let (opened, current) = ring.open_record("r", "a/s", &sealed).unwrap().unwrap();
    assert!(current);
    let opened: serde_json::Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(
        opened,
        serde_json::from_str::<serde_json::Value>(RECORD).unwrap()
    );
    // Bound to its state.
    assert!(ring.open_record("r", "b/s", &sealed).is_err());
    // A record in clear reads as it is.
    assert!(
        ring.open_record("r", "a/s", RECORD.as_bytes())
            .unwrap()
            .is_none()
    );

    // A pointer's copy of the newest record is sealed the same way.
    let pointer = format!(r#"{{"oldest":1,"newest":{RECORD}}}"#);
    let sealed_pointer = ring
        .seal_record("a/s", pointer.as_bytes())
        .unwrap()
        .unwrap();
    assert!(!text(&sealed_pointer).contains("0123456789abcdef"));
    let (opened, _) = ring
        .open_record("p", "a/s", &sealed_pointer)
        .unwrap()
        .unwrap();
    let opened: serde_json::Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(opened["newest"]["md5"], "0123456789abcdef0123456789abcdef");

    // Rotation: the old key opens, rekey re-seals under the new one.
    let rotated = Keyring::from_keys(&[("k2", K2), ("k1", K1)], false);
    let (_, current) = rotated.open_record("r", "a/s", &sealed).unwrap().unwrap();
    assert!(!current);
    let resealed = rotated.reseal_record("r", "a/s", &sealed).unwrap().unwrap();
    assert!(
        rotated
            .reseal_record("r", "a/s", &resealed)
            .unwrap()
            .is_none()
    );
    let clear_resealed = rotated
        .reseal_record("r", "a/s", RECORD.as_bytes())
        .unwrap()
        .unwrap();
    let without_old = Keyring::from_keys(&[("k2", K2)], false);
    for record in [&resealed, &clear_resealed] {
        let (opened, _) = without_old
            .open_record("r", "a/s", record)
            .unwrap()
            .unwrap();
        assert!(text(&opened).contains("0123456789abcdef0123456789abcdef"));
    }
    let err = without_old.open_record("r", "a/s", &sealed).unwrap_err();
    assert!(err.to_string().contains("key `k1`"), "{err}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn only_history_records_carry_a_sealed_md5() {
    let dir = ".stategate/history/ws/x/a.tfstate/";
    assert_eq!(
        record_state(&format!("{dir}0000000003.json")),
        Some("ws/x/a.tfstate")
    );
    assert_eq!(
        record_state(&format!("{dir}newest.json")),
        Some("ws/x/a.tfstate")
    );
    assert_eq!(record_state(&format!("{dir}summary.json")), None);
    assert_eq!(record_state(&format!("{dir}0000000003.tfstate")), None);
    assert_eq!(record_state("a/0000000003.json"), None);
}

#[test]
fn a_key_file_others_can_read_is_warned_about_or_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("k.key");
    std::fs::write(&path, generate_key().unwrap()).unwrap();
    let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    for (m, lax, strict) in [
        (0o600, true, true),
        (0o400, true, true),
        (0o640, true, false),
        (0o644, true, false),
        (0o620, true, false),
    ] {
        mode(m);
        assert_eq!(
            check_key_file_mode(&path, "k", "s", false).is_ok(),
            lax,
            "{m:o}"
        );
        let strict_result = check_key_file_mode(&path, "k", "s", true);
        assert_eq!(strict_result.is_ok(), strict, "{m:o}");
        if let Err(e) = strict_result {
            let e = e.to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains("`s`"),
                "{e}"
            );
        }
    }
}

#[test]
fn keys_are_base64_of_32_bytes() {
    let key = generate_key().unwrap();
    assert_eq!(decode_key(&format!(" {key}\n")).unwrap().len(), KEY_LEN);
    assert!(decode_key("not base64!").is_err());
    assert!(
        decode_key("AAAA")
            .unwrap_err()
            .contains("holds 3 bytes, not 32")
    );
}

/// A write on a sealed SQLite store commits once, as on an unsealed one:
/// the state, its copy in history, its record and the pointer in one
/// transaction, so a crash never leaves the state without its record.
#[tokio::test]
async fn a_sealed_write_and_its_record_commit_together() {
    use crate::state::{Policy, StateRef, States, WriteOptions};
    use crate::stores::Store;
    use crate::stores::sqlite::SqliteStore;

    let dir = tempfile::tempdir().unwrap();
    let state = StateRef::parse("app/terraform.tfstate", None).unwrap();
    // Commits of the second of two writes, the first creating the state.
    let commits_of_a_write = async |name: &str, sealed: bool| {
        let sqlite = Arc::new(SqliteStore::open_file(&dir.path().join(name)).unwrap());
        let store: Arc<dyn Store> = match sealed {
            true => {
                let ring = Arc::new(Keyring::from_keys(&[("k1", K1)], false));
                Arc::new(super::SealedStore::new(sqlite.clone(), ring))
            }
            false => sqlite.clone(),
        };
        let policy = Policy {
            workspace_key_prefix: "workspaces".into(),
            history_keep: 0,
            protect_lineage: true,
        };
        let states = States::new(Arc::clone(&store), store.capabilities(), policy);
        let mut commits = 0;
        for serial in [1, 2] {
            let body = format!(r#"{{"version":4,"serial":{serial},"lineage":"l"}}"#);
            let before = sqlite.commits();
            let opts = WriteOptions {
                operation: "write",
                ..Default::default()
            };
            states.write(&state, body.into_bytes(), opts).await.unwrap();
            commits = sqlite.commits() - before;
        }
        assert_eq!(states.history(&state).await.unwrap().len(), 2, "{name}");
        commits
    };
    let clear = commits_of_a_write("clear.db", false).await;
    let sealed = commits_of_a_write("sealed.db", true).await;
    assert_eq!(
        sealed, clear,
        "commits of one sealed write, and of one clear write"
    );
}
