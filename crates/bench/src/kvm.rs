//! Browser console figures (issue 11): framebuffer-update throughput through hvd's `/vnc`
//! WebSocket against a direct connection to QEMU's VNC socket, the latency hvd adds to a key
//! event, hvd's CPU while 20 viewers watch one idle VM, and a screenshot.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::ConsoleStream;
use testkit::{TestHvd, VmOpts};
use tungstenite::{Message, WebSocket};

use crate::extra::{row, ExtraRow};
use crate::stats::ms;

const VM: &str = "k";
/// How long each throughput and CPU window lasts.
const WINDOW: Duration = Duration::from_secs(3);
const VIEWERS: usize = 20;
/// Round trips per latency sample.
const ROUND_TRIPS: usize = 200;

/// One RFB byte stream: hvd's WebSocket or QEMU's socket.
enum Wire {
    Hvd(Box<WebSocket<ConsoleStream>>, Vec<u8>),
    Direct(UnixStream),
}

impl Wire {
    fn send(&mut self, b: &[u8]) -> Result<()> {
        match self {
            Wire::Hvd(ws, _) => ws.send(Message::Binary(b.to_vec().into()))?,
            Wire::Direct(s) => s.write_all(b)?,
        }
        Ok(())
    }

    fn read(&mut self, n: usize) -> Result<Vec<u8>> {
        match self {
            Wire::Hvd(ws, buf) => {
                while buf.len() < n {
                    match ws.read()? {
                        Message::Binary(b) => buf.extend_from_slice(&b),
                        Message::Close(f) => bail!("hvd closed the session: {f:?}"),
                        _ => {}
                    }
                }
                Ok(buf.drain(..n).collect())
            }
            Wire::Direct(s) => {
                let mut v = vec![0; n];
                s.read_exact(&mut v)?;
                Ok(v)
            }
        }
    }
}

/// An RFB client after the handshake.
struct Rfb {
    wire: Wire,
    width: u16,
    height: u16,
    bpp: usize,
}

impl Rfb {
    fn over(mut wire: Wire) -> Result<Rfb> {
        wire.read(12)?;
        wire.send(b"RFB 003.008\n")?;
        let n = wire.read(1)?[0] as usize;
        wire.read(n)?;
        wire.send(&[1])?;
        if wire.read(4)? != [0, 0, 0, 0] {
            bail!("RFB security None refused");
        }
        wire.send(&[1])?;
        let init = wire.read(24)?;
        let name = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        wire.read(name)?;
        Ok(Rfb {
            wire,
            width: u16::from_be_bytes([init[0], init[1]]),
            height: u16::from_be_bytes([init[2], init[3]]),
            bpp: (init[4] as usize).div_ceil(8),
        })
    }

    fn request(&mut self, incremental: bool) -> Result<()> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&self.width.to_be_bytes());
        m.extend_from_slice(&self.height.to_be_bytes());
        self.wire.send(&m)
    }

    /// Reads server messages up to and including one FramebufferUpdate; its payload bytes.
    fn update(&mut self) -> Result<usize> {
        loop {
            match self.wire.read(1)?[0] {
                0 => {
                    let h = self.wire.read(3)?;
                    let mut bytes = 0;
                    for _ in 0..u16::from_be_bytes([h[1], h[2]]) {
                        let r = self.wire.read(12)?;
                        let w = u16::from_be_bytes([r[4], r[5]]) as usize;
                        let hh = u16::from_be_bytes([r[6], r[7]]) as usize;
                        match i32::from_be_bytes([r[8], r[9], r[10], r[11]]) {
                            0 => {
                                self.wire.read(w * hh * self.bpp)?;
                                bytes += w * hh * self.bpp;
                            }
                            // Pseudo-encodings carry no pixels.
                            e if e < 0 => {}
                            e => bail!("unexpected encoding {e}"),
                        }
                    }
                    return Ok(bytes);
                }
                2 => {}
                3 => {
                    let h = self.wire.read(7)?;
                    self.wire
                        .read(u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize)?;
                }
                t => bail!("unexpected RFB server message {t}"),
            }
        }
    }

    /// Whole frames per window: MB/s of pixels.
    fn throughput(&mut self) -> Result<f64> {
        self.request(false)?;
        self.update()?;
        let t0 = Instant::now();
        let mut bytes = 0;
        while t0.elapsed() < WINDOW {
            self.request(false)?;
            bytes += self.update()?;
        }
        Ok(bytes as f64 / t0.elapsed().as_secs_f64() / 1e6)
    }

    /// A key event (Shift down and up) and a SetEncodings with QEMU's extended-key pseudo
    /// encoding, which QEMU acknowledges at once: the median round trip.
    fn key_round_trip(&mut self) -> Result<f64> {
        let mut m = Vec::new();
        for down in [1u8, 0] {
            m.extend_from_slice(&[4, down, 0, 0]);
            m.extend_from_slice(&0xffe1u32.to_be_bytes());
        }
        m.extend_from_slice(&[2, 0, 0, 1]);
        m.extend_from_slice(&(-258i32).to_be_bytes());
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let t0 = Instant::now();
            self.wire.send(&m)?;
            self.update()?;
            samples.push(ms(t0.elapsed()));
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    }
}

/// QEMU's VNC socket of the one running VM (root reaches it).
fn qemu_socket(h: &TestHvd) -> Result<PathBuf> {
    for e in std::fs::read_dir(h.state_dir.join("run"))?.flatten() {
        let p = e.path().join("vnc.sock");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no VNC socket under {}", h.state_dir.join("run").display())
}

fn via_hvd(h: &TestHvd) -> Result<Rfb> {
    let ws = h.client().vnc(VM)?;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))?;
    Rfb::over(Wire::Hvd(Box::new(ws), Vec::new()))
}

fn direct(sock: &Path) -> Result<Rfb> {
    let s = UnixStream::connect(sock).with_context(|| format!("connecting {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Rfb::over(Wire::Direct(s))
}

/// CPU seconds (user + system) of a process so far.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .context("unreadable /proc stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// hvd's CPU (% of one core) while [`VIEWERS`] viewers keep asking for incremental updates.
fn viewers_cpu(h: &TestHvd) -> Result<f64> {
    let pid = h.hvd_pid().context("hvd's pid")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..VIEWERS {
        let mut r = via_hvd(h)?;
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> Result<()> {
            r.request(false)?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                r.update()?;
                r.request(true)?;
            }
            Ok(())
        }));
    }
    // Let the first whole frames pass.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_secs(pid)?, Instant::now());
    std::thread::sleep(WINDOW);
    let used = cpu_secs(pid)? - c0;
    let pct = used / t0.elapsed().as_secs_f64() * 100.0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Each viewer ends after its next update (or its read timeout on a still screen).
    for t in threads {
        let _ = t.join();
    }
    Ok(pct)
}

pub fn measure(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    let (mut ratio, mut added, mut cpu, mut shot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let res = (|| -> Result<()> {
        let h = TestHvd::start(hvd)?;
        let c = h.client();
        c.create(h.tiny_spec(VM, VmOpts::default())?, true)?;
        h.wait_ready(VM)?;
        let sock = qemu_socket(&h)?;
        for _ in 0..runs.min(3) {
            let through = via_hvd(&h)?.throughput()?;
            let straight = direct(&sock)?.throughput()?;
            ratio.push(through / straight);
            let through = via_hvd(&h)?.key_round_trip()?;
            let straight = direct(&sock)?.key_round_trip()?;
            added.push((through - straight).max(0.0));
        }
        for _ in 0..runs.min(2) {
            cpu.push(viewers_cpu(&h)?);
        }
        for _ in 0..runs {
            let t0 = Instant::now();
            let png = c.screenshot(VM, 0)?;
            shot.push(ms(t0.elapsed()));
            if !png.starts_with(b"\x89PNG") {
                bail!("the screenshot is no PNG");
            }
        }
        Ok(())
    })();
    let err = |v: Vec<f64>| match &res {
        Ok(()) => Ok(v),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    vec![
        row(
            "framebuffer updates through hvd's `/vnc` ÷ directly from QEMU's socket",
            "×",
            err(ratio),
            "—",
            "≥ 0.95",
        ),
        row(
            "latency hvd adds to a key event (median round trip, `/vnc` − direct)",
            "ms",
            err(added),
            "—",
            "≤ 2 ms",
        ),
        row(
            "hvd CPU, 20 viewers on one idle VM",
            "% of a core",
            err(cpu),
            "—",
            "≤ 10 %",
        ),
        row(
            "`GET .../screenshot` (PNG, fresh; the guest's 720×400 text mode)",
            "ms",
            err(shot),
            "—",
            "≤ 100 ms at 1024×768",
        ),
    ]
}
