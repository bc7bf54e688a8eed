//! Test support for hv: builds the test guests from Debian packages, and (later) runs a
//! hermetic `hvd` per test.

pub mod guest;
