//! `hv host backup FILE`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use client::Client;

/// Removes the unfinished file unless the backup was completed.
struct Partial<'a> {
    path: &'a Path,
    done: bool,
}
impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

pub fn run(c: &Client, file: &Path) -> Result<()> {
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        c.host_backup(&mut out)?;
        out.flush()?;
        return Ok(());
    }
    if file.symlink_metadata().is_ok() {
        anyhow::bail!(
            "{} exists; hv host backup never replaces a file: give a new name, or remove it first",
            file.display()
        );
    }
    let name = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?;
    let tmp = file.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut partial = Partial {
        path: &tmp,
        done: false,
    };
    let len = c.host_backup(&mut out)?;
    out.sync_all()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // Never over a file that appeared meanwhile.
    std::fs::hard_link(&tmp, file)
        .with_context(|| format!("cannot create {} (does it exist now?)", file.display()))?;
    partial.done = true;
    let _ = std::fs::remove_file(&tmp);
    eprintln!("backup written to {} ({len} bytes)", file.display());
    Ok(())
}
