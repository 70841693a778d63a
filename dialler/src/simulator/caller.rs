//! The simulated callee's side of an answered call, sans-IO: one 20 ms frame of 8 kHz mu-law
//! per [`Caller::tick`], from recorded phrases, and [`Playback`], the carrier's model of the
//! bot audio it plays to the callee (so the callee knows when the bot speaks, and marks are
//! echoed when playback reaches them, as Twilio does).
//!
//! The recordings in `dialler/assets/` were made once with espeak-ng and sox (see the README
//! there); the voicemail beep is generated here.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::Duration;

/// One frame: 20 ms.
pub(crate) const FRAME: Duration = Duration::from_millis(20);
/// Bytes in a 20 ms frame of 8 kHz mu-law.
pub(crate) const FRAME_BYTES: usize = 160;
/// Mu-law silence (the code for 0).
const SILENCE: u8 = 0xFF;

/// "Hello?"
const HELLO: &[u8] = include_bytes!("../../assets/hello.ulaw");
/// "Yes, speaking. Who is this?"
const REPLY: &[u8] = include_bytes!("../../assets/reply.ulaw");
/// A voicemail greeting, about 6 s.
const GREETING: &[u8] = include_bytes!("../../assets/voicemail.ulaw");

/// The answering machine's beep: 1000 Hz for 500 ms at about -10 dBFS, with 5 ms ramps.
static BEEP: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const RATE: f64 = 8_000.0;
    const SAMPLES: usize = 4_000;
    const RAMP: usize = 40;
    (0..SAMPLES)
        .map(|i| {
            let ramp = (i.min(SAMPLES - 1 - i) as f64 / RAMP as f64).min(1.0);
            let t = i as f64 / RATE;
            let sample = 10_000.0 * ramp * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin();
            cxb_codecs::g711::encode_mulaw(sample as i16)
        })
        .collect()
});

/// Frames of silence before a person says "Hello?" after picking up.
const PICKUP_FRAMES: u64 = 10;
/// Frames of silence before the answering machine's greeting.
const MACHINE_PICKUP_FRAMES: u64 = 15;
/// Bot silence (frames) after which a person takes their turn.
const TURN_GAP_FRAMES: u32 = 30;

/// Whether an 8 kHz mu-law chunk holds sound rather than silence (mean level above ~-54 dBFS).
pub(crate) fn is_sound(mulaw: &[u8]) -> bool {
    if mulaw.is_empty() {
        return false;
    }
    let sum: u64 = mulaw.iter().map(|&b| u64::from(cxb_codecs::g711::decode_mulaw(b).unsigned_abs())).sum();
    sum / mulaw.len() as u64 >= 64
}

/// What the callee does in a 20 ms tick.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tick<'a> {
    /// Send this frame (always [`FRAME_BYTES`] long).
    Audio(&'a [u8]),
    /// The callee hangs up.
    HangUp,
}

#[derive(Debug)]
enum Kind {
    /// A person: hangs up `talk` frames after answering; answers the bot once if `reply`.
    Human { talk: u64, reply: bool, heard_bot: bool, quiet: u32, replied: bool },
    /// A machine: greeting, beep, then records silence for `record` frames.
    Voicemail { record: u64, beep_done_at: Option<u64> },
}

/// The callee's audio, frame by frame.
#[derive(Debug)]
pub(crate) struct Caller {
    kind: Kind,
    /// Frames produced so far.
    frame: u64,
    /// What is being said and how far it got.
    saying: Option<(&'static [u8], usize)>,
    /// Queued after the current phrase (the machine's beep).
    next: Option<&'static [u8]>,
    out: [u8; FRAME_BYTES],
}

fn frames(d: Duration) -> u64 {
    (d.as_millis() / FRAME.as_millis()) as u64
}

impl Caller {
    /// A person who stays on for `talk` and says a second phrase if `reply`.
    pub(crate) fn human(talk: Duration, reply: bool) -> Caller {
        Caller::new(Kind::Human { talk: frames(talk), reply, heard_bot: false, quiet: 0, replied: false })
    }

    /// An answering machine that records for `record` after its beep.
    pub(crate) fn voicemail(record: Duration) -> Caller {
        Caller::new(Kind::Voicemail { record: frames(record), beep_done_at: None })
    }

    fn new(kind: Kind) -> Caller {
        Caller { kind, frame: 0, saying: None, next: None, out: [SILENCE; FRAME_BYTES] }
    }

    /// The machine's greeting and beep have finished.
    pub(crate) fn beeped(&self) -> bool {
        matches!(self.kind, Kind::Voicemail { beep_done_at: Some(_), .. })
    }

    /// The next 20 ms. `bot_speaking`: whether bot speech played to the callee in this tick.
    pub(crate) fn tick(&mut self, bot_speaking: bool) -> Tick<'_> {
        let n = self.frame;
        match &mut self.kind {
            Kind::Human { talk, reply, heard_bot, quiet, replied } => {
                if n >= *talk {
                    return Tick::HangUp;
                }
                if n == PICKUP_FRAMES {
                    self.saying = Some((HELLO, 0));
                } else if n > PICKUP_FRAMES && self.saying.is_none() {
                    if bot_speaking {
                        *heard_bot = true;
                        *quiet = 0;
                    } else {
                        *quiet = quiet.saturating_add(1);
                    }
                    if *reply && *heard_bot && !*replied && *quiet >= TURN_GAP_FRAMES {
                        *replied = true;
                        self.saying = Some((REPLY, 0));
                    }
                }
            }
            Kind::Voicemail { record, beep_done_at } => {
                if n == MACHINE_PICKUP_FRAMES {
                    self.saying = Some((GREETING, 0));
                    self.next = Some(BEEP.as_slice());
                } else if n > MACHINE_PICKUP_FRAMES && self.saying.is_none() && beep_done_at.is_none() {
                    *beep_done_at = Some(n);
                }
                if beep_done_at.is_some_and(|at| n >= at.saturating_add(*record)) {
                    return Tick::HangUp;
                }
            }
        }
        self.frame += 1;
        self.fill();
        Tick::Audio(&self.out)
    }

    /// Copies the next frame of the current phrase (silence-padded) into `out`.
    fn fill(&mut self) {
        self.out = [SILENCE; FRAME_BYTES];
        let Some((phrase, at)) = self.saying.as_mut() else { return };
        let chunk = phrase.get(*at..).unwrap_or_default();
        let take = chunk.len().min(FRAME_BYTES);
        if let (Some(dst), Some(src)) = (self.out.get_mut(..take), chunk.get(..take)) {
            dst.copy_from_slice(src);
        }
        *at += take;
        if *at >= phrase.len() {
            self.saying = self.next.take().map(|p| (p, 0));
        }
    }
}

/// Queued bot audio longer than this is dropped from the model (it only counts bytes).
const MAX_QUEUED_ITEMS: usize = 4_096;

#[derive(Debug)]
enum Queued {
    Audio { bytes: usize, sound: bool },
    Mark(String),
}

/// The carrier's playback of bot audio: it plays 20 ms per tick and reports marks that
/// playback has reached. Only sizes are kept, not the audio.
#[derive(Debug, Default)]
pub(crate) struct Playback {
    queue: VecDeque<Queued>,
}

impl Playback {
    /// Queues `bytes` of 8 kHz mu-law audio; `sound` says whether it is more than silence.
    pub(crate) fn push_audio(&mut self, bytes: usize, sound: bool) {
        if let Some(Queued::Audio { bytes: b, sound: s }) = self.queue.back_mut()
            && *s == sound
        {
            *b = b.saturating_add(bytes);
        } else if self.queue.len() < MAX_QUEUED_ITEMS {
            self.queue.push_back(Queued::Audio { bytes, sound });
        }
    }

    /// Queues a mark after the audio queued so far.
    pub(crate) fn push_mark(&mut self, name: String) {
        if self.queue.len() < MAX_QUEUED_ITEMS {
            self.queue.push_back(Queued::Mark(name));
        }
    }

    /// Drops the queued audio (`clear`); the dropped marks are echoed, as Twilio does.
    pub(crate) fn clear(&mut self, echoed: &mut Vec<String>) {
        for q in self.queue.drain(..) {
            if let Queued::Mark(name) = q {
                echoed.push(name);
            }
        }
    }

    /// Plays 20 ms. Marks reached are pushed to `echoed`; returns whether sound played.
    pub(crate) fn tick(&mut self, echoed: &mut Vec<String>) -> bool {
        let mut budget = FRAME_BYTES;
        let mut sound_played = false;
        loop {
            match self.queue.front_mut() {
                Some(Queued::Mark(_)) => {
                    if let Some(Queued::Mark(name)) = self.queue.pop_front() {
                        echoed.push(name);
                    }
                }
                Some(Queued::Audio { bytes, sound }) if budget > 0 => {
                    let take = (*bytes).min(budget);
                    *bytes -= take;
                    budget -= take;
                    sound_played |= *sound && take > 0;
                    if *bytes == 0 {
                        self.queue.pop_front();
                    }
                }
                _ => return sound_played,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a caller until it hangs up (or `limit` frames); returns the frames it sent.
    fn run(caller: &mut Caller, limit: usize, mut bot: impl FnMut(usize) -> bool) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        for i in 0..limit {
            match caller.tick(bot(i)) {
                Tick::Audio(frame) => sent.push(frame.to_vec()),
                Tick::HangUp => break,
            }
        }
        sent
    }

    #[test]
    fn a_person_says_hello_then_hangs_up_after_talk_time() {
        let mut caller = Caller::human(Duration::from_secs(3), false);
        let sent = run(&mut caller, 1_000, |_| false);
        assert_eq!(sent.len(), 150, "3 s of 20 ms frames");
        assert!(sent.iter().all(|f| f.len() == FRAME_BYTES));
        let sound: Vec<usize> = sent.iter().enumerate().filter(|(_, f)| is_sound(f)).map(|(i, _)| i).collect();
        let first = *sound.first().expect("it speaks");
        let last = *sound.last().expect("it speaks");
        assert!(first >= PICKUP_FRAMES as usize && last < 40, "hello in frames {first}..{last}");
    }

    #[test]
    fn a_person_replies_after_the_bot_stops_speaking() {
        // The bot speaks from 1.0 s to 2.0 s; the reply starts 600 ms later.
        let mut caller = Caller::human(Duration::from_secs(8), true);
        let sent = run(&mut caller, 1_000, |i| (50..100).contains(&i));
        let reply: Vec<usize> =
            sent.iter().enumerate().filter(|&(i, f)| i >= 40 && is_sound(f)).map(|(i, _)| i).collect();
        let start = *reply.first().expect("it replies");
        assert!((129..=140).contains(&start), "reply starts at frame {start}");
        assert!(reply.len() > 50, "the reply lasts ({} frames of sound)", reply.len());
        // Without the bot speaking, no reply.
        let mut caller = Caller::human(Duration::from_secs(8), true);
        let sent = run(&mut caller, 1_000, |_| false);
        assert!(!sent.iter().skip(40).any(|f| is_sound(f)));
    }

    #[test]
    fn an_answering_machine_greets_beeps_and_records() {
        let mut caller = Caller::voicemail(Duration::from_secs(1));
        let sent = run(&mut caller, 2_000, |_| true);
        let greeting_frames = GREETING.len().div_ceil(FRAME_BYTES);
        let beep_start = MACHINE_PICKUP_FRAMES as usize + greeting_frames;
        assert!(caller.beeped());
        assert_eq!(sent.len(), beep_start + 25 + 50, "pickup, greeting, beep, 1 s of recording");
        // The beep: 1000 Hz means 8 samples a cycle; check its zero crossings over one frame.
        let mut pcm = Vec::new();
        cxb_codecs::g711::decode_mulaw_into(&sent[beep_start + 10], &mut pcm);
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!((38..=42).contains(&crossings), "{crossings} zero crossings in 20 ms");
        assert!(sent[beep_start + 25..].iter().all(|f| !is_sound(f)), "silence after the beep");
    }

    #[test]
    fn playback_echoes_marks_when_reached_and_on_clear() {
        let mut p = Playback::default();
        let mut echoed = Vec::new();
        p.push_audio(400, true);
        p.push_mark("a".into());
        p.push_audio(160, false);
        p.push_mark("b".into());
        assert!(p.tick(&mut echoed) && echoed.is_empty());
        assert!(p.tick(&mut echoed) && echoed.is_empty());
        // 80 bytes of speech then the mark, then 80 bytes of the silence.
        assert!(p.tick(&mut echoed));
        assert_eq!(echoed, ["a"]);
        assert!(!p.tick(&mut echoed));
        assert_eq!(echoed, ["a", "b"]);
        p.push_audio(1_000, true);
        p.push_mark("c".into());
        echoed.clear();
        p.clear(&mut echoed);
        assert_eq!(echoed, ["c"]);
        assert!(!p.tick(&mut echoed));
    }
}
