//! The one interface every bot answers a call through (`echo`, `turn-echo`, `fault`, the AI
//! agent), and the handle it plays with.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cxb_codecs::{Encoding, Hz16, Pcm};
use cxb_contract::result::CallResult;
use cxb_media::Timestamp;
use cxb_media::path::Outbound;
use cxb_media::turn::TurnEvent;
use cxb_pipeline::provider::Events;

use super::{Item, SessionEvent};
use crate::error::EndReason;
use crate::protocol::Start;
use crate::results::Recording;

/// How much a bot's playout holds and how far ahead of its schedule audio may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutRoom {
    /// Most audio queued for playing.
    pub capacity: Duration,
    /// Audio let out ahead of the schedule (`None`: all of it is paced).
    pub lead: Option<Duration>,
}

/// One 20 ms frame of the caller, decoded once.
#[derive(Debug, Clone, Copy)]
pub struct CallerFrame<'a> {
    /// As the carrier sent it.
    pub raw: &'a [u8],
    /// The encoding of `raw`.
    pub encoding: Encoding,
    /// 8 kHz PCM.
    pub narrow: &'a [i16],
    /// 16 kHz PCM, as the detectors heard it.
    pub wide: &'a Pcm<Hz16>,
    /// The caller is in a turn (from its start until its end is reported).
    pub in_turn: bool,
    /// The voice detector judged the frame voiced.
    pub voiced: bool,
    /// While the caller pauses within a turn: when their speech stopped.
    pub paused_since: Option<Timestamp>,
}

/// A bot behind a call. Every method but [`Bot::wake`] runs in answer to the session's input;
/// what it plays goes through the [`Playback`] it is handed.
pub trait Bot {
    /// The playout this bot needs.
    fn playout_room(&self) -> PlayoutRoom;

    /// Whether the end of the caller's turn needs a timer (bots that answer turns).
    fn uses_turn_timer(&self) -> bool {
        true
    }

    /// The silence that ends the caller's turn, when the bot has its own (else the
    /// session's).
    fn end_of_turn(&self) -> Option<Duration> {
        None
    }

    /// Whether the bot decided that the caller's pause ends their turn (asked after every
    /// input; the session then ends the turn and reports it through [`Bot::turn`]).
    fn take_turn_end(&mut self) -> bool {
        false
    }

    /// The stream began.
    fn start(&mut self, _now: Timestamp, _start: &Start, _out: &mut Playback<'_>) {}

    /// One frame of the caller.
    fn caller_frame(&mut self, now: Timestamp, frame: &CallerFrame<'_>, out: &mut Playback<'_>);

    /// The caller's turn started or ended.
    fn turn(&mut self, _now: Timestamp, _event: TurnEvent, _out: &mut Playback<'_>) {}

    /// The caller pressed a key.
    fn dtmf(&mut self, _now: Timestamp, _digit: char, _out: &mut Playback<'_>) {}

    /// Playout passed mark `id`.
    fn mark_played(&mut self, _now: Timestamp, _id: u64, _out: &mut Playback<'_>) {}

    /// The bot's deadline came.
    fn timeout(&mut self, _now: Timestamp, _out: &mut Playback<'_>) {}

    /// The bot's own work has news ([`Bot::events`] became ready).
    fn wake(&mut self, _now: Timestamp, _out: &mut Playback<'_>) {}

    /// Room may have opened in the playout: audio the bot holds back may go in.
    fn feed(&mut self, _out: &mut Playback<'_>) {}

    /// Frames of the bot's audio released at `now`, `offset` into the stream, in the call's
    /// encoding. Returns when the provider event behind them arrived, for the first frame
    /// of a reply.
    fn played(&mut self, _now: Timestamp, _offset: Duration, _frames: &[u8], _encoding: Encoding) -> Option<Instant> {
        None
    }

    /// When [`Bot::timeout`] should run.
    fn deadline(&self) -> Option<Timestamp> {
        None
    }

    /// How the bot ended the call, once it has.
    fn end(&self) -> Option<EndReason> {
        None
    }

    /// Where the bot handed the call (with [`EndReason::Transferred`]), for a transport that
    /// carries the transfer out itself (SIP's REFER).
    fn transfer_target(&self) -> Option<&str> {
        None
    }

    /// The live transcript from line `from` on, one JSON message a line
    /// (`{"type":"transcript","role":…,"text":…}`), for a transport that shows it (the web
    /// widget's data channel). Bots without a transcript have none.
    fn transcript_since(&self, _from: usize) -> Vec<String> {
        Vec::new()
    }

    /// The queue the bot's own tasks report to; the call's driver waits on it.
    fn events(&self) -> Option<&Events> {
        None
    }

    /// The call is over: the bot's result and recording, if it keeps one.
    fn finish(&mut self, _now: Timestamp, _unix_ms: u64, _call_id: &str, _reason: EndReason) -> Option<(CallResult, Option<Recording>)> {
        None
    }
}

/// What a bot plays through: the session's outbound path and output queue.
#[derive(Debug)]
pub struct Playback<'a> {
    outbound: &'a mut Outbound<u64>,
    queue: &'a mut VecDeque<Item>,
    streaming: bool,
    keys_out_of_band: bool,
}

impl<'a> Playback<'a> {
    pub(super) fn new(outbound: &'a mut Outbound<u64>, queue: &'a mut VecDeque<Item>, streaming: bool, keys_out_of_band: bool) -> Playback<'a> {
        Playback { outbound, queue, streaming, keys_out_of_band }
    }

    /// Whether [`Playback::key`] reaches the far end (else keys are played as tones).
    pub fn keys_out_of_band(&self) -> bool {
        self.keys_out_of_band
    }

    /// Presses `key` now, out of band.
    pub fn key(&mut self, key: char) {
        if self.keys_out_of_band && self.streaming {
            self.queue.push_back(Item::Key(key));
        }
    }

    /// Whether the stream has started (audio queued before it waits).
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Queues 16 kHz audio; false if the playout was too full to take all of it.
    pub fn push(&mut self, audio: &Pcm<Hz16>) -> bool {
        self.outbound.push(audio)
    }

    /// Queues 8 kHz audio as far as there is room; returns the samples taken.
    pub fn push_narrow(&mut self, samples: &[i16]) -> usize {
        self.outbound.push_narrow(samples)
    }

    /// Units (encoded bytes) waiting to play.
    pub fn queued(&mut self) -> usize {
        self.outbound.playout().queued()
    }

    /// A mark after the audio queued so far (its tail padded to a whole frame):
    /// [`Bot::mark_played`] reports it.
    pub fn mark(&mut self, id: u64) {
        self.outbound.playout().pad_to_frame();
        self.outbound.playout().mark(id);
    }

    /// Asks the carrier to confirm that the audio sent so far has played.
    pub fn confirm(&mut self, id: u64) {
        self.queue.push_back(Item::Mark(id));
    }

    /// Barge-in: drops the queued audio and tells the transport to drop what it holds.
    /// `bot_pending`: the bot dropped audio of its own that had not reached the playout.
    pub fn clear(&mut self, bot_pending: bool) {
        let playing = self.outbound.playout().clear() > 0 || bot_pending;
        if self.streaming {
            self.queue.push_back(Item::Clear { playing });
        }
    }

    /// Reports an event to the driver.
    pub fn event(&mut self, event: SessionEvent) {
        self.queue.push_back(Item::Event(event));
    }
}
