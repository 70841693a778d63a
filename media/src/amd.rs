//! Answering-machine detection for answered calls: the classic energy/silence state machine
//! ([`Amd`]) and a beep detector ([`BeepDetector`]) that finds the tone after a voicemail
//! greeting, so a message can be left after it.
//!
//! Both are sans-IO and fed 8 kHz 16-bit samples in frames of any length; time is counted in
//! samples only (a 20 ms analysis block is 160 samples), so they run the same on a recorded
//! file, a test's generated audio and a live call.
//!
//! [`Amd`] follows the logic of the classic PBX detector (Asterisk's `app_amd`, whose
//! defaults [`AmdConfig::default`] carries): each 20 ms block is silence when its mean
//! absolute amplitude is under `silence_threshold`, else voice. Voice of at least `min_word`
//! after at least `between_words_silence` of silence is a word. A greeting longer than
//! `greeting`, more than `max_words` words, or one word longer than `max_word` is a machine;
//! `after_greeting_silence` of silence after the first word is a person. One difference from
//! `app_amd`: silence for `initial_silence` from the start is NOTSURE, not MACHINE (a person
//! who answers and waits for the caller to speak is common on outbound calls; carriers' own
//! detectors report such calls as unknown).

use std::time::Duration;

/// Samples per second of the audio the detectors take.
const RATE: u64 = 8_000;
/// Samples per analysis block (20 ms).
const BLOCK: usize = 160;
/// Milliseconds per analysis block.
const BLOCK_MS: u64 = 20;

/// The detector's settings; [`Default`] gives the classic values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmdConfig {
    /// Silence from the start after which the answer is NOTSURE (no one spoke). 2500 ms.
    pub initial_silence: Duration,
    /// Voice (summed over the greeting) beyond which the greeting is a machine's. 1500 ms.
    pub greeting: Duration,
    /// Silence after the first word that makes the answer a person's. 800 ms.
    pub after_greeting_silence: Duration,
    /// How long the analysis may take before the answer is NOTSURE. 5000 ms.
    pub total_analysis: Duration,
    /// Shortest voice that counts as a word. 100 ms.
    pub min_word: Duration,
    /// Silence that separates two words. 50 ms.
    pub between_words_silence: Duration,
    /// Longest single word before the answer is a machine. 5000 ms.
    pub max_word: Duration,
    /// More words than this is a machine. 3.
    pub max_words: u32,
    /// A block whose mean absolute amplitude (16-bit samples) is below this is silence. 256.
    pub silence_threshold: u16,
}

impl Default for AmdConfig {
    fn default() -> AmdConfig {
        AmdConfig {
            initial_silence: Duration::from_millis(2_500),
            greeting: Duration::from_millis(1_500),
            after_greeting_silence: Duration::from_millis(800),
            total_analysis: Duration::from_millis(5_000),
            min_word: Duration::from_millis(100),
            between_words_silence: Duration::from_millis(50),
            max_word: Duration::from_millis(5_000),
            max_words: 3,
            silence_threshold: 256,
        }
    }
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AmdResult {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// Could not tell (silence, or no decision within the analysis time).
    NotSure,
    /// The far end hung up before a decision.
    Hangup,
}

impl AmdResult {
    /// The classic name: `HUMAN`, `MACHINE`, `NOTSURE`, `HANGUP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AmdResult::Human => "HUMAN",
            AmdResult::Machine => "MACHINE",
            AmdResult::NotSure => "NOTSURE",
            AmdResult::Hangup => "HANGUP",
        }
    }
}

/// Why the detector decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AmdCause {
    /// Silence after a short greeting (a person said "Hello?" and waited).
    Human,
    /// No voice for `initial_silence` from the start.
    InitialSilence,
    /// The greeting's voice went on beyond `greeting`.
    LongGreeting,
    /// More than `max_words` words.
    MaxWords,
    /// One word went on beyond `max_word`.
    MaxWordLength,
    /// No decision within `total_analysis`.
    TooLong,
    /// The far end hung up first.
    Hangup,
}

impl AmdCause {
    /// The classic name: `HUMAN`, `INITIALSILENCE`, `LONGGREETING`, `MAXWORDS`,
    /// `MAXWORDLENGTH`, `TOOLONG`, `HANGUP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AmdCause::Human => "HUMAN",
            AmdCause::InitialSilence => "INITIALSILENCE",
            AmdCause::LongGreeting => "LONGGREETING",
            AmdCause::MaxWords => "MAXWORDS",
            AmdCause::MaxWordLength => "MAXWORDLENGTH",
            AmdCause::TooLong => "TOOLONG",
            AmdCause::Hangup => "HANGUP",
        }
    }
}

/// The detector's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Who answered.
    pub result: AmdResult,
    /// Why.
    pub cause: AmdCause,
    /// Milliseconds of audio analysed when the decision was made.
    pub at_ms: u64,
}

/// Collects samples into whole 20 ms blocks, whatever the frames' lengths.
#[derive(Debug, Clone)]
struct Blocks {
    buf: [i16; BLOCK],
    filled: usize,
    /// Whole blocks taken so far.
    count: u64,
}

impl Blocks {
    fn new() -> Blocks {
        Blocks { buf: [0; BLOCK], filled: 0, count: 0 }
    }

    /// Takes samples from the front of `samples` until a block is complete (then `true`: the
    /// block is `buf`, its index `count - 1`) or `samples` is used up (`false`).
    fn take(&mut self, samples: &mut &[i16]) -> bool {
        let room = BLOCK - self.filled;
        let (now, rest) = samples.split_at(room.min(samples.len()));
        self.buf[self.filled..self.filled + now.len()].copy_from_slice(now);
        self.filled += now.len();
        *samples = rest;
        if self.filled < BLOCK {
            return false;
        }
        self.filled = 0;
        self.count += 1;
        true
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The classic answering-machine detector. Feed it the answered party's audio from the
/// moment of answer; it decides once.
#[derive(Debug, Clone)]
pub struct Amd {
    config: AmdConfig,
    blocks: Blocks,
    /// Consecutive silence, ms.
    silence_ms: u64,
    /// Consecutive voice (the current word), ms.
    word_ms: u64,
    /// All voice so far, ms.
    voice_ms: u64,
    words: u32,
    in_word: bool,
    /// The first word was heard.
    in_greeting: bool,
    verdict: Option<Verdict>,
}

impl Default for Amd {
    fn default() -> Amd {
        Amd::new(AmdConfig::default())
    }
}

impl Amd {
    /// A detector with these settings, at the moment of answer.
    pub fn new(config: AmdConfig) -> Amd {
        Amd {
            config,
            blocks: Blocks::new(),
            silence_ms: 0,
            word_ms: 0,
            voice_ms: 0,
            words: 0,
            in_word: false,
            in_greeting: false,
            verdict: None,
        }
    }

    /// Takes the next samples (8 kHz, any count). Returns the verdict when these samples
    /// complete it, once; afterwards `None` (see [`Amd::verdict`]). After the verdict the
    /// detector still tracks silence ([`Amd::silence_ms`]).
    pub fn push(&mut self, samples: &[i16]) -> Option<Verdict> {
        let (mut samples, mut decided) = (samples, None);
        while self.blocks.take(&mut samples) {
            let level = mean_abs(&self.blocks.buf);
            decided = self.step(level).or(decided);
        }
        decided
    }

    /// The far end hung up: the verdict is HANGUP unless one was made already (then `None`).
    pub fn hangup(&mut self) -> Option<Verdict> {
        if self.verdict.is_some() {
            return None;
        }
        let v = Verdict { result: AmdResult::Hangup, cause: AmdCause::Hangup, at_ms: self.elapsed_ms() };
        self.verdict = Some(v);
        Some(v)
    }

    /// The settings.
    pub fn config(&self) -> &AmdConfig {
        &self.config
    }

    /// The verdict, once made.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Milliseconds of audio analysed (whole 20 ms blocks).
    pub fn elapsed_ms(&self) -> u64 {
        self.blocks.count * BLOCK_MS
    }

    /// The silence (consecutive, ms) up to the latest whole block.
    pub fn silence_ms(&self) -> u64 {
        self.silence_ms
    }

    /// One 20 ms block of mean absolute amplitude `level`.
    fn step(&mut self, level: u32) -> Option<Verdict> {
        let c = &self.config;
        let silent = level < u32::from(c.silence_threshold);
        if silent {
            self.silence_ms += BLOCK_MS;
            if self.silence_ms >= ms(c.between_words_silence) {
                self.in_word = false;
                self.word_ms = 0;
            }
        } else {
            self.silence_ms = 0;
            self.word_ms += BLOCK_MS;
            self.voice_ms += BLOCK_MS;
        }
        if self.verdict.is_some() {
            return None;
        }
        let elapsed = self.elapsed_ms();
        let decide = |result, cause| Some(Verdict { result, cause, at_ms: elapsed });
        let verdict = if silent {
            if !self.in_greeting && self.silence_ms >= ms(c.initial_silence) {
                decide(AmdResult::NotSure, AmdCause::InitialSilence)
            } else if self.in_greeting && self.silence_ms >= ms(c.after_greeting_silence) {
                decide(AmdResult::Human, AmdCause::Human)
            } else {
                None
            }
        } else {
            if self.word_ms >= ms(c.min_word) && !self.in_word {
                self.words += 1;
                self.in_word = true;
            }
            if self.word_ms >= ms(c.max_word) {
                decide(AmdResult::Machine, AmdCause::MaxWordLength)
            } else if self.words > c.max_words {
                decide(AmdResult::Machine, AmdCause::MaxWords)
            } else if self.in_greeting && self.voice_ms >= ms(c.greeting) {
                decide(AmdResult::Machine, AmdCause::LongGreeting)
            } else {
                if self.word_ms >= ms(c.min_word) {
                    self.in_greeting = true;
                }
                None
            }
        };
        let verdict = verdict.or_else(|| {
            (elapsed >= ms(self.config.total_analysis)).then_some(Verdict {
                result: AmdResult::NotSure,
                cause: AmdCause::TooLong,
                at_ms: elapsed,
            })
        });
        self.verdict = verdict;
        verdict
    }
}

fn mean_abs(block: &[i16; BLOCK]) -> u32 {
    block.iter().map(|s| u32::from(s.unsigned_abs())).sum::<u32>() / BLOCK as u32
}

/// The beep detector's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeepConfig {
    /// Lowest tone frequency. 300 Hz.
    pub low_hz: f32,
    /// Highest tone frequency. 2000 Hz. The bank spans at most 2 kHz above `low_hz`.
    pub high_hz: f32,
    /// Shortest tone that is a beep. 400 ms.
    pub min_tone: Duration,
    /// Longer steady tones are not beeps (a continuous network tone). 5 s.
    pub max_tone: Duration,
    /// Quietest tone (root mean square of 16-bit samples). 180 (about -45 dBFS).
    pub min_rms: f32,
    /// Share of a block's energy the single tone must carry. 0.8.
    pub purity: f32,
}

impl Default for BeepConfig {
    fn default() -> BeepConfig {
        BeepConfig {
            low_hz: 300.0,
            high_hz: 2_000.0,
            min_tone: Duration::from_millis(400),
            max_tone: Duration::from_secs(5),
            min_rms: 180.0,
            purity: 0.8,
        }
    }
}

/// A beep: a steady single tone, reported once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Beep {
    /// When the tone began, ms from the first sample fed.
    pub start_ms: u64,
    /// When it ended, ms from the first sample fed: the moment to start speaking.
    pub end_ms: u64,
    /// Its frequency, Hz.
    pub freq_hz: u32,
}

/// Spacing of the coarse filter bank, Hz (the width of a 20 ms block's frequency bin).
const COARSE_HZ: f32 = 50.0;
/// Most filters in the coarse bank: the band spans at most 2 kHz.
const COARSE: usize = 40;
/// Offsets of the refining filters around the strongest coarse one, Hz.
const FINE_HZ: [f32; 4] = [-25.0, -12.5, 12.5, 25.0];
/// Frequencies of one tone in consecutive blocks differ by at most this, Hz.
const SAME_TONE_HZ: f32 = 25.0;

/// A tone being followed across blocks.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Sample position where it began.
    start: f64,
    /// Sample position where its last steady block ended.
    end: f64,
    /// Mean block energy (sum of squares).
    energy: f32,
    freq_sum: f32,
    blocks: u32,
}

impl Run {
    fn new(at: f64, freq: f32, energy: f32) -> Run {
        Run { start: at, end: at + BLOCK as f64, energy, freq_sum: freq, blocks: 1 }
    }

    fn freq(&self) -> f32 {
        self.freq_sum / self.blocks.max(1) as f32
    }
}

/// Finds beeps: a single tone between `low_hz` and `high_hz`, steady in frequency and
/// amplitude for at least `min_tone`, reported when it ends.
///
/// Each 20 ms block goes through a Goertzel bank (50 Hz apart across the band, at most 40
/// filters run side by side in one pass, then four more refine to 12.5 Hz around the
/// strongest): a block is tonal when one frequency holds `purity` of its energy. Speech
/// fails the purity or the steadiness over 400 ms; a DTMF-like pair of tones splits its
/// energy in two and fails the purity.
#[derive(Debug, Clone)]
pub struct BeepDetector {
    config: BeepConfig,
    blocks: Blocks,
    /// The coarse bank's Goertzel coefficients `2 cos(2 pi f / 8000)`, from `low_hz` up
    /// (`coarse` of them; the rest are padding).
    coeffs: [f32; COARSE],
    coarse: usize,
    run: Option<Run>,
}

impl Default for BeepDetector {
    fn default() -> BeepDetector {
        BeepDetector::new(BeepConfig::default())
    }
}

impl BeepDetector {
    /// A detector with these settings; time starts at the first sample fed.
    pub fn new(config: BeepConfig) -> BeepDetector {
        let coarse = (((config.high_hz - config.low_hz) / COARSE_HZ).max(0.0) as usize + 1).min(COARSE);
        let coeffs = std::array::from_fn(|i| coefficient(config.low_hz + i as f32 * COARSE_HZ));
        BeepDetector { config, blocks: Blocks::new(), coeffs, coarse, run: None }
    }

    /// Takes the next samples (8 kHz, any count); returns a beep whose end these samples
    /// revealed (if several did, the last).
    pub fn push(&mut self, samples: &[i16]) -> Option<Beep> {
        let (mut samples, mut found) = (samples, None);
        while self.blocks.take(&mut samples) {
            let tone = self.tone(&self.blocks.buf);
            let at = ((self.blocks.count - 1) * BLOCK as u64) as f64;
            found = self.follow(at, tone).or(found);
        }
        found
    }

    /// Milliseconds of audio taken (whole 20 ms blocks).
    pub fn elapsed_ms(&self) -> u64 {
        self.blocks.count * BLOCK_MS
    }

    /// Follows the tone through the block that begins at sample `at` and holds `tone`;
    /// reports a beep when one ends.
    fn follow(&mut self, at: f64, tone: Option<(f32, f32)>) -> Option<Beep> {
        let Some(mut run) = self.run.take() else {
            self.run = tone.map(|(freq, energy)| Run::new(at, freq, energy));
            return None;
        };
        let Some((freq, energy)) = tone else {
            return self.finish(run);
        };
        if (freq - run.freq()).abs() > SAME_TONE_HZ {
            self.run = Some(Run::new(at, freq, energy));
            return self.finish(run);
        }
        if run.blocks == 1 && energy > 2.0 * run.energy {
            // The first block held only the tone's beginning.
            run.start = at - BLOCK as f64 * f64::from(run.energy / energy);
            run.energy = energy;
        } else if energy > 2.0 * run.energy {
            // Louder by more than 3 dB: not a steady tone.
            self.run = Some(Run::new(at, freq, energy));
            return self.finish(run);
        } else if energy < 0.5 * run.energy {
            // The tone ends within this block.
            run.end = at + BLOCK as f64 * f64::from(energy / run.energy);
            return self.finish(run);
        } else {
            run.energy += (energy - run.energy) / (run.blocks + 1) as f32;
        }
        run.blocks += 1;
        run.freq_sum += freq;
        run.end = at + BLOCK as f64;
        self.run = Some(run);
        None
    }

    /// A run is over: a beep if it lasted long enough and not too long.
    fn finish(&mut self, run: Run) -> Option<Beep> {
        let to_ms = |samples: f64| (samples * 1000.0 / RATE as f64).round() as u64;
        let (start_ms, end_ms) = (to_ms(run.start), to_ms(run.end));
        let length = end_ms.saturating_sub(start_ms);
        (length >= ms(self.config.min_tone) && length <= ms(self.config.max_tone)).then(|| Beep {
            start_ms,
            end_ms,
            freq_hz: run.freq().round() as u32,
        })
    }

    /// The block's single tone `(frequency, energy)`, if it has one in the band.
    fn tone(&self, block: &[i16; BLOCK]) -> Option<(f32, f32)> {
        let energy: f32 = block.iter().map(|&s| f32::from(s) * f32::from(s)).sum();
        if energy < self.config.min_rms * self.config.min_rms * BLOCK as f32 {
            return None;
        }
        let powers = goertzel(block, &self.coeffs);
        let (mut power, mut freq) = (0.0f32, 0.0f32);
        for (i, &p) in powers.iter().enumerate().take(self.coarse) {
            if p > power {
                (power, freq) = (p, self.config.low_hz + i as f32 * COARSE_HZ);
            }
        }
        // A tone halfway between two coarse filters still shows 40% of its energy in each
        // (sinc^2(1/2)); below that share no refinement can make the block tonal.
        if 2.0 * power / (BLOCK as f32 * energy) < 0.4 * self.config.purity {
            return None;
        }
        let fine = FINE_HZ.map(|d| freq + d);
        let powers = goertzel(block, &fine.map(coefficient));
        for (p, f) in powers.into_iter().zip(fine) {
            if p > power {
                (power, freq) = (p, f);
            }
        }
        let purity = 2.0 * power / (BLOCK as f32 * energy);
        let in_band = freq >= self.config.low_hz && freq <= self.config.high_hz;
        (in_band && purity >= self.config.purity).then_some((freq, energy))
    }
}

/// The Goertzel coefficient of frequency `hz`.
fn coefficient(hz: f32) -> f32 {
    2.0 * (2.0 * std::f32::consts::PI * hz / RATE as f32).cos()
}

/// Goertzel powers `|X(f)|^2` of the block for `K` filters run side by side (independent
/// lanes the compiler vectorises, rather than one long dependency chain per filter).
fn goertzel<const K: usize>(block: &[i16; BLOCK], coeffs: &[f32; K]) -> [f32; K] {
    let (mut s1, mut s2) = ([0.0f32; K], [0.0f32; K]);
    for &x in block {
        let x = f32::from(x);
        for ((a, b), c) in s1.iter_mut().zip(s2.iter_mut()).zip(coeffs) {
            let s = x + c * *a - *b;
            *b = *a;
            *a = s;
        }
    }
    std::array::from_fn(|k| s1[k] * s1[k] + s2[k] * s2[k] - coeffs[k] * s1[k] * s2[k])
}
