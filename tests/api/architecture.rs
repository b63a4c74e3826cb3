//! Checks on the source tree that keep the module boundaries of docs/ARCHITECTURE.md true.

use std::path::{Path, PathBuf};

/// Every `.rs` and `.sql` file under `dir` (statements live in both: `query_file!`), with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
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

/// The modules that hold the domain: they are used by the entry points, never the other way round.
const DOMAIN: [&str; 10] =
    ["outbox", "toggles", "callbacks", "clicks", "report", "rollout", "notify", "contacts", "auth", "retention"];

/// The entry points and the composition root.
const ENTRY: [&str; 5] = ["app", "http", "cli", "console", "main"];

/// The top-level modules `text` names through `crate::` paths, including `use crate::{a, b::c}`.
fn crate_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            names.push(item);
        } else {
            names.push(rest.to_owned());
        }
    }
    names
        .iter()
        .map(|n| n.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .filter(|n: &String| !n.is_empty())
        .collect()
}

#[test]
fn domain_modules_import_nothing_from_the_entry_points() {
    let mut offenders = Vec::new();
    for module in DOMAIN {
        let dir = src().join(module);
        let files = if dir.is_dir() {
            sources(&dir)
        } else {
            let path = src().join(format!("{module}.rs"));
            let text = std::fs::read_to_string(&path).unwrap();
            vec![(path, text)]
        };
        for (path, text) in files {
            for name in crate_modules(&text) {
                if ENTRY.contains(&name.as_str()) {
                    offenders.push(format!("{} uses crate::{name}", path.display()));
                }
            }
        }
    }
    offenders.dedup();
    assert!(offenders.is_empty(), "domain modules must not import entry points:\n{}", offenders.join("\n"));
}

#[test]
fn the_import_check_sees_grouped_and_inline_paths() {
    let text = "use crate::{config, http::SEND_EMAIL_PATH};\nlet a = crate::app::Application::build;";
    assert_eq!(crate_modules(text), ["config", "http", "app"]);
}

#[test]
fn handlers_depend_on_the_state_not_on_the_composition_root() {
    let mut offenders = Vec::new();
    for module in ["http", "console"] {
        for (path, text) in sources(&src().join(module)) {
            for name in crate_modules(&text) {
                if ["app", "cli", "main"].contains(&name.as_str()) {
                    offenders.push(format!("{} uses crate::{name}", path.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "http/ and console/ use crate::state, not app or cli:\n{}", offenders.join("\n"));
}

#[test]
fn the_rule_modules_need_no_database() {
    // The lifecycle and the rollout plan rules are unit-tested without PostgreSQL; their statements live
    // beside them (src/outbox/*, src/rollout/storage.rs).
    for module in ["outbox/lifecycle.rs", "rollout/plan.rs"] {
        let text = std::fs::read_to_string(src().join(module)).unwrap();
        assert!(!text.contains("sqlx") && !text.contains("PgPool"), "{module} must not touch the database");
    }
}
