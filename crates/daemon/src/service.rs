//! hvd as a service: where its logs go and what it tells its service manager.
//!
//! Under systemd (stderr is the journal stream systemd named in `JOURNAL_STREAM`) hvd logs to
//! journald natively, so each record keeps its fields (`VM`, `OP`, `USER`, ... and those of its
//! spans) as journal fields: `journalctl -u hvd VM=web1`. Otherwise it logs text to stderr.
//! With `Type=notify` hvd sends `READY=1` once its API sockets accept connections, `STATUS=`
//! lines, and `STOPPING=1` when it stops; without `$NOTIFY_SOCKET` these do nothing.

use std::os::unix::fs::MetadataExt;

use crate::config::LogFormat;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Sets up the one tracing subscriber of hvd: journald under systemd, stderr otherwise (in
/// `format`). `level` is the filter (`--log-level`, already validated).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                // No `F_` prefix: fields are `VM=`, `OP=`, ... as operators query them (none of
                // hv's field names is a journal field of its own).
                let journal = journal
                    .with_syslog_identifier("hvd".to_owned())
                    .with_field_prefix(None);
                registry.with(journal).init();
                return;
            }
            Err(e) => eprintln!("hvd: cannot log to journald ({e}); logging to stderr"),
        }
    }
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => registry.with(text).init(),
        LogFormat::Compact => registry.with(text.compact()).init(),
    }
}

/// True when stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and a child with a redirected stderr must not log to journald.
fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&var.to_string_lossy(), meta.dev(), meta.ino())
}

/// Parses `JOURNAL_STREAM` (`DEVICE:INODE`, decimal) and compares it with stderr's identity.
fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Tells the service manager that hvd serves its API (no-op without `$NOTIFY_SOCKET`).
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells the service manager that hvd is stopping (VMs keep running).
pub fn notify_stopping() {
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping; VMs keep running"),
    ]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // `false`: keep $NOTIFY_SOCKET (removing it from the environment is unsound once threads run).
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:1", 0, 1));
    }
}
