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

/// The most bytes of names a catalog holds. A state past it (thousands of
/// blocks) has no catalog kept with its pointer, which every write of the
/// state reads; a search reads such a body when it needs it.
pub const CATALOG_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What a search needs of one state body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Catalog {
    /// The Terraform (or OpenTofu) version that wrote the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
    /// Every resource block, in body order.
    #[serde(default)]
    pub resources: Vec<Block>,
}

/// One resource block of a state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    /// The module path (`module.db`, `module.a["x"].module.b`), empty for
    /// the root module.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// A data source rather than a managed resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data: bool,
    #[serde(rename = "type")]
    pub type_name: String,
    pub name: String,
    /// The provider's source address (`registry.terraform.io/hashicorp/aws`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Instances of the block (`count`, `for_each`).
    #[serde(default)]
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

    fn bytes(&self) -> usize {
        self.module.len() + self.type_name.len() + self.name.len() + self.provider.len()
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
    /// A catalog of `blocks` (the elements of `resources` that were
    /// objects), `None` past [`CATALOG_BYTES_MAX`].
    pub(super) fn build(
        terraform_version: Option<String>,
        blocks: Vec<Block>,
    ) -> Option<Arc<Catalog>> {
        let bytes: usize = blocks.iter().map(Block::bytes).sum();
        if bytes > CATALOG_BYTES_MAX {
            return None;
        }
        Some(Arc::new(Catalog {
            terraform_version,
            resources: blocks,
        }))
    }
}

/// `resources` as the head reads it: an array whose elements are counted
/// whatever they are, the objects among them taken down as [`Block`]s.
#[derive(Default)]
pub(super) struct Blocks {
    pub(super) count: usize,
    pub(super) blocks: Vec<Block>,
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
                    if let Some(raw) = element.0 {
                        out.blocks.push(raw.into_block());
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
    fn into_block(self) -> Block {
        Block {
            module: self.module.unwrap_or_default(),
            data: self.mode.as_deref() == Some("data"),
            type_name: self.type_name.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            provider: self
                .provider
                .as_deref()
                .map(provider_source)
                .unwrap_or_default(),
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
            match key.0.as_deref() {
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
        assert_eq!(b.blocks.len(), 3);
        let db = &b.blocks[0];
        assert_eq!(db.address(), "module.db.aws_db_instance.main");
        assert_eq!(
            (db.provider.as_str(), db.instances, db.mode()),
            ("registry.terraform.io/hashicorp/aws", 2, "managed")
        );
        assert_eq!(b.blocks[1].address(), "data.aws_ami.ubuntu");
        assert_eq!(b.blocks[1].provider, "registry.terraform.io/hashicorp/aws");
        assert_eq!(b.blocks[2], Block::default());
        let serialized = serde_json::to_string(&b.blocks[0]).unwrap();
        assert!(!serialized.contains("secret"), "{serialized}");
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
        let big = Block {
            name: "n".repeat(CATALOG_BYTES_MAX + 1),
            ..Default::default()
        };
        assert!(Catalog::build(None, vec![big]).is_none());
        assert!(Catalog::build(Some("1.5.7".into()), vec![Block::default()]).is_some());
    }
}
