//! Live migration (issue 12). On the source: `POST /v1/vms/{name}/migrate` (`VM.Migrate`),
//! a cancellable operation that talks to the target through [`HttpsPeer`]. On the target (all
//! `Host.Admin`): `/v1/migrations/incoming` and its status, finish, abort and the raw tunnel
//! (`Upgrade: hv-migration`) that carries one channel of QEMU's bytes over hv's TLS link.

use std::sync::Arc;
use std::time::Duration;

use api::migrate::paths;
use api::{ErrorCode, MIGRATION_PROTOCOL};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::migrate::{Peer, PeerFuture, Tunnel};
use engine::{Engine, EngineError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use super::{body, run_op, ApiError, ApiResult};

/// The limit of a status, finish or abort call to the target.
const SHORT: Duration = Duration::from_secs(30);

pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/v1/vms/{name}/migrate", post(migrate))
        .route(paths::INCOMING, post(incoming))
        .route(
            "/v1/migrations/incoming/{id}",
            get(incoming_status).delete(incoming_abort),
        )
        .route("/v1/migrations/incoming/{id}/finish", post(incoming_finish))
        .route(
            "/v1/migrations/incoming/{id}/tunnel/{channel}",
            get(incoming_tunnel),
        )
}

async fn migrate(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::MigrationProgress> {
    let req: api::MigrateRequest = body(&b)?;
    let peer = HttpsPeer::new(&req.to)?;
    Ok(Json(
        run_op(
            &e,
            api::MIGRATE_OPERATION,
            format!("vm/{name}"),
            engine::Cancel::Cooperative,
            move |e| async move { e.migrate(&name, req, Arc::new(peer)).await },
        )
        .await?,
    ))
}

async fn incoming(State(e): State<Engine>, b: Bytes) -> ApiResult<api::IncomingReady> {
    let req: api::IncomingRequest = body(&b)?;
    Ok(Json(e.incoming_prepare(req).await?))
}

async fn incoming_status(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<api::IncomingStatus> {
    Ok(Json(e.incoming_status(&id)?))
}

async fn incoming_finish(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<api::VmInfo> {
    Ok(Json(e.incoming_finish(&id).await?))
}

async fn incoming_abort(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    e.incoming_abort(&id).await?;
    Ok(Json(serde_json::json!({})))
}

fn wants_tunnel(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(MIGRATION_PROTOCOL))
}

async fn incoming_tunnel(
    State(e): State<Engine>,
    Path((id, channel)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    if !wants_tunnel(req.headers()) {
        return Err(ApiError(
            ErrorCode::InvalidArgument,
            format!("this path is a raw tunnel: send Connection: Upgrade and Upgrade: {MIGRATION_PROTOCOL}"),
        ));
    }
    let unix = e.incoming_connect(&id, &channel).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::info_span!("migration tunnel", id, channel);
    tokio::spawn(
        async move {
            let r = async {
                let up = hyper_util::rt::TokioIo::new(on_upgrade.await?);
                Ok::<_, anyhow::Error>(
                    engine::migrate::tunnel::pump_with(
                        unix,
                        up,
                        engine::migrate::tunnel_idle(&channel),
                    )
                    .await?,
                )
            }
            .await;
            let broke = match r {
                Ok((to_peer, from_peer)) => {
                    tracing::info!(from_peer, to_peer, "migration tunnel closed");
                    false
                }
                Err(err) => {
                    tracing::warn!("migration tunnel broke: {err:#}");
                    true
                }
            };
            e.incoming_tunnel_closed(&id, broke).await;
        }
        .instrument(span),
    );
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static(MIGRATION_PROTOCOL),
    );
    Ok(r)
}

/// The target hvd as the engine's [`Peer`]: hv's HTTPS client (blocking, on the blocking
/// pool) for calls, and a raw TLS connection (tokio-rustls, the same pinned configuration)
/// for tunnels.
pub struct HttpsPeer {
    client: client::Client,
    raw: client::RawEndpoint,
}

impl HttpsPeer {
    fn new(to: &api::PeerTarget) -> Result<HttpsPeer, ApiError> {
        let bad = |e: client::ClientError| {
            ApiError(
                ErrorCode::InvalidArgument,
                format!("the migration target: {e}"),
            )
        };
        let client =
            client::Client::https(&to.url, &to.token, Some(&to.fingerprint)).map_err(bad)?;
        let raw = client.raw_endpoint().ok_or_else(|| {
            ApiError(
                ErrorCode::InvalidArgument,
                "the target needs an https:// url".into(),
            )
        })?;
        Ok(HttpsPeer { client, raw })
    }

    /// One call, bounded by `limit`: a cut link never answers (a pooled connection's read
    /// would wait for TCP to give up), and a migration must not hang on it.
    fn call<T, F>(&self, limit: Duration, f: F) -> PeerFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(client::Client) -> client::Result<T> + Send + 'static,
    {
        let c = self.client.clone();
        Box::pin(async move {
            tokio::time::timeout(limit, tokio::task::spawn_blocking(move || f(c)))
                .await
                .map_err(|_| {
                    EngineError::Host(format!(
                        "the target hvd did not answer within {} s",
                        limit.as_secs()
                    ))
                })?
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(peer_error)
        })
    }
}

fn peer_error(e: client::ClientError) -> EngineError {
    match e {
        client::ClientError::Api { code, message, .. } => EngineError::Remote {
            code: match code {
                // The target's own authentication is not this caller's.
                ErrorCode::Unauthenticated | ErrorCode::Forbidden => ErrorCode::InvalidArgument,
                c => c,
            },
            message: format!("the target hvd refused: {message}"),
        },
        other => EngineError::Host(format!("the target hvd: {other}")),
    }
}

impl Peer for HttpsPeer {
    fn incoming(&self, req: &api::IncomingRequest) -> PeerFuture<'_, api::IncomingReady> {
        let req = req.clone();
        // The target starts a QEMU before it answers.
        self.call(Duration::from_secs(120), move |c| c.incoming_prepare(&req))
    }
    fn finish(&self, id: &str) -> PeerFuture<'_, api::VmInfo> {
        let id = id.to_string();
        self.call(SHORT, move |c| c.incoming_finish(&id))
    }
    fn status(&self, id: &str) -> PeerFuture<'_, api::IncomingStatus> {
        let id = id.to_string();
        self.call(SHORT, move |c| c.incoming_status(&id))
    }
    fn abort(&self, id: &str) -> PeerFuture<'_, ()> {
        let id = id.to_string();
        self.call(SHORT, move |c| c.incoming_abort(&id))
    }
    fn tunnel(&self, id: &str, channel: &str) -> PeerFuture<'_, Box<dyn Tunnel>> {
        let path = paths::incoming_tunnel(id, channel);
        let raw = self.raw.clone();
        Box::pin(async move {
            open_tunnel(&raw, &path)
                .await
                .map_err(|e| EngineError::Host(format!("cannot open the migration tunnel: {e:#}")))
        })
    }
}

async fn open_tunnel(raw: &client::RawEndpoint, path: &str) -> anyhow::Result<Box<dyn Tunnel>> {
    tokio::time::timeout(SHORT, open_tunnel_now(raw, path))
        .await
        .map_err(|_| anyhow::anyhow!("the target did not answer within {} s", SHORT.as_secs()))?
}

async fn open_tunnel_now(raw: &client::RawEndpoint, path: &str) -> anyhow::Result<Box<dyn Tunnel>> {
    let tcp = tokio::net::TcpStream::connect((raw.host.as_str(), raw.port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(raw.host.clone())?;
    let mut tls = tokio_rustls::TlsConnector::from(raw.tls.clone())
        .connect(name, tcp)
        .await?;
    let host = if raw.host.contains(':') {
        format!("[{}]:{}", raw.host, raw.port)
    } else {
        format!("{}:{}", raw.host, raw.port)
    };
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\nConnection: Upgrade\r\nUpgrade: {MIGRATION_PROTOCOL}\r\n\r\n",
        raw.authorization
    );
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    // The answer's head, byte by byte: nothing after it may be consumed.
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        if got.len() > 16 << 10 {
            anyhow::bail!("the target's answer head is too long");
        }
        let b = tls.read_u8().await?;
        got.push(b);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    if status != 101 {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            (&mut tls).take(64 << 10).read_to_end(&mut rest),
        )
        .await;
        let msg = serde_json::from_slice::<api::ErrorBody>(&rest)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&rest).into_owned());
        anyhow::bail!("the target answered {status}: {msg}");
    }
    Ok(Box::new(tls))
}
