//! A minimal blocking QMP client for the raw QEMU anchors (hv's own `qmp` crate is async and
//! tied to hvd's process model).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to QEMU's `-qmp unix:PATH,server=on,wait=off`, retrying until `timeout` while
    /// QEMU starts, and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", path.display()))
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let writer = stream.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("no QMP greeting: {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading QMP")? == 0 {
            bail!("QEMU closed its QMP socket");
        }
        serde_json::from_str(&line).with_context(|| format!("bad QMP line {line:?}"))
    }

    /// Runs a command and returns its `return` value; events in between are skipped.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let msg = json!({ "execute": cmd, "arguments": args });
        writeln!(self.writer, "{msg}").context("writing QMP")?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
        }
    }
}
