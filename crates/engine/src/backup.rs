//! `hv host backup`: a consistent online copy of hv's database and the VM metadata kept beside
//! it, as one tar archive.
//!
//! The archive holds, relative to the state dir so that restoring is extracting it there:
//! - `hv-backup.json`: what it is (format, when, which VMs, networks and pools it names);
//! - `hv.db`: the whole database (VMs, snapshots' metadata, networks, pools, the image
//!   registry, users, grants, token hashes, the audit log), copied with SQLite's online backup
//!   API in one step, so it is one consistent state even while hvd writes;
//! - `tls/`: the CA and certificate hvd serves (so remotes that pinned it keep trusting it);
//! - `vms/NAME/...`: the files hv keeps with each VM other than its logs (firmware variables,
//!   TPM state, cloud-init seeds).
//!
//! Disk images are data, not metadata: they are not in the archive (back them up with the
//! pools; a restored hv finds them at the paths its database names).
//!
//! Only regular files are taken, never through a symlink: a VM's own files may be written by
//! its (unprivileged, possibly compromised) QEMU or swtpm, and a link planted there must not
//! make hvd copy a host file into the archive.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::Engine;

/// The archive's format version (`hv-backup.json`'s `format`).
pub const BACKUP_FORMAT: u32 = 1;

/// The manifest at the head of the archive.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: u32,
    hv_version: &'a str,
    created_unix: u64,
    state_dir: String,
    vms: Vec<String>,
    networks: Vec<String>,
    pools: Vec<String>,
    /// What a restore needs besides this archive.
    not_included: &'a str,
}

/// A finished archive: an unnamed temp file (gone when dropped), read from its start.
pub struct BackupArchive {
    pub file: File,
    pub len: u64,
    pub vms: usize,
}

/// Log files are not metadata: `console.log`, `qemu.log.1`, ...
pub(crate) fn is_log(name: &str) -> bool {
    name.ends_with(".log")
        || name
            .rsplit_once(".log.")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is a database copy a dead hvd left (`.backup-PID-N.db`).
fn stale_db_copy(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(".backup-")
        .and_then(|r| r.strip_suffix(".db"))
    else {
        return false;
    };
    crate::dead_hvd_tag(rest)
}

/// Removes itself: the database copy lives only while the archive is written.
struct TempPath(PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::Host(format!("{what}: {e}"))
}

/// Copies the live database at `src` to `dst` with SQLite's online backup API, all pages in
/// one step (one read transaction: a consistent state even while hvd commits).
fn copy_database(src: &Path, dst: &Path) -> Result<()> {
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(Duration::from_secs(10))?;
    let mut to = Connection::open(dst)?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
    loop {
        match backup.step(-1)? {
            rusqlite::backup::StepResult::Done => break,
            // Busy or locked: another connection holds a write lock for a moment.
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    drop(backup);
    // The copy is a self-contained file: no WAL beside it.
    to.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// Appends the regular file at `path` (opened without following a final symlink) as `name`.
fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> Result<bool> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // Gone since the directory was read, or a symlink: not ours to copy.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    };
    let meta = f
        .metadata()
        .map_err(io(format!("cannot read {}", path.display())))?;
    if !meta.is_file() {
        return Ok(false);
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    header.set_size(meta.len());
    // A file that changes size while it is read would break the archive: take what the
    // header says, padded if it shrank.
    let mut body = (&f)
        .take(meta.len())
        .chain(std::io::repeat(0))
        .take(meta.len());
    tar.append_data(&mut header, name, &mut body)
        .map_err(io(format!("cannot archive {}", path.display())))?;
    Ok(true)
}

/// Appends the regular files under `dir` (recursively, never following symlinks) below
/// `prefix`, skipping what `skip` names.
pub(crate) fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    skip: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("cannot read {}", dir.display()))(e)),
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if skip(&name) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            append_tree(tar, &e.path(), &prefix.join(&name), skip)?;
        } else if ft.is_file() {
            append_file(tar, &e.path(), &prefix.join(&name))?;
        }
    }
    Ok(())
}

impl Engine {
    /// Writes a backup archive (see the module docs) into an unnamed temp file in the state
    /// dir and returns it, rewound. Nothing is left behind if it fails.
    pub fn backup(&self) -> Result<BackupArchive> {
        let state = &self.inner.cfg.state_dir;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let db_copy = TempPath(state.join(format!(".backup-{}-{n}.db", std::process::id())));
        copy_database(&self.inner.cfg.db_path(), &db_copy.0)?;

        let vms: Vec<String> = self.read_vms().keys().cloned().collect();
        let networks = self
            .inner
            .store
            .load_networks()?
            .into_iter()
            .map(|(n, _)| n.name.to_string())
            .collect();
        let pools = self
            .inner
            .store
            .load_pools()?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let manifest = Manifest {
            format: BACKUP_FORMAT,
            hv_version: env!("CARGO_PKG_VERSION"),
            created_unix: crate::now_secs(),
            state_dir: state.display().to_string(),
            vms: vms.clone(),
            networks,
            pools,
            not_included: "disk images and volumes (back up the pools); logs; runtime sockets",
        };
        let manifest = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| EngineError::Host(format!("cannot write the manifest: {e}")))?;

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(state)
            .map_err(io(format!(
                "cannot create a temp file in {}",
                state.display()
            )))?;
        let mut tar = tar::Builder::new(file);
        tar.mode(tar::HeaderMode::Complete);
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(crate::now_secs());
        tar.append_data(&mut header, "hv-backup.json", &manifest[..])
            .map_err(io("cannot write the archive".into()))?;
        append_file(&mut tar, &db_copy.0, Path::new("hv.db"))?;
        append_tree(&mut tar, &state.join("tls"), Path::new("tls"), &|_| false)?;
        for name in &vms {
            append_tree(
                &mut tar,
                &self.inner.cfg.vm_dir(name),
                &Path::new("vms").join(name),
                &is_log,
            )?;
        }
        let mut file = tar
            .into_inner()
            .map_err(io("cannot finish the archive".into()))?;
        file.flush()
            .map_err(io("cannot finish the archive".into()))?;
        let len = file
            .stream_position()
            .map_err(io("cannot finish the archive".into()))?;
        file.rewind()
            .map_err(io("cannot finish the archive".into()))?;
        tracing::info!(bytes = len, vms = vms.len(), "backup written");
        Ok(BackupArchive {
            file,
            len,
            vms: vms.len(),
        })
    }

    /// Removes database copies of backups an earlier hvd did not finish (at startup).
    pub(crate) fn remove_stale_backups(&self) {
        let Ok(rd) = std::fs::read_dir(&self.inner.cfg.state_dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_str().is_some_and(stale_db_copy) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_not_metadata() {
        for log in ["console.log", "qemu.log", "qmp.log.1", "qemu.log.12"] {
            assert!(is_log(log), "{log}");
        }
        for keep in ["nvram.fd", "tpm", "seed.img", "log", "x.log.", "x.log.a"] {
            assert!(!is_log(keep), "{keep}");
        }
    }

    #[test]
    fn only_a_dead_hvds_database_copies_are_stale() {
        assert!(stale_db_copy(".backup-999999999-0.db"));
        let mine = format!(".backup-{}-3.db", std::process::id());
        assert!(!stale_db_copy(&mine));
        for other in [
            "hv.db",
            ".backup-1.db",
            ".backup-x-1.db",
            "backup-999999999-0.db",
        ] {
            assert!(!stale_db_copy(other), "{other}");
        }
    }
}
