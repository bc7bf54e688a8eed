//! Power-off figures: how long hvd takes to notice a guest that powered itself off, and how long
//! an ACPI shutdown takes end to end.

use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use api::{Event, EventKind};
use client::Client;
use model::VmState;
use testkit::{TestHvd, VmOpts};

use crate::procs::{watch_qemu, Bins, STOP_TIMEOUT};
use crate::stats::ms;

/// Guest `poweroff -f` → `shutoff`: the time from QEMU's `SHUTDOWN` event (its QMP timestamp)
/// to hvd's `state-changed: shutoff` event (its `time_ms`), both wall-clock, `runs` times.
pub fn guest_poweroff(hvd: &TestHvd, runs: usize) -> Result<Vec<f64>> {
    let vm = "poweroff";
    hvd.client()
        .create(hvd.tiny_spec(vm, VmOpts::default())?, false)?;
    let qmp_log = hvd.state_dir.join("vms").join(vm).join("qmp.log");
    (0..runs)
        .map(|i| poweroff_once(hvd, vm, &qmp_log).with_context(|| format!("power-off {}", i + 1)))
        .collect()
}

fn poweroff_once(hvd: &TestHvd, vm: &str, qmp_log: &Path) -> Result<f64> {
    let started_ms = unix_ms(SystemTime::now())?;
    hvd.client().start(vm, false)?;
    hvd.wait_ready(vm)?;
    let qemu = watch_qemu(hvd, vm)?;
    let events = Events::subscribe(hvd.client())?;
    hvd.type_line(vm, "poweroff -f")?;
    let shutoff = events.wait_state(vm, VmState::Shutoff, STOP_TIMEOUT)?;
    let text = std::fs::read_to_string(qmp_log)
        .with_context(|| format!("reading {}", qmp_log.display()))?;
    let shutdown_ms = last_shutdown_ms(&text)
        .with_context(|| format!("no SHUTDOWN event in {}", qmp_log.display()))?;
    if shutdown_ms < started_ms {
        bail!(
            "the last SHUTDOWN in {} is from an earlier run",
            qmp_log.display()
        );
    }
    qemu.wait(STOP_TIMEOUT)?;
    Ok(shutoff.time_ms as f64 - shutdown_ms)
}

/// `hv shutdown NAME` on a ready guest with the ACPI power-button handler, `runs` times.
pub fn acpi_shutdown(bins: &Bins, hvd: &TestHvd, runs: usize) -> Result<Vec<f64>> {
    let vm = "acpi";
    hvd.client()
        .create(hvd.tiny_spec(vm, VmOpts::default())?, false)?;
    let once = || -> Result<f64> {
        hvd.client().start(vm, false)?;
        hvd.wait_ready(vm)?;
        let qemu = watch_qemu(hvd, vm)?;
        let elapsed = bins.time_hv(&hvd.socket, ["shutdown", vm])?;
        let state = hvd.client().info(vm)?.state;
        if state != VmState::Shutoff {
            bail!("{vm} is {state} after `hv shutdown`");
        }
        qemu.wait(STOP_TIMEOUT)?;
        Ok(ms(elapsed))
    };
    (0..runs)
        .map(|i| once().with_context(|| format!("shutdown {}", i + 1)))
        .collect()
}

/// The wall-clock time (Unix ms) of the last `SHUTDOWN` event in a QMP transcript, whose
/// lines read `<unix secs> < {json}`.
fn last_shutdown_ms(transcript: &str) -> Option<f64> {
    transcript.lines().rev().find_map(|line| {
        let (_, json) = line.split_once(" < ")?;
        let msg: serde_json::Value = serde_json::from_str(json).ok()?;
        if msg["event"] != "SHUTDOWN" {
            return None;
        }
        let secs = msg["timestamp"]["seconds"].as_u64()?;
        let micros = msg["timestamp"]["microseconds"].as_u64()?;
        Some(secs as f64 * 1000.0 + micros as f64 / 1000.0)
    })
}

fn unix_ms(t: SystemTime) -> Result<f64> {
    Ok(ms(t
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?))
}

/// hvd's event stream, read on a thread so waits can time out.
struct Events {
    rx: Receiver<Event>,
}

impl Events {
    /// Subscribes; hvd subscribes before it answers, so no later event is missed.
    fn subscribe(client: &Client) -> Result<Events> {
        let reader = client.events()?;
        let (tx, rx) = mpsc::channel();
        // The thread ends when hvd closes the stream or the receiver is gone.
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Event>(&line) else {
                    continue;
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Ok(Events { rx })
    }

    /// The first event that puts `vm` in `state`; an error if it crashes first.
    fn wait_state(&self, vm: &str, state: VmState, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.rx.recv_timeout(left) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => bail!("{vm}: not {state} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("hvd closed the event stream"),
            };
            if event.vm != vm {
                continue;
            }
            match event.kind {
                EventKind::StateChanged { state: s, .. } if s == state => return Ok(event),
                EventKind::StateChanged {
                    state: VmState::Crashed,
                    reason,
                } => bail!("{vm} crashed: {}", reason.unwrap_or_default()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_shutdown_in_a_transcript() {
        let text = r#"1796006686 > {"execute":"qmp_capabilities","id":1}
1796006686 < {"timestamp": {"seconds": 100, "microseconds": 5000}, "event": "SHUTDOWN", "data": {}}
1796006691 < {"timestamp": {"seconds": 200, "microseconds": 984875}, "event": "SHUTDOWN", "data": {"guest": true}}
1796006691 < {"timestamp": {"seconds": 201, "microseconds": 0}, "event": "STOP"}
1796006691 < {"return": {}, "id": 2}
"#;
        assert_eq!(last_shutdown_ms(text), Some(200_984.875));
        assert_eq!(last_shutdown_ms("1 < {\"return\": {}}\n"), None);
    }
}
