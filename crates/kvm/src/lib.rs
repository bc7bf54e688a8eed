//! Pure logic of the browser IP-KVM switch (issue 11), no I/O, no async: key names and text as
//! QEMU key codes (`keys`), the client→server RFB stream filter (`rfb`) and the per-VM
//! shared-control state machine (`control`). hvd feeds them bytes and clock readings and acts
//! on what they answer.

pub mod control;
pub mod keys;
pub mod rfb;
