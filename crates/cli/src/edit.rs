//! `hv edit`: the spec in $EDITOR, validated by the daemon; on an error, ask to edit again.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};

pub fn edit(c: &client::Client, name: &str) -> Result<i32> {
    let spec = c.info(name)?.spec.context("hvd sent no spec")?;
    let original = toml::to_string(&spec)?;
    let dir = std::env::temp_dir();
    let path = dir.join(format!("hv-edit-{name}-{}.toml", std::process::id()));
    write_private(&path, &original).with_context(|| format!("cannot write {}", path.display()))?;
    let _cleanup = Cleanup(path.clone());
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        // The user's editor is the one process the CLI starts; it runs with the user's terminal.
        let mut parts = editor.split_whitespace();
        let prog = parts.next().unwrap_or("vi");
        let status = std::process::Command::new(prog)
            .args(parts)
            .arg(&path)
            .status()
            .with_context(|| format!("cannot run the editor {editor:?} (set EDITOR)"))?;
        if !status.success() {
            anyhow::bail!("the editor {editor:?} failed ({status}); nothing was changed");
        }
        let text = std::fs::read_to_string(&path)?;
        if text == original {
            println!("VM {name} unchanged");
            return Ok(0);
        }
        let result = crate::parse_spec_file(&text, "edited spec")
            .and_then(|s| c.update(name, &s).map_err(Into::into));
        match result {
            Ok(info) => {
                let note = if info.state.is_active() {
                    " (takes effect at the next start)"
                } else {
                    ""
                };
                println!("VM {name} updated{note}");
                return Ok(0);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                if !ask("Edit again? [Y/n] ") {
                    eprintln!("changes discarded; VM {name} unchanged");
                    return Ok(1);
                }
            }
        }
    }
}

/// The spec may hold secrets (a VNC password): the file is the user's alone (mode 0600) and
/// is created anew, never through a file or link someone else put at that path.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn ask(prompt: &str) -> bool {
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let mut w = &tty;
    let _ = w.write_all(prompt.as_bytes());
    let mut line = String::new();
    if std::io::BufReader::new(&tty)
        .read_line(&mut line)
        .unwrap_or(0)
        == 0
    {
        return false;
    }
    !line.trim().eq_ignore_ascii_case("n")
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
