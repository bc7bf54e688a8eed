//! The tiny test guest: a Debian cloud kernel plus a busybox initramfs (about 1.7 MB), built from
//! Debian packages (`apt-get download`, never installed on the host) and cached outside git.
//!
//! The guest boots to a root shell on `ttyS0` in about 2.5 s under TCG. Its init loads the virtio,
//! ACPI-button and evdev modules, starts busybox `acpid` (unless [`CMDLINE_NO_ACPI`]), and prints
//! marker lines that tests wait for: `HV-ACPID-ON`/`HV-ACPID-OFF`, one `HV-DISK vda` per disk, then
//! [`READY_MARKER`]. The IDE disk and CD drivers (`ata_piix`, `sd_mod`, `sr_mod`, `isofs`) cost
//! about 0.4 s, so init loads them only when the command line has [`IDE_FLAG`] (or is the
//! installer's, see [`crate::iso`]). The ACPI power button (QMP `system_powerdown`) prints [`POWERDOWN_MARKER`],
//! syncs, unmounts and powers off at once. The shell prompt is `HV-PROMPT rc=N # ` with no
//! trailing newline, so match markers by regex search rather than whole lines. The shell does not
//! echo typed input, so a marker in a typed command only ever matches that command's output.
//!
//! A second root shell runs on `tty1`, the VGA text console (`vgacon`, with the built-in PS/2
//! keyboard driver), for typing through VNC: it echoes input and its prompt is [`TTY1_PROMPT`];
//! `echo MARKER >/dev/ttyS0` typed there puts `MARKER` in the serial log. Kernel messages still go
//! to `ttyS0` only. When the command line has `hv.entry=X` (the boot-prompt CD's entries, see
//! [`crate::media`]) init prints [`BOOT_ENTRY_MARKER`]`X` before [`READY_MARKER`]. `hv-media`
//! prints the CD-ROM's volume label (`HV-MEDIA label=L`, or `HV-MEDIA none`; needs [`IDE_FLAG`]).
//!
//! Outputs live in `<cache>/tiny-<release>-<key>/` where `<key>` hashes every input: the asset
//! texts, the module list, the resolved package versions and [`BUILDER_VERSION`]. Resolving the
//! versions (`apt-cache`, about 0.7 s) is itself cached while apt's lists and configuration are
//! unchanged, so a cache hit takes a few milliseconds. Concurrent builders serialize on an
//! `flock`ed `<cache>/.lock`, build in a temp dir and rename the result into place (about 6 s,
//! 28 MB of downloads). Old entries are never pruned: delete the cache dir to reclaim space.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

/// A built tiny guest: boot it with `-kernel kernel -initrd initrd -append CMDLINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub kernel_version: String,
}

/// Kernel command line for a normal boot. `scsi_mod.scan=sync` makes virtio-scsi disks exist
/// before init prints its `HV-DISK` lines; `mitigations=off` and `cryptomgr.notests` each save
/// about 0.4 s of boot under TCG.
pub const CMDLINE: &str =
    "console=ttyS0 panic=-1 quiet scsi_mod.scan=sync mitigations=off cryptomgr.notests";
/// Kernel command line for a guest that ignores the ACPI power button (no `acpid`).
pub const CMDLINE_NO_ACPI: &str =
    "console=ttyS0 panic=-1 quiet scsi_mod.scan=sync mitigations=off cryptomgr.notests hv.acpid=0";

/// Append to the command line (after a space) to load the IDE disk and CD drivers, e.g. for a
/// `-hda` disk or an IDE CD to show up as `HV-DISK sda`/`HV-DISK sr0`.
pub const IDE_FLAG: &str = "hv.ide=1";

/// Printed when init has finished (modules loaded, `acpid` started if enabled), just before the shell.
pub const READY_MARKER: &str = "HV-GUEST-READY";
/// Printed by the power-button handler before it syncs, unmounts and runs `poweroff -f`.
pub const POWERDOWN_MARKER: &str = "HV-POWERDOWN";
/// Printed before [`READY_MARKER`] when `acpid` was started.
pub const ACPID_ON_MARKER: &str = "HV-ACPID-ON";
/// Printed before [`READY_MARKER`] instead of [`ACPID_ON_MARKER`] if `acpid` did not come up.
pub const ACPID_FAILED_MARKER: &str = "HV-ACPID-FAILED";
/// Printed before [`READY_MARKER`] when the command line had `hv.acpid=0`.
pub const ACPID_OFF_MARKER: &str = "HV-ACPID-OFF";
/// Prefix of the per-disk lines, e.g. `HV-DISK vda` (also `sdX`/`srX` on virtio-scsi).
pub const DISK_MARKER: &str = "HV-DISK";
/// Printed if a module failed to load, e.g. `HV-MODULE-FAILED virtio_net.ko`.
pub const MODULE_FAILED_MARKER: &str = "HV-MODULE-FAILED";
/// Printed by the shutdown script on a graceful `poweroff`/`reboot` (busybox adds ~2 s of sleeps).
pub const SHUTDOWN_MARKER: &str = "HV-SHUTDOWN";
/// The prompt of the shell on `tty1`, the VGA console.
pub const TTY1_PROMPT: &str = "HV-TTY1 # ";
/// Printed as `HV-BOOTED-ENTRY=X` when the kernel command line has `hv.entry=X`.
pub const BOOT_ENTRY_MARKER: &str = "HV-BOOTED-ENTRY=";
/// Printed by `hv-media`: `HV-MEDIA label=LABEL` or `HV-MEDIA none`.
pub const MEDIA_MARKER: &str = "HV-MEDIA";
/// The shell prompt (no trailing newline); group 1 is the exit status of the last command.
pub const PROMPT_REGEX: &str = r"HV-PROMPT rc=(\d+) # ";

/// Bump when the build logic changes in a way the hashed inputs do not capture.
pub const BUILDER_VERSION: u32 = 2;

const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Modules loaded at boot (with their dependencies, resolved by `modprobe --show-depends`).
const MODULES: &str = "virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
    virtio_blk failover net_failover virtio_net virtio_console virtio-rng scsi_common scsi_mod \
    virtio_scsi virtio_balloon button evdev";
/// Modules loaded only with [`IDE_FLAG`] or in installer mode (minus those already in [`MODULES`]).
const IDE_MODULES: &str = "libata ata_piix sd_mod cdrom sr_mod isofs";

/// Text files placed in the initramfs: (path, mode, contents).
const ASSETS: &[(&str, u32, &str)] = &[
    ("init", 0o755, include_str!("../assets/tiny/init")),
    ("etc/inittab", 0o644, include_str!("../assets/tiny/inittab")),
    ("etc/init.d/rcS", 0o755, include_str!("../assets/tiny/rcS")),
    ("etc/init.d/rcK", 0o755, include_str!("../assets/tiny/rcK")),
    (
        "etc/acpi/PWRF/00000080",
        0o755,
        include_str!("../assets/tiny/power-button"),
    ),
    ("etc/profile", 0o644, include_str!("../assets/tiny/profile")),
    (
        "etc/init.d/hv-install",
        0o755,
        include_str!("../assets/tiny/install"),
    ),
    (
        "bin/hv-media",
        0o755,
        include_str!("../assets/tiny/hv-media"),
    ),
];

/// Empty directories the initramfs needs.
const DIRS: &[&str] = &[
    "proc", "sys", "dev", "tmp", "run", "mnt", "root", "var/log", "var/run",
];

/// Builds (or returns the cached) tiny guest.
///
/// Cache dir: `$HV_GUEST_CACHE`, else `$XDG_CACHE_HOME/hv-guests`, else `~/.cache/hv-guests`.
/// Safe to call from several threads and processes at once.
pub fn tiny_guest() -> Result<TinyGuest> {
    tiny_guest_in(&cache_root()?)
}

/// Like [`tiny_guest`] with an explicit cache dir.
pub fn tiny_guest_in(cache: &Path) -> Result<TinyGuest> {
    let packages = resolve_packages(cache)?;
    let kernel_version = packages.kernel_release()?.to_owned();
    let dir = cache.join(format!("tiny-{kernel_version}-{}", cache_key(&packages)));
    let guest = TinyGuest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
        kernel_version,
    };
    if dir.is_dir() {
        return Ok(guest);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join(".lock"))?;
    if dir.is_dir() {
        return Ok(guest); // another process built it while we waited
    }
    remove_stale_temps(cache)?;
    let tmp = cache.join(format!(".tmp-{}", unique_suffix()));
    let built = build(&packages, &guest.kernel_version, &tmp).and_then(|out| {
        fs::rename(&out, &dir).with_context(|| format!("renaming {} into place", out.display()))
    });
    let cleanup = fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()));
    built.and(cleanup).context("building the tiny guest")?;
    Ok(guest)
}

/// The cache directory for built guests.
pub fn cache_root() -> Result<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HV_GUEST_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("hv-guests"));
    }
    let home = var("HOME").context("none of HV_GUEST_CACHE, XDG_CACHE_HOME, HOME is set")?;
    Ok(home.join(".cache/hv-guests"))
}

/// Exact package versions that `apt-get download` will fetch.
#[derive(Debug)]
struct Packages {
    kernel: String,
    kernel_deb_version: String,
    busybox_deb_version: String,
}

impl Packages {
    /// The kernel release, from the package name (`linux-image-<release>`).
    fn kernel_release(&self) -> Result<&str> {
        self.kernel
            .strip_prefix("linux-image-")
            .context("unexpected kernel package name")
    }
}

/// The resolved versions of the guest's packages.
fn resolve_packages(cache: &Path) -> Result<Packages> {
    let text = apt_show_cached(cache, ".resolved", &[KERNEL_META_PACKAGE, BUSYBOX_PACKAGE])?;
    parse_packages(&text)
}

/// `apt-cache show --no-all-versions PACKAGES`, reusing the last answer (about 0.7 s) while apt's
/// inputs are unchanged: `<cache>/<file>` holds their fingerprint and the package names, then
/// that answer.
pub(crate) fn apt_show_cached(cache: &Path, file: &str, packages: &[&str]) -> Result<String> {
    let path = cache.join(file);
    let fingerprint = format!("fingerprint {} {}\n", apt_fingerprint(), packages.join(" "));
    let cached = fs::read_to_string(&path).ok();
    if let Some(text) = cached.as_deref().and_then(|t| t.strip_prefix(&fingerprint)) {
        return Ok(text.to_owned());
    }
    let mut cmd = Command::new("apt-cache");
    cmd.args(["show", "--no-all-versions"]).args(packages);
    let text = String::from_utf8(run_with_apt_update(&mut cmd)?.stdout)?;
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = cache.join(format!(".resolving-{}", unique_suffix()));
    fs::write(&tmp, fingerprint + &text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(text)
}

/// What decides apt's candidate versions: the package lists, the configuration, the dpkg status.
const APT_INPUT_DIRS: &[&str] = &[
    "/var/lib/apt/lists",
    "/etc/apt",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
    "/var/lib/dpkg",
];

/// Hash of the names, sizes and mtimes of the entries of [`APT_INPUT_DIRS`].
fn apt_fingerprint() -> String {
    let mut h = Sha256::new();
    for dir in APT_INPUT_DIRS {
        let mut entries: Vec<_> = fs::read_dir(dir).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let stamp = entry.metadata().ok().map(|m| (m.len(), m.modified().ok()));
            h.update(format!("{}/{:?} {stamp:?}\n", dir, entry.file_name()));
        }
    }
    hex16(h)
}

/// Parses `apt-cache show` stanzas: the kernel comes from the meta package's
/// `Depends: linux-image-X (= VERSION)`.
fn parse_packages(text: &str) -> Result<Packages> {
    let (mut kernel, mut busybox_version) = (None, None);
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        match field("Package") {
            Some(KERNEL_META_PACKAGE) => kernel = field("Depends"),
            Some(BUSYBOX_PACKAGE) => busybox_version = field("Version"),
            _ => {}
        }
    }
    let depends = kernel.with_context(|| format!("apt-cache shows no {KERNEL_META_PACKAGE}"))?;
    let first = depends.split(',').next().unwrap_or_default().trim();
    let (name, version) = first
        .split_once(" (= ")
        .and_then(|(n, v)| Some((n, v.strip_suffix(')')?)))
        .with_context(|| format!("unexpected {KERNEL_META_PACKAGE} dependency {first:?}"))?;
    ensure!(
        name.starts_with("linux-image-"),
        "unexpected kernel package {name:?}"
    );
    Ok(Packages {
        kernel: name.to_owned(),
        kernel_deb_version: version.to_owned(),
        busybox_deb_version: busybox_version
            .with_context(|| format!("apt-cache shows no {BUSYBOX_PACKAGE}"))?
            .to_owned(),
    })
}

/// Hash of every input of the build, as 16 hex digits.
fn cache_key(packages: &Packages) -> String {
    let mut h = Sha256::new();
    h.update(format!("hv tiny guest builder {BUILDER_VERSION}\n"));
    for (path, mode, text) in ASSETS {
        h.update(format!("asset {path} {mode:o} {}\n", text.len()));
        h.update(text);
    }
    h.update(format!("modules {MODULES}\nide modules {IDE_MODULES}\n"));
    h.update(format!("{packages:?}\n"));
    hex16(h)
}

/// Builds into `tmp` and returns the finished output dir inside it.
fn build(packages: &Packages, kernel_version: &str, tmp: &Path) -> Result<PathBuf> {
    tracing::info!(kernel = %packages.kernel, "building the tiny test guest");
    let (debs, kdir, bdir, root, out) = (
        tmp.join("debs"),
        tmp.join("kernel"),
        tmp.join("busybox"),
        tmp.join("root"),
        tmp.join("out"),
    );
    for dir in [&debs, &kdir, &bdir, &root, &out] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut download = Command::new("apt-get");
    download.current_dir(&debs).args(["download", "-q"]).args([
        format!("{}={}", packages.kernel, packages.kernel_deb_version),
        format!("{BUSYBOX_PACKAGE}={}", packages.busybox_deb_version),
    ]);
    run_with_apt_update(&mut download)?;
    for (prefix, dest) in [(&*packages.kernel, &kdir), (BUSYBOX_PACKAGE, &bdir)] {
        let deb = find_entry(&debs, |n| {
            n.starts_with(&format!("{prefix}_")) && n.ends_with(".deb")
        })?;
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    }

    // Kernel.
    let vmlinuz = kdir.join(format!("boot/vmlinuz-{kernel_version}"));
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;

    // Busybox and its applet links.
    let busybox = root.join("bin/busybox");
    fs::create_dir_all(root.join("bin"))?;
    fs::copy(bdir.join("bin/busybox"), &busybox).context("copying busybox")?;
    let applets = run(Command::new(&busybox).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|l| *l != "bin/busybox")
    {
        let link = root.join(applet);
        fs::create_dir_all(link.parent().context("applet path has no parent")?)?;
        symlink("/bin/busybox", &link).with_context(|| format!("linking {applet}"))?;
    }

    // Modules, decompressed, with their load order in /etc/hv-modules and /etc/hv-modules-ide.
    let module_dir = root.join("lib/modules/hv");
    fs::create_dir_all(&module_dir)?;
    run(Command::new("depmod")
        .arg("-b")
        .arg(&kdir)
        .arg(kernel_version))?;
    let base = module_paths(&kdir, kernel_version, MODULES, &[])?;
    let ide = module_paths(&kdir, kernel_version, IDE_MODULES, &base)?;
    for (paths, list) in [(&base, "etc/hv-modules"), (&ide, "etc/hv-modules-ide")] {
        let mut order = String::new();
        for path in paths {
            order.push_str(&copy_module(path, &module_dir)?);
            order.push('\n');
        }
        write_file(&root.join(list), 0o644, &order)?;
    }

    // Scripts and configuration.
    for dir in DIRS {
        fs::create_dir_all(root.join(dir))?;
    }
    for (path, mode, text) in ASSETS {
        write_file(&root.join(path), *mode, text)?;
    }

    pack_initramfs(&root, &out.join("initrd.gz"))?;
    Ok(out)
}

/// Copies a module into `dir`, decompressed, and returns its file name there (`x.ko`).
fn copy_module(path: &Path, dir: &Path) -> Result<String> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("bad module path")?;
    let (stem, decompress) = match file_name.rsplit_once(".ko") {
        Some((stem, "")) => (stem, None),
        Some((stem, ".xz")) => (stem, Some("xz")),
        Some((stem, ".zst")) => (stem, Some("zstd")),
        Some((stem, ".gz")) => (stem, Some("gzip")),
        _ => bail!("unexpected module file {}", path.display()),
    };
    let dest = dir.join(format!("{stem}.ko"));
    match decompress {
        None => fs::copy(path, &dest)
            .map(drop)
            .with_context(|| format!("copying {file_name}"))?,
        Some(tool) => {
            let ko = File::create(&dest)?;
            let mut cmd = Command::new(tool);
            cmd.arg("-dc").arg(path).stdout(ko);
            run(&mut cmd)?;
        }
    }
    Ok(format!("{stem}.ko"))
}

/// `.ko` paths for `modules` (space-separated) and their dependencies, in load order, each once,
/// leaving out those in `loaded`. Needs `depmod` to have run on `kdir`.
fn module_paths(
    kdir: &Path,
    kernel_version: &str,
    modules: &str,
    loaded: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for module in modules.split_whitespace() {
        let mut cmd = Command::new("modprobe");
        cmd.arg("-d")
            .arg(kdir)
            .args(["-S", kernel_version, "--show-depends", module]);
        let out = run(&mut cmd)?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "insmod /path/x.ko [params]" or "builtin x".
            if let Some(path) = line
                .strip_prefix("insmod ")
                .and_then(|r| r.split_whitespace().next())
            {
                let path = PathBuf::from(path);
                if !paths.contains(&path) && !loaded.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    Ok(paths)
}

/// Packs `root` as a gzipped newc cpio owned by root.
fn pack_initramfs(root: &Path, dest: &Path) -> Result<()> {
    let mut list = Vec::new();
    collect_paths(root, Path::new(""), &mut list)?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning cpio")?;
    let archive = cpio.stdout.take().context("cpio has no stdout")?;
    let gzip = Command::new("gzip")
        .args(["-9", "-n"])
        .stdin(archive)
        .stdout(File::create(dest).with_context(|| format!("creating {}", dest.display()))?)
        .spawn()
        .context("spawning gzip")?;
    let mut stdin = cpio.stdin.take().context("cpio has no stdin")?;
    for path in &list {
        stdin.write_all(path.as_os_str().as_encoded_bytes())?;
        stdin.write_all(b"\n")?;
    }
    drop(stdin);
    let (cpio_status, gzip_status) = (cpio.wait()?, gzip.wait_with_output()?.status);
    ensure!(cpio_status.success(), "cpio failed: {cpio_status}");
    ensure!(gzip_status.success(), "gzip failed: {gzip_status}");
    Ok(())
}

/// Relative paths under `root`, parents before children, sorted.
fn collect_paths(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = rel.join(entry.file_name());
        out.push(path.clone());
        if entry.file_type()?.is_dir() {
            collect_paths(root, &path, out)?;
        }
    }
    Ok(())
}

/// Runs an apt command; if it fails (typically: no package lists yet), runs `apt-get update`
/// once and retries.
pub(crate) fn run_with_apt_update(cmd: &mut Command) -> Result<Output> {
    match run(cmd) {
        Ok(out) => Ok(out),
        Err(first) => {
            tracing::warn!("{first:#}; running apt-get update and retrying");
            run(Command::new("apt-get").args(["update", "-q"])).context(first)?;
            run(cmd)
        }
    }
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{cmd:?} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(out)
}

/// `PID-N`, unique among the temp files of all threads and processes.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// The first 16 hex digits of a SHA-256.
pub(crate) fn hex16(h: Sha256) -> String {
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn write_file(path: &Path, mode: u32, text: &str) -> Result<()> {
    fs::create_dir_all(path.parent().context("path has no parent")?)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(crate) fn find_entry(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<PathBuf> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(&matches) {
            return Ok(entry.path());
        }
    }
    bail!("no matching file in {}", dir.display())
}

/// Removes temp dirs left by builders that died; only called under the lock.
pub(crate) fn remove_stale_temps(cache: &Path) -> Result<()> {
    for entry in fs::read_dir(cache)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing stale {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Takes an exclusive `flock` on `path`, held until the returned file is dropped.
pub(crate) fn lock(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    loop {
        // SAFETY: flock on a file descriptor we own; it stays open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_differ_only_by_acpid_flag() {
        assert_eq!(CMDLINE_NO_ACPI, format!("{CMDLINE} hv.acpid=0"));
    }

    #[test]
    fn parses_apt_cache_show() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-3\n\
                    Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n\n\
                    Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\n";
        let p = parse_packages(text).expect("parses");
        assert_eq!(p.kernel, "linux-image-6.1.0-57-cloud-amd64");
        assert_eq!(p.kernel_deb_version, "6.1.192-3");
        assert_eq!(p.busybox_deb_version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(p.kernel_release().expect("release"), "6.1.0-57-cloud-amd64");
    }

    #[test]
    fn builds_once_then_hits_the_cache() {
        let first = tiny_guest().expect("tiny guest builds");
        assert!(
            first.kernel.is_file() && first.initrd.is_file(),
            "{first:?}"
        );
        let cache = cache_root().expect("cache root");
        let second = tiny_guest_in(&cache).expect("cache hit");
        assert_eq!(first, second);
    }
}
