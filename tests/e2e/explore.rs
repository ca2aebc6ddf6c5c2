//! The fleet explorer: states written by real `terraform apply` runs (with
//! a local module) and by hand-made state JSON, searched through
//! `/api/v1/search` by every filter and checked against what the states
//! hold; CSV and paging; who sees what; the index following this server's
//! writes and deletes at once, and another replica's on its refresh; and
//! `stategate state find`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::stores::LocalPeer;
use crate::support::*;

const ROOT: (&str, &str) = ("root", "root-pass-7f3k");
const READER: (&str, &str) = ("reader", "reader-pass-2m9q");
const OUTSIDER: (&str, &str) = ("outsider", "outsider-pass-5c1x");

fn basic((user, pass): (&str, &str)) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A configuration where root administers everything, reader reads
/// `team-a/**` only and outsider may read outputs only.
fn auth_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("stategate.yaml");
    let mut yaml = String::from("auth:\n  users:\n");
    for ((user, pass), keys, access) in [
        (ROOT, "**", "admin"),
        (READER, "team-a/**", "read"),
        (OUTSIDER, "**", "outputs"),
    ] {
        yaml.push_str(&format!(
            "    - name: {user}\n      password_hash: \"{}\"\n      rules: [{{keys: \"{keys}\", access: {access}}}]\n",
            hash_password(pass)
        ));
    }
    std::fs::write(&config, yaml).unwrap();
    config
}

fn start(peer: &LocalPeer, config: &std::path::Path) -> Server {
    start_refreshing(peer, config, "1s")
}

/// A server with `config` whose explorer lists the store every `refresh`.
fn start_refreshing(peer: &LocalPeer, config: &std::path::Path, refresh: &str) -> Server {
    Server::start_with(
        peer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--explore-refresh",
            refresh,
        ],
    )
}

/// A search as `who`, JSON.
fn search(server: &Server, who: (&str, &str), query: &str) -> Value {
    let url = format!("{}/api/v1/search?{query}", server.url);
    let (status, body) = http_with("GET", &url, &[("Authorization", &basic(who))], b"");
    let body = text(&body);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"))
}

fn keys(found: &Value) -> Vec<String> {
    found["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect()
}

/// Searches until `keys` of the answer is `want`, for at most `within`.
fn eventually(server: &Server, query: &str, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let found = search(server, ROOT, query);
        if keys(&found) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: still {:?} after {within:?}, want {want:?}",
            keys(&found)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hand-made state: `(module, type, name, provider)` blocks.
fn state(version: &str, serial: u64, blocks: &[(&str, &str, &str, &str)]) -> Vec<u8> {
    let resources: Vec<Value> = blocks
        .iter()
        .map(|(module, t, name, provider)| {
            let mut block = json!({
                "mode": "managed", "type": t, "name": name,
                "provider": format!("provider[\"{provider}\"]"),
                "instances": [{"schema_version": 0, "attributes": {"password": "s3cr3t"}}],
            });
            if !module.is_empty() {
                block["module"] = json!(module);
            }
            block
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": 4, "terraform_version": version, "serial": serial,
        "lineage": format!("lineage-{version}"), "outputs": {"pw": {"value": "s3cr3t", "type": "string"}},
        "resources": resources,
    }))
    .unwrap()
}

fn post(server: &Server, key: &str, body: &[u8]) {
    let (status, out) = http_with(
        "POST",
        &server.state_url(key),
        &[("Authorization", &basic(ROOT))],
        body,
    );
    assert_eq!(status, 200, "POST {key}: {}", text(&out));
}

const AWS: &str = "registry.terraform.io/hashicorp/aws";

/// A configuration applying `terraform_data` resources (counted, and in a
/// local module) into `key` on `server`, as root.
fn apply(server: &Server, key: &str) -> Terraform {
    let address = server.state_url(key);
    let (user, pass) = ROOT;
    let tf = Terraform::new(&format!(
        r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
    username       = "{user}"
    password       = "{pass}"
  }}
}}
resource "terraform_data" "counted" {{
  count = 2
  input = "s3cr3t-${{count.index}}"
}}
module "inner" {{
  source = "./inner"
}}
"#
    ));
    std::fs::create_dir_all(tf.dir.path().join("inner")).unwrap();
    tf.write(
        "inner/main.tf",
        b"resource \"terraform_data\" \"x\" {\n  input = \"s3cr3t-module\"\n}\n",
    );
    tf.init_apply(&[]);
    tf
}

/// What a state body holds as the explorer shows it: each block's address,
/// type, provider source, module and instance count.
fn blocks_of(body: &Value) -> BTreeSet<(String, String, String, String, u64)> {
    body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let module = b["module"].as_str().unwrap_or("").to_string();
            let t = b["type"].as_str().unwrap().to_string();
            let address = match module.is_empty() {
                true => format!("{t}.{}", b["name"].as_str().unwrap()),
                false => format!("{module}.{t}.{}", b["name"].as_str().unwrap()),
            };
            let provider = b["provider"].as_str().unwrap();
            let provider = provider
                .split("provider[\"")
                .nth(1)
                .and_then(|p| p.split("\"]").next())
                .unwrap()
                .to_string();
            let instances = b["instances"].as_array().unwrap().len() as u64;
            (address, t, provider, module, instances)
        })
        .collect()
}

fn found_blocks(found: &Value, key: &str) -> BTreeSet<(String, String, String, String, u64)> {
    let state = found["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("{key} not found in {found}"));
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["type"].as_str().unwrap().to_string(),
                r["provider"].as_str().unwrap().to_string(),
                r["module"].as_str().unwrap().to_string(),
                r["instances"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn explore_finds_what_every_state_holds_for_whoever_may_read_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = auth_config(dir.path());
    let peer = LocalPeer::new();
    let server = start(&peer, &config);

    let _one = apply(&server, "team-a/tf-one.tfstate");
    let _two = apply(&server, "team-b/tf-two.tfstate");
    post(
        &server,
        "team-a/db.tfstate",
        &state(
            "1.4.6",
            1,
            &[
                ("module.db", "aws_db_instance", "main", AWS),
                ("", "aws_s3_bucket", "logs", AWS),
            ],
        ),
    );
    post(
        &server,
        "team-b/legacy.tfstate",
        &state("1.3.9", 4, &[("", "aws_db_instance", "old", AWS)]),
    );
    post(
        &server,
        "team-b/gcp.tfstate",
        &state(
            "1.6.2",
            2,
            &[(
                "module.net",
                "google_compute_network",
                "vpc",
                "registry.terraform.io/hashicorp/google",
            )],
        ),
    );
    let every = [
        "team-a/db.tfstate",
        "team-a/tf-one.tfstate",
        "team-b/gcp.tfstate",
        "team-b/legacy.tfstate",
        "team-b/tf-two.tfstate",
    ];
    eventually(&server, "", &every, Duration::from_secs(10));

    // Every state's resources are what its body holds, and nothing more.
    let all = search(&server, ROOT, "");
    assert_eq!(all["complete"], true);
    for key in every {
        let (status, body) = http_with(
            "GET",
            &server.state_url(key),
            &[("Authorization", &basic(ROOT))],
            b"",
        );
        assert_eq!(status, 200);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(found_blocks(&all, key), blocks_of(&body), "{key}");
        let found = all["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap();
        assert_eq!(found["serial"], body["serial"], "{key}");
        assert_eq!(
            found["terraform_version"], body["terraform_version"],
            "{key}"
        );
        assert_eq!(found["writer"], "user:root", "{key}");
    }
    assert!(
        !all.to_string().contains("s3cr3t"),
        "a value reached the answer: {all}"
    );
    let real = found_blocks(&all, "team-a/tf-one.tfstate");
    assert!(
        real.iter()
            .any(|(a, _, p, m, n)| a == "module.inner.terraform_data.x"
                && p == "terraform.io/builtin/terraform"
                && m == "module.inner"
                && *n == 1),
        "{real:?}"
    );
    assert!(
        real.iter()
            .any(|(a, _, _, _, n)| a == "terraform_data.counted" && *n == 2),
        "{real:?}"
    );

    // Each filter, alone and together.
    let find = |q: &str| keys(&search(&server, ROOT, q));
    assert_eq!(
        find("type=aws_db_instance"),
        ["team-a/db.tfstate", "team-b/legacy.tfstate"]
    );
    assert_eq!(
        find("type=aws_db_instance&provider=hashicorp/aws&module=module.db"),
        ["team-a/db.tfstate"]
    );
    assert_eq!(
        find(&format!("provider={AWS}")),
        find("provider=hashicorp/aws")
    );
    assert_eq!(find("provider=hashicorp/google"), ["team-b/gcp.tfstate"]);
    assert_eq!(
        find("address=module.inner.*"),
        ["team-a/tf-one.tfstate", "team-b/tf-two.tfstate"]
    );
    assert_eq!(
        find("terraform_version=%3C1.5"),
        ["team-a/db.tfstate", "team-b/legacy.tfstate"]
    );
    assert_eq!(
        find("terraform_version=%3E%3D1.5,%3C1.7"),
        ["team-b/gcp.tfstate"]
    );
    assert_eq!(
        find("terraform_version=%3E%3D1.11"),
        ["team-a/tf-one.tfstate", "team-b/tf-two.tfstate"]
    );
    assert_eq!(
        find("key=team-a/**"),
        ["team-a/db.tfstate", "team-a/tf-one.tfstate"]
    );
    assert_eq!(find("written_before=2000-01-01"), Vec::<String>::new());
    assert_eq!(find("written_before=2999-01-01").len(), every.len());
    let found = search(&server, ROOT, "module=module.db");
    assert_eq!(found["states"][0]["resources"].as_array().unwrap().len(), 1);
    assert_eq!(found["counts"]["types"], json!({"aws_db_instance": 1}));
    let found = search(&server, ROOT, "type=aws_*");
    assert_eq!(
        found["counts"]["types"],
        json!({"aws_db_instance": 2, "aws_s3_bucket": 1})
    );
    assert_eq!(found["counts"]["providers"], json!({AWS: 3}));
    assert_eq!(found["total_resources"], 3);
    let (status, body) = http_with(
        "GET",
        &format!("{}/api/v1/search?terraform_version=abc", server.url),
        &[("Authorization", &basic(ROOT))],
        b"",
    );
    assert_eq!(status, 400, "{}", text(&body));

    // Locked for two hours and more, by the store's clock: a lock whose
    // client says it was created three hours ago (a clock off, or a
    // `Created` made up) is not, until the store's lock object is that
    // old.
    let created = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    let created = created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let lock = format!(
        r#"{{"ID":"9d1c0a3e-0000-4000-8000-00000000abcd","Operation":"OperationTypeApply","Info":"","Who":"ops@host","Version":"1.11.4","Created":"{created}","Path":""}}"#
    );
    let (status, _) = http_with(
        "LOCK",
        &server.state_url("team-b/legacy.tfstate"),
        &[("Authorization", &basic(ROOT))],
        lock.as_bytes(),
    );
    assert_eq!(status, 200);
    // Listed twice over (the explorer lists the store every second).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(find("locked_for=2h"), Vec::<String>::new());
    crate::support::stores::backdate(
        &peer.object_path("team-b/legacy.tfstate.tflock"),
        Duration::from_secs(3 * 3600),
    );
    eventually(
        &server,
        "locked_for=2h",
        &["team-b/legacy.tfstate"],
        Duration::from_secs(5),
    );
    assert_eq!(find("locked_for=4h"), Vec::<String>::new());
    let found = search(&server, ROOT, "locked_for=2h");
    let held = &found["states"][0]["lock"];
    assert_eq!(held["who"], "ops@host");
    assert!(
        held["age_seconds"].as_u64().unwrap() >= 3 * 3600 - 60,
        "{held}"
    );

    // CSV, by parameter and by Accept: one row per matching resource.
    for (query, headers) in [
        ("type=aws_*&format=csv", vec![]),
        ("type=aws_*", vec![("Accept", "text/csv")]),
    ] {
        let url = format!("{}/api/v1/search?{query}", server.url);
        let auth = basic(ROOT);
        let mut headers = headers;
        headers.push(("Authorization", &auth));
        let (status, response_headers, body) = http_full("GET", &url, &headers, b"");
        assert_eq!(status, 200);
        assert!(
            response_headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("text/csv")),
            "{response_headers:?}"
        );
        let csv = text(&body);
        let rows: Vec<&str> = csv.lines().collect();
        assert!(
            rows[0].starts_with("key,workspace,serial,terraform_version"),
            "{csv}"
        );
        assert_eq!(rows.len(), 4, "{csv}");
        assert!(
            rows.iter()
                .any(|r| r.starts_with("team-a/db.tfstate,default,1,1.4.6,")
                    && r.contains(",module.db.aws_db_instance.main,aws_db_instance,managed,")),
            "{csv}"
        );
        assert!(
            rows.iter()
                .any(|r| r.starts_with("team-b/legacy.tfstate,") && r.contains(",ops@host,")),
            "{csv}"
        );
    }

    // Pages: every state once, in order, with the counts of the whole.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let page = search(&server, ROOT, &query);
        assert_eq!(page["total_states"], every.len());
        assert_eq!(page["counts"], all["counts"]);
        assert!(page["states"].as_array().unwrap().len() <= 2);
        seen.extend(keys(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                query = format!(
                    "limit=2&cursor={}",
                    form_urlencoded::byte_serialize(cursor.as_bytes()).collect::<String>()
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, every);

    // Who sees what: reader only team-a; outsider (outputs) nothing.
    let reader = search(&server, READER, "");
    assert_eq!(
        keys(&reader),
        ["team-a/db.tfstate", "team-a/tf-one.tfstate"]
    );
    assert_eq!(
        search(&server, READER, "type=aws_db_instance")["counts"]["types"],
        json!({"aws_db_instance": 1})
    );
    let outsider = search(&server, OUTSIDER, "");
    assert_eq!(outsider["total_states"], 0);
    assert_eq!(outsider["counts"], json!({"types": {}, "providers": {}}));
    let (status, _) = http_with("GET", &format!("{}/api/v1/search", server.url), &[], b"");
    assert_eq!(status, 401, "no credentials, no search");

    // A new write and a delete reach the index without a restart, well
    // before a refresh would find them.
    post(
        &server,
        "team-a/fn.tfstate",
        &state("1.9.0", 1, &[("", "aws_lambda_function", "f", AWS)]),
    );
    eventually(
        &server,
        "type=aws_lambda_function",
        &["team-a/fn.tfstate"],
        Duration::from_millis(900),
    );
    let (status, _) = http_with(
        "DELETE",
        &server.state_url("team-a/db.tfstate"),
        &[("Authorization", &basic(ROOT))],
        b"",
    );
    assert_eq!(status, 200);
    eventually(
        &server,
        "type=aws_db_instance",
        &["team-b/legacy.tfstate"],
        Duration::from_millis(900),
    );

    // `stategate state find`: a table, and the same JSON.
    let table = stategate_ok(
        &peer,
        &[
            "state",
            "find",
            "--type",
            "aws_db_instance",
            "--provider",
            "hashicorp/aws",
        ],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("ADDRESS"),
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[1].starts_with("team-b/legacy.tfstate") && lines[1].contains("aws_db_instance.old"),
        "{table}"
    );
    let out = stategate_ok(
        &peer,
        &["state", "find", "--module", "module.inner", "--json"],
    );
    let found: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        keys(&found),
        ["team-a/tf-one.tfstate", "team-b/tf-two.tfstate"]
    );
    assert_eq!(found["total_resources"], 2);
}

/// Two servers on one local store (their configuration in the folder
/// returned first): the second, listing the store every `refresh`, is
/// started once the first has written `team-a/one.tfstate`, and is seen
/// to have found it.
fn two_servers(refresh: &str) -> (tempfile::TempDir, LocalPeer, Server, Server) {
    let dir = tempfile::TempDir::new().unwrap();
    let config = auth_config(dir.path());
    let peer = LocalPeer::new();
    let first = start(&peer, &config);
    post(
        &first,
        "team-a/one.tfstate",
        &state("1.5.7", 1, &[("", "aws_instance", "web", AWS)]),
    );
    let second = start_refreshing(&peer, &config, refresh);
    eventually(
        &second,
        "",
        &["team-a/one.tfstate"],
        Duration::from_secs(10),
    );
    (dir, peer, first, second)
}

#[test]
fn explore_a_second_replica_finds_the_first_ones_writes_on_its_refresh() {
    let (_dir, peer, first, second) = two_servers("1s");

    // Written through the first: the second has no word of it but its
    // next listing.
    post(
        &first,
        "team-a/two.tfstate",
        &state("1.5.7", 1, &[("module.db", "aws_db_instance", "main", AWS)]),
    );
    post(
        &first,
        "team-a/one.tfstate",
        &state(
            "1.5.7",
            2,
            &[("", "aws_instance", "web", AWS), ("", "aws_eip", "ip", AWS)],
        ),
    );
    eventually(
        &second,
        "type=aws_db_instance",
        &["team-a/two.tfstate"],
        Duration::from_secs(5),
    );
    eventually(
        &second,
        "type=aws_eip",
        &["team-a/one.tfstate"],
        Duration::from_secs(5),
    );

    // A state another tool put in the store: found by both, from its body.
    std::fs::write(
        peer.object_path("team-a/found.tfstate"),
        state("1.2.0", 9, &[("", "aws_vpc", "main", AWS)]),
    )
    .unwrap();
    for server in [&first, &second] {
        eventually(
            server,
            "type=aws_vpc",
            &["team-a/found.tfstate"],
            Duration::from_secs(5),
        );
    }
    let found = search(&second, ROOT, "type=aws_vpc");
    assert_eq!(found["states"][0]["serial"], 9);
    assert_eq!(found["states"][0]["terraform_version"], "1.2.0");

    // Deleted through the first: gone from the second after its refresh.
    let (status, _) = http_with(
        "DELETE",
        &first.state_url("team-a/two.tfstate"),
        &[("Authorization", &basic(ROOT))],
        b"",
    );
    assert_eq!(status, 200);
    eventually(&second, "type=aws_db_instance", &[], Duration::from_secs(5));
}

/// `explore.refresh: 0`, for a server alone on its store: the store is
/// listed at start only. Its own writes reach the index at once; another
/// replica's are not looked for.
#[test]
fn explore_with_refresh_off_lists_the_store_only_at_start() {
    let (_dir, _peer, first, alone) = two_servers("0");
    post(
        &alone,
        "team-a/own.tfstate",
        &state("1.5.7", 1, &[("", "aws_eip", "ip", AWS)]),
    );
    eventually(
        &alone,
        "type=aws_eip",
        &["team-a/own.tfstate"],
        Duration::from_secs(5),
    );
    // Written through the other server: the first one, refreshing every
    // second, finds the write; the one alone never lists again.
    post(
        &first,
        "team-a/other.tfstate",
        &state("1.5.7", 1, &[("", "aws_vpc", "main", AWS)]),
    );
    eventually(
        &first,
        "type=aws_eip",
        &["team-a/own.tfstate"],
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        keys(&search(&alone, ROOT, "type=aws_vpc")),
        Vec::<String>::new()
    );
}

/// On S3 a lock holder's write takes a path of its own (no write lease,
/// the history pointer written by the holder): it reaches the index at
/// once, as every other write does, not at the next refresh.
#[test]
fn explore_follows_a_lock_holders_write_on_s3_at_once() {
    let peer = crate::s3::S3Peer::on(crate::s3::Moto::shared());
    let server = Server::start_with(&peer, &["--explore-refresh", "1h"]);
    let url = server.state_url("fleet/db.tfstate");
    let first = state("1.9.0", 1, &[("", "aws_instance", "web", AWS)]);
    let (status, out) = http("POST", &url, &first);
    assert_eq!(status, 200, "{}", text(&out));
    let query = "type=aws_db_instance";
    let search = |query: &str| {
        let (status, body) = http("GET", &format!("{}/api/v1/search?{query}", server.url), b"");
        assert_eq!(status, 200, "{}", text(&body));
        let found: Value = serde_json::from_slice(&body).unwrap();
        keys(&found)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while search("type=aws_instance").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first write never reached the index"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(search(query).is_empty());

    let (status, out) = http("LOCK", &url, &lock_info("held-1", "ann@host"));
    assert_eq!(status, 200, "{}", text(&out));
    let second = state(
        "1.9.0",
        2,
        &[
            ("", "aws_instance", "web", AWS),
            ("", "aws_db_instance", "main", AWS),
        ],
    );
    let (status, out) = http("POST", &format!("{url}?ID=held-1"), &second);
    assert_eq!(status, 200, "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while search(query) != ["fleet/db.tfstate"] {
        assert!(
            Instant::now() < deadline,
            "a lock holder's write on S3 did not reach the index within 5 s (refresh is 1h)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, out) = http("UNLOCK", &url, &lock_info("held-1", "ann@host"));
    assert_eq!(status, 200, "{}", text(&out));
}

/// A state of more resource blocks than one answer lists goes on over the
/// next pages of `/api/v1/search`, and `state find` lists it whole, each
/// block once.
#[test]
fn explore_a_state_of_many_resources_is_paged_and_listed_whole() {
    let dir = tempfile::TempDir::new().unwrap();
    let peer = LocalPeer::new();
    let server = start(&peer, &auth_config(dir.path()));
    let names: Vec<String> = (0..10_003).map(|i| format!("r{i:05}")).collect();
    let blocks: Vec<(&str, &str, &str, &str)> = names
        .iter()
        .map(|n| {
            (
                "",
                "null_resource",
                n.as_str(),
                "registry.terraform.io/hashicorp/null",
            )
        })
        .collect();
    post(&server, "huge/app.tfstate", &state("1.9.0", 1, &blocks));
    post(
        &server,
        "zz/app.tfstate",
        &state("1.9.0", 1, &[("", "aws_vpc", "main", AWS)]),
    );
    // Both indexed (the first page holds only the large state).
    let wait = Duration::from_secs(30);
    eventually(&server, "type=aws_vpc", &["zz/app.tfstate"], wait);
    eventually(&server, "type=null_resource", &["huge/app.tfstate"], wait);

    let first = search(&server, ROOT, "limit=1000");
    assert_eq!(keys(&first), ["huge/app.tfstate"]);
    assert_eq!(
        first["states"][0]["resources"].as_array().unwrap().len(),
        10_000
    );
    assert_eq!(first["total_resources"], 10_004);
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = search(&server, ROOT, &format!("limit=1000&cursor={cursor}"));
    assert_eq!(keys(&second), ["huge/app.tfstate", "zz/app.tfstate"]);
    let rest: Vec<&str> = second["states"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        rest,
        [
            "null_resource.r10000",
            "null_resource.r10001",
            "null_resource.r10002"
        ]
    );
    assert!(second["next_cursor"].is_null(), "{}", second["next_cursor"]);

    let table = stategate_ok(&peer, &["state", "find", "--type", "null_resource"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 10_003, "one row per block");
    let listed: BTreeSet<&str> = rows
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("null_resource."))
        })
        .collect();
    assert_eq!(listed.len(), 10_003, "each block once");
    let out = stategate_ok(
        &peer,
        &["state", "find", "--type", "null_resource", "--json"],
    );
    let found: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(keys(&found), ["huge/app.tfstate"], "the state once");
    assert_eq!(
        found["states"][0]["resources"].as_array().unwrap().len(),
        10_003
    );
}

/// A state as Terraform 0.11 writes it (format 3): resources by name in
/// each module (`<name>.<index>` for `count`), attributes flat in
/// `primary`, outputs in every module.
fn v3_state(serial: u64, ami: &str, subnets: usize) -> Vec<u8> {
    let instance = |id: &str, extra: Value| {
        let mut attributes = json!({"id": id});
        attributes
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"type": "x", "depends_on": [], "provider": "provider.aws", "deposed": [],
            "primary": {"id": id, "attributes": attributes, "meta": {}, "tainted": false}})
    };
    let mut net = serde_json::Map::new();
    for i in 0..subnets {
        net.insert(
            format!("aws_subnet.private.{i}"),
            instance(&format!("s-{i}"), json!({})),
        );
    }
    serde_json::to_vec(&json!({
        "version": 3, "terraform_version": "0.11.14", "serial": serial, "lineage": "old-estate",
        "modules": [
            {"path": ["root"], "outputs": {"ip": {"sensitive": false, "type": "string", "value": "10.0.0.1"}},
             "resources": {"aws_instance.web": instance("i-1", json!({"ami": ami, "password": "s3cr3t"}))},
             "depends_on": []},
            {"path": ["root", "net"], "outputs": {"inner": {"sensitive": false, "type": "string", "value": "x"}},
             "resources": net, "depends_on": []},
        ],
    }))
    .unwrap()
}

/// States Terraform 0.11 wrote (format 3, resources in `modules`) are
/// shown, compared and found as those of later versions: the overview
/// counts their blocks, the diff names what changed, a search finds them.
#[test]
fn explore_reads_states_terraform_0_11_wrote() {
    let dir = tempfile::TempDir::new().unwrap();
    let peer = LocalPeer::new();
    let server = start(&peer, &auth_config(dir.path()));
    let key = "team-a/legacy.tfstate";
    post(&server, key, &v3_state(1, "ami-1", 2));
    post(&server, key, &v3_state(2, "ami-2", 3));
    let api = |path: &str| {
        let url = format!("{}/api/v1/{path}", server.url);
        let (status, body) = http_with("GET", &url, &[("Authorization", &basic(ROOT))], b"");
        let body = text(&body);
        assert_eq!(status, 200, "{url}: {body}");
        assert!(!body.contains("s3cr3t"), "{url}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let detail = api(&format!("states/{key}"));
    let overview = &detail["overview"];
    assert_eq!(
        (&overview["resources"], &overview["instances"]),
        (&json!(2), &json!(4)),
        "{detail}"
    );
    assert_eq!(overview["outputs"], json!(["ip"]), "{detail}");
    let diff = api(&format!("diff/{key}?from=1&to=2"));
    assert_eq!(
        diff["added"],
        json!(["module.net.aws_subnet.private[2]"]),
        "{diff}"
    );
    assert_eq!(
        diff["changed"],
        json!([{"address": "aws_instance.web", "attributes": ["ami"]}]),
        "{diff}"
    );
    eventually(&server, "type=aws_subnet", &[key], Duration::from_secs(5));
    let found = search(&server, ROOT, "type=aws_subnet");
    assert_eq!(
        found_blocks(&found, key),
        BTreeSet::from([(
            "module.net.aws_subnet.private".to_string(),
            "aws_subnet".to_string(),
            "registry.terraform.io/-/aws".to_string(),
            "module.net".to_string(),
            3
        )])
    );
}

/// Format-3 bodies made dense for the write's catalog (a module path of a
/// million names, hundreds of thousands of one-instance blocks) are taken
/// down within a bound, not at many times their size, and hide no change:
/// the views refuse them as too dense to show.
#[test]
fn explore_dense_format_3_writes_stay_within_bounded_memory() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let head = |serial: u64| {
        format!(
            r#"{{"version":3,"terraform_version":"0.11.14","serial":{serial},"lineage":"d","modules":["#
        )
    };
    let path: String = vec![r#""a""#; 1_000_000].join(",");
    let blocks: String = (0..400_000)
        .map(|i| format!(r#""t.{i:x}":0"#))
        .collect::<Vec<_>>()
        .join(",");
    let bodies = [
        format!(
            r#"{}{{"path":["root",{path}],"resources":{{"t.a":0}}}}]}}"#,
            head(1)
        ),
        format!(
            r#"{}{{"path":["root"],"resources":{{{blocks}}}}}]}}"#,
            head(2)
        ),
    ];
    let kib = |field| crate::support::proc_status_kib(server.pid(), field);
    let idle = kib("VmHWM");
    for body in &bodies {
        let (status, out) = http("POST", &server.state_url("dense.tfstate"), body.as_bytes());
        assert_eq!(status, 200, "{}", text(&out));
    }
    let grown = (kib("VmHWM") - idle) / 1024;
    eprintln!(
        "bodies of {} and {} KiB: the peak grew {grown} MiB",
        bodies[0].len() / 1024,
        bodies[1].len() / 1024
    );
    assert!(grown <= 64, "the peak grew {grown} MiB");
    let (status, out) = http(
        "GET",
        &format!("{}/api/v1/diff/dense.tfstate?from=1&to=2", server.url),
        b"",
    );
    assert_eq!(status, 413, "{}", text(&out));
}
