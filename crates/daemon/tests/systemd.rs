//! Issue 15: hvd as a systemd service. Readiness (`Type=notify`): hvd says `READY=1` on
//! `$NOTIFY_SOCKET` only once its API answers, and `STOPPING=1` when it stops.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use testkit::TestHvd;

/// The datagrams hvd sent, each as text, waiting up to `timeout` for the first.
fn received(sock: &UnixDatagram, timeout: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(timeout)).expect("read timeout");
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
    }
    out
}

/// Issue 15, item 2: `READY=1` (with a `STATUS=`) once the API answers, `STOPPING=1` on SIGTERM.
#[test]
fn issue_15_hvd_notifies_ready_and_stopping() {
    let dir = std::env::temp_dir().join(format!("hv-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    let path_str = path.to_str().expect("utf-8 path");
    let mut h = TestHvd::start_with_env(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &[("NOTIFY_SOCKET", path_str)],
    )
    .expect("hvd starts");
    // TestHvd::start returns once the API answered; READY=1 was sent before the first answer.
    let ready = received(&sock, Duration::from_secs(10)).join("\n");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving ")),
        "{ready:?}"
    );
    h.client().list().expect("the API answers after READY=1");
    h.stop().expect("hvd stops");
    let stopping = received(&sock, Duration::from_secs(10)).join("\n");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    drop(h);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

/// A Debian guest under the test's hvd, driven over its serial console.
struct Guest<'a> {
    h: &'a TestHvd,
    vm: &'static str,
    step: std::cell::Cell<u32>,
}

impl Guest<'_> {
    /// Runs `cmd` in the guest's root shell and returns its output (lines joined by spaces);
    /// fails, with the console, unless it exits 0 within `timeout`.
    fn sh(&self, cmd: &str, timeout: Duration) -> String {
        let n = self.step.get() + 1;
        self.step.set(n);
        let line = format!(
            "set -o pipefail; out=$( ({cmd}) 2>&1 | tr '\\n' ' '); echo \"HV-STEP-{n} rc=$? out=$out HV-END-{n}\""
        );
        self.h
            .type_line(self.vm, &line)
            .expect("typing into the console");
        // With the end marker: the console arrives slowly, and a match must not take half a line.
        let re = format!("HV-STEP-{n} rc=(\\d+) out=.* HV-END-{n}");
        let got = self
            .h
            .wait_console(self.vm, &re, timeout)
            .unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
        let end = format!("HV-END-{n}");
        let rest = got
            .trim_end()
            .trim_end_matches(end.as_str())
            .split_once(" rc=")
            .map(|(_, r)| r)
            .unwrap_or("");
        let (rc, out) = rest.split_once(" out=").unwrap_or((rest, ""));
        assert_eq!(
            rc,
            "0",
            "{cmd} failed: {out}\nconsole:\n{}",
            self.h.console_text(self.vm)
        );
        out.trim().to_owned()
    }

    /// Waits for root's shell on the console after the first boot.
    fn wait_login(&self, timeout: Duration) {
        let re = format!(
            "(?s){}.{{0,200}}?HV-PROMPT rc=0 # ",
            testkit::debian::LOGIN_MARKER
        );
        self.h
            .wait_console(self.vm, &re, timeout)
            .unwrap_or_else(|e| panic!("first boot: {e:#}"));
    }

    /// Reboots the guest and waits for root's shell again. The console scrollback holds the
    /// earlier logins, so the next login prints a marker of its own (appended to .bashrc).
    fn reboot(&self, timeout: Duration) {
        let n = self.step.get() + 1;
        let marker = format!("HV-BOOT-{n}");
        self.sh(&format!("echo 'echo {marker}' >>/root/.bashrc"), timeout);
        self.h
            .type_line(self.vm, "systemctl reboot")
            .expect("typing reboot");
        self.h
            .wait_console(
                self.vm,
                &format!("(?s){marker}.{{0,200}}?HV-PROMPT rc=0 # "),
                timeout,
            )
            .unwrap_or_else(|e| panic!("reboot: {e:#}"));
    }
}

/// Issue 15, the end-to-end test: hv's package in a real systemd (a Debian guest under TCG).
/// `apt install` offline, `systemctl enable --now hvd`, `hv host check` says systemd runs, a
/// VM's QEMU lands in `hv-vm-NAME.scope` under `hv.slice`, `systemctl restart hvd` leaves that
/// QEMU (same pid) running, hvd logs to the journal with fields, and after a reboot hvd is back
/// with the autostart VM (its QEMU reaches /dev/kvm through the device's group, which udev and
/// logind leave alone, not only through an ACL entry they rewrite at boot).
#[test]
fn issue_15_package_in_a_systemd_guest() {
    let hvd_bin = env!("CARGO_BIN_EXE_hvd");
    let debian = testkit::debian::debian_guest().expect("Debian guest builds");
    let tiny = testkit::guest::tiny_guest().expect("tiny guest builds");
    let h = TestHvd::start(hvd_bin.as_ref()).expect("hvd starts");
    let work = h.dir.join("sysd");
    let root = testkit::debian::overlay_in(&debian, &work).expect("overlay");
    let data = work.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let deb = testkit::package::hv_deb().expect("hv's .deb");
    let deb_name = deb
        .file_name()
        .expect("deb name")
        .to_string_lossy()
        .into_owned();
    std::fs::copy(&deb, data.join(&deb_name)).expect("copy deb");
    std::fs::copy(&tiny.kernel, data.join("vmlinuz")).expect("copy kernel");
    std::fs::copy(&tiny.initrd, data.join("initrd.gz")).expect("copy initrd");
    let data_img = work.join("data.img");
    testkit::debian::ext4_image(&data, &data_img, "512M").expect("data disk");

    let mut spec = model::VmSpec::new("deb".parse().unwrap());
    spec.memory = model::Size(2 << 30);
    spec.vcpus = 2;
    spec.kernel = Some(model::KernelBoot {
        path: debian.kernel.clone(),
        initrd: Some(debian.initrd.clone()),
        cmdline: Some(testkit::debian::CMDLINE.into()),
    });
    let disk = |path: &std::path::Path, format: model::DiskFormat| {
        let mut d: model::DiskSpec = format!("path={}", path.display())
            .parse()
            .expect("disk spec");
        d.format = Some(format);
        d
    };
    spec.disks = vec![
        disk(&root, model::DiskFormat::Qcow2),
        disk(&data_img, model::DiskFormat::Raw),
    ];
    let t0 = std::time::Instant::now();
    h.client()
        .create(spec, true)
        .expect("the Debian guest starts");
    let g = Guest {
        h: &h,
        vm: "deb",
        step: Default::default(),
    };
    let long = Duration::from_secs(600);
    g.wait_login(long);
    eprintln!("Debian guest at its shell after {:?}", t0.elapsed());
    g.sh("mount /dev/vdb /mnt", long);
    g.sh(&format!("apt-get install -y -qq /mnt/{deb_name}"), long);
    g.sh("systemctl enable --now hvd", long);
    let check = g.sh("hv host check", long);
    assert!(
        check.contains("running: each VM's QEMU gets its own scope"),
        "{check}"
    );
    g.sh("hv list", long);
    g.sh(
        "mkdir -p /srv/tiny && cp /mnt/vmlinuz /mnt/initrd.gz /srv/tiny/",
        long,
    );
    g.sh(
        "hv create t --memory 128M --kernel /srv/tiny/vmlinuz --initrd /srv/tiny/initrd.gz --cmdline console=ttyS0 --start",
        long,
    );
    g.sh("hv wait t --state running --timeout 300", long);
    // The scope holds QEMU (and, with KVM in the guest, KVM's per-VM kernel thread).
    let procs = "/sys/fs/cgroup/hv.slice/hv-vm-t.scope/cgroup.procs";
    let hv_pid = "hv list | awk '$1 == \"t\" { print $NF }'";
    let pid = g.sh(hv_pid, long);
    assert!(pid.parse::<u32>().is_ok(), "hv list shows t's pid: {pid:?}");
    let scoped = g.sh(&format!("cat {procs}"), long);
    assert!(
        scoped.split_whitespace().any(|p| p == pid),
        "QEMU {pid} is in the scope: {scoped}"
    );
    g.sh("systemctl is-active hv-vm-t.scope", long);

    g.sh("systemctl restart hvd", long);
    g.sh("hv wait t --state running --timeout 60", long);
    assert_eq!(g.sh(hv_pid, long), pid, "restarting hvd kept the QEMU");
    let scoped = g.sh(&format!("cat {procs}"), long);
    assert!(
        scoped.split_whitespace().any(|p| p == pid),
        "QEMU {pid} is still in the scope: {scoped}"
    );
    let cgroup = g.sh(&format!("cat /proc/{pid}/cgroup"), long);
    assert!(cgroup.contains("/hv.slice/hv-vm-t.scope"), "{cgroup}");
    g.sh("systemctl status hv-vm-t.scope --no-pager", long);
    // Item 4: hvd logs to the journal with its fields as journal fields.
    let logged = g.sh("journalctl -u hvd VM=t -o cat --no-pager | tail -n 3", long);
    assert!(!logged.is_empty(), "journal entries with VM=t");
    // cloud-init without a seed is disabled at boot (ds-identify), so it costs no boot time.
    let ci = g.sh("cloud-init status; true", long);
    assert!(ci.contains("disabled"), "{ci}");

    g.sh("hv autostart t", long);
    let t1 = std::time::Instant::now();
    g.reboot(long);
    eprintln!("rebooted to the shell in {:?}", t1.elapsed());
    // The console logs in before multi-user.target is reached: wait for hvd's start job.
    g.sh(
        "timeout 300 sh -c 'until systemctl is-active -q hvd; do sleep 1; done'",
        long,
    );
    let listed = g.sh("hv list --all", long);
    assert!(listed.contains("t "), "hvd came back knowing t: {listed}");
    // The autostart VM comes back with the host.
    let back = g.sh(
        "timeout 300 sh -c 'until hv list | grep -q \"^t .*running\"; do sleep 2; done'; echo rc=$?",
        long,
    );
    if !back.contains("rc=0") {
        let journal = g.sh(
            "journalctl -b -u hvd --no-pager -o verbose | grep -E '^ *(MESSAGE|ERROR|REASON|STATE)=' | tail -n 40; tail -n 20 /var/lib/hv/vms/t/qemu.log; tail -n 20 /var/lib/hv/vms/t/qmp.log",
            long,
        );
        let info = g.sh(
            "hv info t; hv list --all; systemctl status hv-vm-t.scope --no-pager; true",
            long,
        );
        panic!("t did not come back after the reboot:\n{info}\n{journal}");
    }
    eprintln!("package test took {:?}", t0.elapsed());
    h.client().destroy("deb").expect("destroy");
}
