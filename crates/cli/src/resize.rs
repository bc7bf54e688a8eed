//! `hv set NAME [--vcpus N] [--memory SIZE] [--live] [--config]`: resize a VM like
//! `virsh setvcpus/setmem` (default: live if it runs, and in the definition), and the
//! vCPU/memory lines of `hv info`.

use anyhow::Result;
use api::{ResizeRequest, ResourceValues, ResourcesInfo};
use client::Client;
use model::Size;

use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub struct SetArgs {
    name: String,
    /// vCPUs; above the current count they are hot-plugged (up to the VM's max_vcpus).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory, e.g. 384M; a running VM moves its balloon (up to the VM's max_memory).
    #[arg(long)]
    memory: Option<Size>,
    /// Change the running VM (the default when it runs).
    #[arg(long)]
    live: bool,
    /// Change the definition (the default); alone: applies at the next start.
    #[arg(long)]
    config: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(c: &Client, a: SetArgs) -> Result<()> {
    // Neither flag: hvd's defaults (live if running, plus config).
    let (live, config) = match (a.live, a.config) {
        (false, false) => (None, None),
        (l, c) => (Some(l), Some(c)),
    };
    let r = c.resize(
        &a.name,
        &ResizeRequest {
            vcpus: a.vcpus,
            memory: a.memory,
            live,
            config,
        },
    )?;
    if !output::structured(a.format, &r)? {
        print!("{}", table(&r));
    }
    Ok(())
}

fn values(v: &ResourceValues) -> (String, String) {
    (
        format!("{} (max {})", v.vcpus, v.max_vcpus),
        format!(
            "{} (max {})",
            Size(v.memory_bytes),
            Size(v.max_memory_bytes)
        ),
    )
}

/// `vCPUs` and `Memory` rows: live values first when the VM runs, then the definition's.
pub fn rows(r: &ResourcesInfo) -> Vec<(String, String)> {
    let (cv, cm) = values(&r.config);
    match &r.live {
        Some(l) => {
            let (lv, lm) = values(l);
            vec![
                ("vCPUs".into(), format!("{lv}; defined {cv}")),
                ("Memory".into(), format!("{lm}; defined {cm}")),
            ]
        }
        None => vec![("vCPUs".into(), cv), ("Memory".into(), cm)],
    }
}

fn table(r: &ResourcesInfo) -> String {
    let mut out = format!("VM {}\n", r.vm);
    for (k, v) in rows(r) {
        out.push_str(&format!("  {k:<7} {v}\n"));
    }
    out
}
