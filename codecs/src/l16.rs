//! LINEAR16: signed 16-bit little-endian PCM, the payload format of Exotel and of most
//! speech providers.

/// A LINEAR16 payload whose length is not a whole number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("LINEAR16 payload of {len} bytes is not a whole number of 16-bit samples")]
pub struct OddLength {
    /// The payload's length in bytes.
    pub len: usize,
}

/// Appends the samples of a little-endian payload to `out`.
pub fn decode_into(bytes: &[u8], out: &mut Vec<i16>) -> Result<(), OddLength> {
    if !bytes.len().is_multiple_of(2) {
        return Err(OddLength { len: bytes.len() });
    }
    out.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
    Ok(())
}

/// Appends `samples` as little-endian bytes to `out`.
pub fn encode_into(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_little_endian() {
        let mut bytes = Vec::new();
        encode_into(&[1, -2, 0x1234], &mut bytes);
        assert_eq!(bytes, [0x01, 0x00, 0xFE, 0xFF, 0x34, 0x12]);
        let mut back = Vec::new();
        decode_into(&bytes, &mut back).expect("even length");
        assert_eq!(back, [1, -2, 0x1234]);
    }

    #[test]
    fn odd_length_is_an_error_and_appends_nothing() {
        let mut out = vec![7];
        assert_eq!(decode_into(&[1, 2, 3], &mut out), Err(OddLength { len: 3 }));
        assert_eq!(out, [7]);
    }
}
