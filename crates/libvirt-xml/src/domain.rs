//! The domain's top level: type, name, memory, vCPUs, `<os>`, features, clock and lifecycle
//! actions. Devices are in `devices.rs`.

use std::path::PathBuf;

use model::{Accel, BootDevice, BootOrder, KernelBoot, Machine, Size, VmName, VmSpec};

use crate::ctx::{invalid, invalid_attr, is, text, unsupported, unsupported_attr, Ctx, N};
use crate::devices::{self, Boots};
use crate::units::parse_memory;
use crate::ImportError;

pub(crate) fn convert(ctx: &mut Ctx, dom: N) -> Result<VmSpec, ImportError> {
    if !is(&dom, "domain") {
        return Err(invalid(
            dom,
            "the root element is not <domain>; give a domain XML as `virsh dumpxml NAME` writes it",
        ));
    }
    ctx.take(dom);
    let accel = match ctx.attr(dom, "type") {
        Some("kvm") => {
            ctx.note_attr(
                dom,
                "type",
                "mapped to accel = \"auto\": KVM where it runs standard guests, else TCG",
            );
            Accel::Auto
        }
        Some("qemu") => Accel::Tcg,
        Some(t) => {
            return Err(unsupported_attr(
                dom,
                "type",
                format!("domain type {t:?}: hv runs QEMU guests only (type kvm or qemu)"),
            ))
        }
        None => {
            return Err(invalid_attr(
                dom,
                "type",
                "missing; a domain has type='kvm' or type='qemu'",
            ))
        }
    };
    let name_el = ctx
        .child(dom, "name")
        .ok_or_else(|| invalid(dom, "has no <name>"))?;
    let name: VmName = text(name_el)
        .parse()
        .map_err(|e: model::SpecError| invalid(name_el, e.message))?;
    let mut spec = VmSpec::new(name);
    spec.accel = accel;
    if let Some(u) = ctx.child(dom, "uuid") {
        spec.uuid = Some(uuid(u)?);
    }

    memory(ctx, dom, &mut spec)?;
    vcpus(ctx, dom, &mut spec)?;
    let os = ctx
        .child(dom, "os")
        .ok_or_else(|| invalid(dom, "has no <os>"))?;
    let os_boot = os_element(ctx, os, &mut spec)?;
    features(ctx, dom);
    clock_and_lifecycle(ctx, dom);

    let mut boots = Boots::default();
    if let Some(devs) = ctx.child(dom, "devices") {
        devices::convert(ctx, devs, &mut spec, &mut boots)?;
    } else {
        spec.graphics = model::GraphicsSpec::None;
    }
    spec.boot = boot_order(ctx, &spec, os_boot, boots);
    Ok(spec)
}

/// libvirt takes 32 hex digits with dashes anywhere; hv's form is 8-4-4-4-12.
fn uuid(el: N) -> Result<model::VmUuid, ImportError> {
    let hex: String = text(el).trim().chars().filter(|c| *c != '-').collect();
    let canonical = match (hex.len(), hex.is_ascii()) {
        (32, true) => format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        ),
        _ => hex,
    };
    canonical
        .parse()
        .map_err(|e: model::UuidError| invalid(el, e.to_string()))
}

fn memory(ctx: &mut Ctx, dom: N, spec: &mut VmSpec) -> Result<(), ImportError> {
    let read = |ctx: &mut Ctx, el: N| -> Result<u64, ImportError> {
        let unit = ctx.attr(el, "unit");
        parse_memory(text(el), unit).map_err(|e| invalid(el, e))
    };
    let mem = ctx
        .child(dom, "memory")
        .ok_or_else(|| invalid(dom, "has no <memory>"))?;
    let bytes = read(ctx, mem)?;
    let mib = bytes.div_ceil(1 << 20);
    if bytes % (1 << 20) != 0 {
        ctx.note(
            mem,
            format!("{bytes} bytes is not a whole number of MiB: rounded up to {mib} MiB"),
        );
    }
    spec.memory = Size(mib << 20);
    if let Some(cur) = ctx.child(dom, "currentMemory") {
        let c = read(ctx, cur)?;
        if c < bytes {
            // libvirt boots with <memory> and balloons down to <currentMemory>: hv's
            // `max_memory` and `memory`.
            let cur_mib = c.div_ceil(1 << 20);
            if c % (1 << 20) != 0 {
                ctx.note(
                    cur,
                    format!("{c} bytes is not a whole number of MiB: rounded up to {cur_mib} MiB"),
                );
            }
            spec.max_memory = Some(spec.memory);
            spec.memory = Size(cur_mib << 20);
        }
    }
    if let Some(max) = ctx.child(dom, "maxMemory") {
        ctx.note(
            max,
            "not carried over: hv has no memory DIMM hotplug; its headroom is a balloon within <memory>",
        );
    }
    Ok(())
}

fn vcpus(ctx: &mut Ctx, dom: N, spec: &mut VmSpec) -> Result<(), ImportError> {
    let Some(v) = ctx.child(dom, "vcpu") else {
        return Ok(());
    };
    let count = |s: &str, ctx_n: N, attr: Option<&str>| -> Result<u32, ImportError> {
        s.trim().parse::<u32>().map_err(|_| {
            let what = format!("{s:?} is not a vCPU count");
            match attr {
                Some(a) => invalid_attr(ctx_n, a, what),
                None => invalid(ctx_n, what),
            }
        })
    };
    if v.attribute("placement") == Some("static") {
        ctx.attr(v, "placement");
    }
    let max = count(text(v), v, None)?;
    spec.vcpus = max;
    if let Some(cur) = ctx.attr(v, "current") {
        let cur = count(cur, v, Some("current"))?;
        if cur < max {
            spec.vcpus = cur;
            spec.max_vcpus = Some(max);
        }
    }
    Ok(())
}

/// `<os>`: machine, kernel boot, firmware, boot menu. Returns the `<boot dev=>` order.
fn os_element<'a, 'i>(
    ctx: &mut Ctx,
    os: N<'a, 'i>,
    spec: &mut VmSpec,
) -> Result<Vec<(BootDevice, N<'a, 'i>)>, ImportError> {
    let ty = ctx
        .child(os, "type")
        .ok_or_else(|| invalid(os, "has no <type>"))?;
    if text(ty) != "hvm" {
        return Err(unsupported(
            ty,
            format!(
                "OS type {:?}: hv runs full virtual machines only (hvm)",
                text(ty)
            ),
        ));
    }
    if let Some(arch) = ctx.attr(ty, "arch") {
        if arch != "x86_64" {
            return Err(unsupported_attr(
                ty,
                "arch",
                format!("architecture {arch:?}: hv runs x86_64 guests only"),
            ));
        }
    }
    if let Some(m) = ctx.attr(ty, "machine") {
        spec.machine = machine(ctx, ty, m)?;
    }
    let mut order = Vec::new();
    for b in ctx.children(os, "boot") {
        match ctx.attr(b, "dev") {
            Some("hd") => order.push((BootDevice::Disk, b)),
            Some("cdrom") => order.push((BootDevice::Cdrom, b)),
            Some("network") => order.push((BootDevice::Network, b)),
            Some("fd") => ctx.note(b, "dropped: hv has no floppy drive"),
            other => {
                return Err(invalid_attr(
                    b,
                    "dev",
                    format!("boot device {other:?}; libvirt's are hd, cdrom, network, fd"),
                ))
            }
        }
    }
    if let Some(m) = ctx.child(os, "bootmenu") {
        spec.boot_menu = ctx.attr(m, "enable") == Some("yes");
    }
    if let Some(k) = ctx.child(os, "kernel") {
        let path = text(k);
        if path.is_empty() {
            return Err(invalid(k, "is empty; give the kernel's absolute path"));
        }
        let initrd = ctx
            .child(os, "initrd")
            .map(|i| PathBuf::from(text(i)))
            .filter(|p| !p.as_os_str().is_empty());
        let cmdline = ctx
            .child(os, "cmdline")
            .map(|c| text(c).to_string())
            .filter(|c| !c.is_empty());
        spec.kernel = Some(KernelBoot {
            path: PathBuf::from(path),
            initrd,
            cmdline,
        });
    }
    firmware(ctx, os, spec);
    Ok(order)
}

/// The machine type: pc/q35 and their versioned names; a distribution's own versions
/// (`pc-q35-rhel9.2.0`) are mapped to the family.
fn machine(ctx: &mut Ctx, ty: N, m: &str) -> Result<Machine, ImportError> {
    if let Ok(machine) = m.parse::<Machine>() {
        return Ok(machine);
    }
    let family = if m.starts_with("pc-q35-") {
        Machine::Q35
    } else if m.starts_with("pc-i440fx-") || m == "pc-i440fx" {
        Machine::PC
    } else {
        return Err(unsupported_attr(
            ty,
            "machine",
            format!("machine type {m:?}: hv runs pc (i440FX) and q35 machines only"),
        ));
    };
    ctx.note_attr(
        ty,
        "machine",
        format!("mapped to machine = \"{family}\" (hvd pins it to its QEMU's version)"),
    );
    Ok(family)
}

/// UEFI: `<os firmware='efi'>`, or a pflash `<loader>` (OVMF); Secure Boot when the loader
/// says `secure='yes'` or `<firmware>` enables `secure-boot`. hvd boots Debian's OVMF and makes
/// the VM its own variable store, so the loader and NVRAM paths are not carried over.
fn firmware(ctx: &mut Ctx, os: N, spec: &mut VmSpec) {
    let loader = os.children().find(|c| is(c, "loader"));
    let loader_path = loader.map(text).unwrap_or("");
    let efi_attr = os.attribute("firmware") == Some("efi");
    let pflash = loader.and_then(|l| l.attribute("type")) == Some("pflash")
        || ["OVMF", "ovmf", "edk2", "EFI"]
            .iter()
            .any(|k| loader_path.contains(k));
    let fw_el = os.children().find(|c| is(c, "firmware"));
    let feature_on = |name: &str| {
        fw_el.is_some_and(|f| {
            f.children().any(|c| {
                is(&c, "feature")
                    && c.attribute("name") == Some(name)
                    && c.attribute("enabled") == Some("yes")
            })
        })
    };
    let uefi = efi_attr || pflash;
    let secure = uefi
        && (loader.and_then(|l| l.attribute("secure")) == Some("yes") || feature_on("secure-boot"));
    if let Some(fw) = os.attribute("firmware") {
        if fw != "efi" && fw != "bios" {
            ctx.note_attr(os, "firmware", format!("{fw:?} mapped to SeaBIOS"));
        } else {
            ctx.attr(os, "firmware");
        }
    }
    if !uefi {
        if let Some(l) = loader {
            ctx.note(l, "mapped to hv's SeaBIOS");
        }
        if let Some(n) = ctx.child(os, "nvram") {
            ctx.note(n, "dropped: a BIOS VM has no UEFI variables");
        }
        return;
    }
    if spec.kernel.is_some() {
        let what = "not carried over: in hv a direct kernel boot bypasses the firmware, so the VM boots its <kernel> with SeaBIOS";
        match loader {
            Some(l) => ctx.note(l, what),
            None => ctx.note_attr(os, "firmware", what),
        }
        if let Some(f) = fw_el {
            ctx.take_all(f);
        }
        if let Some(n) = ctx.child(os, "nvram") {
            ctx.note(n, "dropped: the VM boots with SeaBIOS");
        }
        return;
    }
    spec.firmware = model::Firmware::Uefi;
    spec.secure_boot = secure;
    if let Some(l) = loader {
        let what = format!(
            "mapped to firmware = \"uefi\"{}: hvd boots Debian's OVMF ({})",
            if secure { ", secure_boot = true" } else { "" },
            model::OvmfFiles::for_spec(secure).code.display()
        );
        if loader_path.is_empty() {
            ctx.take_all(l);
        } else {
            ctx.note(l, what);
        }
    }
    if let Some(f) = fw_el {
        ctx.take_all(f);
        let keys_off = f.children().any(|c| {
            is(&c, "feature")
                && c.attribute("name") == Some("enrolled-keys")
                && c.attribute("enabled") == Some("no")
        });
        if secure && keys_off {
            ctx.note(
                f,
                "mapped to OVMF with Microsoft's keys enrolled (hv's Secure Boot variables)",
            );
        }
    }
    if let Some(n) = ctx.child(os, "nvram") {
        ctx.note(
            n,
            "dropped: hvd gives the VM a fresh UEFI variable store from OVMF's template; boot entries kept in the old one are lost (the disk's \\EFI\\BOOT\\BOOTX64.EFI still boots)",
        );
    }
}

fn features(ctx: &mut Ctx, dom: N) {
    let Some(f) = ctx.child(dom, "features") else {
        return;
    };
    for c in f.children().filter(|c| c.is_element()) {
        let name = c.tag_name().name();
        let harmless = match name {
            "acpi" | "apic" | "pae" => true,
            // hv turns SMM on for Secure Boot itself.
            "smm" => c.attribute("state") != Some("off"),
            "vmport" => c.attribute("state") == Some("off"),
            _ => false,
        };
        if harmless && c.tag_name().namespace().is_none() {
            ctx.take_all(c);
        }
    }
}

fn clock_and_lifecycle(ctx: &mut Ctx, dom: N) {
    if let Some(c) = dom.children().find(|c| is(c, "clock")) {
        match c.attribute("offset") {
            Some("utc") | None => ctx.take_all(c),
            Some(o) => ctx.note(
                c,
                format!("offset {o:?} not carried over: hv's guests keep their clock in UTC"),
            ),
        }
    }
    for (el, fine) in [
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ] {
        if let Some(e) = dom.children().find(|c| is(c, el)) {
            if text(e) == fine {
                ctx.take_all(e);
            } else {
                ctx.note(
                    e,
                    format!(
                        "{:?} not carried over: hv does what libvirt calls {fine:?}",
                        text(e)
                    ),
                );
            }
        }
    }
    if let Some(pm) = dom.children().find(|c| is(c, "pm")) {
        let all_off = pm
            .children()
            .filter(|c| c.is_element())
            .all(|c| c.attribute("enabled") == Some("no"));
        if all_off {
            ctx.take_all(pm);
        }
    }
}

/// hv's boot order: `<os><boot dev=>`, else the device classes in the order of the
/// devices' `<boot order=>`; classes the VM has no device of are left out with a note.
fn boot_order(
    ctx: &mut Ctx,
    spec: &VmSpec,
    os_boot: Vec<(BootDevice, N)>,
    boots: Boots,
) -> Option<BootOrder> {
    let mut out = Vec::new();
    if os_boot.is_empty() {
        let mut per_dev = boots.0;
        per_dev.sort_by_key(|b| b.0);
        for (_, d) in per_dev {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    for (d, el) in os_boot {
        let present = match d {
            BootDevice::Disk => !spec.disks.is_empty(),
            BootDevice::Cdrom => spec.cdrom.is_some(),
            BootDevice::Network => !spec.nics.is_empty(),
        };
        if !present {
            ctx.note(el, "dropped: the VM has no such device");
        } else if !out.contains(&d) {
            out.push(d);
        }
    }
    (!out.is_empty()).then_some(BootOrder(out))
}
