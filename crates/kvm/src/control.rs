//! Shared control of one VM's console, pure: who watches (each VNC or serial connection), who
//! holds control (at most one user; only their input reaches the guest), who asked for it.
//!
//! Rules:
//! - A user who may type opens a console while nobody holds control: they take it.
//! - Others `request` it; the holder can `release` it or `give` it to a watching user who may
//!   type; an admin of the VM can `take` it from anyone; a plain `take` when it is free.
//! - Control is released when the holder's last console connection closes, and after the idle
//!   timeout without input from the holder.
//!
//! Every change is returned as a [`Change`], which the caller turns into an event and an audit
//! record. Times are milliseconds of any monotonic-enough clock, passed in.

/// A console connection's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Vnc,
    Serial,
}

impl ConnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::Vnc => "vnc",
            ConnKind::Serial => "serial",
        }
    }
}

/// One open console connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub id: u64,
    pub user: String,
    pub kind: ConnKind,
    pub since_ms: u64,
    /// Whether this user may type on this VM (they may be given control).
    pub may_input: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub user: String,
    pub since_ms: u64,
    pub last_input_ms: u64,
}

/// Why control was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The holder released it.
    Released,
    /// The holder's last console connection closed.
    Disconnected,
    /// No input from the holder for the idle timeout.
    Idle,
}

/// A change of the control state, for events and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A connection opened.
    Attached {
        user: String,
        kind: ConnKind,
    },
    /// A connection closed.
    Detached {
        user: String,
        kind: ConnKind,
    },
    /// `user` took free control (by opening a console or asking).
    Took {
        user: String,
    },
    /// An admin took control from its holder.
    AdminTook {
        user: String,
        from: String,
    },
    Gave {
        from: String,
        to: String,
    },
    Requested {
        user: String,
    },
    Released {
        user: String,
        reason: ReleaseReason,
    },
}

impl Change {
    /// The audit log's words for a change of control (`None` for attach/detach, which the
    /// console sessions audit themselves).
    pub fn audit_words(&self) -> Option<String> {
        Some(match self {
            Change::Attached { .. } | Change::Detached { .. } => return None,
            Change::Took { user } => format!("control take by {user}"),
            Change::AdminTook { user, from } => format!("control admin take by {user} from {from}"),
            Change::Gave { from, to } => format!("control give by {from} to {to}"),
            Change::Requested { user } => format!("control request by {user}"),
            Change::Released { user, reason } => match reason {
                ReleaseReason::Released => format!("control release by {user}"),
                ReleaseReason::Disconnected => format!("control disconnect release of {user}"),
                ReleaseReason::Idle => format!("control idle release of {user}"),
            },
        })
    }
}

/// What a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Take,
    Request,
    Release,
    Give { to: String },
}

/// Who asks, with the rights that matter here.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub user: &'a str,
    /// The user may type on this VM.
    pub may_input: bool,
    /// The user is an admin of this VM (may take control from anyone).
    pub admin: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control is held by {holder}; ask them (request) or an admin can take it")]
    HeldBy { holder: String },
    #[error("you do not hold control (it is held by {holder})")]
    NotHolder { holder: String },
    #[error("nobody holds control")]
    NotHeld,
    #[error(
        "{user} does not watch this console; they must open it before they can be given control"
    )]
    NotWatching { user: String },
    #[error("{user} may not type on this console, so they cannot be given control")]
    CannotInput { user: String },
    #[error("{user} may not type on this console, so they cannot hold control")]
    NoInputRight { user: String },
    #[error("too many pending requests for control ({0}); try again later")]
    TooManyRequests(usize),
}

/// The most requests kept per VM.
pub const MAX_REQUESTS: usize = 64;

/// The control state of one VM's console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seat {
    holder: Option<Holder>,
    watchers: Vec<Watcher>,
    requests: Vec<String>,
}

impl Seat {
    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }
    pub fn watchers(&self) -> &[Watcher] {
        &self.watchers
    }
    pub fn requests(&self) -> &[String] {
        &self.requests
    }
    /// Nobody watches, holds or asks: the seat can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.holder.is_none() && self.watchers.is_empty() && self.requests.is_empty()
    }
    pub fn holds(&self, user: &str) -> bool {
        self.holder.as_ref().is_some_and(|h| h.user == user)
    }

    /// A connection `id` of `user` opened. A user who may type takes free control.
    pub fn attach(&mut self, w: Watcher, now_ms: u64) -> Vec<Change> {
        let mut changes = vec![Change::Attached {
            user: w.user.clone(),
            kind: w.kind,
        }];
        if self.holder.is_none() && w.may_input {
            changes.push(self.set_holder(&w.user, now_ms));
        }
        self.watchers.push(w);
        changes
    }

    /// Connection `id` closed. The holder's last connection releases control; a user's last
    /// connection also withdraws their request.
    pub fn detach(&mut self, id: u64) -> Vec<Change> {
        let Some(i) = self.watchers.iter().position(|w| w.id == id) else {
            return Vec::new();
        };
        let w = self.watchers.remove(i);
        let mut changes = vec![Change::Detached {
            user: w.user.clone(),
            kind: w.kind,
        }];
        if !self.watchers.iter().any(|x| x.user == w.user) {
            self.requests.retain(|r| *r != w.user);
            if self.holds(&w.user) {
                self.holder = None;
                changes.push(Change::Released {
                    user: w.user,
                    reason: ReleaseReason::Disconnected,
                });
            }
        }
        changes
    }

    /// Input from `user`: whether it may reach the guest (they hold control). The holder's
    /// input resets the idle timer.
    pub fn input(&mut self, user: &str, now_ms: u64) -> bool {
        match &mut self.holder {
            Some(h) if h.user == user => {
                h.last_input_ms = h.last_input_ms.max(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Releases control when the holder typed nothing for `idle_ms`.
    pub fn tick(&mut self, now_ms: u64, idle_ms: u64) -> Option<Change> {
        let h = self.holder.as_ref()?;
        if now_ms.saturating_sub(h.last_input_ms) < idle_ms {
            return None;
        }
        let user = self.holder.take()?.user;
        Some(Change::Released {
            user,
            reason: ReleaseReason::Idle,
        })
    }

    /// When the holder goes idle (`None` when nobody holds control).
    pub fn idle_deadline_ms(&self, idle_ms: u64) -> Option<u64> {
        self.holder
            .as_ref()
            .map(|h| h.last_input_ms.saturating_add(idle_ms))
    }

    /// A user's request; nothing changes on an error. An empty answer means nothing to do
    /// (they already hold control, or already asked).
    pub fn act(
        &mut self,
        who: Asker<'_>,
        req: &Request,
        now_ms: u64,
    ) -> Result<Vec<Change>, ControlError> {
        let holder = self.holder.as_ref().map(|h| h.user.clone());
        let need_input = || {
            if who.may_input {
                Ok(())
            } else {
                Err(ControlError::NoInputRight {
                    user: who.user.to_string(),
                })
            }
        };
        match req {
            Request::Take => {
                need_input()?;
                match holder {
                    None => Ok(vec![self.set_holder(who.user, now_ms)]),
                    Some(h) if h == who.user => Ok(Vec::new()),
                    Some(from) if who.admin => {
                        self.set_holder(who.user, now_ms);
                        Ok(vec![Change::AdminTook {
                            user: who.user.to_string(),
                            from,
                        }])
                    }
                    Some(holder) => Err(ControlError::HeldBy { holder }),
                }
            }
            Request::Request => {
                need_input()?;
                match holder {
                    None => Ok(vec![self.set_holder(who.user, now_ms)]),
                    Some(h) if h == who.user => Ok(Vec::new()),
                    Some(_) if self.requests.iter().any(|r| r == who.user) => Ok(Vec::new()),
                    Some(_) if self.requests.len() >= MAX_REQUESTS => {
                        Err(ControlError::TooManyRequests(self.requests.len()))
                    }
                    Some(_) => {
                        self.requests.push(who.user.to_string());
                        Ok(vec![Change::Requested {
                            user: who.user.to_string(),
                        }])
                    }
                }
            }
            Request::Release => match holder {
                None => Err(ControlError::NotHeld),
                Some(h) if h == who.user => {
                    self.holder = None;
                    Ok(vec![Change::Released {
                        user: h,
                        reason: ReleaseReason::Released,
                    }])
                }
                Some(holder) => Err(ControlError::NotHolder { holder }),
            },
            Request::Give { to } => {
                match &holder {
                    None => return Err(ControlError::NotHeld),
                    Some(h) if h != who.user && !who.admin => {
                        return Err(ControlError::NotHolder { holder: h.clone() })
                    }
                    Some(_) => {}
                }
                let mut theirs = self.watchers.iter().filter(|w| w.user == *to).peekable();
                if theirs.peek().is_none() {
                    return Err(ControlError::NotWatching { user: to.clone() });
                }
                if !theirs.any(|w| w.may_input) {
                    return Err(ControlError::CannotInput { user: to.clone() });
                }
                if holder.as_deref() == Some(to.as_str()) {
                    return Ok(Vec::new());
                }
                let from = holder.unwrap_or_default();
                self.set_holder(to, now_ms);
                Ok(vec![Change::Gave {
                    from,
                    to: to.clone(),
                }])
            }
        }
    }

    fn set_holder(&mut self, user: &str, now_ms: u64) -> Change {
        self.requests.retain(|r| r != user);
        self.holder = Some(Holder {
            user: user.to_string(),
            since_ms: now_ms,
            last_input_ms: now_ms,
        });
        Change::Took {
            user: user.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u64, user: &str, may_input: bool) -> Watcher {
        Watcher {
            id,
            user: user.into(),
            kind: ConnKind::Vnc,
            since_ms: id,
            may_input,
        }
    }
    fn op(user: &str) -> Asker<'_> {
        Asker {
            user,
            may_input: true,
            admin: false,
        }
    }
    fn admin(user: &str) -> Asker<'_> {
        Asker {
            user,
            may_input: true,
            admin: true,
        }
    }
    fn viewer(user: &str) -> Asker<'_> {
        Asker {
            user,
            may_input: false,
            admin: false,
        }
    }
    fn took(u: &str) -> Change {
        Change::Took { user: u.into() }
    }
    fn released(u: &str, reason: ReleaseReason) -> Change {
        Change::Released {
            user: u.into(),
            reason,
        }
    }
    fn holder(s: &Seat) -> Option<&str> {
        s.holder().map(|h| h.user.as_str())
    }
    /// A seat where operator `a` (conn 1) holds control and viewer `b` (conn 2) and operator
    /// `c` (conn 3) watch.
    fn seat() -> Seat {
        let mut s = Seat::default();
        s.attach(w(1, "a", true), 10);
        s.attach(w(2, "b", false), 11);
        s.attach(w(3, "c", true), 12);
        s
    }

    #[test]
    fn first_user_who_may_type_takes_free_control() {
        let mut s = Seat::default();
        let ch = s.attach(w(1, "b", false), 1);
        assert_eq!(
            ch,
            vec![Change::Attached {
                user: "b".into(),
                kind: ConnKind::Vnc
            }]
        );
        assert_eq!(holder(&s), None);
        let ch = s.attach(w(2, "a", true), 2);
        assert_eq!(ch[1], took("a"));
        assert_eq!(s.holder().unwrap().since_ms, 2);
        // The next one only watches.
        assert_eq!(s.attach(w(3, "c", true), 3).len(), 1);
        assert_eq!(holder(&s), Some("a"));
    }

    #[test]
    fn only_the_holder_types() {
        let mut s = seat();
        assert!(s.input("a", 20));
        assert!(!s.input("b", 20));
        assert!(!s.input("c", 20));
        assert_eq!(s.holder().unwrap().last_input_ms, 20);
    }

    #[test]
    fn take_free_held_and_by_admin() {
        let mut s = seat();
        assert_eq!(
            s.act(op("c"), &Request::Take, 20),
            Err(ControlError::HeldBy { holder: "a".into() })
        );
        assert_eq!(s.act(op("a"), &Request::Take, 20), Ok(vec![]));
        assert_eq!(
            s.act(viewer("b"), &Request::Take, 20),
            Err(ControlError::NoInputRight { user: "b".into() })
        );
        assert_eq!(
            s.act(admin("root"), &Request::Take, 21),
            Ok(vec![Change::AdminTook {
                user: "root".into(),
                from: "a".into()
            }])
        );
        assert_eq!(holder(&s), Some("root"));
        s.act(op("root"), &Request::Release, 22).unwrap();
        assert_eq!(s.act(op("c"), &Request::Take, 23), Ok(vec![took("c")]));
    }

    #[test]
    fn request_queues_and_is_cleared_by_getting_control() {
        let mut s = seat();
        assert_eq!(
            s.act(op("c"), &Request::Request, 20),
            Ok(vec![Change::Requested { user: "c".into() }])
        );
        assert_eq!(s.act(op("c"), &Request::Request, 21), Ok(vec![]));
        assert_eq!(s.requests(), ["c"]);
        assert!(s.act(viewer("b"), &Request::Request, 21).is_err());
        s.act(op("a"), &Request::Give { to: "c".into() }, 22)
            .unwrap();
        assert!(s.requests().is_empty());
        // Requesting free control takes it.
        s.act(op("c"), &Request::Release, 23).unwrap();
        assert_eq!(s.act(op("a"), &Request::Request, 24), Ok(vec![took("a")]));
    }

    #[test]
    fn requests_are_bounded() {
        let mut s = seat();
        for i in 0..MAX_REQUESTS {
            s.act(op(&format!("u{i}")), &Request::Request, 1).unwrap();
        }
        assert_eq!(
            s.act(op("late"), &Request::Request, 1),
            Err(ControlError::TooManyRequests(MAX_REQUESTS))
        );
    }

    #[test]
    fn release_only_by_the_holder() {
        let mut s = seat();
        assert_eq!(
            s.act(op("c"), &Request::Release, 20),
            Err(ControlError::NotHolder { holder: "a".into() })
        );
        assert_eq!(
            s.act(op("a"), &Request::Release, 20),
            Ok(vec![released("a", ReleaseReason::Released)])
        );
        assert_eq!(
            s.act(op("a"), &Request::Release, 20),
            Err(ControlError::NotHeld)
        );
        assert!(!s.input("a", 21));
    }

    #[test]
    fn give_to_a_watcher_who_may_type() {
        let mut s = seat();
        assert_eq!(
            s.act(op("a"), &Request::Give { to: "b".into() }, 20),
            Err(ControlError::CannotInput { user: "b".into() })
        );
        assert_eq!(
            s.act(op("a"), &Request::Give { to: "zed".into() }, 20),
            Err(ControlError::NotWatching { user: "zed".into() })
        );
        assert_eq!(
            s.act(op("c"), &Request::Give { to: "c".into() }, 20),
            Err(ControlError::NotHolder { holder: "a".into() })
        );
        assert_eq!(
            s.act(op("a"), &Request::Give { to: "a".into() }, 20),
            Ok(vec![])
        );
        assert_eq!(
            s.act(op("a"), &Request::Give { to: "c".into() }, 20),
            Ok(vec![Change::Gave {
                from: "a".into(),
                to: "c".into()
            }])
        );
        assert_eq!(holder(&s), Some("c"));
        assert_eq!(s.holder().unwrap().last_input_ms, 20);
        // An admin may hand it on too.
        s.attach(w(4, "d", true), 21);
        assert!(s
            .act(admin("root"), &Request::Give { to: "d".into() }, 22)
            .is_ok());
        assert_eq!(holder(&s), Some("d"));
        let mut empty = Seat::default();
        assert_eq!(
            empty.act(op("a"), &Request::Give { to: "c".into() }, 1),
            Err(ControlError::NotHeld)
        );
    }

    #[test]
    fn last_connection_of_the_holder_releases() {
        let mut s = seat();
        s.attach(w(5, "a", true), 13);
        assert_eq!(s.detach(1).len(), 1);
        assert_eq!(holder(&s), Some("a"));
        assert_eq!(
            s.detach(5),
            vec![
                Change::Detached {
                    user: "a".into(),
                    kind: ConnKind::Vnc
                },
                released("a", ReleaseReason::Disconnected)
            ]
        );
        assert_eq!(holder(&s), None);
        // Unknown ids change nothing.
        assert!(s.detach(99).is_empty());
    }

    #[test]
    fn a_leaving_user_withdraws_their_request() {
        let mut s = seat();
        s.act(op("c"), &Request::Request, 20).unwrap();
        s.detach(3);
        assert!(s.requests().is_empty());
        s.detach(1);
        s.detach(2);
        assert!(s.is_empty());
    }

    #[test]
    fn idle_holder_is_released() {
        let mut s = seat();
        assert_eq!(s.idle_deadline_ms(100), Some(110));
        assert_eq!(s.tick(109, 100), None);
        assert!(s.input("a", 50));
        assert_eq!(s.tick(149, 100), None);
        assert_eq!(s.tick(150, 100), Some(released("a", ReleaseReason::Idle)));
        assert_eq!(s.tick(500, 100), None);
        assert_eq!(s.idle_deadline_ms(100), None);
        // Input from others keeps nobody's timer going; a later opener does not take it
        // automatically, but can take it.
        assert!(!s.input("c", 501));
        assert_eq!(s.act(op("c"), &Request::Take, 502), Ok(vec![took("c")]));
    }

    #[test]
    fn audit_words_name_every_change_of_control() {
        assert_eq!(took("a").audit_words().unwrap(), "control take by a");
        assert_eq!(
            released("a", ReleaseReason::Idle).audit_words().unwrap(),
            "control idle release of a"
        );
        assert_eq!(
            released("a", ReleaseReason::Disconnected)
                .audit_words()
                .unwrap(),
            "control disconnect release of a"
        );
        assert!(Change::Attached {
            user: "a".into(),
            kind: ConnKind::Serial
        }
        .audit_words()
        .is_none());
    }
}
