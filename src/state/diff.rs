//! What a state holds and what changed between two of its versions, by
//! resource instance address (`module.net["a"].aws_subnet.private[0]`),
//! as the dashboard shows it.
//!
//! Nothing here returns a value from a state: attribute values and output
//! values hold secrets (passwords, keys, tokens), so a change is described
//! by the names of the attributes that differ, and outputs by their names.
//!
//! States reach hundreds of megabytes, so neither body is ever held whole,
//! nor parsed into a tree. Each is read once, a buffer at a time
//! ([`Inventory`]), taking down every instance's address and a keyed hash
//! of its text; equal text is an unchanged instance. Only the instances
//! (and outputs) whose text differs are read again, by their place in the
//! body, and parsed into typed structs that keep attribute names and a
//! keyed 64-bit fingerprint of each value: a change of key order or
//! spacing alone is then no change. Memory follows the number of
//! instances, not the size of the bodies.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::Read;
use std::sync::OnceLock;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inventory::{Detail, Failure, Inventory, SLACK_BYTES, Text};
use super::{StateError, StateRef, States};
use crate::stores::{Payload, StoreError};

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

/// The key of fingerprints and of the text hashes of [`Inventory`].
fn fingerprint_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
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

/// A body to read for a view.
pub struct Body {
    pub payload: Payload,
    /// What it is, for messages (`version 3 of team/net.tfstate`).
    pub name: String,
    /// The MD5 recorded for it, which it must match: a kept version
    /// changed outside stategate is refused, not shown.
    pub md5: Option<String>,
}

/// Why a view of a body was not made.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Reading it failed, or it no longer matches its record.
    #[error(transparent)]
    State(#[from] StateError),
    /// It holds too many instances for its size to be taken down (see
    /// [`Inventory`]); the reason names it.
    #[error("{0}")]
    TooDense(String),
}

fn read_failed(name: &str, e: std::io::Error) -> StateError {
    StateError::Store(StoreError::unavailable(format!("reading {name}: {e}")))
}

/// What a state holds, by type and name, reading `body` once a buffer at
/// a time. Blocking: call it off the runtime's threads.
pub fn overview(body: &Payload) -> Result<Overview, StateError> {
    let (mut inv, _) = Inventory::read(body.reader(), Detail::Counts, false, (usize::MAX, false))
        .map_err(|e| match e {
        Failure::Read(e) => read_failed("the state", e),
        Failure::TooDense => unreachable!("counting keeps no instance"),
    })?;
    inv.sort();
    let mut out = Overview {
        resources: inv.resources,
        ..Default::default()
    };
    out.types = std::mem::take(&mut inv.types)
        .into_iter()
        .map(|(type_name, (resources, instances))| {
            out.instances += instances;
            TypeCount {
                type_name,
                resources,
                instances,
            }
        })
        .collect();
    out.outputs = inv.outputs.into_iter().map(|o| o.name).collect();
    Ok(out)
}

/// From this size on, a body's inventory reserves its tables whole (see
/// [`Inventory::read`]); below it, what a view leaves behind is small.
const LARGE_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Takes `body` down for a diff, checking its MD5 on the way.
fn take_down(body: &Body) -> Result<Inventory, ViewError> {
    let budget = usize::try_from(body.payload.len() / 4)
        .unwrap_or(usize::MAX)
        .saturating_add(SLACK_BYTES);
    let large = body.payload.len() >= LARGE_BODY_BYTES;
    let detail = Detail::Texts(fingerprint_key());
    let (mut inv, md5) = match Inventory::read(
        body.payload.reader(),
        detail,
        body.md5.is_some(),
        (budget, large),
    ) {
        Ok(read) => read,
        Err(Failure::Read(e)) => return Err(read_failed(&body.name, e).into()),
        Err(Failure::TooDense) => {
            return Err(ViewError::TooDense(format!(
                "{} holds too many resource instances for its size to be shown",
                body.name
            )));
        }
    };
    if let Some(recorded) = &body.md5
        && md5.as_ref() != Some(recorded)
    {
        return Err(StateError::Store(StoreError::unavailable(format!(
            "{} was changed outside stategate (its MD5 no longer matches its record)",
            body.name
        )))
        .into());
    }
    inv.sort();
    Ok(inv)
}

/// The text of a value the inventory found in `body`.
fn text(body: &Body, at: Text) -> Result<Vec<u8>, StateError> {
    let len = usize::try_from(at.end - at.start).expect("a value held in a body fits in memory");
    let mut out = vec![0; len];
    body.payload
        .reader()
        .skip_to(at.start)
        .read_exact(&mut out)
        .map_err(|e| read_failed(&body.name, e))?;
    Ok(out)
}

/// What changed from `old` to `new`, by instance address and output name:
/// each body read once, then only what differs read again. Blocking: call
/// it off the runtime's threads.
pub fn diff(old: &Body, new: &Body) -> Result<Diff, ViewError> {
    let before = take_down(old)?;
    let after = take_down(new)?;
    let mut out = Diff::default();
    let joined = |inv: &Inventory, i: usize| {
        let (block, key) = inv.address(&inv.instances[i]);
        format!("{block}{key}")
    };
    let (mut i, mut j) = (0, 0);
    while i < before.instances.len() || j < after.instances.len() {
        let order = match (before.instances.get(i), after.instances.get(j)) {
            (Some(a), Some(b)) => before.cmp_address(a, &after, b),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out.removed.push(joined(&before, i));
                i += 1;
            }
            Ordering::Greater => {
                out.added.push(joined(&after, j));
                j += 1;
            }
            Ordering::Equal => {
                let (a, b) = (before.instances[i].text, after.instances[j].text);
                if a.hash != b.hash {
                    let parse = |body: &Body, at: Text| -> Result<Instance, StateError> {
                        // An instance not shaped as one compares as empty.
                        Ok(serde_json::from_slice(&text(body, at)?).unwrap_or_default())
                    };
                    let names = changed_names(&parse(old, a)?, &parse(new, b)?);
                    if !names.is_empty() {
                        out.changed.push(Changed {
                            address: joined(&after, j),
                            attributes: names,
                        });
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    let (mut i, mut j) = (0, 0);
    let (a, b) = (&before.outputs, &after.outputs);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out.outputs_removed.push(a[i].name.clone());
                i += 1;
            }
            Ordering::Greater => {
                out.outputs_added.push(b[j].name.clone());
                j += 1;
            }
            Ordering::Equal => {
                if a[i].text.hash != b[j].text.hash {
                    let parse =
                        |body: &Body, at: Text| -> Result<Option<Fingerprint>, StateError> {
                            Ok(serde_json::from_slice(&text(body, at)?).ok())
                        };
                    let same = match (parse(old, a[i].text)?, parse(new, b[j].text)?) {
                        (Some(x), Some(y)) => x == y,
                        _ => false,
                    };
                    if !same {
                        out.outputs_changed.push(b[j].name.clone());
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(out)
}

impl States {
    /// What changed from version `from` to version `to` of `state`: both
    /// read as the store hands them out (a large one as a file), checked
    /// against their recorded MD5 on the way, never held whole.
    pub async fn version_diff(
        &self,
        state: &StateRef,
        from: u64,
        to: u64,
    ) -> Result<Diff, ViewError> {
        let mut bodies = Vec::with_capacity(2);
        for n in [from, to] {
            let (payload, md5) = self.version_unchecked(state, n).await?;
            bodies.push(Body {
                payload,
                name: format!("version {n} of {state}"),
                md5: Some(md5),
            });
        }
        tokio::task::spawn_blocking(move || diff(&bodies[0], &bodies[1]))
            .await
            .map_err(|e| {
                StateError::Store(StoreError::unavailable(format!("the diff failed: {e}")))
            })?
    }
}

#[cfg(test)]
mod tests {
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
        fn instances(doc: &Value) -> BTreeMap<String, Value> {
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
                    out.insert(format!("{base}{suffix}"), instance.clone());
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
            for field in ["dependencies", "status", "schema_version", "index_key"] {
                if present(a, field) != present(b, field) {
                    out.push(format!("({field})"));
                }
            }
            out
        }
        let (a, b) = (instances(old), instances(new));
        let mut d = Diff::default();
        for (address, instance) in &b {
            match a.get(address) {
                None => d.added.push(address.clone()),
                Some(before) => {
                    let names = names(before, instance);
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
}
