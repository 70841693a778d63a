//! The caller's side of a WebRTC call, sans-IO, on the same stack as the engine's
//! [`WebRtcTransport`](super::webrtc::WebRtcTransport): an offer with one Opus audio track and
//! a data channel, full ICE (the engine is ICE-lite), DTLS as the client. For the load
//! generator and the tests, which play a browser.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

use super::opus::{Opus, OpusError};
use super::webrtc::{Polled, poll};

/// Why the client could not start or take the answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// str0m refused.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// libopus could not start.
    #[error(transparent)]
    Codec(#[from] OpusError),
}

/// One caller's WebRTC session.
pub struct WebRtcClient {
    rtc: Box<Rtc>,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// The instant the client was made at (its clock never goes back before it).
    started: Instant,
    mid: Mid,
    audio: Option<(Mid, Pt)>,
    opus: Box<Opus>,
    decode: bool,
    media_time: u64,
    next: Option<Instant>,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    /// What the engine sent, decoded to 8 kHz little-endian samples.
    heard: Vec<u8>,
    packets_in: u64,
    messages: Vec<String>,
    connected: bool,
    channel_open: bool,
}

impl std::fmt::Debug for WebRtcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcClient").field("local", &self.local).field("connected", &self.connected).finish_non_exhaustive()
    }
}

impl WebRtcClient {
    /// A caller whose socket is at `local`, and its SDP offer. `decode`: decode what the
    /// engine sends (tests listen; a load client may only count packets).
    pub fn new(now: Instant, local: SocketAddr, decode: bool) -> Result<(WebRtcClient, String), ClientError> {
        let mut rtc = Rtc::builder().clear_codecs().enable_opus(true, false).set_extension_map(super::webrtc::extensions()).set_stats_interval(None).build(now);
        let candidate = Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.add_channel("cxb".to_string());
        let (offer, pending) = change.apply().ok_or_else(|| ClientError::Rtc("no offer".into()))?;
        let client = WebRtcClient {
            rtc: Box::new(rtc),
            local,
            pending: Some(pending),
            started: now,
            mid,
            audio: None,
            opus: Box::new(Opus::new()?),
            decode,
            media_time: 0,
            next: None,
            tx: VecDeque::new(),
            heard: Vec::new(),
            packets_in: 0,
            messages: Vec::new(),
            connected: false,
            channel_open: false,
        };
        Ok((client, offer.to_sdp_string()))
    }

    /// Takes the engine's SDP answer; ICE and DTLS start.
    pub fn accept_answer(&mut self, answer: &str) -> Result<(), ClientError> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| ClientError::Rtc(e.to_string()))?;
        let pending = self.pending.take().ok_or_else(|| ClientError::Rtc("the answer came twice".into()))?;
        self.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| ClientError::Rtc(e.to_string()))?;
        self.drain(self.started);
        let pt = self.rtc.writer(self.mid).and_then(|w| w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()));
        self.audio = pt.map(|pt| (self.mid, pt));
        if self.audio.is_none() {
            return Err(ClientError::Rtc("the answer has no Opus".into()));
        }
        Ok(())
    }

    /// Whether ICE and DTLS are up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Whether the engine's data channel is open.
    pub fn channel_open(&self) -> bool {
        self.channel_open
    }

    /// Opus packets received.
    pub fn packets_in(&self) -> u64 {
        self.packets_in
    }

    /// The engine's audio heard so far (8 kHz little-endian samples), taken.
    pub fn take_heard(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.heard)
    }

    /// The data-channel messages received so far, taken.
    pub fn take_messages(&mut self) -> Vec<String> {
        std::mem::take(&mut self.messages)
    }

    /// Reads one datagram from `from`.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if let Ok(receive) = Receive::new(Protocol::Udp, from, self.local, datagram) {
            let _ = self.rtc.handle_input(Input::Receive(now, receive));
            self.drain(now);
        }
    }

    /// Sends one 20 ms frame of 8 kHz little-endian samples (320 bytes), Opus-encoded.
    pub fn send_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), ClientError> {
        let packet = self.opus.encode(frame)?.to_vec();
        self.send_packet(now, &packet);
        Ok(())
    }

    /// Sends one 20 ms Opus packet as it is.
    pub fn send_packet(&mut self, now: Instant, packet: &[u8]) {
        let Some((mid, pt)) = self.audio.filter(|_| self.connected) else { return };
        let time = MediaTime::new(self.media_time, Frequency::FORTY_EIGHT_KHZ);
        self.media_time += 960;
        if let Some(writer) = self.rtc.writer(mid) {
            let _ = writer.write(pt, now, time, packet);
        }
        self.drain(now);
    }

    /// When [`WebRtcClient::handle_timeout`] should next run.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_some_and(|at| at <= now) {
            let _ = self.rtc.handle_input(Input::Timeout(now));
            self.drain(now);
        }
    }

    /// The next datagram to send and where to.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.tx.pop_front()
    }

    /// Polls str0m until it has nothing more, running what is due by `at` on the way (as the
    /// engine's side does).
    fn drain(&mut self, at: Instant) {
        let mut due = 0;
        loop {
            match poll(&mut self.rtc, at, &mut due) {
                Polled::Transmit(to, datagram) => self.tx.push_back((to, datagram)),
                Polled::Event(event) => self.on_event(event),
                Polled::Next(next) => {
                    self.next = next;
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::MediaData(data) => {
                self.packets_in += 1;
                if self.decode {
                    let _ = self.opus.decode(Some(&data.data), &mut self.heard);
                }
            }
            Event::ChannelOpen(..) => self.channel_open = true,
            Event::ChannelData(data) if !data.binary => self.messages.push(String::from_utf8_lossy(&data.data).into_owned()),
            _ => {}
        }
    }
}
