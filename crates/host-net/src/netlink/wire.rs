//! Netlink wire format: kernel constants, the request builder and attribute parsing.

use std::net::Ipv4Addr;

// <linux/netlink.h>
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(super) const SOL_NETLINK: libc::c_int = 270;
pub(super) const RTMGRP_LINK: u32 = 1;
pub(super) const NETLINK_CAP_ACK: libc::c_int = 10;
pub(super) const NETLINK_EXT_ACK: libc::c_int = 11;
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
// <linux/rtnetlink.h>
pub(super) const RTM_NEWLINK: u16 = 16;
pub(super) const RTM_DELLINK: u16 = 17;
pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_NEWADDR: u16 = 20;
pub(super) const RTM_DELADDR: u16 = 21;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_DELROUTE: u16 = 25;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTA_DST: u16 = 1;
pub(super) const RTA_OIF: u16 = 4;
pub(super) const RTA_GATEWAY: u16 = 5;
pub(super) const RTA_PRIORITY: u16 = 6;
pub(super) const RTA_PREFSRC: u16 = 7;
pub(super) const RTA_TABLE: u16 = 15;
pub(super) const RT_TABLE_LOCAL: u32 = 255;
pub(super) const RTN_UNICAST: u8 = 1;
pub(super) const RTN_BLACKHOLE: u8 = 6;
pub(super) const RTN_UNREACHABLE: u8 = 7;
pub(super) const RTN_PROHIBIT: u8 = 8;
// <linux/if_link.h>, <linux/if_addr.h>
pub(super) const IFLA_ADDRESS: u16 = 1;
pub(super) const IFLA_IFNAME: u16 = 3;
pub(super) const IFLA_MTU: u16 = 4;
pub(super) const IFLA_MASTER: u16 = 10;
pub(super) const IFLA_LINKINFO: u16 = 18;
pub(super) const IFLA_INFO_KIND: u16 = 1;
pub(super) const IFLA_INFO_DATA: u16 = 2;
pub(super) const IFLA_BR_FORWARD_DELAY: u16 = 1;
pub(super) const IFLA_BR_STP_STATE: u16 = 5;
pub(super) const IFA_ADDRESS: u16 = 1;
pub(super) const IFA_LOCAL: u16 = 2;
pub(super) const IFA_BROADCAST: u16 = 4;
pub(super) const IFF_UP: u32 = 1;
pub(super) const AF_INET: u8 = libc::AF_INET as u8;

/// One request being built: header, fixed part, attributes (nests are closed by `end`).
pub(super) struct Request {
    pub(super) buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    pub(super) fn new(ty: u16, flags: u16, fixed: &[u8]) -> Request {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Request {
            buf,
            nests: Vec::new(),
        }
    }

    pub(super) fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    pub(super) fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub(super) fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b)
    }

    pub(super) fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub(super) fn end(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
}

pub(super) fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

pub(super) fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// One netlink message: header fields and body.
pub(super) struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

/// The messages in one received datagram; an error for a truncated one.
pub(super) fn messages(mut rest: &[u8]) -> impl Iterator<Item = std::io::Result<Msg<'_>>> {
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let mlen = u32_of(rest).unwrap_or(0) as usize;
        if mlen < 16 || mlen > rest.len() {
            rest = &[];
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "truncated netlink message",
            )));
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32_of(&rest[8..12]).unwrap_or(0),
            body: &rest[16..mlen],
        };
        rest = &rest[((mlen + 3) & !3).min(rest.len())..];
        Some(Ok(msg))
    })
}

/// Iterates over `(type, payload)` of the netlink attributes in `buf`.
pub(super) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, data))
    })
}

pub(super) fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

pub(super) fn str_of(d: &[u8]) -> String {
    let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

pub(super) fn ipv4_of(d: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = d.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_datagram_into_messages_and_flags_truncation() {
        let mut a = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(7, 0, 0));
        a.attr_str(IFLA_IFNAME, "x");
        let a_len = a.buf.len() as u32;
        a.buf[0..4].copy_from_slice(&a_len.to_ne_bytes());
        a.buf[8..12].copy_from_slice(&5u32.to_ne_bytes());
        let mut data = a.buf.clone();
        pad(&mut data);
        let mut b = Request::new(NLMSG_DONE, 0, &[0, 0, 0, 0]);
        let b_len = b.buf.len() as u32;
        b.buf[0..4].copy_from_slice(&b_len.to_ne_bytes());
        data.extend_from_slice(&b.buf);
        let msgs: Vec<Msg> = messages(&data).map(|m| m.unwrap()).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (RTM_NEWLINK, 5));
        assert_eq!(u32_of(&msgs[0].body[4..8]), Some(7));
        assert_eq!(msgs[1].ty, NLMSG_DONE);
        let cut = &data[..data.len() - 2];
        assert!(
            messages(cut).any(|m| m.is_err()),
            "a truncated message is an error"
        );
    }

    #[test]
    fn builds_nested_attributes_with_padding() {
        let mut r = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        r.attr_str(IFLA_IFNAME, "br")
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        let body = &r.buf[32..];
        let got: Vec<(u16, Vec<u8>)> = attrs(body).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(got[0], (IFLA_IFNAME, b"br\0".to_vec()));
        assert_eq!(got[1].0, IFLA_LINKINFO);
        let inner: Vec<(u16, String)> = attrs(&got[1].1).map(|(t, d)| (t, str_of(d))).collect();
        assert_eq!(inner, [(IFLA_INFO_KIND, "bridge".to_string())]);
        assert_eq!(r.buf.len() % 4, 0);
    }
}
