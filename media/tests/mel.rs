//! The log-mel features against reference values computed by the numpy implementation of
//! Whisper's feature extractor that the turn model's authors ship (8 s window, normalized),
//! on a test signal both sides make from the same formula (`tests/data/whisper_mel_reference.json`).

use cxb_media::mel::{FRAMES, LogMel, MELS};

fn signal() -> Vec<f32> {
    use std::f64::consts::PI;
    (0..32_000)
        .map(|n| {
            let (n, t) = (n as f64, n as f64 / 16_000.0);
            (0.3 * (2.0 * PI * 440.0 * t).sin() + 0.2 * (2.0 * PI * (200.0 + 3000.0 * n / 32_000.0) * t).sin() + 0.05 * (2.0 * PI * 97.0 * t).sin() * (2.0 * PI * 3.0 * t).sin()) as f32
        })
        .collect()
}

#[test]
fn features_match_the_reference_extractor() {
    let reference: serde_json::Value = serde_json::from_str(include_str!("data/whisper_mel_reference.json")).expect("reference JSON");
    assert_eq!(reference["shape"], serde_json::json!([MELS, FRAMES]));
    let mut out = Box::new([0.0f32; MELS * FRAMES]);
    LogMel::new().compute(&signal(), &mut out);
    let points = reference["points"].as_array().expect("points");
    assert!(points.len() >= 50);
    for p in points {
        let (m, t, want) = (p[0].as_u64().unwrap_or(0) as usize, p[1].as_u64().unwrap_or(0) as usize, p[2].as_f64().unwrap_or(f64::NAN));
        let got = f64::from(out[m * FRAMES + t]);
        assert!((got - want).abs() < 1e-4, "mel {m} frame {t}: {got} against {want}");
    }
    let mean = out.iter().map(|&v| f64::from(v)).sum::<f64>() / out.len() as f64;
    let (min, max) = out.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!((mean - reference["mean"].as_f64().unwrap_or(0.0)).abs() < 1e-3, "mean {mean}");
    assert!((f64::from(min) - reference["min"].as_f64().unwrap_or(0.0)).abs() < 2e-3, "min {min}");
    assert!((f64::from(max) - reference["max"].as_f64().unwrap_or(0.0)).abs() < 2e-3, "max {max}");
}
