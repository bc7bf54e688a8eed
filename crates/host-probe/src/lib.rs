//! What this host can do: which accelerator runs a standard guest, and whether QEMU and the
//! tools hv drives are present (`hv host check`).
//!
//! Facts are gathered with host I/O ([`gather_kvm_facts`], [`check_host`]); the decisions made
//! from them ([`decide_accel`]) are pure and unit-tested. The accelerator decision never rests
//! on `/proc/cpuinfo` flags: nested hosts hide vmx/svm yet run KVM, and the PVM flavour of KVM
//! opens and creates VMs fine yet hangs standard guests.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use api::{CheckStatus, HostCheck, HostReport};

/// The default QEMU system emulator.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// What we observed about KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFacts {
    pub dev_kvm: bool,
    /// Error text when /dev/kvm exists but cannot be opened.
    pub open_error: Option<String>,
    /// Error text when `KVM_CREATE_VM` fails.
    pub create_vm_error: Option<String>,
    /// `/sys/module/kvm_pvm` exists.
    pub pvm: bool,
}

/// `kvm` or `tcg`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub kvm: bool,
    pub reason: String,
}

const KVMIO: u64 = 0xAE;
const KVM_CREATE_VM: u64 = KVMIO << 8 | 0x01;

/// Opens /dev/kvm and tries `KVM_CREATE_VM`.
pub fn gather_kvm_facts() -> KvmFacts {
    let mut f = KvmFacts {
        dev_kvm: Path::new("/dev/kvm").exists(),
        open_error: None,
        create_vm_error: None,
        pvm: Path::new("/sys/module/kvm_pvm").exists(),
    };
    if !f.dev_kvm {
        return f;
    }
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Err(e) => f.open_error = Some(e.to_string()),
        Ok(kvm) => {
            // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a new VM fd or -1.
            let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
            if vm < 0 {
                f.create_vm_error = Some(std::io::Error::last_os_error().to_string());
            } else {
                // SAFETY: `vm` is a fresh fd returned by the ioctl above and owned by nobody else.
                unsafe { libc::close(vm) };
            }
        }
    }
    f
}

/// Decides between KVM and TCG for `--accel auto`.
pub fn decide_accel(f: &KvmFacts) -> AccelDecision {
    let tcg = |why: String| AccelDecision {
        kvm: false,
        reason: format!("{why}; using TCG (software emulation: correct but much slower)"),
    };
    if !f.dev_kvm {
        return tcg("/dev/kvm does not exist (load kvm_intel or kvm_amd, or enable virtualization in the firmware or the outer hypervisor)".into());
    }
    if let Some(e) = &f.open_error {
        return tcg(format!(
            "/dev/kvm cannot be opened: {e} (run hvd as root or in the kvm group)"
        ));
    }
    if let Some(e) = &f.create_vm_error {
        return tcg(format!("KVM_CREATE_VM fails: {e}"));
    }
    if f.pvm {
        return tcg("the host's KVM is the paravirtual PVM flavour (module kvm_pvm): QEMU can enable it, but standard guests hang under it".into());
    }
    AccelDecision {
        kvm: true,
        reason: "/dev/kvm opens and KVM_CREATE_VM succeeds with standard (non-PVM) KVM".into(),
    }
}

/// Parses `QEMU emulator version 7.2.22 (Debian ...)`.
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// Asks a binary for its version line.
pub async fn tool_version(program: &str) -> Result<String, String> {
    let out = host_exec::run(program, &[OsStr::new("--version")], Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

fn check(
    name: &str,
    status: CheckStatus,
    detail: impl Into<String>,
    hint: Option<&str>,
) -> HostCheck {
    HostCheck {
        name: name.into(),
        status,
        detail: detail.into(),
        hint: hint.map(str::to_string),
    }
}

/// Runs every host check.
pub async fn check_host(qemu: &str) -> HostReport {
    use CheckStatus::{Fail, Pass, Warn};
    let mut checks = Vec::new();
    let mut qemu_version = None;
    match host_exec::which(qemu) {
        None => checks.push(check(
            "qemu",
            Fail,
            format!("{qemu} not found"),
            Some("apt-get install qemu-system-x86"),
        )),
        Some(p) => match tool_version(qemu).await {
            Ok(v) => {
                let parsed = parse_qemu_version(&v);
                let old = parsed.is_some_and(|v| v < (6, 2, 0));
                qemu_version = parsed.map(|(a, b, c)| format!("{a}.{b}.{c}"));
                checks.push(check(
                    "qemu",
                    if old { Fail } else { Pass },
                    format!("{} ({v})", p.display()),
                    old.then_some("hv needs QEMU 6.2 or newer (JSON -device and -blockdev)"),
                ));
            }
            Err(e) => checks.push(check("qemu", Fail, e, Some("reinstall qemu-system-x86"))),
        },
    }
    let facts = gather_kvm_facts();
    let d = decide_accel(&facts);
    checks.push(check(
        "accel",
        if d.kvm { Pass } else { Warn },
        format!("{}: {}", if d.kvm { "kvm" } else { "tcg" }, d.reason),
        (!d.kvm).then_some(
            "VMs still run, under software emulation; --accel kvm is refused on this host",
        ),
    ));
    let tun = Path::new("/dev/net/tun").exists();
    checks.push(check(
        "tun",
        if tun { Pass } else { Warn },
        if tun {
            "/dev/net/tun present"
        } else {
            "/dev/net/tun missing"
        },
        (!tun).then_some("modprobe tun (needed for bridged and managed-network NICs)"),
    ));
    let bridge = Path::new("/sys/module/bridge").exists();
    checks.push(check(
        "bridge",
        if bridge { Pass } else { Warn },
        if bridge {
            "bridge module loaded"
        } else {
            "bridge module not loaded"
        },
        (!bridge).then_some("modprobe bridge (loaded on demand on most hosts)"),
    ));
    for (name, tool, hint) in [
        ("qemu-img", "qemu-img", "apt-get install qemu-utils"),
        (
            "dnsmasq",
            "dnsmasq",
            "apt-get install dnsmasq-base (DHCP for managed networks)",
        ),
        (
            "nft",
            "nft",
            "apt-get install nftables (NAT for managed networks)",
        ),
    ] {
        match host_exec::which(tool) {
            Some(p) => {
                let v = tool_version(tool).await.unwrap_or_default();
                checks.push(check(
                    name,
                    Pass,
                    format!("{} {v}", p.display()).trim().to_string(),
                    None,
                ));
            }
            None => checks.push(check(
                name,
                if name == "qemu-img" { Fail } else { Warn },
                format!("{tool} not found"),
                Some(hint),
            )),
        }
    }
    HostReport {
        checks,
        accel: if d.kvm { "kvm" } else { "tcg" }.into(),
        accel_reason: d.reason,
        qemu_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KvmFacts {
        KvmFacts {
            dev_kvm: true,
            open_error: None,
            create_vm_error: None,
            pvm: false,
        }
    }

    fn check(f: KvmFacts, kvm: bool, reason_has: &str) {
        let d = decide_accel(&f);
        assert_eq!(d.kvm, kvm, "{f:?}");
        assert!(d.reason.contains(reason_has), "{}", d.reason);
    }

    #[test]
    fn accel_decisions() {
        check(facts(), true, "KVM_CREATE_VM succeeds");
        check(
            KvmFacts {
                pvm: true,
                ..facts()
            },
            false,
            "PVM",
        );
        check(
            KvmFacts {
                dev_kvm: false,
                ..facts()
            },
            false,
            "does not exist",
        );
        check(
            KvmFacts {
                open_error: Some("Permission denied".into()),
                ..facts()
            },
            false,
            "Permission denied",
        );
        check(
            KvmFacts {
                create_vm_error: Some("Invalid argument".into()),
                ..facts()
            },
            false,
            "KVM_CREATE_VM fails",
        );
    }

    #[test]
    fn qemu_versions() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some((7, 2, 22))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2"),
            Some((10, 0, 2))
        );
        assert_eq!(parse_qemu_version("nonsense"), None);
    }

    #[test]
    fn this_host_has_pvm_so_auto_picks_tcg() {
        // Verified fact about the machines this project runs on (DESIGN.md): KVM is PVM.
        let f = gather_kvm_facts();
        if f.pvm {
            assert!(!decide_accel(&f).kvm);
        }
    }
}
