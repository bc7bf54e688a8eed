//! Managed networks end to end, with hvd, QEMU, dnsmasq and nftables inside a network
//! namespace the test makes (traffic never leaves it).

use std::time::Duration;

use api::ErrorCode;
use model::{NetMode, NetworkSpec, VmState};
use testkit::{NetNs, TestHvd, VmOpts};

const DHCP_SCRIPT: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && echo HV-LEASE-$ip\n' > /tmp/dh.sh; chmod +x /tmp/dh.sh; ip link set eth0 up; ip -o link; udhcpc -i eth0 -n -q -t 5 -T 1 -s /tmp/dh.sh 2>&1; echo DHCP-DONE-$((1))"#;

#[test]
fn nat_network_gives_leases_and_tears_down_completely() {
    let ns = NetNs::new("net").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    // A default NAT network is defined at first start, on a free /24, not started.
    let default = c.net_info("default").unwrap();
    assert!(!default.active && default.subnet.is_some(), "{default:?}");
    let spec = |name: &str, subnet: &str| NetworkSpec {
        name: name.parse().unwrap(),
        mode: NetMode::Nat,
        bridge: None,
        subnet: Some(subnet.into()),
        dhcp_range: None,
        autostart: false,
    };
    let lan = c.net_create(&spec("lan", "10.77.7.0/24")).unwrap();
    assert_eq!(lan.gateway.as_deref(), Some("10.77.7.1"));
    // Bad input: overlapping subnet, bad CIDR, duplicate, NIC on an unknown network.
    assert_eq!(
        c.net_create(&spec("lan2", "10.77.7.128/25"))
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        c.net_create(&spec("bad", "10.77.300.0/24"))
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        c.net_create(&spec("lan", "10.78.0.0/24"))
            .unwrap_err()
            .code(),
        Some(ErrorCode::AlreadyExists)
    );
    let mut ghost = h.tiny_spec("ghost", VmOpts::default()).unwrap();
    ghost.nics.push("network=nowhere".parse().unwrap());
    let e = c.create(ghost, false).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // A VM on the network starts the network, gets a lease and reaches the gateway.
    let mut vm = h.tiny_spec("a", VmOpts::default()).unwrap();
    vm.nics.push("network=lan".parse().unwrap());
    c.create(vm, true).unwrap();
    assert!(
        c.net_info("lan").unwrap().active,
        "starting a VM starts its network"
    );
    h.wait_ready("a").unwrap();
    h.type_line("a", DHCP_SCRIPT).unwrap();
    // Up to the line end: a match must not stop inside a number still arriving.
    let lease = h
        .wait_console(
            "a",
            r"HV-LEASE-10\.77\.7\.\d+\r?\n",
            Duration::from_secs(60),
        )
        .unwrap();
    let lease = lease.trim().to_string();
    h.run_in_guest(
        "a",
        "ping -c 1 -W 5 10.77.7.1 >/dev/null && echo PING-$((40+2))",
        "PING-42",
    )
    .unwrap();
    let leases = c.net_leases("lan").unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(format!("HV-LEASE-{}", leases[0].ip), lease);
    assert_eq!(leases[0].vm.as_deref(), Some("a"));
    let info = c.info("a").unwrap();
    assert_eq!(info.addresses.len(), 1);
    assert_eq!(
        format!("HV-LEASE-{}", info.addresses[0].ip),
        lease,
        "hv info shows the NIC's IP"
    );
    // Running VMs keep a network up; deleting needs it stopped.
    assert_eq!(
        c.net_stop("lan").unwrap_err().code(),
        Some(ErrorCode::InUse)
    );
    assert_eq!(
        c.net_delete("lan").unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    c.destroy("a").unwrap();
    h.wait_state("a", VmState::Shutoff, Duration::from_secs(10))
        .unwrap();
    c.net_stop("lan").unwrap();
    // Nothing of hv's is left: no bridge, no tap, no nft table, no dnsmasq; ip_forward restored.
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(
        !links.contains("hvbr-") && !links.contains("hvtap"),
        "{links}"
    );
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("hv-"), "{tables}");
    assert_eq!(
        ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "0"
    );
    let remaining: Vec<i32> = ns
        .pids()
        .into_iter()
        .filter(|p| Some(*p as u32) != h.hvd_pid())
        .collect();
    let names: Vec<String> = remaining
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("dnsmasq") || n.contains("qemu")),
        "{names:?}"
    );
    c.undefine("a", false, false).unwrap();
    c.net_delete("lan").unwrap();
    assert!(c.net_info("lan").is_err());
}
