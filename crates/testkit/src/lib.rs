//! Test support for hv: builds the test guests from Debian packages ([`guest`]), runs a
//! hermetic `hvd` per test with its own state dir and socket ([`TestHvd`]), and drives guests
//! through the API (console typing, deadline waits). Everything a test starts is stopped by
//! PID when the test ends, also when it fails, and the logs are dumped on failure.

pub mod confinement;
pub mod debian;
pub mod efi;
pub mod golden;
pub mod guest;
mod hvd;
pub mod iso;
pub mod media;
mod netns;
pub mod package;
pub mod pair;

pub use hvd::{TestHvd, VmOpts};
pub use netns::NetNs;
