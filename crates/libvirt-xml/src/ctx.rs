//! Bookkeeping of what the conversion used: every element and attribute it read is marked, so
//! everything else can be listed at the end by its XPath.

use std::collections::HashSet;

use roxmltree::{Node, NodeId};

use crate::{ImportError, Note};

/// The elements and attributes used so far, and the notes made.
#[derive(Default)]
pub(crate) struct Ctx {
    used: HashSet<NodeId>,
    used_attrs: HashSet<(NodeId, String)>,
    /// (document position, note)
    notes: Vec<(usize, Note)>,
}

pub(crate) type N<'a, 'i> = Node<'a, 'i>;

impl Ctx {
    /// Marks `n` used.
    pub fn take(&mut self, n: N) {
        self.used.insert(n.id());
    }

    /// Marks `n`, its attributes and everything under it used (nothing to say about it).
    pub fn take_all(&mut self, n: N) {
        for d in n.descendants().filter(|d| d.is_element()) {
            self.used.insert(d.id());
            for a in d.attributes() {
                self.used_attrs.insert((d.id(), a.name().to_string()));
            }
        }
    }

    /// Attribute `name` of `n`, marked used.
    pub fn attr<'a>(&mut self, n: N<'a, '_>, name: &str) -> Option<&'a str> {
        self.used_attrs.insert((n.id(), name.to_string()));
        n.attribute(name)
    }

    /// The first child element `name` of `n`, marked used (further ones are left, and so
    /// listed as dropped).
    pub fn child<'a, 'i>(&mut self, n: N<'a, 'i>, name: &str) -> Option<N<'a, 'i>> {
        let c = n.children().find(|c| is(c, name))?;
        self.take(c);
        Some(c)
    }

    /// All child elements `name` of `n`, marked used.
    pub fn children<'a, 'i>(&mut self, n: N<'a, 'i>, name: &str) -> Vec<N<'a, 'i>> {
        let v: Vec<_> = n.children().filter(|c| is(c, name)).collect();
        for c in &v {
            self.take(*c);
        }
        v
    }

    /// A note on element `n` (marked used, so it is not listed again).
    pub fn note(&mut self, n: N, what: impl Into<String>) {
        self.take_all(n);
        self.notes.push((
            n.range().start,
            Note {
                xpath: xpath(n),
                what: what.into(),
            },
        ));
    }

    /// A note on attribute `name` of `n`.
    pub fn note_attr(&mut self, n: N, name: &str, what: impl Into<String>) {
        self.used_attrs.insert((n.id(), name.to_string()));
        self.notes.push((
            attr_pos(n, name),
            Note {
                xpath: attr_xpath(n, name),
                what: what.into(),
            },
        ));
    }

    /// Lists everything not used under `root` as dropped, and returns all notes in document
    /// order.
    pub fn finish(mut self, root: N) -> Vec<Note> {
        self.leftovers(root);
        self.notes.sort_by_key(|(pos, _)| *pos);
        self.notes.into_iter().map(|(_, n)| n).collect()
    }

    fn leftovers(&mut self, n: N) {
        if !self.used.contains(&n.id()) {
            let what = dropped_because(n);
            self.notes.push((
                n.range().start,
                Note {
                    xpath: xpath(n),
                    what,
                },
            ));
            return;
        }
        for a in n.attributes() {
            if !self.used_attrs.contains(&(n.id(), a.name().to_string())) {
                self.notes.push((
                    attr_pos(n, a.name()),
                    Note {
                        xpath: attr_xpath(n, a.name()),
                        what: "dropped: hv has no equivalent".into(),
                    },
                ));
            }
        }
        for c in n.children().filter(|c| c.is_element()) {
            self.leftovers(c);
        }
    }
}

/// Whether `n` is an element named `name` in no namespace.
pub(crate) fn is(n: &N, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace().is_none()
}

/// The trimmed text of `n`.
pub(crate) fn text<'a>(n: N<'a, '_>) -> &'a str {
    n.text().unwrap_or("").trim()
}

/// An error about element `n`.
pub(crate) fn unsupported(n: N, what: impl Into<String>) -> ImportError {
    ImportError::Unsupported {
        xpath: xpath(n),
        what: what.into(),
    }
}

/// An error about attribute `name` of `n`.
pub(crate) fn unsupported_attr(n: N, name: &str, what: impl Into<String>) -> ImportError {
    ImportError::Unsupported {
        xpath: attr_xpath(n, name),
        what: what.into(),
    }
}

pub(crate) fn invalid(n: N, what: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        xpath: xpath(n),
        what: what.into(),
    }
}

pub(crate) fn invalid_attr(n: N, name: &str, what: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        xpath: attr_xpath(n, name),
        what: what.into(),
    }
}

fn attr_pos(n: N, name: &str) -> usize {
    let i = n
        .attributes()
        .position(|a| a.name() == name)
        .unwrap_or_default();
    n.range().start + 1 + i
}

fn qname(n: &N) -> String {
    let t = n.tag_name();
    match t.namespace().and_then(|ns| n.lookup_prefix(ns)) {
        Some(p) if !p.is_empty() => format!("{p}:{}", t.name()),
        _ => t.name().to_string(),
    }
}

/// The XPath of element `n`: `/domain/devices/disk[2]/driver`. Children of `<devices>` always
/// carry their position among siblings of the same name; other elements only when there are
/// several.
pub(crate) fn xpath(n: N) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(n);
    while let Some(e) = cur.filter(|e| e.is_element()) {
        let name = e.tag_name();
        let same = |s: &N| s.is_element() && s.tag_name() == name;
        // Both sibling iterators start at `e` itself.
        let pos = e.prev_siblings().skip(1).filter(same).count();
        let total = pos + 1 + e.next_siblings().skip(1).filter(same).count();
        let in_devices = e.parent().is_some_and(|p| is(&p, "devices"));
        let q = qname(&e);
        parts.push(if in_devices || total > 1 {
            format!("{q}[{}]", pos + 1)
        } else {
            q
        });
        cur = e.parent();
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

pub(crate) fn attr_xpath(n: N, name: &str) -> String {
    format!("{}/@{name}", xpath(n))
}

/// Why an element nobody read is dropped, in words an admin knows.
fn dropped_because(n: N) -> String {
    let why = match n.tag_name().name() {
        "title" | "description" | "metadata" => "hv keeps no descriptions or metadata",
        "sound" => "hv gives VMs no sound card",
        "hostdev" => "hv does not pass host devices through",
        "redirdev" | "redirfilter" => "hv has no USB redirection",
        "smartcard" => "hv has no smartcard device",
        "channel" => "hv has no guest channels (the serial console stays)",
        "address" => "hv assigns device addresses itself",
        "alias" => "hv names devices itself",
        "seclabel" => "hv confines each QEMU with its own uid instead",
        "memballoon" => "hv adds a virtio balloon itself, to a VM with memory headroom",
        "rng" => "hv adds no random number generator device",
        "watchdog" => "hv adds no watchdog",
        "panic" => "hv adds no panic device",
        "filesystem" => "hv has no shared host directories",
        "cpu" => "hv picks the CPU model itself (the host's under KVM)",
        "cputune" | "numatune" | "memtune" | "blkiotune" | "iothreads" | "memoryBacking"
        | "resource" => "hv does no host tuning of VMs",
        "sysinfo" | "smbios" => "hv sets no SMBIOS data",
        "pm" => "hv's guests use QEMU's default power management",
        "iotune" => "hv sets no I/O limits",
        "bandwidth" => "hv sets no bandwidth limits",
        "target" => "hv names the host side itself",
        _ => "hv has no equivalent",
    };
    format!("dropped: {why}")
}
