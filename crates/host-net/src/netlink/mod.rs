//! A minimal, blocking NETLINK_ROUTE client with exactly the requests hv needs: links (create a
//! bridge, set up/master, delete, get, dump), IPv4 addresses (add, delete, dump) and IPv4 routes
//! (add, delete, dump).
//!
//! Why not `rtnetlink`/`netlink-packet-route`: those pull in an async stack and change their
//! typed API between minor versions, while the dozen messages used here are a stable kernel ABI
//! that fit in this module. The kernel answers these requests immediately, so a blocking socket
//! is fine; the socket works in the network namespace of the thread that opened it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

mod wire;

use wire::*;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The ifindex of the bridge this link is a port of.
    pub master: Option<u32>,
    /// `bridge`, `veth`, `tun`, … (`None` for plain devices such as `lo`).
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Set for bridges.
    pub bridge: Option<BridgeInfo>,
}

/// Bridge settings that decide how fast a new port forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeInfo {
    pub stp_enabled: bool,
    /// In centiseconds (`USER_HZ` clock ticks), as the kernel reports it.
    pub forward_delay_cs: u32,
}

fn parse_link(msg: &[u8]) -> Option<LinkInfo> {
    let index = u32_of(msg.get(4..8)?)?;
    let flags = u32_of(msg.get(8..12)?)?;
    let mut l = LinkInfo {
        index,
        name: String::new(),
        up: flags & IFF_UP != 0,
        master: None,
        kind: None,
        mac: None,
        mtu: None,
        bridge: None,
    };
    for (ty, d) in attrs(msg.get(16..)?) {
        match ty {
            IFLA_IFNAME => l.name = str_of(d),
            IFLA_MASTER => l.master = u32_of(d),
            IFLA_MTU => l.mtu = u32_of(d),
            IFLA_ADDRESS => l.mac = d.try_into().ok(),
            IFLA_LINKINFO => {
                for (ty, d) in attrs(d) {
                    match ty {
                        IFLA_INFO_KIND => l.kind = Some(str_of(d)),
                        IFLA_INFO_DATA if l.kind.as_deref() == Some("bridge") => {
                            let mut b = BridgeInfo {
                                stp_enabled: false,
                                forward_delay_cs: 0,
                            };
                            for (ty, d) in attrs(d) {
                                match ty {
                                    IFLA_BR_STP_STATE => b.stp_enabled = u32_of(d) != Some(0),
                                    IFLA_BR_FORWARD_DELAY => {
                                        b.forward_delay_cs = u32_of(d).unwrap_or(0)
                                    }
                                    _ => {}
                                }
                            }
                            l.bridge = Some(b);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// An IPv4 address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub broadcast: Option<Ipv4Addr>,
}

/// An IPv4 route outside the `local` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub table: u32,
    /// Who made it: `RTPROT_KERNEL` (2) for the prefix routes of addresses, `boot` (3),
    /// `static` (4), `dhcp` (16), ...
    pub protocol: u8,
    pub scope: u8,
    /// `RTN_UNICAST` (1), blackhole, unreachable, prohibit.
    pub kind: u8,
    pub metric: Option<u32>,
    pub prefsrc: Option<Ipv4Addr>,
}

/// The protocol of the routes the kernel makes for addresses.
pub const RTPROT_KERNEL: u8 = 2;

impl std::fmt::Display for RouteInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.prefix)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// A NETLINK_ROUTE socket bound to the caller thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: socket() takes no pointers and returns a new fd or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads size_of::<c_int>() bytes from a live local; failure
            // (old kernels) only costs the error detail, so the result is ignored.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `req` and collects the data messages of the answer until the ACK (or, for dumps,
    /// `NLMSG_DONE`); a kernel error becomes an `io::Error` with its extended-ACK message.
    fn transact(&mut self, mut req: Request) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = req.buf.len() as u32;
        req.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        req.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        let dump = u16::from_ne_bytes([req.buf[6], req.buf[7]]) & NLM_F_DUMP == NLM_F_DUMP;
        // SAFETY: the pointer and length describe the live request buffer; a zeroed
        // sockaddr_nl addresses the kernel.
        let n = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                req.buf.as_ptr().cast(),
                req.buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            for m in messages(self.recv(&mut buf)?) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let code = u32_of(m.body).map_or(0, |c| c as i32);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(kernel_error(code, m.flags, m.body));
                    }
                    NLMSG_DONE if dump => {
                        let code = u32_of(m.body).map_or(0, |c| c as i32);
                        if code < 0 {
                            return Err(kernel_error(code, 0, m.body));
                        }
                        return Ok(out);
                    }
                    _ => out.push(m.body.to_vec()),
                }
            }
        }
    }

    /// Receives one datagram into `buf` (retrying on `EINTR`).
    fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        loop {
            // SAFETY: recv writes at most buf.len() bytes into the live buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(&buf[..n as usize]);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// A socket that receives link notifications (`RTMGRP_LINK`); a receive on it gives up after
    /// `timeout`.
    pub fn link_events(timeout: std::time::Duration) -> io::Result<Netlink> {
        let me = Netlink::open()?;
        // SAFETY: bind and setsockopt read the given number of bytes from live locals.
        unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            sa.nl_groups = RTMGRP_LINK;
            if libc::bind(
                me.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: timeout.subsec_micros() as libc::suseconds_t,
            };
            if libc::setsockopt(
                me.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(me)
    }

    /// On a [`Netlink::link_events`] socket: blocks until the kernel announces that link `index`
    /// is gone (`RTM_DELLINK`), which it does before the RCU grace periods that make the delete
    /// request itself slow. Times out with `WouldBlock`/`TimedOut`.
    pub fn wait_deleted(&mut self, index: u32) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            for m in messages(self.recv(&mut buf)?) {
                let m = m?;
                // AF_UNSPEC: the link itself (AF_BRIDGE ones are about bridge ports).
                if m.ty == RTM_DELLINK
                    && m.body.first() == Some(&0)
                    && m.body.get(4..8).and_then(u32_of) == Some(index)
                {
                    return Ok(());
                }
            }
        }
    }

    /// Creates a bridge, administratively up, with STP off, forward delay 0 (new ports forward
    /// at once) and the fixed MAC `mac` (so ports joining never change it).
    pub fn create_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut r = Request::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, IFF_UP, IFF_UP),
        );
        r.attr_str(IFLA_IFNAME, name).attr(IFLA_ADDRESS, &mac);
        r.nest(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "bridge");
        r.nest(IFLA_INFO_DATA)
            .attr_u32(IFLA_BR_FORWARD_DELAY, 0)
            .attr_u32(IFLA_BR_STP_STATE, 0)
            .end()
            .end();
        self.transact(r).map(drop)
    }

    /// Sets a link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let flags = if up { IFF_UP } else { 0 };
        let r = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, flags, IFF_UP));
        self.transact(r).map(drop)
    }

    /// Makes link `index` a port of bridge `master` (0 detaches it).
    pub fn set_master(&mut self, index: u32, master: u32) -> io::Result<()> {
        let mut r = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        r.attr_u32(IFLA_MASTER, master);
        self.transact(r).map(drop)
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut r = Request::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        r.attr_str(IFLA_IFNAME, name);
        match self.transact(r) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<LinkInfo>> {
        let mut r = Request::new(RTM_GETLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        r.attr_str(IFLA_IFNAME, name);
        match self.transact(r) {
            Ok(msgs) => Ok(msgs.first().and_then(|m| parse_link(m))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> io::Result<Vec<LinkInfo>> {
        let r = Request::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        Ok(self
            .transact(r)?
            .iter()
            .filter_map(|m| parse_link(m))
            .collect())
    }

    /// Adds `addr/prefix` (with its broadcast address) to link `index`.
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let bcast = crate::Ipv4Cidr::containing(addr, prefix).broadcast();
        self.add_ipv4_with(index, addr, prefix, Some(bcast))
    }

    /// Adds `addr/prefix` to link `index` with the broadcast address `bcast` (or none).
    pub fn add_ipv4_with(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
        bcast: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let mut fixed = [0u8; 8];
        fixed[0] = AF_INET;
        fixed[1] = prefix;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut r = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
        r.attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        if let Some(b) = bcast {
            r.attr(IFA_BROADCAST, &b.octets());
        }
        self.transact(r).map(drop)
    }

    /// Removes `addr/prefix` from link `index`.
    pub fn del_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut fixed = [0u8; 8];
        fixed[0] = AF_INET;
        fixed[1] = prefix;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut r = Request::new(RTM_DELADDR, NLM_F_ACK, &fixed);
        r.attr(IFA_LOCAL, &addr.octets());
        self.transact(r).map(drop)
    }

    /// Adds `route` (its `oif` replaced by `oif`).
    pub fn add_route(&mut self, route: &RouteInfo, oif: u32) -> io::Result<()> {
        let r = route_request(
            RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            route,
            Some(oif),
        );
        self.transact(r).map(drop)
    }

    /// Deletes `route` as the dump reported it.
    pub fn del_route(&mut self, route: &RouteInfo) -> io::Result<()> {
        let r = route_request(RTM_DELROUTE, NLM_F_ACK, route, route.oif);
        self.transact(r).map(drop)
    }

    /// Every IPv4 address in the namespace.
    pub fn ipv4_addrs(&mut self) -> io::Result<Vec<AddrInfo>> {
        let mut fixed = [0u8; 8];
        fixed[0] = AF_INET;
        let r = Request::new(RTM_GETADDR, NLM_F_DUMP, &fixed);
        let mut out = Vec::new();
        for m in self.transact(r)? {
            let (Some(prefix), Some(index)) = (m.get(1), m.get(4..8).and_then(u32_of)) else {
                continue;
            };
            let mut local = None;
            let mut address = None;
            let mut broadcast = None;
            for (ty, d) in attrs(m.get(8..).unwrap_or_default()) {
                match ty {
                    IFA_LOCAL => local = ipv4_of(d),
                    IFA_ADDRESS => address = ipv4_of(d),
                    IFA_BROADCAST => broadcast = ipv4_of(d),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                out.push(AddrInfo {
                    index,
                    addr,
                    prefix: *prefix,
                    broadcast,
                });
            }
        }
        Ok(out)
    }

    /// Every IPv4 unicast, blackhole, unreachable or prohibit route outside the `local` table.
    pub fn ipv4_routes(&mut self) -> io::Result<Vec<RouteInfo>> {
        let mut fixed = [0u8; 12];
        fixed[0] = AF_INET;
        let r = Request::new(RTM_GETROUTE, NLM_F_DUMP, &fixed);
        let mut out = Vec::new();
        for m in self.transact(r)? {
            if m.len() < 12 {
                continue;
            }
            let kind = m[7];
            if ![RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT].contains(&kind) {
                continue;
            }
            let mut r = RouteInfo {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: m[1],
                oif: None,
                gateway: None,
                table: u32::from(m[4]),
                protocol: m[5],
                scope: m[6],
                kind,
                metric: None,
                prefsrc: None,
            };
            for (ty, d) in attrs(&m[12..]) {
                match ty {
                    RTA_DST => r.dst = ipv4_of(d).unwrap_or(r.dst),
                    RTA_OIF => r.oif = u32_of(d),
                    RTA_GATEWAY => r.gateway = ipv4_of(d),
                    RTA_PRIORITY => r.metric = u32_of(d),
                    RTA_PREFSRC => r.prefsrc = ipv4_of(d),
                    RTA_TABLE => r.table = u32_of(d).unwrap_or(r.table),
                    _ => {}
                }
            }
            if r.table != RT_TABLE_LOCAL {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// An `RTM_NEWROUTE`/`RTM_DELROUTE` request for `route` through `oif`.
fn route_request(ty: u16, flags: u16, route: &RouteInfo, oif: Option<u32>) -> Request {
    let mut fixed = [0u8; 12];
    fixed[0] = AF_INET;
    fixed[1] = route.prefix;
    fixed[4] = u8::try_from(route.table).unwrap_or(0);
    fixed[5] = route.protocol;
    fixed[6] = route.scope;
    fixed[7] = route.kind;
    let mut r = Request::new(ty, flags, &fixed);
    r.attr_u32(RTA_TABLE, route.table);
    if route.prefix > 0 {
        r.attr(RTA_DST, &route.dst.octets());
    }
    if let Some(g) = route.gateway {
        r.attr(RTA_GATEWAY, &g.octets());
    }
    if let Some(o) = oif {
        r.attr_u32(RTA_OIF, o);
    }
    if let Some(m) = route.metric {
        r.attr_u32(RTA_PRIORITY, m);
    }
    if let Some(s) = route.prefsrc {
        r.attr(RTA_PREFSRC, &s.octets());
    }
    r
}

fn kernel_error(code: i32, flags: u16, body: &[u8]) -> io::Error {
    let os = io::Error::from_raw_os_error(code.saturating_neg());
    // With NETLINK_CAP_ACK the echoed request is only its 16-byte header.
    let msg = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| body.get(20..))
        .flatten()
        .and_then(|tlvs| attrs(tlvs).find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG))
        .map(|(_, d)| str_of(d));
    match msg {
        Some(m) if !m.is_empty() => io::Error::new(os.kind(), format!("{os} ({m})")),
        _ => os,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bridge_link() {
        let mut r = Request::new(0, 0, &ifinfomsg(7, IFF_UP, 0));
        r.attr_str(IFLA_IFNAME, "hvbr-x").attr_u32(IFLA_MASTER, 3);
        r.nest(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "bridge");
        r.nest(IFLA_INFO_DATA)
            .attr_u32(IFLA_BR_FORWARD_DELAY, 0)
            .attr_u32(IFLA_BR_STP_STATE, 1)
            .end()
            .end();
        let l = parse_link(&r.buf[16..]).unwrap();
        assert_eq!(
            (l.index, l.name.as_str(), l.up, l.master),
            (7, "hvbr-x", true, Some(3))
        );
        assert_eq!(
            l.bridge,
            Some(BridgeInfo {
                stp_enabled: true,
                forward_delay_cs: 0
            })
        );
    }
}
