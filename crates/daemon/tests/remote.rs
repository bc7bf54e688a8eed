//! Issue 10: hvd over HTTPS with users, tokens, per-VM roles and an audit log, driven by real
//! TLS clients (curl, verifying hvd's minted CA) against a real hvd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use model::VmState;
use testkit::{TestHvd, VmOpts};

/// A free TCP port on loopback (the listener is closed before hvd binds it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Remote {
    h: TestHvd,
    base: String,
    ca: PathBuf,
}

fn remote() -> Remote {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = TestHvd::start_with_args(env!("CARGO_BIN_EXE_hvd").as_ref(), &["--listen", &listen])
        .expect("hvd starts");
    let ca = h.state_dir.join("tls/ca.pem");
    Remote {
        base: format!("https://localhost:{port}"),
        ca,
        h,
    }
}

/// One curl answer: its HTTP status (0 when no HTTP exchange happened) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    curl_exit: i32,
}

impl Remote {
    /// Calls the API with curl, verifying the server against hvd's CA. The token travels in a
    /// header file, not in argv.
    fn curl(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[&str],
    ) -> Reply {
        let out = self.h.dir.join("curl.out");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-o"])
            .arg(&out)
            .args(["-w", "%{http_code}"])
            .args(extra);
        if let Some(t) = token {
            let hdr = self.h.dir.join("auth.hdr");
            std::fs::write(&hdr, format!("Authorization: Bearer {t}\n")).expect("header file");
            cmd.arg("-H").arg(format!("@{}", hdr.display()));
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let _ = std::fs::remove_file(&out);
        let o = cmd
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl runs");
        Reply {
            status: String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read_to_string(&out).unwrap_or_default(),
            curl_exit: o.status.code().unwrap_or(-1),
        }
    }

    /// Makes a user with grants and a token, over the Unix socket as root.
    fn user(
        &self,
        name: &str,
        grants: &[(&str, Option<&str>)],
        expires_secs: Option<u64>,
    ) -> String {
        let c = self.h.client();
        c.user_add(&api::CreateUserRequest {
            name: name.into(),
            password: None,
        })
        .expect("user add");
        for (role, vm) in grants {
            c.user_grant(
                name,
                &api::GrantInfo {
                    role: role.to_string(),
                    vm: vm.map(str::to_string),
                },
            )
            .expect("grant");
        }
        c.token_create(&api::CreateTokenRequest {
            user: name.into(),
            expires_secs,
            description: Some("test".into()),
        })
        .expect("token")
        .token
    }
}

/// Every route in the OpenAPI document, with its placeholders filled in.
fn documented_routes(h: &TestHvd) -> Vec<(String, String)> {
    let doc: serde_json::Value = h
        .client()
        .call("GET", "/v1/openapi.json", None::<&()>)
        .expect("openapi");
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            let p = path
                .replace("{name}", "web-1")
                .replace("{pool}", "default")
                .replace("{vol}", "no-such-vol")
                .replace("{target}", "vdz")
                .replace("{snap}", "no-such-snap")
                .replace("{net}", "no-such-net")
                .replace("{proto}", "tcp")
                .replace("{port}", "80")
                .replace("{key}", "no-such-vm")
                .replace("{mac}", "52:54:00:00:00:01")
                .replace("{bridge}", "no-such-br")
                .replace("{user}", "nobody")
                .replace("{id}", "999999");
            out.push((method.to_uppercase(), p));
        }
    }
    assert!(out.len() > 60, "the document lists every route");
    out
}

#[test]
fn every_route_needs_credentials_and_a_viewer_may_change_nothing() {
    let r = remote();
    r.h.client()
        .create(
            r.h.tiny_spec("web-1", VmOpts::default()).expect("spec"),
            false,
        )
        .expect("define");
    let viewer = r.user("vera", &[("viewer", None)], None);
    for (method, path) in documented_routes(&r.h) {
        if path == "/v1/login" || (path == "/v1/session" && method == "POST") {
            // The routes without credentials: they hand them out (see the login tests).
            let anon = r.curl(None, &method, &path, Some("{}"), &[]);
            assert_eq!(anon.status, 400, "{anon:?}");
            continue;
        }
        if path == "/" || path.starts_with("/ui") {
            // The web UI's static files hold no data (see tests/web_ui.rs).
            let anon = r.curl(None, &method, &path, None, &[]);
            assert!(
                [200, 303, 404].contains(&anon.status),
                "{method} {path} without credentials: {anon:?}"
            );
            continue;
        }
        let anon = r.curl(None, &method, &path, Some("{}"), &[]);
        assert_eq!(
            anon.status, 401,
            "{method} {path} without credentials: {anon:?}"
        );
        assert!(
            anon.body.contains("\"unauthenticated\""),
            "{method} {path}: {anon:?}"
        );
        let bad = r.curl(Some("hvt_00"), &method, &path, Some("{}"), &[]);
        assert_eq!(
            bad.status, 401,
            "{method} {path} with an unknown token: {bad:?}"
        );
        // POST .../wait only reads (it takes its arguments as a body); anyone may log out.
        if method != "GET" && !path.ends_with("/wait") && path != "/v1/session" {
            let v = r.curl(Some(&viewer), &method, &path, Some("{}"), &[]);
            assert_eq!(v.status, 403, "{method} {path} as a viewer: {v:?}");
            assert!(v.body.contains("\"forbidden\""), "{method} {path}: {v:?}");
        }
    }
    // The viewer still sees what viewers may see, and nothing changed.
    let list = r.curl(Some(&viewer), "GET", "/v1/vms", None, &[]);
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.body.contains("\"web-1\""), "{list:?}");
    assert_eq!(
        r.h.client().info("web-1").expect("info").state,
        VmState::Shutoff
    );
    // Refusals of mutating calls are audited; the token is in no log.
    let audit =
        r.h.client()
            .audit(&api::AuditQuery {
                user: Some("vera".into()),
                ..Default::default()
            })
            .expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.object == "vm/web-1" && a.result == "forbidden"),
        "{audit:?}"
    );
    // Attempts without valid credentials are audited too, and no token is in the log.
    let all =
        r.h.client()
            .audit(&api::AuditQuery::default())
            .expect("audit");
    assert!(
        all.iter().any(|a| a.principal == "(bad token)"
            && a.object == "/v1/vms/web-1/start"
            && a.result == "unauthenticated"),
        "{all:?}"
    );
    assert!(
        all.iter().all(|a| !format!("{a:?}").contains(&viewer)),
        "the token is in the audit log"
    );
    assert!(
        !r.h.hvd_log().contains(&viewer),
        "the token leaked into hvd's log"
    );
}

#[test]
fn an_operator_of_web_globs_starts_web_1_and_cannot_see_db_1() {
    let r = remote();
    let c = r.h.client();
    for vm in ["web-1", "db-1"] {
        c.create(r.h.tiny_spec(vm, VmOpts::default()).expect("spec"), false)
            .expect("define");
    }
    let op = r.user("otto", &[("operator", Some("web-*"))], None);
    let list = r.curl(Some(&op), "GET", "/v1/vms", None, &[]);
    assert_eq!(list.status, 200, "{list:?}");
    let vms: api::VmList = serde_json::from_str(&list.body).expect("list");
    let names: Vec<&str> = vms.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-1"], "db-1 is not listed");
    for (method, path) in [
        ("GET", "/v1/vms/db-1"),
        ("POST", "/v1/vms/db-1/start"),
        ("GET", "/v1/vms/db-1/console/log"),
    ] {
        let a = r.curl(Some(&op), method, path, Some("{}"), &[]);
        assert_eq!(a.status, 404, "{method} {path}: {a:?}");
        assert!(a.body.contains("does not exist"), "{a:?}");
    }
    // Same answer as for a VM that really does not exist.
    let missing = r.curl(Some(&op), "GET", "/v1/vms/web-404", None, &[]);
    assert_eq!(missing.status, 404, "{missing:?}");
    // Operators power VMs but do not reconfigure them.
    let cfg = r.curl(
        Some(&op),
        "POST",
        "/v1/vms/web-1/autostart",
        Some(r#"{"enabled":true}"#),
        &[],
    );
    assert_eq!(cfg.status, 403, "{cfg:?}");
    let start = r.curl(Some(&op), "POST", "/v1/vms/web-1/start", Some("{}"), &[]);
    assert_eq!(start.status, 200, "{start:?}");
    r.h.wait_state("web-1", VmState::Running, Duration::from_secs(60))
        .expect("web-1 runs");
    assert_eq!(c.info("db-1").expect("info").state, VmState::Shutoff);
    // Its console opens from hvd's own origin (or a non-browser), not from another site.
    let ws = |origin: &str| {
        let o = format!("Origin: {origin}");
        let mut h = vec![
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "--max-time",
            "2",
        ];
        h.extend(["-H", o.as_str()]);
        r.curl(Some(&op), "GET", "/v1/vms/web-1/console", None, &h)
    };
    let evil = ws("https://evil.example");
    assert_eq!(evil.status, 403, "{evil:?}");
    assert!(evil.body.contains("origin"), "{evil:?}");
    let own = ws(&r.base);
    assert_eq!(own.status, 101, "{own:?}");
    // The start is in the audit log with who, from where, and its operation id.
    let audit = c
        .audit(&api::AuditQuery {
            vm: Some("web-1".into()),
            ..Default::default()
        })
        .expect("audit");
    let rec = audit
        .iter()
        .find(|a| a.principal == "otto" && a.action == "VM.PowerMgmt start")
        .unwrap_or_else(|| panic!("no audit record of the start: {audit:?}"));
    assert_eq!(rec.result, "ok");
    assert!(rec.source.starts_with("127.0.0.1:"), "{rec:?}");
    assert!(rec.operation_id.is_some(), "{rec:?}");
    let op_id = rec.operation_id.expect("id");
    assert_eq!(c.operation(op_id).expect("operation").target, "vm/web-1");
    c.destroy("web-1").expect("destroy");
}

#[test]
fn a_percent_encoded_vm_name_is_checked_as_the_name_it_decodes_to() {
    let r = remote();
    r.h.client()
        .create(
            r.h.tiny_spec("web--1", VmOpts::default()).expect("spec"),
            false,
        )
        .expect("define");
    // "web-%2D1" matches this glob as raw text, but names web--1, which does not.
    let eve = r.user("eve", &[("viewer", Some("web-*D1"))], None);
    let a = r.curl(Some(&eve), "GET", "/v1/vms/web-%2D1", None, &[]);
    assert_eq!(a.status, 404, "{a:?}");
    let a = r.curl(Some(&eve), "GET", "/v1/vms/web--1", None, &[]);
    assert_eq!(a.status, 404, "{a:?}");
}

#[test]
fn only_an_admin_of_all_vms_may_name_host_paths() {
    let r = remote();
    let c = r.h.client();
    let ada = r.user("ada", &[("admin", Some("web-*"))], None);
    let host_disk =
        serde_json::json!({ "spec": { "name": "web-2", "disks": [ { "path": "/etc/shadow" } ] } });
    let a = r.curl(
        Some(&ada),
        "POST",
        "/v1/vms",
        Some(&host_disk.to_string()),
        &[],
    );
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("host paths"), "{a:?}");
    assert!(c.info("web-2").is_err(), "nothing was defined");
    // Pool volumes are fine, and VMs outside the glob cannot be created.
    c.vol_create(
        "default",
        &serde_json::from_value(serde_json::json!({ "name": "w2.qcow2", "size": "16M" }))
            .expect("req"),
    )
    .expect("volume");
    let vol_disk = serde_json::json!({ "spec": { "name": "web-2", "disks": [ { "vol": "default/w2.qcow2" } ] } });
    let ok = r.curl(
        Some(&ada),
        "POST",
        "/v1/vms",
        Some(&vol_disk.to_string()),
        &[],
    );
    assert_eq!(ok.status, 201, "{ok:?}");
    let other = serde_json::json!({ "spec": { "name": "db-2" } });
    let no = r.curl(Some(&ada), "POST", "/v1/vms", Some(&other.to_string()), &[]);
    assert_eq!(no.status, 403, "{no:?}");
    // Attaching a host file or inserting host media is refused the same way.
    let attach = r.curl(
        Some(&ada),
        "POST",
        "/v1/vms/web-2/disks",
        Some(r#"{"disk":{"path":"/etc/passwd"}}"#),
        &[],
    );
    assert_eq!(attach.status, 403, "{attach:?}");
    let media = r.curl(
        Some(&ada),
        "POST",
        "/v1/vms/web-2/media",
        Some(r#"{"source":"/etc/passwd"}"#),
        &[],
    );
    assert_eq!(media.status, 403, "{media:?}");
    let spec = c.info("web-2").expect("info").spec.expect("spec");
    assert_eq!(spec.disks.len(), 1);
    // Root on the socket may; the glob admin may then edit that VM, keeping its paths but
    // adding none.
    let spec = r.h.tiny_spec("web-3", VmOpts::default()).expect("spec");
    let mut spec = c
        .create(spec, false)
        .expect("root defines with host paths")
        .spec
        .expect("spec");
    spec.vcpus = 2;
    let same = r.curl(
        Some(&ada),
        "PUT",
        "/v1/vms/web-3",
        Some(&serde_json::to_string(&spec).expect("json")),
        &[],
    );
    assert_eq!(same.status, 200, "{same:?}");
    spec.disks.push("path=/etc/shadow".parse().expect("disk"));
    let more = r.curl(
        Some(&ada),
        "PUT",
        "/v1/vms/web-3",
        Some(&serde_json::to_string(&spec).expect("json")),
        &[],
    );
    assert_eq!(more.status, 403, "{more:?}");
    assert_eq!(
        c.info("web-3")
            .expect("info")
            .spec
            .expect("spec")
            .disks
            .len(),
        0
    );
}

#[test]
fn revoked_and_expired_tokens_are_refused_at_once() {
    let r = remote();
    let c = r.h.client();
    let t = r.user("rita", &[("viewer", None)], None);
    assert_eq!(r.curl(Some(&t), "GET", "/v1/vms", None, &[]).status, 200);
    let id = c
        .tokens()
        .expect("tokens")
        .into_iter()
        .find(|x| x.user == "rita")
        .expect("listed")
        .id;
    let listed = serde_json::to_string(&c.tokens().expect("tokens")).expect("json");
    assert!(!listed.contains(&t), "token lists never show secrets");
    c.token_revoke(&id).expect("revoke");
    let after = r.curl(Some(&t), "GET", "/v1/vms", None, &[]);
    assert_eq!(after.status, 401, "{after:?}");

    let short = c
        .token_create(&api::CreateTokenRequest {
            user: "rita".into(),
            expires_secs: Some(1),
            description: None,
        })
        .expect("token");
    assert_eq!(
        r.curl(Some(&short.token), "GET", "/v1/vms", None, &[])
            .status,
        200
    );
    // Wait out its lifetime (until the deadline hvd gave it, not a poll).
    let expires =
        std::time::UNIX_EPOCH + Duration::from_millis(short.info.expires_ms.expect("expires") + 50);
    if let Ok(left) = expires.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
    let short = short.token;
    let late = r.curl(Some(&short), "GET", "/v1/vms", None, &[]);
    assert_eq!(late.status, 401, "{late:?}");

    // A removed user's tokens die with them.
    let t2 = c
        .token_create(&api::CreateTokenRequest {
            user: "rita".into(),
            expires_secs: None,
            description: None,
        })
        .expect("token")
        .token;
    c.user_remove("rita").expect("remove");
    assert_eq!(r.curl(Some(&t2), "GET", "/v1/vms", None, &[]).status, 401);
}

#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_succeed() {
    let r = remote();
    let t = r.user("tess", &[("viewer", None)], None);
    let old = r.curl(
        Some(&t),
        "GET",
        "/v1/ping",
        None,
        &["--tlsv1.1", "--tls-max", "1.1"],
    );
    assert_eq!(old.status, 0, "no HTTP exchange over TLS 1.1: {old:?}");
    assert_ne!(old.curl_exit, 0, "{old:?}");
    for v in ["1.2", "1.3"] {
        let flag = format!("--tlsv{v}");
        let ok = r.curl(Some(&t), "GET", "/v1/ping", None, &[&flag, "--tls-max", v]);
        assert_eq!(ok.status, 200, "TLS {v}: {ok:?}");
    }
    // Header floods are cut off.
    let many: Vec<String> = (0..80).map(|i| format!("X-Pad-{i}: x")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    let flood = r.curl(Some(&t), "GET", "/v1/ping", None, &args);
    assert_eq!(flood.status, 431, "{flood:?}");
    // The certificate curl verified is the one hv host cert reports.
    let cert = r.h.client().host_cert().expect("cert");
    let fp = fingerprint_of(&r.h.state_dir.join("tls/server.pem"));
    assert_eq!(cert.fingerprint, fp);
}

/// The SHA-256 fingerprint of a PEM file's first certificate, computed by openssl.
fn fingerprint_of(pem: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&o.stdout);
    let hex = text
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "")
        .to_lowercase();
    format!("SHA256:{hex}")
}

#[test]
fn the_unix_socket_is_for_root_and_the_admin_group_only() {
    // Root's calls over the socket work as before and are audited under its uid.
    let r = remote();
    let c = r.h.client();
    c.create(
        r.h.tiny_spec("s-1", VmOpts::default()).expect("spec"),
        false,
    )
    .expect("define");
    let audit = c.audit(&api::AuditQuery::default()).expect("audit");
    assert!(
        audit.iter().any(|a| a.principal == "uid:0"
            && a.source == "unix"
            && a.object == "vm/s-1"
            && a.operation_id.is_some()),
        "{audit:?}"
    );
    // Another uid is refused, even when the socket lets it connect.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&r.h.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "--unix-socket",
        ])
        .arg(&r.h.socket)
        .args(["-w", " %{http_code}", "http://hv/v1/vms"])
        .output()
        .expect("setpriv runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.ends_with(" 403"), "{out}");
    assert!(out.contains("uid 65534 may not use"), "{out}");
}

/// `curl` over the Unix socket as another uid, gid and supplementary groups.
fn curl_as(socket: &Path, uid: u32, gid: u32, groups: Option<u32>) -> (i32, String) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    match groups {
        Some(g) => cmd.arg(format!("--groups={g}")),
        None => cmd.arg("--clear-groups"),
    };
    let o = cmd
        .args(["curl", "-s", "--unix-socket"])
        .arg(socket)
        .args(["-w", " %{http_code}", "http://hv/v1/vms"])
        .output()
        .expect("setpriv runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn admin_group_members_use_the_socket_like_root() {
    // nogroup (65534) stands in for an admin group: it exists on every Debian host.
    let h = TestHvd::start_with_args(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &["--admin-group", "nogroup"],
    )
    .expect("hvd starts");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&h.socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    // Primary group, then supplementary group.
    let (_, out) = curl_as(&h.socket, 65534, 65534, None);
    assert!(out.ends_with(" 200"), "{out}");
    let (_, out) = curl_as(&h.socket, 65534, 100, Some(65534));
    assert!(out.ends_with(" 200"), "{out}");
    // Anyone else cannot even connect.
    let (code, out) = curl_as(&h.socket, 65534, 100, None);
    assert_ne!(code, 0, "{out}");
    assert!(!out.ends_with(" 200"), "{out}");
    h.client()
        .create(h.tiny_spec("g-1", VmOpts::default()).expect("spec"), false)
        .expect("root still works");
    let bad = TestHvd::start_with_args(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &["--admin-group", "no-such-group-hv"],
    );
    let err = format!("{:#}", bad.err().expect("refused"));
    assert!(
        err.contains("there is no group \"no-such-group-hv\""),
        "{err}"
    );
}

/// Waits (bounded) until `f` holds; false on timeout.
fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn events_and_operations_show_only_the_vms_a_caller_may_see() {
    let r = remote();
    let c = r.h.client();
    let ivy = r.user("ivy", &[("viewer", Some("web-*"))], None);
    let hdr = r.h.dir.join("ivy.hdr");
    std::fs::write(&hdr, format!("Authorization: Bearer {ivy}\n")).expect("header file");
    let out = r.h.dir.join("events.out");
    let mut curl = Command::new("curl")
        .args(["-s", "-N", "--cacert"])
        .arg(&r.ca)
        .arg("-H")
        .arg(format!("@{}", hdr.display()))
        .arg("-o")
        .arg(&out)
        .arg(format!("{}/v1/events", r.base))
        .spawn()
        .expect("curl runs");
    let seen = |vm: &str| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(&format!("\"vm\":\"{vm}\""))
    };
    // Define web VMs until one shows up: then the stream is live.
    let mut live = false;
    for i in 0..20 {
        let name = format!("web-a{i}");
        c.create(
            r.h.tiny_spec(&name, VmOpts::default()).expect("spec"),
            false,
        )
        .expect("define");
        if until(Duration::from_secs(1), || seen(&name)) {
            live = true;
            break;
        }
    }
    assert!(live, "the event stream never showed a web VM");
    for vm in ["db-9", "web-9"] {
        c.create(r.h.tiny_spec(vm, VmOpts::default()).expect("spec"), false)
            .expect("define");
    }
    let got_web = until(Duration::from_secs(10), || seen("web-9"));
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(got_web, "web-9's event arrived");
    assert!(!seen("db-9"), "db-9's event is hidden from ivy");

    let ops = r.curl(Some(&ivy), "GET", "/v1/operations", None, &[]);
    assert_eq!(ops.status, 200, "{ops:?}");
    let ops: api::OperationList = serde_json::from_str(&ops.body).expect("operations");
    assert!(
        ops.operations.iter().any(|o| o.target == "vm/web-9"),
        "{ops:?}"
    );
    assert!(
        ops.operations
            .iter()
            .all(|o| o.target.starts_with("vm/web-")),
        "{ops:?}"
    );
    let db_op = c
        .operations()
        .expect("operations")
        .into_iter()
        .find(|o| o.target == "vm/db-9")
        .expect("root sees db-9's operation");
    let one = r.curl(
        Some(&ivy),
        "GET",
        &format!("/v1/operations/{}", db_op.id),
        None,
        &[],
    );
    assert_eq!(one.status, 404, "{one:?}");
    // Nor the operations on networks and pools, which only admins of all VMs see.
    c.vol_create(
        "default",
        &serde_json::from_value(
            serde_json::json!({ "name": "x.raw", "size": "1M", "format": "raw" }),
        )
        .expect("req"),
    )
    .expect("volume");
    let vol_op = c
        .operations()
        .expect("operations")
        .into_iter()
        .find(|o| o.target.starts_with("volume/"))
        .expect("the volume's operation");
    let one = r.curl(
        Some(&ivy),
        "GET",
        &format!("/v1/operations/{}", vol_op.id),
        None,
        &[],
    );
    assert_eq!(one.status, 403, "{one:?}");
}

#[test]
fn twenty_wrong_passwords_earn_a_backoff_and_every_attempt_is_audited() {
    let r = remote();
    let c = r.h.client();
    c.user_add(&api::CreateUserRequest {
        name: "lou".into(),
        password: Some("right one".into()),
    })
    .expect("user");
    c.user_grant(
        "lou",
        &api::GrantInfo {
            role: "viewer".into(),
            vm: None,
        },
    )
    .expect("grant");
    let login = |password: &str| {
        let body = serde_json::json!({ "user": "lou", "password": password }).to_string();
        r.curl(None, "POST", "/v1/login", Some(&body), &[])
    };
    // A good login hands out a token that works.
    let ok = login("right one");
    assert_eq!(ok.status, 200, "{ok:?}");
    let t: api::TokenCreated = serde_json::from_str(&ok.body).expect("token");
    assert!(t.info.expires_ms.is_some(), "login tokens expire");
    assert_eq!(
        r.curl(Some(&t.token), "GET", "/v1/vms", None, &[]).status,
        200
    );
    // Twenty wrong ones: the first five are checked, then hvd makes the caller wait.
    let statuses: Vec<u16> = (0..20)
        .map(|i| login(&format!("guess {i}")).status)
        .collect();
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password waits out the backoff.
    let blocked = login("right one");
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert!(blocked.body.contains("try again in"), "{blocked:?}");
    let audit = c
        .audit(&api::AuditQuery {
            user: Some("lou".into()),
            ..Default::default()
        })
        .expect("audit");
    let logins: Vec<&str> = audit
        .iter()
        .filter(|a| a.action == "Login")
        .map(|a| a.result.as_str())
        .collect();
    assert_eq!(logins.len(), 22, "{logins:?}");
    assert_eq!(
        logins.iter().filter(|r| **r == "unauthenticated").count(),
        5
    );
    assert_eq!(
        logins.iter().filter(|r| **r == "too_many_attempts").count(),
        16
    );
    assert!(
        audit.iter().all(|a| !format!("{a:?}").contains("guess")),
        "no password is in the audit log"
    );
    // An unknown user is refused the same way.
    let body = serde_json::json!({ "user": "nobody", "password": "x" }).to_string();
    let unknown = r.curl(None, "POST", "/v1/login", Some(&body), &[]);
    assert_eq!(
        unknown.status, 429,
        "the source address is backing off too: {unknown:?}"
    );
}

/// Makes a self-signed certificate for localhost with openssl, as a user would bring one.
fn openssl_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cert, key)
}

#[test]
fn a_user_supplied_certificate_is_served_and_bad_ones_are_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("hv-usercert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = openssl_cert(&dir, "mine");
    let (_, other_key) = openssl_cert(&dir, "other");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hvd: &Path = env!("CARGO_BIN_EXE_hvd").as_ref();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let h = TestHvd::start_with_args(
        hvd,
        &["--listen", &listen, "--tls-cert", &c, "--tls-key", &k],
    )
    .expect("hvd starts");
    assert_eq!(
        h.client().host_cert().expect("cert").fingerprint,
        fingerprint_of(&cert)
    );
    assert!(
        !h.state_dir.join("tls").exists(),
        "hvd mints nothing when given a certificate"
    );
    let r = Remote {
        base: format!("https://localhost:{port}"),
        ca: cert.clone(),
        h,
    };
    let anon = r.curl(None, "GET", "/v1/ping", None, &[]);
    assert_eq!(
        anon.status, 401,
        "curl verified the user's certificate: {anon:?}"
    );
    // Another port is taken: hvd says so and does not start.
    let taken = TestHvd::start_with_args(hvd, &["--listen", &listen]);
    let err = format!("{:#}", taken.err().expect("refused"));
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
    // A key that is not the certificate's.
    let ok = other_key.display().to_string();
    let bad = TestHvd::start_with_args(
        hvd,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &c,
            "--tls-key",
            &ok,
        ],
    );
    let err = format!("{:#}", bad.err().expect("refused"));
    assert!(err.contains("are not a certificate and its key"), "{err}");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_browser_session_is_an_httponly_cookie_and_its_changes_need_the_csrf_header() {
    let r = remote();
    let c = r.h.client();
    c.create(
        r.h.tiny_spec("web-1", VmOpts::default()).expect("spec"),
        false,
    )
    .expect("define");
    c.user_add(&api::CreateUserRequest {
        name: "bea".into(),
        password: Some("pw of bea".into()),
    })
    .expect("user");
    c.user_grant(
        "bea",
        &api::GrantInfo {
            role: "operator".into(),
            vm: None,
        },
    )
    .expect("grant");
    let jar = r.h.dir.join("cookies.txt");
    let jar_s = jar.display().to_string();
    let headers = r.h.dir.join("login.headers");
    let headers_s = headers.display().to_string();
    let body = serde_json::json!({ "user": "bea", "password": "pw of bea" }).to_string();
    let login = r.curl(
        None,
        "POST",
        "/v1/session",
        Some(&body),
        &["-c", &jar_s, "-D", &headers_s],
    );
    assert_eq!(login.status, 200, "{login:?}");
    let session: api::SessionInfo = serde_json::from_str(&login.body).expect("session");
    let set_cookie = std::fs::read_to_string(&headers).expect("headers");
    let line = set_cookie
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: hv_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie: {set_cookie}"));
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(line.contains(attr), "{line}");
    }
    assert!(
        !login.body.contains("hvt_"),
        "scripts never see the session token: {login:?}"
    );
    let with = |method: &str, path: &str, csrf: Option<&str>| {
        let mut args = vec!["-b", jar_s.as_str()];
        let h = csrf.map(|v| format!("X-HV-CSRF: {v}"));
        if let Some(h) = &h {
            args.extend(["-H", h.as_str()]);
        }
        r.curl(None, method, path, Some("{}"), &args)
    };
    assert_eq!(
        with("GET", "/v1/vms", None).status,
        200,
        "reads need no CSRF header"
    );
    let forged = with("POST", "/v1/vms/web-1/pause", None);
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(
        forged.body.contains("X-HV-CSRF") || forged.body.contains("x-hv-csrf"),
        "{forged:?}"
    );
    let wrong = with(
        "POST",
        "/v1/vms/web-1/pause",
        Some("0123456789abcdef0123456789abcdef"),
    );
    assert_eq!(wrong.status, 403, "{wrong:?}");
    // With the header the change is authorized (and then refused by the VM's state).
    let real = with("POST", "/v1/vms/web-1/pause", Some(&session.csrf));
    assert_eq!(real.status, 409, "{real:?}");
    assert!(real.body.contains("invalid_state"), "{real:?}");
    // A console WebSocket cannot send that header: its Origin must be hvd's own instead.
    let ws = |origin: Option<&str>| {
        let o = origin.map(|o| format!("Origin: {o}"));
        let mut h = vec![
            "-b",
            jar_s.as_str(),
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "--max-time",
            "2",
        ];
        if let Some(o) = &o {
            h.extend(["-H", o.as_str()]);
        }
        r.curl(None, "GET", "/v1/vms/web-1/console", None, &h)
    };
    assert_eq!(ws(None).status, 403, "a cookie WebSocket without Origin");
    assert_eq!(ws(Some("https://evil.example")).status, 403);
    let own = ws(Some(&r.base));
    assert_ne!(own.status, 403, "{own:?}");
    assert_ne!(own.status, 401, "{own:?}");
    // Logging out ends the session at once.
    let out = with("DELETE", "/v1/session", Some(&session.csrf));
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(with("GET", "/v1/vms", None).status, 401);
    let audit = c
        .audit(&api::AuditQuery {
            user: Some("bea".into()),
            ..Default::default()
        })
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "Login" && a.result == "ok"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.action.starts_with("Logout")),
        "{audit:?}"
    );
}

/// Issue 10: revoking a token ends the console session it opened, at once; a removed user's
/// sessions end too.
#[test]
fn a_revoked_token_closes_its_open_console() {
    let r = remote();
    let c = r.h.client();
    c.create(
        r.h.tiny_spec("web-1", VmOpts::default()).expect("spec"),
        true,
    )
    .expect("start");
    r.h.wait_ready("web-1").expect("ready");
    let fingerprint = c.host_cert().expect("cert").fingerprint;
    for how in ["revoke the token", "remove the user"] {
        let user = if how == "revoke the token" {
            "tina"
        } else {
            "ulla"
        };
        let token = r.user(user, &[("operator", Some("web-*"))], None);
        let remote = client::Client::https(&r.base, &token, Some(&fingerprint)).expect("client");
        let mut ws = remote.console("web-1").expect("console opens");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        if how == "revoke the token" {
            let id = c
                .tokens()
                .expect("tokens")
                .into_iter()
                .find(|t| t.user == user)
                .expect("token")
                .id;
            c.token_revoke(&id).expect("revoke");
        } else {
            c.user_remove(user).expect("remove");
        }
        let mut seen = String::new();
        let closed = loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => seen.push_str(&t),
                Ok(tungstenite::Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(tungstenite::Message::Close(_)) => break true,
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break true
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "{how}: the console stayed open: {seen:?}");
        assert!(seen.contains("access was revoked"), "{how}: {seen:?}");
        // Attaching and the forced detach are both in the audit log.
        let audit = c
            .audit(&api::AuditQuery {
                user: Some(user.into()),
                vm: None,
                since_ms: None,
            })
            .expect("audit");
        let actions: Vec<String> = audit
            .iter()
            .map(|a| format!("{} {}", a.action, a.result))
            .collect();
        assert!(
            actions.iter().any(|a| a.contains("console attach ok"))
                && actions.iter().any(|a| a.contains("console detach revoked")),
            "{how}: {actions:?}"
        );
    }
    // A local admin's console is not affected.
    let mut ws = c.console("web-1").expect("local console");
    ws.send(tungstenite::Message::Binary(b"\n".to_vec().into()))
        .expect("type");
    c.destroy("web-1").expect("destroy");
}

/// Issue 10: an outside fuzzer that reads the OpenAPI document (schemathesis, installed by
/// `.ci/run`) finds nothing against the TLS listener with an admin token: no 5xx, no
/// schema-valid request rejected, no answer that breaks its schema, no undocumented status
/// or content type. GET everywhere; negative mode (invalid requests) for the mutating routes
/// that do not change the host (networks, host bridges, pool directories, imports) nor revoke
/// the fuzzer's own credentials (users, tokens, sessions). Streams and WebSockets are not
/// plain HTTP and are left out. Fixed seeds, so a run is repeatable.
#[test]
fn schemathesis_finds_nothing_against_the_tls_listener() {
    let r = remote();
    let c = r.h.client();
    c.create(
        r.h.tiny_spec("web-1", VmOpts::default()).expect("spec"),
        false,
    )
    .expect("define");
    let token = r.user("fuzz", &[("admin", None)], None);
    let spec = r.h.dir.join("openapi.json");
    let mut body = String::new();
    std::io::Read::read_to_string(
        &mut c
            .send("GET", "/v1/openapi.json", None)
            .expect("openapi")
            .into_reader(),
        &mut body,
    )
    .expect("read");
    std::fs::write(&spec, body).expect("write");
    let auth = format!("Authorization: Bearer {token}");
    let runs: [&[&str]; 2] = [
        &[
            "--include-method",
            "GET",
            "--exclude-path-regex",
            "^/v1/events$|/(console|stream|vnc|tunnel/[^/]+)$",
            "--max-examples",
            "20",
        ],
        &[
            "--mode",
            "negative",
            "--exclude-method",
            "GET",
            "--exclude-path-regex",
            "^/v1/(host|networks|users|tokens|session|login|pools$|pools/[^/]+/import)|/(console|stream|vnc)$",
            "--max-examples",
            "15",
        ],
    ];
    for args in runs {
        let out = Command::new("python3")
            .current_dir(&r.h.dir)
            .args(["-m", "schemathesis.cli", "run"])
            .arg(&spec)
            .args(["--url", &r.base, "-H", &auth, "--tls-verify"])
            .arg(&r.ca)
            .args(["--seed", "1", "--no-color"])
            // A keep-alive connection hvd closed as idle (header read timeout) just as the
            // fuzzer reused it is a network error a real client retries; a request that makes
            // hvd fail fails every retry.
            .args(["--request-retries", "2"])
            .args(args)
            .output()
            .expect("python3 runs (.ci/run installs schemathesis with pip)");
        let text = String::from_utf8_lossy(&out.stdout).replace(&token, "[token]");
        assert!(
            out.status.success(),
            "schemathesis {args:?} found problems:\n{text}"
        );
        assert!(
            text.contains("passed"),
            "schemathesis ran no test case:\n{text}"
        );
    }
}

/// Issue 11: a viewer sees a VM's screen but cannot type on it; an operator can; booting
/// from the medium needs power and media rights, which an operator holds.
#[test]
fn a_viewer_takes_screenshots_and_an_operator_sends_keys() {
    let r = remote();
    let c = r.h.client();
    c.create(
        r.h.tiny_spec("web-1", VmOpts::default()).expect("spec"),
        true,
    )
    .expect("create");
    r.h.wait_ready("web-1").expect("ready");
    let viewer = r.user("vic", &[("viewer", Some("web-*"))], None);
    let operator = r.user("opal", &[("operator", Some("web-*"))], None);
    let shot = r.curl(Some(&viewer), "GET", "/v1/vms/web-1/screenshot", None, &[]);
    assert_eq!(shot.status, 200, "{shot:?}");
    let png = std::fs::read(r.h.dir.join("curl.out")).expect("body");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let keys = r#"{"keys": ["esc"]}"#;
    let v = r.curl(Some(&viewer), "POST", "/v1/vms/web-1/keys", Some(keys), &[]);
    assert_eq!(v.status, 403, "{v:?}");
    let o = r.curl(
        Some(&operator),
        "POST",
        "/v1/vms/web-1/keys",
        Some(keys),
        &[],
    );
    assert_eq!((o.status, o.body.as_str()), (200, r#"{"sent":1}"#), "{o:?}");
    // Past the rights: refused for what the VM is (a direct kernel boot).
    let b = r.curl(
        Some(&operator),
        "POST",
        "/v1/vms/web-1/media/boot",
        Some("{}"),
        &[],
    );
    assert_eq!(b.status, 400, "{b:?}");
    assert!(b.body.contains("kernel"), "{b:?}");
    let b = r.curl(
        Some(&viewer),
        "POST",
        "/v1/vms/web-1/media/boot",
        Some("{}"),
        &[],
    );
    assert_eq!(b.status, 403, "{b:?}");
    c.destroy("web-1").expect("destroy");
}
