//! The names hv gives to bridges, taps and nft tables, and the name rules that keep them safe
//! to put into interface names, nft identifiers and dnsmasq lines. Pure.

use crate::ConfigError;

fn invalid(what: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// Network names follow VM names: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}` (they become part of an
/// nft table name and of file names).
pub fn check_net_name(name: &str) -> Result<(), ConfigError> {
    let ok = name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "network name",
            format!("{name:?}: use 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit"),
        ))
    }
}

/// Interface names hv accepts: 1-15 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "interface name",
            format!("{name:?}: use 1-15 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// DHCP hostnames: dot-separated labels of letters, digits and inner hyphens.
pub fn check_hostname(name: &str) -> Result<(), ConfigError> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            format!("{name:?}: use letters, digits and inner hyphens, labels split by dots"),
        ))
    }
}

/// The DHCP hostname for a VM name: `_` becomes `-`; `None` when no valid name results.
pub fn hostname_for(vm_name: &str) -> Option<String> {
    let h: String = vm_name
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    check_hostname(&h).is_ok().then_some(h)
}

/// 32-bit FNV-1a: stable across Rust versions and platforms (names derived from it persist).
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

const IFNAMSIZ: usize = 15;

/// hv's bridge for a network: `hvbr-NAME`, or when that exceeds 15 bytes, `hvbr-` + the first
/// 6 bytes of the name + 4 hex digits of its hash (`hvbr-longna1a2b`).
pub fn bridge_name(net: &str) -> String {
    let full = format!("hvbr-{net}");
    if full.len() <= IFNAMSIZ {
        return full;
    }
    let head: String = net.chars().take(6).collect();
    format!("hvbr-{head}{:04x}", fnv1a(&[net.as_bytes()]) & 0xffff)
}

/// The tap for NIC `nic` of the VM with database id `vm_id`: `hvtap-ID-N`, or a hashed
/// `hvt` + 12 hex digits when that exceeds 15 bytes.
pub fn tap_name(vm_id: i64, nic: u32) -> String {
    let full = format!("hvtap-{vm_id}-{nic}");
    if full.len() <= IFNAMSIZ {
        return full;
    }
    let a = fnv1a(&[&vm_id.to_le_bytes(), &nic.to_le_bytes()]);
    let b = fnv1a(&[&nic.to_le_bytes(), &vm_id.to_le_bytes()]);
    format!("hvt{a:08x}{:04x}", b & 0xffff)
}

/// The nft table (family `inet`) that holds all of one network's rules: `hv-NAME`.
pub fn table_name(net: &str) -> String {
    format!("hv-{net}")
}

/// A stable, locally administered unicast MAC for hv's bridge. A bridge with an explicitly set
/// MAC keeps it when ports join or leave, so guests' ARP entries for the gateway never go stale.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = fnv1a(&[bridge.as_bytes()]).to_be_bytes();
    [0x02, 0x68, h[0], h[1], h[2], h[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_ifnamsiz_and_are_stable() {
        assert_eq!(bridge_name("default"), "hvbr-default");
        let long = bridge_name("a-very-long-network-name");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("hvbr-a-very"), "{long}");
        assert_ne!(long, bridge_name("a-very-long-network-nam3"));
        assert_eq!(tap_name(7, 0), "hvtap-7-0");
        assert_eq!(tap_name(99999, 12), "hvtap-99999-12");
        let t = tap_name(1 << 40, 3);
        assert_eq!(t.len(), 15);
        assert_ne!(t, tap_name(1 << 40, 4));
        // Persisted names must not change between builds.
        assert_eq!(bridge_name("a-very-long-network-name"), "hvbr-a-very0476");
        assert_eq!(bridge_mac("hvbr-default")[..2], [0x02, 0x68]);
        assert_eq!(hostname_for("web_1").as_deref(), Some("web-1"));
        assert_eq!(hostname_for("x..y"), None);
    }
}
