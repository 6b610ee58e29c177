//! The shape of the code, checked: the files of `wasmwire-runtime` import one way only
//! (no cycle between files), and the crates depend on each other in the order the README's
//! Design section gives. A wrong-way import between crates does not compile; between the
//! files of one crate, this test is what stops it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn host() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host")
}

/// Every `.rs` file under `dir`, by module name: `instance` for `instance.rs`, `fuzz` for
/// `fuzz/mod.rs`, `fuzz` again for the files of `fuzz/` (a folder module is one node).
fn modules(dir: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut text = String::new();
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "rs") {
                    text.push_str(&std::fs::read_to_string(&f).unwrap());
                }
            }
            out.entry(name).or_default().push_str(&text);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.entry(name).or_default().push_str(&text);
        }
    }
    out
}

/// The code of a file without its tests and comments (a doc link is not an import).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sibling modules a module's code names, as `crate::m`, `super::m` or `m::` at the
/// start of a path inside a `use crate::{…}`/`use super::{…}` group.
fn imports(text: &str, names: &BTreeSet<String>, me: &str) -> BTreeSet<String> {
    let text = code(text);
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let mut heads = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                heads.extend(group.split(',').map(|p| p.trim()));
            } else {
                heads.push(rest);
            }
            for head in heads {
                let name: String = head
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != me && names.contains(&name) {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in &graph[node] {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = path.iter().position(|n| n == next).unwrap();
                    let mut c = path[from..].to_vec();
                    c.push(next.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str())
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_runtime_crates_files_import_one_way_only() {
    let files = modules(&host().join("crates/runtime/src"));
    // `lib.rs` is the index: it declares the modules and re-exports; no file imports it.
    let names: BTreeSet<String> = files.keys().filter(|n| *n != "lib").cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = names
        .iter()
        .map(|n| (n.clone(), imports(&files[n], &names, n)))
        .collect();
    for (n, deps) in &graph {
        println!(
            "{n:>14} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    // Items re-exported at the crate root are not imported from there inside the crate:
    // `crate::Name` would hide which file it comes from (and an edge back to the index).
    for (n, text) in &files {
        if n == "lib" {
            continue;
        }
        let text = code(text);
        for (at, _) in text.match_indices("crate::") {
            let next = text[at + 7..].chars().next().unwrap_or(' ');
            assert!(
                !next.is_ascii_uppercase(),
                "{n} imports an item through the crate root: {}",
                &text[at..(at + 40).min(text.len())]
            );
        }
    }
    assert_eq!(cycle(&graph), None, "a cycle between the runtime's files");
    // And it finds one when there is one.
    let mut bent = graph.clone();
    bent.get_mut("call").unwrap().insert("directory".into());
    assert!(cycle(&bent).is_some());
}

#[test]
fn each_crate_depends_only_on_the_crates_below_it() {
    // From the bottom; a crate may use only those before it.
    let order = ["store", "wire", "manifest", "broker", "runtime", "net"];
    for (i, name) in order.iter().enumerate() {
        let toml =
            std::fs::read_to_string(host().join("crates").join(name).join("Cargo.toml")).unwrap();
        for (j, other) in order.iter().enumerate() {
            let uses = toml.contains(&format!("wasmwire-{other}"));
            if j >= i && *other != *name {
                assert!(
                    !uses,
                    "wasmwire-{name} depends on wasmwire-{other}, above it"
                );
            }
        }
        let toml_deps = toml.split("[dependencies]").nth(1).unwrap_or("");
        assert!(
            !toml_deps.contains("anyhow"),
            "wasmwire-{name} uses anyhow: only the binary does"
        );
    }
}
