//! Turning a host interface into the port of a new bridge that takes over its IPv4 addresses and
//! routes (the tutorials' `virsh iface-bridge eth0 br0`, done without NetworkManager), and the
//! way back. Bridge-mode networks then put VM taps on that bridge, on the host's own LAN.
//!
//! The change is planned first, as a list of [`Op`]s computed from a snapshot of the links,
//! addresses and routes ([`plan_bridge`], [`plan_unbridge`]: pure, unit-tested), then applied
//! one by one; when any op fails, the ops already done are undone in reverse order, so the host
//! ends exactly as it was. Order matters for the interface's reachability and for rollback:
//! the bridge (with the interface's MAC, so DHCP servers and ARP caches see no change) is made
//! and the interface joins it; the addresses are added to the bridge; each route moves (delete
//! on the old link, add on the new one, direct routes before routes via a gateway); the
//! addresses leave the old link last. Prefix routes the kernel made for addresses
//! (`proto kernel`) follow the addresses by themselves. IPv6 configuration is not moved.

use std::net::Ipv4Addr;

use crate::netlink::{AddrInfo, LinkInfo, Netlink, RouteInfo, RTPROT_KERNEL};
use crate::{check_ifname, ConfigError, NetError};

/// One reversible change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A bridge with STP off and forward delay 0, up.
    CreateBridge {
        name: String,
        mac: [u8; 6],
    },
    DeleteBridge {
        name: String,
        mac: [u8; 6],
    },
    /// `master: None` detaches the link from its bridge.
    SetMaster {
        link: String,
        master: Option<String>,
        before: Option<String>,
    },
    AddAddr {
        link: String,
        addr: Ipv4Addr,
        prefix: u8,
        broadcast: Option<Ipv4Addr>,
    },
    DelAddr {
        link: String,
        addr: Ipv4Addr,
        prefix: u8,
        broadcast: Option<Ipv4Addr>,
    },
    AddRoute {
        link: String,
        route: RouteInfo,
    },
    DelRoute {
        link: String,
        route: RouteInfo,
    },
}

impl Op {
    /// The op that takes this one back.
    pub fn inverse(&self) -> Op {
        match self.clone() {
            Op::CreateBridge { name, mac } => Op::DeleteBridge { name, mac },
            Op::DeleteBridge { name, mac } => Op::CreateBridge { name, mac },
            Op::SetMaster {
                link,
                master,
                before,
            } => Op::SetMaster {
                link,
                master: before,
                before: master,
            },
            Op::AddAddr {
                link,
                addr,
                prefix,
                broadcast,
            } => Op::DelAddr {
                link,
                addr,
                prefix,
                broadcast,
            },
            Op::DelAddr {
                link,
                addr,
                prefix,
                broadcast,
            } => Op::AddAddr {
                link,
                addr,
                prefix,
                broadcast,
            },
            Op::AddRoute { link, route } => Op::DelRoute { link, route },
            Op::DelRoute { link, route } => Op::AddRoute { link, route },
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::CreateBridge { name, .. } => write!(f, "create bridge {name}"),
            Op::DeleteBridge { name, .. } => write!(f, "delete bridge {name}"),
            Op::SetMaster {
                link,
                master: Some(m),
                ..
            } => write!(f, "make {link} a port of {m}"),
            Op::SetMaster { link, .. } => write!(f, "detach {link} from its bridge"),
            Op::AddAddr {
                link, addr, prefix, ..
            } => write!(f, "add {addr}/{prefix} to {link}"),
            Op::DelAddr {
                link, addr, prefix, ..
            } => {
                write!(f, "remove {addr}/{prefix} from {link}")
            }
            Op::AddRoute { link, route } => write!(f, "add route {route} on {link}"),
            Op::DelRoute { link, route } => write!(f, "remove route {route} from {link}"),
        }
    }
}

/// The links, addresses and routes of the namespace at one moment.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    pub links: Vec<LinkInfo>,
    pub addrs: Vec<AddrInfo>,
    pub routes: Vec<RouteInfo>,
}

impl HostSnapshot {
    /// Reads the calling thread's network namespace.
    pub fn read() -> Result<HostSnapshot, NetError> {
        let mut n = open()?;
        Ok(HostSnapshot {
            links: n.links().map_err(nl("list links"))?,
            addrs: n.ipv4_addrs().map_err(nl("list addresses"))?,
            routes: n.ipv4_routes().map_err(nl("list routes"))?,
        })
    }

    fn link(&self, name: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.name == name)
    }
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        what: "interface",
        reason,
    }
}

/// Moves every IPv4 address and (non-kernel) route of `from` to `to`.
fn plan_move(host: &HostSnapshot, from: &LinkInfo, to: &str) -> Vec<Op> {
    let addrs: Vec<&AddrInfo> = host
        .addrs
        .iter()
        .filter(|a| a.index == from.index)
        .collect();
    let mut routes: Vec<&RouteInfo> = host
        .routes
        .iter()
        .filter(|r| r.oif == Some(from.index) && r.protocol != RTPROT_KERNEL)
        .collect();
    // Direct routes first: a gateway must be reachable on the new link when its route is added.
    routes.sort_by_key(|r| r.gateway.is_some());
    let mut ops: Vec<Op> = addrs
        .iter()
        .map(|a| Op::AddAddr {
            link: to.into(),
            addr: a.addr,
            prefix: a.prefix,
            broadcast: a.broadcast,
        })
        .collect();
    for r in routes {
        ops.push(Op::DelRoute {
            link: from.name.clone(),
            route: *r,
        });
        ops.push(Op::AddRoute {
            link: to.into(),
            route: *r,
        });
    }
    ops.extend(addrs.iter().map(|a| Op::DelAddr {
        link: from.name.clone(),
        addr: a.addr,
        prefix: a.prefix,
        broadcast: a.broadcast,
    }));
    ops
}

/// The ops that make `iface` the only port of a new bridge `bridge` holding its addresses and
/// routes. Refuses loopback, bridges, interfaces already in a bridge, and a taken name.
pub fn plan_bridge(host: &HostSnapshot, iface: &str, bridge: &str) -> Result<Vec<Op>, ConfigError> {
    check_ifname(bridge)?;
    let l = host.link(iface).ok_or_else(|| {
        invalid(format!(
            "{iface} does not exist (ip link shows the interfaces)"
        ))
    })?;
    if host.link(bridge).is_some() {
        return Err(invalid(format!(
            "{bridge} already exists; choose another bridge name"
        )));
    }
    if l.kind.as_deref() == Some("bridge") {
        return Err(invalid(format!(
            "{iface} is already a bridge; use it as --bridge of a bridge-mode network"
        )));
    }
    if let Some(m) = l.master {
        let m = host
            .links
            .iter()
            .find(|x| x.index == m)
            .map(|x| x.name.as_str())
            .unwrap_or("another link");
        return Err(invalid(format!(
            "{iface} is already a port of {m}; use {m} as the bridge"
        )));
    }
    let mac = l.mac.filter(|m| *m != [0; 6]).ok_or_else(|| {
        invalid(format!(
            "{iface} has no Ethernet address; it cannot be bridged"
        ))
    })?;
    let mut ops = vec![
        Op::CreateBridge {
            name: bridge.into(),
            mac,
        },
        Op::SetMaster {
            link: iface.into(),
            master: Some(bridge.into()),
            before: None,
        },
    ];
    ops.extend(plan_move(host, l, bridge));
    Ok(ops)
}

/// The ops that undo [`plan_bridge`] for a bridge with one port: the port gets the bridge's
/// addresses and routes back, leaves it, and the bridge is deleted.
pub fn plan_unbridge(host: &HostSnapshot, bridge: &str) -> Result<Vec<Op>, ConfigError> {
    let b = host
        .link(bridge)
        .ok_or_else(|| invalid(format!("{bridge} does not exist")))?;
    if b.kind.as_deref() != Some("bridge") {
        return Err(invalid(format!("{bridge} is not a bridge")));
    }
    let ports: Vec<&LinkInfo> = host
        .links
        .iter()
        .filter(|l| l.master == Some(b.index))
        .collect();
    let port = match ports.as_slice() {
        [p] => *p,
        [] => {
            return Err(invalid(format!(
                "{bridge} has no port to give its addresses to"
            )))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
            return Err(invalid(format!(
                "{bridge} has several ports ({}); stop the VMs on it and remove the other ports first",
                names.join(", ")
            )));
        }
    };
    let mut ops = plan_move(host, b, &port.name);
    ops.push(Op::SetMaster {
        link: port.name.clone(),
        master: None,
        before: Some(bridge.into()),
    });
    ops.push(Op::DeleteBridge {
        name: bridge.into(),
        mac: b.mac.unwrap_or_default(),
    });
    Ok(ops)
}

/// What a bridge change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeChange {
    pub ops: Vec<String>,
}

fn nl(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let op = op.into();
    move |error| NetError::Netlink { op, error }
}

fn open() -> Result<Netlink, NetError> {
    Netlink::open().map_err(nl("open a NETLINK_ROUTE socket"))
}

fn index(n: &mut Netlink, name: &str) -> std::io::Result<u32> {
    n.link(name)?.map(|l| l.index).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{name} does not exist"),
        )
    })
}

fn apply_one(n: &mut Netlink, op: &Op) -> std::io::Result<()> {
    match op {
        Op::CreateBridge { name, mac } => n.create_bridge(name, *mac),
        Op::DeleteBridge { name, .. } => n.delete_link(name).map(drop),
        Op::SetMaster { link, master, .. } => {
            let i = index(n, link)?;
            let m = match master {
                Some(m) => index(n, m)?,
                None => 0,
            };
            n.set_master(i, m)
        }
        Op::AddAddr {
            link,
            addr,
            prefix,
            broadcast,
        } => {
            let i = index(n, link)?;
            n.add_ipv4_with(i, *addr, *prefix, *broadcast)
        }
        Op::DelAddr {
            link, addr, prefix, ..
        } => {
            let i = index(n, link)?;
            n.del_ipv4(i, *addr, *prefix)
        }
        Op::AddRoute { link, route } => {
            let i = index(n, link)?;
            n.add_route(route, i)
        }
        Op::DelRoute { link, route } => {
            let i = index(n, link)?;
            n.del_route(&RouteInfo {
                oif: Some(i),
                ..*route
            })
        }
    }
}

/// Applies `ops` in order; on the first failure undoes the applied ones, newest first, and
/// returns the failure. `fail_after` stops with an error after that many ops (tests prove the
/// rollback with it).
fn apply(ops: &[Op], fail_after: Option<usize>) -> Result<BridgeChange, NetError> {
    let mut n = open()?;
    let mut done: Vec<&Op> = Vec::new();
    for op in ops {
        let r = if fail_after == Some(done.len()) {
            Err(std::io::Error::other("injected failure"))
        } else {
            apply_one(&mut n, op)
        };
        if let Err(error) = r {
            for d in done.iter().rev() {
                let inv = d.inverse();
                tracing::info!(op = %inv, "rolling back");
                if let Err(e) = apply_one(&mut n, &inv) {
                    tracing::error!(op = %inv, error = %e, "rollback step failed");
                }
            }
            return Err(NetError::Netlink {
                op: format!("{op} (every earlier step was rolled back)"),
                error,
            });
        }
        tracing::info!(op = %op, "done");
        done.push(op);
    }
    Ok(BridgeChange {
        ops: ops.iter().map(|o| o.to_string()).collect(),
    })
}

/// Makes `iface` the port of a new bridge `bridge` that takes over its IPv4 addresses and
/// routes; the host is left unchanged when any step fails.
pub fn bridge_interface(iface: &str, bridge: &str) -> Result<BridgeChange, NetError> {
    bridge_interface_failing_after(iface, bridge, None)
}

/// [`bridge_interface`] with an injected failure after `fail_after` steps (for rollback tests).
#[doc(hidden)]
pub fn bridge_interface_failing_after(
    iface: &str,
    bridge: &str,
    fail_after: Option<usize>,
) -> Result<BridgeChange, NetError> {
    let ops = plan_bridge(&HostSnapshot::read()?, iface, bridge)?;
    apply(&ops, fail_after)
}

/// Gives a bridge's addresses and routes back to its only port and deletes the bridge.
pub fn unbridge_interface(bridge: &str) -> Result<BridgeChange, NetError> {
    let ops = plan_unbridge(&HostSnapshot::read()?, bridge)?;
    apply(&ops, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, master: Option<u32>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            up: true,
            master,
            kind: kind.map(Into::into),
            mac: Some([0x52, 0x54, 0, 1, 2, index as u8]),
            mtu: Some(1500),
            bridge: None,
        }
    }

    fn route(dst: &str, prefix: u8, gw: Option<&str>, oif: u32, protocol: u8) -> RouteInfo {
        RouteInfo {
            dst: dst.parse().unwrap(),
            prefix,
            oif: Some(oif),
            gateway: gw.map(|g| g.parse().unwrap()),
            table: 254,
            protocol,
            scope: if gw.is_some() { 0 } else { 253 },
            kind: 1,
            metric: None,
            prefsrc: None,
        }
    }

    fn host() -> HostSnapshot {
        HostSnapshot {
            links: vec![
                link(1, "lo", None, None),
                link(2, "eth0", Some("veth"), None),
                link(3, "br9", Some("bridge"), None),
                link(4, "eth1", None, Some(3)),
            ],
            addrs: vec![AddrInfo {
                index: 2,
                addr: "192.0.2.10".parse().unwrap(),
                prefix: 24,
                broadcast: None,
            }],
            routes: vec![
                route("0.0.0.0", 0, Some("192.0.2.1"), 2, 4),
                route("192.0.2.0", 24, None, 2, RTPROT_KERNEL),
                route("203.0.113.0", 28, None, 2, 4),
            ],
        }
    }

    #[test]
    fn bridging_moves_addresses_and_routes_in_a_safe_order() {
        let ops: Vec<String> = plan_bridge(&host(), "eth0", "br0")
            .unwrap()
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            ops,
            [
                "create bridge br0",
                "make eth0 a port of br0",
                "add 192.0.2.10/24 to br0",
                "remove route 203.0.113.0/28 from eth0",
                "add route 203.0.113.0/28 on br0",
                "remove route default via 192.0.2.1 from eth0",
                "add route default via 192.0.2.1 on br0",
                "remove 192.0.2.10/24 from eth0",
            ]
        );
    }

    #[test]
    fn the_inverse_of_the_inverse_is_the_op() {
        for op in plan_bridge(&host(), "eth0", "br0").unwrap() {
            assert_eq!(op.inverse().inverse(), op);
            assert_ne!(op.inverse(), op);
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let h = host();
        let err = |iface, bridge| plan_bridge(&h, iface, bridge).unwrap_err().to_string();
        assert!(err("eth7", "br0").contains("does not exist"));
        assert!(err("eth0", "br9").contains("already exists"));
        assert!(err("br9", "br0").contains("already a bridge"));
        assert!(err("eth1", "br0").contains("already a port of br9"));
        assert!(err("eth0", "bad name!").contains("bad name!"));
        let mut lo = h.clone();
        lo.links[0].mac = Some([0; 6]);
        assert!(plan_bridge(&lo, "lo", "br0")
            .unwrap_err()
            .to_string()
            .contains("no Ethernet address"));
    }

    #[test]
    fn unbridging_needs_exactly_one_port() {
        let ops = plan_unbridge(&host(), "br9").unwrap();
        assert_eq!(
            ops.last().map(|o| o.to_string()).as_deref(),
            Some("delete bridge br9")
        );
        let mut two = host();
        two.links.push(link(5, "tap0", Some("tun"), Some(3)));
        assert!(plan_unbridge(&two, "br9")
            .unwrap_err()
            .to_string()
            .contains("several ports (eth1, tap0)"));
        assert!(plan_unbridge(&host(), "eth0")
            .unwrap_err()
            .to_string()
            .contains("not a bridge"));
    }
}
