//! UEFI (OVMF on two pflash devices, Secure Boot) and the TPM (a `swtpm` socket) in the
//! machine IR.

use std::path::Path;

use model::{Firmware, MachineFamily, OvmfFiles, VmSpec};
use serde_json::{json, Value};

use crate::{ArgvError, Machine, RunPlan};

/// The block nodes QEMU's `-machine pflash0=,pflash1=` name: OVMF's code and the VM's vars.
pub const PFLASH_CODE_NODE: &str = "hv-pflash0";
pub const PFLASH_VARS_NODE: &str = "hv-pflash1";

/// What a UEFI VM and a VM with a TPM add to the machine IR.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FirmwareIr {
    /// `-machine ...,pflash0=hv-pflash0,pflash1=hv-pflash1`.
    pub pflash: bool,
    /// `-machine ...,smm=on` and the flash locked to SMM (Secure Boot).
    pub secure: bool,
    /// QEMU's end of the socket pair to the VM's `swtpm`, for `-chardev socket,fd=` and
    /// `-tpmdev emulator`.
    pub tpm_fd: Option<i32>,
}

fn pflash_nodes(node: &str, path: &Path, read_only: bool) -> [Value; 2] {
    let file = format!("{node}-file");
    [
        json!({
            "driver": "file", "filename": path.to_string_lossy(), "node-name": file,
            "auto-read-only": true, "read-only": read_only,
        }),
        json!({ "driver": "raw", "node-name": node, "file": file, "read-only": read_only }),
    ]
}

/// Adds the firmware's flash and the TPM to `m`.
pub(crate) fn lower(spec: &VmSpec, plan: &RunPlan, m: &mut Machine) -> Result<(), ArgvError> {
    if spec.firmware == Firmware::Uefi {
        let vars = plan.nvram.as_ref().ok_or_else(|| ArgvError::Unsupported {
            what: "UEFI without a variable store".into(),
            hint: "hvd copies OVMF's variables into the VM's directory when it is defined".into(),
        })?;
        let files = OvmfFiles::for_spec(spec.secure_boot);
        m.blockdevs
            .extend(pflash_nodes(PFLASH_CODE_NODE, &files.code, true));
        m.blockdevs
            .extend(pflash_nodes(PFLASH_VARS_NODE, vars, false));
        m.firmware.pflash = true;
        m.firmware.secure = spec.secure_boot;
    }
    if spec.tpm {
        let fd = plan.tpm_fd.ok_or_else(|| ArgvError::Unsupported {
            what: "a TPM without its swtpm".into(),
            hint: "hvd starts the VM's swtpm before QEMU".into(),
        })?;
        let driver = match spec.machine.family {
            MachineFamily::Q35 => "tpm-crb",
            MachineFamily::Pc => "tpm-tis",
        };
        m.devices
            .push(json!({ "driver": driver, "tpmdev": "hv-tpm0", "id": "tpm0" }));
        m.firmware.tpm_fd = Some(fd);
    }
    Ok(())
}

impl FirmwareIr {
    /// Appended to `-machine TYPE`.
    pub(crate) fn machine_props(&self) -> String {
        let mut s = String::new();
        if self.pflash {
            s.push_str(&format!(
                ",pflash0={PFLASH_CODE_NODE},pflash1={PFLASH_VARS_NODE}"
            ));
        }
        if self.secure {
            s.push_str(",smm=on");
        }
        s
    }

    /// `-global`, `-chardev` and `-tpmdev` options (before the devices).
    pub(crate) fn args(&self) -> Vec<(&'static str, String)> {
        let mut a = Vec::new();
        if self.secure {
            a.push((
                "-global",
                "driver=cfi.pflash01,property=secure,value=on".to_string(),
            ));
        }
        if let Some(fd) = self.tpm_fd {
            a.push(("-chardev", format!("socket,id=hv-tpm,fd={fd}")));
            a.push(("-tpmdev", "emulator,id=hv-tpm0,chardev=hv-tpm".to_string()));
        }
        a
    }
}
