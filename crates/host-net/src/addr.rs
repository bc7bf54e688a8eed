//! IPv4 subnets: parsing, containment and overlap, clashes with what the host already routes,
//! and picking a free /24 for the default network. Pure.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::ConfigError;

/// An IPv4 network in CIDR notation, always with the host bits clear (`10.128.5.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network `addr/prefix`; fails when `prefix > 32` or `addr` has host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, ConfigError> {
        let text = format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(ConfigError::Cidr {
                text,
                reason: "the prefix length must be 0 to 32".into(),
            });
        }
        let net = Ipv4Cidr::containing(addr, prefix);
        if net.addr != addr {
            return Err(ConfigError::Cidr {
                text,
                reason: format!("host bits are set; did you mean {net}?"),
            });
        }
        Ok(net)
    }

    /// The network of `prefix` bits that contains `ip` (host bits cleared).
    pub fn containing(ip: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.255.0` for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The broadcast address (the last address of the network).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.addr) & mask(p) == u32::from(other.addr) & mask(p)
    }

    /// The first and last addresses usable by hosts (network and broadcast excluded), or `None`
    /// for a /31 or /32, which are too small for a managed network.
    pub fn host_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        if self.prefix > 30 {
            return None;
        }
        Some((
            Ipv4Addr::from(u32::from(self.addr) + 1),
            Ipv4Addr::from(u32::from(self.broadcast()) - 1),
        ))
    }

    /// Whether `ip` is a usable host address of this network.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.host_range()
            .is_some_and(|(a, b)| (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::Cidr {
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX such as 10.128.5.0/24"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad("the address is not a dotted-quad IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix length must be 0 to 32"))?;
        Ipv4Cidr::new(ip, prefix)
    }
}

/// Where an address range the host already uses comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSource {
    /// A route in a routing table other than `local`.
    Route,
    /// An address configured on an interface (its prefix).
    Address,
}

/// An IPv4 range the host already uses, for clash checks and picking free subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedRange {
    pub cidr: Ipv4Cidr,
    /// The interface the route or address is on, when known.
    pub dev: Option<String>,
    pub source: RangeSource,
}

impl fmt::Display for UsedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.source {
            RangeSource::Route => "route",
            RangeSource::Address => "address",
        };
        match &self.dev {
            Some(dev) => write!(f, "{what} {} on {dev}", self.cidr),
            None => write!(f, "{what} {}", self.cidr),
        }
    }
}

/// The first host range that `subnet` overlaps, ignoring default routes (`0.0.0.0/0`) and
/// anything on `own_dev` (the network's own bridge, when it is already up).
pub fn find_clash<'a>(
    subnet: &Ipv4Cidr,
    used: &'a [UsedRange],
    own_dev: Option<&str>,
) -> Option<&'a UsedRange> {
    used.iter().find(|u| {
        u.cidr.prefix() > 0
            && !(own_dev.is_some() && u.dev.as_deref() == own_dev)
            && u.cidr.overlaps(subnet)
    })
}

/// Checks that `subnet` clashes with no host route or address (see [`find_clash`]).
pub fn check_host_clash(
    subnet: &Ipv4Cidr,
    used: &[UsedRange],
    own_dev: Option<&str>,
) -> Result<(), ConfigError> {
    match find_clash(subnet, used, own_dev) {
        Some(u) => Err(ConfigError::HostClash {
            subnet: *subnet,
            with: u.to_string(),
        }),
        None => Ok(()),
    }
}

/// The blocks searched for a default network, in order. They avoid what other managers pick
/// by default (libvirt `192.168.122.0/24`, Docker `172.17.0.0/16` and up, LXD/Incus `10.x`
/// low ranges, Podman `10.88.0.0/16`, VirtualBox `192.168.56.0/24`).
const DEFAULT_POOLS: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(10, 128, 0, 0), 9),
    (Ipv4Addr::new(172, 30, 0, 0), 15),
];

/// Picks the first /24 in `10.128.0.0/9`, then `172.30.0.0/15`, that overlaps none of `taken`
/// (host routes and addresses, plus the subnets of hv's other networks) apart from default
/// routes; `None` when every candidate is taken.
pub fn pick_free_subnet(taken: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    for (base, prefix) in DEFAULT_POOLS {
        let count = 1u32 << (24 - u32::from(prefix));
        for i in 0..count {
            let cand = Ipv4Cidr::containing(Ipv4Addr::from(u32::from(base) + (i << 8)), 24);
            if !taken.iter().any(|t| t.prefix() > 0 && t.overlaps(&cand)) {
                return Some(cand);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn check_err(text: &str, want: &str) {
        let e = text.parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }

    #[test]
    fn parses_and_rejects_cidrs() {
        let n = c("10.128.5.0/24");
        assert_eq!(n.to_string(), "10.128.5.0/24");
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 128, 5, 255));
        assert_eq!(
            n.host_range(),
            Some((Ipv4Addr::new(10, 128, 5, 1), Ipv4Addr::new(10, 128, 5, 254)))
        );
        assert_eq!(c("0.0.0.0/0").netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(c("10.0.0.1/32").host_range(), None);
        check_err("10.0.0.1/24", "did you mean 10.0.0.0/24");
        check_err("10.0.0.0/33", "0 to 32");
        check_err("10.0.0.0", "ADDRESS/PREFIX");
        check_err("10.0.0/24", "dotted-quad");
        check_err("fd00::/64", "dotted-quad");
        check_err("10.0.0.0/x", "0 to 32");
    }

    #[test]
    fn containment_and_overlap() {
        let n = c("10.1.0.0/16");
        assert!(n.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!n.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!(n.overlaps(&c("10.1.7.0/24")) && c("10.1.7.0/24").overlaps(&n));
        assert!(!n.overlaps(&c("10.2.0.0/16")));
        assert!(c("0.0.0.0/0").overlaps(&n));
        assert!(n.is_host(Ipv4Addr::new(10, 1, 0, 1)));
        assert!(!n.is_host(Ipv4Addr::new(10, 1, 0, 0)));
        assert!(!n.is_host(Ipv4Addr::new(10, 1, 255, 255)));
    }

    #[test]
    fn clashes_ignore_default_routes_and_our_own_bridge() {
        let used = vec![
            UsedRange {
                cidr: c("0.0.0.0/0"),
                dev: Some("eth0".into()),
                source: RangeSource::Route,
            },
            UsedRange {
                cidr: c("192.168.1.0/24"),
                dev: Some("eth0".into()),
                source: RangeSource::Route,
            },
            UsedRange {
                cidr: c("10.128.0.0/24"),
                dev: Some("hvbr-default".into()),
                source: RangeSource::Route,
            },
        ];
        assert!(check_host_clash(&c("10.0.0.0/24"), &used, None).is_ok());
        let e = check_host_clash(&c("192.168.0.0/16"), &used, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 192.168.0.0/16 clashes with the host's route 192.168.1.0/24 on eth0"
        );
        assert!(check_host_clash(&c("10.128.0.0/24"), &used, Some("hvbr-default")).is_ok());
        assert!(check_host_clash(&c("10.128.0.0/24"), &used, None).is_err());
    }

    #[test]
    fn picks_the_first_free_slash_24() {
        assert_eq!(pick_free_subnet(&[]), Some(c("10.128.0.0/24")));
        let taken = [c("0.0.0.0/0"), c("10.128.0.0/23"), c("10.128.2.7/32")];
        assert_eq!(pick_free_subnet(&taken), Some(c("10.128.3.0/24")));
        assert_eq!(
            pick_free_subnet(&[c("10.0.0.0/8")]),
            Some(c("172.30.0.0/24"))
        );
        assert_eq!(
            pick_free_subnet(&[c("10.0.0.0/8"), c("172.16.0.0/12")]),
            None
        );
    }
}
