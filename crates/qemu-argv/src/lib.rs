//! Pure translation of a [`VmSpec`] plus what we know of the host ([`QemuCaps`]) and of this
//! run ([`RunPlan`]) into QEMU's argv.
//!
//! The spec is first lowered to a typed machine IR ([`Machine`]: chardevs, block nodes,
//! netdevs, devices), then rendered. `-blockdev`, `-device`, `-netdev` use QEMU's JSON syntax;
//! the few options that only take keyval syntax (`-chardev`, `-vnc`, `-name`) escape commas.
//! No I/O happens here: paths and fd numbers come in, a `Vec<OsString>` comes out.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use model::{
    CacheMode, DiskAio, DiskBus, DiskFormat, DiskSpec, GraphicsSpec, Machine as MachineType,
    MachineFamily, NicKind, NicModel, NicSpec, VmSpec,
};
use serde_json::{json, Value};

mod firmware;
pub use firmware::{FirmwareIr, PFLASH_CODE_NODE, PFLASH_VARS_NODE};

/// The accelerator a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How QEMU submits disk I/O: the `aio` option of the `file` driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aio {
    /// A pool of worker threads, QEMU's default (left out of the argv).
    #[default]
    Threads,
    /// Linux io_uring, where this QEMU and host support it. Reads that hit the page cache
    /// complete without a hand-off to a worker thread; loading a snapshot's RAM (thousands of
    /// small reads) takes about a third of the time.
    IoUring,
    /// Linux AIO (only with O_DIRECT, i.e. `cache=none|directsync`; only when a disk asks).
    Native,
}

impl Aio {
    pub fn as_str(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::IoUring => "io_uring",
            Aio::Native => "native",
        }
    }

    /// A disk's own `aio=` choice, or the host default `self` (hvd's probe result).
    pub fn for_disk(self, disk: &DiskSpec) -> Result<Aio, ArgvError> {
        Ok(match disk.aio {
            None => self,
            Some(DiskAio::Threads) => Aio::Threads,
            Some(DiskAio::Native) => Aio::Native,
            Some(DiskAio::IoUring) if self == Aio::IoUring => Aio::IoUring,
            Some(DiskAio::IoUring) => {
                return Err(ArgvError::Unsupported {
                    what: "aio=io_uring on this host".into(),
                    hint: "this QEMU cannot open disks with io_uring here (hvd probes it at start; see its log); use aio=threads".into(),
                })
            }
        })
    }
}

/// What we know of the QEMU binary and host.
#[derive(Debug, Clone)]
pub struct QemuCaps {
    /// (major, minor, micro)
    pub version: (u32, u32, u32),
    pub accel: Accel,
    /// The `-cpu` model for KVM (`host`, or a fallback where `host` aborts).
    pub kvm_cpu: String,
    pub aio: Aio,
}

/// Per-run facts: where this run's sockets, logs and overlays are.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Inherited listening socket for QMP (`-chardev socket,fd=N`).
    pub qmp_fd: i32,
    /// Inherited listening socket for the serial console.
    pub serial_fd: i32,
    /// QEMU appends everything the serial console prints here, also while hvd is down.
    pub console_log: PathBuf,
    /// For `ephemeral` VMs: the throw-away qcow2 overlay per disk (same order as `spec.disks`);
    /// `None` for a disk written in place (or read-only).
    pub overlays: Vec<Option<PathBuf>>,
    /// Start with the CPUs stopped (`-S`).
    pub paused: bool,
    /// Restore this internal snapshot (RAM and devices) at start (`-loadvm`).
    pub loadvm: Option<String>,
    /// The tap made for each NIC (`None` for user-mode NICs), same order as `spec.nics`.
    pub taps: Vec<Option<String>>,
    /// The layers below each disk's image (same order as `spec.disks`), top-most first. Every
    /// layer becomes its own `-blockdev`, so QEMU never opens a file the chain's headers name.
    pub chains: Vec<Vec<Layer>>,
    /// Where QEMU listens for hvd's VNC connection (the browser console), unless the VM has
    /// `graphics = none`: a socket in a directory only this VM's QEMU uid (and root) can enter.
    pub vnc_socket: PathBuf,
    /// UEFI: this VM's copy of OVMF's variable store (pflash1).
    pub nvram: Option<PathBuf>,
    /// With a TPM: QEMU's end of a connected socket pair whose other end is the VM's
    /// `swtpm` control channel (`-chardev socket,fd=N`).
    pub tpm_fd: Option<i32>,
    /// The VM's cloud-init seed image (raw, attached read-only), when it has one.
    pub seed: Option<PathBuf>,
}

/// The id of the VNC display hvd's browser console connects to (`-vnc unix:...,id=`).
pub const CONSOLE_VNC_ID: &str = "hv-console";

/// How long SeaBIOS shows "Press ESC for boot menu" with `boot_menu` (milliseconds).
pub const BOOT_MENU_SPLASH_MS: u32 = 3000;

/// One layer of a disk's backing chain, with the format hv knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("{what} is not supported yet: {hint}")]
    Unsupported { what: String, hint: String },
    #[error("the disk format of {path:?} is unknown; it must be recorded when the VM is defined")]
    UnknownFormat { path: PathBuf },
    #[error("too many {bus} devices: at most {max}")]
    TooManyOnBus { bus: &'static str, max: usize },
}

/// A character device backed by an inherited listening socket.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketChardev {
    pub id: String,
    pub fd: i32,
    pub logfile: Option<PathBuf>,
}

/// The typed machine IR.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub name: String,
    /// `-uuid`: the SMBIOS system UUID.
    pub uuid: Option<String>,
    pub machine_type: MachineType,
    pub accel: Accel,
    pub cpu: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `-smp vcpus,maxcpus=N`: vCPU hotplug headroom.
    pub max_vcpus: Option<u32>,
    pub chardevs: Vec<SocketChardev>,
    pub serial: Option<String>,
    pub monitor: Option<String>,
    pub blockdevs: Vec<Value>,
    pub netdevs: Vec<Value>,
    pub devices: Vec<Value>,
    pub kernel: Option<(PathBuf, Option<PathBuf>, Option<String>)>,
    pub boot_order: Option<String>,
    pub boot_menu: bool,
    /// `-vnc` displays, the external listener (if any) first: QMP's `set_password` and
    /// `query-vnc` without a display id mean the first one.
    pub vnc: Vec<String>,
    pub paused: bool,
    pub loadvm: Option<String>,
    pub firmware: FirmwareIr,
}

/// Lowers a spec to the machine IR.
pub fn lower(spec: &VmSpec, caps: &QemuCaps, plan: &RunPlan) -> Result<Machine, ArgvError> {
    let mut m = Machine {
        name: spec.name.to_string(),
        uuid: spec.uuid.map(|u| u.to_string()),
        // Unpinned (a definition from before hvd pinned them): the machine of this QEMU.
        machine_type: spec.machine.pinned((caps.version.0, caps.version.1)),
        accel: caps.accel,
        cpu: (caps.accel == Accel::Kvm).then(|| caps.kvm_cpu.clone()),
        // With a memory maximum the guest gets the maximum and a balloon, which hvd inflates
        // down to `memory` once QEMU runs.
        memory_mib: model::resources::max_memory(spec).0 >> 20,
        vcpus: spec.vcpus,
        max_vcpus: spec.max_vcpus.filter(|&m| m > spec.vcpus),
        chardevs: vec![
            SocketChardev {
                id: "hv-qmp".into(),
                fd: plan.qmp_fd,
                logfile: None,
            },
            SocketChardev {
                id: "hv-serial0".into(),
                fd: plan.serial_fd,
                logfile: Some(plan.console_log.clone()),
            },
        ],
        serial: Some("hv-serial0".into()),
        monitor: Some("hv-qmp".into()),
        blockdevs: Vec::new(),
        netdevs: Vec::new(),
        devices: Vec::new(),
        kernel: spec
            .kernel
            .as_ref()
            .map(|k| (k.path.clone(), k.initrd.clone(), k.cmdline.clone())),
        boot_order: spec
            .boot
            .as_ref()
            .map(|b| b.0.iter().map(|d| d.letter()).collect()),
        boot_menu: spec.boot_menu,
        vnc: Vec::new(),
        paused: plan.paused,
        loadvm: plan.loadvm.clone(),
        firmware: FirmwareIr::default(),
    };
    firmware::lower(spec, plan, &mut m)?;
    let mut buses = Buses::new(spec.machine.family);
    for (i, disk) in spec.disks.iter().enumerate() {
        let overlay = plan.overlays.get(i).cloned().flatten();
        let chain = plan.chains.get(i).map(Vec::as_slice).unwrap_or_default();
        m.blockdevs.extend(disk_block_nodes(
            disk,
            i,
            overlay.as_deref(),
            chain,
            caps.aio,
        )?);
        let (id, node) = disk_ids(disk, i);
        let mut dev = match disk.bus {
            DiskBus::Virtio | DiskBus::Scsi => {
                if disk.bus == DiskBus::Scsi {
                    buses.scsi(&mut m.devices);
                }
                disk_device(disk, i)?
            }
            DiskBus::Ide => {
                let (bus, unit) = buses.ide(disk.target.as_deref())?;
                json!({ "driver": "ide-hd", "drive": node, "id": id, "bus": bus, "unit": unit })
            }
            DiskBus::Sata => {
                let bus = buses.sata(&mut m.devices)?;
                json!({ "driver": "ide-hd", "drive": node, "id": id, "bus": bus })
            }
        };
        dev["write-cache"] = write_cache(disk.cache);
        m.devices.push(dev);
    }
    if let Some(iso) = &spec.cdrom {
        // An empty path is an empty drive (media can be inserted later).
        let node = (!iso.as_os_str().is_empty()).then(|| "hv-cd0".to_string());
        if let Some(node) = &node {
            m.blockdevs.extend(block_nodes(
                node,
                iso,
                DiskFormat::Raw,
                CacheMode::Writeback,
                true,
                caps.aio,
            ));
        }
        let mut dev = match spec.machine.family {
            MachineFamily::Pc => {
                let (bus, unit) = buses.ide_cd()?;
                json!({ "driver": "ide-cd", "id": CDROM_ID, "bus": bus, "unit": unit })
            }
            MachineFamily::Q35 => {
                let bus = buses.sata(&mut m.devices)?;
                json!({ "driver": "ide-cd", "id": CDROM_ID, "bus": bus })
            }
        };
        if let Some(node) = node {
            dev["drive"] = json!(node);
        }
        m.devices.push(dev);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let tap = plan.taps.get(i).cloned().flatten();
        m.netdevs.push(nic_backend(nic, i, tap.as_deref())?);
        m.devices.push(nic_device(nic, i));
    }
    if spec.max_memory.is_some() {
        m.devices
            .push(json!({ "driver": "virtio-balloon-pci", "id": BALLOON_ID }));
    }
    if let Some(seed) = &plan.seed {
        // A read-only virtio disk; NoCloud finds it by its `cidata` label.
        m.blockdevs.extend(block_nodes(
            SEED_NODE,
            seed,
            DiskFormat::Raw,
            CacheMode::Writeback,
            true,
            caps.aio,
        ));
        m.devices
            .push(json!({ "driver": "virtio-blk-pci", "drive": SEED_NODE, "id": SEED_ID }));
    }
    // VGA is always there (screendump works without a live display).
    m.devices.push(json!({ "driver": "VGA", "id": "video0" }));
    if spec.graphics != GraphicsSpec::None {
        m.devices
            .push(json!({ "driver": "qemu-xhci", "id": "usb" }));
        m.devices
            .push(json!({ "driver": "usb-tablet", "id": "tablet0", "bus": "usb.0" }));
    }
    if let GraphicsSpec::Vnc(v) = &spec.graphics {
        let host = match v.listen {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let mut vnc = match v.port {
            Some(p) => format!("{host}:{}", p - 5900),
            None => format!("{host}:0,to=99"),
        };
        if v.password.is_some() {
            vnc.push_str(",password=on");
        }
        m.vnc.push(vnc);
    }
    if spec.graphics != GraphicsSpec::None {
        m.vnc.push(format!(
            "unix:{},id={CONSOLE_VNC_ID}",
            esc(&plan.vnc_socket)
        ));
    }
    Ok(m)
}

/// The memory balloon's device id (only with a memory maximum).
pub const BALLOON_ID: &str = "balloon0";
/// The cloud-init seed disk's device id and block node.
pub const SEED_ID: &str = "cidata";
pub const SEED_NODE: &str = "hv-cidata";

/// The CD-ROM drive's device id.
pub const CDROM_ID: &str = "cdrom0";

/// The device id (the disk's target, `vda`) and block node name (`hv-vda`) of a disk.
pub fn disk_ids(disk: &DiskSpec, i: usize) -> (String, String) {
    let id = disk.target.clone().unwrap_or_else(|| format!("disk{i}"));
    let node = format!("hv-{id}");
    (id, node)
}

/// The `-blockdev` (and `blockdev-add`) nodes of a disk in the order QEMU needs them: the
/// bottom layer of `chain` (the layers below the disk's image, top-most first) first, each
/// layer's file node before its format node, the disk's own nodes last. With an ephemeral
/// `overlay`, that overlay is the top and the disk's image the first layer below it. Every
/// qcow2 node names its backing node (or `null`), so QEMU opens no file that a header names.
pub fn disk_block_nodes(
    disk: &DiskSpec,
    i: usize,
    overlay: Option<&Path>,
    chain: &[Layer],
    aio: Aio,
) -> Result<Vec<Value>, ArgvError> {
    let format = disk.format.ok_or_else(|| ArgvError::UnknownFormat {
        path: disk.path.clone(),
    })?;
    let mut lower: Vec<Layer> = Vec::new();
    let (path, format) = match overlay {
        Some(o) => {
            lower.push(Layer {
                path: disk.path.clone(),
                format,
            });
            (o, DiskFormat::Qcow2)
        }
        None => (disk.path.as_path(), format),
    };
    lower.extend(chain.iter().cloned());
    let aio = aio.for_disk(disk)?;
    let node = disk_ids(disk, i).1;
    let layer_node = |k: usize| format!("{node}-b{k}");
    let mut out = Vec::new();
    for (k, layer) in lower.iter().enumerate().rev() {
        let below = (k + 1 < lower.len()).then(|| layer_node(k + 2));
        let [mut file, mut fmt] = block_nodes(
            &layer_node(k + 1),
            &layer.path,
            layer.format,
            disk.cache,
            true,
            aio,
        );
        // Read-only through its format node; the file node opens read-only and becomes
        // writable only when a block job (a commit into this layer) asks for it.
        if let Some(o) = file.as_object_mut() {
            o.remove("read-only");
        }
        set_backing(&mut fmt, layer.format, below);
        out.extend([file, fmt]);
    }
    let [file, mut fmt] = block_nodes(&node, path, format, disk.cache, disk.readonly, aio);
    set_backing(&mut fmt, format, (!lower.is_empty()).then(|| layer_node(1)));
    out.extend([file, fmt]);
    Ok(out)
}

/// A qcow2 format node's backing: the named node, or none at all (`null`).
fn set_backing(fmt: &mut Value, format: DiskFormat, below: Option<String>) {
    if format == DiskFormat::Qcow2 {
        fmt["backing"] = json!(below);
    }
}

fn write_cache(cache: CacheMode) -> Value {
    json!(
        if matches!(cache, CacheMode::Writethrough | CacheMode::Directsync) {
            "off"
        } else {
            "on"
        }
    )
}

/// The QEMU id of NIC `i`'s device (`nic{i}`); its backend is `hv-net{i}`.
pub fn nic_id(i: usize) -> String {
    format!("nic{i}")
}

/// The `-netdev` (and `netdev_add`) JSON of NIC `i`: user-mode, or the tap hvd made.
pub fn nic_backend(nic: &NicSpec, i: usize, tap: Option<&str>) -> Result<Value, ArgvError> {
    let id = format!("hv-net{i}");
    Ok(match nic.kind {
        NicKind::User => json!({ "type": "user", "id": id }),
        NicKind::Network | NicKind::Bridge => {
            let tap = tap.ok_or_else(|| ArgvError::Unsupported {
                what: format!("a {} NIC without a tap", nic.kind),
                hint: "hvd creates the tap before it starts QEMU".into(),
            })?;
            json!({ "type": "tap", "id": id, "ifname": tap, "script": "no", "downscript": "no" })
        }
    })
}

/// The `-device` (and `device_add`) JSON of NIC `i`, on backend `hv-net{i}`.
pub fn nic_device(nic: &NicSpec, i: usize) -> Value {
    let driver = match nic.model {
        NicModel::Virtio => "virtio-net-pci",
        NicModel::E1000 => "e1000",
        NicModel::Rtl8139 => "rtl8139",
    };
    let mut dev = json!({ "driver": driver, "netdev": format!("hv-net{i}"), "id": nic_id(i) });
    if let Some(mac) = nic.mac {
        dev["mac"] = json!(mac.to_string());
    }
    dev
}

/// The `-device` (and `device_add`) JSON of a virtio or SCSI disk, the buses that can be
/// hot-plugged. A SCSI disk's target letter is its SCSI id on the one virtio-scsi controller.
pub fn disk_device(disk: &DiskSpec, i: usize) -> Result<Value, ArgvError> {
    let (id, node) = disk_ids(disk, i);
    let mut dev = match disk.bus {
        DiskBus::Virtio => json!({ "driver": "virtio-blk-pci", "drive": node, "id": id }),
        DiskBus::Scsi => {
            let scsi_id = disk.target.as_deref().and_then(|t| t.as_bytes().get(2).copied()).map(|c| u32::from(c - b'a')).unwrap_or(i as u32);
            json!({ "driver": "scsi-hd", "drive": node, "id": id, "bus": "scsi0.0", "channel": 0, "scsi-id": scsi_id, "lun": 0 })
        }
        DiskBus::Ide | DiskBus::Sata => {
            return Err(ArgvError::Unsupported {
                what: format!("hot-plugging a disk on bus={}", disk.bus),
                hint: "IDE and SATA disks cannot be hot-plugged; use bus=virtio or bus=scsi, or attach it to the stopped VM".into(),
            })
        }
    };
    dev["write-cache"] = write_cache(disk.cache);
    Ok(dev)
}

/// The virtio-scsi controller's `-device` JSON (hot-plugged before the first SCSI disk).
pub fn scsi_controller() -> Value {
    json!({ "driver": "virtio-scsi-pci", "id": "scsi0" })
}

/// A file node plus a format node, with the cache mode spelled the way `-blockdev` wants it.
fn block_nodes(
    node: &str,
    path: &Path,
    format: DiskFormat,
    cache: CacheMode,
    readonly: bool,
    aio: Aio,
) -> [Value; 2] {
    let (direct, no_flush) = match cache {
        CacheMode::None | CacheMode::Directsync => (true, false),
        CacheMode::Writeback | CacheMode::Writethrough => (false, false),
        CacheMode::Unsafe => (false, true),
    };
    let cache = json!({ "direct": direct, "no-flush": no_flush });
    let file_node = format!("{node}-file");
    let mut file = json!({
        "driver": "file", "filename": path.to_string_lossy(), "node-name": file_node,
        "auto-read-only": true, "discard": "unmap", "cache": cache, "read-only": readonly,
    });
    if aio != Aio::Threads {
        file["aio"] = json!(aio.as_str());
    }
    [
        file,
        json!({
            "driver": format.as_str(), "node-name": node, "file": file_node,
            "cache": cache, "read-only": readonly,
        }),
    ]
}

/// Hands out controller slots and adds controllers when first needed.
struct Buses {
    machine: MachineFamily,
    sata_next: usize,
    ahci_added: bool,
    scsi_added: bool,
}

impl Buses {
    fn new(machine: MachineFamily) -> Self {
        Buses {
            machine,
            sata_next: 0,
            ahci_added: false,
            scsi_added: false,
        }
    }

    /// `pc`: the target names the slot (hda, hdb on ide.0; hdd on ide.1, whose unit 0, hdc,
    /// is the CD-ROM's); q35's IDE buses are the built-in AHCI ports, one unit each.
    fn ide(&mut self, target: Option<&str>) -> Result<(String, u32), ArgvError> {
        if self.machine == MachineFamily::Q35 {
            let bus = self.sata_slot()?;
            return Ok((bus, 0));
        }
        let slot = match target.and_then(|t| t.as_bytes().get(2).copied()) {
            Some(b'a') => ("ide.0", 0),
            Some(b'b') => ("ide.0", 1),
            Some(b'd') => ("ide.1", 1),
            _ => return Err(ArgvError::TooManyOnBus { bus: "ide", max: 3 }),
        };
        Ok((slot.0.to_string(), slot.1))
    }

    fn ide_cd(&mut self) -> Result<(String, u32), ArgvError> {
        Ok(("ide.1".to_string(), 0))
    }

    fn sata_slot(&mut self) -> Result<String, ArgvError> {
        if self.sata_next >= 6 {
            return Err(ArgvError::TooManyOnBus {
                bus: "sata",
                max: 6,
            });
        }
        let prefix = if self.machine == MachineFamily::Q35 {
            "ide"
        } else {
            "ahci0"
        };
        let bus = format!("{prefix}.{}", self.sata_next);
        self.sata_next += 1;
        Ok(bus)
    }

    fn sata(&mut self, devices: &mut Vec<Value>) -> Result<String, ArgvError> {
        if self.machine == MachineFamily::Pc && !self.ahci_added {
            devices.push(json!({ "driver": "ich9-ahci", "id": "ahci0" }));
            self.ahci_added = true;
        }
        self.sata_slot()
    }

    /// virtio-scsi: one controller for all SCSI disks.
    fn scsi(&mut self, devices: &mut Vec<Value>) {
        if !self.scsi_added {
            devices.push(scsi_controller());
            self.scsi_added = true;
        }
    }
}

/// Doubles commas, as QEMU's keyval syntax wants inside a value.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

impl Machine {
    /// Renders the IR as QEMU's argv (without the binary).
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        push(
            "-name",
            format!("guest={},debug-threads=on", self.name.replace(',', ",,")),
        );
        if let Some(u) = &self.uuid {
            push("-uuid", u.clone());
        }
        push(
            "-machine",
            format!("{}{}", self.machine_type, self.firmware.machine_props()),
        );
        push("-accel", self.accel.as_str().to_string());
        if let Some(cpu) = &self.cpu {
            push("-cpu", cpu.clone());
        }
        push("-m", self.memory_mib.to_string());
        push(
            "-smp",
            match self.max_vcpus {
                Some(m) => format!("{},maxcpus={m}", self.vcpus),
                None => self.vcpus.to_string(),
            },
        );
        let mut a2: Vec<String> = vec![
            "-no-user-config".into(),
            "-nodefaults".into(),
            "-no-shutdown".into(),
        ];
        a.append(&mut a2);
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        push("-msg", "timestamp=on".into());
        push("-sandbox", SANDBOX.into());
        for c in &self.chardevs {
            let mut s = format!("socket,id={},fd={},server=on,wait=off", c.id, c.fd);
            if let Some(l) = &c.logfile {
                s.push_str(&format!(",logfile={},logappend=on", esc(l)));
            }
            push("-chardev", s);
        }
        if let Some(m) = &self.monitor {
            push("-mon", format!("chardev={m},mode=control"));
        }
        if let Some(s) = &self.serial {
            push("-serial", format!("chardev:{s}"));
        }
        for (k, v) in self.firmware.args() {
            push(k, v);
        }
        for b in &self.blockdevs {
            push("-blockdev", b.to_string());
        }
        for n in &self.netdevs {
            push("-netdev", n.to_string());
        }
        for d in &self.devices {
            push("-device", d.to_string());
        }
        if let Some((k, initrd, cmdline)) = &self.kernel {
            push("-kernel", k.to_string_lossy().into_owned());
            if let Some(i) = initrd {
                push("-initrd", i.to_string_lossy().into_owned());
            }
            if let Some(c) = cmdline {
                push("-append", c.clone());
            }
        }
        let mut boot: Vec<String> = Vec::new();
        if let Some(o) = &self.boot_order {
            boot.push(format!("order={o}"));
        }
        if self.boot_menu {
            boot.push(format!("menu=on,splash-time={BOOT_MENU_SPLASH_MS}"));
        }
        if !boot.is_empty() {
            push("-boot", boot.join(","));
        }
        push("-display", "none".into());
        for v in &self.vnc {
            push("-vnc", v.clone());
        }
        if let Some(tag) = &self.loadvm {
            a.push("-loadvm".into());
            a.push(tag.clone());
        }
        if self.paused {
            a.push("-S".into());
        }
        a.into_iter().map(OsString::from).collect()
    }
}

/// QEMU's seccomp sandbox, as every VM runs with it.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The argv of a QEMU that only opens `file` (a regular file, read-only) with `aio`, under the
/// sandbox VMs get, then serves QMP on stdio: it starts only if this QEMU build, the kernel and
/// the sandbox allow that `aio`. Send it `qmp_capabilities` and `quit` on stdin.
pub fn aio_probe_argv(file: &Path, aio: Aio) -> Vec<OsString> {
    let node = json!({
        "driver": "file", "filename": file.to_string_lossy(), "node-name": "hv-probe",
        "aio": aio.as_str(), "read-only": true,
    });
    [
        "-machine",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-sandbox",
        SANDBOX,
        "-blockdev",
        &node.to_string(),
        "-qmp",
        "stdio",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// `lower` then `to_argv`.
pub fn build(spec: &VmSpec, caps: &QemuCaps, plan: &RunPlan) -> Result<Vec<OsString>, ArgvError> {
    Ok(lower(spec, caps, plan)?.to_argv())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{KernelBoot, VmName};

    fn caps() -> QemuCaps {
        QemuCaps {
            version: (7, 2, 22),
            accel: Accel::Tcg,
            kvm_cpu: "host".into(),
            aio: Aio::Threads,
        }
    }

    fn plan() -> RunPlan {
        RunPlan {
            qmp_fd: 3,
            serial_fd: 4,
            console_log: "/var/lib/hv/vms/web/console.log".into(),
            overlays: vec![],
            paused: false,
            loadvm: None,
            taps: vec![],
            chains: vec![],
            vnc_socket: "/var/lib/hv/run/7.vnc/sock".into(),
            nvram: None,
            tpm_fd: None,
            seed: None,
        }
    }

    /// Issue 14: the cloud-init seed is a raw, read-only virtio disk.
    #[test]
    fn the_vm_uuid_is_the_smbios_system_uuid() {
        let mut s = spec("uu");
        s.uuid = Some("0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4f".parse().unwrap());
        check("uuid", &s, &caps(), &plan());
    }

    #[test]
    fn cloud_init_seed_is_a_read_only_disk() {
        let mut s = spec("ci");
        s.disks
            .push("path=/d/root.qcow2,format=qcow2".parse().unwrap());
        s.cloud_init = Some(model::CloudInit {
            hostname: Some("ci".into()),
            ..Default::default()
        });
        let plan = RunPlan {
            seed: Some("/var/lib/hv/vms/ci/cidata.img".into()),
            ..plan()
        };
        check("cloud-init-seed", &s, &caps(), &plan);
    }

    fn spec(name: &str) -> VmSpec {
        VmSpec::new(name.parse::<VmName>().unwrap())
    }

    /// Renders one argument per line, the golden file format.
    fn render(argv: &[OsString]) -> String {
        let mut out = String::new();
        for a in argv {
            let s = a.to_string_lossy();
            if s.starts_with('-') && !out.is_empty() {
                out.push('\n');
            } else if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s);
        }
        out.push('\n');
        out
    }

    /// Compares with `tests/data/NAME.args`; `HV_UPDATE_GOLDEN=1 cargo test -p qemu-argv`
    /// rewrites the goldens.
    fn check(name: &str, spec: &VmSpec, caps: &QemuCaps, plan: &RunPlan) {
        let mut spec = spec.clone();
        model::assign_targets(&mut spec.disks);
        let spec = &spec;
        spec.validate().unwrap();
        let got = render(&build(spec, caps, plan).unwrap());
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(format!("{name}.args"));
        testkit::golden::assert_golden(&path, &got);
    }

    #[test]
    fn minimal_kernel_boot() {
        let mut s = spec("tiny");
        s.memory = model::Size(256 << 20);
        s.kernel = Some(KernelBoot {
            path: "/g/vmlinuz".into(),
            initrd: Some("/g/initrd.gz".into()),
            cmdline: Some("console=ttyS0 panic=-1".into()),
        });
        check("minimal-kernel-boot", &s, &caps(), &plan());
    }

    #[test]
    fn resize_headroom_vcpus_and_balloon() {
        let mut s = spec("grow");
        s.vcpus = 1;
        s.max_vcpus = Some(2);
        s.memory = model::Size(256 << 20);
        s.max_memory = Some(model::Size(512 << 20));
        s.graphics = model::GraphicsSpec::None;
        check("resize-headroom", &s, &caps(), &plan());
    }

    #[test]
    fn disks_on_every_bus_with_cache_modes() {
        let mut s = spec("web");
        s.vcpus = 2;
        for d in [
            "path=/d/root.qcow2,format=qcow2,bus=virtio,cache=none,aio=native",
            "path=/d/data.raw,format=raw,bus=scsi,cache=writethrough",
            "path=/d/old.raw,format=raw,bus=ide,cache=unsafe",
            "path=/d/sata.qcow2,format=qcow2,bus=sata,cache=directsync",
            "path=/d/ro.raw,format=raw,readonly=on",
        ] {
            s.disks.push(d.parse().unwrap());
        }
        s.cdrom = Some("/iso/debian,12.iso".into());
        s.boot = Some("cdrom,disk".parse().unwrap());
        s.boot_menu = true;
        s.graphics = model::GraphicsSpec::None;
        check("disks-every-bus", &s, &caps(), &plan());
    }

    #[test]
    fn q35_kvm_nics_vnc_paused() {
        let mut s = spec("desk");
        s.machine = MachineType::Q35;
        s.cdrom = Some("/iso/x.iso".into());
        s.disks
            .push("path=/d/a.qcow2,format=qcow2,bus=sata".parse().unwrap());
        s.nics.push("user,mac=52:54:00:00:00:01".parse().unwrap());
        s.nics
            .push("user,model=e1000,mac=52:54:00:00:00:02".parse().unwrap());
        s.graphics = "vnc,listen=0.0.0.0,port=5905,password=pw".parse().unwrap();
        let caps = QemuCaps {
            accel: Accel::Kvm,
            aio: Aio::IoUring,
            ..caps()
        };
        let plan = RunPlan {
            paused: true,
            ..plan()
        };
        check("q35-kvm-nics-vnc-paused", &s, &caps, &plan);
    }

    #[test]
    fn ephemeral_uses_overlays_and_auto_vnc_port() {
        let mut s = spec("eph");
        s.ephemeral = true;
        s.disks.push("path=/d/base.raw,format=raw".parse().unwrap());
        s.graphics = "vnc,listen=::1".parse().unwrap();
        let plan = RunPlan {
            overlays: vec![Some("/run/hv/7.ov0".into())],
            ..plan()
        };
        check("ephemeral-overlay", &s, &caps(), &plan);
    }

    /// Issue 9: every layer of a chain is its own node, so QEMU opens nothing a header names.
    #[test]
    fn backing_chains_are_explicit_nodes() {
        let mut s = spec("chain");
        s.disks
            .push("path=/p/top.qcow2,format=qcow2".parse().unwrap());
        s.disks.push("path=/p/eph.raw,format=raw".parse().unwrap());
        let plan = RunPlan {
            chains: vec![
                vec![
                    Layer {
                        path: "/p/mid.qcow2".into(),
                        format: DiskFormat::Qcow2,
                    },
                    Layer {
                        path: "/p/base.raw".into(),
                        format: DiskFormat::Raw,
                    },
                ],
                vec![],
            ],
            overlays: vec![None, Some("/run/hv/7.ov1".into())],
            ..plan()
        };
        check("backing-chain", &s, &caps(), &plan);
    }

    #[test]
    fn a_pinned_machine_is_kept_on_a_newer_qemu() {
        let mut s = spec("old");
        s.machine = "pc-q35-6.2".parse().unwrap();
        let argv = render(&build(&s, &caps(), &plan()).unwrap());
        assert!(argv.contains("-machine pc-q35-6.2\n"), "{argv}");
    }

    /// Issue 11: every VM has a VGA card; `console` (the default) adds hvd's private VNC
    /// socket, `vnc` adds it after the external listener, `none` has no VNC at all; the boot
    /// menu keeps the boot order.
    #[test]
    fn displays_and_boot_menu() {
        let vnc_args = |g: &str| -> Vec<String> {
            let mut s = spec("g");
            s.graphics = g.parse().unwrap();
            let argv: Vec<String> = build(&s, &caps(), &plan())
                .unwrap()
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert!(
                argv.iter().any(|a| a.contains(r#""driver":"VGA""#)),
                "{argv:?}"
            );
            argv.windows(2)
                .filter(|w| w[0] == "-vnc")
                .map(|w| w[1].clone())
                .collect()
        };
        let console = "unix:/var/lib/hv/run/7.vnc/sock,id=hv-console".to_string();
        assert_eq!(vnc_args("console"), std::slice::from_ref(&console));
        assert_eq!(
            vnc_args("vnc,port=5901"),
            ["127.0.0.1:1".to_string(), console]
        );
        assert!(vnc_args("none").is_empty());
        let mut s = spec("m");
        s.boot_menu = true;
        let argv = render(&build(&s, &caps(), &plan()).unwrap());
        assert!(
            argv.contains("\n-boot menu=on,splash-time=3000\n"),
            "{argv}"
        );
        let mut s = spec("c");
        s.graphics = "console".parse().unwrap();
        let odd = RunPlan {
            vnc_socket: "/s,t/run/7.vnc/sock".into(),
            ..plan()
        };
        let argv = render(&build(&s, &caps(), &odd).unwrap());
        assert!(
            argv.contains("-vnc unix:/s,,t/run/7.vnc/sock,id=hv-console"),
            "{argv}"
        );
    }

    /// Issue 14: OVMF code read-only and the VM's vars on pflash; Secure Boot locks the flash
    /// to SMM; a TPM is a swtpm socket, CRB on q35.
    #[test]
    fn uefi_secure_boot_tpm() {
        let mut s = spec("efi");
        s.machine = MachineType::Q35;
        s.firmware = model::Firmware::Uefi;
        s.secure_boot = true;
        s.tpm = true;
        s.disks.push("path=/d/esp.raw,format=raw".parse().unwrap());
        let plan = RunPlan {
            nvram: Some("/var/lib/hv/vms/efi/nvram.fd".into()),
            tpm_fd: Some(5),
            ..plan()
        };
        check("uefi-secure-boot-tpm", &s, &caps(), &plan);
        let mut s = spec("efi2");
        s.firmware = model::Firmware::Uefi;
        s.tpm = true;
        let argv = render(&build(&s, &caps(), &plan).unwrap());
        assert!(
            argv.contains("-machine pc-i440fx-7.2,pflash0=hv-pflash0,pflash1=hv-pflash1\n"),
            "{argv}"
        );
        assert!(argv.contains("/usr/share/OVMF/OVMF_CODE_4M.fd"), "{argv}");
        assert!(argv.contains(r#""driver":"tpm-tis""#), "{argv}");
        assert!(!argv.contains("smm") && !argv.contains("secure"), "{argv}");
        // hvd must have made the vars and the swtpm.
        assert!(matches!(
            build(
                &s,
                &caps(),
                &RunPlan {
                    nvram: None,
                    ..plan.clone()
                }
            ),
            Err(ArgvError::Unsupported { .. })
        ));
        assert!(matches!(
            build(
                &s,
                &caps(),
                &RunPlan {
                    tpm_fd: None,
                    ..plan
                }
            ),
            Err(ArgvError::Unsupported { .. })
        ));
    }

    #[test]
    fn refusals() {
        let mut s = spec("n");
        s.nics.push("network=default".parse().unwrap());
        assert!(matches!(
            build(&s, &caps(), &plan()),
            Err(ArgvError::Unsupported { .. })
        ));
        let with_tap = RunPlan {
            taps: vec![Some("hvtap-7-0".into())],
            ..plan()
        };
        let argv = build(&s, &caps(), &with_tap).unwrap();
        assert!(
            argv.iter()
                .any(|a| a.to_string_lossy().contains(r#""ifname":"hvtap-7-0""#)),
            "{argv:?}"
        );
        let mut s = spec("f");
        s.disks.push("path=/d/x".parse().unwrap());
        assert!(matches!(
            build(&s, &caps(), &plan()),
            Err(ArgvError::UnknownFormat { .. })
        ));
        let mut s = spec("i");
        for n in 0..4 {
            s.disks
                .push(format!("path=/d/{n},format=raw,bus=ide").parse().unwrap());
        }
        model::assign_targets(&mut s.disks);
        assert!(matches!(
            build(&s, &caps(), &plan()),
            Err(ArgvError::TooManyOnBus { bus: "ide", .. })
        ));
        // A disk that asks for io_uring where the probe found none is refused; threads is
        // always there.
        let mut s = spec("u");
        s.disks
            .push("path=/d/u,format=raw,aio=io_uring".parse().unwrap());
        let e = build(&s, &caps(), &plan()).unwrap_err();
        assert!(e.to_string().contains("aio=threads"), "{e}");
        let uring = QemuCaps {
            aio: Aio::IoUring,
            ..caps()
        };
        assert!(build(&s, &uring, &plan()).is_ok());
        s.disks[0].aio = Some(model::DiskAio::Threads);
        let argv = build(&s, &uring, &plan()).unwrap();
        assert!(
            !argv
                .iter()
                .any(|a| a.to_string_lossy().contains("io_uring")),
            "{argv:?}"
        );
    }
}
