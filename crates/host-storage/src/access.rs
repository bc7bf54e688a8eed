//! Giving one unprivileged uid (a VM's QEMU) access to the files and directories it opens by
//! name, and taking it back, with POSIX ACL entries `user:UID:perms`.
//!
//! An ACL entry names exactly one uid, so several VMs can share a read-only base image (each
//! gets `r--`) while none can read another's writable layers, and taking access back never
//! needs to remember an earlier owner: [`revoke`] removes that uid's entry and nothing else,
//! and leaves a file without named entries with no ACL at all (its mode as before). Directories
//! that the uid cannot already search get `--x` (traverse, not list). Disk images are made
//! private ([`make_private`]: no permissions for "other"), so only named uids reach them.
//!
//! Changes are read-modify-write of the `system.posix_acl_access` attribute; they are
//! serialized host-wide (several hvds may share a directory) by an `flock` on [`LOCK_FILE`].
//! The encoding (the kernel's `posix_acl_xattr` format) is pure and unit tested below.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Serializes ACL changes of every hvd on this host. Directly in `/run`, where only root
/// creates files (not in the world-writable `/run/lock`, where another user could hold it).
pub const LOCK_FILE: &str = "/run/hv-access.lock";

const XATTR: &str = "system.posix_acl_access";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// What a uid may do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Traverse a directory (`--x`), not list it.
    Search,
    Read,
    ReadWrite,
}

impl Access {
    fn perm(self) -> u16 {
        match self {
            Access::Search => 1,
            Access::Read => 4,
            Access::ReadWrite => 6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("the filesystem of {path} does not support POSIX ACLs, which hv uses to let a VM's QEMU (an unprivileged uid) open it; mount it with ACL support or move the file")]
    NoAcl { path: String },
    #[error("{path} has an ACL hv cannot read: {why}")]
    BadAcl { path: String, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    tag: u16,
    id: u32,
    perm: u16,
}

fn decode(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
        return Err(format!("{} bytes is not an ACL", bytes.len()));
    }
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if version != VERSION {
        return Err(format!("ACL version {version}"));
    }
    Ok(bytes[4..]
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

/// The minimal ACL a mode stands for.
fn from_mode(mode: u32) -> Vec<Entry> {
    let e = |tag, shift: u32| Entry {
        tag,
        id: NO_ID,
        perm: ((mode >> shift) & 7) as u16,
    };
    vec![e(USER_OBJ, 6), e(GROUP_OBJ, 3), e(OTHER, 0)]
}

fn is_named(e: &Entry) -> bool {
    e.tag == USER || e.tag == GROUP
}

/// Sorted (the kernel wants tag order, then id) with the mask recomputed as the union of the
/// group class, or without a mask when no named entry is left.
fn normalize(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.retain(|e| e.tag != MASK);
    if entries.iter().any(is_named) {
        let perm = entries
            .iter()
            .filter(|e| is_named(e) || e.tag == GROUP_OBJ)
            .fold(0, |p, e| p | e.perm);
        entries.push(Entry {
            tag: MASK,
            id: NO_ID,
            perm,
        });
    }
    entries.sort();
    entries
}

/// `entries` with `uid` allowed at least `access` (a grant never takes rights away).
fn with_user(mut entries: Vec<Entry>, uid: u32, access: Access) -> Vec<Entry> {
    match entries.iter_mut().find(|e| e.tag == USER && e.id == uid) {
        Some(e) => e.perm |= access.perm(),
        None => entries.push(Entry {
            tag: USER,
            id: uid,
            perm: access.perm(),
        }),
    }
    normalize(entries)
}

fn without_user(mut entries: Vec<Entry>, uid: u32) -> Vec<Entry> {
    entries.retain(|e| !(e.tag == USER && e.id == uid));
    normalize(entries)
}

/// The mode of a file whose ACL became minimal: its group bits are the owning group's again
/// (with an ACL they show the mask).
fn minimal_mode(entries: &[Entry], mode: u32) -> u32 {
    let group = entries
        .iter()
        .find(|e| e.tag == GROUP_OBJ)
        .map_or(0, |e| u32::from(e.perm));
    (mode & !0o070) | (group << 3)
}

/// The permissions `uid` has through the ACL's named entry (after the mask), if it has one.
fn user_perm(entries: &[Entry], uid: u32) -> Option<u16> {
    let mask = entries.iter().find(|e| e.tag == MASK).map_or(7, |e| e.perm);
    entries
        .iter()
        .find(|e| e.tag == USER && e.id == uid)
        .map(|e| e.perm & mask)
}

fn cpath(path: &Path) -> Result<CString, AccessError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| AccessError::Io {
        op: "name",
        path: path.display().to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AccessError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::EOPNOTSUPP) {
            AccessError::NoAcl {
                path: path.display().to_string(),
            }
        } else {
            AccessError::Io {
                op,
                path: path.display().to_string(),
                source,
            }
        }
    }
}

fn mode_of(path: &Path) -> Result<u32, AccessError> {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .map_err(io_err("read the mode of", path))
}

/// The file's ACL: its attribute, or the minimal one its mode stands for.
fn read_acl(path: &Path) -> Result<Vec<Entry>, AccessError> {
    let c = cpath(path)?;
    let name = CString::new(XATTR).unwrap_or_default();
    let mut buf = vec![0u8; 4 + 8 * 64];
    loop {
        // SAFETY: both names are NUL-terminated strings and `buf` is writable for its length.
        let n = unsafe {
            libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return decode(&buf).map_err(|why| AccessError::BadAcl {
                path: path.display().to_string(),
                why,
            });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(from_mode(mode_of(path)?)),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(io_err("read the ACL of", path)(e)),
        }
    }
}

fn write_acl(path: &Path, entries: &[Entry]) -> Result<(), AccessError> {
    let c = cpath(path)?;
    let name = CString::new(XATTR).unwrap_or_default();
    if !entries.iter().any(is_named) {
        // Back to no ACL at all: drop the attribute and give the group bits back.
        let mode = minimal_mode(entries, mode_of(path)?);
        // SAFETY: both names are NUL-terminated strings.
        if unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(io_err("remove the ACL of", path)(e));
            }
        }
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_err("set the mode of", path));
    }
    let bytes = encode(entries);
    // SAFETY: both names are NUL-terminated strings and `bytes` is readable for its length.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io_err("set the ACL of", path)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Holds the host-wide lock for one read-modify-write.
fn locked<T>(f: impl FnOnce() -> Result<T, AccessError>) -> Result<T, AccessError> {
    let lock = Path::new(LOCK_FILE);
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(lock)
        .map_err(io_err("open", lock))?;
    // SAFETY: flock on an fd we own, with constant flags; it is released when `file` closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(io_err("lock", lock)(io::Error::last_os_error()));
    }
    f()
}

/// Lets `uid` do at least `access` on `path` (symlinks followed).
pub fn grant(path: &Path, uid: u32, access: Access) -> Result<(), AccessError> {
    locked(|| {
        let acl = read_acl(path)?;
        if user_perm(&acl, uid).is_some_and(|p| p & access.perm() == access.perm()) {
            return Ok(());
        }
        write_acl(path, &with_user(acl, uid, access))
    })
}

/// Takes back whatever [`grant`] gave `uid` on `path`; a path that is gone is fine.
pub fn revoke(path: &Path, uid: u32) -> Result<(), AccessError> {
    locked(|| {
        let acl = match read_acl(path) {
            Err(AccessError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            other => other?,
        };
        if !acl.iter().any(|e| e.tag == USER && e.id == uid) {
            return Ok(());
        }
        write_acl(path, &without_user(acl, uid))
    })
}

/// Does "other" (any uid without an entry) already have `access` on `path`?
fn open_to_all(path: &Path, access: Access) -> Result<bool, AccessError> {
    let p = u32::from(access.perm());
    Ok(mode_of(path)? & p == p)
}

/// Takes every permission away from "other" (disk images are a VM's data).
pub fn make_private(path: &Path) -> Result<(), AccessError> {
    let mode = mode_of(path)?;
    if mode & 0o007 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7770))
        .map_err(io_err("set the mode of", path))
}

/// Makes a directory of hv's private (0700) without touching the grants on it: with an ACL,
/// the group bits are the mask of the named entries and stay.
pub fn make_dir_private(path: &Path) -> Result<(), AccessError> {
    let mode = mode_of(path)?;
    let keep = if read_acl(path)?.iter().any(is_named) {
        0o7770
    } else {
        0o7700
    };
    if mode & 0o7777 == mode & keep {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & keep))
        .map_err(io_err("set the mode of", path))
}

/// Lets `uid` reach `path` by name: `access` on the path itself unless "other" already has it,
/// and search on every directory above it (of the path as given and of its target, when
/// symlinks are involved) that "other" cannot search. Returns what it changed, for
/// [`revoke`]; on error, what it changed so far is already undone.
pub fn grant_path(path: &Path, uid: u32, access: Access) -> Result<Vec<PathBuf>, AccessError> {
    let mut steps: Vec<(PathBuf, Access)> = Vec::new();
    let canonical = std::fs::canonicalize(path).map_err(io_err("resolve", path))?;
    for p in [path, canonical.as_path()] {
        for dir in p.ancestors().skip(1) {
            if dir.as_os_str().is_empty() || steps.iter().any(|(s, _)| s == dir) {
                continue;
            }
            steps.push((dir.to_path_buf(), Access::Search));
        }
    }
    steps.push((path.to_path_buf(), access));
    let mut done = Vec::new();
    for (p, a) in steps {
        let r = open_to_all(&p, a).and_then(|open| {
            if !open {
                grant(&p, uid, a)?;
            }
            Ok(!open)
        });
        match r {
            Ok(true) => done.push(p),
            Ok(false) => {}
            Err(e) => {
                for d in done.iter().rev() {
                    if let Err(undo) = revoke(d, uid) {
                        tracing::warn!(path = %d.display(), error = %undo, "cannot take back access");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mode: u32, uid: u32, access: Access, want: &[(u16, u32, u16)]) -> Vec<Entry> {
        let got = with_user(from_mode(mode), uid, access);
        let want: Vec<Entry> = want
            .iter()
            .map(|&(tag, id, perm)| Entry { tag, id, perm })
            .collect();
        assert_eq!(got, want);
        assert_eq!(decode(&encode(&got)).unwrap(), got, "round trip");
        got
    }

    #[test]
    fn a_grant_adds_one_named_user_and_a_mask_and_revoke_gives_the_mode_back() {
        let acl = check(
            0o640,
            200_007,
            Access::ReadWrite,
            &[
                (USER_OBJ, NO_ID, 6),
                (USER, 200_007, 6),
                (GROUP_OBJ, NO_ID, 4),
                (MASK, NO_ID, 6),
                (OTHER, NO_ID, 0),
            ],
        );
        // With the ACL, the mode's group bits show the mask (rw-).
        let back = without_user(acl, 200_007);
        assert_eq!(back, from_mode(0o640));
        assert_eq!(minimal_mode(&back, 0o100660), 0o100640);
    }

    #[test]
    fn grants_to_two_uids_are_kept_apart_and_never_shrink() {
        let a = with_user(from_mode(0o600), 9, Access::Read);
        let ab = with_user(a, 7, Access::Search);
        let ab = with_user(ab, 9, Access::Search);
        assert_eq!(
            user_perm(&ab, 9),
            Some(4 | 1),
            "read stays, search is added"
        );
        assert_eq!(user_perm(&ab, 7), Some(1));
        assert_eq!(user_perm(&ab, 8), None);
        let ids: Vec<u32> = ab.iter().filter(|e| e.tag == USER).map(|e| e.id).collect();
        assert_eq!(ids, [7, 9], "named users sorted by id, as the kernel wants");
        let b = without_user(ab, 9);
        assert_eq!(user_perm(&b, 7), Some(1));
        assert_eq!(b.iter().find(|e| e.tag == MASK).map(|e| e.perm), Some(1));
    }

    #[test]
    fn decode_refuses_what_is_not_a_version_2_acl() {
        assert!(decode(&[2, 0, 0]).is_err());
        assert!(decode(&[1, 0, 0, 0]).is_err());
        assert!(decode(&[2, 0, 0, 0, 1]).is_err());
        assert_eq!(decode(&[2, 0, 0, 0]).unwrap(), vec![]);
    }

    #[test]
    fn grant_path_reaches_a_private_file_and_revoke_restores_everything() {
        let root = std::env::temp_dir().join(format!("hv-access-{}", std::process::id()));
        let dir = root.join("private");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("disk.img");
        std::fs::write(&file, b"data").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        make_private(&file).unwrap();
        assert_eq!(mode_of(&file).unwrap() & 0o777, 0o640);
        let uid = 4_242_201;
        let done = grant_path(&file, uid, Access::ReadWrite).unwrap();
        assert_eq!(
            done,
            [dir.clone(), file.clone()],
            "only what uid could not reach"
        );
        assert_eq!(user_perm(&read_acl(&dir).unwrap(), uid), Some(1));
        assert_eq!(user_perm(&read_acl(&file).unwrap(), uid), Some(6));
        for p in done.iter().rev() {
            revoke(p, uid).unwrap();
        }
        assert_eq!(mode_of(&dir).unwrap() & 0o777, 0o700);
        assert_eq!(mode_of(&file).unwrap() & 0o777, 0o640);
        assert_eq!(read_acl(&file).unwrap(), from_mode(0o640), "no ACL left");
        revoke(&root.join("gone"), uid).unwrap();
        // Making the directory private again keeps a running VM's way through.
        grant(&dir, uid, Access::Search).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o751)).unwrap();
        make_dir_private(&root).unwrap();
        assert_eq!(mode_of(&root).unwrap() & 0o777, 0o700);
        make_dir_private(&dir).unwrap();
        assert_eq!(
            user_perm(&read_acl(&dir).unwrap(), uid),
            Some(1),
            "grant kept"
        );
        revoke(&dir, uid).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
