//! WebSocket framing (RFC 6455), sans-IO and zero-copy: bytes read from the socket are
//! appended to one buffer, frames are parsed and unmasked in place, and text messages are
//! handed out as `&str` borrowed from that buffer; outbound frames are written straight into
//! the output buffer. The handshake is answered by `http`, so this starts after the 101.
//!
//! Written here rather than taken from tungstenite because it is on every frame of every call:
//! driving tungstenite cost three copies and two allocations per message (measured in
//! docs/PERFORMANCE.md). Tests and fuzz targets hold it to the RFC; tungstenite remains the
//! client in the tests, so the two implementations check each other.

use crate::error::ProtocolErrorKind;

/// Largest message accepted: Exotel's biggest chunk (100 KB of audio) in base64 and JSON.
pub const MAX_MESSAGE: usize = 192 * 1024;

/// What reading produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary,
    /// The peer closed the connection (our close reply is already queued).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// One WebSocket connection after its handshake: the engine's side (server) or, for the load
/// generator, a carrier's (client, which masks what it sends).
#[derive(Debug)]
pub struct WsSocket {
    role: Role,
    input: Vec<u8>,
    /// Bytes of `input` already consumed.
    start: usize,
    output: Vec<u8>,
    /// A fragmented message being reassembled: its opcode and payload so far.
    partial: Option<(u8, Vec<u8>)>,
    /// `partial` held a finished message last time; clear it before reading on.
    partial_done: bool,
    closed: bool,
    mask_state: u32,
}

impl Default for WsSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl WsSocket {
    /// The server side of a connection whose handshake has been answered.
    pub fn new() -> WsSocket {
        Self::with_role(Role::Server)
    }

    /// The client side of a connection whose handshake has been answered.
    pub fn client() -> WsSocket {
        Self::with_role(Role::Client)
    }

    fn with_role(role: Role) -> WsSocket {
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8) as u32;
        WsSocket {
            role,
            input: Vec::new(),
            start: 0,
            output: Vec::new(),
            partial: None,
            partial_done: false,
            closed: false,
            mask_state: seed | 1,
        }
    }

    /// Hands over bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next complete message, `None` when more bytes are needed. Pings are answered and
    /// a close is acknowledged in the output.
    pub fn read(&mut self) -> Result<Option<Incoming<'_>>, ProtocolErrorKind> {
        if self.partial_done {
            self.partial = None;
            self.partial_done = false;
        }
        loop {
            if self.closed {
                return Ok(Some(Incoming::Closed));
            }
            let buf = &self.input[self.start..];
            let Some(frame) = parse_header(buf, self.role)? else { return Ok(None) };
            let end = self.start + frame.header + frame.len;
            if self.input.len() < end {
                return Ok(None);
            }
            let payload = self.start + frame.header..end;
            if let Some(mask) = frame.mask {
                unmask(&mut self.input[payload.clone()], mask);
            }
            self.start = end;
            match frame.opcode {
                0x1 | 0x2 if self.partial.is_some() => return Err(ProtocolErrorKind::WebSocket),
                0x1 if frame.fin => {
                    let text = std::str::from_utf8(&self.input[payload]).map_err(|_| ProtocolErrorKind::InvalidUtf8)?;
                    return Ok(Some(Incoming::Text(text)));
                }
                0x2 if frame.fin => return Ok(Some(Incoming::Binary)),
                0x1 | 0x2 => self.partial = Some((frame.opcode, self.input[payload].to_vec())),
                0x0 => {
                    let (opcode, data) = self.partial.as_mut().ok_or(ProtocolErrorKind::WebSocket)?;
                    if data.len() + frame.len > MAX_MESSAGE {
                        return Err(ProtocolErrorKind::Oversized);
                    }
                    data.extend_from_slice(&self.input[payload]);
                    if frame.fin {
                        self.partial_done = true;
                        let opcode = *opcode;
                        let data = self.partial.as_ref().map_or(&[][..], |(_, d)| d.as_slice());
                        if opcode == 0x2 {
                            return Ok(Some(Incoming::Binary));
                        }
                        let text = std::str::from_utf8(data).map_err(|_| ProtocolErrorKind::InvalidUtf8)?;
                        return Ok(Some(Incoming::Text(text)));
                    }
                }
                0x8 => {
                    // The reply echoes a valid code (RFC 6455 5.5.1); a close without one is
                    // answered with 1000, a malformed one is a protocol error of its own.
                    let code = close_code(&self.input[payload])?;
                    self.close(code, "");
                    return Ok(Some(Incoming::Closed));
                }
                0x9 => {
                    let data = self.input[payload].to_vec();
                    self.write_frame(0xA, &[&data]);
                }
                0xA => {}
                _ => return Err(ProtocolErrorKind::WebSocket),
            }
        }
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) {
        self.write_frame(0x1, &[text.as_bytes()]);
    }

    /// Queues a close frame with `code` and `reason` (once; later calls do nothing).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        let reason = &reason.as_bytes()[..reason.len().min(123)];
        self.write_frame(0x8, &[&code.to_be_bytes(), reason]);
        self.closed = true;
    }

    fn write_frame(&mut self, opcode: u8, parts: &[&[u8]]) {
        if self.closed {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let masked = self.role == Role::Client;
        let out = &mut self.output;
        out.reserve(len + 14);
        out.push(0x80 | opcode);
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let body = out.len() + if masked { 4 } else { 0 };
        let mask = if masked {
            // xorshift32: a fresh key per frame; the key only has to vary, not be secret, here.
            let mut x = self.mask_state;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.mask_state = x;
            let key = x.to_be_bytes();
            out.extend_from_slice(&key);
            Some(key)
        } else {
            None
        };
        for p in parts {
            out.extend_from_slice(p);
        }
        if let Some(key) = mask {
            unmask(&mut out[body..], key);
        }
    }

    /// Bytes waiting to be written to the socket.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }
}

/// The code of a close frame's payload: none (1000), or a code a peer may send (RFC 6455
/// 7.4) followed by a UTF-8 reason.
fn close_code(body: &[u8]) -> Result<u16, ProtocolErrorKind> {
    match body {
        [] => Ok(1000),
        [_] => Err(ProtocolErrorKind::WebSocket),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004 is reserved; 1005, 1006 and 1015 are never sent on the wire.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(ProtocolErrorKind::WebSocket);
            }
            std::str::from_utf8(reason).map_err(|_| ProtocolErrorKind::InvalidUtf8)?;
            Ok(code)
        }
    }
}

struct FrameHeader {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header: usize,
    len: usize,
}

/// Parses a frame header; `Ok(None)` if incomplete.
fn parse_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, ProtocolErrorKind> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ProtocolErrorKind::WebSocket); // no extensions were negotiated
    }
    let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0F, b1 & 0x80 != 0);
    // Clients must mask, servers must not (RFC 6455 5.1).
    if masked != (role == Role::Server) {
        return Err(ProtocolErrorKind::WebSocket);
    }
    let (len, mut header) = match b1 & 0x7F {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && (!fin || len > 125) {
        return Err(ProtocolErrorKind::WebSocket);
    }
    if len > MAX_MESSAGE as u64 {
        return Err(ProtocolErrorKind::Oversized);
    }
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let key = [buf[header], buf[header + 1], buf[header + 2], buf[header + 3]];
        header += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(FrameHeader { fin, opcode, mask, header, len: len as usize }))
}

/// XORs `data` with the repeating 4-byte `key`, eight bytes at a time.
fn unmask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (RFC 6455 5.2), as a carrier sends it.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn text_in_pieces_then_binary() {
        let mut s = WsSocket::new();
        let frame = client_frame(0x81, br#"{"event":"connected"}"#);
        s.feed(&frame[..3]);
        assert_eq!(s.read(), Ok(None));
        s.feed(&frame[3..]);
        assert_eq!(s.read(), Ok(Some(Incoming::Text(r#"{"event":"connected"}"#))));
        s.feed(&client_frame(0x82, &[1, 2, 3]));
        assert_eq!(s.read(), Ok(Some(Incoming::Binary)));
        assert_eq!(s.read(), Ok(None));
    }

    #[test]
    fn long_fragmented_and_pinged() {
        let mut s = WsSocket::new();
        let long = "x".repeat(70_000);
        s.feed(&client_frame(0x81, long.as_bytes()));
        assert_eq!(s.read(), Ok(Some(Incoming::Text(long.as_str()))));
        s.feed(&client_frame(0x01, b"hel"));
        s.feed(&client_frame(0x89, b"p")); // a ping between fragments
        s.feed(&client_frame(0x80, b"lo"));
        assert_eq!(s.read(), Ok(Some(Incoming::Text("hello"))));
        assert_eq!(s.output().as_slice(), &[0x8A, 0x01, b'p'], "pong echoes the ping");
    }

    #[test]
    fn oversized_unmasked_reserved_and_garbage_are_errors() {
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x81, &vec![b'a'; MAX_MESSAGE + 1]));
        assert_eq!(s.read(), Err(ProtocolErrorKind::Oversized));
        let mut s = WsSocket::new();
        s.feed(&[0x81, 0x02, b'h', b'i']); // unmasked client frame
        assert_eq!(s.read(), Err(ProtocolErrorKind::WebSocket));
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x81, &[0xFF, 0xFE])); // not UTF-8
        assert_eq!(s.read(), Err(ProtocolErrorKind::InvalidUtf8));
        let mut s = WsSocket::new();
        s.feed(&client_frame(0xC1, b"x")); // RSV1 without an extension
        assert_eq!(s.read(), Err(ProtocolErrorKind::WebSocket));
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x80, b"x")); // continuation of nothing
        assert_eq!(s.read(), Err(ProtocolErrorKind::WebSocket));
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x09, b"x")); // fragmented ping
        assert_eq!(s.read(), Err(ProtocolErrorKind::WebSocket));
    }

    #[test]
    fn close_is_answered_once() {
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x88, &1001u16.to_be_bytes()));
        assert_eq!(s.read(), Ok(Some(Incoming::Closed)));
        assert_eq!(s.output().as_slice(), &[0x88, 0x02, 0x03, 0xE9]);
        s.close(1000, "again");
        assert_eq!(s.output().len(), 4);
    }

    #[test]
    fn close_payloads_are_checked_before_they_are_echoed() {
        for (payload, expect) in [
            (vec![], Ok(1000u16)),
            (1000u16.to_be_bytes().to_vec(), Ok(1000)),
            (4999u16.to_be_bytes().to_vec(), Ok(4999)),
            ([&1011u16.to_be_bytes()[..], "ünïcode".as_bytes()].concat(), Ok(1011)),
            (vec![0x03], Err(ProtocolErrorKind::WebSocket)),
            ([&1000u16.to_be_bytes()[..], &[0xCE, 0xBA, 0xFF]].concat(), Err(ProtocolErrorKind::InvalidUtf8)),
        ] {
            let mut s = WsSocket::new();
            s.feed(&client_frame(0x88, &payload));
            match expect {
                Ok(code) => {
                    assert_eq!(s.read(), Ok(Some(Incoming::Closed)), "{payload:?}");
                    assert_eq!(s.output()[2..4], code.to_be_bytes(), "{payload:?}");
                }
                Err(kind) => assert_eq!(s.read(), Err(kind), "{payload:?}"),
            }
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let mut s = WsSocket::new();
            s.feed(&client_frame(0x88, &code.to_be_bytes()));
            assert_eq!(s.read(), Err(ProtocolErrorKind::WebSocket), "code {code}");
        }
    }

    #[test]
    fn a_ping_in_the_same_read_as_a_close_is_answered_before_it() {
        let mut s = WsSocket::new();
        s.feed(&[client_frame(0x89, b"hi"), client_frame(0x88, &1000u16.to_be_bytes())].concat());
        assert_eq!(s.read(), Ok(Some(Incoming::Closed)));
        assert_eq!(s.output().as_slice(), &[0x8A, 0x02, b'h', b'i', 0x88, 0x02, 0x03, 0xE8]);
    }

    #[test]
    fn client_and_server_understand_each_other() {
        let (mut client, mut server) = (WsSocket::client(), WsSocket::new());
        client.send_text("from the carrier");
        server.feed(&std::mem::take(client.output()));
        assert_eq!(server.read(), Ok(Some(Incoming::Text("from the carrier"))));
        server.send_text("hi");
        assert_eq!(server.output().as_slice(), &[0x81, 0x02, b'h', b'i']);
        client.feed(&std::mem::take(server.output()));
        assert_eq!(client.read(), Ok(Some(Incoming::Text("hi"))));
        server.close(1008, "bad");
        let out = server.output().clone();
        assert_eq!(out, [0x88, 0x05, 0x03, 0xF0, b'b', b'a', b'd']);
    }
}
