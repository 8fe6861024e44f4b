//! The layering of ARCHITECTURE.md, checked on the source: every `crate::…` / `super::…` path in a library file
//! points to its own layer or one below, and no two files import each other, directly or around a loop.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of the library, lowest layer first. A file may use a module of a lower layer, or files
/// of its own top-level module; never a module of its own layer or above.
const LAYERS: &[(&str, u32)] = &[
    ("rng", 0),
    ("kernels", 1),
    ("output", 1),
    ("input", 1),
    ("progress", 1),
    ("distributed", 1),
    ("network", 2),
    ("tokenizer", 3),
    ("formats", 4),
    ("data", 5),
    ("score", 6),
    ("train", 7),
    ("generate", 7),
    ("metrics", 7),
];

fn layer(top: &str) -> u32 {
    LAYERS.iter().find(|(m, _)| *m == top).unwrap_or_else(|| panic!("module {top} is missing from LAYERS")).1
}

/// Module path of a file under src/: src/network/lora.rs → ["network", "lora"]; src/formats/gguf/mod.rs →
/// ["formats", "gguf"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The longest prefix of `path` that names a library file, as that file's module path.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|p| modules.contains(p))
}

/// Paths like `crate::a::b` and `super::x::y` in the text (comments included: a doc link that points upward is
/// as misleading as an import), lower-case segments only (types and functions end the path).
fn paths(text: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = vec![];
    for (root, is_crate) in [("crate::", true), ("super::", false)] {
        let mut rest = text;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path (`super::super::`, `pub(crate)`) or a word
            }
            let mut segs = vec![];
            for s in rest.split("::") {
                let ident: String =
                    s.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
                if ident.is_empty() {
                    break;
                }
                let whole = ident.len() == s.len();
                segs.push(ident);
                if !whole {
                    break;
                }
            }
            out.push((is_crate, segs));
        }
    }
    out
}

#[test]
fn imports_point_down_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    // The binary (main.rs, cli/) sits above everything and is not part of the library's graph.
    files.retain(|f| {
        let m = module_of(&src, f);
        !(m == ["main"] || m.first().is_some_and(|t| t == "cli") || m == ["lib"])
    });
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut wrong = vec![];
    for f in &files {
        let me = module_of(&src, f);
        let is_dir_module = f.file_name().is_some_and(|n| n == "mod.rs");
        let text = std::fs::read_to_string(f).unwrap();
        // `#[cfg(test)] mod tests` blocks may use their own file through `super::`; they start at the marker.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (is_crate, segs) in paths(code) {
            let full: Vec<String> = if is_crate {
                segs
            } else {
                let parent = if is_dir_module { &me[..] } else { &me[..me.len() - 1] };
                parent.iter().cloned().chain(segs).collect()
            };
            let Some(target) = resolve(&full, &modules) else { continue };
            if target == me || me.starts_with(&target) {
                continue; // itself, or its own parent module (mod.rs holds shared helpers of its children)
            }
            if target[0] != me[0] && layer(&target[0]) >= layer(&me[0]) {
                wrong.push(format!(
                    "{} uses {} (layer {} ≥ {})",
                    me.join("::"),
                    target.join("::"),
                    layer(&target[0]),
                    layer(&me[0])
                ));
            }
            edges.entry(me.clone()).or_default().insert(target);
        }
    }
    assert!(wrong.is_empty(), "imports that point sideways or up:\n{}", wrong.join("\n"));

    // Depth-first search for a cycle among files.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(m) {
            Some(1) => {
                let at = stack.iter().position(|s| s == m).unwrap();
                return Some(stack[at..].iter().cloned().chain([m.clone()]).collect());
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for t in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut vec![]) {
            let names: Vec<String> = cycle.iter().map(|c| c.join("::")).collect();
            panic!("import cycle: {}", names.join(" → "));
        }
    }
}

#[test]
fn the_checker_sees_paths() {
    let p = paths("use crate::network::lora::{Lora, LoraActs};\nuse super::records::Row; x = crate::rng::mix(1);");
    assert_eq!(
        p,
        vec![
            (true, vec!["network".into(), "lora".into()]),
            (true, vec!["rng".into(), "mix".into()]),
            (false, vec!["records".into()]),
        ]
    );
}
