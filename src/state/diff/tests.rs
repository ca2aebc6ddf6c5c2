//! The diff and the overview against plain parses of the same bodies.

use super::*;
use serde_json::json;

fn body(bytes: &[u8]) -> Body {
    Body {
        payload: Payload::from(bytes.to_vec()),
        name: "the body".into(),
        md5: None,
    }
}

fn diff(old: &[u8], new: &[u8]) -> Diff {
    super::diff(&body(old), &body(new)).unwrap()
}

fn overview(bytes: &[u8]) -> Overview {
    super::overview(&Payload::from(bytes.to_vec())).unwrap()
}

fn state(resources: Value, outputs: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": 4, "serial": 1, "lineage": "L",
        "outputs": outputs, "resources": resources,
    }))
    .unwrap()
}

/// A managed resource block outside any module.
fn managed(ty: &str, name: &str, instances: Value) -> Value {
    res(None, "managed", ty, name, instances)
}

fn res(module: Option<&str>, mode: &str, ty: &str, name: &str, instances: Value) -> Value {
    let mut r = json!({"mode": mode, "type": ty, "name": name,
        "provider": "provider[\"registry.terraform.io/hashicorp/null\"]",
        "instances": instances});
    if let Some(m) = module {
        r["module"] = json!(m);
    }
    r
}

#[test]
fn added_removed_and_changed_by_address() {
    // One resource in both, whose trigger (a secret) changes.
    let a = |trigger: &str| {
        let instances = json!([{"attributes": {"id": "1", "triggers": {"x": trigger}}}]);
        managed("null_resource", "a", instances)
    };
    let gone = managed(
        "null_resource",
        "gone",
        json!([{"attributes": {"id": "2"}}]),
    );
    let b = managed("null_resource", "b", json!([{"attributes": {"id": "3"}}]));
    let old = state(json!([a("old-secret"), gone]), json!({}));
    let new = state(json!([a("new-secret"), b]), json!({}));
    let d = diff(&old, &new);
    assert_eq!(d.added, ["null_resource.b"]);
    assert_eq!(d.removed, ["null_resource.gone"]);
    assert_eq!(
        d.changed,
        [Changed {
            address: "null_resource.a".into(),
            attributes: vec!["triggers".into()]
        }]
    );
    let shown = serde_json::to_string(&d).unwrap();
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn count_and_for_each_instance_keys() {
    // Two blocks, `n` with `count` and `m` with `for_each`.
    let blocks = |n: Value, m: Value| {
        let n = managed("terraform_data", "n", n);
        state(json!([n, managed("terraform_data", "m", m)]), json!({}))
    };
    let old = blocks(
        json!([
            {"index_key": 0, "attributes": {"input": "a"}},
            {"index_key": 1, "attributes": {"input": "b"}},
        ]),
        json!([{"index_key": "blue", "attributes": {"input": "a"}}]),
    );
    let new = blocks(
        json!([{"index_key": 0, "attributes": {"input": "a"}}]),
        json!([
            {"index_key": "blue", "attributes": {"input": "c", "output": "d"}},
            {"index_key": "gr\"een", "attributes": {"input": "a"}},
        ]),
    );
    let d = diff(&old, &new);
    assert_eq!(d.removed, ["terraform_data.n[1]"]);
    assert_eq!(d.added, [r#"terraform_data.m["gr\"een"]"#]);
    assert_eq!(d.changed[0].address, r#"terraform_data.m["blue"]"#);
    assert_eq!(d.changed[0].attributes, ["input", "output"]);
}

#[test]
fn modules_and_data_sources() {
    let old = state(json!([]), json!({}));
    let new = state(
        json!([
            res(
                Some("module.net[\"a\"].module.sub"),
                "managed",
                "aws_subnet",
                "private",
                json!([{"index_key": 2, "attributes": {}}])
            ),
            res(
                Some("module.net"),
                "data",
                "aws_region",
                "current",
                json!([{"attributes": {}}])
            ),
        ]),
        json!({}),
    );
    let d = diff(&old, &new);
    assert_eq!(
        d.added,
        [
            "module.net.data.aws_region.current",
            "module.net[\"a\"].module.sub.aws_subnet.private[2]",
        ]
    );
    let o = overview(&new);
    assert_eq!(o.resources, 2);
    assert_eq!(o.types[0].type_name, "aws_subnet");
    assert_eq!(o.types[1].type_name, "data.aws_region");
}

#[test]
fn instance_fields_and_outputs_by_name_only() {
    let old = state(
        json!([managed(
            "t",
            "x",
            json!([{"attributes": {"a": 1}, "dependencies": []}])
        )]),
        json!({"keep": {"value": "v1"}, "drop": {"value": 1}, "same": {"value": 2}}),
    );
    let new = state(
        json!([managed(
            "t",
            "x",
            json!([{"attributes": {"a": 1}, "dependencies": ["t.y"], "status": "tainted"}])
        )]),
        json!({"keep": {"value": "v2", "sensitive": true}, "new": {"value": 3}, "same": {"value": 2}}),
    );
    let d = diff(&old, &new);
    assert_eq!(d.changed[0].attributes, ["(dependencies)", "(status)"]);
    assert_eq!(d.outputs_added, ["new"]);
    assert_eq!(d.outputs_removed, ["drop"]);
    assert_eq!(d.outputs_changed, ["keep"]);
    assert_eq!(overview(&new).outputs, ["keep", "new", "same"]);
}

/// A state as Terraform 0.11 writes it (format 3): resources by name in
/// each module, `count` instances as `<name>.<index>`, attributes flat in
/// `primary`, and outputs in every module, of which only the root's are
/// the state's.
fn v3_state(web_ami: &str, second_subnet: bool, url: &str, tainted: bool) -> Vec<u8> {
    let instance = |id: &str, attributes: Value| {
        json!({"type": "x", "depends_on": [], "provider": "provider.aws",
            "primary": {"id": id, "attributes": attributes, "meta": {}, "tainted": false},
            "deposed": []})
    };
    let mut web = instance("i-1", json!({"id": "i-1", "ami": web_ami, "tags.%": "0"}));
    web["primary"]["tainted"] = json!(tainted);
    let mut subnets = serde_json::Map::new();
    subnets.insert(
        "aws_subnet.private.0".into(),
        instance("s-0", json!({"id": "s-0"})),
    );
    if second_subnet {
        subnets.insert(
            "aws_subnet.private.1".into(),
            instance("s-1", json!({"id": "s-1"})),
        );
    }
    subnets.insert(
        "data.aws_region.current".into(),
        instance("r", json!({"id": "r"})),
    );
    serde_json::to_vec(&json!({
        "version": 3, "terraform_version": "0.11.14", "serial": 7, "lineage": "L",
        "modules": [
            {"path": ["root"],
             "outputs": {"url": {"sensitive": false, "type": "string", "value": url}},
             "resources": {"aws_instance.web": web}, "depends_on": []},
            {"path": ["root", "net"],
             "outputs": {"subnet_ids": {"sensitive": false, "type": "list", "value": []}},
             "resources": subnets, "depends_on": []},
        ],
    }))
    .unwrap()
}

#[test]
fn states_of_terraform_before_0_12_are_read_by_module() {
    let old = v3_state("ami-1", false, "http://a", false);
    let o = overview(&old);
    assert_eq!((o.resources, o.instances), (3, 3));
    let types: Vec<_> = o
        .types
        .iter()
        .map(|t| (t.type_name.as_str(), t.resources, t.instances))
        .collect();
    assert_eq!(
        types,
        [
            ("aws_instance", 1, 1),
            ("aws_subnet", 1, 1),
            ("data.aws_region", 1, 1)
        ]
    );
    assert_eq!(o.outputs, ["url"], "only the root module's outputs");

    let new = v3_state("ami-2", true, "http://b", true);
    assert_eq!(overview(&new).instances, 4);
    let d = diff(&old, &new);
    assert_eq!(d.added, ["module.net.aws_subnet.private[1]"]);
    assert!(d.removed.is_empty(), "{d:?}");
    assert_eq!(d.changed.len(), 1, "{d:?}");
    assert_eq!(d.changed[0].address, "aws_instance.web");
    assert_eq!(d.changed[0].attributes, ["ami", "(tainted)"]);
    assert_eq!(d.outputs_changed, ["url"]);
    assert_eq!(diff(&new, &new), Diff::default());
}

/// What a format-3 body could hide is shown: a change of `type`, of a
/// member the diff does not name (in any spelling), or of an earlier
/// instance at an address found twice (`t.a.1` and `t.a.01` are both
/// `t.a[1]`, as Terraform 0.11 read them); a path read after the
/// resources, repeated, of other values than names, or `null`.
#[test]
fn a_format_3_body_hides_no_change() {
    let body = |modules: Value| {
        serde_json::to_vec(&json!({"version": 3, "serial": 1, "lineage": "L", "modules": modules}))
            .unwrap()
    };
    let one = |name: &str, r: Value| body(json!([{"path": ["root"], "resources": {name: r}}]));
    let x = json!({"type": "t", "primary": {"id": "1", "attributes": {"id": "1"}}});
    let mut typed = x.clone();
    typed["type"] = json!("u");
    assert_eq!(
        diff(&one("t.a", x.clone()), &one("t.a", typed)).changed[0].attributes,
        ["(type)"]
    );
    let mut odd = x.clone();
    odd["primary"]["ATTRIBUTES"] = json!({"password": "a"});
    let mut odder = odd.clone();
    odder["primary"]["ATTRIBUTES"] = json!({"password": "b"});
    let d = diff(&one("t.a", odd.clone()), &one("t.a", odder));
    assert_eq!(d.changed[0].attributes, [OTHER]);
    // Spacing and order alone are no change.
    let spaced = String::from_utf8(one("t.a", odd.clone()))
        .unwrap()
        .replace(':', " : ");
    assert_eq!(diff(&one("t.a", odd), spaced.as_bytes()), Diff::default());

    let twice = |first: &str| {
        body(json!([{"path": ["root"], "resources": {
            "t.a.01": {"primary": {"attributes": {"password": first}}},
            "t.a.1": {"primary": {"attributes": {"password": "same"}}}}}]))
    };
    let d = diff(&twice("a"), &twice("b"));
    assert_eq!(d.changed.len(), 1, "{d:?}");
    assert_eq!(
        (d.changed[0].address.as_str(), &d.changed[0].attributes[..]),
        ("t.a[1]", &[OTHER.to_string()][..])
    );
    assert_eq!(diff(&twice("a"), &twice("a")), Diff::default());

    // The path after the resources, given twice, of names and other values.
    let late = |id: &str| {
        body(json!([
            {"resources": {"t.a": {"primary": {"id": id}}}, "Path": ["root", "old"],
             "RESOURCES": {"t.b": {}}, "path": ["root", 1, "net", null], "outputs": {"o": {"value": 1}}},
            {"path": null, "outputs": {"p": {"value": id}}},
        ]))
    };
    let d = diff(&late("1"), &late("2"));
    assert_eq!(d.changed[0].address, "module.net.t.a");
    assert_eq!(d.changed[0].attributes, ["(id)"]);
    assert_eq!(d.outputs_changed, ["p"], "only the root module's");
    let o = overview(&late("1"));
    assert_eq!((o.resources, o.instances, o.outputs.len()), (2, 2, 1));
    let head = crate::state::head::StateHead::parse(&late("1")).unwrap();
    let catalog = head.catalog.unwrap();
    let mut addresses: Vec<_> = catalog.blocks().map(|b| b.address()).collect();
    addresses.sort();
    assert_eq!(addresses, ["module.net.t.a", "module.net.t.b"]);
    assert_eq!(head.resources, 2);
}

/// A block's members and an instance's key under other spellings are
/// read as Terraform reads them, the last of a repeated one counting: a
/// change there is no hidden change.
#[test]
fn block_members_under_other_spellings_are_read_as_terraform_reads_them() {
    let body = |input: &str| {
        format!(
            r#"{{"version": 4, "serial": 1, "lineage": "L", "resources": [
            {{"mode": "managed", "TYPE": "t", "Name": "a", "instances": [{{"attributes": {{"input": "x"}}}}],
             "Instances": [{{"Index_Key": 1, "attributes": {{"input": "{input}"}}}}]}}]}}"#
        )
        .into_bytes()
    };
    let d = diff(&body("ok"), &body("EVIL"));
    assert_eq!(d.changed.len(), 1, "{d:?}");
    assert_eq!(d.changed[0].address, "t.a[1]");
    assert_eq!(d.changed[0].attributes, ["input"]);
    let o = overview(&body("ok"));
    assert_eq!((o.resources, o.instances), (1, 1));
    let head = crate::state::head::StateHead::parse(&body("ok")).unwrap();
    let blocks: Vec<_> = head
        .catalog
        .unwrap()
        .blocks()
        .map(|b| (b.address(), b.instances))
        .collect();
    assert_eq!(blocks, [("t.a".to_string(), 1)]);
}

/// An attribute nested deeper than the parser goes still shows as a
/// change when its bytes change: the diff never hides one.
#[test]
fn a_change_nested_past_the_parsers_depth_is_shown() {
    let depth = 200;
    let instances = |leaf: &str| {
        let policy = format!("{}\"{leaf}\"{}", "[".repeat(depth), "]".repeat(depth));
        format!(r#"[{{"attributes": {{"id": "1", "policy": {policy}}}}}]"#)
    };
    assert!(
        serde_json::from_str::<Value>(&instances("A")).is_err(),
        "past the parser's depth"
    );
    let nested = |leaf: &str| {
        let block = managed("aws_iam_policy", "n", json!("INSTANCES"));
        let text = String::from_utf8(state(json!([block]), json!({}))).unwrap();
        text.replace("\"INSTANCES\"", &instances(leaf)).into_bytes()
    };
    let (old, new) = (nested("A"), nested("B"));
    let d = diff(&old, &new);
    assert_eq!(
        d.changed,
        [Changed {
            address: "aws_iam_policy.n".into(),
            attributes: vec![UNREADABLE.into()]
        }]
    );
    assert_eq!(diff(&old, &old), Diff::default());
}

/// One long name over many instances would make the answer many times
/// the size of the bodies: refused as too large to show instead.
#[test]
fn a_diff_naming_more_than_its_bodies_hold_is_refused() {
    let long = "t".repeat(64 * 1024);
    let instances: Vec<Value> = (0..200)
        .map(|i| json!({"index_key": i, "attributes": {}}))
        .collect();
    let new = state(json!([managed(&long, "n", json!(instances))]), json!({}));
    let old = state(json!([]), json!({}));
    let e = super::diff(&body(&old), &body(&new)).unwrap_err();
    assert!(matches!(e, ViewError::TooDense(_)), "{e}");
    // The same count of instances under a short name is shown.
    let new = state(json!([managed("t", "n", json!(instances))]), json!({}));
    assert_eq!(diff(&old, &new).added.len(), 200);
}

#[test]
fn values_compare_as_json_not_as_text() {
    let old = br#"{"resources": [{"mode": "managed", "type": "t", "name": "x", "instances": [
        {"attributes": {"a": {"p": 1, "q": [1, 2]}, "b": "s", "c": 1, "d": [1, 2], "e": null}}]}]}"#;
    let new = br#"{"resources":[{"type":"t","name":"x","mode":"managed","instances":[
        {"attributes":{"e":null,"d":[2,1],"c":1.0,"b":"s","a":{"q":[1,2],"p":1}}}]}]}"#;
    let d = diff(old, new);
    assert_eq!(d.changed.len(), 1, "{d:?}");
    assert_eq!(d.changed[0].attributes, ["c", "d"]);
    assert_eq!(diff(old, old), Diff::default());
}

#[test]
fn other_bodies_hold_nothing() {
    let enc = br#"{"meta":{},"encrypted_data":"AAAA","encryption_version":"v0"}"#;
    assert_eq!(overview(enc), Overview::default());
    assert_eq!(diff(enc, b"not json"), Diff::default());
}

/// A body in a file, as a store hands out a large one.
fn in_file(bytes: &[u8]) -> Payload {
    use std::io::Write;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    Payload::File(std::sync::Arc::new(crate::stores::payload::FileBody::new(
        file,
        bytes.len() as u64,
    )))
}

#[test]
fn large_bodies_in_files_compare_as_in_memory() {
    let blocks = |serial: u64| -> Vec<Value> {
        (0..4000)
            .map(|i| {
                // Every 10th instance changes; every 7th is only
                // written differently (its keys reordered).
                let v = if i % 10 == 0 { serial } else { 0 };
                let attributes = if i % 7 == 0 && serial == 2 {
                    json!({"b": "x".repeat(i % 300), "a": v})
                } else {
                    json!({"a": v, "b": "x".repeat(i % 300)})
                };
                res(
                    None,
                    "managed",
                    "t",
                    &format!("r{i}"),
                    json!([{"index_key": i, "attributes": attributes}]),
                )
            })
            .collect()
    };
    let old = state(Value::Array(blocks(1)), json!({"o": {"value": 1}}));
    let new = state(Value::Array(blocks(2)), json!({"o": {"value": 2}}));
    assert!(old.len() > 1024 * 1024, "{}", old.len());
    let in_memory = diff(&old, &new);
    assert_eq!(in_memory.changed.len(), 400);
    assert!(
        in_memory
            .changed
            .iter()
            .all(|c| c.attributes == ["a"] && c.address.ends_with("0]")),
        "{:?}",
        &in_memory.changed[..3]
    );
    let files = |a: &[u8], b: &[u8]| {
        super::diff(
            &Body {
                payload: in_file(a),
                md5: Some(crate::state::head::md5_hex(a)),
                ..body(b"")
            },
            &Body {
                payload: in_file(b),
                md5: Some(crate::state::head::md5_hex(b)),
                ..body(b"")
            },
        )
    };
    assert_eq!(files(&old, &new).unwrap(), in_memory);
    assert_eq!(overview(&new), super::overview(&in_file(&new)).unwrap());
    assert_eq!(overview(&new).instances, 4000);
}

#[test]
fn a_body_that_no_longer_matches_its_md5_is_refused() {
    let old = state(json!([]), json!({}));
    let bad = Body {
        md5: Some(crate::state::head::md5_hex(b"other bytes")),
        name: "version 2 of x".into(),
        ..body(&old)
    };
    let e = super::diff(&body(&old), &bad).unwrap_err().to_string();
    assert!(
        e.contains("version 2 of x was changed outside stategate"),
        "{e}"
    );
}

#[test]
fn a_body_of_empty_instances_is_not_taken_down() {
    let empty = format!(
        r#"{{"resources":[{{"type":"t","name":"n","instances":[{}]}}]}}"#,
        vec!["{}"; 2_000_000].join(",")
    );
    let e = super::diff(&body(b"{}"), &body(empty.as_bytes())).unwrap_err();
    assert!(matches!(e, ViewError::TooDense(_)), "{e}");
    assert!(e.to_string().contains("too many resource instances"), "{e}");
}

/// What [`diff`] must find, computed the plain way: both bodies parsed
/// into trees, instances compared value by value.
fn reference(old: &Value, new: &Value) -> Diff {
    use std::collections::BTreeMap;
    fn present<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
        v.get(k).filter(|v| !v.is_null())
    }
    fn instances(doc: &Value) -> BTreeMap<String, Vec<Value>> {
        let mut out = BTreeMap::new();
        for block in present(doc, "resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |k: &str| present(block, k).and_then(Value::as_str).unwrap_or("");
            let mut base = String::new();
            if !field("module").is_empty() {
                base = format!("{}.", field("module"));
            }
            if field("mode") == "data" {
                base.push_str("data.");
            }
            base.push_str(&format!("{}.{}", field("type"), field("name")));
            let list = present(block, "instances").and_then(Value::as_array);
            for instance in list.into_iter().flatten() {
                let suffix = match present(instance, "index_key") {
                    Some(Value::Number(n)) => format!("[{n}]"),
                    Some(Value::String(s)) => format!("[{}]", Value::from(s.as_str())),
                    _ => String::new(),
                };
                out.entry(format!("{base}{suffix}"))
                    .or_insert_with(Vec::new)
                    .push(instance.clone());
            }
        }
        out
    }
    fn names(a: &Value, b: &Value) -> Vec<String> {
        let attrs = |v: &Value| {
            present(v, "attributes")
                .or(present(v, "attributes_flat"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (x, y) = (attrs(a), attrs(b));
        let mut out: Vec<String> = x
            .keys()
            .chain(y.keys())
            .filter(|k| x.get(*k) != y.get(*k))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        for field in [
            "dependencies",
            "status",
            "schema_version",
            "index_key",
            "private",
        ] {
            if present(a, field) != present(b, field) {
                out.push(format!("({field})"));
            }
        }
        out
    }
    let (a, b) = (instances(old), instances(new));
    let mut d = Diff::default();
    // The last instance at an address is compared; when nothing named
    // differs, any other difference among all those at it is `(other)`.
    for (address, found) in &b {
        match a.get(address) {
            None => d.added.push(address.clone()),
            Some(before) => {
                let last = |v: &Vec<Value>| v.last().cloned().unwrap();
                let mut names = names(&last(before), &last(found));
                if names.is_empty() && before != found {
                    names.push(OTHER.into());
                }
                if !names.is_empty() {
                    d.changed.push(Changed {
                        address: address.clone(),
                        attributes: names,
                    });
                }
            }
        }
    }
    d.removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let outputs = |doc: &Value| {
        present(doc, "outputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (x, y) = (outputs(old), outputs(new));
    for (name, value) in &y {
        match x.get(name) {
            None => d.outputs_added.push(name.clone()),
            Some(before) if before != value => d.outputs_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.outputs_removed = x.keys().filter(|k| !y.contains_key(*k)).cloned().collect();
    d
}

/// A small random number generator, so the cases are the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 2 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.below(3) == 0),
            2 => json!(self.below(3)),
            3 => json!(self.below(3) as f64),
            4 | 5 => json!(self.pick(&["a", "}", "]\"", "\\", "é{", "x\ny", ""])),
            6 => Value::Array((0..self.below(3)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(
                (0..self.below(3))
                    .map(|_| {
                        (
                            self.pick(&["k", "l", "}"]).to_string(),
                            self.value(depth + 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    fn instance(&mut self) -> Value {
        let mut i = serde_json::Map::new();
        match self.below(4) {
            0 => {}
            1 => drop(i.insert("index_key".into(), json!(self.below(3)))),
            2 => drop(i.insert("index_key".into(), json!(self.pick(&["a", "b\"", "}"])))),
            _ => drop(i.insert("index_key".into(), Value::Null)),
        }
        let field = if self.below(5) == 0 {
            "attributes_flat"
        } else {
            "attributes"
        };
        let attrs: serde_json::Map<String, Value> = (0..self.below(4))
            .map(|_| (self.pick(&["id", "tags", "x"]).to_string(), self.value(0)))
            .collect();
        i.insert(field.into(), Value::Object(attrs));
        for extra in ["dependencies", "status", "private"] {
            if self.below(3) == 0 {
                i.insert(extra.into(), self.value(1));
            }
        }
        Value::Object(i)
    }

    fn block(&mut self) -> Value {
        let mut b = serde_json::Map::new();
        if self.below(3) == 0 {
            b.insert(
                "module".into(),
                json!(self.pick(&["module.m", "module.n[\"k\"]", ""])),
            );
        }
        b.insert("mode".into(), json!(self.pick(&["managed", "data"])));
        b.insert("type".into(), json!(self.pick(&["t", "u"])));
        b.insert("name".into(), json!(self.pick(&["a", "b", "c"])));
        b.insert(
            "instances".into(),
            Value::Array((0..self.below(4)).map(|_| self.instance()).collect()),
        );
        Value::Object(b)
    }

    fn state(&mut self) -> Value {
        let outputs: serde_json::Map<String, Value> = (0..self.below(3))
            .map(|_| (self.pick(&["o", "p", "q\""]).to_string(), self.value(0)))
            .collect();
        json!({
            "version": 4,
            "outputs": outputs,
            "resources": (0..self.below(6)).map(|_| self.block()).collect::<Vec<_>>(),
        })
    }
}

#[test]
fn diffs_match_a_plain_parse_of_both_trees() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for case in 0..3000 {
        let old = rng.state();
        let new = if rng.below(2) == 0 {
            rng.state()
        } else {
            old.clone()
        };
        let write = |v: &Value, pretty: bool| match pretty {
            true => serde_json::to_vec_pretty(v).unwrap(),
            false => serde_json::to_vec(v).unwrap(),
        };
        let (a, b) = (write(&old, case % 2 == 0), write(&new, case % 3 == 0));
        assert_eq!(
            diff(&a, &b),
            reference(&old, &new),
            "case {case}:\n{old}\n{new}"
        );
    }
}

/// Names the overview keeps are held to a quarter of the body: outputs of
/// a few bytes each took nineteen times the body to list. A state of
/// ordinary shape is listed whole.
#[test]
fn an_overview_of_more_names_than_the_body_holds_room_for_is_refused() {
    let dense: serde_json::Map<String, Value> = (0..300_000)
        .map(|i| (format!("o{i}"), json!({"value": 0})))
        .collect();
    let many_outputs = state(json!([]), Value::Object(dense));
    match super::overview(&Payload::from(many_outputs)) {
        Err(ViewError::TooDense(why)) => assert!(why.contains("too many outputs"), "{why}"),
        other => panic!("{other:?}"),
    }
    let types: Vec<Value> = (0..300_000)
        .map(|i| json!({"mode": "managed", "type": format!("t{i}"), "name": "n", "instances": []}))
        .collect();
    let many_types = state(Value::Array(types), json!({}));
    assert!(matches!(
        super::overview(&Payload::from(many_types)),
        Err(ViewError::TooDense(_))
    ));
    let outputs: serde_json::Map<String, Value> = (0..2_000)
        .map(|i| (format!("output_{i}"), json!({"value": "v"})))
        .collect();
    assert_eq!(
        overview(&state(json!([]), Value::Object(outputs)))
            .outputs
            .len(),
        2_000
    );
}

/// An instance of more attributes than are compared name by name is a
/// change without its names: two million of them took fifteen times the
/// body to compare. Below the bound, every changed name is listed.
#[test]
fn an_instance_of_more_attributes_than_are_compared_is_changed_unnamed() {
    let one = |n: usize, value: u32| {
        let attributes: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("a{i}"), json!(value))).collect();
        state(
            json!([managed("t", "x", json!([{"attributes": attributes}]))]),
            json!({}),
        )
    };
    let d = diff(&one(MAX_ATTRIBUTES + 1, 1), &one(MAX_ATTRIBUTES + 1, 2));
    assert_eq!(
        d.changed,
        [Changed {
            address: "t.x".into(),
            attributes: vec![UNREADABLE.into()]
        }]
    );
    let d = diff(&one(1_000, 1), &one(1_000, 2));
    assert_eq!(d.changed[0].attributes.len(), 1_000);
}
