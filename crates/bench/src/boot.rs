//! Start → guest ready under hv against raw QEMU with a minimal device set, in alternating
//! pairs so that drift on the machine affects both sides alike.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::WaitRequest;
use testkit::guest::{self, TinyGuest};
use testkit::{TestHvd, VmOpts};

use crate::procs::{destroy_settled, poll_readable, Reaped, TempDir};
use crate::report::Row;
use crate::stats::{ms, Summary};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Paired boot times in ms: `hv[i]` and `raw[i]` ran back to back.
#[derive(Debug, Default)]
pub struct Pairs {
    pub hv: Vec<f64>,
    pub raw: Vec<f64>,
}

impl Pairs {
    /// hv − raw QEMU, pair by pair.
    fn deltas(&self) -> Vec<f64> {
        self.hv.iter().zip(&self.raw).map(|(h, r)| h - r).collect()
    }

    /// Summaries of hv, raw QEMU and the pair differences; `None` without pairs.
    fn summaries(&self) -> Option<(Summary, Summary, Summary)> {
        Some((
            Summary::of(&self.hv)?,
            Summary::of(&self.raw)?,
            Summary::of(&self.deltas())?,
        ))
    }

    /// The table row: the difference and ratio of the medians.
    pub fn row(&self) -> Row {
        match self.summaries() {
            Some((hv, raw, deltas)) => Row::boot(&hv, &raw, &deltas),
            None => Row::boot_error("no pairs"),
        }
    }

    /// The paired values, listed under the table.
    pub fn note(&self) -> String {
        let mut note = String::from("Start → guest ready, paired runs (hv / raw QEMU):\n");
        for (i, (hv, raw)) in self.hv.iter().zip(&self.raw).enumerate() {
            note.push_str(&format!(
                "- pair {}: {hv:.0} ms / {raw:.0} ms ({:+.0} ms)\n",
                i + 1,
                hv - raw
            ));
        }
        if let Some((hv, raw, deltas)) = self.summaries() {
            note.push_str(&format!(
                "- medians: hv {:.0} ms, raw QEMU {:.0} ms; median of the pair differences \
                 {:+.0} ms\n",
                hv.median, raw.median, deltas.median
            ));
        }
        note
    }
}

/// Runs `pairs` pairs after an untimed one; which side goes first alternates from pair to pair.
pub fn measure(hvd: &TestHvd, pairs: usize) -> Result<Pairs> {
    let guest = guest::tiny_guest()?;
    let vm = "boot";
    hvd.client()
        .create(hvd.tiny_spec(vm, VmOpts::default())?, false)?;
    let scratch = TempDir::new()?;
    // An untimed pair first: hvd probes the host on its first start, and both sides load
    // QEMU, the kernel and the initrd into the page cache.
    hv_boot(hvd, vm).context("warm-up boot under hv")?;
    raw_boot(&guest, scratch.path()).context("warm-up boot of raw QEMU")?;
    let mut out = Pairs::default();
    for i in 0..pairs {
        let context = || format!("pair {}", i + 1);
        let (hv, raw) = if i % 2 == 0 {
            let hv = hv_boot(hvd, vm).with_context(context)?;
            (hv, raw_boot(&guest, scratch.path()).with_context(context)?)
        } else {
            let raw = raw_boot(&guest, scratch.path()).with_context(context)?;
            (hv_boot(hvd, vm).with_context(context)?, raw)
        };
        eprintln!("  pair {}: hv {hv:.0} ms, raw QEMU {raw:.0} ms", i + 1);
        out.hv.push(hv);
        out.raw.push(raw);
    }
    Ok(out)
}

/// From the start call until hvd's (event-driven) console wait sees the ready marker.
fn hv_boot(hvd: &TestHvd, vm: &str) -> Result<f64> {
    let client = hvd.client();
    let t0 = Instant::now();
    client.start(vm, false)?;
    let started = t0.elapsed();
    let r = client.wait(
        vm,
        &WaitRequest {
            state: None,
            console: Some(guest::READY_MARKER.into()),
            timeout_secs: READY_TIMEOUT.as_secs_f64(),
        },
    )?;
    let elapsed = t0.elapsed();
    if !r.reached {
        bail!(
            "{vm}: no {} within {READY_TIMEOUT:?}; console:\n{}",
            guest::READY_MARKER,
            hvd.console_text(vm)
        );
    }
    destroy_settled(hvd, vm)?;
    eprintln!(
        "    hv: start call {:.0} ms of {:.0} ms",
        ms(started),
        ms(elapsed)
    );
    Ok(ms(elapsed))
}

/// From spawning QEMU until the ready marker appears on its serial port (stdio).
fn raw_boot(guest: &TinyGuest, scratch: &Path) -> Result<f64> {
    let log_path = scratch.join("qemu-raw.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "pc", "-accel", "tcg", "-m", "128"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", guest::CMDLINE, "-serial", "stdio"])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let t0 = Instant::now();
    let mut qemu = Reaped::new(cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?);
    let stdout = qemu.child()?.stdout.take().context("QEMU has no stdout")?;
    let found = read_until(stdout, guest::READY_MARKER.as_bytes(), t0 + READY_TIMEOUT);
    let elapsed = t0.elapsed();
    qemu.stop(libc::SIGKILL)?;
    match found {
        Ok(()) => Ok(ms(elapsed)),
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(e.context(format!("raw QEMU log: {log}")))
        }
    }
}

/// Reads `out` until `marker` has appeared in it, or fails at `deadline` or end of file.
pub(crate) fn read_until(
    mut out: impl Read + AsFd,
    marker: &[u8],
    deadline: Instant,
) -> Result<()> {
    let mut scan = MarkerScan::new(marker);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no {:?} within the deadline; output:\n{}",
                String::from_utf8_lossy(marker),
                scan.seen()
            );
        }
        if !poll_readable(out.as_fd(), left)? {
            continue;
        }
        let n = out.read(&mut buf).context("reading QEMU's serial output")?;
        if n == 0 {
            bail!(
                "the output ended before the marker (QEMU exited); output:\n{}",
                scan.seen()
            );
        }
        if scan.feed(&buf[..n]) {
            return Ok(());
        }
    }
}

/// Looks for a marker in output that arrives in chunks, also across chunk boundaries.
struct MarkerScan<'a> {
    marker: &'a [u8],
    seen: Vec<u8>,
}

impl<'a> MarkerScan<'a> {
    fn new(marker: &'a [u8]) -> Self {
        MarkerScan {
            marker,
            seen: Vec::new(),
        }
    }

    /// Adds a chunk; true once the marker has appeared.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let from = self.seen.len().saturating_sub(self.marker.len());
        self.seen.extend_from_slice(chunk);
        self.seen[from..]
            .windows(self.marker.len())
            .any(|w| w == self.marker)
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    const MARKER: &[u8] = b"HV-GUEST-READY";

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn finds_a_marker_split_across_chunks() {
        let mut scan = MarkerScan::new(MARKER);
        assert!(!scan.feed(b"boot noise HV-GUE"));
        assert!(!scan.feed(b"S"));
        assert!(scan.feed(b"T-READY\n"));
        assert!(!MarkerScan::new(MARKER).feed(b"HV-GUEST-RE ADY"));
    }

    #[test]
    fn reads_until_the_marker() {
        let (reader, mut writer) = UnixStream::pair().expect("socket pair");
        writer.write_all(b"noise HV-GUEST-READY").expect("write");
        read_until(reader, MARKER, deadline()).expect("marker found");
    }

    #[test]
    fn end_of_output_without_the_marker_is_an_error() {
        let (reader, mut writer) = UnixStream::pair().expect("socket pair");
        writer.write_all(b"kernel panic").expect("write");
        drop(writer);
        let e = read_until(reader, MARKER, deadline()).expect_err("no marker");
        assert!(e.to_string().contains("kernel panic"), "{e}");
    }

    #[test]
    fn silence_times_out() {
        let (reader, _writer) = UnixStream::pair().expect("socket pair");
        let soon = Instant::now() + Duration::from_millis(50);
        let e = read_until(reader, MARKER, soon).expect_err("times out");
        assert!(e.to_string().contains("within the deadline"), "{e}");
    }
}
