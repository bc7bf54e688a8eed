//! One VM as the engine holds it: the spec, observed state and runtime handles, the operation
//! marker that serializes user operations, the state watch and the console hub.

use std::sync::{Arc, Mutex, MutexGuard};

use api::VncInfo;
use host_exec::PidFd;
use model::{VmSpec, VmState};
use qmp::Qmp;
use tokio::sync::watch;

use crate::console::ConsoleHub;
use crate::error::{EngineError, Result};
use crate::store::RuntimeRecord;

pub(crate) struct VmRt {
    pub spec: VmSpec,
    pub state: VmState,
    pub rec: RuntimeRecord,
    pub qmp: Option<Arc<Qmp>>,
    pub pidfd: Option<Arc<PidFd>>,
    pub vnc: Option<VncInfo>,
    /// hv itself asked QEMU to go away (destroy): its exit is not a crash.
    pub stopping: bool,
    /// The next launch waits for a migration stream (`-incoming defer`, `migrate/incoming.rs`).
    pub incoming: bool,
}

pub(crate) struct Vm {
    pub id: i64,
    pub name: String,
    st: Mutex<VmRt>,
    op: Mutex<Option<&'static str>>,
    pub state_tx: watch::Sender<VmState>,
    pub console: Arc<ConsoleHub>,
    /// Every QMP event of the running QEMU, for operations that wait on one; created on first
    /// subscription so an idle VM costs no channel.
    qmp_events: Mutex<Option<tokio::sync::broadcast::Sender<qmp::QmpEvent>>>,
    /// The last screenshot; held while one is taken, so concurrent requests share it (see
    /// `display.rs`). Never held with `st`.
    pub screen: tokio::sync::Mutex<Option<crate::display::Shot>>,
    /// Held while keys are sent, so two requests' keystrokes do not interleave.
    pub keys: tokio::sync::Mutex<()>,
}

/// Marks an operation in progress on a VM; dropping it ends the operation.
pub(crate) struct OpGuard<'a>(&'a Mutex<Option<&'static str>>);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Vm {
    pub fn new(id: i64, spec: VmSpec, rec: RuntimeRecord) -> Vm {
        let state = if rec.crash.is_some() {
            VmState::Crashed
        } else {
            VmState::Shutoff
        };
        Vm {
            id,
            name: spec.name.to_string(),
            st: Mutex::new(VmRt {
                spec,
                state,
                rec,
                qmp: None,
                pidfd: None,
                vnc: None,
                stopping: false,
                incoming: false,
            }),
            op: Mutex::new(None),
            state_tx: watch::channel(state).0,
            console: Arc::new(ConsoleHub::default()),
            qmp_events: Mutex::new(None),
            screen: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, VmRt> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> VmState {
        self.lock().state
    }

    /// Starts an operation, or says which one is already running.
    pub fn begin(&self, op: &'static str) -> Result<OpGuard<'_>> {
        let mut cur = self.op.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = *cur {
            return Err(EngineError::Busy {
                vm: self.name.clone(),
                op: other,
            });
        }
        *cur = Some(op);
        Ok(OpGuard(&self.op))
    }

    /// Marks an operation that outlives any one call (an incoming migration): like
    /// [`begin`](Self::begin), ended by [`release`](Self::release).
    pub fn hold(&self, op: &'static str) -> Result<()> {
        std::mem::forget(self.begin(op)?);
        Ok(())
    }

    /// Ends the operation [`hold`](Self::hold) marked.
    pub fn release(&self) {
        *self.op.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// QMP events from now on. The stream ends when QEMU ends (at once when it is not running).
    pub fn subscribe_qmp_events(&self) -> tokio::sync::broadcast::Receiver<qmp::QmpEvent> {
        let mut g = self.qmp_events.lock().unwrap_or_else(|p| p.into_inner());
        if self.lock().qmp.is_none() {
            // No QEMU to hear from: a receiver whose sender is already gone.
            return tokio::sync::broadcast::channel(1).0.subscribe();
        }
        g.get_or_insert_with(|| tokio::sync::broadcast::channel(64).0)
            .subscribe()
    }

    /// Ends every QMP event stream: QEMU is gone (called after `qmp` was cleared).
    pub fn close_qmp_events(&self) {
        self.qmp_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Waits up to `timeout` for an event on `events` (subscribed before the command that
    /// causes it) that `matches`; false on timeout, an error as soon as QEMU ends (the event
    /// will never come).
    pub async fn wait_qmp_event(
        events: &mut tokio::sync::broadcast::Receiver<qmp::QmpEvent>,
        timeout: std::time::Duration,
        matches: impl Fn(&qmp::QmpEvent) -> bool,
    ) -> Result<bool> {
        use tokio::sync::broadcast::error::RecvError;
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match events.recv().await {
                    Ok(ev) if matches(&ev) => return Ok(()),
                    Ok(_) => {}
                    // Events were dropped while we were slow; the one we wait for may still come.
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "QMP event wait fell behind")
                    }
                    Err(RecvError::Closed) => {
                        return Err(EngineError::Qemu(
                            "QEMU ended before the operation finished (destroyed or crashed); \
                             check the VM with hv info and try again once it runs"
                                .into(),
                        ))
                    }
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Hands a QMP event to whoever subscribed.
    pub fn publish_qmp_event(&self, ev: &qmp::QmpEvent) {
        let g = self.qmp_events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = g.as_ref().filter(|tx| tx.receiver_count() > 0) {
            let _ = tx.send(ev.clone());
        }
    }

    pub fn qmp(&self) -> Result<Arc<Qmp>> {
        self.lock()
            .qmp
            .clone()
            .ok_or_else(|| EngineError::Qemu(format!("VM {:?} has no QMP connection", self.name)))
    }
}
