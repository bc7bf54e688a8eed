//! The client→server half of RFB 3.8 (RFC 6143), as hvd relays it from a browser to QEMU's VNC
//! server: a filter that reads the stream message by message, whatever the chunking, and
//! forwards each whole message or drops it.
//!
//! - The handshake passes if it is RFB 3.8 with security type None (hvd authenticated the
//!   caller); ClientInit's shared flag is forced to 1, so no client can disconnect the others.
//! - SetPixelFormat, SetEncodings, FramebufferUpdateRequest and QEMU's audio messages pass.
//! - Input (KeyEvent, PointerEvent, ClientCutText incl. the extended clipboard, QEMU's extended
//!   key event, and SetDesktopSize, which resizes everyone's screen) passes only when the
//!   caller may type now (they hold control); else it is dropped whole.
//! - Anything else (unknown types, wrong lengths, oversized payloads) is an [`RfbError`] whose
//!   text is short enough to be a WebSocket close reason (at most 123 bytes).

/// The only protocol version hvd relays.
pub const VERSION_3_8: &[u8; 12] = b"RFB 003.008\n";
/// RFB security type None.
pub const SECURITY_NONE: u8 = 1;
/// The largest ClientCutText payload (also what QEMU accepts): 1 MiB.
pub const CUT_TEXT_MAX: u32 = 1 << 20;

/// Why the stream was refused. Each message fits in a WebSocket close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    #[error("client RFB version {0:?}... is not 3.8 (RFB 003.008)")]
    Version(String),
    #[error("client chose RFB security type {0}; only None (1) is offered")]
    Security(u8),
    #[error("unknown RFB client message type {0}")]
    UnknownMessage(u8),
    #[error("unknown QEMU RFB client message subtype {0}")]
    UnknownQemuMessage(u8),
    #[error("unknown QEMU RFB audio operation {0}")]
    UnknownAudioOp(u16),
    #[error("RFB cut text of {0} bytes is over the 1 MiB limit")]
    CutTextTooLong(u64),
    #[error("RFB extended clipboard message of {0} bytes is shorter than its 4-byte header")]
    ExtendedClipboardTooShort(u32),
}

/// What a whole message is, for the caller's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Version, security choice, ClientInit.
    Handshake,
    /// Pixel format, encodings, update requests, audio control: always passes.
    Display,
    /// Keys, pointer, clipboard: passes only for the holder of control.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    Security,
    ClientInit,
    Messages,
}

/// What one [`ClientFilter::feed`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fed {
    /// Input messages forwarded (activity of the holder).
    pub input_passed: usize,
    /// Input messages dropped (the caller may not type).
    pub input_dropped: usize,
}

/// The client→server stream of one RFB connection. Holds at most one incomplete message
/// (bounded by [`CUT_TEXT_MAX`] plus one chunk).
#[derive(Debug)]
pub struct ClientFilter {
    phase: Phase,
    buf: Vec<u8>,
    /// Set after an error: the stream is dead.
    failed: Option<RfbError>,
}

impl Default for ClientFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientFilter {
    pub fn new() -> ClientFilter {
        ClientFilter {
            phase: Phase::Version,
            buf: Vec::new(),
            failed: None,
        }
    }

    /// Whether the handshake is over (the client is in the message phase).
    pub fn handshake_done(&self) -> bool {
        self.phase == Phase::Messages
    }

    /// Reads `data` (any chunk of the stream); appends what may reach the server to `out`.
    /// Input messages pass only when `may_input`. After an error the stream stays refused.
    pub fn feed(
        &mut self,
        data: &[u8],
        may_input: bool,
        out: &mut Vec<u8>,
    ) -> Result<Fed, RfbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let mut fed = Fed::default();
        let mut pos = 0;
        let result = loop {
            let rest = &self.buf[pos..];
            let need = match self.next_len(rest) {
                Ok(Some(n)) => n,
                Ok(None) => break Ok(fed),
                Err(e) => break Err(e),
            };
            if rest.len() < need {
                break Ok(fed);
            }
            let msg = &rest[..need];
            match self.phase {
                Phase::Version => {
                    self.phase = Phase::Security;
                    out.extend_from_slice(msg);
                }
                Phase::Security => {
                    self.phase = Phase::ClientInit;
                    out.extend_from_slice(msg);
                }
                Phase::ClientInit => {
                    // Shared: this client never disconnects the others.
                    self.phase = Phase::Messages;
                    out.push(1);
                }
                Phase::Messages => match message_kind(msg) {
                    Kind::Input if may_input => {
                        out.extend_from_slice(msg);
                        fed.input_passed += 1;
                    }
                    Kind::Input => fed.input_dropped += 1,
                    Kind::Handshake | Kind::Display => out.extend_from_slice(msg),
                },
            }
            pos += need;
        };
        self.buf.drain(..pos);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        result
    }

    /// The length of the message at the start of `b`, `None` while its header is incomplete.
    /// Checks everything that can be checked from the header.
    fn next_len(&self, b: &[u8]) -> Result<Option<usize>, RfbError> {
        match self.phase {
            Phase::Version => {
                // Refuse at the first byte that differs, so the answer does not depend on how
                // the stream was cut (and a client that sends junk is not kept waiting).
                let n = b.len().min(12);
                if let Some(i) = (0..n).find(|&i| b[i] != VERSION_3_8[i]) {
                    return Err(RfbError::Version(printable(&b[..=i])));
                }
                Ok((n == 12).then_some(12))
            }
            Phase::Security => match b.first() {
                None => Ok(None),
                Some(&SECURITY_NONE) => Ok(Some(1)),
                Some(&t) => Err(RfbError::Security(t)),
            },
            Phase::ClientInit => Ok((!b.is_empty()).then_some(1)),
            Phase::Messages => message_len(b),
        }
    }
}

/// The kind of the message whose type byte is `t` (known types only).
fn kind_of(t: u8) -> Kind {
    match t {
        4..=6 => Kind::Input,
        _ => Kind::Display,
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The length of the client message at the start of `b` (type byte first).
fn message_len(b: &[u8]) -> Result<Option<usize>, RfbError> {
    let Some(&t) = b.first() else {
        return Ok(None);
    };
    let fixed = |n: usize| Ok(Some(n));
    match t {
        // SetPixelFormat: type, 3 padding, 16-byte pixel format.
        0 => fixed(20),
        // SetEncodings: type, padding, u16 count, count × s32.
        2 => {
            if b.len() < 4 {
                return Ok(None);
            }
            fixed(4 + 4 * usize::from(be16(&b[2..4])))
        }
        // FramebufferUpdateRequest.
        3 => fixed(10),
        // KeyEvent.
        4 => fixed(8),
        // PointerEvent.
        5 => fixed(6),
        // ClientCutText: type, 3 padding, s32 length; negative = extended clipboard.
        6 => {
            if b.len() < 8 {
                return Ok(None);
            }
            let len = be32(&b[4..8]) as i32;
            let n = len.unsigned_abs();
            if n > CUT_TEXT_MAX {
                return Err(RfbError::CutTextTooLong(u64::from(n)));
            }
            if len < 0 && n < 4 {
                return Err(RfbError::ExtendedClipboardTooShort(n));
            }
            fixed(8 + n as usize)
        }
        // SetDesktopSize: type, padding, u16 width, u16 height, u8 screens, padding, then
        // 16 bytes per screen. It resizes everyone's screen, so only the holder may.
        251 => {
            if b.len() < 8 {
                return Ok(None);
            }
            fixed(8 + 16 * usize::from(b[6]))
        }
        // QEMU's client messages: a subtype byte.
        255 => match b.get(1) {
            None => Ok(None),
            // Extended key event: type, subtype, u16 down, u32 keysym, u32 keycode.
            Some(0) => fixed(12),
            // Audio: type, subtype, u16 operation (2 = set format: u8, u8, u32).
            Some(1) => {
                if b.len() < 4 {
                    return Ok(None);
                }
                match be16(&b[2..4]) {
                    0 | 1 => fixed(4),
                    2 => fixed(10),
                    op => Err(RfbError::UnknownAudioOp(op)),
                }
            }
            Some(&s) => Err(RfbError::UnknownQemuMessage(s)),
        },
        t => Err(RfbError::UnknownMessage(t)),
    }
}

/// The kind of a whole message in the message phase.
pub fn message_kind(msg: &[u8]) -> Kind {
    match msg {
        [255, 0, ..] | [251, ..] => Kind::Input,
        [t, ..] => kind_of(*t),
        [] => Kind::Display,
    }
}

/// A short, printable rendering of hostile bytes for an error message.
fn printable(b: &[u8]) -> String {
    b.iter()
        .take(12)
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x00";

    fn pixel_format() -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        m
    }
    fn encodings(n: u16) -> Vec<u8> {
        let mut m = vec![2, 0];
        m.extend_from_slice(&n.to_be_bytes());
        for i in 0..n {
            m.extend_from_slice(&(i32::from(i) - 5).to_be_bytes());
        }
        m
    }
    fn update_request() -> Vec<u8> {
        vec![3, 1, 0, 0, 0, 0, 4, 0, 3, 0]
    }
    fn key(down: bool, sym: u32) -> Vec<u8> {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&sym.to_be_bytes());
        m
    }
    fn pointer(buttons: u8) -> Vec<u8> {
        vec![5, buttons, 0, 10, 0, 20]
    }
    fn cut(len: i32, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }
    fn qemu_key() -> Vec<u8> {
        vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]
    }
    fn desktop_size(screens: u8) -> Vec<u8> {
        let mut m = vec![251, 0, 4, 0, 3, 0, screens, 0];
        for i in 0..screens {
            m.extend_from_slice(&[0, 0, 0, i, 0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0]);
        }
        m
    }
    fn audio(op: u16) -> Vec<u8> {
        let mut m = vec![255, 1];
        m.extend_from_slice(&op.to_be_bytes());
        if op == 2 {
            m.extend_from_slice(&[3, 2, 0, 0, 0xac, 0x44]);
        }
        m
    }

    /// Feeds `chunks` in order; the output and the summed counts, or the first error.
    fn check(chunks: &[&[u8]], may_input: bool) -> Result<(Vec<u8>, Fed), (Vec<u8>, RfbError)> {
        let mut f = ClientFilter::new();
        let mut out = Vec::new();
        let mut total = Fed::default();
        for c in chunks {
            match f.feed(c, may_input, &mut out) {
                Ok(fed) => {
                    total.input_passed += fed.input_passed;
                    total.input_dropped += fed.input_dropped;
                }
                Err(e) => return Err((out, e)),
            }
        }
        Ok((out, total))
    }

    fn session() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        // (stream, what passes for the holder, what passes for a watcher)
        let display = [
            pixel_format(),
            encodings(7),
            update_request(),
            audio(0),
            audio(2),
        ];
        let input = [
            key(true, 0x61),
            key(false, 0x61),
            pointer(0),
            pointer(1),
            cut(3, b"abc"),
            cut(-8, &[0, 0, 0, 1, 0, 0, 0, 0]),
            qemu_key(),
            desktop_size(2),
        ];
        let mut stream = HANDSHAKE.to_vec();
        let mut holder = b"RFB 003.008\n\x01\x01".to_vec();
        let mut watcher = holder.clone();
        for (i, d) in display.iter().enumerate() {
            stream.extend_from_slice(d);
            holder.extend_from_slice(d);
            watcher.extend_from_slice(d);
            let k = &input[i % input.len()];
            stream.extend_from_slice(k);
            holder.extend_from_slice(k);
        }
        for k in &input[display.len()..] {
            stream.extend_from_slice(k);
            holder.extend_from_slice(k);
        }
        (stream, holder, watcher)
    }

    #[test]
    fn holder_input_passes_and_shared_flag_is_forced() {
        let (stream, holder, _) = session();
        let (out, fed) = check(&[&stream], true).unwrap();
        assert_eq!(out, holder);
        assert_eq!(
            fed,
            Fed {
                input_passed: 8,
                input_dropped: 0
            }
        );
    }

    #[test]
    fn watcher_input_is_dropped_whole() {
        let (stream, _, watcher) = session();
        let (out, fed) = check(&[&stream], false).unwrap();
        assert_eq!(out, watcher);
        assert_eq!(
            fed,
            Fed {
                input_passed: 0,
                input_dropped: 8
            }
        );
    }

    #[test]
    fn every_split_gives_the_same_stream() {
        let (stream, holder, watcher) = session();
        for i in 0..=stream.len() {
            for j in [
                i,
                (i + 1).min(stream.len()),
                (i + 13).min(stream.len()),
                stream.len(),
            ] {
                let parts: [&[u8]; 3] = [&stream[..i], &stream[i..j], &stream[j..]];
                assert_eq!(check(&parts, true).unwrap().0, holder, "split at {i},{j}");
                assert_eq!(check(&parts, false).unwrap().0, watcher, "split at {i},{j}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            check(&bytes, true).unwrap(),
            check(&[&stream], true).unwrap()
        );
    }

    #[test]
    fn an_exclusive_client_init_becomes_shared() {
        let (out, _) = check(&[b"RFB 003.008\n\x01\x00"], true).unwrap();
        assert_eq!(out.last(), Some(&1));
        let (out, _) = check(&[b"RFB 003.008\n\x01\x07"], true).unwrap();
        assert_eq!(out.last(), Some(&1));
    }

    fn refused(stream: &[u8]) -> RfbError {
        let e = check(&[stream], true).unwrap_err().1;
        assert!(e.to_string().len() <= 123, "close reason too long: {e}");
        // The same error whatever the chunking.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(check(&bytes, true).unwrap_err().1, e);
        e
    }

    fn after_handshake(m: &[u8]) -> Vec<u8> {
        let mut s = HANDSHAKE.to_vec();
        s.extend_from_slice(m);
        s
    }

    #[test]
    fn hostile_streams_are_refused_with_a_reason() {
        assert!(matches!(refused(b"RFB 003.003\n"), RfbError::Version(_)));
        assert!(matches!(
            refused(b"GET / HTTP/1.1\r\n"),
            RfbError::Version(_)
        ));
        assert!(matches!(refused(b"\xff\xfe"), RfbError::Version(_)));
        assert_eq!(refused(b"RFB 003.008\n\x02"), RfbError::Security(2));
        assert_eq!(refused(b"RFB 003.008\n\x00"), RfbError::Security(0));
        assert_eq!(refused(&after_handshake(&[7])), RfbError::UnknownMessage(7));
        assert_eq!(
            refused(&after_handshake(&[1, 0])),
            RfbError::UnknownMessage(1)
        );
        assert_eq!(
            refused(&after_handshake(&[150, 1, 0, 0])),
            RfbError::UnknownMessage(150)
        );
        assert_eq!(
            refused(&after_handshake(&[255, 9])),
            RfbError::UnknownQemuMessage(9)
        );
        assert_eq!(
            refused(&after_handshake(&audio(3))),
            RfbError::UnknownAudioOp(3)
        );
        assert_eq!(
            refused(&after_handshake(&cut(CUT_TEXT_MAX as i32 + 1, b""))),
            RfbError::CutTextTooLong(u64::from(CUT_TEXT_MAX) + 1)
        );
        assert_eq!(
            refused(&after_handshake(&cut(i32::MIN, b""))),
            RfbError::CutTextTooLong(1 << 31)
        );
        assert_eq!(
            refused(&after_handshake(&cut(-2, b"ab"))),
            RfbError::ExtendedClipboardTooShort(2)
        );
        // Good messages before the bad one still passed.
        let mut s = after_handshake(&update_request());
        s.push(9);
        let (out, e) = check(&[&s], true).unwrap_err();
        assert_eq!(e, RfbError::UnknownMessage(9));
        assert_eq!(&out[14..], &update_request()[..]);
    }

    #[test]
    fn a_refused_stream_stays_refused() {
        let mut f = ClientFilter::new();
        let mut out = Vec::new();
        assert!(f.feed(b"RFB 003.008\n\x05", true, &mut out).is_err());
        assert_eq!(
            f.feed(b"\x01\x01", true, &mut out),
            Err(RfbError::Security(5))
        );
        assert!(!f.handshake_done());
    }

    #[test]
    fn largest_cut_text_passes_and_is_not_held_beyond_its_message() {
        let payload = vec![b'x'; CUT_TEXT_MAX as usize];
        let s = after_handshake(&cut(CUT_TEXT_MAX as i32, &payload));
        let (out, fed) = check(&[&s[..100], &s[100..]], true).unwrap();
        assert_eq!(out.len(), s.len());
        assert_eq!(fed.input_passed, 1);
        let (out, fed) = check(&[&s], false).unwrap();
        assert_eq!(out.len(), 14);
        assert_eq!(fed.input_dropped, 1);
    }

    #[test]
    fn incomplete_messages_wait_for_their_rest() {
        let mut f = ClientFilter::new();
        let mut out = Vec::new();
        f.feed(HANDSHAKE, true, &mut out).unwrap();
        assert!(f.handshake_done());
        let k = key(true, 0x61);
        let fed = f.feed(&k[..5], true, &mut out).unwrap();
        assert_eq!(fed, Fed::default());
        assert_eq!(out.len(), 14);
        let fed = f.feed(&k[5..], true, &mut out).unwrap();
        assert_eq!(fed.input_passed, 1);
        assert_eq!(&out[14..], &k[..]);
    }
}
