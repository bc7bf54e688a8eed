//! `hv migrate NAME --to REMOTE`: moves a running VM to another hvd (issue 12). REMOTE is a
//! name in `remotes.toml`; its url, token and pinned fingerprint go to the SOURCE hvd (the one
//! this command talks to), which connects to the target itself. The command follows the
//! operation with a progress line; Ctrl-C only stops watching (`hv operation cancel ID`
//! cancels).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use api::{MigrateRequest, MigrationPhase, MigrationProgress};
use client::Client;
use model::Size;

use crate::remotes;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    name: String,
    /// The target: a remote from `hv remote list`, whose token grants admin on all its VMs.
    #[arg(long)]
    to: String,
    /// Copy the disks to the target (without shared storage).
    #[arg(long)]
    copy_storage: bool,
    /// Move a stopped VM's definition and disks.
    #[arg(long)]
    offline: bool,
    /// The longest pause for the final switchover, in milliseconds.
    #[arg(long, value_name = "MS")]
    downtime: Option<u64>,
    /// Bandwidth cap per second, e.g. 100M.
    #[arg(long, value_name = "BYTES")]
    bandwidth: Option<Size>,
    /// Switch to post-copy after the first RAM pass.
    #[arg(long)]
    postcopy: bool,
    /// Keep the definition here, stopped, with autostart off.
    #[arg(long)]
    keep_source: bool,
}

fn mib(b: u64) -> u64 {
    b >> 20
}

/// One progress line.
pub fn line(p: &MigrationProgress) -> String {
    let phase = serde_json::to_value(p.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut s = format!(
        "{phase}: RAM {}/{} MiB sent, {} MiB left",
        mib(p.ram_transferred),
        mib(p.ram_total),
        mib(p.ram_remaining)
    );
    if p.disk_total > 0 {
        s += &format!(
            ", disk {}/{} MiB",
            mib(p.disk_transferred),
            mib(p.disk_total)
        );
    }
    s += &format!(
        ", dirty {} MiB/s, expected downtime {} ms",
        mib(p.dirty_rate),
        p.expected_downtime_ms
    );
    s
}

pub fn run(c: &Client, a: MigrateArgs) -> Result<()> {
    let to = remotes::peer_for(&a.to)?;
    let req = MigrateRequest {
        to,
        copy_storage: a.copy_storage,
        offline: a.offline,
        downtime_ms: a.downtime,
        bandwidth: a.bandwidth.map(|s| s.0),
        postcopy: a.postcopy,
        keep_source: a.keep_source,
    };
    let (name, worker) = (a.name.clone(), c.clone());
    let job = std::thread::spawn(move || worker.migrate(&name, &req));
    let tty = std::io::stderr().is_terminal();
    let target = format!("vm/{}", a.name);
    let mut told = false;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(ops) = c.operations() else { continue };
        let Some(op) = ops.iter().find(|o| {
            o.kind == api::MIGRATE_OPERATION
                && o.target == target
                && o.status == api::OperationStatus::Running
        }) else {
            continue;
        };
        if !told {
            eprintln!(
                "migrating {} to {} (operation {}; Ctrl-C stops watching, `hv operation cancel {}` cancels)",
                a.name, a.to, op.id, op.id
            );
            told = true;
        }
        if let (true, Some(p)) = (tty, &op.migration) {
            eprint!("\r\x1b[K{}", line(p));
            let _ = std::io::stderr().flush();
        }
    }
    if tty && told {
        eprintln!();
    }
    let done = job
        .join()
        .map_err(|_| anyhow::anyhow!("the migration watcher failed"))??;
    debug_assert_eq!(done.phase, MigrationPhase::Done);
    println!(
        "VM {} migrated to {} in {} ms (downtime {} ms){}",
        a.name,
        a.to,
        done.total_ms.unwrap_or(0),
        done.downtime_ms.unwrap_or(0),
        if a.keep_source {
            "; its stopped definition stays here"
        } else {
            ""
        }
    );
    Ok(())
}
