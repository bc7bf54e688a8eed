//! Interfaces and kernel switches: hv's bridges and taps (over netlink and `/dev/net/tun`),
//! what address ranges the host already uses, `ip_forward` and `route_localnet`.
//!
//! Taps are persistent (`TUNSETPERSIST`) and owned by no process: QEMU opens them by name with
//! `-netdev tap,ifname=TAP,script=no,downscript=no` (also for hot-plug via QMP `netdev_add`),
//! a tap outlives hvd restarts together with its QEMU, and hvd deletes it when the VM stops or
//! the NIC is detached. A tap can be given an owner uid and gid (`TUNSETOWNER`/`TUNSETGROUP`):
//! then a process with exactly those ids may attach to it without `CAP_NET_ADMIN`, which is
//! how an unprivileged QEMU opens its VM's taps and no other. All calls act on the network
//! namespace of the calling thread.

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::addr::{Ipv4Cidr, RangeSource, UsedRange};
use crate::names::{bridge_mac, check_ifname};
use crate::netlink::{LinkInfo, Netlink};
use crate::NetError;

fn nl(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let op = op.into();
    move |error| NetError::Netlink { op, error }
}

fn open() -> Result<Netlink, NetError> {
    Netlink::open().map_err(nl("open a NETLINK_ROUTE socket"))
}

fn index_of(n: &mut Netlink, name: &str) -> Result<u32, NetError> {
    n.link(name)
        .map_err(nl(format!("look up {name}")))?
        .map(|l| l.index)
        .ok_or_else(|| NetError::NoLink { name: name.into() })
}

/// Creates hv's bridge `name`: up, STP off, forward delay 0, a fixed MAC from
/// [`bridge_mac`]. Fails with [`NetError::Exists`] when the name is taken.
pub fn create_bridge(name: &str) -> Result<(), NetError> {
    check_ifname(name)?;
    let mut n = open()?;
    n.create_bridge(name, bridge_mac(name))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => NetError::Exists { name: name.into() },
            _ => NetError::Netlink {
                op: format!("create bridge {name}"),
                error: e,
            },
        })?;
    // hv's networks are IPv4: no IPv6 link-local address on the host side of the bridge, so
    // guests cannot reach the host over IPv6 around the IPv4 rules. (Absent without IPv6.)
    let v6 = Path::new("/proc/sys/net/ipv6/conf")
        .join(name)
        .join("disable_ipv6");
    if v6.exists() {
        if let Err(e) = write_flag(&v6, true) {
            let _ = n.delete_link(name);
            return Err(e);
        }
    }
    tracing::debug!(bridge = name, "bridge created");
    Ok(())
}

/// Gives `link` the address `addr` in `subnet` (the subnet's prefix route comes with it).
pub fn add_address(link: &str, addr: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), NetError> {
    let mut n = open()?;
    let index = index_of(&mut n, link)?;
    n.add_ipv4(index, addr, subnet.prefix())
        .map_err(nl(format!("add {addr}/{} to {link}", subnet.prefix())))
}

/// Who may attach to a tap without `CAP_NET_ADMIN`: a process whose effective uid is `uid`
/// and that is in group `gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOwner {
    pub uid: u32,
    pub gid: u32,
}

/// Creates the persistent tap `name` (owned by `owner` when given), sets it up and, when
/// given, makes it a port of `bridge`. Nothing is left behind when a step fails. Fails with
/// [`NetError::Exists`] when the name is taken (also by an earlier tap: delete leftovers first
/// with [`delete_link`]).
pub fn create_tap(
    name: &str,
    bridge: Option<&str>,
    owner: Option<TapOwner>,
) -> Result<(), NetError> {
    check_ifname(name)?;
    let mut n = open()?;
    if n.link(name)
        .map_err(nl(format!("look up {name}")))?
        .is_some()
    {
        return Err(NetError::Exists { name: name.into() });
    }
    let master = match bridge {
        Some(b) => Some(index_of(&mut n, b)?),
        None => None,
    };
    make_persistent_tap(name, owner)?;
    let mut attach = || -> Result<(), NetError> {
        let index = index_of(&mut n, name)?;
        if let Some(m) = master {
            n.set_master(index, m).map_err(nl(format!(
                "attach {name} to {}",
                bridge.unwrap_or_default()
            )))?;
        }
        n.set_up(index, true).map_err(nl(format!("set {name} up")))
    };
    if let Err(e) = attach() {
        if let Err(undo) = delete_link(name) {
            tracing::warn!(tap = name, error = %undo, "cannot remove the half-made tap");
        }
        return Err(e);
    }
    tracing::debug!(tap = name, bridge, "tap created");
    Ok(())
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn make_persistent_tap(name: &str, owner: Option<TapOwner>) -> Result<(), NetError> {
    let tap_err = |op: &'static str| {
        move |error: io::Error| NetError::Tap {
            op,
            name: name.into(),
            error,
        }
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(tap_err("open /dev/net/tun for"))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes, which IfReq matches) that
    // lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(tap_err("create")(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(tap_err("make persistent")(io::Error::last_os_error()));
    }
    if let Some(o) = owner {
        let set = |request, id: u32, op| {
            // SAFETY: TUNSETOWNER and TUNSETGROUP take an integer argument, no memory.
            if unsafe { libc::ioctl(tun.as_raw_fd(), request, id as libc::c_ulong) } < 0 {
                return Err(tap_err(op)(io::Error::last_os_error()));
            }
            Ok(())
        };
        // The device stays (persistent): undo it if the owner cannot be set.
        let owned = set(libc::TUNSETOWNER, o.uid, "set the owner uid of")
            .and_then(|()| set(libc::TUNSETGROUP, o.gid, "set the owner group of"));
        if let Err(e) = owned {
            // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
            unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) };
            return Err(e);
        }
    }
    Ok(())
}

/// Makes the existing link `link` a port of `bridge` and sets it up.
pub fn attach_to_bridge(link: &str, bridge: &str) -> Result<(), NetError> {
    let mut n = open()?;
    let (index, master) = (index_of(&mut n, link)?, index_of(&mut n, bridge)?);
    n.set_master(index, master)
        .map_err(nl(format!("attach {link} to {bridge}")))?;
    n.set_up(index, true).map_err(nl(format!("set {link} up")))
}

/// Deletes a link (bridge, tap, …); `Ok(false)` when it did not exist.
pub fn delete_link(name: &str) -> Result<bool, NetError> {
    let gone = open()?
        .delete_link(name)
        .map_err(nl(format!("delete {name}")))?;
    if gone {
        tracing::debug!(link = name, "link deleted");
    }
    Ok(gone)
}

/// Deletes a link and returns as soon as it has left the namespace (the name is free again and
/// nothing lists it), while the kernel finishes freeing it on a blocking thread: that part
/// waits for RCU grace periods, tens of milliseconds, and only its failure is logged.
/// `Ok(false)` when the link did not exist. Needs a tokio runtime.
pub async fn remove_link(name: &str) -> Result<bool, NetError> {
    let Some(index) = link_info(name)?.map(|l| l.index) else {
        return Ok(false);
    };
    let mut events = Netlink::link_events(std::time::Duration::from_secs(2))
        .map_err(nl("listen for link events"))?;
    let owned = name.to_string();
    let mut deleter = tokio::task::spawn_blocking(move || delete_link(&owned));
    let mut watcher = tokio::task::spawn_blocking(move || events.wait_deleted(index));
    let joined = |r: Result<Result<bool, NetError>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| {
            Err(NetError::Leftover {
                what: format!("deleting {name} did not finish: {e}"),
            })
        })
    };
    tokio::select! {
        r = &mut deleter => joined(r),
        w = &mut watcher => match w {
            Ok(Ok(())) => {
                let name = name.to_string();
                tokio::spawn(async move {
                    if let Ok(Err(e)) = deleter.await {
                        tracing::warn!(link = %name, error = %e, "link deletion failed late");
                    }
                });
                Ok(true)
            }
            _ => joined(deleter.await),
        },
    }
}

/// The link called `name`, when it exists.
pub fn link_info(name: &str) -> Result<Option<LinkInfo>, NetError> {
    open()?.link(name).map_err(nl(format!("look up {name}")))
}

/// Every link of the namespace (e.g. to find leftover `hvtap-`/`hvbr-` links).
pub fn list_links() -> Result<Vec<LinkInfo>, NetError> {
    open()?.links().map_err(nl("list links"))
}

/// The IPv4 ranges the host uses: routes outside the `local` table (default routes included,
/// [`find_clash`](crate::find_clash) skips them) and the prefixes of configured addresses.
pub fn host_ranges() -> Result<Vec<UsedRange>, NetError> {
    let mut n = open()?;
    let links = n.links().map_err(nl("list links"))?;
    let dev = |i: Option<u32>| {
        i.and_then(|i| links.iter().find(|l| l.index == i))
            .map(|l| l.name.clone())
    };
    let mut out = Vec::new();
    for r in n.ipv4_routes().map_err(nl("list routes"))? {
        out.push(UsedRange {
            cidr: Ipv4Cidr::containing(r.dst, r.prefix),
            dev: dev(r.oif),
            source: RangeSource::Route,
        });
    }
    for a in n.ipv4_addrs().map_err(nl("list addresses"))? {
        out.push(UsedRange {
            cidr: Ipv4Cidr::containing(a.addr, a.prefix),
            dev: dev(Some(a.index)),
            source: RangeSource::Address,
        });
    }
    Ok(out)
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn read_flag(path: &Path) -> Result<bool, NetError> {
    let text = std::fs::read_to_string(path).map_err(|error| NetError::Io {
        op: "read",
        path: path.into(),
        error,
    })?;
    Ok(text.trim() != "0")
}

fn write_flag(path: &Path, on: bool) -> Result<(), NetError> {
    std::fs::write(path, if on { "1\n" } else { "0\n" }).map_err(|error| NetError::Io {
        op: "write",
        path: path.into(),
        error,
    })
}

/// Whether IPv4 forwarding is on (`net.ipv4.ip_forward`, per network namespace).
pub fn ip_forward() -> Result<bool, NetError> {
    read_flag(Path::new(IP_FORWARD))
}

/// Turns IPv4 forwarding on or off. hvd turns it on while any NAT network runs and restores
/// the value it found (persisted) when the last one stops.
pub fn set_ip_forward(on: bool) -> Result<(), NetError> {
    write_flag(Path::new(IP_FORWARD), on)?;
    tracing::info!(on, "net.ipv4.ip_forward set");
    Ok(())
}

fn localnet_path(bridge: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf")
        .join(bridge)
        .join("route_localnet")
}

/// Lets connections from the host to `127.0.0.1:PORT` be DNATed out of `bridge` (port forwards
/// from the host itself). hv's table drops packets from guests to 127.0.0.0/8 meanwhile.
pub fn set_route_localnet(bridge: &str, on: bool) -> Result<(), NetError> {
    write_flag(&localnet_path(bridge), on)
}

/// Whether `route_localnet` is on for `bridge`.
pub fn route_localnet(bridge: &str) -> Result<bool, NetError> {
    read_flag(&localnet_path(bridge))
}
