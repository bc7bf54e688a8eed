//! Snapshots with real guests: disk and RAM come back on revert, the tree, safe delete, and
//! the refusals.

use api::{CreateSnapshotRequest, CreateVolRequest, ErrorCode};
use model::{Size, VmState};
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn snap(name: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.parse().unwrap(),
        description: Some(format!("test {name}")),
        disk_only: false,
    }
}

/// A VM with one qcow2 volume as its disk.
fn vm_with_qcow2(h: &TestHvd, name: &str) {
    let vol = format!("{name}.qcow2");
    h.client()
        .vol_create(
            "default",
            &CreateVolRequest {
                name: vol.parse().unwrap(),
                size: Some(Size(16 << 20)),
                format: None,
                backing: None,
            },
        )
        .unwrap();
    let mut spec = h.tiny_spec(name, VmOpts::default()).unwrap();
    spec.disks
        .push(format!("vol=default/{vol}").parse().unwrap());
    h.client().create(spec, false).unwrap();
}

/// Runs a guest command and waits for its end marker.
fn sh(h: &TestHvd, vm: &str, cmd: &str, step: &str) -> String {
    h.run_in_guest(
        vm,
        &format!("{cmd}; echo {step}-$((0+1))"),
        &format!("{step}-1"),
    )
    .unwrap()
}

fn write_disk(h: &TestHvd, vm: &str, text: &str, step: &str) {
    sh(
        h,
        vm,
        &format!("echo {text} | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null"),
        step,
    );
}

/// What the disk's first 6 bytes and the tmpfs value are, read past the page cache.
fn read_back(h: &TestHvd, vm: &str, step: &str) -> String {
    let cmd = format!("sync; echo 3 > /proc/sys/vm/drop_caches; echo got-$(head -c 6 /dev/vda)-$(cat /tmp/v 2>/dev/null)-{step}-end");
    // One letter of disk content, maybe a RAM value: a shape that cannot span two outputs.
    h.run_in_guest(vm, &cmd, &format!("got-disk-[A-Z]-(ram-[A-Z])?-{step}-end"))
        .unwrap()
}

#[test]
fn live_internal_snapshot_restores_disk_and_ram_in_place() {
    let h = hvd();
    let c = h.client();
    vm_with_qcow2(&h, "live");
    c.start("live", false).unwrap();
    h.wait_ready("live").unwrap();
    write_disk(&h, "live", "disk-A", "w1");
    sh(&h, "live", "echo ram-A > /tmp/v", "r1");
    let s1 = c.snapshot_create("live", &snap("s1")).unwrap();
    assert!(s1.memory && s1.current && s1.kind == "internal");
    assert_eq!(s1.vm_state, VmState::Running);
    assert_eq!(c.info("live").unwrap().state, VmState::Running);
    write_disk(&h, "live", "disk-B", "w2");
    sh(&h, "live", "echo ram-B > /tmp/v", "r2");
    assert_eq!(read_back(&h, "live", "b"), "got-disk-B-ram-B-b-end");
    let pid = c.info("live").unwrap().pid;
    c.snapshot_revert("live", "s1").unwrap();
    let info = c.info("live").unwrap();
    assert_eq!(
        (info.state, info.pid),
        (VmState::Running, pid),
        "revert happens in place, QEMU keeps running"
    );
    // All of it as QEMU's unprivileged uid (issue 9).
    h.check_qemus_confined().unwrap();
    assert_eq!(read_back(&h, "live", "a"), "got-disk-A-ram-A-a-end");
    assert_eq!(
        c.snapshot_create("live", &snap("s1")).unwrap_err().code(),
        Some(ErrorCode::AlreadyExists)
    );
    // A snapshot of a stopped VM has no RAM; reverting to it needs the VM off.
    c.shutdown("live", 30, false).unwrap();
    c.snapshot_create("live", &snap("off")).unwrap();
    c.start("live", false).unwrap();
    let e = c.snapshot_revert("live", "off").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    // Reverting a stopped VM to a RAM snapshot resumes it where it was.
    c.destroy("live").unwrap();
    c.snapshot_revert("live", "s1").unwrap();
    assert_eq!(c.info("live").unwrap().state, VmState::Running);
    assert_eq!(read_back(&h, "live", "c"), "got-disk-A-ram-A-c-end");
    h.check_qemus_confined().unwrap();
}

#[test]
fn offline_snapshots_tree_spec_restore_and_safe_delete() {
    let h = hvd();
    let c = h.client();
    vm_with_qcow2(&h, "off");
    c.start("off", false).unwrap();
    h.wait_ready("off").unwrap();
    write_disk(&h, "off", "disk-Z", "w1");
    c.shutdown("off", 30, false).unwrap();
    let s0 = c.snapshot_create("off", &snap("s0")).unwrap();
    assert!(!s0.memory && s0.parent.is_none());
    // Change the disk and the spec.
    let mut spec = c.info("off").unwrap().spec.unwrap();
    spec.memory = Size(192 << 20);
    c.update("off", &spec).unwrap();
    c.start("off", false).unwrap();
    h.wait_ready("off").unwrap();
    write_disk(&h, "off", "disk-Y", "w2");
    c.shutdown("off", 30, false).unwrap();
    let s1 = c.snapshot_create("off", &snap("s1")).unwrap();
    assert_eq!(s1.parent.as_deref(), Some("s0"));
    // Back to s0: disk and spec.
    c.snapshot_revert("off", "s0").unwrap();
    assert_eq!(
        c.info("off").unwrap().memory_mib,
        128,
        "revert restores the spec"
    );
    c.start("off", false).unwrap();
    h.wait_ready("off").unwrap();
    assert!(read_back(&h, "off", "a").starts_with("got-disk-Z-"));
    c.shutdown("off", 30, false).unwrap();
    // A branch: s2 hangs off s0, next to s1.
    c.snapshot_create("off", &snap("s2")).unwrap();
    let list = c.snapshots("off").unwrap();
    let s0 = list.iter().find(|s| s.name == "s0").unwrap();
    assert_eq!(s0.children, ["s1", "s2"]);
    assert_eq!(c.snapshot_current("off").unwrap().unwrap().name, "s2");
    // Deleting the root keeps its children's data.
    c.snapshot_delete("off", "s0").unwrap();
    let list = c.snapshots("off").unwrap();
    assert!(list.iter().all(|s| s.parent.is_none()), "{list:?}");
    c.snapshot_revert("off", "s1").unwrap();
    assert_eq!(c.info("off").unwrap().memory_mib, 192);
    c.start("off", false).unwrap();
    h.wait_ready("off").unwrap();
    assert!(read_back(&h, "off", "b").starts_with("got-disk-Y-"));
    assert_eq!(
        c.snapshot_revert("off", "s0").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn snapshots_are_refused_where_they_would_lose_data() {
    let h = hvd();
    let c = h.client();
    let raw = h.dir.join("raw.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let mut spec = h.tiny_spec("rawvm", VmOpts::default()).unwrap();
    spec.disks.push(
        format!("path={},format=raw", raw.display())
            .parse()
            .unwrap(),
    );
    c.create(spec, false).unwrap();
    let e = c.snapshot_create("rawvm", &snap("s")).unwrap_err();
    assert!(
        e.to_string().contains("raw images cannot hold snapshots"),
        "{e}"
    );
    vm_with_qcow2(&h, "eph");
    let mut spec = c.info("eph").unwrap().spec.unwrap();
    spec.ephemeral = true;
    c.update("eph", &spec).unwrap();
    let e = c.snapshot_create("eph", &snap("s")).unwrap_err();
    assert!(e.to_string().contains("ephemeral"), "{e}");
    let e = c
        .snapshot_create(
            "eph",
            &CreateSnapshotRequest {
                disk_only: true,
                ..snap("x")
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    assert!(c.snapshots("eph").unwrap().is_empty());
    let e = c.snapshot_create("rawvm", &snap("current")).unwrap_err();
    assert!(e.to_string().contains("pick another snapshot name"), "{e}");
    assert!(c.snapshots("rawvm").unwrap().is_empty());
}

fn ext(name: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        disk_only: true,
        ..snap(name)
    }
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn external_snapshots_live_offline_revert_and_merging_delete() {
    let h = hvd();
    let c = h.client();
    // External snapshots work on a raw base: the base freezes, overlays take the writes.
    let base = h.dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 16 << 20]).unwrap();
    let mut spec = h.tiny_spec("ext", VmOpts::default()).unwrap();
    spec.disks.push(
        format!("path={},format=raw", base.display())
            .parse()
            .unwrap(),
    );
    c.create(spec, true).unwrap();
    h.wait_ready("ext").unwrap();
    write_disk(&h, "ext", "disk-A", "w1");
    // Live: the running QEMU switches to the overlay.
    let e1 = c.snapshot_create("ext", &ext("e1")).unwrap();
    assert_eq!((e1.kind.as_str(), e1.memory), ("external", false));
    let frozen = sha(&base);
    write_disk(&h, "ext", "disk-B", "w2");
    assert_eq!(
        sha(&base),
        frozen,
        "the frozen image was written after the snapshot"
    );
    let disk = c.info("ext").unwrap().spec.unwrap().disks[0].clone();
    assert_eq!(disk.path, h.dir.join("base.e1.qcow2"));
    // One kind per VM.
    let e = c.snapshot_create("ext", &snap("internal")).unwrap_err();
    assert!(
        e.to_string().contains("mixing internal and external"),
        "{e}"
    );
    // Revert needs the VM off.
    assert!(c
        .snapshot_revert("ext", "e1")
        .unwrap_err()
        .to_string()
        .contains("shut off"));
    c.shutdown("ext", 30, false).unwrap();
    // Offline snapshot on top; then back to e1.
    c.snapshot_create("ext", &ext("e2")).unwrap();
    c.snapshot_revert("ext", "e1").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(
        read_back(&h, "ext", "a").starts_with("got-disk-A-"),
        "revert to e1 gives the disk as it was"
    );
    write_disk(&h, "ext", "disk-C", "w3");
    c.shutdown("ext", 30, false).unwrap();
    // e2 (taken after disk-B) still holds its state.
    c.snapshot_revert("ext", "e2").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "b").starts_with("got-disk-B-"));
    write_disk(&h, "ext", "disk-D", "w4");
    c.shutdown("ext", 30, false).unwrap();
    // Deleting e2 merges its layer: the current state (disk-D) is kept.
    c.snapshot_delete("ext", "e2").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "c").starts_with("got-disk-D-"));
    c.shutdown("ext", 30, false).unwrap();
    // e1 is still there to go back to.
    c.snapshot_revert("ext", "e1").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "d").starts_with("got-disk-A-"));
    let names: Vec<String> = c
        .snapshots("ext")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["e1"]);
    // Deleting a snapshot below a later one keeps both the later snapshot and the current data.
    c.shutdown("ext", 30, false).unwrap();
    c.snapshot_create("ext", &ext("e3")).unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    write_disk(&h, "ext", "disk-F", "w5");
    c.shutdown("ext", 30, false).unwrap();
    c.snapshot_delete("ext", "e1").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "e").starts_with("got-disk-F-"));
    c.shutdown("ext", 30, false).unwrap();
    c.snapshot_revert("ext", "e3").unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "f").starts_with("got-disk-A-"));
    // Deleting while the VM runs merges inside QEMU: first a middle layer, then the active
    // one (QEMU pivots to the image below). The guest keeps its data, and so does the disk.
    let current = c.info("ext").unwrap().spec.unwrap().disks[0].path.clone();
    write_disk(&h, "ext", "disk-G", "w6");
    c.snapshot_create("ext", &ext("e4")).unwrap();
    write_disk(&h, "ext", "disk-H", "w7");
    c.snapshot_create("ext", &ext("e5")).unwrap();
    write_disk(&h, "ext", "disk-J", "w8");
    c.snapshot_delete("ext", "e4").unwrap();
    assert!(read_back(&h, "ext", "g").starts_with("got-disk-J-"));
    c.snapshot_delete("ext", "e5").unwrap();
    assert!(read_back(&h, "ext", "h").starts_with("got-disk-J-"));
    // Live overlays and merges, all as QEMU's unprivileged uid (issue 9).
    h.check_qemus_confined().unwrap();
    let disk = c.info("ext").unwrap().spec.unwrap().disks[0].path.clone();
    assert_eq!(disk, current, "the merged layers are gone from the spec");
    let left: Vec<_> = std::fs::read_dir(&h.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".e4.") || n.contains(".e5."))
        .collect();
    assert!(left.is_empty(), "merged layers removed: {left:?}");
    c.shutdown("ext", 30, false).unwrap();
    c.start("ext", false).unwrap();
    h.wait_ready("ext").unwrap();
    assert!(read_back(&h, "ext", "i").starts_with("got-disk-J-"));
    assert_eq!(
        c.snapshots("ext")
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>(),
        ["e3"]
    );
}

#[test]
fn sigkill_of_hvd_during_a_snapshot_leaves_a_consistent_state() {
    let mut h = hvd();
    vm_with_qcow2(&h, "k");
    h.client().start("k", false).unwrap();
    h.wait_ready("k").unwrap();
    write_disk(&h, "k", "disk-K", "w1");
    let c = h.client().clone();
    let worker = std::thread::spawn(move || c.snapshot_create("k", &snap("s1")));
    // Kill hvd once QEMU has been asked to save.
    let qmp_log = h.state_dir.join("vms/k/qmp.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&qmp_log)
        .unwrap_or_default()
        .contains("snapshot-save")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot-save never sent"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // The line is logged as the command goes out: a moment later QEMU's job is running, so
    // the job can finish without hvd and leave a tag that no metadata names (taking the
    // snapshot again must cope with it).
    std::thread::sleep(std::time::Duration::from_millis(20));
    h.kill9().unwrap();
    let _ = worker.join();
    h.start_again().unwrap();
    let c = h.client();
    assert_eq!(
        c.info("k").unwrap().state,
        VmState::Running,
        "the VM survived"
    );
    let listed = c.snapshots("k").unwrap();
    if listed.is_empty() {
        // The interrupted snapshot left no metadata: taking it again works.
        c.snapshot_create("k", &snap("s1")).unwrap();
    } else {
        // The row and the VM's current snapshot are committed together.
        let current = c.snapshot_current("k").unwrap().map(|s| s.name);
        assert_eq!(current.as_deref(), Some("s1"));
    }
    write_disk(&h, "k", "disk-L", "w2");
    c.snapshot_revert("k", "s1").unwrap();
    assert!(
        read_back(&h, "k", "a").starts_with("got-disk-"),
        "the guest still answers"
    );
    assert_eq!(c.snapshots("k").unwrap().len(), 1);
}
