//! What a network is made of on the host (mode, bridge, subnet, DHCP, reservations, port
//! forwards), its validation, and the names hv gives to bridges, taps and nft tables. Pure.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use model::Mac;

use crate::names::{bridge_name, check_hostname, check_ifname, check_net_name, table_name};

use crate::addr::Ipv4Cidr;

/// Invalid network configuration; each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid subnet {text:?}: {reason}")]
    Cidr { text: String, reason: String },
    #[error("unknown protocol {text:?}; use tcp or udp")]
    Proto { text: String },
    #[error("invalid DHCP range {text:?}: {reason}")]
    DhcpRange { text: String, reason: String },
    #[error("DHCP range {range} is not inside subnet {subnet}")]
    RangeOutsideSubnet { range: DhcpRange, subnet: Ipv4Cidr },
    #[error("subnet {subnet} of network {name} overlaps subnet {other} of network {other_name}")]
    Overlap {
        name: String,
        subnet: Ipv4Cidr,
        other_name: String,
        other: Ipv4Cidr,
    },
    #[error("subnet {subnet} clashes with the host's {with}")]
    HostClash { subnet: Ipv4Cidr, with: String },
    #[error("a network named {name} already exists")]
    Duplicate { name: String },
    #[error("bridge {bridge} is already used by network {other_name}")]
    BridgeInUse { bridge: String, other_name: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn invalid(what: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// How a network reaches the rest of the world: the model's mode (see [`model::NetMode`]).
pub use model::NetMode as Mode;

/// The transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(ConfigError::Proto { text: s.into() }),
        }
    }
}

/// The addresses dnsmasq hands out dynamically, both ends included (`A-B` on the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DhcpRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl DhcpRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// The number of addresses in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end).saturating_sub(u32::from(self.start)) + 1
    }

    /// Never true: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for DhcpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for DhcpRange {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::DhcpRange {
            text: s.into(),
            reason: reason.into(),
        };
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| bad("expected START-END such as 10.128.5.100-10.128.5.200"))?;
        let start: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| bad("the start is not an IPv4 address"))?;
        let end: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| bad("the end is not an IPv4 address"))?;
        if u32::from(start) > u32::from(end) {
            return Err(bad("the start comes after the end"));
        }
        Ok(DhcpRange { start, end })
    }
}

/// A fixed address for a MAC (`dhcp-host`), optionally with the hostname DNS answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Traffic to `host_addr:host_port` (any local address when `None`) goes to `vm_ip:vm_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub proto: Proto,
    pub host_addr: Option<Ipv4Addr>,
    pub host_port: u16,
    pub vm_ip: Ipv4Addr,
    pub vm_port: u16,
}

/// The IPv4 side of a managed (NAT or isolated) network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    pub subnet: Ipv4Cidr,
    /// The bridge's own address: DHCP server, DNS server and (NAT) default route.
    pub gateway: Ipv4Addr,
    /// `None` turns DHCP off (DNS still runs).
    pub dhcp: Option<DhcpRange>,
    pub reservations: Vec<Reservation>,
}

/// Everything host-net needs to make a network exist on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    pub mode: Mode,
    /// The Linux bridge: hv's own (`hvbr-…`) for NAT and isolated, the host's for bridge mode.
    pub bridge: String,
    /// Required for NAT and isolated networks; absent in bridge mode.
    pub ipv4: Option<Ipv4Config>,
    /// NAT only.
    pub forwards: Vec<PortForward>,
}

impl NetworkConfig {
    /// A NAT or isolated network on `subnet` with hv's defaults: bridge [`bridge_name`], the
    /// first host address as gateway, DHCP on the rest of the subnet.
    pub fn managed(name: &str, mode: Mode, subnet: Ipv4Cidr) -> Result<NetworkConfig, ConfigError> {
        let (first, last) = subnet.host_range().ok_or_else(|| {
            invalid(
                "subnet",
                format!("{subnet} is too small; use a /30 or larger (e.g. a /24)"),
            )
        })?;
        let cfg = NetworkConfig {
            name: name.into(),
            mode,
            bridge: bridge_name(name),
            ipv4: Some(Ipv4Config {
                subnet,
                gateway: first,
                dhcp: Some(DhcpRange {
                    start: Ipv4Addr::from(u32::from(first) + 1),
                    end: last,
                }),
                reservations: Vec::new(),
            }),
            forwards: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A bridge-mode network whose taps join the existing host bridge `bridge`.
    pub fn bridged(name: &str, bridge: &str) -> Result<NetworkConfig, ConfigError> {
        let cfg = NetworkConfig {
            name: name.into(),
            mode: Mode::Bridge,
            bridge: bridge.into(),
            ipv4: None,
            forwards: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The name of this network's nft table (family `inet`), see [`table_name`].
    pub fn table(&self) -> String {
        table_name(&self.name)
    }

    /// Checks the network on its own: names, addresses, DHCP range, reservations, forwards.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_net_name(&self.name)?;
        check_ifname(&self.bridge)?;
        match (self.mode, &self.ipv4) {
            (Mode::Bridge, Some(_)) => {
                return Err(invalid(
                    "network",
                    "a bridge-mode network has no subnet or DHCP of hv's: the host bridge's own network provides them",
                ))
            }
            (Mode::Nat | Mode::Isolated, None) => {
                return Err(invalid(
                    "network",
                    format!("a {} network needs a subnet", self.mode),
                ))
            }
            (_, Some(ip)) => check_ipv4(ip)?,
            (Mode::Bridge, None) => {}
        }
        if !self.forwards.is_empty() && self.mode != Mode::Nat {
            return Err(invalid(
                "port forward",
                format!(
                    "network {} is in {} mode; port forwards need a nat network",
                    self.name, self.mode
                ),
            ));
        }
        if let Some(ip) = &self.ipv4 {
            check_forwards(&self.forwards, ip)?;
        }
        Ok(())
    }

    /// Checks this network against the other defined networks: unique names and bridges, no
    /// overlapping subnets. `others` may include this network's old definition under the same
    /// name only when `replacing` is true.
    pub fn check_against(
        &self,
        others: &[NetworkConfig],
        replacing: bool,
    ) -> Result<(), ConfigError> {
        for o in others {
            if o.name == self.name {
                if replacing {
                    continue;
                }
                return Err(ConfigError::Duplicate {
                    name: self.name.clone(),
                });
            }
            if o.bridge == self.bridge && (self.mode.is_managed() || o.mode.is_managed()) {
                return Err(ConfigError::BridgeInUse {
                    bridge: self.bridge.clone(),
                    other_name: o.name.clone(),
                });
            }
            for f in &self.forwards {
                if let Some(g) = o.forwards.iter().find(|g| same_host_port(f, g)) {
                    return Err(invalid(
                        "port forward",
                        format!(
                            "host port {}/{} is already forwarded by network {} (to {}:{})",
                            f.host_port, f.proto, o.name, g.vm_ip, g.vm_port
                        ),
                    ));
                }
            }
            if let (Some(a), Some(b)) = (&self.ipv4, &o.ipv4) {
                if a.subnet.overlaps(&b.subnet) {
                    return Err(ConfigError::Overlap {
                        name: self.name.clone(),
                        subnet: a.subnet,
                        other_name: o.name.clone(),
                        other: b.subnet,
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_ipv4(ip: &Ipv4Config) -> Result<(), ConfigError> {
    let subnet = ip.subnet;
    if !(8..=30).contains(&subnet.prefix()) {
        return Err(invalid(
            "subnet",
            format!("{subnet}: use a prefix length from /8 to /30 (e.g. a /24)"),
        ));
    }
    if !subnet.is_host(ip.gateway) {
        return Err(invalid(
            "gateway",
            format!(
                "{} is not a host address of {subnet} (not the network or broadcast address)",
                ip.gateway
            ),
        ));
    }
    if let Some(range) = ip.dhcp {
        if !subnet.is_host(range.start) || !subnet.is_host(range.end) {
            return Err(ConfigError::RangeOutsideSubnet { range, subnet });
        }
        if range.contains(ip.gateway) {
            return Err(ConfigError::DhcpRange {
                text: range.to_string(),
                reason: format!("it includes the gateway {}", ip.gateway),
            });
        }
    }
    for (i, r) in ip.reservations.iter().enumerate() {
        if !subnet.is_host(r.ip) || r.ip == ip.gateway {
            return Err(invalid(
                "reservation",
                format!(
                    "{} for {} is not a free host address of {subnet}",
                    r.ip, r.mac
                ),
            ));
        }
        if let Some(h) = &r.hostname {
            check_hostname(h)?;
        }
        for o in &ip.reservations[..i] {
            if o.mac == r.mac {
                return Err(invalid(
                    "reservation",
                    format!("{} is reserved twice", r.mac),
                ));
            }
            if o.ip == r.ip {
                return Err(invalid(
                    "reservation",
                    format!("{} is reserved for both {} and {}", r.ip, o.mac, r.mac),
                ));
            }
        }
    }
    Ok(())
}

fn check_forwards(forwards: &[PortForward], ip: &Ipv4Config) -> Result<(), ConfigError> {
    for (i, f) in forwards.iter().enumerate() {
        if f.host_port == 0 || f.vm_port == 0 {
            return Err(invalid("port forward", "ports must be 1 to 65535"));
        }
        if !ip.subnet.is_host(f.vm_ip) || f.vm_ip == ip.gateway {
            return Err(invalid(
                "port forward",
                format!("{} is not a guest address in {}", f.vm_ip, ip.subnet),
            ));
        }
        for o in &forwards[..i] {
            if same_host_port(f, o) {
                return Err(invalid(
                    "port forward",
                    format!("host port {}/{} is forwarded twice", f.host_port, f.proto),
                ));
            }
        }
    }
    Ok(())
}

/// Whether two forwards catch the same host port (no host address means every address).
fn same_host_port(a: &PortForward, b: &PortForward) -> bool {
    let same_addr = a.host_addr.is_none() || b.host_addr.is_none() || a.host_addr == b.host_addr;
    a.proto == b.proto && a.host_port == b.host_port && same_addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(subnet: &str) -> NetworkConfig {
        NetworkConfig::managed("default", Mode::Nat, subnet.parse().unwrap()).unwrap()
    }

    fn check(cfg: &NetworkConfig, want: Option<&str>) {
        match (cfg.validate(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
            (got, want) => panic!("got {got:?}, want {want:?} for {cfg:#?}"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn managed_defaults() {
        let n = nat("10.128.5.0/24");
        assert_eq!(n.bridge, "hvbr-default");
        let v4 = n.ipv4.as_ref().unwrap();
        assert_eq!(v4.gateway, ip("10.128.5.1"));
        assert_eq!(v4.dhcp.unwrap().to_string(), "10.128.5.2-10.128.5.254");
        assert_eq!(v4.dhcp.unwrap().len(), 253);
        assert_eq!(n.table(), "hv-default");
        let e = NetworkConfig::managed("x", Mode::Nat, "10.0.0.0/31".parse().unwrap());
        assert!(e.unwrap_err().to_string().contains("too small"));
    }

    #[test]
    fn rejects_bad_addresses_ranges_and_reservations() {
        let mut n = nat("10.128.5.0/24");
        let v4 = n.ipv4.as_mut().unwrap();
        v4.dhcp = Some("10.128.5.100-10.128.6.20".parse().unwrap());
        check(
            &n,
            Some("DHCP range 10.128.5.100-10.128.6.20 is not inside subnet 10.128.5.0/24"),
        );

        let mut n = nat("10.128.5.0/24");
        n.ipv4.as_mut().unwrap().dhcp = Some("10.128.5.1-10.128.5.9".parse().unwrap());
        check(&n, Some("includes the gateway 10.128.5.1"));

        let mut n = nat("10.128.5.0/24");
        n.ipv4.as_mut().unwrap().gateway = ip("10.128.5.255");
        check(&n, Some("not a host address"));

        let mut n = nat("10.128.5.0/24");
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let r = Reservation {
            mac,
            ip: ip("10.128.5.10"),
            hostname: Some("web".into()),
        };
        n.ipv4.as_mut().unwrap().reservations = vec![r.clone()];
        check(&n, None);
        n.ipv4.as_mut().unwrap().reservations = vec![r.clone(), r.clone()];
        check(&n, Some("reserved twice"));
        let mut bad = r.clone();
        bad.hostname = Some("bad_name".into());
        n.ipv4.as_mut().unwrap().reservations = vec![bad];
        check(&n, Some("invalid hostname"));

        let e = "10.0.0.9-10.0.0.2".parse::<DhcpRange>().unwrap_err();
        assert!(e.to_string().contains("start comes after the end"), "{e}");
        assert!("sctp".parse::<Proto>().is_err());
    }

    #[test]
    fn forwards_only_on_nat_and_unique() {
        let fwd = PortForward {
            proto: Proto::Tcp,
            host_addr: None,
            host_port: 8080,
            vm_ip: ip("10.128.5.10"),
            vm_port: 80,
        };
        let mut n = nat("10.128.5.0/24");
        n.forwards = vec![fwd];
        check(&n, None);
        n.forwards.push(PortForward {
            host_addr: Some(ip("192.0.2.1")),
            ..fwd
        });
        check(&n, Some("host port 8080/tcp is forwarded twice"));
        n.forwards[1].proto = Proto::Udp;
        check(&n, None);
        n.forwards[1].vm_ip = ip("10.9.9.9");
        check(&n, Some("not a guest address"));
        n.forwards.truncate(1);
        n.mode = Mode::Isolated;
        check(&n, Some("need a nat network"));
    }

    #[test]
    fn bridge_mode_has_no_subnet() {
        let b = NetworkConfig::bridged("lan", "br0").unwrap();
        check(&b, None);
        let mut b2 = b.clone();
        b2.ipv4 = nat("10.1.0.0/24").ipv4;
        check(&b2, Some("bridge-mode network has no subnet"));
        let e = NetworkConfig::bridged("lan", "br0; rm").unwrap_err();
        assert!(e.to_string().contains("invalid interface name"), "{e}");
        let e = NetworkConfig::bridged("-x", "br0").unwrap_err();
        assert!(e.to_string().contains("invalid network name"), "{e}");
    }

    #[test]
    fn checks_against_other_networks() {
        let a = nat("10.128.0.0/16");
        let mut b =
            NetworkConfig::managed("b", Mode::Isolated, "10.128.7.0/24".parse().unwrap()).unwrap();
        let e = b
            .check_against(std::slice::from_ref(&a), false)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.128.7.0/24 of network b overlaps subnet 10.128.0.0/16 of network default"
        );
        assert!(a.check_against(std::slice::from_ref(&a), true).is_ok());
        assert_eq!(
            a.check_against(std::slice::from_ref(&a), false)
                .unwrap_err(),
            ConfigError::Duplicate {
                name: "default".into()
            }
        );
        b.ipv4 = nat("10.129.0.0/24").ipv4;
        let fwd = |net: &str| PortForward {
            proto: Proto::Tcp,
            host_addr: None,
            host_port: 2222,
            vm_ip: ip(net),
            vm_port: 22,
        };
        let mut a2 = a.clone();
        a2.forwards = vec![fwd("10.128.0.5")];
        b.forwards = vec![fwd("10.129.0.5")];
        let e = b
            .check_against(std::slice::from_ref(&a2), false)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("already forwarded by network default"),
            "{e}"
        );
        b.forwards.clear();
        b.bridge = a.bridge.clone();
        assert!(matches!(
            b.check_against(&[a], false),
            Err(ConfigError::BridgeInUse { .. })
        ));
    }
}
