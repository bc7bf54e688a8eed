//! Moving a volume's bytes in and out quickly without giving up durability.
//!
//! [`Upload`] writes into a temp file beside the volume and starts writeback of each 8 MiB
//! window as soon as it is written (`sync_file_range`), so the final `fsync` in
//! [`Upload::commit`] has little left to do; only then is the temp file renamed over the
//! volume. [`Upload::splice_from`] moves bytes from a socket into the file without copying them
//! through user space (`fdcopy`, which also has `send_file` for the other direction).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Writeback is started for each window of this many bytes once it is complete.
const WINDOW: u64 = 8 << 20;
/// Windows whose writeback may be in flight before the writer waits for the oldest one. This
/// bounds the dirty page cache an upload holds to about `WINDOW * IN_FLIGHT`.
const IN_FLIGHT: u64 = 4;

/// A volume being replaced: bytes go to a temp file that [`Upload::commit`] makes durable and
/// renames over the volume. Dropped without a commit, the temp file is removed.
pub struct Upload {
    file: File,
    tmp: PathBuf,
    dst: PathBuf,
    written: u64,
    /// Writeback was started for `..kicked`.
    kicked: u64,
    /// Writeback finished for `..waited`.
    waited: u64,
    splicer: Option<fdcopy::Splicer>,
    committed: bool,
}

impl Upload {
    /// Creates (or truncates) `tmp`, which `commit` renames to `dst`.
    pub fn create(tmp: &Path, dst: &Path) -> io::Result<Upload> {
        let file = File::create(tmp)?;
        Ok(Upload {
            file,
            tmp: tmp.to_path_buf(),
            dst: dst.to_path_buf(),
            written: 0,
            kicked: 0,
            waited: 0,
            splicer: None,
            committed: false,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `buf`.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        self.writeback()
    }

    /// Moves up to `max` bytes from `from` (a socket or pipe in blocking mode) into the file
    /// through a pipe, without copying them into user space. Returns 0 at end of stream.
    pub fn splice_from(&mut self, from: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let splicer = match &self.splicer {
            Some(s) => s,
            None => self.splicer.insert(fdcopy::Splicer::new()?),
        };
        let n = splicer.splice(from, self.file.as_fd(), max)?;
        self.written += n as u64;
        self.writeback()?;
        Ok(n)
    }

    /// Starts writeback of every complete window and waits for old ones.
    fn writeback(&mut self) -> io::Result<()> {
        while self.written - self.kicked >= WINDOW {
            sync_range(&self.file, self.kicked, WINDOW, libc::SYNC_FILE_RANGE_WRITE)?;
            self.kicked += WINDOW;
            while self.kicked - self.waited > WINDOW * IN_FLIGHT {
                let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                sync_range(&self.file, self.waited, WINDOW, all)?;
                self.waited += WINDOW;
            }
        }
        Ok(())
    }

    /// Makes the bytes durable (`fsync`), then renames the temp file over the volume and syncs
    /// the directory. The volume is replaced only if every step succeeded.
    ///
    /// The old bytes stay allocated until the returned [`Replaced`] is dropped: freeing a big
    /// file takes a while (tens of ms for 256 MiB), so callers drop it after answering.
    /// The temp file the bytes go to (checked before `commit`).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> io::Result<Replaced> {
        // Holding the old volume open keeps the rename from freeing its blocks.
        let old = File::open(&self.dst).ok();
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dst)?;
        self.committed = true;
        if let Some(dir) = self.dst.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Replaced { _old: old })
    }
}

impl Upload {
    /// Where [`commit`](Self::commit) puts the bytes.
    pub fn destination(&self) -> &Path {
        &self.dst
    }

    /// Makes the bytes durable (`fsync`), then puts them in place as a NEW file: refused with
    /// [`io::ErrorKind::AlreadyExists`] if one appeared meanwhile (`renameat2` with
    /// `RENAME_NOREPLACE`, or a hard link where the file system has no such rename). Either
    /// way the temp file is gone afterwards.
    pub fn commit_new(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        rename_noreplace(&self.tmp, &self.dst)?;
        self.committed = true;
        if let Some(dir) = self.dst.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // No RENAME_NOREPLACE here: a hard link is just as exclusive.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// The volume's previous bytes, freed when this is dropped.
#[must_use = "dropping this frees the old bytes; drop it off the hot path"]
pub struct Replaced {
    _old: Option<File>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: sync_file_range on an fd we own; it reads no memory of ours.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn upload_writes_splices_and_commits() {
        let dir = std::env::temp_dir().join(format!("hv-transfer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tmp, dst) = (dir.join(".v.upload"), dir.join("v"));
        std::fs::write(&dst, b"old").unwrap();
        let body = data(3 * WINDOW as usize + 12345);
        let (mut a, b) = UnixStream::pair().unwrap();
        let head = body[..1000].to_vec();
        let rest = body[1000..].to_vec();
        let writer = std::thread::spawn(move || a.write_all(&rest).unwrap());
        let mut up = Upload::create(&tmp, &dst).unwrap();
        up.write_all(&head).unwrap();
        while up.splice_from(b.as_fd(), usize::MAX).unwrap() > 0 {}
        writer.join().unwrap();
        assert_eq!(up.written(), body.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), b"old");
        drop(up.commit().unwrap());
        assert_eq!(std::fs::read(&dst).unwrap(), body);
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commit_new_never_replaces_a_file() {
        let dir = std::env::temp_dir().join(format!("hv-transfer-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tmp, dst) = (dir.join(".v.upload"), dir.join("v"));
        let mut up = Upload::create(&tmp, &dst).unwrap();
        up.write_all(b"new").unwrap();
        up.commit_new().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert!(!tmp.exists());
        let mut up = Upload::create(&tmp, &dst).unwrap();
        up.write_all(b"other").unwrap();
        let e = up.commit_new().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dropped_upload_leaves_the_volume_alone() {
        let dir = std::env::temp_dir().join(format!("hv-transfer-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tmp, dst) = (dir.join(".v.upload"), dir.join("v"));
        std::fs::write(&dst, b"old").unwrap();
        let mut up = Upload::create(&tmp, &dst).unwrap();
        up.write_all(b"new").unwrap();
        drop(up);
        assert_eq!(std::fs::read(&dst).unwrap(), b"old");
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
