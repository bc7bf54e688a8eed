//! `hv pool ...` and `hv vol ...`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use api::{
    CloneVolRequest, CreatePoolRequest, CreateVolRequest, ImportVolRequest, ResizeVolRequest,
};
use clap::Subcommand;
use client::Client;
use model::{DiskFormat, PoolName, Size, VolName, VolRef};

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a directory pool (the directory is created when missing).
    Create {
        name: PoolName,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        autostart: bool,
    },
    /// List pools.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Capacity, allocation and available space of a pool.
    Info {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Delete a pool (--force also deletes its volumes; never ones a VM uses, nor files hv
    /// did not create).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Forget a pool, keeping its directory and every file in it.
    Undefine { name: String },
}

#[derive(Subcommand, Debug)]
pub enum VolCmd {
    /// Create a volume, or a qcow2 overlay with --backing.
    Create {
        pool: String,
        name: VolName,
        #[arg(long)]
        size: Option<Size>,
        #[arg(long)]
        format: Option<DiskFormat>,
        /// POOL/VOL or an absolute path.
        #[arg(long)]
        backing: Option<String>,
    },
    /// Copy a host image into a pool (raw images need --format raw).
    Import {
        pool: String,
        name: VolName,
        file: PathBuf,
        #[arg(long)]
        format: Option<DiskFormat>,
    },
    /// List a pool's volumes.
    List {
        pool: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One volume.
    Info {
        vol: VolRef,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Copy a volume (--linked: a qcow2 overlay on it).
    Clone {
        src: VolRef,
        name: VolName,
        #[arg(long)]
        linked: bool,
    },
    /// Grow (or with --allow-shrink, shrink) a volume; live when a running VM uses it.
    Resize {
        vol: VolRef,
        size: Size,
        #[arg(long)]
        allow_shrink: bool,
    },
    /// Delete a volume (refused while a VM uses it or it backs another volume).
    Delete { vol: VolRef },
    /// Replace a volume's bytes with a file's, through the API.
    Upload { vol: VolRef, file: PathBuf },
    /// Save a volume's bytes to a file, through the API.
    Download { vol: VolRef, file: PathBuf },
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Counts bytes through a reader or writer and draws a progress bar on a terminal.
pub(crate) struct Progress<T> {
    inner: T,
    done: u64,
    total: u64,
    started: Instant,
    last_draw: Instant,
    tty: bool,
}

impl<T> Progress<T> {
    pub(crate) fn new(inner: T, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            inner,
            done: 0,
            total,
            started: now,
            last_draw: now,
            tty: std::io::stderr().is_terminal(),
        }
    }
    fn tick(&mut self, n: usize) {
        self.set(self.done + n as u64);
    }
    pub(crate) fn set(&mut self, done: u64) {
        self.done = done;
        if self.tty && (self.last_draw.elapsed().as_millis() > 100 || self.done == self.total) {
            self.last_draw = Instant::now();
            let pct = (self.done * 100)
                .checked_div(self.total)
                .unwrap_or(100)
                .min(100);
            let filled = (pct / 5) as usize;
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r[{}{}] {pct:3}% {} of {} ({}/s)  ",
                "#".repeat(filled),
                " ".repeat(20 - filled),
                bytes(self.done),
                bytes(self.total),
                bytes(rate as u64)
            );
        }
    }
    pub(crate) fn finish(&self, what: &str) {
        if self.tty {
            eprintln!();
        }
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "{what} {} in {secs:.2} s ({}/s)",
            bytes(self.done),
            bytes((self.done as f64 / secs.max(0.001)) as u64)
        );
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tick(n);
        Ok(n)
    }
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tick(n);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn vol_table(vols: &[api::VolInfo]) -> String {
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.format.clone(),
                bytes(v.virtual_size_bytes),
                bytes(v.allocation_bytes),
                v.backing.clone().unwrap_or_else(|| "-".into()),
                if v.used_by.is_empty() {
                    "-".into()
                } else {
                    v.used_by.join(",")
                },
            ]
        })
        .collect();
    output::table(
        &["NAME", "FORMAT", "SIZE", "ALLOCATED", "BACKING", "USED BY"],
        &rows,
    )
}

fn pool_table(pools: &[api::PoolInfo]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.path.display().to_string(),
                p.volumes.to_string(),
                bytes(p.capacity_bytes),
                bytes(p.allocation_bytes),
                bytes(p.available_bytes),
                if p.autostart { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "PATH",
            "VOLUMES",
            "CAPACITY",
            "ALLOCATION",
            "AVAILABLE",
            "AUTOSTART",
        ],
        &rows,
    )
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

pub fn pool(c: &Client, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Create {
            name,
            path,
            autostart,
        } => {
            let p = c.pool_create(&CreatePoolRequest {
                name,
                path: absolute(&path)?,
                autostart,
            })?;
            println!("pool {} created at {}", p.name, p.path.display());
        }
        PoolCmd::List { format } => {
            let pools = c.pools()?;
            if !output::structured(format, &pools)? {
                print!("{}", pool_table(&pools));
            }
        }
        PoolCmd::Info { name, format } => {
            let p = c.pool_info(&name)?;
            if !output::structured(format, &p)? {
                print!("{}", pool_table(&[p]));
            }
        }
        PoolCmd::Delete { name, force } => {
            c.pool_delete(&name, force)?;
            println!("pool {name} deleted");
        }
        PoolCmd::Undefine { name } => {
            c.pool_undefine(&name)?;
            println!("pool {name} undefined; its files stay");
        }
    }
    Ok(())
}

pub fn vol(c: &Client, cmd: VolCmd) -> Result<()> {
    match cmd {
        VolCmd::Create {
            pool,
            name,
            size,
            format,
            backing,
        } => {
            let backing = backing
                .map(|b| {
                    if b.starts_with('.') || Path::new(&b).exists() && !b.starts_with('/') {
                        absolute(Path::new(&b)).map(|p| p.display().to_string())
                    } else {
                        Ok(b)
                    }
                })
                .transpose()?;
            let v = c.vol_create(
                &pool,
                &CreateVolRequest {
                    name,
                    size,
                    format,
                    backing,
                },
            )?;
            println!(
                "volume {}/{} created ({}, {})",
                v.pool,
                v.name,
                v.format,
                bytes(v.virtual_size_bytes)
            );
        }
        VolCmd::Import {
            pool,
            name,
            file,
            format,
        } => {
            let v = c.vol_import(
                &pool,
                &ImportVolRequest {
                    name,
                    source: absolute(&file)?,
                    format,
                },
            )?;
            println!(
                "volume {}/{} imported ({}, {})",
                v.pool,
                v.name,
                v.format,
                bytes(v.virtual_size_bytes)
            );
        }
        VolCmd::List { pool, format } => {
            let vols = c.vols(&pool)?;
            if !output::structured(format, &vols)? {
                print!("{}", vol_table(&vols));
            }
        }
        VolCmd::Info { vol, format } => {
            let v = c.vol_info(vol.pool.as_str(), vol.name.as_str())?;
            if !output::structured(format, &v)? {
                print!("{}", vol_table(&[v]));
            }
        }
        VolCmd::Clone { src, name, linked } => {
            let v = c.vol_clone(
                src.pool.as_str(),
                src.name.as_str(),
                &CloneVolRequest { name, linked },
            )?;
            println!(
                "volume {}/{} cloned from {src}{}",
                v.pool,
                v.name,
                if linked { " (linked)" } else { "" }
            );
        }
        VolCmd::Resize {
            vol,
            size,
            allow_shrink,
        } => {
            let v = c.vol_resize(
                vol.pool.as_str(),
                vol.name.as_str(),
                &ResizeVolRequest { size, allow_shrink },
            )?;
            println!("volume {vol} is now {}", bytes(v.virtual_size_bytes));
        }
        VolCmd::Delete { vol } => {
            c.vol_delete(vol.pool.as_str(), vol.name.as_str())?;
            println!("volume {vol} deleted");
        }
        VolCmd::Upload { vol, file } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut p = Progress::new((), f.metadata()?.len());
            c.vol_upload_file(vol.pool.as_str(), vol.name.as_str(), &f, &mut |done, _| {
                p.set(done)
            })?;
            p.finish(&format!("uploaded {} to {vol}:", file.display()));
        }
        VolCmd::Download { vol, file } => {
            let tmp = file.with_file_name(format!(
                ".{}.part",
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            let mut out = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut p = Progress::new((), 0);
            let done = c.vol_download_file(
                vol.pool.as_str(),
                vol.name.as_str(),
                &mut out,
                &mut |done, total| {
                    p.total = total;
                    p.set(done)
                },
            );
            if let Err(e) = done {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, &file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            p.finish(&format!("downloaded {vol} to {}:", file.display()));
        }
    }
    Ok(())
}
