//! Host paths given by users (disk images, kernels, CD-ROMs, pool directories, import
//! sources): checked once here, so nothing downstream (argv, `qemu-img`, logs) ever sees a
//! relative, non-normalized or control-character path.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::SpecError;

/// Linux's `PATH_MAX` (4096, with the NUL) and `NAME_MAX`.
const MAX_PATH: usize = 4095;
const MAX_NAME: usize = 255;

/// Checks that `p` is an absolute, normalized path (no `.` or `..` parts) of printable UTF-8
/// that fits Linux's limits; `field` names it in the error.
pub fn check_host_path(field: &str, p: &Path) -> Result<(), SpecError> {
    let bytes = p.as_os_str().as_bytes();
    let shown = String::from_utf8_lossy(bytes);
    let bad = |why: &str| Err(SpecError::new(field, format!("path {shown:?} {why}")));
    if std::str::from_utf8(bytes).is_err() {
        return bad("is not UTF-8");
    }
    if let Some(c) = shown.chars().find(|c| c.is_control()) {
        return bad(&format!("contains the control character {c:?}"));
    }
    if !p.is_absolute() {
        return bad("must be absolute");
    }
    if bytes.len() > MAX_PATH {
        return bad(&format!("is longer than {MAX_PATH} bytes"));
    }
    for part in bytes.split(|b| *b == b'/') {
        if part == b"." || part == b".." {
            return bad("must not contain . or .. parts; give the path without them");
        }
        if part.len() > MAX_NAME {
            return bad(&format!("has a part longer than {MAX_NAME} bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_absolute_normalized_and_printable() {
        for ok in ["/a/b.qcow2", "/a,b/c=d e.img", "/x/..y/.z"] {
            assert!(check_host_path("f", Path::new(ok)).is_ok(), "{ok}");
        }
        let long = format!("/{}", "x".repeat(256));
        let longer = "/xx".repeat(1400);
        for bad in [
            "rel/a", "/a/../b", "/a/./b", "/a/..", "/a\nb", "/a\0b", "/a\u{7f}", "", &long, &longer,
        ] {
            let e = check_host_path("disks[0]", Path::new(bad)).unwrap_err();
            assert_eq!(e.field, "disks[0]", "{bad}");
        }
    }
}
