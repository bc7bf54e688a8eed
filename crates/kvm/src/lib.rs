//! Pure logic of the browser IP-KVM switch (issue 11), no I/O: key names and text as QEMU
//! key codes (`keys`).

pub mod keys;
