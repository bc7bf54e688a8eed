//! State that survives anything: hvd killed at awkward moments, QEMUs it has no record of,
//! unreadable rows, QEMUs that do not answer, and waits that must end when QEMU does.

use std::time::{Duration, Instant};

use model::VmState;
use testkit::{TestHvd, VmOpts};

fn hvd() -> TestHvd {
    TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).expect("hvd starts")
}

const T: Duration = Duration::from_secs(30);

/// Issue 9, item 5: an operation waiting on a QMP event (here a NIC unplug the paused guest
/// cannot acknowledge) ends as soon as QEMU is destroyed, not at its timeout.
#[test]
fn a_wait_on_a_qmp_event_ends_when_qemu_is_destroyed() {
    let h = hvd();
    let mut spec = h.tiny_spec("w", VmOpts::default()).unwrap();
    spec.nics.push("user".parse().unwrap());
    h.client().create(spec, true).unwrap();
    h.wait_ready("w").unwrap();
    let mac = h.client().info("w").unwrap().spec.unwrap().nics[0]
        .mac
        .unwrap()
        .to_string();
    h.client().pause("w").unwrap();
    let socket = h.client().socket().to_path_buf();
    let detach = std::thread::spawn(move || {
        let c = client::Client::new(socket);
        let t0 = Instant::now();
        let r = c.nic_detach(
            "w",
            &mac,
            &api::DetachNicRequest {
                live: Some(true),
                config: Some(false),
            },
        );
        (r, t0)
    });
    // The unplug request is out once QEMU logged the device_del.
    let qmp_log = h.state_dir.join("vms/w/qmp.log");
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(&qmp_log)
        .unwrap_or_default()
        .contains("device_del")
    {
        assert!(Instant::now() < deadline, "no device_del was sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.client().destroy("w").unwrap();
    let destroyed = Instant::now();
    let (r, _) = detach.join().unwrap();
    let waited = destroyed.elapsed();
    let e = r.unwrap_err();
    assert!(
        waited < Duration::from_secs(10),
        "the detach waited {waited:?} after QEMU was gone"
    );
    assert!(e.to_string().contains("QEMU ended"), "{e}");
    assert_eq!(h.client().info("w").unwrap().state, VmState::Shutoff);
}

/// Runs `sql` on a stopped hvd's database.
fn edit_db(h: &TestHvd, sql: &str) {
    rusqlite::Connection::open(h.state_dir.join("hv.db"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// Issue 9, item 4: a stored row hvd cannot read stops hvd with an error that names the row
/// and says what to do; it is never skipped (the VM would silently vanish).
#[test]
fn hvd_refuses_to_start_on_a_row_it_cannot_read() {
    let mut h = hvd();
    let spec = h.tiny_spec("keep", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    let spec = h.tiny_spec("odd", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    h.stop().unwrap();
    edit_db(
        &h,
        "UPDATE vms SET runtime = '{\"pid\": \"twelve\"}' WHERE name = 'odd'",
    );
    let e = h.start_again().unwrap_err().to_string();
    assert!(
        e.contains("runtime of vms row") && e.contains("\"odd\"") && e.contains("sqlite3"),
        "{e}"
    );
    edit_db(
        &h,
        "UPDATE vms SET runtime = '{}', spec = '{\"name\": 5}' WHERE name = 'odd'",
    );
    let e = h.start_again().unwrap_err().to_string();
    assert!(
        e.contains("spec of vms row") && e.contains("\"odd\""),
        "{e}"
    );
    // A database from a newer hvd is refused too.
    let version: u32 = rusqlite::Connection::open(h.state_dir.join("hv.db"))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    edit_db(&h, "UPDATE vms SET spec = '{\"name\": \"odd\"}' WHERE name = 'odd'; PRAGMA user_version = 4242;");
    let e = h.start_again().unwrap_err().to_string();
    assert!(e.contains("schema version 4242, newer"), "{e}");
    edit_db(&h, &format!("PRAGMA user_version = {version};"));
    h.start_again().unwrap();
    let names: Vec<String> = h
        .client()
        .list()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["keep", "odd"]);
}

fn boot(h: &TestHvd, name: &str) -> u32 {
    let spec = h.tiny_spec(name, VmOpts::default()).unwrap();
    let info = h.client().create(spec, true).unwrap();
    assert_eq!(info.state, VmState::Running);
    h.wait_ready(name).unwrap();
    h.client().info(name).unwrap().pid.unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Issue 9, item 4: hvd died between spawning QEMU and saving its pid (simulated by a
/// runtime record without the pid), or the VM's row is gone: at its next start hvd adopts the
/// QEMU of a known VM and stops the one that belongs to no VM. No orphan survives.
#[test]
fn qemus_without_a_record_are_adopted_or_stopped_at_startup() {
    let mut h = hvd();
    let a = boot(&h, "a");
    let b = boot(&h, "b");
    h.kill9().unwrap();
    edit_db(
        &h,
        "UPDATE vms SET runtime = '{}' WHERE name = 'a'; DELETE FROM vms WHERE name = 'b';",
    );
    h.start_again().unwrap();
    let info = h.client().info("a").unwrap();
    assert_eq!(info.state, VmState::Running, "a is adopted");
    assert_eq!(info.pid, Some(a));
    assert!(
        !alive(b),
        "the QEMU of the VM that no longer exists is stopped"
    );
    // The adopted VM is fully managed: its console and its destroy work.
    h.run_in_guest("a", "echo adopted-$((40+2))", "adopted-42")
        .unwrap();
    h.client().destroy("a").unwrap();
    assert!(!alive(a));
    assert!(h.qemu_pids().is_empty(), "{:?}", h.qemu_pids());
}

/// Issue 9, item 5: a QEMU that does not answer on QMP when hvd re-attaches (stopped with
/// SIGSTOP) is still supervised: destroy works and its exit is noticed.
#[test]
fn reattach_supervises_a_qemu_whose_qmp_does_not_answer() {
    let mut h = hvd();
    let pid = boot(&h, "s");
    h.kill9().unwrap();
    // SAFETY: kill(2) by PID on the QEMU this test booted.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    h.start_again().unwrap();
    let info = h.client().info("s").unwrap();
    assert_eq!(info.state, VmState::Running, "still tracked");
    let t0 = Instant::now();
    h.client().destroy("s").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(h.client().info("s").unwrap().state, VmState::Shutoff);
    assert!(!alive(pid));
}

/// Issue 9, item 5: a destroy while the VM is starting kills the QEMU being started, also
/// when it arrives before QEMU is spawned (here QEMU takes 3 s to come up).
#[test]
fn destroy_during_starting_kills_the_qemu_being_started() {
    /// Removes the wrapper's directory, also when the test fails.
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Dir(std::env::temp_dir().join(format!("hv-slowqemu-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let wrapper = dir.0.join("slow-qemu");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n/bin/sleep 3\nexec /usr/bin/qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let h = TestHvd::start_with_env(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &[("HV_QEMU", wrapper.to_str().unwrap())],
    )
    .unwrap();
    let spec = h.tiny_spec("d", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    let socket = h.client().socket().to_path_buf();
    let start = std::thread::spawn(move || client::Client::new(socket).start("d", false));
    h.wait_state("d", VmState::Starting, T).unwrap();
    h.client().destroy("d").unwrap();
    let e = start.join().unwrap().unwrap_err();
    assert!(
        e.to_string().contains("destroyed while it was starting"),
        "{e}"
    );
    assert_eq!(h.client().info("d").unwrap().state, VmState::Shutoff);
    // Past the wrapper's sleep: no QEMU came up after all.
    let calm = Instant::now() + Duration::from_secs(4);
    while Instant::now() < calm {
        assert!(h.qemu_pids().is_empty(), "a QEMU survived the destroy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(h.client().info("d").unwrap().state, VmState::Shutoff);
}

/// Issue 9, item 4: when the runtime record cannot be saved (the database is locked by
/// someone else past hvd's busy timeout), the start fails and its QEMU does not live on.
#[test]
fn a_start_whose_record_cannot_be_saved_fails_and_leaves_no_qemu() {
    let h = hvd();
    let spec = h.tiny_spec("l", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    let lock = rusqlite::Connection::open(h.state_dir.join("hv.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let e = h.client().start("l", false).unwrap_err();
    assert!(
        e.to_string().contains("cannot save the runtime state"),
        "{e}"
    );
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(h.client().info("l").unwrap().state, VmState::Shutoff);
    assert!(h.qemu_pids().is_empty(), "{:?}", h.qemu_pids());
    // Once the database is writable again, the VM starts.
    h.client().start("l", false).unwrap();
    h.wait_ready("l").unwrap();
}

/// The machine type of the QEMU on this host, e.g. `pc-i440fx-7.2`.
fn versioned(prefix: &str) -> String {
    let out = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string();
    let mut parts = v.split('.');
    format!(
        "{prefix}-{}.{}",
        parts.next().unwrap(),
        parts.next().unwrap()
    )
}

/// Issue 9, item 4: the machine type is pinned to its versioned name when a VM is defined
/// (`pc` is still accepted), and a definition stored with a plain `q35` is pinned at its
/// next start; QEMU runs the pinned machine.
#[test]
fn the_machine_type_is_pinned_at_define_and_at_the_next_start() {
    let mut h = hvd();
    let mut spec = h.tiny_spec("p", VmOpts::default()).unwrap();
    spec.machine = "pc".parse().unwrap();
    let info = h.client().create(spec, false).unwrap();
    let pc = versioned("pc-i440fx");
    assert_eq!(info.spec.unwrap().machine.to_string(), pc);
    let spec = h.tiny_spec("old", VmOpts::default()).unwrap();
    h.client().create(spec, false).unwrap();
    h.stop().unwrap();
    edit_db(
        &h,
        "UPDATE vms SET spec = json_set(spec, '$.machine', 'q35') WHERE name = 'old'",
    );
    h.start_again().unwrap();
    let c = h.client();
    assert_eq!(machine_of(c, "old"), "q35", "not pinned before its start");
    c.start("old", false).unwrap();
    let q35 = versioned("pc-q35");
    assert_eq!(machine_of(c, "old"), q35);
    let argv = c.showcmd("old").unwrap().argv.join(" ");
    assert!(argv.contains(&format!("-machine {q35} ")), "{argv}");
    h.wait_ready("old").unwrap();
}

/// The machine type in a VM's definition.
fn machine_of(c: &client::Client, vm: &str) -> String {
    c.info(vm).unwrap().spec.unwrap().machine.to_string()
}
