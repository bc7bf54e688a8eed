//! The `hv` binary against a real hvd: exit codes, error text, formats, spec files, edit.

use std::path::PathBuf;
use std::process::{Command, Output};

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

struct Cli<'a>(&'a TestHvd);

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hv"))
            .arg("--socket")
            .arg(&self.0.socket)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("hv runs")
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
    /// Runs a command that must fail with `code` and an `error:` line containing `says`.
    fn fails(&self, args: &[&str], code: i32, says: &str) {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "hv {args:?}: {err}");
        assert!(
            err.contains("error:") && err.contains(says),
            "hv {args:?}: {err:?} does not say {says:?}"
        );
    }
}

fn tiny_args(g: &guest::TinyGuest) -> Vec<String> {
    vec![
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

#[test]
fn usage_errors_exit_2_and_errors_exit_1() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    cli.fails(&["frobnicate"], 2, "unrecognized subcommand");
    cli.fails(&["create"], 2, "NAME");
    cli.fails(&["create", "../etc"], 2, "invalid VM name");
    cli.fails(&["create", "has space"], 2, "invalid VM name");
    cli.fails(&["create", &"x".repeat(64)], 2, "longer than 63");
    cli.fails(&["create", "v", "--memory", "12X"], 2, "unknown unit");
    cli.fails(
        &["create", "v", "--vcpus", "-1"],
        2,
        "unexpected argument '-1'",
    );
    cli.fails(&["create", "v", "--vcpus", "many"], 2, "invalid digit");
    cli.fails(
        &["create", "v", "--boot", "floppy"],
        2,
        "unknown boot device",
    );
    cli.fails(
        &["create", "v", "--nic", "user,mac=01:00:00:00:00:01"],
        2,
        "multicast",
    );
    cli.fails(
        &["create", "v", "--disk", "path=/tmp/x,format=vmdk"],
        1,
        "unknown value \"vmdk\"",
    );
    cli.fails(&["create", "v", "--vcpus", "0"], 1, "vcpus");
    cli.fails(
        &["create", "v", "--kernel", "/nonexistent/k"],
        1,
        "/nonexistent/k",
    );
    cli.fails(&["info", "nope"], 1, "does not exist");
    cli.fails(&["wait", "nope", "--state", "running"], 1, "does not exist");
    cli.fails(&["wait", "nope"], 2, "required");
    assert!(
        cli.ok(&["list", "--all", "--format", "json"]).trim() == "[]",
        "bad input created something"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(["--socket", "/nonexistent/hvd.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is hvd running"));
}

#[test]
fn create_list_info_dump_define_edit_showcmd() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    let g = guest::tiny_guest().unwrap();
    let mut args = vec!["create".to_string(), "web".into()];
    args.extend(tiny_args(&g));
    args.extend([
        "--disk".into(),
        format!("path={}/web.qcow2,size=64M", h.dir.display()),
        "--nic".into(),
        "user".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(cli.ok(&args).contains("VM web defined"));
    cli.fails(&args, 1, "already exists");
    assert!(h.dir.join("web.qcow2").exists(), "size= creates the image");

    let list: serde_json::Value =
        serde_json::from_str(&cli.ok(&["list", "--all", "--format", "json"])).unwrap();
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["state"], "shutoff");
    assert!(
        cli.ok(&["list"]).lines().count() == 1,
        "plain list shows running VMs only"
    );
    assert!(cli.ok(&["list", "--all"]).contains("web   shutoff"));
    let info: serde_json::Value =
        serde_json::from_str(&cli.ok(&["info", "web", "--format", "json"])).unwrap();
    assert_eq!(
        (info["name"].as_str(), info["state"].as_str()),
        (Some("web"), Some("shutoff"))
    );
    assert_eq!(info["spec"]["disks"][0]["format"], "qcow2");
    let mac = info["spec"]["nics"][0]["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert!(cli
        .ok(&["info", "web", "--format", "yaml"])
        .contains("name: web"));

    // dump → undefine → define gives the same VM back.
    let dumped = cli.ok(&["dump", "web"]);
    let file = h.dir.join("web.toml");
    std::fs::write(&file, &dumped).unwrap();
    cli.ok(&["undefine", "web"]);
    assert!(
        h.dir.join("web.qcow2").exists(),
        "undefine without --remove-storage keeps disks"
    );
    cli.ok(&["define", file.to_str().unwrap()]);
    assert_eq!(cli.ok(&["dump", "web"]), dumped);
    let bad = h.dir.join("bad.toml");
    std::fs::write(&bad, format!("colour = \"red\"\n{dumped}")).unwrap();
    cli.fails(&["define", bad.to_str().unwrap()], 1, "colour");

    // edit with a scripted editor.
    let editor = h.dir.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^memory = .*/memory = \"256M\"/' \"$1\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&editor)
        .status()
        .unwrap();
    let o = cli.run_env(
        &["edit", "web"],
        &[
            ("EDITOR", editor.to_str().unwrap()),
            ("VISUAL", editor.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cli.ok(&["dump", "web"]).contains("memory = \"256M\""));
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^vcpus = .*/vcpus = 0/' \"$1\"\n",
    )
    .unwrap();
    let o = cli.run_env(
        &["edit", "web"],
        &[
            ("EDITOR", editor.to_str().unwrap()),
            ("VISUAL", editor.to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("vcpus"));
    assert!(
        cli.ok(&["dump", "web"]).contains("vcpus = 1"),
        "a failed edit changes nothing"
    );

    let cmd = cli.ok(&["showcmd", "web"]);
    assert!(
        cmd.contains("qemu-system-x86_64") && cmd.contains("-m 256"),
        "{cmd}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&cli.ok(&["host", "check", "--format", "json"])).unwrap();
    if report["accel"] == "tcg" {
        assert!(cmd.contains("-accel tcg"), "{cmd}");
    }
    cli.ok(&["undefine", "web", "--remove-storage"]);
    assert!(!h.dir.join("web.qcow2").exists());
}

#[test]
fn start_wait_console_log_shutdown() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    let g = guest::tiny_guest().unwrap();
    let mut args = vec!["create".to_string(), "c1".into()];
    args.extend(tiny_args(&g));
    args.push("--start".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli.ok(&args);
    cli.fails(&["start", "c1"], 1, "already running");
    assert!(cli
        .ok(&[
            "wait",
            "c1",
            "--console",
            guest::PROMPT_REGEX,
            "--timeout",
            "60"
        ])
        .contains("HV-PROMPT"));
    assert!(cli
        .ok(&["console", "c1", "--log"])
        .contains(guest::READY_MARKER));
    let o = cli.run(&["wait", "c1", "--state", "paused", "--timeout", "0.3"]);
    assert_eq!(o.status.code(), Some(1), "wait times out with exit 1");
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    let table = cli.ok(&["host", "check"]);
    assert!(table.contains("PASS") && table.contains("qemu"), "{table}");
    assert!(cli.ok(&["shutdown", "c1"]).contains("shut off"));
}

/// The storage, network and NIC commands of the README, run as a user would (hvd inside a
/// network namespace the test makes).
#[test]
fn storage_network_and_nic_commands() {
    let ns = testkit::NetNs::new("cli").unwrap();
    let h = TestHvd::start_in_netns(&hvd_bin(), &ns.name).unwrap();
    let cli = Cli(&h);
    // Volumes: create, list, upload and download by checksum (the raw stream path).
    cli.ok(&[
        "vol", "create", "default", "data.raw", "--size", "4M", "--format", "raw",
    ]);
    assert!(cli.ok(&["vol", "list", "default"]).contains("data.raw"));
    let src = h.dir.join("src.bin");
    let bytes: Vec<u8> = (0..(3u32 << 20) + 77).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    cli.ok(&["vol", "upload", "default/data.raw", src.to_str().unwrap()]);
    let dst = h.dir.join("dst.bin");
    cli.ok(&["vol", "download", "default/data.raw", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dst).unwrap(), bytes);
    // Networks: create, reservation by VM name, autostart, leases, delete refused while used.
    cli.ok(&[
        "net",
        "create",
        "lan",
        "--mode",
        "nat",
        "--subnet",
        "10.77.30.0/24",
    ]);
    cli.fails(
        &[
            "net",
            "create",
            "lan2",
            "--mode",
            "nat",
            "--subnet",
            "10.77.30.0/25",
        ],
        1,
        "overlaps",
    );
    let g = guest::tiny_guest().unwrap();
    let mut args = vec!["create".to_string(), "web".into()];
    args.extend(tiny_args(&g));
    args.extend(["--nic".into(), "network=lan".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli.ok(&args);
    cli.ok(&[
        "net",
        "reservation",
        "add",
        "lan",
        "--vm",
        "web",
        "--ip",
        "10.77.30.50",
    ]);
    let rs = cli.ok(&["net", "reservation", "list", "lan", "--format", "json"]);
    assert!(rs.contains("10.77.30.50") && rs.contains("\"web\""), "{rs}");
    let o = cli.run(&["net", "reservation", "add", "lan", "--ip", "10.77.30.51"]);
    assert_eq!(o.status.code(), Some(2), "--mac or --vm is required");
    cli.fails(
        &[
            "net",
            "reservation",
            "add",
            "lan",
            "--vm",
            "web",
            "--ip",
            "10.77.31.5",
        ],
        1,
        "already has a reservation",
    );
    cli.ok(&["net", "autostart", "lan"]);
    assert!(cli
        .ok(&["net", "info", "lan", "--format", "json"])
        .contains("\"autostart\": true"));
    cli.ok(&["net", "reservation", "remove", "lan", "web"]);
    // NICs: list, attach to the definition, detach by MAC.
    let nics = cli.ok(&["nic", "list", "web"]);
    assert!(nics.contains("network") && nics.contains("lan"), "{nics}");
    assert!(cli
        .ok(&["nic", "attach", "web", "--nic", "user,model=e1000"])
        .contains("attached to web"));
    let json = cli.ok(&["nic", "list", "web", "--format", "json"]);
    let nics: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(nics.len(), 2, "{json}");
    let mac = nics[1]["mac"].as_str().unwrap().to_string();
    cli.fails(&["nic", "detach", "web", &mac, "--live"], 1, "not running");
    cli.ok(&["nic", "detach", "web", &mac]);
    assert!(!cli.ok(&["nic", "list", "web"]).contains(&mac));
    // Missing things are named as what they are (not as VMs), with where to look.
    cli.fails(
        &["net", "info", "nope"],
        1,
        "network nope does not exist (hv net list",
    );
    cli.fails(
        &["vol", "info", "default/nope"],
        1,
        "volume default/nope does not exist",
    );
    cli.fails(&["pool", "info", "nope"], 1, "pool nope does not exist");
    // hv host bridge: bad input is refused before anything changes.
    cli.fails(&["host", "bridge", "nope0", "br0"], 1, "does not exist");
    cli.fails(&["net", "delete", "lan"], 1, "used by VM web");
    cli.ok(&["undefine", "web"]);
    cli.ok(&["net", "delete", "lan"]);
    assert!(!cli.ok(&["net", "list"]).contains("lan "));
}

/// Issue 9: the spec `hv edit` writes may hold a VNC password, so its temp file is 0600.
#[test]
fn edit_temp_file_is_mode_0600() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    cli.ok(&["create", "ed", "--memory", "64M"]);
    let seen = h.dir.join("mode.txt");
    let editor = h.dir.join("editor.sh");
    std::fs::write(
        &editor,
        format!("#!/bin/sh\nstat -c %a \"$1\" > {}\n", seen.display()),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&editor)
        .status()
        .unwrap();
    let o = cli.run_env(
        &["edit", "ed"],
        &[
            ("EDITOR", editor.to_str().unwrap()),
            ("VISUAL", editor.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "600");
}

fn files_under(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Issue 9: the VNC password is a secret. It reaches QEMU over QMP only, and appears in no
/// API answer (info, list, dump, showcmd), no argv and no log; `hv edit` keeps it, and a dump
/// says that one is set without its value.
#[test]
fn vnc_password_is_in_no_answer_argv_or_log() {
    const PW: &str = "Sekr3tpw";
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    let g = guest::tiny_guest().unwrap();
    let mut args = vec!["create".to_string(), "v".into()];
    args.extend(tiny_args(&g));
    args.extend([
        "--graphics".into(),
        format!("vnc,listen=127.0.0.1,password={PW}"),
        "--start".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut answers = vec![cli.ok(&args)];
    cli.ok(&[
        "wait",
        "v",
        "--console",
        guest::PROMPT_REGEX,
        "--timeout",
        "60",
    ]);
    for a in [
        &["info", "v", "--format", "json"][..],
        &["info", "v", "--format", "yaml"],
        &["info", "v"],
        &["list", "--all", "--format", "json"],
        &["dump", "v"],
        &["dump", "v", "--format", "json"],
        &["showcmd", "v"],
    ] {
        answers.push(cli.ok(a));
    }
    for a in &answers {
        assert!(!a.contains(PW), "an answer holds the password: {a}");
    }
    let dump = cli.ok(&["dump", "v"]);
    assert!(dump.contains("password_set = true"), "{dump}");
    let info: serde_json::Value =
        serde_json::from_str(&cli.ok(&["info", "v", "--format", "json"])).unwrap();
    let pid = info["pid"].as_u64().expect("a running VM has a pid");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&argv).contains(PW),
        "QEMU's argv holds the password"
    );
    let mut files = Vec::new();
    files_under(&h.state_dir, &mut files);
    files_under(&h.dir, &mut files);
    for f in files.iter().filter(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        !name.starts_with("hv.db") && !name.ends_with(".sock")
    }) {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PW),
            "{} holds the password",
            f.display()
        );
    }

    // hv edit sends the redacted spec back: the password is kept.
    let editor = h.dir.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^memory = .*/memory = \"256M\"/' \"$1\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&editor)
        .status()
        .unwrap();
    let o = cli.run_env(
        &["edit", "v"],
        &[
            ("EDITOR", editor.to_str().unwrap()),
            ("VISUAL", editor.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dump = cli.ok(&["dump", "v"]);
    assert!(
        dump.contains("password_set = true") && dump.contains("256M"),
        "{dump}"
    );

    // A dump defines a new VM only with the password given again: never silently without one.
    cli.ok(&["destroy", "v"]);
    cli.ok(&["undefine", "v"]);
    let file = h.dir.join("v.toml");
    std::fs::write(&file, &dump).unwrap();
    cli.fails(&["define", file.to_str().unwrap()], 1, "password");
    assert!(!cli.ok(&["list", "--all"]).contains('v'), "nothing defined");
    std::fs::write(
        &file,
        dump.replace("password_set = true", &format!("password = \"{PW}\"")),
    )
    .unwrap();
    cli.ok(&["define", file.to_str().unwrap()]);
    assert_eq!(cli.ok(&["dump", "v"]), dump);
}

#[test]
fn user_token_audit_and_host_cert_commands() {
    let h = TestHvd::start(&hvd_bin()).expect("hvd");
    let cli = Cli(&h);
    // The password goes through stdin, never argv.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("--socket")
        .arg(&h.socket)
        .args(["user", "add", "alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hv runs");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"correct horse\n")
        .expect("password");
    let o = child.wait_with_output().expect("hv ends");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let passwd = |input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hv"))
            .arg("--socket")
            .arg(&h.socket)
            .args(["user", "passwd", "alice"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hv runs");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), input).expect("write");
        child.wait_with_output().expect("hv ends")
    };
    assert!(passwd(b"battery staple\n").status.success());
    let empty = passwd(b"\n");
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("the password on stdin is empty"));
    cli.ok(&["user", "grant", "alice", "operator", "--vm", "web-*"]);
    cli.ok(&["user", "grant", "alice", "viewer"]);
    let list = cli.ok(&["user", "list"]);
    assert!(
        list.contains("alice") && list.contains("operator:web-*") && list.contains("viewer:*"),
        "{list}"
    );
    cli.ok(&["user", "revoke", "alice", "viewer"]);
    cli.fails(
        &["user", "grant", "alice", "root"],
        1,
        "unknown role \"root\"",
    );
    cli.fails(
        &["user", "grant", "alice", "viewer", "--vm", "a/b"],
        1,
        "invalid VM glob",
    );
    cli.fails(
        &["user", "grant", "bob", "viewer"],
        1,
        "user \"bob\" does not exist",
    );
    cli.fails(
        &["token", "create", "alice", "--expires", "3y"],
        1,
        "unit must be",
    );

    let o = cli.run(&[
        "token",
        "create",
        "alice",
        "--expires",
        "30d",
        "--description",
        "ci",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        token.starts_with("hvt_"),
        "only the token on stdout: {token}"
    );
    let tokens = cli.ok(&["token", "list", "--format", "json"]);
    assert!(!tokens.contains(&token), "listing never shows the secret");
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&tokens).expect("json");
    let id = tokens[0]["id"].as_str().expect("id").to_string();
    assert_eq!(tokens[0]["description"], "ci");
    cli.ok(&["token", "revoke", &id]);
    cli.fails(&["token", "revoke", &id], 1, "does not exist");

    let cert = cli.ok(&["host", "cert"]);
    assert!(
        cert.trim().starts_with("SHA256:") && cert.trim().len() == 7 + 64,
        "{cert}"
    );

    let audit = cli.ok(&[
        "audit", "--user", "uid:0", "--since", "1h", "--format", "json",
    ]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("json");
    assert!(
        records.iter().any(|r| r["object"] == "user/alice"
            && r["action"].as_str().unwrap_or("").contains("grants")),
        "{audit}"
    );
    assert!(!audit.contains("correct horse") && !audit.contains(&token));
    let table = cli.ok(&["audit"]);
    assert!(
        table.starts_with("TIME") && table.contains("uid:0"),
        "{table}"
    );
    cli.ok(&["user", "remove", "alice"]);
    assert!(!cli.ok(&["user", "list"]).contains("alice"));
}

/// Issue 11: `hv screenshot`, `hv send-key` and `hv media boot` as a user runs them; `--graphics
/// vnc` warns that VNC passwords are weak.
#[test]
fn screenshot_send_key_and_media_boot_commands() {
    let h = TestHvd::start(&hvd_bin()).unwrap();
    let cli = Cli(&h);
    let g = guest::tiny_guest().unwrap();
    let mut args = vec!["create".to_string(), "s".into()];
    args.extend(tiny_args(&g));
    args.push("--start".into());
    // SysRq allowed, `console=ttyS0` still last (the serial console keeps the shell).
    let i = args.iter().position(|a| a == guest::CMDLINE).unwrap();
    args[i] = format!("sysrq_always_enabled=1 {}", guest::CMDLINE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli.ok(&args);
    cli.ok(&[
        "wait",
        "s",
        "--console",
        guest::PROMPT_REGEX,
        "--timeout",
        "60",
    ]);

    let file = h.dir.join("shot.png");
    cli.ok(&["screenshot", "s", file.to_str().unwrap()]);
    let png = std::fs::read(&file).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let o = cli.run(&["screenshot", "s", "-"]);
    assert!(o.status.success() && o.stdout.starts_with(b"\x89PNG\r\n\x1a\n"));

    let o = cli.run(&["send-key", "s", "alt-sysrq-h"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cli
        .ok(&["wait", "s", "--console", "sysrq: HELP", "--timeout", "30"])
        .contains("sysrq"));
    let o = cli.run(&["send-key", "s", "--text", r"ls\n"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("3 key events sent"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    cli.fails(
        &["send-key", "s", "ctrl-alt-nope"],
        1,
        "unknown key \"nope\"",
    );
    cli.fails(&["send-key", "s", "--text", r"a\q"], 1, "unknown escape");
    cli.fails(&["send-key", "s"], 2, "required");
    cli.fails(&["media", "boot", "s"], 1, "boots a kernel directly");

    let o = cli.run(&["create", "w", "--graphics", "vnc,password=abc"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("VNC passwords are weak"));
    let o = cli.run(&["create", "c"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("weak"));
    assert!(cli.ok(&["dump", "c"]).contains("console"));
}
