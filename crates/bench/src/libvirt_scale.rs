//! `hv-bench --vs libvirt --only storm`: the scale figures of issue 16 that have a libvirt
//! equivalent. A boot storm of 20 tiny VMs (20 concurrent API start calls against 20 concurrent
//! `virsh start`s, each side until every guest printed its ready marker), then the daemons'
//! memory per running VM (RSS growth from 20 defined to 20 running idle VMs, ÷ 20) and their
//! CPU over 10 s with the 20 VMs idle: hvd against libvirtd + virtlogd.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testkit::guest;
use testkit::{TestHvd, VmOpts};

use crate::growth::{cpu_percent, hv_storm, stop_all, STORM};
use crate::libvirt::{domain_xml, listen, virsh, wait_marker, Libvirt, VsRow};
use crate::procs::{rss_mib, Bins, TempDir};
use crate::stats::ms;

const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// A figure's label, hv's values and libvirt's, and their unit.
type Figure = (&'static str, Vec<f64>, Vec<f64>, &'static str);

/// Storm rounds (at most 3; the side that goes first alternates), then the idle figures.
pub fn storm(bins: &Bins, lv: &mut Libvirt, runs: usize) -> Vec<VsRow> {
    let r = (|| -> Result<Vec<Figure>> {
        let h = TestHvd::start(&bins.hvd)?;
        let dir = TempDir::new()?;
        let g = guest::tiny_guest()?;
        let names: Vec<String> = (0..STORM).map(|i| format!("hvb-storm-{i:02}")).collect();
        for n in &names {
            h.client()
                .create(h.tiny_spec(n, VmOpts::default())?, false)?;
            let serial = dir.path().join(format!("{n}.serial"));
            let vnc = dir.path().join(format!("{n}.vnc"));
            lv.define(dir.path(), n, &domain_xml(n, 128, &g, &serial, &vnc, None))?;
        }
        let (mut hv, mut lvs) = (Vec::new(), Vec::new());
        for i in 0..runs.clamp(1, 3) {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                if side == 0 {
                    let t = hv_storm(&h, &names)?;
                    eprintln!("  storm {i}: hv {t:.0} ms");
                    hv.push(t);
                    stop_all(&h, &names)?;
                } else {
                    let t = lv_storm(&names, dir.path())?;
                    eprintln!("  storm {i}: libvirt {t:.0} ms");
                    lvs.push(t);
                    lv_stop_all(&names)?;
                }
            }
        }
        // Idle: each side's daemons with 20 defined VMs, then with the 20 running idle; one
        // side at a time (40 TCG guests at once on a small machine boot for many minutes).
        let hvd = h.hvd_pid().context("hvd is not running")?;
        let hv_before = rss_mib(hvd)?;
        hv_storm(&h, &names)?;
        std::thread::sleep(Duration::from_secs(5));
        let hv_kib = (rss_mib(hvd)? - hv_before) * 1024.0 / STORM as f64;
        let hv_cpu = cpu_percent(hvd, Duration::from_secs(10))?;
        stop_all(&h, &names)?;
        let daemons = libvirt_pids()?;
        let lv_before = rss_sum(&daemons)?;
        lv_storm(&names, dir.path())?;
        std::thread::sleep(Duration::from_secs(5));
        let lv_kib = (rss_sum(&daemons)? - lv_before) * 1024.0 / STORM as f64;
        let mut lv_cpu = 0.0;
        // The two libvirt daemons one after the other: 10 s each.
        for p in &daemons {
            lv_cpu += cpu_percent(*p, Duration::from_secs(10))?;
        }
        lv_stop_all(&names)?;
        Ok(vec![
            (
                "boot storm: 20 tiny VMs started at once → all ready",
                hv,
                lvs,
                "ms",
            ),
            (
                "daemon memory per running VM (RSS growth 20 defined → 20 running, ÷ 20): hvd / libvirtd + virtlogd",
                vec![hv_kib],
                vec![lv_kib],
                "KiB",
            ),
            (
                "daemon CPU with 20 idle running VMs (of one core, over 10 s): hvd / libvirtd + virtlogd",
                vec![hv_cpu],
                vec![lv_cpu],
                "%",
            ),
        ])
    })();
    match r {
        Ok(rows) => rows
            .into_iter()
            .map(|(label, hv, lv, unit)| VsRow::new(label, Ok((hv, lv))).in_unit(unit))
            .collect(),
        Err(e) => vec![VsRow::new("boot storm and idle VMs", Err(e))],
    }
}

/// Starts every domain at once (one `virsh start` per thread), each until its guest's serial
/// port, connected to a socket this listens on, carries the ready marker.
fn lv_storm(names: &[String], dir: &Path) -> Result<f64> {
    let listeners = names
        .iter()
        .map(|n| listen(&dir.join(format!("{n}.serial"))))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let deadline = t0 + READY_TIMEOUT;
    std::thread::scope(|s| -> Result<()> {
        let threads: Vec<_> = names
            .iter()
            .zip(&listeners)
            .map(|(n, l)| {
                s.spawn(move || -> Result<()> {
                    virsh(&["start", n])?;
                    wait_marker(l, deadline).with_context(|| format!("{n} under libvirt"))
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a start thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(ms(t0.elapsed()))
}

fn lv_stop_all(names: &[String]) -> Result<()> {
    for n in names {
        virsh(&["destroy", n])?;
    }
    Ok(())
}

/// The PIDs of the running libvirtd and virtlogd.
fn libvirt_pids() -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "libvirtd" | "virtlogd") {
            out.push(pid);
        }
    }
    anyhow::ensure!(
        out.len() == 2,
        "expected one libvirtd and one virtlogd, found PIDs {out:?}"
    );
    Ok(out)
}

fn rss_sum(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|p| rss_mib(*p)).sum()
}
