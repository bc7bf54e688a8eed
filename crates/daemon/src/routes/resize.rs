//! Resizing a VM (issue 14): `GET /v1/vms/{name}/resources` (current and maximum vCPUs and
//! memory, `VmAudit`) and `POST /v1/vms/{name}/resources` (`hv set`, live and/or in the
//! definition, `VmConfig` like the other changes to a VM's devices). The work is an operation
//! in the engine (`engine/src/resize.rs`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use engine::Engine;

use super::{body, op, ApiResult};

pub fn routes() -> Router<Engine> {
    Router::new().route("/v1/vms/{name}/resources", get(show).post(set))
}

async fn show(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::ResourcesInfo> {
    Ok(Json(e.resources(&name).await?))
}

async fn set(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::ResourcesInfo> {
    let req: api::ResizeRequest = body(&b)?;
    let scope = engine::ChangeScope {
        live: req.live,
        config: req.config,
    };
    let change = model::resources::Resize {
        vcpus: req.vcpus,
        memory: req.memory,
    };
    Ok(Json(
        op(&e, "resize", format!("vm/{name}"), move |e| async move {
            e.resize(&name, change, scope).await
        })
        .await?,
    ))
}
