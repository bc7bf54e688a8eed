//! Converts a libvirt domain XML (as `virsh dumpxml` and `virt-install` write it) into hv's
//! [`VmSpec`], listing by XPath every element and attribute it cannot carry over and what
//! happens instead.
//!
//! Pure: no I/O. The input is hostile: its size is capped ([`MAX_XML_BYTES`]), DTDs are
//! refused and the node count is limited (roxmltree), nothing panics on any input. Something
//! essential that hv cannot express (a domain type other than kvm/qemu, an arch other than
//! x86_64, a disk source hv cannot open, an unknown memory unit ...) is an [`ImportError`]:
//! the caller defines nothing.

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
