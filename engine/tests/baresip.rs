//! A real SIP client against the engine: baresip (Debian's `baresip-core`, which `.ci/run`
//! installs), headless, driven through its `ctrl_tcp` interface (netstring JSON commands and
//! events), playing a WAV through `aufile` and writing what it hears through `sndfile`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{engine, eventually, health, tempdir};
use cxb_engine::Engine;
use cxb_engine::sip::SipConfig;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A tone of `seconds` at 440 Hz, 8 kHz 16-bit mono, as `aufile` wants it.
fn tone_wav(path: &Path, seconds: u32) {
    let samples: Vec<i16> = (0..8000 * seconds).map(|i| ((f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 12_000.0) as i16).collect();
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).expect("tone");
}

/// The samples of a 16-bit PCM WAV file (its `data` chunk).
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).expect("wav");
    let at = bytes.windows(4).position(|w| w == b"data").map_or(bytes.len(), |p| p + 8);
    bytes[at.min(bytes.len())..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// baresip with its own configuration directory, and its control connection.
struct Baresip {
    child: Child,
    ctrl: TcpStream,
    dir: PathBuf,
    buf: Vec<u8>,
}

impl Baresip {
    fn start(source_seconds: u32) -> Baresip {
        let dir = tempdir();
        tone_wav(&dir.join("tone.wav"), source_seconds);
        let ctrl_port = free_port();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip}\naudio_player aubridge,x\naudio_source aufile,{dir}/tone.wav\naudio_alert aubridge,x\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\nmodule menu.so\n\
             module account.so\nmodule ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl_port}\nsnd_path {dir}\n",
            sip = free_port(),
            dir = dir.display()
        );
        std::fs::write(dir.join("config"), config).expect("config");
        std::fs::write(dir.join("accounts"), "<sip:phone@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU\n").expect("accounts");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("baresip.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip runs (apt-get install baresip-core; .ci/run does)");
        let until = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            match TcpStream::connect(("127.0.0.1", ctrl_port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > until => panic!("baresip's ctrl_tcp: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        ctrl.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Baresip { child, ctrl, dir, buf: Vec::new() }
    }

    fn command(&mut self, command: &str, params: &str) {
        let body = json!({ "command": command, "params": params, "token": command }).to_string();
        let netstring = format!("{}:{body},", body.len());
        self.ctrl.write_all(netstring.as_bytes()).expect("ctrl write");
    }

    /// The next event of `kind` within `limit`.
    fn event(&mut self, kind: &str, limit: Duration) -> Option<Value> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            while let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon]).ok()?.parse().ok()?;
                if self.buf.len() < colon + len + 2 {
                    break;
                }
                let message: Value = serde_json::from_slice(&self.buf[colon + 1..colon + 1 + len]).ok()?;
                self.buf.drain(..colon + len + 2);
                if message["type"] == kind {
                    return Some(message);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        None
    }

    /// What baresip heard (sndfile's decoder-side dump).
    fn heard(&self) -> Vec<i16> {
        let dump = std::fs::read_dir(&self.dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .expect("sndfile's dump of the received audio");
        wav_samples(&dump)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
fn baresip_calls_the_echo_bot_hears_its_own_tone_and_hangs_up() {
    let (engine, sip) = sip_engine();
    let mut phone = Baresip::start(10);
    phone.command("dial", &format!("sip:echo@{sip}"));
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
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
    assert!(rms > 3_000.0, "heard the echo, RMS {rms:.0}");
    let f = frequency(tail);
    assert!((400.0..480.0).contains(&f), "at 440 Hz: {f:.0}");
    engine.shutdown();
}

#[test]
fn a_key_pressed_on_baresip_reaches_the_bot_and_the_engine_hangs_up() {
    let (engine, sip) = sip_engine();
    let mut phone = Baresip::start(10);
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
