//! Snapshots of a VM: internal qcow2 snapshots, with RAM and device state when taken from a
//! running VM (QMP `snapshot-save`/`snapshot-load`/`snapshot-delete` jobs, reverted in place
//! without restarting QEMU) or disk-only when taken from a stopped one (`qemu-img snapshot`).
//! The metadata (tree, VM state, the spec at that time) lives in the database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{CreateSnapshotRequest, SnapshotInfo};
use host_storage::SnapshotOp;
use model::{DiskFormat, VmSpec, VmState};
use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::store::SnapshotRow;
use crate::vm::Vm;
use crate::{now_secs, Engine};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

impl Engine {
    /// The writable disks that hold internal snapshots (their node names and paths), after
    /// checking that every one of them can.
    fn snapshot_disks(&self, vm: &Vm) -> Result<Vec<(String, std::path::PathBuf)>> {
        let mut spec = vm.lock().spec.clone();
        if spec.ephemeral {
            return Err(EngineError::Invalid(format!("VM {:?} is ephemeral: its disk writes are discarded at power-off, so there is nothing to snapshot", vm.name)));
        }
        self.resolve_volumes(&mut spec)?;
        let mut out = Vec::new();
        for (i, d) in spec.disks.iter().enumerate().filter(|(_, d)| !d.readonly) {
            let (target, node) = qemu_argv::disk_ids(d, i);
            if d.format != Some(DiskFormat::Qcow2) {
                return Err(EngineError::Invalid(format!(
                    "disk {target} ({}) is raw: raw images cannot hold snapshots; convert it to qcow2 (hv vol import/clone into a qcow2 volume) first",
                    d.path.display()
                )));
            }
            out.push((node, d.path.clone()));
        }
        if out.is_empty() {
            return Err(EngineError::Invalid(format!(
                "VM {:?} has no writable qcow2 disk to hold a snapshot",
                vm.name
            )));
        }
        Ok(out)
    }

    fn snapshot_row(&self, vm: &Vm, name: &str) -> Result<SnapshotRow> {
        self.inner
            .store
            .load_snapshots(vm.id)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "VM {} has no snapshot {name} (hv snapshot list {} shows them)",
                    vm.name, vm.name
                ))
            })
    }

    /// Runs a QMP job and waits for it to conclude; its error, if any, becomes ours.
    ///
    /// A job that succeeds passes through `pending` and never through `aborting`: then there is
    /// no error to fetch, so the usual path costs the command and its events only. Otherwise
    /// `query-jobs` says what went wrong. The dismissal is sent without waiting for its reply
    /// (job ids are unique, so a job left undismissed blocks nothing).
    async fn run_job(&self, vm: &Vm, command: &str, mut args: Value) -> Result<()> {
        let qmp = vm.qmp()?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Unique also across hvd restarts (a job of a killed hvd may still be in QEMU).
        let id = format!(
            "hv-{command}-{}-{}-{n}",
            std::process::id(),
            crate::now_ms()
        );
        args["job-id"] = json!(id);
        let started = Instant::now();
        let mut events = vm.subscribe_qmp_events();
        qmp.execute(command, Some(args)).await.map_err(qemu)?;
        let (pending, aborting) = (AtomicBool::new(false), AtomicBool::new(false));
        let concluded = Vm::wait_qmp_event(&mut events, JOB_TIMEOUT, |ev| {
            if ev.event != "JOB_STATUS_CHANGE" || ev.data["id"] != json!(id) {
                return false;
            }
            match ev.data["status"].as_str() {
                Some("pending") => pending.store(true, Ordering::Relaxed),
                Some("aborting") => aborting.store(true, Ordering::Relaxed),
                Some("concluded") => return true,
                _ => {}
            }
            false
        })
        .await?;
        if !concluded {
            return Err(EngineError::Timeout(format!(
                "{command} did not finish within {} s",
                JOB_TIMEOUT.as_secs()
            )));
        }
        let succeeded = pending.into_inner() && !aborting.into_inner();
        let error = if succeeded {
            None
        } else {
            let jobs = qmp.execute("query-jobs", None).await.map_err(qemu)?;
            jobs.as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == json!(id)))
                .and_then(|j| j["error"].as_str().map(str::to_string))
        };
        tracing::debug!(
            job_id = id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            succeeded = error.is_none(),
            "QMP job concluded"
        );
        let dismiss = qmp.clone();
        tokio::spawn(async move {
            if let Err(e) = dismiss
                .execute("job-dismiss", Some(json!({ "id": id })))
                .await
            {
                tracing::debug!(job_id = id, error = %e, "cannot dismiss a QMP job");
            }
        });
        match error {
            Some(e) => Err(EngineError::Qemu(format!("{command} failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Does any of `nodes` hold an internal snapshot named `tag`?
    async fn live_tag_exists(&self, vm: &Vm, nodes: &[&str], tag: &str) -> Result<bool> {
        let all = vm
            .qmp()?
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await
            .map_err(qemu)?;
        Ok(all.as_array().into_iter().flatten().any(|n| {
            n["node-name"]
                .as_str()
                .is_some_and(|name| nodes.contains(&name))
                && n["image"]["snapshots"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == tag)
        }))
    }

    fn snapshot_info(
        &self,
        vm: &Vm,
        rows: &[SnapshotRow],
        row: &SnapshotRow,
        with_spec: bool,
    ) -> SnapshotInfo {
        let current = vm.lock().rec.current_snapshot.clone();
        SnapshotInfo {
            name: row.name.clone(),
            parent: row.parent.clone(),
            created_at: row.created_at,
            vm_state: row.vm_state,
            kind: row.kind.clone(),
            memory: row.memory,
            description: row.description.clone(),
            current: current.as_deref() == Some(row.name.as_str()),
            children: rows
                .iter()
                .filter(|r| r.parent.as_deref() == Some(row.name.as_str()))
                .map(|r| r.name.clone())
                .collect(),
            spec: with_spec.then(|| row.spec.redacted()),
        }
    }

    pub fn snapshot_list(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        let vm = self.get(name)?;
        let rows = self.inner.store.load_snapshots(vm.id)?;
        Ok(rows
            .iter()
            .map(|r| self.snapshot_info(&vm, &rows, r, false))
            .collect())
    }

    pub fn snapshot_get(&self, name: &str, snap: &str) -> Result<SnapshotInfo> {
        let vm = self.get(name)?;
        let rows = self.inner.store.load_snapshots(vm.id)?;
        let row = rows.iter().find(|r| r.name == snap).ok_or_else(|| {
            EngineError::NotFound(format!(
                "VM {name} has no snapshot {snap} (hv snapshot list {name} shows them)"
            ))
        })?;
        Ok(self.snapshot_info(&vm, &rows, row, true))
    }

    /// The snapshot the VM's current state descends from.
    pub fn snapshot_current(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        let vm = self.get(name)?;
        let current = vm.lock().rec.current_snapshot.clone();
        current.map(|c| self.snapshot_get(name, &c)).transpose()
    }

    fn set_current(&self, vm: &Vm, snap: Option<String>) -> Result<()> {
        vm.lock().rec.current_snapshot = snap;
        self.persist_runtime_pub(vm)
    }

    /// `hv snapshot create`.
    pub async fn snapshot_create(
        &self,
        name: &str,
        req: CreateSnapshotRequest,
    ) -> Result<SnapshotInfo> {
        let started = Instant::now();
        let vm = self.get(name)?;
        let _op = vm.begin("snapshot create")?;
        let snap = req.name.to_string();
        if snap == "current" {
            return Err(EngineError::Invalid(
                "\"current\" names the current snapshot in the API; pick another snapshot name"
                    .into(),
            ));
        }
        let rows = self.inner.store.load_snapshots(vm.id)?;
        if rows.iter().any(|r| r.name == snap) {
            return Err(EngineError::AlreadyExists(format!(
                "VM {name} already has a snapshot {snap}; pick another name"
            )));
        }
        let (want, other) = if req.disk_only {
            ("external", "internal")
        } else {
            ("internal", "external")
        };
        if rows.iter().any(|r| r.kind == other) {
            return Err(EngineError::Invalid(format!(
                "VM {name} has {other} snapshots; mixing internal and external snapshots in one VM can lose data \
                 (an internal snapshot inside an image that later became a read-only backing file is easy to lose), \
                 so hv takes only {other} snapshots of it; delete those first to switch to {want}"
            )));
        }
        let state = vm.state();
        let (spec, parent) = {
            let st = vm.lock();
            (st.spec.clone(), st.rec.current_snapshot.clone())
        };
        if req.disk_only {
            let row = SnapshotRow {
                name: snap.clone(),
                parent,
                created_at: now_secs(),
                vm_state: state,
                kind: "external".into(),
                memory: false,
                description: req.description,
                spec,
                disks: Vec::new(),
            };
            let row = self.external_create(&vm, &snap, row).await?;
            self.set_current(&vm, Some(snap.clone()))?;
            tracing::info!(vm = name, snapshot = snap, "external snapshot created");
            let rows = self.inner.store.load_snapshots(vm.id)?;
            return Ok(self.snapshot_info(&vm, &rows, &row, false));
        }
        self.refuse_ram_snapshot(&spec, state)?;
        let disks = self.snapshot_disks(&vm)?;
        let memory = match state {
            VmState::Running | VmState::Paused => {
                let nodes: Vec<&str> = disks.iter().map(|(n, _)| n.as_str()).collect();
                let save = json!({ "tag": snap, "vmstate": nodes[0], "devices": nodes });
                if let Err(e) = self.run_job(&vm, "snapshot-save", save.clone()).await {
                    // A tag with this name but no metadata is left from an interrupted create;
                    // snapshot-save refuses to overwrite it. Looked for only after a failure,
                    // which keeps a query of every block node off the usual path.
                    if !self.live_tag_exists(&vm, &nodes, &snap).await? {
                        return Err(e);
                    }
                    tracing::warn!(
                        vm = name,
                        snapshot = snap,
                        "removing a snapshot tag left by an interrupted create"
                    );
                    self.run_job(
                        &vm,
                        "snapshot-delete",
                        json!({ "tag": snap, "devices": nodes }),
                    )
                    .await?;
                    self.run_job(&vm, "snapshot-save", save).await?;
                }
                true
            }
            VmState::Shutoff | VmState::Crashed => {
                // A tag with this name but no metadata is left from an interrupted create.
                for (_, path) in &disks {
                    let stale = host_storage::info(path, DiskFormat::Qcow2)
                        .await
                        .map(|i| i.snapshots.iter().any(|s| s.name == snap))
                        .unwrap_or(false);
                    if stale {
                        tracing::warn!(vm = name, snapshot = snap, disk = %path.display(), "removing a snapshot tag left by an interrupted create");
                        host_storage::snapshot(path, SnapshotOp::Delete, &snap)
                            .await
                            .map_err(|e| EngineError::Host(e.to_string()))?;
                    }
                }
                for (i, (_, path)) in disks.iter().enumerate() {
                    if let Err(e) = host_storage::snapshot(path, SnapshotOp::Create, &snap).await {
                        for (_, done) in &disks[..i] {
                            let _ = host_storage::snapshot(done, SnapshotOp::Delete, &snap).await;
                        }
                        return Err(EngineError::Host(e.to_string()));
                    }
                }
                false
            }
            s => {
                return Err(EngineError::Invalid(format!(
                    "VM {name} is {s}; wait until it is running or shut off"
                )))
            }
        };
        let row = SnapshotRow {
            name: snap.clone(),
            parent,
            created_at: now_secs(),
            vm_state: state,
            kind: "internal".into(),
            memory,
            description: req.description,
            spec,
            disks: Vec::new(),
        };
        // The row and the new current snapshot go to the database in one commit.
        let rec = {
            let mut st = vm.lock();
            st.rec.current_snapshot = Some(snap.clone());
            st.rec.clone()
        };
        if let Err(e) = self.inner.store.insert_snapshot(vm.id, &row, &rec) {
            vm.lock().rec.current_snapshot = row.parent.clone();
            return Err(e);
        }
        tracing::info!(
            vm = name,
            snapshot = snap,
            memory,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot created"
        );
        self.snapshot_event(name, &snap, api::Change::Created);
        let rows = self.inner.store.load_snapshots(vm.id)?;
        Ok(self.snapshot_info(&vm, &rows, &row, false))
    }

    /// `hv snapshot revert`: disks, and RAM when the snapshot has it, go back; so does the spec.
    pub async fn snapshot_revert(&self, name: &str, snap: &str) -> Result<SnapshotInfo> {
        let started = Instant::now();
        let vm = self.get(name)?;
        let _op = vm.begin("snapshot revert")?;
        let row = self.snapshot_row(&vm, snap)?;
        let state = vm.state();
        if row.kind == "external" {
            let rows = self.inner.store.load_snapshots(vm.id)?;
            self.external_revert(&vm, &row, &rows).await?;
        } else if row.memory {
            self.revert_with_memory(&vm, &row, state).await?;
        } else {
            if state.is_active() {
                return Err(EngineError::InvalidState {
                    vm: name.into(),
                    source: model::InvalidTransition {
                        action: model::Action::Start,
                        state,
                        hint: "; the snapshot was taken while the VM was off and has no RAM state: shut the VM down before reverting to it",
                    },
                });
            }
            self.save_spec_pub(&vm, row.spec.clone())?;
            for (_, path) in self.snapshot_disks(&vm)? {
                host_storage::snapshot(&path, SnapshotOp::Apply, snap)
                    .await
                    .map_err(|e| EngineError::Host(e.to_string()))?;
            }
        }
        self.set_current(&vm, Some(snap.to_string()))?;
        tracing::info!(
            vm = name,
            snapshot = snap,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reverted"
        );
        self.snapshot_event(name, snap, api::Change::Reverted);
        let rows = self.inner.store.load_snapshots(vm.id)?;
        Ok(self.snapshot_info(&vm, &rows, &row, false))
    }

    async fn revert_with_memory(
        &self,
        vm: &Arc<Vm>,
        row: &SnapshotRow,
        state: VmState,
    ) -> Result<()> {
        match state {
            VmState::Running | VmState::Paused => {
                let disks = self.snapshot_disks(vm)?;
                let nodes: Vec<&str> = disks.iter().map(|(n, _)| n.as_str()).collect();
                self.run_job(
                    vm,
                    "snapshot-load",
                    json!({ "tag": row.name, "vmstate": nodes[0], "devices": nodes }),
                )
                .await?;
                let qmp = vm.qmp()?;
                if row.vm_state == VmState::Paused {
                    qmp.stop().await.map_err(qemu)?;
                } else if vm.state() == VmState::Paused
                    || qmp.query_status().await.map_err(qemu)? != "running"
                {
                    qmp.cont().await.map_err(qemu)?;
                }
                // The spec is the snapshot's, from the next start on (the running devices are).
                self.save_spec_pub(vm, row.spec.clone())
            }
            VmState::Shutoff | VmState::Crashed => {
                self.save_spec_pub(vm, row.spec.clone())?;
                let spec: VmSpec = row.spec.clone();
                self.launch(vm, spec, row.vm_state == VmState::Paused, Some(&row.name))
                    .await
            }
            s => Err(EngineError::Invalid(format!(
                "VM {} is {s}; wait until it is running or shut off",
                vm.name
            ))),
        }
    }

    /// `hv snapshot delete`: its children move up to its parent; no other snapshot's data and
    /// not the current state depend on an internal snapshot, so nothing else is lost.
    pub async fn snapshot_delete(&self, name: &str, snap: &str) -> Result<()> {
        let vm = self.get(name)?;
        let _op = vm.begin("snapshot delete")?;
        let row = self.snapshot_row(&vm, snap)?;
        if row.kind == "external" {
            let rows = self.inner.store.load_snapshots(vm.id)?;
            self.external_delete(&vm, &row, &rows).await?;
        } else if vm.state().is_active() {
            let disks = self.snapshot_disks(&vm)?;
            let nodes: Vec<&str> = disks.iter().map(|(n, _)| n.as_str()).collect();
            self.run_job(
                &vm,
                "snapshot-delete",
                json!({ "tag": snap, "devices": nodes }),
            )
            .await?;
        } else {
            for (_, path) in &self.snapshot_disks(&vm)? {
                let has = host_storage::info(path, DiskFormat::Qcow2)
                    .await
                    .map(|i| i.snapshots.iter().any(|s| s.name == snap))
                    .unwrap_or(false);
                if has {
                    host_storage::snapshot(path, SnapshotOp::Delete, snap)
                        .await
                        .map_err(|e| EngineError::Host(e.to_string()))?;
                }
            }
        }
        self.inner
            .store
            .delete_snapshot(vm.id, snap, row.parent.as_deref())?;
        if vm.lock().rec.current_snapshot.as_deref() == Some(snap) {
            self.set_current(&vm, row.parent.clone())?;
        }
        tracing::info!(vm = name, snapshot = snap, "snapshot deleted");
        self.snapshot_event(name, snap, api::Change::Deleted);
        Ok(())
    }

    fn snapshot_event(&self, vm: &str, snap: &str, change: api::Change) {
        self.emit(
            vm,
            api::EventKind::Snapshot {
                snapshot: snap.to_string(),
                change,
            },
        );
    }
}
