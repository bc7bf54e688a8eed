//! The target of a migration: an incoming session per VM being received.
//!
//! `prepare` runs the pre-checks, defines the VM (with a marker file `vms/NAME/incoming` that
//! makes a restarted hvd remove it) and starts its QEMU through the normal launch path with
//! `-incoming defer`, the VM held busy by the operation marker so every other action refuses
//! it. The `memory` channel issues `migrate-incoming` to a socket in the VM's private run dir
//! and hands hvd's connection to it to the daemon's tunnel. `finish` continues the guest and
//! makes the definition the target's own; `abort` (or the source going away) leaves nothing:
//! no QEMU, no definition, no marker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{IncomingReady, IncomingRequest, IncomingState, IncomingStatus, MigrationMode, VmInfo};
use serde_json::json;

use super::checks::{self, TargetFacts};
use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// The marker file in `vms/NAME/` of a VM that is still being received.
pub(super) const MARKER: &str = "incoming";
/// How long a prepared session waits for its stream, and a received one for `finish`.
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// How long, after the stream ended, QEMU may take to report the outcome.
const SETTLE: Duration = Duration::from_secs(30);

pub(super) struct Session {
    pub(super) vm: String,
    pub(super) state: IncomingState,
    error: Option<String>,
    paused: bool,
    autostart: bool,
    reservations: Vec<api::IncomingReservation>,
    forwards: Vec<api::IncomingForward>,
    /// `--copy-storage`: the disks are served over NBD until finish.
    copy_storage: bool,
    memory_used: bool,
    /// `--offline`: what arrived so far (no QEMU, nothing defined until finish).
    pub(super) offline: Option<Arc<tokio::sync::Mutex<super::incoming_offline::Offline>>>,
    pub(super) state_tx: tokio::sync::watch::Sender<IncomingState>,
}

impl Session {
    /// An `--offline` session: nothing runs, files arrive.
    pub(super) fn offline(
        vm: String,
        offline: Arc<tokio::sync::Mutex<super::incoming_offline::Offline>>,
        state_tx: tokio::sync::watch::Sender<IncomingState>,
    ) -> Session {
        Session {
            vm,
            state: IncomingState::Waiting,
            error: None,
            paused: false,
            autostart: false,
            reservations: vec![],
            forwards: vec![],
            copy_storage: false,
            memory_used: false,
            offline: Some(offline),
            state_tx,
        }
    }
}

/// The incoming sessions of this hvd.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<BTreeMap<String, Session>>,
}

impl Sessions {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn no_session(id: &str) -> EngineError {
    EngineError::NotFound(format!(
        "incoming migration {id:?} does not exist (it was aborted, or this hvd restarted)"
    ))
}

impl Engine {
    pub(super) fn sessions(&self) -> &Sessions {
        &self.inner.incoming
    }

    /// What the checks need to know about this host.
    async fn target_facts(&self, req: &IncomingRequest) -> Result<TargetFacts> {
        let caps = self.caps().await?;
        let kvm = caps.kvm && req.spec.accel != model::Accel::Tcg;
        let cpu_model = if kvm {
            if self
                .inner
                .kvm_cpu_fallback
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                crate::run::KVM_CPU_FALLBACK.to_string()
            } else {
                "host".into()
            }
        } else {
            "default".into()
        };
        let networks = self.inner.nets.lock().await.map.keys().cloned().collect();
        // Each disk as THIS host resolves it (a volume in its pool of that name, or the same
        // path): shared when the source's probe file is in that directory here too.
        let mut here = req.spec.clone();
        let resolved = self.resolve_volumes(&mut here).is_ok();
        let shared = req
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let dir = here.disks.get(i).and_then(|x| x.path.parent());
                d.shared.as_ref().zip(dir).is_some_and(|(p, dir)| {
                    let name = p.path.file_name().and_then(|f| f.to_str()).unwrap_or("");
                    resolved
                        && name.starts_with(super::source::PROBE_PREFIX)
                        && !name.contains('/')
                        && std::fs::read_to_string(dir.join(name)).is_ok_and(|t| t == p.token)
                })
            })
            .collect();
        Ok(TargetFacts {
            hostname: super::hostname(),
            qemu_version: caps.qemu_version,
            cpu_model,
            networks,
            vm_exists: self.read_vms().contains_key(req.vm.as_str()),
            free_memory: mem_available(),
            shared,
            disk_space: None,
            userfaultfd: std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                .is_ok_and(|v| v.trim() == "1"),
        })
    }

    /// `POST /v1/migrations/incoming`: checks, and unless `check_only`, defines the VM and
    /// starts its QEMU waiting for the stream.
    pub async fn incoming_prepare(&self, req: IncomingRequest) -> Result<IncomingReady> {
        if req.spec.name != req.vm {
            return Err(EngineError::Invalid(format!(
                "the definition names VM {:?}, the request {:?}",
                req.spec.name.as_str(),
                req.vm.as_str()
            )));
        }
        tracing::debug!(vm = %req.vm.as_str(), check_only = req.check_only, "incoming step: prepare asked");
        let facts = self.target_facts(&req).await?;
        let mut problems = checks::check(&req, &facts);
        problems.extend(super::netstate::conflicts(
            &req,
            &self.network_specs().await,
            &facts.hostname,
        ));
        if !problems.is_empty() {
            let text = format!(
                "{} refuses the migration of VM {:?}:\n- {}",
                facts.hostname,
                req.vm.as_str(),
                problems.join("\n- ")
            );
            return Err(if problems.len() == 1 && facts.vm_exists {
                EngineError::AlreadyExists(text)
            } else {
                EngineError::WrongState(text)
            });
        }
        let placed = self.incoming_place(&req)?;
        if req.check_only {
            return Ok(IncomingReady {
                id: String::new(),
                channels: vec![],
            });
        }
        if req.mode == MigrationMode::Offline {
            return self.incoming_prepare_offline(req, placed).await;
        }
        let name = req.vm.to_string();
        let dir = self.inner.cfg.vm_dir(&name);
        // The marker comes first, in a directory that must not exist yet, so a crash at any
        // later point leaves something the next start recognises and removes.
        std::fs::create_dir(&dir).map_err(|e| {
            EngineError::AlreadyExists(format!(
                "cannot receive VM {name:?}: {} cannot be created ({e}); remove it if no VM uses it",
                dir.display()
            ))
        })?;
        let id = super::random_hex(16);
        let marked = std::fs::write(dir.join(MARKER), &id)
            .and_then(|_| std::fs::File::open(dir.join(MARKER))?.sync_all());
        if let Err(e) = marked {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(EngineError::Host(format!(
                "cannot write {}: {e}",
                dir.join(MARKER).display()
            )));
        }
        if let Err(e) = self.incoming_provision(&dir, &placed, &req).await {
            self.incoming_remove_disks(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::debug!(vm = %name, "incoming step: marker written");
        let mut spec = placed;
        spec.autostart = false;
        if let Err(e) = self.define(spec, false).await {
            self.incoming_remove_disks(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let vm = self.get(&name)?;
        if let Err(e) = vm.hold(super::INCOMING_OP) {
            self.drop_incoming_vm(&vm).await;
            return Err(e);
        }
        let (state_tx, _) = tokio::sync::watch::channel(IncomingState::Waiting);
        self.sessions().lock().insert(
            id.clone(),
            Session {
                vm: name.clone(),
                state: IncomingState::Waiting,
                error: None,
                paused: req.paused,
                autostart: req.autostart,
                reservations: req.reservations.clone(),
                forwards: req.forwards.clone(),
                copy_storage: req.copy_storage,
                memory_used: false,
                offline: None,
                state_tx,
            },
        );
        let started = async {
            self.store_snapshots(&vm, &req)?;
            if req.current_snapshot.is_some() {
                vm.lock().rec.current_snapshot = req.current_snapshot.clone();
                self.persist_runtime_pub(&vm)?;
            }
            vm.lock().incoming = true;
            let spec = vm.lock().spec.clone();
            tracing::debug!(vm = %name, "incoming step: defined, launching");
            let r = self.launch(&vm, spec, true, None).await;
            tracing::debug!(vm = %name, "incoming step: launched");
            vm.lock().incoming = false;
            r?;
            let qmp = vm
                .lock()
                .qmp
                .clone()
                .ok_or_else(|| EngineError::Qemu("the incoming QEMU ended at start".into()))?;
            let mut caps = vec![json!({"capability": "events", "state": true})];
            if req.postcopy {
                caps.push(json!({"capability": "postcopy-ram", "state": true}));
            }
            qmp.execute(
                "migrate-set-capabilities",
                Some(json!({ "capabilities": caps })),
            )
            .await
            .map_err(|e| EngineError::Qemu(e.to_string()))?;
            if req.copy_storage {
                let spec = vm.lock().spec.clone();
                self.migration_export(&vm, &spec).await?;
            }
            Ok::<(), EngineError>(())
        }
        .await;
        if let Err(e) = started {
            self.incoming_fail(&id, &e.to_string()).await;
            return Err(e);
        }
        tracing::info!(vm = %name, id, source = %req.source.hostname, "incoming migration prepared");
        self.watch_idle(&id, IncomingState::Waiting);
        let mut channels = vec![api::migrate::channel::MEMORY.to_string()];
        if req.copy_storage {
            channels.push(api::migrate::channel::NBD.to_string());
        }
        Ok(IncomingReady { id, channels })
    }

    pub(super) fn store_snapshots(&self, vm: &Vm, req: &IncomingRequest) -> Result<()> {
        let mut rows = Vec::with_capacity(req.snapshots.len());
        for s in &req.snapshots {
            let disks = serde_json::from_value(s.disks.clone()).map_err(|e| {
                EngineError::Invalid(format!(
                    "the source sent snapshot {:?} with disk records this hvd cannot read ({e}); are both hosts running the same hv version?",
                    s.name
                ))
            })?;
            rows.push(crate::store::SnapshotRow {
                name: s.name.clone(),
                parent: s.parent.clone(),
                created_at: s.created_at,
                vm_state: s.vm_state,
                kind: s.kind.clone(),
                memory: s.memory,
                description: s.description.clone(),
                spec: s.spec.clone(),
                disks,
            });
        }
        self.inner.store.insert_snapshots(vm.id, &rows)
    }

    /// Aborts the session `id` unless it has moved on from `from` within [`IDLE_LIMIT`].
    pub(super) fn watch_idle(&self, id: &str, from: IncomingState) {
        let Some(mut rx) = self
            .sessions()
            .lock()
            .get(id)
            .map(|s| s.state_tx.subscribe())
        else {
            return;
        };
        let (e, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let stuck = tokio::time::timeout(IDLE_LIMIT, rx.wait_for(|s| *s != from))
                .await
                .is_err();
            if stuck {
                let why = match from {
                    IncomingState::Waiting => "the source never sent the migration stream",
                    _ => "the source never finished the migration",
                };
                tracing::warn!(id, "{why}; aborting the incoming migration");
                e.incoming_fail(&id, why).await;
            }
        });
    }

    pub(super) fn set_session(&self, id: &str, state: IncomingState, error: Option<String>) {
        if let Some(s) = self.sessions().lock().get_mut(id) {
            s.state = state;
            if error.is_some() {
                s.error = error;
            }
            s.state_tx.send_replace(state);
        }
    }

    /// The target end of `channel`: hvd's connection to the incoming QEMU's socket.
    pub async fn incoming_connect(
        &self,
        id: &str,
        channel: &str,
    ) -> Result<tokio::net::UnixStream> {
        if channel == api::migrate::channel::NBD {
            return self.incoming_connect_nbd(id).await;
        }
        if channel.starts_with("file-") || channel == super::vmfiles::CHANNEL {
            return self.incoming_connect_offline(id, channel).await;
        }
        if channel != api::migrate::channel::MEMORY {
            return Err(EngineError::NotFound(format!(
                "incoming migration {id:?} has no channel {channel:?}"
            )));
        }
        let vm_name = {
            let mut g = self.sessions().lock();
            let s = g.get_mut(id).ok_or_else(|| no_session(id))?;
            // With --copy-storage the disks' channels made the session `receiving` already.
            let open = s.state == IncomingState::Waiting
                || (s.copy_storage && s.state == IncomingState::Receiving);
            if !open || s.memory_used {
                return Err(EngineError::WrongState(format!(
                    "incoming migration {id:?} is {:?}: its memory channel was already used",
                    s.state
                )));
            }
            s.state = IncomingState::Receiving;
            s.memory_used = true;
            s.state_tx.send_replace(IncomingState::Receiving);
            s.vm.clone()
        };
        let vm = self.get(&vm_name)?;
        let qmp = vm
            .lock()
            .qmp
            .clone()
            .ok_or_else(|| EngineError::Qemu("the incoming QEMU is gone".into()))?;
        tracing::debug!(vm = %vm_name, "incoming step: memory tunnel asked");
        let sock = self.private_dir(vm.id).join("mig-in.sock");
        let mut events = vm.subscribe_qmp_events();
        let r = async {
            qmp.execute(
                "migrate-incoming",
                Some(json!({ "uri": format!("unix:{}", sock.display()) })),
            )
            .await
            .map_err(|e| EngineError::Qemu(e.to_string()))?;
            tokio::net::UnixStream::connect(&sock).await.map_err(|e| {
                EngineError::Host(format!("cannot connect to {}: {e}", sock.display()))
            })
        }
        .await;
        tracing::debug!(vm = %vm_name, "incoming step: migrate-incoming connected");
        let stream = match r {
            Ok(s) => s,
            Err(e) => {
                self.incoming_fail(id, &e.to_string()).await;
                return Err(e);
            }
        };
        // QEMU's own verdict on the stream.
        let (e, id2) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.event == "MIGRATION" => match ev.data["status"].as_str() {
                        Some("completed") => {
                            tracing::debug!(id = %id2, "incoming step: QEMU reports completed");
                            e.set_session(&id2, IncomingState::Completed, None);
                            e.watch_idle(&id2, IncomingState::Completed);
                            return;
                        }
                        Some("failed") | Some("cancelled") => {
                            e.incoming_fail(&id2, "QEMU could not load the migration stream")
                                .await;
                            return;
                        }
                        _ => {}
                    },
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => {
                        e.incoming_fail(&id2, "the incoming QEMU ended").await;
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }

    /// `--copy-storage`: hvd's connection to the incoming QEMU's NBD server (one per disk
    /// the source mirrors). Disk traffic counts as receiving.
    async fn incoming_connect_nbd(&self, id: &str) -> Result<tokio::net::UnixStream> {
        let vm_name = {
            let mut g = self.sessions().lock();
            let s = g.get_mut(id).ok_or_else(|| no_session(id))?;
            if !s.copy_storage
                || !matches!(s.state, IncomingState::Waiting | IncomingState::Receiving)
            {
                return Err(EngineError::WrongState(format!(
                    "incoming migration {id:?} is {:?} and takes no disk copies",
                    s.state
                )));
            }
            s.state = IncomingState::Receiving;
            s.state_tx.send_replace(IncomingState::Receiving);
            s.vm.clone()
        };
        let vm = self.get(&vm_name)?;
        let sock = self.migration_nbd_socket(vm.id);
        tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(|e| EngineError::Host(format!("cannot connect to {}: {e}", sock.display())))
    }

    /// The daemon's tunnel for `id` ended (`broke`: with an error, say a cut link): unless
    /// QEMU reports the stream complete (soon, after a clean end), the source went away and
    /// the session aborts itself.
    pub async fn incoming_tunnel_closed(&self, id: &str, broke: bool) {
        if broke
            && self
                .incoming_status(id)
                .is_ok_and(|s| s.state == IncomingState::Receiving)
        {
            self.incoming_fail(
                id,
                "the migration tunnel broke before QEMU received all of it",
            )
            .await;
            return;
        }
        let Some(mut rx) = self
            .sessions()
            .lock()
            .get(id)
            .filter(|s| s.offline.is_none())
            .map(|s| s.state_tx.subscribe())
        else {
            return;
        };
        let stuck = tokio::time::timeout(SETTLE, rx.wait_for(|s| *s != IncomingState::Receiving))
            .await
            .is_err();
        if stuck {
            self.incoming_fail(
                id,
                "the migration stream ended before QEMU received all of it",
            )
            .await;
        }
    }

    /// `GET /v1/migrations/incoming/{id}`.
    pub fn incoming_status(&self, id: &str) -> Result<IncomingStatus> {
        let g = self.sessions().lock();
        let s = g.get(id).ok_or_else(|| no_session(id))?;
        Ok(IncomingStatus {
            state: s.state,
            error: s.error.clone(),
        })
    }

    /// `POST /v1/migrations/incoming/{id}/finish`: the VM is this host's from now on.
    pub async fn incoming_finish(&self, id: &str) -> Result<VmInfo> {
        let offline = self
            .sessions()
            .lock()
            .get(id)
            .is_some_and(|s| s.offline.is_some());
        if offline {
            return self.incoming_finish_offline(id).await;
        }
        tracing::debug!(id, "incoming step: finish asked");
        let rx = self
            .sessions()
            .lock()
            .get(id)
            .map(|s| s.state_tx.subscribe())
            .ok_or_else(|| no_session(id))?;
        let mut rx = rx;
        let _ = tokio::time::timeout(SETTLE, rx.wait_for(|s| *s != IncomingState::Receiving))
            .await
            .is_ok();
        let (vm_name, paused, autostart, state, res, fwd, copy_storage) = {
            let g = self.sessions().lock();
            let s = g.get(id).ok_or_else(|| no_session(id))?;
            (
                s.vm.clone(),
                s.paused,
                s.autostart,
                s.state,
                s.reservations.clone(),
                s.forwards.clone(),
                s.copy_storage,
            )
        };
        if state == IncomingState::Committed {
            return self.info(&vm_name);
        }
        if state != IncomingState::Completed {
            return Err(EngineError::WrongState(format!(
                "incoming migration {id:?} is {state:?}, not completed: nothing to finish"
            )));
        }
        let vm = self.get(&vm_name)?;
        let qmp = vm
            .lock()
            .qmp
            .clone()
            .ok_or_else(|| EngineError::Qemu("the incoming QEMU is gone".into()))?;
        if copy_storage {
            let spec = vm.lock().spec.clone();
            self.migration_unexport(&vm, &spec).await;
        }
        // Commit first: the marker goes (durably) and the definition is this host's own. Only
        // then does the guest run here, so a guest that ran on this host is never thrown away
        // while the source continues its older state on a disk this one already wrote.
        self.incoming_commit(id, &vm_name).await?;
        vm.release();
        self.adopt_net_entries(&res, &fwd).await;
        if !paused {
            if let Err(e) = qmp.cont().await {
                // This host owns the VM now (the source learns it from the session's state):
                // it stays paused here rather than run in two places.
                return Err(EngineError::Qemu(format!(
                    "this host owns VM {vm_name:?} now, but cannot continue it ({e}); it is paused: hv resume {vm_name}"
                )));
            }
        }
        tracing::debug!(id, "incoming step: guest continued");
        if autostart {
            if let Err(e) = self.set_autostart(&vm_name, true) {
                tracing::warn!(vm = %vm_name, error = %e, "cannot turn autostart on for the received VM");
            }
        }
        tracing::info!(vm = %vm_name, id, "incoming migration finished: this host owns the VM");
        self.info(&vm_name)
    }

    /// The commit point of a handover, live or offline: the marker goes (durably), the
    /// session's disks stay, and the session says `committed`. A failure fails the session.
    pub(super) async fn incoming_commit(&self, id: &str, vm_name: &str) -> Result<()> {
        let dir = self.inner.cfg.vm_dir(vm_name);
        if let Err(e) = std::fs::remove_file(dir.join(MARKER)) {
            let e = EngineError::Host(format!("cannot commit the incoming VM: {e}"));
            self.incoming_fail(id, &e.to_string()).await;
            return Err(e);
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        self.incoming_keep_disks(&dir);
        self.set_session(id, IncomingState::Committed, None);
        Ok(())
    }

    /// `DELETE /v1/migrations/incoming/{id}`: nothing of the migration is left.
    pub async fn incoming_abort(&self, id: &str) -> Result<()> {
        let state = self
            .sessions()
            .lock()
            .get(id)
            .map(|s| s.state)
            .ok_or_else(|| no_session(id))?;
        if state == IncomingState::Committed {
            return Err(EngineError::WrongState(format!(
                "incoming migration {id:?} was finished: this host owns the VM now"
            )));
        }
        self.incoming_fail(id, "aborted by the source").await;
        Ok(())
    }

    /// Ends a session that did not commit: QEMU, definition and marker are removed.
    pub(super) async fn incoming_fail(&self, id: &str, why: &str) {
        let vm_name = {
            let mut g = self.sessions().lock();
            let Some(s) = g.get_mut(id) else { return };
            if matches!(
                s.state,
                IncomingState::Committed | IncomingState::Aborted | IncomingState::Failed
            ) {
                return;
            }
            s.state = if why == "aborted by the source" {
                IncomingState::Aborted
            } else {
                IncomingState::Failed
            };
            s.error = Some(why.to_string());
            s.state_tx.send_replace(s.state);
            s.vm.clone()
        };
        tracing::warn!(vm = %vm_name, id, why, "incoming migration ended without a handover");
        let offline = self
            .sessions()
            .lock()
            .get(id)
            .and_then(|s| s.offline.clone());
        if let Some(o) = offline {
            self.incoming_drop_offline(&vm_name, &o).await;
            return;
        }
        if let Ok(vm) = self.get(&vm_name) {
            self.drop_incoming_vm(&vm).await;
        }
    }

    /// Stops the incoming VM's QEMU and removes its definition (only a VM still marked
    /// incoming: never one this host owns).
    async fn drop_incoming_vm(&self, vm: &Arc<Vm>) {
        if !self.inner.cfg.vm_dir(&vm.name).join(MARKER).exists() {
            return;
        }
        if let Err(e) = self.destroy_vm(vm).await {
            tracing::error!(vm = %vm.name, error = %e, "cannot stop the incoming QEMU");
        }
        vm.release();
        self.incoming_remove_disks(&self.inner.cfg.vm_dir(&vm.name));
        if let Err(e) = self.remove_definition(vm) {
            tracing::error!(vm = %vm.name, error = %e, "cannot remove the incoming VM's definition");
        }
    }

    /// At start: VMs an earlier hvd was still receiving are removed.
    pub(crate) async fn remove_half_received(&self) {
        let vms: Vec<Arc<Vm>> = self.read_vms().values().cloned().collect();
        for vm in vms {
            if self.inner.cfg.vm_dir(&vm.name).join(MARKER).exists() {
                tracing::warn!(vm = %vm.name, "removing a VM whose incoming migration did not finish before hvd stopped");
                self.drop_incoming_vm(&vm).await;
            }
        }
        // A marker without a definition (a crash between the two).
        if let Ok(rd) = std::fs::read_dir(self.inner.cfg.state_dir.join("vms")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().join(MARKER).exists() && !self.read_vms().contains_key(&name) {
                    self.incoming_remove_disks(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}
