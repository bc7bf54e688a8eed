//! Issue 9, item 5: the data-safety findings, each reproduced as it was found.

use std::time::Duration;

use api::{
    AttachDiskRequest, CreatePoolRequest, CreateSnapshotRequest, CreateVolRequest, ErrorCode,
    ScopeRequest,
};
use model::{DiskSpec, Size};
use testkit::{guest, TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn vol(c: &client::Client, name: &str) -> api::VolInfo {
    c.vol_create(
        "default",
        &CreateVolRequest {
            name: name.parse().unwrap(),
            size: Some(Size(16 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap()
}

fn disk(s: &str) -> DiskSpec {
    s.parse().unwrap()
}

fn snap(name: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.parse().unwrap(),
        description: None,
        disk_only: true,
    }
}

fn scope(live: bool, config: bool) -> ScopeRequest {
    ScopeRequest {
        live: Some(live),
        config: Some(config),
    }
}

/// Reproduced on main: VM a took a disk-only snapshot, its vda was then repointed to a volume
/// VM b uses, and reverting a deleted that volume (any `x.y.qcow2` was taken for an overlay).
#[test]
fn issue9_external_revert_deletes_only_overlays_hv_made() {
    let h = hvd();
    let c = h.client();
    vol(c, "a.qcow2");
    let ubuntu = vol(c, "ubuntu-24.04.qcow2");
    for (name, d) in [
        ("a", "vol=default/a.qcow2"),
        ("b", "vol=default/ubuntu-24.04.qcow2"),
    ] {
        let spec = h
            .tiny_spec(
                name,
                VmOpts {
                    disks: vec![disk(d)],
                    ..Default::default()
                },
            )
            .unwrap();
        c.create(spec, false).unwrap();
    }
    c.snapshot_create("a", &snap("s1")).unwrap();
    c.disk_detach("a", "vda", &scope(false, true)).unwrap();
    c.disk_attach(
        "a",
        &AttachDiskRequest {
            disk: disk("vol=default/ubuntu-24.04.qcow2,target=vda"),
            live: Some(false),
            config: Some(true),
        },
    )
    .unwrap();
    c.snapshot_revert("a", "s1").unwrap();
    assert!(
        ubuntu.path.is_file(),
        "reverting a must not delete the volume VM b uses"
    );
    c.info("b").unwrap();
    // The overlay hv made for the snapshot's state is still removed when it is discarded.
    c.snapshot_revert("a", "s1").unwrap();
    let overlays: Vec<String> = c
        .vols("default")
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .filter(|n| n.starts_with("a.s1-r"))
        .collect();
    assert_eq!(
        overlays,
        ["a.s1-r2.qcow2"],
        "the discarded r1 overlay is gone"
    );
}

#[test]
fn issue9_pool_delete_never_removes_files_hv_did_not_create() {
    let h = hvd();
    let c = h.client();
    let dir = h.dir.join("p");
    let pool = |name: &str, path: &std::path::Path| {
        c.pool_create(&CreatePoolRequest {
            name: name.parse().unwrap(),
            path: path.to_path_buf(),
            autostart: false,
        })
        .unwrap();
    };
    pool("p", &dir);
    let x = c
        .vol_create(
            "p",
            &CreateVolRequest {
                name: "x.qcow2".parse().unwrap(),
                size: Some(Size(1 << 20)),
                format: None,
                backing: None,
            },
        )
        .unwrap();
    let mine = dir.join("notes.img");
    std::fs::write(&mine, b"an admin's own file").unwrap();
    let e = c.pool_delete("p", true).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(
        e.to_string().contains("notes.img") && e.to_string().contains("undefine"),
        "{e}"
    );
    assert!(x.path.is_file() && mine.is_file(), "nothing was deleted");
    c.pool_info("p").unwrap();
    // Undefine forgets the pool and keeps everything.
    c.pool_undefine("p").unwrap();
    assert!(c.pool_info("p").is_err());
    assert!(x.path.is_file() && mine.is_file() && dir.is_dir());
    let e = c.pool_undefine("default").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    // A pool of hv's own volumes goes whole with --force.
    let q = h.dir.join("q");
    pool("q", &q);
    c.vol_create(
        "q",
        &CreateVolRequest {
            name: "y.raw".parse().unwrap(),
            size: Some(Size(1 << 20)),
            format: Some(model::DiskFormat::Raw),
            backing: None,
        },
    )
    .unwrap();
    c.pool_delete("q", true).unwrap();
    assert!(!q.exists(), "hv's volumes and the empty directory are gone");
}

/// Three findings on one running guest: a multi-disk snapshot switches in one QMP
/// transaction; detaching a disk after a live snapshot removes its whole node chain (so the
/// target can be attached again); a `--config` detach leaves the image open in QEMU, and the
/// volume cannot be deleted or overwritten while it is.
#[test]
fn issue9_live_disks_snapshot_together_detach_whole_chains_and_stay_in_use() {
    let h = hvd();
    let c = h.client();
    vol(c, "a.qcow2");
    vol(c, "b.qcow2");
    let spec = h
        .tiny_spec(
            "live",
            VmOpts {
                disks: vec![disk("vol=default/a.qcow2"), disk("vol=default/b.qcow2")],
                ..Default::default()
            },
        )
        .unwrap();
    c.create(spec, true).unwrap();
    h.wait_console("live", guest::READY_MARKER, Duration::from_secs(90))
        .unwrap();

    c.snapshot_create("live", &snap("s1")).unwrap();
    let qmp_log = std::fs::read_to_string(h.state_dir.join("vms/live/qmp.log")).unwrap();
    let tx: Vec<&str> = qmp_log
        .lines()
        .filter(|l| l.contains(r#""execute":"transaction""#))
        .collect();
    assert_eq!(tx.len(), 1, "one transaction: {qmp_log}");
    assert_eq!(tx[0].matches("blockdev-snapshot").count(), 2, "{}", tx[0]);
    assert!(
        !qmp_log.contains(r#""execute":"blockdev-snapshot""#),
        "no disk switched on its own: {qmp_log}"
    );

    c.disk_detach("live", "vdb", &scope(true, true)).unwrap();
    vol(c, "c.qcow2");
    c.disk_attach(
        "live",
        &AttachDiskRequest {
            disk: disk("vol=default/c.qcow2,target=vdb"),
            live: Some(true),
            config: Some(true),
        },
    )
    .expect("vdb's old nodes are gone, so vdb can be attached again");

    // vda is now the snapshot's overlay; drop it from the definition only.
    c.disk_detach("live", "vda", &scope(false, true)).unwrap();
    let e = c.vol_delete("default", "a.s1.qcow2").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(e.to_string().contains("live"), "{e}");
    let e = c
        .vol_upload(
            "default",
            "a.s1.qcow2",
            3,
            &mut std::io::Cursor::new(b"abc"),
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(h.state_dir.join("pools/default/a.s1.qcow2").is_file());
    c.destroy("live").unwrap();
    c.vol_delete("default", "a.s1.qcow2")
        .expect("once QEMU is gone the volume is free");
}
