//! `hv console`: a raw terminal on the VM's serial console over the API's WebSocket.
//! Ctrl-] detaches.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use tungstenite::Message;

const DETACH: u8 = 0x1d; // Ctrl-]

/// Puts the terminal in raw mode and restores it on drop.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes saved in `enter` on fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

pub fn attach(client: &client::Client, name: &str) -> Result<()> {
    let mut ws = client.console(name)?;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)))
        .context("console socket")?;
    eprintln!("Connected to the console of {name}; press Ctrl-] to detach.\r");
    let raw = RawMode::enter();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut out = std::io::stdout();
    let result = loop {
        match rx.try_recv() {
            Ok(data) => {
                if let Some(pos) = data.iter().position(|b| *b == DETACH) {
                    if pos > 0 {
                        let _ = ws.send(Message::Binary(data[..pos].to_vec().into()));
                    }
                    break Ok(());
                }
                if let Err(e) = ws.send(Message::Binary(data.into())) {
                    break Err(anyhow::anyhow!("console closed: {e}"));
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                // stdin ended (not a terminal): keep printing until the VM stops.
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
            Ok(Message::Text(t)) => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Ok(Message::Close(_)) => break Ok(()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                break Ok(())
            }
            Err(e) => break Err(anyhow::anyhow!("console connection failed: {e}")),
        }
    };
    drop(raw);
    eprintln!("\nDetached from {name}.");
    result
}
