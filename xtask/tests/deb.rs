//! Issue 15: `cargo xtask deb --profile debug` builds a package whose contents, metadata,
//! unit, completions and man pages are checked with the real tools (dpkg-deb, bash,
//! `man -l`, `systemd-analyze verify`, lintian). `cargo xtask test` installs them
//! (`deb::BUILD_PACKAGES`, `deb::TEST_PACKAGES`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("hv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `$HV_TEST_DEB` (what `cargo xtask test` packed from the binaries it built for the tests),
/// or `cargo xtask deb --profile debug` run now.
fn build_debug_package() -> PathBuf {
    testkit::package::hv_deb().expect("hv's debug package")
}

#[test]
fn issue_15_debian_package() {
    let deb = build_debug_package();
    assert!(deb
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("hv_") && n.ends_with("_amd64.deb")));

    // Metadata: dependencies, conffile, maintainer scripts.
    let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    for needle in [
        "Package: hv\n",
        "Architecture: amd64\n",
        "libc6 (>= 2.",
        "qemu-system-x86",
        "qemu-utils",
        "dnsmasq-base",
        "nftables",
        "Recommends: ovmf, swtpm\n",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ] {
        assert!(
            info.contains(needle),
            "dpkg-deb -I lacks {needle:?}:\n{info}"
        );
    }
    let package = text(&run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Package")));
    assert_eq!(package.trim(), "hv");

    // Contents: every file where Debian expects it, owned by root.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/hv",
        "./usr/sbin/hvd",
        "./lib/systemd/system/hvd.service",
        "./etc/hv/hvd.toml",
        "./usr/share/bash-completion/completions/hv",
        "./usr/share/zsh/vendor-completions/_hv",
        "./usr/share/fish/vendor_completions.d/hv.fish",
        "./usr/share/man/man1/hv.1.gz",
        "./usr/share/man/man1/hv-create.1.gz",
        "./usr/share/man/man1/hv-disk-attach.1.gz",
        "./usr/share/man/man1/hv-completion.1.gz",
        "./usr/share/man/man8/hvd.8.gz",
        "./usr/share/doc/hv/README.md.gz",
        "./usr/share/doc/hv/copyright",
        "./usr/share/doc/hv/changelog.Debian.gz",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("the package lacks {path}:\n{listing}"));
        assert!(line.contains(" root/root "), "{line}");
    }
    assert!(
        !listing.contains("man-pages"),
        "the hidden subcommand has no page"
    );

    let tree = TempDir::new("deb-tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree.0));
    let control = TempDir::new("deb-control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control.0));
    assert_eq!(
        std::fs::read_to_string(control.0.join("conffiles")).expect("conffiles"),
        "/etc/hv/hvd.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.0.join(script)));
    }
    let hv = tree.0.join("usr/bin/hv");
    let hvd = tree.0.join("usr/sbin/hvd");

    // The binaries are stripped.
    let file = text(&run(Command::new("objdump").arg("-h").arg(&hvd)));
    assert!(
        !file.contains(".debug_info"),
        "hvd has debug information:\n{file}"
    );

    // Bash loads the completion, from `hv completion bash` and from the packaged file.
    let loaded = text(&run(Command::new("bash").arg("-c").arg(format!(
        "source <('{}' completion bash) && complete -p hv",
        hv.display()
    ))));
    assert!(
        loaded.starts_with("complete ") && loaded.trim_end().ends_with(" hv"),
        "{loaded}"
    );
    let loaded = text(&run(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p hv",
        tree.0
            .join("usr/share/bash-completion/completions/hv")
            .display()
    ))));
    assert!(loaded.trim_end().ends_with(" hv"), "{loaded}");
    let zsh = std::fs::read_to_string(tree.0.join("usr/share/zsh/vendor-completions/_hv"))
        .expect("zsh completion");
    assert!(
        zsh.starts_with("#compdef hv"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    let fish = std::fs::read_to_string(tree.0.join("usr/share/fish/vendor_completions.d/hv.fish"))
        .expect("fish completion");
    assert!(fish.contains("complete -c hv"));

    // `man -l` renders every page without a warning.
    let mut pages = Vec::new();
    for section in ["man1", "man8"] {
        for e in std::fs::read_dir(tree.0.join("usr/share/man").join(section)).expect("man dir") {
            pages.push(e.expect("entry").path());
        }
    }
    assert!(pages.len() > 50, "only {} man pages", pages.len());
    for page in &pages {
        let o = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.trim().is_empty(), "{}: {stderr}", page.display());
        assert!(
            text(&o).contains("SYNOPSIS"),
            "{} renders no synopsis",
            page.display()
        );
    }

    // The unit verifies (with ExecStart pointing at the unpacked hvd), with no warning.
    let unit =
        std::fs::read_to_string(tree.0.join("lib/systemd/system/hvd.service")).expect("unit");
    assert!(unit.contains("Type=notify\n"));
    assert!(unit.contains("ExecStart=/usr/sbin/hvd --config /etc/hv/hvd.toml\n"));
    assert!(unit.contains("KillMode=process\n"));
    let units = TempDir::new("deb-unit");
    let local = units.0.join("hvd.service");
    std::fs::write(
        &local,
        unit.replace("/usr/sbin/hvd", &hvd.display().to_string()),
    )
    .expect("unit copy");
    let o = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    // The shipped config file is what the packaged hvd reads.
    let conf = std::fs::read_to_string(tree.0.join("etc/hv/hvd.toml")).expect("conffile");
    assert!(conf.contains("\nadmin_group = \"hv-admin\"\n"));
    let copy = units.0.join("hvd.toml");
    std::fs::write(&copy, conf.replace("\"hv-admin\"", "\"root\"")).expect("config copy");
    let effective = text(&run(Command::new(&hvd)
        .arg("--check-config")
        .arg("--config")
        .arg(&copy)
        .env_remove("HV_SOCKET")
        .env_remove("HV_STATE_DIR")));
    assert!(
        effective.contains("admin_group = \"root\"\n"),
        "{effective}"
    );
    assert!(
        effective.contains("state_dir = \"/var/lib/hv\"\n"),
        "{effective}"
    );
    std::fs::write(&copy, format!("{conf}\nstate_directory = \"/srv/hv\"\n")).expect("config");
    let o = Command::new(&hvd)
        .arg("--check-config")
        .arg("--config")
        .arg(&copy)
        .output()
        .expect("hvd");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("state_directory") && stderr.contains(&copy.display().to_string()),
        "{stderr}"
    );

    // lintian raises no error (it is installed by `cargo xtask test`; without it, say so).
    match Command::new("lintian").arg("--version").output() {
        Ok(v) if v.status.success() => {
            let o = Command::new("lintian")
                .args(["--tag-display-limit", "0"])
                .arg(&deb)
                .output()
                .expect("lintian");
            let report = text(&o);
            let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
            assert!(errors.is_empty(), "lintian errors:\n{report}");
        }
        _ => eprintln!("lintian is not installed: `cargo xtask test` installs it"),
    }
}
