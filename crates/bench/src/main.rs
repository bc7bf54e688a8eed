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
mod extra;
mod growth;
mod kvm;
mod libvirt;
mod libvirt_pool;
mod libvirt_scale;
mod machine;
mod migrate;
mod power;
mod procs;
mod remote;
mod report;
mod screen;
mod stats;
mod ui;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use testkit::TestHvd;

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
    /// Measure the figures with a libvirt equivalent through `virsh` instead, interleaved with
    /// hv's, and print both medians and the ratio (needs `cargo xtask bench-deps`). --only then
    /// picks which: boot/cli/scale (lifecycle), snapshot, storage (pools and volumes), storm;
    /// without it, all but the storm.
    #[arg(long, value_enum, value_name = "OTHER")]
    vs: Option<Vs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Vs {
    /// libvirt 9 through `virsh`, same guest, memory and disk format.
    Libvirt,
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
    /// Volume latencies and upload/download throughput.
    Storage,
    /// Snapshot create/revert/delete with 256 MiB and 1 GiB guests.
    Snapshot,
    /// Network start/stop and VM start → lease (inside a network namespace).
    Net,
    /// `hv --remote` and authenticated requests over TLS, and the password login.
    Remote,
    /// Screenshots of a 1024x768 screen.
    Screen,
    /// The web console's switch page with 200 VMs, in chromium.
    Ui,
    /// The browser console: `/vnc` throughput and key latency against QEMU's own socket, and
    /// hvd's CPU with 20 viewers.
    Kvm,
    /// Events, `/metrics` and live figures (issue 13).
    Watch,
    /// Boot storm of 20 VMs, hvd per idle running VM (issue 16).
    Storm,
    /// `list`, `info`, RSS and daemon start with 10,000 VMs (issue 16).
    Many,
    /// 50 API readers while 10 VMs start and stop (issue 16).
    Busy,
    /// Live migration between two hvds against raw QEMU and a TCP copy (issue 12).
    Migrate,
}

/// VMs defined for the figures "with 1,000 VMs defined".
const SCALE_VMS: usize = 1000;

/// How many times each figure is measured.
#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    boot_pairs: usize,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let (runs, boot_pairs) = if args.quick { (3, 2) } else { (10, 5) };
        Plan {
            runs: args.runs.map_or(runs, usize::from),
            boot_pairs: args.pairs.map_or(boot_pairs, usize::from),
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
    // With `--vs`, `--only` picks side-by-side figures and hv's own groups do not run.
    let wanted = |g: Group| args.vs.is_none() && (args.only.is_empty() || args.only.contains(&g));
    // Build (or find) the test guest before any clock starts.
    testkit::guest::tiny_guest().context("building the tiny test guest")?;
    let machine = machine::describe(TestHvd::start(&bins.hvd)?.client());

    let mut out = Output::default();
    if wanted(Group::Boot) {
        boot_group(&bins, &plan, &mut out)?;
    }
    if wanted(Group::Cli) {
        cli_group(&bins, &plan, &mut out)?;
    }
    if wanted(Group::Scale) {
        scale_group(&bins, &plan, &mut out)?;
    }
    if wanted(Group::Power) {
        power_group(&bins, &plan, &mut out)?;
    }
    if wanted(Group::Daemon) {
        eprintln!("daemon: start → API answers, {} runs", plan.runs);
        out.rows.push(row(
            &report::DAEMON_START,
            daemon::measure(&bins, plan.runs),
        ));
    }

    let mut extra = Vec::new();
    if wanted(Group::Storage) {
        eprintln!("storage: volume latencies and throughput");
        extra.extend(extra::storage(&bins.hvd, plan.runs));
    }
    if wanted(Group::Snapshot) {
        for mem in [256, 1024] {
            eprintln!("snapshot: {mem} MiB guest, {} runs", plan.runs.min(5));
            extra.extend(extra::snapshots(&bins.hvd, plan.runs.min(5), mem));
        }
    }
    if wanted(Group::Remote) {
        eprintln!("remote: TLS, tokens and logins");
        extra.extend(remote::measure(&bins, plan.runs));
    }
    if wanted(Group::Screen) {
        eprintln!("screen: screenshots, {} runs", plan.runs);
        extra.extend(screen::measure(&bins.hvd, plan.runs));
    }
    if wanted(Group::Kvm) {
        eprintln!("kvm: the browser console's RFB proxy");
        extra.extend(kvm::measure(&bins.hvd, plan.runs));
    }
    if wanted(Group::Ui) {
        eprintln!(
            "ui: the switch page with 200 VMs, {} runs",
            plan.runs.min(5)
        );
        extra.extend(ui::measure(&bins.hvd, plan.runs.min(5)));
    }
    if wanted(Group::Watch) {
        eprintln!("watch: event latency, /metrics and live figures");
        extra.extend(watch::measure(&bins.hvd, plan.runs));
    }
    // With `--vs libvirt`, the storm is measured against libvirt's instead (libvirt_scale.rs).
    if wanted(Group::Storm) {
        eprintln!("storm: 20 VMs at once, {} rounds", plan.runs.min(3));
        extra.extend(growth::storm(&bins, plan.runs.min(3)));
    }
    if wanted(Group::Many) {
        eprintln!("many: 10,000 VMs defined, {} runs", plan.runs);
        extra.extend(growth::many(&bins, plan.runs));
    }
    if wanted(Group::Busy) {
        let span = if args.quick { 10 } else { 30 };
        eprintln!("busy: 50 readers, 10 VMs starting and stopping, {span} s");
        extra.extend(growth::busy(&bins, std::time::Duration::from_secs(span)));
    }
    if wanted(Group::Net) {
        eprintln!("net: start/stop and start → lease");
        extra.extend(extra::network(&bins.hvd, plan.runs));
    }

    let mut migration = Vec::new();
    if wanted(Group::Migrate) {
        migration = migrate::measure(&bins, plan.runs.min(5));
    }

    let mut versus = Vec::new();
    if args.vs == Some(Vs::Libvirt) {
        eprintln!(
            "vs libvirt: the same figures through virsh, {} runs",
            plan.runs
        );
        versus = libvirt::measure(&bins, plan.runs, vs_parts(&args.only))?;
    }

    println!("Machine: {machine}\n");
    if !out.rows.is_empty() {
        print!("{}", report::table(&out.rows));
        let met = out.rows.iter().filter(|r| r.met()).count();
        println!("\n{met} of {} figures meet their target.", out.rows.len());
    }
    println!("At the end: {}.", machine::load());
    for note in &out.notes {
        println!("\n{note}");
    }
    if !extra.is_empty() {
        println!(
            "\nStorage, snapshots, networks, remote access and screens:\n\n{}",
            extra::table(&extra)
        );
    }
    if !versus.is_empty() {
        println!(
            "\nSide by side with libvirt in this run (hv through `hv`, libvirt through \
             `virsh`):\n\n{}",
            libvirt::table(&versus)
        );
    }
    if !migration.is_empty() {
        println!(
            "\nLive migration between two network namespaces (hv against raw QEMU over plain TCP, \
             and a plain TCP copy, in this run):\n\n{}",
            migrate::table(&migration)
        );
    }
    let migration_ok = migration.iter().all(|r| !r.failed());
    let extra_ok = extra.iter().all(|r| r.error.is_none());
    let versus_ok = versus.iter().all(|r| !r.failed());
    Ok(out.rows.iter().all(|r| !r.failed()) && extra_ok && versus_ok && migration_ok)
}

/// The side-by-side figures `--only` asks for: all but the storm without it; `boot`, `cli` and
/// `scale` pick the lifecycle figures, `snapshot` the snapshots, `storage` pools and volumes,
/// `storm` the boot storm and idle daemons.
fn vs_parts(only: &[Group]) -> libvirt::Parts {
    let has = |g: &[Group]| only.is_empty() || g.iter().any(|g| only.contains(g));
    libvirt::Parts {
        lifecycle: has(&[Group::Boot, Group::Cli, Group::Scale]),
        snapshots: has(&[Group::Snapshot]),
        pools: has(&[Group::Storage]),
        storm: only.contains(&Group::Storm),
    }
}

/// The table rows and the notes printed under the table.
#[derive(Debug, Default)]
struct Output {
    rows: Vec<Row>,
    notes: Vec<String>,
}

fn boot_group(bins: &Bins, plan: &Plan, out: &mut Output) -> Result<()> {
    eprintln!("boot: {} pairs of hv and raw QEMU", plan.boot_pairs);
    let hvd = TestHvd::start(&bins.hvd)?;
    match boot::measure(&hvd, plan.boot_pairs) {
        Ok(pairs) => {
            out.rows.push(pairs.row());
            out.notes.push(pairs.note());
        }
        Err(e) => {
            eprintln!("  boot: {e:#}");
            out.rows.push(Row::boot_error(&format!("{e:#}")));
        }
    }
    Ok(())
}

fn cli_group(bins: &Bins, plan: &Plan, out: &mut Output) -> Result<()> {
    eprintln!("cli: `hv start` and `hv create`, {} runs each", plan.runs);
    let hvd = TestHvd::start(&bins.hvd)?;
    out.rows.push(row(
        &report::START_COMMAND,
        cli::start_command(bins, &hvd, plan.runs),
    ));
    out.rows
        .push(row(&report::DEFINE, cli::define(bins, &hvd, plan.runs)));
    Ok(())
}

fn scale_group(bins: &Bins, plan: &Plan, out: &mut Output) -> Result<()> {
    eprintln!("scale: {SCALE_VMS} VMs, {} runs each", plan.runs);
    let hvd = TestHvd::start(&bins.hvd)?;
    match cli::at_scale(bins, &hvd, SCALE_VMS, plan.runs) {
        Ok(s) => {
            out.rows.push(row(&report::LIST_1000, Ok(s.list)));
            out.rows.push(row(&report::INFO_1000, Ok(s.info)));
            out.rows.push(row(&report::RSS_1000, Ok(vec![s.rss_mib])));
        }
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("  scale: {e}");
            for fig in [&report::LIST_1000, &report::INFO_1000, &report::RSS_1000] {
                out.rows.push(Row::error(fig, &e));
            }
        }
    }
    Ok(())
}

fn power_group(bins: &Bins, plan: &Plan, out: &mut Output) -> Result<()> {
    eprintln!(
        "power: guest power-off and ACPI shutdown, {} runs each",
        plan.runs
    );
    let hvd = TestHvd::start(&bins.hvd)?;
    out.rows.push(row(
        &report::POWEROFF,
        power::guest_poweroff(&hvd, plan.runs),
    ));
    out.rows.push(row(
        &report::ACPI_SHUTDOWN,
        power::acpi_shutdown(bins, &hvd, plan.runs),
    ));
    Ok(())
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
