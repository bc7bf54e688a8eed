//! Issue 12: live migration between two hvds, each in its own network namespace and state dir,
//! joined by a veth, talking over TLS with tokens. Every test boots real guests under TCG.

use model::VmState;
use testkit::pair::{HostPair, PairOpts};
use testkit::VmOpts;

const HVD: &str = env!("CARGO_BIN_EXE_hvd");

/// The harness itself: two hvds that reach each other over TLS with the admin token, a shared
/// pool on both, and a counter guest.
#[test]
fn pair_harness_reaches_the_target_and_counts() {
    let p = HostPair::with(HVD.as_ref(), PairOpts { shared_pool: true }).expect("pair");
    // The test runs in the host's namespace, which has no route to the veth: reach the
    // target's TLS listener from the source's namespace.
    let out = p
        .source_ns
        .run(&[
            "curl",
            "-sk",
            "-H",
            &format!("Authorization: Bearer {}", p.peer.token),
            &format!("{}/v1/vms", p.peer.url),
        ])
        .expect("curl in the source namespace");
    assert!(out.contains("\"vms\""), "{out}");
    assert!(p.shared_dir.as_ref().expect("shared").is_dir());
    let spec = p.source.tiny_spec("count", VmOpts::default()).unwrap();
    p.source.client().create(spec, true).unwrap();
    p.source.wait_ready("count").unwrap();
    HostPair::start_counter(&p.source, "count").unwrap();
    let ticks = testkit::pair::ticks(&p.source.console_text("count"));
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert_eq!(
        p.source.client().info("count").unwrap().state,
        VmState::Running
    );
}
