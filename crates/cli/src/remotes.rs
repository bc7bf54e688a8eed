//! `hv remote`: named remote hvds (URL, token, pinned certificate fingerprint) in the user's
//! `remotes.toml`, and which hvd a command talks to.
//!
//! Which hvd, first match wins:
//! 1. `--remote NAME` or `--socket PATH` on the command line (not both);
//! 2. `HV_REMOTE` or `HV_SOCKET` in the environment (not both);
//! 3. the default remote (`hv remote default NAME`);
//! 4. the local socket, /run/hv/hvd.sock.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use client::Client;
use serde::{Deserialize, Serialize};

#[derive(Subcommand, Debug)]
pub enum RemoteCmd {
    /// Add a remote hvd (`hvd --listen`): connects, shows the server's certificate fingerprint
    /// and pins it (trust on first use, or the one given with --fingerprint).
    Add {
        name: String,
        /// https://HOST:PORT
        url: String,
        /// An API token (`hv token create USER` on the server).
        #[arg(long, required_unless_present = "token_stdin")]
        token: Option<String>,
        /// Read the token from standard input instead (keeps it out of argv).
        #[arg(long, conflicts_with = "token")]
        token_stdin: bool,
        /// The fingerprint the server must present (SHA256:..., as `hv host cert` prints it).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// List the remotes (tokens are never shown).
    List,
    /// Forget a remote.
    Remove { name: String },
    /// Use this remote when neither --remote/--socket nor HV_REMOTE/HV_SOCKET is given.
    Default {
        #[arg(required_unless_present = "none")]
        name: Option<String>,
        /// Clear the default: use the local socket again.
        #[arg(long, conflicts_with = "name")]
        none: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: String,
    pub token: String,
    pub fingerprint: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remotes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// `$XDG_CONFIG_HOME/hv/remotes.toml`, else `~/.config/hv/remotes.toml`.
pub fn path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => bail!("cannot find the remotes file: neither XDG_CONFIG_HOME nor HOME is set"),
        },
    };
    Ok(base.join("hv").join("remotes.toml"))
}

impl Remotes {
    pub fn load(path: &Path) -> Result<Remotes> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}; fix or remove the file",
                    path.display(),
                    e.to_string().trim()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remotes::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file atomically, readable by its owner only (it holds tokens).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("the remotes file has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let text = toml::to_string(self).context("cannot write the remotes file")?;
        let tmp = dir.join(format!(".remotes.toml.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|_| f.write_all(text.as_bytes()))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn get(&self, name: &str) -> Result<&Remote> {
        self.remotes.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no remote named {name:?}; `hv remote list` shows them, `hv remote add` adds one"
            )
        })
    }
}

/// A client for the remote `name`.
pub fn client_for(name: &str) -> Result<Client> {
    let path = path()?;
    let remotes = Remotes::load(&path)?;
    let r = remotes.get(name)?;
    Ok(Client::https(&r.url, &r.token, Some(&r.fingerprint))?.named(name))
}

/// The remote `name` as a migration target (its token goes to the source hvd).
pub fn peer_for(name: &str) -> Result<api::PeerTarget> {
    let remotes = Remotes::load(&path()?)?;
    let r = remotes.get(name)?;
    Ok(api::PeerTarget {
        url: r.url.clone(),
        token: r.token.clone(),
        fingerprint: r.fingerprint.clone(),
    })
}

/// The default remote, when one is set.
pub fn default_remote() -> Result<Option<String>> {
    Ok(Remotes::load(&path()?)?.default)
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("invalid remote name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

pub fn run(cmd: RemoteCmd) -> Result<()> {
    let path = path()?;
    let mut remotes = Remotes::load(&path)?;
    match cmd {
        RemoteCmd::Add {
            name,
            url,
            token,
            token_stdin,
            fingerprint,
        } => {
            valid_name(&name)?;
            if remotes.remotes.contains_key(&name) {
                bail!(
                    "remote {name:?} exists already; `hv remote remove {name}` first to replace it"
                );
            }
            let token = match token {
                Some(t) => t,
                None if token_stdin => {
                    let mut t = String::new();
                    std::io::stdin()
                        .read_line(&mut t)
                        .context("cannot read the token from standard input")?;
                    t.trim().to_string()
                }
                None => bail!("give the token with --token or --token-stdin"),
            };
            if token.is_empty() {
                bail!("the token is empty; create one on the server with `hv token create USER`");
            }
            let expected = fingerprint
                .as_deref()
                .map(|f| {
                    client::normalize_fingerprint(f).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--fingerprint {f:?} is not a certificate fingerprint; give it as `hv host cert` prints it: SHA256: and 64 hex digits"
                        )
                    })
                })
                .transpose()?;
            let c = Client::https(&url, &token, expected.as_deref())?;
            // One authenticated call: the server is there, the token works, and the TLS
            // handshake showed its certificate.
            let checked = c.ping();
            let seen = c.server_fingerprint();
            if let Err(e) = checked {
                if let (Some(want), Some(got)) = (&expected, &seen) {
                    if want != got {
                        bail!(
                            "hvd at {url} presents certificate {got}, not the --fingerprint {want}; remote {name} was not added. check the fingerprint with `hv host cert` on that host"
                        );
                    }
                }
                return Err(anyhow::Error::new(e).context(format!("remote {name} was not added")));
            }
            let seen = seen.context("the TLS handshake showed no certificate")?;
            let url = c.remote_url().unwrap_or(&url).to_string();
            remotes.remotes.insert(
                name.clone(),
                Remote {
                    url: url.clone(),
                    token,
                    fingerprint: seen.clone(),
                },
            );
            remotes.save(&path)?;
            println!("hvd at {url} presents certificate {seen}");
            if expected.is_some() {
                println!("it matches --fingerprint; remote {name} added and pinned to it");
            } else {
                println!(
                    "pinned it (trust on first use: compare it with `hv host cert` on that host); remote {name} added"
                );
            }
            println!("use it with: hv --remote {name} list");
        }
        RemoteCmd::List => {
            let rows: Vec<Vec<String>> = remotes
                .remotes
                .iter()
                .map(|(name, r)| {
                    let default = remotes.default.as_deref() == Some(name.as_str());
                    vec![
                        name.clone(),
                        r.url.clone(),
                        r.fingerprint.clone(),
                        if default { "yes" } else { "" }.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(&["NAME", "URL", "FINGERPRINT", "DEFAULT"], &rows)
            );
        }
        RemoteCmd::Remove { name } => {
            if remotes.remotes.remove(&name).is_none() {
                remotes.get(&name)?;
            }
            if remotes.default.as_deref() == Some(&name) {
                remotes.default = None;
            }
            remotes.save(&path)?;
            println!("remote {name} removed");
        }
        RemoteCmd::Default { name, none } => {
            if none {
                remotes.default = None;
                remotes.save(&path)?;
                println!("no default remote: hv uses the local socket");
            } else if let Some(name) = name {
                remotes.get(&name)?;
                remotes.default = Some(name.clone());
                remotes.save(&path)?;
                println!("hv now talks to remote {name} unless told otherwise");
            }
        }
    }
    Ok(())
}
