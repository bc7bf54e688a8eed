//! A VM's screen and keyboard (issue 11): `GET .../screenshot` (a PNG), `POST .../keys` (key
//! combinations or text as keystrokes) and `POST .../media/boot` (boot from the CD-ROM).

use std::time::Duration;

use api::ErrorCode;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use engine::Engine;

use super::{body, op, ApiError, ApiResult};

pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/v1/vms/{name}/screenshot", get(screenshot))
        .route("/v1/vms/{name}/keys", post(keys))
        .route("/v1/vms/{name}/media/boot", post(media_boot))
}

/// `max_age_ms` from the query string; nothing else is taken.
fn max_age(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut age = Duration::ZERO;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "max_age_ms" {
            return Err(ApiError(
                ErrorCode::InvalidArgument,
                format!(
                    "unknown query parameter {:?}; the screenshot takes only max_age_ms",
                    k.chars().take(64).collect::<String>()
                ),
            ));
        }
        let ms: u64 = v.parse().map_err(|_| {
            ApiError(
                ErrorCode::InvalidArgument,
                format!(
                    "max_age_ms {:?} is not a number of milliseconds; use 0 to {}",
                    v.chars().take(64).collect::<String>(),
                    engine::MAX_SCREENSHOT_AGE.as_millis()
                ),
            )
        })?;
        age = Duration::from_millis(ms);
    }
    Ok(age)
}

/// `GET /v1/vms/{name}/screenshot[?max_age_ms=N]`: `image/png`.
async fn screenshot(
    State(e): State<Engine>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let age = max_age(q.as_deref())?;
    let png = e.screenshot(&name, age).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        png.as_ref().clone(),
    )
        .into_response())
}

/// `POST /v1/vms/{name}/keys`: only for a caller who holds control of the console, or when
/// nobody does.
async fn keys(
    State(e): State<Engine>,
    Extension(seats): Extension<engine::Seats>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::KeysSent> {
    let req: api::KeysRequest = body(&b)?;
    let user = crate::authz::current()
        .map(|c| c.principal.audit_name())
        .unwrap_or_default();
    e.info(&name)?;
    seats.may_type(&name, &user).map_err(|holder| {
        ApiError(
            ErrorCode::InvalidState,
            format!("control of the console of {name} is held by {holder}; ask them (request) or an admin can take it"),
        )
    })?;
    Ok(Json(
        op(&e, "send-keys", format!("vm/{name}"), move |e| async move {
            e.send_keys(&name, &req).await
        })
        .await?,
    ))
}

/// `POST /v1/vms/{name}/media/boot`: declared as `VmPowerMgmt` in `authz::RULES` (it resets
/// the VM); it changes the boot medium too, so the caller must also hold `VmMedia`, asked of
/// the same `decide` here.
async fn media_boot(
    State(e): State<Engine>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<api::VmInfo> {
    let _: api::MediaBootRequest = body(&b)?;
    if let Some(c) = crate::authz::current() {
        let vm = auth::Object::Vm(name.clone());
        // Refused like any other right (the guard audits the refusal).
        if !c.principal.may(auth::Action::VmMedia, &vm) {
            let msg = format!(
                "booting VM {name} from its medium needs the right {} too (an operator or admin grant on it)",
                auth::Action::VmMedia
            );
            return Err(ApiError(ErrorCode::Forbidden, msg));
        }
    }
    Ok(Json(
        op(
            &e,
            "media-boot",
            format!("vm/{name}"),
            move |e| async move { e.media_boot(&name).await },
        )
        .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_the_only_query_parameter() {
        assert_eq!(max_age(None).ok(), Some(Duration::ZERO));
        assert_eq!(
            max_age(Some("max_age_ms=1500")).ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["max_age_ms=-1", "max_age_ms=x", "other=1", "max_age_ms"] {
            let Err(e) = max_age(Some(bad)) else {
                panic!("{bad} accepted")
            };
            assert_eq!(e.0, ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
