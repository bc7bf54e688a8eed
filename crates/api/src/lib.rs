//! The wire contract between `hvd` and its clients: request and response bodies, the error
//! body with its stable [`ErrorCode`], events and host-check reports.
//!
//! Everything the API sends or receives is a type here; JSON field names are stable API.
//! Paths live in [`paths`] so the daemon's router and the client cannot drift apart.

use std::fmt;

use model::{VmSpec, VmState};
use serde::{Deserialize, Serialize};

/// The API version prefix.
pub const API_VERSION: &str = "v1";

/// URL paths, shared by the router and the client.
pub mod paths {
    pub const VMS: &str = "/v1/vms";
    pub const HOST_CHECK: &str = "/v1/host/check";
    pub const EVENTS: &str = "/v1/events";
    pub const PING: &str = "/v1/ping";

    pub fn vm(name: &str) -> String {
        format!("/v1/vms/{name}")
    }
    pub fn vm_action(name: &str, action: &str) -> String {
        format!("/v1/vms/{name}/{action}")
    }
}

/// A stable, machine-readable error kind. Each maps to exactly one HTTP status in the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request or spec is malformed or fails validation.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The action is not valid in the VM's current state.
    InvalidState,
    /// Another operation on the same VM is in progress.
    Busy,
    /// The operation did not finish in time (e.g. the guest ignored the ACPI power button).
    Timeout,
    /// The host lacks something the operation needs (binary, device, permission).
    HostError,
    /// QEMU refused or failed.
    QemuError,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::HostError => "host_error",
            ErrorCode::QemuError => "qemu_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// `POST /v1/vms`: define (and optionally start) a VM.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub spec: VmSpec,
    #[serde(default)]
    pub start: bool,
}

/// `POST /v1/vms/{name}/start`
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default)]
    pub paused: bool,
}

/// `POST /v1/vms/{name}/shutdown` and `/reboot`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_secs: u64,
    /// Hard power-off when the guest has not shut down by the timeout.
    #[serde(default)]
    pub force: bool,
}

pub fn default_shutdown_timeout() -> u64 {
    60
}

impl Default for ShutdownRequest {
    fn default() -> Self {
        ShutdownRequest {
            timeout_secs: default_shutdown_timeout(),
            force: false,
        }
    }
}

/// `POST /v1/vms/{name}/undefine`
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UndefineRequest {
    /// Also delete the VM's disk images (never read-only ones or the CD-ROM).
    #[serde(default)]
    pub remove_storage: bool,
    /// Destroy the VM first if it is running.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/vms/{name}/autostart`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutostartRequest {
    pub enabled: bool,
}

/// `POST /v1/vms/{name}/wait`: block until the VM reaches a state or its console prints a match.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    #[serde(default)]
    pub state: Option<VmState>,
    /// A regex searched in what the console printed since the VM last started.
    #[serde(default)]
    pub console: Option<String>,
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WaitResponse {
    pub reached: bool,
    pub state: VmState,
    /// The console text that matched, when waiting on the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
}

/// Why QEMU died unexpectedly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CrashInfo {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The last lines of the QEMU log.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Unix time in seconds.
    pub at: u64,
}

/// Where a running VM's VNC server listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VncInfo {
    pub host: String,
    pub port: u16,
}

/// The API view of a VM (`GET /v1/vms/{name}`, and each element of `GET /v1/vms`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub autostart: bool,
    pub ephemeral: bool,
    /// The accelerator the running VM uses (`kvm` or `tcg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix time in seconds when QEMU was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<VncInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<CrashInfo>,
    /// Why the accelerator was chosen, when it was not the one asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel_reason: Option<String>,
    /// The full spec (in `info`, not in `list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VmSpec>,
}

/// `GET /v1/vms`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// `GET /v1/vms/{name}/showcmd`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShowCmd {
    pub argv: Vec<String>,
    /// True when this is the command line of the running QEMU, false when it is what hv would run.
    pub running: bool,
}

/// One line of `hv host check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostCheck {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `GET /v1/host/check`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostReport {
    pub checks: Vec<HostCheck>,
    /// `kvm` or `tcg`: what `--accel auto` picks on this host.
    pub accel: String,
    pub accel_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
}

/// An event on `GET /v1/events` (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub vm: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    Defined,
    Undefined,
    Updated,
    StateChanged {
        state: VmState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The guest reset itself (reboot) or was reset.
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape_is_stable() {
        let b = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::InvalidState,
                message: "m".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"error":{"code":"invalid_state","message":"m"}}"#
        );
    }

    #[test]
    fn event_shape_is_stable() {
        let e = Event {
            time_ms: 5,
            vm: "a".into(),
            kind: EventKind::StateChanged {
                state: VmState::Running,
                reason: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time_ms":5,"vm":"a","event":"state-changed","state":"running"}"#
        );
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for c in [
            ErrorCode::InvalidArgument,
            ErrorCode::Busy,
            ErrorCode::HostError,
        ] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }
}
