//! The wire contract between `hvd` and its clients: request and response bodies, the error
//! body with its stable [`ErrorCode`], events and host-check reports.
//!
//! Everything the API sends or receives is a type here; JSON field names are stable API.
//! Paths live in [`paths`] so the daemon's router and the client cannot drift apart.

use std::fmt;

use std::path::PathBuf;

use model::{DiskFormat, PoolName, Size, VmSpec, VmState, VolName};
use serde::{Deserialize, Serialize};

mod access;
pub use access::*;
mod console;
pub use console::*;
mod media;
pub use media::*;
pub mod migrate;
pub use migrate::{
    IncomingDisk, IncomingForward, IncomingLayer, IncomingReady, IncomingRequest,
    IncomingReservation, IncomingSnapshot, IncomingState, IncomingStatus, MigrateRequest,
    MigrationMode, MigrationPhase, MigrationProgress, PeerTarget, SharedProbe, SourceFacts,
    MIGRATE_OPERATION, MIGRATION_PROTOCOL,
};
mod resize;
pub use resize::*;
mod screen;
pub use screen::*;

/// The API version prefix.
pub const API_VERSION: &str = "v1";

/// URL paths, shared by the router and the client.
pub mod paths {
    pub const VMS: &str = "/v1/vms";
    pub const HOST_CHECK: &str = "/v1/host/check";
    /// A tar archive of hv's database and VM metadata (`hv host backup`).
    pub const HOST_BACKUP: &str = "/v1/host/backup";
    pub const EVENTS: &str = "/v1/events";
    pub const PING: &str = "/v1/ping";

    pub fn vm(name: &str) -> String {
        format!("/v1/vms/{name}")
    }
    pub fn vm_action(name: &str, action: &str) -> String {
        format!("/v1/vms/{name}/{action}")
    }
    pub const POOLS: &str = "/v1/pools";
    pub fn pool(name: &str) -> String {
        format!("/v1/pools/{name}")
    }
    pub fn volumes(pool: &str) -> String {
        format!("/v1/pools/{pool}/volumes")
    }
    pub fn volume(pool: &str, vol: &str) -> String {
        format!("/v1/pools/{pool}/volumes/{vol}")
    }
    pub fn volume_action(pool: &str, vol: &str, action: &str) -> String {
        format!("/v1/pools/{pool}/volumes/{vol}/{action}")
    }
}

/// The raw-stream variant of `GET|PUT /v1/pools/{pool}/volumes/{vol}/data`, which hv uses for
/// speed: the request carries `Connection: Upgrade` and `Upgrade: hv-volume-data` and the
/// daemon answers `101 Switching Protocols`, after which the volume's bytes flow unframed over
/// the connection, [`DATA_LENGTH_HEADER`] bytes of them (in the 101 of a download, in the
/// request of an upload). A download then ends with the connection; an upload is answered,
/// once its bytes are durable, by an ordinary HTTP/1.1 response (the `VolInfo`, or an error
/// body) on the same connection. Without the upgrade the route is plain HTTP.
pub const VOLUME_DATA_PROTOCOL: &str = "hv-volume-data";
/// How many bytes a raw volume stream carries.
pub const DATA_LENGTH_HEADER: &str = "hv-data-length";

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
    /// The object is used by a VM or another volume.
    InUse,
    /// The operation did not finish in time (e.g. the guest ignored the ACPI power button).
    Timeout,
    /// The host lacks something the operation needs (binary, device, permission).
    HostError,
    /// QEMU refused or failed.
    QemuError,
    Internal,
    /// The operation was cancelled (`hv operation cancel`, or hvd stopping) before it finished;
    /// nothing it did is left half-done.
    Cancelled,
    /// No credentials, or an unknown, expired or revoked token (HTTP 401).
    Unauthenticated,
    /// The caller lacks the right for this action (HTTP 403).
    Forbidden,
    /// Too many failed logins for this user or from this address: wait (HTTP 429).
    TooManyAttempts,
    /// The path exists but not with this method (HTTP 405).
    MethodNotAllowed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Busy => "busy",
            ErrorCode::InUse => "in_use",
            ErrorCode::Timeout => "timeout",
            ErrorCode::HostError => "host_error",
            ErrorCode::QemuError => "qemu_error",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
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
    /// Each NIC's address from its network's DHCP leases (in `info`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NicAddress>,
}

/// A NIC's IPv4 address as the network's DHCP server leased it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NicAddress {
    pub nic: usize,
    pub mac: String,
    pub network: String,
    pub ip: String,
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

/// A mutating request's work, owned by hvd: it finishes (or rolls back) whatever happens to the
/// connection that asked for it. `GET /v1/operations` lists the running and recent ones.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperationInfo {
    pub id: u64,
    /// What it does (`start`, `snapshot-create`, `vol-import`, ...).
    pub kind: String,
    /// The object it works on (`vm/web`, `pool/default/x.qcow2`, `network/lan`).
    pub target: String,
    pub status: OperationStatus,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Whether `POST /v1/operations/{id}/cancel` can stop it.
    pub cancellable: bool,
    /// How far it is, for work that can tell (copies: import, full clone), 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<f64>,
    /// The error of a failed or cancelled operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A migration's progress (operations of kind `migrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl fmt::Display for OperationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Failed => "failed",
            OperationStatus::Cancelled => "cancelled",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperationList {
    pub operations: Vec<OperationInfo>,
}

/// An event on `GET /v1/events` (one JSON object per line, or one SSE message).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// The event's place in hvd's event log: every event has a larger id than the one before,
    /// also across restarts of hvd (the first id of a run is its start time in ms × 1000).
    /// Pass the last id seen as `since` to resume. 0 on `gap` records.
    #[serde(default)]
    pub id: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The VM the event is about; absent for events about networks, pools and volumes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The object whose visibility decides who may see the event: `vm/NAME`, `network/NAME`,
    /// `pool/NAME`, `volume/POOL/NAME`, an operation's target, or `audit` (the audit log).
    pub fn object(&self) -> String {
        match &self.kind {
            EventKind::Operation { operation } => operation.target.clone(),
            EventKind::Network { network, .. } => format!("network/{network}"),
            EventKind::Pool { pool, .. } => format!("pool/{pool}"),
            EventKind::Volume { pool, volume, .. } => format!("volume/{pool}/{volume}"),
            EventKind::Audit { .. } => "audit".to_string(),
            _ => format!("vm/{}", self.vm),
        }
    }
}

/// What happened to a network, pool, volume or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Defined,
    Undefined,
    Started,
    Stopped,
    Created,
    Deleted,
    Resized,
    Uploaded,
    Imported,
    Cloned,
    Reverted,
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
    /// Who holds control of the VM's consoles, who watches, who asked, changed.
    Control {
        holder: Option<String>,
        watchers: Vec<ControlWatcher>,
        requests: Vec<String>,
    },
    /// An operation started, progressed (by whole percents) or ended (`status`, `error`).
    Operation {
        operation: OperationInfo,
    },
    /// A network was defined, started, stopped or undefined.
    Network {
        network: String,
        change: Change,
    },
    /// A pool was created, deleted or undefined.
    Pool {
        pool: String,
        change: Change,
    },
    /// A volume was created, imported, cloned (`volume` is the source), resized, uploaded or
    /// deleted.
    Volume {
        pool: String,
        volume: String,
        change: Change,
    },
    /// A snapshot of `vm` was created, reverted to or deleted.
    Snapshot {
        snapshot: String,
        change: Change,
    },
    /// A record was appended to the audit log (seen only by callers who may read the log).
    Audit {
        principal: String,
        source: String,
        object: String,
        action: String,
        result: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation_id: Option<u64>,
    },
    /// Only as the first record of a stream resumed with `since`: the events after `since` and
    /// before `oldest` are no longer retained (or were missed by a slow reader); re-read the
    /// state you need, then go on with what follows.
    Gap {
        oldest: u64,
    },
}

impl EventKind {
    /// The kinds' names for `GET /v1/events?type=` (the `event` tag).
    pub const NAMES: &'static [&'static str] = &[
        "defined",
        "undefined",
        "updated",
        "state-changed",
        "reset",
        "control",
        "operation",
        "network",
        "pool",
        "volume",
        "snapshot",
        "audit",
        "gap",
    ];

    /// This kind's name (the `event` tag).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Defined => "defined",
            EventKind::Undefined => "undefined",
            EventKind::Updated => "updated",
            EventKind::StateChanged { .. } => "state-changed",
            EventKind::Reset => "reset",
            EventKind::Control { .. } => "control",
            EventKind::Operation { .. } => "operation",
            EventKind::Network { .. } => "network",
            EventKind::Pool { .. } => "pool",
            EventKind::Volume { .. } => "volume",
            EventKind::Snapshot { .. } => "snapshot",
            EventKind::Audit { .. } => "audit",
            EventKind::Gap { .. } => "gap",
        }
    }
}

/// `GET /v1/events` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay the retained events after this id first (also taken from SSE's `Last-Event-ID`).
    /// 0 replays everything retained. Without it, only events from now on.
    #[serde(default)]
    pub since: Option<u64>,
    /// Only these kinds, comma-separated (`state-changed,operation`).
    #[serde(default, rename = "type")]
    pub types: Option<String>,
    /// Only events about this VM.
    #[serde(default)]
    pub vm: Option<String>,
}

/// `GET /v1/vms/{name}/stats`: live figures of a running VM, read cheaply (procfs, sysfs and
/// one QMP query; no process is spawned). Counters count since QEMU started.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmStats {
    pub vm: String,
    /// Unix time in milliseconds of the sample.
    pub time_ms: u64,
    /// QEMU's CPU use (user + system, all threads) in percent of one core, over the interval
    /// since the previous sample hvd took of this VM (at most a minute ago), else since QEMU
    /// started. May exceed 100 with several vCPUs.
    pub cpu_percent: f64,
    /// QEMU's CPU time (user + system) since it started, in seconds.
    pub cpu_seconds: f64,
    /// QEMU's resident memory (RSS) in bytes: guest RAM it touched plus its own.
    pub memory_rss_bytes: u64,
    /// The memory the guest was configured with, in bytes.
    pub memory_configured_bytes: u64,
    /// Balloon figures, when the VM has a balloon device (hv does not add one today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_actual_bytes: Option<u64>,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
}

/// One disk's I/O counters (QMP `query-blockstats`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiskStats {
    /// The disk's target (`vda`), or QEMU's device id.
    pub disk: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
}

/// One NIC's counters, as the guest sees them (rx: received by the guest), from its tap.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NicStats {
    /// The NIC's device id (`nic0`).
    pub nic: String,
    /// The host's tap interface.
    pub tap: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// `GET /v1/stats`: every running VM the caller may see.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatsList {
    pub vms: Vec<VmStats>,
}

/// `POST /v1/pools`: a directory pool.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolRequest {
    pub name: PoolName,
    /// An absolute directory; created when missing.
    pub path: PathBuf,
    #[serde(default)]
    pub autostart: bool,
}

/// `GET /v1/pools/{name}`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PoolInfo {
    pub name: String,
    pub path: PathBuf,
    pub autostart: bool,
    /// Size of the filesystem holding the pool.
    pub capacity_bytes: u64,
    /// Bytes the pool's volumes occupy.
    pub allocation_bytes: u64,
    /// Free bytes on the filesystem.
    pub available_bytes: u64,
    pub volumes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PoolList {
    pub pools: Vec<PoolInfo>,
}

/// `DELETE /v1/pools/{name}?force=true`
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletePoolRequest {
    /// Also delete the volumes it holds (never ones a VM uses).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/pools/{pool}/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolRequest {
    pub name: VolName,
    /// Required unless there is a backing volume (then it defaults to the backing size).
    #[serde(default)]
    pub size: Option<Size>,
    /// Defaults to qcow2.
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// `POOL/NAME` or an absolute path: makes a qcow2 overlay on top of it.
    #[serde(default)]
    pub backing: Option<String>,
}

/// `POST /v1/pools/{pool}/import`: copy a host file into the pool.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportVolRequest {
    pub name: VolName,
    pub source: PathBuf,
    /// The source's format. Required for raw images: a file is only raw when the user says so.
    #[serde(default)]
    pub format: Option<DiskFormat>,
}

/// `POST /v1/pools/{pool}/volumes/{vol}/clone`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneVolRequest {
    pub name: VolName,
    /// A qcow2 overlay on top of the source instead of a full copy.
    #[serde(default)]
    pub linked: bool,
}

/// `POST /v1/pools/{pool}/volumes/{vol}/resize`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolRequest {
    pub size: Size,
    #[serde(default)]
    pub allow_shrink: bool,
}

/// A volume: an image file in a pool.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VolInfo {
    pub pool: String,
    pub name: String,
    pub path: PathBuf,
    pub format: String,
    pub virtual_size_bytes: u64,
    pub allocation_bytes: u64,
    /// The backing image's path, for overlays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_format: Option<String>,
    /// VMs whose definition uses this volume.
    #[serde(default)]
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VolList {
    pub volumes: Vec<VolInfo>,
}

/// `POST /v1/vms/{name}/disks`: attach a disk. `live`/`config` default to both on a running
/// VM and config only on a stopped one.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDiskRequest {
    pub disk: model::DiskSpec,
    #[serde(default)]
    pub live: Option<bool>,
    #[serde(default)]
    pub config: Option<bool>,
}

/// Where a detach applies (`POST /v1/vms/{name}/disks/{target}/detach`,
/// `POST /v1/vms/{name}/nics/{mac}/detach`); absent fields take the defaults of attach.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    #[serde(default)]
    pub live: Option<bool>,
    #[serde(default)]
    pub config: Option<bool>,
}

/// The answer to `POST /v1/vms/{name}/nics`: the NIC as attached (with its MAC, also when the
/// change was live only and the definition does not show it) and the VM.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NicAttached {
    pub nic: model::NicSpec,
    pub vm: VmInfo,
}

pub type DetachDiskRequest = ScopeRequest;
pub type DetachNicRequest = ScopeRequest;

/// `POST /v1/vms/{name}/nics`: like [`AttachDiskRequest`], for a NIC (a MAC is generated when
/// it has none).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachNicRequest {
    pub nic: model::NicSpec,
    #[serde(default)]
    pub live: Option<bool>,
    #[serde(default)]
    pub config: Option<bool>,
}

/// `POST /v1/vms/{name}/media`: an ISO path or `POOL/NAME` into the CD-ROM drive.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaRequest {
    pub source: String,
}

/// `POST /v1/vms/{name}/snapshots`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub name: model::SnapName,
    #[serde(default)]
    pub description: Option<String>,
    /// External disk-only snapshot (new overlays) instead of an internal one.
    #[serde(default)]
    pub disk_only: bool,
}

/// One snapshot of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Unix time in seconds.
    pub created_at: u64,
    /// The VM's state when the snapshot was taken.
    pub vm_state: VmState,
    /// `internal` (inside the qcow2 images) or `external` (overlay files).
    pub kind: String,
    /// The snapshot holds RAM and device state (taken while the VM ran).
    pub memory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The VM's current state descends from this snapshot directly.
    pub current: bool,
    #[serde(default)]
    pub children: Vec<String>,
    /// The VM's spec when the snapshot was taken (restored by revert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VmSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

/// `GET /v1/networks/{name}`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NetworkInfo {
    pub name: String,
    pub mode: model::NetMode,
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<String>,
    pub autostart: bool,
    /// Its bridge, firewall table and dnsmasq are up.
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsmasq_pid: Option<u32>,
    /// Why the network failed to come up (at hvd start or at its last start): it is then
    /// inactive, and `hv net start` tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// VMs whose NICs are on it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NetworkList {
    pub networks: Vec<NetworkInfo>,
}

/// `POST /v1/networks/{net}/forwards`: forward a host port to a VM on the network.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddForwardRequest {
    /// `tcp` or `udp`.
    pub proto: String,
    pub host_port: u16,
    #[serde(default)]
    pub host_addr: Option<std::net::Ipv4Addr>,
    pub vm: String,
    /// Defaults to `host_port`.
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ForwardList {
    pub forwards: Vec<model::ForwardSpec>,
}

/// `POST /v1/networks/{net}/reservations`: a fixed DHCP address for a MAC or for a VM's NIC
/// on the network (exactly one of `mac` and `vm`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReservationRequest {
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub vm: Option<String>,
    pub ip: std::net::Ipv4Addr,
    /// The name DNS answers for the address; defaults to the VM's name.
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReservationList {
    pub reservations: Vec<model::ReservationSpec>,
}

/// `POST /v1/host/bridges`: make `iface` the port of a new bridge `bridge` that takes over
/// its IPv4 addresses and routes (rolled back completely when a step fails).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeIfaceRequest {
    pub iface: String,
    pub bridge: String,
}

/// The steps a bridge change made, in order.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BridgeChange {
    pub steps: Vec<String>,
}

/// A DHCP lease (`GET /v1/networks/{name}/leases`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LeaseInfo {
    pub mac: String,
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The VM with that MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Unix time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseInfo>,
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
            id: 7,
            time_ms: 5,
            vm: "a".into(),
            kind: EventKind::StateChanged {
                state: VmState::Running,
                reason: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":7,"time_ms":5,"vm":"a","event":"state-changed","state":"running"}"#
        );
        let n = Event {
            id: 8,
            time_ms: 6,
            vm: String::new(),
            kind: EventKind::Network {
                network: "lan".into(),
                change: Change::Started,
            },
        };
        let line = serde_json::to_string(&n).unwrap();
        assert_eq!(
            line,
            r#"{"id":8,"time_ms":6,"event":"network","network":"lan","change":"started"}"#
        );
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back.object(), "network/lan");
        assert_eq!(back.kind.name(), "network");
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
