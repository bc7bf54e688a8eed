//! `cargo xtask bench-deps`: installs and configures libvirt for `hv-bench --vs libvirt`.
//! Never part of a test path: only the benchmark compares against libvirt.
//!
//! These machines have no systemd as PID 1 and no udev, so the packages' units never run and
//! `/dev/kvm` stays root-only: QEMU under libvirt then runs as root without a security driver
//! (else every define re-probes QEMU for about 40 s). `hv-bench` starts `virtlogd` and
//! `libvirtd` itself when they are not running, and stops them by PID when it is done.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Debian 12 packages giving `libvirtd` + the QEMU driver, `virtlogd` and `virsh`.
const PACKAGES: &[&str] = &[
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-daemon-system",
    "libvirt-clients",
];

const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// The `qemu.conf` settings the benchmark needs.
const SETTINGS: &[(&str, &str)] = &[
    ("user", "\"root\""),
    ("group", "\"root\""),
    ("security_driver", "\"none\""),
];

pub fn bench_deps(
    installed: impl Fn(&str) -> bool,
    run: impl Fn(&mut Command) -> Result<()>,
) -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        let apt = |args: &[&str]| {
            let mut c = Command::new("apt-get");
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut c)
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    let path = Path::new(QEMU_CONF);
    // dpkg leaves `qemu.conf.dpkg-new` when a configuration file was there before the package.
    let dpkg_new = path.with_extension("conf.dpkg-new");
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::read_to_string(&dpkg_new).unwrap_or_default()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {QEMU_CONF}")),
    };
    let new = configure(&old);
    if new != old {
        std::fs::write(path, new).with_context(|| format!("writing {QEMU_CONF}"))?;
        eprintln!("{QEMU_CONF}: user and group root, security_driver none");
    }
    // The package's `default` NAT network would come up with libvirtd (a bridge, nft tables,
    // ip_forward): the benchmark needs no network, and this machine is shared.
    let autostart = Path::new("/etc/libvirt/qemu/networks/autostart/default.xml");
    if autostart.symlink_metadata().is_ok() {
        std::fs::remove_file(autostart)
            .with_context(|| format!("removing {}", autostart.display()))?;
    }
    println!("libvirt ready for `hv-bench --vs libvirt` (it starts virtlogd and libvirtd itself)");
    Ok(())
}

/// `conf` with each of [`SETTINGS`] set once: an existing line (commented out or not) is
/// replaced in place, a missing one appended.
fn configure(conf: &str) -> String {
    let mut lines: Vec<String> = conf.lines().map(str::to_owned).collect();
    for (key, value) in SETTINGS {
        let want = format!("{key} = {value}");
        let is_key = |l: &str| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        match lines
            .iter()
            .position(|l| is_key(l) && !l.trim_start().starts_with('#'))
        {
            Some(i) => lines[i] = want,
            None => match lines.iter().position(|l| is_key(l)) {
                Some(i) => lines[i] = want,
                None => lines.push(want),
            },
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::configure;

    #[test]
    fn sets_each_key_once_in_place_or_at_the_end() {
        let conf = "# comment\n#user = \"libvirt-qemu\"\ngroup = \"kvm\"\n#group = \"x\"\n";
        let out = configure(conf);
        assert_eq!(
            out,
            "# comment\nuser = \"root\"\ngroup = \"root\"\n#group = \"x\"\nsecurity_driver = \"none\"\n"
        );
        assert_eq!(configure(&out), out, "idempotent");
    }

    #[test]
    fn does_not_touch_keys_that_only_share_a_prefix() {
        let out = configure("user_xattr = 1\n");
        assert!(
            out.starts_with("user_xattr = 1\nuser = \"root\"\n"),
            "{out}"
        );
    }
}
