//! Each VM's QEMU in its own systemd scope (see [`host_exec::systemd`]), when systemd runs the
//! host; otherwise VMs stay in hvd's process group, as on development machines, and hvd says
//! why once in its log and in `hv host check`. Re-attaching after an hvd restart changes
//! nothing: the scope lives as long as its processes.

use host_exec::systemd::{self, Presence, ScopeLimits};
use model::VmSpec;

use crate::{Engine, EngineError};

/// Decides once, at engine start, and logs the reason when VMs get no scopes.
pub(crate) fn detect_and_log() -> Presence {
    let presence = systemd::detect();
    match &presence {
        Presence::Running => tracing::info!(
            slice = systemd::SLICE,
            "systemd runs this host: each VM's QEMU gets its own scope"
        ),
        Presence::Absent(why) => tracing::info!("systemd {why}: VMs stay in hvd's process group"),
    }
    presence
}

impl Engine {
    /// Puts a just-started QEMU (and, later, the VM's other helpers, e.g. its swtpm: pass
    /// their PIDs too) into `hv-vm-NAME.scope`. Does nothing without systemd.
    pub(crate) async fn place_in_scope(
        &self,
        spec: &VmSpec,
        pids: &[u32],
    ) -> Result<(), EngineError> {
        if self.inner.systemd != Presence::Running {
            return Ok(());
        }
        let limits = ScopeLimits {
            memory_bytes: spec.memory.0,
            vcpus: spec.vcpus,
        };
        systemd::start_scope(spec.name.as_str(), pids, limits)
            .await
            .map(drop)
            .map_err(|e| {
                EngineError::Host(format!(
                    "cannot give the VM its own systemd scope ({e}); without one, restarting hvd would stop it: check that dbus runs (systemctl status dbus)"
                ))
            })
    }

    /// The `systemd` line of `hv host check`.
    pub(crate) fn systemd_check(&self) -> api::HostCheck {
        match &self.inner.systemd {
            Presence::Running => api::HostCheck {
                name: "systemd".into(),
                status: api::CheckStatus::Pass,
                detail: format!(
                    "running: each VM's QEMU gets its own scope (hv-vm-NAME.scope in {})",
                    systemd::SLICE
                ),
                hint: None,
            },
            Presence::Absent(why) => api::HostCheck {
                name: "systemd".into(),
                status: api::CheckStatus::Warn,
                detail: format!("{why}: VMs stay in hvd's process group"),
                hint: Some(
                    "VMs survive an hvd restart here; under a service manager that kills hvd's whole process group or cgroup they would not: run hvd from its systemd unit (hvd.service)"
                        .into(),
                ),
            },
        }
    }
}
