//! Issue 14, item 2: cloud-init NoCloud seeds. hvd builds a `cidata` FAT image from the spec's
//! `cloud_init` (contents, never host paths), attaches it read-only, rebuilds it when the inputs
//! change and removes it with the VM. A real Debian guest running cloud-init takes its hostname,
//! user and ssh key from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use model::{CloudInit, VmSpec};
use testkit::{TestHvd, VmOpts};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvhPDJlr1TDt9BBI8XdGu7bmlCa4nOqALzFqgzw5bNz hv-test@host";

fn seed_of(h: &TestHvd, vm: &str) -> PathBuf {
    h.state_dir.join("vms").join(vm).join("cidata.img")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn with_hostname(mut spec: VmSpec, host: &str) -> VmSpec {
    spec.cloud_init = Some(CloudInit {
        hostname: Some(host.into()),
        user: Some("alice".into()),
        ssh_keys: vec![KEY.into()],
        ..Default::default()
    });
    spec
}

/// The seed is built at start, read-only in the guest (a write fails), rebuilt after an edit,
/// and gone with the VM. Runs on the tiny guest, which reads the seed disk's raw bytes.
#[test]
fn issue_14_seed_is_read_only_regenerated_on_edit_and_removed_at_undefine() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts");
    let c = h.client();
    let spec = with_hostname(h.tiny_spec("ci", VmOpts::default()).expect("spec"), "one");
    c.create(spec.clone(), true).expect("create --start");
    h.wait_ready("ci").expect("guest ready");
    let seed = seed_of(&h, "ci");
    let first = std::fs::read(&seed).expect("the seed is in the VM's directory");
    assert!(
        contains(&first, "local-hostname: one"),
        "meta-data in the seed"
    );
    assert!(contains(&first, KEY), "the key in the seed's user-data");
    // The tiny guest has no disk of its own: the seed is vda. Its label is in the boot sector.
    h.run_in_guest("ci", "echo ro=$(cat /sys/block/vda/ro)", "ro=1")
        .expect("the seed disk is read-only");
    h.run_in_guest(
        "ci",
        "echo label=$(dd if=/dev/vda bs=1 skip=43 count=6 2>/dev/null)",
        "label=cidata",
    )
    .expect("the seed is labelled cidata");
    h.run_in_guest(
        "ci",
        "dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; echo write-rc=$?",
        r"write-rc=[1-9]",
    )
    .expect("writing the seed fails in the guest");
    h.run_in_guest(
        "ci",
        "echo seen=$(grep -c 'local-hostname: one' /dev/vda)",
        "seen=1",
    )
    .expect("the guest reads the seed unchanged");
    c.destroy("ci").expect("destroy");
    assert_eq!(
        std::fs::read(&seed).expect("seed kept"),
        first,
        "a write in the guest did not reach it"
    );

    // An edit changes the inputs: the next start writes a new seed (and a new instance-id).
    let edited = with_hostname(c.info("ci").expect("info").spec.expect("spec"), "two");
    c.update("ci", &edited).expect("edit");
    c.start("ci", false).expect("start");
    h.wait_ready("ci").expect("guest ready again");
    let second = std::fs::read(&seed).expect("seed");
    assert!(contains(&second, "local-hostname: two"));
    assert!(!contains(&second, "local-hostname: one"));
    let iid = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let at = s.find("instance-id: iid-hv-").expect("instance-id");
        s[at..at + 36].to_string()
    };
    assert_ne!(iid(&first), iid(&second), "new inputs, new instance-id");
    h.run_in_guest(
        "ci",
        "echo seen=$(grep -c 'local-hostname: two' /dev/vda)",
        "seen=1",
    )
    .expect("the guest sees the new seed");
    c.destroy("ci").expect("destroy");

    // Dropping cloud_init removes the seed at the next start; undefine removes the directory.
    let mut plain = c.info("ci").expect("info").spec.expect("spec");
    plain.cloud_init = None;
    c.update("ci", &plain).expect("edit");
    c.start("ci", false).expect("start");
    h.wait_ready("ci").expect("guest ready");
    assert!(!seed.exists(), "no cloud_init, no seed");
    c.destroy("ci").expect("destroy");
    c.update("ci", &edited).expect("edit");
    c.start("ci", false).expect("start");
    h.wait_ready("ci").expect("guest ready");
    assert!(seed.exists());
    c.undefine("ci", false, true).expect("undefine --force");
    assert!(!seed.exists(), "undefine removes the seed");
    h.check_qemus_confined().expect("QEMU confined");
}

/// Hostile cloud-init inputs are refused with a message naming the field and the fix, and
/// nothing is defined.
#[test]
fn issue_14_bad_cloud_init_inputs_define_nothing() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts");
    let c = h.client();
    let base = h.tiny_spec("bad", VmOpts::default()).expect("spec");
    let cases: Vec<(CloudInit, &str)> = vec![
        (
            CloudInit {
                hostname: Some("no_underscores".into()),
                ..Default::default()
            },
            "not a DNS label",
        ),
        (
            CloudInit {
                user: Some("x$(reboot)".into()),
                ..Default::default()
            },
            "not a user name",
        ),
        (
            CloudInit {
                ssh_keys: vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()],
                ..Default::default()
            },
            "not the private one",
        ),
        (
            CloudInit {
                user_data: Some("#include https://example.com/x".into()),
                ..Default::default()
            },
            "#cloud-config",
        ),
        (
            CloudInit {
                user_data: Some("#cloud-config\nusers: [\n".into()),
                ..Default::default()
            },
            "not valid YAML",
        ),
        (
            CloudInit {
                user_data: Some(format!("#!/bin/sh\n#{}\n", "x".repeat(70 << 10))),
                ..Default::default()
            },
            "at most 64 KiB",
        ),
        (
            CloudInit {
                user_data: Some("#cloud-config\nhostname: other\n".into()),
                hostname: Some("mine".into()),
                ..Default::default()
            },
            "keep one of them",
        ),
    ];
    for (ci, want) in cases {
        let mut spec = base.clone();
        spec.cloud_init = Some(ci.clone());
        let e = c
            .create(spec, true)
            .expect_err(&format!("{ci:?} was accepted"));
        let msg = format!("{e:#}");
        assert!(msg.contains("cloud_init."), "{msg}");
        assert!(msg.contains(want), "{ci:?}: {msg:?} does not say {want:?}");
        assert!(c.list().expect("list").is_empty(), "nothing defined");
        assert!(!h.state_dir.join("vms/bad").exists(), "no VM directory");
    }
    // An edit to bad inputs is refused and the old definition stays.
    let good = with_hostname(base.clone(), "good");
    c.create(good.clone(), false).expect("create");
    let mut bad = good.clone();
    bad.cloud_init.as_mut().expect("ci").hostname = Some("-x".into());
    c.update("bad", &bad).expect_err("bad edit refused");
    assert_eq!(
        c.info("bad").expect("info").spec.expect("spec").cloud_init,
        good.cloud_init
    );
}

/// A Debian guest under the test's hvd, driven over its serial console (root's shell).
struct Guest<'a> {
    h: &'a TestHvd,
    vm: &'static str,
    step: std::cell::Cell<u32>,
}

impl Guest<'_> {
    /// Runs `cmd` in the guest and returns its output (lines joined by spaces); fails, with the
    /// console, unless it exits 0 within `timeout`.
    fn sh(&self, cmd: &str, timeout: Duration) -> String {
        let n = self.step.get() + 1;
        self.step.set(n);
        let line = format!(
            "out=$(set -o pipefail; ({cmd}) 2>&1 | tr '\\n' ' '); echo \"HV-STEP-{n} rc=$? out=$out HV-END-{n}\""
        );
        self.h
            .type_line(self.vm, &line)
            .expect("typing into the console");
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

    /// Waits for root's shell on the console after the VM's latest start.
    fn wait_login(&self, timeout: Duration) {
        let re = format!("(?s){}.*?HV-PROMPT rc=0 # ", testkit::debian::LOGIN_MARKER);
        self.h
            .wait_console(self.vm, &re, timeout)
            .unwrap_or_else(|e| panic!("login: {e:#}"));
    }
}

/// Waits (in the guest) until cloud-init's final stage has run, and checks it saw no error.
fn cloud_init_done(g: &Guest, timeout: Duration) {
    // `--wait` waits while cloud-init has not run or is running; it exits 1 on an error.
    let status = g.sh("cloud-init status --wait --long", timeout);
    assert!(status.contains("status: done"), "{status}");
}

fn debian_spec(root: &Path) -> VmSpec {
    let debian = testkit::debian::debian_guest().expect("Debian guest builds");
    let mut spec = VmSpec::new("deb".parse().expect("name"));
    spec.memory = model::Size(1 << 30);
    spec.vcpus = 2;
    spec.kernel = Some(model::KernelBoot {
        path: debian.kernel.clone(),
        initrd: Some(debian.initrd.clone()),
        cmdline: Some(testkit::debian::CMDLINE.into()),
    });
    let mut d: model::DiskSpec = format!("path={}", root.display()).parse().expect("disk");
    d.format = Some(model::DiskFormat::Qcow2);
    spec.disks = vec![d];
    spec
}

/// The end-to-end test: `--hostname`, `--user` and `--ssh-key` reach a real Debian guest
/// through cloud-init, and a changed hostname is applied at the next boot (new seed, new
/// instance-id). Under TCG a boot with cloud-init takes minutes: generous timeouts, no timing
/// assertions.
#[test]
fn issue_14_debian_guest_takes_hostname_user_and_key_from_the_seed() {
    let debian = testkit::debian::debian_guest().expect("Debian guest builds");
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts");
    let root = testkit::debian::overlay_in(&debian, &h.dir.join("deb")).expect("overlay");
    let mut spec = debian_spec(&root);
    spec.cloud_init = Some(CloudInit {
        user_data: Some(
            // The test image has no locales and no ssh server: skip those modules, so that any
            // error cloud-init reports is hv's.
            "#cloud-config\nlocale: false\nssh_genkeytypes: []\nssh_deletekeys: false\n\
             runcmd:\n  - [sh, -c, 'echo hv-runcmd-ran > /run/hv-runcmd']\n"
                .into(),
        ),
        hostname: Some("ci-guest".into()),
        user: Some("alice".into()),
        ssh_keys: vec![KEY.into()],
        ..Default::default()
    });
    let c = h.client();
    let t0 = std::time::Instant::now();
    c.create(spec, true).expect("the Debian guest starts");
    let g = Guest {
        h: &h,
        vm: "deb",
        step: Default::default(),
    };
    let long = Duration::from_secs(900);
    g.wait_login(long);
    cloud_init_done(&g, long);
    eprintln!(
        "Debian guest: cloud-init done {:?} after the start",
        t0.elapsed()
    );
    assert_eq!(g.sh("hostname", long), "ci-guest");
    assert_eq!(g.sh("cat ~alice/.ssh/authorized_keys", long), KEY);
    assert_eq!(
        g.sh("stat -c %U ~alice/.ssh/authorized_keys", long),
        "alice"
    );
    assert_eq!(g.sh("cat /run/hv-runcmd", long), "hv-runcmd-ran");
    // The seed is the guest's second disk, read-only, found by its label.
    assert_eq!(g.sh("blkid -s LABEL -o value /dev/vdb", long), "cidata");
    assert_eq!(g.sh("cat /sys/block/vdb/ro", long), "1");
    let iid1 = g.sh("cat /var/lib/cloud/data/instance-id", long);
    assert!(iid1.starts_with("iid-hv-"), "{iid1}");

    // A new hostname: the next start rebuilds the seed and cloud-init applies it.
    c.shutdown("deb", 600, true).expect("shutdown");
    let mut edited = c.info("deb").expect("info").spec.expect("spec");
    edited.cloud_init.as_mut().expect("ci").hostname = Some("ci-guest2".into());
    c.update("deb", &edited).expect("edit");
    c.start("deb", false).expect("start again");
    g.wait_login(long);
    cloud_init_done(&g, long);
    assert_eq!(g.sh("hostname", long), "ci-guest2");
    let iid2 = g.sh("cat /var/lib/cloud/data/instance-id", long);
    assert_ne!(iid1, iid2, "new inputs, new instance-id");
    assert_eq!(g.sh("cat ~alice/.ssh/authorized_keys", long), KEY);
    c.destroy("deb").expect("destroy");
    h.check_qemus_confined().expect("QEMU confined");
}
