//! The figures of issue 13: how long a QEMU event takes to reach an event-stream client, how
//! long `GET /metrics` takes with 1,000 VMs defined and 20 running, and what collecting the
//! live figures of 20 running VMs every 10 s costs hvd in CPU.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use api::{Event, EventKind, EventsQuery};
use model::VmState;
use testkit::{TestHvd, VmOpts};

use crate::extra::{row, ExtraRow};
use crate::stats::ms;

/// VMs running for the metrics and stats figures.
const RUNNING: usize = 20;
/// VMs defined in all for the metrics figure.
const DEFINED: usize = 1000;

pub fn measure(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    let mut rows = vec![row(
        "QEMU event (STOP) → `GET /v1/events` client",
        "ms",
        event_latency(hvd, runs),
        "-",
        "≤ 5 ms",
    )];
    let (metrics, stats) = match at_scale(hvd, runs) {
        Ok((m, s)) => (Ok(m), Ok(s)),
        Err(e) => {
            let e = format!("{e:#}");
            (Err(anyhow::anyhow!("{e}")), Err(anyhow::anyhow!("{e}")))
        }
    };
    rows.push(row(
        &format!("`GET /metrics` with {DEFINED} VMs defined and {RUNNING} running"),
        "ms",
        metrics,
        "-",
        "≤ 50 ms",
    ));
    rows.push(row(
        &format!("hvd CPU for the figures of {RUNNING} running VMs every 10 s"),
        "% of a core",
        stats,
        "-",
        "≤ 1 %",
    ));
    rows
}

/// The wall-clock time of the last `STOP` event in the VM's QMP transcript (QEMU's own
/// timestamp, in µs since 1970).
fn last_stop_us(h: &TestHvd, vm: &str) -> Result<u64> {
    let log = std::fs::read_to_string(h.state_dir.join("vms").join(vm).join("qmp.log"))
        .context("reading the QMP transcript")?;
    for line in log.lines().rev() {
        let Some((_, json)) = line.split_once(" < ") else {
            continue;
        };
        if !json.contains("\"STOP\"") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(json)?;
        if v["event"] == "STOP" {
            let s = v["timestamp"]["seconds"].as_u64().context("no seconds")?;
            let us = v["timestamp"]["microseconds"].as_u64().context("no µs")?;
            return Ok(s * 1_000_000 + us);
        }
    }
    bail!("no STOP event in the QMP transcript")
}

fn event_latency(hvd: &Path, runs: usize) -> Result<Vec<f64>> {
    let h = TestHvd::start(hvd)?;
    let c = h.client();
    c.create(h.tiny_spec("w", VmOpts::default())?, true)?;
    h.wait_ready("w")?;
    let mut reader = c.events_with(&EventsQuery {
        types: Some("state-changed".into()),
        vm: Some("w".into()),
        ..Default::default()
    })?;
    let (tx, rx) = mpsc::channel::<(Event, u64)>();
    std::thread::spawn(move || {
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                if tx.send((ev, now)).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    let wait = |want: VmState| -> Result<u64> {
        loop {
            let (ev, at) = rx.recv_timeout(Duration::from_secs(30))?;
            if matches!(ev.kind, EventKind::StateChanged { state, .. } if state == want) {
                return Ok(at);
            }
        }
    };
    let mut out = Vec::new();
    for _ in 0..runs {
        c.pause("w")?;
        let seen = wait(VmState::Paused)?;
        let stop = last_stop_us(&h, "w")?;
        ensure!(seen >= stop, "the event arrived before QEMU sent it");
        out.push((seen - stop) as f64 / 1000.0);
        c.resume("w")?;
        wait(VmState::Running)?;
    }
    c.destroy("w")?;
    Ok(out)
}

/// `GET /metrics` over the Unix socket: the time to the whole body.
fn scrape(socket: &Path) -> Result<(f64, usize)> {
    let t0 = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hvd\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let took = ms(t0.elapsed());
    ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "GET /metrics did not answer 200"
    );
    Ok((took, body.len()))
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn at_scale(hvd: &Path, runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    eprintln!("  defining {DEFINED} VMs, starting {RUNNING} (paused once ready, to spare the CPU)");
    let h = TestHvd::start(hvd)?;
    let c = h.client();
    let template = h.tiny_spec("tmpl", VmOpts::default())?;
    for i in 0..DEFINED {
        let mut spec = template.clone();
        spec.name = format!("m-{i:04}").parse()?;
        c.create(spec, i < RUNNING)?;
    }
    for i in 0..RUNNING {
        let name = format!("m-{i:04}");
        h.wait_ready(&name)?;
        // Paused QEMUs are still measured (CPU, memory, disks): only the guests' TCG idle
        // loops stop competing with hvd for this shared machine's two cores.
        c.pause(&name)?;
    }
    let (_, size) = scrape(&h.socket)?;
    eprintln!("  /metrics is {size} bytes");
    let mut metrics = Vec::new();
    for _ in 0..runs {
        metrics.push(scrape(&h.socket)?.0);
    }
    // CPU of the figures: many collections, for the clock ticks' resolution.
    let pid = h.hvd_pid().context("hvd is not running")?;
    // SAFETY: sysconf(3) reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut stats = Vec::new();
    for _ in 0..runs.min(5) {
        let n = 100;
        let before = cpu_ticks(pid)?;
        for _ in 0..n {
            let all = c.stats_all()?;
            ensure!(all.len() == RUNNING, "{} VMs have figures", all.len());
        }
        let secs = (cpu_ticks(pid)? - before) as f64 / hz / n as f64;
        // One collection every 10 s.
        stats.push(secs / 10.0 * 100.0);
    }
    Ok((metrics, stats))
}
