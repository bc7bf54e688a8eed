//! The VM lifecycle on real QEMU with the tiny guest, driven through hvd's API only.
//! These boot real guests under TCG wherever KVM cannot run a standard guest.

use std::time::Duration;

use api::{ErrorCode, EventKind};
use model::VmState;
use testkit::{guest, TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

const T: Duration = Duration::from_secs(30);

fn boot(h: &TestHvd, name: &str, opts: VmOpts) {
    let spec = h.tiny_spec(name, opts).unwrap();
    let info = h.client().create(spec, true).unwrap();
    assert_eq!(info.state, VmState::Running);
    h.wait_ready(name).unwrap();
    h.check_qemus_confined().unwrap();
}

#[test]
fn start_ready_acpi_shutdown_shutoff() {
    let h = hvd();
    boot(&h, "acpi", VmOpts::default());
    let info = h.client().info("acpi").unwrap();
    assert_eq!(
        info.accel.as_deref().map(|a| a == "tcg" || a == "kvm"),
        Some(true)
    );
    assert!(info.pid.is_some());
    let info = h.client().shutdown("acpi", 30, false).unwrap();
    assert_eq!(info.state, VmState::Shutoff);
    assert!(h.console_text("acpi").contains(guest::POWERDOWN_MARKER));
    assert!(h.qemu_pids().is_empty(), "QEMU is gone after shutdown");
    // Runtime sockets are cleaned up.
    let run: Vec<_> = std::fs::read_dir(h.state_dir.join("run"))
        .unwrap()
        .collect();
    assert!(run.is_empty(), "run dir still has {run:?}");
}

#[test]
fn guest_ignoring_acpi_is_not_reported_shut_down_and_force_powers_off() {
    let h = hvd();
    boot(
        &h,
        "deaf",
        VmOpts {
            no_acpi: true,
            ..Default::default()
        },
    );
    let e = h.client().shutdown("deaf", 2, false).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
    assert!(e.to_string().contains("still running"), "{e}");
    assert_eq!(h.client().info("deaf").unwrap().state, VmState::Running);
    // The guest still works.
    h.run_in_guest("deaf", "echo still-$((40+2))", "still-42")
        .unwrap();
    let info = h.client().shutdown("deaf", 1, true).unwrap();
    assert_eq!(info.state, VmState::Shutoff);
    assert!(h.qemu_pids().is_empty());
}

#[test]
fn destroy_powers_off_hard_and_keeps_the_definition() {
    let h = hvd();
    boot(
        &h,
        "d",
        VmOpts {
            no_acpi: true,
            ..Default::default()
        },
    );
    let info = h.client().destroy("d").unwrap();
    assert_eq!(info.state, VmState::Shutoff);
    assert!(h.qemu_pids().is_empty());
    assert_eq!(h.client().list().unwrap().len(), 1);
    let e = h.client().destroy("d").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
}

#[test]
fn pause_resume_reset() {
    let h = hvd();
    boot(&h, "p", VmOpts::default());
    assert_eq!(h.client().pause("p").unwrap().state, VmState::Paused);
    assert_eq!(
        h.client().pause("p").unwrap_err().code(),
        Some(ErrorCode::InvalidState)
    );
    assert_eq!(h.client().resume("p").unwrap().state, VmState::Running);
    h.run_in_guest("p", "echo alive-after-resume", "alive-after-resume\r?\n")
        .unwrap();
    let pid = h.client().info("p").unwrap().pid;
    h.client().reset("p").unwrap();
    // The guest boots again in the same QEMU.
    h.wait_console(
        "p",
        "(?s)alive-after-resume.*HV-GUEST-READY",
        Duration::from_secs(60),
    )
    .unwrap();
    let info = h.client().info("p").unwrap();
    assert_eq!((info.state, info.pid), (VmState::Running, pid));
}

#[test]
fn guest_reboot_keeps_running_and_guest_poweroff_is_seen_at_once() {
    let h = hvd();
    boot(&h, "g", VmOpts::default());
    let mut events = h.client().events().unwrap();
    h.type_line("g", "reboot -f").unwrap();
    let mut saw_reset = false;
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut events, &mut line).unwrap() > 0 {
        let ev: api::Event = serde_json::from_str(line.trim()).unwrap();
        line.clear();
        if matches!(ev.kind, EventKind::Reset) {
            saw_reset = true;
            break;
        }
    }
    assert!(saw_reset);
    h.wait_console(
        "g",
        "(?s)HV-GUEST-READY.*HV-GUEST-READY",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(h.client().info("g").unwrap().state, VmState::Running);
    h.wait_ready("g").unwrap();
    h.type_line("g", "poweroff -f").unwrap();
    h.wait_state("g", VmState::Shutoff, T).unwrap();
    let info = h.client().info("g").unwrap();
    assert!(
        info.crash.is_none(),
        "a guest power-off is not a crash: {info:?}"
    );
}

#[test]
fn hv_reboot_restarts_the_guest() {
    let h = hvd();
    boot(&h, "rb", VmOpts::default());
    let before = h.client().info("rb").unwrap().pid;
    let info = h.client().reboot("rb", 30, false).unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_ne!(info.pid, before, "reboot = shutdown + start: a new QEMU");
    h.wait_ready("rb").unwrap();
    assert!(
        !h.console_text("rb").contains(guest::POWERDOWN_MARKER),
        "the console log is per start"
    );
}

#[test]
fn sigkill_of_hvd_leaves_vms_running_and_a_new_hvd_reattaches() {
    let mut h = hvd();
    boot(&h, "keep", VmOpts::default());
    let pid = h.client().info("keep").unwrap().pid;
    h.kill9().unwrap();
    // Output while hvd is down is not lost (QEMU logs the chardev itself).
    std::thread::sleep(Duration::from_millis(200));
    h.start_again().unwrap();
    let info = h.client().info("keep").unwrap();
    assert_eq!((info.state, info.pid), (VmState::Running, pid));
    h.run_in_guest("keep", "echo reattached-$((6*7))", "reattached-42")
        .unwrap();
    assert!(
        h.console_text("keep").contains(guest::READY_MARKER),
        "scrollback survives the restart"
    );
    assert_eq!(
        h.client().shutdown("keep", 30, false).unwrap().state,
        VmState::Shutoff
    );
    // SIGTERM stops hvd, not the VMs.
    boot(&h, "keep2", VmOpts::default());
    let pid2 = h.client().info("keep2").unwrap().pid;
    // Open streams (events, a followed console log) do not hold hvd up on SIGTERM.
    let _events = h.client().events().unwrap();
    let _follow = h.client().console_log("keep2", true).unwrap();
    h.restart().unwrap();
    let info = h.client().info("keep2").unwrap();
    assert_eq!((info.state, info.pid), (VmState::Running, pid2));
}

#[test]
fn vm_that_died_while_hvd_was_down_is_crashed_after_restart() {
    let mut h = hvd();
    boot(&h, "gone", VmOpts::default());
    let pid = h.client().info("gone").unwrap().pid.unwrap();
    h.kill9().unwrap();
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + T;
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| !c.is_empty())
            .unwrap_or(false)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    h.start_again().unwrap();
    let info = h.client().info("gone").unwrap();
    assert_eq!(info.state, VmState::Crashed);
    assert!(info.crash.unwrap().reason.contains("not its parent"));
    // A crashed VM can start again.
    h.client().start("gone", false).unwrap();
    h.wait_ready("gone").unwrap();
}

#[test]
fn sigkill_of_qemu_leaves_the_vm_crashed_with_the_reason() {
    let h = hvd();
    boot(&h, "k", VmOpts::default());
    let pid = h.client().info("k").unwrap().pid.unwrap();
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    h.wait_state("k", VmState::Crashed, T).unwrap();
    let crash = h.client().info("k").unwrap().crash.expect("crash info");
    assert_eq!(crash.signal, Some(9));
    assert!(crash.reason.contains("signal 9"), "{crash:?}");
    assert!(!crash.log_tail.is_empty(), "the QEMU log tail is kept");
}

#[test]
fn autostart_vms_start_when_hvd_starts() {
    let mut h = hvd();
    let spec = h
        .tiny_spec(
            "auto",
            VmOpts {
                autostart: true,
                ..Default::default()
            },
        )
        .unwrap();
    h.client().create(spec, false).unwrap();
    let spec = h.tiny_spec("manual", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    h.restart().unwrap();
    h.wait_state("auto", VmState::Running, T).unwrap();
    h.wait_ready("auto").unwrap();
    assert_eq!(h.client().info("manual").unwrap().state, VmState::Shutoff);
    // A user's shutdown sticks across an hvd restart in the same host boot.
    h.client().shutdown("auto", 30, false).unwrap();
    h.restart().unwrap();
    assert_eq!(h.client().info("auto").unwrap().state, VmState::Shutoff);
    h.client().autostart("auto", false).unwrap();
    assert!(!h.client().info("auto").unwrap().autostart);
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn ephemeral_writes_are_discarded_and_normal_writes_persist() {
    let h = hvd();
    for (name, ephemeral) in [("eph", true), ("persist", false)] {
        let disk = h.dir.join(format!("{name}.raw"));
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let before = sha(&disk);
        let d: model::DiskSpec = format!("path={},format=raw", disk.display())
            .parse()
            .unwrap();
        boot(
            &h,
            name,
            VmOpts {
                disks: vec![d],
                ephemeral,
                ..Default::default()
            },
        );
        assert!(h.console_text(name).contains("HV-DISK vda"));
        h.run_in_guest(name, "echo hv-was-here | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null && echo WRITE-$((1+1))", "WRITE-2").unwrap();
        h.client().shutdown(name, 30, false).unwrap();
        let after = sha(&disk);
        if ephemeral {
            assert_eq!(before, after, "an ephemeral VM changed its disk");
            let leftovers: Vec<_> = std::fs::read_dir(h.state_dir.join("vms").join(name))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("ephemeral"))
                .collect();
            assert!(leftovers.is_empty(), "overlay left behind");
        } else {
            assert_ne!(before, after, "the write did not reach the disk");
            assert!(std::fs::read(&disk).unwrap().starts_with(b"hv-was-here"));
        }
    }
}

#[test]
fn several_consoles_see_output_and_any_can_type() {
    use tungstenite::Message;
    let h = hvd();
    boot(&h, "multi", VmOpts::default());
    let mut a = h.client().console("multi").unwrap();
    let mut b = h.client().console("multi").unwrap();
    b.send(Message::Binary(b"echo from-b-$((2+3))\n".to_vec().into()))
        .unwrap();
    for ws in [&mut a, &mut b] {
        ws.get_ref().set_read_timeout(Some(T)).unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("from-b-5") {
            match ws.read().unwrap() {
                Message::Binary(d) => seen.extend_from_slice(&d),
                Message::Text(t) => seen.extend_from_slice(t.as_bytes()),
                _ => {}
            }
        }
    }
    // The log streams too, and --follow ends when the VM stops.
    let mut follow = h.client().console_log("multi", true).unwrap();
    h.type_line("multi", "poweroff -f").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut follow, &mut text).unwrap();
    assert!(
        text.contains("from-b-5") && text.contains(guest::READY_MARKER),
        "{text}"
    );
    h.wait_state("multi", VmState::Shutoff, T).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Reads console WebSocket frames until their text contains `needle`.
fn read_ws_until(ws: &mut tungstenite::WebSocket<client::ConsoleStream>, needle: &str) -> String {
    use tungstenite::Message;
    ws.get_ref().set_read_timeout(Some(T)).unwrap();
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(d)) => seen.extend_from_slice(&d),
            Ok(Message::Text(t)) => seen.extend_from_slice(t.as_bytes()),
            Ok(_) => {}
            Err(e) => panic!(
                "no {needle:?} in the console stream ({e}); last output: {}",
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(500)..])
            ),
        }
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find(needle) {
            return text[at.saturating_sub(200)..].to_string();
        }
        if seen.len() > 64 << 20 {
            seen.drain(..32 << 20);
        }
    }
}

/// Issue 9: input for a guest that does not read its console is bounded in hvd (the excess is
/// refused with a note), and a console client that falls behind sees how much it missed.
#[test]
fn console_input_is_bounded_and_a_slow_client_sees_a_skip_marker() {
    use tungstenite::Message;
    let mut h = hvd();
    boot(&h, "flood", VmOpts::default());
    let hvd_pid = h.hvd_pid().unwrap();

    // A paused guest reads nothing: QEMU stops taking input once the UART FIFO is full.
    h.client().pause("flood").unwrap();
    let before = rss_kib(hvd_pid);
    let mut ws = h.client().console("flood").unwrap();
    let frame = vec![b'#'; 512 << 10];
    for _ in 0..64 {
        ws.send(Message::Binary(frame.clone().into())).unwrap();
    }
    let note = read_ws_until(&mut ws, "console input dropped");
    let grown = rss_kib(hvd_pid).saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "hvd grew by {grown} KiB for 32 MiB of unread input"
    );
    assert!(note.contains("wait for the guest"), "{note}");
    drop(ws);
    h.client().destroy("flood").unwrap();
    h.client().start("flood", false).unwrap();
    h.wait_ready("flood").unwrap();

    // A client that never reads falls behind a guest that prints without end.
    let mut slow = h.client().console("flood").unwrap();
    h.type_line(
        "flood",
        &format!("while true; do echo {}; done", "0123456789".repeat(10)),
    )
    .unwrap();
    let mut follow = h.client().console_log("flood", true).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    while total < 4 << 20 {
        let n = std::io::Read::read(&mut follow, &mut buf).unwrap();
        assert!(n > 0, "the console log stream ended early");
        total += n;
    }
    let marker = read_ws_until(&mut slow, "bytes of console output were skipped]");
    assert!(marker.contains("\r\n[hv: "), "{marker}");
    h.client().destroy("flood").unwrap();
    let _ = h.stop();
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Issue 9: a guest that prints forever cannot fill the disk: console.log stays near hvd's
/// `--log-cap` while hvd runs, and what QEMU appended while hvd was down is cut back when a new
/// hvd re-attaches.
#[test]
fn a_console_flood_keeps_the_console_log_under_its_cap() {
    const CAP: u64 = 256 << 10;
    // The cap, a check interval (cap / 4) and what sits in the serial socket's buffers.
    const BOUND: u64 = 1 << 20;
    let mut h =
        TestHvd::start_with_args(env!("CARGO_BIN_EXE_hvd").as_ref(), &["--log-cap", "256K"])
            .expect("hvd starts");
    boot(&h, "loud", VmOpts::default());
    let log = h.state_dir.join("vms/loud/console.log");
    h.type_line(
        "loud",
        &format!("while true; do echo {}; done", "0123456789".repeat(10)),
    )
    .unwrap();
    let mut follow = h.client().console_log("loud", true).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let (mut total, mut biggest) = (0u64, 0u64);
    // Six times the cap: it is passed and cut back several times.
    while total < 6 * CAP {
        let n = std::io::Read::read(&mut follow, &mut buf).unwrap();
        assert!(n > 0, "the console log stream ended early");
        total += n as u64;
        biggest = biggest.max(file_len(&log));
    }
    drop(follow);
    assert!(
        biggest <= BOUND,
        "console.log reached {biggest} bytes (cap {CAP})"
    );

    // While hvd is down QEMU appends on its own; the next hvd cuts the file back at once.
    h.stop().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while file_len(&log) < BOUND + (BOUND >> 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest stopped printing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    h.start_again().unwrap();
    let after = file_len(&log);
    assert!(
        after <= BOUND,
        "console.log is {after} bytes after re-attach (cap {CAP})"
    );
    h.client().destroy("loud").unwrap();
}

#[test]
fn vnc_listens_with_a_password_and_reports_its_port() {
    let h = hvd();
    let mut spec = h.tiny_spec("vnc", VmOpts::default()).unwrap();
    spec.graphics = "vnc,listen=127.0.0.1,password=s3cret".parse().unwrap();
    h.client().create(spec, true).unwrap();
    let vnc = h.client().info("vnc").unwrap().vnc.expect("vnc info");
    assert_eq!(vnc.host, "127.0.0.1");
    assert!(vnc.port >= 5900);
    // RFB handshake: the server offers VNC authentication (type 2) only, never "none" (1).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", vnc.port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    assert_eq!(types, vec![2], "password auth only");
    let args = h.client().showcmd("vnc").unwrap().argv.join(" ");
    assert!(
        args.contains("password=on") && !args.contains("s3cret"),
        "{args}"
    );
}

#[test]
fn disks_on_every_bus_cdrom_and_q35_run_in_qemu() {
    let h = hvd();
    for machine in [model::Machine::PC, model::Machine::Q35] {
        let name = format!("bus-{machine}");
        let mut spec = h.tiny_spec(&name, VmOpts::default()).unwrap();
        spec.machine = machine;
        for (i, extra) in [
            "bus=virtio,cache=none",
            "bus=scsi,cache=writethrough",
            "bus=ide,cache=unsafe",
            "bus=sata,cache=directsync",
            "bus=virtio,readonly=on",
        ]
        .iter()
        .enumerate()
        {
            let f = h.dir.join(format!("{name}-{i}.raw"));
            std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
            spec.disks.push(
                format!("path={},format=raw,{extra}", f.display())
                    .parse()
                    .unwrap(),
            );
        }
        let iso = h.dir.join(format!("{name}.iso"));
        std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
        spec.cdrom = Some(iso);
        spec.nics.push("user".parse().unwrap());
        spec.nics.push("user,model=e1000".parse().unwrap());
        h.client().create(spec, true).unwrap();
        h.wait_ready(&name).unwrap();
        let console = h.console_text(&name);
        assert!(
            console.contains("HV-DISK vda") && console.contains("HV-DISK vdb"),
            "{console}"
        );
        let argv = h.client().showcmd(&name).unwrap().argv.join(" ");
        for dev in [
            "virtio-blk-pci",
            "scsi-hd",
            "ide-hd",
            "ide-cd",
            "e1000",
            "virtio-net-pci",
        ] {
            assert!(argv.contains(dev), "{dev} missing from {argv}");
        }
        h.client().destroy(&name).unwrap();
    }
}
