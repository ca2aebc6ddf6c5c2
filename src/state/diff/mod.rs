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

/// The most attributes of one instance compared name by name; an instance
/// of more is listed as changed, [`UNREADABLE`]. Two million attributes of
/// a few bytes each took fifteen times the body to compare.
const MAX_ATTRIBUTES: usize = 100_000;

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
                    if out.len() == MAX_ATTRIBUTES {
                        return Err(serde::de::Error::custom("too many attributes to compare"));
                    }
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

/// One instance: its key, and fingerprints of what a diff compares. A
/// version-3 state (Terraform before 0.12) has one instance per resource
/// name, its attributes in `primary`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Instance {
    /// A number for `count`, a string for `for_each`.
    index_key: Option<Value>,
    attributes: Option<Attributes>,
    /// The flat attribute map of states upgraded from before 0.12.
    attributes_flat: Option<Attributes>,
    dependencies: Option<Fingerprint>,
    status: Option<Fingerprint>,
    schema_version: Option<Fingerprint>,
    private: Option<Fingerprint>,
    sensitive_attributes: Option<Fingerprint>,
    create_before_destroy: Option<Fingerprint>,
    identity: Option<Fingerprint>,
    primary: Option<Primary>,
    #[serde(rename = "type")]
    type_name: Option<Fingerprint>,
    depends_on: Option<Fingerprint>,
    deposed: Option<Fingerprint>,
    provider: Option<Fingerprint>,
}

/// A version-3 resource's current object.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Primary {
    id: Option<Fingerprint>,
    attributes: Option<Attributes>,
    meta: Option<Fingerprint>,
    tainted: Option<Fingerprint>,
}

impl Instance {
    fn attributes(&self) -> Option<&Attributes> {
        let primary = self.primary.as_ref().and_then(|p| p.attributes.as_ref());
        (self.attributes.as_ref())
            .or(self.attributes_flat.as_ref())
            .or(primary)
    }

    /// The fields compared beside the attributes, shown in parentheses.
    fn fields_changed(&self, new: &Instance) -> Vec<String> {
        let primary = |i: &Instance, field: fn(&Primary) -> Option<Fingerprint>| {
            i.primary.as_ref().and_then(field)
        };
        let changed = |field: fn(&Primary) -> Option<Fingerprint>| {
            primary(self, field) != primary(new, field)
        };
        [
            ("dependencies", self.dependencies != new.dependencies),
            ("status", self.status != new.status),
            ("schema_version", self.schema_version != new.schema_version),
            ("index_key", self.index_key != new.index_key),
            ("private", self.private != new.private),
            (
                "sensitive_attributes",
                self.sensitive_attributes != new.sensitive_attributes,
            ),
            (
                "create_before_destroy",
                self.create_before_destroy != new.create_before_destroy,
            ),
            ("identity", self.identity != new.identity),
            ("id", changed(|p| p.id)),
            ("tainted", changed(|p| p.tainted)),
            ("meta", changed(|p| p.meta)),
            ("type", self.type_name != new.type_name),
            ("depends_on", self.depends_on != new.depends_on),
            ("deposed", self.deposed != new.deposed),
            ("provider", self.provider != new.provider),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| format!("({field})"))
        .collect()
    }
}

/// What a changed instance lists when its bytes differ and cannot be
/// compared name by name.
pub const UNREADABLE: &str = "(unreadable)";

/// What a changed instance lists when what differs is none of what the
/// diff names: another member of the instance, or another instance found
/// at the same address ([`super::inventory::Entry::repeated`]).
pub const OTHER: &str = "(other)";

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
/// a time. Blocking: call it off the runtime's threads. The names it
/// keeps (outputs and types) are held to a quarter of the body, as a
/// diff's are: two million outputs of a few bytes each took nineteen
/// times the body to list.
pub fn overview(body: &Payload) -> Result<Overview, ViewError> {
    let budget = usize::try_from(body.len() / 4)
        .unwrap_or(usize::MAX)
        .saturating_add(SLACK_BYTES);
    let (mut inv, _) = Inventory::read(body.reader(), Detail::Counts, false, (budget, false))
        .map_err(|e| match e {
            Failure::Read(e) => ViewError::State(read_failed("the state", e)),
            Failure::TooDense => ViewError::TooDense(
                "the state holds too many outputs or resource types for its size to be shown"
                    .into(),
            ),
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

/// The fingerprints of every text found at the address of instance `at`
/// of `inv`, `last` being the text kept; `None` for one that is not JSON.
fn wholes(
    body: &Body,
    inv: &Inventory,
    at: usize,
    last: &[u8],
) -> Result<Vec<Option<Fingerprint>>, StateError> {
    let whole = |t: &[u8]| serde_json::from_slice::<Fingerprint>(t).ok();
    let mut out = vec![whole(last)];
    for &other in inv
        .repeats
        .get(&inv.instances[at].text.start)
        .into_iter()
        .flatten()
    {
        out.push(whole(&text(body, other)?));
    }
    Ok(out)
}

/// What changed from `old` to `new`, by instance address and output name:
/// each body read once, then only what differs read again. Blocking: call
/// it off the runtime's threads.
pub fn diff(old: &Body, new: &Body) -> Result<Diff, ViewError> {
    let before = take_down(old)?;
    let after = take_down(new)?;
    let mut out = Diff::default();
    // The addresses the answer may hold: at most as many bytes as the
    // larger body (which holds each instance, and more) and the slack,
    // since an address is written whole for each instance, and one long
    // name over many instances would make an answer many times the
    // bodies' size.
    let budget = usize::try_from(old.payload.len().max(new.payload.len()))
        .unwrap_or(usize::MAX)
        .saturating_add(SLACK_BYTES);
    let written = std::cell::Cell::new(0usize);
    let joined = |inv: &Inventory, i: usize| {
        let (block, key) = inv.address(&inv.instances[i]);
        written.set(written.get() + block.len() + key.len());
        match written.get() > budget {
            true => Err(ViewError::TooDense(format!(
                "the changes from {} to {} name too much for their size to be shown",
                old.name, new.name
            ))),
            false => Ok(format!("{block}{key}")),
        }
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
                out.removed.push(joined(&before, i)?);
                i += 1;
            }
            Ordering::Greater => {
                out.added.push(joined(&after, j)?);
                j += 1;
            }
            Ordering::Equal => {
                let (a, b) = (before.instances[i].text, after.instances[j].text);
                if a.hash != b.hash {
                    let (a, b) = (text(old, a)?, text(new, b)?);
                    let parse = |t: &[u8]| serde_json::from_slice::<Instance>(t).ok();
                    let mut names = match (parse(&a), parse(&b)) {
                        (Some(a), Some(b)) => changed_names(&a, &b),
                        // Other bytes that cannot be compared (not shaped as
                        // an instance, nested past what is parsed, or of more
                        // attributes than are compared) are a change: a diff
                        // never hides one.
                        _ => vec![UNREADABLE.to_string()],
                    };
                    // Nothing named differs: the texts may differ in spacing
                    // or order only, or in what is not named, or another
                    // text at the same address may differ.
                    if names.is_empty()
                        && wholes(old, &before, i, &a)? != wholes(new, &after, j, &b)?
                    {
                        names.push(OTHER.to_string());
                    }
                    // The names go into the answer too.
                    written.set(written.get() + names.iter().map(String::len).sum::<usize>());
                    if !names.is_empty() {
                        out.changed.push(Changed {
                            address: joined(&after, j)?,
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
mod tests;
