//! The screen figure of issue 11: `GET /v1/vms/{name}/screenshot` of a 1024×768 screen (the
//! tiny guest booted with `vga=0x318`, a VESA mode QEMU's VGA sets before the kernel runs),
//! each a fresh QMP `screendump` (`max_age_ms=0`).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use testkit::{guest, TestHvd, VmOpts};

use crate::extra::{row, ExtraRow};
use crate::stats::ms;

pub fn measure(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    let mut shots = Vec::new();
    let mut size = (0, 0);
    let res = (|| -> Result<()> {
        let h = TestHvd::start(hvd)?;
        let c = h.client();
        let mut spec = h.tiny_spec("s", VmOpts::default())?;
        if let Some(k) = spec.kernel.as_mut() {
            k.cmdline = Some(format!("vga=0x318 console=tty0 {}", guest::CMDLINE));
        }
        c.create(spec, true)?;
        h.wait_ready("s")?;
        // The first one warms QEMU's PNG encoder up.
        c.screenshot("s", 0)?;
        for _ in 0..runs {
            let t0 = Instant::now();
            let png = c.screenshot("s", 0)?;
            shots.push(ms(t0.elapsed()));
            size = png_size(&png).context("not a PNG")?;
        }
        ensure!(
            size == (1024, 768),
            "the screen is {}x{}, not 1024x768",
            size.0,
            size.1
        );
        c.destroy("s")?;
        Ok(())
    })();
    let label = format!(
        "screenshot of a {}x{} screen (`GET .../screenshot`, PNG)",
        size.0, size.1
    );
    vec![row(&label, "ms", res.map(|()| shots), "-", "≤ 100 ms")]
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(png.get(16..20)?), be(png.get(20..24)?)))
}
