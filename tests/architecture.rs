//! The shape of `src/`, read from the tree at test time, so a new module or
//! a new `use` is checked the moment it exists.
//!
//! Every file and folder under `src/` is a module. Two rules hold:
//!
//! - The top-level modules form layers ([`LAYERS`], [`LEAVES`]): a module
//!   imports only modules on layers below its own, so dependencies point one
//!   way. A path naming a module (`use crate::…`, `super::…`, the binary's
//!   `stategate::…`) is an import; comments and strings are not.
//! - Inside one folder, no two files (or subfolders) import each other,
//!   directly or around a longer loop. A folder's `mod.rs` is the folder
//!   itself: its files may use what it defines, and it declares and
//!   re-exports them, so it is not one of the files compared. A
//!   `#[cfg(test)]` module imports what its tests need; nothing imports
//!   it, so it cannot close a cycle and is left out of this rule.
//!
//! A failure names the file, the line and the statement that breaks a rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules from the top layer down. A module may import any
/// module on a layer below its own and any leaf, never a module on its own
/// layer or above. `main` is the binary's root and `cli` its command line;
/// the rest is the library, whose root `lib.rs` declares every module.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["cli"],
    // The wiring that builds the running application from the settings.
    &["app"],
    &["config"],
    // The server and the dashboard.
    &["server", "ui"],
    &["protocol"],
    // Operations every entry point shares, and the commands that copy
    // states between stores.
    &["ops", "migrate_pg"],
    &["migrate"],
    // Notifications: the outbox and its sending loop, fed by `ops`.
    &["notify"],
    // The index of what every state holds, searched by the dashboard and
    // the command line.
    &["explore"],
    &["auth"],
    &["state"],
    &["stores"],
    &["settings"],
];

/// Modules beside the layers: any module may import them, and they import
/// nothing of the crate but the bottom layer (`settings`).
const LEAVES: &[&str] = &["audit", "metrics", "logging", "tls", "loadtest"];

/// Import cycles between files of one folder that exist today and are to be
/// removed. Each is listed by its files; the test fails on any other cycle,
/// and on a listed one that is gone, so that this list only ever shrinks.
const KNOWN_CYCLES: &[&[&str]] = &[];

#[test]
fn modules_import_only_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    assert!(
        tree.files.len() > 20 && tree.top.contains("stores"),
        "read too little of {}: {:?}",
        src.display(),
        tree.top
    );
    // Imports src/ is known to make, so a scanner that sees none fails.
    let imports = |from: &str, to: &str| {
        tree.files.iter().any(|f| {
            f.module.first().is_some_and(|m| m == from)
                && f.imports
                    .iter()
                    .any(|i| i.target.first().is_some_and(|t| t == to))
        })
    };
    for (from, to) in [("main", "cli"), ("cli", "config"), ("protocol", "state")] {
        assert!(imports(from, to), "no import of `{to}` seen in `{from}`");
    }
    let problems = layering_problems(&tree);
    assert!(
        problems.is_empty(),
        "the layering of src/ is broken (LAYERS and LEAVES in tests/architecture.rs say which \
         module may import which):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn files_of_one_folder_do_not_import_each_other_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    let cycles = folder_cycles(&tree);
    let known: BTreeSet<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let mut problems = Vec::new();
    for cycle in &cycles {
        if !known.contains(&cycle.nodes) {
            problems.push(cycle.describe());
        }
    }
    let found: BTreeSet<&Vec<String>> = cycles.iter().map(|c| &c.nodes).collect();
    for gone in known.iter().filter(|k| !found.contains(k)) {
        problems.push(format!(
            "{} no longer form a cycle: take them off KNOWN_CYCLES",
            gone.join(" and ")
        ));
    }
    assert!(
        problems.is_empty(),
        "import cycles inside a folder of src/:\n  {}",
        problems.join("\n  ")
    );
}

// The rules, on any tree: the tests above run them on `src/`, the ones at
// the end on small trees made to break them.

/// Every way the top-level modules of `tree` break the layering: an import
/// of a module on the same layer or above, a leaf importing more than the
/// bottom layer, a module the layering does not place.
fn layering_problems(tree: &Tree) -> Vec<String> {
    let mut problems = Vec::new();
    for module in &tree.top {
        if rank(module).is_none() {
            problems.push(format!(
                "src/{module} is a module the layering does not place: add it to LAYERS or LEAVES"
            ));
        }
    }
    for file in &tree.files {
        let Some(from) = file.module.first() else {
            // lib.rs, the library's root, declares every module.
            continue;
        };
        for import in &file.imports {
            let Some(to) = import.target.first() else {
                continue;
            };
            if to == from || !tree.top.contains(to) {
                continue;
            }
            if let Some(why) = refusal(from, to) {
                problems.push(format!(
                    "{}:{}: `{}`: {why}",
                    file.name, import.line, import.statement
                ));
            }
        }
    }
    problems
}

/// A module's place: `Some(Some(layer))` on a layer (0 is the top),
/// `Some(None)` for a leaf, `None` when unplaced.
fn rank(module: &str) -> Option<Option<usize>> {
    if LEAVES.contains(&module) {
        return Some(None);
    }
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .map(Some)
}

/// Why `from` may not import `to`, or `None` when it may.
fn refusal(from: &str, to: &str) -> Option<String> {
    let bottom = LAYERS.len() - 1;
    match (rank(from)?, rank(to)) {
        (_, None) => Some(format!("`{to}` is a module the layering does not place")),
        (Some(_), Some(None)) => None,
        (None, Some(Some(layer))) if layer == bottom => None,
        (None, _) => Some(format!(
            "`{from}` is a leaf: it may import only `{}`",
            LAYERS[bottom].join("`, `")
        )),
        (Some(a), Some(Some(b))) if b > a => None,
        (Some(a), Some(Some(b))) => Some(format!(
            "`{from}` may not import `{to}`, which is {}",
            if a == b {
                "on the same layer"
            } else {
                "on a layer above it"
            }
        )),
    }
}

/// A cycle of imports between files (or subfolders) of one folder.
struct Cycle {
    /// Its files, `src/...`, subfolders ending in `/`, sorted.
    nodes: Vec<String>,
    /// Each import between two of them: `file:line: statement`.
    evidence: Vec<String>,
}

impl Cycle {
    fn describe(&self) -> String {
        format!(
            "{} import each other:\n    {}",
            self.nodes.join(", "),
            self.evidence.join("\n    ")
        )
    }
}

/// Every cycle of imports inside one folder of `tree` (below `src/` itself,
/// whose modules the layering keeps apart).
fn folder_cycles(tree: &Tree) -> Vec<Cycle> {
    // (from node, to node) -> the imports making the edge.
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in &tree.files {
        for import in file.imports.iter().filter(|i| !i.in_test) {
            let (from, to) = (&file.module, &import.target);
            // The folders holding both: the first segments they share, at
            // least one (a folder below src/) and not all of either.
            let shared = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            for depth in 1..=shared {
                if depth >= from.len() || depth >= to.len() {
                    break;
                }
                let from_node = tree.node(&from[..=depth]);
                let to_node = tree.node(&to[..=depth]);
                if from_node == to_node {
                    continue;
                }
                let line = format!("{}:{}: `{}`", file.name, import.line, import.statement);
                let lines = edges.entry((from_node, to_node)).or_default();
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
    }
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    for node in nodes {
        if seen.contains(node) {
            continue;
        }
        let component: Vec<String> = edges
            .keys()
            .flat_map(|(a, b)| [a, b])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|other| reaches(&edges, node, other) && reaches(&edges, other, node))
            .cloned()
            .collect();
        seen.extend(component.iter().cloned());
        if component.len() > 1 {
            let evidence = edges
                .iter()
                .filter(|((a, b), _)| component.contains(a) && component.contains(b))
                .flat_map(|(_, lines)| lines.iter().cloned())
                .collect();
            cycles.push(Cycle {
                nodes: component,
                evidence,
            });
        }
    }
    cycles
}

/// Whether `to` can be reached from `from` along `edges`.
fn reaches(edges: &BTreeMap<(String, String), Vec<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(node) = stack.pop() {
        if node == to {
            return true;
        }
        if seen.insert(node.clone()) {
            stack.extend(
                edges
                    .keys()
                    .filter(|(a, _)| *a == node)
                    .map(|(_, b)| b.clone()),
            );
        }
    }
    false
}

// Reading the tree.

/// The Rust files under `src/` and what each imports.
struct Tree {
    root: PathBuf,
    /// The top-level modules: `src/<name>.rs` and `src/<name>/`, less the
    /// library's root `lib.rs`.
    top: BTreeSet<String>,
    files: Vec<SourceFile>,
}

struct SourceFile {
    /// `src/...`, for messages.
    name: String,
    /// Its module path: `src/state/head.rs` is `[state, head]`,
    /// `src/state/mod.rs` is `[state]`, `src/lib.rs` is `[]`.
    module: Vec<String>,
    imports: Vec<Import>,
}

/// A path naming a module of the crate.
struct Import {
    /// The module named, down to the file or folder that holds it.
    target: Vec<String>,
    line: usize,
    /// The statement holding the path, on one line.
    statement: String,
    /// Whether it is written in a `#[cfg(test)]` module.
    in_test: bool,
}

impl Tree {
    fn read(root: &Path) -> Tree {
        let mut top = BTreeSet::new();
        for entry in std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                top.insert(name);
            } else if let Some(stem) = name.strip_suffix(".rs")
                && stem != "lib"
            {
                top.insert(stem.to_string());
            }
        }
        let mut tree = Tree {
            root: root.to_path_buf(),
            top,
            files: Vec::new(),
        };
        for path in rust_files(root) {
            let rel = path.strip_prefix(root).unwrap();
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let last = module.pop().unwrap();
            match last.trim_end_matches(".rs") {
                "mod" => {}
                "lib" if module.is_empty() => {}
                stem => module.push(stem.to_string()),
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let root_file = module.is_empty() || module == ["main"];
            let imports = tree.imports(&source, &module, root_file);
            tree.files.push(SourceFile {
                name: format!("src/{}", rel.display()),
                module,
                imports,
            });
        }
        tree
    }

    /// The module named by each path in `source`, a file of `module`.
    fn imports(&self, source: &str, module: &[String], root_file: bool) -> Vec<Import> {
        let code = blank_comments_and_strings(source);
        let inline = inline_modules(&code);
        let mut out = Vec::new();
        for (at, path) in paths(&code, &self.top, root_file) {
            // The module the path is written in: the file's, and the inline
            // modules (`mod tests { .. }`) around it.
            let mut here: Vec<String> = module.to_vec();
            if root_file && module == ["main"] {
                // The binary's root is its crate's root, as lib.rs is.
                here.clear();
            }
            let around: Vec<&InlineModule> =
                inline.iter().filter(|m| m.body.contains(&at)).collect();
            here.extend(around.iter().map(|m| m.name.clone()));
            let Some(absolute) = absolute(&here, &path) else {
                continue;
            };
            let target = self.holder(&absolute);
            if target.is_empty() {
                continue;
            }
            out.push(Import {
                target,
                line: code[..at].matches('\n').count() + 1,
                statement: statement(source, &code, at),
                in_test: around.iter().any(|m| m.test_only),
            });
        }
        out
    }

    /// The longest prefix of `path` that is a file or folder of the tree.
    fn holder(&self, path: &[String]) -> Vec<String> {
        let mut dir = self.root.clone();
        let mut held = Vec::new();
        for segment in path {
            if dir.join(segment).is_dir() {
                dir = dir.join(segment);
                held.push(segment.clone());
            } else {
                if dir.join(format!("{segment}.rs")).is_file() {
                    held.push(segment.clone());
                }
                break;
            }
        }
        held
    }

    /// How a module appears in messages: a file, or a folder with `/`.
    fn node(&self, module: &[String]) -> String {
        let path = module.join("/");
        if self.root.join(&path).is_dir() {
            format!("src/{path}/")
        } else {
            format!("src/{path}.rs")
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A path as written: where it starts, and its segments from its root
/// (`crate`, `super`, `self`, `stategate` or, in a crate root, a top-level
/// module), one path per item of a grouped `use a::{b, c::d}`.
fn paths(code: &str, top: &BTreeSet<String>, root_file: bool) -> Vec<(usize, Vec<String>)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b'$')) {
            i += 1;
            continue;
        }
        let word_end = i + bytes[i..].iter().take_while(|b| is_ident(**b)).count();
        let word = &code[i..word_end];
        // Not the tail of a longer path (`other::crate` cannot occur, but
        // `x::super` and `a::self` can).
        let after_colons = i >= 2 && &code[i - 2..i] == "::";
        let rooted = matches!(word, "crate" | "super" | "self" | "stategate")
            || (root_file && top.contains(word));
        if rooted && !after_colons && code[word_end..].trim_start().starts_with("::") {
            let mut found = Vec::new();
            expand(code, i, Vec::new(), &mut found);
            out.extend(found.into_iter().map(|p| (i, p)));
        }
        i = word_end;
    }
    out
}

/// Reads the path starting at `at` after the segments `prefix`, pushing
/// every complete path (groups expanded) to `out`; returns where it ends.
fn expand(code: &str, mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let bytes = code.as_bytes();
    let skip_ws = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    let mut path = prefix;
    loop {
        at = skip_ws(at);
        if at < bytes.len() && bytes[at] == b'{' {
            at += 1;
            loop {
                at = skip_ws(at);
                match bytes.get(at) {
                    None => return at,
                    Some(b'}') => return at + 1,
                    Some(b',') => at += 1,
                    Some(_) => {
                        let before = at;
                        at = expand(code, at, path.clone(), out);
                        if at == before {
                            at += 1;
                        }
                    }
                }
            }
        }
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        if at == start {
            // `*` or the end of the path.
            if !path.is_empty() {
                out.push(path);
            }
            return if bytes.get(at) == Some(&b'*') {
                at + 1
            } else {
                at
            };
        }
        let segment = &code[start..at];
        // `use a::b::{self}` names `a::b`.
        if segment != "self" || path.is_empty() {
            path.push(segment.to_string());
        }
        let next = skip_ws(at);
        if code[next..].starts_with("::") {
            at = next + 2;
        } else {
            out.push(path);
            return at;
        }
    }
}

/// A path written in module `here`, made absolute from the crate root;
/// `None` when it climbs above the root.
fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut segments = path.iter().peekable();
    let mut out: Vec<String> = match segments.peek().map(|s| s.as_str()) {
        Some("crate") | Some("stategate") => {
            segments.next();
            Vec::new()
        }
        Some("self") => {
            segments.next();
            here.to_vec()
        }
        Some("super") => here.to_vec(),
        // A crate root naming one of its modules.
        _ => Vec::new(),
    };
    while segments.peek().is_some_and(|s| *s == "super") {
        segments.next();
        out.pop()?;
    }
    out.extend(segments.cloned());
    Some(out)
}

/// A module written inside a file: `mod tests { .. }`.
struct InlineModule {
    name: String,
    /// The byte range of its body.
    body: std::ops::Range<usize>,
    /// Whether it is compiled for tests only (`#[cfg(test)]`).
    test_only: bool,
}

/// The inline modules of a file.
fn inline_modules(code: &str) -> Vec<InlineModule> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("mod") {
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let rest = &code[at + 3..];
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let rest = rest.trim_start();
        let name: String = rest.chars().take_while(|c| is_ident(*c as u8)).collect();
        if name.is_empty() || !rest[name.len()..].trim_start().starts_with('{') {
            continue;
        }
        let open = at + 3 + code[at + 3..].find('{').unwrap();
        let mut depth = 0;
        let mut end = bytes.len();
        for (i, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let before = code[..at].trim_end();
        let before = before.strip_suffix("pub").unwrap_or(before).trim_end();
        out.push(InlineModule {
            name,
            body: open..end,
            test_only: before.ends_with("#[cfg(test)]"),
        });
    }
    out
}

/// The statement around the path at `at`, on one line: from the start of
/// its line to the end of the statement, at most a few lines.
fn statement(source: &str, code: &str, at: usize) -> String {
    let start = code[..at].rfind('\n').map_or(0, |n| n + 1);
    let end = code[at..]
        .find([';', '{', '\n'])
        .map_or(code.len(), |n| at + n);
    // A grouped `use` runs to its `;`, over several lines.
    let end = if code[at..end].trim_end().ends_with("::") || code[end..].starts_with('{') {
        code[at..].find(';').map_or(end, |n| at + n + 1)
    } else if code[end..].starts_with(';') {
        end + 1
    } else {
        end
    };
    let text = source[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Rust source with every byte of comments and of string and character
/// literals turned into a space (newlines kept), so that doc links and
/// messages are not imports and every offset and line stays where it was.
fn blank_comments_and_strings(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = bytes.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(bytes.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(bytes[i - 1]);
        if c == b'/' && next == Some(b'/') {
            let end = source[i..].find('\n').map_or(bytes.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if c == b'/' && next == Some(b'*') {
            let mut depth = 0;
            let mut j = i;
            while j < bytes.len() {
                if bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if (c == b'r' || c == b'b') && !prev_ident && raw_string_at(bytes, i).is_some() {
            let end = raw_string_at(bytes, i).unwrap();
            blank(&mut out, i, end);
            i = end;
        } else if c == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if c == b'\'' && (next == Some(b'\\') || char_literal_end(source, i).is_some()) {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime.
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes replaced whole characters")
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `at` ends.
fn raw_string_at(bytes: &[u8], at: usize) -> Option<usize> {
    let mut j = at;
    if bytes[j] == b'b' {
        j += 1;
    }
    if bytes.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while bytes.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    if bytes.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    while j < bytes.len() {
        if bytes[j] == b'"' && (1..=hashes).all(|k| bytes.get(j + k) == Some(&b'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(bytes.len())
}

/// Where a one-character literal such as `'x'` or `'é'` at `at` ends.
fn char_literal_end(source: &str, at: usize) -> Option<usize> {
    let mut chars = source[at + 1..].char_indices();
    let (_, c) = chars.next()?;
    let (n, close) = chars.next()?;
    (c != '\'' && close == '\'').then_some(at + 1 + n + 1)
}

// The rules fail when they should, on trees made to break them.

/// A throwaway `src/` tree from `(path, contents)` pairs.
fn tree_of(files: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
    let dir = tempfile::TempDir::new().unwrap();
    let src = dir.path().join("src");
    for (path, contents) in files {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let tree = Tree::read(&src);
    (dir, tree)
}

#[test]
fn an_import_of_a_higher_layer_is_named_with_its_file_and_line() {
    let (_dir, tree) = tree_of(&[
        (
            "lib.rs",
            "pub mod settings;\npub mod state;\npub mod stores;\n",
        ),
        ("settings.rs", "pub struct Setting;\n"),
        ("state/mod.rs", "use crate::stores::Store;\n"),
        (
            "stores/mod.rs",
            "//! Below [`crate::state`].\nuse crate::settings::Setting;\n\n\
             use crate::{\n    settings,\n    state::StateRef,\n};\n",
        ),
    ]);
    assert_eq!(
        layering_problems(&tree),
        [
            "src/stores/mod.rs:4: `use crate::{ settings, state::StateRef, };`: \
             `stores` may not import `state`, which is on a layer above it"
        ]
    );
}

#[test]
fn leaves_and_unplaced_modules_are_refused() {
    let (_dir, tree) = tree_of(&[
        ("lib.rs", ""),
        ("audit.rs", "fn f() { let _ = crate::metrics::Counter; }\n"),
        ("metrics.rs", "use crate::settings::X;\n"),
        ("settings.rs", ""),
        ("extras/mod.rs", "use super::settings::X;\n"),
        ("protocol.rs", "use crate::extras::Y;\n"),
    ]);
    assert_eq!(
        layering_problems(&tree),
        [
            "src/extras is a module the layering does not place: add it to LAYERS or LEAVES",
            "src/audit.rs:1: `fn f() { let _ = crate::metrics::Counter;`: \
             `audit` is a leaf: it may import only `settings`",
            "src/protocol.rs:1: `use crate::extras::Y;`: \
             `extras` is a module the layering does not place",
        ]
    );
}

#[test]
fn the_binary_imports_through_its_own_root_and_the_library_name() {
    let (_dir, tree) = tree_of(&[
        ("lib.rs", ""),
        (
            "main.rs",
            "mod cli;\nuse cli::Command;\nuse stategate::config;\n",
        ),
        ("cli/mod.rs", "pub mod keys;\nuse stategate::state::seal;\n"),
        (
            "cli/keys.rs",
            "use super::Command;\nuse stategate::stores;\n",
        ),
        ("config.rs", "use crate::protocol::X;\n"),
        ("protocol.rs", "fn f() { stategate::cli::x(); }\n"),
        ("state.rs", ""),
        ("stores.rs", ""),
    ]);
    // `stategate::cli` cannot compile, but the layering still sees it.
    assert_eq!(
        layering_problems(&tree),
        ["src/protocol.rs:1: `fn f() { stategate::cli::x();`: \
          `protocol` may not import `cli`, which is on a layer above it"]
    );
}

#[test]
fn a_cycle_between_files_of_a_folder_is_found_and_mod_rs_is_not_in_it() {
    let (_dir, tree) = tree_of(&[
        ("lib.rs", ""),
        (
            "state/mod.rs",
            "mod head;\nmod history;\nmod key;\nmod lock;\npub use lock::Held;\npub struct StateError;\n",
        ),
        (
            "state/head.rs",
            "use super::{Held, StateError};\npub struct Head(super::history::Pointer);\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::lock::Held;\n}\n",
        ),
        (
            "state/history.rs",
            "use crate::state::head::Head;\npub struct Pointer;\n",
        ),
        (
            "state/lock.rs",
            "use super::head::Head;\nuse super::key::inner::Name;\n",
        ),
        (
            "state/key.rs",
            "pub mod inner {\n    use super::super::lock::Held;\n}\n",
        ),
        ("stores/mod.rs", "pub mod s3;\n"),
        ("stores/s3/mod.rs", "mod error;\nmod store;\n"),
        ("stores/s3/error.rs", "use super::store::Bucket;\n"),
        ("stores/s3/store.rs", "use super::error::Failure;\n"),
    ]);
    let cycles: Vec<(Vec<String>, Vec<String>)> = folder_cycles(&tree)
        .into_iter()
        .map(|c| (c.nodes, c.evidence))
        .collect();
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        cycles,
        [
            (
                owned(&["src/state/head.rs", "src/state/history.rs"]),
                owned(&[
                    "src/state/head.rs:2: `pub struct Head(super::history::Pointer);`",
                    "src/state/history.rs:1: `use crate::state::head::Head;`",
                ])
            ),
            // An inline module that is not test-only is part of its file.
            (
                owned(&["src/state/key.rs", "src/state/lock.rs"]),
                owned(&[
                    "src/state/key.rs:2: `use super::super::lock::Held;`",
                    "src/state/lock.rs:2: `use super::key::inner::Name;`",
                ])
            ),
            (
                owned(&["src/stores/s3/error.rs", "src/stores/s3/store.rs"]),
                owned(&[
                    "src/stores/s3/error.rs:1: `use super::store::Bucket;`",
                    "src/stores/s3/store.rs:1: `use super::error::Failure;`",
                ])
            ),
        ]
    );
}

#[test]
fn a_cycle_between_subfolders_of_a_folder_is_found() {
    let (_dir, tree) = tree_of(&[
        ("lib.rs", ""),
        ("stores/mod.rs", "pub mod bucket;\npub mod s3;\n"),
        ("stores/bucket.rs", "use super::s3::store::Bucket;\n"),
        ("stores/s3/mod.rs", "mod store;\n"),
        (
            "stores/s3/store.rs",
            "use crate::stores::bucket::network_cause;\n",
        ),
    ]);
    let nodes: Vec<Vec<String>> = folder_cycles(&tree).into_iter().map(|c| c.nodes).collect();
    assert_eq!(
        nodes,
        [vec![
            "src/stores/bucket.rs".to_string(),
            "src/stores/s3/".to_string()
        ]]
    );
}

#[test]
fn comments_and_strings_are_not_imports() {
    let code = blank_comments_and_strings(
        "use crate::{config::{A, B}, stores::X};\n\
         //! [`crate::state`]\n\
         /* crate::auth /* nested */ crate::ui */ let s = \"crate::tls\"; let r = r#\"crate::server\"#;\n\
         fn f<'a>(x: &'a str) -> char { let _ = crate::metrics::m(); 'c' }\n\
         let é = 'é'; other_crate::audit::x(); $crate::logging::x();",
    );
    let top: BTreeSet<String> = BTreeSet::new();
    let named: BTreeSet<String> = paths(&code, &top, false)
        .into_iter()
        .map(|(_, p)| p[1].clone())
        .collect();
    assert_eq!(
        named,
        ["config", "metrics", "stores"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(code.lines().count(), 5, "lines are kept");
}
