//! The graphical console: `GET /v1/vms/{name}/vnc` is a WebSocket (subprotocol `binary`)
//! carrying RFB 3.8 with security type None, proxied to the VM's QEMU VNC socket, which only
//! hvd reaches. The client's stream passes `kvm::rfb::ClientFilter`: display messages pass,
//! input only from the holder of control, anything else closes the connection.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use kvm::rfb::ClientFilter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::consoles::{revoked, who, ConsoleState, Watch};
use super::ApiError;

/// The largest client frame: a ClientCutText of 1 MiB and its header.
const MAX_CLIENT_FRAME: usize = (kvm::rfb::CUT_TEXT_MAX as usize) + 64;

pub(crate) async fn vnc_ws(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let caller = crate::authz::current();
    let revocations = caller.as_ref().map(|c| c.revocations());
    // Checks that the peer is this VM's QEMU (its uid), not a socket a guest-controlled
    // QEMU put in its place.
    let qemu = s.engine.connect_vnc(&name).await?;
    Ok(ws
        .protocols(["binary"])
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| vnc_session(s, name, qemu, socket, caller.zip(revocations))))
}

fn close(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let mut r = reason.to_string();
    while r.len() > 123 {
        r.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: r.into(),
    }))
}

async fn vnc_session(
    s: ConsoleState,
    name: String,
    qemu: tokio::net::UnixStream,
    mut socket: WebSocket,
    mut watch: Watch,
) {
    let w = who(watch.as_ref().map(|(c, _)| c), &name);
    if let Some((caller, _)) = &watch {
        caller.audit_event("vnc attach", "ok");
    }
    let seat = s
        .seats
        .attach(&name, api::ConsoleKind::Vnc, w.may_input, w.actor.clone());
    let (mut from_qemu, mut to_qemu) = qemu.into_split();
    let mut filter = ClientFilter::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut ended = "ok";
    let bye = loop {
        tokio::select! {
            () = revoked(&mut watch) => {
                ended = "revoked";
                break close(1008, "your access was revoked");
            }
            n = from_qemu.read(&mut buf) => match n {
                Ok(0) | Err(_) => break close(1000, "the VM's display closed (the VM stopped?)"),
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        ended = "client gone";
                        break Message::Close(None);
                    }
                }
            },
            incoming = socket.recv() => {
                let data = match incoming {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(_))) => {
                        ended = "refused";
                        break close(1003, "RFB travels in binary frames");
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Message::Close(None),
                    Some(Ok(_)) => continue,
                };
                out.clear();
                // Input passes only for the holder (or one who may type while control is
                // free: their input takes it); the filter drops it whole for others.
                let may = seat.holds() || (w.may_input && seat.free());
                match filter.feed(&data, may, &mut out) {
                    Ok(fed) => {
                        if fed.input_passed > 0 {
                            seat.input();
                        }
                    }
                    Err(e) => {
                        if !out.is_empty() {
                            let _ = to_qemu.write_all(&out).await;
                        }
                        ended = "refused";
                        break close(1002, &e.to_string());
                    }
                }
                if !out.is_empty() && to_qemu.write_all(&out).await.is_err() {
                    break close(1000, "the VM's display closed (the VM stopped?)");
                }
            }
        }
    };
    drop(seat);
    if let Some((caller, _)) = &watch {
        caller.audit_event("vnc detach", ended);
    }
    let _ = socket.send(bye).await;
}
