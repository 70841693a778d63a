//! RTP packets (RFC 3550) and telephone events (RFC 4733), sans-IO: a datagram in, its
//! fields and payload borrowed out; a header and payload in, a datagram written into a reused
//! buffer. The SIP transport builds on this; nothing here knows about sockets or time.

use std::fmt;

/// The RTP version this code speaks.
const VERSION: u8 = 2;
/// The fixed header: flags, payload type, sequence number, timestamp, SSRC.
const FIXED: usize = 12;

/// A datagram that is not an RTP packet this endpoint can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than its headers say.
    #[error("RTP packet shorter than its header")]
    TooShort,
    /// Not version 2 (RTCP or STUN arriving on the media port look like this too).
    #[error("not RTP version 2")]
    Version,
    /// A padding count of zero or beyond the payload.
    #[error("bad RTP padding")]
    Padding,
}

/// One RTP packet, borrowed from the datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The marker bit (the first packet of a talk spurt; the start of a telephone event).
    pub marker: bool,
    /// 0 PCMU, 8 PCMA; dynamic types (96–127) as the SDP maps them.
    pub payload_type: u8,
    /// Increments by one per packet, wrapping.
    pub sequence: u16,
    /// Sampling instant of the first octet, in the payload's clock rate.
    pub timestamp: u32,
    /// The source.
    pub ssrc: u32,
    /// The payload: after the CSRC list and any header extension, before any padding.
    pub payload: &'a [u8],
}

impl fmt::Debug for RtpPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpPacket")
            .field("marker", &self.marker)
            .field("payload_type", &self.payload_type)
            .field("sequence", &self.sequence)
            .field("timestamp", &self.timestamp)
            .field("ssrc", &format_args!("{:08x}", self.ssrc))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl<'a> RtpPacket<'a> {
    /// Reads a datagram. CSRCs and header extensions are skipped, padding removed.
    pub fn parse(datagram: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        let [flags, mpt, s0, s1, t0, t1, t2, t3, c0, c1, c2, c3, ..] = *datagram else {
            return Err(RtpError::TooShort);
        };
        if flags >> 6 != VERSION {
            return Err(RtpError::Version);
        }
        let mut start = FIXED + 4 * usize::from(flags & 0x0f);
        if flags & 0x10 != 0 {
            // Header extension: a 16-bit profile, a 16-bit length in 32-bit words, the words.
            let words = datagram.get(start + 2..start + 4).ok_or(RtpError::TooShort)?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        let mut end = datagram.len();
        if flags & 0x20 != 0 {
            let pad = usize::from(*datagram.last().ok_or(RtpError::TooShort)?);
            if pad == 0 || pad > end.saturating_sub(start) {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        let payload = datagram.get(start..end).ok_or(RtpError::TooShort)?;
        Ok(RtpPacket {
            marker: mpt & 0x80 != 0,
            payload_type: mpt & 0x7f,
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            ssrc: u32::from_be_bytes([c0, c1, c2, c3]),
            payload,
        })
    }

    /// Writes the packet (no CSRCs, extension or padding) into `out`, replacing its contents.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(VERSION << 6);
        out.push(u8::from(self.marker) << 7 | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// Extends 16-bit RTP sequence numbers to a count that does not wrap, for ordering (the jitter
/// buffer takes `u64` positions). A number within 32,768 behind the highest seen is late, not
/// a wrap.
#[derive(Debug, Clone, Copy, Default)]
pub struct SequenceUnwrapper {
    highest: Option<u64>,
}

impl SequenceUnwrapper {
    /// The extended number of `sequence`.
    pub fn unwrap(&mut self, sequence: u16) -> u64 {
        let Some(highest) = self.highest else {
            let first = u64::from(sequence);
            self.highest = Some(first);
            return first;
        };
        let delta = sequence.wrapping_sub(highest as u16);
        let extended = if delta < 0x8000 {
            highest + u64::from(delta)
        } else {
            // Behind the highest: late or repeated (never before the first cycle).
            highest.saturating_sub(u64::from(delta.wrapping_neg()))
        };
        self.highest = Some(highest.max(extended));
        extended
    }
}

/// One RFC 4733 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// 0–9 digits, 10 `*`, 11 `#`, 12–15 `A`–`D`; others are tones this code does not name.
    pub event: u8,
    /// The last packets of the event (sent three times).
    pub end: bool,
    /// Power level, 0 to −63 dBm0, as its magnitude.
    pub volume: u8,
    /// How long the event has lasted, in the RTP clock's units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first four bytes of a payload.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let [event, flags, d0, d1, ..] = *payload else { return None };
        Some(TelephoneEvent { event, end: flags & 0x80 != 0, volume: flags & 0x3f, duration: u16::from_be_bytes([d0, d1]) })
    }

    /// The payload of this event.
    pub fn to_bytes(self) -> [u8; 4] {
        let [d0, d1] = self.duration.to_be_bytes();
        [self.event, u8::from(self.end) << 7 | (self.volume & 0x3f), d0, d1]
    }

    /// The key of a DTMF event.
    pub fn digit(self) -> Option<char> {
        Some(match self.event {
            0..=9 => char::from(b'0' + self.event),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + self.event - 12),
            _ => return None,
        })
    }

    /// The event of a DTMF key.
    pub fn event_of(digit: char) -> Option<u8> {
        Some(match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => digit as u8 - b'A' + 12,
            'a'..='d' => digit as u8 - b'a' + 12,
            _ => return None,
        })
    }
}

/// Turns a stream of telephone-event packets into key presses, once each: an event is the
/// packets sharing one RTP timestamp (its start), repeated while the key is held and its end
/// sent three times, any of which may be lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct DtmfReceiver {
    last: Option<u32>,
}

impl DtmfReceiver {
    /// The key a packet of `timestamp` carrying `event` starts, if it starts one.
    pub fn receive(&mut self, timestamp: u32, event: TelephoneEvent) -> Option<char> {
        if self.last == Some(timestamp) {
            return None;
        }
        self.last = Some(timestamp);
        event.digit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_round_trips_and_reads_csrcs_extensions_and_padding() {
        let packet = RtpPacket { marker: true, payload_type: 0, sequence: 65_535, timestamp: 160, ssrc: 0xdead_beef, payload: &[0xff; 160] };
        let mut out = Vec::new();
        packet.write(&mut out);
        assert_eq!(out.len(), 172);
        assert_eq!(RtpPacket::parse(&out), Ok(packet));

        // Two CSRCs, a one-word extension and three bytes of padding around a 4-byte payload.
        let mut dg = vec![0x80 | 0x20 | 0x10 | 2, 101, 0, 7, 0, 0, 1, 0, 1, 2, 3, 4];
        dg.extend_from_slice(&[9; 8]);
        dg.extend_from_slice(&[0xbe, 0xde, 0, 1, 5, 5, 5, 5]);
        dg.extend_from_slice(&[1, 0x8a, 0, 160]);
        dg.extend_from_slice(&[0, 0, 3]);
        let p = RtpPacket::parse(&dg).expect("a packet");
        assert_eq!((p.payload_type, p.sequence, p.timestamp, p.ssrc), (101, 7, 256, 0x0102_0304));
        assert_eq!(p.payload, &[1, 0x8a, 0, 160]);
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        assert_eq!(RtpPacket::parse(&[]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version), "version 1");
        assert_eq!(RtpPacket::parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(RtpError::TooShort), "15 CSRCs missing");
        assert_eq!(RtpPacket::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), Err(RtpError::TooShort), "an extension longer than the packet");
        let mut padded = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        padded.push(0);
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::Padding), "padding of zero");
        *padded.last_mut().unwrap_or(&mut 0) = 9;
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::Padding), "padding beyond the payload");
        // Everything up to 40 bytes of every shape: no panic.
        for len in 0..40 {
            for first in [0x80u8, 0x9f, 0xbf, 0xff] {
                let dg: Vec<u8> = (0..len).map(|i| if i == 0 { first } else { (i * 37) as u8 }).collect();
                let _ = RtpPacket::parse(&dg);
            }
        }
    }

    #[test]
    fn sequence_numbers_unwrap_across_the_wrap_and_late_ones_stay_behind() {
        let mut u = SequenceUnwrapper::default();
        assert_eq!(u.unwrap(65_534), 65_534);
        assert_eq!(u.unwrap(65_535), 65_535);
        assert_eq!(u.unwrap(0), 65_536);
        assert_eq!(u.unwrap(65_535), 65_535, "late, from before the wrap");
        assert_eq!(u.unwrap(2), 65_538);
        assert_eq!(u.unwrap(1), 65_537);
        let mut u = SequenceUnwrapper::default();
        assert_eq!(u.unwrap(3), 3);
        assert_eq!(u.unwrap(65_000), 0, "before the first packet: clamped, never negative");
    }

    #[test]
    fn telephone_events_name_their_keys_once_per_press() {
        let five = TelephoneEvent { event: 5, end: false, volume: 10, duration: 400 };
        assert_eq!(TelephoneEvent::parse(&five.to_bytes()), Some(five));
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None);
        let keys: String = (0..16).filter_map(|event| TelephoneEvent { event, end: true, volume: 0, duration: 0 }.digit()).collect();
        assert_eq!(keys, "0123456789*#ABCD");
        assert!(keys.chars().all(|k| TelephoneEvent::event_of(k).and_then(|e| TelephoneEvent { event: e, end: false, volume: 0, duration: 0 }.digit()) == Some(k)));
        assert_eq!(TelephoneEvent::event_of('x'), None);
        let mut rx = DtmfReceiver::default();
        let press = |end, duration| TelephoneEvent { event: 11, end, volume: 10, duration };
        assert_eq!(rx.receive(8_000, press(false, 160)), Some('#'));
        assert_eq!(rx.receive(8_000, press(false, 320)), None, "the key still held");
        assert_eq!(rx.receive(8_000, press(true, 800)), None, "its end, three times");
        assert_eq!(rx.receive(8_000, press(true, 800)), None);
        assert_eq!(rx.receive(9_600, press(true, 800)), Some('#'), "the next press, its start lost");
    }
}
