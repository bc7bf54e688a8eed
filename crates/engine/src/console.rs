//! The serial console hub of one VM: hvd is the only client of QEMU's serial socket and fans
//! its output out to any number of attached consoles and waiters, and their input back in.
//!
//! QEMU itself appends everything the console prints to `console.log` (also while hvd is
//! down); the hub keeps the last [`SCROLLBACK`] bytes of the current run in memory, seeded from
//! that file on re-attach, and caps the file at [`LOG_CAP`] bytes.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// Bytes of scrollback kept in memory per VM.
pub const SCROLLBACK: usize = 1 << 20;
/// The console log file is truncated when it grows past this.
pub const LOG_CAP: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub enum ConsoleMsg {
    Data(std::sync::Arc<[u8]>),
    /// The VM started again: what came before is not "since the VM last started".
    Reset,
    /// QEMU closed the console (the VM stopped).
    Closed,
}

struct Inner {
    buf: VecDeque<u8>,
    input: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Created on first use: a VM that never runs or is never watched costs no channel
    /// (a 1,024-slot ring is about 48 KiB, and hvd may define thousands of VMs).
    tx: Option<broadcast::Sender<ConsoleMsg>>,
}

impl Inner {
    fn send(&self, msg: ConsoleMsg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }
}

pub struct ConsoleHub {
    inner: Mutex<Inner>,
}

impl Default for ConsoleHub {
    fn default() -> Self {
        ConsoleHub {
            inner: Mutex::new(Inner {
                buf: VecDeque::new(),
                input: None,
                tx: None,
            }),
        }
    }
}

impl ConsoleHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the previous run's output.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.buf.clear();
        g.buf.shrink_to_fit();
        g.send(ConsoleMsg::Reset);
    }

    /// Seeds the scrollback from the tail of the log file (re-attach after a restart).
    pub fn seed_from_log(&self, log: &Path) {
        let Ok(mut f) = std::fs::File::open(log) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(SCROLLBACK as u64);
        let mut data = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_ok() && f.read_to_end(&mut data).is_ok() {
            let mut g = self.lock();
            g.buf.clear();
            g.buf.extend(data);
        }
    }

    fn push(&self, data: &[u8]) {
        let mut g = self.lock();
        g.buf.extend(data);
        let excess = g.buf.len().saturating_sub(SCROLLBACK);
        g.buf.drain(..excess);
        g.send(ConsoleMsg::Data(data.into()));
    }

    /// The scrollback plus a receiver for everything after it, taken atomically.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<ConsoleMsg>) {
        let mut g = self.lock();
        let rx =
            g.tx.get_or_insert_with(|| broadcast::channel(1024).0)
                .subscribe();
        let (a, b) = g.buf.as_slices();
        (([a, b]).concat(), rx)
    }

    /// Types into the console. Fails when no QEMU console is connected.
    pub fn send_input(&self, data: Vec<u8>) -> bool {
        match &self.lock().input {
            Some(tx) => tx.send(data).is_ok(),
            None => false,
        }
    }

    /// Takes over QEMU's serial socket: reads output into the hub, writes queued input.
    pub fn attach(self: &std::sync::Arc<Self>, stream: UnixStream, log: PathBuf) {
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.lock().input = Some(tx);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        let hub = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            let mut since_check = 0usize;
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        hub.push(&buf[..n]);
                        since_check += n;
                        if since_check > (1 << 20) {
                            since_check = 0;
                            cap_log(&log);
                        }
                    }
                }
            }
            hub.lock().input = None;
            hub.lock().send(ConsoleMsg::Closed);
        });
    }
}

/// QEMU opens the log with O_APPEND, so truncating it in place is safe: later writes land at
/// the new end. The in-memory scrollback still holds the last [`SCROLLBACK`] bytes.
fn cap_log(log: &Path) {
    if std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) > LOG_CAP {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(log) {
            let _ = f.set_len(0);
            tracing::info!(log = %log.display(), "console log reached its cap and was truncated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_scrollback_then_live_output() {
        let hub = std::sync::Arc::new(ConsoleHub::default());
        hub.push(b"hello ");
        let (snap, mut rx) = hub.subscribe();
        assert_eq!(snap, b"hello ");
        hub.push(b"world");
        match rx.recv().await.unwrap() {
            ConsoleMsg::Data(d) => assert_eq!(&d[..], b"world"),
            other => panic!("unexpected {other:?}"),
        }
        hub.reset();
        assert!(matches!(rx.recv().await.unwrap(), ConsoleMsg::Reset));
        assert!(hub.subscribe().0.is_empty());
    }

    #[test]
    fn scrollback_is_capped() {
        let hub = ConsoleHub::default();
        let chunk = vec![b'x'; 300 << 10];
        for _ in 0..5 {
            hub.push(&chunk);
        }
        assert_eq!(hub.subscribe().0.len(), SCROLLBACK);
        assert!(!hub.send_input(b"a".to_vec()), "no QEMU is attached");
    }
}
