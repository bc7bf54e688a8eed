//! The source of a migration: `POST /v1/vms/{name}/migrate` as a cancellable operation.
//!
//! Checks through the target (`check_only`), shared-storage probes next to each disk, the
//! target's incoming VM, then QEMU's `migrate` to a Unix socket hvd listens on in the VM's
//! private run dir, pumped into a tunnel to the target. QMP `MIGRATION` events drive it; a
//! fixed-interval `query-migrate` sample only feeds the progress display. On `completed` the
//! target is asked to finish; until it has answered (or its session says `committed`) the
//! source owns the VM, and any failure cancels, continues the guest here and aborts the target.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{
    IncomingDisk, IncomingRequest, IncomingSnapshot, IncomingState, MigrateRequest, MigrationMode,
    MigrationPhase, MigrationProgress, SharedProbe, SourceFacts,
};
use model::VmState;
use serde_json::{json, Value};

use super::Peer;
use crate::error::{EngineError, Result};
use crate::operations::{cancel_signal, report_migration};
use crate::vm::Vm;
use crate::Engine;

/// The name prefix of shared-storage probe files (the target reads only such files).
pub(crate) const PROBE_PREFIX: &str = ".hv-migrate-probe-";
/// How often progress is sampled for display.
const SAMPLE: Duration = Duration::from_millis(500);
/// QEMU's default bandwidth cap (32 MiB/s) is far below a LAN; without `--bandwidth` hv lifts it.
const UNLIMITED: u64 = 100 << 30;

/// Probe files written next to the disks, removed on drop.
struct Probes(Vec<PathBuf>);

impl Drop for Probes {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn qemu_err(what: &str) -> impl FnOnce(qmp::QmpError) -> EngineError + '_ {
    move |e| EngineError::Qemu(format!("{what}: {e}"))
}

fn progress_of(phase: MigrationPhase, q: &Value) -> MigrationProgress {
    let ram = &q["ram"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut p = MigrationProgress::new(phase);
    p.ram_total = n(&ram["total"]);
    p.ram_transferred = n(&ram["transferred"]);
    p.ram_remaining = n(&ram["remaining"]);
    p.dirty_rate = n(&ram["dirty-pages-rate"]) * n(&ram["page-size"]).max(1);
    p.expected_downtime_ms = n(&q["expected-downtime"]);
    p.downtime_ms = q["downtime"].as_u64();
    p.total_ms = q["total-time"].as_u64();
    p
}

/// A step of a migration and the time since its request (debug level, to find where time goes).
fn step(vm: &str, started: Instant, what: &str) {
    tracing::debug!(
        vm,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "migrate step: {what}"
    );
}

impl Engine {
    /// Migrates the running VM `name` to the hvd behind `peer`. Run as an operation with
    /// `Cancel::Cooperative`: a cancel stops QEMU's migration and leaves the VM running here.
    pub async fn migrate(
        &self,
        name: &str,
        req: MigrateRequest,
        peer: Arc<dyn Peer>,
    ) -> Result<MigrationProgress> {
        if req.offline {
            return self.migrate_offline(name, req, peer).await;
        }
        let vm = self.get(name)?;
        let _op = vm.begin("migrate")?;
        let started = Instant::now();
        let (spec, state, argv) = {
            let st = vm.lock();
            (st.spec.clone(), st.state, st.rec.argv.clone())
        };
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(EngineError::WrongState(format!(
                "VM {name:?} is {state}: a live migration needs it running (or paused)"
            )));
        }
        if spec.ephemeral {
            return Err(EngineError::WrongState(format!(
                "VM {name:?} is ephemeral: its writes live in overlays on this host only; it cannot migrate"
            )));
        }
        if req.copy_storage {
            let snaps: Vec<String> = self
                .inner
                .store
                .load_snapshots(vm.id)?
                .into_iter()
                .map(|s| s.name)
                .collect();
            super::placement::check_copy_storage(name, &snaps)?;
        }
        let mut progress = MigrationProgress::new(MigrationPhase::Checking);
        report_migration(&progress);
        let caps = self.caps().await?;
        let (a, b, c) = caps.qemu_version;
        let mut resolved = spec.clone();
        self.resolve_volumes(&mut resolved)?;
        let mut probes = Probes(Vec::new());
        let mut disks = Vec::new();
        for (i, d) in resolved.disks.iter().enumerate() {
            let target = d.target.clone().unwrap_or_else(|| format!("disks[{i}]"));
            let format = self.image_format(&d.path, d.format, &target).await?;
            let token = super::random_hex(16);
            let probe = d
                .path
                .parent()
                .filter(|_| !req.copy_storage)
                .map(|dir| dir.join(format!("{PROBE_PREFIX}{}", super::random_hex(8))));
            let shared = match probe {
                Some(p) if std::fs::write(&p, &token).is_ok() => {
                    probes.0.push(p.clone());
                    Some(SharedProbe { path: p, token })
                }
                _ => None,
            };
            let virtual_size = match req.copy_storage {
                true => super::disks::virtual_size(&d.path, format).await?,
                false => 0,
            };
            disks.push(IncomingDisk {
                target,
                format,
                virtual_size,
                shared,
                layers: vec![],
            });
        }
        let snapshots = self.outgoing_snapshots(vm.id)?;
        let (reservations, forwards) =
            super::netstate::entries_of(name, &spec, &self.network_specs().await);
        let mut ireq = IncomingRequest {
            vm: spec.name.clone(),
            spec: spec.clone(),
            mode: MigrationMode::Live,
            copy_storage: req.copy_storage,
            source: SourceFacts {
                qemu_version: format!("{a}.{b}.{c}"),
                machine: spec.machine.to_string(),
                cpu_model: super::checks::cpu_model(&argv),
                hostname: super::hostname(),
            },
            disks,
            snapshots,
            current_snapshot: vm.lock().rec.current_snapshot.clone(),
            autostart: spec.autostart,
            reservations,
            forwards,
            check_only: true,
            paused: state == VmState::Paused,
            postcopy: req.postcopy,
        };
        peer.incoming(&ireq).await?;
        step(name, started, "target checked");
        progress.phase = MigrationPhase::Preparing;
        report_migration(&progress);
        ireq.check_only = false;
        let ready = peer.incoming(&ireq).await?;
        drop(probes);
        tracing::info!(vm = name, id = ready.id, "target prepared the incoming VM");
        step(name, started, "target prepared");
        let outcome = self
            .migrate_memory(&vm, &req, &peer, &ready.id, &mut progress, started)
            .await;
        match outcome {
            Ok(()) => {}
            Err(e) => {
                self.migrate_rollback(&vm, &peer, &ready.id, state).await;
                return Err(e);
            }
        }
        // Handover: the target owns the VM once it says so.
        let completed_at = Instant::now();
        progress.phase = MigrationPhase::Handover;
        report_migration(&progress);
        step(name, started, "asking the target to finish");
        let committed = match peer.finish(&ready.id).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(vm = name, error = %e, "finish failed; asking the target who owns the VM");
                let mut known = None;
                for _ in 0..5 {
                    match peer.status(&ready.id).await {
                        Ok(s) => {
                            known = Some(s.state == IncomingState::Committed);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
                match known {
                    Some(true) => true,
                    Some(false) => {
                        self.migrate_rollback(&vm, &peer, &ready.id, state).await;
                        return Err(e);
                    }
                    None => {
                        // Neither side can tell: keep the source paused (never both running)
                        // and say so; the target aborts itself when no finish comes.
                        return Err(EngineError::Host(format!(
                            "the target did not confirm the handover ({e}) and cannot be asked; VM {name:?} stays paused here: check the target (hv --remote ... list) and resume it here (hv resume {name}) only if the target does not run it"
                        )));
                    }
                }
            }
        };
        debug_assert!(committed);
        step(name, started, "target finished");
        // The guest's pause as hv sees it: QEMU's switchover plus the handover (the target
        // continues the guest before it answers finish).
        let handover = completed_at.elapsed().as_millis() as u64;
        tracing::info!(vm = name, qemu_downtime_ms = ?progress.downtime_ms, handover_ms = handover, "handover done");
        progress.downtime_ms = Some(progress.downtime_ms.unwrap_or(0) + handover);
        // The target runs the VM: this QEMU goes, and the definition with it.
        if let Err(e) = self.destroy_vm(&vm).await {
            tracing::error!(vm = name, error = %e, "cannot stop the source QEMU after the handover");
        }
        step(name, started, "source QEMU stopped");
        if req.keep_source {
            let mut spec = vm.lock().spec.clone();
            spec.autostart = false;
            self.save_spec_pub(&vm, spec)?;
        } else {
            self.remove_definition(&vm)?;
            self.drop_net_entries(&ireq.reservations, &ireq.forwards)
                .await;
            if req.copy_storage {
                self.migration_drop_copied(&resolved);
            }
        }
        progress.phase = MigrationPhase::Done;
        progress.total_ms = Some(started.elapsed().as_millis() as u64);
        report_migration(&progress);
        tracing::info!(vm = name, downtime_ms = ?progress.downtime_ms, total_ms = ?progress.total_ms, "migrated");
        Ok(progress)
    }

    /// The VM's snapshot rows as the target receives them.
    pub(super) fn outgoing_snapshots(&self, vm_id: i64) -> Result<Vec<IncomingSnapshot>> {
        let mut out = Vec::new();
        for s in self.inner.store.load_snapshots(vm_id)? {
            let disks = serde_json::to_value(&s.disks).map_err(|e| {
                EngineError::Internal(format!("snapshot {:?}'s disk records: {e}", s.name))
            })?;
            out.push(IncomingSnapshot {
                name: s.name,
                parent: s.parent,
                created_at: s.created_at,
                vm_state: s.vm_state,
                kind: s.kind,
                memory: s.memory,
                description: s.description,
                spec: s.spec,
                disks,
            });
        }
        Ok(out)
    }

    /// Disks (none with shared storage) then RAM: returns once QEMU reports `completed`.
    async fn migrate_memory(
        &self,
        vm: &Arc<Vm>,
        req: &MigrateRequest,
        peer: &Arc<dyn Peer>,
        id: &str,
        progress: &mut MigrationProgress,
        started: Instant,
    ) -> Result<()> {
        // The disks phase: with shared storage nothing is copied.
        let copy = match req.copy_storage {
            true => {
                progress.phase = MigrationPhase::Disks;
                report_migration(progress);
                let p = &mut *progress;
                let phase = self
                    .migration_copy_phase(vm, peer, id, req.bandwidth, |d| {
                        p.disk_total = d.total;
                        p.disk_transferred = d.transferred;
                        report_migration(p);
                    })
                    .await?;
                Some(phase)
            }
            false => None,
        };
        let qmp = vm
            .lock()
            .qmp
            .clone()
            .ok_or_else(|| EngineError::Qemu(format!("VM {:?} has no QEMU", vm.name)))?;
        let mut caps = vec![json!({"capability": "events", "state": true})];
        if req.postcopy {
            caps.push(json!({"capability": "postcopy-ram", "state": true}));
        }
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": caps })),
        )
        .await
        .map_err(qemu_err("migrate-set-capabilities"))?;
        let mut params = json!({ "max-bandwidth": req.bandwidth.unwrap_or(UNLIMITED) });
        if let Some(d) = req.downtime_ms {
            params["downtime-limit"] = json!(d);
        }
        qmp.execute("migrate-set-parameters", Some(params))
            .await
            .map_err(qemu_err("migrate-set-parameters"))?;
        // QEMU connects to hvd's socket in its private dir; hvd pumps it to the target.
        let sock = self.private_dir(vm.id).join("mig-out.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| EngineError::Host(format!("cannot listen on {}: {e}", sock.display())))?;
        let _sock_guard = Probes(vec![sock.clone()]);
        let ids = self.qemu_ids(vm.id)?;
        std::os::unix::fs::chown(&sock, Some(ids.uid), Some(ids.gid)).map_err(|e| {
            EngineError::Host(format!("cannot hand {} to QEMU: {e}", sock.display()))
        })?;
        step(&vm.name, started, "migration parameters set");
        let tunnel = peer.tunnel(id, api::migrate::channel::MEMORY).await?;
        step(&vm.name, started, "memory tunnel open");
        let mut events = vm.subscribe_qmp_events();
        progress.phase = MigrationPhase::Memory;
        report_migration(progress);
        qmp.execute(
            "migrate",
            Some(json!({ "uri": format!("unix:{}", sock.display()) })),
        )
        .await
        .map_err(qemu_err("migrate"))?;
        let conn = match tokio::time::timeout(Duration::from_secs(10), listener.accept()).await {
            Ok(Ok((c, _))) => c,
            _ => {
                return Err(EngineError::Qemu(
                    "QEMU did not connect to hvd's migration socket".into(),
                ))
            }
        };
        step(&vm.name, started, "QEMU connected");
        let mut pump = tokio::spawn(super::tunnel::pump(conn, tunnel));
        let mut cancel = cancel_signal();
        let mut tick = tokio::time::interval(SAMPLE);
        let mut postcopy_started = false;
        let mut pump_done = false;
        loop {
            let cancelled = async {
                match cancel.as_mut() {
                    Some(rx) => {
                        let _ = rx.wait_for(|c| *c).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.event == "MIGRATION" => match ev.data["status"].as_str() {
                        Some("completed") => {
                            step(&vm.name, started, "QEMU reports completed");
                            break;
                        }
                        Some("failed") => {
                            let q = qmp.execute("query-migrate", None).await.unwrap_or_default();
                            return Err(EngineError::Qemu(format!(
                                "QEMU's migration failed: {}",
                                q["error-desc"].as_str().unwrap_or("no reason given (the link to the target may have broken)")
                            )));
                        }
                        Some("cancelled") => {
                            return Err(EngineError::Cancelled("the migration was cancelled".into()))
                        }
                        Some("device") | Some("pre-switchover") => {
                            step(&vm.name, started, "QEMU in switchover");
                            progress.phase = MigrationPhase::Switchover;
                            report_migration(progress);
                        }
                        _ => {}
                    },
                    Ok(ev) if ev.event == "MIGRATION_PASS" => {
                        if req.postcopy && !postcopy_started && ev.data["pass"].as_u64().unwrap_or(0) >= 2 {
                            postcopy_started = true;
                            qmp.execute("migrate-start-postcopy", None)
                                .await
                                .map_err(qemu_err("migrate-start-postcopy"))?;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(EngineError::Qemu(format!("QEMU of {:?} ended during the migration", vm.name))),
                },
                _ = tick.tick() => {
                    if let Ok(q) = qmp.execute("query-migrate", None).await {
                        let phase = progress.phase;
                        *progress = progress_of(phase, &q);
                        if let Some(d) = match &copy { Some(c) => c.progress().await, None => None } {
                            (progress.disk_total, progress.disk_transferred) = (d.total, d.transferred);
                        }
                        report_migration(progress);
                    }
                }
                r = &mut pump, if !pump_done => {
                    pump_done = true;
                    step(&vm.name, started, "memory tunnel ended");
                    if let Ok(Err(e)) = r {
                        tracing::warn!(vm = %vm.name, error = %e, "the migration tunnel broke");
                    }
                }
                _ = cancelled => {
                    return Err(EngineError::Cancelled(format!(
                        "the migration of {:?} was cancelled; it keeps running on this host",
                        vm.name
                    )));
                }
            }
        }
        // The target's disks hold a consistent copy only once the mirrors stopped in sync.
        let disk = match &copy {
            Some(c) => c.progress().await,
            None => None,
        };
        if let Some(c) = copy {
            c.finish().await?;
        }
        let q = qmp
            .execute("query-migrate", None)
            .await
            .map_err(qemu_err("query-migrate"))?;
        *progress = progress_of(MigrationPhase::Handover, &q);
        if let Some(d) = disk {
            (progress.disk_total, progress.disk_transferred) = (d.total, d.transferred);
        }
        progress.total_ms = Some(started.elapsed().as_millis() as u64);
        // Let the tunnel deliver QEMU's last bytes before the target is asked to finish.
        if !pump_done {
            let _ = tokio::time::timeout(Duration::from_secs(30), pump).await;
            step(&vm.name, started, "memory tunnel ended");
        }
        Ok(())
    }

    /// After a failure before the handover: QEMU's migration stops, the guest runs here again
    /// (unless it was paused before), the target drops what it prepared.
    async fn migrate_rollback(&self, vm: &Arc<Vm>, peer: &Arc<dyn Peer>, id: &str, was: VmState) {
        let qmp = vm.lock().qmp.clone();
        if let Some(q) = &qmp {
            let active = |v: &Value| {
                matches!(
                    v["status"].as_str(),
                    Some("active" | "device" | "cancelling" | "pre-switchover" | "setup")
                )
            };
            let mut events = vm.subscribe_qmp_events();
            if q.execute("query-migrate", None)
                .await
                .is_ok_and(|v| active(&v))
            {
                let _ = q.execute("migrate_cancel", None).await;
                // QEMU ends the migration asynchronously: wait (bounded) for its event.
                let _ = Vm::wait_qmp_event(&mut events, Duration::from_secs(10), |ev| {
                    ev.event == "MIGRATION" && !active(&ev.data)
                })
                .await;
            }
            if was == VmState::Running {
                if let Ok(s) = q.query_status().await {
                    if s != "running" {
                        if let Err(e) = q.cont().await {
                            tracing::error!(vm = %vm.name, error = %e, "cannot continue the guest after a failed migration");
                        }
                    }
                }
            }
        }
        if let Err(e) = peer.abort(id).await {
            tracing::warn!(vm = %vm.name, error = %e, "cannot abort the target's incoming VM; it removes itself when the source is gone");
        }
    }
}
