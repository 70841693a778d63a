//! The session under a virtual clock, with a bot made for the test; helpers for the built-in
//! bots' tests.

use std::time::Duration;

use cxb_codecs::g711;

use super::*;
use crate::protocol::StreamSid;

pub(crate) fn start_info() -> Start {
    Start {
        transport: "twilio",
        stream_sid: StreamSid::new("MZ1"),
        call_sid: None,
        account_sid: None,
        from: None,
        to: None,
        custom_parameters: Vec::new(),
        media_format: None,
    }
}

pub(crate) fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// 20 ms of a 440 Hz tone (speech to the detector) or silence, in mu-law.
pub(crate) fn frame(loud: bool, n: u64) -> Vec<u8> {
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
pub(crate) enum Seen {
    /// Audio, in frames.
    Audio(usize),
    /// A mark to confirm.
    Mark(u64),
    /// A clear, and whether the session had audio queued.
    Clear(bool),
    /// A key pressed out of band.
    Key(char),
    /// The end.
    End(EndReason),
}

pub(crate) fn drain(s: &mut Session) -> (Vec<Seen>, Option<Timestamp>) {
    let mut seen = Vec::new();
    loop {
        match s.poll_output() {
            Output::Transmit(Transmit::Audio(a)) => seen.push(Seen::Audio(a.len() / 160)),
            Output::Transmit(Transmit::Mark(id)) => seen.push(Seen::Mark(id)),
            Output::Transmit(Transmit::Clear { playing }) => seen.push(Seen::Clear(playing)),
            Output::Transmit(Transmit::Dtmf(key)) => seen.push(Seen::Key(key)),
            Output::Event(_) => {}
            Output::End(reason) => seen.push(Seen::End(reason)),
            Output::Timeout(next) => return (seen, next),
        }
    }
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
    let mut s = Session::new(SessionConfig::default(), Encoding::Mulaw, Box::new(Keys::default()));
    s.start(at(0), Encoding::L16, &start_info());
    s.caller_audio(at(0), &[0; 321]);
    let (seen, _) = drain(&mut s);
    assert_eq!(seen, [Seen::End(EndReason::Protocol(ProtocolErrorKind::BadAudio))]);
}
