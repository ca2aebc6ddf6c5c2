//! What a state holds and what changed between two of its versions, by
//! resource instance address (`module.net["a"].aws_subnet.private[0]`),
//! as the dashboard shows it. Pure functions over state bodies.
//!
//! Nothing here returns a value from a state: attribute values and output
//! values hold secrets (passwords, keys, tokens), so a change is described
//! by the names of the attributes that differ, and outputs by their names.
//!
//! Bodies are read into typed structs that keep only what is shown: the
//! fields of a resource that make its address, attribute names, and for
//! each attribute or output value a keyed 64-bit fingerprint instead of the
//! value. serde skips everything else without building it, so a parse
//! costs a fraction of the body's size rather than several times it.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A JSON value reduced to a 64-bit SipHash under a key drawn once per
/// process: equal for values `serde_json::Value` holds equal (object keys
/// in any order), and, the key being secret, not forgeable to hide a
/// change. Built while parsing, so the value itself is never held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64);

fn fingerprint_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default)
}

fn fingerprint(kind: u8, write: impl FnOnce(&mut dyn Hasher)) -> Fingerprint {
    let mut h = fingerprint_key().build_hasher();
    h.write_u8(kind);
    write(&mut h);
    Fingerprint(h.finish())
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FingerprintVisitor)
    }
}

struct FingerprintVisitor;

impl<'de> Visitor<'de> for FingerprintVisitor {
    type Value = Fingerprint;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Fingerprint, E> {
        Ok(fingerprint(0, |_| {}))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Fingerprint, E> {
        Ok(fingerprint(1, |h| h.write_u8(v.into())))
    }

    // Kinds 2, 3 and 4 keep numbers apart as `Value` does: 1 and 1.0 differ.
    fn visit_u64<E>(self, v: u64) -> Result<Fingerprint, E> {
        Ok(fingerprint(2, |h| h.write_u64(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Fingerprint, E> {
        Ok(fingerprint(3, |h| h.write_i64(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Fingerprint, E> {
        Ok(fingerprint(4, |h| h.write_u64(v.to_bits())))
    }

    fn visit_str<E>(self, v: &str) -> Result<Fingerprint, E> {
        // `str::hash` ends with a marker byte, so strings cannot run together.
        Ok(fingerprint(5, |mut h| v.hash(&mut h)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fingerprint, A::Error> {
        let mut items = Vec::new();
        while let Some(Fingerprint(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(fingerprint(6, |mut h| items.hash(&mut h)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fingerprint, A::Error> {
        let mut entries = Vec::new();
        while let Some((Fingerprint(k), Fingerprint(v))) = map.next_entry()? {
            entries.push((k, v));
        }
        // Key order carries no meaning in JSON.
        entries.sort_unstable();
        Ok(fingerprint(7, |mut h| entries.hash(&mut h)))
    }
}

/// An instance's attributes: name and fingerprint, sorted by name. A
/// vector, not a map: states hold many small instances, and a map's nodes
/// would cost more than the names themselves.
#[derive(Default)]
struct Attributes(Vec<(Box<str>, Fingerprint)>);

impl Attributes {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }

    fn get(&self, name: &str) -> Option<Fingerprint> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| self.0[i].1)
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AttributesVisitor;
        impl<'de> Visitor<'de> for AttributesVisitor {
            type Value = Attributes;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of attributes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                let mut out = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Fingerprint>()? {
                    out.push((name.into_boxed_str(), value));
                }
                out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                // A repeated name keeps its last value, as a JSON object does.
                out.reverse();
                out.dedup_by(|a, b| a.0 == b.0);
                out.reverse();
                Ok(Attributes(out))
            }
        }
        d.deserialize_map(AttributesVisitor)
    }
}

fn count_items<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(Option::<Vec<IgnoredAny>>::deserialize(d)?.map_or(0, |v| v.len()))
}

/// The parts of a state a reader looks at: its resource blocks, read as
/// `R`, and its outputs, each read as `O`. A body that is not a Terraform
/// state (an encrypted envelope, other JSON) holds nothing.
#[derive(Deserialize)]
#[serde(default)]
struct Document<R, O> {
    resources: Option<Vec<R>>,
    outputs: Option<BTreeMap<String, O>>,
}

impl<R, O> Default for Document<R, O> {
    fn default() -> Self {
        Document {
            resources: None,
            outputs: None,
        }
    }
}

/// What the overview reads: blocks counted, outputs only named.
type OverviewDocument = Document<BlockCount, IgnoredAny>;

/// What the diff reads: blocks with their instances, outputs fingerprinted.
type DiffDocument = Document<Block, Fingerprint>;

#[derive(Default, Deserialize)]
#[serde(default)]
struct BlockCount {
    mode: Option<String>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    #[serde(deserialize_with = "count_items")]
    instances: usize,
}

/// A resource block: what makes its address, and its instances.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Block {
    module: Option<String>,
    mode: Option<String>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    name: Option<String>,
    instances: Option<Vec<Instance>>,
}

/// One instance: its key, and fingerprints of what a diff compares.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Instance {
    /// A number for `count`, a string for `for_each`.
    index_key: Option<Value>,
    attributes: Option<Attributes>,
    /// The flat attribute map of states written by Terraform before 0.12.
    attributes_flat: Option<Attributes>,
    dependencies: Option<Fingerprint>,
    status: Option<Fingerprint>,
    schema_version: Option<Fingerprint>,
}

impl Instance {
    fn attributes(&self) -> Option<&Attributes> {
        self.attributes.as_ref().or(self.attributes_flat.as_ref())
    }

    /// The fields compared beside the attributes, shown in parentheses.
    fn fields_changed(&self, new: &Instance) -> Vec<String> {
        [
            ("dependencies", self.dependencies != new.dependencies),
            ("status", self.status != new.status),
            ("schema_version", self.schema_version != new.schema_version),
            ("index_key", self.index_key != new.index_key),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| format!("({field})"))
        .collect()
    }
}

fn parse<T: Default + for<'de> Deserialize<'de>>(body: &[u8]) -> T {
    serde_json::from_slice(body).unwrap_or_default()
}

fn is_data(mode: &Option<String>) -> bool {
    mode.as_deref() == Some("data")
}

/// The address of a resource block: `[<module>.][data.]<type>.<name>`.
fn resource_address(block: &Block) -> String {
    let mut address = String::new();
    if let Some(module) = block.module.as_deref().filter(|m| !m.is_empty()) {
        address.push_str(module);
        address.push('.');
    }
    if is_data(&block.mode) {
        address.push_str("data.");
    }
    address.push_str(block.type_name.as_deref().unwrap_or(""));
    address.push('.');
    address.push_str(block.name.as_deref().unwrap_or(""));
    address
}

/// An instance key as Terraform writes it in an address: `[0]` for
/// `count`, `["key"]` for `for_each`, nothing for a single instance.
fn instance_suffix(instance: &Instance) -> String {
    match &instance.index_key {
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
    let doc: OverviewDocument = parse(body);
    let mut types: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut out = Overview::default();
    for block in doc.resources.unwrap_or_default() {
        let mut type_name = block.type_name.unwrap_or_default();
        if is_data(&block.mode) {
            type_name.insert_str(0, "data.");
        }
        let counts = types.entry(type_name).or_default();
        counts.0 += 1;
        counts.1 += block.instances;
        out.resources += 1;
        out.instances += block.instances;
    }
    out.types = types
        .into_iter()
        .map(|(type_name, (resources, instances))| TypeCount {
            type_name,
            resources,
            instances,
        })
        .collect();
    // A BTreeMap's keys come sorted.
    out.outputs = doc.outputs.unwrap_or_default().into_keys().collect();
    out
}

/// Every instance of a state by address.
fn instance_map(resources: Option<Vec<Block>>) -> BTreeMap<String, Instance> {
    let mut out = BTreeMap::new();
    for mut block in resources.unwrap_or_default() {
        let base = resource_address(&block);
        for instance in block.instances.take().unwrap_or_default() {
            out.insert(format!("{base}{}", instance_suffix(&instance)), instance);
        }
    }
    out
}

/// The names of what differs between two instances of one address.
fn changed_names(old: &Instance, new: &Instance) -> Vec<String> {
    let empty = Attributes::default();
    let a = old.attributes().unwrap_or(&empty);
    let b = new.attributes().unwrap_or(&empty);
    let mut names: Vec<String> = a
        .names()
        .chain(b.names().filter(|n| a.get(n).is_none()))
        .filter(|n| a.get(n) != b.get(n))
        .map(str::to_string)
        .collect();
    names.sort();
    names.extend(old.fields_changed(new));
    names
}

/// What changed from `from` to `to`, by instance address and output name.
pub fn diff(from: &[u8], to: &[u8]) -> Diff {
    let (old_doc, new_doc): (DiffDocument, DiffDocument) = (parse(from), parse(to));
    let (old, new) = (
        instance_map(old_doc.resources),
        instance_map(new_doc.resources),
    );
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
    let (old_out, new_out) = (
        old_doc.outputs.unwrap_or_default(),
        new_doc.outputs.unwrap_or_default(),
    );
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
}
