//! Where a migrating VM's disks go on the target, and what a disk copy refuses (pure logic).
//!
//! - A writable disk that is copied (`--copy-storage`, `--offline`) lands in the target pool of
//!   the SAME NAME as its pool on the source; a missing pool is refused, naming it and the
//!   pools the target has. A path disk (no pool) is refused: the target writes only into its
//!   pools.
//! - A read-only medium (a read-only disk, the CD-ROM) is not copied: the same volume must exist
//!   on the target (same pool name, same file name), else refused, naming it.
//! - `--copy-storage` is refused for a VM with snapshots: internal snapshots live in qcow2 tags
//!   a mirror does not copy, and an external snapshot's chain would arrive flattened.

use std::path::{Path, PathBuf};

use model::VmSpec;

use crate::error::{EngineError, Result};

/// A pool as a host defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDir {
    pub name: String,
    pub path: PathBuf,
}

/// Where one disk of the spec goes on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskHome {
    /// Copied into this pool directory (its top image keeps its file name).
    Copy { pool: String, dir: PathBuf },
    /// A read-only medium that already exists on the target at this path.
    Medium(PathBuf),
}

/// The pool (name and directory) on `pools` whose directory holds `file`.
pub fn pool_of<'a>(file: &Path, pools: &'a [PoolDir]) -> Option<&'a PoolDir> {
    let dir = file.parent()?;
    pools.iter().find(|p| p.path == dir)
}

fn pool_list(pools: &[PoolDir]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Target side: each disk's home (in spec order) and the CD-ROM's, or every problem found.
/// `source_pools` are the source's pools (which pool a path is in there), `pools` the target's.
pub fn place(
    spec: &VmSpec,
    source_pools: &[PoolDir],
    pools: &[PoolDir],
    exists: impl Fn(&Path) -> bool,
) -> std::result::Result<(Vec<DiskHome>, Option<PathBuf>), Vec<String>> {
    let mut problems = Vec::new();
    let mut homes = Vec::new();
    let medium = |what: &str,
                  file: &Path,
                  vol: Option<&model::VolRef>,
                  problems: &mut Vec<String>|
     -> Option<PathBuf> {
        let name = file.file_name()?.to_string_lossy().into_owned();
        // Which pool it is in: the volume reference, the source's pools, or the same path in
        // one of this host's pools.
        let pool = vol
            .map(|v| v.pool.to_string())
            .or_else(|| pool_of(file, source_pools).map(|p| p.name.clone()))
            .or_else(|| pool_of(file, pools).map(|p| p.name.clone()));
        let Some(pool) = pool else {
            problems.push(format!(
                "{what} {} is not in a pool; put it in a pool that both hosts have (hv vol import), or remove it before migrating",
                file.display()
            ));
            return None;
        };
        let name = vol.map(|v| v.name.to_string()).unwrap_or(name);
        let Some(dst) = pools.iter().find(|p| p.name == pool) else {
            problems.push(format!(
                "{what} {pool}/{name} is read-only shared media: the target has no pool {pool} (it has: {}); create it there with the same volume",
                pool_list(pools)
            ));
            return None;
        };
        let there = dst.path.join(&name);
        if !exists(&there) {
            problems.push(format!(
                "{what} {pool}/{name} is read-only shared media and does not exist on the target; copy it there first (hv vol upload), or remove it before migrating"
            ));
            return None;
        }
        Some(there)
    };
    for (i, d) in spec.disks.iter().enumerate() {
        let what = format!("disk {}", d.target.clone().unwrap_or_else(|| i.to_string()));
        if d.readonly {
            if let Some(p) = medium(&what, &d.path, d.vol.as_ref(), &mut problems) {
                homes.push(DiskHome::Medium(p));
            }
            continue;
        }
        let src_pool = d
            .vol
            .as_ref()
            .map(|v| v.pool.to_string())
            .or_else(|| pool_of(&d.path, source_pools).map(|p| p.name.clone()));
        let Some(src_pool) = src_pool else {
            problems.push(format!(
                "{what} ({}) is not a pool volume; only pool volumes can be copied: import it into a pool (hv vol import) and attach that",
                d.path.display()
            ));
            continue;
        };
        match pools.iter().find(|p| p.name == src_pool) {
            Some(p) => homes.push(DiskHome::Copy {
                pool: p.name.clone(),
                dir: p.path.clone(),
            }),
            None => problems.push(format!(
                "{what} is in pool {src_pool}, which the target does not have (it has: {}); create pool {src_pool} on the target",
                pool_list(pools)
            )),
        }
    }
    let cdrom = spec
        .cdrom
        .as_ref()
        .and_then(|c| medium("the CD-ROM", c, None, &mut problems));
    if problems.is_empty() {
        Ok((homes, cdrom))
    } else {
        Err(problems)
    }
}

/// The spec as the target runs it: each copied disk's path in its new pool directory (the
/// top image's file name kept), each medium at its path there.
pub fn rewrite(spec: &VmSpec, homes: &[DiskHome], cdrom: Option<PathBuf>) -> VmSpec {
    let mut out = spec.clone();
    for (d, home) in out.disks.iter_mut().zip(homes) {
        match home {
            DiskHome::Copy { dir, .. } => {
                if let Some(name) = d.path.file_name() {
                    d.path = dir.join(name);
                }
            }
            DiskHome::Medium(p) => d.path = p.clone(),
        }
    }
    if cdrom.is_some() {
        out.cdrom = cdrom;
    }
    out
}

/// Source side: `--copy-storage` of a VM with snapshots is refused.
pub fn check_copy_storage(vm: &str, snapshots: &[String]) -> Result<()> {
    if snapshots.is_empty() {
        return Ok(());
    }
    Err(EngineError::WrongState(format!(
        "VM {vm:?} has snapshots ({}); --copy-storage cannot take them along (a disk mirror copies neither internal snapshots nor an external snapshot's chain): migrate it stopped with --offline, which keeps them, or delete the snapshots first (hv snapshot delete)",
        snapshots.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::DiskSpec;

    fn pools(v: &[(&str, &str)]) -> Vec<PoolDir> {
        v.iter()
            .map(|(n, p)| PoolDir {
                name: n.to_string(),
                path: PathBuf::from(p),
            })
            .collect()
    }

    fn disk(path: &str, readonly: bool) -> DiskSpec {
        let mut d: DiskSpec = format!("path={path}").parse().unwrap();
        d.target = Some("vda".into());
        d.readonly = readonly;
        d
    }

    fn spec(disks: Vec<DiskSpec>, cdrom: Option<&str>) -> VmSpec {
        let mut s = VmSpec::new("web".parse().unwrap());
        s.disks = disks;
        s.cdrom = cdrom.map(PathBuf::from);
        s
    }

    #[test]
    fn disks_go_to_the_pool_of_the_same_name() {
        let src = pools(&[("default", "/a/default"), ("fast", "/a/fast")]);
        let dst = pools(&[("default", "/b/pools/default"), ("fast", "/b/fast")]);
        let s = spec(
            vec![
                disk("/a/fast/web.qcow2", false),
                disk("/a/default/debian.iso", true),
            ],
            Some("/a/default/tools.iso"),
        );
        let exists = |p: &Path| p.starts_with("/b/pools/default");
        let (homes, cd) = place(&s, &src, &dst, exists).unwrap();
        assert_eq!(
            homes,
            [
                DiskHome::Copy {
                    pool: "fast".into(),
                    dir: "/b/fast".into()
                },
                DiskHome::Medium("/b/pools/default/debian.iso".into())
            ]
        );
        assert_eq!(cd.as_deref(), Some(Path::new("/b/pools/default/tools.iso")));
        let r = rewrite(&s, &homes, cd);
        assert_eq!(r.disks[0].path, Path::new("/b/fast/web.qcow2"));
        assert_eq!(r.disks[1].path, Path::new("/b/pools/default/debian.iso"));
        assert_eq!(
            r.cdrom.as_deref(),
            Some(Path::new("/b/pools/default/tools.iso"))
        );
    }

    #[test]
    fn every_problem_is_named() {
        let src = pools(&[("default", "/a/default"), ("fast", "/a/fast")]);
        let dst = pools(&[("default", "/b/default")]);
        let s = spec(
            vec![
                disk("/a/fast/web.qcow2", false),
                disk("/srv/raw.img", false),
                disk("/a/default/gone.iso", true),
            ],
            Some("/tmp/x.iso"),
        );
        let e = place(&s, &src, &dst, |_| false).unwrap_err();
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].contains("pool fast, which the target does not have (it has: default)"));
        assert!(e[1].contains("/srv/raw.img) is not a pool volume"));
        assert!(e[2].contains("default/gone.iso is read-only shared media and does not exist"));
        assert!(e[3].contains("the CD-ROM /tmp/x.iso is not in a pool"));
    }

    #[test]
    fn the_target_knows_media_by_their_volume_or_their_path_in_its_pools() {
        // The target does not know the source's pools: a read-only volume names its pool, a
        // CD-ROM path is taken where one of the target's pools holds that very path.
        let dst = pools(&[("default", "/b/default")]);
        let mut ro = disk("/a/x/debian.iso", true);
        ro.vol = Some("default/debian.iso".parse().unwrap());
        let s = spec(vec![ro], Some("/b/default/tools.iso"));
        let (homes, cd) = place(&s, &[], &dst, |_| true).unwrap();
        assert_eq!(homes, [DiskHome::Medium("/b/default/debian.iso".into())]);
        assert_eq!(cd.as_deref(), Some(Path::new("/b/default/tools.iso")));
    }

    #[test]
    fn copy_storage_refuses_snapshots_and_names_the_way_out() {
        check_copy_storage("web", &[]).unwrap();
        let e = check_copy_storage("web", &["s1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(s1)") && e.contains("--offline"), "{e}");
    }
}
