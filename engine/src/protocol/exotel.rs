//! Exotel's outbound audio rule: each `media` message carries a multiple of 320 bytes (20 ms
//! of 8 kHz LINEAR16) and at least 3,200 bytes (100 ms); other sizes play with gaps. The
//! chunker collects playout frames into such messages.

/// Bytes in 20 ms of 8 kHz LINEAR16.
pub const FRAME_BYTES: usize = 320;
/// The smallest message Exotel plays cleanly: 100 ms.
pub const MIN_CHUNK: usize = 3_200;

/// Gathers outbound LINEAR16 into chunks Exotel accepts.
#[derive(Debug, Default)]
pub struct Chunker {
    pending: Vec<u8>,
}

impl Chunker {
    /// Adds audio (whole 20 ms frames); returns true when a chunk is ready in [`Chunker::take`].
    pub fn push(&mut self, frames: &[u8]) -> bool {
        self.pending.extend_from_slice(frames);
        self.pending.len() >= MIN_CHUNK
    }

    /// Audio waiting to be sent.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes every whole multiple of 320 bytes once at least 3,200 are pending, or, when
    /// `flush` is set, whatever is pending padded with silence to a valid size.
    pub fn take(&mut self, flush: bool, out: &mut Vec<u8>) -> bool {
        out.clear();
        if self.pending.len() >= MIN_CHUNK {
            let n = self.pending.len() / FRAME_BYTES * FRAME_BYTES;
            out.extend(self.pending.drain(..n));
            return true;
        }
        if flush && !self.pending.is_empty() {
            out.append(&mut self.pending);
            out.resize(MIN_CHUNK, 0);
            return true;
        }
        false
    }

    /// Drops pending audio (barge-in).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_valid_sizes() {
        let mut c = Chunker::default();
        let mut out = Vec::new();
        for _ in 0..9 {
            assert!(!c.push(&[1; FRAME_BYTES]));
            assert!(!c.take(false, &mut out));
        }
        assert!(c.push(&[1; FRAME_BYTES]));
        assert!(c.take(false, &mut out));
        assert_eq!(out.len(), 3_200);
        c.push(&[2; FRAME_BYTES * 2]);
        assert!(c.take(true, &mut out), "flush pads the tail");
        assert_eq!(out.len(), MIN_CHUNK);
        assert_eq!(&out[..640], &[2; 640][..]);
        assert!(out[640..].iter().all(|&b| b == 0));
        assert_eq!(c.pending(), 0);
    }
}
