//! The anchors hv's migration figures are divided by, measured on the same link in the same run:
//! a raw QEMU-to-QEMU live migration over plain TCP, and a plain TCP copy of a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use testkit::guest::{self, TinyGuest};

use super::link::{self, Link};
use super::qmp::Qmp;
use super::{Knobs, Sample};
use crate::boot::read_until;
use crate::procs::Reaped;
use crate::stats::ms;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);
/// The target QEMU's migration port (inside the target namespace, so it cannot collide).
const PORT: u16 = 4444;

/// The device set hv gives the tiny guest with one qcow2 disk (see the qemu-argv goldens):
/// the pinned i440fx machine, TCG, one vCPU, VGA, xHCI with a tablet, virtio-blk.
fn qemu(ns: &str, guest: &TinyGuest, disk: &Path, mem_mib: u64, qmp: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(["-machine", "pc-i440fx-7.2", "-accel", "tcg"])
        .args(["-m", &mem_mib.to_string(), "-smp", "1"])
        .args(["-no-user-config", "-nodefaults", "-no-shutdown"])
        .args(["-display", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-blockdev")
        .arg(
            json!({"driver": "file", "filename": disk, "node-name": "hv-vda-file",
                   "cache": {"direct": false, "no-flush": false}, "discard": "unmap"})
            .to_string(),
        )
        .arg("-blockdev")
        .arg(
            json!({"driver": "qcow2", "file": "hv-vda-file", "node-name": "hv-vda",
                   "cache": {"direct": false, "no-flush": false}})
            .to_string(),
        )
        .args([
            "-device",
            r#"{"driver":"virtio-blk-pci","drive":"hv-vda","id":"vda","write-cache":"on"}"#,
        ])
        .args(["-device", r#"{"driver":"VGA","id":"video0"}"#])
        .args(["-device", r#"{"driver":"qemu-xhci","id":"usb"}"#])
        .args([
            "-device",
            r#"{"bus":"usb.0","driver":"usb-tablet","id":"tablet0"}"#,
        ])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", guest::CMDLINE])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// A qcow2 disk both QEMUs open (shared storage).
pub fn shared_disk(dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("hvb-raw-shared.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .context("running qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(disk)
}

/// One raw live migration: the source boots to the ready marker untimed; the clock runs from
/// spawning the incoming QEMU until the target reports `running`, like hv's request → done.
pub fn migration(
    link: &Link,
    guest: &TinyGuest,
    dir: &Path,
    disk: &Path,
    mem_mib: u64,
    knobs: Knobs,
) -> Result<Sample> {
    let (src_qmp, dst_qmp) = (dir.join("src.qmp"), dir.join("dst.qmp"));
    let (src_log, dst_log) = (dir.join("src.log"), dir.join("dst.log"));
    for p in [&src_qmp, &dst_qmp] {
        let _ = std::fs::remove_file(p);
    }
    let mut cmd = qemu(&link.source, guest, disk, mem_mib, &src_qmp);
    cmd.args(["-serial", "stdio"])
        .stdout(Stdio::piped())
        .stderr(File::create(&src_log)?);
    let mut src = Reaped::new(cmd.spawn().context("spawning the source QEMU")?);
    let out = src.child()?.stdout.take().context("QEMU has no stdout")?;
    read_until(
        out,
        guest::READY_MARKER.as_bytes(),
        Instant::now() + READY_TIMEOUT,
    )
    .with_context(|| log_of("source", &src_log))?;
    let mut sq = Qmp::connect(&src_qmp, Duration::from_secs(10))?;
    sq.execute(
        "migrate-set-parameters",
        json!({"downtime-limit": knobs.downtime_ms, "max-bandwidth": knobs.bandwidth}),
    )?;

    let t0 = Instant::now();
    let mut cmd = qemu(&link.target, guest, disk, mem_mib, &dst_qmp);
    cmd.args([
        "-serial",
        &format!("file:{}", dir.join("dst.serial").display()),
    ])
    .arg("-incoming")
    .arg(format!("tcp:{}:{PORT}", link.target_ip))
    .stdout(Stdio::null())
    .stderr(File::create(&dst_log)?);
    let _dst = Reaped::new(cmd.spawn().context("spawning the target QEMU")?);
    let mut dq = Qmp::connect(&dst_qmp, Duration::from_secs(30))
        .with_context(|| log_of("target", &dst_log))?;
    let setup = ms(t0.elapsed());
    sq.execute(
        "migrate",
        json!({"uri": format!("tcp:{}:{PORT}", link.target_ip)}),
    )?;
    let info = loop {
        let info = sq.execute("query-migrate", json!({}))?;
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => bail!(
                "the raw migration failed: {info}; {}",
                log_of("target", &dst_log)
            ),
            _ if t0.elapsed() > MIGRATE_TIMEOUT => bail!("the raw migration took too long"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let completed = Instant::now();
    loop {
        let st = dq.execute("query-status", json!({}))?;
        if st["status"] == "running" {
            break;
        }
        if t0.elapsed() > MIGRATE_TIMEOUT {
            bail!("the raw target did not run: {st}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = ms(t0.elapsed());
    let num = |k: &str| {
        info[k]
            .as_f64()
            .with_context(|| format!("query-migrate has no {k}: {info}"))
    };
    let downtime = num("downtime")?;
    Ok(Sample {
        setup_ms: Some(setup),
        handover_ms: Some(ms(completed.elapsed())),
        hvd_cpu_ms: (None, None),
        total_ms: total,
        qemu_downtime_ms: Some(downtime),
        downtime_ms: Some(downtime),
    })
}

fn log_of(side: &str, path: &Path) -> String {
    format!(
        "{side} QEMU's stderr: {}",
        std::fs::read_to_string(path).unwrap_or_default().trim()
    )
}

/// Writes `size` bytes of incompressible, non-zero data (xorshift) to `path`.
pub fn fill(path: &Path, size: u64) -> Result<()> {
    let mut w = BufWriter::new(File::create(path).with_context(|| format!("{}", path.display()))?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() as u64 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&(x | 1).to_le_bytes());
        }
        w.write_all(&block)?;
    }
    w.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing the filled file")
}

/// A plain TCP copy of `src` over the link into `dst`, written and fsynced, as a receiver
/// thread in the target namespace and a sender in the source one: MiB/s from connect to the
/// receiver's fsync.
pub fn tcp_copy(link: &Link, src: &Path, dst: &Path) -> Result<f64> {
    let size = std::fs::metadata(src)?.len();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| -> Result<Instant> {
            link::enter(&link.target)?;
            let l = TcpListener::bind((link.target_ip.as_str(), 0));
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(None);
                    return Err(e).context("binding the receiver");
                }
            };
            let _ = tx.send(Some(l.local_addr()?.port()));
            // Polled, so a sender that failed before connecting cannot leave this thread hung.
            l.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut conn = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            bail!("no sender connected within 30 s");
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(e).context("accepting the sender"),
                }
            };
            conn.set_nonblocking(false)?;
            let mut f = File::create(dst)?;
            let n = std::io::copy(&mut conn, &mut f)?;
            f.sync_all()?;
            if n != size {
                bail!("received {n} of {size} bytes");
            }
            Ok(Instant::now())
        });
        let sender = s.spawn(move || -> Result<Instant> {
            link::enter(&link.source)?;
            let port = rx
                .recv()
                .ok()
                .flatten()
                .context("the receiver did not start")?;
            let t0 = Instant::now();
            let mut conn = TcpStream::connect((link.target_ip.as_str(), port))?;
            let mut f = File::open(src)?;
            std::io::copy(&mut f, &mut conn)?;
            conn.shutdown(Shutdown::Write)?;
            Ok(t0)
        });
        let t0 = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        let t1 = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
        Ok(size as f64 / (1 << 20) as f64 / (t1 - t0).as_secs_f64())
    })
}
