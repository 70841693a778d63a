//! Why a call ended and how a peer broke the protocol: the engine's error vocabulary, shared
//! by the wire layers (`ws`, `tls`, `protocol`), the call and the metrics.

/// Why a carrier's peer was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    /// A text frame that is not a message of the protocol.
    MalformedJson,
    /// A media payload that is not base64.
    BadBase64,
    /// Audio that cannot be decoded (LINEAR16 of odd length).
    BadAudio,
    /// A binary frame where the protocol sends only text.
    BinaryFrame,
    /// A frame or message over the size limit.
    Oversized,
    /// Media before `start`.
    MediaBeforeStart,
    /// A `start` announcing a format the engine cannot carry.
    UnsupportedFormat,
    /// A WebSocket protocol violation (bad framing, unmasked client frames, a bad close).
    WebSocket,
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// A TLS record that does not decrypt (or any TLS alert from the peer).
    Tls,
}

impl ProtocolErrorKind {
    /// Every kind, for metrics.
    pub const ALL: [ProtocolErrorKind; 10] = [
        ProtocolErrorKind::MalformedJson,
        ProtocolErrorKind::BadBase64,
        ProtocolErrorKind::BadAudio,
        ProtocolErrorKind::BinaryFrame,
        ProtocolErrorKind::Oversized,
        ProtocolErrorKind::MediaBeforeStart,
        ProtocolErrorKind::UnsupportedFormat,
        ProtocolErrorKind::WebSocket,
        ProtocolErrorKind::InvalidUtf8,
        ProtocolErrorKind::Tls,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            ProtocolErrorKind::MalformedJson => "malformed_json",
            ProtocolErrorKind::BadBase64 => "bad_base64",
            ProtocolErrorKind::BadAudio => "bad_audio",
            ProtocolErrorKind::BinaryFrame => "binary_frame",
            ProtocolErrorKind::Oversized => "oversized",
            ProtocolErrorKind::MediaBeforeStart => "media_before_start",
            ProtocolErrorKind::UnsupportedFormat => "unsupported_format",
            ProtocolErrorKind::WebSocket => "websocket",
            ProtocolErrorKind::InvalidUtf8 => "invalid_utf8",
            ProtocolErrorKind::Tls => "tls",
        }
    }

    /// The WebSocket close code (RFC 6455 section 7.4.1).
    pub const fn close_code(self) -> u16 {
        match self {
            ProtocolErrorKind::BinaryFrame => 1003,
            ProtocolErrorKind::MalformedJson
            | ProtocolErrorKind::BadBase64
            | ProtocolErrorKind::BadAudio
            | ProtocolErrorKind::InvalidUtf8 => 1007,
            ProtocolErrorKind::MediaBeforeStart | ProtocolErrorKind::UnsupportedFormat => 1008,
            ProtocolErrorKind::Oversized => 1009,
            ProtocolErrorKind::WebSocket | ProtocolErrorKind::Tls => 1002,
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The carrier sent `stop`.
    Stopped,
    /// The peer closed the socket or it failed.
    PeerClosed,
    /// A `hangup` command.
    Hangup,
    /// The engine is shutting down.
    Shutdown,
    /// The peer broke the protocol.
    Protocol(ProtocolErrorKind),
    /// The peer stopped reading and the send backlog hit its bound.
    SlowConsumer,
    /// The call's processing panicked.
    Panicked,
    /// Nothing arrived for too long.
    IdleTimeout,
    /// The bot ended the call.
    BotHangup,
    /// The bot handed the call over.
    Transferred,
}

impl EndReason {
    /// Every reason but the protocol ones, which are labelled by kind.
    pub const SIMPLE: [EndReason; 9] = [
        EndReason::Stopped,
        EndReason::PeerClosed,
        EndReason::Hangup,
        EndReason::Shutdown,
        EndReason::SlowConsumer,
        EndReason::Panicked,
        EndReason::IdleTimeout,
        EndReason::BotHangup,
        EndReason::Transferred,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::PeerClosed => "peer_closed",
            EndReason::Hangup => "hangup",
            EndReason::Shutdown => "shutdown",
            EndReason::Protocol(_) => "protocol_error",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::Panicked => "panicked",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::BotHangup => "bot_hangup",
            EndReason::Transferred => "transferred",
        }
    }

    /// The close frame to send, if one can be (a peer that stopped reading gets none).
    pub fn close(self) -> Option<(u16, String)> {
        Some(match self {
            EndReason::Stopped => (1000, "stream stopped".to_string()),
            EndReason::PeerClosed | EndReason::SlowConsumer => return None,
            EndReason::Hangup => (1000, "hung up".to_string()),
            EndReason::Shutdown => (1001, "engine shutting down".to_string()),
            EndReason::Protocol(kind) => (
                kind.close_code(),
                format!("protocol error: {}", kind.label()),
            ),
            EndReason::Panicked => (1011, "internal error".to_string()),
            EndReason::IdleTimeout => (1000, "no media".to_string()),
            EndReason::BotHangup => (1000, "call ended by the bot".to_string()),
            EndReason::Transferred => (1000, "call transferred".to_string()),
        })
    }
}
