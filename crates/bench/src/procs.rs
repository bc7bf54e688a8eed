//! The binaries under test, timed CLI runs, and guards that stop what the benchmark starts (by
//! PID) and remove its temp dirs, also when a measurement fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The `hvd` and `hv` binaries being measured.
#[derive(Debug, Clone)]
pub struct Bins {
    pub hvd: PathBuf,
    pub hv: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, or next to this executable.
    pub fn find(dir: Option<&Path>) -> Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot find hv-bench's own path")?
                .parent()
                .context("hv-bench's path has no parent")?
                .to_path_buf(),
        };
        let bins = Bins {
            hvd: dir.join("hvd"),
            hv: dir.join("hv"),
        };
        for bin in [&bins.hvd, &bins.hv] {
            ensure!(
                bin.is_file(),
                "{} not found; build it with `cargo build --release -p daemon -p cli -p bench` \
                 or pass --bin-dir",
                bin.display()
            );
        }
        Ok(bins)
    }

    /// Runs `hv --socket SOCKET ARGS...` to completion and returns its wall time. Its output
    /// goes to /dev/null; a failure is an error carrying its stderr.
    pub fn time_hv<I, S>(&self, socket: &Path, args: I) -> Result<Duration>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.hv);
        cmd.arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
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

    /// Runs `hv --socket SOCKET ARGS...` and returns its standard output.
    pub fn hv_output(&self, socket: &Path, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.hv);
        cmd.arg("--socket").arg(socket).args(args);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A directory under /tmp (short, for Unix socket paths), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/hvb-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process that is SIGKILLed and reaped on drop unless it was already reaped.
#[derive(Debug)]
pub struct Reaped {
    child: Option<Child>,
}

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped { child: Some(child) }
    }

    pub fn child(&mut self) -> Result<&mut Child> {
        self.child
            .as_mut()
            .context("the process was already reaped")
    }

    /// Sends `signal` to the child and waits for it to exit.
    pub fn stop(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("PID out of range")?;
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet, so
            // the PID cannot have been reused.
            unsafe { libc::kill(pid, signal) };
            child.wait().context("waiting for a stopped process")?;
        }
        Ok(())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.stop(libc::SIGKILL);
    }
}

/// hvd's resident set size in MiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .with_context(|| format!("{path} has no VmRSS line"))?
        .trim()
        .parse()
        .with_context(|| format!("bad VmRSS in {path}"))?;
    Ok(kib / 1024.0)
}
