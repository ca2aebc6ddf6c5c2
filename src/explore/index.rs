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
    /// How many names the tables held after they were last compacted.
    names_after_compaction: usize,
}

/// Below this many names in all, the tables are never compacted.
const COMPACT_FLOOR: usize = 4096;

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
        self.compact_if_grown();
    }

    pub(super) fn remove(&mut self, state: &StateRef) {
        self.states.remove(&place(state));
    }

    fn names_held(&self) -> usize {
        self.types.len() + self.providers.len() + self.modules.len() + self.versions.len()
    }

    /// Compacts the name tables once they hold twice the names they held
    /// after the last compaction: a name stays in them after the last
    /// state using it changed, so a writer giving one state new names on
    /// every write grew the index (and every search's tables) without
    /// limit. Compacting costs a pass over the index, made once the names
    /// have doubled: a constant share of what putting them in cost.
    fn compact_if_grown(&mut self) {
        let held = self.names_held();
        if held < COMPACT_FLOOR || held < 2 * self.names_after_compaction {
            return;
        }
        self.compact();
        self.names_after_compaction = self.names_held();
    }

    /// Keeps only the names some state uses, with new ids.
    fn compact(&mut self) {
        fn kept(names: &Names, used: &[bool]) -> (Names, Vec<u32>) {
            let mut fresh = Names::default();
            let mut ids = vec![0; names.len()];
            for (id, name) in names.iter() {
                if used.get(id as usize).copied().unwrap_or(false) {
                    ids[id as usize] = fresh.id(name);
                }
            }
            (fresh, ids)
        }
        let mut used = [
            vec![false; self.types.len()],
            vec![false; self.providers.len()],
            vec![false; self.modules.len()],
            vec![false; self.versions.len()],
        ];
        for e in self.states.values() {
            used[3][e.terraform_version as usize] = true;
            for r in e.resources.iter() {
                used[0][r.type_id as usize] = true;
                used[1][r.provider as usize] = true;
                used[2][r.module as usize] = true;
            }
        }
        let (types, type_ids) = kept(&self.types, &used[0]);
        let (providers, provider_ids) = kept(&self.providers, &used[1]);
        let (modules, module_ids) = kept(&self.modules, &used[2]);
        let (versions, version_ids) = kept(&self.versions, &used[3]);
        for e in self.states.values_mut() {
            e.terraform_version = version_ids[e.terraform_version as usize];
            for r in e.resources.iter_mut() {
                r.type_id = type_ids[r.type_id as usize];
                r.provider = provider_ids[r.provider as usize];
                r.module = module_ids[r.module as usize];
            }
        }
        (self.types, self.providers, self.modules, self.versions) =
            (types, providers, modules, versions);
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

    /// One state written again and again with new type names: the names
    /// it no longer uses are let go.
    #[test]
    fn names_no_state_uses_are_let_go() {
        let mut index = Index::default();
        let summary = Summary {
            version: 1,
            serial: Some(1),
            lineage: None,
            resources: 1000,
            size: 1,
            updated: "2024-01-02T03:04:05Z".into(),
            who: None,
            identity: None,
            operation: "write".into(),
        };
        let state = StateRef::parse("pub/leak", None).unwrap();
        let kept = StateRef::parse("pub/kept", None).unwrap();
        let catalog = |round: usize| {
            Catalog::new(
                Some(format!("1.{round}.0")),
                (0..1000)
                    .map(|r| Block {
                        module: String::new(),
                        data: false,
                        type_name: format!("t_{round}_{r}"),
                        name: format!("r{r}"),
                        provider: format!("registry.terraform.io/x/p{round}"),
                        instances: 1,
                    })
                    .collect(),
            )
        };
        index.put(&kept, &summary, &catalog(1000), None);
        for round in 0..50 {
            index.put(&state, &summary, &catalog(round), None);
        }
        // Two states of 1,000 types each, the empty name, and at most
        // as many again before the next compaction.
        assert!(
            index.types.len() <= 2 * 2001 + COMPACT_FLOOR,
            "{}",
            index.types.len()
        );
        for (place, round) in [(place(&kept), 1000), (place(&state), 49)] {
            let e = &index.states[&place];
            assert_eq!(
                index.versions.name(e.terraform_version),
                format!("1.{round}.0")
            );
            for (r, res) in e.resources.iter().enumerate() {
                assert_eq!(index.types.name(res.type_id), format!("t_{round}_{r}"));
                assert_eq!(
                    index.providers.name(res.provider),
                    format!("registry.terraform.io/x/p{round}")
                );
                assert_eq!(index.modules.name(res.module), "");
            }
        }
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
