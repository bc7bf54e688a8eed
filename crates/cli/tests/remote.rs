//! `hv --remote`: the CLI against a real hvd over real TLS (`hvd --listen`), with tokens made
//! over the Unix socket and a pinned certificate fingerprint.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::{guest, TestHvd};

fn hvd_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hv")).with_file_name("hvd");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// A free TCP port on loopback (the listener is closed before hvd binds it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// An hvd listening on `port` over HTTPS, with extra arguments.
fn hvd_on(port: u16, extra: &[&str]) -> TestHvd {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    TestHvd::start_with_args(&hvd_bin(), &args).expect("hvd starts")
}

/// Makes a user with grants and returns a token, over the Unix socket as root.
fn token(h: &TestHvd, user: &str, grants: &[(&str, Option<&str>)]) -> String {
    let c = h.client();
    c.user_add(&api::CreateUserRequest {
        name: user.into(),
        password: None,
    })
    .expect("user add");
    for (role, vm) in grants {
        c.user_grant(
            user,
            &api::GrantInfo {
                role: role.to_string(),
                vm: vm.map(str::to_string),
            },
        )
        .expect("grant");
    }
    c.token_create(&api::CreateTokenRequest {
        user: user.into(),
        expires_secs: None,
        description: Some("remote cli test".into()),
    })
    .expect("token")
    .token
}

/// `hv` with its own config directory, and no socket or remote from the environment.
struct Hv {
    config: PathBuf,
}

impl Hv {
    fn new(dir: &Path) -> Hv {
        let config = dir.join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        Hv { config }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hv"));
        c.args(args)
            .env("XDG_CONFIG_HOME", &self.config)
            .env_remove("HV_SOCKET")
            .env_remove("HV_REMOTE");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("hv runs")
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "hv {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// Runs a command that must fail (exit 1) and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "hv {args:?} should fail: {err}");
        assert!(err.contains("error:"), "{err}");
        err
    }
    fn remotes_file(&self) -> PathBuf {
        self.config.join("hv/remotes.toml")
    }
}

fn tiny_create(name: &str) -> Vec<String> {
    let g = guest::tiny_guest().expect("tiny guest");
    vec![
        "create".into(),
        name.into(),
        "--memory".into(),
        "128M".into(),
        "--kernel".into(),
        g.kernel.display().to_string(),
        "--initrd".into(),
        g.initrd.display().to_string(),
        "--cmdline".into(),
        guest::CMDLINE.into(),
    ]
}

/// Types `line` into `hv console` and waits for `expect` in what it prints, then detaches
/// with Ctrl-]. Returns everything it printed.
fn console_roundtrip(mut cmd: Command, line: &str, expect: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hv console runs");
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(line.as_bytes()).expect("type");
    stdin.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while !seen.contains(expect) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => break,
        }
    }
    let _ = stdin.write_all(&[0x1d]);
    drop(stdin);
    let status = child.wait().expect("hv console ends");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        seen.contains(expect),
        "the console never printed {expect:?}: {seen:?} (stderr {err:?})"
    );
    assert!(status.success(), "hv console detached with an error: {err}");
    seen
}

#[test]
fn an_admin_token_runs_every_command_remotely_and_the_fingerprint_is_pinned() {
    let port = free_port();
    let h = hvd_on(port, &[]);
    let hv = Hv::new(&h.dir);
    let admin = token(&h, "ada", &[("admin", None)]);
    let url = format!("https://127.0.0.1:{port}");
    let fp = h.client().host_cert().expect("host cert").fingerprint;

    // Trust on first use: the fingerprint is shown and pinned, the file is the user's only.
    let added = hv.ok(&["remote", "add", "lab", &url, "--token", &admin]);
    assert!(added.contains(&fp), "hv remote add shows {fp}: {added}");
    let mode = std::fs::metadata(hv.remotes_file())
        .expect("remotes file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the remotes file holds tokens");
    let listed = hv.ok(&["remote", "list"]);
    assert!(listed.contains("lab") && listed.contains(&fp), "{listed}");
    assert!(!listed.contains(&admin), "remote list never shows tokens");
    assert!(
        hv.fails(&["remote", "add", "lab", &url, "--token", &admin])
            .contains("exists already"),
        "a second add of the same name is refused"
    );

    // The VM lifecycle over HTTPS.
    let mut create: Vec<String> = vec!["--remote".into(), "lab".into()];
    create.extend(tiny_create("r1"));
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    assert!(hv.ok(&create).contains("VM r1 defined"));
    assert!(hv.ok(&["--remote", "lab", "list", "--all"]).contains("r1"));
    assert!(hv
        .ok(&["--remote", "lab", "info", "r1"])
        .contains("shutoff"));
    hv.ok(&["--remote", "lab", "start", "r1"]);
    hv.ok(&[
        "--remote",
        "lab",
        "wait",
        "r1",
        "--console",
        guest::PROMPT_REGEX,
        "--timeout",
        "90",
    ]);
    // The console WebSocket over TLS: typed input comes back as output.
    console_roundtrip(
        hv.cmd(&["--remote", "lab", "console", "r1"]),
        "echo RC-$((40+2))\n",
        "RC-42",
    );
    assert!(hv
        .ok(&["--remote", "lab", "console", "r1", "--log"])
        .contains("RC-42"));

    // Volumes: upload and download through /data, byte for byte.
    hv.ok(&[
        "--remote", "lab", "vol", "create", "default", "d.raw", "--size", "4M", "--format", "raw",
    ]);
    let src = h.dir.join("src.bin");
    let bytes: Vec<u8> = (0..(3u32 << 20) + 77).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &bytes).expect("write");
    hv.ok(&[
        "--remote",
        "lab",
        "vol",
        "upload",
        "default/d.raw",
        src.to_str().expect("utf-8"),
    ]);
    let dst = h.dir.join("dst.bin");
    hv.ok(&[
        "--remote",
        "lab",
        "vol",
        "download",
        "default/d.raw",
        dst.to_str().expect("utf-8"),
    ]);
    assert!(
        std::fs::read(&dst).expect("read") == bytes,
        "the downloaded bytes are the uploaded ones"
    );

    // The default remote and HV_REMOTE pick the remote; --socket still wins.
    hv.ok(&["remote", "default", "lab"]);
    assert!(hv.ok(&["list", "--all"]).contains("r1"));
    let sock = h.socket.to_str().expect("utf-8");
    hv.ok(&["--socket", sock, "destroy", "r1"]);
    assert!(hv
        .ok(&["remote", "list"])
        .lines()
        .any(|l| l.starts_with("lab") && l.trim_end().ends_with("yes")));
    // Precedence: flags, then the environment, then the default remote. A socket where no
    // hvd listens shows which one was used.
    let nowhere = h.dir.join("nowhere.sock");
    let nowhere = nowhere.to_str().expect("utf-8");
    let env_run = |args: &[&str], env: &[(&str, &str)]| {
        let o = hv
            .cmd(args)
            .envs(env.iter().copied())
            .output()
            .expect("hv runs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, _, err) = env_run(&["--socket", nowhere, "list"], &[]);
    assert!(
        code == Some(1) && err.contains(nowhere),
        "--socket beats the default remote: {err}"
    );
    let (code, _, err) = env_run(&["list"], &[("HV_SOCKET", nowhere)]);
    assert!(
        code == Some(1) && err.contains(nowhere),
        "HV_SOCKET beats the default remote: {err}"
    );
    let (code, out, err) = env_run(
        &["--remote", "lab", "list", "--all"],
        &[("HV_SOCKET", nowhere)],
    );
    assert!(
        code == Some(0) && out.contains("r1"),
        "--remote beats HV_SOCKET: {err}"
    );
    let (code, _, err) = env_run(&["--remote", "nope", "list"], &[("HV_REMOTE", "lab")]);
    assert!(
        code == Some(1) && err.contains("no remote named \"nope\""),
        "--remote beats HV_REMOTE: {err}"
    );
    let (code, _, err) = env_run(&["list"], &[("HV_SOCKET", nowhere), ("HV_REMOTE", "lab")]);
    assert!(code == Some(1) && err.contains("both set"), "{err}");
    hv.ok(&["remote", "default", "--none"]);

    let o = hv
        .cmd(&["info", "r1"])
        .env("HV_REMOTE", "lab")
        .output()
        .expect("hv runs");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("shutoff"),
        "HV_REMOTE picks the remote: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(hv
        .fails(&["--remote", "lab", "--socket", sock, "list"])
        .contains("not both"));
    hv.ok(&["--remote", "lab", "undefine", "r1"]);
    assert!(!hv.ok(&["--remote", "lab", "list", "--all"]).contains("r1"));
    assert!(hv.ok(&["remote", "remove", "lab"]).contains("removed"));
    assert!(hv
        .fails(&["--remote", "lab", "list"])
        .contains("no remote named \"lab\""));
}

#[test]
fn an_operator_of_web_globs_sees_only_its_vms_through_hv_remote() {
    let port = free_port();
    let h = hvd_on(port, &[]);
    let hv = Hv::new(&h.dir);
    let c = h.client();
    for vm in ["web-1", "db-1"] {
        c.create(h.tiny_spec(vm, Default::default()).expect("spec"), false)
            .expect("define");
    }
    let op = token(&h, "otto", &[("operator", Some("web-*"))]);
    // The token can come on stdin, out of argv.
    let mut add = hv
        .cmd(&[
            "remote",
            "add",
            "ops",
            &format!("https://localhost:{port}"),
            "--token-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hv runs");
    writeln!(add.stdin.take().expect("stdin"), "{op}").expect("token on stdin");
    let added = add.wait_with_output().expect("hv remote add ends");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // A bad token is refused at add time, and nothing is stored.
    let bad = hv.fails(&[
        "remote",
        "add",
        "bad",
        &format!("https://localhost:{port}"),
        "--token",
        "hvt_nope",
    ]);
    assert!(bad.contains("not added"), "{bad}");
    // (By name: a fingerprint's hex may well contain "bad".)
    let list = hv.ok(&["remote", "list"]);
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some("bad")),
        "{list}"
    );
    // Nobody listening: says so.
    let closed = free_port();
    let gone = hv.fails(&[
        "remote",
        "add",
        "gone",
        &format!("https://127.0.0.1:{closed}"),
        "--token",
        &op,
    ]);
    assert!(gone.contains("cannot reach hvd at"), "{gone}");
    let list = hv.ok(&["--remote", "ops", "list", "--all"]);
    assert!(list.contains("web-1") && !list.contains("db-1"), "{list}");
    assert!(hv
        .fails(&["--remote", "ops", "info", "db-1"])
        .contains("does not exist"));
    assert!(hv
        .fails(&["--remote", "ops", "destroy", "db-1"])
        .contains("does not exist"));
    // An operator may not undefine even its own VMs.
    let refused = hv.fails(&["--remote", "ops", "undefine", "web-1"]);
    assert!(refused.contains("may not"), "{refused}");
}

/// Makes a self-signed certificate for localhost with openssl, as a user would bring one.
fn openssl_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("other.pem"), dir.join("other.key"));
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
fn a_pinned_cli_refuses_a_changed_certificate_and_a_wrong_fingerprint_is_not_added() {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut first = hvd_on(port, &[]);
    let hv = Hv::new(&first.dir);
    let admin = token(&first, "ada", &[("admin", None)]);
    let pinned = first.client().host_cert().expect("cert").fingerprint;

    // A wrong --fingerprint: the add fails and nothing is stored.
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let err = hv.fails(&[
        "remote",
        "add",
        "lab",
        &url,
        "--token",
        &admin,
        "--fingerprint",
        &wrong,
    ]);
    assert!(
        err.contains(&pinned) && err.contains(&wrong) && err.contains("not added"),
        "{err}"
    );
    assert!(
        !hv.remotes_file().exists() || !hv.ok(&["remote", "list"]).contains("lab"),
        "a refused remote is not stored"
    );
    // The right one (pasted in upper case) is accepted.
    hv.ok(&[
        "remote",
        "add",
        "lab",
        &url,
        "--token",
        &admin,
        "--fingerprint",
        &pinned.to_uppercase().replacen("SHA256", "sha256", 1),
    ]);
    assert!(hv.ok(&["--remote", "lab", "list"]).contains("NAME"));

    // hvd comes back on the same address with another certificate.
    let dir = first.dir.clone();
    first.stop().expect("stop hvd");
    let (cert, key) = openssl_cert(&dir);
    let second = hvd_on(
        port,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let now = second.client().host_cert().expect("cert").fingerprint;
    assert_ne!(now, pinned);
    for args in [
        &["--remote", "lab", "list"][..],
        &["--remote", "lab", "console", "x"][..],
    ] {
        let err = hv.fails(args);
        assert!(
            err.contains("CHANGED") && err.contains(&pinned) && err.contains(&now),
            "hv {args:?}: {err}"
        );
        assert!(
            err.contains("hv remote remove lab") && err.contains(&format!("--fingerprint {now}")),
            "says what to do: {err}"
        );
    }
}

/// Issue 11: an operator of one VM uploads a medium into a pool and lists the VM's media
/// through `hv --remote`, without any storage right; an existing name is refused.
#[test]
fn an_operator_uploads_and_lists_media_of_its_vm_through_hv_remote() {
    let port = free_port();
    let h = hvd_on(port, &[]);
    let hv = Hv::new(&h.dir);
    let c = h.client();
    c.create(
        h.tiny_spec("web-1", Default::default()).expect("spec"),
        false,
    )
    .expect("define");
    let op = token(&h, "otto", &[("operator", Some("web-1"))]);
    hv.ok(&[
        "remote",
        "add",
        "ops",
        &format!("https://localhost:{port}"),
        "--token",
        &op,
    ]);
    let iso = h.dir.join("boot.iso");
    std::fs::write(&iso, vec![7u8; 100_000]).expect("file");
    let iso_s = iso.to_str().expect("utf-8");
    let out = hv.ok(&[
        "--remote", "ops", "media", "upload", "web-1", iso_s, "--insert",
    ]);
    assert!(
        out.contains("default/boot.iso inserted into web-1"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(h.state_dir.join("pools/default/boot.iso")).expect("volume"),
        vec![7u8; 100_000]
    );
    let list = hv.ok(&["--remote", "ops", "media", "list", "web-1"]);
    assert!(
        list.contains("default/boot.iso") && list.contains("yes"),
        "{list}"
    );
    assert!(list.contains("uploads may go to: default"), "{list}");
    let again = hv.fails(&["--remote", "ops", "media", "upload", "web-1", iso_s]);
    assert!(again.contains("never replaces"), "{again}");
    let bad = hv.fails(&[
        "--remote",
        "ops",
        "media",
        "upload",
        "web-1",
        iso_s,
        "--name",
        "boot.qcow2",
    ]);
    assert!(bad.contains("must end in .iso or .img"), "{bad}");
    // The pools themselves stay an admin's.
    let pools = hv.fails(&["--remote", "ops", "vol", "list", "default"]);
    assert!(pools.contains("may not"), "{pools}");
}
