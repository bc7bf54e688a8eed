//! `hv-bench --vs libvirt`: the figures that have a libvirt equivalent, measured through `virsh`
//! in the same run as hv's (through `hv`), interleaved run by run, with the same tiny guest
//! (kernel, initramfs, command line), memory, machine family (`pc`), TCG, a VGA display with a
//! VNC server on a Unix socket, and qcow2 disks. Each side is a whole CLI process per
//! operation (`hv` against hvd, `virsh` against libvirtd).
//!
//! libvirt comes from `cargo xtask bench-deps` and is in no test path. When libvirtd is not
//! running, this starts `virtlogd` and `libvirtd` (foreground children) and stops them by PID
//! at the end; every domain it defines (`hvb-…`) is destroyed and undefined by name. It defines
//! no libvirt network, so no bridge, nft table or `ip_forward` change is left behind.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::WaitRequest;
use model::Size;
use testkit::guest::{self, TinyGuest};
use testkit::{TestHvd, VmOpts};

use crate::boot::read_until;
use crate::procs::{poll_readable, watch_qemu, Bins, Reaped, TempDir, STOP_TIMEOUT};
use crate::stats::{ms, Summary};

const URI: &str = "qemu:///system";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One line of the side-by-side table.
pub struct VsRow {
    pub label: String,
    /// What the values are in ("ms" unless the label says otherwise).
    pub unit: &'static str,
    pub hv: Result<Vec<f64>>,
    pub libvirt: Result<Vec<f64>>,
}

impl VsRow {
    pub(crate) fn new(label: &str, r: Result<(Vec<f64>, Vec<f64>)>) -> VsRow {
        match r {
            Ok((hv, lv)) => VsRow {
                label: label.into(),
                unit: "ms",
                hv: Ok(hv),
                libvirt: Ok(lv),
            },
            Err(e) => {
                let e = format!("{e:#}");
                eprintln!("  {label}: {e}");
                VsRow {
                    label: label.into(),
                    unit: "ms",
                    hv: Err(anyhow::anyhow!("{e}")),
                    libvirt: Err(anyhow::anyhow!("{e}")),
                }
            }
        }
    }

    /// The same row with values in `unit`.
    pub(crate) fn in_unit(self, unit: &'static str) -> VsRow {
        VsRow { unit, ..self }
    }

    pub fn failed(&self) -> bool {
        self.hv.is_err() || self.libvirt.is_err()
    }
}

/// The Markdown table: both medians and the ratio of the medians ("-" when libvirt's is 0).
pub fn table(rows: &[VsRow]) -> String {
    let mut out = String::from(
        "| figure | n | hv median | libvirt median | hv / libvirt |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let med = |s: &Result<Vec<f64>>| s.as_ref().ok().and_then(|v| Summary::of(v));
        match (med(&r.hv), med(&r.libvirt), &r.hv) {
            (Some(h), Some(l), _) => {
                let ratio = if l.median > 0.0 {
                    format!("{:.2}", h.median / l.median)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} {u} | {:.1} {u} | {ratio} |",
                    r.label,
                    h.n.min(l.n),
                    h.median,
                    l.median,
                    u = r.unit,
                );
            }
            (_, _, Err(e)) => {
                let _ = writeln!(out, "| {} | 0 | failed: {e:#} | - | - |", r.label);
            }
            _ => {
                let _ = writeln!(out, "| {} | 0 | - | - | - |", r.label);
            }
        }
    }
    out
}

/// Which side-by-side figures to measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    /// Define, start → ready, info, list, destroy.
    pub lifecycle: bool,
    /// Snapshot create / revert / delete at 256 MiB and 1 GiB.
    pub snapshots: bool,
    /// Directory pools and qcow2 volumes (`libvirt_pool.rs`).
    pub pools: bool,
    /// The boot storm and the daemons with 20 idle VMs (`libvirt_scale.rs`).
    pub storm: bool,
}

/// The chosen figures with a libvirt equivalent, `runs` pairs each (snapshots: at most 5).
pub fn measure(bins: &Bins, runs: usize, parts: Parts) -> Result<Vec<VsRow>> {
    let mut lv = Libvirt::start()?;
    let mut rows = Vec::new();
    if parts.lifecycle || parts.snapshots {
        let hvd = TestHvd::start(&bins.hvd)?;
        let scratch = TempDir::new()?;
        let g = guest::tiny_guest()?;
        if parts.lifecycle {
            lifecycle_rows(bins, &hvd, &mut lv, &g, scratch.path(), runs, &mut rows);
        }
        if parts.snapshots {
            snapshot_rows(bins, &hvd, &mut lv, &g, scratch.path(), runs, &mut rows);
        }
    }
    if parts.pools {
        eprintln!("  pools and volumes: {runs} runs");
        rows.extend(crate::libvirt_pool::measure(bins, &mut lv, runs));
    }
    if parts.storm {
        rows.extend(crate::libvirt_scale::storm(bins, &mut lv, runs));
    }
    lv.cleanup();
    Ok(rows)
}

fn lifecycle_rows(
    bins: &Bins,
    hvd: &TestHvd,
    lv: &mut Libvirt,
    g: &TinyGuest,
    dir: &Path,
    runs: usize,
    rows: &mut Vec<VsRow>,
) {
    rows.push(VsRow::new(
        "define (`hv create` / `virsh define`)",
        define(bins, hvd, lv, g, dir, runs),
    ));
    match lifecycle(bins, hvd, lv, g, dir, runs) {
        Ok(l) => {
            for (label, hv, lvs) in l {
                rows.push(VsRow::new(label, Ok((hv, lvs))));
            }
        }
        Err(e) => rows.push(VsRow::new(
            "start → guest ready, info, list, destroy",
            Err(e),
        )),
    }
}

fn snapshot_rows(
    bins: &Bins,
    hvd: &TestHvd,
    lv: &mut Libvirt,
    g: &TinyGuest,
    dir: &Path,
    runs: usize,
    rows: &mut Vec<VsRow>,
) {
    for mem in [256, 1024] {
        let g_label = if mem >= 1024 { "1 GiB" } else { "256 MiB" };
        match snapshots(bins, hvd, lv, g, dir, runs.min(5), mem) {
            Ok([c, r, d]) => {
                for (op, v) in [("create", c), ("revert", r), ("delete", d)] {
                    rows.push(VsRow::new(
                        &format!("snapshot {op}, running {g_label} guest"),
                        Ok(v),
                    ));
                }
            }
            Err(e) => rows.push(VsRow::new(&format!("snapshots, {g_label} guest"), Err(e))),
        }
    }
}

fn define(
    bins: &Bins,
    hvd: &TestHvd,
    lv: &mut Libvirt,
    g: &TinyGuest,
    dir: &Path,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut hv, mut lvs) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let name = format!("hvb-def-{i}");
        let hv_once = || -> Result<f64> {
            let args: Vec<std::ffi::OsString> = vec![
                "create".into(),
                name.clone().into(),
                "--memory".into(),
                "128M".into(),
                "--kernel".into(),
                g.kernel.clone().into(),
                "--initrd".into(),
                g.initrd.clone().into(),
            ];
            Ok(ms(bins.time_hv(&hvd.socket, args)?))
        };
        let xml = dir.join(format!("{name}.xml"));
        std::fs::write(
            &xml,
            domain_xml(
                &name,
                128,
                g,
                &dir.join(format!("{name}.serial")),
                &dir.join(format!("{name}.vnc")),
                None,
            ),
        )?;
        let mut lv_once = || -> Result<f64> {
            lv.names.push(name.clone());
            Ok(ms(virsh_timed(&["define".as_ref(), xml.as_os_str()])?))
        };
        let (h, l) = if i % 2 == 0 {
            let h = hv_once()?;
            (h, lv_once()?)
        } else {
            let l = lv_once()?;
            (hv_once()?, l)
        };
        // Run 0 is the untimed warm-up.
        if i > 0 {
            hv.push(h);
            lvs.push(l);
        }
    }
    Ok((hv, lvs))
}

pub(crate) type Figures = Vec<(&'static str, Vec<f64>, Vec<f64>)>;

/// Start → guest ready, `info`, `list` and destroy of a running 128 MiB guest.
fn lifecycle(
    bins: &Bins,
    hvd: &TestHvd,
    lv: &mut Libvirt,
    g: &TinyGuest,
    dir: &Path,
    runs: usize,
) -> Result<Figures> {
    let vm = "hvb-boot";
    hvd.client()
        .create(hvd.tiny_spec(vm, VmOpts::default())?, false)?;
    let serial = dir.join("boot.serial");
    lv.define(
        dir,
        vm,
        &domain_xml(vm, 128, g, &serial, &dir.join("boot.vnc"), None),
    )?;
    let mut f: [Vec<f64>; 8] = Default::default();
    for i in 0..=runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let t = if side == 0 {
                hv_cycle(bins, hvd, vm)?
            } else {
                lv_cycle(vm, &serial)?
            };
            eprintln!(
                "  {} run {i}: ready {:.0} ms, info {:.1}, list {:.1}, destroy {:.1}",
                ["hv", "libvirt"][side],
                t[0],
                t[1],
                t[2],
                t[3]
            );
            if i > 0 {
                for (k, v) in t.into_iter().enumerate() {
                    f[side * 4 + k].push(v);
                }
            }
        }
    }
    let [a, b, c, d, e, f2, g2, h] = f;
    Ok(vec![
        ("start → guest ready (128 MiB, TCG)", a, e),
        ("info of a running VM (`hv info` / `virsh dominfo`)", b, f2),
        ("list (`hv list --all` / `virsh list --all`)", c, g2),
        ("destroy a running VM (the CLI call)", d, h),
    ])
}

/// [ready, info, list, destroy] in ms for hv.
fn hv_cycle(bins: &Bins, hvd: &TestHvd, vm: &str) -> Result<[f64; 4]> {
    let t0 = Instant::now();
    bins.time_hv(&hvd.socket, ["start", vm])?;
    let r = hvd.client().wait(
        vm,
        &WaitRequest {
            state: None,
            console: Some(guest::READY_MARKER.into()),
            timeout_secs: READY_TIMEOUT.as_secs_f64(),
        },
    )?;
    let ready = ms(t0.elapsed());
    if !r.reached {
        bail!("{vm}: no {} under hv", guest::READY_MARKER);
    }
    let info = ms(bins.time_hv(&hvd.socket, ["info", vm])?);
    let list = ms(bins.time_hv(&hvd.socket, ["list", "--all"])?);
    let qemu = watch_qemu(hvd, vm)?;
    let destroy = ms(bins.time_hv(&hvd.socket, ["destroy", vm])?);
    qemu.wait(STOP_TIMEOUT)?;
    Ok([ready, info, list, destroy])
}

/// [ready, info, list, destroy] in ms for libvirt; the guest's serial port connects to a
/// socket this listens on, so readiness is seen as the marker arrives (no polling of a file).
fn lv_cycle(vm: &str, serial: &Path) -> Result<[f64; 4]> {
    let t0 = Instant::now();
    let listener = listen(serial)?;
    virsh_timed(&["start".as_ref(), vm.as_ref()])?;
    wait_marker(&listener, t0 + READY_TIMEOUT).with_context(|| format!("{vm} under libvirt"))?;
    let ready = ms(t0.elapsed());
    let info = ms(virsh_timed(&["dominfo".as_ref(), vm.as_ref()])?);
    let list = ms(virsh_timed(&["list".as_ref(), "--all".as_ref()])?);
    let destroy = ms(virsh_timed(&["destroy".as_ref(), vm.as_ref()])?);
    Ok([ready, info, list, destroy])
}

pub(crate) fn listen(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub(crate) fn wait_marker(l: &UnixListener, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if !poll_readable(l.as_fd(), left)? {
        bail!("QEMU did not connect its serial port within {READY_TIMEOUT:?}");
    }
    let (stream, _) = l.accept()?;
    stream.set_nonblocking(false)?;
    read_until(stream, guest::READY_MARKER.as_bytes(), deadline)
}

/// Snapshot create / revert / delete on a running guest of `mem` MiB with a 64 MiB qcow2 disk.
#[allow(clippy::too_many_arguments)]
fn snapshots(
    bins: &Bins,
    hvd: &TestHvd,
    lv: &mut Libvirt,
    g: &TinyGuest,
    dir: &Path,
    runs: usize,
    mem: u64,
) -> Result<[(Vec<f64>, Vec<f64>); 3]> {
    eprintln!("  snapshots: {mem} MiB guests, {runs} runs");
    let vm = format!("hvb-snap-{mem}");
    let c = hvd.client();
    let disk_name = format!("{vm}.qcow2");
    c.vol_create(
        "default",
        &api::CreateVolRequest {
            name: disk_name.parse()?,
            size: Some(Size(64 << 20)),
            format: None,
            backing: None,
        },
    )?;
    let mut spec = hvd.tiny_spec(&vm, VmOpts::default())?;
    spec.memory = Size(mem << 20);
    spec.disks.push(format!("vol=default/{disk_name}").parse()?);
    c.create(spec, true)?;
    hvd.wait_ready(&vm)?;

    let disk = dir.join(format!("{vm}.qcow2"));
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()?;
    if !st.success() {
        bail!("qemu-img create {} failed", disk.display());
    }
    let serial = dir.join(format!("{vm}.serial"));
    lv.define(
        dir,
        &vm,
        &domain_xml(
            &vm,
            mem,
            g,
            &serial,
            &dir.join(format!("{vm}.vnc")),
            Some(&disk),
        ),
    )?;
    let t0 = Instant::now();
    let listener = listen(&serial)?;
    virsh_timed(&["start".as_ref(), vm.as_ref()])?;
    wait_marker(&listener, t0 + READY_TIMEOUT)?;

    let mut out: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for i in 0..runs {
        let s = format!("s{i}");
        let hv_ops: [Vec<&str>; 3] = [
            vec!["snapshot", "create", &vm, &s],
            vec!["snapshot", "revert", &vm, &s],
            vec!["snapshot", "delete", &vm, &s],
        ];
        let lv_ops: [[&str; 3]; 3] = [
            ["snapshot-create-as", &vm, &s],
            ["snapshot-revert", &vm, &s],
            ["snapshot-delete", &vm, &s],
        ];
        for k in 0..3 {
            let hv_t = || bins.time_hv(&hvd.socket, &hv_ops[k]).map(ms);
            let lv_t = || virsh_timed(&lv_ops[k].map(std::ffi::OsStr::new)).map(ms);
            let (h, l) = if (i + k) % 2 == 0 {
                let h = hv_t()?;
                (h, lv_t()?)
            } else {
                let l = lv_t()?;
                (hv_t()?, l)
            };
            out[k].0.push(h);
            out[k].1.push(l);
        }
        eprintln!(
            "    run {i}: create {:.0}/{:.0}, revert {:.0}/{:.0}, delete {:.1}/{:.1} ms (hv/libvirt)",
            out[0].0[i], out[0].1[i], out[1].0[i], out[1].1[i], out[2].0[i], out[2].1[i]
        );
    }
    c.destroy(&vm)?;
    let _ = virsh(&["destroy", &vm]);
    Ok(out)
}

/// The libvirt daemons (started here when none runs) and the domains defined in this run.
pub(crate) struct Libvirt {
    daemons: Vec<(&'static str, Reaped)>,
    names: Vec<String>,
    /// Pools defined in this run and not yet undefined.
    pub(crate) pools: Vec<String>,
}

impl Libvirt {
    fn start() -> Result<Libvirt> {
        let mut lv = Libvirt {
            daemons: Vec::new(),
            names: Vec::new(),
            pools: Vec::new(),
        };
        if virsh(&["version"]).is_ok() {
            eprintln!("libvirt: using the running libvirtd");
            return Ok(lv);
        }
        for d in ["virtlogd", "libvirtd"] {
            let path = PathBuf::from("/usr/sbin").join(d);
            if !path.is_file() {
                bail!(
                    "{} not found: install libvirt with `cargo xtask bench-deps`",
                    path.display()
                );
            }
            let child = Command::new(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", path.display()))?;
            eprintln!("libvirt: started {d} (PID {})", child.id());
            lv.daemons.push((d, Reaped::new(child)));
            if d == "virtlogd" {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // The first start probes QEMU's capabilities (seconds under TCG).
        let t0 = Instant::now();
        while virsh(&["version"]).is_err() {
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("libvirtd did not answer within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Warm the capabilities cache before any clock starts.
        virsh(&["capabilities"])?;
        Ok(lv)
    }

    pub(crate) fn define(&mut self, dir: &Path, name: &str, xml: &str) -> Result<()> {
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml)?;
        self.names.push(name.to_owned());
        virsh_timed(&["define".as_ref(), path.as_os_str()])?;
        Ok(())
    }

    /// Destroys and undefines every domain and pool of this run, by name, then stops the
    /// daemons this started, by PID.
    pub(crate) fn cleanup(&mut self) {
        for pool in std::mem::take(&mut self.pools) {
            let _ = virsh(&["pool-destroy", &pool]);
            if let Err(e) = virsh(&["pool-undefine", &pool]) {
                eprintln!("libvirt: undefining pool {pool}: {e:#}");
            }
        }
        for name in std::mem::take(&mut self.names) {
            let _ = virsh(&["destroy", &name]);
            if let Err(e) = virsh(&["undefine", "--snapshots-metadata", &name]) {
                eprintln!("libvirt: undefining {name}: {e:#}");
            }
        }
        while let Some((d, mut p)) = self.daemons.pop() {
            if let Err(e) = p.stop(libc::SIGTERM) {
                eprintln!("libvirt: stopping {d}: {e:#}");
            }
        }
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub(crate) fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running virsh (install it with `cargo xtask bench-deps`)")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `virsh ARGS` to completion (output to /dev/null) and returns its wall time.
pub(crate) fn virsh_timed(args: &[&std::ffi::OsStr]) -> Result<Duration> {
    let mut cmd = Command::new("virsh");
    cmd.args(["-q", "-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = cmd.output().context("running virsh")?;
    let elapsed = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The libvirt twin of hv's tiny test VM: TCG, `pc`, direct kernel boot, serial port connected
/// to `serial` (a socket the bench listens on), VGA with VNC on a Unix socket, no balloon, and
/// optionally one qcow2 virtio disk.
pub(crate) fn domain_xml(
    name: &str,
    mem_mib: u64,
    g: &TinyGuest,
    serial: &Path,
    vnc: &Path,
    disk: Option<&Path>,
) -> String {
    let p = |p: &Path| esc(&p.to_string_lossy());
    let disk = disk.map_or(String::new(), |d| {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            p(d)
        )
    });
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{mem_mib}</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>\
         <kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline></os>\
         <features><acpi/></features><on_poweroff>destroy</on_poweroff>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disk}\
         <serial type='unix'><source mode='connect' path='{}'/><target port='0'/></serial>\
         <graphics type='vnc' socket='{}'/><video><model type='vga'/></video>\
         <memballoon model='none'/></devices></domain>",
        p(&g.kernel),
        p(&g.initrd),
        esc(guest::CMDLINE),
        p(serial),
        p(vnc),
        name = esc(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_rows_unit_and_no_ratio_to_zero() {
        let rows = [
            VsRow::new("a", Ok((vec![1.0], vec![4.0]))),
            VsRow::new("b", Ok((vec![15.6], vec![36.8]))).in_unit("KiB"),
            VsRow::new("c", Ok((vec![0.0], vec![0.0]))).in_unit("%"),
        ];
        let t = table(&rows);
        assert!(t.contains("| a | 1 | 1.0 ms | 4.0 ms | 0.25 |"), "{t}");
        assert!(t.contains("| b | 1 | 15.6 KiB | 36.8 KiB | 0.42 |"), "{t}");
        assert!(t.contains("| c | 1 | 0.0 % | 0.0 % | - |"), "{t}");
    }

    #[test]
    fn the_domain_has_the_guest_and_escapes_paths() {
        let g = TinyGuest {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd&1".into(),
            kernel_version: "6.1".into(),
        };
        let x = domain_xml(
            "hvb-a",
            256,
            &g,
            Path::new("/t/s"),
            Path::new("/t/v"),
            Some(Path::new("/t/d.qcow2")),
        );
        assert!(x.contains("<memory unit='MiB'>256</memory>"), "{x}");
        assert!(x.contains("<initrd>/k/initrd&amp;1</initrd>"), "{x}");
        assert!(
            x.contains("type='qcow2'/><source file='/t/d.qcow2'/>"),
            "{x}"
        );
        assert!(x.contains("<source mode='connect' path='/t/s'/>"), "{x}");
    }
}
