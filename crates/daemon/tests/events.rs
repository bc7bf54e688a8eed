//! Issue 13: the numbered event log on a real hvd with real TCG guests: VM states (start,
//! shutdown, crash by SIGKILL), snapshots, networks, volumes and operations arrive in order with
//! increasing ids; resuming with `since` replays exactly what was missed (NDJSON and SSE); a
//! viewer of `web-*` over the TLS listener sees nothing about `db-1`.

use std::io::BufRead;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use api::{Change, CreateSnapshotRequest, CreateVolRequest, Event, EventKind, EventsQuery};
use client::Client;
use model::{NetMode, NetworkSpec, Size, VmState};
use testkit::{NetNs, TestHvd, VmOpts};

const T: Duration = Duration::from_secs(60);

/// The events of one stream, read by a thread.
struct Events(mpsc::Receiver<Event>);

impl Events {
    fn open(c: &Client, q: &EventsQuery) -> Events {
        let mut r = c.events_with(q).expect("events");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                let ev: Event = serde_json::from_str(&line).expect("every line is an Event");
                if tx.send(ev).is_err() {
                    return;
                }
                line.clear();
            }
        });
        Events(rx)
    }

    /// Events up to and including the first that `last` matches.
    fn until(&self, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + T;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .0
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the awaited event never came; got {got:#?}"));
            let done = last(&ev);
            got.push(ev);
            if done {
                return got;
            }
        }
    }
}

fn state_is(ev: &Event, vm: &str, s: VmState) -> bool {
    ev.vm == vm && matches!(&ev.kind, EventKind::StateChanged { state, .. } if *state == s)
}

/// Where the first event `f` matches is in `evs`.
fn pos(evs: &[Event], what: &str, f: impl Fn(&Event) -> bool) -> usize {
    evs.iter()
        .position(f)
        .unwrap_or_else(|| panic!("no {what} event in {evs:#?}"))
}

#[test]
fn start_shutdown_snapshot_crash_and_network_start_arrive_in_order_and_resume_with_since() {
    let ns = NetNs::new("ev").unwrap();
    let h = TestHvd::start_in_netns(env!("CARGO_BIN_EXE_hvd").as_ref(), &ns.name).unwrap();
    let c = h.client();
    let live = Events::open(c, &EventsQuery::default());

    let net = NetworkSpec {
        subnet: Some("10.213.7.0/24".into()),
        ..NetworkSpec::new("evnet".parse().unwrap(), NetMode::Nat)
    };
    c.net_create(&net).unwrap();
    c.net_start("evnet").unwrap();
    c.vol_create(
        "default",
        &CreateVolRequest {
            name: "ev.qcow2".parse().unwrap(),
            size: Some(Size(16 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = h.tiny_spec("ev", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/ev.qcow2".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_ready("ev").unwrap();
    assert_eq!(c.shutdown("ev", 30, false).unwrap().state, VmState::Shutoff);
    c.snapshot_create(
        "ev",
        &CreateSnapshotRequest {
            name: "s1".parse().unwrap(),
            description: None,
            disk_only: false,
        },
    )
    .unwrap();
    c.start("ev", false).unwrap();
    h.wait_ready("ev").unwrap();
    let pid = c.info("ev").unwrap().pid.unwrap();
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    let evs = live.until(|e| state_is(e, "ev", VmState::Crashed));
    for w in evs.windows(2) {
        assert!(w[0].id < w[1].id, "ids increase: {w:#?}");
        assert!(w[0].time_ms <= w[1].time_ms, "times do not go back: {w:#?}");
    }
    let net_started = pos(
        &evs,
        "network started",
        |e| matches!(&e.kind, EventKind::Network { network, change: Change::Started } if network == "evnet"),
    );
    let vol_created = pos(
        &evs,
        "volume created",
        |e| matches!(&e.kind, EventKind::Volume { volume, change: Change::Created, .. } if volume == "ev.qcow2"),
    );
    let running = pos(&evs, "running", |e| state_is(e, "ev", VmState::Running));
    let shutoff = pos(&evs, "shutoff", |e| state_is(e, "ev", VmState::Shutoff));
    let snap = pos(&evs, "snapshot created", |e| {
        e.vm == "ev"
            && matches!(&e.kind, EventKind::Snapshot { snapshot, change: Change::Created } if snapshot == "s1")
    });
    let running2 = shutoff
        + pos(&evs[shutoff..], "running again", |e| {
            state_is(e, "ev", VmState::Running)
        });
    let crashed = evs.len() - 1;
    assert!(
        net_started < vol_created
            && vol_created < running
            && running < shutoff
            && shutoff < snap
            && snap < running2
            && running2 < crashed,
        "out of order: {evs:#?}"
    );
    match &evs[crashed].kind {
        EventKind::StateChanged { reason, .. } => {
            assert!(
                reason.as_deref().unwrap_or("").contains("signal 9"),
                "{reason:?}"
            )
        }
        k => panic!("{k:?}"),
    }
    // Operations: the start of the VM began and ended, and succeeded, about vm/ev.
    let op_events: Vec<&api::OperationInfo> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Operation { operation } if operation.kind == "shutdown" => {
                assert_eq!(e.vm, "ev");
                Some(operation)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        op_events.iter().map(|o| o.status).collect::<Vec<_>>(),
        vec![
            api::OperationStatus::Running,
            api::OperationStatus::Succeeded
        ],
        "{op_events:#?}"
    );

    // A follower that last saw the snapshot event gets exactly what came after it.
    let since = evs[snap].id;
    let resumed = Events::open(
        c,
        &EventsQuery {
            since: Some(since),
            ..Default::default()
        },
    )
    .until(|e| state_is(e, "ev", VmState::Crashed));
    let ids = |v: &[Event]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&resumed), ids(&evs[snap + 1..]));

    // Filters: only this VM's state changes.
    let states = Events::open(
        c,
        &EventsQuery {
            since: Some(0),
            types: Some("state-changed".into()),
            vm: Some("ev".into()),
        },
    )
    .until(|e| state_is(e, "ev", VmState::Crashed));
    assert!(states
        .iter()
        .all(|e| e.vm == "ev" && e.kind.name() == "state-changed"));
    assert!(states.len() >= 4, "{states:#?}");

    // Too old a `since`: a gap record first, then the oldest retained event.
    let mut r = c
        .events_with(&EventsQuery {
            since: Some(1),
            ..Default::default()
        })
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let gap: Event = serde_json::from_str(&line).unwrap();
    let oldest = match gap.kind {
        EventKind::Gap { oldest } => oldest,
        k => panic!("not a gap: {k:?}"),
    };
    line.clear();
    r.read_line(&mut line).unwrap();
    let first: Event = serde_json::from_str(&line).unwrap();
    assert_eq!(first.id, oldest);

    // SSE, resumed by Last-Event-ID, through curl on the Unix socket.
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", "3", "--unix-socket"])
        .arg(&h.socket)
        .args([
            "-H",
            "Accept: text/event-stream",
            "-H",
            &format!("Last-Event-ID: {since}"),
            "http://hvd/v1/events",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let sse_ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|i| i.parse().unwrap())
        .collect();
    assert_eq!(sse_ids, ids(&evs[snap + 1..]), "{text}");
    assert!(
        text.contains("event: state-changed\ndata: {"),
        "SSE records name their kind: {text}"
    );

    // A bad filter is refused with the list of kinds.
    let e = match c.events_with(&EventsQuery {
        types: Some("nope".into()),
        ..Default::default()
    }) {
        Err(e) => e,
        Ok(_) => panic!("an unknown type is refused"),
    };
    assert!(e.to_string().contains("state-changed"), "{e}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn a_viewer_of_web_vms_sees_no_events_about_db_1() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = TestHvd::start_with_args(env!("CARGO_BIN_EXE_hvd").as_ref(), &["--listen", &listen])
        .expect("hvd starts");
    let c = h.client();
    let fingerprint = c.host_cert().expect("cert").fingerprint;
    c.user_add(&api::CreateUserRequest {
        name: "ivy".into(),
        password: None,
    })
    .unwrap();
    c.user_grant(
        "ivy",
        &api::GrantInfo {
            role: "viewer".into(),
            vm: Some("web-*".into()),
        },
    )
    .unwrap();
    let token = c
        .token_create(&api::CreateTokenRequest {
            user: "ivy".into(),
            expires_secs: None,
            description: None,
        })
        .unwrap()
        .token;
    let ivy = Client::https(
        &format!("https://localhost:{port}"),
        &token,
        Some(&fingerprint),
    )
    .unwrap();
    let watching = Events::open(&ivy, &EventsQuery::default());

    for vm in ["db-1", "web-1"] {
        c.create(h.tiny_spec(vm, VmOpts::default()).unwrap(), true)
            .unwrap();
    }
    for vm in ["db-1", "web-1"] {
        c.destroy(vm).unwrap();
    }
    let seen = watching.until(|e| state_is(e, "web-1", VmState::Shutoff));
    assert!(
        seen.iter()
            .all(|e| e.vm == "web-1" && e.object() == "vm/web-1"),
        "ivy sees only web-1: {seen:#?}"
    );
    assert!(seen.iter().any(|e| state_is(e, "web-1", VmState::Running)));
    assert!(seen.iter().any(
        |e| matches!(&e.kind, EventKind::Operation { operation } if operation.kind == "destroy")
    ));
    // Replaying everything retained shows her no more than that, while root sees db-1.
    let replay = Events::open(
        &ivy,
        &EventsQuery {
            since: Some(0),
            ..Default::default()
        },
    )
    .until(|e| state_is(e, "web-1", VmState::Shutoff));
    assert!(replay.iter().all(|e| e.vm == "web-1"), "{replay:#?}");
    let all = Events::open(
        c,
        &EventsQuery {
            since: Some(0),
            ..Default::default()
        },
    )
    .until(|e| state_is(e, "web-1", VmState::Shutoff));
    assert!(all.iter().any(|e| state_is(e, "db-1", VmState::Running)));
    // Audit records are events too, for those who may read the audit log (not ivy).
    assert!(
        all.iter().any(|e| matches!(&e.kind,
            EventKind::Audit { object, result, .. } if object == "vm/db-1" && result == "ok")),
        "{all:#?}"
    );
}
