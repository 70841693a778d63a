//! The media of a browser call over WebRTC, sans-IO: str0m runs ICE-lite, DTLS-SRTP and the
//! SCTP data channel; this file turns its Opus packets into the session's 20 ms frames (8 kHz
//! linear samples, through the jitter buffer, with libopus's concealment for packets that never
//! came) and the session's audio back into Opus packets, and carries the bot's live transcript
//! and speaking state over the data channel as JSON text. Datagrams and `now` in, datagrams
//! out; the worker owns the call's UDP socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cxb_media::Timestamp;
use cxb_media::jitter::JitterBuffer;
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::opus::Opus;
use crate::session::Transmit;

/// 48 kHz RTP ticks in 20 ms.
const TICKS: u64 = 960;
/// One 20 ms frame of 8 kHz little-endian samples.
const FRAME: usize = 320;
/// Data-channel messages held while the channel is not open yet.
const MAX_MESSAGES: usize = 64;
/// A browser that sends nothing (no media, no ICE consent checks) for this long is gone.
const SILENT_PEER: Duration = Duration::from_secs(15);

/// Why a browser's offer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// Not SDP, or SDP str0m cannot answer.
    #[error("the offer is not usable SDP: {0}")]
    Offer(String),
    /// The offer has no audio with Opus.
    #[error("the offer has no audio with Opus")]
    NoOpus,
    /// libopus could not start.
    #[error(transparent)]
    Codec(#[from] super::opus::OpusError),
}

/// What one datagram meant for the call.
#[derive(Debug, PartialEq, Eq)]
pub enum WebRtcEvent<'a> {
    /// Nothing for the session (ICE, DTLS, RTCP, the data channel, or a packet str0m holds).
    Nothing,
    /// Whole 20 ms frames of the caller in order; `late` and `lost`: frames the jitter
    /// buffer gave up on with this datagram.
    Audio {
        /// The frames.
        frames: &'a [u8],
        /// Arrived after their turn.
        late: u64,
        /// Never arrived (concealed).
        lost: u64,
    },
}

/// Counters of one WebRTC call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebRtcStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Opus packets taken.
    pub packets_in: u64,
    /// Opus packets sent.
    pub packets_out: u64,
    /// Datagrams str0m could not read, and Opus packets that would not decode.
    pub malformed: u64,
    /// Data-channel messages sent.
    pub messages_out: u64,
}

/// One browser call's WebRTC session.
pub struct WebRtcTransport {
    rtc: Box<Rtc>,
    /// The instant of `Timestamp` zero: str0m keeps time in `Instant`s.
    epoch: Instant,
    /// The host candidate: where the browser sends, as it addresses us.
    local: SocketAddr,
    /// The audio's mid and the payload type Opus runs under, once negotiated.
    audio: Option<(Mid, Pt)>,
    channel: Option<ChannelId>,
    opus: Box<Opus>,
    jitter: JitterBuffer<u8>,
    popped: Vec<u8>,
    pending: Vec<u8>,
    taken: usize,
    /// The RTP time of the next packet out, 48 kHz.
    media_time: u64,
    /// When str0m next wants `handle_timeout`.
    rtc_next: Option<Instant>,
    /// While the bot speaks: when it counts as quiet again (no audio for a period).
    quiet_at: Option<Timestamp>,
    last_rx: Timestamp,
    messages: VecDeque<String>,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    connected: bool,
    closed: bool,
    handshake_records: HandshakeRecords,
    stats: WebRtcStats,
}

/// The DTLS records of epoch 1 and above seen before the connection is up, by epoch and
/// sequence number. dimpl 0.7 (str0m 0.24's DTLS) queues such records undecrypted until the
/// peer's keys are in, and asserts (panics) when one comes twice; dimpl 0.9 fixed it. A
/// datagram repeating one is dropped here: a true duplicate (a retransmission has a new
/// sequence number), or a forgery. Found by the `webrtc_datagram` fuzz target.
#[derive(Debug, Default)]
struct HandshakeRecords(Vec<(u16, u64)>);

impl HandshakeRecords {
    /// False when `datagram` is DTLS with a record of epoch 1 or above seen before.
    fn first_seen(&mut self, datagram: &[u8]) -> bool {
        // RFC 7983: DTLS when the first byte is 20 to 63.
        if !datagram.first().is_some_and(|b| (20..=63).contains(b)) {
            return true;
        }
        let mut rest = datagram;
        let mut records = Vec::new();
        // Each record: type (1), version (2), epoch (2), sequence (6), length (2), fragment.
        while let [_, _, _, e0, e1, s @ .., ] = rest {
            let (Some(seq), Some(len)) = (s.get(..6), s.get(6..8)) else { break };
            let epoch = u16::from_be_bytes([*e0, *e1]);
            let seq = seq.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
            if epoch > 0 {
                records.push((epoch, seq));
            }
            let next = 13 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            rest = rest.get(next..).unwrap_or_default();
        }
        if records.iter().any(|r| self.0.contains(r)) {
            return false;
        }
        // A handshake has a handful; a peer sending more is held to the latest 64.
        self.0.extend(records);
        let excess = self.0.len().saturating_sub(64);
        self.0.drain(..excess);
        true
    }
}

impl std::fmt::Debug for WebRtcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcTransport").field("local", &self.local).field("connected", &self.connected).field("stats", &self.stats).finish_non_exhaustive()
    }
}

/// The RTP header extensions a call takes: the media's id (BUNDLE). No transport-wide
/// congestion control or send times: one audio stream at a fixed rate has no bandwidth to
/// estimate, and its feedback cost the engine a tenth of its time per call.
pub fn extensions() -> ExtensionMap {
    let mut map = ExtensionMap::empty();
    map.set(4, Extension::RtpMid);
    map
}

/// `answer` with Opus's `fmtp` asking the browser for narrowband (RFC 7587
/// `maxplaybackrate=8000`, `sprop-maxcapturerate=8000`): every call runs at 8 kHz, and a
/// narrowband stream is SILK alone, which costs the engine a fraction of decoding fullband.
/// `None` when the answer has no Opus.
fn narrowband(answer: &str) -> Option<String> {
    let pt = answer.lines().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec.to_ascii_lowercase().starts_with("opus/48000").then(|| pt.to_string())
    })?;
    const LIMIT: &str = "maxplaybackrate=8000;sprop-maxcapturerate=8000";
    let fmtp = format!("a=fmtp:{pt} ");
    let rtpmap = format!("a=rtpmap:{pt} ");
    // Appended to Opus's own `fmtp` line, or one of its own after the `rtpmap` without one.
    let has_fmtp = answer.lines().any(|l| l.starts_with(&fmtp));
    let mut out = String::with_capacity(answer.len() + 64);
    for line in answer.split_inclusive("\r\n") {
        let text = line.trim_end_matches("\r\n");
        if has_fmtp && text.starts_with(&fmtp) {
            out.push_str(&format!("{text};{LIMIT}\r\n"));
        } else {
            out.push_str(line);
            if !has_fmtp && text.starts_with(&rtpmap) {
                out.push_str(&format!("{fmtp}{LIMIT}\r\n"));
            }
        }
    }
    Some(out)
}

/// One output of str0m's, for a side that polls it at `at`.
// Returned and matched at once, never stored: boxing the event would cost an allocation a
// packet for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Polled {
    /// A datagram to send.
    Transmit(SocketAddr, Vec<u8>),
    /// Something happened.
    Event(Event),
    /// Nothing more until this instant; `None` when the connection failed.
    Next(Option<Instant>),
}

/// The next output of `rtc`. What str0m asks to run by `at` runs here too (a packet written
/// is packetized and then paced out on two timeouts that are due at once): without it a call
/// would wake twice more per packet, and each packet would leave a wake-up late. `due`
/// counts those (at most 8 per drain).
pub(super) fn poll(rtc: &mut Rtc, at: Instant, due: &mut u32) -> Polled {
    loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(next)) if next <= at && *due < 8 => {
                *due += 1;
                if rtc.handle_input(Input::Timeout(at)).is_err() {
                    return Polled::Next(None);
                }
            }
            Ok(Output::Timeout(next)) => return Polled::Next(Some(next)),
            Ok(Output::Transmit(t)) => return Polled::Transmit(t.destination, t.contents.into()),
            Ok(Output::Event(event)) => return Polled::Event(event),
            Err(_) => return Polled::Next(None),
        }
    }
}

impl WebRtcTransport {
    /// Answers a browser's SDP `offer` at `now` (`epoch`: the instant of `Timestamp` zero):
    /// ICE-lite with one host candidate at `local` (the address the browser will send to),
    /// Opus only. Returns the transport and the SDP answer.
    pub fn accept(now: Timestamp, epoch: Instant, local: SocketAddr, offer: &str) -> Result<(WebRtcTransport, String), WebRtcError> {
        let at = epoch + Duration::from_micros(now.as_micros());
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::Offer(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_extension_map(extensions())
            .set_stats_interval(None)
            .build(at);
        let candidate = Candidate::host(local, "udp").map_err(|e| WebRtcError::Offer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| WebRtcError::Offer(e.to_string()))?;
        let mut transport = WebRtcTransport {
            rtc: Box::new(rtc),
            epoch,
            local,
            audio: None,
            channel: None,
            opus: Box::new(Opus::new()?),
            jitter: JitterBuffer::new(3, 64, 0),
            popped: Vec::new(),
            pending: Vec::new(),
            taken: 0,
            media_time: 0,
            rtc_next: None,
            quiet_at: None,
            last_rx: now,
            messages: VecDeque::new(),
            tx: VecDeque::new(),
            connected: false,
            closed: false,
            handshake_records: HandshakeRecords::default(),
            stats: WebRtcStats::default(),
        };
        transport.drain(at);
        // str0m names the audio's mid (and so its payload type) once the media opens; the
        // answer says now whether Opus was agreed.
        let answer = narrowband(&answer.to_sdp_string()).ok_or(WebRtcError::NoOpus)?;
        Ok((transport, answer))
    }

    fn instant(&self, t: Timestamp) -> Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    /// The counters so far.
    pub fn stats(&self) -> WebRtcStats {
        self.stats
    }

    /// Whether ICE and DTLS are up (media can flow).
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The browser closed the connection, or went silent: the call is over.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Reads one datagram from `from`.
    pub fn on_datagram(&mut self, now: Timestamp, from: SocketAddr, datagram: &[u8]) -> WebRtcEvent<'_> {
        self.pending.drain(..self.taken);
        self.taken = 0;
        self.stats.datagrams_in += 1;
        self.last_rx = now;
        let before = self.jitter.stats();
        let at = self.instant(now);
        if !self.connected && !self.handshake_records.first_seen(datagram) {
            self.stats.malformed += 1;
            return WebRtcEvent::Nothing;
        }
        match Receive::new(Protocol::Udp, from, self.local, datagram) {
            Ok(receive) => {
                // str0m's DTLS (dimpl 0.7) asserts on some records a peer can send; the call's
                // state is then unknown, so it ends (see `HandshakeRecords` for the one known).
                let rtc = &mut self.rtc;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rtc.handle_input(Input::Receive(at, receive)))) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => self.stats.malformed += 1,
                    Err(_) => {
                        self.stats.malformed += 1;
                        self.closed = true;
                        return WebRtcEvent::Nothing;
                    }
                }
                self.drain(at);
            }
            _ => self.stats.malformed += 1,
        }
        let after = self.jitter.stats();
        self.taken = self.pending.len() / FRAME * FRAME;
        if self.taken == 0 {
            return WebRtcEvent::Nothing;
        }
        WebRtcEvent::Audio { frames: &self.pending[..self.taken], late: after.late - before.late, lost: after.lost - before.lost }
    }

    /// Polls str0m until it has nothing more: datagrams to send, the caller's audio into
    /// the jitter buffer and out of it decoded, the channel and connection states.
    fn drain(&mut self, at: Instant) {
        let mut due = 0;
        loop {
            match poll(&mut self.rtc, at, &mut due) {
                Polled::Transmit(to, datagram) => self.tx.push_back((to, datagram)),
                Polled::Event(event) => self.on_event(event, at),
                Polled::Next(next) => {
                    self.rtc_next = next;
                    self.closed |= next.is_none();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, at: Instant) {
        match event {
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.closed = true,
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                self.flush_messages(at);
            }
            Event::ChannelClose(id) if self.channel == Some(id) => self.channel = None,
            Event::MediaAdded(added) if added.kind == MediaKind::Audio && self.audio.is_none() => {
                let pt = self.rtc.writer(added.mid).and_then(|w| w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()));
                self.audio = pt.map(|pt| (added.mid, pt));
            }
            Event::MediaData(data) if Some((data.mid, data.pt)) == self.audio => {
                self.stats.packets_in += 1;
                let sequence = **data.seq_range.start();
                self.jitter.push(sequence, &data.data);
                self.stats.malformed += self.opus.decode_released(&mut self.jitter, &mut self.popped, &mut self.pending);
            }
            _ => {}
        }
    }

    /// Sends the queued data-channel messages while the channel is open.
    fn flush_messages(&mut self, at: Instant) {
        let Some(id) = self.channel else { return };
        while let Some(message) = self.messages.pop_front() {
            let Some(mut channel) = self.rtc.channel(id) else {
                self.messages.push_front(message);
                return;
            };
            // A full channel buffer drops the message: a live view, not a log.
            if let Ok(true) = channel.write(false, message.as_bytes()) {
                self.stats.messages_out += 1;
            }
            self.drain(at);
        }
    }

    /// Queues a JSON text message for the browser's data channel (sent once it is open; at most
    /// 64 wait, the oldest dropped first).
    pub fn send_message(&mut self, now: Timestamp, message: String) {
        if self.messages.len() == MAX_MESSAGES {
            self.messages.pop_front();
        }
        self.messages.push_back(message);
        self.flush_messages(self.instant(now));
    }

    /// Carries out what the session asks at `now`: audio goes out as one Opus packet per
    /// frame; marks and clears mean nothing here (nothing is buffered past the socket).
    pub fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        let Transmit::Audio(frames) = what else { return };
        if !self.connected {
            return;
        }
        // The RTP clock follows the wall clock across the bot's silences, so the browser plays
        // a new talk spurt when it comes, not late by the silence before it.
        let elapsed = now.as_micros() * 48 / 1000;
        if elapsed > self.media_time + 2 * TICKS {
            self.media_time = elapsed / TICKS * TICKS;
        }
        let at = self.instant(now);
        let Some((mid, pt)) = self.audio else { return };
        for frame in frames.chunks(FRAME) {
            let Ok(packet) = self.opus.encode(frame) else { continue };
            let time = MediaTime::new(self.media_time, Frequency::FORTY_EIGHT_KHZ);
            let written = self.rtc.writer(mid).map(|w| w.write(pt, at, time, packet));
            if let Some(Ok(())) = written {
                self.stats.packets_out += 1;
            }
            self.media_time += TICKS;
            self.drain(at);
        }
        if self.quiet_at.replace(now + Duration::from_millis(200)).is_none() {
            self.send_message(now, r#"{"type":"speaking","speaking":true}"#.to_string());
        }
    }

    /// When [`WebRtcTransport::handle_timeout`] should next run.
    pub fn deadline(&self) -> Option<Timestamp> {
        let rtc = self.rtc_next.map(|at| Timestamp::from_micros(at.saturating_duration_since(self.epoch).as_micros() as u64));
        let silent = (!self.closed).then_some(self.last_rx + SILENT_PEER);
        [rtc, self.quiet_at, silent].into_iter().flatten().min()
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.rtc_next.is_some_and(|at| at <= self.instant(now)) {
            let at = self.instant(now);
            if self.rtc.handle_input(Input::Timeout(at)).is_err() {
                self.closed = true;
            }
            self.drain(at);
        }
        if self.quiet_at.is_some_and(|at| at <= now) {
            self.quiet_at = None;
            self.send_message(now, r#"{"type":"speaking","speaking":false}"#.to_string());
        }
        if now.saturating_since(self.last_rx) >= SILENT_PEER {
            self.closed = true;
        }
        if !self.rtc.is_alive() {
            self.closed = true;
        }
    }

    /// The next datagram to send and where to.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.tx.pop_front()
    }

    /// Closes the connection (DTLS close and SCTP abort go out with the next datagrams).
    pub fn close(&mut self, now: Timestamp) {
        self.rtc.disconnect();
        self.drain(self.instant(now));
        self.closed = true;
    }

    /// The call's media, for its result.
    pub fn media_report(&self) -> serde_json::Value {
        serde_json::json!({
            "codec": "opus",
            "datagrams_in": self.stats.datagrams_in,
            "packets_in": self.stats.packets_in,
            "packets_out": self.stats.packets_out,
            "malformed": self.stats.malformed,
            "lost": self.jitter.stats().lost,
            "messages_out": self.stats.messages_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::webrtc_client::WebRtcClient;
    use super::*;

    const ENGINE: &str = "127.0.0.1:50000";
    const BROWSER: &str = "127.0.0.1:40000";

    fn tone(hz: f64, samples: usize) -> Vec<u8> {
        (0..samples).map(|i| (((i as f64) * 2.0 * std::f64::consts::PI * hz / 8000.0).sin() * 8_000.0) as i16).flat_map(i16::to_le_bytes).collect()
    }

    fn rms(b: &[u8]) -> f64 {
        let n = (b.len() / 2).max(1) as f64;
        (b.chunks_exact(2).map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])).powi(2)).sum::<f64>() / n).sqrt()
    }

    /// The engine's transport and a caller on one virtual clock, their datagrams carried in
    /// memory (`drop`: every n-th datagram from the caller lost).
    struct Pair {
        epoch: Instant,
        now: Timestamp,
        engine: WebRtcTransport,
        client: WebRtcClient,
        heard_by_engine: Vec<u8>,
        lost: u64,
    }

    impl Pair {
        fn new() -> Pair {
            let epoch = Instant::now();
            let (client, offer) = WebRtcClient::new(epoch, BROWSER.parse().expect("addr"), true).expect("client");
            let (engine, answer) = WebRtcTransport::accept(Timestamp::from_micros(0), epoch, ENGINE.parse().expect("addr"), &offer).expect("the offer is answered");
            let mut pair = Pair { epoch, now: Timestamp::from_micros(0), engine, client, heard_by_engine: Vec::new(), lost: 0 };
            pair.client.accept_answer(&answer).expect("the answer is taken");
            pair
        }

        fn at(&self) -> Instant {
            self.epoch + Duration::from_micros(self.now.as_micros())
        }

        /// Carries datagrams both ways until neither side has any.
        fn shuttle(&mut self) {
            loop {
                let mut moved = false;
                while let Some((_, d)) = self.client.poll_transmit() {
                    moved = true;
                    if let WebRtcEvent::Audio { frames, lost, .. } = self.engine.on_datagram(self.now, BROWSER.parse().expect("addr"), &d) {
                        self.heard_by_engine.extend_from_slice(frames);
                        self.lost += lost;
                    }
                }
                let at = self.at();
                while let Some((_, d)) = self.engine.poll_transmit() {
                    moved = true;
                    self.client.on_datagram(at, ENGINE.parse().expect("addr"), &d);
                }
                if !moved {
                    return;
                }
            }
        }

        /// Runs `ms` of virtual time in 5 ms steps, `each` at every 20 ms.
        fn run(&mut self, ms: u64, mut each: impl FnMut(&mut Pair)) {
            for step in 0..ms / 5 {
                self.now += Duration::from_millis(5);
                let at = self.at();
                self.client.handle_timeout(at);
                if self.engine.deadline().is_some_and(|d| d <= self.now) {
                    self.engine.handle_timeout(self.now);
                }
                if step % 4 == 0 {
                    each(self);
                }
                self.shuttle();
            }
        }
    }

    #[test]
    fn a_caller_connects_and_audio_and_messages_flow_both_ways() {
        let mut pair = Pair::new();
        pair.run(2_000, |_| {});
        assert!(pair.engine.connected() && pair.client.connected(), "ICE and DTLS come up on a virtual clock");
        assert!(pair.client.channel_open(), "the caller's data channel opens");
        let caller = tone(300.0, 160 * 100);
        let bot = tone(440.0, 160 * 100);
        let mut frames = 0;
        pair.run(2_000, |p| {
            let at = p.at();
            let now = p.now;
            p.client.send_frame(at, &caller[frames * 320..(frames + 1) * 320]).expect("a frame");
            p.engine.transmit(now, Transmit::Audio(&bot[frames * 320..(frames + 1) * 320]));
            frames += 1;
        });
        assert_eq!(frames, 100);
        let heard = pair.client.take_heard();
        assert!(heard.len() >= 320 * 90, "the caller hears the bot's frames: {} bytes", heard.len());
        assert!(rms(&heard[320 * 10..]) > 3_000.0, "the bot's tone comes through: rms {:.0}", rms(&heard[320 * 10..]));
        assert!(pair.heard_by_engine.len() >= 320 * 90, "the engine hears the caller: {} bytes", pair.heard_by_engine.len());
        assert!(rms(&pair.heard_by_engine[320 * 10..]) > 3_000.0);
        assert_eq!(pair.engine.stats().packets_out, 100);
        pair.run(300, |_| {});
        let messages = pair.client.take_messages();
        assert!(messages.iter().any(|m| m.contains(r#""speaking":true"#)), "the bot's speaking state reaches the page: {messages:?}");
        assert!(messages.iter().any(|m| m.contains(r#""speaking":false"#)), "and its end: {messages:?}");
        pair.engine.send_message(pair.now, r#"{"type":"transcript","role":"bot","text":"hello"}"#.into());
        pair.shuttle();
        assert_eq!(pair.client.take_messages(), [r#"{"type":"transcript","role":"bot","text":"hello"}"#]);
    }

    #[test]
    fn a_silent_caller_ends_the_call_and_garbage_is_counted() {
        let mut pair = Pair::new();
        pair.run(1_000, |_| {});
        assert!(pair.engine.connected());
        let before = pair.engine.stats().malformed;
        for garbage in [&b""[..], b"\x00\x01", &[0x80; 40], &[0x16; 200], &[0xff; 1500]] {
            assert_eq!(pair.engine.on_datagram(pair.now, BROWSER.parse().expect("addr"), garbage), WebRtcEvent::Nothing);
        }
        assert!(pair.engine.stats().malformed > before, "unreadable datagrams are counted");
        assert!(!pair.engine.closed(), "and end nothing");
        // The caller goes away: nothing more arrives.
        let mut now = pair.now;
        for _ in 0..40 {
            now += Duration::from_secs(1);
            pair.engine.handle_timeout(now);
            while pair.engine.poll_transmit().is_some() {}
        }
        assert!(pair.engine.closed(), "a caller silent for {SILENT_PEER:?} is gone");
    }

    #[test]
    fn a_repeated_dtls_record_before_the_connection_is_dropped() {
        // Two records of epoch 1 in one datagram, then the second again alone.
        let record = |seq: u8| [&[22u8, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, seq, 0, 2][..], &[1, 2]].concat();
        let mut seen = HandshakeRecords::default();
        assert!(seen.first_seen(&[record(1), record(2)].concat()));
        assert!(!seen.first_seen(&record(2)), "a duplicate");
        assert!(seen.first_seen(&record(3)));
        let epoch0 = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0];
        assert!(seen.first_seen(&epoch0) && seen.first_seen(&epoch0), "epoch 0 resends are dimpl's to take");
        assert!(seen.first_seen(&[0, 1, 0, 0]) && seen.first_seen(&[0x80; 12]), "STUN and RTP pass");
        assert!(seen.first_seen(&[22, 0xfe]) && seen.first_seen(&[22, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0xff, 0xff]), "short and overlong records do not panic");
    }

    #[test]
    fn the_answer_asks_for_narrowband_opus() {
        let (_, offer) = WebRtcClient::new(Instant::now(), BROWSER.parse().expect("addr"), false).expect("client");
        let (_, answer) = WebRtcTransport::accept(Timestamp::from_micros(0), Instant::now(), ENGINE.parse().expect("addr"), &offer).expect("answered");
        let fmtp: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=fmtp:")).collect();
        assert!(fmtp.iter().any(|l| l.ends_with(";maxplaybackrate=8000;sprop-maxcapturerate=8000")), "{answer}");
        assert!(!answer.contains("transport-wide-cc"), "no congestion feedback for one audio stream: {answer}");
        let bare = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(narrowband(bare).as_deref(), Some("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 maxplaybackrate=8000;sprop-maxcapturerate=8000\r\n"));
        assert_eq!(narrowband("v=0\r\na=rtpmap:0 PCMU/8000\r\n"), None);
    }

    #[test]
    fn offers_without_opus_or_sdp_are_refused() {
        let epoch = Instant::now();
        let local = ENGINE.parse().expect("addr");
        assert!(matches!(WebRtcTransport::accept(Timestamp::from_micros(0), epoch, local, "not sdp"), Err(WebRtcError::Offer(_))));
        let (_, offer) = WebRtcClient::new(epoch, BROWSER.parse().expect("addr"), false).expect("client");
        let pcmu_only = offer.replace("opus/48000/2", "PCMU/8000");
        assert!(WebRtcTransport::accept(Timestamp::from_micros(0), epoch, local, &pcmu_only).is_err(), "no Opus, no call");
    }
}
