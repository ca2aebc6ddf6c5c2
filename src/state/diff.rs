//! What a state holds and what changed between two of its versions, by
//! resource instance address (`module.net["a"].aws_subnet.private[0]`),
//! as the dashboard shows it. Pure functions over state bodies.
//!
//! Nothing here returns a value from a state: attribute values and output
//! values hold secrets (passwords, keys, tokens), so a change is described
//! by the names of the attributes that differ, and outputs by their names.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// What a state holds, by name only.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Overview {
    /// Resource type (`data.<type>` for data sources) and how many resource
    /// blocks and instances of it there are, by type name.
    pub types: Vec<TypeCount>,
    /// Output names, sorted.
    pub outputs: Vec<String>,
    /// Resource blocks in the state.
    pub resources: usize,
    /// Instances across all resource blocks (`count` and `for_each` make
    /// several of one block).
    pub instances: usize,
}

/// One resource type's counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TypeCount {
    #[serde(rename = "type")]
    pub type_name: String,
    pub resources: usize,
    pub instances: usize,
}

/// What changed from one state to another.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    /// Instance addresses only in the newer state.
    pub added: Vec<String>,
    /// Instance addresses only in the older state.
    pub removed: Vec<String>,
    /// Instances in both whose recorded data differs.
    pub changed: Vec<Changed>,
    /// Output names only in the newer state.
    pub outputs_added: Vec<String>,
    /// Output names only in the older state.
    pub outputs_removed: Vec<String>,
    /// Output names in both whose value differs.
    pub outputs_changed: Vec<String>,
}

/// One changed instance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Changed {
    pub address: String,
    /// Names of the attributes whose values differ; instance fields other
    /// than attributes are named in parentheses (`(dependencies)`).
    pub attributes: Vec<String>,
}

/// Instance fields compared beside the attributes, shown in parentheses.
const INSTANCE_FIELDS: &[&str] = &["dependencies", "status", "schema_version", "index_key"];

/// The parts of a state the overview and the diff read. A body that is not
/// a Terraform state (an encrypted envelope, other JSON) holds nothing.
fn document(body: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(body).unwrap_or_default()
}

fn resources(doc: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    doc.get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn instances(resource: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    resource
        .get("instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn str_field<'a>(m: &'a Map<String, Value>, name: &str) -> &'a str {
    m.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The address of a resource block: `[<module>.][data.]<type>.<name>`.
fn resource_address(resource: &Map<String, Value>) -> String {
    let mut address = String::new();
    let module = str_field(resource, "module");
    if !module.is_empty() {
        address.push_str(module);
        address.push('.');
    }
    if str_field(resource, "mode") == "data" {
        address.push_str("data.");
    }
    address.push_str(str_field(resource, "type"));
    address.push('.');
    address.push_str(str_field(resource, "name"));
    address
}

/// An instance key as Terraform writes it in an address: `[0]` for
/// `count`, `["key"]` for `for_each`, nothing for a single instance.
fn instance_suffix(instance: &Map<String, Value>) -> String {
    match instance.get("index_key") {
        Some(Value::Number(n)) => format!("[{n}]"),
        Some(Value::String(s)) => {
            format!(
                "[{}]",
                serde_json::to_string(s).expect("a string serialises")
            )
        }
        _ => String::new(),
    }
}

/// What a state holds, by type and name.
pub fn overview(body: &[u8]) -> Overview {
    let doc = document(body);
    let mut types: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut out = Overview::default();
    for resource in resources(&doc) {
        let mut type_name = str_field(resource, "type").to_string();
        if str_field(resource, "mode") == "data" {
            type_name.insert_str(0, "data.");
        }
        let n = instances(resource).count();
        let counts = types.entry(type_name).or_default();
        counts.0 += 1;
        counts.1 += n;
        out.resources += 1;
        out.instances += n;
    }
    out.types = types
        .into_iter()
        .map(|(type_name, (resources, instances))| TypeCount {
            type_name,
            resources,
            instances,
        })
        .collect();
    out.outputs = output_names(&doc);
    out
}

fn output_names(doc: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = doc
        .get("outputs")
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Every instance of a state by address.
fn instance_map(doc: &Map<String, Value>) -> BTreeMap<String, &Map<String, Value>> {
    let mut out = BTreeMap::new();
    for resource in resources(doc) {
        let base = resource_address(resource);
        for instance in instances(resource) {
            out.insert(format!("{base}{}", instance_suffix(instance)), instance);
        }
    }
    out
}

/// The attributes of an instance: `attributes`, or the flat map of
/// states written by Terraform before 0.12 (`attributes_flat`).
fn attributes(instance: &Map<String, Value>) -> Map<String, Value> {
    instance
        .get("attributes")
        .or_else(|| instance.get("attributes_flat"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The names of what differs between two instances of one address.
fn changed_names(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<String> {
    let (a, b) = (attributes(old), attributes(new));
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    names.sort();
    for field in INSTANCE_FIELDS {
        if old.get(*field) != new.get(*field) {
            names.push(format!("({field})"));
        }
    }
    names
}

/// What changed from `from` to `to`, by instance address and output name.
pub fn diff(from: &[u8], to: &[u8]) -> Diff {
    let (old_doc, new_doc) = (document(from), document(to));
    let (old, new) = (instance_map(&old_doc), instance_map(&new_doc));
    let mut out = Diff::default();
    for (address, instance) in &new {
        match old.get(address) {
            None => out.added.push(address.clone()),
            Some(before) => {
                let names = changed_names(before, instance);
                if !names.is_empty() {
                    out.changed.push(Changed {
                        address: address.clone(),
                        attributes: names,
                    });
                }
            }
        }
    }
    out.removed = old
        .keys()
        .filter(|a| !new.contains_key(*a))
        .cloned()
        .collect();
    let outputs = |doc: &Map<String, Value>| -> Map<String, Value> {
        doc.get("outputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (old_out, new_out) = (outputs(&old_doc), outputs(&new_doc));
    for (name, value) in &new_out {
        match old_out.get(name) {
            None => out.outputs_added.push(name.clone()),
            Some(before) if before != value => out.outputs_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    out.outputs_removed = old_out
        .keys()
        .filter(|n| !new_out.contains_key(*n))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(resources: Value, outputs: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": 4, "serial": 1, "lineage": "L",
            "outputs": outputs, "resources": resources,
        }))
        .unwrap()
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
        let old = state(
            json!([
                res(
                    None,
                    "managed",
                    "null_resource",
                    "a",
                    json!([{"attributes": {"id": "1", "triggers": {"x": "old-secret"}}}])
                ),
                res(
                    None,
                    "managed",
                    "null_resource",
                    "gone",
                    json!([{"attributes": {"id": "2"}}])
                ),
            ]),
            json!({}),
        );
        let new = state(
            json!([
                res(
                    None,
                    "managed",
                    "null_resource",
                    "a",
                    json!([{"attributes": {"id": "1", "triggers": {"x": "new-secret"}}}])
                ),
                res(
                    None,
                    "managed",
                    "null_resource",
                    "b",
                    json!([{"attributes": {"id": "3"}}])
                ),
            ]),
            json!({}),
        );
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
        let old = state(
            json!([
                res(
                    None,
                    "managed",
                    "terraform_data",
                    "n",
                    json!([
                        {"index_key": 0, "attributes": {"input": "a"}},
                        {"index_key": 1, "attributes": {"input": "b"}},
                    ])
                ),
                res(
                    None,
                    "managed",
                    "terraform_data",
                    "m",
                    json!([
                        {"index_key": "blue", "attributes": {"input": "a"}},
                    ])
                ),
            ]),
            json!({}),
        );
        let new = state(
            json!([
                res(
                    None,
                    "managed",
                    "terraform_data",
                    "n",
                    json!([
                        {"index_key": 0, "attributes": {"input": "a"}},
                    ])
                ),
                res(
                    None,
                    "managed",
                    "terraform_data",
                    "m",
                    json!([
                        {"index_key": "blue", "attributes": {"input": "c", "output": "d"}},
                        {"index_key": "gr\"een", "attributes": {"input": "a"}},
                    ])
                ),
            ]),
            json!({}),
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
            json!([res(
                None,
                "managed",
                "t",
                "x",
                json!([{"attributes": {"a": 1}, "dependencies": []}])
            )]),
            json!({"keep": {"value": "v1"}, "drop": {"value": 1}, "same": {"value": 2}}),
        );
        let new = state(
            json!([res(
                None,
                "managed",
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

    #[test]
    fn other_bodies_hold_nothing() {
        let enc = br#"{"meta":{},"encrypted_data":"AAAA","encryption_version":"v0"}"#;
        assert_eq!(overview(enc), Overview::default());
        assert_eq!(diff(enc, b"not json"), Diff::default());
    }
}
