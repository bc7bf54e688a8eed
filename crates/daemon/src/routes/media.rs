//! A VM's virtual media (issue 11), scoped to the VM: `GET .../media/choices` (the pool
//! volumes that can go into its drive, and the pools an upload may go to) and
//! `PUT .../media/upload?pool=P&volume=NAME[&insert=true]` (a new medium streamed into a new
//! raw volume). Both need only `VmMedia` on that VM, so an operator granted on some VMs can
//! use media without the global storage rights; they never show host paths or other VMs.
//!
//! An upload is durable before it is reported and never replaces a volume; a body that ends
//! early, stalls or fails leaves no volume and no temp file behind.

use std::collections::HashMap;
use std::time::Duration;

use api::ErrorCode;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::routing::{get, put};
use axum::{Json, Router};
use engine::{Engine, Upload};
use futures_util::StreamExt;

use super::{op, ApiError, ApiResult};

/// A body that moves no byte for this long fails (and leaves nothing behind).
const STALL: Duration = Duration::from_secs(60);

pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/v1/vms/{name}/media/choices", get(choices))
        .route("/v1/vms/{name}/media/upload", put(upload))
}

/// `GET /v1/vms/{name}/media/choices`.
async fn choices(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<api::MediaChoices> {
    Ok(Json(e.media_choices(&name).await?))
}

/// The upload's query: `pool`, `volume`, optional `insert` (`true`/`false`); nothing else.
#[derive(Debug, PartialEq)]
struct UploadQuery {
    pool: String,
    volume: String,
    insert: bool,
}

fn upload_query(q: &HashMap<String, String>) -> Result<UploadQuery, ApiError> {
    let bad = |m: String| ApiError(ErrorCode::InvalidArgument, m);
    if let Some(k) = q
        .keys()
        .find(|k| !["pool", "volume", "insert"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown query parameter {:?}; a medium upload takes pool, volume and insert",
            k.chars().take(64).collect::<String>()
        )));
    }
    let need = |k: &str| {
        q.get(k).cloned().ok_or_else(|| {
            bad(format!(
                "a medium upload needs ?pool=POOL&volume=NAME.iso (missing {k})"
            ))
        })
    };
    let insert = match q.get("insert").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => {
            return Err(bad(format!(
                "insert={:?}: use insert=true or insert=false",
                v.chars().take(64).collect::<String>()
            )))
        }
    };
    Ok(UploadQuery {
        pool: need("pool")?,
        volume: need("volume")?,
        insert,
    })
}

/// `PUT /v1/vms/{name}/media/upload?pool=P&volume=NAME[&insert=true]`: the body (exactly
/// Content-Length bytes) becomes the new raw volume `P/NAME`.
async fn upload(
    State(e): State<Engine>,
    Path(name): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    req: Request,
) -> ApiResult<api::MediumInfo> {
    let Query(q) = q.map_err(|err| {
        ApiError(
            ErrorCode::InvalidArgument,
            format!("bad query string: {err}; use ?pool=POOL&volume=NAME.iso"),
        )
    })?;
    let q = upload_query(&q)?;
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError(
                ErrorCode::InvalidArgument,
                "a medium upload needs a Content-Length header (its size in bytes); chunked bodies are not taken".into(),
            )
        })?;
    let up = e
        .medium_upload_begin(&name, &q.pool, &q.volume, len, q.insert)
        .await?;
    let up = receive(up, req, len, &q).await?;
    let (pool, volume, insert) = (q.pool, q.volume, q.insert);
    Ok(Json(
        op(
            &e,
            "media-upload",
            format!("vm/{name}"),
            move |e| async move {
                e.medium_upload_commit(&name, &pool, &volume, up, insert)
                    .await
            },
        )
        .await?,
    ))
}

/// Writes the body into the upload on a blocking thread; only a whole body (exactly `len`
/// bytes) comes back. Any other outcome drops the upload, which removes its temp file.
async fn receive(
    mut up: Upload,
    req: Request,
    len: u64,
    q: &UploadQuery,
) -> Result<Upload, ApiError> {
    let what = format!("the upload of {}/{}", q.pool, q.volume);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            up.write_all(&chunk)?;
        }
        Ok::<Upload, std::io::Error>(up)
    });
    let mut stream = req.into_body().into_data_stream();
    let mut got: u64 = 0;
    let outcome = loop {
        let chunk = match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => {
                break Err(format!(
                    "{what} stalled: no byte for {} s after {got} of {len} bytes; nothing was kept",
                    STALL.as_secs()
                ))
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(err))) => {
                break Err(format!(
                    "{what} was interrupted after {got} of {len} bytes ({err}); nothing was kept"
                ))
            }
            Ok(Some(Ok(c))) => c,
        };
        got += chunk.len() as u64;
        if got > len {
            break Err(format!(
                "{what} sent more than its Content-Length of {len} bytes; nothing was kept"
            ));
        }
        if tx.send(chunk).await.is_err() {
            // The writer failed; its error is below.
            break Ok(());
        }
    };
    drop(tx);
    let up = writer
        .await
        .map_err(|err| ApiError(ErrorCode::Internal, format!("upload writer: {err}")))?
        .map_err(|err| {
            ApiError(
                ErrorCode::HostError,
                format!("{what}: write: {err}; nothing was kept"),
            )
        })?;
    if let Err(m) = outcome {
        return Err(ApiError(ErrorCode::InvalidArgument, m));
    }
    if up.written() != len {
        return Err(ApiError(
            ErrorCode::InvalidArgument,
            format!(
                "{what} ended after {} of {len} bytes; nothing was kept",
                up.written()
            ),
        ));
    }
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn upload_query_takes_pool_volume_and_insert() {
        let got = upload_query(&q(&[
            ("pool", "p"),
            ("volume", "x.iso"),
            ("insert", "true"),
        ]));
        assert_eq!(
            got.ok(),
            Some(UploadQuery {
                pool: "p".into(),
                volume: "x.iso".into(),
                insert: true
            })
        );
        for (bad, part) in [
            (q(&[("volume", "x.iso")]), "missing pool"),
            (q(&[("pool", "p")]), "missing volume"),
            (
                q(&[("pool", "p"), ("volume", "x.iso"), ("insert", "maybe")]),
                "insert=",
            ),
            (
                q(&[("pool", "p"), ("volume", "x.iso"), ("force", "1")]),
                "unknown query",
            ),
        ] {
            let Err(e) = upload_query(&bad) else {
                panic!("{bad:?} accepted")
            };
            assert_eq!(e.0, ErrorCode::InvalidArgument);
            assert!(e.1.contains(part), "{}", e.1);
        }
    }
}
