//! Domain XML in the shapes `virsh dumpxml` and `virt-install` write → hv specs and notes.
//! Each `tests/data/NAME.xml` has a golden `NAME.out` (the notes as comments, then the spec as
//! TOML); `HV_UPDATE_GOLDEN=1 cargo test -p libvirt-xml` rewrites them.

use std::path::PathBuf;

use libvirt_xml::{convert, Conversion, ImportError};
use model::{BootDevice, DiskBus, Firmware, GraphicsSpec, MachineFamily, NicKind, NicModel};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn render(c: &Conversion) -> String {
    let mut s = String::new();
    for n in &c.notes {
        s.push_str(&format!("# {n}\n"));
    }
    s.push_str(&toml::to_string(&c.spec).expect("spec serializes"));
    s
}

/// Converts `NAME.xml`, compares with `NAME.out`, and returns the conversion.
fn check(name: &str) -> Conversion {
    let xml = std::fs::read_to_string(data(&format!("{name}.xml"))).expect("test data");
    let c = convert(&xml).unwrap_or_else(|e| panic!("{name}: {e} ({e:?})"));
    let got = render(&c);
    let golden = data(&format!("{name}.out"));
    if std::env::var_os("HV_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        got, want,
        "{name}: rerun with HV_UPDATE_GOLDEN=1 and review the diff"
    );
    c
}

fn note<'a>(c: &'a Conversion, xpath: &str) -> &'a str {
    c.notes
        .iter()
        .find(|n| n.xpath == xpath)
        .map(|n| n.what.as_str())
        .unwrap_or_else(|| panic!("no note on {xpath}: {:#?}", c.notes))
}

fn has_note(c: &Conversion, xpath: &str) -> bool {
    c.notes.iter().any(|n| n.xpath == xpath)
}

#[test]
fn nat_network_vm_as_virsh_dumpxml_writes_it() {
    let c = check("nat");
    let s = &c.spec;
    assert_eq!(s.name.as_str(), "debian12");
    assert_eq!((s.vcpus, s.memory.0), (2, 2 << 30));
    assert_eq!(s.machine.to_string(), "pc-q35-7.2");
    assert_eq!(s.disks.len(), 1);
    assert_eq!(s.disks[0].target.as_deref(), Some("vda"));
    assert_eq!(s.nics[0].kind, NicKind::Network);
    assert_eq!(s.nics[0].source.as_deref(), Some("default"));
    assert_eq!(s.nics[0].mac.unwrap().to_string(), "52:54:00:6b:3c:58");
    assert!(matches!(s.graphics, GraphicsSpec::Vnc(ref v) if v.port.is_none()));
    assert_eq!(
        s.uuid.unwrap().to_string(),
        "5b1a3f4e-8c1d-4a6e-9d0b-2f6c1e7a9b10",
        "libvirt's UUID is the VM's"
    );
    assert!(!has_note(&c, "/domain/uuid"));
    assert!(has_note(&c, "/domain/devices/disk[1]/driver/@discard"));
    assert!(has_note(&c, "/domain/devices/disk[1]/address"));
    assert!(has_note(&c, "/domain/devices/interface[1]/target"));
    assert!(has_note(&c, "/domain/devices/channel[1]"));
    assert!(has_note(&c, "/domain/devices/memballoon[1]"));
    assert!(has_note(&c, "/domain/devices/rng[1]"));
    assert!(note(&c, "/domain/devices/video[1]").contains("VGA"));
    assert!(has_note(&c, "/domain/seclabel"));
    // What hv has anyway is silently fine.
    for fine in [
        "/domain/features",
        "/domain/clock",
        "/domain/pm",
        "/domain/devices/serial[1]",
        "/domain/devices/controller[1]",
        "/domain/devices/input[2]",
    ] {
        assert!(
            !c.notes.iter().any(|n| n.xpath.starts_with(fine)),
            "{fine}: {:#?}",
            c.notes
        );
    }
}

#[test]
fn bridged_vm() {
    let c = check("bridged");
    let s = &c.spec;
    assert_eq!((s.vcpus, s.memory.0), (4, 4 << 30));
    assert_eq!(s.machine.family, MachineFamily::Pc);
    assert_eq!(s.nics[0].kind, NicKind::Bridge);
    assert_eq!(s.nics[0].source.as_deref(), Some("br0"));
    let d = &s.disks[0];
    assert_eq!(d.cache.as_str(), "none");
    assert_eq!(d.aio.map(|a| a.as_str()), Some("native"));
    let GraphicsSpec::Vnc(v) = &s.graphics else {
        panic!("{:?}", s.graphics)
    };
    assert_eq!(v.listen.to_string(), "0.0.0.0");
    assert_eq!(v.password.as_deref(), Some("s3cret"));
    assert!(
        c.notes.iter().all(|n| !n.xpath.contains("video")),
        "a vga card is hv's own"
    );
}

#[test]
fn direct_kernel_boot() {
    let c = check("kernel-boot");
    let k = c.spec.kernel.as_ref().unwrap();
    assert_eq!(k.path.to_str(), Some("/var/lib/libvirt/boot/vmlinuz"));
    assert_eq!(
        k.initrd.as_ref().unwrap().to_str(),
        Some("/var/lib/libvirt/boot/initrd.img")
    );
    assert_eq!(k.cmdline.as_deref(), Some("console=ttyS0 panic=-1 quiet"));
    assert_eq!(c.spec.accel.as_str(), "tcg", "type='qemu' is TCG");
    assert_eq!(
        c.spec.graphics,
        GraphicsSpec::None,
        "no <graphics>: headless"
    );
    assert_eq!(c.spec.memory.0, 128 << 20);
}

#[test]
fn several_disks_and_nics() {
    let c = check("multi");
    let s = &c.spec;
    assert_eq!(
        (s.vcpus, s.max_vcpus),
        (2, Some(8)),
        "current vCPUs, maximum"
    );
    assert_eq!(
        (s.memory.0, s.max_memory.map(|m| m.0)),
        (4096 << 20, Some(8192 << 20)),
        "<currentMemory> is what the guest has, <memory> the balloon's maximum"
    );
    assert!(note(&c, "/domain/os/type/@machine").contains("q35"));
    assert_eq!(s.disks.len(), 5);
    assert_eq!(
        s.disks[1].vol.as_ref().unwrap().to_string(),
        "data/db01-data"
    );
    assert_eq!(s.disks[1].bus, DiskBus::Scsi);
    assert!(s.disks[2].readonly);
    assert!(note(&c, "/domain/devices/disk[4]/shareable").contains("this VM alone"));
    assert!(note(&c, "/domain/devices/disk[5]/target/@dev").contains("hvd names"));
    assert_eq!(s.disks[4].target, None);
    assert!(has_note(&c, "/domain/devices/disk[2]/driver/@discard"));
    assert!(has_note(&c, "/domain/devices/disk[2]/serial"));
    assert_eq!(s.nics.len(), 3);
    assert_eq!(s.nics[1].model, NicModel::E1000);
    assert!(has_note(&c, "/domain/devices/interface[2]/mtu"));
    assert_eq!(s.nics[2].kind, NicKind::User);
    assert_eq!(
        s.boot.as_ref().unwrap().0,
        vec![BootDevice::Network, BootDevice::Disk],
        "per-device <boot order=> gives the classes' order"
    );
    assert!(note(&c, "/domain/devices/disk[3]/boot").contains("first disk"));
    assert!(!has_note(&c, "/domain/devices/disk[1]/boot"));
}

#[test]
fn uefi_with_tpm() {
    let c = check("uefi-tpm");
    let s = &c.spec;
    assert_eq!(s.firmware, Firmware::Uefi);
    assert!(s.secure_boot && s.tpm);
    assert!(note(&c, "/domain/os/loader").contains("secure_boot = true"));
    assert!(note(&c, "/domain/os/nvram").contains("fresh UEFI variable store"));
    assert!(!has_note(&c, "/domain/os/@firmware"));
    assert!(
        !has_note(&c, "/domain/features/smm"),
        "hv turns SMM on for Secure Boot"
    );
    assert!(
        !has_note(&c, "/domain/devices/tpm[1]"),
        "tpm-crb on q35 is hv's TPM"
    );
    assert!(has_note(&c, "/domain/features/hyperv"));
    assert!(note(&c, "/domain/clock").contains("localtime"));
    assert!(note(&c, "/domain/devices/graphics[1]").contains("SPICE"));
    assert_eq!(s.graphics, GraphicsSpec::Console);
    assert_eq!(s.disks[0].bus, DiskBus::Sata);

    let xml = std::fs::read_to_string(data("uefi-tpm.xml")).unwrap();
    // A plain pflash loader (virt-install --boot uefi on an older libvirt): UEFI without
    // Secure Boot; a passed-through host TPM is dropped.
    let plain = xml
        .replace("<os firmware='efi'>", "<os>")
        .replace(" secure='yes'", "")
        .replace("name='secure-boot'", "name='x'")
        .replace(
            "<backend type='emulator' version='2.0'/>",
            "<backend type='passthrough'><device path='/dev/tpm0'/></backend>",
        );
    let c = convert(&plain).unwrap();
    assert_eq!(
        (c.spec.firmware, c.spec.secure_boot, c.spec.tpm),
        (Firmware::Uefi, false, false)
    );
    assert!(note(&c, "/domain/devices/tpm[1]").contains("swtpm only"));
    // TPM 1.2 and tpm-tis on q35 become hv's TPM 2.0 CRB, with notes.
    let old = xml
        .replace("model='tpm-crb'", "model='tpm-tis'")
        .replace("version='2.0'", "version='1.2'");
    let c = convert(&old).unwrap();
    assert!(c.spec.tpm);
    assert!(note(&c, "/domain/devices/tpm[1]/@model").contains("tpm-crb"));
    assert!(note(&c, "/domain/devices/tpm[1]/backend/@version").contains("2.0"));
    // Secure Boot needs q35, as in libvirt: the spec check refuses it on pc.
    let pc = xml.replace("machine='pc-q35-7.2'", "machine='pc-i440fx-7.2'");
    let e = convert(&pc).unwrap_err();
    assert!(
        matches!(e, ImportError::Spec(ref s) if s.field == "secure_boot"),
        "{e:?}"
    );
}

#[test]
fn uefi_with_a_direct_kernel_boots_the_kernel_with_seabios() {
    let xml = std::fs::read_to_string(data("kernel-boot.xml")).unwrap().replace(
        "<kernel>",
        "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\n    <kernel>",
    );
    let c = convert(&xml).unwrap();
    assert_eq!(c.spec.firmware, Firmware::Bios);
    assert!(note(&c, "/domain/os/loader").contains("bypasses the firmware"));
}

#[test]
fn cdrom_install() {
    let c = check("cdrom-install");
    let s = &c.spec;
    assert_eq!(
        s.cdrom.as_ref().unwrap().to_str(),
        Some("/var/lib/libvirt/images/debian-12.8.0-amd64-netinst.iso")
    );
    assert_eq!(s.boot.as_ref().unwrap().to_string(), "cdrom,disk");
    assert!(s.boot_menu);
    assert_eq!(s.disks[0].bus, DiskBus::Ide);
    assert_eq!(s.disks[0].target.as_deref(), Some("hda"));
    assert!(note(&c, "/domain/on_reboot").contains("destroy"));
    assert!(note(&c, "/domain/devices/video[1]").contains("cirrus"));
}

#[test]
fn unsupported_devices_are_listed_by_xpath() {
    let c = check("unsupported");
    for x in [
        "/domain/title",
        "/domain/maxMemory",
        "/domain/vcpu/@placement",
        "/domain/iothreads",
        "/domain/os/boot[2]",
        "/domain/os/smbios",
        "/domain/devices/disk[1]/iotune",
        "/domain/devices/disk[3]",
        "/domain/devices/disk[4]",
        "/domain/devices/interface[1]/bandwidth",
        "/domain/devices/sound[1]",
        "/domain/devices/redirdev[1]",
        "/domain/devices/redirdev[2]",
        "/domain/devices/hostdev[1]",
        "/domain/devices/channel[1]",
        "/domain/devices/smartcard[1]",
        "/domain/devices/graphics[1]",
        "/domain/devices/video[1]",
        "/domain/devices/watchdog[1]",
        "/domain/devices/serial[1]",
        "/domain/qemu:commandline",
    ] {
        assert!(has_note(&c, x), "{x}: {:#?}", c.notes);
    }
    assert!(note(&c, "/domain/devices/sound[1]").contains("no sound"));
    assert!(note(&c, "/domain/devices/hostdev[1]").contains("host devices"));
    assert_eq!(
        c.spec.cdrom.as_ref().map(|p| p.as_os_str().is_empty()),
        Some(true),
        "the first CD drive is empty"
    );
    assert_eq!(c.spec.boot.as_ref().unwrap().to_string(), "network");
    // No note is made twice.
    let mut x: Vec<_> = c.notes.iter().map(|n| &n.xpath).collect();
    x.sort();
    x.dedup();
    assert_eq!(x.len(), c.notes.len(), "{:#?}", c.notes);
}

/// `xml` with `from` replaced by `to` must fail naming `xpath`.
fn refused(from: &str, to: &str, xpath: &str, says: &str) {
    let xml = std::fs::read_to_string(data("kernel-boot.xml")).unwrap();
    assert!(xml.contains(from), "{from}");
    let e = convert(&xml.replacen(from, to, 1)).expect_err(to);
    assert_eq!(e.xpath(), Some(xpath), "{e}");
    assert!(e.to_string().contains(says), "{e}");
}

#[test]
fn the_uuid_is_kept_in_any_form_libvirt_takes_and_a_bad_one_is_refused() {
    let xml = std::fs::read_to_string(data("kernel-boot.xml")).unwrap();
    let with = |u: &str| {
        xml.replacen(
            "<name>tiny</name>",
            &format!("<name>tiny</name><uuid>{u}</uuid>"),
            1,
        )
    };
    let c = convert(&with(" 0F3C2A1B4D5E4F608A7B9C0D1E2F3A4B ")).unwrap();
    assert_eq!(
        c.spec.uuid.unwrap().to_string(),
        "0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    );
    for bad in [
        "0f3c2a1b",
        "zz3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b0",
    ] {
        let e = convert(&with(bad)).expect_err(bad);
        assert_eq!(e.xpath(), Some("/domain/uuid"), "{e}");
        assert!(e.to_string().contains("not a UUID"), "{e}");
    }
}

#[test]
fn essentials_hv_cannot_express_are_errors_naming_the_xpath() {
    refused(
        "type='qemu'",
        "type='xen'",
        "/domain/@type",
        "QEMU guests only",
    );
    refused(
        "arch='x86_64'",
        "arch='aarch64'",
        "/domain/os/type/@arch",
        "x86_64",
    );
    refused(
        "machine='pc'",
        "machine='microvm'",
        "/domain/os/type/@machine",
        "pc (i440FX) and q35",
    );
    refused(
        "unit='MiB'",
        "unit='MiBs'",
        "/domain/memory",
        "unknown memory unit",
    );
    refused(">hvm<", ">xen<", "/domain/os/type", "hvm");
    refused(
        "<disk type='file' device='disk'>",
        "<disk type='block' device='disk'>",
        "/domain/devices/disk[1]/@type",
        "block devices",
    );
    refused(
        "<disk type='file' device='disk'>",
        "<disk type='network' device='disk'>",
        "/domain/devices/disk[1]/@type",
        "disk source type",
    );
    refused(
        "type='qcow2'",
        "type='vmdk'",
        "/domain/devices/disk[1]/driver/@type",
        "qemu-img convert",
    );
    refused(
        "<name>tiny</name>",
        "<name>../etc</name>",
        "/domain/name",
        "",
    );
    refused(
        "<source file='/var/lib/libvirt/images/tiny.qcow2'/>",
        "",
        "/domain/devices/disk[1]",
        "without a <source>",
    );
    refused(
        "<serial type='pty'/>",
        "<interface type='bridge'><model type='virtio'/></interface>",
        "/domain/devices/interface[1]",
        "without its <source bridge='NAME'/>",
    );
    refused(
        "<vcpu>1</vcpu>",
        "<vcpu>many</vcpu>",
        "/domain/vcpu",
        "not a vCPU count",
    );
    refused(
        "<serial type='pty'/>",
        "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
        "/domain/devices/interface[1]/@type",
        "type='bridge'",
    );
}

#[test]
fn hostile_input_is_refused_cleanly() {
    let big = "x".repeat(libvirt_xml::MAX_XML_BYTES + 1);
    assert!(matches!(convert(&big), Err(ImportError::TooLarge { .. })));
    let dtd = "<!DOCTYPE d [<!ENTITY a \"aaaa\">]><domain type='kvm'><name>&a;</name></domain>";
    assert!(matches!(convert(dtd), Err(ImportError::Xml(_))));
    assert!(matches!(convert("<domain"), Err(ImportError::Xml(_))));
    assert!(convert("<vm/>")
        .unwrap_err()
        .to_string()
        .contains("not <domain>"));
    let many = format!("<domain type='kvm'>{}</domain>", "<a/>".repeat(60_000));
    assert!(matches!(convert(&many), Err(ImportError::Xml(_))));
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]
    /// Mutated real XML (bytes cut out, replaced or inserted) never panics.
    #[test]
    fn mutated_xml_never_panics(file in 0usize..7, at in 0usize..6000, len in 0usize..40, ins in "[<>/='\"a-z0-9 ]{0,12}") {
        let files = ["nat", "bridged", "kernel-boot", "multi", "uefi-tpm", "cdrom-install", "unsupported"];
        let xml = std::fs::read_to_string(data(&format!("{}.xml", files[file]))).unwrap();
        let mut b = xml.into_bytes();
        let at = at % b.len();
        let end = (at + len).min(b.len());
        b.splice(at..end, ins.bytes());
        if let Ok(s) = String::from_utf8(b) {
            let _ = convert(&s);
        }
    }
}
