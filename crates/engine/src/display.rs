//! The VM's screen: the private VNC socket hvd's browser console connects to.
//!
//! Unless a VM has `graphics = none`, its QEMU listens for VNC on `STATE/run/ID.vnc/sock`. The
//! directory belongs to the VM's QEMU uid and has mode 0700, so only that uid (QEMU binds the
//! socket itself) and root (hvd) can enter it; the directories above it get a search-only ACL
//! entry for that uid while QEMU runs (see `confine.rs`). The socket's path follows from the
//! VM's id alone, so a restarted hvd (re-attach, orphan adoption) finds it without records.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use model::GraphicsSpec;

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

impl Engine {
    /// The directory holding the VM's private VNC socket.
    pub(crate) fn vnc_dir(&self, vm_id: i64) -> PathBuf {
        self.inner.cfg.run_dir().join(format!("{vm_id}.vnc"))
    }

    /// Where the VM's QEMU listens for hvd's VNC connection.
    pub(crate) fn vnc_socket_path(&self, vm_id: i64) -> PathBuf {
        self.vnc_dir(vm_id).join("sock")
    }

    /// Makes a fresh, empty socket directory for the VM's QEMU (owned by its uid, 0700) and
    /// lets that uid reach it. Before a start; nothing when the VM has no console.
    pub(crate) fn prepare_vnc_dir(&self, vm: &Vm, graphics: &GraphicsSpec) -> Result<()> {
        if *graphics == GraphicsSpec::None {
            return Ok(());
        }
        let dir = self.vnc_dir(vm.id);
        remove_vnc_dir(&dir);
        let ids = self.qemu_ids(vm.id)?;
        let host = |what: &str, e: std::io::Error| {
            EngineError::Host(format!("cannot {what} {}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| host("create", e))?;
        std::os::unix::fs::chown(&dir, Some(ids.uid), Some(ids.gid))
            .map_err(|e| host("give the VM's QEMU uid", e))?;
        // The run dir and the directories above it are private: QEMU may pass through them.
        self.grant(
            vm,
            &self.inner.cfg.run_dir(),
            host_storage::access::Access::Search,
        )
    }

    /// The VM's private VNC socket, for hvd's browser console (`/v1/vms/{name}/vnc`). An error
    /// when the VM has no console (`graphics = none`) or its QEMU is not running.
    pub fn vnc_socket(&self, name: &str) -> Result<PathBuf> {
        let vm = self.get(name)?;
        let (running, graphics) = {
            let st = vm.lock();
            (st.pidfd.is_some(), st.spec.graphics.clone())
        };
        let path = self.vnc_socket_path(vm.id);
        if running && path.exists() {
            return Ok(path);
        }
        if graphics == GraphicsSpec::None || running {
            return Err(no_console(name));
        }
        Err(EngineError::WrongState(format!(
            "VM {name} is not running, so it has no screen; start it with hv start {name}"
        )))
    }
}

/// The error for a VM without a graphical console.
pub(crate) fn no_console(name: &str) -> EngineError {
    EngineError::WrongState(format!(
        "VM {name} has no graphical console (graphics none); redefine it with --graphics console"
    ))
}

/// Removes a VM's socket directory and what QEMU left in it (a directory that is not there is
/// fine). `remove_dir_all` does not follow symlinks a compromised QEMU may have put there.
pub(crate) fn remove_vnc_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the VNC socket directory")
        }
    }
}
