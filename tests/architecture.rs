//! The map checked against the territory: ARCHITECTURE.md's layers and boundary rules, read
//! from the document itself, against every `crate::` path in the non-test code of `src/`.
//! In the spirit of rust-analyzer's tidy tests: the map cannot drift from the code, because
//! a rule broken in the code, or a module missing from the map, fails here.
//!
//! What is checked:
//! - every module of `src/lib.rs` stands on exactly one line of the "Layers" block, and every
//!   name there is a module;
//! - a module uses only modules on lower lines (a path `crate::x`, in `use` or in code, macro
//!   bodies included), except where a "may also use" rule allows it;
//! - no module uses one that a "never uses" rule forbids it;
//! - no module but `config` reads the process environment;
//! - lambda-env, the dev-only crate, has no import circle.
//!
//! Test code (`#[cfg(test)]` items and the files they declare) is left out: a test may reach
//! wherever it needs to. The checker is also run on planted violations, so it is known to fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The module allowed to read the environment.
const CONFIG: &str = "config";

/// The rules ARCHITECTURE.md states.
#[derive(Debug, Default)]
struct Map {
    /// Module → its layer; 0 is the bottom.
    layer: BTreeMap<String, usize>,
    /// (module, module it never uses).
    never: BTreeSet<(String, String)>,
    /// (module, module above or beside it that it may use all the same).
    also: BTreeSet<(String, String)>,
}

/// Reads the "Layers" block (a fenced block after the `## Layers` heading, one layer per
/// line, top first) and the rule lines of the document:
/// "- `a` never uses `b`, `c`: why" and "- `a` may also use `b`: why".
fn parse_map(doc: &str) -> Map {
    let mut map = Map::default();
    let after = doc
        .split_once("\n## Layers\n")
        .expect("ARCHITECTURE.md has a `## Layers` section")
        .1;
    let block = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the Layers section has a fenced block")
        .0;
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        for module in line.split_whitespace() {
            let previous = map.layer.insert(module.to_owned(), lines.len() - 1 - i);
            assert!(previous.is_none(), "{module} stands on two layers");
        }
    }
    for line in doc.lines() {
        let Some(rule) = line.strip_prefix("- `") else {
            continue;
        };
        let Some((subject, rest)) = rule.split_once('`') else {
            continue;
        };
        let (set, rest) = if let Some(rest) = rest.strip_prefix(" never uses ") {
            (&mut map.never, rest)
        } else if let Some(rest) = rest.strip_prefix(" may also use ") {
            (&mut map.also, rest)
        } else {
            continue;
        };
        let names = rest.split(':').next().unwrap_or_default();
        for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
            set.insert((subject.to_owned(), name.to_owned()));
        }
    }
    map
}

/// One use of a module by another, where it was seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

/// What the non-test code of one source file uses.
#[derive(Debug, Default)]
struct Uses {
    /// Top-level modules named by a `crate::`/`super::` path.
    modules: BTreeSet<String>,
    /// Whether it reads the process environment (`env::var` and friends).
    reads_env: bool,
    /// Files declared by `#[cfg(test)] mod name;`: test code, skipped.
    test_files: BTreeSet<String>,
}

/// Walks one file's syntax tree, skipping `#[cfg(test)]` items.
struct Walker {
    /// The path of inline and file modules from the crate root to where the walker is, so
    /// that `super::` can be resolved to a top-level module.
    scope: Vec<String>,
    uses: Uses,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

impl Walker {
    /// Records the top-level module a path starting with `first`, `second` names.
    fn path(&mut self, segments: &[String]) {
        let mut scope = self.scope.clone();
        let mut rest = segments;
        match segments.first().map(String::as_str) {
            Some("crate") => {
                scope.clear();
                rest = &segments[1..];
            }
            Some("super") => {
                while let Some("super") = rest.first().map(String::as_str) {
                    scope.pop();
                    rest = &rest[1..];
                }
            }
            _ => {
                self.env_read(segments);
                return;
            }
        }
        let top = scope.first().or(rest.first());
        if let Some(top) = top {
            self.uses.modules.insert(top.clone());
        }
    }

    fn env_read(&mut self, segments: &[String]) {
        let reads = ["var", "var_os", "vars", "vars_os"];
        if segments
            .windows(2)
            .any(|w| w[0] == "env" && reads.contains(&w[1].as_str()))
        {
            self.uses.reads_env = true;
        }
    }

    /// Paths inside macro bodies are tokens, not syntax: found by their text.
    fn tokens(&mut self, tokens: &proc_macro2::TokenStream) {
        let text = tokens.to_string();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| !w.is_empty())
            .collect();
        let flat = words.join(" ");
        let segments: Vec<String> = flat
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .join(" ")
            .replace(" :: ", "::")
            .split(' ')
            .map(str::to_owned)
            .collect();
        for word in segments {
            let parts: Vec<String> = word
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if parts.len() > 1 {
                self.path(&parts);
            }
        }
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            path.push(n.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for item in &g.items {
                use_paths(item, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Walker {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
            {
                self.uses.test_files.insert(m.ident.to_string());
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.scope.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.scope.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut out);
        for path in out {
            self.path(&path);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.path(&segments);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(&m.tokens);
        syn::visit::visit_macro(self, m);
    }
}

/// The module path of a file below a crate's `src/`: `derive/logs.rs` → [derive, logs],
/// `events.rs` → [events], `metrics/mod.rs` → [metrics].
fn scope_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn walk(scope: Vec<String>, source: &str) -> Uses {
    let file = syn::parse_file(source).expect("source parses");
    let mut walker = Walker {
        scope,
        uses: Uses::default(),
    };
    walker.visit_file(&file);
    walker.uses
}

/// Every edge between top-level modules, and the modules that read the environment, for a
/// crate's sources given as (path below src/, text). `lib.rs` is skipped: it only declares
/// the modules. `main.rs` uses the library by its name, so it adds no edge, but it is
/// checked for reading the environment like a module.
fn scan(files: &[(PathBuf, String)]) -> (BTreeSet<Edge>, BTreeSet<String>) {
    let walked: Vec<(&PathBuf, Uses)> = files
        .iter()
        .filter(|(path, _)| path != Path::new("lib.rs"))
        .map(|(path, source)| (path, walk(scope_of(path), source)))
        .collect();
    // The files (and folders) that `#[cfg(test)] mod name;` lines declare.
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    for (path, uses) in &walked {
        let dir = if path.ends_with("mod.rs") {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            path.with_extension("")
        };
        for name in &uses.test_files {
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(name));
        }
    }
    let mut edges = BTreeSet::new();
    let mut env_readers = BTreeSet::new();
    for (path, uses) in walked {
        if test_only.iter().any(|t| path.starts_with(t)) {
            continue;
        }
        let from = scope_of(path)[0].clone();
        if uses.reads_env {
            env_readers.insert(from.clone());
        }
        for to in uses.modules {
            if to != from {
                edges.insert(Edge {
                    from: from.clone(),
                    to,
                    at: path.display().to_string(),
                });
            }
        }
    }
    (edges, env_readers)
}

/// Every way the code breaks the map, as readable lines.
fn violations(map: &Map, modules: &BTreeSet<String>, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for module in modules {
        if !map.layer.contains_key(module) {
            found.push(format!("`{module}` is on no layer of ARCHITECTURE.md"));
        }
    }
    for module in map.layer.keys() {
        if !modules.contains(module) {
            found.push(format!(
                "ARCHITECTURE.md's layers name `{module}`, not a module"
            ));
        }
    }
    let (edges, env_readers) = scan(files);
    for edge in &edges {
        let pair = (edge.from.clone(), edge.to.clone());
        if map.never.contains(&pair) {
            found.push(format!(
                "{}: `{}` uses `{}`, which a rule forbids",
                edge.at, edge.from, edge.to
            ));
            continue;
        }
        let (Some(from), Some(to)) = (map.layer.get(&edge.from), map.layer.get(&edge.to)) else {
            continue;
        };
        if to >= from && !map.also.contains(&pair) {
            found.push(format!(
                "{}: `{}` (layer {from}) uses `{}` (layer {to}), not below it",
                edge.at, edge.from, edge.to
            ));
        }
    }
    for reader in env_readers {
        if reader != CONFIG {
            found.push(format!(
                "`{reader}` reads the environment: only `{CONFIG}` does"
            ));
        }
    }
    found
}

/// The first circle among a crate's module edges, if any.
fn circle(edges: &BTreeSet<Edge>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in edges {
        next.entry(&e.from).or_default().push(&e.to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    next.keys()
        .find_map(|start| visit(start, &next, &mut Vec::new(), &mut done))
}

fn sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.strip_prefix(src).unwrap().to_path_buf(), text));
            }
        }
    }
    files
}

/// The top-level modules `lib.rs` declares.
fn declared(lib: &str) -> BTreeSet<String> {
    syn::parse_file(lib)
        .unwrap()
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_code_keeps_the_map() {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let map = parse_map(&doc);
    let files = sources(&Path::new(ROOT).join("src"));
    let lib = &files
        .iter()
        .find(|(p, _)| p == Path::new("lib.rs"))
        .unwrap()
        .1;
    let found = violations(&map, &declared(lib), &files);
    assert!(
        found.is_empty(),
        "the code breaks ARCHITECTURE.md:\n{}",
        found.join("\n")
    );
}

#[test]
fn lambda_env_has_no_import_circle() {
    let files = sources(&Path::new(ROOT).join("lambda-env/src"));
    let (edges, _) = scan(&files);
    assert!(!edges.is_empty(), "the scan found lambda-env's imports");
    assert_eq!(circle(&edges), None, "an import circle in lambda-env");
}

// The checker itself, on planted violations: each must be reported.

const PLANTED_MAP: &str = "# A\n\n## Layers\n\n```text\ntop\nmiddle\nbottom config\n```\n\n\
- `top` never uses `bottom`: it must not.\n- `bottom` may also use `config`: shared.\n";

fn planted(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
    let modules = ["top", "middle", "bottom", "config"]
        .map(str::to_owned)
        .into();
    violations(&parse_map(PLANTED_MAP), &modules, &files)
}

#[test]
fn the_checker_accepts_a_tree_that_keeps_the_map() {
    let found = planted(&[
        (
            "top.rs",
            "use crate::middle::M; fn f() { crate::middle::g(); }",
        ),
        ("middle/mod.rs", "mod part; use super::bottom::B;"),
        (
            "middle/part.rs",
            "use super::Thing; use super::super::bottom::C;",
        ),
        ("bottom.rs", "use crate::config::X;"),
        (
            "config.rs",
            "fn v() -> Option<String> { std::env::var(\"A\").ok() }",
        ),
        (
            "lib.rs",
            "pub mod top; pub mod middle; pub mod bottom; pub mod config;",
        ),
    ]);
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_checker_reports_each_planted_violation() {
    let found = planted(&[
        // Up a layer, through a `use`.
        ("bottom.rs", "use crate::middle::M;"),
        // Up, through a path in code, inside a macro body.
        (
            "middle/mod.rs",
            "fn f() { tracing::info!(x = crate::top::X); }",
        ),
        // Forbidden by a rule, through `super::super`.
        ("top/part.rs", "fn f() { super::super::bottom::g(); }"),
        // Reading the environment outside config.
        (
            "middle/read.rs",
            "use std::env; fn f() { let _ = env::var_os(\"X\"); }",
        ),
        // Test code may do anything.
        (
            "config.rs",
            "#[cfg(test)] mod tests { use crate::top::T; }\n#[cfg(test)] mod more;",
        ),
        ("config/more.rs", "use crate::top::T;"),
    ]);
    let expected = [
        "bottom.rs: `bottom` (layer 0) uses `middle` (layer 1), not below it",
        "middle/mod.rs: `middle` (layer 1) uses `top` (layer 2), not below it",
        "top/part.rs: `top` uses `bottom`, which a rule forbids",
        "`middle` reads the environment: only `config` does",
    ];
    assert_eq!(found, expected);
}

#[test]
fn the_circle_finder_finds_a_planted_circle() {
    let files: Vec<(PathBuf, String)> = [
        ("api.rs", "use crate::ids::x;"),
        ("ids.rs", "use crate::env::y;"),
        ("env.rs", "mod managed;"),
        ("env/managed.rs", "use crate::api::z;"),
    ]
    .iter()
    .map(|(p, s)| (PathBuf::from(p), s.to_string()))
    .collect();
    let (edges, _) = scan(&files);
    assert_eq!(
        circle(&edges),
        Some(vec!["api".into(), "ids".into(), "env".into(), "api".into()])
    );
}
