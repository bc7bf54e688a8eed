//! Daemon start → API answers: spawn hvd and ping it in a tight loop until it answers.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::Client;

use crate::procs::{Bins, Reaped, TempDir};
use crate::stats::ms;

const DEADLINE: Duration = Duration::from_secs(20);

/// Times `runs` daemon starts on one state dir. An untimed first start creates the state, so
/// the timed ones are restarts of a daemon with an (empty) existing state, as on a real host.
pub fn measure(bins: &Bins, runs: usize) -> Result<Vec<f64>> {
    let dir = TempDir::new()?;
    start_once(bins, dir.path()).context("warm-up start")?;
    (0..runs)
        .map(|i| start_once(bins, dir.path()).with_context(|| format!("start {}", i + 1)))
        .map(|r| r.map(ms))
        .collect()
}

/// Spawns hvd, waits for `GET /v1/ping` to answer, then stops hvd with SIGTERM.
pub(crate) fn start_once(bins: &Bins, dir: &Path) -> Result<Duration> {
    let socket = dir.join("hvd.sock");
    let log_path = dir.join("hvd.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&bins.hvd);
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("HV_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let client = Client::new(&socket);
    let t0 = Instant::now();
    let mut hvd = Reaped::new(cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?);
    let elapsed = loop {
        if client.ping().is_ok() {
            break t0.elapsed();
        }
        if let Some(status) = hvd.child()?.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("hvd exited at start ({status}): {log}");
        }
        if t0.elapsed() > DEADLINE {
            bail!("hvd did not answer within {DEADLINE:?}");
        }
    };
    hvd.stop(libc::SIGTERM)?;
    Ok(elapsed)
}
