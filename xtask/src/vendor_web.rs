//! `cargo xtask vendor-web`: refreshes `web/vendor/` from `npm pack` of the pinned front-end
//! packages. The files are copied unmodified, with their licences, and `web/vendor/VERSIONS`
//! records what was packed (name, version, npm integrity). Building hvd never needs npm: the
//! result is committed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One package: its npm spec, the folder under `web/vendor/`, and the paths (relative to the
/// tarball's `package/`) copied from it; a path ending in `/` copies the whole folder.
struct Package {
    spec: &'static str,
    dir: &'static str,
    files: &'static [&'static str],
}

/// What the UI loads. noVNC's `core/rfb.js` imports `../vendor/pako/...`, so its `vendor/`
/// keeps the same place relative to `core/`.
const PACKAGES: &[Package] = &[
    Package {
        spec: "@novnc/novnc@1.7.0",
        dir: "novnc",
        files: &[
            "core/",
            "vendor/pako/",
            "LICENSE.txt",
            "AUTHORS",
            "docs/LICENSE.MPL-2.0",
            "docs/LICENSE.BSD-2-Clause",
            "docs/LICENSE.BSD-3-Clause",
        ],
    },
    Package {
        spec: "@xterm/xterm@6.0.0",
        dir: "xterm",
        files: &["lib/xterm.mjs", "css/xterm.css", "LICENSE"],
    },
    Package {
        spec: "@xterm/addon-fit@0.11.0",
        dir: "xterm-addon-fit",
        files: &["lib/addon-fit.mjs", "LICENSE"],
    },
];

fn run(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} (is npm installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from)
        .with_context(|| format!("the package has no {}", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    } else {
        bail!("{} is neither a file nor a folder", from.display());
    }
    Ok(())
}

/// A temp dir removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn vendor_web(root: &Path) -> Result<()> {
    let tmp = TempDir(std::env::temp_dir().join(format!("hv-vendor-web-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0)?;
    let staged = tmp.0.join("vendor");
    let mut versions = String::from(
        "# Written by `cargo xtask vendor-web` (npm pack); files copied unmodified.\n",
    );
    for p in PACKAGES {
        let out = run(Command::new("npm")
            .args(["pack", "--json", "--pack-destination"])
            .arg(&tmp.0)
            .arg(p.spec)
            .current_dir(&tmp.0))?;
        let packed: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("cannot read npm pack's answer: {out}"))?;
        let field = |k: &str| packed[0][k].as_str().unwrap_or_default().to_string();
        let (name, version, filename, integrity) = (
            field("name"),
            field("version"),
            field("filename"),
            field("integrity"),
        );
        if filename.contains('/') || !filename.ends_with(".tgz") || version.is_empty() {
            bail!("npm pack {} answered no usable tarball: {out}", p.spec);
        }
        let unpack = tmp.0.join(p.dir);
        std::fs::create_dir_all(&unpack)?;
        run(Command::new("tar")
            .arg("-xzf")
            .arg(tmp.0.join(&filename))
            .arg("-C")
            .arg(&unpack))?;
        for f in p.files {
            let from = unpack.join("package").join(f.trim_end_matches('/'));
            copy_tree(&from, &staged.join(p.dir).join(f.trim_end_matches('/')))?;
        }
        versions.push_str(&format!(
            "{} {} {} -> web/vendor/{}\n",
            name, version, integrity, p.dir
        ));
    }
    std::fs::write(staged.join("VERSIONS"), versions)?;
    let dest = root.join("web/vendor");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("cannot remove the old {}", dest.display()))?;
    }
    copy_tree(&staged, &dest)?;
    println!("vendor-web: refreshed {}", dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is committed in `web/vendor/` is what `vendor-web` would fetch: every pinned
    /// package is recorded in VERSIONS with its version, and its files are there.
    #[test]
    fn the_vendored_files_match_the_pins() {
        let root = crate::root();
        let versions = std::fs::read_to_string(root.join("web/vendor/VERSIONS"))
            .expect("web/vendor/VERSIONS (run cargo xtask vendor-web)");
        for p in PACKAGES {
            let (name, version) = p.spec.rsplit_once('@').expect("spec has a version");
            assert!(
                versions
                    .lines()
                    .any(|l| l.starts_with(&format!("{name} {version} sha512-"))
                        && l.ends_with(&format!("web/vendor/{}", p.dir))),
                "{} is not recorded in VERSIONS:\n{versions}",
                p.spec
            );
            for f in p.files {
                let path = root
                    .join("web/vendor")
                    .join(p.dir)
                    .join(f.trim_end_matches('/'));
                assert!(path.exists(), "{} is missing", path.display());
            }
        }
    }
}
