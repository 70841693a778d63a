//! The media of a SIP call over RTP, sans-IO: datagrams in, whole 20 ms frames of the
//! negotiated G.711 codec (or, for Opus, 8 kHz linear samples) and key presses out; the
//! session's audio out as RTP packets, one per
//! 20 ms frame, with silence every 20 ms once the bot has been quiet for a period (a SIP peer
//! expects a continuous stream and may hang up on a silent one). The caller's address is
//! latched from its first packet (symmetric RTP, for callers behind NAT); packets from any
//! other address are dropped after that.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use cxb_codecs::Encoding;
use cxb_codecs::rtp::{DtmfReceiver, RtpPacket, SequenceUnwrapper, TelephoneEvent};
use cxb_media::Timestamp;
use cxb_media::jitter::JitterBuffer;

use super::opus::{Opus, OpusError};
use super::rtcp::{Rtcp, RtcpStats};
use crate::session::Transmit;

const PERIOD: Duration = Duration::from_millis(20);

/// The audio codec of a call's RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpCodec {
    /// G.711 mu-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// Opus, decoded to and encoded from 8 kHz.
    Opus,
}

impl RtpCodec {
    /// How the session hears and speaks on such a call: G.711 as it travels, Opus as 16-bit
    /// linear samples at 8 kHz.
    pub const fn session_encoding(self) -> Encoding {
        match self {
            RtpCodec::Pcmu => Encoding::Mulaw,
            RtpCodec::Pcma => Encoding::Alaw,
            RtpCodec::Opus => Encoding::L16,
        }
    }

    /// RTP clock ticks per 20 ms.
    const fn ticks(self) -> u32 {
        match self {
            RtpCodec::Pcmu | RtpCodec::Pcma => 160,
            RtpCodec::Opus => 960,
        }
    }
}

/// How a call's RTP was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpConfig {
    /// The audio codec.
    pub codec: RtpCodec,
    /// Its payload type.
    pub payload_type: u8,
    /// The telephone-event payload type, if negotiated.
    pub dtmf: Option<u8>,
    /// The clock rate of telephone events (8 kHz, or 48 kHz beside Opus).
    pub dtmf_clock: u32,
    /// Our SSRC (random, chosen by the owner).
    pub ssrc: u32,
    /// Where the peer's SDP says to send; replaced by the source of its first packet.
    pub remote: Option<SocketAddr>,
}

/// What one datagram meant for the call.
#[derive(Debug, PartialEq, Eq)]
pub enum RtpEvent<'a> {
    /// Nothing for the call (not RTP, another source, another payload type, a repeated key).
    Nothing,
    /// Whole 20 ms frames of the caller in order; `late` and `lost`: frames the jitter
    /// buffer gave up on with this packet.
    Audio {
        /// The frames.
        frames: &'a [u8],
        /// Arrived after their turn.
        late: u64,
        /// Never arrived.
        lost: u64,
    },
    /// A key press (RFC 4733).
    Dtmf(char),
}

/// Counters of one call's RTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStats {
    /// Packets taken.
    pub packets_in: u64,
    /// Packets sent (audio and silence).
    pub packets_out: u64,
    /// Datagrams that were not RTP, and Opus packets that would not decode.
    pub malformed: u64,
    /// Packets from an address other than the latched one.
    pub foreign: u64,
}

/// One SIP call's RTP stream.
#[derive(Debug)]
pub struct RtpTransport {
    config: RtpConfig,
    remote: Option<SocketAddr>,
    latched: bool,
    sequence_in: SequenceUnwrapper,
    jitter: JitterBuffer<u8>,
    /// Opus's decoder and encoder; `None` on G.711.
    opus: Option<Box<Opus>>,
    /// An Opus packet out of the jitter buffer.
    popped: Vec<u8>,
    pending: Vec<u8>,
    taken: usize,
    /// Bytes of one 20 ms frame in the session's encoding.
    frame: usize,
    keys: DtmfReceiver,
    sequence: u16,
    timestamp: u32,
    /// The next packet starts a talk spurt.
    marker: bool,
    /// When the next packet is due if the session sends none: silence keeps the clock.
    next_due: Option<Timestamp>,
    /// Keys to send (RFC 4733) and the one being sent: its event code, the timestamp it
    /// started at and how many packets of it went out.
    keys_out: VecDeque<u8>,
    key: Option<(u8, u32, u16)>,
    rtcp: Rtcp,
    silence: Vec<u8>,
    tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    stats: RtpStats,
}

impl RtpTransport {
    /// A stream as `config` negotiated it; an error only if libopus cannot start.
    pub fn new(config: RtpConfig) -> Result<RtpTransport, OpusError> {
        let encoding = config.codec.session_encoding();
        let frame = 160 * encoding.bytes_per_sample();
        let opus = match config.codec {
            RtpCodec::Opus => Some(Box::new(Opus::new()?)),
            RtpCodec::Pcmu | RtpCodec::Pcma => None,
        };
        Ok(RtpTransport {
            remote: config.remote,
            latched: false,
            sequence_in: SequenceUnwrapper::default(),
            jitter: JitterBuffer::new(3, 64, encoding.silence_byte()),
            opus,
            popped: Vec::new(),
            pending: Vec::new(),
            taken: 0,
            frame,
            keys: DtmfReceiver::default(),
            sequence: (config.ssrc >> 16) as u16,
            timestamp: config.ssrc.rotate_left(7),
            marker: true,
            next_due: None,
            keys_out: VecDeque::new(),
            key: None,
            rtcp: Rtcp::new(config.ssrc, format!("cxb-{:08x}", config.ssrc), config.codec.ticks() / 20),
            silence: vec![encoding.silence_byte(); frame],
            tx: VecDeque::new(),
            spare: Vec::new(),
            stats: RtpStats::default(),
            config,
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> RtpStats {
        self.stats
    }

    /// The codec's name as SDP has it (`PCMU`, `PCMA`, `opus`).
    pub fn codec_name(&self) -> &'static str {
        match self.config.codec {
            RtpCodec::Pcmu => "PCMU",
            RtpCodec::Pcma => "PCMA",
            RtpCodec::Opus => "opus",
        }
    }

    /// How the session hears and speaks on this stream.
    pub fn session_encoding(&self) -> Encoding {
        self.config.codec.session_encoding()
    }

    /// The payload type the audio runs under.
    pub fn payload_type(&self) -> u8 {
        self.config.payload_type
    }

    /// Where packets go now.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Reads one datagram from `from`.
    pub fn on_datagram(&mut self, now: Timestamp, from: SocketAddr, datagram: &[u8]) -> RtpEvent<'_> {
        self.pending.drain(..self.taken);
        self.taken = 0;
        let Ok(packet) = RtpPacket::parse(datagram) else {
            self.stats.malformed += 1;
            return RtpEvent::Nothing;
        };
        if self.latched && self.remote != Some(from) {
            self.stats.foreign += 1;
            return RtpEvent::Nothing;
        }
        if !self.latched {
            self.latched = true;
            self.remote = Some(from);
            self.rtcp.rtp_latched(from);
        }
        self.stats.packets_in += 1;
        let sequence = self.sequence_in.unwrap(packet.sequence);
        self.rtcp.received(now, packet.ssrc, sequence, packet.timestamp);
        if Some(packet.payload_type) == self.config.dtmf {
            return match TelephoneEvent::parse(packet.payload).and_then(|e| self.keys.receive(packet.timestamp, e)) {
                Some(key) => RtpEvent::Dtmf(key),
                None => RtpEvent::Nothing,
            };
        }
        if packet.payload_type != self.config.payload_type || packet.payload.is_empty() {
            return RtpEvent::Nothing;
        }
        let before = self.jitter.stats();
        self.jitter.push(sequence, packet.payload);
        match self.opus.as_mut() {
            None => while self.jitter.pop(&mut self.pending).is_some() {},
            Some(opus) => self.stats.malformed += opus.decode_released(&mut self.jitter, &mut self.popped, &mut self.pending),
        }
        let after = self.jitter.stats();
        self.taken = self.pending.len() / self.frame * self.frame;
        RtpEvent::Audio { frames: &self.pending[..self.taken], late: after.late - before.late, lost: after.lost - before.lost }
    }

    /// Carries out what the session asks at `now`: audio goes out a packet per frame; keys
    /// as RFC 4733 events in the packets' place (the bot leaves silence for them); marks and
    /// clears mean nothing on RTP (nothing is buffered past the socket).
    pub fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        if let Transmit::Dtmf(key) = what
            && let Some(event) = key_event(key)
            && self.config.dtmf.is_some()
            && self.keys_out.len() < 64
        {
            self.keys_out.push_back(event);
            self.next_due.get_or_insert(now);
        }
        if let Transmit::Audio(frames) = what {
            for frame in frames.chunks(self.frame) {
                self.packet(frame);
            }
            // Silence only after a whole period without audio: the playout's ticks and this
            // clock are not in phase, and a silence packet between two frames of audio would
            // be played between them.
            self.next_due = Some(now + 2 * PERIOD);
        }
    }

    /// One 20 ms frame in the session's encoding goes out (or a key's packet in its place).
    fn packet(&mut self, frame: &[u8]) {
        if self.key_packet() {
            return;
        }
        let payload = match self.opus.as_mut() {
            None => frame,
            Some(opus) => match opus.encode(frame) {
                Ok(packet) => packet,
                // Not a whole frame: nothing this clock slot.
                Err(_) => return,
            },
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        RtpPacket {
            marker: std::mem::take(&mut self.marker),
            payload_type: self.config.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.config.ssrc,
            payload,
        }
        .write(&mut buf);
        self.rtcp.sent(payload.len(), self.timestamp);
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.config.codec.ticks());
        self.stats.packets_out += 1;
        self.tx.push_back(buf);
    }

    /// Sends the next packet of a key in this 20 ms slot, if one is being sent: 5 packets
    /// of 20 ms growing the event's duration to 100 ms, then 3 end packets (RFC 4733 §2.5).
    /// The audio clock moves on underneath.
    fn key_packet(&mut self) -> bool {
        let Some(pt) = self.config.dtmf else { return false };
        if self.key.is_none() {
            let Some(event) = self.keys_out.pop_front() else { return false };
            self.key = Some((event, self.timestamp, 0));
            self.marker = true;
        }
        let Some((event, started, sent)) = self.key.as_mut() else { return false };
        *sent += 1;
        let (event, started, n) = (*event, *started, *sent);
        let end = n > 5;
        let duration = (self.config.dtmf_clock / 50) as u16 * n.min(5);
        let payload = TelephoneEvent { event, end, volume: 10, duration }.to_bytes();
        if n >= 8 {
            self.key = None;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        RtpPacket { marker: std::mem::take(&mut self.marker), payload_type: pt, sequence: self.sequence, timestamp: started, ssrc: self.config.ssrc, payload: &payload }.write(&mut buf);
        self.rtcp.sent(payload.len(), started);
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.config.codec.ticks());
        self.stats.packets_out += 1;
        self.tx.push_back(buf);
        if self.key.is_none() {
            // The next audio starts a talk spurt.
            self.marker = true;
        }
        true
    }

    /// Starts the stream's clock at `now` (the call is answered), which is `unix_ms` on the
    /// wall clock (for RTCP's NTP times).
    pub fn start(&mut self, now: Timestamp, unix_ms: u64) {
        self.next_due.get_or_insert(now);
        self.rtcp.start(now, unix_ms, self.remote);
    }

    /// When silence or an RTCP report is next due.
    pub fn deadline(&self) -> Option<Timestamp> {
        [self.next_due, self.rtcp.deadline()].into_iter().flatten().min()
    }

    /// A datagram on the RTCP port.
    pub fn on_rtcp(&mut self, now: Timestamp, from: SocketAddr, datagram: &[u8]) {
        if !self.rtcp.on_datagram(now, from, datagram) {
            self.stats.malformed += 1;
        }
    }

    /// The next RTCP datagram and where it goes.
    pub fn poll_rtcp(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.rtcp.poll_transmit()
    }

    /// The stream ends: an RTCP BYE goes out.
    pub fn rtcp_bye(&mut self) {
        self.rtcp.bye();
    }

    /// What RTCP says about the call.
    pub fn rtcp_stats(&self) -> RtcpStats {
        self.rtcp.stats()
    }

    /// Sends silence for each period the session left empty up to `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.rtcp.handle_timeout(now);
        let mut sent = 0;
        while let Some(due) = self.next_due.filter(|due| *due <= now) {
            // After a stall, at most a few packets of silence, then the clock moves on.
            if sent < 5 {
                let silence = std::mem::take(&mut self.silence);
                self.packet(&silence);
                self.silence = silence;
                sent += 1;
            } else {
                self.timestamp = self.timestamp.wrapping_add(self.config.codec.ticks());
            }
            self.next_due = Some(due + PERIOD);
        }
    }

    /// The next datagram to send and where, if the peer's address is known.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let remote = self.remote?;
        self.tx.pop_front().map(|buf| (remote, buf))
    }

    /// Returns a sent datagram's buffer for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 8 {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

/// A key's RFC 4733 event code.
fn key_event(key: char) -> Option<u8> {
    Some(match key {
        '0'..='9' => key as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => key as u8 - b'A' + 12,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RtpConfig {
        RtpConfig { codec: RtpCodec::Pcmu, payload_type: 0, dtmf: Some(101), dtmf_clock: 8000, ssrc: 0x1234_5678, remote: Some("127.0.0.1:4000".parse().expect("addr")) }
    }

    fn packet(pt: u8, sequence: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        RtpPacket { marker: false, payload_type: pt, sequence, timestamp, ssrc: 7, payload }.write(&mut out);
        out
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn the_caller_is_latched_its_audio_reordered_and_reframed_and_its_keys_read_once() {
        let mut t = RtpTransport::new(config()).expect("G.711");
        let caller: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        assert_eq!(t.on_datagram(at(0), caller, b"not rtp"), RtpEvent::Nothing);
        assert!(matches!(t.on_datagram(at(0), caller, &packet(0, 1, 0, &[1; 160])), RtpEvent::Audio { frames, .. } if frames == [1; 160]));
        assert_eq!(t.remote(), Some(caller), "latched: replies go where the caller is");
        let other: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        assert_eq!(t.on_datagram(at(0), other, &packet(0, 2, 160, &[9; 160])), RtpEvent::Nothing, "another source");
        // 3 before 2: held until 2 comes, then both in order.
        assert!(matches!(t.on_datagram(at(0), caller, &packet(0, 3, 320, &[3; 160])), RtpEvent::Audio { frames: [], .. }));
        match t.on_datagram(at(0), caller, &packet(0, 2, 160, &[2; 160])) {
            RtpEvent::Audio { frames, .. } => assert_eq!(frames.iter().step_by(160).copied().collect::<Vec<_>>(), [2, 3]),
            other => panic!("{other:?}"),
        }
        // 30 ms packets are cut into 20 ms frames, the rest kept for the next.
        assert!(matches!(t.on_datagram(at(0), caller, &packet(0, 4, 480, &[4; 240])), RtpEvent::Audio { frames, .. } if frames.len() == 160));
        assert!(matches!(t.on_datagram(at(0), caller, &packet(0, 5, 720, &[5; 240])), RtpEvent::Audio { frames, .. } if frames.len() == 320));
        // A key: its packets repeat, one press.
        let five = TelephoneEvent { event: 5, end: false, volume: 10, duration: 160 }.to_bytes();
        assert_eq!(t.on_datagram(at(0), caller, &packet(101, 6, 960, &five)), RtpEvent::Dtmf('5'));
        assert_eq!(t.on_datagram(at(0), caller, &packet(101, 7, 960, &five)), RtpEvent::Nothing);
        assert_eq!(t.on_datagram(at(0), caller, &packet(8, 8, 960, &[0; 160])), RtpEvent::Nothing, "a codec not negotiated");
        assert_eq!(t.stats(), RtpStats { packets_in: 8, packets_out: 0, malformed: 1, foreign: 1 });
    }

    #[test]
    fn audio_goes_out_a_packet_per_frame_and_silence_keeps_the_clock() {
        let mut t = RtpTransport::new(config()).expect("G.711");
        t.start(at(0), 0);
        t.transmit(at(0), Transmit::Audio(&[1; 320]));
        t.handle_timeout(at(19));
        let sent: Vec<(SocketAddr, Vec<u8>)> = std::iter::from_fn(|| t.poll_transmit()).collect();
        assert_eq!(sent.len(), 2);
        let (a, b) = (RtpPacket::parse(&sent[0].1).expect("rtp"), RtpPacket::parse(&sent[1].1).expect("rtp"));
        assert_eq!(sent[0].0, "127.0.0.1:4000".parse().expect("addr"), "the SDP's address until the caller is heard");
        assert!(a.marker && !b.marker, "a talk spurt's first packet is marked");
        assert_eq!((b.sequence.wrapping_sub(a.sequence), b.timestamp.wrapping_sub(a.timestamp)), (1, 160));
        assert_eq!((a.ssrc, a.payload_type, a.payload.len()), (0x1234_5678, 0, 160));
        // The bot is quiet: after a period without audio, silence every 20 ms.
        t.handle_timeout(at(20));
        assert_eq!(t.poll_transmit(), None, "audio may still come for this period");
        t.handle_timeout(at(60));
        let more: Vec<Vec<u8>> = std::iter::from_fn(|| t.poll_transmit()).map(|(_, b)| b).collect();
        assert_eq!(more.len(), 2, "40 and 60 ms");
        let c = RtpPacket::parse(&more[1]).expect("rtp");
        assert_eq!((c.timestamp.wrapping_sub(b.timestamp), c.payload), (320, &[0xFF; 160][..]));
        assert_eq!(t.deadline(), Some(at(80)));
        // A stall of a second: five packets, and the timestamps still follow the clock.
        t.handle_timeout(at(1_080));
        let late: Vec<Vec<u8>> = std::iter::from_fn(|| t.poll_transmit()).map(|(_, b)| b).collect();
        assert_eq!(late.len(), 5);
        t.transmit(at(1_080), Transmit::Audio(&[1; 160]));
        let (_, next) = t.poll_transmit().expect("audio");
        assert_eq!(RtpPacket::parse(&next).expect("rtp").timestamp.wrapping_sub(c.timestamp), 160 * 52, "c, then 51 slots up to 1,080 ms");
        t.transmit(at(1_100), Transmit::Clear { playing: true });
        t.transmit(at(1_100), Transmit::Mark(1));
        assert_eq!(t.poll_transmit(), None, "nothing to say about marks and clears");
    }

    #[test]
    fn keys_go_out_as_rfc_4733_events_in_the_audio_slots() {
        let mut t = RtpTransport::new(config()).expect("G.711");
        t.start(at(0), 0);
        t.transmit(at(0), Transmit::Audio(&[1; 160]));
        let (_, first) = t.poll_transmit().expect("audio");
        let a = RtpPacket::parse(&first).expect("rtp").timestamp;
        t.transmit(at(20), Transmit::Dtmf('#'));
        t.transmit(at(20), Transmit::Dtmf('x'));
        // The bot leaves silence for the key: its slots carry the event instead.
        for k in 0..8u64 {
            t.transmit(at(20 + 20 * k), Transmit::Audio(&[0xFF; 160]));
        }
        let events: Vec<Vec<u8>> = std::iter::from_fn(|| t.poll_transmit()).map(|(_, b)| b).collect();
        assert_eq!(events.len(), 8, "one key, 'x' is none");
        for (n, bytes) in events.iter().enumerate() {
            let p = RtpPacket::parse(bytes).expect("rtp");
            let e = TelephoneEvent::parse(p.payload).expect("an event");
            assert_eq!((p.payload_type, p.timestamp, p.marker), (101, a.wrapping_add(160), n == 0), "packet {n}");
            assert_eq!((e.event, e.end, e.duration), (11, n >= 5, 160 * (n as u16 + 1).min(5)), "packet {n}");
        }
        t.transmit(at(180), Transmit::Audio(&[1; 160]));
        let (_, after) = t.poll_transmit().expect("audio");
        let p = RtpPacket::parse(&after).expect("rtp");
        assert_eq!((p.payload_type, p.marker, p.timestamp.wrapping_sub(a)), (0, true, 160 * 9), "the audio clock ran on under the key");
    }

    #[test]
    fn opus_packets_decode_to_8_khz_frames_and_frames_go_out_as_opus_on_a_48_khz_clock() {
        let mut t = RtpTransport::new(RtpConfig { codec: RtpCodec::Opus, payload_type: 111, dtmf: Some(102), dtmf_clock: 48_000, ..config() }).expect("libopus");
        let caller: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        // A peer's encoder at 48 kHz: 20 ms packets.
        let mut peer = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
        let tone: Vec<i16> = (0..960).map(|i| ((f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 48_000.0).sin() * 8_000.0) as i16).collect();
        let mut heard = 0;
        for n in 0..10u16 {
            let encoded = peer.encode_vec(&tone, 400).expect("encode");
            if n == 4 {
                continue; // lost: concealed once the buffer gives up on it
            }
            match t.on_datagram(at(0), caller, &packet(111, n, u32::from(n) * 960, &encoded)) {
                RtpEvent::Audio { frames, .. } => heard += frames.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(heard, 320 * 10, "20 ms each of 8 kHz linear, the lost one concealed once three came after it");
        // A packet that will not decode is concealed and counted.
        assert!(matches!(t.on_datagram(at(0), caller, &packet(111, 10, 9600, &[0xff; 3])), RtpEvent::Audio { frames, .. } if frames.len() == 320));
        assert_eq!(t.stats().malformed, 1);
        // Our audio: one Opus packet per 20 ms frame, the clock moving 960 a packet.
        t.start(at(0), 0);
        t.transmit(at(0), Transmit::Audio(&[0; 640]));
        let bufs: Vec<Vec<u8>> = std::iter::from_fn(|| t.poll_transmit()).map(|(_, b)| b).collect();
        let sent: Vec<RtpPacket<'_>> = bufs.iter().map(|b| RtpPacket::parse(b).expect("rtp")).collect();
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].payload_type, sent[1].timestamp.wrapping_sub(sent[0].timestamp)), (111, 960));
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
        let mut out = [0i16; 5760];
        assert_eq!(decoder.decode(sent[0].payload, &mut out, false).expect("a peer decodes it"), 960);
        // A key's events count their duration at their own 48 kHz clock.
        t.transmit(at(20), Transmit::Dtmf('1'));
        t.transmit(at(40), Transmit::Audio(&[0; 320]));
        let (_, key) = t.poll_transmit().expect("a key packet");
        let key = RtpPacket::parse(&key).expect("rtp");
        assert_eq!((key.payload_type, TelephoneEvent::parse(key.payload).map(|e| e.duration)), (102, Some(960)));
    }
}
