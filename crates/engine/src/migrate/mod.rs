//! Live migration between hv hosts (issue 12).
//!
//! The source hvd ([`source`]) drives it and asks the target hvd, through the [`Peer`] the
//! daemon implements over HTTPS, to check and prepare an incoming VM ([`incoming`]), to carry
//! QEMU's stream (a tunnel per channel, see [`tunnel`]), and to take the VM over or abort.
//! The engine stays HTTP-free: it sees the target only as a [`Peer`].
//!
//! Ownership: the source owns the VM until the target answers `finish`; if that answer is
//! lost, the source asks the target's session state (`committed` or not) before it decides.
//! A target that restarts with a half-received VM removes it at start; a session whose source
//! goes away (its tunnel closed before QEMU completed, or no finish in time) aborts itself.

pub mod checks;
pub(crate) mod copy;
pub(crate) mod disks;
mod incoming;
mod incoming_disks;
mod incoming_offline;
mod netstate;
pub(crate) mod offline;
mod offline_source;
pub(crate) mod placement;
mod source;
pub(crate) mod storage;
pub mod tunnel;
pub(crate) mod vmfiles;

use std::future::Future;
use std::pin::Pin;

use api::{IncomingReady, IncomingRequest, IncomingStatus, VmInfo};

pub(crate) use incoming::Sessions;

use crate::error::Result;
use crate::vm::Vm;

/// How long a tunnel of `channel` may stay silent both ways before it counts as a cut link.
/// The memory stream never rests; disk channels do: an NBD connection is quiet while an idle
/// guest's mirror is in sync, and a layer's sender waits while the target makes it durable.
pub fn tunnel_idle(channel: &str) -> std::time::Duration {
    if channel == api::migrate::channel::MEMORY {
        tunnel::IDLE
    } else {
        DISK_CHANNEL_IDLE
    }
}

/// The silence limit of disk channels (see [`tunnel_idle`]).
pub const DISK_CHANNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// A boxed future of a [`Peer`] call.
pub type PeerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A raw byte stream to one channel of the target.
pub trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Tunnel for T {}

/// What the source asks of the target hvd (the daemon implements it with hv's HTTPS client).
/// Errors the target answered come back as [`EngineError::Remote`](crate::EngineError::Remote)
/// with its code; a target that cannot be reached as `Host`.
pub trait Peer: Send + Sync {
    fn incoming(&self, req: &IncomingRequest) -> PeerFuture<'_, IncomingReady>;
    fn tunnel(&self, id: &str, channel: &str) -> PeerFuture<'_, Box<dyn Tunnel>>;
    fn finish(&self, id: &str) -> PeerFuture<'_, VmInfo>;
    fn status(&self, id: &str) -> PeerFuture<'_, IncomingStatus>;
    fn abort(&self, id: &str) -> PeerFuture<'_, ()>;
}

/// `-incoming defer` for a launch that receives a migration (see `VmRt::incoming`).
pub(crate) fn incoming_argv<A>(vm: &Vm, (mut argv, accel): (Vec<String>, A)) -> (Vec<String>, A) {
    if vm.lock().incoming {
        argv.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    (argv, accel)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
