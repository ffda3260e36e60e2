//! No module of the crate imports one that imports it back: each module's
//! `crate::`, `super::` and `self::` paths (outside comments and its
//! `#[cfg(test)] mod tests`) are resolved to the module files they name,
//! and no two modules may name each other (a parent and its children
//! excepted: a parent declares its children and they use its items).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `a/b` for `src/a/b.rs` and `src/a/b/mod.rs`; `""` for `lib.rs`.
fn module_files(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('\\', "/");
                if let Some(parent) = name.strip_suffix("/mod") {
                    name = parent.to_owned();
                }
                if name == "lib" || name == "main" {
                    name = String::new();
                }
                out.insert(name, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The module a path used in module `cur` names: the longest prefix of it
/// that is a module file.
fn resolve(mods: &BTreeMap<String, PathBuf>, cur: &str, path: &str) -> Option<String> {
    let mut parts = path.split("::");
    let mut base: Vec<&str> = match parts.next()? {
        "crate" => Vec::new(),
        "self" => cur.split('/').filter(|s| !s.is_empty()).collect(),
        "super" => {
            let mut b: Vec<&str> = cur.split('/').filter(|s| !s.is_empty()).collect();
            b.pop();
            b
        }
        _ => return None,
    };
    let mut rest: Vec<&str> = parts.collect();
    while rest.first() == Some(&"super") {
        base.pop();
        rest.remove(0);
    }
    let mut best = mods.contains_key(&base.join("/")).then(|| base.join("/"));
    for p in rest {
        base.push(p);
        let name = base.join("/");
        if mods.contains_key(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best
}

/// The paths a source names, outside comments and its unit tests.
fn paths(text: &str) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let bytes = line.as_bytes();
        for start in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(i) = line[from..].find(start) {
                let at = from + i;
                from = at + start.len();
                if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                    continue;
                }
                let end = line[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map_or(line.len(), |e| at + e);
                out.push(line[at..end].trim_end_matches(':').to_owned());
            }
        }
    }
    out
}

/// Module → (module it uses → the path naming it).
type Uses = BTreeMap<String, BTreeMap<String, String>>;

/// Pairs of modules (not parent and child) using each other.
fn circles(uses: &Uses) -> Vec<String> {
    let mut out: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for (a, targets) in uses {
        for (b, via) in targets {
            if b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/")) {
                continue;
            }
            if let Some(back) = uses.get(b).and_then(|t| t.get(a)) {
                let pair = if a < b { (a, b) } else { (b, a) };
                out.entry((pair.0.as_str(), pair.1.as_str()))
                    .or_insert_with(|| format!("{a} <-> {b} ({a}: {via}; {b}: {back})"));
            }
        }
    }
    out.into_values().collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = module_files(&src);
    assert!(mods.len() > 100, "{} modules found", mods.len());
    let mut uses = Uses::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        for p in paths(&text) {
            let Some(t) = resolve(&mods, m, &p) else {
                continue;
            };
            let related = t.is_empty() || t == *m || m.starts_with(&format!("{t}/"));
            if !related {
                uses.entry(m.clone()).or_default().entry(t).or_insert(p);
            }
        }
    }
    let found = circles(&uses);
    assert!(
        found.is_empty(),
        "modules importing each other:\n{}",
        found.join("\n")
    );
    // The checker sees a circle when there is one.
    let mut probe = uses.clone();
    probe
        .entry("model/train".into())
        .or_default()
        .insert("model/score".into(), "super::score".into());
    probe
        .entry("model/score".into())
        .or_default()
        .insert("model/train".into(), "super::train".into());
    assert_eq!(circles(&probe).len(), 1);
    assert_eq!(
        resolve(&mods, "model/score", "super::train::Dataset").as_deref(),
        Some("model/train")
    );
    assert_eq!(
        resolve(
            &mods,
            "stream/detect",
            "crate::sinks::postgres::PgCaseStore"
        )
        .as_deref(),
        Some("sinks/postgres")
    );
    assert_eq!(
        paths("use super::x::Y;\n// use crate::a::b;\nlet v = crate::tick::now_us();"),
        ["super::x::Y", "crate::tick::now_us"]
    );
}
