//! A one-line description of the machine the figures were measured on.

use std::process::Command;

use client::Client;

/// CPUs, CPU model, kernel, QEMU version, the accelerator hvd picks and the load average
/// (other work on the machine skews the figures, the boot figure most).
pub fn describe(client: &Client) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "QEMU not found".into());
    let accel = client
        .host_check()
        .map(|r| r.accel)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    format!(
        "{cpus} CPUs ({model}), Linux {kernel}, {qemu}, accel {accel}; {}",
        load()
    )
}

/// The 1-, 5- and 15-minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let avg: Vec<&str> = l.split_whitespace().take(3).collect();
            (avg.len() == 3).then(|| format!("load average {}", avg.join(" ")))
        })
        .unwrap_or_else(|| "load average unknown".into())
}
