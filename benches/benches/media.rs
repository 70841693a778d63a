//! Criterion benchmarks of every step of the media path, and of one call's whole 20 ms tick
//! in both directions (`media/call_tick`). Throughput is in samples (or frames for the tick).
//!
//! Run: `cargo bench -p cxb-benches --bench media`. Figures go to docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cxb_codecs::{Encoding, FrameDuration, Hz8, Hz16, Pcm, SampleRate, g711, payload};
use cxb_media::Timestamp;
use cxb_media::jitter::JitterBuffer;
use cxb_media::path::{Inbound, InboundConfig, Outbound};
use cxb_media::playout::{Playout, PlayoutConfig};
use cxb_media::resample::{Polyphase, Resampler};
use cxb_media::turn::TurnDetector;
use cxb_media::vad::{VadConfig, VadEvent, VoiceDetector};
use rubato::Resampler as _;
use rubato::audioadapter_buffers::direct::InterleavedSlice;

const SPEECH: &[u8] = include_bytes!("../../codecs/tests/fixtures/speech-8k.s16");

fn speech_8k() -> Vec<i16> {
    SPEECH.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// The speech as 20 ms mu-law frames, as a carrier sends them.
fn mulaw_frames() -> Vec<Vec<u8>> {
    speech_8k().chunks_exact(160).map(|f| f.iter().map(|&s| g711::encode_mulaw(s)).collect()).collect()
}

fn codecs(c: &mut Criterion) {
    let pcm: Vec<i16> = speech_8k()[..160].to_vec();
    let ulaw: Vec<u8> = pcm.iter().map(|&s| g711::encode_mulaw(s)).collect();
    let mut g = c.benchmark_group("codecs");
    g.throughput(Throughput::Elements(160));
    let mut bytes = Vec::with_capacity(320);
    let mut samples = Vec::with_capacity(160);
    g.bench_function("mulaw_encode_20ms", |b| {
        b.iter(|| {
            bytes.clear();
            g711::encode_mulaw_into(black_box(&pcm), &mut bytes);
        })
    });
    g.bench_function("mulaw_decode_20ms", |b| {
        b.iter(|| {
            samples.clear();
            g711::decode_mulaw_into(black_box(&ulaw), &mut samples);
        })
    });
    g.bench_function("alaw_encode_20ms", |b| {
        b.iter(|| {
            bytes.clear();
            g711::encode_alaw_into(black_box(&pcm), &mut bytes);
        })
    });
    let mut text = String::with_capacity(256);
    g.bench_function("base64_encode_20ms_mulaw", |b| {
        b.iter(|| {
            text.clear();
            payload::encode_into(black_box(&ulaw), &mut text);
        })
    });
    text.clear();
    payload::encode_into(&ulaw, &mut text);
    g.bench_function("base64_decode_20ms_mulaw", |b| {
        b.iter(|| {
            bytes.clear();
            payload::decode_into(black_box(&text), &mut bytes).expect("valid");
        })
    });
    // Opus as a SIP call runs it (engine/src/transport/opus.rs): 8 kHz mono, 16 kbit/s,
    // complexity 1, in-band FEC for 5% loss; the speech's 20 ms frames in turn.
    let frames: Vec<Vec<i16>> = speech_8k().chunks_exact(160).map(<[i16]>::to_vec).collect();
    let mut encoder = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    encoder.set_bitrate(opus::Bitrate::Bits(16_000)).expect("bitrate");
    encoder.set_complexity(1).expect("complexity");
    encoder.set_inband_fec(true).expect("fec");
    encoder.set_packet_loss_perc(5).expect("loss");
    let mut packet = vec![0u8; 1500];
    let mut n = 0;
    g.bench_function("opus_encode_20ms_8k", |b| {
        b.iter(|| {
            n = (n + 1) % frames.len();
            encoder.encode(black_box(&frames[n]), &mut packet).expect("encode")
        })
    });
    // Variants, as ratios to the above in the same run: without loss to protect (no FEC data
    // is encoded), and at complexity 0 too.
    for (name, complexity, loss) in [("opus_encode_20ms_8k_no_loss", 1, 0), ("opus_encode_20ms_8k_c0_no_loss", 0, 0)] {
        let mut variant = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
        variant.set_bitrate(opus::Bitrate::Bits(16_000)).expect("bitrate");
        variant.set_complexity(complexity).expect("complexity");
        variant.set_inband_fec(true).expect("fec");
        variant.set_packet_loss_perc(loss).expect("loss");
        g.bench_function(name, |b| {
            b.iter(|| {
                n = (n + 1) % frames.len();
                variant.encode(black_box(&frames[n]), &mut packet).expect("encode")
            })
        });
    }
    let packets: Vec<Vec<u8>> = frames.iter().map(|f| encoder.encode_vec(f, 1500).expect("encode")).collect();
    let mut decoder = opus::Decoder::new(8000, opus::Channels::Mono).expect("decoder");
    let mut out = vec![0i16; 960];
    g.bench_function("opus_decode_20ms_8k", |b| {
        b.iter(|| {
            n = (n + 1) % packets.len();
            decoder.decode(black_box(&packets[n]), &mut out, false).expect("decode")
        })
    });
    g.finish();
}

fn resample(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    for (from, to) in [
        (SampleRate::Hz8000, SampleRate::Hz16000),
        (SampleRate::Hz16000, SampleRate::Hz8000),
        (SampleRate::Hz24000, SampleRate::Hz8000),
        (SampleRate::Hz48000, SampleRate::Hz16000),
    ] {
        let n_in = from.samples_per(FrameDuration::MS_20);
        let input: Vec<i16> = (0..n_in).map(|i| ((i * 37) % 2000) as i16).collect();
        g.throughput(Throughput::Elements(n_in as u64));
        let name = format!("{}k_to_{}k", from.hz() / 1000, to.hz() / 1000);
        let mut ours = Polyphase::new(from, to);
        let mut out = Vec::with_capacity(2000);
        g.bench_function(BenchmarkId::new("polyphase", &name), |b| {
            b.iter(|| {
                out.clear();
                ours.process(black_box(&input), &mut out);
            })
        });
        let mut fft = rubato::Fft::<f32>::new(
            from.hz() as usize,
            to.hz() as usize,
            n_in,
            1,
            rubato::FixedSync::Both,
        )
        .expect("valid rubato setup");
        let n_out = fft.output_frames_next();
        let float_in: Vec<f32> = input.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let mut float_out = vec![0f32; n_out];
        let mut back = Vec::with_capacity(n_out);
        g.bench_function(BenchmarkId::new("rubato_fft", &name), |b| {
            b.iter(|| {
                // The same work as ours: i16 in, resample, i16 out.
                let ins: Vec<f32> = black_box(&input).iter().map(|&s| f32::from(s) / 32768.0).collect();
                let a = InterleavedSlice::new(&ins, 1, n_in).expect("sized");
                let mut o = InterleavedSlice::new_mut(&mut float_out, 1, n_out).expect("sized");
                fft.process_into_buffer(&a, &mut o, None).expect("resample");
                back.clear();
                back.extend(float_out.iter().map(|&s| (s * 32768.0) as i16));
            })
        });
        black_box(&float_in);
    }
    g.finish();
}

fn detectors(c: &mut Criterion) {
    let speech = speech_8k();
    let mut up = Resampler::<Hz8, Hz16>::new();
    let mut wide = Pcm::<Hz16>::new();
    up.process(&Pcm::from_samples(speech), &mut wide);
    let frames: Vec<Pcm<Hz16>> = wide.samples().chunks_exact(320).map(|f| Pcm::from_samples(f.to_vec())).collect();
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(320));
    let mut vad = VoiceDetector::<Hz16>::new(VadConfig::default());
    let mut i = 0usize;
    g.bench_function("vad_16k_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            black_box(vad.process(Timestamp::from_millis(i as u64 * 20), &frames[i]).expect("20 ms"))
        })
    });
    let mut turn = TurnDetector::new(Duration::from_millis(700));
    let mut t = 0u64;
    g.bench_function("turn_event_and_poll", |b| {
        b.iter(|| {
            t += 20;
            let e = if t.is_multiple_of(2000) { VadEvent::SpeechStopped { at: Timestamp::from_millis(t) } } else {
                VadEvent::SpeechStarted { at: Timestamp::from_millis(t) }
            };
            black_box(turn.on_vad(e));
            black_box(turn.poll(Timestamp::from_millis(t)))
        })
    });
    g.finish();
}

fn queues(c: &mut Criterion) {
    let mut g = c.benchmark_group("queues");
    g.throughput(Throughput::Elements(160));
    let frame = [0x55u8; 160];
    let mut playout: Playout<u8, u32> = Playout::new(PlayoutConfig {
        frame_len: 160,
        period: Duration::from_millis(20),
        capacity: 160 * 50,
        max_burst: 3,
        silence: 0xFF,
        max_lead: None,
    });
    let mut out = Vec::with_capacity(480);
    let mut now = Timestamp::ZERO;
    g.bench_function("playout_push_tick_20ms", |b| {
        b.iter(|| {
            now += Duration::from_millis(20);
            playout.push(black_box(&frame));
            out.clear();
            black_box(playout.tick(now, &mut out))
        })
    });
    let mut jitter = JitterBuffer::new(3, 64, 0xFFu8);
    let mut seq = 0u64;
    g.bench_function("jitter_push_pop_20ms", |b| {
        b.iter(|| {
            seq += 1;
            jitter.push(seq, black_box(&frame));
            out.clear();
            black_box(jitter.pop(&mut out))
        })
    });
    g.finish();
}

/// One call's whole 20 ms tick: mu-law decode -> 8 -> 16 kHz -> VAD -> turn detector, then
/// 16 -> 8 kHz -> mu-law encode -> playout, as the echo bot runs it.
fn call_tick(c: &mut Criterion) {
    let frames = mulaw_frames();
    let mut inbound = Inbound::new(InboundConfig {
        encoding: Encoding::Mulaw,
        vad: VadConfig::default(),
        end_of_turn: Duration::from_millis(700),
    });
    let mut outbound: Outbound<u32> = Outbound::new(Encoding::Mulaw, Duration::from_secs(1), 3, Some(Duration::from_millis(60)));
    let mut out = Vec::with_capacity(480);
    let (mut i, mut now) = (0usize, Timestamp::ZERO);
    let mut g = c.benchmark_group("media");
    g.throughput(Throughput::Elements(1));
    g.bench_function("call_tick", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            now += Duration::from_millis(20);
            let heard = inbound.process(now, black_box(&frames[i])).expect("mu-law frame");
            black_box(heard);
            black_box(inbound.poll_turn(now));
            outbound.push(inbound.audio());
            out.clear();
            black_box(outbound.tick(now, &mut out))
        })
    });
    g.finish();
}

criterion_group!(benches, codecs, resample, detectors, queues, call_tick);
criterion_main!(benches);
