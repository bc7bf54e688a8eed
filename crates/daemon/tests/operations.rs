//! Issue 9, item 3: operations belong to hvd, not to the HTTP connection that asked for them.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use api::{ErrorCode, ImportVolRequest, OperationStatus};
use model::VmState;
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

/// Waits (bounded) until `f` holds.
fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a request and hangs up after `after` without reading the answer.
fn send_and_hang_up(h: &TestHvd, method: &str, path: &str, body: &str, after: Duration) {
    let mut s = UnixStream::connect(&h.socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: hv\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn running_ops(h: &TestHvd) -> usize {
    h.client()
        .operations()
        .unwrap()
        .iter()
        .filter(|o| o.status == OperationStatus::Running)
        .count()
}

#[test]
fn issue9_a_client_that_hangs_up_never_leaves_a_start_half_done() {
    let h = hvd();
    let c = h.client();
    let spec = h.tiny_spec("o", VmOpts::default()).unwrap();
    c.create(spec, false).unwrap();
    let count = |kind: &str| {
        c.operations()
            .unwrap()
            .iter()
            .filter(|o| o.kind == kind && o.target == "vm/o")
            .count()
    };
    let mut started = 0;
    for ms in [0u64, 1, 5, 20, 60, 150] {
        let before = count("start");
        send_and_hang_up(
            &h,
            "POST",
            "/v1/vms/o/start",
            "{}",
            Duration::from_millis(ms),
        );
        // hvd reads the request on its own schedule, so an operation may appear after the
        // hang-up. Settle on a consistent view: no operation running, the same count of
        // start operations before and after reading the VM, and either a new operation or
        // two quiet seconds in which none appeared.
        let hung_up = Instant::now();
        let mut seen = None;
        until("the start to finish", Duration::from_secs(60), || {
            let n = count("start");
            let info = c.info("o").unwrap();
            let settled = running_ops(&h) == 0
                && info.state != VmState::Starting
                && count("start") == n
                && (n > before || hung_up.elapsed() > Duration::from_secs(2));
            seen = Some((n, info));
            settled
        });
        let (n, info) = seen.unwrap();
        if n == before {
            // hvd never read the request: nothing happened at all.
            assert_eq!(info.state, VmState::Shutoff, "after {ms} ms: {info:?}");
            assert!(h.qemu_pids().is_empty(), "after {ms} ms");
            continue;
        }
        // Once begun, the start ran to its end although nobody was listening.
        started += 1;
        assert_eq!(info.state, VmState::Running, "after {ms} ms: {info:?}");
        assert_eq!(h.qemu_pids(), vec![info.pid.unwrap()], "after {ms} ms");
        c.destroy("o").unwrap();
        until("QEMU to be gone", Duration::from_secs(10), || {
            h.qemu_pids().is_empty()
        });
    }
    assert!(
        started >= 4,
        "most starts were read before the hang-up ({started})"
    );
    let ops = c.operations().unwrap();
    assert!(
        ops.iter()
            .filter(|o| o.kind == "start")
            .all(|o| o.status == OperationStatus::Succeeded),
        "{ops:?}"
    );
    // Still operable through the normal path.
    c.start("o", false).unwrap();
    c.destroy("o").unwrap();
}

#[test]
fn issue9_a_shutdown_wait_is_an_operation_that_can_be_cancelled() {
    let h = hvd();
    let spec = h
        .tiny_spec(
            "deaf",
            VmOpts {
                no_acpi: true,
                ..Default::default()
            },
        )
        .unwrap();
    h.client().create(spec, true).unwrap();
    h.wait_ready("deaf").unwrap();
    let socket = h.socket.clone();
    let waiter =
        std::thread::spawn(move || client::Client::new(socket).shutdown("deaf", 600, false));
    let c = h.client();
    let mut id = 0;
    until(
        "the shutdown operation",
        Duration::from_secs(30),
        || match c
            .operations()
            .unwrap()
            .into_iter()
            .find(|o| o.kind == "shutdown" && o.status == OperationStatus::Running)
        {
            Some(o) => {
                assert!(o.cancellable, "{o:?}");
                id = o.id;
                true
            }
            None => false,
        },
    );
    let shown = c.operation(id).unwrap();
    assert_eq!(
        (shown.kind.as_str(), shown.target.as_str()),
        ("shutdown", "vm/deaf")
    );
    c.operation_cancel(id).unwrap();
    let e = waiter.join().unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Cancelled), "{e}");
    let done = c.operation(id).unwrap();
    assert_eq!(done.status, OperationStatus::Cancelled);
    assert!(done.error.is_some());
    assert_eq!(c.info("deaf").unwrap().state, VmState::Running);
    // Finished or missing operations cannot be cancelled; the VM is free for the next one.
    assert_eq!(
        c.operation_cancel(id).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        c.operation(987654).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    c.destroy("deaf").unwrap();
}

/// SIGTERM while an import copies: hvd finishes the copy before it exits, so the volume is
/// whole (before, it exited with a half-written volume in the pool).
#[test]
fn issue9_sigterm_lets_a_running_import_finish() {
    let mut h = hvd();
    let src = h.dir.join("big.img");
    {
        use std::io::Read;
        let mut f = std::fs::File::create(&src).unwrap();
        let mut rnd = std::fs::File::open("/dev/urandom").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..384 {
            rnd.read_exact(&mut buf).unwrap();
            f.write_all(&buf).unwrap();
        }
    }
    let req = serde_json::to_string(&ImportVolRequest {
        name: "big.raw".parse().unwrap(),
        source: src.clone(),
        format: Some(model::DiskFormat::Raw),
    })
    .unwrap();
    // The client waits, as a real one would, when hvd is told to stop.
    let mut s = UnixStream::connect(&h.socket).unwrap();
    write!(
        s,
        "POST /v1/pools/default/import HTTP/1.1\r\nHost: hv\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
        req.len()
    )
    .unwrap();
    // It is listed, with how far the copy is.
    until("the import's progress", Duration::from_secs(30), || {
        h.client().operations().unwrap().iter().any(|o| {
            o.kind == "vol-import"
                && o.status == OperationStatus::Running
                && o.progress_percent.is_some()
        })
    });
    h.restart().unwrap();
    drop(s);
    let v = h
        .client()
        .vol_info("default", "big.raw")
        .expect("the import finished before hvd stopped");
    assert_eq!(
        std::fs::read(&v.path).unwrap(),
        std::fs::read(&src).unwrap(),
        "the volume is whole"
    );
    // A full clone reports its progress too, and ends at 100.
    let c = h.client();
    c.vol_clone(
        "default",
        "big.raw",
        &api::CloneVolRequest {
            name: "copy.raw".parse().unwrap(),
            linked: false,
        },
    )
    .unwrap();
    let clone = c
        .operations()
        .unwrap()
        .into_iter()
        .find(|o| o.kind == "vol-clone")
        .unwrap();
    assert_eq!(clone.progress_percent, Some(100.0), "{clone:?}");
}

/// The client hangs up at several points of snapshot and volume operations on a running VM:
/// each operation either never began or ran to its end; no snapshot, volume or QEMU is left
/// half-made, and the VM stays operable.
#[test]
fn issue9_hang_ups_during_snapshot_and_volume_operations_leave_nothing_half_done() {
    let h = hvd();
    let c = h.client();
    c.vol_create(
        "default",
        &api::CreateVolRequest {
            name: "d.qcow2".parse().unwrap(),
            size: Some(model::Size(64 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let spec = h
        .tiny_spec(
            "s",
            VmOpts {
                disks: vec!["vol=default/d.qcow2".parse().unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
    c.create(spec, true).unwrap();
    h.wait_ready("s").unwrap();
    let pid = c.info("s").unwrap().pid.unwrap();
    let began = |kind: &str, target: &str| {
        c.operations()
            .unwrap()
            .into_iter()
            .filter(|o| o.kind == kind && o.target == target)
            .inspect(|o| assert_ne!(o.status, OperationStatus::Failed, "{o:?}"))
            .count()
    };
    for (n, ms) in [0u64, 3, 15, 50].into_iter().enumerate() {
        let after = Duration::from_millis(ms);
        let snap = format!("h{n}");
        let before = began("snapshot-create", "vm/s");
        send_and_hang_up(
            &h,
            "POST",
            "/v1/vms/s/snapshots",
            &format!(r#"{{"name":"{snap}"}}"#),
            after,
        );
        until("idle", Duration::from_secs(60), || running_ops(&h) == 0);
        let listed = c.snapshots("s").unwrap().iter().any(|x| x.name == snap);
        assert_eq!(
            listed,
            began("snapshot-create", "vm/s") > before,
            "{ms} ms: {snap}"
        );
        if listed {
            send_and_hang_up(
                &h,
                "POST",
                &format!("/v1/vms/s/snapshots/{snap}/revert"),
                "{}",
                after,
            );
            until("idle", Duration::from_secs(60), || running_ops(&h) == 0);
            let before = began("snapshot-delete", "vm/s");
            send_and_hang_up(
                &h,
                "DELETE",
                &format!("/v1/vms/s/snapshots/{snap}"),
                "",
                after,
            );
            until("idle", Duration::from_secs(60), || running_ops(&h) == 0);
            let still = c.snapshots("s").unwrap().iter().any(|x| x.name == snap);
            assert_eq!(
                still,
                began("snapshot-delete", "vm/s") == before,
                "{ms} ms: {snap}"
            );
        }
        let clone = format!("c{n}.qcow2");
        let target = "volume/default/d.qcow2";
        let before = began("vol-clone", target);
        send_and_hang_up(
            &h,
            "POST",
            "/v1/pools/default/volumes/d.qcow2/clone",
            &format!(r#"{{"name":"{clone}","linked":true}}"#),
            after,
        );
        until("idle", Duration::from_secs(60), || running_ops(&h) == 0);
        let exists = c.vol_info("default", &clone).is_ok();
        assert_eq!(
            exists,
            began("vol-clone", target) > before,
            "{ms} ms: {clone}"
        );
        assert!(
            !h.state_dir.join("pools/default").join(&clone).exists() || exists,
            "no half-made file"
        );
        let info = c.info("s").unwrap();
        assert_eq!(
            (info.state, info.pid),
            (VmState::Running, Some(pid)),
            "{ms} ms"
        );
        assert_eq!(h.qemu_pids(), vec![pid]);
    }
    // Everything still works the normal way.
    c.snapshot_create(
        "s",
        &api::CreateSnapshotRequest {
            name: "final".parse().unwrap(),
            description: None,
            disk_only: false,
        },
    )
    .unwrap();
    c.destroy("s").unwrap();
}
