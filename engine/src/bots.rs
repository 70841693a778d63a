//! The built-in demo bots (`cxb core --demo-bots`) and the lookup of a bot id.

use std::collections::VecDeque;
use std::time::Duration;

use cxb_codecs::{FrameDuration, Hz16, Pcm};
use cxb_media::Timestamp;
use cxb_media::turn::TurnEvent;

use crate::session::{Bot, CallerFrame, Playback, PlayoutRoom};

/// A bot the engine can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BotKind {
    /// Every inbound frame runs the whole media path and comes straight back out.
    Echo,
    /// Records the caller's turn and plays it back after it ends; barge-in clears playback.
    TurnEcho,
    /// Echo that panics on any DTMF digit: for proving that a panic ends only its own call.
    /// Only available when the engine is started with fault injection enabled.
    Fault,
    /// An AI bot: speech-to-text, a language model and text-to-speech, configured per bot
    /// (from the API or a local file).
    Agent,
}

impl BotKind {
    /// The built-in bot an id from the URL path names, if there is one: `echo` and
    /// `turn-echo` only with `demo_bots`, `fault` only with `fault_injection` as well.
    pub fn lookup(id: &str, demo_bots: bool, fault_injection: bool) -> Option<BotKind> {
        match id {
            "echo" if demo_bots => Some(BotKind::Echo),
            "turn-echo" if demo_bots => Some(BotKind::TurnEcho),
            "fault" if demo_bots && fault_injection => Some(BotKind::Fault),
            _ => None,
        }
    }

    /// The id the bot answers to.
    pub const fn id(self) -> &'static str {
        match self {
            BotKind::Echo => "echo",
            BotKind::TurnEcho => "turn-echo",
            BotKind::Fault => "fault",
            BotKind::Agent => "agent",
        }
    }
}

/// Playout room for the echo bots: a second, so a burst of inbound audio (Exotel's 100 ms
/// chunks, a network hiccup) is delayed rather than dropped.
const ECHO_QUEUE: Duration = Duration::from_secs(1);

/// Audio the echo bots let wait ahead of the playout schedule: inbound bursts pass on rather
/// than becoming standing latency.
const ECHO_LEAD: Duration = Duration::from_millis(60);

/// `turn-echo`'s memory before a turn is noticed: 300 ms at 16 kHz.
const PREROLL: usize = 16_000 * 3 / 10;

/// The built-in bot `kind` (not [`BotKind::Agent`], which needs its settings); `turn-echo`
/// records turns of at most `max_utterance`.
pub fn builtin(kind: BotKind, max_utterance: Duration) -> Box<dyn Bot> {
    match kind {
        BotKind::TurnEcho => Box::new(TurnEcho::new(max_utterance)),
        BotKind::Fault => Box::new(Echo { fault: true }),
        BotKind::Echo | BotKind::Agent => Box::new(Echo { fault: false }),
    }
}

/// Every inbound frame comes straight back out; `fault` panics on DTMF.
#[derive(Debug)]
struct Echo {
    fault: bool,
}

impl Bot for Echo {
    fn playout_room(&self) -> PlayoutRoom {
        PlayoutRoom { capacity: ECHO_QUEUE, lead: Some(ECHO_LEAD) }
    }

    fn uses_turn_timer(&self) -> bool {
        false
    }

    fn caller_frame(&mut self, _now: Timestamp, frame: &CallerFrame<'_>, out: &mut Playback<'_>) {
        out.push(frame.wide);
    }

    fn dtmf(&mut self, _now: Timestamp, _digit: char, _out: &mut Playback<'_>) {
        if self.fault {
            panic!("fault bot: injected panic on DTMF");
        }
    }
}

/// Records the caller's turn (with 300 ms before it was noticed) and plays it back once it
/// ends, asking the carrier to confirm each playback; the caller speaking again clears it.
#[derive(Debug)]
struct TurnEcho {
    preroll: VecDeque<i16>,
    utterance: Vec<i16>,
    limit: usize,
    capacity: Duration,
    scratch: Pcm<Hz16>,
    next_mark: u64,
}

impl TurnEcho {
    fn new(max_utterance: Duration) -> TurnEcho {
        TurnEcho {
            preroll: VecDeque::with_capacity(PREROLL),
            utterance: Vec::new(),
            limit: (max_utterance.as_millis() as usize) * 16,
            capacity: max_utterance + Duration::from_millis(200),
            scratch: Pcm::with_capacity(FrameDuration::MS_20),
            next_mark: 0,
        }
    }
}

impl Bot for TurnEcho {
    fn playout_room(&self) -> PlayoutRoom {
        PlayoutRoom { capacity: self.capacity, lead: None }
    }

    fn caller_frame(&mut self, _now: Timestamp, frame: &CallerFrame<'_>, _out: &mut Playback<'_>) {
        let audio = frame.wide.samples();
        if frame.in_turn {
            if self.utterance.is_empty() {
                self.utterance.extend(self.preroll.drain(..));
            }
            let room = self.limit.saturating_sub(self.utterance.len());
            self.utterance.extend_from_slice(&audio[..audio.len().min(room)]);
        } else {
            self.preroll.extend(audio);
            let excess = self.preroll.len().saturating_sub(PREROLL);
            self.preroll.drain(..excess);
        }
    }

    fn turn(&mut self, _now: Timestamp, event: TurnEvent, out: &mut Playback<'_>) {
        match event {
            TurnEvent::Started { .. } => out.clear(false),
            TurnEvent::Ended { .. } => {
                for chunk in self.utterance.chunks(320) {
                    self.scratch.clear();
                    self.scratch.samples_mut().extend_from_slice(chunk);
                    out.push(&self.scratch);
                }
                self.next_mark += 1;
                out.mark(self.next_mark);
                self.utterance.clear();
                self.utterance.shrink_to(0);
            }
        }
    }

    fn mark_played(&mut self, _now: Timestamp, id: u64, out: &mut Playback<'_>) {
        out.confirm(id);
    }
}
