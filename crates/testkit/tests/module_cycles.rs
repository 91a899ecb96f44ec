//! The top-level modules of each crate form no cycle (issue 11 §2: the server had
//! settings → admission → workers → invoke → metrics → listen → settings). A dependency is a
//! `crate::name` path outside comments and outside a file's `#[cfg(test)] mod tests`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// Identifiers after `crate::`, including each name of `crate::{a, b::c}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for part in group.split(',') {
                out.insert(ident(part.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or("")
        .to_owned();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut mods = BTreeMap::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if p.extension().is_some_and(|x| x == "rs") && !["lib", "main"].contains(&stem) {
            let mut files = vec![p.clone()];
            let sub = src.join(stem);
            if sub.is_dir() {
                rs_files(&sub, &mut files);
            }
            mods.insert(stem.to_owned(), files);
        }
    }
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    mods.into_iter()
        .map(|(m, files)| {
            let deps = files
                .iter()
                .flat_map(|f| crate_refs(&code_of(f)))
                .filter(|d| *d != m && names.contains(d))
                .collect();
            (m, deps)
        })
        .collect()
}

/// A cycle as a path `a → b → … → a`, if any.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == v) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(v.to_owned());
            return Some(cycle);
        }
        if done.contains(v) {
            return None;
        }
        stack.push(v.to_owned());
        for w in g.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(v.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|v| visit(v, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_module_cycles_in_any_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for e in std::fs::read_dir(&crates).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let g = graph(&src);
        if let Some(c) = find_cycle(&g) {
            panic!("module cycle in {}: {}", src.display(), c.join(" → "));
        }
        checked += 1;
    }
    assert!(
        checked >= 7,
        "only {checked} crates found under {}",
        crates.display()
    );
}

#[test]
fn the_check_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("settings", "admission"),
        ("admission", "workers"),
        ("workers", "settings"),
        ("metrics", "workers"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), BTreeSet::from([b.to_owned()])))
    .collect();
    let c = find_cycle(&g).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
    assert_eq!(
        crate_refs("use crate::{a, b::c};\nlet x = crate::d::e;"),
        BTreeSet::from(["a".into(), "b".into(), "d".into()])
    );
}
