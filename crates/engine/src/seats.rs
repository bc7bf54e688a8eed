//! Consoles as a subject of their own: who watches each VM's consoles (VNC and serial), who
//! holds control, who asked (the rules are `kvm::control`). Owns its state and its lock (never
//! held across an await), publishes every change as an `EventKind::Control` event, appends it
//! to the audit log, and releases control from an idle holder on a timer of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{ConsoleKind, ControlState, ControlWatcher, ControlYou, Event, EventKind};
use kvm::control::{Asker, Change, ConnKind, ControlError, Request, Seat, Watcher};
use tokio::sync::Notify;

use crate::access::{Access, AuditEntry};
use crate::{now_ms, Engine};

/// The default `hvd --console-idle`: 15 minutes.
pub const DEFAULT_CONSOLE_IDLE: Duration = Duration::from_secs(900);

/// Who makes a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// How control names them (`Principal::audit_name`).
    pub user: String,
    /// Where they came from (`unix` or the peer's address).
    pub source: String,
}

/// The consoles of all VMs. Cheap to clone.
#[derive(Clone)]
pub struct Seats {
    inner: Arc<Inner>,
}

struct Inner {
    seats: Mutex<HashMap<String, Seat>>,
    idle: Duration,
    next_id: AtomicU64,
    events: crate::EventLog,
    access: Arc<Access>,
    /// Wakes the idle timer when a deadline may have moved earlier.
    rearm: Notify,
}

/// One open console connection; closing it (drop) detaches it.
pub struct Seated {
    seats: Seats,
    vm: String,
    id: u64,
    actor: Actor,
    may_input: bool,
}

impl Seats {
    /// The consoles of `engine`'s VMs; changes are audited in `access`. Starts the idle timer
    /// (needs a Tokio runtime).
    pub fn new(engine: &Engine, access: Arc<Access>, idle: Duration) -> Seats {
        let seats = Seats {
            inner: Arc::new(Inner {
                seats: Mutex::new(HashMap::new()),
                idle: idle.max(Duration::from_secs(1)),
                next_id: AtomicU64::new(1),
                events: engine.inner.events.clone(),
                access,
                rearm: Notify::new(),
            }),
        };
        // The timer lives as long as the runtime (hvd's life).
        let timer = seats.clone();
        tokio::spawn(async move {
            loop {
                let wait = timer
                    .release_idle()
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                    .unwrap_or(timer.inner.idle);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = timer.inner.rearm.notified() => {}
                }
            }
        });
        seats
    }

    /// How long control lasts without input from its holder.
    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seat>> {
        self.inner.seats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A console connection of `actor` to `vm` opened. A user who `may_input` takes control
    /// when nobody holds it. Dropping the answer closes it.
    pub fn attach(&self, vm: &str, kind: ConsoleKind, may_input: bool, actor: Actor) -> Seated {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let watcher = Watcher {
            id,
            user: actor.user.clone(),
            kind: match kind {
                ConsoleKind::Vnc => ConnKind::Vnc,
                ConsoleKind::Serial => ConnKind::Serial,
            },
            since_ms: now_ms(),
            may_input,
        };
        self.change(vm, &actor, |s| Ok(s.attach(watcher, now_ms())))
            .unwrap_or_default();
        Seated {
            seats: self.clone(),
            vm: vm.to_string(),
            id,
            actor,
            may_input,
        }
    }

    /// A user's request. Nothing changes on an error.
    pub fn act(
        &self,
        vm: &str,
        actor: &Actor,
        may_input: bool,
        admin: bool,
        req: &Request,
    ) -> Result<(), ControlError> {
        let asker = Asker {
            user: &actor.user,
            may_input,
            admin,
        };
        self.change(vm, actor, |s| s.act(asker, req, now_ms()))
    }

    /// Input from `user` outside a console connection (`POST .../keys`): allowed when they
    /// hold control (it counts as their activity) or nobody does; else the holder's name.
    pub fn may_type(&self, vm: &str, user: &str) -> Result<(), String> {
        let mut seats = self.lock();
        match seats.get_mut(vm) {
            None => Ok(()),
            Some(s) => match s.holder().map(|h| h.user.clone()) {
                None => Ok(()),
                Some(h) if h == user => {
                    s.input(user, now_ms());
                    Ok(())
                }
                Some(h) => Err(h),
            },
        }
    }

    /// `vm`'s control state as `user` sees it.
    pub fn view(&self, vm: &str, user: &str, may_input: bool, admin: bool) -> ControlState {
        let seats = self.lock();
        let empty = Seat::default();
        let seat = seats.get(vm).unwrap_or(&empty);
        let holder = seat.holder();
        let holds = seat.holds(user);
        let (holder_name, watchers, requests) = parts(seat);
        ControlState {
            vm: vm.to_string(),
            holder: holder_name,
            holder_since_ms: holder.map(|h| h.since_ms),
            watchers,
            requests,
            idle_timeout_s: self.inner.idle.as_secs(),
            you: ControlYou {
                user: user.to_string(),
                can_control: may_input,
                can_take: may_input && (holder.is_none() || holds || admin),
                holds,
            },
        }
    }

    /// Applies `f` to `vm`'s seat; publishes and audits what changed.
    fn change(
        &self,
        vm: &str,
        actor: &Actor,
        f: impl FnOnce(&mut Seat) -> Result<Vec<Change>, ControlError>,
    ) -> Result<(), ControlError> {
        let (changes, event) = {
            let mut seats = self.lock();
            let seat = seats.entry(vm.to_string()).or_default();
            let changes = f(seat)?;
            let event = (!changes.is_empty()).then(|| control_event(vm, seat));
            if seat.is_empty() {
                seats.remove(vm);
            }
            (changes, event)
        };
        self.publish(vm, actor, &changes, event);
        Ok(())
    }

    fn publish(&self, vm: &str, actor: &Actor, changes: &[Change], event: Option<Event>) {
        for c in changes {
            if let Some(words) = c.audit_words() {
                let entry = AuditEntry {
                    principal: actor.user.clone(),
                    source: actor.source.clone(),
                    object: format!("vm/{vm}"),
                    action: words,
                    result: "ok".into(),
                    operation_id: None,
                };
                if let Err(e) = self.inner.access.audit(&entry) {
                    tracing::error!(error = %e, "cannot append to the audit log");
                }
            }
        }
        if let Some(ev) = event {
            self.inner.events.publish(&ev.vm, ev.kind);
        }
        // A new holder or new input may move the idle deadline.
        self.inner.rearm.notify_one();
    }

    /// Releases idle holders; the next deadline, if anyone holds control.
    fn release_idle(&self) -> Option<u64> {
        let idle_ms = self.inner.idle.as_millis() as u64;
        let now = now_ms();
        let mut released = Vec::new();
        let next = {
            let mut seats = self.lock();
            for (vm, seat) in seats.iter_mut() {
                if let Some(c) = seat.tick(now, idle_ms) {
                    released.push((vm.clone(), c, control_event(vm, seat)));
                }
            }
            seats.retain(|_, s| !s.is_empty());
            seats
                .values()
                .filter_map(|s| s.idle_deadline_ms(idle_ms))
                .min()
        };
        let hvd = Actor {
            user: "hvd".into(),
            source: "hvd".into(),
        };
        for (vm, c, ev) in released {
            tracing::info!(vm = %vm, "console control released after {}s without input", idle_ms / 1000);
            self.publish(&vm, &hvd, &[c], Some(ev));
        }
        next
    }
}

impl Seated {
    /// Input from this connection: whether it may reach the guest (its user holds control).
    /// Counts as the holder's activity.
    /// A user who may type takes control when nobody holds it (so typing again after an idle
    /// release just works for a lone user).
    pub fn input(&self) -> bool {
        let passed = {
            let mut seats = self.seats.lock();
            seats
                .get_mut(&self.vm)
                .is_some_and(|s| s.input(&self.actor.user, now_ms()))
        };
        if passed || !self.may_input {
            return passed;
        }
        let free = Asker {
            user: &self.actor.user,
            may_input: true,
            admin: false,
        };
        self.seats
            .change(&self.vm, &self.actor, |s| match s.holder() {
                None => s.act(free, &Request::Take, now_ms()),
                Some(_) => Ok(Vec::new()),
            })
            .is_ok()
            && self.holds()
    }

    /// Whether nobody holds control of this VM now.
    pub fn free(&self) -> bool {
        let seats = self.seats.lock();
        seats.get(&self.vm).is_none_or(|s| s.holder().is_none())
    }

    /// Whether this connection's user holds control now (no activity recorded).
    pub fn holds(&self) -> bool {
        let seats = self.seats.lock();
        seats
            .get(&self.vm)
            .is_some_and(|s| s.holds(&self.actor.user))
    }
}

impl Drop for Seated {
    fn drop(&mut self) {
        let id = self.id;
        let _ = self
            .seats
            .change(&self.vm, &self.actor, |s| Ok(s.detach(id)));
    }
}

fn parts(seat: &Seat) -> (Option<String>, Vec<ControlWatcher>, Vec<String>) {
    (
        seat.holder().map(|h| h.user.clone()),
        seat.watchers()
            .iter()
            .map(|w| ControlWatcher {
                user: w.user.clone(),
                kind: match w.kind {
                    ConnKind::Vnc => ConsoleKind::Vnc,
                    ConnKind::Serial => ConsoleKind::Serial,
                },
                since_ms: w.since_ms,
            })
            .collect(),
        seat.requests().to_vec(),
    )
}

fn control_event(vm: &str, seat: &Seat) -> Event {
    let (holder, watchers, requests) = parts(seat);
    Event {
        id: 0,
        time_ms: now_ms(),
        vm: vm.to_string(),
        kind: EventKind::Control {
            holder,
            watchers,
            requests,
        },
    }
}
