//! Caps on log files, so a guest that prints without end (or makes QEMU log, or triggers QMP
//! events) cannot fill the host's disk.
//!
//! Two kinds of log: those QEMU appends to itself (`console.log`, also while hvd is down, and
//! `qemu.log`, its stderr), opened with `O_APPEND` so hvd may truncate them in place at any
//! time; and those hvd writes itself (`qmp.log`), which rotate to `NAME.1`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The default cap of each log file (`hvd --log-cap`).
pub const DEFAULT_LOG_CAP: u64 = 8 << 20;

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `NAME.1` beside `NAME`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Truncates a log a process appends to (`O_APPEND`) when it is over `cap`: the writer's next
/// write lands at the new end. Returns whether it did.
pub fn truncate_if_over(path: &Path, cap: u64) -> bool {
    if size(path) <= cap {
        return false;
    }
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => match f.set_len(0) {
            Ok(()) => {
                tracing::info!(log = %path.display(), cap, "log reached its cap and was truncated");
                true
            }
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e, "cannot truncate a log over its cap");
                false
            }
        },
        Err(_) => false,
    }
}

/// Moves a log that no process has open to `NAME.1` (replacing the one before) when it is over
/// `cap`.
pub fn rotate_if_over(path: &Path, cap: u64) {
    if size(path) > cap {
        if let Err(e) = std::fs::rename(path, rotated(path)) {
            tracing::warn!(log = %path.display(), error = %e, "cannot rotate a log over its cap");
        }
    }
}

/// A log hvd appends lines to itself: when a line takes it over its cap it moves to `NAME.1`
/// and a new file starts, so it never holds more than twice the cap on disk.
pub struct CappedLog {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    cap: u64,
}

impl CappedLog {
    pub fn open(path: &Path, cap: u64) -> std::io::Result<CappedLog> {
        rotate_if_over(path, cap);
        let file = open_append(path)?;
        Ok(CappedLog {
            path: path.to_path_buf(),
            written: file.metadata()?.len(),
            file,
            cap,
        })
    }

    pub fn write_line(&mut self, line: &str) {
        if self.written > self.cap {
            let reopened = std::fs::rename(&self.path, rotated(&self.path))
                .and_then(|()| open_append(&self.path));
            match reopened {
                Ok(f) => {
                    self.file = f;
                    self.written = 0;
                }
                Err(e) => {
                    tracing::warn!(log = %self.path.display(), error = %e, "cannot rotate a log over its cap");
                    return;
                }
            }
        }
        if writeln!(self.file, "{line}").is_ok() {
            self.written += line.len() as u64 + 1;
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hvd_log_rotates_at_its_cap_and_never_holds_more_than_twice_it() {
        let dir = std::env::temp_dir().join(format!("hv-logcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.log");
        let mut log = CappedLog::open(&path, 1000).unwrap();
        for i in 0..1000 {
            log.write_line(&format!("{i:099}"));
        }
        let (now, old) = (size(&path), size(&rotated(&path)));
        assert!(now <= 1100 && old <= 1100 && old > 900, "{now} {old}");
        // Reopening an oversized log starts a new one.
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        let mut log = CappedLog::open(&path, 1000).unwrap();
        log.write_line("fresh");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "fresh\n");
        assert!(!truncate_if_over(&path, 1000));
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        assert!(truncate_if_over(&path, 1000));
        assert_eq!(size(&path), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
