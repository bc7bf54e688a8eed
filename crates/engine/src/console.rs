//! The serial console hub of one VM: hvd is the only client of QEMU's serial socket and fans
//! its output out to any number of attached consoles and waiters, and their input back in.
//!
//! QEMU itself appends everything the console prints to `console.log` (also while hvd is
//! down); the hub keeps the last [`SCROLLBACK`] bytes of the current run in memory, seeded from
//! that file on re-attach, and caps QEMU's logs (see [`crate::logcap`]) when it attaches and
//! as output arrives.
//!
//! Both directions are bounded: input waiting for QEMU is capped at [`INPUT_CAP`] bytes (more is
//! refused, not queued), and a reader that falls behind the output ring learns how many bytes
//! it missed ([`FeedItem::Data`]`.skipped`) instead of silently losing them.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// Bytes of scrollback kept in memory per VM.
pub const SCROLLBACK: usize = 1 << 20;
/// Console input accepted but not yet written to QEMU, at most (a guest that does not read
/// its serial port makes QEMU stop reading, and input then waits here).
pub const INPUT_CAP: usize = 1 << 20;
/// Output chunks a reader may be behind before it skips some.
const RING: usize = 1024;

#[derive(Debug, Clone)]
pub enum ConsoleMsg {
    /// Output; `end` counts every byte the hub has seen, up to and including this chunk.
    Data { end: u64, data: Arc<[u8]> },
    /// The VM started again: what came before is not "since the VM last started".
    Reset,
    /// QEMU closed the console (the VM stopped).
    Closed,
}

/// Why console input was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("its console is not connected (is it running?)")]
    NotConnected,
    #[error("its console input queue is full ({INPUT_CAP} bytes wait for the guest to read them); the input was dropped: send less, or wait")]
    Full,
}

/// One step of a [`ConsoleFeed`].
#[derive(Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// Output; `skipped` bytes before it were lost because this reader fell behind.
    Data {
        skipped: u64,
        data: Arc<[u8]>,
    },
    Reset,
    Closed,
}

/// A reader of live console output that counts what it missed.
pub struct ConsoleFeed {
    rx: broadcast::Receiver<ConsoleMsg>,
    /// The hub's byte count this reader has seen up to.
    seen: u64,
}

impl ConsoleFeed {
    pub async fn recv(&mut self) -> FeedItem {
        loop {
            match self.rx.recv().await {
                Ok(ConsoleMsg::Data { end, data }) => {
                    let start = end.saturating_sub(data.len() as u64);
                    let skipped = start.saturating_sub(self.seen);
                    self.seen = end;
                    return FeedItem::Data { skipped, data };
                }
                Ok(ConsoleMsg::Reset) => return FeedItem::Reset,
                Ok(ConsoleMsg::Closed) | Err(broadcast::error::RecvError::Closed) => {
                    return FeedItem::Closed
                }
                // The next chunk's `end` tells how much was lost.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
            }
        }
    }
}

/// The marker a console stream shows where a slow reader missed output.
pub fn skipped_marker(skipped: u64) -> String {
    format!("\r\n[hv: {skipped} bytes of console output were skipped]\r\n")
}

struct Inner {
    buf: VecDeque<u8>,
    /// Every output byte seen, over the hub's life (never reset).
    total: u64,
    input: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Bytes of input queued for QEMU, bounded by [`INPUT_CAP`].
    queued: Arc<AtomicUsize>,
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
                total: 0,
                input: None,
                queued: Arc::new(AtomicUsize::new(0)),
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
        g.total += data.len() as u64;
        let end = g.total;
        g.send(ConsoleMsg::Data {
            end,
            data: data.into(),
        });
    }

    /// The scrollback plus a receiver for everything after it, taken atomically.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<ConsoleMsg>) {
        let (snap, feed) = self.subscribe_feed();
        (snap, feed.rx)
    }

    /// Like [`Self::subscribe`], with a feed that reports output it had to skip.
    pub fn subscribe_feed(&self) -> (Vec<u8>, ConsoleFeed) {
        let mut g = self.lock();
        let rx =
            g.tx.get_or_insert_with(|| broadcast::channel(RING).0)
                .subscribe();
        let (a, b) = g.buf.as_slices();
        let snap = [a, b].concat();
        (snap, ConsoleFeed { rx, seen: g.total })
    }

    /// Types into the console. Fails when no QEMU console is connected, or when
    /// [`INPUT_CAP`] bytes already wait for the guest (the input is dropped, not queued).
    pub fn send_input(&self, data: Vec<u8>) -> Result<(), InputError> {
        let g = self.lock();
        let Some(tx) = &g.input else {
            return Err(InputError::NotConnected);
        };
        let len = data.len();
        g.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q + len <= INPUT_CAP).then_some(q + len)
            })
            .map_err(|_| InputError::Full)?;
        tx.send(data).map_err(|_| {
            g.queued.fetch_sub(len, Ordering::SeqCst);
            InputError::NotConnected
        })
    }

    /// Takes over QEMU's serial socket: reads output into the hub, writes queued input. The
    /// `logs` QEMU appends to (its console log, its stderr) are kept under `cap` bytes: checked
    /// now (they grew while hvd was down) and after every `cap / 4` bytes (at most 1 MiB) of
    /// output.
    pub fn attach(self: &std::sync::Arc<Self>, stream: UnixStream, logs: Vec<PathBuf>, cap: u64) {
        for log in &logs {
            crate::logcap::truncate_if_over(log, cap);
        }
        let check_every = (cap / 4).clamp(1, 1 << 20) as usize;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        {
            let mut g = self.lock();
            g.input = Some(tx);
            g.queued = queued.clone();
        }
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                let ok = wr.write_all(&data).await.is_ok();
                queued.fetch_sub(data.len(), Ordering::SeqCst);
                if !ok {
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
                        if since_check >= check_every {
                            since_check = 0;
                            for log in &logs {
                                crate::logcap::truncate_if_over(log, cap);
                            }
                        }
                    }
                }
            }
            hub.lock().input = None;
            hub.lock().send(ConsoleMsg::Closed);
        });
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
            ConsoleMsg::Data { data, end } => assert_eq!((&data[..], end), (&b"world"[..], 11)),
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
        assert_eq!(
            hub.send_input(b"a".to_vec()),
            Err(InputError::NotConnected),
            "no QEMU is attached"
        );
    }

    /// Issue 9: a reader that falls behind is told how many bytes it missed.
    #[tokio::test]
    async fn a_lagging_feed_counts_the_bytes_it_missed() {
        let hub = ConsoleHub::default();
        hub.push(b"old");
        let (snap, mut feed) = hub.subscribe_feed();
        assert_eq!(snap, b"old");
        hub.push(b"abc");
        assert_eq!(
            feed.recv().await,
            FeedItem::Data {
                skipped: 0,
                data: b"abc"[..].into()
            }
        );
        for _ in 0..RING + 10 {
            hub.push(b"0123456789");
        }
        let FeedItem::Data { skipped, data } = feed.recv().await else {
            panic!("data expected")
        };
        assert_eq!((skipped, &data[..]), (100, &b"0123456789"[..]));
    }

    /// Issue 9: input waiting for a guest that does not read it is bounded.
    #[tokio::test]
    async fn console_input_is_bounded() {
        let hub = Arc::new(ConsoleHub::default());
        // QEMU's end of the serial socket, never read: input piles up in hvd.
        let (ours, _qemu) = UnixStream::pair().unwrap();
        let log = std::env::temp_dir().join(format!("hv-console-test-{}", std::process::id()));
        hub.attach(ours, vec![log], 1 << 20);
        let chunk = vec![b'x'; 64 << 10];
        let mut accepted = 0usize;
        for _ in 0..1000 {
            match hub.send_input(chunk.clone()) {
                Ok(()) => accepted += chunk.len(),
                Err(e) => {
                    assert_eq!(e, InputError::Full);
                    break;
                }
            }
        }
        assert!(accepted <= INPUT_CAP, "{accepted} bytes queued");
        assert_eq!(hub.send_input(chunk), Err(InputError::Full));
    }
}
