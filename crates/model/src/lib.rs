//! Validated domain types for hv: VM names, sizes, the VM spec (disks, NICs, graphics, boot
//! order) and the VM lifecycle transition table.
//!
//! Everything here is pure: no I/O, no async. A [`VmSpec`] that passed [`VmSpec::validate`] is
//! internally consistent; checks that need the host (files exist, images probe) live in the
//! engine.

mod cloudinit;
mod firmware;
mod hostpath;
mod lifecycle;
mod names;
mod network;
mod nic;
pub mod resources;
mod size;
mod spec;
mod uuid;

pub use cloudinit::{parse_ssh_keys, CloudInit, SeedFiles, MAX_SEED_FILE};
pub use firmware::{Firmware, OvmfFiles, NVRAM_FILE, OVMF_DIR, TPM_DIR};
pub use hostpath::check_host_path;
pub use lifecycle::{Action, InvalidTransition, VmState};
pub use names::{PoolName, SnapName, VmName, VolName, VolRef};
pub use network::{ForwardSpec, NetMode, NetworkSpec, ReservationSpec};
pub use nic::{Mac, NicSpec};
pub use size::{parse_size, Size, SizeError};
pub use spec::{
    assign_targets, Accel, BootDevice, BootOrder, CacheMode, DiskAio, DiskBus, DiskFormat,
    DiskSpec, GraphicsSpec, KernelBoot, Machine, MachineFamily, NicKind, NicModel, SpecError,
    VmSpec, VncSpec,
};
pub use uuid::{UuidError, VmUuid};
