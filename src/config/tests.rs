//! The merge of file, environment and flags, and the checks of every
//! server setting.

use super::*;
use std::time::Duration;

fn no_env(_: &str) -> Option<String> {
    None
}

fn file(yaml: &str) -> FileConfig {
    file_in(yaml, ".")
}

/// A configuration file read from the directory `dir`.
fn file_in(yaml: &str, dir: &str) -> FileConfig {
    FileConfig::parse(yaml, PathBuf::from(dir)).unwrap()
}

fn flags(pairs: &[(&'static str, &str)]) -> CommandLine {
    CommandLine {
        flags: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        store: Vec::new(),
    }
}

/// The settings of a configuration file alone.
fn resolved(yaml: &str) -> Settings {
    resolve(&file(yaml), &no_env, &CommandLine::default()).unwrap()
}

/// Why a configuration file alone is refused.
fn refusal(yaml: &str) -> String {
    resolve(&file(yaml), &no_env, &CommandLine::default())
        .unwrap_err()
        .to_string()
}

/// Each configuration file is refused naming its setting.
fn assert_each_refused(cases: &[(&str, &str)]) {
    for (yaml, setting) in cases {
        let e = refusal(yaml);
        assert!(e.contains(setting), "{yaml}: {e}");
    }
}

#[test]
fn defaults_are_local_on_loopback() {
    let s = resolve(&FileConfig::default(), &no_env, &CommandLine::default()).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.backend.name, "local");
    assert_eq!(s.store.get("path"), Some("./stategate-data"));
    assert_eq!(s.workspace_key_prefix, "workspaces");
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.limits.max_body_bytes, 512 * 1024 * 1024);
    assert_eq!(s.limits.header_timeout, Duration::from_secs(15));
    assert_eq!(s.history_keep, 100);
    assert!(s.protect_lineage);
}

#[test]
fn proxy_settings_are_parsed_and_checked() {
    let f = file(
        "base_path: /tfstate/\ntrusted_proxies: [10.0.0.0/8, 127.0.0.1]\nadmin_listen: 127.0.0.1:9090\n",
    );
    let s = resolve(&f, &no_env, &CommandLine::default()).unwrap();
    assert_eq!(s.base_path, "/tfstate");
    assert_eq!(s.trusted_proxies.len(), 2);
    assert!(s.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(s.admin_listen.unwrap().port(), 9090);
    let env =
        |k: &str| (k == "STATEGATE_TRUSTED_PROXIES").then(|| "192.168.0.0/16, ::1".to_string());
    let s = resolve(&FileConfig::default(), &env, &CommandLine::default()).unwrap();
    assert_eq!(s.trusted_proxies.len(), 2);
    assert_eq!(s.base_path, "");
    assert_each_refused(&[
        ("base_path: tfstate\n", "base_path"),
        ("base_path: /a/../b\n", "base_path"),
        ("base_path: /a b\n", "base_path"),
        ("trusted_proxies: [10.0.0.0/99]\n", "trusted_proxies"),
        ("admin_listen: nowhere\n", "admin_listen"),
    ]);
}

#[test]
fn limits_merge_and_are_checked() {
    let f = file("header_timeout: 20\nidle_timeout: 2m\nmax_connections: 7\nbody_min_rate: 0\n");
    let env = |k: &str| match k {
        "STATEGATE_HEADER_TIMEOUT" => Some("500ms".to_string()),
        "STATEGATE_MAX_LOCK_BYTES" => Some("1000".to_string()),
        _ => None,
    };
    let cli = flags(&[("max-connections", "9")]);
    let s = resolve(&f, &env, &cli).unwrap();
    assert_eq!(s.limits.header_timeout, Duration::from_millis(500));
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.limits.max_connections, 9);
    assert_eq!(s.limits.max_lock_bytes, 1000);
    assert_eq!(s.limits.body_min_rate, 0);
    assert_eq!(s.limits.shutdown_grace, Duration::from_secs(30));
    assert_each_refused(&[
        ("header_timeout: 0\n", "header_timeout"),
        ("idle_timeout: soon\n", "idle_timeout"),
        ("max_connections: 0\n", "max_connections"),
        ("max_header_bytes: 100\n", "max_header_bytes"),
        ("shutdown_grace: 5x\n", "shutdown_grace"),
    ]);
}

#[test]
fn command_line_beats_environment_beats_file() {
    let f = file_in(
        "listen: 127.0.0.1:1\nbackend:\n  storageType: sqlite\n  config:\n    path: from-file.db\n    workspace_key_prefix: filews\n",
        "/base",
    );
    let env = |k: &str| match k {
        "STATEGATE_LISTEN" => Some("127.0.0.1:2".to_string()),
        "STATEGATE_SQLITE_PATH" => Some("from-env.db".to_string()),
        "STATEGATE_WORKSPACE_KEY_PREFIX" => Some("envws".to_string()),
        _ => None,
    };
    let mut cli = flags(&[("listen", "127.0.0.1:3")]);
    let s = resolve(&f, &no_env, &cli).unwrap();
    assert_eq!(
        s.store.path("path"),
        Some(PathBuf::from("/base/from-file.db"))
    );
    cli.store = vec![("path".into(), "from-cli.db".into())];
    let s = resolve(&f, &env, &cli).unwrap();
    assert_eq!(s.listen.port(), 3);
    assert_eq!(s.backend.name, "sqlite");
    assert_eq!(s.store.get("path"), Some("from-cli.db"));
    // Typed where the command runs, so taken from there.
    assert_eq!(s.store.path("path"), Some(PathBuf::from("from-cli.db")));
    assert_eq!(s.workspace_key_prefix, "envws");
}

#[test]
fn environment_beats_file_when_no_flag() {
    let f = file("listen: 127.0.0.1:1\n");
    let env = |k: &str| (k == "STATEGATE_LISTEN").then(|| "127.0.0.1:2".to_string());
    let s = resolve(&f, &env, &CommandLine::default()).unwrap();
    assert_eq!(s.listen.port(), 2);
}

#[test]
fn unknown_store_key_is_named() {
    let cli = CommandLine {
        store: vec![("bucket".into(), "x".into())],
        ..Default::default()
    };
    let err = resolve(&FileConfig::default(), &no_env, &cli).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Unknown { setting, .. } if setting == "bucket"),
        "{err}"
    );
    assert!(err.to_string().contains("storageType local"), "{err}");
}

#[test]
fn unknown_file_key_is_refused() {
    for (yaml, key) in [
        ("listne: x\n", "`listne`"),
        ("tls:\n  cret: a\n", "`tls.cret`"),
        ("backend:\n  storagetype: s3\n", "`backend.storagetype`"),
    ] {
        let err = FileConfig::parse(yaml, PathBuf::from(".")).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }
    let err = FileConfig::parse("listen: [a, b]\n", PathBuf::from(".")).unwrap_err();
    assert!(err.to_string().starts_with("setting `listen`"), "{err}");
}

#[test]
fn relative_files_start_where_they_were_written() {
    let f = file_in(
        "tls:\n  cert: c.pem\n  key: k.pem\naudit_log: audit.jsonl\n",
        "/etc/stategate",
    );
    let s = resolve(&f, &no_env, &flags(&[("tls-key", "here.pem")])).unwrap();
    let tls = s.tls.unwrap();
    assert_eq!(tls.cert, PathBuf::from("/etc/stategate/c.pem"));
    assert_eq!(tls.key, PathBuf::from("here.pem"));
    assert_eq!(
        s.audit_log,
        Some(PathBuf::from("/etc/stategate/audit.jsonl"))
    );
}

#[test]
fn ui_settings_are_read_and_checked() {
    let s = resolve(&FileConfig::default(), &no_env, &CommandLine::default()).unwrap();
    assert_eq!(s.ui.stale_lock_hours, 4);
    assert_eq!(s.ui.max_view_bytes, 512 * 1024 * 1024);
    assert!(s.ui.csrf_key.is_none());
    let env = |k: &str| (k == "STATEGATE_UI_MAX_VIEW_BYTES").then(|| "1024".to_string());
    let s = resolve(&FileConfig::default(), &env, &CommandLine::default()).unwrap();
    assert_eq!(s.ui.max_view_bytes, 1024);
    let s = resolved("ui:\n  hosts: [TF.example.com]\n");
    assert_eq!(s.ui.hosts, ["tf.example.com"]);
    let s = resolve(
        &FileConfig::default(),
        &no_env,
        &flags(&[("ui-hosts", "a.example, b.example")]),
    )
    .unwrap();
    assert_eq!(s.ui.hosts, ["a.example", "b.example"]);
    for (yaml, setting) in [
        ("ui:\n  max_view_bytes: 0\n", "ui.max_view_bytes"),
        ("ui:\n  csrf_key: short\n", "ui.csrf_key"),
        ("ui:\n  hosts: [https://tf.example.com]\n", "ui.hosts"),
    ] {
        let e = refusal(yaml);
        assert!(
            e.starts_with(&format!("setting `{setting}`")),
            "{yaml}: {e}"
        );
    }
    let s = resolve(
        &file(&format!("ui:\n  csrf_key: {}\n", "k".repeat(40))),
        &no_env,
        &CommandLine::default(),
    )
    .unwrap();
    let debug = format!("{:?}", s.ui);
    assert!(!debug.contains("kkkk"), "{debug}");
}

#[test]
fn the_admin_address_has_its_own_certificate() {
    let s = resolved("admin_listen: 127.0.0.1:9090\nadmin_tls:\n  cert: a.pem\n  key: b.pem\n");
    assert_eq!(s.admin_tls.unwrap().cert, PathBuf::from("./a.pem"));
    assert!(s.tls.is_none());
    let e = refusal("admin_tls:\n  cert: a.pem\n  key: b.pem\n");
    assert!(e.contains("needs admin_listen"), "{e}");
    let e = refusal("admin_listen: 127.0.0.1:9090\nadmin_tls:\n  cert: a.pem\n");
    assert!(e.contains("admin_tls.key"), "{e}");
}

#[test]
fn unknown_storage_type_is_named() {
    let cli = flags(&[("storage-type", "floppy")]);
    let err = resolve(&FileConfig::default(), &no_env, &cli).unwrap_err();
    assert!(
        err.to_string().contains("storageType") && err.to_string().contains("floppy"),
        "{err}"
    );
}

#[test]
fn bad_listen_is_named() {
    let cli = flags(&[("listen", "nowhere")]);
    let err = resolve(&FileConfig::default(), &no_env, &cli).unwrap_err();
    assert!(err.to_string().starts_with("setting `listen`"), "{err}");
}

#[test]
fn both_spellings_in_one_file_are_refused() {
    let f = file("backend:\n  config:\n    workspace_key_prefix: a\n    workspaceKeyPrefix: b\n");
    let err = resolve(&f, &no_env, &CommandLine::default()).unwrap_err();
    assert!(err.to_string().contains("set twice"), "{err}");
}

#[test]
fn yaml_numbers_and_bools_become_values() {
    let f = file("backend:\n  config:\n    allow_unsafe_locks: true\n");
    let s = resolve(&f, &no_env, &CommandLine::default()).unwrap();
    assert_eq!(s.store.bool("allow_unsafe_locks"), Ok(true));
}

#[test]
fn workspace_key_prefix_is_a_top_level_setting_checked_once() {
    let s = resolved("workspace_key_prefix: \"env:\"\n");
    assert_eq!(s.workspace_key_prefix, "env:");
    assert_eq!(s.store.get("workspace_key_prefix"), None);
    let twice =
        refusal("workspace_key_prefix: a\nbackend:\n  config:\n    workspaceKeyPrefix: b\n");
    assert!(
        twice.starts_with("setting `workspace_key_prefix`"),
        "{twice}"
    );
    let reserved = refusal("workspace_key_prefix: .stategate/x\n");
    assert!(
        reserved.starts_with("setting `workspace_key_prefix`"),
        "{reserved}"
    );
}

#[test]
fn override_needs_key_and_equals() {
    assert_eq!(parse_override("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(parse_override("novalue").is_err());
    assert!(parse_override("=x").is_err());
}

#[test]
fn notifications_are_a_section_with_their_settings_beside_it() {
    let none = resolved("");
    assert!(none.notifications.destinations.is_empty());
    assert_eq!(
        none.notifications.lock_held_too_long,
        Some(Duration::from_secs(7200))
    );
    assert_eq!(none.notifications.max_attempts, 24);

    let s = resolved(
        "lock_held_too_long: 0\nnotification_max_attempts: 3\nui:\n  hosts: [sg.example]\n\
         notifications:\n  - {name: a, url: 'https://hooks.example/x', secret_env: S}\n",
    );
    assert_eq!(s.notifications.lock_held_too_long, None, "0 turns it off");
    assert_eq!(s.notifications.max_attempts, 3);
    assert_eq!(s.notifications.destinations[0].name, "a");
    assert_eq!(s.notifications.source, "stategate://sg.example");

    let by_flag = resolve(&file(""), &no_env, &flags(&[("lock-held-too-long", "90m")])).unwrap();
    assert_eq!(
        by_flag.notifications.lock_held_too_long,
        Some(Duration::from_secs(5400))
    );

    assert_each_refused(&[
        (
            "notification_max_attempts: 0\n",
            "notification_max_attempts",
        ),
        ("lock_held_too_long: later\n", "lock_held_too_long"),
        (
            "notifications:\n  - {name: a, url: 'http://10.0.0.1/x', secret_env: S}\n",
            "notifications[0].url",
        ),
        ("notifications: {name: a}\n", "notifications"),
    ]);
    let defaults = file("notifications: []\n");
    let e = file("").over(defaults).unwrap_err().to_string();
    assert!(e.contains("notifications"), "{e}");
}

#[test]
fn explore_refresh_is_off_at_zero_and_otherwise_at_least_a_second() {
    let refresh = |yaml: &str| resolved(yaml).explore.refresh;
    assert_eq!(refresh(""), Some(std::time::Duration::from_secs(30)));
    assert_eq!(refresh("explore:\n  refresh: 0\n"), None);
    assert_eq!(
        refresh("explore:\n  refresh: 2m\n"),
        Some(std::time::Duration::from_secs(120))
    );
    let e = refusal("explore:\n  refresh: 500ms\n");
    assert!(
        e.contains("explore.refresh") && e.contains("0 (off)"),
        "{e}"
    );
}

/// A decimal number YAML would read as another text (`1.10` as `1.1`) is
/// refused naming its setting, in the store's section and the server's;
/// whole numbers and quoted text are taken as written.
#[test]
fn decimal_numbers_are_refused_for_what_yaml_would_make_of_them() {
    assert_each_refused(&[
        (
            "backend:\n  storageType: s3\n  config:\n    prefix: 1.10\n",
            "`prefix`",
        ),
        (
            "backend:\n  storageType: local\n  config:\n    path: 2024.10\n",
            "`path`",
        ),
        ("history_keep: 2.5\n", "`history_keep`"),
    ]);
    let s = resolved("backend:\n  storageType: local\n  config:\n    path: \"2024.10\"\n");
    assert_eq!(s.store.get("path"), Some("2024.10"));
    assert_eq!(resolved("history_keep: 7\n").history_keep, 7);
}
