//! The media path on real speech (espeak-ng, 8 kHz, shared with the codecs' fixtures): the
//! caller's turn is found, and echoed audio comes back on the 20 ms clock.

use std::time::Duration;

use cxb_codecs::{Encoding, g711};
use cxb_media::Timestamp;
use cxb_media::path::{Inbound, InboundConfig, Outbound};
use cxb_media::turn::TurnEvent;
use cxb_media::vad::VadConfig;

fn speech_mulaw() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16");
    let pcm = std::fs::read(path).expect("speech fixture");
    pcm.chunks_exact(2).map(|b| g711::encode_mulaw(i16::from_le_bytes([b[0], b[1]]))).collect()
}

#[test]
fn speech_is_heard_as_one_turn_and_echoed_on_time() {
    let mut speech = speech_mulaw();
    let spoken = Duration::from_micros(speech.len() as u64 * 125);
    speech.extend(std::iter::repeat_n(g711::MULAW_SILENCE, 8_000)); // one second of silence
    let mut inbound = Inbound::new(InboundConfig {
        encoding: Encoding::Mulaw,
        vad: VadConfig::default(),
        end_of_turn: Duration::from_millis(700),
    });
    let mut outbound: Outbound<()> = Outbound::new(Encoding::Mulaw, Duration::from_secs(1), 3, None);
    let (mut started, mut ended) = (None, None);
    let mut echoed = Vec::new();
    for (i, frame) in speech.chunks_exact(160).enumerate() {
        let now = Timestamp::ZERO + Duration::from_millis(20 * i as u64);
        let heard = inbound.process(now, frame).expect("20 ms of mu-law");
        if let Some(TurnEvent::Started { at }) = heard.turn {
            started.get_or_insert(at);
        }
        if let Some(TurnEvent::Ended { speech_ended, decided_at, .. }) = inbound.poll_turn(now) {
            ended = Some((speech_ended, decided_at));
        }
        assert!(outbound.push(inbound.audio()));
        let released = outbound.tick(now, &mut echoed);
        assert_eq!(released.frames, 1, "one frame in, one frame out, on time");
        assert_eq!(released.lateness(now, 0), Duration::ZERO);
    }
    let started = started.expect("speech was detected");
    let (speech_ended, decided_at) = ended.expect("the turn ended in the trailing silence");
    assert!(started < Timestamp::from_millis(500), "speech starts near the beginning: {started:?}");
    let end_ms = speech_ended.as_micros() / 1000;
    let spoken_ms = spoken.as_millis() as u64;
    assert!(end_ms + 600 > spoken_ms && end_ms <= spoken_ms + 100, "speech ends near {spoken_ms} ms, got {end_ms}");
    assert_eq!(decided_at, speech_ended + Duration::from_millis(700));
    // Every whole inbound frame came back out.
    assert_eq!(echoed.len(), speech.len() / 160 * 160);
}
