//! Files generated from hv's own clap definitions: shell completions (`hv completion SHELL`,
//! for users without the Debian package) and man pages (`hv man-pages DIR`, hidden, run by
//! `cargo xtask deb`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

/// The shells `hv completion` writes a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ManPagesArgs {
    /// Directory to write hv.1 and one hv-SUBCOMMAND.1 per subcommand into (it must exist).
    dir: PathBuf,
}

/// Prints the completion script for a shell on stdout.
pub(crate) fn completion(a: &CompletionArgs) -> Result<()> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = crate::Cli::command();
    // Into memory first: clap_complete panics on a write error, and a reader that stops early
    // (`hv completion bash | head`) is not one.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "hv", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Writes the man pages of hv and of each of its (visible) subcommands.
pub(crate) fn man_pages(a: &ManPagesArgs) -> Result<()> {
    write_man_pages(&a.dir)
}

fn write_man_pages(dir: &Path) -> Result<()> {
    clap_mangen::generate_to(crate::Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}
