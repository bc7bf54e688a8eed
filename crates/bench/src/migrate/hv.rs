//! The hv side: `hv migrate` through the source hvd's API between the two hvds of a
//! [`HostPair`], timed from the request until hvd answers (the migration is over and the
//! target runs the VM), with the downtime hvd reports (QEMU's plus the handover) and QEMU's
//! own part of it (hvd's `handover done` log line).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::{MigrateRequest, MigrationPhase, MigrationProgress, OperationStatus};
use client::Client;
use model::{Size, VmState};
use testkit::pair::{HostPair, SHARED_POOL};
use testkit::VmOpts;

use super::{Knobs, Sample};
use crate::procs::{ExitWatch, Reaped};

/// The shared-pool volume the hv guests of `mem` MiB boot with (created once).
pub fn shared_volume(p: &HostPair, mem: u64) -> Result<String> {
    let name = format!("hvb-m{mem}.qcow2");
    p.source
        .client()
        .vol_create(
            SHARED_POOL,
            &api::CreateVolRequest {
                name: name.parse()?,
                size: Some(Size(64 << 20)),
                format: None,
                backing: None,
            },
        )
        .context("creating the shared volume")?;
    Ok(name)
}

/// Defines and boots `vm` on the source (untimed), migrates it to the target, checks it runs
/// there, and removes it from the target (keeping the shared volume).
pub fn migration(p: &HostPair, vm: &str, mem: u64, vol: &str, knobs: Knobs) -> Result<Sample> {
    let mut spec = p.source.tiny_spec(
        vm,
        VmOpts {
            disks: vec![serde_json::from_value(
                serde_json::json!({ "vol": format!("{SHARED_POOL}/{vol}") }),
            )?],
            ..VmOpts::default()
        },
    )?;
    spec.memory = Size(mem << 20);
    let src = p.source.client();
    src.create(spec, true)
        .context("creating the VM on the source")?;
    p.source.wait_ready(vm)?;
    let req = MigrateRequest {
        to: p.peer.clone(),
        copy_storage: false,
        offline: false,
        downtime_ms: Some(knobs.downtime_ms),
        bandwidth: Some(knobs.bandwidth),
        postcopy: false,
        keep_source: false,
    };
    let done = run_operation(p, vm, &req)?;
    let sample = Sample {
        setup_ms: done.setup_ms,
        handover_ms: done.handover_ms,
        hvd_cpu_ms: done.hvd_cpu_ms,
        total_ms: done.total_ms,
        qemu_downtime_ms: done.qemu_downtime_ms,
        downtime_ms: done.progress.downtime_ms.map(|v| v as f64),
    };
    let dst = p.target.client();
    let info = dst.info(vm).context("the VM on the target")?;
    if info.state != VmState::Running {
        bail!("{vm} is {} on the target after the migration", info.state);
    }
    let qemu = ExitWatch::open(info.pid.context("the target VM has no QEMU PID")?)?;
    dst.destroy(vm)?;
    qemu.wait(Duration::from_secs(30))?;
    dst.undefine(vm, false, true)?;
    Ok(sample)
}

/// A finished migration.
pub struct Done {
    /// What hvd answered: its final figures (`downtime_ms` is QEMU's plus the handover).
    pub progress: MigrationProgress,
    /// Request → answer, as the client sees it.
    pub total_ms: f64,
    /// From the first poll that saw the `disks` phase to the first that saw a later one.
    pub disks_ms: Option<f64>,
    /// Until the first poll that saw the `disks` or `memory` phase (checks, the incoming VM).
    pub setup_ms: Option<f64>,
    /// From the first poll that saw the `handover` phase to the answer.
    pub handover_ms: Option<f64>,
    /// QEMU's own downtime and the handover, from hvd's log line `handover done`.
    pub qemu_downtime_ms: Option<f64>,
    /// CPU time (user + system) the source and the target hvd used during the migration.
    pub hvd_cpu_ms: (Option<f64>, Option<f64>),
}

/// `POST /v1/vms/{vm}/migrate` (it answers when the migration is over), while a second
/// client polls the operation's phase every 10 ms.
pub fn run_operation(p: &HostPair, vm: &str, req: &MigrateRequest) -> Result<Done> {
    let done = AtomicBool::new(false);
    let cpu = || {
        (
            p.source.hvd_pid().and_then(cpu_ms),
            p.target.hvd_pid().and_then(cpu_ms),
        )
    };
    let logs = || (p.source.hvd_log().len(), p.target.hvd_log().len());
    let log0 = logs();
    let cpu0 = cpu();
    let t0 = Instant::now();
    let (progress, elapsed, seen) = std::thread::scope(|s| {
        let poller = s.spawn(|| phases(&Client::new(&p.source.socket), vm, &done, t0));
        let r = p.source.client().migrate(vm, req);
        let elapsed = t0.elapsed();
        done.store(true, Ordering::Relaxed);
        let seen = poller.join().unwrap_or_default();
        (r, elapsed, seen)
    });
    let total_ms = elapsed.as_secs_f64() * 1000.0;
    if std::env::var_os("HV_TEST_HVD_LOG").is_some() {
        // A profile: the steps both hvds logged at debug level during this migration.
        for (side, log, from) in [
            ("source", p.source.hvd_log(), log0.0),
            ("target", p.target.hvd_log(), log0.1),
        ] {
            for l in log.get(from..).unwrap_or("").lines().map(strip_ansi) {
                if l.contains(" step: ") || l.contains("tunnel closed") {
                    eprintln!("    {side}: {l}");
                }
            }
        }
    }
    let (setup_ms, disks_ms, handover_ms) = breakdown(&seen, total_ms);
    let cpu1 = cpu();
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let hvd_cpu_ms = (diff(cpu0.0, cpu1.0), diff(cpu0.1, cpu1.1));
    let progress = progress.with_context(|| {
        format!(
            "POST migrate; the source hvd's log ends:\n{}",
            tail(&p.source.hvd_log(), 15)
        )
    })?;
    Ok(Done {
        qemu_downtime_ms: qemu_downtime(&p.source.hvd_log(), vm),
        progress,
        total_ms,
        disks_ms,
        setup_ms,
        handover_ms,
        hvd_cpu_ms,
    })
}

/// When each phase of `vm`'s migrate operation was first seen (ms after `t0`), polling
/// every 10 ms until `done`.
fn phases(c: &Client, vm: &str, done: &AtomicBool, t0: Instant) -> Vec<(MigrationPhase, f64)> {
    let target = format!("vm/{vm}");
    let mut seen: Vec<(MigrationPhase, f64)> = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let phase = c.operations().ok().and_then(|ops| {
            ops.into_iter()
                .find(|o| {
                    o.kind == api::migrate::MIGRATE_OPERATION
                        && o.target == target
                        && o.status == OperationStatus::Running
                })
                .and_then(|o| o.migration.map(|m| m.phase))
        });
        if let Some(ph) = phase {
            if seen.iter().all(|(p, _)| *p != ph) {
                seen.push((ph, t0.elapsed().as_secs_f64() * 1000.0));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// The breakdown of one migration from the phases seen: (setup until the disks or memory
/// phase, the disks phase, the handover until the answer).
fn breakdown(
    seen: &[(MigrationPhase, f64)],
    total: f64,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let at = |ph| seen.iter().find(|(p, _)| *p == ph).map(|(_, t)| *t);
    let setup = seen
        .iter()
        .find(|(p, _)| matches!(p, MigrationPhase::Disks | MigrationPhase::Memory))
        .map(|(_, t)| *t);
    let disks = at(MigrationPhase::Disks).and_then(|d| {
        let next = seen.iter().find(|(_, t)| *t > d).map(|(_, t)| *t)?;
        Some(next - d)
    });
    let handover = at(MigrationPhase::Handover).map(|h| total - h);
    (setup, disks, handover)
}

/// QEMU's downtime for `vm` from the last `handover done` line of hvd's log.
fn qemu_downtime(log: &str, vm: &str) -> Option<f64> {
    let line = log.lines().rev().map(strip_ansi).find(|l| {
        l.contains("handover done")
            && l.split_whitespace()
                .any(|t| t == format!("vm={vm}") || t == format!("vm={vm:?}"))
    })?;
    let v = line.split("qemu_downtime_ms=Some(").nth(1)?;
    v.split(')').next()?.parse().ok()
}

/// A process's CPU time so far (utime + stime from `/proc/PID/stat`), in ms.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf(3) only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks * 1000.0 / hz as f64)
}

fn strip_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The source's data volume for `--copy-storage` (re-created when a migration took it away).
const DATA_VOL: &str = "hvb-data.raw";

/// `hv migrate --copy-storage` of a 128 MiB guest whose disk (a raw volume in the source's
/// `default` pool) holds `data`'s bytes: MiB/s of disk over the whole operation (request →
/// done, RAM migration included), and over the time the operation was seen in its `disks`
/// phase (10 ms polls).
pub fn copy_storage(
    p: &HostPair,
    vm: &str,
    data: &std::path::Path,
    knobs: Knobs,
) -> Result<Copied> {
    let src = p.source.client();
    let bytes = std::fs::metadata(data)?.len();
    if src.vol_info("default", DATA_VOL).is_err() {
        let v = src
            .vol_create(
                "default",
                &api::CreateVolRequest {
                    name: DATA_VOL.parse()?,
                    size: Some(Size(bytes)),
                    format: Some(model::DiskFormat::Raw),
                    backing: None,
                },
            )
            .context("creating the data volume")?;
        copy_into(data, &v.path)?;
    }
    let spec = p.source.tiny_spec(
        vm,
        VmOpts {
            disks: vec![serde_json::from_value(
                serde_json::json!({ "vol": format!("default/{DATA_VOL}") }),
            )?],
            ..VmOpts::default()
        },
    )?;
    src.create(spec, true)
        .context("creating the VM on the source")?;
    p.source.wait_ready(vm)?;
    let req = MigrateRequest {
        to: p.peer.clone(),
        copy_storage: true,
        offline: false,
        downtime_ms: Some(knobs.downtime_ms),
        bandwidth: Some(knobs.bandwidth),
        postcopy: false,
        keep_source: false,
    };
    let perf = perf_record(p, vm)?;
    let done = run_operation(p, vm, &req);
    if let Some(mut perf) = perf {
        perf.stop(libc::SIGINT)?;
    }
    let done = done?;
    let dst = p.target.client();
    let info = dst.info(vm).context("the VM on the target")?;
    if info.state != VmState::Running {
        bail!("{vm} is {} on the target after the migration", info.state);
    }
    let qemu = ExitWatch::open(info.pid.context("the target VM has no QEMU PID")?)?;
    dst.destroy(vm)?;
    qemu.wait(Duration::from_secs(30))?;
    dst.undefine(vm, true, true)?;
    let mib = bytes as f64 / f64::from(1 << 20);
    Ok(Copied {
        whole: mib / (done.total_ms / 1000.0),
        disks: done.disks_ms.map(|d| mib / (d / 1000.0)),
        hvd_cpu_ms: done.hvd_cpu_ms,
    })
}

/// With `HV_BENCH_PERF=DIR`: `perf record` of both hvds and the source QEMU during the copy,
/// into `DIR/copy-VM.data` (for `perf report --sort comm,dso,sym`).
fn perf_record(p: &HostPair, vm: &str) -> Result<Option<Reaped>> {
    let Some(dir) = std::env::var_os("HV_BENCH_PERF") else {
        return Ok(None);
    };
    let mut pids: Vec<String> = [p.source.hvd_pid(), p.target.hvd_pid()]
        .into_iter()
        .flatten()
        .map(|p| p.to_string())
        .collect();
    if let Some(q) = p.source.client().info(vm)?.pid {
        pids.push(q.to_string());
    }
    let out = std::path::Path::new(&dir).join(format!("copy-{vm}.data"));
    let child = std::process::Command::new("perf")
        .args(["record", "-q", "-F", "499", "-p", &pids.join(","), "-o"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running perf")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(Reaped::new(child)))
}

/// One `--copy-storage` run.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    /// MiB/s of disk over the whole operation.
    pub whole: f64,
    /// MiB/s over the `disks` phase.
    pub disks: Option<f64>,
    /// CPU ms of the source and the target hvd during the operation.
    pub hvd_cpu_ms: (Option<f64>, Option<f64>),
}

/// Overwrites the volume file at `path` with `data` (same size), keeping its owner and mode.
fn copy_into(data: &std::path::Path, path: &std::path::Path) -> Result<()> {
    let mut from = std::fs::File::open(data)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut from, &mut to)?;
    to.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_downtime_comes_from_the_vms_last_handover_line() {
        let log = "2026-12-02T07:00:00Z  INFO handover done vm=\"m256-0\" qemu_downtime_ms=Some(13) handover_ms=40\n\
                   2026-12-02T07:00:01Z  INFO \u{1b}[3mhandover done\u{1b}[0m vm=\"m256-1\" \u{1b}[3mqemu_downtime_ms\u{1b}[0m=Some(21) handover_ms=35\n\
                   2026-12-02T07:00:02Z  INFO handover done vm=\"m256-10\" qemu_downtime_ms=Some(99) handover_ms=35\n";
        assert_eq!(qemu_downtime(log, "m256-0"), Some(13.0));
        assert_eq!(qemu_downtime(log, "m256-1"), Some(21.0));
        assert_eq!(qemu_downtime(log, "m256-2"), None);
    }
}
