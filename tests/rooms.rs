//! The floors of `src/` (docs/ARCHITECTURE.md, "Rooms"): every `crate::` path of the library's
//! own (non-test) code, room to room, must be an arrow of the room table, and every arrow of
//! the table must be used. A room is a file `src/x.rs` or a folder `src/x/`; `lib.rs` is the
//! crate root, not a room; `tests.rs` files and the inline `#[cfg(test)] mod tests { .. }` that
//! ends a file are test code. The table's order is the floors' order, top floor first: an arrow
//! may only point to a room listed below its own, so no circle and no arrow up can hide in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// `room -> rooms it touches`, in table order, from docs/ARCHITECTURE.md.
fn table(root: &Path) -> Vec<(String, BTreeSet<String>)> {
    let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let section = doc
        .split("\n## Rooms")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a \"## Rooms\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `src/")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let room = room_of_cell(cells[1]);
        let touches = cells
            .last()
            .filter(|c| !c.is_empty())
            .or(cells.get(cells.len() - 2))
            .map(|c| backticked(c))
            .unwrap_or_default();
        rows.push((room, touches));
    }
    assert!(!rows.is_empty(), "no `src/` rows in the Rooms table");
    rows
}

/// `src/rules/` or `src/slot.rs` -> `rules`, `slot`.
fn room_of_cell(cell: &str) -> String {
    let name = cell.trim_matches('`').trim_start_matches("src/");
    name.trim_end_matches('/')
        .trim_end_matches(".rs")
        .to_string()
}

fn backticked(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its trailing inline test module.
fn non_test_code(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// `room -> rooms its code names with crate::`, from the source files.
fn arrows(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if rel == Path::new("lib.rs") || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let room = first.trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(&file).unwrap();
        let code = non_test_code(&text);
        let touched = map.entry(room.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            if code[..at].ends_with('$') {
                continue; // `$crate::` inside a macro: the room's own path
            }
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` lists several rooms.
            if name.is_empty() {
                let list: String = code[at + "crate::".len()..]
                    .chars()
                    .skip(1)
                    .take_while(|&c| c != '}')
                    .collect();
                for item in list.split(',') {
                    let item: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !item.is_empty() && item != room {
                        touched.insert(item);
                    }
                }
            } else if name != room {
                touched.insert(name);
            }
        }
    }
    // Names that are items of the crate root, not rooms (`crate::Error` is `error`'s).
    for touched in map.values_mut() {
        if touched.remove("Error") | touched.remove("ErrorKind") | touched.remove("Result") {
            touched.insert("error".into());
        }
    }
    map
}

#[test]
fn the_code_has_exactly_the_arrows_of_the_room_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = table(root);
    let code = arrows(root);
    let mut problems = Vec::new();
    let listed: BTreeSet<&String> = table.iter().map(|(r, _)| r).collect();
    for room in code.keys() {
        if !listed.contains(room) {
            problems.push(format!("room `src/{room}` is missing from the table"));
        }
    }
    for (floor, (room, touches)) in table.iter().enumerate() {
        let used = code.get(room).cloned().unwrap_or_default();
        for t in used.difference(touches) {
            problems.push(format!(
                "`{room}` imports `{t}`, which the table does not list"
            ));
        }
        for t in touches.difference(&used) {
            problems.push(format!(
                "the table says `{room}` touches `{t}`, but no code does"
            ));
        }
        for t in touches {
            let below = table[floor + 1..].iter().any(|(r, _)| r == t);
            if !below {
                problems.push(format!(
                    "`{room}` touches `{t}`, which is not listed below it (an arrow up or a circle)"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md's room table and src/ disagree:\n  {}",
        problems.join("\n  ")
    );
}
