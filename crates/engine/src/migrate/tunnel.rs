//! Byte pumps between a Unix socket (QEMU's end of a channel) and a tunnel to the other hvd.
//!
//! A migration stream never rests while it runs, so a pump whose two directions both stay
//! silent for [`IDLE`] ends with an error: a cut link (no RST ever comes) is noticed by both
//! hvds without waiting for TCP's own timeouts. Only read deadlines are used, no timer loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long both directions may stay silent.
pub const IDLE: Duration = Duration::from_secs(20);

const BUF: usize = 256 << 10;
/// `last` once a direction has ended.
const ENDED: u64 = u64::MAX;

async fn one_way<R, W>(
    mut r: R,
    mut w: W,
    last: Arc<AtomicU64>,
    start: Instant,
    idle: Duration,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                let quiet = (start.elapsed().as_millis() as u64)
                    .saturating_sub(last.load(Ordering::Relaxed));
                // Once one direction has ended cleanly, the other may take its time.
                if quiet >= idle.as_millis() as u64 && last.load(Ordering::Relaxed) != ENDED {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no bytes either way for {} s: the link is down",
                            idle.as_secs()
                        ),
                    ));
                }
                continue;
            }
        };
        if n == 0 {
            last.store(ENDED, Ordering::Relaxed);
            w.shutdown().await?;
            return Ok(total);
        }
        // A write that cannot drain for the whole limit is a dead link too.
        tokio::time::timeout(idle, w.write_all(&buf[..n]))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the other side took nothing for {} s: the link is down",
                        idle.as_secs()
                    ),
                )
            })??;
        total += n as u64;
        let _ = last.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v != ENDED).then(|| start.elapsed().as_millis() as u64)
        });
    }
}

/// Copies both ways until both sides have ended; returns the bytes (a→b, b→a).
pub async fn pump<A, B>(a: A, b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pump_with(a, b, IDLE).await
}

/// [`pump`] with another silence limit.
pub async fn pump_with<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    tokio::try_join!(
        one_way(ar, bw, last.clone(), start, idle),
        one_way(br, aw, last, start, idle)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_silence_ends_the_pump() {
        let (a, mut a_peer) = tokio::io::duplex(1 << 16);
        let (b, mut b_peer) = tokio::io::duplex(1 << 16);
        let p = tokio::spawn(pump_with(a, b, Duration::from_millis(200)));
        a_peer.write_all(b"to b").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to b");
        b_peer.write_all(b"back").await.unwrap();
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
        // Both sides stay open and silent: the pump gives up.
        let e = p.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        drop((a_peer, b_peer));
        // Ends cleanly when both sides close.
        let (a, a_peer) = tokio::io::duplex(64);
        let (b, b_peer) = tokio::io::duplex(64);
        drop((a_peer, b_peer));
        assert_eq!(pump(a, b).await.unwrap(), (0, 0));
    }
}
