//! Issue 13: live figures of a real TCG guest. It writes 10 MiB to a data disk and pings its
//! gateway on a NAT network (inside a network namespace the test makes): the disk and NIC
//! counters show at least that, and stay put for a stopped VM (refused, with a hint).

use api::{CreateVolRequest, ErrorCode};
use model::{NetMode, NetworkSpec, Size};
use testkit::{NetNs, TestHvd, VmOpts};

const MIB: u64 = 1 << 20;

#[test]
fn a_guest_writing_10_mib_and_pinging_its_gateway_shows_in_its_counters() {
    let ns = NetNs::new("st").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    c.net_create(&NetworkSpec {
        subnet: Some("10.213.8.0/24".into()),
        ..NetworkSpec::new("stnet".parse().unwrap(), NetMode::Nat)
    })
    .unwrap();
    c.vol_create(
        "default",
        &CreateVolRequest {
            name: "data.qcow2".parse().unwrap(),
            size: Some(Size(64 * MIB)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = h.tiny_spec("st", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/data.qcow2".parse().unwrap());
    spec.nics.push("network=stnet".parse().unwrap());
    c.create(spec.clone(), true).unwrap();
    h.wait_ready("st").unwrap();

    let before = c.stats("st").unwrap();
    assert_eq!(before.vm, "st");
    assert!(before.memory_rss_bytes > 4 * MIB, "{before:?}");
    assert_eq!(before.memory_configured_bytes, spec.memory.0);
    assert!(before.cpu_seconds > 0.0, "booting took CPU: {before:?}");
    let disk = |s: &api::VmStats, d: &str| {
        s.disks
            .iter()
            .find(|x| x.disk == d)
            .unwrap_or_else(|| panic!("no disk {d} in {s:?}"))
            .clone()
    };
    let nic = |s: &api::VmStats| {
        assert_eq!(s.nics.len(), 1, "{s:?}");
        s.nics[0].clone()
    };
    assert_eq!(nic(&before).nic, "nic0");

    h.run_in_guest(
        "st",
        "dd if=/dev/zero of=/dev/vda bs=1M count=10 2>/dev/null && sync && echo DD-$((5+5))",
        "DD-10",
    )
    .unwrap();
    h.run_in_guest(
        "st",
        "ip link set eth0 up; ip addr add 10.213.8.50/24 dev eth0; ping -c 5 -s 1000 -W 5 10.213.8.1 >/dev/null && echo PING-$((40+2))",
        "PING-42",
    )
    .unwrap();

    let after = c.stats("st").unwrap();
    let (d0, d1) = (disk(&before, "vda"), disk(&after, "vda"));
    assert!(
        d1.wr_bytes >= d0.wr_bytes + 10 * MIB,
        "10 MiB written: {d0:?} -> {d1:?}"
    );
    assert!(d1.wr_ops > d0.wr_ops, "{d0:?} -> {d1:?}");
    let (n0, n1) = (nic(&before), nic(&after));
    assert!(n1.tx_packets >= n0.tx_packets + 5, "{n0:?} -> {n1:?}");
    assert!(
        n1.rx_packets >= n0.rx_packets + 5,
        "replies: {n0:?} -> {n1:?}"
    );
    assert!(n1.tx_bytes >= n0.tx_bytes + 5 * 1000, "{n0:?} -> {n1:?}");
    assert!(n1.rx_bytes >= n0.rx_bytes + 5 * 1000, "{n0:?} -> {n1:?}");
    assert!(after.cpu_percent >= 0.0 && after.cpu_seconds >= before.cpu_seconds);
    // The list of every running VM has it too.
    let all = c.stats_all().unwrap();
    assert_eq!(
        all.iter().map(|s| s.vm.as_str()).collect::<Vec<_>>(),
        ["st"]
    );

    c.destroy("st").unwrap();
    let e = c.stats("st").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    assert!(e.to_string().contains("hv start st"), "{e}");
    assert!(c.stats_all().unwrap().is_empty());
}
