//! `GET /v1/events`: the event log (`engine::EventLog`) as NDJSON (one `Event` per line, the
//! default) or as Server-Sent Events (`Accept: text/event-stream`, with `id:` lines so a
//! browser's `Last-Event-ID` resumes it). `since=ID` (or `Last-Event-ID`) replays the retained
//! events after ID first; when some are no longer retained the first record is
//! `{"event":"gap","oldest":N}`. Each event reaches only callers allowed to see its object;
//! the stream ends when the caller's token, session or user is revoked.

use std::collections::BTreeSet;

use api::{ErrorCode, Event, EventKind, EventsQuery};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use engine::{Engine, Follower};

use super::consoles::{revoked, Watch};
use super::ApiError;
use crate::authz::Caller;

pub fn routes() -> Router<Engine> {
    Router::new().route(api::paths::EVENTS, get(events))
}

/// Which events a follower wants.
struct Filter {
    types: Option<BTreeSet<&'static str>>,
    vm: Option<String>,
}

impl Filter {
    fn parse(q: &EventsQuery) -> Result<Filter, ApiError> {
        let types = match &q.types {
            None => None,
            Some(list) => {
                let mut set = BTreeSet::new();
                for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let Some(name) = EventKind::NAMES.iter().find(|n| **n == t) else {
                        return Err(ApiError(
                            ErrorCode::InvalidArgument,
                            format!(
                                "unknown event type {:?}; the types are {}",
                                t.chars().take(64).collect::<String>(),
                                EventKind::NAMES.join(", ")
                            ),
                        ));
                    };
                    set.insert(*name);
                }
                Some(set)
            }
        };
        Ok(Filter {
            types,
            vm: q.vm.clone().filter(|v| !v.is_empty()),
        })
    }

    fn wants(&self, ev: &Event) -> bool {
        // A gap concerns every filter: the caller cannot know what it missed.
        if matches!(ev.kind, EventKind::Gap { .. }) {
            return true;
        }
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(ev.kind.name()))
            && self.vm.as_ref().is_none_or(|v| *v == ev.vm)
    }
}

/// Whether `caller` may see `ev`: VM events by VM.Audit on the VM, network events by
/// Network.Audit, pool and volume events by Storage.Audit, audit records by Audit.Read,
/// operations by their target.
fn visible(caller: Option<&Caller>, ev: &Event) -> bool {
    use auth::{Action, Object};
    let Some(c) = caller else { return false };
    if matches!(ev.kind, EventKind::Gap { .. }) {
        return true;
    }
    let object = ev.object();
    let (class, rest) = object.split_once('/').unwrap_or((object.as_str(), ""));
    let action = match class {
        "vm" => return c.sees(rest),
        "network" => Action::NetworkAudit,
        "pool" | "volume" => Action::StorageAudit,
        "audit" => Action::AuditRead,
        _ => Action::HostAudit,
    };
    c.principal.may(action, &Object::Global)
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Ndjson,
    Sse,
}

fn since_of(q: &EventsQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if q.since.is_some() {
        return Ok(q.since);
    }
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError(
                    ErrorCode::InvalidArgument,
                    "Last-Event-ID must be an event id (a whole number) from this stream".into(),
                )
            }),
    }
}

async fn events(
    State(e): State<Engine>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| {
        ApiError(
            ErrorCode::InvalidArgument,
            format!(
                "{}; GET /v1/events takes since (an event id), type (kinds, comma-separated) and vm",
                r.body_text()
            ),
        )
    })?;
    let filter = Filter::parse(&q)?;
    let since = since_of(&q, &headers)?;
    let format = if headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"))
    {
        Format::Sse
    } else {
        Format::Ndjson
    };
    let caller = crate::authz::current();
    let revocations = caller.as_ref().map(|c| c.revocations());
    let watch: Watch = caller.clone().zip(revocations);
    let follower = e.events().follow(since);
    struct St {
        follower: Follower,
        caller: Option<Caller>,
        filter: Filter,
        watch: Watch,
        format: Format,
    }
    let st = St {
        follower,
        caller,
        filter,
        watch,
        format,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            let ev = tokio::select! {
                ev = st.follower.next() => ev?,
                _ = revoked(&mut st.watch) => return None,
            };
            if !st.filter.wants(&ev) || !visible(st.caller.as_ref(), &ev) {
                continue;
            }
            let bytes = encode(&ev, st.format);
            return Some((Ok::<Bytes, std::io::Error>(bytes), st));
        }
    });
    let content_type = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// One record: an NDJSON line, or an SSE message (`id:` unless a gap, `event:` the kind).
fn encode(ev: &Event, format: Format) -> Bytes {
    // An Event always serializes (plain data, string keys).
    let json = serde_json::to_string(ev).unwrap_or_default();
    match format {
        Format::Ndjson => Bytes::from(json + "\n"),
        Format::Sse => {
            let mut s = String::with_capacity(json.len() + 48);
            if ev.id != 0 {
                s.push_str(&format!("id: {}\n", ev.id));
            }
            s.push_str(&format!("event: {}\ndata: {json}\n\n", ev.kind.name()));
            Bytes::from(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_records_carry_the_id_and_kind() {
        let ev = Event {
            id: 42,
            time_ms: 1,
            vm: "a".into(),
            kind: EventKind::Reset,
        };
        let s = String::from_utf8(encode(&ev, Format::Sse).to_vec()).unwrap();
        assert_eq!(
            s,
            "id: 42\nevent: reset\ndata: {\"id\":42,\"time_ms\":1,\"vm\":\"a\",\"event\":\"reset\"}\n\n"
        );
        let gap = Event {
            id: 0,
            time_ms: 1,
            vm: String::new(),
            kind: EventKind::Gap { oldest: 9 },
        };
        let s = String::from_utf8(encode(&gap, Format::Sse).to_vec()).unwrap();
        assert!(s.starts_with("event: gap\n"), "{s}");
    }

    #[test]
    fn filters_take_known_types_only() {
        let q = EventsQuery {
            since: None,
            types: Some("state-changed, operation".into()),
            vm: Some("a".into()),
        };
        let f = Filter::parse(&q).map_err(|e| e.1).unwrap();
        let ev = |vm: &str, kind| Event {
            id: 1,
            time_ms: 1,
            vm: vm.into(),
            kind,
        };
        assert!(!f.wants(&ev("a", EventKind::Reset)));
        assert!(f.wants(&ev(
            "a",
            EventKind::StateChanged {
                state: model::VmState::Running,
                reason: None
            }
        )));
        assert!(!f.wants(&ev(
            "b",
            EventKind::StateChanged {
                state: model::VmState::Running,
                reason: None
            }
        )));
        let bad = EventsQuery {
            types: Some("state".into()),
            ..Default::default()
        };
        let err = Filter::parse(&bad).err().unwrap();
        assert!(err.1.contains("unknown event type \"state\""), "{}", err.1);
    }
}
