//! A hermetic hvd for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::{WaitRequest, WaitResponse};
use client::Client;
use model::{DiskSpec, KernelBoot, Size, VmSpec, VmState};

use crate::guest;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Options for [`TestHvd::tiny_spec`].
#[derive(Debug, Clone, Default)]
pub struct VmOpts {
    /// Boot without the ACPI power-button handler.
    pub no_acpi: bool,
    pub disks: Vec<DiskSpec>,
    pub ephemeral: bool,
    pub autostart: bool,
}

/// An hvd with its own state dir and socket under a short temp dir. Dropping it destroys
/// its VMs, stops hvd and kills any QEMU still running from its state dir, by PID.
pub struct TestHvd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    hvd_bin: PathBuf,
    /// Run hvd (and so its QEMUs, taps and dnsmasqs) inside this network namespace.
    netns: Option<String>,
    /// Extra environment for hvd (say `HV_QEMU`).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// This hvd's `--qemu-uid-base`: its own range of 256 ids, so QEMUs of hvds that run at
    /// the same time (whose VM ids all start at 1) never share a uid.
    pub qemu_uid_base: u32,
    client: Client,
    /// More hvd arguments, kept across restarts.
    extra_args: Vec<String>,
}

impl TestHvd {
    /// Starts hvd (`hvd_bin`, usually `env!("CARGO_BIN_EXE_hvd")`) in a fresh directory and
    /// waits until its API answers.
    pub fn start(hvd_bin: &Path) -> Result<TestHvd> {
        Self::start_with(hvd_bin, None, &[])
    }

    /// Like [`start`](Self::start), with more hvd arguments (kept across restarts).
    pub fn start_with_args(hvd_bin: &Path, args: &[&str]) -> Result<TestHvd> {
        Self::start_with(hvd_bin, None, args)
    }

    /// Like [`start`](Self::start), with hvd inside the network namespace `netns` (which the
    /// test made; see [`NetNs`](crate::NetNs)).
    pub fn start_in_netns(hvd_bin: &Path, netns: &str) -> Result<TestHvd> {
        Self::start_with(hvd_bin, Some(netns), &[])
    }

    /// Like [`start_in_netns`](Self::start_in_netns), with more hvd arguments.
    pub fn start_in_netns_with_args(hvd_bin: &Path, netns: &str, args: &[&str]) -> Result<TestHvd> {
        Self::start_with(hvd_bin, Some(netns), args)
    }

    /// Like [`start`](Self::start), with extra environment variables for hvd.
    pub fn start_with_env(hvd_bin: &Path, env: &[(&str, &str)]) -> Result<TestHvd> {
        Self::start_full(hvd_bin, None, env, &[])
    }

    fn start_with(hvd_bin: &Path, netns: Option<&str>, args: &[&str]) -> Result<TestHvd> {
        Self::start_full(hvd_bin, netns, &[], args)
    }

    fn start_full(
        hvd_bin: &Path,
        netns: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<TestHvd> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short, so runtime socket paths stay far below the 107-byte limit.
        let dir = PathBuf::from(format!("/tmp/hvt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut t = TestHvd {
            socket: dir.join("hvd.sock"),
            state_dir: dir.join("state"),
            dir,
            hvd_bin: hvd_bin.to_path_buf(),
            netns: netns.map(str::to_string),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            qemu_uid_base: 0x7000_0000 + ((std::process::id() % 16_000) * 64 + n % 64) * 256,
            child: None,
            client: Client::new(""),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        t.client = Client::new(&t.socket);
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hvd.log"))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.hvd_bin);
                c
            }
            None => Command::new(&self.hvd_bin),
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.extra_args)
            .arg("--qemu-uid-base")
            .arg(self.qemu_uid_base.to_string())
            // `HV_TEST_HVD_LOG` (say `info,engine::migrate=debug`) raises it for a profile.
            .env(
                "HV_LOG",
                std::env::var("HV_TEST_HVD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.hvd_bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.client.ping().is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("hvd exited at start ({status}): {}", self.hvd_log());
                }
            }
            if Instant::now() > deadline {
                bail!("hvd did not answer within 20 s: {}", self.hvd_log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn hvd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs hvd (its VMs must keep running).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERMs hvd and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            c.wait()?;
        }
        Ok(())
    }

    /// Starts hvd again on the same state dir and socket.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Starts hvd again after [`kill9`](Self::kill9).
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    pub fn hvd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hvd.log")).unwrap_or_default()
    }

    /// A spec for the tiny guest (direct kernel boot, 128 MiB).
    pub fn tiny_spec(&self, name: &str, opts: VmOpts) -> Result<VmSpec> {
        let g = guest::tiny_guest()?;
        let mut spec = VmSpec::new(name.parse()?);
        spec.memory = Size(128 << 20);
        let cmdline = if opts.no_acpi {
            guest::CMDLINE_NO_ACPI
        } else {
            guest::CMDLINE
        };
        spec.kernel = Some(KernelBoot {
            path: g.kernel,
            initrd: Some(g.initrd),
            cmdline: Some(cmdline.into()),
        });
        spec.disks = opts.disks;
        spec.ephemeral = opts.ephemeral;
        spec.autostart = opts.autostart;
        Ok(spec)
    }

    /// Waits for console output matching `re` (since the VM last started).
    pub fn wait_console(&self, vm: &str, re: &str, timeout: Duration) -> Result<String> {
        let r = self.client.wait(
            vm,
            &WaitRequest {
                state: None,
                console: Some(re.into()),
                timeout_secs: timeout.as_secs_f64(),
            },
        )?;
        if !r.reached {
            bail!(
                "{vm}: no console output matching {re:?} within {timeout:?}; console:\n{}",
                self.console_text(vm)
            );
        }
        Ok(r.matched.unwrap_or_default())
    }

    pub fn wait_state(&self, vm: &str, state: VmState, timeout: Duration) -> Result<WaitResponse> {
        let r = self.client.wait(
            vm,
            &WaitRequest {
                state: Some(state),
                console: None,
                timeout_secs: timeout.as_secs_f64(),
            },
        )?;
        if !r.reached {
            bail!(
                "{vm}: state {state} not reached within {timeout:?} (it is {})",
                r.state
            );
        }
        Ok(r)
    }

    /// Waits for the guest to be ready (marker and shell prompt).
    pub fn wait_ready(&self, vm: &str) -> Result<()> {
        self.wait_console(vm, guest::PROMPT_REGEX, Duration::from_secs(60))
            .map(drop)
    }

    pub fn console_text(&self, vm: &str) -> String {
        let mut s = String::new();
        if let Ok(mut r) = self.client.console_log(vm, false) {
            let _ = std::io::Read::read_to_string(&mut r, &mut s);
        }
        s
    }

    /// Types a line into the serial console through the WebSocket.
    pub fn type_line(&self, vm: &str, line: &str) -> Result<()> {
        let mut ws = self.client.console(vm)?;
        ws.send(tungstenite::Message::Binary(
            format!("{line}\n").into_bytes().into(),
        ))?;
        ws.flush()?;
        let _ = ws.close(None);
        // Let the close handshake finish so the bytes are written before we return.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match ws.read() {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Types a command and waits for its output to match `expect`.
    pub fn run_in_guest(&self, vm: &str, cmd: &str, expect: &str) -> Result<String> {
        self.type_line(vm, cmd)?;
        self.wait_console(vm, expect, Duration::from_secs(30))
    }

    /// QEMU processes whose command line mentions this test's state dir.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let needle = self.state_dir.display().to_string();
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                    let cmd = String::from_utf8_lossy(&cmd);
                    if cmd.starts_with("/usr/bin/qemu-system") && cmd.contains(&needle) {
                        out.push(pid);
                    }
                }
            }
        }
        out
    }

    /// Fails unless every QEMU of this hvd runs confined (see
    /// [`Privileges::check_confined`](crate::confinement::Privileges::check_confined)), each
    /// under its own uid. Returns the pids checked.
    pub fn check_qemus_confined(&self) -> Result<Vec<u32>> {
        let pids = self.qemu_pids();
        let mut uids = Vec::new();
        for pid in &pids {
            let p = crate::confinement::Privileges::of(*pid)?;
            p.check_confined().with_context(|| format!("QEMU {pid}"))?;
            if uids.contains(&p.uid()) {
                bail!("two QEMUs share uid {}", p.uid());
            }
            uids.push(p.uid());
        }
        Ok(pids)
    }

    fn dump_logs(&self) {
        eprintln!(
            "===== hvd log ({}) =====\n{}",
            self.dir.display(),
            self.hvd_log()
        );
        if let Ok(rd) = std::fs::read_dir(self.state_dir.join("vms")) {
            for vm in rd.flatten() {
                for f in ["qemu.log", "console.log", "qmp.log"] {
                    let p = vm.path().join(f);
                    if let Ok(t) = std::fs::read(&p) {
                        let t = String::from_utf8_lossy(&t[t.len().saturating_sub(4000)..])
                            .into_owned();
                        eprintln!("===== {} =====\n{t}", p.display());
                    }
                }
            }
        }
    }
}

impl Drop for TestHvd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if self.child.is_some() {
            if let Ok(vms) = self.client.list() {
                for v in vms.iter().filter(|v| v.state.is_active()) {
                    let _ = self.client.destroy(&v.name);
                }
            }
        }
        let _ = self.stop();
        for pid in self.qemu_pids() {
            // SAFETY: kill(2) by PID on a QEMU whose command line names this test's own state dir.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
