//! `hv import libvirt FILE.xml...`: the CLI reads the domain XML files, converts them
//! (`libvirt-xml`), prints what is not carried over, and defines the VMs through the ordinary
//! define API (hvd validates them like any define). All or nothing: every file is converted
//! before anything is defined, and a define that fails undefines the VMs this run defined.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use client::Client;
use model::VmSpec;

#[derive(clap::Subcommand, Debug)]
pub enum ImportCmd {
    /// Import libvirt domain XML files (`virsh dumpxml NAME > NAME.xml`): every element hv
    /// cannot carry over is listed by its XPath; nothing is defined when one file cannot be
    /// imported.
    Libvirt(LibvirtArgs),
}

#[derive(clap::Args, Debug)]
pub struct LibvirtArgs {
    #[arg(required = true, value_name = "FILE.xml")]
    files: Vec<PathBuf>,
    /// Print the hv specs (TOML, as `hv dump` prints them) and the notes; define nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the VMs once all are defined.
    #[arg(long, conflicts_with = "dry_run")]
    start: bool,
    /// Start the VMs when hvd starts (`virsh dumpxml` does not carry libvirt's autostart).
    #[arg(long)]
    autostart: bool,
}

struct Converted {
    file: PathBuf,
    spec: VmSpec,
    notes: Vec<libvirt_xml::Note>,
}

/// Reads at most the size a domain XML may have, so a huge file is refused without reading it.
fn read_capped(file: &PathBuf) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut bytes = Vec::new();
    f.take(libvirt_xml::MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() > libvirt_xml::MAX_XML_BYTES {
        bail!(
            "{}: larger than {} bytes; a domain XML is a few KiB",
            file.display(),
            libvirt_xml::MAX_XML_BYTES
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", file.display()))
}

/// Converts every file, or fails naming the file (and the XPath) of the first that cannot be
/// imported; names used twice are refused.
fn convert_all(a: &LibvirtArgs) -> Result<Vec<Converted>> {
    let mut out: Vec<Converted> = Vec::new();
    for file in &a.files {
        let xml = read_capped(file)?;
        let c = libvirt_xml::convert(&xml).with_context(|| {
            format!(
                "{}: cannot be imported; nothing was defined",
                file.display()
            )
        })?;
        let mut spec = c.spec;
        spec.autostart |= a.autostart;
        if let Some(o) = out.iter().find(|o| o.spec.name == spec.name) {
            bail!(
                "{} and {} both define a VM named {}; nothing was defined",
                o.file.display(),
                file.display(),
                spec.name
            );
        }
        out.push(Converted {
            file: file.clone(),
            spec,
            notes: c.notes,
        });
    }
    Ok(out)
}

fn print_notes(c: &Converted, prefix: &str) {
    for n in &c.notes {
        println!("{prefix}{n}");
    }
}

pub fn run(c: &Client, cmd: ImportCmd) -> Result<()> {
    let ImportCmd::Libvirt(a) = cmd;
    let all = convert_all(&a)?;
    if a.dry_run {
        for (i, v) in all.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("# {} → VM {}", v.file.display(), v.spec.name);
            if v.notes.is_empty() {
                println!("# everything is carried over");
            }
            print_notes(v, "# ");
            // Like `hv dump`: a VNC password shows as `password_set`.
            print!("{}", toml::to_string(&v.spec.redacted())?);
        }
        return Ok(());
    }
    let existing: BTreeSet<String> = c.list()?.into_iter().map(|v| v.name).collect();
    if let Some(v) = all.iter().find(|v| existing.contains(v.spec.name.as_str())) {
        bail!(
            "{}: a VM named {} exists already; rename the domain's <name> or undefine the VM; nothing was defined",
            v.file.display(),
            v.spec.name
        );
    }
    let mut defined: Vec<String> = Vec::new();
    for v in &all {
        if let Err(e) = c.create(v.spec.clone(), false) {
            let mut undone = Vec::new();
            for name in defined.iter().rev() {
                match c.undefine(name, false, false) {
                    Ok(()) => undone.push(name.as_str()),
                    Err(u) => eprintln!("error: could not undefine {name} again: {u:#}"),
                }
            }
            return Err(e).with_context(|| {
                format!(
                    "{}: hvd refused VM {}; undefined again what this import defined ({})",
                    v.file.display(),
                    v.spec.name,
                    if undone.is_empty() {
                        "nothing".to_string()
                    } else {
                        undone.join(", ")
                    }
                )
            });
        }
        defined.push(v.spec.name.to_string());
    }
    for v in &all {
        print_notes(v, &format!("{}: ", v.file.display()));
        println!(
            "VM {} imported from {} ({} notes)",
            v.spec.name,
            v.file.display(),
            v.notes.len()
        );
    }
    if a.start {
        for v in &all {
            c.start(v.spec.name.as_str(), false)
                .with_context(|| format!("VM {} is defined but did not start", v.spec.name))?;
            println!("VM {} started", v.spec.name);
        }
    }
    Ok(())
}
