//! Notifications against a real receiver (`support::receiver`, which
//! verifies every signature with the shared secret): the events of a real
//! `terraform apply` and `destroy`, of refused and forced operations and of
//! the operator's commands arrive signed, as CloudEvents or Slack lines;
//! nothing is lost while the receiver is down, when stategate is killed,
//! or when three replicas share the store; what cannot be delivered is
//! kept, shown and counted.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::receiver::{Mode, Received, Receiver};
use crate::support::stores::LocalPeer;
use crate::support::*;

const SECRET: &str = "whsec-test-5b1e0c";
const SECRET_ENV: (&str, &str) = ("HOOK_SECRET", SECRET);

/// A configuration file in `dir` holding `yaml`.
fn config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("stategate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One cloudevents destination `name` posting to the receiver's `/<name>`,
/// with `extra` YAML lines of the entry.
fn destination(receiver: &Receiver, name: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    url: {}\n    secret_env: HOOK_SECRET\n{extra}",
        receiver.url(name)
    )
}

/// What most tests start from: a local store, a receiver answering as
/// `mode`, and a configuration file that `yaml` writes naming the
/// receiver's destinations, in a folder that lives as long as the last
/// of the four.
fn setup(
    mode: Mode,
    yaml: impl FnOnce(&Receiver) -> String,
) -> (LocalPeer, Receiver, PathBuf, tempfile::TempDir) {
    let receiver = Receiver::start(SECRET);
    receiver.set_mode(mode);
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = config(dir.path(), &yaml(&receiver));
    (LocalPeer::new(), receiver, cfg, dir)
}

fn serve(peer: &dyn Peer, config: &Path) -> Server {
    Server::try_start(peer, &["--config", config.to_str().unwrap()], &[SECRET_ENV])
        .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"))
}

/// The operator command `args` on the peer's store with `config`.
fn operator(peer: &dyn Peer, config: &Path, args: &[&str]) -> String {
    let out = stategate(
        peer,
        &[args, &["--config", config.to_str().unwrap()]].concat(),
        &[],
    );
    assert!(
        out.status.success(),
        "stategate {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The CloudEvents `type`s delivered, without their prefix.
fn kinds(delivered: &[Received]) -> BTreeSet<String> {
    delivered
        .iter()
        .map(|r| {
            r.json()["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("dev.stategate.")
                .to_string()
        })
        .collect()
}

/// The ids waiting in the store's outbox.
fn outbox_ids(peer: &dyn Peer) -> BTreeSet<String> {
    peer.object_keys()
        .into_iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(".stategate/outbox/")?;
            Some(
                rest.rsplit('/')
                    .next()?
                    .trim_end_matches(".json")
                    .to_string(),
            )
        })
        .collect()
}

/// A LockInfo taken now, as Terraform sends it.
fn lock_now(id: &str, who: &str) -> Vec<u8> {
    let created = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    lock_created(id, who, &created)
}

/// A LockInfo whose client says it was created at `created`.
fn lock_created(id: &str, who: &str, created: &str) -> Vec<u8> {
    format!(
        r#"{{"ID":"{id}","Operation":"OperationTypeApply","Info":"","Who":"{who}","Version":"1.11.4","Created":"{created}","Path":""}}"#
    )
    .into_bytes()
}

fn backend(url: &str, key: &str) -> String {
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{url}/states/{key}"
    lock_address   = "{url}/states/{key}"
    unlock_address = "{url}/states/{key}"
  }}
}}
variable "v" {{
  default = "one"
}}
resource "terraform_data" "app" {{
  input = var.v
}}
"#
    )
}

#[test]
fn notify_every_event_type_arrives_signed_as_a_cloudevent() {
    let (peer, receiver, cfg, _dir) = setup(Mode::Up, |r| {
        format!(
            "lock_held_too_long: 2s\nui:\n  hosts: [stategate.example]\nnotifications:\n{}",
            destination(r, "all", "")
        )
    });
    let server = serve(&peer, &cfg);

    let tf = Terraform::new(&backend(&server.url, "tf/app"));
    tf.init_apply(&[]);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);

    let url = server.state_url("ops/refused");
    assert_eq!(http("POST", &url, &state_doc("lin-n1", 2, "a")).0, 200);
    assert_eq!(http("POST", &url, &state_doc("lin-n1", 1, "b")).0, 409);
    assert_eq!(http("POST", &url, &state_doc("lin-n1", 3, "c")).0, 200);
    assert_eq!(
        http(
            "LOCK",
            &url,
            &lock_info("f0000000-0000-4000-8000-000000000001", "ann@ws")
        )
        .0,
        200
    );
    assert_eq!(http("UNLOCK", &url, b"").0, 200, "a force-unlock");
    operator(
        &peer,
        &cfg,
        &["state", "restore", "ops/refused", "--version", "1"],
    );
    assert_eq!(http("DELETE", &url, b"").0, 200);
    operator(&peer, &cfg, &["state", "purge", "ops/refused"]);

    let held = server.state_url("ops/held");
    assert_eq!(
        http(
            "LOCK",
            &held,
            &lock_now("f0000000-0000-4000-8000-000000000002", "bob@ci")
        )
        .0,
        200
    );
    // A client's `Created` in the future does not keep its lock from
    // being told: the age is the store's.
    let future = lock_created(
        "f0000000-0000-4000-8000-000000000003",
        "eve@ci",
        "2099-01-01T00:00:00Z",
    );
    assert_eq!(
        http("LOCK", &server.state_url("ops/future"), &future).0,
        200
    );

    let want: BTreeSet<String> = [
        "state.written",
        "state.write_refused",
        "state.restored",
        "state.deleted",
        "state.purged",
        "lock.taken",
        "lock.released",
        "lock.force_released",
        "lock.held_too_long",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let held_locks = |d: &[Received]| -> BTreeSet<String> {
        d.iter()
            .map(|r| r.json())
            .filter(|e| e["type"] == "dev.stategate.lock.held_too_long")
            .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let got = receiver.wait_for("all", Duration::from_secs(30), |d| {
        kinds(d).is_superset(&want) && held_locks(d).len() == 2
    });
    assert_eq!(
        held_locks(&got),
        BTreeSet::from(["ops/held".to_string(), "ops/future".to_string()])
    );
    assert_eq!(
        kinds(&got),
        want,
        "every event type arrives once configured for all"
    );

    for r in &got {
        assert!(r.signed, "verified with the secret: {:?}", r.headers);
        assert_eq!(
            r.header("Content-Type"),
            Some("application/cloudevents+json")
        );
        let event = r.json();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(
            event["id"],
            r.event_id().as_str(),
            "the header names the body's id"
        );
        assert_eq!(event["data"]["id"], event["id"]);
        assert_eq!(event["source"], "stategate://stategate.example");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
        assert_eq!(event["subject"], event["data"]["state"]["key"]);
        assert!(event["data"]["actor"]["via"].is_string(), "{event}");
    }
    let of = |kind: &str| -> Vec<Value> {
        got.iter()
            .map(|r| r.json())
            .filter(|e| e["type"] == format!("dev.stategate.{kind}"))
            .collect()
    };
    let tf_writes: Vec<Value> = of("state.written")
        .into_iter()
        .filter(|e| e["subject"] == "tf/app")
        .collect();
    assert!(
        tf_writes.len() >= 2,
        "apply and destroy each write: {tf_writes:?}"
    );
    assert!(
        tf_writes
            .iter()
            .all(|e| e["data"]["serial"].is_u64() && e["data"]["version"].is_u64())
    );
    assert_eq!(tf_writes[0]["data"]["actor"]["via"], "http");
    assert_eq!(tf_writes[0]["data"]["actor"]["client"], "127.0.0.1");
    let refused = &of("state.write_refused")[0]["data"];
    assert_eq!(refused["details"]["refusal"], "stale", "{refused}");
    assert_eq!(refused["serial"], 1);
    let forced = &of("lock.force_released")[0]["data"];
    assert_eq!(forced["details"]["previous_holder"], "ann@ws");
    let restored = &of("state.restored")[0]["data"];
    assert_eq!(restored["details"]["restored_version"], 1);
    assert_eq!(
        restored["actor"]["via"], "cli",
        "an operator's restore is sent by the server"
    );
    assert!(restored["version"].is_u64(), "{restored}");
    let held_too_long = of("lock.held_too_long");
    let bob = held_too_long.iter().find(|e| e["subject"] == "ops/held");
    assert_eq!(bob.unwrap()["data"]["details"]["holder"], "bob@ci");

    // Told once per lock, however long it stays held.
    std::thread::sleep(Duration::from_secs(4));
    let again = receiver
        .delivered("all")
        .iter()
        .filter(|r| r.json()["type"] == "dev.stategate.lock.held_too_long")
        .count();
    assert_eq!(again, 2, "one lock.held_too_long per lock");
    let ids: Vec<String> = receiver
        .delivered("all")
        .iter()
        .map(|r| r.event_id())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every event has an id of its own");
    assert!(
        outbox_ids(&peer).is_empty(),
        "the outbox is empty once all is sent"
    );
}

#[test]
fn notify_a_change_refused_by_a_states_protection_is_a_refused_write() {
    use base64::Engine;
    let password = "root-pass-7c2k";
    let (peer, receiver, cfg, _dir) = setup(Mode::Up, |r| {
        format!(
            "auth:\n  users:\n    - name: root\n      password_hash: \"{}\"\n      \
             rules: [{{keys: \"**\", access: admin}}]\n  protected:\n    - keys: \"prod/**\"\n      \
             writers: {{claims: {{ref_protected: \"true\"}}}}\nnotifications:\n{}",
            hash_password(password),
            destination(r, "p", "    events: [state.write_refused]\n")
        )
    });
    let server = serve(&peer, &cfg);
    let root = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("root:{password}"))
    );
    let doc = state_doc("lin-p", 1, "x");
    let refused = http_with(
        "POST",
        &server.state_url("prod/app"),
        &[("Authorization", &root)],
        &doc,
    );
    assert_eq!(refused.0, 403);
    let allowed = http_with(
        "POST",
        &server.state_url("dev/app"),
        &[("Authorization", &root)],
        &doc,
    );
    assert_eq!(allowed.0, 200);

    let got = receiver.wait_for("p", Duration::from_secs(20), |d| !d.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.delivered("p").len(), 1, "only the refusal");
    let event = got[0].json();
    assert_eq!(event["type"], "dev.stategate.state.write_refused");
    assert_eq!(event["subject"], "prod/app");
    assert_eq!(event["data"]["details"]["refusal"], "protected");
    assert_eq!(event["data"]["actor"]["identity"], "user:root");
    assert!(
        event["data"]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("protected"),
        "{event}"
    );
}

#[test]
fn notify_a_slack_destination_and_key_patterns_filter() {
    let (peer, receiver, cfg, _dir) = setup(Mode::Up, |r| {
        format!(
            "notifications:\n{}{}  - name: chat\n    url: {}\n    format: slack\n    events: [state.written]\n",
            destination(
                r,
                "prod",
                "    keys: prod/**\n    events: [state.written, lock.taken]\n"
            ),
            destination(r, "blue", "    workspaces: [blue]\n"),
            r.url("chat"),
        )
    });
    let server = serve(&peer, &cfg);
    for key in ["prod/net", "staging/net", "prod/db/main"] {
        let url = server.state_url(key);
        assert_eq!(http("POST", &url, &state_doc("lin-f", 1, key)).0, 200);
    }
    let blue = format!("{}?workspace=blue", server.state_url("staging/net"));
    assert_eq!(http("POST", &blue, &state_doc("lin-b", 1, "b")).0, 200);

    let chat = receiver.wait_for("chat", Duration::from_secs(20), |d| d.len() >= 4);
    let prod = receiver.wait_for("prod", Duration::from_secs(20), |d| d.len() >= 2);
    let in_blue = receiver.wait_for("blue", Duration::from_secs(20), |d| !d.is_empty());
    std::thread::sleep(Duration::from_secs(3));

    let subjects = |rs: &[Received]| -> BTreeSet<String> {
        rs.iter()
            .map(|r| r.json()["subject"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        subjects(&receiver.delivered("prod")),
        ["prod/db/main", "prod/net"].map(String::from).into(),
        "keys: prod/** takes the prod states only"
    );
    assert_eq!(prod.len(), 2);
    assert_eq!(
        subjects(&receiver.delivered("blue")),
        ["staging/net (workspace blue)".to_string()].into()
    );
    assert_eq!(in_blue.len(), 1);

    let mut lines: Vec<String> = receiver
        .delivered("chat")
        .iter()
        .map(|r| {
            assert_eq!(r.header("Content-Type"), Some("application/json"));
            assert!(
                r.header("Stategate-Signature").is_none(),
                "a slack destination without secret_env is not signed"
            );
            let body = r.json();
            assert_eq!(body.as_object().unwrap().len(), 1, "only `text`: {body}");
            body["text"].as_str().unwrap().to_string()
        })
        .collect();
    lines.sort();
    assert_eq!(chat.len(), 4);
    assert_eq!(
        lines,
        [
            "stategate: prod/db/main was written by someone via http from 127.0.0.1 (serial 1)",
            "stategate: prod/net was written by someone via http from 127.0.0.1 (serial 1)",
            "stategate: staging/net (workspace blue) was written by someone via http from 127.0.0.1 (serial 1)",
            "stategate: staging/net was written by someone via http from 127.0.0.1 (serial 1)",
        ]
    );
}

#[test]
fn notify_a_receiver_down_loses_nothing_and_slows_no_request() {
    let (peer, receiver, cfg, _dir) = setup(Mode::Hang, |r| {
        format!("notifications:\n{}", destination(r, "down", ""))
    });
    let server = serve(&peer, &cfg);

    // Every attempt hangs until its timeout, and the requests do not wait.
    let url = server.state_url("ops/busy");
    let mut slowest = Duration::ZERO;
    for serial in 1..=12 {
        let lock = lock_info("d0000000-0000-4000-8000-000000000001", "ci@runner");
        for (method, body) in [
            ("LOCK", lock.clone()),
            ("POST", state_doc("lin-d", serial, "x")),
            ("UNLOCK", lock),
        ] {
            let started = Instant::now();
            let target = match method {
                "POST" => format!("{url}?ID=d0000000-0000-4000-8000-000000000001"),
                _ => url.clone(),
            };
            assert_eq!(http(method, &target, &body).0, 200, "{method}");
            slowest = slowest.max(started.elapsed());
        }
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a request waited on the receiver: {slowest:?}"
    );
    let waiting = outbox_ids(&peer);
    assert_eq!(waiting.len(), 36, "every event waits in the outbox");
    assert!(
        !receiver.received().is_empty(),
        "attempts were made meanwhile"
    );

    // Down differently for a while, then up: every event arrives.
    receiver.set_mode(Mode::HangUp);
    std::thread::sleep(Duration::from_secs(3));
    receiver.set_mode(Mode::Up);
    let got = receiver.wait_for("down", Duration::from_secs(90), |d| {
        let ids: BTreeSet<String> = d.iter().map(|r| r.event_id()).collect();
        ids.is_superset(&waiting)
    });
    let ids: BTreeSet<String> = got.iter().map(|r| r.event_id()).collect();
    let missing: Vec<_> = waiting.difference(&ids).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(got.iter().all(|r| r.signed));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox_ids(&peer).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        outbox_ids(&peer).is_empty(),
        "delivered entries leave the outbox"
    );
    let metrics = text(&http("GET", &format!("{}/metrics", server.url), b"").1);
    assert!(
        metrics.contains("stategate_notifications_retried_total"),
        "{metrics}"
    );
    let delivered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stategate_notifications_delivered_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(delivered >= 36, "{metrics}");
}

#[test]
fn notify_events_pending_when_stategate_is_killed_are_sent_after_restart() {
    let (peer, receiver, cfg, _dir) = setup(Mode::Failing, |r| {
        format!("notifications:\n{}", destination(r, "k", ""))
    });
    let server = serve(&peer, &cfg);
    for n in 1..=5 {
        let url = server.state_url(&format!("crash/s{n}"));
        assert_eq!(http("POST", &url, &state_doc("lin-k", 1, "x")).0, 200);
    }
    let waiting = outbox_ids(&peer);
    assert_eq!(waiting.len(), 5);
    let failed = receiver.wait_for("k", Duration::ZERO, |_| true);
    assert!(failed.is_empty(), "nothing was taken yet");
    std::thread::sleep(Duration::from_millis(500));
    server.kill();

    receiver.set_mode(Mode::Up);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        receiver.delivered("k").is_empty(),
        "nobody sends while stategate is down"
    );
    let _restarted = serve(&peer, &cfg);
    let got = receiver.wait_for("k", Duration::from_secs(60), |d| {
        d.iter()
            .map(|r| r.event_id())
            .collect::<BTreeSet<_>>()
            .is_superset(&waiting)
    });
    let ids: BTreeSet<String> = got.iter().map(|r| r.event_id()).collect();
    assert!(
        ids.is_superset(&waiting),
        "lost: {:?}",
        waiting.difference(&ids)
    );
}

#[test]
fn notify_three_replicas_on_one_store_deliver_every_event_once() {
    let (peer, receiver, cfg, _dir) = setup(Mode::Up, |r| {
        format!(
            "lock_held_too_long: 2s\nnotifications:\n{}",
            destination(r, "r", "    events: [state.written, lock.held_too_long]\n")
        )
    });
    let mut replicas: Vec<Server> = (0..3).map(|_| serve(&peer, &cfg)).collect();
    // Held back at first, so every replica finds entries of the others
    // waiting when the receiver comes up.
    receiver.set_mode(Mode::Failing);
    let mut writes = 0;
    for round in 0..10 {
        for (i, server) in replicas.iter().enumerate() {
            let url = server.state_url(&format!("fleet/r{i}/s{round}"));
            assert_eq!(http("POST", &url, &state_doc("lin-r", 1, "x")).0, 200);
            writes += 1;
        }
    }
    // One replica dies with its share of the events waiting: the others
    // take them over, and the lock-age check with them.
    std::thread::sleep(Duration::from_secs(1));
    replicas.remove(0).kill();
    let held = replicas[0].state_url("fleet/held");
    assert_eq!(
        http(
            "LOCK",
            &held,
            &lock_now("a0000000-0000-4000-8000-000000000003", "eve@ci")
        )
        .0,
        200
    );
    std::thread::sleep(Duration::from_secs(1));
    receiver.set_mode(Mode::Up);
    let expected = writes + 1;
    let got = receiver.wait_for("r", Duration::from_secs(90), |d| {
        d.iter()
            .map(|r| r.event_id())
            .collect::<BTreeSet<_>>()
            .len()
            >= expected
    });
    // Time for a replica that would send something twice to do it.
    std::thread::sleep(Duration::from_secs(4));
    let got_after = receiver.delivered("r");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got_after {
        *per_id.entry(r.event_id()).or_default() += 1;
    }
    assert_eq!(
        per_id.len(),
        expected,
        "every event delivered, none lost ({} seen)",
        got.len()
    );
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "claims keep replicas from sending one event twice: {twice:?}"
    );
    let held_told: Vec<Value> = got_after
        .iter()
        .map(|r| r.json())
        .filter(|e| e["type"] == "dev.stategate.lock.held_too_long")
        .collect();
    assert_eq!(
        held_told.len(),
        1,
        "one replica checks the locks: {held_told:?}"
    );
    assert_eq!(held_told[0]["subject"], "fleet/held");
    let written: BTreeSet<String> = got_after
        .iter()
        .map(|r| r.json())
        .filter(|e| e["type"] == "dev.stategate.state.written")
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(written.len(), writes);
    assert!(outbox_ids(&peer).is_empty());
}

#[test]
fn notify_what_cannot_be_delivered_is_kept_shown_and_counted() {
    use base64::Engine;
    // root reads every state; ann only team-a's, so is told nothing of
    // the undelivered notification about lost/one, not even a count.
    let users = [
        ("root", "root-pass-4k2m", "**"),
        ("ann", "ann-pass-9d1x", "team-a/**"),
    ];
    let (peer, receiver, cfg, _dir) = setup(Mode::Failing, |r| {
        let mut yaml = String::from("auth:\n  users:\n");
        for (name, password, keys) in users {
            yaml.push_str(&format!(
                "    - name: {name}\n      password_hash: \"{}\"\n      \
                 rules: [{{keys: \"{keys}\", access: admin}}]\n",
                hash_password(password)
            ));
        }
        format!(
            "{yaml}notification_max_attempts: 2\nnotifications:\n{}",
            destination(r, "dead", "")
        )
    });
    let [root, ann] = users.map(|(name, password, _)| {
        let pair = format!("{name}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    });
    let server = serve(&peer, &cfg);
    let get = |path: &str, who: &str| {
        let url = format!("{}{path}", server.url);
        text(&http_with("GET", &url, &[("Authorization", who)], b"").1)
    };
    let url = server.state_url("lost/one");
    let doc = state_doc("lin-u", 1, "x");
    assert_eq!(
        http_with("POST", &url, &[("Authorization", &root)], &doc).0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // The sender keeps the record first, then takes it out of the outbox:
    // both are waited for.
    let kept = loop {
        let kept: Vec<String> = peer
            .object_keys()
            .into_iter()
            .filter(|k| k.starts_with(".stategate/undelivered/dead/"))
            .collect();
        let moved = !kept.is_empty() && outbox_ids(&peer).is_empty();
        if moved || Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(kept.len(), 1, "given up on after two attempts, and kept");
    assert_eq!(receiver.received().len(), 2, "two attempts, no more");
    assert!(outbox_ids(&peer).is_empty());
    let entry: Value = serde_json::from_slice(&peer.object_bytes(&kept[0])).unwrap();
    assert_eq!(entry["attempts"], 2);
    assert!(
        entry["last_error"].as_str().unwrap().contains("500"),
        "{entry}"
    );

    // Counted on the next pass of the sender.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = text(&http("GET", &format!("{}/metrics", server.url), b"").1);
    assert!(
        metrics.contains("stategate_notifications_undeliverable 1"),
        "{metrics}"
    );
    assert!(metrics.contains("stategate_notifications_given_up_total 1"));
    assert!(metrics.contains("stategate_notifications_pending 0"));
    let home = get("/ui/", &root);
    assert!(
        home.contains("1 notification could not be delivered"),
        "the banner counts it: {home}"
    );
    let page = get("/ui/notifications", &root);
    let id = entry["record"]["id"].as_str().unwrap();
    assert!(
        page.contains(id) && page.contains("lost/one") && page.contains("state.written"),
        "{page}"
    );
    assert!(
        !page.contains(&receiver.url("dead")),
        "the URL is never shown"
    );
    let home = get("/ui/", &ann);
    assert!(
        !home.contains("could not be delivered"),
        "a count over states ann may not read: {home}"
    );
    let page = get("/ui/notifications", &ann);
    assert!(
        !page.contains(id) && page.contains(r#"<span class="count">0</span>"#),
        "{page}"
    );
}

#[test]
fn notify_a_key_that_does_not_open_a_state_is_notified() {
    let peer = LocalPeer::new();
    let receiver = Receiver::start(SECRET);
    let sealing = Sealing::new(&["k1"]);
    let notifications = format!(
        "notifications:\n{}",
        destination(&receiver, "keys", "    events: [encryption.key_unusable]\n")
    );
    let with_notifications = |ids: &[&str]| {
        sealing.write_config(ids, false);
        let yaml = std::fs::read_to_string(sealing.config()).unwrap();
        std::fs::write(sealing.config(), format!("{yaml}{notifications}")).unwrap();
    };
    with_notifications(&["k1"]);
    let server = serve(&peer, &sealing.config());
    let url = server.state_url("sealed/app");
    assert_eq!(http("POST", &url, &state_doc("lin-s", 1, "x")).0, 200);
    drop(server);

    with_notifications(&["k2"]);
    let server = serve(&peer, &sealing.config());
    for _ in 0..3 {
        assert_eq!(http("GET", &server.state_url("sealed/app"), b"").0, 503);
    }
    let got = receiver.wait_for("keys", Duration::from_secs(20), |d| !d.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        receiver.delivered("keys").len(),
        1,
        "told once, not on every read"
    );
    let event = got[0].json();
    assert_eq!(event["type"], "dev.stategate.encryption.key_unusable");
    assert_eq!(event["subject"], "sealed/app");
    assert!(
        event["data"]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("k1"),
        "{event}"
    );
}

#[test]
fn notify_wrong_settings_stop_start_up_naming_the_setting() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let cases = [
        (
            "notifications:\n  - {name: a, url: 'http://hooks.example.com/x', secret_env: HOOK_SECRET}\n",
            "notifications[0].url",
            &[SECRET_ENV][..],
        ),
        (
            "notifications:\n  - {name: a, url: 'https://hooks.example.com/x', events: [state.exploded], secret_env: HOOK_SECRET}\n",
            "notifications[0].events",
            &[SECRET_ENV][..],
        ),
        (
            "notifications:\n  - {name: a, url: 'https://hooks.example.com/x', secret_env: UNSET_HOOK_SECRET}\n",
            "notifications[0].secret_env",
            &[][..],
        ),
        ("lock_held_too_long: soon\n", "lock_held_too_long", &[][..]),
    ];
    for (yaml, setting, env) in cases {
        let cfg = config(dir.path(), yaml);
        let refused = Server::try_start(&peer, &["--config", cfg.to_str().unwrap()], env);
        let log = match refused {
            Ok(_) => panic!("started with {yaml}"),
            Err(log) => log,
        };
        assert!(
            log.contains(&format!("setting `{setting}`")),
            "{yaml}: {log}"
        );
        assert!(!log.contains(SECRET));
    }
}

/// The Python block of `docs/notifications.md`, as a reader copies it.
fn documented_receiver() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/notifications.md")).unwrap();
    let start = doc
        .find("```python\n")
        .expect("a python block in docs/notifications.md");
    let rest = &doc[start + "```python\n".len()..];
    rest[..rest.find("```").unwrap()].to_string()
}

#[test]
fn notify_the_documented_python_receiver_verifies_what_stategate_sends() {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("python3 is required to run the documented receiver: install python3");
    let dir = tempfile::TempDir::new().unwrap();
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, documented_receiver()).unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(python)
        .arg(&script)
        .env("STATEGATE_HOOK_SECRET", SECRET)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let hook = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the documented receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A forged request is refused.
    let forged = http_with(
        "POST",
        &hook,
        &[
            ("Stategate-Signature", "t=1,v1=00"),
            ("Stategate-Event-Id", "x"),
        ],
        b"{}",
    );
    assert_eq!(forged.0, 401);

    let peer = LocalPeer::new();
    let cfg = config(
        dir.path(),
        &format!(
            "notifications:\n  - name: py\n    url: {hook}\n    secret_env: STATEGATE_HOOK_SECRET\n    events: [state.written]\n"
        ),
    );
    let server = Server::try_start(
        &peer,
        &["--config", cfg.to_str().unwrap()],
        &[("STATEGATE_HOOK_SECRET", SECRET)],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    let url = server.state_url("docs/py");
    assert_eq!(http("POST", &url, &state_doc("lin-py", 1, "x")).0, 200);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the documented receiver printed the verified event");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{line}");
    assert_eq!(words[0].len(), 32, "{line}");
    assert_eq!(&words[1..], ["dev.stategate.state.written", "docs/py"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox_ids(&peer).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        outbox_ids(&peer).is_empty(),
        "the receiver's 200 took it out of the outbox"
    );
}
