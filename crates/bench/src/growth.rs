//! How hv's cost grows with its work (issue 16): a boot storm of 20 tiny VMs against 20 raw
//! QEMUs started at once, hvd's memory and CPU per idle running VM, and `list`/`info`, RSS and
//! daemon start → API with 10,000 VMs defined.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::WaitRequest;
use testkit::guest;
use testkit::{TestHvd, VmOpts};

use crate::boot::read_until;
use crate::extra::{row, ExtraRow};
use crate::procs::{rss_mib, Bins, Reaped};
use crate::stats::ms;

/// VMs in the boot storm and the idle figures.
pub(crate) const STORM: usize = 20;
/// VMs defined for the "with 10,000 VMs" figures.
const MANY: usize = 10_000;
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Boot storm (`runs` rounds, hv and raw QEMU alternating), then hvd's memory and CPU with
/// the storm's 20 VMs idle.
pub fn storm(bins: &Bins, runs: usize) -> Vec<ExtraRow> {
    let res = (|| -> Result<Storm> {
        let h = TestHvd::start(&bins.hvd)?;
        let names: Vec<String> = (0..STORM).map(|i| format!("storm-{i:02}")).collect();
        for n in &names {
            h.client()
                .create(h.tiny_spec(n, VmOpts::default())?, false)?;
        }
        let pid = h.hvd_pid().context("hvd is not running")?;
        let rss_idle = rss_mib(pid)?;
        let (mut hv, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let mut running = false;
        for i in 0..runs {
            if running {
                stop_all(&h, &names)?;
            }
            let (a, b) = if i % 2 == 0 {
                let a = hv_storm(&h, &names)?;
                stop_all(&h, &names)?;
                (a, raw_storm()?)
            } else {
                let b = raw_storm()?;
                (hv_storm(&h, &names)?, b)
            };
            running = i % 2 == 1;
            eprintln!("  storm {i}: hv {a:.0} ms, raw QEMU {b:.0} ms");
            hv.push(a);
            raw.push(b);
            ratio.push(a / b);
        }
        if !running {
            hv_storm(&h, &names)?;
        }
        // Let the guests' and hvd's start-up work settle, then watch hvd for 10 s.
        std::thread::sleep(Duration::from_secs(5));
        let rss_running = rss_mib(pid)?;
        let per_vm_kib = (rss_running - rss_idle) * 1024.0 / STORM as f64;
        let cpu = cpu_percent(pid, Duration::from_secs(10))?;
        stop_all(&h, &names)?;
        Ok((hv, raw, ratio, per_vm_kib, cpu))
    })();
    match res {
        Ok((hv, raw, ratio, kib, cpu)) => vec![
            row(
                "boot storm: 20 tiny VMs started at once → all ready, hv",
                "ms",
                Ok(hv),
                "—",
                "—",
            ),
            row(
                "boot storm: 20 raw QEMUs started at once → all ready",
                "ms",
                Ok(raw),
                "—",
                "—",
            ),
            row(
                "boot storm ratio hv / raw QEMU",
                "×",
                Ok(ratio),
                "—",
                "≤ 1.05",
            ),
            row(
                "hvd memory per running VM (RSS growth with 20 idle VMs / 20)",
                "KiB",
                Ok(vec![kib]),
                "—",
                "≤ 512 KiB",
            ),
            row(
                "hvd CPU with 20 idle running VMs (10 s)",
                "% of a core",
                Ok(vec![cpu]),
                "—",
                "≤ 0.5 %",
            ),
        ],
        Err(e) => vec![row("boot storm and idle VMs", "ms", Err(e), "—", "—")],
    }
}

/// Storm times (hv, raw, ratio per round), hvd KiB per running VM, hvd CPU %.
type Storm = (Vec<f64>, Vec<f64>, Vec<f64>, f64, f64);

/// Starts every VM at once (one thread per start call), then waits for all to be ready.
pub(crate) fn hv_storm(h: &TestHvd, names: &[String]) -> Result<f64> {
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let threads: Vec<_> = names
            .iter()
            .map(|n| {
                s.spawn(move || -> Result<()> {
                    let c = client::Client::new(&h.socket);
                    c.start(n, false)?;
                    let r = c.wait(
                        n,
                        &WaitRequest {
                            state: None,
                            console: Some(guest::READY_MARKER.into()),
                            timeout_secs: READY_TIMEOUT.as_secs_f64(),
                        },
                    )?;
                    if !r.reached {
                        bail!("{n}: not ready within {READY_TIMEOUT:?}");
                    }
                    Ok(())
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

pub(crate) fn stop_all(h: &TestHvd, names: &[String]) -> Result<()> {
    for n in names {
        h.client().destroy(n)?;
    }
    for n in names {
        h.wait_state(n, model::VmState::Shutoff, Duration::from_secs(60))?;
    }
    Ok(())
}

/// 20 raw QEMUs spawned at once (the same guest and memory as hv's), until each printed the
/// ready marker on its serial port.
fn raw_storm() -> Result<f64> {
    let g = guest::tiny_guest()?;
    let t0 = Instant::now();
    let mut qemus = Vec::new();
    for _ in 0..STORM {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "pc", "-accel", "tcg", "-m", "128"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(&g.kernel)
            .arg("-initrd")
            .arg(&g.initrd)
            .args(["-append", guest::CMDLINE, "-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        qemus.push(Reaped::new(cmd.spawn().context("spawning QEMU")?));
    }
    let deadline = t0 + READY_TIMEOUT;
    let outs = qemus
        .iter_mut()
        .map(|q| q.child()?.stdout.take().context("QEMU has no stdout"))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| -> Result<()> {
        let threads: Vec<_> = outs
            .into_iter()
            .map(|o| s.spawn(move || read_until(o, guest::READY_MARKER.as_bytes(), deadline)))
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = ms(t0.elapsed());
    for mut q in qemus {
        q.stop(libc::SIGKILL)?;
    }
    Ok(elapsed)
}

/// A process's CPU time over `span`, in percent of one core.
pub(crate) fn cpu_percent(pid: u32, span: Duration) -> Result<f64> {
    let ticks = |pid: u32| -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let u: f64 = f.get(11).context("no utime")?.parse()?;
        let s: f64 = f.get(12).context("no stime")?.parse()?;
        Ok(u + s)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let a = ticks(pid)?;
    std::thread::sleep(span);
    let b = ticks(pid)?;
    Ok((b - a) / hz / span.as_secs_f64() * 100.0)
}

/// `hv list --all`, `hv info`, hvd's RSS and daemon start → API with 10,000 VMs defined.
pub fn many(bins: &Bins, runs: usize) -> Vec<ExtraRow> {
    let res = (|| -> Result<[Vec<f64>; 4]> {
        let mut h = TestHvd::start(&bins.hvd)?;
        let template = h.tiny_spec("many-template", VmOpts::default())?;
        let names: Vec<String> = (0..MANY).map(|i| format!("many-{i:05}")).collect();
        crate::cli::define_many(&h, &template, &names)?;
        let pid = h.hvd_pid().context("hvd is not running")?;
        let rss = rss_mib(pid)?;
        let list = (0..runs)
            .map(|_| bins.time_hv(&h.socket, ["list", "--all"]).map(ms))
            .collect::<Result<Vec<_>>>()?;
        let info = (0..runs)
            .map(|i| &names[(i * 997 + 13) % MANY])
            .map(|n| bins.time_hv(&h.socket, ["info", n]).map(ms))
            .collect::<Result<Vec<_>>>()?;
        h.stop()?;
        let start = (0..runs)
            .map(|_| crate::daemon::start_once(bins, &h.dir).map(ms))
            .collect::<Result<Vec<_>>>()?;
        Ok([list, info, vec![rss], start])
    })();
    match res {
        Ok([list, info, rss, start]) => vec![
            row(
                "`hv list --all` with 10,000 VMs",
                "ms",
                Ok(list),
                "—",
                "≤ 50 ms",
            ),
            row("`hv info` with 10,000 VMs", "ms", Ok(info), "—", "≤ 5 ms"),
            row("hvd RSS with 10,000 VMs", "MiB", Ok(rss), "—", "≤ 40 MiB"),
            row(
                "daemon start → API with 10,000 VMs",
                "ms",
                Ok(start),
                "—",
                "≤ 100 ms",
            ),
        ],
        Err(e) => vec![row("10,000 VMs", "ms", Err(e), "—", "—")],
    }
}

/// Reader threads in the busy-API figure.
const READERS: usize = 50;
/// VMs started and stopped in a loop meanwhile.
const CHURN: usize = 10;

/// `READERS` clients doing `info`/`list` (through the API, one connection each) for `span`
/// while `CHURN` VMs start and are destroyed in a loop; the p50 and p99 of the reads.
pub fn busy(bins: &Bins, span: Duration) -> Vec<ExtraRow> {
    let res = (|| -> Result<(f64, f64, usize, usize)> {
        let h = TestHvd::start(&bins.hvd)?;
        let names: Vec<String> = (0..CHURN).map(|i| format!("busy-{i:02}")).collect();
        for n in &names {
            h.client()
                .create(h.tiny_spec(n, VmOpts::default())?, false)?;
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (lat, cycles) = std::thread::scope(|s| -> Result<(Vec<f64>, usize)> {
            let churn: Vec<_> = names
                .iter()
                .map(|n| {
                    let stop = &stop;
                    let h = &h;
                    s.spawn(move || -> Result<usize> {
                        let c = client::Client::new(&h.socket);
                        let mut k = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            c.start(n, false)?;
                            c.destroy(n)?;
                            h.wait_state(n, model::VmState::Shutoff, Duration::from_secs(60))?;
                            k += 1;
                        }
                        Ok(k)
                    })
                })
                .collect();
            let readers: Vec<_> = (0..READERS)
                .map(|i| {
                    let stop = &stop;
                    let h = &h;
                    let names = &names;
                    s.spawn(move || -> Result<Vec<f64>> {
                        let c = client::Client::new(&h.socket);
                        let mut lat = Vec::new();
                        let mut j = i;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let t = Instant::now();
                            if j % 2 == 0 {
                                c.info(&names[j % CHURN])?;
                            } else {
                                c.list()?;
                            }
                            lat.push(ms(t.elapsed()));
                            j += 1;
                        }
                        Ok(lat)
                    })
                })
                .collect();
            std::thread::sleep(span);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut lat = Vec::new();
            for r in readers {
                lat.extend(
                    r.join()
                        .map_err(|_| anyhow::anyhow!("a reader panicked"))??,
                );
            }
            let mut cycles = 0;
            for c in churn {
                cycles += c
                    .join()
                    .map_err(|_| anyhow::anyhow!("a churn thread panicked"))??;
            }
            Ok((lat, cycles))
        })?;
        if lat.is_empty() {
            bail!("no read completed");
        }
        let mut lat = lat;
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        Ok((pct(0.5), pct(0.99), lat.len(), cycles))
    })();
    match res {
        Ok((p50, p99, n, cycles)) => {
            eprintln!("  busy: {n} reads, {cycles} start/destroy cycles");
            vec![
                row(
                    &format!(
                        "busy API: p50 of {n} info/list reads (50 clients, 10 VMs \
                         starting/stopping, {cycles} cycles)"
                    ),
                    "ms",
                    Ok(vec![p50]),
                    "—",
                    "—",
                ),
                row(
                    "busy API: p99 of the reads",
                    "ms",
                    Ok(vec![p99]),
                    "—",
                    "≤ 20 ms",
                ),
            ]
        }
        Err(e) => vec![row("busy API", "ms", Err(e), "—", "—")],
    }
}
