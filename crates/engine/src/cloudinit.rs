//! The cloud-init NoCloud seed of a VM: `STATE/vms/NAME/cidata.img`, built by `cidata` from the
//! spec's `cloud_init` at each start when its bytes would change (the builder is
//! deterministic, so an unchanged spec leaves the file alone), attached read-only and granted
//! `r--` to the VM's QEMU. It is hv's file: rewritten only while QEMU is not running, removed
//! when the spec drops `cloud_init` (at the next start) and with the VM's directory at
//! undefine.

use std::io::Write;
use std::path::{Path, PathBuf};

use model::VmSpec;

use crate::error::{EngineError, Result};

/// The seed's file name in the VM's directory.
pub(crate) const SEED_FILE: &str = "cidata.img";

/// Where a VM with this directory keeps its seed.
pub(crate) fn seed_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(SEED_FILE)
}

/// The seed for `spec`, written into `vm_dir` if missing or different; `None` (and any old
/// seed removed) when the spec has no `cloud_init`.
pub(crate) fn prepare(vm_dir: &Path, spec: &VmSpec) -> Result<Option<PathBuf>> {
    let path = seed_path(vm_dir);
    let Some(ci) = &spec.cloud_init else {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(vm = %spec.name, "removed the cloud-init seed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::Host(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )))
            }
        }
        return Ok(None);
    };
    let files = ci.compose(spec.name.as_str())?;
    let bytes =
        cidata::build(&files).map_err(|e| EngineError::Host(format!("{e}: {}", source_of(&e))))?;
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(Some(path));
    }
    write_atomic(&path, &bytes)
        .map_err(|e| EngineError::Host(format!("cannot write {}: {e}", path.display())))?;
    tracing::info!(vm = %spec.name, seed = %path.display(), "wrote the cloud-init seed");
    Ok(Some(path))
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

/// temp + fsync + rename, so a crash leaves the old seed or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("img.tmp");
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_written_once_rewritten_on_change_and_removed_without_cloud_init() {
        let dir = std::env::temp_dir().join(format!("hv-seed-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = VmSpec::new("s1".parse().unwrap());
        spec.cloud_init = Some(model::CloudInit {
            hostname: Some("one".into()),
            ..Default::default()
        });
        let p = prepare(&dir, &spec).unwrap().unwrap();
        let first = std::fs::metadata(&p).unwrap().modified().unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        prepare(&dir, &spec).unwrap();
        let again = std::fs::metadata(&p).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&again),
            ino,
            "unchanged: not rewritten"
        );
        assert_eq!(again.modified().unwrap(), first);
        spec.cloud_init.as_mut().unwrap().hostname = Some("two".into());
        prepare(&dir, &spec).unwrap();
        let changed = std::fs::metadata(&p).unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&changed),
            ino,
            "changed: rewritten"
        );
        spec.cloud_init = None;
        assert_eq!(prepare(&dir, &spec).unwrap(), None);
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
