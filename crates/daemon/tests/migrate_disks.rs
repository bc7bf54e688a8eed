//! Issue 12, disks: `--copy-storage` between two hvds that share no storage (each in its own
//! network namespace and state dir, over TLS with tokens), with real guests under TCG: the
//! disk's bytes arrive, the guest keeps counting on the target, the source forgets the VM and
//! its disk; a target killed mid-copy leaves the source running and nothing on the target; a
//! VM with snapshots is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::{CreateSnapshotRequest, CreateVolRequest, MigrateRequest, MigrationPhase};
use model::{Size, VmState};
use testkit::pair::{ticks, HostPair};
use testkit::{TestHvd, VmOpts};

const HVD: &str = env!("CARGO_BIN_EXE_hvd");

fn migrate_req(p: &HostPair) -> MigrateRequest {
    MigrateRequest {
        to: p.peer.clone(),
        copy_storage: true,
        offline: false,
        downtime_ms: None,
        bandwidth: None,
        postcopy: false,
        keep_source: false,
    }
}

/// A VM with a qcow2 volume `default/NAME.qcow2` of `mib` MiB, booted.
fn vm_with_disk(h: &TestHvd, name: &str, mib: u64) -> PathBuf {
    let vol = format!("{name}.qcow2");
    h.client()
        .vol_create(
            "default",
            &CreateVolRequest {
                name: vol.parse().unwrap(),
                size: Some(Size(mib << 20)),
                format: None,
                backing: None,
            },
        )
        .unwrap();
    let mut spec = h.tiny_spec(name, VmOpts::default()).unwrap();
    spec.disks
        .push(format!("vol=default/{vol}").parse().unwrap());
    h.client().create(spec, true).unwrap();
    h.wait_ready(name).unwrap();
    pool_dir(h).join(vol)
}

fn pool_dir(h: &TestHvd) -> PathBuf {
    h.client()
        .pools()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "default")
        .expect("a default pool")
        .path
}

/// Runs a guest command and waits for its end marker.
fn sh(h: &TestHvd, vm: &str, cmd: &str, step: &str) {
    h.run_in_guest(
        vm,
        &format!("{cmd}; echo {step}-$((0+1))"),
        &format!("{step}-1"),
    )
    .unwrap();
}

/// The SHA-256 of an image's guest-visible bytes (read shared: the VM may run).
fn content_sha(image: &Path) -> String {
    let raw = image.with_extension(format!("check-{}.raw", std::process::id()));
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&raw).unwrap(), &mut h).unwrap();
    let sum = h.finalize();
    let _ = std::fs::remove_file(&raw);
    sum.iter().map(|b| format!("{b:02x}")).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} did not happen within {timeout:?}");
}

#[test]
fn copy_storage_moves_a_running_guest_and_its_disk() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let src_img = vm_with_disk(&p.source, "cs", 32);
    // Known bytes on the disk: a marker at the start and 4 MiB of random data further in.
    sh(
        &p.source,
        "cs",
        "echo disk-M | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; dd if=/dev/urandom of=/dev/vda bs=64k count=64 seek=32 conv=notrunc,fsync 2>/dev/null",
        "w1",
    );
    let before = content_sha(&src_img);
    HostPair::start_counter(&p.source, "cs").unwrap();
    let seen = *ticks(&p.source.console_text("cs")).last().unwrap();

    let done = p.source.client().migrate("cs", &migrate_req(&p)).unwrap();
    assert_eq!(done.phase, MigrationPhase::Done);
    assert_eq!(done.disk_total, 32 << 20, "{done:?}");
    assert_eq!(done.disk_transferred, done.disk_total, "{done:?}");

    // The guest goes on counting on the target.
    let t = &p.target;
    assert_eq!(t.client().info("cs").unwrap().state, VmState::Running);
    // Ticks go on from where the source was (the guest's RAM, shell loop included, moved).
    t.wait_console("cs", r"tick \d+", Duration::from_secs(30))
        .unwrap();
    let first = ticks(&t.console_text("cs"))[0];
    assert!(
        first > seen,
        "the target counts from {first}, the source had reached {seen}"
    );
    t.wait_console(
        "cs",
        &format!(r"tick {}\b", first + 10),
        Duration::from_secs(60),
    )
    .unwrap();
    // The source forgot the VM and its disk.
    assert!(p.source.client().info("cs").is_err());
    assert!(!src_img.exists(), "the source's disk is still there");
    // The target's disk is its own volume, with the same bytes.
    let dst_img = pool_dir(t).join("cs.qcow2");
    let vols = t.client().vols("default").unwrap();
    assert!(vols.iter().any(|v| v.name == "cs.qcow2"), "{vols:?}");
    t.client().destroy("cs").unwrap();
    assert_eq!(content_sha(&dst_img), before);
    // And it boots there from that disk.
    t.client().start("cs", false).unwrap();
    t.wait_ready("cs").unwrap();
    t.run_in_guest("cs", "head -c 6 /dev/vda; echo", "disk-M")
        .unwrap();
}

#[test]
fn a_target_killed_mid_copy_leaves_the_source_running_and_nothing_on_the_target() {
    let mut p = HostPair::new(HVD.as_ref()).expect("pair");
    let src_img = vm_with_disk(&p.source, "kc", 64);
    sh(
        &p.source,
        "kc",
        "dd if=/dev/urandom of=/dev/vda bs=64k count=512 conv=notrunc,fsync 2>/dev/null",
        "w1",
    );
    let before = content_sha(&src_img);
    let mut req = migrate_req(&p);
    // 2 MiB/s: the copy of 32 MiB of data is under way long enough to kill the target.
    req.bandwidth = Some(2 << 20);
    let source = &p.source;
    let err = std::thread::scope(|s| {
        let m = s.spawn(|| source.client().migrate("kc", &req));
        wait_for("the disk copy", Duration::from_secs(120), || {
            source.client().operations().unwrap().iter().any(|o| {
                o.migration.as_ref().is_some_and(|m| {
                    m.phase == MigrationPhase::Disks && m.disk_transferred > (4 << 20)
                })
            })
        });
        // The target's copy exists while it is being written.
        assert!(pool_dir(&p.target).join("kc.qcow2").exists());
        p.target.kill9().unwrap();
        m.join().unwrap().unwrap_err().to_string()
    });
    assert!(!err.is_empty());
    // The source runs on, on its own disk, unchanged.
    let c = p.source.client();
    assert_eq!(c.info("kc").unwrap().state, VmState::Running);
    sh(&p.source, "kc", "true", "alive");
    assert_eq!(content_sha(&src_img), before);
    // The restarted target removes the half-received VM and its half-copied disk.
    p.target.start_again().unwrap();
    wait_for("the target's clean-up", Duration::from_secs(60), || {
        p.target.client().info("kc").is_err() && !pool_dir(&p.target).join("kc.qcow2").exists()
    });
    let leftovers: Vec<_> = std::fs::read_dir(pool_dir(&p.target))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn copy_storage_of_a_vm_with_snapshots_is_refused() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let img = vm_with_disk(&p.source, "sn", 16);
    p.source
        .client()
        .snapshot_create(
            "sn",
            &CreateSnapshotRequest {
                name: "s1".parse().unwrap(),
                description: None,
                disk_only: false,
            },
        )
        .unwrap();
    let e = p
        .source
        .client()
        .migrate("sn", &migrate_req(&p))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has snapshots (s1)") && e.contains("--offline"),
        "{e}"
    );
    assert_eq!(
        p.source.client().info("sn").unwrap().state,
        VmState::Running
    );
    assert!(img.exists());
    assert!(p.target.client().info("sn").is_err());
    assert!(!pool_dir(&p.target).join("sn.qcow2").exists());
}

#[test]
fn offline_moves_a_stopped_vm_with_its_qcow2_chain_and_snapshots() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let c = p.source.client();
    let base = vm_with_disk(&p.source, "off", 16);
    sh(
        &p.source,
        "off",
        "echo disk-A | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null",
        "w1",
    );
    c.destroy("off").unwrap();
    // An external snapshot: the base freezes, an overlay takes the writes.
    let s1 = c
        .snapshot_create(
            "off",
            &CreateSnapshotRequest {
                name: "s1".parse().unwrap(),
                description: None,
                disk_only: true,
            },
        )
        .unwrap();
    assert_eq!(s1.kind, "external");
    c.start("off", false).unwrap();
    p.source.wait_ready("off").unwrap();
    sh(
        &p.source,
        "off",
        "echo disk-B | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null",
        "w2",
    );
    c.destroy("off").unwrap();
    let overlay = pool_dir(&p.source).join("off.s1.qcow2");
    assert!(overlay.exists());

    let mut req = migrate_req(&p);
    req.copy_storage = false;
    req.offline = true;
    let done = c.migrate("off", &req).unwrap();
    assert_eq!(done.phase, MigrationPhase::Done);
    assert!(
        done.disk_total > 0 && done.disk_transferred == done.disk_total,
        "{done:?}"
    );

    // The source forgot the VM and both layers.
    assert!(c.info("off").is_err());
    assert!(!base.exists() && !overlay.exists());
    // The target has the chain, linked on its own files, and the snapshot.
    let t = &p.target;
    let tc = t.client();
    assert_eq!(tc.info("off").unwrap().state, VmState::Shutoff);
    let (tbase, tover) = (
        pool_dir(t).join("off.qcow2"),
        pool_dir(t).join("off.s1.qcow2"),
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "--backing-chain"])
        .arg(&tover)
        .output()
        .unwrap();
    let chain: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(chain[1]["filename"], tbase.display().to_string(), "{chain}");
    let snaps = tc.snapshots("off").unwrap();
    assert_eq!(
        snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    // It boots there with the newest data, and the snapshot reverts to the older.
    tc.start("off", false).unwrap();
    t.wait_ready("off").unwrap();
    t.run_in_guest("off", "head -c 6 /dev/vda; echo", "disk-B")
        .unwrap();
    tc.destroy("off").unwrap();
    tc.snapshot_revert("off", "s1").unwrap();
    tc.start("off", false).unwrap();
    t.wait_ready("off").unwrap();
    t.run_in_guest("off", "head -c 6 /dev/vda; echo", "disk-A")
        .unwrap();
}

#[test]
fn offline_refusals_leave_both_hosts_as_they_were() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let c = p.source.client();
    let img = vm_with_disk(&p.source, "fo", 16);
    let mut req = migrate_req(&p);
    req.copy_storage = false;
    req.offline = true;
    // A running VM is not moved offline.
    let e = c.migrate("fo", &req).unwrap_err().to_string();
    assert!(e.contains("--offline moves a stopped VM"), "{e}");
    assert_eq!(c.info("fo").unwrap().state, VmState::Running);
    c.destroy("fo").unwrap();
    // A file of the same name in the target's pool is never overwritten.
    let theirs = pool_dir(&p.target).join("fo.qcow2");
    std::fs::write(&theirs, b"the target's own file").unwrap();
    let e = c.migrate("fo", &req).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"the target's own file");
    assert!(p.target.client().info("fo").is_err());
    assert!(p
        .target
        .client()
        .list()
        .unwrap()
        .iter()
        .all(|v| v.name != "fo"));
    // The source still has the VM and its disk.
    assert_eq!(c.info("fo").unwrap().state, VmState::Shutoff);
    assert!(img.exists());
}

#[test]
fn a_target_killed_mid_offline_copy_leaves_nothing_there_and_the_source_whole() {
    let mut p = HostPair::new(HVD.as_ref()).expect("pair");
    let c = p.source.client();
    let img = vm_with_disk(&p.source, "ko", 1024);
    c.destroy("ko").unwrap();
    // 768 MiB of data (written on the host: the guest would take long under TCG).
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 768M"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = content_sha(&img);
    let mut req = migrate_req(&p);
    req.copy_storage = false;
    req.offline = true;
    let source = &p.source;
    let err = std::thread::scope(|s| {
        let m = s.spawn(|| source.client().migrate("ko", &req));
        wait_for("the layer copy", Duration::from_secs(120), || {
            source.client().operations().unwrap().iter().any(|o| {
                o.migration
                    .as_ref()
                    .is_some_and(|m| m.phase == MigrationPhase::Disks && m.disk_transferred > 0)
            })
        });
        p.target.kill9().unwrap();
        m.join().unwrap().unwrap_err().to_string()
    });
    assert!(!err.is_empty());
    // The source keeps the VM and its disk, unchanged.
    assert_eq!(c.info("ko").unwrap().state, VmState::Shutoff);
    assert_eq!(content_sha(&img), before);
    // The restarted target removes the half-received files and the session's directory.
    p.target.start_again().unwrap();
    wait_for("the target's clean-up", Duration::from_secs(60), || {
        std::fs::read_dir(pool_dir(&p.target))
            .unwrap()
            .next()
            .is_none()
    });
    assert!(p.target.client().info("ko").is_err());
    assert!(!p.target.state_dir.join("vms/ko").exists());
}

#[test]
fn cancel_during_the_disk_copy_keeps_the_source_and_removes_the_targets_copy() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let img = vm_with_disk(&p.source, "cc", 64);
    sh(
        &p.source,
        "cc",
        "dd if=/dev/urandom of=/dev/vda bs=64k count=512 conv=notrunc,fsync 2>/dev/null",
        "w1",
    );
    let before = content_sha(&img);
    let mut req = migrate_req(&p);
    req.bandwidth = Some(2 << 20);
    let source = &p.source;
    let err = std::thread::scope(|s| {
        let m = s.spawn(|| source.client().migrate("cc", &req));
        let mut id = 0;
        wait_for("the disk copy", Duration::from_secs(120), || {
            let ops = source.client().operations().unwrap();
            let op = ops.iter().find(|o| {
                o.migration.as_ref().is_some_and(|m| {
                    m.phase == MigrationPhase::Disks && m.disk_transferred > (2 << 20)
                })
            });
            id = op.map(|o| o.id).unwrap_or(0);
            op.is_some()
        });
        assert!(pool_dir(&p.target).join("cc.qcow2").exists());
        source.client().operation_cancel(id).unwrap();
        m.join().unwrap().unwrap_err()
    });
    assert_eq!(err.code(), Some(api::ErrorCode::Cancelled), "{err}");
    // The source runs on its own disk; QEMU has no copy job or NBD node left.
    let c = p.source.client();
    assert_eq!(c.info("cc").unwrap().state, VmState::Running);
    sh(&p.source, "cc", "true", "alive");
    assert_eq!(content_sha(&img), before);
    // (The mirror is undone in the background once the operation has ended.)
    wait_for("the NBD node's removal", Duration::from_secs(30), || {
        let qmp =
            std::fs::read_to_string(p.source.state_dir.join("vms/cc/qmp.log")).unwrap_or_default();
        qmp.rfind("block-job-cancel")
            .is_some_and(|i| qmp[i..].contains(r#""execute":"blockdev-del""#))
    });
    // The target aborted its session without a restart: no VM, no image.
    wait_for("the target's clean-up", Duration::from_secs(30), || {
        p.target.client().info("cc").is_err() && !pool_dir(&p.target).join("cc.qcow2").exists()
    });
}

/// The files hv keeps with a VM travel with `--offline`: the UEFI variable store and the
/// TPM's state arrive byte for byte.
#[test]
fn offline_takes_the_uefi_variables_and_tpm_state_along() {
    let p = HostPair::new(HVD.as_ref()).expect("pair");
    let c = p.source.client();
    let disk = pool_dir(&p.source).join("efi.raw");
    std::fs::copy(testkit::efi::esp_disk().expect("EFI disk builds"), &disk).unwrap();
    let mut spec = model::VmSpec::new("efi".parse().unwrap());
    spec.memory = Size(256 << 20);
    spec.machine = model::Machine::Q35;
    spec.firmware = model::Firmware::Uefi;
    spec.tpm = true;
    spec.disks
        .push("vol=default/efi.raw,format=raw".parse().unwrap());
    c.create(spec, false).unwrap();
    // A start pins the machine type and lets swtpm make its state; no need to boot.
    c.start("efi", false).unwrap();
    let vm_dir = |h: &TestHvd| h.state_dir.join("vms/efi");
    wait_for("the TPM state", Duration::from_secs(60), || {
        std::fs::read_dir(vm_dir(&p.source).join("tpm"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    });
    c.destroy("efi").unwrap();
    // Variables of this VM's own (not the template's).
    let nvram = vm_dir(&p.source).join("nvram.fd");
    let mut vars = std::fs::read(&nvram).unwrap();
    let n = vars.len();
    vars[n - 16..].copy_from_slice(b"hv-migrate-vars!");
    std::fs::write(&nvram, &vars).unwrap();
    let tpm: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(vm_dir(&p.source).join("tpm"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
        .collect();
    assert!(!tpm.is_empty());

    let mut req = migrate_req(&p);
    req.copy_storage = false;
    req.offline = true;
    c.migrate("efi", &req).unwrap();
    let t = &p.target;
    assert_eq!(t.client().info("efi").unwrap().state, VmState::Shutoff);
    assert_eq!(std::fs::read(vm_dir(t).join("nvram.fd")).unwrap(), vars);
    for (name, bytes) in &tpm {
        assert_eq!(
            &std::fs::read(vm_dir(t).join("tpm").join(name)).unwrap(),
            bytes,
            "{name:?}"
        );
    }
    assert!(!vm_dir(&p.source).exists());
    assert!(!disk.exists());
    // It starts there (OVMF and swtpm take the arrived files).
    assert_eq!(
        t.client().start("efi", false).unwrap().state,
        VmState::Running
    );
}
