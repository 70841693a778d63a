//! baresip (Debian's `baresip-core`, which `.ci/run` installs) as a test's SIP phone,
//! headless, driven through its `ctrl_tcp` interface (netstring JSON commands and events),
//! playing a WAV through `aufile` and writing what it hears through `sndfile`. Shared by the
//! engine's tests and the binary's (`#[path]`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A fresh directory under the system's temporary one.
fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cxb-baresip-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `seconds` of a 440 Hz tone at 8 kHz.
pub fn tone(seconds: u32) -> Vec<i16> {
    (0..8000 * seconds).map(|i| ((f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 12_000.0) as i16).collect()
}

/// 8 kHz `samples` as a 16-bit mono WAV file at `rate` (a multiple of 8 kHz, interpolated
/// linearly): `aufile` wants the codec's own rate.
fn write_wav(path: &Path, samples: &[i16], rate: u32) {
    let k = (rate / 8000).max(1) as i32;
    let pairs = samples.iter().zip(samples.iter().skip(1).chain(samples.last()));
    let up = pairs.flat_map(|(&a, &b)| (0..k).map(move |i| (i32::from(a) + (i32::from(b) - i32::from(a)) * i / k) as i16));
    let data: Vec<u8> = up.flat_map(i16::to_le_bytes).collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(2 * rate).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).expect("tone");
}

/// The first channel of a 16-bit PCM WAV file (its `data` chunk) at 8 kHz: a file at a
/// multiple of 8 kHz (Opus's 48 kHz) is decimated, which is enough for the tones tests play.
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).expect("wav");
    let field = |at: usize, n: usize| bytes.get(at..at + n).map_or(0, |b| b.iter().rev().fold(0u32, |v, &b| v << 8 | u32::from(b)));
    let (channels, rate) = (field(22, 2).max(1) as usize, field(24, 4).max(8000));
    let step = channels * (rate / 8000) as usize;
    let at = bytes.windows(4).position(|w| w == b"data").map_or(bytes.len(), |p| p + 8);
    bytes[at.min(bytes.len())..].chunks_exact(2).step_by(step).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// baresip with its own configuration directory, and its control connection.
pub struct Baresip {
    /// Where it takes calls (UDP).
    pub sip: std::net::SocketAddr,
    child: Child,
    ctrl: TcpStream,
    dir: PathBuf,
    buf: Vec<u8>,
}

impl Baresip {
    /// baresip playing `source` (8 kHz) into its calls (it hangs up when the audio ends), as
    /// `sip:phone@127.0.0.1` with account parameters `params` (e.g. `;auth_pass=…`).
    pub fn start(source: &[i16], params: &str) -> Baresip {
        Baresip::start_as("phone", source, params)
    }

    /// [`Baresip::start`] as `sip:USER@127.0.0.1` (it answers calls for that user only).
    pub fn start_as(user: &str, source: &[i16], params: &str) -> Baresip {
        Baresip::start_with("PCMU", user, source, params)
    }

    /// [`Baresip::start_as`] offering only `codec` (`PCMU`, `PCMA` or `opus`).
    pub fn start_with(codec: &str, user: &str, source: &[i16], params: &str) -> Baresip {
        Baresip::launch(codec, user, source, params, "")
    }

    /// [`Baresip::start`] trusting the certificate authority in `cafile` for SIP over TLS.
    pub fn start_trusting(cafile: &Path, source: &[i16]) -> Baresip {
        Baresip::launch("PCMU", "phone", source, "", &format!("sip_cafile {}\n", cafile.display()))
    }

    fn launch(codec: &str, user: &str, source: &[i16], params: &str, extra_config: &str) -> Baresip {
        let dir = tempdir();
        // baresip names its mono Opus by the RTP clock and its channels, and plays a file only
        // at the codec's rate.
        let (codec, rate) = if codec == "opus" { ("opus/48000/1", 48_000) } else { (codec, 8000) };
        write_wav(&dir.join("tone.wav"), source, rate);
        std::fs::write(dir.join("accounts"), format!("<sip:{user}@127.0.0.1>;regint=0;answermode=auto;audio_codecs={codec}{params}\n")).expect("accounts");
        // Ports are picked free and then bound by baresip (its SIP port, TLS on the next one,
        // its control port): another process may take one in between, so a start that does
        // not come up is tried again with new ports.
        for _ in 0..3 {
            let (ctrl_port, sip_port) = (free_port(), free_port());
            if ctrl_port.abs_diff(sip_port) <= 1 {
                continue;
            }
            let config = format!(
                "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\naudio_player aubridge,x\naudio_source aufile,{dir}/tone.wav\naudio_alert aubridge,x\n\
                 module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule opus.so\nopus_stereo no\nopus_sprop_stereo no\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\nmodule menu.so\n\
                 module account.so\nmodule ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl_port}\nsnd_path {dir}\n{extra_config}",
                dir = dir.display()
            );
            std::fs::write(dir.join("config"), config).expect("config");
            let mut child = Command::new("baresip")
                .arg("-f")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("baresip.log")).expect("log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("baresip runs (apt-get install baresip-core; .ci/run does)");
            let until = Instant::now() + Duration::from_secs(5);
            let ctrl = loop {
                match TcpStream::connect(("127.0.0.1", ctrl_port)) {
                    Ok(s) => break Some(s),
                    Err(_) if Instant::now() > until => break None,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let up = std::fs::read_to_string(dir.join("baresip.log")).is_ok_and(|log| !log.contains("Address already in use"));
            match ctrl {
                Some(ctrl) if up => {
                    ctrl.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
                    return Baresip { sip: ([127, 0, 0, 1], sip_port).into(), child, ctrl, dir, buf: Vec::new() };
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("baresip did not come up: {}", std::fs::read_to_string(dir.join("baresip.log")).unwrap_or_default());
    }

    pub fn command(&mut self, command: &str, params: &str) {
        let body = json!({ "command": command, "params": params, "token": command }).to_string();
        let netstring = format!("{}:{body},", body.len());
        self.ctrl.write_all(netstring.as_bytes()).expect("ctrl write");
    }

    /// The next event of `kind` within `limit`.
    pub fn event(&mut self, kind: &str, limit: Duration) -> Option<Value> {
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
    pub fn heard(&self) -> Vec<i16> {
        let dump = std::fs::read_dir(&self.dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .expect("sndfile's dump of the received audio");
        wav_samples(&dump)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

