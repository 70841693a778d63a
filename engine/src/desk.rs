//! The Agent Desk's live takeover: a person on the desk talks with a caller whose bot handed
//! the call off, from the browser, while the bot stays silent.
//!
//! When a bot hands off (its `handoff` tool) on an engine that takes WebRTC, its call opens a
//! [`Line`] under the call's id in this process's table. The desk's browser then offers to
//! `POST /webrtc/takeover` with a takeover token for that call id (the API gives it out); that
//! leg runs on whichever worker took the offer, as a WebRTC call whose bot is a [`DeskBot`].
//! The two legs meet only in the line: the caller's 20 ms frames (8 kHz) go to the person and
//! the person's to the caller, each side taking what the other left at its own frame pace. A
//! line is two short queues behind a mutex, touched once a frame by each side, so the legs may
//! live on different workers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use cxb_codecs::{SampleRate, g711};
use cxb_media::Timestamp;
use cxb_media::resample::Polyphase;
use cxb_pipeline::config::BotConfig;
use cxb_pipeline::provider::{AudioFormat, Event, Events, SttCommand, SttEvent, SttSession};

use crate::error::EndReason;
use crate::session::{Bot, CallerFrame, Playback, PlayoutRoom};

/// Frames a side may leave unread before the oldest are dropped (200 ms): a stalled side
/// costs the other a short gap, never a growing delay.
const MAX_QUEUED: usize = 10;

/// The lines of this process's live calls that were handed off, by call id.
static LINES: LazyLock<Mutex<HashMap<String, Weak<Line>>>> = LazyLock::new(Mutex::default);

fn lines() -> MutexGuard<'static, HashMap<String, Weak<Line>>> {
    LINES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The line of call `call_id`, opened now unless it is open already (a second handoff).
pub fn open(call_id: &str) -> Arc<Line> {
    let mut lines = lines();
    if let Some(line) = lines.get(call_id).and_then(Weak::upgrade) {
        return line;
    }
    lines.retain(|_, l| l.strong_count() > 0);
    let line = Arc::new(Line(Mutex::default()));
    lines.insert(call_id.to_string(), Arc::downgrade(&line));
    line
}

/// The open line of the live call `call_id` on this host.
pub fn find(call_id: &str) -> Option<Arc<Line>> {
    lines().get(call_id).and_then(Weak::upgrade).filter(|l| !l.caller_gone())
}

/// The caller's call is over: its line closes, and a person on it is hung up.
pub fn close(call_id: &str, line: &Line) {
    line.state().caller_gone = true;
    lines().remove(call_id);
}

/// Where a caller and a person from the desk meet.
#[derive(Debug)]
pub struct Line(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// A person holds the line.
    taken: bool,
    /// The caller's call ended.
    caller_gone: bool,
    to_person: VecDeque<Vec<i16>>,
    to_caller: VecDeque<Vec<i16>>,
}

fn push(queue: &mut VecDeque<Vec<i16>>, pcm: &[i16]) {
    if queue.len() >= MAX_QUEUED {
        queue.pop_front();
    }
    queue.push_back(pcm.to_vec());
}

impl Line {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A person takes the line: false when someone holds it or the caller is gone.
    pub fn take(&self) -> bool {
        let mut s = self.state();
        if s.taken || s.caller_gone {
            return false;
        }
        s.taken = true;
        s.to_person.clear();
        s.to_caller.clear();
        true
    }

    /// The person left.
    pub fn release(&self) {
        let mut s = self.state();
        s.taken = false;
        s.to_person.clear();
        s.to_caller.clear();
    }

    /// Whether a person holds the line.
    pub fn taken(&self) -> bool {
        self.state().taken
    }

    /// Whether the caller's call ended.
    pub fn caller_gone(&self) -> bool {
        self.state().caller_gone
    }

    /// The caller's side: its frame `pcm` goes to the person, and what the person said since
    /// is appended to `heard`. Nothing moves while no one holds the line.
    pub fn caller_frame(&self, pcm: &[i16], heard: &mut Vec<i16>) {
        let mut s = self.state();
        if !s.taken {
            return;
        }
        push(&mut s.to_person, pcm);
        s.to_caller.drain(..).for_each(|f| heard.extend_from_slice(&f));
    }

    /// The person's side, the same way round.
    pub fn person_frame(&self, pcm: &[i16], heard: &mut Vec<i16>) {
        let mut s = self.state();
        if !s.taken {
            return;
        }
        push(&mut s.to_caller, pcm);
        s.to_person.drain(..).for_each(|f| heard.extend_from_slice(&f));
    }
}

/// The bot of the desk's leg: it plays the caller to the person and hands the person's
/// frames to the caller's call. The leg ends when the caller's does; when the leg ends, the
/// line is free again and the bot takes the call back.
#[derive(Debug)]
pub struct DeskBot {
    line: Arc<Line>,
    heard: Vec<i16>,
}

impl DeskBot {
    /// The bot of a person who has taken `line` ([`Line::take`]).
    pub fn new(line: Arc<Line>) -> DeskBot {
        DeskBot { line, heard: Vec::with_capacity(320) }
    }
}

impl Drop for DeskBot {
    fn drop(&mut self) {
        self.line.release();
    }
}

impl Bot for DeskBot {
    fn playout_room(&self) -> PlayoutRoom {
        PlayoutRoom { capacity: Duration::from_secs(1), lead: Some(Duration::from_millis(60)) }
    }

    fn uses_turn_timer(&self) -> bool {
        false
    }

    fn caller_frame(&mut self, _now: Timestamp, frame: &CallerFrame<'_>, out: &mut Playback<'_>) {
        self.heard.clear();
        self.line.person_frame(frame.narrow, &mut self.heard);
        if !self.heard.is_empty() {
            out.push_narrow(&self.heard);
        }
    }

    fn end(&self) -> Option<EndReason> {
        self.line.caller_gone().then_some(EndReason::PeerClosed)
    }
}

/// A frame louder than this (RMS, about −36 dBFS) is the person speaking, for ending their
/// utterances: their own leg's voice detection runs on another call.
const VOICED_RMS: f64 = 500.0;

/// The person's silence after speech that ends their utterance (their words then come).
const UTTERANCE_END: Duration = Duration::from_millis(700);

/// A change of hands on a handed-off call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A person took the call: the bot falls silent.
    Joined,
    /// The person left: the bot takes the call back.
    Left,
}

/// The caller's side of a handed-off call, kept by its agent: which frames cross the line, and
/// the person's words, heard by a speech-to-text session of the bot's own provider.
pub struct CallerSide {
    line: Arc<Line>,
    call_id: String,
    joined: Option<Timestamp>,
    talked: Duration,
    stt: Option<(SttSession, AudioFormat)>,
    events: Events,
    heard: Vec<i16>,
    bytes: Vec<u8>,
    to_16k: Option<Polyphase>,
    wide: Vec<i16>,
    /// When the person's current utterance began, and their last voiced frame.
    spoke_at: Option<Timestamp>,
    voiced_at: Option<Timestamp>,
}

impl std::fmt::Debug for CallerSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerSide").field("call_id", &self.call_id).field("joined", &self.joined).field("talked", &self.talked).finish()
    }
}

impl CallerSide {
    /// Opens the line of call `call_id`.
    pub fn open(call_id: &str) -> CallerSide {
        CallerSide {
            line: open(call_id),
            call_id: call_id.to_string(),
            joined: None,
            talked: Duration::ZERO,
            stt: None,
            events: Events::new(),
            heard: Vec::new(),
            bytes: Vec::new(),
            to_16k: None,
            wide: Vec::new(),
            spoke_at: None,
            voiced_at: None,
        }
    }

    /// The caller's 8 kHz frame `pcm` at `now`: it goes to the person, if one holds the line,
    /// and what they said since is then in [`CallerSide::heard`]. The change of hands, if any.
    pub fn frame(&mut self, now: Timestamp, pcm: &[i16], bot: &BotConfig) -> Option<Change> {
        let taken = self.line.taken();
        let change = match (self.joined, taken) {
            (None, true) => {
                self.joined = Some(now);
                self.stt = cxb_pipeline::providers::stt(bot).ok().map(|p| (p.open(self.events.clone()), p.input_format()));
                Some(Change::Joined)
            }
            (Some(since), false) => {
                self.talked += now.saturating_since(since);
                self.joined = None;
                self.close_stt();
                Some(Change::Left)
            }
            _ => None,
        };
        self.heard.clear();
        if self.joined.is_some() {
            let mut heard = std::mem::take(&mut self.heard);
            self.line.caller_frame(pcm, &mut heard);
            for frame in heard.chunks(160) {
                self.transcribe(now, frame);
            }
            self.heard = heard;
        }
        change
    }

    /// The person's audio that arrived with the last frame, 8 kHz, for the caller's playout.
    pub fn heard(&self) -> &[i16] {
        &self.heard
    }

    /// The person's next finished utterance: when it began and its words.
    pub fn words(&mut self, now: Timestamp) -> Option<(Timestamp, String)> {
        while let Some((_, event)) = self.events.pop() {
            if let Event::Stt(SttEvent::Final { text, .. }) = event
                && !text.trim().is_empty()
            {
                return Some((self.spoke_at.take().unwrap_or(now), text));
            }
        }
        None
    }

    /// Sends a frame of the person to their speech-to-text, and asks it for their words when
    /// they have paused after speaking.
    fn transcribe(&mut self, now: Timestamp, frame: &[i16]) {
        let Some((stt, format)) = self.stt.as_ref() else { return };
        let energy = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / frame.len().max(1) as f64;
        if energy.sqrt() > VOICED_RMS {
            self.spoke_at.get_or_insert(now);
            self.voiced_at = Some(now);
        } else if self.voiced_at.is_some_and(|v| now.saturating_since(v) >= UTTERANCE_END) {
            self.voiced_at = None;
            stt.send(SttCommand::Finalize);
        }
        self.bytes.clear();
        match format {
            AudioFormat::Mulaw8k => g711::encode_mulaw_into(frame, &mut self.bytes),
            AudioFormat::Pcm16(16_000) => {
                self.wide.clear();
                self.to_16k.get_or_insert_with(|| Polyphase::new(SampleRate::Hz8000, SampleRate::Hz16000)).process(frame, &mut self.wide);
                self.wide.iter().for_each(|s| self.bytes.extend_from_slice(&s.to_le_bytes()));
            }
            AudioFormat::Pcm16(_) => frame.iter().for_each(|s| self.bytes.extend_from_slice(&s.to_le_bytes())),
        }
        stt.send_audio(&self.bytes);
    }

    fn close_stt(&mut self) {
        if let Some((stt, _)) = self.stt.take() {
            stt.send(SttCommand::Close);
        }
    }

    /// How long people talked with the caller so far.
    pub fn talked(&self, now: Timestamp) -> Duration {
        self.talked + self.joined.map_or(Duration::ZERO, |since| now.saturating_since(since))
    }

    /// The caller's call is over: the line closes.
    pub fn close(&mut self) {
        self.close_stt();
        close(&self.call_id, &self.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_only_while_a_person_holds_the_line() {
        let line = open("cl-desk-1");
        assert!(Arc::ptr_eq(&line, &open("cl-desk-1")), "a second handoff keeps the line");
        let mut heard = Vec::new();
        line.caller_frame(&[1; 160], &mut heard);
        assert!(find("cl-desk-1").is_some_and(|l| !l.taken()));
        assert!(line.take());
        assert!(!line.take(), "one person at a time");
        line.caller_frame(&[1; 160], &mut heard);
        line.person_frame(&[2; 160], &mut heard);
        assert_eq!(heard, [1; 160], "the person hears the caller's frame after the take, not before");
        heard.clear();
        line.caller_frame(&[1; 160], &mut heard);
        assert_eq!(heard, [2; 160]);
        // A side that stops reading loses old frames, never gains delay.
        for _ in 0..50 {
            heard.clear();
            line.caller_frame(&[3; 160], &mut heard);
        }
        heard.clear();
        line.person_frame(&[0; 160], &mut heard);
        assert_eq!(heard.len(), 160 * MAX_QUEUED);
        line.release();
        assert!(line.take(), "free again once the person left");
        close("cl-desk-1", &line);
        assert!(find("cl-desk-1").is_none() && line.caller_gone());
        assert!(DeskBot::new(line.clone()).end().is_some(), "the person's leg ends with the caller's call");
    }
}
