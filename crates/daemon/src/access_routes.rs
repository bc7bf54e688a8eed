//! Routes for users, grants, tokens, the audit log and the server certificate. Rights are
//! checked by `authz::guard` like everywhere else; these handlers only call `engine::Access`.

use std::sync::Arc;

use api::{ErrorCode, GrantInfo};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use engine::Access;

use crate::routes::{body, ApiError};

#[derive(Clone)]
pub struct AccessState {
    pub access: Arc<Access>,
    pub cert: Arc<api::HostCert>,
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(state: AccessState) -> Router {
    Router::new()
        .route("/v1/host/cert", get(host_cert))
        .route("/v1/users", get(users).post(user_add))
        .route("/v1/users/{user}", get(user).delete(user_remove))
        .route("/v1/users/{user}/password", post(passwd))
        .route("/v1/users/{user}/grants", post(grant))
        .route("/v1/users/{user}/grants/revoke", post(revoke))
        .route("/v1/tokens", get(tokens).post(token_create))
        .route("/v1/tokens/{id}", delete(token_revoke))
        .route("/v1/audit", get(audit))
        .with_state(state)
}

async fn host_cert(State(s): State<AccessState>) -> Json<api::HostCert> {
    Json((*s.cert).clone())
}

async fn users(State(s): State<AccessState>) -> ApiResult<api::UserList> {
    Ok(Json(api::UserList {
        users: s.access.users()?,
    }))
}

async fn user(State(s): State<AccessState>, Path(name): Path<String>) -> ApiResult<api::UserInfo> {
    Ok(Json(s.access.user(&name)?))
}

async fn user_add(
    State(s): State<AccessState>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::UserInfo>), ApiError> {
    let req: api::CreateUserRequest = body(&b)?;
    let access = s.access.clone();
    // Argon2 is slow by design: keep it off the async workers.
    let info = blocking(move || access.user_add(&req.name, req.password.as_deref())).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn user_remove(
    State(s): State<AccessState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.access.user_remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn passwd(
    State(s): State<AccessState>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: api::PasswordRequest = body(&b)?;
    let access = s.access.clone();
    blocking(move || access.set_password(&name, &req.password)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_grant(g: GrantInfo) -> Result<auth::Grant, ApiError> {
    let role: auth::Role = g
        .role
        .parse()
        .map_err(|e: auth::ParseError| ApiError(ErrorCode::InvalidArgument, e.to_string()))?;
    auth::Grant::new(role, g.vm.as_deref())
        .map_err(|e| ApiError(ErrorCode::InvalidArgument, e.to_string()))
}

async fn grant(
    State(s): State<AccessState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::UserInfo> {
    let g = parse_grant(body(&b)?)?;
    Ok(Json(s.access.grant(&name, &g)?))
}

async fn revoke(
    State(s): State<AccessState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::UserInfo> {
    let g = parse_grant(body(&b)?)?;
    Ok(Json(s.access.revoke(&name, &g)?))
}

async fn tokens(State(s): State<AccessState>) -> ApiResult<api::TokenList> {
    Ok(Json(api::TokenList {
        tokens: s.access.tokens()?,
    }))
}

async fn token_create(
    State(s): State<AccessState>,
    b: Bytes,
) -> Result<(StatusCode, Json<api::TokenCreated>), ApiError> {
    let req: api::CreateTokenRequest = body(&b)?;
    let t = s
        .access
        .token_create(&req.user, req.expires_secs, req.description)?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn token_revoke(
    State(s): State<AccessState>,
    Path(id): Path<String>,
) -> ApiResult<api::TokenInfo> {
    Ok(Json(s.access.token_revoke(&id)?))
}

async fn audit(
    State(s): State<AccessState>,
    Query(q): Query<api::AuditQuery>,
) -> ApiResult<api::AuditList> {
    Ok(Json(s.access.audit_list(&q)?))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> engine::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(ErrorCode::Internal, format!("password hashing failed: {e}")))?
        .map_err(ApiError::from)
}
