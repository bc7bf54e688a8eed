//! The link the migration figures run over: two network namespaces joined by a veth pair. With
//! hvd available it is the very link of the [`testkit::pair::HostPair`] the hv figures use;
//! otherwise (anchors only) one of the same shape made here. Dropping an own link removes both
//! namespaces (and with them the veth and every process still inside).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context, Result};
use testkit::pair::HostPair;
use testkit::NetNs;

/// The source side's address on an own link's veth.
const SOURCE_IP: &str = "10.77.200.1";
/// The target side's address on an own link's veth.
const TARGET_IP: &str = "10.77.200.2";

/// Two namespaces (by name), `source` and `target`, joined by a veth pair.
pub struct Link {
    pub source: String,
    pub target: String,
    /// The target namespace's address on the veth.
    pub target_ip: String,
    /// The namespaces, when this link made them.
    _own: Option<(NetNs, NetNs)>,
}

impl Link {
    /// The link between a pair's two hvds.
    pub fn of_pair(p: &HostPair) -> Link {
        Link {
            source: p.source_ns.name.clone(),
            target: p.target_ns.name.clone(),
            target_ip: p.target_ip.clone(),
            _own: None,
        }
    }

    /// A link of its own.
    pub fn new() -> Result<Link> {
        let source = NetNs::new("mbsrc")?;
        let target = NetNs::new("mbdst")?;
        let pid = std::process::id() % 10_000_000;
        let (a, b) = (format!("mb{pid}s"), format!("mb{pid}t"));
        // Created directly inside the namespaces, so nothing appears in the host's namespace.
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &source.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &target.name,
        ])?;
        for (ns, dev, addr) in [(&source, &a, SOURCE_IP), (&target, &b, TARGET_IP)] {
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
        Ok(Link {
            source: source.name.clone(),
            target: target.name.clone(),
            target_ip: TARGET_IP.into(),
            _own: Some((source, target)),
        })
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread (only it) into the network namespace `ns`. Call it on a thread of
/// its own: the thread stays there.
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on an fd we own for the call; CLONE_NEWNET only changes this thread's
    // network namespace, which is allowed in a multi-threaded process.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}
