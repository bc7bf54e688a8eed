//! `hv operation list|show|cancel`: the work of mutating requests, which hvd owns.

use anyhow::Result;
use clap::Subcommand;
use client::Client;

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum OperationCmd {
    /// Running operations, then recent ones (newest first).
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One operation.
    Show {
        id: u64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Cancel a running operation that can stop without leaving anything half-done.
    Cancel { id: u64 },
}

pub fn run(c: &Client, cmd: OperationCmd) -> Result<()> {
    match cmd {
        OperationCmd::List { format } => {
            let ops = c.operations()?;
            if !output::structured(format, &ops)? {
                print!("{}", table(&ops));
            }
        }
        OperationCmd::Show { id, format } => {
            let o = c.operation(id)?;
            if !output::structured(format, &o)? {
                print!("{}", table(std::slice::from_ref(&o)));
                if let Some(e) = &o.error {
                    println!("error: {e}");
                }
            }
        }
        OperationCmd::Cancel { id } => {
            let o = c.operation_cancel(id)?;
            println!(
                "operation {} ({} of {}) is being cancelled",
                o.id, o.kind, o.target
            );
        }
    }
    Ok(())
}

fn table(ops: &[api::OperationInfo]) -> String {
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let ms = o
                .finished_ms
                .map(|f| format!("{} ms", f.saturating_sub(o.created_ms)))
                .unwrap_or_else(|| "-".into());
            vec![
                o.id.to_string(),
                o.kind.clone(),
                o.target.clone(),
                o.status.to_string(),
                o.progress_percent
                    .map(|p| format!("{p:.0}%"))
                    .unwrap_or_else(|| "-".into()),
                ms,
                if o.cancellable { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "KIND",
            "TARGET",
            "STATUS",
            "PROGRESS",
            "TOOK",
            "CANCELLABLE",
        ],
        &rows,
    )
}
