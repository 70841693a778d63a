//! Answering-machine and beep detection on real speech (espeak-ng greetings at 8 kHz in
//! `tests/data/`, and the codecs' speech fixture) and on generated audio: speech-like bursts,
//! silence, beeps, DTMF-like pairs, low-level noise, clipping and frames of every length.

use cxb_media::amd::{Amd, AmdCause, AmdConfig, AmdResult, Beep, BeepDetector, Verdict};
use proptest::prelude::*;

const RATE: usize = 8_000;

fn fixture(path: &str) -> Vec<i16> {
    let bytes = std::fs::read(path).expect("fixture");
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// "Hello?" (0.4 s), as a person answers.
fn hello() -> Vec<i16> {
    fixture(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hello-8k.s16"))
}

/// "Hi, you've reached Sam. Please leave a message after the tone." (3.3 s)
fn voicemail_greeting() -> Vec<i16> {
    fixture(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/voicemail-greeting-8k.s16"))
}

/// 3.8 s of continuous speech.
fn speech() -> Vec<i16> {
    fixture(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16"))
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * RATE / 1000]
}

fn tone(hz: &[f64], ms: usize, amplitude: f64) -> Vec<i16> {
    (0..ms * RATE / 1000)
        .map(|n| {
            let t = n as f64 / RATE as f64;
            let v: f64 = hz.iter().map(|f| (2.0 * std::f64::consts::PI * f * t).sin()).sum();
            (amplitude * v / hz.len() as f64) as i16
        })
        .collect()
}

/// A voiced syllable: ten harmonics of a pitch gliding from `f0` down by a fifth, under a
/// rise-and-fall envelope, as a stand-in for a spoken word.
fn syllable(ms: usize, f0: f64) -> Vec<i16> {
    let n = ms * RATE / 1000;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let x = i as f64 / n as f64;
            let pitch = f0 * (1.0 - x / 3.0);
            phase += 2.0 * std::f64::consts::PI * pitch / RATE as f64;
            let envelope = (std::f64::consts::PI * x).sin().powf(0.5);
            let v: f64 = (1..=10).map(|h| (h as f64 * phase).sin() / h as f64).sum();
            (4_000.0 * envelope * v) as i16
        })
        .collect()
}

/// Deterministic white noise of about `mean_abs` mean absolute amplitude.
fn noise(len: usize, mean_abs: f64, seed: u64) -> Vec<i16> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Uniform in [-1, 1): mean absolute value 1/2.
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (u * 2.0 * mean_abs) as i16
        })
        .collect()
}

fn mix(a: &[i16], b: &[i16]) -> Vec<i16> {
    a.iter().zip(b.iter().chain(std::iter::repeat(&0))).map(|(x, y)| x.saturating_add(*y)).collect()
}

fn cat(parts: &[Vec<i16>]) -> Vec<i16> {
    parts.concat()
}

/// Feeds `audio` in 20 ms frames; the verdict (asserting it comes once).
fn amd(audio: &[i16]) -> Verdict {
    amd_in(audio, 160)
}

fn amd_in(audio: &[i16], frame: usize) -> Verdict {
    let mut d = Amd::new(AmdConfig::default());
    let mut verdicts: Vec<Verdict> = audio.chunks(frame.max(1)).filter_map(|f| d.push(f)).collect();
    assert!(verdicts.len() <= 1, "one verdict only: {verdicts:?}");
    let v = verdicts.pop().expect("a verdict");
    assert_eq!(d.verdict(), Some(v));
    v
}

fn beeps(audio: &[i16], frame: usize) -> Vec<(usize, Beep)> {
    let mut d = BeepDetector::default();
    let mut fed = 0;
    let mut found = Vec::new();
    for f in audio.chunks(frame.max(1)) {
        fed += f.len();
        if let Some(b) = d.push(f) {
            found.push((fed, b));
        }
    }
    found
}

#[test]
fn the_defaults_are_the_classic_ones() {
    let c = AmdConfig::default();
    let ms = |d: std::time::Duration| d.as_millis();
    assert_eq!(
        [ms(c.initial_silence), ms(c.greeting), ms(c.after_greeting_silence), ms(c.total_analysis)],
        [2_500, 1_500, 800, 5_000]
    );
    assert_eq!([ms(c.min_word), ms(c.between_words_silence), ms(c.max_word)], [100, 50, 5_000]);
    assert_eq!((c.max_words, c.silence_threshold), (3, 256));
}

#[test]
fn a_person_saying_hello_then_waiting_is_human() {
    let audio = cat(&[silence(300), hello(), silence(2_000)]);
    let v = amd(&audio);
    assert_eq!((v.result, v.cause), (AmdResult::Human, AmdCause::Human));
    // Decided 800 ms after "Hello?" ends (0.3 s + 0.4 s), on the 20 ms grid.
    assert!((1_460..=1_540).contains(&v.at_ms), "{v:?}");
}

#[test]
fn a_voicemail_greeting_is_a_machine_before_it_ends() {
    let v = amd(&voicemail_greeting());
    assert_eq!(v.result, AmdResult::Machine, "{v:?}");
    assert!(matches!(v.cause, AmdCause::LongGreeting | AmdCause::MaxWords), "{v:?}");
    assert!(v.at_ms < 3_000, "decided while the greeting plays: {v:?}");
    // Continuous live speech too.
    let v = amd(&speech());
    assert_eq!(v.result, AmdResult::Machine, "{v:?}");
}

#[test]
fn silence_is_not_sure_after_the_initial_silence() {
    let v = amd(&silence(6_000));
    assert_eq!(v, Verdict { result: AmdResult::NotSure, cause: AmdCause::InitialSilence, at_ms: 2_500 });
}

#[test]
fn generated_bursts_follow_the_word_rules() {
    // One short word and silence: a person.
    let v = amd(&cat(&[silence(500), syllable(300, 180.0), silence(1_500)]));
    assert_eq!((v.result, v.cause, v.at_ms), (AmdResult::Human, AmdCause::Human, 1_600));
    // Two words: still a person.
    let v = amd(&cat(&[syllable(250, 200.0), silence(200), syllable(300, 170.0), silence(1_500)]));
    assert_eq!((v.result, v.cause), (AmdResult::Human, AmdCause::Human), "{v:?}");
    // Four quick words (1 s of voice in all): more than three words is a machine.
    let mut words = Vec::new();
    for i in 0..6 {
        words.push(syllable(250, 150.0 + 10.0 * i as f64));
        words.push(silence(150));
    }
    let v = amd(&cat(&words));
    assert_eq!((v.result, v.cause), (AmdResult::Machine, AmdCause::MaxWords), "{v:?}");
    assert_eq!(v.at_ms, 3 * 400 + 100, "the fourth word counts once it is 100 ms long");
    // Two long words: the greeting's voice passes 1.5 s.
    let v = amd(&cat(&[syllable(900, 160.0), silence(150), syllable(900, 150.0)]));
    assert_eq!((v.result, v.cause), (AmdResult::Machine, AmdCause::LongGreeting), "{v:?}");
    // 1.5 s of voice ends 1.65 s in; the syllables' soft edges are under the threshold.
    assert!((1_650..=1_700).contains(&v.at_ms), "{v:?}");
    // Clicks shorter than a word never start a greeting: no decision within 5 s.
    let mut clicks = Vec::new();
    for _ in 0..30 {
        clicks.push(syllable(60, 200.0));
        clicks.push(silence(200));
    }
    let v = amd(&cat(&clicks));
    assert_eq!((v.result, v.cause, v.at_ms), (AmdResult::NotSure, AmdCause::TooLong, 5_000));
}

#[test]
fn one_endless_word_is_a_machine_by_its_length() {
    let config = AmdConfig { greeting: std::time::Duration::from_secs(10), ..AmdConfig::default() };
    let mut d = Amd::new(config);
    let audio = tone(&[400.0], 6_000, 8_000.0);
    let v = audio.chunks(160).find_map(|f| d.push(f)).expect("a verdict");
    assert_eq!((v.result, v.cause, v.at_ms), (AmdResult::Machine, AmdCause::MaxWordLength, 5_000));
}

#[test]
fn low_level_noise_does_not_change_the_verdicts() {
    let human = cat(&[silence(300), hello(), silence(2_000)]);
    let v = amd(&mix(&human, &noise(human.len(), 60.0, 7)));
    assert_eq!((v.result, v.cause), (AmdResult::Human, AmdCause::Human), "{v:?}");
    let machine = voicemail_greeting();
    let v = amd(&mix(&machine, &noise(machine.len(), 60.0, 8)));
    assert_eq!(v.result, AmdResult::Machine, "{v:?}");
    let v = amd(&noise(6 * RATE, 60.0, 9));
    assert_eq!((v.result, v.cause), (AmdResult::NotSure, AmdCause::InitialSilence), "{v:?}");
}

#[test]
fn the_verdict_does_not_depend_on_frame_lengths() {
    let audio = cat(&[silence(300), hello(), silence(2_000)]);
    let expected = amd(&audio);
    for frame in [1, 7, 80, 159, 161, 333, 4_000, audio.len()] {
        assert_eq!(amd_in(&audio, frame), expected, "frames of {frame}");
    }
}

#[test]
fn hangup_before_a_verdict_is_reported_once() {
    let mut d = Amd::default();
    assert_eq!(d.push(&silence(1_000)), None);
    assert_eq!(d.hangup(), Some(Verdict { result: AmdResult::Hangup, cause: AmdCause::Hangup, at_ms: 1_000 }));
    assert_eq!(d.hangup(), None);
    assert_eq!(d.push(&silence(5_000)), None, "no second verdict");
    let mut d = Amd::default();
    assert!(d.push(&silence(3_000)).is_some());
    assert_eq!(d.hangup(), None, "decided already");
    // Silence is still tracked after the verdict.
    assert_eq!(d.silence_ms(), 3_000);
    d.push(&hello());
    assert_eq!(d.silence_ms(), 0);
}

#[test]
fn malformed_audio_never_panics() {
    let mut d = Amd::default();
    let mut b = BeepDetector::default();
    let clipped: Vec<i16> = (0..RATE * 6).map(|i| if i / 4 % 2 == 0 { i16::MIN } else { i16::MAX }).collect();
    for frame in [&[][..], &[1, 2, 3], &clipped[..161], &clipped[161..], &[i16::MIN; 7]] {
        let _ = d.push(frame);
        let _ = b.push(frame);
    }
    assert_eq!(d.verdict().map(|v| v.result), Some(AmdResult::Machine), "full-scale noise is voice");
    let mut empty = Amd::default();
    assert_eq!(empty.push(&[]), None);
    assert_eq!(empty.elapsed_ms(), 0);
}

proptest! {
    #[test]
    fn any_samples_in_any_frames_are_taken(
        samples in proptest::collection::vec(any::<i16>(), 0..4_000),
        cut in 1usize..500,
    ) {
        let mut d = Amd::default();
        let mut b = BeepDetector::default();
        let mut verdicts = 0;
        for f in samples.chunks(cut) {
            verdicts += usize::from(d.push(f).is_some());
            let _ = b.push(f);
        }
        prop_assert!(verdicts <= 1);
        prop_assert_eq!(d.elapsed_ms(), (samples.len() / 160) as u64 * 20);
    }
}

#[test]
fn a_beep_after_a_greeting_is_found_at_its_end() {
    let greeting = voicemail_greeting();
    for (hz, frame) in [(1_000.0, 160), (440.0, 160), (1_850.0, 160), (1_000.0, 77), (727.0, 1_000)] {
        let audio = cat(&[greeting.clone(), silence(300), tone(&[hz], 500, 9_000.0), silence(1_000)]);
        let start_ms = (greeting.len() / 8 + 300) as i64;
        let end_ms = start_ms + 500;
        let found = beeps(&audio, frame);
        assert_eq!(found.len(), 1, "{hz} Hz, frames of {frame}: {found:?}");
        let (fed, beep) = found[0];
        assert!((beep.end_ms as i64 - end_ms).abs() <= 20, "{hz} Hz: end {} vs {end_ms}", beep.end_ms);
        assert!((beep.start_ms as i64 - start_ms).abs() <= 20, "{hz} Hz: start {} vs {start_ms}", beep.start_ms);
        assert!((beep.freq_hz as f64 - hz).abs() <= 10.0, "{hz} Hz: {}", beep.freq_hz);
        // Reported once the tone is over, within two blocks of its end.
        let fed_ms = (fed / 8) as i64;
        assert!(fed_ms >= end_ms && fed_ms <= end_ms + 40 + frame as i64 / 8, "{hz} Hz: reported at {fed_ms} ms");
    }
}

#[test]
fn a_beep_in_noise_and_straight_after_speech_is_found() {
    let greeting = voicemail_greeting();
    let clean = cat(&[greeting.clone(), tone(&[1_000.0], 600, 6_000.0), silence(800)]);
    let audio = mix(&clean, &noise(clean.len(), 60.0, 11));
    let found = beeps(&audio, 160);
    assert_eq!(found.len(), 1, "{found:?}");
    let end_ms = (greeting.len() / 8 + 600) as i64;
    assert!((found[0].1.end_ms as i64 - end_ms).abs() <= 20, "{found:?} vs {end_ms}");
}

#[test]
fn speech_alone_has_no_beep() {
    for (name, audio) in [("greeting", voicemail_greeting()), ("speech", speech()), ("hello", hello())] {
        assert_eq!(beeps(&cat(&[audio.clone(), silence(500)]), 160), [], "{name}");
        let noisy = mix(&audio, &noise(audio.len(), 60.0, 3));
        assert_eq!(beeps(&noisy, 160), [], "{name} in noise");
    }
    let mut words = Vec::new();
    for i in 0..10 {
        words.push(syllable(450, 120.0 + 15.0 * i as f64));
        words.push(silence(100));
    }
    assert_eq!(beeps(&cat(&words), 160), []);
}

#[test]
fn dual_tones_short_tones_and_tones_out_of_band_are_not_beeps() {
    let cases = [
        ("DTMF 1", tone(&[697.0, 1_209.0], 800, 9_000.0)),
        ("DTMF #", tone(&[941.0, 1_477.0], 800, 9_000.0)),
        ("ringback", tone(&[440.0, 480.0], 2_000, 9_000.0)),
        ("200 ms", tone(&[1_000.0], 200, 9_000.0)),
        ("fax answer tone", tone(&[2_100.0], 1_000, 9_000.0)),
        ("hum", tone(&[150.0], 1_000, 9_000.0)),
        ("too quiet", tone(&[1_000.0], 800, 100.0)),
        ("endless", tone(&[1_000.0], 7_000, 9_000.0)),
    ];
    for (name, audio) in cases {
        assert_eq!(beeps(&cat(&[silence(200), audio, silence(500)]), 160), [], "{name}");
    }
    // A tone that steps in loudness by 10 dB is not one steady beep.
    let stepped = cat(&[tone(&[1_000.0], 300, 2_000.0), tone(&[1_000.0], 300, 6_500.0), silence(300)]);
    assert_eq!(beeps(&stepped, 160), []);
}
