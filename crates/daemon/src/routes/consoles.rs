//! Consoles and their shared control (issue 11): the serial console WebSocket, the control
//! state of one VM (`/v1/vms/{name}/control`) and of all (`/v1/consoles`). Who watches and
//! who holds control is `engine::Seats`; only the holder's input reaches the guest.

use api::{ConsoleKind, ControlAction, ControlRequest, ControlState, ErrorCode};
use auth::{Action, Object};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use engine::{Actor, Engine, EngineError, FeedItem, Seats};
use kvm::control::{ControlError, Request};
use tokio::sync::broadcast;

use super::{body, with_skip_marker, ApiError};
use crate::authz::Caller;

/// What the console routes need.
#[derive(Clone)]
pub struct ConsoleState {
    pub engine: Engine,
    pub seats: Seats,
}

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/v1/vms/{name}/console", get(console_ws))
        .route("/v1/vms/{name}/control", get(control).post(control_act))
        .route("/v1/vms/{name}/vnc", get(super::vnc::vnc_ws))
        .route("/v1/consoles", get(consoles))
        .with_state(state)
}

/// The caller as control names them, and what they may do on `vm`.
pub(crate) struct Who {
    pub actor: Actor,
    pub may_input: bool,
    pub admin: bool,
}

pub(crate) fn who(caller: Option<&Caller>, vm: &str) -> Who {
    let object = Object::Vm(vm.to_string());
    match caller {
        Some(c) => Who {
            actor: Actor {
                user: c.principal.audit_name(),
                source: c.principal.source.clone(),
            },
            may_input: c.principal.may(Action::VmConsoleInput, &object),
            // An admin of the VM may take control from anyone.
            admin: c.principal.may(Action::VmConfig, &object),
        },
        // Outside the guard (never for routes): nobody.
        None => Who {
            actor: Actor {
                user: "(nobody)".into(),
                source: "hvd".into(),
            },
            may_input: false,
            admin: false,
        },
    }
}

fn view(seats: &Seats, vm: &str, w: &Who) -> ControlState {
    seats.view(vm, &w.actor.user, w.may_input, w.admin)
}

/// `GET /v1/vms/{name}/control`
async fn control(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
) -> Result<Json<ControlState>, ApiError> {
    s.engine.info(&name)?;
    let caller = crate::authz::current();
    Ok(Json(view(&s.seats, &name, &who(caller.as_ref(), &name))))
}

/// `POST /v1/vms/{name}/control`: take, request, release, give.
async fn control_act(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<Json<ControlState>, ApiError> {
    let req: ControlRequest = body(&b)?;
    s.engine.info(&name)?;
    let caller = crate::authz::current();
    let w = who(caller.as_ref(), &name);
    let request = match (req.action, req.to) {
        (ControlAction::Give, Some(to)) => Request::Give {
            to: check_user(&to)?,
        },
        (ControlAction::Give, None) => {
            return Err(ApiError(
                ErrorCode::InvalidArgument,
                "give needs \"to\": the user to give control to (one who watches the console)"
                    .into(),
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError(
                ErrorCode::InvalidArgument,
                "\"to\" is for give only; leave it out".into(),
            ))
        }
        (ControlAction::Take, None) => Request::Take,
        (ControlAction::Request, None) => Request::Request,
        (ControlAction::Release, None) => Request::Release,
    };
    s.seats
        .act(&name, &w.actor, w.may_input, w.admin, &request)
        .map_err(|e| control_error(&name, e))?;
    Ok(Json(view(&s.seats, &name, &w)))
}

/// A user name in a request: what control could name (printable, bounded).
fn check_user(u: &str) -> Result<String, ApiError> {
    let ok = !u.is_empty() && u.len() <= 128 && u.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(u.to_string())
    } else {
        Err(ApiError(
            ErrorCode::InvalidArgument,
            "\"to\" must be a user name (1 to 128 printable ASCII characters, as GET .../control lists watchers)".into(),
        ))
    }
}

pub(crate) fn control_error(vm: &str, e: ControlError) -> ApiError {
    let code = match &e {
        ControlError::HeldBy { .. } | ControlError::NoInputRight { .. } => ErrorCode::Forbidden,
        ControlError::NotHolder { .. } | ControlError::NotHeld => ErrorCode::InvalidState,
        ControlError::NotWatching { .. } | ControlError::CannotInput { .. } => {
            ErrorCode::InvalidArgument
        }
        ControlError::TooManyRequests(_) => ErrorCode::Busy,
    };
    let msg = match e {
        ControlError::HeldBy { holder } => format!(
            "control of the console of {vm} is held by {holder}; ask them (request) or an admin can take it"
        ),
        e => format!("console of {vm}: {e}"),
    };
    ApiError(code, msg)
}

/// `GET /v1/consoles`: the control state of every VM the caller may see.
async fn consoles(State(s): State<ConsoleState>) -> Json<Vec<ControlState>> {
    let caller = crate::authz::current();
    let out = s
        .engine
        .list()
        .into_iter()
        .filter(|vm| caller.as_ref().is_some_and(|c| c.sees(&vm.name)))
        .map(|vm| view(&s.seats, &vm.name, &who(caller.as_ref(), &vm.name)))
        .collect();
    Json(out)
}

/// The serial console as a WebSocket: binary frames both ways, any number of clients. Everyone
/// who may watch sees the output; input reaches the guest only from the holder of control (a
/// caller who may type takes free control when they connect).
/// `?history=true`: the session starts with the console's recent output (at most
/// [`HISTORY_MAX`] bytes of it), taken atomically with the subscription, so nothing is shown
/// twice or lost in between; the browser's serial tab uses it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleWsQuery {
    #[serde(default)]
    history: bool,
}

/// The most recent console output a `?history=true` session starts with.
const HISTORY_MAX: usize = 64 << 10;

async fn console_ws(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ConsoleWsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let hub = s.engine.console(&name)?;
    // A frame larger than the whole input queue could never be taken: refuse it at the door.
    // The session lasts beyond this request: it ends when the caller's token or rights go.
    let caller = crate::authz::current();
    let revocations = caller.as_ref().map(|c| c.revocations());
    Ok(ws
        .max_message_size(engine::CONSOLE_INPUT_CAP)
        .on_upgrade(move |socket| {
            console_session(s, name, hub, q.history, socket, caller.zip(revocations))
        }))
}

/// A caller whose access a revocation can end, with the revocations to watch.
pub(crate) type Watch = Option<(Caller, broadcast::Receiver<engine::Revocation>)>;

/// The next revocation that ends `caller`'s access; never, without a caller.
pub(crate) async fn revoked(watch: &mut Watch) {
    let Some((caller, rx)) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(r) if caller.revoked_by(&r) => return,
            Ok(_) => {}
            // Missed some: end the session rather than risk missing this caller's.
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

async fn console_session(
    s: ConsoleState,
    name: String,
    hub: std::sync::Arc<engine::ConsoleHub>,
    history: bool,
    mut socket: WebSocket,
    mut watch: Watch,
) {
    let (snap, mut feed) = hub.subscribe_feed();
    if history && !snap.is_empty() {
        let recent = &snap[snap.len().saturating_sub(HISTORY_MAX)..];
        if socket
            .send(Message::Binary(recent.to_vec().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let w = who(watch.as_ref().map(|(c, _)| c), &name);
    if let Some((caller, _)) = &watch {
        caller.audit_event("console attach", "ok");
    }
    let seat = s
        .seats
        .attach(&name, ConsoleKind::Serial, w.may_input, w.actor.clone());
    // Tell a caller once (until their input passes again) that it is dropped.
    let mut told = false;
    let mut ended = "ok";
    loop {
        tokio::select! {
            () = revoked(&mut watch) => {
                let _ = socket
                    .send(Message::Text(
                        "\r\n[hv: your access was revoked; console closed]\r\n".into(),
                    ))
                    .await;
                ended = "revoked";
                break;
            }
            item = feed.recv() => match item {
                FeedItem::Data { skipped, data } => {
                    if socket.send(Message::Binary(with_skip_marker(skipped, &data))).await.is_err() {
                        break;
                    }
                }
                FeedItem::Reset => {}
                FeedItem::Closed => {
                    let _ = socket.send(Message::Text("\r\n[hv: the VM stopped; console closed]\r\n".into())).await;
                    break;
                }
            },
            incoming = socket.recv() => {
                let data = match incoming {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                if !seat.input() {
                    if !told {
                        told = true;
                        let view = s.seats.view(&name, &w.actor.user, w.may_input, w.admin);
                        let note = match view.holder {
                            Some(h) => format!("\r\n[hv: input dropped: control of the console of {name} is held by {h}; ask them (hv control {name} request)]\r\n"),
                            None if w.may_input => format!("\r\n[hv: input dropped: you do not hold control of the console of {name}; take it (hv control {name} take)]\r\n"),
                            None => format!("\r\n[hv: input dropped: you may only watch the console of {name}]\r\n"),
                        };
                        if socket.send(Message::Text(note.into())).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                told = false;
                if !console_input(&s.engine, &name, data, &mut socket).await {
                    break;
                }
            }
        }
    }
    drop(seat);
    if let Some((caller, _)) = &watch {
        caller.audit_event("console detach", ended);
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Passes input on; input the bounded queue refuses is dropped and the client told so.
/// False when the session should end.
async fn console_input(e: &Engine, name: &str, data: Vec<u8>, socket: &mut WebSocket) -> bool {
    match e.console_input(name, data) {
        Ok(()) => true,
        Err(EngineError::Busy { .. }) => {
            let note = format!(
                "\r\n[hv: console input dropped: {} bytes already wait for the guest to read them]\r\n",
                engine::CONSOLE_INPUT_CAP
            );
            socket.send(Message::Text(note.into())).await.is_ok()
        }
        Err(_) => false,
    }
}
