//! `hv stats [NAME...] [--watch]`: live figures of running VMs.

use std::time::Duration;

use anyhow::Result;
use api::VmStats;
use client::Client;

use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// VMs to show (default: every running VM you may see).
    names: Vec<String>,
    /// Refresh every --interval seconds until interrupted (CPU % then covers the interval).
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(c: &Client, a: StatsArgs) -> Result<()> {
    loop {
        let stats = if a.names.is_empty() {
            c.stats_all()?
        } else {
            a.names
                .iter()
                .map(|n| c.stats(n))
                .collect::<std::result::Result<Vec<_>, _>>()?
        };
        if !output::structured(a.format, &stats)? {
            if a.watch {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", table(&stats));
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(a.interval));
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

pub fn table(stats: &[VmStats]) -> String {
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            let (rd, wr, rdo, wro) = s.disks.iter().fold((0, 0, 0, 0), |t, d| {
                (
                    t.0 + d.rd_bytes,
                    t.1 + d.wr_bytes,
                    t.2 + d.rd_ops,
                    t.3 + d.wr_ops,
                )
            });
            let (rx, tx, rxp, txp) = s.nics.iter().fold((0, 0, 0, 0), |t, n| {
                (
                    t.0 + n.rx_bytes,
                    t.1 + n.tx_bytes,
                    t.2 + n.rx_packets,
                    t.3 + n.tx_packets,
                )
            });
            vec![
                s.vm.clone(),
                format!("{:.1}%", s.cpu_percent),
                format!(
                    "{}/{}",
                    mib(s.memory_rss_bytes),
                    mib(s.memory_configured_bytes)
                ),
                format!("{} ({rdo})", mib(rd)),
                format!("{} ({wro})", mib(wr)),
                format!("{} ({rxp})", mib(rx)),
                format!("{} ({txp})", mib(tx)),
            ]
        })
        .collect();
    output::table(
        &[
            "VM",
            "CPU",
            "RSS/MEMORY",
            "DISK READ (OPS)",
            "DISK WRITE (OPS)",
            "NET RX (PKTS)",
            "NET TX (PKTS)",
        ],
        &rows,
    )
}
