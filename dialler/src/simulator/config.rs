//! How the simulated world behaves: who answers, how long phones ring, how long people talk.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the simulated callee does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A person picks up, says "Hello?", listens, maybe answers once more, hangs up.
    Answer,
    Busy,
    /// It rings until the request's ring timeout.
    NoAnswer,
    /// An answering machine picks up: a greeting, a beep, then it records silence.
    Voicemail,
    /// The network fails the call before it rings.
    Failed,
}

/// Relative weights of the outcomes (any scale; all zero means every call is answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeMix {
    pub answer: u32,
    pub busy: u32,
    pub no_answer: u32,
    pub voicemail: u32,
    pub failed: u32,
}

impl Default for OutcomeMix {
    /// 60% answer, 10% busy, 15% no answer, 10% voicemail, 5% failed.
    fn default() -> Self {
        OutcomeMix { answer: 60, busy: 10, no_answer: 15, voicemail: 10, failed: 5 }
    }
}

impl OutcomeMix {
    /// Only this outcome.
    pub fn only(outcome: Outcome) -> OutcomeMix {
        let mut mix = OutcomeMix { answer: 0, busy: 0, no_answer: 0, voicemail: 0, failed: 0 };
        *mix.weight_mut(outcome) = 1;
        mix
    }

    fn weight_mut(&mut self, outcome: Outcome) -> &mut u32 {
        match outcome {
            Outcome::Answer => &mut self.answer,
            Outcome::Busy => &mut self.busy,
            Outcome::NoAnswer => &mut self.no_answer,
            Outcome::Voicemail => &mut self.voicemail,
            Outcome::Failed => &mut self.failed,
        }
    }

    /// The outcome at `point`, a uniform draw from `[0, 1)`.
    pub fn pick(&self, point: f64) -> Outcome {
        let weights = [
            (Outcome::Answer, self.answer),
            (Outcome::Busy, self.busy),
            (Outcome::NoAnswer, self.no_answer),
            (Outcome::Voicemail, self.voicemail),
            (Outcome::Failed, self.failed),
        ];
        let total: u64 = weights.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return Outcome::Answer;
        }
        let mut left = (point.clamp(0.0, 1.0) * total as f64) as u64;
        for (outcome, w) in weights {
            if left < u64::from(w) {
                return outcome;
            }
            left -= u64::from(w);
        }
        // `point` was 1.0 (or rounding): the last outcome with weight.
        weights.iter().rev().find(|&&(_, w)| w > 0).map_or(Outcome::Answer, |&(o, _)| o)
    }
}

/// A uniform range of durations, `min..=max` (swapped if given the wrong way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    pub max: Duration,
}

impl Span {
    /// `min_ms..=max_ms`.
    pub const fn ms(min_ms: u64, max_ms: u64) -> Span {
        Span { min: Duration::from_millis(min_ms), max: Duration::from_millis(max_ms) }
    }

    /// The duration at `point`, a uniform draw from `[0, 1]`.
    pub fn at(&self, point: f64) -> Duration {
        let (lo, hi) = if self.min <= self.max { (self.min, self.max) } else { (self.max, self.min) };
        let point = if point.is_nan() { 0.0 } else { point.clamp(0.0, 1.0) };
        lo + (hi - lo).mul_f64(point)
    }
}

/// How long phones ring before the outcome shows. An answer or a voicemail pickup that would
/// come after the request's ring timeout becomes no-answer, as on a real network; no-answer
/// rings for the whole ring timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingTimes {
    /// Default 3-12 s.
    pub answer: Span,
    /// Default 12-20 s (voicemail usually picks up after four to six rings).
    pub voicemail: Span,
    /// Default 1-3 s.
    pub busy: Span,
    /// Default 0.2-1 s.
    pub failed: Span,
}

impl Default for RingTimes {
    fn default() -> Self {
        RingTimes {
            answer: Span::ms(3_000, 12_000),
            voicemail: Span::ms(12_000, 20_000),
            busy: Span::ms(1_000, 3_000),
            failed: Span::ms(200, 1_000),
        }
    }
}

/// A fixed outcome for destinations ending in `suffix` (e.g. `"0002"` -> always busy), so tests
/// and the quickstart are deterministic. The first matching rule wins; rules beat the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub suffix: String,
    pub outcome: Outcome,
}

impl Rule {
    /// Numbers ending in `suffix` get `outcome`.
    pub fn new(suffix: impl Into<String>, outcome: Outcome) -> Rule {
        Rule { suffix: suffix.into(), outcome }
    }
}

/// The simulator's settings. `Default` is a realistic world in real time.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Outcome weights for numbers no rule matches.
    pub mix: OutcomeMix,
    /// Ring times per outcome.
    pub ring: RingTimes,
    /// How long a person stays on after answering, from the answer. Default 8-20 s.
    pub talk: Span,
    /// How long an answering machine records after its beep before it hangs up. Default 30 s.
    pub voicemail_limit: Duration,
    /// The chance a person says a second phrase after the bot has spoken. Default 0.5.
    pub reply_chance: f64,
    /// Multiplies every simulated wait (ring times, the ring timeout, talk time, the voicemail
    /// limit, CDR retry back-off). Audio streaming stays real time. Tests use small values; a
    /// value that is not a finite number >= 0 counts as 1.
    pub time_scale: f64,
    /// Seeds the outcome and timing draws (per call, by creation order): the same seed and the
    /// same calls in the same order give the same outcomes. `None`: random.
    pub seed: Option<u64>,
    /// Fixed outcomes by destination suffix.
    pub rules: Vec<Rule>,
    /// Limit on opening a `<Stream>` WebSocket and on fetching an answer URL (not scaled).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// CDR delivery: retries after the first attempt (default 5), first back-off (default 1 s,
    /// doubling).
    pub cdr_retries: u32,
    pub cdr_backoff: Duration,
    /// Ended calls kept in the call log (live calls are always kept). Default 10,000.
    pub log_limit: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            mix: OutcomeMix::default(),
            ring: RingTimes::default(),
            talk: Span::ms(8_000, 20_000),
            voicemail_limit: Duration::from_secs(30),
            reply_chance: 0.5,
            time_scale: 1.0,
            seed: None,
            rules: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            cdr_retries: 5,
            cdr_backoff: Duration::from_secs(1),
            log_limit: 10_000,
        }
    }
}

impl SimulatorConfig {
    /// The fixed outcome for `to`, if a rule names it.
    pub fn rule_for(&self, to: &str) -> Option<Outcome> {
        self.rules.iter().find(|r| to.ends_with(r.suffix.as_str())).map(|r| r.outcome)
    }

    /// `d` scaled by [`SimulatorConfig::time_scale`].
    pub fn scaled(&self, d: Duration) -> Duration {
        let scale = if self.time_scale.is_finite() && self.time_scale >= 0.0 { self.time_scale } else { 1.0 };
        Duration::try_from_secs_f64(d.as_secs_f64() * scale).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_picks_by_weight() {
        let mix = OutcomeMix { answer: 2, busy: 1, no_answer: 0, voicemail: 1, failed: 0 };
        assert_eq!(mix.pick(0.0), Outcome::Answer);
        assert_eq!(mix.pick(0.49), Outcome::Answer);
        assert_eq!(mix.pick(0.5), Outcome::Busy);
        assert_eq!(mix.pick(0.74), Outcome::Busy);
        assert_eq!(mix.pick(0.75), Outcome::Voicemail);
        assert_eq!(mix.pick(1.0), Outcome::Voicemail);
        assert_eq!(OutcomeMix::only(Outcome::Failed).pick(0.3), Outcome::Failed);
        let none = OutcomeMix { answer: 0, busy: 0, no_answer: 0, voicemail: 0, failed: 0 };
        assert_eq!(none.pick(0.7), Outcome::Answer);
        let huge = OutcomeMix { answer: u32::MAX, busy: u32::MAX, no_answer: u32::MAX, voicemail: u32::MAX, failed: 1 };
        assert_eq!(huge.pick(f64::NAN), Outcome::Answer);
    }

    #[test]
    fn spans_rules_and_scaling() {
        assert_eq!(Span::ms(1_000, 3_000).at(0.5), Duration::from_secs(2));
        assert_eq!(Span::ms(3_000, 1_000).at(1.0), Duration::from_secs(3));
        assert_eq!(Span::ms(1_000, 3_000).at(f64::NAN), Duration::from_secs(1));
        let mut c = SimulatorConfig {
            rules: vec![Rule::new("0002", Outcome::Busy), Rule::new("2", Outcome::Failed)],
            time_scale: 0.01,
            ..SimulatorConfig::default()
        };
        assert_eq!(c.rule_for("+15550000002"), Some(Outcome::Busy));
        assert_eq!(c.rule_for("+15550000012"), Some(Outcome::Failed));
        assert_eq!(c.rule_for("+15550000001"), None);
        assert_eq!(c.scaled(Duration::from_secs(10)), Duration::from_millis(100));
        c.time_scale = f64::NAN;
        assert_eq!(c.scaled(Duration::from_secs(10)), Duration::from_secs(10));
        c.time_scale = 1e300;
        assert_eq!(c.scaled(Duration::from_secs(10)), Duration::MAX);
    }
}
