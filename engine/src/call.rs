//! One call, sans-IO: the carrier's text frames and the clock go in; text frames for the
//! carrier and the call's end come out. The worker owns the socket and the timer; everything
//! that decides what to send lives here and runs the same under a test's virtual clock.
//!
//! Inbound audio is base64-decoded, ordered by the jitter buffer where the carrier numbers
//! its frames, cut into 20 ms frames (Exotel sends ~100 ms chunks) and run through the media
//! path; the bot decides what goes out through the playout clock.

use std::collections::VecDeque;
use std::time::Duration;

use cxb_codecs::{Encoding, FrameDuration, Hz16, Pcm, SampleRate, payload};
use cxb_media::Timestamp;
use cxb_media::jitter::JitterBuffer;
use cxb_media::path::{Inbound, InboundConfig, Outbound};
use cxb_media::playout::PlayoutEvent;
use cxb_media::turn::TurnEvent;
use cxb_media::vad::VadConfig;

use crate::agent::{Agent, AgentEnd};
use crate::error::{EndReason, ProtocolErrorKind};
use crate::bots::BotKind;
use crate::metrics::WorkerMetrics;
use crate::protocol::{CarrierEvent, ParseError, Protocol, StreamSid, exotel};
use cxb_pipeline::conversation::Action;

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
        CallConfig {
            protocol,
            bot,
            vad: VadConfig::default(),
            end_of_turn: Duration::from_millis(700),
            max_burst: 5,
            max_utterance: Duration::from_secs(8),
        }
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

enum Phase {
    AwaitingStart,
    Streaming { sid: StreamSid, encoding: Encoding },
}

/// `turn-echo`'s memory: recent audio before a turn is noticed, and the turn so far.
struct Recorder {
    preroll: VecDeque<i16>,
    utterance: Vec<i16>,
    limit: usize,
}

/// Playout room for the echo bots: a second, so a burst of inbound audio (Exotel's 100 ms
/// chunks, a network hiccup) is delayed rather than dropped.
const ECHO_QUEUE: Duration = Duration::from_secs(1);

/// How long Exotel audio short of a full chunk waits for more before it is sent padded:
/// longer than Exotel's ~100 ms between inbound chunks plus jitter, so a steady stream is
/// never padded (padding mid-stream is an audible gap); measured: 100 ms padded 2% of frames.
const EXOTEL_TAIL: Duration = Duration::from_millis(250);

/// Audio the echo bots let wait ahead of the playout schedule.
const ECHO_LEAD: Duration = Duration::from_millis(60);

const PREROLL: usize = 16_000 * 3 / 10; // 300 ms at 16 kHz

/// Playout room for an AI bot's replies; synthesis that runs ahead of playback waits in the
/// call's backlog rather than in the playout queue.
const AGENT_QUEUE: Duration = Duration::from_secs(4);

/// Bot audio and marks waiting for room in the playout queue, in order.
#[derive(Debug)]
enum Queued {
    Audio(Vec<u8>),
    Mark(u64),
}

/// One live call.
pub struct Call {
    config: CallConfig,
    phase: Phase,
    inbound: Inbound,
    outbound: Outbound<u64>,
    jitter: JitterBuffer<u8>,
    frame_bytes: usize,
    /// Inbound bytes not yet making a whole 20 ms frame.
    pending: Vec<u8>,
    decoded: Vec<u8>,
    released: Vec<u8>,
    chunker: exotel::Chunker,
    /// When Exotel audio left waiting for a full chunk is sent padded, if nothing follows.
    flush_at: Option<Timestamp>,
    chunk: Vec<u8>,
    b64: String,
    tx: VecDeque<String>,
    spare: Vec<String>,
    recorder: Option<Recorder>,
    scratch16: Pcm<Hz16>,
    next_mark: u64,
    stats: CallStats,
    start_info: Option<Box<crate::protocol::Start>>,
    agent: Option<Box<Agent>>,
    backlog: VecDeque<Queued>,
    stream_start: Option<Timestamp>,
    /// When the provider event behind the frames just released arrived.
    wire_sent: Option<std::time::Instant>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("bot", &self.config.bot)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Call {
    /// A call waiting for the carrier's `start`.
    pub fn new(config: CallConfig) -> Call {
        let encoding = config.protocol.default_format().encoding;
        Call {
            config,
            phase: Phase::AwaitingStart,
            inbound: Self::inbound(config, encoding),
            outbound: Self::outbound(config, encoding),
            jitter: Self::jitter(encoding),
            frame_bytes: Self::frame_bytes(encoding),
            pending: Vec::new(),
            decoded: Vec::new(),
            released: Vec::new(),
            chunker: exotel::Chunker::default(),
            flush_at: None,
            chunk: Vec::new(),
            b64: String::new(),
            tx: VecDeque::new(),
            spare: Vec::new(),
            recorder: (config.bot == BotKind::TurnEcho).then(|| Recorder {
                preroll: VecDeque::with_capacity(PREROLL),
                utterance: Vec::new(),
                limit: (config.max_utterance.as_millis() as usize) * 16,
            }),
            scratch16: Pcm::with_capacity(FrameDuration::MS_20),
            next_mark: 0,
            stats: CallStats::default(),
            start_info: None,
            agent: None,
            backlog: VecDeque::new(),
            stream_start: None,
            wire_sent: None,
        }
    }

    /// A call answered by an AI bot.
    pub fn with_agent(config: CallConfig, agent: Agent) -> Call {
        let mut call = Call::new(config);
        call.agent = Some(Box::new(agent));
        call
    }

    /// The AI bot, if this call has one.
    pub fn agent(&mut self) -> Option<&mut Agent> {
        self.agent.as_deref_mut()
    }

    /// How the bot wants the call to end, once it does.
    pub fn agent_end(&self) -> Option<EndReason> {
        self.agent.as_ref()?.end().map(|end| match end {
            AgentEnd::Hangup(_) => EndReason::BotHangup,
            AgentEnd::Transfer(_) => EndReason::Transferred,
        })
    }

    /// When the provider event behind the frames last released arrived (taken once).
    pub fn take_wire_sent(&mut self) -> Option<std::time::Instant> {
        self.wire_sent.take()
    }

    /// Handles the providers' queued events.
    pub fn on_events(&mut self, now: Timestamp, metrics: &WorkerMetrics) {
        while let Some((arrived, event)) = self.agent.as_ref().and_then(|a| a.events().pop()) {
            if let Some(agent) = self.agent.as_mut() {
                agent.conversation().on_event(now, event);
            }
            if self.run_agent(Some(arrived)) {
                metrics.agent_dispatch.observe(arrived.elapsed());
            }
        }
        self.pump(now, metrics);
    }

    /// Carries out what the conversation asks; returns whether a provider request went out.
    fn run_agent(&mut self, arrived: Option<std::time::Instant>) -> bool {
        let encoding = match self.phase {
            Phase::Streaming { encoding, .. } => encoding,
            Phase::AwaitingStart => self.config.protocol.default_format().encoding,
        };
        let mut requested = false;
        while let Some(action) = self.agent.as_mut().and_then(|a| a.conversation().poll_action()) {
            match action {
                Action::Play(audio) => {
                    // Audio into an empty playout (a sentence's start mark may wait ahead
                    // of it) on a streaming call: its first frame measures the engine.
                    let idle = matches!(self.phase, Phase::Streaming { .. })
                        && !self.backlog.iter().any(|q| matches!(q, Queued::Audio(_)))
                        && self.outbound.playout().queued() == 0;
                    let Some(agent) = self.agent.as_mut() else {
                        break;
                    };
                    let mut bytes = Vec::with_capacity(audio.len());
                    agent.to_carrier(&audio, encoding, &mut bytes);
                    if idle && let Some(t) = arrived {
                        agent.wire_pending.get_or_insert(t);
                    }
                    self.backlog.push_back(Queued::Audio(bytes));
                }
                Action::Mark(id) => self.backlog.push_back(Queued::Mark(id)),
                Action::ClearPlayout => self.barge_in(),
                Action::Transfer { destination } => {
                    if let Some(agent) = self.agent.as_mut() {
                        agent.transfer(&destination, self.start_info.as_deref());
                    }
                }
                other => {
                    requested |= matches!(
                        other,
                        Action::Llm { .. }
                            | Action::Synthesize { .. }
                            | Action::RunTool(_)
                            | Action::SttFinalize
                    );
                    if let Some(agent) = self.agent.as_mut() {
                        agent.execute(other);
                    }
                }
            }
        }
        self.feed();
        requested
    }

    /// Moves bot audio and marks from the backlog into the playout queue as room allows (not
    /// while answering-machine detection holds the bot's audio).
    fn feed(&mut self) {
        if !matches!(self.phase, Phase::Streaming { .. }) || self.agent.as_ref().is_some_and(|a| a.holds_playout()) {
            return;
        }
        while let Some(item) = self.backlog.front_mut() {
            match item {
                Queued::Audio(bytes) => {
                    let taken = self.outbound.playout().push(bytes);
                    if taken < bytes.len() {
                        bytes.drain(..taken);
                        return;
                    }
                }
                Queued::Mark(id) => {
                    let id = *id;
                    self.outbound.playout().pad_to_frame();
                    self.outbound.playout().mark(id);
                }
            }
            self.backlog.pop_front();
        }
    }

    fn inbound(config: CallConfig, encoding: Encoding) -> Inbound {
        Inbound::new(InboundConfig {
            encoding,
            vad: config.vad,
            end_of_turn: config.end_of_turn,
        })
    }

    /// The playout side: room for a whole recorded turn (turn-echo) or a second (echo). The
    /// echo bots let at most `ECHO_LEAD` wait ahead of the schedule, passing inbound bursts on
    /// rather than letting them become standing latency; a played-back turn is paced.
    fn outbound(config: CallConfig, encoding: Encoding) -> Outbound<u64> {
        let (capacity, lead) = match config.bot {
            BotKind::TurnEcho => (config.max_utterance + Duration::from_millis(200), None),
            BotKind::Agent => (AGENT_QUEUE, None),
            BotKind::Echo | BotKind::Fault => (ECHO_QUEUE, Some(ECHO_LEAD)),
        };
        Outbound::new(encoding, capacity, config.max_burst, lead)
    }

    fn jitter(encoding: Encoding) -> JitterBuffer<u8> {
        JitterBuffer::new(3, 64, encoding.silence_byte())
    }

    fn frame_bytes(encoding: Encoding) -> usize {
        SampleRate::Hz8000.samples_per(FrameDuration::MS_20) * encoding.bytes_per_sample()
    }

    /// The call's counters.
    pub fn stats(&self) -> CallStats {
        self.stats
    }

    /// The carrier's `start`, once received.
    pub fn start_info(&self) -> Option<&crate::protocol::Start> {
        self.start_info.as_deref()
    }

    /// Handles one text frame received at `now`. An error ends the call with that reason.
    pub fn on_text(
        &mut self,
        now: Timestamp,
        text: &str,
        metrics: &WorkerMetrics,
    ) -> Result<(), EndReason> {
        let event = self.config.protocol.parse(text).map_err(|e| {
            EndReason::Protocol(match e {
                ParseError::UnsupportedFormat(_) => ProtocolErrorKind::UnsupportedFormat,
                _ => ProtocolErrorKind::MalformedJson,
            })
        })?;
        match event {
            CarrierEvent::Connected | CarrierEvent::Clear | CarrierEvent::Unknown { .. } => Ok(()),
            CarrierEvent::Start(start) => {
                if matches!(self.phase, Phase::AwaitingStart) {
                    let format = start
                        .media_format
                        .unwrap_or(self.config.protocol.default_format());
                    if format.encoding != self.config.protocol.default_format().encoding {
                        self.reformat(format.encoding);
                    }
                    self.phase = Phase::Streaming {
                        sid: start.stream_sid.clone(),
                        encoding: format.encoding,
                    };
                    if let Some(agent) = self.agent.as_mut() {
                        agent.on_start(&start);
                    }
                    self.start_info = Some(start);
                    self.stream_start = Some(now);
                    if self.agent.is_some() {
                        self.run_agent(None);
                        self.pump(now, metrics);
                    }
                }
                Ok(())
            }
            CarrierEvent::Media {
                sequence,
                chunk,
                payload: text,
                ..
            } => {
                let Phase::Streaming { encoding, .. } = self.phase else {
                    return Err(EndReason::Protocol(ProtocolErrorKind::MediaBeforeStart));
                };
                self.decoded.clear();
                payload::decode_into(&text, &mut self.decoded)
                    .map_err(|_| EndReason::Protocol(ProtocolErrorKind::BadBase64))?;
                if encoding == Encoding::L16 && !self.decoded.len().is_multiple_of(2) {
                    return Err(EndReason::Protocol(ProtocolErrorKind::BadAudio));
                }
                self.take_media(now, chunk.or(sequence), metrics)
            }
            CarrierEvent::Dtmf { digit, .. } => {
                self.stats.dtmf += 1;
                if self.config.bot == BotKind::Fault {
                    panic!("fault bot: injected panic on DTMF");
                }
                if let (Some(agent), Some(digit)) = (self.agent.as_mut(), digit.chars().next()) {
                    agent.conversation().on_dtmf(now, digit);
                }
                Ok(())
            }
            CarrierEvent::Mark { .. } => {
                self.stats.marks_confirmed += 1;
                Ok(())
            }
            CarrierEvent::Stop { .. } => Err(EndReason::Stopped),
        }
    }

    /// Rebuilds the encoding-dependent parts for a stream that announced another encoding.
    fn reformat(&mut self, encoding: Encoding) {
        self.inbound = Self::inbound(self.config, encoding);
        self.outbound = Self::outbound(self.config, encoding);
        self.jitter = Self::jitter(encoding);
        self.frame_bytes = Self::frame_bytes(encoding);
    }

    fn take_media(
        &mut self,
        now: Timestamp,
        seq: Option<u64>,
        metrics: &WorkerMetrics,
    ) -> Result<(), EndReason> {
        match seq {
            Some(seq) => {
                let before = self.jitter.stats();
                self.jitter.push(seq, &self.decoded);
                while self.jitter.pop(&mut self.pending).is_some() {}
                let after = self.jitter.stats();
                metrics.add_jitter(after.late - before.late, after.lost - before.lost);
            }
            None => self.pending.extend_from_slice(&self.decoded),
        }
        let whole = self.pending.len() / self.frame_bytes;
        for i in 0..whole {
            let at = i * self.frame_bytes;
            let frame = &self.pending[at..at + self.frame_bytes];
            let heard = self
                .inbound
                .process(now, frame)
                .map_err(|_| EndReason::Protocol(ProtocolErrorKind::BadAudio))?;
            self.stats.frames_in += 1;
            if let (Some(agent), Phase::Streaming { encoding, .. }) =
                (self.agent.as_mut(), &self.phase)
                && agent.caller_frame(now, frame, *encoding, self.inbound.audio().samples())
            {
                self.run_agent(None);
            }
            self.after_frame(now, heard.turn);
        }
        self.pending.drain(..whole * self.frame_bytes);
        metrics.frames_in.add(whole as u64);
        self.pump(now, metrics);
        Ok(())
    }

    /// The bot's reaction to one inbound frame.
    fn after_frame(&mut self, now: Timestamp, turn: Option<TurnEvent>) {
        match self.config.bot {
            BotKind::Agent => {
                // While answering-machine detection runs, the caller's turns are not the
                // conversation's (a machine's greeting is not a turn to answer).
                if let Some(event) = turn
                    && let Some(agent) = self.agent.as_mut()
                    && agent.admits_turn(&event)
                {
                    agent.conversation().on_turn(now, event);
                    self.run_agent(None);
                }
                self.poll_turn(now);
            }
            BotKind::Echo | BotKind::Fault => {
                self.outbound.push(self.inbound.audio());
                self.poll_turn(now);
            }
            BotKind::TurnEcho => {
                if let Some(TurnEvent::Started { .. }) = turn {
                    self.barge_in();
                }
                let in_turn = self.inbound.in_turn();
                let audio = self.inbound.audio().samples();
                if let Some(rec) = self.recorder.as_mut() {
                    if in_turn {
                        if rec.utterance.is_empty() {
                            rec.utterance.extend(rec.preroll.drain(..));
                        }
                        let room = rec.limit.saturating_sub(rec.utterance.len());
                        rec.utterance
                            .extend_from_slice(&audio[..audio.len().min(room)]);
                    } else {
                        rec.preroll.extend(audio);
                        let excess = rec.preroll.len().saturating_sub(PREROLL);
                        rec.preroll.drain(..excess);
                    }
                }
                self.poll_turn(now);
            }
        }
    }

    /// Caller speech over our playback: drop what is queued and tell the carrier to drop
    /// what it has buffered.
    fn barge_in(&mut self) {
        let queued = self.outbound.playout().queued() + self.chunker.pending() + self.backlog.len();
        self.backlog.clear();
        if queued == 0 {
            return;
        }
        self.outbound.playout().clear();
        self.chunker.clear();
        if let Phase::Streaming { sid, .. } = &self.phase {
            let mut msg = self.spare.pop().unwrap_or_default();
            self.config.protocol.clear(sid, &mut msg);
            self.tx.push_back(msg);
            self.stats.clears_sent += 1;
        }
    }

    /// Takes the end of the caller's turn when it is due (every bot must, or its deadline
    /// stays in the past); `turn-echo` then plays the turn back.
    fn poll_turn(&mut self, now: Timestamp) {
        let ended = self.inbound.poll_turn(now);
        if let Some(agent) = self.agent.as_mut() {
            if let Some(event) = ended
                && agent.admits_turn(&event)
            {
                agent.conversation().on_turn(now, event);
                self.run_agent(None);
            }
            return;
        }
        if let Some(TurnEvent::Ended { .. }) = ended
            && let Some(rec) = self.recorder.as_mut()
        {
            let utterance = std::mem::take(&mut rec.utterance);
            for chunk in utterance.chunks(320) {
                self.scratch16.clear();
                self.scratch16.samples_mut().extend_from_slice(chunk);
                self.outbound.push(&self.scratch16);
            }
            self.outbound.playout().pad_to_frame();
            self.next_mark += 1;
            self.outbound.playout().mark(self.next_mark);
            if let Some(rec) = self.recorder.as_mut() {
                rec.utterance = utterance;
                rec.utterance.clear();
                rec.utterance.shrink_to(0);
            }
        }
    }

    /// Sends what the playout clock releases at `now`, then any marks it has passed.
    fn pump(&mut self, now: Timestamp, metrics: &WorkerMetrics) {
        self.feed();
        let Phase::Streaming { sid, .. } = &self.phase else {
            return;
        };
        self.released.clear();
        let released = self.outbound.tick(now, &mut self.released);
        for i in 0..released.frames {
            metrics.lateness.observe(released.lateness(now, i));
        }
        self.stats.frames_out += released.frames as u64;
        metrics.frames_out.add(released.frames as u64);
        if released.frames > 0
            && let (Some(agent), Phase::Streaming { encoding, .. }) =
                (self.agent.as_mut(), &self.phase)
        {
            let offset = released
                .first_due
                .saturating_since(self.stream_start.unwrap_or(Timestamp::ZERO));
            agent.bot_frames(offset, &self.released, *encoding);
            if let Some(t) = agent.wire_pending.take() {
                self.wire_sent = Some(t);
            }
        }
        let protocol = self.config.protocol;
        match protocol {
            Protocol::Twilio => {
                for frame in self.released.chunks(self.frame_bytes) {
                    self.b64.clear();
                    payload::encode_into(frame, &mut self.b64);
                    let mut msg = self.spare.pop().unwrap_or_default();
                    protocol.media(sid, &self.b64, &mut msg);
                    self.tx.push_back(msg);
                }
            }
            Protocol::Exotel => {
                if self.chunker.push(&self.released) {
                    self.send_exotel_chunk(false);
                }
                if self.chunker.pending() == 0 {
                    self.flush_at = None;
                } else if released.frames > 0 {
                    self.flush_at = Some(now + EXOTEL_TAIL);
                }
            }
        }
        let mut marked = false;
        while let Some(event) = self.outbound.playout().poll_event() {
            if let (PlayoutEvent::MarkPlayed(id), Some(agent)) = (&event, self.agent.as_mut()) {
                agent.conversation().on_mark(now, *id);
                marked = true;
                continue;
            }
            if let PlayoutEvent::MarkPlayed(id) = event {
                if protocol == Protocol::Exotel {
                    self.send_exotel_chunk(true);
                }
                let Phase::Streaming { sid, .. } = &self.phase else {
                    return;
                };
                let mut msg = self.spare.pop().unwrap_or_default();
                protocol.mark_utterance(sid, id, &mut msg);
                self.tx.push_back(msg);
                self.stats.marks_sent += 1;
            }
        }
        if marked {
            self.run_agent(None);
        }
    }

    fn send_exotel_chunk(&mut self, flush: bool) {
        if flush {
            self.flush_at = None;
        }
        let Phase::Streaming { sid, .. } = &self.phase else {
            return;
        };
        if self.chunker.take(flush, &mut self.chunk) {
            self.b64.clear();
            payload::encode_into(&self.chunk, &mut self.b64);
            let mut msg = self.spare.pop().unwrap_or_default();
            self.config.protocol.media(sid, &self.b64, &mut msg);
            self.tx.push_back(msg);
        }
    }

    /// When [`Call::on_timeout`] should next run, if the call has anything scheduled.
    pub fn deadline(&mut self) -> Option<Timestamp> {
        // Only turn-echo acts on the end of a turn; the echo bots take it with the next frame
        // and need no timer for it.
        let turn = if matches!(self.config.bot, BotKind::TurnEcho | BotKind::Agent) {
            self.inbound.turn_deadline()
        } else {
            None
        };
        let agent = self.agent.as_ref().and_then(|a| a.deadline());
        [
            self.outbound.playout().deadline(),
            turn,
            self.flush_at,
            agent,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due at `now`: playout frames and the end of the caller's turn.
    pub fn on_timeout(&mut self, now: Timestamp, metrics: &WorkerMetrics) {
        self.poll_turn(now);
        if let Some(agent) = self.agent.as_mut() {
            agent.conversation().on_timeout(now);
            self.run_agent(None);
        }
        self.pump(now, metrics);
        if self.flush_at.is_some_and(|at| at <= now) {
            self.send_exotel_chunk(true);
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
