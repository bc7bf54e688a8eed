//! `hv screenshot` and `hv send-key`: a VM's screen and keyboard (issue 11).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use client::Client;

#[derive(clap::Args, Debug)]
pub struct ScreenshotArgs {
    name: String,
    /// Where to write the PNG (`-` for standard output).
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["keys", "text"])))]
pub struct SendKeyArgs {
    name: String,
    /// Key combinations, pressed in order: ctrl-alt-delete, esc, f12, ctrl-alt-f2, sysrq,
    /// alt-sysrq-h, ret, a, ...
    keys: Vec<String>,
    /// Type this text instead (US layout; \n is Return, \t is Tab, \\ is a backslash).
    #[arg(long, conflicts_with = "keys")]
    text: Option<String>,
}

pub fn screenshot(c: &Client, a: ScreenshotArgs) -> Result<()> {
    let png = c.screenshot(&a.name, 0)?;
    if a.file.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(&png)
            .context("cannot write the PNG to standard output")?;
        return out
            .flush()
            .context("cannot write the PNG to standard output");
    }
    std::fs::write(&a.file, &png).with_context(|| format!("cannot write {}", a.file.display()))?;
    eprintln!(
        "screenshot of {} written to {} ({} bytes)",
        a.name,
        a.file.display(),
        png.len()
    );
    Ok(())
}

pub fn send_key(c: &Client, a: SendKeyArgs) -> Result<()> {
    let req = match a.text {
        Some(t) => api::KeysRequest {
            keys: None,
            text: Some(unescape(&t)?),
        },
        None => api::KeysRequest {
            keys: Some(a.keys),
            text: None,
        },
    };
    let sent = c.send_keys(&a.name, &req)?;
    eprintln!("{} key events sent to {}", sent.sent, a.name);
    Ok(())
}

/// `\n`, `\t` and `\\` in `--text`, so a shell line can carry a Return.
fn unescape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(o) => bail!("unknown escape \\{o} in --text; use \\n, \\t or \\\\"),
            None => bail!("--text ends with a lone backslash; write \\\\ for a backslash"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes() {
        assert_eq!(unescape(r"install\n").unwrap(), "install\n");
        assert_eq!(unescape(r"a\tb\\c").unwrap(), "a\tb\\c");
        assert!(unescape(r"a\q").is_err());
        assert!(unescape("a\\").is_err());
    }
}
