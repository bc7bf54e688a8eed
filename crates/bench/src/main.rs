//! `hv-bench`: measures hv's performance figures on this machine and prints them as a Markdown
//! table, each next to libvirt's figure here and hv's target (see BENCHMARKS.md).
//!
//! It runs the release `hvd` and `hv` found next to itself (or in `--bin-dir`), each group of
//! figures against its own hermetic hvd ([`testkit::TestHvd`]), boots the tiny test guest, and
//! stops every process it started, by PID, also when a measurement fails.
//!
//! ```text
//! cargo build --release -p daemon -p cli -p bench && target/release/hv-bench [--quick]
//! ```

mod boot;
mod cli;
mod daemon;
mod machine;
mod power;
mod procs;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use testkit::TestHvd;

use boot::Pairs;
use procs::Bins;
use report::{Figure, Row};
use stats::Summary;

/// Measure hv's performance figures and print them next to libvirt's and the targets.
#[derive(Parser, Debug)]
#[command(name = "hv-bench")]
struct Args {
    /// Fewer iterations (for a CI smoke run); the figures are then rough.
    #[arg(long)]
    quick: bool,
    /// Where `hvd` and `hv` are (default: next to hv-bench).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Runs per figure (default: 10, or 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    runs: Option<u16>,
    /// Boot pairs of hv and raw QEMU (default: 5, or 2 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pairs: Option<u16>,
    /// Measure only these groups of figures (repeatable; default: all).
    #[arg(long, value_enum, value_name = "GROUP")]
    only: Vec<Group>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Group {
    /// Start → guest ready, against raw QEMU.
    Boot,
    /// `hv start` and `hv create` processes.
    Cli,
    /// `hv list`, `hv info` and hvd's RSS with 1,000 VMs.
    Scale,
    /// Guest power-off and ACPI shutdown.
    Power,
    /// Daemon start → API answers.
    Daemon,
}

/// How many times each figure is measured.
#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    boot_pairs: usize,
    vms: usize,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let plan = Plan::defaults(args.quick);
        Plan {
            runs: args.runs.map_or(plan.runs, usize::from),
            boot_pairs: args.pairs.map_or(plan.boot_pairs, usize::from),
            vms: plan.vms,
        }
    }

    fn defaults(quick: bool) -> Plan {
        if quick {
            Plan {
                runs: 3,
                boot_pairs: 2,
                vms: 1000,
            }
        } else {
            Plan {
                runs: 10,
                boot_pairs: 5,
                vms: 1000,
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measures and prints; false when a figure could not be measured.
fn run(args: Args) -> Result<bool> {
    let bins = Bins::find(args.bin_dir.as_deref())?;
    let plan = Plan::new(&args);
    let wanted = |g: Group| args.only.is_empty() || args.only.contains(&g);
    // Build (or find) the test guest before any clock starts.
    testkit::guest::tiny_guest().context("building the tiny test guest")?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut machine = None;
    if wanted(Group::Boot) {
        eprintln!("boot: {} pairs of hv and raw QEMU", plan.boot_pairs);
        let hvd = TestHvd::start(&bins.hvd)?;
        machine = Some(machine::describe(hvd.client()));
        match boot::measure(&hvd, plan.boot_pairs) {
            Ok(pairs) => {
                rows.push(boot_row(&pairs));
                notes.push(boot_note(&pairs));
            }
            Err(e) => {
                eprintln!("  boot: {e:#}");
                rows.push(Row::boot_error(&format!("{e:#}")));
            }
        }
    }
    if wanted(Group::Cli) {
        eprintln!("cli: `hv start` and `hv create`, {} runs each", plan.runs);
        let hvd = TestHvd::start(&bins.hvd)?;
        machine.get_or_insert_with(|| machine::describe(hvd.client()));
        rows.push(row(
            &report::START_COMMAND,
            cli::start_command(&bins, &hvd, plan.runs),
        ));
        rows.push(row(&report::DEFINE, cli::define(&bins, &hvd, plan.runs)));
    }
    if wanted(Group::Scale) {
        eprintln!("scale: {} VMs, {} runs each", plan.vms, plan.runs);
        let hvd = TestHvd::start(&bins.hvd)?;
        match cli::at_scale(&bins, &hvd, plan.vms, plan.runs) {
            Ok(s) => {
                rows.push(row(&report::LIST_1000, Ok(s.list)));
                rows.push(row(&report::INFO_1000, Ok(s.info)));
                rows.push(row(&report::RSS_1000, Ok(vec![s.rss_mib])));
            }
            Err(e) => {
                let e = format!("{e:#}");
                eprintln!("  scale: {e}");
                for fig in [&report::LIST_1000, &report::INFO_1000, &report::RSS_1000] {
                    rows.push(Row::error(fig, &e));
                }
            }
        }
    }
    if wanted(Group::Power) {
        eprintln!(
            "power: guest power-off and ACPI shutdown, {} runs each",
            plan.runs
        );
        let hvd = TestHvd::start(&bins.hvd)?;
        rows.push(row(
            &report::POWEROFF,
            power::guest_poweroff(&hvd, plan.runs),
        ));
        rows.push(row(
            &report::ACPI_SHUTDOWN,
            power::acpi_shutdown(&bins, &hvd, plan.runs),
        ));
    }
    if wanted(Group::Daemon) {
        eprintln!("daemon: start → API answers, {} runs", plan.runs);
        rows.push(row(
            &report::DAEMON_START,
            daemon::measure(&bins, plan.runs),
        ));
    }

    if let Some(m) = machine {
        println!("Machine: {m}\n");
    }
    print!("{}", report::table(&rows));
    let met = rows.iter().filter(|r| r.met()).count();
    println!("\n{met} of {} figures meet their target.", rows.len());
    for note in notes {
        println!("\n{note}");
    }
    Ok(rows.iter().all(|r| !r.failed()))
}

/// A row from a measurement, or a failed row carrying its error.
fn row(fig: &Figure, samples: Result<Vec<f64>>) -> Row {
    let summary = samples.and_then(|s| Summary::of(&s).context("no samples"));
    match summary {
        Ok(s) => Row::measured(fig, &s),
        Err(e) => {
            eprintln!("  {}: {e:#}", fig.label);
            Row::error(fig, &format!("{e:#}"))
        }
    }
}

/// The boot row: medians of each side, range of the per-pair differences.
fn boot_row(pairs: &Pairs) -> Row {
    let deltas: Vec<f64> = pairs
        .hv
        .iter()
        .zip(&pairs.raw)
        .map(|(h, r)| h - r)
        .collect();
    match (
        Summary::of(&pairs.hv),
        Summary::of(&pairs.raw),
        Summary::of(&deltas),
    ) {
        (Some(hv), Some(raw), Some(d)) => Row::boot(&hv, &raw, &d),
        _ => Row::boot_error("no pairs"),
    }
}

/// The paired boot values, listed under the table.
fn boot_note(pairs: &Pairs) -> String {
    let mut note = String::from("Start → guest ready, paired runs (hv / raw QEMU):\n");
    for (i, (hv, raw)) in pairs.hv.iter().zip(&pairs.raw).enumerate() {
        note.push_str(&format!(
            "- pair {}: {hv:.0} ms / {raw:.0} ms ({:+.0} ms)\n",
            i + 1,
            hv - raw
        ));
    }
    if let (Some(hv), Some(raw)) = (Summary::of(&pairs.hv), Summary::of(&pairs.raw)) {
        note.push_str(&format!(
            "- medians: hv {:.0} ms, raw QEMU {:.0} ms\n",
            hv.median, raw.median
        ));
    }
    note
}
