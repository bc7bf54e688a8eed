//! Byte pumps between a Unix socket (QEMU's end of a channel) and a tunnel to the other hvd.

use tokio::io::{AsyncRead, AsyncWrite};

/// Copies both ways until both sides have ended; returns the bytes (a→b, b→a).
pub async fn pump<A, B>(mut a: A, mut b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 << 10, 256 << 10).await
}
