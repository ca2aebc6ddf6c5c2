//! What a search of the fleet needs of one state body: its
//! `terraform_version` and, per resource block, the address parts, mode,
//! provider source and instance count. Never an attribute or an output.
//!
//! The catalog is taken down during the one pass that checks a body for
//! the write rules ([`super::head`]): serde reads the resource blocks with
//! the lenient types below and skips everything inside the instances
//! unread, so a write reads its body no more than before, and what is
//! kept grows with the number of blocks, never with the body.
//!
//! A written state's catalog rides in its history pointer beside the
//! newest record (not in the numbered records, which history pages read);
//! a state some other tool wrote has it in its kept summary
//! ([`super::summary`]).

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::scan::go_folded;

/// The most bytes of names and blocks a catalog holds, each block counting
/// [`ROW_BYTES`] beside its name. A state past it (a hundred thousand
/// blocks, or long names) has no catalog kept with its pointer, which
/// every write of the state reads; a search reads such a body when it
/// needs it. Taking a body down stops keeping blocks there, so a body of
/// many tiny blocks costs no more.
pub const CATALOG_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What one block of a catalog holds beside its name.
const ROW_BYTES: usize = size_of::<Row>();

/// The most bytes of names a catalog in a history pointer holds. Every
/// write and every read of a state reads its pointer, so a larger catalog
/// (a state of thousands of blocks) is kept with the summary instead,
/// which only a search's index reads: the index reads such a state's body
/// once for each new version.
pub const POINTER_CATALOG_BYTES: usize = 256 * 1024;

/// What a search needs of one state body. Type, provider and module names
/// are kept once each in `names` and referred to by position, so a block
/// costs its name and a few numbers, here and in the pointer's JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Catalog {
    /// The Terraform (or OpenTofu) version that wrote the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
    /// The names the entries refer to; the first is the empty name.
    #[serde(default)]
    names: Vec<String>,
    /// Every resource block, in body order.
    #[serde(default)]
    entries: Rows,
}

/// The blocks of a catalog: each a few numbers, their names one after
/// another in one string, so a state of many thousand blocks is a few
/// allocations, whether taken down from a body or read from a pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    text: String,
    rows: Vec<Row>,
}

/// One resource block: its type, module and provider source as positions
/// in the catalog's names, and where its name lies in [`Rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub type_name: u32,
    pub module: u32,
    pub provider: u32,
    at: u32,
    len: u32,
    pub instances: u32,
    pub data: bool,
}

impl Rows {
    fn push(&mut self, e: Entry) {
        let (Ok(at), Ok(len)) = (u32::try_from(self.text.len()), u32::try_from(e.name.len()))
        else {
            return;
        };
        self.text.push_str(&e.name);
        self.rows.push(Row {
            type_name: e.type_name,
            module: e.module,
            provider: e.provider,
            at,
            len,
            instances: e.instances,
            data: e.data,
        });
    }

    fn name(&self, r: &Row) -> &str {
        self.text
            .get(r.at as usize..(r.at + r.len) as usize)
            .unwrap_or("")
    }
}

impl Serialize for Rows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for r in &self.rows {
            seq.serialize_element(&EntryRef {
                type_name: r.type_name,
                module: r.module,
                provider: r.provider,
                name: self.name(r),
                data: r.data,
                instances: r.instances,
            })?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = Rows;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of catalog entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
                let mut out = Rows::default();
                while let Some(e) = seq.next_element::<Entry>()? {
                    out.push(e);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Elements)
    }
}

/// An entry as written, borrowing its name.
#[derive(Serialize)]
struct EntryRef<'a> {
    #[serde(rename = "t")]
    type_name: u32,
    #[serde(rename = "m", skip_serializing_if = "is_zero")]
    module: u32,
    #[serde(rename = "p", skip_serializing_if = "is_zero")]
    provider: u32,
    #[serde(rename = "n")]
    name: &'a str,
    #[serde(rename = "d", skip_serializing_if = "std::ops::Not::not")]
    data: bool,
    #[serde(rename = "i")]
    instances: u32,
}

/// One resource block as a catalog's JSON holds it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
struct Entry {
    /// Its type, module and provider source, as positions in the names.
    #[serde(rename = "t", default)]
    type_name: u32,
    #[serde(rename = "m", default)]
    module: u32,
    #[serde(rename = "p", default)]
    provider: u32,
    #[serde(rename = "n", default)]
    name: String,
    #[serde(rename = "d", default)]
    data: bool,
    #[serde(rename = "i", default)]
    instances: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One resource block with its names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// The module path (`module.db`, `module.a["x"].module.b`), empty for
    /// the root module.
    pub module: String,
    /// A data source rather than a managed resource.
    pub data: bool,
    pub type_name: String,
    pub name: String,
    /// The provider's source address (`registry.terraform.io/hashicorp/aws`).
    pub provider: String,
    /// Instances of the block (`count`, `for_each`).
    pub instances: u32,
}

impl Block {
    /// The block's address as Terraform writes it:
    /// `[<module>.][data.]<type>.<name>`.
    pub fn address(&self) -> String {
        let mut out = String::with_capacity(self.module.len() + self.type_name.len() + 24);
        write_address(
            &mut out,
            &self.module,
            self.data,
            &self.type_name,
            &self.name,
        );
        out
    }

    /// `managed` or `data`, as the state's `mode`.
    pub fn mode(&self) -> &'static str {
        if self.data { "data" } else { "managed" }
    }
}

/// Gives each distinct name a position once.
#[derive(Default)]
struct Interner {
    ids: std::collections::HashMap<String, u32>,
    names: Vec<String>,
    /// Bytes of names and block names held.
    bytes: usize,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if self.names.is_empty() {
            self.ids.insert(String::new(), 0);
            self.names.push(String::new());
        }
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.bytes += name.len();
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        id
    }
}

impl Catalog {
    /// A catalog of `blocks`.
    pub fn new(terraform_version: Option<String>, blocks: Vec<Block>) -> Self {
        let mut names = Interner::default();
        let mut entries = Rows::default();
        for b in blocks {
            entries.push(Entry {
                type_name: names.id(&b.type_name),
                module: names.id(&b.module),
                provider: names.id(&b.provider),
                name: b.name,
                data: b.data,
                instances: b.instances,
            });
        }
        Catalog {
            terraform_version,
            names: names.names,
            entries,
        }
    }

    /// Bytes of names it holds.
    pub fn bytes(&self) -> usize {
        self.names.iter().map(String::len).sum::<usize>() + self.entries.text.len()
    }

    /// Whether it is small enough to ride in a history pointer.
    pub fn fits_a_pointer(&self) -> bool {
        self.bytes() <= POINTER_CATALOG_BYTES
    }

    /// The name at position `id` (empty when there is none).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    /// The number of names, for tables indexed by position.
    pub fn names_len(&self) -> usize {
        self.names.len()
    }

    /// Every block, as kept.
    pub fn entries(&self) -> &[Row] {
        &self.entries.rows
    }

    /// A block's own name.
    pub fn entry_name(&self, row: &Row) -> &str {
        self.entries.name(row)
    }

    /// Every block with its names.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.entries.rows.iter().map(|e| Block {
            module: self.name(e.module).to_string(),
            data: e.data,
            type_name: self.name(e.type_name).to_string(),
            name: self.entry_name(e).to_string(),
            provider: self.name(e.provider).to_string(),
            instances: e.instances,
        })
    }

    /// How many blocks.
    pub fn len(&self) -> usize {
        self.entries.rows.len()
    }

    /// Whether it has no block.
    pub fn is_empty(&self) -> bool {
        self.entries.rows.is_empty()
    }

    /// Whether it was taken down from a version-3 state before their
    /// modules were read, so holds none of the `resources` blocks the
    /// state's summary counts: it is taken down again.
    pub fn predates_v3_modules(&self, resources: usize) -> bool {
        let before_0_12 = |version: &str| {
            let minor = version.trim_start_matches('v').strip_prefix("0.");
            minor
                .and_then(|rest| rest.split('.').next()?.parse::<u32>().ok())
                .is_some_and(|minor| minor < 12)
        };
        resources > 0
            && self.is_empty()
            && self.terraform_version.as_deref().is_some_and(before_0_12)
    }
}

/// Appends a block's address to `out`.
pub fn write_address(out: &mut String, module: &str, data: bool, type_name: &str, name: &str) {
    if !module.is_empty() {
        out.push_str(module);
        out.push('.');
    }
    if data {
        out.push_str("data.");
    }
    out.push_str(type_name);
    out.push('.');
    out.push_str(name);
}

/// The provider source address in a block's `provider` field:
/// `provider["registry.terraform.io/hashicorp/aws"]` (with an alias after
/// it, or a module path before it) gives the quoted address; the
/// `provider.aws` of states written before provider sources is a legacy
/// provider, `registry.terraform.io/-/aws`, as Terraform itself reads it.
pub fn provider_source(field: &str) -> String {
    if let Some(at) = field.find("provider[\"") {
        let rest = &field[at + "provider[\"".len()..];
        if let Some(end) = rest.find("\"]") {
            return rest[..end].to_string();
        }
    }
    if let Some(at) = field.rfind("provider.") {
        let name = field[at + "provider.".len()..]
            .split('.')
            .next()
            .unwrap_or_default();
        if !name.is_empty() {
            return format!("registry.terraform.io/-/{name}");
        }
    }
    field.to_string()
}

impl Catalog {
    /// The catalog of what the head read, `None` past [`CATALOG_BYTES_MAX`].
    pub(super) fn build(terraform_version: Option<String>, blocks: Blocks) -> Option<Arc<Catalog>> {
        if blocks.names.bytes > CATALOG_BYTES_MAX {
            return None;
        }
        Some(Arc::new(Catalog {
            terraform_version,
            names: blocks.names.names,
            entries: blocks.entries,
        }))
    }
}

/// `resources` as the head reads it: an array whose elements are counted
/// whatever they are, the objects among them taken down as [`Entry`]s.
#[derive(Default)]
pub(super) struct Blocks {
    pub(super) count: usize,
    entries: Rows,
    names: Interner,
}

impl Blocks {
    fn push(&mut self, entry: Entry) {
        self.names.bytes += entry.name.len() + ROW_BYTES;
        self.entries.push(entry);
    }

    /// Whether the blocks hold more than a catalog keeps: the rest are
    /// counted, not kept.
    fn full(&self) -> bool {
        self.names.bytes > CATALOG_BYTES_MAX
    }

    /// Adds `other`'s blocks, in `module` when given (else in their own).
    pub(super) fn extend(&mut self, mut other: Blocks, module: Option<&str>) {
        // Into nothing yet: moved whole, not copied.
        if self.count == 0 && self.entries.rows.is_empty() && self.names.bytes == 0 {
            if let Some(module) = module {
                let id = other.names.id(module);
                other.entries.rows.iter_mut().for_each(|r| r.module = id);
            }
            *self = other;
            return;
        }
        self.count = self.count.saturating_add(other.count);
        let names = &other.names.names;
        let mut ids = std::collections::HashMap::new();
        let mut id = |own: &mut Interner, n: u32| {
            *ids.entry(n)
                .or_insert_with(|| own.id(names.get(n as usize).map_or("", String::as_str)))
        };
        let module = module.map(|m| self.names.id(m));
        for row in &other.entries.rows {
            let name = other.entries.name(row).to_string();
            let entry = Entry {
                type_name: id(&mut self.names, row.type_name),
                module: module.unwrap_or_else(|| id(&mut self.names, row.module)),
                provider: id(&mut self.names, row.provider),
                name,
                data: row.data,
                instances: row.instances,
            };
            self.push(entry);
        }
    }

    /// Whether row `at` is the block of `v3`.
    fn is_row_of(&self, at: usize, v3: &V3Name<'_>) -> bool {
        let row = &self.entries.rows[at];
        let type_name = self.names.names.get(row.type_name as usize);
        row.data == v3.data
            && self.entries.name(row) == v3.name
            && type_name.map(String::as_str) == Some(v3.type_name)
    }
}

impl<'de> Deserialize<'de> for Blocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = Blocks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of resource blocks")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blocks, A::Error> {
                let mut out = Blocks::default();
                while let Some(element) = seq.next_element::<Lenient<RawBlock>>()? {
                    out.count += 1;
                    // Past the bound the catalog is dropped: only counted.
                    if let Some(raw) = element.0.filter(|_| !out.full()) {
                        let entry = raw.into_entry(&mut out.names);
                        out.push(entry);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Elements)
    }
}

/// A block's fields as found; any of them may be missing or of another type.
#[derive(Default)]
struct RawBlock {
    module: Option<String>,
    mode: Option<String>,
    type_name: Option<String>,
    name: Option<String>,
    provider: Option<String>,
    instances: u32,
}

impl RawBlock {
    fn into_entry(self, names: &mut Interner) -> Entry {
        let provider = self
            .provider
            .as_deref()
            .map(provider_source)
            .unwrap_or_default();
        Entry {
            type_name: names.id(self.type_name.as_deref().unwrap_or("")),
            module: names.id(self.module.as_deref().unwrap_or("")),
            provider: names.id(&provider),
            name: self.name.unwrap_or_default(),
            data: self.mode.as_deref() == Some("data"),
            instances: self.instances,
        }
    }
}

/// A value of the expected shape, or `None` for any other JSON value,
/// which is skipped unread: a block of an odd shape is still counted, as
/// the head always counted it, and never refuses the body.
struct Lenient<T>(Option<T>);

/// What a lenient value is, when it is one.
trait Shape: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Shape for String {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
}

/// The number of elements of an array.
struct Count(u32);

impl Shape for Count {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut n = 0u32;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n = n.saturating_add(1);
        }
        Ok(Some(Count(n)))
    }
}

impl Shape for RawBlock {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut raw = RawBlock::default();
        while let Some(key) = map.next_key::<Lenient<String>>()? {
            let text = |v: Lenient<String>| v.0;
            match key.0.as_deref().map(go_folded).as_deref() {
                Some("module") => raw.module = text(map.next_value()?),
                Some("mode") => raw.mode = text(map.next_value()?),
                Some("type") => raw.type_name = text(map.next_value()?),
                Some("name") => raw.name = text(map.next_value()?),
                Some("provider") => raw.provider = text(map.next_value()?),
                Some("instances") => {
                    raw.instances = map.next_value::<Lenient<Count>>()?.0.map_or(0, |c| c.0)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(raw))
    }
}

impl<'de, T: Shape> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any<T>(std::marker::PhantomData<T>);
        impl<'de, T: Shape> Visitor<'de> for Any<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                T::from_seq(seq).map(Lenient)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::from_map(map).map(Lenient)
            }
        }
        d.deserialize_any(Any(std::marker::PhantomData))
    }
}

/// A version-3 state's `modules` (Terraform before 0.12) as [`Blocks`]:
/// each module's `resources` is an object of instances by name (see
/// [`V3Name`]), those of one name but their index one block. Any other
/// shape holds none, and is no reason to refuse a body. Member names are
/// matched as Terraform 0.11 matched them ([`go_folded`]); a repeated
/// `path` counts its last, a repeated `resources` adds to the first.
#[derive(Default)]
pub(super) struct V3Blocks(pub(super) Blocks);

impl<'de> Deserialize<'de> for V3Blocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(V3Blocks(
            Lenient::<V3Modules>::deserialize(d)?
                .0
                .unwrap_or_default()
                .0,
        ))
    }
}

#[derive(Default)]
struct V3Modules(Blocks);

impl Shape for V3Modules {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut out = Blocks::default();
        while let Some(module) = seq.next_element::<Lenient<V3Module>>()? {
            let Some(module) = module.0 else { continue };
            match module.path {
                Some(path) => out.extend(module.blocks, Some(&path)),
                // Past the bound the catalog is dropped: only counted.
                None => {
                    out.extend(module.blocks, None);
                    out.names.bytes = out.names.bytes.max(CATALOG_BYTES_MAX + 1);
                }
            }
        }
        Ok(Some(V3Modules(out)))
    }
}

/// One version-3 module: its address ([`V3Path`]; `None` past
/// [`V3_PATH_BYTES_MAX`]) and its blocks, their module not yet set.
struct V3Module {
    path: Option<String>,
    blocks: Blocks,
}

/// The longest module address a catalog takes from a version-3 path.
const V3_PATH_BYTES_MAX: usize = 64 * 1024;

impl Shape for V3Module {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut module = V3Module {
            path: Some(String::new()),
            blocks: Blocks::default(),
        };
        while let Some(key) = map.next_key::<Lenient<String>>()? {
            match key.0.as_deref().map(go_folded).as_deref() {
                Some("path") => {
                    let path = map.next_value::<Lenient<V3Path>>()?.0;
                    module.path = path.map_or(Some(String::new()), |p| p.0);
                }
                Some("resources") => {
                    if let Some(resources) = map.next_value::<Lenient<V3Resources>>()?.0 {
                        module.blocks.extend(resources.0, None);
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(module))
    }
}

/// A version-3 module's `path` as the module part of its resources'
/// addresses ([`v3_path_step`]), `None` past [`V3_PATH_BYTES_MAX`];
/// `null` or another value is the root.
struct V3Path(Option<String>);

impl Shape for V3Path {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let (mut out, mut first) = (Some(String::new()), true);
        while let Some(name) = seq.next_element::<Lenient<String>>()? {
            if let (Some(name), Some(address)) = (name.0, &mut out) {
                v3_path_step(address, &mut first, &name);
                if address.len() > V3_PATH_BYTES_MAX {
                    out = None;
                }
            }
        }
        Ok(Some(V3Path(out)))
    }
}

/// Adds one name of a version-3 module's `path` (`["root", "net",
/// "subnets"]`) to `address` (`module.net.module.subnets`): the root
/// module's address is empty, and a path without its leading `root` is
/// read as if it had one, as Terraform 0.11 read it. Names that are not
/// strings are skipped.
pub(super) fn v3_path_step(address: &mut String, first: &mut bool, name: &str) {
    if std::mem::take(first) && name == "root" {
        return;
    }
    if !address.is_empty() {
        address.push('.');
    }
    address.push_str("module.");
    address.push_str(name);
}

/// A version-3 module's `resources`, taken down as they are read: each
/// name one instance of the block its name without the index makes.
#[derive(Default)]
struct V3Resources(Blocks);

impl Shape for V3Resources {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        use std::hash::BuildHasher;
        let mut out = Blocks::default();
        // Each block's row by a hash of its address, the names compared
        // on a match: no address is held twice.
        let hashing = std::collections::hash_map::RandomState::new();
        let mut rows: std::collections::HashMap<u64, usize> = Default::default();
        // Past the bound the blocks are counted, not kept: a block then is
        // a name whose block differs from the one before (Terraform writes
        // the names sorted, so a block's instances are side by side).
        let mut last = String::new();
        while let Some(name) = map.next_key::<String>()? {
            let provider = map.next_value::<Lenient<V3Provider>>()?.0.and_then(|p| p.0);
            let v3 = V3Name::of(&name);
            if out.full() {
                if v3.block != last {
                    out.count += 1;
                    last = v3.block.to_string();
                }
                continue;
            }
            let hash = hashing.hash_one(v3.block);
            if let Some(&at) = rows.get(&hash)
                && out.is_row_of(at, &v3)
            {
                let row = &mut out.entries.rows[at];
                row.instances = row.instances.saturating_add(1);
                continue;
            }
            out.count += 1;
            rows.entry(hash).or_insert(out.entries.rows.len());
            let provider = provider.as_deref().map(provider_source).unwrap_or_default();
            let entry = Entry {
                type_name: out.names.id(v3.type_name),
                module: 0,
                provider: out.names.id(&provider),
                name: v3.name.to_string(),
                data: v3.data,
                instances: 1,
            };
            out.push(entry);
            if out.full() {
                rows = Default::default();
                last = v3.block.to_string();
            }
        }
        Ok(Some(V3Resources(out)))
    }
}

/// A version-3 resource's `provider` field (`provider.aws`).
struct V3Provider(Option<String>);

impl Shape for V3Provider {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut provider = None;
        while let Some(key) = map.next_key::<Lenient<String>>()? {
            match key.0.as_deref().map(go_folded).as_deref() {
                Some("provider") => provider = map.next_value::<Lenient<String>>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(V3Provider(provider)))
    }
}

/// A version-3 resource's name within its module
/// (`[data.]<type>.<name>[.<index>]`: `aws_instance.web.1`,
/// `data.aws_ami.ubuntu`), in the parts of an address.
pub(super) struct V3Name<'a> {
    /// The block's address within its module: the name without its index.
    pub(super) block: &'a str,
    pub(super) data: bool,
    pub(super) type_name: &'a str,
    pub(super) name: &'a str,
    /// The `count` index, for a resource with more than one instance.
    pub(super) index: Option<u64>,
}

impl<'a> V3Name<'a> {
    pub(super) fn of(text: &'a str) -> Self {
        let plain = |block: &'a str| block.strip_prefix("data.").unwrap_or(block);
        let (block, index) = match text.rsplit_once('.') {
            Some((block, index)) if plain(block).contains('.') => match index.parse() {
                Ok(index) => (block, Some(index)),
                Err(_) => (text, None),
            },
            _ => (text, None),
        };
        let (type_name, name) = plain(block).split_once('.').unwrap_or((plain(block), ""));
        V3Name {
            block,
            data: block.starts_with("data."),
            type_name,
            name,
            index,
        }
    }
}

/// A top-level `terraform_version`: its text when it is a string.
pub(super) fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(LenientText::deserialize(d)?.0)
}

/// A string, or `None` for any other JSON value.
pub(super) struct LenientText(pub(super) Option<String>);

impl<'de> Deserialize<'de> for LenientText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LenientText(Lenient::<String>::deserialize(d)?.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(json: &str) -> Blocks {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn blocks_are_read_leniently_and_counted() {
        let b = blocks(
            r#"[
            {"module": "module.db", "mode": "managed", "type": "aws_db_instance", "name": "main",
             "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
             "instances": [{"attributes": {"password": "secret"}}, {"index_key": 1}]},
            {"mode": "data", "type": "aws_ami", "name": "ubuntu",
             "provider": "module.x.provider[\"registry.terraform.io/hashicorp/aws\"].west", "instances": []},
            {"type": 5, "name": ["x"], "instances": {"odd": true}},
            7, null, "text", [1, [2]]
        ]"#,
        );
        assert_eq!(b.count, 7);
        let catalog = Catalog::build(None, b).unwrap();
        let blocks: Vec<Block> = catalog.blocks().collect();
        assert_eq!(blocks.len(), 3);
        let db = &blocks[0];
        assert_eq!(db.address(), "module.db.aws_db_instance.main");
        assert_eq!(
            (db.provider.as_str(), db.instances, db.mode()),
            ("registry.terraform.io/hashicorp/aws", 2, "managed")
        );
        assert_eq!(blocks[1].address(), "data.aws_ami.ubuntu");
        assert_eq!(blocks[1].provider, "registry.terraform.io/hashicorp/aws");
        assert_eq!(blocks[2], Block::default());
        assert_eq!(catalog.names_len(), 5, "each name kept once");
        let serialized = serde_json::to_string(&catalog).unwrap();
        assert!(!serialized.contains("secret"), "{serialized}");
        let back: Catalog = serde_json::from_str(&serialized).unwrap();
        assert_eq!(back, *catalog);
    }

    #[test]
    fn provider_sources() {
        for (field, source) in [
            (
                "provider[\"registry.terraform.io/hashicorp/aws\"]",
                "registry.terraform.io/hashicorp/aws",
            ),
            (
                "provider[\"example.com/acme/thing\"].alias",
                "example.com/acme/thing",
            ),
            ("provider.aws", "registry.terraform.io/-/aws"),
            (
                "module.a.provider.google.beta",
                "registry.terraform.io/-/google",
            ),
            ("something else", "something else"),
        ] {
            assert_eq!(provider_source(field), source, "{field}");
        }
    }

    #[test]
    fn a_catalog_past_its_bound_is_not_kept() {
        let big = format!(r#"[{{"name": "{}"}}]"#, "n".repeat(CATALOG_BYTES_MAX + 1));
        assert!(Catalog::build(None, blocks(&big)).is_none());
        assert!(Catalog::build(Some("1.5.7".into()), blocks(r#"[{"name": "n"}]"#)).is_some());
    }
}
