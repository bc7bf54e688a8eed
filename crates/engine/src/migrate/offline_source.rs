//! The source of an `--offline` migration: a stopped VM's definition, every layer of each
//! disk's chain (`file-N` channels), its own files (`vm-files`) and snapshot metadata go to
//! the target; the target defines the VM at `finish`. Any failure or a cancel aborts the
//! target (which then holds nothing) and leaves the source untouched. After the handover the
//! source forgets the VM and removes its files (layers other VMs here still use stay), or,
//! with `--keep-source`, keeps it defined with autostart off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{
    IncomingDisk, IncomingRequest, IncomingState, MigrateRequest, MigrationMode, MigrationPhase,
    MigrationProgress, SourceFacts,
};

use super::offline::{self, DiskPlan};
use super::{placement, Peer};
use crate::error::{EngineError, Result};
use crate::operations::{cancel_signal, report_migration};
use crate::Engine;

impl Engine {
    /// `hv migrate --offline`: see the module docs.
    pub(crate) async fn migrate_offline(
        &self,
        name: &str,
        req: MigrateRequest,
        peer: Arc<dyn Peer>,
    ) -> Result<MigrationProgress> {
        let vm = self.get(name)?;
        let _op = vm.begin("migrate")?;
        let started = Instant::now();
        let state = vm.state();
        if state.is_active() {
            return Err(EngineError::WrongState(format!(
                "VM {name:?} is {state}: --offline moves a stopped VM; shut it down first (hv shutdown {name}), or migrate it live"
            )));
        }
        let spec = vm.lock().spec.clone();
        let mut progress = MigrationProgress::new(MigrationPhase::Checking);
        report_migration(&progress);
        let mut resolved = spec.clone();
        self.resolve_volumes(&mut resolved)?;
        // The target places each disk in its pool of the same name: name the pool of every
        // disk that lives in one here (an external snapshot's overlay is a path in its pool).
        let pools = self.migration_pool_dirs()?;
        let mut sent = resolved.clone();
        for d in sent.disks.iter_mut().filter(|d| d.vol.is_none()) {
            if let (Some(p), Some(f)) = (
                placement::pool_of(&d.path, &pools),
                d.path.file_name().and_then(|f| f.to_str()),
            ) {
                d.vol = format!("{}/{f}", p.name).parse().ok();
            }
        }
        let plans: Vec<DiskPlan> = self.migration_offline_plans(&resolved).await?;
        let disks: Vec<IncomingDisk> = plans
            .iter()
            .map(|p| {
                let top = p.layers.last();
                IncomingDisk {
                    target: p.target.clone(),
                    format: top.map(|l| l.format).unwrap_or(model::DiskFormat::Raw),
                    virtual_size: top.map(|l| l.virtual_size).unwrap_or(0),
                    shared: None,
                    layers: p.layers.iter().map(Into::into).collect(),
                }
            })
            .collect();
        let snapshots = self.outgoing_snapshots(vm.id)?;
        let (reservations, forwards) =
            super::netstate::entries_of(name, &spec, &self.network_specs().await);
        let caps = self.caps().await?;
        let (a, b, c) = caps.qemu_version;
        let mut ireq = IncomingRequest {
            vm: spec.name.clone(),
            spec: sent,
            mode: MigrationMode::Offline,
            copy_storage: false,
            source: SourceFacts {
                qemu_version: format!("{a}.{b}.{c}"),
                machine: spec.machine.to_string(),
                cpu_model: "default".into(),
                hostname: super::hostname(),
            },
            disks,
            snapshots,
            current_snapshot: vm.lock().rec.current_snapshot.clone(),
            autostart: spec.autostart,
            reservations,
            forwards,
            check_only: true,
            paused: false,
            postcopy: false,
        };
        peer.incoming(&ireq).await?;
        progress.phase = MigrationPhase::Preparing;
        report_migration(&progress);
        ireq.check_only = false;
        let ready = peer.incoming(&ireq).await?;
        let id = ready.id.clone();
        tracing::info!(vm = name, id, "target prepared the offline migration");

        progress.phase = MigrationPhase::Disks;
        progress.disk_total = plans
            .iter()
            .flat_map(|p| &p.files)
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        report_migration(&progress);
        let vm_dir = self.inner.cfg.vm_dir(name);
        let send = async {
            let total = progress.disk_total;
            let mut last = Instant::now();
            offline::send_all(
                &plans,
                |ch| {
                    let peer = peer.clone();
                    let id = id.clone();
                    async move { peer.tunnel(&id, &ch).await }
                },
                |sent| {
                    if last.elapsed() >= Duration::from_millis(500) {
                        last = Instant::now();
                        let mut p = MigrationProgress::new(MigrationPhase::Disks);
                        (p.disk_total, p.disk_transferred) = (total, sent);
                        report_migration(&p);
                    }
                },
            )
            .await?;
            let files = tokio::task::spawn_blocking(move || super::vmfiles::pack(&vm_dir))
                .await
                .map_err(|e| EngineError::Internal(format!("packing the VM's files: {e}")))??;
            let mut t = peer.tunnel(&id, super::vmfiles::CHANNEL).await?;
            super::vmfiles::send(&files, &mut t).await
        };
        let mut cancel = cancel_signal();
        let cancelled = async {
            match cancel.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|c| *c).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let sent = tokio::select! {
            r = send => r,
            _ = cancelled => Err(EngineError::Cancelled(format!(
                "the offline migration of {name:?} was cancelled; it stays on this host"
            ))),
        };
        if let Err(e) = sent {
            if let Err(ae) = peer.abort(&id).await {
                tracing::warn!(vm = name, error = %ae, "cannot abort the target's incoming VM; it removes itself when the source is gone");
            }
            return Err(e);
        }
        progress.disk_transferred = progress.disk_total;
        progress.phase = MigrationPhase::Handover;
        report_migration(&progress);
        if let Err(e) = peer.finish(&id).await {
            let committed = matches!(
                peer.status(&id).await,
                Ok(s) if s.state == IncomingState::Committed
            );
            if !committed {
                let _ = peer.abort(&id).await;
                return Err(e);
            }
        }
        // The target owns the VM now.
        if req.keep_source {
            let mut spec = vm.lock().spec.clone();
            spec.autostart = false;
            self.save_spec_pub(&vm, spec)?;
        } else {
            self.remove_definition(&vm)?;
            self.drop_net_entries(&ireq.reservations, &ireq.forwards)
                .await;
            for p in plans.iter().rev() {
                for f in p.files.iter().rev() {
                    let users = self.all_users_of(f).await;
                    if users.is_empty() {
                        self.migration_remove_images(std::slice::from_ref(f));
                    } else {
                        tracing::info!(file = %f.display(), ?users, "kept a migrated layer other VMs use");
                    }
                }
            }
        }
        progress.phase = MigrationPhase::Done;
        progress.total_ms = Some(started.elapsed().as_millis() as u64);
        report_migration(&progress);
        tracing::info!(vm = name, total_ms = ?progress.total_ms, "migrated offline");
        Ok(progress)
    }
}
