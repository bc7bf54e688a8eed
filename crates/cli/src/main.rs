//! `hv`, the command-line client. It only talks to hvd's API (through the `client` crate):
//! every command is one or two API calls plus formatting.

mod access;
mod backup;
mod cloudinit;
mod console;
mod control;
mod disks;
mod edit;
mod events;
mod generate;
mod import;
mod migrate;
mod networks;
mod nics;
mod operations;
mod output;
mod remotes;
mod resize;
mod screen;
mod snapshots;
mod stats;
mod storage;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use api::WaitRequest;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use client::Client;
use model::{
    Accel, BootOrder, DiskSpec, GraphicsSpec, KernelBoot, Machine, NicSpec, Size, VmName, VmSpec,
    VmState,
};
use output::Format;

/// hv: run and manage QEMU/KVM virtual machines through hvd.
#[derive(Parser, Debug)]
#[command(name = "hv", version, propagate_version = true)]
struct Cli {
    /// hvd's API socket (the default when no remote is chosen: /run/hv/hvd.sock).
    #[arg(long, global = true, env = "HV_SOCKET")]
    socket: Option<PathBuf>,
    /// Talk to this remote hvd (`hv remote add`) over HTTPS. Precedence: --remote or
    /// --socket, then HV_REMOTE or HV_SOCKET, then the default remote, then the local socket.
    #[arg(long, global = true, env = "HV_REMOTE")]
    remote: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum HostCmd {
    /// Check QEMU, the accelerator and the tools hv uses.
    Check {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Make IFACE the port of a new bridge BRIDGE that takes over its IPv4 addresses and
    /// routes (virsh iface-bridge); any failure rolls every step back.
    Bridge { iface: String, bridge: String },
    /// Give BRIDGE's addresses and routes back to its one port and delete it.
    Unbridge { bridge: String },
    /// A consistent online copy of hv's database and VM metadata (a tar archive; not the
    /// disk images). FILE must not exist (- for stdout); it holds password and token hashes
    /// and hvd's TLS key, so it is written mode 0600. Restore: see the README.
    Backup { file: PathBuf },
    /// The HTTPS listener's certificate fingerprint (SHA256:...), for pinning.
    Cert {
        /// Print the certificate (PEM) as well.
        #[arg(long)]
        pem: bool,
    },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    name: VmName,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M")]
    memory: Size,
    /// Room to hot-plug vCPUs up to (`hv set --vcpus`).
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// Room to grow memory up to through a virtio balloon (`hv set --memory`).
    #[arg(long)]
    max_memory: Option<Size>,
    /// pc or q35 (hvd pins it to its QEMU's versioned machine, e.g. pc-i440fx-7.2), or a
    /// versioned machine type.
    #[arg(long, default_value = "pc")]
    machine: Machine,
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// bios (SeaBIOS) or uefi (OVMF, with its variables kept with the VM).
    #[arg(long, default_value = "bios")]
    firmware: model::Firmware,
    /// UEFI Secure Boot with Microsoft's keys enrolled (needs --firmware uefi --machine q35).
    #[arg(long)]
    secure_boot: bool,
    /// A TPM 2.0 (a swtpm per VM, its state kept with the VM).
    #[arg(long)]
    tpm: bool,
    /// Boot this kernel directly.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// path=P|vol=POOL/NAME [,format=qcow2|raw] [,bus=virtio|ide|sata|scsi] [,cache=MODE]
    /// [,readonly=on] [,size=SIZE]
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// An ISO file, or a volume POOL/NAME.
    #[arg(long)]
    cdrom: Option<PathBuf>,
    /// Boot order: cdrom,disk,network or QEMU letters (dc).
    #[arg(long)]
    boot: Option<BootOrder>,
    /// user | network=NAME | bridge=BR [,model=virtio|e1000|rtl8139][,mac=52:54:00:xx:xx:xx]
    #[arg(long = "nic")]
    nics: Vec<NicSpec>,
    /// console (the browser console through hvd) | none | vnc[,listen=ADDR][,port=N][,password=PW]
    /// (an external VNC listener as well as the console)
    #[arg(long, default_value = "console")]
    graphics: GraphicsSpec,
    /// Show the firmware's boot menu (press Esc) at every boot.
    #[arg(long)]
    boot_menu: bool,
    /// Discard all disk writes when the VM powers off.
    #[arg(long)]
    ephemeral: bool,
    /// Start the VM when hvd starts.
    #[arg(long)]
    autostart: bool,
    /// Start the VM right away.
    #[arg(long)]
    start: bool,
    #[command(flatten)]
    cloud_init: cloudinit::CloudInitArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Remote hvds over HTTPS (add, list, remove, default).
    #[command(subcommand)]
    Remote(remotes::RemoteCmd),
    /// Host checks.
    #[command(subcommand)]
    Host(HostCmd),
    /// Disks of a VM (attach, detach, list).
    #[command(subcommand)]
    Disk(disks::DiskCmd),
    /// Attach, detach and list a VM's NICs.
    #[command(subcommand)]
    Nic(nics::NicCmd),
    /// CD-ROM media (insert, eject).
    #[command(subcommand)]
    Media(disks::MediaCmd),
    /// Snapshots of a VM.
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCmd),
    /// Networks (nat, isolated, bridge).
    #[command(subcommand)]
    Net(networks::NetCmd),
    /// Storage pools.
    #[command(subcommand)]
    Pool(storage::PoolCmd),
    /// Running and recent operations (list, show, cancel).
    #[command(subcommand)]
    Operation(operations::OperationCmd),
    /// Follow hvd's events (VM states, operations, networks, storage, snapshots, consoles).
    Events(events::EventsArgs),
    /// Live figures of running VMs: CPU %, memory, disk and NIC counters.
    Stats(stats::StatsArgs),
    /// Change a VM's vCPUs and/or memory (live if it runs, and in its definition).
    Set(resize::SetArgs),
    /// Copy a stopped VM (every writable disk), or link to a disk-only snapshot of it; new MACs.
    Clone {
        src: String,
        new: VmName,
        /// qcow2 overlays on the frozen layers of an external snapshot (needs --snapshot; the
        /// source may run).
        #[arg(long)]
        linked: bool,
        /// With --linked: the source's disk-only snapshot to share.
        #[arg(long, requires = "linked")]
        snapshot: Option<String>,
        /// Start the clone.
        #[arg(long)]
        start: bool,
    },
    /// Move a running VM to another hvd (a remote from `hv remote list`).
    Migrate(migrate::MigrateArgs),
    /// Users of the HTTPS API and their grants.
    #[command(subcommand)]
    User(access::UserCmd),
    /// API tokens (create, list, revoke).
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// The audit log: who did what, from where, with what result.
    Audit {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        vm: Option<String>,
        /// A duration ago (1h, 2d) or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Volumes in pools.
    #[command(subcommand)]
    Vol(storage::VolCmd),
    /// Define a VM from flags (and optionally start it).
    Create(Box<CreateArgs>),
    /// Define a VM from a TOML spec file (the format `hv dump` prints).
    Define { file: PathBuf },
    /// Import VMs from another manager (libvirt domain XML).
    #[command(subcommand)]
    Import(import::ImportCmd),
    /// Print a VM's spec.
    Dump {
        name: String,
        #[arg(long, default_value = "toml", value_parser = ["toml", "json"])]
        format: String,
    },
    /// Edit a VM's spec in $EDITOR.
    Edit { name: String },
    /// List VMs (running ones; --all for every VM).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one VM.
    Info {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Start a VM.
    Start {
        name: String,
        #[arg(long)]
        paused: bool,
        /// Attach to the serial console once started.
        #[arg(long)]
        console: bool,
    },
    /// Press the ACPI power button and wait for the guest to power off.
    Shutdown {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Power off hard when the guest has not shut down by the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Hard power-off (nothing is deleted).
    Destroy { name: String },
    /// Graceful reboot: ACPI shutdown, then start again.
    Reboot {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(long)]
        force: bool,
    },
    /// Hard reset.
    Reset { name: String },
    /// Pause the vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Remove a VM's definition.
    Undefine {
        name: String,
        /// Also delete its writable disk images.
        #[arg(long)]
        remove_storage: bool,
        /// Destroy it first if it is running.
        #[arg(long)]
        force: bool,
    },
    /// Turn autostart on (or off with --disable).
    Autostart {
        name: String,
        #[arg(long)]
        disable: bool,
    },
    /// Attach to the serial console (Ctrl-] detaches), or print its log.
    Console {
        name: String,
        /// Print what the console printed since the VM last started.
        #[arg(long)]
        log: bool,
        /// With --log: keep printing until the VM stops.
        #[arg(long, requires = "log")]
        follow: bool,
    },
    /// Show who holds control of a VM's consoles (only their input reaches the guest), or
    /// take, request, release or give it.
    Control {
        name: String,
        #[command(subcommand)]
        action: Option<control::ControlCmd>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Wait for a state or for console output matching a regex (exit 1 on timeout).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["state", "console"])))]
    Wait {
        name: String,
        #[arg(long)]
        state: Option<VmState>,
        #[arg(long)]
        console: Option<String>,
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Print the QEMU command line.
    Showcmd { name: String },
    /// Save a PNG of a VM's screen.
    Screenshot(screen::ScreenshotArgs),
    /// Press key combinations (ctrl-alt-delete, esc, f12, ...) or type --text on a VM's
    /// keyboard.
    SendKey(screen::SendKeyArgs),
    /// Print a completion script: `source <(hv completion bash)`, or save it where your shell
    /// looks (the Debian package installs them).
    Completion(generate::CompletionArgs),
    /// Write the man pages into DIR (used to build the Debian package).
    #[command(hide = true)]
    ManPages(generate::ManPagesArgs),
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("cannot read the current directory")?
        .join(p))
}

/// Parses a disk SPEC, making a relative path absolute against the current directory.
pub(crate) fn disk_spec(s: &str) -> Result<DiskSpec> {
    let mut parts = Vec::new();
    for p in s.split(',') {
        match p.split_once('=') {
            Some((k @ ("path" | "file"), v)) => {
                parts.push(format!("{k}={}", absolute(Path::new(v))?.display()))
            }
            _ => parts.push(p.to_string()),
        }
    }
    parts
        .join(",")
        .parse::<DiskSpec>()
        .map_err(|e| anyhow::anyhow!("--disk {s:?}: {}", e.message))
}

fn spec_from(a: CreateArgs) -> Result<VmSpec> {
    let mut spec = VmSpec::new(a.name);
    spec.vcpus = a.vcpus;
    spec.memory = a.memory;
    spec.max_vcpus = a.max_vcpus;
    spec.max_memory = a.max_memory;
    spec.machine = a.machine;
    spec.accel = a.accel;
    if let Some(k) = a.kernel {
        spec.kernel = Some(KernelBoot {
            path: absolute(&k)?,
            initrd: a.initrd.map(|i| absolute(&i)).transpose()?,
            cmdline: a.cmdline,
        });
    }
    spec.disks = a
        .disks
        .iter()
        .map(|d| disk_spec(d))
        .collect::<Result<_>>()?;
    // A relative CD-ROM that is not a local file and reads as POOL/NAME is a volume.
    spec.cdrom = match a.cdrom {
        Some(c)
            if !c.is_absolute()
                && !c.exists()
                && c.to_str()
                    .is_some_and(|s| s.parse::<model::VolRef>().is_ok()) =>
        {
            Some(c)
        }
        other => other.map(|c| absolute(&c)).transpose()?,
    };
    spec.boot = a.boot;
    spec.nics = a.nics;
    if matches!(a.graphics, GraphicsSpec::Vnc(_)) {
        eprintln!(
            "warning: VNC passwords are weak (8 characters, DES challenge, no encryption): anyone who can reach the VNC port can try them and read the screen; prefer the browser console (--graphics console), which hvd authenticates and encrypts"
        );
    }
    spec.graphics = a.graphics;
    spec.boot_menu = a.boot_menu;
    spec.ephemeral = a.ephemeral;
    spec.autostart = a.autostart;
    (spec.firmware, spec.secure_boot, spec.tpm) = (a.firmware, a.secure_boot, a.tpm);
    spec.cloud_init = a.cloud_init.into_spec()?;
    spec.validate()?;
    Ok(spec)
}

/// Reads a spec file; unknown fields are named.
pub fn parse_spec_file(text: &str, what: &str) -> Result<VmSpec> {
    let spec: VmSpec =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{what}: {}", e.to_string().trim()))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(spec)
}

/// Where a command goes: see the precedence in `remotes`.
fn target(cli: &Cli, m: &clap::ArgMatches) -> Result<Client> {
    let from = |id: &str| m.value_source(id);
    let flag = |id: &str| from(id) == Some(ValueSource::CommandLine);
    let env = |id: &str| from(id) == Some(ValueSource::EnvVariable);
    let remote = cli.remote.as_deref();
    let socket = cli.socket.as_deref();
    let pick = |use_remote: bool| -> Result<Client> {
        match (use_remote, remote, socket) {
            (true, Some(r), _) => remotes::client_for(r),
            (false, _, Some(s)) => Ok(Client::new(s)),
            _ => Ok(Client::new(client::DEFAULT_SOCKET)),
        }
    };
    if flag("remote") && flag("socket") {
        anyhow::bail!("give either --remote or --socket, not both");
    }
    if flag("remote") || flag("socket") {
        return pick(flag("remote"));
    }
    if env("remote") && env("socket") {
        anyhow::bail!(
            "HV_REMOTE and HV_SOCKET are both set; unset one (or pick with --remote or --socket)"
        );
    }
    if env("remote") || env("socket") {
        return pick(env("remote"));
    }
    match remotes::default_remote()? {
        Some(r) => remotes::client_for(&r).with_context(|| format!("the default remote {r}")),
        None => Ok(Client::new(client::DEFAULT_SOCKET)),
    }
}

fn run(cli: Cli, m: &clap::ArgMatches) -> Result<i32> {
    match &cli.cmd {
        Cmd::Completion(a) => return generate::completion(a).map(|()| 0),
        Cmd::ManPages(a) => return generate::man_pages(a).map(|()| 0),
        _ => {}
    }
    if let Cmd::Remote(cmd) = cli.cmd {
        remotes::run(cmd)?;
        return Ok(0);
    }
    let c = target(&cli, m)?;
    match cli.cmd {
        Cmd::Remote(_) => {}
        Cmd::Host(HostCmd::Check { format }) => {
            let r = c.host_check()?;
            if !output::structured(format, &r)? {
                print!("{}", output::host_report(&r));
            }
            let failed = r.checks.iter().any(|c| c.status == api::CheckStatus::Fail);
            return Ok(if failed { 1 } else { 0 });
        }
        Cmd::Host(HostCmd::Bridge { iface, bridge }) => {
            let change = c.host_bridge(&iface, &bridge)?;
            for s in &change.steps {
                println!("  {s}");
            }
            println!("{iface} is now a port of {bridge}; use it with: hv net create NAME --mode bridge --bridge {bridge}");
        }
        Cmd::Host(HostCmd::Unbridge { bridge }) => {
            let change = c.host_unbridge(&bridge)?;
            for s in &change.steps {
                println!("  {s}");
            }
            println!("bridge {bridge} removed");
        }
        Cmd::Disk(cmd) => disks::disk(&c, cmd)?,
        Cmd::Nic(cmd) => nics::run(&c, cmd)?,
        Cmd::Media(cmd) => disks::media(&c, cmd)?,
        Cmd::Snapshot(cmd) => snapshots::run(&c, cmd)?,
        Cmd::Net(cmd) => networks::run(&c, cmd)?,
        Cmd::Pool(cmd) => storage::pool(&c, cmd)?,
        Cmd::Operation(cmd) => operations::run(&c, cmd)?,
        Cmd::Events(a) => events::run(&c, a)?,
        Cmd::Stats(a) => stats::run(&c, a)?,
        Cmd::Set(a) => resize::run(&c, a)?,
        Cmd::Clone {
            src,
            new,
            linked,
            snapshot,
            start,
        } => {
            let v = c.clone_vm(
                &src,
                &api::CloneRequest {
                    name: new,
                    linked,
                    snapshot,
                    start,
                },
            )?;
            println!(
                "VM {} cloned from {src}{}",
                v.name,
                if start { " and started" } else { "" }
            );
        }
        Cmd::Migrate(a) => migrate::run(&c, a)?,
        Cmd::User(cmd) => access::user(&c, cmd)?,
        Cmd::Token(cmd) => access::token(&c, cmd)?,
        Cmd::Audit {
            user,
            vm,
            since,
            format,
        } => access::audit(&c, user, vm, since, format)?,
        Cmd::Host(HostCmd::Backup { file }) => backup::run(&c, &file)?,
        Cmd::Host(HostCmd::Cert { pem }) => {
            let cert = c.host_cert()?;
            println!("{}", cert.fingerprint);
            if pem {
                print!("{}", cert.pem);
            }
        }
        Cmd::Vol(cmd) => storage::vol(&c, cmd)?,
        Cmd::Import(cmd) => import::run(&c, cmd)?,
        Cmd::Create(a) => {
            let start = a.start;
            let spec = spec_from(*a)?;
            let info = c.create(spec, start)?;
            println!(
                "VM {} defined{}",
                info.name,
                if start { " and started" } else { "" }
            );
        }
        Cmd::Define { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec = parse_spec_file(&text, &file.display().to_string())?;
            let info = c.create(spec, false)?;
            println!("VM {} defined from {}", info.name, file.display());
        }
        Cmd::Dump { name, format } => {
            let spec = c.info(&name)?.spec.context("hvd sent no spec")?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&spec)?);
            } else {
                print!("{}", toml::to_string(&spec)?);
            }
        }
        Cmd::Edit { name } => return edit::edit(&c, &name),
        Cmd::List { all, format } => {
            let vms: Vec<_> = c
                .list()?
                .into_iter()
                .filter(|v| all || v.state.is_active())
                .collect();
            if !output::structured(format, &vms)? {
                print!("{}", output::vm_table(&vms));
            }
        }
        Cmd::Info { name, format } => {
            let v = c.info(&name)?;
            if !output::structured(format, &v)? {
                let r = c.resources(&name).ok().map(|r| resize::rows(&r));
                print!("{}", output::vm_details(&v, r));
            }
        }
        Cmd::Start {
            name,
            paused,
            console,
        } => {
            let v = c.start(&name, paused)?;
            println!(
                "VM {} started{}",
                v.name,
                if paused { " (paused)" } else { "" }
            );
            if console {
                console::attach(&c, &name)?;
            }
        }
        Cmd::Shutdown {
            name,
            timeout,
            force,
        } => {
            c.shutdown(&name, timeout, force)?;
            println!("VM {name} is shut off");
        }
        Cmd::Destroy { name } => {
            c.destroy(&name)?;
            println!("VM {name} destroyed (powered off)");
        }
        Cmd::Reboot {
            name,
            timeout,
            force,
        } => {
            c.reboot(&name, timeout, force)?;
            println!("VM {name} rebooted");
        }
        Cmd::Reset { name } => {
            c.reset(&name)?;
            println!("VM {name} was reset");
        }
        Cmd::Pause { name } => {
            c.pause(&name)?;
            println!("VM {name} paused");
        }
        Cmd::Resume { name } => {
            c.resume(&name)?;
            println!("VM {name} resumed");
        }
        Cmd::Undefine {
            name,
            remove_storage,
            force,
        } => {
            c.undefine(&name, remove_storage, force)?;
            println!(
                "VM {name} undefined{}",
                if remove_storage {
                    " and its storage removed"
                } else {
                    ""
                }
            );
        }
        Cmd::Autostart { name, disable } => {
            c.autostart(&name, !disable)?;
            println!(
                "VM {name} autostart {}",
                if disable { "disabled" } else { "enabled" }
            );
        }
        Cmd::Console { name, log, follow } => {
            if log {
                let mut r = c.console_log(&name, follow)?;
                let mut out = std::io::stdout();
                let mut buf = [0u8; 8192];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    std::io::Write::write_all(&mut out, &buf[..n])?;
                    std::io::Write::flush(&mut out)?;
                }
            } else {
                console::attach(&c, &name)?;
            }
        }
        Cmd::Control {
            name,
            action,
            format,
        } => control::run(&c, &name, action, format)?,
        Cmd::Wait {
            name,
            state,
            console,
            timeout,
        } => {
            let r = c.wait(
                &name,
                &WaitRequest {
                    state,
                    console: console.clone(),
                    timeout_secs: timeout,
                },
            )?;
            if !r.reached {
                let what = match (state, console) {
                    (Some(s), _) => format!("state {s}"),
                    (_, Some(re)) => format!("console output matching {re:?}"),
                    _ => String::new(),
                };
                eprintln!(
                    "error: timed out after {timeout} s waiting for {what} (VM {name} is {})",
                    r.state
                );
                return Ok(1);
            }
            if let Some(m) = r.matched {
                println!("{m}");
            }
        }
        Cmd::Showcmd { name } => {
            let s = c.showcmd(&name)?;
            println!("{}", render_command(&s.argv));
        }
        Cmd::Screenshot(a) => screen::screenshot(&c, a)?,
        Cmd::SendKey(a) => screen::send_key(&c, a)?,
        Cmd::Completion(_) | Cmd::ManPages(_) => {}
    }
    Ok(0)
}

/// One line per option and its value, so the printed command reads like a tutorial's.
fn render_command(argv: &[String]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let mut line = shell_quote(&argv[i]);
        if i > 0 && argv[i].starts_with('-') && argv.get(i + 1).is_some_and(|n| !n.starts_with('-'))
        {
            line.push(' ');
            line.push_str(&shell_quote(&argv[i + 1]));
            i += 1;
        }
        lines.push(line);
        i += 1;
    }
    lines.join(" \\\n    ")
}

/// Quotes an argument so the printed command can be pasted into a shell.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn main() {
    let m = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&m) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &m) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
