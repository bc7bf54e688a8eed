//! Bad input and conflicting operations: clear errors, non-zero results, nothing created.

use std::time::Duration;

use api::ErrorCode;
use model::{VmSpec, VmState};
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn check(h: &TestHvd, spec: VmSpec, code: ErrorCode, says: &str) {
    let e = h.client().create(spec, false).unwrap_err();
    assert_eq!(e.code(), Some(code), "{e}");
    assert!(e.to_string().contains(says), "{e:?} does not say {says:?}");
}

#[test]
fn bad_specs_are_refused_and_create_nothing() {
    let h = hvd();
    let ok = h.tiny_spec("ok", VmOpts::default()).unwrap();
    let mut s = ok.clone();
    s.vcpus = 0;
    check(&h, s, ErrorCode::InvalidArgument, "vcpus");
    let mut s = ok.clone();
    s.kernel.as_mut().unwrap().path = "/nonexistent/vmlinuz".into();
    check(&h, s, ErrorCode::InvalidArgument, "/nonexistent/vmlinuz");
    let mut s = ok.clone();
    s.disks.push(
        format!("path={}/missing.qcow2", h.dir.display())
            .parse()
            .unwrap(),
    );
    check(&h, s, ErrorCode::InvalidArgument, "add size=SIZE");
    let mut s = ok.clone();
    s.boot = Some("cdrom".parse().unwrap());
    check(&h, s, ErrorCode::InvalidArgument, "no --cdrom");
    // A sized disk is created, and removed again when a later step fails.
    let mut s = ok.clone();
    let made = h.dir.join("made.qcow2");
    s.disks
        .push(format!("path={},size=16M", made.display()).parse().unwrap());
    s.disks.push(
        format!("path={}/missing.raw", h.dir.display())
            .parse()
            .unwrap(),
    );
    check(&h, s, ErrorCode::InvalidArgument, "missing.raw");
    assert!(!made.exists(), "half-created disk left behind");
    assert!(h.client().list().unwrap().is_empty());
    // Unknown JSON fields are named.
    let resp = h
        .client()
        .send(
            "POST",
            "/v1/vms",
            Some(br#"{"spec":{"name":"x","colour":"red"}}"#),
        )
        .unwrap();
    assert_eq!(resp.status, 400);
    let mut body = String::new();
    std::io::Read::read_to_string(&mut resp.into_reader(), &mut body).unwrap();
    assert!(
        body.contains("colour") && body.contains("invalid_argument"),
        "{body}"
    );
    // Bad names never reach the disk.
    let resp = h
        .client()
        .send("POST", "/v1/vms", Some(br#"{"spec":{"name":"../etc"}}"#))
        .unwrap();
    assert_eq!(resp.status, 400);
    assert!(!h.state_dir.join("etc").exists());
    // Duplicates.
    h.client().create(ok.clone(), false).unwrap();
    check(&h, ok, ErrorCode::AlreadyExists, "already exists");
    assert_eq!(h.client().list().unwrap().len(), 1);
    assert_eq!(
        h.client().info("nope").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn create_with_start_is_all_or_nothing_and_kvm_is_refused_when_unusable() {
    let h = hvd();
    let mut s = h.tiny_spec("c", VmOpts::default()).unwrap();
    let made = h.dir.join("c.qcow2");
    s.disks
        .push(format!("path={},size=16M", made.display()).parse().unwrap());
    s.memory = model::Size(1 << 40); // QEMU cannot allocate 1 TiB here
    let e = h.client().create(s, true).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::QemuError), "{e}");
    assert!(h.client().list().unwrap().is_empty());
    assert!(!made.exists());
    assert!(h.qemu_pids().is_empty());
    let report = h.client().host_check().unwrap();
    if report.accel == "tcg" {
        let mut s = h.tiny_spec("k", VmOpts::default()).unwrap();
        s.accel = model::Accel::Kvm;
        let e = h.client().create(s, true).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::HostError));
        assert!(e.to_string().contains("--accel kvm cannot run here"), "{e}");
    }
}

#[test]
fn invalid_actions_and_busy_vms_are_refused() {
    let h = hvd();
    let spec = h
        .tiny_spec(
            "s",
            VmOpts {
                no_acpi: true,
                ..Default::default()
            },
        )
        .unwrap();
    h.client().create(spec, false).unwrap();
    for (what, e) in [
        ("shutdown", h.client().shutdown("s", 1, false).unwrap_err()),
        ("pause", h.client().pause("s").unwrap_err()),
        ("resume", h.client().resume("s").unwrap_err()),
        ("reset", h.client().reset("s").unwrap_err()),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{what}: {e}");
        assert!(e.to_string().contains("start it first"), "{what}: {e}");
    }
    h.client().start("s", false).unwrap();
    h.wait_ready("s").unwrap();
    assert_eq!(
        h.client().start("s", false).unwrap_err().code(),
        Some(ErrorCode::InvalidState)
    );
    assert_eq!(
        h.client().undefine("s", false, false).unwrap_err().code(),
        Some(ErrorCode::InvalidState)
    );
    // A shutdown of a guest that ignores ACPI takes its whole timeout; meanwhile the VM is busy.
    let c = h.client().clone();
    let waiter = std::thread::spawn(move || c.shutdown("s", 5, false));
    h.wait_state("s", VmState::ShuttingDown, Duration::from_secs(5))
        .unwrap();
    let e = h.client().pause("s").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
    assert!(e.to_string().contains("busy with shutdown"), "{e}");
    // destroy is the way out and is never refused as busy.
    h.client().destroy("s").unwrap();
    let r = waiter.join().unwrap();
    assert!(r.is_ok(), "the shutdown waiter sees the VM go away: {r:?}");
    h.client().undefine("s", false, false).unwrap();
    assert!(h.client().list().unwrap().is_empty());
}

#[test]
fn every_documented_route_is_served() {
    let h = hvd();
    let doc: serde_json::Value = h
        .client()
        .call("GET", "/v1/openapi.json", None::<&()>)
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 15);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let p = path
                .replace("{name}", "no-such-vm")
                .replace("{pool}", "no-such-pool")
                .replace("{vol}", "no-such-vol")
                .replace("{target}", "vdz")
                .replace("{snap}", "no-such-snap")
                .replace("{net}", "no-such-net")
                .replace("{proto}", "tcp")
                .replace("{port}", "80")
                .replace("{key}", "no-such-vm")
                .replace("{mac}", "52:54:00:00:00:01")
                .replace("{bridge}", "no-such-br");
            let resp = h
                .client()
                .send(&method.to_uppercase(), &p, Some(b"{}"))
                .unwrap();
            let status = resp.status;
            if path == "/v1/events" {
                assert_eq!(
                    status, 200,
                    "the event stream never ends; its status is enough"
                );
                continue;
            }
            let mut body = String::new();
            std::io::Read::read_to_string(&mut resp.into_reader(), &mut body).unwrap();
            assert!(
                !body.contains("no such API path") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    let resp = h.client().send("GET", "/v1/nothing-here", None).unwrap();
    assert_eq!(resp.status, 404);
}
