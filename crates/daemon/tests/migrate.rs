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

/// The running migration operation on the source, once it moves RAM.
fn wait_memory_phase(p: &HostPair) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ops = p.source.client().operations().unwrap();
        if let Some(op) = ops.iter().find(|o| {
            o.kind == "migrate"
                && o.status == api::OperationStatus::Running
                && o.migration.as_ref().is_some_and(|m| {
                    m.phase == api::MigrationPhase::Memory && m.ram_transferred > 0
                })
        }) {
            assert!(op.cancellable);
            return op.id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never reached the memory phase: {ops:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest still counts on the source: a tick newer than any seen so far arrives.
fn still_counting(h: &testkit::TestHvd, vm: &str) {
    let seen = testkit::pair::ticks(&h.console_text(vm));
    let last = seen.last().copied().unwrap_or(0);
    h.wait_console(
        vm,
        &format!(r"tick {}\b", last + 3),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(h.client().info(vm).unwrap().state, VmState::Running);
}

/// A slow migration (1 MiB/s) running in a thread.
fn slow_migration(
    p: &HostPair,
    vm: &str,
) -> std::thread::JoinHandle<client::Result<api::MigrationProgress>> {
    let c = p.source.client().clone();
    let mut req = migrate_req(p);
    req.bandwidth = Some(1 << 20);
    let vm = vm.to_string();
    std::thread::spawn(move || c.migrate(&vm, &req))
}

#[test]
fn killing_the_target_hvd_midway_leaves_the_vm_running_on_the_source() {
    let mut p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    boot_shared(&p, "stay");
    let run = slow_migration(&p, "stay");
    wait_memory_phase(&p);
    p.target.kill9().unwrap();
    let e = run.join().unwrap().expect_err("the migration fails");
    assert!(e.to_string().contains("migration"), "{e}");
    still_counting(&p.source, "stay");
    // The restarted target removes the half-received VM and its QEMU.
    p.target.start_again().unwrap();
    nothing_left(&p.target, "stay");
    assert!(p
        .target
        .hvd_log()
        .contains("incoming migration did not finish"));
    // And the VM can still migrate afterwards.
    let done = p.source.client().migrate("stay", &migrate_req(&p)).unwrap();
    assert_eq!(done.phase, api::MigrationPhase::Done);
    assert_eq!(
        p.target.client().info("stay").unwrap().state,
        VmState::Running
    );
}

#[test]
fn cancel_leaves_the_vm_running_on_the_source_and_nothing_on_the_target() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    boot_shared(&p, "cancelme");
    let run = slow_migration(&p, "cancelme");
    let id = wait_memory_phase(&p);
    p.source.client().operation_cancel(id).unwrap();
    let e = run.join().unwrap().expect_err("cancelled");
    assert_eq!(e.code(), Some(api::ErrorCode::Cancelled), "{e}");
    still_counting(&p.source, "cancelme");
    nothing_left(&p.target, "cancelme");
    let op = p.source.client().operation(id).unwrap();
    assert_eq!(op.status, api::OperationStatus::Cancelled);
}

#[test]
fn refusals_before_anything_moves() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    let c = p.source.client();
    // A network only the source has.
    c.net_create(&model::NetworkSpec::new(
        "onlyhere".parse().unwrap(),
        model::NetMode::Isolated,
    ))
    .unwrap();
    c.net_start("onlyhere").unwrap();
    let mut spec = p.source.tiny_spec("picky", VmOpts::default()).unwrap();
    spec.nics.push(
        serde_json::from_value(serde_json::json!({"type": "network", "source": "onlyhere"}))
            .unwrap(),
    );
    c.create(spec, true).unwrap();
    p.source.wait_ready("picky").unwrap();
    let e = c.migrate("picky", &migrate_req(&p)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("network \"onlyhere\""), "{msg}");
    assert!(msg.contains("hv net create onlyhere"), "{msg}");
    nothing_left(&p.target, "picky");

    // Storage that is not shared (the default pool is per host), without --copy-storage.
    let mut spec = p.source.tiny_spec("local", VmOpts::default()).unwrap();
    c.vol_create(
        "default",
        &api::CreateVolRequest {
            name: "local.qcow2".parse().unwrap(),
            size: Some(model::Size(8 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    spec.disks.push("vol=default/local.qcow2".parse().unwrap());
    c.create(spec, true).unwrap();
    let e = c.migrate("local", &migrate_req(&p)).unwrap_err();
    assert!(e.to_string().contains("--copy-storage"), "{e}");
    nothing_left(&p.target, "local");

    // A name taken on the target: refused, and the target's VM is untouched.
    boot_shared(&p, "taken");
    let other = p.target.tiny_spec("taken", VmOpts::default()).unwrap();
    p.target.client().create(other, false).unwrap();
    let e = c.migrate("taken", &migrate_req(&p)).unwrap_err();
    assert_eq!(e.code(), Some(api::ErrorCode::AlreadyExists), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(
        p.target.client().info("taken").unwrap().state,
        VmState::Shutoff
    );
    p.target.client().undefine("taken", false, false).unwrap();

    // A token without admin on the target.
    let mut req = migrate_req(&p);
    req.to = p.target_peer_with("watcher", "viewer", None).unwrap();
    let e = c.migrate("taken", &req).unwrap_err();
    assert!(e.to_string().contains("the target hvd refused"), "{e}");
    nothing_left(&p.target, "taken");
    // A wrong fingerprint: the source refuses to talk to the target at all.
    let mut req = migrate_req(&p);
    req.to.fingerprint = format!("SHA256:{}", "00".repeat(32));
    let e = c.migrate("taken", &req).unwrap_err();
    assert!(e.to_string().contains("CHANGED"), "{e}");
    // The token appears in no log or operation.
    let ops = serde_json::to_string(&c.operations().unwrap()).unwrap();
    assert!(!ops.contains(&p.peer.token));
    assert!(!p.source.hvd_log().contains(&p.peer.token));
    assert!(!p.target.hvd_log().contains(&p.peer.token));
    // Every VM still runs on the source.
    for vm in ["picky", "local", "taken"] {
        assert_eq!(c.info(vm).unwrap().state, VmState::Running, "{vm}");
    }
}

#[test]
fn keep_source_leaves_a_stopped_definition_without_autostart() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    boot_shared(&p, "kept");
    p.source.client().autostart("kept", true).unwrap();
    let mut req = migrate_req(&p);
    req.keep_source = true;
    p.source.client().migrate("kept", &req).unwrap();
    let here = p.source.client().info("kept").unwrap();
    assert_eq!(here.state, VmState::Shutoff);
    assert!(p.source.qemu_pids().is_empty());
    assert!(!here.autostart, "autostart is off on the kept source");
    // Autostart moved to the target, with the VM.
    let there = p.target.client().info("kept").unwrap();
    assert_eq!(there.state, VmState::Running);
    assert!(there.autostart);
    still_counting(&p.target, "kept");
}

/// DHCP reservations follow the VM to the network of the same name; a paused VM arrives
/// paused; snapshots' metadata moves.
#[test]
fn reservations_snapshots_and_pause_follow_the_vm() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    for h in [&p.source, &p.target] {
        h.client()
            .net_create(&model::NetworkSpec {
                subnet: Some("10.88.1.0/24".into()),
                ..model::NetworkSpec::new("lan".parse().unwrap(), model::NetMode::Isolated)
            })
            .unwrap();
        h.client().net_start("lan").unwrap();
    }
    let c = p.source.client();
    c.vol_create(
        testkit::pair::SHARED_POOL,
        &api::CreateVolRequest {
            name: "res.qcow2".parse().unwrap(),
            size: Some(model::Size(8 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = p.source.tiny_spec("res", VmOpts::default()).unwrap();
    spec.disks.push(
        format!("vol={}/res.qcow2", testkit::pair::SHARED_POOL)
            .parse()
            .unwrap(),
    );
    spec.nics.push(
        serde_json::from_value(serde_json::json!({"type": "network", "source": "lan"})).unwrap(),
    );
    c.create(spec, true).unwrap();
    p.source.wait_ready("res").unwrap();
    c.net_reservation_add(
        "lan",
        &api::AddReservationRequest {
            mac: None,
            vm: Some("res".into()),
            ip: "10.88.1.50".parse().unwrap(),
            hostname: None,
        },
    )
    .unwrap();
    c.snapshot_create(
        "res",
        &api::CreateSnapshotRequest {
            name: "before-move".parse().unwrap(),
            description: None,
            disk_only: false,
        },
    )
    .unwrap();
    c.pause("res").unwrap();
    p.source.client().migrate("res", &migrate_req(&p)).unwrap();
    // Paused before, paused after.
    assert_eq!(
        p.target.client().info("res").unwrap().state,
        VmState::Paused
    );
    let there = p.target.client().net_reservations("lan").unwrap();
    assert!(
        there.iter().any(|r| r.ip.to_string() == "10.88.1.50"),
        "{there:?}"
    );
    assert!(p
        .source
        .client()
        .net_reservations("lan")
        .unwrap()
        .is_empty());
    let snaps = p.target.client().snapshots("res").unwrap();
    assert!(snaps.iter().any(|s| s.name == "before-move"), "{snaps:?}");
    p.target.client().resume("res").unwrap();
    p.target
        .run_in_guest("res", "echo alive-after-move", "alive-after-move\\r?\\n")
        .unwrap();
}

#[test]
fn a_cut_link_leaves_the_vm_running_on_the_source_and_the_target_cleans_itself() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    boot_shared(&p, "cut");
    let run = slow_migration(&p, "cut");
    wait_memory_phase(&p);
    p.set_link(false).unwrap();
    let e = run.join().unwrap().expect_err("the migration fails");
    assert!(e.to_string().contains("migration"), "{e}");
    still_counting(&p.source, "cut");
    // The target noticed the silent link by itself: no VM, no QEMU, no files.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while p.target.client().info("cut").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the target kept the half-received VM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nothing_left(&p.target, "cut");
    assert!(p.target.hvd_log().contains("tunnel broke"));
    p.set_link(true).unwrap();
}
