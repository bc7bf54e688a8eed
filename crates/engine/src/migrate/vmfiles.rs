//! `--offline`: the files hv keeps with a VM (`state/vms/NAME/`: UEFI `nvram.fd`, the TPM's
//! `tpm/` state, the cloud-init seed), logs left out, moved as one tar over the `vm-files`
//! channel with the same framing as a disk layer (8-byte length, the bytes, a confirmation).
//!
//! Taken on the source as the host backup takes them: regular files only, never through a
//! symlink (a VM's QEMU or swtpm may have planted one). Unpacked on the target only as plain
//! files below the VM's directory: no links, no absolute or `..` paths, bounded in size and
//! count, never over an existing file; on failure what was unpacked is removed.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{EngineError, Result};

/// The channel name (beside `memory`, `nbd` and `file-N`).
pub const CHANNEL: &str = "vm-files";
/// A VM's own files are small (variables, TPM state, a seed): more is refused.
pub const MAX_BYTES: u64 = 64 << 20;
const MAX_ENTRIES: usize = 256;
const MAX_DEPTH: usize = 4;

/// The VM directory's files (logs left out) as a tar, in memory.
pub fn pack(vm_dir: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    crate::backup::append_tree(&mut tar, vm_dir, Path::new(""), &crate::backup::is_log)?;
    tar.into_inner()
        .map_err(|e| EngineError::Host(format!("cannot pack {}: {e}", vm_dir.display())))
}

/// Sends `bytes` (from [`pack`]) and waits for the target's confirmation.
pub async fn send<S>(bytes: &[u8], stream: &mut S) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let link = |e: std::io::Error| {
        EngineError::Host(format!("sending the VM's files to the target failed: {e}"))
    };
    stream
        .write_all(&(bytes.len() as u64).to_be_bytes())
        .await
        .map_err(link)?;
    stream.write_all(bytes).await.map_err(link)?;
    stream.flush().await.map_err(link)?;
    let mut ack = [1u8; 1];
    let got = stream.read_exact(&mut ack).await;
    let _ = stream.shutdown().await;
    got.map_err(|e| {
        EngineError::Host(format!(
            "the target did not confirm the VM's files (its log says why): {e}"
        ))
    })?;
    if ack[0] != 0 {
        return Err(EngineError::Host(
            "the target refused the VM's files; its log says why".into(),
        ));
    }
    Ok(())
}

/// Receives the VM's files into `vm_dir` (created if missing). Returns the files made;
/// `offline::confirm` tells the source.
pub async fn receive<S>(stream: &mut S, vm_dir: &Path) -> Result<Vec<PathBuf>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut len = [0u8; 8];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| EngineError::Host(format!("the source did not send the VM's files: {e}")))?;
    let len = u64::from_be_bytes(len);
    if len > MAX_BYTES {
        return Err(EngineError::Invalid(format!(
            "the VM's files are {len} bytes, more than the {MAX_BYTES} hv takes"
        )));
    }
    let mut bytes = Vec::new();
    let got = (&mut *stream)
        .take(len)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| EngineError::Host(format!("receiving the VM's files failed: {e}")))?;
    if got as u64 != len {
        return Err(EngineError::Host(format!(
            "the source sent {got} of {len} bytes of the VM's files: the link broke; nothing was kept"
        )));
    }
    let dir = vm_dir.to_path_buf();
    tokio::task::spawn_blocking(move || unpack(&bytes, &dir))
        .await
        .map_err(|e| EngineError::Internal(format!("unpacking the VM's files: {e}")))?
}

/// Removes files [`receive`] made in `vm_dir` (on abort), and the directories below `vm_dir`
/// that this leaves empty (`vm_dir` itself is the session's).
pub fn remove(vm_dir: &Path, files: &[PathBuf]) {
    for f in files.iter().rev() {
        let _ = std::fs::remove_file(f);
        let mut dir = f.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(vm_dir) && *d != vm_dir) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// A tar entry's path, if it is a plain relative path of bounded depth.
fn plain(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty() && out.components().count() <= MAX_DEPTH).then_some(out)
}

fn unpack(bytes: &[u8], vm_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut made: Vec<PathBuf> = Vec::new();
    let r = unpack_into(bytes, vm_dir, &mut made);
    if r.is_err() {
        remove(vm_dir, &made);
    }
    r.map(|()| made)
}

fn unpack_into(bytes: &[u8], vm_dir: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
    let bad = |what: String| EngineError::Invalid(format!("the VM's files: {what}"));
    let mut ar = tar::Archive::new(bytes);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut count = 0usize;
    for e in entries {
        let mut e = e.map_err(|e| bad(format!("a broken entry: {e}")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} files")));
        }
        let raw = e
            .path()
            .map_err(|e| bad(format!("an unreadable name: {e}")))?
            .into_owned();
        let rel = plain(&raw)
            .ok_or_else(|| bad(format!("{:?} is not a plain relative path", raw.display())))?;
        match e.header().entry_type() {
            tar::EntryType::Regular => {}
            tar::EntryType::Directory => continue,
            t => {
                return Err(bad(format!(
                    "{} is a {t:?}, only regular files are taken",
                    rel.display()
                )))
            }
        }
        let dst = vm_dir.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                EngineError::Host(format!("cannot create {}: {err}", parent.display()))
            })?;
        }
        // Never over an existing file, never through a link.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dst)
            .map_err(|err| EngineError::Host(format!("cannot create {}: {err}", dst.display())))?;
        made.push(dst.clone());
        let mut body = Vec::new();
        (&mut e)
            .take(MAX_BYTES)
            .read_to_end(&mut body)
            .map_err(|err| bad(format!("{}: {err}", rel.display())))?;
        std::io::Write::write_all(&mut f, &body)
            .and_then(|()| f.sync_all())
            .map_err(|err| EngineError::Host(format!("cannot write {}: {err}", dst.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hv-mig-vmfiles-{tag}-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nvram_and_tpm_state_arrive_without_logs_or_links() {
        let root = tmp("ok");
        let src = root.join("src");
        std::fs::create_dir_all(src.join("tpm")).unwrap();
        std::fs::write(src.join("nvram.fd"), vec![7u8; 540_672]).unwrap();
        std::fs::write(src.join("tpm/tpm2-00.permall"), b"tpm state").unwrap();
        std::fs::write(src.join("qemu.log"), b"a log").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("planted")).unwrap();
        let bytes = pack(&src).unwrap();

        let dst = root.join("dst");
        let (mut a, mut b) = tokio::io::duplex(64 << 10);
        let sender = tokio::spawn(async move { send(&bytes, &mut a).await });
        let made = receive(&mut b, &dst).await.unwrap();
        super::super::offline::confirm(&mut b).await.unwrap();
        sender.await.unwrap().unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert_eq!(
            std::fs::read(dst.join("nvram.fd")).unwrap(),
            vec![7u8; 540_672]
        );
        assert_eq!(
            std::fs::read(dst.join("tpm/tpm2-00.permall")).unwrap(),
            b"tpm state"
        );
        assert!(!dst.join("qemu.log").exists());
        assert!(!dst.join("planted").exists());
        remove(&dst, &made);
        assert!(!dst.join("tpm").exists());
        assert!(dst.is_dir(), "the VM's directory is not the files'");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_archives_are_refused_and_leave_nothing() {
        let root = tmp("bad");
        let dst = root.join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        // A regular file, then a path that climbs out.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o600);
        tar.append_data(&mut h, "ok.fd", &b"ok"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        // `append_data` refuses `..`: write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        tar.append(&h, &b"x"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let (mut a, mut b) = tokio::io::duplex(64 << 10);
        let sender = tokio::spawn(async move { send(&bytes, &mut a).await });
        let err = receive(&mut b, &dst).await.unwrap_err().to_string();
        drop(b);
        assert!(sender.await.unwrap().is_err());
        assert!(err.contains("not a plain relative path"), "{err}");
        assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
        assert!(!root.join("escape").exists());

        // A symlink entry.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "nvram.fd", "/etc/shadow").unwrap();
        let bytes = tar.into_inner().unwrap();
        let (mut a, mut b) = tokio::io::duplex(64 << 10);
        let sender = tokio::spawn(async move { send(&bytes, &mut a).await });
        let err = receive(&mut b, &dst).await.unwrap_err().to_string();
        drop(b);
        let _ = sender.await;
        assert!(err.contains("only regular files"), "{err}");
        assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);

        // Too big, announced up front.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_BYTES + 1).to_be_bytes()).await.unwrap();
        let err = receive(&mut b, &dst).await.unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
