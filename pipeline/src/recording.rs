//! A call's two-channel recording: the caller on the left, the bot on the right, 16-bit PCM
//! at 8 kHz, aligned by time from the start of the stream.

use std::time::Duration;

/// Collects both sides of a call and writes them as a WAV file.
#[derive(Debug, Clone)]
pub struct Recorder {
    rate: u32,
    /// Interleaved left/right samples.
    samples: Vec<i16>,
    caller_at: usize,
    limit: usize,
}

impl Recorder {
    /// A recorder at `rate` Hz that keeps at most `max` of audio.
    pub fn new(rate: u32, max: Duration) -> Recorder {
        Recorder { rate, samples: Vec::new(), caller_at: 0, limit: (max.as_millis() as usize) * rate as usize / 1000 }
    }

    /// Appends the caller's next audio (the carrier's stream is continuous).
    pub fn caller(&mut self, audio: &[i16]) {
        let at = self.caller_at;
        self.write(0, at, audio);
        self.caller_at += audio.len();
    }

    /// Writes the bot's audio played `offset` after the start of the stream.
    pub fn bot(&mut self, offset: Duration, audio: &[i16]) {
        let at = (offset.as_micros() as usize) * self.rate as usize / 1_000_000;
        self.write(1, at, audio);
    }

    fn write(&mut self, channel: usize, at: usize, audio: &[i16]) {
        let end = (at + audio.len()).min(self.limit);
        if end <= at {
            return;
        }
        if self.samples.len() < end * 2 {
            self.samples.resize(end * 2, 0);
        }
        for (i, s) in audio[..end - at].iter().enumerate() {
            self.samples[(at + i) * 2 + channel] = *s;
        }
    }

    /// How long the recording is.
    pub fn duration(&self) -> Duration {
        Duration::from_micros((self.samples.len() / 2) as u64 * 1_000_000 / u64::from(self.rate))
    }

    /// The recording as a WAV file (RIFF, PCM, 2 channels, 16 bits).
    pub fn wav(&self) -> Vec<u8> {
        let data = (self.samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + data as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&2u16.to_le_bytes()); // channels
        out.extend_from_slice(&self.rate.to_le_bytes());
        out.extend_from_slice(&(self.rate * 4).to_le_bytes()); // bytes per second
        out.extend_from_slice(&4u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_line_up_by_time_and_the_header_is_valid() {
        let mut r = Recorder::new(8_000, Duration::from_secs(60));
        r.caller(&[1; 160]);
        r.caller(&[2; 160]);
        r.bot(Duration::from_millis(10), &[9; 160]);
        let wav = r.wav();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([wav[4], wav[5], wav[6], wav[7]]) as usize, wav.len() - 8);
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2);
        assert_eq!(u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]), 8_000);
        let samples: Vec<i16> = wav[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        // Frame 79 (9.875 ms): caller only; frame 80 (10 ms): both.
        assert_eq!((samples[79 * 2], samples[79 * 2 + 1]), (1, 0));
        assert_eq!((samples[80 * 2], samples[80 * 2 + 1]), (1, 9));
        assert_eq!((samples[200 * 2], samples[200 * 2 + 1]), (2, 9));
        assert_eq!(r.duration(), Duration::from_millis(40));
    }

    #[test]
    fn the_limit_bounds_memory() {
        let mut r = Recorder::new(8_000, Duration::from_millis(10));
        r.caller(&[1; 160]);
        r.bot(Duration::from_secs(3600), &[1; 160]);
        assert_eq!(r.duration(), Duration::from_millis(10));
    }
}
