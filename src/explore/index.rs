//! The index itself: per state what a search reads, held compactly. Type,
//! provider, module and version names are interned to small ids, so a
//! resource is a few numbers; the names of a state's resources sit one
//! after another in one string per state. Ten thousand states of a hundred
//! resources each hold a few tens of megabytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::state::catalog::Catalog;
use crate::state::summary::Summary;
use crate::state::{LockInfo, StateRef};

/// Distinct names, each given a small id once; id 0 is the empty name.
#[derive(Default)]
pub(super) struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    pub(super) fn id(&mut self, name: &str) -> u32 {
        if self.names.is_empty() {
            let empty: Arc<str> = Arc::from("");
            self.ids.insert(Arc::clone(&empty), 0);
            self.names.push(empty);
        }
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 4 billion names");
        let name: Arc<str> = Arc::from(name);
        self.ids.insert(Arc::clone(&name), id);
        self.names.push(name);
        id
    }

    pub(super) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    /// How many ids there are (the length of a table indexed by id).
    pub(super) fn len(&self) -> usize {
        self.names.len().max(1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names.iter().enumerate().map(|(i, n)| (i as u32, &**n))
    }
}

/// One resource block, by ids and a place in its state's `names`.
#[derive(Clone, Copy)]
pub(super) struct Resource {
    pub(super) type_id: u32,
    pub(super) provider: u32,
    pub(super) module: u32,
    name_at: u32,
    pub(super) instances: u32,
    name_len: u16,
    pub(super) data: bool,
}

/// A held lock as a search shows it.
#[derive(Debug, Clone)]
pub(super) struct HeldLock {
    pub(super) id: Box<str>,
    pub(super) who: Box<str>,
    pub(super) operation: Box<str>,
    pub(super) created: Box<str>,
    /// `created`, parsed.
    pub(super) since: Option<OffsetDateTime>,
}

impl HeldLock {
    /// The lock `info`, taken when the store wrote it (`taken`), or where
    /// the store keeps no time, at its client's `Created`.
    pub(super) fn of(info: &LockInfo, taken: Option<OffsetDateTime>) -> Self {
        HeldLock {
            id: info.id.as_str().into(),
            who: info.who.as_str().into(),
            operation: info.operation.as_str().into(),
            created: info.created.as_str().into(),
            since: taken.or_else(|| OffsetDateTime::parse(&info.created, &Rfc3339).ok()),
        }
    }
}

/// One state in the index.
pub(super) struct Entry {
    pub(super) state: StateRef,
    /// What the listing showed when this was read: a listing showing
    /// another size or time means the state changed.
    pub(super) listed: Option<(u64, Option<OffsetDateTime>)>,
    pub(super) serial: Option<u64>,
    pub(super) terraform_version: u32,
    /// When the current version was written.
    pub(super) updated: Option<OffsetDateTime>,
    pub(super) writer: Option<Box<str>>,
    pub(super) lock: Option<HeldLock>,
    /// The resources' names, one after another.
    names: Box<str>,
    pub(super) resources: Box<[Resource]>,
}

impl Entry {
    pub(super) fn name(&self, r: &Resource) -> &str {
        let at = r.name_at as usize;
        self.names.get(at..at + r.name_len as usize).unwrap_or("")
    }
}

/// Every indexed state, in key and workspace order.
#[derive(Default)]
pub(super) struct Index {
    pub(super) types: Names,
    pub(super) providers: Names,
    pub(super) modules: Names,
    pub(super) versions: Names,
    pub(super) states: BTreeMap<(String, String), Entry>,
}

/// Where a state sits in [`Index::states`].
pub(super) fn place(state: &StateRef) -> (String, String) {
    (state.key().to_string(), state.workspace().to_string())
}

impl Index {
    /// Puts `state`'s current version in the index, keeping the lock it
    /// had; `listed` is what the listing showed of it, when known.
    pub(super) fn put(
        &mut self,
        state: &StateRef,
        summary: &Summary,
        catalog: &Catalog,
        listed: Option<(u64, Option<OffsetDateTime>)>,
    ) {
        let mut names = String::new();
        let mut resources = Vec::with_capacity(catalog.len());
        // The catalog's names, as this index's ids, looked up once each.
        let mut ids = vec![[u32::MAX; 3]; catalog.names_len()];
        let mut id = |table: usize, n: u32, index: &mut Self| {
            let slot = &mut ids[n as usize][table];
            if *slot == u32::MAX {
                let names = match table {
                    0 => &mut index.types,
                    1 => &mut index.providers,
                    _ => &mut index.modules,
                };
                *slot = names.id(catalog.name(n));
            }
            *slot
        };
        for entry in catalog.entries() {
            // A name longer than a u16 is cut at a character boundary:
            // no Terraform name comes near it.
            let mut name = catalog.entry_name(entry);
            if name.len() > u16::MAX as usize {
                let mut end = u16::MAX as usize;
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                name = &name[..end];
            }
            let Ok(name_at) = u32::try_from(names.len()) else {
                break;
            };
            names.push_str(name);
            resources.push(Resource {
                type_id: id(0, entry.type_name, self),
                provider: id(1, entry.provider, self),
                module: id(2, entry.module, self),
                name_at,
                instances: entry.instances,
                name_len: name.len() as u16,
                data: entry.data,
            });
        }
        let terraform_version = self
            .versions
            .id(catalog.terraform_version.as_deref().unwrap_or(""));
        let lock = self.states.get(&place(state)).and_then(|e| e.lock.clone());
        let entry = Entry {
            state: state.clone(),
            listed,
            serial: summary.serial,
            terraform_version,
            updated: OffsetDateTime::parse(&summary.updated, &Rfc3339).ok(),
            writer: summary.writer().map(Into::into),
            lock,
            names: names.into_boxed_str(),
            resources: resources.into_boxed_slice(),
        };
        self.states.insert(place(state), entry);
    }

    pub(super) fn remove(&mut self, state: &StateRef) {
        self.states.remove(&place(state));
    }

    /// Records who holds `state`'s lock, taken just now, when the state is
    /// indexed.
    pub(super) fn set_lock(&mut self, state: &StateRef, holder: Option<&LockInfo>) {
        if let Some(entry) = self.states.get_mut(&place(state)) {
            entry.lock = holder.map(|h| HeldLock::of(h, Some(OffsetDateTime::now_utc())));
        }
    }

    /// Bytes the index holds, roughly: what the states, their resources
    /// and names, and the interned names take.
    pub(super) fn held_bytes(&self) -> usize {
        let names = |n: &Names| {
            n.names
                .iter()
                .map(|s| s.len() + 2 * size_of::<Arc<str>>() + 16)
                .sum::<usize>()
        };
        let states: usize = self
            .states
            .values()
            .map(|e| {
                size_of::<Entry>()
                    + 2 * e.state.key().len()
                    + e.names.len()
                    + e.resources.len() * size_of::<Resource>()
            })
            .sum();
        states
            + names(&self.types)
            + names(&self.providers)
            + names(&self.modules)
            + names(&self.versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::Block;

    #[test]
    fn a_resource_is_a_few_numbers() {
        assert!(size_of::<Resource>() <= 24, "{}", size_of::<Resource>());
    }

    /// The fleet the explorer is sized for fits its memory budget.
    #[test]
    fn ten_thousand_states_of_a_hundred_resources_fit_in_64_mib() {
        let mut index = Index::default();
        let summary = Summary {
            version: 1,
            serial: Some(1),
            lineage: Some("L".into()),
            resources: 100,
            size: 1,
            updated: "2024-01-02T03:04:05Z".into(),
            who: Some("ci@runner".into()),
            identity: None,
            operation: "write".into(),
        };
        for i in 0..10_000 {
            let catalog = Catalog::new(
                Some(format!("1.{}.0", i % 8)),
                (0..100)
                    .map(|r| Block {
                        module: format!("module.m{}", r % 25),
                        data: r % 17 == 0,
                        type_name: format!("aws_type_{}", (i + r) % 300),
                        name: format!("resource_{r}"),
                        provider: format!("registry.terraform.io/hashicorp/p{}", r % 5),
                        instances: 1 + r % 3,
                    })
                    .collect(),
            );
            let state =
                StateRef::parse(&format!("team-{}/state-{i}.tfstate", i % 50), None).unwrap();
            index.put(&state, &summary, &catalog, None);
        }
        let held = index.held_bytes();
        assert!(held < 64 << 20, "{} MiB", held >> 20);
    }

    #[test]
    fn states_keep_their_resources_and_names_are_shared() {
        let mut index = Index::default();
        let summary = Summary {
            version: 1,
            serial: Some(3),
            lineage: None,
            resources: 2,
            size: 10,
            updated: "2024-01-02T03:04:05Z".into(),
            who: None,
            identity: Some("user:ann".into()),
            operation: "write".into(),
        };
        let block = |name: &str| Block {
            type_name: "aws_db_instance".into(),
            name: name.into(),
            provider: "registry.terraform.io/hashicorp/aws".into(),
            module: "module.db".into(),
            instances: 1,
            data: false,
        };
        let catalog = Catalog::new(Some("1.5.7".into()), vec![block("a"), block("bb")]);
        for key in ["x", "y"] {
            let state = StateRef::parse(key, None).unwrap();
            index.put(&state, &summary, &catalog, None);
        }
        assert_eq!(index.types.len(), 2, "one type name and the empty one");
        let entry = &index.states[&("y".to_string(), "default".to_string())];
        let names: Vec<&str> = entry.resources.iter().map(|r| entry.name(r)).collect();
        assert_eq!(names, ["a", "bb"]);
        assert_eq!(entry.writer.as_deref(), Some("user:ann"));
        assert_eq!(index.versions.name(entry.terraform_version), "1.5.7");
    }
}
