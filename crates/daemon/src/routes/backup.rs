//! `GET /v1/host/backup`: a consistent online copy of hv's database and the VM metadata, as a
//! tar archive (see `engine::backup`). It holds every user's password hash, token hashes and
//! hvd's TLS key: `Host.Admin` on the whole host only, and audited like every change.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use engine::Engine;

use super::volume_data::file_body;
use super::ApiError;

/// `GET /v1/host/backup`.
pub async fn backup(State(e): State<Engine>) -> Result<Response, ApiError> {
    let archive = tokio::task::spawn_blocking(move || e.backup())
        .await
        .map_err(|err| {
            ApiError(
                api::ErrorCode::Internal,
                format!("the backup task failed: {err}"),
            )
        })??;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, archive.len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"hv-backup.tar\"".to_string(),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        file_body(archive.file),
    )
        .into_response())
}
