//! CDs for the browser console's tests (issue 11), built like the installer CD ([`crate::iso`]):
//!
//! - [`boot_prompt_iso`]: a BIOS-bootable CD whose isolinux waits at its `boot:` prompt forever
//!   (`PROMPT 1`, `TIMEOUT 0`, also on the serial port) until an entry's name is typed. Each
//!   of [`BOOT_PROMPT_ENTRIES`] boots the tiny guest with `hv.entry=NAME`, so its init prints
//!   [`crate::guest::BOOT_ENTRY_MARKER`]`NAME` (typing `beta` prints `HV-BOOTED-ENTRY=beta`).
//!   Enter alone boots `alpha`. Under TCG, isolinux reads the kernel and initrd in about 6 s.
//! - [`data_iso`]: a small non-bootable CD with the volume label [`MEDIA_LABEL`] and one file,
//!   [`MEDIA_FILE`]; the tiny guest (with [`crate::guest::IDE_FLAG`]) reports it with `hv-media`
//!   as `HV-MEDIA label=HVMEDIA`.
//!
//! Both live in the cache dir of [`crate::guest`] under names that hash all their inputs, and
//! build under the same lock, in a temp dir renamed into place.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::guest::{self, CMDLINE};
use crate::iso::{self, Package};

/// The boot-prompt CD's entries, in its menu's order (the first is the default).
pub const BOOT_PROMPT_ENTRIES: &[&str] = &["alpha", "beta"];
/// The text isolinux prints when it waits on the boot-prompt CD.
pub const BOOT_PROMPT: &str = "boot:";
/// The volume label of [`data_iso`].
pub const MEDIA_LABEL: &str = "HVMEDIA";
/// The one file on [`data_iso`] (at its root) and its contents.
pub const MEDIA_FILE: (&str, &str) = ("hello.txt", "hello from the hv media CD\n");

/// Bump when the build logic changes in a way the hashed inputs do not capture.
pub const BUILDER_VERSION: u32 = 1;

const BOOT_PROMPT_CFG: &str = include_str!("../assets/iso/boot-prompt.cfg");

/// Builds (or returns the cached) boot-prompt CD; see the module docs.
pub fn boot_prompt_iso() -> Result<PathBuf> {
    let cache = guest::cache_root()?;
    let tiny = guest::tiny_guest_in(&cache)?; // before taking the lock: it takes it too
    let packages = iso::resolve_packages(&cache)?;
    let guest_dir = tiny
        .initrd
        .parent()
        .and_then(Path::file_name)
        .context("tiny guest path has no dir")?
        .to_string_lossy()
        .into_owned();
    let key = key(
        &["boot-prompt", &guest_dir, BOOT_PROMPT_CFG, CMDLINE],
        &packages,
    );
    cached(
        &cache,
        &format!("bootprompt-{key}"),
        "boot-prompt.iso",
        |tmp, iso| {
            let (debs, cd, tools, tree) = dirs(tmp)?;
            iso::extract_packages(&packages, &debs, &cd, &tools)?;
            let cfg = BOOT_PROMPT_CFG.replace("@CMDLINE@", CMDLINE);
            guest::write_file(&tree.join("isolinux/isolinux.cfg"), 0o644, &cfg)?;
            let copies = [
                (
                    cd.join("usr/lib/ISOLINUX/isolinux.bin"),
                    "isolinux/isolinux.bin",
                ),
                (
                    cd.join("usr/lib/syslinux/modules/bios/ldlinux.c32"),
                    "isolinux/ldlinux.c32",
                ),
                (tiny.kernel.clone(), "boot/vmlinuz"),
                (tiny.initrd.clone(), "boot/initrd.gz"),
            ];
            for (src, dest) in copies {
                let dest = tree.join(dest);
                fs::create_dir_all(dest.parent().context("path has no parent")?)?;
                fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            }
            let mut xorriso = iso::xorriso(&tools);
            xorriso
                .args([
                    "-as",
                    "mkisofs",
                    "-quiet",
                    "-r",
                    "-V",
                    "HV_BOOTPROMPT",
                    "-o",
                ])
                .arg(iso)
                .args(["-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin"])
                .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
                .arg(&tree);
            guest::run(&mut xorriso)?;
            Ok(())
        },
    )
}

/// Builds (or returns the cached) data CD labelled [`MEDIA_LABEL`]; see the module docs.
pub fn data_iso() -> Result<PathBuf> {
    let cache = guest::cache_root()?;
    let packages = iso::resolve_packages(&cache)?;
    let key = key(
        &["data", MEDIA_LABEL, MEDIA_FILE.0, MEDIA_FILE.1],
        &packages,
    );
    cached(&cache, &format!("media-{key}"), "media.iso", |tmp, iso| {
        let (debs, cd, tools, tree) = dirs(tmp)?;
        iso::extract_packages(&packages, &debs, &cd, &tools)?;
        guest::write_file(&tree.join(MEDIA_FILE.0), 0o644, MEDIA_FILE.1)?;
        let mut xorriso = iso::xorriso(&tools);
        xorriso
            .args(["-as", "mkisofs", "-quiet", "-r", "-V", MEDIA_LABEL, "-o"])
            .arg(iso)
            .arg(&tree);
        guest::run(&mut xorriso)?;
        Ok(())
    })
}

/// Hash of a build's inputs, as 16 hex digits.
fn key(parts: &[&str], packages: &[Package]) -> String {
    let mut h = Sha256::new();
    h.update(format!("hv test media builder {BUILDER_VERSION}\n"));
    for part in parts {
        h.update(format!("{}\n{part}\n", part.len()));
    }
    h.update(format!("{packages:?}\n"));
    guest::hex16(h)
}

/// `debs`, `cd`, `tools` and `tree` dirs under `tmp`, created.
fn dirs(tmp: &Path) -> Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let dirs = (
        tmp.join("debs"),
        tmp.join("cd"),
        tmp.join("tools"),
        tmp.join("tree"),
    );
    for dir in [&dirs.0, &dirs.1, &dirs.2, &dirs.3] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(dirs)
}

/// `<cache>/<dir>/<file>`, made by `build(tmp, out_file)` under the cache lock when missing.
fn cached(
    cache: &Path,
    dir: &str,
    file: &str,
    build: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = cache.join(dir);
    let path = dir.join(file);
    if dir.is_dir() {
        return Ok(path);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = guest::lock(&cache.join(".lock"))?;
    if dir.is_dir() {
        return Ok(path); // another process built it while we waited
    }
    guest::remove_stale_temps(cache)?;
    let tmp = cache.join(format!(".tmp-{}", guest::unique_suffix()));
    let out = tmp.join("out");
    let built = fs::create_dir_all(&out)
        .with_context(|| format!("creating {}", out.display()))
        .and_then(|()| build(&tmp, &out.join(file)))
        .and_then(|()| {
            ensure!(out.join(file).is_file(), "the build made no {file}");
            fs::rename(&out, &dir).with_context(|| format!("renaming {} into place", out.display()))
        });
    let cleanup = fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()));
    built
        .and(cleanup)
        .with_context(|| format!("building {file}"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_prompt_waits_forever_and_each_entry_marks_itself() {
        assert!(BOOT_PROMPT_CFG.contains("\nPROMPT 1\n"));
        assert!(BOOT_PROMPT_CFG.contains("\nTIMEOUT 0\n"));
        for entry in BOOT_PROMPT_ENTRIES {
            assert!(
                BOOT_PROMPT_CFG.contains(&format!("LABEL {entry}\n")),
                "{entry}"
            );
            assert!(
                BOOT_PROMPT_CFG.contains(&format!("APPEND @CMDLINE@ hv.entry={entry}\n")),
                "{entry}"
            );
        }
    }

    #[test]
    fn builds_the_media_cds() {
        let data = fs::read(data_iso().expect("data ISO builds")).expect("readable");
        // The primary volume descriptor (sector 16) with the label at offset 40, space-padded.
        assert_eq!(data.get(0x8001..0x8006), Some(&b"CD001"[..]));
        let label = data.get(0x8028..0x8028 + 32).expect("label field");
        assert_eq!(String::from_utf8_lossy(label).trim_end(), MEDIA_LABEL);
        let boot = fs::read(boot_prompt_iso().expect("boot-prompt ISO builds")).expect("readable");
        assert_eq!(boot.get(0x8001..0x8006), Some(&b"CD001"[..]));
    }
}
