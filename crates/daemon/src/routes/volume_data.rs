//! `GET|PUT /v1/pools/{pool}/volumes/{vol}/data`: a volume's bytes, out and in, as plain HTTP
//! bodies (any client). `GET|PUT .../stream` (what `hv` uses) needs `Upgrade: hv-volume-data`:
//! the connection becomes a raw stream after the 101, so the bytes move between the socket and
//! the page cache without passing through user space (`sendfile` out, `splice` in; see
//! `host_storage::transfer` and [`api::VOLUME_DATA_PROTOCOL`]). The raw variant has its own
//! path so that an hvd without it answers 404 instead of taking an upgrade request for an
//! empty upload.
//!
//! Uploads are durable before they are reported: the temp file is synced, then renamed over the
//! volume. Either way the disk work runs on blocking threads, never on the async workers.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use api::{ErrorBody, ErrorCode, ErrorDetail, DATA_LENGTH_HEADER, VOLUME_DATA_PROTOCOL};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{Engine, Upload};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::{status_of, ApiError, ApiResult};

/// Plain downloads are read in chunks of this size.
const CHUNK: usize = 4 << 20;
/// Socket buffer for raw streams: fewer, larger round trips between the two ends.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// A raw stream whose peer moves no byte for this long fails instead of pinning a thread.
const STALL: Duration = Duration::from_secs(60);

/// `GET .../data`.
pub async fn download(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    download_as(e, pool, vol, req, false).await
}

/// `GET .../stream`.
pub async fn stream_download(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    need_upgrade(req.headers())?;
    download_as(e, pool, vol, req, true).await
}

/// `PUT .../data`.
pub async fn upload(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    upload_as(e, pool, vol, req, false).await
}

/// `PUT .../stream`.
pub async fn stream_upload(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    need_upgrade(req.headers())?;
    upload_as(e, pool, vol, req, true).await
}

fn need_upgrade(h: &HeaderMap) -> Result<(), ApiError> {
    if wants_raw(h) {
        return Ok(());
    }
    Err(ApiError(
        ErrorCode::InvalidArgument,
        format!("this path is a raw stream: send Connection: Upgrade and Upgrade: {VOLUME_DATA_PROTOCOL}, or use .../data for a plain HTTP body"),
    ))
}

async fn download_as(
    e: Engine,
    pool: String,
    vol: String,
    mut req: Request,
    raw: bool,
) -> Result<Response, ApiError> {
    let path = e.vol_download_source(&pool, &vol)?;
    let f = tokio::fs::File::open(&path).await.map_err(|err| {
        ApiError(
            ErrorCode::HostError,
            format!("cannot open {}: {err}", path.display()),
        )
    })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let f = f.into_std().await;
    if raw {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let span = tracing::info_span!("volume data", pool, vol, op = "download", len);
        tokio::spawn(
            async move {
                let started = Instant::now();
                let sent = async {
                    let sock = raw_socket(on_upgrade.await?, 0)?.0;
                    let n = tokio::task::spawn_blocking(move || {
                        set_buffer(&sock, libc::SO_SNDBUF);
                        fdcopy::send_file(&f, sock.as_fd(), 0, len, &mut |_| {})
                    })
                    .await??;
                    Ok::<u64, anyhow::Error>(n)
                }
                .await;
                match sent {
                    Ok(n) if n == len => {
                        tracing::info!(ms = started.elapsed().as_millis() as u64, "volume sent")
                    }
                    Ok(n) => tracing::warn!(sent = n, "the volume shrank while it was sent"),
                    Err(err) => tracing::warn!("sending the volume failed: {err:#}"),
                }
            }
            .instrument(span),
        );
        return Ok(switching(&[(DATA_LENGTH_HEADER, len.to_string())]));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        file_body(f),
    )
        .into_response())
}

/// A response body that streams `f` from its current offset to its end, read on a blocking
/// thread.
pub(super) fn file_body(f: std::fs::File) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut f = f;
        loop {
            // Read into spare capacity: nothing is zeroed first, and each chunk is handed to
            // hyper without a copy.
            let mut buf = Vec::with_capacity(CHUNK);
            let msg = match (&mut f).take(CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(buf)),
                Err(err) => Err(err),
            };
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    Body::from_stream(stream)
}

/// Replaces the volume's bytes; see the module docs.
async fn upload_as(
    e: Engine,
    pool: String,
    vol: String,
    mut req: Request,
    raw: bool,
) -> Result<Response, ApiError> {
    let io = |what: &str, err: std::io::Error| {
        ApiError(
            ErrorCode::HostError,
            format!("upload to {pool}/{vol}: {what}: {err}"),
        )
    };
    if raw {
        let len = req
            .headers()
            .get(DATA_LENGTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError(
                    ErrorCode::InvalidArgument,
                    format!("a raw upload needs a {DATA_LENGTH_HEADER} header (a byte count)"),
                )
            })?;
        let up = e.vol_upload_begin(&pool, &vol).await?;
        let on_upgrade = hyper::upgrade::on(&mut req);
        let span = tracing::info_span!("volume data", pool, vol, op = "upload", len);
        tokio::spawn(
            async move {
                let started = Instant::now();
                let sock = match on_upgrade.await {
                    Ok(u) => raw_socket(u, len),
                    Err(err) => Err(err.into()),
                };
                let (sock, head) = match sock {
                    Ok(s) => s,
                    Err(err) => return tracing::warn!("the upload did not start: {err:#}"),
                };
                let received = tokio::task::spawn_blocking(move || {
                    let r = receive(up, &sock, &head, len);
                    (sock, r)
                })
                .await;
                let (sock, received) = match received {
                    Ok(r) => r,
                    Err(err) => return tracing::error!("the upload task failed: {err}"),
                };
                let received = match received {
                    Ok(up) => commit(&e, &pool, &vol, up).await,
                    Err(err) => Err(err),
                };
                let (reply, old) = match received {
                    Ok(old) => {
                        tracing::info!(
                            ms = started.elapsed().as_millis() as u64,
                            "volume uploaded"
                        );
                        (
                            e.vol_info(&pool, &vol).await.map_err(ApiError::from),
                            Some(old),
                        )
                    }
                    Err(err) => (Err(err), None),
                };
                if let Err(err) = answer(sock, reply).await {
                    tracing::warn!("cannot answer the upload: {err}");
                }
                // Freeing the old bytes is not part of the upload.
                tokio::task::spawn_blocking(move || drop(old));
            }
            .instrument(span),
        );
        return Ok(switching(&[]));
    }
    let mut up = e.vol_upload_begin(&pool, &vol).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    // The writer hands the upload back when the body has ended; it is committed only if the
    // body arrived whole (a dropped Upload removes its temp file).
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            up.write_all(&chunk)?;
        }
        Ok::<Upload, std::io::Error>(up)
    });
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError(
                ErrorCode::InvalidArgument,
                format!("upload to {pool}/{vol} was interrupted: {err}"),
            )
        })?;
        if tx.send(chunk).await.is_err() {
            // The writer failed; its error is below.
            break;
        }
    }
    drop(tx);
    let up = writer
        .await
        .map_err(|err| ApiError(ErrorCode::Internal, format!("upload writer: {err}")))?
        .map_err(|err| io("write", err))?;
    let old = commit(&e, &pool, &vol, up).await?;
    // Freeing the old bytes is not part of the upload.
    tokio::task::spawn_blocking(move || drop(old));
    tracing::info!(pool, vol, "volume uploaded");
    let info: ApiResult<api::VolInfo> = Ok(Json(e.vol_info(&pool, &vol).await?));
    Ok(info.into_response())
}

/// Puts a received upload in place as an hvd operation: once the bytes are all here, the
/// commit finishes even if the client goes away (before that, a dropped upload removes its
/// temp file and the volume keeps its bytes).
async fn commit(
    e: &Engine,
    pool: &str,
    vol: &str,
    up: Upload,
) -> Result<engine::Replaced, ApiError> {
    let (e2, p, v) = (e.clone(), pool.to_string(), vol.to_string());
    Ok(e.operations()
        .run(
            "vol-upload",
            format!("volume/{pool}/{vol}"),
            engine::Cancel::Never,
            async move { e2.vol_upload_commit(&p, &v, up).await },
        )
        .await?)
}

fn wants_raw(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(VOLUME_DATA_PROTOCOL))
}

fn switching(extra: &[(&'static str, String)]) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static(VOLUME_DATA_PROTOCOL),
    );
    for (name, value) in extra {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
    r
}

/// The upgraded connection as a blocking socket with stall timeouts, and the bytes hyper had
/// already read past the request (at most `max` of them are allowed).
fn raw_socket(
    u: hyper::upgrade::Upgraded,
    max: u64,
) -> anyhow::Result<(std::os::unix::net::UnixStream, Bytes)> {
    let parts = u
        .downcast::<TokioIo<tokio::net::UnixStream>>()
        .map_err(|_| anyhow::anyhow!("the upgraded connection is not a Unix socket"))?;
    if parts.read_buf.len() as u64 > max {
        anyhow::bail!("the client sent more bytes than it announced");
    }
    let sock = parts.io.into_inner().into_std()?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(STALL))?;
    sock.set_write_timeout(Some(STALL))?;
    Ok((sock, parts.read_buf))
}

fn set_buffer(sock: &std::os::unix::net::UnixStream, opt: libc::c_int) {
    fdcopy::set_socket_buffer(sock.as_fd(), opt, SOCKET_BUFFER);
}

/// Moves `len` bytes (`head` first, then the socket's) into the upload.
fn receive(
    mut up: Upload,
    sock: &std::os::unix::net::UnixStream,
    head: &[u8],
    len: u64,
) -> Result<Upload, ApiError> {
    let io = |what: &str, err: std::io::Error| {
        ApiError(ErrorCode::HostError, format!("upload: {what}: {err}"))
    };
    set_buffer(sock, libc::SO_RCVBUF);
    up.write_all(head).map_err(|err| io("write", err))?;
    while up.written() < len {
        let want = (len - up.written()).min(usize::MAX as u64) as usize;
        let n = up.splice_from(sock.as_fd(), want).map_err(|err| {
            ApiError(
                ErrorCode::InvalidArgument,
                format!("the upload was interrupted: {err}"),
            )
        })?;
        if n == 0 {
            return Err(ApiError(
                ErrorCode::InvalidArgument,
                format!("the upload ended after {} of {len} bytes", up.written()),
            ));
        }
    }
    Ok(up)
}

/// Writes the upload's outcome as an HTTP/1.1 response on the raw stream.
async fn answer(
    sock: std::os::unix::net::UnixStream,
    reply: Result<api::VolInfo, ApiError>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (status, body) = match reply {
        Ok(info) => (StatusCode::OK, serde_json::to_vec(&info)),
        Err(ApiError(code, message)) => (
            status_of(code),
            serde_json::to_vec(&ErrorBody {
                error: ErrorDetail { code, message },
            }),
        ),
    };
    let body = body.map_err(std::io::Error::other)?;
    let mut msg = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(&body);
    sock.set_nonblocking(true)?;
    let mut sock = tokio::net::UnixStream::from_std(sock)?;
    sock.write_all(&msg).await?;
    sock.shutdown().await
}
