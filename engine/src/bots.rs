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

#[cfg(test)]
mod tests {
    use cxb_codecs::Encoding;

    use super::*;
    use crate::session::tests::{Seen, at, drain, frame, start_info};
    use crate::session::{Session, SessionConfig};

    fn session(kind: BotKind) -> Session {
        Session::new(SessionConfig::default(), Encoding::Mulaw, builtin(kind, Duration::from_secs(8)))
    }

    #[test]
    fn an_echo_session_sends_each_frame_back_on_the_virtual_clock() {
        let mut s = session(BotKind::Echo);
        s.caller_audio(at(0), &frame(true, 0));
        assert_eq!(drain(&mut s), (vec![], None), "nothing before the stream starts");
        s.start(at(0), Encoding::Mulaw, &start_info());
        let mut out = 0;
        for n in 0..50 {
            s.caller_audio(at(20 * n), &frame(n % 10 < 5, n));
            let (seen, next) = drain(&mut s);
            out += seen.iter().map(|x| if let Seen::Audio(f) = x { *f } else { 0 }).sum::<usize>();
            assert!(next.is_none_or(|t| t > at(20 * n)), "frame {n}: a deadline in the past: {next:?}");
        }
        assert_eq!(s.stats().frames_in, 50);
        assert!(out >= 48, "the echo came back: {out} frames");
        assert_eq!(s.stats().frames_out, out as u64);
    }

    #[test]
    fn turn_echo_plays_a_turn_back_asks_for_a_mark_and_clears_when_the_caller_speaks_over_it() {
        let mut s = session(BotKind::TurnEcho);
        s.start(at(0), Encoding::Mulaw, &start_info());
        let mut seen = Vec::new();
        // A second of speech, then silence until the turn ends and its playback is under way.
        for n in 0..100 {
            let now = 20 * n;
            s.caller_audio(at(now), &frame(n < 50, n));
            seen.extend(drain(&mut s).0);
        }
        let played: usize = seen.iter().map(|x| if let Seen::Audio(f) = x { *f } else { 0 }).sum();
        assert!(played > 0, "the turn plays back: {seen:?}");
        assert!(!seen.iter().any(|x| matches!(x, Seen::Mark(_))), "not all of it yet: {seen:?}");
        // The caller speaks over the playback: it is cleared, and the carrier told.
        let mut seen = Vec::new();
        for n in 100..120 {
            let now = 20 * n;
            s.caller_audio(at(now), &frame(true, n));
            seen.extend(drain(&mut s).0);
        }
        assert!(seen.contains(&Seen::Clear(true)), "{seen:?}");
        // Quiet again: the second turn plays out whole, then its mark is to be confirmed.
        let mut seen = Vec::new();
        for n in 120..400 {
            let now = 20 * n;
            s.caller_audio(at(now), &frame(false, n));
            let (more, next) = drain(&mut s);
            seen.extend(more);
            if let Some(t) = next.filter(|t| *t <= at(now)) {
                s.handle_timeout(t);
                seen.extend(drain(&mut s).0);
            }
        }
        assert_eq!(seen.iter().filter(|x| matches!(x, Seen::Mark(_))).count(), 1, "{seen:?}");
        let mark = seen.iter().position(|x| matches!(x, Seen::Mark(_))).unwrap_or(0);
        assert!(seen[..mark].iter().any(|x| matches!(x, Seen::Audio(_))), "the mark follows the audio: {seen:?}");
    }
}
