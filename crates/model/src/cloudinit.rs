//! cloud-init NoCloud inputs of a VM (`cloud_init` in [`crate::VmSpec`]) and the pure
//! composition of the seed's three files from them.
//!
//! The spec holds the *contents* the user gave (never host paths): `user_data`, `meta_data`
//! and `network_config` as text, plus the shortcuts `hostname`, `user` and `ssh_keys`. The
//! shortcuts compose into the seed:
//! - meta-data gets `instance-id` (unless the user's meta-data has one) and `local-hostname`;
//! - user-data (`#cloud-config`) gets `hostname`, and with `user` a `users:` entry holding the
//!   keys (without `user`, the keys go to the image's default user as `ssh_authorized_keys`).
//!
//! When the user's own user-data or meta-data already sets what a shortcut sets, the spec is
//! refused rather than one silently winning. Shortcuts merge only into `#cloud-config`
//! user-data; a `#!` script is passed through as it is and cannot be combined with them.
//!
//! The instance-id hv makes is `iid-hv-` and a hash of the VM's name and these inputs: stable
//! across boots (cloud-init runs its per-instance modules once), new when an input changes (so
//! a changed hostname or key is applied at the next boot).

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use crate::spec::SpecError;

/// Largest size of each of the seed's files (user's and composed), in bytes.
pub const MAX_SEED_FILE: usize = 64 << 10;
/// Most ssh keys a VM's seed carries.
pub const MAX_SSH_KEYS: usize = 64;

/// Key types cloud-init and OpenSSH accept in `authorized_keys` (no DSA: OpenSSH dropped it).
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// What a VM's cloud-init seed is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// The user's user-data: `#cloud-config` YAML or a `#!` script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The user's meta-data (YAML mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    /// The user's network-config (YAML, version 1 or 2), passed through as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// The guest's host name (a DNS label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A user to create (a POSIX user name), holding `ssh_keys`, with passwordless sudo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Public keys (one `authorized_keys` line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

/// The three files of a NoCloud seed, as they are written to the `cidata` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: Option<String>,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::new(format!("cloud_init.{field}"), message)
}

/// A DNS label: letters, digits and inner hyphens, 1 to 63 characters.
pub fn check_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            "hostname",
            format!(
                "{:?} is not a DNS label; use 1 to 63 letters, digits and inner hyphens",
                h.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// A portable POSIX user name (`[a-z_][a-z0-9_-]{0,31}`), not root.
pub fn check_user(u: &str) -> Result<(), SpecError> {
    let mut chars = u.chars();
    let ok = u.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(err(
            "user",
            format!(
                "{:?} is not a user name; use a lowercase letter or _ then up to 31 of a-z 0-9 _ -",
                u.chars().take(80).collect::<String>()
            ),
        ));
    }
    if u == "root" {
        return Err(err(
            "user",
            "root cannot be the cloud-init user (cloud-init disables root's ssh login); name a new user",
        ));
    }
    Ok(())
}

/// One `authorized_keys` line: a known key type, base64 key data, an optional comment.
pub fn check_ssh_key(i: usize, key: &str) -> Result<(), SpecError> {
    let field = format!("ssh_keys[{i}]");
    if key.len() > 16 << 10 {
        return Err(err(
            &field,
            "is longer than 16 KiB; give one public key per line",
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(err(
            &field,
            format!("contains the control character {c:?}; a public key is one line"),
        ));
    }
    let mut parts = key.split(' ');
    let kind = parts.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(err(
            &field,
            format!(
                "does not start with a known key type ({}); give the public key (.pub), not the private one",
                SSH_KEY_TYPES.join(", ")
            ),
        ));
    }
    let data = parts.next().unwrap_or_default();
    let b64 = data.len() >= 16
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if !b64 {
        return Err(err(
            &field,
            format!("the {kind} key has no base64 key data after its type"),
        ));
    }
    Ok(())
}

/// Splits an `authorized_keys`-style file into its keys (blank and `#` lines skipped).
pub fn parse_ssh_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn check_text(field: &str, text: &str) -> Result<(), SpecError> {
    if text.len() > MAX_SEED_FILE {
        return Err(err(
            field,
            format!(
                "is {} bytes; at most {} KiB",
                text.len(),
                MAX_SEED_FILE >> 10
            ),
        ));
    }
    if text.contains('\0') {
        return Err(err(field, "contains a NUL byte; give a text file"));
    }
    Ok(())
}

/// Parses YAML that must be a mapping (an empty document is an empty mapping).
fn parse_mapping(field: &str, text: &str) -> Result<Mapping, SpecError> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(err(field, "is not a YAML mapping (key: value lines)")),
        Err(e) => Err(err(field, format!("is not valid YAML: {e}"))),
    }
}

fn emit(field: &str, header: &str, m: &Mapping) -> Result<String, SpecError> {
    let body = serde_yaml_ng::to_string(m).map_err(|e| err(field, format!("cannot write: {e}")))?;
    let out = format!("{header}{body}");
    check_text(field, &out)?;
    Ok(out)
}

/// Whether user-data's first line is `#cloud-config`.
fn is_cloud_config(t: &str) -> bool {
    t.lines().next().map(str::trim_end) == Some("#cloud-config")
}

/// A 64-bit FNV-1a hash: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl CloudInit {
    /// The instance-id hv gives a VM with these inputs (see the module docs).
    pub fn instance_id(&self, vm: &str) -> String {
        let keys = self.ssh_keys.join("\n");
        let h = fnv1a(&[
            vm,
            self.user_data.as_deref().unwrap_or("\u{1}"),
            self.meta_data.as_deref().unwrap_or("\u{1}"),
            self.network_config.as_deref().unwrap_or("\u{1}"),
            self.hostname.as_deref().unwrap_or("\u{1}"),
            self.user.as_deref().unwrap_or("\u{1}"),
            &keys,
        ]);
        format!("iid-hv-{h:016x}")
    }

    /// Checks every input (also by composing the seed).
    pub fn validate(&self, vm: &str) -> Result<(), SpecError> {
        self.compose(vm).map(drop)
    }

    /// Builds the seed's files from the inputs, refusing what cannot be combined.
    pub fn compose(&self, vm: &str) -> Result<SeedFiles, SpecError> {
        for (field, t) in [
            ("user_data", &self.user_data),
            ("meta_data", &self.meta_data),
            ("network_config", &self.network_config),
        ] {
            if let Some(t) = t {
                check_text(field, t)?;
            }
        }
        if let Some(h) = &self.hostname {
            check_hostname(h)?;
        }
        if let Some(u) = &self.user {
            check_user(u)?;
        }
        if self.ssh_keys.len() > MAX_SSH_KEYS {
            return Err(err("ssh_keys", format!("at most {MAX_SSH_KEYS} keys")));
        }
        for (i, k) in self.ssh_keys.iter().enumerate() {
            check_ssh_key(i, k)?;
        }
        if let Some(n) = &self.network_config {
            parse_mapping("network_config", n)?;
        }
        let meta_data = self.compose_meta(vm)?;
        let user_data = self.compose_user()?;
        Ok(SeedFiles {
            user_data,
            meta_data,
            network_config: self.network_config.clone(),
        })
    }

    fn compose_meta(&self, vm: &str) -> Result<String, SpecError> {
        let mut m = match &self.meta_data {
            Some(t) => parse_mapping("meta_data", t)?,
            None => Mapping::new(),
        };
        if !m.contains_key("instance-id") {
            m.insert("instance-id".into(), self.instance_id(vm).into());
        }
        if let Some(h) = &self.hostname {
            match m.get("local-hostname") {
                Some(Value::String(s)) if s == h => {}
                Some(_) => {
                    return Err(err(
                        "meta_data",
                        "sets local-hostname and --hostname is given too; keep one of them",
                    ))
                }
                None => {
                    m.insert("local-hostname".into(), h.clone().into());
                }
            }
        }
        emit("meta_data", "", &m)
    }

    fn compose_user(&self) -> Result<String, SpecError> {
        let shortcuts = self.hostname.is_some() || self.user.is_some() || !self.ssh_keys.is_empty();
        let mut m = match &self.user_data {
            None => Mapping::new(),
            Some(t) if is_cloud_config(t) => parse_mapping("user_data", t)?,
            Some(t) if t.starts_with("#!") => {
                if shortcuts {
                    return Err(err(
                        "user_data",
                        "is a script; --hostname, --user and --ssh-key merge only into #cloud-config user-data (set them in the script instead)",
                    ));
                }
                return Ok(t.clone());
            }
            Some(_) => {
                return Err(err(
                    "user_data",
                    "must start with a \"#cloud-config\" line (YAML) or \"#!\" (a script); other cloud-init formats (#include, MIME, gzip, boothooks) are not accepted",
                ))
            }
        };
        if !shortcuts {
            if let Some(t) = &self.user_data {
                return Ok(t.clone());
            }
        }
        if let Some(h) = &self.hostname {
            if m.contains_key("hostname") || m.contains_key("fqdn") {
                return Err(err(
                    "user_data",
                    "sets hostname (or fqdn) and --hostname is given too; keep one of them",
                ));
            }
            m.insert("hostname".into(), h.clone().into());
        }
        let keys: Vec<Value> = self.ssh_keys.iter().cloned().map(Value::from).collect();
        match &self.user {
            Some(u) => {
                if m.contains_key("users") {
                    return Err(err(
                        "user_data",
                        "has a users: list and --user is given too; add the user to users: (with its ssh_authorized_keys) or drop users:",
                    ));
                }
                let mut entry = Mapping::new();
                entry.insert("name".into(), u.clone().into());
                entry.insert("shell".into(), "/bin/bash".into());
                entry.insert("sudo".into(), "ALL=(ALL) NOPASSWD:ALL".into());
                entry.insert("lock_passwd".into(), true.into());
                if !keys.is_empty() {
                    entry.insert("ssh_authorized_keys".into(), Value::Sequence(keys));
                }
                m.insert("users".into(), Value::Sequence(vec![Value::Mapping(entry)]));
            }
            None if !keys.is_empty() => match m.get_mut("ssh_authorized_keys") {
                Some(Value::Sequence(s)) => s.extend(keys),
                Some(_) => {
                    return Err(err(
                        "user_data",
                        "ssh_authorized_keys is not a list; make it one or drop --ssh-key",
                    ))
                }
                None => {
                    m.insert("ssh_authorized_keys".into(), Value::Sequence(keys));
                }
            },
            None => {}
        }
        emit("user_data", "#cloud-config\n", &m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0Lx9w2Xb6b5Jw3y0Ck3k6m4tZp6r0G3a9Z0v7c2Q1n me@host";

    fn check(ci: CloudInit) -> Result<SeedFiles, String> {
        ci.compose("vm1").map_err(|e| e.to_string())
    }

    #[test]
    fn shortcuts_compose_into_meta_and_user_data() {
        let s = check(CloudInit {
            hostname: Some("web1".into()),
            user: Some("alice".into()),
            ssh_keys: vec![KEY.into()],
            ..Default::default()
        })
        .unwrap();
        assert!(
            s.meta_data.contains("local-hostname: web1"),
            "{}",
            s.meta_data
        );
        assert!(
            s.meta_data.contains("instance-id: iid-hv-"),
            "{}",
            s.meta_data
        );
        assert!(s.user_data.starts_with("#cloud-config\n"));
        let v: Value = serde_yaml_ng::from_str(&s.user_data).unwrap();
        assert_eq!(v["hostname"], Value::from("web1"));
        assert_eq!(v["users"][0]["name"], Value::from("alice"));
        assert_eq!(v["users"][0]["ssh_authorized_keys"][0], Value::from(KEY));
    }

    #[test]
    fn user_data_is_kept_verbatim_without_shortcuts_and_merged_with_them() {
        let ud = "#cloud-config\n# a comment\nruncmd:\n  - [echo, hi]\n";
        let s = check(CloudInit {
            user_data: Some(ud.into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.user_data, ud);
        let s = check(CloudInit {
            user_data: Some(ud.into()),
            hostname: Some("h".into()),
            ..Default::default()
        })
        .unwrap();
        let v: Value = serde_yaml_ng::from_str(&s.user_data).unwrap();
        assert_eq!(v["hostname"], Value::from("h"));
        assert_eq!(v["runcmd"][0][1], Value::from("hi"));
    }

    #[test]
    fn keys_without_user_go_to_the_default_user() {
        let s = check(CloudInit {
            user_data: Some(
                "#cloud-config\nssh_authorized_keys: [\"ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB x\"]\n"
                    .into(),
            ),
            ssh_keys: vec![KEY.into()],
            ..Default::default()
        })
        .unwrap();
        let v: Value = serde_yaml_ng::from_str(&s.user_data).unwrap();
        assert_eq!(v["ssh_authorized_keys"][1], Value::from(KEY));
    }

    #[test]
    fn instance_id_is_stable_and_follows_the_inputs() {
        let a = CloudInit {
            hostname: Some("a".into()),
            ..Default::default()
        };
        let b = CloudInit {
            hostname: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(a.instance_id("vm"), a.instance_id("vm"));
        assert_ne!(a.instance_id("vm"), b.instance_id("vm"));
        assert_ne!(a.instance_id("vm"), a.instance_id("vm2"));
        let own = check(CloudInit {
            meta_data: Some("instance-id: mine\n".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(own.meta_data, "instance-id: mine\n");
    }

    #[test]
    fn hostile_inputs_are_refused_with_the_field_and_the_fix() {
        let cases: Vec<(CloudInit, &str)> = vec![
            (
                CloudInit {
                    hostname: Some("-bad".into()),
                    ..Default::default()
                },
                "cloud_init.hostname",
            ),
            (
                CloudInit {
                    hostname: Some("a.b".into()),
                    ..Default::default()
                },
                "not a DNS label",
            ),
            (
                CloudInit {
                    hostname: Some("x".repeat(64)),
                    ..Default::default()
                },
                "hostname",
            ),
            (
                CloudInit {
                    user: Some("Root".into()),
                    ..Default::default()
                },
                "not a user name",
            ),
            (
                CloudInit {
                    user: Some("root".into()),
                    ..Default::default()
                },
                "root cannot",
            ),
            (
                CloudInit {
                    user: Some("a;rm -rf /".into()),
                    ..Default::default()
                },
                "not a user name",
            ),
            (
                CloudInit {
                    ssh_keys: vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()],
                    ..Default::default()
                },
                "known key type",
            ),
            (
                CloudInit {
                    ssh_keys: vec![format!("{KEY}\nssh-rsa AAAA")],
                    ..Default::default()
                },
                "control character",
            ),
            (
                CloudInit {
                    ssh_keys: vec!["ssh-ed25519".into()],
                    ..Default::default()
                },
                "no base64",
            ),
            (
                CloudInit {
                    user_data: Some("#include http://x/y".into()),
                    ..Default::default()
                },
                "must start with",
            ),
            (
                CloudInit {
                    user_data: Some("#cloud-config\n: : [".into()),
                    ..Default::default()
                },
                "not valid YAML",
            ),
            (
                CloudInit {
                    user_data: Some("#cloud-config\n- a\n".into()),
                    ..Default::default()
                },
                "not a YAML mapping",
            ),
            (
                CloudInit {
                    user_data: Some(format!("#cloud-config\n#{}", "x".repeat(MAX_SEED_FILE))),
                    ..Default::default()
                },
                "at most 64 KiB",
            ),
            (
                CloudInit {
                    user_data: Some("#!/bin/sh\necho\n".into()),
                    hostname: Some("h".into()),
                    ..Default::default()
                },
                "is a script",
            ),
            (
                CloudInit {
                    user_data: Some("#cloud-config\nhostname: x\n".into()),
                    hostname: Some("h".into()),
                    ..Default::default()
                },
                "keep one",
            ),
            (
                CloudInit {
                    user_data: Some("#cloud-config\nusers: []\n".into()),
                    user: Some("bob".into()),
                    ..Default::default()
                },
                "users:",
            ),
            (
                CloudInit {
                    meta_data: Some("local-hostname: x\n".into()),
                    hostname: Some("h".into()),
                    ..Default::default()
                },
                "keep one",
            ),
            (
                CloudInit {
                    network_config: Some("[1, 2]".into()),
                    ..Default::default()
                },
                "network_config",
            ),
            (
                CloudInit {
                    meta_data: Some("a\0b".into()),
                    ..Default::default()
                },
                "NUL",
            ),
        ];
        for (ci, want) in cases {
            let e = check(ci.clone()).expect_err(&format!("{ci:?} was accepted"));
            assert!(e.contains(want), "{ci:?}: {e} does not say {want:?}");
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_not_expanded() {
        let mut y = String::from("#cloud-config\na: &a [x,x,x,x,x,x,x,x,x,x]\n");
        let mut prev = 'a';
        for c in 'b'..='k' {
            y.push_str(&format!("{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = c;
        }
        // Without shortcuts user-data is only checked, but the check parses it.
        assert!(check(CloudInit {
            user_data: Some(y),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn ssh_key_files_are_split_into_lines() {
        assert_eq!(
            parse_ssh_keys(&format!("# mine\n\n{KEY}\n  {KEY}  \n")),
            vec![KEY.to_string(), KEY.to_string()]
        );
    }
}
