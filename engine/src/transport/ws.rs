//! The carriers' telephony WebSockets (Twilio / Cloudonix media streams, Exotel voicebot),
//! sans-IO: text frames in, call events out; the session's transmits in, text
//! frames out. It owns what is the carrier's: the JSON messages, base64, ordering by the
//! carrier's sequence numbers (jitter buffer), re-framing into 20 ms frames (Exotel sends
//! ~100 ms chunks) and Exotel's rule for outbound chunk sizes.

use std::collections::VecDeque;
use std::time::Duration;

use cxb_codecs::{Encoding, FrameDuration, SampleRate, payload};
use cxb_media::Timestamp;
use cxb_media::jitter::JitterBuffer;

use crate::error::{EndReason, ProtocolErrorKind};
use crate::protocol::{CarrierEvent, ParseError, Protocol, Start, StreamSid, exotel};
use crate::session::Transmit;

/// How long Exotel audio short of a full chunk waits for more before it is sent padded:
/// longer than Exotel's ~100 ms between inbound chunks plus jitter, so a steady stream is
/// never padded (padding mid-stream is an audible gap); measured: 100 ms padded 2% of frames.
const EXOTEL_TAIL: Duration = Duration::from_millis(250);

/// What one carrier message meant for the call.
#[derive(Debug)]
pub enum WsEvent<'a> {
    /// Nothing for the call (`connected`, a repeated `start`, unknown events).
    Nothing,
    /// The stream starts, with audio in this encoding.
    Start(Box<Start>, Encoding),
    /// Whole 20 ms frames of the caller, in order; `late` and `lost`: frames the jitter
    /// buffer gave up on with this message.
    Audio {
        /// The frames.
        frames: &'a [u8],
        /// Arrived after their turn.
        late: u64,
        /// Never arrived.
        lost: u64,
    },
    /// A key press.
    Dtmf(char),
    /// The carrier confirmed a mark.
    Mark,
    /// The stream ended.
    Stop,
}

/// Counters of the transport's own sending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsStats {
    /// Marks sent to the carrier.
    pub marks_sent: u64,
    /// `clear` messages sent (barge-in).
    pub clears_sent: u64,
}

/// One call's carrier WebSocket.
#[derive(Debug)]
pub struct WsTransport {
    protocol: Protocol,
    sid: Option<StreamSid>,
    encoding: Encoding,
    jitter: JitterBuffer<u8>,
    frame_bytes: usize,
    /// Inbound bytes in order; the first `taken` were handed out as frames.
    pending: Vec<u8>,
    taken: usize,
    decoded: Vec<u8>,
    chunker: exotel::Chunker,
    /// When Exotel audio left waiting for a full chunk is sent padded, if nothing follows.
    flush_at: Option<Timestamp>,
    chunk: Vec<u8>,
    b64: String,
    tx: VecDeque<String>,
    spare: Vec<String>,
    stats: WsStats,
}

impl WsTransport {
    /// A socket speaking `protocol`, waiting for `start`.
    pub fn new(protocol: Protocol) -> WsTransport {
        let encoding = protocol.default_format().encoding;
        WsTransport {
            protocol,
            sid: None,
            encoding,
            jitter: Self::jitter(encoding),
            frame_bytes: Self::frame_bytes(encoding),
            pending: Vec::new(),
            taken: 0,
            decoded: Vec::new(),
            chunker: exotel::Chunker::default(),
            flush_at: None,
            chunk: Vec::new(),
            b64: String::new(),
            tx: VecDeque::new(),
            spare: Vec::new(),
            stats: WsStats::default(),
        }
    }

    fn jitter(encoding: Encoding) -> JitterBuffer<u8> {
        JitterBuffer::new(3, 64, encoding.silence_byte())
    }

    fn frame_bytes(encoding: Encoding) -> usize {
        SampleRate::Hz8000.samples_per(FrameDuration::MS_20) * encoding.bytes_per_sample()
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The transport's counters.
    pub fn stats(&self) -> WsStats {
        self.stats
    }

    /// Reads one text frame. A message the call cannot go on after is an error with the
    /// reason the call ends.
    pub fn on_text<'a>(&'a mut self, text: &'a str) -> Result<WsEvent<'a>, EndReason> {
        self.pending.drain(..self.taken);
        self.taken = 0;
        let event = self.protocol.parse(text).map_err(|e| {
            EndReason::Protocol(match e {
                ParseError::UnsupportedFormat(_) => ProtocolErrorKind::UnsupportedFormat,
                _ => ProtocolErrorKind::MalformedJson,
            })
        })?;
        Ok(match event {
            CarrierEvent::Connected | CarrierEvent::Clear | CarrierEvent::Unknown { .. } => WsEvent::Nothing,
            CarrierEvent::Start(start) => {
                if self.sid.is_some() {
                    return Ok(WsEvent::Nothing);
                }
                let encoding = start.media_format.unwrap_or(self.protocol.default_format()).encoding;
                if encoding != self.encoding {
                    self.encoding = encoding;
                    self.jitter = Self::jitter(encoding);
                    self.frame_bytes = Self::frame_bytes(encoding);
                }
                self.sid = Some(start.stream_sid.clone());
                WsEvent::Start(start, encoding)
            }
            CarrierEvent::Media { sequence, chunk, payload: text, .. } => {
                if self.sid.is_none() {
                    return Err(EndReason::Protocol(ProtocolErrorKind::MediaBeforeStart));
                }
                self.decoded.clear();
                payload::decode_into(&text, &mut self.decoded).map_err(|_| EndReason::Protocol(ProtocolErrorKind::BadBase64))?;
                if self.encoding == Encoding::L16 && !self.decoded.len().is_multiple_of(2) {
                    return Err(EndReason::Protocol(ProtocolErrorKind::BadAudio));
                }
                let (mut late, mut lost) = (0, 0);
                match chunk.or(sequence) {
                    Some(seq) => {
                        let before = self.jitter.stats();
                        self.jitter.push(seq, &self.decoded);
                        while self.jitter.pop(&mut self.pending).is_some() {}
                        let after = self.jitter.stats();
                        (late, lost) = (after.late - before.late, after.lost - before.lost);
                    }
                    None => self.pending.extend_from_slice(&self.decoded),
                }
                self.taken = self.pending.len() / self.frame_bytes * self.frame_bytes;
                WsEvent::Audio { frames: &self.pending[..self.taken], late, lost }
            }
            CarrierEvent::Dtmf { digit, .. } => match digit.chars().next() {
                Some(d) => WsEvent::Dtmf(d),
                None => WsEvent::Nothing,
            },
            CarrierEvent::Mark { .. } => WsEvent::Mark,
            CarrierEvent::Stop { .. } => WsEvent::Stop,
        })
    }

    /// Carries out what the session asks at `now`.
    pub fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        let Some(sid) = &self.sid else { return };
        let protocol = self.protocol;
        match what {
            Transmit::Audio(frames) => match protocol {
                Protocol::Twilio => {
                    for frame in frames.chunks(self.frame_bytes) {
                        self.b64.clear();
                        payload::encode_into(frame, &mut self.b64);
                        let mut msg = self.spare.pop().unwrap_or_default();
                        protocol.media(sid, &self.b64, &mut msg);
                        self.tx.push_back(msg);
                    }
                }
                Protocol::Exotel => {
                    if self.chunker.push(frames) {
                        self.send_chunk(false);
                    }
                    self.flush_at = (self.chunker.pending() > 0).then_some(now + EXOTEL_TAIL);
                }
            },
            Transmit::Mark(id) => {
                if protocol == Protocol::Exotel {
                    self.send_chunk(true);
                }
                let Some(sid) = &self.sid else { return };
                let mut msg = self.spare.pop().unwrap_or_default();
                protocol.mark_utterance(sid, id, &mut msg);
                self.tx.push_back(msg);
                self.stats.marks_sent += 1;
            }
            Transmit::Clear { playing } => {
                if playing || self.chunker.pending() > 0 {
                    self.chunker.clear();
                    let mut msg = self.spare.pop().unwrap_or_default();
                    protocol.clear(sid, &mut msg);
                    self.tx.push_back(msg);
                    self.stats.clears_sent += 1;
                }
            }
            // The carriers' streams take no keys: bots play them as tones.
            Transmit::Dtmf(_) => {}
        }
    }

    fn send_chunk(&mut self, flush: bool) {
        if flush {
            self.flush_at = None;
        }
        let Some(sid) = &self.sid else { return };
        if self.chunker.take(flush, &mut self.chunk) {
            self.b64.clear();
            payload::encode_into(&self.chunk, &mut self.b64);
            let mut msg = self.spare.pop().unwrap_or_default();
            self.protocol.media(sid, &self.b64, &mut msg);
            self.tx.push_back(msg);
        }
    }

    /// When [`WsTransport::handle_timeout`] should run.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.flush_at
    }

    /// Sends Exotel audio that waited too long for a full chunk, padded.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.send_chunk(true);
        }
    }

    /// The next text frame to send to the carrier.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.tx.pop_front()
    }

    /// Returns a sent frame's buffer for reuse.
    pub fn recycle(&mut self, mut buf: String) {
        if self.spare.len() < 8 {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXOTEL_START: &str = r#"{"event":"start","stream_sid":"S1","start":{"stream_sid":"S1","media_format":{"encoding":"raw/slin","sample_rate":8000}}}"#;
    const TWILIO_START: &str = r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}"#;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn sent(t: &mut WsTransport) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| t.poll_transmit()).map(|m| serde_json::from_str(&m).expect("JSON")).collect()
    }

    #[test]
    fn twilio_frames_go_out_one_message_each_and_marks_and_clears_follow() {
        let mut t = WsTransport::new(Protocol::Twilio);
        t.transmit(at(0), Transmit::Audio(&[0xFF; 160]));
        assert!(sent(&mut t).is_empty(), "nothing before the stream starts");
        assert!(matches!(t.on_text(TWILIO_START), Ok(WsEvent::Start(_, Encoding::Mulaw))));
        assert!(matches!(t.on_text(TWILIO_START), Ok(WsEvent::Nothing)), "a second start is nothing");
        t.transmit(at(0), Transmit::Audio(&[0xFF; 480]));
        t.transmit(at(0), Transmit::Mark(3));
        t.transmit(at(0), Transmit::Clear { playing: false });
        t.transmit(at(0), Transmit::Clear { playing: true });
        let out = sent(&mut t);
        let events: Vec<&str> = out.iter().map(|m| m["event"].as_str().unwrap_or("")).collect();
        assert_eq!(events, ["media", "media", "media", "mark", "clear"], "a clear with nothing playing is not sent");
        assert_eq!(out[3]["mark"]["name"], "utterance-3");
        assert_eq!(t.stats(), WsStats { marks_sent: 1, clears_sent: 1 });
    }

    #[test]
    fn exotel_audio_goes_out_in_100_ms_chunks_and_a_tail_waits_then_is_padded() {
        let mut t = WsTransport::new(Protocol::Exotel);
        assert!(matches!(t.on_text(EXOTEL_START), Ok(WsEvent::Start(_, Encoding::L16))));
        t.transmit(at(0), Transmit::Audio(&[1; 320 * 7]));
        let out = sent(&mut t);
        assert!(out.is_empty(), "140 ms is short of a chunk: {out:?}");
        assert_eq!(t.deadline(), Some(at(250)));
        t.transmit(at(20), Transmit::Audio(&[1; 320 * 4]));
        let out = sent(&mut t);
        let mut bytes = Vec::new();
        payload::decode_into(out[0]["media"]["payload"].as_str().unwrap_or(""), &mut bytes).expect("base64");
        assert_eq!((out.len(), bytes.len()), (1, 320 * 11), "220 ms: all of it in one message");
        assert_eq!(t.deadline(), None, "nothing waits");
        t.transmit(at(40), Transmit::Audio(&[1; 320 * 2]));
        assert_eq!(t.deadline(), Some(at(290)), "40 ms waits for more");
        t.handle_timeout(at(289));
        assert!(sent(&mut t).is_empty());
        t.handle_timeout(at(290));
        let out = sent(&mut t);
        bytes.clear();
        payload::decode_into(out[0]["media"]["payload"].as_str().unwrap_or(""), &mut bytes).expect("base64");
        assert_eq!(bytes.len(), exotel::MIN_CHUNK, "the tail padded to 100 ms");
        assert_eq!(t.deadline(), None);
        // A barge-in drops audio the transport holds and tells the carrier, even when the
        // session had nothing queued.
        t.transmit(at(300), Transmit::Audio(&[1; 320]));
        t.transmit(at(300), Transmit::Clear { playing: false });
        let events: Vec<String> = sent(&mut t).iter().map(|m| m["event"].to_string()).collect();
        assert_eq!(events, ["\"clear\""]);
        t.handle_timeout(at(600));
        assert!(sent(&mut t).is_empty(), "the dropped audio never goes out");
    }

    #[test]
    fn inbound_audio_is_reframed_and_bad_messages_end_the_call() {
        let mut t = WsTransport::new(Protocol::Exotel);
        let mut b64 = String::new();
        payload::encode_into(&[0; 500], &mut b64);
        let media = format!(r#"{{"event":"media","stream_sid":"S1","media":{{"payload":"{b64}"}}}}"#);
        assert_eq!(t.on_text(&media).err(), Some(EndReason::Protocol(ProtocolErrorKind::MediaBeforeStart)));
        t.on_text(EXOTEL_START).expect("start");
        match t.on_text(&media) {
            Ok(WsEvent::Audio { frames, .. }) => assert_eq!(frames.len(), 320, "one whole frame of 500 bytes"),
            other => panic!("{other:?}"),
        }
        match t.on_text(&media) {
            Ok(WsEvent::Audio { frames, .. }) => assert_eq!(frames.len(), 640, "the 180 left and 500 more"),
            other => panic!("{other:?}"),
        }
        b64.clear();
        payload::encode_into(&[0; 3], &mut b64);
        let odd = format!(r#"{{"event":"media","stream_sid":"S1","media":{{"payload":"{b64}"}}}}"#);
        assert_eq!(t.on_text(&odd).err(), Some(EndReason::Protocol(ProtocolErrorKind::BadAudio)));
        assert_eq!(t.on_text("{").err(), Some(EndReason::Protocol(ProtocolErrorKind::MalformedJson)));
        assert!(matches!(t.on_text(r#"{"event":"stop","stream_sid":"S1"}"#), Ok(WsEvent::Stop)));
    }
}
