//! DHCP reservations and port forwards that follow a migrating VM to the networks of the same
//! name: collected on the source, checked and added on the target at the handover, removed
//! from the source afterwards.

use api::{IncomingForward, IncomingRequest, IncomingReservation};
use model::{Mac, NetworkSpec, VmSpec};

use crate::Engine;

/// The MACs of a VM's NICs.
fn macs(spec: &VmSpec) -> Vec<Mac> {
    spec.nics.iter().filter_map(|n| n.mac).collect()
}

/// What of `nets` belongs to the VM (by name or by one of its NICs' MACs).
pub fn entries_of(
    vm: &str,
    spec: &VmSpec,
    nets: &[NetworkSpec],
) -> (Vec<IncomingReservation>, Vec<IncomingForward>) {
    let macs = macs(spec);
    let mut res = Vec::new();
    let mut fwd = Vec::new();
    for n in nets {
        let network = n.name.to_string();
        for r in &n.reservations {
            if r.vm.as_deref() == Some(vm) || macs.contains(&r.mac) {
                res.push(IncomingReservation {
                    network: network.clone(),
                    reservation: r.clone(),
                });
            }
        }
        for f in &n.forwards {
            if f.vm == vm || macs.contains(&f.mac) {
                fwd.push(IncomingForward {
                    network: network.clone(),
                    forward: f.clone(),
                });
            }
        }
    }
    (res, fwd)
}

/// Whether `ip` is inside `cidr` (`a.b.c.d/n`); an unreadable subnet contains nothing.
fn in_subnet(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    if len > 32 {
        return false;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Pure: every reason the target's networks cannot take the VM's reservations and forwards.
pub fn conflicts(req: &IncomingRequest, nets: &[NetworkSpec], host: &str) -> Vec<String> {
    let mut out = Vec::new();
    let find = |name: &str| nets.iter().find(|n| n.name.as_str() == name);
    for r in &req.reservations {
        let Some(n) = find(&r.network) else {
            out.push(format!(
                "network: the reservation of {} on {:?} needs that network on {host}; define it there",
                r.reservation.ip, r.network
            ));
            continue;
        };
        if let Some(sub) = n
            .subnet
            .as_deref()
            .filter(|s| !in_subnet(r.reservation.ip, s))
        {
            out.push(format!(
                "reservation: {} on network {:?} is outside that network's subnet {sub} on {host}; give both hosts' networks the same subnet",
                r.reservation.ip, r.network
            ));
            continue;
        }
        if let Some(o) = n
            .reservations
            .iter()
            .find(|o| o.ip == r.reservation.ip || o.mac == r.reservation.mac)
        {
            out.push(format!(
                "reservation: {} ({}) on network {:?} of {host} clashes with its reservation of {} for {}; remove one of them",
                r.reservation.ip, r.reservation.mac, r.network, o.ip, o.mac
            ));
        }
    }
    for f in &req.forwards {
        let Some(n) = find(&f.network) else {
            out.push(format!(
                "network: the port forward {}/{} on {:?} needs that network on {host}; define it there",
                f.forward.proto, f.forward.host_port, f.network
            ));
            continue;
        };
        if n.forwards
            .iter()
            .any(|o| o.proto == f.forward.proto && o.host_port == f.forward.host_port)
        {
            out.push(format!(
                "port forward: {host} already forwards {}/{} on network {:?}; remove that forward there or this one here",
                f.forward.proto, f.forward.host_port, f.network
            ));
        }
    }
    out
}

impl Engine {
    pub(crate) async fn network_specs(&self) -> Vec<NetworkSpec> {
        self.inner
            .nets
            .lock()
            .await
            .map
            .values()
            .map(|n| n.spec.clone())
            .collect()
    }

    /// Adds the VM's reservations and forwards to this host's networks (at the handover).
    pub(crate) async fn adopt_net_entries(
        &self,
        res: &[IncomingReservation],
        fwd: &[IncomingForward],
    ) {
        for r in res {
            let rr = r.reservation.clone();
            let done = self
                .change_spec(&r.network, move |s| {
                    s.reservations.retain(|o| o.mac != rr.mac);
                    s.reservations.push(rr);
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                tracing::warn!(net = r.network, error = %e, "cannot add a migrated VM's reservation");
            }
        }
        for f in fwd {
            let ff = f.forward.clone();
            let done = self
                .change_spec(&f.network, move |s| {
                    s.forwards
                        .retain(|o| !(o.proto == ff.proto && o.host_port == ff.host_port));
                    s.forwards.push(ff);
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                tracing::warn!(net = f.network, error = %e, "cannot add a migrated VM's port forward");
            }
        }
    }

    /// Removes what [`adopt_net_entries`](Self::adopt_net_entries) added elsewhere (on the source).
    pub(crate) async fn drop_net_entries(
        &self,
        res: &[IncomingReservation],
        fwd: &[IncomingForward],
    ) {
        for r in res {
            let mac = r.reservation.mac;
            if let Err(e) = self
                .change_spec(&r.network, move |s| {
                    s.reservations.retain(|o| o.mac != mac);
                    Ok(())
                })
                .await
            {
                tracing::warn!(net = r.network, error = %e, "cannot remove a migrated VM's reservation");
            }
        }
        for f in fwd {
            let (proto, port) = (f.forward.proto.clone(), f.forward.host_port);
            if let Err(e) = self
                .change_spec(&f.network, move |s| {
                    s.forwards
                        .retain(|o| !(o.proto == proto && o.host_port == port));
                    Ok(())
                })
                .await
            {
                tracing::warn!(net = f.network, error = %e, "cannot remove a migrated VM's port forward");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{ForwardSpec, NetMode, ReservationSpec};

    fn net(subnet: &str) -> NetworkSpec {
        NetworkSpec {
            subnet: Some(subnet.into()),
            ..NetworkSpec::new("lan".parse().unwrap(), NetMode::Nat)
        }
    }

    #[test]
    fn reservations_and_forwards_of_the_vm_are_found_and_clashes_named() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let mut spec = VmSpec::new("web".parse().unwrap());
        spec.nics = vec![serde_json::from_value(serde_json::json!({
            "type": "network", "source": "lan", "mac": "52:54:00:00:00:01"
        }))
        .unwrap()];
        let mut src = net("10.9.0.0/24");
        src.reservations.push(ReservationSpec {
            mac,
            ip: "10.9.0.10".parse().unwrap(),
            vm: None,
            hostname: None,
        });
        src.reservations.push(ReservationSpec {
            mac: "52:54:00:00:00:02".parse().unwrap(),
            ip: "10.9.0.11".parse().unwrap(),
            vm: Some("other".into()),
            hostname: None,
        });
        src.forwards.push(ForwardSpec {
            proto: "tcp".into(),
            host_addr: None,
            host_port: 8080,
            vm: "web".into(),
            vm_port: 80,
            mac,
            vm_ip: "10.9.0.10".parse().unwrap(),
        });
        let (res, fwd) = entries_of("web", &spec, std::slice::from_ref(&src));
        assert_eq!((res.len(), fwd.len()), (1, 1));
        let req: IncomingRequest = serde_json::from_value(serde_json::json!({
            "vm": "web", "spec": spec, "mode": "live",
            "source": {"qemu_version": "7.2.0", "machine": "pc-q35-7.2", "cpu_model": "default", "hostname": "a"},
            "reservations": res, "forwards": fwd,
        }))
        .unwrap();
        // A target network like the source's but without them: fine.
        assert!(conflicts(&req, &[net("10.9.0.0/24")], "b").is_empty());
        // The same port taken, the IP reserved for another MAC, another subnet, no network.
        let mut busy = net("10.9.0.0/24");
        busy.forwards.push(src.forwards[0].clone());
        busy.reservations.push(ReservationSpec {
            mac: "52:54:00:00:00:09".parse().unwrap(),
            ip: "10.9.0.10".parse().unwrap(),
            vm: None,
            hostname: None,
        });
        let all = conflicts(&req, &[busy], "b").join("\n");
        assert!(all.contains("already forwards tcp/8080"), "{all}");
        assert!(all.contains("clashes"), "{all}");
        let all = conflicts(&req, &[net("10.8.0.0/24")], "b").join("\n");
        assert!(all.contains("outside that network's subnet"), "{all}");
        assert_eq!(conflicts(&req, &[], "b").len(), 2);
    }
}
