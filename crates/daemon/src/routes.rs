//! HTTP routes: decode the request, call the engine, encode the reply. Errors become
//! `{"error": {"code", "message"}}` with one status per [`ErrorCode`], in [`status_of`].

use std::time::Duration;

use api::{
    paths, AutostartRequest, CreateVmRequest, ErrorBody, ErrorCode, ErrorDetail, ShutdownRequest,
    StartRequest, UndefineRequest, VmList, WaitRequest,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, EngineError, FeedItem};
use model::VmSpec;
use serde::de::DeserializeOwned;
use serde::Deserialize;

mod backup;
mod clone;
pub mod consoles;
mod events;
mod media;
mod migrate;
mod resize;
mod screen;
mod stats;
mod vnc;
mod volume_data;

/// An error on its way to the client.
pub struct ApiError(pub ErrorCode, pub String);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e.code(), e.to_string())
    }
}

/// The one place that maps error codes to HTTP statuses.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists
        | ErrorCode::InvalidState
        | ErrorCode::InUse
        | ErrorCode::Cancelled => StatusCode::CONFLICT,
        ErrorCode::Busy => StatusCode::LOCKED,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::HostError | ErrorCode::QemuError | ErrorCode::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0,
                message: self.1,
            },
        };
        (status_of(self.0), Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs a mutating request's work as an hvd operation (`engine::Operations`): it finishes, or
/// rolls itself back, even when the connection that asked for it goes away. Audited with the
/// operation's id when it ends.
async fn op<T, Fut>(
    e: &Engine,
    kind: &str,
    target: String,
    work: impl FnOnce(Engine) -> Fut,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = engine::Result<T>> + Send + 'static,
{
    run_op(e, kind, target, engine::Cancel::Never, work).await
}

/// [`op`] with a say in whether the work can be cancelled (only work that merely waits after
/// any await can).
async fn run_op<T, Fut>(
    e: &Engine,
    kind: &str,
    target: String,
    cancel: engine::Cancel,
    work: impl FnOnce(Engine) -> Fut,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = engine::Result<T>> + Send + 'static,
{
    let audit = crate::authz::current().map(|c| c.audit_operation(kind, &target));
    Ok(e.operations()
        .run_then(kind, target, cancel, work(e.clone()), move |id, r| {
            if let Some(audit) = audit {
                audit(id, r)
            }
        })
        .await?)
}

/// Parses a JSON body with our error format (serde names unknown fields).
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let slice: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    // The error names the field it is about (`spec.graphics.port: invalid value ...`).
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(slice)).map_err(
        |e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            ApiError(
                ErrorCode::InvalidArgument,
                format!("invalid request body: {at}{}", e.inner()),
            )
        },
    )
}

pub fn router(engine: Engine) -> Router {
    Router::new()
        .route(
            paths::PING,
            get(|| async {
                Json(serde_json::json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
            }),
        )
        .route(
            "/v1/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route(paths::HOST_CHECK, get(host_check))
        .route(paths::HOST_BACKUP, get(backup::backup))
        .route("/v1/host/bridges", post(host_bridge))
        .route(
            "/v1/host/bridges/{bridge}",
            axum::routing::delete(host_unbridge),
        )
        .route(paths::VMS, get(list).post(create))
        .route(
            "/v1/vms/{name}",
            get(info).put(update).delete(undefine_delete),
        )
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/shutdown", post(shutdown))
        .route("/v1/vms/{name}/reboot", post(reboot))
        .route("/v1/vms/{name}/destroy", post(destroy))
        .route("/v1/vms/{name}/reset", post(reset))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/undefine", post(undefine))
        .route("/v1/vms/{name}/autostart", post(autostart))
        .route("/v1/vms/{name}/wait", post(wait))
        .route("/v1/vms/{name}/showcmd", get(showcmd))
        .route("/v1/vms/{name}/console/log", get(console_log))
        .route("/v1/vms/{name}/disks", post(disk_attach))
        .route("/v1/vms/{name}/disks/{target}/detach", post(disk_detach))
        .route("/v1/vms/{name}/nics", post(nic_attach))
        .route("/v1/vms/{name}/nics/{mac}/detach", post(nic_detach))
        .route("/v1/vms/{name}/media", post(media_insert))
        .route("/v1/vms/{name}/media/eject", post(media_eject))
        .route(
            "/v1/vms/{name}/snapshots",
            get(snapshot_list).post(snapshot_create),
        )
        .route("/v1/vms/{name}/snapshots/current", get(snapshot_current))
        .route(
            "/v1/vms/{name}/snapshots/{snap}",
            get(snapshot_info).delete(snapshot_delete),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snap}/revert",
            post(snapshot_revert),
        )
        .route("/v1/networks", get(net_list).post(net_create))
        .route("/v1/networks/{net}", get(net_info).delete(net_delete))
        .route("/v1/networks/{net}/start", post(net_start))
        .route("/v1/networks/{net}/stop", post(net_stop))
        .route("/v1/networks/{net}/autostart", post(net_autostart))
        .route("/v1/networks/{net}/leases", get(net_leases))
        .route(
            "/v1/networks/{net}/forwards",
            get(net_forwards).post(net_forward_add),
        )
        .route(
            "/v1/networks/{net}/forwards/{proto}/{port}",
            axum::routing::delete(net_forward_remove),
        )
        .route(
            "/v1/networks/{net}/reservations",
            get(net_reservations).post(net_reservation_add),
        )
        .route(
            "/v1/networks/{net}/reservations/{key}",
            axum::routing::delete(net_reservation_remove),
        )
        .route("/v1/operations", get(operations))
        .route("/v1/operations/{id}", get(operation))
        .route("/v1/operations/{id}/cancel", post(operation_cancel))
        .route(paths::POOLS, get(pools).post(pool_create))
        .route("/v1/pools/{pool}", get(pool_info).delete(pool_delete))
        .route("/v1/pools/{pool}/undefine", post(pool_undefine))
        .route("/v1/pools/{pool}/volumes", get(vol_list).post(vol_create))
        .route("/v1/pools/{pool}/import", post(vol_import))
        .route(
            "/v1/pools/{pool}/volumes/{vol}",
            get(vol_info).delete(vol_delete),
        )
        .route("/v1/pools/{pool}/volumes/{vol}/clone", post(vol_clone))
        .route("/v1/pools/{pool}/volumes/{vol}/resize", post(vol_resize))
        .route(
            "/v1/pools/{pool}/volumes/{vol}/data",
            get(volume_data::download).put(volume_data::upload),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/stream",
            get(volume_data::stream_download).put(volume_data::stream_upload),
        )
        .merge(events::routes())
        .merge(stats::routes())
        .merge(screen::routes())
        .merge(media::routes())
        .merge(resize::routes())
        .merge(clone::routes())
        .merge(migrate::routes())
        .fallback(|| async { ApiError(ErrorCode::NotFound, "no such API path".into()) })
        .with_state(engine)
}

async fn host_bridge(State(e): State<Engine>, b: Bytes) -> ApiResult<api::BridgeChange> {
    let req: api::BridgeIfaceRequest = body(&b)?;
    let target = format!("host/{}", req.bridge);
    Ok(Json(
        op(&e, "host-bridge", target, move |e| async move {
            e.host_bridge(req).await
        })
        .await?,
    ))
}

async fn host_unbridge(
    State(e): State<Engine>,
    Path(bridge): Path<String>,
) -> ApiResult<api::BridgeChange> {
    Ok(Json(
        op(
            &e,
            "host-unbridge",
            format!("host/{bridge}"),
            move |e| async move { e.host_unbridge(&bridge).await },
        )
        .await?,
    ))
}

async fn host_check(State(e): State<Engine>) -> Json<api::HostReport> {
    Json(e.host_check().await)
}

/// The VMs the caller may see.
async fn list(State(e): State<Engine>) -> Json<VmList> {
    let caller = crate::authz::current();
    let mut vms = e.list();
    vms.retain(|vm| caller.as_ref().is_some_and(|c| c.sees(&vm.name)));
    Json(VmList { vms })
}

async fn create(
    State(e): State<Engine>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::VmInfo>), ApiError> {
    let req: CreateVmRequest = body(&b)?;
    let target = format!("vm/{}", req.spec.name);
    let info = op(&e, "create", target, move |e| async move {
        e.define(req.spec, req.start).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn info(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(e.info(&name)?))
}

async fn update(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let spec: VmSpec = body(&b)?;
    Ok(Json(
        op(&e, "edit", format!("vm/{name}"), move |e| async move {
            e.update(&name, spec).await
        })
        .await?,
    ))
}

async fn start(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: StartRequest = body(&b)?;
    Ok(Json(
        op(&e, "start", format!("vm/{name}"), move |e| async move {
            e.start(&name, req.paused).await
        })
        .await?,
    ))
}

async fn shutdown(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: ShutdownRequest = body(&b)?;
    Ok(Json(
        run_op(
            &e,
            "shutdown",
            format!("vm/{name}"),
            engine::Cancel::AtAnyAwait,
            move |e| async move {
                e.shutdown(&name, Duration::from_secs(req.timeout_secs), req.force)
                    .await
            },
        )
        .await?,
    ))
}

async fn reboot(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: ShutdownRequest = body(&b)?;
    Ok(Json(
        op(&e, "reboot", format!("vm/{name}"), move |e| async move {
            e.reboot(&name, Duration::from_secs(req.timeout_secs), req.force)
                .await
        })
        .await?,
    ))
}

async fn destroy(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(
        op(&e, "destroy", format!("vm/{name}"), move |e| async move {
            e.destroy(&name).await
        })
        .await?,
    ))
}

async fn reset(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(
        op(&e, "reset", format!("vm/{name}"), move |e| async move {
            e.reset(&name).await
        })
        .await?,
    ))
}

async fn pause(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(
        op(&e, "pause", format!("vm/{name}"), move |e| async move {
            e.pause(&name).await
        })
        .await?,
    ))
}

async fn resume(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(
        op(&e, "resume", format!("vm/{name}"), move |e| async move {
            e.resume(&name).await
        })
        .await?,
    ))
}

async fn undefine(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: UndefineRequest = body(&b)?;
    undefine_op(&e, name, req).await
}

async fn undefine_delete(
    State(e): State<Engine>,
    Path(name): Path<String>,
    Query(req): Query<UndefineRequest>,
) -> Result<StatusCode, ApiError> {
    undefine_op(&e, name, req).await
}

async fn undefine_op(
    e: &Engine,
    name: String,
    req: UndefineRequest,
) -> Result<StatusCode, ApiError> {
    op(e, "undefine", format!("vm/{name}"), move |e| async move {
        e.undefine(&name, req.remove_storage, req.force).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn autostart(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: AutostartRequest = body(&b)?;
    Ok(Json(e.set_autostart(&name, req.enabled)?))
}

async fn wait(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::WaitResponse> {
    let req: WaitRequest = body(&b)?;
    Ok(Json(e.wait(&name, req).await?))
}

async fn showcmd(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::ShowCmd> {
    Ok(Json(e.showcmd(&name).await?))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// What the console printed since the VM last started; with `follow`, then live output until
/// the VM stops.
async fn console_log(
    State(e): State<Engine>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let hub = e.console(&name)?;
    let (snap, feed) = hub.subscribe_feed();
    let head =
        futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(snap)) });
    let body = if q.follow {
        let live = futures_util::stream::unfold(feed, |mut feed| async move {
            loop {
                match feed.recv().await {
                    FeedItem::Data { skipped, data } => {
                        return Some((Ok(with_skip_marker(skipped, &data)), feed))
                    }
                    FeedItem::Reset => continue,
                    FeedItem::Closed => return None,
                }
            }
        });
        Body::from_stream(futures_util::StreamExt::chain(head, live))
    } else {
        Body::from_stream(head)
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

// ---- operations ----

/// The operations on objects the caller may see.
async fn operations(State(e): State<Engine>) -> Json<api::OperationList> {
    let caller = crate::authz::current();
    let mut operations = e.operations().list();
    operations.retain(|op| caller.as_ref().is_some_and(|c| c.sees_target(&op.target)));
    Json(api::OperationList { operations })
}

/// An operation id from the path: anything that is not one names no operation (404, in the
/// API's own error format rather than the router's plain text).
fn operation_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError(
            ErrorCode::NotFound,
            format!("operation {id:?} does not exist (hv operation list shows the running and recent ones)"),
        )
    })
}

async fn operation(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<api::OperationInfo> {
    Ok(Json(e.operations().get(operation_id(&id)?)?))
}

async fn operation_cancel(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<api::OperationInfo> {
    Ok(Json(e.operations().cancel(operation_id(&id)?)?))
}

/// Output with the marker for what this reader missed in front of it.
pub(crate) fn with_skip_marker(skipped: u64, data: &[u8]) -> Bytes {
    if skipped == 0 {
        return Bytes::copy_from_slice(data);
    }
    let mut out = engine::skipped_marker(skipped).into_bytes();
    out.extend_from_slice(data);
    Bytes::from(out)
}

// ---- storage ----

async fn pools(State(e): State<Engine>) -> ApiResult<api::PoolList> {
    Ok(Json(api::PoolList { pools: e.pools()? }))
}

async fn pool_create(
    State(e): State<Engine>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::PoolInfo>), ApiError> {
    let req: api::CreatePoolRequest = body(&b)?;
    Ok((StatusCode::CREATED, Json(e.pool_create(req)?)))
}

async fn pool_info(State(e): State<Engine>, Path(pool): Path<String>) -> ApiResult<api::PoolInfo> {
    Ok(Json(e.pool(&pool)?))
}

async fn pool_delete(
    State(e): State<Engine>,
    Path(pool): Path<String>,
    Query(q): Query<api::DeletePoolRequest>,
) -> Result<StatusCode, ApiError> {
    op(
        &e,
        "pool-delete",
        format!("pool/{pool}"),
        move |e| async move { e.pool_delete(&pool, q.force).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pool_undefine(
    State(e): State<Engine>,
    Path(pool): Path<String>,
) -> Result<StatusCode, ApiError> {
    op(
        &e,
        "pool-undefine",
        format!("pool/{pool}"),
        move |e| async move { e.pool_undefine(&pool).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn vol_list(State(e): State<Engine>, Path(pool): Path<String>) -> ApiResult<api::VolList> {
    Ok(Json(api::VolList {
        volumes: e.vol_list(&pool).await?,
    }))
}

async fn vol_create(
    State(e): State<Engine>,
    Path(pool): Path<String>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::VolInfo>), ApiError> {
    let req: api::CreateVolRequest = body(&b)?;
    let target = format!("volume/{pool}/{}", req.name);
    let info = op(&e, "vol-create", target, move |e| async move {
        e.vol_create(&pool, req).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn vol_import(
    State(e): State<Engine>,
    Path(pool): Path<String>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::VolInfo>), ApiError> {
    let req: api::ImportVolRequest = body(&b)?;
    let target = format!("volume/{pool}/{}", req.name);
    let info = op(&e, "vol-import", target, move |e| async move {
        e.vol_import(&pool, req).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn vol_info(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<api::VolInfo> {
    Ok(Json(e.vol_info(&pool, &vol).await?))
}

async fn vol_delete(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    op(
        &e,
        "vol-delete",
        format!("volume/{pool}/{vol}"),
        move |e| async move { e.vol_delete(&pool, &vol).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn vol_clone(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::VolInfo>), ApiError> {
    let req: api::CloneVolRequest = body(&b)?;
    let target = format!("volume/{pool}/{vol}");
    let info = op(&e, "vol-clone", target, move |e| async move {
        e.vol_clone(&pool, &vol, req.name, req.linked).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn vol_resize(
    State(e): State<Engine>,
    Path((pool, vol)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<api::VolInfo> {
    let req: api::ResizeVolRequest = body(&b)?;
    Ok(Json(
        op(
            &e,
            "vol-resize",
            format!("volume/{pool}/{vol}"),
            move |e| async move {
                e.vol_resize(&pool, &vol, req.size.0, req.allow_shrink)
                    .await
            },
        )
        .await?,
    ))
}

// ---- disks and media ----

async fn disk_attach(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: api::AttachDiskRequest = body(&b)?;
    let scope = engine::ChangeScope {
        live: req.live,
        config: req.config,
    };
    Ok(Json(
        op(
            &e,
            "disk-attach",
            format!("vm/{name}"),
            move |e| async move { e.disk_attach(&name, req.disk, scope).await },
        )
        .await?,
    ))
}

async fn nic_attach(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::NicAttached> {
    let req: api::AttachNicRequest = body(&b)?;
    let scope = engine::ChangeScope {
        live: req.live,
        config: req.config,
    };
    Ok(Json(
        op(
            &e,
            "nic-attach",
            format!("vm/{name}"),
            move |e| async move { e.nic_attach(&name, req.nic, scope).await },
        )
        .await?,
    ))
}

async fn nic_detach(
    State(e): State<Engine>,
    Path((name, mac)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: api::DetachNicRequest = body(&b)?;
    let scope = engine::ChangeScope {
        live: req.live,
        config: req.config,
    };
    Ok(Json(
        op(
            &e,
            "nic-detach",
            format!("vm/{name}"),
            move |e| async move { e.nic_detach(&name, &mac, scope).await },
        )
        .await?,
    ))
}

async fn disk_detach(
    State(e): State<Engine>,
    Path((name, target)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: api::DetachDiskRequest = body(&b)?;
    let scope = engine::ChangeScope {
        live: req.live,
        config: req.config,
    };
    Ok(Json(
        op(
            &e,
            "disk-detach",
            format!("vm/{name}"),
            move |e| async move { e.disk_detach(&name, &target, scope).await },
        )
        .await?,
    ))
}

async fn media_insert(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: api::MediaRequest = body(&b)?;
    Ok(Json(
        op(
            &e,
            "media-insert",
            format!("vm/{name}"),
            move |e| async move { e.media_insert(&name, &req.source).await },
        )
        .await?,
    ))
}

async fn media_eject(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmInfo> {
    Ok(Json(
        op(
            &e,
            "media-eject",
            format!("vm/{name}"),
            move |e| async move { e.media_eject(&name).await },
        )
        .await?,
    ))
}

// ---- snapshots ----

async fn snapshot_list(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<api::SnapshotList> {
    Ok(Json(api::SnapshotList {
        snapshots: e.snapshot_list(&name)?,
    }))
}

async fn snapshot_create(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::SnapshotInfo>), ApiError> {
    let req: api::CreateSnapshotRequest = body(&b)?;
    let info = op(
        &e,
        "snapshot-create",
        format!("vm/{name}"),
        move |e| async move { e.snapshot_create(&name, req).await },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn snapshot_current(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Option<api::SnapshotInfo>> {
    Ok(Json(e.snapshot_current(&name)?))
}

async fn snapshot_info(
    State(e): State<Engine>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<api::SnapshotInfo> {
    Ok(Json(e.snapshot_get(&name, &snap)?))
}

async fn snapshot_delete(
    State(e): State<Engine>,
    Path((name, snap)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    op(
        &e,
        "snapshot-delete",
        format!("vm/{name}"),
        move |e| async move { e.snapshot_delete(&name, &snap).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot_revert(
    State(e): State<Engine>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<api::SnapshotInfo> {
    Ok(Json(
        op(
            &e,
            "snapshot-revert",
            format!("vm/{name}"),
            move |e| async move { e.snapshot_revert(&name, &snap).await },
        )
        .await?,
    ))
}

// ---- networks ----

async fn net_list(State(e): State<Engine>) -> Json<api::NetworkList> {
    Json(api::NetworkList {
        networks: e.net_list().await,
    })
}

async fn net_create(
    State(e): State<Engine>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::NetworkInfo>), ApiError> {
    let spec: model::NetworkSpec = body(&b)?;
    let target = format!("network/{}", spec.name);
    let info = op(&e, "net-create", target, move |e| async move {
        e.net_create(spec).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn net_info(State(e): State<Engine>, Path(net): Path<String>) -> ApiResult<api::NetworkInfo> {
    Ok(Json(e.net_info(&net).await?))
}

async fn net_delete(
    State(e): State<Engine>,
    Path(net): Path<String>,
) -> Result<StatusCode, ApiError> {
    op(
        &e,
        "net-delete",
        format!("network/{net}"),
        move |e| async move { e.net_delete(&net).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn net_start(
    State(e): State<Engine>,
    Path(net): Path<String>,
) -> ApiResult<api::NetworkInfo> {
    Ok(Json(
        op(
            &e,
            "net-start",
            format!("network/{net}"),
            move |e| async move { e.net_start(&net).await },
        )
        .await?,
    ))
}

async fn net_stop(State(e): State<Engine>, Path(net): Path<String>) -> ApiResult<api::NetworkInfo> {
    Ok(Json(
        op(
            &e,
            "net-stop",
            format!("network/{net}"),
            move |e| async move { e.net_stop(&net).await },
        )
        .await?,
    ))
}

async fn net_leases(State(e): State<Engine>, Path(net): Path<String>) -> ApiResult<api::LeaseList> {
    Ok(Json(api::LeaseList {
        leases: e.net_leases(&net).await?,
    }))
}

async fn net_forwards(
    State(e): State<Engine>,
    Path(net): Path<String>,
) -> ApiResult<api::ForwardList> {
    Ok(Json(api::ForwardList {
        forwards: e.net_forwards(&net).await?,
    }))
}

async fn net_forward_add(
    State(e): State<Engine>,
    Path(net): Path<String>,
    b: Bytes,
) -> ApiResult<api::ForwardList> {
    let req: api::AddForwardRequest = body(&b)?;
    Ok(Json(api::ForwardList {
        forwards: op(
            &e,
            "forward-add",
            format!("network/{net}"),
            move |e| async move { e.net_forward_add(&net, req).await },
        )
        .await?,
    }))
}

async fn net_forward_remove(
    State(e): State<Engine>,
    Path((net, proto, port)): Path<(String, String, String)>,
) -> ApiResult<api::ForwardList> {
    let port: u16 = port.parse().map_err(|_| {
        ApiError(
            ErrorCode::InvalidArgument,
            format!("host port {port:?} is not a port number; use 1 to 65535"),
        )
    })?;
    Ok(Json(api::ForwardList {
        forwards: op(
            &e,
            "forward-remove",
            format!("network/{net}"),
            move |e| async move { e.net_forward_remove(&net, &proto, port).await },
        )
        .await?,
    }))
}

async fn net_reservations(
    State(e): State<Engine>,
    Path(net): Path<String>,
) -> ApiResult<api::ReservationList> {
    Ok(Json(api::ReservationList {
        reservations: e.net_reservations(&net).await?,
    }))
}

async fn net_reservation_add(
    State(e): State<Engine>,
    Path(net): Path<String>,
    b: Bytes,
) -> ApiResult<api::ReservationList> {
    let req: api::AddReservationRequest = body(&b)?;
    Ok(Json(api::ReservationList {
        reservations: op(
            &e,
            "reservation-add",
            format!("network/{net}"),
            move |e| async move { e.net_reservation_add(&net, req).await },
        )
        .await?,
    }))
}

async fn net_reservation_remove(
    State(e): State<Engine>,
    Path((net, key)): Path<(String, String)>,
) -> ApiResult<api::ReservationList> {
    Ok(Json(api::ReservationList {
        reservations: op(
            &e,
            "reservation-remove",
            format!("network/{net}"),
            move |e| async move { e.net_reservation_remove(&net, &key).await },
        )
        .await?,
    }))
}

async fn net_autostart(
    State(e): State<Engine>,
    Path(net): Path<String>,
    b: Bytes,
) -> ApiResult<api::NetworkInfo> {
    let req: api::AutostartRequest = body(&b)?;
    Ok(Json(e.net_set_autostart(&net, req.enabled).await?))
}
