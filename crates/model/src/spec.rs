//! The VM spec: what a user asked for, validated, persisted and dumped as TOML or JSON.
//!
//! CLI SPEC strings (`path=P,format=qcow2,bus=virtio`) parse through `FromStr`; spec files are
//! the serde form of [`VmSpec`] (unknown fields are rejected by name).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{VmName, VolRef};
use crate::nic::NicSpec;
use crate::size::{parse_size, Size};

/// Why a spec (or one of its parts) is invalid. The message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A string schema with a pattern, for types that (de)serialize through their text form.
pub(crate) fn string_schema(
    name: &str,
    pattern: Option<&str>,
    description: &str,
) -> schemars::schema::Schema {
    use schemars::schema::{InstanceType, Metadata, SchemaObject, StringValidation};
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: pattern.map(|p| {
            Box::new(StringValidation {
                pattern: Some(p.to_string()),
                ..Default::default()
            })
        }),
        metadata: Some(Box::new(Metadata {
            title: Some(name.to_string()),
            description: Some(description.to_string()),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

/// Serde and JSON schema for a type whose text form (`Display` / `FromStr`) is its wire form:
/// serialized as that string, parsed (and so validated) when deserialized, documented as a
/// string with an optional pattern.
macro_rules! text_form {
    ($name:ident, $pattern:expr, $description:expr) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> String {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
                $crate::spec::string_schema(stringify!($name), $pattern, $description)
            }
        }
    };
}
pub(crate) use text_form;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal, { $($var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($var),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(SpecError::new($field, format!(
                        "unknown value {s:?}; use one of: {}",
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// The family of QEMU machine types: i440FX (`pc`) or Q35 (`q35`).
    MachineFamily, "machine", { Pc = "pc", Q35 = "q35" });

/// The QEMU machine type: a family, and the QEMU version whose machine it is. hvd pins the
/// version (`pc-i440fx-7.2`, `pc-q35-7.2`) when the VM is defined, or at its next start, so
/// that the guest's hardware stays the same across QEMU upgrades and RAM snapshots and
/// migrations load into the machine they were made on. `pc` and `q35` are accepted unpinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Machine {
    pub family: MachineFamily,
    /// (major, minor) of the QEMU whose machine this is; `None` until pinned.
    pub version: Option<(u32, u32)>,
}

impl Machine {
    pub const PC: Machine = Machine {
        family: MachineFamily::Pc,
        version: None,
    };
    pub const Q35: Machine = Machine {
        family: MachineFamily::Q35,
        version: None,
    };

    /// This machine, pinned to QEMU `version` unless it already is.
    pub fn pinned(self, version: (u32, u32)) -> Machine {
        Machine {
            version: self.version.or(Some(version)),
            ..self
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.family, self.version) {
            (family, None) => f.write_str(family.as_str()),
            (MachineFamily::Pc, Some((a, b))) => write!(f, "pc-i440fx-{a}.{b}"),
            (MachineFamily::Q35, Some((a, b))) => write!(f, "pc-q35-{a}.{b}"),
        }
    }
}

impl FromStr for Machine {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SpecError::new(
                "machine",
                format!(
                    "unknown machine type {s:?}; use pc, q35, or a versioned one such as pc-i440fx-7.2 or pc-q35-7.2"
                ),
            )
        };
        let versioned = |rest: &str| -> Result<(u32, u32), SpecError> {
            let (a, b) = rest.split_once('.').ok_or_else(bad)?;
            let num = |n: &str| {
                (!n.is_empty() && n.len() <= 4 && n.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| n.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(bad)
            };
            Ok((num(a)?, num(b)?))
        };
        if let Some(rest) = s.strip_prefix("pc-i440fx-") {
            return Ok(Machine {
                family: MachineFamily::Pc,
                version: Some(versioned(rest)?),
            });
        }
        if let Some(rest) = s.strip_prefix("pc-q35-") {
            return Ok(Machine {
                family: MachineFamily::Q35,
                version: Some(versioned(rest)?),
            });
        }
        let family = s.parse::<MachineFamily>().map_err(|_| bad())?;
        Ok(Machine {
            family,
            version: None,
        })
    }
}

text_form!(
    Machine,
    Some(r"^(pc|q35|pc-i440fx-[0-9]{1,4}\.[0-9]{1,4}|pc-q35-[0-9]{1,4}\.[0-9]{1,4})$"),
    "The QEMU machine type: pc or q35, pinned by hvd to a QEMU version (pc-i440fx-7.2, pc-q35-7.2)"
);
string_enum!(
    /// Accelerator choice; `auto` means KVM when it runs standard guests, else TCG.
    Accel, "accel", { Auto = "auto", Kvm = "kvm", Tcg = "tcg" });
string_enum!(
    /// Disk image format (qemu-img owns both).
    DiskFormat, "format", { Qcow2 = "qcow2", Raw = "raw" });
string_enum!(
    /// The bus a disk is attached to.
    DiskBus, "bus", { Virtio = "virtio", Ide = "ide", Sata = "sata", Scsi = "scsi" });
string_enum!(
/// Host cache mode, with QEMU's meanings.
CacheMode, "cache", {
    None = "none", Writeback = "writeback", Writethrough = "writethrough",
    Directsync = "directsync", Unsafe = "unsafe",
});
/// How QEMU submits a disk's I/O (libvirt's `<driver io=…>`); absent: hvd's default for the
/// host (io_uring where QEMU can use it, else threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DiskAio {
    /// QEMU's worker threads.
    #[serde(rename = "threads")]
    Threads,
    /// Linux io_uring: reads from the page cache complete inline (fast snapshot revert);
    /// buffered writes go through kernel workers.
    #[serde(rename = "io_uring")]
    IoUring,
    /// Linux AIO; needs `cache=none` or `cache=directsync` (O_DIRECT).
    #[serde(rename = "native")]
    Native,
}

impl DiskAio {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskAio::Threads => "threads",
            DiskAio::IoUring => "io_uring",
            DiskAio::Native => "native",
        }
    }
}

impl FromStr for DiskAio {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(DiskAio::Threads),
            "io_uring" => Ok(DiskAio::IoUring),
            "native" => Ok(DiskAio::Native),
            _ => Err(SpecError::new(
                "aio",
                format!("unknown value {s:?}; use one of: threads, io_uring, native"),
            )),
        }
    }
}

impl fmt::Display for DiskAio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

string_enum!(
    /// Emulated NIC model.
    NicModel, "model", { Virtio = "virtio", E1000 = "e1000", Rtl8139 = "rtl8139" });
string_enum!(
    /// Where a NIC is plugged in.
    NicKind, "type", { User = "user", Network = "network", Bridge = "bridge" });

impl Default for Machine {
    fn default() -> Self {
        Machine::PC
    }
}
#[allow(clippy::derivable_impls)] // the enums come from `string_enum!`
impl Default for Accel {
    fn default() -> Self {
        Accel::Auto
    }
}
#[allow(clippy::derivable_impls)] // the enums come from `string_enum!`
impl Default for DiskBus {
    fn default() -> Self {
        DiskBus::Virtio
    }
}
#[allow(clippy::derivable_impls)] // the enums come from `string_enum!`
impl Default for CacheMode {
    fn default() -> Self {
        CacheMode::Writeback
    }
}
#[allow(clippy::derivable_impls)] // the enums come from `string_enum!`
impl Default for NicModel {
    fn default() -> Self {
        NicModel::Virtio
    }
}

fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// Splits `k=v,k=v` into pairs; a bare word becomes `(word, "")`.
pub(crate) fn kv_pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn on_off(field: &str, v: &str) -> Result<bool, SpecError> {
    match v {
        "on" | "yes" | "true" | "1" | "" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(SpecError::new(
            field,
            format!("expected on or off, got {v:?}"),
        )),
    }
}

/// A disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The image file. For a volume (`vol`), filled in by hvd from the pool.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub path: PathBuf,
    /// A volume in a pool, instead of a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vol: Option<VolRef>,
    /// The libvirt-style name the disk is known by (`vda`, `sdb`, `hda`); assigned by hvd
    /// when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Recorded at define time (probed when not given) and never re-probed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub cache: CacheMode,
    /// I/O submission; hvd's host default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aio: Option<DiskAio>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// Creates the image with this size when the file is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

impl FromStr for DiskSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut d = DiskSpec {
            path: PathBuf::new(),
            vol: None,
            target: None,
            format: None,
            bus: DiskBus::default(),
            cache: CacheMode::default(),
            aio: None,
            readonly: false,
            size: None,
        };
        for (k, v) in kv_pairs(s) {
            match k {
                "path" | "file" => d.path = PathBuf::from(v),
                "vol" => d.vol = Some(v.parse()?),
                "target" | "dev" => d.target = Some(v.to_string()),
                "format" => d.format = Some(v.parse()?),
                "bus" => d.bus = v.parse()?,
                "cache" => d.cache = v.parse()?,
                "aio" | "io" => d.aio = Some(v.parse()?),
                "readonly" | "ro" => d.readonly = on_off("disk readonly", v)?,
                "size" => {
                    d.size = Some(Size(
                        parse_size(v).map_err(|e| SpecError::new("disk size", e.to_string()))?,
                    ))
                }
                _ => {
                    return Err(SpecError::new(
                        "disk",
                        format!(
                            "unknown key {k:?} in {s:?}; use path=P or vol=POOL/NAME, then [,format=qcow2|raw][,bus=virtio|ide|sata|scsi]\
                             [,cache=MODE][,aio=threads|io_uring|native][,readonly=on][,size=SIZE]"
                        ),
                    ))
                }
            }
        }
        d.validate(0)?;
        Ok(d)
    }
}

impl DiskSpec {
    fn validate(&self, i: usize) -> Result<(), SpecError> {
        let field = format!("disks[{i}]");
        if self.path.as_os_str().is_empty() && self.vol.is_none() {
            return Err(SpecError::new(
                field,
                "a disk needs path=FILE or vol=POOL/NAME",
            ));
        }
        if !self.path.as_os_str().is_empty() {
            crate::check_host_path(&field, &self.path)?;
        }
        if self.readonly && self.size.is_some() {
            return Err(SpecError::new(
                field,
                "a read-only disk cannot be created with size=",
            ));
        }
        if self.readonly && !matches!(self.bus, DiskBus::Virtio | DiskBus::Scsi) {
            return Err(SpecError::new(
                field,
                format!(
                    "QEMU cannot attach a read-only disk on bus={}; use bus=virtio or bus=scsi",
                    self.bus
                ),
            ));
        }
        if let Some(t) = &self.target {
            let prefix = self.bus.target_prefix();
            let ok = t.len() == 3 && t.starts_with(prefix) && t.as_bytes()[2].is_ascii_lowercase();
            if !ok {
                return Err(SpecError::new(
                    field,
                    format!(
                        "target {t:?} does not fit bus={}; use {prefix}a to {prefix}z",
                        self.bus
                    ),
                ));
            }
            if t == "hdc" {
                return Err(SpecError::new(
                    field,
                    "hdc is the CD-ROM's place; pick another IDE target",
                ));
            }
        }
        if self.aio == Some(DiskAio::Native)
            && !matches!(self.cache, CacheMode::None | CacheMode::Directsync)
        {
            return Err(SpecError::new(
                field,
                format!(
                    "aio=native needs O_DIRECT: add cache=none (or cache=directsync), not cache={}",
                    self.cache
                ),
            ));
        }
        if let Some(Size(0)) = self.size {
            return Err(SpecError::new(field, "size must be larger than 0"));
        }
        Ok(())
    }
}

impl DiskBus {
    /// The prefix of this bus's target names.
    pub fn target_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Scsi | DiskBus::Sata => "sd",
            DiskBus::Ide => "hd",
        }
    }
}

/// Gives every disk without a target the first free name for its bus (`hdc` stays free for
/// the CD-ROM).
pub fn assign_targets(disks: &mut [DiskSpec]) {
    let mut used: Vec<String> = disks.iter().filter_map(|d| d.target.clone()).collect();
    used.push("hdc".into());
    for d in disks.iter_mut().filter(|d| d.target.is_none()) {
        let prefix = d.bus.target_prefix();
        if let Some(t) = (b'a'..=b'z')
            .map(|c| format!("{prefix}{}", c as char))
            .find(|t| !used.contains(t))
        {
            used.push(t.clone());
            d.target = Some(t);
        }
    }
}

/// VNC display settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VncSpec {
    #[serde(default = "default_listen")]
    pub listen: IpAddr,
    /// TCP port (5900 and up); chosen automatically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The password (a secret: hvd stores it but never sends it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// In answers (`hv info`, `hv dump`): a password is set; its value is left out. In a spec
    /// sent back without `password` (`hv edit`, `hv define` of a dump): keep the VM's password.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub password_set: bool,
}

fn default_listen() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// The VM's display. Every VM has an emulated VGA card (so screenshots work); the variants say
/// who can see it live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", tag = "type", deny_unknown_fields)]
pub enum GraphicsSpec {
    /// No live display (no VNC server at all); screenshots still work.
    None,
    /// The browser console: a VNC server on a Unix socket only hvd reaches, proxied by hvd to
    /// authenticated callers.
    #[default]
    Console,
    /// An external VNC listener (weak VNC passwords) in addition to the browser console.
    Vnc(VncSpec),
}

impl FromStr for GraphicsSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = kv_pairs(s);
        let usage = "use console, none or vnc[,listen=ADDR][,port=N][,password=PW]";
        match it.next() {
            Some(("none", "")) if s == "none" => Ok(GraphicsSpec::None),
            Some(("console", "")) if s == "console" => Ok(GraphicsSpec::Console),
            Some(("vnc", "")) => {
                let mut vnc = VncSpec {
                    listen: default_listen(),
                    port: None,
                    password: None,
                    password_set: false,
                };
                for (k, v) in it {
                    match k {
                        "listen" => {
                            vnc.listen = v.parse().map_err(|_| {
                                SpecError::new("graphics", format!("invalid listen address {v:?}; use an IP address such as 127.0.0.1 or 0.0.0.0"))
                            })?
                        }
                        "port" => {
                            vnc.port = Some(v.parse().map_err(|_| {
                                SpecError::new("graphics", format!("invalid port {v:?}"))
                            })?)
                        }
                        "password" | "passwd" => vnc.password = Some(v.to_string()),
                        _ => return Err(SpecError::new("graphics", format!("unknown key {k:?}; {usage}"))),
                    }
                }
                let g = GraphicsSpec::Vnc(vnc);
                g.validate()?;
                Ok(g)
            }
            _ => Err(SpecError::new(
                "graphics",
                format!("invalid graphics {s:?}; {usage}"),
            )),
        }
    }
}

impl GraphicsSpec {
    /// The same display with its password replaced by `password_set` (for API answers).
    pub fn redacted(&self) -> GraphicsSpec {
        match self {
            GraphicsSpec::None => GraphicsSpec::None,
            GraphicsSpec::Console => GraphicsSpec::Console,
            GraphicsSpec::Vnc(v) => GraphicsSpec::Vnc(VncSpec {
                password: None,
                password_set: v.password_set || v.password.is_some(),
                ..v.clone()
            }),
        }
    }

    /// Fills in a password left out as `password_set` from `current` (the VM's stored display;
    /// `None` for a new VM), so the stored spec always holds the value itself.
    pub fn restore_password(&mut self, current: Option<&GraphicsSpec>) -> Result<(), SpecError> {
        let GraphicsSpec::Vnc(v) = self else {
            return Ok(());
        };
        if v.password.is_none() && v.password_set {
            v.password = match current {
                Some(GraphicsSpec::Vnc(c)) => c.password.clone(),
                _ => None,
            };
            if v.password.is_none() {
                return Err(SpecError::new(
                    "graphics",
                    "the VNC password was left out of this spec (password_set = true) and there is no stored one to keep; give it as password = \"...\"",
                ));
            }
        }
        v.password_set = false;
        Ok(())
    }

    fn validate(&self) -> Result<(), SpecError> {
        if let GraphicsSpec::Vnc(v) = self {
            if let Some(p) = v.port {
                if !(5900..=65535).contains(&p) {
                    return Err(SpecError::new(
                        "graphics",
                        format!("VNC port {p} is out of range; use 5900-65535"),
                    ));
                }
            }
            if let Some(pw) = &v.password {
                if pw.is_empty()
                    || pw.len() > 8
                    || pw.contains(',')
                    || pw.chars().any(char::is_control)
                {
                    return Err(SpecError::new(
                        "graphics",
                        "a VNC password has 1 to 8 characters (the VNC protocol uses only 8), no commas and no control characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One device class in the boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootDevice {
    Cdrom,
    Disk,
    Network,
}

impl BootDevice {
    /// QEMU's `-boot order=` letter.
    pub fn letter(self) -> char {
        match self {
            BootDevice::Cdrom => 'd',
            BootDevice::Disk => 'c',
            BootDevice::Network => 'n',
        }
    }
}

/// Boot order: `cdrom,disk,network` words or QEMU's letters (`dc`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BootOrder(pub Vec<BootDevice>);

impl FromStr for BootOrder {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "use a list like cdrom,disk,network or QEMU letters like dc (d=cdrom, c=disk, n=network)";
        let mut out = Vec::new();
        let words: Vec<&str> = s.split(',').map(str::trim).collect();
        let all_letters = words.len() == 1 && s.chars().all(|c| matches!(c, 'c' | 'd' | 'n'));
        if s.is_empty() {
            return Err(SpecError::new("boot", format!("empty boot order; {usage}")));
        }
        if all_letters {
            for c in s.chars() {
                out.push(match c {
                    'c' => BootDevice::Disk,
                    'd' => BootDevice::Cdrom,
                    _ => BootDevice::Network,
                });
            }
        } else {
            for w in words {
                out.push(match w {
                    "cdrom" | "cd" => BootDevice::Cdrom,
                    "disk" | "hd" => BootDevice::Disk,
                    "network" | "net" => BootDevice::Network,
                    _ => {
                        return Err(SpecError::new(
                            "boot",
                            format!("unknown boot device {w:?}; {usage}"),
                        ))
                    }
                });
            }
        }
        for (i, d) in out.iter().enumerate() {
            if out[..i].contains(d) {
                return Err(SpecError::new(
                    "boot",
                    format!("{s:?} lists a device twice; {usage}"),
                ));
            }
        }
        Ok(BootOrder(out))
    }
}

impl fmt::Display for BootOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self
            .0
            .iter()
            .map(|d| match d {
                BootDevice::Cdrom => "cdrom",
                BootDevice::Disk => "disk",
                BootDevice::Network => "network",
            })
            .collect();
        f.write_str(&words.join(","))
    }
}

text_form!(
    BootOrder,
    None,
    "Boot devices in order: cdrom,disk,network words or QEMU letters (dc)"
);

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// What a user asked for: persisted, dumped, edited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: VmName,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory: Size,
    /// vCPU hotplug headroom (`hv set --vcpus`); None: no headroom, the maximum is `vcpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// Memory headroom through a virtio balloon (`hv set --memory`); None: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Size>,
    #[serde(default)]
    pub machine: Machine,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub graphics: GraphicsSpec,
    /// Show the firmware's boot menu (SeaBIOS: press Esc) at every boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot_menu: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autostart: bool,
    #[serde(default, skip_serializing_if = "crate::Firmware::is_bios")]
    pub firmware: crate::Firmware,
    /// OVMF's Secure Boot build with Microsoft's keys enrolled (uefi and q35 only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_boot: bool,
    /// A TPM 2.0 emulated by a per-VM `swtpm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tpm: bool,
    /// A cloud-init NoCloud seed hv builds and attaches read-only (see `model::cloudinit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<crate::CloudInit>,
    /// The SMBIOS system UUID (`-uuid`); hv makes one at define when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<crate::VmUuid>,
}

fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> Size {
    Size(512 << 20)
}

/// Limits that keep a spec sane before the host is asked.
pub const MAX_VCPUS: u32 = 255;
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 4 << 40;
pub const MAX_DISKS: usize = 16;
pub const MAX_NICS: usize = 8;
/// Linux on x86 takes a kernel command line of at most this many bytes (`COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE: usize = 2048;

impl VmSpec {
    /// A spec with defaults for everything but the name.
    pub fn new(name: VmName) -> Self {
        VmSpec {
            name,
            vcpus: default_vcpus(),
            memory: default_memory(),
            max_vcpus: None,
            max_memory: None,
            machine: Machine::default(),
            accel: Accel::default(),
            kernel: None,
            disks: Vec::new(),
            cdrom: None,
            boot: None,
            nics: Vec::new(),
            graphics: GraphicsSpec::default(),
            boot_menu: false,
            ephemeral: false,
            autostart: false,
            firmware: crate::Firmware::default(),
            secure_boot: false,
            tpm: false,
            cloud_init: None,
            uuid: None,
        }
    }

    /// The CD-ROM as a volume reference, when it is given as `POOL/NAME`.
    pub fn cdrom_vol(&self) -> Option<VolRef> {
        let c = self.cdrom.as_ref()?;
        if c.is_absolute() {
            return None;
        }
        c.to_str()?.parse().ok()
    }

    /// Memory in MiB, as QEMU's `-m` takes it.
    pub fn memory_mib(&self) -> u64 {
        self.memory.0 >> 20
    }

    /// Checks everything that needs no host access.
    /// The spec as the API shows it: secrets (the VNC password) left out.
    pub fn redacted(&self) -> VmSpec {
        VmSpec {
            graphics: self.graphics.redacted(),
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::new(
                "vcpus",
                format!("{} vCPUs is out of range; use 1 to {MAX_VCPUS}", self.vcpus),
            ));
        }
        let m = self.memory.0;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&m) {
            return Err(SpecError::new(
                "memory",
                format!("{} is out of range; use 16M to 4T", self.memory),
            ));
        }
        if !m.is_multiple_of(1 << 20) {
            return Err(SpecError::new(
                "memory",
                format!("{} bytes is not a whole number of MiB", m),
            ));
        }
        if let Some(k) = &self.kernel {
            for (what, p) in [("kernel", Some(&k.path)), ("initrd", k.initrd.as_ref())] {
                if let Some(p) = p {
                    crate::check_host_path(what, p)?;
                }
            }
            if let Some(c) = &k.cmdline {
                if let Some(ch) = c.chars().find(|ch| ch.is_control()) {
                    return Err(SpecError::new(
                        "cmdline",
                        format!("contains the control character {ch:?}; use one line of text"),
                    ));
                }
                if c.len() > MAX_CMDLINE {
                    return Err(SpecError::new(
                        "cmdline",
                        format!("is {} bytes; Linux takes at most {MAX_CMDLINE}", c.len()),
                    ));
                }
            }
        }
        if self.disks.len() > MAX_DISKS {
            return Err(SpecError::new(
                "disks",
                format!("at most {MAX_DISKS} disks"),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            d.validate(i)?;
            let same = |o: &DiskSpec| {
                (o.vol.is_some() && o.vol == d.vol) || (!path_is_empty(&o.path) && o.path == d.path)
            };
            if d.target.is_some() && self.disks[..i].iter().any(|o| o.target == d.target) {
                return Err(SpecError::new(
                    format!("disks[{i}]"),
                    format!(
                        "target {} is used twice",
                        d.target.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if self.disks[..i].iter().any(same) {
                return Err(SpecError::new(
                    format!("disks[{i}]"),
                    format!("{:?} is attached twice", d.path),
                ));
            }
        }
        if let Some(c) = &self.cdrom {
            if c.is_absolute() {
                crate::check_host_path("cdrom", c)?;
            }
            if !c.as_os_str().is_empty() && !c.is_absolute() && self.cdrom_vol().is_none() {
                return Err(SpecError::new(
                    "cdrom",
                    format!("{c:?} is neither an absolute path nor a volume (POOL/NAME)"),
                ));
            }
        }
        if let Some(b) = &self.boot {
            if b.0.contains(&BootDevice::Cdrom) && self.cdrom.is_none() {
                return Err(SpecError::new(
                    "boot",
                    "boots from cdrom but the VM has no --cdrom",
                ));
            }
            if b.0.contains(&BootDevice::Disk) && self.disks.is_empty() {
                return Err(SpecError::new(
                    "boot",
                    "boots from disk but the VM has no --disk",
                ));
            }
            if b.0.contains(&BootDevice::Network) && self.nics.is_empty() {
                return Err(SpecError::new(
                    "boot",
                    "boots from network but the VM has no --nic",
                ));
            }
        }
        if self.nics.len() > MAX_NICS {
            return Err(SpecError::new("nics", format!("at most {MAX_NICS} NICs")));
        }
        for (i, n) in self.nics.iter().enumerate() {
            n.validate(i)?;
            if let Some(mac) = n.mac {
                if self.nics[..i].iter().any(|o| o.mac == Some(mac)) {
                    return Err(SpecError::new(
                        format!("nics[{i}]"),
                        format!("MAC {mac} is used twice"),
                    ));
                }
            }
        }
        self.graphics.validate()?;
        crate::firmware::validate(self)?;
        crate::resources::validate(self)?;
        if let Some(c) = &self.cloud_init {
            c.validate(self.name.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<VmName, SpecError> {
        s.parse()
    }

    #[test]
    fn machine_types_are_family_or_pinned_and_keep_their_text() {
        for (text, family, version) in [
            ("pc", MachineFamily::Pc, None),
            ("q35", MachineFamily::Q35, None),
            ("pc-i440fx-7.2", MachineFamily::Pc, Some((7, 2))),
            ("pc-q35-10.1", MachineFamily::Q35, Some((10, 1))),
        ] {
            let m: Machine = text.parse().unwrap();
            assert_eq!((m.family, m.version), (family, version), "{text}");
            assert_eq!(m.to_string(), text);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Machine>(&json).unwrap(), m);
        }
        assert_eq!(Machine::PC.pinned((7, 2)).to_string(), "pc-i440fx-7.2");
        assert_eq!(
            "pc-q35-6.2".parse::<Machine>().unwrap().pinned((7, 2)),
            "pc-q35-6.2".parse().unwrap(),
            "a pinned machine stays pinned"
        );
        for bad in [
            "",
            "i440fx",
            "pc-i440fx-7",
            "pc-q35-7.x",
            "pc-q35-.2",
            "pc-i440fx-7.2.1",
            "microvm",
        ] {
            let e = bad.parse::<Machine>().unwrap_err();
            assert_eq!(e.field, "machine", "{bad}");
        }
    }

    #[test]
    fn disk_spec_strings() {
        let d: DiskSpec = "path=/v/a.qcow2,format=qcow2,bus=scsi,cache=none,readonly=on"
            .parse()
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/v/a.qcow2"));
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert_eq!(
            (d.bus, d.cache, d.readonly),
            (DiskBus::Scsi, CacheMode::None, true)
        );
        let d: DiskSpec = "vol=default/web.qcow2,size=1G".parse().unwrap();
        assert_eq!(d.vol.unwrap().to_string(), "default/web.qcow2");
        assert!("vol=web.qcow2".parse::<DiskSpec>().is_err());
        let mut s = VmSpec::new("c".parse().unwrap());
        s.cdrom = Some("isos/debian.iso".into());
        assert_eq!(s.cdrom_vol().unwrap().to_string(), "isos/debian.iso");
        s.validate().unwrap();
        s.cdrom = Some("debian.iso".into());
        assert_eq!(s.validate().unwrap_err().field, "cdrom");
        let d: DiskSpec = "path=/v/b.img,size=2G".parse().unwrap();
        assert_eq!(d.size, Some(Size(2 << 30)));
        for bad in [
            "format=qcow2",
            "path=rel.img",
            "path=/a,format=vmdk",
            "path=/a,bus=usb",
            "path=/a,color=red",
            "path=/a,size=huge",
            "path=/a,readonly=on,size=1G",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_are_assigned_per_bus_and_checked() {
        let mut disks: Vec<DiskSpec> = [
            "path=/a",
            "path=/b,bus=scsi",
            "path=/c,target=vdb",
            "path=/d",
            "path=/e,bus=ide",
            "path=/f,bus=ide",
            "path=/g,bus=ide",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assign_targets(&mut disks);
        let t: Vec<&str> = disks.iter().map(|d| d.target.as_deref().unwrap()).collect();
        assert_eq!(t, ["vda", "sda", "vdb", "vdc", "hda", "hdb", "hdd"]);
        for bad in [
            "path=/a,target=sda",
            "path=/a,bus=ide,target=hdc",
            "path=/a,target=vd1",
            "path=/a,target=vdaa",
            "path=/a,aio=native",
            "path=/a,aio=fast",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
        let d: DiskSpec = "path=/a,cache=none,aio=native".parse().unwrap();
        assert_eq!(d.aio, Some(DiskAio::Native));
        let d: DiskSpec = "path=/a,io=io_uring".parse().unwrap();
        assert_eq!(d.aio, Some(DiskAio::IoUring));
    }

    #[test]
    fn boot_orders() {
        assert_eq!(
            "dc".parse::<BootOrder>().unwrap().0,
            vec![BootDevice::Cdrom, BootDevice::Disk]
        );
        assert_eq!(
            "cdrom,disk".parse::<BootOrder>().unwrap().to_string(),
            "cdrom,disk"
        );
        assert_eq!(
            "n".parse::<BootOrder>().unwrap().0,
            vec![BootDevice::Network]
        );
        for bad in ["", "x", "cdrom,floppy", "dd", "disk,disk", "a"] {
            assert!(bad.parse::<BootOrder>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vnc_password_is_redacted_and_restored() {
        let stored: GraphicsSpec = "vnc,password=secret".parse().unwrap();
        let shown = stored.redacted();
        let json = serde_json::to_string(&shown).unwrap();
        assert!(
            !json.contains("secret") && json.contains("password_set"),
            "{json}"
        );
        let mut back: GraphicsSpec = serde_json::from_str(&json).unwrap();
        back.restore_password(Some(&stored)).unwrap();
        assert_eq!(back, stored, "an edit keeps the password");
        let mut fresh: GraphicsSpec = serde_json::from_str(&json).unwrap();
        let err = fresh.restore_password(None).unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        let mut none = GraphicsSpec::None;
        none.restore_password(Some(&stored)).unwrap();
        assert_eq!(none, GraphicsSpec::None, "no VNC, no password");
    }

    #[test]
    fn graphics() {
        assert_eq!("none".parse::<GraphicsSpec>().unwrap(), GraphicsSpec::None);
        assert_eq!(
            "console".parse::<GraphicsSpec>().unwrap(),
            GraphicsSpec::Console
        );
        assert_eq!(GraphicsSpec::default(), GraphicsSpec::Console);
        // A stored spec without a graphics field (older hv) gets the browser console; one that
        // says none keeps none.
        let old: VmSpec = serde_json::from_str(r#"{"name":"old"}"#).unwrap();
        assert_eq!(old.graphics, GraphicsSpec::Console);
        assert!(!old.boot_menu);
        let none: VmSpec =
            serde_json::from_str(r#"{"name":"n","graphics":{"type":"none"}}"#).unwrap();
        assert_eq!(none.graphics, GraphicsSpec::None);
        let g: GraphicsSpec = "vnc,listen=0.0.0.0,port=5905,password=secret"
            .parse()
            .unwrap();
        let GraphicsSpec::Vnc(v) = g else {
            panic!("not vnc")
        };
        assert_eq!(
            (v.port, v.password.as_deref()),
            (Some(5905), Some("secret"))
        );
        for bad in [
            "spice",
            "vnc,port=80",
            "vnc,password=waytoolongpw",
            "vnc,listen=nowhere",
            "none,port=1",
            "console,port=1",
            "Console",
        ] {
            assert!(bad.parse::<GraphicsSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_file_rejects_unknown_fields_by_name() {
        let e = toml::from_str::<VmSpec>("name = \"a\"\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = toml::from_str::<VmSpec>("name = \"a\"\n[[disks]]\npath = \"/x\"\nspeed = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("speed"), "{e}");
    }

    #[test]
    fn spec_round_trips_through_toml_and_json() {
        let mut s = VmSpec::new(name("web").unwrap());
        s.memory = Size(1 << 30);
        s.disks
            .push("path=/d/a.qcow2,format=qcow2".parse().unwrap());
        s.nics.push("user,mac=52:54:00:00:00:01".parse().unwrap());
        s.graphics = "vnc,port=5901".parse().unwrap();
        s.boot = Some("disk".parse().unwrap());
        s.validate().unwrap();
        let t = toml::to_string(&s).unwrap();
        assert!(t.contains("memory = \"1G\""), "{t}");
        assert_eq!(toml::from_str::<VmSpec>(&t).unwrap(), s);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&j).unwrap(), s);
    }

    #[test]
    fn spec_validation() {
        let base = VmSpec::new(name("v").unwrap());
        type Mutation = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("vcpus", Box::new(|s| s.vcpus = 0)),
            ("vcpus", Box::new(|s| s.vcpus = 1000)),
            ("memory", Box::new(|s| s.memory = Size(1 << 20))),
            ("memory", Box::new(|s| s.memory = Size((64 << 20) + 1))),
            (
                "boot",
                Box::new(|s| s.boot = Some("cdrom".parse().unwrap())),
            ),
            ("boot", Box::new(|s| s.boot = Some("disk".parse().unwrap()))),
            ("cdrom", Box::new(|s| s.cdrom = Some("rel.iso".into()))),
            (
                "kernel",
                Box::new(|s| {
                    s.kernel = Some(KernelBoot {
                        path: "vmlinuz".into(),
                        initrd: None,
                        cmdline: None,
                    })
                }),
            ),
            (
                "disks[1]",
                Box::new(|s| {
                    s.disks.push("path=/a".parse().unwrap());
                    s.disks.push("path=/a".parse().unwrap());
                }),
            ),
            (
                "nics[1]",
                Box::new(|s| {
                    s.nics.push("user,mac=52:54:00:00:00:01".parse().unwrap());
                    s.nics.push("user,mac=52:54:00:00:00:01".parse().unwrap());
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = base.clone();
            mutate(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        base.validate().unwrap();
    }
}
