//! UEFI and TPM on the host: each UEFI VM's own copy of OVMF's variable store
//! (`state/vms/NAME/nvram.fd`, made at define from Debian's `ovmf`, removed with the VM's
//! directory at undefine), and each TPM VM's `swtpm` with its state in `state/vms/NAME/tpm/`.
//!
//! `swtpm` runs as the VM's QEMU uid, in its own session like QEMU, and talks to QEMU over a
//! socket pair hvd makes: swtpm gets one end as its control channel (`clientfd=`), QEMU the
//! other (`-chardev socket,fd=`). With `--terminate` it exits as soon as QEMU's end closes, so
//! a destroy, a crash, a failed start or a stopped hvd that never saw the end leave no swtpm;
//! nothing needs re-attaching after an hvd restart.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use host_storage::access::Access;
use model::{Firmware, OvmfFiles, VmSpec, VmState};

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// The swtpm binary (Debian `swtpm`).
pub const SWTPM: &str = "swtpm";

/// The fd QEMU gets its end of the swtpm socket pair on.
pub(crate) const TPM_FD: i32 = 5;

fn host(what: &str, path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Host(format!("cannot {what} {}: {e}", path.display()))
}

impl Engine {
    /// The VM's UEFI variable store.
    pub(crate) fn nvram_path(&self, name: &str) -> PathBuf {
        self.inner.cfg.vm_dir(name).join(model::NVRAM_FILE)
    }

    /// The directory of the VM's TPM state.
    pub(crate) fn tpm_dir(&self, name: &str) -> PathBuf {
        self.inner.cfg.vm_dir(name).join(model::TPM_DIR)
    }

    /// Makes the VM's variable store from OVMF's template, unless it has one (a VM switched to
    /// UEFI by an edit gets it at its next start). Returns the file when it made it.
    pub(crate) fn ensure_nvram(&self, spec: &VmSpec) -> Result<Option<PathBuf>> {
        if spec.firmware != Firmware::Uefi {
            return Ok(None);
        }
        let path = self.nvram_path(spec.name.as_str());
        if path.exists() {
            return Ok(None);
        }
        let files = OvmfFiles::for_spec(spec.secure_boot);
        for f in [&files.code, &files.vars_template] {
            if !f.is_file() {
                return Err(EngineError::Host(format!(
                    "UEFI needs {}, which is missing; install Debian's ovmf package (apt-get install ovmf)",
                    f.display()
                )));
            }
        }
        let dir = self.inner.cfg.vm_dir(spec.name.as_str());
        std::fs::create_dir_all(&dir).map_err(|e| host("create", &dir, e))?;
        host_storage::access::make_dir_private(&dir)
            .map_err(|e| EngineError::Host(e.to_string()))?;
        // Temp + rename: a half-copied store is never taken for the VM's.
        let tmp = dir.join(format!(".{}.tmp", model::NVRAM_FILE));
        let copied = std::fs::copy(&files.vars_template, &tmp)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(host("copy OVMF's variable store to", &path, e));
        }
        host_storage::access::make_private(&path).map_err(|e| EngineError::Host(e.to_string()))?;
        tracing::info!(vm = %spec.name, template = %files.vars_template.display(), "UEFI variable store made");
        Ok(Some(path))
    }

    /// Lets the VM's QEMU read OVMF's code and read and write its own variable store.
    pub(crate) fn grant_firmware(&self, vm: &Vm, spec: &VmSpec) -> Result<Option<PathBuf>> {
        if spec.firmware != Firmware::Uefi {
            return Ok(None);
        }
        self.ensure_nvram(spec)?;
        let files = OvmfFiles::for_spec(spec.secure_boot);
        let nvram = self.nvram_path(spec.name.as_str());
        self.grant(vm, &files.code, Access::Read)?;
        self.grant(vm, &nvram, Access::ReadWrite)?;
        Ok(Some(nvram))
    }

    /// Starts the VM's swtpm (as its QEMU uid) and returns QEMU's end of their socket pair.
    pub(crate) fn start_tpm(&self, vm: &Vm, spec: &VmSpec) -> Result<Option<OwnedFd>> {
        if !spec.tpm {
            return Ok(None);
        }
        let swtpm = host_exec::which(SWTPM).ok_or_else(|| {
            EngineError::Host(
                "--tpm needs swtpm, which is not installed; install Debian's swtpm package (apt-get install swtpm)"
                    .into(),
            )
        })?;
        let ids = self.qemu_ids(vm.id)?;
        let dir = self.tpm_dir(&vm.name);
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| host("create", &dir, e))?;
        }
        // The state is the VM's: owned by its uid, reachable only while it runs (the VM's
        // directory is private and searchable by that uid only through the grant below).
        std::os::unix::fs::chown(&dir, Some(ids.uid), Some(ids.gid))
            .map_err(|e| host("give the VM's uid", &dir, e))?;
        self.grant(vm, &dir, Access::Search)?;
        let log_path = self.inner.cfg.vm_dir(&vm.name).join("swtpm.log");
        crate::logcap::rotate_if_over(&log_path, self.inner.cfg.log_cap);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| host("open", &log_path, e))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| EngineError::Host(format!("cannot make the TPM's socket pair: {e}")))?;
        let argv: Vec<std::ffi::OsString> = vec![
            "socket".into(),
            "--tpm2".into(),
            "--tpmstate".into(),
            format!(
                "dir={},mode=0600",
                dir.display().to_string().replace(',', ",,")
            )
            .into(),
            "--ctrl".into(),
            "type=unixio,clientfd=3".into(),
            "--terminate".into(),
        ];
        let d =
            host_exec::spawn_detached(&swtpm, &argv, vec![(OwnedFd::from(theirs), 3)], log, ids)
                .map_err(|e| EngineError::Host(e.to_string()))?;
        tracing::info!(vm = %vm.name, pid = d.pid, "swtpm started");
        // Reaped when it ends (QEMU's end closed); an hvd that is gone leaves that to init.
        let name = vm.name.clone();
        let mut child = d.child;
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(vm = %name, status = ?status.ok(), "swtpm ended");
        });
        Ok(Some(OwnedFd::from(ours)))
    }

    /// Internal snapshots with RAM (`snapshot-save`) cannot hold OVMF's variable store, a raw
    /// pflash device: reverting one would pair the RAM with other variables.
    pub(crate) fn refuse_ram_snapshot(&self, spec: &VmSpec, state: VmState) -> Result<()> {
        if spec.firmware == Firmware::Uefi && matches!(state, VmState::Running | VmState::Paused) {
            return Err(EngineError::Invalid(format!(
                "VM {} boots with UEFI: an internal snapshot of a running VM saves its RAM but cannot hold the UEFI variable store (pflash), so reverting it could break the guest; take a disk-only (external) snapshot instead (hv snapshot create {} NAME --disk-only), or shut the VM down first",
                spec.name, spec.name
            )));
        }
        Ok(())
    }
}

impl Engine {
    /// `hv host check`: can VMs have UEFI (Debian's `ovmf`) and a TPM (Debian's `swtpm`)?
    pub(crate) fn firmware_checks(&self) -> Vec<api::HostCheck> {
        let check = |name: &str, missing: Vec<String>, detail: String, hint: &str| api::HostCheck {
            name: name.into(),
            status: if missing.is_empty() {
                api::CheckStatus::Pass
            } else {
                api::CheckStatus::Warn
            },
            detail: if missing.is_empty() {
                detail
            } else {
                format!("missing: {}", missing.join(", "))
            },
            hint: (!missing.is_empty()).then(|| hint.to_string()),
        };
        let ovmf: Vec<String> = [OvmfFiles::for_spec(false), OvmfFiles::for_spec(true)]
            .iter()
            .flat_map(|f| [f.code.clone(), f.vars_template.clone()])
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        let swtpm = host_exec::which(SWTPM);
        vec![
            check(
                "uefi firmware",
                ovmf,
                format!(
                    "OVMF in {} (--firmware uefi, --secure-boot)",
                    model::OVMF_DIR
                ),
                "install Debian's ovmf package to run VMs with --firmware uefi",
            ),
            check(
                "tpm emulator",
                swtpm
                    .is_none()
                    .then(|| SWTPM.to_string())
                    .into_iter()
                    .collect(),
                format!(
                    "{} (--tpm)",
                    swtpm.map(|p| p.display().to_string()).unwrap_or_default()
                ),
                "install Debian's swtpm package to run VMs with --tpm",
            ),
        ]
    }
}

impl Engine {
    /// `hv edit` that changes the firmware or Secure Boot: the variable store came from the
    /// other template (with or without Microsoft's keys), so it is removed and made again
    /// from the right one (at once for UEFI; a BIOS VM has none). Only while the VM is off:
    /// its QEMU has the store open.
    pub(crate) fn firmware_edited(&self, vm: &Vm, old: &VmSpec, new: &VmSpec) -> Result<()> {
        if (old.firmware, old.secure_boot) == (new.firmware, new.secure_boot) {
            return Ok(());
        }
        if vm.state().is_active() {
            return Err(EngineError::Invalid(format!(
                "VM {} is running; change its firmware or Secure Boot after it is shut down (its QEMU has the UEFI variable store open)",
                vm.name
            )));
        }
        let path = self.nvram_path(&vm.name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(vm = %vm.name, "UEFI variable store removed: the firmware changed")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(host("remove", &path, e)),
        }
        self.ensure_nvram(new).map(drop)
    }
}
