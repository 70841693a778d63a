//! A real SIP client against the engine: baresip (`common::baresip`) calls the built-in bots.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::baresip::{Baresip, tone};
use common::{engine, eventually, health};
use cxb_engine::Engine;
use cxb_engine::sip::SipConfig;

fn sip_engine() -> (Engine, SocketAddr) {
    let engine = engine(|c| {
        c.sip = Some(SipConfig::new("127.0.0.1:0".parse().expect("addr")));
        c.fault_injection = true;
    });
    let sip = engine.sip_addr().expect("SIP port");
    (engine, sip)
}

/// Zero crossings per second of `samples` at 8 kHz, over two: the frequency of a pure tone.
fn frequency(samples: &[i16]) -> f64 {
    let crossings = samples.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (samples.len() as f64 / 8000.0)
}

#[test]
fn baresip_calls_the_echo_bot_over_udp_and_tcp_hears_its_own_tone_and_hangs_up() {
    let (engine, sip) = sip_engine();
    for transport in ["", ";transport=tcp"] {
        let mut phone = Baresip::start(&tone(10), "");
        phone.command("dial", &format!("sip:echo@{sip}{transport}"));
        assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{transport}: {}", phone.log());
        assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 1));
        std::thread::sleep(Duration::from_secs(2)); // two seconds of the tone go out and come back
        phone.command("hangup", "");
        assert!(phone.event("CALL_CLOSED", Duration::from_secs(5)).is_some(), "{}", phone.log());
        assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the BYE ended the call");
        let heard = phone.heard();
        // The middle of what it heard (past the first packets, before the hang-up): the echo of
        // its own tone.
        assert!(heard.len() >= 12_000, "heard {} samples", heard.len());
        let tail = &heard[heard.len() / 4..heard.len() * 3 / 4];
        let rms = (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len().max(1) as f64).sqrt();
        assert!(rms > 3_000.0, "{transport}: heard the echo, RMS {rms:.0}");
        let f = frequency(tail);
        assert!((400.0..480.0).contains(&f), "{transport}: at 440 Hz: {f:.0}");
    }
    engine.shutdown();
}

#[test]
fn a_key_pressed_on_baresip_reaches_the_bot_and_the_engine_hangs_up() {
    let (engine, sip) = sip_engine();
    let mut phone = Baresip::start(&tone(10), "");
    // The `fault` bot panics on a key press: the engine ends that call with a BYE.
    phone.command("dial", &format!("sip:fault@{sip}"));
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_millis(300));
    phone.command("sndcode", "5");
    let closed = phone.event("CALL_CLOSED", Duration::from_secs(5)).expect("the engine hung up");
    assert!(closed["param"].as_str().is_some_and(|p| p.contains("reset by peer")), "a BYE from the engine: {closed}");
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0));
    engine.shutdown();
}
