//! QMP client: greeting and capability negotiation, id-matched command replies, and events.
//!
//! The caller connects the stream (this crate does no host I/O of its own); [`Qmp::handshake`]
//! takes any `AsyncRead + AsyncWrite` and returns a client plus a receiver of events. One reader
//! task owns the read half: replies are routed by `id` to their waiting command, events go to
//! the event channel. When QEMU closes the socket, pending commands fail with
//! [`QmpError::Disconnected`] and the event channel closes, which is how callers learn that QEMU
//! went away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// A QMP event as QEMU sent it.
#[derive(Debug, Clone, Deserialize)]
pub struct QmpEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// Where the transcript of every line sent (`>`) and received (`<`) goes.
pub type Transcript = Box<dyn Fn(char, &str) + Send + Sync>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP client. Cheap to share behind an `Arc`; commands may run concurrently.
pub struct Qmp {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    transcript: Option<Arc<Transcript>>,
    /// QEMU's version as the greeting told it: (major, minor, micro).
    pub version: (u32, u32, u32),
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish()
    }
}

impl Qmp {
    /// Reads the greeting, negotiates capabilities and starts the reader task.
    pub async fn handshake<S>(
        stream: S,
        transcript: Option<Transcript>,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>), QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let transcript = transcript.map(Arc::new);
        let (rd, wr) = tokio::io::split(stream);
        let mut lines = BufReader::new(rd).lines();
        let greeting = lines.next_line().await?.ok_or(QmpError::Disconnected)?;
        if let Some(t) = &transcript {
            t('<', &greeting);
        }
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("bad greeting: {e}")))?;
        let v = &g["QMP"]["version"]["qemu"];
        let num = |k: &str| v[k].as_u64().unwrap_or(0) as u32;
        let version = (num("major"), num("minor"), num("micro"));
        if g.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(Box::new(wr)),
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            transcript: transcript.clone(),
            version,
        };
        tokio::spawn(read_loop(lines, pending, ev_tx, transcript));
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, ev_rx))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        if let Some(t) = &self.transcript {
            t('>', &redact(command, &line));
        }
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            let res = async {
                w.write_all(line.as_bytes()).await?;
                w.flush().await
            }
            .await;
            if let Err(e) = res {
                lock(&self.pending).remove(&id);
                return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    QmpError::Disconnected
                } else {
                    QmpError::Io(e)
                });
            }
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((class, desc))) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
            Err(_) => Err(QmpError::Disconnected),
        }
    }

    /// `human-monitor-command`; HMP errors come back as successful replies starting with
    /// `Error:`, which this turns into [`QmpError::Command`].
    pub async fn hmp(&self, command_line: &str) -> Result<String, QmpError> {
        let v = self
            .execute(
                "human-monitor-command",
                Some(json!({ "command-line": command_line })),
            )
            .await?;
        let text = v.as_str().unwrap_or_default().to_string();
        if text.trim_start().starts_with("Error:") {
            return Err(QmpError::Command {
                command: format!("human-monitor-command {command_line}"),
                class: "GenericError".into(),
                desc: text.trim().to_string(),
            });
        }
        Ok(text)
    }

    /// `query-status`: the run state string (`running`, `paused`, `shutdown`, `prelaunch`, ...).
    pub async fn query_status(&self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"].as_str().unwrap_or_default().to_string())
    }

    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }
    /// Asks QEMU to exit. The reply may be lost when QEMU exits first; that counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }
    pub async fn set_vnc_password(&self, password: &str) -> Result<(), QmpError> {
        self.execute(
            "set_password",
            Some(json!({ "protocol": "vnc", "password": password })),
        )
        .await
        .map(drop)
    }
    /// `query-vnc`: the port the VNC server listens on, if any.
    pub async fn query_vnc_port(&self) -> Result<Option<(String, u16)>, QmpError> {
        let v = self.execute("query-vnc", None).await?;
        if v["enabled"].as_bool() != Some(true) {
            return Ok(None);
        }
        let host = v["host"].as_str().unwrap_or_default().to_string();
        let port = v["service"].as_str().and_then(|p| p.parse().ok());
        Ok(port.map(|p| (host, p)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps secrets out of the transcript.
fn redact(command: &str, line: &str) -> String {
    if command == "set_password" {
        return r#"{"execute":"set_password","arguments":"<redacted>"}"#.to_string();
    }
    // Keys typed into a guest may be a password.
    if command == "send-key" {
        return r#"{"execute":"send-key","arguments":"<redacted>"}"#.to_string();
    }
    line.to_string()
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    pending: Pending,
    events: mpsc::UnboundedSender<QmpEvent>,
    transcript: Option<Arc<Transcript>>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        };
        if let Some(t) = &transcript {
            t('<', &line);
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, line, "QMP sent a line that is not JSON");
                continue;
            }
        };
        if v.get("event").is_some() {
            if let Ok(ev) = serde_json::from_value::<QmpEvent>(v) {
                let _ = events.send(ev);
            }
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            tracing::warn!(line, "QMP reply without an id");
            continue;
        };
        let Some(tx) = lock(&pending).remove(&id) else {
            continue;
        };
        let result = if let Some(r) = v.get("return") {
            Ok(r.clone())
        } else {
            let e = &v["error"];
            Err((
                e["class"].as_str().unwrap_or("GenericError").to_string(),
                e["desc"].as_str().unwrap_or("unknown error").to_string(),
            ))
        };
        let _ = tx.send(result);
    }
    // Fail everything still waiting; dropping the senders does it.
    lock(&pending).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}}"#;

    /// A scripted QEMU: answers each command with the reply for its name, and may send events.
    async fn fake_qemu(server: tokio::io::DuplexStream, replies: Vec<(&'static str, Value)>) {
        let (rd, mut wr) = tokio::io::split(server);
        wr.write_all(format!("{GREETING}\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&l).unwrap();
            let cmd = req["execute"].as_str().unwrap().to_string();
            let id = req["id"].clone();
            if cmd == "system_powerdown" {
                wr.write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"POWERDOWN\"}\n").await.unwrap();
            }
            let reply = replies
                .iter()
                .find(|(n, _)| *n == cmd)
                .map(|(_, r)| r.clone())
                .unwrap_or(json!({"return": {}}));
            let mut reply = reply;
            reply["id"] = id;
            wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            if cmd == "quit" {
                break;
            }
        }
    }

    async fn check(
        replies: Vec<(&'static str, Value)>,
    ) -> (Qmp, mpsc::UnboundedReceiver<QmpEvent>) {
        let (a, b) = tokio::io::duplex(4096);
        tokio::spawn(fake_qemu(b, replies));
        Qmp::handshake(a, None).await.unwrap()
    }

    #[tokio::test]
    async fn handshake_reads_version_and_routes_replies() {
        let (q, _ev) = check(vec![(
            "query-status",
            json!({"return": {"status": "running", "running": true}}),
        )])
        .await;
        assert_eq!(q.version, (7, 2, 22));
        assert_eq!(q.query_status().await.unwrap(), "running");
    }

    #[tokio::test]
    async fn errors_carry_class_and_desc() {
        let (q, _ev) = check(vec![(
            "cont",
            json!({"error": {"class": "GenericError", "desc": "nope"}}),
        )])
        .await;
        let e = q.cont().await.unwrap_err().to_string();
        assert_eq!(e, "QEMU refused cont: GenericError: nope");
    }

    #[tokio::test]
    async fn events_are_delivered_and_close_with_the_socket() {
        let (q, mut ev) = check(vec![]).await;
        q.system_powerdown().await.unwrap();
        assert_eq!(ev.recv().await.unwrap().event, "POWERDOWN");
        q.quit().await.unwrap();
        assert!(ev.recv().await.is_none());
        assert!(matches!(
            q.query_status().await,
            Err(QmpError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn hmp_error_text_is_an_error() {
        let (q, _ev) = check(vec![(
            "human-monitor-command",
            json!({"return": "Error: Device 'x' not found\r\n"}),
        )])
        .await;
        let e = q.hmp("savevm x").await.unwrap_err().to_string();
        assert!(e.contains("Device 'x' not found"), "{e}");
    }

    #[tokio::test]
    async fn reads_a_recorded_vnc_reply() {
        // Recorded from QEMU 7.2 with `-vnc 127.0.0.1:0,to=99`.
        let reply = json!({"return": {"enabled": true, "auth": "none", "family": "ipv4", "clients": [], "service": "5900", "host": "127.0.0.1"}});
        let (q, _ev) = check(vec![("query-vnc", reply)]).await;
        assert_eq!(
            q.query_vnc_port().await.unwrap(),
            Some(("127.0.0.1".to_string(), 5900))
        );
    }
}
