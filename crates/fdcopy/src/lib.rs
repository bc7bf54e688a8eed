//! In-kernel copies between file descriptors, so bulk bytes never pass through user space:
//! [`send_file`] moves a file's page-cache pages into a socket (`sendfile`), and a [`Splicer`]
//! moves bytes from a socket into a file through a pipe (`splice`). [`set_socket_buffer`]
//! sizes a socket's kernel buffer for such streams. Used by both ends of hv's raw volume
//! streams (hvd and the `hv` client), which is why it is a crate of its own with no other
//! dependency.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Largest single `sendfile`/`splice` request (a [`Splicer`]'s pipe is resized to this).
pub const STEP: usize = 1 << 20;

/// Retries `f` while it fails with `EINTR`; a negative return is an error from `errno`.
fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `len` bytes of `file`, starting at `offset` (the file's own offset is left alone),
/// to `to` (a socket in blocking mode). Calls `progress` with each step's byte count. Returns
/// the bytes sent: fewer than `len` only if the file ended early.
pub fn send_file(
    file: &File,
    to: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut sent = 0u64;
    while sent < len {
        let step = (len - sent).min(STEP as u64) as usize;
        let mut off = (offset + sent) as libc::off_t;
        // SAFETY: both fds are open for the duration of the call (borrowed); `off` is a valid
        // off_t that sendfile reads and advances.
        let n =
            retry(|| unsafe { libc::sendfile(to.as_raw_fd(), file.as_raw_fd(), &mut off, step) })?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        progress(n as u64);
    }
    Ok(sent)
}

/// A pipe for moving bytes from one fd to another with `splice`.
pub struct Splicer {
    rd: OwnedFd,
    wr: OwnedFd,
}

impl Splicer {
    pub fn new() -> io::Result<Splicer> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer splice rounds; failing to grow it only costs speed.
        // SAFETY: fcntl on an fd we own, with an integer argument.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, STEP as libc::c_int) };
        Ok(Splicer { rd, wr })
    }

    /// Moves up to `max` bytes (at most [`STEP`]) from `from` (a socket or pipe in blocking
    /// mode) to `to` (a file), all of what was read. Returns 0 at the end of `from`'s stream.
    pub fn splice(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        max: usize,
    ) -> io::Result<usize> {
        let n = splice(from, self.wr.as_fd(), max.min(STEP))?;
        let mut left = n;
        while left > 0 {
            let m = splice(self.rd.as_fd(), to, left)?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        Ok(n)
    }
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are borrowed (open for the call); null offsets use the fds' own
    // positions.
    retry(|| unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    })
}

/// Sets a socket's kernel send (`libc::SO_SNDBUF`) or receive (`libc::SO_RCVBUF`) buffer to
/// `bytes`: fewer, larger round trips between the two ends of a stream. Failure only costs
/// speed, so it is ignored.
pub fn set_socket_buffer(sock: BorrowedFd<'_>, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt on a borrowed, open fd, reading one c_int that outlives the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("fdcopy-{}-{name}", std::process::id()))
    }

    #[test]
    fn send_file_sends_from_the_offset_and_leaves_the_file_offset() {
        let p = temp("send");
        let bytes = data(3 * STEP + 123);
        std::fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let mut steps = 0u64;
        let n = send_file(&f, a.as_fd(), 10, bytes.len() as u64, &mut |s| steps += s).unwrap();
        drop(a);
        assert_eq!(n, bytes.len() as u64 - 10, "the file ended early");
        assert_eq!(steps, n);
        assert_eq!(reader.join().unwrap(), &bytes[10..]);
        let mut f = f;
        let mut first = [0u8; 4];
        f.read_exact(&mut first).unwrap();
        assert_eq!(first, bytes[..4], "the file's own offset did not move");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn splicer_moves_a_stream_into_a_file() {
        let p = temp("splice");
        let bytes = data(2 * STEP + 77);
        let (mut a, b) = UnixStream::pair().unwrap();
        let writer = {
            let bytes = bytes.clone();
            std::thread::spawn(move || a.write_all(&bytes).unwrap())
        };
        let out = File::create(&p).unwrap();
        let s = Splicer::new().unwrap();
        let mut total = 0;
        loop {
            let n = s.splice(b.as_fd(), out.as_fd(), usize::MAX).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= STEP);
            total += n;
            if total == bytes.len() {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        std::fs::remove_file(&p).unwrap();
    }
}
