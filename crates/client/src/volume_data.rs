//! Volume upload and download between a file and hvd over the raw stream of
//! [`api::VOLUME_DATA_PROTOCOL`]: the bytes go from the page cache to the socket with
//! `sendfile` and from the socket to the page cache with `splice`, never through user space.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use api::{paths, DATA_LENGTH_HEADER, VOLUME_DATA_PROTOCOL};

use crate::{body_of, decode, read_head, Client, ClientError, Result};

/// Largest single `sendfile`/`splice` request (the pipe is resized to this).
const STEP: usize = 1 << 20;
/// Socket buffer for the stream: fewer, larger round trips between the two ends.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

impl Client {
    /// Replaces the volume's bytes with the whole of `file` (from its start), calling
    /// `progress(done, total)` as bytes go out. Returns once hvd has made them durable.
    pub fn vol_upload_file(
        &self,
        pool: &str,
        vol: &str,
        file: &File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<api::VolInfo> {
        let len = file.metadata()?.len();
        let mut r = self.upgrade(
            "PUT",
            pool,
            vol,
            &format!("{DATA_LENGTH_HEADER}: {len}\r\n"),
        )?;
        let head = read_head(&mut r)?;
        if head.status != 101 {
            return decode(head.into_response(r));
        }
        let sock = r.into_inner();
        set_buffer(&sock, libc::SO_SNDBUF);
        let mut sent = 0u64;
        while sent < len {
            let step = (len - sent).min(STEP as u64) as usize;
            let mut off = sent as libc::off_t;
            // SAFETY: both fds are open for the call; `off` is a valid off_t that sendfile
            // reads and advances (the file's own offset is left alone).
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, step) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if n == 0 {
                return Err(ClientError::Protocol(format!(
                    "the file ended after {sent} of {len} bytes"
                )));
            }
            sent += n as u64;
            progress(sent, len);
        }
        let mut r = BufReader::new(sock);
        let head = read_head(&mut r)?;
        decode(head.into_response(r))
    }

    /// Writes the volume's bytes into `out` (at its current offset), calling
    /// `progress(done, total)` as bytes arrive. Returns the byte count; an error if the stream
    /// ended early.
    pub fn vol_download_file(
        &self,
        pool: &str,
        vol: &str,
        out: &mut File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let mut r = self.upgrade("GET", pool, vol, "")?;
        let head = read_head(&mut r)?;
        if head.status != 101 {
            return Err(match decode::<serde_json::Value>(head.into_response(r)) {
                Err(e) => e,
                Ok(_) => ClientError::Protocol("unexpected reply to a download".into()),
            });
        }
        let len = head
            .header(DATA_LENGTH_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ClientError::Protocol(format!("no {DATA_LENGTH_HEADER} in the 101")))?;
        // Bytes that arrived with the head.
        let early = r.buffer();
        let early = &early[..early.len().min(len as usize)];
        out.write_all(early)?;
        let mut got = early.len() as u64;
        progress(got, len);
        let sock = r.into_inner();
        set_buffer(&sock, libc::SO_RCVBUF);
        let (rd, wr) = pipe()?;
        while got < len {
            let want = (len - got).min(STEP as u64) as usize;
            let n = splice(sock.as_fd(), wr.as_fd(), want)?;
            if n == 0 {
                return Err(ClientError::Protocol(format!(
                    "the download ended after {got} of {len} bytes"
                )));
            }
            let mut left = n;
            while left > 0 {
                let m = splice(rd.as_fd(), out.as_fd(), left)?;
                if m == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                }
                left -= m;
            }
            got += n as u64;
            progress(got, len);
        }
        Ok(got)
    }

    /// Sends an upgrade request for the volume's data and returns the connection.
    fn upgrade(
        &self,
        method: &str,
        pool: &str,
        vol: &str,
        extra: &str,
    ) -> Result<BufReader<UnixStream>> {
        let mut s = self.connect()?;
        let path = paths::volume_action(pool, vol, "stream");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: hvd\r\nConnection: Upgrade\r\nUpgrade: {VOLUME_DATA_PROTOCOL}\r\n{extra}\r\n"
        )?;
        Ok(BufReader::with_capacity(64 << 10, s))
    }
}

impl crate::Head {
    /// The response whose body follows this head on `r`.
    pub(crate) fn into_response(self, r: BufReader<UnixStream>) -> crate::Response {
        crate::Response {
            status: self.status,
            len: self.len(),
            body: body_of(&self, r),
        }
    }
}

fn set_buffer(sock: &UnixStream, opt: libc::c_int) {
    // SAFETY: setsockopt on an fd we own, reading one c_int that outlives the call. Failure
    // only costs speed, so it is ignored.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&SOCKET_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe means fewer splice rounds; failing to grow it only costs speed.
    // SAFETY: fcntl on an fd we own, with an integer argument.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, STEP as libc::c_int) };
    Ok((rd, wr))
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> std::io::Result<usize> {
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
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
