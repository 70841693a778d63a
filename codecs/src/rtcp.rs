//! RTCP (RFC 3550 §6) as a SIP call's media needs it: sender and receiver reports with their
//! report blocks read from a compound packet (other packet types skipped, malformed ones
//! refused), and our compound report written (SR with one report block, SDES with a CNAME) and
//! our BYE. Pure: bytes in, values out.

/// Why bytes are not RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Shorter than a header, or a length past the end.
    #[error("truncated RTCP")]
    Truncated,
    /// Not version 2.
    #[error("not RTCP version 2")]
    Version,
}

/// What a report says about one stream it receives (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The stream reported on.
    pub ssrc: u32,
    /// Lost since the last report, in 256ths.
    pub fraction_lost: u8,
    /// Lost since the start (24 bits, signed in the wire format; clamped at 0 here).
    pub cumulative_lost: u32,
    /// The extended highest sequence number received.
    pub highest_sequence: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR received, and the delay since it (in
    /// 1/65536 s): with them the sender computes the round trip.
    pub last_sr: u32,
    /// See `last_sr`.
    pub delay_since_last_sr: u32,
}

/// A sender's own counts (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP time, 32.32 fixed point.
    pub ntp: u64,
    /// The RTP timestamp of the same instant.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    /// SR (200).
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        blocks: Vec<ReportBlock>,
    },
    /// RR (201).
    ReceiverReport { ssrc: u32, blocks: Vec<ReportBlock> },
    /// BYE (203), for its first source.
    Bye { ssrc: u32 },
    /// Another type (SDES, APP, feedback …).
    Other(u8),
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, RtcpError> {
    let bytes = b.get(at..at + 4).ok_or(RtcpError::Truncated)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn blocks(body: &[u8], count: usize) -> Result<Vec<ReportBlock>, RtcpError> {
    (0..count)
        .map(|i| {
            let at = i * 24;
            let lost = u32_at(body, at + 4)?;
            let cumulative = lost & 0x00ff_ffff;
            Ok(ReportBlock {
                ssrc: u32_at(body, at)?,
                fraction_lost: (lost >> 24) as u8,
                // Negative (more duplicates than losses) reads as none.
                cumulative_lost: if cumulative & 0x0080_0000 != 0 { 0 } else { cumulative },
                highest_sequence: u32_at(body, at + 8)?,
                jitter: u32_at(body, at + 12)?,
                last_sr: u32_at(body, at + 16)?,
                delay_since_last_sr: u32_at(body, at + 20)?,
            })
        })
        .collect()
}

/// Reads a compound RTCP packet.
pub fn parse_compound(mut bytes: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head = bytes.get(..4).ok_or(RtcpError::Truncated)?;
        if head[0] >> 6 != 2 {
            return Err(RtcpError::Version);
        }
        let count = usize::from(head[0] & 0x1f);
        let kind = head[1];
        let len = (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4;
        let packet = bytes.get(..len).ok_or(RtcpError::Truncated)?;
        out.push(match kind {
            200 => RtcpPacket::SenderReport {
                ssrc: u32_at(packet, 4)?,
                info: SenderInfo {
                    ntp: (u64::from(u32_at(packet, 8)?) << 32) | u64::from(u32_at(packet, 12)?),
                    rtp_timestamp: u32_at(packet, 16)?,
                    packets: u32_at(packet, 20)?,
                    octets: u32_at(packet, 24)?,
                },
                blocks: blocks(packet.get(28..).ok_or(RtcpError::Truncated)?, count)?,
            },
            201 => RtcpPacket::ReceiverReport { ssrc: u32_at(packet, 4)?, blocks: blocks(packet.get(8..).ok_or(RtcpError::Truncated)?, count)? },
            203 if count > 0 => RtcpPacket::Bye { ssrc: u32_at(packet, 4)? },
            other => RtcpPacket::Other(other),
        });
        bytes = &bytes[len..];
        if out.len() > 32 {
            break;
        }
    }
    Ok(out)
}

/// Writes our compound report into `out` (cleared first): an SR (with `block` when we receive
/// a stream) and an SDES with our CNAME.
pub fn write_report(ssrc: u32, info: &SenderInfo, block: Option<&ReportBlock>, cname: &str, out: &mut Vec<u8>) {
    out.clear();
    let count = u8::from(block.is_some());
    let words = 6 + 6 * u16::from(count);
    out.extend_from_slice(&[0x80 | count, 200]);
    out.extend_from_slice(&words.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&info.ntp.to_be_bytes());
    for v in [info.rtp_timestamp, info.packets, info.octets] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(b) = block {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | (b.cumulative_lost & 0x007f_ffff)).to_be_bytes());
        for v in [b.highest_sequence, b.jitter, b.last_sr, b.delay_since_last_sr] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    // SDES: one chunk, CNAME, padded with at least one zero octet to a word.
    let name = &cname.as_bytes()[..cname.len().min(255)];
    let chunk = 4 + 2 + name.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    out.extend_from_slice(&[0x81, 202]);
    out.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[1, name.len() as u8]);
    out.extend_from_slice(name);
    out.resize(out.len() + (padded - chunk) + 1, 0);
}

/// Writes a BYE for `ssrc` into `out` (cleared first), after an RR without blocks (a compound
/// packet starts with a report).
pub fn write_bye(ssrc: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x80, 201, 0, 1]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[0x81, 203, 0, 1]);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_report_reads_back_and_a_bye_is_seen() {
        let info = SenderInfo { ntp: 0x0102_0304_0506_0708, rtp_timestamp: 160, packets: 50, octets: 8_000 };
        let block = ReportBlock { ssrc: 7, fraction_lost: 12, cumulative_lost: 3, highest_sequence: 70_000, jitter: 40, last_sr: 9, delay_since_last_sr: 65_536 };
        let mut out = Vec::new();
        write_report(0xabcd, &info, Some(&block), "cxb@127.0.0.1", &mut out);
        assert_eq!(out.len() % 4, 0);
        let read = parse_compound(&out).expect("RTCP");
        assert_eq!(read, [RtcpPacket::SenderReport { ssrc: 0xabcd, info, blocks: vec![block] }, RtcpPacket::Other(202)]);
        write_report(1, &info, None, "", &mut out);
        assert!(matches!(parse_compound(&out).expect("RTCP")[0], RtcpPacket::SenderReport { ref blocks, .. } if blocks.is_empty()));
        write_bye(5, &mut out);
        assert_eq!(parse_compound(&out).expect("RTCP"), [RtcpPacket::ReceiverReport { ssrc: 5, blocks: vec![] }, RtcpPacket::Bye { ssrc: 5 }]);
    }

    #[test]
    fn malformed_rtcp_is_refused() {
        assert_eq!(parse_compound(&[0x80, 200, 0]), Err(RtcpError::Truncated));
        assert_eq!(parse_compound(&[0x40, 200, 0, 0]), Err(RtcpError::Version));
        assert_eq!(parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]), Err(RtcpError::Truncated), "a block it does not hold");
        assert_eq!(parse_compound(&[0x80, 200, 0xff, 0xff]), Err(RtcpError::Truncated));
        // A negative cumulative loss (duplicates) reads as none.
        let rr = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0x10, 0xff, 0xff, 0xff, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(&parse_compound(&rr).expect("RR")[0], RtcpPacket::ReceiverReport { blocks, .. } if blocks[0].cumulative_lost == 0 && blocks[0].fraction_lost == 0x10));
    }
}
