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
            // Some answers are binary (a backup's tar, a volume's bytes).
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut resp.into_reader(), &mut raw).unwrap();
            let body = String::from_utf8_lossy(&raw);
            assert!(
                !body.contains("no such API path") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    let resp = h.client().send("GET", "/v1/nothing-here", None).unwrap();
    assert_eq!(resp.status, 404);
}

/// Every file and directory under `dir`, for "nothing was left behind" checks.
fn tree(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// Issue 9, item 6: hostile values in every field that reaches a file, argv, dnsmasq or nft
/// get a 4xx that names the field, and leave no file and no definition behind.
#[test]
fn hostile_values_in_every_field_are_refused_and_leave_nothing() {
    use serde_json::{json, Value};
    let h = hvd();
    let c = h.client();
    let ok = serde_json::to_value(h.tiny_spec("ok", VmOpts::default()).unwrap()).unwrap();
    let d = h.dir.display().to_string();
    let long = "x".repeat(5000);
    // A pool, a network and a VM to hang the nested cases on.
    c.pool_create(&api::CreatePoolRequest {
        name: "p".parse().unwrap(),
        path: h.dir.join("pool"),
        autostart: false,
    })
    .unwrap();
    c.send(
        "POST",
        "/v1/networks",
        Some(br#"{"name":"n","mode":"isolated","subnet":"10.77.0.0/24"}"#),
    )
    .unwrap();
    c.create(h.tiny_spec("vm", VmOpts::default()).unwrap(), false)
        .unwrap();
    c.vol_create(
        "p",
        &api::CreateVolRequest {
            name: "base.qcow2".parse().unwrap(),
            size: Some(model::Size(16 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let before = (
        tree(&h.dir),
        c.list().unwrap().len(),
        c.nets().unwrap().len(),
    );

    // Unique names, so that a case that wrongly succeeds does not make the next ones fail
    // for another reason.
    let n = std::cell::Cell::new(0);
    let uniq = |prefix: &str| {
        n.set(n.get() + 1);
        format!("{prefix}{}", n.get())
    };
    let vm = |edit: &dyn Fn(&mut Value)| {
        let mut s = ok.clone();
        s["name"] = json!(uniq("c"));
        edit(&mut s);
        json!({ "spec": s })
    };
    let mut cases: Vec<(&str, String, Value, &str)> = Vec::new();
    for name in [
        "a,b", "a\nb", "a\u{0}b", "../x", "a/b", "a=b", "-x", "", &long, "a b", "é",
    ] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["name"] = json!(name)),
            "name",
        ));
        cases.push((
            "POST",
            "/v1/networks".into(),
            json!({"name": name, "mode": "isolated"}),
            "name",
        ));
        cases.push((
            "POST",
            "/v1/pools".into(),
            json!({"name": name, "path": format!("{d}/pp")}),
            "name",
        ));
        cases.push((
            "POST",
            "/v1/pools/p/volumes".into(),
            json!({"name": name, "size": "1M"}),
            "name",
        ));
    }
    for path in [
        "relative/vmlinuz".to_string(),
        format!("{d}/../{}/x", d.rsplit('/').next().unwrap()),
        format!("{d}/a\nb"),
        format!("{d}/a\u{0}b"),
        format!("{d}/{long}"),
        format!("{d}/{}", "x/".repeat(2100)),
    ] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["kernel"]["path"] = json!(path)),
            "kernel",
        ));
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["kernel"]["initrd"] = json!(path)),
            "initrd",
        ));
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["disks"] = json!([{"path": path, "size": "16M"}])),
            "disks[0]",
        ));
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["cdrom"] = json!(path)),
            "cdrom",
        ));
        cases.push((
            "POST",
            "/v1/pools".into(),
            json!({"name": uniq("q"), "path": path}),
            "path",
        ));
        cases.push((
            "POST",
            "/v1/pools/p/import".into(),
            json!({"name": uniq("i"), "source": path, "format": "raw"}),
            "source",
        ));
    }
    for cmdline in ["a\u{0}b", "a\nb", "a\u{1b}b", &"x".repeat(2049)] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["kernel"]["cmdline"] = json!(cmdline)),
            "cmdline",
        ));
    }
    for mac in [
        "01:00:5e:00:00:01",
        "52:54:00:zz:00:01",
        "52:54:00:00:00:01,x",
        "52:54:00:00:00:01\n",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["nics"] = json!([{"type": "network", "source": "n", "mac": mac}])),
            "mac",
        ));
        cases.push((
            "POST",
            "/v1/networks/n/reservations".into(),
            json!({"mac": mac, "ip": "10.77.0.9"}),
            "mac",
        ));
    }
    for net in ["n,x", "n\nx", "../n"] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["nics"] = json!([{"type": "network", "source": net}])),
            "net",
        ));
    }
    for port in [
        json!(0),
        json!(80),
        json!(65536),
        json!(-1),
        json!("5901,x"),
    ] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["graphics"] = json!({"type": "vnc", "port": port})),
            "graphics",
        ));
    }
    for pw in ["a,b", "a\nb", "", "123456789"] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| s["graphics"] = json!({"type": "vnc", "password": pw})),
            "password",
        ));
    }
    for host in ["a,b", "a\nb", "a b", "-a", "a_b", &long, "a..b"] {
        cases.push((
            "POST",
            "/v1/networks/n/reservations".into(),
            json!({"mac": "52:54:00:00:00:09", "ip": "10.77.0.9", "hostname": host}),
            "hostname",
        ));
    }
    cases.push((
        "POST",
        "/v1/networks/n/reservations".into(),
        json!({"mac": "52:54:00:00:00:09", "ip": "10.1.2.3"}),
        "10.1.2.3",
    ));
    cases.push((
        "POST",
        "/v1/networks/n/reservations".into(),
        json!({"mac": "52:54:00:00:00:09", "ip": "10.77.0.9\n"}),
        "ip",
    ));
    for subnet in [
        "10.0.0.0/33",
        "10.0.0.0/24\n",
        "10.0.0.0/24,x",
        "300.0.0.0/24",
        "10.0.0.1/24",
    ] {
        cases.push((
            "POST",
            "/v1/networks".into(),
            json!({"name": uniq("s"), "mode": "isolated", "subnet": subnet}),
            "subnet",
        ));
    }
    for range in [
        "10.78.0.9-10.78.0.2",
        "10.78.0.5-10.79.0.9",
        "a-b",
        "10.78.0.5,10.78.0.9",
        "10.78.0.0-10.78.0.255",
    ] {
        cases.push(("POST", "/v1/networks".into(), json!({"name": uniq("s"), "mode": "isolated", "subnet": "10.78.0.0/24", "dhcp_range": range}), "dhcp"));
    }
    for bridge in ["br0\n", "br,0", "../br", &long, "br 0"] {
        cases.push((
            "POST",
            "/v1/networks".into(),
            json!({"name": uniq("s"), "mode": "bridge", "bridge": bridge}),
            "bridge",
        ));
    }
    for (proto, port) in [
        ("icmp", json!(80)),
        ("tcp", json!(0)),
        ("tcp", json!(70000)),
        ("tcp\n", json!(80)),
    ] {
        cases.push((
            "POST",
            "/v1/networks/n/forwards".into(),
            json!({"proto": proto, "host_port": port, "vm": "vm"}),
            if proto == "icmp" || proto.contains('\n') {
                "proto"
            } else {
                "port"
            },
        ));
    }

    for name in ["../s", "a,b", "a\nb", "", &long] {
        cases.push((
            "POST",
            "/v1/vms/vm/snapshots".into(),
            json!({ "name": name }),
            "name",
        ));
        cases.push((
            "POST",
            "/v1/pools/p/volumes/base.qcow2/clone".into(),
            json!({ "name": name }),
            "name",
        ));
    }
    for target in ["vd,a", "vda\n", "../vda", "hdz", "vdaa"] {
        cases.push((
            "POST",
            "/v1/vms".into(),
            vm(&|s| {
                s["disks"] =
                    json!([{"path": format!("{d}/t.qcow2"), "size": "16M", "target": target}])
            }),
            "target",
        ));
    }
    for backing in [
        "relative.qcow2",
        "/tmp/../etc/x",
        "/tmp/a\nb",
        "p/../x",
        "p/a\nb",
    ] {
        cases.push((
            "POST",
            "/v1/pools/p/volumes".into(),
            json!({ "name": uniq("o"), "backing": backing }),
            "backing",
        ));
    }
    let mut failures = Vec::new();
    for (method, path, body, field) in &cases {
        let resp = c
            .send(method, path, Some(body.to_string().as_bytes()))
            .unwrap();
        let status = resp.status;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut resp.into_reader(), &mut text).unwrap();
        if !(400..500).contains(&status) || !text.to_lowercase().contains(field) {
            failures.push(format!("{method} {path} {body}: {status} {text}"));
        }
    }
    let after = (
        tree(&h.dir),
        c.list().unwrap().len(),
        c.nets().unwrap().len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases were not refused as they should be:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(before.1, after.1, "no VM is defined");
    assert_eq!(before.2, after.2, "no network is defined");
    let new: Vec<_> = after.0.difference(&before.0).collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

/// Issue 10 (found by schemathesis against the TLS listener): a path parameter that does not
/// parse, and a method a path does not take, are answered in the API's JSON error format
/// (404/400 and 405 with Allow), not the router's plain text or a 403.
#[test]
fn bad_path_parameters_and_methods_get_json_errors() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts");
    let c = h.client();
    for (method, path, status, code) in [
        ("GET", "/v1/operations/null,null", 404, "not_found"),
        (
            "POST",
            "/v1/operations/99999999999999999999999/cancel",
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/networks/default/forwards/tcp/port",
            400,
            "invalid_argument",
        ),
        (
            "DELETE",
            "/v1/networks/default/forwards/tcp/70000",
            400,
            "invalid_argument",
        ),
        ("TRACE", "/v1/vms", 405, "method_not_allowed"),
        ("PATCH", "/v1/login", 405, "method_not_allowed"),
    ] {
        let r = c.send(method, path, None).expect("answer");
        assert_eq!(r.status, status, "{method} {path}");
        let mut body = String::new();
        std::io::Read::read_to_string(&mut r.into_reader(), &mut body).expect("body");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
        assert_eq!(v["error"]["code"], code, "{method} {path}: {body}");
    }
}

/// Issue 10: request bodies are bounded (volume data excepted): a 3 MiB JSON body is refused
/// with 413 and nothing is defined.
#[test]
fn request_bodies_are_size_limited() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts");
    let c = h.client();
    let big = format!(
        r#"{{"spec":{{"name":"big","kernel":{{"path":"/x","cmdline":"{}"}}}}}}"#,
        "a".repeat(3 << 20)
    );
    let r = c
        .send("POST", "/v1/vms", Some(big.as_bytes()))
        .expect("answer");
    assert_eq!(r.status, 413);
    assert!(c.list().expect("list").is_empty(), "nothing was defined");
}
