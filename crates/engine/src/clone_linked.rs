//! Linked clones (`hv clone SRC NEW --linked --snapshot NAME`, issue 14): each writable disk of
//! the clone is a new qcow2 overlay on SRC's frozen layer at the external snapshot NAME, made
//! beside that layer and recorded with its backing link. The source may run: nothing writes a
//! frozen layer while it stays one. While a clone depends on a layer, deleting the snapshot
//! that froze it (which would merge the layer above into it) is refused, naming the clone;
//! undefining the source keeps it (only the source's current disks go). `--linked` without
//! `--snapshot` is refused: a plain overlay on a source's current disk would be corrupted by
//! the source's next write.

use std::path::{Path, PathBuf};

use model::{DiskFormat, VmName, VmSpec, VolRef};

use crate::error::{EngineError, Result};
use crate::store::ImageOrigin;
use crate::vm::Vm;
use crate::Engine;

impl Engine {
    /// The clone's spec, with an overlay on the frozen layer of snapshot `snap` for each
    /// writable disk (recorded in `made` as created, for the caller to remove on failure).
    pub(crate) async fn link_disks(
        &self,
        vm: &Vm,
        snap: &str,
        new: &VmName,
        made: &mut Vec<PathBuf>,
    ) -> Result<VmSpec> {
        let rows = self.inner.store.load_snapshots(vm.id)?;
        let row = rows.iter().find(|r| r.name == snap).ok_or_else(|| {
            EngineError::NotFound(format!(
                "VM {} has no snapshot {snap:?}; take one with hv snapshot create {} {snap} --disk-only",
                vm.name, vm.name
            ))
        })?;
        if row.disks.is_empty() {
            return Err(EngineError::Invalid(format!(
                "snapshot {snap:?} of VM {} is internal; a linked clone needs an external one: hv snapshot create {} NAME --disk-only",
                vm.name, vm.name
            )));
        }
        let mut out = vm.lock().spec.clone();
        model::assign_targets(&mut out.disks);
        out.name = new.clone();
        out.autostart = false;
        out.uuid = None;
        for nic in &mut out.nics {
            nic.mac = None;
        }
        for i in 0..out.disks.len() {
            if out.disks[i].readonly {
                continue;
            }
            let d = &mut out.disks[i];
            let target = d.target.clone().unwrap_or_else(|| format!("disk{i}"));
            let what = format!("disks[{i}]");
            let frozen = row.disks.iter().find(|x| x.target == target).ok_or_else(|| {
                EngineError::Invalid(format!(
                    "{what} ({target}) was added after snapshot {snap:?}; take a new disk-only snapshot and clone from it"
                ))
            })?;
            let (base, bf) = (frozen.image.clone(), frozen.image_format);
            self.chain_below(&base, bf, &what).await?;
            let size = host_storage::info(&base, bf)
                .await
                .map_err(|e| EngineError::Host(e.to_string()))?
                .virtual_size;
            let file = format!("{new}-{target}.qcow2");
            // Beside the frozen layer, as a volume when that is in a pool: the snapshot code
            // finds the layers on an image there.
            let pool = self
                .inner
                .store
                .load_pools()?
                .into_iter()
                .find(|p| Some(p.path.as_path()) == base.parent());
            let dst = match pool {
                Some(p) => {
                    let r = VolRef {
                        pool: p.name.parse()?,
                        name: file.parse()?,
                    };
                    let path = self.vol_path(&r)?;
                    d.vol = Some(r);
                    path
                }
                None => {
                    d.vol = None;
                    base.parent().map(|p| p.join(&file)).ok_or_else(|| {
                        EngineError::Invalid(format!("{} has no parent directory", base.display()))
                    })?
                }
            };
            if dst.exists() {
                return Err(EngineError::AlreadyExists(format!(
                    "{what}: {} already exists; remove it or clone to another name",
                    dst.display()
                )));
            }
            made.push(dst.clone());
            host_storage::create_overlay_unsafe(&dst, &base, bf, size)
                .await
                .map_err(|e| EngineError::Host(format!("{what}: {e}")))?;
            self.record_image(&dst, DiskFormat::Qcow2, ImageOrigin::Created, Some(&base))?;
            d.path = dst;
            d.format = Some(DiskFormat::Qcow2);
            d.size = None;
        }
        Ok(out)
    }

    /// VMs other than `vm` whose disks (or snapshot layers) are recorded overlays on `image`.
    pub(crate) async fn linked_clones_on(&self, vm: &Vm, image: &Path) -> Result<Vec<String>> {
        let Some(dir) = image.parent() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for child in self.recorded_children(dir, image).await? {
            for name in self.owners_of(&child, None) {
                if name != vm.name && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Whether `vm` may read `layer`, which another VM has: only as a frozen layer of that
    /// VM's external snapshots (never its disk or CD-ROM), reached by a link hv recorded from
    /// `above`.
    pub(crate) fn frozen_for_clone(&self, vm: &Vm, above: &Path, layer: &Path) -> Result<bool> {
        let linked = self
            .image_record(above)?
            .is_some_and(|r| r.backing.as_ref().and_then(|b| b.as_deref()) == Some(layer));
        if !linked || self.users_of(layer).iter().any(|n| *n != vm.name) {
            return Ok(false);
        }
        Ok(!self.owners_of(layer, Some(vm.id)).is_empty())
    }

    /// VMs that have `file` as a disk or as a layer of a snapshot (`frozen_only`: VMs other than
    /// this id that have it as a snapshot's frozen image and never as an overlay in use).
    fn owners_of(&self, file: &Path, frozen_only: Option<i64>) -> Vec<String> {
        let mut out = match frozen_only {
            Some(_) => Vec::new(),
            None => self.users_of(file),
        };
        let vms: Vec<_> = self.read_vms().values().cloned().collect();
        for v in vms {
            if Some(v.id) == frozen_only {
                continue;
            }
            let rows = self.inner.store.load_snapshots(v.id).unwrap_or_default();
            let has = rows
                .iter()
                .flat_map(|r| &r.disks)
                .any(|d| match frozen_only {
                    Some(_) => d.image == file,
                    None => d.image == file || d.overlay == file,
                });
            if has && !out.contains(&v.name) {
                out.push(v.name.clone());
            }
        }
        out
    }
}
