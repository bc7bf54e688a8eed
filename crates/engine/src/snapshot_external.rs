//! External (disk-only) snapshots: each writable disk's current image freezes and a new
//! qcow2 overlay on top of it takes the writes, live (QMP `blockdev-snapshot`) or offline.
//! Reverting makes a fresh overlay on the frozen image; deleting merges the layer above the
//! frozen image into it so no later snapshot and not the current state lose data: `qemu-img
//! commit` offline, a QMP `block-commit` job while the VM runs (QEMU rewrites the backing link
//! of the layer above, and pivots to the frozen image when the merged layer was the active
//! one). Revert needs the VM shut off: a disk-only snapshot has no RAM to go back to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use model::{DiskFormat, VmState};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::store::{ExternalDisk, ImageOrigin, SnapshotRow};
use crate::vm::Vm;
use crate::Engine;

fn host(e: host_storage::StorageError) -> EngineError {
    EngineError::Host(e.to_string())
}

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

/// How long a live merge of one layer may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// `web.qcow2` + `s1` → `web.s1.qcow2` beside it.
fn overlay_path(image: &Path, tag: &str) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    image.with_file_name(format!("{stem}.{tag}.qcow2"))
}

impl Engine {
    /// Recorded images beside `image` whose backing file it is.
    async fn children_of(&self, image: &Path) -> Result<Vec<PathBuf>> {
        match image.parent() {
            Some(dir) => self.recorded_children(dir, image).await,
            None => Ok(Vec::new()),
        }
    }

    fn require_off(&self, vm: &Vm, what: &str) -> Result<()> {
        let state = vm.state();
        if state.is_active() {
            return Err(EngineError::Invalid(format!(
                "VM {:?} is {state}: {what} of an external snapshot needs the VM shut off",
                vm.name
            )));
        }
        Ok(())
    }

    /// The top block node QEMU uses for a disk now (it changes with every live snapshot).
    pub(crate) async fn active_node(&self, vm: &Vm, target: &str) -> Result<String> {
        let blocks = vm.qmp()?.execute("query-block", None).await.map_err(qemu)?;
        let prefix = format!("/machine/peripheral/{target}/");
        blocks
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| {
                b["qdev"]
                    .as_str()
                    .is_some_and(|q| q == target || q.starts_with(&prefix))
            })
            .and_then(|b| b["inserted"]["node-name"].as_str().map(str::to_string))
            .ok_or_else(|| EngineError::Qemu(format!("QEMU has no disk {target}")))
    }

    /// The image files of disk `target` in the running QEMU, from the top layer down.
    pub(crate) async fn live_chain(&self, vm: &Vm, target: &str) -> Result<Vec<PathBuf>> {
        let blocks = vm.qmp()?.execute("query-block", None).await.map_err(qemu)?;
        let prefix = format!("/machine/peripheral/{target}/");
        let mut image = blocks
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| {
                b["qdev"]
                    .as_str()
                    .is_some_and(|q| q == target || q.starts_with(&prefix))
            })
            .map(|b| &b["inserted"]["image"]);
        let mut out = Vec::new();
        while let Some(file) = image.and_then(|i| i["filename"].as_str()) {
            out.push(PathBuf::from(file));
            image = image.map(|i| &i["backing-image"]);
        }
        Ok(out)
    }

    /// Creates the overlays, records the snapshot and the new spec in one transaction, and
    /// only then (for a running VM) switches QEMU over. A crash anywhere leaves no lost write:
    /// at worst the frozen image took a few more writes before QEMU switched.
    pub(crate) async fn external_create(
        &self,
        vm: &Arc<Vm>,
        tag: &str,
        mut row: SnapshotRow,
    ) -> Result<SnapshotRow> {
        let state = vm.state();
        if !matches!(
            state,
            VmState::Running | VmState::Paused | VmState::Shutoff | VmState::Crashed
        ) {
            return Err(EngineError::Invalid(format!(
                "VM {:?} is {state}; wait until it is running or shut off",
                vm.name
            )));
        }
        let mut spec = vm.lock().spec.clone();
        if spec.ephemeral {
            return Err(EngineError::Invalid(format!(
                "VM {:?} is ephemeral: there is nothing to snapshot",
                vm.name
            )));
        }
        self.resolve_volumes(&mut spec)?;
        let mut plan = Vec::new();
        for d in spec.disks.iter().filter(|d| !d.readonly) {
            let target = d.target.clone().unwrap_or_default();
            let overlay = overlay_path(&d.path, tag);
            if overlay.exists() {
                return Err(EngineError::AlreadyExists(format!(
                    "{} already exists; move it away or pick another snapshot name",
                    overlay.display()
                )));
            }
            plan.push(ExternalDisk {
                target,
                image: d.path.clone(),
                image_format: d.format.unwrap_or(DiskFormat::Raw),
                overlay,
            });
        }
        if plan.is_empty() {
            return Err(EngineError::Invalid(format!(
                "VM {:?} has no writable disk to snapshot",
                vm.name
            )));
        }
        let mut made: Vec<PathBuf> = Vec::new();
        for d in &plan {
            let created = async {
                let size = host_storage::info(&d.image, d.image_format)
                    .await
                    .map_err(host)?
                    .virtual_size;
                host_storage::create_overlay_unsafe(&d.overlay, &d.image, d.image_format, size)
                    .await
                    .map_err(host)
            }
            .await;
            let created = created.and_then(|()| {
                self.record_image(
                    &d.overlay,
                    DiskFormat::Qcow2,
                    ImageOrigin::Overlay,
                    Some(&d.image),
                )
            });
            if let Err(e) = created {
                made.iter().for_each(|p| drop(std::fs::remove_file(p)));
                let _ = std::fs::remove_file(&d.overlay);
                return Err(e);
            }
            made.push(d.overlay.clone());
        }
        let old_spec = vm.lock().spec.clone();
        let mut stored = old_spec.clone();
        model::assign_targets(&mut stored.disks);
        for d in &plan {
            if let Some(disk) = stored
                .disks
                .iter_mut()
                .find(|x| x.target.as_deref() == Some(d.target.as_str()))
            {
                disk.path = d.overlay.clone();
                disk.vol = None;
                disk.format = Some(DiskFormat::Qcow2);
                disk.size = None;
            }
        }
        row.disks = plan.clone();
        if let Err(e) = self
            .inner
            .store
            .insert_snapshot_with_spec(vm.id, &row, &stored)
        {
            made.iter().for_each(|p| drop(std::fs::remove_file(p)));
            return Err(e);
        }
        vm.lock().spec = stored;
        self.emit(&vm.name, api::EventKind::Updated);
        if state.is_active() {
            // Every disk switches in one QMP transaction: all of them or none.
            let switched = self.switch_to_overlays(vm, tag, &plan).await;
            if let Err(e) = switched {
                let _ = self
                    .inner
                    .store
                    .delete_snapshot(vm.id, tag, row.parent.as_deref());
                let _ = self.save_spec_pub(vm, old_spec);
                for p in &made {
                    let _ = std::fs::remove_file(p);
                    let _ = self.forget_image(p);
                }
                return Err(e);
            }
        }
        Ok(row)
    }

    /// Opens each disk's new overlay in QEMU and puts all of them on top of their disks in
    /// one `transaction`; on failure the opened overlays are closed again and no disk moved.
    async fn switch_to_overlays(&self, vm: &Vm, tag: &str, plan: &[ExternalDisk]) -> Result<()> {
        let qmp = vm.qmp()?;
        let mut added: Vec<String> = Vec::new();
        let res = async {
            let mut actions = Vec::new();
            for d in plan {
                let active = self.active_node(vm, &d.target).await?;
                let node = format!("hv-{}-{tag}", d.target);
                host_storage::access::make_private(&d.overlay)
                    .map_err(|e| EngineError::Host(e.to_string()))?;
                self.grant(vm, &d.overlay, host_storage::access::Access::ReadWrite)?;
                let add = json!({
                    "driver": "qcow2", "node-name": node, "backing": null,
                    "file": { "driver": "file", "filename": d.overlay, "node-name": format!("{node}-file") },
                });
                qmp.execute("blockdev-add", Some(add)).await.map_err(qemu)?;
                added.push(node.clone());
                actions.push(json!({
                    "type": "blockdev-snapshot",
                    "data": { "node": active, "overlay": node },
                }));
            }
            qmp.execute("transaction", Some(json!({ "actions": actions })))
                .await
                .map_err(qemu)
        }
        .await;
        if res.is_err() {
            for node in added {
                let _ = qmp
                    .execute("blockdev-del", Some(json!({ "node-name": node })))
                    .await;
                let _ = qmp
                    .execute(
                        "blockdev-del",
                        Some(json!({ "node-name": format!("{node}-file") })),
                    )
                    .await;
            }
        }
        res.map(drop)
    }

    /// A fresh overlay on each frozen image; the discarded current overlay is removed when
    /// nothing else needs it.
    pub(crate) async fn external_revert(
        &self,
        vm: &Arc<Vm>,
        row: &SnapshotRow,
        rows: &[SnapshotRow],
    ) -> Result<()> {
        self.require_off(vm, "revert")?;
        let mut spec = row.spec.clone();
        model::assign_targets(&mut spec.disks);
        let current = vm.lock().spec.clone();
        let mut discarded = Vec::new();
        for d in &row.disks {
            let mut n = 1;
            let fresh = loop {
                let p = overlay_path(&d.image, &format!("{}-r{n}", row.name));
                if !p.exists() {
                    break p;
                }
                n += 1;
            };
            let size = host_storage::info(&d.image, d.image_format)
                .await
                .map_err(host)?
                .virtual_size;
            host_storage::create_overlay_unsafe(&fresh, &d.image, d.image_format, size)
                .await
                .map_err(host)?;
            self.record_image(
                &fresh,
                DiskFormat::Qcow2,
                ImageOrigin::Overlay,
                Some(&d.image),
            )?;
            if let Some(disk) = spec
                .disks
                .iter_mut()
                .find(|x| x.target.as_deref() == Some(d.target.as_str()))
            {
                disk.path = fresh;
                disk.vol = None;
                disk.format = Some(DiskFormat::Qcow2);
                disk.size = None;
            }
            if let Some(old) = current
                .disks
                .iter()
                .find(|x| x.target.as_deref() == Some(d.target.as_str()))
            {
                discarded.push(old.path.clone());
            }
        }
        self.save_spec_pub(vm, spec)?;
        for old in discarded {
            let needed = rows.iter().any(|r| r.disks.iter().any(|d| d.image == old))
                || !self.children_of(&old).await?.is_empty()
                || !self.users_of(&old).is_empty();
            // Only an overlay hv made for a snapshot, never a disk it was merely given.
            let ours = self
                .image_record(&old)?
                .is_some_and(|r| r.origin == ImageOrigin::Overlay);
            if !needed && ours {
                tracing::info!(vm = %vm.name, image = %old.display(), "removing the discarded current state");
                if std::fs::remove_file(&old).is_ok() {
                    self.forget_image(&old)?;
                }
            }
        }
        Ok(())
    }

    /// The format node QEMU has open for `path`, if any.
    async fn node_of(&self, vm: &Vm, path: &Path) -> Result<Option<String>> {
        let nodes = vm
            .qmp()?
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await
            .map_err(qemu)?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["drv"] != "file" && n["file"].as_str().map(Path::new) == Some(path))
            .and_then(|n| n["node-name"].as_str().map(str::to_string)))
    }

    /// Merges `upper` into `base` inside the running QEMU with a `block-commit` job; false when
    /// QEMU does not have `upper` open (then it is not part of the disk's live chain).
    async fn commit_live(&self, vm: &Vm, target: &str, base: &Path, upper: &Path) -> Result<bool> {
        let Some(top) = self.node_of(vm, upper).await? else {
            return Ok(false);
        };
        let base_node = self.node_of(vm, base).await?.ok_or_else(|| {
            EngineError::Qemu(format!(
                "QEMU has {} open but not the image below it, {}",
                upper.display(),
                base.display()
            ))
        })?;
        let active = self.active_node(vm, target).await?;
        let is_active = top == active;
        let qmp = vm.qmp()?;
        // QEMU reopens `base` read-write, and the image above `upper` to rewrite its backing
        // link: the layers of this disk from the top down to `base` become writable for the
        // VM's uid (they are this VM's; `base` has no other layer on it). QEMU's own answer
        // only orders them: a file is granted only when hv's records make it this VM's.
        let known = self.own_images(vm);
        for file in self.live_chain(vm, target).await? {
            if known.contains(&file) {
                self.grant(vm, &file, host_storage::access::Access::ReadWrite)?;
            }
            if file == base {
                break;
            }
        }
        let id = format!(
            "hv-commit-{target}-{}-{}",
            std::process::id(),
            crate::now_ms()
        );
        let mut args = json!({
            "job-id": id, "device": active, "base-node": base_node, "auto-dismiss": false,
        });
        if !is_active {
            args["top-node"] = json!(top);
        }
        let mut events = vm.subscribe_qmp_events();
        qmp.execute("block-commit", Some(args))
            .await
            .map_err(qemu)?;
        let status_is = |ev: &qmp::QmpEvent, statuses: &[&str]| {
            ev.event == "JOB_STATUS_CHANGE"
                && ev.data["id"] == json!(id)
                && statuses.iter().any(|s| ev.data["status"] == *s)
        };
        let timeout = || {
            EngineError::Timeout(format!(
                "merging {} did not finish within {} s; the job {id} keeps running in QEMU",
                upper.display(),
                COMMIT_TIMEOUT.as_secs()
            ))
        };
        if is_active {
            // An active commit mirrors new writes until told to complete, then pivots.
            if !Vm::wait_qmp_event(&mut events, COMMIT_TIMEOUT, |ev| {
                status_is(ev, &["ready", "concluded"])
            })
            .await?
            {
                return Err(timeout());
            }
            // On "concluded" (a failure before ready) job-complete fails; query-jobs says why.
            let _ = qmp.execute("job-complete", Some(json!({ "id": id }))).await;
        }
        let jobs = qmp.execute("query-jobs", None).await.map_err(qemu)?;
        let concluded = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == json!(id)))
            .is_some_and(|j| j["status"] == "concluded");
        if !concluded
            && !Vm::wait_qmp_event(&mut events, COMMIT_TIMEOUT, |ev| {
                status_is(ev, &["concluded"])
            })
            .await?
        {
            return Err(timeout());
        }
        let jobs = qmp.execute("query-jobs", None).await.map_err(qemu)?;
        let error = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == json!(id)))
            .and_then(|j| j["error"].as_str().map(str::to_string));
        let _ = qmp.execute("job-dismiss", Some(json!({ "id": id }))).await;
        if let Some(e) = error {
            return Err(EngineError::Qemu(format!(
                "merging {} into {} failed: {e}; nothing was removed",
                upper.display(),
                base.display()
            )));
        }
        tracing::info!(vm = %vm.name, target, merged = %upper.display(), active = is_active, "layer merged inside QEMU");
        Ok(true)
    }

    /// Merges the layer above each frozen image into it, when exactly one layer sits on it;
    /// with a branch (several overlays on the image) the files stay and only the metadata goes.
    pub(crate) async fn external_delete(
        &self,
        vm: &Arc<Vm>,
        row: &SnapshotRow,
        rows: &[SnapshotRow],
    ) -> Result<()> {
        let state = vm.state();
        let live = matches!(state, VmState::Running | VmState::Paused);
        if state.is_active() && !live {
            return Err(EngineError::Invalid(format!(
                "VM {:?} is {state}; wait until it is running or shut off",
                vm.name
            )));
        }
        for d in &row.disks {
            let clones = self.linked_clones_on(vm, &d.image).await?;
            if !clones.is_empty() {
                return Err(EngineError::InUse(format!(
                    "snapshot {:?} of VM {:?} holds {}, which linked clone {} reads; deleting it would write that layer: undefine the clone first",
                    row.name,
                    vm.name,
                    d.image.display(),
                    clones.join(", ")
                )));
            }
        }
        for d in &row.disks {
            let still_frozen = rows
                .iter()
                .any(|r| r.name != row.name && r.disks.iter().any(|x| x.image == d.image));
            let children = self.children_of(&d.image).await?;
            if still_frozen || children.len() != 1 {
                continue;
            }
            let upper = &children[0];
            // A layer in the running disk's chain merges inside QEMU; any other (and every
            // layer of a stopped VM) with qemu-img. The only child of an image in the live
            // chain is in the chain too, so qemu-img never writes an image QEMU reads.
            let merged = live && self.commit_live(vm, &d.target, &d.image, upper).await?;
            if !merged {
                host_storage::commit(upper).await.map_err(host)?;
            }
            for grandchild in self.children_of(upper).await? {
                // QEMU already pointed a layer of its live chain at the image below; any other
                // layer on the merged one is rebased here.
                let now = host_storage::info(&grandchild, DiskFormat::Qcow2)
                    .await
                    .map_err(host)?
                    .backing_path(&grandchild);
                if now.as_deref() != Some(d.image.as_path()) {
                    host_storage::rebase_unsafe(&grandchild, &d.image, d.image_format)
                        .await
                        .map_err(host)?;
                }
                self.set_backing(&grandchild, &d.image)?;
            }
            // Whatever referred to the merged layer now refers to the image below it.
            for r in rows.iter().filter(|r| r.name != row.name) {
                if r.disks
                    .iter()
                    .any(|x| &x.image == upper || &x.overlay == upper)
                {
                    let moved: Vec<ExternalDisk> = r
                        .disks
                        .iter()
                        .map(|x| {
                            let mut x = x.clone();
                            if &x.image == upper {
                                x.image = d.image.clone();
                                x.image_format = d.image_format;
                            }
                            if &x.overlay == upper {
                                x.overlay = d.image.clone();
                            }
                            x
                        })
                        .collect();
                    self.inner
                        .store
                        .update_snapshot_disks(vm.id, &r.name, &moved)?;
                }
            }
            let mut spec = vm.lock().spec.clone();
            model::assign_targets(&mut spec.disks);
            for disk in spec.disks.iter_mut().filter(|x| &x.path == upper) {
                disk.path = d.image.clone();
                disk.format = Some(d.image_format);
            }
            self.save_spec_pub(vm, spec)?;
            std::fs::remove_file(upper).map_err(|e| {
                EngineError::Host(format!("cannot remove {}: {e}", upper.display()))
            })?;
            self.forget_image(upper)?;
            tracing::info!(vm = %vm.name, merged = %upper.display(), into = %d.image.display(), "external snapshot layer merged");
        }
        Ok(())
    }
}
