//! `cargo xtask load --protocol sip`: each call is a SIP user agent on one UDP socket of its
//! own (signalling and RTP on the same port): INVITE with an SDP offer of PCMU and telephone
//! events, ACK of the 200, then RTP at 50 packets a second on an absolute clock from the
//! speech fixture, then BYE. The engine answers from its SIP port and sends RTP from the
//! call's own port; datagrams are told apart by their first byte (RTP's version bits).
//!
//! Echoed frames are the engine's packets that are not its comfort silence (every byte the
//! mu-law silence byte); the fixture carries a quiet tone under the speech so that no echoed
//! frame is silent. The k-th echoed frame is matched to the k-th frame sent for its latency.
//!
//! Once answered, a call's RTP runs in the [`Pump`](super::pump::Pump).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::net::UdpSocket;
use cxb_codecs::rtp::RtpPacket;
use cxb_sip::message::{Message, StartLine};
use futures_util::future::{Either, select};

use super::pump::{Done, Pump, PumpCall};
use super::{Options, Shared};

/// 20 ms frames of mu-law for every call: the speech fixture with a quiet 1 kHz tone under it.
pub(super) fn frames(seconds: u64) -> Vec<[u8; 160]> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).unwrap_or_default();
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let count = (seconds * 50) as usize;
    let chunks: Vec<&[i16]> = samples.chunks_exact(160).collect();
    (0..count)
        .map(|k| {
            let chunk = chunks.get(k % chunks.len().max(1)).copied().unwrap_or(&[]);
            let mut frame = [0xFF; 160];
            for (i, byte) in frame.iter_mut().enumerate() {
                let tone = [0, 354, 500, 354, 0, -354, -500, -354][i % 8];
                let s = chunk.get(i).copied().unwrap_or(0).saturating_add(tone);
                *byte = cxb_codecs::g711::encode_mulaw(s);
            }
            frame
        })
        .collect()
}

fn invite(call_id: &str, local: SocketAddr, target: SocketAddr, bot: &str) -> String {
    let sdp = format!(
        "v=0\r\no=load 1 1 IN IP4 {ip}\r\ns=load\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = local.ip(),
        port = local.port()
    );
    format!(
        "INVITE sip:{bot}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:load@{local}>;tag=l{call_id}\r\nTo: <sip:{bot}@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:load@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A request in the dialog (`ACK` or `BYE`) with the engine's To tag.
fn in_dialog(method: &str, cseq: u32, call_id: &str, local: SocketAddr, target: SocketAddr, bot: &str, to_tag: &str) -> String {
    format!(
        "{method} sip:{bot}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{method}{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:load@{local}>;tag=l{call_id}\r\nTo: <sip:{bot}@{target}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn is_rtp(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xC0 == 0x80)
}

/// The RTP address in an answer's SDP (`c=` and `m=audio`).
fn media_address(sdp: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(sdp).ok()?;
    let answer = cxb_sip::sdp::SessionDescription::parse(text).ok()?;
    let (ip, port) = answer.negotiate().ok()?.remote?;
    Some(SocketAddr::new(ip, port))
}

async fn recv(socket: &UdpSocket, buf: Vec<u8>) -> BufResult<(usize, SocketAddr), Vec<u8>> {
    socket.recv_from(buf).await
}

/// One SIP call of the load: signalling here, its media in `pump`.
pub(super) async fn call(o: &Options, index: usize, frames: &Rc<[[u8; 160]]>, shared: &RefCell<Shared>, pump: &Rc<Pump>) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {}", e.kind());
    let bind = SocketAddr::new(o.addr.ip(), 0);
    let std_socket = std::net::UdpSocket::bind(bind).map_err(|e| io("bind", e))?;
    std_socket.set_nonblocking(true).map_err(|e| io("nonblocking", e))?;
    let socket = UdpSocket::from_std(std_socket.try_clone().map_err(|e| io("clone", e))?).map_err(|e| io("runtime", e))?;
    let local = socket.local_addr().map_err(|e| io("local addr", e))?;
    let call_id = format!("load{index}x{}", local.port());
    let target = o.addr;
    let offer = invite(&call_id, local, target, &o.bot);
    // INVITE until a final answer (retransmitted on T1 doubling, as RFC 3261 asks over UDP).
    let mut read = Box::pin(recv(&socket, Vec::with_capacity(2048)));
    let mut resend = Duration::from_millis(500);
    let mut next_send = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(16);
    let (to_tag, media) = loop {
        if Instant::now() >= next_send {
            socket.send_to(offer.clone().into_bytes(), target).await.0.map_err(|e| io("send", e))?;
            next_send = Instant::now() + resend;
            resend = (resend * 2).min(Duration::from_secs(4));
        }
        if Instant::now() >= give_up {
            return Err("no final answer to the INVITE".into());
        }
        let wait = Box::pin(compio::time::sleep_until(next_send.min(give_up)));
        let Either::Left((BufResult(got, mut b), _)) = select(read.as_mut(), wait).await else { continue };
        let answer = match got {
            Ok((n, _)) if !is_rtp(&b[..n]) => match Message::parse(&b[..n]) {
                Ok(m) => match m.start {
                    StartLine::Response { code, .. } if code >= 200 => {
                        Some((code, m.tag("To").unwrap_or_default().to_string(), media_address(m.body)))
                    }
                    _ => None,
                },
                Err(_) => None,
            },
            _ => None,
        };
        b.clear();
        read.set(recv(&socket, b));
        match answer {
            Some((code, tag, _)) if code >= 300 => {
                let ack = in_dialog("ACK", 1, &call_id, local, target, &o.bot, &tag);
                let _ = socket.send_to(ack.into_bytes(), target).await;
                shared.borrow_mut().rejected += 1;
                return Err(format!("INVITE refused: {code}"));
            }
            Some((_, tag, Some(media))) if !tag.is_empty() => break (tag, media),
            Some(_) => return Err("a 200 without a To tag or a usable SDP answer".into()),
            None => {}
        }
    };
    let ack = in_dialog("ACK", 1, &call_id, local, target, &o.bot, &to_tag);
    socket.send_to(ack.into_bytes(), target).await.0.map_err(|e| io("send", e))?;
    // The runtime lets go of the socket: the pump reads it from now on.
    drop(read);
    drop(socket);
    shared.borrow_mut().connected += 1;

    let total = frames.len();
    let bye = in_dialog("BYE", 2, &call_id, local, target, &o.bot, &to_tag);
    let done = Rc::new(Done::default());
    let t0 = Instant::now();
    pump.add(Box::new(Media {
        socket: std_socket,
        media,
        target,
        bye,
        frames: frames.clone(),
        t0,
        end: t0 + Duration::from_millis(20 * total as u64 + 500),
        next: 0,
        ssrc: 0x1000 + index as u32,
        sent_at: Vec::with_capacity(total),
        latencies: Vec::with_capacity(total),
        late: Vec::with_capacity(total),
        echoed: 0,
        hung_up: false,
        packet: Vec::with_capacity(200),
        done: done.clone(),
    }))
    .map_err(|e| io("epoll", e))?;
    let m = done.wait().await;
    let mut s = shared.borrow_mut();
    s.frames_sent += m.next as u64;
    s.frames_echoed += m.echoed.min(m.next) as u64;
    for (w, l) in m.latencies {
        if let Some(win) = s.windows.get_mut(w) {
            win.push(l);
        }
    }
    s.gen_late_us.extend(m.late);
    if m.hung_up { Err("the engine hung up early".into()) } else { Ok(()) }
}

/// An answered call's media, run by the pump.
struct Media {
    socket: std::net::UdpSocket,
    /// Where RTP goes (the engine's SDP answer) and SIP goes (its SIP port).
    media: SocketAddr,
    target: SocketAddr,
    bye: String,
    frames: Rc<[[u8; 160]]>,
    t0: Instant,
    end: Instant,
    /// The next frame to send.
    next: usize,
    ssrc: u32,
    sent_at: Vec<Instant>,
    /// (10 s window, µs) per echoed frame.
    latencies: Vec<(usize, u32)>,
    /// How late each packet went out, µs.
    late: Vec<u32>,
    echoed: usize,
    hung_up: bool,
    packet: Vec<u8>,
    done: Rc<Done<Media>>,
}

impl PumpCall for Media {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Reads every datagram waiting at `now`: echoes are counted and timed, a BYE from the
    /// engine is answered and ends the call.
    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        while let Ok((n, _)) = self.socket.recv_from(buf) {
            let datagram = &buf[..n];
            if is_rtp(datagram) {
                if let Ok(p) = RtpPacket::parse(datagram)
                    && p.payload_type == 0
                    && !p.payload.iter().all(|&x| x == 0xFF)
                {
                    if let Some(at) = self.sent_at.get(self.echoed) {
                        self.latencies.push((self.echoed / 500, now.duration_since(*at).as_micros() as u32));
                    }
                    self.echoed += 1;
                }
            } else if let Ok(message) = Message::parse(datagram)
                && message.method() == Some("BYE")
            {
                self.hung_up = true;
                let mut ok = String::new();
                cxb_sip::message::response(&message, 200, "OK", None, &[], "", &mut ok);
                let _ = self.socket.send_to(ok.as_bytes(), self.target);
            }
        }
    }

    fn tick(&mut self, now: Instant) -> bool {
        while self.next < self.frames.len() && !self.hung_up {
            let due = self.t0 + Duration::from_millis(20 * self.next as u64);
            if due > now {
                break;
            }
            self.late.push(now.saturating_duration_since(due).as_micros() as u32);
            self.sent_at.push(now);
            self.packet.clear();
            let n = self.next;
            RtpPacket { marker: n == 0, payload_type: 0, sequence: n as u16, timestamp: (n * 160) as u32, ssrc: self.ssrc, payload: &self.frames[n] }.write(&mut self.packet);
            let _ = self.socket.send_to(&self.packet, self.media);
            self.next += 1;
        }
        if !self.hung_up && now < self.end {
            return false;
        }
        if !self.hung_up {
            // The 200 is not waited for: the engine retransmits its answer if it must.
            let _ = self.socket.send_to(self.bye.as_bytes(), self.target);
        }
        true
    }

    fn finish(self: Box<Self>) {
        let done = self.done.clone();
        done.hand_back(self);
    }
}
