//! A VM's virtual media (issue 11), scoped to the VM like an IP-KVM switch's virtual media is
//! to its port: what can go into its CD-ROM drive, and where a new medium may be uploaded. An
//! operator granted on one VM sees pool volumes only through these views (no host paths, no
//! names of other VMs).

use serde::{Deserialize, Serialize};

/// The most bytes one medium upload may have (16 GiB: the largest DVD images, with room).
pub const MAX_MEDIUM_BYTES: u64 = 16 << 30;

/// What a medium's name must end with (so a medium is never taken for a disk image).
pub const MEDIUM_SUFFIXES: &[&str] = &[".iso", ".img"];

/// One volume that can be a CD-ROM medium: a raw volume in an active pool that no VM has as
/// a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MediumInfo {
    pub pool: String,
    pub volume: String,
    pub size_bytes: u64,
    /// The volume holds an ISO 9660 file system (`CD001` at byte 32769).
    pub iso9660: bool,
    /// It is in this VM's drive now (by its definition).
    pub inserted: bool,
}

/// A pool a medium may be uploaded to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MediaPool {
    pub pool: String,
    pub available_bytes: u64,
}

/// `GET /v1/vms/{name}/media/choices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MediaChoices {
    pub vm: String,
    /// The medium in the VM's drive (`POOL/NAME` or a host path), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    pub volumes: Vec<MediumInfo>,
    pub upload_pools: Vec<MediaPool>,
    /// The most bytes an upload may have (also bounded by the pool's free space).
    pub max_upload_bytes: u64,
}
