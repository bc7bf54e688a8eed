//! Virtual media scoped to one VM (issue 11), as an IP-KVM switch's virtual media is to its
//! port: the pool volumes that can go into the VM's CD-ROM drive, and new media uploaded into
//! a pool for it. A medium is a raw volume that no VM has as a disk and no volume is backed by,
//! so a caller allowed to change one VM's medium can never read another VM's disk through its
//! drive. An upload only ever creates a new volume: it never replaces one.

use std::io::Read;
use std::path::Path;

use api::{MediaChoices, MediaPool, MediumInfo, MAX_MEDIUM_BYTES, MEDIUM_SUFFIXES};
use model::{DiskFormat, VolName, VolRef};

use crate::error::{EngineError, Result};
use crate::store::ImageOrigin;
use crate::{Engine, Upload};

/// Where ISO 9660's first volume descriptor says `CD001`.
const ISO9660_MAGIC_AT: u64 = 32769;

/// Whether `file` holds an ISO 9660 file system (one 5-byte read at a fixed offset; nothing
/// else is read from bytes a guest may have written).
fn is_iso9660(file: &Path) -> bool {
    use std::io::Seek;
    let mut magic = [0u8; 5];
    std::fs::File::open(file)
        .and_then(|mut f| {
            f.seek(std::io::SeekFrom::Start(ISO9660_MAGIC_AT))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && &magic == b"CD001"
}

/// Checks a new medium's name: a volume name ending in one of [`MEDIUM_SUFFIXES`].
pub fn medium_name(name: &str) -> Result<VolName> {
    if name.is_empty() {
        return Err(EngineError::Invalid(
            "the medium needs a name (volume=NAME.iso)".into(),
        ));
    }
    let v: VolName = name.parse().map_err(|e: model::SpecError| {
        EngineError::Invalid(format!(
            "medium name {:?}: {}",
            name.chars().take(64).collect::<String>(),
            e.message
        ))
    })?;
    let lower = name.to_ascii_lowercase();
    if !MEDIUM_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        return Err(EngineError::Invalid(format!(
            "medium name {name:?} must end in {}; rename the file (media are CD images)",
            MEDIUM_SUFFIXES.join(" or ")
        )));
    }
    Ok(v)
}

/// Whether `name` is an upload's temp file (`.NAME.upload-PID-N`) of an hvd that is gone: a
/// crash or kill in the middle of an upload leaves one behind.
fn stale_upload(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(".upload-") else {
        return false;
    };
    crate::dead_hvd_tag(tail)
}

impl Engine {
    /// Removes the temp files of uploads an earlier hvd did not finish (at startup, before
    /// any upload of this one begins).
    pub(crate) fn remove_stale_uploads(&self) {
        let Ok(pools) = self.inner.store.load_pools() else {
            return;
        };
        for p in pools {
            let Ok(rd) = std::fs::read_dir(&p.path) else {
                continue;
            };
            for e in rd.flatten() {
                let stale = e.file_type().is_ok_and(|t| t.is_file())
                    && e.file_name().to_str().is_some_and(stale_upload);
                if stale {
                    match std::fs::remove_file(e.path()) {
                        Ok(()) => {
                            tracing::info!(file = %e.path().display(), "removed an unfinished upload")
                        }
                        Err(err) => {
                            tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an unfinished upload")
                        }
                    }
                }
            }
        }
    }

    /// Why the volume at `file` cannot be a medium (another VM's disk, a backing image, not
    /// raw), if it cannot.
    pub(crate) async fn not_a_medium(&self, pool: &str, file: &Path) -> Result<Option<String>> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let disk_of = self.read_vms().values().any(|vm| {
            let st = vm.lock();
            st.spec.disks.iter().any(|d| d.path == file)
        });
        if disk_of {
            return Ok(Some(format!(
                "volume {pool}/{name} is a VM's disk; a disk cannot be a medium"
            )));
        }
        if self.overlay_on(file).await?.is_some() {
            return Ok(Some(format!(
                "volume {pool}/{name} backs another volume; it cannot be a medium"
            )));
        }
        match self
            .image_format(file, None, &format!("volume {pool}/{name}"))
            .await
        {
            Ok(DiskFormat::Raw) => Ok(None),
            Ok(f) => Ok(Some(format!(
                "volume {pool}/{name} is a {f} image; a medium is a raw CD image"
            ))),
            Err(e) => Ok(Some(e.to_string())),
        }
    }

    /// `GET /v1/vms/{name}/media/choices`: the media that can go into `name`'s drive and the
    /// pools a new one can be uploaded to.
    pub async fn media_choices(&self, name: &str) -> Result<MediaChoices> {
        let vm = self.get(name)?;
        let (current, current_path) = {
            let st = vm.lock();
            let cur = st
                .spec
                .cdrom
                .as_ref()
                .filter(|c| !c.as_os_str().is_empty())
                .map(|c| c.display().to_string());
            let path = st.spec.cdrom_vol().and_then(|r| self.vol_path(&r).ok());
            (cur, path)
        };
        let mut volumes = Vec::new();
        let mut upload_pools = Vec::new();
        for p in self.inner.store.load_pools()? {
            if !p.path.is_dir() {
                continue;
            }
            if let Ok(cap) = host_storage::fs_capacity(&p.path) {
                upload_pools.push(MediaPool {
                    pool: p.name.clone(),
                    available_bytes: cap.available_bytes,
                });
            }
            for f in crate::storage::volume_files(&p.path) {
                if self.not_a_medium(&p.name, &f).await?.is_some() {
                    continue;
                }
                let size_bytes = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                volumes.push(MediumInfo {
                    pool: p.name.clone(),
                    volume: f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    size_bytes,
                    iso9660: is_iso9660(&f),
                    inserted: current_path.as_deref() == Some(f.as_path()),
                });
            }
        }
        Ok(MediaChoices {
            vm: name.to_string(),
            current,
            volumes,
            upload_pools,
            max_upload_bytes: MAX_MEDIUM_BYTES,
        })
    }

    /// Starts uploading a new medium `pool/volume` of `len` bytes for VM `name`: checks the
    /// name, that no such volume exists, and the size against [`MAX_MEDIUM_BYTES`] and the
    /// pool's free space. The bytes go to a temp file that [`Self::medium_upload_commit`]
    /// puts in place; a dropped [`Upload`] removes it.
    pub async fn medium_upload_begin(
        &self,
        name: &str,
        pool: &str,
        volume: &str,
        len: u64,
        insert: bool,
    ) -> Result<Upload> {
        let vm = self.get(name)?;
        if insert && vm.state().is_active() && !self.running_has_cdrom(&vm) {
            return Err(EngineError::Invalid(format!(
                "VM {name} was started without a CD-ROM drive, so the medium could not be inserted; upload without insert, or stop the VM first"
            )));
        }
        let vol = medium_name(volume)?;
        let r = VolRef {
            pool: pool.parse().map_err(|e: model::SpecError| {
                EngineError::Invalid(format!(
                    "pool {:?}: {}",
                    pool.chars().take(64).collect::<String>(),
                    e.message
                ))
            })?,
            name: vol,
        };
        let path = self.vol_path(&r)?;
        if path.exists() {
            return Err(EngineError::AlreadyExists(format!(
                "volume {r} already exists; a medium upload never replaces a volume: pick another name"
            )));
        }
        if len == 0 {
            return Err(EngineError::Invalid(
                "the medium is empty (Content-Length: 0); upload a CD image".into(),
            ));
        }
        if len > MAX_MEDIUM_BYTES {
            return Err(EngineError::Invalid(format!(
                "the medium has {len} bytes, more than the {MAX_MEDIUM_BYTES} a medium may have"
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let cap = host_storage::fs_capacity(dir)
            .map_err(|e| EngineError::Host(format!("pool {pool}: {e}")))?;
        if len > cap.available_bytes {
            return Err(EngineError::Invalid(format!(
                "pool {pool} has {} bytes free, fewer than the medium's {len}; pick another pool or ask an admin to free space",
                cap.available_bytes
            )));
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{}.upload-{}-{n}", r.name, std::process::id()));
        Upload::create(&tmp, &path)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", tmp.display())))
    }

    /// Puts a whole upload in place as a new raw volume (durable first; refused, with nothing
    /// left behind, if a volume of that name appeared meanwhile), records its format and, with
    /// `insert`, puts it into VM `name`'s drive. If that fails, the new volume is removed again.
    pub async fn medium_upload_commit(
        &self,
        name: &str,
        pool: &str,
        volume: &str,
        up: Upload,
        insert: bool,
    ) -> Result<MediumInfo> {
        let dst = up.destination().to_path_buf();
        tokio::task::spawn_blocking(move || up.commit_new())
            .await
            .map_err(|e| EngineError::Internal(format!("medium upload commit: {e}")))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => EngineError::AlreadyExists(format!(
                    "volume {pool}/{volume} was created while the medium was uploaded; nothing was changed: pick another name"
                )),
                _ => EngineError::Host(format!("medium upload to {pool}/{volume}: commit: {e}")),
            })?;
        if let Err(e) = self.record_image(&dst, DiskFormat::Raw, ImageOrigin::Created, None) {
            let _ = std::fs::remove_file(&dst);
            return Err(e);
        }
        tracing::info!(pool, vol = volume, "medium uploaded");
        if insert {
            if let Err(e) = self.media_insert(name, &format!("{pool}/{volume}")).await {
                let _ = std::fs::remove_file(&dst);
                let _ = self.forget_image(&dst);
                return Err(e);
            }
        }
        Ok(MediumInfo {
            pool: pool.to_string(),
            volume: volume.to_string(),
            size_bytes: std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0),
            iso9660: is_iso9660(&dst),
            inserted: insert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, want: std::result::Result<(), &str>) {
        match (medium_name(name), want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{name:?}: {e}"),
            (got, want) => panic!("{name:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn medium_names() {
        check("debian.iso", Ok(()));
        check("Boot.IMG", Ok(()));
        check("", Err("needs a name"));
        check("../x.iso", Err("medium name"));
        check("a/b.iso", Err("medium name"));
        check(&format!("{}.iso", "a".repeat(300)), Err("medium name"));
        check("disk.qcow2", Err("must end in .iso or .img"));
        check(".iso", Err("medium name"));
    }

    #[test]
    fn stale_uploads_are_told_by_name() {
        // No process has a pid this large (pid_max is at most 2^22).
        assert!(stale_upload(".debian.iso.upload-99999999-0"));
        assert!(stale_upload(".a.upload-99999998-45"));
        assert!(!stale_upload(".a.upload-1-0"), "a live process's");
        let mine = format!(".a.iso.upload-{}-3", std::process::id());
        assert!(!stale_upload(&mine), "this hvd's own upload");
        for keep in [
            "a.iso",
            ".a.iso",
            ".a.upload-x-1",
            ".a.upload-1-",
            "a.upload-1-2",
            ".a.upload-1-2x",
        ] {
            assert!(!stale_upload(keep), "{keep}");
        }
    }

    #[test]
    fn iso9660_magic_is_read_at_its_offset() {
        let dir = std::env::temp_dir().join(format!("hv-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.iso");
        let mut b = vec![0u8; 40000];
        b[ISO9660_MAGIC_AT as usize..ISO9660_MAGIC_AT as usize + 5].copy_from_slice(b"CD001");
        std::fs::write(&f, &b).unwrap();
        assert!(is_iso9660(&f));
        std::fs::write(&f, b"short").unwrap();
        assert!(!is_iso9660(&f));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
