//! Repository policy, checked as a test: the crate dependency rules of STYLE.md, the one
//! place allowed to spawn processes, `//!` docs on every crate root, no `unwrap()` on daemon
//! paths, and file sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// For each crate, the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("cidata", &["model"]),
    ("auth", &[]),
    ("api", &["model"]),
    ("qemu-argv", &["model"]),
    ("qmp", &[]),
    ("kvm", &[]),
    ("host-exec", &[]),
    ("host-probe", &["api", "host-exec"]),
    ("fdcopy", &[]),
    ("host-storage", &["model", "host-exec", "fdcopy"]),
    ("host-net", &["model", "host-exec"]),
    (
        "engine",
        &[
            "api",
            "auth",
            "model",
            "cidata",
            "qemu-argv",
            "qmp",
            "kvm",
            "host-exec",
            "host-probe",
            "host-storage",
            "host-net",
        ],
    ),
    (
        "daemon",
        // client: a migration's source talks to the target hvd as its HTTPS client.
        &["api", "auth", "model", "engine", "fdcopy", "kvm", "client"],
    ),
    ("client", &["api", "model", "fdcopy"]),
    ("libvirt-xml", &["model"]),
    ("cli", &["api", "model", "client", "libvirt-xml"]),
    ("testkit", &["api", "model", "client"]),
    ("bench", &["api", "model", "client", "testkit"]),
    ("xtask", &["testkit"]),
];

/// Files that may use `std::process::Command` besides host-exec: test and build automation,
/// and the CLI starting the user's $EDITOR.
const MAY_SPAWN: &[&str] = &[
    "crates/testkit/",
    "crates/bench/",
    "xtask/",
    "crates/cli/src/edit.rs",
];

/// Crates whose non-test code must not `unwrap()`.
const NO_UNWRAP: &[&str] = &[
    "crates/auth/src/",
    "crates/engine/src/",
    "crates/daemon/src/",
    "crates/qmp/src/",
    "crates/host-exec/src/",
    "crates/host-net/src/",
    "crates/host-storage/src/",
];

const MAX_LINES: usize = 1500;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && name != "target" && !name.starts_with('.') && !name.starts_with("target") {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The part of a file before its `#[cfg(test)]` module.
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]")
        .map(|i| &text[..i])
        .unwrap_or(text)
}

pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .flatten()
        .map(|e| e.path().join("Cargo.toml"))
        .collect();
    manifests.push(root.join("xtask/Cargo.toml"));
    let workspace: Vec<String> = allowed.keys().map(|s| s.to_string()).collect();
    for m in manifests.iter().filter(|m| m.exists()) {
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(m)?)?;
        let name = doc["package"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some(ok) = allowed.get(name.as_str()) else {
            problems.push(format!(
                "{}: crate {name:?} has no entry in tidy's dependency rules",
                m.display()
            ));
            continue;
        };
        if let Some(deps) = doc.get("dependencies").and_then(|d| d.as_table()) {
            for dep in deps.keys().filter(|d| workspace.contains(d)) {
                if !ok.contains(&dep.as_str()) {
                    problems.push(format!(
                        "{name} depends on {dep}, which STYLE.md's dependency rules forbid"
                    ));
                }
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("xtask"), &mut files);
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        let text = std::fs::read_to_string(&f)?;
        let body = non_test(&text);
        let is_test_file = rel.contains("/tests/");
        let spawns = body.contains("std::process::Command")
            || body.contains("process::Command::new")
            || body.contains("tokio::process::Command");
        let may_spawn = is_test_file
            || MAY_SPAWN.iter().any(|p| rel.starts_with(p))
            || rel.starts_with("crates/host-exec/");
        if spawns && !may_spawn {
            problems.push(format!("{rel}: only host-exec starts processes"));
        }
        if (rel.ends_with("src/lib.rs") || rel.ends_with("src/main.rs"))
            && !text.trim_start().starts_with("//!")
        {
            problems.push(format!(
                "{rel}: a crate root opens with a //! doc comment explaining its job"
            ));
        }
        if NO_UNWRAP.iter().any(|p| rel.starts_with(p)) && body.contains(".unwrap()") {
            problems.push(format!(
                "{rel}: no unwrap() on daemon paths; handle or propagate the error"
            ));
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{rel}: {lines} lines; split files over {MAX_LINES}"
            ));
        }
        if body.contains("cfg!(test)") {
            problems.push(format!("{rel}: no cfg!(test) switches in production code"));
        }
    }
    for doc in ["README.md", "ARCHITECTURE.md"] {
        if !root.join(doc).exists() {
            problems.push(format!("{doc} is missing"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    #[test]
    fn repository_follows_the_house_rules() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let problems = super::check(&root).unwrap();
        assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
    }
}
