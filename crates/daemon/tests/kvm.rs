//! Issue 11: the browser IP-KVM switch's shared control, against a real hvd (TLS listener,
//! users and tokens made through its API) and a real TCG guest. Users talk RFB through hvd's
//! `/vnc` WebSocket; whether their keys reach the guest is proven by its kernel: Alt+SysRq+H
//! prints the SysRq help on the serial console, Alt+SysRq+5 "Loglevel set to 5".

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use api::{ConsoleKind, ControlAction, ErrorCode, Event, EventKind};
use client::{Client, ConsoleStream};
use testkit::{TestHvd, VmOpts};
use tungstenite::{Message, WebSocket};

const VM: &str = "kvm-1";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Site {
    h: TestHvd,
    base: String,
    fingerprint: String,
}

/// hvd with a TLS listener (and `extra` arguments) and a running tiny guest.
fn site(extra: &[&str]) -> Site {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", &listen];
    args.extend_from_slice(extra);
    let h =
        TestHvd::start_with_args(env!("CARGO_BIN_EXE_hvd").as_ref(), &args).expect("hvd starts");
    let c = h.client();
    c.create(h.tiny_spec(VM, VmOpts::default()).expect("spec"), true)
        .expect("start");
    h.wait_ready(VM).expect("ready");
    let fingerprint = c.host_cert().expect("cert").fingerprint;
    Site {
        base: format!("https://localhost:{port}"),
        fingerprint,
        h,
    }
}

impl Site {
    /// A user with one role on all VMs, and a client holding their token.
    fn user(&self, name: &str, role: &str) -> Client {
        let c = self.h.client();
        c.user_add(&api::CreateUserRequest {
            name: name.into(),
            password: None,
        })
        .expect("user add");
        c.user_grant(
            name,
            &api::GrantInfo {
                role: role.into(),
                vm: None,
            },
        )
        .expect("grant");
        let token = c
            .token_create(&api::CreateTokenRequest {
                user: name.into(),
                expires_secs: None,
                description: Some("kvm test".into()),
            })
            .expect("token")
            .token;
        Client::https(&self.base, &token, Some(&self.fingerprint)).expect("client")
    }

    fn audit_actions(&self) -> Vec<String> {
        self.h
            .client()
            .audit(&api::AuditQuery {
                vm: Some(VM.into()),
                ..Default::default()
            })
            .expect("audit")
            .into_iter()
            .map(|a| format!("{} {}", a.principal, a.action))
            .collect()
    }
}

/// The event stream, read by a thread.
struct Events(mpsc::Receiver<Event>);

impl Events {
    fn open(c: &Client) -> Events {
        let mut r = c.events().expect("events");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                line.clear();
            }
        });
        Events(rx)
    }

    /// Waits for a control event of the VM whose holder is `holder` and that `also` accepts.
    fn control(&self, holder: Option<&str>, also: impl Fn(&EventKind) -> bool) -> EventKind {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(ev) => {
                    if let EventKind::Control { holder: h, .. } = &ev.kind {
                        if ev.vm == VM && h.as_deref() == holder && also(&ev.kind) {
                            return ev.kind;
                        }
                    }
                    seen.push(ev);
                }
                Err(_) => break,
            }
        }
        panic!("no control event with holder {holder:?}; saw {seen:#?}");
    }
}

fn watchers(k: &EventKind) -> Vec<(String, ConsoleKind)> {
    match k {
        EventKind::Control { watchers, .. } => {
            watchers.iter().map(|w| (w.user.clone(), w.kind)).collect()
        }
        _ => Vec::new(),
    }
}

/// An RFB 3.8 client on hvd's `/vnc` WebSocket.
struct Rfb {
    ws: WebSocket<ConsoleStream>,
    buf: Vec<u8>,
    width: usize,
    height: usize,
    bytes_per_pixel: usize,
}

const ALT: u32 = 0xffe9;
const SYSRQ: u32 = 0xff15;

impl Rfb {
    /// Opens the console and shakes hands; asks for an exclusive session (hvd makes it shared).
    fn open(c: &Client) -> Rfb {
        let ws = c.vnc(VM).expect("vnc opens");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut r = Rfb {
            ws,
            buf: Vec::new(),
            width: 0,
            height: 0,
            bytes_per_pixel: 4,
        };
        assert_eq!(r.read(12), b"RFB 003.008\n");
        r.send(b"RFB 003.008\n");
        let n = r.read(1)[0] as usize;
        let types = r.read(n);
        assert!(types.contains(&1), "security None is offered: {types:?}");
        r.send(&[1]);
        assert_eq!(r.read(4), [0, 0, 0, 0], "security result ok");
        r.send(&[0]); // exclusive: hvd forces shared
        let init = r.read(24);
        r.width = u16::from_be_bytes([init[0], init[1]]) as usize;
        r.height = u16::from_be_bytes([init[2], init[3]]) as usize;
        r.bytes_per_pixel = (init[4] as usize).div_ceil(8);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        r.read(name_len);
        r
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.buf.extend_from_slice(&b),
                Ok(Message::Close(f)) => panic!("hvd closed the RFB session: {f:?}"),
                Ok(_) => {}
                Err(e) => panic!("RFB read: {e}"),
            }
        }
        self.buf.drain(..n).collect()
    }

    fn send(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(b.to_vec().into()))
            .expect("send");
    }

    /// Presses Alt+SysRq+`key` and lets all go.
    fn sysrq(&mut self, key: u32) {
        let mut m = Vec::new();
        for (sym, down) in [
            (ALT, true),
            (SYSRQ, true),
            (key, true),
            (key, false),
            (SYSRQ, false),
            (ALT, false),
        ] {
            m.extend_from_slice(&[4, u8::from(down), 0, 0]);
            m.extend_from_slice(&sym.to_be_bytes());
        }
        // And a pointer click, dropped or passed the same way.
        m.extend_from_slice(&[5, 1, 0, 1, 0, 1, 5, 0, 0, 1, 0, 1]);
        self.send(&m);
    }

    /// Asks for a whole frame and reads it: QEMU answers after every message sent before, so
    /// whatever of them hvd passed on has reached the VM's keyboard by now.
    fn sync(&mut self) {
        let mut m = vec![3, 0, 0, 0, 0, 0];
        m.extend_from_slice(&(self.width as u16).to_be_bytes());
        m.extend_from_slice(&(self.height as u16).to_be_bytes());
        self.send(&m);
        loop {
            match self.read(1)[0] {
                0 => {
                    let h = self.read(3);
                    let rects = u16::from_be_bytes([h[1], h[2]]);
                    for _ in 0..rects {
                        let r = self.read(12);
                        let w = u16::from_be_bytes([r[4], r[5]]) as usize;
                        let hh = u16::from_be_bytes([r[6], r[7]]) as usize;
                        let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                        assert_eq!(enc, 0, "raw encoding (none other was offered)");
                        self.read(w * hh * self.bytes_per_pixel);
                    }
                    return;
                }
                2 => {}
                3 => {
                    let h = self.read(7);
                    let n = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
                    self.read(n);
                }
                t => panic!("unexpected RFB server message {t}"),
            }
        }
    }

    fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.ws.read().is_ok() {}
    }
}

fn count(h: &TestHvd, needle: &str) -> usize {
    h.console_text(VM).matches(needle).count()
}

fn api_code(e: client::ClientError) -> Option<ErrorCode> {
    e.code()
}

/// Issue 11: operator A gets control by opening the console; viewer B watches the same shared
/// screen but their keys and pointer are dropped; request, give, admin take, release and the
/// release when the holder disconnects, each as an event and in the audit log.
#[test]
fn only_the_holder_of_control_types_on_the_shared_screen() {
    let s = site(&[]);
    let root = s.h.client();
    let events = Events::open(root);
    let alice = s.user("alice", "operator");
    let bob = s.user("bob", "viewer");
    let carol = s.user("carol", "operator");

    // Nobody holds control yet.
    let st = alice.control(VM).expect("control");
    assert_eq!(st.holder, None);
    assert!(st.you.can_control && st.you.can_take && !st.you.holds);
    assert_eq!(st.idle_timeout_s, 900);

    let mut a = Rfb::open(&alice);
    events.control(Some("alice"), |_| true);
    let mut b = Rfb::open(&bob);
    let k = events.control(Some("alice"), |k| watchers(k).len() == 2);
    assert!(watchers(&k).contains(&("bob".into(), ConsoleKind::Vnc)));
    let st = bob.control(VM).expect("control");
    assert_eq!(st.holder.as_deref(), Some("alice"));
    assert!(!st.you.can_control && !st.you.can_take && !st.you.holds);
    assert!(st.holder_since_ms.is_some());

    // Bob's keys are dropped: what he typed before Alice's keys never shows.
    assert_eq!(count(&s.h, "HELP :"), 0);
    b.sysrq(0x68); // h
    b.sync();
    a.sysrq(0x35); // 5
    s.h.wait_console(VM, "Loglevel set to 5", Duration::from_secs(60))
        .expect("Alice's keys reach the guest");
    assert_eq!(count(&s.h, "HELP :"), 0, "Bob's keys reached the guest");
    // ... and the same keys from Alice do.
    a.sysrq(0x68);
    s.h.wait_console(VM, "HELP :", Duration::from_secs(60))
        .expect("SysRq help");

    // A viewer may not change control.
    let e = bob.control_act(VM, ControlAction::Take, None).unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::Forbidden));
    // Carol, an operator, may not take it from Alice, but may ask.
    let mut cr = Rfb::open(&carol);
    let e = carol
        .control_act(VM, ControlAction::Take, None)
        .unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::Forbidden));
    let st = carol
        .control_act(VM, ControlAction::Request, None)
        .expect("request");
    assert_eq!(st.requests, ["carol"]);
    events.control(
        Some("alice"),
        |k| matches!(k, EventKind::Control { requests, .. } if requests == &["carol".to_string()]),
    );
    // Alice cannot give control to the viewer, but to Carol.
    let e = alice
        .control_act(VM, ControlAction::Give, Some("bob"))
        .unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::InvalidArgument));
    let st = alice
        .control_act(VM, ControlAction::Give, Some("carol"))
        .expect("give");
    assert_eq!(st.holder.as_deref(), Some("carol"));
    assert!(st.requests.is_empty());
    events.control(Some("carol"), |_| true);
    // Now Alice's keys are dropped and Carol's pass.
    let helps = count(&s.h, "HELP :");
    a.sysrq(0x68);
    a.sync();
    cr.sysrq(0x35);
    cr.sync();
    s.h.wait_console(
        VM,
        "(?s)Loglevel set to 5.*Loglevel set to 5",
        Duration::from_secs(60),
    )
    .expect("Carol's keys reach the guest");
    assert_eq!(
        count(&s.h, "HELP :"),
        helps,
        "Alice's keys reached the guest"
    );

    // `POST .../keys` follows control too: refused for Alice (409), passed for Carol.
    let keys = |k: &str| api::KeysRequest {
        keys: Some(vec![k.into()]),
        text: None,
    };
    let e = alice.send_keys(VM, &keys("alt-sysrq-h")).unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::InvalidState));
    let e = bob.send_keys(VM, &keys("alt-sysrq-h")).unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::Forbidden));
    carol
        .send_keys(VM, &keys("alt-sysrq-6"))
        .expect("the holder's keys");
    s.h.wait_console(VM, "Loglevel set to 6", Duration::from_secs(60))
        .expect("Carol's keys reach the guest");
    assert_eq!(
        count(&s.h, "HELP :"),
        helps,
        "refused keys reached the guest"
    );

    // An admin (root on the socket) takes control from anyone, and releases it.
    let st = root
        .control_act(VM, ControlAction::Take, None)
        .expect("admin take");
    assert_eq!(st.holder.as_deref(), Some("uid:0"));
    events.control(Some("uid:0"), |_| true);
    let st = root
        .control_act(VM, ControlAction::Release, None)
        .expect("release");
    assert_eq!(st.holder, None);
    events.control(None, |_| true);
    let e = carol
        .control_act(VM, ControlAction::Release, None)
        .unwrap_err();
    assert_eq!(api_code(e), Some(ErrorCode::InvalidState));
    // Free control is Carol's for the asking; closing her last console releases it.
    carol
        .control_act(VM, ControlAction::Take, None)
        .expect("take free control");
    events.control(Some("carol"), |_| true);
    cr.close();
    let k = events.control(None, |k| watchers(k).len() == 2);
    assert!(!watchers(&k).iter().any(|(u, _)| u == "carol"));

    // The switch's overview: every VM the caller sees.
    let all = bob.consoles().expect("consoles");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].vm, VM);
    assert_eq!(all[0].watchers.len(), 2);

    a.close();
    b.close();
    events.control(None, |k| watchers(k).is_empty());

    let audit = s.audit_actions();
    for want in [
        "alice control take by alice",
        "carol control request by carol",
        "alice control give by alice to carol",
        "uid:0 control admin take by uid:0 from carol",
        "uid:0 control release by uid:0",
        "carol control take by carol",
        "carol control disconnect release of carol",
        "bob VM.Console vnc attach",
        "bob VM.Console vnc detach",
    ] {
        assert!(
            audit.iter().any(|a| a.starts_with(want)),
            "{want:?} is not in the audit log: {audit:#?}"
        );
    }
}

/// Issue 11: the serial console is shared the same way: a viewer watches it (their input is
/// dropped, and they are told), the holder types.
#[test]
fn serial_console_input_only_from_the_holder() {
    let s = site(&[]);
    let root = s.h.client();
    let events = Events::open(root);
    let vic = s.user("vic", "viewer");
    let olga = s.user("olga", "operator");

    let mut v = vic
        .console(VM)
        .expect("a viewer may watch the serial console");
    v.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    events.control(None, |k| {
        watchers(k) == [("vic".into(), ConsoleKind::Serial)]
    });
    v.send(Message::Binary(b"echo VIC-$((6*7))\n".to_vec().into()))
        .expect("send");
    // Told that the input was dropped.
    let mut told = String::new();
    while !told.contains("input dropped") {
        match v.read().expect("read") {
            Message::Text(t) => told.push_str(&t),
            Message::Binary(b) => told.push_str(&String::from_utf8_lossy(&b)),
            _ => {}
        }
    }
    let mut o = olga.console(VM).expect("operator console");
    events.control(Some("olga"), |_| true);
    o.send(Message::Binary(b"echo OLGA-$((6*7))\n".to_vec().into()))
        .expect("send");
    s.h.wait_console(VM, "OLGA-42", Duration::from_secs(60))
        .expect("the holder's input reaches the guest");
    assert!(!s.h.console_text(VM).contains("VIC-42"));
    let _ = o.close(None);
    events.control(None, |_| true);
    let _ = v.close(None);
}

/// Issue 11: control is released after `--console-idle` seconds without input from the holder,
/// as an event and in the audit log (by hvd).
#[test]
fn an_idle_holder_loses_control() {
    let s = site(&["--console-idle", "2"]);
    let root = s.h.client();
    let events = Events::open(root);
    let ida = s.user("ida", "operator");
    let r = Rfb::open(&ida);
    events.control(Some("ida"), |_| true);
    assert_eq!(ida.control(VM).expect("control").idle_timeout_s, 2);
    // No input: hvd releases control by itself.
    events.control(None, |k| watchers(k).len() == 1);
    assert_eq!(ida.control(VM).expect("control").holder, None);
    assert!(s
        .audit_actions()
        .iter()
        .any(|a| a.starts_with("hvd control idle release of ida")));
    r.close();
}

/// Issue 11: hostile RFB from a client closes its session with a reason; others go on.
#[test]
fn malformed_rfb_closes_the_session_with_a_reason() {
    let s = site(&[]);
    let eve = s.user("eve", "operator");
    let mut good = Rfb::open(s.h.client());
    let mut r = Rfb::open(&eve);
    r.send(&[7, 0, 0, 0]);
    let reason = loop {
        match r.ws.read() {
            Ok(Message::Close(Some(f))) => break f.reason.to_string(),
            Ok(Message::Close(None)) => break String::new(),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(
        reason.contains("unknown RFB client message type 7"),
        "{reason:?}"
    );
    // The other session goes on.
    good.sync();
    good.close();
}
