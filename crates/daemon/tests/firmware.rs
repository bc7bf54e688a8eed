//! Issue 14, item 1: UEFI (OVMF), Secure Boot and a TPM (swtpm) on real guests under TCG.
//! The guest is the tiny guest as an unsigned unified kernel image on an EFI system partition
//! (`testkit::efi`): OVMF boots it from `\EFI\BOOT\BOOTX64.EFI`, and refuses it with Secure
//! Boot and Microsoft's keys. Each VM's variable store and TPM state live in its directory and
//! go with it; its swtpm runs as its QEMU's uid and ends with its QEMU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::ErrorCode;
use model::{Firmware, Machine, Size, VmSpec, VmState};
use testkit::{confinement::Privileges, efi, guest, TestHvd};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

/// UEFI under TCG on a shared host: OVMF alone takes a while.
const BOOT: Duration = Duration::from_secs(240);

/// A UEFI VM booting a private copy of the ESP disk.
fn uefi_spec(h: &TestHvd, name: &str) -> VmSpec {
    let disk = h.dir.join(format!("{name}.raw"));
    std::fs::copy(efi::esp_disk().expect("EFI disk builds"), &disk).expect("copy the EFI disk");
    let mut s = VmSpec::new(name.parse().unwrap());
    s.memory = Size(256 << 20);
    s.machine = Machine::Q35;
    s.firmware = Firmware::Uefi;
    s.disks.push(
        format!("path={},format=raw", disk.display())
            .parse()
            .unwrap(),
    );
    s
}

/// swtpm processes whose state dir is under this hvd's state dir.
fn swtpm_pids(h: &TestHvd) -> Vec<u32> {
    let needle = h.state_dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("swtpm") && cmd.contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Waits (up to a deadline) until this hvd has no swtpm left.
fn wait_no_swtpm(h: &TestHvd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !swtpm_pids(h).is_empty() {
        assert!(
            Instant::now() < deadline,
            "swtpm still running: {:?}",
            swtpm_pids(h)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends TPM2_GetRandom(8) to `/dev/tpm0` in guest "efi" and expects a successful reply.
/// Each call tags its reply line (`TPM-RN`), so a later call cannot match an earlier reply.
fn tpm_answers(h: &TestHvd, n: u32) {
    let cmd = format!(
        r"exec 3<>/dev/tpm0; printf '\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x7b\x00\x08' >&3; dd bs=64 count=1 <&3 2>/dev/null | hexdump -C | head -1 | sed 's/^/TPM-R{n} /'; exec 3<&-"
    );
    h.run_in_guest(
        "efi",
        &cmd,
        &format!("TPM-R{n} 00000000  80 01 00 00 00 14 00 00  00 00 00 08"),
    )
    .unwrap();
}

fn vm_dir(h: &TestHvd, name: &str) -> PathBuf {
    h.state_dir.join("vms").join(name)
}

#[test]
fn uefi_guest_boots_from_its_esp_and_sees_its_tpm() {
    let mut h = hvd();
    let mut spec = uefi_spec(&h, "efi");
    spec.tpm = true;
    h.client().create(spec, false).unwrap();
    // The variable store is the VM's from its definition on, a copy of OVMF's template.
    let nvram = vm_dir(&h, "efi").join("nvram.fd");
    assert_eq!(
        std::fs::read(&nvram).unwrap(),
        std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap()
    );
    let started = Instant::now();
    assert_eq!(
        h.client().start("efi", false).unwrap().state,
        VmState::Running
    );
    h.wait_console("efi", guest::READY_MARKER, BOOT).unwrap();
    eprintln!(
        "UEFI boot to {}: {:?}",
        guest::READY_MARKER,
        started.elapsed()
    );
    h.wait_ready("efi").unwrap();
    let qemus = h.check_qemus_confined().unwrap();
    assert_eq!(qemus.len(), 1);
    let qemu_uid = Privileges::of(qemus[0]).unwrap().uid();
    let tpms = swtpm_pids(&h);
    assert_eq!(tpms.len(), 1, "one swtpm per TPM VM");
    let p = Privileges::of(tpms[0]).unwrap();
    p.check_confined().unwrap();
    assert_eq!(p.uid(), qemu_uid, "swtpm runs as the VM's QEMU uid");

    // The guest has the TPM (the cloud kernel has tpm_crb built in) and booted through OVMF.
    h.run_in_guest(
        "efi",
        "ls /dev/tpm0 /sys/firmware/efi >/dev/null && echo TPM-AND-EFI-$((40+2))",
        "TPM-AND-EFI-42",
    )
    .unwrap();

    // The TPM answers a real command (TPM2_GetRandom of 8 bytes: a 20-byte reply, rc 0)
    // through the kernel driver, QEMU and swtpm; and still does after hvd was killed and
    // came back (swtpm belongs to the VM's run, not to hvd).
    tpm_answers(&h, 1);
    h.kill9().unwrap();
    h.start_again().unwrap();
    assert_eq!(h.client().info("efi").unwrap().state, VmState::Running);
    assert_eq!(swtpm_pids(&h), tpms, "the same swtpm after hvd's restart");
    tpm_answers(&h, 2);

    let info = h.client().info("efi").unwrap();
    let s = info.spec.unwrap();
    assert_eq!(
        (s.firmware, s.secure_boot, s.tpm),
        (Firmware::Uefi, false, true)
    );

    // RAM snapshots and pflash do not mix: refused, naming the way out.
    let e = h
        .client()
        .snapshot_create(
            "efi",
            &api::CreateSnapshotRequest {
                name: "s1".parse().unwrap(),
                description: None,
                disk_only: false,
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("--disk-only"), "{e}");

    // swtpm ends with its QEMU; the TPM state stays with the VM.
    h.client().destroy("efi").unwrap();
    wait_no_swtpm(&h);
    assert!(vm_dir(&h, "efi").join("tpm/tpm2-00.permall").is_file());
    assert!(nvram.is_file());
    // Undefine removes the variable store and the TPM state with the VM's directory.
    h.client().undefine("efi", false, false).unwrap();
    assert!(!vm_dir(&h, "efi").exists(), "the VM's directory is gone");
}

#[test]
fn secure_boot_refuses_an_unsigned_image() {
    let h = hvd();
    let mut spec = uefi_spec(&h, "sb");
    spec.secure_boot = true;
    h.client().create(spec, true).unwrap();
    // Microsoft's keys enrolled: the variable store is the template with them.
    assert_eq!(
        std::fs::read(vm_dir(&h, "sb").join("nvram.fd")).unwrap(),
        std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").unwrap()
    );
    h.check_qemus_confined().unwrap();
    // The same image that boots without Secure Boot (test above) never starts its kernel:
    // OVMF refuses it, and the guest never prints its marker.
    let e = h
        .wait_console("sb", guest::READY_MARKER, Duration::from_secs(120))
        .unwrap_err();
    assert!(e.to_string().contains("no console output"), "{e}");
    assert_eq!(h.client().info("sb").unwrap().state, VmState::Running);
    // Switching Secure Boot off is refused while it runs, and once it is off makes the
    // variable store again from the template without keys: then the same image boots.
    let mut spec = h.client().info("sb").unwrap().spec.unwrap();
    spec.secure_boot = false;
    let e = h.client().update("sb", &spec).unwrap_err();
    assert!(e.to_string().contains("shut down"), "{e}");
    h.client().destroy("sb").unwrap();
    h.client().update("sb", &spec).unwrap();
    assert_eq!(
        std::fs::read(vm_dir(&h, "sb").join("nvram.fd")).unwrap(),
        std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap()
    );
    h.client().start("sb", false).unwrap();
    h.wait_console("sb", guest::READY_MARKER, BOOT).unwrap();
    h.client().destroy("sb").unwrap();
}

#[test]
fn bad_firmware_specs_and_a_failed_start_leave_nothing() {
    let h = hvd();
    // Secure Boot without UEFI, or on the pc machine: refused before anything is made.
    let mut s = uefi_spec(&h, "bad");
    s.firmware = Firmware::Bios;
    s.secure_boot = true;
    let e = h.client().create(s.clone(), false).unwrap_err();
    assert!(e.to_string().contains("--firmware uefi"), "{e}");
    s.firmware = Firmware::Uefi;
    s.machine = Machine::PC;
    let e = h.client().create(s, false).unwrap_err();
    assert!(e.to_string().contains("--machine q35"), "{e}");
    assert!(!vm_dir(&h, "bad").exists());

    // A start that fails in QEMU after swtpm started (a damaged variable store: QEMU refuses
    // a pflash of the wrong size) leaves no swtpm and no QEMU.
    let mut spec = uefi_spec(&h, "locked");
    spec.tpm = true;
    h.client().create(spec, false).unwrap();
    let nvram = vm_dir(&h, "locked").join("nvram.fd");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&nvram)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let e = h.client().start("locked", false).unwrap_err();
    assert!(e.to_string().contains("firmware"), "{e}");
    wait_no_swtpm(&h);
    assert!(h.qemu_pids().is_empty());
    assert_eq!(h.client().info("locked").unwrap().state, VmState::Shutoff);
    h.client().undefine("locked", false, false).unwrap();
    assert!(!vm_dir(&h, "locked").exists());
}
