//! Checks on the source tree that keep the module boundaries of docs/ARCHITECTURE.md true.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path, text));
            }
        }
    }
    found.sort();
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// True when `text` (lowercased, whitespace collapsed) contains `statement` followed by a
/// character that cannot continue a table name.
fn writes(text: &str, statement: &str) -> bool {
    let text = text.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
    text.match_indices(statement)
        .any(|(at, _)| text[at + statement.len()..].chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_')))
}

#[test]
fn only_the_outbox_writes_notifications_and_their_attempts() {
    let outbox = src().join("outbox");
    let mut offenders = Vec::new();
    for (path, text) in sources(&src()) {
        if path.starts_with(&outbox) {
            continue;
        }
        for table in ["notifications", "notification_attempts"] {
            for verb in ["insert into", "update", "delete from"] {
                if writes(&text, &format!("{verb} {table}")) {
                    offenders.push(format!("{}: {verb} {table}", path.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "only src/outbox/ may write these tables:\n{}", offenders.join("\n"));
}

#[test]
fn the_write_check_sees_a_write() {
    assert!(writes("sqlx::query(\"UPDATE\n   notifications set", "update notifications"));
    assert!(!writes("update notifications_due", "update notifications"));
}
