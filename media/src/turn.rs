//! Turn detection: the caller's turn ends after a configurable silence following speech.
//!
//! Fed the voice detector's events, it reports when the caller starts talking (the moment
//! barge-in is decided) and, once the caller has been silent for `end_silence`, that their
//! turn is over. Speech that resumes within the silence continues the same turn.

use std::time::Duration;

use crate::Timestamp;
use crate::vad::VadEvent;

/// What the turn detector decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// The caller began a turn; their speech began at `at`.
    Started {
        /// When the speech began.
        at: Timestamp,
    },
    /// The caller's turn is over.
    Ended {
        /// When the turn's first speech began.
        speech_started: Timestamp,
        /// When its last speech ended.
        speech_ended: Timestamp,
        /// When the silence became long enough to decide (`speech_ended + end_silence`).
        decided_at: Timestamp,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Speaking { started: Timestamp },
    Pausing { started: Timestamp, ended: Timestamp },
}

/// End-of-turn detection by silence after speech.
#[derive(Debug, Clone)]
pub struct TurnDetector {
    end_silence: Duration,
    state: State,
}

impl TurnDetector {
    /// A detector that ends a turn after `end_silence` without speech.
    pub fn new(end_silence: Duration) -> TurnDetector {
        TurnDetector { end_silence, state: State::Idle }
    }

    /// Feeds a voice-activity event; a new turn's start is reported at once.
    pub fn on_vad(&mut self, event: VadEvent) -> Option<TurnEvent> {
        match (self.state, event) {
            (State::Idle, VadEvent::SpeechStarted { at }) => {
                self.state = State::Speaking { started: at };
                Some(TurnEvent::Started { at })
            }
            (State::Pausing { started, .. }, VadEvent::SpeechStarted { .. }) => {
                self.state = State::Speaking { started };
                None
            }
            (State::Speaking { started }, VadEvent::SpeechStopped { at }) => {
                self.state = State::Pausing { started, ended: at };
                None
            }
            _ => None,
        }
    }

    /// When [`TurnDetector::poll`] next has something to say, if ever without new input.
    pub fn deadline(&self) -> Option<Timestamp> {
        match self.state {
            State::Pausing { ended, .. } => Some(ended + self.end_silence),
            _ => None,
        }
    }

    /// Reports the end of the turn once the silence has lasted long enough at `now`.
    pub fn poll(&mut self, now: Timestamp) -> Option<TurnEvent> {
        let State::Pausing { started, ended } = self.state else { return None };
        let decided_at = ended + self.end_silence;
        if now < decided_at {
            return None;
        }
        self.state = State::Idle;
        Some(TurnEvent::Ended { speech_started: started, speech_ended: ended, decided_at })
    }

    /// True from the start of a turn until its end is reported.
    pub fn in_turn(&self) -> bool {
        self.state != State::Idle
    }

    /// Ends turns after `end_silence` from now on (a turn already pausing included).
    pub fn set_end_silence(&mut self, end_silence: Duration) {
        self.end_silence = end_silence;
    }

    /// While the caller pauses within a turn: when their speech stopped.
    pub fn paused_since(&self) -> Option<Timestamp> {
        match self.state {
            State::Pausing { ended, .. } => Some(ended),
            _ => None,
        }
    }

    /// Ends the turn at `now` if the caller is pausing (someone else decided they are done:
    /// a turn-completion model); its end, as [`TurnDetector::poll`] would report it.
    pub fn end_now(&mut self, now: Timestamp) -> Option<TurnEvent> {
        let State::Pausing { started, ended } = self.state else { return None };
        self.state = State::Idle;
        Some(TurnEvent::Ended { speech_started: started, speech_ended: ended, decided_at: now })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn a_pause_can_be_ended_early_and_the_silence_changed() {
        let mut t = TurnDetector::new(Duration::from_millis(700));
        assert_eq!(t.end_now(ms(50)), None, "no turn");
        t.on_vad(VadEvent::SpeechStarted { at: ms(100) });
        assert_eq!((t.paused_since(), t.end_now(ms(150))), (None, None), "still speaking");
        t.on_vad(VadEvent::SpeechStopped { at: ms(900) });
        assert_eq!(t.paused_since(), Some(ms(900)));
        t.set_end_silence(Duration::from_millis(2000));
        assert_eq!(t.deadline(), Some(ms(2900)));
        assert_eq!(t.end_now(ms(1150)), Some(TurnEvent::Ended { speech_started: ms(100), speech_ended: ms(900), decided_at: ms(1150) }));
        assert!(!t.in_turn() && t.poll(ms(5000)).is_none(), "ended once");
    }

    #[test]
    fn turn_ends_after_the_silence() {
        let mut t = TurnDetector::new(Duration::from_millis(500));
        assert_eq!(t.on_vad(VadEvent::SpeechStarted { at: ms(100) }), Some(TurnEvent::Started { at: ms(100) }));
        assert_eq!(t.on_vad(VadEvent::SpeechStopped { at: ms(900) }), None);
        assert_eq!(t.deadline(), Some(ms(1400)));
        assert_eq!(t.poll(ms(1399)), None);
        assert_eq!(
            t.poll(ms(1420)),
            Some(TurnEvent::Ended { speech_started: ms(100), speech_ended: ms(900), decided_at: ms(1400) })
        );
        assert!(!t.in_turn());
        assert_eq!(t.poll(ms(5000)), None);
    }

    #[test]
    fn speech_within_the_silence_continues_the_turn() {
        let mut t = TurnDetector::new(Duration::from_millis(500));
        t.on_vad(VadEvent::SpeechStarted { at: ms(0) });
        t.on_vad(VadEvent::SpeechStopped { at: ms(300) });
        assert_eq!(t.on_vad(VadEvent::SpeechStarted { at: ms(600) }), None, "same turn");
        assert_eq!(t.poll(ms(900)), None);
        assert_eq!(t.deadline(), None);
        t.on_vad(VadEvent::SpeechStopped { at: ms(1000) });
        assert_eq!(
            t.poll(ms(1500)),
            Some(TurnEvent::Ended { speech_started: ms(0), speech_ended: ms(1000), decided_at: ms(1500) })
        );
    }
}
