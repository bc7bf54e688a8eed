//! Disks and media changed on a defined VM: attach and detach (live through QMP, in the
//! definition, or both, like libvirt's `--live --config`) and CD-ROM insert and eject.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::VmInfo;
use model::{BootDevice, BootOrder, DiskBus, DiskSpec, VmSpec};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// How long a guest may take to release a hot-unplugged device.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a change applies. `None` means the default: live and config on a running VM,
/// config on a stopped one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangeScope {
    pub live: Option<bool>,
    pub config: Option<bool>,
}

impl ChangeScope {
    pub(crate) fn resolve(self, vm: &Vm) -> Result<(bool, bool)> {
        let running = vm.state().is_active();
        let live = self.live.unwrap_or(running);
        let config = self.config.unwrap_or(true);
        if live && !running {
            return Err(EngineError::Invalid(format!(
                "VM {:?} is not running; a --live change needs a running VM (use --config)",
                vm.name
            )));
        }
        if !live && !config {
            return Err(EngineError::Invalid(
                "nothing to do: the change is neither --live nor --config".into(),
            ));
        }
        Ok((live, config))
    }
}

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

impl Engine {
    /// Refuses a writable image that a running VM other than `except` has open.
    pub(crate) async fn check_not_held(&self, disk: &DiskSpec, except: &str) -> Result<()> {
        if disk.readonly {
            return Ok(());
        }
        let holders: Vec<String> = self
            .running_users_of(&disk.path)
            .await
            .into_iter()
            .filter(|n| n != except)
            .collect();
        if let Some(h) = holders.first() {
            return Err(EngineError::InUse(format!(
                "{} is attached read-write to running VM {h}; stop it first, or attach the image read-only",
                disk.path.display()
            )));
        }
        Ok(())
    }

    /// `hv disk attach`.
    pub async fn disk_attach(
        &self,
        name: &str,
        disk: DiskSpec,
        scope: ChangeScope,
    ) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("disk attach")?;
        let (live, config) = scope.resolve(&vm)?;
        if live && !config && disk.target.is_none() {
            return Err(EngineError::Invalid(
                "a live-only attach needs target= (e.g. target=vdb): the disk will not be in the definition, so it needs a name to detach it by".into(),
            ));
        }
        // Validate and prepare the disk in the context of the whole spec.
        let mut spec = vm.lock().spec.clone();
        self.resolve_volumes(&mut spec)?;
        spec.disks.push(disk);
        spec.validate()?;
        let created = self.prepare_host_side(&mut spec).await?;
        let i = spec.disks.len() - 1;
        let undo = |e: EngineError| {
            created.iter().for_each(|p| drop(std::fs::remove_file(p)));
            e
        };
        let disk = spec.disks[i].clone();
        self.check_not_held(&disk, name).await.map_err(undo)?;
        if live {
            self.plug_disk(&vm, &disk, i).await.map_err(undo)?;
        }
        if config {
            let mut stored = vm.lock().spec.clone();
            stored.disks.push(disk.clone());
            self.save_spec(&vm, stored)?;
        }
        tracing::info!(
            vm = name,
            target = disk.target.as_deref().unwrap_or(""),
            live,
            config,
            "disk attached"
        );
        Ok(self.info_of(&vm, true))
    }

    async fn plug_disk(&self, vm: &Arc<Vm>, disk: &DiskSpec, i: usize) -> Result<()> {
        let qmp = vm.qmp()?;
        let device =
            qemu_argv::disk_device(disk, i).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let aio = self.caps().await?.aio;
        let format = self
            .image_format(&disk.path, disk.format, &format!("disks[{i}]"))
            .await?;
        let chain = self
            .chain_below(&disk.path, format, &format!("disks[{i}]"))
            .await?;
        let nodes = qemu_argv::disk_block_nodes(disk, i, None, &chain, aio)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.grant_disk(vm, &disk.path, disk.format, !disk.readonly)
            .await?;
        let mut added: Vec<String> = Vec::new();
        let result = async {
            for n in &nodes {
                qmp.execute("blockdev-add", Some(n.clone()))
                    .await
                    .map_err(qemu)?;
                added.push(n["node-name"].as_str().unwrap_or_default().to_string());
            }
            if disk.bus == DiskBus::Scsi {
                // The controller exists when the VM started with a SCSI disk or one was plugged.
                let _ = qmp
                    .execute("device_add", Some(qemu_argv::scsi_controller()))
                    .await;
            }
            qmp.execute("device_add", Some(device)).await.map_err(qemu)
        }
        .await;
        if let Err(e) = result {
            for n in added.iter().rev() {
                let _ = qmp
                    .execute("blockdev-del", Some(json!({ "node-name": n })))
                    .await;
            }
            self.revoke_closed(vm, std::slice::from_ref(&disk.path))
                .await;
            return Err(e);
        }
        Ok(())
    }

    /// `hv disk detach`: the guest is asked to release the device (ACPI), and its image is
    /// closed only once QEMU reports the device gone.
    pub async fn disk_detach(
        &self,
        name: &str,
        target: &str,
        scope: ChangeScope,
    ) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("disk detach")?;
        let (live, config) = scope.resolve(&vm)?;
        let mut stored = vm.lock().spec.clone();
        model::assign_targets(&mut stored.disks);
        let pos = stored
            .disks
            .iter()
            .position(|d| d.target.as_deref() == Some(target));
        if config && pos.is_none() {
            let targets: Vec<String> = stored
                .disks
                .iter()
                .filter_map(|d| d.target.clone())
                .collect();
            return Err(EngineError::NotFound(format!(
                "VM {name} has no disk {target} (it has: {})",
                targets.join(", ")
            )));
        }
        if live {
            let qmp = vm.qmp()?;
            // Every node of the disk's chain: after a live external snapshot the device sits
            // on overlays above the nodes it was started with.
            let top = self.active_node(&vm, target).await?;
            let nodes = self.chain_nodes(&vm, &top).await?;
            let files = self.live_chain(&vm, target).await.unwrap_or_default();
            let mut events = vm.subscribe_qmp_events();
            qmp.execute("device_del", Some(json!({ "id": target })))
                .await
                .map_err(qemu)?;
            let gone = Vm::wait_qmp_event(&mut events, UNPLUG_TIMEOUT, |ev| {
                ev.event == "DEVICE_DELETED" && ev.data["device"].as_str() == Some(target)
            })
            .await?;
            if !gone {
                return Err(EngineError::Timeout(format!(
                    "the guest of {name} did not release disk {target} within {} s (it needs ACPI hotplug support); nothing was changed",
                    UNPLUG_TIMEOUT.as_secs()
                )));
            }
            for node in nodes {
                if let Err(e) = qmp
                    .execute("blockdev-del", Some(json!({ "node-name": node })))
                    .await
                {
                    tracing::warn!(vm = name, node, error = %e, "blockdev-del failed");
                }
            }
            self.revoke_closed(&vm, &files).await;
        }
        if config {
            if let Some(p) = pos {
                stored.disks.remove(p);
                self.save_spec(&vm, stored)?;
            }
        }
        tracing::info!(vm = name, target, live, config, "disk detached");
        Ok(self.info_of(&vm, true))
    }

    /// The block nodes under format node `top`, in an order `blockdev-del` accepts: each
    /// format node, then its file node, then the layer below.
    async fn chain_nodes(&self, vm: &Vm, top: &str) -> Result<Vec<String>> {
        let all = vm
            .qmp()?
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await
            .map_err(qemu)?;
        let all = all.as_array().cloned().unwrap_or_default();
        let node_named = |n: &str| all.iter().find(|x| x["node-name"] == n);
        let mut out = Vec::new();
        let mut cur = node_named(top);
        while let Some(n) = cur {
            let (Some(name), Some(file)) = (n["node-name"].as_str(), n["file"].as_str()) else {
                break;
            };
            if out.iter().any(|x| x == name) {
                break;
            }
            out.push(name.to_string());
            if let Some(f) = all
                .iter()
                .find(|x| x["drv"] == "file" && x["file"] == file && x["node-name"] != name)
                .and_then(|x| x["node-name"].as_str())
            {
                out.push(f.to_string());
            }
            cur = n["backing_file"].as_str().and_then(|b| {
                let b = std::path::Path::new(file)
                    .parent()
                    .map(|d| d.join(b))
                    .unwrap_or_else(|| b.into());
                all.iter().find(|x| {
                    x["drv"] != "file" && x["file"].as_str().map(std::path::Path::new) == Some(&b)
                })
            });
        }
        Ok(out)
    }

    /// `hv media insert`: an ISO path or `POOL/NAME` into the CD-ROM drive.
    pub async fn media_insert(&self, name: &str, source: &str) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("media insert")?;
        let mut spec = vm.lock().spec.clone();
        spec.cdrom = Some(PathBuf::from(source));
        spec.validate()?;
        let path = match spec.cdrom_vol() {
            Some(r) => self.vol_path(&r)?,
            None => PathBuf::from(source),
        };
        crate::must_exist("media", &path)?;
        if let Some(r) = spec.cdrom_vol() {
            // A caller who may change this VM's medium must not read another VM's disk.
            if let Some(why) = self.not_a_medium(r.pool.as_str(), &path).await? {
                return Err(EngineError::Invalid(why));
            }
        }
        if vm.state().is_active() {
            let had_drive = self.running_has_cdrom(&vm);
            if !had_drive {
                return Err(EngineError::Invalid(format!(
                    "VM {name} was started without a CD-ROM drive; insert the medium while it is stopped (the drive is added then)"
                )));
            }
            let qmp = vm.qmp()?;
            let before = self
                .live_chain(&vm, qemu_argv::CDROM_ID)
                .await
                .unwrap_or_default();
            self.grant(&vm, &path, host_storage::access::Access::Read)?;
            let changed = qmp
                .execute(
                    "blockdev-change-medium",
                    Some(json!({ "id": qemu_argv::CDROM_ID, "filename": path, "format": "raw", "read-only-mode": "read-only" })),
                )
                .await
                .map_err(qemu);
            // The medium QEMU let go of (or the one it refused) is not the VM's any more.
            let mut closed = before;
            closed.push(path.clone());
            self.revoke_closed(&vm, &closed).await;
            changed?;
        }
        self.save_spec(&vm, spec)?;
        Ok(self.info_of(&vm, true))
    }

    /// `hv media eject`: the drive stays, empty.
    pub async fn media_eject(&self, name: &str) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("media eject")?;
        let mut spec = vm.lock().spec.clone();
        if spec.cdrom.is_none() {
            return Err(EngineError::Invalid(format!(
                "VM {name} has no CD-ROM drive"
            )));
        }
        if vm.state().is_active() && self.running_has_cdrom(&vm) {
            let before = self
                .live_chain(&vm, qemu_argv::CDROM_ID)
                .await
                .unwrap_or_default();
            vm.qmp()?
                .execute(
                    "eject",
                    Some(json!({ "id": qemu_argv::CDROM_ID, "force": true })),
                )
                .await
                .map_err(qemu)?;
            self.revoke_closed(&vm, &before).await;
        }
        spec.cdrom = Some(PathBuf::new());
        self.save_spec(&vm, spec)?;
        Ok(self.info_of(&vm, true))
    }

    /// "Boot from this medium": the CD-ROM goes first in the boot order (kept in the spec);
    /// on a running VM also live (QOM `bootindex`, which QEMU hands the firmware at the next
    /// reset), then the VM is reset.
    pub async fn media_boot(&self, name: &str) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("media boot")?;
        let mut spec = vm.lock().spec.clone();
        if spec.kernel.is_some() {
            return Err(EngineError::Invalid(format!(
                "VM {name} boots a kernel directly (kernel in its spec), which comes before any boot device; remove the kernel from its spec (hv edit {name}) to boot from the medium"
            )));
        }
        if spec.cdrom.as_ref().is_none_or(|c| c.as_os_str().is_empty()) {
            return Err(EngineError::Invalid(format!(
                "VM {name} has no medium in its CD-ROM drive; insert one first (hv media insert {name} POOL/NAME)"
            )));
        }
        spec.boot = Some(cdrom_first(&spec));
        spec.validate()?;
        if vm.state().is_active() {
            if !self.running_has_cdrom(&vm) {
                return Err(EngineError::Invalid(format!(
                    "VM {name} was started without a CD-ROM drive; stop it and start it again to boot from the medium"
                )));
            }
            let qmp = vm.qmp()?;
            let path = format!("/machine/peripheral/{}", qemu_argv::CDROM_ID);
            // QEMU refuses a bootindex already in use, also by the same device (a second
            // "boot from medium").
            let now = qmp
                .execute(
                    "qom-get",
                    Some(json!({ "path": path, "property": "bootindex" })),
                )
                .await
                .map_err(qemu)?;
            if now.as_i64() != Some(0) {
                qmp.execute(
                    "qom-set",
                    Some(json!({ "path": path, "property": "bootindex", "value": 0 })),
                )
                .await
                .map_err(qemu)?;
            }
            self.save_spec(&vm, spec)?;
            qmp.system_reset().await.map_err(qemu)?;
        } else {
            self.save_spec(&vm, spec)?;
        }
        Ok(self.info_of(&vm, true))
    }

    pub(crate) fn running_has_cdrom(&self, vm: &Vm) -> bool {
        vm.lock()
            .rec
            .argv
            .iter()
            .any(|a| a.contains(qemu_argv::CDROM_ID))
    }

    pub(crate) fn save_spec_pub(&self, vm: &Vm, spec: VmSpec) -> Result<()> {
        self.save_spec(vm, spec)
    }

    pub(crate) fn save_spec(&self, vm: &Vm, mut spec: VmSpec) -> Result<()> {
        // A spec from before UUIDs (an old snapshot's) keeps the VM's.
        if spec.uuid.is_none() {
            spec.uuid = vm.lock().spec.uuid;
        }
        self.inner.store.update_spec(vm.id, &spec)?;
        vm.lock().spec = spec;
        self.emit(&vm.name, api::EventKind::Updated);
        Ok(())
    }
}

/// The spec's boot order with the CD-ROM first; without one, the CD-ROM and then whatever the
/// VM has of disks and NICs.
fn cdrom_first(spec: &VmSpec) -> BootOrder {
    let rest: Vec<BootDevice> = match &spec.boot {
        Some(b) => b.0.clone(),
        None => [
            (!spec.disks.is_empty()).then_some(BootDevice::Disk),
            (!spec.nics.is_empty()).then_some(BootDevice::Network),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let mut order = vec![BootDevice::Cdrom];
    order.extend(rest.into_iter().filter(|d| *d != BootDevice::Cdrom));
    BootOrder(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdrom_first_keeps_the_rest_of_the_boot_order() {
        let mut spec = VmSpec::new("b".parse().unwrap());
        assert_eq!(cdrom_first(&spec).to_string(), "cdrom");
        spec.disks.push("path=/d/a,format=raw".parse().unwrap());
        assert_eq!(cdrom_first(&spec).to_string(), "cdrom,disk");
        spec.boot = Some("network,cdrom,disk".parse().unwrap());
        assert_eq!(cdrom_first(&spec).to_string(), "cdrom,network,disk");
        spec.boot = Some("cdrom,disk".parse().unwrap());
        assert_eq!(cdrom_first(&spec).to_string(), "cdrom,disk");
    }
}
