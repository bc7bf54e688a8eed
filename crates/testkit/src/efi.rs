//! A UEFI-bootable disk for the firmware tests (issue 14): a raw image with a GPT whose one
//! partition is an EFI system partition (FAT) holding `\EFI\BOOT\BOOTX64.EFI`, the removable
//! media path OVMF boots with no boot entries. That file is the tiny guest as a unified kernel
//! image: systemd's EFI stub (Debian `systemd-boot-efi`, downloaded and extracted, never
//! installed) with the kernel, the initramfs and the command line added as PE sections by
//! `objcopy`, so no boot loader and no EFI shell are needed. The image is not signed, so
//! OVMF with Secure Boot and Microsoft's keys refuses it.
//!
//! Host tools: `objcopy` (binutils), `mformat`/`mmd`/`mcopy` (mtools, no loop mount), `sfdisk`
//! (fdisk). Cached in the guest cache dir under `efi-<hash of every input>/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::guest::{self, CMDLINE_NO_ACPI};

/// Bump when the build logic changes in a way the hashed inputs do not capture.
pub const BUILDER_VERSION: u32 = 1;

const STUB_PACKAGE: &str = "systemd-boot-efi";
const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// The ESP: 32 MiB of FAT16 from sector 2048; the image ends with room for the backup GPT.
const ESP_START: u64 = 2048;
const ESP_SECTORS: u64 = 65536;
const DISK_BYTES: u64 = (ESP_START + ESP_SECTORS + 2048) * 512;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The guest's kernel command line in the UKI (no acpid: nothing here presses the button).
pub const EFI_CMDLINE: &str = CMDLINE_NO_ACPI;

/// Builds (or returns the cached) raw ESP disk; copy it before giving it to a VM.
pub fn esp_disk() -> Result<PathBuf> {
    let cache = guest::cache_root()?;
    let tiny = guest::tiny_guest_in(&cache)?; // before taking the lock: it takes it too
    let stub_info = guest::apt_show_cached(&cache, ".resolved-efi", &[STUB_PACKAGE])?;
    let version = stub_info
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .with_context(|| format!("apt-cache shows no {STUB_PACKAGE}"))?
        .to_string();
    let guest_dir = tiny
        .initrd
        .parent()
        .and_then(Path::file_name)
        .context("tiny guest path has no dir")?
        .to_string_lossy()
        .into_owned();
    let mut h = Sha256::new();
    h.update(format!(
        "hv efi disk builder {BUILDER_VERSION}\n{guest_dir}\n{STUB_PACKAGE}={version}\n{EFI_CMDLINE}\n"
    ));
    let key = guest::hex16(h);
    let dir = cache.join(format!("efi-{key}"));
    let disk = dir.join("esp-disk.raw");
    if disk.is_file() {
        return Ok(disk);
    }
    let _lock = guest::lock(&cache.join(".lock"))?;
    if disk.is_file() {
        return Ok(disk);
    }
    guest::remove_stale_temps(&cache)?;
    let tmp = cache.join(format!(".tmp-{}", guest::unique_suffix()));
    let built = build(&tiny, &version, &tmp).and_then(|out| {
        fs::rename(&out, &dir).with_context(|| format!("renaming {} into place", out.display()))
    });
    let cleanup = fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()));
    built.and(cleanup).context("building the EFI test disk")?;
    Ok(disk)
}

fn build(tiny: &guest::TinyGuest, version: &str, tmp: &Path) -> Result<PathBuf> {
    let (debs, x, out) = (tmp.join("debs"), tmp.join("x"), tmp.join("out"));
    for d in [&debs, &x, &out] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut download = Command::new("apt-get");
    download
        .current_dir(&debs)
        .args(["download", "-q"])
        .arg(format!("{STUB_PACKAGE}={version}"));
    guest::run_with_apt_update(&mut download)?;
    let deb = guest::find_entry(&debs, |n| {
        n.starts_with(&format!("{STUB_PACKAGE}_")) && n.ends_with(".deb")
    })?;
    guest::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x))?;

    // The unified kernel image: sections at addresses above the stub's own.
    let cmdline = tmp.join("cmdline");
    fs::write(&cmdline, EFI_CMDLINE)?;
    let osrel = tmp.join("os-release");
    fs::write(&osrel, "ID=hv-tiny\nNAME=\"hv tiny test guest\"\n")?;
    let uki = tmp.join("BOOTX64.EFI");
    let section = |name: &str, path: &Path, vma: &str| {
        [
            "--add-section".to_string(),
            format!("{name}={}", path.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma}"),
        ]
    };
    let mut objcopy = Command::new("objcopy");
    objcopy
        .args(section(".osrel", &osrel, "0x20000"))
        .args(section(".cmdline", &cmdline, "0x30000"))
        .args(section(".linux", &tiny.kernel, "0x2000000"))
        .args(section(".initrd", &tiny.initrd, "0x3000000"))
        .arg(x.join(STUB))
        .arg(&uki);
    guest::run(&mut objcopy)?;

    // The ESP as a FAT image, then placed into a GPT disk.
    let esp = tmp.join("esp.img");
    fs::File::create(&esp)?.set_len(ESP_SECTORS * 512)?;
    let m = |tool: &str| {
        let mut c = Command::new(tool);
        c.arg("-i").arg(&esp);
        c
    };
    guest::run(m("mformat").args(["-v", "HVESP", "::"]))?;
    guest::run(m("mmd").args(["::/EFI", "::/EFI/BOOT"]))?;
    guest::run(m("mcopy").arg(&uki).arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    let disk = out.join("esp-disk.raw");
    fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped());
    let table =
        format!("label: gpt\nstart={ESP_START}, size={ESP_SECTORS}, type={ESP_TYPE}, name=ESP\n");
    let mut child = sfdisk
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("running sfdisk (Debian package fdisk)")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("sfdisk stdin")?,
        table.as_bytes(),
    )?;
    drop(child.stdin.take());
    anyhow::ensure!(
        child.wait()?.success(),
        "sfdisk failed on {}",
        disk.display()
    );
    let fat = fs::read(&esp)?;
    let mut f = fs::OpenOptions::new().write(true).open(&disk)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(ESP_START * 512))?;
    std::io::Write::write_all(&mut f, &fat)?;
    f.sync_all()?;
    Ok(out)
}
