//! The installer CD for the classic "install from CD onto an empty disk, then boot from the disk"
//! flow: a hybrid BIOS-bootable ISO (isolinux) carrying the tiny guest's kernel and initrd
//! ([`crate::guest`]), built from Debian packages (`apt-get download`, never installed on the
//! host; `xorriso` runs on the host from its extracted packages).
//!
//! Booted with `-cdrom ISO -boot order=dc`, isolinux starts the default entry at once (no
//! prompt) with the guest's [`CMDLINE`] plus `hv.install=1`. The guest's init then loads the IDE
//! and CD drivers, mounts the CD and installs onto the first disk (virtio `vda`, else `sda`): one
//! active DOS partition with ext2 (extlinux 6.04 cannot boot ext4 with the `64bit` feature),
//! kernel and initrd in `/boot`, extlinux (run from the CD with the CD's own libc6 loader) and
//! syslinux `mbr.bin`. It prints [`INSTALL_DONE_MARKER`] and powers off (`poweroff -f`, so QEMU
//! exits): about 8–11 s under TCG (about 6 s of it is SeaBIOS and isolinux reading the 16 MB
//! of kernel and initrd from the CD). The CD can sit on IDE (`ide.1` on pc) or virtio-scsi (q35).
//!
//! The installed disk, booted with `-boot order=c` (no CD, or an empty drive), runs the same guest
//! with `hv.from=disk` (and [`crate::guest::IDE_FLAG`] when it was installed on an `sd` disk):
//! init prints [`BOOTED_FROM_DISK_MARKER`] after the acpid marker and before the `HV-DISK` lines,
//! [`crate::guest::READY_MARKER`] and the prompt. Under TCG that takes about 3.5–5 s from a
//! virtio disk (about as long as a `-kernel` boot) and 6–8.5 s from an IDE disk (the BIOS reads
//! IDE by PIO).
//!
//! The installer only writes to a blank disk. If the first MiB of the disk is not all zeros (an
//! installed system, a partition table, a filesystem), it writes nothing, prints
//! [`INSTALL_SKIPPED_MARKER`] and powers off; so booting the CD again after an install (a CD
//! left in the drive with `order=dc`) powers off instead of reinstalling: eject the CD or boot
//! with `order=c`. Any failure prints [`INSTALL_FAILED_MARKER`] with what failed, and powers off.
//!
//! The ISO lives in `<cache>/iso-<key>/installer.iso` (the cache dir of [`crate::guest`]), where
//! `<key>` hashes the tiny guest's own key, the isolinux configuration, the resolved package
//! versions and [`BUILDER_VERSION`]. Builds serialize on the same `flock` as the tiny guest's,
//! run in a temp dir and are renamed into place (about 4 s and 6 MB of downloads on top of the
//! guest); a cache hit takes a few milliseconds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::guest::{self, TinyGuest, CMDLINE};

/// A built installer CD: boot it with `-cdrom iso -boot order=dc` and an empty disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerIso {
    pub iso: PathBuf,
}

/// Printed by the installer after a successful install, just before it powers off.
pub const INSTALL_DONE_MARKER: &str = "HV-INSTALL-DONE";
/// Printed (as `HV-INSTALL-SKIPPED /dev/vda is not blank`) instead of installing when the disk's
/// first MiB is not all zeros; the installer then powers off without writing anything.
pub const INSTALL_SKIPPED_MARKER: &str = "HV-INSTALL-SKIPPED";
/// Printed (as `HV-INSTALL-FAILED <what>`) when a step fails; the installer then powers off.
pub const INSTALL_FAILED_MARKER: &str = "HV-INSTALL-FAILED";
/// Printed by the installed system's init when it booted from the disk (not the CD), before
/// [`crate::guest::READY_MARKER`].
pub const BOOTED_FROM_DISK_MARKER: &str = "HV-BOOTED-FROM-DISK";

/// Bump when the build logic changes in a way the hashed inputs do not capture.
pub const BUILDER_VERSION: u32 = 1;

/// Packages whose files go onto the CD: the boot loaders, extlinux and the libc6 it runs with.
const CD_PACKAGES: &[&str] = &["isolinux", "syslinux-common", "extlinux", "libc6"];
/// `xorriso` and the libraries it needs beyond those every Debian system has (libc6, libacl1,
/// zlib1g, libbz2-1.0, libtinfo6); they run on the host from their extracted tree.
const TOOL_PACKAGES: &[&str] = &[
    "xorriso",
    "libisoburn1",
    "libburn4",
    "libisofs6",
    "libjte2",
    "libreadline8",
];
/// Where the amd64 packages put their shared libraries.
const LIB_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

const ISOLINUX_CFG: &str = include_str!("../assets/iso/isolinux.cfg");

/// Builds (or returns the cached) installer CD; see the module docs for what it does.
///
/// Uses the cache dir of [`guest::tiny_guest`]. Safe to call from several threads and processes
/// at once.
pub fn installer_iso() -> Result<InstallerIso> {
    installer_iso_in(&guest::cache_root()?)
}

/// Like [`installer_iso`] with an explicit cache dir.
pub fn installer_iso_in(cache: &Path) -> Result<InstallerIso> {
    let tiny = guest::tiny_guest_in(cache)?; // before taking the lock: it takes it too
    let packages = resolve_packages(cache)?;
    let dir = cache.join(format!("iso-{}", cache_key(&tiny, &packages)?));
    let iso = InstallerIso {
        iso: dir.join("installer.iso"),
    };
    if dir.is_dir() {
        return Ok(iso);
    }
    let _lock = guest::lock(&cache.join(".lock"))?;
    if dir.is_dir() {
        return Ok(iso); // another process built it while we waited
    }
    guest::remove_stale_temps(cache)?;
    let tmp = cache.join(format!(".tmp-{}", guest::unique_suffix()));
    let built = build(&tiny, &packages, &tmp).and_then(|out| {
        fs::rename(&out, &dir).with_context(|| format!("renaming {} into place", out.display()))
    });
    let cleanup = fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()));
    built.and(cleanup).context("building the installer ISO")?;
    Ok(iso)
}

/// A package and the exact version `apt-get download` will fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    name: String,
    version: String,
}

pub(crate) fn resolve_packages(cache: &Path) -> Result<Vec<Package>> {
    let names: Vec<&str> = CD_PACKAGES.iter().chain(TOOL_PACKAGES).copied().collect();
    let text = guest::apt_show_cached(cache, ".resolved-iso", &names)?;
    parse_versions(&text, &names)
}

/// The `Version` of each of `names` in `apt-cache show` stanzas, in the order of `names`.
fn parse_versions(text: &str, names: &[&str]) -> Result<Vec<Package>> {
    let mut found = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if let (Some(name), Some(version)) = (field("Package"), field("Version")) {
            found.push(Package {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
    }
    names
        .iter()
        .map(|name| {
            found
                .iter()
                .find(|p| p.name == *name)
                .cloned()
                .with_context(|| format!("apt-cache shows no {name}"))
        })
        .collect()
}

/// Hash of every input of the build, as 16 hex digits.
fn cache_key(tiny: &TinyGuest, packages: &[Package]) -> Result<String> {
    // The tiny guest's dir name carries the hash of all of its inputs.
    let guest_dir = tiny
        .initrd
        .parent()
        .and_then(Path::file_name)
        .context("tiny guest path has no dir")?;
    let mut h = Sha256::new();
    h.update(format!("hv installer iso builder {BUILDER_VERSION}\n"));
    h.update(format!("guest {}\n", guest_dir.to_string_lossy()));
    h.update(format!(
        "isolinux.cfg {}\n{ISOLINUX_CFG}",
        ISOLINUX_CFG.len()
    ));
    h.update(format!("cmdline {CMDLINE}\n{packages:?}\n"));
    Ok(guest::hex16(h))
}

/// Builds into `tmp` and returns the finished output dir inside it.
fn build(tiny: &TinyGuest, packages: &[Package], tmp: &Path) -> Result<PathBuf> {
    tracing::info!("building the installer ISO");
    let (debs, cd_pkgs, tools, tree, out) = (
        tmp.join("debs"),
        tmp.join("cd-packages"),
        tmp.join("tools"),
        tmp.join("tree"),
        tmp.join("out"),
    );
    for dir in [&debs, &cd_pkgs, &tools, &tree, &out] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    extract_packages(packages, &debs, &cd_pkgs, &tools)?;

    // The CD's tree: boot loader, guest, and what the installer needs.
    let cmdline_cfg = ISOLINUX_CFG.replace("@CMDLINE@", CMDLINE);
    guest::write_file(&tree.join("isolinux/isolinux.cfg"), 0o644, &cmdline_cfg)?;
    guest::write_file(
        &tree.join("hv/installer"),
        0o644,
        "hv installer CD: the tiny guest's installer mode looks for this file\n",
    )?;
    let lib = find_lib_dir(&cd_pkgs)?;
    let from_cd = |rel: &str| cd_pkgs.join(rel);
    let copies = [
        (
            from_cd("usr/lib/ISOLINUX/isolinux.bin"),
            "isolinux/isolinux.bin",
        ),
        (
            from_cd("usr/lib/syslinux/modules/bios/ldlinux.c32"),
            "isolinux/ldlinux.c32",
        ),
        (tiny.kernel.clone(), "boot/vmlinuz"),
        (tiny.initrd.clone(), "boot/initrd.gz"),
        (from_cd("usr/bin/extlinux"), "hv/extlinux"),
        (from_cd("usr/lib/syslinux/mbr/mbr.bin"), "hv/mbr.bin"),
        (
            lib.join("ld-linux-x86-64.so.2"),
            "hv/lib/ld-linux-x86-64.so.2",
        ),
        (lib.join("libc.so.6"), "hv/lib/libc.so.6"),
    ];
    for (src, dest) in copies {
        let dest = tree.join(dest);
        fs::create_dir_all(dest.parent().context("path has no parent")?)?;
        // fs::copy follows symlinks and keeps the mode bits (extlinux and ld.so stay executable).
        fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
    }

    // The ISO, made by the extracted xorriso.
    let iso = out.join("installer.iso");
    let mut xorriso = xorriso(&tools);
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-r", "-V", "HV_INSTALLER", "-o"])
        .arg(&iso)
        .arg("-isohybrid-mbr")
        .arg(cd_pkgs.join("usr/lib/ISOLINUX/isohdpfx.bin"))
        .args(["-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg(&tree);
    guest::run(&mut xorriso)?;
    ensure!(iso.is_file(), "xorriso made no {}", iso.display());
    Ok(out)
}

/// Downloads `packages` into `debs` and extracts each into `tools` (the [`TOOL_PACKAGES`]) or
/// `cd` (the rest).
pub(crate) fn extract_packages(
    packages: &[Package],
    debs: &Path,
    cd: &Path,
    tools: &Path,
) -> Result<()> {
    let mut download = Command::new("apt-get");
    download
        .current_dir(debs)
        .args(["download", "-q"])
        .args(packages.iter().map(|p| format!("{}={}", p.name, p.version)));
    guest::run_with_apt_update(&mut download)?;
    for p in packages {
        let deb = guest::find_entry(debs, |n| {
            n.starts_with(&format!("{}_", p.name)) && n.ends_with(".deb")
        })?;
        let dest = if TOOL_PACKAGES.contains(&p.name.as_str()) {
            tools
        } else {
            cd
        };
        guest::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    }
    Ok(())
}

/// The extracted `xorriso` under `tools`, ready to run with its libraries.
pub(crate) fn xorriso(tools: &Path) -> Command {
    let library_path = LIB_DIRS
        .iter()
        .map(|d| tools.join(d).into_os_string())
        .collect::<Vec<_>>()
        .join(std::ffi::OsStr::new(":"));
    let mut cmd = Command::new(tools.join("usr/bin/xorriso"));
    cmd.env("LD_LIBRARY_PATH", library_path);
    cmd
}

/// The dir of the extracted libc6 that holds `libc.so.6` (and the real `ld-linux-x86-64.so.2`).
fn find_lib_dir(root: &Path) -> Result<PathBuf> {
    LIB_DIRS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("libc.so.6").exists() && d.join("ld-linux-x86-64.so.2").exists())
        .with_context(|| format!("no libc.so.6 in the libc6 package under {}", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_in_the_order_asked() {
        let text = "Package: libc6\nVersion: 2.36-9+deb12u14\nDepends: libgcc-s1\n\n\
                    Package: isolinux\nVersion: 3:6.04~git20190206.bf6db5b4+dfsg1-3\n";
        let got = parse_versions(text, &["isolinux", "libc6"]).expect("parses");
        let names: Vec<_> = got.iter().map(|p| (&*p.name, &*p.version)).collect();
        assert_eq!(
            names,
            [
                ("isolinux", "3:6.04~git20190206.bf6db5b4+dfsg1-3"),
                ("libc6", "2.36-9+deb12u14")
            ]
        );
        let missing = parse_versions(text, &["xorriso"]).expect_err("xorriso is missing");
        assert!(missing.to_string().contains("xorriso"), "{missing:#}");
    }

    #[test]
    fn isolinux_boots_the_installer_entry_with_the_guest_cmdline() {
        let cfg = ISOLINUX_CFG.replace("@CMDLINE@", CMDLINE);
        assert!(
            cfg.contains(&format!("APPEND {CMDLINE} hv.install=1\n")),
            "{cfg}"
        );
        assert!(cfg.contains("DEFAULT install\n"), "{cfg}");
    }

    #[test]
    fn builds_a_hybrid_iso_once_then_hits_the_cache() {
        let first = installer_iso().expect("installer ISO builds");
        let bytes = fs::read(&first.iso).expect("ISO is readable");
        // An MBR (the isohybrid one) and an ISO 9660 primary volume descriptor.
        assert_eq!(bytes.get(510..512), Some(&[0x55, 0xaa][..]), "{first:?}");
        assert_eq!(bytes.get(0x8001..0x8006), Some(&b"CD001"[..]), "{first:?}");
        let cache = guest::cache_root().expect("cache root");
        assert_eq!(installer_iso_in(&cache).expect("cache hit"), first);
    }
}
