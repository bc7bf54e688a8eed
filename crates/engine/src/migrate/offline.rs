//! `--offline`: a stopped VM's disks move file by file, qcow2 chains kept.
//!
//! The source plans each disk's chain (from the image registry, never from headers alone),
//! base first, and sends every layer over its own `file-N` tunnel channel. A channel carries
//! an 8-byte big-endian length, then the file's bytes; the target answers one byte (`0`) once
//! the layer is durable and in place, so the source knows every layer arrived before it lets
//! the target take the VM.
//!
//! The target writes each layer to a temp file beside its final place (`.NAME.upload-PID-N`,
//! which a restarted hvd removes like any unfinished upload), checks the byte count, reads it
//! as the declared format only (`-f`, never probed) and checks its virtual size, refuses an
//! external data file, points a qcow2 layer at its backing layer's NEW path (`rebase -u`: the
//! header still names the source's path), and only then renames it into place (never over an
//! existing file). Abort removes the layers that made it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use model::DiskFormat;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{EngineError, Result};

/// The target's answer once a layer is in place.
const LAYER_OK: u8 = 0;
/// Bytes moved per read.
const CHUNK: usize = 1 << 20;

/// One layer of a disk's chain as the target receives it (mirrors `api::IncomingLayer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub file_name: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
    /// Index of its backing layer in the same disk's list.
    pub backing: Option<usize>,
}

impl From<&LayerPlan> for api::IncomingLayer {
    fn from(l: &LayerPlan) -> Self {
        api::IncomingLayer {
            file_name: l.file_name.clone(),
            format: l.format,
            virtual_size: l.virtual_size,
            backing: l.backing,
        }
    }
}

impl From<&api::IncomingLayer> for LayerPlan {
    fn from(l: &api::IncomingLayer) -> Self {
        LayerPlan {
            file_name: l.file_name.clone(),
            format: l.format,
            virtual_size: l.virtual_size,
            backing: l.backing,
        }
    }
}

/// A source image as the registry knows it: path, recorded format, virtual size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLayer {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// One disk's chain to send: the layers base first, with the files they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub target: String,
    pub layers: Vec<LayerPlan>,
    pub files: Vec<PathBuf>,
}

/// Plans a disk from its chain listed top first (as QEMU and the registry list it). Each layer
/// is backed by the one below it; file names stay as they are.
pub fn plan_disk(target: &str, chain_top_first: &[SourceLayer]) -> Result<DiskPlan> {
    if chain_top_first.is_empty() {
        return Err(EngineError::Internal(format!("disk {target} has no image")));
    }
    let mut layers = Vec::new();
    let mut files = Vec::new();
    for (i, l) in chain_top_first.iter().rev().enumerate() {
        let name = l.path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            EngineError::Invalid(format!(
                "disk {target}: {} has no usable file name to migrate under",
                l.path.display()
            ))
        })?;
        if i > 0 && chain_top_first.len() > 1 && l.format != DiskFormat::Qcow2 {
            return Err(EngineError::Invalid(format!(
                "disk {target}: layer {} is {}, only qcow2 layers can sit on a backing image",
                l.path.display(),
                l.format
            )));
        }
        layers.push(LayerPlan {
            file_name: name.to_string(),
            format: l.format,
            virtual_size: l.virtual_size,
            backing: i.checked_sub(1),
        });
        files.push(l.path.clone());
    }
    Ok(DiskPlan {
        target: target.to_string(),
        layers,
        files,
    })
}

/// Every layer of the VM lands in one directory per pool on the target: two with the same
/// name would collide, so they are refused up front, naming both.
pub fn check_names(disks: &[DiskPlan]) -> Result<()> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for d in disks {
        for l in &d.layers {
            if !seen.insert(l.file_name.as_str()) {
                return Err(EngineError::Invalid(format!(
                    "two images of this VM are named {:?} (disk {}); offline migration keeps file names, rename one (hv vol clone) or migrate with --copy-storage",
                    l.file_name, d.target
                )));
            }
        }
    }
    Ok(())
}

/// A file name the target accepts for a layer: a plain name, no path, not hidden.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "layer file name {:?} is not a plain file name",
            name.chars().take(64).collect::<String>()
        )))
    }
}

// ---- source ---------------------------------------------------------------------------------

/// Sends `path` over a `file-N` channel and waits for the target's confirmation. Returns the
/// bytes sent; `on_bytes` hears the running count.
pub async fn send_layer<S>(
    path: &Path,
    stream: &mut S,
    mut on_bytes: impl FnMut(u64),
) -> Result<u64>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| EngineError::Host(format!("cannot read {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| EngineError::Host(format!("cannot read {}: {e}", path.display())))?
        .len();
    let link = |e: std::io::Error| {
        EngineError::Host(format!(
            "sending {} to the target failed: {e}",
            path.display()
        ))
    };
    stream.write_all(&len.to_be_bytes()).await.map_err(link)?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| EngineError::Host(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            return Err(EngineError::Host(format!(
                "{} shrank while it was sent; is the VM really stopped?",
                path.display()
            )));
        }
        let n = n.min((len - sent) as usize);
        stream.write_all(&buf[..n]).await.map_err(link)?;
        sent += n as u64;
        on_bytes(sent);
    }
    stream.flush().await.map_err(link)?;
    let mut ack = [0u8; 1];
    let got = stream.read_exact(&mut ack).await;
    // A clean end of the channel (not a broken tunnel, which fails the target's session).
    let _ = stream.shutdown().await;
    match got {
        Ok(_) if ack[0] == LAYER_OK => Ok(sent),
        Ok(_) => Err(EngineError::Host(format!(
            "the target refused {}; its log says why",
            path.display()
        ))),
        Err(e) => Err(EngineError::Host(format!(
            "the target did not confirm {} (the link broke or it refused the file; its log says why): {e}",
            path.display()
        ))),
    }
}

/// Layer `n` of the `file-N` channels: disks in order, each disk's layers base first.
pub fn layer_index(disks: &[Vec<LayerPlan>], n: usize) -> Option<(usize, usize)> {
    let mut n = n;
    for (d, layers) in disks.iter().enumerate() {
        if n < layers.len() {
            return Some((d, n));
        }
        n -= layers.len();
    }
    None
}

/// Sends every layer of `plans` in channel order, each over the channel `open` gives for its
/// name (`file-N`). `on_bytes` hears the bytes sent in total.
pub async fn send_all<S, F, Fut>(
    plans: &[DiskPlan],
    mut open: F,
    mut on_bytes: impl FnMut(u64),
) -> Result<u64>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<S>>,
{
    let mut total = 0u64;
    let mut n = 0usize;
    for p in plans {
        for file in &p.files {
            let mut stream = open(format!("file-{n}")).await?;
            let before = total;
            total += send_layer(file, &mut stream, |b| on_bytes(before + b)).await?;
            n += 1;
        }
    }
    Ok(total)
}

/// What the target has received of an offline migration's layers.
#[derive(Debug, Default)]
pub struct Received {
    /// Per disk: the directory its layers go to and the layers.
    disks: Vec<(PathBuf, Vec<LayerPlan>)>,
    got: std::collections::BTreeMap<(usize, usize), PathBuf>,
}

impl Received {
    pub fn new(disks: Vec<(PathBuf, Vec<LayerPlan>)>) -> Received {
        Received {
            disks,
            got: Default::default(),
        }
    }

    /// Where layer `n` goes, what it is, and its backing layer's file on this host (which
    /// must have arrived already: layers come base first).
    #[allow(clippy::type_complexity)]
    pub fn next(&self, n: usize) -> Result<(PathBuf, LayerPlan, Option<(PathBuf, DiskFormat)>)> {
        let lists: Vec<Vec<LayerPlan>> = self.disks.iter().map(|d| d.1.clone()).collect();
        let (d, l) = layer_index(&lists, n)
            .ok_or_else(|| EngineError::NotFound(format!("this migration has no layer {n}")))?;
        if self.got.contains_key(&(d, l)) {
            return Err(EngineError::AlreadyExists(format!(
                "layer {n} arrived already"
            )));
        }
        let layer = lists[d][l].clone();
        let backing = match layer.backing {
            None => None,
            Some(b) if b < l => {
                let path = self.got.get(&(d, b)).ok_or_else(|| {
                    EngineError::WrongState(format!(
                        "layer {n} came before its backing layer; send base layers first"
                    ))
                })?;
                Some((path.clone(), lists[d][b].format))
            }
            Some(_) => {
                return Err(EngineError::Invalid(format!(
                    "layer {n} names a backing layer above it"
                )))
            }
        };
        Ok((self.disks[d].0.clone(), layer, backing))
    }

    pub fn arrived(&mut self, n: usize, path: PathBuf) {
        let lists: Vec<Vec<LayerPlan>> = self.disks.iter().map(|d| d.1.clone()).collect();
        if let Some(k) = layer_index(&lists, n) {
            self.got.insert(k, path);
        }
    }

    /// Every layer is here.
    pub fn complete(&self) -> bool {
        self.got.len() == self.disks.iter().map(|d| d.1.len()).sum::<usize>()
    }

    /// The files received so far (to remove on abort), upper layers first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.got.values().rev().cloned().collect()
    }

    /// `source` (a path the source's spec or snapshot rows name) as a file on this host: the
    /// received layer of the same file name (names are unique within a migration).
    pub fn map(&self, source: &Path) -> Option<PathBuf> {
        let name = source.file_name()?;
        self.got
            .values()
            .find(|p| p.file_name() == Some(name))
            .cloned()
    }
}

// ---- target ---------------------------------------------------------------------------------

/// Receives one layer into `dir` under `layer.file_name`, backed (qcow2) by `backing` (the
/// final path and format of its backing layer, already received). Returns the final path
/// ([`confirm`] tells the source). On any failure nothing is left in `dir`.
pub async fn receive_layer<S>(
    stream: &mut S,
    dir: &Path,
    layer: &LayerPlan,
    backing: Option<(&Path, DiskFormat)>,
) -> Result<PathBuf>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    check_file_name(&layer.file_name)?;
    let name = &layer.file_name;
    let dst = dir.join(name);
    if dst.exists() {
        return Err(EngineError::AlreadyExists(format!(
            "{} already exists on the target; remove or rename it there, or migrate with --copy-storage",
            dst.display()
        )));
    }
    let mut len = [0u8; 8];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| EngineError::Host(format!("the source did not send {name}: {e}")))?;
    let len = u64::from_be_bytes(len);
    let cap = host_storage::fs_capacity(dir)
        .map_err(|e| EngineError::Host(format!("{}: {e}", dir.display())))?;
    if len > cap.available_bytes {
        return Err(EngineError::Invalid(format!(
            "{name} has {len} bytes, more than the {} free in {}; free space on the target",
            cap.available_bytes,
            dir.display()
        )));
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.upload-{}-{n}", std::process::id()));
    let mut up = host_storage::transfer::Upload::create(&tmp, &dst)
        .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", tmp.display())))?;
    // From here `up` removes the temp file unless it is committed.
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < len {
        let want = CHUNK.min((len - got) as usize);
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(|e| EngineError::Host(format!("receiving {name} failed: {e}")))?;
        if n == 0 {
            return Err(EngineError::Host(format!(
                "the source sent {got} of {len} bytes of {name}: the link broke; nothing was kept"
            )));
        }
        tokio::task::block_in_place(|| up.write_all(&buf[..n]))
            .map_err(|e| EngineError::Host(format!("writing {}: {e}", tmp.display())))?;
        got += n as u64;
    }
    check_received(&tmp, layer, backing).await?;
    tokio::task::block_in_place(|| up.commit_new()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => EngineError::AlreadyExists(format!(
            "{} appeared on the target while it was received; nothing was kept",
            dst.display()
        )),
        _ => EngineError::Host(format!("cannot put {} in place: {e}", dst.display())),
    })?;
    Ok(dst)
}

/// Tells the source that what it sent on this channel is in place (and recorded): only then
/// does it go on, so the target never sees a layer before its backing one is known.
pub async fn confirm<S: AsyncWrite + Unpin>(stream: &mut S) -> Result<()> {
    async {
        stream.write_all(&[LAYER_OK]).await?;
        stream.flush().await
    }
    .await
    .map_err(|e| EngineError::Host(format!("the source went away before the confirmation: {e}")))
}

/// The received file is what the source said: the declared format and virtual size, no data
/// file, a backing image exactly when it has a backing layer (then re-pointed at it).
async fn check_received(
    tmp: &Path,
    layer: &LayerPlan,
    backing: Option<(&Path, DiskFormat)>,
) -> Result<()> {
    let name = &layer.file_name;
    let info = host_storage::info(tmp, layer.format).await.map_err(|e| {
        EngineError::Invalid(format!(
            "{name} does not read as the {} image the source declared: {e}",
            layer.format
        ))
    })?;
    if info.virtual_size != layer.virtual_size {
        return Err(EngineError::Invalid(format!(
            "{name} has a virtual size of {} bytes, not the {} the source declared",
            info.virtual_size, layer.virtual_size
        )));
    }
    if let Some(d) = info.data_file() {
        return Err(EngineError::Invalid(format!(
            "{name} names an external data file ({d}); hv does not take such images"
        )));
    }
    match (backing, info.backing_filename.is_some()) {
        (Some((b, bf)), true) if layer.format == DiskFormat::Qcow2 => {
            host_storage::rebase_unsafe(tmp, b, bf).await.map_err(|e| {
                EngineError::Host(format!("cannot point {name} at {}: {e}", b.display()))
            })
        }
        (None, false) => Ok(()),
        (Some(_), _) => Err(EngineError::Invalid(format!(
            "{name} has no backing image, but the source declared one"
        ))),
        (None, true) => Err(EngineError::Invalid(format!(
            "{name} names a backing image, but the source declared none"
        ))),
    }
}

#[cfg(test)]
#[path = "tests/offline.rs"]
mod tests;
