//! The shape of node/src, checked: every top-level file or folder is a room, the rooms' imports form no
//! circle (a room imports only rooms below it), no source file is over 800 lines, and every room opens
//! with a comment saying what it owns.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

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

/// The rooms of node/src: top-level `.rs` files (without the extension) and folders.
fn rooms() -> BTreeMap<String, Vec<PathBuf>> {
    let mut rooms = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.clone());
        } else {
            continue;
        }
        rooms.insert(name, files);
    }
    rooms
}

/// The code of a file without comments (doc links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rooms named after `prefix` (`crate::` in the library, `fleetmesh_node::` in the binary) in `text`.
fn referenced(text: &str, prefix: &str, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rooms.contains(&name) {
            found.insert(name);
        }
    }
    found
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let rooms = rooms();
    let names: BTreeSet<String> = rooms.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (room, files) in &rooms {
        let mut deps = BTreeSet::new();
        for f in files {
            let text = code(&std::fs::read_to_string(f).unwrap());
            deps.extend(referenced(&text, "crate::", &names));
            deps.extend(referenced(&text, "fleetmesh_node::", &names));
        }
        deps.remove(room);
        graph.insert(room.clone(), deps);
    }
    graph
}

/// A circle in `graph`, if there is one, as the rooms along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut c = path[start..].to_vec();
                    c.push(next.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_rooms_of_node_src_import_each_other_without_a_circle() {
    let graph = imports();
    if let Some(c) = circle(&graph) {
        panic!("import circle between rooms of node/src: {}", c.join(" -> "));
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_string()].into());
    graph.insert("b".into(), ["c".to_string()].into());
    graph.insert("c".into(), ["a".to_string()].into());
    assert_eq!(circle(&graph).unwrap(), vec!["a", "b", "c", "a"]);
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(circle(&graph), None);
}

#[test]
fn no_source_file_of_node_src_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn every_room_opens_with_a_comment_saying_what_it_owns() {
    for (room, files) in rooms() {
        let opening = files
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == "mod.rs") || files.len() == 1)
            .unwrap_or_else(|| panic!("room {room} has no mod.rs"));
        let text = std::fs::read_to_string(opening).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "room {room} ({}) opens without a //! comment",
            opening.display()
        );
    }
}
