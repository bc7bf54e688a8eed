//! The host side of hv networking: Linux bridges and taps over netlink, hv's own nftables
//! table per network, one dnsmasq per network, `ip_forward`, and the pure pieces behind them
//! (subnets, validation, names, the nft ruleset and dnsmasq config renderers).
//!
//! Pure: [`Ipv4Cidr`], [`pick_free_subnet`] and [`check_host_clash`]; [`NetworkConfig`] with
//! [`NetworkConfig::validate`] and [`NetworkConfig::check_against`]; names ([`bridge_name`],
//! [`tap_name`], [`table_name`]); [`render_ruleset`] and [`render_config`] (goldens in
//! `tests/data/`, `HV_UPDATE_GOLDEN=1 cargo test -p host-net` rewrites them);
//! [`parse_leases`]; [`parse_forward_blockers`].
//!
//! Host I/O: links ([`create_bridge`], [`create_tap`], [`attach_to_bridge`], [`remove_link`],
//! [`host_ranges`]), sysctls ([`set_ip_forward`], [`set_route_localnet`]), nft
//! ([`apply_ruleset`], [`remove_table`], [`forward_blockers`], per-tap anti-spoofing [`apply_guard`] /
//! [`remove_guard`]), [`Dnsmasq`], and whole networks
//! ([`start_network`], [`update_network`], [`stop_network`], [`network_status`]) built on the
//! [`Undo`] guard. [`bridge_interface`] and [`unbridge_interface`] move a host interface's IPv4
//! addresses and routes onto a new bridge and back, planned as reversible ops ([`plan_bridge`])
//! and rolled back completely when a step fails.
//!
//! Everything acts on the network namespace hvd runs in (netlink sockets are opened per call
//! in the calling thread, `nft` and dnsmasq are started from the process), so the whole stack
//! is tested inside namespaces (`tests/netns/`). Processes are started only through
//! `host-exec`: `nft -f FILE` (the script stays as `firewall.nft` in the network's runtime
//! directory) and dnsmasq.

use std::io;
use std::path::{Path, PathBuf};

mod addr;
mod config;
mod dnsmasq;
mod guard;
mod hostfw;
mod iface_bridge;
mod link;
mod names;
mod netlink;
mod nft;
mod setup;

pub use addr::{check_host_clash, find_clash, pick_free_subnet, Ipv4Cidr, RangeSource, UsedRange};
pub use config::{
    ConfigError, DhcpRange, Ipv4Config, Mode, NetworkConfig, PortForward, Proto, Reservation,
};
pub use dnsmasq::{
    parse_leases, read_leases, render_config, Dnsmasq, Lease, CONF_FILE, LEASES_FILE, LEASE_TIME,
    LOG_FILE, PID_FILE,
};
pub use guard::{
    apply_guard, guard_table, guards_on, parse_guard_mac, remove_guard, render_guard,
    replace_guard, Guard,
};
pub use hostfw::{forward_blockers, parse_forward_blockers, ForwardBlocker};
pub use iface_bridge::{
    bridge_interface, bridge_interface_failing_after, plan_bridge, plan_unbridge,
    unbridge_interface, BridgeChange, HostSnapshot, Op,
};
pub use link::{
    add_address, attach_to_bridge, create_bridge, create_tap, delete_link, host_ranges, ip_forward,
    link_info, list_links, remove_link, route_localnet, set_ip_forward, set_route_localnet,
    TapOwner,
};
pub use names::{
    bridge_mac, bridge_name, check_hostname, check_ifname, check_net_name, hostname_for,
    table_name, tap_name,
};
pub use netlink::{AddrInfo, BridgeInfo, LinkInfo, RouteInfo, RTPROT_KERNEL};
pub use nft::{apply_ruleset, inet_tables, remove_table, render_ruleset, Load, RULESET_FILE};
pub use setup::{
    network_status, remove_network_files, start_network, stop_network, update_network,
    NetworkStatus, RunningNetwork, Undo, UndoStep, DNSMASQ_GRACE,
};

/// A host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Exec(#[from] host_exec::ExecError),
    #[error("netlink: cannot {op}: {error}")]
    Netlink { op: String, error: io::Error },
    #[error("cannot {op} tap {name}: {error}")]
    Tap {
        op: &'static str,
        name: String,
        error: io::Error,
    },
    #[error("cannot {op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot signal process {pid}: {error}")]
    Signal { pid: u32, error: io::Error },
    #[error("{path} cannot go into a generated config: it must be absolute UTF-8 without control characters or '#'")]
    Path { path: PathBuf },
    #[error("interface {name} already exists")]
    Exists { name: String },
    #[error("interface {name} does not exist")]
    NoLink { name: String },
    #[error("{name} is not a bridge; bridge mode needs an existing Linux bridge")]
    NotABridge { name: String },
    #[error("network {net} is in bridge mode: hv runs no dnsmasq for it")]
    Unmanaged { net: String },
    #[error("dnsmasq for network {net}: {reason}")]
    Dnsmasq { net: String, reason: String },
    #[error("left behind: {what}")]
    Leftover { what: String },
}

/// Writes a generated runtime file via a temporary file and a rename, so readers (dnsmasq on
/// SIGHUP, `nft -f`) never see half a file. Not fsynced: these files are regenerated on start.
pub(crate) fn write_file(path: &Path, data: &[u8]) -> Result<(), NetError> {
    let io = |op, error| NetError::Io {
        op,
        path: path.into(),
        error,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, data).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replace", e))
}
