//! Whole-process timings of the `hv` CLI: define one VM, start one, and `list`/`info` with
//! 1,000 VMs defined (plus hvd's RSS at that size).

use std::ffi::OsString;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use model::VmSpec;
use testkit::{TestHvd, VmOpts};

use crate::procs::{destroy_settled, rss_mib, Bins};
use crate::stats::ms;

/// `hv create NAME --memory 128M --kernel K --initrd I`, `runs` times after one warm-up.
pub fn define(bins: &Bins, hvd: &TestHvd, runs: usize) -> Result<Vec<f64>> {
    let guest = testkit::guest::tiny_guest()?;
    let create = |name: &str| {
        let args: [OsString; 8] = [
            "create".into(),
            name.into(),
            "--memory".into(),
            "128M".into(),
            "--kernel".into(),
            guest.kernel.clone().into(),
            "--initrd".into(),
            guest.initrd.clone().into(),
        ];
        bins.time_hv(&hvd.socket, args)
    };
    create("define-warm-up")?;
    (0..runs)
        .map(|i| create(&format!("define-{i}")).map(ms))
        .collect()
}

/// `hv start NAME` on a defined tiny guest, `runs` times after one warm-up; the VM is
/// destroyed after each start.
pub fn start_command(bins: &Bins, hvd: &TestHvd, runs: usize) -> Result<Vec<f64>> {
    let vm = "start-cmd";
    hvd.client()
        .create(hvd.tiny_spec(vm, VmOpts::default())?, false)?;
    let once = || -> Result<f64> {
        let elapsed = bins.time_hv(&hvd.socket, ["start", vm])?;
        destroy_settled(hvd, vm)?;
        Ok(ms(elapsed))
    };
    once().context("warm-up start")?;
    (0..runs).map(|_| once()).collect()
}

/// Figures with many VMs defined.
#[derive(Debug)]
pub struct AtScale {
    pub list: Vec<f64>,
    pub info: Vec<f64>,
    pub rss_mib: f64,
}

/// Defines `count` VMs (`bench-0000`, ...) through the API, reads hvd's RSS, then times
/// `hv list --all` and `hv info NAME`, `runs` times each after one checked warm-up.
pub fn at_scale(bins: &Bins, hvd: &TestHvd, count: usize, runs: usize) -> Result<AtScale> {
    let template = hvd.tiny_spec("bench-template", VmOpts::default())?;
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i:04}")).collect();
    define_many(hvd, &template, &names)?;
    let pid = hvd.hvd_pid().context("hvd is not running")?;
    let rss_mib = rss_mib(pid)?;

    let listed = bins.hv_output(&hvd.socket, &["list", "--all"])?;
    ensure!(
        listed.lines().count() == count + 1,
        "`hv list --all` printed {} lines for {count} VMs",
        listed.lines().count()
    );
    let list = (0..runs)
        .map(|_| bins.time_hv(&hvd.socket, ["list", "--all"]).map(ms))
        .collect::<Result<_>>()?;

    let probe = &names[count / 2];
    let shown = bins.hv_output(&hvd.socket, &["info", probe])?;
    ensure!(shown.contains(probe.as_str()), "`hv info {probe}`: {shown}");
    // A different VM each run, spread over the whole set.
    let info = (0..runs)
        .map(|i| &names[(i * 97 + 13) % count])
        .map(|name| bins.time_hv(&hvd.socket, ["info", name]).map(ms))
        .collect::<Result<_>>()?;
    Ok(AtScale {
        list,
        info,
        rss_mib,
    })
}

/// Defines one VM per name from `template`, and reports the API's define rate on stderr.
pub(crate) fn define_many(hvd: &TestHvd, template: &VmSpec, names: &[String]) -> Result<()> {
    let t0 = Instant::now();
    for name in names {
        let mut spec = template.clone();
        spec.name = name.parse()?;
        hvd.client()
            .create(spec, false)
            .with_context(|| format!("defining {name}"))?;
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "  defined {} VMs through the API in {:.2} s ({:.2} ms each)",
        names.len(),
        elapsed.as_secs_f64(),
        ms(elapsed) / names.len().max(1) as f64
    );
    Ok(())
}
