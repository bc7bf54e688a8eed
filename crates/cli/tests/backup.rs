//! Issue 15, item 5: `hv host backup FILE` takes a consistent online copy of hv's database and
//! VM metadata, and the README's restore (extract it into an empty state dir) brings hv back.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testkit::{TestHvd, VmOpts};

fn hvd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hv")).with_file_name("hvd")
}

fn hv(h: &TestHvd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("--socket")
        .arg(&h.socket)
        .args(args)
        .output()
        .expect("hv runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
        .port()
}

/// The archive's member names (`tar -t`, the tool the README's restore uses).
fn members(archive: &Path) -> Vec<String> {
    let o = Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn tls_files(state: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(state.join("tls"))
        .expect("hvd minted its TLS files")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn issue15_a_backup_taken_while_hvd_works_restores_hv() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut h = TestHvd::start_with_args(&hvd_bin(), &["--listen", &listen]).unwrap();
    let c = h.client();
    // A running VM with a disk volume, a stopped one, a user.
    c.vol_create(
        "default",
        &api::CreateVolRequest {
            name: "web.qcow2".parse().unwrap(),
            size: Some(model::Size(16 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = h
        .tiny_spec(
            "web",
            VmOpts {
                disks: vec!["vol=default/web.qcow2".parse().unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
    spec.autostart = false;
    c.create(spec, true).unwrap();
    c.create(h.tiny_spec("db", VmOpts::default()).unwrap(), false)
        .unwrap();
    c.user_add(&api::CreateUserRequest {
        name: "alice".into(),
        password: Some("correct horse battery".into()),
    })
    .unwrap();
    h.wait_ready("web").unwrap();
    // Metadata hv keeps beside a VM is taken, its logs are not; a symlink a VM's own process
    // could plant there is never followed.
    let vm_dir = h.state_dir.join("vms/db");
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::write(vm_dir.join("vars.fd"), b"nvram bytes").unwrap();
    let secret = h.dir.join("host-secret");
    std::fs::write(&secret, b"HOST SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, vm_dir.join("planted")).unwrap();
    std::fs::write(vm_dir.join("console.log"), b"guest output").unwrap();

    // Definitions keep landing while the backup runs: the copy is one consistent state.
    let socket = h.socket.clone();
    let specs: Vec<_> = (0..15)
        .map(|i| h.tiny_spec(&format!("busy{i}"), VmOpts::default()).unwrap())
        .collect();
    let writer = std::thread::spawn(move || {
        let c = client::Client::new(socket);
        for s in specs {
            c.create(s, false).unwrap();
        }
    });
    let archive = h.dir.join("hv-backup.tar");
    let archive_s = archive.to_str().unwrap();
    let o = hv(&h, &["host", "backup", archive_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    writer.join().unwrap();

    let meta = std::fs::metadata(&archive).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "it holds secrets");
    let names = members(&archive);
    for must in ["hv-backup.json", "hv.db", "vms/db/vars.fd"] {
        assert!(names.iter().any(|n| n == must), "{must} missing: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("tls/")), "{names:?}");
    for never in ["planted", "console.log", ".log", "pools/"] {
        assert!(
            !names.iter().any(|n| n.contains(never)),
            "{never} must not be archived: {names:?}"
        );
    }
    let raw = std::fs::read(&archive).unwrap();
    assert!(
        !raw.windows(11).any(|w| w == b"HOST SECRET"),
        "the symlink was followed"
    );
    // No temp file is left in the state dir.
    let leftovers: Vec<_> = std::fs::read_dir(&h.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Refusals: never over an existing file, nothing left where the file cannot be made.
    let o = hv(&h, &["host", "backup", archive_s]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("never replaces"), "{err}");
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        raw,
        "the file was touched"
    );
    let nowhere = h.dir.join("no-such-dir/b.tar");
    let o = hv(&h, &["host", "backup", nowhere.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!nowhere.parent().unwrap().exists());

    // Disaster: hv's state is lost (the pools, which hold the data, are not).
    let tls_before = tls_files(&h.state_dir);
    c.destroy("web").unwrap();
    h.stop().unwrap();
    for gone in ["hv.db", "hv.db-wal", "hv.db-shm", "tls", "vms", "run"] {
        let p = h.state_dir.join(gone);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    // The README's restore.
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&h.state_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    h.start_again().unwrap();
    let c = h.client();
    let listed: Vec<String> = c.list().unwrap().into_iter().map(|v| v.name).collect();
    for vm in ["web", "db"] {
        assert!(
            listed.iter().any(|n| n == vm),
            "{vm} not restored: {listed:?}"
        );
    }
    assert!(
        c.users().unwrap().iter().any(|u| u.name == "alice"),
        "the user was not restored"
    );
    assert_eq!(
        tls_files(&h.state_dir),
        tls_before,
        "the certificate changed"
    );
    assert_eq!(
        std::fs::read(h.state_dir.join("vms/db/vars.fd")).unwrap(),
        b"nvram bytes"
    );
    assert_eq!(
        std::fs::metadata(h.state_dir.join("vms/db/vars.fd"))
            .unwrap()
            .uid(),
        0
    );
    // The VM's disk was never in the archive; the restored definition finds it in its pool.
    c.start("web", false).unwrap();
    h.wait_ready("web").unwrap();
    h.wait_console("web", "HV-GUEST-READY", Duration::from_secs(5))
        .unwrap();
    c.destroy("web").unwrap();
}
