//! Issue 12: live migration between two hvds, each in its own network namespace and state dir,
//! joined by a veth, talking over TLS with tokens. Every test boots real guests under TCG.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use model::VmState;
use testkit::pair::{HostPair, PairOpts};
use testkit::VmOpts;

const HVD: &str = env!("CARGO_BIN_EXE_hvd");

/// The harness itself: two hvds that reach each other over TLS with the admin token, a shared
/// pool on both, and a counter guest.
#[test]
fn pair_harness_reaches_the_target_and_counts() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    // The test runs in the host's namespace, which has no route to the veth: reach the
    // target's TLS listener from the source's namespace.
    let out = p
        .source_ns
        .run(&[
            "curl",
            "-sk",
            "-H",
            &format!("Authorization: Bearer {}", p.peer.token),
            &format!("{}/v1/vms", p.peer.url),
        ])
        .expect("curl in the source namespace");
    assert!(out.contains("\"vms\""), "{out}");
    assert!(p.shared_dir.as_ref().expect("shared").is_dir());
    let spec = p.source.tiny_spec("count", VmOpts::default()).unwrap();
    p.source.client().create(spec, true).unwrap();
    p.source.wait_ready("count").unwrap();
    HostPair::start_counter(&p.source, "count").unwrap();
    let ticks = testkit::pair::ticks(&p.source.console_text("count"));
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert_eq!(
        p.source.client().info("count").unwrap().state,
        VmState::Running
    );
}

fn migrate_req(p: &HostPair) -> api::MigrateRequest {
    api::MigrateRequest {
        to: p.peer.clone(),
        copy_storage: false,
        offline: false,
        downtime_ms: None,
        bandwidth: None,
        postcopy: false,
        keep_source: false,
    }
}

/// A VM with a 32 MiB qcow2 disk on the shared pool, booted on the source, counter running and
/// a marker written to its disk.
fn boot_shared(p: &HostPair, name: &str) {
    let c = p.source.client();
    c.vol_create(
        testkit::pair::SHARED_POOL,
        &api::CreateVolRequest {
            name: format!("{name}.qcow2").parse().unwrap(),
            size: Some(model::Size(32 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = p.source.tiny_spec(name, VmOpts::default()).unwrap();
    spec.disks.push(
        format!("vol={}/{name}.qcow2", testkit::pair::SHARED_POOL)
            .parse()
            .unwrap(),
    );
    c.create(spec, true).unwrap();
    p.source.wait_ready(name).unwrap();
    p.source
        .run_in_guest(
            name,
            "echo migrated-data-42 | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; echo WROTE",
            "WROTE\\r?\\n",
        )
        .unwrap();
    HostPair::start_counter(&p.source, name).unwrap();
}

/// No QEMU, no definition, no files of `vm` on `h`.
fn nothing_left(h: &testkit::TestHvd, vm: &str) {
    assert!(
        h.client().info(vm).is_err(),
        "{vm} is still defined: {:?}",
        h.client().info(vm)
    );
    assert!(h.qemu_pids().is_empty(), "QEMU left: {:?}", h.qemu_pids());
    assert!(
        !h.state_dir.join("vms").join(vm).exists(),
        "files of {vm} left"
    );
}

#[test]
fn shared_storage_live_migration_keeps_the_guest_counting() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    boot_shared(&p, "mover");
    let stop = Arc::new(AtomicBool::new(false));
    let src_ticks = testkit::pair::follow_ticks(&p.source, "mover", stop.clone());
    let dst_ticks = testkit::pair::follow_ticks(&p.target, "mover", stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let done = p
        .source
        .client()
        .migrate("mover", &migrate_req(&p))
        .expect("migrate");
    assert_eq!(done.phase, api::MigrationPhase::Done);
    let downtime = done.downtime_ms.expect("downtime");
    assert!(done.total_ms.is_some());
    // The target runs it; the source has nothing left.
    let info = p.target.client().info("mover").unwrap();
    assert_eq!(info.state, VmState::Running);
    nothing_left(&p.source, "mover");
    // The counter continues on the target.
    p.target
        .wait_console("mover", r"tick \d+", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let before = src_ticks.join().unwrap();
    let after = dst_ticks.join().unwrap();
    let (t_last, n_last) = *before.last().expect("ticks on the source");
    let &(t_first, n_first) = after
        .iter()
        .find(|(_, n)| *n > n_last)
        .expect("ticks on the target after the source's last");
    assert_eq!(n_first, n_last + 1, "a tick went missing across the switch");
    let gap = t_first.duration_since(t_last).as_millis() as u64;
    // One tick interval, plus console delivery on two hosts under TCG.
    assert!(
        gap <= downtime + 200,
        "gap of {gap} ms across the switch, measured downtime {downtime} ms"
    );
    // The disk's data is intact on the target.
    p.target
        .run_in_guest(
            "mover",
            "dd if=/dev/vda bs=17 count=1 2>/dev/null; echo",
            "migrated-data-42",
        )
        .unwrap();
    p.target.check_qemus_confined().unwrap();
    eprintln!(
        "migrated: gap {gap} ms, downtime {downtime} ms, total {:?} ms",
        done.total_ms
    );
}
