//! `hv migrate NAME --to REMOTE` (issue 12): the CLI resolves REMOTE in remotes.toml and the
//! source hvd moves the VM to the target hvd, each in its own network namespace.

use std::path::PathBuf;
use std::process::Command;

use testkit::pair::{HostPair, PairOpts};
use testkit::VmOpts;

fn hvd_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hv")).with_file_name("hvd");
    assert!(p.exists(), "{} is missing: build hvd first", p.display());
    p
}

#[test]
fn hv_migrate_moves_a_running_vm_to_a_remote() {
    let p = HostPair::with(&hvd_bin(), PairOpts { shared_pool: true }).expect("pair");
    let spec = p.source.tiny_spec("cli-mover", VmOpts::default()).unwrap();
    p.source.client().create(spec, true).unwrap();
    p.source.wait_ready("cli-mover").unwrap();
    let cfg = tempdir();
    std::fs::create_dir_all(cfg.join("hv")).unwrap();
    std::fs::write(
        cfg.join("hv/remotes.toml"),
        format!(
            "[remotes.b]\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
            p.peer.url, p.peer.token, p.peer.fingerprint
        ),
    )
    .unwrap();
    let hv = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hv"))
            .arg("--socket")
            .arg(&p.source.socket)
            .args(args)
            .env("XDG_CONFIG_HOME", &cfg)
            .output()
            .unwrap()
    };
    let out = hv(&["migrate", "cli-mover", "--to", "nosuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no remote named \"nosuch\""), "{err}");
    let out = hv(&["migrate", "cli-mover", "--to", "b", "--downtime", "300"]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("VM cli-mover migrated to b in"), "{so}");
    assert!(so.contains("downtime"), "{so}");
    assert!(!so.contains(&p.peer.token) && !se.contains(&p.peer.token));
    assert_eq!(
        p.target.client().info("cli-mover").unwrap().state,
        model::VmState::Running
    );
    assert!(p.source.client().info("cli-mover").is_err());
    let _ = std::fs::remove_dir_all(&cfg);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("hv-mig-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
