//! QEMUs of this state dir that hvd has no record of: an earlier hvd died between spawning
//! one and saving its pid, or its VM's row is gone. At startup each is adopted by the VM it
//! belongs to (then re-attached like any other) or stopped.

use std::path::Path;
use std::sync::Arc;

use host_exec::PidFd;

use crate::Engine;

/// The VM a QEMU command line belongs to, when it is one of hv's for `state_dir`: hv's QEMUs
/// have the `hv-qmp` monitor and log their serial console to `STATE/vms/NAME/console.log`.
pub(crate) fn vm_of_cmdline(argv: &[String], state_dir: &Path) -> Option<String> {
    if !argv.iter().any(|a| a.contains("id=hv-qmp,")) {
        return None;
    }
    let prefix = format!("logfile={}/vms/", state_dir.display());
    argv.iter().find_map(|a| {
        let rest = &a[a.find(&prefix)? + prefix.len()..];
        let (name, tail) = rest.split_once('/')?;
        tail.starts_with("console.log")
            .then(|| name.to_string())
            .filter(|n| !n.is_empty())
    })
}

/// The running QEMUs of `state_dir`, with the VM each belongs to.
fn running_qemus(state_dir: &Path) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter_map(|pid| {
            let argv = host_exec::process_cmdline(pid)?;
            Some((pid, vm_of_cmdline(&argv, state_dir)?))
        })
        .collect()
}

impl Engine {
    /// Gives every QEMU of this state dir that no VM record names to its VM (when that VM
    /// has no live QEMU of its own), or stops it. Runs before re-attaching.
    pub(crate) async fn adopt_or_stop_orphans(&self) {
        for (pid, name) in running_qemus(&self.inner.cfg.state_dir) {
            let vm = self.read_vms().get(&name).cloned();
            let recorded = vm.as_ref().and_then(|vm| vm.lock().rec.pid);
            if recorded == Some(pid) {
                continue;
            }
            let owner_alive = recorded.is_some_and(|p| {
                host_exec::process_cmdline(p)
                    .is_some_and(|argv| vm_of_cmdline(&argv, &self.inner.cfg.state_dir).is_some())
            });
            match vm {
                Some(vm) if !owner_alive => {
                    tracing::warn!(vm = name, pid, "adopting a QEMU hvd had no record of");
                    let spec = vm.lock().spec.clone();
                    // Its taps carry the names hv gives this VM's NICs (removed when it ends).
                    let taps = self.predicted_taps(&vm, &spec).into_iter().flatten();
                    let mut st = vm.lock();
                    st.rec.pid = Some(pid);
                    st.rec.taps = taps.collect();
                    drop(st);
                    if let Err(e) = self.persist_runtime_pub(&vm) {
                        tracing::error!(vm = name, error = %e, "cannot record the adopted QEMU");
                    }
                }
                _ => {
                    tracing::warn!(
                        vm = name,
                        pid,
                        "stopping a QEMU of this state dir that belongs to no VM"
                    );
                    match PidFd::open(pid).map(Arc::new) {
                        Ok(p) => {
                            if p.signal(libc::SIGKILL).is_ok() {
                                p.exited().await;
                            }
                        }
                        Err(e) => tracing::warn!(pid, error = %e, "cannot stop the QEMU"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(argv: &[&str], state_dir: &str) -> Option<String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        vm_of_cmdline(&argv, Path::new(state_dir))
    }

    #[test]
    fn qemus_of_this_state_dir_are_found_by_their_console_log() {
        let ours = [
            "/usr/bin/qemu-system-x86_64",
            "-chardev",
            "socket,id=hv-qmp,fd=3,server=on,wait=off",
            "-chardev",
            "socket,id=hv-serial0,fd=4,server=on,wait=off,logfile=/var/lib/hv/vms/web/console.log,logappend=on",
        ];
        assert_eq!(check(&ours, "/var/lib/hv").as_deref(), Some("web"));
        assert_eq!(check(&ours, "/var/lib/hv2"), None, "another state dir");
        assert_eq!(check(&ours, "/var/lib"), None);
        assert_eq!(check(&ours[..2], "/var/lib/hv"), None);
        assert_eq!(check(&[ours[0], ours[4]], "/var/lib/hv"), None, "no hv-qmp");
    }
}
