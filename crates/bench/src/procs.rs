//! The binaries under test, timed CLI runs, guards that stop what the benchmark starts (by PID)
//! and remove its temp dirs also when a measurement fails, and waits for a VM's QEMU to be gone
//! before the next measurement.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use model::VmState;
use testkit::TestHvd;

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

/// How long a VM or process may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A watch on `vm`'s running QEMU, opened while it runs so its PID cannot have been reused.
pub fn watch_qemu(hvd: &TestHvd, vm: &str) -> Result<ExitWatch> {
    let pid = hvd
        .client()
        .info(vm)?
        .pid
        .with_context(|| format!("{vm} has no QEMU PID"))?;
    ExitWatch::open(pid)
}

/// Destroys `vm` and waits until hvd calls it shut off and its QEMU has exited.
pub fn destroy_settled(hvd: &TestHvd, vm: &str) -> Result<()> {
    let qemu = watch_qemu(hvd, vm)?;
    hvd.client().destroy(vm)?;
    hvd.wait_state(vm, VmState::Shutoff, STOP_TIMEOUT)?;
    qemu.wait(STOP_TIMEOUT)
}

/// Waits for a process that need not be our child to exit, through a pidfd (which polls
/// readable on exit), so the next measurement does not share the machine with its teardown.
#[derive(Debug)]
pub struct ExitWatch {
    pid: u32,
    /// `None` when the process was already gone.
    fd: Option<OwnedFd>,
}

impl ExitWatch {
    pub fn open(pid: u32) -> Result<ExitWatch> {
        let raw_pid = libc::pid_t::try_from(pid).context("PID out of range")?;
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(ExitWatch { pid, fd: None });
            }
            return Err(err).with_context(|| format!("pidfd_open({pid})"));
        }
        let fd = libc::c_int::try_from(fd).context("pidfd out of range")?;
        // SAFETY: pidfd_open just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ExitWatch { pid, fd: Some(fd) })
    }

    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let Some(fd) = &self.fd else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("process {} still runs after {timeout:?}", self.pid);
            }
            if poll_readable(fd.as_fd(), left)? {
                return Ok(());
            }
        }
    }
}

/// Waits up to `timeout` for `fd` to poll readable; false on timeout or a signal.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on one pollfd that lives on our stack for the call; the fd is borrowed,
    // so it stays open for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, millis) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err).context("poll");
    }
    Ok(n > 0)
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
