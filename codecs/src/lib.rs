//! Pure audio codecs and audio types: G.711 mu-law and A-law, LINEAR16 framing, base64
//! payloads, RTP packets and telephone events, the sample-rate types that keep 8 kHz audio
//! out of 16 kHz consumers, and the two-channel WAV recordings of calls.
//!
//! Nothing here performs I/O, reads a clock or allocates on the per-frame path once buffers
//! have reached their working size.

pub mod g711;
pub mod l16;
pub mod payload;
pub mod rate;
pub mod rtcp;
pub mod rtp;
pub mod wav;

pub use rate::{AnyPcm, FrameDuration, Hz8, Hz16, Hz24, Hz48, Pcm, Rate, RateMismatch, SampleRate};

/// How a carrier encodes the samples of a media payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// G.711 mu-law, one byte per sample (Twilio, Cloudonix).
    Mulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
    /// Signed 16-bit little-endian PCM (Exotel).
    L16,
}

impl Encoding {
    /// Bytes that carry one sample.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::Mulaw | Encoding::Alaw => 1,
            Encoding::L16 => 2,
        }
    }

    /// The encoded byte that decodes to digital silence.
    pub const fn silence_byte(self) -> u8 {
        match self {
            Encoding::Mulaw => g711::MULAW_SILENCE,
            Encoding::Alaw => g711::ALAW_SILENCE,
            Encoding::L16 => 0,
        }
    }

    /// Appends the samples encoded in `bytes` to `out`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), l16::OddLength> {
        match self {
            Encoding::Mulaw => {
                g711::decode_mulaw_into(bytes, out);
                Ok(())
            }
            Encoding::Alaw => {
                g711::decode_alaw_into(bytes, out);
                Ok(())
            }
            Encoding::L16 => l16::decode_into(bytes, out),
        }
    }

    /// Appends `samples`, encoded, to `out`.
    pub fn encode_into(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Encoding::Mulaw => g711::encode_mulaw_into(samples, out),
            Encoding::Alaw => g711::encode_alaw_into(samples, out),
            Encoding::L16 => l16::encode_into(samples, out),
        }
    }
}
