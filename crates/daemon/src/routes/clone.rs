//! `POST /v1/vms/{name}/clone` (issue 14): a full copy of a stopped VM, or a linked clone on
//! an external snapshot of it, under a new name, as an operation (`engine/src/clone.rs`). Right: `VM.Allocate` on all VMs, since it defines a VM
//! whose name is not in the path and reads every disk of the source.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use engine::Engine;

use super::{body, op, ApiResult};

pub fn routes() -> Router<Engine> {
    Router::new().route("/v1/vms/{name}/clone", post(clone))
}

async fn clone(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let req: api::CloneRequest = body(&b)?;
    Ok(Json(
        op(&e, "clone", format!("vm/{name}"), move |e| async move {
            e.clone_vm(&name, req.name, req.linked, req.snapshot, req.start)
                .await
        })
        .await?,
    ))
}
