//! Moving a volume's bytes in and out quickly without giving up durability.
//!
//! [`Upload`] writes into a temp file beside the volume and starts writeback of each 8 MiB
//! window as soon as it is written (`sync_file_range`), so the final `fsync` in
//! [`Upload::commit`] has little left to do; only then is the temp file renamed over the
//! volume. [`Upload::splice_from`] moves bytes from a socket into the file without copying them
//! through user space, and [`send_file`] does the same in the other direction (`sendfile`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Writeback is started for each window of this many bytes once it is complete.
const WINDOW: u64 = 8 << 20;
/// Windows whose writeback may be in flight before the writer waits for the oldest one. This
/// bounds the dirty page cache an upload holds to about `WINDOW * IN_FLIGHT`.
const IN_FLIGHT: u64 = 4;
/// Largest single `splice`/`sendfile` request (the pipe is resized to this).
const STEP: usize = 1 << 20;

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
    pipe: Option<(OwnedFd, OwnedFd)>,
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
            pipe: None,
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
        if self.pipe.is_none() {
            self.pipe = Some(pipe()?);
        }
        let Some((rd, wr)) = &self.pipe else {
            return Err(io::Error::other("no pipe"));
        };
        let n = splice(from, wr.as_fd(), max.min(STEP))?;
        let mut left = n;
        while left > 0 {
            let m = splice(rd.as_fd(), self.file.as_fd(), left)?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
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

/// Sends `len` bytes of `file` from its current offset to `to` (a socket in blocking mode)
/// with `sendfile`: the page cache pages go to the socket without a copy through user space.
/// Calls `progress` with each step's byte count. Returns the bytes sent, fewer than `len`
/// only if the file ended early.
pub fn send_file(
    file: &File,
    to: BorrowedFd<'_>,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut sent = 0u64;
    while sent < len {
        let step = (len - sent).min(STEP as u64) as usize;
        // SAFETY: both fds are open for the duration of the call (borrowed), and a null
        // offset pointer makes sendfile use and advance the file's own offset.
        let n =
            unsafe { libc::sendfile(to.as_raw_fd(), file.as_raw_fd(), std::ptr::null_mut(), step) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        sent += n as u64;
        progress(n as u64);
    }
    Ok(sent)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe means fewer splice rounds. Failing to grow it only costs speed.
    // SAFETY: fcntl on an fd we own, with an integer argument.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, STEP as libc::c_int) };
    Ok((rd, wr))
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are borrowed (open for the call); null offsets use the fds' own
        // positions.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
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
    use std::io::Read;
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

    #[test]
    fn send_file_streams_the_file() {
        let path = std::env::temp_dir().join(format!("hv-sendfile-{}", std::process::id()));
        let body = data(5 << 20);
        std::fs::write(&path, &body).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let f = File::open(&path).unwrap();
        let mut seen = 0;
        let sent = send_file(&f, a.as_fd(), body.len() as u64 + 10, &mut |n| seen += n).unwrap();
        drop(a);
        assert_eq!((sent, seen), (body.len() as u64, body.len() as u64));
        assert_eq!(reader.join().unwrap(), body);
        std::fs::remove_file(&path).unwrap();
    }
}
