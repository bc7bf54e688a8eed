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
    pub logins: Arc<Logins>,
}

/// How long a login's token lasts.
const LOGIN_TOKEN_SECS: u64 = 12 * 3600;

/// Failed logins per user name and per source address (in memory: a restart forgives).
#[derive(Default)]
pub struct Logins {
    keys: std::sync::Mutex<std::collections::HashMap<String, auth::Backoff>>,
}

/// Entries kept before old, forgiven ones are dropped.
const LOGIN_KEYS: usize = 10_000;

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, auth::Backoff>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the caller must wait before this attempt is checked (0: not at all).
    fn wait_ms(&self, keys: &[String], now: u64) -> u64 {
        let g = self.lock();
        keys.iter()
            .filter_map(|k| g.get(k))
            .map(|b| b.wait_ms(now))
            .max()
            .unwrap_or(0)
    }

    fn fail(&self, keys: &[String], now: u64) {
        let mut g = self.lock();
        if g.len() > LOGIN_KEYS {
            g.retain(|_, b| now.saturating_sub(b.last_failure_ms) < auth::Backoff::MAX_MS);
        }
        for k in keys {
            g.entry(k.clone()).or_default().fail(now);
        }
    }

    fn succeed(&self, keys: &[String]) {
        let mut g = self.lock();
        for k in keys {
            g.remove(k);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(state: AccessState) -> Router {
    Router::new()
        .route("/v1/host/cert", get(host_cert))
        .route("/v1/login", post(login))
        .route("/v1/session", post(session_create).delete(session_delete))
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

/// Checks a login attempt, with a backoff per user and per source address after repeated
/// failures. Every attempt is audited (never the password). Answers the caller's source.
async fn check_login(
    s: &AccessState,
    peer: &crate::authz::Peer,
    req: &api::LoginRequest,
) -> Result<String, ApiError> {
    let (source, source_key) = match peer {
        crate::authz::Peer::Tls { addr } => (addr.to_string(), format!("ip:{}", addr.ip())),
        crate::authz::Peer::Unix { uid, .. } => ("unix".to_string(), format!("uid:{uid}")),
    };
    let keys = [format!("user:{}", req.user), source_key];
    let audit = |result: &str| {
        let entry = engine::AuditEntry {
            principal: req.user.clone(),
            source: source.clone(),
            object: format!("user/{}", req.user),
            action: "Login".into(),
            result: result.into(),
            operation_id: None,
        };
        if let Err(e) = s.access.audit(&entry) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    };
    let now = now_ms();
    let wait = s.logins.wait_ms(&keys, now);
    if wait > 0 {
        audit(ErrorCode::TooManyAttempts.as_str());
        return Err(ApiError(
            ErrorCode::TooManyAttempts,
            format!(
                "too many failed logins for this user or from this address; try again in {} s",
                wait.div_ceil(1000)
            ),
        ));
    }
    let access = s.access.clone();
    let (user, password) = (req.user.clone(), req.password.clone());
    let ok = blocking(move || access.check_password(&user, &password)).await?;
    if !ok {
        s.logins.fail(&keys, now_ms());
        audit(ErrorCode::Unauthenticated.as_str());
        return Err(ApiError(
            ErrorCode::Unauthenticated,
            "wrong user name or password".into(),
        ));
    }
    s.logins.succeed(&keys);
    audit("ok");
    Ok(source)
}

/// Trades a user name and password for a token (for scripts and the remote CLI).
async fn login(
    State(s): State<AccessState>,
    axum::Extension(peer): axum::Extension<crate::authz::Peer>,
    b: Bytes,
) -> Result<Json<api::TokenCreated>, ApiError> {
    let req: api::LoginRequest = body(&b)?;
    let source = check_login(&s, &peer, &req).await?;
    Ok(Json(s.access.token_create(
        &req.user,
        Some(LOGIN_TOKEN_SECS),
        Some(format!("login from {source}")),
    )?))
}

/// A browser login: the token goes into an HttpOnly cookie, the answer holds its CSRF value.
async fn session_create(
    State(s): State<AccessState>,
    axum::Extension(peer): axum::Extension<crate::authz::Peer>,
    b: Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let req: api::LoginRequest = body(&b)?;
    let source = check_login(&s, &peer, &req).await?;
    let t = s.access.token_create(
        &req.user,
        Some(LOGIN_TOKEN_SECS),
        Some(format!("browser session from {source}")),
    )?;
    let cookie = format!(
        "{}={}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={LOGIN_TOKEN_SECS}",
        crate::authz::SESSION_COOKIE,
        t.token
    );
    let info = api::SessionInfo {
        user: t.info.user,
        csrf: crate::authz::csrf_of(&t.token),
        expires_ms: t.info.expires_ms.unwrap_or(0),
    };
    Ok(([(axum::http::header::SET_COOKIE, cookie)], Json(info)).into_response())
}

/// Logs out: revokes the session's (or the bearer token's) token and clears the cookie.
async fn session_delete(
    State(s): State<AccessState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Some(id) = crate::authz::current().and_then(|c| c.token_id) else {
        return Err(ApiError(
            ErrorCode::InvalidArgument,
            "this caller has no session or token to end".into(),
        ));
    };
    s.access.token_revoke(&id)?;
    let clear = format!(
        "{}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        crate::authz::SESSION_COOKIE
    );
    Ok((
        [(axum::http::header::SET_COOKIE, clear)],
        StatusCode::NO_CONTENT,
    )
        .into_response())
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
