//! The daemon's folders are its layers, and this test keeps the arrows pointing down.
//!
//! It reads every source file under `daemon/src`, collects the module paths each one names
//! (`crate::a::b`, and `super::x` inside a folder), and fails on:
//! - an import of a layer the file's layer may not use (the order: `model` ← `protocols` ←
//!   `connectors` ← `proxy` ← `listeners` ← the binaries; `control` → `model`; `api` →
//!   `control` and `model`);
//! - a circle between modules (files), a folder's `mod.rs` and its children included;
//! - a write to the live snapshot (`State` and `ListenerState` swappers) outside `control/`.
//!
//! Comments and string literals are ignored; `#[cfg(test)]` modules count like the rest (a
//! test fixture that needs an upper layer belongs in that layer's tests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, and which ones each may import (itself included).
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &["model"]),
    ("protocols", &["model", "protocols"]),
    ("connectors", &["model", "protocols", "connectors"]),
    ("proxy", &["model", "protocols", "connectors", "proxy"]),
    (
        "listeners",
        &["model", "protocols", "connectors", "proxy", "listeners"],
    ),
    ("control", &["model", "control"]),
    ("api", &["model", "control", "api"]),
];

/// The snapshot's writers: only `control` calls them (and `model`, which defines them).
const WRITERS: &[&str] = &[
    ".set_listeners(",
    ".set_proxy(",
    ".replace_firewall(",
    ".replace_routes(",
    ".patch_routes(",
    ".patch_table(",
    ".set_settings(",
    ".set_no_sni_route(",
    ".set_not_served(",
    ".forget_not_served(",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path: `model/state.rs` is `model::state`, `proxy/l7/mod.rs` is `proxy::l7`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The source without comments and string literals (so a doc line or a log message that
/// names a path is not an import).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal holding a quote would open a string above.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                chars.next();
                out.push_str("' '");
            }
            c => out.push(c),
        }
    }
    out
}

/// Every `crate::a::b::...` and `super::...` path in `code`, as written (idents only).
fn paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find(prefix) {
        let start = i + at;
        i = start + prefix.len();
        // A whole word: not `xcrate::`.
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let len = code[j..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(code.len() - j);
            if len == 0 {
                break;
            }
            segs.push(code[j..j + len].to_owned());
            j += len;
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        // `crate::{a, b}` groups: each member counts.
        if segs.is_empty() && code[j..].starts_with('{') {
            let end = code[j..].find('}').map_or(code.len(), |e| j + e);
            for member in code[j + 1..end].split(',') {
                let member: Vec<String> = member
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !member.is_empty() {
                    found.push(member);
                }
            }
            continue;
        }
        if !segs.is_empty() {
            found.push(segs);
        }
    }
    found
}

/// The modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// The longest module among `modules` that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|candidate| modules.contains(candidate))
}

struct Source {
    module: Vec<String>,
    file: PathBuf,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap();
            name != "lib.rs" && name != "main.rs"
        })
        .map(|file| Source {
            module: module_of(&file),
            code: code_only(&std::fs::read_to_string(&file).unwrap()),
            file,
        })
        .collect()
}

/// The module graph: each module's imports of other modules.
fn graph(sources: &[Source]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in sources {
        let mut targets = BTreeSet::new();
        for p in paths(&s.code, "crate::") {
            if let Some(m) = resolve(&p, &modules) {
                targets.insert(m);
            }
        }
        // `super::x` in `a/b/c.rs` (module a::b::c) names a::b::x; in `a/b/mod.rs` (a::b) it
        // names a::x.
        let is_mod = s.file.file_name().unwrap() == "mod.rs";
        let parent: Vec<String> = s.module[..s.module.len().saturating_sub(1)].to_vec();
        let base = if is_mod {
            parent
        } else {
            s.module[..s.module.len().saturating_sub(1)].to_vec()
        };
        for p in paths(&s.code, "super::") {
            let mut full = base.clone();
            full.extend(p);
            if let Some(m) = resolve(&full, &modules) {
                targets.insert(m);
            }
        }
        // A folder's `mod.rs` names its children by their bare names (`child::item`).
        for child in declared_children(&s.code) {
            let mut module = s.module.clone();
            module.push(child.clone());
            let named = paths(&s.code, &format!("{child}::"));
            if modules.contains(&module) && !named.is_empty() {
                targets.insert(module);
            }
        }
        targets.remove(&s.module);
        edges.insert(s.module.clone(), targets);
    }
    edges
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, targets) in graph(&sources()) {
        let layer = from[0].as_str();
        let may = allowed
            .get(layer)
            .unwrap_or_else(|| panic!("{} is in no layer folder", from.join("::")));
        for to in targets {
            if !may.contains(&to[0].as_str()) {
                wrong.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other_even_through_others() {
    let edges = graph(&sources());
    // Tarjan would do; the graph is small: a depth-first search from each module for a way
    // back to it, reporting each circle once (by its smallest member).
    let mut circles = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut circle: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    let min = circle.iter().enumerate().min_by_key(|(_, m)| *m).unwrap().0;
                    circle.rotate_left(min);
                    circles.insert(circle.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn only_control_writes_the_snapshot() {
    let mut wrong = Vec::new();
    for s in sources() {
        if matches!(s.module[0].as_str(), "control" | "model") {
            continue;
        }
        // Production code: a file's unit tests (at its end) may set up a snapshot by hand.
        let code = s.code.split("#[cfg(test)]").next().unwrap_or_default();
        for w in WRITERS {
            if code.contains(w) {
                wrong.push(format!("{} calls {w}", s.file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "snapshot writes outside control:\n{}",
        wrong.join("\n")
    );
}

/// The test's own reader: a path in a comment or a string is not an import, a grouped
/// `use crate::{a, b::c}` names each member.
#[test]
fn the_reader_sees_imports_only() {
    let code = code_only(
        "// crate::up::x\nuse crate::{a::b, c};\nlet s = \"crate::up\"; let q = '\"';\n\
         fn f() { crate::d::e(); super::g(); }",
    );
    let found = paths(&code, "crate::");
    assert_eq!(
        found,
        [
            vec!["a".to_owned(), "b".to_owned()],
            vec!["c".to_owned()],
            vec!["d".to_owned(), "e".to_owned()]
        ]
    );
    assert_eq!(paths(&code, "super::"), [vec!["g".to_owned()]]);
}
