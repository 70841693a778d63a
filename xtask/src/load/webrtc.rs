//! `cargo xtask load --protocol webrtc`: each call is a browser on the engine's own WebRTC
//! stack (str0m, as the client): it posts its SDP offer to `/webrtc/BOT` over HTTP, takes the
//! answer, runs ICE (full, against the engine's ICE-lite), DTLS-SRTP and the data channel over
//! a UDP socket of its own, then sends one Opus packet every 20 ms on an absolute clock and
//! counts the packets that come back, and hangs up with `DELETE` on the answer's `Location`.
//!
//! The packets are what a browser sends: the speech fixture with a quiet tone under it,
//! resampled to 48 kHz and encoded once, up front, by libopus as Chromium's WebRTC encodes
//! (VoIP, 32 kbit/s fullband; 12 kbit/s narrowband when the answer's `maxplaybackrate` is
//! 8000, as the engine's is), so the generator spends its core on the calls, not on
//! encoding. The k-th packet back is matched to the k-th sent for its latency; nothing is
//! decoded.
//!
//! Once the answer is in, a call runs in the [`Pump`](super::pump::Pump): ICE and DTLS too.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use cxb_engine::transport::webrtc_client::WebRtcClient;

use super::pump::{Done, Pump, PumpCall};
use super::{Options, Shared};

/// What a browser sends for `seconds`: 20 ms Opus packets, fullband and narrowband.
pub(super) struct Packets {
    fullband: Vec<Vec<u8>>,
    narrowband: Vec<Vec<u8>>,
}

impl Packets {
    pub(super) fn new(seconds: u64) -> Result<Packets, String> {
        Ok(Packets { fullband: encode(seconds, false)?, narrowband: encode(seconds, true)? })
    }
}

fn encode(seconds: u64, narrowband: bool) -> Result<Vec<Vec<u8>>, String> {
    let frames = super::sip::frames(seconds);
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).map_err(|e| format!("opus: {e}"))?;
    let (bitrate, band) = if narrowband { (12_000, opus::Bandwidth::Narrowband) } else { (32_000, opus::Bandwidth::Fullband) };
    encoder.set_bitrate(opus::Bitrate::Bits(bitrate)).map_err(|e| format!("opus: {e}"))?;
    encoder.set_max_bandwidth(band).map_err(|e| format!("opus: {e}"))?;
    let mut out = Vec::with_capacity(frames.len());
    let mut pcm = vec![0i16; 960];
    for frame in &frames {
        // 8 kHz mu-law to 48 kHz linear: each sample six times (the tone and speech are far
        // below 4 kHz; what matters here is a packet of the size and kind browsers send).
        for (i, s) in pcm.iter_mut().enumerate() {
            *s = cxb_codecs::g711::decode_mulaw(frame[i / 6]);
        }
        out.push(encoder.encode_vec(&pcm, 400).map_err(|e| format!("opus: {e}"))?);
    }
    Ok(out)
}

/// The offer posted, the answer read: status, `Location` and body.
async fn post_offer(addr: SocketAddr, bot: &str, offer: &str) -> Result<(u16, String, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let request = format!("POST /webrtc/{bot} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}", offer.len());
    let mut w = &stream;
    w.write_all(request.into_bytes()).await.0.map_err(|e| format!("write: {}", e.kind()))?;
    let mut r = &stream;
    let compio::BufResult(got, raw) = r.read_to_end(Vec::with_capacity(4096)).await;
    got.map_err(|e| format!("read: {}", e.kind()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let location = head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_string())).unwrap_or_default();
    Ok((status, location, body.to_string()))
}

/// `DELETE` on the call's location (the answer is not waited for beyond the connection).
async fn hang_up(addr: SocketAddr, location: &str) {
    let Ok(stream) = TcpStream::connect(addr).await else { return };
    let request = format!("DELETE {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    let mut w = &stream;
    let _ = w.write_all(request.into_bytes()).await;
    let mut r = &stream;
    let _ = r.read_to_end(Vec::with_capacity(512)).await;
}

/// One WebRTC call of the load: the offer and answer here, the rest in `pump`.
pub(super) async fn call(o: &Options, packets: &Rc<Packets>, shared: &RefCell<Shared>, pump: &Rc<Pump>) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {}", e.kind());
    let socket = std::net::UdpSocket::bind(SocketAddr::new(o.addr.ip(), 0)).map_err(|e| io("bind", e))?;
    socket.set_nonblocking(true).map_err(|e| io("nonblocking", e))?;
    let local = socket.local_addr().map_err(|e| io("local addr", e))?;
    let (mut client, offer) = WebRtcClient::new(Instant::now(), local, false).map_err(|e| e.to_string())?;
    let (status, location, answer) = post_offer(o.addr, &o.bot, &offer).await?;
    if status != 201 {
        shared.borrow_mut().rejected += 1;
        return Err(format!("offer refused: {status}"));
    }
    client.accept_answer(&answer).map_err(|e| e.to_string())?;
    let narrowband = answer.contains("maxplaybackrate=8000");
    let done = Rc::new(Done::default());
    let total = packets.fullband.len();
    pump.add(Box::new(Media {
        socket,
        client,
        packets: packets.clone(),
        narrowband,
        give_up: Instant::now() + Duration::from_secs(10),
        t0: None,
        next: 0,
        sent_at: Vec::with_capacity(total),
        latencies: Vec::with_capacity(total),
        late: Vec::with_capacity(total),
        echoed: 0,
        done: done.clone(),
    }))
    .map_err(|e| io("epoll", e))?;
    let m = done.wait().await;
    hang_up(o.addr, &location).await;
    if m.t0.is_none() {
        return Err("ICE and DTLS did not come up in 10 s".into());
    }
    let mut s = shared.borrow_mut();
    s.connected += 1;
    s.frames_sent += m.next as u64;
    s.frames_echoed += m.echoed.min(m.next as u64);
    for (w, l) in m.latencies {
        if let Some(win) = s.windows.get_mut(w) {
            win.push(l);
        }
    }
    s.gen_late_us.extend(m.late);
    Ok(())
}

/// A call's WebRTC session, run by the pump.
struct Media {
    socket: std::net::UdpSocket,
    client: WebRtcClient,
    packets: Rc<Packets>,
    /// The answer asked for narrowband.
    narrowband: bool,
    /// When the call is abandoned if it has not connected.
    give_up: Instant,
    /// When ICE and DTLS came up: the packets' clock starts.
    t0: Option<Instant>,
    next: usize,
    sent_at: Vec<Instant>,
    /// (10 s window, µs) per packet back.
    latencies: Vec<(usize, u32)>,
    late: Vec<u32>,
    echoed: u64,
    done: Rc<Done<Media>>,
}

impl Media {
    fn send(&mut self) {
        while let Some((to, datagram)) = self.client.poll_transmit() {
            let _ = self.socket.send_to(&datagram, to);
        }
    }
}

impl PumpCall for Media {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        while let Ok((n, from)) = self.socket.recv_from(buf) {
            self.client.on_datagram(now, from, &buf[..n]);
            while self.echoed < self.client.packets_in() {
                if let Some(at) = self.sent_at.get(self.echoed as usize) {
                    self.latencies.push((self.echoed as usize / 500, now.duration_since(*at).as_micros() as u32));
                }
                self.echoed += 1;
            }
        }
        self.send();
    }

    fn tick(&mut self, now: Instant) -> bool {
        if self.client.deadline().is_some_and(|d| d <= now) {
            self.client.handle_timeout(now);
        }
        if self.t0.is_none() && self.client.connected() {
            self.t0 = Some(now);
        }
        let Some(t0) = self.t0 else {
            self.send();
            return now >= self.give_up;
        };
        let packets = self.packets.clone();
        let packets = if self.narrowband { &packets.narrowband } else { &packets.fullband };
        while self.next < packets.len() {
            let due = t0 + Duration::from_millis(20 * self.next as u64);
            if due > now {
                break;
            }
            self.late.push(now.saturating_duration_since(due).as_micros() as u32);
            self.sent_at.push(now);
            self.client.send_packet(now, &packets[self.next]);
            self.next += 1;
        }
        self.send();
        // Half a second for the last echoes.
        now >= t0 + Duration::from_millis(20 * packets.len() as u64 + 500)
    }

    fn finish(self: Box<Self>) {
        let done = self.done.clone();
        done.hand_back(self);
    }
}
