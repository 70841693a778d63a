//! A WebRTC call's per-frame cost in the engine (`transport::webrtc`), against the Opus work
//! inside it in the same run: one packet from the browser in (SRTP, str0m's depacketizing, the
//! jitter buffer, Opus decode to 8 kHz), one 20 ms frame out (Opus encode, str0m's packetizing
//! and pacing, SRTP). The browser is the engine's own client, connected in memory on a
//! virtual clock; it sends narrowband Opus, as the engine's answer asks.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use cxb_engine::session::Transmit;
use cxb_engine::transport::webrtc::WebRtcTransport;
use cxb_engine::transport::webrtc_client::WebRtcClient;
use cxb_media::Timestamp;

const ENGINE: &str = "127.0.0.1:50000";
const BROWSER: &str = "127.0.0.1:40000";

fn speech_8k() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).expect("fixture")
}

/// A connected call: the engine's side, the browser's, and the virtual time reached.
fn connected() -> (WebRtcTransport, WebRtcClient, Instant, Timestamp) {
    let (engine_addr, browser): (SocketAddr, SocketAddr) = (ENGINE.parse().expect("addr"), BROWSER.parse().expect("addr"));
    let epoch = Instant::now();
    let (mut client, offer) = WebRtcClient::new(epoch, browser, false).expect("client");
    let (mut engine, answer) = WebRtcTransport::accept(Timestamp::from_micros(0), epoch, engine_addr, &offer).expect("answer");
    client.accept_answer(&answer).expect("answer taken");
    let mut now = Timestamp::from_micros(0);
    for _ in 0..400 {
        now += Duration::from_millis(5);
        let at = epoch + Duration::from_micros(now.as_micros());
        client.handle_timeout(at);
        engine.handle_timeout(now);
        while let Some((_, d)) = client.poll_transmit() {
            engine.on_datagram(now, browser, &d);
        }
        while let Some((_, d)) = engine.poll_transmit() {
            client.on_datagram(at, engine_addr, &d);
        }
    }
    assert!(engine.connected() && client.connected(), "connected in memory");
    (engine, client, epoch, now)
}

/// Narrowband Opus packets of the speech, as a browser sends them after the engine's answer.
fn browser_packets(n: usize) -> Vec<Vec<u8>> {
    let speech = speech_8k();
    let mut encoder = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    encoder.set_bitrate(opus::Bitrate::Bits(12_000)).expect("bitrate");
    let frames: Vec<Vec<i16>> = speech.chunks_exact(320).map(|f| f.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()).collect();
    (0..n).map(|i| encoder.encode_vec(&frames[i % frames.len()], 400).expect("encode")).collect()
}

fn webrtc(c: &mut Criterion) {
    let mut g = c.benchmark_group("webrtc");
    let browser: SocketAddr = BROWSER.parse().expect("addr");
    let packets = browser_packets(3_000);
    // One packet in: the SRTP datagrams are made by the client beforehand (SRTP refuses a
    // replay, so each is fed once; a new call when they run out), only the engine is timed.
    g.bench_function("receive_packet", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let (mut engine, mut client, epoch, mut now) = connected();
                let mut datagrams = Vec::new();
                for p in packets.iter().take(left.min(3_000) as usize) {
                    now += Duration::from_millis(20);
                    client.send_packet(epoch + Duration::from_micros(now.as_micros()), p);
                    while let Some((_, d)) = client.poll_transmit() {
                        datagrams.push((now, d));
                    }
                }
                let start = Instant::now();
                for (at, d) in &datagrams {
                    black_box(engine.on_datagram(*at, browser, d));
                }
                total += start.elapsed();
                left -= left.min(3_000);
            }
            total
        })
    });
    // One frame out.
    let speech = speech_8k();
    let (mut engine, _client, _, mut now) = connected();
    let mut k = 0;
    g.bench_function("send_frame", |b| {
        b.iter(|| {
            now += Duration::from_millis(20);
            k = (k + 1) % (speech.len() / 320);
            engine.transmit(now, Transmit::Audio(&speech[k * 320..(k + 1) * 320]));
            while let Some(d) = engine.poll_transmit() {
                black_box(d);
            }
        })
    });
    // The Opus inside each, alone, in the same run.
    let mut decoder = opus::Decoder::new(8000, opus::Channels::Mono).expect("decoder");
    let mut out = vec![0i16; 960];
    let mut n = 0;
    g.bench_function("opus_decode_narrowband", |b| {
        b.iter(|| {
            n = (n + 1) % packets.len();
            decoder.decode(black_box(&packets[n]), &mut out, false).expect("decode")
        })
    });
    let mut encoder = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    encoder.set_bitrate(opus::Bitrate::Bits(16_000)).expect("bitrate");
    encoder.set_complexity(1).expect("complexity");
    encoder.set_inband_fec(true).expect("fec");
    encoder.set_packet_loss_perc(5).expect("loss");
    let frames: Vec<Vec<i16>> = speech.chunks_exact(320).map(|f| f.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()).collect();
    let mut packet = vec![0u8; 1500];
    g.bench_function("opus_encode_engine", |b| {
        b.iter(|| {
            n = (n + 1) % frames.len();
            encoder.encode(black_box(&frames[n]), &mut packet).expect("encode")
        })
    });
    g.finish();
}

criterion_group!(benches, webrtc);
criterion_main!(benches);
