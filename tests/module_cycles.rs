//! The module graph has no cycles: CI fails on one.
//!
//! Each source file is a module (`src/a/b.rs` is `a::b`, `src/a/mod.rs` is
//! `a`), in one of two crates: the library (`src/lib.rs` and below) and
//! the `wasp` binary (`src/main.rs` and `src/cli/`). A module depends on
//! another when its code (not its comments, not its `#[cfg(test)]` tests)
//! names a path into it: `crate::x::y`, `super::y`, `self::y`, or a `use`
//! of those, braces expanded. A path resolves to the longest known module
//! it starts with. Edges between a module and its own ancestors or
//! descendants are the usual facade of a folder (`mod.rs` re-exporting its
//! children, children using the folder's shared items) and do not count;
//! every other edge does, and the strongly connected components of the
//! graph must all be single modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate (`lib` or `bin`) and module of a file under `src/`, or `None`
/// for files of other binaries.
fn module_of(rel: &Path) -> Option<(&'static str, Module)> {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let krate = match parts[0].as_str() {
        "main.rs" | "cli" => "bin",
        "bin" => return None,
        _ => "lib",
    };
    let mut m: Module = parts.clone();
    let last = m.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        f => m.push(f.trim_end_matches(".rs").to_owned()),
    }
    Some((krate, m))
}

/// The code of a file: comment lines and the `#[cfg(test)] mod …` tail cut.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Expands one `use` tree (`a::{b, c::{d}}`) into plain paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, path));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}::{b}"),
    }
}

/// Every path the code names that starts with `crate`, `super` or `self`.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let use_re =
        regex::Regex::new(r"(?m)^[ \t]*(?:pub(?:\([^)]*\))?[ \t]+)?use[ \t]+([^;]+);").unwrap();
    for c in use_re.captures_iter(code) {
        expand(&c[1], "", &mut out);
    }
    let path_re =
        regex::Regex::new(r"(?-u:\b)((?:crate|super|self)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)")
            .unwrap();
    for c in path_re.captures_iter(code) {
        out.push(c[1].to_owned());
    }
    out.retain(|p| p.starts_with("crate::") || p.starts_with("super::") || p.starts_with("self::"));
    out.sort();
    out.dedup();
    out
}

/// `path` as seen from module `from` (a file whose module is `from`; for a
/// `mod.rs`, `super` is the folder's parent), made absolute.
fn absolute(path: &str, from: &Module) -> Module {
    let mut segs = path.split("::").map(str::to_owned);
    let mut base: Module = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    match segs.next().as_deref() {
        Some("crate") => {}
        Some("self") => base = from.clone(),
        Some("super") => {
            base = from.clone();
            base.pop();
        }
        _ => unreachable!(),
    }
    for s in segs {
        if s == "super" && rest.is_empty() {
            base.pop();
        } else {
            rest.push(s);
        }
    }
    base.extend(rest);
    base
}

fn related(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        n: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Module) {
        t.index.insert(v, t.n);
        t.low.insert(v, t.n);
        t.n += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = g.get_key_value(w).map(|(k, _)| k).unwrap_or(w);
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        n: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The module graph of each crate.
fn graphs() -> BTreeMap<&'static str, BTreeMap<Module, BTreeSet<Module>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut mods: BTreeMap<&str, BTreeMap<Module, String>> = BTreeMap::new();
    for f in &files {
        if let Some((k, m)) = module_of(f.strip_prefix(&src).unwrap()) {
            mods.entry(k)
                .or_default()
                .insert(m, code_of(&std::fs::read_to_string(f).unwrap()));
        }
    }
    let mut out = BTreeMap::new();
    for (k, ms) in &mods {
        let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (m, code) in ms {
            let deps = g.entry(m.clone()).or_default();
            for p in paths_in(code) {
                let mut target = absolute(&p, m);
                while !target.is_empty() && !ms.contains_key(&target) {
                    target.pop();
                }
                if !related(&target, m) {
                    deps.insert(target);
                }
            }
        }
        out.insert(*k, g);
    }
    out
}

#[test]
fn the_module_graph_has_no_cycles() {
    let mut found = Vec::new();
    for (k, g) in graphs() {
        assert!(g.len() > 5, "{k}: the source tree was not found");
        for c in cycles(&g) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            found.push(format!("{k}: {}", names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_ignores_facades() {
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    g.entry(m("a")).or_default().insert(m("b"));
    g.entry(m("b")).or_default().insert(m("c"));
    g.entry(m("c")).or_default().insert(m("a"));
    g.entry(m("d")).or_default().insert(m("a"));
    assert_eq!(cycles(&g), vec![vec![m("a"), m("b"), m("c")]]);
    let code = "use crate::{x::{Y, z}, w as v};\nuse super::q;\n// crate::comment\nfn f() { crate::p::r(); }\n#[cfg(test)]\nmod tests { use crate::t; }\n";
    let p = paths_in(&code_of(code));
    assert_eq!(
        p,
        [
            "crate::p::r",
            "crate::w",
            "crate::x::Y",
            "crate::x::z",
            "super::q"
        ]
    );
    assert_eq!(absolute("super::q", &m("a::b")), m("a::q"));
    assert!(related(&m("a"), &m("a::b")));
}
