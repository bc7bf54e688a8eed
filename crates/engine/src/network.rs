//! Managed networks: definitions in the database, the host side through `host-net` (bridge,
//! nftables table, dnsmasq), `ip_forward` while a NAT network runs, dnsmasq restarted when it
//! dies, and the taps of VM NICs. Everything acts on the network namespace hvd runs in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use api::{LeaseInfo, NetworkInfo};
use host_net::{Dnsmasq, Ipv4Cidr, NetworkConfig};
use model::{NetMode, NetworkSpec, NicKind, VmSpec};

use crate::error::{EngineError, Result};
use crate::Engine;

/// A defined network and, while it runs, its dnsmasq.
pub(crate) struct Net {
    pub spec: NetworkSpec,
    pub cfg: NetworkConfig,
    pub active: bool,
    pub dnsmasq: Option<Dnsmasq>,
    /// Why it failed to come up; it is inactive then, and a start tries again.
    pub error: Option<String>,
}

/// The engine's networks plus what `ip_forward` was before hv turned it on.
#[derive(Default)]
pub(crate) struct Nets {
    pub map: BTreeMap<String, Net>,
    pub saved_ip_forward: Option<bool>,
}

impl Nets {
    fn get(&self, name: &str) -> Result<&Net> {
        self.map.get(name).ok_or_else(|| {
            EngineError::NotFound(format!(
                "network {name} does not exist (hv net list shows the networks)"
            ))
        })
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut Net> {
        self.map.get_mut(name).ok_or_else(|| {
            EngineError::NotFound(format!(
                "network {name} does not exist (hv net list shows the networks)"
            ))
        })
    }
}

fn host(e: host_net::NetError) -> EngineError {
    EngineError::Host(e.to_string())
}

/// Bad input (a config error) is the user's to fix; anything else is the host's.
fn net_error(e: host_net::NetError) -> EngineError {
    match e {
        host_net::NetError::Config(c) => EngineError::Invalid(c.to_string()),
        e => host(e),
    }
}

fn refuse_hv_link(name: &str) -> Result<()> {
    if name.starts_with("hvbr-") || name.starts_with("hvtap") {
        return Err(EngineError::Invalid(format!(
            "{name} is one of hv's own links; hv net start/stop and VM NICs manage those"
        )));
    }
    Ok(())
}

fn invalid(e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(e.to_string())
}

impl Engine {
    fn net_dir(&self, name: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("nets").join(name)
    }

    /// Chooses a subnet when the spec has none, and checks the result against the other
    /// networks and the host's routes and addresses.
    fn net_config(
        &self,
        spec: &mut NetworkSpec,
        others: &[NetworkConfig],
    ) -> Result<NetworkConfig> {
        spec.validate()?;
        let used = host_net::host_ranges().map_err(host)?;
        if spec.mode != NetMode::Bridge && spec.subnet.is_none() {
            let mut taken: Vec<Ipv4Cidr> = used.iter().map(|u| u.cidr).collect();
            taken.extend(
                others
                    .iter()
                    .filter_map(|o| o.ipv4.as_ref().map(|i| i.subnet)),
            );
            let free = host_net::pick_free_subnet(&taken).ok_or_else(|| {
                EngineError::Host("no free /24 left for a network; give --subnet".into())
            })?;
            spec.subnet = Some(free.to_string());
        }
        let cfg = cfg_from_spec(spec)?;
        if let Some(ip) = &cfg.ipv4 {
            host_net::check_host_clash(&ip.subnet, &used, Some(&cfg.bridge)).map_err(invalid)?;
        }
        cfg.check_against(others, false).map_err(invalid)?;
        Ok(cfg)
    }

    /// Loads the networks and brings back the ones that ran (re-attaching to their dnsmasq).
    /// A network that cannot come up is marked failed; it does not stop hvd.
    pub(crate) async fn load_networks(&self) -> Result<()> {
        let rows = self.inner.store.load_networks()?;
        let mut nets = self.inner.nets.lock().await;
        for (spec, active) in rows {
            let cfg = cfg_from_spec(&spec).map_err(|e| {
                EngineError::Invalid(format!(
                    "the stored network {} no longer validates ({e}); fix or delete its row in the networks table with sqlite3 (after a backup)",
                    spec.name
                ))
            })?;
            let mut net = Net {
                spec,
                cfg,
                active: false,
                dnsmasq: None,
                error: None,
            };
            if active {
                match self.bring_back(&mut net).await {
                    Ok(()) => self.watch_dnsmasq(&net),
                    Err(e) => {
                        tracing::error!(net = %net.spec.name, error = %e, "network cannot come up; marked failed (hv net start retries)");
                        net.error = Some(e.to_string());
                    }
                }
            }
            nets.map.insert(net.spec.name.to_string(), net);
        }
        nets.saved_ip_forward = self
            .inner
            .store
            .get_meta("ip_forward_saved")?
            .map(|v| v == "1");
        Ok(())
    }

    /// Re-attaches to a network that ran before hvd restarted, or starts it again when it is
    /// not all there.
    async fn bring_back(&self, net: &mut Net) -> Result<()> {
        let dir = self.net_dir(net.spec.name.as_str());
        let status = host_net::network_status(&net.cfg, &dir)
            .await
            .map_err(host)?;
        if status.is_complete(&net.cfg) {
            net.dnsmasq = Dnsmasq::attach(&dir).map_err(host)?;
        } else {
            tracing::warn!(net = %net.spec.name, "network was half up; starting it again");
            let _ = host_net::stop_network(&net.cfg, &dir, None).await;
            let running = host_net::start_network(&net.cfg, &dir)
                .await
                .map_err(host)?;
            net.dnsmasq = running.dnsmasq;
        }
        net.active = true;
        Ok(())
    }

    /// Defines the `default` NAT network on a free /24 (at first start; not started).
    pub(crate) async fn ensure_default_network(&self) -> Result<()> {
        if self.inner.store.get_meta("default_network")?.is_some() {
            return Ok(());
        }
        let spec = NetworkSpec::new("default".parse()?, NetMode::Nat);
        match self.net_create(spec).await {
            Ok(_) | Err(EngineError::AlreadyExists(_)) => {}
            Err(e) => tracing::warn!(error = %e, "cannot define the default network"),
        }
        self.inner.store.set_meta("default_network", "defined")
    }

    pub async fn net_create(&self, mut spec: NetworkSpec) -> Result<NetworkInfo> {
        let mut nets = self.inner.nets.lock().await;
        let name = spec.name.to_string();
        if nets.map.contains_key(&name) {
            return Err(EngineError::AlreadyExists(format!(
                "network {name} already exists; pick another name"
            )));
        }
        let others: Vec<NetworkConfig> = nets.map.values().map(|n| n.cfg.clone()).collect();
        let cfg = self.net_config(&mut spec, &others)?;
        self.inner.store.insert_network(&spec)?;
        let net = Net {
            spec,
            cfg,
            active: false,
            dnsmasq: None,
            error: None,
        };
        let info = self.net_info_of(&net);
        nets.map.insert(name.clone(), net);
        tracing::info!(net = name, "network defined");
        Ok(info)
    }

    fn users_of_net(&self, net: &Net, running_only: bool) -> Vec<String> {
        let vms: Vec<_> = self.read_vms().values().cloned().collect();
        vms.iter()
            .filter(|vm| {
                let st = vm.lock();
                (!running_only || st.state.is_active())
                    && st.spec.nics.iter().any(|n| match n.kind {
                        NicKind::Network => n.source.as_deref() == Some(net.spec.name.as_str()),
                        NicKind::Bridge => {
                            net.spec.mode == NetMode::Bridge
                                && n.source.as_deref() == Some(net.cfg.bridge.as_str())
                        }
                        NicKind::User => false,
                    })
            })
            .map(|vm| vm.name.clone())
            .collect()
    }

    fn net_info_of(&self, net: &Net) -> NetworkInfo {
        let ip = net.cfg.ipv4.as_ref();
        NetworkInfo {
            name: net.spec.name.to_string(),
            mode: net.spec.mode,
            bridge: net.cfg.bridge.clone(),
            subnet: ip.map(|i| i.subnet.to_string()),
            gateway: ip.map(|i| i.gateway.to_string()),
            dhcp_range: ip.and_then(|i| i.dhcp.map(|d| d.to_string())),
            autostart: net.spec.autostart,
            active: net.active,
            dnsmasq_pid: net.dnsmasq.as_ref().map(|d| d.pid()),
            error: net.error.clone(),
            used_by: self.users_of_net(net, false),
        }
    }

    pub async fn net_list(&self) -> Vec<NetworkInfo> {
        let nets = self.inner.nets.lock().await;
        nets.map.values().map(|n| self.net_info_of(n)).collect()
    }

    pub async fn net_info(&self, name: &str) -> Result<NetworkInfo> {
        let nets = self.inner.nets.lock().await;
        let net = nets.get(name)?;
        Ok(self.net_info_of(net))
    }

    pub async fn net_start(&self, name: &str) -> Result<NetworkInfo> {
        let mut nets = self.inner.nets.lock().await;
        self.net_start_locked(&mut nets, name).await?;
        let net = nets.get(name)?;
        Ok(self.net_info_of(net))
    }

    /// Starts a network; a failure is recorded on it (shown until a start succeeds).
    async fn net_start_locked(&self, nets: &mut Nets, name: &str) -> Result<()> {
        let res = self.net_start_inner(nets, name).await;
        if let Some(net) = nets.map.get_mut(name) {
            net.error = res.as_ref().err().map(|e| e.to_string());
        }
        res
    }

    async fn net_start_inner(&self, nets: &mut Nets, name: &str) -> Result<()> {
        let dir = self.net_dir(name);
        let nat_running = nets
            .map
            .values()
            .any(|n| n.active && n.spec.mode == NetMode::Nat);
        let net = nets.get_mut(name)?;
        if net.active {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::Host(format!("cannot create {}: {e}", dir.display())))?;
        let running = host_net::start_network(&net.cfg, &dir)
            .await
            .map_err(host)?;
        net.dnsmasq = running.dnsmasq;
        net.active = true;
        let is_nat = net.spec.mode == NetMode::Nat;
        self.inner.store.set_network_active(name, true)?;
        self.watch_dnsmasq(net);
        if is_nat && !nat_running {
            let before = host_net::ip_forward().map_err(host)?;
            if nets.saved_ip_forward.is_none() {
                nets.saved_ip_forward = Some(before);
                self.inner
                    .store
                    .set_meta("ip_forward_saved", if before { "1" } else { "0" })?;
            }
            host_net::set_ip_forward(true).map_err(host)?;
        }
        tracing::info!(net = name, "network started");
        Ok(())
    }

    /// Restarts dnsmasq when it dies while its network is up.
    fn watch_dnsmasq(&self, net: &Net) {
        let Some(pid) = net.dnsmasq.as_ref().map(|d| d.pid()) else {
            return;
        };
        // dnsmasq appends (O_APPEND) to its log: capped at each (re)start and re-attach.
        let log = self
            .net_dir(net.spec.name.as_str())
            .join(host_net::LOG_FILE);
        crate::logcap::truncate_if_over(&log, self.inner.cfg.log_cap);
        let engine = self.clone();
        let name = net.spec.name.to_string();
        tokio::spawn(async move {
            let Ok(watch) = host_exec::PidFd::open(pid) else {
                return;
            };
            watch.exited().await;
            let mut nets = engine.inner.nets.lock().await;
            let dir = engine.net_dir(&name);
            let Some(net) = nets.map.get_mut(&name) else {
                return;
            };
            if !net.active || net.dnsmasq.as_ref().map(|d| d.pid()) != Some(pid) {
                return;
            }
            tracing::warn!(net = name, pid, "dnsmasq died; restarting it");
            match Dnsmasq::start(&net.cfg, &dir).await {
                Ok(d) => {
                    net.dnsmasq = Some(d);
                    engine.watch_dnsmasq(net);
                }
                Err(e) => tracing::error!(net = name, error = %e, "cannot restart dnsmasq"),
            }
        });
    }

    pub async fn net_stop(&self, name: &str) -> Result<NetworkInfo> {
        let mut nets = self.inner.nets.lock().await;
        let dir = self.net_dir(name);
        let net = nets.get_mut(name)?;
        let users = self.users_of_net(net, true);
        if !users.is_empty() {
            return Err(EngineError::InUse(format!(
                "network {name} is used by running VM {}; stop them first",
                users.join(", ")
            )));
        }
        if net.active {
            host_net::stop_network(&net.cfg, &dir, net.dnsmasq.take())
                .await
                .map_err(host)?;
            net.active = false;
            self.inner.store.set_network_active(name, false)?;
        } else if net.error.is_some() {
            // Failed: it no longer has to come up with hvd.
            self.inner.store.set_network_active(name, false)?;
            net.error = None;
        }
        if !nets
            .map
            .values()
            .any(|n| n.active && n.spec.mode == NetMode::Nat)
        {
            if let Some(before) = nets.saved_ip_forward.take() {
                host_net::set_ip_forward(before).map_err(host)?;
                self.inner.store.delete_meta("ip_forward_saved")?;
            }
        }
        tracing::info!(net = name, "network stopped");
        let net = nets.get(name)?;
        Ok(self.net_info_of(net))
    }

    pub async fn net_delete(&self, name: &str) -> Result<()> {
        let mut nets = self.inner.nets.lock().await;
        let net = nets.get(name)?;
        if net.active {
            return Err(EngineError::Invalid(format!(
                "network {name} is running; hv net stop {name} first"
            )));
        }
        let users = self.users_of_net(net, false);
        if !users.is_empty() {
            return Err(EngineError::InUse(format!(
                "network {name} is used by VM {}; change their NICs first",
                users.join(", ")
            )));
        }
        let _ = host_net::remove_network_files(&self.net_dir(name));
        let _ = std::fs::remove_dir(self.net_dir(name));
        self.inner.store.delete_network(name)?;
        nets.map.remove(name);
        Ok(())
    }

    pub async fn net_leases(&self, name: &str) -> Result<Vec<LeaseInfo>> {
        let nets = self.inner.nets.lock().await;
        let net = nets.get(name)?;
        let leases = host_net::read_leases(&self.net_dir(name)).map_err(host)?;
        let vms: Vec<_> = self.read_vms().values().cloned().collect();
        let _ = net;
        Ok(leases
            .into_iter()
            .map(|l| LeaseInfo {
                vm: vms
                    .iter()
                    .find(|vm| vm.lock().spec.nics.iter().any(|n| n.mac == Some(l.mac)))
                    .map(|vm| vm.name.clone()),
                mac: l.mac.to_string(),
                ip: l.ip.to_string(),
                hostname: l.hostname,
                expiry: l.expiry,
            })
            .collect())
    }

    pub async fn net_forwards(&self, name: &str) -> Result<Vec<model::ForwardSpec>> {
        let nets = self.inner.nets.lock().await;
        let net = nets.get(name)?;
        Ok(net.spec.forwards.clone())
    }

    /// Adds a port forward to a VM's current address on the network and pins that address
    /// with a DHCP reservation, so the forward follows the VM across renewals and restarts.
    pub async fn net_forward_add(
        &self,
        name: &str,
        req: api::AddForwardRequest,
    ) -> Result<Vec<model::ForwardSpec>> {
        if !matches!(req.proto.as_str(), "tcp" | "udp") {
            return Err(EngineError::Invalid(format!(
                "proto {:?} cannot be forwarded; use tcp or udp",
                req.proto
            )));
        }
        if req.host_port == 0 || req.port == Some(0) {
            return Err(EngineError::Invalid(
                "port 0 cannot be forwarded; use 1 to 65535".into(),
            ));
        }
        let leases = self.net_leases(name).await?;
        let mac = self.nic_mac_on(&req.vm, name)?;
        let lease = leases
            .iter()
            .find(|l| l.mac == mac.to_string())
            .ok_or_else(|| EngineError::Invalid(format!("VM {} has no DHCP lease on {name} yet; start it and let it get an address first", req.vm)))?;
        let vm_ip = lease.ip.parse().map_err(invalid)?;
        let f = model::ForwardSpec {
            proto: req.proto,
            host_addr: req.host_addr,
            host_port: req.host_port,
            vm: req.vm,
            vm_port: req.port.unwrap_or(req.host_port),
            mac,
            vm_ip,
        };
        self.change_spec(name, |spec| {
            need_nat(spec)?;
            if let Some(r) = spec
                .reservations
                .iter()
                .find(|r| r.mac == f.mac && r.ip != f.vm_ip)
            {
                return Err(EngineError::Invalid(format!(
                    "{} is reserved {} but leased {}; restart the VM's DHCP client or remove the reservation first",
                    f.mac, r.ip, f.vm_ip
                )));
            }
            spec.forwards.push(f);
            Ok(())
        })
        .await
        .map(|s| s.forwards)
    }

    /// The MAC of `vm`'s NIC on network `net`.
    fn nic_mac_on(&self, vm: &str, net: &str) -> Result<model::Mac> {
        self.get(vm)?
            .lock()
            .spec
            .nics
            .iter()
            .find(|n| n.kind == NicKind::Network && n.source.as_deref() == Some(net))
            .and_then(|n| n.mac)
            .ok_or_else(|| EngineError::Invalid(format!("VM {vm} has no NIC on network {net}")))
    }

    pub async fn net_forward_remove(
        &self,
        name: &str,
        proto: &str,
        host_port: u16,
    ) -> Result<Vec<model::ForwardSpec>> {
        self.change_spec(name, |spec| {
            let before = spec.forwards.len();
            spec.forwards
                .retain(|f| !(f.proto == proto && f.host_port == host_port));
            if spec.forwards.len() == before {
                return Err(EngineError::NotFound(format!(
                    "network {name} has no {proto} forward of host port {host_port} (hv net forward list {name} shows them)"
                )));
            }
            Ok(())
        })
        .await
        .map(|s| s.forwards)
    }

    pub async fn net_set_autostart(&self, name: &str, enabled: bool) -> Result<NetworkInfo> {
        let spec = self
            .change_spec(name, |spec| {
                spec.autostart = enabled;
                Ok(())
            })
            .await?;
        tracing::info!(net = name, enabled = spec.autostart, "network autostart");
        self.net_info(name).await
    }

    /// Starts the autostart networks that are not running (at hvd start, before the API).
    pub(crate) async fn autostart_networks(&self) {
        let mut nets = self.inner.nets.lock().await;
        let names: Vec<String> = nets
            .map
            .values()
            .filter(|n| n.spec.autostart && !n.active)
            .map(|n| n.spec.name.to_string())
            .collect();
        for name in names {
            tracing::info!(net = name, "autostart");
            if let Err(e) = self.net_start_locked(&mut nets, &name).await {
                tracing::error!(net = name, error = %e, "network autostart failed");
            }
        }
    }

    pub async fn net_reservations(&self, name: &str) -> Result<Vec<model::ReservationSpec>> {
        let nets = self.inner.nets.lock().await;
        let net = nets.get(name)?;
        Ok(net.spec.reservations.clone())
    }

    /// Reserves an address for a MAC, or for the MAC of a VM's NIC on the network. A running
    /// dnsmasq is restarted with it; guests get the address at their next DHCP request.
    pub async fn net_reservation_add(
        &self,
        name: &str,
        req: api::AddReservationRequest,
    ) -> Result<Vec<model::ReservationSpec>> {
        let (mac, vm) = match (&req.mac, &req.vm) {
            (Some(m), None) => (m.parse::<model::Mac>().map_err(invalid)?, None),
            (None, Some(vm)) => (self.nic_mac_on(vm, name)?, Some(vm.clone())),
            _ => {
                return Err(EngineError::Invalid(
                    "give either a MAC (--mac) or a VM name (--vm) to reserve an address for"
                        .into(),
                ))
            }
        };
        let hostname = match &req.hostname {
            Some(h) => Some(h.clone()),
            None => vm.as_deref().and_then(host_net::hostname_for),
        };
        let r = model::ReservationSpec {
            mac,
            ip: req.ip,
            vm,
            hostname,
        };
        self.change_spec(name, |spec| {
            if spec.mode == NetMode::Bridge {
                return Err(EngineError::Invalid(format!(
                    "network {name} is in bridge mode; its DHCP is the host bridge's, not hv's"
                )));
            }
            if let Some(o) = spec.reservations.iter().find(|o| o.mac == mac) {
                return Err(EngineError::AlreadyExists(format!(
                    "{mac} already has a reservation on {name} ({}); remove it first",
                    o.ip
                )));
            }
            if let Some(f) = spec
                .forwards
                .iter()
                .find(|f| f.mac == mac && f.vm_ip != r.ip)
            {
                return Err(EngineError::Invalid(format!(
                    "{mac} is pinned to {} by the port forward {}/{}; remove the forward first",
                    f.vm_ip, f.proto, f.host_port
                )));
            }
            spec.reservations.push(r);
            Ok(())
        })
        .await
        .map(|s| s.reservations)
    }

    /// Removes the reservation of a MAC, or the one made for a VM (by name).
    pub async fn net_reservation_remove(
        &self,
        name: &str,
        mac_or_vm: &str,
    ) -> Result<Vec<model::ReservationSpec>> {
        let mac = mac_or_vm.parse::<model::Mac>().ok();
        self.change_spec(name, |spec| {
            let before = spec.reservations.len();
            spec.reservations
                .retain(|r| !(Some(r.mac) == mac || r.vm.as_deref() == Some(mac_or_vm)));
            if spec.reservations.len() == before {
                return Err(EngineError::NotFound(format!(
                    "network {name} has no reservation for {mac_or_vm} (hv net reservation list {name} shows them)"
                )));
            }
            Ok(())
        })
        .await
        .map(|s| s.reservations)
    }

    /// Changes a network's definition: checks the result, applies it to the running network
    /// (nft table, dnsmasq), then stores it. Nothing changes when any step fails.
    pub(crate) async fn change_spec(
        &self,
        name: &str,
        change: impl FnOnce(&mut NetworkSpec) -> Result<()>,
    ) -> Result<NetworkSpec> {
        let mut nets = self.inner.nets.lock().await;
        let others: Vec<NetworkConfig> = nets
            .map
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, n)| n.cfg.clone())
            .collect();
        let dir = self.net_dir(name);
        let net = nets.get_mut(name)?;
        let mut spec = net.spec.clone();
        change(&mut spec)?;
        let cfg = cfg_from_spec(&spec)?;
        cfg.check_against(&others, false).map_err(invalid)?;
        let restarted = net.active && cfg != net.cfg;
        if restarted {
            host_net::update_network(&cfg, &dir, &mut net.dnsmasq)
                .await
                .map_err(host)?;
            refresh_guards(&cfg).await;
        }
        self.inner.store.update_network(&spec)?;
        net.spec = spec;
        net.cfg = cfg;
        if restarted {
            // The new dnsmasq is watched like the first one (the old watch ends with its pid).
            self.watch_dnsmasq(net);
        }
        Ok(net.spec.clone())
    }

    /// `hv host bridge IFACE BRIDGE`: see [`host_net::bridge_interface`]. Not for hv's own
    /// bridges and taps.
    pub async fn host_bridge(&self, req: api::BridgeIfaceRequest) -> Result<api::BridgeChange> {
        for name in [&req.iface, &req.bridge] {
            refuse_hv_link(name)?;
        }
        let r = tokio::task::spawn_blocking(move || {
            host_net::bridge_interface(&req.iface, &req.bridge)
        })
        .await
        .map_err(|e| EngineError::Host(e.to_string()))?;
        let change = r.map_err(net_error)?;
        tracing::info!(steps = change.ops.len(), "interface bridged");
        Ok(api::BridgeChange { steps: change.ops })
    }

    /// `hv host unbridge BRIDGE`: the bridge's addresses and routes go back to its one port.
    pub async fn host_unbridge(&self, bridge: &str) -> Result<api::BridgeChange> {
        refuse_hv_link(bridge)?;
        {
            let nets = self.inner.nets.lock().await;
            if let Some(n) = nets.map.values().find(|n| n.cfg.bridge == bridge) {
                let users = self.users_of_net(n, true);
                if !users.is_empty() {
                    return Err(EngineError::InUse(format!(
                        "bridge {bridge} carries network {} used by running VM {}; stop them first",
                        n.spec.name,
                        users.join(", ")
                    )));
                }
            }
        }
        let b = bridge.to_string();
        let r = tokio::task::spawn_blocking(move || host_net::unbridge_interface(&b))
            .await
            .map_err(|e| EngineError::Host(e.to_string()))?;
        let change = r.map_err(net_error)?;
        tracing::info!(bridge, steps = change.ops.len(), "bridge removed");
        Ok(api::BridgeChange { steps: change.ops })
    }

    /// Does another firewall table drop forwarded traffic (which hv's own table cannot
    /// override)? Says exactly what to add when it does.
    pub(crate) async fn firewall_check(&self) -> api::HostCheck {
        use api::CheckStatus::{Pass, Warn};
        let bridge = {
            let nets = self.inner.nets.lock().await;
            nets.map
                .values()
                .find(|n| n.spec.mode == NetMode::Nat)
                .map(|n| n.cfg.bridge.clone())
                .unwrap_or_else(|| "hvbr-default".into())
        };
        let check = |status, detail: String, hint: Option<String>| api::HostCheck {
            name: "firewall".into(),
            status,
            detail,
            hint,
        };
        match host_net::forward_blockers().await {
            Ok(b) if b.is_empty() => check(
                Pass,
                "no other firewall table drops forwarded traffic".into(),
                None,
            ),
            Ok(b) => {
                let which: Vec<String> = b
                    .iter()
                    .map(|x| format!("{} {} {}", x.family, x.table, x.chain))
                    .collect();
                let hint = b
                    .iter()
                    .map(|x| x.advice(&bridge))
                    .collect::<Vec<_>>()
                    .join("; ");
                check(
                    Warn,
                    format!(
                        "forwarded traffic is dropped by {} (NAT networks need it)",
                        which.join(", ")
                    ),
                    Some(hint),
                )
            }
            Err(e) => check(
                Warn,
                format!("cannot read the nftables chains: {e}"),
                Some("apt-get install nftables".into()),
            ),
        }
    }

    /// Each network NIC's leased address, read from its network's lease file.
    pub(crate) fn nic_addresses(&self, spec: &VmSpec) -> Vec<api::NicAddress> {
        let mut out = Vec::new();
        for (i, n) in spec
            .nics
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind == NicKind::Network)
        {
            let (Some(net), Some(mac)) = (n.source.as_deref(), n.mac) else {
                continue;
            };
            let leases = host_net::read_leases(&self.net_dir(net)).unwrap_or_default();
            if let Some(l) = leases.iter().find(|l| l.mac == mac) {
                out.push(api::NicAddress {
                    nic: i,
                    mac: mac.to_string(),
                    network: net.to_string(),
                    ip: l.ip.to_string(),
                });
            }
        }
        out
    }

    /// The tap names a start would use (for `showcmd` of a stopped VM).
    pub(crate) fn predicted_taps(&self, vm: &crate::vm::Vm, spec: &VmSpec) -> Vec<Option<String>> {
        spec.nics
            .iter()
            .enumerate()
            .map(|(i, n)| (n.kind != NicKind::User).then(|| host_net::tap_name(vm.id, i as u32)))
            .collect()
    }

    /// Checks that every network NIC names a defined network and that no MAC is given twice
    /// or used by another VM.
    pub(crate) async fn check_nics(&self, spec: &VmSpec) -> Result<()> {
        for (i, n) in spec.nics.iter().enumerate() {
            let Some(mac) = n.mac else { continue };
            if spec.nics[..i].iter().any(|o| o.mac == Some(mac)) {
                return Err(EngineError::Invalid(format!(
                    "nics[{i}]: MAC {mac} is given twice; leave mac= out to get a fresh one"
                )));
            }
            let other = self.read_vms().values().find_map(|vm| {
                let st = vm.lock();
                (vm.name != spec.name.as_str() && st.spec.nics.iter().any(|o| o.mac == Some(mac)))
                    .then(|| vm.name.clone())
            });
            if let Some(other) = other {
                return Err(EngineError::InUse(format!(
                    "nics[{i}]: MAC {mac} belongs to VM {other}; leave mac= out to get a fresh one"
                )));
            }
        }
        let nets = self.inner.nets.lock().await;
        for (i, n) in spec.nics.iter().enumerate() {
            if n.kind == NicKind::Network {
                let src = n.source.as_deref().unwrap_or_default();
                if !nets.map.contains_key(src) {
                    return Err(EngineError::Invalid(format!("nics[{i}]: network {src:?} does not exist (hv net list shows the networks)")));
                }
            }
        }
        Ok(())
    }

    /// Creates the VM's taps (starting its networks when needed); returns one tap name per
    /// NIC (`None` for user NICs). On error, the taps made so far are removed.
    pub(crate) async fn make_taps(&self, vm_id: i64, spec: &VmSpec) -> Result<Vec<Option<String>>> {
        let mut out: Vec<Option<String>> = Vec::new();
        for (i, n) in spec.nics.iter().enumerate() {
            match self.make_tap(vm_id, i, n).await {
                Ok(t) => out.push(t),
                Err(e) => {
                    remove_taps(&out).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Creates the tap of NIC `i` on its bridge (starting its network when needed); `None`
    /// for a user NIC.
    pub(crate) async fn make_tap(
        &self,
        vm_id: i64,
        i: usize,
        n: &model::NicSpec,
    ) -> Result<Option<String>> {
        let tap = host_net::tap_name(vm_id, i as u32);
        if n.kind == NicKind::User {
            return Ok(None);
        }
        // The VM's QEMU (its own uid) attaches to the tap without CAP_NET_ADMIN.
        let ids = self.qemu_ids(vm_id)?;
        let owner = host_net::TapOwner {
            uid: ids.uid,
            gid: ids.gid,
        };
        match n.kind {
            NicKind::User => return Ok(None),
            NicKind::Bridge => {
                plug_tap(
                    &tap,
                    n.source.as_deref().unwrap_or_default(),
                    owner,
                    n.mac,
                    &[],
                )
                .await?
            }
            NicKind::Network => {
                let name = n.source.clone().unwrap_or_default();
                let mut nets = self.inner.nets.lock().await;
                self.net_start_locked(&mut nets, &name).await?;
                // Held until the guard is loaded, so a reservation change (which updates the
                // guards under this lock) cannot slip in between.
                let net = nets.get_mut(&name)?;
                let reservations = net
                    .cfg
                    .ipv4
                    .as_ref()
                    .map(|v4| v4.reservations.clone())
                    .unwrap_or_default();
                plug_tap(&tap, &net.cfg.bridge, owner, n.mac, &reservations).await?;
            }
        }
        Ok(Some(tap))
    }
}

fn need_nat(spec: &NetworkSpec) -> Result<()> {
    if spec.mode != NetMode::Nat {
        return Err(EngineError::Invalid(format!(
            "network {} is {}; port forwards need a nat network",
            spec.name, spec.mode
        )));
    }
    Ok(())
}

/// The host config of a spec whose subnet is settled (no host checks).
fn cfg_from_spec(spec: &NetworkSpec) -> Result<NetworkConfig> {
    let name = spec.name.as_str();
    let cfg = match spec.mode {
        NetMode::Bridge => NetworkConfig::bridged(name, spec.bridge.as_deref().unwrap_or_default())
            .map_err(|e| EngineError::Invalid(format!("bridge: {e}")))?,
        m => {
            let subnet: Ipv4Cidr = spec
                .subnet
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(invalid)?;
            let mut cfg = NetworkConfig::managed(name, m, subnet).map_err(invalid)?;
            if let Some(ip) = cfg.ipv4.as_mut() {
                if let Some(r) = &spec.dhcp_range {
                    ip.dhcp = Some(r.parse().map_err(invalid)?);
                }
                for r in &spec.reservations {
                    ip.reservations.push(host_net::Reservation {
                        mac: r.mac,
                        ip: r.ip,
                        hostname: r.hostname.clone(),
                    });
                }
                for f in &spec.forwards {
                    if !ip.reservations.iter().any(|r| r.mac == f.mac) {
                        ip.reservations.push(host_net::Reservation {
                            mac: f.mac,
                            ip: f.vm_ip,
                            hostname: None,
                        });
                    }
                }
            }
            for f in &spec.forwards {
                let proto = f.proto.parse().map_err(invalid)?;
                cfg.forwards.push(host_net::PortForward {
                    proto,
                    host_addr: f.host_addr,
                    host_port: f.host_port,
                    vm_ip: f.vm_ip,
                    vm_port: f.vm_port,
                });
            }
            cfg
        }
    };
    cfg.validate().map_err(invalid)?;
    Ok(cfg)
}

/// The anti-spoofing guard of a tap for the NIC with `mac`, given its network's reservations:
/// its own reserved address, or else the ones reserved for others.
fn guard_for(
    tap: &str,
    mac: model::Mac,
    reservations: &[host_net::Reservation],
) -> host_net::Guard {
    let (own, others): (Vec<_>, Vec<_>) = reservations.iter().partition(|r| r.mac == mac);
    host_net::Guard {
        tap: tap.to_string(),
        mac,
        ip: own.first().map(|r| r.ip),
        reserved_for_others: others.iter().map(|r| r.ip).collect(),
    }
}

/// Creates a tap on `bridge` with its anti-spoofing guard; nothing is left when either fails.
async fn plug_tap(
    tap: &str,
    bridge: &str,
    owner: host_net::TapOwner,
    mac: Option<model::Mac>,
    reservations: &[host_net::Reservation],
) -> Result<()> {
    let _ = host_net::remove_link(tap).await;
    host_net::create_tap(tap, Some(bridge), Some(owner)).map_err(host)?;
    if let Some(mac) = mac {
        if let Err(e) = host_net::apply_guard(&guard_for(tap, mac, reservations)).await {
            let _ = host_net::remove_link(tap).await;
            return Err(host(e));
        }
    }
    Ok(())
}

/// Brings the guards of a running network's taps up to date with its reservations. The taps
/// and their MACs are read back from the kernel, so this also covers VMs an earlier hvd
/// started.
async fn refresh_guards(cfg: &NetworkConfig) {
    let reservations = cfg
        .ipv4
        .as_ref()
        .map(|v4| v4.reservations.clone())
        .unwrap_or_default();
    let guards = match host_net::guards_on(&cfg.bridge).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(net = %cfg.name, error = %e, "cannot list the taps' guards");
            return;
        }
    };
    for (tap, mac) in guards {
        if let Err(e) = host_net::replace_guard(&guard_for(&tap, mac, &reservations)).await {
            tracing::warn!(tap, error = %e, "cannot update the tap's guard");
        }
    }
}

/// Removes taps hv made for a VM.
pub(crate) async fn remove_taps(taps: &[Option<String>]) {
    for t in taps.iter().flatten() {
        // The tap and its guard go together (the guard matches the tap by name, so the order
        // does not matter, and doing both at once keeps a VM's end as quick as before).
        let (guard, link) = tokio::join!(host_net::remove_guard(t), host_net::remove_link(t));
        if let Err(e) = guard {
            tracing::warn!(tap = t, error = %e, "cannot remove the tap's guard");
        }
        if let Err(e) = link {
            tracing::warn!(tap = t, error = %e, "cannot remove tap");
        }
    }
}
