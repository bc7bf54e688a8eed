//! host-net against the real kernel, nft and dnsmasq, each test inside network namespaces it
//! creates (see `fixture.rs`): nothing here touches the host's own interfaces or rules.

mod fixture;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use fixture::{in_netns, run, sh, sys, Ns};
use host_net::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nat(subnet: &str) -> NetworkConfig {
    NetworkConfig::managed("default", Mode::Nat, subnet.parse().unwrap()).unwrap()
}

/// Nothing of `cfg` is left: bridge, table, dnsmasq, generated files.
async fn assert_gone(cfg: &NetworkConfig, dir: &Path) {
    let st = network_status(cfg, dir).await.unwrap();
    assert!(st.is_gone(), "left behind: {st:?}");
    let hv_links: Vec<String> = list_links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("hvbr-") || n.starts_with("hvt"))
        .collect();
    assert!(hv_links.is_empty(), "links left: {hv_links:?}");
    for f in [CONF_FILE, PID_FILE, RULESET_FILE] {
        assert!(!dir.join(f).exists(), "{f} left in {}", dir.display());
    }
}

#[test]
fn bridge_and_tap_are_made_as_specified() {
    in_netns("bridge_and_tap_are_made_as_specified", |_| {
        let br = "hvbr-t";
        let subnet: Ipv4Cidr = "10.128.0.0/24".parse().unwrap();
        create_bridge(br).unwrap();
        add_address(br, ip("10.128.0.1"), subnet).unwrap();
        assert_eq!(sys(br, "bridge/stp_state"), "0");
        assert_eq!(sys(br, "bridge/forward_delay"), "0");
        let b = link_info(br).unwrap().unwrap();
        assert!(b.up && b.kind.as_deref() == Some("bridge"), "{b:?}");
        assert_eq!(
            b.bridge.map(|i| (i.stp_enabled, i.forward_delay_cs)),
            Some((false, 0))
        );
        assert!(matches!(create_bridge(br), Err(NetError::Exists { .. })));

        let tap = tap_name(1, 0);
        create_tap(&tap, Some(br), None).unwrap();
        assert_eq!(
            sys(&tap, "tun_flags"),
            "0x1802",
            "IFF_TAP | IFF_NO_PI | IFF_PERSIST"
        );
        let t = link_info(&tap).unwrap().unwrap();
        assert!(t.up && t.master == Some(b.index), "{t:?}");
        assert_eq!(
            link_info(br).unwrap().unwrap().mac,
            Some(bridge_mac(br)),
            "a joining port must not change the bridge's MAC"
        );
        assert!(matches!(
            create_tap(&tap, Some(br), None),
            Err(NetError::Exists { .. })
        ));
        qemu_opens_tap(&tap);
        assert_eq!(
            (sys(&tap, "owner"), sys(&tap, "group")),
            ("-1".into(), "-1".into())
        );
        let owned = tap_name(1, 2);
        let owner = TapOwner {
            uid: 4_242_101,
            gid: 4_242_102,
        };
        create_tap(&owned, Some(br), Some(owner)).unwrap();
        assert_eq!(
            (sys(&owned, "owner"), sys(&owned, "group")),
            ("4242101".into(), "4242102".into()),
            "an owned tap is attachable by its VM's uid and gid only"
        );
        delete_link(&owned).unwrap();
        let e = create_tap("hvtap-1-1", Some("nosuch"), None).unwrap_err();
        assert!(matches!(e, NetError::NoLink { .. }), "{e}");
        assert!(
            link_info("hvtap-1-1").unwrap().is_none(),
            "a failed tap is left"
        );

        let used = host_ranges().unwrap();
        assert!(find_clash(&subnet, &used, None).is_some(), "{used:?}");
        assert!(check_host_clash(&subnet, &used, Some(br)).is_ok());
        let e = check_host_clash(&"10.128.0.128/25".parse().unwrap(), &used, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("clashes with the host's route 10.128.0.0/24 on hvbr-t"),
            "{e}"
        );
        let taken: Vec<Ipv4Cidr> = used.iter().map(|u| u.cidr).collect();
        assert_eq!(
            pick_free_subnet(&taken),
            Some("10.128.1.0/24".parse().unwrap())
        );

        assert!(delete_link(&tap).unwrap());
        assert!(!delete_link(&tap).unwrap());
        assert!(delete_link(br).unwrap());
        assert!(list_links()
            .unwrap()
            .iter()
            .all(|l| !l.name.starts_with("hv")));
    });
}

/// QEMU attaches to hv's persistent tap by name, as the engine will start it.
fn qemu_opens_tap(tap: &str) {
    use std::io::Write;
    let netdev =
        format!(r#"{{"type":"tap","id":"n0","ifname":"{tap}","script":"no","downscript":"no"}}"#);
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults"])
        .args([
            "-display", "none", "-S", "-qmp", "stdio", "-netdev", &netdev,
        ])
        .args(["-device", r#"{"driver":"virtio-net-pci","netdev":"n0"}"#])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = qemu.stdin.take().unwrap();
    stdin
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
        .unwrap();
    drop(stdin);
    let out = qemu.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches(r#""return": {}"#).count() == 2,
        "QEMU could not use tap {tap}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ip_forward_is_set_and_restored() {
    in_netns("ip_forward_is_set_and_restored", |_| {
        let before = ip_forward().unwrap();
        set_ip_forward(!before).unwrap();
        assert_eq!(ip_forward().unwrap(), !before);
        set_ip_forward(before).unwrap();
        assert_eq!(ip_forward().unwrap(), before);
    });
}

#[test]
fn nat_network_leases_masquerades_and_forwards_ports() {
    in_netns("nat_network_leases_masquerades_and_forwards_ports", |ns| {
        rt().block_on(nat_body(ns))
    });
}

async fn nat_body(ns: &Ns) {
    let dir = ns.path("net");
    // The outside world: reachable from the host, with no route back to the NAT subnet.
    let outside = ns.peer("out", "52:54:00:ee:00:01");
    sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", &outside.host_if]);
    outside.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    let forward_before = ip_forward().unwrap();
    set_ip_forward(true).unwrap();

    let mut cfg = nat("10.128.0.0/24");
    let guest_mac = "52:54:00:aa:00:01";
    cfg.ipv4.as_mut().unwrap().reservations = vec![Reservation {
        mac: guest_mac.parse().unwrap(),
        ip: ip("10.128.0.10"),
        hostname: Some("guest".into()),
    }];
    let mut dnsmasq = start_network(&cfg, &dir).await.unwrap().dnsmasq;
    assert!(inet_tables().await.unwrap().contains(&cfg.table()));
    let st = network_status(&cfg, &dir).await.unwrap();
    assert!(st.is_complete(&cfg), "{st:?}");
    assert_eq!(st.dnsmasq_pid, dnsmasq.as_ref().map(|d| d.pid()));

    let mut guest = ns.peer("g", guest_mac);
    attach_to_bridge(&guest.host_if, &cfg.bridge).unwrap();
    let t = Instant::now();
    assert_eq!(guest.dhcp(&ns.dir), "10.128.0.10", "the reservation");
    println!("guest lease after {:?}", t.elapsed());
    let leases = read_leases(&dir).unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].mac.to_string(), guest_mac);
    assert_eq!(leases[0].ip, ip("10.128.0.10"));

    // Masquerade: the outside host answers although it has no route to 10.128.0.0/24.
    guest.exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.128.0.1"]);
    guest.exec(&["busybox", "ping", "-c", "1", "-W", "2", "192.0.2.2"]);

    // Another firewall's forward policy drop (Docker's, say) wins over hv's accept; host check
    // finds it, and the advised rules let the traffic through again.
    assert!(forward_blockers().await.unwrap().is_empty());
    sh(&["nft", "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }"]);
    let blockers = forward_blockers().await.unwrap();
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    let out = guest.try_exec(&["busybox", "ping", "-c", "1", "-W", "1", "192.0.2.2"]);
    assert!(!out.status.success(), "the drop policy did not apply");
    for dir in ["iifname", "oifname"] {
        sh(&[
            "nft",
            "insert",
            "rule",
            "ip",
            "filter",
            "FORWARD",
            dir,
            &cfg.bridge,
            "accept",
        ]);
    }
    guest.exec(&["busybox", "ping", "-c", "1", "-W", "2", "192.0.2.2"]);
    sh(&["nft", "delete", "table", "ip", "filter"]);

    // A port forward added while the network runs.
    let www = ns.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from the guest\n").unwrap();
    guest.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        www.to_str().unwrap(),
    ]);
    cfg.forwards = vec![PortForward {
        proto: Proto::Tcp,
        host_addr: None,
        host_port: 8080,
        vm_ip: ip("10.128.0.10"),
        vm_port: 80,
    }];
    let pid = dnsmasq.as_ref().map(|d| d.pid());
    update_network(&cfg, &dir, &mut dnsmasq).await.unwrap();
    assert_eq!(
        dnsmasq.as_ref().map(|d| d.pid()),
        pid,
        "same dnsmasq config: no restart"
    );
    assert!(route_localnet(&cfg.bridge).unwrap());
    // busybox 1.35's `wget -T` crashes: bound the time with timeout(1) instead.
    fn get(url: &str) -> [&str; 8] {
        ["timeout", "5", "busybox", "wget", "-q", "-O", "-", url]
    }
    for url in [
        "http://192.0.2.1:8080/",
        "http://127.0.0.1:8080/",
        "http://10.128.0.1:8080/",
    ] {
        let body = wait_ok(url, || fixture::run(&get(url)));
        assert_eq!(body, "hello from the guest\n", "from the host via {url}");
    }
    let body = wait_ok("outside", || {
        outside.try_exec(&get("http://192.0.2.1:8080/"))
    });
    assert_eq!(body, "hello from the guest\n", "from outside");
    // Hairpin: another guest on the bridge uses the forwarded port of the gateway. (A guest
    // using its own forwarded port is dropped by the kernel's routing after DNAT.)
    let other = ns.peer("g2", "52:54:00:aa:00:02");
    attach_to_bridge(&other.host_if, &cfg.bridge).unwrap();
    assert!(other.dhcp(&ns.dir).starts_with("10.128.0."));
    let body = wait_ok("hairpin", || {
        other.try_exec(&get("http://10.128.0.1:8080/"))
    });
    assert_eq!(body, "hello from the guest\n", "hairpin from another guest");
    drop(other);

    // A new reservation restarts dnsmasq; the guest's lease is kept.
    cfg.ipv4.as_mut().unwrap().reservations.push(Reservation {
        mac: "52:54:00:aa:00:09".parse().unwrap(),
        ip: ip("10.128.0.20"),
        hostname: None,
    });
    update_network(&cfg, &dir, &mut dnsmasq).await.unwrap();
    assert_ne!(dnsmasq.as_ref().map(|d| d.pid()), pid);
    assert!(std::fs::read_to_string(dir.join(CONF_FILE))
        .unwrap()
        .contains("10.128.0.20"));
    assert_eq!(read_leases(&dir).unwrap().len(), 2);

    drop(guest);
    stop_network(&cfg, &dir, dnsmasq).await.unwrap();
    assert_gone(&cfg, &dir).await;
    assert!(
        dir.join(LEASES_FILE).exists(),
        "leases are kept until the network is deleted"
    );
    remove_network_files(&dir).unwrap();
    assert!(!dir.exists());
    set_ip_forward(forward_before).unwrap();
}

/// The output of the first successful run within a few seconds (a server just spawned may
/// not listen yet).
fn wait_ok(what: &str, mut f: impl FnMut() -> std::process::Output) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = f();
        if out.status.success() || Instant::now() > deadline {
            assert!(
                out.status.success(),
                "{what}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn isolated_network_reaches_only_the_gateway() {
    in_netns("isolated_network_reaches_only_the_gateway", |ns| {
        rt().block_on(async {
            let dir = ns.path("net");
            let outside = ns.peer("out", "52:54:00:ee:00:02");
            sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", &outside.host_if]);
            outside.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
            outside.exec(&["ip", "route", "add", "default", "via", "192.0.2.1"]);
            set_ip_forward(true).unwrap();
            let cfg =
                NetworkConfig::managed("lab", Mode::Isolated, "10.128.9.0/24".parse().unwrap())
                    .unwrap();
            let run = start_network(&cfg, &dir).await.unwrap();
            let guest = ns.peer("g", "52:54:00:aa:00:02");
            attach_to_bridge(&guest.host_if, &cfg.bridge).unwrap();
            let addr = guest.dhcp(&ns.dir);
            assert!(addr.starts_with("10.128.9."), "{addr}");
            let routes = guest.exec(&["ip", "route"]);
            assert!(
                !routes.contains("default"),
                "isolated leases carry no router: {routes}"
            );
            guest.exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.128.9.1"]);
            // Even with a route, nothing is forwarded.
            guest.exec(&["ip", "route", "add", "default", "via", "10.128.9.1"]);
            let out = guest.try_exec(&["busybox", "ping", "-c", "1", "-W", "1", "192.0.2.2"]);
            assert!(
                !out.status.success(),
                "an isolated guest reached the outside"
            );
            drop(guest);
            stop_network(&cfg, &dir, run.dnsmasq).await.unwrap();
            assert_gone(&cfg, &dir).await;
        })
    });
}

#[test]
fn bridge_mode_uses_the_existing_bridge_only() {
    in_netns("bridge_mode_uses_the_existing_bridge_only", |ns| {
        rt().block_on(async {
            let dir = ns.path("net");
            let cfg = NetworkConfig::bridged("lan", "br-lan").unwrap();
            let e = start_network(&cfg, &dir).await.unwrap_err();
            assert!(matches!(e, NetError::NoLink { .. }), "{e}");
            sh(&[
                "ip", "link", "add", "br-lan", "type", "veth", "peer", "name", "br-lan-p",
            ]);
            let e = start_network(&cfg, &dir).await.unwrap_err();
            assert!(matches!(e, NetError::NotABridge { .. }), "{e}");
            sh(&["ip", "link", "del", "br-lan"]);
            sh(&["ip", "link", "add", "br-lan", "type", "bridge"]);
            let run = start_network(&cfg, &dir).await.unwrap();
            assert!(run.dnsmasq.is_none());
            create_tap("hvtap-5-0", Some("br-lan"), None).unwrap();
            let br = link_info("br-lan").unwrap().unwrap();
            assert_eq!(
                link_info("hvtap-5-0").unwrap().unwrap().master,
                Some(br.index)
            );
            stop_network(&cfg, &dir, None).await.unwrap();
            assert!(
                link_info("br-lan").unwrap().is_some(),
                "hv must not remove a host bridge"
            );
            assert!(inet_tables().await.unwrap().is_empty());
            delete_link("hvtap-5-0").unwrap();
            assert!(!dir.exists(), "bridge mode writes no runtime files");
        })
    });
}

#[test]
fn failed_start_leaves_nothing() {
    in_netns("failed_start_leaves_nothing", |ns| {
        rt().block_on(async {
            let dir = ns.path("net");
            let cfg = nat("10.128.3.0/24");
            // Something else already serves DNS on the gateway address: dnsmasq cannot bind.
            sh(&["ip", "addr", "add", "10.128.3.1/32", "dev", "lo"]);
            let squatter = std::net::UdpSocket::bind("10.128.3.1:53").unwrap();
            let e = start_network(&cfg, &dir).await.unwrap_err();
            assert!(e.to_string().contains("dnsmasq"), "{e}");
            assert_gone(&cfg, &dir).await;
            drop(squatter);

            // A dropped guard takes back what it recorded, without being awaited.
            create_bridge("hvbr-undo").unwrap();
            let mut undo = Undo::new();
            undo.push(UndoStep::DeleteLink("hvbr-undo".into()));
            drop(undo);
            assert!(link_info("hvbr-undo").unwrap().is_none());
            // A committed one keeps everything.
            create_bridge("hvbr-keep").unwrap();
            let mut undo = Undo::new();
            undo.push(UndoStep::DeleteLink("hvbr-keep".into()));
            assert_eq!(undo.commit().len(), 1);
            assert!(delete_link("hvbr-keep").unwrap());
        })
    });
}

#[test]
fn start_stop_cycles_leave_nothing() {
    in_netns("start_stop_cycles_leave_nothing", |ns| {
        rt().block_on(async {
            let dir = ns.path("net");
            let mut cfg = nat("10.128.4.0/24");
            cfg.forwards = vec![PortForward {
                proto: Proto::Tcp,
                host_addr: None,
                host_port: 2222,
                vm_ip: ip("10.128.4.10"),
                vm_port: 22,
            }];
            let (mut starts, mut stops) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let t = Instant::now();
                let run = start_network(&cfg, &dir).await.unwrap();
                starts.push(t.elapsed());
                let t = Instant::now();
                stop_network(&cfg, &dir, run.dnsmasq).await.unwrap();
                stops.push(t.elapsed());
                assert_gone(&cfg, &dir).await;
            }
            remove_network_files(&dir).unwrap();
            starts.sort();
            stops.sort();
            println!(
                "net start: min {:?} median {:?} max {:?}; net stop: min {:?} median {:?} max {:?}",
                starts[0], starts[10], starts[19], stops[0], stops[10], stops[19]
            );
        })
    });
}

/// IPv4 addresses and routes (all tables but `local`), sorted, for before/after comparisons.
fn l3_state() -> Vec<String> {
    let mut v: Vec<String> = sh(&["ip", "-o", "-4", "addr"])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .chain(
            sh(&["ip", "-4", "route", "show", "table", "main"])
                .lines()
                .map(str::to_string),
        )
        .collect();
    v.sort();
    v
}

#[test]
fn an_interface_becomes_a_bridge_port_and_back_with_rollback_at_every_step() {
    in_netns(
        "an_interface_becomes_a_bridge_port_and_back_with_rollback_at_every_step",
        |ns| {
            let lan = ns.peer("lan", "52:54:00:ee:00:09");
            let eth = lan.host_if.clone();
            lan.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"]);
            lan.exec(&["ip", "addr", "add", "203.0.113.1/28", "dev", "lo"]);
            sh(&["ip", "addr", "add", "192.0.2.10/24", "dev", &eth]);
            sh(&["ip", "route", "add", "default", "via", "192.0.2.1"]);
            sh(&[
                "ip",
                "route",
                "add",
                "203.0.113.0/28",
                "via",
                "192.0.2.1",
                "metric",
                "50",
            ]);
            let reach = || {
                run(&["busybox", "ping", "-c", "1", "-W", "3", "203.0.113.1"])
                    .status
                    .success()
            };
            assert!(reach());
            let before = l3_state();
            let mac = link_info(&eth).unwrap().unwrap().mac;
            let steps = plan_bridge(&HostSnapshot::read().unwrap(), &eth, "br0")
                .unwrap()
                .len();
            assert_eq!(steps, 8);
            // A failure at any step leaves the host exactly as it was.
            for k in 0..steps {
                let e = bridge_interface_failing_after(&eth, "br0", Some(k)).unwrap_err();
                assert!(e.to_string().contains("rolled back"), "{e}");
                assert_eq!(l3_state(), before, "after a failure at step {k}");
                assert!(link_info("br0").unwrap().is_none(), "step {k}");
                assert_eq!(link_info(&eth).unwrap().unwrap().master, None);
                assert!(reach(), "reachable after a failure at step {k}");
            }
            // The real thing: eth joins br0, which holds its address and routes and its MAC.
            let change = bridge_interface(&eth, "br0").unwrap();
            assert_eq!(change.ops.len(), steps);
            let br = link_info("br0").unwrap().unwrap();
            assert_eq!(link_info(&eth).unwrap().unwrap().master, Some(br.index));
            assert_eq!(br.mac, mac);
            assert_eq!(
                br.bridge.map(|b| (b.stp_enabled, b.forward_delay_cs)),
                Some((false, 0))
            );
            let now = l3_state().join("\n");
            assert!(now.contains("br0 inet 192.0.2.10/24"), "{now}");
            assert!(now.contains("default via 192.0.2.1 dev br0"), "{now}");
            assert!(
                now.contains("203.0.113.0/28 via 192.0.2.1 dev br0"),
                "{now}"
            );
            assert!(!now.contains(&format!("dev {eth}")), "{now}");
            assert!(reach(), "reachable through the bridge");
            // Refusals: the interface is now a port, the name is taken.
            assert!(bridge_interface(&eth, "br1")
                .unwrap_err()
                .to_string()
                .contains("already a port of br0"));
            // And back.
            unbridge_interface("br0").unwrap();
            assert!(link_info("br0").unwrap().is_none());
            assert_eq!(l3_state(), before);
            assert!(reach());
        },
    );
}
