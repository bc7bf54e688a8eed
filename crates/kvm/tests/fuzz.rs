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

/// One step of a random console session.
#[derive(Debug, Clone)]
enum Step {
    Attach { user: u8, id: u8 },
    Detach { id: u8 },
    Input { user: u8 },
    Act { user: u8, req: u8, to: u8 },
    Tick { advance_ms: u16 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4, 0u8..8).prop_map(|(user, id)| Step::Attach { user, id }),
        (0u8..8).prop_map(|id| Step::Detach { id }),
        (0u8..4).prop_map(|user| Step::Input { user }),
        (0u8..4, 0u8..4, 0u8..4).prop_map(|(user, req, to)| Step::Act { user, req, to }),
        any::<u16>().prop_map(|advance_ms| Step::Tick { advance_ms }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Users 0 and 1 may type, 2 only watches, 3 is an admin. Whatever happens: a holder may
    /// type, requests never name the holder nor repeat, only the holder's input passes, and
    /// every change of holder is reported.
    #[test]
    fn control_invariants_hold(steps in prop::collection::vec(step(), 0..64)) {
        use kvm::control::{Asker, Change, ConnKind, Request, Seat, Watcher};
        let name = |u: u8| format!("u{u}");
        let may_input = |u: u8| u != 2;
        let mut seat = Seat::default();
        let mut now = 0u64;
        let mut open: Vec<u8> = Vec::new();
        for s in steps {
            let before = seat.holder().map(|h| h.user.clone());
            let mut changes = Vec::new();
            match s {
                Step::Attach { user, id } => {
                    if open.contains(&id) { continue; }
                    open.push(id);
                    changes = seat.attach(Watcher {
                        id: u64::from(id), user: name(user), kind: ConnKind::Vnc,
                        since_ms: now, may_input: may_input(user),
                    }, now);
                }
                Step::Detach { id } => {
                    open.retain(|i| *i != id);
                    changes = seat.detach(u64::from(id));
                }
                Step::Input { user } => {
                    let passed = seat.input(&name(user), now);
                    prop_assert_eq!(passed, before.as_deref() == Some(name(user).as_str()));
                }
                Step::Act { user, req, to } => {
                    let req = match req {
                        0 => Request::Take,
                        1 => Request::Request,
                        2 => Request::Release,
                        _ => Request::Give { to: name(to) },
                    };
                    let who = Asker { user: &name(user), may_input: may_input(user), admin: user == 3 };
                    let snapshot = seat.clone();
                    match seat.act(who, &req, now) {
                        Ok(c) => changes = c,
                        Err(_) => prop_assert_eq!(&seat, &snapshot, "an error changed nothing"),
                    }
                }
                Step::Tick { advance_ms } => {
                    now += u64::from(advance_ms);
                    changes.extend(seat.tick(now, 10_000));
                }
            }
            let after = seat.holder().map(|h| h.user.clone());
            if let Some(h) = &after {
                prop_assert!(h != "u2", "a watcher who may not type holds control");
                prop_assert!(!seat.requests().contains(h), "the holder is among the requests");
            }
            let mut r = seat.requests().to_vec();
            r.sort();
            r.dedup();
            prop_assert_eq!(r.len(), seat.requests().len(), "a request repeats");
            if before != after {
                prop_assert!(
                    changes.iter().any(|c| matches!(c,
                        Change::Took { .. } | Change::AdminTook { .. } | Change::Gave { .. } | Change::Released { .. })),
                    "the holder changed without a change: {:?} -> {:?}", before, after
                );
            }
        }
    }
}
