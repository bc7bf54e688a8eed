//! Two hvds for migration tests (issue 12): each in its own network namespace and state dir,
//! joined by a veth pair, each with a TLS listener, an admin token on the target, and the
//! [`PeerTarget`] the source uses to reach it. Dropping the pair stops both hvds (and their
//! QEMUs, by PID), deletes both namespaces (and so the veth) and the shared pool directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::PeerTarget;

use crate::{NetNs, TestHvd};

static PAIR: AtomicU32 = AtomicU32::new(0);

/// The TLS port both hvds listen on (each in its own namespace).
pub const PORT: u16 = 8443;
/// The pool both hvds define on the shared directory ([`PairOpts::shared_pool`]).
pub const SHARED_POOL: &str = "shared";

/// Options for [`HostPair::with`].
#[derive(Debug, Clone, Default)]
pub struct PairOpts {
    /// Both hvds define the pool [`SHARED_POOL`] on the same host directory.
    pub shared_pool: bool,
}

/// Two hvds joined by a veth: `source` (A) and `target` (B).
pub struct HostPair {
    // Field order is drop order: the hvds go before their namespaces.
    pub source: TestHvd,
    pub target: TestHvd,
    /// The source's and target's address on the veth.
    pub source_ip: String,
    pub target_ip: String,
    /// How the source hvd reaches the target: url, an admin token, the pinned fingerprint.
    pub peer: PeerTarget,
    /// How the target hvd reaches the source (for migrating back).
    pub peer_back: PeerTarget,
    /// The veth ends (in the source's and the target's namespace).
    pub source_veth: String,
    pub target_veth: String,
    /// The shared pool's directory, when [`PairOpts::shared_pool`].
    pub shared_dir: Option<PathBuf>,
    pub source_ns: NetNs,
    pub target_ns: NetNs,
    _dir: DirGuard,
}

/// Removes the pair's directory (the shared pool) last, after the hvds and namespaces.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl HostPair {
    /// Two hvds (`hvd_bin`, usually `env!("CARGO_BIN_EXE_hvd")`), no shared pool.
    pub fn new(hvd_bin: &Path) -> Result<HostPair> {
        Self::with(hvd_bin, PairOpts::default())
    }

    pub fn with(hvd_bin: &Path, opts: PairOpts) -> Result<HostPair> {
        let n = PAIR.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("m{}{n}", pid % 100_000);
        let source_ns = NetNs::new(&format!("{tag}a"))?;
        let target_ns = NetNs::new(&format!("{tag}b"))?;
        // A /24 per pair, unique among the pairs of concurrent test processes (best effort).
        let net = 1 + (pid as usize * 7 + n as usize) % 250;
        let (source_ip, target_ip) = (format!("10.77.{net}.1"), format!("10.77.{net}.2"));
        let (va, vb) = (format!("hvm{tag}a"), format!("hvm{tag}b"));
        let (va, vb) = (truncate(&va), truncate(&vb));
        let _ = ip(&["link", "del", &va]);
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            &source_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &target_ns.name,
        ])?;
        for (ns, dev, addr) in [(&source_ns, &va, &source_ip), (&target_ns, &vb, &target_ip)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", &ns.name, "link", "set", dev, "up"])?;
        }
        let dir = PathBuf::from(format!("/tmp/hvt-pair-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let guard = DirGuard(dir.clone());
        let source = TestHvd::start_in_netns_with_args(
            hvd_bin,
            &source_ns.name,
            &["--listen", &format!("{source_ip}:{PORT}")],
        )?;
        let target = TestHvd::start_in_netns_with_args(
            hvd_bin,
            &target_ns.name,
            &["--listen", &format!("{target_ip}:{PORT}")],
        )?;
        let peer = peer_of(&target, &target_ip, "migrator", "admin", None)?;
        let peer_back = peer_of(&source, &source_ip, "migrator", "admin", None)?;
        let mut shared_dir = None;
        if opts.shared_pool {
            let d = dir.join("pool");
            std::fs::create_dir_all(&d)?;
            for h in [&source, &target] {
                h.client()
                    .pool_create(&api::CreatePoolRequest {
                        name: SHARED_POOL.parse()?,
                        path: d.clone(),
                        autostart: false,
                    })
                    .context("define the shared pool")?;
            }
            shared_dir = Some(d);
        }
        let pair = HostPair {
            source,
            target,
            source_ip,
            target_ip,
            peer,
            peer_back,
            source_veth: va,
            target_veth: vb,
            shared_dir,
            source_ns,
            target_ns,
            _dir: guard,
        };
        pair.wait_link()?;
        Ok(pair)
    }

    /// Waits until the source's namespace reaches the target's TLS port.
    fn wait_link(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = self
                .source_ns
                .run(&[
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/{}/{PORT}", self.target_ip),
                ])
                .is_ok();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the source namespace cannot reach {}:{PORT}",
                    self.target_ip
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts (`false`) or restores the link: the source's veth end goes down or up.
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.source_ns.name,
            "link",
            "set",
            &self.source_veth,
            if up { "up" } else { "down" },
        ])
    }

    /// A token on the target for a new user `user` with `role` on `vm_glob` (all VMs with
    /// `None`), as a [`PeerTarget`]: for refusals (a token without admin).
    pub fn target_peer_with(
        &self,
        user: &str,
        role: &str,
        vm_glob: Option<&str>,
    ) -> Result<PeerTarget> {
        peer_of(&self.target, &self.target_ip, user, role, vm_glob)
    }

    /// Starts the counter on a booted tiny guest's console: `tick N` every 100 ms, in the
    /// background (the shell still takes commands).
    pub fn start_counter(h: &TestHvd, vm: &str) -> Result<()> {
        h.type_line(
            vm,
            "(i=0; while :; do echo tick $i; i=$((i+1)); usleep 100000; done) &",
        )?;
        h.wait_console(vm, r"tick 3\b", Duration::from_secs(30))
            .map(drop)
    }
}

/// The ticks (`tick N`) in a console text, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn truncate(s: &str) -> String {
    // Interface names are at most 15 bytes.
    s.chars()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

fn peer_of(
    h: &TestHvd,
    addr: &str,
    user: &str,
    role: &str,
    vm_glob: Option<&str>,
) -> Result<PeerTarget> {
    let c = h.client();
    c.user_add(&api::CreateUserRequest {
        name: user.into(),
        password: None,
    })
    .context("user add")?;
    c.user_grant(
        user,
        &api::GrantInfo {
            role: role.into(),
            vm: vm_glob.map(str::to_string),
        },
    )
    .context("grant")?;
    let token = c
        .token_create(&api::CreateTokenRequest {
            user: user.into(),
            expires_secs: None,
            description: Some("migration test".into()),
        })
        .context("token")?
        .token;
    let fingerprint = c.host_cert().context("host cert")?.fingerprint;
    Ok(PeerTarget {
        url: format!("https://{addr}:{PORT}"),
        token,
        fingerprint,
    })
}

/// Follows a VM's console on `h` from now on, in a thread, recording when each `tick N` line
/// arrives; retries until the VM exists there (a migration's target). Stops when `stop` is set.
pub fn follow_ticks(
    h: &TestHvd,
    vm: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, u64)>> {
    let client = h.client().clone();
    let vm = vm.to_string();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut out = Vec::new();
        let reader = loop {
            if stop.load(Ordering::Relaxed) {
                return out;
            }
            match client.console_log(&vm, true) {
                Ok(r) => break r,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line
                .trim()
                .strip_prefix("tick ")
                .and_then(|n| n.trim().parse().ok())
            {
                out.push((Instant::now(), n));
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        out
    })
}
