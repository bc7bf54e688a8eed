//! The engine's side of migrating disks: what the source declares (from the image registry),
//! what the target provisions and records, and the undo of both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::{DiskFormat, VmSpec};

use super::offline::{self, DiskPlan, LayerPlan, SourceLayer};
use super::placement::PoolDir;
use crate::error::{EngineError, Result};
use crate::store::ImageOrigin;
use crate::Engine;

fn host(e: host_storage::StorageError) -> EngineError {
    EngineError::Host(e.to_string())
}

/// A writable disk of the source VM as the target needs to know it for `--copy-storage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDisk {
    pub target: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// Where each copied source file went on the target.
pub type PathMap = BTreeMap<PathBuf, PathBuf>;

/// `path` as the target knows it (unchanged when it was not moved).
pub fn retarget(path: &Path, map: &PathMap) -> PathBuf {
    map.get(path).cloned().unwrap_or_else(|| path.to_path_buf())
}

/// An external snapshot's per-disk rows (`[{target, image, image_format, overlay}]`, as the
/// source stores them) with their files as the target knows them.
pub fn retarget_external(
    disks: &[crate::store::ExternalDisk],
    map: &PathMap,
) -> Vec<crate::store::ExternalDisk> {
    disks
        .iter()
        .map(|d| crate::store::ExternalDisk {
            target: d.target.clone(),
            image: retarget(&d.image, map),
            image_format: d.image_format,
            overlay: retarget(&d.overlay, map),
        })
        .collect()
}

/// An image's virtual size, read as its known format.
pub(crate) async fn virtual_size(path: &Path, format: DiskFormat) -> Result<u64> {
    Ok(host_storage::info(path, format)
        .await
        .map_err(host)?
        .virtual_size)
}

impl Engine {
    /// The host's pools, for placement.
    pub(crate) fn migration_pool_dirs(&self) -> Result<Vec<PoolDir>> {
        Ok(self
            .inner
            .store
            .load_pools()?
            .into_iter()
            .map(|p| PoolDir {
                name: p.name,
                path: p.path,
            })
            .collect())
    }

    /// Source: every writable disk's chain, base first, from the registry (`--offline`).
    pub(crate) async fn migration_offline_plans(&self, spec: &VmSpec) -> Result<Vec<DiskPlan>> {
        let mut plans = Vec::new();
        for (i, d) in spec.disks.iter().enumerate().filter(|(_, d)| !d.readonly) {
            let target = d.target.clone().unwrap_or_else(|| format!("disk{i}"));
            let what = format!("disk {target}");
            let format = self.image_format(&d.path, d.format, &what).await?;
            let mut chain = vec![(d.path.clone(), format)];
            for l in self.chain_below(&d.path, format, &what).await? {
                chain.push((l.path, l.format));
            }
            let mut layers = Vec::new();
            for (path, format) in chain {
                let info = host_storage::info(&path, format).await.map_err(host)?;
                layers.push(SourceLayer {
                    path,
                    format,
                    virtual_size: info.virtual_size,
                });
            }
            plans.push(offline::plan_disk(&target, &layers)?);
        }
        offline::check_names(&plans)?;
        Ok(plans)
    }

    /// Target: new, empty images for `--copy-storage` at the (already placed) paths of
    /// `spec`'s writable disks, the same format and virtual size as the source's, recorded in
    /// the registry. Refused without a trace if any exists already or cannot be made.
    pub(crate) async fn migration_provision_copies(
        &self,
        spec: &VmSpec,
        disks: &[CopyDisk],
    ) -> Result<Vec<PathBuf>> {
        let mut made: Vec<PathBuf> = Vec::new();
        let result = async {
            for (i, d) in spec.disks.iter().enumerate().filter(|(_, d)| !d.readonly) {
                let target = d.target.clone().unwrap_or_else(|| format!("disk{i}"));
                let src = disks.iter().find(|c| c.target == target).ok_or_else(|| {
                    EngineError::Invalid(format!("the source did not describe disk {target}"))
                })?;
                if d.path.exists() {
                    return Err(EngineError::AlreadyExists(format!(
                        "disk {target}: {} already exists on the target; remove or rename it there first",
                        d.path.display()
                    )));
                }
                if let Some(dir) = d.path.parent() {
                    let cap = host_storage::fs_capacity(dir).map_err(host)?;
                    if src.virtual_size > cap.available_bytes {
                        tracing::warn!(disk = %target, size = src.virtual_size, free = cap.available_bytes, "the copy may not fit once written");
                    }
                }
                host_storage::create(&d.path, src.format, Some(src.virtual_size), None)
                    .await
                    .map_err(|e| {
                        EngineError::Host(format!("disk {target}: cannot create the copy: {e}"))
                    })?;
                made.push(d.path.clone());
                self.record_image(&d.path, src.format, ImageOrigin::Created, None)?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                self.migration_remove_images(&made);
                Err(e)
            }
        }
    }

    /// Target: receives one offline layer and records it with its backing link.
    pub(crate) async fn migration_receive_layer<S>(
        &self,
        stream: &mut S,
        dir: &Path,
        layer: &LayerPlan,
        backing: Option<(&Path, DiskFormat)>,
    ) -> Result<PathBuf>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let path = offline::receive_layer(stream, dir, layer, backing).await?;
        let origin = if backing.is_some() {
            ImageOrigin::Overlay
        } else {
            ImageOrigin::Created
        };
        if let Err(e) = self.record_image(&path, layer.format, origin, backing.map(|b| b.0)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Source, after a `--copy-storage` handover: the disks' top images now live on the
    /// target; each goes unless another VM here still uses it. Backing images stay (other
    /// VMs' chains may share them).
    pub(crate) fn migration_drop_copied(&self, spec: &VmSpec) {
        for d in spec.disks.iter().filter(|d| !d.readonly) {
            let users = self.users_of(&d.path);
            if !users.is_empty() {
                tracing::info!(file = %d.path.display(), ?users, "kept a migrated disk other VMs use");
                continue;
            }
            self.migration_remove_images(std::slice::from_ref(&d.path));
        }
    }

    /// Removes images a migration made (on abort or failure) and their records.
    pub(crate) fn migration_remove_images(&self, paths: &[PathBuf]) {
        for p in paths.iter().rev() {
            match std::fs::remove_file(p) {
                Ok(()) => tracing::info!(file = %p.display(), "removed a migration's image"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot remove a migration's image")
                }
            }
            let _ = self.forget_image(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_map() {
        let map: PathMap = [(PathBuf::from("/a/x.qcow2"), PathBuf::from("/b/x.qcow2"))].into();
        assert_eq!(
            retarget(Path::new("/a/x.qcow2"), &map),
            Path::new("/b/x.qcow2")
        );
        assert_eq!(retarget(Path::new("/a/y.iso"), &map), Path::new("/a/y.iso"));
        let ext = [crate::store::ExternalDisk {
            target: "vda".into(),
            image: "/a/x.qcow2".into(),
            image_format: DiskFormat::Qcow2,
            overlay: "/a/x.s1.qcow2".into(),
        }];
        let map: PathMap = [
            (PathBuf::from("/a/x.qcow2"), PathBuf::from("/b/x.qcow2")),
            (
                PathBuf::from("/a/x.s1.qcow2"),
                PathBuf::from("/b/x.s1.qcow2"),
            ),
        ]
        .into();
        let r = retarget_external(&ext, &map);
        assert_eq!(r[0].image, Path::new("/b/x.qcow2"));
        assert_eq!(r[0].overlay, Path::new("/b/x.s1.qcow2"));
    }
}
