//! `cargo xtask load --protocol sip`: each call is a SIP user agent on one UDP socket of its
//! own (signalling and RTP on the same port): INVITE with an SDP offer of PCMU and telephone
//! events, ACK of the 200, then RTP at 50 packets a second on an absolute clock from the
//! speech fixture, then BYE. The engine answers from its SIP port and sends RTP from the
//! call's own port; datagrams are told apart by their first byte (RTP's version bits).
//!
//! Echoed frames are the engine's packets that are not its comfort silence (every byte the
//! mu-law silence byte); the fixture carries a quiet tone under the speech so that no echoed
//! frame is silent. The k-th echoed frame is matched to the k-th frame sent for its latency.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::net::UdpSocket;
use cxb_codecs::rtp::RtpPacket;
use cxb_sip::message::{Message, StartLine};
use futures_util::future::{Either, select};

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

/// One SIP call of the load.
pub(super) async fn call(o: &Options, index: usize, frames: &[[u8; 160]], shared: &RefCell<Shared>) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {}", e.kind());
    let bind = SocketAddr::new(o.addr.ip(), 0);
    let socket = UdpSocket::bind(bind).await.map_err(|e| io("bind", e))?;
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
    shared.borrow_mut().connected += 1;

    // RTP on an absolute clock; what comes back is counted and timed.
    let t0 = Instant::now();
    let total = frames.len();
    let end = t0 + Duration::from_millis(20 * total as u64 + 500);
    let mut sent_at: Vec<Instant> = Vec::with_capacity(total);
    let mut latencies: Vec<(usize, u32)> = Vec::with_capacity(total);
    let mut late = Vec::with_capacity(total);
    let (mut echoed, mut next) = (0usize, 0usize);
    let mut packet = Vec::with_capacity(200);
    let ssrc = 0x1000 + index as u32;
    let mut hung_up = false;
    loop {
        let due = t0 + Duration::from_millis(20 * next as u64);
        let wake = if next < total { due } else { end };
        match select(read.as_mut(), Box::pin(compio::time::sleep_until(wake))).await {
            Either::Left((BufResult(Ok((n, _)), b), _)) => {
                let now = Instant::now();
                if is_rtp(&b[..n]) {
                    if let Ok(p) = RtpPacket::parse(&b[..n])
                        && p.payload_type == 0
                        && !p.payload.iter().all(|&x| x == 0xFF)
                    {
                        if let Some(at) = sent_at.get(echoed) {
                            latencies.push((echoed / 500, now.duration_since(*at).as_micros() as u32));
                        }
                        echoed += 1;
                    }
                } else if let Ok(m) = Message::parse(&b[..n])
                    && m.method() == Some("BYE")
                {
                    hung_up = true;
                    let mut ok = String::new();
                    cxb_sip::message::response(&m, 200, "OK", None, &[], "", &mut ok);
                    let _ = socket.send_to(ok.into_bytes(), target).await;
                    break;
                }
                let mut b = b;
                b.clear();
                read.set(recv(&socket, b));
            }
            Either::Left((BufResult(Err(_), mut b), _)) => {
                // ICMP errors surface here; the call goes on.
                b.clear();
                read.set(recv(&socket, b));
            }
            Either::Right(_) => {
                if next >= total {
                    break;
                }
                let now = Instant::now();
                late.push(now.saturating_duration_since(due).as_micros() as u32);
                sent_at.push(now);
                packet.clear();
                RtpPacket { marker: next == 0, payload_type: 0, sequence: next as u16, timestamp: (next * 160) as u32, ssrc, payload: &frames[next] }.write(&mut packet);
                let BufResult(r, p) = socket.send_to(std::mem::take(&mut packet), media).await;
                r.map_err(|e| io("rtp send", e))?;
                packet = p;
                next += 1;
            }
        }
    }
    drop(read);
    if !hung_up {
        let bye = in_dialog("BYE", 2, &call_id, local, target, &o.bot, &to_tag);
        let _ = socket.send_to(bye.into_bytes(), target).await;
        // The 200 is not waited for: the engine retransmits its answer if it must.
    }
    let mut s = shared.borrow_mut();
    s.frames_sent += next as u64;
    s.frames_echoed += echoed.min(next) as u64;
    for (w, l) in latencies {
        if let Some(win) = s.windows.get_mut(w) {
            win.push(l);
        }
    }
    s.gen_late_us.extend(late);
    if hung_up { Err("the engine hung up early".into()) } else { Ok(()) }
}
