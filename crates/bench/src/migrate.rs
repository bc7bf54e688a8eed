//! `hv-bench --only migrate` (issue 12): live migration between two hosts, each figure next to
//! an anchor measured on the same link in the same run, interleaved run by run (which side goes
//! first alternates):
//! - the total time (request → the VM runs on the target) and QEMU's downtime of `hv migrate`
//!   with shared storage, for a 256 MiB and a 1 GiB tiny guest, against a raw QEMU-to-QEMU
//!   migration over plain TCP of the same guest, device set and disk, with the same downtime
//!   limit and bandwidth;
//! - `hv migrate --copy-storage` of a 1 GiB disk full of non-zero data against a plain TCP copy
//!   of the same bytes (written and fsynced on the receiving side).
//!
//! The link is two network namespaces joined by a veth ([`link::Link`]); everything started is
//! stopped by PID and the namespaces are removed, also when a measurement fails.

mod hv;
mod link;
mod qmp;
mod raw;

use std::fmt::Write as _;

use anyhow::{Context, Result};
use testkit::guest;
use testkit::pair::{HostPair, PairOpts};

use crate::procs::{Bins, TempDir};
use crate::stats::Summary;

/// The downtime limit and bandwidth both sides are given (QEMU's default bandwidth, 32 MiB/s,
/// would bound the figures instead of the link).
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub downtime_ms: u64,
    /// Bytes per second.
    pub bandwidth: u64,
}

pub const KNOBS: Knobs = Knobs {
    downtime_ms: 300,
    bandwidth: 1 << 30,
};

/// Guest sizes measured.
const MEMORY_MIB: [u64; 2] = [256, 1024];
/// The copied disk's size.
const DISK_BYTES: u64 = 1 << 30;

/// One live migration.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Request (or spawning the incoming QEMU) → the VM runs on the target.
    pub total_ms: f64,
    /// The guest's pause: hv's figure (QEMU's switchover plus the handover, until the target
    /// continued the guest); raw QEMU's own (its target runs the guest as soon as it loaded it).
    pub downtime_ms: Option<f64>,
    /// QEMU's `downtime` figure alone.
    pub qemu_downtime_ms: Option<f64>,
    /// Until QEMU's migration starts: hv's checks and incoming VM (first poll that saw the
    /// `memory` phase); raw: spawning the incoming QEMU until its QMP answers.
    pub setup_ms: Option<f64>,
    /// After QEMU's migration completed until the target runs the guest: hv's handover (first
    /// poll that saw it → the answer); raw: until the target's `query-status` says running.
    pub handover_ms: Option<f64>,
    /// hv: CPU ms of the source and the target hvd during the migration.
    pub hvd_cpu_ms: (Option<f64>, Option<f64>),
}

/// One line of the migration table: hv's samples and the anchor's.
pub struct MigRow {
    label: String,
    unit: &'static str,
    hv: Result<Vec<f64>>,
    anchor: Result<Vec<f64>>,
    target: &'static str,
}

impl MigRow {
    pub fn failed(&self) -> bool {
        self.hv.is_err() || self.anchor.is_err()
    }
}

/// Samples of one side, or the first error that side hit (it is not tried again).
struct Side<T> {
    samples: Vec<T>,
    error: Option<String>,
}

impl<T> Side<T> {
    fn new() -> Self {
        Side {
            samples: Vec::new(),
            error: None,
        }
    }

    fn run(&mut self, what: &str, f: impl FnOnce() -> Result<T>) {
        if self.error.is_some() {
            return;
        }
        match f() {
            Ok(s) => self.samples.push(s),
            Err(e) => {
                let e = format!("{e:#}");
                eprintln!("  {what}: {e}");
                self.error = Some(e);
            }
        }
    }

    fn values(&self, f: impl Fn(&T) -> Option<f64>) -> Result<Vec<f64>> {
        match &self.error {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => self
                .samples
                .iter()
                .map(|s| f(s).context("not reported"))
                .collect(),
        }
    }
}

pub fn measure(bins: &Bins, runs: usize) -> Vec<MigRow> {
    match measure_all(bins, runs) {
        Ok(rows) => rows,
        Err(e) => vec![MigRow {
            label: "live migration".into(),
            unit: "ms",
            hv: Err(anyhow::anyhow!("{e:#}")),
            anchor: Err(anyhow::anyhow!("{e:#}")),
            target: "",
        }],
    }
}

fn measure_all(bins: &Bins, runs: usize) -> Result<Vec<MigRow>> {
    let g = guest::tiny_guest()?;
    let scratch = TempDir::new()?;
    // The raw QEMUs run over the very link (namespaces, veth) of the hvds' pair; without a pair
    // (hvd cannot start), over a link of the same shape, and the hv figures report the error.
    let pair = HostPair::with(&bins.hvd, PairOpts { shared_pool: true });
    let (link, pair) = match pair {
        Ok(p) => (link::Link::of_pair(&p), Ok(p)),
        Err(e) => (link::Link::new()?, Err(format!("{e:#}"))),
    };
    let disk_dir = match &pair {
        Ok(p) => p
            .shared_dir
            .clone()
            .context("the pair has no shared pool")?,
        Err(_) => scratch.path().to_path_buf(),
    };
    let disk = raw::shared_disk(&disk_dir)?;
    let mut rows = Vec::new();
    // `HV_BENCH_MIGRATE=live` or `=copy` measures one half only (while tuning one of them).
    let part = std::env::var("HV_BENCH_MIGRATE").unwrap_or_default();
    let sizes: &[u64] = if part == "copy" { &[] } else { &MEMORY_MIB };
    for &mem in sizes {
        eprintln!("migrate: {mem} MiB guest, {runs} pairs of hv and raw QEMU");
        let (mut hv, mut raw) = (Side::new(), Side::new());
        let vol = match &pair {
            Ok(p) => hv::shared_volume(p, mem).map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.clone()),
        };
        for i in 0..runs {
            let mut raw_run = || {
                raw.run("raw QEMU", || {
                    raw::migration(&link, &g, scratch.path(), &disk, mem, KNOBS)
                })
            };
            let mut hv_run = || {
                hv.run("hv", || {
                    let (p, vol) = match (&pair, &vol) {
                        (Ok(p), Ok(v)) => (p, v),
                        (Err(e), _) | (_, Err(e)) => anyhow::bail!("{e}"),
                    };
                    hv::migration(p, &format!("m{mem}-{i}"), mem, vol, KNOBS)
                })
            };
            if i % 2 == 0 {
                raw_run();
                hv_run();
            } else {
                hv_run();
                raw_run();
            }
            eprintln!(
                "  pair {}: hv {:?}, raw {:?}",
                i + 1,
                hv.samples.last(),
                raw.samples.last()
            );
        }
        let size = if mem >= 1024 {
            format!("{} GiB", mem / 1024)
        } else {
            format!("{mem} MiB")
        };
        rows.push(MigRow {
            label: format!(
                "live migration, {size} guest, shared disk: request → runs on the target"
            ),
            unit: "ms",
            hv: hv.values(|s| Some(s.total_ms)),
            anchor: raw.values(|s| Some(s.total_ms)),
            target: "hv / raw ≤ 1.10",
        });
        rows.push(MigRow {
            label: format!("… downtime, {size} (hv: QEMU's + the handover until the target runs)"),
            unit: "ms",
            hv: hv.values(|s| s.downtime_ms),
            anchor: raw.values(|s| s.downtime_ms),
            target: "hv ≤ 300 ms",
        });
        rows.push(MigRow {
            label: format!("… of which QEMU's own downtime (`query-migrate`), {size}"),
            unit: "ms",
            hv: hv.values(|s| s.qemu_downtime_ms),
            anchor: raw.values(|s| s.qemu_downtime_ms),
            target: "—",
        });
        rows.push(MigRow {
            label: format!(
                "… setup before QEMU's migration starts, {size} (hv: checks, incoming VM)"
            ),
            unit: "ms",
            hv: hv.values(|s| s.setup_ms),
            anchor: raw.values(|s| s.setup_ms),
            target: "—",
        });
        rows.push(MigRow {
            label: format!("… QEMU done → the target runs, {size} (hv: the handover)"),
            unit: "ms",
            hv: hv.values(|s| s.handover_ms),
            anchor: raw.values(|s| s.handover_ms),
            target: "—",
        });
        for (side, pick) in [
            (
                "source",
                (|s: &Sample| s.hvd_cpu_ms.0) as fn(&Sample) -> Option<f64>,
            ),
            ("target", |s: &Sample| s.hvd_cpu_ms.1),
        ] {
            rows.push(MigRow {
                label: format!("… CPU of the {side} hvd during the migration, {size}"),
                unit: "ms",
                hv: hv.values(pick),
                anchor: Ok(Vec::new()),
                target: "—",
            });
        }
    }
    if part == "live" {
        return Ok(rows);
    }
    eprintln!("migrate: 1 GiB disk copy, {runs} pairs of --copy-storage and plain TCP");
    let src = scratch.path().join("data.raw");
    raw::fill(&src, DISK_BYTES)?;
    let dst = scratch.path().join("copy.raw");
    let (mut hv, mut tcp) = (Side::new(), Side::new());
    for i in 0..runs {
        let mut tcp_run = || {
            tcp.run("plain TCP", || {
                let r = raw::tcp_copy(&link, &src, &dst);
                let _ = std::fs::remove_file(&dst);
                r
            })
        };
        let mut hv_run = || {
            hv.run("hv --copy-storage", || match &pair {
                Ok(p) => hv::copy_storage(p, &format!("c{i}"), &src, KNOBS),
                Err(e) => anyhow::bail!("{e}"),
            })
        };
        if i % 2 == 0 {
            tcp_run();
            hv_run();
        } else {
            hv_run();
            tcp_run();
        }
        eprintln!(
            "  pair {}: hv (whole, disk phase) {:?} MiB/s, TCP {:?} MiB/s",
            i + 1,
            hv.samples.last(),
            tcp.samples.last()
        );
    }
    rows.push(MigRow {
        label: "1 GiB disk (non-zero data), 128 MiB guest: `--copy-storage` request → done / \
                plain TCP copy"
            .into(),
        unit: "MiB/s",
        hv: hv.values(|v: &hv::Copied| Some(v.whole)),
        anchor: tcp.values(|v| Some(*v)),
        target: "hv / TCP ≥ 0.8",
    });
    rows.push(MigRow {
        label: "… the same, disk phase only (`disks` phase seen by 10 ms polls)".into(),
        unit: "MiB/s",
        hv: hv.values(|v: &hv::Copied| v.disks),
        anchor: tcp.values(|v| Some(*v)),
        target: "—",
    });
    for (side, pick) in [
        (
            "source",
            (|v: &hv::Copied| v.hvd_cpu_ms.0) as fn(&hv::Copied) -> Option<f64>,
        ),
        ("target", |v: &hv::Copied| v.hvd_cpu_ms.1),
    ] {
        rows.push(MigRow {
            label: format!("… CPU of the {side} hvd (tunnel, TLS) during the copy"),
            unit: "ms",
            hv: hv.values(pick),
            anchor: Ok(Vec::new()),
            target: "—",
        });
    }
    Ok(rows)
}

/// The Markdown table: both medians with their ranges, and the ratio of the medians.
pub fn table(rows: &[MigRow]) -> String {
    let mut out = String::from(
        "| figure | n | hv median (min – max) | anchor median (min – max) | hv / anchor | target |\n\
         |---|---|---|---|---|---|\n",
    );
    let cell = |r: &Result<Vec<f64>>, unit: &str| -> (usize, Option<f64>, String) {
        match r {
            Ok(v) => match Summary::of(v) {
                Some(s) => (
                    s.n,
                    Some(s.median),
                    format!("{:.0} {unit} ({:.0} – {:.0})", s.median, s.min, s.max),
                ),
                None => (0, None, "-".into()),
            },
            Err(e) => (0, None, format!("failed: {e:#}")),
        }
    };
    for r in rows {
        let (hn, hm, h) = cell(&r.hv, r.unit);
        let (an, am, a) = cell(&r.anchor, r.unit);
        let ratio = match (hm, am) {
            (Some(h), Some(a)) if a > 0.0 => format!("{:.2}", h / a),
            _ => "-".into(),
        };
        let n = if hn == 0 { an } else { hn.min(an.max(hn)) };
        let _ = writeln!(
            out,
            "| {} | {n} | {h} | {a} | {ratio} | {} |",
            r.label, r.target
        );
    }
    out
}
