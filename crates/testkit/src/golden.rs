//! Golden files: tests compare what code renders with a checked-in file, and
//! `HV_UPDATE_GOLDEN=1` rewrites the files so the change is reviewed as a diff.

use std::path::Path;

/// Asserts that `got` equals the file at `path`; with `HV_UPDATE_GOLDEN` set, writes it first.
pub fn assert_golden(path: &Path, got: &str) {
    if std::env::var_os("HV_UPDATE_GOLDEN").is_some() {
        if let Err(e) = std::fs::write(path, got) {
            panic!("cannot write golden {}: {e}", path.display());
        }
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        got == want,
        "golden {} differs; rerun with HV_UPDATE_GOLDEN=1 and review the diff\n--- got ---\n{got}",
        path.display()
    );
}
