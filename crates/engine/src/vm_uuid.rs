//! VM UUIDs (issue 14): each definition carries its SMBIOS system UUID. hv makes a random one
//! at define when the spec has none, keeps it across edits that leave it out, and refuses a
//! UUID another VM has. A clone gets a new one.

use std::sync::Arc;

use model::{VmSpec, VmUuid};

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// A new random (version 4) UUID.
pub(crate) fn random_uuid() -> Result<VmUuid> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| EngineError::Host(format!("cannot read random bytes for a UUID: {e}")))?;
    Ok(VmUuid::from_random(b))
}

/// Refuses `spec`'s UUID when a VM other than `except` (by id) has it.
pub(crate) fn check_unique<'a>(
    vms: impl IntoIterator<Item = &'a Arc<Vm>>,
    spec: &VmSpec,
    except: Option<i64>,
) -> Result<()> {
    let Some(u) = spec.uuid else {
        return Ok(());
    };
    for v in vms {
        if Some(v.id) != except && v.lock().spec.uuid == Some(u) {
            return Err(EngineError::AlreadyExists(format!(
                "UUID {u} is VM {}'s; two VMs cannot share one: leave uuid out and hv makes a new one",
                v.name
            )));
        }
    }
    Ok(())
}

impl Engine {
    /// Gives `spec` a UUID when it has none: `old`'s (an edit), else a new one.
    pub(crate) fn assign_uuid(&self, spec: &mut VmSpec, old: Option<&VmSpec>) -> Result<()> {
        if spec.uuid.is_none() {
            spec.uuid = match old.and_then(|o| o.uuid) {
                Some(u) => Some(u),
                None => Some(random_uuid()?),
            };
        }
        Ok(())
    }
}
