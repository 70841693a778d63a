//! One call: a transport ([`WsTransport`] for a carrier's WebSocket, [`RtpTransport`] for a
//! SIP call's media) turns the wire into call events and the [`Session`]'s transmits back into
//! the wire; this file drives the two and turns the session's events into the worker's
//! metrics. The worker owns the sockets and the timer; everything here runs the same under a
//! test's virtual clock.

use std::time::Duration;

use cxb_contract::result::CallResult;
use cxb_media::Timestamp;
use cxb_media::vad::VadConfig;
use cxb_pipeline::provider::Events;

use crate::agent::Agent;
use crate::bots::BotKind;
use crate::error::EndReason;
use crate::metrics::WorkerMetrics;
use crate::protocol::Protocol;
use crate::results::Recording;
use crate::session::{Output, Session, SessionConfig, SessionEvent};
use crate::transport::opus::OpusError;
use crate::transport::webrtc::{WebRtcEvent, WebRtcTransport};
use crate::transport::{RtpConfig, RtpEvent, RtpTransport, Transport, WsEvent, WsTransport};

/// Settings of a call.
#[derive(Debug, Clone, Copy)]
pub struct CallConfig {
    /// The carrier protocol.
    pub protocol: Protocol,
    /// The bot.
    pub bot: BotKind,
    /// Voice detection.
    pub vad: VadConfig,
    /// Silence that ends the caller's turn.
    pub end_of_turn: Duration,
    /// Most frames the playout releases at once when catching up.
    pub max_burst: usize,
    /// Longest utterance `turn-echo` records.
    pub max_utterance: Duration,
}

impl CallConfig {
    /// Defaults for `bot` over `protocol`.
    pub fn new(protocol: Protocol, bot: BotKind) -> CallConfig {
        let session = SessionConfig::default();
        CallConfig {
            protocol,
            bot,
            vad: session.vad,
            end_of_turn: session.end_of_turn,
            max_burst: session.max_burst,
            max_utterance: Duration::from_secs(8),
        }
    }

    fn session(&self) -> SessionConfig {
        SessionConfig { vad: self.vad, end_of_turn: self.end_of_turn, max_burst: self.max_burst, keys_out_of_band: false }
    }
}

/// Counters of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// 20 ms frames taken in.
    pub frames_in: u64,
    /// 20 ms frames sent out.
    pub frames_out: u64,
    /// Marks sent to the carrier.
    pub marks_sent: u64,
    /// Marks the carrier echoed back.
    pub marks_confirmed: u64,
    /// `clear` messages sent (barge-in).
    pub clears_sent: u64,
    /// DTMF digits received.
    pub dtmf: u64,
}

/// One live call over transport `T`.
#[derive(Debug)]
pub struct Call<T = WsTransport> {
    transport: T,
    session: Session,
    /// The session's next deadline, as its last output said.
    next: Option<Timestamp>,
    end: Option<EndReason>,
    /// When the provider event behind the frames just released arrived.
    wire_sent: Option<std::time::Instant>,
}

/// The bot a call's config names: a built-in one, or the AI agent given.
pub(crate) fn bot_for(config: &CallConfig, agent: Option<Agent>) -> Box<dyn crate::session::Bot> {
    match agent {
        Some(agent) => Box::new(agent),
        None => crate::bots::builtin(config.bot, config.max_utterance),
    }
}

impl Call<WsTransport> {
    /// A call with one of the built-in bots, waiting for the carrier's `start`.
    pub fn new(config: CallConfig) -> Call {
        Call::over_ws(config, None)
    }

    /// A call answered by an AI bot.
    pub fn with_agent(config: CallConfig, agent: Agent) -> Call {
        Call::over_ws(config, Some(agent))
    }

    fn over_ws(config: CallConfig, agent: Option<Agent>) -> Call {
        let encoding = config.protocol.default_format().encoding;
        Call::with_transport(WsTransport::new(config.protocol), Session::new(config.session(), encoding, bot_for(&config, agent)))
    }

    /// Handles one text frame received at `now`. An error ends the call with that reason.
    pub fn on_text(&mut self, now: Timestamp, text: &str, metrics: &WorkerMetrics) -> Result<(), EndReason> {
        match self.transport.on_text(text)? {
            WsEvent::Nothing => return Ok(()),
            WsEvent::Start(start, encoding) => self.session.start(now, encoding, &start),
            WsEvent::Audio { frames, late, lost } => {
                metrics.add_jitter(late, lost);
                let before = self.session.stats().frames_in;
                self.session.caller_audio(now, frames);
                metrics.frames_in.add(self.session.stats().frames_in - before);
            }
            WsEvent::Dtmf(digit) => self.session.dtmf(now, digit),
            WsEvent::Mark => self.session.mark_confirmed(),
            WsEvent::Stop => return Err(EndReason::Stopped),
        }
        self.drain(now, None, metrics);
        Ok(())
    }

    /// The next text frame to send to the carrier.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transport.poll_transmit()
    }

    /// Returns a sent frame's buffer for reuse.
    pub fn recycle(&mut self, buf: String) {
        self.transport.recycle(buf);
    }
}

impl Call<RtpTransport> {
    /// A SIP call's media as `rtp` negotiated it, its bot started at `now` (the call is
    /// answered): `start` says who called whom.
    /// An error only if the codec (libopus) cannot start.
    pub fn over_rtp(now: Timestamp, unix_ms: u64, config: CallConfig, agent: Option<Agent>, rtp: RtpConfig, start: &crate::protocol::Start) -> Result<Call<RtpTransport>, OpusError> {
        let session = SessionConfig { keys_out_of_band: rtp.dtmf.is_some(), ..config.session() };
        let encoding = rtp.codec.session_encoding();
        let mut call = Call::with_transport(RtpTransport::new(rtp)?, Session::new(session, encoding, bot_for(&config, agent)));
        call.transport.start(now, unix_ms);
        call.session.start(now, encoding, start);
        Ok(call)
    }

    /// Handles one datagram from `from` received at `now`.
    pub fn on_datagram(&mut self, now: Timestamp, from: std::net::SocketAddr, datagram: &[u8], metrics: &WorkerMetrics) {
        match self.transport.on_datagram(now, from, datagram) {
            RtpEvent::Nothing => return,
            RtpEvent::Audio { frames, late, lost } => {
                metrics.add_jitter(late, lost);
                let before = self.session.stats().frames_in;
                self.session.caller_audio(now, frames);
                metrics.frames_in.add(self.session.stats().frames_in - before);
            }
            RtpEvent::Dtmf(digit) => self.session.dtmf(now, digit),
        }
        self.drain(now, None, metrics);
    }

    /// A key pressed by other means (SIP INFO).
    pub fn on_dtmf(&mut self, now: Timestamp, digit: char, metrics: &WorkerMetrics) {
        self.session.dtmf(now, digit);
        self.drain(now, None, metrics);
    }

    /// The call's RTP, for the engine's own transfer leg once the bot is done.
    pub fn rtp(&mut self) -> &mut RtpTransport {
        &mut self.transport
    }

    /// The call's media quality, for its result: RTP counts and what RTCP says.
    pub fn media_report(&self) -> serde_json::Value {
        let (rtp, rtcp) = (self.transport.stats(), self.transport.rtcp_stats());
        serde_json::json!({
            "codec": self.transport.codec_name(),
            "packets_in": rtp.packets_in,
            "packets_out": rtp.packets_out,
            "lost": rtcp.lost,
            "jitter_ms": (rtcp.jitter_ms * 10.0).round() / 10.0,
            "peer_fraction_lost": rtcp.peer_fraction_lost,
            "peer_jitter_ms": rtcp.peer_jitter_ms,
            "rtcp_sent": rtcp.sent,
            "rtcp_received": rtcp.received,
        })
    }
}

impl Call<WebRtcTransport> {
    /// A browser's call over `transport` (its offer answered), `bot` started at `now`:
    /// the session hears and speaks 8 kHz linear samples, which Opus carries.
    pub fn over_webrtc(now: Timestamp, config: CallConfig, bot: Box<dyn crate::session::Bot>, transport: WebRtcTransport, start: &crate::protocol::Start) -> Call<WebRtcTransport> {
        let encoding = cxb_codecs::Encoding::L16;
        let mut call = Call::with_transport(transport, Session::new(config.session(), encoding, bot));
        call.session.start(now, encoding, start);
        call
    }

    /// Handles one datagram from `from` received at `now`.
    pub fn on_datagram(&mut self, now: Timestamp, from: std::net::SocketAddr, datagram: &[u8], metrics: &WorkerMetrics) {
        if let WebRtcEvent::Audio { frames, late, lost } = self.transport.on_datagram(now, from, datagram) {
            metrics.add_jitter(late, lost);
            let before = self.session.stats().frames_in;
            self.session.caller_audio(now, frames);
            metrics.frames_in.add(self.session.stats().frames_in - before);
        }
        self.drain(now, None, metrics);
    }

    /// The call's WebRTC session.
    pub fn webrtc(&mut self) -> &mut WebRtcTransport {
        &mut self.transport
    }

    /// Transcript lines the browser has not been sent yet, from line `from` on, as the data
    /// channel's JSON messages.
    pub fn transcript_since(&mut self, from: usize) -> Vec<String> {
        self.session.bot().transcript_since(from)
    }
}

impl<T: Transport> Call<T> {
    fn with_transport(transport: T, session: Session) -> Call<T> {
        Call { transport, session, next: None, end: None, wire_sent: None }
    }

    /// The queue the bot's own tasks report to, if it has any.
    pub fn events(&mut self) -> Option<Events> {
        self.session.bot().events().cloned()
    }

    /// How the call ended on its own (the bot hung up or handed over, audio the media path
    /// could not take), once it has.
    pub fn end(&self) -> Option<EndReason> {
        self.end
    }

    /// The call is over: the bot's result and recording, if it keeps one.
    pub fn finish(&mut self, now: Timestamp, unix_ms: u64, call_id: &str, reason: EndReason) -> Option<(CallResult, Option<Recording>)> {
        self.session.bot().finish(now, unix_ms, call_id, reason)
    }

    /// When the provider event behind the frames last released arrived (taken once).
    pub fn take_wire_sent(&mut self) -> Option<std::time::Instant> {
        self.wire_sent.take()
    }

    /// Where the bot handed the call, when it did.
    pub fn transfer_target(&mut self) -> Option<String> {
        self.session.bot().transfer_target().map(str::to_string)
    }

    /// The call's counters.
    pub fn stats(&self) -> CallStats {
        let (s, (marks_sent, clears_sent)) = (self.session.stats(), self.transport.marks_and_clears());
        CallStats {
            frames_in: s.frames_in,
            frames_out: s.frames_out,
            marks_sent,
            marks_confirmed: s.marks_confirmed,
            clears_sent,
            dtmf: s.dtmf,
        }
    }

    /// Handles the bot's queued events (provider replies); `at` is `now` on the clock the
    /// providers stamp their events with.
    pub fn on_events(&mut self, now: Timestamp, at: std::time::Instant, metrics: &WorkerMetrics) {
        self.session.wake(now);
        self.drain(now, Some(at), metrics);
    }

    /// Runs what is due at `now`.
    pub fn on_timeout(&mut self, now: Timestamp, metrics: &WorkerMetrics) {
        self.session.handle_timeout(now);
        self.drain(now, None, metrics);
        self.transport.handle_timeout(now);
    }

    /// Carries the session's outputs to the transport and the metrics (provider dispatch
    /// latency when the instant of `now` is given: only provider events lead to requests).
    fn drain(&mut self, now: Timestamp, at: Option<std::time::Instant>, metrics: &WorkerMetrics) {
        loop {
            match self.session.poll_output() {
                Output::Transmit(what) => self.transport.transmit(now, what),
                Output::Event(SessionEvent::Released { released, at }) => {
                    for i in 0..released.frames {
                        metrics.lateness.observe(released.lateness(at, i));
                    }
                    metrics.frames_out.add(released.frames as u64);
                }
                Output::Event(SessionEvent::Dispatched(arrived)) => {
                    if let Some(at) = at {
                        metrics.agent_dispatch.observe(at.saturating_duration_since(arrived));
                    }
                }
                Output::Event(SessionEvent::FirstAudio(arrived)) => self.wire_sent = Some(arrived),
                Output::Timeout(at) => {
                    self.next = at;
                    return;
                }
                Output::End(reason) => {
                    self.end.get_or_insert(reason);
                }
            }
        }
    }

    /// When [`Call::on_timeout`] should next run, if the call has anything scheduled.
    pub fn deadline(&self) -> Option<Timestamp> {
        [self.next, self.transport.deadline()].into_iter().flatten().min()
    }

}

#[cfg(test)]
mod tests {
    use super::*;
    use cxb_codecs::payload;

    fn speech_then_silence() -> Vec<Vec<u8>> {
        let pcm = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../codecs/tests/fixtures/speech-8k.s16"
        ))
        .expect("fixture");
        let mut frames: Vec<Vec<u8>> = pcm
            .chunks_exact(320)
            .map(|f| {
                f.chunks_exact(2)
                    .map(|b| cxb_codecs::g711::encode_mulaw(i16::from_le_bytes([b[0], b[1]])))
                    .collect()
            })
            .collect();
        frames.extend(std::iter::repeat_n(vec![0xFF; 160], 100));
        frames
    }

    /// After the call runs what is due, its next deadline is in the future (or absent): a
    /// deadline left in the past would make the worker spin.
    #[test]
    fn deadlines_never_stay_in_the_past() {
        for bot in [BotKind::Echo, BotKind::TurnEcho] {
            let metrics = WorkerMetrics::default();
            let mut call = Call::new(CallConfig::new(Protocol::Twilio, bot));
            call.on_text(
                Timestamp::ZERO,
                r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}"#,
                &metrics,
            )
            .expect("start");
            let mut b64 = String::new();
            for (i, frame) in speech_then_silence().iter().enumerate() {
                let now = Timestamp::from_millis(20 * i as u64);
                b64.clear();
                payload::encode_into(frame, &mut b64);
                let msg = format!(
                    r#"{{"event":"media","streamSid":"MZ1","media":{{"chunk":"{}","payload":"{b64}"}}}}"#,
                    i + 1
                );
                call.on_text(now, &msg, &metrics).expect("media");
                while let Some(at) = call.deadline().filter(|at| *at <= now) {
                    call.on_timeout(now, &metrics);
                    assert!(
                        call.deadline().is_none_or(|next| next > now || next > at),
                        "{bot:?}: deadline stuck at {at:?}"
                    );
                    if call.deadline() == Some(at) {
                        break;
                    }
                }
                assert!(
                    call.deadline().is_none_or(|at| at > now),
                    "{bot:?} frame {i}: deadline {:?} not after {now:?}",
                    call.deadline()
                );
                while call.poll_transmit().is_some() {}
            }
            assert!(call.stats().frames_out > 0);
        }
    }
}
