//! The engine owns hv's state: VM definitions in SQLite, one supervisor per running QEMU
//! (driven by QMP events and the process's exit), consoles, waits and events.
//!
//! It knows no HTTP: the daemon calls the methods of [`Engine`] and maps [`EngineError`]s to
//! status codes. Operations on one VM are serialized by an operation marker (a second one gets
//! [`EngineError::Busy`]); no lock is held while waiting on QMP or the guest. A restarted
//! engine re-attaches to every QEMU that is still running ([`Engine::open`]).

mod access;
mod backup;
mod clone;
mod clone_linked;
mod cloudinit;
mod confine;
mod console;
mod display;
mod error;
mod events;
mod firmware;
mod hotplug;
mod images;
pub mod logcap;
mod media;
pub mod migrate;
mod network;
mod nics;
mod operations;
mod orphans;
mod resize;
mod run;
mod scope;
mod seats;
mod snapshot;
mod snapshot_external;
mod stats;
mod storage;
mod store;
mod vm;
mod vm_uuid;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{EventKind, HostReport, ShowCmd, VmInfo, WaitRequest, WaitResponse};
use model::{Action, DiskFormat, Mac, NicSpec, VmSpec, VmState};
use tokio::sync::broadcast;

pub use access::{Access, AuditEntry, Revocation, TokenOwner};
pub use backup::{BackupArchive, BACKUP_FORMAT};
pub use confine::DEFAULT_QEMU_UID_BASE;
pub use console::{
    skipped_marker, ConsoleFeed, ConsoleHub, ConsoleMsg, FeedItem, InputError,
    INPUT_CAP as CONSOLE_INPUT_CAP,
};
pub use display::MAX_SCREENSHOT_AGE;
pub use error::{EngineError, Result};
pub use events::{EventLog, Follower};
/// Volume uploads and downloads move bytes with these (see `host_storage::transfer`).
pub use host_storage::transfer::{Replaced, Upload};
pub use hotplug::ChangeScope;
pub use operations::{Cancel, Operations};
pub use seats::{Actor, Seated, Seats, DEFAULT_CONSOLE_IDLE};
use store::Store;
use vm::Vm;

/// Where the engine keeps its files and which QEMU it runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub qemu_binary: String,
    /// Each log file (console, QEMU, QMP, dnsmasq) is capped at about this many bytes.
    pub log_cap: u64,
    /// QEMU of VM `id` runs as uid and gid `qemu_uid_base + id`.
    pub qemu_uid_base: u32,
}

impl Config {
    pub fn new(state_dir: PathBuf) -> Self {
        Config {
            state_dir,
            qemu_binary: host_probe::QEMU_BINARY.to_string(),
            log_cap: logcap::DEFAULT_LOG_CAP,
            qemu_uid_base: DEFAULT_QEMU_UID_BASE,
        }
    }
    /// hv's SQLite database (VMs, and the tables of [`Access`]).
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("hv.db")
    }
    fn vm_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vms").join(name)
    }
    fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }
}

/// Host facts probed once, on first use.
#[derive(Debug, Clone)]
struct HostCaps {
    qemu_version: (u32, u32, u32),
    kvm: bool,
    accel_reason: String,
    /// How the disks' I/O is submitted (io_uring where QEMU and the host allow it).
    aio: qemu_argv::Aio,
}

pub(crate) struct Inner {
    cfg: Config,
    store: Store,
    vms: RwLock<BTreeMap<String, Arc<Vm>>>,
    events: EventLog,
    caps: tokio::sync::OnceCell<HostCaps>,
    nets: tokio::sync::Mutex<network::Nets>,
    /// Set once `-cpu host` was seen to abort on this host.
    kvm_cpu_fallback: std::sync::atomic::AtomicBool,
    boot_id: String,
    ops: Operations,
    /// The previous CPU sample of each QEMU (`stats.rs`).
    samples: stats::Samples,
    /// Whether VMs get systemd scopes (`scope.rs`).
    systemd: host_exec::systemd::Presence,
    /// Incoming migrations (`migrate/incoming.rs`).
    incoming: migrate::Sessions,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// io_uring if this QEMU can open a disk with it here (built with it, allowed by the kernel and
/// by the seccomp sandbox VMs run under, as the unprivileged uid VMs run as), else QEMU's
/// thread pool. QEMU opens its own binary that way and quits; it runs as `probe`, the base of
/// the VMs' ids (no VM has id 0).
async fn probe_aio(qemu: &str, probe: host_exec::Credentials) -> qemu_argv::Aio {
    use qemu_argv::Aio;
    let Some(bin) = host_exec::which(qemu) else {
        return Aio::Threads;
    };
    let argv = qemu_argv::aio_probe_argv(&bin, Aio::IoUring);
    let args: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
    let quit = b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"quit\"}\n";
    match host_exec::run_as(qemu, &args, quit, Duration::from_secs(10), Some(probe)).await {
        Ok(_) => Aio::IoUring,
        Err(e) => {
            tracing::info!(error = %e, "QEMU cannot use io_uring here; disks use its thread pool");
            Aio::Threads
        }
    }
}

/// Whether `tag` (`PID-N`, the tail of a temp file's name) names a process that is gone and is
/// not this hvd: what a crash or kill in the middle of an upload or a backup leaves behind.
/// A live process's file may be another hvd's that shares the directory.
pub(crate) fn dead_hvd_tag(tag: &str) -> bool {
    let Some((pid, n)) = tag.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(pid)
        && digits(n)
        && pid != std::process::id().to_string()
        && !Path::new("/proc").join(pid).exists()
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::Host(format!("{what}: {e}"))
}

impl Engine {
    /// Opens (or creates) the state dir, loads every VM and re-attaches to running ones.
    pub async fn open(cfg: Config) -> Result<Engine> {
        for dir in [
            cfg.state_dir.clone(),
            cfg.state_dir.join("vms"),
            cfg.run_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        // Private: a VM's QEMU (its own uid) is let through to its own files only, by ACL
        // entries that last while it runs (see `confine`).
        for dir in [
            cfg.state_dir.clone(),
            cfg.state_dir.join("vms"),
            cfg.run_dir(),
        ] {
            host_storage::access::make_dir_private(&dir)
                .map_err(|e| EngineError::Host(e.to_string()))?;
        }
        let probe = cfg.run_dir().join("12345678.qmp");
        if probe.as_os_str().len() > 107 {
            return Err(EngineError::Invalid(format!(
                "state dir {} is too long for Unix socket paths (107 bytes at most, and hv needs {}); use a shorter --state-dir",
                cfg.state_dir.display(),
                probe.as_os_str().len()
            )));
        }
        let store = Store::open(&cfg.db_path())?;
        let rows = store.load_all()?;
        // Every stored row must read now: an unreadable one stops hvd, it is never skipped.
        let snapshots = store.load_all_snapshots()?;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let events = EventLog::default();
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                store,
                vms: RwLock::new(BTreeMap::new()),
                events: events.clone(),
                caps: tokio::sync::OnceCell::new(),
                nets: Default::default(),
                kvm_cpu_fallback: Default::default(),
                boot_id,
                ops: Operations::with_events(events),
                samples: Default::default(),
                systemd: scope::detect_and_log(),
                incoming: Default::default(),
            }),
        };
        engine.ensure_default_pool()?;
        engine.remove_stale_uploads();
        engine.remove_stale_backups();
        engine.load_networks().await?;
        engine.ensure_default_network().await?;
        // Networks come up before the API answers (milliseconds each), VMs after.
        engine.autostart_networks().await;
        for row in rows {
            let vm = Arc::new(Vm::new(row.id, row.spec, row.runtime));
            engine.write_vms().insert(vm.name.clone(), vm);
        }
        engine.record_defined_images(&snapshots).await?;
        drop(snapshots);
        // QEMUs an earlier hvd left without a record first, so adopted ones re-attach too.
        engine.adopt_or_stop_orphans().await;
        let reattach: Vec<Arc<Vm>> = engine
            .read_vms()
            .values()
            .filter(|vm| vm.lock().rec.pid.is_some())
            .cloned()
            .collect();
        for vm in reattach {
            engine.reattach(vm).await;
        }
        engine.remove_half_received().await;
        // Probe QEMU now, in the background, so the first start does not pay for it.
        let warm = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.caps().await {
                tracing::warn!(error = %e, "host probe failed");
            }
        });
        Ok(engine)
    }

    /// Starts every autostart VM that is not running, unless a user stopped it during this
    /// host boot.
    pub async fn autostart(&self) {
        let vms: Vec<Arc<Vm>> = self.read_vms().values().cloned().collect();
        for vm in vms {
            let go = {
                let st = vm.lock();
                st.spec.autostart
                    && !st.state.is_active()
                    && st.rec.user_stopped_boot.as_deref() != Some(self.inner.boot_id.as_str())
            };
            if go {
                tracing::info!(vm = %vm.name, "autostart");
                if let Err(e) = self.start(&vm.name, false).await {
                    tracing::error!(vm = %vm.name, error = %e, "autostart failed");
                }
            }
        }
    }

    /// Running and recent operations (the work of mutating requests).
    pub fn operations(&self) -> &Operations {
        &self.inner.ops
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    fn read_vms(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.inner.vms.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write_vms(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.inner.vms.write().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Vm>> {
        self.read_vms()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchVm(name.to_string()))
    }

    pub(crate) fn emit(&self, vm: &str, kind: EventKind) {
        self.inner.events.publish(vm, kind);
    }

    /// The event log (`GET /v1/events`).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    pub(crate) async fn caps(&self) -> Result<HostCaps> {
        let qemu = self.inner.cfg.qemu_binary.clone();
        let probe = self.qemu_ids(0)?;
        self.inner
            .caps
            .get_or_try_init(|| async move {
                let (v, aio) = tokio::join!(host_probe::tool_version(&qemu), probe_aio(&qemu, probe));
                let v = v.map_err(|e| {
                    EngineError::Host(format!("cannot run QEMU ({qemu}): {e}; install qemu-system-x86 (hv host check tells more)"))
                })?;
                let qemu_version = host_probe::parse_qemu_version(&v)
                    .ok_or_else(|| EngineError::Host(format!("cannot read the QEMU version from {v:?}")))?;
                let d = host_probe::decide_accel(&host_probe::gather_kvm_facts());
                tracing::info!(?qemu_version, kvm = d.kvm, reason = %d.reason, aio = aio.as_str(), "host probed");
                Ok(HostCaps { qemu_version, kvm: d.kvm, accel_reason: d.reason, aio })
            })
            .await
            .cloned()
    }

    /// `hv host check`.
    pub async fn host_check(&self) -> HostReport {
        let mut report = host_probe::check_host(&self.inner.cfg.qemu_binary).await;
        report.checks.push(self.firewall_check().await);
        report.checks.push(self.confinement_check());
        report.checks.extend(self.firmware_checks());
        report.checks.push(self.systemd_check());
        report
    }

    // ---- definitions ----

    /// Defines a VM (creating missing disks that have a size, recording formats, generating
    /// MACs), and starts it when asked. Nothing is left behind when any step fails.
    pub async fn define(&self, mut spec: VmSpec, start: bool) -> Result<VmInfo> {
        spec.validate()?;
        self.pin_machine(&mut spec).await?;
        spec.graphics.restore_password(None)?;
        self.assign_uuid(&mut spec, None)?;
        let name = spec.name.to_string();
        if self.read_vms().contains_key(&name) {
            return Err(EngineError::VmExists(name));
        }
        self.check_nics(&spec).await?;
        let created = self.prepare_host_side(&mut spec).await?;
        let undo = |e: EngineError| {
            for p in &created {
                let _ = std::fs::remove_file(p);
            }
            e
        };
        let vm = {
            let mut vms = self.write_vms();
            if vms.contains_key(&name) {
                return Err(undo(EngineError::VmExists(name)));
            }
            vm_uuid::check_unique(vms.values(), &spec, None).map_err(undo)?;
            let id = self.inner.store.insert(&spec).map_err(undo)?;
            let vm = Arc::new(Vm::new(id, spec, Default::default()));
            vms.insert(name.clone(), vm.clone());
            vm
        };
        if let Err(e) = self.ensure_nvram(&vm.lock().spec.clone()) {
            let _ = self.remove_definition(&vm);
            return Err(undo(e));
        }
        self.emit(&name, EventKind::Defined);
        tracing::info!(vm = %name, "defined");
        if start {
            if let Err(e) = self.start(&name, false).await {
                // `create --start` is all or nothing.
                let _ = self.remove_definition(&vm);
                for p in &created {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
        Ok(self.info_of(&vm, true))
    }

    /// Replaces a VM's spec (`hv edit`). The name cannot change. A running VM picks the new
    /// spec up at its next start.
    pub async fn update(&self, name: &str, mut spec: VmSpec) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("edit")?;
        if spec.name.as_str() != name {
            return Err(EngineError::Invalid(format!(
                "the spec is for {:?} but the VM is {name:?}; renaming is not supported",
                spec.name.as_str()
            )));
        }
        spec.validate()?;
        self.pin_machine(&mut spec).await?;
        // Keep MACs the user did not change, and the VNC password the answers left out.
        let old = vm.lock().spec.clone();
        spec.graphics.restore_password(Some(&old.graphics))?;
        self.assign_uuid(&mut spec, Some(&old))?;
        vm_uuid::check_unique(self.read_vms().values(), &spec, Some(vm.id))?;
        for (i, nic) in spec.nics.iter_mut().enumerate() {
            if nic.mac.is_none() {
                nic.mac = old.nics.get(i).and_then(|n| n.mac);
            }
        }
        self.check_nics(&spec).await?;
        self.firmware_edited(&vm, &old, &spec)?;
        let created = self.prepare_host_side(&mut spec).await?;
        if let Err(e) = self.inner.store.update_spec(vm.id, &spec) {
            for p in &created {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        vm.lock().spec = spec;
        self.emit(name, EventKind::Updated);
        Ok(self.info_of(&vm, true))
    }

    /// Pins an unpinned machine type (`pc`, `q35`) to the machine of this host's QEMU
    /// (`pc-i440fx-7.2`), so the guest's hardware does not change under it when QEMU is
    /// upgraded, and RAM snapshots and migrations load into the machine they were made on.
    pub(crate) async fn pin_machine(&self, spec: &mut VmSpec) -> Result<()> {
        if spec.machine.version.is_none() {
            let (major, minor, _) = self.caps().await?.qemu_version;
            spec.machine = spec.machine.pinned((major, minor));
        }
        Ok(())
    }

    /// Checks files, creates missing sized disks, records formats (see `images`) and generates
    /// MACs.
    /// Returns the files it created.
    async fn prepare_host_side(&self, spec: &mut VmSpec) -> Result<Vec<PathBuf>> {
        if let Some(k) = &spec.kernel {
            must_exist("kernel", &k.path)?;
            if let Some(i) = &k.initrd {
                must_exist("initrd", i)?;
            }
        }
        if let Some(r) = spec.cdrom_vol() {
            let p = self
                .vol_path(&r)
                .map_err(|e| EngineError::Invalid(format!("cdrom: {e}")))?;
            must_exist("cdrom", &p)?;
        } else if let Some(c) = spec.cdrom.as_ref().filter(|c| !c.as_os_str().is_empty()) {
            must_exist("cdrom", c)?;
        }
        model::assign_targets(&mut spec.disks);
        for (i, d) in spec.disks.iter_mut().enumerate() {
            if let Some(r) = &d.vol {
                d.path = self
                    .vol_path(r)
                    .map_err(|e| EngineError::Invalid(format!("disks[{i}]: {e}")))?;
            }
        }
        let mut created: Vec<PathBuf> = Vec::new();
        let res = async {
            for (i, d) in spec.disks.iter_mut().enumerate() {
                if d.path.exists() {
                    if d.path.is_dir() {
                        return Err(EngineError::Invalid(format!(
                            "disks[{i}]: {} is a directory, not a disk image",
                            d.path.display()
                        )));
                    }
                    d.format = Some(
                        self.image_format(&d.path, d.format, &format!("disks[{i}]"))
                            .await?,
                    );
                } else if let Some(size) = d.size {
                    let fmt = *d.format.get_or_insert(DiskFormat::Qcow2);
                    if let Some(parent) = d.path.parent() {
                        if !parent.is_dir() {
                            return Err(EngineError::Invalid(format!(
                                "disks[{i}]: directory {} does not exist",
                                parent.display()
                            )));
                        }
                    }
                    run::create_image(&d.path, fmt, size.0).await?;
                    created.push(d.path.clone());
                    self.record_image(&d.path, fmt, store::ImageOrigin::Created, None)?;
                } else {
                    return Err(EngineError::Invalid(format!(
                        "disks[{i}]: {} does not exist; add size=SIZE to create it",
                        d.path.display()
                    )));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            for p in &created {
                let _ = std::fs::remove_file(p);
                let _ = self.forget_image(p);
            }
            return Err(e);
        }
        self.assign_macs(&mut spec.nics);
        Ok(created)
    }

    pub(crate) fn assign_macs(&self, nics: &mut [NicSpec]) {
        let mut used: Vec<Mac> = self
            .read_vms()
            .values()
            .flat_map(|vm| {
                vm.lock()
                    .spec
                    .nics
                    .iter()
                    .filter_map(|n| n.mac)
                    .collect::<Vec<_>>()
            })
            .collect();
        used.extend(nics.iter().filter_map(|n| n.mac));
        for nic in nics.iter_mut().filter(|n| n.mac.is_none()) {
            let mac = loop {
                let mut b = [0u8; 3];
                let _ = std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
                let m = Mac::qemu(b);
                if !used.contains(&m) {
                    break m;
                }
            };
            used.push(mac);
            nic.mac = Some(mac);
        }
    }

    fn remove_definition(&self, vm: &Arc<Vm>) -> Result<()> {
        self.inner.store.delete_all_snapshots(vm.id)?;
        self.inner.store.delete(vm.id)?;
        self.write_vms().remove(&vm.name);
        let _ = std::fs::remove_dir_all(self.inner.cfg.vm_dir(&vm.name));
        self.emit(&vm.name, EventKind::Undefined);
        Ok(())
    }

    /// Removes a VM's definition; with `remove_storage` also its writable disk images.
    pub async fn undefine(&self, name: &str, remove_storage: bool, force: bool) -> Result<()> {
        let vm = self.get(name)?;
        let _op = vm.begin("undefine")?;
        let state = vm.state();
        if state.is_active() {
            if !force {
                Action::Undefine
                    .check(state)
                    .map_err(|source| EngineError::InvalidState {
                        vm: name.into(),
                        source,
                    })?;
            }
            self.destroy_vm(&vm).await?;
        }
        let disks: Vec<PathBuf> = vm
            .lock()
            .spec
            .disks
            .iter()
            .filter(|d| !d.readonly)
            .map(|d| d.path.clone())
            .collect();
        let used_elsewhere: Vec<PathBuf> = self
            .read_vms()
            .values()
            .filter(|o| o.id != vm.id)
            .flat_map(|o| {
                o.lock()
                    .spec
                    .disks
                    .iter()
                    .map(|d| d.path.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        self.remove_definition(&vm)?;
        if remove_storage {
            for d in disks {
                if used_elsewhere.contains(&d) {
                    tracing::warn!(disk = %d.display(), "not removing a disk another VM uses");
                    continue;
                }
                if let Ok(Some(child)) = self.overlay_on(&d).await {
                    tracing::warn!(disk = %d.display(), overlay = child, "not removing a disk that backs another volume");
                    continue;
                }
                match std::fs::remove_file(&d) {
                    Ok(()) => self.forget_image(&d)?,
                    Err(e) => {
                        tracing::warn!(disk = %d.display(), error = %e, "could not remove disk")
                    }
                }
            }
        }
        tracing::info!(vm = name, remove_storage, "undefined");
        Ok(())
    }

    pub fn set_autostart(&self, name: &str, enabled: bool) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let spec = {
            let mut st = vm.lock();
            st.spec.autostart = enabled;
            st.spec.clone()
        };
        self.inner.store.update_spec(vm.id, &spec)?;
        self.emit(name, EventKind::Updated);
        Ok(self.info_of(&vm, false))
    }

    // ---- views ----

    pub fn list(&self) -> Vec<VmInfo> {
        self.read_vms()
            .values()
            .map(|vm| self.info_of(vm, false))
            .collect()
    }

    pub fn info(&self, name: &str) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let mut info = self.info_of(&vm, true);
        info.addresses = self.nic_addresses(&vm.lock().spec);
        Ok(info)
    }

    pub fn spec(&self, name: &str) -> Result<VmSpec> {
        Ok(self.get(name)?.lock().spec.clone())
    }

    fn info_of(&self, vm: &Vm, with_spec: bool) -> VmInfo {
        let st = vm.lock();
        let active = st.state.is_active();
        VmInfo {
            name: vm.name.clone(),
            state: st.state,
            vcpus: st.spec.vcpus,
            memory_mib: st.spec.memory_mib(),
            autostart: st.spec.autostart,
            ephemeral: st.spec.ephemeral,
            accel: st.rec.accel.clone().filter(|_| active),
            pid: st.rec.pid.filter(|_| active),
            started_at: st.rec.started_at.filter(|_| active),
            vnc: st.vnc.clone().filter(|_| active),
            crash: st
                .rec
                .crash
                .clone()
                .filter(|_| st.state == VmState::Crashed),
            accel_reason: st.rec.accel_reason.clone().filter(|_| active),
            spec: with_spec.then(|| st.spec.redacted()),
            addresses: Vec::new(),
        }
    }

    /// The QEMU command line of the running VM, or the one hv would run.
    pub async fn showcmd(&self, name: &str) -> Result<ShowCmd> {
        let vm = self.get(name)?;
        {
            let st = vm.lock();
            if st.state.is_active() && !st.rec.argv.is_empty() {
                return Ok(ShowCmd {
                    argv: st.rec.argv.clone(),
                    running: true,
                });
            }
        }
        let mut spec = vm.lock().spec.clone();
        self.resolve_volumes(&mut spec)?;
        let (argv, _) = self
            .plan_argv(
                &vm,
                &spec,
                false,
                &[],
                None,
                &self.predicted_taps(&vm, &spec),
            )
            .await?;
        Ok(ShowCmd {
            argv,
            running: false,
        })
    }

    /// A stream of the VM's console: the scrollback since it last started, then live output.
    pub fn console(&self, name: &str) -> Result<Arc<ConsoleHub>> {
        Ok(self.get(name)?.console.clone())
    }

    /// Types into the VM's serial console.
    pub fn console_input(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let vm = self.get(name)?;
        match vm.console.send_input(data) {
            Ok(()) => Ok(()),
            Err(console::InputError::Full) => Err(EngineError::Busy {
                vm: name.into(),
                op: "console input the guest has not read yet (input dropped)",
            }),
            Err(console::InputError::NotConnected) => Err(EngineError::InvalidState {
                vm: name.into(),
                source: model::InvalidTransition {
                    action: Action::Start,
                    state: vm.state(),
                    hint: "; its console is not connected (is it running?)",
                },
            }),
        }
    }

    /// Waits until the VM reaches a state, or its console prints a match for a regex.
    pub async fn wait(&self, name: &str, req: WaitRequest) -> Result<WaitResponse> {
        let vm = self.get(name)?;
        if !(req.timeout_secs.is_finite() && (0.0..=86400.0).contains(&req.timeout_secs)) {
            return Err(EngineError::Invalid(format!(
                "timeout {} is out of range; use 0 to 86400 seconds",
                req.timeout_secs
            )));
        }
        let timeout = Duration::from_secs_f64(req.timeout_secs);
        match (req.state, req.console) {
            (Some(target), None) => {
                let mut rx = vm.state_tx.subscribe();
                let reached = tokio::time::timeout(timeout, rx.wait_for(|s| *s == target))
                    .await
                    .is_ok_and(|r| r.is_ok());
                Ok(WaitResponse {
                    reached,
                    state: vm.state(),
                    matched: None,
                })
            }
            (None, Some(pattern)) => {
                let re = regex::bytes::Regex::new(&pattern).map_err(|e| {
                    EngineError::Invalid(format!("invalid console regex {pattern:?}: {e}"))
                })?;
                let matched = tokio::time::timeout(timeout, wait_console(&vm.console, &re))
                    .await
                    .ok();
                Ok(WaitResponse {
                    reached: matched.is_some(),
                    state: vm.state(),
                    matched,
                })
            }
            _ => Err(EngineError::Invalid(
                "wait needs exactly one of a state or a console regex".into(),
            )),
        }
    }
}

/// Searches the scrollback, then live output, for `re`.
async fn wait_console(hub: &ConsoleHub, re: &regex::bytes::Regex) -> String {
    let (mut work, mut rx) = hub.subscribe();
    let mut from = 0usize;
    loop {
        if let Some(m) = re.find(&work[from..]) {
            return String::from_utf8_lossy(m.as_bytes()).into_owned();
        }
        // Matches may straddle chunks: search again from a little before the new data.
        from = work.len().saturating_sub(4096);
        match rx.recv().await {
            Ok(ConsoleMsg::Data { data, .. }) => work.extend_from_slice(&data),
            Ok(ConsoleMsg::Reset) => {
                work.clear();
                from = 0;
            }
            Ok(ConsoleMsg::Closed) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (snap, new_rx) = hub.subscribe();
                work = snap;
                rx = new_rx;
                from = 0;
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
        if work.len() > 4 << 20 {
            let cut = work.len() - (1 << 20);
            work.drain(..cut);
            from = from.saturating_sub(cut);
        }
    }
}

fn must_exist(what: &str, p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(_) => Err(EngineError::Invalid(format!(
            "{what} {} is not a regular file",
            p.display()
        ))),
        Err(e) => Err(EngineError::Invalid(format!("{what} {}: {e}", p.display()))),
    }
}
