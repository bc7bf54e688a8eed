//! `hv net ...`.

use anyhow::Result;
use clap::Subcommand;
use client::Client;
use model::{NetMode, NetworkSpec, PoolName as NetName};

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// Define a network: nat (masqueraded), isolated, or bridge (an existing host bridge).
    Create {
        name: NetName,
        #[arg(long)]
        mode: NetMode,
        #[arg(long)]
        bridge: Option<String>,
        /// IPv4 CIDR; a free /24 is chosen when absent.
        #[arg(long)]
        subnet: Option<String>,
        /// FIRST-LAST inside the subnet.
        #[arg(long)]
        dhcp_range: Option<String>,
        #[arg(long)]
        autostart: bool,
    },
    /// List networks.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One network.
    Info {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Bring a network up (bridge, firewall, DHCP).
    Start { name: String },
    /// Tear a network down; nothing of hv's is left behind.
    Stop { name: String },
    /// Start the network whenever hvd starts (or not, with --disable).
    Autostart {
        name: String,
        #[arg(long)]
        disable: bool,
    },
    /// Delete a stopped network that no VM uses.
    Delete { name: String },
    /// Port forwards into VMs on a NAT network.
    #[command(subcommand)]
    Forward(ForwardCmd),
    /// Fixed DHCP addresses, by MAC or for a VM's NIC on the network.
    #[command(subcommand)]
    Reservation(ReservationCmd),
    /// DHCP leases: MAC, IP, hostname, VM, expiry.
    Leases {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum ForwardCmd {
    /// Forward a host port to a VM (its address is pinned by a DHCP reservation).
    Add {
        net: String,
        #[arg(long, value_parser = ["tcp", "udp"])]
        proto: String,
        #[arg(long)]
        host_port: u16,
        #[arg(long)]
        host_addr: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        vm: String,
        /// The VM's port (default: the host port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// The network's port forwards.
    List {
        net: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove a port forward.
    Remove {
        net: String,
        #[arg(long, value_parser = ["tcp", "udp"])]
        proto: String,
        #[arg(long)]
        host_port: u16,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReservationCmd {
    /// Reserve IP for a MAC or for a VM's NIC on the network (effective at the guest's next
    /// DHCP request).
    Add {
        net: String,
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long, conflicts_with = "vm", required_unless_present = "vm")]
        mac: Option<String>,
        #[arg(long)]
        vm: Option<String>,
        /// The name DNS answers for the address (default: the VM's name).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// The network's reservations.
    List {
        net: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove the reservation of a MAC or of a VM (by its name).
    Remove {
        net: String,
        /// A MAC or a VM name.
        mac_or_vm: String,
    },
}

fn table(nets: &[api::NetworkInfo]) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.mode.to_string(),
                if n.active {
                    "active"
                } else if n.error.is_some() {
                    "failed"
                } else {
                    "inactive"
                }
                .into(),
                n.bridge.clone(),
                n.subnet.clone().unwrap_or_else(|| "-".into()),
                n.dhcp_range.clone().unwrap_or_else(|| "-".into()),
                if n.autostart { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let mut out = output::table(
        &[
            "NAME",
            "MODE",
            "STATE",
            "BRIDGE",
            "SUBNET",
            "DHCP",
            "AUTOSTART",
        ],
        &rows,
    );
    for n in nets {
        if let Some(e) = &n.error {
            out.push_str(&format!(
                "network {} failed: {e} (hv net start {} tries again)\n",
                n.name, n.name
            ));
        }
    }
    out
}

pub fn run(c: &Client, cmd: NetCmd) -> Result<()> {
    match cmd {
        NetCmd::Create {
            name,
            mode,
            bridge,
            subnet,
            dhcp_range,
            autostart,
        } => {
            let n = c.net_create(&NetworkSpec {
                bridge,
                subnet,
                dhcp_range,
                autostart,
                ..NetworkSpec::new(name, mode)
            })?;
            println!(
                "network {} defined ({}, {})",
                n.name,
                n.mode,
                n.subnet.unwrap_or(n.bridge)
            );
        }
        NetCmd::List { format } => {
            let nets = c.nets()?;
            if !output::structured(format, &nets)? {
                print!("{}", table(&nets));
            }
        }
        NetCmd::Info { name, format } => {
            let n = c.net_info(&name)?;
            if !output::structured(format, &n)? {
                print!("{}", table(&[n]));
            }
        }
        NetCmd::Start { name } => {
            c.net_start(&name)?;
            println!("network {name} started");
        }
        NetCmd::Stop { name } => {
            c.net_stop(&name)?;
            println!("network {name} stopped");
        }
        NetCmd::Autostart { name, disable } => {
            c.net_autostart(&name, !disable)?;
            println!(
                "network {name} autostart {}",
                if disable { "disabled" } else { "enabled" }
            );
        }
        NetCmd::Delete { name } => {
            c.net_delete(&name)?;
            println!("network {name} deleted");
        }
        NetCmd::Forward(ForwardCmd::Add {
            net,
            proto,
            host_port,
            host_addr,
            vm,
            port,
        }) => {
            c.net_forward_add(
                &net,
                &api::AddForwardRequest {
                    proto: proto.clone(),
                    host_port,
                    host_addr,
                    vm: vm.clone(),
                    port,
                },
            )?;
            println!(
                "{proto} port {host_port} now forwards to {vm}:{}",
                port.unwrap_or(host_port)
            );
        }
        NetCmd::Forward(ForwardCmd::List { net, format }) => {
            let fw = c.net_forwards(&net)?;
            if !output::structured(format, &fw)? {
                let rows: Vec<Vec<String>> = fw
                    .iter()
                    .map(|f| {
                        let host = f
                            .host_addr
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "*".into());
                        vec![
                            f.proto.clone(),
                            format!("{host}:{}", f.host_port),
                            f.vm.clone(),
                            format!("{}:{}", f.vm_ip, f.vm_port),
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["PROTO", "HOST", "VM", "TO"], &rows));
            }
        }
        NetCmd::Forward(ForwardCmd::Remove {
            net,
            proto,
            host_port,
        }) => {
            c.net_forward_remove(&net, &proto, host_port)?;
            println!("{proto} port {host_port} no longer forwarded");
        }
        NetCmd::Reservation(ReservationCmd::Add {
            net,
            ip,
            mac,
            vm,
            hostname,
        }) => {
            let who = vm.clone().or(mac.clone()).unwrap_or_default();
            c.net_reservation_add(
                &net,
                &api::AddReservationRequest {
                    mac,
                    vm,
                    ip,
                    hostname,
                },
            )?;
            println!("{ip} reserved for {who} on {net}");
        }
        NetCmd::Reservation(ReservationCmd::List { net, format }) => {
            let rs = c.net_reservations(&net)?;
            if !output::structured(format, &rs)? {
                let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
                let rows: Vec<Vec<String>> = rs
                    .iter()
                    .map(|r| {
                        vec![
                            r.mac.to_string(),
                            r.ip.to_string(),
                            dash(&r.vm),
                            dash(&r.hostname),
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["MAC", "IP", "VM", "HOSTNAME"], &rows));
            }
        }
        NetCmd::Reservation(ReservationCmd::Remove { net, mac_or_vm }) => {
            c.net_reservation_remove(&net, &mac_or_vm)?;
            println!("reservation for {mac_or_vm} removed from {net}");
        }
        NetCmd::Leases { name, format } => {
            let leases = c.net_leases(&name)?;
            if !output::structured(format, &leases)? {
                let rows: Vec<Vec<String>> = leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.mac.clone(),
                            l.ip.clone(),
                            l.hostname.clone().unwrap_or_else(|| "-".into()),
                            l.vm.clone().unwrap_or_else(|| "-".into()),
                            l.expiry
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(&["MAC", "IP", "HOSTNAME", "VM", "EXPIRY"], &rows)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_network_is_listed_as_failed_with_its_reason() {
        let n = api::NetworkInfo {
            name: "lan".into(),
            mode: model::NetMode::Bridge,
            bridge: "brx".into(),
            subnet: None,
            gateway: None,
            dhcp_range: None,
            autostart: true,
            active: false,
            dnsmasq_pid: None,
            error: Some("interface brx does not exist".into()),
            used_by: Vec::new(),
        };
        let t = table(&[n]);
        assert!(t.contains(" failed "), "{t}");
        assert!(
            t.contains(
                "network lan failed: interface brx does not exist (hv net start lan tries again)"
            ),
            "{t}"
        );
    }
}
