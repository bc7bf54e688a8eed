//! Storage, snapshot and network figures (issues 3, 4, 5): printed as their own table, each
//! with its target as the issue states it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::{CreateSnapshotRequest, CreateVolRequest};
use model::{NetMode, NetworkSpec, Size};
use testkit::{NetNs, TestHvd, VmOpts};

use crate::stats::{ms, Summary};

/// One line of the extra table.
pub struct ExtraRow {
    pub label: String,
    pub summary: Option<Summary>,
    pub unit: &'static str,
    pub reference: String,
    pub target: String,
    pub error: Option<String>,
}

pub(crate) fn row(
    label: &str,
    unit: &'static str,
    samples: Result<Vec<f64>>,
    reference: &str,
    target: &str,
) -> ExtraRow {
    let (summary, error) = match samples {
        Ok(s) => (Summary::of(&s), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    ExtraRow {
        label: label.into(),
        summary,
        unit,
        reference: reference.into(),
        target: target.into(),
        error,
    }
}

pub fn table(rows: &[ExtraRow]) -> String {
    let mut out = String::from(
        "| figure | n | median | min – max | libvirt here | target |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (n, med, range) = match (&r.summary, &r.error) {
            (Some(s), _) => (
                s.n.to_string(),
                format!("{:.2} {}", s.median, r.unit),
                format!("{:.2} – {:.2} {}", s.min, s.max, r.unit),
            ),
            (None, Some(e)) => ("0".into(), format!("failed: {e}"), "-".into()),
            _ => ("0".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {n} | {med} | {range} | {} | {} |\n",
            r.label, r.reference, r.target
        ));
    }
    out
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((ms(t.elapsed()), v))
}

fn vol(name: &str, size: u64) -> CreateVolRequest {
    CreateVolRequest {
        name: name.parse().expect("valid name"),
        size: Some(Size(size)),
        format: None,
        backing: None,
    }
}

/// Volume create / clone / delete latency, and upload / download throughput against `cp`.
pub fn storage(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    let h = match TestHvd::start(hvd) {
        Ok(h) => h,
        Err(e) => return vec![row("storage", "ms", Err(e), "", "")],
    };
    let c = h.client();
    let (mut create, mut clone, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    let lat = (|| -> Result<()> {
        for i in 0..runs {
            let (t, _) =
                timed(|| Ok(c.vol_create("default", &vol(&format!("v{i}.qcow2"), 1 << 30))?))?;
            create.push(t);
            let req = api::CloneVolRequest {
                name: format!("c{i}.qcow2").parse()?,
                linked: false,
            };
            let (t, _) = timed(|| Ok(c.vol_clone("default", &format!("v{i}.qcow2"), &req)?))?;
            clone.push(t);
            let (t, _) = timed(|| Ok(c.vol_delete("default", &format!("c{i}.qcow2"))?))?;
            delete.push(t);
            c.vol_delete("default", &format!("v{i}.qcow2"))?;
        }
        Ok(())
    })();
    let lat_err = lat.err().map(|e| format!("{e:#}"));
    let pick = |v: Vec<f64>| match &lat_err {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(v),
    };
    let mut rows = vec![
        row(
            "volume create (1 GiB qcow2, API call)",
            "ms",
            pick(create),
            "—",
            "fast (no figure given)",
        ),
        row(
            "volume full clone (empty 1 GiB qcow2)",
            "ms",
            pick(clone),
            "—",
            "fast (no figure given)",
        ),
        row(
            "volume delete",
            "ms",
            pick(delete),
            "—",
            "fast (no figure given)",
        ),
    ];
    let t = throughput(&h, runs.clamp(1, 5));
    rows.push(row(
        "upload throughput / `cp` of the same 256 MiB file",
        "×",
        t.up,
        "—",
        "≥ 0.8",
    ));
    rows.push(row(
        "upload throughput / `cp` + `fsync` (both durable)",
        "×",
        t.up_durable,
        "—",
        "— (context)",
    ));
    rows.push(row(
        "download throughput / `cp` of the same 256 MiB file",
        "×",
        t.down,
        "—",
        "≥ 0.8",
    ));
    rows
}

/// Throughput ratios, one per run: the baseline's time over hv's for the same file.
struct Throughput {
    up: Result<Vec<f64>>,
    up_durable: Result<Vec<f64>>,
    down: Result<Vec<f64>>,
}

/// Uploads and downloads a 256 MiB file the way `hv vol upload|download` do, each run next
/// to a `cp` of the same file on the same disk (and a `cp` + `fsync`, since an upload is
/// durable when it returns and a plain `cp` is not).
fn throughput(h: &TestHvd, runs: usize) -> Throughput {
    let c = h.client();
    let src = h.dir.join("payload.bin");
    let size: usize = 256 << 20;
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let failed = |e: anyhow::Error| Throughput {
        up: Err(anyhow::anyhow!("{e:#}")),
        up_durable: Err(anyhow::anyhow!("{e:#}")),
        down: Err(e),
    };
    if let Err(e) = std::fs::write(&src, &data) {
        return failed(e.into());
    }
    drop(data);
    let cp = |dst: &Path, sync: bool| -> Result<f64> {
        let (t, st) = timed(|| {
            let st = Command::new("cp").arg(&src).arg(dst).status()?;
            if sync {
                std::fs::File::open(dst)?.sync_all()?;
            }
            Ok(st)
        })?;
        if !st.success() {
            bail!("cp failed");
        }
        let _ = std::fs::remove_file(dst);
        Ok(t)
    };
    let (mut up, mut up_durable, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let res = (|| -> Result<()> {
        c.vol_create(
            "default",
            &CreateVolRequest {
                format: Some(model::DiskFormat::Raw),
                ..vol("payload.raw", 1 << 20)
            },
        )?;
        for _ in 0..runs {
            let base = cp(&h.dir.join("cp.bin"), false)?;
            let durable = cp(&h.dir.join("cp.bin"), true)?;
            let f = std::fs::File::open(&src)?;
            let (t, _) =
                timed(|| Ok(c.vol_upload_file("default", "payload.raw", &f, &mut |_, _| {})?))?;
            up.push(base / t);
            up_durable.push(durable / t);
            let dst = h.dir.join("down.bin");
            let (t, n) = timed(|| {
                let mut out = std::fs::File::create(&dst)?;
                Ok(c.vol_download_file("default", "payload.raw", &mut out, &mut |_, _| {})?)
            })?;
            if n != size as u64 {
                bail!("downloaded {n} of {size} bytes");
            }
            let _ = std::fs::remove_file(&dst);
            down.push(base / t);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&src);
    match res {
        Ok(()) => Throughput {
            up: Ok(up),
            up_durable: Ok(up_durable),
            down: Ok(down),
        },
        Err(e) => failed(e),
    }
}

/// Internal snapshot create / revert / delete on a running guest of `mem_mib`.
pub fn snapshots(hvd: &Path, runs: usize, mem_mib: u64) -> Vec<ExtraRow> {
    let (mut create, mut revert, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    let res = (|| -> Result<()> {
        let h = TestHvd::start(hvd)?;
        let c = h.client();
        c.vol_create("default", &vol("snap.qcow2", 64 << 20))?;
        let mut spec = h.tiny_spec("snap", VmOpts::default())?;
        spec.memory = Size(mem_mib << 20);
        spec.disks.push("vol=default/snap.qcow2".parse()?);
        c.create(spec, true)?;
        h.wait_ready("snap")?;
        for i in 0..runs {
            let req = CreateSnapshotRequest {
                name: format!("s{i}").parse()?,
                description: None,
                disk_only: false,
            };
            let (t, _) = timed(|| Ok(c.snapshot_create("snap", &req)?))?;
            create.push(t);
            let (t, _) = timed(|| Ok(c.snapshot_revert("snap", &format!("s{i}"))?))?;
            revert.push(t);
            let (t, _) = timed(|| Ok(c.snapshot_delete("snap", &format!("s{i}"))?))?;
            delete.push(t);
        }
        Ok(())
    })();
    let err = res.err().map(|e| format!("{e:#}"));
    let pick = |v: Vec<f64>| match &err {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(v),
    };
    let (lc, lr, ld) = if mem_mib >= 1024 {
        ("144 ms", "599 ms", "21 ms")
    } else {
        ("94 ms", "590 ms", "24 ms")
    };
    let g = if mem_mib >= 1024 { "1 GiB" } else { "256 MiB" };
    vec![
        row(
            &format!("snapshot create, {g} guest (live, with RAM)"),
            "ms",
            pick(create),
            lc,
            &format!("≤ {lc}"),
        ),
        row(
            &format!("snapshot revert, {g} guest (in place)"),
            "ms",
            pick(revert),
            lr,
            "≤ 200 ms",
        ),
        row(
            &format!("snapshot delete, {g} guest"),
            "ms",
            pick(delete),
            ld,
            &format!("≤ {ld}"),
        ),
    ]
}

const DHCP: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && echo HV-LEASE-$ip-\n' > /tmp/dh.sh; chmod +x /tmp/dh.sh; ip link set eth0 up; for t in 1 2 3; do udhcpc -i eth0 -n -q -t 6 -T 1 -s /tmp/dh.sh 2>/dev/null && break; done"#;

/// Network start / stop and VM start → lease, inside a namespace made for it.
pub fn network(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    let (mut start, mut stop, mut lease) = (Vec::new(), Vec::new(), Vec::new());
    let mut dhcp = Vec::new();
    let res = (|| -> Result<()> {
        let ns = NetNs::new("bench")?;
        let h = TestHvd::start_in_netns(hvd, &ns.name)?;
        let c = h.client();
        let spec = NetworkSpec {
            subnet: Some("10.99.0.0/24".into()),
            ..NetworkSpec::new("b".parse()?, NetMode::Nat)
        };
        c.net_create(&spec)?;
        for _ in 0..runs {
            let (t, _) = timed(|| Ok(c.net_start("b")?))?;
            start.push(t);
            let (t, _) = timed(|| Ok(c.net_stop("b")?))?;
            stop.push(t);
        }
        let mut vm = h.tiny_spec("l", VmOpts::default())?;
        vm.nics.push("network=b".parse()?);
        c.create(vm, false)?;
        c.net_start("b")?;
        for _ in 0..runs.min(3) {
            let t0 = Instant::now();
            c.start("l", false)?;
            h.wait_ready("l")?;
            let t1 = Instant::now();
            h.type_line("l", DHCP)?;
            h.wait_console("l", r"HV-LEASE-[0-9.]+-", Duration::from_secs(60))
                .context("no lease")?;
            lease.push(ms(t0.elapsed()));
            dhcp.push(ms(t1.elapsed()));
            c.destroy("l")?;
        }
        Ok(())
    })();
    let err = res.err().map(|e| format!("{e:#}"));
    let pick = |v: Vec<f64>| match &err {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(v),
    };
    vec![
        row(
            "net start (NAT: bridge, nft table, dnsmasq)",
            "ms",
            pick(start),
            "127 ms",
            "≤ 50 ms",
        ),
        row(
            "net stop (everything removed)",
            "ms",
            pick(stop),
            "376 ms",
            "≤ 50 ms",
        ),
        row(
            "VM start → guest holds a lease (TCG boot included)",
            "ms",
            pick(lease),
            "7500 ms",
            "≤ 3000 ms",
        ),
        row(
            "  of which: guest ready → lease (link up, DISCOVER … ACK)",
            "ms",
            pick(dhcp),
            "",
            "",
        ),
    ]
}
