//! `hv import libvirt` against a real hvd (issue 14 item 5): a direct-kernel-boot domain XML
//! pointing at the tiny test guest and a qcow2 disk boots under TCG; `--dry-run` defines
//! nothing; a file hv cannot import, a name clash, or a VM hvd refuses leaves nothing defined.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::{guest, TestHvd};

fn hvd_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hv")).with_file_name("hvd");
    assert!(p.exists(), "{} is missing: build hvd first", p.display());
    p
}

fn hv(h: &TestHvd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("--socket")
        .arg(&h.socket)
        .args(args)
        .output()
        .expect("hv runs")
}

fn ok(h: &TestHvd, args: &[&str]) -> String {
    let o = hv(h, args);
    assert!(
        o.status.success(),
        "hv {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must exit 1 with an `error:` naming `says`.
fn fails(h: &TestHvd, args: &[&str], says: &str) {
    let o = hv(h, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "hv {args:?}: {err}");
    assert!(
        err.contains("error:") && err.contains(says),
        "hv {args:?}: {err:?} does not say {says:?}"
    );
}

fn vm_names(h: &TestHvd) -> String {
    ok(h, &["list", "--all"])
}

/// A domain XML as `virsh dumpxml` writes a direct-kernel-boot VM with one qcow2 disk.
fn domain_xml(name: &str, g: &guest::TinyGuest, disk: &Path, extra_devices: &str) -> String {
    format!(
        r#"<domain type='kvm'>
  <name>{name}</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <sound model='ich9'/>
{extra_devices}
  </devices>
</domain>
"#,
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        cmdline = guest::CMDLINE,
        disk = disk.display(),
    )
}

fn qcow2(path: &Path) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
}

#[test]
fn issue_14_import_libvirt_direct_kernel_boot_starts_and_failures_define_nothing() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let g = guest::tiny_guest().unwrap();
    let disk = h.dir.join("imp.qcow2");
    qcow2(&disk);
    let good = h.dir.join("imp.xml");
    std::fs::write(&good, domain_xml("imp", &g, &disk, "")).unwrap();
    let good = good.to_str().unwrap();

    // --dry-run prints the spec and the notes, and defines nothing.
    let out = ok(&h, &["import", "libvirt", good, "--dry-run"]);
    assert!(out.contains("name = \"imp\""), "{out}");
    assert!(
        out.contains("uuid = \"4dea22b3-1d52-d8f3-2516-782e98ab3fa0\""),
        "libvirt's UUID is kept: {out}"
    );
    assert!(out.contains("# /domain/devices/sound[1]: dropped"), "{out}");
    assert!(
        out.contains("# /domain/devices/disk[1]/driver/@discard: dropped"),
        "{out}"
    );
    assert!(!out.contains("autostart"), "{out}");
    let out = ok(&h, &["import", "libvirt", good, "--dry-run", "--autostart"]);
    assert!(out.contains("autostart = true"), "{out}");
    assert!(!vm_names(&h).contains("imp"), "a dry run defines nothing");

    // An essential element hv cannot map: nothing is defined, not even from the good file.
    let bad = h.dir.join("bad.xml");
    let bad_xml = domain_xml("bad", &g, &h.dir.join("other.qcow2"), "").replace(
        "<disk type='file' device='disk'>",
        "<disk type='block' device='disk'>",
    );
    std::fs::write(&bad, bad_xml).unwrap();
    let bad = bad.to_str().unwrap();
    fails(
        &h,
        &["import", "libvirt", good, bad],
        "/domain/devices/disk[1]/@type",
    );
    fails(&h, &["import", "libvirt", good, bad], "nothing was defined");
    let list = vm_names(&h);
    assert!(!list.contains("imp") && !list.contains("bad"), "{list}");

    // Two files defining one name: refused before anything is defined.
    fails(
        &h,
        &["import", "libvirt", good, good],
        "both define a VM named imp",
    );

    // hvd refuses the second VM (no such network): the first is undefined again.
    let second = h.dir.join("second.xml");
    let disk2 = h.dir.join("second.qcow2");
    qcow2(&disk2);
    std::fs::write(
        &second,
        domain_xml(
            "second",
            &g,
            &disk2,
            "<interface type='network'><source network='nosuchnet'/><model type='virtio'/></interface>",
        )
        // Its own UUID: the refusal is the network's.
        .replace("4dea22b3-", "5dea22b3-"),
    )
    .unwrap();
    fails(
        &h,
        &["import", "libvirt", good, second.to_str().unwrap()],
        "hvd refused VM second",
    );
    let list = vm_names(&h);
    assert!(!list.contains("imp") && !list.contains("second"), "{list}");

    // The real import: defined, started, and the guest boots from the imported kernel with
    // the imported disk.
    let out = ok(&h, &["import", "libvirt", good, "--start"]);
    assert!(out.contains("VM imp imported from"), "{out}");
    assert!(out.contains("/domain/devices/sound[1]: dropped"), "{out}");
    assert!(out.contains("VM imp started"), "{out}");
    ok(
        &h,
        &[
            "wait",
            "imp",
            "--console",
            guest::READY_MARKER,
            "--timeout",
            "120",
        ],
    );
    let log = ok(&h, &["console", "imp", "--log"]);
    assert!(
        log.contains(&format!("{} vda", guest::DISK_MARKER)),
        "{log}"
    );
    let dump = ok(&h, &["dump", "imp"]);
    assert!(dump.contains(&disk.display().to_string()), "{dump}");

    // The same XML again is a name clash.
    fails(&h, &["import", "libvirt", good], "exists already");
    ok(&h, &["destroy", "imp"]);
}
