use std::time::Duration;

use cxb_codecs::g711;

use super::*;
use crate::bots::{BotKind, builtin};
use crate::protocol::StreamSid;

fn start_info() -> Start {
    Start {
        stream_sid: StreamSid::new("MZ1"),
        call_sid: None,
        account_sid: None,
        from: None,
        to: None,
        custom_parameters: Vec::new(),
        media_format: None,
    }
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// 20 ms of a 440 Hz tone (speech to the detector) or silence, in mu-law.
fn frame(loud: bool, n: u64) -> Vec<u8> {
    (0..160u64)
        .map(|i| {
            let t = (n * 160 + i) as f64 / 8_000.0;
            let s = if loud { (t * 440.0 * std::f64::consts::TAU).sin() * 12_000.0 } else { 0.0 };
            g711::encode_mulaw(s as i16)
        })
        .collect()
}

/// Everything the session has to say now: transmits (audio as frame counts), events dropped.
#[derive(Debug, PartialEq)]
enum Seen {
    Audio(usize),
    Mark(u64),
    Clear(bool),
    End(EndReason),
}

fn drain(s: &mut Session) -> (Vec<Seen>, Option<Timestamp>) {
    let mut seen = Vec::new();
    loop {
        match s.poll_output() {
            Output::Transmit(Transmit::Audio(a)) => seen.push(Seen::Audio(a.len() / 160)),
            Output::Transmit(Transmit::Mark(id)) => seen.push(Seen::Mark(id)),
            Output::Transmit(Transmit::Clear { playing }) => seen.push(Seen::Clear(playing)),
            Output::Event(_) => {}
            Output::End(reason) => seen.push(Seen::End(reason)),
            Output::Timeout(next) => return (seen, next),
        }
    }
}

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

/// A bot that plays 100 ms on `1`, barges in on `2` and hangs up on `#`.
#[derive(Debug, Default)]
struct Keys {
    end: Option<EndReason>,
}

impl Bot for Keys {
    fn playout_room(&self) -> PlayoutRoom {
        PlayoutRoom { capacity: Duration::from_secs(1), lead: None }
    }

    fn caller_frame(&mut self, _now: Timestamp, _frame: &CallerFrame<'_>, _out: &mut Playback<'_>) {}

    fn dtmf(&mut self, _now: Timestamp, digit: char, out: &mut Playback<'_>) {
        match digit {
            '1' => {
                out.push_narrow(&[1_000; 800]);
                out.mark(7);
            }
            '2' => out.clear(false),
            _ => self.end = Some(EndReason::BotHangup),
        }
    }

    fn mark_played(&mut self, _now: Timestamp, id: u64, out: &mut Playback<'_>) {
        out.confirm(id);
    }

    fn end(&self) -> Option<EndReason> {
        self.end
    }
}

#[test]
fn outputs_come_in_order_from_one_poll_and_end_is_last() {
    let mut s = Session::new(SessionConfig::default(), Encoding::Mulaw, Box::new(Keys::default()));
    s.start(at(0), Encoding::Mulaw, &start_info());
    s.dtmf(at(0), '1');
    let (seen, next) = drain(&mut s);
    assert_eq!(seen, [Seen::Audio(1)], "the first frame is due at once");
    assert_eq!(next, Some(at(20)), "the next one in 20 ms");
    let mut seen = Vec::new();
    for ms in (20..=80).step_by(20) {
        s.handle_timeout(at(ms));
        seen.extend(drain(&mut s).0);
    }
    assert_eq!(seen, [Seen::Audio(1), Seen::Audio(1), Seen::Audio(1), Seen::Audio(1), Seen::Mark(7)]);
    assert_eq!(drain(&mut s).1, None, "nothing scheduled");
    s.dtmf(at(100), '1');
    s.dtmf(at(100), '2');
    assert_eq!(drain(&mut s).0, [Seen::Audio(1), Seen::Clear(true)], "the rest is dropped");
    s.dtmf(at(120), '2');
    assert_eq!(drain(&mut s).0, [Seen::Clear(false)], "nothing was queued this time");
    s.dtmf(at(140), '#');
    assert_eq!(drain(&mut s), (vec![Seen::End(EndReason::BotHangup)], None));
    s.dtmf(at(160), '1');
    assert_eq!(drain(&mut s), (vec![], None), "an ended session takes no more input");
    assert_eq!(s.stats().dtmf, 6);
}

#[test]
fn audio_the_media_path_cannot_take_ends_the_call() {
    let mut s = Session::new(SessionConfig::default(), Encoding::Mulaw, builtin(BotKind::Echo, Duration::from_secs(8)));
    s.start(at(0), Encoding::L16, &start_info());
    s.caller_audio(at(0), &[0; 321]);
    let (seen, _) = drain(&mut s);
    assert_eq!(seen, [Seen::End(EndReason::Protocol(ProtocolErrorKind::BadAudio))]);
}
