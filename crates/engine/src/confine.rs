//! QEMU confinement: each VM's QEMU runs as its own unprivileged uid and gid
//! (`Config::qemu_uid_base` + the VM's id), with no capabilities and QEMU's seccomp sandbox, and
//! reaches by name only what hvd grants that uid while it runs (POSIX ACL entries, see
//! `host_storage::access`): its disk images and every layer below them, CD-ROM, kernel and
//! initrd, its console log and the directories on the way. Every grant is recorded in the
//! VM's runtime record before QEMU can use it and taken back when QEMU ends (also when it ended
//! while hvd was down: the record survives). Sockets and the log come in as file descriptors
//! (but the VNC socket, which QEMU binds in its own private directory, see `display.rs`);
//! taps are owned by the VM's uid and gid.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use host_exec::Credentials;
use host_storage::access::{self, Access};
use model::DiskFormat;

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

/// Default first uid/gid of QEMU processes: 0x70000000, above the ranges useradd hands out as
/// subordinate ids (up to 600100000) and systemd-nspawn's container range (up to 0x6FFFFFFF).
pub const DEFAULT_QEMU_UID_BASE: u32 = 0x7000_0000;

/// How many VM ids `hv host check` looks at above the base for clashes with real accounts.
const CHECKED_IDS: u32 = 1 << 20;

/// Accounts in `/etc/passwd` or `/etc/group` text whose id is in `range`.
fn accounts_in(text: &str, range: std::ops::Range<u64>) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u64 = f.nth(1)?.parse().ok()?;
            range.contains(&id).then(|| format!("{name} ({id})"))
        })
        .collect()
}

fn denied(e: access::AccessError) -> EngineError {
    EngineError::Host(e.to_string())
}

impl Engine {
    /// The uid and gid the QEMU of VM `vm_id` runs as.
    pub(crate) fn qemu_ids(&self, vm_id: i64) -> Result<Credentials> {
        let base = self.inner.cfg.qemu_uid_base;
        u32::try_from(vm_id)
            .ok()
            .and_then(|id| base.checked_add(id))
            .filter(|id| *id < u32::MAX - 1 && base > 0)
            .map(|id| Credentials {
                uid: id,
                gid: id,
                group: None,
            })
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "VM id {vm_id} has no QEMU uid under --qemu-uid-base {base}; choose a base that leaves room for every VM id"
                ))
            })
    }

    /// The group a KVM QEMU also runs in: the one that owns `/dev/kvm` with read-write group
    /// access (Debian's `kvm`, udev's rule), unless that is root's. Without udev (`/dev/kvm`
    /// root's alone) there is none, and the ACL entry `grant` gives is what lets QEMU in.
    pub(crate) fn kvm_group() -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/dev/kvm").ok()?;
        (m.gid() != 0 && m.mode() & 0o060 == 0o060).then_some(m.gid())
    }

    /// Lets the VM's QEMU reach `path` with `access`, and records what changed.
    pub(crate) fn grant(&self, vm: &Vm, path: &Path, access: Access) -> Result<()> {
        let uid = self.qemu_ids(vm.id)?.uid;
        let changed = access::grant_path(path, uid, access).map_err(denied)?;
        if changed.is_empty() {
            return Ok(());
        }
        {
            let mut st = vm.lock();
            for p in changed {
                let p = p.display().to_string();
                if !st.rec.grants.contains(&p) {
                    st.rec.grants.push(p);
                }
            }
        }
        // A grant nobody recorded could never be taken back: fail instead.
        self.persist_runtime_pub(vm)
    }

    /// The images hv's records give `vm`: its disks and the layers of its external snapshots.
    pub(crate) fn own_images(&self, vm: &Vm) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = vm
            .lock()
            .spec
            .disks
            .iter()
            .map(|d| d.path.clone())
            .collect();
        let rows = self.inner.store.load_snapshots(vm.id).unwrap_or_default();
        for d in rows.iter().flat_map(|r| &r.disks) {
            out.extend([d.image.clone(), d.overlay.clone()]);
        }
        out
    }

    /// VMs other than `vm` that have `file` as a disk or CD-ROM, or as a layer of one of their
    /// external snapshots.
    fn other_owners(&self, vm: &Vm, file: &Path) -> Vec<String> {
        let mut out: Vec<String> = self
            .users_of(file)
            .into_iter()
            .filter(|n| *n != vm.name)
            .collect();
        let others: Vec<Arc<Vm>> = self
            .read_vms()
            .values()
            .filter(|v| v.id != vm.id)
            .cloned()
            .collect();
        for v in others {
            let rows = self.inner.store.load_snapshots(v.id).unwrap_or_default();
            let has = rows
                .iter()
                .flat_map(|r| &r.disks)
                .any(|d| d.image == file || d.overlay == file);
            if has && !out.contains(&v.name) {
                out.push(v.name.clone());
            }
        }
        out
    }

    /// Lets the VM's QEMU open a disk image (read-write when `writable`) and read every layer
    /// of its backing chain. The image becomes private (no access for "other"). The
    /// chain is followed only with known formats: a layer whose format the layer above does not
    /// record is granted as the last one.
    ///
    /// A writable image's header is QEMU's to write, so a compromised QEMU could point its
    /// backing link anywhere before the next start: a backing layer must be a regular file in a
    /// pool or next to the layer above it, and no other VM's disk, CD-ROM or snapshot layer.
    pub(crate) async fn grant_disk(
        &self,
        vm: &Vm,
        path: &Path,
        format: Option<DiskFormat>,
        writable: bool,
    ) -> Result<()> {
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let pools: Vec<PathBuf> = self
            .inner
            .store
            .load_pools()?
            .into_iter()
            .map(|p| p.path)
            .collect();
        access::make_private(path).map_err(denied)?;
        self.grant(vm, path, access)?;
        let Some(format) = format else {
            return Ok(());
        };
        // The chain as `images` follows it (recorded formats, no probing), checked here for
        // where a compromised QEMU could have pointed it.
        let chain = self.chain_below(path, format, "disk").await?;
        let mut above: PathBuf = path.to_path_buf();
        for layer in chain.iter().map(|l| &l.path) {
            let dir = layer.parent().map(Path::to_path_buf);
            if dir.as_deref() != above.parent() && !pools.iter().any(|p| Some(p) == dir.as_ref()) {
                return Err(EngineError::Invalid(format!(
                    "the backing file {} of {} is neither in a pool nor next to the image above it; hv gives a VM's QEMU only images there (the image may have been rewritten to point elsewhere); move the backing file into a pool and rebase onto it",
                    layer.display(),
                    path.display()
                )));
            }
            if !std::fs::metadata(layer).is_ok_and(|m| m.is_file()) {
                return Err(EngineError::Invalid(format!(
                    "the backing file {} of {} is not a regular file; hv gives a VM's QEMU regular image files only",
                    layer.display(),
                    path.display()
                )));
            }
            let owners = self.other_owners(vm, layer);
            // A linked clone reads its source's frozen snapshot layer (`clone_linked.rs`).
            if !owners.is_empty() && !self.frozen_for_clone(vm, &above, layer)? {
                return Err(EngineError::Invalid(format!(
                    "the backing chain of {} reaches {}, which belongs to VM {}; hv does not let one VM's QEMU read another VM's disk (the image may have been rewritten to point there); give this VM its own copy (hv vol clone without --linked)",
                    path.display(),
                    layer.display(),
                    owners.join(", ")
                )));
            }
            // Only read access below: a backing layer's own modes are its owner's business.
            self.grant(vm, layer, Access::Read)?;
            above = layer.clone();
        }
        Ok(())
    }

    /// Takes back the VM's access to those of `files` its QEMU no longer has open (after an
    /// unplug); the rest stay until QEMU ends.
    pub(crate) async fn revoke_closed(&self, vm: &Vm, files: &[PathBuf]) {
        let Ok(qmp) = vm.qmp() else { return };
        let open: Vec<String> = match qmp
            .execute(
                "query-named-block-nodes",
                Some(serde_json::json!({ "flat": true })),
            )
            .await
        {
            Ok(nodes) => nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["file"].as_str().map(str::to_string))
                .collect(),
            Err(e) => {
                tracing::warn!(vm = %vm.name, error = %e, "cannot list QEMU's open images; access stays until it ends");
                return;
            }
        };
        let Ok(uid) = self.qemu_ids(vm.id).map(|c| c.uid) else {
            return;
        };
        for f in files {
            let name = f.display().to_string();
            if open.contains(&name) {
                continue;
            }
            match access::revoke(f, uid) {
                Ok(()) => vm.lock().rec.grants.retain(|g| *g != name),
                Err(e) => {
                    tracing::warn!(vm = %vm.name, path = name, error = %e, "cannot take back QEMU's access")
                }
            }
        }
        if let Err(e) = self.persist_runtime_pub(vm) {
            tracing::error!(vm = %vm.name, error = %e, "cannot record the access taken back");
        }
    }

    /// `hv host check`: which ids QEMU runs as, and whether real accounts use them.
    pub(crate) fn confinement_check(&self) -> api::HostCheck {
        let base = self.inner.cfg.qemu_uid_base;
        let range = u64::from(base)..u64::from(base) + u64::from(CHECKED_IDS);
        let clash: Vec<String> = ["/etc/passwd", "/etc/group"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| accounts_in(&t, range.clone()))
            .collect();
        let detail = format!(
            "each VM's QEMU runs as uid and gid {base} + the VM's id, with no capabilities and QEMU's seccomp sandbox; it reaches only its own files (ACL entries while it runs)"
        );
        match clash.is_empty() {
            true => api::HostCheck {
                name: "qemu confinement".into(),
                status: api::CheckStatus::Pass,
                detail,
                hint: None,
            },
            false => api::HostCheck {
                name: "qemu confinement".into(),
                status: api::CheckStatus::Warn,
                detail: format!(
                    "{detail}; but accounts use ids in that range: {}",
                    clash.join(", ")
                ),
                hint: Some(
                    "start hvd with another --qemu-uid-base, so no account shares a VM's files"
                        .into(),
                ),
            },
        }
    }

    /// Takes back everything granted to the VM's QEMU (when it has ended).
    pub(crate) fn revoke_all(&self, vm: &Vm) {
        let grants = std::mem::take(&mut vm.lock().rec.grants);
        if grants.is_empty() {
            return;
        }
        let uid = match self.qemu_ids(vm.id) {
            Ok(c) => c.uid,
            Err(e) => {
                tracing::error!(vm = %vm.name, error = %e, "cannot take back QEMU's file access");
                return;
            }
        };
        // Files before the directories above them.
        for p in grants.iter().rev() {
            if let Err(e) = access::revoke(Path::new(p), uid) {
                tracing::warn!(vm = %vm.name, path = p, error = %e, "cannot take back QEMU's access");
            }
        }
        if let Err(e) = self.persist_runtime_pub(vm) {
            tracing::error!(vm = %vm.name, error = %e, "cannot record the access taken back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_check_names_accounts_whose_ids_clash_with_qemu_ids() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nsub:x:1879048199:100::/:/bin/sh\nbad line\n";
        let base = u64::from(DEFAULT_QEMU_UID_BASE);
        assert_eq!(accounts_in(passwd, base..base + 10), ["sub (1879048199)"]);
        assert!(accounts_in(passwd, 1..1000).is_empty());
    }
}
