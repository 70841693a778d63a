//! A call with no speech service: `espeak` text-to-speech (the real `espeak-ng` program) and
//! `none` speech-to-text, with the `script` language model. Synthesis, cancellation (the
//! process is killed), missing or misbehaving programs (errors, no panics), and a whole
//! conversation: greeting, turns, barge-in, idle re-prompt.
//!
//! Tests here run one at a time: they write small scripts and run programs, and a script
//! written while another test forks could be held open for writing ("text file busy").

mod common;

use common::{audio, next, sentence};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use cxb_media::Timestamp;
use cxb_media::turn::TurnEvent;
use cxb_pipeline::conversation::{Action, Conversation, Line};
use cxb_pipeline::provider::{Job, LlmProvider, ProviderError, SttCommand, SttSession, TtsProvider};
use cxb_pipeline::providers::espeak::{self, EspeakTts, SAMPLE_RATE};
use cxb_pipeline::providers::{self, none::NoStt};
use cxb_pipeline::{AudioFormat, BotConfig, Event, Events, SttEvent, TtsEvent};
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

fn run<F: Future>(f: F) -> F::Output {
    // The test servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    compio::runtime::Runtime::new().expect("a compio runtime").block_on(f)
}

const FALLBACK: &str = "Sorry, I did not catch that.";

/// A bot that needs nothing but espeak-ng, with `extra` merged over it.
fn bot(extra: Value) -> BotConfig {
    let mut config = json!({
        "greeting": "Hello! Thanks for calling.",
        "stt": { "provider": "none" },
        "llm": { "provider": "script", "options": { "script": {
            "intents": [{ "keywords": ["hours"], "reply": "We are open nine to five." }],
            "fallback": FALLBACK,
        } } },
        "tts": { "provider": "espeak" },
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    BotConfig::from_json(config.to_string().as_bytes()).expect("a valid bot")
}

fn tts_with(options: Value) -> Result<EspeakTts, ProviderError> {
    EspeakTts::from_config(&bot(json!({ "tts": { "provider": "espeak", "options": options } })))
}

/// An executable shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make it executable");
    path
}

fn error(out: &[TtsEvent]) -> String {
    match out.last() {
        Some(TtsEvent::Error(e)) => e.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Whether process `pid` is gone (exited and reaped), polled for at most 2 s.
async fn gone(pid: &str) -> bool {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        compio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The pid a script wrote to `file`, waited for at most 2 s.
async fn pid_in(file: &Path) -> String {
    for _ in 0..200 {
        if let Ok(pid) = std::fs::read_to_string(file)
            && !pid.trim().is_empty()
        {
            return pid.trim().to_string();
        }
        compio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the script never wrote its pid");
}

#[test]
fn espeak_speaks_a_sentence_as_22050_hz_mono_pcm() {
    let text = "Hello there, how can I help you today?";
    let tts = providers::tts(&bot(json!({}))).expect("espeak-ng is installed");
    assert_eq!(tts.output_format(), AudioFormat::Pcm16(SAMPLE_RATE));
    let events = Events::new();
    let out = run(async {
        let _job = tts.synthesize(7, text.into(), events.clone());
        sentence(&events).await
    });
    assert_eq!(out.last(), Some(&TtsEvent::Done));
    let pcm = audio(&out);
    let seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE * 2);
    assert!((1.0..6.0).contains(&seconds), "{seconds} s of audio for eight words");
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let loud = samples.iter().filter(|s| s.unsigned_abs() > 1_000).count();
    assert!(loud > samples.len() / 10, "speech, not silence: {loud} of {} samples loud", samples.len());
    // The very samples espeak-ng writes, header taken off.
    let direct = std::process::Command::new("espeak-ng")
        .args(["--stdout", "-b", "1", "-v", "en-us", "-s", "175", "--", text])
        .output()
        .expect("espeak-ng runs");
    let data = direct.stdout.windows(4).position(|w| w == b"data").expect("a data chunk") + 8;
    assert_eq!(pcm, direct.stdout[data..data + (direct.stdout.len() - data) / 2 * 2]);
}

#[test]
fn voice_and_rate_reach_the_program() {
    let text = "One two three four five six seven eight nine ten.";
    let length = |options: Value, voice: &str| {
        let bot = bot(json!({ "voice": voice, "tts": { "provider": "espeak", "options": options } }));
        let tts = EspeakTts::from_config(&bot).expect("valid settings");
        let events = Events::new();
        let out = run(async {
            let _job = tts.synthesize(7, text.into(), events.clone());
            sentence(&events).await
        });
        assert_eq!(out.last(), Some(&TtsEvent::Done), "{out:?}");
        audio(&out)
    };
    let normal = length(json!({}), "en-us");
    let fast = length(json!({ "rate": 350 }), "en-us");
    assert!(fast.len() * 3 < normal.len() * 2, "350 wpm is much shorter: {} vs {}", fast.len(), normal.len());
    assert_ne!(length(json!({}), "en-us+f3"), normal, "a voice variant sounds different");
    // A voice espeak-ng does not have: its own message comes back.
    let tts = EspeakTts::from_config(&bot(json!({ "voice": "xx-nope" }))).expect("the name is well-formed");
    let events = Events::new();
    let out = run(async {
        let _job = tts.synthesize(7, text.into(), events.clone());
        sentence(&events).await
    });
    let e = error(&out);
    assert!(e.contains("exit status: 1") && e.contains("voice does not exist"), "{e}");
    assert!(audio(&out).is_empty());
}

#[test]
fn cancelling_a_synthesis_kills_the_process() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pid_file = dir.path().join("pid");
    // espeak-ng itself, under the same pid, so the test can watch it.
    let wrapper = script(dir.path(), "espeak", &format!("echo $$ > '{}'\nexec espeak-ng \"$@\"", pid_file.display()));
    let tts = tts_with(json!({ "program": wrapper })).expect("the wrapper is executable");
    let long = "This sentence goes on for a good while so that there is plenty of audio left to make. ".repeat(40);
    let events = Events::new();
    run(async {
        let job = tts.synthesize(7, long, events.clone());
        assert!(matches!(next(&events).await, Event::Tts { sentence: 7, event: TtsEvent::Audio(_) }));
        let pid = pid_in(&pid_file).await;
        drop(job);
        assert!(gone(&pid).await, "espeak-ng {pid} still runs after the cancel");
    });
    // A program that neither writes nor reads: only a kill ends it.
    let _ = std::fs::remove_file(&pid_file);
    let sleeper = script(dir.path(), "sleeper", &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()));
    let tts = tts_with(json!({ "program": sleeper })).expect("the script is executable");
    run(async {
        let job = tts.synthesize(7, "Hello there.".into(), events.clone());
        let pid = pid_in(&pid_file).await;
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(job);
        assert!(gone(&pid).await, "{pid} still runs after the cancel");
    });
    assert!(events.is_empty(), "a cancelled job reports nothing more");
}

#[test]
fn a_missing_program_is_an_error_when_the_call_starts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let not_executable = dir.path().join("plain");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("write");
    let programs = [json!("/nonexistent/espeak-ng"), json!("no-such-espeak-xyz"), json!(not_executable), json!(""), json!(7)];
    for program in programs {
        let bot = bot(json!({ "tts": { "provider": "espeak", "options": { "program": program } } }));
        match providers::tts(&bot).map(|t| t.output_format()) {
            Err(ProviderError::Invalid { field, message }) => {
                assert_eq!(field, "tts.options.program", "{message}");
            }
            other => panic!("{program}: {other:?}"),
        }
    }
    let e = tts_with(json!({ "program": "no-such-espeak-xyz" })).expect_err("not in PATH").to_string();
    assert!(e.contains("espeak-ng"), "the error says what to install: {e}");
    for (options, field) in [
        (json!({ "rate": 20 }), "tts.options.rate"),
        (json!({ "rate": "fast" }), "tts.options.rate"),
        (json!({ "timeout_ms": 0 }), "tts.options.timeout_ms"),
    ] {
        assert!(matches!(tts_with(options), Err(ProviderError::Invalid { field: f, .. }) if f == field), "{field}");
    }
    for voice in ["-w/tmp/x", "en us", "../../etc/passwd", "en;rm"] {
        let err = EspeakTts::from_config(&bot(json!({ "voice": voice }))).expect_err(voice);
        assert!(matches!(err, ProviderError::Invalid { ref field, .. } if field == "voice"), "{voice}: {err}");
    }
    // The program vanishes after the call started: the sentence fails, nothing panics.
    let program = script(dir.path(), "gone", "exit 0");
    let tts = tts_with(json!({ "program": program })).expect("there for now");
    std::fs::remove_file(&program).expect("remove");
    let events = Events::new();
    let out = run(async {
        let _job = tts.synthesize(7, "Hello there.".into(), events.clone());
        sentence(&events).await
    });
    let e = error(&out);
    assert!(e.contains("cannot run") && e.contains("gone"), "{e}");
}

#[test]
fn malformed_or_endless_output_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // An 8 kHz header, as an MBROLA voice would give.
    let mut narrow = b"RIFF\x24\xf0\xff\x7fWAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0".to_vec();
    narrow.extend_from_slice(b"data\0\xf0\xff\x7f");
    std::fs::write(dir.path().join("narrow.wav"), &narrow).expect("write");
    narrow[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    std::fs::write(dir.path().join("endless.wav"), &narrow).expect("write");
    let d = dir.path().display();
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("garbage", "echo 'this is not a WAV file at all, just text'".into(), json!({}), "not a 16-bit PCM WAV"),
        ("random", "head -c 20000 /dev/urandom".into(), json!({}), "not a 16-bit PCM WAV"),
        ("short", "printf RIFF".into(), json!({}), "ended inside the WAV header"),
        ("narrow", format!("cat '{d}/narrow.wav'"), json!({}), "8000 Hz"),
        ("fails", "cat >/dev/null; echo 'Error: no voices' >&2; exit 3".into(), json!({}), "(exit status: 3): Error: no voices"),
        ("endless", format!("cat '{d}/endless.wav' /dev/zero"), json!({}), "over 120 s of audio"),
        ("silent", "exec sleep 30".into(), json!({ "timeout_ms": 300 }), "no complete answer within 300ms"),
    ];
    for (name, body, mut options, expected) in cases {
        options["program"] = json!(script(dir.path(), name, &body));
        let tts = tts_with(options).expect("the script is executable");
        let events = Events::new();
        let out = run(async {
            let _job = tts.synthesize(7, "Hello there.".into(), events.clone());
            sentence(&events).await
        });
        let e = error(&out);
        assert!(e.contains(expected), "{name}: {e}");
    }
    // A program that writes nothing and exits cleanly: a sentence with no audio.
    let tts = tts_with(json!({ "program": script(dir.path(), "quiet", "cat > /dev/null") })).expect("executable");
    let events = Events::new();
    let out = run(async {
        let _job = tts.synthesize(7, "Hello there.".into(), events.clone());
        sentence(&events).await
    });
    assert_eq!(out, [TtsEvent::Done]);
    // Blank text runs nothing; text over the limit is refused.
    let tts = tts_with(json!({})).expect("espeak-ng");
    let out = run(async {
        let _job = tts.synthesize(7, " \n\t\0 ".into(), events.clone());
        let blank = sentence(&events).await;
        let _job = tts.synthesize(7, "word ".repeat(espeak::MAX_TEXT / 4), events.clone());
        (blank, sentence(&events).await)
    });
    assert_eq!(out.0, [TtsEvent::Done]);
    assert!(error(&out.1).contains("over the limit"), "{:?}", out.1);
}

#[test]
fn none_stt_answers_each_finalize_with_the_placeholder() {
    let stt = providers::stt(&bot(json!({}))).expect("the none provider");
    assert_eq!(stt.input_format(), AudioFormat::Mulaw8k);
    let events = Events::new();
    run(async {
        let session = stt.open(events.clone());
        for _ in 0..50 {
            session.send(SttCommand::Audio(vec![0xff; 160]));
        }
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, Event::Stt(SttEvent::Final { text: "...".into(), end_of_turn: true }));
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, Event::Stt(SttEvent::Final { text: "...".into(), end_of_turn: true }));
        session.send(SttCommand::Close);
        session.send(SttCommand::Finalize);
        compio::time::sleep(Duration::from_millis(20)).await;
        assert!(events.is_empty(), "a closed session says nothing more");
    });
    let with = |placeholder: Value| bot(json!({ "stt": { "provider": "none", "options": { "placeholder": placeholder } } }));
    assert_eq!(NoStt::from_config(&with(json!(" yes "))).expect("valid").placeholder(), "yes");
    for placeholder in [json!(""), json!("   "), json!(1), json!("x".repeat(1001))] {
        let err = NoStt::from_config(&with(placeholder)).expect_err("invalid");
        assert!(matches!(err, ProviderError::Invalid { ref field, .. } if field == "stt.options.placeholder"));
    }
}

/// A call's providers around a conversation, as the engine runs them, with playout that
/// reaches each mark as soon as it is queued unless told to hold the marks.
struct OfflineCall {
    conv: Conversation,
    events: Events,
    stt: SttSession,
    llm: Rc<dyn LlmProvider>,
    tts: Rc<dyn TtsProvider>,
    llm_job: Option<Job>,
    tts_jobs: Vec<Job>,
    said: Vec<String>,
    played: usize,
    cancels: usize,
}

impl OfflineCall {
    fn new(bot: &BotConfig) -> OfflineCall {
        let events = Events::new();
        let stt = providers::stt(bot).expect("stt").open(events.clone());
        let tts = providers::tts(bot).expect("tts");
        let conv = Conversation::new(bot, tts.output_format(), Vec::new(), Timestamp::from_millis(0));
        let llm = providers::llm(bot).expect("llm");
        let (llm_job, tts_jobs, said) = (None, Vec::new(), Vec::new());
        OfflineCall { conv, events, stt, llm, tts, llm_job, tts_jobs, said, played: 0, cancels: 0 }
    }

    /// Carries out every queued action.
    fn act(&mut self, now: Timestamp) {
        while let Some(action) = self.conv.poll_action() {
            match action {
                Action::SttFinalize => self.stt.send(SttCommand::Finalize),
                Action::Llm { turn, request } => {
                    self.llm_job = Some(self.llm.complete(turn, request, self.events.clone()));
                }
                Action::CancelLlm => self.llm_job = None,
                Action::Synthesize { sentence, text } => {
                    self.tts_jobs.retain(|j| !j.is_finished());
                    self.said.push(text.clone());
                    self.tts_jobs.push(self.tts.synthesize(sentence, text, self.events.clone()));
                }
                Action::CancelTts => {
                    self.cancels += 1;
                    self.tts_jobs.clear();
                }
                Action::Play(audio) => self.played += audio.len(),
                Action::Mark(id) => self.conv.on_mark(now, id),
                Action::ClearPlayout | Action::RunTool(_) | Action::SendDtmf(_) | Action::Handoff { .. } | Action::Transfer { .. } | Action::Hangup { .. } => {}
            }
        }
    }

    /// Feeds events to the conversation until `done` holds.
    async fn until(&mut self, now: Timestamp, done: impl Fn(&OfflineCall) -> bool) {
        self.act(now);
        while !done(self) {
            let event = next(&self.events).await;
            self.conv.on_event(now, event);
            self.act(now);
        }
    }

    /// Waits for the bot's reply to begin, then for it to be played to its end.
    async fn reply(&mut self, now: Timestamp) {
        self.until(now, |c| c.conv.bot_active()).await;
        self.until(now, |c| !c.conv.bot_active()).await;
    }

    /// A caller's turn of speech from `from` to `to` ms, ended by the turn detector.
    fn turn(&mut self, from: u64, to: u64) {
        let ms = Timestamp::from_millis;
        self.conv.on_turn(ms(from), TurnEvent::Started { at: ms(from) });
        self.act(ms(from));
        let ended = TurnEvent::Ended { speech_started: ms(from), speech_ended: ms(to), decided_at: ms(to + 700) };
        self.conv.on_turn(ms(to + 700), ended);
        self.act(ms(to + 700));
    }
}

#[test]
fn a_whole_call_runs_with_no_speech_service() {
    let ms = Timestamp::from_millis;
    let lines = run(async {
        let mut call = OfflineCall::new(&bot(json!({ "idle": { "reprompt_after_seconds": 5 } })));
        call.conv.start(ms(0));
        call.reply(ms(100)).await;
        assert!(call.played > 22_050, "the greeting is heard: {} bytes", call.played);

        // A turn: the placeholder reaches the script, which answers with its fallback.
        call.turn(1_000, 2_000);
        call.reply(ms(3_000)).await;
        assert_eq!(call.said.last().map(String::as_str), Some(FALLBACK));

        // The caller talks over the answer while it is synthesised: it is cancelled (the
        // espeak-ng processes are killed with their jobs), and the new turn is answered.
        let said = call.said.len();
        call.turn(4_000, 5_000);
        call.until(ms(5_000), |c| c.said.len() > said).await;
        assert!(call.conv.bot_active() && call.tts_jobs.iter().any(|j| !j.is_finished()));
        call.conv.on_turn(ms(5_800), TurnEvent::Started { at: ms(5_750) });
        call.act(ms(5_800));
        assert_eq!(call.cancels, 0, "not before the caller has spoken for the bot's minimum (500 ms)");
        for k in 0..25 {
            call.conv.on_caller_frame(ms(5_800 + k * 20), true);
        }
        call.act(ms(6_300));
        assert_eq!((call.tts_jobs.len(), call.cancels), (0, 1), "barge-in cancels the synthesis");
        assert_eq!(call.conv.barge_ins(), 1);
        let ended = TurnEvent::Ended { speech_started: ms(5_750), speech_ended: ms(6_500), decided_at: ms(7_200) };
        call.conv.on_turn(ms(7_200), ended);
        call.reply(ms(7_300)).await;
        assert_eq!(call.said.last().map(String::as_str), Some(FALLBACK));

        // Silence: the re-prompt comes on time.
        let due = call.conv.deadline().expect("an idle deadline");
        assert_eq!(due, ms(7_300 + 5_000));
        call.conv.on_timeout(due);
        call.reply(due).await;
        assert_eq!(call.said.last().map(String::as_str), Some("Are you still there?"));
        call.conv.transcript().to_vec()
    });
    let roles: Vec<(&str, &str)> = lines.iter().map(|l: &Line| (l.role, l.text.as_str())).collect();
    assert_eq!(
        roles,
        [
            ("bot", "Hello! Thanks for calling."),
            ("caller", "..."),
            ("bot", FALLBACK),
            ("caller", "..."),
            ("caller", "..."),
            ("bot", FALLBACK),
            ("bot", "Are you still there?"),
        ]
    );
}
