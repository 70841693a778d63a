//! A SIP call's RTCP, sans-IO (RFC 3550 §6): what we received (packets, losses, interarrival
//! jitter by A.8, the last sender report heard) as a report block, our sender report every
//! 5 s on the RTP port + 1 (or where the peer's RTCP comes from), the peer's reports on our
//! stream kept for the call's result, and a BYE at the end.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use cxb_codecs::rtcp::{self, ReportBlock, RtcpPacket, SenderInfo};
use cxb_media::Timestamp;

/// How often we report.
const INTERVAL: Duration = Duration::from_secs(5);
/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX: u64 = 2_208_988_800;

/// What RTCP tells about a call, for its result.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcpStats {
    /// Packets the peer's sequence numbers say were sent to us and never came.
    pub lost: u64,
    /// Our interarrival jitter estimate of the peer's stream, ms.
    pub jitter_ms: f64,
    /// The peer's last report on our stream: fraction lost (0–1) and jitter (ms).
    pub peer_fraction_lost: Option<f64>,
    /// See `peer_fraction_lost`.
    pub peer_jitter_ms: Option<f64>,
    /// Reports sent and received.
    pub sent: u64,
    /// See `sent`.
    pub received: u64,
}

/// One call's RTCP.
#[derive(Debug)]
pub struct Rtcp {
    ssrc: u32,
    cname: String,
    /// The stream's clock at `now` zero, as Unix ms (for our NTP times).
    wallclock: Option<(Timestamp, u64)>,
    /// RTP clock ticks per millisecond.
    khz: u32,
    due: Option<Timestamp>,
    remote: Option<SocketAddr>,
    latched: bool,
    // What we receive.
    peer_ssrc: Option<u32>,
    first: Option<u64>,
    highest: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    jitter: f64,
    last_transit: Option<i64>,
    last_sr: Option<(u32, Timestamp)>,
    // What we send.
    packets_out: u32,
    octets_out: u32,
    rtp_timestamp: u32,
    stats: RtcpStats,
    tx: VecDeque<Vec<u8>>,
}

impl Rtcp {
    /// RTCP for our stream `ssrc`, reporting as `cname`; the streams' RTP clock ticks `khz`
    /// thousand times a second.
    pub fn new(ssrc: u32, cname: String, khz: u32) -> Rtcp {
        Rtcp {
            ssrc,
            cname,
            khz,
            wallclock: None,
            due: None,
            remote: None,
            latched: false,
            peer_ssrc: None,
            first: None,
            highest: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            last_sr: None,
            packets_out: 0,
            octets_out: 0,
            rtp_timestamp: 0,
            stats: RtcpStats::default(),
            tx: VecDeque::new(),
        }
    }

    /// The stream started at `now`, which is `unix_ms` on the wall clock; reports go to
    /// `remote` (the peer's RTP address, port + 1) until the peer's own RTCP is heard.
    pub fn start(&mut self, now: Timestamp, unix_ms: u64, remote: Option<SocketAddr>) {
        self.wallclock = Some((now, unix_ms));
        self.remote = remote.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
        self.due = Some(now + INTERVAL / 2);
    }

    /// The RTP address was latched (symmetric RTP): RTCP follows it unless the peer's RTCP
    /// came from elsewhere.
    pub fn rtp_latched(&mut self, rtp: SocketAddr) {
        if !self.latched {
            self.remote = Some(SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)));
        }
    }

    /// A packet of the peer's stream arrived at `now`: its SSRC, extended sequence number and
    /// RTP timestamp.
    pub fn received(&mut self, now: Timestamp, ssrc: u32, sequence: u64, timestamp: u32) {
        self.peer_ssrc = Some(ssrc);
        self.received += 1;
        self.first.get_or_insert(sequence);
        self.highest = self.highest.max(sequence);
        // RFC 3550 A.8: the transit time's variation, smoothed by 1/16, in timestamp units.
        let arrival = (now.as_micros() * u64::from(self.khz) / 1000) as i64;
        let transit = arrival - i64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// A packet of ours went out: its payload size and timestamp.
    pub fn sent(&mut self, payload: usize, timestamp: u32) {
        self.packets_out = self.packets_out.wrapping_add(1);
        self.octets_out = self.octets_out.wrapping_add(payload as u32);
        self.rtp_timestamp = timestamp;
    }

    /// A datagram on the RTCP port from `from` at `now`. False if it is not RTCP.
    pub fn on_datagram(&mut self, now: Timestamp, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok(packets) = rtcp::parse_compound(datagram) else { return false };
        if !self.latched {
            self.latched = true;
            self.remote = Some(from);
        }
        self.stats.received += 1;
        for packet in packets {
            let blocks = match packet {
                RtcpPacket::SenderReport { info, blocks, .. } => {
                    self.last_sr = Some(((info.ntp >> 16) as u32, now));
                    blocks
                }
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::Bye { .. } | RtcpPacket::Other(_) => continue,
            };
            if let Some(b) = blocks.iter().find(|b| b.ssrc == self.ssrc) {
                self.stats.peer_fraction_lost = Some(f64::from(b.fraction_lost) / 256.0);
                self.stats.peer_jitter_ms = Some(f64::from(b.jitter) / f64::from(self.khz));
            }
        }
        true
    }

    /// When a report is next due.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.due
    }

    /// Writes the report due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let Some(due) = self.due.filter(|due| *due <= now) else { return };
        self.due = Some(due.max(now) + INTERVAL);
        let ntp = self.ntp(now);
        let info = SenderInfo { ntp, rtp_timestamp: self.rtp_timestamp, packets: self.packets_out, octets: self.octets_out };
        let block = self.block(now);
        let mut out = Vec::with_capacity(80);
        rtcp::write_report(self.ssrc, &info, block.as_ref(), &self.cname, &mut out);
        self.tx.push_back(out);
        self.stats.sent += 1;
    }

    /// Our report block on the peer's stream, if we hear one; the interval's fraction lost.
    fn block(&mut self, now: Timestamp) -> Option<ReportBlock> {
        let (ssrc, first) = (self.peer_ssrc?, self.first?);
        let expected = self.highest - first + 1;
        let lost = expected.saturating_sub(self.received);
        let (interval_expected, interval_received) = (expected - self.expected_prior, self.received - self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let interval_lost = interval_expected.saturating_sub(interval_received);
        let fraction_lost = (interval_lost * 256).checked_div(interval_expected).map_or(0, |f| f.min(255) as u8);
        let (last_sr, delay) = match self.last_sr {
            Some((middle, at)) => (middle, (now.saturating_since(at).as_micros() * 65_536 / 1_000_000) as u32),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.min(0x7f_ffff) as u32,
            highest_sequence: self.highest as u32,
            jitter: self.jitter as u32,
            last_sr,
            delay_since_last_sr: delay,
        })
    }

    fn ntp(&self, now: Timestamp) -> u64 {
        let Some((at, unix_ms)) = self.wallclock else { return 0 };
        let ms = unix_ms + now.saturating_since(at).as_millis() as u64;
        let secs = ms / 1000 + NTP_UNIX;
        let fraction = ((ms % 1000) << 32) / 1000;
        (secs << 32) | fraction
    }

    /// The call is over: a BYE goes out.
    pub fn bye(&mut self) {
        let mut out = Vec::with_capacity(16);
        rtcp::write_bye(self.ssrc, &mut out);
        self.tx.push_back(out);
        self.due = None;
    }

    /// The next RTCP datagram and where it goes.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let remote = self.remote?;
        self.tx.pop_front().map(|b| (remote, b))
    }

    /// What RTCP says so far.
    pub fn stats(&self) -> RtcpStats {
        let lost = match self.first {
            Some(first) => (self.highest - first + 1).saturating_sub(self.received),
            None => 0,
        };
        RtcpStats { lost, jitter_ms: self.jitter / f64::from(self.khz), ..self.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn reports_count_losses_and_jitter_and_go_where_the_peers_rtcp_comes_from() {
        let mut r = Rtcp::new(0xabc, "cxb@127.0.0.1".into(), 8);
        let peer: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        r.start(at(0), 1_700_000_000_000, Some(peer));
        assert_eq!(r.deadline(), Some(at(2_500)));
        // 10 packets, #5 lost, #8 arriving 10 ms late.
        for seq in (1..=10u64).filter(|s| *s != 5) {
            let late = if seq == 8 { 10 } else { 0 };
            r.received(at(seq * 20 + late), 77, 1_000 + seq, (seq * 160) as u32);
            r.sent(160, (seq * 160) as u32);
        }
        r.handle_timeout(at(2_500));
        let (to, bytes) = r.poll_transmit().expect("a report");
        assert_eq!(to, "127.0.0.1:4001".parse().expect("addr"), "RTP port + 1 until the peer's RTCP is heard");
        let packets = rtcp::parse_compound(&bytes).expect("RTCP");
        let RtcpPacket::SenderReport { ssrc, info, blocks } = &packets[0] else { panic!("{packets:?}") };
        assert_eq!((*ssrc, info.packets, info.octets, info.rtp_timestamp), (0xabc, 9, 1_440, 1_600));
        assert_eq!(info.ntp >> 32, 1_700_000_002 + NTP_UNIX, "the wall clock at 2.5 s");
        let b = blocks[0];
        assert_eq!((b.ssrc, b.cumulative_lost, b.highest_sequence, b.fraction_lost), (77, 1, 1_010, 25), "1 of 10 lost: 25/256");
        assert!(b.jitter > 0, "a late packet makes jitter");
        assert_eq!(r.deadline(), Some(at(7_500)));
        // The peer's RR on our stream, from its own port.
        let from: SocketAddr = "127.0.0.1:5005".parse().expect("addr");
        let rr = [0x81, 201, 0, 7, 0, 0, 0, 77, 0, 0, 0x0a, 0xbc, 0x40, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(r.on_datagram(at(3_000), from, &rr));
        assert!(!r.on_datagram(at(3_000), from, b"junk"));
        let stats = r.stats();
        assert_eq!((stats.lost, stats.peer_fraction_lost, stats.peer_jitter_ms, stats.received), (1, Some(0.25), Some(10.0), 1));
        r.bye();
        assert_eq!(r.poll_transmit().map(|(to, _)| to), Some(from), "the peer's RTCP address latched");
        assert_eq!(r.deadline(), None);
    }
}
