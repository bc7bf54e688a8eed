//! Pools and volumes through the API, with real qemu-img and, where it matters, a real guest.

use api::{
    CloneVolRequest, CreatePoolRequest, CreateVolRequest, ErrorCode, ImportVolRequest,
    ResizeVolRequest,
};
use model::{DiskFormat, Size};
use testkit::confinement::{can_open_as, Privileges};
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn vol_req(
    name: &str,
    size: Option<u64>,
    format: Option<DiskFormat>,
    backing: Option<&str>,
) -> CreateVolRequest {
    CreateVolRequest {
        name: name.parse().unwrap(),
        size: size.map(Size),
        format,
        backing: backing.map(str::to_string),
    }
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn pools_are_created_listed_and_deleted_safely() {
    let h = hvd();
    let c = h.client();
    let pools = c.pools().unwrap();
    assert_eq!(pools.len(), 1, "a default pool exists from the first start");
    assert_eq!(pools[0].name, "default");
    assert!(pools[0].path.starts_with(&h.state_dir));
    let dir = h.dir.join("vms-pool");
    let p = c
        .pool_create(&CreatePoolRequest {
            name: "vmspool".parse().unwrap(),
            path: dir.clone(),
            autostart: true,
        })
        .unwrap();
    assert!(dir.is_dir(), "the directory is created");
    assert!(p.capacity_bytes > 0 && p.available_bytes > 0 && p.volumes == 0);
    for (req, code) in [
        (
            CreatePoolRequest {
                name: "vmspool".parse().unwrap(),
                path: h.dir.join("other"),
                autostart: false,
            },
            ErrorCode::AlreadyExists,
        ),
        (
            CreatePoolRequest {
                name: "nested".parse().unwrap(),
                path: dir.join("sub"),
                autostart: false,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            CreatePoolRequest {
                name: "rel".parse().unwrap(),
                path: "relative/dir".into(),
                autostart: false,
            },
            ErrorCode::InvalidArgument,
        ),
    ] {
        assert_eq!(c.pool_create(&req).unwrap_err().code(), Some(code));
    }
    c.vol_create("vmspool", &vol_req("a.qcow2", Some(1 << 20), None, None))
        .unwrap();
    let info = c.pool_info("vmspool").unwrap();
    assert_eq!(info.volumes, 1);
    assert!(info.allocation_bytes > 0);
    let e = c.pool_delete("vmspool", false).unwrap_err();
    assert!(e.to_string().contains("holds 1 volume"), "{e}");
    // A volume a VM uses blocks even --force.
    let mut spec = h.tiny_spec("user", VmOpts::default()).unwrap();
    spec.disks.push("vol=vmspool/a.qcow2".parse().unwrap());
    c.create(spec, false).unwrap();
    let e = c.pool_delete("vmspool", true).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(
        e.to_string().contains("user"),
        "the error names the VM: {e}"
    );
    c.undefine("user", false, false).unwrap();
    c.pool_delete("vmspool", true).unwrap();
    assert!(!dir.exists());
    assert_eq!(
        c.pool_delete("default", true).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        c.pool_info("vmspool").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn volumes_overlays_clones_resize_and_safe_delete() {
    let h = hvd();
    let c = h.client();
    let base = c
        .vol_create(
            "default",
            &vol_req("base.raw", Some(4 << 20), Some(DiskFormat::Raw), None),
        )
        .unwrap();
    assert_eq!(
        (base.format.as_str(), base.virtual_size_bytes),
        ("raw", 4 << 20)
    );
    assert_eq!(
        c.vol_create("default", &vol_req("base.raw", Some(1 << 20), None, None))
            .unwrap_err()
            .code(),
        Some(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        c.vol_create("default", &vol_req("nosize", None, None, None))
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidArgument)
    );
    // An overlay records its backing format explicitly and takes the backing size.
    let ov = c
        .vol_create(
            "default",
            &vol_req("ov.qcow2", None, None, Some("default/base.raw")),
        )
        .unwrap();
    assert_eq!(ov.backing.as_deref(), Some(base.path.to_str().unwrap()));
    assert_eq!(ov.backing_format.as_deref(), Some("raw"));
    assert_eq!(ov.virtual_size_bytes, 4 << 20);
    let info = c.vol_info("default", "ov.qcow2").unwrap();
    assert_eq!(info.path, h.state_dir.join("pools/default/ov.qcow2"));
    // The base backs the overlay: it cannot go.
    let e = c.vol_delete("default", "base.raw").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse));
    assert!(e.to_string().contains("ov.qcow2"), "{e}");
    // Clones.
    let full = c
        .vol_clone(
            "default",
            "ov.qcow2",
            &CloneVolRequest {
                name: "full.qcow2".parse().unwrap(),
                linked: false,
            },
        )
        .unwrap();
    assert_eq!(full.backing, None);
    let linked = c
        .vol_clone(
            "default",
            "base.raw",
            &CloneVolRequest {
                name: "linked.qcow2".parse().unwrap(),
                linked: true,
            },
        )
        .unwrap();
    assert_eq!(linked.backing.as_deref(), Some(base.path.to_str().unwrap()));
    // Resize.
    let grown = c
        .vol_resize(
            "default",
            "full.qcow2",
            &ResizeVolRequest {
                size: Size(8 << 20),
                allow_shrink: false,
            },
        )
        .unwrap();
    assert_eq!(grown.virtual_size_bytes, 8 << 20);
    let e = c
        .vol_resize(
            "default",
            "full.qcow2",
            &ResizeVolRequest {
                size: Size(1 << 20),
                allow_shrink: false,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("--allow-shrink"), "{e}");
    let shrunk = c
        .vol_resize(
            "default",
            "full.qcow2",
            &ResizeVolRequest {
                size: Size(2 << 20),
                allow_shrink: true,
            },
        )
        .unwrap();
    assert_eq!(shrunk.virtual_size_bytes, 2 << 20);
    // A VM's disk spec can create and use a volume.
    let mut spec = h.tiny_spec("v", VmOpts::default()).unwrap();
    spec.disks
        .push("vol=default/vm-disk.qcow2,size=8M".parse().unwrap());
    c.create(spec, false).unwrap();
    let d = c.vol_info("default", "vm-disk.qcow2").unwrap();
    assert_eq!(
        (d.format.as_str(), d.used_by.clone()),
        ("qcow2", vec!["v".to_string()])
    );
    assert_eq!(
        c.vol_delete("default", "vm-disk.qcow2").unwrap_err().code(),
        Some(ErrorCode::InUse)
    );
    let names: Vec<String> = c
        .vols("default")
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        [
            "base.raw",
            "full.qcow2",
            "linked.qcow2",
            "ov.qcow2",
            "vm-disk.qcow2"
        ]
    );
    c.undefine("v", true, false).unwrap();
    assert_eq!(
        c.vol_info("default", "vm-disk.qcow2").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // undefine --remove-storage keeps an image another volume is backed by.
    let mut spec = h.tiny_spec("b", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/base.raw".parse().unwrap());
    c.create(spec, false).unwrap();
    c.undefine("b", true, false).unwrap();
    assert!(
        c.vol_info("default", "base.raw").is_ok(),
        "a backing image was removed"
    );
    for v in ["ov.qcow2", "linked.qcow2", "base.raw", "full.qcow2"] {
        c.vol_delete("default", v).unwrap();
    }
    assert!(c.vols("default").unwrap().is_empty());
}

#[test]
fn import_trusts_no_header_blindly() {
    let h = hvd();
    let c = h.client();
    let raw = h.dir.join("disk.img");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let req = |name: &str, source: &std::path::Path, format| ImportVolRequest {
        name: name.parse().unwrap(),
        source: source.to_path_buf(),
        format,
    };
    let e = c.vol_import("default", &req("r", &raw, None)).unwrap_err();
    assert!(e.to_string().contains("--format raw"), "{e}");
    let v = c
        .vol_import("default", &req("r.raw", &raw, Some(DiskFormat::Raw)))
        .unwrap();
    assert_eq!(v.format, "raw");
    assert_eq!(sha(&v.path), sha(&raw));
    // A qcow2 overlay pointing outside the pool is refused.
    let base = h.dir.join("b.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let ov = h.dir.join("ov.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&ov)
        .status()
        .unwrap();
    assert!(st.success());
    let e = c.vol_import("default", &req("ov", &ov, None)).unwrap_err();
    assert!(e.to_string().contains("overlay"), "{e}");
    assert!(
        c.vol_info("default", "ov").is_err(),
        "nothing half-imported"
    );
}

#[test]
fn upload_and_download_round_trip_by_checksum() {
    let h = hvd();
    let c = h.client();
    c.vol_create(
        "default",
        &vol_req("data.raw", Some(1 << 20), Some(DiskFormat::Raw), None),
    )
    .unwrap();
    let src = h.dir.join("src.bin");
    let data: Vec<u8> = (0..(9u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let mut f = std::fs::File::open(&src).unwrap();
    let v = c
        .vol_upload("default", "data.raw", data.len() as u64, &mut f)
        .unwrap();
    assert_eq!(sha(&v.path), sha(&src));
    let (len, mut r) = c.vol_download("default", "data.raw").unwrap();
    assert_eq!(len, data.len() as u64);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut got).unwrap();
    assert!(got == data, "download differs");
    let missing = c.vol_download("default", "nope").err().map(|e| e.code());
    assert_eq!(missing, Some(Some(ErrorCode::NotFound)));
}

/// The raw streams `hv vol upload|download` use (sendfile and splice over an upgraded
/// connection) move the same bytes, and refuse the same things, as the plain bodies.
#[test]
fn raw_upload_and_download_round_trip_by_checksum() {
    let h = hvd();
    let c = h.client();
    c.vol_create(
        "default",
        &vol_req("raw.raw", Some(1 << 20), Some(DiskFormat::Raw), None),
    )
    .unwrap();
    let src = h.dir.join("src.bin");
    let data: Vec<u8> = (0..(19u32 << 20) + 4321)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let f = std::fs::File::open(&src).unwrap();
    let mut seen = 0;
    let v = c
        .vol_upload_file("default", "raw.raw", &f, &mut |done, _| seen = done)
        .unwrap();
    assert_eq!(seen, data.len() as u64);
    assert_eq!(sha(&v.path), sha(&src));
    let pool_dir = std::path::Path::new(&v.path)
        .parent()
        .unwrap()
        .to_path_buf();
    let leftovers: Vec<_> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".upload-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let dst = h.dir.join("dst.bin");
    let mut out = std::fs::File::create(&dst).unwrap();
    let n = c
        .vol_download_file("default", "raw.raw", &mut out, &mut |_, _| {})
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(sha(&dst), sha(&src));
    let missing = c
        .vol_download_file("default", "nope", &mut out, &mut |_, _| {})
        .err()
        .map(|e| e.code());
    assert_eq!(missing, Some(Some(ErrorCode::NotFound)));
    let missing = c
        .vol_upload_file("default", "nope", &f, &mut |_, _| {})
        .err()
        .map(|e| e.code());
    assert_eq!(missing, Some(Some(ErrorCode::NotFound)));
    // The raw path takes only upgrade requests: a plain PUT there changes nothing.
    let resp = c
        .send(
            "PUT",
            "/v1/pools/default/volumes/raw.raw/stream",
            Some(b"not the volume"),
        )
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(sha(&v.path), sha(&src));
}

#[test]
fn overlay_keeps_the_base_pristine_and_live_resize_is_seen_in_the_guest() {
    let h = hvd();
    let c = h.client();
    let base = c
        .vol_create(
            "default",
            &vol_req("gold.raw", Some(64 << 20), Some(DiskFormat::Raw), None),
        )
        .unwrap();
    let before = sha(&base.path);
    c.vol_create(
        "default",
        &vol_req("child.qcow2", None, None, Some("default/gold.raw")),
    )
    .unwrap();
    let mut spec = h.tiny_spec("ovl", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/child.qcow2".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_ready("ovl").unwrap();
    h.run_in_guest("ovl", "echo overlay-data | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; cat /sys/block/vda/size", "# 131072\\r?\\n").unwrap();
    // Live resize through QMP: the guest sees the new size.
    c.vol_resize(
        "default",
        "child.qcow2",
        &ResizeVolRequest {
            size: Size(96 << 20),
            allow_shrink: false,
        },
    )
    .unwrap();
    let e = c
        .vol_resize(
            "default",
            "child.qcow2",
            &ResizeVolRequest {
                size: Size(32 << 20),
                allow_shrink: true,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("while the VM is stopped"), "{e}");
    h.run_in_guest("ovl", "cat /sys/block/vda/size", "# 196608\\r?\\n")
        .unwrap();
    // Uploading into a volume a running VM uses is refused.
    let e = c
        .vol_upload("default", "child.qcow2", 0, &mut std::io::empty())
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse));
    let empty = std::fs::File::open("/dev/null").unwrap();
    let e = c
        .vol_upload_file("default", "child.qcow2", &empty, &mut |_, _| {})
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse));
    c.shutdown("ovl", 30, false).unwrap();
    assert_eq!(sha(&base.path), before, "the backing image was written");
}

#[test]
fn hot_attach_and_detach_are_seen_in_the_guest_and_images_are_not_shared() {
    use api::{AttachDiskRequest, DetachDiskRequest};
    let h = hvd();
    let c = h.client();
    c.vol_create("default", &vol_req("hot.qcow2", Some(32 << 20), None, None))
        .unwrap();
    c.create(h.tiny_spec("hp", VmOpts::default()).unwrap(), true)
        .unwrap();
    h.wait_ready("hp").unwrap();
    // O_DIRECT with Linux AIO: the per-disk aio= choice reaches QEMU (also when hot-plugged).
    let disk: model::DiskSpec = "vol=default/hot.qcow2,cache=none,aio=native"
        .parse()
        .unwrap();
    let info = c
        .disk_attach(
            "hp",
            &AttachDiskRequest {
                disk: disk.clone(),
                live: None,
                config: None,
            },
        )
        .unwrap();
    let spec = info.spec.unwrap();
    assert_eq!(
        spec.disks[0].target.as_deref(),
        Some("vda"),
        "live + config by default on a running VM"
    );
    let wait_for = |cond: &str, expect: &str| {
        let cmd = format!("for i in $(seq 100); do {cond} && break; sleep 0.1; done; echo seen-$(ls /sys/block | tr '\\n' ' ')-end");
        h.run_in_guest("hp", &cmd, expect).unwrap()
    };
    wait_for("[ -e /sys/block/vda ]", "seen-[^\\n]*vda[^\\n]*-end");
    let qmp_log = std::fs::read_to_string(h.state_dir.join("vms/hp/qmp.log")).unwrap();
    assert!(
        qmp_log.contains(r#""aio":"native""#),
        "aio=native was not passed to QEMU"
    );
    // Another running VM cannot take the same image read-write.
    let mut other = h.tiny_spec("other", VmOpts::default()).unwrap();
    other.disks.push(disk.clone());
    c.create(other, false).unwrap();
    let e = c.start("other", false).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(
        e.to_string().contains("hp"),
        "the error names the VM that holds it: {e}"
    );
    assert!(h.qemu_pids().len() == 1);
    // IDE cannot be hot-plugged: a clear error, nothing changed.
    let ide: model::DiskSpec = "vol=default/ide.qcow2,size=8M,bus=ide,target=hda"
        .parse()
        .unwrap();
    let e = c
        .disk_attach(
            "hp",
            &AttachDiskRequest {
                disk: ide,
                live: Some(true),
                config: Some(false),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("cannot be hot-plugged"), "{e}");
    // A live-only disk is named by the user: it will not be in the definition.
    let e = c
        .disk_attach(
            "hp",
            &AttachDiskRequest {
                disk: "vol=default/lo.qcow2,size=8M".parse().unwrap(),
                live: Some(true),
                config: Some(false),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("needs target="), "{e}");
    assert!(c.vol_info("default", "lo.qcow2").is_err());
    assert!(
        c.vol_info("default", "ide.qcow2").is_err(),
        "the volume made for a failed attach is removed"
    );
    // Detach: the guest releases the device.
    c.disk_detach("hp", "vda", &DetachDiskRequest::default())
        .unwrap();
    wait_for("[ ! -e /sys/block/vda ]", "seen-[^v\\n]*-end");
    assert!(c.info("hp").unwrap().spec.unwrap().disks.is_empty());
    c.start("other", false).unwrap();
    let e = c
        .disk_detach(
            "hp",
            "vdq",
            &DetachDiskRequest {
                live: Some(false),
                config: Some(true),
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
}

#[test]
fn install_from_iso_onto_an_empty_volume_then_boot_from_the_disk() {
    use api::ImportVolRequest;
    use testkit::iso;
    let h = hvd();
    let c = h.client();
    let iso_file = iso::installer_iso().unwrap().iso;
    c.vol_import(
        "default",
        &ImportVolRequest {
            name: "installer.iso".parse().unwrap(),
            source: iso_file,
            format: Some(DiskFormat::Raw),
        },
    )
    .unwrap();
    // The classic flow: empty disk, CD first, BIOS boot (no -kernel).
    let mut spec = model::VmSpec::new("inst".parse().unwrap());
    spec.memory = Size(256 << 20);
    spec.disks
        .push("vol=default/inst.qcow2,size=64M".parse().unwrap());
    spec.cdrom = Some("default/installer.iso".into());
    spec.boot = Some("cdrom,disk".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_console(
        "inst",
        iso::INSTALL_DONE_MARKER,
        std::time::Duration::from_secs(120),
    )
    .unwrap();
    h.wait_state(
        "inst",
        model::VmState::Shutoff,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert!(c.info("inst").unwrap().crash.is_none());
    // Eject: the drive stays, empty, and the boot order falls through to the disk.
    let info = c.media_eject("inst").unwrap();
    assert_eq!(info.spec.unwrap().cdrom, Some(std::path::PathBuf::new()));
    c.start("inst", false).unwrap();
    h.wait_console(
        "inst",
        iso::BOOTED_FROM_DISK_MARKER,
        std::time::Duration::from_secs(120),
    )
    .unwrap();
    h.wait_ready("inst").unwrap();
    assert!(!h.console_text("inst").contains(iso::INSTALL_DONE_MARKER));
    assert_eq!(
        c.vol_info("default", "inst.qcow2").unwrap().used_by,
        ["inst"]
    );
}

#[test]
fn media_insert_and_eject_are_seen_in_the_guest() {
    use api::ImportVolRequest;
    let h = hvd();
    let c = h.client();
    let iso_file = testkit::iso::installer_iso().unwrap().iso;
    c.vol_import(
        "default",
        &ImportVolRequest {
            name: "cd.iso".parse().unwrap(),
            source: iso_file,
            format: Some(DiskFormat::Raw),
        },
    )
    .unwrap();
    let mut spec = h.tiny_spec("media", VmOpts::default()).unwrap();
    let k = spec.kernel.as_mut().unwrap();
    k.cmdline = Some(format!(
        "{} {}",
        testkit::guest::CMDLINE,
        testkit::guest::IDE_FLAG
    ));
    spec.cdrom = Some(std::path::PathBuf::new()); // an empty drive
    c.create(spec, true).unwrap();
    h.wait_ready("media").unwrap();
    // Bytes one read of the CD's first sector returns, retried while the drive settles.
    let read = |want: &str, step: &str| {
        let cmd = format!(
            "for i in $(seq 30); do n=$(dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | wc -c); [ $n = {want} ] && break; sleep 0.2; done; echo sr0-$n-{step}"
        );
        h.run_in_guest("media", &cmd, &format!("sr0-[0-9]+-{step}"))
            .unwrap()
    };
    assert_eq!(read("0", "empty"), "sr0-0-empty");
    c.media_insert("media", "default/cd.iso").unwrap();
    assert_eq!(read("2048", "in"), "sr0-2048-in");
    assert_eq!(c.vol_info("default", "cd.iso").unwrap().used_by, ["media"]);
    // QEMU (its own uid) reads the medium while it is in, and not after the eject.
    let q = Privileges::of(c.info("media").unwrap().pid.unwrap()).unwrap();
    q.check_confined().unwrap();
    let iso = c.vol_info("default", "cd.iso").unwrap().path;
    assert!(can_open_as(q.uid(), q.gid(), &iso, false).unwrap());
    assert!(
        !can_open_as(q.uid(), q.gid(), &iso, true).unwrap(),
        "media are read-only"
    );
    c.media_eject("media").unwrap();
    assert_eq!(read("0", "out"), "sr0-0-out");
    assert!(!can_open_as(q.uid(), q.gid(), &iso, false).unwrap());
    // A VM started without a drive cannot get media live: a clear error, nothing changed.
    c.create(h.tiny_spec("nodrive", VmOpts::default()).unwrap(), true)
        .unwrap();
    let e = c.media_insert("nodrive", "default/cd.iso").unwrap_err();
    assert!(e.to_string().contains("without a CD-ROM drive"), "{e}");
    assert_eq!(c.info("nodrive").unwrap().spec.unwrap().cdrom, None);
}
