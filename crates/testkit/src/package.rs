//! hv's Debian package for package tests: `$HV_TEST_DEB` when set (what `cargo xtask test`
//! hands over once `cargo xtask deb` exists), otherwise a STOPGAP package built here with
//! `dpkg-deb` from the `hv` and `hvd` next to the test's hvd binary: the two binaries
//! (debug info stripped), a `Type=notify` unit and the runtime `Depends`. It stands in for the
//! real package until the `deb` branch's `cargo xtask deb` is merged; it is not what users get.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::guest::{run, write_file};

/// The stopgap's runtime dependencies (the Debian test guest has them all preinstalled).
const DEPENDS: &str = "qemu-system-x86, qemu-utils, dnsmasq-base, nftables, acl";

/// The stopgap's unit: hvd says when its API answers; VMs live in their own scopes, so the
/// default `KillMode=control-group` stops only hvd.
const UNIT: &str = "[Unit]
Description=hv virtualization daemon (stopgap unit of the package test)
After=network.target dbus.service
Wants=dbus.service

[Service]
Type=notify
ExecStart=/usr/bin/hvd
Restart=on-failure

[Install]
WantedBy=multi-user.target
";

/// The package to test: `$HV_TEST_DEB`, or a stopgap built in `dir` from the binaries beside
/// `hvd_bin` (`hv` must have been built too: `cargo build -p cli`).
pub fn hv_deb(hvd_bin: &Path, dir: &Path) -> Result<PathBuf> {
    if let Some(deb) = std::env::var_os("HV_TEST_DEB").filter(|v| !v.is_empty()) {
        let deb = PathBuf::from(deb);
        ensure!(deb.is_file(), "HV_TEST_DEB={} is not a file", deb.display());
        return Ok(deb);
    }
    let bin_dir = hvd_bin.parent().context("hvd binary path has no parent")?;
    let hv = bin_dir.join("hv");
    ensure!(
        hv.is_file(),
        "{} is missing: build it first (cargo build -p cli), or set HV_TEST_DEB",
        hv.display()
    );
    let root = dir.join("pkg");
    let usr_bin = root.join("usr/bin");
    fs::create_dir_all(&usr_bin).with_context(|| format!("creating {}", usr_bin.display()))?;
    for (src, name) in [(hvd_bin, "hvd"), (hv.as_path(), "hv")] {
        let dest = usr_bin.join(name);
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(&dest))
        .with_context(|| format!("stripping {}", src.display()))?;
    }
    write_file(&root.join("lib/systemd/system/hvd.service"), 0o644, UNIT)?;
    let control = format!(
        "Package: hv\nVersion: 0.0.0~stopgap\nArchitecture: amd64\nMaintainer: hv developers <hv@localhost>\n\
         Depends: {DEPENDS}\nSection: admin\nPriority: optional\n\
         Description: hv virtualization manager (package-test stopgap)\n"
    );
    write_file(&root.join("DEBIAN/control"), 0o644, &control)?;
    let deb = dir.join("hv_0.0.0~stopgap_amd64.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
        .arg(&root)
        .arg(&deb))?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    Ok(deb)
}
