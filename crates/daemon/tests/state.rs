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
    edit_db(&h, "UPDATE vms SET spec = '{\"name\": \"odd\"}' WHERE name = 'odd'; PRAGMA user_version = 4242;");
    let e = h.start_again().unwrap_err().to_string();
    assert!(e.contains("schema version 4242, newer"), "{e}");
    edit_db(&h, "PRAGMA user_version = 1;");
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
