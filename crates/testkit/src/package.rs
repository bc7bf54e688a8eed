//! hv's Debian package for package tests: `$HV_TEST_DEB` when set (`cargo xtask test` builds
//! it first with `cargo xtask deb --profile debug` and hands it over), otherwise built here the
//! same way, from the workspace's debug binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::guest::run;

/// The package to test: `$HV_TEST_DEB`, or `cargo xtask deb --profile debug` run now.
pub fn hv_deb() -> Result<PathBuf> {
    if let Some(deb) = std::env::var_os("HV_TEST_DEB").filter(|v| !v.is_empty()) {
        let deb = PathBuf::from(deb);
        ensure!(deb.is_file(), "HV_TEST_DEB={} is not a file", deb.display());
        return Ok(deb);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .context("testkit is not inside a workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out =
        run(Command::new(cargo)
            .current_dir(root)
            .args(["xtask", "deb", "--profile", "debug"]))
        .context("building hv's package (cargo xtask deb --profile debug)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    ensure!(
        deb.is_file(),
        "cargo xtask deb printed {stdout:?}, which names no package file"
    );
    Ok(deb)
}
