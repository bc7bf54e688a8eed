//! The browser tests (`e2e/`, issue 11): what they need on the host, the guest files they
//! boot, and running them with `node --test` after the Rust tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the browser tests need: the browser itself, a font for its pages, and Node
/// with npm for `playwright-core` (Debian's node 18 is enough for the pinned version; a newer
/// node already on PATH is kept).
pub const PACKAGES: &[&str] = &["chromium", "fonts-dejavu-core"];

/// The guest files the browser tests boot, as a JSON object (see `e2e/harness.mjs`).
pub fn assets() -> Result<serde_json::Value> {
    let guest = testkit::guest::tiny_guest()?;
    Ok(serde_json::json!({
        "kernel": guest.kernel,
        "initrd": guest.initrd,
        "cmdline": testkit::guest::CMDLINE,
        "ide_flag": testkit::guest::IDE_FLAG,
        "boot_prompt_iso": testkit::media::boot_prompt_iso()?,
        "data_iso": testkit::media::data_iso()?,
        "media_label": testkit::media::MEDIA_LABEL,
    }))
}

/// Installs what the browser tests need (when missing): chromium and its font (apt, without
/// recommends), node and npm (apt, only when no `node` is on PATH), then `npm ci` in `e2e/`.
pub fn deps(root: &Path, installed: impl Fn(&str) -> bool) -> Result<()> {
    let have_node = Command::new("node").arg("--version").output().is_ok();
    let mut missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !have_node {
        missing.extend(["nodejs", "npm"]);
    }
    if !missing.is_empty() {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        let mut update = Command::new("apt-get");
        update
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        crate::run(&mut update)?;
        let mut apt = Command::new("apt-get");
        apt.args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        crate::run(&mut apt)?;
    }
    crate::run(Command::new("npm").current_dir(root.join("e2e")).args([
        "ci",
        "--no-audit",
        "--no-fund",
    ]))
}

/// Runs each `e2e/*.test.mjs` with `node --test`, one file at a time (each boots TCG guests;
/// one file per run also works on node 18, which has no `--test-concurrency`), with the debug
/// `hv`/`hvd` that `cargo test` built and the guest files of [`assets`]. Runs them all, then
/// fails naming those that failed.
pub fn run(root: &Path) -> Result<()> {
    let assets = assets()?.to_string();
    let bin: PathBuf = root.join("target/debug");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("e2e"))
        .context("reading e2e/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let mut cmd = Command::new("node");
        cmd.current_dir(root)
            .arg("--test")
            .arg(file)
            .env("HV_E2E_ASSETS", &assets)
            .env("HV_E2E_BIN", &bin);
        if let Err(e) = crate::run(&mut cmd) {
            eprintln!("{e:#}");
            failed.push(
                file.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    println!(
        "hv browser tests: {} passed, {} failed{}",
        files.len() - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    if !failed.is_empty() {
        bail!(
            "browser tests failed: {}; their screenshots and logs are in target/e2e/",
            failed.join(", ")
        );
    }
    Ok(())
}
