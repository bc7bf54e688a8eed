//! `hv disk ...` and `hv media ...`.

use anyhow::{Context, Result};
use api::{AttachDiskRequest, DetachDiskRequest};
use clap::Subcommand;
use client::Client;

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Attach a disk: live and in the definition on a running VM, in the definition on a
    /// stopped one (--live / --config choose).
    Attach {
        vm: String,
        /// path=P|vol=POOL/NAME [,format=..] [,bus=virtio|scsi|..] [,cache=..] [,readonly=on]
        /// [,size=SIZE] [,target=vdb]
        #[arg(long)]
        disk: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Detach a disk by target (vdb, sda, hda).
    Detach {
        vm: String,
        target: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// A VM's disks.
    List {
        vm: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum MediaCmd {
    /// Insert an ISO (path or POOL/NAME) into the CD-ROM drive.
    Insert { vm: String, source: String },
    /// Eject the CD-ROM medium; the drive stays.
    Eject { vm: String },
    /// Boot from the medium: the CD-ROM goes first in the boot order, and a running VM is
    /// reset.
    Boot { vm: String },
    /// The media that can go into the VM's drive (raw pool volumes that are no VM's disk) and
    /// the pools a medium may be uploaded to (needs only the media right on the VM).
    List {
        vm: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Upload an ISO as a NEW medium into a pool (never replacing a volume) for the VM, and
    /// insert it with --insert (needs only the media right on the VM).
    Upload {
        vm: String,
        file: std::path::PathBuf,
        /// The pool to put it in.
        #[arg(long, default_value = "default")]
        pool: String,
        /// The volume's name (ending in .iso or .img); the file's name by default.
        #[arg(long)]
        name: Option<String>,
        /// Put it into the VM's CD-ROM drive once uploaded.
        #[arg(long)]
        insert: bool,
    },
}

/// `--live` / `--config`, like libvirt's.
#[derive(clap::Args, Debug)]
pub struct Scope {
    /// Change the running VM.
    #[arg(long)]
    live: bool,
    /// Change the VM's definition.
    #[arg(long)]
    config: bool,
}

impl Scope {
    /// As given; neither means "the default for the VM's state" (both on a running VM, the
    /// definition on a stopped one).
    pub fn resolve(&self) -> (Option<bool>, Option<bool>) {
        if self.live || self.config {
            (Some(self.live), Some(self.config))
        } else {
            (None, None)
        }
    }
}

pub fn disk(c: &Client, cmd: DiskCmd) -> Result<()> {
    match cmd {
        DiskCmd::Attach { vm, disk, scope } => {
            let disk = crate::disk_spec(&disk)?;
            let (live, config) = scope.resolve();
            let given = disk.target.clone();
            let info = c.disk_attach(&vm, &AttachDiskRequest { disk, live, config })?;
            // A live-only attach has its target given (hvd insists); otherwise the definition
            // names it.
            let target = given
                .or_else(|| {
                    info.spec
                        .and_then(|s| s.disks.last().and_then(|d| d.target.clone()))
                })
                .unwrap_or_default();
            println!("disk attached to {vm} as {target}");
        }
        DiskCmd::Detach { vm, target, scope } => {
            let (live, config) = scope.resolve();
            c.disk_detach(&vm, &target, &DetachDiskRequest { live, config })?;
            println!("disk {target} detached from {vm}");
        }
        DiskCmd::List { vm, format } => {
            let mut disks = c.info(&vm)?.spec.map(|s| s.disks).unwrap_or_default();
            model::assign_targets(&mut disks);
            if !output::structured(format, &disks)? {
                let rows: Vec<Vec<String>> = disks
                    .iter()
                    .map(|d| {
                        vec![
                            d.target.clone().unwrap_or_default(),
                            d.bus.to_string(),
                            d.format
                                .map(|f| f.to_string())
                                .unwrap_or_else(|| "-".into()),
                            d.cache.to_string(),
                            if d.readonly { "yes" } else { "no" }.into(),
                            d.vol
                                .as_ref()
                                .map(|v| v.to_string())
                                .unwrap_or_else(|| d.path.display().to_string()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(
                        &["TARGET", "BUS", "FORMAT", "CACHE", "READONLY", "SOURCE"],
                        &rows
                    )
                );
            }
        }
    }
    Ok(())
}

pub fn media(c: &Client, cmd: MediaCmd) -> Result<()> {
    match cmd {
        MediaCmd::Insert { vm, source } => {
            let source = if source.starts_with('/') || std::path::Path::new(&source).exists() {
                crate::absolute(std::path::Path::new(&source))?
                    .display()
                    .to_string()
            } else {
                source
            };
            c.media_insert(&vm, &source)?;
            println!("{source} inserted into {vm}'s CD-ROM drive");
        }
        MediaCmd::Eject { vm } => {
            c.media_eject(&vm)?;
            println!("{vm}'s CD-ROM drive is empty");
        }
        MediaCmd::Boot { vm } => {
            let info = c.media_boot(&vm)?;
            let order = info
                .spec
                .and_then(|s| s.boot)
                .map(|b| b.to_string())
                .unwrap_or_default();
            if info.state.is_active() {
                println!("{vm} was reset to boot from its CD-ROM (boot order {order})");
            } else {
                println!("{vm} boots from its CD-ROM at its next start (boot order {order})");
            }
        }
        MediaCmd::List { vm, format } => {
            let ch = c.media_choices(&vm)?;
            if !output::structured(format, &ch)? {
                let rows: Vec<Vec<String>> = ch
                    .volumes
                    .iter()
                    .map(|v| {
                        vec![
                            format!("{}/{}", v.pool, v.volume),
                            crate::storage::bytes(v.size_bytes),
                            if v.iso9660 { "yes" } else { "no" }.into(),
                            if v.inserted { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(&["MEDIUM", "SIZE", "ISO9660", "INSERTED"], &rows)
                );
                let pools: Vec<String> = ch
                    .upload_pools
                    .iter()
                    .map(|p| {
                        format!(
                            "{} ({} free)",
                            p.pool,
                            crate::storage::bytes(p.available_bytes)
                        )
                    })
                    .collect();
                println!("uploads may go to: {}", pools.join(", "));
            }
        }
        MediaCmd::Upload {
            vm,
            file,
            pool,
            name,
            insert,
        } => {
            let volume = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow::anyhow!("{} names no file", file.display()))?,
            };
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut p = crate::storage::Progress::new((), f.metadata()?.len());
            let target = client::MediumTarget {
                pool: &pool,
                volume: &volume,
                insert,
            };
            let m = c.media_upload_file(&vm, &target, &f, &mut |done, _| p.set(done))?;
            p.finish(&format!("uploaded {} to {pool}/{volume}:", file.display()));
            if m.inserted {
                println!("{pool}/{volume} inserted into {vm}'s CD-ROM drive");
            } else {
                println!("medium {pool}/{volume} uploaded; insert it with: hv media insert {vm} {pool}/{volume}");
            }
        }
    }
    Ok(())
}
