//! Base64 media payloads as the WebSocket transports carry them (standard alphabet, padded).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A media payload that is not valid base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("media payload is not valid base64: {0}")]
pub struct BadPayload(String);

/// Appends the bytes carried by a base64 `payload` to `out`.
///
/// On error `out` keeps exactly what it held before.
pub fn decode_into(payload: &str, out: &mut Vec<u8>) -> Result<(), BadPayload> {
    let before = out.len();
    STANDARD.decode_vec(payload, out).map_err(|e| {
        out.truncate(before);
        BadPayload(e.to_string())
    })
}

/// Appends `bytes` as base64 to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    STANDARD.encode_string(bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut text = String::new();
        encode_into(&[0xFF, 0x7F, 0x00], &mut text);
        assert_eq!(text, "/38A");
        let mut bytes = vec![1];
        decode_into(&text, &mut bytes).expect("valid");
        assert_eq!(bytes, [1, 0xFF, 0x7F, 0x00]);
    }

    #[test]
    fn garbage_is_rejected_and_leaves_output_alone() {
        let mut bytes = vec![9, 9];
        assert!(decode_into("not base64!", &mut bytes).is_err());
        assert!(decode_into("QUJD=", &mut bytes).is_err());
        assert_eq!(bytes, [9, 9]);
    }
}
