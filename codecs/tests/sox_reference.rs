//! G.711 against `sox`, an independent implementation of the ITU reference: every code each
//! way, every 16-bit input, and a real speech recording (espeak-ng, 8 kHz, in `fixtures/`).
//!
//! These tests need `sox` on the PATH (`apt-get install sox`); `.ci/run` installs it.

use std::path::PathBuf;
use std::process::Command;

use cxb_codecs::g711;

/// Runs `sox` over raw bytes: `-t from` in, `-t to` out, 8 kHz mono, no dither.
fn sox(input: &[u8], from: &[&str], to: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("cxb-sox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    // Tests run in parallel threads of one process: each run gets its own files.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{}-{}-{run}", from.join(""), to.join(""));
    let (inp, out) = (dir.join(format!("{name}.in")), dir.join(format!("{name}.out")));
    std::fs::write(&inp, input).expect("write sox input");
    let status = Command::new("sox")
        .arg("-D")
        .args(["-r", "8000", "-c", "1"])
        .args(from)
        .arg(&inp)
        .args(["-r", "8000", "-c", "1"])
        .args(to)
        .arg(&out)
        .status()
        .expect("sox must be installed to run the G.711 reference tests (apt-get install sox)");
    assert!(status.success(), "sox failed: {status}");
    std::fs::read(&out).expect("sox wrote its output")
}

const S16: &[&str] = &["-t", "raw", "-e", "signed-integer", "-b", "16", "-L"];
const ULAW: &[&str] = &["-t", "raw", "-e", "mu-law", "-b", "8"];
const ALAW: &[&str] = &["-t", "raw", "-e", "a-law", "-b", "8"];

fn samples(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Fails naming the first input on which `ours` and `sox` differ, without printing megabytes.
fn assert_same<I: std::fmt::Debug, O: PartialEq + std::fmt::Debug>(what: &str, input: &[I], ours: &[O], sox: &[O]) {
    assert_eq!(ours.len(), sox.len(), "{what}: lengths differ");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != sox[i]) {
        panic!("{what}: input #{i} ({:?}) gives {:?}, sox gives {:?}", input.get(i), ours[i], sox[i]);
    }
}

#[test]
fn all_256_codes_decode_like_sox() {
    let codes: Vec<u8> = (0..=255).collect();
    let ulaw = samples(&sox(&codes, ULAW, S16));
    let alaw = samples(&sox(&codes, ALAW, S16));
    for code in 0..=255u8 {
        assert_eq!(g711::decode_mulaw(code), ulaw[code as usize], "mu-law {code:#04x}");
        assert_eq!(g711::decode_alaw(code), alaw[code as usize], "A-law {code:#04x}");
    }
}

#[test]
fn every_16_bit_input_encodes_like_sox() {
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    let input = le_bytes(&all);
    let ulaw = sox(&input, S16, ULAW);
    let alaw = sox(&input, S16, ALAW);
    assert_eq!(ulaw.len(), all.len());
    let ours_ulaw: Vec<u8> = all.iter().map(|&s| g711::encode_mulaw(s)).collect();
    let ours_alaw: Vec<u8> = all.iter().map(|&s| g711::encode_alaw(s)).collect();
    assert_same("mu-law of every input", &all, &ours_ulaw, &ulaw);
    assert_same("A-law of every input", &all, &ours_alaw, &alaw);
    // Each of the 256 codes is reached by some input, so all 256 are checked this way too.
    let mut seen = [false; 256];
    ulaw.iter().for_each(|&c| seen[c as usize] = true);
    assert_eq!(seen.iter().filter(|s| **s).count(), 255, "mu-law: every code but -0 (0x7F)");
}

#[test]
fn speech_round_trips_like_sox() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/speech-8k.s16");
    let pcm = std::fs::read(path).expect("speech fixture");
    let speech = samples(&pcm);
    assert!(speech.len() > 16_000, "fixture holds at least 2 s of speech");

    for (fmt, encode, decode) in [
        (ULAW, g711::encode_mulaw_into as fn(&[i16], &mut Vec<u8>), g711::decode_mulaw_into as fn(&[u8], &mut Vec<i16>)),
        (ALAW, g711::encode_alaw_into, g711::decode_alaw_into),
    ] {
        let reference = sox(&pcm, S16, fmt);
        let mut ours = Vec::new();
        encode(&speech, &mut ours);
        assert_same("encoded speech", &speech, &ours, &reference);

        let reference_back = samples(&sox(&reference, fmt, S16));
        let mut back = Vec::new();
        decode(&ours, &mut back);
        assert_same("decoded speech", &ours, &back, &reference_back);
    }
}
