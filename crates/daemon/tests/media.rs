//! Issue 11: virtual media scoped to one VM, as on an IP-KVM switch. An operator granted on
//! one VM lists the media for it and uploads a new one over the real TLS listener (curl,
//! verifying hvd's CA), and its running guest sees the medium; nothing of other VMs is shown
//! or reachable, and a failed upload leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{TestHvd, VmOpts};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Remote {
    h: TestHvd,
    base: String,
    ca: PathBuf,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
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

impl Remote {
    /// Calls the API with curl (the token in a header file, not in argv).
    fn curl(&self, token: &str, method: &str, path: &str, extra: &[&str]) -> Reply {
        let out = self.h.dir.join("curl.out");
        let hdr = self.h.dir.join("auth.hdr");
        std::fs::write(&hdr, format!("Authorization: Bearer {token}\n")).expect("header file");
        let _ = std::fs::remove_file(&out);
        let o = Command::new("curl")
            .args(["-s", "--max-time", "60", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-o"])
            .arg(&out)
            .args(["-w", "%{http_code}", "-H"])
            .arg(format!("@{}", hdr.display()))
            .args(extra)
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl runs");
        Reply {
            status: String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read_to_string(&out).unwrap_or_default(),
        }
    }

    /// `PUT .../media/upload` of `file`.
    fn upload(&self, token: &str, vm: &str, query: &str, file: &Path) -> Reply {
        let data = format!("@{}", file.display());
        self.curl(
            token,
            "PUT",
            &format!("/v1/vms/{vm}/media/upload?{query}"),
            &[
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &data,
            ],
        )
    }

    fn user(&self, name: &str, role: &str, vm: &str) -> String {
        let c = self.h.client();
        c.user_add(&api::CreateUserRequest {
            name: name.into(),
            password: None,
        })
        .expect("user add");
        c.user_grant(
            name,
            &api::GrantInfo {
                role: role.to_string(),
                vm: Some(vm.to_string()),
            },
        )
        .expect("grant");
        c.token_create(&api::CreateTokenRequest {
            user: name.into(),
            expires_secs: None,
            description: Some("test".into()),
        })
        .expect("token")
        .token
    }

    /// The files in the default pool, hidden ones (upload temp files) included.
    fn pool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.h.state_dir.join("pools/default"))
            .expect("pool dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn an_operator_of_one_vm_uploads_a_medium_its_guest_sees_and_nothing_else() {
    let r = remote();
    let c = r.h.client();
    // VM a: a running tiny guest with an empty IDE CD-ROM drive.
    let mut spec = r.h.tiny_spec("a", VmOpts::default()).expect("spec");
    let k = spec.kernel.as_mut().expect("kernel");
    k.cmdline = Some(format!(
        "{} {}",
        testkit::guest::CMDLINE,
        testkit::guest::IDE_FLAG
    ));
    spec.cdrom = Some(PathBuf::new());
    c.create(spec, true).expect("create a");
    // VM b (stopped) has a raw pool volume as its disk: never a medium for anyone.
    let mut b = r.h.tiny_spec("b", VmOpts::default()).expect("spec");
    b.disks.push(
        "vol=default/b-disk.img,size=1M,format=raw"
            .parse()
            .expect("disk"),
    );
    c.create(b, false).expect("create b");
    let olga = r.user("olga", "operator", "a");
    let vera = r.user("vera", "viewer", "a");
    r.h.wait_ready("a").expect("a is ready");

    let ch = r.curl(&olga, "GET", "/v1/vms/a/media/choices", &[]);
    assert_eq!(ch.status, 200, "{ch:?}");
    let choices: api::MediaChoices = serde_json::from_str(&ch.body).expect("choices");
    assert_eq!(choices.current, None);
    assert!(choices.volumes.is_empty(), "b's disk is no medium: {ch:?}");
    assert!(
        choices.upload_pools.iter().any(|p| p.pool == "default"),
        "{ch:?}"
    );
    assert!(!ch.body.contains("/pools/"), "no host paths: {ch:?}");
    // Nor can it be inserted by name.
    let ins = r.curl(
        &olga,
        "POST",
        "/v1/vms/a/media",
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"{"source":"default/b-disk.img"}"#,
        ],
    );
    assert_eq!(ins.status, 400, "{ins:?}");
    assert!(ins.body.contains("a VM's disk"), "{ins:?}");

    // Upload a real ISO and insert it: the guest reads its first sector.
    let iso = testkit::iso::installer_iso().expect("iso").iso;
    let iso_bytes = std::fs::read(&iso).expect("iso bytes");
    let up = r.upload(&olga, "a", "pool=default&volume=cd.iso&insert=true", &iso);
    assert_eq!(up.status, 200, "{up:?}");
    let m: api::MediumInfo = serde_json::from_str(&up.body).expect("medium");
    assert_eq!(
        (
            m.pool.as_str(),
            m.volume.as_str(),
            m.size_bytes,
            m.iso9660,
            m.inserted
        ),
        ("default", "cd.iso", iso_bytes.len() as u64, true, true)
    );
    let stored = r.h.state_dir.join("pools/default/cd.iso");
    assert_eq!(std::fs::read(&stored).expect("volume"), iso_bytes);
    let read = |want: &str, step: &str| {
        let cmd = format!(
            "for i in $(seq 30); do n=$(dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | wc -c); [ $n = {want} ] && break; sleep 0.2; done; echo sr0-$n-{step}"
        );
        r.h.run_in_guest("a", &cmd, &format!("sr0-[0-9]+-{step}"))
            .expect("guest command")
    };
    assert_eq!(read("2048", "in"), "sr0-2048-in");
    let ch = r.curl(&olga, "GET", "/v1/vms/a/media/choices", &[]);
    let choices: api::MediaChoices = serde_json::from_str(&ch.body).expect("choices");
    assert_eq!(choices.current.as_deref(), Some("default/cd.iso"));
    assert_eq!(choices.volumes.len(), 1, "{ch:?}");
    assert!(choices.volumes[0].inserted && choices.volumes[0].iso9660);
    // The viewer sees the medium in the VM's definition but cannot touch media.
    let vinfo = r.curl(&vera, "GET", "/v1/vms/a", &[]);
    assert!(vinfo.body.contains("default/cd.iso"), "{vinfo:?}");
    let ej = r.curl(&olga, "POST", "/v1/vms/a/media/eject", &[]);
    assert_eq!(ej.status, 200, "{ej:?}");
    assert_eq!(read("0", "out"), "sr0-0-out");

    // The viewer may not list or upload; the operator sees no VM b.
    let v = r.curl(&vera, "GET", "/v1/vms/a/media/choices", &[]);
    assert_eq!(v.status, 403, "{v:?}");
    let v = r.upload(&vera, "a", "pool=default&volume=v.iso", &iso);
    assert_eq!(v.status, 403, "{v:?}");
    let o = r.curl(&olga, "GET", "/v1/vms/b/media/choices", &[]);
    assert_eq!(o.status, 404, "{o:?}");
    let o = r.upload(&olga, "b", "pool=default&volume=o.iso", &iso);
    assert_eq!(o.status, 404, "{o:?}");

    // An existing name is refused and left untouched.
    let small = r.h.dir.join("small.img");
    std::fs::write(&small, b"not the iso").expect("small");
    let again = r.upload(&olga, "a", "pool=default&volume=cd.iso", &small);
    assert_eq!(again.status, 409, "{again:?}");
    assert!(again.body.contains("never replaces"), "{again:?}");
    assert_eq!(std::fs::read(&stored).expect("volume"), iso_bytes);
    let disk = r.upload(&olga, "a", "pool=default&volume=b-disk.img", &small);
    assert_eq!(disk.status, 409, "{disk:?}");

    // Bad names, each with a clear error, and nothing created.
    let before = r.pool_files();
    let long = format!("pool=default&volume={}.iso", "x".repeat(300));
    for (query, part) in [
        ("pool=default&volume=..%2Fx.iso", "medium name"),
        ("pool=default&volume=", "needs a name"),
        (long.as_str(), "medium name"),
        ("pool=default&volume=x.qcow2", "must end in .iso or .img"),
        ("pool=nope&volume=x.iso", "pool nope does not exist"),
        ("volume=x.iso", "missing pool"),
    ] {
        let bad = r.upload(&olga, "a", query, &small);
        assert!(
            [400, 404].contains(&bad.status) && bad.body.contains(part),
            "{query}: {bad:?}"
        );
    }
    assert_eq!(r.pool_files(), before);

    // A client that announces more than it sends and hangs up leaves no volume and no temp
    // file.
    let hung = r.curl(
        &olga,
        "PUT",
        "/v1/vms/a/media/upload?pool=default&volume=hung.iso",
        &[
            "--max-time",
            "3",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Content-Length: 1000000",
            "--data-binary",
            "just a few bytes",
        ],
    );
    assert_eq!(hung.status, 0, "the client gave up: {hung:?}");
    assert!(
        until(Duration::from_secs(30), || r.pool_files() == before),
        "left behind: {:?}",
        r.pool_files()
    );
    // The upload is in the audit log under the operator's name.
    let audit: serde_json::Value = c
        .call("GET", "/v1/audit?user=olga", None::<&()>)
        .expect("audit");
    let text = audit.to_string();
    assert!(text.contains("media-upload"), "{text}");
    c.destroy("a").expect("destroy");
}

/// The web console's session: listing media is a read (no CSRF header needed, as for every
/// GET the page makes), an upload is a change (it needs the session's CSRF header).
#[test]
fn a_session_lists_media_without_csrf_and_uploads_only_with_it() {
    let r = remote();
    let c = r.h.client();
    c.create(r.h.tiny_spec("a", VmOpts::default()).expect("spec"), false)
        .expect("create a");
    c.user_add(&api::CreateUserRequest {
        name: "olga".into(),
        password: Some("a long password 1".into()),
    })
    .expect("user add");
    c.user_grant(
        "olga",
        &api::GrantInfo {
            role: "operator".into(),
            vm: Some("a".into()),
        },
    )
    .expect("grant");
    let jar = r.h.dir.join("jar");
    let jar_s = jar.to_str().expect("utf-8");
    let login = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&r.ca)
        .args([
            "-c",
            jar_s,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(r#"{"user":"olga","password":"a long password 1"}"#)
        .arg(format!("{}/v1/session", r.base))
        .output()
        .expect("curl runs");
    let session: serde_json::Value = serde_json::from_slice(&login.stdout).expect("session");
    let csrf = session["csrf"].as_str().expect("csrf").to_string();
    let by_cookie = |method: &str, path: &str, extra: &[&str]| -> (u16, String) {
        let o = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&r.ca)
            .args(["-b", jar_s, "-X", method, "-w", "\n%{http_code}"])
            .args(extra)
            .arg(format!("{}{path}", r.base))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.parse().unwrap_or(0), body.to_string())
    };
    let (status, body) = by_cookie("GET", "/v1/vms/a/media/choices", &[]);
    assert_eq!(status, 200, "{body}");
    let upload = "/v1/vms/a/media/upload?pool=default&volume=s.iso";
    let bytes = [
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        "cd",
    ];
    let (status, body) = by_cookie("PUT", upload, &bytes);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("x-hv-csrf"), "{body}");
    assert!(!r.h.state_dir.join("pools/default/s.iso").exists());
    let with_csrf = format!("X-HV-CSRF: {csrf}");
    let mut extra = bytes.to_vec();
    extra.extend(["-H", with_csrf.as_str()]);
    let (status, body) = by_cookie("PUT", upload, &extra);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read(r.h.state_dir.join("pools/default/s.iso")).expect("volume"),
        b"cd"
    );
    // The listing is not in the audit log; the upload is.
    let audit: serde_json::Value = c
        .call("GET", "/v1/audit?user=olga", None::<&()>)
        .expect("audit");
    let text = audit.to_string();
    assert!(!text.contains("choices"), "{text}");
    assert!(text.contains("media-upload"), "{text}");
}

/// An hvd killed in the middle of an upload leaves its temp file; the next hvd removes it (and
/// nothing else) before it takes requests.
#[test]
fn an_unfinished_upload_of_a_dead_hvd_is_removed_at_start() {
    let mut r = remote();
    let pool = r.h.state_dir.join("pools/default");
    let stale = pool.join(".big.iso.upload-99999999-0");
    let kept = [pool.join(".notes"), pool.join("keep.iso")];
    std::fs::write(&stale, b"half an iso").expect("stale");
    for k in &kept {
        std::fs::write(k, b"mine").expect("file");
    }
    r.h.restart().expect("restart");
    assert!(!stale.exists());
    for k in &kept {
        assert_eq!(std::fs::read(k).expect("kept"), b"mine");
    }
}
