//! Storage pools (directories hvd manages) and their volumes (the image files in them).
//! The directory is the truth about which volumes exist; the image registry (`images.rs`) is
//! the truth about their formats, which are never guessed again from bytes a guest may have
//! written; `qemu-img`, told that format, about their sizes and backing files. Nothing here
//! deletes or overwrites data that a VM definition or another volume depends on, nor files
//! hv did not create.

use std::path::{Path, PathBuf};

use api::{CreatePoolRequest, CreateVolRequest, ImportVolRequest, PoolInfo, VolInfo};
use model::{DiskFormat, PoolName, VolName, VolRef};

use crate::error::{EngineError, Result};
use crate::store::{ImageOrigin, PoolRow};
use crate::Engine;
use crate::{Replaced, Upload};

/// `qemu-img info` processes one `vol list` runs at once.
const VOL_LIST_PARALLEL: usize = 8;

fn host(what: impl std::fmt::Display) -> impl FnOnce(host_storage::StorageError) -> EngineError {
    move |e| EngineError::Host(format!("{what}: {e}"))
}

impl Engine {
    /// Makes sure the `default` pool exists (under the state dir).
    pub(crate) fn ensure_default_pool(&self) -> Result<()> {
        if self
            .inner
            .store
            .load_pools()?
            .iter()
            .any(|p| p.name == "default")
        {
            return Ok(());
        }
        let path = self.inner.cfg.state_dir.join("pools/default");
        std::fs::create_dir_all(&path)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", path.display())))?;
        self.inner.store.insert_pool(&PoolRow {
            name: "default".into(),
            path,
            autostart: true,
        })
    }

    fn pool_row(&self, name: &str) -> Result<PoolRow> {
        self.inner
            .store
            .load_pools()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "pool {name} does not exist (hv pool list shows the pools)"
                ))
            })
    }

    /// The file behind `POOL/NAME` (which need not exist yet).
    pub(crate) fn vol_path(&self, r: &VolRef) -> Result<PathBuf> {
        Ok(self.pool_row(r.pool.as_str())?.path.join(r.name.as_str()))
    }

    fn pool_info(&self, p: &PoolRow) -> Result<PoolInfo> {
        let cap = host_storage::fs_capacity(&p.path).map_err(host(format!("pool {}", p.name)))?;
        let files = volume_files(&p.path);
        Ok(PoolInfo {
            name: p.name.clone(),
            path: p.path.clone(),
            autostart: p.autostart,
            capacity_bytes: cap.capacity_bytes,
            allocation_bytes: files.iter().map(|f| host_storage::allocated_bytes(f)).sum(),
            available_bytes: cap.available_bytes,
            volumes: files.len(),
        })
    }

    pub fn pools(&self) -> Result<Vec<PoolInfo>> {
        self.inner
            .store
            .load_pools()?
            .iter()
            .map(|p| self.pool_info(p))
            .collect()
    }

    pub fn pool(&self, name: &str) -> Result<PoolInfo> {
        self.pool_info(&self.pool_row(name)?)
    }

    pub fn pool_create(&self, req: CreatePoolRequest) -> Result<PoolInfo> {
        let name = req.name.to_string();
        model::check_host_path("path", &req.path)?;
        let pools = self.inner.store.load_pools()?;
        if pools.iter().any(|p| p.name == name) {
            return Err(EngineError::AlreadyExists(format!(
                "pool {name} already exists; pick another name"
            )));
        }
        let path = normalize(&req.path);
        if let Some(p) = pools
            .iter()
            .find(|p| path.starts_with(&p.path) || p.path.starts_with(&path))
        {
            return Err(EngineError::Invalid(format!(
                "{} overlaps pool {} at {}; pools cannot nest",
                path.display(),
                p.name,
                p.path.display()
            )));
        }
        if path.starts_with(&self.inner.cfg.state_dir)
            && !path.starts_with(self.inner.cfg.state_dir.join("pools"))
        {
            return Err(EngineError::Invalid(format!(
                "{} is inside hv's state dir; choose another directory",
                path.display()
            )));
        }
        let created = !path.exists();
        if path.exists() && !path.is_dir() {
            return Err(EngineError::Invalid(format!(
                "{} exists and is not a directory",
                path.display()
            )));
        }
        std::fs::create_dir_all(&path)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", path.display())))?;
        let row = PoolRow {
            name: name.clone(),
            path: path.clone(),
            autostart: req.autostart,
        };
        if let Err(e) = self.inner.store.insert_pool(&row) {
            if created {
                let _ = std::fs::remove_dir(&path);
            }
            return Err(e);
        }
        tracing::info!(pool = name, path = %path.display(), "pool created");
        self.emit(
            "",
            api::EventKind::Pool {
                pool: name.clone(),
                change: api::Change::Created,
            },
        );
        self.pool_info(&row)
    }

    /// Deletes a pool. Refused while it holds volumes unless `force`, and always while a VM
    /// uses one of them. With `force`, its volumes and (when empty) its directory go too, but
    /// only files hv created: a pool holding anything else is refused whole (forget it with
    /// [`pool_undefine`](Self::pool_undefine) instead, which keeps every file).
    pub async fn pool_delete(&self, name: &str, force: bool) -> Result<()> {
        let p = self.forgettable_pool(name, "deleted").await?;
        let files = volume_files(&p.path);
        if !files.is_empty() && !force {
            return Err(EngineError::Invalid(format!(
                "pool {name} holds {} volume(s); delete them first or pass --force to delete them with the pool",
                files.len()
            )));
        }
        let mut foreign = Vec::new();
        for f in &files {
            let ours = self
                .image_record(f)?
                .is_some_and(|r| matches!(r.origin, ImageOrigin::Created | ImageOrigin::Overlay));
            if !ours {
                foreign.push(file_name(f));
            }
        }
        if !foreign.is_empty() {
            return Err(EngineError::Invalid(format!(
                "pool {name} holds files hv did not create ({}); nothing was deleted: remove them yourself, or use hv pool undefine {name} to forget the pool and keep its files",
                foreign.join(", ")
            )));
        }
        for f in &files {
            std::fs::remove_file(f)
                .map_err(|e| EngineError::Host(format!("cannot delete {}: {e}", f.display())))?;
            self.forget_image(f)?;
        }
        self.inner.store.delete_pool(name)?;
        // Only when empty: files that are not volumes (other names, directories) stay.
        let _ = std::fs::remove_dir(&p.path);
        tracing::info!(pool = name, force, "pool deleted");
        Ok(())
    }

    /// Forgets a pool and keeps its directory and every file in it (`virsh pool-undefine`).
    pub async fn pool_undefine(&self, name: &str) -> Result<()> {
        self.forgettable_pool(name, "undefined").await?;
        self.inner.store.delete_pool(name)?;
        tracing::info!(pool = name, "pool undefined; its files stay");
        Ok(())
    }

    /// The pool, if neither it is the default pool nor does a VM use one of its volumes.
    async fn forgettable_pool(&self, name: &str, verb: &str) -> Result<PoolRow> {
        if name == "default" {
            return Err(EngineError::Invalid(format!(
                "the default pool cannot be {verb}"
            )));
        }
        let p = self.pool_row(name)?;
        for f in &volume_files(&p.path) {
            let users = self.all_users_of(f).await;
            if !users.is_empty() {
                return Err(EngineError::InUse(format!(
                    "pool {name} cannot be {verb}: volume {} is used by VM {}",
                    file_name(f),
                    users.join(", ")
                )));
            }
        }
        Ok(p)
    }

    /// VM definitions whose disks or CD-ROM are `file`.
    pub(crate) fn users_of(&self, file: &Path) -> Vec<String> {
        let vms: Vec<_> = self.read_vms().values().cloned().collect();
        vms.iter()
            .filter(|vm| {
                let st = vm.lock();
                st.spec.disks.iter().any(|d| d.path == file)
                    || st.spec.cdrom.as_deref() == Some(file)
                    || st
                        .spec
                        .cdrom_vol()
                        .and_then(|r| self.vol_path(&r).ok())
                        .as_deref()
                        == Some(file)
            })
            .map(|vm| vm.name.clone())
            .collect()
    }

    /// Running VMs that use `file`: by their definition, or because their QEMU has it open
    /// now (a `--config`-only detach leaves the image open until the VM stops; a `--live`-only
    /// attach opens one the definition does not name).
    pub(crate) async fn running_users_of(&self, file: &Path) -> Vec<String> {
        let mut users: Vec<String> = self
            .users_of(file)
            .into_iter()
            .filter(|n| self.get(n).is_ok_and(|vm| vm.state().is_active()))
            .collect();
        for n in self.live_holders(file).await {
            if !users.contains(&n) {
                users.push(n);
            }
        }
        users
    }

    /// VMs whose definition uses `file` or whose QEMU has it open.
    pub(crate) async fn all_users_of(&self, file: &Path) -> Vec<String> {
        let mut users = self.users_of(file);
        for n in self.live_holders(file).await {
            if !users.contains(&n) {
                users.push(n);
            }
        }
        users
    }

    /// Running VMs whose QEMU has `file` open, as QEMU says (`query-named-block-nodes`). A
    /// running VM whose QMP does not answer counts when its definition names the file.
    async fn live_holders(&self, file: &Path) -> Vec<String> {
        let vms: Vec<_> = self
            .read_vms()
            .values()
            .filter(|vm| vm.state().is_active())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for vm in vms {
            let open = match vm.qmp() {
                Ok(q) => q
                    .execute(
                        "query-named-block-nodes",
                        Some(serde_json::json!({ "flat": true })),
                    )
                    .await
                    .ok(),
                Err(_) => None,
            };
            let holds =
                match open {
                    Some(nodes) => nodes.as_array().into_iter().flatten().any(|n| {
                        n["drv"] == "file" && n["file"].as_str().map(Path::new) == Some(file)
                    }),
                    None => vm.lock().spec.disks.iter().any(|d| d.path == file),
                };
            if holds {
                out.push(vm.name.clone());
            }
        }
        out
    }

    /// A volume's recorded format (recorded on first sight for a file put in the pool by hand).
    async fn vol_format(&self, pool: &str, file: &Path) -> Result<DiskFormat> {
        self.image_format(file, None, &format!("volume {pool}/{}", file_name(file)))
            .await
    }

    async fn vol_info_at(&self, pool: &str, file: &Path) -> Result<VolInfo> {
        let what = format!("volume {pool}/{}", file_name(file));
        let format = self.vol_format(pool, file).await?;
        let i = host_storage::info(file, format)
            .await
            .map_err(host(&what))?;
        Ok(VolInfo {
            pool: pool.to_string(),
            name: file_name(file),
            path: file.to_path_buf(),
            backing: i.backing_path(file).map(|p| p.display().to_string()),
            backing_format: i.backing_filename_format.clone(),
            format: format.as_str().to_string(),
            virtual_size_bytes: i.virtual_size,
            allocation_bytes: host_storage::allocated_bytes(file),
            used_by: self.users_of(file),
        })
    }

    /// Every volume of a pool, in file-name order. Each needs a `qemu-img info`, which is mostly
    /// process start-up, so up to [`VOL_LIST_PARALLEL`] run at once.
    pub async fn vol_list(&self, pool: &str) -> Result<Vec<VolInfo>> {
        let p = self.pool_row(pool)?;
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(VOL_LIST_PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for (i, f) in volume_files(&p.path).into_iter().enumerate() {
            let (e, pool, limit) = (self.clone(), pool.to_string(), limit.clone());
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, e.vol_list_entry(&pool, f).await)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.map_err(|e| EngineError::Internal(format!("listing pool {pool}: {e}")))?);
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    async fn vol_list_entry(&self, pool: &str, f: PathBuf) -> VolInfo {
        match self.vol_info_at(pool, &f).await {
            Ok(v) => v,
            // A file put in the pool by hand that hv will not guess: listed, not hidden.
            Err(e) => {
                tracing::warn!(pool, file = %f.display(), error = %e, "volume of unknown format");
                VolInfo {
                    pool: pool.to_string(),
                    name: file_name(&f),
                    allocation_bytes: host_storage::allocated_bytes(&f),
                    used_by: self.users_of(&f),
                    path: f,
                    format: "unknown".into(),
                    virtual_size_bytes: 0,
                    backing: None,
                    backing_format: None,
                }
            }
        }
    }

    fn existing_vol(&self, pool: &str, name: &str) -> Result<PathBuf> {
        let r = VolRef {
            pool: pool.parse::<PoolName>()?,
            name: name.parse::<VolName>()?,
        };
        let path = self.vol_path(&r)?;
        if !path.is_file() {
            return Err(EngineError::NotFound(format!(
                "volume {r} does not exist (hv vol list {} shows the volumes)",
                r.pool
            )));
        }
        Ok(path)
    }

    pub async fn vol_info(&self, pool: &str, name: &str) -> Result<VolInfo> {
        let path = self.existing_vol(pool, name)?;
        self.vol_info_at(pool, &path).await
    }

    fn new_vol_path(&self, pool: &str, name: &VolName) -> Result<PathBuf> {
        let r = VolRef {
            pool: pool.parse::<PoolName>()?,
            name: name.clone(),
        };
        let path = self.vol_path(&r)?;
        if path.exists() {
            return Err(EngineError::AlreadyExists(format!(
                "volume {r} already exists; pick another name, or delete it first"
            )));
        }
        Ok(path)
    }

    /// Resolves `POOL/NAME` or an absolute path to an existing image.
    fn backing_file(&self, backing: &str) -> Result<PathBuf> {
        let p = if backing.starts_with('/') {
            model::check_host_path("backing", Path::new(backing))?;
            PathBuf::from(backing)
        } else {
            let vol = backing
                .parse::<VolRef>()
                .map_err(|e| model::SpecError::new("backing", e.message))?;
            self.vol_path(&vol)?
        };
        if !p.is_file() {
            return Err(EngineError::Invalid(format!(
                "backing image {backing} does not exist"
            )));
        }
        Ok(p)
    }

    pub async fn vol_create(&self, pool: &str, req: CreateVolRequest) -> Result<VolInfo> {
        let path = self.new_vol_path(pool, &req.name)?;
        let format = req.format.unwrap_or(DiskFormat::Qcow2);
        let base = match &req.backing {
            Some(b) => {
                if format != DiskFormat::Qcow2 {
                    return Err(EngineError::Invalid(
                        "an overlay on a backing image must be qcow2".into(),
                    ));
                }
                let base = self.backing_file(b)?;
                let bf = self
                    .image_format(&base, None, &format!("backing image {b}"))
                    .await?;
                self.chain_below(&base, bf, &format!("backing image {b}"))
                    .await?;
                host_storage::create(&path, format, req.size.map(|s| s.0), Some((&base, bf)))
                    .await
                    .map_err(host("cannot create the volume"))?;
                Some(base)
            }
            None => {
                let size = req.size.ok_or_else(|| {
                    EngineError::Invalid("a volume needs --size (or --backing)".into())
                })?;
                if size.0 == 0 {
                    return Err(EngineError::Invalid("size must be larger than 0".into()));
                }
                host_storage::create(&path, format, Some(size.0), None)
                    .await
                    .map_err(host("cannot create the volume"))?;
                None
            }
        };
        self.created(&path, format, base.as_deref())?;
        tracing::info!(pool, vol = %req.name, "volume created");
        self.vol_info_at(pool, &path).await
    }

    /// Copies a host file into the pool. The source's format is probed, but a file that
    /// probes as raw is only taken as raw when the caller says so, and images with a backing
    /// file are refused (their chain would point outside the pool).
    pub async fn vol_import(&self, pool: &str, req: ImportVolRequest) -> Result<VolInfo> {
        model::check_host_path("source", &req.source)?;
        let dst = self.new_vol_path(pool, &req.name)?;
        if !req.source.is_file() {
            return Err(EngineError::Invalid(format!(
                "{} is not a file",
                req.source.display()
            )));
        }
        // The source is a file the admin names: probing it is their word, not a guest's (and
        // the copy's format is recorded, so it is never probed again).
        let probed = host_storage::probe(&req.source)
            .await
            .map_err(host(format!("cannot probe {}", req.source.display())))?;
        let format = match (req.format, probed.disk_format()) {
            (Some(f), _) => f,
            (None, Some(DiskFormat::Qcow2)) => DiskFormat::Qcow2,
            (None, Some(DiskFormat::Raw)) => {
                return Err(EngineError::Invalid(format!(
                    "{} has no image header (it probes as raw); if it is a raw disk image, say so with --format raw",
                    req.source.display()
                )))
            }
            (None, None) => {
                return Err(EngineError::Invalid(format!(
                    "{} is in format {}, which hv does not run; convert it with qemu-img convert -O qcow2",
                    req.source.display(),
                    probed.format
                )))
            }
        };
        if format == DiskFormat::Qcow2 {
            let i = if probed.disk_format() == Some(DiskFormat::Qcow2) {
                probed
            } else {
                host_storage::info(&req.source, DiskFormat::Qcow2)
                    .await
                    .map_err(host(format!(
                        "{} is not a qcow2 image",
                        req.source.display()
                    )))?
            };
            if let Some(other) = i.backing_filename.clone().or_else(|| i.data_file()) {
                return Err(EngineError::Invalid(format!(
                    "{} is an overlay on {other} (or keeps its data there); import the whole chain flattened (qemu-img convert -O qcow2) instead",
                    req.source.display(),
                )));
            }
        }
        let copied = host_storage::convert_with_progress(
            &req.source,
            format,
            &dst,
            format,
            &mut crate::operations::report_progress,
        )
        .await;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&dst);
            return Err(host("import failed")(e));
        }
        self.created(&dst, format, None)?;
        tracing::info!(pool, vol = %req.name, source = %req.source.display(), "volume imported");
        self.vol_info_at(pool, &dst).await
    }

    pub async fn vol_clone(
        &self,
        pool: &str,
        src: &str,
        name: VolName,
        linked: bool,
    ) -> Result<VolInfo> {
        let src_path = self.existing_vol(pool, src)?;
        let dst = self.new_vol_path(pool, &name)?;
        let sf = self.vol_format(pool, &src_path).await?;
        self.chain_below(&src_path, sf, &format!("volume {pool}/{src}"))
            .await?;
        let res = if linked {
            host_storage::create(&dst, DiskFormat::Qcow2, None, Some((&src_path, sf))).await
        } else {
            let running = self.running_users_of(&src_path).await;
            if !running.is_empty() {
                return Err(EngineError::InUse(format!(
                    "{pool}/{src} is in use by running VM {}; a full copy would not be consistent (stop it, or use --linked)",
                    running.join(", ")
                )));
            }
            host_storage::convert_with_progress(
                &src_path,
                sf,
                &dst,
                sf,
                &mut crate::operations::report_progress,
            )
            .await
        };
        if let Err(e) = res {
            let _ = std::fs::remove_file(&dst);
            return Err(host("clone failed")(e));
        }
        if linked {
            self.created(&dst, DiskFormat::Qcow2, Some(&src_path))?;
        } else {
            self.created(&dst, sf, None)?;
        }
        self.vol_info_at(pool, &dst).await
    }

    /// Resizes a volume; live (QMP `block_resize`) when a running VM has it attached.
    pub async fn vol_resize(
        &self,
        pool: &str,
        name: &str,
        size: u64,
        allow_shrink: bool,
    ) -> Result<VolInfo> {
        let path = self.existing_vol(pool, name)?;
        let format = self.vol_format(pool, &path).await?;
        let i = host_storage::info(&path, format)
            .await
            .map_err(host(format!("volume {pool}/{name}")))?;
        let shrink = size < i.virtual_size;
        self.refuse_if_backing(pool, name, &path, "resizing")
            .await?;
        if shrink && !allow_shrink {
            return Err(EngineError::Invalid(format!(
                "{size} bytes is smaller than the current {} bytes: shrinking loses the data at the end; pass --allow-shrink if that is intended",
                i.virtual_size
            )));
        }
        let running = self.running_users_of(&path).await;
        if let Some(vm_name) = running.first() {
            if shrink {
                return Err(EngineError::Invalid(format!("{pool}/{name} is in use by running VM {vm_name}; shrink it only while the VM is stopped")));
            }
            let vm = self.get(vm_name)?;
            let disk = vm
                .lock()
                .spec
                .disks
                .iter()
                .enumerate()
                .find(|(_, d)| d.path == path)
                .map(|(i, d)| (i, d.clone()));
            let Some((i, disk)) = disk else {
                return Err(EngineError::Invalid(format!(
                    "{pool}/{name} is VM {vm_name}'s CD-ROM; it cannot be resized"
                )));
            };
            let target = qemu_argv::disk_ids(&disk, i).0;
            // The top node: after a live external snapshot it is the overlay's.
            let node = self.active_node(&vm, &target).await?;
            let qmp = vm.qmp()?;
            qmp.execute(
                "block_resize",
                Some(serde_json::json!({ "node-name": node, "size": size })),
            )
            .await
            .map_err(|e| EngineError::Qemu(e.to_string()))?;
            tracing::info!(pool, vol = name, vm = %vm_name, size, "volume resized live");
        } else {
            host_storage::resize(&path, format, size, shrink)
                .await
                .map_err(host("resize failed"))?;
        }
        self.vol_info_at(pool, &path).await
    }

    /// Deletes a volume: refused while a VM uses it or another volume is backed by it.
    pub async fn vol_delete(&self, pool: &str, name: &str) -> Result<()> {
        let path = self.existing_vol(pool, name)?;
        let users = self.all_users_of(&path).await;
        if !users.is_empty() {
            return Err(EngineError::InUse(format!(
                "{pool}/{name} is used by VM {}; detach it or undefine the VM first",
                users.join(", ")
            )));
        }
        if let Some(child) = self.overlay_on(&path).await? {
            return Err(EngineError::InUse(format!(
                "{pool}/{name} backs volume {child}; delete that overlay first (or clone it without --linked)"
            )));
        }
        std::fs::remove_file(&path)
            .map_err(|e| EngineError::Host(format!("cannot delete {}: {e}", path.display())))?;
        self.forget_image(&path)?;
        tracing::info!(pool, vol = name, "volume deleted");
        Ok(())
    }

    /// Refuses to change a volume that backs an overlay (a linked clone, a snapshot layer):
    /// the overlay's data would no longer match.
    async fn refuse_if_backing(
        &self,
        pool: &str,
        name: &str,
        path: &Path,
        what: &str,
    ) -> Result<()> {
        match self.overlay_on(path).await? {
            Some(child) => Err(EngineError::InUse(format!(
                "{pool}/{name} backs {child}; {what} would corrupt it: remove that overlay first"
            ))),
            None => Ok(()),
        }
    }

    /// A volume (`POOL/NAME`) in any pool whose backing file is `path`.
    pub(crate) async fn overlay_on(&self, path: &Path) -> Result<Option<String>> {
        for p in self.inner.store.load_pools()? {
            if let Some(f) = self.recorded_children(&p.path, path).await?.first() {
                return Ok(Some(format!("{}/{}", p.name, file_name(f))));
            }
        }
        Ok(None)
    }

    /// Records a file hv just made.
    fn created(&self, path: &Path, format: DiskFormat, backing: Option<&Path>) -> Result<()> {
        self.record_image(path, format, ImageOrigin::Created, backing)
    }

    /// Starts replacing `POOL/NAME`'s bytes: a temp file beside the volume that
    /// [`Upload::commit`] makes durable and renames over it. Refused while a running VM uses
    /// the volume.
    pub async fn vol_upload_begin(&self, pool: &str, name: &str) -> Result<Upload> {
        let path = self.existing_vol(pool, name)?;
        let running = self.running_users_of(&path).await;
        if !running.is_empty() {
            return Err(EngineError::InUse(format!(
                "{pool}/{name} is in use by running VM {}; stop it before uploading",
                running.join(", ")
            )));
        }
        self.refuse_if_backing(pool, name, &path, "replacing its bytes")
            .await?;
        // Unique per upload: two concurrent uploads never share a temp file (the last rename wins).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{name}.upload-{}-{n}", std::process::id()));
        Upload::create(&tmp, &path)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", tmp.display())))
    }

    /// Checks the uploaded bytes against the volume's recorded format, makes them durable and
    /// puts them in place. A qcow2 upload that names a backing or data file (another file on
    /// the host) is refused and the volume keeps its bytes; a raw volume takes any bytes and
    /// stays raw.
    pub async fn vol_upload_commit(&self, pool: &str, name: &str, up: Upload) -> Result<Replaced> {
        let path = self.existing_vol(pool, name)?;
        let format = self.vol_format(pool, &path).await?;
        if format == DiskFormat::Qcow2 {
            let i = host_storage::info(up.path(), DiskFormat::Qcow2)
                .await
                .map_err(|e| {
                    EngineError::Invalid(format!(
                        "{pool}/{name} is a qcow2 volume and the upload is not a qcow2 image: {e}"
                    ))
                })?;
            if let Some(other) = i.backing_filename.clone().or_else(|| i.data_file()) {
                return Err(EngineError::Invalid(format!(
                    "the upload to {pool}/{name} is a qcow2 image with a backing or data file ({other}); upload a self-contained image (qemu-img convert -O qcow2 flattens it)"
                )));
            }
        }
        let replaced = tokio::task::spawn_blocking(move || up.commit())
            .await
            .map_err(|e| EngineError::Internal(format!("upload commit: {e}")))?
            .map_err(|e| EngineError::Host(format!("upload to {pool}/{name}: commit: {e}")))?;
        self.record_image(&path, format, ImageOrigin::Created, None)?;
        Ok(replaced)
    }

    /// The file to stream for a download.
    pub fn vol_download_source(&self, pool: &str, name: &str) -> Result<PathBuf> {
        self.existing_vol(pool, name)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Regular files in a pool directory whose names are valid volume names.
pub(crate) fn volume_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<VolName>().is_ok())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Removes `.` and trailing slashes (no symlink resolution: the directory may not exist).
fn normalize(p: &Path) -> PathBuf {
    p.components().collect()
}
