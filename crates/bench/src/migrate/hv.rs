//! The hv side: `hv migrate` through the source hvd's API between the two hvds of a
//! [`HostPair`], timed from the request until hvd finished the operation (its `finished_ms`,
//! same host clock, so the polling interval does not count), with QEMU's own total time and
//! downtime from the operation's migration progress.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use api::{MigrateRequest, MigrationPhase, OperationInfo, OperationStatus};
use model::{Size, VmState};
use testkit::pair::{HostPair, SHARED_POOL};
use testkit::VmOpts;

use super::{Knobs, Sample};
use crate::procs::ExitWatch;

const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

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
    let op = run_operation(p, vm, &req)?;
    let m = op.op.migration.as_ref();
    let sample = Sample {
        total_ms: op.total_ms,
        qemu_total_ms: m.and_then(|m| m.total_ms).map(|v| v as f64),
        downtime_ms: m.and_then(|m| m.downtime_ms).map(|v| v as f64),
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

/// A finished migrate operation and its total time in ms.
pub struct Done {
    pub op: OperationInfo,
    pub total_ms: f64,
    /// From the first poll that saw the `disks` phase to the first that saw a later one.
    pub disks_ms: Option<f64>,
}

/// Posts the migrate request and waits for its operation to end (it must succeed).
pub fn run_operation(p: &HostPair, vm: &str, req: &MigrateRequest) -> Result<Done> {
    let src = p.source.client();
    let t_wall = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let t0 = Instant::now();
    let op: OperationInfo = src
        .call("POST", &api::migrate::paths::vm_migrate(vm), Some(req))
        .context("POST migrate")?;
    let (mut disks_from, mut disks_ms) = (None, None);
    let op = loop {
        let op = src.operation(op.id)?;
        let phase = op.migration.as_ref().map(|m| m.phase);
        match (phase, disks_from) {
            (Some(MigrationPhase::Disks), None) => disks_from = Some(Instant::now()),
            (Some(ph), Some(t)) if ph != MigrationPhase::Disks && disks_ms.is_none() => {
                disks_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
            }
            _ => {}
        }
        if op.status != OperationStatus::Running {
            break op;
        }
        if t0.elapsed() > OPERATION_TIMEOUT {
            bail!("the migration still runs after {OPERATION_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = t0.elapsed();
    if op.status != OperationStatus::Succeeded {
        bail!(
            "the migration {}: {}",
            op.status,
            op.error.as_deref().unwrap_or("no error given")
        );
    }
    let total_ms = match op.finished_ms {
        Some(f) => f as f64 - t_wall.as_secs_f64() * 1000.0,
        None => elapsed.as_secs_f64() * 1000.0,
    };
    Ok(Done {
        op,
        total_ms,
        disks_ms,
    })
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
) -> Result<(f64, Option<f64>)> {
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
    let done = run_operation(p, vm, &req)?;
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
    Ok((
        mib / (done.total_ms / 1000.0),
        done.disks_ms.map(|d| mib / (d / 1000.0)),
    ))
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
