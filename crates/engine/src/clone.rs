//! Cloning a VM (`hv clone SRC NEW [--start]`, issue 14): a full copy (`qemu-img convert`
//! with recorded formats) of every writable disk, new MACs, a new name; read-only disks and
//! the CD-ROM are shared, not copied. A disk in a pool becomes the volume `NEW-TARGET.EXT` in
//! the same pool; a path disk gets `NEW-TARGET.EXT` next to the source (refused if it
//! exists). A failure at any step (a name taken, a copy that fails, a full disk) removes every
//! file made so far and defines nothing.
//!
//! A running source is refused: a copy of disks in use would not be consistent. A linked
//! clone (`--linked --snapshot NAME`, `clone_linked.rs`) takes an external snapshot's frozen
//! layers instead, and may be made while the source runs.

use std::path::{Path, PathBuf};

use api::VmInfo;
use model::{DiskFormat, VmName, VmSpec, VolName, VolRef};

use crate::error::{EngineError, Result};
use crate::store::ImageOrigin;
use crate::Engine;

fn ext(f: DiskFormat) -> &'static str {
    match f {
        DiskFormat::Qcow2 => "qcow2",
        _ => "img",
    }
}

impl Engine {
    /// `hv clone`: see the module docs.
    pub async fn clone_vm(
        &self,
        src: &str,
        new: VmName,
        linked: bool,
        snapshot: Option<String>,
        start: bool,
    ) -> Result<VmInfo> {
        let snap = match (linked, snapshot) {
            (true, Some(s)) => Some(s),
            (true, None) => {
                return Err(EngineError::Invalid(format!(
                    "a linked clone needs an external snapshot to share: an overlay on {src}'s current disks would be corrupted by its next write; take one with hv snapshot create {src} NAME --disk-only and clone with --linked --snapshot NAME"
                )))
            }
            (false, Some(_)) => {
                return Err(EngineError::Invalid(
                    "--snapshot names the layers a linked clone shares: give --linked too".into(),
                ))
            }
            (false, None) => None,
        };
        let vm = self.get(src)?;
        let _op = vm.begin("clone")?;
        if snap.is_none() && vm.state().is_active() {
            return Err(EngineError::WrongState(format!(
                "VM {src} is running; a copy of disks in use would not be consistent: shut it \
                 down first"
            )));
        }
        if self.read_vms().contains_key(new.as_str()) {
            return Err(EngineError::VmExists(new.to_string()));
        }
        let spec = vm.lock().spec.clone();
        let mut made: Vec<PathBuf> = Vec::new();
        let copied = match &snap {
            Some(s) => self.link_disks(&vm, s, &new, &mut made).await,
            None => self.copy_disks(&spec, &new, &mut made).await,
        };
        let result = match copied {
            Ok(new_spec) => self.define(new_spec, start).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            for p in &made {
                let _ = std::fs::remove_file(p);
                let _ = self.forget_image(p);
            }
        }
        if result.is_ok() {
            tracing::info!(vm = src, clone = %new, disks = made.len(), snapshot = ?snap, "cloned");
        }
        result
    }

    /// The clone's spec, with a copy of each writable disk (recorded in `made` as it is
    /// created, so the caller can remove them all on failure).
    async fn copy_disks(
        &self,
        spec: &VmSpec,
        new: &VmName,
        made: &mut Vec<PathBuf>,
    ) -> Result<VmSpec> {
        let mut out = spec.clone();
        out.name = new.clone();
        out.autostart = false;
        out.uuid = None;
        for nic in &mut out.nics {
            nic.mac = None;
        }
        let writable: Vec<usize> = (0..out.disks.len())
            .filter(|&i| !out.disks[i].readonly)
            .collect();
        let n = writable.len().max(1) as f64;
        for (k, &i) in writable.iter().enumerate() {
            let d = &mut out.disks[i];
            let what = format!("disks[{i}]");
            let src_path = match &d.vol {
                Some(r) => self.vol_path(r)?,
                None => d.path.clone(),
            };
            let format = self.image_format(&src_path, d.format, &what).await?;
            self.chain_below(&src_path, format, &what).await?;
            let target = d.target.clone().unwrap_or_else(|| format!("disk{i}"));
            let file = format!("{new}-{target}.{}", ext(format));
            let dst = match &d.vol {
                Some(r) => {
                    let name: VolName = file.parse()?;
                    let r = VolRef {
                        pool: r.pool.clone(),
                        name,
                    };
                    let p = self.vol_path(&r)?;
                    d.vol = Some(r);
                    p
                }
                None => sibling(&src_path, &file)?,
            };
            if dst.exists() {
                return Err(EngineError::AlreadyExists(format!(
                    "{what}: {} already exists; remove it or clone to another name",
                    dst.display()
                )));
            }
            let mut progress =
                |p: f64| crate::operations::report_progress((k as f64 + p / 100.0) * 100.0 / n);
            made.push(dst.clone());
            host_storage::convert_with_progress(&src_path, format, &dst, format, &mut progress)
                .await
                .map_err(|e| {
                    EngineError::Host(format!(
                        "{what}: copying {} to {} failed: {e}",
                        src_path.display(),
                        dst.display()
                    ))
                })?;
            self.record_image(&dst, format, ImageOrigin::Created, None)?;
            d.path = dst;
            d.format = Some(format);
            d.size = None;
        }
        Ok(out)
    }
}

/// `file` in the directory of `path`.
fn sibling(path: &Path, file: &str) -> Result<PathBuf> {
    path.parent()
        .map(|p| p.join(file))
        .ok_or_else(|| EngineError::Invalid(format!("{} has no parent directory", path.display())))
}
