//! Managed networks end to end, with hvd, QEMU, dnsmasq and nftables inside a network
//! namespace the test makes (traffic never leaves it).

use std::time::Duration;

use api::ErrorCode;
use model::{NetMode, NetworkSpec, VmState};
use testkit::confinement::Privileges;
use testkit::{NetNs, TestHvd, VmOpts};

const DHCP_SCRIPT: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && echo HV-LEASE-$ip\n' > /tmp/dh.sh; chmod +x /tmp/dh.sh; ip link set eth0 up; for t in 1 2 3; do udhcpc -i eth0 -n -q -t 6 -T 2 -s /tmp/dh.sh 2>/dev/null && break; done; echo DHCP-DONE-$((1))"#;

/// `net.ipv4.ip_forward` inside `ns`.
fn ip_forward(ns: &NetNs) -> String {
    ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .unwrap()
        .trim()
        .to_string()
}

/// No bridge and no tap of hv's is left in `ns`.
fn assert_no_hv_links(ns: &NetNs) {
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(
        !links.contains("hvbr-") && !links.contains("hvtap"),
        "{links}"
    );
}

/// The processes in `ns` besides hvd (their names).
fn others_in(ns: &NetNs, h: &TestHvd) -> Vec<String> {
    ns.pids()
        .into_iter()
        .filter(|p| Some(*p as u32) != h.hvd_pid())
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
        .collect()
}

#[test]
fn nat_network_gives_leases_and_tears_down_completely() {
    let ns = NetNs::new("net").unwrap();
    let mut h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    // A default NAT network is defined at first start, on a free /24, not started.
    let default = c.net_info("default").unwrap();
    assert!(!default.active && default.subnet.is_some(), "{default:?}");
    let spec = |name: &str, subnet: &str| NetworkSpec {
        subnet: Some(subnet.into()),
        ..NetworkSpec::new(name.parse().unwrap(), NetMode::Nat)
    };
    // hv host check spots a firewall that drops forwarded traffic and says what to add.
    let firewall = || {
        c.host_check()
            .unwrap()
            .checks
            .into_iter()
            .find(|c| c.name == "firewall")
            .unwrap()
    };
    let fw = firewall();
    assert_eq!(fw.status, api::CheckStatus::Pass, "{fw:?}");
    ns.run(&["nft", "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"]).unwrap();
    let fw = firewall();
    assert_eq!(fw.status, api::CheckStatus::Warn, "{fw:?}");
    assert!(
        fw.hint.unwrap_or_default().contains("iptables -I FORWARD"),
        "the hint says what to add"
    );
    ns.run(&["nft", "delete table ip filter"]).unwrap();
    let lan = c.net_create(&spec("lan", "10.77.7.0/24")).unwrap();
    assert_eq!(lan.gateway.as_deref(), Some("10.77.7.1"));
    // Bad input: overlapping subnet, bad CIDR, duplicate, NIC on an unknown network, a subnet
    // the host already routes, a DHCP range outside the subnet, an unknown mode.
    ns.run(&["ip", "link", "add", "lan0", "type", "bridge"])
        .unwrap();
    ns.run(&["ip", "addr", "add", "10.77.20.1/24", "dev", "lan0"])
        .unwrap();
    let e = c.net_create(&spec("clash", "10.77.20.0/24")).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("lan0"), "names what clashes: {e}");
    let e = c
        .net_create(&NetworkSpec {
            dhcp_range: Some("10.77.21.10-10.77.22.20".into()),
            ..spec("range", "10.77.21.0/24")
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let resp = c
        .send(
            "POST",
            "/v1/networks",
            Some(br#"{"name":"m","mode":"bridged"}"#),
        )
        .unwrap();
    assert_eq!(resp.status, 400, "unknown mode");
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
    c.create(vm, false).unwrap();
    // DHCP reservations: by VM name (its NIC's MAC) or by MAC, with the refusals.
    let reserve = |mac: Option<&str>, vm: Option<&str>, ip: &str| {
        c.net_reservation_add(
            "lan",
            &api::AddReservationRequest {
                mac: mac.map(Into::into),
                vm: vm.map(Into::into),
                ip: ip.parse().unwrap(),
                hostname: None,
            },
        )
    };
    let code = |r: Result<Vec<model::ReservationSpec>, client::ClientError>| r.unwrap_err().code();
    let rs = reserve(None, Some("a"), "10.77.7.50").unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].vm.as_deref(), Some("a"));
    assert_eq!(rs[0].hostname.as_deref(), Some("a"));
    let other = Some("52:54:00:00:77:99");
    for (r, why) in [
        (reserve(other, None, "10.78.0.5"), "outside the subnet"),
        (reserve(other, None, "10.77.7.1"), "the gateway"),
        (
            reserve(other, None, "10.77.7.50"),
            "an address reserved for a",
        ),
        (
            reserve(other, Some("a"), "10.77.7.60"),
            "both a MAC and a VM",
        ),
        (reserve(Some("52:54"), None, "10.77.7.60"), "a bad MAC"),
    ] {
        assert_eq!(code(r), Some(ErrorCode::InvalidArgument), "{why}");
    }
    assert_eq!(
        code(reserve(None, Some("a"), "10.77.7.51")),
        Some(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        code(reserve(None, Some("nope"), "10.77.7.51")),
        Some(ErrorCode::NotFound)
    );
    reserve(other, None, "10.77.7.60").unwrap();
    assert_eq!(
        c.net_reservation_remove("lan", "52:54:00:00:77:99")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        c.net_reservation_remove("lan", "nope").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    c.start("a", false).unwrap();
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
    assert_eq!(lease, "HV-LEASE-10.77.7.50", "the reservation holds");
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
    assert_eq!(ip_forward(&ns), "1");
    c.destroy("a").unwrap();
    h.wait_state("a", VmState::Shutoff, Duration::from_secs(10))
        .unwrap();
    c.net_stop("lan").unwrap();
    // Nothing of hv's is left: no bridge, no tap, no nft table, no dnsmasq; ip_forward restored.
    assert_no_hv_links(&ns);
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("hv-"), "{tables}");
    assert_eq!(ip_forward(&ns), "0");
    let names = others_in(&ns, &h);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("dnsmasq") || n.contains("qemu")),
        "{names:?}"
    );
    // An autostart network comes up with hvd.
    c.net_autostart("lan", true).unwrap();
    h.restart().unwrap();
    let c = h.client();
    assert!(c.net_info("lan").unwrap().active, "autostart");
    assert!(!c.net_info("default").unwrap().active);
    c.net_stop("lan").unwrap();
    c.undefine("a", false, false).unwrap();
    c.net_delete("lan").unwrap();
    assert!(c.net_info("lan").is_err());
}

/// A guest DHCP client that configures the address and default route, then prints them.
const DHCP_ROUTE: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add $ip/$mask dev $interface\n[ -n "$router" ] && ip route add default via $router\necho HV-LEASE-$ip-\n' > /tmp/dh.sh; chmod +x /tmp/dh.sh; ip link set eth0 up; for t in 1 2 3; do udhcpc -i eth0 -n -q -t 6 -T 2 -s /tmp/dh.sh 2>/dev/null && break; done; echo DHCP-DONE-$((1))"#;

/// Every QEMU runs confined, and `vm`'s taps (`hvtap-ID-N`; its QEMU runs as uid and gid
/// base + ID) are owned by its QEMU's uid and gid.
fn assert_qemu_owns_its_taps(ns: &NetNs, h: &TestHvd, vm: &str) {
    h.check_qemus_confined().unwrap();
    let q = Privileges::of(h.client().info(vm).unwrap().pid.unwrap()).unwrap();
    let prefix = format!("hvtap-{}-", q.uid() - h.qemu_uid_base);
    let script =
        format!("for t in /sys/class/net/{prefix}*; do echo $(cat $t/owner):$(cat $t/group); done");
    let owners = ns.run(&["sh", "-c", &script]).unwrap();
    let want = format!("{}:{}", q.uid(), q.gid());
    assert!(
        !owners.trim().is_empty() && owners.lines().all(|l| l == want),
        "taps {prefix}* of {vm} are owned by {owners:?}, not {want}"
    );
}

fn boot_on(ns: &NetNs, h: &TestHvd, vm: &str, net: &str) -> String {
    let mut spec = h.tiny_spec(vm, VmOpts::default()).unwrap();
    spec.nics.push(format!("network={net}").parse().unwrap());
    h.client().create(spec, true).unwrap();
    h.wait_ready(vm).unwrap();
    assert_qemu_owns_its_taps(ns, h, vm);
    h.type_line(vm, DHCP_ROUTE).unwrap();
    let m = h
        .wait_console(vm, r"HV-LEASE-[0-9.]+-", Duration::from_secs(60))
        .unwrap();
    m.trim_start_matches("HV-LEASE-")
        .trim_end_matches('-')
        .to_string()
}

#[test]
fn nat_masquerades_to_the_outside_and_isolated_stays_inside() {
    let ns = NetNs::new("nat").unwrap();
    let outside = NetNs::new("out").unwrap();
    // The "internet": a namespace joined by a veth, with no route back to the VM subnets.
    ns.run(&[
        "ip",
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "wan",
        "netns",
        &outside.name,
    ])
    .unwrap();
    ns.run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "uplink"])
        .unwrap();
    ns.run(&["ip", "link", "set", "uplink", "up"]).unwrap();
    ns.run(&["ip", "route", "add", "default", "via", "198.51.100.2"])
        .unwrap();
    outside
        .run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "wan"])
        .unwrap();
    outside.run(&["ip", "link", "set", "wan", "up"]).unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    let spec = |name: &str, mode, subnet: &str| NetworkSpec {
        subnet: Some(subnet.into()),
        ..NetworkSpec::new(name.parse().unwrap(), mode)
    };
    c.net_create(&spec("lan", NetMode::Nat, "10.77.8.0/24"))
        .unwrap();
    c.net_create(&spec("iso", NetMode::Isolated, "10.77.9.0/24"))
        .unwrap();
    let a = boot_on(&ns, &h, "a", "lan");
    let b = boot_on(&ns, &h, "b", "lan");
    assert_ne!(a, b);
    h.run_in_guest(
        "a",
        &format!("ping -c 1 -W 5 {b} >/dev/null && echo PEER-$((1+1))"),
        "PEER-2",
    )
    .unwrap();
    // The outside host has no route to 10.77.8.0/24: only masquerading gets the reply back.
    h.run_in_guest(
        "a",
        "ping -c 1 -W 5 198.51.100.2 >/dev/null && echo OUT-$((2+2))",
        "OUT-4",
    )
    .unwrap();
    // A port forward reaches a server in the guest from outside and from the host itself.
    h.run_in_guest("a", "mkdir -p /tmp/www && echo hv-forward-ok > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && echo HTTPD-$((5+5))", "HTTPD-10").unwrap();
    let fw = c
        .net_forward_add(
            "lan",
            &api::AddForwardRequest {
                proto: "tcp".into(),
                host_port: 8022,
                host_addr: None,
                vm: "a".into(),
                port: Some(8080),
            },
        )
        .unwrap();
    assert_eq!(fw[0].vm_ip.to_string(), a);
    let fetch = |ns: &NetNs, url: &str| ns.run(&["timeout", "10", "busybox", "wget", "-qO-", url]);
    assert_eq!(
        fetch(&outside, "http://198.51.100.1:8022/").unwrap().trim(),
        "hv-forward-ok"
    );
    assert_eq!(
        fetch(&ns, "http://198.51.100.1:8022/").unwrap().trim(),
        "hv-forward-ok"
    );
    assert_eq!(
        fetch(&ns, "http://127.0.0.1:8022/").unwrap().trim(),
        "hv-forward-ok"
    );
    let e = c
        .net_forward_add(
            "lan",
            &api::AddForwardRequest {
                proto: "tcp".into(),
                host_port: 8022,
                host_addr: None,
                vm: "b".into(),
                port: None,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::InvalidArgument),
        "a host port is forwarded once: {e}"
    );
    c.net_forward_remove("lan", "tcp", 8022).unwrap();
    assert!(
        fetch(&outside, "http://198.51.100.1:8022/").is_err(),
        "the forward is gone"
    );
    let c_ip = boot_on(&ns, &h, "c", "iso");
    assert!(c_ip.starts_with("10.77.9."));
    h.run_in_guest(
        "c",
        "ping -c 1 -W 5 10.77.9.1 >/dev/null && echo GW-$((3+3))",
        "GW-6",
    )
    .unwrap();
    h.run_in_guest("c", "ip route add default via 10.77.9.1 2>/dev/null; ping -c 1 -W 3 198.51.100.2 >/dev/null; echo OUT-rc-$?", "OUT-rc-[0-9]+").map(|m| assert_eq!(m, "OUT-rc-1", "an isolated VM reached the outside")).unwrap();
    for vm in ["a", "b", "c"] {
        c.destroy(vm).unwrap();
    }
    c.net_stop("lan").unwrap();
    c.net_stop("iso").unwrap();
    assert_no_hv_links(&ns);
}

#[test]
fn nics_hot_attach_and_detach_are_seen_in_the_guest() {
    use api::{AttachNicRequest, DetachNicRequest};
    let ns = NetNs::new("nic").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    c.net_create(&NetworkSpec {
        subnet: Some("10.77.11.0/24".into()),
        ..NetworkSpec::new("lan".parse().unwrap(), NetMode::Isolated)
    })
    .unwrap();
    c.create(h.tiny_spec("hn", VmOpts::default()).unwrap(), true)
        .unwrap();
    h.wait_ready("hn").unwrap();
    let attach = |nic: &str, live, config| {
        c.nic_attach(
            "hn",
            &AttachNicRequest {
                nic: nic.parse().unwrap(),
                live,
                config,
            },
        )
    };
    let done = attach("network=lan", None, None).unwrap();
    let mac = done.nic.mac.unwrap().to_string();
    assert_eq!(done.vm.spec.unwrap().nics[0].mac, done.nic.mac);
    // The guest sees the new device and gets a lease through it; the tap is on hv's bridge.
    h.type_line("hn", "for i in $(seq 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done; cat /sys/class/net/eth0/address")
        .unwrap();
    h.wait_console("hn", &mac, Duration::from_secs(30)).unwrap();
    h.type_line("hn", DHCP_ROUTE).unwrap();
    let ip = h
        .wait_console("hn", r"HV-LEASE-[0-9.]+-", Duration::from_secs(60))
        .unwrap();
    assert!(ip.starts_with("HV-LEASE-10.77.11."), "{ip}");
    assert_qemu_owns_its_taps(&ns, &h, "hn");
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(
        links.contains("hvtap-") && links.contains("master hvbr-lan"),
        "{links}"
    );
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert!(
        tables.contains("bridge hv-guard-hvtap-"),
        "a hot-plugged tap has its guard: {tables}"
    );
    // Refusals: a MAC another VM has, an unknown network, a live change to a stopped VM, an
    // unknown or malformed MAC.
    let mut other = h.tiny_spec("other", VmOpts::default()).unwrap();
    other
        .nics
        .push(format!("network=lan,mac={mac}").parse().unwrap());
    assert_eq!(
        c.create(other, false).unwrap_err().code(),
        Some(ErrorCode::InUse)
    );
    c.create(h.tiny_spec("other", VmOpts::default()).unwrap(), false)
        .unwrap();
    assert_eq!(
        c.nic_attach(
            "other",
            &AttachNicRequest {
                nic: format!("network=lan,mac={mac}").parse().unwrap(),
                live: None,
                config: None,
            },
        )
        .unwrap_err()
        .code(),
        Some(ErrorCode::InUse)
    );
    let e = attach("network=nowhere", None, None).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = c
        .nic_attach(
            "other",
            &AttachNicRequest {
                nic: "user".parse().unwrap(),
                live: Some(true),
                config: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let detach = |vm: &str, mac: &str| c.nic_detach(vm, mac, &DetachNicRequest::default());
    assert_eq!(
        detach("hn", "52:54:00:00:00:01").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        detach("hn", "not-a-mac").unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    // A second NIC, live only: the definition keeps one.
    let done = attach("user,model=e1000", Some(true), Some(false)).unwrap();
    assert_eq!(done.vm.spec.unwrap().nics.len(), 1);
    let live_mac = done.nic.mac.unwrap().to_string();
    assert_ne!(live_mac, mac, "the live-only NIC's own MAC comes back");
    // Detach: the guest loses the device, the tap goes, the definition forgets the NIC.
    let info = detach("hn", &mac).unwrap();
    assert!(info.spec.unwrap().nics.is_empty());
    h.run_in_guest(
        "hn",
        &format!("for i in $(seq 100); do grep -qs {mac} /sys/class/net/*/address || break; sleep 0.1; done; echo GONE-$(grep -ls {mac} /sys/class/net/*/address | wc -l)-"),
        "GONE-0-",
    )
    .unwrap();
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("hvtap-"), "{links}");
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert!(
        !tables.contains("hv-guard-"),
        "the guard goes with its tap: {tables}"
    );
    // The live-only NIC is not in the definition: by default (live and config) it is not
    // found; live only, it goes.
    assert_eq!(
        detach("hn", &live_mac).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    c.nic_detach(
        "hn",
        &live_mac,
        &DetachNicRequest {
            live: Some(true),
            config: Some(false),
        },
    )
    .unwrap();
    h.run_in_guest(
        "hn",
        &format!("for i in $(seq 100); do grep -qs {live_mac} /sys/class/net/*/address || break; sleep 0.1; done; echo LIVE-GONE-$(grep -ls {live_mac} /sys/class/net/*/address | wc -l)-"),
        "LIVE-GONE-0-",
    )
    .unwrap();
    c.destroy("hn").unwrap();
}

#[test]
fn an_uplink_becomes_a_bridge_and_a_bridge_mode_vm_gets_a_lease_from_the_lan() {
    let ns = NetNs::new("brm").unwrap();
    // The LAN: a namespace behind the host's uplink, with its own DHCP server.
    let lan = NetNs::new("lan").unwrap();
    let setup: [&[&str]; 4] = [
        &[
            "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns",
            &lan.name,
        ],
        &["ip", "addr", "add", "10.77.12.2/24", "dev", "uplink"],
        &["ip", "link", "set", "uplink", "up"],
        &["ip", "route", "add", "default", "via", "10.77.12.1"],
    ];
    for args in setup {
        ns.run(args).unwrap();
    }
    lan.run(&["ip", "addr", "add", "10.77.12.1/24", "dev", "eth0"])
        .unwrap();
    lan.run(&["ip", "link", "set", "eth0", "up"]).unwrap();
    let dir = std::env::temp_dir().join(format!("hvt-brm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Removed also when the test fails.
    let _rm = RemoveDir(dir.clone());
    let leases = dir.join("leases");
    lan.run(&[
        "dnsmasq",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--interface=eth0",
        "--except-interface=lo",
        "--port=0",
        "--dhcp-range=10.77.12.100,10.77.12.150,1h",
        &format!("--dhcp-leasefile={}", leases.display()),
        &format!("--pid-file={}", dir.join("pid").display()),
    ])
    .unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    // hv host bridge: the uplink's address and routes move to br-lan.
    for (iface, bridge, why) in [
        ("nope", "br-x", "an unknown interface"),
        ("uplink", "hvbr-x", "hv's own bridge name"),
        ("uplink", "lo", "a taken name"),
    ] {
        let e = c.host_bridge(iface, bridge).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{why}: {e}");
    }
    let change = c.host_bridge("uplink", "br-lan").unwrap();
    assert!(change.steps.len() >= 5, "{change:?}");
    let addrs = ns
        .run(&["ip", "-o", "-4", "addr", "show", "br-lan"])
        .unwrap();
    assert!(addrs.contains("10.77.12.2/24"), "{addrs}");
    let routes = ns.run(&["ip", "route"]).unwrap();
    assert!(
        routes.contains("default via 10.77.12.1 dev br-lan"),
        "{routes}"
    );
    ns.run(&["busybox", "ping", "-c", "1", "-W", "3", "10.77.12.1"])
        .unwrap();
    let e = c.host_bridge("uplink", "br-2").unwrap_err();
    assert!(e.to_string().contains("already a port of br-lan"), "{e}");
    // A bridge-mode network on it: the VM's lease comes from the LAN's DHCP server.
    let e = c
        .net_create(&NetworkSpec {
            subnet: Some("10.77.13.0/24".into()),
            bridge: Some("br-lan".into()),
            ..NetworkSpec::new("ext".parse().unwrap(), NetMode::Bridge)
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    c.net_create(&NetworkSpec {
        bridge: Some("br-lan".into()),
        ..NetworkSpec::new("ext".parse().unwrap(), NetMode::Bridge)
    })
    .unwrap();
    let ip = boot_on(&ns, &h, "b", "ext");
    assert!(ip.starts_with("10.77.12.1"), "{ip}");
    let held = std::fs::read_to_string(&leases).unwrap();
    assert!(held.contains(&ip), "the LAN's dnsmasq leased it: {held}");
    h.run_in_guest(
        "b",
        "ping -c 1 -W 5 10.77.12.1 >/dev/null && echo BR-$((6+1))",
        "BR-7",
    )
    .unwrap();
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(
        links.contains("master br-lan"),
        "the tap joined br-lan: {links}"
    );
    assert_eq!(
        c.host_unbridge("br-lan").unwrap_err().code(),
        Some(ErrorCode::InUse),
        "not while a VM uses it"
    );
    c.destroy("b").unwrap();
    h.wait_state("b", VmState::Shutoff, Duration::from_secs(10))
        .unwrap();
    c.net_stop("ext").unwrap();
    // hv removed its tap and nothing else: no nft table, the bridge keeps its address.
    let links = ns.run(&["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("hvtap-"), "{links}");
    assert!(ns
        .run(&["nft", "list", "tables"])
        .unwrap()
        .trim()
        .is_empty());
    // hv host unbridge: everything goes back to the uplink.
    c.host_unbridge("br-lan").unwrap();
    let addrs = ns
        .run(&["ip", "-o", "-4", "addr", "show", "uplink"])
        .unwrap();
    assert!(addrs.contains("10.77.12.2/24"), "{addrs}");
    let routes = ns.run(&["ip", "route"]).unwrap();
    assert!(
        routes.contains("default via 10.77.12.1 dev uplink"),
        "{routes}"
    );
    assert!(!ns.run(&["ip", "-o", "link"]).unwrap().contains("br-lan"));
    drop(h);
    drop(lan);
    drop(ns);
}

#[test]
fn twenty_network_cycles_leave_nothing_behind() {
    let ns = NetNs::new("cyc").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    let before_links = ns.run(&["ip", "-o", "link"]).unwrap();
    let forward_before = ip_forward(&ns);
    let nets_dir = h.state_dir.join("nets");
    for i in 0..20 {
        let mode = if i % 2 == 0 {
            NetMode::Nat
        } else {
            NetMode::Isolated
        };
        c.net_create(&NetworkSpec {
            subnet: Some("10.77.14.0/24".into()),
            ..NetworkSpec::new("cyc".parse().unwrap(), mode)
        })
        .unwrap();
        // A VM's start brings the network up and plugs a tap; destroy unplugs it.
        let mut vm = h.tiny_spec("v", VmOpts::default()).unwrap();
        vm.nics.push("network=cyc".parse().unwrap());
        c.create(vm, true).unwrap();
        c.destroy("v").unwrap();
        h.wait_state("v", VmState::Shutoff, Duration::from_secs(10))
            .unwrap();
        c.undefine("v", false, false).unwrap();
        c.net_stop("cyc").unwrap();
        c.net_delete("cyc").unwrap();
    }
    assert_eq!(ns.run(&["ip", "-o", "link"]).unwrap(), before_links);
    assert!(ns
        .run(&["nft", "list", "tables"])
        .unwrap()
        .trim()
        .is_empty());
    assert_eq!(ip_forward(&ns), forward_before);
    let left = others_in(&ns, &h);
    assert!(left.is_empty(), "processes left in the namespace: {left:?}");
    let files: Vec<_> = std::fs::read_dir(&nets_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "network files left: {files:?}");
}

/// Issue 9, item 4: the dnsmasq restarted for a reservation change is watched like the first
/// one, so hvd restarts it when it dies.
#[test]
fn dnsmasq_restarted_for_a_reservation_is_still_supervised() {
    let ns = NetNs::new("dsup").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    c.net_create(&NetworkSpec {
        subnet: Some("10.77.15.0/24".into()),
        ..NetworkSpec::new("sup".parse().unwrap(), NetMode::Nat)
    })
    .unwrap();
    let first = c.net_start("sup").unwrap().dnsmasq_pid.unwrap();
    c.net_reservation_add(
        "sup",
        &api::AddReservationRequest {
            mac: Some("52:54:00:00:15:01".into()),
            vm: None,
            ip: "10.77.15.50".parse().unwrap(),
            hostname: None,
        },
    )
    .unwrap();
    let second = c.net_info("sup").unwrap().dnsmasq_pid.unwrap();
    assert_ne!(first, second, "the reservation restarted dnsmasq");
    // SAFETY: kill(2) by PID on the dnsmasq of this test's own network namespace.
    unsafe { libc::kill(second as libc::pid_t, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let third = loop {
        let pid = c.net_info("sup").unwrap().dnsmasq_pid;
        if let Some(p) = pid.filter(|p| *p != second) {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hvd did not restart the dnsmasq it restarted for the reservation: {}",
            h.hvd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let comm = std::fs::read_to_string(format!("/proc/{third}/comm")).unwrap_or_default();
    assert!(comm.contains("dnsmasq"), "pid {third} is {comm:?}");
    c.net_stop("sup").unwrap();
    c.net_delete("sup").unwrap();
}

/// Issue 9, item 4: a network that cannot come up at hvd start (the host bridge of an active
/// bridge-mode network was deleted while hvd was down) is marked failed with the reason and
/// does not stop hvd; `hv net start` tries again.
#[test]
fn a_network_that_cannot_come_up_is_marked_failed_and_hvd_starts() {
    let ns = NetNs::new("nfail").unwrap();
    let mut h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let add_brx = || {
        ns.run(&["ip", "link", "add", "brx", "type", "bridge"])
            .unwrap();
        ns.run(&["ip", "link", "set", "brx", "up"]).unwrap();
    };
    add_brx();
    h.client()
        .net_create(&NetworkSpec {
            bridge: Some("brx".into()),
            ..NetworkSpec::new("lan".parse().unwrap(), NetMode::Bridge)
        })
        .unwrap();
    assert!(h.client().net_start("lan").unwrap().active);
    h.stop().unwrap();
    ns.run(&["ip", "link", "del", "brx"]).unwrap();
    h.start_again().unwrap();
    let c = h.client();
    let lan = c.net_info("lan").unwrap();
    assert!(!lan.active, "{lan:?}");
    let why = lan.error.unwrap_or_default();
    assert!(why.contains("brx does not exist"), "{why}");
    assert!(c.net_info("default").unwrap().error.is_none());
    // Still failed: the start says why, and so does the network.
    assert!(c.net_start("lan").is_err());
    assert!(c.net_info("lan").unwrap().error.is_some());
    add_brx();
    let lan = c.net_start("lan").unwrap();
    assert!(lan.active && lan.error.is_none(), "{lan:?}");
    // And it comes back with hvd as before.
    h.restart().unwrap();
    let lan = h.client().net_info("lan").unwrap();
    assert!(lan.active && lan.error.is_none(), "{lan:?}");
    h.client().net_stop("lan").unwrap();
    ns.run(&["ip", "link", "del", "brx"]).unwrap();
}

/// Issue 9: per-tap anti-spoofing. A guest that changes its MAC, or takes another VM's
/// reserved address, reaches neither the gateway nor the other VM and cannot poison the
/// gateway's ARP entry; a well-behaved guest still reaches both; the guard tables go with the
/// taps.
#[test]
fn a_guest_cannot_spoof_its_mac_or_another_vms_reserved_ip() {
    let ns = NetNs::new("spoof").unwrap();
    let mut h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client().clone();
    c.net_create(&NetworkSpec {
        subnet: Some("10.77.31.0/24".into()),
        ..NetworkSpec::new("g".parse().unwrap(), NetMode::Nat)
    })
    .unwrap();
    for vm in ["a", "b", "c"] {
        let mut spec = h.tiny_spec(vm, VmOpts::default()).unwrap();
        spec.nics.push("network=g".parse().unwrap());
        c.create(spec, false).unwrap();
    }
    // a and b have reserved addresses, c takes one from the pool.
    for (vm, ip) in [("a", "10.77.31.50"), ("b", "10.77.31.51")] {
        c.net_reservation_add(
            "g",
            &api::AddReservationRequest {
                mac: None,
                vm: Some(vm.into()),
                ip: ip.parse().unwrap(),
                hostname: None,
            },
        )
        .unwrap();
    }
    for vm in ["a", "b", "c"] {
        c.start(vm, false).unwrap();
    }
    for (vm, ip) in [
        ("a", "10.77.31.50"),
        ("b", "10.77.31.51"),
        ("c", "10.77.31."),
    ] {
        h.wait_ready(vm).unwrap();
        h.type_line(vm, DHCP_ROUTE).unwrap();
        let lease = h
            .wait_console(vm, r"HV-LEASE-[0-9.]+-", Duration::from_secs(60))
            .unwrap();
        assert!(
            lease.starts_with(&format!("HV-LEASE-{ip}")),
            "{vm}: {lease}"
        );
    }
    // dnsmasq logs problems, not every transaction a guest asks for.
    let dns_log = std::fs::read_to_string(h.state_dir.join("nets/g/dnsmasq.log")).unwrap();
    assert!(!dns_log.contains("DHCPACK"), "{dns_log}");
    let n = std::cell::Cell::new(0);
    // Pings `dst` from `vm`; true when it answers.
    let reaches = |h: &TestHvd, vm: &str, dst: &str| {
        n.set(n.get() + 1);
        let n = n.get();
        let out = h
            .run_in_guest(
                vm,
                &format!("ping -c 2 -W 3 {dst} >/dev/null && echo R{n}-YES || echo R{n}-NO"),
                &format!(r"R{n}-(YES|NO)"),
            )
            .unwrap();
        out.ends_with("YES")
    };
    assert!(reaches(&h, "a", "10.77.31.1"), "a reaches the gateway");
    assert!(reaches(&h, "b", "10.77.31.1"), "b reaches the gateway");
    assert!(reaches(&h, "b", "10.77.31.50"), "b reaches a");
    let mac_a = c.info("a").unwrap().spec.unwrap().nics[0].mac.unwrap();
    let mac_b = c.info("b").unwrap().spec.unwrap().nics[0].mac.unwrap();

    // b takes another MAC: cut off.
    h.type_line(
        "b",
        "ip link set eth0 down; ip link set eth0 address 52:54:00:de:ad:01; ip link set eth0 up; ip addr add 10.77.31.51/24 dev eth0 2>/dev/null; true",
    )
    .unwrap();
    assert!(
        !reaches(&h, "b", "10.77.31.1"),
        "a changed MAC reaches the gateway"
    );
    assert!(!reaches(&h, "b", "10.77.31.50"), "a changed MAC reaches a");
    h.type_line(
        "b",
        &format!("ip link set eth0 down; ip link set eth0 address {mac_b}; ip link set eth0 up; ip addr add 10.77.31.51/24 dev eth0 2>/dev/null; true"),
    )
    .unwrap();
    assert!(reaches(&h, "b", "10.77.31.1"), "b's own MAC works again");

    // b claims a's reserved address: cut off, and the gateway still knows a's MAC for it.
    h.type_line(
        "b",
        "ip addr flush dev eth0; ip addr add 10.77.31.50/24 dev eth0",
    )
    .unwrap();
    assert!(
        !reaches(&h, "b", "10.77.31.1"),
        "a claimed address reaches the gateway"
    );
    let neigh = ns
        .run(&["ip", "neigh", "show", "10.77.31.50", "dev", "hvbr-g"])
        .unwrap();
    assert!(
        !neigh.contains(&mac_b.to_string()),
        "b poisoned the gateway's ARP entry for a: {neigh}"
    );
    assert!(reaches(&h, "a", "10.77.31.1"), "a is unharmed");

    // c, with no reservation of its own, cannot take a's either.
    assert!(reaches(&h, "c", "10.77.31.1"), "c reaches the gateway");
    h.type_line(
        "c",
        "ip addr flush dev eth0; ip addr add 10.77.31.50/24 dev eth0",
    )
    .unwrap();
    assert!(
        !reaches(&h, "c", "10.77.31.1"),
        "an unreserved guest on a reserved address reaches the gateway"
    );

    // A reservation made while the guests run applies to their guards at once, also to
    // guests an earlier hvd started.
    h.restart().unwrap();
    h.type_line(
        "c",
        "ip addr flush dev eth0; ip addr add 10.77.31.70/24 dev eth0",
    )
    .unwrap();
    assert!(reaches(&h, "c", "10.77.31.1"), "10.77.31.70 is free for c");
    c.net_reservation_add(
        "g",
        &api::AddReservationRequest {
            mac: Some("52:54:00:00:77:70".into()),
            vm: None,
            ip: "10.77.31.70".parse().unwrap(),
            hostname: None,
        },
    )
    .unwrap();
    assert!(
        !reaches(&h, "c", "10.77.31.1"),
        "an address reserved while c runs still works for c"
    );
    let _ = mac_a;

    // One guard per tap, and they go with the taps.
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert_eq!(tables.matches("hv-guard-").count(), 3, "{tables}");
    for vm in ["a", "b", "c"] {
        c.destroy(vm).unwrap();
    }
    c.net_stop("g").unwrap();
    assert_no_hv_links(&ns);
    let tables = ns.run(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("hv-"), "{tables}");
}

/// Removes a test's own directory when dropped.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
