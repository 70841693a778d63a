//! The call whatever carries it, sans-IO in the str0m / quinn style: a transport hands in the
//! caller's audio (whole 20 ms frames in the call's encoding at 8 kHz), DTMF digits, confirmed
//! marks and the clock; [`Session::poll_output`] answers, one at a time, what to transmit
//! (audio, marks, clears), what happened (for metrics), when to be called again, and how the
//! call ended. No clock reads, no tasks, no metrics handle: the same inputs give the same
//! outputs under a test's virtual clock.
//!
//! Inside, the caller's audio is decoded once ([`Inbound`]: 8 kHz and 16 kHz PCM, voice and
//! turn detection) and handed to the [`Bot`]; what the bot plays goes through one typed
//! outbound path ([`Outbound`]: PCM in, encoded frames out on the playout clock).

mod bot;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cxb_codecs::Encoding;
use cxb_media::Timestamp;
use cxb_media::path::{Inbound, InboundConfig, Outbound};
use cxb_media::playout::{PlayoutEvent, Released};
use cxb_media::vad::VadConfig;

pub use bot::{Bot, CallerFrame, Playback, PlayoutRoom};

use crate::error::{EndReason, ProtocolErrorKind};
use crate::protocol::Start;

/// How a session listens and plays.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Voice detection.
    pub vad: VadConfig,
    /// Silence that ends the caller's turn.
    pub end_of_turn: Duration,
    /// Most frames the playout releases at once when catching up.
    pub max_burst: usize,
    /// The transport sends key presses out of band ([`Transmit::Dtmf`]: RFC 4733 on a SIP
    /// call that negotiated telephone events); otherwise bots play them as tones.
    pub keys_out_of_band: bool,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig { vad: VadConfig::default(), end_of_turn: Duration::from_millis(700), max_burst: 5, keys_out_of_band: false }
    }
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// 20 ms frames taken in.
    pub frames_in: u64,
    /// 20 ms frames released to the transport.
    pub frames_out: u64,
    /// Marks the carrier confirmed.
    pub marks_confirmed: u64,
    /// DTMF digits received.
    pub dtmf: u64,
}

/// What the session asks of its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// Whole 20 ms frames of the bot's audio in the call's encoding, due now, in order.
    Audio(&'a [u8]),
    /// The audio sent so far has played up to here: the transport asks the carrier to
    /// confirm it (Twilio's `mark`).
    Mark(u64),
    /// The bot barged in: drop audio not yet played. `playing`: the session had audio queued,
    /// so the carrier must be told even when the transport holds none of its own.
    Clear {
        /// Audio was queued on the session's side.
        playing: bool,
    },
    /// Press this key now, out of band (only with [`SessionConfig::keys_out_of_band`]).
    Dtmf(char),
}

/// What happened, for the driver's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// Frames released at `at` (their lateness is measured against it).
    Released {
        /// The release.
        released: Released,
        /// When it happened.
        at: Timestamp,
    },
    /// A provider event that arrived at this instant led to a provider request.
    Dispatched(Instant),
    /// The first frame of audio that a provider event arriving at this instant started has
    /// just been released: the engine's own latency ends when the transport sends it.
    FirstAudio(Instant),
}

/// One answer of [`Session::poll_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    /// Send this.
    Transmit(Transmit<'a>),
    /// Note this.
    Event(SessionEvent),
    /// Nothing more now; call [`Session::handle_timeout`] at this time (`None`: nothing is
    /// scheduled, wait for input).
    Timeout(Option<Timestamp>),
    /// The call is over.
    End(EndReason),
}

/// An output waiting in the session's queue; audio refers to the release buffer.
#[derive(Debug, Clone, Copy)]
enum Item {
    Audio { from: usize, to: usize },
    Mark(u64),
    Clear { playing: bool },
    Key(char),
    Event(SessionEvent),
    End(EndReason),
}

/// One call's media and its bot, independent of the carrier.
pub struct Session {
    config: SessionConfig,
    encoding: Encoding,
    streaming: bool,
    inbound: Inbound,
    outbound: Outbound<u64>,
    bot: Box<dyn Bot>,
    queue: VecDeque<Item>,
    released: Vec<u8>,
    stats: SessionStats,
    stream_start: Timestamp,
    ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("encoding", &self.encoding).field("stats", &self.stats).finish()
    }
}

impl Session {
    /// A session for `bot`, expecting audio in `encoding` until [`Session::start`] says
    /// otherwise.
    pub fn new(config: SessionConfig, encoding: Encoding, bot: Box<dyn Bot>) -> Session {
        Session {
            inbound: Self::inbound(&config, encoding, bot.as_ref()),
            outbound: Self::outbound(&config, encoding, bot.playout_room()),
            config,
            encoding,
            streaming: false,
            bot,
            queue: VecDeque::with_capacity(16),
            released: Vec::new(),
            stats: SessionStats::default(),
            stream_start: Timestamp::ZERO,
            ended: false,
        }
    }

    fn inbound(config: &SessionConfig, encoding: Encoding, bot: &dyn Bot) -> Inbound {
        Inbound::new(InboundConfig { encoding, vad: config.vad, end_of_turn: bot.end_of_turn().unwrap_or(config.end_of_turn) })
    }

    fn outbound(config: &SessionConfig, encoding: Encoding, room: PlayoutRoom) -> Outbound<u64> {
        Outbound::new(encoding, room.capacity, config.max_burst, room.lead)
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The bot.
    pub fn bot(&mut self) -> &mut dyn Bot {
        self.bot.as_mut()
    }

    /// The stream began at `now` with audio in `encoding`; `start` is what the carrier said
    /// about the call. A second start is ignored.
    pub fn start(&mut self, now: Timestamp, encoding: Encoding, start: &Start) {
        if self.streaming || self.ended {
            return;
        }
        if encoding != self.encoding {
            self.encoding = encoding;
            self.inbound = Self::inbound(&self.config, encoding, self.bot.as_ref());
            self.outbound = Self::outbound(&self.config, encoding, self.bot.playout_room());
        }
        self.streaming = true;
        self.stream_start = now;
        let (bot, mut out) = self.parts();
        bot.start(now, start, &mut out);
        self.settle(now);
    }

    /// The caller's audio at `now`: whole 20 ms frames in the call's encoding. Audio the
    /// media path cannot take ends the call.
    pub fn caller_audio(&mut self, now: Timestamp, frames: &[u8]) {
        if !self.streaming || self.ended {
            return;
        }
        let frame_len = cxb_codecs::SampleRate::Hz8000.samples_per(cxb_codecs::FrameDuration::MS_20) * self.encoding.bytes_per_sample();
        for frame in frames.chunks(frame_len) {
            let heard = match self.inbound.process(now, frame) {
                Ok(heard) => heard,
                Err(_) => return self.end(EndReason::Protocol(ProtocolErrorKind::BadAudio)),
            };
            self.stats.frames_in += 1;
            let caller = CallerFrame {
                raw: frame,
                encoding: self.encoding,
                narrow: self.inbound.narrow().samples(),
                wide: self.inbound.audio(),
                in_turn: self.inbound.in_turn(),
                voiced: heard.voiced_frames > 0,
                paused_since: self.inbound.paused_since(),
            };
            let mut out = Playback::new(&mut self.outbound, &mut self.queue, self.streaming, self.config.keys_out_of_band);
            self.bot.caller_frame(now, &caller, &mut out);
            if let Some(turn) = heard.turn {
                self.bot.turn(now, turn, &mut out);
            }
            // Every bot takes the end of a turn when it is due, or its deadline would stay in
            // the past.
            if let Some(turn) = self.inbound.poll_turn(now) {
                self.bot.turn(now, turn, &mut out);
            }
        }
        self.settle(now);
    }

    /// The caller pressed `digit`.
    pub fn dtmf(&mut self, now: Timestamp, digit: char) {
        self.stats.dtmf += 1;
        if self.ended {
            return;
        }
        let (bot, mut out) = self.parts();
        bot.dtmf(now, digit, &mut out);
        self.settle(now);
    }

    /// The carrier confirmed a mark.
    pub fn mark_confirmed(&mut self) {
        self.stats.marks_confirmed += 1;
    }

    /// The bot's own work (provider replies) has something for it.
    pub fn wake(&mut self, now: Timestamp) {
        if self.ended {
            return;
        }
        let (bot, mut out) = self.parts();
        bot.wake(now, &mut out);
        self.settle(now);
    }

    /// Runs what is due at `now`: the end of the caller's turn, the bot's timers, playout.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.ended {
            return;
        }
        let ended = self.inbound.poll_turn(now);
        let (bot, mut out) = self.parts();
        if let Some(turn) = ended {
            bot.turn(now, turn, &mut out);
        }
        bot.timeout(now, &mut out);
        self.settle(now);
    }

    /// The next output. Call until it answers [`Output::Timeout`] or [`Output::End`] after
    /// every input: audio it hands out is valid until then.
    pub fn poll_output(&mut self) -> Output<'_> {
        let Some(item) = self.queue.pop_front() else {
            self.released.clear();
            return Output::Timeout(if self.ended { None } else { self.deadline() });
        };
        match item {
            Item::Audio { from, to } => Output::Transmit(Transmit::Audio(&self.released[from..to])),
            Item::Mark(id) => Output::Transmit(Transmit::Mark(id)),
            Item::Clear { playing } => Output::Transmit(Transmit::Clear { playing }),
            Item::Key(key) => Output::Transmit(Transmit::Dtmf(key)),
            Item::Event(event) => Output::Event(event),
            Item::End(reason) => Output::End(reason),
        }
    }

    fn deadline(&mut self) -> Option<Timestamp> {
        let turn = if self.bot.uses_turn_timer() { self.inbound.turn_deadline() } else { None };
        let playout = if self.streaming { self.outbound.playout().deadline() } else { None };
        [playout, turn, self.bot.deadline()].into_iter().flatten().min()
    }

    fn parts(&mut self) -> (&mut dyn Bot, Playback<'_>) {
        (self.bot.as_mut(), Playback::new(&mut self.outbound, &mut self.queue, self.streaming, self.config.keys_out_of_band))
    }

    fn end(&mut self, reason: EndReason) {
        if !self.ended {
            self.ended = true;
            self.queue.push_back(Item::End(reason));
        }
    }

    /// After an input: the bot fills the playout, what is due at `now` is released, the
    /// marks it passed go to the bot, and a bot that is done ends the call.
    fn settle(&mut self, now: Timestamp) {
        if self.bot.take_turn_end()
            && let Some(ended) = self.inbound.end_turn_now(now)
        {
            let (bot, mut out) = self.parts();
            bot.turn(now, ended, &mut out);
        }
        let (bot, mut out) = self.parts();
        bot.feed(&mut out);
        if self.streaming {
            let from = self.released.len();
            let released = self.outbound.tick(now, &mut self.released);
            if released.frames > 0 {
                self.stats.frames_out += released.frames as u64;
                self.queue.push_back(Item::Event(SessionEvent::Released { released, at: now }));
                self.queue.push_back(Item::Audio { from, to: self.released.len() });
                let offset = released.first_due.saturating_since(self.stream_start);
                if let Some(t) = self.bot.played(now, offset, &self.released[from..], self.encoding) {
                    self.queue.push_back(Item::Event(SessionEvent::FirstAudio(t)));
                }
            }
            while let Some(event) = self.outbound.playout().poll_event() {
                if let PlayoutEvent::MarkPlayed(id) = event {
                    let mut out = Playback::new(&mut self.outbound, &mut self.queue, self.streaming, self.config.keys_out_of_band);
                    self.bot.mark_played(now, id, &mut out);
                }
            }
        }
        if let Some(reason) = self.bot.end() {
            self.end(reason);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
