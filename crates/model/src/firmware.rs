//! The VM's firmware (SeaBIOS or OVMF's UEFI, with or without Secure Boot) and its TPM, and
//! the pure facts about them: which OVMF files a VM uses and which combinations are valid.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{string_enum, MachineFamily, SpecError, VmSpec};

string_enum!(
    /// The firmware a VM boots with: SeaBIOS (`bios`, QEMU's default) or OVMF (`uefi`).
    Firmware, "firmware", { Bios = "bios", Uefi = "uefi" });

#[allow(clippy::derivable_impls)] // the enum comes from `string_enum!`
impl Default for Firmware {
    fn default() -> Self {
        Firmware::Bios
    }
}

impl Firmware {
    /// For `skip_serializing_if`: a BIOS VM's spec does not mention its firmware.
    pub fn is_bios(&self) -> bool {
        *self == Firmware::Bios
    }
}

/// Where Debian's `ovmf` package puts its images (4 MiB flash layout).
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// The OVMF files of one VM: the firmware code (read-only, shared by all VMs) and the template
/// of its variable store (copied per VM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvmfFiles {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

impl OvmfFiles {
    /// Plain UEFI: `OVMF_CODE_4M.fd` + empty `OVMF_VARS_4M.fd`. Secure Boot: the SMM build
    /// `OVMF_CODE_4M.secboot.fd` (it needs q35 and `smm=on`) + `OVMF_VARS_4M.ms.fd`, which has
    /// Microsoft's keys enrolled and Secure Boot enabled.
    pub fn for_spec(secure_boot: bool) -> OvmfFiles {
        OvmfFiles::in_dir(Path::new(OVMF_DIR), secure_boot)
    }

    pub fn in_dir(dir: &Path, secure_boot: bool) -> OvmfFiles {
        let (code, vars) = if secure_boot {
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
        } else {
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
        };
        OvmfFiles {
            code: dir.join(code),
            vars_template: dir.join(vars),
        }
    }
}

/// The file name of a VM's own UEFI variable store, in its directory (`state/vms/NAME/`).
pub const NVRAM_FILE: &str = "nvram.fd";
/// The directory of a VM's TPM state, in its directory.
pub const TPM_DIR: &str = "tpm";

/// The checks of firmware, Secure Boot and TPM that need no host access.
pub(crate) fn validate(spec: &VmSpec) -> Result<(), SpecError> {
    if spec.secure_boot && spec.firmware != Firmware::Uefi {
        return Err(SpecError::new(
            "secure_boot",
            "Secure Boot is a UEFI feature; add --firmware uefi",
        ));
    }
    if spec.secure_boot && spec.machine.family != MachineFamily::Q35 {
        return Err(SpecError::new(
            "secure_boot",
            format!(
                "Secure Boot needs the q35 machine (OVMF's Secure Boot build runs in SMM, which the {} machine lacks); add --machine q35",
                spec.machine
            ),
        ));
    }
    if spec.firmware == Firmware::Uefi && spec.kernel.is_some() {
        return Err(SpecError::new(
            "firmware",
            "direct kernel boot (--kernel) bypasses the firmware; use --firmware bios, or boot the kernel from the disk's EFI system partition",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        firmware: &str,
        secure_boot: bool,
        machine: &str,
        kernel: bool,
    ) -> Result<(), SpecError> {
        let mut s = VmSpec::new("f".parse().unwrap());
        s.firmware = firmware.parse()?;
        s.secure_boot = secure_boot;
        s.machine = machine.parse()?;
        if kernel {
            s.kernel = Some(crate::KernelBoot {
                path: "/k".into(),
                initrd: None,
                cmdline: None,
            });
        }
        s.validate()
    }

    #[test]
    fn firmware_combinations() {
        assert!(check("bios", false, "pc", true).is_ok());
        assert!(check("uefi", false, "pc", false).is_ok());
        assert!(check("uefi", true, "q35", false).is_ok());
        assert!(check("uefi", true, "pc-q35-7.2", false).is_ok());
        let e = check("bios", true, "q35", false).unwrap_err();
        assert!(e.message.contains("--firmware uefi"), "{e:?}");
        let e = check("uefi", true, "pc", false).unwrap_err();
        assert!(e.message.contains("--machine q35"), "{e:?}");
        let e = check("uefi", false, "q35", true).unwrap_err();
        assert_eq!(e.field, "firmware");
        let e = "efi".parse::<Firmware>().unwrap_err();
        assert!(e.message.contains("bios, uefi"), "{e:?}");
    }

    #[test]
    fn bios_specs_do_not_mention_firmware() {
        let s = VmSpec::new("f".parse().unwrap());
        let json = serde_json::to_value(&s).unwrap();
        for k in ["firmware", "secure_boot", "tpm"] {
            assert!(json.get(k).is_none(), "{json}");
        }
        let mut u = s.clone();
        u.firmware = Firmware::Uefi;
        u.secure_boot = true;
        u.tpm = true;
        let json = serde_json::to_value(&u).unwrap();
        assert_eq!(json["firmware"], "uefi");
        assert_eq!(json["secure_boot"], true);
        assert_eq!(json["tpm"], true);
        let back: VmSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn ovmf_files() {
        let f = OvmfFiles::for_spec(true);
        assert_eq!(f.code, Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"));
        assert_eq!(
            f.vars_template,
            Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
        );
        let f = OvmfFiles::for_spec(false);
        assert_eq!(f.code, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    }
}
