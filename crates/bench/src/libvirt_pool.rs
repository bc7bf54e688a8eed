//! `hv-bench --vs libvirt --only storage`: directory pools and qcow2 volumes, `hv pool` / `hv vol`
//! against `virsh pool-*` / `vol-*`, run by run, the side that goes first alternating. Each
//! side gets its own empty directory; every pool this defines in libvirt (`hvb-pool-…`) is
//! destroyed and undefined by name at the end (`Libvirt::cleanup`), and the directories are
//! removed with the bench's temp dir.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Result;
use testkit::TestHvd;

use crate::libvirt::{virsh_timed, Figures, Libvirt, VsRow};
use crate::procs::{Bins, TempDir};
use crate::stats::ms;

/// Volumes in the pool while `vol list` is timed.
const LISTED: usize = 20;

/// Pool create, volume create / list / delete, pool delete; `runs` pairs each.
pub fn measure(bins: &Bins, lv: &mut Libvirt, runs: usize) -> Vec<VsRow> {
    let r = (|| -> Result<Figures> {
        let hvd = TestHvd::start(&bins.hvd)?;
        let dir = TempDir::new()?;
        let mut f: [(Vec<f64>, Vec<f64>); 5] = Default::default();
        for i in 0..runs {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let name = format!("hvb-pool-{i}");
                let path = dir.path().join(format!("{}-{i}", ["hv", "lv"][side]));
                let t = if side == 0 {
                    hv_round(bins, &hvd, &name, &path)?
                } else {
                    lv_round(lv, &name, &path)?
                };
                eprintln!(
                    "  pools run {i}, {}: pool create {:.1}, vol create {:.1} (first), list {:.1}, vol delete {:.1} (first), pool delete {:.1} ms",
                    ["hv", "libvirt"][side], t[0][0], t[1][0], t[2][0], t[3][0], t[4][0]
                );
                for (k, v) in t.into_iter().enumerate() {
                    if side == 0 {
                        f[k].0.extend(v);
                    } else {
                        f[k].1.extend(v);
                    }
                }
            }
        }
        let [a, b, c, d, e] = f;
        Ok(vec![
            (
                "pool create, directory (`hv pool create` / `virsh pool-define-as` + `pool-start`)",
                a.0,
                a.1,
            ),
            (
                "volume create, 1 GiB qcow2, each of 20 (`hv vol create` / `virsh vol-create-as`)",
                b.0,
                b.1,
            ),
            (
                "volume list, 20 volumes (`hv vol list` / `virsh vol-list`)",
                c.0,
                c.1,
            ),
            (
                "volume delete, each of 20 (`hv vol delete` / `virsh vol-delete`)",
                d.0,
                d.1,
            ),
            (
                "pool delete, empty (`hv pool delete` / `virsh pool-destroy` + `pool-undefine`)",
                e.0,
                e.1,
            ),
        ])
    })();
    match r {
        Ok(rows) => rows
            .into_iter()
            .map(|(label, hv, lv)| VsRow::new(label, Ok((hv, lv))))
            .collect(),
        Err(e) => vec![VsRow::new("pools and volumes", Err(e))],
    }
}

/// [pool create, vol create (each of 20), vol list, vol delete (each of 20), pool delete] in
/// ms through `hv`.
fn hv_round(bins: &Bins, hvd: &TestHvd, pool: &str, path: &Path) -> Result<[Vec<f64>; 5]> {
    let hv = |args: &[&OsStr]| bins.time_hv(&hvd.socket, args).map(ms);
    let create = hv(&[
        "pool".as_ref(),
        "create".as_ref(),
        pool.as_ref(),
        "--path".as_ref(),
        path.as_os_str(),
    ])?;
    let vol = |i: usize| format!("v{i}.qcow2");
    let mut vol_create = Vec::new();
    for i in 0..LISTED {
        let t = hv(&[
            "vol".as_ref(),
            "create".as_ref(),
            pool.as_ref(),
            vol(i).as_ref(),
            "--size".as_ref(),
            "1G".as_ref(),
        ])?;
        vol_create.push(t);
    }
    let list = hv(&["vol".as_ref(), "list".as_ref(), pool.as_ref()])?;
    let mut vol_delete = Vec::new();
    for i in 0..LISTED {
        let t = hv(&[
            "vol".as_ref(),
            "delete".as_ref(),
            format!("{pool}/{}", vol(i)).as_ref(),
        ])?;
        vol_delete.push(t);
    }
    let delete = hv(&["pool".as_ref(), "delete".as_ref(), pool.as_ref()])?;
    Ok([
        vec![create],
        vol_create,
        vec![list],
        vol_delete,
        vec![delete],
    ])
}

/// The same through `virsh` (a persistent pool: define, then start).
fn lv_round(lv: &mut Libvirt, pool: &str, path: &Path) -> Result<[Vec<f64>; 5]> {
    let v = |args: &[&OsStr]| virsh_timed(args).map(ms);
    lv.pools.push(pool.to_owned());
    let define = v(&[
        "pool-define-as".as_ref(),
        pool.as_ref(),
        "dir".as_ref(),
        "--target".as_ref(),
        path.as_os_str(),
    ])?;
    // `hv pool create` makes a missing directory; libvirt's `pool-build` would, here it is made
    // untimed so that `pool-start` finds it.
    std::fs::create_dir_all(path)?;
    let start = v(&["pool-start".as_ref(), pool.as_ref()])?;
    let vol = |i: usize| format!("v{i}.qcow2");
    let mut vol_create = Vec::new();
    for i in 0..LISTED {
        let t = v(&[
            "vol-create-as".as_ref(),
            pool.as_ref(),
            vol(i).as_ref(),
            "1G".as_ref(),
            "--format".as_ref(),
            "qcow2".as_ref(),
        ])?;
        vol_create.push(t);
    }
    let list = v(&["vol-list".as_ref(), pool.as_ref()])?;
    let mut vol_delete = Vec::new();
    for i in 0..LISTED {
        let t = v(&[
            "vol-delete".as_ref(),
            vol(i).as_ref(),
            "--pool".as_ref(),
            pool.as_ref(),
        ])?;
        vol_delete.push(t);
    }
    let destroy = v(&["pool-destroy".as_ref(), pool.as_ref()])?;
    let undefine = v(&["pool-undefine".as_ref(), pool.as_ref()])?;
    lv.pools.retain(|p| p != pool);
    Ok([
        vec![define + start],
        vol_create,
        vec![list],
        vol_delete,
        vec![destroy + undefine],
    ])
}
