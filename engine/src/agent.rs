//! An AI bot inside a call: the conversation, its provider sessions, the audio conversions
//! between the carrier and the providers, the recording, and the call's result.
//!
//! The agent is the call's [`Bot`]: the session hands it the caller's frames, turns, keys and
//! the clock, and it plays through the session's outbound path. Synthesised audio that runs
//! ahead of the playout waits in the agent's own backlog (8 kHz PCM and the marks between
//! sentences). Provider requests are tasks on this worker's runtime, started and cancelled
//! without blocking; their replies wake the call through [`Agent::events`].
//!
//! The recording streams to the engine's result sink as the call goes when the sink offers a
//! stream ([`ResultSink::recording_stream`]: the outbox writes it to a file on its own thread),
//! so a call holds about 1.5 s of audio whatever its length: the writer's timeline is allocated
//! when the call starts, its chunk buffers come back from the outbox for reuse, and no file is
//! touched on this thread.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_codecs::{Encoding, SampleRate, g711};
use cxb_media::Timestamp;
use cxb_media::amd::{Amd, AmdConfig, AmdResult, BeepDetector, Verdict};
use cxb_media::resample::Polyphase;
use cxb_media::turn::TurnEvent;
use cxb_pipeline::config::{BotConfig, MachineAction, OutboundGreeting};
use cxb_pipeline::conversation::{Action, Conversation, Ending};
use cxb_pipeline::provider::{AudioFormat, Events, Job, LlmProvider, SttCommand, SttSession, ToolCall, TtsProvider};
use cxb_pipeline::tools::{CarrierLink, Destination, ToolAction, Tools};
use cxb_codecs::wav::{Channel, RecordingSink, RecordingWriter};
use serde_json::{Value, json};

use crate::desk::{CallerSide, Change};
use crate::error::EndReason;
use crate::protocol::Start;
use crate::results::{Recording, ResultSink};
use crate::session::{Bot, CallerFrame, Playback, PlayoutRoom, SessionEvent};
use crate::turn_model::{ModelTurns, TurnJudge};
use cxb_contract::bot::TurnMode;
use cxb_pipeline::provider::{Event, SttEvent};
use cxb_contract::call_token::{CallClaims, Direction};
use cxb_contract::ids::{BotId, CallId, OrgId};
use cxb_contract::phone::PhoneNumber;
use cxb_contract::result::{CallResult, CostLine, Outcome, Turn};

/// Where bots come from: local files, the API, or both (files first).
#[derive(Debug, Clone, Default)]
pub struct BotSource {
    /// A folder of `{id}.json` bot files.
    pub dir: Option<PathBuf>,
    /// The control plane.
    pub api: Option<ApiLink>,
    /// How long a bot fetched from the API is reused.
    pub cache_ttl: Duration,
}

pub use cxb_pipeline::tools::ApiLink;

/// Why a bot could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotError {
    /// No such bot.
    NotFound,
    /// The bot exists but cannot run (bad file, bad provider settings, API unreachable).
    Unavailable(String),
}

/// Where a SIP call to a number goes (`/v1/phone-numbers` in the API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct NumberRoute {
    /// The number's organization.
    pub org_id: String,
    /// The bot that answers.
    pub bot_id: String,
    /// The trunk's addresses; empty: any (then digest credentials are required).
    #[serde(default)]
    pub allowed_sources: Vec<ipnet::IpNet>,
    /// Digest credentials the engine challenges INVITEs for.
    #[serde(default)]
    pub digest_username: Option<String>,
    /// See `digest_username`.
    #[serde(default)]
    pub digest_password: Option<String>,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, (Instant, Rc<BotConfig>)>> = RefCell::new(HashMap::new());
    static NUMBERS: RefCell<HashMap<String, (Instant, Rc<NumberRoute>)>> = RefCell::new(HashMap::new());
    /// The result sink of the engine whose worker runs on this thread: agents made here stream
    /// their recordings into it. Set by the worker as it admits an AI call ([`record_into`]).
    static RESULTS: RefCell<Option<Arc<dyn ResultSink>>> = const { RefCell::new(None) };
}

/// Names the result sink that agents made next on this worker thread record into (the
/// engine's; per thread, as the egress policy is).
pub(crate) fn record_into(results: Option<&Arc<dyn ResultSink>>) {
    RESULTS.with_borrow_mut(|r| match (r.as_ref(), results) {
        (Some(held), Some(new)) if Arc::ptr_eq(held, new) => {}
        _ => *r = results.cloned(),
    });
}

/// A call's recording: streamed into the result sink as the call goes, or kept in memory when
/// the sink takes only whole files.
#[derive(Debug)]
enum Recorder {
    Memory(RecordingWriter),
    Streamed(RecordingWriter<Box<dyn RecordingSink>>),
}

impl Recorder {
    /// A recording for a call of at most `max`, streamed if this thread's result sink can.
    fn new(max: Duration) -> Recorder {
        let rate = SampleRate::Hz8000;
        match RESULTS.with_borrow(|r| r.as_ref().and_then(|sink| sink.recording_stream())) {
            Some(stream) => Recorder::Streamed(RecordingWriter::with_sink(rate, max, stream)),
            None => Recorder::Memory(RecordingWriter::new(rate, max)),
        }
    }

    fn write(&mut self, channel: Channel, at: Duration, samples: &[i16]) {
        match self {
            Recorder::Memory(w) => w.write(channel, at, samples),
            Recorder::Streamed(w) => w.write(channel, at, samples),
        }
    }

    fn append(&mut self, channel: Channel, samples: &[i16]) {
        match self {
            Recorder::Memory(w) => w.append(channel, samples),
            Recorder::Streamed(w) => w.append(channel, samples),
        }
    }

    fn dropped(&self) -> Duration {
        match self {
            Recorder::Memory(w) => w.dropped(),
            Recorder::Streamed(w) => w.dropped(),
        }
    }

    fn finish(self) -> Recording {
        match self {
            Recorder::Memory(w) => Recording::Wav(w.finish()),
            Recorder::Streamed(w) => {
                let (stream, summary) = w.close();
                Recording::Streamed(stream, summary)
            }
        }
    }
}

impl BotSource {
    /// Whether any source is configured.
    pub fn is_configured(&self) -> bool {
        self.dir.is_some() || self.api.is_some()
    }

    /// The bot `id`: a local file if there is one, else the API's runtime config (cached on
    /// this worker for `cache_ttl`).
    pub async fn resolve(&self, id: &str) -> Result<Rc<BotConfig>, BotError> {
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || id.len() > 100
        {
            return Err(BotError::NotFound);
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{id}.json"));
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let mut bot = BotConfig::from_json(&bytes)
                        .map_err(|e| BotError::Unavailable(format!("{}: {e}", path.display())))?;
                    if bot.id.is_empty() {
                        bot.id = id.to_string();
                    }
                    return Ok(Rc::new(bot));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BotError::Unavailable(format!("{}: {e}", path.display()))),
            }
        }
        let Some(api) = &self.api else {
            return Err(BotError::NotFound);
        };
        let cached = CACHE.with(|c| {
            c.borrow()
                .get(id)
                .filter(|(at, _)| at.elapsed() < self.cache_ttl)
                .map(|(_, b)| b.clone())
        });
        if let Some(bot) = cached {
            return Ok(bot);
        }
        let bot = Rc::new(fetch(api, id).await?);
        CACHE.with(|c| {
            c.borrow_mut()
                .insert(id.to_string(), (Instant::now(), bot.clone()))
        });
        Ok(bot)
    }
}

impl BotSource {
    /// Where a SIP call to `number` goes, from the API (cached on this worker for
    /// `cache_ttl`); `NotFound` without an API.
    pub async fn resolve_number(&self, number: &str) -> Result<Rc<NumberRoute>, BotError> {
        let valid = !number.is_empty() && number.len() <= 64 && number.bytes().all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b));
        let (true, Some(api)) = (valid, &self.api) else {
            return Err(BotError::NotFound);
        };
        let cached = NUMBERS.with_borrow(|c| c.get(number).filter(|(at, _)| at.elapsed() < self.cache_ttl).map(|(_, r)| r.clone()));
        if let Some(route) = cached {
            return Ok(route);
        }
        let body = get_runtime(api, &format!("phone-numbers/{number}"), "phone number").await?;
        let route: NumberRoute = serde_json::from_slice(&body).map_err(|e| BotError::Unavailable(format!("phone number {number}: {e}")))?;
        let route = Rc::new(route);
        NUMBERS.with_borrow_mut(|c| {
            if c.len() > 10_000 {
                c.clear();
            }
            c.insert(number.to_string(), (Instant::now(), route.clone()));
        });
        Ok(route)
    }
}

/// `GET {api}/v1/runtime/{path}` with the fleet token: the body of a 200.
async fn get_runtime(api: &ApiLink, path: &str, what: &str) -> Result<Vec<u8>, BotError> {
    let unavailable = |e: String| BotError::Unavailable(format!("fetching {what}: {e}"));
    let client = cxb_pipeline::providers::http().map_err(unavailable)?;
    let url = format!("{}/v1/runtime/{path}", api.base_url.trim_end_matches('/'));
    let request = client.get(url.as_str()).and_then(|r| r.bearer_auth(&api.fleet_token)).map_err(|e| unavailable(e.to_string()))?;
    let response = compio::time::timeout(Duration::from_secs(5), request.send())
        .await
        .map_err(|_| unavailable("timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    match response.status().as_u16() {
        200 => {}
        404 => return Err(BotError::NotFound),
        status => return Err(unavailable(format!("HTTP {status}"))),
    }
    Ok(response.bytes().await.map_err(|e| unavailable(e.to_string()))?.to_vec())
}

async fn fetch(api: &ApiLink, id: &str) -> Result<BotConfig, BotError> {
    let body = get_runtime(api, &format!("bots/{id}"), &format!("bot {id}")).await?;
    BotConfig::from_json(&body).map_err(|e| BotError::Unavailable(format!("fetching bot {id}: {e}")))
}

/// How the agent wants the call to end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AgentEnd {
    /// The bot hung up.
    Hangup(String),
    /// The call is to be handed to this destination.
    Transfer(String),
}

/// How long, after a machine is detected, the voicemail message waits for the beep before it
/// settles for the greeting's trailing silence instead.
const BEEP_WAIT_MS: u64 = 20_000;

/// End reasons of calls that answering-machine detection ended.
const MACHINE_DETECTED: &str = "machine_detected";
const VOICEMAIL_LEFT: &str = "voicemail_left";

/// Answering-machine detection on one call: the bot's audio is held while it runs, so the bot
/// does not talk over a machine. It runs from the first inbound sample until the verdict
/// (at most the analysis time, 5 s) or, when a message is to be left on a machine, until the
/// beep; then it costs nothing per frame.
#[derive(Debug)]
struct Screening {
    action: MachineAction,
    amd: Amd,
    /// Only when a message is to be left.
    beep: Option<BeepDetector>,
    /// When the first beep ended, ms from the first inbound sample.
    beep_ms: Option<u64>,
    /// The bot's audio is held.
    holding: bool,
    /// How the call ended because of the verdict, if it did.
    end: Option<&'static str>,
}

impl Screening {
    fn new(action: MachineAction) -> Screening {
        Screening {
            action,
            amd: Amd::new(AmdConfig::default()),
            beep: (action == MachineAction::LeaveVoicemail).then(BeepDetector::default),
            beep_ms: None,
            holding: true,
            end: None,
        }
    }

    /// One frame of the caller; the verdict if this frame brought it (while holding).
    fn frame(&mut self, pcm: &[i16]) -> Option<Verdict> {
        let verdict = self.amd.push(pcm);
        if let Some(beep) = self.beep.as_mut().and_then(|b| b.push(pcm)) {
            self.beep_ms.get_or_insert(beep.end_ms);
        }
        verdict
    }

    /// Waiting to leave a message: the beep came, or after `BEEP_WAIT_MS` the greeting fell
    /// silent.
    fn may_speak(&self, decided_ms: u64) -> bool {
        let quiet = u128::from(self.amd.silence_ms()) >= self.amd.config().after_greeting_silence.as_millis();
        self.beep_ms.is_some() || self.amd.elapsed_ms() >= decided_ms + BEEP_WAIT_MS && quiet
    }

    /// The `metrics.amd` of the call's result (a call that ended first is HANGUP).
    fn report(&mut self) -> Value {
        let verdict = self.amd.verdict().or_else(|| self.amd.hangup());
        let mut report = json!({
            "result": verdict.map(|v| v.result.as_str()),
            "cause": verdict.map(|v| v.cause.as_str()),
            "decided_ms": verdict.map(|v| v.at_ms),
            "action": match self.action {
                MachineAction::Hangup => "hangup",
                MachineAction::Continue => "continue",
                MachineAction::LeaveVoicemail => "leave_voicemail",
            },
        });
        if let Some(beep) = self.beep_ms {
            report["beep_ms"] = json!(beep);
        }
        report
    }
}

/// An outbound call's greeting held for the callee's "Hello?" (bot setting
/// `outbound_greeting: after_hello`): it plays once their first words are followed by
/// `AFTER_HELLO_SILENCE`, or after `NO_HELLO_WAIT` in which no one spoke, or (someone who
/// talks on and on) at the first such pause after that, and at the latest at `LONGEST_WAIT`.
/// Measured in the callee's audio, like answering-machine detection, whose word and silence
/// tracking it reuses.
#[derive(Debug)]
struct HelloWait {
    listen: Amd,
    /// How long the greeting was held, once it was released.
    held_ms: Option<u64>,
}

const NO_HELLO_WAIT: Duration = Duration::from_millis(1_000);
const AFTER_HELLO_SILENCE: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_millis(10_000);

impl HelloWait {
    fn new() -> HelloWait {
        let config = AmdConfig {
            initial_silence: NO_HELLO_WAIT,
            after_greeting_silence: AFTER_HELLO_SILENCE,
            total_analysis: LONGEST_WAIT,
            ..AmdConfig::default()
        };
        HelloWait { listen: Amd::new(config), held_ms: None }
    }

    /// One frame of the callee; whether this frame released the greeting.
    fn frame(&mut self, pcm: &[i16]) -> bool {
        if self.held_ms.is_some() {
            return false;
        }
        self.listen.push(pcm);
        let pause = u128::from(self.listen.silence_ms()) >= AFTER_HELLO_SILENCE.as_millis();
        let waited = u128::from(self.listen.elapsed_ms()) >= LONGEST_WAIT.as_millis();
        if self.listen.verdict().is_some() && (pause || waited) {
            self.held_ms = Some(self.listen.elapsed_ms());
            return true;
        }
        false
    }
}

/// The AI side of one call.
pub struct Agent {
    bot: Rc<BotConfig>,
    conv: Conversation,
    events: Events,
    stt: SttSession,
    stt_format: AudioFormat,
    llm: Rc<dyn LlmProvider>,
    llm_job: Option<Job>,
    tts: Rc<dyn TtsProvider>,
    tts_format: AudioFormat,
    tts_jobs: Vec<Job>,
    tools: Tools,
    tool_jobs: Vec<Job>,
    to_8k: Option<Polyphase>,
    pcm: Vec<i16>,
    narrow: Vec<i16>,
    stt_bytes: Vec<u8>,
    recorder: Option<Recorder>,
    /// Synthesised audio waiting for room in the playout, at 8 kHz, and the marks in it
    /// (position in samples pushed so far, id).
    backlog: VecDeque<i16>,
    marks: VecDeque<(u64, u64)>,
    /// Samples ever pushed into / taken out of the backlog.
    backlog_in: u64,
    backlog_out: u64,
    /// The carrier's `start`.
    start: Option<Box<Start>>,
    end: Option<AgentEnd>,
    created: Timestamp,
    created_unix_ms: u64,
    /// The time the session last gave (the agent reads no clock).
    now: Timestamp,
    /// The call token's claims, for calls the platform placed.
    claims: Option<CallClaims>,
    first_audio: Option<Timestamp>,
    stt_audio_ms: u64,
    /// Audio a speech-to-text service hears is billed; the offline `none` hears nothing.
    stt_billed: bool,
    /// When the provider event behind audio queued into an empty playout arrived: the next
    /// frame on the wire measures the engine's own latency.
    wire_pending: Option<Instant>,
    transfer: Option<Value>,
    screening: Option<Screening>,
    hello_wait: Option<HelloWait>,
    /// The caller's current turn began while the bot's audio was held.
    turn_held: bool,
    /// Where handoffs to the Agent Desk go (the engine's handoff outbox).
    handoff_sink: Option<Arc<dyn ResultSink>>,
    /// A person on the desk may take a handed-off call over (the engine takes WebRTC).
    takeover: bool,
    /// The call's line to the desk, once handed off with `takeover`.
    desk: Option<CallerSide>,
    /// The handoffs made, for the result: `{reason, queued}`.
    handoffs: Vec<Value>,
    /// The call's id when neither a call token nor the carrier gave one, made for a handoff
    /// and kept for the result so the two match.
    minted_id: Option<String>,
    /// The turn-completion model's view of the call, when the bot's turns end by it.
    turns: Option<ModelTurns>,
    /// Tasks waiting for the model's answers.
    verdict_jobs: Vec<Job>,
    /// The bot's turns end by the model, but this engine has none: they end by silence.
    model_missing: bool,
    /// The speech-to-text's endpointing ended the caller's turn (`stt` turn detection).
    stt_turn_end: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("bot", &self.bot.id)
            .field("end", &self.end)
            .finish()
    }
}

impl Agent {
    /// Sets up the providers for `bot` and opens the speech-to-text stream and the
    /// greeting's synthesis at once, while the carrier is still setting the call up.
    /// `claims`: the call token the call was admitted with (calls the platform placed); the
    /// call's identity in its result comes from it, never from the carrier's parameters.
    pub fn new(bot: Rc<BotConfig>, api: Option<ApiLink>, claims: Option<CallClaims>, now: Timestamp, unix_ms: u64) -> Result<Agent, String> {
        let tools = Tools::new(&bot, api).map_err(|e| e.to_string())?;
        let stt = cxb_pipeline::providers::stt(&bot).map_err(|e| e.to_string())?;
        let llm = cxb_pipeline::providers::llm(&bot).map_err(|e| e.to_string())?;
        let tts = cxb_pipeline::providers::tts(&bot).map_err(|e| e.to_string())?;
        let events = Events::new();
        let tts_format = tts.output_format();
        let to_8k = match tts_format {
            AudioFormat::Pcm16(8_000) | AudioFormat::Mulaw8k => None,
            AudioFormat::Pcm16(hz) => {
                let rate =
                    SampleRate::from_hz(hz).map_err(|e| format!("text-to-speech rate: {e}"))?;
                Some(Polyphase::new(rate, SampleRate::Hz8000))
            }
        };
        let conv = Conversation::new(&bot, tts_format, tools.specs(), now);
        let recorder = bot.recording.then(|| Recorder::new(Duration::from_secs(u64::from(bot.max_call_seconds) + 5)));
        let mut agent = Agent {
            stt_format: stt.input_format(),
            stt: stt.open(events.clone()),
            conv,
            events,
            llm,
            llm_job: None,
            tts,
            tts_format,
            tts_jobs: Vec::new(),
            tools,
            tool_jobs: Vec::new(),
            to_8k,
            pcm: Vec::new(),
            narrow: Vec::new(),
            stt_bytes: Vec::new(),
            recorder,
            backlog: VecDeque::new(),
            marks: VecDeque::new(),
            backlog_in: 0,
            backlog_out: 0,
            start: None,
            end: None,
            created: now,
            created_unix_ms: unix_ms,
            now,
            claims,
            first_audio: None,
            stt_audio_ms: 0,
            stt_billed: bot.stt.provider != "none",
            wire_pending: None,
            transfer: None,
            screening: None,
            hello_wait: None,
            turn_held: false,
            handoff_sink: None,
            takeover: false,
            desk: None,
            handoffs: Vec::new(),
            minted_id: None,
            turns: None,
            verdict_jobs: Vec::new(),
            model_missing: false,
            stt_turn_end: false,
            bot,
        };
        agent.conv.start(now);
        Ok(agent)
    }

    /// Sends the bot's handoffs to `sink` (the engine's outbox); without one a handoff is only
    /// noted in the call's result. With `takeover` (the engine takes WebRTC), a call handed off
    /// without a transfer stays live for a person on the desk to take over from the browser.
    pub fn with_handoffs(mut self, sink: Option<Arc<dyn ResultSink>>, takeover: bool) -> Agent {
        self.handoff_sink = sink;
        self.takeover = takeover;
        self
    }

    /// Judges the caller's pauses with `judge` when the bot's turns end by the model; with
    /// none, they end after the bot's `silence_ms` (the result says so).
    pub fn with_turn_model(mut self, judge: Option<Arc<dyn TurnJudge>>) -> Agent {
        if self.bot.turn_detection.mode == TurnMode::Model {
            match judge {
                Some(judge) => self.turns = Some(ModelTurns::new(judge, &self.bot.turn_detection)),
                None => {
                    tracing::warn!(bot = %self.bot.id, "the bot's turns end by the model, but this engine has none (--turn-model); they end by silence");
                    self.model_missing = true;
                }
            }
        }
        self
    }

    /// Asks the model about the caller's pause when it is due; its answer comes back as an
    /// event.
    fn ask_model(&mut self, now: Timestamp) {
        let Some((pause, answer)) = self.turns.as_mut().and_then(|t| t.poll(now)) else { return };
        let events = self.events.clone();
        self.verdict_jobs.retain(|j| !j.is_finished());
        self.verdict_jobs.push(compio::runtime::spawn(async move {
            let probability = answer.recv_async().await.ok().flatten();
            events.push(Event::TurnVerdict { pause, probability });
        }));
    }

    /// The call's id as its result will carry it: the call token's, else the carrier's, else
    /// one made here.
    fn call_identity(&mut self) -> String {
        if let Some(c) = &self.claims {
            return c.call_id.to_string();
        }
        if let Some(sid) = self.start.as_ref().and_then(|s| s.call_sid.clone()).filter(|s| !s.is_empty()) {
            return sid;
        }
        self.minted_id
            .get_or_insert_with(|| {
                use std::hash::BuildHasher;
                format!("call-{:016x}", std::collections::hash_map::RandomState::new().hash_one(self.created_unix_ms))
            })
            .clone()
    }

    /// Queues a handoff to the Agent Desk: who called, why, what they need, what was said.
    fn hand_off(&mut self, reason: &str, summary: &str) {
        let call_id = self.call_identity();
        let n = self.handoffs.len() + 1;
        let start = self.start.as_deref();
        let caller = match (self.claims.as_ref(), start) {
            (Some(c), _) if c.direction == Direction::Outbound => c.to.as_ref().map(ToString::to_string),
            (Some(c), _) => c.from.as_ref().map(ToString::to_string),
            (None, Some(s)) => s.from.clone().or_else(|| s.custom_parameters.iter().find(|(k, _)| k == "from").map(|(_, v)| v.clone())),
            (None, None) => None,
        };
        let transcript: Vec<Value> = self
            .conv
            .transcript()
            .iter()
            .map(|l| json!({ "role": l.role, "text": l.text, "at_ms": l.at_ms, "interrupted": l.interrupted }))
            .collect();
        // A handoff that transfers the call leaves nothing live to take over.
        let transfers = self.bot.tools.iter().any(|t| t.kind == cxb_pipeline::config::ToolKind::Handoff && t.transfer_to.is_some());
        let live = self.takeover && !transfers;
        if live && self.desk.is_none() {
            self.desk = Some(CallerSide::open(&call_id));
        }
        let handoff = json!({
            "handoff_id": format!("{call_id}-h{n}"),
            "live": live,
            "call_id": call_id,
            "org_id": self.claims.as_ref().map(|c| c.org_id.to_string()).or_else(|| self.bot.org_id.clone()),
            "bot_id": self.bot.id,
            "caller": caller.unwrap_or_default(),
            "reason": reason,
            "summary": summary,
            "transcript": transcript,
            "created_at": rfc3339(self.created_unix_ms + self.now.saturating_since(self.created).as_millis() as u64),
        });
        let queued = match &self.handoff_sink {
            Some(sink) => sink.submit_handoff(handoff).is_some(),
            None => false,
        };
        if !queued {
            tracing::warn!(call_id, "a handoff was made but this engine has no handoff outbox (run it with --api)");
        }
        self.handoffs.push(json!({ "reason": reason, "queued": queued, "live": live }));
    }

    /// The carrier's `start`: answering-machine detection runs when the call token asks for
    /// it (`amd` = `hangup`, `continue` or `leave_voicemail`, the campaign's action) or, on
    /// outbound calls, when the bot's `answering_machine.detect` is set (its `action`
    /// applies). Only a call token makes a call outbound; the carrier's parameters do not.
    fn on_start(&mut self) {
        let param = self.claims.as_ref().and_then(|c| c.amd.as_deref());
        let outbound = self.claims.as_ref().is_some_and(|c| c.direction == Direction::Outbound);
        let action = match param {
            Some("hangup") => Some(MachineAction::Hangup),
            Some("continue") => Some(MachineAction::Continue),
            Some("leave_voicemail") => Some(MachineAction::LeaveVoicemail),
            _ => (outbound && self.bot.answering_machine.detect).then_some(self.bot.answering_machine.action),
        };
        self.screening = action.map(Screening::new);
        // Detection holds the greeting already, until its verdict (which waits for a person's
        // "Hello?" too).
        let wait = outbound
            && self.screening.is_none()
            && self.bot.outbound_greeting == OutboundGreeting::AfterHello
            && !self.bot.greeting.trim().is_empty();
        self.hello_wait = wait.then(HelloWait::new);
    }

    /// Whether the bot's audio is held (answering-machine detection is deciding or waiting for
    /// the beep, or the greeting waits for the callee's "Hello?"): nothing plays and the
    /// caller's turns are not the conversation's yet.
    fn holds_playout(&self) -> bool {
        self.screening.as_ref().is_some_and(|s| s.holding) || self.hello_wait.as_ref().is_some_and(|w| w.held_ms.is_none())
    }

    /// Whether a turn event of the caller's is the conversation's: not while the bot's audio
    /// is held, and not the end of a turn that began then (the callee's "Hello?" the greeting
    /// waited for, or a machine's greeting, may end after the hold does; as a turn it would
    /// cut the greeting off and be answered).
    fn admits_turn(&mut self, event: &TurnEvent) -> bool {
        match event {
            TurnEvent::Started { .. } => {
                self.turn_held = self.holds_playout();
                !self.turn_held
            }
            TurnEvent::Ended { .. } => !std::mem::take(&mut self.turn_held) && !self.holds_playout(),
        }
    }

    /// One 20 ms frame of the caller. Goes to the recording, to answering-machine detection
    /// while it runs, and otherwise to speech-to-text in the provider's format, converted
    /// only when it differs. Returns whether the detection acted (the conversation may have
    /// actions, the playout may be released).
    fn hear(&mut self, now: Timestamp, frame: &CallerFrame<'_>) -> bool {
        if let Some(r) = self.recorder.as_mut() {
            r.append(Channel::Caller, frame.narrow);
        }
        if let Some(turns) = self.turns.as_mut() {
            turns.frame(frame.wide.samples(), frame.paused_since);
        }
        self.ask_model(now);
        if self.holds_playout() {
            return self.screen(now, frame.narrow);
        }
        let stopped = self.conv.on_caller_frame(now, frame.voiced);
        self.stt_bytes.clear();
        match (self.stt_format, frame.encoding) {
            (AudioFormat::Mulaw8k, Encoding::Mulaw) => self.stt_bytes.extend_from_slice(frame.raw),
            (AudioFormat::Mulaw8k, _) => g711::encode_mulaw_into(frame.narrow, &mut self.stt_bytes),
            (AudioFormat::Pcm16(16_000), _) => frame
                .wide
                .samples()
                .iter()
                .for_each(|s| self.stt_bytes.extend_from_slice(&s.to_le_bytes())),
            (AudioFormat::Pcm16(_), _) => frame
                .narrow
                .iter()
                .for_each(|s| self.stt_bytes.extend_from_slice(&s.to_le_bytes())),
        }
        if self.stt_billed {
            self.stt_audio_ms += 20;
        }
        self.stt.send_audio(&self.stt_bytes);
        stopped
    }

    /// The caller's frame `pcm` on a handed-off call: the bot falls silent when a person takes
    /// the call and listens again when they leave; meanwhile the person's audio plays to the
    /// caller (at most 200 ms of it waits) and their words go into the transcript. Whether
    /// there is something to act on.
    fn desk_frame(&mut self, now: Timestamp, pcm: &[i16]) -> bool {
        let Some(desk) = self.desk.as_mut() else { return false };
        let change = desk.frame(now, pcm, &self.bot);
        match change {
            Some(Change::Joined) => self.conv.human_joined(now),
            Some(Change::Left) => self.conv.human_left(now),
            None => {}
        }
        while let Some((at, words)) = desk.words(now) {
            self.conv.human_said(at, &words);
        }
        let heard = desk.heard();
        if heard.is_empty() {
            return change.is_some();
        }
        if self.stt_billed {
            self.stt_audio_ms += 20;
        }
        self.backlog.extend(heard);
        self.backlog_in += heard.len() as u64;
        let over = self.backlog.len().saturating_sub(1_600);
        self.backlog.drain(..over);
        self.backlog_out += over as u64;
        true
    }

    /// Answering-machine detection, or the wait for "Hello?", on the frame in `pcm`; whether
    /// it acted.
    fn screen(&mut self, now: Timestamp, pcm: &[i16]) -> bool {
        if let Some(wait) = self.hello_wait.as_mut() {
            return wait.frame(pcm);
        }
        let Some(s) = self.screening.as_mut() else { return false };
        let fresh = s.frame(pcm);
        let Some(verdict) = s.amd.verdict() else { return false };
        match (verdict.result, s.action) {
            (AmdResult::Machine, MachineAction::Hangup) => {
                s.holding = false;
                s.end = Some(MACHINE_DETECTED);
                self.conv.on_machine(now, false);
            }
            (AmdResult::Machine, MachineAction::LeaveVoicemail) => {
                if fresh.is_some() {
                    s.end = Some(VOICEMAIL_LEFT);
                    self.conv.on_machine(now, true);
                }
                if !s.may_speak(verdict.at_ms) {
                    return fresh.is_some();
                }
                s.holding = false;
            }
            _ => s.holding = false,
        }
        true
    }

    /// Converts synthesised audio to 8 kHz PCM at the end of the backlog.
    fn queue_audio(&mut self, audio: &[u8]) {
        self.pcm.clear();
        match self.tts_format {
            AudioFormat::Mulaw8k => g711::decode_mulaw_into(audio, &mut self.pcm),
            AudioFormat::Pcm16(_) => {
                self.pcm.extend(audio.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
            }
        }
        let samples = match self.to_8k.as_mut() {
            Some(r) => {
                self.narrow.clear();
                r.process(&self.pcm, &mut self.narrow);
                &self.narrow
            }
            None => &self.pcm,
        };
        self.backlog.extend(samples);
        self.backlog_in += samples.len() as u64;
    }

    /// Carries out what the conversation asks; returns whether a provider request went out.
    /// `arrived`: when the provider event that led here arrived.
    fn act(&mut self, out: &mut Playback<'_>, arrived: Option<Instant>) -> bool {
        let mut requested = false;
        while let Some(action) = self.conv.poll_action() {
            match action {
                Action::Play(audio) => {
                    // Audio into an empty playout (a sentence's start mark may wait ahead of
                    // it) on a streaming call: its first frame measures the engine.
                    let idle = out.streaming() && self.backlog.is_empty() && out.queued() == 0;
                    if idle && let Some(t) = arrived {
                        self.wire_pending.get_or_insert(t);
                    }
                    self.queue_audio(&audio);
                }
                Action::Mark(id) => self.marks.push_back((self.backlog_in, id)),
                Action::SendDtmf(keys) => self.press(&keys, out.keys_out_of_band()),
                Action::ClearPlayout => {
                    let pending = !self.backlog.is_empty();
                    self.backlog_out += self.backlog.len() as u64;
                    self.backlog.clear();
                    self.marks.clear();
                    out.clear(pending);
                }
                other => {
                    requested |= matches!(other, Action::Llm { .. } | Action::Synthesize { .. } | Action::RunTool(_) | Action::SttFinalize);
                    self.execute(other);
                }
            }
        }
        self.fill(out);
        requested
    }

    /// Presses `keys` after the audio queued so far: each a mark where the transport sends it
    /// out of band with 200 ms of silence for it, or 100 ms of its two tones and 100 ms of
    /// silence in the audio.
    fn press(&mut self, keys: &str, out_of_band: bool) {
        for key in keys.chars() {
            if out_of_band {
                self.marks.push_back((self.backlog_in, KEY_MARK | u64::from(key as u32 & 0xff)));
                self.backlog.extend(std::iter::repeat_n(0, 1_600));
                self.backlog_in += 1_600;
            } else if let Some(tone) = dtmf_tone(key) {
                self.backlog.extend(tone.iter().copied().chain(std::iter::repeat_n(0, 800)));
                self.backlog_in += tone.len() as u64 + 800;
            }
        }
    }

    /// Moves backlog audio and marks into the playout as room allows (not while the bot's
    /// audio is held).
    fn fill(&mut self, out: &mut Playback<'_>) {
        if !out.streaming() || self.holds_playout() {
            return;
        }
        loop {
            if let Some(&(at, id)) = self.marks.front()
                && at <= self.backlog_out
            {
                out.mark(id);
                self.marks.pop_front();
                continue;
            }
            let until = self.marks.front().map_or(u64::MAX, |&(at, _)| at - self.backlog_out);
            let (front, _) = self.backlog.as_slices();
            let want = front.len().min(usize::try_from(until).unwrap_or(usize::MAX));
            if want == 0 {
                return;
            }
            let took = out.push_narrow(&front[..want]);
            self.backlog.drain(..took);
            self.backlog_out += took as u64;
            if took < want {
                return;
            }
        }
    }

    /// Carries out a provider action of the conversation (playout actions are the call's).
    fn execute(&mut self, action: Action) {
        match action {
            Action::SttFinalize => self.stt.send(SttCommand::Finalize),
            Action::Llm { turn, request } => {
                self.llm_job = Some(self.llm.complete(turn, request, self.events.clone()))
            }
            Action::CancelLlm => self.llm_job = None,
            Action::Synthesize { sentence, text } => {
                self.tts_jobs.retain(|j| !j.is_finished());
                self.tts_jobs
                    .push(self.tts.synthesize(sentence, text, self.events.clone()));
            }
            Action::CancelTts => self.tts_jobs.clear(),
            Action::RunTool(call) => self.run_tool(call),
            Action::Transfer { destination } => self.transfer(&destination),
            Action::Handoff { reason, summary } => self.hand_off(&reason, &summary),
            Action::Hangup { reason } => self.end = Some(AgentEnd::Hangup(reason)),
            Action::Play(_) | Action::Mark(_) | Action::ClearPlayout | Action::SendDtmf(_) => {}
        }
    }

    /// Tools with I/O (the conversation decides the built-ins itself).
    fn run_tool(&mut self, call: ToolCall) {
        self.tool_jobs.retain(|j| !j.is_finished());
        if let ToolAction::Run(job) = self.tools.classify(&call, &self.events) {
            self.tool_jobs.push(job);
        }
    }

    /// Hands the call over. A SIP call is referred by the engine's dialog. For a Twilio call whose `transfer_call` tool holds the account's
    /// auth token (secret `auth_token`; the account comes from the stream's `start`), the
    /// call is updated through Twilio's REST API with `<Dial>` TwiML; the request outlives
    /// the media stream, which Twilio ends itself.
    fn transfer(&mut self, destination: &str) {
        let start = self.start.as_deref();
        self.end = Some(AgentEnd::Transfer(destination.to_string()));
        if start.is_some_and(|s| s.transport == "sip") {
            // The engine's SIP dialog sends the REFER and records its answer.
            self.transfer = Some(json!({ "destination": destination, "method": "refer" }));
            return;
        }
        let tool = self.bot.tools.iter().find(|t| t.kind == cxb_pipeline::config::ToolKind::TransferCall);
        let token = tool.and_then(|t| t.secrets.get("auth_token"));
        let (account, call_sid) = (start.and_then(|s| s.account_sid.clone()), start.and_then(|s| s.call_sid.clone()));
        let requested = match (Destination::parse(destination), token, account, call_sid) {
            (Ok(dest), Some(token), Some(account), Some(call_sid)) => {
                let mut carrier = CarrierLink::twilio(account, token.clone());
                if let Some(url) = tool.and_then(|t| t.url.clone()) {
                    carrier.base_url = url;
                }
                self.tools.transfer(Some(&carrier), &call_sid, &dest, "transfer", &self.events).detach();
                Ok(())
            }
            (Err(e), ..) => Err(e),
            (_, None, ..) => Err("the transfer_call tool has no auth_token secret".to_string()),
            _ => Err("the carrier sent no account or call id".to_string()),
        };
        self.transfer = Some(match requested {
            Ok(()) => json!({ "destination": destination, "requested": true }),
            Err(why) => json!({ "destination": destination, "requested": false, "error": why }),
        });
    }

    /// The call is over: close the providers; the call's result and its recording.
    pub fn finish(&mut self, now: Timestamp, unix_ms: u64, call_id: &str, end_reason: &str) -> (CallResult, Option<Recording>) {
        let start = self.start.as_deref();
        self.conv.finish(now);
        self.stt.send(SttCommand::Close);
        if let Some(desk) = self.desk.as_mut() {
            desk.close();
            if let Some(last) = self.handoffs.last_mut() {
                last["talked_ms"] = json!(desk.talked(now).as_millis() as u64);
            }
        }
        self.llm_job = None;
        self.tts_jobs.clear();
        self.tool_jobs.clear();
        let param = |name: &str| {
            start.and_then(|s| {
                s.custom_parameters
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let claims = self.claims.as_ref();
        let amd = self.screening.as_mut().map(Screening::report);
        let end_reason = match self.screening.as_ref().and_then(|s| s.end) {
            Some(reason) if end_reason == crate::error::EndReason::BotHangup.label() => reason,
            _ => end_reason,
        };
        let outcome = match self.conv.ending() {
            Ending::Voicemail => Outcome::Voicemail,
            _ => Outcome::Completed,
        };
        let usage = self.conv.usage();
        let mut transcript: Vec<Turn> = self
            .conv
            .transcript()
            .iter()
            .map(|l| Turn { role: l.role.to_string(), text: l.text.clone(), at_ms: l.at_ms, interrupted: l.interrupted })
            .collect();
        // A reply is written when it ends, after words the caller said over it.
        transcript.sort_by_key(|t| t.at_ms);
        let (false_barge_ins, missed_barge_ins, backchannels) = self.conv.interruption_counts();
        let metrics = json!({
            "transport": start.map(|s| s.transport),
            "turn_latency_ms": self.conv.latencies(),
            "answer_to_first_audio_ms": self.first_audio.map(|t| t.saturating_since(self.created).as_millis() as u64),
            "barge_ins": self.conv.barge_ins(),
            "false_barge_ins": false_barge_ins,
            "missed_barge_ins": missed_barge_ins,
            "backchannels": backchannels,
            "llm_requests": usage.llm_requests,
            "llm_cache_hits": usage.cache_hits,
            "turn_detection": match (self.bot.turn_detection.mode, self.model_missing) {
                (TurnMode::Model, true) => "silence (no turn model on the engine)",
                (TurnMode::Model, false) => "model",
                (TurnMode::Stt, _) => "stt",
                (TurnMode::Silence, _) => "silence",
            },
            "turn_model": self.turns.as_ref().map(ModelTurns::summary),
            "tools": self.tools.log().take(),
            "transfer": self.transfer,
            "handoffs": self.handoffs,
            "amd": amd,
            "greeting_wait_ms": self.hello_wait.as_ref().and_then(|w| w.held_ms),
            "providers": { "stt": self.bot.stt.provider, "llm": self.bot.llm.provider, "tts": self.bot.tts.provider },
        });
        fn non_empty<T: AsRef<str>>(v: Option<T>) -> Option<T> {
            v.filter(|v| !v.as_ref().is_empty())
        }
        let mut result = CallResult {
            call_id: claims
                .map(|c| c.call_id.clone())
                .or_else(|| start.and_then(|s| s.call_sid.as_deref()).map(CallId::from))
                .or_else(|| self.minted_id.as_deref().map(CallId::from))
                .unwrap_or_else(|| CallId::from(call_id)),
            org_id: non_empty(claims.map(|c| c.org_id.clone()).or_else(|| self.bot.org_id.as_deref().map(OrgId::from))),
            direction: if claims.is_some_and(|c| c.direction == Direction::Outbound) { Direction::Outbound } else { Direction::Inbound },
            from: claims
                .and_then(|c| c.from.clone())
                .or_else(|| start.and_then(|s| s.from.clone()).or_else(|| param("from")).map(PhoneNumber::from))
                .unwrap_or_default(),
            to: claims
                .and_then(|c| c.to.clone())
                .or_else(|| start.and_then(|s| s.to.clone()).or_else(|| param("to")).map(PhoneNumber::from))
                .unwrap_or_default(),
            bot_id: non_empty(Some(BotId::from(self.bot.id.as_str()))),
            campaign_id: non_empty(claims.and_then(|c| c.campaign_id.clone())),
            contact_id: non_empty(claims.and_then(|c| c.contact_id.clone())),
            started_at: rfc3339(self.created_unix_ms),
            answered_at: Some(rfc3339(self.created_unix_ms)),
            ended_at: Some(rfc3339(unix_ms)),
            outcome,
            end_reason: end_reason.to_string(),
            transcript,
            recording: None,
            costs: [
                CostLine::quantity("stt_audio", self.stt_audio_ms as f64 / 1000.0, "second"),
                // Prompt tokens read fresh, from the provider's cache and into it are priced apart.
                CostLine::quantity("llm_prompt_tokens", usage.prompt_tokens.saturating_sub(usage.cached_tokens + usage.cache_write_tokens) as f64, "token"),
                CostLine::quantity("llm_completion_tokens", usage.completion_tokens as f64, "token"),
                CostLine::quantity("tts_characters", usage.tts_characters as f64, "character"),
            ]
            .into_iter()
            .chain((usage.cached_tokens > 0).then(|| CostLine::quantity("llm_cached_tokens", usage.cached_tokens as f64, "token")))
            .chain((usage.cache_write_tokens > 0).then(|| CostLine::quantity("llm_cache_write_tokens", usage.cache_write_tokens as f64, "token")))
            .collect(),
            metrics: match metrics {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        };
        let recording = self.recorder.take().map(|recorder| {
            // Audio the recording could not keep (placed too late, or the sink was behind)
            // reads back as silence: say how much.
            let dropped = u64::try_from(recorder.dropped().as_millis()).unwrap_or(u64::MAX);
            if dropped > 0 {
                result.metrics.insert("recording_dropped_ms".into(), json!(dropped));
            }
            recorder.finish()
        });
        // What the API would refuse (422), and so the outbox would bury, is made acceptable.
        result.clean();
        (result, recording)
    }
}

impl Bot for Agent {
    fn playout_room(&self) -> PlayoutRoom {
        PlayoutRoom { capacity: AGENT_QUEUE, lead: None }
    }

    fn start(&mut self, _now: Timestamp, start: &Start, out: &mut Playback<'_>) {
        self.on_start();
        self.start = Some(Box::new(start.clone()));
        self.act(out, None);
    }

    fn caller_frame(&mut self, now: Timestamp, frame: &CallerFrame<'_>, out: &mut Playback<'_>) {
        self.now = now;
        let heard = self.hear(now, frame);
        if self.desk_frame(now, frame.narrow) | heard {
            self.act(out, None);
        }
    }

    /// While answering-machine detection runs, the caller's turns are not the conversation's
    /// (a machine's greeting is not a turn to answer).
    fn turn(&mut self, now: Timestamp, event: TurnEvent, out: &mut Playback<'_>) {
        self.now = now;
        if self.admits_turn(&event) {
            self.conv.on_turn(now, event);
            self.act(out, None);
        }
    }

    fn dtmf(&mut self, now: Timestamp, digit: char, out: &mut Playback<'_>) {
        self.now = now;
        self.conv.on_dtmf(now, digit);
        self.act(out, None);
    }

    fn mark_played(&mut self, now: Timestamp, id: u64, out: &mut Playback<'_>) {
        self.now = now;
        if id & KEY_MARK != 0 {
            // A key's place in the bot's audio: it is pressed now, out of band.
            if let Some(key) = char::from_u32((id & 0xff) as u32) {
                out.key(key);
            }
            return;
        }
        self.conv.on_mark(now, id);
        self.act(out, None);
    }

    fn timeout(&mut self, now: Timestamp, out: &mut Playback<'_>) {
        self.now = now;
        self.ask_model(now);
        self.conv.on_timeout(now);
        self.act(out, None);
    }

    fn wake(&mut self, now: Timestamp, out: &mut Playback<'_>) {
        self.now = now;
        while let Some((arrived, event)) = self.events.pop() {
            match &event {
                Event::TurnVerdict { pause, probability } => {
                    if let Some(turns) = self.turns.as_mut() {
                        turns.verdict(*pause, *probability, now);
                    }
                    continue;
                }
                Event::Stt(SttEvent::Final { end_of_turn: true, .. } | SttEvent::UtteranceEnd) if self.bot.turn_detection.mode == TurnMode::Stt => {
                    self.stt_turn_end = true;
                }
                _ => {}
            }
            self.conv.on_event(now, event);
            if self.act(out, Some(arrived)) {
                out.event(SessionEvent::Dispatched(arrived));
            }
        }
    }

    fn feed(&mut self, out: &mut Playback<'_>) {
        self.fill(out);
    }

    /// Bot audio released `offset` after the stream began goes to the recording.
    fn played(&mut self, now: Timestamp, offset: Duration, frames: &[u8], encoding: Encoding) -> Option<Instant> {
        self.first_audio.get_or_insert(now);
        if let Some(r) = self.recorder.as_mut() {
            self.pcm.clear();
            let _ = encoding.decode_into(frames, &mut self.pcm);
            r.write(Channel::Bot, offset, &self.pcm);
        }
        self.wire_pending.take()
    }

    fn deadline(&self) -> Option<Timestamp> {
        let ask = self.turns.as_ref().and_then(ModelTurns::deadline);
        [self.conv.deadline(), ask].into_iter().flatten().min()
    }

    fn end_of_turn(&self) -> Option<Duration> {
        let t = &self.bot.turn_detection;
        let ms = if self.model_missing { t.silence_ms } else { t.end_silence_ms() };
        Some(Duration::from_millis(u64::from(ms)))
    }

    fn take_turn_end(&mut self) -> bool {
        let model = self.turns.as_mut().is_some_and(ModelTurns::take_end);
        model | std::mem::take(&mut self.stt_turn_end)
    }

    fn end(&self) -> Option<EndReason> {
        self.end.as_ref().map(|end| match end {
            AgentEnd::Hangup(_) => EndReason::BotHangup,
            AgentEnd::Transfer(_) => EndReason::Transferred,
        })
    }

    fn transfer_target(&self) -> Option<&str> {
        match &self.end {
            Some(AgentEnd::Transfer(destination)) => Some(destination),
            _ => None,
        }
    }

    fn events(&self) -> Option<&Events> {
        Some(&self.events)
    }

    fn transcript_since(&self, from: usize) -> Vec<String> {
        if !self.bot.widget.show_transcript {
            return Vec::new();
        }
        let lines = self.conv.transcript();
        lines.get(from..).unwrap_or_default().iter().map(|l| json!({ "type": "transcript", "role": l.role, "text": l.text, "at_ms": l.at_ms }).to_string()).collect()
    }

    fn finish(&mut self, now: Timestamp, unix_ms: u64, call_id: &str, reason: EndReason) -> Option<(CallResult, Option<Recording>)> {
        Some(Agent::finish(self, now, unix_ms, call_id, reason.label()))
    }
}

/// Marks with this bit are keys to press (the key's character in the low byte), not the
/// conversation's sentence marks.
const KEY_MARK: u64 = 1 << 62;

/// 100 ms of a key's two tones (ITU-T Q.23) at 8 kHz, each about −10 dBm0.
fn dtmf_tone(key: char) -> Option<Vec<i16>> {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLUMNS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (row, column) = match key {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    let tau = std::f64::consts::TAU;
    Some(
        (0..800)
            .map(|i| {
                let t = f64::from(i) / 8_000.0;
                (((tau * ROWS[row] * t).sin() + (tau * COLUMNS[column] * t).sin()) * 7_000.0) as i16
            })
            .collect(),
    )
}

/// Playout room for an AI bot's replies; synthesis that runs ahead of playback waits in the
/// agent's backlog rather than in the playout queue.
const AGENT_QUEUE: Duration = Duration::from_secs(4);

/// Unix milliseconds as RFC 3339 UTC, e.g. `2026-11-21T09:30:00.125Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let days = (unix_ms / 86_400_000) as i64;
    let ms_of_day = unix_ms % 86_400_000;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_253_400_125), "2026-11-21T09:30:00.125Z");
    }
}
