//! The module graph of `src/` has no cycle: no module imports one above it
//! (ARCHITECTURE.md). Checked on the source text, at two levels: the
//! top-level modules of the crate, and the files of one directory among
//! themselves (`report/human.rs` and `report/incidents.rs`, say).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside the crate, from its file: `src/report/human.rs`
/// is `["report", "human"]`, `src/report/mod.rs` is `["report"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// module (tests may reach anywhere).
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path a file names, resolved against the known modules:
/// `crate::a::b::Item` and `super::x` (relative to the file's module).
fn references(
    module: &[String],
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut resolve = |mut path: Vec<String>| {
        // The longest prefix that is a module.
        while !path.is_empty() && !known.contains(&path) {
            path.pop();
        }
        if !path.is_empty() {
            out.insert(path);
        }
    };
    for (i, _) in text.match_indices("crate::") {
        if i > 0 && text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        for rest in paths_after(&text[i + 7..]) {
            resolve(
                rest.split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
    }
    for (i, _) in text.match_indices("super::") {
        if i > 0 && text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let supers: String = text[i..].chars().take_while(|c| ident(*c)).collect();
        let mut base: Vec<String> = module.to_vec();
        let mut parts = supers.split("::").filter(|s| !s.is_empty()).peekable();
        while parts.peek() == Some(&"super") {
            parts.next();
            base.pop();
        }
        let head: Vec<String> = parts.map(String::from).collect();
        let after = &text[i + supers.len()..];
        let tails = if head.is_empty() && after.starts_with('{') {
            paths_after(after)
        } else {
            vec![String::new()]
        };
        for tail in tails {
            let mut path = base.clone();
            path.extend(head.iter().cloned());
            path.extend(tail.split("::").filter(|s| !s.is_empty()).map(String::from));
            resolve(path);
        }
    }
    out
}

/// The paths a `use` names after `crate::` or `super::`: one path, or each
/// path of a `{a, b::c}` group (one level deep).
fn paths_after(text: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    if let Some(group) = text.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        return group[..end]
            .split(',')
            .map(|p| p.trim().chars().take_while(|c| ident(*c)).collect())
            .filter(|p: &String| !p.is_empty())
            .collect();
    }
    vec![text.chars().take_while(|c| ident(*c)).collect()]
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The module graph at both levels: `(top-level graph, per-directory graphs)`.
fn graphs(
    src: &Path,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: Vec<(Vec<String>, String)> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code(&std::fs::read_to_string(f).expect("read")),
            )
        })
        .collect();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &modules {
        let Some(first) = module.first() else {
            continue;
        };
        top.entry(first.clone()).or_default();
        for r in references(module, text, &known) {
            if r[0] != *first {
                top.entry(first.clone()).or_default().insert(r[0].clone());
            } else if module.len() >= 2
                && r.len() >= module.len()
                && r[..module.len() - 1] == module[..module.len() - 1]
                && r[module.len() - 1] != module[module.len() - 1]
            {
                // Two files of one directory.
                let dir = module[..module.len() - 1].join("::");
                siblings
                    .entry(format!("{dir}::{}", module[module.len() - 1]))
                    .or_default()
                    .insert(format!("{dir}::{}", r[module.len() - 1]));
            }
        }
    }
    (top, siblings)
}

#[test]
fn there_is_no_import_cycle_among_the_modules_of_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (top, siblings) = graphs(&src);
    assert!(
        top.contains_key("vocab") && top.contains_key("reconcile"),
        "{top:?}"
    );
    if let Some(c) = find_cycle(&top) {
        panic!("import cycle among the modules of src/: {}", c.join(" → "));
    }
    if let Some(c) = find_cycle(&siblings) {
        panic!(
            "import cycle among the files of one module: {}",
            c.join(" → ")
        );
    }
}

#[test]
fn the_vocabulary_imports_no_stage() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (top, _) = graphs(&src);
    let uses: Vec<&String> = top["vocab"].iter().filter(|m| *m != "model").collect();
    assert!(uses.is_empty(), "vocab imports {uses:?}");
    for stage in ["provider", "diff", "health"] {
        assert!(!top[stage].contains("plan"), "{stage} imports plan");
    }
}

/// Regression: `use super::{a, b}` and `use crate::{x, y}` named no
/// module, so a cycle through a grouped import went unseen.
#[test]
fn grouped_imports_are_references() {
    let known: BTreeSet<Vec<String>> = [
        vec!["policy".to_string()],
        vec!["policy".to_string(), "check".to_string()],
        vec!["policy".to_string(), "limits".to_string()],
        vec!["state".to_string()],
    ]
    .into();
    let module = vec!["policy".to_string(), "engine".to_string()];
    let refs = references(
        &module,
        "use super::{check, limits::MAX};\nuse crate::{state, policy::check::X};",
        &known,
    );
    assert!(refs.contains(&vec!["policy".to_string(), "check".to_string()]));
    assert!(refs.contains(&vec!["policy".to_string(), "limits".to_string()]));
    assert!(refs.contains(&vec!["state".to_string()]));
}

#[test]
fn the_checker_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(find_cycle(&graph).unwrap(), vec!["a", "b", "c", "a"]);
}
