//! `espeak`: text-to-speech with no server, no account and no model download: the
//! `espeak-ng` program (Debian package `espeak-ng`), run once per sentence.
//!
//! The command line follows espeak-ng(1) (1.51, as Debian and Arch ship it): `--stdin` reads
//! the text from standard input to its end, `--stdout` writes the speech as a WAV file to
//! standard output, `-b 1` says the text is UTF-8, `-v` picks the voice (`voice+variant`,
//! e.g. `en-us+f3`) and `-s` the speed in words per minute (default 175). Its voices speak
//! 16-bit mono at 22,050 Hz, and it writes the WAV header before it knows the length (the
//! sizes are placeholders), so the audio streams: [`WavStream`] reads the header once it is
//! whole (with [`cxb_codecs::wav::WavInfo`]) and hands on the samples as they arrive.
//!
//! The text goes in on standard input, never through a shell or the command line (where other
//! local users could read it in `/proc`). Everything is bounded: the text
//! ([`MAX_TEXT`]), the audio (two minutes a sentence), the header ([`MAX_HEADER`]), the time
//! (`timeout_ms`) and what is kept of standard error. Dropping the job (a barge-in) kills the
//! process and reaps it off the call's thread. Spawning is the only blocking step on the
//! call's thread (a `posix_spawn`, well under a millisecond).

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::Duration;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::runtime::fd::AsyncFd;
use cxb_codecs::wav::{WavError, WavInfo};
use futures_util::future::try_join3;

use crate::config::BotConfig;
use crate::provider::{AudioFormat, Event, Events, Job, ProviderError, TtsEvent, TtsProvider};

/// The program run when `tts.options.program` is not set (looked up in `PATH`).
pub const DEFAULT_PROGRAM: &str = "espeak-ng";
/// The voice when the bot names none.
pub const DEFAULT_VOICE: &str = "en-us";
/// espeak-ng's default speed, in words per minute.
pub const DEFAULT_RATE: u32 = 175;
/// The rate espeak-ng's voices speak at.
pub const SAMPLE_RATE: u32 = 22_050;
/// The longest sentence accepted, in bytes of UTF-8.
pub const MAX_TEXT: usize = 16 * 1024;
/// The most bytes accepted before the samples (the RIFF header and any chunks before `data`).
pub const MAX_HEADER: usize = 4096;

/// Default bound on one sentence's synthesis (espeak-ng runs far faster than real time).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most audio one sentence may bring.
const MAX_SENTENCE_MS: u32 = 120_000;
/// Bytes asked of standard output per read.
const READ_BUF: usize = 16 * 1024;
/// The most of standard error kept for an error message.
const STDERR_KEPT: usize = 512;

/// Why a byte stream is not the 22,050 Hz mono WAV the call expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WavStreamError {
    /// The bytes do not start with `RIFF`…`WAVE`, or the format chunk is not 16-bit PCM.
    #[error("output is not a 16-bit PCM WAV file")]
    NotWav,
    /// The audio is not at the expected rate in one channel.
    #[error("output is {rate} Hz in {channels} channel(s); expected {expected} Hz mono (espeak-ng voices, not MBROLA)")]
    Format {
        /// The header's rate.
        rate: u32,
        /// The header's channel count.
        channels: u16,
        /// The rate the call was set up for.
        expected: u32,
    },
    /// No `data` chunk within [`MAX_HEADER`] bytes.
    #[error("no audio within the first {MAX_HEADER} bytes of output")]
    HeaderTooLong,
    /// The output ended inside the header.
    #[error("output ended inside the WAV header")]
    Truncated,
}

/// The sans-IO reader of a streamed WAV file: feed it bytes as they arrive, take the samples
/// (whole 16-bit samples only; an odd byte waits for its other half). Samples past the `data`
/// chunk's declared size are ignored; after an error it only repeats that error.
#[derive(Debug)]
pub struct WavStream {
    rate: u32,
    /// Bytes held until the header is whole.
    head: Vec<u8>,
    /// Sample bytes the header still promises, once it is read.
    remaining: Option<u64>,
    carry: Option<u8>,
    failed: Option<WavStreamError>,
}

impl WavStream {
    /// A reader that accepts mono audio at `rate` Hz only.
    pub fn new(rate: u32) -> WavStream {
        WavStream { rate, head: Vec::new(), remaining: None, carry: None, failed: None }
    }

    /// Adds bytes; returns the samples they complete (little-endian 16-bit), maybe none.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<u8>, WavStreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.remaining.is_some() {
            return Ok(self.samples(bytes));
        }
        self.head.extend_from_slice(bytes);
        match self.read_header() {
            Ok(Some(data_offset)) => {
                let rest = self.head.split_off(data_offset.min(self.head.len()));
                self.head = Vec::new();
                Ok(self.samples(&rest))
            }
            Ok(None) => Ok(Vec::new()),
            Err(e) => {
                self.failed = Some(e.clone());
                self.head = Vec::new();
                Err(e)
            }
        }
    }

    /// Checks the stream may end here: it was empty or its header was whole.
    pub fn finish(&self) -> Result<(), WavStreamError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.remaining.is_some() || self.head.is_empty() => Ok(()),
            None if self.head.len() < 12 && !b"RIFF".starts_with(self.head.get(..4).unwrap_or(&self.head)) => {
                Err(WavStreamError::NotWav)
            }
            None => Err(WavStreamError::Truncated),
        }
    }

    /// Where the samples start once the header is whole; `None` while more is needed.
    fn read_header(&mut self) -> Result<Option<usize>, WavStreamError> {
        if self.head.len() < 12 {
            // Too short to tell: `WavInfo::parse` calls any prefix of "RIFF....WAVE" not a WAV.
            return Ok(None);
        }
        // Only the first MAX_HEADER bytes are read, however they arrived, so the answer does
        // not depend on how the output was split.
        let head = self.head.get(..MAX_HEADER).unwrap_or(&self.head);
        let info = match WavInfo::parse(head) {
            Ok(info) => info,
            Err(WavError::Truncated) if head.len() < MAX_HEADER => return Ok(None),
            Err(WavError::Truncated) => return Err(WavStreamError::HeaderTooLong),
            Err(_) => return Err(WavStreamError::NotWav),
        };
        if info.channels != 1 || info.sample_rate != self.rate {
            let (rate, channels) = (info.sample_rate, info.channels);
            return Err(WavStreamError::Format { rate, channels, expected: self.rate });
        }
        // `parse` found the `data` chunk's id and size just before its samples.
        let size = info.data_offset.checked_sub(4).and_then(|at| self.head.get(at..info.data_offset));
        let declared = size.and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes);
        self.remaining = Some(u64::from(declared));
        Ok(Some(info.data_offset))
    }

    fn samples(&mut self, bytes: &[u8]) -> Vec<u8> {
        let remaining = self.remaining.unwrap_or(0);
        let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(bytes.len());
        self.remaining = Some(remaining - take as u64);
        let mut out = Vec::with_capacity(take + 1);
        out.extend(self.carry.take());
        out.extend_from_slice(bytes.get(..take).unwrap_or_default());
        if out.len() % 2 == 1 {
            self.carry = out.pop();
        }
        out
    }
}

/// What went wrong running the synthesiser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspeakError {
    /// The program could not be started.
    #[error("cannot run {program}: {message}")]
    Spawn {
        /// The program's path.
        program: String,
        /// Why.
        message: String,
    },
    /// Reading or writing its pipes failed.
    #[error("espeak: {0}")]
    Io(String),
    /// Its output is not the WAV audio expected.
    #[error("espeak: {0}")]
    Wav(#[from] WavStreamError),
    /// The sentence is over [`MAX_TEXT`] bytes.
    #[error("espeak: a sentence of {0} bytes is over the limit of {MAX_TEXT}")]
    TextTooLong(usize),
    /// The sentence's audio is over two minutes.
    #[error("espeak: over {} s of audio for one sentence", MAX_SENTENCE_MS / 1000)]
    TooMuchAudio,
    /// The program took too long (it was killed).
    #[error("espeak: no complete answer within {0:?}")]
    Timeout(Duration),
    /// The program failed.
    #[error("espeak: {program} failed ({status}){}", colon(.stderr))]
    Exit {
        /// The program's path.
        program: String,
        /// How it exited.
        status: String,
        /// The start of what it wrote to standard error.
        stderr: String,
    },
}

/// `": text"`, or nothing for no text.
fn colon(text: &str) -> String {
    if text.is_empty() { String::new() } else { format!(": {text}") }
}

/// Text-to-speech by espeak-ng, one process per sentence.
///
/// Config: the bot's `voice` is espeak-ng's voice (default `en-us`; letters, digits, `-`,
/// `_` and `+`); options `rate` (words per minute, 80 to 450, default 175), `program` (the
/// path or name in `PATH` of espeak-ng or a program with its command line, default
/// `espeak-ng`; checked when the call starts) and `timeout_ms` (bound on one sentence,
/// default 10000). The output is 22,050 Hz 16-bit mono.
#[derive(Debug, Clone)]
pub struct EspeakTts(Rc<Settings>);

#[derive(Debug)]
struct Settings {
    program: PathBuf,
    voice: String,
    rate: u32,
    timeout: Duration,
}

impl EspeakTts {
    /// From the bot's config; fails if the program is not found.
    pub fn from_config(bot: &BotConfig) -> Result<EspeakTts, ProviderError> {
        let tts = &bot.tts;
        let program = match tts.options.get("program") {
            None => DEFAULT_PROGRAM,
            Some(p) => p.as_str().ok_or_else(|| ProviderError::invalid("tts.options.program", "must be a string"))?,
        };
        let program = find_program(program)?;
        let voice = bot.voice.as_deref().filter(|v| !v.is_empty()).unwrap_or(DEFAULT_VOICE);
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+');
        if voice.len() > 64 || voice.starts_with('-') || !voice.chars().all(valid) {
            return Err(ProviderError::invalid("voice", "an espeak-ng voice such as en-us or en-us+f3"));
        }
        let rate = integer_option(bot, "rate", 80, 450)?.unwrap_or(DEFAULT_RATE);
        let timeout = integer_option(bot, "timeout_ms", 1, 600_000)?
            .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)));
        Ok(EspeakTts(Rc::new(Settings { program, voice: voice.to_string(), rate, timeout })))
    }

    /// The program that is run.
    pub fn program(&self) -> &Path {
        &self.0.program
    }
}

/// `tts.options.NAME` as an integer from `min` to `max`, if set.
fn integer_option(bot: &BotConfig, name: &str, min: u32, max: u32) -> Result<Option<u32>, ProviderError> {
    let Some(value) = bot.tts.options.get(name) else { return Ok(None) };
    match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ProviderError::invalid(format!("tts.options.{name}"), format!("an integer from {min} to {max}"))),
    }
}

/// The program's path: as given when it has a `/`, else the first match in `PATH`; it must
/// be an executable file.
fn find_program(program: &str) -> Result<PathBuf, ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    let field = "tts.options.program";
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.is_empty() {
        return Err(ProviderError::invalid(field, "must not be empty"));
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(ProviderError::invalid(field, format!("`{program}` is not an executable file")))
        };
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs).map(|dir| dir.join(program)).find(|p| executable(p)).ok_or_else(|| {
        ProviderError::invalid(
            field,
            format!("`{program}` is not in PATH: install espeak-ng (Debian package `espeak-ng`) or set the path"),
        )
    })
}

impl TtsProvider for EspeakTts {
    fn output_format(&self) -> AudioFormat {
        AudioFormat::Pcm16(SAMPLE_RATE)
    }

    fn synthesize(&self, sentence: u64, text: String, events: Events) -> Job {
        let settings = self.0.clone();
        compio::runtime::spawn(async move {
            let run = speak(&settings, sentence, &text, &events);
            let timed_out = Err(EspeakError::Timeout(settings.timeout));
            let result = compio::time::timeout(settings.timeout, run).await.unwrap_or(timed_out);
            let event = match result {
                Ok(()) => TtsEvent::Done,
                Err(e) => TtsEvent::Error(e.to_string()),
            };
            events.push(Event::Tts { sentence, event });
        })
    }
}

/// A running synthesiser: killed and reaped if dropped before it exited.
#[derive(Debug)]
struct Process(Option<Child>);

impl Process {
    /// Waits for the exit without blocking the thread (the pipes have closed, so it is near).
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            let Some(child) = self.0.as_mut() else { return Err(std::io::ErrorKind::NotFound.into()) };
            if let Some(status) = child.try_wait()? {
                self.0 = None;
                return Ok(status);
            }
            compio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        let _ = child.kill();
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // A killed process exits at once, but waiting for it is a blocking call.
        let mut reap = move || {
            let _ = child.wait();
        };
        if compio::runtime::Runtime::try_with_current(|_| ()).is_ok() {
            compio::runtime::spawn_blocking(reap).detach();
        } else {
            reap();
        }
    }
}

/// One sentence: run the program, stream its audio to `events`, check how it exited.
async fn speak(settings: &Settings, sentence: u64, text: &str, events: &Events) -> Result<(), EspeakError> {
    // Control characters (NUL included, which no pipe or argument may carry cleanly) as spaces.
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    if text.len() > MAX_TEXT {
        return Err(EspeakError::TextTooLong(text.len()));
    }
    let program = settings.program.display().to_string();
    let spawned = Command::new(&settings.program)
        .args(["--stdout", "--stdin", "-b", "1", "-v", &settings.voice, "-s", &settings.rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = spawned.map_err(|e| EspeakError::Spawn { program: program.clone(), message: e.to_string() })?;
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let mut process = Process(Some(child));
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        return Err(EspeakError::Io("the process has no pipes".into()));
    };
    let io = |e: std::io::Error| EspeakError::Io(e.to_string());
    let stdin = write_text(AsyncFd::new(stdin).map_err(io)?, text);
    let stdout = read_audio(AsyncFd::new(stdout).map_err(io)?, sentence, events);
    let stderr = read_stderr(AsyncFd::new(stderr).map_err(io)?);
    let (_, _, kept) = try_join3(stdin, stdout, stderr).await?;
    let status = process.wait().await.map_err(io)?;
    if !status.success() {
        return Err(EspeakError::Exit { program, status: status.to_string(), stderr: kept });
    }
    Ok(())
}

/// Writes the text and closes standard input. The text is under the pipe's 64 KiB buffer,
/// so the write does not wait for the reader; a program that exits without reading it is
/// judged by its output, not by this write.
async fn write_text(mut stdin: AsyncFd<ChildStdin>, text: &str) -> Result<(), EspeakError> {
    let BufResult(_, _) = stdin.write_all(text.as_bytes().to_vec()).await;
    Ok(())
}

/// Reads standard output to its end, passing the samples on as they come.
async fn read_audio(mut stdout: AsyncFd<ChildStdout>, sentence: u64, events: &Events) -> Result<(), EspeakError> {
    let limit = AudioFormat::Pcm16(SAMPLE_RATE).bytes_per_ms(MAX_SENTENCE_MS) + MAX_HEADER;
    let mut wav = WavStream::new(SAMPLE_RATE);
    let (mut total, mut buf) = (0usize, Vec::with_capacity(READ_BUF));
    loop {
        buf.clear();
        let BufResult(result, read) = stdout.read(buf).await;
        buf = read;
        let n = result.map_err(|e| EspeakError::Io(format!("read: {e}")))?;
        if n == 0 {
            return Ok(wav.finish()?);
        }
        total += n;
        if total > limit {
            return Err(EspeakError::TooMuchAudio);
        }
        let audio = wav.feed(buf.get(..n).unwrap_or_default())?;
        if !audio.is_empty() {
            events.push(Event::Tts { sentence, event: TtsEvent::Audio(audio) });
        }
    }
}

/// Reads standard error to its end (so the program never blocks on it), keeping its start.
async fn read_stderr(mut stderr: AsyncFd<ChildStderr>) -> Result<String, EspeakError> {
    let (mut kept, mut buf) = (Vec::new(), Vec::with_capacity(1024));
    loop {
        buf.clear();
        let BufResult(result, read) = stderr.read(buf).await;
        buf = read;
        match result {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
            }
        }
    }
    Ok(String::from_utf8_lossy(&kept).split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header like espeak-ng's: placeholder sizes, 22,050 Hz mono.
    fn header(rate: u32, channels: u16, data_size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&0x7fff_f024u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        h.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        h.extend_from_slice(&(2 * channels).to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_size.to_le_bytes());
        h
    }

    #[test]
    fn samples_stream_whatever_the_split() {
        let mut file = header(SAMPLE_RATE, 1, 0x7fff_f000);
        file.extend((0..1001u32).map(|i| i as u8));
        for split in [1, 3, 7, 44, 45, 500] {
            let mut wav = WavStream::new(SAMPLE_RATE);
            let mut out = Vec::new();
            for piece in file.chunks(split) {
                let samples = wav.feed(piece).expect("a valid stream");
                assert_eq!(samples.len() % 2, 0);
                out.extend(samples);
            }
            assert_eq!(wav.finish(), Ok(()));
            // The odd last byte is half a sample: held back.
            assert_eq!(out, file[44..44 + 1000], "split {split}");
        }
    }

    #[test]
    fn samples_stop_at_the_declared_size() {
        let mut file = header(SAMPLE_RATE, 1, 6);
        file.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let mut wav = WavStream::new(SAMPLE_RATE);
        assert_eq!(wav.feed(&file), Ok(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(wav.feed(&[11, 12]), Ok(vec![]));
    }

    #[test]
    fn malformed_output_is_an_error_not_a_panic() {
        let cases: Vec<(Vec<u8>, WavStreamError)> = vec![
            (b"this is not a wav file at all".to_vec(), WavStreamError::NotWav),
            (header(8_000, 1, 100), WavStreamError::Format { rate: 8_000, channels: 1, expected: SAMPLE_RATE }),
            (
                header(SAMPLE_RATE, 2, 100),
                WavStreamError::Format { rate: SAMPLE_RATE, channels: 2, expected: SAMPLE_RATE },
            ),
        ];
        for (bytes, error) in cases {
            let mut wav = WavStream::new(SAMPLE_RATE);
            assert_eq!(wav.feed(&bytes), Err(error.clone()));
            assert_eq!(wav.feed(&header(SAMPLE_RATE, 1, 4)), Err(error.clone()), "errors repeat");
            assert_eq!(wav.finish(), Err(error));
        }
        // A header that never reaches its samples.
        let mut wav = WavStream::new(SAMPLE_RATE);
        let mut head = b"RIFF\0\0\0\0WAVEjunk".to_vec();
        head.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(wav.feed(&head), Ok(vec![]));
        assert_eq!(wav.feed(&[0; MAX_HEADER]), Err(WavStreamError::HeaderTooLong));
        // Output that stops inside the header, or after a few bytes.
        let mut wav = WavStream::new(SAMPLE_RATE);
        assert_eq!(wav.feed(&header(SAMPLE_RATE, 1, 4)[..30]), Ok(vec![]));
        assert_eq!(wav.finish(), Err(WavStreamError::Truncated));
        let mut wav = WavStream::new(SAMPLE_RATE);
        assert_eq!(wav.feed(b"oops"), Ok(vec![]));
        assert_eq!(wav.finish(), Err(WavStreamError::NotWav));
        assert_eq!(WavStream::new(SAMPLE_RATE).finish(), Ok(()), "no output at all is no audio");
    }
}
