//! The README's code blocks are files of the repository, so a snippet can never again drift
//! from code that CI compiles and runs (a snippet that skipped a status did, for a whole
//! release).
//!
//! Every fenced block in README.md sits directly under a marker that says where it comes from:
//!
//! - `<!-- file: examples/host_group.c -->`: the block is that whole file;
//! - `<!-- region: examples/gpu_split_phase.cpp gpu -->`: the block is the lines between the
//!   lines holding `[readme:gpu]` and `[/readme:gpu]` in that file, their common indentation
//!   removed (a region of `scripts/test.sh` or `scripts/demo.sh` is a command CI runs);
//! - `<!-- commands -->`: every line runs an executable file of the repository (the quick
//!   start: the scripts must exist).
//!
//! A block without a marker, or one that differs from its source, fails the test with the
//! README line. The README also carries no commit id and no date: dated results and proofs
//! live in BENCHMARKS.md, so the README never needs a commit after a change.

use std::fs;
use std::path::Path;

/// A fenced block of the README: its first line (1-based), the line above it, its body.
struct Block {
    line: usize,
    marker: String,
    body: String,
}

/// The fenced blocks of `markdown`, in order.
fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("```") {
            i += 1;
            continue;
        }
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push_str(lines[i]);
            body.push('\n');
            i += 1;
        }
        found.push(Block {
            line: start + 1,
            marker: if start > 0 {
                lines[start - 1].trim().to_string()
            } else {
                String::new()
            },
            body,
        });
        i += 1;
    }
    found
}

/// The lines of `text` between the lines holding `[readme:NAME]` and `[/readme:NAME]`, their
/// common indentation removed.
fn region(text: &str, name: &str) -> Result<String, String> {
    let open = format!("[readme:{name}]");
    let close = format!("[/readme:{name}]");
    let lines: Vec<&str> = text.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.contains(&open))
        .ok_or(format!("no line holds {open}"))?;
    let end = lines[begin..]
        .iter()
        .position(|l| l.contains(&close))
        .map(|n| begin + n)
        .ok_or(format!("no line holds {close} after {open}"))?;
    let inner = &lines[begin + 1..end];
    let indent = inner
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    Ok(inner
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("").trim_end()))
        .collect())
}

/// What the checks need from the repository (a fake one in the tests of the checker).
trait Repo {
    /// The text of the file at `path`, relative to the repository root.
    fn read(&self, path: &str) -> Option<String>;
    /// Whether `path` is an executable file of the repository.
    fn executable(&self, path: &str) -> bool;
}

/// The repository this test runs in.
struct Checkout;

impl Repo for Checkout {
    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).ok()
    }

    fn executable(&self, path: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
}

/// Why `block` does not match its marker, if it does not.
fn check_block(block: &Block, repo: &dyn Repo) -> Option<String> {
    let at = format!("README.md:{}", block.line);
    let marker = block
        .marker
        .strip_prefix("<!--")
        .and_then(|m| m.strip_suffix("-->"))
        .map(str::trim);
    let Some(marker) = marker else {
        return Some(format!(
            "{at}: a code block without a marker on the line above it \
             (<!-- file: PATH -->, <!-- region: PATH NAME --> or <!-- commands -->)"
        ));
    };
    let (kind, arg) = marker.split_once(':').unwrap_or((marker, ""));
    let words: Vec<&str> = arg.split_whitespace().collect();
    let expected = match (kind, words.as_slice()) {
        ("file", [path]) => repo.read(path).ok_or(format!("{path} does not exist")),
        ("region", [path, name]) => repo
            .read(path)
            .ok_or(format!("{path} does not exist"))
            .and_then(|text| region(&text, name).map_err(|e| format!("{path}: {e}"))),
        ("commands", []) => return check_commands(&at, &block.body, repo),
        _ => Err(format!("unknown marker <!-- {marker} -->")),
    };
    match expected {
        Err(e) => Some(format!("{at}: {e}")),
        Ok(text) if text != block.body => Some(format!(
            "{at}: the block differs from <!-- {marker} -->: copy it into the README again\n\
             --- README\n{}--- {marker}\n{text}",
            block.body
        )),
        Ok(_) => None,
    }
}

/// Why a `commands` block does not run executable files of the repository, if it does not.
fn check_commands(at: &str, body: &str, repo: &dyn Repo) -> Option<String> {
    let mut commands = 0;
    for line in body.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        let Some(program) = code.split_whitespace().next() else {
            continue;
        };
        if !repo.executable(program) {
            return Some(format!(
                "{at}: `{program}` is not an executable file of the repository"
            ));
        }
        commands += 1;
    }
    (commands == 0).then(|| format!("{at}: a commands block without a command"))
}

/// The words of `text` that look like commit ids (7 to 40 hex digits, digits and letters).
fn commit_ids(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| {
            (7..=40).contains(&w.len())
                && w.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars().any(|c| c.is_ascii_alphabetic())
        })
        .map(str::to_string)
        .collect()
}

/// The dates (`YYYY-MM-DD`) in `text`.
fn dates(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (0..b.len().saturating_sub(9))
        .filter(|&i| digits(i..i + 4) && b[i + 4] == b'-' && digits(i + 5..i + 7))
        .filter(|&i| b[i + 7] == b'-' && digits(i + 8..i + 10))
        .map(|i| text[i..i + 10].to_string())
        .collect()
}

/// Every problem of `readme`.
fn problems(readme: &str, repo: &dyn Repo) -> Vec<String> {
    let mut found: Vec<String> = blocks(readme)
        .iter()
        .filter_map(|b| check_block(b, repo))
        .collect();
    for id in commit_ids(readme).into_iter().chain(dates(readme)) {
        found.push(format!(
            "README.md holds `{id}`, a commit id or a date: dated results and proofs belong \
             in BENCHMARKS.md"
        ));
    }
    found
}

#[test]
fn every_readme_block_is_a_file_of_the_repository() {
    let readme = Checkout.read("README.md").expect("README.md");
    assert!(
        blocks(&readme).len() >= 3,
        "README.md should show its examples"
    );
    let found = problems(&readme, &Checkout);
    assert!(found.is_empty(), "\n{}", found.join("\n\n"));
}

#[test]
fn ci_runs_exactly_scripts_test_sh() {
    let run = Checkout.read(".ci/run").expect(".ci/run");
    let commands: Vec<&str> = run
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('#')
                && !l.starts_with("set ")
                && !l.starts_with("export ")
        })
        .collect();
    assert_eq!(
        commands,
        ["exec bash \"$(dirname \"${BASH_SOURCE[0]}\")/../scripts/test.sh\" \"$@\""],
        ".ci/run must run scripts/test.sh and nothing else"
    );
    assert!(Checkout.executable("scripts/test.sh"));
}

/// A repository of a few files, for the checker's own tests.
struct Fake(&'static [(&'static str, &'static str)]);

impl Repo for Fake {
    fn read(&self, path: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| t.to_string())
    }

    fn executable(&self, path: &str) -> bool {
        path.starts_with("scripts/") && self.read(path).is_some()
    }
}

const FAKE: Fake = Fake(&[
    ("examples/a.c", "int main(void) {\n  return 0;\n}\n"),
    (
        "examples/b.cpp",
        "x\n  // [readme:part]\n  if (s != DP_OK) return 1;\n    go();\n  // [/readme:part]\n",
    ),
    ("scripts/demo.sh", "#!/bin/sh\n"),
]);

#[test]
fn a_block_equal_to_its_file_or_region_passes() {
    let readme = "text\n<!-- file: examples/a.c -->\n```c\nint main(void) {\n  return 0;\n}\n```\n\
                  <!-- region: examples/b.cpp part -->\n```cpp\nif (s != DP_OK) return 1;\n  go();\n```\n\
                  <!-- commands -->\n```sh\nscripts/demo.sh   # the demo\n```\n";
    assert_eq!(problems(readme, &FAKE), Vec::<String>::new());
}

#[test]
fn a_block_that_drifted_from_its_file_fails() {
    // The snippet lost its status check: the README no longer shows what CI compiles.
    let readme = "<!-- region: examples/b.cpp part -->\n```cpp\n  go();\n```\n";
    let found = problems(readme, &FAKE);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("README.md:2: the block differs"),
        "{found:?}"
    );
}

#[test]
fn a_block_without_a_marker_or_source_fails() {
    let cases = [
        "```c\nint x;\n```\n",
        "<!-- file: examples/missing.c -->\n```c\nint x;\n```\n",
        "<!-- region: examples/b.cpp other -->\n```c\nint x;\n```\n",
        "<!-- snippet -->\n```c\nint x;\n```\n",
    ];
    for readme in cases {
        assert_eq!(problems(readme, &FAKE).len(), 1, "{readme}");
    }
}

#[test]
fn commands_must_be_scripts_of_the_repository() {
    assert_eq!(
        problems("<!-- commands -->\n```sh\nscripts/demo.sh\n```\n", &FAKE).len(),
        0
    );
    for body in ["scripts/gone.sh\n", "make demo\n", "# only a comment\n"] {
        let readme = format!("<!-- commands -->\n```sh\n{body}```\n");
        assert_eq!(problems(&readme, &FAKE).len(), 1, "{body}");
    }
}

#[test]
fn commit_ids_and_dates_are_found_and_versions_are_not() {
    let text = "proof at `ef2619d` (0.2.0, libdpcoord.so.0.3, 1.05x, deadline) on 2026-12-01";
    assert_eq!(commit_ids(text), ["ef2619d"]);
    assert_eq!(dates(text), ["2026-12-01"]);
    assert_eq!(problems(text, &FAKE).len(), 2);
    assert!(dates("NCCL 2.21.5, 20261201, 1024-byte").is_empty());
}
