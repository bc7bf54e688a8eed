//! Running VMs: launching QEMU, supervising it through QMP events and its exit, the power
//! operations, and re-attaching after a daemon restart.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{CrashInfo, EventKind, VmInfo, VncInfo};
use host_exec::{Exit, PidFd};
use model::{Accel, Action, DiskFormat, GraphicsSpec, VmSpec, VmState};
use qemu_argv::{QemuCaps, RunPlan};
use qmp::{Qmp, QmpEvent};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::{now_secs, Engine};

const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// `-cpu` for KVM hosts where `host` cannot set MSR 0x10a (IA32_ARCH_CAPABILITIES).
pub(crate) const KVM_CPU_FALLBACK: &str = "host,-arch-capabilities";

/// Does QEMU's failure say that `-cpu host` could not set a model-specific register?
fn needs_cpu_fallback(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("0x10a") || (e.contains("msr") && (e.contains("kvm") || e.contains("failed to set")))
}

/// How we learn that QEMU ended.
enum ProcWatch {
    Child(tokio::process::Child),
    PidFd(Arc<PidFd>),
}

impl ProcWatch {
    async fn wait(self) -> Exit {
        match self {
            ProcWatch::Child(mut c) => match c.wait().await {
                Ok(s) => Exit::from(s),
                Err(_) => Exit::Unknown,
            },
            ProcWatch::PidFd(p) => {
                p.exited().await;
                Exit::Unknown
            }
        }
    }
}

struct RunPaths {
    qmp: PathBuf,
    serial: PathBuf,
    console_log: PathBuf,
    qemu_log: PathBuf,
    qmp_log: PathBuf,
}

fn invalid_state(
    vm: &Vm,
    action: Action,
) -> impl FnOnce(model::InvalidTransition) -> EngineError + '_ {
    let _ = action;
    move |source| EngineError::InvalidState {
        vm: vm.name.clone(),
        source,
    }
}

/// `qemu-img create`.
pub(crate) async fn create_image(path: &Path, format: DiskFormat, size: u64) -> Result<()> {
    let size = size.to_string();
    host_exec::run(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new(format.as_str()),
            path.as_os_str(),
            OsStr::new(&size),
        ],
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| EngineError::Host(format!("cannot create disk image {}: {e}", path.display())))?;
    Ok(())
}

async fn create_overlay(overlay: &Path, base: &Path, format: DiskFormat) -> Result<()> {
    host_exec::run(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-F"),
            OsStr::new(format.as_str()),
            OsStr::new("-b"),
            base.as_os_str(),
            overlay.as_os_str(),
        ],
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| {
        EngineError::Host(format!(
            "cannot create the ephemeral overlay for {}: {e}",
            base.display()
        ))
    })?;
    Ok(())
}

/// The last lines of a log file.
fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(16 << 10)..]).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn bind_listener(path: &Path) -> Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| EngineError::Host(format!("cannot listen on {}: {e}", path.display())))?;
    Ok(OwnedFd::from(l))
}

impl Engine {
    fn paths(&self, vm: &Vm) -> RunPaths {
        let run = self.inner.cfg.run_dir();
        let dir = self.inner.cfg.vm_dir(&vm.name);
        RunPaths {
            qmp: run.join(format!("{}.qmp", vm.id)),
            serial: run.join(format!("{}.ser", vm.id)),
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            qmp_log: dir.join("qmp.log"),
        }
    }

    fn resolve_accel(
        &self,
        caps: &crate::HostCaps,
        want: Accel,
    ) -> Result<(qemu_argv::Accel, Option<String>)> {
        match want {
            Accel::Tcg => Ok((qemu_argv::Accel::Tcg, None)),
            Accel::Auto if caps.kvm => Ok((qemu_argv::Accel::Kvm, None)),
            Accel::Auto => Ok((qemu_argv::Accel::Tcg, Some(caps.accel_reason.clone()))),
            Accel::Kvm if caps.kvm => Ok((qemu_argv::Accel::Kvm, None)),
            Accel::Kvm => Err(EngineError::Host(format!(
                "--accel kvm cannot run here: {}; use --accel auto or --accel tcg",
                caps.accel_reason
            ))),
        }
    }

    /// Builds the argv (with the binary first) and says which accelerator it uses.
    /// Each disk's recorded format (checked) and the layers below it, for QEMU to open
    /// explicitly.
    pub(crate) async fn disk_chains(&self, spec: &VmSpec) -> Result<Vec<crate::images::Chain>> {
        let mut chains = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let what = format!("disks[{i}]");
            let format = self.image_format(&d.path, d.format, &what).await?;
            chains.push(self.chain_below(&d.path, format, &what).await?);
        }
        Ok(chains)
    }

    pub(crate) async fn plan_argv(
        &self,
        vm: &Vm,
        spec: &VmSpec,
        paused: bool,
        overlays: &[Option<PathBuf>],
        loadvm: Option<&str>,
        taps: &[Option<String>],
    ) -> Result<(Vec<String>, (qemu_argv::Accel, Option<String>))> {
        let chains = self.disk_chains(spec).await?;
        let caps = self.caps().await?;
        let accel = self.resolve_accel(&caps, spec.accel)?;
        let qcaps = QemuCaps {
            version: caps.qemu_version,
            accel: accel.0,
            kvm_cpu: if self
                .inner
                .kvm_cpu_fallback
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                KVM_CPU_FALLBACK.into()
            } else {
                "host".into()
            },
            aio: caps.aio,
        };
        let plan = RunPlan {
            qmp_fd: 3,
            serial_fd: 4,
            console_log: self.paths(vm).console_log,
            overlays: overlays.to_vec(),
            paused,
            loadvm: loadvm.map(str::to_string),
            taps: taps.to_vec(),
            chains,
            vnc_socket: self.vnc_socket_path(vm.id),
            nvram: (spec.firmware == model::Firmware::Uefi)
                .then(|| self.nvram_path(spec.name.as_str())),
            tpm_fd: spec.tpm.then_some(crate::firmware::TPM_FD),
            seed: spec
                .cloud_init
                .as_ref()
                .map(|_| crate::cloudinit::seed_path(&self.inner.cfg.vm_dir(&vm.name))),
        };
        let argv = qemu_argv::build(spec, &qcaps, &plan)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let bin = host_exec::which(&self.inner.cfg.qemu_binary)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.inner.cfg.qemu_binary.clone());
        let mut out = vec![bin];
        out.extend(argv.into_iter().map(|a| a.to_string_lossy().into_owned()));
        Ok((out, accel))
    }

    fn set_state(&self, vm: &Vm, state: VmState, reason: Option<String>) {
        {
            let mut st = vm.lock();
            if st.state == state {
                return;
            }
            st.state = state;
        }
        vm.state_tx.send_replace(state);
        tracing::info!(vm = %vm.name, %state, reason = reason.as_deref().unwrap_or(""), "state");
        self.emit(&vm.name, EventKind::StateChanged { state, reason });
    }

    /// Saves the VM's runtime record; an operation whose record cannot be saved fails.
    fn persist_runtime(&self, vm: &Vm) -> Result<()> {
        let rec = vm.lock().rec.clone();
        self.inner.store.update_runtime(vm.id, &rec).map_err(|e| {
            EngineError::Internal(format!(
                "cannot save the runtime state of VM {:?} ({e}); check the state dir's disk and hvd's log",
                vm.name
            ))
        })
    }

    pub(crate) fn persist_runtime_pub(&self, vm: &Vm) -> Result<()> {
        self.persist_runtime(vm)
    }

    /// Forgets a QEMU that was spawned but did not become the VM's run (it is dead now).
    fn forget_start(&self, vm: &Vm) {
        {
            let mut st = vm.lock();
            st.pidfd = None;
            st.qmp = None;
            st.rec.pid = None;
            st.rec.starting = false;
            st.rec.taps.clear();
            st.rec.overlays.clear();
        }
        vm.close_qmp_events();
        if let Err(e) = self.persist_runtime(vm) {
            tracing::error!(vm = %vm.name, error = %e, "cannot record that the start failed");
        }
    }

    fn mark_user_stop(&self, vm: &Vm) {
        vm.lock().rec.user_stopped_boot = Some(self.inner.boot_id.clone());
    }

    /// `hv start`.
    pub async fn start(&self, name: &str, paused: bool) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("start")?;
        self.start_locked(&vm, paused).await?;
        Ok(self.info_of(&vm, false))
    }

    async fn start_locked(&self, vm: &Arc<Vm>, paused: bool) -> Result<()> {
        let mut spec = {
            let st = vm.lock();
            Action::Start
                .check(st.state)
                .map_err(invalid_state(vm, Action::Start))?;
            st.spec.clone()
        };
        // A definition from before machine types were pinned gets pinned at its next start.
        if spec.machine.version.is_none() {
            self.pin_machine(&mut spec).await?;
            self.save_spec_pub(vm, spec.clone())?;
        }
        let span = tracing::info_span!("start", vm = %vm.name);
        self.launch(vm, spec, paused, None).instrument(span).await
    }

    /// Volumes become paths for QEMU.
    pub(crate) fn resolve_volumes(&self, spec: &mut VmSpec) -> Result<()> {
        model::assign_targets(&mut spec.disks);
        if let Some(r) = spec.cdrom_vol() {
            spec.cdrom = Some(self.vol_path(&r)?);
        }
        for d in spec.disks.iter_mut() {
            if let Some(r) = &d.vol {
                d.path = self.vol_path(r)?;
            }
        }
        Ok(())
    }

    pub(crate) async fn launch(
        &self,
        vm: &Arc<Vm>,
        mut spec: VmSpec,
        paused: bool,
        loadvm: Option<&str>,
    ) -> Result<()> {
        self.resolve_volumes(&mut spec)?;
        for d in &spec.disks {
            self.check_not_held(d, &vm.name).await?;
        }
        let paths = self.paths(vm);
        let dir = self.inner.cfg.vm_dir(&vm.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", dir.display())))?;
        host_storage::access::make_dir_private(&dir)
            .map_err(|e| EngineError::Host(e.to_string()))?;
        for (what, p) in spec
            .kernel
            .iter()
            .flat_map(|k| [("kernel", Some(&k.path)), ("initrd", k.initrd.as_ref())])
            .chain([(
                "cdrom",
                spec.cdrom.as_ref().filter(|c| !c.as_os_str().is_empty()),
            )])
        {
            if let Some(p) = p {
                crate::must_exist(what, p)?;
            }
        }
        for d in &spec.disks {
            crate::must_exist("disk", &d.path)?;
        }
        crate::cloudinit::prepare(&dir, &spec)?;
        // Ephemeral VMs write into throw-away overlays; their disks never change.
        let mut overlays: Vec<Option<PathBuf>> = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        if spec.ephemeral {
            for (i, d) in spec.disks.iter().enumerate() {
                if d.readonly {
                    overlays.push(None);
                    continue;
                }
                let o = dir.join(format!("ephemeral-{i}.qcow2"));
                let fmt = d.format.unwrap_or(DiskFormat::Raw);
                if let Err(e) = create_overlay(&o, &d.path, fmt).await {
                    made.iter().for_each(|p| drop(std::fs::remove_file(p)));
                    return Err(e);
                }
                made.push(o.clone());
                overlays.push(Some(o));
            }
        }
        let private_dir = self.private_dir(vm.id);
        let cleanup_files = |made: &[PathBuf]| {
            for p in made.iter().chain([&paths.qmp, &paths.serial]) {
                let _ = std::fs::remove_file(p);
            }
            crate::display::remove_private_dir(&private_dir);
        };
        let taps = match self.make_taps(vm.id, &spec).await {
            Ok(t) => t,
            Err(e) => {
                cleanup_files(&made);
                return Err(e);
            }
        };
        if let Err(e) = self
            .grant_for_start(vm, &spec, &paths, &overlays, &taps)
            .await
        {
            self.revoke_all(vm);
            cleanup_files(&made);
            crate::network::remove_taps(&taps).await;
            return Err(e);
        }
        // With KVM, `-cpu host` aborts on some nested hosts (QEMU cannot set MSR 0x10a,
        // IA32_ARCH_CAPABILITIES): retry once without that feature and remember it.
        let mut attempts = 0;
        let (argv, accel, (child, qmp, events, pidfd)) = loop {
            attempts += 1;
            let (argv, accel) = match self
                .plan_argv(vm, &spec, paused, &overlays, loadvm, &taps)
                .await
            {
                Ok(x) => crate::migrate::incoming_argv(vm, x),
                Err(e) => {
                    self.revoke_all(vm);
                    cleanup_files(&made);
                    crate::network::remove_taps(&taps).await;
                    return Err(e);
                }
            };
            // A fresh swtpm per attempt: the last one ended with its QEMU.
            let tpm = match self.start_tpm(vm, &spec) {
                Ok(t) => t,
                Err(e) => {
                    self.revoke_all(vm);
                    cleanup_files(&made);
                    crate::network::remove_taps(&taps).await;
                    return Err(e);
                }
            };
            match self
                .spawn_and_attach(vm, &spec, &paths, &argv, (&made, &taps), tpm)
                .await
            {
                Ok(x) => break (argv, accel, x),
                Err(e)
                    if attempts == 1
                        && !vm.lock().stopping
                        && accel.0 == qemu_argv::Accel::Kvm
                        && needs_cpu_fallback(&e.to_string()) =>
                {
                    tracing::warn!(vm = %vm.name, error = %e, "-cpu host failed to set an MSR; retrying without arch-capabilities");
                    self.inner
                        .kvm_cpu_fallback
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    self.revoke_all(vm);
                    cleanup_files(&made);
                    crate::network::remove_taps(&taps).await;
                    return Err(self.start_failed(vm, e));
                }
            }
        };
        let destroyed = {
            let mut st = vm.lock();
            if !st.stopping {
                st.qmp = Some(qmp.clone());
                st.rec.starting = false;
                st.rec.accel = Some(accel.0.as_str().to_string());
                st.rec.accel_reason = accel.1.clone();
                st.rec.argv = argv;
                st.rec.user_stopped_boot = None;
            }
            st.stopping
        };
        let saved = if destroyed {
            Ok(())
        } else {
            self.persist_runtime(vm)
        };
        if destroyed || saved.is_err() {
            // A destroy came while QEMU was starting, or the run cannot be recorded: this
            // QEMU must not live on.
            let _ = pidfd.signal(libc::SIGKILL);
            let mut child = child;
            let _ = child.wait().await;
            self.forget_start(vm);
            cleanup_files(&made);
            crate::network::remove_taps(&taps).await;
            let e = saved
                .err()
                .unwrap_or_else(|| EngineError::Qemu(String::new()));
            return Err(self.start_failed(vm, e));
        }
        self.finish_attach(vm, &spec, &qmp).await;
        self.balloon_at_start(vm, &spec, &qmp).await;
        let state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        self.set_state(vm, state, accel.1.map(|r| format!("accel tcg: {r}")));
        tokio::spawn(self.clone().supervise(
            vm.clone(),
            ProcWatch::Child(child),
            Some((qmp, events)),
            None,
        ));
        Ok(())
    }

    /// After a start failed (QEMU is dead): the VM is shut off again. A destroy during the
    /// start is why it failed, when there was one.
    fn start_failed(&self, vm: &Vm, e: EngineError) -> EngineError {
        let destroyed = std::mem::take(&mut vm.lock().stopping);
        if destroyed {
            self.set_state(vm, VmState::Shutoff, Some("destroyed".into()));
            EngineError::Qemu(format!(
                "VM {:?} was destroyed while it was starting",
                vm.name
            ))
        } else {
            self.set_state(vm, VmState::Shutoff, Some("start failed".into()));
            e
        }
    }

    /// Gives the VM's QEMU uid what it opens by name: disks (and their chains), ephemeral
    /// overlays, CD-ROM, kernel and initrd, the console log, `/dev/kvm` with KVM and
    /// `/dev/net/tun` with taps (each only where "other" lacks access).
    async fn grant_for_start(
        &self,
        vm: &Vm,
        spec: &VmSpec,
        paths: &RunPaths,
        overlays: &[Option<PathBuf>],
        taps: &[Option<String>],
    ) -> Result<()> {
        use host_storage::access::Access;
        self.prepare_private_dir(vm)?;
        // QEMU appends to it; hvd empties it at each spawn (same file, so the grant stays).
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.console_log)
            .map_err(|e| {
                EngineError::Host(format!("cannot open {}: {e}", paths.console_log.display()))
            })?;
        host_storage::access::make_private(&paths.console_log)
            .map_err(|e| EngineError::Host(e.to_string()))?;
        self.grant(vm, &paths.console_log, Access::ReadWrite)?;
        for (i, d) in spec.disks.iter().enumerate() {
            // An ephemeral overlay is hvd's, just made on the disk: granted on its own, and
            // the disk (read-only below it) with its chain.
            if let Some(o) = overlays.get(i).cloned().flatten() {
                host_storage::access::make_private(&o)
                    .map_err(|e| EngineError::Host(e.to_string()))?;
                self.grant(vm, &o, Access::ReadWrite)?;
            }
            let writable = !d.readonly && !spec.ephemeral;
            self.grant_disk(vm, &d.path, d.format, writable).await?;
        }
        let read_only = spec
            .kernel
            .iter()
            .flat_map(|k| [Some(&k.path), k.initrd.as_ref()])
            .chain([spec.cdrom.as_ref().filter(|c| !c.as_os_str().is_empty())])
            .flatten();
        for p in read_only {
            self.grant(vm, p, Access::Read)?;
        }
        if spec.cloud_init.is_some() {
            let seed = crate::cloudinit::seed_path(&self.inner.cfg.vm_dir(&vm.name));
            self.grant(vm, &seed, Access::Read)?;
        }
        let caps = self.caps().await?;
        if self.resolve_accel(&caps, spec.accel)?.0 == qemu_argv::Accel::Kvm {
            self.grant(vm, Path::new("/dev/kvm"), Access::ReadWrite)?;
        }
        if taps.iter().any(Option::is_some) {
            self.grant(vm, Path::new("/dev/net/tun"), Access::ReadWrite)?;
        }
        self.grant_firmware(vm, spec)?;
        Ok(())
    }

    /// Spawns QEMU with its QMP and serial listeners and completes the QMP handshake.
    async fn spawn_and_attach(
        &self,
        vm: &Arc<Vm>,
        spec: &VmSpec,
        paths: &RunPaths,
        argv: &[String],
        (made, taps): (&[PathBuf], &[Option<String>]),
        tpm: Option<OwnedFd>,
    ) -> Result<(
        tokio::process::Child,
        Arc<Qmp>,
        mpsc::UnboundedReceiver<QmpEvent>,
        Arc<PidFd>,
    )> {
        let mut ids = self.qemu_ids(vm.id)?;
        if argv
            .windows(2)
            .any(|w| w[0] == "-accel" && w[1].starts_with("kvm"))
        {
            ids.group = Self::kvm_group();
        }
        let qmp_fd = bind_listener(&paths.qmp)?;
        let ser_fd = bind_listener(&paths.serial)?;
        // "Since the VM last started": QEMU appends (O_APPEND) so the file must start empty.
        std::fs::write(&paths.console_log, b"").map_err(|e| {
            EngineError::Host(format!("cannot reset {}: {e}", paths.console_log.display()))
        })?;
        vm.console.reset();
        crate::logcap::rotate_if_over(&paths.qemu_log, self.inner.cfg.log_cap);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.qemu_log)
            .map_err(|e| {
                EngineError::Host(format!("cannot open {}: {e}", paths.qemu_log.display()))
            })?;
        let _ = writeln!(
            log,
            "=== hvd {} starting QEMU: {}",
            now_secs(),
            argv.join(" ")
        );
        // From here on a destroy is for this start (see `start_failed`).
        vm.lock().stopping = false;
        self.set_state(vm, VmState::Starting, None);
        let args: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
        let mut fds = vec![(qmp_fd, 3), (ser_fd, 4)];
        fds.extend(tpm.map(|t| (t, crate::firmware::TPM_FD)));
        let mut d = host_exec::spawn_detached(Path::new(&argv[0]), &args, fds, log, ids)
            .map_err(|e| EngineError::Host(e.to_string()))?;
        let pidfd = match PidFd::open(d.pid) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = d.child.start_kill();
                let _ = d.child.wait().await;
                return Err(EngineError::Host(e.to_string()));
            }
        };
        // Recorded before anything else can fail: a restarted hvd finds this QEMU, and a
        // destroy from now on kills it.
        let destroyed = {
            let mut st = vm.lock();
            st.pidfd = Some(pidfd.clone());
            st.rec.pid = Some(d.pid);
            st.rec.starting = true;
            st.rec.started_at = Some(now_secs());
            st.rec.argv = argv.to_vec();
            st.rec.crash = None;
            st.rec.overlays = made.iter().map(|p| p.display().to_string()).collect();
            st.rec.taps = taps.iter().flatten().cloned().collect();
            st.stopping
        };
        let saved = self.persist_runtime(vm);
        // Under systemd: out of hvd's cgroup, so restarting hvd's unit leaves the VM running.
        let scoped = match saved {
            Ok(()) if !destroyed => self.place_in_scope(spec, &[d.pid]).await,
            other => other,
        };
        if destroyed || scoped.is_err() {
            let _ = d.child.start_kill();
            let _ = d.child.wait().await;
            self.forget_start(vm);
            return Err(scoped
                .err()
                .unwrap_or_else(|| EngineError::Qemu(String::new())));
        }
        let transcript = transcript_writer(&paths.qmp_log, self.inner.cfg.log_cap);
        let attach = async {
            let s = UnixStream::connect(&paths.qmp)
                .await
                .map_err(|e| EngineError::Qemu(format!("cannot connect to QMP: {e}")))?;
            Qmp::handshake(s, transcript)
                .await
                .map_err(|e| EngineError::Qemu(e.to_string()))
        };
        let attached = tokio::select! {
            r = tokio::time::timeout(QMP_CONNECT_TIMEOUT, attach) => r.unwrap_or_else(|_| Err(EngineError::Qemu("QEMU did not answer on QMP in time".into()))),
            status = d.child.wait() => Err(EngineError::Qemu(format!("QEMU exited at start ({})", status.map(|s| s.to_string()).unwrap_or_default()))),
        };
        match attached {
            Ok((qmp, events)) => Ok((d.child, Arc::new(qmp), events, pidfd)),
            Err(e) => {
                let _ = d.child.start_kill();
                let _ = d.child.wait().await;
                self.forget_start(vm);
                let tail = log_tail(&paths.qemu_log, 5)
                    .into_iter()
                    .filter(|l| !l.starts_with("=== hvd"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = spec;
                Err(EngineError::Qemu(format!(
                    "QEMU failed to start: {e}: {tail}"
                )))
            }
        }
    }

    /// Console, VNC password and port: the parts of attaching that are the same for a fresh
    /// start and a re-attach.
    async fn finish_attach(&self, vm: &Arc<Vm>, spec: &VmSpec, qmp: &Qmp) {
        let paths = self.paths(vm);
        match UnixStream::connect(&paths.serial).await {
            Ok(s) => vm.console.attach(
                s,
                vec![paths.console_log.clone(), paths.qemu_log.clone()],
                self.inner.cfg.log_cap,
            ),
            Err(e) => {
                tracing::warn!(vm = %vm.name, error = %e, "cannot connect to the serial console")
            }
        }
        if let GraphicsSpec::Vnc(v) = &spec.graphics {
            if let Some(pw) = &v.password {
                if let Err(e) = qmp.set_vnc_password(pw).await {
                    tracing::error!(vm = %vm.name, error = %e, "cannot set the VNC password");
                }
            }
            match qmp.query_vnc_port().await {
                Ok(Some((host, port))) => vm.lock().vnc = Some(VncInfo { host, port }),
                Ok(None) => {}
                Err(e) => tracing::warn!(vm = %vm.name, error = %e, "query-vnc failed"),
            }
        }
    }

    /// Follows QMP events and waits for QEMU to end; then records how it ended.
    /// Without QMP (a re-attached QEMU that does not answer) only the exit is followed.
    async fn supervise(
        self,
        vm: Arc<Vm>,
        proc: ProcWatch,
        link: Option<(Arc<Qmp>, mpsc::UnboundedReceiver<QmpEvent>)>,
        mut shutdown: Option<String>,
    ) {
        let (qmp, mut events) = link.unzip();
        let exit = proc.wait();
        tokio::pin!(exit);
        let mut events_open = events.is_some();
        let exit = loop {
            tokio::select! {
                e = &mut exit => break e,
                ev = async { events.as_mut()?.recv().await }, if events_open => match ev {
                    None => events_open = false,
                    Some(ev) => self.on_event(&vm, qmp.as_ref(), ev, &mut shutdown),
                },
            }
        };
        // Events that raced the exit (a SHUTDOWN just before QEMU went away) still count.
        while let Some(ev) = events.as_mut().and_then(|e| e.try_recv().ok()) {
            self.on_event(&vm, qmp.as_ref(), ev, &mut shutdown);
        }
        self.finish_run(&vm, exit, shutdown);
    }

    fn on_event(
        &self,
        vm: &Arc<Vm>,
        qmp: Option<&Arc<Qmp>>,
        ev: QmpEvent,
        shutdown: &mut Option<String>,
    ) {
        tracing::debug!(vm = %vm.name, event = %ev.event, data = %ev.data, "qmp event");
        vm.publish_qmp_event(&ev);
        match ev.event.as_str() {
            "SHUTDOWN" => {
                let guest = ev.data["guest"].as_bool().unwrap_or(false);
                let reason = ev.data["reason"].as_str().unwrap_or("unknown").to_string();
                *shutdown = Some(if guest {
                    format!("guest shut down ({reason})")
                } else {
                    format!("stopped by the host ({reason})")
                });
                // -no-shutdown keeps QEMU around (so a restarted hvd can tell a guest power-off
                // from a crash); now that we have seen it, let QEMU go.
                if let Some(q) = qmp.cloned() {
                    tokio::spawn(async move {
                        let _ = q.quit().await;
                    });
                }
            }
            "STOP" if shutdown.is_none() && vm.state() == VmState::Running => {
                self.set_state(vm, VmState::Paused, None);
            }
            "RESUME" if vm.state() == VmState::Paused => {
                self.set_state(vm, VmState::Running, None);
            }
            "RESET" => self.emit(&vm.name, EventKind::Reset),
            _ => {}
        }
    }

    fn finish_run(&self, vm: &Arc<Vm>, exit: Exit, shutdown: Option<String>) {
        let paths = self.paths(vm);
        let stopping = vm.lock().stopping;
        let (state, reason, crash) = if let Some(r) = shutdown {
            (VmState::Shutoff, r, None)
        } else if stopping {
            (VmState::Shutoff, "destroyed".to_string(), None)
        } else {
            let (what, exit_code, signal) = match exit {
                Exit::Code(c) => (
                    format!("QEMU exited with status {c} without a guest shutdown"),
                    Some(c),
                    None,
                ),
                Exit::Signal(s) => (format!("QEMU was killed by signal {s}"), None, Some(s)),
                Exit::Unknown => (
                    "QEMU ended while hvd was not its parent (exit status unknown)".to_string(),
                    None,
                    None,
                ),
            };
            let tail = log_tail(&paths.qemu_log, 10);
            (
                VmState::Crashed,
                what.clone(),
                Some(CrashInfo {
                    reason: what,
                    exit_code,
                    signal,
                    log_tail: tail,
                    at: now_secs(),
                }),
            )
        };
        let overlays = {
            let mut st = vm.lock();
            st.qmp = None;
            st.pidfd = None;
            st.vnc = None;
            st.stopping = false;
            st.rec.pid = None;
            st.rec.starting = false;
            st.rec.crash = crash;
            let taps: Vec<Option<String>> = std::mem::take(&mut st.rec.taps)
                .into_iter()
                .map(Some)
                .collect();
            tokio::spawn(async move { crate::network::remove_taps(&taps).await });
            std::mem::take(&mut st.rec.overlays)
        };
        // Operations waiting on a QMP event learn now that it will never come.
        vm.close_qmp_events();
        for p in overlays
            .iter()
            .map(PathBuf::from)
            .chain([paths.qmp, paths.serial])
        {
            let _ = std::fs::remove_file(p);
        }
        crate::display::remove_private_dir(&self.private_dir(vm.id));
        self.revoke_all(vm);
        // Nobody to fail here: the next start or hvd's re-attach sets the record right.
        if let Err(e) = self.persist_runtime(vm) {
            tracing::error!(vm = %vm.name, error = %e, "cannot record that QEMU ended");
        }
        self.set_state(vm, state, Some(reason));
    }

    /// Re-attaches to a QEMU started by an earlier hvd, or records that it died meanwhile.
    pub(crate) async fn reattach(&self, vm: Arc<Vm>) {
        let paths = self.paths(&vm);
        let (pid, spec) = {
            let st = vm.lock();
            (st.rec.pid.unwrap_or(0), st.spec.clone())
        };
        let qmp_path = paths.qmp.display().to_string();
        let ours = host_exec::process_cmdline(pid).is_some_and(|c| {
            c.iter().any(|a| a.contains("hv-qmp"))
                && c.iter()
                    .any(|a| a.contains(&paths.console_log.display().to_string()))
        });
        let pidfd = if ours {
            PidFd::open(pid).ok().map(Arc::new)
        } else {
            None
        };
        let Some(pidfd) = pidfd else {
            tracing::warn!(vm = %vm.name, pid, "QEMU is gone; it ended while hvd was down");
            self.finish_run(&vm, Exit::Unknown, None);
            return;
        };
        let transcript = transcript_writer(&paths.qmp_log, self.inner.cfg.log_cap);
        let attach = async {
            let s = UnixStream::connect(&qmp_path)
                .await
                .map_err(|e| EngineError::Qemu(e.to_string()))?;
            Qmp::handshake(s, transcript)
                .await
                .map_err(|e| EngineError::Qemu(e.to_string()))
        };
        let (qmp, events) = match tokio::time::timeout(Duration::from_secs(10), attach).await {
            Ok(Ok((q, e))) => (Arc::new(q), e),
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::error!(vm = %vm.name, pid, why, "cannot re-attach to QEMU's QMP; following its exit only (hv destroy stops it)");
                vm.lock().pidfd = Some(pidfd.clone());
                self.set_state(
                    &vm,
                    VmState::Running,
                    Some(format!("QMP unavailable: {why}")),
                );
                tokio::spawn(
                    self.clone()
                        .supervise(vm, ProcWatch::PidFd(pidfd), None, None),
                );
                return;
            }
        };
        let status = qmp.query_status().await.unwrap_or_default();
        // Jobs an earlier hvd started and never dismissed (it died meanwhile).
        if let Ok(jobs) = qmp.execute("query-jobs", None).await {
            for j in jobs.as_array().into_iter().flatten() {
                if j["status"] == "concluded"
                    && j["id"].as_str().is_some_and(|id| id.starts_with("hv-"))
                {
                    tracing::info!(vm = %vm.name, job = %j["id"], error = %j["error"], "dismissing a job an earlier hvd left");
                    let _ = qmp
                        .execute("job-dismiss", Some(serde_json::json!({ "id": j["id"] })))
                        .await;
                }
            }
        }
        {
            let mut st = vm.lock();
            st.qmp = Some(qmp.clone());
            st.pidfd = Some(pidfd.clone());
        }
        vm.console.seed_from_log(&paths.console_log);
        self.finish_attach(&vm, &spec, &qmp).await;
        let mut shutdown = None;
        match status.as_str() {
            "shutdown" => {
                shutdown = Some("guest shut down while hvd was not running".to_string());
                let _ = qmp.quit().await;
            }
            "paused" | "suspended" => {
                self.set_state(&vm, VmState::Paused, Some("re-attached".into()))
            }
            _ => self.set_state(&vm, VmState::Running, Some("re-attached".into())),
        }
        tracing::info!(vm = %vm.name, pid, status, "re-attached");
        tokio::spawn(self.clone().supervise(
            vm,
            ProcWatch::PidFd(pidfd),
            Some((qmp, events)),
            shutdown,
        ));
    }

    /// Hard power-off: QMP `quit` (QEMU flushes and exits at once), SIGKILL if that fails.
    pub(crate) async fn destroy_vm(&self, vm: &Arc<Vm>) -> Result<()> {
        let (qmp, pidfd) = {
            let mut st = vm.lock();
            if !st.state.is_active() {
                return Ok(());
            }
            st.stopping = true;
            (st.qmp.clone(), st.pidfd.clone())
        };
        self.mark_user_stop(vm);
        let mut rx = vm.state_tx.subscribe();
        match (qmp, &pidfd) {
            (Some(q), _) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), q.quit()).await;
            }
            // Still starting, or not answering on QMP: nothing to ask, so kill it.
            (None, Some(p)) => {
                let _ = p.signal(libc::SIGKILL);
            }
            // Not spawned yet: its launcher kills it as soon as it is (see `launch`).
            (None, None) => {}
        }
        if tokio::time::timeout(QUIT_GRACE, rx.wait_for(|s| !s.is_active()))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(p) = pidfd.or_else(|| vm.lock().pidfd.clone()) {
            tracing::warn!(vm = %vm.name, "QEMU ignored quit; sending SIGKILL");
            let _ = p.signal(libc::SIGKILL);
        }
        tokio::time::timeout(QUIT_GRACE, rx.wait_for(|s| !s.is_active()))
            .await
            .map(drop)
            .map_err(|_| {
                EngineError::Qemu(format!("QEMU of {:?} did not exit after SIGKILL", vm.name))
            })
    }

    /// `hv destroy`: allowed while another operation (say a long shutdown) is in progress,
    /// since it is the way out of one.
    pub async fn destroy(&self, name: &str) -> Result<VmInfo> {
        let vm = self.get(name)?;
        Action::Destroy
            .check(vm.state())
            .map_err(invalid_state(&vm, Action::Destroy))?;
        self.destroy_vm(&vm).await?;
        Ok(self.info_of(&vm, false))
    }

    /// `hv shutdown`: press the ACPI power button and wait. A guest that ignores it is not
    /// reported as shut down.
    pub async fn shutdown(&self, name: &str, timeout: Duration, force: bool) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("shutdown")?;
        self.shutdown_locked(&vm, timeout, force).await?;
        Ok(self.info_of(&vm, false))
    }

    async fn shutdown_locked(&self, vm: &Arc<Vm>, timeout: Duration, force: bool) -> Result<()> {
        Action::Shutdown
            .check(vm.state())
            .map_err(invalid_state(vm, Action::Shutdown))?;
        let qmp = vm.qmp()?;
        let mut rx = vm.state_tx.subscribe();
        self.set_state(
            vm,
            VmState::ShuttingDown,
            Some("ACPI power button pressed".into()),
        );
        self.mark_user_stop(vm);
        // Whichever way this ends without a power-off (an error, a timeout, the operation
        // cancelled and this future dropped), the VM is running again, not shutting down.
        let _restore = RestoreRunning { engine: self, vm };
        if let Err(e) = qmp.system_powerdown().await {
            return Err(EngineError::Qemu(e.to_string()));
        }
        if tokio::time::timeout(timeout, rx.wait_for(|s| !s.is_active()))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if force {
            tracing::warn!(vm = %vm.name, ?timeout, "guest ignored the power button; forcing power-off");
            return self.destroy_vm(vm).await;
        }
        Err(EngineError::Timeout(format!(
            "VM {:?} did not shut down within {} s of the ACPI power button and is still running: the guest may have no \
             power-button handler (acpid, systemd-logind) or be busy. Use --force to power it off after the timeout, or hv destroy",
            vm.name,
            timeout.as_secs_f64()
        )))
    }

    /// A VM still `shutting-down` goes back to `running` (the guest did not power off).
    fn restore_running(&self, vm: &Vm) {
        if vm.state() == VmState::ShuttingDown {
            vm.lock().rec.user_stopped_boot = None;
            self.set_state(
                vm,
                VmState::Running,
                Some("shutdown did not complete".into()),
            );
        }
    }

    /// `hv reboot`: graceful shutdown, then start again.
    pub async fn reboot(&self, name: &str, timeout: Duration, force: bool) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("reboot")?;
        Action::Reboot
            .check(vm.state())
            .map_err(invalid_state(&vm, Action::Reboot))?;
        self.shutdown_locked(&vm, timeout, force).await?;
        self.start_locked(&vm, false).await?;
        Ok(self.info_of(&vm, false))
    }

    /// `hv reset`: hard reset, QEMU stays.
    pub async fn reset(&self, name: &str) -> Result<VmInfo> {
        self.simple_op(name, "reset", Action::Reset, |q| {
            Box::pin(async move { q.system_reset().await })
        })
        .await
    }

    pub async fn pause(&self, name: &str) -> Result<VmInfo> {
        let info = self
            .simple_op(name, "pause", Action::Pause, |q| {
                Box::pin(async move { q.stop().await })
            })
            .await?;
        let vm = self.get(name)?;
        if vm.state() == VmState::Running {
            self.set_state(&vm, VmState::Paused, None);
        }
        Ok(VmInfo {
            state: vm.state(),
            ..info
        })
    }

    pub async fn resume(&self, name: &str) -> Result<VmInfo> {
        let info = self
            .simple_op(name, "resume", Action::Resume, |q| {
                Box::pin(async move { q.cont().await })
            })
            .await?;
        let vm = self.get(name)?;
        if vm.state() == VmState::Paused {
            self.set_state(&vm, VmState::Running, None);
        }
        Ok(VmInfo {
            state: vm.state(),
            ..info
        })
    }

    async fn simple_op(
        &self,
        name: &str,
        op: &'static str,
        action: Action,
        f: impl FnOnce(
            Arc<Qmp>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), qmp::QmpError>> + Send>,
        >,
    ) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin(op)?;
        action
            .check(vm.state())
            .map_err(invalid_state(&vm, action))?;
        f(vm.qmp()?)
            .await
            .map_err(|e| EngineError::Qemu(e.to_string()))?;
        Ok(self.info_of(&vm, false))
    }
}

fn transcript_writer(path: &Path, cap: u64) -> Option<qmp::Transcript> {
    let f = Mutex::new(crate::logcap::CappedLog::open(path, cap).ok()?);
    // Milliseconds, so the transcript shows where a slow operation spends its time.
    Some(Box::new(move |dir: char, line: &str| {
        if let Ok(mut f) = f.lock() {
            let ms = crate::now_ms();
            f.write_line(&format!("{}.{:03} {dir} {line}", ms / 1000, ms % 1000));
        }
    }))
}

/// Restores `running` when a shutdown ends without the guest powering off (see
/// [`Engine::restore_running`]), including when the shutdown's future is dropped.
struct RestoreRunning<'a> {
    engine: &'a Engine,
    vm: &'a Vm,
}

impl Drop for RestoreRunning<'_> {
    fn drop(&mut self) {
        self.engine.restore_running(self.vm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fallback_is_detected_from_qemu_errors() {
        // As reported by QEMU on nested hosts.
        assert!(needs_cpu_fallback("QEMU failed to start: qmp closed: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000001e; qemu-system-x86_64: ../target/i386/kvm/kvm.c:3157: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."));
        assert!(!needs_cpu_fallback(
            "QEMU failed to start: cannot set up guest memory 'pc.ram': Cannot allocate memory"
        ));
    }
}
