//! Starting and stopping a whole network, with an undo guard so that a failed or cancelled
//! start leaves nothing behind.
//!
//! Start (NAT/isolated): bridge (up, STP off, delay 0) → gateway address → `route_localnet`
//! when there are port forwards → nft table and dnsmasq, these two concurrently. Stop undoes
//! all of it and is idempotent: it also cleans up after a start that an hvd crash interrupted.
//! Bridge mode only checks that the host bridge exists; hv changes nothing there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::config::NetworkConfig;
use crate::dnsmasq::{self, Dnsmasq};
use crate::link;
use crate::netlink::LinkInfo;
use crate::nft;
use crate::NetError;

/// How long dnsmasq gets to exit on SIGTERM before it is killed.
pub const DNSMASQ_GRACE: Duration = Duration::from_secs(2);

/// One host change to take back.
#[derive(Debug)]
pub enum UndoStep {
    /// Delete a link (bridge or tap) hv created.
    DeleteLink(String),
    /// Delete the nft table `inet NAME`.
    DeleteTable(String),
    /// Stop a dnsmasq hv started.
    StopDnsmasq(Dnsmasq),
    /// Put `net.ipv4.ip_forward` back to this value.
    SetIpForward(bool),
    /// Remove a file hv wrote.
    RemoveFile(PathBuf),
}

/// Rolls back every recorded step, newest first, unless committed.
///
/// [`Undo::rollback`] does it completely (awaiting `nft` and dnsmasq's exit). Dropping an
/// uncommitted guard (an error path that forgot `rollback`, or a cancelled future) does what can
/// be done synchronously at once (links, files, `ip_forward`, SIGTERM to dnsmasq) and hands table
/// deletion to the current tokio runtime.
#[derive(Debug, Default)]
pub struct Undo {
    steps: Vec<UndoStep>,
}

impl Undo {
    pub fn new() -> Undo {
        Undo::default()
    }

    /// Records a change just made.
    pub fn push(&mut self, step: UndoStep) {
        self.steps.push(step);
    }

    /// Keeps every change; hands the steps back (e.g. to take the [`Dnsmasq`] out).
    pub fn commit(mut self) -> Vec<UndoStep> {
        std::mem::take(&mut self.steps)
    }

    /// Takes every change back, newest first. Failures are logged, never returned: the caller
    /// is already reporting the error that caused the rollback.
    pub async fn rollback(mut self) {
        while let Some(step) = self.steps.pop() {
            tracing::info!(?step, "rolling back");
            let r = match step {
                UndoStep::DeleteTable(t) => nft::remove_table(&t).await,
                UndoStep::StopDnsmasq(d) => d.stop(DNSMASQ_GRACE).await,
                other => undo_now(other),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "rollback step failed");
            }
        }
    }
}

fn undo_now(step: UndoStep) -> Result<(), NetError> {
    match step {
        UndoStep::DeleteLink(name) => link::delete_link(&name).map(drop),
        UndoStep::SetIpForward(on) => link::set_ip_forward(on),
        UndoStep::RemoveFile(p) => dnsmasq::remove_if_exists(&p),
        UndoStep::StopDnsmasq(d) => {
            d.terminate();
            Ok(())
        }
        UndoStep::DeleteTable(t) => match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = nft::remove_table(&t).await {
                        tracing::warn!(table = %t, error = %e, "cannot remove nft table");
                    }
                });
                Ok(())
            }
            Err(_) => Err(NetError::Leftover {
                what: format!("nft table inet {t} (no runtime to remove it from a drop)"),
            }),
        },
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            tracing::warn!(?step, "rolling back (guard dropped)");
            if let Err(e) = undo_now(step) {
                tracing::warn!(error = %e, "rollback step failed");
            }
        }
    }
}

/// What [`start_network`] leaves running that hvd must keep an eye on.
#[derive(Debug)]
pub struct RunningNetwork {
    /// The network's dnsmasq (`None` in bridge mode): restart it with [`Dnsmasq::start`] when
    /// [`Dnsmasq::exited`] fires unexpectedly.
    pub dnsmasq: Option<Dnsmasq>,
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn make_dir(dir: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| NetError::Io {
            op: "create",
            path: dir.into(),
            error,
        })
}

/// Makes the network exist on the host, its runtime files in `dir` (absolute; created if
/// missing). On failure or cancellation everything made so far is removed again.
pub async fn start_network(cfg: &NetworkConfig, dir: &Path) -> Result<RunningNetwork, NetError> {
    let span = tracing::info_span!("net_start", net = %cfg.name, mode = %cfg.mode);
    start(cfg, dir).instrument(span).await
}

async fn start(cfg: &NetworkConfig, dir: &Path) -> Result<RunningNetwork, NetError> {
    cfg.validate()?;
    if !dir.is_absolute() {
        return Err(NetError::Path { path: dir.into() });
    }
    let Some(v4) = cfg.ipv4.as_ref().filter(|_| cfg.mode.is_managed()) else {
        check_host_bridge(&cfg.bridge)?;
        return Ok(RunningNetwork { dnsmasq: None });
    };
    make_dir(dir)?;
    let mut undo = Undo::new();
    for f in [dnsmasq::CONF_FILE, nft::RULESET_FILE] {
        undo.push(UndoStep::RemoveFile(dir.join(f)));
    }
    let r = async {
        link::create_bridge(&cfg.bridge)?;
        undo.push(UndoStep::DeleteLink(cfg.bridge.clone()));
        link::add_address(&cfg.bridge, v4.gateway, v4.subnet)?;
        if !cfg.forwards.is_empty() {
            link::set_route_localnet(&cfg.bridge, true)?;
        }
        let ((fw, fw_t), (dns, dns_t)) = tokio::join!(
            timed(nft::apply_ruleset(cfg, dir, nft::Load::Create)),
            timed(Dnsmasq::start(cfg, dir))
        );
        tracing::debug!(nft_ms = ms(fw_t), dnsmasq_ms = ms(dns_t), "setup steps");
        match (&fw, dns) {
            (Ok(()), dns) => {
                undo.push(UndoStep::DeleteTable(cfg.table()));
                undo.push(UndoStep::StopDnsmasq(dns?));
            }
            (Err(_), Ok(d)) => undo.push(UndoStep::StopDnsmasq(d)),
            (Err(fw_err), Err(e)) => {
                tracing::warn!(error = %fw_err, "nft failed as well");
                return Err(e);
            }
        }
        fw
    }
    .await;
    if let Err(e) = r {
        undo.rollback().await;
        return Err(e);
    }
    let dnsmasq = undo.commit().into_iter().find_map(|s| match s {
        UndoStep::StopDnsmasq(d) => Some(d),
        _ => None,
    });
    tracing::info!(bridge = %cfg.bridge, subnet = %v4.subnet, "network started");
    Ok(RunningNetwork { dnsmasq })
}

fn check_host_bridge(bridge: &str) -> Result<LinkInfo, NetError> {
    match link::link_info(bridge)? {
        Some(l) if l.kind.as_deref() == Some("bridge") => Ok(l),
        Some(_) => Err(NetError::NotABridge {
            name: bridge.into(),
        }),
        None => Err(NetError::NoLink {
            name: bridge.into(),
        }),
    }
}

/// Removes what [`start_network`] made: dnsmasq (the given handle, or the one found from the pid
/// file), the nft table, the bridge (taps still on it are detached, not deleted) and the
/// generated files; leases and the dnsmasq log stay until [`remove_network_files`]. Every step
/// runs even when an earlier one fails; the first failure is returned. Missing pieces are fine.
pub async fn stop_network(
    cfg: &NetworkConfig,
    dir: &Path,
    dnsmasq: Option<Dnsmasq>,
) -> Result<(), NetError> {
    if !cfg.mode.is_managed() {
        return Ok(());
    }
    let span = tracing::info_span!("net_stop", net = %cfg.name);
    stop(cfg, dir, dnsmasq).instrument(span).await
}

async fn stop(cfg: &NetworkConfig, dir: &Path, dnsmasq: Option<Dnsmasq>) -> Result<(), NetError> {
    let mut first: Option<NetError> = None;
    let mut note = |r: Result<(), NetError>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "network stop step failed");
            first.get_or_insert(e);
        }
    };
    let dnsmasq = match dnsmasq {
        Some(d) => Some(d),
        None => Dnsmasq::attach(dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look for a running dnsmasq");
            None
        }),
    };
    let stop_dns = async {
        match dnsmasq {
            Some(d) => d.stop(DNSMASQ_GRACE).await,
            None => Ok(()),
        }
    };
    // Deleting a link waits for RCU grace periods in the kernel: `remove_link` returns once
    // the bridge is gone and leaves the rest to a blocking thread.
    let delete_bridge = async { link::remove_link(&cfg.bridge).await.map(drop) };
    let table = cfg.table();
    let t = Instant::now();
    let ((dns, dns_t), (fw, fw_t), (br, br_t)) = tokio::join!(
        timed(stop_dns),
        timed(nft::remove_table(&table)),
        timed(delete_bridge)
    );
    tracing::debug!(
        total_ms = ms(t.elapsed()),
        dnsmasq_ms = ms(dns_t),
        nft_ms = ms(fw_t),
        bridge_ms = ms(br_t),
        "teardown steps"
    );
    note(dns);
    note(fw);
    note(br);
    for f in [dnsmasq::CONF_FILE, dnsmasq::PID_FILE, nft::RULESET_FILE] {
        note(dnsmasq::remove_if_exists(&dir.join(f)));
    }
    match first {
        Some(e) => Err(e),
        None => {
            tracing::info!("network stopped");
            Ok(())
        }
    }
}

/// Re-applies what can change while a network runs: port forwards (the nft table, replaced
/// atomically, and `route_localnet`) and reservations or the DHCP range (dnsmasq is restarted
/// when its config changed; `dnsmasq` then holds the new one, or `None` if it failed to start).
pub async fn update_network(
    cfg: &NetworkConfig,
    dir: &Path,
    dnsmasq: &mut Option<Dnsmasq>,
) -> Result<(), NetError> {
    cfg.validate()?;
    if !cfg.mode.is_managed() {
        return Ok(());
    }
    link::set_route_localnet(&cfg.bridge, !cfg.forwards.is_empty())?;
    nft::apply_ruleset(cfg, dir, nft::Load::Replace).await?;
    if let Some(d) = dnsmasq.take() {
        *dnsmasq = Some(d.restart(cfg, dir).await?);
    }
    Ok(())
}

/// Deletes a network's runtime directory (leases and logs included), for `hv net delete`.
pub fn remove_network_files(dir: &Path) -> Result<(), NetError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Io {
            op: "remove",
            path: dir.into(),
            error: e,
        }),
        _ => Ok(()),
    }
}

/// What of a network exists on the host right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// The bridge (hv's, or the host's in bridge mode), when it exists.
    pub bridge: Option<LinkInfo>,
    /// Whether hv's nft table for the network exists.
    pub table: bool,
    /// The pid of the network's dnsmasq, when one runs.
    pub dnsmasq_pid: Option<u32>,
}

impl NetworkStatus {
    /// Everything a running network of this mode needs is there.
    pub fn is_complete(&self, cfg: &NetworkConfig) -> bool {
        let br = self
            .bridge
            .as_ref()
            .is_some_and(|b| b.up || !cfg.mode.is_managed());
        br && (!cfg.mode.is_managed() || (self.table && self.dnsmasq_pid.is_some()))
    }

    /// Nothing of a managed network is left.
    pub fn is_gone(&self) -> bool {
        self.bridge.is_none() && !self.table && self.dnsmasq_pid.is_none()
    }
}

/// Looks at the host: bridge, nft table, dnsmasq (e.g. to reconcile after an hvd restart).
pub async fn network_status(cfg: &NetworkConfig, dir: &Path) -> Result<NetworkStatus, NetError> {
    let bridge = link::link_info(&cfg.bridge)?;
    let table = nft::inet_tables().await?.contains(&cfg.table());
    let dnsmasq_pid = Dnsmasq::attach(dir)?.map(|d| d.pid());
    Ok(NetworkStatus {
        bridge,
        table,
        dnsmasq_pid,
    })
}
