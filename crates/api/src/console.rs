//! Shared control of VM consoles (issue 11): who watches, who holds control, who asked.

use serde::{Deserialize, Serialize};

/// What a console connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConsoleKind {
    /// The graphical console (`GET /v1/vms/{name}/vnc`).
    Vnc,
    /// The serial console (`GET /v1/vms/{name}/console`).
    Serial,
}

/// One open console connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ControlWatcher {
    pub user: String,
    pub kind: ConsoleKind,
    /// Unix time in milliseconds when it opened.
    pub since_ms: u64,
}

/// What the caller may do with control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ControlYou {
    /// How control names the caller (a user name, or `uid:N` for a local admin).
    pub user: String,
    /// The caller may type on this console (VM.Console.Input), so they can hold control.
    pub can_control: bool,
    /// `take` would succeed now (control is free, theirs, or they are an admin of the VM).
    pub can_take: bool,
    /// The caller holds control.
    pub holds: bool,
}

/// `GET /v1/vms/{name}/control`: the control state of one VM's consoles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ControlState {
    pub vm: String,
    /// Who holds control (only their input reaches the guest); `null` when nobody does.
    pub holder: Option<String>,
    /// Unix time in milliseconds since when the holder holds control.
    pub holder_since_ms: Option<u64>,
    pub watchers: Vec<ControlWatcher>,
    /// Users who asked the holder for control, oldest first.
    pub requests: Vec<String>,
    /// Control is released after this many seconds without input from the holder.
    pub idle_timeout_s: u64,
    pub you: ControlYou,
}

/// `GET /v1/consoles`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct ConsoleList(pub Vec<ControlState>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ControlAction {
    /// Take control: when free, or from anyone as an admin of the VM.
    Take,
    /// Ask the holder for control (takes it when free).
    Request,
    /// Let go of control.
    Release,
    /// Hand control to `to`, a user who watches and may type.
    Give,
}

/// `POST /v1/vms/{name}/control`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    pub action: ControlAction,
    /// The user to give control to (`give` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}
