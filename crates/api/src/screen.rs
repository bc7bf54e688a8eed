//! The screen of a VM (issue 11): keys typed into it and booting from its medium. Screenshots
//! are `image/png` bodies, not types.

use serde::{Deserialize, Serialize};

/// `POST /v1/vms/{name}/keys`: exactly one of `keys` (key combinations such as
/// `ctrl-alt-delete`, `esc`, `f12`, `ctrl-alt-f2`, `sysrq`, `a`) or `text` (printable US ASCII,
/// `\n` and `\t`, at most 4096 characters, typed as keystrokes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The answer to [`KeysRequest`]: how many key events (presses of one combination) were sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeysSent {
    pub sent: u32,
}

/// `POST /v1/vms/{name}/media/boot`: boot from the CD-ROM (first in the boot order, kept in the
/// spec) and reset a running VM. No fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaBootRequest {}
