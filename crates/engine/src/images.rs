//! The image registry: the format of every image file hv creates, imports, hands to a guest or
//! adopts is recorded once and never guessed again from the file's bytes. A guest owns every
//! byte of its disk; were a raw disk's format re-probed, a guest could write a qcow2 header
//! there whose backing file is any host file, and whatever probed it next (info, clone,
//! overlay, define, start) would open that host file for it. libvirt closed the same hole by
//! never probing unless told.
//!
//! Rules:
//! - A recorded image is read as its recorded format, always with an explicit `-f`.
//! - An unrecorded file is one no guest has written through hv: an admin's path disk or a file
//!   put in a pool by hand. It is probed once, taken only as raw or as a qcow2 that names no
//!   backing or data file, and recorded. Anything else needs an explicit format.
//! - Each image's backing link is recorded as hv made it (an overlay, a linked clone, a rebase
//!   after a merge) or, for a file hv adopts, as its header said then. A VM's QEMU can write its
//!   image's header, so a header whose link differs from the record is refused, never
//!   followed. A chain is followed only when every layer's format is known (recorded, or named
//!   in the header above it) and never into a layer recorded as another format.
//! - A record names the file's device and inode: a file replaced behind hv's back is not the
//!   recorded one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use model::DiskFormat;

use crate::error::{EngineError, Result};
use crate::store::{ImageOrigin, ImageRow};
use crate::Engine;

/// One layer below the top of a disk's chain, top-most first.
pub(crate) type Chain = Vec<qemu_argv::Layer>;

/// Chains longer than this are refused (a loop, or not something hv made).
const MAX_CHAIN: usize = 32;

fn host(e: host_storage::StorageError) -> EngineError {
    EngineError::Host(e.to_string())
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Engine {
    /// The record of `path`, if it is still the file that was recorded.
    pub(crate) fn image_record(&self, path: &Path) -> Result<Option<ImageRow>> {
        let Some(row) = self.inner.store.image(path)? else {
            return Ok(None);
        };
        if file_id(path) == Some((row.dev, row.ino)) {
            return Ok(Some(row));
        }
        // Replaced (or removed) behind hv's back: the record no longer describes this file.
        self.inner.store.delete_image(path)?;
        Ok(None)
    }

    /// Records `path` (which must exist) as `format`, with the backing file hv made it on.
    pub(crate) fn record_image(
        &self,
        path: &Path,
        format: DiskFormat,
        origin: ImageOrigin,
        backing: Option<&Path>,
    ) -> Result<()> {
        let (dev, ino) = file_id(path).ok_or_else(|| {
            EngineError::Host(format!(
                "cannot record {}: it does not exist",
                path.display()
            ))
        })?;
        self.inner.store.put_image(&ImageRow {
            path: path.to_path_buf(),
            format,
            origin,
            dev,
            ino,
            backing: Some(backing.map(Path::to_path_buf)),
        })
    }

    /// Records that hv pointed `path` at another backing file (a rebase, or QEMU's own after a
    /// merge hv asked for).
    pub(crate) fn set_backing(&self, path: &Path, backing: &Path) -> Result<()> {
        if let Some(mut row) = self.image_record(path)? {
            row.backing = Some(Some(backing.to_path_buf()));
            self.inner.store.put_image(&row)?;
        }
        Ok(())
    }

    pub(crate) fn forget_image(&self, path: &Path) -> Result<()> {
        self.inner.store.delete_image(path)
    }

    /// The format of an existing image: `given` (checked against the record), the recorded
    /// one, or, for a file hv has never seen, a one-time probe that accepts only raw and
    /// self-contained qcow2. `what` names the image in errors (`disks[0]`, `volume p/x`).
    pub(crate) async fn image_format(
        &self,
        path: &Path,
        given: Option<DiskFormat>,
        what: &str,
    ) -> Result<DiskFormat> {
        if let Some(rec) = self.image_record(path)? {
            return match given {
                Some(g) if g != rec.format => Err(EngineError::Invalid(format!(
                    "{what}: {} is recorded as {}; hv never reads a disk as another format than it was made as (convert it with hv vol clone or qemu-img convert)",
                    path.display(),
                    rec.format
                ))),
                _ => Ok(rec.format),
            };
        }
        if let Some(g) = given {
            // The admin says what the file is: check that it opens as that and record it.
            let chain = self.chain_below(path, g, what).await?;
            let backing = chain.first().map(|l| l.path.as_path());
            self.record_image(path, g, ImageOrigin::Adopted, backing)?;
            return Ok(g);
        }
        let i = host_storage::probe(path).await.map_err(host)?;
        let format = match i.disk_format() {
            Some(DiskFormat::Raw) => DiskFormat::Raw,
            Some(DiskFormat::Qcow2) if i.backing_filename.is_none() && i.data_file().is_none() => {
                DiskFormat::Qcow2
            }
            Some(DiskFormat::Qcow2) => {
                return Err(EngineError::Invalid(format!(
                    "{what}: {} looks like a qcow2 image that refers to other files ({}); hv does not guess formats of such images: give format=qcow2 if you made it, or format=raw if it is a raw disk",
                    path.display(),
                    i.backing_filename
                        .clone()
                        .or_else(|| i.data_file())
                        .unwrap_or_default()
                )))
            }
            None => {
                return Err(EngineError::Invalid(format!(
                    "{what}: {} is in format {}, which hv does not run; convert it with qemu-img convert -O qcow2, or give format=raw to use its bytes as they are",
                    path.display(),
                    i.format
                )))
            }
        };
        self.record_image(path, format, ImageOrigin::Adopted, None)?;
        Ok(format)
    }

    /// The layers below `top` (read as `format`), top-most first, each with a known format.
    /// Refuses external data files, chains whose formats are unknown, layers recorded as
    /// another format than the header above them says, missing layers and loops.
    pub(crate) async fn chain_below(
        &self,
        top: &Path,
        format: DiskFormat,
        what: &str,
    ) -> Result<Chain> {
        let mut chain = Chain::new();
        let mut cur: PathBuf = top.to_path_buf();
        let mut fmt = format;
        while fmt == DiskFormat::Qcow2 {
            let i = host_storage::info(&cur, fmt).await.map_err(host)?;
            if let Some(df) = i.data_file() {
                return Err(EngineError::Invalid(format!(
                    "{what}: {} keeps its data in another file ({df}); hv does not run such images",
                    cur.display()
                )));
            }
            // The link hv made must be the one the header has: a VM's QEMU writes that header.
            if let Some(rec) = self.image_record(&cur)? {
                if let Some(made) = &rec.backing {
                    let now = i.backing_path(&cur);
                    if now.as_ref() != made.as_ref() {
                        let show = |p: Option<&PathBuf>| {
                            p.map(|p| p.display().to_string())
                                .unwrap_or_else(|| "none".into())
                        };
                        return Err(EngineError::Invalid(format!(
                            "{what}: the backing link in {}'s header is {}, but hv made it {}: the image was changed behind hv's back (its VM's QEMU can write it); refusing to follow it. Restore the link with qemu-img rebase -u, or copy the image with qemu-img convert",
                            cur.display(),
                            show(now.as_ref()),
                            show(made.as_ref())
                        )));
                    }
                }
            }
            let Some(backing) = i.backing_path(&cur) else {
                break;
            };
            let bf: DiskFormat = i
                .backing_filename_format
                .as_deref()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "{what}: {} names its backing file {} without a format hv runs ({}); rebase it with qemu-img rebase -u -F raw|qcow2, or flatten it with qemu-img convert",
                        cur.display(),
                        backing.display(),
                        i.backing_filename_format.as_deref().unwrap_or("none")
                    ))
                })?;
            if !backing.is_file() {
                return Err(EngineError::Invalid(format!(
                    "{what}: the backing file {} of {} does not exist",
                    backing.display(),
                    cur.display()
                )));
            }
            if let Some(rec) = self.image_record(&backing)? {
                if rec.format != bf {
                    return Err(EngineError::Invalid(format!(
                        "{what}: {} says its backing file {} is {bf}, but hv recorded it as {}; refusing to read it as another format",
                        cur.display(),
                        backing.display(),
                        rec.format
                    )));
                }
            }
            if backing == top || chain.iter().any(|l: &qemu_argv::Layer| l.path == backing) {
                return Err(EngineError::Invalid(format!(
                    "{what}: the backing chain of {} loops at {}",
                    top.display(),
                    backing.display()
                )));
            }
            if chain.len() >= MAX_CHAIN {
                return Err(EngineError::Invalid(format!(
                    "{what}: the backing chain of {} is longer than {MAX_CHAIN} layers",
                    top.display()
                )));
            }
            chain.push(qemu_argv::Layer {
                path: backing.clone(),
                format: bf,
            });
            cur = backing;
            fmt = bf;
        }
        Ok(chain)
    }

    /// Recorded qcow2 images in `dir` whose backing file is `image`, by the links hv recorded
    /// (a header is read only for a record from before links were kept; unrecorded files are
    /// never opened as qcow2 to ask).
    pub(crate) async fn recorded_children(&self, dir: &Path, image: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for r in self.inner.store.images_in(dir)? {
            if r.format != DiskFormat::Qcow2 || r.path == image {
                continue;
            }
            if file_id(&r.path) != Some((r.dev, r.ino)) {
                continue;
            }
            let on_image = match &r.backing {
                Some(link) => link.as_deref() == Some(image),
                None => host_storage::info(&r.path, DiskFormat::Qcow2)
                    .await
                    .is_ok_and(|i| i.backing_path(&r.path).as_deref() == Some(image)),
            };
            if on_image {
                out.push(r.path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Records the formats every VM definition and snapshot already names (once per start):
    /// a state dir from before the registry keeps its disks' formats, and no guest-written
    /// disk is ever probed.
    pub(crate) async fn record_defined_images(
        &self,
        snapshots: &BTreeMap<i64, Vec<crate::store::SnapshotRow>>,
    ) -> Result<()> {
        let vms: Vec<_> = self.read_vms().values().cloned().collect();
        for vm in vms {
            let mut known: Vec<(PathBuf, DiskFormat)> = vm
                .lock()
                .spec
                .disks
                .iter()
                .filter_map(|d| Some((d.path.clone(), d.format?)))
                .filter(|(p, _)| !p.as_os_str().is_empty())
                .collect();
            for s in snapshots.get(&vm.id).into_iter().flatten() {
                known.extend(s.disks.iter().map(|d| (d.image.clone(), d.image_format)));
            }
            for (path, format) in known {
                if path.is_file() && self.image_record(&path)?.is_none() {
                    // Its link as it is now: the first record of an image hv ran before.
                    let backing = match format {
                        DiskFormat::Qcow2 => host_storage::info(&path, format)
                            .await
                            .ok()
                            .and_then(|i| i.backing_path(&path)),
                        DiskFormat::Raw => None,
                    };
                    self.record_image(&path, format, ImageOrigin::Adopted, backing.as_deref())?;
                }
            }
        }
        Ok(())
    }
}
