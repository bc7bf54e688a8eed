//! A managed network as the user defines it. Addresses are checked against the host (routes,
//! other networks) by the engine through `host-net`; here only the shape is checked.

use serde::{Deserialize, Serialize};

use crate::names::PoolName as NetName;
use crate::spec::SpecError;

/// How a network reaches the rest of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// hv's bridge, DHCP and DNS, masquerade to the host's uplinks.
    Nat,
    /// hv's bridge, DHCP and DNS, no forwarding.
    Isolated,
    /// VM taps join an existing host bridge that hv does not configure.
    Bridge,
}

impl std::str::FromStr for NetMode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nat" => Ok(NetMode::Nat),
            "isolated" => Ok(NetMode::Isolated),
            "bridge" => Ok(NetMode::Bridge),
            _ => Err(SpecError::new(
                "mode",
                format!("unknown mode {s:?}; use nat, isolated or bridge"),
            )),
        }
    }
}

impl NetMode {
    /// Whether hv makes the bridge, its address, the nft table and dnsmasq (not in bridge
    /// mode, where taps join a host bridge that hv leaves alone).
    pub fn is_managed(self) -> bool {
        self != NetMode::Bridge
    }
}

impl std::fmt::Display for NetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetMode::Nat => "nat",
            NetMode::Isolated => "isolated",
            NetMode::Bridge => "bridge",
        })
    }
}

/// A network definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: NetName,
    pub mode: NetMode,
    /// Bridge mode: the existing host bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// IPv4 CIDR (nat and isolated); a free /24 is chosen when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// `FIRST-LAST`; the rest of the subnet when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autostart: bool,
    /// Port forwards into VMs (NAT only); each pins its VM's address with a DHCP reservation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<ForwardSpec>,
    /// Fixed DHCP addresses (nat and isolated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<ReservationSpec>,
}

/// A fixed DHCP address for a MAC; made by MAC or for a VM's NIC on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationSpec {
    pub mac: crate::Mac,
    pub ip: std::net::Ipv4Addr,
    /// The VM whose NIC has this MAC, when the reservation was made by VM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The name DNS answers for the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `proto host_addr:host_port -> vm:vm_port`, resolved to the VM's NIC when added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// `tcp` or `udp`.
    pub proto: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub vm: String,
    pub vm_port: u16,
    /// The VM NIC's MAC and the address reserved for it.
    pub mac: crate::Mac,
    pub vm_ip: std::net::Ipv4Addr,
}

impl NetworkSpec {
    /// A network with hv's defaults: no subnet yet (a free /24 is chosen), not autostarted.
    pub fn new(name: NetName, mode: NetMode) -> NetworkSpec {
        NetworkSpec {
            name,
            mode,
            bridge: None,
            subnet: None,
            dhcp_range: None,
            autostart: false,
            forwards: vec![],
            reservations: vec![],
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        match (self.mode, &self.bridge) {
            (NetMode::Bridge, None) => Err(SpecError::new("bridge", "bridge mode needs --bridge BR, an existing host bridge")),
            (NetMode::Bridge, Some(_)) if self.subnet.is_some() || self.dhcp_range.is_some() => Err(SpecError::new(
                "subnet",
                "a bridge-mode network has no subnet or DHCP range of hv's: the host bridge's own network serves the VMs",
            )),
            (NetMode::Nat | NetMode::Isolated, Some(_)) => {
                Err(SpecError::new("bridge", "--bridge is for bridge mode; nat and isolated networks get a bridge of hv's"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: NetMode, bridge: Option<&str>, subnet: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            bridge: bridge.map(Into::into),
            subnet: subnet.map(Into::into),
            ..NetworkSpec::new("n".parse().unwrap(), mode)
        }
    }

    #[test]
    fn shapes() {
        assert!(spec(NetMode::Nat, None, Some("10.1.0.0/24"))
            .validate()
            .is_ok());
        assert!(spec(NetMode::Bridge, Some("br0"), None).validate().is_ok());
        assert_eq!(
            spec(NetMode::Bridge, None, None)
                .validate()
                .unwrap_err()
                .field,
            "bridge"
        );
        assert_eq!(
            spec(NetMode::Bridge, Some("br0"), Some("10.1.0.0/24"))
                .validate()
                .unwrap_err()
                .field,
            "subnet"
        );
        assert_eq!(
            spec(NetMode::Nat, Some("br0"), None)
                .validate()
                .unwrap_err()
                .field,
            "bridge"
        );
        assert!("mesh".parse::<NetMode>().is_err());
    }
}
