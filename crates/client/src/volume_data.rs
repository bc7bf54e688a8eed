//! Volume upload and download between a file and hvd over the raw stream of
//! [`api::VOLUME_DATA_PROTOCOL`]: the bytes go from the page cache to the socket with
//! `sendfile` and from the socket to the page cache with `splice`, never through user space.
//! Over HTTPS (where the raw stream is not offered) the same calls stream the `/data` route.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use api::{paths, DATA_LENGTH_HEADER, VOLUME_DATA_PROTOCOL};

use crate::{body_of, decode, read_head, Client, ClientError, Result};

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
        if self.remote.is_some() {
            let mut f = file;
            let mut counted = Counted {
                inner: &mut f,
                done: 0,
                total: len,
                progress,
            };
            return self.vol_upload(pool, vol, len, &mut counted);
        }
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
        fdcopy::set_socket_buffer(sock.as_fd(), libc::SO_SNDBUF, SOCKET_BUFFER);
        let mut sent = 0u64;
        let n = fdcopy::send_file(file, sock.as_fd(), 0, len, &mut |n| {
            sent += n;
            progress(sent, len);
        })?;
        if n < len {
            return Err(ClientError::Protocol(format!(
                "the file ended after {n} of {len} bytes"
            )));
        }
        let mut r = BufReader::new(sock);
        let head = read_head(&mut r)?;
        decode(head.into_response(r))
    }

    /// Uploads the whole of `file` as a NEW medium `pool/volume` for VM `name` (never
    /// replacing a volume), inserting it into the VM's drive with `insert`; calls
    /// `progress(done, total)` as bytes go out. Needs only `VM.Media` on that VM.
    pub fn media_upload_file(
        &self,
        name: &str,
        target: &MediumTarget<'_>,
        file: &File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<api::MediumInfo> {
        let len = file.metadata()?.len();
        // hvd refuses an existing name before it reads the body, and then closes the
        // connection: a client still writing the body would see only a broken pipe. Ask first
        // (hvd still decides: this only turns the common refusal into its own message).
        let choices = self.media_choices(name)?;
        if choices
            .volumes
            .iter()
            .any(|v| v.pool == target.pool && v.volume == target.volume)
        {
            return Err(ClientError::Api {
                code: api::ErrorCode::AlreadyExists,
                status: 409,
                message: format!(
                    "volume {}/{} already exists; a medium upload never replaces a volume: pick another name",
                    target.pool, target.volume
                ),
            });
        }
        let path = format!(
            "{}?pool={}&volume={}&insert={}",
            paths::vm_action(name, "media/upload"),
            query_escape(target.pool),
            query_escape(target.volume),
            target.insert
        );
        let mut f = file;
        let mut counted = Counted {
            inner: &mut f,
            done: 0,
            total: len,
            progress,
        };
        decode(self.send_body("PUT", &path, "application/octet-stream", len, &mut counted)?)
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
        if self.remote.is_some() {
            let (len, body) = self.vol_download(pool, vol)?;
            let mut counted = Counted {
                inner: body,
                done: 0,
                total: len,
                progress,
            };
            let got = crate::copy_big(&mut counted, out)?;
            if got < len {
                return Err(ClientError::Protocol(format!(
                    "the download ended after {got} of {len} bytes"
                )));
            }
            return Ok(got);
        }
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
        fdcopy::set_socket_buffer(sock.as_fd(), libc::SO_RCVBUF, SOCKET_BUFFER);
        let splicer = fdcopy::Splicer::new()?;
        while got < len {
            let want = (len - got).min(fdcopy::STEP as u64) as usize;
            let n = splicer.splice(sock.as_fd(), out.as_fd(), want)?;
            if n == 0 {
                return Err(ClientError::Protocol(format!(
                    "the download ended after {got} of {len} bytes"
                )));
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

/// A reader that reports its progress as `progress(done, total)`.
/// Where [`Client::media_upload_file`] puts a medium.
#[derive(Debug, Clone, Copy)]
pub struct MediumTarget<'a> {
    pub pool: &'a str,
    pub volume: &'a str,
    pub insert: bool,
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Counted<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.total);
        Ok(n)
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
