//! `<devices>`: disks and CD-ROMs, interfaces, graphics, and the devices hv has anyway (serial
//! console, controllers, VGA, input) or has not (the rest, listed by the caller's leftovers).

use std::net::IpAddr;
use std::path::PathBuf;

use model::{
    BootDevice, CacheMode, DiskAio, DiskBus, DiskFormat, DiskSpec, GraphicsSpec, Mac, NicKind,
    NicModel, NicSpec, VmSpec, VncSpec, VolRef,
};

use crate::ctx::{invalid, invalid_attr, is, unsupported_attr, Ctx, N};
use crate::ImportError;

/// Per-device `<boot order='N'/>`: (order, device class).
#[derive(Default)]
pub(crate) struct Boots(pub Vec<(u32, BootDevice)>);

pub(crate) fn convert(
    ctx: &mut Ctx,
    devs: N,
    spec: &mut VmSpec,
    boots: &mut Boots,
) -> Result<(), ImportError> {
    let mut graphics = None;
    let mut serial_seen = false;
    for d in devs.children().filter(|c| c.is_element()) {
        if d.tag_name().namespace().is_some() {
            continue;
        }
        match d.tag_name().name() {
            "emulator" => {
                let t = crate::ctx::text(d);
                if t.ends_with("/qemu-system-x86_64") || t.ends_with("/qemu-kvm") {
                    ctx.take_all(d);
                } else {
                    ctx.note(d, "mapped to hvd's own qemu-system-x86_64");
                }
            }
            "disk" => {
                ctx.take(d);
                disk(ctx, d, spec, boots)?
            }
            "interface" => {
                ctx.take(d);
                interface(ctx, d, spec, boots)?
            }
            "graphics" => {
                if graphics.is_none() {
                    ctx.take(d);
                    graphics = Some(graphics_of(ctx, d)?);
                } else {
                    ctx.note(d, "dropped: hv has one display per VM");
                }
            }
            "video" => {
                let model = d
                    .children()
                    .find(|c| is(c, "model"))
                    .and_then(|m| m.attribute("type"));
                if model == Some("vga") {
                    ctx.take_all(d);
                } else {
                    ctx.note(
                        d,
                        format!(
                            "mapped to hv's standard VGA card (was {})",
                            model.unwrap_or("unspecified")
                        ),
                    );
                }
            }
            "serial" | "console" => {
                let pty = d.attribute("type") == Some("pty");
                if pty && (d.tag_name().name() == "console" || !serial_seen) {
                    serial_seen |= d.tag_name().name() == "serial";
                    ctx.take_all(d);
                } else if pty {
                    ctx.note(d, "dropped: hv gives a VM one serial console");
                } else {
                    ctx.note(
                        d,
                        "mapped to hv's serial console (hvd keeps its log; `hv console NAME`)",
                    );
                }
            }
            "controller" => ctx.take_all(d),
            "memballoon" if d.attribute("model") == Some("none") => ctx.take_all(d),
            "input" => {
                let ps2 = matches!(d.attribute("type"), Some("mouse" | "keyboard"))
                    && matches!(d.attribute("bus"), Some("ps2") | None);
                let tablet = d.attribute("type") == Some("tablet");
                if ps2 {
                    ctx.take_all(d);
                } else if tablet {
                    ctx.note(
                        d,
                        "mapped to hv's USB tablet (present whenever the VM has a display)",
                    );
                } else {
                    ctx.note(
                        d,
                        "dropped: hv gives a VM a PS/2 keyboard and mouse and a USB tablet",
                    );
                }
            }
            "tpm" => tpm(ctx, d, spec),
            _ => {}
        }
    }
    spec.graphics = graphics.unwrap_or(GraphicsSpec::None);
    Ok(())
}

/// The device's `<boot order='N'/>`. hv orders device classes, so the order of a device that is
/// not the first of its class (`first` false) is noted.
fn boot_of(ctx: &mut Ctx, d: N, first: bool, class: &str) -> Result<Option<u32>, ImportError> {
    let Some(b) = ctx.child(d, "boot") else {
        return Ok(None);
    };
    let o = ctx.attr(b, "order").unwrap_or("");
    let order = o
        .parse::<u32>()
        .map_err(|_| invalid_attr(b, "order", format!("{o:?} is not a boot position")))?;
    if !first {
        ctx.note(
            b,
            format!("mapped to booting from the {class}s: hv boots the first {class} of the VM, not this one"),
        );
    }
    Ok(Some(order))
}

fn disk(ctx: &mut Ctx, d: N, spec: &mut VmSpec, boots: &mut Boots) -> Result<(), ImportError> {
    let device = d.attribute("device").unwrap_or("disk");
    match device {
        "disk" | "cdrom" => {}
        "floppy" => {
            ctx.note(d, "dropped: hv has no floppy drive");
            return Ok(());
        }
        other => {
            return Err(unsupported_attr(
                d,
                "device",
                format!("{other:?} disks: hv attaches image files as disks or CD-ROMs only"),
            ))
        }
    }
    ctx.attr(d, "device");
    let kind = ctx.attr(d, "type").unwrap_or("file");
    let source = ctx.child(d, "source");
    let path: Option<(PathBuf, Option<VolRef>)> = match (kind, source) {
        (_, None) => None,
        ("file", Some(s)) => ctx.attr(s, "file").map(|f| (PathBuf::from(f), None)),
        ("volume", Some(s)) => {
            let pool = ctx.attr(s, "pool").unwrap_or("");
            let vol = ctx.attr(s, "volume").unwrap_or("");
            let r: VolRef = format!("{pool}/{vol}").parse().map_err(|e: model::SpecError| {
                invalid(
                    s,
                    format!(
                        "pool {pool:?} volume {vol:?} is not an hv volume name ({}); create the volume in an hv pool, or use the file",
                        e.message
                    ),
                )
            })?;
            Some((PathBuf::new(), Some(r)))
        }
        ("block", _) => {
            return Err(unsupported_attr(
                d,
                "type",
                "block devices: hv attaches image files only; copy the device into an image with `qemu-img convert -O qcow2 DEV FILE` and point the disk at the file",
            ))
        }
        (other, _) => {
            return Err(unsupported_attr(
                d,
                "type",
                format!("disk source type {other:?}: hv attaches image files and pool volumes only"),
            ))
        }
    };
    let driver = ctx.child(d, "driver");
    let mut format = None;
    let mut cache = None;
    let mut aio = None;
    if let Some(dr) = driver {
        match ctx.attr(dr, "name") {
            None | Some("qemu") => {}
            Some(n) => ctx.note_attr(dr, "name", format!("driver {n:?} mapped to QEMU")),
        }
        format = match ctx.attr(dr, "type") {
            None => None,
            Some("qcow2") => Some(DiskFormat::Qcow2),
            Some("raw") => Some(DiskFormat::Raw),
            Some(t) if device == "cdrom" => {
                ctx.note_attr(dr, "type", format!("format {t:?} mapped to raw (hv's CD-ROMs are raw)"));
                None
            }
            Some(t) => {
                return Err(unsupported_attr(
                    dr,
                    "type",
                    format!("image format {t:?}: hv uses qcow2 and raw; convert it with `qemu-img convert -O qcow2 FILE NEW.qcow2`"),
                ))
            }
        };
        cache = match ctx.attr(dr, "cache") {
            None | Some("default") => None,
            Some(c) => Some(
                c.parse::<CacheMode>()
                    .map_err(|e| invalid_attr(dr, "cache", e.message))?,
            ),
        };
        aio = match ctx.attr(dr, "io") {
            None | Some("default") => None,
            Some(c) => Some(
                c.parse::<DiskAio>()
                    .map_err(|e| invalid_attr(dr, "io", e.message))?,
            ),
        };
    }
    let target = ctx.child(d, "target");
    let dev = target.and_then(|t| ctx.attr(t, "dev"));
    let bus_attr = target.and_then(|t| ctx.attr(t, "bus"));
    let readonly = ctx.child(d, "readonly").is_some();
    if let Some(s) = ctx.child(d, "shareable") {
        ctx.note(
            s,
            "dropped: hv attaches the disk to this VM alone; do not run two VMs that write it at once",
        );
    }
    if let Some(b) = ctx.child(d, "backingStore") {
        if b.has_children() || b.attributes().len() > 0 {
            ctx.note(
                b,
                "dropped: hv reads the backing chain from the image itself",
            );
        }
    }
    let first = if device == "cdrom" {
        spec.cdrom.is_none()
    } else {
        spec.disks.is_empty()
    };
    let boot = boot_of(
        ctx,
        d,
        first,
        if device == "cdrom" { "CD-ROM" } else { "disk" },
    )?;

    if device == "cdrom" {
        if spec.cdrom.is_some() {
            ctx.note(d, "dropped: hv gives a VM one CD-ROM drive");
            return Ok(());
        }
        spec.cdrom = Some(match path {
            Some((p, None)) => p,
            Some((_, Some(v))) => PathBuf::from(v.to_string()),
            None => PathBuf::new(),
        });
        if let (Some(t), Some(dev)) = (target, dev) {
            if dev != "hdc" && dev != "sda" {
                ctx.note_attr(
                    t,
                    "dev",
                    format!("{dev:?} mapped to hv's CD-ROM drive (IDE on pc, SATA on q35)"),
                );
            }
        }
        if let Some(o) = boot {
            boots.0.push((o, BootDevice::Cdrom));
        }
        return Ok(());
    }

    let Some((path, vol)) = path else {
        return Err(invalid(
            d,
            "a disk without a <source> (file or pool volume); give it one",
        ));
    };
    let mut bus = match bus_attr {
        Some("virtio") => DiskBus::Virtio,
        Some("ide") => DiskBus::Ide,
        Some("sata") => DiskBus::Sata,
        Some("scsi") => DiskBus::Scsi,
        None => match dev.map(|d| d.get(..2).unwrap_or("")) {
            Some("hd") => DiskBus::Ide,
            Some("sd") => DiskBus::Scsi,
            _ => DiskBus::Virtio,
        },
        Some(b) => {
            let t = target.unwrap_or(d);
            ctx.note_attr(t, "bus", format!("bus {b:?} mapped to virtio"));
            DiskBus::Virtio
        }
    };
    if readonly && matches!(bus, DiskBus::Ide | DiskBus::Sata) {
        let t = target.unwrap_or(d);
        ctx.note_attr(
            t,
            "bus",
            format!("a read-only disk on {bus} mapped to bus scsi (QEMU cannot attach read-only {bus} disks)"),
        );
        bus = DiskBus::Scsi;
    }
    let prefix = bus.target_prefix();
    let target_name = match dev {
        Some(t)
            if t.len() == 3
                && t.starts_with(prefix)
                && t.as_bytes()[2].is_ascii_lowercase()
                && t != "hdc"
                && !spec.disks.iter().any(|o| o.target.as_deref() == Some(t)) =>
        {
            Some(t.to_string())
        }
        Some(t) => {
            if let Some(te) = target {
                ctx.note_attr(
                    te,
                    "dev",
                    format!("{t:?} not carried over: hvd names the disk on bus {bus} itself"),
                );
            }
            None
        }
        None => None,
    };
    if let Some(o) = boot {
        boots.0.push((o, BootDevice::Disk));
    }
    spec.disks.push(DiskSpec {
        path,
        vol,
        target: target_name,
        format,
        bus,
        cache: cache.unwrap_or_default(),
        aio,
        readonly,
        size: None,
    });
    Ok(())
}

fn interface(ctx: &mut Ctx, i: N, spec: &mut VmSpec, boots: &mut Boots) -> Result<(), ImportError> {
    let source = ctx.child(i, "source");
    let (kind, src) = match ctx.attr(i, "type") {
        Some("network") => (NicKind::Network, source.and_then(|s| ctx.attr(s, "network"))),
        Some("bridge") => (NicKind::Bridge, source.and_then(|s| ctx.attr(s, "bridge"))),
        Some("user") => {
            if let Some(s) = source {
                ctx.note(s, "dropped: hv's user networking takes no source");
            }
            (NicKind::User, None)
        }
        Some(t) => {
            return Err(unsupported_attr(
                i,
                "type",
                format!("interface type {t:?}: hv plugs NICs into an hv network, a host bridge or user networking; change it to type='bridge' (or 'network')"),
            ))
        }
        None => return Err(invalid_attr(i, "type", "missing; use network, bridge or user")),
    };
    if kind != NicKind::User && src.is_none_or(str::is_empty) {
        return Err(invalid(
            i,
            format!("a {kind} interface without its <source {kind}='NAME'/>"),
        ));
    }
    let mac = match ctx.child(i, "mac") {
        Some(m) => {
            let a = ctx.attr(m, "address").unwrap_or("");
            Some(
                a.parse::<Mac>()
                    .map_err(|e| invalid_attr(m, "address", e.message))?,
            )
        }
        None => None,
    };
    let model = match ctx.child(i, "model") {
        Some(m) => match ctx.attr(m, "type") {
            Some("virtio") | None => NicModel::Virtio,
            Some("e1000") => NicModel::E1000,
            Some("rtl8139") => NicModel::Rtl8139,
            Some("e1000e") => {
                ctx.note_attr(m, "type", "e1000e mapped to e1000");
                NicModel::E1000
            }
            Some(t) => {
                ctx.note_attr(m, "type", format!("{t:?} mapped to virtio"));
                NicModel::Virtio
            }
        },
        None => NicModel::Rtl8139,
    };
    if let Some(o) = boot_of(ctx, i, spec.nics.is_empty(), "NIC")? {
        boots.0.push((o, BootDevice::Network));
    }
    spec.nics.push(NicSpec {
        kind,
        source: src.map(str::to_string),
        model,
        mac,
    });
    Ok(())
}

fn graphics_of(ctx: &mut Ctx, g: N) -> Result<GraphicsSpec, ImportError> {
    match ctx.attr(g, "type") {
        Some("vnc") => {}
        Some("spice") => {
            ctx.note(
                g,
                "SPICE mapped to hv's browser console (VNC through hvd; `hv` web console)",
            );
            return Ok(GraphicsSpec::Console);
        }
        Some(t) => {
            ctx.note(g, format!("{t:?} display mapped to hv's browser console"));
            return Ok(GraphicsSpec::Console);
        }
        None => return Err(invalid_attr(g, "type", "missing; use vnc or spice")),
    }
    let mut listen: Option<&str> = ctx.attr(g, "listen");
    for l in ctx.children(g, "listen") {
        match ctx.attr(l, "type") {
            Some("address") => listen = listen.or(ctx.attr(l, "address")),
            Some("socket") | Some("none") => {
                ctx.take_all(l);
                return Ok(GraphicsSpec::Console);
            }
            _ => ctx.note(l, "dropped: listening on a libvirt network is not carried over; VNC listens on 127.0.0.1"),
        }
    }
    let listen: IpAddr = match listen {
        None | Some("") => IpAddr::from([127, 0, 0, 1]),
        Some(a) => a
            .parse()
            .map_err(|_| invalid_attr(g, "listen", format!("{a:?} is not an IP address")))?,
    };
    let autoport = ctx.attr(g, "autoport") == Some("yes");
    let port = match ctx.attr(g, "port") {
        None | Some("-1") => None,
        Some(_) if autoport => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| invalid_attr(g, "port", format!("{p:?} is not a port")))?,
        ),
    };
    if let Some(ws) = g.attribute("websocket") {
        ctx.note_attr(
            g,
            "websocket",
            format!("websocket {ws} dropped: hvd serves the console over its own WebSocket"),
        );
    }
    let password = ctx.attr(g, "passwd").map(str::to_string);
    Ok(GraphicsSpec::Vnc(VncSpec {
        listen,
        port,
        password,
        password_set: false,
    }))
}

/// `<tpm>` with an emulator backend: hv's per-VM swtpm (TPM 2.0; CRB on q35, TIS on pc).
fn tpm(ctx: &mut Ctx, t: N, spec: &mut VmSpec) {
    let backend = t.children().find(|c| is(c, "backend"));
    match backend.and_then(|b| b.attribute("type")) {
        Some("emulator") => {}
        other => {
            ctx.note(
                t,
                format!(
                    "dropped: hv emulates TPMs with swtpm only (backend {}); the host's TPM is not passed through",
                    other.unwrap_or("unspecified")
                ),
            );
            return;
        }
    }
    if spec.tpm {
        ctx.note(t, "dropped: hv gives a VM one TPM");
        return;
    }
    spec.tpm = true;
    ctx.take(t);
    let hv_model = match spec.machine.family {
        model::MachineFamily::Q35 => "tpm-crb",
        model::MachineFamily::Pc => "tpm-tis",
    };
    match ctx.attr(t, "model") {
        Some(m) if m != hv_model => ctx.note_attr(
            t,
            "model",
            format!("{m} mapped to {hv_model} (hv's TPM on this machine)"),
        ),
        _ => {}
    }
    if let Some(b) = ctx.child(t, "backend") {
        ctx.attr(b, "type");
        match ctx.attr(b, "version") {
            None | Some("2.0") => {}
            Some(v) => ctx.note_attr(b, "version", format!("TPM {v} mapped to TPM 2.0")),
        }
    }
}
