//! The HTTPS transport: hvd's `--listen` API through ureq (rustls, keep-alive connections),
//! with a bearer token and a pinned server certificate; and the console WebSocket over TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::{ClientError, Response, Result};

/// One remote hvd: where it is, the token to use and the certificate to trust.
pub(crate) struct Https {
    /// `https://HOST:PORT`, without a trailing slash.
    pub(crate) base: String,
    /// The remote's name, for messages.
    pub(crate) name: String,
    host: String,
    port: u16,
    token: String,
    pinned: Option<String>,
    /// The fingerprint the server presented in the last handshake.
    seen: Arc<Mutex<Option<String>>>,
    tls: Arc<rustls::ClientConfig>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Https")
            .field("base", &self.base)
            .field("pinned", &self.pinned)
            .finish_non_exhaustive()
    }
}

/// Splits `https://HOST:PORT[/]` into its host and port.
fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| ClientError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("it must start with https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad("give only https://HOST:PORT, without a path"));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("it needs a port, as in https://HOST:8443"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad("it needs a host and a port, as in https://HOST:8443"));
    }
    Ok((host.to_string(), port))
}

impl Https {
    pub(crate) fn new(url: &str, token: &str, pinned: Option<String>) -> Result<Https> {
        let (host, port) = parse_url(url)?;
        let seen = Arc::new(Mutex::new(None));
        let tls = crate::pin::client_config(pinned.clone(), seen.clone())
            .map_err(|e| ClientError::Protocol(format!("cannot set up TLS: {e}")))?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls.clone())
            .timeout_connect(Duration::from_secs(15))
            .redirects(0)
            .build();
        let base = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        Ok(Https {
            base,
            name: "NAME".to_string(),
            host,
            port,
            token: token.to_string(),
            pinned,
            seen,
            tls,
            agent,
        })
    }

    pub(crate) fn seen(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }

    /// The error for a failed exchange: a changed certificate when the server showed one
    /// that is not the pinned one, else "cannot reach".
    fn failure(&self, detail: String) -> ClientError {
        if let (Some(pinned), Some(seen)) = (&self.pinned, self.seen()) {
            if *pinned != seen {
                return ClientError::CertificateChanged {
                    name: self.name.clone(),
                    url: self.base.clone(),
                    pinned: pinned.clone(),
                    presented: seen,
                };
            }
        }
        ClientError::Unreachable {
            url: self.base.clone(),
            detail,
        }
    }

    pub(crate) fn send_body(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<Response> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let sent = if len == 0 && matches!(method, "GET" | "DELETE" | "HEAD") {
            req.call()
        } else {
            req.set("Content-Type", content_type)
                .set("Content-Length", &len.to_string())
                .send(body.take(len))
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(self.failure(t.to_string())),
        };
        let status = resp.status();
        let len = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(Response {
            status,
            len,
            body: Box::new(resp.into_reader()),
        })
    }

    /// A TLS connection to the server, for the console WebSocket.
    pub(crate) fn connect_tls(&self) -> Result<TlsStream> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| self.failure(format!("bad host name: {e}")))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| self.failure(e.to_string()))?;
        let sock = TcpStream::connect((self.host.as_str(), self.port))
            .map_err(|e| self.failure(e.to_string()))?;
        sock.set_nodelay(true).map_err(ClientError::Io)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        // Finish the handshake now, so a changed certificate is named as such.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| self.failure(e.to_string()))?;
        }
        Ok(tls)
    }

    pub(crate) fn raw_endpoint(&self) -> crate::RawEndpoint {
        crate::RawEndpoint {
            tls: self.tls.clone(),
            host: self.host.clone(),
            port: self.port,
            authorization: self.bearer(),
        }
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

pub(crate) type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The connection under a console WebSocket: the Unix socket, or TLS over TCP.
pub enum ConsoleStream {
    Unix(std::os::unix::net::UnixStream),
    Tls(Box<TlsStream>),
}

impl ConsoleStream {
    /// Sets the read timeout of the socket underneath.
    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        match self {
            ConsoleStream::Unix(s) => s.set_read_timeout(d),
            ConsoleStream::Tls(s) => s.sock.set_read_timeout(d),
        }
    }
}

impl Read for ConsoleStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ConsoleStream::Unix(s) => s.read(buf),
            ConsoleStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ConsoleStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ConsoleStream::Unix(s) => s.write(buf),
            ConsoleStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ConsoleStream::Unix(s) => s.flush(),
            ConsoleStream::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_need_https_a_host_and_a_port() {
        assert_eq!(
            parse_url("https://h.example:8443").unwrap(),
            ("h.example".to_string(), 8443)
        );
        assert_eq!(
            parse_url("https://[::1]:8443/").unwrap(),
            ("::1".to_string(), 8443)
        );
        for bad in [
            "http://h:1",
            "https://h",
            "https://h:x",
            "https://h:1/v1",
            "https://:1",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
