//! A search: its filters as a client writes them (the query string of
//! `/api/v1/search`, the Explore page's form, `stategate state find`),
//! checked once, and run over the index.
//!
//! Names are matched with the globs of the auth rules (`*` within a
//! `/`-separated segment, `**` across them); a provider matches by its
//! whole source (`registry.terraform.io/hashicorp/aws`) or without its
//! host (`hashicorp/aws`). Every name-valued filter is turned, once per
//! search, into a table over the interned names, so a resource is judged
//! by a few lookups; only an address filter builds each address.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::index::{Entry, Index, Names, Resource};
use super::version::VersionRange;
use crate::auth::Glob;
use crate::state::StateRef;
use crate::state::catalog::write_address;

/// States in a page when `limit` is not given.
pub const LIMIT_DEFAULT: usize = 100;

/// The most states one page holds.
pub const LIMIT_MAX: usize = 1000;

/// The most resource blocks one page lists: a state of more goes on over
/// the next pages, so one answer stays a few MB however large a state is.
pub const RESOURCES_PER_PAGE: usize = 10_000;

/// The most bytes of names one page lists (each row's address, type,
/// provider and module): a page of long names goes on over the next
/// pages too. Ten thousand rows of hundred-kilobyte module paths made one
/// answer of 200 MB.
pub const NAME_BYTES_PER_PAGE: usize = 8 << 20;

/// What to look for. Every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Resource filters: a state matches with the resources that pass all.
    pub resource_type: Option<Glob>,
    pub provider: Option<Glob>,
    pub module: Option<Glob>,
    pub address: Option<Glob>,
    /// State filters.
    pub key: Option<Glob>,
    pub workspace: Option<Glob>,
    pub terraform_version: Option<VersionRange>,
    /// Last written before this time.
    pub written_before: Option<OffsetDateTime>,
    /// Locked for at least this long.
    pub locked_for: Option<Duration>,
    /// States per page.
    pub limit: usize,
    /// The page starts after this state (`key:workspace`, a cursor), or
    /// (`key:workspace:N`) with it, after its first `within` matching
    /// resources, which an earlier page listed.
    pub after: Option<(String, String)>,
    pub within: usize,
}

/// The longest filter value accepted: longer than any key (1,024 bytes)
/// and any name a search is for, and it bounds what each name compared
/// costs.
const MAX_FILTER_BYTES: usize = 2048;

/// A filter a client wrote that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SearchError(pub String);

impl Search {
    /// The search the named parameters ask for, at time `now` (relative
    /// times count back from it). Empty values are no filter; unknown
    /// names are left to the caller (a page's own parameters).
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: OffsetDateTime,
    ) -> Result<Self, SearchError> {
        let mut s = Search {
            limit: LIMIT_DEFAULT,
            ..Default::default()
        };
        let name = |what: &str, v: &str| Glob::parse_name(what, v).map_err(SearchError);
        for (k, v) in params {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            if v.len() > MAX_FILTER_BYTES {
                return Err(SearchError(format!(
                    "{k} is {} bytes long; a filter takes at most {MAX_FILTER_BYTES}",
                    v.len()
                )));
            }
            match k {
                "type" => s.resource_type = Some(name("type", v)?),
                "provider" => s.provider = Some(name("provider", v)?),
                "module" => s.module = Some(name("module", v)?),
                "address" => s.address = Some(name("address", v)?),
                "key" => s.key = Some(Glob::parse("key", v).map_err(SearchError)?),
                "workspace" => {
                    s.workspace = Some(Glob::parse("workspace", v).map_err(SearchError)?)
                }
                "terraform_version" => {
                    s.terraform_version = Some(VersionRange::parse(v).map_err(SearchError)?)
                }
                "written_before" => s.written_before = Some(parse_time(v, now)?),
                "locked_for" => s.locked_for = Some(parse_duration("locked_for", v)?),
                "limit" => {
                    s.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIMIT_MAX).contains(n))
                        .ok_or_else(|| {
                            SearchError(format!("limit must be from 1 to {LIMIT_MAX}, not {v:?}"))
                        })?
                }
                "cursor" | "after" => {
                    let not_ours =
                        || SearchError(format!("{k} {v:?} is not a cursor this server gave"));
                    // Neither keys nor workspaces hold `:`.
                    let (key, workspace, within) = match v.split(':').collect::<Vec<_>>()[..] {
                        [key, workspace] => (key, workspace, 0),
                        [key, workspace, n] => {
                            let n = n.parse::<usize>().ok().filter(|n| *n > 0);
                            (key, workspace, n.ok_or_else(not_ours)?)
                        }
                        _ => return Err(not_ours()),
                    };
                    s.after = Some((key.to_string(), workspace.to_string()));
                    s.within = within;
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// Whether any filter looks at resources.
    pub fn filters_resources(&self) -> bool {
        self.resource_type.is_some()
            || self.provider.is_some()
            || self.module.is_some()
            || self.address.is_some()
    }
}

/// `45s`, `30m`, `2h`, `90d`, `2w`.
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, SearchError> {
    let bad = || {
        SearchError(format!(
            "{what}: `{text}` is not a duration like 30m, 2h or 90d"
        ))
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "w" => n.checked_mul(7 * 86_400),
        _ => None,
    };
    seconds.map(Duration::from_secs).ok_or_else(bad)
}

/// An RFC 3339 time, a date (`2024-06-01`, its midnight UTC), or a
/// duration counted back from `now` (`90d`: ninety days ago).
fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, SearchError> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    if let Ok(t) = OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339) {
        return Ok(t);
    }
    let ago = parse_duration("written_before", text).map_err(|_| {
        SearchError(format!(
            "written_before: `{text}` is not a time (2024-06-01, 2024-06-01T12:00:00Z) or an age (90d)"
        ))
    })?;
    time::Duration::try_from(ago)
        .ok()
        .and_then(|ago| now.checked_sub(ago))
        .ok_or_else(|| {
            SearchError(format!(
                "written_before: `{text}` reaches back before any time a state was written"
            ))
        })
}

/// What a search found.
#[derive(Debug, Serialize)]
pub struct Found {
    /// False while the index is still being built: states not read yet
    /// are missing.
    pub complete: bool,
    /// States matching, over every page.
    pub total_states: usize,
    /// Resource blocks matching, over every page.
    pub total_resources: usize,
    pub counts: Counts,
    /// This page's states, in key and workspace order.
    pub states: Vec<FoundState>,
    /// The `cursor` of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// Matching resource blocks by type and by provider source, over the
/// whole result.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub types: BTreeMap<String, usize>,
    pub providers: BTreeMap<String, usize>,
}

/// One matching state.
#[derive(Debug, Serialize)]
pub struct FoundState {
    pub key: String,
    pub workspace: String,
    pub serial: Option<u64>,
    pub terraform_version: Option<String>,
    /// When the current version was written (RFC 3339).
    pub updated: Option<String>,
    /// The identity or LockInfo `Who` that wrote it.
    pub writer: Option<String>,
    pub lock: Option<FoundLock>,
    /// Its matching resource blocks (every one without resource filters).
    pub resources: Vec<FoundResource>,
    #[serde(skip)]
    pub state: StateRef,
}

/// Who holds a state's lock, and for how long.
#[derive(Debug, Serialize)]
pub struct FoundLock {
    pub id: String,
    pub who: String,
    pub operation: String,
    pub created: String,
    pub age_seconds: Option<u64>,
}

/// One matching resource block.
#[derive(Debug, Serialize)]
pub struct FoundResource {
    pub address: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub mode: &'static str,
    pub provider: String,
    pub module: String,
    pub instances: u32,
}

/// Which interned names a glob matches, as a table by id; `None` (no
/// filter) matches all.
fn table(names: &Names, glob: Option<&Glob>, also: fn(&str) -> Option<&str>) -> Option<Vec<bool>> {
    let glob = glob?;
    let mut out = vec![false; names.len()];
    for (id, name) in names.iter() {
        out[id as usize] = glob.matches(name) || also(name).is_some_and(|n| glob.matches(n));
    }
    Some(out)
}

/// A provider source without its host: `hashicorp/aws`.
fn without_host(source: &str) -> Option<&str> {
    let (_, rest) = source.split_once('/')?;
    rest.contains('/').then_some(rest)
}

fn allowed(table: &Option<Vec<bool>>, id: u32) -> bool {
    table.as_ref().is_none_or(|t| t[id as usize])
}

/// The tables a search judges resources by.
struct Judge<'a> {
    search: &'a Search,
    types: Option<Vec<bool>>,
    providers: Option<Vec<bool>>,
    modules: Option<Vec<bool>>,
    versions: Option<Vec<bool>>,
    index: &'a Index,
}

impl<'a> Judge<'a> {
    fn new(index: &'a Index, search: &'a Search) -> Self {
        fn none(_: &str) -> Option<&str> {
            None
        }
        let versions = search.terraform_version.as_ref().map(|range| {
            let mut out = vec![false; index.versions.len()];
            for (id, name) in index.versions.iter() {
                out[id as usize] = range.contains(name);
            }
            out
        });
        Judge {
            search,
            types: table(&index.types, search.resource_type.as_ref(), none),
            providers: table(&index.providers, search.provider.as_ref(), without_host),
            modules: table(&index.modules, search.module.as_ref(), none),
            versions,
            index,
        }
    }

    fn state(&self, e: &Entry, now: OffsetDateTime) -> bool {
        let s = self.search;
        s.key.as_ref().is_none_or(|g| g.matches(e.state.key()))
            && s.workspace
                .as_ref()
                .is_none_or(|g| g.matches(e.state.workspace()))
            && allowed(&self.versions, e.terraform_version)
            && s.written_before
                .is_none_or(|before| e.updated.is_some_and(|u| u < before))
            && s.locked_for.is_none_or(|held| {
                e.lock.as_ref().is_some_and(|l| {
                    l.since.is_some_and(|since| {
                        now - since >= time::Duration::try_from(held).unwrap_or(time::Duration::MAX)
                    })
                })
            })
    }

    fn resource(&self, e: &Entry, r: &Resource, address: &mut String) -> bool {
        if !(allowed(&self.types, r.type_id)
            && allowed(&self.providers, r.provider)
            && allowed(&self.modules, r.module))
        {
            return false;
        }
        let Some(glob) = &self.search.address else {
            return true;
        };
        address.clear();
        write_address(
            address,
            self.index.modules.name(r.module),
            r.data,
            self.index.types.name(r.type_id),
            e.name(r),
        );
        glob.matches(address)
    }

    /// About what [`Judge::found_resource`] takes of the page's bytes.
    fn row_bytes(&self, e: &Entry, r: &Resource) -> usize {
        let (module, type_name) = (
            self.index.modules.name(r.module).len(),
            self.index.types.name(r.type_id).len(),
        );
        2 * (module + type_name) + e.name(r).len() + self.index.providers.name(r.provider).len()
    }

    fn found_resource(&self, e: &Entry, r: &Resource) -> FoundResource {
        let (module, type_name) = (
            self.index.modules.name(r.module),
            self.index.types.name(r.type_id),
        );
        let mut address = String::new();
        write_address(&mut address, module, r.data, type_name, e.name(r));
        FoundResource {
            address,
            type_name: type_name.to_string(),
            mode: if r.data { "data" } else { "managed" },
            provider: self.index.providers.name(r.provider).to_string(),
            module: module.to_string(),
            instances: r.instances,
        }
    }
}

/// Runs `search` over `index`, keeping only the states `may_see` allows.
pub(super) fn run(
    index: &Index,
    search: &Search,
    may_see: &dyn Fn(&StateRef) -> bool,
    now: OffsetDateTime,
    complete: bool,
) -> Found {
    let judge = Judge::new(index, search);
    let filtered = search.filters_resources();
    let mut types = vec![0usize; index.types.len()];
    let mut providers = vec![0usize; index.providers.len()];
    let (mut total_states, mut total_resources) = (0, 0);
    let mut page = Vec::new();
    // Resource blocks listed on this page, and the bytes of their names.
    let (mut rows, mut bytes) = (0, 0);
    let mut next_cursor = None;
    let mut matching: Vec<usize> = Vec::new();
    let mut address = String::new();
    for (place, e) in &index.states {
        // Whether the caller may see the state first: how long a filter
        // takes on one it may not must tell nothing of it.
        if !may_see(&e.state) || !judge.state(e, now) {
            continue;
        }
        matching.clear();
        for (i, r) in e.resources.iter().enumerate() {
            if judge.resource(e, r, &mut address) {
                matching.push(i);
            }
        }
        if filtered && matching.is_empty() {
            continue;
        }
        total_states += 1;
        total_resources += matching.len();
        for &i in &matching {
            let r = &e.resources[i];
            types[r.type_id as usize] += 1;
            providers[r.provider as usize] += 1;
        }
        // The matching resources an earlier page listed.
        let listed = match &search.after {
            None => 0,
            Some(a) if place > a => 0,
            Some(a) if place == a && search.within > 0 => search.within.min(matching.len()),
            Some(_) => continue,
        };
        if next_cursor.is_some() {
            continue;
        }
        let rest = &matching[listed..];
        // The rows of this state that fit, one at least on an empty page.
        let mut room = 0;
        for &i in rest
            .iter()
            .take(RESOURCES_PER_PAGE - rows.min(RESOURCES_PER_PAGE))
        {
            let more = judge.row_bytes(e, &e.resources[i]);
            if rows + room > 0 && bytes + more > NAME_BYTES_PER_PAGE {
                break;
            }
            bytes += more;
            room += 1;
        }
        let full = rows == RESOURCES_PER_PAGE || (room == 0 && !rest.is_empty());
        if page.len() == search.limit || full {
            let last: &FoundState = page.last().expect("a page is never empty here");
            next_cursor = Some(format!("{}:{}", last.key, last.workspace));
            continue;
        }
        if rest.len() > room {
            // The page ends within this state; the next goes on with it.
            let (key, workspace) = place;
            next_cursor = Some(format!("{key}:{workspace}:{}", listed + room));
        }
        let shown = &rest[..rest.len().min(room)];
        rows += shown.len();
        page.push(found_state(&judge, e, shown, now));
    }
    let counted = |names: &Names, counts: Vec<usize>| {
        counts
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(id, n)| (names.name(id as u32).to_string(), n))
            .collect()
    };
    Found {
        complete,
        total_states,
        total_resources,
        counts: Counts {
            types: counted(&index.types, types),
            providers: counted(&index.providers, providers),
        },
        states: page,
        next_cursor,
    }
}

fn found_state(judge: &Judge, e: &Entry, matching: &[usize], now: OffsetDateTime) -> FoundState {
    let version = judge.index.versions.name(e.terraform_version);
    FoundState {
        key: e.state.key().to_string(),
        workspace: e.state.workspace().to_string(),
        serial: e.serial,
        terraform_version: (!version.is_empty()).then(|| version.to_string()),
        updated: e.updated.and_then(|u| u.format(&Rfc3339).ok()),
        writer: e.writer.as_deref().map(str::to_string),
        lock: e.lock.as_ref().map(|l| FoundLock {
            id: l.id.to_string(),
            who: l.who.to_string(),
            operation: l.operation.to_string(),
            created: l.created.to_string(),
            age_seconds: l
                .since
                .and_then(|since| u64::try_from((now - since).whole_seconds()).ok()),
        }),
        resources: matching
            .iter()
            .map(|&i| judge.found_resource(e, &e.resources[i]))
            .collect(),
        state: e.state.clone(),
    }
}

impl Found {
    /// The result as CSV: a header, then one row per matching resource
    /// (a matching state without resources gets one row of its own).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "key,workspace,serial,terraform_version,updated,writer,lock_who,lock_age_seconds,\
             address,type,mode,provider,module,instances\n",
        );
        for s in &self.states {
            let state = [
                field(&s.key),
                field(&s.workspace),
                s.serial.map(|n| n.to_string()).unwrap_or_default(),
                field(s.terraform_version.as_deref().unwrap_or("")),
                field(s.updated.as_deref().unwrap_or("")),
                field(s.writer.as_deref().unwrap_or("")),
                field(s.lock.as_ref().map_or("", |l| l.who.as_str())),
                s.lock
                    .as_ref()
                    .and_then(|l| l.age_seconds)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ]
            .join(",");
            if s.resources.is_empty() {
                out.push_str(&state);
                out.push_str(",,,,,,\n");
            }
            for r in &s.resources {
                out.push_str(&state);
                for f in [
                    &r.address,
                    &r.type_name,
                    r.mode,
                    &r.provider,
                    &r.module,
                    &r.instances.to_string(),
                ] {
                    out.push(',');
                    out.push_str(&field(f));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break;
/// one a spreadsheet would take for a formula gets a leading `'`.
fn field(text: &str) -> String {
    // Spreadsheets read a formula after a leading tab or carriage return too.
    let text = match text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        true => format!("'{text}"),
        false => text.to_string(),
    };
    // `;` is the separator where `,` is the decimal point: unquoted, what
    // follows it is a cell of its own there, and may be a formula.
    if text.contains([',', '"', '\n', '\r', ';']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::{Block, Catalog};
    use crate::state::summary::Summary;
    use time::macros::datetime;

    #[test]
    fn searches_parse_and_refuse_what_is_wrong() {
        let now = datetime!(2024-06-10 00:00 UTC);
        let s = Search::parse(
            [
                ("type", "aws_*"),
                ("written_before", "90d"),
                ("locked_for", "2h"),
                ("limit", "5"),
                ("cursor", "a/b.tfstate:dev"),
                ("other", "left to the page"),
            ],
            now,
        )
        .unwrap();
        assert!(s.resource_type.unwrap().matches("aws_db_instance"));
        assert_eq!(s.written_before, Some(datetime!(2024-03-12 00:00 UTC)));
        assert_eq!(s.locked_for, Some(Duration::from_secs(7200)));
        assert_eq!(s.limit, 5);
        assert_eq!(s.after, Some(("a/b.tfstate".into(), "dev".into())));
        let s = Search::parse([("written_before", "2024-01-01")], now).unwrap();
        assert_eq!(s.written_before, Some(datetime!(2024-01-01 00:00 UTC)));
        for bad in [
            ("limit", "0"),
            ("limit", "1001"),
            ("written_before", "yesterday"),
            ("locked_for", "2 hours"),
            ("key", "a//b"),
            ("cursor", "nocolon"),
            ("terraform_version", "<x"),
            // Ages reaching back past the first year time can name.
            ("written_before", "99999999999999d"),
            ("written_before", "18446744073709551615s"),
            ("written_before", "30000000w"),
            ("terraform_version", "~>18446744073709551615"),
        ] {
            assert!(Search::parse([bad], now).is_err(), "{bad:?}");
        }
        let long = format!("*{}", "a".repeat(MAX_FILTER_BYTES));
        for what in ["type", "provider", "module", "address", "key"] {
            let refused = Search::parse([(what, long.as_str())], now).unwrap_err();
            assert!(refused.0.contains("at most 2048"), "{what}: {refused}");
        }
    }

    fn index() -> Index {
        let mut index = Index::default();
        let summary = |serial: u64, updated: &str| Summary {
            version: 1,
            serial: Some(serial),
            lineage: None,
            resources: 0,
            size: 1,
            updated: updated.into(),
            who: Some("ann".into()),
            identity: None,
            operation: "write".into(),
        };
        let block = |module: &str, t: &str, name: &str, provider: &str| Block {
            module: module.into(),
            data: false,
            type_name: t.into(),
            name: name.into(),
            provider: provider.into(),
            instances: 1,
        };
        let aws = "registry.terraform.io/hashicorp/aws";
        let put = |index: &mut Index, key: &str, version: &str, blocks: Vec<Block>, updated| {
            let catalog = Catalog::new(Some(version.into()), blocks);
            let state = StateRef::parse(key, None).unwrap();
            index.put(&state, &summary(1, updated), &catalog, None);
        };
        put(
            &mut index,
            "a",
            "1.4.6",
            vec![
                block("module.db", "aws_db_instance", "main", aws),
                block("", "aws_s3_bucket", "logs", aws),
            ],
            "2023-01-01T00:00:00Z",
        );
        put(
            &mut index,
            "b",
            "1.6.0",
            vec![block(
                "",
                "terraform_data",
                "x",
                "terraform.io/builtin/terraform",
            )],
            "2024-06-01T00:00:00Z",
        );
        put(&mut index, "c", "1.6.0", vec![], "2024-06-01T00:00:00Z");
        index
    }

    /// The summary of a state written once.
    fn one_write() -> Summary {
        Summary {
            version: 1,
            serial: Some(1),
            lineage: None,
            resources: 0,
            size: 1,
            updated: "2024-06-01T00:00:00Z".into(),
            who: None,
            identity: None,
            operation: "write".into(),
        }
    }

    /// A state of more resource blocks than a page lists goes on over the
    /// next pages, each block once and in order, and the states after it
    /// follow; no page lists more than [`RESOURCES_PER_PAGE`].
    #[test]
    fn a_state_of_many_resources_is_listed_over_pages() {
        let mut index = index();
        let many = 2 * RESOURCES_PER_PAGE + 3;
        let blocks = (0..many)
            .map(|i| Block {
                module: String::new(),
                data: false,
                type_name: "null_resource".into(),
                name: format!("r{i:05}"),
                provider: "registry.terraform.io/hashicorp/null".into(),
                instances: 1,
            })
            .collect();
        let catalog = Catalog::new(Some("1.9.0".into()), blocks);
        let summary = one_write();
        index.put(
            &StateRef::parse("big", None).unwrap(),
            &summary,
            &catalog,
            None,
        );
        let now = datetime!(2024-06-10 00:00 UTC);
        let mut listed: Vec<(String, String)> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut pairs = vec![("limit", "1000")];
            if let Some(c) = &cursor {
                pairs.push(("cursor", c.as_str()));
            }
            let search = Search::parse(pairs, now).unwrap();
            let found = run(&index, &search, &|_| true, now, true);
            pages += 1;
            let rows: usize = found.states.iter().map(|s| s.resources.len()).sum();
            assert!(rows <= RESOURCES_PER_PAGE, "page {pages}: {rows} resources");
            assert_eq!(found.total_resources, 2 + 1 + many);
            for s in &found.states {
                if s.resources.is_empty() {
                    listed.push((s.key.clone(), String::new()));
                }
                for r in &s.resources {
                    listed.push((s.key.clone(), r.address.clone()));
                }
            }
            cursor = found.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(pages, 3);
        let mut expected: Vec<(String, String)> = vec![
            ("a".into(), "module.db.aws_db_instance.main".into()),
            ("a".into(), "aws_s3_bucket.logs".into()),
            ("b".into(), "terraform_data.x".into()),
        ];
        expected.extend((0..many).map(|i| ("big".into(), format!("null_resource.r{i:05}"))));
        expected.push(("c".into(), String::new()));
        assert_eq!(listed, expected);
        for bad in ["big:default:0", "big:default:x", "big:default:1:2", "big"] {
            assert!(Search::parse([("cursor", bad)], now).is_err(), "{bad}");
        }
    }

    /// Resources of long names (100 KB module paths) go on over pages
    /// bounded in bytes, each once and in order, the state before and
    /// after them too.
    #[test]
    fn pages_of_long_names_are_bounded_in_bytes() {
        let mut index = index();
        let module = format!("module.{}", "m".repeat(100_000));
        let many = 300;
        let blocks = (0..many)
            .map(|i| Block {
                module: module.clone(),
                data: false,
                type_name: "null_resource".into(),
                name: format!("r{i:03}"),
                provider: "registry.terraform.io/hashicorp/null".into(),
                instances: 1,
            })
            .collect();
        let summary = one_write();
        let catalog = Catalog::new(Some("1.9.0".into()), blocks);
        index.put(
            &StateRef::parse("fat", None).unwrap(),
            &summary,
            &catalog,
            None,
        );
        let now = datetime!(2024-06-10 00:00 UTC);
        let (mut names, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut pairs = vec![("key", "fat")];
            if let Some(c) = &cursor {
                pairs.push(("cursor", c.as_str()));
            }
            let found = run(
                &index,
                &Search::parse(pairs, now).unwrap(),
                &|_| true,
                now,
                true,
            );
            pages += 1;
            let bytes: usize = found
                .states
                .iter()
                .flat_map(|s| &s.resources)
                .map(|r| r.address.len() + r.type_name.len() + r.provider.len() + r.module.len())
                .sum();
            assert!(bytes <= NAME_BYTES_PER_PAGE, "page {pages}: {bytes} bytes");
            names.extend(
                found
                    .states
                    .iter()
                    .flat_map(|s| &s.resources)
                    .map(|r| r.address.rsplit('.').next().unwrap_or_default().to_string()),
            );
            cursor = found.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let expected: Vec<String> = (0..many).map(|i| format!("r{i:03}")).collect();
        assert_eq!(names, expected);
        assert!(pages >= 7, "{pages} pages");
    }

    fn keys(found: &Found) -> Vec<&str> {
        found.states.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn searches_find_what_matches() {
        let index = index();
        let now = datetime!(2024-06-10 00:00 UTC);
        let all = |_: &StateRef| true;
        let find = |pairs: &[(&str, &str)]| {
            let search = Search::parse(pairs.iter().copied(), now).unwrap();
            run(&index, &search, &all, now, true)
        };
        let found = find(&[("provider", "hashicorp/aws")]);
        assert_eq!(keys(&found), ["a"]);
        assert_eq!(found.total_resources, 2);
        assert_eq!(found.counts.types["aws_db_instance"], 1);
        let found = find(&[("module", "module.db")]);
        assert_eq!(
            found.states[0].resources[0].address,
            "module.db.aws_db_instance.main"
        );
        assert_eq!(found.states[0].resources.len(), 1);
        assert_eq!(keys(&find(&[("address", "*.logs")])), ["a"]);
        assert_eq!(keys(&find(&[("terraform_version", ">=1.5")])), ["b", "c"]);
        assert_eq!(keys(&find(&[("written_before", "2024-01-01")])), ["a"]);
        assert_eq!(keys(&find(&[("type", "nothing")])), Vec::<&str>::new());
        // Paging: every state once, in order, the counts over them all.
        let first = find(&[("limit", "2")]);
        assert_eq!(keys(&first), ["a", "b"]);
        assert_eq!(first.total_states, 3);
        let cursor = first.next_cursor.clone().unwrap();
        let second = find(&[("limit", "2"), ("cursor", &cursor)]);
        assert_eq!(keys(&second), ["c"]);
        assert_eq!(second.next_cursor, None);
        // What may not be seen is not counted either.
        let only_b = |s: &StateRef| s.key() == "b";
        let search = Search::parse([], now).unwrap();
        let found = run(&index, &search, &only_b, now, true);
        assert_eq!((keys(&found), found.counts.types.len()), (vec!["b"], 1));
        let csv = find(&[("key", "a")]).to_csv();
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("a,default,1,1.4.6,"),
            "{csv}"
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field(r#"module.a["x"].t.n"#), r#""module.a[""x""].t.n""#);
        assert_eq!(field("=cmd()"), "'=cmd()");
        assert_eq!(field("\t=cmd()"), "'\t=cmd()");
        assert_eq!(field("\r=cmd()"), "\"'\r=cmd()\"");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("t;=1+2"), "\"t;=1+2\"");
    }
}
