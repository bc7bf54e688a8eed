//! VMs in their own systemd scopes. When systemd is PID 1 and the system bus answers, each VM's
//! QEMU (and its helpers, such as a per-VM swtpm) is moved into a transient scope
//! `hv-vm-NAME.scope` under `hv.slice` with systemd's D-Bus call `StartTransientUnit`, so
//! stopping or restarting hvd's own unit never touches it, and each VM gets CPU, memory and
//! task accounting and limits. The call goes through `busctl` (systemd's own D-Bus client, run as
//! a one-shot tool like any other): no D-Bus library is linked into hvd.
//!
//! The unit name and the property list are pure functions ([`scope_unit_name`],
//! [`scope_properties`]); [`detect`] and [`start_scope`] touch the host.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::{run, ExecError};

/// The slice every VM scope lives under.
pub const SLICE: &str = "hv.slice";

/// Whether VMs can get scopes on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// systemd is PID 1 and the system bus socket exists.
    Running,
    /// Why not, for `hv host check` and hvd's log.
    Absent(String),
}

/// Looks at PID 1 and the system bus (no D-Bus call).
pub fn detect() -> Presence {
    let pid1 = std::fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    decide(
        &pid1,
        Path::new("/run/systemd/system").is_dir(),
        Path::new("/run/dbus/system_bus_socket").exists(),
        crate::which("busctl").is_some(),
    )
}

fn decide(pid1: &str, booted: bool, bus: bool, busctl: bool) -> Presence {
    if pid1 != "systemd" || !booted {
        Presence::Absent(format!("not running (PID 1 is {pid1})"))
    } else if !bus {
        Presence::Absent(
            "running, but the system bus (/run/dbus/system_bus_socket) is absent: install dbus"
                .to_owned(),
        )
    } else if !busctl {
        Presence::Absent("running, but busctl is missing: install systemd".to_owned())
    } else {
        Presence::Running
    }
}

/// Escapes `name` as `systemd-escape` does for one unit-name component: `-` and every byte
/// outside `[A-Za-z0-9:_.]` become `\xNN`, and so does a leading `.`.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `hv-vm-NAME.scope`, with NAME escaped.
pub fn scope_unit_name(vm: &str) -> String {
    format!("hv-vm-{}.scope", escape(vm))
}

/// What a VM may use, from its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeLimits {
    pub memory_bytes: u64,
    pub vcpus: u32,
}

/// QEMU's own memory above the guest's: TCG's translation cache (up to 1 GiB, QEMU's default
/// for system emulation), device and block buffers. `MemoryMax` is a guard against a runaway
/// QEMU, not a packing tool: too tight a limit OOM-kills a healthy VM.
const MEMORY_OVERHEAD_BYTES: u64 = 1 << 30;
/// Threads: one per vCPU, the main loop, RCU, and the block layer's worker pools (up to 64
/// each). A fork bomb guard, far above what QEMU uses.
const TASKS_BASE: u64 = 512;

/// The `a(sv)` properties of the scope, as `busctl` arguments: accounting on; `MemoryMax` =
/// guest memory + an eighth + [`MEMORY_OVERHEAD_BYTES`]; `TasksMax` = [`TASKS_BASE`] + 4 per
/// vCPU; `CPUWeight` = 100 per vCPU (systemd's default weight is 100, so under contention a
/// 4-vCPU VM gets four times the share of a 1-vCPU one and of any other unit; capped at
/// 10000). No `CPUQuota`: QEMU's I/O and emulation threads run beside the vCPUs, so a quota of
/// vCPUs × 100 % would throttle a VM that merely uses what it was given.
pub fn scope_properties(vm: &str, pids: &[u32], limits: ScopeLimits) -> Vec<String> {
    let memory_max = limits
        .memory_bytes
        .saturating_add(limits.memory_bytes / 8)
        .saturating_add(MEMORY_OVERHEAD_BYTES);
    let vcpus = u64::from(limits.vcpus.max(1));
    let tasks_max = TASKS_BASE + 4 * vcpus;
    let cpu_weight = (100 * vcpus).min(10_000);
    let mut p: Vec<String> = vec!["9".into(), "PIDs".into(), "au".into()];
    p.push(pids.len().to_string());
    p.extend(pids.iter().map(u32::to_string));
    for (key, sig, value) in [
        ("Slice", "s", SLICE.to_owned()),
        ("Description", "s", format!("hv VM {vm}")),
        ("CPUAccounting", "b", "true".into()),
        ("MemoryAccounting", "b", "true".into()),
        ("TasksAccounting", "b", "true".into()),
        ("MemoryMax", "t", memory_max.to_string()),
        ("TasksMax", "t", tasks_max.to_string()),
        ("CPUWeight", "t", cpu_weight.to_string()),
    ] {
        p.extend([key.to_owned(), sig.to_owned(), value]);
    }
    p
}

/// How long the D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Moves `pids` (QEMU first; a VM's helpers such as swtpm belong here too) into a new transient
/// scope for `vm` and returns the unit name. Fails if a unit of that name is already active
/// (mode `fail`). The scope ends by itself when its last process exits.
pub async fn start_scope(vm: &str, pids: &[u32], limits: ScopeLimits) -> Result<String, ExecError> {
    let unit = scope_unit_name(vm);
    let mut args: Vec<OsString> = [
        "call",
        "--system",
        "--quiet",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        &unit,
        "fail",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(
        scope_properties(vm, pids, limits)
            .into_iter()
            .map(OsString::from),
    );
    args.push("0".into()); // no auxiliary units
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    run("busctl", &refs, CALL_TIMEOUT).await?;
    tracing::info!(%unit, ?pids, "VM in its own scope");
    Ok(unit)
}

/// The cgroup (v2) path of `pid`, e.g. `/hv.slice/hv-vm-web.scope`.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd_escape() {
        assert_eq!(scope_unit_name("web1"), "hv-vm-web1.scope");
        assert_eq!(scope_unit_name("web-1"), "hv-vm-web\\x2d1.scope");
        assert_eq!(scope_unit_name("a.b_c"), "hv-vm-a.b_c.scope");
        assert_eq!(escape(".x"), "\\x2ex");
        assert_eq!(escape("a b/é"), "a\\x20b\\x2f\\xc3\\xa9");
    }

    #[test]
    fn limits_follow_the_spec() {
        let p = scope_properties(
            "w",
            &[42, 43],
            ScopeLimits {
                memory_bytes: 2 << 30,
                vcpus: 4,
            },
        );
        let text = p.join(" ");
        assert!(
            text.starts_with("9 PIDs au 2 42 43 Slice s hv.slice "),
            "{text}"
        );
        let gib = 1u64 << 30;
        assert!(
            text.contains(&format!("MemoryMax t {}", 2 * gib + gib / 4 + gib)),
            "{text}"
        );
        assert!(text.contains("TasksMax t 528"), "{text}");
        assert!(text.ends_with("CPUWeight t 400"), "{text}");
        // The count says how many properties follow.
        assert_eq!(
            p.iter()
                .filter(|s| ["s", "b", "t"].contains(&s.as_str()))
                .count(),
            8
        );
    }

    #[test]
    fn says_why_there_are_no_scopes() {
        assert_eq!(
            decide("process_api", false, false, false),
            Presence::Absent("not running (PID 1 is process_api)".into())
        );
        assert!(
            matches!(decide("systemd", true, false, true), Presence::Absent(m) if m.contains("dbus"))
        );
        assert_eq!(decide("systemd", true, true, true), Presence::Running);
    }
}
