//! SDP (RFC 4566) for one audio stream and the offer/answer a SIP endpoint needs (RFC 3264):
//! G.711 (PCMU, PCMA), Opus (RFC 7587) and telephone-event (RFC 4733), the peer's address and port, its
//! direction (hold is `sendonly`/`inactive` or the RFC 2543 `c=0.0.0.0`), `ptime`. Lines this
//! code does not use are kept out of the parse but never make it fail; lines that are there
//! and malformed do.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The longest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;

/// Why an SDP body could not be read or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Longer than [`MAX_SDP`].
    #[error("SDP body longer than {MAX_SDP} bytes")]
    TooLong,
    /// A line is not `x=value`, or a field of a line this code reads is malformed.
    #[error("malformed SDP line {line}: {why}")]
    Malformed {
        /// 1-based.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// No `m=audio` line.
    #[error("no audio stream offered")]
    NoAudio,
    /// The audio offers no codec this endpoint speaks (488 Not Acceptable Here).
    #[error("no common codec (this endpoint speaks PCMU, PCMA and Opus)")]
    NoCommonCodec,
}

/// The direction of a stream, from the sender of the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (the default).
    SendRecv,
    /// It sends only: it holds the other side.
    SendOnly,
    /// It receives only.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes to this offered one.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }
}

/// An `a=rtpmap`: a payload type's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// The payload type.
    pub payload_type: u8,
    /// e.g. `PCMU`, `telephone-event`, `opus`.
    pub encoding: String,
    /// Hz.
    pub clock_rate: u32,
}

/// The audio stream of a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Where it receives RTP; 0 refuses the stream.
    pub port: u16,
    /// Its payload types in order of preference.
    pub formats: Vec<u8>,
    /// The payload types it names.
    pub rtpmaps: Vec<RtpMap>,
    /// Its direction.
    pub direction: Direction,
    /// The address for this stream (`c=` at media level, else session level).
    pub address: Option<IpAddr>,
    /// Milliseconds of audio per packet it wants.
    pub ptime: Option<u32>,
}

/// A session description, as far as an audio call needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=` session id.
    pub session_id: u64,
    /// `o=` version: an answerer that changes its description increments it.
    pub version: u64,
    /// The first audio stream.
    pub audio: Audio,
}

/// The audio codecs this endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 mu-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
    /// Opus (RFC 7587) under the dynamic payload type the offer gave it; its RTP clock is
    /// 48 kHz whatever the audio's bandwidth.
    Opus(u8),
}

impl Codec {
    /// Its payload type.
    pub const fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::Opus(pt) => pt,
        }
    }

    /// Its RTP clock rate in Hz.
    pub const fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus(_) => 48_000,
        }
    }

    /// Its `a=rtpmap` encoding: name, clock rate and, for Opus, the two channels RFC 7587
    /// requires there (mono is asked for with `stereo=0`).
    const fn rtpmap(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::Opus(_) => "opus/48000/2",
        }
    }
}

/// What an offer and its answer settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The audio codec (payload type as the offer numbered it: static).
    pub codec: Codec,
    /// The payload type of telephone events, if both sides take them.
    pub dtmf: Option<u8>,
    /// Their clock rate: the audio's where the offer has events at that rate, else 8 kHz.
    pub dtmf_clock: u32,
    /// Where to send RTP (`None` while on hold with `c=0.0.0.0` or port 0).
    pub remote: Option<(IpAddr, u16)>,
    /// The peer's direction.
    pub direction: Direction,
    /// Milliseconds per packet to send (20 unless asked otherwise, within 10–60).
    pub ptime: u32,
}

impl SessionDescription {
    /// Reads a description; only its first audio stream is kept.
    pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
        if text.len() > MAX_SDP {
            return Err(SdpError::TooLong);
        }
        let mut origin = None;
        let mut session_address = None;
        let mut audio: Option<Audio> = None;
        // Media sections after the first audio one are skipped.
        let mut in_other_media = false;
        let mut session_direction = Direction::SendRecv;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let bad = |why| SdpError::Malformed { line: i + 1, why };
            let (kind, value) = line.split_once('=').ok_or_else(|| bad("not type=value"))?;
            match kind {
                "o" => {
                    let f: Vec<&str> = value.split(' ').collect();
                    let [_, id, version, ..] = f[..] else { return Err(bad("o= needs six fields")) };
                    origin = Some((id.parse().map_err(|_| bad("session id"))?, version.parse().map_err(|_| bad("session version"))?));
                }
                "m" => {
                    let done = audio.is_some();
                    let mut f = value.split(' ');
                    let media = f.next().unwrap_or_default();
                    if media != "audio" || done {
                        in_other_media = true;
                        continue;
                    }
                    in_other_media = false;
                    let port = f.next().ok_or_else(|| bad("m= port"))?;
                    let port = port.split('/').next().unwrap_or(port).parse().map_err(|_| bad("m= port"))?;
                    let _proto = f.next().ok_or_else(|| bad("m= protocol"))?;
                    let formats = f.filter(|s| !s.is_empty()).map(|s| s.parse::<u8>().map_err(|_| bad("m= format"))).collect::<Result<Vec<_>, _>>()?;
                    audio = Some(Audio { port, formats, rtpmaps: Vec::new(), direction: session_direction, address: None, ptime: None });
                }
                _ if in_other_media => {}
                "c" => {
                    let mut f = value.split(' ');
                    let (_net, _kind, addr) = (f.next(), f.next(), f.next().ok_or_else(|| bad("c= address"))?);
                    let addr = addr.split('/').next().unwrap_or(addr).parse().map_err(|_| bad("c= address"))?;
                    match audio.as_mut() {
                        Some(a) => a.address = Some(addr),
                        None => session_address = Some(addr),
                    }
                }
                "a" => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    let direction = match name {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    match (name, audio.as_mut()) {
                        (_, None) => {
                            if let Some(d) = direction {
                                session_direction = d;
                            }
                        }
                        (_, Some(a)) if direction.is_some() => a.direction = direction.unwrap_or(a.direction),
                        ("rtpmap", Some(a)) => {
                            let (pt, map) = arg.split_once(' ').ok_or_else(|| bad("a=rtpmap"))?;
                            let mut parts = map.split('/');
                            let encoding = parts.next().unwrap_or_default().to_string();
                            let clock_rate = parts.next().ok_or_else(|| bad("a=rtpmap clock rate"))?.parse().map_err(|_| bad("a=rtpmap clock rate"))?;
                            a.rtpmaps.push(RtpMap { payload_type: pt.parse().map_err(|_| bad("a=rtpmap payload type"))?, encoding, clock_rate });
                        }
                        ("ptime", Some(a)) => a.ptime = Some(arg.trim().parse().map_err(|_| bad("a=ptime"))?),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let (session_id, version) = origin.ok_or(SdpError::Malformed { line: 0, why: "no o= line" })?;
        let mut audio = audio.ok_or(SdpError::NoAudio)?;
        audio.address = audio.address.or(session_address);
        Ok(SessionDescription { session_id, version, audio })
    }

    /// The encoding a payload type stands for in this description (static types by number),
    /// and its clock rate.
    fn encoding(&self, pt: u8) -> Option<(&str, u32)> {
        if let Some(m) = self.audio.rtpmaps.iter().find(|m| m.payload_type == pt) {
            return Some((m.encoding.as_str(), m.clock_rate));
        }
        match pt {
            0 => Some(("PCMU", 8000)),
            8 => Some(("PCMA", 8000)),
            _ => None,
        }
    }

    /// What this endpoint takes of an offer: the first codec it speaks in the offer's order
    /// (the offerer's preference), and telephone events, at the audio's clock rate if offered
    /// so, else at 8 kHz.
    pub fn negotiate(&self) -> Result<Negotiated, SdpError> {
        self.negotiate_keeping(None)
    }

    /// [`SessionDescription::negotiate`] for a new offer in a call whose media runs under
    /// payload type `current`: that codec stays if the offer still has it (a re-INVITE that
    /// only holds the call, or lists its codecs in another order, changes nothing).
    pub fn renegotiate(&self, current: u8) -> Result<Negotiated, SdpError> {
        self.negotiate_keeping(Some(current))
    }

    fn codec(&self, pt: u8) -> Option<Codec> {
        match self.encoding(pt) {
            Some((e, 8000)) if e.eq_ignore_ascii_case("PCMU") && pt == 0 => Some(Codec::Pcmu),
            Some((e, 8000)) if e.eq_ignore_ascii_case("PCMA") && pt == 8 => Some(Codec::Pcma),
            Some((e, 48_000)) if e.eq_ignore_ascii_case("opus") && pt >= 96 => Some(Codec::Opus(pt)),
            _ => None,
        }
    }

    fn negotiate_keeping(&self, current: Option<u8>) -> Result<Negotiated, SdpError> {
        let offered = |pt: &u8| self.audio.formats.contains(pt);
        let codec = current
            .filter(offered)
            .and_then(|pt| self.codec(pt))
            .or_else(|| self.audio.formats.iter().find_map(|&pt| self.codec(pt)))
            .ok_or(SdpError::NoCommonCodec)?;
        let events_at = |clock: u32| {
            self.audio.formats.iter().copied().find(|&pt| matches!(self.encoding(pt), Some((e, c)) if c == clock && e.eq_ignore_ascii_case("telephone-event")))
        };
        let (dtmf, dtmf_clock) = match events_at(codec.clock_rate()) {
            Some(pt) => (Some(pt), codec.clock_rate()),
            None => (events_at(8000), 8000),
        };
        let remote = match self.audio.address {
            Some(addr) if !addr.is_unspecified() && self.audio.port != 0 => Some((addr, self.audio.port)),
            _ => None,
        };
        Ok(Negotiated { codec, dtmf, dtmf_clock, remote, direction: self.audio.direction, ptime: self.audio.ptime.filter(|p| (10..=60).contains(p)).unwrap_or(20) })
    }
}

/// This endpoint's side of a session: what its offers and answers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The address in `o=` and `c=` (the advertised one behind NAT).
    pub address: IpAddr,
    /// The RTP port.
    pub port: u16,
    /// `o=` session id.
    pub session_id: u64,
    /// `o=` version.
    pub version: u64,
}

impl Local {
    /// An answer to `negotiated` (from [`SessionDescription::negotiate`]).
    pub fn answer(&self, negotiated: &Negotiated) -> String {
        self.write(&[negotiated.codec], negotiated.dtmf.map(|pt| (pt, negotiated.dtmf_clock)), negotiated.direction.answer(), negotiated.ptime)
    }

    /// An offer of PCMU, PCMA and telephone events (payload type 101): what every trunk
    /// takes (the engine answers Opus when a caller offers it).
    pub fn offer(&self) -> String {
        self.write(&[Codec::Pcmu, Codec::Pcma], Some((101, 8000)), Direction::SendRecv, 20)
    }

    fn write(&self, codecs: &[Codec], dtmf: Option<(u8, u32)>, direction: Direction, ptime: u32) -> String {
        let ip = match self.address {
            IpAddr::V4(_) => "IP4",
            IpAddr::V6(_) => "IP6",
        };
        let mut s = String::with_capacity(256);
        let _ = write!(s, "v=0\r\no=cxb {} {} IN {ip} {}\r\ns=cxb\r\nc=IN {ip} {}\r\nt=0 0\r\nm=audio {} RTP/AVP", self.session_id, self.version, self.address, self.address, self.port);
        for c in codecs {
            let _ = write!(s, " {}", c.payload_type());
        }
        if let Some((pt, _)) = dtmf {
            let _ = write!(s, " {pt}");
        }
        s.push_str("\r\n");
        for c in codecs {
            let _ = write!(s, "a=rtpmap:{} {}\r\n", c.payload_type(), c.rtpmap());
            if let Codec::Opus(pt) = c {
                // Mono, and no more than telephone bandwidth: the engine decodes at 8 kHz.
                let _ = write!(s, "a=fmtp:{pt} stereo=0;sprop-stereo=0;maxplaybackrate=8000;sprop-maxcapturerate=8000;useinbandfec=1\r\n");
            }
        }
        if let Some((pt, clock)) = dtmf {
            let _ = write!(s, "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-16\r\n");
        }
        let _ = write!(s, "a=ptime:{ptime}\r\na={}\r\n", direction.attribute());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as baresip makes one: Opus first, then G.711 and telephone events.
    const OFFER: &str = "v=0\r\n\
        o=- 1728 3 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 10002 RTP/AVP 96 8 0 101\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n\
        m=video 0 RTP/AVP 97\r\n\
        a=sendonly\r\n";

    #[test]
    fn an_offer_is_answered_with_its_first_codec_this_endpoint_speaks_and_telephone_events() {
        let offer = SessionDescription::parse(OFFER).expect("an offer");
        assert_eq!((offer.session_id, offer.version), (1728, 3));
        assert_eq!(offer.audio.formats, [96, 8, 0, 101]);
        assert_eq!(offer.audio.direction, Direction::SendRecv, "the video's sendonly is not the audio's");
        let n = offer.negotiate().expect("Opus is offered");
        assert_eq!((n.codec, n.dtmf, n.dtmf_clock), (Codec::Opus(96), Some(101), 8000), "events only at 8 kHz are taken as they are");
        let local = Local { address: "127.0.0.1".parse().expect("ip"), port: 20_000, session_id: 9, version: 1 };
        let answer = local.answer(&n);
        assert!(answer.contains("a=rtpmap:96 opus/48000/2\r\na=fmtp:96 stereo=0;"), "{answer}");
        assert!(answer.contains("a=rtpmap:101 telephone-event/8000\r\n"), "{answer}");
        let back = SessionDescription::parse(&answer).and_then(|a| a.negotiate()).expect("our answer is acceptable");
        assert_eq!(back.codec, Codec::Opus(96));
        // Events at the audio's 48 kHz clock are preferred where offered.
        let both = OFFER.replace("96 8 0 101", "96 8 0 101 102").replace("a=ptime", "a=rtpmap:102 telephone-event/48000\r\na=ptime");
        let n = SessionDescription::parse(&both).and_then(|o| o.negotiate()).expect("offer");
        assert_eq!((n.dtmf, n.dtmf_clock), (Some(102), 48_000));
        assert!(local.answer(&n).contains("a=rtpmap:102 telephone-event/48000\r\n"));
        // Opus under a static payload type, or at another clock, is not Opus.
        let odd = OFFER.replace("96 8 0 101", "8 0 101").replace("a=rtpmap:96 opus/48000/2", "a=rtpmap:97 opus/16000/2");
        assert_eq!(SessionDescription::parse(&odd).and_then(|o| o.negotiate()).map(|n| n.codec), Ok(Codec::Pcma));
        // A re-offer keeps the codec the call runs on while it is offered.
        let reoffer = SessionDescription::parse(OFFER).expect("offer");
        assert_eq!(reoffer.renegotiate(0).map(|n| n.codec), Ok(Codec::Pcmu));
        assert_eq!(reoffer.renegotiate(9).map(|n| n.codec), Ok(Codec::Opus(96)), "not offered: the offer's first");

        let offer = SessionDescription::parse(&OFFER.replace("96 8 0 101", "8 0 96 101")).expect("an offer");
        let n = offer.negotiate().expect("G.711 is offered");
        assert_eq!(n.codec, Codec::Pcma, "the offer's order: PCMA before PCMU");
        assert_eq!(n.dtmf, Some(101));
        assert_eq!(n.remote, Some(("127.0.0.1".parse().expect("ip"), 10002)));
        assert_eq!(n.ptime, 20);
        let local = Local { address: "127.0.0.1".parse().expect("ip"), port: 20_000, session_id: 9, version: 1 };
        let answer = SessionDescription::parse(&local.answer(&n)).expect("our answer parses");
        assert_eq!(answer.audio.formats, [8, 101]);
        assert_eq!(answer.audio.port, 20_000);
        assert_eq!(answer.negotiate().expect("and is acceptable").codec, Codec::Pcma);
        let offer = SessionDescription::parse(&local.offer()).expect("our offer parses");
        assert_eq!(offer.negotiate().map(|n| (n.codec, n.dtmf)), Ok((Codec::Pcmu, Some(101))));
    }

    #[test]
    fn hold_and_refusals_are_read() {
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        let n = SessionDescription::parse(&hold).and_then(|s| s.negotiate()).expect("held");
        assert_eq!((n.direction, n.direction.answer()), (Direction::SendOnly, Direction::RecvOnly));
        let old_hold = OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(SessionDescription::parse(&old_hold).and_then(|s| s.negotiate()).map(|n| n.remote), Ok(None));
        let g722_only = OFFER.replace("m=audio 10002 RTP/AVP 96 8 0 101", "m=audio 10002 RTP/AVP 9 101");
        assert_eq!(SessionDescription::parse(&g722_only).and_then(|s| s.negotiate()), Err(SdpError::NoCommonCodec));
        let video_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nm=video 9 RTP/AVP 97\r\n";
        assert_eq!(SessionDescription::parse(video_only), Err(SdpError::NoAudio));
    }

    #[test]
    fn malformed_descriptions_are_errors_not_panics() {
        for bad in [
            "",
            "v=0",
            "garbage",
            "o=- x 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0",
            "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio port RTP/AVP 0",
            "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 300",
            "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU",
            "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 not-an-ip",
            "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\na=ptime:x",
        ] {
            assert!(SessionDescription::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SessionDescription::parse(&"a".repeat(MAX_SDP + 1)), Err(SdpError::TooLong));
        let static_only = "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n";
        assert_eq!(SessionDescription::parse(static_only).and_then(|s| s.negotiate()).map(|n| n.codec), Ok(Codec::Pcmu), "static types need no rtpmap");
    }
}
