//! Converts a libvirt domain XML (as `virsh dumpxml` and `virt-install` write it) into hv's
//! [`VmSpec`], listing by XPath every element and attribute it cannot carry over and what
//! happens instead.
//!
//! Pure: no I/O. The input is hostile: its size is capped ([`MAX_XML_BYTES`]), DTDs are
//! refused and the node count is limited (roxmltree), nothing panics on any input. Something
//! essential that hv cannot express (a domain type other than kvm/qemu, an arch other than
//! x86_64, a disk source hv cannot open, an unknown memory unit ...) is an [`ImportError`]:
//! the caller defines nothing.
//!
//! Mapped: `name`; `uuid` (any form libvirt takes); `memory`/`currentMemory` in every libvirt unit (KiB when absent; a
//! `currentMemory` below `memory` becomes `memory`, with `memory` as `max_memory`); `vcpu`
//! and its `current` (`vcpus`, `max_vcpus`); `os` (machine `pc`/`q35`/versioned, a
//! distribution's own versions to their family; `boot dev=` and per-device `boot order=`;
//! `bootmenu`; `kernel`/`initrd`/`cmdline`; `firmware='efi'` or a pflash `loader` → UEFI,
//! Secure Boot from `secure='yes'` or the `secure-boot` feature); disks (file and pool volume
//! sources, qcow2/raw, `cache`, `io`, target `dev`/`bus`, `readonly`, the first `cdrom`);
//! interfaces (network, bridge, user; MAC; virtio/e1000/rtl8139, e1000e → e1000); the first
//! `graphics` (VNC with listen, port, password; SPICE → hv's browser console); an emulated
//! `tpm`; domain type kvm → accel auto, qemu → tcg. Silently fine (hv does the same):
//! acpi/apic/pae/smm features, a UTC clock, the default lifecycle actions, disabled
//! suspend, controllers, a pty serial console, PS/2 input, a VGA card.
//!
//! Refused (an error naming the XPath): a domain type other than kvm/qemu, an OS type other
//! than hvm, an arch other than x86_64, a machine other than pc/q35, an unknown memory unit or
//! a value that does not parse, a `block`/`network`/`dir` disk source, a `lun` disk, an image
//! format other than qcow2/raw, a disk or interface without its source, an interface type
//! other than network/bridge/user (macvtap `direct`, `ethernet`, `vhostuser` ...), and a
//! spec hv's checks refuse. Everything else is noted by XPath: dropped (metadata, CPU
//! model and tuning, addresses, sound, host devices, USB redirection, channels, balloon,
//! RNG, watchdog ...) or mapped to something near (non-VGA video, a tablet, a SPICE display,
//! a non-pty serial, a floppy, further CD-ROMs and displays).

mod ctx;
mod devices;
mod domain;
mod units;

use model::{SpecError, VmSpec};

pub use units::parse_memory;

/// The largest domain XML accepted (real ones are a few KiB).
pub const MAX_XML_BYTES: usize = 1 << 20;
/// The most XML nodes accepted (elements, attributes and text).
pub const MAX_XML_NODES: u32 = 50_000;

/// One element or attribute of the XML that is not carried over as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where it is, e.g. `/domain/devices/sound[1]` or `/domain/devices/disk[2]/driver/@discard`.
    pub xpath: String,
    /// What happens instead: dropped, or mapped to what.
    pub what: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.xpath, self.what)
    }
}

/// The result of a conversion: a spec that passed [`VmSpec::validate`], and the notes in
/// document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub spec: VmSpec,
    pub notes: Vec<Note>,
}

/// Why a domain XML cannot be imported. Nothing of it may be defined.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file has {size} bytes; a domain XML may have at most {max}")]
    TooLarge { size: usize, max: usize },
    #[error("not a well-formed domain XML")]
    Xml(#[source] roxmltree::Error),
    /// Something essential that hv cannot express.
    #[error("{xpath}: {what}")]
    Unsupported { xpath: String, what: String },
    /// A value that does not parse, or a required element that is missing.
    #[error("{xpath}: {what}")]
    Invalid { xpath: String, what: String },
    /// The mapped spec does not validate (e.g. a VNC password hv cannot use).
    #[error("the converted spec is not valid for hv")]
    Spec(#[source] SpecError),
}

impl ImportError {
    /// The XPath the error is about, if it is about one element or attribute.
    pub fn xpath(&self) -> Option<&str> {
        match self {
            ImportError::Unsupported { xpath, .. } | ImportError::Invalid { xpath, .. } => {
                Some(xpath)
            }
            _ => None,
        }
    }
}

/// Converts one domain XML into an hv spec and the notes on what was not carried over.
pub fn convert(xml: &str) -> Result<Conversion, ImportError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(ImportError::TooLarge {
            size: xml.len(),
            max: MAX_XML_BYTES,
        });
    }
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts).map_err(ImportError::Xml)?;
    let mut ctx = ctx::Ctx::default();
    let spec = domain::convert(&mut ctx, doc.root_element())?;
    spec.validate().map_err(ImportError::Spec)?;
    let notes = ctx.finish(doc.root_element());
    Ok(Conversion { spec, notes })
}
