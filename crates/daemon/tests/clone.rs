//! Issue 14, item 3: cloning a VM. A tiny TCG guest writes a marker on its data disk; its
//! full clone boots next to it and reads the marker, has its own MAC and disks, shares the
//! read-only disk, and its writes do not reach the source. A running source, a taken name and
//! a clone whose second disk cannot be made are refused and leave no volume and no VM.
//! A linked clone of a running source, on a disk-only snapshot, reads the source's data as of
//! the snapshot, and keeps that layer from being written while it exists. Every clone gets
//! its own UUID, which its guest sees; a UUID another VM has is refused.

use api::{CloneRequest, CreateVolRequest, ErrorCode};
use model::{DiskFormat, Size};
use testkit::{TestHvd, VmOpts};

const MIB: u64 = 1 << 20;

fn vol(c: &client::Client, name: &str, format: Option<DiskFormat>) {
    c.vol_create(
        "default",
        &CreateVolRequest {
            name: name.parse().unwrap(),
            size: Some(Size(16 * MIB)),
            format,
            backing: None,
        },
    )
    .unwrap();
}

fn clone_req(name: &str, start: bool) -> CloneRequest {
    CloneRequest {
        name: name.parse().unwrap(),
        linked: false,
        snapshot: None,
        start,
    }
}

fn vol_names(c: &client::Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .vols("default")
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    v.sort();
    v
}

/// The first 10 bytes of the guest's /dev/vda.
fn marker(h: &TestHvd, vm: &str, tag: &str) -> String {
    let m = h
        .run_in_guest(
            vm,
            &format!("echo {tag}-$(head -c 10 /dev/vda)-END"),
            &format!(r"{tag}-HVMARK-\w+-END"),
        )
        .unwrap();
    m.trim_start_matches(&format!("{tag}-"))
        .trim_end_matches("-END")
        .to_string()
}

/// The SMBIOS system UUID the guest's kernel reports.
fn guest_uuid(h: &TestHvd, vm: &str) -> String {
    let m = h
        .run_in_guest(
            vm,
            "echo U-$(cat /sys/class/dmi/id/product_uuid)-END",
            r"U-[0-9a-fA-F-]{36}-END",
        )
        .unwrap();
    m.trim_start_matches("U-")
        .trim_end_matches("-END")
        .to_lowercase()
}

#[test]
fn a_full_clone_boots_beside_its_source_with_the_data_and_its_own_identity() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).unwrap();
    let c = h.client();
    vol(c, "data.qcow2", None);
    vol(c, "more.qcow2", None);
    vol(c, "ro.img", Some(DiskFormat::Raw));
    let mut spec = h.tiny_spec("src", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/data.qcow2".parse().unwrap());
    spec.disks.push("vol=default/more.qcow2".parse().unwrap());
    spec.disks
        .push("vol=default/ro.img,format=raw,readonly=on".parse().unwrap());
    spec.nics.push("user".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_ready("src").unwrap();
    h.run_in_guest(
        "src",
        "echo HVMARK-SRC | dd of=/dev/vda conv=fsync 2>/dev/null; echo W1-$((1+1))",
        "W1-2",
    )
    .unwrap();

    // A running source is refused.
    let e = c.clone_vm("src", &clone_req("cl", false)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    assert!(e.to_string().contains("running"), "{e}");
    c.destroy("src").unwrap();

    let before = vol_names(c);
    // A taken name, linked without a snapshot, and a second disk that cannot be made
    // (its volume exists): nothing is left behind, the first disk's copy included.
    let e = c.clone_vm("src", &clone_req("src", false)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    let e = c
        .clone_vm(
            "src",
            &CloneRequest {
                linked: true,
                ..clone_req("ln", false)
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("--disk-only"), "{e}");
    vol(c, "bad-vdb.qcow2", None);
    let e = c.clone_vm("src", &clone_req("bad", false)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    assert!(e.to_string().contains("bad-vdb.qcow2"), "{e}");
    c.vol_delete("default", "bad-vdb.qcow2").unwrap();
    assert_eq!(vol_names(c), before, "no volume left by the failed clones");
    assert!(
        c.info("bad").is_err() && c.info("ln").is_err(),
        "no VM defined"
    );

    // The clone: its own disks and MAC, the read-only disk shared; both run at once.
    let cl = c.clone_vm("src", &clone_req("cl", true)).unwrap();
    c.start("src", false).unwrap();
    let s = c.info("src").unwrap().spec.unwrap();
    let k = cl.spec.unwrap();
    assert_ne!(s.nics[0].mac, k.nics[0].mac);
    assert!(k.nics[0].mac.is_some());
    assert_eq!(
        k.disks[0].vol.as_ref().unwrap().to_string(),
        "default/cl-vda.qcow2"
    );
    assert_eq!(
        k.disks[1].vol.as_ref().unwrap().to_string(),
        "default/cl-vdb.qcow2"
    );
    assert_ne!(s.disks[0].path, k.disks[0].path);
    assert_eq!(s.disks[2].path, k.disks[2].path, "read-only disk shared");
    h.wait_ready("cl").unwrap();
    h.wait_ready("src").unwrap();
    // Each has its own UUID, and the guest sees it as its SMBIOS system UUID.
    let (su, ku) = (s.uuid.unwrap(), k.uuid.unwrap());
    assert_ne!(su, ku);
    assert_eq!(guest_uuid(&h, "cl"), ku.to_string());
    assert_eq!(guest_uuid(&h, "src"), su.to_string());
    // A UUID another VM has is refused at define.
    let mut dup = h.tiny_spec("dup", VmOpts::default()).unwrap();
    dup.uuid = Some(su);
    let e = c.create(dup, false).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    assert!(
        e.to_string().contains("UUID") && e.to_string().contains("src"),
        "{e}"
    );
    assert!(c.info("dup").is_err());
    assert_eq!(marker(&h, "cl", "R1"), "HVMARK-SRC");
    assert_eq!(marker(&h, "src", "R2"), "HVMARK-SRC");
    // The clone's writes stay in the clone.
    h.run_in_guest(
        "cl",
        "echo HVMARK-CLN | dd of=/dev/vda conv=fsync 2>/dev/null; echo W2-$((2+2))",
        "W2-4",
    )
    .unwrap();
    assert_eq!(marker(&h, "cl", "R3"), "HVMARK-CLN");
    assert_eq!(marker(&h, "src", "R4"), "HVMARK-SRC");
    for vm in ["cl", "src"] {
        c.destroy(vm).unwrap();
    }
}

fn linked_req(name: &str, snap: &str, start: bool) -> CloneRequest {
    CloneRequest {
        linked: true,
        snapshot: Some(snap.into()),
        ..clone_req(name, start)
    }
}

#[test]
fn a_linked_clone_of_a_running_source_shares_its_snapshot_layer_and_keeps_it_unwritten() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).unwrap();
    let c = h.client();
    vol(c, "data.qcow2", None);
    vol(c, "more.qcow2", None);
    let mut spec = h.tiny_spec("src", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/data.qcow2".parse().unwrap());
    spec.disks.push("vol=default/more.qcow2".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_ready("src").unwrap();
    h.run_in_guest(
        "src",
        "echo HVMARK-OLD | dd of=/dev/vda conv=fsync 2>/dev/null; echo W1-$((1+1))",
        "W1-2",
    )
    .unwrap();
    // A disk-only snapshot of the running source, then a write after it.
    c.snapshot_create(
        "src",
        &api::CreateSnapshotRequest {
            name: "s1".parse().unwrap(),
            description: None,
            disk_only: true,
        },
    )
    .unwrap();
    h.run_in_guest(
        "src",
        "echo HVMARK-NEW | dd of=/dev/vda conv=fsync 2>/dev/null; echo W2-$((2+2))",
        "W2-4",
    )
    .unwrap();

    // Refused, leaving nothing: no such snapshot; a second disk whose overlay exists.
    let before = vol_names(c);
    let e = c
        .clone_vm("src", &linked_req("ln", "nope", false))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("--disk-only"), "{e}");
    vol(c, "bad-vdb.qcow2", None);
    let e = c
        .clone_vm("src", &linked_req("bad", "s1", false))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    c.vol_delete("default", "bad-vdb.qcow2").unwrap();
    assert_eq!(vol_names(c), before, "no overlay left by the failed clones");
    assert!(c.info("bad").is_err() && c.info("ln").is_err());

    // The linked clone, made and started while the source runs.
    let ln = c.clone_vm("src", &linked_req("ln", "s1", true)).unwrap();
    let k = ln.spec.unwrap();
    assert_eq!(
        k.disks[0].vol.as_ref().unwrap().to_string(),
        "default/ln-vda.qcow2"
    );
    h.wait_ready("ln").unwrap();
    let su = c.info("src").unwrap().spec.unwrap().uuid.unwrap();
    assert_ne!(k.uuid.unwrap(), su);
    assert_eq!(guest_uuid(&h, "ln"), k.uuid.unwrap().to_string());
    assert_eq!(marker(&h, "ln", "R1"), "HVMARK-OLD", "the data as of s1");
    assert_eq!(marker(&h, "src", "R2"), "HVMARK-NEW");
    h.run_in_guest(
        "ln",
        "echo HVMARK-LNK | dd of=/dev/vda conv=fsync 2>/dev/null; echo W3-$((3+3))",
        "W3-6",
    )
    .unwrap();
    assert_eq!(marker(&h, "ln", "R3"), "HVMARK-LNK");
    assert_eq!(marker(&h, "src", "R4"), "HVMARK-NEW");

    // The shared layer is never written while the clone exists: deleting the snapshot (a
    // merge into it) is refused naming the clone, the volume cannot go, and undefining the
    // source with its storage keeps it.
    let e = c.snapshot_delete("src", "s1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(e.to_string().contains("ln"), "{e}");
    assert!(c.vol_delete("default", "data.qcow2").is_err());
    let e = c
        .vol_resize(
            "default",
            "data.qcow2",
            &api::ResizeVolRequest {
                size: Size(32 * MIB),
                allow_shrink: false,
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    let e = c
        .vol_upload("default", "data.qcow2", 4, &mut &b"junk"[..])
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    c.undefine("src", true, true).unwrap();
    assert!(vol_names(c).contains(&"data.qcow2".to_string()));
    c.destroy("ln").unwrap();
    c.start("ln", false).unwrap();
    h.wait_ready("ln").unwrap();
    assert_eq!(marker(&h, "ln", "R5"), "HVMARK-LNK");
    c.destroy("ln").unwrap();
    // Once the clone is gone with its storage, the layer is free again.
    c.undefine("ln", true, false).unwrap();
    assert!(!vol_names(c).contains(&"ln-vda.qcow2".to_string()));
    c.vol_delete("default", "data.qcow2").unwrap();
}
