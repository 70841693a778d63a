//! A transfer the far end would not take (its REFER refused, or never answered): the engine
//! dials the destination itself and relays the media between the caller and the new leg until
//! either hangs up, as a back-to-back user agent. The new leg goes to the host of a `sip:`
//! destination (through the egress policy, like every address a tenant names), or to the
//! caller's own trunk for a number. The caller hears the engine's comfort silence while the
//! new leg rings; once it answers, each side's 20 ms frames go to the other, re-encoded when
//! the two legs settled on different codecs. Keys and hold are not relayed.

use std::time::{Duration, Instant};

use cxb_codecs::Encoding;
use cxb_sip::message::Message;
use cxb_sip::outbound::{Dial, DialEvent, DialOutput, OutboundCall};
use cxb_sip::sdp::SessionDescription;

use super::media_pump::MediaInbox;
use super::sip::{Dialog, DialogEvent, Media, MediaSockets, PortLease, Registered, random, register, rtp_config, send_media};
use super::*;
use crate::sip::SipPeer;
use crate::transport::{RtpEvent, RtpTransport};

/// How long the new leg may ring.
const RING: Duration = Duration::from_secs(30);

/// How a bridge went, for the call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bridged {
    /// The new leg's final answer to its INVITE (200 when it answered).
    pub(super) status: u16,
    /// How long the two legs talked.
    pub(super) talked: Duration,
}

/// The new leg's media once answered.
struct LegB {
    rtp: RtpTransport,
    encoding: Encoding,
    answered: Instant,
}

impl<D: Dialog> Media<'_, D> {
    /// Dials `destination` and relays the caller's media (`a`, its sockets `a_send` and
    /// `a_rtcp`, its datagrams in `a_media`) to it until either side hangs up. `None` when the
    /// destination cannot be dialled from here (not an address the policy allows).
    pub(super) async fn bridge(&mut self, destination: &str, a: &mut RtpTransport, a_send: &std::net::UdpSocket, a_rtcp: Option<&std::net::UdpSocket>, a_media: &MediaInbox) -> Option<Bridged> {
        let worker = self.worker.clone();
        let sip = self.sip;
        let (uri, b_peer) = self.destination(destination).await?;
        let Some((sockets, port)) = worker.bind_rtp(sip) else {
            return Some(Bridged { status: 503, talked: Duration::ZERO });
        };
        let _lease = PortLease { worker: worker.clone(), port };
        let MediaSockets { rtp: b_send, rtcp: b_rtcp } = sockets;
        let pump = worker.media_pump.clone();
        let b_registration = pump.register(&b_send, b_rtcp.as_ref()).ok()?;
        let b_media = &b_registration.inbox;
        let call_id = format!("{:016x}b@{}", random(), sip.advertise);
        let b_inbox = register(&worker, &call_id);
        let _registered = Registered { worker: worker.clone(), call_id: call_id.clone() };
        let sdp = cxb_sip::sdp::Local { address: sip.advertise, port, session_id: random() >> 1, version: 1 };
        let caller = self.dialog.remote_user().filter(|u| crate::sip::dial::user_part(u)).unwrap_or_else(|| "cxb".into());
        let mut b = OutboundCall::new(
            worker.sip_now(),
            Dial {
                target: uri.clone(),
                from: format!("<sip:{caller}@{}>", sip.advertise),
                to: format!("<{uri}>"),
                call_id,
                tag: format!("{:016x}", random()),
                contact: format!("sip:cxb@{}{}", sip.sent_by_for(b_peer), b_peer.uri_param()),
                sent_by: sip.sent_by_for(b_peer),
                transport: b_peer.transport(),
                sdp: sdp.offer(),
                credentials: None,
                headers: Vec::new(),
                ring_timeout: RING,
            },
        );
        let mut leg_b: Option<LegB> = None;
        let mut ctl = std::pin::pin!(self.mailbox.recv());
        let (mut frames, mut samples) = (Vec::new(), Vec::new());
        let a_encoding = a.session_encoding();
        let mut events = Vec::new();
        let outcome = loop {
            // The new leg's signalling.
            let mut b_over = None;
            let b_next = loop {
                match b.poll_output() {
                    DialOutput::Transmit(m) => sip.send(b_peer, m.as_bytes()),
                    DialOutput::Timeout(at) => break at,
                    DialOutput::Event(DialEvent::Answered(answer)) => {
                        let negotiated = SessionDescription::parse(&answer).ok().and_then(|a| a.negotiate().ok());
                        match negotiated.map(|n| RtpTransport::new(rtp_config(&n))) {
                            Some(Ok(mut rtp)) => {
                                rtp.start(worker.now(), unix_ms());
                                leg_b = Some(LegB { encoding: rtp.session_encoding(), rtp, answered: Instant::now() });
                            }
                            _ => {
                                b.hang_up(worker.sip_now());
                                b_over = Some(488);
                            }
                        }
                    }
                    DialOutput::Event(DialEvent::Failed(code)) => b_over = Some(code),
                    DialOutput::Event(DialEvent::Ended { .. }) => b_over = Some(200),
                    DialOutput::Event(_) => {}
                }
            };
            if let Some(code) = b_over {
                break Bridged { status: if leg_b.is_some() { 200 } else { code }, talked: leg_b.as_ref().map_or(Duration::ZERO, |l| l.answered.elapsed()) };
            }
            // The caller's signalling: its BYE ends both legs.
            let a_next = self.signal(&mut events);
            if events.drain(..).any(|e| matches!(e, DialogEvent::Ended(_))) {
                b.hang_up(worker.sip_now());
                break self.bridged(&leg_b, 200);
            }
            // Media, both ways.
            let now = worker.now();
            while let Some(d) = a_media.pop() {
                if d.rtcp {
                    a.on_rtcp(now, d.from, &d.bytes);
                } else {
                    self.mailbox.last_rx.set(Instant::now());
                    if let (RtpEvent::Audio { frames: f, .. }, Some(leg)) = (a.on_datagram(now, d.from, &d.bytes), leg_b.as_mut()) {
                        convert(a_encoding, leg.encoding, f, &mut samples, &mut frames);
                        leg.rtp.transmit(now, crate::session::Transmit::Audio(&frames));
                    }
                }
                a_media.recycle(d.bytes);
            }
            while let Some(d) = b_media.pop() {
                if let Some(leg) = leg_b.as_mut() {
                    if d.rtcp {
                        leg.rtp.on_rtcp(now, d.from, &d.bytes);
                    } else if let RtpEvent::Audio { frames: f, .. } = leg.rtp.on_datagram(now, d.from, &d.bytes) {
                        convert(leg.encoding, a_encoding, f, &mut samples, &mut frames);
                        a.transmit(now, crate::session::Transmit::Audio(&frames));
                    }
                }
                b_media.recycle(d.bytes);
            }
            a.handle_timeout(now);
            send_media(a, a_send, a_rtcp);
            if let Some(leg) = leg_b.as_mut() {
                leg.rtp.handle_timeout(now);
                send_media(&mut leg.rtp, &b_send, b_rtcp.as_ref());
            }
            let deadline = [a.deadline(), leg_b.as_ref().and_then(|l| l.rtp.deadline())]
                .into_iter()
                .flatten()
                .map(|t| worker.instant(t))
                .chain([a_next, b_next].into_iter().flatten().map(|at| worker.epoch + at))
                .min();
            let mut timer = std::pin::pin!(async move {
                match deadline {
                    Some(at) => compio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            });
            let a_inbox = self.inbox;
            enum Wake {
                Work,
                BSip,
                Timer,
                Control,
            }
            let wake = std::future::poll_fn(|cx| {
                if a_media.poll_ready(cx).is_ready() || b_media.poll_ready(cx).is_ready() || a_inbox.poll_ready(cx).is_ready() {
                    return std::task::Poll::Ready(Wake::Work);
                }
                if b_inbox.poll_ready(cx).is_ready() {
                    return std::task::Poll::Ready(Wake::BSip);
                }
                if ctl.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(Wake::Control);
                }
                timer.as_mut().poll(cx).map(|()| Wake::Timer)
            })
            .await;
            match wake {
                Wake::Work => {
                    if self.inbox.hangup.take() {
                        b.hang_up(worker.sip_now());
                        break self.bridged(&leg_b, 200);
                    }
                }
                Wake::BSip => {
                    while let Some((_, bytes)) = b_inbox.pop() {
                        if let Ok(m) = Message::parse(&bytes) {
                            b.on_message(worker.sip_now(), &m);
                        }
                    }
                    if b_inbox.hangup.take() {
                        b.hang_up(worker.sip_now());
                    }
                }
                Wake::Timer => {
                    self.dialog.handle_timeout(worker.sip_now());
                    b.handle_timeout(worker.sip_now());
                }
                Wake::Control => {
                    b.hang_up(worker.sip_now());
                    break self.bridged(&leg_b, 200);
                }
            }
        };
        // The new leg's last messages (our BYE or CANCEL, its answer), briefly.
        let until = Instant::now() + Duration::from_secs(2);
        while !b.is_ended() && Instant::now() < until {
            while let DialOutput::Transmit(m) = b.poll_output() {
                sip.send(b_peer, m.as_bytes());
            }
            compio::time::sleep(Duration::from_millis(20)).await;
            while let Some((_, bytes)) = b_inbox.pop() {
                if let Ok(m) = Message::parse(&bytes) {
                    b.on_message(worker.sip_now(), &m);
                }
            }
            b.handle_timeout(worker.sip_now());
        }
        if let Some(leg) = leg_b.as_mut() {
            leg.rtp.rtcp_bye();
            send_media(&mut leg.rtp, &b_send, b_rtcp.as_ref());
        }
        Some(outcome)
    }

    fn bridged(&self, leg: &Option<LegB>, answered: u16) -> Bridged {
        match leg {
            Some(l) => Bridged { status: answered, talked: l.answered.elapsed() },
            None => Bridged { status: 487, talked: Duration::ZERO },
        }
    }

    /// The new leg's Request-URI and where to send it: a `sip:` destination's own host over
    /// UDP (if the egress policy allows it), or the caller's trunk for a number, the way the
    /// caller came (its UDP address, or its TCP or TLS connection). `None` for what cannot be
    /// dialled from here (`sips:`, a URI naming another transport, a malformed one).
    async fn destination(&self, destination: &str) -> Option<(String, SipPeer)> {
        if destination.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("sip:")) {
            let (uri, host, port) = sip_target(destination)?;
            let addr = cxb_pipeline::egress::resolve(&host, port).await.ok()?.first().copied()?;
            return Some((uri, SipPeer::Udp(addr)));
        }
        let number = destination.strip_prefix("tel:").unwrap_or(destination);
        if !crate::sip::dial::user_part(number) {
            return None;
        }
        Some((format!("sip:{number}@{}", self.peer.addr()), self.peer))
    }
}

/// A `sip:` destination's Request-URI, host and port (5060 by default); `None` when it is
/// malformed or names a transport other than UDP.
fn sip_target(destination: &str) -> Option<(String, String, u16)> {
    let uri = destination.split(['>', ' ']).next().unwrap_or(destination);
    let lower = uri.to_ascii_lowercase();
    let rest = lower.strip_prefix("sip:")?;
    if uri.chars().any(|c| c.is_control() || c == '<') || lower.contains(";transport=") && !lower.contains(";transport=udp") {
        return None;
    }
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split([';', '?']).next().unwrap_or_default();
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 5060,
                None => return None,
            };
            (host, port)
        }
        None => match host_port.rsplit_once(':') {
            Some((host, p)) => (host, p.parse().ok()?),
            None => (host_port, 5060),
        },
    };
    (!host.is_empty() && crate::sip::dial::host_part(host)).then(|| (uri.to_string(), host.to_string(), port))
}

/// Frames in `from`'s encoding as `to`'s, in `out`.
fn convert(from: Encoding, to: Encoding, frames: &[u8], samples: &mut Vec<i16>, out: &mut Vec<u8>) {
    out.clear();
    if from == to {
        out.extend_from_slice(frames);
        return;
    }
    samples.clear();
    if from.decode_into(frames, samples).is_ok() {
        to.encode_into(samples, out);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_destinations_are_read_and_odd_ones_refused() {
        let t = sip_target;
        assert_eq!(t("sip:+15550188@127.0.0.1:5080"), Some(("sip:+15550188@127.0.0.1:5080".into(), "127.0.0.1".into(), 5080)));
        assert_eq!(t("SIP:desk@Example.com;user=phone"), Some(("SIP:desk@Example.com;user=phone".into(), "example.com".into(), 5060)));
        assert_eq!(t("sip:desk@[::1]:5070").map(|(_, h, p)| (h, p)), Some(("::1".into(), 5070)));
        assert_eq!(t("sip:desk@[::1]").map(|(_, h, p)| (h, p)), Some(("::1".into(), 5060)));
        for bad in ["sip:desk@[::1", "sip:desk@host:port", "sip:desk@host;transport=tcp", "sip:a@b\r\nX: y", "sip:desk@", "sips:desk@host", "sip:desk@[::1]x"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        let mut out = Vec::new();
        convert(Encoding::Mulaw, Encoding::Alaw, &[0xff; 160], &mut Vec::new(), &mut out);
        assert_eq!(out.len(), 160, "re-encoded frame by frame");
        convert(Encoding::Mulaw, Encoding::L16, &[0xff; 160], &mut Vec::new(), &mut out);
        assert_eq!(out.len(), 320);
    }
}
