//! WebSocket framing, sans-IO: tungstenite's protocol engine runs over an in-memory pipe.
//! The worker feeds it the bytes it read from the socket and writes out the bytes it
//! produced, so framing, masking, control frames, UTF-8 checks and size limits are
//! tungstenite's, while the I/O stays on the worker's io_uring.

use std::io::{self, Read, Write};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error, Message, WebSocket};

use crate::call::ProtocolErrorKind;

/// Largest message accepted: Exotel's biggest chunk (100 KB of audio) in base64 and JSON.
pub const MAX_MESSAGE: usize = 192 * 1024;

/// Bytes read from and written to the socket, as tungstenite's "stream".
#[derive(Debug, Default)]
struct Pipe {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.input[self.read..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.read += n;
        if self.read == self.input.len() {
            self.input.clear();
            self.read = 0;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What reading produced.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(tungstenite::Utf8Bytes),
    /// A binary message.
    Binary,
    /// The peer closed the connection (cleanly or not).
    Closed,
}

/// One WebSocket connection after its handshake: the engine's side (server) or, for the load
/// generator and tests, a carrier's (client, which masks what it sends).
#[derive(Debug)]
pub struct WsSocket {
    ws: WebSocket<Pipe>,
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
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        WsSocket { ws: WebSocket::from_raw_socket(Pipe::default(), role, Some(config)) }
    }

    /// Hands over bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.ws.get_mut().input.extend_from_slice(bytes);
    }

    /// The next complete message, `None` when more bytes are needed. Pings are answered
    /// (the pong waits in the output).
    pub fn read(&mut self) -> Result<Option<Incoming>, ProtocolErrorKind> {
        loop {
            return match self.ws.read() {
                Ok(Message::Text(text)) => Ok(Some(Incoming::Text(text))),
                Ok(Message::Binary(_)) => Ok(Some(Incoming::Binary)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => Ok(Some(Incoming::Closed)),
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => Ok(Some(Incoming::Closed)),
                Err(Error::Capacity(_)) => Err(ProtocolErrorKind::Oversized),
                Err(_) => Err(ProtocolErrorKind::WebSocket),
            };
        }
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: String) {
        // Writing to the in-memory pipe cannot fail for I/O reasons; after a close it is a no-op.
        let _ = self.ws.write(Message::text(text));
        let _ = self.ws.flush();
    }

    /// Queues a close frame with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
    }

    /// Bytes waiting to be written to the socket.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.ws.get_mut().output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (RFC 6455 5.2), as a carrier sends it.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | opcode];
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
        let frame = client_frame(0x1, br#"{"event":"connected"}"#);
        s.feed(&frame[..3]);
        assert!(matches!(s.read(), Ok(None)));
        s.feed(&frame[3..]);
        match s.read() {
            Ok(Some(Incoming::Text(t))) => assert_eq!(t.as_str(), r#"{"event":"connected"}"#),
            other => panic!("{other:?}"),
        }
        s.feed(&client_frame(0x2, &[1, 2, 3]));
        assert!(matches!(s.read(), Ok(Some(Incoming::Binary))));
    }

    #[test]
    fn oversized_unmasked_and_garbage_are_errors() {
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x1, &vec![b'a'; MAX_MESSAGE + 1]));
        assert_eq!(s.read().err(), Some(ProtocolErrorKind::Oversized));
        let mut s = WsSocket::new();
        s.feed(&[0x81, 0x02, b'h', b'i']); // unmasked client frame
        assert_eq!(s.read().err(), Some(ProtocolErrorKind::WebSocket));
        let mut s = WsSocket::new();
        s.feed(&client_frame(0x1, &[0xFF, 0xFE])); // not UTF-8
        assert_eq!(s.read().err(), Some(ProtocolErrorKind::WebSocket));
    }

    #[test]
    fn sends_text_and_close_frames() {
        let mut s = WsSocket::new();
        s.send_text("hi".to_string());
        assert_eq!(s.output().as_slice(), &[0x81, 0x02, b'h', b'i']);
        s.output().clear();
        s.close(1008, "bad");
        let out = s.output().clone();
        assert_eq!(&out[..4], &[0x88, 0x05, 0x03, 0xF0]);
        assert_eq!(&out[4..], b"bad");
    }
}
