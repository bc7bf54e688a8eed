//! Resizing a VM (issue 14): `POST /v1/vms/{name}/resources` changes vCPUs and memory live,
//! in the definition, or both (`hv set`), and `GET /v1/vms/{name}/resources` shows the
//! current and maximum values; `POST /v1/vms/{name}/clone` copies a VM.

use model::Size;
use serde::{Deserialize, Serialize};

/// `POST /v1/vms/{name}/resources`. `live`/`config` default like a disk attach: both on a
/// running VM, config only on a stopped one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(default)]
    pub live: Option<bool>,
    #[serde(default)]
    pub config: Option<bool>,
}

/// vCPUs and memory, with their maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceValues {
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub memory_bytes: u64,
    pub max_memory_bytes: u64,
}

/// `GET /v1/vms/{name}/resources`: the definition's values and, while QEMU runs, what the
/// guest has now (vCPUs QEMU runs, `query-cpus-fast`; memory the balloon leaves it,
/// `query-balloon`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourcesInfo {
    pub vm: String,
    pub config: ResourceValues,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<ResourceValues>,
}

/// `POST /v1/vms/{name}/clone`: a full copy of the (stopped) VM `{name}` as `name`, or with
/// `linked` and `snapshot` (an external snapshot of `{name}`, which may be running) qcow2
/// overlays on that snapshot's frozen layers.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub name: model::VmName,
    #[serde(default)]
    pub linked: bool,
    /// With `linked`: the external (disk-only) snapshot whose layers the clone shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub start: bool,
}
