//! The target's disks of an incoming migration (`--copy-storage`): placed in the pools of the
//! same name, made empty with the source's format and size, listed in `vms/NAME/incoming-disks`
//! BEFORE each is made, so an abort, a failure or a restart after a crash removes exactly the
//! images this migration made.

use std::io::Write;
use std::path::{Path, PathBuf};

use api::IncomingRequest;
use model::VmSpec;

use super::disks::CopyDisk;
use super::placement;
use crate::error::{EngineError, Result};
use crate::Engine;

/// The list of images an incoming migration made, in the VM's directory.
const LIST: &str = "incoming-disks";

impl Engine {
    /// The definition as this host will run it: with `--copy-storage`, each writable disk in
    /// the pool of the same name here (media where they are here). Every placement problem is
    /// one refusal, before anything is made.
    pub(crate) fn incoming_place(&self, req: &IncomingRequest) -> Result<VmSpec> {
        let offline = req.mode == api::MigrationMode::Offline;
        if !req.copy_storage && !offline {
            return Ok(req.spec.clone());
        }
        let pools = self.migration_pool_dirs()?;
        let mut spec = req.spec.clone();
        self.resolve_volumes_lenient(&mut spec);
        let (homes, cdrom) =
            placement::place(&spec, &[], &pools, |p| p.is_file()).map_err(|problems| {
                EngineError::WrongState(format!(
                    "{} cannot take the disks of VM {:?}:\n- {}",
                    super::hostname(),
                    req.vm.as_str(),
                    problems.join("\n- ")
                ))
            })?;
        let spec = placement::rewrite(&spec, &homes, cdrom);
        for d in spec.disks.iter().filter(|d| !d.readonly && !offline) {
            if d.path.exists() {
                return Err(EngineError::AlreadyExists(format!(
                    "{} already exists on {}; remove or rename it there before migrating VM {:?} with --copy-storage",
                    d.path.display(),
                    super::hostname(),
                    req.vm.as_str()
                )));
            }
        }
        Ok(spec)
    }

    /// Volume references filled in with this host's paths where the pool exists (the rest
    /// stays for placement to name).
    fn resolve_volumes_lenient(&self, spec: &mut VmSpec) {
        for d in &mut spec.disks {
            if let Some(v) = &d.vol {
                if let Ok(p) = self.vol_path(v) {
                    d.path = p;
                }
            }
        }
    }

    /// Makes the empty copies of `spec`'s writable disks (listing each first in `vm_dir`).
    pub(crate) async fn incoming_provision(
        &self,
        vm_dir: &Path,
        spec: &VmSpec,
        req: &IncomingRequest,
    ) -> Result<()> {
        if !req.copy_storage {
            return Ok(());
        }
        let list: Vec<PathBuf> = spec
            .disks
            .iter()
            .filter(|d| !d.readonly)
            .map(|d| d.path.clone())
            .collect();
        self.incoming_list_disks(vm_dir, &list)?;
        let disks: Vec<CopyDisk> = req
            .disks
            .iter()
            .map(|d| CopyDisk {
                target: d.target.clone(),
                format: d.format,
                virtual_size: d.virtual_size,
            })
            .collect();
        self.migration_provision_copies(spec, &disks).await?;
        Ok(())
    }

    /// Lists (durably) the images an incoming migration is about to make in `vm_dir`.
    pub(crate) fn incoming_list_disks(&self, vm_dir: &Path, list: &[PathBuf]) -> Result<()> {
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(vm_dir.join(LIST))?;
            for p in list {
                writeln!(f, "{}", p.display())?;
            }
            f.sync_all()
        };
        write().map_err(|e| {
            EngineError::Host(format!("cannot write {}: {e}", vm_dir.join(LIST).display()))
        })
    }

    /// Removes the images listed in `vm_dir` (a migration that did not finish).
    pub(crate) fn incoming_remove_disks(&self, vm_dir: &Path) {
        let Ok(text) = std::fs::read_to_string(vm_dir.join(LIST)) else {
            return;
        };
        let files: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        self.migration_remove_images(&files);
        let _ = std::fs::remove_file(vm_dir.join(LIST));
    }

    /// The migration finished: the images are this host's, the list goes.
    pub(crate) fn incoming_keep_disks(&self, vm_dir: &Path) {
        let _ = std::fs::remove_file(vm_dir.join(LIST));
    }
}
