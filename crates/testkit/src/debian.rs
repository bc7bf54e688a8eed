//! The Debian test guest: a real Debian 12 with systemd as PID 1, for tests that need a full
//! system (hvd's package and unit, cloud-init). Built with `debootstrap --variant=minbase`, then
//! in the chroot the cloud kernel with `initramfs-tools` (from bookworm-security), cloud-init,
//! and the runtime dependencies of hv's .deb ([`PACKAGES`]) so that `apt install ./hv_*.deb`
//! works offline in the guest.
//!
//! The guest is configured for tests: root is logged in on `ttyS0` (serial-getty autologin) with
//! a non-echoing shell whose prompt is `HV-PROMPT rc=N # ` ([`crate::guest::PROMPT_REGEX`]) and
//! which prints [`LOGIN_MARKER`] first; systemd-networkd does DHCP on every Ethernet NIC with
//! `ClientIdentifier=mac`; `/etc/machine-id` is empty so each boot of a fresh overlay gets its own;
//! apt's timers and timesyncd are masked so the guest never reaches out. cloud-init only looks
//! for a NoCloud seed or a config drive, and ds-identify disables it when neither is attached.
//!
//! Boot it with `-kernel kernel -initrd initrd -append` [`CMDLINE`] and [`DebianGuest::image`]
//! as the first virtio disk, always through a qcow2 overlay: the base is shared and never written.
//!
//! Outputs live in `<cache>/debian-<key>/` (the same cache dir as [`crate::guest`]), where `<key>`
//! hashes the asset texts, the package list, the candidate versions of those packages (from
//! `apt-cache`, itself cached while apt's lists are unchanged) and [`BUILDER_VERSION`]. A cache
//! hit takes a few milliseconds. Builders serialize on `<cache>/.lock-debian` and build in a
//! temp dir (needs root: debootstrap, chroot).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::guest::{apt_show_cached, cache_root, hex16, lock, run, unique_suffix, write_file};

/// A built Debian guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianGuest {
    /// The root filesystem as a compressed qcow2 (ext4 on the whole disk, 4 GiB virtual). Never
    /// write it: boot a qcow2 overlay whose backing file it is.
    pub image: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Kernel command line: the image is the first virtio disk, the console is `ttyS0`.
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 quiet mitigations=off";

/// Printed once by root's shell on the serial console, before its first prompt.
pub const LOGIN_MARKER: &str = "HV-DEBIAN-LOGIN";

/// Bump when the build logic changes in a way the hashed inputs do not capture.
pub const BUILDER_VERSION: u32 = 1;

/// The suite and mirror debootstrap uses (the guest's apt sources are [`ASSETS`]' `sources`).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Installed by debootstrap itself (the base system).
const BASE_PACKAGES: &str =
    "systemd-sysv,udev,dbus,iproute2,iputils-ping,procps,kmod,e2fsprogs,debian-archive-keyring";

/// Installed in the chroot after debootstrap, without recommends: the kernel, cloud-init, the
/// guest agent and the runtime dependencies of hv's .deb.
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "qemu-guest-agent",
    "cloud-init",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    "nftables",
    "acl",
    "ovmf",
    "swtpm",
    "swtpm-tools",
];

/// Files placed in the tree: (path, mode, contents).
const ASSETS: &[(&str, u32, &str)] = &[
    (
        "etc/apt/sources.list.d/debian.sources",
        0o644,
        include_str!("../assets/debian/sources"),
    ),
    (
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
        0o644,
        include_str!("../assets/debian/autologin.conf"),
    ),
    (
        "etc/systemd/network/80-hv-dhcp.network",
        0o644,
        include_str!("../assets/debian/dhcp.network"),
    ),
    (
        "etc/systemd/system/systemd-networkd-wait-online.service.d/hv.conf",
        0o644,
        include_str!("../assets/debian/wait-online.conf"),
    ),
    (
        "etc/cloud/cloud.cfg.d/90-hv-datasources.cfg",
        0o644,
        include_str!("../assets/debian/cloud.cfg"),
    ),
    (
        "root/.bashrc",
        0o644,
        include_str!("../assets/debian/bashrc"),
    ),
    ("etc/fstab", 0o644, include_str!("../assets/debian/fstab")),
    ("etc/hosts", 0o644, include_str!("../assets/debian/hosts")),
];

/// The in-chroot setup script (runs after [`ASSETS`] are placed).
const SETUP: &str = include_str!("../assets/debian/setup");

/// Virtual size of the root filesystem.
const IMAGE_SIZE: &str = "4G";

/// Builds (or returns the cached) Debian guest. Cache dir as [`crate::guest::tiny_guest`].
/// Safe to call from several threads and processes at once.
pub fn debian_guest() -> Result<DebianGuest> {
    debian_guest_in(&cache_root()?)
}

/// Like [`debian_guest`] with an explicit cache dir.
pub fn debian_guest_in(cache: &Path) -> Result<DebianGuest> {
    let versions = apt_show_cached(cache, ".resolved-debian", PACKAGES)
        .context("resolving the Debian guest's packages")?;
    let dir = cache.join(format!("debian-{}", cache_key(&versions)));
    let guest = DebianGuest {
        image: dir.join("root.qcow2"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if dir.is_dir() {
        return Ok(guest);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join(".lock-debian"))?;
    if dir.is_dir() {
        return Ok(guest); // another process built it while we waited
    }
    remove_stale_temps(cache)?;
    let tmp = cache.join(format!("{TMP_PREFIX}{}", unique_suffix()));
    let built = build(&tmp).and_then(|out| {
        fs::rename(&out, &dir).with_context(|| format!("renaming {} into place", out.display()))
    });
    let cleanup = fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()));
    built.and(cleanup).context("building the Debian guest")?;
    Ok(guest)
}

/// Copies the base image into `dir` and makes `dir/root.qcow2`, a qcow2 overlay on that copy
/// (hvd gives a VM's QEMU a backing file only next to the image above it or in a pool). Returns
/// the overlay.
pub fn overlay_in(guest: &DebianGuest, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join("debian-base.qcow2");
    fs::copy(&guest.image, &base).with_context(|| format!("copying {}", guest.image.display()))?;
    let overlay = dir.join("root.qcow2");
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "debian-base.qcow2",
        ])
        .arg(&overlay))?;
    Ok(overlay)
}

/// Makes `dest`, a raw ext4 image of `size` (`512M`, ...) holding the files of `tree`: a data
/// disk to hand a guest (`mount /dev/vdb /mnt`).
pub fn ext4_image(tree: &Path, dest: &Path, size: &str) -> Result<()> {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "hv-data", "-d"])
        .arg(tree)
        .arg(dest)
        .arg(size))
    .map(drop)
}

/// Temp dirs of this builder (distinct from the tiny guest's `.tmp-`, which its builder prunes
/// under another lock).
const TMP_PREFIX: &str = ".debian-tmp-";

/// Hash of every input: builder version, debootstrap arguments, assets, setup script, and the
/// `Package`/`Version` lines of the resolved packages.
fn cache_key(versions: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "hv debian guest builder {BUILDER_VERSION}\n{SUITE} {MIRROR} {BASE_PACKAGES}\n\
         {PACKAGES:?} {IMAGE_SIZE} {CMDLINE}\n"
    ));
    for (path, mode, text) in ASSETS.iter().chain([&("setup", 0o755, SETUP)]) {
        h.update(format!("asset {path} {mode:o} {}\n", text.len()));
        h.update(text);
    }
    for line in versions
        .lines()
        .filter(|l| l.starts_with("Package:") || l.starts_with("Version:"))
    {
        h.update(line);
        h.update("\n");
    }
    hex16(h)
}

/// Builds into `tmp` and returns the finished output dir inside it.
fn build(tmp: &Path) -> Result<PathBuf> {
    tracing::info!("building the Debian test guest (debootstrap, a few minutes)");
    let (tree, out) = (tmp.join("tree"), tmp.join("out"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--include={BASE_PACKAGES}"))
        .args([SUITE])
        .arg(&tree)
        .arg(MIRROR);
    run(&mut debootstrap).context("debootstrap (is the debootstrap package installed?)")?;

    for (path, mode, text) in ASSETS {
        write_file(&tree.join(path), *mode, text)?;
    }
    write_file(&tree.join("hv-setup"), 0o755, SETUP)?;
    // A private mount namespace: the chroot's /proc and /sys vanish with it, also on a crash.
    let mut setup = Command::new("unshare");
    setup
        .args(["--mount", "--propagation", "private", "chroot"])
        .arg(&tree)
        .args(["/bin/sh", "/hv-setup"])
        .args(PACKAGES)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    run(&mut setup).context("installing packages in the Debian guest")?;
    fs::remove_file(tree.join("hv-setup"))?;

    // Kernel and initrd, by the release the chroot installed.
    let boot = tree.join("boot");
    let release = fs::read_dir(&boot)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    for (from, to) in [("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")] {
        let src = boot.join(format!("{from}-{release}"));
        fs::copy(&src, out.join(to)).with_context(|| format!("copying {}", src.display()))?;
    }

    let raw = tmp.join("root.raw");
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", "hv-root", "-d"])
        .arg(&tree)
        .arg(&raw)
        .arg(IMAGE_SIZE);
    run(&mut mkfs)?;
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(out.join("root.qcow2"));
    run(&mut convert)?;
    fs::remove_file(&raw)?;
    Ok(out)
}

/// Removes temp dirs left by builders that died; only called under the lock.
fn remove_stale_temps(cache: &Path) -> Result<()> {
    for entry in fs::read_dir(cache)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let path = entry.path();
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_versions_only_on_package_lines() {
        let a = cache_key("Package: acl\nVersion: 1\nSize: 3\n");
        let b = cache_key("Package: acl\nVersion: 1\nSize: 4\n");
        let c = cache_key("Package: acl\nVersion: 2\nSize: 3\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn builds_once_then_hits_the_cache() {
        let first = debian_guest().expect("Debian guest builds");
        for path in [&first.image, &first.kernel, &first.initrd] {
            assert!(path.is_file(), "{} is missing", path.display());
        }
        let second = debian_guest_in(&cache_root().expect("cache root")).expect("cache hit");
        assert_eq!(first, second);
    }
}
