//! `hv snapshot ...`.

use anyhow::Result;
use api::{CreateSnapshotRequest, SnapshotInfo};
use clap::Subcommand;
use client::Client;
use model::SnapName;

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot a VM: disks, and RAM when it is running.
    Create {
        vm: String,
        name: SnapName,
        #[arg(long)]
        description: Option<String>,
        /// External disk-only snapshot (new overlays).
        #[arg(long)]
        disk_only: bool,
    },
    /// A VM's snapshots.
    List {
        vm: String,
        /// Draw the snapshot tree.
        #[arg(long)]
        tree: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One snapshot.
    Info {
        vm: String,
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Revert the VM to a snapshot, in place.
    Revert { vm: String, name: String },
    /// Delete a snapshot; its children move up to its parent.
    Delete { vm: String, name: String },
    /// The snapshot the VM's current state descends from.
    Current { vm: String },
}

fn when(secs: u64) -> String {
    let days = secs / 86400;
    let (y, m, d) = civil_from_days(days as i64);
    let t = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn table(snaps: &[SnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                format!("{}{}", s.name, if s.current { " *" } else { "" }),
                when(s.created_at),
                s.vm_state.to_string(),
                s.kind.clone(),
                if s.memory { "yes" } else { "no" }.into(),
                s.parent.clone().unwrap_or_else(|| "-".into()),
                s.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "CREATED (UTC)",
            "STATE",
            "KIND",
            "RAM",
            "PARENT",
            "DESCRIPTION",
        ],
        &rows,
    )
}

/// The snapshot tree, children indented under their parent; `*` marks the current one.
pub fn tree(snaps: &[SnapshotInfo]) -> String {
    fn walk(snaps: &[SnapshotInfo], parent: Option<&str>, depth: usize, out: &mut String) {
        for s in snaps.iter().filter(|s| s.parent.as_deref() == parent) {
            let mark = if s.current { "  *current*" } else { "" };
            out.push_str(&format!(
                "{}{}{mark}\n",
                "  ".repeat(depth) + if depth > 0 { "└─ " } else { "" },
                s.name
            ));
            walk(snaps, Some(&s.name), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(snaps, None, 0, &mut out);
    out
}

pub fn run(c: &Client, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create {
            vm,
            name,
            description,
            disk_only,
        } => {
            let s = c.snapshot_create(
                &vm,
                &CreateSnapshotRequest {
                    name,
                    description,
                    disk_only,
                },
            )?;
            println!(
                "snapshot {} of {vm} created ({}{})",
                s.name,
                s.kind,
                if s.memory {
                    ", with RAM"
                } else {
                    ", disk only"
                }
            );
        }
        SnapshotCmd::List {
            vm,
            tree: as_tree,
            format,
        } => {
            let snaps = c.snapshots(&vm)?;
            if !output::structured(format, &snaps)? {
                print!("{}", if as_tree { tree(&snaps) } else { table(&snaps) });
            }
        }
        SnapshotCmd::Info { vm, name, format } => {
            let s = c.snapshot_info(&vm, &name)?;
            if !output::structured(format, &s)? {
                print!("{}", table(&[s]));
            }
        }
        SnapshotCmd::Revert { vm, name } => {
            c.snapshot_revert(&vm, &name)?;
            println!("{vm} reverted to snapshot {name}");
        }
        SnapshotCmd::Delete { vm, name } => {
            c.snapshot_delete(&vm, &name)?;
            println!("snapshot {name} of {vm} deleted");
        }
        SnapshotCmd::Current { vm } => match c.snapshot_current(&vm)? {
            Some(s) => println!("{}", s.name),
            None => anyhow::bail!("VM {vm} has no current snapshot"),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1796006193), "2026-11-30 02:36:33");
    }
}
