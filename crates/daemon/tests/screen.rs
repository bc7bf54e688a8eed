//! Issue 11: every VM's screen. The private VNC socket of the browser console, screenshots,
//! keys and booting from a medium, on real QEMU with the tiny guest under TCG, driven through
//! hvd's API.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use model::{GraphicsSpec, VmState};
use testkit::{TestHvd, VmOpts};

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

/// The private VNC socket directories in the run dir.
fn vnc_dirs(h: &TestHvd) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(h.state_dir.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "vnc"))
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
/// when QEMU ends. `graphics none` has no socket.
#[test]
fn console_vnc_socket_is_private_and_speaks_rfb() {
    let mut h = hvd();
    boot(&h, "scr", GraphicsSpec::default());
    let dirs = vnc_dirs(&h);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let sock = dirs[0].join("sock");
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
    assert!(vnc_dirs(&h).is_empty(), "the socket directory is removed");

    boot(&h, "blind", GraphicsSpec::None);
    assert!(vnc_dirs(&h).is_empty(), "graphics none has no VNC socket");
    let argv = h.client().showcmd("blind").unwrap().argv;
    assert!(!argv.iter().any(|a| a == "-vnc"), "{argv:?}");
    h.client().destroy("blind").unwrap();
}
