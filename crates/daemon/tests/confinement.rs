//! QEMU confinement (issue 9, item 2): every QEMU runs under its VM's own unprivileged uid
//! with no capabilities and a seccomp filter, reaches its own files only while it runs, and
//! cannot open another VM's disk or logs. Checked on real QEMU, by trying as the uid.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::{AttachDiskRequest, CreateVolRequest, DetachDiskRequest};
use model::{Size, VmState};
use testkit::confinement::{can_open_as, Privileges};
use testkit::{TestHvd, VmOpts};

const T: Duration = Duration::from_secs(30);

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn vol(c: &client::Client, name: &str) -> PathBuf {
    vol_on(c, name, None)
}

fn vol_on(c: &client::Client, name: &str, backing: Option<&str>) -> PathBuf {
    let req = CreateVolRequest {
        name: name.parse().unwrap(),
        size: backing.is_none().then_some(Size(16 << 20)),
        format: None,
        backing: backing.map(str::to_string),
    };
    c.vol_create("default", &req).unwrap();
    c.vol_info("default", name).unwrap().path
}

/// Does `path` carry a POSIX ACL (hv's grants are ACL entries)?
fn has_acl(path: &Path) -> bool {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("system.posix_acl_access").unwrap();
    // SAFETY: NUL-terminated names; a null buffer of size 0 only asks for the length.
    unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

fn qemu_of(h: &TestHvd, vm: &str) -> Privileges {
    Privileges::of(h.client().info(vm).unwrap().pid.unwrap()).unwrap()
}

fn boot_with(h: &TestHvd, vm: &str, disks: &[&str]) {
    let opts = VmOpts {
        disks: disks.iter().map(|d| d.parse().unwrap()).collect(),
        ..Default::default()
    };
    h.client()
        .create(h.tiny_spec(vm, opts).unwrap(), true)
        .unwrap();
    h.wait_ready(vm).unwrap();
}

#[test]
fn qemu_runs_unprivileged_and_one_vm_cannot_read_anothers_disk_or_logs() {
    let h = hvd();
    let c = h.client();
    let disk_a = vol(c, "a.qcow2");
    let disk_b = vol(c, "b.qcow2");
    let hot = vol(c, "hot.qcow2");
    boot_with(&h, "a", &["vol=default/a.qcow2"]);
    boot_with(&h, "b", &["vol=default/b.qcow2"]);
    assert_eq!(h.check_qemus_confined().unwrap().len(), 2);
    let (a, b) = (qemu_of(&h, "a"), qemu_of(&h, "b"));
    assert_ne!(a.uid(), b.uid(), "each VM has its own uid");
    assert!(a.uid() > h.qemu_uid_base && b.uid() > h.qemu_uid_base);
    let check = c.host_check().unwrap();
    let conf = check.checks.iter().find(|c| c.name == "qemu confinement");
    let range = format!("{} + the VM's id", h.qemu_uid_base);
    assert!(
        conf.is_some_and(|c| c.detail.contains(&range)),
        "hv host check names the uid range: {check:?}"
    );

    // B's disk stays root's, with nothing for "other": only B's uid is let in.
    let m = std::fs::metadata(&disk_b).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o007),
        (0, 0, 0),
        "{disk_b:?}"
    );
    assert!(can_open_as(b.uid(), b.gid(), &disk_b, true).unwrap());
    assert!(
        !can_open_as(a.uid(), a.gid(), &disk_b, false).unwrap(),
        "A's QEMU uid can read B's disk"
    );
    assert!(!can_open_as(b.uid(), b.gid(), &disk_a, false).unwrap());
    for f in ["console.log", "qemu.log", "qmp.log"] {
        let p = h.state_dir.join("vms/b").join(f);
        assert!(p.exists(), "{p:?}");
        assert!(
            !can_open_as(a.uid(), a.gid(), &p, false).unwrap(),
            "A's uid can read {p:?}"
        );
    }
    assert!(
        !can_open_as(
            a.uid(),
            a.gid(),
            &h.state_dir.join("vms/b/console.log"),
            true
        )
        .unwrap(),
        "A's uid can write B's console log"
    );
    assert!(can_open_as(
        a.uid(),
        a.gid(),
        &h.state_dir.join("vms/a/console.log"),
        true
    )
    .unwrap());
    assert!(!can_open_as(a.uid(), a.gid(), &h.state_dir.join("hv.db"), false).unwrap());
    // The runtime sockets' directory is hvd's (QEMU gets its QMP and serial sockets as fds):
    // a QEMU may only pass through it to its own private directory (issue 11: the VNC socket
    // and screendumps), not list it.
    let run = h.state_dir.join("run");
    assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o707, 0o700);
    assert!(!can_open_as(a.uid(), a.gid(), &run, false).unwrap());

    // A hot-plugged disk is reachable by A's QEMU only, and no longer once unplugged.
    c.disk_attach(
        "a",
        &AttachDiskRequest {
            disk: "vol=default/hot.qcow2,target=vdb".parse().unwrap(),
            live: None,
            config: None,
        },
    )
    .unwrap();
    h.run_in_guest(
        "a",
        "for i in $(seq 100); do [ -e /sys/block/vdb ] && break; sleep 0.1; done; echo hot-$(cat /sys/block/vdb/size)-",
        "hot-32768-",
    )
    .unwrap();
    h.check_qemus_confined().unwrap();
    assert!(can_open_as(a.uid(), a.gid(), &hot, true).unwrap());
    assert!(!can_open_as(b.uid(), b.gid(), &hot, false).unwrap());
    c.disk_detach("a", "vdb", &DetachDiskRequest::default())
        .unwrap();
    assert!(
        !can_open_as(a.uid(), a.gid(), &hot, false).unwrap(),
        "an unplugged disk stays open to A's uid"
    );
    assert!(!has_acl(&hot));

    // Stopped: every grant is taken back.
    c.destroy("a").unwrap();
    c.destroy("b").unwrap();
    let kernel = h.tiny_spec("k", VmOpts::default()).unwrap().kernel.unwrap();
    for p in [
        &disk_a,
        &disk_b,
        &h.state_dir,
        &h.state_dir.join("vms"),
        &h.state_dir.join("vms/a"),
        &h.state_dir.join("vms/a/console.log"),
        &h.state_dir.join("run"),
        &kernel.path,
    ] {
        assert!(!has_acl(p), "{p:?} still has an ACL");
    }
    assert!(!can_open_as(b.uid(), b.gid(), &disk_b, false).unwrap());
    let mode = std::fs::metadata(&h.state_dir).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state dir is private again");
}

#[test]
fn access_is_taken_back_when_qemu_ended_while_hvd_was_down() {
    let mut h = hvd();
    let disk = vol(h.client(), "gone.qcow2");
    boot_with(&h, "gone", &["vol=default/gone.qcow2"]);
    let q = qemu_of(&h, "gone");
    q.check_confined().unwrap();
    // Re-attached: access stays while QEMU runs.
    h.kill9().unwrap();
    h.start_again().unwrap();
    assert_eq!(h.client().info("gone").unwrap().state, VmState::Running);
    assert!(can_open_as(q.uid(), q.gid(), &disk, true).unwrap());
    let pid = h.client().info("gone").unwrap().pid.unwrap();
    h.kill9().unwrap();
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + T;
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    h.start_again().unwrap();
    assert_eq!(h.client().info("gone").unwrap().state, VmState::Crashed);
    assert!(!has_acl(&disk), "the dead QEMU's uid keeps access");
    assert!(!can_open_as(q.uid(), q.gid(), &disk, false).unwrap());
}

#[test]
fn hvd_refuses_a_qemu_uid_base_of_root_or_without_room_for_vm_ids() {
    for base in ["0", "4294967295", "many"] {
        let dir = std::env::temp_dir().join(format!("hvt-base-{}", std::process::id()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvd"))
            .arg("--qemu-uid-base")
            .arg(base)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("s"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "base {base}: {err}");
        assert!(err.contains("--qemu-uid-base"), "base {base}: {err}");
        assert!(!dir.exists(), "nothing is created for a bad flag");
    }
}

#[test]
fn a_shared_base_is_readable_by_each_vm_on_it_and_writable_by_none() {
    let h = hvd();
    let c = h.client();
    let base = vol(c, "base.qcow2");
    let top_c = vol_on(c, "c.qcow2", Some("default/base.qcow2"));
    let top_d = vol_on(c, "d.qcow2", Some("default/base.qcow2"));
    boot_with(&h, "c", &["vol=default/c.qcow2"]);
    boot_with(&h, "d", &["vol=default/d.qcow2"]);
    h.check_qemus_confined().unwrap();
    let (qc, qd) = (qemu_of(&h, "c"), qemu_of(&h, "d"));
    for q in [&qc, &qd] {
        assert!(can_open_as(q.uid(), q.gid(), &base, false).unwrap());
        assert!(
            !can_open_as(q.uid(), q.gid(), &base, true).unwrap(),
            "a VM can write the shared base"
        );
    }
    assert!(can_open_as(qc.uid(), qc.gid(), &top_c, true).unwrap());
    assert!(!can_open_as(qc.uid(), qc.gid(), &top_d, false).unwrap());
    assert!(!can_open_as(qd.uid(), qd.gid(), &top_c, false).unwrap());
    // One VM stopping leaves the other's access to the base alone.
    c.destroy("c").unwrap();
    assert!(!can_open_as(qc.uid(), qc.gid(), &base, false).unwrap());
    assert!(can_open_as(qd.uid(), qd.gid(), &base, false).unwrap());
    h.run_in_guest(
        "d",
        "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null; echo read-$?-",
        "read-0-",
    )
    .unwrap();
    c.destroy("d").unwrap();
    for p in [&base, &top_c, &top_d] {
        assert!(!has_acl(p), "{p:?} still has an ACL");
    }
}

#[test]
fn a_backing_link_forged_to_a_host_file_or_another_vms_disk_is_refused_at_start() {
    let h = hvd();
    let c = h.client();
    let disk_a = vol(c, "a.qcow2");
    let disk_b = vol(c, "b.qcow2");
    let spec = |vm: &str, disk: &str| {
        let opts = VmOpts {
            disks: vec![disk.parse().unwrap()],
            ..Default::default()
        };
        h.tiny_spec(vm, opts).unwrap()
    };
    c.create(spec("a", "vol=default/a.qcow2"), false).unwrap();
    c.create(spec("b", "vol=default/b.qcow2"), false).unwrap();
    // What A's QEMU could write into its own image's header while it runs.
    let forge = |backing: &Path, format: &str| {
        let out = std::process::Command::new("qemu-img")
            .args(["rebase", "-u", "-f", "qcow2", "-F", format, "-b"])
            .arg(backing)
            .arg(&disk_a)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    // Any host file: refused, and left as it was.
    let secret = h.dir.join("secret.txt");
    std::fs::write(&secret, "host data").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    forge(&secret, "raw");
    // hv recorded the link it made (none), so the forged one is refused before anything is
    // granted (the location and ownership checks below the registry are a second line).
    let e = c.start("a", false).unwrap_err();
    assert!(e.to_string().contains("behind hv's back"), "{e}");
    assert_eq!(std::fs::metadata(&secret).unwrap().mode() & 0o777, 0o644);
    assert!(!has_acl(&secret));
    // Another VM's disk, in the same pool: refused.
    forge(&disk_b, "qcow2");
    let e = c.start("a", false).unwrap_err();
    assert!(
        e.to_string().contains("behind hv's back"),
        "A started on a chain through B's disk: {e}"
    );
    assert_eq!(c.info("a").unwrap().state, VmState::Shutoff);
    assert!(h.qemu_pids().is_empty());
    for p in [&disk_a, &disk_b, &h.state_dir] {
        assert!(!has_acl(p), "{p:?} keeps a grant of the refused start");
    }
}
