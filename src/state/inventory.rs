//! What a state body holds, read in one pass a buffer at a time
//! ([`Scanner`]): resource blocks by type, instances by address, outputs by
//! name. For a diff, each instance and output also gets where its text lies
//! in the body and a keyed hash of that text; nothing of a value is kept.
//! Two versions are compared by those hashes, and only what differs is read
//! again and compared value by value ([`super::diff`]).
//!
//! Memory grows with the number of instances, not with the body: a block's
//! address is kept once for all its instances, and an instance costs its
//! [`Entry`] and its index key. A body whose instances would make that more
//! than a quarter of its size (plus [`SLACK_BYTES`]) is refused
//! ([`Failure::TooDense`]): no state Terraform writes comes close, and
//! without the bound a body of empty instances (`{},{},...`) would make a
//! view hold many times its size.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::io::Read;

use serde_json::Value;

use super::catalog::{V3Name, v3_path_step};
use super::scan::go_folded;
use super::scan::{KNOWN_KEY_BYTES, Key, ScanError, Scanner};

/// The longest block field (`module`, `type`, ...), index key or output
/// name read; a longer one makes the body one that holds nothing.
const FIELD_BYTES: usize = 1024 * 1024;

/// What an inventory may hold beyond a quarter of its body's size.
pub(super) const SLACK_BYTES: usize = 8 * 1024 * 1024;

/// What each table of an inventory of a large body reserves up front.
/// glibc serves an allocation above 32 MiB from a mapping of its own, and
/// unmaps it when freed, without raising the size from which it maps
/// (which it does for a smaller one); a table grown step by step would come
/// from a thread's arena once a large view has raised that size, and glibc
/// keeps the freed top of such an arena, so every view of a large state
/// would leave the server tens of megabytes larger. Pages never written
/// take no memory.
const LARGE_TABLE_BYTES: usize = 64 * 1024 * 1024;

/// Where a piece of text lies in [`Inventory::names`].
#[derive(Clone, Copy)]
struct Span {
    at: u32,
    len: u32,
}

/// Where a value's text lies in the body, and its keyed hash.
#[derive(Clone, Copy, Debug)]
pub(super) struct Text {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) hash: u64,
}

/// One resource instance: its address, as its block's and its own index
/// key, and its text.
pub(super) struct Entry {
    block: u32,
    key: Span,
    pub(super) text: Text,
}

/// One output: its name and its value's text.
pub(super) struct Output {
    pub(super) name: String,
    pub(super) text: Text,
}

/// What a walk through a body takes down, and the most it may hold.
#[derive(Clone, Copy)]
struct Walking<'a> {
    detail: Detail<'a>,
    /// Bytes the inventory may hold ([`Inventory::within`]).
    budget: usize,
}

/// How much of a body to take down.
#[derive(Clone, Copy)]
pub(super) enum Detail<'a> {
    /// Counts by type and output names: what the overview shows.
    Counts,
    /// Also every instance and output with its text's place and hash,
    /// keyed with the given state.
    Texts(&'a RandomState),
}

/// Why a body could not be taken down.
#[derive(Debug)]
pub(super) enum Failure {
    /// Reading it failed.
    Read(std::io::Error),
    /// It holds more instances than its size allows to keep.
    TooDense,
}

/// What one body holds.
#[derive(Default)]
pub(super) struct Inventory {
    /// Block addresses and instance keys, one after another.
    names: String,
    /// Each block's address (`[<module>.][data.]<type>.<name>`).
    blocks: Vec<Span>,
    /// Every instance, in body order until [`Inventory::sort`].
    pub(super) instances: Vec<Entry>,
    /// Every output, in body order until [`Inventory::sort`].
    pub(super) outputs: Vec<Output>,
    /// The other texts found at an instance's address, by where the text
    /// [`Inventory::sort`] kept starts, for addresses found more than once.
    pub(super) repeats: HashMap<u64, Vec<Text>>,
    /// Blocks and instances by type name (`data.<type>` for data sources).
    pub(super) types: BTreeMap<String, (usize, usize)>,
    /// Resource blocks.
    pub(super) resources: usize,
    /// Bytes of the output names held.
    output_names: usize,
    /// Bytes the type names held take, with their place in the map.
    type_names: usize,
    /// Bytes the block table of the version-3 module being read takes
    /// ([`Inventory::walk_module`]); dropped with it.
    module_blocks: usize,
}

/// What one type name takes in [`Inventory::types`] beside its bytes.
const TYPE_ENTRY_BYTES: usize = 64;

/// What one block takes in a version-3 module's block table beside its
/// name's bytes.
const BLOCK_ENTRY_BYTES: usize = 64;

impl Inventory {
    /// Reads `body` once. A body that is not a Terraform state (an
    /// encrypted envelope, other JSON, not JSON) holds nothing. With `md5`
    /// the hex MD5 of every byte comes back too; `budget` bounds what the
    /// inventory holds ([`Failure::TooDense`]), and `large` says the body
    /// is large enough for its tables to be reserved whole
    /// ([`LARGE_TABLE_BYTES`]).
    pub(super) fn read(
        body: impl Read,
        detail: Detail<'_>,
        md5: bool,
        (budget, large): (usize, bool),
    ) -> Result<(Inventory, Option<String>), Failure> {
        let mut scan = Scanner::new(body, md5);
        let mut inventory = Inventory::default();
        if large && let Detail::Texts(_) = detail {
            inventory.reserve(LARGE_TABLE_BYTES);
        }
        match inventory.walk(&mut scan, Walking { detail, budget }) {
            Ok(()) => {}
            Err(Walk::Scan(ScanError::Read(e))) => return Err(Failure::Read(e)),
            Err(Walk::TooDense) => return Err(Failure::TooDense),
            Err(Walk::Scan(ScanError::Shape(why))) => {
                tracing::debug!(why, "the body is not a state; it holds nothing to show");
                inventory = Inventory::default();
            }
        }
        let md5 = scan.finish_md5().map_err(|e| match e {
            ScanError::Read(e) => Failure::Read(e),
            ScanError::Shape(_) => unreachable!("reading to the end checks no shape"),
        })?;
        Ok((inventory, md5))
    }

    /// The two parts of an instance's address: its block's, and its index
    /// key as written in an address (`[0]`, `["key"]`, or nothing).
    pub(super) fn address(&self, entry: &Entry) -> (&str, &str) {
        (
            self.span(self.blocks[entry.block as usize]),
            self.span(entry.key),
        )
    }

    fn span(&self, s: Span) -> &str {
        &self.names[s.at as usize..(s.at + s.len) as usize]
    }

    /// Sorts instances by address and outputs by name, keeping the last of
    /// any repeated one, as a JSON object keeps the last of a repeated key.
    /// A repeated address keeps a hash of every text found at it, so that a
    /// change to any of them is a change, and the others' places
    /// ([`Inventory::repeats`]).
    pub(super) fn sort(&mut self) {
        let (names, blocks, repeats) = (&self.names, &self.blocks, &mut self.repeats);
        let part = |s: Span| &names.as_bytes()[s.at as usize..(s.at + s.len) as usize];
        let address = |e: &Entry| (part(blocks[e.block as usize]), part(e.key));
        // A stable sort keeps repeats in body order; reversed, dedup keeps
        // the last of each.
        self.instances
            .sort_by(|a, b| cmp_joined(address(a), address(b)));
        self.instances.reverse();
        self.instances.dedup_by(|earlier, kept| {
            let same = cmp_joined(address(earlier), address(kept)) == Ordering::Equal;
            if same {
                kept.text.hash = (kept.text.hash ^ earlier.text.hash.rotate_left(29))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                repeats
                    .entry(kept.text.start)
                    .or_default()
                    .push(earlier.text);
            }
            same
        });
        self.instances.reverse();
        self.outputs.sort_by(|a, b| a.name.cmp(&b.name));
        self.outputs.reverse();
        self.outputs.dedup_by(|a, b| a.name == b.name);
        self.outputs.reverse();
    }

    /// Compares two instances' addresses as whole strings.
    pub(super) fn cmp_address(&self, a: &Entry, other: &Inventory, b: &Entry) -> Ordering {
        let (a1, a2) = self.address(a);
        let (b1, b2) = other.address(b);
        cmp_joined(
            (a1.as_bytes(), a2.as_bytes()),
            (b1.as_bytes(), b2.as_bytes()),
        )
    }

    /// Reserves `bytes` for each table.
    fn reserve(&mut self, bytes: usize) {
        self.names.reserve_exact(bytes);
        self.blocks.reserve_exact(bytes / size_of::<Span>());
        self.instances.reserve_exact(bytes / size_of::<Entry>());
    }

    /// Bytes written, roughly: what the budget bounds (reserved pages
    /// never written take no memory).
    fn held(&self) -> usize {
        self.names.len()
            + self.blocks.len() * size_of::<Span>()
            + self.instances.len() * size_of::<Entry>()
            + self.outputs.len() * size_of::<Output>()
            + self.output_names
            + self.type_names
            + self.module_blocks
    }

    fn within(&self, budget: usize) -> Result<(), Walk> {
        match self.held() > budget {
            true => Err(Walk::TooDense),
            false => Ok(()),
        }
    }

    fn push_name(&mut self, text: &str) -> Result<Span, Walk> {
        let at = u32::try_from(self.names.len()).map_err(|_| Walk::TooDense)?;
        let len = u32::try_from(text.len()).map_err(|_| Walk::TooDense)?;
        at.checked_add(len).ok_or(Walk::TooDense)?;
        self.names.push_str(text);
        Ok(Span { at, len })
    }
}

/// Orders `a.0 + a.1` against `b.0 + b.1` without joining them: a
/// block's address and an index key sort as the one address they make.
fn cmp_joined(a: (&[u8], &[u8]), b: (&[u8], &[u8])) -> Ordering {
    let (mut a, mut b) = ([a.0, a.1], [b.0, b.1]);
    let (mut i, mut j) = (0, 0);
    loop {
        while i < 2 && a[i].is_empty() {
            i += 1;
        }
        while j < 2 && b[j].is_empty() {
            j += 1;
        }
        match (i < 2, j < 2) {
            (false, false) => return Ordering::Equal,
            (false, true) => return Ordering::Less,
            (true, false) => return Ordering::Greater,
            (true, true) => {}
        }
        let n = a[i].len().min(b[j].len());
        match a[i][..n].cmp(&b[j][..n]) {
            Ordering::Equal => {
                a[i] = &a[i][n..];
                b[j] = &b[j][n..];
            }
            other => return other,
        }
    }
}

/// Why a walk stopped.
enum Walk {
    Scan(ScanError),
    TooDense,
}

impl From<ScanError> for Walk {
    fn from(e: ScanError) -> Self {
        Walk::Scan(e)
    }
}

/// A field's text decoded as an optional string.
fn optional_string(text: Option<Vec<u8>>) -> Result<Option<String>, Walk> {
    let text = text.ok_or(Walk::Scan(ScanError::Shape("a field is too long")))?;
    serde_json::from_slice(&text)
        .map_err(|_| Walk::Scan(ScanError::Shape("a field is not a string")))
}

/// An index key as Terraform writes it in an address: `[0]` for `count`,
/// `["key"]` for `for_each`, nothing for another value.
fn index_suffix(text: Option<Vec<u8>>) -> Result<String, Walk> {
    let text = text.ok_or(Walk::Scan(ScanError::Shape("an index key is too long")))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|_| Walk::Scan(ScanError::Shape("an index key is not JSON")))?;
    Ok(match value {
        Value::Number(n) => format!("[{n}]"),
        Value::String(s) => {
            format!(
                "[{}]",
                serde_json::to_string(&s).expect("a string serialises")
            )
        }
        _ => String::new(),
    })
}

/// A version-3 module's `path` as the module part of its resources'
/// addresses ([`v3_path_step`]): names that are not strings are skipped,
/// `null` or another value is the root module. A path longer than
/// [`FIELD_BYTES`] makes the body too dense to show.
fn read_path<R: Read>(scan: &mut Scanner<R>) -> Result<String, Walk> {
    let (mut address, mut first) = (String::new(), true);
    if scan.peek()? != Some(b'[') {
        scan.skip_value()?;
        return Ok(address);
    }
    scan.each_element(|scan| {
        if scan.peek()? != Some(b'"') {
            return Ok(scan.skip_value()?);
        }
        let name = scan.copy_value(FIELD_BYTES)?.ok_or(Walk::TooDense)?;
        let name: String = serde_json::from_slice(&name)
            .map_err(|_| Walk::Scan(ScanError::Shape("a string is not valid JSON")))?;
        v3_path_step(&mut address, &mut first, &name);
        match address.len() > FIELD_BYTES {
            true => Err(Walk::TooDense),
            false => Ok(()),
        }
    })?;
    Ok(address)
}

/// A block's fields that make its address.
#[derive(Default)]
struct BlockFields {
    module: Option<String>,
    mode: Option<String>,
    type_name: Option<String>,
    name: Option<String>,
}

impl BlockFields {
    fn is_data(&self) -> bool {
        self.mode.as_deref() == Some("data")
    }

    /// `[<module>.][data.]<type>.<name>`.
    fn address(&self) -> String {
        let mut address = String::new();
        if let Some(module) = self.module.as_deref().filter(|m| !m.is_empty()) {
            address.push_str(module);
            address.push('.');
        }
        if self.is_data() {
            address.push_str("data.");
        }
        address.push_str(self.type_name.as_deref().unwrap_or(""));
        address.push('.');
        address.push_str(self.name.as_deref().unwrap_or(""));
        address
    }
}

impl Inventory {
    fn walk<R: Read>(&mut self, scan: &mut Scanner<R>, how: Walking<'_>) -> Result<(), Walk> {
        scan.begin_object()?;
        let (mut first, mut resources, mut outputs, mut modules) = (true, false, false, false);
        while let Some(key) = scan.next_key(&mut first, KNOWN_KEY_BYTES)? {
            if key.is("resources") {
                if std::mem::replace(&mut resources, true) {
                    return Err(ScanError::Shape("`resources` is repeated").into());
                }
                scan.each_element(|scan| self.walk_block(scan, how))?;
            } else if key.is("modules") {
                if std::mem::replace(&mut modules, true) {
                    return Err(ScanError::Shape("`modules` is repeated").into());
                }
                scan.each_element(|scan| self.walk_module(scan, how))?;
            } else if key.is("outputs") {
                if std::mem::replace(&mut outputs, true) {
                    return Err(ScanError::Shape("`outputs` is repeated").into());
                }
                self.walk_outputs(scan, how)?;
            } else {
                scan.skip_value()?;
            }
        }
        scan.end()?;
        Ok(())
    }

    fn walk_block<R: Read>(&mut self, scan: &mut Scanner<R>, how: Walking<'_>) -> Result<(), Walk> {
        let block = u32::try_from(self.blocks.len()).map_err(|_| Walk::TooDense)?;
        let mut fields = BlockFields::default();
        let mut instances = 0;
        let instances_from = self.instances.len();
        scan.begin_object()?;
        let mut first = true;
        // Names as Terraform matches them ([`go_folded`]), the last of a
        // repeated one counting, as Terraform reads it.
        while let Some(key) = scan.next_key(&mut first, KNOWN_KEY_BYTES)? {
            let folded = match &key {
                Key::Text(k) => go_folded(k),
                Key::Other => "".into(),
            };
            let field = match &*folded {
                "module" => Some(&mut fields.module),
                "mode" => Some(&mut fields.mode),
                "type" => Some(&mut fields.type_name),
                "name" => Some(&mut fields.name),
                _ => None,
            };
            if let Some(field) = field {
                *field = optional_string(scan.copy_value(FIELD_BYTES)?)?;
            } else if folded == "instances" {
                self.instances.truncate(instances_from);
                instances = self.walk_instances(scan, how, block)?;
            } else {
                scan.skip_value()?;
            }
        }
        if let Detail::Texts(_) = how.detail {
            let span = self.push_name(&fields.address())?;
            self.blocks.push(span);
            self.within(how.budget)?;
        }
        let mut type_name = fields.type_name.clone().unwrap_or_default();
        if fields.is_data() {
            type_name.insert_str(0, "data.");
        }
        self.count(type_name, 1, instances);
        self.within(how.budget)
    }

    /// Counts `blocks` resource blocks and `instances` instances of a type
    /// (`data.<type>` for data sources).
    fn count(&mut self, type_name: String, blocks: usize, instances: usize) {
        if !self.types.contains_key(&type_name) {
            self.type_names += type_name.len() + TYPE_ENTRY_BYTES;
        }
        let counts = self.types.entry(type_name).or_default();
        counts.0 += blocks;
        counts.1 += instances;
        self.resources += blocks;
    }

    /// Reads a block's instances; returns how many there are.
    fn walk_instances<R: Read>(
        &mut self,
        scan: &mut Scanner<R>,
        how: Walking<'_>,
        block: u32,
    ) -> Result<usize, Walk> {
        let mut count = 0;
        scan.each_element(|scan| {
            count += 1;
            let Detail::Texts(hashing) = how.detail else {
                return Ok(scan.skip_value()?);
            };
            let start = scan.start_hash(hashing.build_hasher())?;
            scan.begin_object()?;
            let mut suffix = String::new();
            let mut first = true;
            while let Some(key) = scan.next_key(&mut first, KNOWN_KEY_BYTES)? {
                if matches!(&key, Key::Text(k) if go_folded(k) == "index_key") {
                    suffix = index_suffix(scan.copy_value(FIELD_BYTES)?)?;
                } else {
                    scan.skip_value()?;
                }
            }
            let (hash, end) = scan.end_hash();
            let key = self.push_name(&suffix)?;
            self.instances.push(Entry {
                block,
                key,
                text: Text { start, end, hash },
            });
            self.within(how.budget)
        })?;
        Ok(count)
    }

    /// One module of a version-3 state (Terraform before 0.12), whose
    /// resources and outputs live in its modules: its `path` starts its
    /// resources' addresses, its `resources` is an object of instances by
    /// name (`[data.]<type>.<name>[.<index>]`, see [`V3Name`]), and only
    /// the root module's `outputs` are the state's outputs. Member names
    /// are matched as Terraform 0.11 matched them ([`go_folded`]), and as
    /// the write's catalog reads them: the last `path` counts, and every
    /// `resources` and `outputs` adds to the module.
    fn walk_module<R: Read>(
        &mut self,
        scan: &mut Scanner<R>,
        how: Walking<'_>,
    ) -> Result<(), Walk> {
        let (outputs_from, output_names) = (self.outputs.len(), self.output_names);
        let mut path = String::new();
        // The module's blocks by their address within it; in `Texts` each
        // is named once the path is known, when the module ends.
        let mut blocks = HashMap::new();
        scan.begin_object()?;
        let mut first = true;
        while let Some(key) = scan.next_key(&mut first, KNOWN_KEY_BYTES)? {
            let Key::Text(key) = key else {
                scan.skip_value()?;
                continue;
            };
            match &*go_folded(&key) {
                "path" => path = read_path(scan)?,
                "outputs" => self.walk_outputs(scan, how)?,
                "resources" => self.walk_v3_resources(scan, how, &mut blocks)?,
                _ => scan.skip_value()?,
            }
        }
        self.module_blocks = 0;
        if let Detail::Texts(_) = how.detail {
            for (address, block) in blocks {
                let span = match path.is_empty() {
                    true => self.push_name(&address)?,
                    false => self.push_name(&format!("{path}.{address}"))?,
                };
                self.blocks[block as usize] = span;
            }
            self.within(how.budget)?;
        }
        if !path.is_empty() {
            self.outputs.truncate(outputs_from);
            self.output_names = output_names;
        }
        Ok(())
    }

    /// A version-3 module's `resources`: each member one instance, those
    /// of one name but their index one block of the module (`blocks`, by
    /// the block's address within the module).
    fn walk_v3_resources<R: Read>(
        &mut self,
        scan: &mut Scanner<R>,
        how: Walking<'_>,
        blocks: &mut HashMap<String, u32>,
    ) -> Result<(), Walk> {
        if scan.peek()? != Some(b'{') {
            return Ok(scan.skip_value()?);
        }
        scan.begin_object()?;
        let mut first = true;
        while let Some(key) = scan.next_key(&mut first, FIELD_BYTES)? {
            let Key::Text(name) = key else {
                return Err(Walk::TooDense);
            };
            let v3 = V3Name::of(&name);
            let type_name = match v3.data {
                true => format!("data.{}", v3.type_name),
                false => v3.type_name.to_string(),
            };
            let (block, new) = match blocks.get(v3.block) {
                Some(&block) => (block, 0),
                None => {
                    let block = u32::try_from(self.blocks.len()).map_err(|_| Walk::TooDense)?;
                    if let Detail::Texts(_) = how.detail {
                        // Named when the module ends.
                        self.blocks.push(Span { at: 0, len: 0 });
                    }
                    self.module_blocks += v3.block.len() + BLOCK_ENTRY_BYTES;
                    blocks.insert(v3.block.to_string(), block);
                    (block, 1)
                }
            };
            self.count(type_name, new, 1);
            match how.detail {
                Detail::Texts(hashing) => {
                    let (hash, start, end) = scan.hash_value(hashing.build_hasher())?;
                    let index = v3.index.map(|i| format!("[{i}]")).unwrap_or_default();
                    let key = self.push_name(&index)?;
                    self.instances.push(Entry {
                        block,
                        key,
                        text: Text { start, end, hash },
                    });
                }
                Detail::Counts => scan.skip_value()?,
            }
            self.within(how.budget)?;
        }
        Ok(())
    }

    fn walk_outputs<R: Read>(
        &mut self,
        scan: &mut Scanner<R>,
        how: Walking<'_>,
    ) -> Result<(), Walk> {
        if scan.null()? {
            return Ok(());
        }
        scan.begin_object()?;
        let mut first = true;
        while let Some(key) = scan.next_key(&mut first, FIELD_BYTES)? {
            let Key::Text(name) = key else {
                return Err(ScanError::Shape("an output name is too long").into());
            };
            let text = match how.detail {
                Detail::Texts(hashing) => {
                    let (hash, start, end) = scan.hash_value(hashing.build_hasher())?;
                    Text { start, end, hash }
                }
                Detail::Counts => {
                    scan.skip_value()?;
                    Text {
                        start: 0,
                        end: 0,
                        hash: 0,
                    }
                }
            };
            self.output_names += name.len();
            self.outputs.push(Output { name, text });
            self.within(how.budget)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(body: &str) -> Inventory {
        let key = RandomState::new();
        let (mut inv, md5) = Inventory::read(
            body.as_bytes(),
            Detail::Texts(&key),
            true,
            (usize::MAX, false),
        )
        .unwrap();
        assert_eq!(
            md5.unwrap(),
            crate::state::head::md5_hex(body.as_bytes()),
            "every byte is hashed"
        );
        inv.sort();
        inv
    }

    fn addresses(inv: &Inventory) -> Vec<String> {
        inv.instances
            .iter()
            .map(|e| {
                let (a, b) = inv.address(e);
                format!("{a}{b}")
            })
            .collect()
    }

    #[test]
    fn instances_are_found_with_their_text() {
        let body = r#" { "version": 4, "outputs": {"a": {"value": [1, "]}"]}},
            "resources" : [ {"instances": [ {"index_key": "k\"1", "attributes": {"s": "}{\\"}} ,
              { "index_key" : 2 } ], "type": "t", "name": "n", "module": "module.m[\"x\"]"},
              {"mode": "data", "type": "d", "name": "n", "instances": [{"attributes": {}}]} ] } "#;
        let inv = inventory(body);
        assert_eq!(
            addresses(&inv),
            [
                "data.d.n",
                r#"module.m["x"].t.n["k\"1"]"#,
                r#"module.m["x"].t.n[2]"#,
            ]
        );
        let text = |t: Text| &body[t.start as usize..t.end as usize];
        assert_eq!(text(inv.instances[0].text), r#"{"attributes": {}}"#);
        assert_eq!(
            text(inv.instances[1].text),
            r#"{"index_key": "k\"1", "attributes": {"s": "}{\\"}}"#
        );
        assert_eq!(text(inv.instances[2].text), r#"{ "index_key" : 2 }"#);
        assert_eq!(text(inv.outputs[0].text), r#"{"value": [1, "]}"]}"#);
        assert_eq!(inv.types["t"], (1, 2));
        assert_eq!(inv.types["data.d"], (1, 1));
        assert_eq!(inv.resources, 2);
    }

    #[test]
    fn text_hashes_match_for_equal_text_only() {
        let a = inventory(
            r#"{"resources": [{"type": "t", "name": "a", "instances": [{"x": 1}]},
            {"type": "t", "name": "b", "instances": [{"x": 1}]},
            {"type": "t", "name": "c", "instances": [{"x": 2}]}]}"#,
        );
        let h: Vec<u64> = a.instances.iter().map(|e| e.text.hash).collect();
        assert_eq!(h[0], h[1]);
        assert_ne!(h[0], h[2]);
    }

    #[test]
    fn a_repeated_address_or_output_keeps_the_last() {
        let inv = inventory(
            r#"{"outputs": {"o": 1, "o": 22}, "resources": [
            {"type": "t", "name": "a", "instances": [{"v": 1}, {"v": 22}]}]}"#,
        );
        assert_eq!(addresses(&inv), ["t.a"]);
        assert_eq!(inv.instances[0].text.end - inv.instances[0].text.start, 9);
        assert_eq!(inv.outputs.len(), 1);
        assert_eq!(inv.outputs[0].text.end - inv.outputs[0].text.start, 2);
    }

    #[test]
    fn other_bodies_hold_nothing() {
        for body in [
            "",
            "[]",
            "not json",
            r#"{"resources": 5}"#,
            r#"{"resources": [{"type": 5}]}"#,
            r#"{"resources": [], "resources": []}"#,
            r#"{"resources": [{"instances": [1]}]}"#,
            r#"{"resources": [{"type": "t", "name": "a", "instances": [{}]}]} trailing"#,
            r#"{"resources": [{"type": "t", "name": "a", "instances": [{"x": "never ends}]}]}"#,
        ] {
            let inv = inventory(body);
            assert!(inv.instances.is_empty() && inv.resources == 0, "{body}");
        }
        // Counting reads any instance, as the overview always has.
        let (inv, _) = Inventory::read(
            &br#"{"resources": [{"type": "t", "instances": [1, null]}]}"#[..],
            Detail::Counts,
            false,
            (usize::MAX, false),
        )
        .unwrap();
        assert_eq!(inv.types["t"], (1, 2));
    }

    #[test]
    fn positions_hold_across_buffer_boundaries() {
        // Instances whose text straddles the reader's buffers, with
        // escapes split between two reads.
        let blocks: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    r#"{{"type":"t","name":"r{i}","instances":[{{"index_key":{i},"attributes":{{"s":"{}\\\"{}"}}}}]}}"#,
                    "x".repeat(i % 400),
                    "é".repeat(i % 7)
                )
            })
            .collect();
        let body = format!(r#"{{"resources":[{}]}}"#, blocks.join(","));
        assert!(body.len() > 3 * 256 * 1024);
        let inv = inventory(&body);
        assert_eq!(inv.instances.len(), 3000);
        for e in &inv.instances {
            let text = &body[e.text.start as usize..e.text.end as usize];
            let value: Value = serde_json::from_str(text).unwrap();
            let (_, suffix) = inv.address(e);
            assert_eq!(format!("[{}]", value["index_key"]), suffix);
        }
    }

    #[test]
    fn version_3_modules_make_addresses_in_any_field_order() {
        // The path after the resources, a module without one, names that
        // are not `<type>.<name>.<index>`, and the blocks of a name split
        // by another name between its instances.
        let body = r#"{"version": 3, "modules": [
            {"resources": {"t.a.0": {"v": 0}, "t.a-b": {}, "t.a.1": {"v": 1}},
             "outputs": {"inner": {"value": 1}}, "path": ["root", "m", "n"]},
            {"outputs": {"top": {"value": 2}}, "resources": {"data.d.x.2": {}, "odd": 1}},
            {"path": ["root"], "resources": {"t.r.x": {}}}
        ]}"#;
        let inv = inventory(body);
        assert_eq!(
            addresses(&inv),
            [
                "data.d.x[2]",
                "module.m.module.n.t.a-b",
                "module.m.module.n.t.a[0]",
                "module.m.module.n.t.a[1]",
                "odd",
                "t.r.x"
            ]
        );
        let text = |t: Text| &body[t.start as usize..t.end as usize];
        assert_eq!(text(inv.instances[3].text), r#"{"v": 1}"#);
        assert_eq!(inv.resources, 5);
        assert_eq!(inv.types["t"], (3, 4));
        assert_eq!(inv.types["data.d"], (1, 1));
        let outputs: Vec<_> = inv.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["top"]);
        let (counted, _) =
            Inventory::read(body.as_bytes(), Detail::Counts, false, (usize::MAX, false)).unwrap();
        assert_eq!((counted.resources, counted.types["t"]), (5, (3, 4)));
    }

    /// A module path longer than a field is read makes the body too dense
    /// to show, not one that holds nothing.
    #[test]
    fn a_module_path_past_a_field_is_too_dense() {
        let names = vec![r#""a""#; FIELD_BYTES / 8 + 1].join(",");
        let body =
            format!(r#"{{"modules":[{{"path":["root",{names}],"resources":{{"t.a":{{}}}}}}]}}"#);
        let key = RandomState::new();
        for detail in [Detail::Texts(&key), Detail::Counts] {
            let read = Inventory::read(body.as_bytes(), detail, false, (usize::MAX, false));
            assert!(matches!(read, Err(Failure::TooDense)));
        }
    }

    #[test]
    fn a_body_of_empty_instances_is_too_dense() {
        let body = format!(
            r#"{{"resources":[{{"type":"t","name":"n","instances":[{}]}}, {{"type":"t"}}]}}"#,
            vec!["{}"; 100_000].join(",")
        );
        // Version 3: a module of many one-letter blocks, each a new entry
        // of the module's block table.
        let names: Vec<String> = (0..100_000).map(|i| format!(r#""t.{i}":0"#)).collect();
        let v3 = format!(r#"{{"modules":[{{"resources":{{{}}}}}]}}"#, names.join(","));
        let key = RandomState::new();
        // Counting a version-3 body keeps its block table too.
        for (body, detail) in [
            (&body, Detail::Texts(&key)),
            (&v3, Detail::Texts(&key)),
            (&v3, Detail::Counts),
        ] {
            let budget = body.len() / 4;
            assert!(matches!(
                Inventory::read(body.as_bytes(), detail, false, (budget, false)),
                Err(Failure::TooDense)
            ));
        }
    }

    #[test]
    fn joined_addresses_sort_as_strings() {
        let cases = [
            (("t.a", "[1]"), ("t.a[", "0]")),
            (("t.a", ""), ("t.a", "[0]")),
            (("t.ab", ""), ("t.a", "[0]")),
            (("", "x"), ("x", "")),
            (("m.t.a", "[\"b\"]"), ("m.t.a[", "\"a\"]")),
        ];
        for ((a1, a2), (b1, b2)) in cases {
            let joined = format!("{a1}{a2}").cmp(&format!("{b1}{b2}"));
            assert_eq!(
                cmp_joined(
                    (a1.as_bytes(), a2.as_bytes()),
                    (b1.as_bytes(), b2.as_bytes())
                ),
                joined,
                "{a1}{a2} against {b1}{b2}"
            );
        }
    }
}
