//! The documents' claims point at tests that exist: every `file.rs::name` in README.md,
//! RELIABILITY.md and BENCHMARKS.md names a file of this repository (as written, or under
//! `tests/` or `src/`) that defines a `fn name` or a `mod name`. A test renamed or removed
//! without its row is caught here, not by a reader.

use std::path::Path;

/// Every `path.rs::name` in `text`: (path, name).
fn references(text: &str) -> Vec<(String, String)> {
    let path_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_/".contains(c);
    let name_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out = Vec::new();
    for (at, _) in text.match_indices(".rs::") {
        let before = &text[..at];
        let start = before
            .char_indices()
            .rev()
            .take_while(|&(_, c)| path_char(c))
            .last()
            .map_or(at, |(i, _)| i);
        let after = &text[at + ".rs::".len()..];
        let end = after.find(|c: char| !name_char(c)).unwrap_or(after.len());
        if start < at && end > 0 {
            out.push((format!("{}.rs", &text[start..at]), after[..end].to_string()));
        }
    }
    out
}

/// Whether `source` defines `name` as a function or a module.
fn defines(source: &str, name: &str) -> bool {
    ["fn ", "mod "].iter().any(|kw| {
        source.match_indices(&format!("{kw}{name}")).any(|(i, m)| {
            source[i + m.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
        })
    })
}

#[test]
fn every_test_the_documents_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    let mut missing = Vec::new();
    for doc in ["README.md", "RELIABILITY.md", "BENCHMARKS.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (path, name) in references(&text) {
            seen += 1;
            let file = [path.clone(), format!("tests/{path}"), format!("src/{path}")]
                .into_iter()
                .map(|p| root.join(p))
                .find(|p| p.is_file());
            let found = file.is_some_and(|f| defines(&std::fs::read_to_string(f).unwrap(), &name));
            if !found {
                missing.push(format!("{doc}: {path}::{name}"));
            }
        }
    }
    assert!(
        seen > 50,
        "only {seen} references found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "named in the documents but not found:\n{}",
        missing.join("\n")
    );
}

#[test]
fn references_are_read_whole_and_checked_by_name() {
    let refs =
        references("see `tests/live.rs::a_gap` and kick/mod.rs::tests, not x.rs:: or .rs::y");
    assert_eq!(
        refs,
        [
            ("tests/live.rs".to_string(), "a_gap".to_string()),
            ("kick/mod.rs".to_string(), "tests".to_string()),
        ]
    );
    assert!(defines("async fn a_gap() {}", "a_gap"));
    assert!(!defines("fn a_gap_longer() {}", "a_gap"));
    assert!(defines("mod tests {", "tests"));
}
