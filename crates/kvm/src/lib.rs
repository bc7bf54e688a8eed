//! The browser IP-KVM switch, pure parts: the client→server RFB stream filter (`rfb`) and the
//! per-VM shared-control state machine (`control`). No I/O, no async: hvd feeds them bytes
//! and clock readings and acts on what they answer.

pub mod control;
pub mod rfb;
