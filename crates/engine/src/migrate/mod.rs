//! Live and offline migration between hv hosts.

// Wired into the source orchestration and the incoming session with the protocol.
#[allow(dead_code)]
pub(crate) mod copy;
#[allow(dead_code)]
pub(crate) mod disks;
#[allow(dead_code)]
pub(crate) mod offline;
#[allow(dead_code)]
pub(crate) mod placement;
#[allow(dead_code)]
pub(crate) mod storage;
#[allow(dead_code)]
pub(crate) mod vmfiles;
