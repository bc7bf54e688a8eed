//! Rendering API replies as tables, JSON or YAML.

use std::fmt::Write as _;

use api::{HostReport, VmInfo};
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `v` as JSON or YAML; returns false for `table` so the caller renders its own.
pub fn structured<T: Serialize>(format: Format, v: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(v)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_yaml::to_string(v)?);
            Ok(true)
        }
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn mem(mib: u64) -> String {
    model::Size(mib << 20).to_string()
}

pub fn vm_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                if v.incoming {
                    "incoming".to_string()
                } else {
                    v.state.to_string()
                },
                v.vcpus.to_string(),
                mem(v.memory_mib),
                if v.autostart { "yes" } else { "no" }.into(),
                v.accel.clone().unwrap_or_else(|| "-".into()),
                v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "VCPUS",
            "MEMORY",
            "AUTOSTART",
            "ACCEL",
            "PID",
        ],
        &rows,
    )
}

/// `hv info`; `resources` replaces the vCPU and memory rows (current and maximum, `hv set`).
pub fn vm_details(v: &VmInfo, resources: Option<Vec<(String, String)>>) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("Name".into(), v.name.clone()),
        ("State".into(), v.state.to_string()),
        ("vCPUs".into(), v.vcpus.to_string()),
        ("Memory".into(), mem(v.memory_mib)),
        (
            "Autostart".into(),
            if v.autostart { "yes" } else { "no" }.into(),
        ),
        (
            "Ephemeral".into(),
            if v.ephemeral { "yes" } else { "no" }.into(),
        ),
    ];
    if let Some(r) = resources {
        rows.splice(2..4, r);
    }
    if let Some(a) = &v.accel {
        rows.push(("Accel".into(), a.clone()));
    }
    if let Some(r) = &v.accel_reason {
        rows.push(("Accel reason".into(), r.clone()));
    }
    if let Some(p) = v.pid {
        rows.push(("PID".into(), p.to_string()));
    }
    if let Some(vnc) = &v.vnc {
        rows.push(("VNC".into(), format!("{}:{}", vnc.host, vnc.port)));
    }
    if let Some(spec) = &v.spec {
        if let Some(u) = spec.uuid {
            rows.push(("UUID".into(), u.to_string()));
        }
        rows.push(("Machine".into(), spec.machine.to_string()));
        rows.push(("Firmware".into(), firmware_text(spec)));
        for (i, d) in spec.disks.iter().enumerate() {
            let fmt = d.format.map(|f| f.to_string()).unwrap_or_default();
            let ro = if d.readonly { ", read-only" } else { "" };
            rows.push((
                format!("Disk {i}"),
                format!(
                    "{} ({fmt}, {}, cache={}{ro})",
                    d.path.display(),
                    d.bus,
                    d.cache
                ),
            ));
        }
        if let Some(c) = &spec.cdrom {
            rows.push(("CD-ROM".into(), c.display().to_string()));
        }
        for (i, n) in spec.nics.iter().enumerate() {
            let src = n
                .source
                .as_deref()
                .map(|s| format!("={s}"))
                .unwrap_or_default();
            let mac = n.mac.map(|m| m.to_string()).unwrap_or_default();
            rows.push((
                format!("NIC {i}"),
                format!("{}{src} {} {mac}", n.kind, n.model),
            ));
        }
        if let Some(k) = &spec.kernel {
            rows.push(("Kernel".into(), k.path.display().to_string()));
        }
    }
    for a in &v.addresses {
        rows.push((
            format!("NIC {} IP", a.nic),
            format!("{} ({}, {})", a.ip, a.network, a.mac),
        ));
    }
    if let Some(c) = &v.crash {
        rows.push(("Crash".into(), c.reason.clone()));
        for l in &c.log_tail {
            rows.push(("  QEMU log".into(), l.clone()));
        }
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

pub fn host_report(r: &HostReport) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let _ = writeln!(
            out,
            "{:<4}  {:<9} {}",
            format!("{:?}", c.status).to_uppercase(),
            c.name,
            c.detail
        );
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "{:<15} hint: {h}", "");
        }
    }
    out
}

/// `hv info`'s firmware line: `bios`, `uefi`, `uefi, secure boot`, each `, TPM 2.0` with a TPM.
fn firmware_text(spec: &model::VmSpec) -> String {
    let mut s = spec.firmware.to_string();
    if spec.secure_boot {
        s.push_str(", secure boot");
    }
    if spec.tpm {
        s.push_str(", TPM 2.0");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
