//! ITU-T G.711 mu-law and A-law.
//!
//! G.711 companding is defined on 14-bit (mu-law) and 13-bit (A-law) uniform PCM. A 16-bit
//! sample is first rounded to the nearest level of that width (clipping at the top), then
//! companded with the G.711 segment tables. This is exactly what `sox` does; implementations
//! that truncate instead (Python's `audioop`) differ only on inputs that fall within half a
//! 14-/13-bit step of a decision value. Encoding looks the rounded level up in a
//! table of every level's code, decoding in a table of every code's level; both tables are
//! built at compile time from the G.711 segment rules. Decoding agrees with every
//! implementation.

/// The mu-law byte for digital silence (positive zero).
pub const MULAW_SILENCE: u8 = 0xFF;
/// The A-law byte for the smallest positive level, the usual A-law silence.
pub const ALAW_SILENCE: u8 = 0xD5;

const MULAW_BIAS: i32 = 0x84;
const MULAW_CLIP: i32 = 8159;

/// Number of significant bits in `x` (0 for 0).
const fn bits(x: i32) -> i32 {
    32 - (x as u32).leading_zeros() as i32
}

/// Encodes one 16-bit sample as mu-law.
#[inline]
pub fn encode_mulaw(sample: i16) -> u8 {
    // Round to 14 bits; the two top inputs would round past the largest 14-bit level.
    let v = ((i32::from(sample) + 2) >> 2).min(8191);
    MULAW_ENCODE[(v + 8192) as usize]
}

/// Compands one 14-bit level (-8192..=8191) with the mu-law segment table.
const fn mulaw_from_14(level: i32) -> u8 {
    let mut v = level;
    let mask: i32 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    if v > MULAW_CLIP {
        v = MULAW_CLIP;
    }
    v += MULAW_BIAS >> 2;
    let seg = bits(v >> 6);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let code = (seg << 4) | ((v >> (seg + 1)) & 0x0F);
    (code ^ mask) as u8
}

/// Decodes one mu-law byte, computing rather than looking up (used to build the table).
const fn decode_mulaw_slow(code: i32) -> i16 {
    let u = !(code as u8) as i32;
    let mut t = ((u & 0x0F) << 3) + MULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { MULAW_BIAS - t } else { t - MULAW_BIAS }) as i16
}

/// Encodes one 16-bit sample as A-law.
#[inline]
pub fn encode_alaw(sample: i16) -> u8 {
    // Round to 13 bits, clipping the four top inputs to the largest 13-bit level.
    let v = ((i32::from(sample) + 4) >> 3).min(4095);
    ALAW_ENCODE[(v + 4096) as usize]
}

/// Compands one 13-bit level (-4096..=4095) with the A-law segment table.
const fn alaw_from_13(level: i32) -> u8 {
    let mut v = level;
    let mask: i32 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = bits(v >> 5);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let quant = if seg < 2 { (v >> 1) & 0x0F } else { (v >> seg) & 0x0F };
    ((seg << 4 | quant) ^ mask) as u8
}

const fn decode_alaw_slow(code: i32) -> i16 {
    let a = (code as u8 ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// A table of `f(i + first)` for every index `i`, built at compile time (a const fn cannot
/// take a function pointer, hence a macro).
macro_rules! const_table {
    ($ty:ty, $len:expr, $first:expr, $f:expr) => {{
        let mut out: [$ty; $len] = [0; $len];
        let mut i = 0;
        while i < $len {
            out[i] = $f(i as i32 + $first);
            i += 1;
        }
        out
    }};
}

const MULAW_TABLE: [i16; 256] = const_table!(i16, 256, 0, decode_mulaw_slow);
const ALAW_TABLE: [i16; 256] = const_table!(i16, 256, 0, decode_alaw_slow);

/// mu-law code of every 14-bit level, offset by 8192 (16 KiB, stays in L1).
static MULAW_ENCODE: [u8; 16384] = const_table!(u8, 16384, -8192, mulaw_from_14);

/// A-law code of every 13-bit level, offset by 4096.
static ALAW_ENCODE: [u8; 8192] = const_table!(u8, 8192, -4096, alaw_from_13);

/// Decodes one mu-law byte.
#[inline]
pub const fn decode_mulaw(code: u8) -> i16 {
    MULAW_TABLE[code as usize]
}

/// Decodes one A-law byte.
#[inline]
pub const fn decode_alaw(code: u8) -> i16 {
    ALAW_TABLE[code as usize]
}

/// Appends the decoded samples of a mu-law payload to `out`.
pub fn decode_mulaw_into(bytes: &[u8], out: &mut Vec<i16>) {
    out.extend(bytes.iter().map(|&b| decode_mulaw(b)));
}

/// Appends the decoded samples of an A-law payload to `out`.
pub fn decode_alaw_into(bytes: &[u8], out: &mut Vec<i16>) {
    out.extend(bytes.iter().map(|&b| decode_alaw(b)));
}

/// Appends `samples` encoded as mu-law to `out`.
pub fn encode_mulaw_into(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| encode_mulaw(s)));
}

/// Appends `samples` encoded as A-law to `out`.
pub fn encode_alaw_into(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| encode_alaw(s)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_reference_values() {
        // Values from the G.711 tables: the extremes and both zeros.
        assert_eq!(decode_mulaw(0x00), -32124);
        assert_eq!(decode_mulaw(0x80), 32124);
        assert_eq!(decode_mulaw(0xFF), 0);
        assert_eq!(decode_mulaw(0x7F), 0);
        assert_eq!(decode_alaw(0xD5), 8);
        assert_eq!(decode_alaw(0x55), -8);
        assert_eq!(decode_alaw(0xAA), 32256);
        assert_eq!(decode_alaw(0x2A), -32256);
        assert_eq!(encode_mulaw(0), 0xFF);
        assert_eq!(encode_mulaw(i16::MAX), 0x80);
        assert_eq!(encode_mulaw(i16::MIN), 0x00);
        assert_eq!(encode_alaw(0), 0xD5);
        assert_eq!(encode_alaw(i16::MAX), 0xAA);
        assert_eq!(encode_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            // mu-law has two zeros; negative zero (0x7F) encodes back as positive zero.
            let expect = if code == 0x7F { 0xFF } else { code };
            assert_eq!(encode_mulaw(decode_mulaw(code)), expect, "mu-law {code:#04x}");
            assert_eq!(encode_alaw(decode_alaw(code)), code, "A-law {code:#04x}");
        }
    }

    #[test]
    fn encoding_is_monotonic_in_level() {
        let mut last = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let level = decode_mulaw(encode_mulaw(s));
            assert!(level >= last, "mu-law not monotonic at {s}");
            last = level;
        }
        let mut last = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let level = decode_alaw(encode_alaw(s));
            assert!(level >= last, "A-law not monotonic at {s}");
            last = level;
        }
    }
}
