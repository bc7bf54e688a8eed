//! `--copy-storage` on a VM of this engine: the sockets and the [`storage`] sequences bound to
//! a VM's QEMU. The source orchestration and the incoming session call these; the bytes
//! between the two sockets go through hvd's tunnel (`nbd` channel).
//!
//! - Target: the incoming QEMU serves its new disks on `nbd.sock` in its private run dir.
//! - Source: hvd listens on `nbd-out.sock` in the VM's private run dir (owned by the VM's
//!   QEMU uid, so only that QEMU and hvd reach it); each connection QEMU makes (one per disk)
//!   is tunnelled to the target's `nbd` channel.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use qmp::QmpEvent;
use tokio::sync::broadcast;

use super::storage::{self, DiskCopy, DiskProgress};
use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// The writable disks' targets of a spec, in order.
pub fn writable_targets(spec: &model::VmSpec) -> Vec<String> {
    spec.disks
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.readonly)
        .map(|(i, d)| d.target.clone().unwrap_or_else(|| format!("disk{i}")))
        .collect()
}

/// A running mirror of a source VM's disks into the target.
pub(crate) struct Mirror {
    vm: Arc<Vm>,
    events: broadcast::Receiver<QmpEvent>,
    targets: Vec<String>,
}

impl Mirror {
    /// Waits until every disk's copy is in sync, reporting progress.
    pub(crate) async fn wait_ready(&mut self, on_progress: impl FnMut(DiskProgress)) -> Result<()> {
        let qmp = self.vm.qmp()?;
        storage::mirror_wait_ready(&qmp, &mut self.events, &self.targets, on_progress).await
    }

    /// Bytes copied so far (for the progress line while RAM migrates).
    pub(crate) async fn progress(&self) -> Result<DiskProgress> {
        storage::progress(&*self.vm.qmp()?, &self.targets).await
    }

    /// After RAM migration completed: the target keeps a consistent copy, the source its own
    /// disks. An error means the target's copy cannot be trusted (do not hand over).
    pub(crate) async fn finish(mut self) -> Result<()> {
        let qmp = self.vm.qmp()?;
        storage::mirror_finish(&qmp, &mut self.events, &self.targets).await
    }

    /// On failure or cancel: the source keeps running on its own disks, nothing left in QEMU.
    pub(crate) async fn abort(mut self) {
        if let Ok(qmp) = self.vm.qmp() {
            storage::mirror_abort(&qmp, &mut self.events, &self.targets).await;
        }
    }
}

/// How long the NBD tunnels may take to end once the mirrors stopped.
const PUMPS_END: std::time::Duration = std::time::Duration::from_secs(5);

/// The source's `--copy-storage` in progress: the NBD connections tunnelled to the target
/// and the mirror. Dropped without [`CopyPhase::finish`] (a failure, a cancel), the mirror is
/// aborted in the background: the source keeps running on its own disks.
pub(crate) struct CopyPhase {
    mirror: Option<Mirror>,
    acceptor: tokio::task::JoinHandle<()>,
    /// Dropped (or sent): the acceptor takes no more connections and waits for its pumps.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    socket: PathBuf,
}

impl CopyPhase {
    /// Disk bytes copied so far.
    pub(crate) async fn progress(&self) -> Option<DiskProgress> {
        match &self.mirror {
            Some(m) => m.progress().await.ok(),
            None => None,
        }
    }

    /// After RAM migration completed: see [`Mirror::finish`].
    pub(crate) async fn finish(mut self) -> Result<()> {
        let r = match self.mirror.take() {
            Some(m) => m.finish().await,
            None => Ok(()),
        };
        // QEMU's NBD clients are gone now (`blockdev-del`): the tunnels end cleanly, so the
        // target does not take them for a broken link while its RAM stream is still in flight
        // (it would fail the session). Aborted only if they do not end in time.
        self.stop.take();
        if tokio::time::timeout(PUMPS_END, &mut self.acceptor)
            .await
            .is_err()
        {
            tracing::warn!("the NBD tunnels did not end after the mirrors stopped; closing them");
            self.acceptor.abort();
        }
        r
    }
}

impl Drop for CopyPhase {
    fn drop(&mut self) {
        self.acceptor.abort();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(m) = self.mirror.take() {
            tokio::spawn(m.abort());
        }
    }
}

impl Engine {
    /// Source: the disks phase of `--copy-storage`. Tunnels each NBD connection of the VM's
    /// QEMU to the target's `nbd` channel, mirrors every writable disk and returns once all
    /// are in sync (the mirrors keep running until [`CopyPhase::finish`]). A cancel or a
    /// failure leaves the source as it was.
    pub(crate) async fn migration_copy_phase(
        &self,
        vm: &Arc<Vm>,
        peer: &Arc<dyn super::Peer>,
        id: &str,
        speed: Option<u64>,
        mut on_progress: impl FnMut(DiskProgress),
    ) -> Result<CopyPhase> {
        let listener = self.migration_nbd_listen(vm)?;
        let socket = self.migration_nbd_out_socket(vm.id);
        let (peer2, id2, name) = (peer.clone(), id.to_string(), vm.name.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => match c {
                        Ok((conn, _)) => conn,
                        Err(_) => break,
                    },
                    _ = &mut stopped => break,
                };
                let (peer, id, name) = (peer2.clone(), id2.clone(), name.clone());
                pumps.spawn(async move {
                    match peer.tunnel(&id, api::migrate::channel::NBD).await {
                        Ok(t) => {
                            let idle = super::DISK_CHANNEL_IDLE;
                            if let Err(e) = super::tunnel::pump_with(conn, t, idle).await {
                                tracing::debug!(vm = %name, error = %e, "an NBD tunnel ended");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(vm = %name, error = %e, "cannot open an NBD tunnel to the target")
                        }
                    }
                });
            }
            while pumps.join_next().await.is_some() {}
        });
        let mut phase = CopyPhase {
            mirror: None,
            acceptor,
            stop: Some(stop),
            socket,
        };
        let spec = vm.lock().spec.clone();
        let snapshots: Vec<String> = self
            .inner
            .store
            .load_snapshots(vm.id)?
            .into_iter()
            .map(|s| s.name)
            .collect();
        phase.mirror = Some(self.migration_mirror(vm, &spec, &snapshots, speed).await?);
        let mut cancel = crate::operations::cancel_signal();
        let cancelled = async {
            match cancel.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|c| *c).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let mirror = phase
            .mirror
            .as_mut()
            .ok_or_else(|| EngineError::Internal("no mirror".into()))?;
        tokio::select! {
            r = mirror.wait_ready(&mut on_progress) => r?,
            _ = cancelled => {
                return Err(EngineError::Cancelled(format!(
                    "the migration of {:?} was cancelled while its disks were copied; it keeps running on this host",
                    vm.name
                )));
            }
        }
        Ok(phase)
    }

    /// Target: where the incoming QEMU serves its disks.
    pub(crate) fn migration_nbd_socket(&self, vm_id: i64) -> PathBuf {
        self.private_dir(vm_id).join("nbd.sock")
    }

    /// Source: where hvd takes the source QEMU's NBD connections.
    pub(crate) fn migration_nbd_out_socket(&self, vm_id: i64) -> PathBuf {
        self.private_dir(vm_id).join("nbd-out.sock")
    }

    /// Target: the incoming QEMU serves its writable disks (empty copies) over NBD.
    pub(crate) async fn migration_export(&self, vm: &Vm, spec: &model::VmSpec) -> Result<()> {
        let qmp = vm.qmp()?;
        let disks = storage::disk_nodes(&qmp, &writable_targets(spec)).await?;
        storage::export_start(&qmp, &self.migration_nbd_socket(vm.id), &disks).await
    }

    /// Target: ends the NBD exports (before `cont`, or on abort).
    pub(crate) async fn migration_unexport(&self, vm: &Vm, spec: &model::VmSpec) {
        if let Ok(qmp) = vm.qmp() {
            storage::export_stop(&qmp, &writable_targets(spec)).await;
        }
        let _ = std::fs::remove_file(self.migration_nbd_socket(vm.id));
    }

    /// Source: the socket hvd listens on for the VM's QEMU to reach the target's disks.
    pub(crate) fn migration_nbd_listen(&self, vm: &Vm) -> Result<tokio::net::UnixListener> {
        let path = self.migration_nbd_out_socket(vm.id);
        let _ = std::fs::remove_file(&path);
        let host = |what: &str, e: std::io::Error| {
            EngineError::Host(format!("cannot {what} {}: {e}", path.display()))
        };
        let l = tokio::net::UnixListener::bind(&path).map_err(|e| host("listen on", e))?;
        let ids = self.qemu_ids(vm.id)?;
        std::os::unix::fs::chown(&path, Some(ids.uid), Some(ids.gid))
            .map_err(|e| host("give the VM's QEMU uid", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| host("restrict", e))?;
        Ok(l)
    }

    /// Source: starts mirroring every writable disk of the running `vm` into the target
    /// (through [`Self::migration_nbd_listen`]'s socket, which must be tunnelled by now), at
    /// most `speed` bytes per second. Refused for a VM with snapshots.
    pub(crate) async fn migration_mirror(
        &self,
        vm: &Arc<Vm>,
        spec: &model::VmSpec,
        snapshots: &[String],
        speed: Option<u64>,
    ) -> Result<Mirror> {
        super::placement::check_copy_storage(&vm.name, snapshots)?;
        let qmp = vm.qmp()?;
        let targets = writable_targets(spec);
        let disks: Vec<DiskCopy> = storage::disk_nodes(&qmp, &targets).await?;
        let mut events = vm.subscribe_qmp_events();
        storage::mirror_start(
            &qmp,
            &mut events,
            &self.migration_nbd_out_socket(vm.id),
            &disks,
            speed,
        )
        .await?;
        Ok(Mirror {
            vm: vm.clone(),
            events,
            targets,
        })
    }
}
