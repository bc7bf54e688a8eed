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
