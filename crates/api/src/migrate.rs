//! Live migration between hv hosts (issue 12).
//!
//! The CLI asks the SOURCE hvd (`POST /v1/vms/{name}/migrate`, a [`MigrateRequest`] naming the
//! target by url, token and pinned fingerprint); the source hvd then talks to the TARGET hvd
//! with that token: `POST /v1/migrations/incoming` (an [`IncomingRequest`]) makes the target
//! check and prepare an incoming VM, `GET .../tunnel/{channel}` upgraded to
//! [`MIGRATION_PROTOCOL`] carries QEMU's bytes over hv's TLS link (no unencrypted port),
//! `POST .../finish` hands the VM over, `DELETE` aborts, and `GET` tells a source whose finish
//! answer was lost who owns the VM.

use std::fmt;

use model::{DiskFormat, ForwardSpec, ReservationSpec, VmName, VmSpec};
use serde::{Deserialize, Serialize};

/// The `Upgrade:` token of a migration tunnel: after `101 Switching Protocols` the connection
/// carries one channel's raw bytes both ways.
pub const MIGRATION_PROTOCOL: &str = "hv-migration";

/// The operation kind of a migration on the source.
pub const MIGRATE_OPERATION: &str = "migrate";

/// Tunnel channel names.
pub mod channel {
    /// The incoming QEMU's migration stream.
    pub const MEMORY: &str = "memory";
    /// The incoming QEMU's NBD server (`--copy-storage`).
    pub const NBD: &str = "nbd";
    /// Layer `n` of an offline migration.
    pub fn file(n: usize) -> String {
        format!("file-{n}")
    }
}

/// URL paths of migration.
pub mod paths {
    /// `POST`: migrate a VM away (source).
    pub fn vm_migrate(name: &str) -> String {
        format!("/v1/vms/{name}/migrate")
    }
    /// `POST`: prepare an incoming VM (target).
    pub const INCOMING: &str = "/v1/migrations/incoming";
    /// `GET` status, `DELETE` abort.
    pub fn incoming(id: &str) -> String {
        format!("/v1/migrations/incoming/{id}")
    }
    /// `POST`: the target takes the VM.
    pub fn incoming_finish(id: &str) -> String {
        format!("/v1/migrations/incoming/{id}/finish")
    }
    /// `GET` with `Upgrade: hv-migration`: a raw byte tunnel.
    pub fn incoming_tunnel(id: &str, channel: &str) -> String {
        format!("/v1/migrations/incoming/{id}/tunnel/{channel}")
    }
}

/// Where a VM goes: a target hvd's HTTPS url, a token granting `Host.Admin` there, and the
/// SHA-256 fingerprint of its certificate (as `hv remote add` pinned it).
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerTarget {
    pub url: String,
    /// A secret: never logged, never echoed (the `Debug` form redacts it).
    pub token: String,
    pub fingerprint: String,
}

impl fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTarget")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// `POST /v1/vms/{name}/migrate` (source hvd). Runs as an operation of kind `migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub to: PeerTarget,
    /// Copy the disks to the target (NBD + `blockdev-mirror`) instead of needing shared storage.
    #[serde(default)]
    pub copy_storage: bool,
    /// Move a stopped VM's definition and disks.
    #[serde(default)]
    pub offline: bool,
    /// The longest pause QEMU may take for the final switchover, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Bytes per second the migration may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Switch to post-copy after the first RAM pass.
    #[serde(default)]
    pub postcopy: bool,
    /// Keep the (stopped) definition on the source, autostart off.
    #[serde(default)]
    pub keep_source: bool,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    /// Pre-checks with the target.
    Checking,
    /// The target defines the VM and starts its incoming QEMU.
    Preparing,
    /// Disks are synchronised (`--copy-storage`, offline copies).
    Disks,
    /// RAM is copied.
    Memory,
    /// The source is paused, the last dirty pages go.
    Switchover,
    /// The target takes ownership.
    Handover,
    Done,
}

/// A migration operation's progress (in `OperationInfo::migration` and its events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MigrationProgress {
    pub phase: MigrationPhase,
    #[serde(default)]
    pub ram_total: u64,
    #[serde(default)]
    pub ram_transferred: u64,
    #[serde(default)]
    pub ram_remaining: u64,
    #[serde(default)]
    pub disk_total: u64,
    #[serde(default)]
    pub disk_transferred: u64,
    /// Bytes per second the guest dirties.
    #[serde(default)]
    pub dirty_rate: u64,
    #[serde(default)]
    pub expected_downtime_ms: u64,
    /// The final downtime: QEMU's measured switchover plus hv's handover (until the target
    /// has continued the guest), so the whole pause the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The whole migration's duration, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

impl MigrationProgress {
    pub fn new(phase: MigrationPhase) -> MigrationProgress {
        MigrationProgress {
            phase,
            ram_total: 0,
            ram_transferred: 0,
            ram_remaining: 0,
            disk_total: 0,
            disk_transferred: 0,
            dirty_rate: 0,
            expected_downtime_ms: 0,
            downtime_ms: None,
            total_ms: None,
        }
    }
}

/// Live (a running VM's RAM) or offline (a stopped VM's definition and disks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationMode {
    Live,
    Offline,
}

/// What the source runs, for the target's compatibility checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SourceFacts {
    /// `major.minor.micro` of the source QEMU.
    pub qemu_version: String,
    /// The pinned, versioned machine type the VM runs (e.g. `pc-q35-7.2`).
    pub machine: String,
    /// The CPU model the VM runs (`host`, `max`, `qemu64`, ...).
    pub cpu_model: String,
    pub hostname: String,
}

/// A disk's probe for shared storage: the source wrote `token` into the file `path` (in the
/// disk's directory); the target reads the file of that name in the directory where IT finds
/// the disk (the pool of the same name, or the same path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedProbe {
    pub path: std::path::PathBuf,
    pub token: String,
}

/// One layer of an offline disk's qcow2 chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingLayer {
    pub file_name: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
    /// The index (in `layers`) of its backing layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<usize>,
}

/// One disk of the migrating VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingDisk {
    /// The disk's target name in the spec (`vda`, `sda`, ...).
    pub target: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
    /// Set when the source believes the disk may be on shared storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedProbe>,
    /// Offline only: the chain's files, base first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<IncomingLayer>,
}

/// A snapshot's metadata row, as the source stores it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingSnapshot {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub created_at: u64,
    pub vm_state: model::VmState,
    pub kind: String,
    pub memory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub spec: VmSpec,
    /// External snapshots: the frozen image and overlay per disk (as the source stores them).
    #[serde(default)]
    pub disks: serde_json::Value,
}

/// A DHCP reservation that follows the VM to the network of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingReservation {
    pub network: String,
    pub reservation: ReservationSpec,
}

/// A port forward that follows the VM to the network of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingForward {
    pub network: String,
    pub forward: ForwardSpec,
}

/// `POST /v1/migrations/incoming` (target hvd, `Host.Admin`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingRequest {
    pub vm: VmName,
    pub spec: VmSpec,
    pub mode: MigrationMode,
    #[serde(default)]
    pub copy_storage: bool,
    pub source: SourceFacts,
    #[serde(default)]
    pub disks: Vec<IncomingDisk>,
    #[serde(default)]
    pub snapshots: Vec<IncomingSnapshot>,
    /// The snapshot the VM's state descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_snapshot: Option<String>,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default)]
    pub reservations: Vec<IncomingReservation>,
    #[serde(default)]
    pub forwards: Vec<IncomingForward>,
    /// Only run the pre-checks: nothing is defined or started.
    #[serde(default)]
    pub check_only: bool,
    /// The source VM was paused when the migration began: the target stays paused at finish.
    #[serde(default)]
    pub paused: bool,
    /// Post-copy may be used: the target's QEMU needs the capability too.
    #[serde(default)]
    pub postcopy: bool,
}

/// The target's answer: a session id and the tunnel channels it opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingReady {
    pub id: String,
    pub channels: Vec<String>,
}

/// An incoming session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IncomingState {
    /// Defined and QEMU listening; nothing received yet.
    Waiting,
    Receiving,
    /// QEMU received everything; not yet finished.
    Completed,
    Failed,
    /// The target owns the VM.
    Committed,
    Aborted,
}

/// `GET /v1/migrations/incoming/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncomingStatus {
    pub state: IncomingState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted_in_debug() {
        let t = PeerTarget {
            url: "https://10.0.0.2:8443".into(),
            token: "hv_secret123".into(),
            fingerprint: "ab:cd".into(),
        };
        let d = format!("{t:?}");
        assert!(!d.contains("secret123"), "{d}");
        let r = MigrateRequest {
            to: t,
            copy_storage: false,
            offline: false,
            downtime_ms: None,
            bandwidth: None,
            postcopy: false,
            keep_source: false,
        };
        assert!(!format!("{r:?}").contains("secret123"));
    }
}
