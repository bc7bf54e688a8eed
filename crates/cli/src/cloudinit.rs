//! `hv create` flags for a cloud-init seed: the CLI reads the user's local files and sends
//! their contents (hvd never reads a path the caller names for this); hvd builds the seed.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use model::{CloudInit, MAX_SEED_FILE};

#[derive(clap::Args, Debug, Default)]
pub struct CloudInitArgs {
    /// A cloud-init NoCloud seed from local files: user-data=FILE[,meta-data=FILE][,network-config=FILE]
    /// (user-data is #cloud-config YAML or a #! script; each file at most 64 KiB).
    #[arg(long = "cloud-init", value_name = "SPEC")]
    cloud_init: Option<String>,
    /// An ssh public key file (authorized_keys lines) for the cloud-init user; repeatable.
    #[arg(long = "ssh-key", value_name = "FILE")]
    ssh_keys: Vec<PathBuf>,
    /// The guest's host name, set by cloud-init (a DNS label).
    #[arg(long)]
    hostname: Option<String>,
    /// A user cloud-init creates, with the --ssh-key keys and passwordless sudo.
    #[arg(long)]
    user: Option<String>,
}

/// Reads a local file of at most `MAX_SEED_FILE` bytes as UTF-8 text.
fn read_text(what: &str, path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("{what}: cannot open {path:?}"))?;
    let mut buf = Vec::new();
    f.take(MAX_SEED_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("{what}: cannot read {path:?}"))?;
    if buf.len() > MAX_SEED_FILE {
        bail!(
            "{what}: {path:?} is larger than {} KiB; cloud-init seed files are small text files",
            MAX_SEED_FILE >> 10
        );
    }
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("{what}: {path:?} is not UTF-8 text"))
}

impl CloudInitArgs {
    /// The spec's `cloud_init`, or `None` when no cloud-init flag was given.
    pub fn into_spec(self) -> Result<Option<CloudInit>> {
        if self.cloud_init.is_none()
            && self.ssh_keys.is_empty()
            && self.hostname.is_none()
            && self.user.is_none()
        {
            return Ok(None);
        }
        let mut ci = CloudInit {
            hostname: self.hostname,
            user: self.user,
            ..Default::default()
        };
        if let Some(spec) = &self.cloud_init {
            for part in spec.split(',') {
                let Some((key, file)) = part.split_once('=') else {
                    bail!("--cloud-init: {part:?} is not KEY=FILE; use user-data=FILE[,meta-data=FILE][,network-config=FILE]");
                };
                let slot = match key {
                    "user-data" => &mut ci.user_data,
                    "meta-data" => &mut ci.meta_data,
                    "network-config" => &mut ci.network_config,
                    _ => bail!("--cloud-init: unknown key {key:?}; use user-data, meta-data or network-config"),
                };
                if slot.is_some() {
                    bail!("--cloud-init: {key} is given twice");
                }
                *slot = Some(read_text(&format!("--cloud-init {key}"), Path::new(file))?);
            }
        }
        for p in &self.ssh_keys {
            let keys = model::parse_ssh_keys(&read_text("--ssh-key", p)?);
            if keys.is_empty() {
                bail!("--ssh-key: {p:?} holds no public key");
            }
            ci.ssh_keys.extend(keys);
        }
        Ok(Some(ci))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: CloudInitArgs) -> Result<Option<CloudInit>, String> {
        args.into_spec().map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn local_files_become_contents_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("hv-cli-ci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ud = dir.join("ud");
        std::fs::write(&ud, "#cloud-config\nruncmd: [[true]]\n").unwrap();
        let key = dir.join("k.pub");
        std::fs::write(
            &key,
            "# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0L me\n",
        )
        .unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_SEED_FILE + 1]).unwrap();
        let bin = dir.join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();

        assert_eq!(check(CloudInitArgs::default()), Ok(None));
        let ci = check(CloudInitArgs {
            cloud_init: Some(format!("user-data={}", ud.display())),
            ssh_keys: vec![key.clone()],
            hostname: Some("h".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            ci.user_data.as_deref(),
            Some("#cloud-config\nruncmd: [[true]]\n")
        );
        assert_eq!(
            ci.ssh_keys,
            vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0L me"]
        );
        assert_eq!(ci.hostname.as_deref(), Some("h"));

        let ud_arg = |s: String| CloudInitArgs {
            cloud_init: Some(s),
            ..Default::default()
        };
        for (args, want) in [
            (
                ud_arg(format!("user-data={}", big.display())),
                "larger than 64 KiB",
            ),
            (ud_arg(format!("user-data={}", bin.display())), "not UTF-8"),
            (
                ud_arg(format!("user-data={}", dir.join("none").display())),
                "cannot open",
            ),
            (ud_arg("vendor-data=/x".into()), "unknown key"),
            (ud_arg("user-data".into()), "not KEY=FILE"),
            (
                ud_arg(format!("user-data={0},user-data={0}", ud.display())),
                "given twice",
            ),
            (
                CloudInitArgs {
                    ssh_keys: vec![empty.clone()],
                    ..Default::default()
                },
                "holds no public key",
            ),
        ] {
            let e = check(args).expect_err(want);
            assert!(e.contains(want), "{e:?} does not say {want:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
