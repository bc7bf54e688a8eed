//! The target of an `--offline` migration: no QEMU and no definition until `finish`. The
//! session's directory `vms/NAME/` carries the `incoming` marker and the list of every layer
//! file it may make (written before the first byte arrives), so an abort, a failure or a
//! restart removes exactly what this migration made. Each `file-N` channel is received by a
//! task of its own through a socket pair whose other end the daemon's tunnel pumps; the
//! `vm-files` channel brings the VM's own files. `finish` defines the VM on the received
//! files, with its snapshot metadata re-pointed at them.

use std::path::PathBuf;
use std::sync::Arc;

use api::{IncomingReady, IncomingRequest, IncomingState, VmInfo};
use model::VmSpec;

use super::incoming::{Session, IDLE_LIMIT, MARKER};
use super::offline::{LayerPlan, Received};
use crate::error::{EngineError, Result};
use crate::Engine;

/// What an offline session has received.
pub(crate) struct Offline {
    req: IncomingRequest,
    /// The definition as this host will run it (disks in the pools of the same name).
    spec: VmSpec,
    received: Received,
    vm_files: Option<Vec<PathBuf>>,
    /// `finish` defined the VM (only then is its definition this session's to remove).
    defined: std::sync::atomic::AtomicBool,
}

impl Offline {
    fn complete(&self) -> bool {
        self.received.complete() && self.vm_files.is_some()
    }
}

/// What one channel brought.
enum Arrived {
    Layer(usize, PathBuf),
    Files(Vec<PathBuf>),
}

fn bad_channel(id: &str, channel: &str) -> EngineError {
    EngineError::NotFound(format!(
        "incoming migration {id:?} has no channel {channel:?}"
    ))
}

impl Engine {
    /// `--offline`: checks passed and `placed` says where each disk goes; records the session.
    pub(super) async fn incoming_prepare_offline(
        &self,
        req: IncomingRequest,
        placed: VmSpec,
    ) -> Result<IncomingReady> {
        let name = req.vm.to_string();
        let dir = self.inner.cfg.vm_dir(&name);
        // Each disk's layers go to the directory of its top image here.
        let mut disks = Vec::new();
        for (d, spec_disk) in req
            .disks
            .iter()
            .zip(placed.disks.iter().filter(|d| !d.readonly))
        {
            let home = spec_disk.path.parent().map(PathBuf::from).ok_or_else(|| {
                EngineError::Invalid(format!("disk {} has no directory", d.target))
            })?;
            let layers: Vec<LayerPlan> = d.layers.iter().map(LayerPlan::from).collect();
            for l in &layers {
                super::offline::check_file_name(&l.file_name)?;
            }
            disks.push((home, layers));
        }
        let list: Vec<PathBuf> = disks
            .iter()
            .flat_map(|(home, layers)| layers.iter().map(move |l| home.join(&l.file_name)))
            .collect();
        if let Some(taken) = list.iter().find(|p| p.exists()) {
            return Err(EngineError::AlreadyExists(format!(
                "{} already exists on {}; remove or rename it there before migrating VM {name:?}",
                taken.display(),
                super::hostname()
            )));
        }
        std::fs::create_dir(&dir).map_err(|e| {
            EngineError::AlreadyExists(format!(
                "cannot receive VM {name:?}: {} cannot be created ({e}); remove it if no VM uses it",
                dir.display()
            ))
        })?;
        let id = super::random_hex(16);
        let written = std::fs::write(dir.join(MARKER), &id)
            .and_then(|_| std::fs::File::open(dir.join(MARKER))?.sync_all())
            .map_err(|e| EngineError::Host(format!("cannot write the session marker: {e}")))
            .and_then(|()| self.incoming_list_disks(&dir, &list));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let n_layers = list.len();
        let offline = Offline {
            req: req.clone(),
            spec: placed,
            received: Received::new(disks),
            vm_files: None,
            defined: Default::default(),
        };
        let (state_tx, _) = tokio::sync::watch::channel(IncomingState::Waiting);
        self.sessions().lock().insert(
            id.clone(),
            Session::offline(
                name.clone(),
                Arc::new(tokio::sync::Mutex::new(offline)),
                state_tx,
            ),
        );
        tracing::info!(vm = %name, id, layers = n_layers, source = %req.source.hostname, "offline migration prepared");
        self.watch_idle(&id, IncomingState::Waiting);
        let mut channels: Vec<String> = (0..n_layers).map(api::migrate::channel::file).collect();
        channels.push(super::vmfiles::CHANNEL.to_string());
        Ok(IncomingReady { id, channels })
    }

    fn offline_session(&self, id: &str) -> Result<(String, Arc<tokio::sync::Mutex<Offline>>)> {
        let mut g = self.sessions().lock();
        let s = g.get_mut(id).ok_or_else(|| {
            EngineError::NotFound(format!("incoming migration {id:?} does not exist"))
        })?;
        let o = s
            .offline
            .clone()
            .ok_or_else(|| EngineError::WrongState(format!("incoming migration {id:?} is live")))?;
        if !matches!(s.state, IncomingState::Waiting | IncomingState::Receiving) {
            return Err(EngineError::WrongState(format!(
                "incoming migration {id:?} is {:?} and takes no more files",
                s.state
            )));
        }
        s.state = IncomingState::Receiving;
        s.state_tx.send_replace(IncomingState::Receiving);
        Ok((s.vm.clone(), o))
    }

    /// The target end of a `file-N` or `vm-files` channel: a socket pair whose other end a
    /// task of this hvd receives from.
    pub(super) async fn incoming_connect_offline(
        &self,
        id: &str,
        channel: &str,
    ) -> Result<tokio::net::UnixStream> {
        let layer = match channel.strip_prefix("file-") {
            Some(n) => Some(n.parse::<usize>().map_err(|_| bad_channel(id, channel))?),
            None => None,
        };
        let (vm_name, o) = self.offline_session(id)?;
        let job = {
            let g = o.lock().await;
            match layer {
                Some(n) => Some(g.received.next(n)?),
                None if g.vm_files.is_some() => {
                    return Err(EngineError::AlreadyExists(format!(
                        "incoming migration {id:?} has its VM files already"
                    )))
                }
                None => None,
            }
        };
        let (ours, theirs) = tokio::net::UnixStream::pair()
            .map_err(|e| EngineError::Host(format!("cannot make a socket pair: {e}")))?;
        let (e, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let mut ours = ours;
            let r = match (&job, layer) {
                (Some((dir, plan, backing)), Some(n)) => {
                    let backing = backing.as_ref().map(|(p, f)| (p.as_path(), *f));
                    e.migration_receive_layer(&mut ours, dir, plan, backing)
                        .await
                        .map(|path| Arrived::Layer(n, path))
                }
                _ => {
                    let dir = e.inner.cfg.vm_dir(&vm_name);
                    super::vmfiles::receive(&mut ours, &dir)
                        .await
                        .map(Arrived::Files)
                }
            };
            // Recorded (and the session completed) before the source hears of it: it goes on
            // to the next layer, or to finish, only then.
            let r = match r {
                Ok(arrived) => {
                    let complete = {
                        let mut g = o.lock().await;
                        match arrived {
                            Arrived::Layer(n, path) => g.received.arrived(n, path),
                            Arrived::Files(made) => g.vm_files = Some(made),
                        }
                        g.complete()
                    };
                    if complete {
                        e.set_session(&id, IncomingState::Completed, None);
                    }
                    super::offline::confirm(&mut ours).await.map(|()| complete)
                }
                Err(err) => Err(err),
            };
            match r {
                Err(err) => {
                    e.incoming_fail(&id, &format!("receiving {}: {err}", job_name(layer)))
                        .await
                }
                Ok(true) => e.watch_idle(&id, IncomingState::Completed),
                Ok(false) => e.watch_offline_idle(&id, o.clone()),
            }
        });
        Ok(theirs)
    }

    /// Between two files: a source that sends nothing more within [`IDLE_LIMIT`] is gone.
    fn watch_offline_idle(&self, id: &str, o: Arc<tokio::sync::Mutex<Offline>>) {
        let (e, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let before = o.lock().await.received.files().len();
            tokio::time::sleep(IDLE_LIMIT).await;
            let (now, done) = {
                let g = o.lock().await;
                (g.received.files().len(), g.complete())
            };
            if now == before && !done {
                e.incoming_fail(&id, "the source stopped sending files")
                    .await;
            }
        });
    }

    /// `finish` of an offline session: the VM is defined on the received files.
    pub(super) async fn incoming_finish_offline(&self, id: &str) -> Result<VmInfo> {
        let (vm_name, state, o) = {
            let g = self.sessions().lock();
            let s = g.get(id).ok_or_else(|| {
                EngineError::NotFound(format!("incoming migration {id:?} does not exist"))
            })?;
            (s.vm.clone(), s.state, s.offline.clone())
        };
        if state == IncomingState::Committed {
            return self.info(&vm_name);
        }
        let Some(o) = o.filter(|_| state == IncomingState::Completed) else {
            return Err(EngineError::WrongState(format!(
                "incoming migration {id:?} is {state:?}, not completed: nothing to finish"
            )));
        };
        let r = async {
            let g = o.lock().await;
            let map = |p: &std::path::Path| g.received.map(p).unwrap_or_else(|| p.to_path_buf());
            let mut spec = g.spec.clone();
            for d in spec.disks.iter_mut().filter(|d| !d.readonly) {
                d.path = map(&d.path);
            }
            spec.autostart = false;
            // The define takes the files as they are: they are recorded already.
            self.define(spec, false).await?;
            g.defined.store(true, std::sync::atomic::Ordering::Relaxed);
            let vm = self.get(&vm_name)?;
            // The TPM's state is its swtpm's, which runs as this VM's uid here (another than on
            // the source); the variable store is granted at each start.
            let ids = self.qemu_ids(vm.id)?;
            let tpm = self.tpm_dir(&vm_name);
            for f in g.vm_files.iter().flatten().filter(|f| f.starts_with(&tpm)) {
                std::os::unix::fs::chown(f, Some(ids.uid), Some(ids.gid)).map_err(|e| {
                    EngineError::Host(format!("cannot give {} to the VM's uid: {e}", f.display()))
                })?;
            }
            let mut req = g.req.clone();
            for s in &mut req.snapshots {
                for d in s.spec.disks.iter_mut().filter(|d| !d.readonly) {
                    d.path = map(&d.path);
                }
                let rows: Vec<crate::store::ExternalDisk> =
                    serde_json::from_value(s.disks.clone()).unwrap_or_default();
                let pm: super::disks::PathMap = rows
                    .iter()
                    .flat_map(|r| [r.image.clone(), r.overlay.clone()])
                    .map(|p| (p.clone(), map(&p)))
                    .collect();
                s.disks = serde_json::to_value(super::disks::retarget_external(&rows, &pm))
                    .unwrap_or_default();
            }
            self.store_snapshots(&vm, &req)?;
            Ok::<bool, EngineError>(g.req.autostart)
        }
        .await;
        let autostart = match r {
            Ok(a) => a,
            Err(e) => {
                self.incoming_fail(id, &format!("defining the received VM: {e}"))
                    .await;
                return Err(e);
            }
        };
        self.incoming_commit(id, &vm_name).await?;
        {
            let g = o.lock().await;
            self.adopt_net_entries(&g.req.reservations, &g.req.forwards)
                .await;
        }
        if autostart {
            if let Err(e) = self.set_autostart(&vm_name, true) {
                tracing::warn!(vm = %vm_name, error = %e, "cannot turn autostart on for the received VM");
            }
        }
        tracing::info!(vm = %vm_name, id, "offline migration finished: this host owns the VM");
        self.info(&vm_name)
    }

    /// An offline session that did not commit: its files, definition (if the define got that
    /// far) and directory go.
    pub(super) async fn incoming_drop_offline(
        &self,
        vm_name: &str,
        o: &Arc<tokio::sync::Mutex<Offline>>,
    ) {
        let dir = self.inner.cfg.vm_dir(vm_name);
        if !dir.join(MARKER).exists() {
            return;
        }
        let g = o.lock().await;
        self.migration_remove_images(&g.received.files());
        self.incoming_remove_disks(&dir);
        if g.defined.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(vm) = self.get(vm_name) {
                if let Err(e) = self.remove_definition(&vm) {
                    tracing::error!(vm = %vm_name, error = %e, "cannot remove the incoming VM's definition");
                }
            }
        }
        if self.get(vm_name).is_ok() {
            // Someone defined a VM of this name meanwhile: its directory is not ours to
            // remove, only what this session put there.
            if let Some(made) = &g.vm_files {
                super::vmfiles::remove(&dir, made);
            }
            let _ = std::fs::remove_file(dir.join(MARKER));
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn job_name(layer: Option<usize>) -> String {
    match layer {
        Some(n) => format!("layer {n}"),
        None => "the VM's files".into(),
    }
}
