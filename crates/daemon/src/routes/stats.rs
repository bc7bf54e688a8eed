//! Live figures of running VMs (issue 13): `GET /v1/vms/{name}/stats` and `GET /v1/stats`
//! (every running VM the caller may see). The engine reads them cheaply (`engine/src/stats.rs`).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use engine::Engine;

use super::ApiResult;

pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/v1/stats", get(all))
        .route("/v1/vms/{name}/stats", get(one))
}

async fn one(State(e): State<Engine>, Path(name): Path<String>) -> ApiResult<api::VmStats> {
    Ok(Json(e.vm_stats(&name).await?))
}

async fn all(State(e): State<Engine>) -> Json<api::StatsList> {
    let caller = crate::authz::current();
    let vms = e
        .all_stats(|vm| caller.as_ref().is_some_and(|c| c.sees(vm)))
        .await;
    Json(api::StatsList { vms })
}
