//! Issue 9, item 1: a disk's format is recorded when hv creates, imports or first adopts it,
//! and never guessed again from bytes a guest controls. The attack: a guest owns every byte of
//! its raw disk, so it can write a qcow2 header there whose backing file is a host file. If
//! anything then probes the file, it "is" a qcow2 overlay on that host file.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use api::{CloneVolRequest, CreateVolRequest, ImportVolRequest};
use model::{DiskFormat, DiskSpec, Size};
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn clone_req(name: &str, linked: bool) -> CloneVolRequest {
    CloneVolRequest {
        name: name.parse().unwrap(),
        linked,
    }
}

fn vol_req(name: &str, size: Option<u64>, format: Option<DiskFormat>) -> CreateVolRequest {
    CreateVolRequest {
        name: name.parse().unwrap(),
        size: size.map(Size),
        format,
        backing: None,
    }
}

/// A host file the guest must never read.
fn secret(h: &TestHvd) -> PathBuf {
    let p = h.dir.join("secret.txt");
    std::fs::write(&p, "TOP-SECRET-HOST-FILE\n".repeat(4096)).unwrap();
    p
}

/// Writes, at offset 0 of `disk` (as its guest could), a qcow2 header whose backing file is
/// `target` (as raw).
fn plant_qcow2_header(h: &TestHvd, disk: &Path, target: &Path) {
    let evil = h.dir.join("evil-header.qcow2");
    let _ = std::fs::remove_file(&evil);
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(target)
        .arg(&evil)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let header = std::fs::read(&evil).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&header).unwrap();
    f.sync_all().unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `qemu-img info` with an explicit format: what the file is when opened as `fmt`.
fn backing_as(path: &Path, fmt: &str) -> Option<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", fmt])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backing-filename"].as_str().map(str::to_string)
}

#[test]
fn issue9_a_guest_written_qcow2_header_never_changes_a_raw_volume() {
    let h = hvd();
    let c = h.client();
    let secret = secret(&h);
    let g = c
        .vol_create(
            "default",
            &vol_req("g.raw", Some(16 << 20), Some(DiskFormat::Raw)),
        )
        .unwrap();
    plant_qcow2_header(&h, &g.path, &secret);

    // info and list keep the recorded format.
    let info = c.vol_info("default", "g.raw").unwrap();
    assert_eq!(info.format, "raw", "{info:?}");
    assert_eq!(info.backing, None, "{info:?}");
    let listed = c.vols("default").unwrap();
    let l = listed.iter().find(|v| v.name == "g.raw").unwrap();
    assert_eq!((l.format.as_str(), l.backing.as_ref()), ("raw", None));

    // A full clone copies the raw bytes, not the host file.
    let full = c
        .vol_clone("default", "g.raw", &clone_req("c.raw", false))
        .unwrap();
    assert_eq!(full.format, "raw");
    let bytes = std::fs::read(&full.path).unwrap();
    assert!(
        !contains(&bytes, b"TOP-SECRET"),
        "the clone holds the host file"
    );
    assert_eq!(bytes, std::fs::read(&g.path).unwrap());

    // A linked clone and an overlay record the base as raw.
    let linked = c
        .vol_clone("default", "g.raw", &clone_req("l.qcow2", true))
        .unwrap();
    assert_eq!(linked.backing_format.as_deref(), Some("raw"), "{linked:?}");
    let ov = c
        .vol_create(
            "default",
            &CreateVolRequest {
                name: "o.qcow2".parse().unwrap(),
                size: None,
                format: None,
                backing: Some("default/g.raw".into()),
            },
        )
        .unwrap();
    assert_eq!(ov.backing_format.as_deref(), Some("raw"), "{ov:?}");

    // A VM defined on the volume, or on its path without a format, opens it as raw, and every
    // layer of a chain is named to QEMU: nothing reaches the host file.
    for (name, disk) in [
        ("byvol", "vol=default/g.raw".parse::<DiskSpec>().unwrap()),
        (
            "bypath",
            format!("path={}", g.path.display())
                .parse::<DiskSpec>()
                .unwrap(),
        ),
        (
            "overlay",
            "vol=default/o.qcow2".parse::<DiskSpec>().unwrap(),
        ),
    ] {
        let spec = h
            .tiny_spec(
                name,
                VmOpts {
                    disks: vec![disk],
                    ..Default::default()
                },
            )
            .unwrap();
        let vm = c.create(spec, false).unwrap();
        let d = &vm.spec.as_ref().unwrap().disks[0];
        assert_eq!(
            d.format,
            Some(if name == "overlay" {
                DiskFormat::Qcow2
            } else {
                DiskFormat::Raw
            }),
            "{name}"
        );
        let argv = c.showcmd(name).unwrap().argv.join(" ");
        assert!(!argv.contains("secret"), "{name}: {argv}");
        assert!(
            argv.contains(r#""driver":"raw""#),
            "{name}: g.raw is opened as raw: {argv}"
        );
        if name == "overlay" {
            assert!(
                argv.contains(r#""backing":"hv-vda-b1""#),
                "the backing layer is its own -blockdev: {argv}"
            );
        }
    }
    // A disk-only snapshot and its revert put qcow2 overlays on g.raw, read as raw below them.
    for step in ["snapshot", "revert"] {
        if step == "snapshot" {
            c.snapshot_create(
                "byvol",
                &api::CreateSnapshotRequest {
                    name: "s1".parse().unwrap(),
                    description: None,
                    disk_only: true,
                },
            )
            .unwrap();
        } else {
            c.snapshot_revert("byvol", "s1").unwrap();
        }
        let argv = c.showcmd("byvol").unwrap().argv.join(" ");
        assert!(!argv.contains("secret"), "{step}: {argv}");
        assert!(
            argv.contains(r#""driver":"raw","file":"hv-vda-b1-file""#),
            "{step}: g.raw is the raw layer below the overlay: {argv}"
        );
    }
    // The overlay VM really boots on that chain: QEMU opens exactly what argv names. (Not while
    // g.raw is another VM's writable disk: no VM's QEMU may read another's disk.)
    let e = c.start("overlay", false).unwrap_err();
    assert!(e.to_string().contains("belongs to VM"), "{e}");
    c.undefine("byvol", false, false).unwrap();
    c.undefine("bypath", false, false).unwrap();
    c.start("overlay", false).unwrap();
    c.destroy("overlay").unwrap();
    assert_eq!(
        backing_as(&ov.path, "qcow2").as_deref(),
        Some(g.path.to_str().unwrap())
    );
}

#[test]
fn issue9_upload_and_import_cannot_smuggle_a_backing_file() {
    let h = hvd();
    let c = h.client();
    let secret = secret(&h);
    // A qcow2 volume whose uploaded bytes claim a backing file is refused, and the volume keeps
    // its old bytes.
    let v = c
        .vol_create("default", &vol_req("up.qcow2", Some(16 << 20), None))
        .unwrap();
    let before = std::fs::read(&v.path).unwrap();
    let evil = h.dir.join("evil.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&evil)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&evil).unwrap();
    let e = c
        .vol_upload(
            "default",
            "up.qcow2",
            data.len() as u64,
            &mut std::io::Cursor::new(data),
        )
        .unwrap_err();
    assert!(e.to_string().contains("backing"), "{e}");
    assert_eq!(
        std::fs::read(&v.path).unwrap(),
        before,
        "the volume is unchanged"
    );
    // A raw volume takes any bytes and stays raw.
    c.vol_create(
        "default",
        &vol_req("up.raw", Some(1 << 20), Some(DiskFormat::Raw)),
    )
    .unwrap();
    let data = std::fs::read(&evil).unwrap();
    c.vol_upload(
        "default",
        "up.raw",
        data.len() as u64,
        &mut std::io::Cursor::new(data),
    )
    .unwrap();
    let info = c.vol_info("default", "up.raw").unwrap();
    assert_eq!((info.format.as_str(), info.backing), ("raw", None));

    // Importing a file that claims a backing file as raw keeps it raw.
    let imp = c
        .vol_import(
            "default",
            &ImportVolRequest {
                name: "imp.raw".parse().unwrap(),
                source: evil.clone(),
                format: Some(DiskFormat::Raw),
            },
        )
        .unwrap();
    assert_eq!((imp.format.as_str(), imp.backing), ("raw", None));
    let again = c.vol_info("default", "imp.raw").unwrap();
    assert_eq!(again.format, "raw");
}

#[test]
fn issue9_a_path_disk_is_never_guessed_into_a_chain() {
    let h = hvd();
    let c = h.client();
    let secret = secret(&h);
    // A file hv never saw that claims a backing file: refused without an explicit format.
    let disk = h.dir.join("found.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    plant_qcow2_header(&h, &disk, &secret);
    let spec = h
        .tiny_spec(
            "p",
            VmOpts {
                disks: vec![format!("path={}", disk.display())
                    .parse::<DiskSpec>()
                    .unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
    let e = c.create(spec.clone(), false).unwrap_err();
    assert!(e.to_string().contains("format="), "{e}");
    assert!(c.info("p").is_err(), "nothing was defined");
    // Said to be raw, it is raw, and stays raw.
    let mut raw = spec;
    raw.disks[0].format = Some(DiskFormat::Raw);
    let vm = c.create(raw, false).unwrap();
    assert_eq!(vm.spec.unwrap().disks[0].format, Some(DiskFormat::Raw));
    let argv = c.showcmd("p").unwrap().argv.join(" ");
    assert!(!argv.contains("secret"), "{argv}");
}

/// A VM's QEMU can write its own image's header, so a compromised one could point its disk's
/// backing link at another volume of the pool (one no VM uses) and read it from its next
/// start. hv follows only the links it made.
#[test]
fn issue9_a_backing_link_rewritten_behind_hvs_back_is_refused() {
    let h = hvd();
    let c = h.client();
    let d = c
        .vol_create("default", &vol_req("d.qcow2", Some(16 << 20), None))
        .unwrap();
    let victim = c
        .vol_create(
            "default",
            &vol_req("victim.raw", Some(1 << 20), Some(DiskFormat::Raw)),
        )
        .unwrap();
    let spec = h
        .tiny_spec(
            "v",
            VmOpts {
                disks: vec!["vol=default/d.qcow2".parse::<DiskSpec>().unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
    c.create(spec, false).unwrap();
    c.showcmd("v").unwrap();
    let rebase = |backing: &str| {
        let mut cmd = std::process::Command::new("qemu-img");
        cmd.args(["rebase", "-u", "-f", "qcow2", "-b", backing]);
        if !backing.is_empty() {
            cmd.args(["-F", "raw"]);
        }
        assert!(cmd.arg(&d.path).status().unwrap().success());
    };
    rebase(victim.path.to_str().unwrap());
    let e = c.start("v", false).unwrap_err();
    assert!(e.to_string().contains("behind hv's back"), "{e}");
    assert!(h.qemu_pids().is_empty(), "no QEMU was started");
    assert!(c.showcmd("v").is_err());
    // Put back as hv made it, the disk starts again.
    rebase("");
    c.start("v", false).unwrap();
    c.destroy("v").unwrap();
}
