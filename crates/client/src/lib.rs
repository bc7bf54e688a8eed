//! A small blocking client for the hvd API: typed calls for every endpoint, streaming bodies
//! (console log, events) and the console WebSocket, over one of two transports:
//!
//! - the Unix socket: plain HTTP/1.1 written here, one request per connection, which keeps a
//!   local CLI invocation to a connect, a write and a read (and lets volume data move with
//!   `sendfile`/`splice`, see `volume_data`);
//! - HTTPS to `hvd --listen` (`https`): ureq over rustls with keep-alive, a bearer token, and a
//!   pinned server certificate (`pin`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::{
    paths, AutostartRequest, CreateVmRequest, ErrorBody, ErrorCode, HostReport, ShowCmd,
    ShutdownRequest, StartRequest, UndefineRequest, VmInfo, VmList, WaitRequest, WaitResponse,
};
use model::VmSpec;
use serde::de::DeserializeOwned;
use serde::Serialize;

mod https;
mod migrate;
pub use migrate::RawEndpoint;
mod pin;
mod volume_data;
mod watch;

pub use https::ConsoleStream;
pub use pin::{fingerprint, normalize_fingerprint};
pub use volume_data::MediumTarget;

/// The default socket, as in DESIGN.md.
pub const DEFAULT_SOCKET: &str = "/run/hv/hvd.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach hvd at {socket}: {source}; is hvd running? (start it with `hvd`, or point --socket / HV_SOCKET at it)")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        code: ErrorCode,
        status: u16,
        message: String,
    },
    #[error("cannot reach hvd at {url}: {detail}; is hvd running with --listen there, and is the address right?")]
    Unreachable { url: String, detail: String },
    #[error("the certificate of hvd at {url} has CHANGED: hv pinned {pinned} but the server now presents {presented}; refusing to talk to it. someone may be intercepting the connection; if hvd's certificate was replaced on purpose, check the new one with `hv host cert` on that host, then run `hv remote remove {name}` and `hv remote add {name} {url} --token T --fingerprint {presented}`")]
    CertificateChanged {
        /// The remote's name in `hv remote list` (`NAME` when it has none yet).
        name: String,
        url: String,
        pinned: String,
        presented: String,
    },
    #[error("{0:?} is not a certificate fingerprint; give it as `hv host cert` prints it: SHA256: and 64 hex digits")]
    BadFingerprint(String),
    #[error("bad remote address {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("talking to hvd failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("hvd sent a reply hv does not understand: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error code, when the daemon answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A response whose body is still to be read.
pub struct Response {
    pub status: u16,
    /// Content-Length, when the server sent one.
    pub len: Option<u64>,
    body: Box<dyn Read + Send>,
}

impl Response {
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        self.body
    }
}

/// Reads an HTTP/1.1 chunked body.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}

/// `std::io::copy` with a 1 MiB buffer: bulk transfers (volume upload and download) move
/// in large writes instead of 8 KiB ones.
pub fn copy_big(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Decodes a JSON reply, or the API error.
fn decode<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let status = resp.status;
    let mut data = Vec::new();
    resp.into_reader().read_to_end(&mut data)?;
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<ErrorBody>(&data) {
            Ok(e) => ClientError::Api {
                code: e.error.code,
                status,
                message: e.error.message,
            },
            Err(_) => {
                ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(&data)))
            }
        });
    }
    if data.is_empty() {
        data = b"null".to_vec();
    }
    serde_json::from_slice(&data)
        .map_err(|e| ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&data))))
}

/// A response's status line and headers.
pub(crate) struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn len(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
    }
}

/// Reads a response's status line and headers.
pub(crate) fn read_head(r: &mut BufReader<UnixStream>) -> Result<Head> {
    let mut raw = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "connection closed before the headers ended".into(),
            ));
        }
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&raw)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Head {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// The body that follows `head` on `r`: chunked, `Content-Length` bytes, or up to the end.
pub(crate) fn body_of(head: &Head, r: BufReader<UnixStream>) -> Box<dyn Read + Send> {
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        Box::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        })
    } else if let Some(len) = head.len() {
        Box::new(r.take(len))
    } else {
        Box::new(r)
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    /// The Unix socket; empty for a remote.
    socket: PathBuf,
    remote: Option<Arc<https::Https>>,
}

impl Client {
    /// A client of hvd's Unix socket.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            remote: None,
        }
    }

    /// A client of a remote hvd at `url` (`https://HOST:PORT`) that sends `token` and trusts
    /// only the server certificate whose fingerprint is `pinned`; with `None`, any certificate
    /// (the first contact of trust on first use: read [`Client::server_fingerprint`] after a
    /// call and pin it). Nothing is sent until the first call.
    pub fn https(url: &str, token: &str, pinned: Option<&str>) -> Result<Client> {
        let pinned = pinned
            .map(|p| {
                normalize_fingerprint(p).ok_or_else(|| ClientError::BadFingerprint(p.to_string()))
            })
            .transpose()?;
        Ok(Client {
            socket: PathBuf::new(),
            remote: Some(Arc::new(https::Https::new(url, token, pinned)?)),
        })
    }

    /// Names the remote (as in `hv remote list`), for error messages that say what to do.
    pub fn named(mut self, name: &str) -> Client {
        if let Some(r) = self.remote.as_mut().and_then(Arc::get_mut) {
            r.name = name.to_string();
        }
        self
    }

    /// The Unix socket this client talks to (empty for a remote).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `https://HOST:PORT` of a remote client.
    pub fn remote_url(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.base.as_str())
    }

    /// The fingerprint of the certificate the remote server presented in the last TLS
    /// handshake (none before the first call, and none over the Unix socket).
    pub fn server_fingerprint(&self) -> Option<String> {
        self.remote.as_ref().and_then(|r| r.seen())
    }

    fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.display().to_string(),
            source,
        })
    }

    /// Sends one request and reads the status line and headers.
    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response> {
        let body = body.unwrap_or(b"");
        self.send_body(
            method,
            path,
            "application/json",
            body.len() as u64,
            &mut &body[..],
        )
    }

    /// Sends a request whose body is streamed from `body` (`len` bytes).
    pub fn send_body(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<Response> {
        if let Some(r) = &self.remote {
            return r.send_body(method, path, content_type, len, body);
        }
        let mut s = self.connect()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: hvd\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
        );
        if len <= 64 << 10 {
            let mut req = head.into_bytes();
            body.read_to_end(&mut req)?;
            s.write_all(&req)?;
        } else {
            s.write_all(head.as_bytes())?;
            let sent = copy_big(&mut body.take(len), &mut s)?;
            if sent != len {
                return Err(ClientError::Protocol(format!(
                    "the body ended after {sent} of {len} bytes"
                )));
            }
        }
        let mut r = BufReader::new(s);
        let head = read_head(&mut r)?;
        Ok(head.into_response(r))
    }

    /// Sends a request and decodes a JSON reply (or the API error).
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let bytes = body
            .map(|b| serde_json::to_vec(b))
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        decode(self.send(method, path, bytes.as_deref())?)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call("POST", path, Some(body))
    }

    fn action(&self, name: &str, action: &str) -> Result<VmInfo> {
        self.post(&paths::vm_action(name, action), &serde_json::json!({}))
    }

    pub fn ping(&self) -> Result<serde_json::Value> {
        self.call("GET", paths::PING, None::<&()>)
    }
    pub fn host_check(&self) -> Result<HostReport> {
        self.call("GET", paths::HOST_CHECK, None::<&()>)
    }
    /// Writes a backup archive of hv's database and VM metadata (a tar) into `out`; returns
    /// its length. An error if the stream ends early.
    pub fn host_backup(&self, out: &mut dyn Write) -> Result<u64> {
        let resp = self.send("GET", paths::HOST_BACKUP, None)?;
        if resp.status != 200 {
            return Err(match decode::<serde_json::Value>(resp) {
                Err(e) => e,
                Ok(_) => ClientError::Protocol("unexpected reply to a backup".into()),
            });
        }
        let len = resp.len;
        let got = copy_big(&mut resp.into_reader(), out)?;
        match len {
            Some(len) if got != len => Err(ClientError::Protocol(format!(
                "the backup ended after {got} of {len} bytes"
            ))),
            _ => Ok(got),
        }
    }
    pub fn list(&self) -> Result<Vec<VmInfo>> {
        Ok(self.call::<VmList>("GET", paths::VMS, None::<&()>)?.vms)
    }
    pub fn info(&self, name: &str) -> Result<VmInfo> {
        self.call("GET", &paths::vm(name), None::<&()>)
    }
    pub fn create(&self, spec: VmSpec, start: bool) -> Result<VmInfo> {
        self.post(paths::VMS, &CreateVmRequest { spec, start })
    }
    pub fn update(&self, name: &str, spec: &VmSpec) -> Result<VmInfo> {
        self.call("PUT", &paths::vm(name), Some(spec))
    }
    pub fn start(&self, name: &str, paused: bool) -> Result<VmInfo> {
        self.post(&paths::vm_action(name, "start"), &StartRequest { paused })
    }
    pub fn shutdown(&self, name: &str, timeout_secs: u64, force: bool) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "shutdown"),
            &ShutdownRequest {
                timeout_secs,
                force,
            },
        )
    }
    pub fn reboot(&self, name: &str, timeout_secs: u64, force: bool) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "reboot"),
            &ShutdownRequest {
                timeout_secs,
                force,
            },
        )
    }
    pub fn destroy(&self, name: &str) -> Result<VmInfo> {
        self.action(name, "destroy")
    }
    pub fn reset(&self, name: &str) -> Result<VmInfo> {
        self.action(name, "reset")
    }
    pub fn pause(&self, name: &str) -> Result<VmInfo> {
        self.action(name, "pause")
    }
    pub fn resume(&self, name: &str) -> Result<VmInfo> {
        self.action(name, "resume")
    }
    pub fn undefine(&self, name: &str, remove_storage: bool, force: bool) -> Result<()> {
        self.post::<serde_json::Value>(
            &paths::vm_action(name, "undefine"),
            &UndefineRequest {
                remove_storage,
                force,
            },
        )
        .map(drop)
    }
    pub fn autostart(&self, name: &str, enabled: bool) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "autostart"),
            &AutostartRequest { enabled },
        )
    }
    pub fn wait(&self, name: &str, req: &WaitRequest) -> Result<WaitResponse> {
        self.post(&paths::vm_action(name, "wait"), req)
    }
    pub fn showcmd(&self, name: &str) -> Result<ShowCmd> {
        self.call("GET", &paths::vm_action(name, "showcmd"), None::<&()>)
    }

    /// What the console printed since the VM last started; with `follow`, a reader that keeps
    /// going until the VM stops.
    pub fn console_log(&self, name: &str, follow: bool) -> Result<Box<dyn Read + Send>> {
        let path = format!("{}?follow={follow}", paths::vm_action(name, "console/log"));
        let resp = self.send("GET", &path, None)?;
        if resp.status != 200 {
            let status = resp.status;
            let mut data = Vec::new();
            resp.into_reader().read_to_end(&mut data)?;
            return Err(match serde_json::from_slice::<ErrorBody>(&data) {
                Ok(e) => ClientError::Api {
                    code: e.error.code,
                    status,
                    message: e.error.message,
                },
                Err(_) => ClientError::Protocol(format!("HTTP {status}")),
            });
        }
        Ok(resp.into_reader())
    }

    // ---- networks ----

    pub fn nets(&self) -> Result<Vec<api::NetworkInfo>> {
        Ok(self
            .call::<api::NetworkList>("GET", "/v1/networks", None::<&()>)?
            .networks)
    }
    pub fn net_info(&self, name: &str) -> Result<api::NetworkInfo> {
        self.call("GET", &format!("/v1/networks/{name}"), None::<&()>)
    }
    pub fn net_create(&self, spec: &model::NetworkSpec) -> Result<api::NetworkInfo> {
        self.post("/v1/networks", spec)
    }
    pub fn net_start(&self, name: &str) -> Result<api::NetworkInfo> {
        self.post(
            &format!("/v1/networks/{name}/start"),
            &serde_json::json!({}),
        )
    }
    pub fn net_stop(&self, name: &str) -> Result<api::NetworkInfo> {
        self.post(&format!("/v1/networks/{name}/stop"), &serde_json::json!({}))
    }
    pub fn net_delete(&self, name: &str) -> Result<()> {
        self.call::<serde_json::Value>("DELETE", &format!("/v1/networks/{name}"), None::<&()>)
            .map(drop)
    }
    pub fn net_forwards(&self, name: &str) -> Result<Vec<model::ForwardSpec>> {
        Ok(self
            .call::<api::ForwardList>("GET", &format!("/v1/networks/{name}/forwards"), None::<&()>)?
            .forwards)
    }
    pub fn net_forward_add(
        &self,
        name: &str,
        req: &api::AddForwardRequest,
    ) -> Result<Vec<model::ForwardSpec>> {
        Ok(self
            .post::<api::ForwardList>(&format!("/v1/networks/{name}/forwards"), req)?
            .forwards)
    }
    pub fn host_bridge(&self, iface: &str, bridge: &str) -> Result<api::BridgeChange> {
        self.post(
            "/v1/host/bridges",
            &api::BridgeIfaceRequest {
                iface: iface.into(),
                bridge: bridge.into(),
            },
        )
    }
    pub fn host_unbridge(&self, bridge: &str) -> Result<api::BridgeChange> {
        self.call("DELETE", &format!("/v1/host/bridges/{bridge}"), None::<&()>)
    }
    pub fn net_autostart(&self, name: &str, enabled: bool) -> Result<api::NetworkInfo> {
        self.post(
            &format!("/v1/networks/{name}/autostart"),
            &api::AutostartRequest { enabled },
        )
    }
    pub fn net_reservations(&self, name: &str) -> Result<Vec<model::ReservationSpec>> {
        Ok(self
            .call::<api::ReservationList>(
                "GET",
                &format!("/v1/networks/{name}/reservations"),
                None::<&()>,
            )?
            .reservations)
    }
    pub fn net_reservation_add(
        &self,
        name: &str,
        req: &api::AddReservationRequest,
    ) -> Result<Vec<model::ReservationSpec>> {
        Ok(self
            .post::<api::ReservationList>(&format!("/v1/networks/{name}/reservations"), req)?
            .reservations)
    }
    /// Removes the reservation of a MAC, or of a VM by its name.
    pub fn net_reservation_remove(
        &self,
        name: &str,
        mac_or_vm: &str,
    ) -> Result<Vec<model::ReservationSpec>> {
        Ok(self
            .call::<api::ReservationList>(
                "DELETE",
                &format!("/v1/networks/{name}/reservations/{mac_or_vm}"),
                None::<&()>,
            )?
            .reservations)
    }
    pub fn net_forward_remove(
        &self,
        name: &str,
        proto: &str,
        host_port: u16,
    ) -> Result<Vec<model::ForwardSpec>> {
        Ok(self
            .call::<api::ForwardList>(
                "DELETE",
                &format!("/v1/networks/{name}/forwards/{proto}/{host_port}"),
                None::<&()>,
            )?
            .forwards)
    }
    pub fn net_leases(&self, name: &str) -> Result<Vec<api::LeaseInfo>> {
        Ok(self
            .call::<api::LeaseList>("GET", &format!("/v1/networks/{name}/leases"), None::<&()>)?
            .leases)
    }

    // ---- snapshots ----

    pub fn snapshots(&self, vm: &str) -> Result<Vec<api::SnapshotInfo>> {
        Ok(self
            .call::<api::SnapshotList>("GET", &paths::vm_action(vm, "snapshots"), None::<&()>)?
            .snapshots)
    }
    pub fn snapshot_create(
        &self,
        vm: &str,
        req: &api::CreateSnapshotRequest,
    ) -> Result<api::SnapshotInfo> {
        self.post(&paths::vm_action(vm, "snapshots"), req)
    }
    pub fn snapshot_info(&self, vm: &str, snap: &str) -> Result<api::SnapshotInfo> {
        self.call(
            "GET",
            &paths::vm_action(vm, &format!("snapshots/{snap}")),
            None::<&()>,
        )
    }
    pub fn snapshot_current(&self, vm: &str) -> Result<Option<api::SnapshotInfo>> {
        self.call(
            "GET",
            &paths::vm_action(vm, "snapshots/current"),
            None::<&()>,
        )
    }
    pub fn snapshot_revert(&self, vm: &str, snap: &str) -> Result<api::SnapshotInfo> {
        self.post(
            &paths::vm_action(vm, &format!("snapshots/{snap}/revert")),
            &serde_json::json!({}),
        )
    }
    pub fn snapshot_delete(&self, vm: &str, snap: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            "DELETE",
            &paths::vm_action(vm, &format!("snapshots/{snap}")),
            None::<&()>,
        )
        .map(drop)
    }

    // ---- disks and media ----

    /// `hv set`: vCPUs and/or memory, live and/or in the definition.
    pub fn resize(&self, name: &str, req: &api::ResizeRequest) -> Result<api::ResourcesInfo> {
        self.post(&paths::vm_action(name, "resources"), req)
    }
    /// `hv clone`: a full copy of a stopped VM.
    pub fn clone_vm(&self, name: &str, req: &api::CloneRequest) -> Result<VmInfo> {
        self.post(&paths::vm_action(name, "clone"), req)
    }
    /// Current and maximum vCPUs and memory.
    pub fn resources(&self, name: &str) -> Result<api::ResourcesInfo> {
        self.call("GET", &paths::vm_action(name, "resources"), None::<&()>)
    }
    pub fn nic_attach(&self, name: &str, req: &api::AttachNicRequest) -> Result<api::NicAttached> {
        self.post(&paths::vm_action(name, "nics"), req)
    }
    pub fn nic_detach(&self, name: &str, mac: &str, req: &api::DetachNicRequest) -> Result<VmInfo> {
        self.post(&paths::vm_action(name, &format!("nics/{mac}/detach")), req)
    }
    pub fn disk_attach(&self, name: &str, req: &api::AttachDiskRequest) -> Result<VmInfo> {
        self.post(&paths::vm_action(name, "disks"), req)
    }
    pub fn disk_detach(
        &self,
        name: &str,
        target: &str,
        req: &api::DetachDiskRequest,
    ) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, &format!("disks/{target}/detach")),
            req,
        )
    }
    pub fn media_insert(&self, name: &str, source: &str) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "media"),
            &api::MediaRequest {
                source: source.to_string(),
            },
        )
    }
    /// The media that can go into the VM's drive and the pools a medium may be uploaded to.
    pub fn media_choices(&self, name: &str) -> Result<api::MediaChoices> {
        self.call("GET", &paths::vm_action(name, "media/choices"), None::<&()>)
    }
    pub fn media_eject(&self, name: &str) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "media/eject"),
            &serde_json::json!({}),
        )
    }
    /// Boots from the CD-ROM medium: first in the boot order, and a running VM is reset.
    pub fn media_boot(&self, name: &str) -> Result<VmInfo> {
        self.post(
            &paths::vm_action(name, "media/boot"),
            &api::MediaBootRequest::default(),
        )
    }

    // ---- screen and keyboard ----

    /// A PNG of the VM's screen; a shot up to `max_age_ms` old may be shared with others.
    pub fn screenshot(&self, name: &str, max_age_ms: u64) -> Result<Vec<u8>> {
        let path = format!(
            "{}?max_age_ms={max_age_ms}",
            paths::vm_action(name, "screenshot")
        );
        let resp = self.send("GET", &path, None)?;
        let status = resp.status;
        let mut data = Vec::new();
        resp.into_reader().read_to_end(&mut data)?;
        if status != 200 {
            return Err(match serde_json::from_slice::<ErrorBody>(&data) {
                Ok(e) => ClientError::Api {
                    code: e.error.code,
                    status,
                    message: e.error.message,
                },
                Err(_) => ClientError::Protocol(format!("HTTP {status}")),
            });
        }
        Ok(data)
    }

    /// Presses key combinations or types text on the VM's keyboard.
    pub fn send_keys(&self, name: &str, req: &api::KeysRequest) -> Result<api::KeysSent> {
        self.post(&paths::vm_action(name, "keys"), req)
    }

    // ---- users, tokens, audit ----

    pub fn host_cert(&self) -> Result<api::HostCert> {
        self.call("GET", "/v1/host/cert", None::<&()>)
    }
    pub fn users(&self) -> Result<Vec<api::UserInfo>> {
        Ok(self
            .call::<api::UserList>("GET", "/v1/users", None::<&()>)?
            .users)
    }
    pub fn user_add(&self, req: &api::CreateUserRequest) -> Result<api::UserInfo> {
        self.post("/v1/users", req)
    }
    pub fn user_remove(&self, name: &str) -> Result<()> {
        self.call::<serde_json::Value>("DELETE", &format!("/v1/users/{name}"), None::<&()>)
            .map(|_| ())
    }
    pub fn user_passwd(&self, name: &str, password: &str) -> Result<()> {
        let req = api::PasswordRequest {
            password: password.to_string(),
        };
        self.call::<serde_json::Value>("POST", &format!("/v1/users/{name}/password"), Some(&req))
            .map(|_| ())
    }
    pub fn user_grant(&self, name: &str, grant: &api::GrantInfo) -> Result<api::UserInfo> {
        self.post(&format!("/v1/users/{name}/grants"), grant)
    }
    pub fn user_revoke(&self, name: &str, grant: &api::GrantInfo) -> Result<api::UserInfo> {
        self.post(&format!("/v1/users/{name}/grants/revoke"), grant)
    }
    pub fn tokens(&self) -> Result<Vec<api::TokenInfo>> {
        Ok(self
            .call::<api::TokenList>("GET", "/v1/tokens", None::<&()>)?
            .tokens)
    }
    pub fn token_create(&self, req: &api::CreateTokenRequest) -> Result<api::TokenCreated> {
        self.post("/v1/tokens", req)
    }
    pub fn token_revoke(&self, id: &str) -> Result<api::TokenInfo> {
        self.call("DELETE", &format!("/v1/tokens/{id}"), None::<&()>)
    }
    pub fn audit(&self, q: &api::AuditQuery) -> Result<Vec<api::AuditRecord>> {
        let mut query = Vec::new();
        if let Some(u) = &q.user {
            query.push(format!("user={}", pct(u)));
        }
        if let Some(v) = &q.vm {
            query.push(format!("vm={}", pct(v)));
        }
        if let Some(s) = q.since_ms {
            query.push(format!("since_ms={s}"));
        }
        let path = if query.is_empty() {
            "/v1/audit".to_string()
        } else {
            format!("/v1/audit?{}", query.join("&"))
        };
        Ok(self
            .call::<api::AuditList>("GET", &path, None::<&()>)?
            .records)
    }

    // ---- operations ----

    pub fn operations(&self) -> Result<Vec<api::OperationInfo>> {
        Ok(self
            .call::<api::OperationList>("GET", "/v1/operations", None::<&()>)?
            .operations)
    }
    pub fn operation(&self, id: u64) -> Result<api::OperationInfo> {
        self.call("GET", &format!("/v1/operations/{id}"), None::<&()>)
    }
    pub fn operation_cancel(&self, id: u64) -> Result<api::OperationInfo> {
        self.post(
            &format!("/v1/operations/{id}/cancel"),
            &serde_json::json!({}),
        )
    }

    // ---- storage ----

    pub fn pools(&self) -> Result<Vec<api::PoolInfo>> {
        Ok(self
            .call::<api::PoolList>("GET", paths::POOLS, None::<&()>)?
            .pools)
    }
    pub fn pool_info(&self, name: &str) -> Result<api::PoolInfo> {
        self.call("GET", &paths::pool(name), None::<&()>)
    }
    pub fn pool_create(&self, req: &api::CreatePoolRequest) -> Result<api::PoolInfo> {
        self.post(paths::POOLS, req)
    }
    pub fn pool_delete(&self, name: &str, force: bool) -> Result<()> {
        self.call::<serde_json::Value>(
            "DELETE",
            &format!("{}?force={force}", paths::pool(name)),
            None::<&()>,
        )
        .map(drop)
    }
    /// Forgets a pool; its directory and files stay.
    pub fn pool_undefine(&self, name: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            "POST",
            &format!("{}/undefine", paths::pool(name)),
            None::<&()>,
        )
        .map(drop)
    }
    pub fn vols(&self, pool: &str) -> Result<Vec<api::VolInfo>> {
        Ok(self
            .call::<api::VolList>("GET", &paths::volumes(pool), None::<&()>)?
            .volumes)
    }
    pub fn vol_info(&self, pool: &str, vol: &str) -> Result<api::VolInfo> {
        self.call("GET", &paths::volume(pool, vol), None::<&()>)
    }
    pub fn vol_create(&self, pool: &str, req: &api::CreateVolRequest) -> Result<api::VolInfo> {
        self.post(&paths::volumes(pool), req)
    }
    pub fn vol_import(&self, pool: &str, req: &api::ImportVolRequest) -> Result<api::VolInfo> {
        self.post(&format!("{}/import", paths::pool(pool)), req)
    }
    pub fn vol_clone(
        &self,
        pool: &str,
        vol: &str,
        req: &api::CloneVolRequest,
    ) -> Result<api::VolInfo> {
        self.post(&paths::volume_action(pool, vol, "clone"), req)
    }
    pub fn vol_resize(
        &self,
        pool: &str,
        vol: &str,
        req: &api::ResizeVolRequest,
    ) -> Result<api::VolInfo> {
        self.post(&paths::volume_action(pool, vol, "resize"), req)
    }
    pub fn vol_delete(&self, pool: &str, vol: &str) -> Result<()> {
        self.call::<serde_json::Value>("DELETE", &paths::volume(pool, vol), None::<&()>)
            .map(drop)
    }
    /// Replaces the volume's bytes with `len` bytes from `data`.
    pub fn vol_upload(
        &self,
        pool: &str,
        vol: &str,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<api::VolInfo> {
        let path = paths::volume_action(pool, vol, "data");
        decode(self.send_body("PUT", &path, "application/octet-stream", len, data)?)
    }
    /// The volume's bytes: their length and a reader.
    pub fn vol_download(&self, pool: &str, vol: &str) -> Result<(u64, Box<dyn Read + Send>)> {
        let resp = self.send("GET", &paths::volume_action(pool, vol, "data"), None)?;
        if resp.status != 200 {
            return Err(match decode::<serde_json::Value>(resp) {
                Err(e) => e,
                Ok(_) => ClientError::Protocol("unexpected reply to a download".into()),
            });
        }
        Ok((resp.len.unwrap_or(0), resp.into_reader()))
    }

    /// Opens the serial console WebSocket (binary frames both ways).
    /// Over HTTPS it sends the bearer token and no `Origin`: hvd refuses WebSockets from
    /// foreign browser origins, and a client without `Origin` is not a browser.
    pub fn console(&self, name: &str) -> Result<tungstenite::WebSocket<ConsoleStream>> {
        self.websocket(name, "console")
    }

    /// Opens the graphical console WebSocket: RFB 3.8 in binary frames, security None
    /// (hvd authenticated the caller); only the holder of control's input reaches the guest.
    pub fn vnc(&self, name: &str) -> Result<tungstenite::WebSocket<ConsoleStream>> {
        self.websocket(name, "vnc")
    }

    /// The control state of a VM's consoles as this caller sees it.
    pub fn control(&self, name: &str) -> Result<api::ControlState> {
        self.call("GET", &paths::vm_action(name, "control"), None::<&()>)
    }

    /// Takes, requests, releases or gives (`to`) control of a VM's consoles.
    pub fn control_act(
        &self,
        name: &str,
        action: api::ControlAction,
        to: Option<&str>,
    ) -> Result<api::ControlState> {
        let req = api::ControlRequest {
            action,
            to: to.map(str::to_string),
        };
        self.post(&paths::vm_action(name, "control"), &req)
    }

    /// The control state of every VM the caller may see.
    pub fn consoles(&self) -> Result<Vec<api::ControlState>> {
        self.call("GET", "/v1/consoles", None::<&()>)
    }

    fn websocket(&self, name: &str, what: &str) -> Result<tungstenite::WebSocket<ConsoleStream>> {
        use tungstenite::client::IntoClientRequest;
        // Check the VM exists first so the error is the API's, not a failed handshake.
        self.info(name)?;
        let path = paths::vm_action(name, what);
        let (stream, req) = match &self.remote {
            None => {
                let url = format!("ws://hvd{path}");
                let req = url
                    .into_client_request()
                    .map_err(|e| ClientError::Protocol(format!("console request: {e}")))?;
                (ConsoleStream::Unix(self.connect()?), req)
            }
            Some(r) => {
                let url = format!("{}{path}", r.base.replacen("https://", "wss://", 1));
                let mut req = url
                    .into_client_request()
                    .map_err(|e| ClientError::Protocol(format!("console request: {e}")))?;
                let bearer = r.bearer().parse().map_err(|_| {
                    ClientError::Protocol("the token is not a valid header value".into())
                })?;
                req.headers_mut().insert("authorization", bearer);
                (ConsoleStream::Tls(Box::new(r.connect_tls()?)), req)
            }
        };
        let (ws, _) = tungstenite::client(req, stream)
            .map_err(|e| ClientError::Protocol(format!("console handshake: {e}")))?;
        Ok(ws)
    }
}

/// Percent-encodes a query value (names are ASCII; anything else is encoded).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n";
        let mut c = Chunked {
            inner: BufReader::new(&raw[..]),
            left: 0,
            done: false,
        };
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world!");
    }

    #[test]
    fn a_pin_that_is_no_fingerprint_is_refused_before_connecting() {
        let e = Client::https("https://h:1", "t", Some("SHA256:xyz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"SHA256:xyz\" is not a certificate fingerprint"),
            "{e}"
        );
    }

    #[test]
    fn connect_error_says_what_to_do() {
        let e = Client::new("/nonexistent/hvd.sock")
            .list()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/hvd.sock") && e.contains("is hvd running"),
            "{e}"
        );
    }
}
