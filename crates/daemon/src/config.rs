//! hvd's configuration file (`/etc/hv/hvd.toml`, `--config FILE`): parsing and merging, no
//! other I/O than reading the file. Flags and environment variables take precedence over the
//! file, and the file over the built-in defaults. Unknown keys are errors that name the key,
//! the file and the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer, Serialize};

use crate::metrics::Cidr;
use crate::Args;

/// The file hvd reads when neither `--config` nor `HV_CONFIG` names one, if it exists.
pub const DEFAULT_PATH: &str = "/etc/hv/hvd.toml";

/// How log lines look on stderr.
#[derive(clap::ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Time, level, message and fields.
    Text,
    /// Shorter lines: fields after the message, spans abbreviated.
    Compact,
}

/// The keys of the file, all optional. The names are the long flags with `_` for `-`.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_cap: Option<model::Size>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "uid_base"
    )]
    pub qemu_uid_base: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<SocketAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "idle_secs"
    )]
    pub console_idle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cidrs",
        serialize_with = "cidrs_out"
    )]
    pub metrics_allow: Option<Vec<Cidr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn uid_base<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = u32::deserialize(d)?;
    if !(1..=0x7fff_0000).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "qemu_uid_base {v} is out of range: pick 1 to 2147418112 (default 1879048192)"
        )));
    }
    Ok(Some(v))
}

fn idle_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = u64::deserialize(d)?;
    if !(1..=86_400).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "console_idle {v} is out of range: pick 1 to 86400 seconds"
        )));
    }
    Ok(Some(v))
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn cidrs_out<S: serde::Serializer>(v: &Option<Vec<Cidr>>, s: S) -> Result<S::Ok, S::Error> {
    let strings: Vec<String> = v.iter().flatten().map(Cidr::to_string).collect();
    strings.serialize(s)
}

/// Parses the text of a config file; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: "tls_cert and tls_key go together: set both or neither".into(),
        });
    }
    if let Some(level) = &cfg.log_level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "log_level {level:?} is not a level (error, warn, info, debug, trace) or filter"
                ),
            });
        }
    }
    Ok(cfg)
}

/// Which file to read: the one named by `--config`/`HV_CONFIG` (it must exist), else
/// [`DEFAULT_PATH`] when it exists, else none.
pub fn choose(named: Option<&Path>, default_exists: bool) -> Option<PathBuf> {
    match named {
        Some(p) => Some(p.to_path_buf()),
        None => default_exists.then(|| PathBuf::from(DEFAULT_PATH)),
    }
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Whether `id` was left at its default (neither a flag nor an environment variable set it).
fn defaulted(m: &clap::ArgMatches, id: &str) -> bool {
    !matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Fills in every setting that no flag or environment variable gave from the file.
pub fn apply(args: &mut Args, m: &clap::ArgMatches, file: FileConfig) {
    fn set<T>(m: &clap::ArgMatches, id: &str, slot: &mut T, v: Option<T>) {
        if let Some(v) = v {
            if defaulted(m, id) {
                *slot = v;
            }
        }
    }
    fn set_opt<T>(m: &clap::ArgMatches, id: &str, slot: &mut Option<T>, v: Option<T>) {
        if v.is_some() && defaulted(m, id) {
            *slot = v;
        }
    }
    set(m, "socket", &mut args.socket, file.socket);
    set(m, "state_dir", &mut args.state_dir, file.state_dir);
    set(m, "qemu", &mut args.qemu, file.qemu);
    set(m, "log_cap", &mut args.log_cap, file.log_cap);
    set(
        m,
        "qemu_uid_base",
        &mut args.qemu_uid_base,
        file.qemu_uid_base,
    );
    set_opt(m, "admin_group", &mut args.admin_group, file.admin_group);
    set(m, "listen", &mut args.listen, file.listen);
    // The certificate and its key come from one place, never one from each.
    if defaulted(m, "tls_cert") && defaulted(m, "tls_key") {
        set_opt(m, "tls_cert", &mut args.tls_cert, file.tls_cert);
        set_opt(m, "tls_key", &mut args.tls_key, file.tls_key);
    }
    set(m, "console_idle", &mut args.console_idle, file.console_idle);
    set_opt(
        m,
        "metrics_listen",
        &mut args.metrics_listen,
        file.metrics_listen,
    );
    set(
        m,
        "metrics_allow",
        &mut args.metrics_allow,
        file.metrics_allow,
    );
    set(m, "log_level", &mut args.log_level, file.log_level);
    set(m, "log_format", &mut args.log_format, file.log_format);
}

/// The settings hvd runs with, in the file's syntax (`hvd --check-config`).
pub fn effective(args: &Args) -> String {
    let cfg = FileConfig {
        socket: Some(args.socket.clone()),
        state_dir: Some(args.state_dir.clone()),
        qemu: Some(args.qemu.clone()),
        log_cap: Some(args.log_cap),
        qemu_uid_base: Some(args.qemu_uid_base),
        admin_group: args.admin_group.clone(),
        listen: Some(args.listen.clone()),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        console_idle: Some(args.console_idle),
        metrics_listen: args.metrics_listen,
        metrics_allow: Some(if args.metrics_allow.is_empty() {
            Cidr::loopback()
        } else {
            args.metrics_allow.clone()
        }),
        log_level: Some(args.log_level.clone()),
        log_format: Some(args.log_format),
    };
    toml::to_string(&cfg).unwrap_or_else(|e| format!("# cannot print the settings: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn check(text: &str) -> Result<FileConfig, String> {
        parse(Path::new("/etc/hv/hvd.toml"), text).map_err(|e| e.to_string())
    }

    fn merged(argv: &[&str], text: &str) -> Args {
        let m = Args::command()
            .try_get_matches_from(std::iter::once("hvd").chain(argv.iter().copied()))
            .expect("argv");
        let mut a = Args::from_arg_matches(&m).expect("args");
        apply(&mut a, &m, check(text).expect("file"));
        a
    }

    #[test]
    fn the_shipped_file_parses_and_sets_only_the_admin_group() {
        let text = include_str!("../../../packaging/hvd.toml");
        let cfg = check(text).expect("packaging/hvd.toml");
        assert_eq!(
            cfg,
            FileConfig {
                admin_group: Some("hv-admin".into()),
                ..Default::default()
            }
        );
        // Every key of the file is documented in it (commented out, with its default).
        for key in [
            "socket",
            "state_dir",
            "qemu",
            "log_cap",
            "qemu_uid_base",
            "admin_group",
            "listen",
            "tls_cert",
            "tls_key",
            "console_idle",
            "metrics_listen",
            "metrics_allow",
            "log_level",
            "log_format",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "packaging/hvd.toml does not document {key}"
            );
        }
        // Uncommenting every documented default gives a file that parses to the defaults.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            // These have no default: the file shows an example.
            .filter(|l| !l.starts_with("tls_") && !l.starts_with("metrics_listen"))
            .map(|l| format!("{l}\n"))
            .collect();
        let defaults = merged(&[], &uncommented);
        let builtin = merged(&[], "");
        assert_eq!(effective(&defaults), effective(&builtin));
    }

    #[test]
    fn unknown_keys_name_the_key_the_file_and_the_line() {
        let e = check("socket = \"/run/x.sock\"\n\nsocket_path = \"/x\"\n").unwrap_err();
        assert!(e.contains("/etc/hv/hvd.toml"), "{e}");
        assert!(e.contains("socket_path"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, needle) in [
            ("console_idle = 0", "console_idle"),
            ("qemu_uid_base = 0", "qemu_uid_base"),
            ("log_cap = \"8Q\"", "line 1"),
            ("metrics_allow = [\"10.0.0.0/33\"]", "10.0.0.0/33"),
            ("listen = [\"localhost\"]", "line 1"),
            ("log_format = \"xml\"", "xml"),
            ("log_level = \"info,[\"", "log_level"),
            ("tls_cert = \"/c.pem\"", "tls_key"),
            ("socket = ", "line 1"),
        ] {
            let e = check(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = "socket = \"/run/file.sock\"\nconsole_idle = 60\nadmin_group = \"wheel\"\n\
                    log_format = \"compact\"\ntls_cert = \"/f.pem\"\ntls_key = \"/f.key\"\n";
        let a = merged(&[], file);
        assert_eq!(a.socket, PathBuf::from("/run/file.sock"));
        assert_eq!(a.console_idle, 60);
        assert_eq!(a.admin_group.as_deref(), Some("wheel"));
        assert_eq!(a.log_format, LogFormat::Compact);
        assert_eq!(a.tls_cert, Some(PathBuf::from("/f.pem")));
        let a = merged(
            &[
                "--socket",
                "/run/flag.sock",
                "--admin-group",
                "adm",
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/c.key",
            ],
            file,
        );
        assert_eq!(a.socket, PathBuf::from("/run/flag.sock"));
        assert_eq!(a.admin_group.as_deref(), Some("adm"));
        assert_eq!(a.tls_key, Some(PathBuf::from("/c.key")));
        // A flag given with its default value still wins.
        let a = merged(&["--console-idle", "900"], file);
        assert_eq!(a.console_idle, 900);
    }

    #[test]
    fn the_default_file_is_read_only_when_no_other_is_named() {
        assert_eq!(choose(None, false), None);
        assert_eq!(choose(None, true), Some(PathBuf::from(DEFAULT_PATH)));
        assert_eq!(
            choose(Some(Path::new("/x.toml")), true),
            Some(PathBuf::from("/x.toml"))
        );
    }
}
