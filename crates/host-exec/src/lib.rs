//! The only place in hv that starts processes: one-shot tools (`qemu-img`, `qemu-system-* --version`)
//! and long-running QEMU, plus watching and signalling processes by pidfd.
//!
//! Every command is an argv (never a shell string), runs with a cleared environment and
//! `LC_ALL=C`, inherits no file descriptors except the ones asked for, and is logged. QEMU
//! (detached, or as a probe) runs under the [`Credentials`] it is given: an unprivileged uid
//! and gid, no supplementary groups, no capabilities, no new privileges.

pub mod systemd;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} did not finish within {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("cannot watch process {pid}: {source}")]
    Watch { pid: u32, source: io::Error },
    #[error("refusing to run {program} as uid {uid} gid {gid}: a process that drops privileges needs a non-zero uid and gid")]
    Root { program: String, uid: u32, gid: u32 },
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn base_command(program: &OsStr) -> Command {
    let mut c = Command::new(program);
    c.env_clear().env("LC_ALL", "C").env("PATH", PATH);
    c
}

/// Output of a finished one-shot tool.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool to completion; a non-zero exit is an error carrying its stderr.
pub async fn run(program: &str, args: &[&OsStr], timeout: Duration) -> Result<Output, ExecError> {
    run_with_input(program, args, b"", timeout).await
}

/// [`run`], with `input` written to the tool's stdin (then closed).
pub async fn run_with_input(
    program: &str,
    args: &[&OsStr],
    input: &[u8],
    timeout: Duration,
) -> Result<Output, ExecError> {
    run_as(program, args, input, timeout, None).await
}

/// [`run_with_input`], as `creds` when given (dropping privileges as
/// [`spawn_detached`] does): for probes that must see what an unprivileged QEMU may do.
pub async fn run_as(
    program: &str,
    args: &[&OsStr],
    input: &[u8],
    timeout: Duration,
    creds: Option<Credentials>,
) -> Result<Output, ExecError> {
    tracing::debug!(program, ?args, ?creds, "run");
    let mut c = base_command(OsStr::new(program));
    if let Some(creds) = creds {
        check_unprivileged(program, creds)?;
        // SAFETY: the closure runs in the forked child before exec and only makes system
        // calls with plain integers and a null list (see `drop_privileges`).
        unsafe {
            c.pre_exec(move || drop_privileges(creds));
        }
    }
    let stdin = if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    c.args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| ExecError::Spawn {
        program: program.to_string(),
        source,
    };
    let fut = async {
        let mut child = c.spawn()?;
        if let Some(mut w) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            // A tool that exits without reading all of it is judged by its exit status.
            let _ = w.write_all(input).await;
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ExecError::Timeout {
            program: program.to_string(),
            secs: timeout.as_secs(),
        })?
        .map_err(spawn_error)?;
    finished(program, out.status, &out.stdout, &out.stderr)
}

/// [`run`], handing each piece of the tool's stdout to `report` as it arrives (a tool's
/// progress output, such as `qemu-img convert -p`); the returned stdout is all of it.
pub async fn run_reporting(
    program: &str,
    args: &[&OsStr],
    timeout: Duration,
    report: &mut (dyn FnMut(&str) + Send),
) -> Result<Output, ExecError> {
    use tokio::io::AsyncReadExt;
    tracing::debug!(program, ?args, "run");
    let mut c = base_command(OsStr::new(program));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| ExecError::Spawn {
        program: program.to_string(),
        source,
    };
    let fut = async {
        let mut child = c.spawn()?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let collect_err = async {
            let mut buf = Vec::new();
            if let Some(e) = stderr.as_mut() {
                e.read_to_end(&mut buf).await?;
            }
            Ok::<Vec<u8>, io::Error>(buf)
        };
        let collect_out = async {
            let mut all = Vec::new();
            let mut chunk = vec![0u8; 4096];
            if let Some(o) = stdout.as_mut() {
                loop {
                    let n = o.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    report(&String::from_utf8_lossy(&chunk[..n]));
                    all.extend_from_slice(&chunk[..n]);
                }
            }
            Ok::<Vec<u8>, io::Error>(all)
        };
        let (out, err) = tokio::try_join!(collect_out, collect_err)?;
        let status = child.wait().await?;
        Ok::<_, io::Error>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ExecError::Timeout {
            program: program.to_string(),
            secs: timeout.as_secs(),
        })?
        .map_err(spawn_error)?;
    finished(program, status, &out, &err)
}

/// A finished tool's output; a non-zero exit is an error carrying its stderr.
fn finished(
    program: &str,
    status: std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Output, ExecError> {
    let stdout = String::from_utf8_lossy(stdout).into_owned();
    let stderr = String::from_utf8_lossy(stderr).into_owned();
    if !status.success() {
        return Err(ExecError::Failed {
            program: program.to_string(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(Output { stdout, stderr })
}

/// Finds an executable on the standard PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    PATH.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A long-running child such as QEMU, started in its own session so that signals to hvd
/// (and hvd's death) never reach it.
pub struct Daemonized {
    pub child: Child,
    pub pid: u32,
}

/// The unprivileged identity a detached process runs as (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// One supplementary group, or none: the group that owns `/dev/kvm` (Debian's `kvm`),
    /// for a QEMU that uses KVM. An ACL entry alone does not last on a host with udev and
    /// logind: they rewrite `/dev/kvm`'s ACL (its `uaccess` tag) at boot and at seat changes.
    pub group: Option<u32>,
}

/// The highest capability number any kernel knows today is 40; dropping up to 63 also covers
/// later ones (unknown numbers answer EINVAL, which is skipped).
const CAP_SCAN_LAST: libc::c_ulong = 63;

fn check_unprivileged(program: &str, creds: Credentials) -> Result<(), ExecError> {
    if creds.uid == 0 || creds.gid == 0 || creds.group == Some(0) {
        return Err(ExecError::Root {
            program: program.to_string(),
            uid: creds.uid,
            gid: creds.gid,
        });
    }
    Ok(())
}

/// In a forked child before exec: the capability bounding set first (dropping needs
/// CAP_SETPCAP, which setuid takes away), then groups, gid and uid (which clears the permitted
/// and effective sets), then no-new-privs so nothing is ever regained. Only system calls with
/// plain integers and a null list; nothing is allocated.
fn drop_privileges(creds: Credentials) -> io::Result<()> {
    let Credentials { uid, gid, group } = creds;
    for cap in 0..=CAP_SCAN_LAST {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes no pointers.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    let groups: [libc::gid_t; 1] = [group.unwrap_or(0)];
    let count = usize::from(group.is_some());
    // SAFETY: setgroups reads `count` (0 or 1) gids from a live local array; the others take
    // integers.
    let failed = unsafe {
        libc::setgroups(count, groups.as_ptr()) < 0
            || libc::setresgid(gid, gid, gid) < 0
            || libc::setresuid(uid, uid, uid) < 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `program argv` in a new session with stdin on /dev/null, stdout and stderr appended
/// to `log`, and each `(fd, target)` in `fds` inherited as fd number `target`.
///
/// The process runs as `creds`: no supplementary groups, an empty capability bounding set
/// (so no capability is ever regained, not even by exec of a setuid binary), and
/// `PR_SET_NO_NEW_PRIVS`. Files it must reach by name are the caller's business.
pub fn spawn_detached(
    program: &Path,
    argv: &[OsString],
    fds: Vec<(OwnedFd, RawFd)>,
    log: File,
    creds: Credentials,
) -> Result<Daemonized, ExecError> {
    tracing::info!(program = %program.display(), argv = ?argv, uid = creds.uid, gid = creds.gid, "spawn");
    check_unprivileged(&program.display().to_string(), creds)?;
    let err_log = log.try_clone().map_err(|source| ExecError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    let mut c = base_command(program.as_os_str());
    c.args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log));
    let raw: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setsid, fcntl, dup2, close on fds it was handed; prctl, setgroups, setresgid, setresuid
    // with plain integers and a null list); it allocates nothing.
    unsafe {
        c.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // First move every source above the target range so no dup2 clobbers another
            // source, then put each in place; dup2 clears FD_CLOEXEC on the copy.
            let mut moved = [0 as RawFd; 16];
            for (i, (src, _)) in raw.iter().enumerate().take(16) {
                let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = fd;
            }
            for (i, (_, target)) in raw.iter().enumerate().take(16) {
                if libc::dup2(moved[i], *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(moved[i]);
            }
            drop_privileges(creds)
        });
    }
    let child = c.spawn().map_err(|source| ExecError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    drop(fds);
    let pid = child.id().unwrap_or(0);
    Ok(Daemonized { child, pid })
}

/// How a process ended, as far as we can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Not our child (hvd restarted since it started): only the fact that it ended is known.
    Unknown,
}

impl From<std::process::ExitStatus> for Exit {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Unknown,
        }
    }
}

/// A handle on a process that is not (or no longer) our child, by pidfd: no PID reuse races,
/// and its end is an event, not something to poll for.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pub pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`; fails when the process does not exist.
    pub fn open(pid: u32) -> Result<PidFd, ExecError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(ExecError::Watch {
                pid,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: `owned` is an open fd that the AsyncFd owns for its whole life, and
        // `OwnedFd::as_raw_fd` always returns that same fd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| ExecError::Watch {
            pid,
            source: e.into(),
        })?;
        Ok(PidFd { fd, pid })
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        loop {
            match self.fd.readable().await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(pid = self.pid, error = %e, "pidfd wait failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Sends a signal through the pidfd (never to a recycled PID).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a null siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The command line of a process, NUL-separated arguments split out.
pub fn process_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Makes this process a child subreaper, so QEMU processes orphaned by an earlier hvd that
/// this one did not start still get reaped promptly when they are our descendants.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_reports_failures_with_stderr() {
        let out = run(
            "sh",
            &[OsStr::new("-c"), OsStr::new("echo $LC_ALL; echo err >&2")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.trim(), "C");
        let e = run(
            "sh",
            &[OsStr::new("-c"), OsStr::new("echo boom >&2; exit 3")],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("boom") && e.to_string().contains("exit status: 3"),
            "{e}"
        );
        let e = run("/nonexistent/tool", &[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }), "{e}");
    }

    #[tokio::test]
    async fn run_as_runs_a_probe_unprivileged() {
        let creds = Credentials {
            uid: 4_242_004,
            gid: 4_242_005,
            group: None,
        };
        let out = run_as(
            "sh",
            &[
                OsStr::new("-c"),
                OsStr::new("echo $(id -u):$(id -g):$(id -G)"),
            ],
            b"",
            Duration::from_secs(5),
            Some(creds),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.trim(), "4242004:4242005:4242005");
    }

    #[tokio::test]
    async fn the_one_supplementary_group_is_the_only_one() {
        let creds = Credentials {
            uid: 4_242_006,
            gid: 4_242_006,
            group: Some(4_242_007),
        };
        let out = run_as(
            "sh",
            &[OsStr::new("-c"), OsStr::new("id -G")],
            b"",
            Duration::from_secs(5),
            Some(creds),
        )
        .await
        .unwrap();
        let mut got: Vec<&str> = out.stdout.split_whitespace().collect();
        got.sort();
        assert_eq!(got, ["4242006", "4242007"]);
        let root_group = Credentials {
            group: Some(0),
            ..creds
        };
        assert!(
            run_as("true", &[], b"", Duration::from_secs(5), Some(root_group))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn run_with_input_feeds_stdin() {
        let out = run_with_input("cat", &[], b"to qemu\n", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.stdout, "to qemu\n");
    }

    #[tokio::test]
    async fn detached_child_gets_fds_and_a_pidfd_sees_its_end() {
        let dir = std::env::temp_dir().join(format!("hv-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.join("log")).unwrap();
        let passed: OwnedFd = File::open("/dev/null").unwrap().into();
        let argv = vec![OsString::from("-c"), OsString::from("ls -l /proc/self/fd/7 >&2; [ -e /proc/self/fd/7 ] && [ $$ = $(cut -d' ' -f6 /proc/self/stat) ] || true; exit 4")];
        let mut d = spawn_detached(
            Path::new("/bin/sh"),
            &argv,
            vec![(passed, 7)],
            log,
            Credentials {
                uid: 4_242_001,
                gid: 4_242_001,
                group: None,
            },
        )
        .unwrap();
        let watch = PidFd::open(d.pid).unwrap();
        let status = d.child.wait().await.unwrap();
        watch.exited().await;
        assert_eq!(Exit::from(status), Exit::Code(4));
        let text = std::fs::read_to_string(dir.join("log")).unwrap();
        assert!(text.contains("/dev/null"), "fd 7 was not inherited: {text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn detached_child_runs_unprivileged_with_no_capabilities_and_no_new_privs() {
        let dir = std::env::temp_dir().join(format!("hv-exec-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.join("log")).unwrap();
        let argv = vec![
            OsString::from("-c"),
            OsString::from("cat /proc/self/status"),
        ];
        let creds = Credentials {
            uid: 4_242_002,
            gid: 4_242_003,
            group: None,
        };
        let mut d = spawn_detached(Path::new("/bin/sh"), &argv, vec![], log, creds).unwrap();
        assert_eq!(Exit::from(d.child.wait().await.unwrap()), Exit::Code(0));
        let status = std::fs::read_to_string(dir.join("log")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for want in [
            "Uid:\t4242002\t4242002\t4242002\t4242002\n",
            "Gid:\t4242003\t4242003\t4242003\t4242003\n",
            "Groups:\t \n",
            "CapInh:\t0000000000000000\n",
            "CapPrm:\t0000000000000000\n",
            "CapEff:\t0000000000000000\n",
            "CapBnd:\t0000000000000000\n",
            "CapAmb:\t0000000000000000\n",
            "NoNewPrivs:\t1\n",
        ] {
            assert!(status.contains(want), "{want:?} missing in {status}");
        }
    }

    #[test]
    fn detached_spawn_refuses_root() {
        let log = File::open("/dev/null").unwrap();
        for (uid, gid) in [(0, 5), (5, 0)] {
            let e = spawn_detached(
                Path::new("/bin/true"),
                &[],
                vec![],
                log.try_clone().unwrap(),
                Credentials {
                    uid,
                    gid,
                    group: None,
                },
            )
            .err()
            .unwrap();
            assert!(matches!(e, ExecError::Root { .. }), "{e}");
        }
    }
}
