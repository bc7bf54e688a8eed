//! `cargo xtask deb [--profile release|debug]`: the Debian package
//! `target/deb/hv_VERSION_amd64.deb`, built with `dpkg-deb` from the release binaries (or,
//! with `--profile debug`, `target/deb/debug/hv_VERSION_amd64.deb` from the debug binaries,
//! stripped, so that tests need no second full build). It prints the package's path last.
//!
//! Its files come from the repository (`packaging/`: the unit, the conffile, the maintainer
//! scripts, the copyright file) and from the binaries themselves: completions from
//! `hv completion SHELL`, man pages from `hv man-pages DIR` and `hvd --man-page DIR` (clap
//! definitions through clap_complete and clap_mangen).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages `cargo xtask deb` needs: dpkg-deb, dpkg-shlibdeps and objcopy.
pub const BUILD_PACKAGES: &[&str] = &["dpkg-dev", "binutils"];

/// Debian packages the package test needs: `systemd-analyze verify`, `man -l`, lintian.
pub const TEST_PACKAGES: &[&str] = &["systemd", "man-db", "lintian", "bash-completion"];

/// What the package needs at run time, besides the shared libraries of the binaries.
const DEPENDS: &[&str] = &[
    "adduser",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    "nftables",
];

/// Firmware and helpers hv uses when a VM asks for them.
const RECOMMENDS: &[&str] = &["ovmf", "swtpm"];

const MAINTAINER: &str = "hv maintainers <hv@example.org>";

/// Which cargo profile the binaries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn target_dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// Parses `cargo xtask deb`'s arguments.
pub fn parse_args(args: &[String]) -> Result<Profile> {
    match args {
        [] => Ok(Profile::Release),
        [flag, p] if flag == "--profile" => match p.as_str() {
            "release" => Ok(Profile::Release),
            "debug" | "dev" => Ok(Profile::Debug),
            other => bail!("unknown profile {other:?}: use --profile release or --profile debug"),
        },
        _ => bail!("usage: cargo xtask deb [--profile release|debug]"),
    }
}

/// The fields of `DEBIAN/control`.
#[derive(Debug)]
pub struct Control {
    pub version: String,
    /// From `dpkg-shlibdeps` (or [`shlibs_fallback`]): `libc6 (>= 2.34), ...`.
    pub shlibs: String,
    pub installed_kib: u64,
}

impl Control {
    pub fn render(&self) -> String {
        let mut depends: Vec<String> = Vec::new();
        if !self.shlibs.trim().is_empty() {
            depends.push(self.shlibs.trim().to_string());
        }
        depends.extend(DEPENDS.iter().map(|d| d.to_string()));
        format!(
            "Package: hv\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: {MAINTAINER}\n\
             Installed-Size: {size}\n\
             Depends: {depends}\n\
             Recommends: {recommends}\n\
             Section: admin\n\
             Priority: optional\n\
             Homepage: https://example.org/hv\n\
             Description: virtualization manager for QEMU (daemon hvd, command hv)\n \
             hv runs QEMU virtual machines on a host: the daemon hvd owns the VMs, their\n \
             disks, networks and consoles, and serves an HTTP/JSON API on a Unix socket\n \
             (and, if configured, over HTTPS with a web console). hv is its command-line\n \
             client. Each VM's QEMU runs as its own unprivileged uid, in its own systemd\n \
             scope, so restarting hvd never stops a VM.\n",
            version = self.version,
            size = self.installed_kib,
            depends = depends.join(", "),
            recommends = RECOMMENDS.join(", "),
        )
    }
}

/// The package's Debian version: the workspace version, Debian revision 1.
pub fn version() -> String {
    format!("{}-1", env!("CARGO_PKG_VERSION"))
}

/// Shared-library dependencies computed from the binaries' bytes, for hosts without
/// `dpkg-shlibdeps`: the highest `GLIBC_2.N` symbol version they reference, and libgcc-s1
/// when they link `libgcc_s.so.1`.
pub fn shlibs_fallback(binaries: &[&[u8]]) -> String {
    let mut glibc_minor: Option<u32> = None;
    let mut gcc = false;
    for bin in binaries {
        gcc |= bin.windows(13).any(|w| w == b"libgcc_s.so.1");
        let needle = b"GLIBC_2.";
        let mut i = 0;
        while let Some(pos) = bin[i..].windows(needle.len()).position(|w| w == needle) {
            let start = i + pos + needle.len();
            let digits: String = bin[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| char::from(*b))
                .collect();
            if let Ok(minor) = digits.parse::<u32>() {
                glibc_minor = glibc_minor.max(Some(minor));
            }
            i = start;
        }
    }
    let mut deps = vec![format!("libc6 (>= 2.{})", glibc_minor.unwrap_or(36))];
    if gcc {
        deps.push("libgcc-s1 (>= 4.2)".into());
    }
    deps.join(", ")
}

/// `shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)` → the value.
pub fn parse_shlibdeps(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The first lines of `changelog.Debian`.
pub fn changelog(version: &str, commit: &str, date_rfc2822: &str) -> String {
    format!(
        "hv ({version}) unstable; urgency=medium\n\n  * Built from git commit {commit}.\n\n -- {MAINTAINER}  {date_rfc2822}\n"
    )
}

fn out(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {cmd:?}");
    let o = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    String::from_utf8(o.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8"))
}

/// Writes `bytes` as `path` with `mode`, creating its directories (mode 0755).
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        mkdirs(dir)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn mkdirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Gzips `bytes` with `gzip -9n` (no name, no time stamp: reproducible).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    let mut stdin = child.stdin.take().context("gzip has no stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let o = child.wait_with_output().context("gzip failed")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))?
        .context("cannot feed gzip")?;
    if !o.status.success() {
        bail!("gzip failed ({})", o.status);
    }
    Ok(o.stdout)
}

/// Every regular file under `dir`, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Builds the package; returns its path. With `cargo`, builds hv and hvd first; without, packs
/// the binaries already in the profile's target directory (`cargo xtask test` packs those its
/// `cargo test --workspace` build made, so nothing is built twice).
pub fn deb(root: &Path, profile: Profile, cargo: Option<&mut Command>) -> Result<PathBuf> {
    if let Some(cargo) = cargo {
        cargo
            .current_dir(root)
            .args(["build", "-p", "daemon", "-p", "cli"]);
        if profile == Profile::Release {
            cargo.arg("--release");
        }
        crate::run(cargo)?;
    }
    let bin = root.join("target").join(profile.target_dir());
    for name in ["hv", "hvd"] {
        if !bin.join(name).is_file() {
            bail!(
                "{} is missing: build it first (cargo build -p daemon -p cli)",
                bin.join(name).display()
            );
        }
    }
    // The debug package goes into its own directory, so it never replaces the release one.
    let out_dir = match profile {
        Profile::Release => root.join("target/deb"),
        Profile::Debug => root.join("target/deb/debug"),
    };
    let stage = out_dir.join("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot remove {}", stage.display()))?;
    }
    mkdirs(&stage)?;

    // The binaries, without debug information or symbols.
    for (name, dest) in [("hv", "usr/bin/hv"), ("hvd", "usr/sbin/hvd")] {
        let dest = stage.join(dest);
        mkdirs(dest.parent().context("no parent")?)?;
        crate::run(
            Command::new("objcopy")
                .args([
                    "--strip-all",
                    "--remove-section=.comment",
                    "--remove-section=.note",
                ])
                .arg(bin.join(name))
                .arg(&dest),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    }
    let hv = stage.join("usr/bin/hv");
    let hvd = stage.join("usr/sbin/hvd");

    let packaging = root.join("packaging");
    let read = |p: &str| {
        let path = packaging.join(p);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    put(
        &stage.join("lib/systemd/system/hvd.service"),
        &read("hvd.service")?,
        0o644,
    )?;
    put(&stage.join("etc/hv/hvd.toml"), &read("hvd.toml")?, 0o644)?;

    // Completions and man pages, from the binaries' own clap definitions.
    for (shell, dest) in [
        ("bash", "usr/share/bash-completion/completions/hv"),
        ("zsh", "usr/share/zsh/vendor-completions/_hv"),
        ("fish", "usr/share/fish/vendor_completions.d/hv.fish"),
    ] {
        let script = out(Command::new(&hv).args(["completion", shell]))?;
        put(&stage.join(dest), script.as_bytes(), 0o644)?;
    }
    let man_tmp = out_dir.join("man");
    if man_tmp.exists() {
        std::fs::remove_dir_all(&man_tmp)?;
    }
    mkdirs(&man_tmp)?;
    out(Command::new(&hv).arg("man-pages").arg(&man_tmp))?;
    out(Command::new(&hvd).arg("--man-page").arg(&man_tmp))?;
    for page in files_under(&man_tmp)? {
        let name = page
            .file_name()
            .and_then(|n| n.to_str())
            .context("a man page without a name")?;
        let section = name.rsplit('.').next().unwrap_or("1");
        let bytes = std::fs::read(&page)?;
        put(
            &stage.join(format!("usr/share/man/man{section}/{name}.gz")),
            &gzip(&bytes)?,
            0o644,
        )?;
    }
    std::fs::remove_dir_all(&man_tmp)?;

    // Documentation.
    let version = version();
    let doc = stage.join("usr/share/doc/hv");
    let readme = std::fs::read(root.join("README.md")).context("cannot read README.md")?;
    put(&doc.join("README.md.gz"), &gzip(&readme)?, 0o644)?;
    put(&doc.join("copyright"), &read("debian/copyright")?, 0o644)?;
    put(
        &stage.join("usr/share/lintian/overrides/hv"),
        &read("debian/lintian-overrides")?,
        0o644,
    )?;
    let commit =
        out(Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--short=12", "HEAD"]))?;
    let date = out(Command::new("git")
        .current_dir(root)
        .args(["log", "-1", "--format=%cD"]))?;
    put(
        &doc.join("changelog.Debian.gz"),
        &gzip(changelog(&version, commit.trim(), date.trim()).as_bytes())?,
        0o644,
    )?;

    // DEBIAN/: control, conffiles, maintainer scripts, md5sums.
    let shlibs = shlibdeps(&out_dir, &[&hv, &hvd])?;
    let mut files = files_under(&stage)?;
    let installed_kib = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len().div_ceil(1024)))
        .sum::<std::io::Result<u64>>()?;
    let control = Control {
        version: version.clone(),
        shlibs,
        installed_kib,
    };
    let debian = stage.join("DEBIAN");
    put(&debian.join("control"), control.render().as_bytes(), 0o644)?;
    put(&debian.join("conffiles"), b"/etc/hv/hvd.toml\n", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &debian.join(script),
            &read(&format!("debian/{script}"))?,
            0o755,
        )?;
    }
    files.retain(|f| !f.starts_with(stage.join("etc")));
    let rel: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&stage).ok())
        .map(|p| p.display().to_string())
        .collect();
    let sums = out(Command::new("md5sum").current_dir(&stage).args(&rel))?;
    put(&debian.join("md5sums"), sums.as_bytes(), 0o644)?;

    let deb = out_dir.join(format!("hv_{version}_amd64.deb"));
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The shared-library dependencies of the binaries: `dpkg-shlibdeps` when it is installed,
/// else [`shlibs_fallback`].
fn shlibdeps(work: &Path, binaries: &[&Path]) -> Result<String> {
    if Command::new("dpkg-shlibdeps")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        // dpkg-shlibdeps wants a source tree: a debian/control naming the package.
        let tree = work.join("shlibdeps");
        put(
            &tree.join("debian/control"),
            b"Source: hv\n\nPackage: hv\nArchitecture: amd64\n",
            0o644,
        )?;
        let mut cmd = Command::new("dpkg-shlibdeps");
        cmd.current_dir(&tree).arg("-O");
        for b in binaries {
            cmd.arg(format!("-e{}", b.display()));
        }
        let printed = out(&mut cmd)?;
        std::fs::remove_dir_all(&tree)?;
        return parse_shlibdeps(&printed)
            .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {printed:?}"));
    }
    eprintln!("dpkg-shlibdeps is not installed: computing the libc6 version from the binaries");
    let bytes = binaries
        .iter()
        .map(|b| std::fs::read(b).with_context(|| format!("cannot read {}", b.display())))
        .collect::<Result<Vec<_>>>()?;
    let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    Ok(shlibs_fallback(&slices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_args(&args(&[])).unwrap(), Profile::Release);
        assert_eq!(
            parse_args(&args(&["--profile", "debug"])).unwrap(),
            Profile::Debug
        );
        assert!(parse_args(&args(&["--profile", "fast"]))
            .unwrap_err()
            .to_string()
            .contains("fast"));
        assert!(parse_args(&args(&["--release"])).is_err());
    }

    #[test]
    fn shlibs_from_the_bytes_take_the_highest_glibc() {
        let a: &[u8] = b"..GLIBC_2.2.5\0GLIBC_2.34\0libgcc_s.so.1\0";
        let b: &[u8] = b"GLIBC_2.17\0GLIBC_2.\0";
        assert_eq!(
            shlibs_fallback(&[a, b]),
            "libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
        );
        assert_eq!(shlibs_fallback(&[b]), "libc6 (>= 2.17)");
    }

    #[test]
    fn shlibdeps_output() {
        assert_eq!(
            parse_shlibdeps("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n").as_deref(),
            Some("libc6 (>= 2.34), libgcc-s1 (>= 4.2)")
        );
        assert_eq!(parse_shlibdeps("shlibs:Depends=\n"), None);
    }

    #[test]
    fn control_lists_libraries_first_then_hosts_tools() {
        let c = Control {
            version: "0.0.0-1".into(),
            shlibs: "libc6 (>= 2.34)".into(),
            installed_kib: 12,
        }
        .render();
        assert!(c.contains("Depends: libc6 (>= 2.34), adduser, qemu-system-x86, qemu-utils, dnsmasq-base, nftables\n"), "{c}");
        assert!(c.contains("Recommends: ovmf, swtpm\n"));
        assert!(c.contains("Installed-Size: 12\n"));
        assert!(c.ends_with("never stops a VM.\n"));
    }
}
