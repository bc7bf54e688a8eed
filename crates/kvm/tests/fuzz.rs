//! Issue 11: the RFB client stream filter under random and hostile input: it never panics,
//! the chunking never changes what it does, and what it forwards for a watcher holds no input.

use kvm::rfb::{ClientFilter, Fed, RfbError};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x01";

/// Message-shaped fragments: real messages, truncated ones and garbage.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![3, 1, 0, 0, 0, 0, 4, 0, 3, 0]),
        Just(vec![4, 1, 0, 0, 0, 0, 0, 0x61]),
        Just(vec![5, 0, 0, 10, 0, 20]),
        Just(vec![6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']),
        Just(vec![
            6, 0, 0, 0, 0xff, 0xff, 0xff, 0xf8, 0, 0, 0, 1, 0, 0, 0, 0
        ]),
        Just(vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]),
        Just(vec![255, 1, 0, 2, 3, 2, 0, 0, 0xac, 0x44]),
        Just(vec![2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21]),
        Just(vec![
            251, 0, 4, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0
        ]),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(t, mut v)| {
            v.insert(0, t);
            v
        }),
    ]
}

fn run(stream: &[u8], cuts: &[usize], may_input: bool) -> (Vec<u8>, Fed, Option<RfbError>) {
    let mut f = ClientFilter::new();
    let mut out = Vec::new();
    let mut total = Fed::default();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.push(stream.len());
    for p in points {
        match f.feed(&stream[at..p], may_input, &mut out) {
            Ok(fed) => {
                total.input_passed += fed.input_passed;
                total.input_dropped += fed.input_dropped;
            }
            Err(e) => return (out, total, Some(e)),
        }
        at = p;
    }
    (out, total, None)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chunking_never_matters(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        frags in prop::collection::vec(fragment(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        handshake in any::<bool>(),
    ) {
        let mut stream = if handshake { HANDSHAKE.to_vec() } else { raw.clone() };
        for f in &frags {
            stream.extend_from_slice(f);
        }
        for may in [true, false] {
            let whole = run(&stream, &[], may);
            let split = run(&stream, &cuts, may);
            prop_assert_eq!(&whole.0, &split.0);
            prop_assert_eq!(&whole.2, &split.2);
            if whole.2.is_none() {
                prop_assert_eq!(whole.1, split.1);
            }
            if let Some(e) = &whole.2 {
                prop_assert!(e.to_string().len() <= 123);
            }
        }
    }

    #[test]
    fn watchers_forward_no_input(
        frags in prop::collection::vec(fragment(), 0..16),
    ) {
        let mut stream = HANDSHAKE.to_vec();
        for f in &frags {
            stream.extend_from_slice(f);
        }
        let (out, _, _) = run(&stream, &[], false);
        // What was forwarded parses again cleanly, with no input message in it.
        let (again, fed, err) = run(&out, &[], true);
        prop_assert_eq!(err, None);
        prop_assert_eq!(fed.input_passed, 0);
        prop_assert_eq!(again, out);
    }
}
