//! Issue 11: every VM's screen. The private VNC socket of the browser console, screenshots,
//! keys and booting from a medium, on real QEMU with the tiny guest under TCG, driven through
//! hvd's API.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use api::{ErrorCode, KeysRequest, KeysSent};
use model::{GraphicsSpec, VmState};
use testkit::{guest, TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

fn boot(h: &TestHvd, name: &str, graphics: GraphicsSpec) {
    let mut spec = h.tiny_spec(name, VmOpts::default()).unwrap();
    spec.graphics = graphics;
    let info = h.client().create(spec, true).unwrap();
    assert_eq!(info.state, VmState::Running);
    h.wait_ready(name).unwrap();
}

/// The VMs' private directories in the run dir.
fn private_dirs(h: &TestHvd) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(h.state_dir.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "d"))
        .collect();
    out.sort();
    out
}

/// Reads the RFB server's greeting.
fn rfb_greeting(sock: &Path) -> String {
    let mut s = UnixStream::connect(sock).expect("hvd (root) connects to the VNC socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether `uid` can reach `path` by name (`test -e` run as that uid and gid, no groups).
fn reachable_as(uid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "test",
            "-e",
        ])
        .arg(path)
        .status()
        .expect("setpriv runs")
        .success()
}

/// Issue 11: the default display is the browser console, a VNC server on a Unix socket in a
/// directory only the VM's QEMU uid and root can enter; it survives an hvd restart and is gone
/// when QEMU ends. `graphics none` has no socket (and still a VGA card for screenshots).
#[test]
fn console_vnc_socket_is_private_and_speaks_rfb() {
    let mut h = hvd();
    boot(&h, "scr", GraphicsSpec::default());
    let dirs = private_dirs(&h);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let sock = dirs[0].join("vnc.sock");
    assert_eq!(rfb_greeting(&sock), "RFB 003.008\n");

    let pid = h.qemu_pids()[0];
    let qemu_uid = testkit::confinement::Privileges::of(pid).unwrap().uid();
    let meta = std::fs::metadata(&dirs[0]).unwrap();
    assert_eq!(meta.uid(), qemu_uid, "the directory is the QEMU uid's");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert!(
        reachable_as(qemu_uid, &sock),
        "QEMU's uid reaches its socket"
    );
    for other in [65534, qemu_uid + 1] {
        assert!(!reachable_as(other, &sock), "uid {other} reaches {sock:?}");
    }
    let argv = h.client().showcmd("scr").unwrap().argv;
    assert!(
        argv.iter()
            .any(|a| a.starts_with("unix:") && a.contains("id=hv-console")),
        "{argv:?}"
    );

    // A restarted hvd re-attaches; the socket stays.
    h.kill9().unwrap();
    h.start_again().unwrap();
    assert_eq!(h.client().info("scr").unwrap().state, VmState::Running);
    assert_eq!(rfb_greeting(&sock), "RFB 003.008\n");

    h.client().destroy("scr").unwrap();
    assert!(
        private_dirs(&h).is_empty(),
        "the private directory is removed"
    );

    boot(&h, "blind", GraphicsSpec::None);
    let dirs = private_dirs(&h);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(
        !dirs[0].join("vnc.sock").exists(),
        "graphics none has no VNC socket"
    );
    let argv = h.client().showcmd("blind").unwrap().argv;
    assert!(!argv.iter().any(|a| a == "-vnc"), "{argv:?}");
    h.client().destroy("blind").unwrap();
}

/// The tiny guest with kernel text on the VGA console too (`console=ttyS0` stays last, so the
/// serial console keeps the shell) and SysRq allowed.
fn boot_visible(h: &TestHvd, name: &str, graphics: GraphicsSpec) {
    let mut spec = h.tiny_spec(name, VmOpts::default()).unwrap();
    spec.graphics = graphics;
    let k = spec.kernel.as_mut().unwrap();
    k.cmdline = Some(format!(
        "console=tty0 sysrq_always_enabled=1 {}",
        guest::CMDLINE
    ));
    h.client().create(spec, true).unwrap();
    h.wait_ready(name).unwrap();
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// How many screendumps hvd asked the VM's QEMU for (its QMP transcript).
fn screendumps(h: &TestHvd, vm: &str) -> usize {
    std::fs::read_to_string(h.state_dir.join("vms").join(vm).join("qmp.log"))
        .unwrap()
        .matches(r#""execute":"screendump""#)
        .count()
}

/// Issue 11: `GET /v1/vms/{name}/screenshot` answers a PNG of the screen; a caller that
/// accepts an older shot shares the last one instead of another screendump; screendump files
/// do not stay behind; `graphics none` VMs have a screen too.
#[test]
fn screenshot_is_a_png_of_the_screen_and_is_shared() {
    let h = hvd();
    let c = h.client();
    boot_visible(&h, "shot", GraphicsSpec::default());
    let png = c.screenshot("shot", 0).unwrap();
    let (w, hgt) = png_size(&png);
    assert!(
        (320..=2560).contains(&w) && (200..=1600).contains(&hgt),
        "{w}x{hgt}"
    );
    let n = screendumps(&h, "shot");
    assert_eq!(n, 1);
    // Young enough: the same shot, no new screendump.
    assert_eq!(c.screenshot("shot", 60_000).unwrap(), png);
    assert_eq!(screendumps(&h, "shot"), 1);
    // Not acceptable as old: a new one.
    png_size(&c.screenshot("shot", 0).unwrap());
    assert_eq!(screendumps(&h, "shot"), 2);
    // Many at once: every caller gets a PNG, and no more screendumps than callers.
    let shots: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| c.screenshot("shot", 0).unwrap()))
            .collect();
        hs.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for p in &shots {
        png_size(p);
    }
    assert!(screendumps(&h, "shot") <= 6);
    let left: Vec<_> = std::fs::read_dir(&private_dirs(&h)[0])
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "vnc.sock")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let e = c.screenshot("shot", 60_001).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("max_age_ms"), "{e}");
    let e = c.screenshot("nosuch", 0).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    boot(&h, "blind", GraphicsSpec::None);
    png_size(&c.screenshot("blind", 0).unwrap());
    c.destroy("blind").unwrap();
    let e = c.screenshot("blind", 60_000).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    assert!(e.to_string().contains("not running"), "{e}");
}

/// Issue 11: `POST /v1/vms/{name}/keys` reaches the guest's keyboard: Alt-SysRq-H makes the
/// kernel print its SysRq help on the serial console. Bad requests send nothing and say why;
/// what was typed stays out of the QMP transcript.
#[test]
fn keys_reach_the_guest_and_bad_keys_are_refused() {
    let h = hvd();
    let c = h.client();
    boot_visible(&h, "kbd", GraphicsSpec::default());
    let keys = |k: &[&str]| KeysRequest {
        keys: Some(k.iter().map(|s| s.to_string()).collect()),
        text: None,
    };
    let sent = c.send_keys("kbd", &keys(&["alt-sysrq-h"])).unwrap();
    assert_eq!(sent, KeysSent { sent: 1 });
    h.wait_console("kbd", "sysrq: HELP", Duration::from_secs(30))
        .unwrap();
    let text = KeysRequest {
        keys: None,
        text: Some("Secret-Pw1\n".into()),
    };
    assert_eq!(c.send_keys("kbd", &text).unwrap(), KeysSent { sent: 11 });
    // Longer text goes in paced chunks (QEMU drops keys beyond its queue); all are sent.
    let long = KeysRequest {
        keys: None,
        text: Some("echo paced\n".repeat(7)),
    };
    assert_eq!(c.send_keys("kbd", &long).unwrap(), KeysSent { sent: 77 });
    let qmp_log = std::fs::read_to_string(h.state_dir.join("vms/kbd/qmp.log")).unwrap();
    assert!(qmp_log.contains(r#""send-key","arguments":"<redacted>""#));
    assert!(!qmp_log.contains("qcode"), "typed keys are in qmp.log");

    for (req, want) in [
        (keys(&["ctrl-alt-bogus"]), "unknown key \"bogus\""),
        (keys(&[]), "no keys"),
        (KeysRequest::default(), "exactly one of keys"),
        (
            KeysRequest {
                keys: Some(vec!["esc".into()]),
                text: Some("x".into()),
            },
            "exactly one of keys",
        ),
        (
            KeysRequest {
                keys: None,
                text: Some("caf\u{e9}".into()),
            },
            "cannot be typed on a US keyboard",
        ),
        (
            KeysRequest {
                keys: None,
                text: Some("a".repeat(4097)),
            },
            "at most 4096",
        ),
    ] {
        let e = c.send_keys("kbd", &req).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    c.destroy("kbd").unwrap();
    let e = c.send_keys("kbd", &keys(&["esc"])).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
}

/// Issue 11: "boot from this medium". A BIOS-booted VM with an empty disk and an empty CD-ROM
/// drive finds nothing to boot; the installer CD is inserted live and `media/boot` puts the
/// CD first (kept in the spec) and resets the VM, which then boots the CD's installer.
#[test]
fn boot_from_medium_resets_into_the_cd() {
    use api::ImportVolRequest;
    use model::{DiskFormat, Size};
    use testkit::iso;
    let h = hvd();
    let c = h.client();
    c.vol_import(
        "default",
        &ImportVolRequest {
            name: "installer.iso".parse().unwrap(),
            source: iso::installer_iso().unwrap().iso,
            format: Some(DiskFormat::Raw),
        },
    )
    .unwrap();
    let mut spec = model::VmSpec::new("bios".parse().unwrap());
    spec.memory = Size(256 << 20);
    spec.disks
        .push("vol=default/bios.qcow2,size=64M".parse().unwrap());
    spec.cdrom = Some(PathBuf::new());
    spec.boot = Some("disk".parse().unwrap());
    spec.boot_menu = true;
    c.create(spec, true).unwrap();
    // No medium yet: refused, nothing changed.
    let e = c.media_boot("bios").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("no medium"), "{e}");
    c.media_insert("bios", "default/installer.iso").unwrap();
    let info = c.media_boot("bios").unwrap();
    assert_eq!(info.state, VmState::Running);
    let spec = info.spec.unwrap();
    assert_eq!(spec.boot.unwrap().to_string(), "cdrom,disk");
    h.wait_console("bios", iso::INSTALL_DONE_MARKER, Duration::from_secs(120))
        .unwrap();
    let argv = c.showcmd("bios").unwrap().argv;
    assert!(
        argv.iter().any(|a| a == "order=c,menu=on,splash-time=3000"),
        "{argv:?}"
    );

    // A VM that boots a kernel directly cannot boot from a medium.
    boot(&h, "direct", GraphicsSpec::default());
    let e = c.media_boot("direct").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("kernel"), "{e}");
}

/// The security types an RFB 3.8 server offers.
fn rfb_security_types(mut s: impl std::io::Read + std::io::Write) -> Vec<u8> {
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    types
}

/// Issue 11: `graphics vnc` keeps its external listener (password only) and gets the private
/// console socket as well (no VNC password: hvd authenticates its callers); QMP's
/// `set_password` and `query-vnc` still mean the external one.
#[test]
fn vnc_graphics_also_has_the_private_console() {
    let h = hvd();
    boot(
        &h,
        "both",
        "vnc,listen=127.0.0.1,password=s3cret".parse().unwrap(),
    );
    let vnc = h.client().info("both").unwrap().vnc.expect("vnc info");
    assert_eq!(vnc.host, "127.0.0.1");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", vnc.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        rfb_security_types(tcp),
        [2],
        "the external listener wants the password"
    );
    let sock = private_dirs(&h)[0].join("vnc.sock");
    let unix = UnixStream::connect(&sock).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        rfb_security_types(unix),
        [1],
        "the private socket needs none"
    );
    h.client().destroy("both").unwrap();
}
