//! `hv nic ...`.

use anyhow::Result;
use api::{AttachNicRequest, DetachNicRequest};
use clap::Subcommand;
use client::Client;
use model::NicSpec;

use crate::disks::Scope;
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum NicCmd {
    /// Attach a NIC: live and in the definition on a running VM, in the definition on a
    /// stopped one (--live / --config choose).
    Attach {
        vm: String,
        /// user | network=NAME | bridge=BR [,model=virtio|e1000|rtl8139][,mac=52:54:00:xx:xx:xx]
        #[arg(long)]
        nic: NicSpec,
        #[command(flatten)]
        scope: Scope,
    },
    /// Detach a NIC by its MAC (hv nic list shows them).
    Detach {
        vm: String,
        mac: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// A VM's NICs (in its definition) with their leased addresses.
    List {
        vm: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub fn run(c: &Client, cmd: NicCmd) -> Result<()> {
    match cmd {
        NicCmd::Attach { vm, nic, scope } => {
            let (live, config) = scope.resolve();
            let done = c.nic_attach(&vm, &AttachNicRequest { nic, live, config })?;
            let mac = done.nic.mac.map(|m| m.to_string()).unwrap_or_default();
            println!("NIC {mac} attached to {vm}");
        }
        NicCmd::Detach { vm, mac, scope } => {
            let (live, config) = scope.resolve();
            c.nic_detach(&vm, &mac, &DetachNicRequest { live, config })?;
            println!("NIC {mac} detached from {vm}");
        }
        NicCmd::List { vm, format } => {
            let info = c.info(&vm)?;
            let nics = info.spec.map(|s| s.nics).unwrap_or_default();
            if !output::structured(format, &nics)? {
                let rows: Vec<Vec<String>> = nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let ip = info
                            .addresses
                            .iter()
                            .find(|a| a.nic == i)
                            .map(|a| a.ip.clone());
                        vec![
                            n.mac.map(|m| m.to_string()).unwrap_or_default(),
                            n.kind.to_string(),
                            n.source.clone().unwrap_or_else(|| "-".into()),
                            n.model.to_string(),
                            ip.unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(&["MAC", "TYPE", "SOURCE", "MODEL", "IP"], &rows)
                );
            }
        }
    }
    Ok(())
}
