//! The VM lifecycle: states, user actions, and the one table that says which action is valid
//! in which state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Observed VM state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Shutoff,
    Starting,
    Running,
    Paused,
    ShuttingDown,
    /// QEMU died without a guest shutdown; the reason is kept.
    Crashed,
}

impl VmState {
    pub const ALL: &'static [VmState] = &[
        VmState::Shutoff,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Shutoff => "shutoff",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Crashed => "crashed",
        }
    }

    /// A QEMU process exists for the VM.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmState::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}; use one of: {}", all.join(", "))
            })
    }
}

/// Something a user asks of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Start,
    Shutdown,
    Destroy,
    Reboot,
    Reset,
    Pause,
    Resume,
    Undefine,
    Edit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Shutdown => "shutdown",
            Action::Destroy => "destroy",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Undefine => "undefine",
            Action::Edit => "edit",
        }
    }
}

/// An action that the VM's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a VM that is {state}{hint}", action.as_str())]
pub struct InvalidTransition {
    pub action: Action,
    pub state: VmState,
    pub hint: &'static str,
}

impl Action {
    /// The lifecycle table: is this action valid in `state`?
    pub fn check(self, state: VmState) -> Result<(), InvalidTransition> {
        use Action as A;
        use VmState as S;
        let hint = match (self, state) {
            (A::Start, S::Shutoff | S::Crashed) => return Ok(()),
            (A::Start, _) => "; it is already running (use reboot or reset to restart it)",
            (A::Shutdown | A::Reboot, S::Running) => return Ok(()),
            (A::Shutdown | A::Reboot, S::Paused) => {
                "; resume it first, or use destroy for a hard power-off"
            }
            (A::Shutdown | A::Reboot, S::ShuttingDown) => {
                "; a shutdown is already in progress (use destroy for a hard power-off)"
            }
            (A::Destroy, s) if s.is_active() => return Ok(()),
            (A::Reset, S::Running | S::Paused) => return Ok(()),
            (A::Pause, S::Running) => return Ok(()),
            (A::Pause, S::Paused) => "; it is already paused",
            (A::Resume, S::Paused) => return Ok(()),
            (A::Resume, S::Running) => "; it is not paused",
            (A::Undefine | A::Edit, S::Shutoff | S::Crashed) => return Ok(()),
            (A::Undefine, _) => "; stop it first (shutdown or destroy), or pass --force",
            (A::Edit, _) => return Ok(()),
            (_, S::Shutoff | S::Crashed) => "; start it first",
            (_, S::Starting) => "; it is still starting",
            (_, S::ShuttingDown) => "; it is shutting down",
            (_, S::Running | S::Paused) => "",
        };
        Err(InvalidTransition {
            action: self,
            state,
            hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(action: Action, allowed: &[VmState]) {
        for &s in VmState::ALL {
            assert_eq!(
                action.check(s).is_ok(),
                allowed.contains(&s),
                "{action:?} in {s}"
            );
        }
    }

    #[test]
    fn transition_table() {
        use VmState::*;
        check(Action::Start, &[Shutoff, Crashed]);
        check(Action::Shutdown, &[Running]);
        check(Action::Reboot, &[Running]);
        check(Action::Destroy, &[Starting, Running, Paused, ShuttingDown]);
        check(Action::Reset, &[Running, Paused]);
        check(Action::Pause, &[Running]);
        check(Action::Resume, &[Paused]);
        check(Action::Undefine, &[Shutoff, Crashed]);
        check(Action::Edit, VmState::ALL);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Action::Start
            .check(VmState::Running)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "cannot start a VM that is running; it is already running (use reboot or reset to restart it)");
        let e = Action::Pause
            .check(VmState::Shutoff)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "cannot pause a VM that is shutoff; start it first");
    }

    #[test]
    fn states_round_trip() {
        for &s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("sleeping".parse::<VmState>().is_err());
    }
}
