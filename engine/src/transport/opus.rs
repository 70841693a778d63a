//! Opus (RFC 7587) for a call's RTP, through libopus: packets decode straight to 16-bit
//! linear samples at 8 kHz, the rate every call runs at, and 20 ms frames of the session's
//! 8 kHz samples encode to packets. libopus resamples inside its decoder and encoder, so no
//! filter of ours runs; the RTP clock stays at 48 kHz whatever the audio's bandwidth.

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

/// The rate the call hears and speaks at.
const RATE: u32 = 8000;
/// The longest packet's samples at that rate (120 ms).
const MAX_SAMPLES: usize = 960;
/// 20 ms at that rate: what a lost packet is concealed with.
const FRAME_SAMPLES: usize = 160;

/// Why Opus could not start or a packet could not be read.
#[derive(Debug, thiserror::Error)]
#[error("opus: {0}")]
pub struct OpusError(#[from] opus::Error);

/// One call's Opus decoder and encoder with their buffers.
pub struct Opus {
    decoder: Decoder,
    encoder: Encoder,
    samples: Vec<i16>,
    packet: Vec<u8>,
}

impl std::fmt::Debug for Opus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opus")
    }
}

impl Opus {
    /// A mono decoder and a voice encoder at 8 kHz: 16 kbit/s, in-band FEC for the peer's
    /// concealment, complexity 1: 27 us a frame against 62 us at complexity 5 (benches
    /// `codecs/opus_encode_20ms_8k`, docs/PERFORMANCE.md), for speech at telephone bandwidth.
    pub fn new() -> Result<Opus, OpusError> {
        let decoder = Decoder::new(RATE, Channels::Mono)?;
        let mut encoder = Encoder::new(RATE, Channels::Mono, Application::Voip)?;
        encoder.set_bitrate(Bitrate::Bits(16_000))?;
        encoder.set_complexity(1)?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(5)?;
        Ok(Opus { decoder, encoder, samples: vec![0; MAX_SAMPLES], packet: vec![0; 1500] })
    }

    /// Appends the 8 kHz samples of `packet` to `out` as little-endian bytes; `None` (a packet
    /// that never came) appends 20 ms of libopus's concealment. An unreadable packet is
    /// concealed the same way and reported.
    pub fn decode(&mut self, packet: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), OpusError> {
        let decoded = match packet {
            Some(p) => self.decoder.decode(p, &mut self.samples, false),
            None => self.decoder.decode(&[], &mut self.samples[..FRAME_SAMPLES], false),
        };
        let (n, result) = match decoded {
            Ok(n) => (n, Ok(())),
            Err(e) => (self.decoder.decode(&[], &mut self.samples[..FRAME_SAMPLES], false).unwrap_or(0), Err(e.into())),
        };
        out.extend(self.samples[..n.min(MAX_SAMPLES)].iter().flat_map(|s| s.to_le_bytes()));
        result
    }

    /// Decodes every packet `jitter` releases, in order, appending the samples to `out`
    /// (`scratch` holds each packet); a packet it gave up on is concealed. Returns how many
    /// would not decode (concealed too).
    pub fn decode_released(&mut self, jitter: &mut cxb_media::jitter::JitterBuffer<u8>, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> u64 {
        let mut malformed = 0;
        loop {
            scratch.clear();
            let Some(popped) = jitter.pop(scratch) else { return malformed };
            let packet = (!popped.lost).then_some(&scratch[..]);
            if self.decode(packet, out).is_err() {
                malformed += 1;
            }
        }
    }

    /// The packet for one frame of little-endian 8 kHz samples (20 ms: 320 bytes).
    pub fn encode(&mut self, frame: &[u8]) -> Result<&[u8], OpusError> {
        self.samples.clear();
        self.samples.extend(frame.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        let n = self.encoder.encode(&self.samples, &mut self.packet);
        self.samples.resize(MAX_SAMPLES, 0);
        Ok(&self.packet[..n?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(samples: usize) -> Vec<u8> {
        (0..samples).map(|i| (((i as f64) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 10_000.0) as i16).flat_map(i16::to_le_bytes).collect()
    }

    #[test]
    fn a_tone_survives_encoding_and_decoding_and_losses_are_concealed() {
        let mut opus = Opus::new().expect("libopus");
        let sent = tone(160 * 50);
        let mut heard = Vec::new();
        for frame in sent.chunks(320) {
            let packet = opus.encode(frame).expect("a 20 ms frame").to_vec();
            assert!(packet.len() < 120, "about 16 kbit/s: {} bytes", packet.len());
            opus.decode(Some(&packet), &mut heard).expect("our own packet");
        }
        assert_eq!(heard.len(), sent.len(), "20 ms in, 20 ms out");
        let energy = |b: &[u8]| (b.chunks_exact(2).map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])).powi(2)).sum::<f64>() / (b.len() / 2) as f64).sqrt();
        let (a, b) = (energy(&sent[3200..]), energy(&heard[3200..]));
        assert!((b / a - 1.0).abs() < 0.25, "the tone's level comes through: {a:.0} sent, {b:.0} heard");
        let mut concealed = Vec::new();
        opus.decode(None, &mut concealed).expect("concealment");
        assert_eq!(concealed.len(), 320, "a lost packet is 20 ms of concealment");
        assert!(opus.decode(Some(&[0xff; 3]), &mut concealed).is_err(), "garbage is an error");
        assert_eq!(concealed.len(), 640, "and concealed");
        assert!(opus.encode(&[0; 100]).is_err(), "6.25 ms is not an Opus frame");
    }
}
