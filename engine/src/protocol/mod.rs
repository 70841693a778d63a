//! The carriers' WebSocket media protocols, sans-IO: text frames in, [`CarrierEvent`]s out;
//! outbound messages built into reusable strings.
//!
//! Twilio / Cloudonix media streams and the Exotel voicebot share one shape (`connected`,
//! `start`, `media`, `dtmf`, `mark`, `clear`, `stop`) with different field spellings. Numbers
//! that carriers send as strings (`sequenceNumber`, `chunk`, `timestamp`, Exotel's
//! `sample_rate`) are accepted either way. Unknown events are reported, not rejected.

pub mod exotel;
mod flex;
mod wire;

use std::borrow::Cow;

use cxb_codecs::Encoding;

/// Which carrier protocol a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Twilio media streams, also spoken by Cloudonix `<Connect><Stream>`: mu-law 8 kHz.
    Twilio,
    /// Exotel voicebot: LINEAR16 8 kHz, outbound audio in 100 ms multiples of 20 ms.
    Exotel,
}

impl Protocol {
    /// The name used in metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Twilio => "twilio",
            Protocol::Exotel => "exotel",
        }
    }

    /// The format a stream has when its `start` does not say.
    pub const fn default_format(self) -> MediaFormat {
        match self {
            Protocol::Twilio => MediaFormat { encoding: Encoding::Mulaw, sample_rate: 8000 },
            Protocol::Exotel => MediaFormat { encoding: Encoding::L16, sample_rate: 8000 },
        }
    }

    /// Parses one inbound text frame.
    pub fn parse(self, text: &str) -> Result<CarrierEvent<'_>, ParseError> {
        wire::parse(self, text)
    }

    /// Writes an outbound `media` message carrying base64 `payload` into `out`.
    pub fn media(self, stream: &StreamSid, payload: &str, out: &mut String) {
        out.clear();
        out.push_str(r#"{"event":"media","#);
        self.push_sid(stream, out);
        out.push_str(r#","media":{"payload":""#);
        out.push_str(payload);
        out.push_str(r#""}}"#);
    }

    /// Writes an outbound `mark` message into `out`.
    pub fn mark(self, stream: &StreamSid, name: &str, out: &mut String) {
        out.clear();
        out.push_str(r#"{"event":"mark","#);
        self.push_sid(stream, out);
        out.push_str(r#","mark":{"name":"#);
        out.push_str(&json_string(name));
        out.push_str("}}");
    }

    /// Writes the mark of the bot's utterance `id` (`utterance-{id}`) into `out`, in place:
    /// no allocation once `out` has grown to a message's size.
    pub fn mark_utterance(self, stream: &StreamSid, id: u64, out: &mut String) {
        use std::fmt::Write as _;
        out.clear();
        out.push_str(r#"{"event":"mark","#);
        self.push_sid(stream, out);
        let _ = write!(out, r#","mark":{{"name":"utterance-{id}"}}}}"#);
    }

    /// Writes an outbound `clear` message into `out`.
    pub fn clear(self, stream: &StreamSid, out: &mut String) {
        out.clear();
        out.push_str(r#"{"event":"clear","#);
        self.push_sid(stream, out);
        out.push('}');
    }

    fn push_sid(self, stream: &StreamSid, out: &mut String) {
        out.push_str(match self {
            Protocol::Twilio => r#""streamSid":"#,
            Protocol::Exotel => r#""stream_sid":"#,
        });
        out.push_str(&stream.json);
    }
}

/// A stream id, kept with its JSON encoding so outbound messages do not re-escape it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSid {
    sid: String,
    json: String,
}

impl StreamSid {
    /// Wraps a carrier's stream id.
    pub fn new(sid: &str) -> StreamSid {
        StreamSid { sid: sid.to_string(), json: json_string(sid) }
    }

    /// The id as the carrier sent it.
    pub fn as_str(&self) -> &str {
        &self.sid
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The media format a stream announced in `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFormat {
    /// Sample encoding.
    pub encoding: Encoding,
    /// Samples per second.
    pub sample_rate: u32,
}

/// The `start` event, normalised across carriers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// How the call reached the engine: the carrier protocol's name, or `sip`.
    pub transport: &'static str,
    /// The stream's id, echoed in every outbound message.
    pub stream_sid: StreamSid,
    /// The carrier's call id.
    pub call_sid: Option<String>,
    /// The carrier account.
    pub account_sid: Option<String>,
    /// Caller and callee, where the carrier says (Exotel).
    pub from: Option<String>,
    /// See `from`.
    pub to: Option<String>,
    /// Parameters from the stream URL or `<Parameter>` elements.
    pub custom_parameters: Vec<(String, String)>,
    /// The announced audio format, if any.
    pub media_format: Option<MediaFormat>,
}

/// One inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierEvent<'a> {
    /// The socket is up (Twilio sends this first).
    Connected,
    /// The stream starts.
    Start(Box<Start>),
    /// Audio: a base64 payload and its position.
    Media {
        /// Message sequence number.
        sequence: Option<u64>,
        /// Media chunk number (Twilio), the best key for ordering.
        chunk: Option<u64>,
        /// Milliseconds since the stream began.
        timestamp_ms: Option<u64>,
        /// Base64 audio.
        payload: Cow<'a, str>,
    },
    /// A key press.
    Dtmf {
        /// The digit.
        digit: String,
        /// How long it was held, where given (Exotel).
        duration_ms: Option<u64>,
    },
    /// The carrier reached (or dropped) a mark the bot sent.
    Mark {
        /// The mark's name.
        name: String,
    },
    /// The carrier asks the bot to drop queued audio (some carriers echo `clear`).
    Clear,
    /// The stream ends.
    Stop {
        /// Why, where given (Exotel).
        reason: Option<String>,
    },
    /// An event this engine does not know; ignored.
    Unknown {
        /// Its `event` field.
        event: String,
    },
}

/// An inbound message that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not JSON, or JSON of the wrong shape for its event.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A media format this engine cannot carry.
    #[error("unsupported media format: {0}")]
    UnsupportedFormat(String),
}

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> Self {
        ParseError::Malformed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_messages_are_valid_json_in_each_dialect() {
        let sid = StreamSid::new("MZ\"quoted\"");
        let mut out = String::new();
        Protocol::Twilio.media(&sid, "/38A", &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["streamSid"], "MZ\"quoted\"");
        assert_eq!(v["media"]["payload"], "/38A");
        Protocol::Exotel.mark(&sid, "utterance-1", &mut out);
        let mut again = String::new();
        Protocol::Exotel.mark_utterance(&sid, 1, &mut again);
        assert_eq!(again, out, "the in-place utterance mark is the same message");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!((v["event"].as_str(), v["stream_sid"].as_str()), (Some("mark"), Some("MZ\"quoted\"")));
        assert_eq!(v["mark"]["name"], "utterance-1");
        Protocol::Twilio.clear(&sid, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["event"], "clear");
    }
}
