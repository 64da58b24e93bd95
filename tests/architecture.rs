//! The module rules of docs/architecture.md, checked on the source text:
//! no import cycles between the library's top-level modules, the service
//! rooms never reach the command line, Burn stays inside `trial`, and
//! `anyhow` stays in the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The top-level module a file belongs to: `src/foo.rs` and `src/foo/..`
/// are `foo`; `main.rs` and `lib.rs` are themselves.
fn room_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap();
    let first = first.as_os_str().to_str().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// Source text without comments, so a doc comment that mentions a module
/// is not an import.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names of the top-level modules that `prefix` (`crate::` in the library,
/// `batchd::` in the binary) reaches in `code`, `use prefix{a, b::c}`
/// groups included.
fn modules_named(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut at_item_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    if at_item_start && !item.is_empty() {
                        names.insert(std::mem::take(&mut item));
                    }
                    at_item_start = true;
                    item.clear();
                    continue;
                }
                if at_item_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        names.insert(std::mem::take(&mut item));
                        at_item_start = false;
                    }
                }
            }
            if at_item_start && !item.is_empty() {
                names.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

struct Tree {
    /// room → rooms it imports (library rooms only).
    imports: BTreeMap<String, BTreeSet<String>>,
    /// file → its code.
    code: BTreeMap<PathBuf, String>,
    src: PathBuf,
}

fn tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut code = BTreeMap::new();
    for file in files {
        let text = code_of(&std::fs::read_to_string(&file).unwrap());
        let room = room_of(&src, &file);
        let entry = imports.entry(room.clone()).or_default();
        for name in modules_named(&text, "crate::").union(&modules_named(&text, "batchd::")) {
            if *name != room {
                entry.insert(name.clone());
            }
        }
        code.insert(file, text);
    }
    Tree { imports, code, src }
}

/// A cycle through `start`, if there is one.
fn cycle_through(imports: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        imports: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in imports.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(imports, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(imports, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn the_library_modules_import_each_other_without_cycles() {
    let tree = tree();
    let library: BTreeMap<_, _> = tree
        .imports
        .iter()
        .filter(|(room, _)| !["main", "cli"].contains(&room.as_str()))
        .map(|(room, names)| (room.clone(), names.clone()))
        .collect();
    let cycles: Vec<String> = library
        .keys()
        .filter_map(|room| cycle_through(&library, room))
        .map(|cycle| cycle.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_library_module_reaches_the_command_line() {
    let tree = tree();
    for (room, names) in &tree.imports {
        if ["main", "cli"].contains(&room.as_str()) {
            continue;
        }
        assert!(!names.contains("cli"), "{room} imports cli");
    }
    assert!(
        !tree.src.join("lib.rs").exists()
            || !tree.code[&tree.src.join("lib.rs")].contains("mod cli"),
        "the command line is part of the library"
    );
}

#[test]
fn burn_is_used_only_inside_trial_and_anyhow_only_in_the_binary() {
    let tree = tree();
    for (file, code) in &tree.code {
        let room = room_of(&tree.src, file);
        let relative = file.strip_prefix(&tree.src).unwrap().display();
        if code.contains("burn::") || code.contains("burn_cuda::") {
            assert_eq!(room, "trial", "{relative} uses Burn");
        }
        if code.contains("anyhow") {
            assert!(room == "main" || room == "cli", "{relative} uses anyhow");
        }
    }
}

#[test]
fn the_checks_see_imports_in_every_form() {
    let code = "use crate::{config::Config, gpu, policy::{A, B}};\nlet x = crate::units::parse();\nmy_crate::nope;";
    let names = modules_named(code, "crate::");
    let expected: BTreeSet<String> = ["config", "gpu", "policy", "units"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    let mut imports = BTreeMap::new();
    imports.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    imports.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(cycle_through(&imports, "a").is_some());
    imports.get_mut("b").unwrap().clear();
    assert!(cycle_through(&imports, "a").is_none());
}

/// Sibling files of one folder (`super::name` imports) form no cycle: the
/// worker runner and the command runner share `supervise`, not each other.
#[test]
fn sibling_modules_import_each_other_without_cycles() {
    let tree = tree();
    let mut folders: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (file, code) in &tree.code {
        let name = file.file_stem().unwrap().to_str().unwrap();
        if name == "mod" {
            continue;
        }
        let siblings = folders
            .entry(file.parent().unwrap().to_path_buf())
            .or_default();
        let names = modules_named(code, "super::");
        siblings.insert(
            name.to_string(),
            names.into_iter().filter(|n| n != name).collect(),
        );
    }
    let mut cycles = Vec::new();
    for (folder, siblings) in &folders {
        for name in siblings.keys() {
            if let Some(cycle) = cycle_through(siblings, name) {
                cycles.push(format!("{}: {}", folder.display(), cycle.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "sibling cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_trial_parent_and_the_trial_worker_share_only_the_protocol() {
    let tree = tree();
    for (file, code) in &tree.code {
        let relative = file.strip_prefix(&tree.src).unwrap();
        let relative_text = relative.display().to_string();
        if relative.starts_with("trial/parent") {
            assert!(
                !code.contains("trial::worker"),
                "{relative_text} reaches into the worker"
            );
            assert!(!code.contains("burn::"), "{relative_text} uses Burn");
        }
        if relative.starts_with("trial/worker") {
            assert!(
                !code.contains("trial::parent"),
                "{relative_text} reaches into the parent"
            );
        }
    }
}
