//! What a process may do on the host, read from `/proc/PID/status`, and whether a uid can
//! really open a file (tried with `setpriv`, as that uid with no groups).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The privilege lines of `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: String,
    pub cap_prm: String,
    pub cap_eff: String,
    pub cap_bnd: String,
    pub no_new_privs: String,
    /// 2: a seccomp filter is installed.
    pub seccomp: String,
}

impl Privileges {
    pub fn of(pid: u32) -> Result<Privileges> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("process {pid} is gone"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let ids = |name: &str| -> Vec<u32> {
            field(name)
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        Ok(Privileges {
            uids: ids("Uid"),
            gids: ids("Gid"),
            groups: field("Groups"),
            cap_prm: field("CapPrm"),
            cap_eff: field("CapEff"),
            cap_bnd: field("CapBnd"),
            no_new_privs: field("NoNewPrivs"),
            seccomp: field("Seccomp"),
        })
    }

    pub fn uid(&self) -> u32 {
        self.uids.first().copied().unwrap_or(0)
    }

    pub fn gid(&self) -> u32 {
        self.gids.first().copied().unwrap_or(0)
    }

    /// Fails unless every id is one non-zero uid/gid, there are no supplementary groups, no
    /// capabilities (not even in the bounding set), no new privileges and a seccomp filter.
    pub fn check_confined(&self) -> Result<()> {
        let zero = "0000000000000000";
        let one_id = |v: &[u32]| v.len() == 4 && v[0] != 0 && v.iter().all(|i| *i == v[0]);
        if !(one_id(&self.uids)
            && one_id(&self.gids)
            && self.groups.is_empty()
            && self.cap_prm == zero
            && self.cap_eff == zero
            && self.cap_bnd == zero
            && self.no_new_privs == "1"
            && self.seccomp == "2")
        {
            bail!("process is not confined: {self:?}");
        }
        Ok(())
    }
}

/// Can `uid`/`gid` (no supplementary groups) open `path` for reading (or, with `write`, for
/// appending)? Tried for real, with `setpriv`.
pub fn can_open_as(uid: u32, gid: u32, path: &Path, write: bool) -> Result<bool> {
    let script = if write {
        r#"exec 3>>"$1""#
    } else {
        r#"exec 3<"$1""#
    };
    let status = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--", "sh", "-c", script, "sh"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run setpriv (util-linux)")?;
    Ok(status.success())
}
